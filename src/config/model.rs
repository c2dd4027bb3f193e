//! The validated, typed configuration: what the rest of tether reads.
//!
//! Nothing here is a string that still needs parsing: addresses are `SocketAddr`,
//! durations are `Duration`, choices are enums carrying their data. A `Snapshot`
//! is built once per load by `config::load` and then shared read-only behind an
//! `ArcSwap`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::model_tls::{ListenerTls, PoolTls};

/// One whole, validated configuration file.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The file this snapshot came from (for messages and reloads).
    pub source: PathBuf,
    pub admin: Admin,
    pub server: Server,
    pub store: Store,
    /// Pools in file order; names are unique.
    pub pools: Vec<Pool>,
    /// Listeners in file order; names and binds are unique.
    pub listeners: Vec<Listener>,
    /// The virtual IP this node contends for; `None`: no VIP.
    pub vip: Option<Vip>,
}

/// `vip:`: one address shared by the tether nodes on one Redis; the holder of
/// the lease puts it on `interface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// The address with its prefix length, e.g. 198.18.0.100/24.
    pub address: IpNet,
    pub interface: String,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// How often the leader renews (and a standby tries to acquire).
    pub renew: Duration,
    pub priority: u32,
    /// A node of higher priority takes the address from a lower one.
    pub preempt: bool,
    /// This node's name (shown as the holder).
    pub name: String,
    /// Replicas a lease change must reach (`WAIT`), at most those connected.
    pub min_replicas: u32,
}

impl Snapshot {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    /// Valid but risky settings, said by `tether check` and logged at start and reload.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if !self.admin.listen.ip().is_loopback() && self.admin.token.is_none() {
            w.push(format!(
                "{}: admin.listen {} is reachable beyond this host and admin.token_file is not set: \
                 anyone who reaches it can drain backends, delete sessions and reload",
                self.source.display(),
                self.admin.listen
            ));
        }
        if let Some(lease) = self.vip.as_ref().and_then(super::vip::lease_warning) {
            w.push(format!("{}: {lease}", self.source.display()));
        }
        w
    }
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Bearer token read from `token_file`, trimmed. `None`: mutating calls are open.
    pub token: Option<Arc<str>>,
    /// Read-only calls and `/metrics` need the token too.
    pub protect_reads: bool,
    /// Host names, lower case, that requests may name in `Host` besides IP
    /// literals and `localhost` (any port); others get 421 (DNS rebinding).
    pub hosts: Vec<Arc<str>>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub shutdown_grace: Duration,
    pub upgrade_grace: Duration,
    /// Whole-process connection cap (all listeners together).
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-For` / PROXY header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Worker threads of the proxy runtime; 0 means one per core.
    pub threads: usize,
}

impl Server {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pub kind: StoreKind,
    pub session_ttl: Duration,
    pub max_sessions: usize,
    /// How long an inserted cookie's session stays provisional (memory only)
    /// waiting for the cookie to come back.
    pub provisional_ttl: Duration,
}

// Built once per load and never copied around on a hot path: boxing the
// Redis settings would buy nothing but noise at every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// In-process map; persisted to `path` when set.
    Embedded { path: Option<PathBuf> },
    /// Shared by every instance pointing at the same Redis and `prefix`.
    Redis(RedisConfig),
}

/// `store.redis`: where the shared store lives. The URL is parsed at load, so
/// the store only ever sees a host, a port and a database number.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `rediss://`: TLS (rustls) to Redis, the sentinels and every cluster node.
    pub tls: bool,
    /// `ca`: the PEM certificates that TLS trusts instead of the system roots.
    pub ca: Option<Vec<u8>>,
    /// Host name or IP (IPv6 without brackets); unused with `sentinel` or `cluster`.
    pub host: String,
    pub port: u16,
    pub db: i64,
    pub username: Option<String>,
    /// From the URL, or `password_file` (which wins).
    pub password: Option<String>,
    /// Every key and the pub/sub channel start with `{prefix}:`.
    pub prefix: String,
    pub connect_timeout: Duration,
    /// Bound on every command: no call waits longer for Redis.
    pub command_timeout: Duration,
    pub sentinel: Option<RedisSentinel>,
    /// Redis Cluster: the seed nodes (exclusive with `sentinel`).
    pub cluster: Option<RedisCluster>,
}

/// `store.redis.cluster`: any reachable seed tells the cluster's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisCluster {
    /// `(host, port)` of each seed node.
    pub nodes: Vec<(String, u16)>,
}

