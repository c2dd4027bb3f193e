//! Hostile and broken traffic: smuggling, foreign upgrades, huge and slow
//! headers, silent backends, spoofed tether headers, connection limits.

mod common;

use std::time::{Duration, Instant};

use common::{backends, config, Client, Tether};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "{ key: { header: X-Device-Id } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_rejected() {
    let b = backends(1).await;
    let t = Tether::start(&config(&b, KEY, "", "", ""));
    let mut c = Client::new(t.addr("web"));
    let r = c
        .raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(b[0].stats.requests(), 0, "nothing reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_tunnelled() {
    let b = backends(1).await;
    let t = Tether::start(&config(&b, KEY, "", "", ""));
    let r = Client::new(t.addr("web"))
        .get(
            "/",
            &[
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "served as plain HTTP/1.1");
    let h = &r.json()["headers"];
    assert!(h.get("upgrade").is_none(), "backend saw an upgrade: {h}");
    assert!(h.get("http2-settings").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_header_gets_431() {
    let b = backends(1).await;
    let t = Tether::start(&config(&b, KEY, "", "", ""));
    let big = "a".repeat(1 << 20);
    let mut s = TcpStream::connect(t.addr("web")).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let (mut rd, mut wr) = s.split();
    let write = async {
        // the proxy may stop reading once it has answered: that is fine
        let _ = wr.write_all(req.as_bytes()).await;
    };
    let read = async {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut buf)).await;
        buf
    };
    let (_, buf) = tokio::join!(write, read);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.starts_with("HTTP/1.1 431"),
        "got {:?}",
        &text[..text.len().min(200)]
    );
    assert_eq!(b[0].stats.requests(), 0);
    // a header just under the limit is fine
    let ok = "a".repeat(60_000);
    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", "d"), ("X-Big", &ok)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_at_client_header() {
    let b = backends(1).await;
    let t = Tether::start(&config(
        &b,
        KEY,
        "",
        "    timeouts: { client_header: 2s }\n",
        "",
    ));
    let mut s = TcpStream::connect(t.addr("web")).await.unwrap();
    let start = Instant::now();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\nX-Device-Id: slowloris\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = None;
    for byte in req.iter() {
        if s.write_all(&[*byte]).await.is_err() {
            cut = Some(start.elapsed());
            break;
        }
        // a closed connection shows up as a readable EOF (or the 408)
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(250), s.read(&mut buf)).await
        {
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(
                n == 0 || text.starts_with("HTTP/1.1 408"),
                "unexpected answer {text:?}"
            );
            cut = Some(start.elapsed());
            break;
        }
    }
    let cut = cut.expect("the slow client was never cut");
    assert!(
        cut >= Duration::from_millis(1900) && cut < Duration::from_secs(5),
        "cut after {cut:?}"
    );
    assert_eq!(b[0].stats.requests(), 0);
    // a normal client on the same listener is unaffected
    assert_eq!(
        Client::new(t.addr("web"))
            .get("/", &[("X-Device-Id", "d")])
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_gets_504_at_response_header() {
    let b = backends(1).await;
    let t = Tether::start(&config(
        &b,
        KEY,
        "    timeouts: { connect: 1s, response_header: 1s }\n",
        "",
        "",
    ));
    let start = Instant::now();
    let r = Client::new(t.addr("web"))
        .get("/hang", &[("X-Device-Id", "d")])
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_tether_headers_never_reach_the_backend() {
    let b = backends(1).await;
    let t = Tether::start(&config(&b, KEY, "", "", ""));
    let r = Client::new(t.addr("web"))
        .get(
            "/",
            &[
                ("X-Device-Id", "d1"),
                ("X-Tether-Moved-From", "b9"),
                ("X-Tether-Move-Reason", "down"),
                ("X-Tether-Session", "someone-else"),
                ("X-Forwarded-For", "6.6.6.6"),
            ],
        )
        .await
        .unwrap();
    let h = &r.json()["headers"];
    assert!(h.get("x-tether-moved-from").is_none(), "{h}");
    assert!(h.get("x-tether-move-reason").is_none(), "{h}");
    assert_eq!(h["x-tether-session"], "d1");
    // untrusted peer: its X-Forwarded-For is replaced, not believed
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_are_believed_for_the_client_address() {
    let b = backends(2).await;
    let t = Tether::start(&config(
        &b,
        "{ key: source_ip }",
        "",
        "",
        "server: { trusted_proxies: [127.0.0.0/8] }",
    ));
    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Forwarded-For", "203.0.113.7, 127.0.0.2")])
        .await
        .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(
        h["x-tether-session"], "203.0.113.7",
        "keyed by the first untrusted hop"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.2, 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_max_connections_holds_extra_clients_in_the_backlog() {
    let b = backends(1).await;
    let t = Tether::start(&config(&b, KEY, "", "    max_connections: 2\n", ""));
    let mut c1 = Client::new(t.addr("web"));
    let mut c2 = Client::new(t.addr("web"));
    assert_eq!(
        c1.get("/", &[("X-Device-Id", "a")]).await.unwrap().status,
        200
    );
    assert_eq!(
        c2.get("/", &[("X-Device-Id", "b")]).await.unwrap().status,
        200
    );
    // the third connection is not served while two are open
    let addr = t.addr("web");
    let third =
        tokio::spawn(async move { Client::new(addr).get("/", &[("X-Device-Id", "c")]).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !third.is_finished(),
        "third connection served beyond max_connections"
    );
    drop(c1);
    let r = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_socket_gets_400_and_the_proxy_lives_on() {
    let b = backends(1).await;
    let t = Tether::start(&config(&b, KEY, "", "", ""));
    let mut s = TcpStream::connect(t.addr("web")).await.unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "got {text:?}"
    );
    assert_eq!(
        Client::new(t.addr("web"))
            .get("/", &[("X-Device-Id", "d")])
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_max_connections_spans_listeners() {
    let b = backends(1).await;
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\nserver: {{ max_connections: 3 }}\n\
         pools:\n  app:\n    backends:\n{}\
         listeners:\n\
         \x20 - {{ name: one, bind: \"127.0.0.1:0\", pool: app, max_connections: 2, affinity: {{ key: {{ header: X-Device-Id }} }} }}\n\
         \x20 - {{ name: two, bind: \"127.0.0.2:0\", pool: app, max_connections: 2, affinity: {{ key: {{ header: X-Device-Id }} }} }}\n",
        common::backend_yaml(&b)
    );
    let t = Tether::start(&yaml);
    let mut held = Vec::new();
    for l in ["one", "one", "two"] {
        let mut c = Client::new(t.addr(l));
        assert_eq!(
            c.get("/", &[("X-Device-Id", "a")]).await.unwrap().status,
            200
        );
        held.push(c);
    }
    // listener `two` has room (1 of 2) but the process is full (3 of 3)
    let addr = t.addr("two");
    let fourth =
        tokio::spawn(async move { Client::new(addr).get("/", &[("X-Device-Id", "b")]).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !fourth.is_finished(),
        "served beyond server.max_connections"
    );
    held.remove(0);
    let r = tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("served once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
}

/// Is `name` (as whoami reports it: lower case) a forwarding header, in either spelling?
fn forwarding(name: &str) -> bool {
    let n = name.replace('_', "-");
    n == "forwarded" || n == "x-real-ip" || n == "x-scheme" || n.starts_with("x-forwarded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_untrusted_clients_never_reach_the_backend() {
    let b = backends(1).await;
    // 127.0.0.1 (the client below) is not among the trusted proxies.
    let t = Tether::start(&config(
        &b,
        "{ key: source_ip }",
        "",
        "",
        "server: { trusted_proxies: [\"127.0.0.2\"] }",
    ));
    let spoofed = [
        ("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
        ("X-Real-Ip", "6.6.6.6"),
        ("X-Scheme", "https"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("x-forwarded-for", "7.7.7.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Server", "evil"),
        ("X-Forwarded-Uri", "/admin"),
        ("X-Forwarded-Method", "DELETE"),
        ("X-Forwarded-Prefix", "/evil"),
        ("X-Forwarded-Scheme", "https"),
        ("X-Forwarded-Ssl", "on"),
        ("X-Forwarded-Tls-Client-Cert", "MIIBevil"),
        ("X-Forwarded-Tls-Client-Cert-Info", "Subject=\"CN=admin\""),
        ("X-FORWARDED-SOMETHING-NEW", "x"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("X_Real_Ip", "6.6.6.6"),
        ("X_FORWARDED_HOST", "evil.example"),
        ("x_forwarded_proto", "https"),
        ("X-Forwarded_Port", "443"),
        ("x_scheme", "https"),
        ("X-Keep-Me", "yes"),
    ];
    let r = Client::new(t.addr("web")).get("/", &spoofed).await.unwrap();
    assert_eq!(r.status, 200);
    let h = r.json()["headers"].clone();
    let obj = h.as_object().expect("headers");
    let seen: Vec<_> = obj.keys().filter(|k| forwarding(k)).cloned().collect();
    assert_eq!(
        seen,
        ["x-forwarded-for", "x-forwarded-proto"],
        "only tether's own forwarding headers: {h}"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-keep-me"], "yes", "other headers pass");
    assert_eq!(h["x-tether-session"], "127.0.0.1", "keyed by the peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_x_forwarded_for_line_of_a_trusted_proxy_counts() {
    let b = backends(1).await;
    let t = Tether::start(&config(
        &b,
        "{ key: source_ip }",
        "",
        "",
        "server: { trusted_proxies: [\"127.0.0.2\", \"127.0.0.5\"] }",
    ));
    let s = common::tcp::connect_from("127.0.0.2".parse().unwrap(), t.addr("web"))
        .await
        .unwrap();
    let mut s = tokio::io::BufReader::new(s);
    let req = "GET / HTTP/1.1\r\nHost: app\r\n\
               X-Forwarded-For: 203.0.113.7\r\n\
               X-Real-Ip: 198.51.100.9\r\n\
               X-Forwarded-For: 198.51.100.9, 127.0.0.5\r\n\
               X-Forwarded-Proto: https\r\n\
               Connection: close\r\n\r\n";
    s.get_mut().write_all(req.as_bytes()).await.unwrap();
    let r = common::http::read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert_eq!(
        h["x-forwarded-for"], "203.0.113.7, 198.51.100.9, 127.0.0.5, 127.0.0.2",
        "both lines, in order, then the peer: {h}"
    );
    assert_eq!(
        h["x-tether-session"], "198.51.100.9",
        "the first untrusted hop from the right, across lines"
    );
    assert_eq!(
        h["x-forwarded-proto"], "https",
        "a trusted proxy's word stands"
    );
    assert_eq!(h["x-real-ip"], "198.51.100.9", "kept from a trusted proxy");
}
