//! Metrics from the start: a fresh tether exports, before any traffic, every
//! series whose label values are known at start (pools, backends, listeners,
//! certificates, the store's fixed ops and results) at 0, so dashboards and
//! alerts see 0 instead of "No data". `requests_total` (statuses come from the
//! backends) and the per-pair `session_moves_total` appear with their first
//! event. Backends added by a reload get their series at once; a removed
//! backend's series go once it has drained out.

mod common;
#[path = "common/tls.rs"]
mod tlsh;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::tcp::metrics;
use common::{backend_yaml, backends, Client, Tether};
use tlsh::{write_pair, TestCa};

/// `/metrics` as series (name and labels, as tether prints them) to value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// One series key: labels sorted by name, as the exposition prints them.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return format!("tether_{name}");
    }
    let mut l = labels.to_vec();
    l.sort();
    let l: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("tether_{name}{{{}}}", l.join(","))
}

/// Every series in `want` is exported with value 0.
fn assert_zero(have: &BTreeMap<String, f64>, want: &[String], text: &str) {
    let wrong: Vec<String> = want
        .iter()
        .filter(|s| have.get(*s) != Some(&0.0))
        .map(|s| format!("{s} = {:?}", have.get(s)))
        .collect();
    assert!(
        wrong.is_empty(),
        "not exported at 0 before any traffic: {wrong:#?}\n/metrics:\n{text}"
    );
}

/// Every series in `want` is exported (whatever its value).
fn assert_present(have: &BTreeMap<String, f64>, want: &[String], text: &str) {
    let missing: Vec<&String> = want.iter().filter(|s| !have.contains_key(*s)).collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:#?}\n/metrics:\n{text}"
    );
}

