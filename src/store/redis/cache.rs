//! This instance's cache of one pool's sessions: what `lookup` answers from.
//!
//! Like the embedded store's pool map (a `DashMap<Arc<str>, Arc<Entry>>` read by
//! `&str`, so a hit allocates nothing, plus exact per-backend counts), but every
//! record carries the Redis version it came from. Records reach the cache from
//! three places that can race: replies to this instance's own scripts, pub/sub
//! messages and revalidation reads. Each is applied only if its version is newer
//! than the cached one, so the cache converges on Redis whatever the arrival
//! order. A record changed while Redis was unreachable is marked `local`: Redis
//! overrides it as soon as it answers (after the queued change was replayed).
//! Counts and records change together under the key's shard write lock.
//!
//! The cache is bounded by `max_sessions` ([`Budget`], shared by every pool of
//! the store, provisional sessions included): a new entry joins the eviction
//! queue (`lru.rs`) and, past the bound, evicts a provisional session or the
//! least recently used idle entry (from the cache only: Redis keeps it), without
//! a scan. An entry whose change has not reached Redis (`local`) is never evicted.
//! The pool's provisional sessions (`provisional.rs`) sit beside the cache.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use dashmap::mapref::entry::Entry as Slot;
use dashmap::DashMap;

use crate::store::lru::{Evict, Lru, Outcome};
use crate::store::owner::Owner;
use crate::store::provisional::{ProvPool, Provisional, POPS};
use crate::store::{now_ms, Hit, Session, SessionMeta};

/// Who owns a key, with where that knowledge came from; replaced whole on every change.
pub(super) struct Record {
    owner: Owner,
    /// Version of the Redis record this is (0: never seen in Redis).
    pub(super) ver: u64,
    /// Changed while Redis was unreachable; any answer from Redis replaces it.
    pub(super) local: bool,
}

impl std::ops::Deref for Record {
    type Target = Owner;
    fn deref(&self) -> &Owner {
        &self.owner
    }
}

impl Record {
    fn new(s: &Session, ver: u64, local: bool) -> Record {
        Record {
            owner: Owner::from(s),
            ver,
            local,
        }
    }

    /// The same owner with the move announced (cleared by `take_moved`).
    pub(super) fn taken(&self) -> Record {
        Record {
            owner: self.owner.taken(),
            ver: self.ver,
            local: true,
        }
    }
}

pub(super) struct Entry {
    record: ArcSwap<Record>,
    /// Unix ms of the last hit, from the store's coarse clock.
    pub(super) last_seen: AtomicU64,
    /// The `last_seen` last written to Redis: TTL refreshes are throttled on it.
    pub(super) pushed: AtomicU64,
    pub(super) meta: Arc<SessionMeta>,
}

impl Entry {
    fn new(s: &Session, ver: u64, local: bool, meta: Arc<SessionMeta>) -> Entry {
        Entry {
            record: ArcSwap::from_pointee(Record::new(s, ver, local)),
            last_seen: AtomicU64::new(s.last_seen),
            pushed: AtomicU64::new(s.last_seen),
            meta,
        }
    }

    pub(super) fn record(&self) -> arc_swap::Guard<Arc<Record>> {
        self.record.load()
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

/// How a record read from Redis is applied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Apply {
    /// Newer versions only; a key not cached is added.
    Newer,
    /// Newer versions of keys already cached only (pub/sub: no warm-up by broadcast).
    IfCached,
    /// Whatever the version (Redis came back after an outage or restart).
    Force,
}

/// The bound of one store's cache, shared by the caches of all its pools.
pub(super) struct Budget {
    max: usize,
    /// Entries cached over every pool.
    total: AtomicUsize,
    lru: Lru<PoolCache>,
    pub(super) prov: Arc<Provisional>,
    pub(super) evictions: AtomicU64,
}

impl Budget {
    pub(super) fn new(max: usize, prov: Arc<Provisional>) -> Budget {
        Budget {
            max,
            total: AtomicUsize::new(0),
            lru: Lru::default(),
            prov,
            evictions: AtomicU64::new(0),
        }
    }

