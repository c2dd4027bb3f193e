//! The embedded store: every pool's sessions in process memory, optionally
//! persisted to a file (`store.kind: embedded`, `store.path`).
//!
//! Data flows: [`MemoryStore::open`] loads the snapshot and log (`persist`), fills one
//! [`pool::PoolMap`] per pool and starts the writer thread and the maintenance task.
//! The router holds [`MemPool`] handles (`pool.rs`): hits are a dashmap read; every
//! ownership change is applied in memory and queued to the journal, which the
//! writer thread appends to the log. Provisional sessions (`provisional.rs`) stay
//! in memory and reach the journal only once confirmed. The maintenance task
//! (`sweep.rs`) keeps the coarse clock that hits stamp into `last_seen`, expires
//! idle and provisional sessions and queues `last_seen` touches; an insert past
//! `max_sessions` evicts a provisional session, else the least recently used
//! idle one, from queues without scanning (`lru.rs`, `sweep.rs`).

#[cfg(test)]
mod lifetime_tests;
mod pool;
#[cfg(test)]
mod provisional_tests;
mod sweep;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use dashmap::DashMap;
use ring::rand::{SecureRandom, SystemRandom};

use super::lru::Lru;
use super::persist::{self, Journal, SnapshotSource, Stall, Visit};
use super::provisional::Provisional;
use super::{now_ms, PoolStore, Store, StoreError, StoreStats};
use crate::config::{Store as StoreConfig, StoreKind};
pub use pool::MemPool;
use pool::{Entry, PoolMap};

/// The embedded affinity store. Cheap to share: pool handles and the background
/// work all point at one [`Shared`].
pub struct MemoryStore {
    shared: Arc<Shared>,
}

/// State shared by the store, its pool handles, the maintenance task (weakly) and
/// the writer thread (weakly, to read snapshots).
pub(crate) struct Shared {
    pools: DashMap<Arc<str>, Arc<PoolMap>>,
    ttl_ms: u64,
    max_sessions: usize,
    /// Confirmed sessions of every pool, including slots reserved by inserts in flight.
    total: AtomicUsize,
    /// Coarse "now" (unix ms) stamped by hits, so a hit costs no clock read.
    clock: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    /// Confirmed sessions in eviction order.
    lru: Lru<PoolMap>,
    prov: Arc<Provisional>,
    maintained: AtomicBool,
    secret: [u8; 32],
    /// Set when the store is persisted.
    journal: Option<Journal>,
}

