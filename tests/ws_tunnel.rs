//! WebSocket tunnels byte for byte (issue 12): what tether forwards, what it
//! adds (its own close frame, only for its own decisions and only between
//! two frames), how a peer's close or reset reaches the other side, and the
//! upgrade handshake as a proxied request (headers, early bytes, the accept
//! key, refusals).

mod common;

use std::time::{Duration, Instant};

use common::rawws::{self, close_frame, frame, read_to_end, Backend, End, Reply};
use common::tcp::{metric, metrics};
use common::{Client, Tether};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn yaml(backends: &[&Backend], health: &str, listener_extra: &str) -> String {
    let mut list = String::new();
    for (i, b) in backends.iter().enumerate() {
        list.push_str(&format!(
            "      - {{ id: b{}, addr: \"{}\" }}\n",
            i + 1,
            b.addr
        ));
    }
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         pools:\n  app:\n    health: {health}\n    backends:\n{list}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n{listener_extra}    \
         affinity: {{ key: {{ header: X-Device }}, fallback: random }}\n"
    )
}

const NO_HEALTH: &str = "{ kind: none }";

async fn drain(t: &Tether, id: &str) {
    let r = Client::new(t.admin)
        .request(
            "POST",
            &format!("/api/pools/app/backends/{id}/drain"),
            &[],
            br#"{"deadline":"100ms"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
}

async fn connections(t: &Tether) -> f64 {
    metric(
        &metrics(t).await,
        "tether_connections_active{listener=\"web\"}",
    )
}

async fn until_no_connections(t: &Tether, limit: Duration) -> Duration {
    let start = Instant::now();
    while connections(t).await != 0.0 {
        assert!(
            start.elapsed() < limit,
            "connections still open after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// A backend that stops reading while the client pushes megabytes is
/// drained: the client gets 1012 at once (nothing of the backend's is in
/// flight) and the tunnel is gone within a second, whatever is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_backend_drained_closes_within_a_second() {
    let mut b = Backend::start(Reply::Accept(Vec::new())).await;
    let t = Tether::start(&yaml(&[&b], NO_HEALTH, ""));
    let c = rawws::upgrade(t.addr("web"), &[], b"").await;
    assert_eq!(c.status(), 101);
    let _backend = b.next().await; // never read from
    let (mut rd, mut wr) = c.stream.into_split();
    let pusher = tokio::spawn(async move {
        let chunk = frame(true, 0x2, Some([1, 2, 3, 4]), &[7u8; 60_000]);
        let mut sent = 0usize;
        while wr.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
        sent
    });
    // Let the buffers between client and backend fill up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    drain(&t, "b1").await;
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), rd.read_exact(&mut got))
        .await
        .expect("a close frame in time")
        .unwrap();
    assert_eq!(got.to_vec(), close_frame(1012));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    until_no_connections(&t, Duration::from_secs(2)).await;
    let sent = pusher.await.unwrap();
    assert!(sent > 1 << 20, "the client pushed megabytes ({sent} bytes)");
}

/// The same with a mark-down (the backend's checks fail) instead of a drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_backend_marked_down_closes_within_a_second() {
    let mut b = Backend::start(Reply::Accept(Vec::new())).await;
    let health = "{ kind: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }";
    let t = Tether::start(&yaml(&[&b], health, ""));
    let c = rawws::upgrade(t.addr("web"), &[], b"").await;
    assert_eq!(c.status(), 101);
    let _backend = b.next().await;
    let big = frame(true, 0x2, Some([9, 9, 9, 9]), &vec![1u8; 4 << 20]);
    let (mut rd, mut wr) = c.stream.into_split();
    tokio::spawn(async move { wr.write_all(&big).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    b.close_listener();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(3), rd.read_exact(&mut got))
        .await
        .expect("a close frame in time")
        .unwrap();
    assert_eq!(got.to_vec(), close_frame(1012));
    let closed = start.elapsed();
    until_no_connections(&t, Duration::from_secs(2)).await;
    assert!(
        closed < Duration::from_secs(2),
        "{closed:?} (checks every 100 ms)"
    );
}

/// A 101 that arrives with the first bytes of a 70,000-byte frame, then a
/// drain mid-frame: the frame completes, then tether's close frame. When
/// the rest never comes, the connection is cut after 1 s without a frame.
/// Either way the client's bytes are the backend's, never altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_mid_frame_completes_or_cuts_never_alters() {
    let big = frame(true, 0x2, None, &vec![b'z'; 70_000]);
    for finish in [true, false] {
        let mut b = Backend::start(Reply::Accept(big[..1000].to_vec())).await;
        let t = Tether::start(&yaml(&[&b], NO_HEALTH, ""));
        let mut c = rawws::upgrade(t.addr("web"), &[], b"").await;
        assert_eq!(c.status(), 101);
        let mut backend = b.next().await;
        drain(&t, "b1").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if finish {
            backend.stream.write_all(&big[1000..]).await.unwrap();
            // Sent after the frame: tether's close frame came first, this never shows.
            let _ = backend
                .stream
                .write_all(&frame(true, 0x1, None, b"late"))
                .await;
        }
        let (mut got, end) = read_to_end(&mut c.stream, Duration::from_secs(3)).await;
        got.splice(0..0, c.rest.clone());
        if finish {
            let mut want = big.clone();
            want.extend(close_frame(1012));
            assert_eq!(got.len(), want.len());
            assert!(got == want, "the frame, then 1012");
        } else {
            assert_eq!(got, big[..1000].to_vec(), "cut, nothing added");
            assert_eq!(end, End::Fin);
        }
    }
}

