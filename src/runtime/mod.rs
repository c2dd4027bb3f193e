//! The process: opens the store, starts the pools and listeners, and runs the
//! lifecycle (ready, reloads, binary upgrade, SIGTERM drain, exit).
//!
//! tether owns its accept loops instead of pingora's `Server` (`accept`): it
//! enforces `max_connections` per listener and per process, hands each
//! connection to `l7::serve` or `l4`, keeps listening sockets across reloads
//! (`listeners`), passes them to a successor process on `--upgrade`
//! (`upgrade`), and exits as soon as the last connection is gone after
//! SIGTERM instead of sleeping through pingora's fixed grace period.
//!
//! State that a reload replaces is published in one [`Live`] behind an
//! `ArcSwap` (admin API, operator events); what the reload path owns (sockets,
//! pools with their health loops) sits in [`Core`]'s `owned`, one reload at a
//! time (`reload`).

mod accept;
mod build;
mod listeners;
pub mod reload;
mod upgrade;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::apps::HttpServerApp;
use pingora::server::configuration::ServerConf;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::admin::{AdminApp, AdminState};
use crate::config::{Snapshot, StoreKind};
use crate::metrics::Metrics;
use crate::pool::{CloseReason, PoolRt};
use crate::sdnotify::State;
use crate::store::memory::MemoryStore;
use crate::store::RedisStore;
use crate::store::{Store, StoreError};
use accept::Tracker;
use build::PoolEntry;
pub use listeners::ListenerChanges;
use listeners::{Listeners, Shared};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("affinity store: {0}")]
    Store(#[from] StoreError),
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("signal handling: {0}")]
    Signal(#[source] std::io::Error),
    #[error("upgrade: {0}")]
    Upgrade(#[from] crate::upgrade::UpgradeError),
    #[error("{0}")]
    Vip(#[from] crate::vip::VipError),
}

/// The config and pools in force; replaced whole by each reload.
pub struct Live {
    pub snapshot: Arc<Snapshot>,
    /// In config order.
    pub pools: Vec<Arc<PoolRt>>,
}

impl Live {
    pub fn pool(&self, name: &str) -> Option<Arc<PoolRt>> {
        self.pools.iter().find(|p| &*p.name == name).cloned()
    }
}

/// Everything the lifecycle and the reload path share.
pub(crate) struct Core {
    path: PathBuf,
    live: Arc<ArcSwap<Live>>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    shared: Shared,
    admin: Arc<AdminApp>,
    /// Owned by one reload (or the shutdown) at a time.
    owned: tokio::sync::Mutex<Owned>,
}

struct Owned {
    listeners: Listeners,
    pools: HashMap<Arc<str>, PoolEntry>,
    admin: build::AdminListener,
    /// The stamp of the config file as last loaded (the file watcher's reference).
    stamp: Option<crate::tls::certs::FileStamp>,
}

/// Remember the `--log-format` in use: a successor started on SIGUSR2 gets it too.
pub fn set_log_format(format: &str) {
    let _ = upgrade::LOG_FORMAT.set(format.to_owned());
}

/// Run the proxy on `snap` (loaded from `path`) until SIGTERM/SIGINT, or until
/// a successor took over. `upgrade`: start as the successor of a running tether.
pub fn run(path: PathBuf, snap: Snapshot, upgrade: bool) -> Result<(), RunError> {
    raise_nofile_limit();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if snap.server.threads > 0 {
        rt.worker_threads(snap.server.threads);
    }
    let rt = rt.enable_all().build().map_err(RunError::Runtime)?;
    let res = rt.block_on(serve(path, snap, upgrade));
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

/// How the serving phase ended.
enum Stop {
    /// SIGTERM / SIGINT: drain for `shutdown_grace`.
    Shutdown,
    /// A successor took the sockets: drain for `upgrade_grace`.
    Upgraded,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

async fn open_store(snap: &Snapshot, metrics: &Arc<Metrics>) -> Result<Arc<dyn Store>, RunError> {
    let store: Arc<dyn Store> = match &snap.store.kind {
        StoreKind::Embedded { .. } => {
            let s = MemoryStore::open(&snap.store)?;
            metrics.store_up.with_label_values(&[s.kind()]).set(1);
            s
        }
        // The Redis store reports its own `store_up` as its link comes and goes.
        StoreKind::Redis(_) => RedisStore::open(&snap.store, metrics.clone()).await?,
    };
    metrics.store_bound(store.kind(), snap.store.max_sessions);
    Ok(store)
}

async fn serve(path: PathBuf, snap: Snapshot, upgrade: bool) -> Result<(), RunError> {
    // Handlers first: a SIGHUP that arrives while starting must not kill the process.
    let sig = |k| signal(k).map_err(RunError::Signal);
    let signals = Signals {
        term: sig(SignalKind::terminate())?,
        int: sig(SignalKind::interrupt())?,
        hup: sig(SignalKind::hangup())?,
        usr2: sig(SignalKind::user_defined2())?,
    };
    let metrics = Arc::new(Metrics::new());
    // A successor takes the sockets, then asks the predecessor to let go (stop
    // accepting, write out its store) before opening the store itself.
    let inherited = match upgrade {
        true => upgrade::take_over(&path).await?,
        false => HashMap::new(),
    };
    let store = open_store(&snap, &metrics).await?;
    let vip = match &snap.vip {
        Some(cfg) => Some(Arc::new(start_vip(cfg, &store, &metrics, &path).await?)),
        None => None,
    };

    let mut pools = HashMap::new();
    let mut order = Vec::new();
    let mut starting = tokio::task::JoinSet::new();
    for p in &snap.pools {
        let (p, store, metrics) = (p.clone(), store.clone(), metrics.clone());
        starting.spawn(async move { PoolEntry::start(p, &*store, &metrics).await });
    }
    while let Some(Ok(e)) = starting.join_next().await {
        pools.insert(e.rt.name.clone(), e);
    }
    for p in &snap.pools {
        if let Some(e) = pools.get(&p.name) {
            order.push(e.rt.clone());
        }
    }
    let live = Arc::new(ArcSwap::from_pointee(Live {
        snapshot: Arc::new(snap.clone()),
        pools: order,
    }));
    // Drains decided through other instances sharing the store hold here too.
    let operator = crate::admin::operator::follow(store.clone(), live.clone()).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Shared {
        conf: Arc::new(ServerConf {
            threads: snap.server.threads.max(1),
            // tether bounds its own retries (l7::router); this is only pingora's ceiling.
            max_retries: 4,
            ..Default::default()
        }),
        process_limit: Arc::new(Semaphore::new(snap.server.max_connections)),
        tracker: Arc::new(Tracker::default()),
        stop: stop_rx,
    };
    let (reload_tx, reload_rx) = mpsc::channel(16);
    let last_reload = Arc::new(Mutex::new(None));
    let admin = Arc::new(AdminApp {
        state: Arc::new(AdminState {
            live: live.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            stopping: Default::default(),
            reload: reload_tx.clone(),
            last_reload: last_reload.clone(),
            vip: vip.clone(),
        }),
    });
    let mut listeners = Listeners::with_inherited(inherited);
    let secret = build::store_secret(&snap, &*store).await?;
    let rts = build::listener_rts(&snap, &live.load(), secret.as_deref(), &metrics, |_| None);
    let bindings = listeners.prepare(&snap.listeners, vip_ip(&snap))?;
    let admin_listener = build::AdminListener::open(&snap, &mut listeners, &admin, &shared)?;
    listeners.apply(rts, bindings, &shared);
    listeners.drop_inherited();
    let core = Arc::new(Core {
        path: path.clone(),
        live,
        metrics: metrics.clone(),
        store: store.clone(),
        shared,
        admin: admin.clone(),
        owned: tokio::sync::Mutex::new(Owned {
            listeners,
            pools,
            admin: admin_listener,
            stamp: crate::tls::certs::FileStamp::of(&path),
        }),
    });
    let reloads = reload::spawn(core.clone(), reload_rx, last_reload);
    let file_watch = reload::watch_file(core.clone(), reload_tx.clone());
    let offer = upgrade::offer(&path)?;
    for w in snap.warnings() {
        tracing::warn!("{w}");
    }
    tracing::info!(config = %path.display(), "tether ready");
    notify_ready(upgrade);

    let how = wait_for_stop(signals, &core, &reload_tx, offer).await;
    drop((reloads, file_watch));
    if let (Some(v), Stop::Shutdown) = (&vip, &how) {
        // First, so a standby owns the address at once; after an upgrade the
        // successor continues this node's lease instead.
        v.shutdown().await;
    }
    let upgraded = matches!(how, Stop::Upgraded);
    shutdown(&core, how, stop_tx).await;
    if let (Some(v), true) = (&vip, upgraded) {
        v.hand_over().await;
    }
    drop(vip);
    if let Some(o) = &operator {
        o.abort();
    }
    Ok(())
}

/// The VIP's address, for listeners bound to it (bound before this node owns it).
pub(crate) fn vip_ip(snap: &Snapshot) -> Option<std::net::IpAddr> {
    snap.vip.as_ref().map(|v| v.address.addr())
}

async fn start_vip(
    cfg: &crate::config::Vip,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
    path: &std::path::Path,
) -> Result<crate::vip::Vip, RunError> {
    let leases = store
        .clone()
        .leases()
        .ok_or(crate::vip::VipError::NoLeases)?;
    Ok(crate::vip::Vip::start(cfg.clone(), leases, metrics, path).await?)
}

/// Tell systemd (`Type=notify`), when it is listening; a failure is only logged.
pub(crate) fn notify(states: &[State<'_>]) {
    if let Err(e) = crate::sdnotify::notify(states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

/// Ready; a successor is also the service's main process from now on.
pub(crate) fn notify_ready(successor: bool) {
    match successor {
        true => notify(&[State::MainPid(std::process::id()), State::Ready]),
        false => notify(&[State::Ready]),
    }
}

/// Serve until SIGTERM/SIGINT or a successor took over. SIGHUP reloads;
/// SIGUSR2 starts a successor (`tether --upgrade`) next to this process.
async fn wait_for_stop(
    signals: Signals,
    core: &Arc<Core>,
    reload_tx: &mpsc::Sender<reload::ReloadRequest>,
    offer: crate::upgrade::Offer,
) -> Stop {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr2,
    } = signals;
    let (upgraded_tx, mut upgraded) = mpsc::channel(1);
    let _handoff = upgrade::serve_successors(core.clone(), offer, upgraded_tx);
    loop {
        tokio::select! {
            _ = term.recv() => return Stop::Shutdown,
            _ = int.recv() => return Stop::Shutdown,
            _ = upgraded.recv() => return Stop::Upgraded,
            _ = hup.recv() => {
                let req = reload::ReloadRequest { trigger: reload::Trigger::Signal, reply: None };
                let _ = reload_tx.send(req).await;
            }
            _ = usr2.recv() => upgrade::start_successor(&core.path),
        }
    }
}

/// Stop accepting, let live connections finish within the grace, then close
/// what is left (WebSockets with 1001) and write the store out.
async fn shutdown(core: &Core, how: Stop, stop_tx: watch::Sender<bool>) {
    let snap = core.live.load().snapshot.clone();
    let grace = match how {
        Stop::Shutdown => snap.server.shutdown_grace,
        Stop::Upgraded => snap.server.upgrade_grace,
    };
    if matches!(how, Stop::Shutdown) {
        // Not after a handoff: systemd would take the successor down with us.
        notify(&[State::Stopping]);
    }
    tracing::info!(
        ?grace,
        upgraded = matches!(how, Stop::Upgraded),
        "shutting down: no new connections"
    );
    core.admin.state.stopping.store(true, Ordering::Release);
    let _ = stop_tx.send(true);
    let (proxies, pools) = {
        let mut owned = core.owned.lock().await;
        let proxies = owned.listeners.proxies();
        owned.listeners.close();
        owned.admin.close();
        let pools: Vec<_> = owned.pools.values().map(|e| e.rt.clone()).collect();
        (proxies, pools)
    };
    // Wake keepalive connections parked between requests so they close now.
    for p in &proxies {
        p.http_cleanup().await;
    }
    let tracker = &core.shared.tracker;
    // While draining after a handoff, SIGTERM cuts the grace to `shutdown_grace`.
    let cut = async {
        match (&how, signal(SignalKind::terminate())) {
            (Stop::Upgraded, Ok(mut term)) => {
                term.recv().await;
                tracing::info!("SIGTERM: cutting the upgrade grace short");
                tokio::time::sleep(snap.server.shutdown_grace).await;
            }
            _ => std::future::pending().await,
        }
    };
    let drained = tokio::select! {
        r = tokio::time::timeout(grace, tracker.wait_idle()) => r.is_ok(),
        _ = cut => false,
    };
    if !drained {
        tracing::warn!(
            open = tracker.live(),
            "grace over: closing what is still open"
        );
        // WebSockets get a close frame 1001 (going away) rather than a bare reset.
        for p in &pools {
            for b in p.view().backends.iter() {
                b.close_tunnels(CloseReason::Shutdown, Duration::ZERO);
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait_idle()).await;
    }
    core.owned.lock().await.pools.clear();
    if matches!(how, Stop::Shutdown) {
        if let Err(e) = core.store.flush().await {
            tracing::error!(error = %e, "flushing the affinity store");
        }
    }
    tracing::info!("stopped");
}
