//! [`Leases`] on Redis: `SET NX PX` to take, Lua compare-and-set scripts to
//! renew and release (a node never touches a lease it does not hold), each
//! confirmed on replicas with `WAIT` when asked. Everything runs on the
//! leases' own connection (`lease_link.rs`), never the store's.
//!
//! Keys: `{prefix}:lease:{name}` (the holder's value), `:want` (a takeover
//! request), `:clean` (the last hold was released by a holder that had
//! cleaned up; the next take consumes it and reports [`Previous::Released`]).

use std::time::Duration;

use async_trait::async_trait;

use super::lease_link::{confirm, online_replicas, LeaseFail};
use super::RedisStore;
use crate::store::lease::{Acquire, Leases, Previous, Renew};
use crate::store::StoreError;

/// Take it if free, or continue our own hold. `{code, pttl, holder}`: code 1
/// taken after a clean release, 2 taken otherwise, 3 our own, 0 held by
/// `holder` for `pttl` more ms.
const ACQUIRE: &str = r"
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('del', KEYS[2]) == 1 then return {1, 0, ''} end
  return {2, 0, ''}
end
local v = redis.call('get', KEYS[1])
if v == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return {3, 0, ''} end
return {0, redis.call('pttl', KEYS[1]), v or ''}
";

/// Extend if ours; also report a pending takeover request. `{1, want}` or `{0, ''}`.
const RENEW: &str = r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then return {0, ''} end
redis.call('pexpire', KEYS[1], ARGV[2])
return {1, redis.call('get', KEYS[2]) or ''}
";

/// Delete if ours; with ARGV[2] = 1 leave the clean mark for the next taker.
const RELEASE: &str = r"
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('del', KEYS[1])
if ARGV[2] == '1' then redis.call('set', KEYS[2], '1') else redis.call('del', KEYS[2]) end
return 1
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
    fn lease_keys(&self, name: &str) -> (String, String, String) {
        let k = self.shared.keys.lease(name);
        let want = format!("{k}:want");
        let clean = format!("{k}:clean");
        (k, want, clean)
    }
}

#[async_trait]
impl Leases for RedisStore {
    async fn acquire(
        &self,
        name: &str,
        value: &str,
        ttl: Duration,
        replicas: u32,
    ) -> Result<Acquire, StoreError> {
        let (key, _, clean) = self.lease_keys(name);
        let link = &self.shared.link;
        let (code, left, holder) = self
            .lease_link
            .call(link, "lease_acquire", |mut c, within| async move {
                let args = [value.to_owned(), ms(ttl).to_string()];
                let ((code, left, holder), info): ((i64, i64, String), String) =
                    eval_and_info(ACQUIRE, &[&key, &clean], &args)
                        .query_async(&mut c)
                        .await?;
                if code != 0 {
                    confirm(&mut c, replicas, online_replicas(&info), within).await?;
                }
                Ok((code, left, holder))
            })
            .await
            .map_err(|e| failed("acquire", e))?;
        let previous = match code {
            0 => {
                // -2: expired between the SET and the PTTL; -1 never comes (always PX).
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                return Ok(Acquire::Held { holder, left });
            }
            1 => Previous::Released,
            3 => Previous::Ours,
            _ => Previous::Lapsed,
        };
        Ok(Acquire::Taken { previous })
    }

    async fn renew(
        &self,
        name: &str,
        value: &str,
        ttl: Duration,
        replicas: u32,
    ) -> Result<Renew, StoreError> {
        let (key, want, _) = self.lease_keys(name);
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

    async fn release(&self, name: &str, value: &str, clean: bool) -> Result<bool, StoreError> {
        let (key, _, mark) = self.lease_keys(name);
        let n: i64 = self
            .lease_link
            .call(&self.shared.link, "lease_release", |mut c, _| async move {
                let r = redis::cmd("EVAL")
                    .arg(RELEASE)
                    .arg(2)
                    .arg(&key)
                    .arg(&mark)
                    .arg(value)
                    .arg(if clean { "1" } else { "0" })
                    .query_async(&mut c)
                    .await?;
                Ok(r)
            })
            .await
            .map_err(|e| failed("release", e))?;
        Ok(n == 1)
    }

    async fn request(&self, name: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let (_, want, _) = self.lease_keys(name);
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
        let (key, _, _) = self.lease_keys(name);
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
        let (key, _, _) = self.lease_keys(name);
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
