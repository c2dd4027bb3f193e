//! One accepted HTTP connection, from the socket to pingora's proxy loop:
//! the TLS handshake on `https` listeners, then HTTP/2 (ALPN `h2`, or on a
//! plain `h2c: true` listener a client that opens with the h2 preface) or
//! HTTP/1.1 behind the header guard (`conn::ConnStream`).
//!
//! HTTP/2 goes through pingora's own h2 server (`ServerApp::process_new`:
//! handshake, one task per stream, GOAWAY on shutdown; with tether's accept
//! loop around it when the pool speaks HTTP/2, see `h2_conn`); every stream
//! is a request of its own to the `Router`, so each is routed by its own key.
//! HTTP/1.1 clients of a pool that speaks HTTP/2 to its backends go to
//! pingora's loop whatever `http1_engine` says. The
//! header guard does not apply to h2 (binary frames): there the h2 settings
//! bound header size, and the connection's idle timeout bounds a silent peer.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use pingora::apps::{HttpServerApp, HttpServerOptions};
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::TcpStream;

use super::conn::{ConnInfo, ConnStream, HeaderLimits};
use super::listener::ListenerRt;
use super::router::Router;
use super::socket::ClientSocket;
use crate::config::Http1Engine;
use crate::tls::TlsConn;

/// HTTP/2 bounds per connection. Streams in flight at once; and the
/// rapid-reset defence (CVE-2023-44487): streams the client opens and resets
/// before they are accepted count against `H2_MAX_PENDING_RESETS`, streams
/// tether has to reset for the client's errors against `H2_MAX_LOCAL_RESETS`;
/// past either the connection is closed with ENHANCE_YOUR_CALM.
const H2_MAX_STREAMS: u32 = 100;
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_RESETS: usize = 128;

/// The HTTP/2 client connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// pingora's HTTP proxy for the listener in `slot`, with tether's h2
/// settings taken from its current config (see [`proxy_settings`]).
pub fn proxy(conf: &Arc<ServerConf>, slot: Arc<ArcSwap<ListenerRt>>) -> HttpProxy<Router> {
    let (keepalive, header_bytes) = proxy_settings(&slot.load());
    let mut proxy = http_proxy(conf, Router { listener: slot });
    let mut opts = HttpServerOptions::default();
    // Only connections tether already found to be h2 reach pingora's h2 path,
    // and for plain ones that needs h2c on (TLS ones go by ALPN).
    opts.h2c = true;
    // An h2 connection with no stream open closes like an idle keep-alive one.
    opts.h2_idle_timeout = Some(keepalive);
    proxy.server_options = Some(opts);
    let mut h2 = default_h2_options();
    h2.max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_RESETS));
    proxy.h2_options = Some(h2);
    proxy
}

/// What [`proxy`] fixes at creation: a reload that changes these needs a new proxy.
pub fn proxy_settings(l: &ListenerRt) -> (Duration, usize) {
    (l.cfg.timeouts.keepalive, l.cfg.max_header_bytes)
}

/// A pingora stream over `tcp` whose digest names `peer` (the PROXY header's
/// client when there was one) as the client.
pub fn pingora_stream(tcp: TcpStream, peer: SocketAddr) -> L4Stream {
    let _ = tcp.set_nodelay(true);
    let fd = tcp.as_raw_fd();
    let mut s: L4Stream = tcp.into();
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest.peer_addr.set(Some(peer.into()));
    s.set_socket_digest(digest);
    s
}

/// Serve one client connection of an http or https listener until it
/// closes. Requests run boxed (pingora's session, TLS, the upgrade
/// handshake), freed before a WebSocket's tunnel starts: the task of a
/// long-lived WebSocket holds only the tunnel's state.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    l: &Arc<ListenerRt>,
    proxy: &Arc<HttpProxy<Router>>,
    stop: &ShutdownWatch,
) {
    if let Some(ws) = Box::pin(requests_of(tcp, peer, l, proxy, stop)).await {
        ws.run().await;
    }
}