/// `store.redis.sentinel`: the master is looked up through these sentinels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSentinel {
    pub master: String,
    /// `(host, port)` of each sentinel.
    pub nodes: Vec<(String, u16)>,
}

impl RedisConfig {
    /// How messages name the server: `HOST:PORT`, or the sentinel master.
    pub fn target(&self) -> String {
        if let Some(c) = &self.cluster {
            let seeds: Vec<String> = (c.nodes.iter()).map(|(h, p)| host_port(h, *p)).collect();
            return format!("cluster {}", seeds.join(","));
        }
        match &self.sentinel {
            Some(s) => format!("sentinel master {}", s.master),
            None => host_port(&self.host, self.port),
        }
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn host_port(host: &str, port: u16) -> String {
    match host.contains(':') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// Hand-written so that a logged configuration never shows the password.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("tls", &self.tls)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("sentinel", &self.sentinel)
            .field("cluster", &self.cluster)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    Maglev,
    Ketama,
    Rendezvous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBackendDown {
    Migrate,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    Stay,
    Return,
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: Arc<str>,
    pub hash: HashKind,
    /// `Some(c)`: no backend above `c` x the mean of live sessions (c > 1.0).
    pub bounded_load: Option<f64>,
    pub on_backend_down: OnBackendDown,
    pub failback: Failback,
    pub drain_timeout: Duration,
    /// Backends named by host name are resolved again this often.
    pub resolve_interval: Duration,
    /// A drained-out backend's live connections close spread over this window
    /// (HAProxy's close-spread-time), so clients do not all reconnect at once.
    pub close_spread: Duration,
    pub timeouts: PoolTimeouts,
    pub health: Health,
    /// Webhook told about drains and moved sessions; `None`: nobody is told.
    pub notify: Option<Notify>,
    /// A PROXY header sent first on each backend connection of a tcp listener,
    /// so backends see the real client; `None`: nothing is sent.
    pub send_proxy: Option<ProxyVersion>,
    /// TLS to the backends; `None`: plain TCP.
    pub tls: Option<PoolTls>,
    /// What HTTP requests speak to the backends.
    pub protocol: UpstreamProtocol,
    /// In file order; ids are unique within the pool.
    pub backends: Vec<Backend>,
}

/// `pools.NAME.notify`: where move notifications go and how early a drain is announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub webhook: Webhook,
    /// A drain is announced this long before its deadline.
    pub before: Duration,
}

/// A parsed `http://host[:port][/path]` webhook URL (https is not supported yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Host name or IP address, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Webhook {
    /// The `Host` header value: `host` or `host:port`, IPv6 literals bracketed.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PoolTimeouts {
    pub connect: Duration,
    /// The wait for a response head, once the request is sent.
    pub response_header: Duration,
    /// The longest quiet gap while a response body streams.
    pub response_idle: Duration,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// After a backend comes back up, its share of new sessions ramps up
    /// linearly over this window (no thundering herd); zero = off.
    pub slowstart: Duration,
    pub passive: Passive,
}

/// `pools.NAME.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over the pool's TLS when set).
    Http1,
    /// HTTP/2 over the pool's TLS (ALPN h2), streams multiplexed.
    H2,
    /// Cleartext HTTP/2 with prior knowledge, streams multiplexed.
    H2c,
}

impl UpstreamProtocol {
    pub fn is_h2(self) -> bool {
        self != UpstreamProtocol::Http1
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

#[derive(Debug, Clone)]
pub enum HealthKind {
    None,
    Tcp,
    /// `grpc.health.v1.Health/Check` over HTTP/2 (TLS with ALPN h2 when the
    /// pool has `tls`, else h2c): up when the answer is `SERVING`.
    Grpc {
        service: String,
    },
    Http {
        /// Any valid method token; standard methods are upper-cased.
        method: http::Method,
        path: String,
        /// `Host` header of the probe; `None`: the backend's `ip:port`.
        host: Option<String>,
        expect_status: Vec<u16>,
    },
}

/// Passive health: failures seen on real traffic count towards `fall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    pub enabled: bool,
    /// Also count 5xx responses as failures (off: a 5xx is the app's answer).
    pub on_5xx: bool,
    /// At most this share (0-100) of the pool's backends may be held down by
    /// passive failures at once, rounded down; one backend always may.
    pub max_ejected_percent: u8,
}

impl Default for Passive {
    fn default() -> Self {
        Passive {
            enabled: true,
            on_5xx: false,
            max_ejected_percent: super::raw::PASSIVE_MAX_EJECTED_PERCENT,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// The backend's identity: sessions are stored against it.
    pub id: Arc<str>,
    pub addr: BackendAddr,
    /// >= 1 (pingora's ketama panics on 0).
    pub weight: u32,
}

/// Where a backend listens: an address, or a host name resolved at load and
/// again every `resolve_interval` (the system resolver: /etc/hosts, DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    Ip(SocketAddr),
    Name { host: Arc<str>, port: u16 },
}

impl BackendAddr {
    /// The literal address; `None` for a name that needs resolving.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            BackendAddr::Ip(a) => Some(*a),
            BackendAddr::Name { .. } => None,
        }
    }
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddr::Ip(a) => write!(f, "{a}"),
            BackendAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// PROXY protocol versions: v1 is text, v2 binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    /// TLS terminated, then HTTP (h2 or HTTP/1.1 by ALPN).
    Https,
    /// Plain TCP: bytes are copied both ways (`l4`).
    Tcp,
    /// TLS terminated, then the decrypted bytes copied as for `Tcp`.
    Tls,
}

