//! Integration tests of `tether::config`: the shipped `proxy.yaml`, a table of
//! broken configurations with their exact locations, error collection across
//! pieces, YAML syntax errors, and files resolved relative to the config.

use std::path::Path;
use std::time::Duration;

use tether::config::{
    self, Alpn, ConfigError, ConfigErrors, HealthKind, Key, Protocol, StoreKind, UpstreamProtocol,
};

#[path = "common/tls.rs"]
mod tlsh;

/// A small valid config; the line numbers below refer to it.
const BASE: &str = "\
pools:
  app:
    backends:
      - { id: app-1, addr: \"127.0.0.1:9001\" }
      - { id: app-2, addr: \"127.0.0.1:9002\" }
listeners:
  - name: web
    bind: 127.0.0.1:8080
    pool: app
    affinity:
      key: { cookie: { name: TETHER, insert: true } }
";

fn file() -> &'static Path {
    Path::new("test.yaml")
}

fn errors(text: &str) -> ConfigErrors {
    match config::parse(file(), text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

/// `BASE` with `from` replaced by `to` (which must occur exactly once).
fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "`{from}` must occur once in BASE"
    );
    BASE.replacen(from, to, 1)
}

struct Case {
    name: &'static str,
    yaml: String,
    path: &'static str,
    line: usize,
    col: Option<usize>,
    message: &'static str,
}

fn case(
    name: &'static str,
    yaml: String,
    path: &'static str,
    line: usize,
    col: Option<usize>,
    message: &'static str,
) -> Case {
    Case {
        name,
        yaml,
        path,
        line,
        col,
        message,
    }
}

const COOKIE: &str = "{ cookie: { name: TETHER, insert: true } }";

/// `BASE` as a tcp listener keyed by `key`.
fn tcp(key: &str) -> String {
    edit("    pool: app\n", "    pool: app\n    protocol: tcp\n").replace(COOKIE, key)
}

fn with_health(health: &str) -> String {
    edit(
        "    backends:\n",
        &format!("    health: {health}\n    backends:\n"),
    )
}

fn broken_configs() -> Vec<Case> {
    vec![
        case("unknown top-level key", format!("{BASE}extra: 1\n"), "extra", 12, Some(1), "unknown field `extra`"),
        case(
            "unknown backend key",
            edit("9001\" }", "9001\", wieght: 2 }"),
            "pools.app.backends[0].wieght",
            4,
            Some(46),
            "unknown field `wieght`",
        ),
        case("zero weight", edit("9002\" }", "9002\", weight: 0 }"), "pools.app.backends[1].weight", 5, Some(54), "weight must be >= 1"),
        case("duplicate backend id", edit("app-2", "app-1"), "pools.app.backends[1].id", 5, Some(15), "duplicate backend id `app-1` (first used at line 4)"),
        case("empty backend list", edit("    backends:\n      - { id: app-1, addr: \"127.0.0.1:9001\" }\n      - { id: app-2, addr: \"127.0.0.1:9002\" }\n", "    backends: []\n"), "pools.app.backends", 3, Some(5), "at least one backend"),
        case("missing pool", edit("pool: app", "pool: api"), "listeners[0].pool", 9, Some(11), "no pool named `api` (pools: app)"),
        case("bad host name", edit("127.0.0.1:9001", "-bad_host-:9001"), "pools.app.backends[0].addr", 4, Some(28), "is neither an IP address nor a valid host name"),
        case("bad IPv4 address", edit("127.0.0.1:9001", "300.1.2.3:9001"), "pools.app.backends[0].addr", 4, Some(28), "`300.1.2.3` is not a valid IP address"),
        case("backend port 0", edit("127.0.0.1:9001", "app.internal:0"), "pools.app.backends[0].addr", 4, Some(28), "a backend's port cannot be 0"),
        case("address without port", edit("bind: 127.0.0.1:8080", "bind: 127.0.0.1"), "listeners[0].bind", 8, Some(11), "has no port"),
        case("bad duration", edit("    backends:\n", "    drain_timeout: soon\n    backends:\n"), "pools.app.drain_timeout", 3, Some(20), "invalid duration `soon`"),
        case("bounded_load not above 1", edit("    backends:\n", "    bounded_load: 1.0\n    backends:\n"), "pools.app.bounded_load", 3, Some(19), "bounded_load must be greater than 1.0"),
        case("https webhook", edit("    backends:\n", "    notify: { webhook: \"https://hooks.example/tether\" }\n    backends:\n"), "pools.app.notify.webhook", 3, Some(24), "https webhooks are not supported yet"),
        case("webhook not a URL", edit("    backends:\n", "    notify: { webhook: hooks.example/tether, before: 1m }\n    backends:\n"), "pools.app.notify.webhook", 3, Some(24), "`hooks.example/tether` is not an http:// URL"),
        case("zero max_age", edit("insert: true", "insert: true, max_age: 0s"), "listeners[0].affinity.key.cookie.max_age", 11, Some(61), "must be greater than zero"),
        case("zero drain_timeout", edit("    backends:\n", "    drain_timeout: 0s\n    backends:\n"), "pools.app.drain_timeout", 3, Some(20), "must be greater than zero"),
        case("zero connect timeout", edit("    backends:\n", "    timeouts: { connect: 0s }\n    backends:\n"), "pools.app.timeouts.connect", 3, Some(26), "must be greater than zero"),
        case("zero rise", with_health("{ rise: 0 }"), "pools.app.health.rise", 3, Some(21), "rise must be >= 1"),
        case("status out of range", with_health("{ expect_status: [200, 700] }"), "pools.app.health.expect_status[1]", 3, Some(36), "status 700 is not an HTTP status (100-599)"),
        case("health timeout above interval", with_health("{ interval: 1s, timeout: 2s }"), "pools.app.health.timeout", 3, Some(38), "must not exceed the interval"),
        case("bad health method", with_health("{ method: \"GE T\" }"), "pools.app.health.method", 3, Some(23), "`GE T` is not an HTTP method"),
        case("health method with kind tcp", with_health("{ kind: tcp, method: HEAD }"), "pools.app.health.method", 3, Some(26), "method only applies to `kind: http`"),
        case("bad health host", with_health("{ host: \"a b\" }"), "pools.app.health.host", 3, Some(21), "health host `a b` must be a host name or host:port"),
        case("bad slowstart", with_health("{ slowstart: soon }"), "pools.app.health.slowstart", 3, Some(26), "invalid duration `soon`"),
        case("unknown passive key", with_health("{ passive: { enabled: true, on5xx: true } }"), "pools.app.health.passive.on5xx", 3, Some(41), "unknown field `on5xx`"),
        case("passive without active checks", with_health("{ kind: none, passive: { enabled: true } }"), "pools.app.health.passive.enabled", 3, Some(47), "passive health needs an active check"),
        case("max_ejected_percent above 100", with_health("{ passive: { max_ejected_percent: 101 } }"), "pools.app.health.passive.max_ejected_percent", 3, Some(47), "max_ejected_percent must be an integer from 0 to 100, not 101"),
        case("max_ejected_percent without passive health", with_health("{ kind: none, passive: { max_ejected_percent: 10 } }"), "pools.app.health.passive.max_ejected_percent", 3, Some(59), "only applies when passive health is enabled"),
        case("zero listener max_connections", edit("    pool: app\n", "    pool: app\n    max_connections: 0\n"), "listeners[0].max_connections", 10, Some(22), "max_connections must be >= 1"),
        case("listener above server max_connections", format!("server: {{ max_connections: 100 }}\n{}", edit("    pool: app\n", "    pool: app\n    max_connections: 200\n")), "listeners[0].max_connections", 11, Some(22), "max_connections 200 exceeds server.max_connections 100"),
        case("no listeners", BASE[..BASE.find("listeners:").unwrap_or(0)].to_owned(), "listeners", 1, Some(1), "at least one listener is required"),
        case("no pools", format!("pools: {{}}\n{}", &BASE[BASE.find("listeners:").unwrap_or(0)..]), "pools", 1, Some(1), "at least one pool is required"),
        case("admin on a listener bind", format!("admin: {{ listen: \"127.0.0.1:8080\" }}\n{BASE}"), "listeners[0].bind", 9, Some(11), "collides with admin.listen 127.0.0.1:8080"),
        case("invalid header name", edit("{ cookie: { name: TETHER, insert: true } }", "{ header: \"X Device\" }"), "listeners[0].affinity.key.header", 11, Some(22), "`X Device` is not a valid header name"),
        case("invalid pool id", edit("  app:\n", "  \"my app\":\n").replace("pool: app", "pool: my app"), "pools.my app", 2, Some(3), "pool name `my app` must be non-empty and use only A-Z a-z 0-9 . _ -"),
        case("invalid backend id", edit("app-2", "app/2"), "pools.app.backends[1].id", 5, Some(15), "backend id `app/2` must be non-empty"),
        case("duplicate listener name", format!("{BASE}  - name: web\n    bind: 127.0.0.1:8081\n    pool: app\n    affinity: {{ key: source_ip }}\n"), "listeners[1].name", 12, Some(11), "duplicate listener name `web` (first used at line 7)"),
        case("duplicate bind", format!("{BASE}  - name: web2\n    bind: 127.0.0.1:8080\n    pool: app\n    affinity: {{ key: source_ip }}\n"), "listeners[1].bind", 13, Some(11), "duplicate bind 127.0.0.1:8080: already used by listener `web` (line 8)"),
        case("redis url scheme", format!("store: {{ kind: redis, redis: {{ url: \"http://h:6379\" }} }}\n{BASE}"), "store.redis.url", 1, Some(37), "`http` is not a redis URL"),
        case("redis url port", format!("store: {{ kind: redis, redis: {{ url: \"redis://127.0.0.1:99999/0\" }} }}\n{BASE}"), "store.redis.url", 1, Some(37), "invalid port `99999` (must be 1-65535)"),
        case("redis url db", format!("store: {{ kind: redis, redis: {{ url: \"redis://h:6379/x\" }} }}\n{BASE}"), "store.redis.url", 1, Some(37), "database `x` in redis.url must be a number"),
        case("redis url query", format!("store: {{ kind: redis, redis: {{ url: \"redis://h/0?timeout=1\" }} }}\n{BASE}"), "store.redis.url", 1, Some(37), "takes no query parameters"),
        case("redis url without host", format!("store: {{ kind: redis, redis: {{ url: \"redis:///0\" }} }}\n{BASE}"), "store.redis.url", 1, Some(37), "redis.url has no host"),
        case("redis url password not echoed", format!("store: {{ kind: redis, redis: {{ url: \"redis://:pw@h:0\" }} }}\n{BASE}"), "store.redis.url", 1, Some(37), "redis.url: invalid port `0`"),
        case("redis settings without kind", format!("store: {{ redis: {{ url: \"redis://h\" }} }}\n{BASE}"), "store.redis", 1, Some(10), "redis settings need `kind: redis`"),
        case("path with kind redis", format!("store: {{ kind: redis, path: a.db }}\n{BASE}"), "store.path", 1, Some(23), "path only applies to `kind: embedded`"),
        case("zero redis command_timeout", format!("store: {{ kind: redis, redis: {{ command_timeout: 0s }} }}\n{BASE}"), "store.redis.command_timeout", 1, Some(49), "must be greater than zero"),
        case("unknown redis key", format!("store: {{ kind: redis, redis: {{ uri: x }} }}\n{BASE}"), "store.redis.uri", 1, Some(32), "unknown field `uri`"),
        case("sentinel without nodes", format!("store: {{ kind: redis, redis: {{ sentinel: {{ master: m, nodes: [] }} }} }}\n{BASE}"), "store.redis.sentinel.nodes", 1, Some(55), "at least one sentinel node"),
        case("bad sentinel node", format!("store: {{ kind: redis, redis: {{ sentinel: {{ master: m, nodes: [\"h:x\"] }} }} }}\n{BASE}"), "store.redis.sentinel.nodes[0]", 1, Some(63), "sentinel node: invalid port `x`"),
        case("cluster and sentinel", format!("store: {{ kind: redis, redis: {{ sentinel: {{ master: m, nodes: [h] }}, cluster: {{ nodes: [h] }} }} }}\n{BASE}"), "store.redis.cluster", 1, Some(69), "cluster and sentinel exclude each other"),
        case("cluster without nodes", format!("store: {{ kind: redis, redis: {{ cluster: {{ nodes: [] }} }} }}\n{BASE}"), "store.redis.cluster.nodes", 1, None, "at least one cluster node"),
        case("bad cluster node", format!("store: {{ kind: redis, redis: {{ cluster: {{ nodes: [\"h:x\"] }} }} }}\n{BASE}"), "store.redis.cluster.nodes[0]", 1, None, "cluster node: invalid port `x`"),
        case("cluster database", format!("store: {{ kind: redis, redis: {{ url: \"redis:///3\", cluster: {{ nodes: [h] }} }} }}\n{BASE}"), "store.redis.url", 1, None, "a Redis Cluster has database 0 only"),
        case("cluster prefix hash tag", format!("store: {{ kind: redis, redis: {{ prefix: \"{{t}}\", cluster: {{ nodes: [h] }} }} }}\n{BASE}"), "store.redis.prefix", 1, None, "a hash tag would put every session in one slot"),
        case("ca without tls", format!("store: {{ kind: redis, redis: {{ url: \"redis://h\", ca: ca.pem }} }}\n{BASE}"), "store.redis.ca", 1, None, "ca applies to TLS only"),
        case("missing ca", format!("store: {{ kind: redis, redis: {{ url: \"rediss://h\", ca: no-such-ca.pem }} }}\n{BASE}"), "store.redis.ca", 1, None, "cannot read ca"),
        case("https without tls", edit("    pool: app\n", "    pool: app\n    protocol: https\n"), "listeners[0].protocol", 10, Some(15), "protocol `https` needs `tls: { certs: [{ name, cert, key }] }`"),
        case("max_age without insert", edit("insert: true", "max_age: 8h"), "listeners[0].affinity.key.cookie.max_age", 11, Some(38), "max_age only applies with `insert: true`"),
        case("unknown hash", edit("    backends:\n", "    hash: md5\n    backends:\n"), "pools.app.hash", 3, Some(11), "unknown variant `md5`"),
        case("missing backend addr", edit("{ id: app-2, addr: \"127.0.0.1:9002\" }", "{ id: app-2 }"), "pools.app.backends[1]", 5, Some(9), "missing field `addr`"),
        case("bad trusted proxy", format!("server:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n{BASE}"), "server.trusted_proxies[1]", 2, Some(33), "`10.0.0.0/33` is not a CIDR"),
        case("cookie key on a tcp listener", tcp(COOKIE), "listeners[0].affinity.key.cookie", 12, Some(14), "`cookie` keys need an http listener"),
        case("sni key on an http listener", edit(COOKIE, "sni"), "listeners[0].affinity.key", 11, Some(12), "`sni` keys need `protocol: tcp`"),
        case("prefix with two groups", tcp("{ prefix: { pattern: \"(a)(b)\" } }"), "listeners[0].affinity.key.prefix.pattern", 12, Some(33), "has 2 capture groups; it needs exactly one"),
        case("prefix without a group", tcp("{ prefix: { pattern: \"id=[0-9]+\" } }"), "listeners[0].affinity.key.prefix.pattern", 12, Some(33), "has 0 capture groups"),
        case("invalid prefix regex", tcp("{ prefix: { pattern: \"(\" } }"), "listeners[0].affinity.key.prefix.pattern", 12, Some(33), "`(` is not a valid regex: unclosed group"),
        case("prefix max_bytes too big", tcp("{ prefix: { pattern: \"(x)\", max_bytes: 100000 } }"), "listeners[0].affinity.key.prefix.max_bytes", 12, Some(51), "max_bytes must be between 1 and 65536"),
        case("unknown proxy_protocol", edit("    pool: app\n", "    pool: app\n    proxy_protocol: yes\n"), "listeners[0].proxy_protocol", 10, Some(21), "unknown variant `yes`, expected `accept`"),
        case("h2 without tls", edit("    backends:\n", "    protocol: h2\n    backends:\n"), "pools.app.protocol", 3, Some(15), "protocol h2 is HTTP/2 over TLS and needs the pool's `tls"),
        case("unknown upstream protocol", edit("    backends:\n", "    protocol: http2\n    backends:\n"), "pools.app.protocol", 3, Some(15), "unknown variant `http2`, expected one of `http1`, `h2`, `h2c`"),
        case("service on an http check", with_health("{ kind: http, service: app.v1.Devices }"), "pools.app.health.service", 3, None, "service only applies to `kind: grpc`"),
        case("unknown send_proxy", edit("    backends:\n", "    send_proxy: v3\n    backends:\n"), "pools.app.send_proxy", 3, Some(17), "unknown variant `v3`, expected `v1` or `v2`"),
        case("duration above ten years", edit("    pool: app\n", "    pool: app\n    timeouts: { idle: 11y }\n"), "listeners[0].timeouts.idle", 10, Some(23), "`11y` is longer than 10 years"),
        case("huge duration", edit("    backends:\n", "    drain_timeout: 300000000000y\n    backends:\n"), "pools.app.drain_timeout", 3, Some(20), "`300000000000y` is longer than 10 years"),
        case("duration overflowing", format!("store: {{ session_ttl: 99999999999999999999999h }}\n{BASE}"), "store.session_ttl", 1, Some(23), "longer than 10 years"),
        case("cookie max_age above ten years", edit("insert: true", "insert: true, max_age: 3653d"), "listeners[0].affinity.key.cookie.max_age", 11, Some(61), "`3653d` is longer than 10 years"),
        case("admin host with a port", format!("admin: {{ hosts: [ok.example, \"admin.example:9090\"] }}\n{BASE}"), "admin.hosts[1]", 1, Some(30), "`admin.example:9090`: write the name without a port, like `admin.example`"),
        case("admin host that is an address", format!("admin: {{ hosts: [\"10.0.0.1\"] }}\n{BASE}"), "admin.hosts[0]", 1, Some(18), "`10.0.0.1` is an IP address: those are always answered"),
        case("admin host not a name", format!("admin: {{ hosts: [\"bad host\"] }}\n{BASE}"), "admin.hosts[0]", 1, Some(18), "`bad host` is neither an IP address nor a valid host name"),
        case("key with two kinds", edit("{ cookie: { name: TETHER, insert: true } }", "{ query: device, header: X-Id }"), "listeners[0].affinity.key.header", 11, Some(29), "key takes exactly one of"),
    ]
}

#[test]
fn shipped_proxy_yaml_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.yaml");
    let snap = config::load(&path).unwrap_or_else(|e| panic!("proxy.yaml:\n{e}"));
    assert_eq!(snap.admin.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(snap.pools.len(), 1);
    let app = &snap.pools[0];
    assert_eq!(&*app.name, "app");
    assert_eq!(app.backends.len(), 2);
    assert_eq!(&*app.backends[1].id, "app-2");
    assert_eq!(app.backends[1].weight, 1);
    assert!(
        matches!(&app.health.kind, HealthKind::Http { path, expect_status, .. } if path == "/healthz" && expect_status == &[200])
    );
    let web = &snap.listeners[0];
    assert_eq!(web.bind, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(web.max_header_bytes, 65536);
    assert_eq!(web.timeouts.keepalive, Duration::from_secs(60));
    match &web.affinity.key {
        Key::Cookie(c) => {
            assert_eq!(c.name, "TETHER");
            let insert = c.insert.as_ref().expect("insert mode");
            assert_eq!(insert.max_age, Duration::from_secs(8 * 3600));
            assert!(insert.secret.is_none());
        }
        other => panic!("unexpected key {other:?}"),
    }
    let StoreKind::Embedded { path: Some(db) } = &snap.store.kind else {
        panic!("store path expected")
    };
    assert_eq!(
        db,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("data/affinity.db")
    );
    let summary = config::summary(&snap);
    assert!(
        summary.ends_with("proxy.yaml: 1 pool (2 backends), 1 listener, store embedded"),
        "{summary}"
    );
}

#[test]
fn admin_hosts_are_lower_case_names() {
    let text =
        format!("admin: {{ hosts: [Tether.Example.COM, localhost, ops_1.internal] }}\n{BASE}");
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    let hosts: Vec<&str> = snap.admin.hosts.iter().map(|h| &**h).collect();
    assert_eq!(hosts, ["tether.example.com", "localhost", "ops_1.internal"]);
}

#[test]
fn durations_up_to_ten_years_are_accepted() {
    let ten_years = Duration::from_secs(10 * 31_557_600);
    let text = format!(
        "server: {{ shutdown_grace: 87660h, upgrade_grace: 3652d }}\n\
         store: {{ session_ttl: 10y }}\n{}",
        edit(
            "    pool: app\n",
            "    pool: app\n    timeouts: { idle: 10y, keepalive: 10years }\n"
        )
    );
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.server.shutdown_grace, ten_years);
    assert_eq!(
        snap.server.upgrade_grace,
        Duration::from_secs(3652 * 86_400)
    );
    assert_eq!(snap.store.session_ttl, ten_years);
    assert_eq!(snap.listeners[0].timeouts.idle, ten_years);
    assert_eq!(snap.listeners[0].timeouts.keepalive, ten_years);
    // One millisecond more is not.
    let over = edit(
        "    pool: app\n",
        "    pool: app\n    timeouts: { idle: 10y 1ms }\n",
    );
    let e = errors(&over);
    assert_eq!(e.len(), 1, "{e}");
    assert!(
        e.to_string()
            .contains("listeners[0].timeouts.idle: `10y 1ms` is longer than 10 years"),
        "{e}"
    );
}

#[test]
fn minimal_config_takes_the_defaults() {
    let snap = config::parse(file(), BASE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.admin.listen, "127.0.0.1:9090".parse().unwrap());
    assert!(snap.admin.token.is_none());
    assert!(snap.admin.hosts.is_empty());
    assert_eq!(snap.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(snap.server.upgrade_grace, Duration::from_secs(600));
    assert_eq!(snap.server.max_connections, 50_000);
    assert_eq!(snap.server.threads, 0);
    assert!(snap.server.trusted_proxies.is_empty());
    assert!(matches!(
        snap.store.kind,
        StoreKind::Embedded { path: None }
    ));
    assert_eq!(snap.store.session_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(snap.store.max_sessions, 1_000_000);
    let app = &snap.pools[0];
    assert_eq!(app.hash, config::HashKind::Maglev);
    assert_eq!(app.bounded_load, None);
    assert_eq!(app.on_backend_down, config::OnBackendDown::Migrate);
    assert_eq!(app.failback, config::Failback::Stay);
    assert_eq!(app.drain_timeout, Duration::from_secs(600));
    assert_eq!(app.timeouts.connect, Duration::from_secs(2));
    assert_eq!(app.timeouts.response_header, Duration::from_secs(30));
    assert!(matches!(app.health.kind, HealthKind::None));
    let web = &snap.listeners[0];
    assert_eq!(web.protocol, config::Protocol::Http);
    assert_eq!(web.max_connections, 20_000);
    assert_eq!(web.timeouts.client_header, Duration::from_secs(10));
    assert_eq!(web.timeouts.idle, Duration::from_secs(3600));
    assert_eq!(web.affinity.fallback, config::Fallback::SourceIp);
    // Inserted cookies live as long as a session by default.
    let Key::Cookie(c) = &web.affinity.key else {
        panic!("cookie key")
    };
    assert_eq!(
        c.insert.as_ref().map(|i| i.max_age),
        Some(Duration::from_secs(24 * 3600))
    );
    assert_eq!(
        config::summary(&snap),
        "test.yaml: 1 pool (2 backends), 1 listener, store embedded"
    );
}

#[test]
fn health_keys_parse_with_defaults() {
    let snap = config::parse(file(), BASE).unwrap_or_else(|e| panic!("{e}"));
    let h = &snap.pools[0].health;
    // No section: backends are trusted, so nothing passive could ever bring one back.
    assert!(!h.passive.enabled);
    assert_eq!(h.slowstart, Duration::ZERO);

    let snap = config::parse(file(), &with_health("{}")).unwrap_or_else(|e| panic!("{e}"));
    let h = &snap.pools[0].health;
    assert!(
        matches!(&h.kind, HealthKind::Http { method, host: None, .. } if method == http::Method::GET)
    );
    assert_eq!(h.slowstart, Duration::ZERO);
    assert!(h.passive.enabled && !h.passive.on_5xx);
    assert_eq!(h.passive.max_ejected_percent, 50);

    let text = with_health(
        "{ method: head, host: app.internal, slowstart: 30s, passive: { on_5xx: true } }",
    );
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    let h = &snap.pools[0].health;
    match &h.kind {
        HealthKind::Http { method, host, .. } => {
            assert_eq!(method, http::Method::HEAD);
            assert_eq!(host.as_deref(), Some("app.internal"));
        }
        other => panic!("unexpected kind {other:?}"),
    }
    assert_eq!(h.slowstart, Duration::from_secs(30));
    assert!(h.passive.enabled && h.passive.on_5xx);

    let text = with_health("{ passive: { max_ejected_percent: 0 } }");
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.pools[0].health.passive.max_ejected_percent, 0);

    let text = with_health("{ method: PURGE, passive: { enabled: false } }");
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    let h = &snap.pools[0].health;
    assert!(matches!(&h.kind, HealthKind::Http { method, .. } if method.as_str() == "PURGE"));
    assert!(!h.passive.enabled);
}

#[test]
fn upstream_protocols_and_grpc_health_parse_and_are_checked() {
    let snap = config::parse(file(), BASE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.pools[0].protocol, UpstreamProtocol::Http1);
    let text =
        with_health("{ kind: grpc }").replacen("    health:", "    protocol: h2c\n    health:", 1);
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.pools[0].protocol, UpstreamProtocol::H2c);
    let h = &snap.pools[0].health;
    assert!(matches!(&h.kind, HealthKind::Grpc { service } if service.is_empty()));
    assert!(h.passive.enabled, "grpc is an active check");
    let snap = config::parse(
        file(),
        &with_health("{ kind: grpc, service: app.v1.Devices }"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&snap.pools[0].health.kind, HealthKind::Grpc { service } if service == "app.v1.Devices")
    );

    // h2 goes with the pool's tls, h2c never does.
    let dir = tls_dir();
    let file = dir.path().join("proxy.yaml");
    let with_protocol = |p: &str| {
        https(TWO, "{ sni: app.internal, ca: ca.pem }").replacen(
            "    backends:\n",
            &format!("    protocol: {p}\n    backends:\n"),
            1,
        )
    };
    let snap = config::parse(&file, &with_protocol("h2")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.pools[0].protocol, UpstreamProtocol::H2);
    let up = snap.pools[0].tls.as_ref().expect("pool tls");
    assert_eq!(up.client_h2.alpn_protocols, [b"h2".to_vec()]);
    assert!(up.client.alpn_protocols.is_empty());
    let e = match config::parse(&file, &with_protocol("h2c")) {
        Ok(_) => panic!("h2c with tls was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("pools.app.protocol") && e.contains("protocol h2c is cleartext HTTP/2"),
        "{e}"
    );
}

#[test]
fn notify_key_parses() {
    let snap = config::parse(file(), BASE).unwrap_or_else(|e| panic!("{e}"));
    assert!(snap.pools[0].notify.is_none());
    let notify = |value: &str| {
        let text = edit(
            "    backends:\n",
            &format!("    notify: {value}\n    backends:\n"),
        );
        let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{value}: {e}"));
        snap.pools[0].notify.clone().expect("notify")
    };
    let n = notify("{ webhook: \"http://[::1]/events?src=tether\" }");
    assert_eq!(n.before, Duration::from_secs(30));
    assert_eq!((n.webhook.host.as_str(), n.webhook.port), ("::1", 80));
    assert_eq!(n.webhook.path, "/events?src=tether");
    assert_eq!(n.webhook.to_string(), "http://[::1]/events?src=tether");
    let n = notify("{ webhook: \"http://hooks.internal:8000\", before: 0s }");
    assert_eq!(n.before, Duration::ZERO);
    assert_eq!(n.webhook.to_string(), "http://hooks.internal:8000/");
    for (url, message) in [
        ("http://127.0.0.1:99999/x", "invalid port `99999`"),
        ("http://127.0.0.1:0/x", "invalid port `0`"),
        (
            "http://user:pw@127.0.0.1/x",
            "passwords in the URL are not supported",
        ),
        ("ftp://127.0.0.1/x", "is not an http:// URL"),
    ] {
        let text = edit(
            "    backends:\n",
            &format!("    notify: {{ webhook: \"{url}\" }}\n    backends:\n"),
        );
        let errs = errors(&text);
        assert!(errs.to_string().contains(message), "{url}: {errs}");
    }
}

#[test]
fn every_key_form_parses() {
    let forms = [
        ("{ cookie: { name: JSESSIONID } }", "Cookie"),
        ("{ header: X-Device-Id }", "Header"),
        ("{ query: device }", "Query"),
        ("source_ip", "SourceIp"),
        (
            "{ source_ip: { ipv4_mask: 24, ipv6_mask: 64 } }",
            "SourceIp",
        ),
    ];
    for (form, kind) in forms {
        let text = edit("{ cookie: { name: TETHER, insert: true } }", form);
        let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{form}: {e}"));
        let key = &snap.listeners[0].affinity.key;
        assert!(format!("{key:?}").starts_with(kind), "{form}: {key:?}");
        if form.contains("ipv4_mask") {
            assert!(matches!(key, Key::SourceIp(m) if m.ipv4 == 24 && m.ipv6 == 64));
        }
    }
}

#[test]
fn broken_configs_are_located() {
    let cases = broken_configs();
    assert!(cases.len() >= 18);
    let mut failures = Vec::new();
    for c in cases {
        let errs = errors(&c.yaml);
        let all = errs.to_string();
        let e: &ConfigError = &errs.errors[0];
        let mut problems = Vec::new();
        if errs.len() != 1 {
            problems.push("expected exactly one error".to_owned());
        }
        if e.path != c.path {
            problems.push(format!("path `{}` != `{}`", e.path, c.path));
        }
        if !e.message.contains(c.message) {
            problems.push(format!("message lacks `{}`", c.message));
        }
        if e.line != c.line {
            problems.push(format!("line {} != {}", e.line, c.line));
        }
        if c.col.is_some_and(|col| col != e.col) {
            problems.push(format!("col {} != {:?}", e.col, c.col));
        }
        let shown = format!("test.yaml:{}:{}: {}: {}", e.line, e.col, c.path, e.message);
        if errs.len() == 1 && all != shown {
            problems.push(format!("displayed as `{all}`"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n    {}",
                c.name,
                problems.join("; "),
                all.replace('\n', "\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn independent_errors_are_all_reported() {
    let text = "\
admin: { listen: 127.0.0.1 }
pools:
  app:
    backends:
      - { id: app-1, addr: \"127.0.0.1:9001\", weight: 0 }
listeners:
  - name: web
    bind: 127.0.0.1:8080
    pool: app
    colour: blue
    affinity: { key: source_ip }
";
    let errs = errors(text);
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
    assert_eq!(
        got,
        [
            (1, "admin.listen"),
            (5, "pools.app.backends[0].weight"),
            (10, "listeners[0].colour"),
        ],
        "{errs}"
    );
    let shown = errs.to_string();
    assert_eq!(shown.lines().count(), 3);
    assert!(
        shown.starts_with("test.yaml:1:18: admin.listen: `127.0.0.1` has no port"),
        "{shown}"
    );
    assert!(shown.ends_with("test.yaml:10:5: listeners[0].colour: unknown field `colour`, expected one of `name`, `bind`, `protocol`, `pool`, `max_connections`, `max_header_bytes`, `backlog`, `timeouts`, `proxy_protocol`, `tls`, `h2c`, `http1_engine`, `access_log`, `affinity` (see docs/config.md for every key)"), "{shown}");
}

#[test]
fn malformed_yaml_is_one_located_error() {
    let text = "pools:\n  app:\n    backends: [\n listeners: {\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs}");
    let e = &errs.errors[0];
    assert!(e.message.starts_with("invalid YAML: "), "{e}");
    assert!(e.line >= 3 && e.col >= 1, "{e}");
    assert!(e.path.is_empty());

    let errs = errors("pools:\n  app: x\n  app: y\n");
    assert_eq!(errs.len(), 1, "{errs}");
    assert!(errs.errors[0].message.contains("duplicate entry"), "{errs}");

    let errs = errors("pools:\n\tapp: {}\n");
    assert_eq!(errs.errors[0].line, 2, "{errs}");
}

#[test]
fn unreadable_file_is_one_error_naming_it() {
    let missing = Path::new("/nonexistent/tether/proxy.yaml");
    let errs = config::load(missing).expect_err("missing file");
    assert_eq!(errs.len(), 1);
    assert!(
        errs.to_string().contains("/nonexistent/tether/proxy.yaml"),
        "{errs}"
    );
}

#[test]
fn empty_file_is_an_error() {
    let errs = errors("");
    assert_eq!(errs.len(), 1);
    assert_eq!((errs.errors[0].line, errs.errors[0].col), (1, 1));
}

#[test]
fn relative_files_resolve_against_the_config_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(dir.path().join("secrets/token"), "s3cret-token\n").expect("write token");
    std::fs::write(dir.path().join("secrets/cookie"), "0123456789abcdef0123\n")
        .expect("write secret");
    let text = format!(
        "admin: {{ token_file: secrets/token }}\nstore: {{ path: data/affinity.db }}\n{}",
        edit("insert: true", "insert: true, secret_file: secrets/cookie")
    );
    let cfg = dir.path().join("proxy.yaml");
    std::fs::write(&cfg, &text).expect("write config");
    // The working directory is not the config's directory.
    assert_ne!(std::env::current_dir().expect("cwd"), dir.path());
    let snap = config::load(&cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.admin.token.as_deref(), Some("s3cret-token"));
    let Key::Cookie(c) = &snap.listeners[0].affinity.key else {
        panic!("cookie")
    };
    let secret = c.insert.as_ref().and_then(|i| i.secret.as_deref());
    assert_eq!(secret, Some(&b"0123456789abcdef0123"[..]));
    let StoreKind::Embedded { path: Some(db) } = &snap.store.kind else {
        panic!("store path")
    };
    assert_eq!(db, &dir.path().join("data/affinity.db"));
}

#[test]
fn unusable_token_and_secret_files_name_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("empty"), "\n").expect("write");
    std::fs::write(dir.path().join("short"), "too-short").expect("write");
    let text = format!(
        "admin: {{ token_file: missing-token }}\n{}",
        edit("insert: true", "insert: true, secret_file: short")
    );
    let cfg = dir.path().join("proxy.yaml");
    std::fs::write(&cfg, &text).expect("write config");
    let errs = config::load(&cfg).expect_err("bad files");
    let got: Vec<(&str, usize)> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("admin.token_file", 1),
            ("listeners[0].affinity.key.cookie.secret_file", 12)
        ],
        "{errs}"
    );
    assert!(
        errs.errors[0].message.contains("cannot read token_file"),
        "{errs}"
    );
    assert!(errs.errors[1].message.contains("at least 16"), "{errs}");

    std::fs::write(&cfg, text.replace("missing-token", "empty")).expect("write config");
    let errs = config::load(&cfg).expect_err("empty token");
    assert!(
        errs.errors[0].message.contains("token_file")
            && errs.errors[0].message.contains("is empty"),
        "{errs}"
    );
}

#[test]
fn tcp_listeners_take_stream_keys_and_the_proxy_protocol() {
    let text = tcp("{ prefix: { pattern: \"^HELLO device=([a-z0-9]+)\\n\" } }")
        .replace("    backends:\n", "    send_proxy: v2\n    backends:\n")
        .replace(
            "    protocol: tcp\n",
            "    protocol: tcp\n    proxy_protocol: accept\n",
        );
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    let l = &snap.listeners[0];
    assert_eq!(l.protocol, config::Protocol::Tcp);
    assert!(l.proxy_protocol);
    assert_eq!(snap.pools[0].send_proxy, Some(config::ProxyVersion::V2));
    let Key::Prefix(p) = &l.affinity.key else {
        panic!("{:?}", l.affinity.key);
    };
    assert_eq!((p.max_bytes, p.timeout), (512, Duration::from_secs(2)));
    let caps = p.pattern.captures(b"HELLO device=ab12\n").expect("matches");
    assert_eq!(&caps[1], b"ab12");
    for (key, kind) in [
        ("sni", "Sni"),
        ("source_ip", "SourceIp"),
        ("{ source_ip: { ipv4_mask: 24 } }", "SourceIp"),
        (
            "{ prefix: { pattern: \"id=(\\\\w+)\", max_bytes: 64, timeout: 250ms } }",
            "Prefix",
        ),
    ] {
        let snap = config::parse(file(), &tcp(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        let got = format!("{:?}", snap.listeners[0].affinity.key);
        assert!(got.starts_with(kind), "{key}: {got}");
        assert!(!snap.listeners[0].proxy_protocol);
        assert_eq!(snap.pools[0].send_proxy, None);
    }
}

#[test]
fn redis_store_settings_parse() {
    let snap = config::parse(file(), &format!("store: {{ kind: redis }}\n{BASE}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Redis(r) = &snap.store.kind else {
        panic!("redis store expected")
    };
    assert_eq!(
        (r.host.as_str(), r.port, r.db, r.tls),
        ("127.0.0.1", 6379, 0, false)
    );
    assert_eq!((r.prefix.as_str(), r.password.as_deref()), ("tether", None));
    assert_eq!(r.connect_timeout, Duration::from_secs(1));
    assert_eq!(r.command_timeout, Duration::from_millis(200));
    assert!(config::summary(&snap).ends_with("store redis"));

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pw"), "from-file\n").expect("write");
    let redis = "  redis:\n    url: \"rediss://app:from%40url@redis.internal:6380/2\"\n    prefix: t1\n    \
                 connect_timeout: 2s\n    command_timeout: 50ms\n    \
                 sentinel: { master: mymaster, nodes: [\"10.0.0.1:26379\", \"[::1]\", s.internal:1] }\n";
    let text = format!("store:\n  kind: redis\n{redis}{BASE}");
    let snap = config::parse(&dir.path().join("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Redis(r) = &snap.store.kind else {
        panic!("redis store expected")
    };
    assert_eq!(
        (r.host.as_str(), r.port, r.db, r.tls),
        ("redis.internal", 6380, 2, true)
    );
    assert_eq!(
        (r.username.as_deref(), r.password.as_deref()),
        (Some("app"), Some("from@url"))
    );
    assert_eq!(
        (r.prefix.as_str(), r.command_timeout),
        ("t1", Duration::from_millis(50))
    );
    assert_eq!(r.connect_timeout, Duration::from_secs(2));
    let s = r.sentinel.as_ref().expect("sentinel");
    assert_eq!(s.master, "mymaster");
    let nodes = [("10.0.0.1", 26379), ("::1", 26379), ("s.internal", 1)];
    assert_eq!(s.nodes, nodes.map(|(h, p)| (h.to_owned(), p)).to_vec());
    assert_eq!(r.target(), "sentinel master mymaster");
    assert!(
        !format!("{r:?}").contains("from@url"),
        "the password never shows"
    );

    let text = text.replace(
        "    prefix: t1\n",
        "    prefix: t1\n    password_file: pw\n",
    );
    let snap = config::parse(&dir.path().join("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Redis(r) = &snap.store.kind else {
        panic!("redis store expected")
    };
    assert_eq!(
        r.password.as_deref(),
        Some("from-file"),
        "password_file wins"
    );
}

#[test]
fn redis_cluster_and_ca_settings_parse() {
    let dir = tls_dir();
    let redis = "  redis:\n    url: \"rediss://:pw@/0\"\n    ca: ca.pem\n    \
                 cluster: { nodes: [\"10.0.0.1:7000\", \"[::1]\", c.internal] }\n";
    let text = format!("store:\n  kind: redis\n{redis}{BASE}");
    let snap = config::parse(&dir.path().join("t.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let StoreKind::Redis(r) = &snap.store.kind else {
        panic!("redis store expected")
    };
    assert!(
        r.tls
            && r.ca
                .as_ref()
                .is_some_and(|pem| pem.starts_with(b"-----BEGIN"))
    );
    assert_eq!(r.password.as_deref(), Some("pw"));
    let c = r.cluster.as_ref().expect("cluster");
    let nodes = [("10.0.0.1", 7000), ("::1", 6379), ("c.internal", 6379)];
    assert_eq!(c.nodes, nodes.map(|(h, p)| (h.to_owned(), p)).to_vec());
    assert_eq!(
        r.target(),
        "cluster 10.0.0.1:7000,[::1]:6379,c.internal:6379"
    );
    // The lease's keys cannot share a slot: no VIP on a cluster.
    let vip = format!("{text}vip: {{ address: 10.0.0.100/24, interface: lo }}\n");
    let err = config::parse(&dir.path().join("t.yaml"), &vip).expect_err("vip on a cluster");
    assert!(
        err.to_string().contains("not `store.redis.cluster`"),
        "{err}"
    );
}

/// A temp dir with certificates `a` (a.test) and `b` (b.test), a CA file,
/// and a file that is no PEM at all.
fn tls_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = tlsh::TestCa::new("config test CA");
    tlsh::write_pair(dir.path(), "a", &ca.leaf("a.test", &["a.test"]));
    tlsh::write_pair(dir.path(), "b", &ca.leaf("b.test", &["b.test"]));
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "not PEM at all\n").unwrap();
    dir
}

/// `BASE` as an https listener with `tls`, plus `pool_tls` on the pool when not empty.
fn https(tls: &str, pool_tls: &str) -> String {
    let text = edit(
        "    pool: app\n",
        &format!("    pool: app\n    protocol: https\n    tls: {tls}\n"),
    );
    if pool_tls.is_empty() {
        return text;
    }
    text.replacen(
        "    backends:\n",
        &format!("    tls: {pool_tls}\n    backends:\n"),
        1,
    )
}

const TWO: &str = "{ certs: [{ name: a, cert: a.crt, key: a.key }, { name: b, cert: b.crt, key: b.key }], default: b }";

#[test]
fn tls_settings_are_loaded_and_checked() {
    let dir = tls_dir();
    let file = dir.path().join("proxy.yaml");
    let parse = |text: &str| config::parse(&file, text);
    let snap =
        parse(&https(TWO, "{ sni: app.internal, ca: ca.pem }")).unwrap_or_else(|e| panic!("{e}"));
    let web = &snap.listeners[0];
    assert_eq!(web.protocol, Protocol::Https);
    let tls = web.tls.as_ref().expect("tls");
    assert_eq!((tls.certs.len(), tls.default), (2, 1));
    assert_eq!(tls.certs[0].loaded.names, ["a.test"]);
    assert_eq!(
        tls.alpn,
        [Alpn::H2, Alpn::Http11],
        "https offers h2 and http/1.1"
    );
    let up = snap.pools[0].tls.as_ref().expect("pool tls");
    assert!(up.verify && up.ca.is_some() && up.pingora_ca.is_some());
    assert_eq!(up.sni, "app.internal");
    // One certificate needs no default; verify: false must be written out.
    let one = "{ certs: [{ name: a, cert: a.crt, key: a.key }], alpn: [http/1.1] }";
    let snap = parse(&https(one, "{ sni: app.internal, verify: false }"))
        .unwrap_or_else(|e| panic!("{e}"));
    let tls = snap.listeners[0].tls.as_ref().expect("tls");
    assert_eq!((tls.default, tls.alpn.as_slice()), (0, &[Alpn::Http11][..]));
    assert!(!snap.pools[0].tls.as_ref().expect("pool tls").verify);
    // A tls listener: L4 keys, no ALPN unless asked.
    let text = tcp("sni").replace(
        "protocol: tcp",
        &format!("protocol: tls\n    tls: {one}").replace(", alpn: [http/1.1]", ""),
    );
    let snap = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snap.listeners[0].protocol, Protocol::Tls);
    assert!(snap.listeners[0].tls.as_ref().expect("tls").alpn.is_empty());

    let cert = |name: &str, c: &str, k: &str| format!("{{ name: {name}, cert: {c}, key: {k} }}");
    let cases: Vec<(String, &str, &str)> = vec![
        (
            https(
                &format!(
                    "{{ certs: [{}, {}], default: a }}",
                    cert("a", "a.crt", "a.key"),
                    cert("b", "b.crt", "a.key")
                ),
                "",
            ),
            "listeners[0].tls.certs[1].key",
            "does not match the certificate in",
        ),
        (
            https(
                &format!("{{ certs: [{}] }}", cert("a", "missing.crt", "a.key")),
                "",
            ),
            "listeners[0].tls.certs[0].cert",
            "cannot read",
        ),
        (
            https(
                &format!("{{ certs: [{}] }}", cert("a", "garbage.pem", "a.key")),
                "",
            ),
            "listeners[0].tls.certs[0].cert",
            "holds no certificate",
        ),
        (
            https(
                &format!("{{ certs: [{}] }}", cert("a", "a.crt", "garbage.pem")),
                "",
            ),
            "listeners[0].tls.certs[0].key",
            "holds no private key",
        ),
        (
            https(&TWO.replace("default: b", "default: c"), ""),
            "listeners[0].tls.default",
            "no certificate named `c` (certs: a, b)",
        ),
        (
            https(&TWO.replace(", default: b", ""), ""),
            "listeners[0].tls",
            "`default` must name the one for clients without SNI",
        ),
        (
            https(
                &TWO.replace("name: b", "name: a")
                    .replace("default: b", "default: a"),
                "",
            ),
            "listeners[0].tls.certs[1].name",
            "duplicate certificate name `a`",
        ),
        (
            https(&TWO.replace("}], default", "}], alpn: [h3], default"), ""),
            "listeners[0].tls.alpn[0]",
            "unknown variant `h3`",
        ),
        (
            https("{ certs: [] }", ""),
            "listeners[0].tls.certs",
            "at least one certificate is required",
        ),
        (
            edit(
                "    pool: app\n",
                &format!("    pool: app\n    tls: {TWO}\n"),
            ),
            "listeners[0].tls",
            "tls only applies to `protocol: https` or `protocol: tls`",
        ),
        (
            https(TWO, "").replace("protocol: https", "protocol: https\n    h2c: true"),
            "listeners[0].h2c",
            "h2c only applies to `protocol: http`",
        ),
        (
            https(TWO, "{ verify: true }"),
            "pools.app.tls.sni",
            "sni is required with upstream TLS",
        ),
        (
            https(TWO, "{ sni: app.internal, verify: false, ca: ca.pem }"),
            "pools.app.tls.ca",
            "ca only applies with `verify: true`",
        ),
        (
            https(TWO, "{ sni: app.internal, ca: garbage.pem }"),
            "pools.app.tls.ca",
            "holds no certificate",
        ),
        (
            https(TWO, "").replace(COOKIE, "sni"),
            "listeners[0].affinity.key",
            "`sni` keys need `protocol: tcp` or `protocol: tls`",
        ),
        (
            text.replace("key: sni", &format!("key: {COOKIE}")),
            "listeners[0].affinity.key.cookie",
            "`cookie` keys need an http listener (`protocol: http` or `https`)",
        ),
    ];
    let mut failures = Vec::new();
    for (yaml, path, message) in cases {
        match parse(&yaml) {
            Ok(_) => failures.push(format!("{path}: accepted\n{yaml}")),
            Err(errs) => {
                let e = &errs.errors[0];
                if errs.len() != 1 || e.path != path || !e.message.contains(message) {
                    failures.push(format!("{path} / {message}: got\n    {errs}"));
                }
                let shown = e.to_string();
                assert!(
                    shown.starts_with(&format!(
                        "{}:{}:{}: {path}: ",
                        file.display(),
                        e.line,
                        e.col
                    )),
                    "{shown}"
                );
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn vip_settings_parse_and_are_checked() {
    let text = format!(
        "store: {{ kind: redis }}\nvip: {{ address: 198.18.0.100/24, interface: eth0, name: node-a }}\n{BASE}"
    );
    let snap = config::parse(file(), &text).unwrap_or_else(|e| panic!("{e}"));
    let v = snap.vip.clone().expect("vip");
    assert_eq!(v.address.to_string(), "198.18.0.100/24");
    assert_eq!((v.interface.as_str(), v.name.as_str()), ("eth0", "node-a"));
    assert_eq!(v.lease, Duration::from_secs(1));
    assert_eq!(
        v.renew,
        Duration::from_secs(1) / 3,
        "renew defaults to lease/3"
    );
    assert_eq!((v.priority, v.preempt), (100, false));
    assert!(snap.warnings().iter().all(|w| !w.contains("vip")));

    let v6 = format!("store: {{ kind: redis }}\nvip: {{ address: \"fd00::100/64\", interface: br0, lease: 3s, renew: 1s, priority: 200, preempt: true }}\n{BASE}");
    let v = config::parse(file(), &v6)
        .unwrap_or_else(|e| panic!("{e}"))
        .vip
        .expect("vip");
    assert_eq!(
        (v.lease, v.renew, v.priority, v.preempt),
        (Duration::from_secs(3), Duration::from_secs(1), 200, true)
    );

    // A lease that is not whole seconds is valid, but takes over as slowly as
    // the next whole second (the address's kernel lifetime is whole seconds).
    let odd = format!("store: {{ kind: redis }}\nvip: {{ address: 198.18.0.100/24, interface: eth0, lease: 1500ms }}\n{BASE}");
    let w = config::parse(file(), &odd)
        .unwrap_or_else(|e| panic!("{e}"))
        .warnings();
    assert!(
        w.iter()
            .any(|w| w.contains("vip.lease 1.5s is not whole seconds") && w.contains("`lease: 2s`")),
        "{w:?}"
    );

    let bad = |vip: &str, store: &str| -> String {
        errors(&format!("{store}vip: {vip}\n{BASE}")).to_string()
    };
    let redis = "store: { kind: redis }\n";
    let e = bad("{ address: 198.18.0.100/24, interface: eth0 }", "");
    assert!(
        e.contains("test.yaml:1:") && e.contains("vip: vip needs `store.kind: redis`"),
        "{e}"
    );
    let e = bad("{ address: 198.18.0.0/24, interface: eth0 }", redis);
    assert!(
        e.contains("vip.address") && e.contains("is a network address"),
        "{e}"
    );
    let e = bad("{ address: 198.18.0.100, interface: eth0 }", redis);
    assert!(
        e.contains("vip.address") && e.contains("prefix length"),
        "{e}"
    );
    let e = bad(
        "{ address: 198.18.0.100/24, interface: eth0, lease: 2s, renew: 1500ms }",
        redis,
    );
    assert!(
        e.contains("vip.renew") && e.contains("at most half the lease"),
        "{e}"
    );
    let e = bad(
        "{ address: 198.18.0.100/24, interface: a-very-long-interface-name }",
        redis,
    );
    assert!(e.contains("vip.interface"), "{e}");
    let e = bad(
        "{ address: 198.18.0.100/24, interface: eth0, weight: 3 }",
        redis,
    );
    assert!(
        e.contains("vip.weight") && e.contains("unknown field"),
        "{e}"
    );
}

#[test]
fn vip_min_replicas_defaults_to_one_with_sentinel_only() {
    let vip = "vip: { address: 198.18.0.100/24, interface: eth0, name: node-a }";
    let parse = |store: &str, vip: &str| {
        config::parse(file(), &format!("{store}\n{vip}\n{BASE}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .vip
            .expect("vip")
            .min_replicas
    };
    let plain = "store: { kind: redis }";
    let sentinel =
        "store: { kind: redis, redis: { sentinel: { master: m, nodes: [\"127.0.0.1:26379\"] } } }";
    assert_eq!(parse(plain, vip), 0);
    assert_eq!(parse(sentinel, vip), 1);
    let two = "vip: { address: 198.18.0.100/24, interface: eth0, min_replicas: 2 }";
    assert_eq!(parse(plain, two), 2);
    let none = "vip: { address: 198.18.0.100/24, interface: eth0, min_replicas: 0 }";
    assert_eq!(parse(sentinel, none), 0);
    let e = errors(&format!(
        "{plain}\nvip: {{ address: 198.18.0.100/24, interface: eth0, min_replicas: -1 }}\n{BASE}"
    ))
    .to_string();
    assert!(
        e.contains("test.yaml:2:") && e.contains("min_replicas"),
        "{e}"
    );
}