/// A backend that resets its connection: the client's connection is reset
/// too, after exactly the bytes the backend sent. One that closes (FIN):
/// the client gets a FIN after them. Nothing added either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_reset_and_fin_reach_the_client_as_they_are() {
    let mut b = Backend::start(Reply::Accept(Vec::new())).await;
    let t = Tether::start(&yaml(&[&b], NO_HEALTH, ""));
    for reset in [true, false] {
        let mut c = rawws::upgrade(t.addr("web"), &[], b"").await;
        let backend = b.next().await;
        let mut s = backend.stream;
        let msg = frame(true, 0x1, None, b"bye");
        s.write_all(&msg).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if reset {
            rawws::reset_on_close(&s);
            drop(s);
        } else {
            s.shutdown().await.unwrap();
        }
        let (mut got, end) = read_to_end(&mut c.stream, Duration::from_secs(3)).await;
        got.splice(0..0, c.rest.clone());
        assert_eq!(got, msg, "reset={reset}");
        assert_eq!(end, if reset { End::Reset } else { End::Fin });
    }
}

/// The client closes (its close frame reaches the backend untouched), the
/// backend answers with its own and closes: the client gets exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_handshake_passes_untouched() {
    let mut b = Backend::start(Reply::Accept(Vec::new())).await;
    let t = Tether::start(&yaml(&[&b], NO_HEALTH, ""));
    let mut c = rawws::upgrade(t.addr("web"), &[], b"").await;
    let mut backend = b.next().await;
    let client_close = frame(true, 0x8, Some([5, 6, 7, 8]), &[0x03, 0xe8, b'o', b'k']);
    c.stream.write_all(&client_close).await.unwrap();
    let mut got = vec![0u8; client_close.len()];
    backend.stream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, client_close);
    let server_close = frame(true, 0x8, None, &[0x03, 0xe8]);
    backend.stream.write_all(&server_close).await.unwrap();
    backend.stream.shutdown().await.unwrap();
    let (got, end) = read_to_end(&mut c.stream, Duration::from_secs(3)).await;
    assert_eq!(got, server_close);
    assert_eq!(end, End::Fin);
    drop(c);
    until_no_connections(&t, Duration::from_secs(2)).await;
}

/// A tunnel one side closed ends `half_closed` later if the other does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_tunnel_ends_after_half_closed() {
    let mut b = Backend::start(Reply::Accept(Vec::new())).await;
    let t = Tether::start(&yaml(
        &[&b],
        NO_HEALTH,
        "    timeouts: { half_closed: 1s }\n",
    ));
    let mut c = rawws::upgrade(t.addr("web"), &[], b"").await;
    let mut backend = b.next().await;
    backend.stream.shutdown().await.unwrap();
    let start = Instant::now();
    // The client sees the FIN and keeps its own side open.
    let mut one = [0u8; 1];
    assert_eq!(c.stream.read(&mut one).await.unwrap(), 0);
    // The backend's read side ends when tether gives up on the client.
    let (_, end) = read_to_end(&mut backend.stream, Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert_eq!(end, End::Fin);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    until_no_connections(&t, Duration::from_secs(2)).await;
}

