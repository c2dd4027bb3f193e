//! Picking eviction victims without scanning: a second-chance FIFO shared by
//! both stores (the embedded map, the Redis cache).
//!
//! Every confirmed session is queued once, when it enters the map, with the
//! `last_seen` it had then (its stamp). Hits never touch the queue: they only
//! stamp `last_seen` in the entry. Eviction pops the front: an entry seen since
//! it was queued, or busy (a live connection, a Redis record not written yet),
//! goes to the back with its new stamp; one that was not is the least recently
//! used and is removed (re-checked under its shard lock). Each pop is O(1), and
//! an entry is requeued at most once per hit or per trip through the queue, so
//! eviction costs O(1) amortized per insert and never scans the table. Removed
//! entries leave dead slots (a `Weak` that no longer upgrades) that are skipped
//! when popped and dropped in bulk by [`Lru::compact`] off the request path.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// A pool map the queue can evict from.
pub(crate) trait Evict: Send + Sync + 'static {
    type Entry: Send + Sync + 'static;
    /// What removing a session needs besides the map (the store's counters).
    type Ctx: ?Sized;

    /// The entry's `last_seen`, and whether it may be evicted at all now.
    fn state(entry: &Self::Entry) -> (u64, bool);

    /// Remove `key` if it still maps to `entry`, may be evicted and was not seen
    /// after `stamp` (checked under the key's shard lock).
    fn evict(&self, ctx: &Self::Ctx, key: &str, entry: &Arc<Self::Entry>, stamp: u64) -> Outcome;
}

/// What [`Evict::evict`] did.
pub(crate) enum Outcome {
    Evicted,
    /// Still in the map and wanted (seen or busy since the check): queue again.
    Kept,
    /// No longer in the map: forget the slot.
    Gone,
}

struct Slot<P: Evict> {
    pool: Weak<P>,
    key: Arc<str>,
    entry: Weak<P::Entry>,
    stamp: u64,
}

pub(crate) struct Lru<P: Evict> {
    queue: Mutex<VecDeque<Slot<P>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The queue is consistent after any panic (each change is one push or pop).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: Evict> Default for Lru<P> {
    fn default() -> Self {
        Lru {
            queue: Mutex::new(VecDeque::new()),
        }
    }
}

impl<P: Evict> Lru<P> {
    /// Queue a session that just entered `pool` (call without holding its shard lock).
    pub(crate) fn push(&self, pool: &Arc<P>, key: Arc<str>, entry: &Arc<P::Entry>) {
        let stamp = P::state(entry).0;
        lock(&self.queue).push_back(Slot {
            pool: Arc::downgrade(pool),
            key,
            entry: Arc::downgrade(entry),
            stamp,
        });
    }

    /// Evict up to `want` sessions, least recently used first, looking at no
    /// more than `pops` slots. Returns how many were evicted.
    pub(crate) fn evict(&self, ctx: &P::Ctx, want: usize, pops: usize) -> usize {
        let mut evicted = 0;
        for _ in 0..pops {
            if evicted == want {
                break;
            }
            let Some(mut slot) = lock(&self.queue).pop_front() else {
                break;
            };
            let (Some(pool), Some(entry)) = (slot.pool.upgrade(), slot.entry.upgrade()) else {
                continue;
            };
            let (seen, evictable) = P::state(&entry);
            let outcome = if evictable && seen <= slot.stamp {
                pool.evict(ctx, &slot.key, &entry, slot.stamp)
            } else {
                Outcome::Kept
            };
            match outcome {
                Outcome::Evicted => evicted += 1,
                Outcome::Gone => {}
                Outcome::Kept => {
                    // Round again, stamped with what it has now: a candidate once
                    // it is idle and unseen for a whole trip.
                    slot.stamp = P::state(&entry).0;
                    lock(&self.queue).push_back(slot);
                }
            }
        }
        evicted
    }

