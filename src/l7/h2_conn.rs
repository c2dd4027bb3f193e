//! One HTTP/2 client connection: pingora's h2 server (handshake, streams,
//! GOAWAY on shutdown, idle timeout) with tether's own accept loop around it,
//! so that each stream can be handed to pingora's proxy as tether chooses: a
//! gRPC call to an HTTP/2 pool as a [`super::grpc`] stream (ended when its
//! backend goes away), anything else as pingora's plain h2 session.
//!
//! The loop is pingora's `accept_downstream_sessions` (0.9.1, crate-private)
//! restated: a shutdown signal sends GOAWAY and keeps accepting until the
//! client is done; with no stream in flight for `h2_idle_timeout` the
//! connection is dropped; streams pingora rejects as malformed count against
//! a per-connection budget (pingora's public accept call does not carry it
//! across calls, so it is kept here).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::{HttpServerApp, ServerApp as _};
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession as H2Session};
use pingora::protocols::{Digest, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use super::router::Router;

/// Malformed streams one connection may open before it is closed (pingora's figure).
const MAX_MALFORMED_STREAMS: usize = 32;

/// Streams in flight on one connection; the idle timeout runs only at zero.
#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a stream's task for its lifetime.
struct InFlight(Arc<Active>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Active {
    fn start(self: &Arc<Self>) -> InFlight {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves after `limit` with nothing in flight. A stream accepted
    /// meanwhile cancels the wait (the accept loop starts a new one).
    async fn idle_for(&self, limit: Duration) {
        while self.count.load(Ordering::Acquire) != 0 {
            self.idle.notified().await;
        }
        tokio::time::sleep(limit).await;
    }
}

/// Serve the h2 connection `stream` until it closes. `watched`: gRPC calls
/// are served as [`super::grpc`] streams (the listener's pool speaks HTTP/2).
pub(super) async fn serve(
    stream: Stream,
    proxy: &Arc<HttpProxy<Router>>,
    stop: &ShutdownWatch,
    watched: bool,
) {
    if !watched {
        // Nothing of tether's to add: pingora's own loop.
        let _ = proxy.process_new(stream, stop).await;
        return;
    }
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut conn = match handshake(stream, proxy.h2_options()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "h2 handshake with client failed");
            return;
        }
    };
    let idle_timeout = proxy.server_options().and_then(|o| o.h2_idle_timeout);
    let active = Arc::new(Active::default());
    let mut shutdown = stop.clone();
    let mut closing = false;
    let mut malformed = 0usize;
    loop {
        let accepted = if closing {
            H2Session::from_h2_conn(&mut conn, digest.clone()).await
        } else {
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    conn.graceful_shutdown();
                    closing = true;
                    continue;
                }
                a = H2Session::from_h2_conn(&mut conn, digest.clone()) => a,
                _ = active.idle_for(idle_timeout.unwrap_or_default()), if idle_timeout.is_some() => return,
            }
        };
        let session = match accepted {
            Ok(Some(H2Accept::Session(s))) => s,
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed >= MAX_MALFORMED_STREAMS {
                    tracing::debug!("h2 client sent too many malformed streams");
                    return;
                }
                continue;
            }
            Ok(None) => return,
            Err(e) => {
                // Clients often just close TCP: nothing worth more than debug.
                tracing::debug!(error = %e, "h2 connection ended");
                return;
            }
        };
        let session = super::grpc::session(session, watched);
        let in_flight = active.start();
        let proxy = proxy.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            proxy.process_new_http(session, &stop).await;
        });
    }
}
