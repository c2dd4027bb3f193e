//! Integration tests of `tether::config`: the shipped `proxy.yaml`, a table of
//! broken configurations with their exact locations, error collection across
//! pieces, YAML syntax errors, and files resolved relative to the config.
//! The larger sections have modules of their own: `errors` (located errors),
//! `redis`, `tls` and `vip`.

use std::path::Path;
use std::time::Duration;

use tether::config::{
    self, Alpn, ConfigError, ConfigErrors, HealthKind, Key, Protocol, StoreKind, UpstreamProtocol,
};

#[path = "../common/tls.rs"]
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

mod errors;
mod redis;
mod tls;
mod vip;

use tls::{https, tls_dir, TWO};

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
