//! One tcp session end to end: key, routing decision, connect (with retries
//! on other live backends), registration, then the copy.
//!
//! Routing follows the spec's rules exactly as for HTTP: `PoolRt::route`
//! pins and re-pins; a key that cannot be read takes the listener's fallback
//! (`source_ip`, `random` which records nothing, or `reject` which closes).
//! A connect failure counts as a passive failure of that backend and the
//! connection tries another live one (at most `MAX_RETRIES`), without
//! re-pinning: re-pinning happens when the backend is marked down. TCP has
//! no way to answer "503": with no backend the client is simply closed.
//!
//! On a `tls` listener the TLS handshake comes first (its server name is the
//! `sni` key) and the decrypted bytes are what is read and copied; a pool
//! with `tls` gets TLS to its backends, on either kind of listener.
//!
//! The steps before the tunnel (handshake, key, routing, connect) run as
//! boxed futures: a task is as large as its largest state, and an idle
//! device connection should not carry their buffers for days.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::admit::ClientAddr;
use super::opening::{self, Opening};
use super::proxy_proto;
use crate::affinity::hash::hash_key;
use crate::affinity::key::IpKey;
use crate::backend::BackendRt;
use crate::config::{Fallback, IpMask, Key};
use crate::l7::listener::ListenerRt;
use crate::pool::{Decision, Failure, Fault};
use crate::store::{LiveGuard, MoveReason};
use crate::tls::client::{self, Upstream};
use crate::tunnel::{self, Mode, Params};

/// Other backends tried after a failed connect, as for HTTP retries.
const MAX_RETRIES: usize = 2;

/// The client side of a session.
enum Client {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A session ready to copy: both ends open, the opening bytes in hand.
struct Ready {
    client: Client,
    upstream: Upstream,
    /// The bytes the key was read from, for the backend first.
    first: Vec<u8>,
    /// The client half-closed while they were read.
    eof: bool,
    backend: Arc<BackendRt>,
    /// The session is live (never idle) while its connection is.
    _live: Option<LiveGuard>,
    key: Option<String>,
    moved: Option<(Arc<str>, MoveReason)>,
    src: SocketAddr,
}

/// Serve one admitted tcp or tls connection until it closes. Everything
/// up to the connected backend runs boxed (freed once done), so the task of
/// a long-lived session holds only the tunnel's state.
pub async fn serve(tcp: TcpStream, addr: ClientAddr, l: &ListenerRt) {
    if let Some(ready) = Box::pin(open(tcp, addr, l)).await {
        ready.run(l).await;
    }
}

/// Handshake, key, route and connect.
async fn open(mut tcp: TcpStream, addr: ClientAddr, l: &ListenerRt) -> Option<Ready> {
    let _ = tcp.set_nodelay(true);
    let key_cfg = &l.cfg.affinity.key;
    let limit = l.cfg.timeouts.client_header;
    // Where the client connected to, for a PROXY header sent on.
    // (a getsockname per connection only when a PROXY header will carry it)
    let local = match l.pool.cfg().send_proxy {
        Some(_) => addr.dst.or_else(|| tcp.local_addr().ok()),
        None => None,
    };
    let read = match &l.tls {
        None => opening::read(&mut tcp, key_cfg, limit)
            .await
            .map(|o| (Client::Tcp(tcp), o)),
        Some(tls) => {
            let mut s = tls.accept(tcp, limit, addr.src).await?;
            let opening = match key_cfg {
                // The name came with the handshake: nothing more to read.
                Key::Sni => Ok(Opening {
                    key: s.get_ref().1.server_name().map(str::to_ascii_lowercase),
                    bytes: Vec::new(),
                    eof: false,
                }),
                _ => opening::read(&mut s, key_cfg, limit).await,
            };
            opening.map(|o| (Client::Tls(Box::new(s)), o))
        }
    };
    let (client, opening) = match read {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(listener = %l.cfg.name, client = %addr.src, error = %e, "reading the key");
            return None;
        }
    };
    if opening.eof && opening.bytes.is_empty() {
        return None; // gone before saying anything: nothing to forward
    }
    let key = match key_cfg {
        Key::SourceIp(mask) => Some(IpKey::new(addr.src.ip(), *mask).as_str().to_owned()),
        _ => opening.key.clone(),
    };
    let key = match (key, l.cfg.affinity.fallback) {
        (Some(k), _) => Some(k),
        (None, Fallback::SourceIp) => Some(
            IpKey::new(addr.src.ip(), IpMask::default())
                .as_str()
                .to_owned(),
        ),
        (None, Fallback::Random) => None,
        (None, Fallback::Reject) => {
            tracing::debug!(listener = %l.cfg.name, client = %addr.src, "no key: closed (fallback reject)");
            return None;
        }
    };
    let decision = match &key {
        Some(k) => match l.pool.route(k).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(pool = %l.pool.name, error = %e, "affinity store failed");
                return None;
            }
        },
        None => l.pool.route_random(),
    };
    let Decision::Backend {
        backend,
        live,
        moved,
    } = decision
    else {
        tracing::debug!(listener = %l.cfg.name, client = %addr.src, "no live backend: closed");
        return None;
    };
    if let Some((from, reason)) = &moved {
        // Counted in session_moves_total; a mass failover must not flood the log.
        tracing::debug!(listener = %l.cfg.name, key = key.as_deref().unwrap_or(""), from = %from,
            to = %backend.id, reason = reason.as_str(), "tcp session moved");
        l.pool.observe_move(from, *reason);
    }
    let key_hash = key
        .as_deref()
        .map_or_else(rand::random, |k| hash_key(k.as_bytes()));
    // The PROXY header is the first thing on the wire, before any TLS to the backend.
    let header = match l.pool.cfg().send_proxy {
        Some(v) => proxy_proto::encode(v, addr.src, local.unwrap_or(l.cfg.bind)),
        None => Vec::new(),
    };
    let pinned = backend.clone();
    let Some((backend, upstream)) = connect(l, backend, key_hash, &header).await else {
        tracing::debug!(listener = %l.cfg.name, client = %addr.src, "no backend could be reached: closed");
        return None;
    };
    if let (Some(k), false) = (&key, Arc::ptr_eq(&pinned, &backend)) {
        l.pool.follow_connection(k, &pinned, &backend).await;
    }
    Some(Ready {
        client,
        upstream,
        first: opening.bytes,
        eof: opening.eof,
        backend,
        _live: live,
        key,
        moved,
        src: addr.src,
    })
}

