//! The checker against real HTTP health endpoints on 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config;
use crate::store::memory::MemoryStore;
use crate::store::Store;

/// A health endpoint answering 200 while `ok`, 500 otherwise; counts requests.
struct Endpoint {
    addr: SocketAddr,
    ok: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

async fn endpoint() -> Endpoint {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let ok = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicUsize::new(0));
    let (ok2, hits2) = (ok.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let (ok, hits) = (ok2.clone(), hits2.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let status = if ok.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "500 Oops"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    Endpoint { addr, ok, hits }
}

/// An address nothing listens on.
async fn refused() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An address that accepts connections and never answers (a frozen backend).
async fn silent() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// Pool `app` with `health` and backends b0, b1, ... at `addrs`.
fn pool(health: &str, addrs: &[SocketAddr]) -> (Arc<PoolRt>, Arc<Metrics>) {
    let backends: String = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("      - {{ id: b{i}, addr: \"{a}\" }}\n"))
        .collect();
    let text = format!(
        "pools:\n  app:\n    health: {health}\n    backends:\n{backends}\
         listeners:\n  - name: web\n    bind: 127.0.0.1:1\n    pool: app\n    affinity: {{ key: source_ip }}\n"
    );
    let snap = config::parse(Path::new("test.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let store = MemoryStore::open(&snap.store).unwrap();
    let metrics = Arc::new(Metrics::new());
    let pool = PoolRt::new(snap.pools[0].clone(), store.pool("app"), metrics.clone());
    (Arc::new(pool), metrics)
}

fn checks(m: &Metrics, backend: &str, result: &str) -> u64 {
    m.health_checks
        .with_label_values(&["app", backend, result])
        .get()
}

fn be(pool: &PoolRt, idx: usize) -> Arc<BackendRt> {
    pool.view().backends[idx].clone()
}

async fn wait_for(pool: &PoolRt, idx: usize, h: Health, within: Duration) {
    let end = Instant::now() + within;
    while be(pool, idx).health() != h {
        assert!(
            Instant::now() < end,
            "backend {idx} not {h:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn first_round_decides_every_backend_within_the_timeout() {
    let up = endpoint().await;
    let addrs = [up.addr, refused().await, silent().await];
    let (pool, m) = pool("{ interval: 1s, timeout: 200ms, rise: 3, fall: 3 }", &addrs);
    assert!(pool
        .view()
        .backends
        .iter()
        .all(|b| b.health() == Health::Unknown));
    let start = Instant::now();
    first_round(&pool, &m).await;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(600), "took {took:?}");
    // One result decides, whatever rise and fall say.
    let states: Vec<_> = pool.view().backends.iter().map(|b| b.health()).collect();
    assert_eq!(states, [Health::Up, Health::Down, Health::Down]);
    assert_eq!(checks(&m, "b0", "pass"), 1);
    assert_eq!(checks(&m, "b1", "fail"), 1);
    assert_eq!(checks(&m, "b2", "fail"), 1);
}

#[tokio::test]
async fn loops_follow_rise_and_fall_and_dropping_stops_them() {
    let a = endpoint().await;
    let b = endpoint().await;
    let (pool, m) = pool(
        "{ kind: http, interval: 40ms, timeout: 30ms, rise: 3, fall: 2 }",
        &[a.addr, b.addr],
    );
    first_round(&pool, &m).await;
    assert_eq!(be(&pool, 0).health(), Health::Up);
    let checks_rt = Checks::start(pool.clone(), m.clone());

    a.ok.store(false, Ordering::SeqCst);
    wait_for(&pool, 0, Health::Down, Duration::from_secs(2)).await;
    assert!(checks(&m, "b0", "fail") >= 2);
    assert_eq!(be(&pool, 1).health(), Health::Up, "b1 is untouched");

    // Read while b0 fails, so every pass counted from here is part of the rise.
    let passes = checks(&m, "b0", "pass");
    a.ok.store(true, Ordering::SeqCst);
    wait_for(&pool, 0, Health::Up, Duration::from_secs(2)).await;
    assert!(checks(&m, "b0", "pass") >= passes + 3, "rise 3");

    // A passive mark-down between probes needs `rise` passes to undo.
    let passes = checks(&m, "b1", "pass");
    pool.mark_health(&be(&pool, 1), Health::Down, "test");
    wait_for(&pool, 1, Health::Up, Duration::from_secs(2)).await;
    // rise 3; a probe in flight across the mark may count without being seen here.
    assert!(checks(&m, "b1", "pass") >= passes + 2, "rise after passive");

    drop(checks_rt);
    // Let in-flight probes finish, then nothing may arrive any more.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let hits = (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst)),
        hits,
        "probes after abort"
    );
}

#[tokio::test]
async fn kind_none_probes_nothing() {
    let (pool, m) = pool("{ kind: none }", &[refused().await]);
    assert_eq!(be(&pool, 0).health(), Health::Up, "trusted from the start");
    first_round(&pool, &m).await;
    let _checks = Checks::start(pool.clone(), m.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(be(&pool, 0).health(), Health::Up);
    assert_eq!(checks(&m, "b0", "fail"), 0);
}

#[tokio::test]
async fn a_reload_starts_and_stops_loops_with_the_backends() {
    let a = endpoint().await;
    let b = endpoint().await;
    let health = "{ kind: http, interval: 10s, timeout: 200ms, rise: 1, fall: 1 }";
    let (pool, m) = pool(health, &[a.addr]);
    first_round(&pool, &m).await;
    let c = Checks::start(pool.clone(), m.clone());
    let (bigger, _) = self::pool(health, &[a.addr, b.addr]);
    pool.reconfigure(bigger.cfg().as_ref().clone());
    assert_eq!(
        be(&pool, 1).health(),
        Health::Unknown,
        "no session before its first check"
    );
    c.sync(true);
    // Probed at once, not after the 10 s interval.
    wait_for(&pool, 1, Health::Up, Duration::from_secs(2)).await;
    let (smaller, _) = self::pool(health, &[a.addr]);
    pool.reconfigure(smaller.cfg().as_ref().clone());
    assert!(be(&pool, 1).removed(), "kept while it drains");
    assert_eq!(be(&pool, 1).state(), "removed");
}

#[test]
fn jitter_stays_within_ten_percent() {
    let i = Duration::from_secs(1);
    let samples: Vec<Duration> = (0..1000).map(|_| jittered(i)).collect();
    assert!(samples
        .iter()
        .all(|d| *d >= i.mul_f64(0.9) && *d <= i.mul_f64(1.1)));
    // Not constant: loops that start together must drift apart.
    assert!(samples.iter().any(|d| *d != samples[0]));
}

#[test]
fn slowstart_ramps_linearly() {
    let ss = Duration::from_secs(30);
    assert_eq!(
        slowstart_ramp(Some(Duration::ZERO), Duration::ZERO),
        1.0,
        "off"
    );
    assert_eq!(
        slowstart_ramp(Some(Duration::from_secs(3)), Duration::ZERO),
        1.0
    );
    assert_eq!(slowstart_ramp(None, ss), 1.0, "no transition recorded");
    assert_eq!(slowstart_ramp(Some(Duration::ZERO), ss), 0.0);
    assert!((slowstart_ramp(Some(Duration::from_secs(15)), ss) - 0.5).abs() < 1e-9);
    assert!((slowstart_ramp(Some(Duration::from_secs(3)), ss) - 0.1).abs() < 1e-9);
    assert_eq!(slowstart_ramp(Some(ss), ss), 1.0);
    assert_eq!(slowstart_ramp(Some(Duration::from_secs(3600)), ss), 1.0);
}
