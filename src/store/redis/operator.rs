//! Operator state shared through Redis: backend drains and the cookie secret.
//!
//! A drain is `{prefix}:drain:{pool}:{backend}` holding its deadline (unix ms),
//! listed in the set `{prefix}:drains` so that reading them all needs no key
//! scan (one `SMEMBERS`, then the keys in one batch). The two are separate
//! commands (on a cluster they live in different slots, and a script may
//! only touch one slot), ordered so that no interleaving of a drain and an
//! enable leaves a drain key outside the index: a drain writes its key, then
//! adds it to the index; an enable takes it out of the index, then deletes the
//! key. An index entry without a key is skipped by readers. Changes are published like session changes;
//! [`Shared::on_operator`] turns those of other instances into
//! [`OperatorEvent`]s, and [`Shared::load_drains`] does the same for changes
//! missed while this instance was not subscribed. The cookie secret is created
//! once (`SET NX`) by whichever instance asks first and read by all others.

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use ring::rand::{SecureRandom, SystemRandom};

use super::link::Fail;
use super::ops::Op;
use super::scripts::{self, Header};
use super::sync::lock;
use super::Shared;
use crate::store::{OperatorEvent, StoreError};

impl Shared {
    /// Record a drain (`Some(deadline)`) or an enable (`None`) in Redis, or queue
    /// it while Redis is unreachable. This instance's view changes at once.
    pub(super) async fn set_drain(&self, pool: &str, backend: &str, deadline: Option<u64>) {
        let id = (pool.to_owned(), backend.to_owned());
        self.drains_in_flight.fetch_add(1, SeqCst);
        {
            let mut mine = lock(&self.drains);
            self.drain_epoch.fetch_add(1, SeqCst);
            match deadline {
                Some(d) => mine.insert(id, d),
                None => mine.remove(&id),
            };
        }
        let op = Op::Drain {
            pool: pool.to_owned(),
            backend: backend.to_owned(),
            deadline,
        };
        if self.link.is_up() && self.send_drain(&op).await.is_ok() {
            self.drain_sent();
            return;
        }
        self.enqueue(op);
        self.drain_sent();
    }

