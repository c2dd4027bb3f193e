//! HTTP/2 (over TLS by ALPN, and h2c with prior knowledge), WebSocket over
//! https, IPv6 clients and backends, and `protocol: tls` (TLS terminated,
//! then L4 pinned by SNI), on real sockets.

mod common;
#[path = "common/tls.rs"]
mod tlsh;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::echo::echoes;
use common::tcp::{banner, config_yaml, listener_yaml, owner};
use common::{backend_yaml, backends, Client, Tether};
use futures_util::{SinkExt, StreamExt};
use tlsh::{alpn, connect, get, h2_client, h2_get, write_pair, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const COOKIE: &str = "{ key: { cookie: { name: TETHER, insert: true } } }";

fn yaml(b: &[common::whoami::Running], bind: &str, listener: &str, affinity: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n  app:\n    backends:\n{}\
         listeners:\n  - name: web\n    bind: \"{bind}\"\n    pool: app\n{listener}    affinity: {affinity}\n",
        backend_yaml(b)
    )
}

const HTTPS: &str =
    "    protocol: https\n    tls: { certs: [{ name: site, cert: site.crt, key: site.key }] }\n";

/// A temp dir with certificate `site` (web.test) signed by `ca`.
fn site(ca: &TestCa) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), "site", &ca.leaf("web.test", &["web.test"]));
    dir
}

/// Open `n` sessions on `send` (no cookie), then replay each one 3 times,
/// all at once on the same connection: every request lands on its session's
/// backend. Returns cookie -> backend.
async fn sessions(
    send: &h2::client::SendRequest<Bytes>,
    n: usize,
    proto: &str,
) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let (status, cookie, json) = h2_get(send, "/", None).await;
        assert_eq!(status, 200);
        assert_eq!(json["headers"]["x-forwarded-proto"], proto);
        let id = json["id"].as_str().unwrap_or_default().to_string();
        out.insert(cookie.expect("a new session gets its cookie"), id);
    }
    let distinct: HashSet<_> = out.values().collect();
    assert!(
        distinct.len() >= 2,
        "sessions spread over backends: {out:?}"
    );
    replay(send, &out).await;
    out
}

