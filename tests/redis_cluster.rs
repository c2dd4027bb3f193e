//! Two tether instances on a real six-node Redis Cluster the test forms
//! (`redis-cli --cluster create`, three masters with one replica each,
//! `cluster-node-timeout 1000`): sessions spread over every master, both
//! instances agree on every session, a reshard under traffic fails no
//! request, and so do two masters killed (SIGKILL) in turn, the first being
//! the one an instance's events subscription is on: replicas are promoted and
//! no session is lost. The tests take turns: each runs six servers.

mod common;

use std::time::{Duration, Instant};

use common::redis_ha::{cli, cli_with, subscribed_on, Cluster, Traffic};
use common::shared_store::{all_agree, metrics, sessions, wait_store_up, yaml};
use common::{backends, wait_state, Client, Tether};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many slots the node `id` serves (`CLUSTER NODES`: `a-b` ranges and single slots).
fn slots(c: &Cluster, id: &str) -> usize {
    let nodes = cli(c.live_port(), &["CLUSTER", "NODES"]);
    let line = nodes
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_default();
    (line.split_whitespace().skip(8))
        .filter(|r| !r.starts_with('['))
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0),
            None => 1,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_every_master_and_a_reshard_fails_no_request() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start();
    let b = backends(3).await;
    let cfg = yaml(
        &b,
        &format!("cluster: {{ nodes: {} }}", cluster.seeds_yaml()),
    );
    let (a, bb) = (Tether::start(&cfg), Tether::start(&cfg));
    let made = sessions(&a, &bb, 300).await;
    let masters = cluster.masters();
    for (_, port) in &masters {
        let keys = cli(*port, &["--scan", "--pattern", "t:s:app:*"]);
        let n = keys.lines().count();
        assert!(
            n > 50,
            "master {port} holds {n} of 300 sessions\n{}",
            a.log_text()
        );
    }
    all_agree(&a, &bb, &made, Duration::from_secs(5), |key| {
        cluster.get(key)
    })
    .await;

    // Move 3000 slots (and their keys) from the first master to the second
    // while both instances serve known and new sessions.
    let traffic = Traffic::start([a.addr("web"), bb.addr("web")], made, 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (from, to) = (masters[0].clone(), masters[1].clone());
    let to_id = to.0.clone();
    let before = slots(&cluster, &to_id);
    let seed = format!("127.0.0.1:{}", from.1);
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        let args = [
            "--cluster",
            "reshard",
            &seed,
            "--cluster-from",
            &from.0,
            "--cluster-to",
            &to.0,
            "--cluster-slots",
            "3000",
            "--cluster-yes",
        ];
        cli_with(&[], &args)
    })
    .await
    .unwrap();
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed, made) = traffic.stop().await;
    eprintln!(
        "reshard of 3000 slots took {took:?}; {ok} requests fine, {} failed",
        failed.len()
    );
    assert!(out.contains("Moving slot"), "reshard did not run:\n{out}");
    assert!(
        failed.is_empty(),
        "requests failed during the reshard: {failed:?}"
    );
    assert!(ok > 200, "traffic flowed: {ok}");
    // The receiving master serves 3000 more slots.
    assert_eq!(slots(&cluster, &to_id), before + 3000);
    all_agree(&a, &bb, &made, Duration::from_secs(5), |key| {
        cluster.get(key)
    })
    .await;
    // Redirections were followed by the client: the store never fell back to
    // its outage mode (nothing was queued).
    for t in [&a, &bb] {
        let m = metrics(t).await;
        assert!(m.contains("tether_store_up{store=\"redis\"} 1"), "{m}");
        let queued = m.lines().find(|l| {
            l.starts_with("tether_store_operations_total")
                && l.contains("op=\"queue\"")
                && l.contains("result=\"queued\"")
        });
        let n = queued.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert!(
            n.unwrap_or(0.0) == 0.0,
            "writes queued during the reshard: {queued:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_masters_killed_in_turn_fail_no_request_and_lose_no_session() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start();
    let b = backends(3).await;
    let cfg = yaml(
        &b,
        &format!("cluster: {{ nodes: {} }}", cluster.seeds_yaml()),
    );
    let (a, bb) = (Tether::start(&cfg), Tether::start(&cfg));
    let made = sessions(&a, &bb, 150).await;
    let original: Vec<u16> = cluster.masters().iter().map(|m| m.1).collect();
    let traffic = Traffic::start([a.addr("web"), bb.addr("web")], made, 5);
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // First the master an events subscription is on, then another original master.
    let t0 = Instant::now();
    let mut subscribed = subscribed_on(&cluster);
    while subscribed.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no subscription on a master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        subscribed = subscribed_on(&cluster);
    }
    let first = subscribed[0];
    let second = *original
        .iter()
        .find(|p| **p != first)
        .expect("another master");
    let mut timings = Vec::new();
    for victim in [first, second] {
        let killed_at = Instant::now();
        cluster.node(victim).kill();
        let promoted = cluster.wait_failover(victim, Duration::from_secs(20));
        wait_store_up(&a, Duration::from_secs(10)).await;
        wait_store_up(&bb, Duration::from_secs(10)).await;
        let up = killed_at.elapsed();
        eprintln!("master {victim} killed: replica promoted after {promoted:?}, both stores up after {up:?}");
        timings.push((victim, promoted, up));
        // A second of traffic on the new layout before the next kill.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let (ok, failed, made) = traffic.stop().await;
    eprintln!(
        "failovers {timings:?}: {ok} requests fine, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the failovers: {failed:?}"
    );
    assert!(ok > 200, "traffic flowed: {ok}");
    // Nothing lost (sessions made during an outage are written back), and
    // both instances route every session to the same owner.
    all_agree(&a, &bb, &made, Duration::from_secs(10), |key| {
        cluster.get(key)
    })
    .await;
    // Events flow again: a drain through either instance reaches the other.
    for (from, to) in [(&a, &bb), (&bb, &a)] {
        let r = Client::new(from.admin)
            .request(
                "POST",
                "/api/pools/app/backends/b2/drain",
                &[],
                br#"{"deadline":"1m"}"#,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 202);
        wait_state(to, "b2", "draining", Duration::from_secs(2)).await;
        let r = Client::new(from.admin)
            .request("POST", "/api/pools/app/backends/b2/enable", &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        wait_state(to, "b2", "up", Duration::from_secs(2)).await;
    }
}
