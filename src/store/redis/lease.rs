//! [`Leases`] on Redis: `SET NX PX` to take, Lua compare-and-set scripts to
//! renew and release (a node never touches a lease it does not hold), a
//! renewal confirmed on replicas with `WAIT` when asked. Everything runs on
//! the leases' own connection (`lease_link.rs`), never the store's.

use std::time::Duration;

use async_trait::async_trait;

use super::lease_link::{confirm, online_replicas, LeaseFail};
use super::RedisStore;
use crate::store::lease::{Acquire, Leases, Renew};
use crate::store::StoreError;

/// Take it if free; else how long the holder keeps it. `{-1}` or `{pttl, holder}`.
const ACQUIRE: &str = r"
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {-1, ''} end
local v = redis.call('get', KEYS[1])
if v == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return {-1, ''} end
return {redis.call('pttl', KEYS[1]), v or ''}
";

/// Extend if ours; also report a pending takeover request. `{1, want}` or `{0, ''}`.
const RENEW: &str = r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then return {0, ''} end
redis.call('pexpire', KEYS[1], ARGV[2])
return {1, redis.call('get', KEYS[2]) or ''}
";

const RELEASE: &str = r"
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) return 1 end
return 0
";

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn failed(what: &str, e: LeaseFail) -> StoreError {
    StoreError::Unavailable(format!("lease {what}: {e}"))
}

/// `EVAL script` with `keys` and `args`, then `INFO replication`, in one round trip.
fn eval_and_info(script: &str, keys: &[&str], args: &[String]) -> redis::Pipeline {
    let mut p = redis::pipe();
    p.cmd("EVAL")
        .arg(script)
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    p.cmd("INFO").arg("replication");
    p
}

impl RedisStore {
    fn lease_keys(&self, name: &str) -> (String, String) {
        let k = self.shared.keys.lease(name);
        let want = format!("{k}:want");
        (k, want)
    }
}

#[async_trait]
impl Leases for RedisStore {
    async fn acquire(&self, name: &str, value: &str, ttl: Duration) -> Result<Acquire, StoreError> {
        let (key, _) = self.lease_keys(name);
        let (left, holder): (i64, String) = self
            .lease_link
            .call(&self.shared.link, "lease_acquire", |mut c, _| async move {
                redis::cmd("EVAL")
                    .arg(ACQUIRE)
                    .arg(1)
                    .arg(&key)
                    .arg(value)
                    .arg(ms(ttl))
                    .query_async(&mut c)
                    .await
                    .map_err(LeaseFail::from)
            })
            .await
            .map_err(|e| failed("acquire", e))?;
        Ok(match left {
            -1 => Acquire::Taken,
            // -2: expired between the SET and the PTTL; -1 never comes (always PX).
            left => Acquire::Held {
                holder,
                left: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
            },
        })
    }

    async fn renew(
        &self,
        name: &str,
        value: &str,
        ttl: Duration,
        replicas: u32,
    ) -> Result<Renew, StoreError> {
        let (key, want) = self.lease_keys(name);
        let link = &self.shared.link;
        let (ok, wanted) = self
            .lease_link
            .call(link, "lease_renew", |mut c, within| async move {
                let args = [value.to_owned(), ms(ttl).to_string()];
                let ((ok, wanted), info): ((i64, String), String) =
                    eval_and_info(RENEW, &[&key, &want], &args)
                        .query_async(&mut c)
                        .await?;
                if ok == 1 {
                    confirm(&mut c, replicas, online_replicas(&info), within).await?;
                }
                Ok((ok, wanted))
            })
            .await
            .map_err(|e| failed("renew", e))?;
        Ok(match ok {
            1 => Renew::Extended {
                wanted_by: Some(wanted).filter(|w| !w.is_empty()),
            },
            _ => Renew::Lost,
        })
    }

    async fn release(&self, name: &str, value: &str) -> Result<bool, StoreError> {
        let (key, _) = self.lease_keys(name);
        let n: i64 = self
            .lease_link
            .call(&self.shared.link, "lease_release", |mut c, _| async move {
                redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(&key)
                    .arg(value)
                    .query_async(&mut c)
                    .await
                    .map_err(LeaseFail::from)
            })
            .await
            .map_err(|e| failed("release", e))?;
        Ok(n == 1)
    }

    async fn request(&self, name: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let (_, want) = self.lease_keys(name);
        self.lease_link
            .call(&self.shared.link, "lease_request", |mut c, _| async move {
                redis::cmd("SET")
                    .arg(&want)
                    .arg(value)
                    .arg("PX")
                    .arg(ms(ttl))
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(LeaseFail::from)
            })
            .await
            .map_err(|e| failed("request", e))
    }

    async fn holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        let (key, _) = self.lease_keys(name);
        self.lease_link
            .call(&self.shared.link, "lease_get", |mut c, _| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut c)
                    .await
                    .map_err(LeaseFail::from)
            })
            .await
            .map_err(|e| failed("read", e))
    }

    async fn left(&self, name: &str) -> Result<Option<Duration>, StoreError> {
        let (key, _) = self.lease_keys(name);
        let ms: i64 = self
            .lease_link
            .call(&self.shared.link, "lease_ttl", |mut c, _| async move {
                redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .map_err(LeaseFail::from)
            })
            .await
            .map_err(|e| failed("read", e))?;
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }
}
