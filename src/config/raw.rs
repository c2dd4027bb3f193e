//! The raw, serde-shaped sections of `proxy.yaml` and their defaults.
//!
//! Every struct denies unknown keys. Fields stay close to the text (durations
//! and addresses are [`Scalar`]s) so the converters in `build`/`listener` can
//! report every bad value with its own key path; choices with a fixed set of
//! spellings are serde enums, so their message lists the accepted ones.
//! Absent optional keys take the defaults below.

use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use super::values::Scalar;

// --- defaults --------------------------------------------------------------
/// `admin.listen`: loopback only, the admin API is not for the open network.
pub(crate) const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// `server.shutdown_grace`: SIGTERM waits this long for live connections.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `server.upgrade_grace`: after `--upgrade` the old process keeps its connections this long.
pub(crate) const UPGRADE_GRACE: Duration = Duration::from_secs(10 * 60);
/// `server.max_connections`: whole process.
pub(crate) const SERVER_MAX_CONNECTIONS: usize = 50_000;
// `server.trusted_proxies`: none (empty list).
/// `server.threads`: 0 = one worker thread per core.
pub(crate) const THREADS: usize = 0;
/// `server.threads` upper bound (a typo guard).
pub(crate) const MAX_THREADS: usize = 1024;
// `store.kind`: embedded; `store.path`: none (memory only).
/// `store.session_ttl`: idle sessions expire after this.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// `store.max_sessions`.
pub(crate) const MAX_SESSIONS: usize = 1_000_000;
/// `store.provisional_ttl`: an inserted cookie that has not come back by then
/// was never kept (a prober, a client without cookies).
pub(crate) const PROVISIONAL_TTL: Duration = Duration::from_secs(120);
/// `store.redis.url`: a local Redis, database 0.
pub(crate) const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// `store.redis.prefix`: every key and the pub/sub channel start with `tether:`.
pub(crate) const REDIS_PREFIX: &str = "tether";
/// `store.redis.connect_timeout`.
pub(crate) const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `store.redis.command_timeout`: no call waits longer for Redis.
pub(crate) const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(200);
/// `store.redis.sentinel.nodes[*]`: the sentinel port when none is written.
pub(crate) const SENTINEL_PORT: u16 = 26379;
// `pools.*.hash`: maglev; `bounded_load`: none; `on_backend_down`: migrate;
// `failback`: stay.
/// `pools.*.drain_timeout`.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// `pools.*.close_spread`: a drained-out backend's live connections close over this window.
pub(crate) const CLOSE_SPREAD: Duration = Duration::from_secs(5);
/// `pools.*.resolve_interval`: backends named by host name are resolved again this often.
pub(crate) const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// `pools.*.timeouts.connect`.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `pools.*.timeouts.response_header`.
pub(crate) const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// `pools.*.timeouts.response_idle`: the longest quiet gap inside a response body
/// (Envoy's stream idle timeout, HAProxy's `timeout server`).
pub(crate) const RESPONSE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
// `pools.*.health`: absent = kind none (every backend counts as up). When the
// section is given, `kind` defaults to http and the values below apply.
/// `pools.*.health.path` (kind http).
pub(crate) const HEALTH_PATH: &str = "/healthz";
/// `pools.*.health.expect_status` (kind http).
pub(crate) const HEALTH_EXPECT_STATUS: u16 = 200;
/// `pools.*.health.interval`.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// `pools.*.health.timeout` (must not exceed the interval).
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// `pools.*.health.rise`: consecutive passes before a backend is up.
pub(crate) const HEALTH_RISE: u32 = 2;
/// `pools.*.health.fall`: consecutive failures before a backend is down.
pub(crate) const HEALTH_FALL: u32 = 2;
/// `pools.*.health.method` (kind http).
pub(crate) const HEALTH_METHOD: http::Method = http::Method::GET;
// `pools.*.health.host` (kind http): absent = the backend's `ip:port`.
/// `pools.*.health.slowstart`: zero = off (a backend takes its full share at once).
pub(crate) const HEALTH_SLOWSTART: Duration = Duration::ZERO;
// `pools.*.health.passive`: `{ enabled: true, on_5xx: false }`; with `kind: none`
// it defaults to off, since nothing would ever bring a passively downed backend back.
/// `pools.*.health.passive.max_ejected_percent`: the share of a pool passive
/// failures may hold down at once (Envoy's default is 10; one backend always may).
pub(crate) const PASSIVE_MAX_EJECTED_PERCENT: u8 = 50;
// `pools.*.notify`: absent = no notifications; `webhook` is required when given.
/// `pools.*.notify.before`: a drain is announced this long before its deadline.
pub(crate) const NOTIFY_BEFORE: Duration = Duration::from_secs(30);
/// `pools.*.backends[*].weight`.
pub(crate) const WEIGHT: u32 = 1;
// `listeners[*].protocol`: http. `proxy_protocol`: absent = off. `h2c`: false.
// `listeners[*].tls.alpn`: [h2, http/1.1] on https, none on tls listeners;
// `tls.default`: the only certificate when there is one (required with several).
// `pools.*.tls`: absent = plain TCP to the backends; `verify`: true; `ca`: the system's roots.
// `pools.*.send_proxy`: absent = no PROXY header to backends.
// `pools.*.protocol`: http1. `pools.*.health.service` (kind grpc): "" (the whole server).
/// `listeners[*].max_connections` (at most `server.max_connections`).
pub(crate) const LISTENER_MAX_CONNECTIONS: usize = 20_000;
/// `listeners[*].max_header_bytes`: larger request headers get 431.
pub(crate) const MAX_HEADER_BYTES: usize = 65_536;
/// `listeners[*].max_header_bytes` lower bound.
pub(crate) const MIN_HEADER_BYTES: usize = 1024;
/// `listeners[*].timeouts.client_header`: slowloris guard.
pub(crate) const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `listeners[*].timeouts.idle`: quiet connections and WebSockets.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `listeners[*].timeouts.keepalive`: wait for the next request on a kept-alive connection.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// `listeners[*].timeouts.half_closed`: a tunnel one side has closed ends
/// after this if the other side does not follow (HAProxy's `timeout client-fin`).
pub(crate) const HALF_CLOSED_TIMEOUT: Duration = Duration::from_secs(30);
/// `listeners[*].backlog`: the accept queue. A reconnect storm of thousands
/// of clients must fit: a SYN dropped on a full queue costs its client a 1 s
/// retransmit. The kernel caps it at `net.core.somaxconn`.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// `listeners[*].backlog` upper bound (the kernel's own limit on `somaxconn`).
pub(crate) const BACKLOG_MAX: u32 = 65_535;
// `listeners[*].affinity.fallback`: source_ip. `affinity.key` has no default.
// Cookie insert: `max_age` defaults to `store.session_ttl` (a cookie should not
// outlive its session); `secret_file` absent = secret generated once and kept
// in the store. Secrets and tokens are trimmed of surrounding whitespace.
/// Shortest accepted cookie secret, in bytes.
pub(crate) const MIN_SECRET_BYTES: usize = 16;
// `source_ip` masks: 32 (IPv4) and 128 (IPv6), i.e. one key per address.
/// `prefix.max_bytes`: how much of a connection's start is searched for the id.
pub(crate) const PREFIX_MAX_BYTES: usize = 512;
/// `prefix.max_bytes` upper bound: that much is buffered per connection.
pub(crate) const PREFIX_MAX_BYTES_LIMIT: usize = 65_536;
/// `prefix.timeout`: no match within this, the listener's fallback applies.
pub(crate) const PREFIX_TIMEOUT: Duration = Duration::from_secs(2);

