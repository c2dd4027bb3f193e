//! The connection to Redis and whether it is usable: every command of the store
//! but the leases' (`lease_link.rs`) goes through [`Link::call`], which bounds
//! it by `command_timeout`, records `store_operations_total` and
//! `tether_store_op_seconds`, and marks the link down when Redis does not answer.
//!
//! States: `Down` (no usable connection: the store works from its cache and
//! queues writes), `Syncing` (connected again, replaying the queue: writes still
//! queue so they stay in order), `Up` (commands go straight to Redis). The
//! reconnect loop (`tasks.rs`) moves Down -> Syncing with [`Link::connect`], the
//! replay (`sync.rs`) moves Syncing -> Up; any failed command moves to Down.
//! A reconnect builds a fresh connection (resolving the master through the
//! sentinels first, if configured; with a cluster, a fresh cluster connection
//! from the seeds) rather than waiting on the old one (`conn.rs`).
//!
//! On a cluster, "down" is the whole store's state: a command that fails on
//! one master (dead, or the cluster refusing commands until its failover is
//! done) puts the store in outage mode for every key, which the cache, the
//! queue and the write-back then carry as for a single Redis.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ErrorKind, RedisError, TlsMode};
use tokio::sync::{watch, Mutex};

use super::conn::{self, addr, Conn};

use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Down = 0,
    Syncing = 1,
    Up = 2,
}

/// Why a command did not give an answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum Fail {
    #[error("redis is unreachable")]
    Down,
    #[error("no answer within the command timeout")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] RedisError),
}

pub(super) struct Link {
    pub(super) cfg: RedisConfig,
    /// `HOST:PORT` (or the sentinel master) for messages.
    pub(super) target: String,
    conn: ArcSwapOption<Conn>,
    /// The client behind `conn`, for pub/sub connections to the same server
    /// (not with a cluster).
    client: ArcSwapOption<Client>,
    /// The cluster's nodes as last read: masters, then replicas and seeds.
    nodes: ArcSwap<(conn::Nodes, conn::Nodes)>,
    sentinel: Option<Mutex<SentinelClient>>,
    state: AtomicU8,
    /// Bumped on every state change, so waiters (pub/sub) notice.
    changes: watch::Sender<State>,
    metrics: Arc<Metrics>,
}

impl Link {
    pub(super) fn new(cfg: &RedisConfig, metrics: Arc<Metrics>) -> Result<Link, StoreError> {
        let sentinel = match &cfg.sentinel {
            Some(s) => Some(Mutex::new(sentinel_client(cfg, s).map_err(|e| {
                StoreError::Config(format!("redis sentinel nodes: {e}"))
            })?)),
            None => None,
        };
        let seeds = cfg.cluster.as_ref().map(|c| c.nodes.clone());
        let (changes, _) = watch::channel(State::Down);
        metrics.store_up.with_label_values(&["redis"]).set(0);
        metrics.store_ops_at_zero("redis", super::series::OPS);
        Ok(Link {
            target: cfg.target(),
            cfg: cfg.clone(),
            conn: ArcSwapOption::empty(),
            client: ArcSwapOption::empty(),
            nodes: ArcSwap::from_pointee((Vec::new(), seeds.unwrap_or_default())),
            sentinel,
            state: AtomicU8::new(State::Down as u8),
            changes,
            metrics,
        })
    }

    pub(super) fn is_cluster(&self) -> bool {
        self.cfg.cluster.is_some()
    }

