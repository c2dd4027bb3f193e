//! Passive health counts only what the backend caused (issue 13, item 1):
//! clients that stall their own request bodies never get a backend marked
//! down, a backend that stops answering still does, and passive failures hold
//! at most `health.passive.max_ejected_percent` of a pool down at once.

mod common;

use std::time::{Duration, Instant};

use common::{backend_of, backends, config, wait_state, whoami, Client, Tether};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "{ key: { header: X-Device-Id } }";

/// Slow active checks (the first one runs at start): only request outcomes
/// can mark a backend down during a test.
const SLOW_TCP_CHECKS: &str =
    "    health: { kind: tcp, interval: 30s, timeout: 500ms, rise: 1, fall: 2 }\n";

/// A session key the pool pins to `want` (the key's first request places it).
async fn key_on(t: &Tether, want: &str) -> String {
    for i in 0..500 {
        let key = format!("k{i}");
        let r = Client::new(t.addr("web"))
            .get("/", &[("X-Device-Id", &key)])
            .await
            .unwrap();
        if backend_of(&r) == want {
            return key;
        }
    }
    panic!("no key lands on {want}");
}

/// `/api/pools`: backend id -> state, for pool `app`.
async fn states(t: &Tether) -> Vec<(String, String)> {
    let pools = Client::new(t.admin)
        .get("/api/pools", &[])
        .await
        .unwrap()
        .json();
    pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn session_owner(t: &Tether, key: &str) -> String {
    Client::new(t.admin)
        .get(&format!("/api/pools/app/sessions/{key}"), &[])
        .await
        .unwrap()
        .json()["session"]["backend"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A POST announcing a 10-byte body that sends 2 bytes and then nothing, well
/// past `response_header`; returns what tether answered (if anything) and when.
async fn stalled_post(addr: std::net::SocketAddr, key: &str) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /stalled HTTP/1.1\r\nHost: app\r\nX-Device-Id: {key}\r\nContent-Length: 10\r\n\r\nab"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut buf)).await;
    (String::from_utf8_lossy(&buf).into_owned(), start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stalling_their_bodies_never_mark_a_backend_down() {
    let b = backends(2).await;
    let t = Tether::start(&config(
        &b,
        KEY,
        &format!("    timeouts: {{ response_header: 1s }}\n{SLOW_TCP_CHECKS}"),
        "",
        "",
    ));
    let key = key_on(&t, "b1").await;
    // Twice `fall`, all at once, each silent well beyond `response_header`.
    let addr = t.addr("web");
    let stalls: Vec<_> = (0..4)
        .map(|_| {
            let key = key.clone();
            tokio::spawn(async move { stalled_post(addr, &key).await })
        })
        .collect();
    for s in stalls {
        let (answer, _) = s.await.unwrap();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 504"),
            "a stalled upload gets at most a 504: {answer:?}"
        );
    }
    assert!(
        states(&t).await.iter().all(|(_, state)| state == "up"),
        "a client's stalled body marked a backend down: {:?}\n{}",
        states(&t).await,
        t.log_text()
    );
    assert_eq!(session_owner(&t, &key).await, "b1", "the session stayed");
    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", &key)])
        .await
        .unwrap();
    assert_eq!((r.status, backend_of(&r)), (200, "b1".to_string()));
    assert!(r.json()["headers"].get("x-tether-moved-from").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_answering_is_still_marked_down() {
    let b = backends(2).await;
    let t = Tether::start(&config(
        &b,
        KEY,
        &format!("    timeouts: {{ response_header: 1s }}\n{SLOW_TCP_CHECKS}"),
        "",
        "",
    ));
    let key = key_on(&t, "b1").await;
    // `/hang` reads the whole request and never answers: one GET, one POST
    // with its whole body.
    let get = Client::new(t.addr("web"))
        .get("/hang", &[("X-Device-Id", &key)])
        .await
        .unwrap();
    assert_eq!(get.status, 504);
    assert_eq!(
        states(&t).await[0],
        ("b1".into(), "up".into()),
        "one of fall"
    );
    let post = Client::new(t.addr("web"))
        .request("POST", "/hang", &[("X-Device-Id", &key)], b"0123456789")
        .await
        .unwrap();
    assert_eq!(post.status, 504);
    wait_state(&t, "b1", "down", Duration::from_secs(1)).await;
    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", &key)])
        .await
        .unwrap();
    assert_eq!(backend_of(&r), "b2", "its session moved");
}

/// The value of `tether_passive_ejections_refused_total{pool="app"}` (0 if absent).
async fn refused_ejections(t: &Tether) -> u64 {
    let m = Client::new(t.admin)
        .get("/metrics", &[])
        .await
        .unwrap()
        .text();
    m.lines()
        .find(|l| l.starts_with("tether_passive_ejections_refused_total{pool=\"app\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Active checks that run once, at start: afterwards only passive failures
/// can mark a backend down.
const START_CHECK_ONLY: &str =
    "    health: { kind: tcp, interval: 1000h, timeout: 500ms, rise: 1, fall: 2 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_eject_at_most_max_ejected_percent_of_a_pool() {
    let mut b = backends(4).await;
    // max_ejected_percent: the default, 50.
    let t = Tether::start(&config(&b, KEY, START_CHECK_ONLY, "", ""));
    let mut keys = Vec::new();
    for id in ["b1", "b2", "b3"] {
        keys.push(key_on(&t, id).await);
    }
    let b4 = b.pop().unwrap();
    for dead in b {
        dead.shutdown().await; // connection refused from now on
    }
    // Each request fails on its pinned backend and is retried elsewhere.
    for _ in 0..3 {
        for key in &keys {
            let _ = Client::new(t.addr("web"))
                .get("/", &[("X-Device-Id", key)])
                .await;
        }
    }
    let st = states(&t).await;
    let down = st.iter().filter(|(_, s)| s == "down").count();
    assert_eq!(
        down,
        2,
        "50% of 4 backends at most: {st:?}\n{}",
        t.log_text()
    );
    assert_eq!(st[3], ("b4".into(), "up".into()));
    assert!(refused_ejections(&t).await >= 1);
    assert!(
        t.log_text().contains("max_ejected_percent"),
        "the refusal is logged"
    );
    // The refused one's clients are still served, by retries on b4.
    for key in &keys {
        let r = Client::new(t.addr("web"))
            .get("/", &[("X-Device-Id", key)])
            .await
            .unwrap();
        assert_eq!((r.status, backend_of(&r)), (200, "b4".to_string()));
    }
    drop(b4);
}

/// Health checks that always pass (whoami's `/healthz`) and, with a huge
/// `rise`, never bring a passively ejected backend back during the test:
/// only the cap can keep a failing backend up. `passive`: extra settings.
fn passing_checks(passive: &str) -> String {
    format!(
        "    health: {{ kind: http, path: /healthz, interval: 1s, timeout: 500ms, rise: 1000, fall: 2{passive} }}\n"
    )
}

/// `POST /reset`: whoami reads the whole request and closes without a word,
/// a reset after the request was sent; a POST is not retried elsewhere.
async fn reset(t: &Tether, key: &str) -> u16 {
    Client::new(t.addr("web"))
        .request("POST", "/reset", &[("X-Device-Id", key)], b"x")
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_while_active_checks_pass_and_counts_every_refusal() {
    let b = backends(4).await;
    let t = Tether::start(&config(
        &b,
        KEY,
        &passing_checks(", passive: { max_ejected_percent: 50 }"),
        "",
        "",
    ));
    let mut keys = Vec::new();
    for id in ["b1", "b2", "b3"] {
        keys.push(key_on(&t, id).await);
    }
    for key in &keys {
        for _ in 0..2 {
            assert_eq!(reset(&t, key).await, 502);
        }
    }
    let st = states(&t).await;
    assert_eq!(
        st.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
        ["down", "down", "up", "up"],
        "the third was refused\n{}",
        t.log_text()
    );
    let before = refused_ejections(&t).await;
    assert!(before >= 1);
    assert_eq!(reset(&t, &keys[2]).await, 502);
    assert_eq!(states(&t).await[2].1, "up");
    assert!(refused_ejections(&t).await > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_backend_can_always_be_ejected() {
    let mut b: Vec<whoami::Running> = backends(1).await;
    // 0% of one backend rounds down to none: one may be ejected all the same.
    let t = Tether::start(&config(
        &b,
        KEY,
        &START_CHECK_ONLY.replace(" }\n", ", passive: { max_ejected_percent: 0 } }\n"),
        "",
        "",
    ));
    b.remove(0).shutdown().await;
    for _ in 0..2 {
        let r = Client::new(t.addr("web"))
            .get("/", &[("X-Device-Id", "d")])
            .await
            .unwrap();
        assert_eq!(r.status, 502);
    }
    wait_state(&t, "b1", "down", Duration::from_secs(1)).await;
    assert_eq!(refused_ejections(&t).await, 0);
}