/// The top-level keys.
pub(crate) const TOP_KEYS: &[&str] = &["admin", "server", "store", "pools", "listeners", "vip"];
/// `vip.lease`: 1 s, the shortest lease that takes over fastest (a dead
/// leader is replaced ⌈lease⌉ + 1.1 s after its last renewal, about 2.1 s;
/// 2 s would take 3.1 s, over issue 7's 3 s). The price: a renewal must
/// succeed within 800 ms of the previous one (see docs/config.md).
pub(crate) const VIP_LEASE: Duration = Duration::from_secs(1);
/// `vip.priority`.
pub(crate) const VIP_PRIORITY: u32 = 100;

/// `vip:`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "virtual IP settings like { address: 198.18.0.100/24, interface: eth0 }"
)]
pub(crate) struct RawVip {
    pub address: Scalar,
    pub interface: Scalar,
    pub lease: Option<Scalar>,
    pub renew: Option<Scalar>,
    pub priority: Option<u32>,
    pub preempt: Option<bool>,
    pub name: Option<Scalar>,
    pub min_replicas: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the admin settings (listen, token_file, protect_reads, hosts)"
)]
pub(crate) struct RawAdmin {
    pub listen: Option<Scalar>,
    pub token_file: Option<Scalar>,
    pub protect_reads: Option<bool>,
    /// Host names (beyond IP literals and localhost) the admin API answers to.
    pub hosts: Option<Vec<Scalar>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the server settings (shutdown_grace, upgrade_grace, max_connections, trusted_proxies, threads)"
)]
pub(crate) struct RawServer {
    pub shutdown_grace: Option<Scalar>,
    pub upgrade_grace: Option<Scalar>,
    pub max_connections: Option<usize>,
    pub trusted_proxies: Option<Vec<Scalar>>,
    pub threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the store settings (kind, path, session_ttl, max_sessions, provisional_ttl, redis)"
)]
pub(crate) struct RawStore {
    pub kind: Option<RawStoreKind>,
    pub path: Option<Scalar>,
    pub session_ttl: Option<Scalar>,
    pub max_sessions: Option<usize>,
    pub provisional_ttl: Option<Scalar>,
    pub redis: Option<RawRedis>,
}

