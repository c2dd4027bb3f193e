//! The leases' own connection to Redis, and the rule for confirming a lease
//! change on replicas.
//!
//! Why not the store's shared connection: a `WAIT` blocks the connection it
//! runs on inside Redis, so on the shared one a lagging replica would stall
//! every session command queued behind it, and a missing acknowledgement
//! (a timeout there) would mark the whole store down, making the VIP flap.
//! Here a failure only fails the lease operation: the store's state is never
//! touched. After a timeout or a broken connection the next operation opens a
//! fresh one (through Sentinel, if configured, so it follows a failover).
//!
//! Confirmation: after a change, `WAIT n t` with `n = min(wanted, replicas
//! online)`, read from `INFO replication` in the same round trip as the change
//! (after a failover the new master may have no replica yet: then nothing is
//! waited for), and `t` half the command timeout, so the answer always comes
//! back before the command's own bound. Fewer acknowledgements than `n` is
//! [`LeaseFail::Unacked`].

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};
use tokio::sync::Mutex;

use super::link::{is_connection_error, Link};

/// Why a lease operation did not give an answer that counts.
#[derive(Debug, thiserror::Error)]
pub(super) enum LeaseFail {
    #[error("no connection to redis within {0:?}")]
    Connect(Duration),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(
        "done on the master, but acknowledged by {acked} of {wanted} replicas within {within:?}"
    )]
    Unacked {
        acked: i64,
        wanted: u32,
        within: Duration,
    },
}

pub(super) struct LeaseLink {
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl LeaseLink {
    pub(super) fn new() -> LeaseLink {
        LeaseLink {
            conn: Mutex::new(None),
        }
    }

    /// Run one lease operation on the leases' connection, bounded by
    /// `command_timeout`; recorded in `store_operations_total` as `op`.
    pub(super) async fn call<T, F, Fut>(
        &self,
        link: &Link,
        op: &'static str,
        f: F,
    ) -> Result<T, LeaseFail>
    where
        F: FnOnce(MultiplexedConnection, Duration) -> Fut,
        Fut: Future<Output = Result<T, LeaseFail>>,
    {
        let t0 = Instant::now();
        let limit = link.cfg.command_timeout;
        let result = match self.conn(link).await {
            Ok(c) => match tokio::time::timeout(limit, f(c, wait_timeout(limit))).await {
                Ok(r) => r,
                Err(_) => Err(LeaseFail::Timeout(limit)),
            },
            Err(e) => Err(e),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(LeaseFail::Timeout(_)) => "timeout",
            Err(LeaseFail::Unacked { .. }) => "unacked",
            Err(LeaseFail::Connect(_)) => "down",
            Err(LeaseFail::Redis(e)) if e.is_timeout() => "timeout",
            Err(LeaseFail::Redis(_)) => "error",
        };
        link.record(op, label, t0);
        let broken = match &result {
            Err(LeaseFail::Timeout(_)) => true,
            Err(LeaseFail::Redis(e)) => is_connection_error(e),
            _ => false,
        };
        if broken {
            // A late answer (or a WAIT still running in Redis) must not be
            // read as the answer to the next operation's command.
            *self.conn.lock().await = None;
        }
        result
    }

    async fn conn(&self, link: &Link) -> Result<MultiplexedConnection, LeaseFail> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let within = link.cfg.connect_timeout;
        let open = async {
            let client = link.client_for_master().await?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(within))
                // `call` bounds every operation itself.
                .set_response_timeout(None);
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        };
        let c = match tokio::time::timeout(within, open).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(LeaseFail::Redis(e)),
            Err(_) => return Err(LeaseFail::Connect(within)),
        };
        *slot = Some(c.clone());
        Ok(c)
    }
}

/// `WAIT`'s own timeout: well inside the command's bound, so that a missing
/// acknowledgement is answered by Redis (a failed renewal) instead of being
/// cut by the timeout (a lost connection).
pub(super) fn wait_timeout(command_timeout: Duration) -> Duration {
    (command_timeout / 2).max(Duration::from_millis(1))
}

/// Replicas the master has online, from `INFO replication` (`slaveN:...,
/// state=online,...` lines; `connected_slaves` also counts replicas that
/// are still loading their first copy and cannot acknowledge yet).
pub(super) fn online_replicas(info: &str) -> u32 {
    let online = info
        .lines()
        .filter(|l| l.starts_with("slave") && l.contains("state=online"))
        .count();
    u32::try_from(online).unwrap_or(u32::MAX)
}

/// Confirm the change just made on `c`: `WAIT min(wanted, online) within`.
pub(super) async fn confirm(
    c: &mut MultiplexedConnection,
    wanted: u32,
    online: u32,
    within: Duration,
) -> Result<(), LeaseFail> {
    let need = wanted.min(online);
    if need == 0 {
        return Ok(());
    }
    let ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX).max(1);
    let acked: i64 = redis::cmd("WAIT").arg(need).arg(ms).query_async(c).await?;
    if acked < i64::from(need) {
        return Err(LeaseFail::Unacked {
            acked,
            wanted: need,
            within,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_online_replicas_count() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=7001,state=online,offset=42,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n\
            master_failover_state:no-failover\r\n";
        assert_eq!(online_replicas(info), 1);
        assert_eq!(
            online_replicas("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
            0
        );
    }

    #[test]
    fn the_wait_ends_before_the_command_timeout() {
        for ms in [1, 2, 200, 5000] {
            let limit = Duration::from_millis(ms);
            let w = wait_timeout(limit);
            assert!(w >= Duration::from_millis(1));
            assert!(w < limit || ms == 1, "{w:?} for {limit:?}");
        }
    }
}