impl Protocol {
    /// Does tether read HTTP requests on this listener (so HTTP keys apply)?
    pub fn reads_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }

    /// Does tether terminate TLS on this listener?
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub protocol: Protocol,
    pub pool: Arc<str>,
    pub max_connections: usize,
    pub timeouts: ListenerTimeouts,
    /// Largest request header block accepted; bigger ones get 431.
    pub max_header_bytes: usize,
    /// The listening socket's accept queue (`listen(2)` backlog).
    pub backlog: u32,
    /// Read a PROXY v1/v2 header first (believed only from `trusted_proxies`).
    pub proxy_protocol: bool,
    /// `https` and `tls` listeners: always `Some`; others: `None`.
    pub tls: Option<ListenerTls>,
    /// Plain http listeners: serve HTTP/2 to clients that start with its preface.
    pub h2c: bool,
    /// Who serves HTTP/1.1 clients (HTTP/2 is always pingora's).
    pub http1_engine: Http1Engine,
    /// One log line per request (http, https) or connection (tcp, tls), target `tether::access`.
    pub access_log: bool,
    pub affinity: Affinity,
}

/// The implementation that serves a listener's HTTP/1.1 clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http1Engine {
    /// tether's own lean path (the default).
    Tether,
    /// pingora's proxy loop: the reference implementation, kept for comparison.
    Pingora,
}

#[derive(Debug, Clone, Copy)]
pub struct ListenerTimeouts {
    /// Whole request header must arrive within this (slowloris guard).
    pub client_header: Duration,
    /// Quiet connections (keepalive waits, WebSockets, TCP sessions) are closed after this.
    pub idle: Duration,
    /// How long an idle keepalive connection waits for its next request.
    pub keepalive: Duration,
    /// A tunnel (WebSocket, tcp session) one side has closed ends after this
    /// unless the other side closes too.
    pub half_closed: Duration,
}

#[derive(Debug, Clone)]
pub struct Affinity {
    pub key: Key,
    pub fallback: Fallback,
}

#[derive(Debug, Clone)]
pub enum Key {
    Cookie(CookieKey),
    Header {
        name: http::HeaderName,
    },
    Query {
        name: String,
    },
    SourceIp(IpMask),
    /// tcp listeners: the TLS ClientHello's server name (passthrough, no termination).
    Sni,
    /// tcp listeners: an id matched in the connection's first bytes.
    Prefix(PrefixKey),
}

/// `{ prefix: { pattern, max_bytes, timeout } }`.
#[derive(Debug, Clone)]
pub struct PrefixKey {
    /// Compiled at load; has exactly one capture group, which is the key.
    pub pattern: regex::bytes::Regex,
    /// At most this many bytes are read looking for a match.
    pub max_bytes: usize,
    /// No match within this: the listener's fallback.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct CookieKey {
    pub name: String,
    /// `Some`: tether issues its own signed cookie; `None`: the app's cookie is used as is.
    pub insert: Option<CookieInsert>,
}

#[derive(Debug, Clone)]
pub struct CookieInsert {
    pub max_age: Duration,
    /// HMAC secret read from `secret_file`; `None`: generated once and kept in the store.
    pub secret: Option<Vec<u8>>,
}

/// How much of a client address forms its key (whole networks can share one backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpMask {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for IpMask {
    fn default() -> Self {
        IpMask {
            ipv4: 32,
            ipv6: 128,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    SourceIp,
    Random,
    Reject,
}
