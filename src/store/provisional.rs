//! Provisional sessions: the session of an inserted cookie that has not come
//! back yet. Both stores keep them here, beside (never inside) their confirmed
//! sessions, so nothing that persists or shares sessions (the journal and
//! snapshots, Redis writes, write-back, revalidation, TTL refreshes) ever sees
//! one.
//!
//! Lifecycle: the router mints a cookie id and the pool picks a backend by its
//! hash alone, which any instance repeats for the same id; [`ProvPool::insert`]
//! records it in memory. When the cookie first comes back, the store moves it
//! into its confirmed map (journal line, Redis insert-if-absent), keeping its
//! [`SessionMeta`] so live connections and the cookie stamp carry over.
//! Otherwise it expires `provisional_ttl` after it was made. While a connection
//! pinned by it is open (a WebSocket client that never sends the cookie again)
//! it neither expires nor is evicted; it then expires between one and two
//! `provisional_ttl` after that connection closed. It is not persisted then:
//! only the cookie's return could look it up again, and that finds the same
//! backend by the same hash on any instance.
//!
//! Another instance knows nothing of a provisional session: if its backend
//! fails before the cookie returns and the cookie returns there, that instance
//! places it afresh (the same hash, over the live backends) and announces no
//! move; only the instance that issued the cookie can.
//!
//! Bound: provisional and confirmed sessions share `max_sessions`. A new
//! provisional session that does not fit evicts the oldest provisional one,
//! never a confirmed one; if every provisional session is pinned by a
//! connection, the new one is not recorded (its request still goes to the hash
//! pick). A confirmed session that does not fit evicts provisional ones first.
//!
//! One FIFO of every pool's provisional sessions, in order of expiry, serves
//! both expiry (the maintenance task pops what is due) and eviction (pop the
//! front): O(1) per session, no scan.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use dashmap::mapref::entry::Entry as Slot;
use dashmap::DashMap;

use super::{Hit, Session, SessionMeta};

/// Slots looked at by one insert that needs room (the FIFO front is almost
/// always evictable; pinned ones go to the back).
pub(crate) const POPS: usize = 64;

/// Counters of provisional sessions, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProvisionalStats {
    /// Provisional sessions now, over every pool.
    pub sessions: u64,
    pub created: u64,
    /// Became confirmed sessions (their cookie came back).
    pub confirmed: u64,
    pub expired: u64,
    /// Dropped to make room (oldest first).
    pub evicted: u64,
    /// Not recorded: the store was full of confirmed and pinned sessions.
    pub unrecorded: u64,
}

/// The provisional sessions of every pool of one store.
pub(crate) struct Provisional {
    ttl_ms: u64,
    len: AtomicUsize,
    fifo: Mutex<VecDeque<Queued>>,
    created: AtomicU64,
    confirmed: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    unrecorded: AtomicU64,
}

struct Queued {
    pool: Weak<ProvPool>,
    key: Arc<str>,
    entry: Weak<ProvEntry>,
    /// Unix ms when it is checked next.
    due: u64,
}

/// One pool's provisional sessions.
pub(crate) struct ProvPool {
    all: Arc<Provisional>,
    me: Weak<ProvPool>,
    map: DashMap<Arc<str>, Arc<ProvEntry>>,
}

pub(crate) struct ProvEntry {
    pub(crate) backend: Arc<str>,
    pub(crate) since: u64,
    pub(crate) meta: Arc<SessionMeta>,
    /// Pinned by a connection at its last check: kept one more period.
    was_live: AtomicBool,
}

impl ProvEntry {
    fn hit(&self) -> Hit {
        Hit {
            backend: self.backend.clone(),
            moved: None,
            home: None,
            meta: self.meta.clone(),
            provisional: true,
        }
    }

    /// The record it becomes when confirmed at `now`.
    pub(crate) fn session(&self, now: u64) -> Session {
        Session {
            last_seen: now.max(self.since),
            since: self.since,
            ..Session::new(self.backend.clone())
        }
    }

