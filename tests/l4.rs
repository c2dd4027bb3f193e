//! `protocol: tcp` end to end with real sockets: source-address pinning of
//! hundreds of clients (each from its own 127.x.y.z), whole networks with a
//! mask, killed and frozen backends, connect failures, half-close and idle.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::echo::echoes;
use common::tcp::{self, config_yaml, listener_yaml, lo, metric, metrics, owner};
use common::{wait_state, Tether};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Health checks fast enough to see a frozen backend within a second.
const FAST_HEALTH: &str =
    "    health: { kind: http, path: /healthz, interval: 250ms, timeout: 200ms, rise: 1, fall: 2 }\n";

/// Connect every client at once, say `payload`; their connections and banners, in order.
async fn dial_all(
    clients: &[IpAddr],
    to: SocketAddr,
    payload: &'static [u8],
) -> Vec<(TcpStream, String)> {
    let mut set = JoinSet::new();
    for (i, &c) in clients.iter().enumerate() {
        set.spawn(async move {
            let (s, b) = tcp::dial(c, to, payload)
                .await
                .unwrap_or_else(|e| panic!("client {c}: {e}"));
            (i, s, b.id)
        });
    }
    let mut out: Vec<_> = set.join_all().await;
    out.sort_by_key(|(i, ..)| *i);
    out.into_iter().map(|(_, s, id)| (s, id)).collect()
}

/// Like `owners`, but each client retries (three times, 100 ms apart) as a
/// device does: in the instant a backend is marked down, the pool can still
/// pick it from the ring it is about to leave (`mark_health` sets the health
/// before it rebuilds the ring), and such a connection is closed once.
async fn owners_retrying(clients: &[IpAddr], to: SocketAddr) -> Vec<String> {
    let mut set = JoinSet::new();
    for (i, &c) in clients.iter().enumerate() {
        set.spawn(async move {
            let mut last = None;
            for _ in 0..3 {
                match tcp::dial(c, to, b"ping\n").await {
                    Ok((_, b)) => return (i, b.id),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("client {c}: {last:?}")
        });
    }
    let mut out: Vec<_> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, id)| id).collect()
}

