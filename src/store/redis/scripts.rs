//! What the Redis store writes to Redis, and how: key names, the Lua scripts
//! that make each ownership change atomic, and the wire formats of records and
//! pub/sub messages.
//!
//! Every change goes through one script that checks, writes, bumps the global
//! version counter (`{prefix}:ver`) and publishes on `{prefix}:events` in a single
//! step, so two instances racing on a key are serialized by Redis and every
//! cache sees the same order. A stored record is the JSON of [`Session`] plus
//! `"v"`, that version; caches apply a record only if its version is newer than
//! theirs, so a late pub/sub message can never undo a newer reply.
//!
//! A message is `HEADER\nBODY`: the header is the JSON of [`Header`] (the sender's
//! instance id lets receivers skip their own operator events), the body is the
//! stored record (`set`), the version of the delete (`del`) or the drain deadline.

use std::borrow::Cow;
use std::sync::LazyLock;

use redis::{Script, Value};
use serde::{Deserialize, Serialize};

use crate::store::Session;

/// A Lua source and its [`Script`] (which knows the SHA1 for EVALSHA).
macro_rules! script {
    ($name:ident, $src:ident, $code:literal) => {
        const $src: &str = $code;
        pub(super) static $name: LazyLock<Script> = LazyLock::new(|| Script::new($src));
    };
}

// New session: write unless the key exists. Returns `{1, record}` when written,
// `{0, current}` when another owner was there first.
// KEYS: session, version counter. ARGV: record (JSON without v), ttl ms, channel, header.
script!(
    INSERT,
    INSERT_LUA,
    r#"
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local v = redis.call('INCR', KEYS[2])
local rec = '{"v":' .. v .. ',' .. string.sub(ARGV[1], 2)
redis.call('SET', KEYS[1], rec, 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\n' .. rec)
return {1, rec}
"#
);

// Re-pin: write unless the current owner is someone other than ARGV[1]:
// `{1, record}` when written, `{0, current}` otherwise. A missing key is
// written too: it expired or Redis lost it, and nobody else owns it.
// KEYS: session, version counter. ARGV: expected, record, ttl ms, channel, header.
script!(
    CAS,
    CAS_LUA,
    r#"
local cur = redis.call('GET', KEYS[1])
if cur and cjson.decode(cur).backend ~= ARGV[1] then return {0, cur} end
local v = redis.call('INCR', KEYS[2])
local rec = '{"v":' .. v .. ',' .. string.sub(ARGV[2], 2)
redis.call('SET', KEYS[1], rec, 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. '\n' .. rec)
return {1, rec}
"#
);

// Clear moved_from/move_reason if set for owner ARGV[1]: exactly one caller,
// across every instance, gets `{1, record}`; the others `{0, current or ''}`.
script!(
    TAKE,
    TAKE_LUA,
    r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0, ''} end
local s = cjson.decode(cur)
if s.backend ~= ARGV[1] or (s.moved_from == nil and s.move_reason == nil) then
  return {0, cur}
end
s.moved_from = nil
s.move_reason = nil
s.v = redis.call('INCR', KEYS[2])
local rec = cjson.encode(s)
redis.call('SET', KEYS[1], rec, 'KEEPTTL')
redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\n' .. rec)
return {1, rec}
"#
);

// Forget a key. `{version of the delete, ''}`, or `{0, ''}` if it did not exist.
script!(
    DELETE,
    DELETE_LUA,
    r#"
if redis.call('DEL', KEYS[1]) == 0 then return {0, ''} end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\n' .. v)
return {v, ''}
"#
);

// TTL refresh of a session seen until ARGV[1] (unix ms): `last_seen` moves
// forward, the TTL restarts. No version bump: the owner did not change.
// `{1, current}`, or `{0, ''}` if Redis no longer has the key.
script!(
    TOUCH,
    TOUCH_LUA,
    r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0, ''} end
local s = cjson.decode(cur)
local seen = tonumber(ARGV[1])
if s.last_seen == nil or s.last_seen < seen then
  s.last_seen = seen
  cur = cjson.encode(s)
  redis.call('SET', KEYS[1], cur, 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, cur}
"#
);

// After a Redis restart: lift the version counter above every version this
// instance has seen, so that new records still compare as newer.
script!(
    BUMP,
    BUMP_LUA,
    r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"#
);

// The shared cookie secret: created once by whoever comes first.
script!(
    SECRET,
    SECRET_LUA,
    r#"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"#
);

