//! Backends named by host name: resolved at load and every
//! `resolve_interval`; a new address takes new connections, sessions stay;
//! a failed lookup keeps the last good address.
//!
//! The name lives in a private /etc/hosts: tether runs in a mount namespace
//! (`unshare --mount`) where the test's own hosts file is bind-mounted over
//! /etc/hosts, so the machine's file is never touched. That needs root (CI
//! runs as root); elsewhere the test fails saying so rather than passing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::tcp::{metric, metrics};
use common::{backend_of, whoami, Client, Tether};

const NAME: &str = "backend.tether.test";

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (it runs tether in a mount namespace with its own /etc/hosts); \
             run it as root, as CI does, or skip it with `--skip named_backend`"
        );
    }
}

/// tether in a mount namespace whose /etc/hosts is `hosts`.
fn start_with_hosts(yaml: &str, hosts: &std::path::Path) -> Tether {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(hosts)
        .arg(env!("CARGO_BIN_EXE_tether"));
    Tether::spawn_cmd(dir, config, cmd, &[])
}

async fn answered_by(t: &Tether, key: &str) -> String {
    // A new connection each time: new connections follow the address.
    let r = Client::new(t.addr("web"))
        .get("/", &[("x-device", key)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    backend_of(&r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_backend_follows_its_address_and_keeps_its_sessions() {
    require_root();
    let first = whoami::start("first-address", "127.0.0.2:0").await.unwrap();
    let port = first.addr.port();
    let _second = whoami::start("second-address", &format!("127.0.0.3:{port}"))
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let hosts = files.path().join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n127.0.0.2 {NAME}\n")).unwrap();
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         pools:\n  app:\n    resolve_interval: 300ms\n\
         \x20   health: {{ kind: http, path: /healthz, interval: 300ms, timeout: 200ms }}\n\
         \x20   backends:\n      - {{ id: app-1, addr: \"{NAME}:{port}\" }}\n\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    affinity: {{ key: {{ header: X-Device }} }}\n"
    );
    let t = start_with_hosts(&yaml, &hosts);
    assert_eq!(answered_by(&t, "s1").await, "first-address");

    // The name moves (the file is rewritten in place: the bind mount follows its inode).
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n127.0.0.3 {NAME}\n")).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    while answered_by(&t, "s1").await != "second-address" {
        assert!(
            Instant::now() < end,
            "new connections never followed\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Same session, same backend id: nothing moved.
    let s = Client::new(t.admin)
        .get("/api/pools/app/sessions/s1", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(s["session"]["backend"], "app-1", "{s}");
    assert!(s["session"]["moved_from"].is_null(), "{s}");
    let m = metrics(&t).await;
    assert!(
        metric(
            &m,
            "tether_backend_resolutions_total{backend=\"app-1\",pool=\"app\",result=\"changed\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        !m.contains("tether_session_moves_total{"),
        "no session moved"
    );

    // The name disappears: the last good address stays and the failure is reported.
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&t).await;
        if metric(
            &m,
            "tether_backend_resolutions_total{backend=\"app-1\",pool=\"app\",result=\"error\"}",
        ) >= 1.0
        {
            break;
        }
        assert!(
            Instant::now() < end,
            "no failed lookup reported\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered_by(&t, "s1").await, "second-address");
    assert_eq!(answered_by(&t, "s2").await, "second-address");
    assert!(t.log_text().contains("backend name did not resolve"));
}