async fn owners(clients: &[IpAddr], to: SocketAddr) -> Vec<String> {
    dial_all(clients, to, b"ping\n")
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_pins_300_clients_across_reconnects() {
    let b = echoes(3, false).await;
    let l = listener_yaml("tcp", "tcp", "{ key: source_ip, fallback: reject }", "");
    let t = Tether::start(&config_yaml(&b, "", &l, ""));
    let clients: Vec<IpAddr> = (0..300u16)
        .map(|i| lo(1, (i / 200) as u8, (i % 200 + 1) as u8))
        .collect();
    let first = owners(&clients, t.addr("tcp")).await;
    for round in 0..2 {
        assert_eq!(
            owners(&clients, t.addr("tcp")).await,
            first,
            "round {round}"
        );
    }
    let used: HashSet<&String> = first.iter().collect();
    assert_eq!(used.len(), 3, "300 addresses spread over every backend");
    assert_eq!(
        owner(&t, "127.1.0.1").await.as_deref(),
        Some(first[0].as_str())
    );
    let m = metrics(&t).await;
    assert!(metric(&m, "tether_bytes_total{direction=\"in\",listener=\"tcp\"}") >= 900.0 * 5.0);
    assert!(metric(&m, "tether_bytes_total{direction=\"out\",listener=\"tcp\"}") >= 900.0 * 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_network_lands_on_one_backend() {
    let b = echoes(3, false).await;
    let l = listener_yaml(
        "tcp",
        "tcp",
        "{ key: { source_ip: { ipv4_mask: 24 } } }",
        "",
    );
    let t = Tether::start(&config_yaml(&b, "", &l, ""));
    let net: Vec<IpAddr> = (1..=254).map(|i| lo(2, 7, i)).collect();
    let ids: HashSet<String> = owners(&net, t.addr("tcp")).await.into_iter().collect();
    assert_eq!(ids.len(), 1, "one /24, one backend: {ids:?}");
    assert_eq!(owner(&t, "127.2.7.0").await, ids.into_iter().next());
    // Twelve other networks, five clients each: each network on one backend, not all on the same.
    let mut per_net = HashSet::new();
    for n in 10..22u8 {
        let clients: Vec<IpAddr> = (1..=5).map(|i| lo(2, n, i * 40)).collect();
        let ids: HashSet<String> = owners(&clients, t.addr("tcp")).await.into_iter().collect();
        assert_eq!(ids.len(), 1, "network 127.2.{n}.0/24: {ids:?}");
        per_net.extend(ids);
    }
    assert!(per_net.len() >= 2, "networks spread: {per_net:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_clients_reconnect_to_one_new_owner_each() {
    let b = echoes(3, false).await;
    let l = listener_yaml("tcp", "tcp", "{ key: source_ip }", "");
    let t = Tether::start(&config_yaml(&b, FAST_HEALTH, &l, ""));
    let clients: Vec<IpAddr> = (0..300u16)
        .map(|i| lo(3, (i / 100) as u8, (i % 100 + 1) as u8))
        .collect();
    let mut conns = dial_all(&clients, t.addr("tcp"), b"ping\n").await;
    let victim = conns[0].1.clone();
    b.iter().find(|e| e.id == victim).unwrap().kill().await;

    let mut moved = Vec::new();
    for (i, (s, id)) in conns.iter_mut().enumerate() {
        if *id == victim {
            assert!(
                tcp::closed_within(s, Duration::from_secs(3)).await,
                "client {i} not closed"
            );
            moved.push(clients[i]);
        } else {
            // Everyone else keeps a working connection.
            s.write_all(b"still\n").await.unwrap();
            let mut echo = [0u8; 6];
            tokio::io::AsyncReadExt::read_exact(s, &mut echo)
                .await
                .unwrap();
            assert_eq!(&echo, b"still\n");
        }
    }
    assert!(moved.len() >= 50, "{} clients on {victim}", moved.len());
    // They reconnect at once, before or after the mark-down: never to the dead backend.
    let again = owners_retrying(&moved, t.addr("tcp")).await;
    assert!(again.iter().all(|id| *id != victim), "{again:?}");
    wait_state(&t, &victim, "down", Duration::from_secs(5)).await;
    let settled = owners(&moved, t.addr("tcp")).await;
    assert!(settled.iter().all(|id| *id != victim));
    assert_eq!(
        owners(&moved, t.addr("tcp")).await,
        settled,
        "each client has one new owner"
    );
    let key = moved[0].to_string();
    assert_eq!(
        owner(&t, &key).await.as_deref(),
        Some(settled[0].as_str()),
        "re-pinned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_backend_sessions_close_and_the_network_moves_to_one_owner() {
    let b = echoes(3, false).await;
    let l = listener_yaml(
        "tcp",
        "tcp",
        "{ key: { source_ip: { ipv4_mask: 24 } } }",
        "",
    );
    let t = Tether::start(&config_yaml(&b, FAST_HEALTH, &l, ""));
    let clients: Vec<IpAddr> = (1..=250).map(|i| lo(4, 1, i)).collect();
    let mut conns = dial_all(&clients, t.addr("tcp"), b"ping\n").await;
    let old = conns[0].1.clone();
    assert!(conns.iter().all(|(_, id)| *id == old));
    let frozen = Instant::now();
    b.iter().find(|e| e.id == old).unwrap().freeze();
    // A frozen backend never closes anything: tether must, once it is marked down.
    for (s, _) in conns.iter_mut() {
        assert!(tcp::closed_within(s, Duration::from_secs(5)).await);
    }
    let closed_after = frozen.elapsed();
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
    let ids: HashSet<String> = owners(&clients, t.addr("tcp")).await.into_iter().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(!ids.contains(&old));
    assert_eq!(owner(&t, "127.4.1.0").await, ids.into_iter().next());
    let m = metrics(&t).await;
    let gauge = format!("tether_upstream_connections_active{{backend=\"{old}\",pool=\"app\"}}");
    assert_eq!(metric(&m, &gauge), 0.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_lands_on_another_live_backend() {
    let b = echoes(1, false).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    // No health checks: the dead backend stays "up". A connection refused there
    // lands on the re-pin's choice, and its session follows it (unlike a
    // request's retry, rule 5): the store says where the connection lives.
    let pool = format!("    backends:\n      - {{ id: b1, addr: \"{}\" }}\n      - {{ id: gone, addr: \"{dead_addr}\" }}\n", b[0].addr);
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n  app:\n{pool}listeners:\n{}",
        listener_yaml("tcp", "tcp", "{ key: source_ip }", "")
    );
    let t = Tether::start(&yaml);
    let clients: Vec<IpAddr> = (1..=40).map(|i| lo(5, 0, i)).collect();
    let ids = owners(&clients, t.addr("tcp")).await;
    assert!(ids.iter().all(|id| id == "b1"), "{ids:?}");
    for c in &clients {
        assert_eq!(
            owner(&t, &c.to_string()).await.as_deref(),
            Some("b1"),
            "{c}"
        );
    }
    let moved = metric(
        &metrics(&t).await,
        "tether_session_moves_total{from=\"gone\",pool=\"app\",reason=\"down\",to=\"b1\"}",
    );
    assert!(
        moved > 0.0,
        "some keys hashed to the dead backend and moved with their connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_passed_on_and_idle_sessions_end() {
    let b = echoes(2, false).await;
    let l = listener_yaml(
        "tcp",
        "tcp",
        "{ key: source_ip }",
        "    timeouts: { idle: 600ms }\n",
    );
    let t = Tether::start(&config_yaml(&b, "", &l, ""));
    // The client says its piece and half-closes; the answer still comes back in full.
    let mut s = tcp::connect_from(lo(6, 0, 1), t.addr("tcp")).await.unwrap();
    s.write_all(b"last words\n").await.unwrap();
    s.shutdown().await.unwrap();
    let banner = tcp::banner(&mut s, Duration::from_secs(3)).await.unwrap();
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest)
        .await
        .unwrap();
    assert_eq!(rest, b"last words\n", "after {banner:?}");

    let (mut s, _) = tcp::dial(lo(6, 0, 2), t.addr("tcp"), b"hi\n")
        .await
        .unwrap();
    let quiet = Instant::now();
    assert!(!tcp::closed_within(&mut s, Duration::from_millis(400)).await);
    assert!(tcp::closed_within(&mut s, Duration::from_secs(3)).await);
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(550) && after < Duration::from_secs(2),
        "{after:?}"
    );

    // Nothing left open upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = metrics(&t).await;
    let live: HashMap<&str, f64> = ["b1", "b2"]
        .into_iter()
        .map(|id| {
            let series =
                format!("tether_upstream_connections_active{{backend=\"{id}\",pool=\"app\"}}");
            (id, metric(&m, &series))
        })
        .collect();
    assert!(live.values().all(|v| *v == 0.0), "{live:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_tcp_sessions_finish_then_closes_them() {
    let b = echoes(1, false).await;
    let l = listener_yaml("tcp", "tcp", "{ key: source_ip }", "");
    let top = "server: { shutdown_grace: 1s }";
    let mut t = Tether::start(&config_yaml(&b, "", &l, top));
    let (mut s, _) = tcp::dial(lo(9, 0, 1), t.addr("tcp"), b"hi\n")
        .await
        .unwrap();
    t.signal(nix::sys::signal::Signal::SIGTERM);
    // Within the grace period the session still works...
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"more\n").await.unwrap();
    let mut echo = [0u8; 5];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut echo)
        .await
        .unwrap();
    assert_eq!(&echo, b"more\n");
    // ...and is closed at its end, after which tether exits.
    assert!(tcp::closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(
        t.wait_exit(Duration::from_secs(3)).is_some(),
        "{}",
        t.log_text()
    );
}
