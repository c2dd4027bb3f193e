//! Tests of the Redis store against real `redis-server` processes, each on a
//! free port in a temporary directory (`server.rs`), never a mock.
//! `shared.rs`: several instances on one Redis; `outage.rs`: Redis killed,
//! restarted empty or stalled; `lifetime.rs`: TTL refresh, expiry, bad settings;
//! `provisional.rs`: sessions of inserted cookies that have not come back;
//! `versions.rs`: per-key versions beside records of earlier releases.

mod lease;
mod lifetime;
mod outage;
mod provisional;
mod server;
mod shared;
mod versions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RedisStore;
use crate::config::{RedisConfig, Store as StoreConfig, StoreKind};
use crate::metrics::Metrics;
pub(super) use server::RedisServer;

/// The outage tests' bound (the default of `command_timeout`).
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);

/// Settings for tests that are not about timeouts: loose enough that a loaded
/// machine (tests run in parallel on few cores) does not look like an outage.
pub(super) fn redis_config(port: u16) -> RedisConfig {
    RedisConfig {
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        ..strict_config(port)
    }
}

/// Settings for the outage tests, with the default `command_timeout`.
pub(super) fn strict_config(port: u16) -> RedisConfig {
    RedisConfig {
        tls: false,
        ca: None,
        host: "127.0.0.1".into(),
        port,
        db: 0,
        username: None,
        password: None,
        prefix: "tt".into(),
        connect_timeout: Duration::from_millis(300),
        command_timeout: COMMAND_TIMEOUT,
        sentinel: None,
        cluster: None,
    }
}

pub(super) fn config(redis: RedisConfig, ttl: Duration) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Redis(redis),
        session_ttl: ttl,
        provisional_ttl: Duration::from_secs(120),
        max_sessions: 100_000,
    }
}

/// One tether instance on the Redis at `port`.
pub(super) async fn instance(port: u16) -> (Arc<RedisStore>, Arc<Metrics>) {
    instance_with(config(redis_config(port), Duration::from_secs(60)), 1000).await
}

/// One tether instance with the default timeouts (200 ms per command).
pub(super) async fn strict(port: u16) -> (Arc<RedisStore>, Arc<Metrics>) {
    instance_with(config(strict_config(port), Duration::from_secs(60)), 1000).await
}

pub(super) async fn instance_with(
    cfg: StoreConfig,
    queue_max: usize,
) -> (Arc<RedisStore>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let store = RedisStore::open_with(&cfg, metrics.clone(), queue_max)
        .await
        .expect("open");
    (store, metrics)
}

pub(super) fn store_up(m: &Metrics) -> i64 {
    m.store_up.with_label_values(&["redis"]).get()
}

pub(super) fn ops(m: &Metrics, op: &str, result: &str) -> u64 {
    m.store_operations
        .with_label_values(&["redis", op, result])
        .get()
}

/// Polls `cond` every 5 ms until it holds; returns how long that took.
pub(super) async fn eventually(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t0.elapsed()
}
