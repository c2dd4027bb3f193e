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
//! A reconnect builds a fresh connection manager (resolving the master through
//! the sentinels first, if configured) rather than waiting on the old one.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisError, TlsMode};
use tokio::sync::{watch, Mutex};

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
    conn: ArcSwapOption<ConnectionManager>,
    /// The client behind `conn`, for pub/sub connections to the same server.
    client: ArcSwapOption<Client>,
    sentinel: Option<Mutex<Sentinel>>,
    state: AtomicU8,
    /// Bumped on every state change, so waiters (pub/sub) notice.
    changes: watch::Sender<State>,
    metrics: Arc<Metrics>,
}

impl Link {
    pub(super) fn new(cfg: &RedisConfig, metrics: Arc<Metrics>) -> Result<Link, StoreError> {
        let sentinel = match &cfg.sentinel {
            Some(s) => {
                let nodes: Vec<_> = (s.nodes.iter())
                    .map(|(host, port)| addr(cfg.tls, host, *port).into_connection_info())
                    .collect::<Result<_, _>>()
                    .map_err(|e| StoreError::Config(format!("redis sentinel nodes: {e}")))?;
                let sentinel = Sentinel::build(nodes)
                    .map_err(|e| StoreError::Config(format!("redis sentinel nodes: {e}")))?;
                Some(Mutex::new(sentinel))
            }
            None => None,
        };
        let (changes, _) = watch::channel(State::Down);
        metrics.store_up.with_label_values(&["redis"]).set(0);
        metrics.store_ops_at_zero("redis", super::series::OPS);
        Ok(Link {
            target: cfg.target(),
            cfg: cfg.clone(),
            conn: ArcSwapOption::empty(),
            client: ArcSwapOption::empty(),
            sentinel,
            state: AtomicU8::new(State::Down as u8),
            changes,
            metrics,
        })
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
            Ok(Ok((client, manager))) => {
                self.client.store(Some(Arc::new(client)));
                self.conn.store(Some(Arc::new(manager)));
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

    async fn open_manager(&self) -> Result<(Client, ConnectionManager), RedisError> {
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
        Ok((client, manager))
    }

    /// A client for the master (asking the sentinels first, if configured).
    pub(super) async fn client_for_master(&self) -> Result<Client, RedisError> {
        let redis = self.redis_info();
        let Some(sentinel) = &self.sentinel else {
            let info = addr(self.cfg.tls, &self.cfg.host, self.cfg.port).into_connection_info()?;
            return Client::open(info.set_redis_settings(redis));
        };
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
        if self.cfg.tls {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        let master = self.cfg.sentinel.as_ref().map_or("", |s| s.master.as_str());
        sentinel
            .lock()
            .await
            .async_master_for(master, Some(&node))
            .await
    }

    fn redis_info(&self) -> redis::RedisConnectionInfo {
        let mut info = redis::RedisConnectionInfo::default().set_db(self.cfg.db);
        if let Some(user) = &self.cfg.username {
            info = info.set_username(user);
        }
        if let Some(password) = &self.cfg.password {
            info = info.set_password(password);
        }
        info
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

    /// A pub/sub connection to the server the commands go to.
    pub(super) async fn pubsub(&self) -> Result<redis::aio::PubSub, Fail> {
        let client = self.client.load_full().ok_or(Fail::Down)?;
        match tokio::time::timeout(self.cfg.connect_timeout, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(Fail::Redis(e)),
            Err(_) => Err(Fail::Timeout),
        }
    }

    /// Run one command (or pipeline) bounded by `command_timeout`. A timeout or a
    /// lost connection marks the link down; an error answer from Redis does not.
    pub(super) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, Fail>
    where
        F: FnOnce(ConnectionManager) -> Fut,
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
        F: FnOnce(ConnectionManager) -> Fut,
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

fn addr(tls: bool, host: &str, port: u16) -> ConnectionAddr {
    match tls {
        true => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        },
        false => ConnectionAddr::Tcp(host.to_owned(), port),
    }
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
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "NOAUTH")
        )
}