    pub(super) fn state(&self) -> State {
        match self.state.load(SeqCst) {
            2 => State::Up,
            1 => State::Syncing,
            _ => State::Down,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.state() == State::Up
    }

    pub(super) fn set_state(&self, to: State) {
        let from = self.state.swap(to as u8, SeqCst);
        if from == to as u8 {
            return;
        }
        let up = i64::from(to == State::Up);
        self.metrics.store_up.with_label_values(&["redis"]).set(up);
        match to {
            State::Down => {
                tracing::warn!(redis = %self.target, "redis store: unreachable, serving from the local cache and queueing writes")
            }
            State::Up => tracing::info!(redis = %self.target, "redis store: connected"),
            State::Syncing => {
                tracing::info!(redis = %self.target, "redis store: reconnected, replaying queued writes")
            }
        }
        self.changes.send_replace(to);
    }

    pub(super) fn watch(&self) -> watch::Receiver<State> {
        self.changes.subscribe()
    }

    /// Open a fresh connection (within `connect_timeout`) and use it from now on.
    /// Errors that retrying cannot fix come back as [`StoreError::Config`].
    pub(super) async fn connect(&self) -> Result<(), StoreError> {
        let t0 = Instant::now();
        let attempt = tokio::time::timeout(self.cfg.connect_timeout, self.open_manager()).await;
        let result = match attempt {
            Ok(Ok((client, conn))) => {
                self.client.store(client.map(Arc::new));
                self.conn.store(Some(Arc::new(conn)));
                Ok(())
            }
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis at {}: no connection within {:?}",
                self.target, self.cfg.connect_timeout
            ))),
        };
        let label = if result.is_ok() { "ok" } else { "error" };
        self.record("connect", label, t0);
        result
    }

    async fn open_manager(&self) -> Result<(Option<Client>, Conn), RedisError> {
        if let Some(cluster) = &self.cfg.cluster {
            let mut c =
                conn::open_cluster(&self.cfg, &cluster.nodes, batch_limit(&self.cfg)).await?;
            // Every master must answer (PING goes to all of them).
            redis::cmd("PING").query_async::<String>(&mut c).await?;
            let text: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut c)
                .await?;
            let (masters, mut others) = conn::cluster_nodes(&text);
            // Seeds stay candidates too: the layout read may already be stale.
            for seed in &cluster.nodes {
                if !masters.contains(seed) && !others.contains(seed) {
                    others.push(seed.clone());
                }
            }
            self.nodes.store(Arc::new((masters, others)));
            return Ok((None, Conn::Cluster(c)));
        }
        let client = self.client_for_master().await?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.cfg.connect_timeout))
            // A backstop only: `call` bounds each command itself, and background
            // batches may take longer than one command.
            .set_response_timeout(Some(batch_limit(&self.cfg)))
            // Reconnecting is the store's own loop: the manager must not retry on its own.
            .set_number_of_retries(0);
        let mut manager = ConnectionManager::new_with_config(client.clone(), config).await?;
        // Connecting needs no password; the first command tells whether it is right.
        redis::cmd("PING")
            .query_async::<String>(&mut manager)
            .await?;
        Ok((Some(client), Conn::Single(manager)))
    }

    /// A client for the master (asking the sentinels first, if configured).
    /// Not with a cluster: it has no one master.
    pub(super) async fn client_for_master(&self) -> Result<Client, RedisError> {
        if self.is_cluster() {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a Redis Cluster has no single master",
            )));
        }
        let Some(sentinel) = &self.sentinel else {
            return conn::client_at(&self.cfg, &self.cfg.host, self.cfg.port);
        };
        sentinel.lock().await.async_get_client().await
    }

    /// Configuration problems (retrying cannot help) vs an unreachable server.
    fn classify(&self, e: &RedisError) -> StoreError {
        let code = e.code().unwrap_or("");
        let detail = e.detail().unwrap_or("");
        let target = &self.target;
        if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
        {
            return StoreError::Config(format!("redis at {target}: authentication failed ({e})"));
        }
        if detail.contains("DB index") {
            let db = self.cfg.db;
            return StoreError::Config(format!("redis at {target}: database {db} does not exist"));
        }
        // A certificate Redis's TLS does not pass will not pass on retry either.
        // (An unknown sentinel master is not one of these: sentinels say the same
        // while their master is down, which a retry may well outlive.)
        if e.kind() == ErrorKind::InvalidClientConfig || e.to_string().contains("certificate") {
            return StoreError::Config(format!("redis at {target}: {e}"));
        }
        StoreError::Unavailable(format!("redis at {target}: {e}"))
    }

    /// A pub/sub connection to the server the commands go to, with its name;
    /// on a cluster, to the first node that answers: the masters from the
    /// `start`th on (instances spread over them), then replicas and seeds.
    pub(super) async fn pubsub(&self, start: usize) -> Result<(redis::aio::PubSub, String), Fail> {
        let within = self.cfg.connect_timeout;
        if !self.is_cluster() {
            let client = self.client.load_full().ok_or(Fail::Down)?;
            return match tokio::time::timeout(within, client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => Ok((pubsub, self.target.clone())),
                Ok(Err(e)) => Err(Fail::Redis(e)),
                Err(_) => Err(Fail::Timeout),
            };
        }
        let nodes = self.nodes.load_full();
        let (masters, others) = &*nodes;
        let first = start % masters.len().max(1);
        let order = masters[first..]
            .iter()
            .chain(&masters[..first])
            .chain(others);
        let mut last = Fail::Down;
        for (host, port) in order {
            let client = conn::client_at(&self.cfg, host, *port)?;
            match tokio::time::timeout(within, client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => return Ok((pubsub, format!("{host}:{port}"))),
                Ok(Err(e)) => last = Fail::Redis(e),
                Err(_) => last = Fail::Timeout,
            }
        }
        Err(last)
    }

    /// Run one command (or pipeline) bounded by `command_timeout`. A timeout or a
    /// lost connection marks the link down; an error answer from Redis does not.
    pub(super) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Fail>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.call_within(op, self.cfg.command_timeout, f).await
    }

    /// [`Link::call`] with another bound (background batches may take longer).
    pub(super) async fn call_within<T, F, Fut>(
        &self,
        op: &'static str,
        limit: Duration,
        f: F,
    ) -> Result<T, Fail>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let Some(conn) = self.conn.load_full() else {
            self.record(op, "down", Instant::now());
            return Err(Fail::Down);
        };
        let t0 = Instant::now();
        let result = match tokio::time::timeout(limit, f((*conn).clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Fail::Redis(e)),
            Err(_) => Err(Fail::Timeout),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(Fail::Timeout) => "timeout",
            Err(Fail::Redis(e)) if e.is_timeout() => "timeout",
            Err(_) => "error",
        };
        self.record(op, label, t0);
        match &result {
            Err(Fail::Timeout) => self.lost(op, "no answer within the command timeout"),
            Err(Fail::Redis(e)) if is_connection_error(e) => self.lost(op, &e.to_string()),
            Err(Fail::Redis(e)) => {
                tracing::warn!(redis = %self.target, op, error = %e, "redis store: command failed")
            }
            _ => {}
        }
        result
    }

    fn lost(&self, op: &str, why: &str) {
        if self.state() != State::Down {
            tracing::warn!(redis = %self.target, op, error = why, "redis store: connection lost");
            self.set_state(State::Down);
        }
    }

    /// The leases' series at 0 (`series.rs`).
    pub(super) fn leases_at_zero(&self) {
        self.metrics
            .store_ops_at_zero("redis", super::series::LEASE_OPS);
    }

    pub(super) fn record(&self, op: &str, result: &str, since: Instant) {
        debug_assert!(
            super::series::known(op, result),
            "store_operations_total op={op} result={result}: add it to store/redis/series.rs"
        );
        self.metrics
            .store_operations
            .with_label_values(&["redis", op, result])
            .inc();
        if result != "down" {
            self.metrics
                .store_op_seconds
                .with_label_values(&["redis", op])
                .observe(since.elapsed().as_secs_f64());
        }
    }
}