/// `store.redis` (only with `kind: redis`).
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "redis settings like { url: \"redis://127.0.0.1:6379/0\", prefix: tether }"
)]
pub(crate) struct RawRedis {
    pub url: Option<Scalar>,
    pub prefix: Option<Scalar>,
    pub connect_timeout: Option<Scalar>,
    pub command_timeout: Option<Scalar>,
    pub password_file: Option<Scalar>,
    pub ca: Option<Scalar>,
    pub sentinel: Option<RawSentinel>,
    pub cluster: Option<RawCluster>,
}

/// `store.redis.cluster`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "cluster settings like { nodes: [\"10.0.0.1:6379\", \"10.0.0.2:6379\"] }"
)]
pub(crate) struct RawCluster {
    pub nodes: Vec<Scalar>,
}

/// `store.redis.sentinel`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "sentinel settings like { master: mymaster, nodes: [\"10.0.0.1:26379\"] }"
)]
pub(crate) struct RawSentinel {
    pub master: Scalar,
    pub nodes: Vec<Scalar>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawStoreKind {
    Embedded,
    Redis,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a pool: a mapping with `backends` and optional hash, health, timeouts, ..."
)]
pub(crate) struct RawPool {
    pub hash: Option<RawHash>,
    pub bounded_load: Option<f64>,
    pub on_backend_down: Option<RawOnBackendDown>,
    pub failback: Option<RawFailback>,
    pub drain_timeout: Option<Scalar>,
    pub close_spread: Option<Scalar>,
    pub resolve_interval: Option<Scalar>,
    pub timeouts: Option<RawPoolTimeouts>,
    pub health: Option<RawHealth>,
    pub notify: Option<RawNotify>,
    pub send_proxy: Option<RawProxyVersion>,
    pub tls: Option<RawPoolTls>,
    pub protocol: Option<RawUpstreamProtocol>,
    /// Each backend is deserialized on its own (see `build`).
    pub backends: Option<Value>,
}

/// `pools.NAME.tls`: TLS to the backends.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "upstream TLS settings like { sni: app.internal, verify: true, ca: ca.pem }"
)]
pub(crate) struct RawPoolTls {
    pub sni: Option<Scalar>,
    pub verify: Option<bool>,
    pub ca: Option<Scalar>,
}

