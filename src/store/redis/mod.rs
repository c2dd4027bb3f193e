//! The shared store (`store.kind: redis`): every tether instance pointing at the
//! same Redis and `prefix` agrees on where each session lives.
//!
//! Data flows: Redis holds one key per session, `{prefix}:s:{pool}:{key}`, with
//! the JSON session record and a TTL of `session_ttl`. Each instance keeps a
//! local cache (`cache.rs`) that `lookup` answers from without any round trip;
//! a miss makes the router call `insert_if_absent`, which adopts the owner Redis
//! already has (lazy warm-up, no scan). Provisional sessions (inserted cookies
//! that have not come back) stay beside the cache and never reach Redis; the
//! cookie's return confirms one with the same insert-if-absent, so an instance
//! that sees the cookie first (and picks by the same hash) agrees with it. Changes run as Lua scripts (`scripts.rs`)
//! that also publish on `{prefix}:events`; the subscriber (`events.rs`) applies
//! other instances' changes to this cache, and revalidates the cache after every
//! (re)subscribe because messages were missed meanwhile (`sync.rs`).
//!
//! Redis Cluster (`conn.rs`): the same, through the redis crate's cluster
//! connection (slot routing, `MOVED`/`ASK`, failovers); session keys carry no
//! hash tag, so they spread over every master, and each script touches its
//! session key only (per-key versions, `scripts.rs`). Events use classic
//! `PUBLISH`, which a cluster forwards to every node: one subscription on any
//! node hears every master (sharded pub/sub would need a channel per slot and a
//! resubscription on every slot move, for a message rate that is only the
//! rate of ownership changes). A master lost puts the store in outage mode
//! until the cluster has promoted its replica.
//!
//! Outages: every command is bounded by `command_timeout` (`link.rs`). While
//! Redis is unreachable, changes are applied to the cache and queued (bounded);
//! the reconnect loop (`tasks.rs`) replays the queue when Redis answers again,
//! then writes back cached records Redis lacks (insert-if-absent: an owner
//! recorded meanwhile elsewhere wins and is adopted). `tasks.rs` also keeps the
//! coarse clock, expires idle cache entries and refreshes TTLs in batches.
//! Operator state (drains, the cookie secret) lives in Redis too (`operator.rs`);
//! an eviction policy that could take it is warned about (`policy.rs`).
//!
//! Runtime contract: [`RedisStore::open`] spawns its background tasks on the
//! current tokio runtime; they stop once the store and every pool handle are
//! dropped. Call
//! [`Store::flush`] at shutdown to give queued writes a bounded chance.

mod cache;
mod conn;
mod events;
mod lease;
mod lease_link;
mod link;
mod operator;
mod ops;
mod policy;
mod pool;
mod refresh;
mod scripts;
mod series;
mod sync;
mod tasks;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{broadcast, watch, Notify};

use self::cache::{Budget, PoolCache};
use self::link::{Link, State};
use self::scripts::Keys;
use self::sync::Queue;
use super::provisional::Provisional;
use super::{now_ms, OperatorEvent, PoolStore, Store, StoreError, StoreStats};
use crate::config::{Store as StoreConfig, StoreKind};
use crate::metrics::Metrics;
pub use policy::eviction_warning;
pub use pool::RedisPool;

/// Writes queued while Redis is unreachable, at most (then new ones are dropped
/// and counted as `store_operations_total{op="queue",result="dropped"}`).
const QUEUE_MAX: usize = 100_000;

/// The Redis-backed affinity store. Pool handles and background tasks share
/// one [`Shared`]; the tasks hold it weakly and end with the store.
pub struct RedisStore {
    shared: Arc<Shared>,
    /// The leases' own connection (`lease_link.rs`).
    lease_link: lease_link::LeaseLink,
}

pub(crate) struct Shared {
    link: Link,
    keys: Keys,
    /// Random id sent with every message, so this instance skips its own events.
    instance: String,
    ttl_ms: u64,
    /// The cache's bound (`max_sessions`), its eviction queue, and the
    /// provisional sessions of every pool.
    budget: Arc<Budget>,
    pools: DashMap<Arc<str>, Arc<PoolCache>>,
    /// Coarse "now" (unix ms) stamped by hits, so a hit costs no clock read.
    clock: AtomicU64,
    queue: Queue,
    /// Wakes the reconnect loop: a write was queued while the link is up.
    kick: Notify,
    /// One revalidation at a time; a request during one runs another after it.
    revalidating: AtomicBool,
    revalidate_again: AtomicBool,
    /// The next revalidation also writes back what Redis lacks (after an outage).
    pending_write_back: AtomicBool,
    /// Redis `run_id` last seen: a new one means Redis restarted (maybe empty).
    run_id: Mutex<Option<String>>,
    secret: Mutex<Option<Vec<u8>>>,
    /// This instance's view of the shared drains: `(pool, backend) -> deadline`.
    drains: Mutex<HashMap<(String, String), u64>>,
    /// Bumped by every change of `drains` other than a full read, so that a
    /// read that raced with one is not applied over it.
    drain_epoch: AtomicU64,
    /// Drain changes of this instance on their way to Redis (a read now could
    /// predate them).
    drains_in_flight: AtomicU64,
    events: broadcast::Sender<OperatorEvent>,
    expirations: AtomicU64,
    /// Dropped with the store (and its last pool handle): the tasks then end.
    stop: watch::Sender<bool>,
}

