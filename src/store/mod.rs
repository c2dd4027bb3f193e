//! The affinity store: where each session (pool, key) lives.
//!
//! The router asks a [`PoolStore`] (one per pool, handed out by [`Store::pool`]) for a
//! key's owner on every request. A hit must cost no I/O and no allocation, so the
//! hot path is the synchronous [`PoolStore::lookup`]; everything that decides or
//! changes ownership (`insert_if_absent`, `compare_and_set`, `delete`) is async so a
//! shared store (Redis) can implement it with round trips. The embedded store
//! (`memory`) keeps everything in a dashmap and optionally persists it to a file;
//! the shared store (`redis`) keeps the records in Redis behind a local cache.
//! Both keep the sessions of inserted cookies that have not come back yet in
//! memory only, beside the others (`provisional`).

pub mod lease;
mod lru;
pub mod memory;
mod owner;
mod persist;
mod provisional;
pub mod redis;

pub use memory::MemoryStore;
pub use provisional::ProvisionalStats;
pub use redis::RedisStore;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Why a session left its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveReason {
    Down,
    Drain,
    Removed,
    Failback,
}

impl MoveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveReason::Down => "down",
            MoveReason::Drain => "drain",
            MoveReason::Removed => "removed",
            MoveReason::Failback => "failback",
        }
    }
}

/// The session record of the spec: `(pool, key) -> { backend, since, last_seen, moved_from, move_reason }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub backend: Arc<str>,
    /// Unix milliseconds when this owner was recorded.
    pub since: u64,
    /// Unix milliseconds of the last request or connection seen for the key.
    pub last_seen: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_reason: Option<MoveReason>,
    /// The backend the session was moved away from (down or drain) and will
    /// return to with `failback: return` once it is back. Survives the clearing
    /// of `moved_from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<Arc<str>>,
}

