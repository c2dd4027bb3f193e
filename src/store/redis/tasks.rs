//! The store's background tasks, spawned by `RedisStore::open` on the current
//! tokio runtime. Each holds the store weakly and ends when it is dropped (the
//! stop channel's sender lives in the store, so its closing wakes them).
//!
//! - `keep_connected`: while Down, reconnects every 250 ms (each attempt bounded
//!   by `connect_timeout`) and replays the queue (`sync.rs`); while Up, pings
//!   every second so that an idle instance notices an outage too, and sends
//!   writes queued by calls that raced with the reconnect.
//! - `maintain`: the coarse clock hits stamp (every 100 ms), the cache's bound
//!   and provisional expiry when they have work (`cache.rs`, on a blocking
//!   thread), and, every `session_ttl`/10 (100 ms..30 s), the cache sweep of
//!   `refresh.rs`.
//! - the subscriber of `events.rs`.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::link::State;
use super::{events, refresh, sync, Shared};
use crate::store::{now_ms, StoreError};

const RECONNECT_EVERY: Duration = Duration::from_millis(250);
const PING_EVERY: Duration = Duration::from_secs(1);
const CLOCK_TICK: Duration = Duration::from_millis(100);
const SWEEP_MIN: Duration = Duration::from_millis(100);
const SWEEP_MAX: Duration = Duration::from_secs(30);

pub(super) fn spawn(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    tokio::spawn(keep_connected(weak.clone(), shared.stop.subscribe()));
    tokio::spawn(maintain(weak.clone(), shared.stop.subscribe()));
    tokio::spawn(events::subscriber(weak, shared.stop.subscribe()));
}

async fn keep_connected(weak: Weak<Shared>, mut stop: watch::Receiver<bool>) {
    // Logged once per outage, not every attempt.
    let mut reported = false;
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let wait = match shared.link.state() {
            State::Down => {
                match shared.link.connect().await {
                    Ok(()) => {
                        reported = false;
                        // Set before Up: the subscriber revalidates (and writes back)
                        // once it has subscribed again, which it does once Up.
                        shared.pending_write_back.store(true, SeqCst);
                        shared.link.set_state(State::Syncing);
                        sync::replay(&shared).await;
                        super::policy::warn_if_evicting(&shared.link).await;
                    }
                    Err(StoreError::Config(message)) if !reported => {
                        reported = true;
                        tracing::error!(error = message, "redis store: cannot reconnect");
                    }
                    Err(e) => tracing::debug!(error = %e, "redis store: reconnect failed"),
                }
                RECONNECT_EVERY
            }
            State::Syncing => {
                sync::replay(&shared).await;
                RECONNECT_EVERY
            }
            State::Up if shared.queue.len() > 0 => {
                // Writes that raced with the end of the last replay.
                sync::replay(&shared).await;
                PING_EVERY
            }
            State::Up => {
                // A failure marks the link down by itself.
                let _ = (shared.link)
                    .call("ping", |mut c| async move {
                        redis::cmd("PING").query_async::<String>(&mut c).await
                    })
                    .await;
                PING_EVERY
            }
        };
        let kicked = shared.kick.notified();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = kicked => {},
            _ = stop.changed() => return,
        }
    }
}

async fn maintain(weak: Weak<Shared>, mut stop: watch::Receiver<bool>) {
    let every = match weak.upgrade() {
        Some(s) => Duration::from_millis(s.ttl_ms / 10).clamp(SWEEP_MIN, SWEEP_MAX),
        None => return,
    };
    let mut tick = tokio::time::interval(CLOCK_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sweep = tokio::time::Instant::now() + every;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = stop.changed() => return,
        }
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let now = now_ms();
        shared.clock.store(now, Relaxed);
        if shared.budget.needs_upkeep(now) {
            let budget = shared.budget.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || budget.upkeep(now)).await {
                tracing::error!(error = %e, "redis store: upkeep failed");
            }
        }
        if tokio::time::Instant::now() >= next_sweep {
            next_sweep = tokio::time::Instant::now() + every;
            refresh::sweep(&shared).await;
        }
    }
}