    fn is_live(&self) -> bool {
        self.meta.live() > 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Consistent after any panic: each change is one push or pop.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Provisional {
    pub(crate) fn new(ttl: Duration) -> Arc<Provisional> {
        Arc::new(Provisional {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            len: AtomicUsize::new(0),
            fifo: Mutex::new(VecDeque::new()),
            created: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            unrecorded: AtomicU64::new(0),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    pub(crate) fn stats(&self) -> ProvisionalStats {
        ProvisionalStats {
            sessions: self.len() as u64,
            created: self.created.load(Relaxed),
            confirmed: self.confirmed.load(Relaxed),
            expired: self.expired.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            unrecorded: self.unrecorded.load(Relaxed),
        }
    }

    fn requeue(&self, mut q: Queued, now: u64) {
        q.due = now.saturating_add(self.ttl_ms);
        lock(&self.fifo).push_back(q);
    }

    /// Whether [`Self::expire`] has work at `now` (O(1): a look at the front),
    /// or the FIFO holds many slots of sessions that left it.
    pub(crate) fn needs_upkeep(&self, now: u64) -> bool {
        let fifo = lock(&self.fifo);
        fifo.front().is_some_and(|q| q.due <= now) || fifo.len() > 2 * self.len() + 1024
    }

    /// Expire what is due at `now`; sessions pinned by a connection are checked
    /// again a `provisional_ttl` later. Returns how many expired.
    pub(crate) fn expire(&self, now: u64) -> usize {
        let mut expired = 0;
        loop {
            let q = {
                let mut fifo = lock(&self.fifo);
                match fifo.front() {
                    Some(q) if q.due <= now => fifo.pop_front(),
                    _ => None,
                }
            };
            let Some(q) = q else { break };
            let (Some(pool), Some(entry)) = (q.pool.upgrade(), q.entry.upgrade()) else {
                continue;
            };
            if entry.is_live() {
                entry.was_live.store(true, Relaxed);
                self.requeue(q, now);
            } else if entry.was_live.swap(false, Relaxed) {
                // Its connection closed during the last period: idle from then on.
                self.requeue(q, now);
            } else if pool.remove(&q.key, &entry) {
                expired += 1;
            }
        }
        self.expired.fetch_add(expired as u64, Relaxed);
        if lock(&self.fifo).len() > 2 * self.len() + 1024 {
            self.compact();
        }
        expired
    }

    /// Evict up to `want` provisional sessions, oldest first, never one pinned
    /// by a connection; looks at `pops` slots at most. Returns how many.
    pub(crate) fn evict(&self, want: usize, pops: usize, now: u64) -> usize {
        let mut evicted = 0;
        for _ in 0..pops {
            if evicted == want {
                break;
            }
            let Some(q) = lock(&self.fifo).pop_front() else {
                break;
            };
            let (Some(pool), Some(entry)) = (q.pool.upgrade(), q.entry.upgrade()) else {
                continue;
            };
            if entry.is_live() {
                entry.was_live.store(true, Relaxed);
                self.requeue(q, now);
            } else if pool.remove(&q.key, &entry) {
                evicted += 1;
            }
        }
        self.evicted.fetch_add(evicted as u64, Relaxed);
        evicted
    }

    /// Drop the slots of confirmed and deleted sessions. O(FIFO): off the request path.
    fn compact(&self) {
        lock(&self.fifo).retain(|q| q.entry.strong_count() > 0);
    }
}

impl ProvPool {
    pub(crate) fn new(all: &Arc<Provisional>) -> Arc<ProvPool> {
        Arc::new_cyclic(|me| ProvPool {
            all: all.clone(),
            me: me.clone(),
            map: DashMap::new(),
        })
    }

    /// No allocation: a `&str` lookup and `Arc` clones.
    pub(crate) fn lookup(&self, key: &str) -> Option<Hit> {
        self.map.get(key).map(|e| e.hit())
    }

    pub(crate) fn get(&self, key: &str) -> Option<Arc<ProvEntry>> {
        self.map.get(key).map(|e| e.value().clone())
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Record `key -> backend` provisionally at `now` unless the key has one;
    /// `room` is how many provisional sessions fit beside the confirmed ones.
    pub(crate) fn insert(&self, key: &str, backend: Arc<str>, now: u64, room: usize) -> Hit {
        if let Some(hit) = self.lookup(key) {
            return hit;
        }
        let all = &self.all;
        let n = all.len.fetch_add(1, Relaxed) + 1;
        if n > room && all.evict(1, POPS, now) == 0 {
            all.len.fetch_sub(1, Relaxed);
            all.unrecorded.fetch_add(1, Relaxed);
            let entry = ProvEntry {
                backend,
                since: now,
                meta: Arc::default(),
                was_live: AtomicBool::new(false),
            };
            return entry.hit();
        }
        let key: Arc<str> = key.into();
        let (hit, queued) = match self.map.entry(key.clone()) {
            Slot::Occupied(slot) => {
                all.len.fetch_sub(1, Relaxed);
                (slot.get().hit(), None)
            }
            Slot::Vacant(slot) => {
                let entry = Arc::new(ProvEntry {
                    backend,
                    since: now,
                    meta: Arc::default(),
                    was_live: AtomicBool::new(false),
                });
                let hit = entry.hit();
                let weak = Arc::downgrade(&entry);
                slot.insert(entry);
                (hit, Some(weak))
            }
        };
        // Queued after the shard lock is released (the FIFO's users take shard locks).
        if let Some(entry) = queued {
            all.created.fetch_add(1, Relaxed);
            lock(&all.fifo).push_back(Queued {
                pool: self.me.clone(),
                key,
                entry,
                due: now.saturating_add(all.ttl_ms),
            });
        }
        hit
    }

    /// `entry` became a confirmed session (its connections with it): it
    /// leaves this map.
    pub(crate) fn confirmed(&self, key: &str, entry: &Arc<ProvEntry>) {
        if self.remove_if(key, entry, false) {
            self.all.confirmed.fetch_add(1, Relaxed);
        }
    }

    /// Forget `key` (admin delete). Returns whether it was here.
    pub(crate) fn delete(&self, key: &str) -> bool {
        let removed = self.map.remove(key).is_some();
        if removed {
            self.all.len.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Remove `key` if it is still `entry` and no connection pins it.
    fn remove(&self, key: &str, entry: &Arc<ProvEntry>) -> bool {
        self.remove_if(key, entry, true)
    }

    fn remove_if(&self, key: &str, entry: &Arc<ProvEntry>, idle_only: bool) -> bool {
        let gone = self
            .map
            .remove_if(key, |_, e| {
                Arc::ptr_eq(e, entry) && !(idle_only && e.is_live())
            })
            .is_some();
        if gone {
            self.all.len.fetch_sub(1, Relaxed);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ProvPool, Provisional};
    use crate::store::LiveGuard;

    #[test]
    fn expire_after_the_ttl_unless_pinned() {
        let all = Provisional::new(Duration::from_millis(100));
        let pool = ProvPool::new(&all);
        pool.insert("idle", "a".into(), 1_000, 10);
        let pinned = pool.insert("pinned", "a".into(), 1_000, 10);
        assert!(pinned.provisional);
        let guard = LiveGuard::new(pinned.meta);
        assert_eq!(all.expire(1_099), 0, "not due yet");
        assert_eq!(all.expire(1_100), 1);
        assert!(pool.lookup("idle").is_none());
        // pinned: kept for as long as the connection is open
        for t in [1_200, 1_300, 5_000] {
            assert_eq!(all.expire(t), 0);
        }
        assert!(pool.lookup("pinned").is_some());
        drop(guard);
        // closed during the last period: one more period, then gone
        assert_eq!(all.expire(5_100), 0);
        assert_eq!(all.expire(5_200), 1);
        assert_eq!((all.len(), pool.len()), (0, 0));
        assert_eq!(all.stats().expired, 2);
    }

    #[test]
    fn full_evicts_the_oldest_and_never_a_pinned_one() {
        let all = Provisional::new(Duration::from_secs(60));
        let pool = ProvPool::new(&all);
        let first = pool.insert("k0", "a".into(), 0, 3);
        let _g = LiveGuard::new(first.meta);
        pool.insert("k1", "a".into(), 1, 3);
        pool.insert("k2", "a".into(), 2, 3);
        pool.insert("k3", "a".into(), 3, 3);
        assert!(pool.lookup("k0").is_some(), "pinned: never evicted");
        assert!(pool.lookup("k1").is_none(), "the oldest unpinned went");
        assert_eq!((all.len(), all.stats().evicted), (3, 1));
        // room for none: nothing unpinned can go for the pinned one
        let all = Provisional::new(Duration::from_secs(60));
        let pool = ProvPool::new(&all);
        let only = pool.insert("k0", "a".into(), 0, 1);
        let _g = LiveGuard::new(only.meta);
        let hit = pool.insert("k1", "b".into(), 1, 1);
        assert_eq!(&*hit.backend, "b", "still routed to its pick");
        assert!(pool.lookup("k1").is_none());
        assert_eq!(all.stats().unrecorded, 1);
    }
}
