//! [`RedisPool`]: the router's handle on one pool of a [`super::RedisStore`].
//!
//! `lookup` reads the local cache only. Every other call runs its script
//! against Redis when the link is up (bounded by `command_timeout`) and applies
//! the answer to the cache, so that the router's next `lookup` sees the owner
//! Redis settled on, also when another instance won. When Redis is unreachable
//! or does not answer in time, the change is applied to the cache and queued
//! (`sync.rs`): the call returns at once, never with an error. Exactly-once
//! `take_moved` and race-free re-pins hold across instances while Redis is up;
//! during an outage each instance decides alone and Redis settles on replay.
//!
//! Provisional sessions never reach Redis: `insert_provisional` records one
//! beside the cache; `confirm` moves it into the cache as a local change (its
//! live connections carry over) and writes it insert-if-absent, adopting the
//! owner Redis already has if another instance confirmed the cookie first.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_trait::async_trait;
use redis::Value;

use super::cache::{Apply, PoolCache};
use super::ops::{insert_op, Op};
use super::scripts;
use super::Shared;
use crate::store::{now_ms, Hit, PoolStore, Session, StoreError};

pub struct RedisPool {
    pub(super) shared: Arc<Shared>,
    pub(super) cache: Arc<PoolCache>,
}

impl RedisPool {
    /// Run `op` on Redis if it is up. `None`: it did not answer (apply locally).
    async fn direct(&self, name: &'static str, op: &Op) -> Option<(bool, Option<Hit>)> {
        if !self.shared.link.is_up() {
            return None;
        }
        let inv = self.shared.invocation(op);
        let reply = self
            .shared
            .link
            .call(name, |mut c| async move {
                inv.invoke_async::<Value>(&mut c).await
            })
            .await
            .ok()?;
        Some(self.shared.settle(op, &reply))
    }

    fn key(&self, key: &str) -> (Arc<str>, Box<str>) {
        (self.cache.name.clone(), key.into())
    }
}

#[async_trait]
impl PoolStore for RedisPool {
    fn lookup(&self, key: &str) -> Option<Hit> {
        self.cache
            .lookup(key, self.shared.clock.load(Relaxed))
            .or_else(|| self.cache.prov.lookup(key))
    }

    /// Reads through to Redis (the admin API must show what every instance
    /// sees); the cache answers while Redis does not.
    async fn get(&self, key: &str) -> Result<Option<Session>, StoreError> {
        let cached = self.cache.get(key);
        if self.shared.link.is_up() {
            let redis_key = self.shared.keys.session(&self.cache.name, key);
            let read = self
                .shared
                .link
                .call("get", |mut c| async move {
                    redis::cmd("GET")
                        .arg(redis_key)
                        .query_async::<Option<Vec<u8>>>(&mut c)
                        .await
                })
                .await;
            match read {
                Ok(Some(bytes)) => {
                    if let Some(stored) = scripts::parse_stored(&bytes) {
                        let mut s = stored.session;
                        self.cache.apply(key, stored.v, &s, Apply::IfCached);
                        // This instance may have seen the session since its last refresh.
                        let seen = cached.map_or(0, |e| e.last_seen.load(Relaxed));
                        s.last_seen = s.last_seen.max(seen);
                        return Ok(Some(s));
                    }
                }
                Ok(None) => {
                    self.cache.remove_if(key, |e| !e.record().local);
                    return Ok(self.provisional(key));
                }
                Err(_) => {}
            }
        }
        Ok(cached
            .map(|e| e.session())
            .or_else(|| self.provisional(key)))
    }

    async fn insert_if_absent(&self, key: &str, backend: Arc<str>) -> Result<Hit, StoreError> {
        if let Some(hit) = self.cache.lookup(key, self.shared.clock.load(Relaxed)) {
            return Ok(hit);
        }
        let session = Session::new(backend);
        self.shared.clock.fetch_max(session.since, Relaxed);
        let op = insert_op(&self.cache.name, key, &session);
        if let Some((_, Some(hit))) = self.direct("insert", &op).await {
            return Ok(hit);
        }
        // Pinned by this instance's hash now, written (insert-if-absent) later.
        let (hit, inserted) = self.cache.insert_local(key, &session, Arc::default());
        if inserted {
            self.shared.enqueue(op);
        }
        Ok(hit)
    }

