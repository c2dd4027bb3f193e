//! Two tether instances on real replicated and encrypted Redis deployments:
//! a master and its replica watched by three sentinels, whose master is killed
//! (SIGKILL) under traffic; and a TLS-only redis-server (`rediss://`, a CA the
//! test makes, given with `store.redis.ca`) that is killed and comes back empty.
//! Neither fails a request or loses a session.

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::time::{Duration, Instant};

use common::redis_ha::{cli, Sentinels, TlsRedis, Traffic, SENTINEL_DOWN_AFTER_MS};
use common::shared_store::{all_agree, sessions, store_up, wait_store_up, yaml};
use common::{backends, Tether};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed_without_a_failed_request() {
    let mut s = Sentinels::start();
    let b = backends(3).await;
    let redis = format!(
        "url: \"redis:///0\", sentinel: {{ master: mymaster, nodes: {} }}",
        s.nodes_yaml()
    );
    let cfg = yaml(&b, &redis);
    let (a, bb) = (Tether::start(&cfg), Tether::start(&cfg));
    let made = sessions(&a, &bb, 100).await;
    let traffic = Traffic::start([a.addr("web"), bb.addr("web")], made, 5);
    // Sessions older than a second are on the replica (asynchronous replication).
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let killed_at = Instant::now();
    let replica = s.replica.port;
    s.master.kill();
    while s.master_port() != Some(replica) {
        assert!(killed_at.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promoted = killed_at.elapsed();
    wait_store_up(&a, Duration::from_secs(10)).await;
    wait_store_up(&bb, Duration::from_secs(10)).await;
    let followed = killed_at.elapsed();
    eprintln!(
        "sentinels promoted the replica {promoted:?} after the kill (down-after {SENTINEL_DOWN_AFTER_MS} ms); \
         both instances on it after {followed:?}"
    );
    // The reconnect loop tries every 250 ms: the promotion is followed at once.
    assert!(
        followed - promoted < Duration::from_secs(2),
        "tether followed the promoted replica {:?} after the sentinels",
        followed - promoted
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (ok, failed, made) = traffic.stop().await;
    eprintln!(
        "sentinel failover: {ok} requests fine, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the failover: {failed:?}"
    );
    assert!(ok > 100, "traffic flowed: {ok}");
    all_agree(&a, &bb, &made, Duration::from_secs(10), |key| {
        cli(replica, &["GET", key])
    })
    .await;
}

/// Start tether on `yaml` expecting it to exit: (exit code, stderr).
fn start_fails(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("-c")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_store_works_over_tls_with_the_configured_ca() {
    let ca = tls::TestCa::new("tether test redis ca");
    let leaf = ca.leaf("redis", &["localhost", "127.0.0.1"]);
    let mut r = TlsRedis::start(&ca.pem(), &leaf);
    let b = backends(3).await;
    let url = format!("url: \"rediss://127.0.0.1:{}/0\"", r.node.port);

    // The system roots do not know the test's CA: a clear error at start.
    let (code, err) = start_fails(&yaml(&b, &url));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );

    let cfg = yaml(&b, &format!("{url}, ca: \"{}\"", r.ca.display()));
    let (a, bb) = (Tether::start(&cfg), Tether::start(&cfg));
    let made = sessions(&a, &bb, 60).await;
    all_agree(&a, &bb, &made, Duration::from_secs(10), |key| {
        r.cli(&["GET", key])
    })
    .await;

    // Redis dies under traffic and comes back empty: nothing fails, everything is written back.
    let traffic = Traffic::start([a.addr("web"), bb.addr("web")], made, 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.node.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    for t in [&a, &bb] {
        assert!(!store_up(t).await, "the outage is seen");
    }
    r.restart();
    wait_store_up(&a, Duration::from_secs(10)).await;
    wait_store_up(&bb, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed, made) = traffic.stop().await;
    eprintln!("TLS outage: {ok} requests fine, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "requests failed during the outage: {failed:?}"
    );
    assert!(ok > 100, "traffic flowed: {ok}");
    all_agree(&a, &bb, &made, Duration::from_secs(10), |key| {
        r.cli(&["GET", key])
    })
    .await;
    assert!(
        r.cli(&["EXISTS", "t:secret"]).contains('1'),
        "the secret is written back"
    );
}
