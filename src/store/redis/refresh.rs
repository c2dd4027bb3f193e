//! The cache sweep: session lifetimes in the cache and TTL refreshes in Redis,
//! all off the data path (a hit only stamps `last_seen` in memory).
//!
//! One pass (every `session_ttl`/10, see `tasks.rs`) scans the cache on a
//! blocking thread: sessions with live connections count as seen now (they are
//! never idle); idle ones unseen for `session_ttl` leave the cache (Redis expires
//! them by itself). (Eviction under `max_sessions` needs no scan: `cache.rs`.)
//! Sessions whose `last_seen` moved by `session_ttl`/10 since
//! their last refresh are then refreshed in Redis with pipelined `TOUCH` scripts,
//! so a busy session costs at most one Redis write per tenth of its TTL. A touch
//! also returns the current record, which heals a cache that missed a message.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::cache::{Apply, PoolCache};
use super::{scripts, Shared};
use crate::store::now_ms;

/// Keys per pipelined round trip.
const BATCH: usize = 256;

/// A session to refresh: its cache, key, the `last_seen` to write and the
/// version it had when scanned.
type Touch = (Arc<PoolCache>, Arc<str>, u64, u64);

pub(super) async fn sweep(shared: &Arc<Shared>) {
    let scan = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || shared.scan()).await
    };
    let touches = match scan {
        Ok(touches) => touches,
        Err(e) => {
            tracing::error!(error = %e, "redis store: sweep failed");
            return;
        }
    };
    if !shared.link.is_up() {
        // `pushed` is unchanged: they are picked again by the next pass.
        return;
    }
    for chunk in touches.chunks(BATCH) {
        if !shared.touch(chunk).await {
            return;
        }
    }
}

impl Shared {
    /// Expire, and list what needs a refresh.
    fn scan(&self) -> Vec<Touch> {
        let now = now_ms();
        self.clock.fetch_max(now, Relaxed);
        let cutoff = now.saturating_sub(self.ttl_ms);
        let step = (self.ttl_ms / 10).max(1);
        let mut touches = Vec::new();
        let mut expired = 0;
        for cache in self.pool_list() {
            let mut idle = Vec::new();
            for item in cache.map.iter() {
                let entry = item.value();
                if !entry.is_idle() {
                    entry.last_seen.fetch_max(now, Relaxed);
                } else if entry.last_seen.load(Relaxed) < cutoff {
                    idle.push(item.key().clone());
                    continue;
                }
                let seen = entry.last_seen.load(Relaxed);
                let record = entry.record();
                // Local records are written by the replay, not refreshed.
                if !record.local && seen >= entry.pushed.load(Relaxed).saturating_add(step) {
                    touches.push((cache.clone(), item.key().clone(), seen, record.ver));
                }
            }
            for key in idle {
                // Re-checked under the shard lock: a hit since the scan keeps the key.
                let still_idle =
                    |e: &super::cache::Entry| e.is_idle() && e.last_seen.load(Relaxed) < cutoff;
                if cache.remove_if(&key, still_idle) {
                    expired += 1;
                }
            }
        }
        self.expirations.fetch_add(expired, Relaxed);
        touches
    }

    /// Refresh one batch; returns false if Redis did not answer.
    async fn touch(&self, batch: &[Touch]) -> bool {
        let ttl = self.ttl_ms;
        let mut pipe = redis::pipe();
        for (cache, key, seen, _) in batch {
            let mut inv = scripts::TOUCH.prepare_invoke();
            inv.key(self.keys.session(&cache.name, key))
                .arg(*seen)
                .arg(ttl);
            pipe.invoke_script(&inv);
        }
        let Ok(replies) = self.pipeline("touch", pipe).await else {
            return false;
        };
        for ((cache, key, seen, ver), reply) in batch.iter().zip(&replies) {
            let stored = scripts::outcome(reply)
                .and_then(|(_, body)| body)
                .and_then(scripts::parse_stored);
            match stored {
                Some(s) => {
                    cache.apply(key, s.v, &s.session, Apply::IfCached);
                    if let Some(entry) = cache.get(key) {
                        entry.pushed.fetch_max(*seen, Relaxed);
                    }
                }
                // Gone from Redis (deleted elsewhere, or evicted by Redis itself).
                None => {
                    cache.remove_if(key, |e| {
                        let r = e.record();
                        !r.local && r.ver <= *ver
                    });
                }
            }
        }
        true
    }
}
