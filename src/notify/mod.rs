//! Move notifications (`pools.NAME.notify`): tells a webhook that a drain
//! deadline is near and, after the fact, which sessions moved where.
//!
//! Data flow: the pool calls [`Notifier::drain_pending`] `before` a drain
//! deadline, which queues one event at once. The data path calls
//! [`Notifier::moved`] once per re-pinned session; it only bumps counters in a
//! std-`Mutex`ed tally (no await, no I/O), and the *flusher* task closes the
//! window [`Options::window`] after its first move, turning the tally into one
//! `moved` event per (pool, from, reason). Events are serialized into a bounded
//! queue (full: dropped and counted, never waited for) that the *sender* task
//! (`deliver`) drains, POSTing them in order with retries. Both tasks end once
//! the last clone of the [`Notifier`] is dropped, after a final flush.
//!
//! Event body (JSON): `{"event": "drain_pending"|"moved", "pool", "backend",
//! "reason": "down"|"drain"|"removed"|"failback", "deadline": unix ms|null,
//! "sessions": N, "to": {"b2": 12, ...} (moved only), "time": unix ms}`.

mod deliver;
mod event;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Webhook;
use crate::metrics::Metrics;
use crate::store::MoveReason;
use deliver::Queued;
use event::{Event, Tally};

/// Tuning of a [`Notifier`]; [`Options::default`] is what `proxy.yaml` gets.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Moves within this long of a window's first move make one event per batch.
    pub window: Duration,
    /// Events waiting for delivery; more are dropped (and counted).
    pub queue: usize,
    /// POSTs per event, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubled before each next one.
    pub backoff: Duration,
    /// Bound on one attempt: connect, send, and the status line.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            window: Duration::from_secs(1),
            queue: 1024,
            // 200 ms, 400 ms, 800 ms, 1.6 s between them: a receiver restarting
            // within ~3 s still gets the event.
            attempts: 5,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Sends one webhook's notifications. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

/// What the data path and the flusher both touch.
struct Shared {
    tally: Mutex<Tally>,
    /// Woken when a window opens, or when the last Notifier is dropped.
    wake: tokio::sync::Notify,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl Notifier {
    /// Starts the flusher and sender tasks on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn spawn(webhook: Webhook, metrics: Arc<Metrics>) -> Notifier {
        Self::spawn_with(webhook, metrics, Options::default())
    }

    /// [`Notifier::spawn`] with other timings (tests, tuning).
    pub fn spawn_with(webhook: Webhook, metrics: Arc<Metrics>, opts: Options) -> Notifier {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let shared = Arc::new(Shared {
            tally: Mutex::new(Tally::default()),
            wake: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(deliver::run(rx, webhook, metrics.clone(), opts));
        tokio::spawn(flush(
            shared.clone(),
            tx.clone(),
            metrics.clone(),
            opts.window,
        ));
        Notifier {
            inner: Arc::new(Inner {
                shared,
                tx,
                metrics,
            }),
        }
    }

    /// Announces that `backend`'s drain ends at `deadline_unix_ms`, when its
    /// `sessions` will move. Queued at once; never waits.
    pub fn drain_pending(&self, pool: &str, backend: &str, deadline_unix_ms: u64, sessions: u64) {
        let event = event::drain_pending(pool, backend, deadline_unix_ms, sessions);
        enqueue(&self.inner.tx, &self.inner.metrics, &event);
    }

    /// Counts one session moved from `from` to `to`. Called on the data path:
    /// a short critical section on a std mutex, no await, no I/O.
    pub fn moved(&self, pool: &str, from: &str, to: &str, reason: MoveReason) {
        let opened = lock(&self.inner.shared.tally).add(pool, from, to, reason);
        if opened {
            // Only the first move of a window wakes the flusher; the rest just count.
            self.inner.shared.wake.notify_one();
        }
    }
}

/// Closes each window `window` after it opened and queues its events.
async fn flush(
    shared: Arc<Shared>,
    tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
    window: Duration,
) {
    loop {
        // A wake-up sent while we were not waiting is kept as a permit, so a
        // window opened during the previous flush is not missed.
        shared.wake.notified().await;
        if !shared.closed.load(Ordering::Acquire) {
            // Moves into an open window do not wake us, so a wake-up now means
            // the last Notifier is gone: flush at once instead of at the end.
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                () = shared.wake.notified() => {}
            }
        }
        let closing = shared.closed.load(Ordering::Acquire);
        let tally = std::mem::take(&mut *lock(&shared.tally));
        for event in tally.into_events() {
            enqueue(&tx, &metrics, &event);
        }
        if closing {
            // Dropping `tx` lets the sender finish the queue and end.
            return;
        }
    }
}

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    // A panic mid-count leaves at worst one count off: keep going.
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serializes `event` into the queue; a full (or closed) queue drops it.
fn enqueue(tx: &mpsc::Sender<Queued>, metrics: &Metrics, event: &Event) {
    let body = match serde_json::to_vec(event) {
        Ok(b) => b,
        Err(error) => {
            tracing::warn!(%error, "notification not serializable");
            return;
        }
    };
    let queued = Queued {
        pool: event.pool.clone(),
        body,
    };
    if tx.try_send(queued).is_err() {
        tracing::warn!(
            pool = %event.pool,
            backend = %event.backend,
            "notification queue full: event dropped"
        );
        metrics
            .notifications
            .with_label_values(&[event.pool.as_str(), "dropped"])
            .inc();
    }
}
