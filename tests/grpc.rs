//! HTTP/2 and gRPC to backends (`pools.NAME.protocol: h2 | h2c`), with a
//! real gRPC client and real gRPC servers (tonic) on loopback: unary and
//! server-streaming calls through h2c and https listeners to h2c and h2 (TLS)
//! backends, trailers passed on, calls pinned by a metadata key, a long
//! stream ended with UNAVAILABLE (or REFUSED_STREAM before its head) when its
//! backend drains out or is marked down, the retry landing on the new owner,
//! and `health.kind: grpc` marking a NOT_SERVING backend down.

mod common;
#[path = "common/grpc.rs"]
mod grpc;
#[path = "common/tls.rs"]
mod tlsh;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_state, Client, Tether};
use grpc::{channel, watch, who, WatchRequest};
use tlsh::{write_pair, TestCa};
use tonic::Code;

const HEADER_KEY: &str = "{ key: { header: x-device-id } }";

fn pool(name: &str, extra: &str, backends: &[(&str, std::net::SocketAddr)]) -> String {
    let mut s = format!("  {name}:\n{extra}    backends:\n");
    for (id, addr) in backends {
        s.push_str(&format!("      - {{ id: {id}, addr: \"{addr}\" }}\n"));
    }
    s
}

fn h2c_listener(name: &str, pool: &str) -> String {
    format!(
        "  - name: {name}\n    bind: \"127.0.0.1:0\"\n    h2c: true\n    pool: {pool}\n    affinity: {HEADER_KEY}\n"
    )
}

fn https_listener(name: &str, pool: &str) -> String {
    format!(
        "  - name: {name}\n    bind: \"127.0.0.1:0\"\n    protocol: https\n    pool: {pool}\n    \
         tls: {{ certs: [ {{ name: site, cert: site.crt, key: site.key }} ] }}\n    affinity: {HEADER_KEY}\n"
    )
}

/// gRPC checks on, loose enough that a loaded test machine never trips them.
const GRPC_HEALTH: &str = "    health: { kind: grpc, interval: 1s, timeout: 800ms }\n";
/// gRPC checks that act on the first result (the health test).
const FAST_GRPC_HEALTH: &str =
    "    health: { kind: grpc, interval: 500ms, timeout: 400ms, rise: 1, fall: 1 }\n";