    /// Entries cached over every pool.
    pub(super) fn total(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// How many provisional sessions fit beside the cached ones.
    pub(super) fn room(&self) -> usize {
        self.max.saturating_sub(self.total())
    }

    fn over(&self) -> usize {
        (self.total() + self.prov.len()).saturating_sub(self.max)
    }

    /// Past the bound, evict provisional sessions first, then the least recently
    /// used idle cache entries, looking at `pops` queue slots at most in each.
    pub(super) fn make_room(&self, pops: usize) {
        let want = self.over();
        if want == 0 {
            return;
        }
        let freed = self.prov.evict(want, pops, now_ms());
        if freed < want {
            let evicted = self.lru.evict(&(), want - freed, pops);
            self.evictions.fetch_add(evicted as u64, Relaxed);
        }
    }

    /// Background upkeep: due provisional sessions, room inserts could not make
    /// (looking further than they do), dead queue slots.
    pub(super) fn upkeep(&self, now: u64) {
        self.prov.expire(now);
        let over = self.over();
        self.make_room(over.saturating_mul(16).saturating_add(1024));
        if self.lru.len() > 2 * self.total() + 1024 {
            self.lru.compact();
        }
    }

    /// Whether [`Self::upkeep`] has anything to do (O(1)).
    pub(super) fn needs_upkeep(&self, now: u64) -> bool {
        self.prov.needs_upkeep(now) || self.over() > 0 || self.lru.len() > 2 * self.total() + 1024
    }
}

pub(super) struct PoolCache {
    pub(super) name: Arc<str>,
    pub(super) map: DashMap<Arc<str>, Arc<Entry>>,
    counts: DashMap<Arc<str>, AtomicU64>,
    budget: Arc<Budget>,
    me: Weak<PoolCache>,
    pub(super) prov: Arc<ProvPool>,
    /// Told when a session with live connections changes owner under us.
    pub(super) on_moved: std::sync::OnceLock<crate::store::OwnerChanged>,
}

impl Evict for PoolCache {
    type Entry = Entry;
    type Ctx = ();

    fn state(e: &Entry) -> (u64, bool) {
        (e.last_seen.load(Relaxed), e.is_idle() && !e.record().local)
    }

    fn evict(&self, _: &(), key: &str, entry: &Arc<Entry>, stamp: u64) -> Outcome {
        let unused = |e: &Entry| {
            std::ptr::eq(e, &**entry)
                && e.is_idle()
                && !e.record().local
                && e.last_seen.load(Relaxed) <= stamp
        };
        if self.remove_if(key, unused) {
            return Outcome::Evicted;
        }
        match self.map.get(key) {
            Some(e) if Arc::ptr_eq(&e, entry) => Outcome::Kept,
            _ => Outcome::Gone,
        }
    }
}

impl PoolCache {
    pub(super) fn new(name: Arc<str>, budget: &Arc<Budget>) -> Arc<PoolCache> {
        Arc::new_cyclic(|me| PoolCache {
            name,
            map: DashMap::new(),
            counts: DashMap::new(),
            budget: budget.clone(),
            me: me.clone(),
            prov: ProvPool::new(&budget.prov),
            on_moved: std::sync::OnceLock::new(),
        })
    }

    /// A new entry was added (call with no shard lock held): queue it for
    /// eviction and keep the cache within its bound.
    fn added(&self, key: Arc<str>, entry: &Arc<Entry>) {
        if let Some(me) = self.me.upgrade() {
            self.budget.lru.push(&me, key, entry);
        }
        self.budget.make_room(POPS);
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

    /// The hot path: the cached owner, stamping `now` into `last_seen`.
    pub(super) fn lookup(&self, key: &str, now: u64) -> Option<Hit> {
        let entry = self.map.get(key)?;
        // Skip the store when unchanged: hot keys then share the cache line read-only.
        if entry.last_seen.load(Relaxed) < now {
            entry.last_seen.fetch_max(now, Relaxed);
        }
        Some(entry.hit())
    }

    pub(super) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.map.get(key).map(|e| e.value().clone())
    }

