//! Backends named by host name (`addr: app-1.internal:8080`).
//!
//! Names go through the system resolver (getaddrinfo: /etc/hosts, then DNS as
//! resolv.conf says) on tokio's blocking pool: once before the pool's first
//! health round or right after a reload, then every `resolve_interval`. The
//! answer becomes the backend's address for new connections; live ones stay
//! where they are, and sessions never move for an address change (they are
//! stored against the backend's id). A failed lookup keeps the last good
//! address, is logged and is counted in
//! `tether_backend_resolutions_total{result="error"}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::BackendRt;
use crate::config::BackendAddr;
use crate::metrics::Metrics;
use crate::pool::PoolRt;
use crate::tls::AbortOnDrop;

/// Bound on one lookup: a dead DNS server must not stall the loop.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolve every named backend of `pool` once, concurrently.
pub async fn resolve_now(pool: &PoolRt, metrics: &Metrics) {
    let named: Vec<_> = pool
        .view()
        .backends
        .iter()
        .filter(|b| matches!(*b.configured(), BackendAddr::Name { .. }))
        .cloned()
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for b in named {
        set.spawn(async move {
            let r = lookup(&b).await;
            (b, r)
        });
    }
    while let Some(Ok((b, r))) = set.join_next().await {
        record(pool, metrics, &b, r);
    }
}

/// Re-resolve `pool`'s named backends every `resolve_interval` until dropped.
pub fn spawn(pool: Arc<PoolRt>, metrics: Arc<Metrics>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(pool.cfg().resolve_interval).await;
            resolve_now(&pool, &metrics).await;
        }
    }))
}

/// Every address `b`'s configured name has now, or why there is none.
async fn lookup(b: &BackendRt) -> Result<Vec<SocketAddr>, String> {
    let BackendAddr::Name { host, port } = &*b.configured() else {
        return Ok(b.addr().into_iter().collect());
    };
    let target = (host.to_string(), *port);
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(target)).await {
        Ok(Ok(addrs)) => {
            let all: Vec<_> = addrs.collect();
            if all.is_empty() {
                Err("no address".to_owned())
            } else {
                Ok(all)
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
    }
}

fn record(pool: &PoolRt, metrics: &Metrics, b: &BackendRt, r: Result<Vec<SocketAddr>, String>) {
    let counter = |result| {
        metrics
            .backend_resolutions
            .with_label_values(&[&*pool.name, &*b.id, result])
            .inc()
    };
    match r {
        Ok(all) => {
            // Stay on the current address while the name still has it: a
            // round-robin answer must not move new connections every time.
            let current = b.addr();
            let pick = match current.filter(|c| all.contains(c)) {
                Some(c) => c,
                None => all[0],
            };
            if b.set_resolved(pick) {
                counter("changed");
                tracing::info!(pool = %pool.name, backend = %b.id, name = %b.configured(),
                    from = ?current, to = %pick, "backend address changed");
            } else {
                counter("ok");
            }
        }
        Err(e) => {
            counter("error");
            tracing::warn!(pool = %pool.name, backend = %b.id, name = %b.configured(),
                keeping = ?b.addr(), error = %e, "backend name did not resolve");
        }
    }
}
