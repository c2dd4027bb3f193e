//! Background upkeep of the embedded store: the coarse clock, idle expiry,
//! `last_seen` persistence, provisional expiry, and eviction under `max_sessions`.
//!
//! The maintenance task holds only a `Weak` to the store and ends once it is
//! gone. Every `CLOCK_TICK` it refreshes the clock that hits stamp into
//! `last_seen` and, when there is work (O(1) to tell), runs [`Shared::upkeep`]
//! on a blocking thread: provisional sessions that are due, room the inserts
//! could not make. Every ttl/10 (bounded) it runs [`Shared::sweep`] there too,
//! since a pass visits every session.
//!
//! Eviction runs inline in the insert that overflows, without a scan: a
//! provisional session first, else the least recently used idle one, looking at
//! `POPS` queue slots at most (`lru.rs`). So `max_sessions` holds exactly,
//! except when those slots are all busy or recently used: then the store is over
//! by the inserts of at most one tick (100 ms) until the upkeep, which looks
//! further. Sessions with live connections are never evicted, so more of them
//! than `max_sessions` keep the store above it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Weak;
use std::time::Duration;

use super::Shared;
use crate::store::now_ms;
use crate::store::provisional::POPS;

/// How stale the clock stamped into `last_seen` may get.
const CLOCK_TICK: Duration = Duration::from_millis(100);
/// Bounds on the pause between sweeps (ttl/10 in between).
const SWEEP_MIN: Duration = Duration::from_millis(100);
const SWEEP_MAX: Duration = Duration::from_secs(30);

pub(super) async fn maintain(store: Weak<Shared>) {
    let every = match store.upgrade() {
        Some(s) => Duration::from_millis(s.ttl_ms / 10).clamp(SWEEP_MIN, SWEEP_MAX),
        None => return,
    };
    let mut tick = tokio::time::interval(CLOCK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sweep = tokio::time::Instant::now() + every;
    loop {
        tick.tick().await;
        let Some(shared) = store.upgrade() else {
            return;
        };
        let now = now_ms();
        shared.clock.store(now, Relaxed);
        let sweep = tokio::time::Instant::now() >= next_sweep;
        if sweep {
            next_sweep += every;
        }
        if sweep || shared.needs_upkeep(now) {
            // A sweep is O(sessions), an upkeep O(work): off the async workers.
            let done = tokio::task::spawn_blocking(move || {
                if sweep {
                    shared.sweep();
                }
                shared.upkeep(now);
            })
            .await;
            if let Err(e) = done {
                tracing::error!(error = %e, "store: maintenance failed");
            }
        }
    }
}

impl Shared {
    /// One maintenance pass: expire sessions idle for longer than the ttl, refresh
    /// `last_seen` of sessions with live connections (they are not idle), and queue
    /// touches for `last_seen` values that moved by a tenth of the ttl. Returns how
    /// many sessions expired.
    pub(super) fn sweep(&self) -> usize {
        let now = now_ms();
        self.clock.fetch_max(now, Relaxed);
        let cutoff = now.saturating_sub(self.ttl_ms);
        let touch_step = (self.ttl_ms / 10).max(1);
        let mut expired = 0;
        for pool in self.pool_list() {
            let mut idle = Vec::new();
            for item in pool.map.iter() {
                let entry = item.value();
                if !entry.is_idle() {
                    entry.last_seen.fetch_max(now, Relaxed);
                } else if entry.last_seen.load(Relaxed) < cutoff {
                    idle.push(item.key().clone());
                    continue;
                }
                self.touch(&pool.name, item.key(), entry, touch_step);
            }
            for key in idle {
                // Re-checked under the shard lock: a hit since the scan keeps the key.
                let still_idle =
                    |e: &super::pool::Entry| e.is_idle() && e.last_seen.load(Relaxed) < cutoff;
                if pool.remove_if(self, &key, still_idle) {
                    expired += 1;
                }
            }
        }
        self.expirations.fetch_add(expired as u64, Relaxed);
        expired
    }

    /// Queue a touch for every session whose `last_seen` is `step` ms or more ahead
    /// of what the journal has.
    pub(super) fn queue_touches(&self, step: u64) {
        if self.journal.is_none() {
            return;
        }
        for pool in self.pool_list() {
            for item in pool.map.iter() {
                self.touch(&pool.name, item.key(), item.value(), step);
            }
        }
    }

    fn touch(&self, pool: &std::sync::Arc<str>, key: &str, entry: &super::pool::Entry, step: u64) {
        let Some(journal) = &self.journal else {
            return;
        };
        let seen = entry.last_seen.load(Relaxed);
        // Sent while the iteration holds the shard read lock, so a delete of the
        // key (which needs the write lock) is logged after this touch, not before.
        if seen >= entry.persisted_seen.load(Relaxed).saturating_add(step) {
            entry.persisted_seen.store(seen, Relaxed);
            journal.touch(pool, key, seen);
        }
    }

    /// Sessions over `max_sessions`, provisional ones included.
    fn over(&self) -> usize {
        (self.total.load(Relaxed) + self.prov.len()).saturating_sub(self.max_sessions)
    }

    /// Whether [`Self::upkeep`] has anything to do (O(1)).
    pub(super) fn needs_upkeep(&self, now: u64) -> bool {
        self.prov.needs_upkeep(now)
            || self.over() > 0
            || self.lru.len() > 2 * self.total.load(Relaxed) + 1024
    }

    /// Expire due provisional sessions, make the room inserts could not, and
    /// drop the eviction queue's dead slots once they outnumber the live ones.
    pub(super) fn upkeep(&self, now: u64) {
        self.prov.expire(now);
        let over = self.over();
        if over > 0 {
            self.make_room(over, over.saturating_mul(16).saturating_add(1024));
        }
        if self.lru.len() > 2 * self.total.load(Relaxed) + 1024 {
            self.lru.compact();
        }
    }

    /// Claim a slot for a new confirmed session, evicting first if the store is
    /// full. `discount`: sessions leaving with this insert.
    pub(super) fn reserve(&self, discount: usize) {
        let total = self.total.fetch_add(1, Relaxed) + 1;
        let over = (total + self.prov.len()).saturating_sub(self.max_sessions + discount);
        if over > 0 {
            self.make_room(over, POPS);
        }
    }

    /// Evict `want` sessions: provisional ones first, then the least recently
    /// used idle confirmed ones; `pops` bounds the queue slots looked at in each.
    fn make_room(&self, want: usize, pops: usize) {
        let freed = self.prov.evict(want, pops, now_ms());
        if freed < want {
            self.evict(want - freed, pops);
        }
    }

    /// Evict up to `want` idle confirmed sessions, least recently used first,
    /// across all pools. Sessions with live connections are never evicted, so
    /// the store can stay above `max_sessions` while they are all busy. Returns
    /// how many were evicted.
    pub(super) fn evict(&self, want: usize, pops: usize) -> usize {
        let evicted = self.lru.evict(self, want, pops);
        self.evictions.fetch_add(evicted as u64, Relaxed);
        evicted
    }
}
