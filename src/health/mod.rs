//! Active health checks (`pools.*.health`): one probe loop per backend.
//!
//! At start `first_round` probes every backend of a pool at once and tether
//! waits for it (bounded by the health timeout) before accepting, so no
//! session lands on a backend nobody has checked (pingora would start them
//! healthy). Afterwards [`Checks`] runs one loop per backend, each starting at a
//! random offset inside the interval and jittered by ±10% per round, so a
//! thousand backends are not probed in the same millisecond. Results go
//! through a rise/fall [`Counter`]; transitions are applied by
//! `PoolRt::mark_health`, which rebuilds the ring and closes live connections.
//!
//! Passive failures (counted by the data path) may mark a backend down between
//! probes; each loop re-reads the backend's state before counting, so such a
//! backend still needs `rise` passing probes to come back.

mod counter;
mod grpc;
mod probe;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use counter::Counter;
pub use probe::{probe, probe_with, ProbeError};

use crate::backend::{BackendRt, Health};
use crate::config::{self, HealthKind};
use crate::metrics::Metrics;
use crate::pool::PoolRt;
use crate::tls::AbortOnDrop;

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
    b: &Arc<BackendRt>,
    counter: &mut Counter,
    outcomes: &Outcomes,
    result: Result<(), ProbeError>,
) {
    // The data path may have changed the state since the last probe.
    counter.sync(b.health());
    match &result {
        Ok(()) => {
            outcomes.pass.inc();
            b.record_check(true, String::new());
        }
        Err(e) => {
            outcomes.fail.inc();
            b.record_check(false, e.to_string());
            tracing::debug!(pool = %pool.name, backend = %b.id, addr = ?b.addr(), error = %e, "health check failed");
        }
    }
    let Some(to) = counter.record(result.is_ok()) else {
        return;
    };
    match (&result, to) {
        (Err(e), Health::Down) => {
            tracing::warn!(pool = %pool.name, backend = %b.id, addr = ?b.addr(), error = %e, "health check: marking backend down")
        }
        _ => {
            tracing::info!(pool = %pool.name, backend = %b.id, addr = ?b.addr(), state = to.as_str(), "health check: marking backend")
        }
    }
    pool.mark_health(b, to, CAUSE);
}

/// One probe of `b` as `h` says; a host name that never resolved fails.
async fn probe_backend(
    h: &config::Health,
    b: &BackendRt,
    tls: Option<&config::PoolTls>,
) -> Result<(), ProbeError> {
    match b.addr() {
        Some(addr) => probe_with(&h.kind, addr, h.timeout, tls).await,
        None => Err(ProbeError::Unresolved),
    }
}

/// Probe every backend of `pool` once, concurrently, and apply the results.
/// Returns within the health timeout (plus a little slack); a backend whose
/// result is not in by then stays as it was (`unknown`: no new sessions).
pub async fn first_round(pool: &Arc<PoolRt>, metrics: &Metrics) {
    let cfg = pool.cfg();
    let h = &cfg.health;
    if matches!(h.kind, HealthKind::None) {
        return;
    }
    // Spawned, not joined in place, so a thousand probes use every core.
    let mut probes = JoinSet::new();
    for b in pool.view().backends.iter() {
        let (b, cfg) = (b.clone(), cfg.clone());
        probes.spawn(async move {
            let r = probe_backend(&cfg.health, &b, cfg.tls.as_ref()).await;
            (b, r)
        });
    }
    let collect = async {
        while let Some(joined) = probes.join_next().await {
            let Ok((b, result)) = joined else { continue };
            let outcomes = Outcomes::new(metrics, &pool.name, &b.id);
            let mut counter = Counter::new(h.rise, h.fall, b.health());
            apply(pool, &b, &mut counter, &outcomes, result);
        }
    };
    if tokio::time::timeout(h.timeout + FIRST_ROUND_SLACK, collect)
        .await
        .is_err()
    {
        // Dropping the JoinSet aborts the stragglers.
        tracing::warn!(pool = %pool.name, "first health check round did not finish in time");
    }
}

/// The probe loops of one pool, one per backend in its view. `sync` after
/// every change of membership (reload, a removed backend drained out) starts
/// loops for new backends and stops those of backends gone from the view;
/// the loops themselves re-read the pool's health settings every round.
pub struct Checks {
    pool: Arc<PoolRt>,
    metrics: Arc<Metrics>,
    loops: Mutex<Vec<(Arc<BackendRt>, AbortOnDrop)>>,
}

impl Checks {
    /// Loops for every backend of `pool`, each starting at a random offset
    /// inside the interval (the first round has just been done).
    pub fn start(pool: Arc<PoolRt>, metrics: Arc<Metrics>) -> Arc<Checks> {
        let c = Arc::new(Checks {
            pool,
            metrics,
            loops: Mutex::new(Vec::new()),
        });
        c.sync(false);
        c
    }

    /// Match the loops to the pool's current backends. Backends new since the
    /// last sync are probed at once when `now` (a reload added them: they take
    /// no session before their first check passes).
    pub fn sync(&self, now: bool) {
        let v = self.pool.view();
        let mut loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        loops.retain(|(b, _)| v.index_of(b).is_some());
        for b in v.backends.iter() {
            if loops.iter().any(|(x, _)| Arc::ptr_eq(x, b)) {
                continue;
            }
            let task = tokio::spawn(watch(
                self.pool.clone(),
                self.metrics.clone(),
                b.clone(),
                now,
            ));
            loops.push((b.clone(), AbortOnDrop(task)));
        }
    }
}

/// One backend's probe loop; ends when the backend leaves the pool's view.
async fn watch(pool: Arc<PoolRt>, metrics: Arc<Metrics>, b: Arc<BackendRt>, now: bool) {
    let outcomes = Outcomes::new(&metrics, &pool.name, &b.id);
    let h = pool.cfg().health.clone();
    let mut rise_fall = (h.rise, h.fall);
    let mut counter = Counter::new(h.rise, h.fall, b.health());
    let first = if now {
        Duration::ZERO
    } else {
        h.interval.mul_f64(rand::random::<f64>())
    };
    let mut next = Instant::now() + first;
    loop {
        tokio::time::sleep_until(next).await;
        let cfg = pool.cfg();
        let h = &cfg.health;
        // Start to start, so the probe's own duration does not stretch the period.
        next += jittered(h.interval);
        if pool.view().index_of(&b).is_none() {
            return;
        }
        if matches!(h.kind, HealthKind::None) {
            continue;
        }
        if rise_fall != (h.rise, h.fall) {
            rise_fall = (h.rise, h.fall);
            counter = Counter::new(h.rise, h.fall, b.health());
        }
        let result = probe_backend(h, &b, cfg.tls.as_ref()).await;
        apply(&pool, &b, &mut counter, &outcomes, result);
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