impl Session {
    pub fn new(backend: Arc<str>) -> Self {
        let now = now_ms();
        Session {
            backend,
            since: now,
            last_seen: now,
            moved_from: None,
            move_reason: None,
            home: None,
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store file {path} line {line}: {message}")]
    Corrupt {
        path: String,
        line: usize,
        message: String,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A store that cannot work as configured (bad address, wrong password):
    /// reported at open, never while serving.
    #[error("{0}")]
    Config(String),
}

/// Operator state changed through another instance sharing the store (see
/// [`Store::operator_events`]); the receiver applies it as if it came from
/// its own admin API, without publishing it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorEvent {
    /// `backend` of `pool` drains until the deadline (unix ms).
    Drain {
        pool: String,
        backend: String,
        deadline_unix_ms: u64,
    },
    /// `backend` of `pool` is back in rotation.
    Enable { pool: String, backend: String },
}

/// Per-session state kept beside the record (it survives re-pins): live
/// connections, and the fingerprint of the last verified affinity cookie.
#[derive(Debug, Default)]
pub struct SessionMeta {
    live: AtomicU32,
    stamp: AtomicU64,
}

impl SessionMeta {
    /// Live connections/requests: while any is alive the session is never idle.
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// Fingerprint of the last cookie value verified for this session (0: none).
    pub fn stamp(&self) -> u64 {
        self.stamp.load(Ordering::Relaxed)
    }

    pub fn set_stamp(&self, stamp: u64) {
        self.stamp.store(stamp, Ordering::Relaxed);
    }
}

/// Counts one live connection/request of a session; while any is alive the
/// session is never idle (so never expired or evicted).
#[derive(Debug)]
pub struct LiveGuard(Arc<SessionMeta>);

impl LiveGuard {
    pub fn new(meta: Arc<SessionMeta>) -> Self {
        meta.live.fetch_add(1, Ordering::Relaxed);
        LiveGuard(meta)
    }

    pub fn meta(&self) -> &SessionMeta {
        &self.0
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a cached lookup gives the router.
#[derive(Debug)]
pub struct Hit {
    pub backend: Arc<str>,
    /// Set while the first request after a move has not been forwarded yet.
    pub moved: Option<(Arc<str>, MoveReason)>,
    /// Where the session lived before a down/drain move (see [`Session::home`]).
    pub home: Option<Arc<str>>,
    pub meta: Arc<SessionMeta>,
    /// An inserted cookie's session whose cookie has not come back yet
    /// ([`PoolStore::insert_provisional`]).
    pub provisional: bool,
}

/// A whole store: sessions of every pool, plus store-wide values (the cookie secret).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The handle the router keeps for one pool. Calling it twice with one name
    /// gives handles on the same sessions.
    fn pool(&self, name: &str) -> Arc<dyn PoolStore>;

    /// The cookie-signing secret shared by every instance using this store;
    /// created (random, 32 bytes) on first use.
    async fn cookie_secret(&self) -> Result<Vec<u8>, StoreError>;

    /// Write everything still buffered (graceful shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// The store's leases, when it is shared by several instances (Redis).
    fn leases(self: Arc<Self>) -> Option<Arc<dyn lease::Leases>> {
        None
    }

    /// A successor process (`tether --upgrade`) takes over: write everything
    /// buffered, then never write again (the successor owns the files now).
    /// Shared stores have nothing to hand over.
    async fn hand_over(&self) -> Result<(), StoreError> {
        self.flush().await
    }

    /// Short name for metrics and logs (`embedded`, `redis`).
    fn kind(&self) -> &'static str;

    /// Store-wide counters for metrics; stores that keep none report zeros.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Share a drain (`Some(deadline)`, unix ms) or an enable (`None`) of a
    /// backend with every instance using this store. A store that is not
    /// shared has nobody to tell.
    async fn set_drain(
        &self,
        _pool: &str,
        _backend: &str,
        _deadline_unix_ms: Option<u64>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Drains in force as `(pool, backend, deadline_unix_ms)`, read at start so
    /// an instance started after a drain obeys it too.
    async fn drains(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        Ok(Vec::new())
    }

    /// Drains and enables made through other instances, as they happen; `None`
    /// for a store that is not shared.
    fn operator_events(&self) -> Option<tokio::sync::broadcast::Receiver<OperatorEvent>> {
        None
    }
}

/// Counters a store exports to the metrics module.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Sessions of every pool.
    pub sessions: u64,
    /// Idle sessions dropped to stay under `max_sessions`.
    pub evictions: u64,
    /// Sessions dropped after `session_ttl` without traffic.
    pub expirations: u64,
    /// Provisional sessions (not counted in `sessions`, `evictions`, `expirations`).
    pub provisional: ProvisionalStats,
    /// Journal lines dropped because the store's writer fell behind (embedded
    /// store; the next compaction rewrites them from memory).
    pub journal_dropped: u64,
}

/// Sessions of one pool.
#[async_trait]
pub trait PoolStore: Send + Sync + 'static {
    /// Hot path: the key's owner if known locally, refreshing `last_seen`.
    /// No I/O, no allocation.
    fn lookup(&self, key: &str) -> Option<Hit>;

    /// The full record (admin API).
    async fn get(&self, key: &str) -> Result<Option<Session>, StoreError>;

    /// Record `key -> backend` unless the key already has an owner; either way
    /// return the owner that won (a racing instance may have won).
    async fn insert_if_absent(&self, key: &str, backend: Arc<str>) -> Result<Hit, StoreError>;

    /// Record the session of a freshly inserted cookie, provisionally: in this
    /// process's memory only, until [`Self::confirm`] (see `provisional.rs`).
    /// Returns the key's owner (the one given, unless the key had one). No I/O.
    fn insert_provisional(&self, key: &str, backend: Arc<str>) -> Hit;

    /// The key's cookie came back: a provisional session becomes a confirmed
    /// one, written like [`Self::insert_if_absent`] (an owner another instance
    /// recorded first wins). Returns the owner now; `None` if the key has no
    /// session here at all.
    async fn confirm(&self, key: &str) -> Result<Option<Hit>, StoreError>;

    /// Replace the record only if its current owner is `expected`. Returns whether it did.
    async fn compare_and_set(
        &self,
        key: &str,
        expected: &str,
        new: Session,
    ) -> Result<bool, StoreError>;

    /// Clear `moved_from`/`move_reason` if still set for owner `backend`.
    /// Returns true for exactly one caller after a move.
    async fn take_moved(&self, key: &str, backend: &str) -> Result<bool, StoreError>;

    /// Forget the key. Returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Number of sessions owned by `backend` (bounded load, metrics, admin).
    fn sessions_of(&self, backend: &str) -> u64;

    /// Total sessions of this pool (provisional ones not included).
    fn len(&self) -> usize;

    /// Provisional sessions of this pool.
    fn provisional_len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Call `f(key, old_owner)` whenever the owner of a session with live
    /// connections here changes under this instance (another instance moved
    /// it, or Redis overrode a decision made during an outage): those
    /// connections are on the wrong backend now. Stores whose owners change
    /// only through this instance's own calls need not call it.
    fn on_owner_change(&self, f: OwnerChanged) {
        let _ = f;
    }
}

/// See [`PoolStore::on_owner_change`].
pub type OwnerChanged = Box<dyn Fn(&str, &str) + Send + Sync>;
