//! The changes the store makes to Redis, as values: a change is built once,
//! then either sent at once (`pool.rs`, `operator.rs`) or queued while Redis is
//! unreachable and sent by the replay (`sync.rs`). [`Shared::invocation`] turns
//! it into its script call, [`Shared::settle`] applies Redis's answer to the
//! cache, the same way on both paths.

use std::sync::Arc;

use redis::{ScriptInvocation, Value};

use super::cache::Apply;
use super::scripts::{self, Header};
use super::Shared;
use crate::store::{Hit, Session};

/// A change waiting for Redis (or being sent to it).
pub(super) enum Op {
    Insert {
        pool: Arc<str>,
        key: Box<str>,
        record: String,
    },
    Cas {
        pool: Arc<str>,
        key: Box<str>,
        expected: Arc<str>,
        record: String,
    },
    Take {
        pool: Arc<str>,
        key: Box<str>,
        backend: Arc<str>,
    },
    Delete {
        pool: Arc<str>,
        key: Box<str>,
    },
    Drain {
        pool: String,
        backend: String,
        deadline: Option<u64>,
    },
}

/// The session a queued insert of `backend` writes.
pub(super) fn insert_op(pool: &Arc<str>, key: &str, session: &Session) -> Op {
    Op::Insert {
        pool: pool.clone(),
        key: key.into(),
        record: scripts::record_json(session),
    }
}

impl Shared {
    /// The script call for `op`.
    pub(super) fn invocation(&self, op: &Op) -> ScriptInvocation<'static> {
        let ttl = self.ttl_ms.to_string();
        let (i, ch) = (self.instance.as_str(), self.keys.channel.as_str());
        let mut inv;
        match op {
            Op::Insert { pool, key, record } => {
                inv = scripts::INSERT.prepare_invoke();
                inv.key(self.keys.session(pool, key));
                self.legacy_counter(&mut inv);
                inv.arg(record).arg(ttl).arg(ch);
                inv.arg(Header::new(i, "set", pool, key).json());
            }
            Op::Cas {
                pool,
                key,
                expected,
                record,
            } => {
                inv = scripts::CAS.prepare_invoke();
                inv.key(self.keys.session(pool, key));
                self.legacy_counter(&mut inv);
                inv.arg(&**expected).arg(record).arg(ttl).arg(ch);
                inv.arg(Header::new(i, "set", pool, key).json());
            }
            Op::Take { pool, key, backend } => {
                inv = scripts::TAKE.prepare_invoke();
                inv.key(self.keys.session(pool, key));
                self.legacy_counter(&mut inv);
                inv.arg(&**backend).arg(ch);
                inv.arg(Header::new(i, "set", pool, key).json());
            }
            Op::Delete { pool, key } => {
                inv = scripts::DELETE.prepare_invoke();
                inv.key(self.keys.session(pool, key));
                self.legacy_counter(&mut inv);
                inv.arg(ch).arg(Header::new(i, "del", pool, key).json());
            }
            Op::Drain {
                pool,
                backend,
                deadline,
            } => {
                let what = if deadline.is_some() {
                    "drain"
                } else {
                    "enable"
                };
                // The index set is the caller's (`operator.rs`): another slot on a cluster.
                inv = scripts::DRAIN.prepare_invoke();
                inv.key(self.keys.drain(pool, backend));
                inv.arg(deadline.map(|d| d.to_string()).unwrap_or_default());
                inv.arg(ch).arg(Header::new(i, what, pool, backend).json());
            }
        }
        inv
    }

    /// The legacy version counter as the script's second key, on a single
    /// Redis (see `scripts.rs`).
    fn legacy_counter(&self, inv: &mut ScriptInvocation<'static>) {
        if let Some(counter) = &self.keys.version {
            inv.key(counter);
        }
    }

    /// The session key `op` changes (`None` for a drain).
    pub(super) fn op_key(op: &Op) -> Option<(&str, &str)> {
        match op {
            Op::Insert { pool, key, .. }
            | Op::Cas { pool, key, .. }
            | Op::Take { pool, key, .. }
            | Op::Delete { pool, key } => Some((pool, key)),
            Op::Drain { .. } => None,
        }
    }

    /// Apply Redis's answer to `op` to the cache. Returns the flag of the script
    /// (written / taken / deleted) and the cached owner afterwards.
    pub(super) fn settle(&self, op: &Op, reply: &Value) -> (bool, Option<Hit>) {
        let Some((flag, body)) = scripts::outcome(reply) else {
            return (false, None);
        };
        let (pool, key) = match op {
            Op::Insert { pool, key, .. } | Op::Cas { pool, key, .. } => (pool, key),
            Op::Take { pool, key, .. } => (pool, key),
            Op::Delete { pool, key } => {
                self.pool_cache(pool).remove_if(key, |_| true);
                return (flag > 0, None);
            }
            Op::Drain { .. } => return (flag > 0, None),
        };
        let cache = self.pool_cache(pool);
        let stored = body.and_then(scripts::parse_stored);
        let hit = match stored {
            Some(s) => cache.apply(key, s.v, &s.session, Apply::Newer),
            // Redis has no such key (expired or deleted elsewhere): neither has the cache.
            None => {
                cache.remove_if(key, |e| !e.record().local);
                None
            }
        };
        (flag > 0, hit)
    }
}
