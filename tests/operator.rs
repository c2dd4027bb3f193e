//! Operator tooling over real sockets: `protect_reads`, the config warning
//! for an open admin listener, access logs (HTTP and TCP) without secrets, the
//! status page and the data it shows (check history, moves feed).

mod common;

use std::time::{Duration, Instant};

use common::echo::echoes;
use common::tcp::{hello, listener_yaml, pool_yaml};
use common::{backends, config, Client, Tether};

fn write_token(dir: &tempfile::TempDir) {
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_reads_puts_every_api_call_behind_the_token() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    write_token(&dir);
    let yaml = config(&b, "{ key: source_ip }", "", "", "").replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_file: token, protect_reads: true }",
    );
    let t = Tether::start_in(dir, &yaml);
    let auth = [("authorization", "Bearer s3cret-token")];
    for path in ["/api/pools", "/api/reload", "/metrics"] {
        let r = Client::new(t.admin).get(path, &[]).await.unwrap();
        assert_eq!(r.status, 401, "{path} without the token: {}", r.text());
        let r = Client::new(t.admin).get(path, &auth).await.unwrap();
        assert_eq!(r.status, 200, "{path} with the token: {}", r.text());
    }
    // Liveness probes need no token.
    assert_eq!(
        Client::new(t.admin)
            .get("/api/ping", &[])
            .await
            .unwrap()
            .status,
        200
    );
    let r = Client::new(t.admin)
        .get("/api/pools", &[("authorization", "Bearer wrong")])
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    // The page itself holds no data and asks for the token.
    let r = Client::new(t.admin).get("/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("<html"), "the status page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stay_open_without_protect_reads() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    write_token(&dir);
    let yaml = config(&b, "{ key: source_ip }", "", "", "").replace(
        "admin: { listen: \"127.0.0.1:0\" }",
        "admin: { listen: \"127.0.0.1:0\", token_file: token }",
    );
    let t = Tether::start_in(dir, &yaml);
    assert_eq!(
        Client::new(t.admin)
            .get("/api/pools", &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        Client::new(t.admin)
            .get("/metrics", &[])
            .await
            .unwrap()
            .status,
        200
    );
    let r = Client::new(t.admin)
        .request("POST", "/api/reload", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 401, "mutating calls still need it");
}

#[test]
fn an_admin_listener_beyond_loopback_without_a_token_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.yaml");
    let text = "admin: { listen: \"0.0.0.0:9090\" }\npools:\n  app:\n    backends:\n      - { id: a, addr: \"127.0.0.1:9001\" }\n\
                listeners:\n  - { name: web, bind: \"127.0.0.1:8080\", pool: app, affinity: { key: source_ip } }\n";
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "a warning, not an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:")
            && err.contains("admin.listen 0.0.0.0:9090")
            && err.contains("token_file"),
        "{err}"
    );
    // With a token, no warning.
    std::fs::write(dir.path().join("token"), "t").unwrap();
    std::fs::write(
        &file,
        text.replace(
            "listen: \"0.0.0.0:9090\"",
            "listen: \"0.0.0.0:9090\", token_file: token",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning:"));
}

/// Wait until the log has a line containing every one of `parts`.
fn wait_log_line(t: &Tether, parts: &[&str]) -> String {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = t
            .log_text()
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
        {
            return l.to_owned();
        }
        assert!(
            Instant::now() < end,
            "no log line with {parts:?}:\n{}",
            t.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_name_the_request_without_secrets() {
    let b = backends(2).await;
    let yaml = config(
        &b,
        "{ key: { cookie: { name: TETHER, insert: true, max_age: 8h } } }",
        "",
        "    access_log: true\n",
        "",
    );
    let t = Tether::start(&yaml);
    let mut c = Client::new(t.addr("web"));
    let first = c.get("/private?token=abc123", &[]).await.unwrap();
    let cookie = first.set_cookie("TETHER").unwrap();
    let r = c
        .get(
            "/private?token=abc123",
            &[
                ("cookie", &format!("TETHER={cookie}")),
                ("authorization", "Bearer zz-secret"),
            ],
        )
        .await
        .unwrap();
    let owner = common::backend_of(&r);
    let line = wait_log_line(
        &t,
        &[
            "tether::access",
            "status=200",
            &format!("backend={owner}"),
            "method=GET",
        ],
    );
    for field in [
        "listener=web",
        "pool=app",
        "session=",
        "bytes_out=",
        "duration_ms=",
        "moved_from=",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    let all = t.log_text();
    for secret in [cookie.as_str(), "abc123", "zz-secret"] {
        assert!(
            !all.contains(secret),
            "secret {secret:?} in the log:\n{all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_access_logs_count_the_session_bytes() {
    let e = echoes(1, false).await;
    let listeners = listener_yaml("tcp", "tcp", "{ key: source_ip }", "    access_log: true\n");
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n{}listeners:\n{listeners}",
        pool_yaml(&e, "")
    );
    let t = Tether::start(&yaml);
    let mut s = tokio::net::TcpStream::connect(t.addr("tcp")).await.unwrap();
    let banner = hello(&mut s, b"0123456789").await.unwrap();
    drop(banner);
    drop(s);
    let line = wait_log_line(&t, &["tether::access", "listener=tcp", "connection"]);
    assert!(line.contains("bytes_in=10"), "{line}");
    assert!(line.contains(&format!("backend={}", e[0].id)), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_api_shows_check_history_and_recent_moves() {
    let b = backends(2).await;
    let health = "    health: { kind: http, path: /healthz, interval: 100ms, timeout: 80ms, rise: 1, fall: 1 }\n";
    let t = Tether::start(&config(&b, "{ key: { header: X-Device } }", health, "", ""));
    let r = Client::new(t.addr("web"))
        .get("/", &[("x-device", "k1")])
        .await
        .unwrap();
    let owner = common::backend_of(&r);
    let victim = b.iter().find(|x| x.id == owner).unwrap();
    victim.stats.set_health_status(503);
    common::wait_state(&t, &owner, "down", Duration::from_secs(3)).await;
    let r = Client::new(t.addr("web"))
        .get("/", &[("x-device", "k1")])
        .await
        .unwrap();
    assert_ne!(common::backend_of(&r), owner);
    let pools = Client::new(t.admin)
        .get("/api/pools", &[])
        .await
        .unwrap()
        .json();
    let pool = &pools["pools"][0];
    let be = pool["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == owner.as_str())
        .unwrap();
    let checks = be["checks"].as_array().unwrap();
    assert!(checks.len() >= 2 && checks.len() <= 20, "{be}");
    assert_eq!(checks.last().unwrap()["ok"], false, "{be}");
    assert!(
        checks.last().unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{be}"
    );
    assert!(checks.iter().any(|c| c["ok"] == true), "{be}");
    let moves = pool["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{pool}");
    assert_eq!(moves[0]["from"], owner.as_str());
    assert_eq!(moves[0]["reason"], "down");
    let session = moves[0]["session"].as_str().unwrap();
    assert_eq!(session.len(), 12, "a short hash");
    assert_ne!(session, "k1", "never the key itself");
}
