//! Streaming responses (issue 13, item 2): `response_header` bounds only the
//! wait for the response head; the quiet gaps of a body are bounded by
//! `response_idle`, and a body cut there is not the backend's health failure.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{wait_state, Tether};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend streaming a chunked body: `GET /drip?head=MS&gap=MS&n=N` waits
/// `head` ms, sends the head, then `n` chunks `data: i\n\n` (the first at once,
/// the next ones `gap` ms apart), then the last chunk; with `close=1` the
/// body is unframed and ends with the connection. `big=N`: N bytes at once,
/// with a Content-Length.
struct Drip {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Drip {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn param(path: &str, name: &str) -> u64 {
    path.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn drip_conn(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    tokio::time::sleep(Duration::from_millis(param(&path, "head"))).await;
    let big = param(&path, "big") as usize;
    if big > 0 {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {big}\r\n\r\n");
        let _ = s.write_all(head.as_bytes()).await;
        let _ = s.write_all(&vec![b'x'; big]).await;
        let _ = s.read(&mut chunk).await;
        return;
    }
    // close=1: no framing at all, the body ends when the connection does.
    let close = param(&path, "close") == 1;
    let out = if close {
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    } else {
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    };
    if s.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    for i in 1..=param(&path, "n") {
        if i > 1 {
            tokio::time::sleep(Duration::from_millis(param(&path, "gap"))).await;
        }
        let data = format!("data: {i}\n\n");
        let frame = if close {
            data
        } else {
            format!("{:x}\r\n{data}\r\n", data.len())
        };
        if s.write_all(frame.as_bytes()).await.is_err() {
            return;
        }
    }
    if close {
        return;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    // Hold the connection like a keep-alive server until the proxy lets go.
    let _ = s.read(&mut chunk).await;
}

async fn drip() -> Drip {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(drip_conn(s));
        }
    });
    Drip { addr, task }
}

/// Tether over the drip backend (`b1`) with pool `timeouts` and tcp checks
/// (so passive health is on) that a cut body must not trip.
fn tether(d: &Drip, timeouts: &str) -> Tether {
    Tether::start(&format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         pools:\n  app:\n    timeouts: {timeouts}\n\
         \x20   health: {{ kind: tcp, interval: 30s, timeout: 500ms, rise: 1, fall: 1 }}\n\
         \x20   backends:\n      - {{ id: b1, addr: \"{}\" }}\n\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ header: X-Device-Id }} }}\n",
        d.addr
    ))
}

/// What a client reads for `path` until the response ends (last chunk) or the
/// connection closes: the raw bytes, whether the last chunk came, and how
/// long after the first body byte the reading stopped.
async fn fetch(t: &Tether, path: &str) -> (String, bool, Duration) {
    let mut s = TcpStream::connect(t.addr("web")).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: app\r\nX-Device-Id: d\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut first_body: Option<Instant> = None;
    let mut chunk = [0u8; 4096];
    let limit = Instant::now() + Duration::from_secs(15);
    loop {
        let left = limit.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => panic!("no end within 15 s: {:?}", String::from_utf8_lossy(&got)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
        if first_body.is_none() && String::from_utf8_lossy(&got).contains("data: 1") {
            first_body = Some(Instant::now());
        }
        if got.ends_with(b"\r\n0\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let complete = got.ends_with(b"\r\n0\r\n\r\n");
    let after = first_body.map(|f| f.elapsed()).unwrap_or_default();
    (text, complete, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_quieter_than_response_header_streams_to_the_end() {
    let d = drip().await;
    let t = tether(&d, "{ response_header: 1s }");
    // Server-sent events every 1.5 s for 4.5 s: each gap exceeds response_header.
    let (text, complete, _) = fetch(&t, "/drip?gap=1500&n=4").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(complete, "the body was cut: {text:?}\n{}", t.log_text());
    for i in 1..=4 {
        assert!(
            text.contains(&format!("data: {i}\n")),
            "event {i} missing: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_quiet_for_response_idle_is_cut_and_the_backend_stays_up() {
    let d = drip().await;
    let t = tether(&d, "{ response_idle: 1s }");
    // One event, then 3 s of silence.
    let (text, complete, after) = fetch(&t, "/drip?gap=3000&n=2").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.contains("data: 1\n"), "{text:?}");
    assert!(!complete, "a cut body must not look complete: {text:?}");
    assert!(!text.contains("data: 2"), "{text:?}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(2500),
        "cut {after:?} after the first event"
    );
    // fall is 1: had the cut counted, b1 would be down now.
    wait_state(&t, "b1", "up", Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_within_response_header_is_not_cut_by_a_shorter_response_idle() {
    let d = drip().await;
    let t = tether(&d, "{ response_header: 4s, response_idle: 1s }");
    let (text, complete, _) = fetch(&t, "/drip?head=2000&gap=300&n=3").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(complete, "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unframed_body_cut_at_response_idle_is_not_passed_off_as_complete() {
    let d = drip().await;
    let t = tether(&d, "{ response_idle: 1s }");
    // The backend's close ends this body: a cut must still show as one.
    let (text, complete, after) = fetch(&t, "/drip?gap=3000&n=2&close=1").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(text.contains("data: 1\n"), "{text:?}");
    assert!(!text.contains("data: 2"), "{text:?}");
    assert!(!complete, "a cut body must not look complete: {text:?}");
    assert!(
        after < Duration::from_millis(2500),
        "cut {after:?} after the first event"
    );
    // The same body, whole, passes.
    let (text, complete, _) = fetch(&t, "/drip?gap=300&n=2&close=1").await;
    assert!(text.contains("data: 2\n") && complete, "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slower_than_response_idle_still_gets_the_whole_body() {
    let d = drip().await;
    let t = tether(&d, "{ response_idle: 1s }");
    // 32 MiB: far more than the socket buffers and pingora's pipe hold, so
    // the backend waits on tether while the client does not read.
    let big = 32 << 20;
    let mut s = TcpStream::connect(t.addr("web")).await.unwrap();
    let req = format!("GET /drip?big={big} HTTP/1.1\r\nHost: app\r\nX-Device-Id: d\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = Vec::with_capacity(big + 512);
    let mut chunk = vec![0u8; 1 << 16];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break "closed",
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => break "stalled",
        }
        let head = got.windows(4).position(|w| w == b"\r\n\r\n");
        if head.is_some_and(|h| got.len() - h - 4 >= big) {
            break "whole";
        }
    };
    let head_len = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |h| h + 4);
    assert_eq!(
        (end, got.len() - head_len),
        ("whole", big),
        "{}",
        String::from_utf8_lossy(&got[..head_len])
    );
    wait_state(&t, "b1", "up", Duration::from_millis(10)).await;
}
