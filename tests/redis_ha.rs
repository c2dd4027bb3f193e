//! Two tether instances on real replicated and encrypted Redis deployments:
//! a master and its replica watched by three sentinels, whose master is killed
//! (SIGKILL) under traffic; and a TLS-only redis-server (`rediss://`, a CA the
//! test makes, given with `store.redis.ca`) that is killed and comes back empty.
//! Neither fails a request or loses a session.

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::time::{Duration, Instant};

use common::redis_ha::{
    cli, new_session, owner_via, Made, Sentinels, TlsRedis, Traffic, SENTINEL_DOWN_AFTER_MS,
};
use common::{backend_yaml, backends, whoami, Client, Tether};

fn yaml(b: &[whoami::Running], redis: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         store: {{ kind: redis, redis: {{ {redis}, prefix: t, command_timeout: 200ms, connect_timeout: 500ms }} }}\n\
         pools:\n  app:\n    health: {{ kind: tcp, interval: 30s, timeout: 500ms, rise: 1, fall: 100 }}\n    backends:\n{}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n",
        backend_yaml(b)
    )
}

fn redis_key(cookie: &str) -> String {
    format!("t:s:app:{}", &cookie[..22])
}

async fn store_up(t: &Tether) -> bool {
    let m = Client::new(t.admin)
        .get("/metrics", &[])
        .await
        .unwrap()
        .text();
    m.contains("tether_store_up{store=\"redis\"} 1")
}

async fn wait_store_up(t: &Tether, limit: Duration) {
    let t0 = Instant::now();
    while !store_up(t).await {
        assert!(
            t0.elapsed() < limit,
            "store not up within {limit:?}:\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` sessions made through the two instances in turn, each confirmed by
/// its cookie coming back through the other (only then is it in Redis).
async fn sessions(a: &Tether, b: &Tether, n: usize) -> Vec<Made> {
    let mut out = Vec::new();
    for i in 0..n {
        let (t, other) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let m = new_session(t.addr("web")).await.expect("new session");
        let owner = owner_via(other.addr("web"), &m.cookie).await;
        assert_eq!(
            owner.as_deref(),
            Ok(m.owner.as_str()),
            "the other instance agrees"
        );
        out.push(m);
    }
    out
}

/// Both instances route every session to its owner, and `stored(key)` (what
/// Redis holds) names that owner within `limit` (write-backs).
async fn all_agree(a: &Tether, b: &Tether, list: &[Made], stored: impl Fn(&str) -> String) {
    let t0 = Instant::now();
    for m in list {
        for t in [a, b] {
            let owner = owner_via(t.addr("web"), &m.cookie).await;
            assert_eq!(owner.as_deref(), Ok(m.owner.as_str()), "{}", m.cookie);
        }
        loop {
            let value = stored(&redis_key(&m.cookie));
            if value.contains(&format!("\"backend\":\"{}\"", m.owner)) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "session {} (made {:?} ago) not in Redis with owner {}: `{value}`",
                m.cookie,
                m.at.elapsed(),
                m.owner
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

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
    all_agree(&a, &bb, &made, |key| cli(replica, &["GET", key])).await;
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
    all_agree(&a, &bb, &made, |key| r.cli(&["GET", key])).await;

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
    all_agree(&a, &bb, &made, |key| r.cli(&["GET", key])).await;
    assert!(
        r.cli(&["EXISTS", "t:secret"]).contains('1'),
        "the secret is written back"
    );
}
