//! `contrib/tether-alerts.yml` and the metrics behind it, checked with
//! promtool (Debian's `prometheus` package; `scripts/deps.sh --test` installs
//! it): the rules load (`check rules`), fire as
//! `contrib/tether-alerts.test.yml` expects (`test rules`), query only metric
//! families a fresh tether exports, and a running tether's `/metrics` passes
//! `check metrics`. The Grafana dashboard's queries are parsed by promtool too.
//! Without promtool these tests fail: they never pass by skipping.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::tcp::metrics;
use common::{backends, Client, Tether};

const RULES: &str = "contrib/tether-alerts.yml";
const RULE_TESTS: &str = "contrib/tether-alerts.test.yml";
const DASHBOARD: &str = "contrib/grafana-tether.json";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// promtool from PATH, or a failure that says how to get it.
fn promtool() -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("promtool").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "promtool not found in PATH: it comes with Debian's `prometheus` package; \
         `scripts/deps.sh --test` (run by `make test`) installs it, or \
         `apt-get install -y --no-install-recommends prometheus`"
    );
    Command::new("promtool")
}

fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn promtool");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write to promtool");
    }
    drop(input);
    child.wait_with_output().expect("promtool output")
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alerting_rules_load() {
    let mut cmd = promtool();
    cmd.args(["check", "rules"]).arg(repo(RULES));
    assert_ok("promtool check rules", &run(cmd, None));
}

#[test]
fn the_alerting_rules_fire_as_their_tests_expect() {
    let mut cmd = promtool();
    cmd.args(["test", "rules"]).arg(repo(RULE_TESTS));
    assert_ok("promtool test rules", &run(cmd, None));
}

/// The `expr` of every rule in the rules file.
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo(RULES)).expect("rules file");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("rules yaml");
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            out.push(r["expr"].as_str().expect("expr").to_owned());
        }
    }
    out
}

/// Every query of the dashboard, Grafana's variables replaced by plain values.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo(DASHBOARD)).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard json");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(
                    e.replace("$__rate_interval", "1m")
                        .replace("$__range", "1h")
                        .replace("$instance", ".*")
                        .replace("$pool", ".*"),
                );
            }
        }
    }
    out
}

/// `tether_*` metric families named in `exprs`.
fn families(exprs: &[String]) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\btether_[a-z_]+").expect("regex");
    exprs
        .iter()
        .flat_map(|e| re.find_iter(e).map(|m| m.as_str().to_owned()))
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .map_or(n.clone(), str::to_owned)
        })
        .collect()
}

#[test]
fn every_dashboard_query_parses() {
    // promtool parses recording rules' expressions: one rule per query.
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dashboard_exprs().iter().enumerate() {
        let quoted = serde_json::to_string(e).expect("quote");
        yaml.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &yaml).expect("write");
    let mut cmd = promtool();
    cmd.args(["check", "rules"]).arg(&file);
    assert_ok(
        &format!("promtool check rules on {DASHBOARD}'s queries"),
        &run(cmd, None),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_tethers_metrics_pass_promtool_and_feed_every_rule() {
    // Redis for the store families, checks and traffic for the rest.
    let redis = common::redis::RedisServer::start();
    let b = backends(2).await;
    let yaml = common::config(
        &b,
        "{ key: { cookie: { name: T, insert: true } } }",
        "    health: { kind: http, path: /healthz, interval: 1s, timeout: 500ms }\n",
        "",
        &format!(
            "store: {{ kind: redis, redis: {{ url: \"{}\", prefix: alerts }} }}\n",
            redis.url()
        ),
    );
    let t = Tether::start(&yaml);
    // Before any traffic, every family a rule queries is there already.
    let fresh = metrics(&t).await;
    let exported: BTreeSet<String> = fresh
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<String> = families(&rule_exprs())
        .into_iter()
        .filter(|f| !exported.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "{RULES} queries families a fresh tether does not export: {missing:?}\n{fresh}"
    );

    for _ in 0..5 {
        let r = Client::new(t.addr("web"))
            .get("/", &[])
            .await
            .expect("request");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let text = metrics(&t).await;
    assert!(text.contains("tether_requests_total{"), "{text}");
    let mut cmd = promtool();
    cmd.args(["check", "metrics"]);
    assert_ok(
        "promtool check metrics on /metrics",
        &run(cmd, Some(text.as_bytes())),
    );
}