const TLS_FAILURES: [&str; 7] = [
    "timeout",
    "closed",
    "protocol",
    "incompatible",
    "alert",
    "no_cert",
    "other",
];
const PROXY_ERRORS: [&str; 4] = ["untrusted", "malformed", "timeout", "closed"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_tether_exports_every_known_series_at_zero() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("metrics-ca");
    write_pair(dir.path(), "site", &ca.leaf("site.test", &["site.test"]));
    // Pool app: http checks, notifications, a backend named by host name;
    // pool raw: no checks. Listeners http, https and tcp.
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         store: {{ max_sessions: 5000 }}\n\
         pools:\n  app:\n    health: {{ kind: http, path: /healthz, interval: 1s, timeout: 500ms }}\n\
         \x20   notify: {{ webhook: \"http://127.0.0.1:9/events\" }}\n\
         \x20   backends:\n      - {{ id: b1, addr: \"{}\" }}\n      - {{ id: b2, addr: \"localhost:{}\" }}\n\
         \x20 raw:\n    backends:\n{}\
         listeners:\n\
         \x20 - {{ name: web, bind: \"127.0.0.1:0\", pool: app, affinity: {{ key: {{ cookie: {{ name: T, insert: true }} }} }} }}\n\
         \x20 - name: secure\n    bind: \"127.0.0.1:0\"\n    protocol: https\n    pool: app\n\
         \x20   tls: {{ certs: [{{ name: site, cert: site.crt, key: site.key }}] }}\n\
         \x20   affinity: {{ key: source_ip }}\n\
         \x20 - {{ name: stream, bind: \"127.0.0.1:0\", protocol: tcp, pool: raw, affinity: {{ key: source_ip }} }}\n",
        b[0].addr,
        b[1].addr.port(),
        backend_yaml(&b[..1]).replace("b1", "r1"),
    );
    let t = Tether::start_in(dir, &yaml);
    let text = metrics(&t).await;
    let have = parse(&text);

    let mut zero = Vec::new();
    let mut present = Vec::new();
    for r in ["ok", "error"] {
        zero.push(series("config_reloads_total", &[("result", r)]));
    }
    for pool in ["app", "raw"] {
        for r in ["hit", "new", "moved"] {
            zero.push(series(
                "affinity_lookups_total",
                &[("pool", pool), ("result", r)],
            ));
        }
        zero.push(series("no_backend_total", &[("pool", pool)]));
        zero.push(series("passive_ejections_refused_total", &[("pool", pool)]));
        zero.push(series("session_move_seconds_count", &[("pool", pool)]));
    }
    for r in ["sent", "failed", "dropped"] {
        zero.push(series(
            "notifications_total",
            &[("pool", "app"), ("result", r)],
        ));
    }
    for (pool, backend) in [("app", "b1"), ("app", "b2"), ("raw", "r1")] {
        let l = [("pool", pool), ("backend", backend)];
        zero.push(series("sessions", &l));
        zero.push(series("upstream_connections_active", &l));
        present.push(series("backend_up", &l));
    }
    for backend in ["b1", "b2"] {
        for r in ["pass", "fail"] {
            let l = [("pool", "app"), ("backend", backend), ("result", r)];
            present.push(series("health_checks_total", &l));
        }
    }
    for r in ["ok", "changed", "error"] {
        let l = [("pool", "app"), ("backend", "b2"), ("result", r)];
        present.push(series("backend_resolutions_total", &l));
    }
    for (listener, pool) in [("web", "app"), ("secure", "app"), ("stream", "raw")] {
        for d in ["in", "out"] {
            zero.push(series(
                "bytes_total",
                &[("listener", listener), ("direction", d)],
            ));
        }
        zero.push(series("connections_active", &[("listener", listener)]));
        zero.push(series(
            "connections_refused_total",
            &[("listener", listener)],
        ));
        zero.push(series(
            "request_duration_seconds_count",
            &[("listener", listener), ("pool", pool)],
        ));
        for r in PROXY_ERRORS {
            zero.push(series(
                "proxy_protocol_errors_total",
                &[("listener", listener), ("reason", r)],
            ));
        }
    }
    for r in TLS_FAILURES {
        zero.push(series(
            "tls_handshake_failures_total",
            &[("listener", "secure"), ("reason", r)],
        ));
    }
    for r in ["ok", "error"] {
        zero.push(series(
            "tls_cert_reloads_total",
            &[("listener", "secure"), ("cert", "site"), ("result", r)],
        ));
    }
    let store = [("store", "embedded")];
    for r in ["created", "confirmed", "expired", "evicted", "unrecorded"] {
        zero.push(series(
            "store_operations_total",
            &[("store", "embedded"), ("op", "provisional"), ("result", r)],
        ));
    }
    zero.push(series(
        "store_operations_total",
        &[
            ("store", "embedded"),
            ("op", "journal"),
            ("result", "dropped"),
        ],
    ));
    for name in [
        "sessions_evicted_total",
        "sessions_expired_total",
        "provisional_sessions",
        "store_sessions",
    ] {
        zero.push(series(name, &store));
    }
    zero.push(series("vip_leader", &[]));
    zero.push(series("vip_transitions_total", &[]));
    assert_zero(&have, &zero, &text);
    assert_present(&have, &present, &text);

    assert_eq!(have.get(&series("store_up", &store)), Some(&1.0));
    assert_eq!(
        have.get(&series("store_max_sessions", &store)),
        Some(&5000.0)
    );
    assert_eq!(
        have.get(&series("config_last_reload_successful", &[])),
        Some(&1.0)
    );
    // Left to their first event (module header).
    for name in ["tether_requests_total{", "tether_session_moves_total{"] {
        assert!(!text.contains(name), "{name} before any request:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_exports_its_operations_at_zero() {
    let redis = common::redis::RedisServer::start();
    let b = backends(1).await;
    let yaml = common::config(
        &b,
        "{ key: source_ip }",
        "",
        "",
        &format!(
            "store: {{ kind: redis, max_sessions: 7000, redis: {{ url: \"{}\", prefix: zero }} }}\n",
            redis.url()
        ),
    );
    let t = Tether::start(&yaml);
    let text = metrics(&t).await;
    let have = parse(&text);
    let op = |op: &str, r: &str| {
        series(
            "store_operations_total",
            &[("store", "redis"), ("op", op), ("result", r)],
        )
    };
    // Session writes happen with traffic only; none failed.
    let mut zero = Vec::new();
    for o in ["insert", "cas", "take_moved", "delete"] {
        for r in ["ok", "timeout", "error", "down"] {
            zero.push(op(o, r));
        }
        zero.push(series(
            "store_op_seconds_count",
            &[("store", "redis"), ("op", o)],
        ));
    }
    for r in ["queued", "dropped", "rejected"] {
        zero.push(op("queue", r));
    }
    assert_zero(&have, &zero, &text);
    assert_present(&have, &[op("connect", "ok"), op("connect", "error")], &text);
    let store = [("store", "redis")];
    assert_eq!(have.get(&series("store_up", &store)), Some(&1.0));
    assert_eq!(
        have.get(&series("store_max_sessions", &store)),
        Some(&7000.0)
    );
    // The virtual IP's lease operations only once a VIP uses them.
    assert!(!text.contains("op=\"lease_"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_added_and_removed_by_a_reload_bring_and_take_their_series() {
    let b = backends(3).await;
    let pool = "    drain_timeout: 1s\n    close_spread: 0s\n    \
                health: { kind: tcp, interval: 200ms, timeout: 100ms }\n";
    let yaml = |n: usize| common::config(&b[..n], "{ key: source_ip }", pool, "", "");
    let t = Tether::start(&yaml(2));
    let reload = |text: String| {
        let t = &t;
        async move {
            std::fs::write(&t.config, text).expect("write config");
            let r = Client::new(t.admin)
                .request("POST", "/api/reload", &[], b"")
                .await
                .expect("reload");
            assert_eq!(r.status, 200, "reload: {}", r.text());
        }
    };
    let b3 = |name: &str, extra: &[(&str, &str)]| {
        let mut l = vec![("pool", "app"), ("backend", "b3")];
        l.extend_from_slice(extra);
        series(name, &l)
    };

    reload(yaml(3)).await;
    let text = metrics(&t).await;
    let have = parse(&text);
    assert_zero(
        &have,
        &[b3("sessions", &[]), b3("upstream_connections_active", &[])],
        &text,
    );
    assert_present(
        &have,
        &[
            b3("backend_up", &[]),
            b3("health_checks_total", &[("result", "pass")]),
            b3("health_checks_total", &[("result", "fail")]),
        ],
        &text,
    );
    assert_eq!(
        have.get(&series("config_reloads_total", &[("result", "ok")])),
        Some(&1.0)
    );

    // Removed: it drains for 1 s, then leaves with every series of its own.
    reload(yaml(2)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics(&t).await;
        if !text.contains("backend=\"b3\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b3's series still exported 15 s after its removal:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
