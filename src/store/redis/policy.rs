//! Whether the Redis in use may evict tether's long-lived keys.
//!
//! Session keys carry a TTL; the cookie secret (`{prefix}:secret`) and the
//! drains do not, and are rarely read. Under an `allkeys-*` maxmemory policy
//! they are therefore the first keys Redis evicts: a restarting instance then
//! mints a new secret and the instances reject each other's cookies. Under
//! `noeviction` or a `volatile-*` policy only keys with a TTL can go. The
//! policy is read from `INFO memory`, since managed Redis services often
//! disable `CONFIG`. Nothing here stops tether: it warns, at start (and on
//! each reconnect, the server may have changed) and in `tether check`.

use std::sync::Arc;

use super::link::{Fail, Link};
use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::store::StoreError;

/// The `maxmemory_policy:` value of an `INFO memory` answer.
fn policy_of(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("maxmemory_policy:"))
        .map(str::trim)
}

/// The warning for `policy`, when it lets Redis evict keys without a TTL.
fn warning(target: &str, prefix: &str, policy: &str) -> Option<String> {
    policy.starts_with("allkeys-").then(|| {
        format!(
            "redis at {target} has maxmemory-policy {policy}: when memory runs short it may \
             evict the keys tether keeps without a TTL, the cookie secret ({prefix}:secret) and \
             the drains, and instances then reject each other's cookies; \
             set maxmemory-policy to noeviction or a volatile-* policy"
        )
    })
}

/// `INFO memory` over `link`: the policy, if Redis said it (on a cluster,
/// every master answers: the first evicting policy, else the first one).
async fn read(link: &Link) -> Result<Option<String>, Fail> {
    let info = link
        .call("info", |mut c| async move {
            redis::cmd("INFO")
                .arg("memory")
                .query_async::<redis::Value>(&mut c)
                .await
        })
        .await?;
    let texts = super::conn::info_texts(info);
    let policies: Vec<&str> = texts.iter().filter_map(|t| policy_of(t)).collect();
    let evicting = policies.iter().find(|p| p.starts_with("allkeys-"));
    Ok(evicting.or(policies.first()).map(|p| (*p).to_owned()))
}

/// Log a warning if the connected Redis may evict the secret or the drains.
pub(super) async fn warn_if_evicting(link: &Link) {
    match read(link).await {
        Ok(Some(policy)) => {
            if let Some(w) = warning(&link.target, &link.cfg.prefix, &policy) {
                tracing::warn!("redis store: {w}");
            }
        }
        Ok(None) => {
            tracing::info!(redis = %link.target, "redis store: INFO memory names no maxmemory_policy; not checked")
        }
        Err(e) => {
            tracing::info!(redis = %link.target, error = %e, "redis store: could not read the maxmemory-policy")
        }
    }
}

/// For `tether check`: connect to the Redis of `cfg` (within its timeouts)
/// and read its policy. `Ok(Some(warning))` when it may evict the secret or
/// the drains, `Ok(None)` when it may not (or does not say).
pub async fn eviction_warning(cfg: &RedisConfig) -> Result<Option<String>, StoreError> {
    let link = Link::new(cfg, Arc::new(Metrics::new()))?;
    link.connect().await?;
    let policy = read(&link)
        .await
        .map_err(|e| StoreError::Unavailable(format!("redis at {}: {e}", link.target)))?;
    Ok(policy.and_then(|p| warning(&link.target, &cfg.prefix, &p)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn policies() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory:0\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(super::policy_of(info), Some("allkeys-lru"));
        assert_eq!(super::policy_of("# Memory\r\n"), None);
        for evicting in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            let w = super::warning("h:1", "t", evicting).unwrap_or_default();
            assert!(w.contains(evicting) && w.contains("t:secret"), "{w}");
        }
        for fine in [
            "noeviction",
            "volatile-lru",
            "volatile-ttl",
            "volatile-random",
        ] {
            assert_eq!(super::warning("h:1", "t", fine), None, "{fine}");
        }
    }
}
