//! [`Leases`] on Redis: `SET NX PX` to take, Lua compare-and-set scripts to
//! renew and release (a node never touches a lease it does not hold), and an
//! optional `WAIT` so a renewal only counts once a replica has it.

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;

use super::link::Fail;
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

fn failed(what: &str, e: Fail) -> StoreError {
    StoreError::Unavailable(format!("lease {what}: {e}"))
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
            .shared
            .link
            .call("lease_acquire", |mut c| async move {
                Script::new(ACQUIRE)
                    .key(&key)
                    .arg(value)
                    .arg(ms(ttl))
                    .invoke_async(&mut c)
                    .await
            })
            .await
            .map_err(|e| failed("acquire", e))?;
        Ok(match left {
            -1 => Acquire::Taken,
            // -2: expired between the SET and the PTTL; -1 never comes (always PX).
            left => Acquire::Held {
                holder,
                left: Duration::from_millis(left.max(0) as u64),
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
        let limit = self.shared.link.cfg.command_timeout;
        let (ok, wanted): (i64, String) = self
            .shared
            .link
            .call("lease_renew", |mut c| async move {
                let r = Script::new(RENEW)
                    .key(&key)
                    .key(&want)
                    .arg(value)
                    .arg(ms(ttl))
                    .invoke_async(&mut c)
                    .await?;
                if replicas > 0 {
                    let acked: i64 = redis::cmd("WAIT")
                        .arg(replicas)
                        .arg(ms(limit))
                        .query_async(&mut c)
                        .await?;
                    if acked < i64::from(replicas) {
                        return Err(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "renewal not confirmed by a replica",
                        )));
                    }
                }
                Ok(r)
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
            .shared
            .link
            .call("lease_release", |mut c| async move {
                Script::new(RELEASE)
                    .key(&key)
                    .arg(value)
                    .invoke_async(&mut c)
                    .await
            })
            .await
            .map_err(|e| failed("release", e))?;
        Ok(n == 1)
    }

    async fn request(&self, name: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let (_, want) = self.lease_keys(name);
        self.shared
            .link
            .call("lease_request", |mut c| async move {
                redis::cmd("SET")
                    .arg(&want)
                    .arg(value)
                    .arg("PX")
                    .arg(ms(ttl))
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .map_err(|e| failed("request", e))
    }

    async fn holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        let (key, _) = self.lease_keys(name);
        self.shared
            .link
            .call("lease_get", |mut c| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await
            .map_err(|e| failed("read", e))
    }

    async fn left(&self, name: &str) -> Result<Option<Duration>, StoreError> {
        let (key, _) = self.lease_keys(name);
        let ms: i64 = self
            .shared
            .link
            .call("lease_ttl", |mut c| async move {
                redis::cmd("PTTL").arg(&key).query_async(&mut c).await
            })
            .await
            .map_err(|e| failed("read", e))?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }
}
