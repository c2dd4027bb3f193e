//! `contrib/grafana-tether.json` cannot drift from the code: it parses, has
//! the expected shape, and queries only metric families that a running tether
//! (Redis store, a health-checked pool, a reload, a drain) exports on `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const DASHBOARD: &str = "contrib/grafana-tether.json";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every metric family the dashboard queries: `tether_*` names in each `expr`
/// (and templating `query`/`definition`), histogram series mapped to their family.
fn dashboard_metrics(dash: &serde_json::Value) -> BTreeSet<String> {
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        ("query", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(serde_json::Value::String(s)) = q.get("query") {
                                out.push(s.clone());
                            }
                        }
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    collect(dash, &mut exprs);
    let re = regex::Regex::new(r"\btether_[a-z_]+").unwrap();
    let mut out = BTreeSet::new();
    for e in &exprs {
        for m in re.find_iter(e) {
            let name = m.as_str();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
    }
    out
}

/// Metric families on `/metrics` (`# HELP` / `# TYPE` lines).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
        })
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn grafana_dashboard_is_valid_json_with_the_expected_shape() {
    let dash: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("contrib/grafana-tether.json parses");
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion"
    );
    assert!(
        dash["__inputs"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["name"] == "DS_PROMETHEUS")),
        "a DS_PROMETHEUS datasource input"
    );
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for v in ["instance", "pool"] {
        assert!(vars.contains(&v), "template variable {v}: {vars:?}");
    }
    let metrics = dashboard_metrics(&dash);
    for m in [
        "tether_requests_total",
        "tether_request_duration_seconds",
        "tether_sessions",
        "tether_session_moves_total",
        "tether_backend_up",
        "tether_health_checks_total",
        "tether_store_up",
        "tether_store_operations_total",
        "tether_config_reloads_total",
        "tether_connections_active",
        "tether_upstream_connections_active",
        "tether_vip_leader",
        "tether_vip_transitions_total",
        "tether_store_max_sessions",
    ] {
        assert!(metrics.contains(m), "the dashboard does not chart {m}");
    }
    // Families whose series appear only with their first event (a status, a
    // move): every query over one falls back to 0, or its panel says why it is
    // empty, so a fresh tether shows no bare "No data". Every other family is
    // exported from the start (tests/metrics_start.rs).
    for p in dash["panels"].as_array().expect("panels") {
        let no_value = p["fieldConfig"]["defaults"]["noValue"].is_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap_or_default();
            let late = ["tether_requests_total", "tether_session_moves_total"]
                .iter()
                .any(|f| e.contains(f));
            assert!(
                !late || no_value || e.contains(" or "),
                "panel {:?}: {e} shows No data until the first event: add `or ...` or a noValue",
                p["title"]
            );
        }
    }
    // Panel ids are unique (Grafana keys panel state by id).
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    use common::{backend_of, backends, Client, Tether};

    let dash: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("json");
    let wanted = dashboard_metrics(&dash);
    assert!(!wanted.is_empty());

    // Redis for the store families, an http-checked pool for health, traffic for the rest.
    let redis = common::redis::RedisServer::start();
    let b = backends(3).await;
    let yaml = common::config(
        &b,
        "{ key: { cookie: { name: TETHER, insert: true } } }",
        "    drain_timeout: 1s\n    health: { kind: http, path: /healthz, interval: 200ms, timeout: 100ms, rise: 1, fall: 1 }\n",
        "",
        &format!(
            "store: {{ kind: redis, redis: {{ url: \"{}\", prefix: docs }} }}\n",
            redis.url()
        ),
    );
    let t = Tether::start(&yaml);
    let mut sessions = Vec::new();
    for _ in 0..30 {
        let r = Client::new(t.addr("web"))
            .get("/", &[])
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
        sessions.push((r.set_cookie("TETHER").expect("cookie"), backend_of(&r)));
    }
    let mut admin = Client::new(t.admin);
    let r = admin
        .request("POST", "/api/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "reload: {}", r.text());
    // A drain with a short deadline: its sessions move (reason drain).
    let victim = sessions[0].1.clone();
    let r = Client::new(t.admin)
        .request(
            "POST",
            &format!("/api/pools/app/backends/{victim}/drain"),
            &[],
            br#"{"deadline":"1s"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "drain: {}", r.text());

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The victim's sessions come back after the deadline and are moved.
        for (cookie, _) in sessions.iter().filter(|(_, o)| *o == victim) {
            let _ = Client::new(t.addr("web"))
                .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
                .await;
        }
        let text = Client::new(t.admin)
            .get("/metrics", &[])
            .await
            .expect("metrics")
            .text();
        let have = exported(&text);
        let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{DASHBOARD} queries metrics that /metrics of a running tether (redis store, \
             health checks, traffic, a reload and a drain) does not export: {missing:?}\n\
             exported: {have:?}"
        );
    }
}
