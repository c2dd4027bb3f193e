//! Broken configurations, each with the exact file, line, column and key of its error;
//! several errors reported at once; syntax errors, unreadable and empty files.

use super::*;

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
