//! WebSocket through tether: pinned by the session cookie, echoed, and kept
//! open past pingora's 60 s default read timeout.

mod common;

use std::time::Duration;

use common::{backend_of, backends, config, Client, Tether};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_follows_its_session_and_survives_70s_idle() {
    let b = backends(4).await;
    let t = Tether::start(&config(
        &b,
        "{ key: { cookie: { name: TETHER, insert: true, max_age: 8h } } }",
        "",
        "",
        "",
    ));
    let first = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
    let cookie = first.set_cookie("TETHER").unwrap();
    let owner = backend_of(&first);

    let mut req = format!("ws://{}/ws", t.addr("web"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("TETHER={cookie}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(t.addr("web")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echo = match ws.next().await.unwrap() {
        Ok(m) => m,
        Err(e) => panic!("no echo: {e}\n{}", t.log_text()),
    };
    assert_eq!(
        echo.into_text().unwrap().as_str(),
        format!("{owner}: hello"),
        "lands on the session's backend"
    );

    let idle = std::env::var("WS_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(72);
    tokio::time::sleep(Duration::from_secs(idle)).await;
    ws.send(Message::text("still there"))
        .await
        .expect("open after 72 s idle");
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo")
        .unwrap()
        .unwrap();
    assert_eq!(
        echo.into_text().unwrap().as_str(),
        format!("{owner}: still there")
    );
    ws.close(None).await.unwrap();
}

/// Regression for pingora#946: a fast backend's 101 must not tear the tunnel down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_back_to_back_upgrades_all_echo() {
    let b = backends(1).await;
    let t = Tether::start(&config(&b, "{ key: { header: X-Device-Id } }", "", "", ""));
    for i in 0..50 {
        let mut req = format!("ws://{}/ws", t.addr("web"))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("x-device-id", "d".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::text("hi")).await.unwrap();
        let echo = ws.next().await.unwrap();
        assert!(
            matches!(&echo, Ok(m) if m.to_text().unwrap() == "b1: hi"),
            "upgrade {i}: {echo:?}"
        );
    }
    // the tunnels are accounted once they end (the last one ends as we drop it)
    let want =
        "tether_requests_total{backend=\"b1\",listener=\"web\",pool=\"app\",status=\"101\"} 50";
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let m = Client::new(t.admin)
            .get("/metrics", &[])
            .await
            .unwrap()
            .text();
        if m.contains(want) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