/// A bound for background batches, which may carry many keys.
pub(super) fn batch_limit(cfg: &RedisConfig) -> Duration {
    (cfg.command_timeout * 5).max(Duration::from_secs(1))
}

/// The sentinels of `s`, asked for the master with the configured
/// credentials, database and TLS roots (TLS to the sentinels too).
fn sentinel_client(
    cfg: &RedisConfig,
    s: &crate::config::RedisSentinel,
) -> Result<SentinelClient, RedisError> {
    let nodes = (s.nodes.iter()).map(|(host, port)| addr(cfg.tls, host, *port));
    let mut b = SentinelClientBuilder::new(nodes, &s.master, SentinelServerType::Master)?
        .set_client_to_redis_db(cfg.db);
    if let Some(user) = &cfg.username {
        b = b.set_client_to_redis_username(user);
    }
    if let Some(password) = &cfg.password {
        b = b.set_client_to_redis_password(password);
    }
    if cfg.tls {
        b = (b.set_client_to_redis_tls_mode(TlsMode::Secure))
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certs) = conn::certs(cfg) {
            b = (b.set_client_to_redis_certificates(certs.clone()))
                .set_client_to_sentinel_certificates(certs);
        }
    }
    b.build()
}

/// Errors after which the connection cannot be trusted any more.
pub(super) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "NOAUTH" | "CLUSTERDOWN" | "TRYAGAIN")
        )
        // The cluster connection's own failures: no connection to a slot's node.
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    redis::ServerErrorKind::ClusterDown | redis::ServerErrorKind::TryAgain
                )
        )
}
