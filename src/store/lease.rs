//! Named leases in the shared store: what decides which node holds the
//! virtual IP (`crate::vip`). Only a store shared by several instances
//! (Redis) has them.
//!
//! A lease is a key holding its holder's value, expiring `ttl` after it was
//! last taken or renewed. Every change is a compare-and-set on the value, so
//! only the holder renews or releases it.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// What an attempt to take a lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// Ours now (or still ours).
    Taken,
    /// Held by `holder` for another `left`.
    Held { holder: String, left: Duration },
}

/// What the holder learns when it renews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renew {
    /// Extended; `wanted_by` is a node asking to take over (preemption), if any.
    Extended { wanted_by: Option<String> },
    /// Not ours any more (expired and taken, or released).
    Lost,
}

#[async_trait]
pub trait Leases: Send + Sync {
    /// Take `name` for `ttl` unless someone else holds it.
    async fn acquire(&self, name: &str, value: &str, ttl: Duration) -> Result<Acquire, StoreError>;

    /// Extend our hold of `name` by `ttl`. `replicas`: the renewal counts only
    /// once that many replicas have it (Redis `WAIT`; fewer if fewer are
    /// connected), so a failover of the store cannot forget it; an
    /// unconfirmed renewal is an error, like an unanswered one.
    async fn renew(
        &self,
        name: &str,
        value: &str,
        ttl: Duration,
        replicas: u32,
    ) -> Result<Renew, StoreError>;

    /// Give `name` up now (only if we hold it). True when it was ours.
    async fn release(&self, name: &str, value: &str) -> Result<bool, StoreError>;

    /// Ask the holder of `name` to hand it over (preemption); the request
    /// lasts `ttl`.
    async fn request(&self, name: &str, value: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Who holds `name` now.
    async fn holder(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// How long the current hold of `name` lasts without renewal (`None`: nobody holds it).
    async fn left(&self, name: &str) -> Result<Option<Duration>, StoreError>;
}
