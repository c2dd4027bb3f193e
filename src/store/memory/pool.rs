//! One pool's sessions in the embedded store, and the [`PoolStore`] handle over them.
//!
//! A pool is a `DashMap<Arc<str>, Arc<Entry>>` (looked up by `&str`, so a hit
//! allocates nothing; the key is shared with the eviction queue) plus exact
//! per-backend counts, and beside it the pool's provisional sessions
//! ([`ProvPool`]), which a lookup falls back to. An [`Entry`] lives as long as
//! its key does: re-pins swap the [`Record`] inside it, so the live-connection
//! counter and `last_seen` survive a move. Every change of a record, a count or the
//! key set happens while holding the key's shard write lock, and the journal line
//! is queued inside that same critical section; that keeps counts exact and the
//! log in the same order as memory. A new entry joins the eviction queue
//! (`lru.rs`) after the lock is released.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use dashmap::mapref::entry::Entry as Slot;
use dashmap::DashMap;

use super::Shared;
use crate::store::lru::{Evict, Outcome};
use crate::store::owner::Owner;
use crate::store::provisional::{ProvPool, Provisional};
use crate::store::{now_ms, Hit, PoolStore, Session, SessionMeta, StoreError};

/// Who owns a key; replaced whole on every change.
type Record = Owner;

pub(super) struct Entry {
    record: ArcSwap<Record>,
    /// Unix ms of the last hit, from the store's coarse clock.
    pub(super) last_seen: AtomicU64,
    /// The `last_seen` last written to the journal (touches are rate-limited).
    pub(super) persisted_seen: AtomicU64,
    pub(super) meta: Arc<SessionMeta>,
}

impl Entry {
    fn new(session: &Session, meta: Arc<SessionMeta>) -> Entry {
        Entry {
            record: ArcSwap::from_pointee(Record::from(session)),
            last_seen: AtomicU64::new(session.last_seen),
            persisted_seen: AtomicU64::new(session.last_seen),
            meta,
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.meta.live() == 0
    }

    fn hit(&self) -> Hit {
        self.record.load().hit(&self.meta)
    }

    pub(super) fn session(&self) -> Session {
        self.record.load().session(self.last_seen.load(Relaxed))
    }
}

pub(super) struct PoolMap {
    pub(super) name: Arc<str>,
    pub(super) map: DashMap<Arc<str>, Arc<Entry>>,
    counts: DashMap<Arc<str>, AtomicU64>,
    pub(super) prov: Arc<ProvPool>,
}

impl PoolMap {
    pub(super) fn new(name: Arc<str>, prov: &Arc<Provisional>) -> PoolMap {
        PoolMap {
            name,
            map: DashMap::new(),
            counts: DashMap::new(),
            prov: ProvPool::new(prov),
        }
    }

    fn count(&self, backend: &Arc<str>, up: bool) {
        match self.counts.get(&**backend) {
            Some(n) if up => n.fetch_add(1, Relaxed),
            Some(n) => n.fetch_sub(1, Relaxed),
            None if up => self
                .counts
                .entry(backend.clone())
                .or_default()
                .fetch_add(1, Relaxed),
            // Unreachable while the bookkeeping is exact: every owner was counted up.
            None => 0,
        };
    }

    /// Put a session read from disk back, without journaling it again. Returns
    /// the new entry, for the caller to queue for eviction.
    pub(super) fn restore(
        &self,
        shared: &Shared,
        key: Arc<str>,
        session: &Session,
    ) -> Option<Arc<Entry>> {
        let Slot::Vacant(slot) = self.map.entry(key) else {
            return None;
        };
        self.count(&session.backend, true);
        shared.total.fetch_add(1, Relaxed);
        let entry = Arc::new(Entry::new(session, Arc::default()));
        slot.insert(entry.clone());
        Some(entry)
    }

    /// Remove `key` if `cond` holds for its entry (checked under the shard lock).
    pub(super) fn remove_if(
        &self,
        shared: &Shared,
        key: &str,
        cond: impl Fn(&Entry) -> bool,
    ) -> bool {
        // The bookkeeping runs inside the predicate because that is where the shard
        // lock is held: a racing insert of the same key must count and log after us.
        let removed = self.map.remove_if(key, |key, entry| {
            if !cond(entry) {
                return false;
            }
            self.count(&entry.record.load().backend, false);
            shared.total.fetch_sub(1, Relaxed);
            if let Some(journal) = &shared.journal {
                journal.del(&self.name, key);
            }
            true
        });
        removed.is_some()
    }
}

impl Evict for PoolMap {
    type Entry = Entry;
    type Ctx = Shared;

    fn state(e: &Entry) -> (u64, bool) {
        (e.last_seen.load(Relaxed), e.is_idle())
    }

    fn evict(&self, shared: &Shared, key: &str, entry: &Arc<Entry>, stamp: u64) -> Outcome {
        let unused = |e: &Entry| {
            std::ptr::eq(e, &**entry) && e.is_idle() && e.last_seen.load(Relaxed) <= stamp
        };
        if self.remove_if(shared, key, unused) {
            return Outcome::Evicted;
        }
        match self.map.get(key) {
            Some(e) if Arc::ptr_eq(&e, entry) => Outcome::Kept,
            _ => Outcome::Gone,
        }
    }
}

/// The router's handle on one pool of a [`super::MemoryStore`].
pub struct MemPool {
    pub(super) shared: Arc<Shared>,
    pub(super) pool: Arc<PoolMap>,
}

impl MemPool {
    /// A confirmed session's owner, stamping `last_seen`.
    fn hit(&self, key: &str) -> Option<Hit> {
        let entry = self.pool.map.get(key)?;
        let now = self.shared.clock.load(Relaxed);
        // Skip the store when unchanged: hot keys then share the cache line read-only.
        if entry.last_seen.load(Relaxed) < now {
            entry.last_seen.fetch_max(now, Relaxed);
        }
        Some(entry.hit())
    }