impl MemoryStore {
    /// Open the store described by `cfg`: load its files if it has a path, and start
    /// the maintenance task when called inside a tokio runtime (otherwise call
    /// [`MemoryStore::spawn_maintenance`] from one).
    pub fn open(cfg: &StoreConfig) -> Result<Arc<MemoryStore>, StoreError> {
        let store = Self::open_without_maintenance(cfg)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            store.spawn_maintenance();
        }
        Ok(store)
    }

    fn open_without_maintenance(cfg: &StoreConfig) -> Result<Arc<MemoryStore>, StoreError> {
        Self::open_with(cfg, persist::JOURNAL_MAX, Stall::default())
    }

    /// `journal_max`: the journal queue's bound; `stall`: test pause points.
    pub(crate) fn open_with(
        cfg: &StoreConfig,
        journal_max: usize,
        stall: Stall,
    ) -> Result<Arc<MemoryStore>, StoreError> {
        // Other store kinds are opened by their own modules.
        #[allow(irrefutable_let_patterns)]
        let StoreKind::Embedded { path } = &cfg.kind
        else {
            return Err(StoreError::Unavailable("not an embedded store".into()));
        };
        let ttl_ms = u64::try_from(cfg.session_ttl.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let loaded = match path {
            Some(path) => persist::load(path, ttl_ms, now)?,
            None => persist::Loaded::default(),
        };
        let secret = match loaded.secret {
            Some(secret) => secret,
            None => random_secret()?,
        };
        let (journal, inbox) = match path {
            Some(_) => {
                let (journal, inbox) = persist::channel(journal_max, stall);
                (Some(journal), Some(inbox))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            pools: DashMap::new(),
            ttl_ms,
            max_sessions: cfg.max_sessions,
            total: AtomicUsize::new(0),
            clock: AtomicU64::new(now),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
            lru: Lru::default(),
            prov: Provisional::new(cfg.provisional_ttl),
            maintained: AtomicBool::new(false),
            secret,
            journal,
        });
        shared.restore(loaded.pools);
        // A smaller max_sessions than last run: trim before serving.
        let over = shared
            .total
            .load(Relaxed)
            .saturating_sub(shared.max_sessions);
        if over > 0 {
            shared.evict(over, usize::MAX);
        }
        if let (Some(path), Some(inbox), Some(journal)) = (path, inbox, &shared.journal) {
            let source: Weak<dyn SnapshotSource> = Arc::downgrade(&shared) as _;
            let thread = persist::start(PathBuf::from(path), loaded.gen + 1, inbox, source)?;
            journal.attach(thread);
        }
        Ok(Arc::new(MemoryStore { shared }))
    }

    /// Start the background task (clock, idle expiry, `last_seen` persistence) on the
    /// current tokio runtime; a no-op if it runs already. It ends with the store.
    pub fn spawn_maintenance(&self) {
        if !self.shared.maintained.swap(true, Relaxed) {
            tokio::spawn(sweep::maintain(Arc::downgrade(&self.shared)));
        }
    }

    /// Idle sessions evicted to stay under `max_sessions` since open.
    pub fn evictions(&self) -> u64 {
        self.shared.evictions.load(Relaxed)
    }

    /// Sessions expired after `session_ttl` without traffic since open.
    pub fn expirations(&self) -> u64 {
        self.shared.expirations.load(Relaxed)
    }

    /// Confirmed sessions of every pool.
    pub fn len(&self) -> usize {
        self.shared.total.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rewrite the snapshot and start a fresh log now (normally automatic once the
    /// log outgrows twice the live data). A no-op without a path.
    pub async fn compact(&self) -> Result<(), StoreError> {
        match &self.shared.journal {
            Some(journal) => journal.compact().await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn pool(&self, name: &str) -> Arc<dyn PoolStore> {
        Arc::new(MemPool {
            shared: self.shared.clone(),
            pool: self.shared.pool_map(name),
        })
    }

    async fn cookie_secret(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.shared.secret.to_vec())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        match &self.shared.journal {
            Some(journal) => {
                // Every newer last_seen goes out too, so a restart keeps recent sessions.
                self.shared.queue_touches(1);
                journal.flush().await
            }
            None => Ok(()),
        }
    }

    async fn hand_over(&self) -> Result<(), StoreError> {
        match &self.shared.journal {
            Some(journal) => {
                self.shared.queue_touches(1);
                journal.retire().await
            }
            None => Ok(()),
        }
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            sessions: self.len() as u64,
            evictions: self.evictions(),
            expirations: self.expirations(),
            provisional: self.shared.prov.stats(),
            journal_dropped: self.shared.journal.as_ref().map_or(0, |j| j.dropped()),
        }
    }
}

impl Shared {
    fn pool_map(&self, name: &str) -> Arc<PoolMap> {
        if let Some(pool) = self.pools.get(name) {
            return pool.clone();
        }
        let name: Arc<str> = name.into();
        let pool = self.pools.entry(name.clone());
        pool.or_insert_with(|| Arc::new(PoolMap::new(name, &self.prov)))
            .clone()
    }

    /// Put the sessions read from disk in, queued for eviction least recently
    /// seen first.
    fn restore(&self, pools: HashMap<Arc<str>, HashMap<Box<str>, super::Session>>) {
        // (last_seen, pool, key, entry) of each session put back.
        type Restored = (u64, Arc<PoolMap>, Arc<str>, Arc<Entry>);
        let mut queued: Vec<Restored> = Vec::new();
        for (name, sessions) in pools {
            let pool = self.pool_map(&name);
            for (key, session) in sessions {
                let key: Arc<str> = key.into();
                if let Some(entry) = pool.restore(self, key.clone(), &session) {
                    queued.push((session.last_seen, pool.clone(), key, entry));
                }
            }
        }
        queued.sort_unstable_by_key(|q| q.0);
        for (_, pool, key, entry) in queued {
            self.lru.push(&pool, key, &entry);
        }
    }

    /// Every pool, cloned out so no pools-map lock is held while scanning them.
    fn pool_list(&self) -> Vec<Arc<PoolMap>> {
        self.pools.iter().map(|p| p.value().clone()).collect()
    }
}

impl SnapshotSource for Shared {
    fn secret(&self) -> [u8; 32] {
        self.secret
    }

    fn session_count(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// Copies the entries first (pointer copies, each shard locked only while
    /// they are copied), then visits them with no lock held: `f` writes to disk.
    /// A change made after the copy is queued on the journal after the
    /// compaction's request, so it reaches the new log; applying it on top of a
    /// snapshot that may already show it gives the same result.
    fn each_session(&self, f: &mut Visit) -> io::Result<()> {
        for pool in self.pool_list() {
            let entries: Vec<(Arc<str>, Arc<Entry>)> = pool
                .map
                .iter()
                .map(|item| (item.key().clone(), item.value().clone()))
                .collect();
            for (key, entry) in entries {
                let session = entry.session();
                // The snapshot carries this last_seen; no touch needed for it.
                entry.persisted_seen.store(session.last_seen, Relaxed);
                f(&pool.name, &key, &session)?;
            }
        }
        Ok(())
    }
}

fn random_secret() -> Result<[u8; 32], StoreError> {
    let mut secret = [0u8; 32];
    SystemRandom::new().fill(&mut secret).map_err(|_| {
        StoreError::Unavailable("no system randomness for the cookie secret".into())
    })?;
    Ok(secret)
}