impl RedisStore {
    /// Connect to the Redis of `cfg` (within `connect_timeout`) and start the
    /// background tasks on the current tokio runtime. An unreachable Redis is
    /// not an error (the store starts from an empty cache and connects later);
    /// a configuration Redis rejects is, e.g. `redis at HOST:PORT: authentication failed`.
    pub async fn open(
        cfg: &StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisStore>, StoreError> {
        Self::open_with(cfg, metrics, QUEUE_MAX).await
    }

    async fn open_with(
        cfg: &StoreConfig,
        metrics: Arc<Metrics>,
        queue_max: usize,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let StoreKind::Redis(rc) = &cfg.kind else {
            return Err(StoreError::Config("not a redis store".into()));
        };
        let link = Link::new(rc, metrics)?;
        let shared = Arc::new(Shared {
            keys: Keys::new(&rc.prefix, rc.cluster.is_some()),
            instance: format!("{:016x}", rand::random::<u64>()),
            ttl_ms: u64::try_from(cfg.session_ttl.as_millis()).unwrap_or(u64::MAX),
            budget: Arc::new(Budget::new(
                cfg.max_sessions,
                Provisional::new(cfg.provisional_ttl),
            )),
            pools: DashMap::new(),
            clock: AtomicU64::new(now_ms()),
            queue: Queue::new(queue_max),
            kick: Notify::new(),
            revalidating: AtomicBool::new(false),
            revalidate_again: AtomicBool::new(false),
            pending_write_back: AtomicBool::new(false),
            run_id: Mutex::new(None),
            secret: Mutex::new(None),
            drains: Mutex::new(HashMap::new()),
            drain_epoch: AtomicU64::new(0),
            drains_in_flight: AtomicU64::new(0),
            events: broadcast::channel(1024).0,
            expirations: AtomicU64::new(0),
            stop: watch::channel(false).0,
            link,
        });
        match shared.link.connect().await {
            Ok(()) => {
                shared.link.set_state(State::Syncing);
                sync::replay(&shared).await;
                // Read now so the runtime's first calls need no round trip.
                if let Err(e) = shared.load_drains().await {
                    tracing::warn!(error = %e, "redis store: drains not read at start");
                }
                let _ = shared.cookie_secret().await;
                policy::warn_if_evicting(&shared.link).await;
            }
            Err(StoreError::Config(message)) => return Err(StoreError::Config(message)),
            Err(e) => tracing::warn!(
                error = %e,
                "redis store: starting without redis (sessions are pinned locally and written once it answers)"
            ),
        }
        tasks::spawn(&shared);
        Ok(Arc::new(RedisStore {
            shared,
            lease_link: lease_link::LeaseLink::new(),
        }))
    }

    /// Whether commands currently go to Redis (`store_up`).
    pub fn is_up(&self) -> bool {
        self.shared.link.is_up()
    }

    /// Writes waiting for Redis to answer again.
    pub fn queued(&self) -> usize {
        self.shared.queue.len()
    }

    /// Sessions cached by this instance, over every pool.
    pub fn cached(&self) -> usize {
        self.shared.pools.iter().map(|p| p.len()).sum()
    }
}

#[async_trait]
impl Store for RedisStore {
    fn leases(self: Arc<Self>) -> Option<Arc<dyn crate::store::lease::Leases>> {
        // Asked for by the virtual IP only: its lease series exist from then on.
        self.shared.link.leases_at_zero();
        Some(self)
    }

    fn pool(&self, name: &str) -> Arc<dyn PoolStore> {
        Arc::new(RedisPool {
            shared: self.shared.clone(),
            cache: self.shared.pool_cache(name),
        })
    }

    async fn cookie_secret(&self) -> Result<Vec<u8>, StoreError> {
        self.shared.cookie_secret().await
    }

    /// Waits (at most `connect_timeout` + 5 x `command_timeout`) for queued
    /// writes to reach Redis; what is still queued then is logged and lost.
    async fn flush(&self) -> Result<(), StoreError> {
        let cfg = &self.shared.link.cfg;
        let deadline = tokio::time::Instant::now() + cfg.connect_timeout + cfg.command_timeout * 5;
        self.shared.kick.notify_one();
        while self.shared.queue.len() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.shared.queue.len();
        if left > 0 {
            tracing::warn!(redis = %self.shared.link.target, queued = left, "redis store: queued writes not written before shutdown");
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            sessions: self.cached() as u64,
            evictions: self.shared.budget.evictions.load(Relaxed),
            expirations: self.shared.expirations.load(Relaxed),
            provisional: self.shared.budget.prov.stats(),
            journal_dropped: 0,
        }
    }

    async fn set_drain(
        &self,
        pool: &str,
        backend: &str,
        deadline_unix_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        self.shared.set_drain(pool, backend, deadline_unix_ms).await;
        Ok(())
    }

    async fn drains(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        if self.shared.link.is_up() {
            // A failure leaves this instance's last view, which is what it can offer.
            let _ = self.shared.load_drains().await;
        }
        Ok(self.shared.drain_list())
    }

    fn operator_events(&self) -> Option<broadcast::Receiver<OperatorEvent>> {
        Some(self.shared.events.subscribe())
    }
}

impl Shared {
    fn pool_cache(&self, name: &str) -> Arc<PoolCache> {
        if let Some(pool) = self.pools.get(name) {
            return pool.clone();
        }
        let name: Arc<str> = name.into();
        let pool = self.pools.entry(name.clone());
        pool.or_insert_with(|| PoolCache::new(name, &self.budget))
            .clone()
    }

    /// Every pool, cloned out so no pools-map lock is held while scanning them.
    fn pool_list(&self) -> Vec<Arc<PoolCache>> {
        self.pools.iter().map(|p| p.value().clone()).collect()
    }
}
