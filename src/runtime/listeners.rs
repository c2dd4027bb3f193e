//! The listening sockets and their accept loops, kept across reloads.
//!
//! Each listener is a [`Handle`]: its socket, its accept loop, and the slot
//! holding its current [`ListenerRt`]. A reload is two steps so that a failure
//! changes nothing: [`Listeners::prepare`] binds every socket the new config
//! needs and does not have yet (a listener keeps its socket when its bind stays
//! the same, even under a new name); [`Listeners::apply`] then swaps the new
//! runtime into the slots of listeners that stay, starts loops for new ones and
//! stops removed ones. Stopping a loop closes only its socket: connections it
//! accepted are tasks of their own and live on. A listener that changed
//! protocol family (http <-> tcp) gets a new loop on the same socket, so not
//! even its accept queue is lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::accept::{accept_http, Tracker};
use super::RunError;
use crate::config;
use crate::l7::listener::ListenerRt;
use crate::l7::router::Router;
use crate::l7::serve::proxy_settings;
use crate::tls::AbortOnDrop;

/// What every accept loop shares.
pub(super) struct Shared {
    pub conf: Arc<ServerConf>,
    pub process_limit: Arc<Semaphore>,
    pub tracker: Arc<Tracker>,
    pub stop: ShutdownWatch,
}

struct Handle {
    name: Arc<str>,
    /// The bind as configured (port 0 stays 0 here).
    configured: SocketAddr,
    socket: Arc<TcpListener>,
    reads_http: bool,
    slot: Arc<ArcSwap<ListenerRt>>,
    proxy: Arc<ArcSwap<HttpProxy<Router>>>,
    limit: Arc<Semaphore>,
    limit_n: usize,
    _task: AbortOnDrop,
    _watcher: Option<AbortOnDrop>,
}

/// Where a listener of the new config gets its socket.
pub(super) enum Binding {
    /// The socket of the current listener at this index.
    Reuse(usize),
    Fresh(TcpListener),
}

/// What a reload did to the listeners (names), for the summary.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ListenerChanges {
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
    pub changed: Vec<Arc<str>>,
}

#[derive(Default)]
pub(super) struct Listeners {
    handles: Vec<Handle>,
    /// Sockets received from the predecessor (`--upgrade`), by listener name,
    /// until a listener claims them.
    inherited: HashMap<String, std::net::TcpListener>,
    /// Proxies of listeners closed by `close`: their keep-alive connections
    /// still need waking at shutdown.
    closed: Vec<Arc<HttpProxy<Router>>>,
}

/// Bind `addr` for listener `name` (SO_REUSEADDR, the default backlog).
pub(super) fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, RunError> {
    bind_with(name, addr, false, crate::config::DEFAULT_BACKLOG)
}

/// [`bind`]; `freebind`: the address need not be on this host yet (the
/// virtual IP, which a standby does not hold).
pub(super) fn bind_with(
    name: &str,
    addr: SocketAddr,
    freebind: bool,
    backlog: u32,
) -> Result<TcpListener, RunError> {
    let err = |source| RunError::Bind {
        name: name.to_owned(),
        addr,
        source,
    };
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    if freebind {
        set_freebind(&sock, addr.is_ipv6()).map_err(err)?;
    }
    sock.bind(addr).map_err(err)?;
    sock.listen(backlog).map_err(err)
}

/// Apply `backlog` to a socket that is already listening (kept by a reload,
/// or inherited from the process before an upgrade): Linux takes a second
/// `listen(2)` as a new queue length.
fn set_backlog(socket: &TcpListener, name: &str, backlog: u32) {
    let n = nix::sys::socket::Backlog::new(i32::try_from(backlog).unwrap_or(i32::MAX));
    if let Err(e) = n.and_then(|n| nix::sys::socket::listen(socket, n)) {
        tracing::warn!(listener = name, backlog, error = %e, "could not change the backlog");
    }
}

fn set_freebind(sock: &tokio::net::TcpSocket, v6: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name) = match v6 {
        true => (libc::SOL_IPV6, libc::IPV6_FREEBIND),
        false => (libc::SOL_IP, libc::IP_FREEBIND),
    };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd, a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Does an inherited socket bound at `actual` serve a listener configured at `want`?
pub(super) fn fits(want: SocketAddr, actual: SocketAddr) -> bool {
    want == actual || (want.port() == 0 && want.ip() == actual.ip())
}