    /// Apply a record read from Redis at version `ver`; returns the cached owner
    /// afterwards (`None` only for [`Apply::IfCached`] on a key not cached).
    pub(super) fn apply(&self, key: &str, ver: u64, s: &Session, how: Apply) -> Option<Hit> {
        if let Some(entry) = self.map.get_mut(key) {
            self.replace(key, &entry, ver, s, how);
            return Some(entry.hit());
        }
        if how == Apply::IfCached {
            return None;
        }
        let key: Arc<str> = key.into();
        let hit = match self.map.entry(key.clone()) {
            Slot::Occupied(slot) => {
                self.replace(&key, slot.get(), ver, s, how);
                return Some(slot.get().hit());
            }
            Slot::Vacant(slot) => {
                let entry = Arc::new(Entry::new(s, ver, false, Arc::default()));
                self.count(&s.backend, true);
                self.budget.total.fetch_add(1, Relaxed);
                slot.insert(entry.clone());
                entry
            }
        };
        self.added(key, &hit);
        Some(hit.hit())
    }

    /// Swap in `s` if it wins over the cached record; called under the shard lock.
    fn replace(&self, key: &str, entry: &Entry, ver: u64, s: &Session, how: Apply) {
        let old = entry.record.load();
        if !(how == Apply::Force || old.local || ver > old.ver) {
            return;
        }
        if old.backend != s.backend {
            self.count(&old.backend, false);
            self.count(&s.backend, true);
            // Connections of this session follow the old owner: they must move too.
            if entry.meta.live() > 0 {
                if let Some(f) = self.on_moved.get() {
                    f(key, &old.backend);
                }
            }
        }
        entry.record.store(Arc::new(Record::new(s, ver, false)));
        entry.last_seen.fetch_max(s.last_seen, Relaxed);
        entry.pushed.fetch_max(s.last_seen, Relaxed);
    }

    /// Record `s` (with `meta`) for `key` unless it has an owner, as a change
    /// Redis has not seen yet. Returns the owner and whether `s` was recorded.
    pub(super) fn insert_local(
        &self,
        key: &str,
        s: &Session,
        meta: Arc<SessionMeta>,
    ) -> (Hit, bool) {
        let key: Arc<str> = key.into();
        let entry = match self.map.entry(key.clone()) {
            Slot::Occupied(slot) => return (slot.get().hit(), false),
            Slot::Vacant(slot) => {
                let entry = Arc::new(Entry::new(s, 0, true, meta));
                self.count(&s.backend, true);
                self.budget.total.fetch_add(1, Relaxed);
                slot.insert(entry.clone());
                entry
            }
        };
        self.added(key, &entry);
        (entry.hit(), true)
    }

    /// Redis unreachable: swap the record of `key` if `change` gives a new one.
    /// Returns whether it did.
    pub(super) fn update_local(
        &self,
        key: &str,
        change: impl FnOnce(&Record) -> Option<Record>,
    ) -> bool {
        let Some(entry) = self.map.get_mut(key) else {
            return false;
        };
        let old = entry.record.load_full();
        let Some(new) = change(&old) else {
            return false;
        };
        if old.backend != new.backend {
            self.count(&old.backend, false);
            self.count(&new.backend, true);
        }
        entry.record.store(Arc::new(new));
        true
    }

    /// A local re-pin to `s` (Redis unreachable).
    pub(super) fn local_record(s: &Session, old: &Record) -> Record {
        Record::new(s, old.ver, true)
    }

    /// Remove `key` if `cond` holds for its entry (checked under the shard lock).
    pub(super) fn remove_if(&self, key: &str, cond: impl Fn(&Entry) -> bool) -> bool {
        let removed = self.map.remove_if(key, |_, entry| {
            if !cond(entry) {
                return false;
            }
            self.count(&entry.record.load().backend, false);
            self.budget.total.fetch_sub(1, Relaxed);
            true
        });
        removed.is_some()
    }

    pub(super) fn sessions_of(&self, backend: &str) -> u64 {
        self.counts.get(backend).map_or(0, |n| n.load(Relaxed))
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}