/// `pools.NAME.protocol`: how requests reach the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawUpstreamProtocol {
    Http1,
    H2,
    H2c,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawProxyProtocol {
    Accept,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawHash {
    Maglev,
    Ketama,
    Rendezvous,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawOnBackendDown {
    Migrate,
    Keep,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFailback {
    Stay,
    Return,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "pool timeouts like { connect: 2s, response_header: 30s, response_idle: 5m }"
)]
pub(crate) struct RawPoolTimeouts {
    pub connect: Option<Scalar>,
    pub response_header: Option<Scalar>,
    pub response_idle: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "health check settings like { kind: http, path: /healthz, interval: 1s }"
)]
pub(crate) struct RawHealth {
    pub kind: Option<RawHealthKind>,
    pub path: Option<String>,
    /// Wide integers so out-of-range codes get our message, not serde's.
    pub expect_status: Option<Vec<i64>>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub method: Option<String>,
    pub host: Option<String>,
    /// `kind: grpc`: the service name asked about (`""`: the whole server).
    pub service: Option<String>,
    pub slowstart: Option<Scalar>,
    pub passive: Option<RawPassive>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "passive health settings like { enabled: true, on_5xx: false, max_ejected_percent: 50 }"
)]
pub(crate) struct RawPassive {
    pub enabled: Option<bool>,
    pub on_5xx: Option<bool>,
    /// Wide so out-of-range values get our message, not serde's.
    pub max_ejected_percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "notification settings like { webhook: \"http://127.0.0.1:8000/events\", before: 30s }"
)]
pub(crate) struct RawNotify {
    pub webhook: Scalar,
    pub before: Option<Scalar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawHealthKind {
    Http,
    Tcp,
    Grpc,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a backend like { id: app-1, addr: \"127.0.0.1:9001\" }"
)]
pub(crate) struct RawBackend {
    pub id: Scalar,
    pub addr: Scalar,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a listener: a mapping with name, bind, pool and affinity"
)]
pub(crate) struct RawListener {
    pub name: Scalar,
    pub bind: Scalar,
    pub protocol: Option<RawProtocol>,
    pub pool: Scalar,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub backlog: Option<u32>,
    pub timeouts: Option<RawListenerTimeouts>,
    pub proxy_protocol: Option<RawProxyProtocol>,
    pub tls: Option<RawListenerTls>,
    pub h2c: Option<bool>,
    pub http1_engine: Option<RawHttp1Engine>,
    pub access_log: Option<bool>,
    pub affinity: RawAffinity,
}

/// `listeners[*].tls` (https and tls listeners).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "TLS settings like { certs: [{ name: site, cert: site.crt, key: site.key }], default: site }"
)]
pub(crate) struct RawListenerTls {
    /// Each certificate is deserialized on its own (see `tls`).
    pub certs: Option<Value>,
    pub default: Option<Scalar>,
    pub alpn: Option<Vec<RawAlpn>>,
}

/// `listeners[*].tls.certs[*]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a certificate like { name: site, cert: certs/site.crt, key: certs/site.key }"
)]
pub(crate) struct RawCert {
    pub name: Scalar,
    pub cert: Scalar,
    pub key: Scalar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum RawAlpn {
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "http/1.1")]
    Http11,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawHttp1Engine {
    Tether,
    Pingora,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawProtocol {
    Http,
    Https,
    Tcp,
    Tls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "listener timeouts like { client_header: 10s, idle: 1h, keepalive: 60s, half_closed: 30s }"
)]
pub(crate) struct RawListenerTimeouts {
    pub client_header: Option<Scalar>,
    pub idle: Option<Scalar>,
    pub keepalive: Option<Scalar>,
    pub half_closed: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "affinity settings like { key: source_ip, fallback: random }"
)]
pub(crate) struct RawAffinity {
    /// `source_ip` or a one-entry mapping; converted by hand in `listener`.
    pub key: Value,
    pub fallback: Option<RawFallback>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFallback {
    SourceIp,
    Random,
    Reject,
}

/// `key: { cookie: { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "cookie settings like { name: TETHER, insert: true }"
)]
pub(crate) struct RawCookie {
    pub name: Scalar,
    pub insert: Option<bool>,
    pub max_age: Option<Scalar>,
    pub secret_file: Option<Scalar>,
}

/// `key: { source_ip: { ... } }`.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "source_ip masks like { ipv4_mask: 24, ipv6_mask: 64 }"
)]
pub(crate) struct RawSourceIp {
    pub ipv4_mask: Option<u8>,
    pub ipv6_mask: Option<u8>,
}

/// `key: { prefix: { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "prefix settings like { pattern: \"^HELLO device=([a-z0-9]+)\\n\", max_bytes: 512, timeout: 2s }"
)]
pub(crate) struct RawPrefix {
    pub pattern: String,
    pub max_bytes: Option<usize>,
    pub timeout: Option<Scalar>,
}
