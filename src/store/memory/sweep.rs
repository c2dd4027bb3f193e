//! Background upkeep of the embedded store: the coarse clock, idle expiry,
//! `last_seen` persistence, and LRU eviction under `max_sessions`.
//!
//! The maintenance task holds only a `Weak` to the store and ends once it is
//! gone. Every `CLOCK_TICK` it refreshes the clock that hits stamp into
//! `last_seen`; every ttl/10 (bounded) it runs [`Shared::sweep`] on a blocking
//! thread, since a pass visits every session. Eviction runs inline in the insert
//! that overflows, and frees a batch (1% of `max_sessions`) so that the scan is
//! paid once per many inserts.

use crate::store::lru::Oldest;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Weak;
use std::time::Duration;

use super::Shared;
use crate::store::now_ms;

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
        shared.clock.store(now_ms(), Relaxed);
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep += every;
            // A pass is O(sessions): keep it off the async workers.
            let swept = tokio::task::spawn_blocking(move || shared.sweep()).await;
            if let Err(e) = swept {
                tracing::error!(error = %e, "store: sweep failed");
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

    /// Claim a slot for a new session, evicting first if the store is full.
    pub(super) fn reserve(&self) {
        let total = self.total.fetch_add(1, Relaxed) + 1;
        if total <= self.max_sessions || self.evicting.swap(true, Acquire) {
            return;
        }
        // Free the overflow plus a batch, so the next 1% of inserts need no scan.
        let batch = (self.max_sessions / 100).max(1);
        self.evict(total - self.max_sessions + batch - 1);
        self.evicting.store(false, Release);
    }

    /// Evict up to `want` idle sessions, least recently seen first, across all pools.
    /// Sessions with live connections are never evicted, so the store can stay above
    /// `max_sessions` while they are all busy. Returns how many were evicted.
    pub(super) fn evict(&self, want: usize) -> usize {
        if want == 0 {
            return 0;
        }
        let pools = self.pool_list();
        // Max-heap on last_seen holding the `want` oldest idle sessions seen so far;
        // a key is copied only when it enters the heap.
        let mut oldest = Oldest::new(want);
        for (i, pool) in pools.iter().enumerate() {
            for item in pool.map.iter() {
                if item.value().is_idle() {
                    oldest.offer(item.value().last_seen.load(Relaxed), i, item.key());
                }
            }
        }
        let mut evicted = 0;
        for (seen, i, key) in oldest.into_vec() {
            // Re-checked under the shard lock: used since the scan means not evicted.
            let unused = |e: &super::pool::Entry| e.is_idle() && e.last_seen.load(Relaxed) <= seen;
            if pools[i].remove_if(self, &key, unused) {
                evicted += 1;
            }
        }
        self.evictions.fetch_add(evicted as u64, Relaxed);
        evicted
    }
}
