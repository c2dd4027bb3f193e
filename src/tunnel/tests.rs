//! The engine's order of events over real loopback sockets: an end a peer
//! already sent is passed on before a decision of tether's that came after it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A connected pair: (the far end a test drives, the end the tunnel gets).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let far = TcpStream::connect(l.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (near, _) = l.accept().await.expect("accept");
    (far, near)
}

/// Run a WebSocket tunnel whose control says "backend moved" before its first
/// poll, after the backend end has done `backend_end` and it reached tether's
/// socket. Returns what the client received and how its read ended.
/// `backend_end` returns whatever must stay open until the end.
async fn moved_after<K>(backend_end: impl FnOnce(TcpStream) -> K) -> (Vec<u8>, io::Result<usize>) {
    let (mut client, client_side) = pair().await;
    let (backend, backend_side) = pair().await;
    let _keep = backend_end(backend);
    // Let the runtime's driver see the FIN or reset arrive on `backend_side`.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ctl = TunnelCtl::default();
    ctl.close(CloseReason::Moved);
    let (bytes_in, bytes_out) = (
        IntCounter::new("in_total", "in").expect("counter"),
        IntCounter::new("out_total", "out").expect("counter"),
    );
    let p = Params {
        mode: Mode::WebSocket,
        idle: Duration::from_secs(10),
        half_closed: Duration::from_secs(30),
        ctl: &ctl,
        bytes_in: &bytes_in,
        bytes_out: &bytes_out,
    };
    let run = tokio::time::timeout(
        Duration::from_secs(5),
        run(client_side, backend_side, Vec::new(), Vec::new(), false, &p),
    );
    let out = run.await.expect("the tunnel ends");
    assert!(
        matches!(out.end, End::Closed(_) | End::Reset(Peer::Backend)),
        "{}",
        out.end
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
            Ok(Ok(0)) => break Ok(0),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => break Err(e),
            Err(_) => panic!("the client's connection did not end"),
        }
    };
    // The client can still write: nothing of the tunnel is left to take it.
    let _ = client.write_all(b"x").await;
    (got, end)
}

#[tokio::test]
async fn a_backend_fin_already_received_goes_on_without_a_close_frame() {
    let (got, end) = moved_after(|b| {
        let std = b.into_std().expect("std");
        std.shutdown(std::net::Shutdown::Write).expect("shutdown");
        // Kept open (its read side) until the end, so only the FIN is seen.
        std
    })
    .await;
    assert!(
        got.is_empty(),
        "tether added {got:02x?} to the backend's FIN"
    );
    assert!(end.is_ok(), "{end:?}");
}

#[tokio::test]
async fn a_backend_reset_already_received_goes_on_as_a_reset() {
    let (got, end) = moved_after(|b| {
        b.set_reset();
        drop(b);
    })
    .await;
    assert!(
        got.is_empty(),
        "tether added {got:02x?} to the backend's reset"
    );
    let e = end.expect_err("the client's connection is reset");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
}

#[tokio::test]
async fn a_quiet_backend_gets_tethers_close_frame() {
    // The control the two tests above rely on: with nothing pending, the
    // decision is tether's, and it says so with 1012.
    let (got, _) = moved_after(|b| b).await;
    assert_eq!(got, wsframe::close_frame(1012), "{got:02x?}");
}