impl Ready {
    /// Copy until the session ends, then account for it.
    async fn run(self, l: &ListenerRt) {
        let Ready {
            client,
            upstream,
            first,
            eof,
            backend,
            _live,
            key,
            moved,
            src,
        } = self;
        let _active = Active::new(&backend);
        // Registered with the backend it is actually connected to: a later
        // mark-down of the one that refused does not close it again.
        let reg = backend.register_tunnel(crate::backend::session_tag(key.as_deref()));
        let started = std::time::Instant::now();
        let p = Params {
            mode: Mode::Raw,
            idle: l.cfg.timeouts.idle,
            half_closed: l.cfg.timeouts.half_closed,
            ctl: &reg.ctl,
            bytes_in: &l.bytes_in,
            bytes_out: &l.bytes_out,
        };
        let done = match (client, upstream) {
            (Client::Tcp(c), Upstream::Plain(u)) => {
                tunnel::run(c, u, first, Vec::new(), eof, &p).await
            }
            (Client::Tcp(c), u) => tunnel::run(c, u, first, Vec::new(), eof, &p).await,
            (Client::Tls(c), u) => tunnel::run(c, u, first, Vec::new(), eof, &p).await,
        };
        let end = &done.end;
        tracing::debug!(listener = %l.cfg.name, client = %src, backend = %backend.id, %end, "tcp session ended");
        if l.cfg.access_log {
            tracing::info!(
                target: "tether::access",
                listener = %l.cfg.name,
                pool = %l.pool.name,
                backend = %backend.id,
                client = %src,
                session = %key.as_deref().map(crate::pool::key_hash).unwrap_or_default(),
                bytes_in = done.bytes_in,
                bytes_out = done.bytes_out,
                duration_ms = started.elapsed().as_millis() as u64,
                moved_from = %moved.as_ref().map(|(f, _)| &**f).unwrap_or(""),
                end = %end,
                "connection"
            );
        }
    }
}

/// `upstream_connections_active` for as long as the session lives.
struct Active<'a>(&'a BackendRt);

impl<'a> Active<'a> {
    fn new(b: &'a BackendRt) -> Self {
        b.upstream_active.inc();
        Active(b)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.upstream_active.dec();
    }
}

/// Connect to `first`, or on failure to other live backends (rule 5).
async fn connect(
    l: &ListenerRt,
    first: Arc<BackendRt>,
    key_hash: u64,
    preamble: &[u8],
) -> Option<(Arc<BackendRt>, Upstream)> {
    let pool = &l.pool;
    let mut b = first;
    let mut tried = Vec::with_capacity(MAX_RETRIES + 1);
    loop {
        let cfg = pool.cfg();
        let limit = cfg.timeouts.connect;
        // A TCP session has no response to wait for: only the connect (and
        // its TLS handshake) can fail on the backend's account. A host name
        // that never resolved is the resolver's, not the backend's.
        let (why, fault) = match b.addr() {
            None => ("host name not resolved".to_owned(), Fault::Other),
            Some(addr) => {
                match client::connect_with(&b.id, addr, limit, cfg.tls.as_ref(), preamble).await {
                    Ok(s) => {
                        b.passive_success();
                        return Some((b, s));
                    }
                    Err(e) => (e.to_string(), Fault::Connect),
                }
            }
        };
        tracing::debug!(pool = %pool.name, backend = %b.id, error = %why, "tcp connect failed");
        pool.passive_failure(&b, Failure::new(fault, true));
        tried.push(b);
        if tried.len() > MAX_RETRIES {
            return None;
        }
        b = pool
            .pick_alternative(key_hash, &tried, l.bounded_picks())?
            .1;
    }
}
