//! What the Redis store writes to Redis, and how: key names, the Lua scripts
//! that make each ownership change atomic, and the wire formats of records and
//! pub/sub messages.
//!
//! Every change goes through one script that checks, writes, stamps a new
//! version and publishes on `{prefix}:events` in a single step, so two instances
//! racing on a key are serialized by Redis and every cache sees the same order
//! for that key. A stored record is the JSON of [`Session`] plus `"v"`, its
//! version; caches apply a record only if its version is newer than theirs, so
//! a late pub/sub message can never undo a newer reply.
//!
//! Versions are per key: the master's clock in unix ms (`TIME`), or the key's
//! previous version + 1 if that is not below it, so they only grow for a key
//! while it exists, and a script touches no other key: on a Redis Cluster every
//! session key hashes to its own slot (no hash tag), so sessions spread over
//! every master. Versions are compared per key only, so the clocks of different
//! masters need not agree. Milliseconds keep a version within the 14 digits
//! that Lua's cjson writes exactly.
//!
//! Compatibility: earlier releases numbered versions from one global counter,
//! `{prefix}:ver` (INCR): small numbers, which any clock version exceeds, so
//! records written before an upgrade compare as older and are read as they are.
//! On a single Redis (not a cluster, which those releases did not support) the
//! scripts still lift that counter to every version they stamp, so that an
//! instance of an earlier release running beside this one during a rolling
//! upgrade stamps its changes above them too. Key names are unchanged.
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
    ($name:ident, $src:ident, $code:expr) => {
        const $src: &str = $code;
        pub(super) static $name: LazyLock<Script> = LazyLock::new(|| Script::new($src));
    };
}

/// `version(previous)`: the version of a change (see the module header).
/// KEYS[2], when given, is the legacy counter kept in step (single Redis only).
/// `replicate_commands` lets Redis < 5 replicate a script that reads `TIME`
/// before writing (later versions always replicate effects).
macro_rules! version_lua {
    () => {
        r#"
if redis.replicate_commands then redis.replicate_commands() end
local function version(prev)
  local t = redis.call('TIME')
  local v = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if prev and prev >= v then v = prev + 1 end
  if KEYS[2] then
    local g = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
    if g >= v then v = g + 1 end
    redis.call('SET', KEYS[2], v)
  end
  return v
end
"#
    };
}

// New session: write unless the key exists. Returns `{1, record}` when written,
// `{0, current}` when another owner was there first.
// KEYS: session[, legacy counter]. ARGV: record (JSON without v), ttl ms, channel, header.
script!(
    INSERT,
    INSERT_LUA,
    concat!(
        version_lua!(),
        r#"
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local v = version(nil)
local rec = '{"v":' .. v .. ',' .. string.sub(ARGV[1], 2)
redis.call('SET', KEYS[1], rec, 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. '\n' .. rec)
return {1, rec}
"#
    )
);

// Re-pin: write unless the current owner is someone other than ARGV[1]:
// `{1, record}` when written, `{0, current}` otherwise. A missing key is
// written too: it expired or Redis lost it, and nobody else owns it.
// KEYS: session[, legacy counter]. ARGV: expected, record, ttl ms, channel, header.
script!(
    CAS,
    CAS_LUA,
    concat!(
        version_lua!(),
        r#"
local cur = redis.call('GET', KEYS[1])
local prev = nil
if cur then
  local s = cjson.decode(cur)
  if s.backend ~= ARGV[1] then return {0, cur} end
  prev = tonumber(s.v)
end
local v = version(prev)
local rec = '{"v":' .. v .. ',' .. string.sub(ARGV[2], 2)
redis.call('SET', KEYS[1], rec, 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. '\n' .. rec)
return {1, rec}
"#
    )
);

// Clear moved_from/move_reason if set for owner ARGV[1]: exactly one caller,
// across every instance, gets `{1, record}`; the others `{0, current or ''}`.
script!(
    TAKE,
    TAKE_LUA,
    concat!(
        version_lua!(),
        r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0, ''} end
local s = cjson.decode(cur)
if s.backend ~= ARGV[1] or (s.moved_from == nil and s.move_reason == nil) then
  return {0, cur}
end
s.moved_from = nil
s.move_reason = nil
s.v = version(tonumber(s.v))
local rec = cjson.encode(s)
redis.call('SET', KEYS[1], rec, 'KEEPTTL')
redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\n' .. rec)
return {1, rec}
"#
    )
);

// Forget a key. `{version of the delete, ''}`, or `{0, ''}` if it did not exist.
script!(
    DELETE,
    DELETE_LUA,
    concat!(
        version_lua!(),
        r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return {0, ''} end
local ok, s = pcall(cjson.decode, cur)
local v = version(ok and type(s) == 'table' and tonumber(s.v) or nil)
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. '\n' .. v)
return {v, ''}
"#
    )
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

// The shared cookie secret: created once by whoever comes first.
script!(
    SECRET,
    SECRET_LUA,
    r#"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"#
);

// Drain (ARGV[1] = deadline) or enable (ARGV[1] = '') the backend whose drain
// key is KEYS[1], and tell everyone. The index set of drains is a key of its
// own (another slot on a cluster): `operator.rs` updates it beside this.
script!(
    DRAIN,
    DRAIN_LUA,
    r#"
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\n' .. ARGV[1])
return 1
"#
);

/// Every script's source, for loading them all after a (re)connect, before
/// pipelines (which cannot fall back from EVALSHA to EVAL on their own).
pub(super) fn all() -> [&'static str; 7] {
    [
        INSERT_LUA, CAS_LUA, TAKE_LUA, DELETE_LUA, TOUCH_LUA, SECRET_LUA, DRAIN_LUA,
    ]
}

/// Key names under the configured prefix.
pub(super) struct Keys {
    prefix: String,
    pub(super) channel: String,
    /// The legacy global version counter, kept in step on a single Redis only.
    pub(super) version: Option<String>,
    pub(super) secret: String,
    pub(super) drains: String,
    pub(super) drain_prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str, cluster: bool) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
            channel: format!("{prefix}:events"),
            version: (!cluster).then(|| format!("{prefix}:ver")),
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
