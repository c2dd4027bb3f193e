//! The process: binds the listeners, owns the accept loops, and runs the
//! lifecycle (ready, SIGHUP, SIGTERM drain, exit).
//!
//! tether owns its accept loops instead of pingora's `Server`: it enforces
//! `max_connections` per listener and per process (a full listener stops
//! accepting, so clients wait in the kernel backlog as with HAProxy), hands
//! each connection to `l7::serve` (TLS, h2, or HTTP/1.1 behind the header
//! guard) or `l4`, and exits as soon as the last connection is gone after
//! SIGTERM instead of sleeping through pingora's fixed grace period.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::{HttpServerApp, ServerApp};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify, Semaphore};

use crate::admin::{AdminApp, AdminState};
use crate::affinity::cookie::CookieSigner;
use crate::config::{self, Key, Snapshot, StoreKind};
use crate::l7::listener::ListenerRt;
use crate::l7::router::Router;
use crate::metrics::Metrics;
use crate::pool::{CloseReason, PoolRt};
use crate::store::memory::MemoryStore;
use crate::store::RedisStore;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("affinity store: {0}")]
    Store(#[from] StoreError),
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("signal handling: {0}")]
    Signal(#[source] std::io::Error),
}

/// Run the proxy on `snap` (loaded from `path`) until SIGTERM/SIGINT.
pub fn run(path: PathBuf, snap: Snapshot) -> Result<(), RunError> {
    raise_nofile_limit();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if snap.server.threads > 0 {
        rt.worker_threads(snap.server.threads);
    }
    let rt = rt.enable_all().build().map_err(RunError::Runtime)?;
    let res = rt.block_on(serve(path, snap));
    // Connections still open after the grace period are dropped here.
    rt.shutdown_timeout(Duration::from_millis(200));
    res
}

/// Raise the soft open-files limit to the hard limit: each connection costs two fds.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised open-files limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-files limit"),
    }
}

/// Counts live client connections so shutdown can finish the moment none is left.
#[derive(Default)]
struct Tracker {
    live: AtomicUsize,
    idle: Notify,
}

struct TrackGuard(Arc<Tracker>);

impl Tracker {
    fn enter(self: &Arc<Self>) -> TrackGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        TrackGuard(self.clone())
    }

    async fn wait_idle(&self) {
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

fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    let err = |source| RunError::Bind {
        name: name.to_owned(),
        addr,
        source,
    };
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(addr).map_err(err)?;
    sock.listen(4096).map_err(err)
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

async fn serve(path: PathBuf, snap: Snapshot) -> Result<(), RunError> {
    // Handlers first: a SIGHUP that arrives while starting must not kill the process.
    let signals = Signals {
        term: signal(SignalKind::terminate()).map_err(RunError::Signal)?,
        int: signal(SignalKind::interrupt()).map_err(RunError::Signal)?,
        hup: signal(SignalKind::hangup()).map_err(RunError::Signal)?,
    };
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn Store> = match &snap.store.kind {
        StoreKind::Embedded { .. } => {
            let s = MemoryStore::open(&snap.store)?;
            metrics.store_up.with_label_values(&[s.kind()]).set(1);
            s
        }
        // The Redis store reports its own `store_up` as its link comes and goes.
        StoreKind::Redis(_) => RedisStore::open(&snap.store, metrics.clone()).await?,
    };

    let pools: Vec<Arc<PoolRt>> = snap
        .pools
        .iter()
        .map(|p| Arc::new(PoolRt::new(p.clone(), store.pool(&p.name), metrics.clone())))
        .collect();

    // Drains decided through other instances sharing the store hold here too.
    let operator = crate::admin::operator::follow(store.clone(), pools.clone()).await;

    // One round of health checks before accepting anything (rule 3).
    let mut first = tokio::task::JoinSet::new();
    for p in &pools {
        let (p, m) = (p.clone(), metrics.clone());
        first.spawn(async move { crate::health::first_round(&p, &m).await });
    }
    while first.join_next().await.is_some() {}
    let checks: Vec<_> = pools
        .iter()
        .map(|p| crate::health::spawn(p.clone(), metrics.clone()))
        .collect();

    let conf = Arc::new(ServerConf {
        threads: snap.server.threads.max(1),
        // tether bounds its own retries (l7::router); this is only pingora's ceiling.
        max_retries: 4,
        ..Default::default()
    });

    let mut http = Vec::new();
    for l in &snap.listeners {
        let Some(pool) = pools.iter().find(|p| p.cfg.name == l.pool) else {
            continue;
        };
        let signer = match &l.affinity.key {
            Key::Cookie(c) => match &c.insert {
                Some(ins) => Some(CookieSigner::new(&match &ins.secret {
                    Some(s) => s.clone(),
                    None => store.cookie_secret().await?,
                })),
                None => None,
            },
            _ => None,
        };
        let rt = Arc::new(ListenerRt::new(
            l.clone(),
            pool.clone(),
            signer,
            snap.server.trusted_proxies.clone(),
            &metrics,
        ));
        let socket = bind(&l.name, l.bind)?;
        http.push((rt, socket));
    }
    let admin_socket = bind("admin", snap.admin.listen)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = Arc::new(Tracker::default());
    let process_limit = Arc::new(Semaphore::new(snap.server.max_connections));
    let mut proxies = Vec::new();
    let mut loops = Vec::new();
    for (l, socket) in http {
        let proxy = Arc::new(crate::l7::serve::proxy(&conf, l.clone()));
        proxies.push(proxy.clone());
        log_bound(&l.cfg.name, &socket);
        loops.push(tokio::spawn(accept_http(
            socket,
            l,
            proxy,
            process_limit.clone(),
            tracker.clone(),
            stop_rx.clone(),
        )));
    }
    let admin = Arc::new(AdminApp {
        state: Arc::new(AdminState {
            pools: pools.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            token: snap.admin.token.clone(),
            stopping: Default::default(),
        }),
    });
    log_bound("admin", &admin_socket);
    loops.push(tokio::spawn(accept_admin(
        admin_socket,
        admin.clone(),
        stop_rx.clone(),
    )));
    tracing::info!(config = %path.display(), "tether ready");

    wait_for_stop(signals, &path, &metrics).await;

    tracing::info!(grace = ?snap.server.shutdown_grace, "shutting down: no new connections");
    admin.state.stopping.store(true, Ordering::Release);
    let _ = stop_tx.send(true);
    for l in &loops {
        l.abort();
    }
    // Wake keepalive connections parked between requests so they close now.
    for p in &proxies {
        p.http_cleanup().await;
    }
    if tokio::time::timeout(snap.server.shutdown_grace, tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.live.load(Ordering::Acquire),
            "shutdown grace over: closing what is still open"
        );
        // WebSockets get a close frame 1001 (going away) rather than a bare reset.
        for p in &pools {
            for b in &p.backends {
                b.close_tunnels(CloseReason::Shutdown, Duration::ZERO);
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait_idle()).await;
    }
    for c in &checks {
        c.abort();
    }
    if let Some(o) = &operator {
        o.abort();
    }
    if let Err(e) = store.flush().await {
        tracing::error!(error = %e, "flushing the affinity store");
    }
    tracing::info!("stopped");
    Ok(())
}

fn log_bound(name: &str, socket: &TcpListener) {
    match socket.local_addr() {
        Ok(addr) => tracing::info!(listener = name, addr = %addr, "listening"),
        Err(e) => tracing::warn!(listener = name, error = %e, "listening (address unknown)"),
    }
}

/// SIGHUP re-validates the file (live apply arrives with the reload work);
/// SIGTERM or SIGINT returns.
async fn wait_for_stop(signals: Signals, path: &Path, metrics: &Metrics) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => match config::load(path) {
                Ok(s) => {
                    metrics.config_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(summary = %config::summary(&s), "SIGHUP: configuration is valid (not applied: live reload is not implemented yet)");
                }
                Err(errs) => {
                    metrics.config_reloads.with_label_values(&["error"]).inc();
                    tracing::error!("SIGHUP: configuration rejected, keeping the running one:\n{errs}");
                }
            },
        }
    }
}