/// Devices `dev-0`.. until `n` of them are owned by `owner` (asked through `ch`).
async fn devices_on(ch: &tonic::transport::Channel, owner: &str, n: usize) -> Vec<String> {
    let mut found = Vec::new();
    for i in 0..200 {
        let d = format!("dev-{i}");
        if who(ch, &d, "").await.expect("who").backend == owner {
            found.push(d);
            if found.len() == n {
                return found;
            }
        }
    }
    panic!("fewer than {n} of 200 devices on {owner}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_h2c_and_https_listeners_to_h2c_and_h2_backends() {
    let ca = TestCa::new("grpc test CA");
    let backend_pair = ca.leaf("backend.test", &["backend.test"]);
    let c1 = grpc::start("c1", None).await;
    let c2 = grpc::start("c2", None).await;
    let t1 = grpc::start("t1", Some(&backend_pair)).await;
    let t2 = grpc::start("t2", Some(&backend_pair)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    write_pair(dir.path(), "site", &ca.leaf("site.test", &["site.test"]));
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n{}{}listeners:\n{}{}{}{}{}",
        pool(
            "plain",
            &format!("    protocol: h2c\n{GRPC_HEALTH}"),
            &[("c1", c1.addr), ("c2", c2.addr)]
        ),
        pool(
            "secure",
            &format!("    protocol: h2\n    tls: {{ sni: backend.test, ca: ca.pem }}\n{GRPC_HEALTH}"),
            &[("t1", t1.addr), ("t2", t2.addr)]
        ),
        h2c_listener("c-plain", "plain"),
        h2c_listener("c-secure", "secure"),
        https_listener("s-plain", "plain"),
        https_listener("s-secure", "secure"),
        // Plain HTTP/1.1 (tether's own engine by default): pingora serves it here.
        "  - name: h1\n    bind: \"127.0.0.1:0\"\n    pool: plain\n    affinity: { key: source_ip }\n",
    );
    let t = Tether::start_in(dir, &yaml);
    // An HTTP/1.1 client of an h2c pool: the backend (which speaks HTTP/2
    // only) answers, here with gRPC's UNIMPLEMENTED in a trailers-only head.
    let r = Client::new(t.addr("h1")).get("/nope", &[]).await.unwrap();
    assert_eq!(
        (r.status, r.header("grpc-status")),
        (200, Some("12")),
        "{r:?}"
    );
    let ca_pem = ca.pem();
    for (listener, ids) in [
        ("c-plain", ["c1", "c2"]),
        ("c-secure", ["t1", "t2"]),
        ("s-plain", ["c1", "c2"]),
        ("s-secure", ["t1", "t2"]),
    ] {
        let tls = listener
            .starts_with("s-")
            .then_some((ca_pem.as_str(), "site.test"));
        let ch = channel(t.addr(listener), tls).await;
        // Unary: pinned per device, every device on a backend of the pool,
        // and the `te: trailers` gRPC servers may insist on arrives.
        let mut owners = HashMap::new();
        for round in 0..3 {
            for d in 0..8 {
                let device = format!("dev-{d}");
                let r = who(&ch, &device, "").await.unwrap_or_else(|e| {
                    panic!("{listener}: unary call failed: {e}\n{}", t.log_text())
                });
                assert!(ids.contains(&r.backend.as_str()), "{listener}: {r:?}");
                assert_eq!(
                    (r.device.as_str(), r.te.as_str()),
                    (device.as_str(), "trailers")
                );
                let owner = owners.entry(device).or_insert(r.backend.clone());
                assert_eq!(
                    *owner, r.backend,
                    "{listener}: device moved in round {round}"
                );
            }
        }
        let used: HashSet<_> = owners.values().collect();
        assert_eq!(
            used.len(),
            2,
            "{listener}: 8 devices on one backend: {owners:?}"
        );
        // A status in the trailers reaches the client as it was sent.
        let e = who(&ch, "dev-0", "fail").await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::FailedPrecondition, "asked to fail")
        );
        // Server streaming: every reply from the device's owner, then a clean end
        // (grpc-status 0 in the trailers) or the backend's error status.
        let w = WatchRequest {
            count: 3,
            interval_ms: 10,
            ..Default::default()
        };
        let mut s = watch(&ch, "dev-1", w).await.expect("watch");
        let mut seqs = Vec::new();
        while let Some(r) = s.message().await.expect("stream ends cleanly") {
            assert_eq!(r.backend, owners["dev-1"], "{listener}");
            seqs.push(r.seq);
        }
        assert_eq!(seqs, [0, 1, 2], "{listener}");
        let w = WatchRequest {
            interval_ms: 10,
            fail_after: 2,
            ..Default::default()
        };
        let mut s = watch(&ch, "dev-2", w).await.expect("watch");
        assert!(s.message().await.unwrap().is_some());
        assert!(s.message().await.unwrap().is_some());
        let e = s.message().await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::Aborted, "enough"),
            "{listener}"
        );
    }
    // Backend connections are multiplexed: 40 concurrent calls share a few
    // (one stream per connection would take 40; calls that race a connection
    // still being opened open their own, so "a few" varies).
    for listener in ["c-plain", "c-secure"] {
        let ch = channel(t.addr(listener), None).await;
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let ch = ch.clone();
                tokio::spawn(async move { who(&ch, &format!("dev-{i}"), "").await })
            })
            .collect();
        let mut peers = HashSet::new();
        for c in calls {
            let r = c
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{listener}: concurrent call: {e:?}\n{}", t.log_text()));
            assert!(!r.peer.is_empty());
            peers.insert(r.peer);
        }
        assert!(
            peers.len() < 20,
            "{listener}: 40 calls took {} connections",
            peers.len()
        );
    }
}