/// A tokio listener over an inherited socket.
pub(super) fn adopt(
    name: &str,
    want: SocketAddr,
    s: std::net::TcpListener,
) -> Result<TcpListener, RunError> {
    let err = |source| RunError::Bind {
        name: name.to_owned(),
        addr: want,
        source,
    };
    s.set_nonblocking(true).map_err(err)?;
    TcpListener::from_std(s).map_err(err)
}

pub(super) fn log_bound(name: &str, socket: &TcpListener) {
    match socket.local_addr() {
        Ok(addr) => tracing::info!(listener = name, addr = %addr, "listening"),
        Err(e) => tracing::warn!(listener = name, error = %e, "listening (address unknown)"),
    }
}

impl Listeners {
    pub fn with_inherited(inherited: HashMap<String, std::net::TcpListener>) -> Self {
        Listeners {
            handles: Vec::new(),
            inherited,
            closed: Vec::new(),
        }
    }

    /// Take the inherited socket of `name` if it fits `want`.
    /// By name first; a renamed listener still finds its socket by address.
    pub fn take_inherited(
        &mut self,
        name: &str,
        want: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let at = |s: &std::net::TcpListener| s.local_addr().ok();
        let key = match self.inherited.get(name).and_then(at) {
            Some(actual) if fits(want, actual) => name.to_owned(),
            _ if want.port() != 0 => self
                .inherited
                .iter()
                .find(|(_, s)| at(s) == Some(want))
                .map(|(n, _)| n.clone())?,
            _ => return None,
        };
        self.inherited.remove(&key)
    }

