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

use arc_swap::ArcSwap;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::pool::{BackendRt, PoolRt};
use crate::runtime::Live;
use crate::store::{now_ms, OperatorEvent, Store};

fn find(live: &Live, pool: &str, backend: &str) -> Option<(Arc<PoolRt>, Arc<BackendRt>)> {
    let p = live.pool(pool)?;
    let b = p.backend(backend).filter(|b| !b.removed())?;
    Some((p, b))
}

fn apply(live: &Live, ev: &OperatorEvent) {
    match ev {
        OperatorEvent::Drain {
            pool,
            backend,
            deadline_unix_ms,
        } => {
            if let Some((p, b)) = find(live, pool, backend) {
                let left = Duration::from_millis(deadline_unix_ms.saturating_sub(now_ms()));
                p.drain(&b, left);
            }
        }
        OperatorEvent::Enable { pool, backend } => {
            if let Some((p, b)) = find(live, pool, backend) {
                p.enable(&b);
            }
        }
    }
}

/// Apply the store's current drains, then follow other instances' changes
/// until the returned task is aborted. `None` when the store is not shared.
/// Events name pools and backends, looked up in whatever config is live then.
pub async fn follow(store: Arc<dyn Store>, live: Arc<ArcSwap<Live>>) -> Option<JoinHandle<()>> {
    // Subscribe before reading, so nothing between the two is missed.
    let mut rx = store.operator_events()?;
    let resync = |store: Arc<dyn Store>, live: Arc<ArcSwap<Live>>| async move {
        match store.drains().await {
            Ok(list) => {
                for (pool, backend, deadline_unix_ms) in list {
                    apply(
                        &live.load(),
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
    resync(store.clone(), live.clone()).await;
    Some(tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => apply(&live.load(), &ev),
                // Missed events: the store holds the truth.
                Err(RecvError::Lagged(_)) => resync(store.clone(), live.clone()).await,
                Err(RecvError::Closed) => return,
            }
        }
    }))
}

/// Drain through the admin API: locally now, and for every other instance.
pub async fn drain(store: &dyn Store, pool: &Arc<PoolRt>, b: &Arc<BackendRt>, deadline: Duration) {
    pool.drain(b, deadline);
    let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
    let at = now_ms().saturating_add(ms);
    if let Err(e) = store.set_drain(&pool.name, &b.id, Some(at)).await {
        tracing::error!(pool = %pool.name, backend = %b.id, error = %e, "sharing the drain");
    }
}

/// Enable through the admin API: locally now, and for every other instance.
pub async fn enable(store: &dyn Store, pool: &PoolRt, b: &BackendRt) {
    pool.enable(b);
    if let Err(e) = store.set_drain(&pool.name, &b.id, None).await {
        tracing::error!(pool = %pool.name, backend = %b.id, error = %e, "sharing the enable");
    }
}
