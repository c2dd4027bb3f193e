//! Probes against real sockets on 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::*;

const T: Duration = Duration::from_millis(500);

fn http(method: &str, host: Option<&str>, expect: &[u16]) -> HealthKind {
    HealthKind::Http {
        method: http::Method::from_bytes(method.as_bytes()).unwrap(),
        path: "/healthz".to_owned(),
        host: host.map(str::to_owned),
        expect_status: expect.to_vec(),
    }
}

/// A one-shot HTTP server: reads one request head, answers `response`
/// (sent in two pieces, so the probe must reassemble), returns the head it saw.
async fn serve(response: &'static str) -> (SocketAddr, JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "request head cut short");
            head.extend_from_slice(&b[..n]);
        }
        let (a, z) = response.split_at(response.len().min(6));
        s.write_all(a.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = s.write_all(z.as_bytes()).await;
        String::from_utf8(head).unwrap()
    });
    (addr, task)
}

#[tokio::test]
async fn tcp_accepting_passes() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    probe(&HealthKind::Tcp, addr, T).await.unwrap();
}

#[tokio::test]
async fn tcp_refused_fails() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = probe(&HealthKind::Tcp, addr, T).await.unwrap_err();
    assert!(matches!(err, ProbeError::Refused), "{err:?}");
    assert_eq!(err.to_string(), "connection refused");
    let err = probe(&http("GET", None, &[200]), addr, T)
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::Refused), "{err:?}");
}

#[tokio::test]
async fn http_200_passes_with_default_request() {
    let (addr, seen) = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    probe(&http("GET", None, &[200]), addr, T).await.unwrap();
    let head = seen.await.unwrap();
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("\r\nHost: {addr}\r\n")), "{head}");
    assert!(head.contains("\r\nUser-Agent: tether-health\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
}

#[tokio::test]
async fn http_500_fails_with_its_status() {
    let (addr, _seen) = serve("HTTP/1.1 500 Internal Server Error\r\n\r\n").await;
    let err = probe(&http("GET", None, &[200]), addr, T)
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::BadStatus(500)), "{err:?}");
    assert_eq!(err.to_string(), "bad status 500");
}

#[tokio::test]
async fn expect_status_is_honoured() {
    let (addr, _seen) = serve("HTTP/1.1 204 No Content\r\n\r\n").await;
    probe(&http("GET", None, &[204]), addr, T).await.unwrap();
    let (addr, _seen) = serve("HTTP/1.1 200 OK\r\n\r\n").await;
    let err = probe(&http("GET", None, &[204]), addr, T)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "bad status 200");
}

#[tokio::test]
async fn custom_method_and_host_reach_the_server() {
    let (addr, seen) = serve("HTTP/1.0 200 OK\r\n\r\n").await;
    probe(&http("HEAD", Some("app.internal"), &[200]), addr, T)
        .await
        .unwrap();
    let head = seen.await.unwrap();
    assert!(head.starts_with("HEAD /healthz HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nHost: app.internal\r\n"), "{head}");
}

#[tokio::test]
async fn garbage_is_a_bad_response() {
    let (addr, _seen) = serve("SSH-2.0-OpenSSH_9.6\r\n").await;
    let err = probe(&http("GET", None, &[200]), addr, T)
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::BadResponse(_)), "{err:?}");
    assert!(err.to_string().starts_with("bad response: "), "{err}");
}

#[tokio::test]
async fn close_without_answer_is_a_bad_response() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 1024];
        let _ = s.read(&mut b).await;
        // Dropped: closed with no status line.
    });
    let err = probe(&http("GET", None, &[200]), addr, T)
        .await
        .unwrap_err();
    assert!(matches!(err, ProbeError::BadResponse(_)), "{err:?}");
}

#[tokio::test]
async fn silent_server_times_out_within_the_timeout() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Accepts and holds every connection, never writes: a frozen backend.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = l.accept().await.unwrap();
            held.push(s);
        }
    });
    let timeout = Duration::from_millis(200);
    let start = Instant::now();
    let err = probe(&http("GET", None, &[200]), addr, timeout)
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ProbeError::TimedOut(_)), "{err:?}");
    assert!(err.to_string().starts_with("timed out"), "{err}");
    assert!(took >= timeout && took < timeout * 2, "took {took:?}");
    holder.abort();
}

#[test]
fn status_line_parsing() {
    assert_eq!(parse_status_line(b"HTTP/1.1 503 Busy\r\n").unwrap(), 503);
    assert_eq!(parse_status_line(b"HTTP/1.1 200\r\n").unwrap(), 200);
    assert!(parse_status_line(b"HTTP/2 200\r\n").is_err());
    assert!(parse_status_line(b"200 OK\r\n").is_err());
}