/// Every session's requests, concurrently on one h2 connection, reach its backend.
async fn replay(send: &h2::client::SendRequest<Bytes>, s: &HashMap<String, String>) {
    let all = s.iter().flat_map(|(cookie, id)| {
        (0..3).map(move |_| async move {
            let (status, set, json) = h2_get(send, "/", Some(cookie)).await;
            assert_eq!(status, 200);
            assert_eq!(json["id"].as_str(), Some(id.as_str()), "{cookie}");
            assert!(set.is_none());
        })
    });
    futures_util::future::join_all(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_keeps_each_sessions_backend() {
    let b = backends(3).await;
    let ca = TestCa::new("tether test CA");
    let t = Tether::start_in(site(&ca), &yaml(&b, "127.0.0.1:0", HTTPS, COOKIE));
    let addr = t.addr("web");
    let tls = connect(&ca.connector(&["h2", "http/1.1"]), addr, "web.test")
        .await
        .unwrap();
    assert_eq!(alpn(&tls).as_deref(), Some("h2"), "ALPN picks h2");
    let send = h2_client(tls).await;
    let s = sessions(&send, 10, "https").await;
    // Another connection, and HTTP/1.1 on the same listener: same backends.
    let tls = connect(&ca.connector(&["h2"]), addr, "web.test")
        .await
        .unwrap();
    replay(&h2_client(tls).await, &s).await;
    let mut h1 = connect(&ca.connector(&["http/1.1"]), addr, "web.test")
        .await
        .unwrap();
    assert_eq!(alpn(&h1).as_deref(), Some("http/1.1"));
    for (cookie, id) in &s {
        let r = get(&mut h1, "/", &[("cookie", cookie)]).await.unwrap();
        assert_eq!(&r.backend(), id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge() {
    let b = backends(3).await;
    let mut t = Tether::start(&yaml(&b, "127.0.0.1:0", "    h2c: true\n", COOKIE));
    let addr = t.addr("web");
    let send = h2_client(TcpStream::connect(addr).await.unwrap()).await;
    let s = sessions(&send, 10, "http").await;
    replay(
        &h2_client(TcpStream::connect(addr).await.unwrap()).await,
        &s,
    )
    .await;
    // HTTP/1.1 clients on the same listener are served as before.
    let (cookie, id) = s.iter().next().unwrap();
    let r = Client::new(addr)
        .get("/", &[("cookie", cookie)])
        .await
        .unwrap();
    assert_eq!(&common::backend_of(&r), id);
    // SIGTERM with an idle h2 connection open: GOAWAY, and the process exits at once.
    t.signal(nix::sys::signal::Signal::SIGTERM);
    let start = std::time::Instant::now();
    let exited = t.wait_exit(Duration::from_secs(10));
    assert!(exited.is_some(), "still running:\n{}", t.log_text());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    drop(send);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_https() {
    let b = backends(2).await;
    let ca = TestCa::new("tether test CA");
    let t = Tether::start_in(site(&ca), &yaml(&b, "127.0.0.1:0", HTTPS, COOKIE));
    let tls = connect(&ca.connector(&["http/1.1"]), t.addr("web"), "web.test")
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://web.test/ws", tls)
        .await
        .expect("websocket handshake over TLS");
    let id = resp
        .headers()
        .get("x-backend-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}"))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = got else {
            panic!("no echo: {got:?}");
        };
        assert_eq!(text, format!("{id}: hello {i}"));
    }
    ws.close(None).await.unwrap();
}

/// Is there an IPv6 loopback to test on?
async fn has_ipv6() -> bool {
    tokio::net::TcpListener::bind("[::1]:0").await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_client_is_pinned_like_an_ipv4_one() {
    if !has_ipv6().await {
        println!("SKIPPED: this machine has no ::1");
        return;
    }
    let mut b = Vec::new();
    for i in 1..=3 {
        b.push(
            common::whoami::start(&format!("b{i}"), "[::1]:0")
                .await
                .unwrap(),
        );
    }
    // A dual-stack listener: IPv4 and IPv6 clients on one socket.
    let t = Tether::start(&yaml(&b, "[::]:0", "", "{ key: source_ip }"));
    let port = t.addr("web").port();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for (to, key) in [(v6, "::1"), (v4, "127.0.0.1")] {
        let mut seen = HashSet::new();
        for _ in 0..4 {
            let r = Client::new(to).get("/", &[]).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["headers"]["x-forwarded-for"], key);
            seen.insert(common::backend_of(&r));
        }
        assert_eq!(seen.len(), 1, "{key} pinned: {seen:?}");
        assert_eq!(
            owner(&t, key).await.as_ref(),
            seen.iter().next(),
            "keyed as {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_terminates_then_pins_by_sni() {
    let e = echoes(3, false).await;
    let ca = TestCa::new("tether test CA");
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("dev{i}.test")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    write_pair(dir.path(), "devices", &ca.leaf("devices", &refs));
    let tls = "    tls: { certs: [{ name: devices, cert: devices.crt, key: devices.key }] }\n";
    let l = listener_yaml("tls", "tls", "{ key: sni }", tls);
    let t = Tether::start_in(dir, &config_yaml(&e, "", &l, ""));
    let c = ca.connector(&[]);
    let mut owners = HashMap::new();
    for round in 0..3 {
        for name in &names {
            let mut s = connect(&c, t.addr("tls"), name).await.expect("TLS");
            s.write_all(b"hi\n").await.unwrap();
            s.flush().await.unwrap();
            let who = banner(&mut s, Duration::from_secs(5))
                .await
                .expect("banner");
            let mut echo = [0u8; 3];
            s.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo, b"hi\n");
            let first = owners.entry(name.clone()).or_insert_with(|| who.id.clone());
            assert_eq!(first, &who.id, "{name} round {round}");
        }
    }
    for name in &names {
        assert_eq!(
            owner(&t, name).await.as_ref(),
            owners.get(name),
            "keyed by SNI"
        );
    }
    assert!(
        owners.values().collect::<HashSet<_>>().len() >= 2,
        "{owners:?}"
    );
    // The backends got the decrypted bytes.
    let firsts: Vec<Vec<u8>> = e
        .iter()
        .flat_map(|b| b.firsts.lock().unwrap().clone())
        .collect();
    assert!(firsts.iter().all(|f| f == b"hi\n"), "{firsts:?}");
}
