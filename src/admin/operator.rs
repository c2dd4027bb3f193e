//! Operator state (drain / enable) shared through the store.
//!
//! A drain called on one instance's admin API is written to the store with an
//! absolute deadline; every other instance sharing the store (Redis) gets an
//! [`OperatorEvent`] and applies it to its own pool, so the backend stops
//! taking sessions everywhere and its sessions move at the same instant. A new
//! instance reads the current drains at start. The embedded store has no
//! other instances: these calls are no-ops there.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::pool::PoolRt;
use crate::store::{now_ms, OperatorEvent, Store};

fn find<'a>(
    pools: &'a [Arc<PoolRt>],
    pool: &str,
    backend: &str,
) -> Option<(&'a Arc<PoolRt>, usize)> {
    let p = pools.iter().find(|p| &*p.cfg.name == pool)?;
    Some((p, p.backend_index(backend)?))
}

fn apply(pools: &[Arc<PoolRt>], ev: &OperatorEvent) {
    match ev {
        OperatorEvent::Drain {
            pool,
            backend,
            deadline_unix_ms,
        } => {
            if let Some((p, i)) = find(pools, pool, backend) {
                let left = Duration::from_millis(deadline_unix_ms.saturating_sub(now_ms()));
                p.drain(i, left);
            }
        }
        OperatorEvent::Enable { pool, backend } => {
            if let Some((p, i)) = find(pools, pool, backend) {
                p.enable(i);
            }
        }
    }
}

/// Apply the store's current drains, then follow other instances' changes
/// until the returned task is aborted. `None` when the store is not shared.
pub async fn follow(store: Arc<dyn Store>, pools: Vec<Arc<PoolRt>>) -> Option<JoinHandle<()>> {
    // Subscribe before reading, so nothing between the two is missed.
    let mut rx = store.operator_events()?;
    let resync = |store: Arc<dyn Store>, pools: Vec<Arc<PoolRt>>| async move {
        match store.drains().await {
            Ok(list) => {
                for (pool, backend, deadline_unix_ms) in list {
                    apply(
                        &pools,
                        &OperatorEvent::Drain {
                            pool,
                            backend,
                            deadline_unix_ms,
                        },
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading shared drains"),
        }
    };
    resync(store.clone(), pools.clone()).await;
    Some(tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => apply(&pools, &ev),
                // Missed events: the store holds the truth.
                Err(RecvError::Lagged(_)) => resync(store.clone(), pools.clone()).await,
                Err(RecvError::Closed) => return,
            }
        }
    }))
}

/// Drain through the admin API: locally now, and for every other instance.
pub async fn drain(store: &dyn Store, pool: &Arc<PoolRt>, idx: usize, deadline: Duration) {
    pool.drain(idx, deadline);
    let at = now_ms() + deadline.as_millis() as u64;
    if let Err(e) = store
        .set_drain(&pool.cfg.name, &pool.backends[idx].id, Some(at))
        .await
    {
        tracing::error!(pool = %pool.cfg.name, backend = %pool.backends[idx].id, error = %e, "sharing the drain");
    }
}

/// Enable through the admin API: locally now, and for every other instance.
pub async fn enable(store: &dyn Store, pool: &PoolRt, idx: usize) {
    pool.enable(idx);
    if let Err(e) = store
        .set_drain(&pool.cfg.name, &pool.backends[idx].id, None)
        .await
    {
        tracing::error!(pool = %pool.cfg.name, backend = %pool.backends[idx].id, error = %e, "sharing the enable");
    }
}