    /// Insert `session` (with `meta`) unless `key` has a confirmed owner; returns
    /// the owner. `discount`: sessions leaving the store with this insert (a
    /// provisional one being confirmed), so room is not made for them twice.
    fn insert(&self, key: &str, session: &Session, meta: Arc<SessionMeta>, discount: usize) -> Hit {
        // Take the slot before inserting so that racing inserts cannot all slip
        // under `max_sessions`; handed back below if another task wins the key.
        self.shared.reserve(discount);
        self.shared.clock.fetch_max(session.since, Relaxed);
        let key: Arc<str> = key.into();
        let (hit, added) = match self.pool.map.entry(key.clone()) {
            Slot::Occupied(slot) => {
                self.shared.total.fetch_sub(1, Relaxed);
                let entry = slot.get();
                entry.last_seen.fetch_max(session.last_seen, Relaxed);
                (entry.hit(), None)
            }
            Slot::Vacant(slot) => {
                let entry = Arc::new(Entry::new(session, meta));
                self.pool.count(&entry.record.load().backend, true);
                self.journal_put(&key, &entry);
                let hit = entry.hit();
                slot.insert(entry.clone());
                (hit, Some(entry))
            }
        };
        if let Some(entry) = added {
            self.shared.lru.push(&self.pool, key, &entry);
        }
        hit
    }

    fn journal_put(&self, key: &str, entry: &Entry) {
        if let Some(journal) = &self.shared.journal {
            let session = entry.session();
            entry.persisted_seen.store(session.last_seen, Relaxed);
            journal.put(&self.pool.name, key, session);
        }
    }

    /// Swap the record of `key` under its shard write lock if `change` returns a new
    /// one for the current record; counts and journal follow. `seen` can only move
    /// `last_seen` forward: the entry's own value survives re-pins. Returns whether it did.
    fn update(&self, key: &str, seen: u64, change: impl FnOnce(&Record) -> Option<Record>) -> bool {
        let Some(entry) = self.pool.map.get_mut(key) else {
            return false;
        };
        let old = entry.record.load_full();
        let Some(new) = change(&old) else {
            return false;
        };
        if old.backend != new.backend {
            self.pool.count(&old.backend, false);
            self.pool.count(&new.backend, true);
        }
        entry.record.store(Arc::new(new));
        entry.last_seen.fetch_max(seen, Relaxed);
        self.journal_put(key, &entry);
        true
    }
}

#[async_trait]
impl PoolStore for MemPool {
    fn lookup(&self, key: &str) -> Option<Hit> {
        self.hit(key).or_else(|| self.pool.prov.lookup(key))
    }

    async fn get(&self, key: &str) -> Result<Option<Session>, StoreError> {
        if let Some(e) = self.pool.map.get(key) {
            return Ok(Some(e.session()));
        }
        Ok(self.pool.prov.get(key).map(|p| p.session(p.since)))
    }

    async fn insert_if_absent(&self, key: &str, backend: Arc<str>) -> Result<Hit, StoreError> {
        if let Some(hit) = self.hit(key) {
            return Ok(hit);
        }
        Ok(self.insert(key, &Session::new(backend), Arc::default(), 0))
    }

    fn insert_provisional(&self, key: &str, backend: Arc<str>) -> Hit {
        if let Some(hit) = self.hit(key) {
            return hit;
        }
        let confirmed = self.shared.total.load(Relaxed);
        let room = self.shared.max_sessions.saturating_sub(confirmed);
        self.pool.prov.insert(key, backend, now_ms(), room)
    }

    async fn confirm(&self, key: &str) -> Result<Option<Hit>, StoreError> {
        if let Some(hit) = self.hit(key) {
            return Ok(Some(hit));
        }
        let Some(p) = self.pool.prov.get(key) else {
            return Ok(None);
        };
        // In the confirmed map before it leaves the provisional one: a lookup
        // meanwhile finds one or the other, never neither.
        let hit = self.insert(key, &p.session(now_ms()), p.meta.clone(), 1);
        self.pool.prov.confirmed(key, &p);
        Ok(Some(hit))
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &str,
        new: Session,
    ) -> Result<bool, StoreError> {
        Ok(self.update(key, new.last_seen, |old| {
            (*old.backend == *expected).then(|| Record::from(&new))
        }))
    }

    async fn take_moved(&self, key: &str, backend: &str) -> Result<bool, StoreError> {
        Ok(self.update(key, 0, |old| {
            (old.is_moved() && *old.backend == *backend).then(|| old.taken())
        }))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let provisional = self.pool.prov.delete(key);
        Ok(self.pool.remove_if(&self.shared, key, |_| true) || provisional)
    }

    fn sessions_of(&self, backend: &str) -> u64 {
        self.pool.counts.get(backend).map_or(0, |n| n.load(Relaxed))
    }

    fn len(&self) -> usize {
        self.pool.map.len()
    }

    fn provisional_len(&self) -> usize {
        self.pool.prov.len()
    }
}
