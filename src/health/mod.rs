//! Active health checks (`pools.*.health`): one probe loop per backend.
//!
//! At start `first_round` probes every backend of a pool at once and tether
//! waits for it (bounded by the health timeout) before accepting, so no
//! session lands on a backend nobody has checked (pingora would start them
//! healthy). Afterwards `spawn` runs one loop per backend, each starting at a
//! random offset inside the interval and jittered by ±10% per round, so a
//! thousand backends are not probed in the same millisecond. Results go
//! through a rise/fall [`Counter`]; transitions are applied by
//! `PoolRt::mark_health`, which rebuilds the ring and closes live connections.
//!
//! Passive failures (counted by the data path) may mark a backend down between
//! probes; each loop re-reads the backend's state before counting, so such a
//! backend still needs `rise` passing probes to come back.

mod counter;
mod probe;

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

pub use counter::Counter;
pub use probe::{probe, probe_with, ProbeError};

use crate::backend::Health;
use crate::config::HealthKind;
use crate::metrics::Metrics;
use crate::pool::PoolRt;

/// Why `mark_health` is called from here (shown in its log line).
const CAUSE: &str = "active check";
/// Per-round jitter, as a fraction of the interval.
const JITTER: f64 = 0.1;
/// Slack for the first round's tasks to report once their probes are done.
const FIRST_ROUND_SLACK: Duration = Duration::from_millis(100);

/// `health_checks_total{pool,backend,result}` of one backend, resolved once.
struct Outcomes {
    pass: IntCounter,
    fail: IntCounter,
}

impl Outcomes {
    fn new(metrics: &Metrics, pool: &str, backend: &str) -> Self {
        let v = &metrics.health_checks;
        Outcomes {
            pass: v.with_label_values(&[pool, backend, "pass"]),
            fail: v.with_label_values(&[pool, backend, "fail"]),
        }
    }
}

/// Count one result and apply the transition it causes, if any.
fn apply(
    pool: &PoolRt,
    idx: usize,
    counter: &mut Counter,
    outcomes: &Outcomes,
    result: Result<(), ProbeError>,
) {
    let Some(b) = pool.backends.get(idx) else {
        return;
    };
    // The data path may have changed the state since the last probe.
    counter.sync(b.health());
    match &result {
        Ok(()) => outcomes.pass.inc(),
        Err(e) => {
            outcomes.fail.inc();
            tracing::debug!(pool = %pool.cfg.name, backend = %b.id, addr = %b.addr, error = %e, "health check failed");
        }
    }
    let Some(to) = counter.record(result.is_ok()) else {
        return;
    };
    match (&result, to) {
        (Err(e), Health::Down) => {
            tracing::warn!(pool = %pool.cfg.name, backend = %b.id, addr = %b.addr, error = %e, "health check: marking backend down")
        }
        _ => {
            tracing::info!(pool = %pool.cfg.name, backend = %b.id, addr = %b.addr, state = to.as_str(), "health check: marking backend")
        }
    }
    pool.mark_health(idx, to, CAUSE);
}

/// Probe every backend of `pool` once, concurrently, and apply the results.
/// Returns within the health timeout (plus a little slack); a backend whose
/// result is not in by then stays as it was (`unknown`: no new sessions).
pub async fn first_round(pool: &PoolRt, metrics: &Metrics) {
    let h = &pool.cfg.health;
    if matches!(h.kind, HealthKind::None) {
        return;
    }
    // Spawned, not joined in place, so a thousand probes use every core.
    let kind = Arc::new(h.kind.clone());
    let mut probes = JoinSet::new();
    for (idx, b) in pool.backends.iter().enumerate() {
        let (kind, addr, timeout) = (kind.clone(), b.addr, h.timeout);
        let tls = pool.cfg.tls.clone();
        probes.spawn(async move { (idx, probe_with(&kind, addr, timeout, tls.as_ref()).await) });
    }
    let collect = async {
        while let Some(joined) = probes.join_next().await {
            let Ok((idx, result)) = joined else { continue };
            let Some(b) = pool.backends.get(idx) else {
                continue;
            };
            let outcomes = Outcomes::new(metrics, &pool.cfg.name, &b.id);
            let mut counter = Counter::new(h.rise, h.fall, b.health());
            apply(pool, idx, &mut counter, &outcomes, result);
        }
    };
    if tokio::time::timeout(h.timeout + FIRST_ROUND_SLACK, collect)
        .await
        .is_err()
    {
        // Dropping the JoinSet aborts the stragglers.
        tracing::warn!(pool = %pool.cfg.name, "first health check round did not finish in time");
    }
}

/// Run the active checks of `pool` until the returned handle is aborted
/// (which stops every per-backend loop). Nothing to do for `kind: none`.
pub fn spawn(pool: Arc<PoolRt>, metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        if matches!(pool.cfg.health.kind, HealthKind::None) {
            return;
        }
        // Owned here: aborting this task drops the set, which aborts every loop.
        let mut loops = JoinSet::new();
        for idx in 0..pool.backends.len() {
            loops.spawn(watch(pool.clone(), metrics.clone(), idx));
        }
        while let Some(done) = loops.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    tracing::error!(pool = %pool.cfg.name, "health check loop panicked: {e}");
                }
            }
        }
    })
}

/// One backend's probe loop.
async fn watch(pool: Arc<PoolRt>, metrics: Arc<Metrics>, idx: usize) {
    let Some(b) = pool.backends.get(idx).cloned() else {
        return;
    };
    let h = &pool.cfg.health;
    let outcomes = Outcomes::new(&metrics, &pool.cfg.name, &b.id);
    let mut counter = Counter::new(h.rise, h.fall, b.health());
    let mut next = Instant::now() + h.interval.mul_f64(rand::random::<f64>());
    loop {
        tokio::time::sleep_until(next).await;
        // Start to start, so the probe's own duration does not stretch the period.
        next += jittered(h.interval);
        let result = probe_with(&h.kind, b.addr, h.timeout, pool.cfg.tls.as_ref()).await;
        apply(&pool, idx, &mut counter, &outcomes, result);
        // After a stall (suspended process, overloaded runtime) do not burst to catch up.
        next = next.max(Instant::now());
    }
}

/// `interval` ±10%, so loops that started together drift apart.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 - JITTER + 2.0 * JITTER * rand::random::<f64>())
}

/// The share of new sessions a backend takes `since_up` after it came up,
/// in [0, 1]: a linear ramp over `slowstart`, then 1. Also 1 when slow start
/// is off (zero) or the backend has no recorded transition (`None`).
pub fn slowstart_ramp(since_up: Option<Duration>, slowstart: Duration) -> f64 {
    match since_up {
        Some(elapsed) if elapsed < slowstart => elapsed.as_secs_f64() / slowstart.as_secs_f64(),
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests;