/// Bytes the client sent with its request head (before the 101) reach the
/// backend right after the head, and the handshake is a proxied request:
/// hop-by-hop and Connection-nominated headers removed, X-Tether-* from the
/// client removed, tether's own set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_and_handshake_headers() {
    let mut b = Backend::start(Reply::Accept(Vec::new())).await;
    let t = Tether::start(&yaml(&[&b], NO_HEALTH, ""));
    let early = frame(true, 0x1, Some([1, 1, 1, 1]), b"first");
    let extra = [
        ("X-Device", "dev-7"),
        ("X-Tether-Session", "forged"),
        ("Keep-Alive", "timeout=5"),
        ("X-Secret", "hop"),
        ("Connection", "X-Secret"),
    ];
    let mut c = rawws::upgrade(t.addr("web"), &extra, &early).await;
    assert_eq!(c.status(), 101);
    let mut backend = b.next().await;
    let mut got = backend.early.clone();
    while got.len() < early.len() {
        let mut chunk = [0u8; 64];
        let n = backend.stream.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, early);
    let head = backend.head.to_ascii_lowercase();
    assert!(head.contains("x-tether-session: dev-7\r\n"), "{head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    assert!(
        !head.contains("forged") && !head.contains("keep-alive") && !head.contains("x-secret"),
        "{head}"
    );
    // And the tunnel works both ways.
    let answer = frame(true, 0x1, None, b"hello");
    backend.stream.write_all(&answer).await.unwrap();
    let mut got = c.rest.clone();
    while got.len() < answer.len() {
        let mut chunk = [0u8; 64];
        let n = c.stream.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, answer);
}

/// A 101 whose Sec-WebSocket-Accept does not match the key is a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_accept_key_is_a_502() {
    let b = Backend::start(Reply::WrongAccept).await;
    let t = Tether::start(&yaml(&[&b], NO_HEALTH, ""));
    let c = rawws::upgrade(t.addr("web"), &[], b"").await;
    assert_eq!(c.status(), 502, "{}", c.head);
}

/// A refused upgrade is relayed as the response it is, its body framed as
/// the backend framed it (length or chunked), and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_is_relayed() {
    let bodies: [(&[u8], &[u8]); 2] = [
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nX-App: 1\r\nConnection: keep-alive\r\n\r\n",
            b"nope!\n",
        ),
        (
            b"HTTP/1.1 426 Upgrade Required\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"4\r\nwhy?\r\n0\r\n\r\n",
        ),
    ];
    for (head, body) in bodies {
        let b = Backend::start(Reply::Raw([head, body].concat())).await;
        let t = Tether::start(&yaml(&[&b], NO_HEALTH, ""));
        let mut c = rawws::upgrade(t.addr("web"), &[], b"").await;
        let status: u16 = std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap();
        assert_eq!(c.status(), status);
        assert_eq!(c.header("connection"), Some("close"));
        let (mut got, end) = read_to_end(&mut c.stream, Duration::from_secs(3)).await;
        got.splice(0..0, c.rest.clone());
        assert_eq!(got, body.to_vec());
        assert_eq!(end, End::Fin);
    }
}

/// The insert-mode cookie comes with the 101, so a WebSocket-only client
/// sticks: its next WebSocket, with the cookie, lands on the same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_on_the_101_brings_the_next_websocket_back() {
    let backends = common::backends(3).await;
    let t = Tether::start(&format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         pools:\n  app:\n    backends:\n{}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true }} }} }}\n",
        common::backend_yaml(&backends)
    ));
    for _ in 0..5 {
        let mut c = rawws::upgrade(t.addr("web"), &[], b"").await;
        assert_eq!(c.status(), 101);
        let cookie = c
            .header("set-cookie")
            .expect("a cookie on the 101")
            .to_owned();
        assert!(
            cookie.starts_with("TETHER=") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
        let value = cookie.split(';').next().unwrap().to_owned();
        // whoami echoes "{id}: {text}" in one short unmasked frame.
        c.stream
            .write_all(&frame(true, 0x1, Some([3, 1, 4, 1]), b"x"))
            .await
            .unwrap();
        let mut echo = c.rest.clone();
        while echo.len() < 2 || echo.len() < 2 + usize::from(echo[1] & 0x7f) {
            let mut chunk = [0u8; 256];
            let n = c.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "echo");
            echo.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&echo[2..]).into_owned();
        let owner = text.split(':').next().unwrap().to_owned();
        for _ in 0..3 {
            let mut again = common::ws::open(t.addr("web"), &[("Cookie", &value)])
                .await
                .unwrap();
            assert_eq!(common::ws::echo(&mut again, "b").await.unwrap(), owner);
        }
    }
}