// Drain (ARGV[2] = deadline) or enable (ARGV[2] = '') `pool:backend` (ARGV[1]).
// KEYS: the drain key, the index set of drains.
script!(
    DRAIN,
    DRAIN_LUA,
    r#"
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\n' .. ARGV[2])
return 1
"#
);

// Every drain as a flat list `pool:backend, deadline, ...` (ARGV[1] = drain key prefix).
script!(
    DRAINS,
    DRAINS_LUA,
    r#"
local out = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local d = redis.call('GET', ARGV[1] .. m)
  if d then
    out[#out + 1] = m
    out[#out + 1] = d
  else
    redis.call('SREM', KEYS[1], m)
  end
end
return out
"#
);

/// Every script's source, for loading them all after a (re)connect, before
/// pipelines (which cannot fall back from EVALSHA to EVAL on their own).
pub(super) fn all() -> [&'static str; 9] {
    [
        INSERT_LUA, CAS_LUA, TAKE_LUA, DELETE_LUA, TOUCH_LUA, BUMP_LUA, SECRET_LUA, DRAIN_LUA,
        DRAINS_LUA,
    ]
}

/// Key names under the configured prefix.
pub(super) struct Keys {
    prefix: String,
    pub(super) channel: String,
    pub(super) version: String,
    pub(super) secret: String,
    pub(super) drains: String,
    pub(super) drain_prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            channel: format!("{prefix}:events"),
            version: format!("{prefix}:ver"),
            secret: format!("{prefix}:secret"),
            drains: format!("{prefix}:drains"),
            drain_prefix: format!("{prefix}:drain:"),
        }
    }

    /// `{prefix}:s:{pool}:{key}`.
    pub(super) fn session(&self, pool: &str, key: &str) -> String {
        format!("{}:s:{pool}:{key}", self.prefix)
    }

    /// `{prefix}:lease:{name}`.
    pub(super) fn lease(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.prefix)
    }

    /// `{prefix}:drain:{pool}:{backend}` (ids never contain `:`).
    pub(super) fn drain(&self, pool: &str, backend: &str) -> String {
        format!("{}{pool}:{backend}", self.drain_prefix)
    }
}

/// A record as stored: the session and the version of its last change.
#[derive(Debug, Deserialize)]
pub(super) struct Stored {
    #[serde(default)]
    pub(super) v: u64,
    #[serde(flatten)]
    pub(super) session: Session,
}

pub(super) fn parse_stored(bytes: &[u8]) -> Option<Stored> {
    match serde_json::from_slice(bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "redis store: unreadable session record ignored");
            None
        }
    }
}

/// The JSON of a session as written by the scripts (which add `"v"`).
pub(super) fn record_json(session: &Session) -> String {
    // Serializing plain strings and integers cannot fail.
    serde_json::to_string(session).unwrap_or_else(|_| "{}".to_owned())
}

/// A script's `{flag, value}` answer; an empty value means none.
pub(super) fn outcome(value: &Value) -> Option<(i64, Option<&[u8]>)> {
    let Value::Array(items) = value else {
        return None;
    };
    let flag = match items.first()? {
        Value::Int(n) => *n,
        _ => return None,
    };
    let body = match items.get(1) {
        Some(Value::BulkString(b)) if !b.is_empty() => Some(b.as_slice()),
        _ => None,
    };
    Some((flag, body))
}

/// First line of every message.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Header<'a> {
    /// Instance that made the change.
    #[serde(borrow)]
    pub(super) i: Cow<'a, str>,
    /// `set`, `del`, `drain` or `enable`.
    #[serde(borrow)]
    pub(super) t: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) p: Cow<'a, str>,
    /// Session key, or backend id for drain/enable (keys may need JSON escapes).
    #[serde(borrow)]
    pub(super) k: Cow<'a, str>,
}

impl<'a> Header<'a> {
    pub(super) fn new(i: &'a str, t: &'a str, p: &'a str, k: &'a str) -> Header<'a> {
        Header {
            i: Cow::Borrowed(i),
            t: Cow::Borrowed(t),
            p: Cow::Borrowed(p),
            k: Cow::Borrowed(k),
        }
    }
}

impl Header<'_> {
    pub(super) fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Splits a message into its header and body.
pub(super) fn parse_message(payload: &[u8]) -> Option<(Header<'_>, &[u8])> {
    let split = payload.iter().position(|&b| b == b'\n')?;
    let header = serde_json::from_slice(&payload[..split]).ok()?;
    Some((header, &payload[split + 1..]))
}