/// Everything but a WebSocket's tunnel; `Some` when one is ready.
async fn requests_of(
    tcp: TcpStream,
    peer: SocketAddr,
    l: &Arc<ListenerRt>,
    proxy: &Arc<HttpProxy<Router>>,
    stop: &ShutdownWatch,
) -> Option<super::websocket::Tunnel> {
    let limit = l.cfg.timeouts.client_header;
    if let Some(tls) = &l.tls {
        let s = tls.accept(pingora_stream(tcp, peer), limit, peer).await?;
        let mut conn = TlsConn::new(s);
        if conn.is_h2() {
            conn.expect_preface(limit);
            serve_h2(Box::new(conn), l, proxy, stop).await;
            return None;
        }
        let stream: Stream = Box::new(conn);
        return match http1_engine(l) {
            Http1Engine::Tether => super::h1::serve(stream, peer, l, stop).await,
            Http1Engine::Pingora => serve_h1(stream, l, proxy, stop).await,
        };
    }
    if l.cfg.h2c {
        match sniff(&tcp, limit).await {
            Sniff::H2 => {
                serve_h2(Box::new(pingora_stream(tcp, peer)), l, proxy, stop).await;
                return None;
            }
            Sniff::Gone => return None,
            Sniff::H1 => {}
        }
    }
    match http1_engine(l) {
        Http1Engine::Tether => {
            let _ = tcp.set_nodelay(true);
            super::h1::serve(tcp, peer, l, stop).await
        }
        Http1Engine::Pingora => {
            serve_h1(Box::new(ClientSocket::new(tcp, peer)), l, proxy, stop).await
        }
    }
}

enum Sniff {
    H2,
    H1,
    /// Closed, failed or silent past the deadline: nothing to answer.
    Gone,
}

/// Does the connection open with the h2 preface? Peeks, so every byte stays
/// for whoever serves it; decided at the first byte that differs.
async fn sniff(tcp: &TcpStream, limit: Duration) -> Sniff {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Sniff::Gone,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Sniff::H1;
        }
        if n == H2_PREFACE.len() {
            return Sniff::H2;
        }
        // peek answers at once while bytes sit unread: wait for the rest.
        if tokio::time::timeout_at(deadline, tokio::time::sleep(pause))
            .await
            .is_err()
        {
            return Sniff::Gone;
        }
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Who serves the listener's HTTP/1.1 clients: `http1_engine`, except that
/// a pool speaking HTTP/2 to its backends (`protocol: h2 | h2c`) always has
/// pingora's, since tether's own path speaks HTTP/1.1 upstream only.
fn http1_engine(l: &ListenerRt) -> Http1Engine {
    if l.pool.cfg().protocol.is_h2() {
        Http1Engine::Pingora
    } else {
        l.cfg.http1_engine
    }
}

async fn serve_h2(
    stream: Stream,
    l: &ListenerRt,
    proxy: &Arc<HttpProxy<Router>>,
    stop: &ShutdownWatch,
) {
    super::h2_conn::serve(stream, proxy, stop, l.pool.cfg().protocol.is_h2()).await;
}

/// HTTP/1.1: requests in turn until the connection closes, or until one
/// is a WebSocket upgrade, handed over to tether's own path.
async fn serve_h1(
    inner: Stream,
    l: &ListenerRt,
    proxy: &Arc<HttpProxy<Router>>,
    stop: &ShutdownWatch,
) -> Option<super::websocket::Tunnel> {
    let (job, stream) = requests(inner, l, proxy, stop).await?;
    super::websocket::open(job, stream).await
}

/// pingora's HTTP/1.1 loop; `Some` when a request was handed over.
async fn requests(
    inner: Stream,
    l: &ListenerRt,
    proxy: &Arc<HttpProxy<Router>>,
    stop: &ShutdownWatch,
) -> Option<(Box<super::websocket::Job>, Stream)> {
    let limits = HeaderLimits {
        max_bytes: l.cfg.max_header_bytes,
        timeout: l.cfg.timeouts.client_header,
    };
    let info = Arc::new(ConnInfo::default());
    let stream: Stream = Box::new(ConnStream::new(inner, limits, info.clone()));
    let keepalive = l.cfg.timeouts.keepalive.as_secs().max(1);
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(if *stop.borrow() {
        None
    } else {
        Some(keepalive)
    });
    let mut result = proxy.process_new_http(session, stop).await;
    while let Some((stream, settings)) = result.map(|r| r.consume()) {
        if let Some(job) = info.take_handoff() {
            // A WebSocket upgrade: pingora is done with the connection.
            return Some((job, stream));
        }
        let mut session = ServerSession::new_http1(stream);
        if let Some(s) = settings {
            s.apply_to_session(&mut session);
        }
        if *stop.borrow() {
            session.set_keepalive(None);
        }
        result = proxy.process_new_http(session, stop).await;
    }
    None
}