/// The first reply of `s` (the call's head and one message are through).
async fn first(s: &mut tonic::Streaming<grpc::WhoReply>) -> grpc::WhoReply {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("first reply in time")
        .expect("first reply")
        .expect("stream open")
}

/// How a call ends: the status of its end, within `limit`.
async fn ending(s: &mut tonic::Streaming<grpc::WhoReply>, limit: Duration) -> tonic::Status {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.message()).await {
            Err(_) => panic!("the stream did not end within {limit:?}"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("the stream ended cleanly: the client would not retry"),
            Ok(Err(e)) => return e,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_long_streams_so_that_the_retry_lands_on_the_new_owner() {
    let c1 = grpc::start("c1", None).await;
    let c2 = grpc::start("c2", None).await;
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n{}listeners:\n{}",
        pool(
            "app",
            &format!("    protocol: h2c\n    close_spread: 0s\n{GRPC_HEALTH}"),
            &[("c1", c1.addr), ("c2", c2.addr)]
        ),
        h2c_listener("web", "app"),
    );
    let t = Tether::start(&yaml);
    let ch = channel(t.addr("web"), None).await;
    let victim = who(&ch, "dev-0", "").await.unwrap().backend;
    let heir = if victim == "c1" { "c2" } else { "c1" };
    let devs = devices_on(&ch, &victim, 2).await;
    // A long stream whose head is out, and one whose head the backend holds back.
    let long = WatchRequest {
        interval_ms: 200,
        ..Default::default()
    };
    let mut flowing = watch(&ch, &devs[0], long.clone()).await.expect("watch");
    assert_eq!(first(&mut flowing).await.backend, victim);
    let held = WatchRequest {
        head_delay_ms: 60_000,
        ..Default::default()
    };
    let ch2 = ch.clone();
    let dev1 = devs[1].clone();
    let held = tokio::spawn(async move { watch(&ch2, &dev1, held).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let r = Client::new(t.admin)
        .request(
            "POST",
            &format!("/api/pools/app/backends/{victim}/drain"),
            &[],
            br#"{"deadline":"1s"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());

    let e = ending(&mut flowing, Duration::from_secs(5)).await;
    let took = start.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "after its head: {e:?}");
    assert!(
        e.message().contains("tether"),
        "the trailers tether wrote: {e:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "ended before the deadline: {took:?}"
    );
    let e = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held call ended")
        .unwrap()
        .unwrap_err();
    // REFUSED_STREAM: UNAVAILABLE, never CANCELLED (which clients do not retry).
    assert_eq!(e.code(), Code::Unavailable, "before its head: {e:?}");
    assert!(
        format!("{e:?}").contains("REFUSED_STREAM"),
        "a stream reset with REFUSED_STREAM: {e:?}"
    );
    // The retries (a new call, a new stream) land on the new owner.
    for d in &devs {
        assert_eq!(who(&ch, d, "").await.unwrap().backend, heir);
        let mut s = watch(&ch, d, long.clone()).await.expect("watch again");
        assert_eq!(first(&mut s).await.backend, heir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_marks_a_not_serving_backend_down_and_ends_its_streams() {
    let ca = TestCa::new("grpc health CA");
    let pair = ca.leaf("backend.test", &["backend.test"]);
    let t1 = grpc::start("t1", Some(&pair)).await;
    let t2 = grpc::start("t2", Some(&pair)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n{}listeners:\n{}",
        pool(
            "app",
            &format!("    protocol: h2\n    tls: {{ sni: backend.test, ca: ca.pem }}\n{FAST_GRPC_HEALTH}"),
            &[("t1", t1.addr), ("t2", t2.addr)]
        ),
        h2c_listener("web", "app"),
    );
    let t = Tether::start_in(dir, &yaml);
    wait_state(&t, "t1", "up", Duration::from_secs(3)).await;
    wait_state(&t, "t2", "up", Duration::from_secs(3)).await;
    let ch = channel(t.addr("web"), None).await;
    let dev = devices_on(&ch, "t1", 1).await.remove(0);
    let long = WatchRequest {
        interval_ms: 200,
        ..Default::default()
    };
    let mut s = watch(&ch, &dev, long.clone()).await.expect("watch");
    assert_eq!(first(&mut s).await.backend, "t1");

    t1.backend.serving.store(false, Ordering::SeqCst);
    wait_state(&t, "t1", "down", Duration::from_secs(3)).await;
    let e = ending(&mut s, Duration::from_secs(3)).await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let mut s = watch(&ch, &dev, long).await.expect("watch again");
    assert_eq!(first(&mut s).await.backend, "t2");

    t1.backend.serving.store(true, Ordering::SeqCst);
    wait_state(&t, "t1", "up", Duration::from_secs(3)).await;
}

/// What a raw HTTP/2 backend (the `h2` crate, no gRPC library) does with each call.
#[derive(Clone, Copy)]
enum Raw {
    /// `RST_STREAM(REFUSED_STREAM)` at once: not processed, safe to send elsewhere.
    Refuse,
    /// The head and one reply, then the TCP connection closes mid-call.
    Cut,
}

/// A raw h2c backend behaving as `mode`; the count of calls it saw.
async fn raw_backend(mode: Raw) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    seen.fetch_add(1, Ordering::SeqCst);
                    match mode {
                        Raw::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
                        Raw::Cut => {
                            let head = http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap();
                            let mut body = respond.send_response(head, false).unwrap();
                            let msg = prost::Message::encode_to_vec(&grpc::WhoReply {
                                backend: "raw".into(),
                                ..Default::default()
                            });
                            let mut framed = vec![0u8];
                            framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                            framed.extend_from_slice(&msg);
                            body.send_data(framed.into(), false).unwrap();
                            // Drive the connection so the frames go out, then drop it.
                            let _ = tokio::time::timeout(Duration::from_millis(300), conn.accept())
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_retried_and_a_call_cut_by_its_backend_ends_unavailable() {
    let good = grpc::start("good", None).await;
    let (refuser, refused) = raw_backend(Raw::Refuse).await;
    let (cutter, _) = raw_backend(Raw::Cut).await;
    let yaml = format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n{}{}listeners:\n{}{}",
        pool(
            "app",
            "    protocol: h2c\n",
            &[("refuser", refuser), ("good", good.addr)]
        ),
        pool("cut", "    protocol: h2c\n", &[("cutter", cutter)]),
        h2c_listener("web", "app"),
        h2c_listener("cut", "cut"),
    );
    let t = Tether::start(&yaml);
    // gRPC calls are POSTs: a refused one is still sent again, to the other backend.
    let ch = channel(t.addr("web"), None).await;
    for d in 0..8 {
        let r = who(&ch, &format!("dev-{d}"), "")
            .await
            .unwrap_or_else(|e| panic!("a refused call was not retried: {e:?}\n{}", t.log_text()));
        assert_eq!(r.backend, "good");
    }
    assert!(
        refused.load(Ordering::SeqCst) > 0,
        "no device hashed to the refuser"
    );
    // A backend that dies after the head: UNAVAILABLE, not a reset read as CANCELLED.
    let ch = channel(t.addr("cut"), None).await;
    let mut s = watch(&ch, "dev-0", WatchRequest::default())
        .await
        .expect("watch");
    assert_eq!(first(&mut s).await.backend, "raw");
    let e = ending(&mut s, Duration::from_secs(5)).await;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("tether"), "{e:?}");
}
