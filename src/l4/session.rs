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

use std::sync::Arc;

use tokio::net::TcpStream;

use super::admit::ClientAddr;
use super::opening;
use super::proxy_proto;
use super::pump::{self, Pump};
use crate::affinity::hash::hash_key;
use crate::affinity::key::IpKey;
use crate::backend::{BackendRt, Health};
use crate::config::{Fallback, IpMask, Key};
use crate::l7::listener::ListenerRt;
use crate::pool::Decision;

/// Other backends tried after a failed connect, as for HTTP retries.
const MAX_RETRIES: usize = 2;

/// Serve one admitted tcp connection until it closes.
pub async fn serve(mut client: TcpStream, addr: ClientAddr, l: &ListenerRt) {
    let _ = client.set_nodelay(true);
    let key_cfg = &l.cfg.affinity.key;
    let opening = match opening::read(&mut client, key_cfg, l.cfg.timeouts.client_header).await {
        Ok(o) => o,
        Err(e) => {
            tracing::debug!(listener = %l.cfg.name, client = %addr.src, error = %e, "reading the key");
            return;
        }
    };
    if opening.eof && opening.bytes.is_empty() {
        return; // gone before saying anything: nothing to forward
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
            return;
        }
    };
    let decision = match &key {
        Some(k) => match l.pool.route(k).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(pool = %l.pool.cfg.name, error = %e, "affinity store failed");
                return;
            }
        },
        None => l.pool.route_random(),
    };
    let Decision::Backend {
        backend,
        live: _live,
        moved,
    } = decision
    else {
        tracing::debug!(listener = %l.cfg.name, client = %addr.src, "no live backend: closed");
        return;
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
    let Some((backend, upstream)) = connect(l, backend, key_hash).await else {
        tracing::debug!(listener = %l.cfg.name, client = %addr.src, "no backend could be reached: closed");
        return;
    };
    let _ = upstream.set_nodelay(true);
    let mut first = match l.pool.cfg.send_proxy {
        Some(v) => {
            let dst = addr.dst.or_else(|| client.local_addr().ok());
            proxy_proto::encode(v, addr.src, dst.unwrap_or(l.cfg.bind))
        }
        None => Vec::new(),
    };
    first.extend_from_slice(&opening.bytes);
    l.bytes_in.inc_by(opening.bytes.len() as u64);
    drop(opening.bytes);

    let _active = Active::new(&backend);
    let reg = backend.register_tunnel();
    let p = Pump {
        idle: l.cfg.timeouts.idle,
        ctl: &reg.ctl,
        bytes_in: &l.bytes_in,
        bytes_out: &l.bytes_out,
    };
    let end = pump::run(client, upstream, first, opening.eof, &p).await;
    tracing::debug!(listener = %l.cfg.name, client = %addr.src, backend = %backend.id, %end, "tcp session ended");
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
) -> Option<(Arc<BackendRt>, TcpStream)> {
    let pool = &l.pool;
    let mut b = first;
    let mut tried = Vec::with_capacity(MAX_RETRIES + 1);
    loop {
        let idx = pool.backends.iter().position(|x| Arc::ptr_eq(x, &b))?;
        let limit = pool.cfg.timeouts.connect;
        let why = match tokio::time::timeout(limit, TcpStream::connect(b.addr)).await {
            Ok(Ok(s)) => {
                b.passive_success();
                return Some((b, s));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {limit:?}"),
        };
        tracing::debug!(pool = %pool.cfg.name, backend = %b.id, error = %why, "tcp connect failed");
        if pool.passive_enabled() && b.passive_failure(pool.cfg.health.fall) {
            pool.mark_health(idx, Health::Down, "connect failed");
        }
        tried.push(idx);
        if tried.len() > MAX_RETRIES {
            return None;
        }
        b = pool.backends[pool.pick_alternative(key_hash, &tried)?].clone();
    }
}
