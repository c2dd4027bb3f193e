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
    /// Ours now; `previous` says how the hold before ours ended.
    Taken { previous: Previous },
    /// Held by `holder` for another `left`.
    Held { holder: String, left: Duration },
}

/// How the hold before a [`Acquire::Taken`] ended: whether whatever its
/// holder guarded (the VIP's address) may still be in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    /// It is our own hold, continued (same value: a restart or an upgrade).
    Ours,
    /// Its holder released it saying it had cleaned up (`release(.., clean: true)`).
    Released,
    /// It expired, was lost by the store, was released without cleaning up,
    /// or there was none: nothing is known about its holder.
    Lapsed,
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
    /// Take `name` for `ttl` unless someone else holds it. `replicas`: as for
    /// [`Leases::renew`]; a take that no replica confirmed is an error.
    async fn acquire(
        &self,
        name: &str,
        value: &str,
        ttl: Duration,
        replicas: u32,
    ) -> Result<Acquire, StoreError>;

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
    /// `clean`: nothing the lease guarded is in use any more, so the next
    /// holder need not wait for it ([`Previous::Released`]).
    async fn release(&self, name: &str, value: &str, clean: bool) -> Result<bool, StoreError>;

    /// Ask the holder of `name` to hand it over (preemption); the request
    /// lasts `ttl`.
    async fn request(&self, name: &str, value: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Who holds `name` now.
    async fn holder(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// How long the current hold of `name` lasts without renewal (`None`: nobody holds it).
    async fn left(&self, name: &str) -> Result<Option<Duration>, StoreError>;
}