    fn insert_provisional(&self, key: &str, backend: Arc<str>) -> Hit {
        if let Some(hit) = self.cache.lookup(key, self.shared.clock.load(Relaxed)) {
            return hit;
        }
        let room = self.shared.budget.room();
        self.cache.prov.insert(key, backend, now_ms(), room)
    }

    async fn confirm(&self, key: &str) -> Result<Option<Hit>, StoreError> {
        if let Some(hit) = self.cache.lookup(key, self.shared.clock.load(Relaxed)) {
            return Ok(Some(hit));
        }
        let Some(p) = self.cache.prov.get(key) else {
            return Ok(None);
        };
        let session = p.session(now_ms());
        self.shared.clock.fetch_max(session.last_seen, Relaxed);
        // Cached (local, with the provisional meta) before it leaves the
        // provisional map, so a lookup meanwhile finds one or the other.
        let (hit, inserted) = self.cache.insert_local(key, &session, p.meta.clone());
        self.cache.prov.confirmed(key, &p);
        if !inserted {
            return Ok(Some(hit));
        }
        let op = insert_op(&self.cache.name, key, &session);
        // Redis's answer replaces the local record (and is the owner that won).
        if let Some((_, Some(hit))) = self.direct("insert", &op).await {
            return Ok(Some(hit));
        }
        self.shared.enqueue(op);
        Ok(Some(hit))
    }

    async fn compare_and_set(
        &self,
        key: &str,
        expected: &str,
        new: Session,
    ) -> Result<bool, StoreError> {
        let (pool, k) = self.key(key);
        let op = Op::Cas {
            pool,
            key: k,
            expected: expected.into(),
            record: scripts::record_json(&new),
        };
        if let Some((written, _)) = self.direct("cas", &op).await {
            return Ok(written);
        }
        let changed = self.cache.update_local(key, |old| {
            (*old.backend == *expected).then(|| PoolCache::local_record(&new, old))
        });
        if changed {
            self.shared.enqueue(op);
        }
        Ok(changed)
    }

    async fn take_moved(&self, key: &str, backend: &str) -> Result<bool, StoreError> {
        let (pool, k) = self.key(key);
        let op = Op::Take {
            pool,
            key: k,
            backend: backend.into(),
        };
        if let Some((taken, _)) = self.direct("take_moved", &op).await {
            return Ok(taken);
        }
        let changed = self.cache.update_local(key, |old| {
            (old.is_moved() && *old.backend == *backend).then(|| old.taken())
        });
        if changed {
            self.shared.enqueue(op);
        }
        Ok(changed)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let provisional = self.cache.prov.delete(key);
        let (pool, k) = self.key(key);
        let op = Op::Delete { pool, key: k };
        if let Some((existed, _)) = self.direct("delete", &op).await {
            return Ok(existed || provisional);
        }
        let existed = self.cache.remove_if(key, |_| true);
        // Redis may hold the key even if this cache does not.
        self.shared.enqueue(op);
        Ok(existed || provisional)
    }

    /// This instance's view: sessions of `backend` in its cache.
    fn sessions_of(&self, backend: &str) -> u64 {
        self.cache.sessions_of(backend)
    }

    /// This instance's view: sessions of the pool in its cache.
    fn len(&self) -> usize {
        self.cache.len()
    }

    fn provisional_len(&self) -> usize {
        self.cache.prov.len()
    }

    fn on_owner_change(&self, f: crate::store::OwnerChanged) {
        let _ = self.cache.on_moved.set(f);
    }
}

impl RedisPool {
    /// The provisional session of `key`, as a record (admin API).
    fn provisional(&self, key: &str) -> Option<Session> {
        self.cache.prov.get(key).map(|p| p.session(p.since))
    }
}
