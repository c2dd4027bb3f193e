//! Accept loops: the connection limits, the shutdown tracker, and the hand-off
//! of each connection to `l4` or `l7::serve`.
//!
//! A loop reads its listener's slot once per accepted connection, so a reload
//! applies to the next connection while each connection keeps the runtime it
//! started with (HTTP requests re-read it per request, see `l7::router`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::apps::ServerApp;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::admin::AdminApp;
use crate::l7::listener::ListenerRt;
use crate::l7::router::Router;

/// Counts live client connections so shutdown can finish the moment none is left.
#[derive(Default)]
pub(crate) struct Tracker {
    live: AtomicUsize,
    idle: Notify,
}

pub(crate) struct TrackGuard(Arc<Tracker>);

impl Tracker {
    pub fn enter(self: &Arc<Self>) -> TrackGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        TrackGuard(self.clone())
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The accept loop of one listener. Every connection first goes through
/// `l4::admit` (its PROXY header, when the listener takes one); then
/// `protocol: tcp` and `tls` connections are served by `l4`, `http` and
/// `https` ones by `l7::serve` (`proxy` is unused on tcp and tls listeners).
pub(super) async fn accept_http(
    socket: Arc<TcpListener>,
    slot: Arc<ArcSwap<ListenerRt>>,
    proxy: Arc<ArcSwap<HttpProxy<Router>>>,
    listener_limit: Arc<Semaphore>,
    process_limit: Arc<Semaphore>,
    tracker: Arc<Tracker>,
    stop: ShutdownWatch,
) {
    let first = slot.load_full();
    if !first.cfg.protocol.reads_http() {
        if first.pool.cfg().protocol.is_h2() {
            // Bytes are copied as they come: there are no requests to speak HTTP/2 with.
            tracing::warn!(listener = %first.cfg.name, pool = %first.pool.name, "the pool's protocol applies to http and https listeners only; this one copies bytes as they come");
        }
        let serve = |tcp, addr, l: Arc<ListenerRt>| async move {
            crate::l4::serve(tcp, addr, &l).await;
        };
        return accept_loop(socket, slot, listener_limit, process_limit, tracker, serve).await;
    }
    if first.pool.cfg().send_proxy.is_some() {
        // pingora pools its upstream connections across clients: no per-client header fits.
        tracing::warn!(listener = %first.cfg.name, pool = %first.pool.name, "send_proxy applies to tcp and tls listeners only; this http listener sends none");
    }
    drop(first);
    let serve = move |tcp, addr: crate::l4::ClientAddr, l: Arc<ListenerRt>| {
        let (proxy, stop) = (proxy.load_full(), stop.clone());
        async move { crate::l7::serve::serve(tcp, addr.src, &l, &proxy, &stop).await }
    };
    accept_loop(socket, slot, listener_limit, process_limit, tracker, serve).await
}

/// Accept with the limits (listener and process `max_connections`) and the
/// shutdown tracker; `serve` gets each admitted connection on its own task.
async fn accept_loop<F, Fut>(
    socket: Arc<TcpListener>,
    slot: Arc<ArcSwap<ListenerRt>>,
    listener_limit: Arc<Semaphore>,
    process_limit: Arc<Semaphore>,
    tracker: Arc<Tracker>,
    serve: F,
) where
    F: Fn(TcpStream, crate::l4::ClientAddr, Arc<ListenerRt>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        // A full listener stops accepting: its clients wait in the kernel backlog.
        let Ok(p2) = listener_limit.clone().acquire_owned().await else {
            return;
        };
        let (mut tcp, peer) = match socket.accept().await {
            // A v4 client on a dual-stack [::] socket shows as ::ffff:a.b.c.d:
            // keys, masks and X-Forwarded-For want a.b.c.d.
            Ok((tcp, p)) => (tcp, SocketAddr::new(p.ip().to_canonical(), p.port())),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %slot.load().cfg.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The process-wide permit is taken only now, so idle accept loops hold
        // none; when the process is full this loop (and so this listener) waits
        // here with one accepted connection, and accepts nothing more meanwhile.
        let Ok(p1) = process_limit.clone().acquire_owned().await else {
            return;
        };
        let guard = tracker.enter();
        let l = slot.load_full();
        let serve = serve.clone();
        tokio::spawn(async move {
            l.connections.inc();
            if let Some(addr) = crate::l4::admit(&mut tcp, peer, &l).await {
                serve(tcp, addr, l.clone()).await;
            }
            l.connections.dec();
            drop((p1, p2, guard));
        });
    }
}

pub(super) async fn accept_admin(
    socket: Arc<TcpListener>,
    app: Arc<AdminApp>,
    stop: ShutdownWatch,
) {
    loop {
        let (tcp, peer) = match socket.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(listener = "admin", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            app.process_new(Box::new(crate::l7::serve::pingora_stream(tcp, peer)), &stop)
                .await;
        });
    }
}