/// The accept loop of one listener. Every connection first goes through
/// `l4::admit` (its PROXY header, when the listener takes one); then
/// `protocol: tcp` and `tls` connections are served by `l4`, `http` and
/// `https` ones by `l7::serve` (`proxy` is unused on tcp and tls listeners).
/// TLS listeners watch their certificate files as long as they accept.
async fn accept_http(
    socket: TcpListener,
    l: Arc<ListenerRt>,
    proxy: Arc<HttpProxy<Router>>,
    process_limit: Arc<Semaphore>,
    tracker: Arc<Tracker>,
    stop: ShutdownWatch,
) {
    let _watcher = (l.tls.as_ref()).map(|t| crate::tls::AbortOnDrop(t.spawn_watcher()));
    if !l.cfg.protocol.reads_http() {
        let serve = |tcp, addr, l: Arc<ListenerRt>| async move {
            crate::l4::serve(tcp, addr, &l).await;
        };
        return accept_loop(socket, l, process_limit, tracker, serve).await;
    }
    if l.pool.cfg.send_proxy.is_some() {
        // pingora pools its upstream connections across clients: no per-client header fits.
        tracing::warn!(listener = %l.cfg.name, pool = %l.pool.cfg.name, "send_proxy applies to tcp and tls listeners only; this http listener sends none");
    }
    let serve = move |tcp, addr: crate::l4::ClientAddr, l: Arc<ListenerRt>| {
        let (proxy, stop) = (proxy.clone(), stop.clone());
        async move { crate::l7::serve::serve(tcp, addr.src, &l, &proxy, &stop).await }
    };
    accept_loop(socket, l, process_limit, tracker, serve).await
}

/// Accept with the limits (listener and process `max_connections`) and the
/// shutdown tracker; `serve` gets each admitted connection on its own task.
async fn accept_loop<F, Fut>(
    socket: TcpListener,
    l: Arc<ListenerRt>,
    process_limit: Arc<Semaphore>,
    tracker: Arc<Tracker>,
    serve: F,
) where
    F: Fn(TcpStream, crate::l4::ClientAddr, Arc<ListenerRt>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener_limit = Arc::new(Semaphore::new(l.cfg.max_connections));
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
                tracing::warn!(listener = %l.cfg.name, error = %e, "accept failed");
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
        let (l, serve) = (l.clone(), serve.clone());
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

async fn accept_admin(socket: TcpListener, app: Arc<AdminApp>, stop: ShutdownWatch) {
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
