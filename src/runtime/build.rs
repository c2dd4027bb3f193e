//! Building runtime pieces from config: a pool with its health and resolver
//! loops, the listeners' runtimes, the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::listeners::{self, Listeners, Shared};
use super::{Live, RunError};
use crate::admin::AdminApp;
use crate::affinity::cookie::CookieSigner;
use crate::config::{self, Key, Snapshot};
use crate::health::Checks;
use crate::l7::listener::ListenerRt;
use crate::metrics::Metrics;
use crate::pool::PoolRt;
use crate::store::{Store, StoreError};
use crate::tls::AbortOnDrop;

/// A pool and the loops that keep its state current. Dropping it stops them.
pub(super) struct PoolEntry {
    pub rt: Arc<PoolRt>,
    pub checks: Arc<Checks>,
    _resolver: AbortOnDrop,
}

impl PoolEntry {
    /// Start a pool: resolve its named backends, complete one health round
    /// (rule 3: nothing is accepted before), then keep both going.
    pub async fn start(cfg: config::Pool, store: &dyn Store, metrics: &Arc<Metrics>) -> PoolEntry {
        let rt = Arc::new(PoolRt::new(
            cfg.clone(),
            store.pool(&cfg.name),
            metrics.clone(),
        ));
        rt.watch_owners();
        crate::resolve::resolve_now(&rt, metrics).await;
        crate::health::first_round(&rt, metrics).await;
        PoolEntry {
            checks: Checks::start(rt.clone(), metrics.clone()),
            _resolver: crate::resolve::spawn(rt.clone(), metrics.clone()),
            rt,
        }
    }
}

/// The store's cookie secret, when a listener of `snap` inserts cookies
/// without a `secret_file` of its own (fetched before anything changes).
pub(super) async fn store_secret(
    snap: &Snapshot,
    store: &dyn Store,
) -> Result<Option<Vec<u8>>, StoreError> {
    let needed = snap.listeners.iter().any(|l| match &l.affinity.key {
        Key::Cookie(c) => c.insert.as_ref().is_some_and(|i| i.secret.is_none()),
        _ => false,
    });
    match needed {
        true => Ok(Some(store.cookie_secret().await?)),
        false => Ok(None),
    }
}

/// The cookie signer of a listener whose key is a tether-inserted cookie.
fn signer_for(l: &config::Listener, store_secret: Option<&[u8]>) -> Option<CookieSigner> {
    let Key::Cookie(c) = &l.affinity.key else {
        return None;
    };
    let ins = c.insert.as_ref()?;
    match &ins.secret {
        Some(s) => Some(CookieSigner::new(s)),
        None => store_secret.map(CookieSigner::new),
    }
}

/// The runtime of every listener of `snap`, over the pools of `live`.
/// `prev(name)` gives a listener's current runtime, whose TLS state is kept
/// when its `tls` settings did not change (certificate files are watched).
pub(super) fn listener_rts(
    snap: &Snapshot,
    live: &Live,
    store_secret: Option<&[u8]>,
    metrics: &Arc<Metrics>,
    prev: impl Fn(&str) -> Option<Arc<ListenerRt>>,
) -> Vec<Arc<ListenerRt>> {
    let mut out = Vec::with_capacity(snap.listeners.len());
    for l in &snap.listeners {
        // Validation guarantees the pool exists.
        let Some(pool) = live.pool(&l.pool) else {
            continue;
        };
        let tls = match prev(&l.name) {
            Some(old) if format!("{:?}", old.cfg.tls) == format!("{:?}", l.tls) => old.tls.clone(),
            _ => ListenerRt::tls_for(l, metrics),
        };
        out.push(Arc::new(ListenerRt::new(
            l.clone(),
            pool,
            signer_for(l, store_secret),
            snap.server.trusted_proxies.clone(),
            metrics,
            tls,
        )));
    }
    out
}

/// The admin listener: its socket and accept loop.
pub(super) struct AdminListener {
    pub configured: SocketAddr,
    /// The socket and its accept loop; `None` once closed.
    open: Option<(Arc<TcpListener>, AbortOnDrop)>,
}

impl AdminListener {
    /// Bind (or inherit) the admin socket of `snap` and start serving it.
    pub fn open(
        snap: &Snapshot,
        listeners: &mut Listeners,
        app: &Arc<AdminApp>,
        shared: &Shared,
    ) -> Result<AdminListener, RunError> {
        let want = snap.admin.listen;
        let socket = match listeners.take_inherited(super::upgrade::ADMIN, want) {
            Some(s) => listeners::adopt("admin", want, s)?,
            None => listeners::bind("admin", want)?,
        };
        Ok(Self::serve(want, socket, app, shared))
    }

    pub fn serve(
        configured: SocketAddr,
        socket: TcpListener,
        app: &Arc<AdminApp>,
        shared: &Shared,
    ) -> AdminListener {
        listeners::log_bound("admin", &socket);
        let socket = Arc::new(socket);
        let task = tokio::spawn(super::accept::accept_admin(
            socket.clone(),
            app.clone(),
            shared.stop.clone(),
        ));
        AdminListener {
            configured,
            open: Some((socket, AbortOnDrop(task))),
        }
    }

    pub fn socket(&self) -> Option<Arc<TcpListener>> {
        self.open.as_ref().map(|(s, _)| s.clone())
    }

    /// Stop accepting admin connections and close the socket.
    pub fn close(&mut self) {
        self.open = None;
    }
}