    /// Send a drain or enable (its key and the index, in the order of the
    /// module header). Sending it again is harmless.
    pub(super) async fn send_drain(&self, op: &Op) -> Result<(), Fail> {
        let Op::Drain {
            pool,
            backend,
            deadline,
        } = op
        else {
            return Ok(());
        };
        let (index, member) = (self.keys.drains.clone(), format!("{pool}:{backend}"));
        let inv = self.invocation(op);
        // Async blocks run when awaited: the order below is the order sent.
        let by_key = async {
            (self.link)
                .call("drain", |mut c| async move {
                    inv.invoke_async::<i64>(&mut c).await
                })
                .await
        };
        let cmd = if deadline.is_some() { "SADD" } else { "SREM" };
        let by_index = async {
            (self.link)
                .call("drain", |mut c| async move {
                    redis::cmd(cmd)
                        .arg(index)
                        .arg(member)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await
        };
        if deadline.is_some() {
            by_key.await?;
            by_index.await?;
        } else {
            by_index.await?;
            by_key.await?;
        }
        Ok(())
    }

    fn drain_sent(&self) {
        self.drain_epoch.fetch_add(1, SeqCst);
        self.drains_in_flight.fetch_sub(1, SeqCst);
    }

    /// Read every drain from Redis into this instance's view, announcing the
    /// differences as events (changes made elsewhere while we were not listening).
    /// A read that raced with a change of the view is read again.
    pub(super) async fn load_drains(&self) -> Result<(), Fail> {
        for _ in 0..3 {
            let epoch = self.drain_epoch.load(SeqCst);
            let fresh = self.read_drains().await?;
            let mut mine = lock(&self.drains);
            let busy = self.drains_in_flight.load(SeqCst) > 0;
            if busy || self.drain_epoch.load(SeqCst) != epoch {
                drop(mine);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
            self.announce_differences(&mine, &fresh);
            *mine = fresh;
            return Ok(());
        }
        // Changes keep coming: the messages carry them, the next read catches up.
        Ok(())
    }

    async fn read_drains(&self) -> Result<HashMap<(String, String), u64>, Fail> {
        let index = self.keys.drains.clone();
        let members: Vec<String> = (self.link)
            .call("drains", |mut c| async move {
                redis::cmd("SMEMBERS").arg(index).query_async(&mut c).await
            })
            .await?;
        let mut fresh = HashMap::new();
        if members.is_empty() {
            return Ok(fresh);
        }
        let mut pipe = redis::pipe();
        for m in &members {
            pipe.cmd("GET")
                .arg(format!("{}{m}", self.keys.drain_prefix));
        }
        let deadlines = self.pipeline("drains", pipe).await?;
        for (member, deadline) in members.iter().zip(&deadlines) {
            let deadline = match deadline {
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok(),
                _ => None,
            };
            let (Some((pool, backend)), Some(Ok(deadline))) =
                (member.split_once(':'), deadline.map(str::parse::<u64>))
            else {
                continue;
            };
            fresh.insert((pool.to_owned(), backend.to_owned()), deadline);
        }
        Ok(fresh)
    }

    fn announce_differences(
        &self,
        mine: &HashMap<(String, String), u64>,
        fresh: &HashMap<(String, String), u64>,
    ) {
        for ((pool, backend), &deadline) in fresh {
            if mine.get(&(pool.clone(), backend.clone())) != Some(&deadline) {
                let _ = self.events.send(OperatorEvent::Drain {
                    pool: pool.clone(),
                    backend: backend.clone(),
                    deadline_unix_ms: deadline,
                });
            }
        }
        for (pool, backend) in mine.keys() {
            if !fresh.contains_key(&(pool.clone(), backend.clone())) {
                let _ = self.events.send(OperatorEvent::Enable {
                    pool: pool.clone(),
                    backend: backend.clone(),
                });
            }
        }
    }

    /// This instance's view of the drains, sorted.
    pub(super) fn drain_list(&self) -> Vec<(String, String, u64)> {
        let mut list: Vec<_> = (lock(&self.drains).iter())
            .map(|((p, b), d)| (p.clone(), b.clone(), *d))
            .collect();
        list.sort();
        list
    }

    /// A drain or enable message from the events channel.
    pub(super) fn on_operator(&self, header: &Header<'_>, body: &[u8]) {
        let id = (header.p.to_string(), header.k.to_string());
        let deadline = std::str::from_utf8(body).map(str::parse::<u64>);
        let mut mine = lock(&self.drains);
        self.drain_epoch.fetch_add(1, SeqCst);
        // Only changes are events: a revalidation may have announced this one already.
        let event = match (&*header.t, deadline) {
            ("drain", Ok(Ok(deadline))) if mine.insert(id.clone(), deadline) != Some(deadline) => {
                OperatorEvent::Drain {
                    pool: id.0,
                    backend: id.1,
                    deadline_unix_ms: deadline,
                }
            }
            ("enable", _) if mine.remove(&id).is_some() => OperatorEvent::Enable {
                pool: id.0,
                backend: id.1,
            },
            _ => return,
        };
        if header.i != self.instance {
            // Sent under the lock, so events keep the order of the changes.
            // Nobody listening is fine: the runtime may not have subscribed yet.
            let _ = self.events.send(event);
        }
    }

    /// After Redis restarted empty: put back the secret this instance signs
    /// with, so cookies issued before the restart stay valid for every
    /// instance (including one started later). First writer wins, as at start.
    pub(super) async fn write_back_secret(&self) {
        let Some(mine) = lock(&self.secret).clone() else {
            return;
        };
        let key = self.keys.secret.clone();
        let res = (self.link)
            .call("secret", |mut c| async move {
                let mut inv = scripts::SECRET.prepare_invoke();
                inv.key(key).arg(mine);
                inv.invoke_async::<Vec<u8>>(&mut c).await
            })
            .await;
        match res {
            Ok(_) => tracing::info!("redis store: cookie secret written back"),
            Err(e) => tracing::warn!(error = %e, "redis store: writing the cookie secret back"),
        }
    }

    /// The shared cookie secret: read (or created) in Redis once, then kept.
    /// Without Redis this instance signs with a secret of its own, which the
    /// other instances do not accept; that is logged, not an error.
    pub(super) async fn cookie_secret(&self) -> Result<Vec<u8>, StoreError> {
        if let Some(secret) = lock(&self.secret).clone() {
            return Ok(secret);
        }
        let mut candidate = vec![0u8; 32];
        SystemRandom::new().fill(&mut candidate).map_err(|_| {
            StoreError::Unavailable("no system randomness for the cookie secret".into())
        })?;
        let read = match self.link.is_up() {
            true => {
                let (key, mine) = (self.keys.secret.clone(), candidate.clone());
                (self.link)
                    .call("secret", |mut c| async move {
                        let mut inv = scripts::SECRET.prepare_invoke();
                        inv.key(key).arg(mine);
                        inv.invoke_async::<Vec<u8>>(&mut c).await
                    })
                    .await
            }
            false => Err(Fail::Down),
        };
        let secret = match read {
            Ok(shared) if shared.len() >= 16 => shared,
            other => {
                let why = other
                    .err()
                    .map_or("too short".to_owned(), |e| e.to_string());
                tracing::error!(redis = %self.link.target, error = why,
                    "redis store: shared cookie secret unavailable; this instance signs cookies with its own secret until restarted");
                self.link.record("secret", "local", Instant::now());
                candidate
            }
        };
        let mut slot = lock(&self.secret);
        Ok(slot.get_or_insert(secret).clone())
    }
}