    /// Sockets for every listener of `cfgs`, binding only what is missing.
    /// On error nothing changed (fresh sockets are dropped again).
    pub fn prepare(
        &mut self,
        cfgs: &[config::Listener],
        vip: Option<std::net::IpAddr>,
    ) -> Result<Vec<Binding>, RunError> {
        let mut claimed = vec![false; self.handles.len()];
        let mut out = Vec::with_capacity(cfgs.len());
        // Same name and bind first, so a rename elsewhere cannot steal a socket.
        let mut pending = Vec::new();
        for (i, c) in cfgs.iter().enumerate() {
            let same = self
                .handles
                .iter()
                .position(|h| *h.name == *c.name && h.configured == c.bind);
            if let Some(j) = same {
                claimed[j] = true;
            }
            out.push(same.map(Binding::Reuse));
            if same.is_none() {
                pending.push(i);
            }
        }
        for i in pending {
            let c = &cfgs[i];
            let moved = (c.bind.port() != 0)
                .then(|| {
                    (0..self.handles.len())
                        .find(|&j| !claimed[j] && self.handles[j].configured == c.bind)
                })
                .flatten();
            out[i] = Some(match moved {
                Some(j) => {
                    claimed[j] = true;
                    Binding::Reuse(j)
                }
                None => match self.take_inherited(&c.name, c.bind) {
                    Some(s) => {
                        let s = adopt(&c.name, c.bind, s)?;
                        set_backlog(&s, &c.name, c.backlog);
                        Binding::Fresh(s)
                    }
                    None => Binding::Fresh(bind_with(
                        &c.name,
                        c.bind,
                        Some(c.bind.ip()) == vip,
                        c.backlog,
                    )?),
                },
            });
        }
        for (c, b) in cfgs.iter().zip(&out) {
            if let Some(Binding::Reuse(j)) = b {
                let h = &self.handles[*j];
                if h.slot.load().cfg.backlog != c.backlog {
                    set_backlog(&h.socket, &c.name, c.backlog);
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Put the new listeners in force (`rts[i]` with `bindings[i]` from `prepare`).
    pub fn apply(
        &mut self,
        rts: Vec<Arc<ListenerRt>>,
        bindings: Vec<Binding>,
        shared: &Shared,
    ) -> ListenerChanges {
        let mut ch = ListenerChanges::default();
        let mut old: Vec<Option<Handle>> = self.handles.drain(..).map(Some).collect();
        for (rt, binding) in rts.into_iter().zip(bindings) {
            let name = rt.cfg.name.clone();
            let handle = match binding {
                Binding::Reuse(j) => match old.get_mut(j).and_then(Option::take) {
                    Some(h) if *h.name == *name && h.reads_http == rt.cfg.protocol.reads_http() => {
                        if format!("{:?}", h.slot.load().cfg) != format!("{:?}", rt.cfg) {
                            ch.changed.push(name);
                        }
                        update(h, rt, shared)
                    }
                    Some(h) => {
                        ch.changed.push(name);
                        start(h.socket.clone(), rt, shared)
                    }
                    None => continue,
                },
                Binding::Fresh(socket) => {
                    log_bound(&name, &socket);
                    // Same name on a new bind: re-bound (its old socket closes below).
                    let rebound = old.iter().flatten().any(|h| h.name == name);
                    match rebound {
                        true => ch.changed.push(name),
                        false => ch.added.push(name),
                    }
                    start(Arc::new(socket), rt, shared)
                }
            };
            self.handles.push(handle);
        }
        for h in old.into_iter().flatten() {
            if !self.handles.iter().any(|n| n.name == h.name) {
                tracing::info!(listener = %h.name, "listener removed: no new connections");
                ch.removed.push(h.name.clone());
            }
        }
        ch
    }

    /// The runtime listener `name` serves with now.
    pub fn current(&self, name: &str) -> Option<Arc<ListenerRt>> {
        let h = self.handles.iter().find(|h| *h.name == *name)?;
        Some(h.slot.load_full())
    }

    /// The listening sockets by listener name (for a successor process).
    pub fn sockets(&self) -> Vec<(String, Arc<TcpListener>)> {
        self.handles
            .iter()
            .map(|h| (h.name.to_string(), h.socket.clone()))
            .collect()
    }

    /// Every proxy in use, to wake their idle keep-alive connections at shutdown.
    pub fn proxies(&self) -> Vec<Arc<HttpProxy<Router>>> {
        let open = self.handles.iter().filter(|h| h.reads_http);
        let mut all: Vec<_> = open.map(|h| h.proxy.load_full()).collect();
        all.extend(self.closed.iter().cloned());
        all
    }

    /// Stop accepting on every listener (connections already accepted go on).
    pub fn close(&mut self) {
        let proxies = self.proxies();
        self.closed = proxies;
        self.handles.clear();
        self.inherited.clear();
    }

    /// Unclaimed inherited sockets are closed now that the config is in force.
    pub fn drop_inherited(&mut self) {
        for (name, _) in self.inherited.drain() {
            tracing::info!(listener = %name, "inherited socket not in this config: closed");
        }
    }
}

/// Start a listener's accept loop on `socket`.
fn start(socket: Arc<TcpListener>, rt: Arc<ListenerRt>, shared: &Shared) -> Handle {
    let slot = Arc::new(ArcSwap::new(rt.clone()));
    let proxy = Arc::new(ArcSwap::from_pointee(crate::l7::serve::proxy(
        &shared.conf,
        slot.clone(),
    )));
    let limit_n = rt.cfg.max_connections;
    let limit = Arc::new(Semaphore::new(limit_n));
    let task = tokio::spawn(accept_http(
        socket.clone(),
        slot.clone(),
        proxy.clone(),
        limit.clone(),
        shared.process_limit.clone(),
        shared.tracker.clone(),
        shared.stop.clone(),
    ));
    Handle {
        name: rt.cfg.name.clone(),
        configured: rt.cfg.bind,
        reads_http: rt.cfg.protocol.reads_http(),
        _watcher: rt.tls.as_ref().map(|t| AbortOnDrop(t.spawn_watcher())),
        socket,
        slot,
        proxy,
        limit,
        limit_n,
        _task: AbortOnDrop(task),
    }
}

/// A listener that stays: swap in its new runtime, in place.
fn update(mut h: Handle, rt: Arc<ListenerRt>, shared: &Shared) -> Handle {
    let old = h.slot.load_full();
    if proxy_settings(&old) != proxy_settings(&rt) {
        // Before the swap, so no request sees the new runtime with old h2 settings
        // for long; connections already open keep the proxy they started with.
        let p = crate::l7::serve::proxy(&shared.conf, h.slot.clone());
        h.slot.store(rt.clone());
        h.proxy.store(Arc::new(p));
    } else {
        h.slot.store(rt.clone());
    }
    let same_tls = match (&old.tls, &rt.tls) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    if !same_tls {
        h._watcher = rt.tls.as_ref().map(|t| AbortOnDrop(t.spawn_watcher()));
    }
    resize(&h.limit, h.limit_n, rt.cfg.max_connections);
    h.limit_n = rt.cfg.max_connections;
    h
}

/// Change a connection limit from `from` to `to` permits. Permits held by
/// live connections cannot be taken back at once: those are retired as the
/// connections end.
pub(super) fn resize(limit: &Arc<Semaphore>, from: usize, to: usize) {
    if to > from {
        limit.add_permits(to - from);
    } else if from > to {
        let owed = (from - to) - limit.forget_permits(from - to);
        if owed > 0 {
            let limit = limit.clone();
            tokio::spawn(async move {
                if let Ok(p) = limit.acquire_many_owned(owed as u32).await {
                    p.forget();
                }
            });
        }
    }
}