    /// Slots queued, dead ones included.
    pub(crate) fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Drop the slots of removed sessions. O(queue): run it off the request path.
    pub(crate) fn compact(&self) {
        // Taken out so that inserts are not held up during the pass.
        let old = std::mem::take(&mut *lock(&self.queue));
        let live: VecDeque<Slot<P>> = old
            .into_iter()
            .filter(|s| s.entry.strong_count() > 0 && s.pool.strong_count() > 0)
            .collect();
        let mut queue = lock(&self.queue);
        // Pushed meanwhile: newer than every kept slot, so they stay behind them.
        let newer = std::mem::replace(&mut *queue, live);
        queue.extend(newer);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};

    use super::{Evict, Lru, Outcome};

    struct E {
        seen: AtomicU64,
        busy: AtomicBool,
    }

    #[derive(Default)]
    struct Map(Mutex<HashMap<String, Arc<E>>>);

    impl Evict for Map {
        type Entry = E;
        type Ctx = ();
        fn state(e: &E) -> (u64, bool) {
            (e.seen.load(Relaxed), !e.busy.load(Relaxed))
        }
        fn evict(&self, _: &(), key: &str, entry: &Arc<E>, stamp: u64) -> Outcome {
            let mut m = self.0.lock().unwrap();
            match m.get(key) {
                Some(e) if !Arc::ptr_eq(e, entry) => Outcome::Gone,
                Some(e) if e.seen.load(Relaxed) <= stamp && !e.busy.load(Relaxed) => {
                    m.remove(key);
                    Outcome::Evicted
                }
                Some(_) => Outcome::Kept,
                None => Outcome::Gone,
            }
        }
    }

    fn add(lru: &Lru<Map>, map: &Arc<Map>, key: &str, seen: u64) -> Arc<E> {
        let e = Arc::new(E {
            seen: AtomicU64::new(seen),
            busy: AtomicBool::new(false),
        });
        map.0.lock().unwrap().insert(key.into(), e.clone());
        lru.push(map, key.into(), &e);
        e
    }

    fn keys(map: &Map) -> Vec<String> {
        let mut k: Vec<String> = map.0.lock().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn evicts_the_least_recently_used_and_spares_busy_ones() {
        let (lru, map) = (Lru::default(), Arc::new(Map::default()));
        let a = add(&lru, &map, "a", 1);
        let b = add(&lru, &map, "b", 2);
        add(&lru, &map, "c", 3);
        add(&lru, &map, "d", 4);
        a.seen.store(10, Relaxed); // a hit: a is now the most recent
        b.busy.store(true, Relaxed); // a live connection
        assert_eq!(lru.evict(&(), 1, 8), 1);
        assert_eq!(keys(&map), ["a", "b", "d"]);
        assert_eq!(lru.evict(&(), 1, 8), 1);
        assert_eq!(keys(&map), ["a", "b"]);
        // b is busy, a was requeued behind it: a goes, b stays
        assert_eq!(lru.evict(&(), 2, 8), 1);
        assert_eq!(keys(&map), ["b"]);
        b.busy.store(false, Relaxed);
        assert_eq!(lru.evict(&(), 1, 8), 1);
        assert!(keys(&map).is_empty());
    }

    #[test]
    fn pops_are_bounded_and_dead_slots_are_compacted() {
        let (lru, map) = (Lru::default(), Arc::new(Map::default()));
        let busy: Vec<_> = (0..100)
            .map(|i| add(&lru, &map, &format!("k{i:03}"), i))
            .collect();
        for e in &busy {
            e.busy.store(true, Relaxed);
        }
        assert_eq!(lru.evict(&(), 1, 10), 0, "all busy: gives up after 10 pops");
        assert_eq!(lru.len(), 100);
        map.0.lock().unwrap().clear();
        drop(busy);
        lru.compact();
        assert_eq!(lru.len(), 0);
    }
}
