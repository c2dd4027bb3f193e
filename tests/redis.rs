//! Two tether instances sharing one real Redis: agreement on owners, moves
//! seen by both, concurrent fail-over, shared drains and cookies, and Redis
//! outages that lose nothing.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{backend_of, backend_yaml, backends, wait_state, whoami, Client, Tether};
use nix::sys::signal::Signal;

fn yaml(b: &[whoami::Running], redis: &str, health: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         store: {{ kind: redis, redis: {{ url: \"{redis}\", prefix: t, command_timeout: 200ms, connect_timeout: 500ms }} }}\n\
         pools:\n  app:\n    health: {health}\n    backends:\n{}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n",
        backend_yaml(b)
    )
}

// Passive checks off: these tests are about the store, and a single slow answer
// on a loaded box must not mark a backend down in the middle of them.
const FAST: &str = "{ kind: http, path: /healthz, interval: 200ms, timeout: 150ms, rise: 1, fall: 1, passive: { enabled: false } }";
const SLOW: &str = "{ kind: tcp, interval: 30s, timeout: 500ms, rise: 1, fall: 100 }";

async fn new_session(t: &Tether) -> (String, String) {
    let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    (r.set_cookie("TETHER").unwrap(), backend_of(&r))
}

async fn get(t: &Tether, cookie: &str) -> common::Response {
    Client::new(t.addr("web"))
        .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_route_every_session_alike() {
    let redis = RedisServer::start();
    let b = backends(4).await;
    let a = Tether::start(&yaml(&b, &redis.url(), SLOW));
    let bb = Tether::start(&yaml(&b, &redis.url(), SLOW));
    for (from, to) in [(&a, &bb), (&bb, &a)] {
        let mut sessions = Vec::new();
        for _ in 0..250 {
            sessions.push(new_session(from).await);
        }
        for (cookie, owner) in &sessions {
            let r = get(to, cookie).await;
            assert!(
                r.set_cookie("TETHER").is_none(),
                "the other instance accepts the cookie"
            );
            assert_eq!(
                &backend_of(&r),
                owner,
                "same owner through the other instance"
            );
        }
    }
    let m = Client::new(a.admin)
        .get("/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(m.contains("tether_store_up{store=\"redis\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_through_one_instance_is_followed_by_the_other_and_drains_are_shared() {
    let redis = RedisServer::start();
    let mut b = backends(3).await;
    let a = Tether::start(&yaml(&b, &redis.url(), FAST));
    // B checks rarely: only the shared store can tell it about the move
    let bb = Tether::start(&yaml(&b, &redis.url(), SLOW));
    let mut on_b1 = Vec::new();
    while on_b1.len() < 20 {
        let s = new_session(&a).await;
        if s.1 == "b1" {
            on_b1.push(s.0);
        }
    }
    b.remove(0).shutdown().await;
    wait_state(&a, "b1", "down", Duration::from_secs(3)).await;
    let mut owners = Vec::new();
    for cookie in &on_b1 {
        let r = get(&a, cookie).await;
        let owner = backend_of(&r);
        assert_ne!(owner, "b1");
        assert_eq!(r.json()["headers"]["x-tether-moved-from"], "b1");
        owners.push(owner);
    }
    // within 100 ms B knows where every moved session lives now
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (cookie, owner) in on_b1.iter().zip(&owners) {
        let r = get(&bb, cookie).await;
        assert_eq!(&backend_of(&r), owner, "B follows A's move");
        assert!(
            r.json()["headers"].get("x-tether-moved-from").is_none(),
            "the move is announced once"
        );
    }
    // a drain through A holds on B
    let r = Client::new(a.admin)
        .request(
            "POST",
            "/api/pools/app/backends/b2/drain",
            &[],
            br#"{"deadline":"1m"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202);
    wait_state(&bb, "b2", "draining", Duration::from_secs(1)).await;
    for _ in 0..20 {
        assert_eq!(
            new_session(&bb).await.1,
            "b3",
            "no new session on a backend drained through A"
        );
    }
    let r = Client::new(bb.admin)
        .request("POST", "/api/pools/app/backends/b2/enable", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    wait_state(&a, "b2", "up", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_instances_failing_over_the_same_sessions_agree() {
    let redis = RedisServer::start();
    let mut b = backends(3).await;
    // Exactly-once holds while Redis answers; on a loaded machine 400 racing
    // requests can take longer than 200 ms, which counts as an outage (each
    // instance then decides alone). Not what this test is about.
    let cfg = yaml(&b, &redis.url(), FAST).replace("command_timeout: 200ms", "command_timeout: 2s");
    let a = Tether::start(&cfg);
    let bb = Tether::start(&cfg);
    let mut on_b1 = Vec::new();
    while on_b1.len() < 200 {
        let t = if on_b1.len() % 2 == 0 { &a } else { &bb };
        let s = new_session(t).await;
        if s.1 == "b1" {
            // Returned once: a confirmed session, stored in Redis. (A provisional
            // one is known to its own instance only: the other, never having
            // seen it, places it afresh with nothing to announce.)
            assert_eq!(backend_of(&get(t, &s.0).await), "b1");
            on_b1.push(s.0);
        }
    }
    b.remove(0).shutdown().await;
    wait_state(&a, "b1", "down", Duration::from_secs(3)).await;
    wait_state(&bb, "b1", "down", Duration::from_secs(3)).await;
    let (aa, bba) = (a.addr("web"), bb.addr("web"));
    let mut tasks = Vec::new();
    for cookie in on_b1.clone() {
        tasks.push(tokio::spawn(async move {
            let h = format!("TETHER={cookie}");
            let (x, y) = tokio::join!(
                async { Client::new(aa).get("/", &[("Cookie", &h)]).await.unwrap() },
                async { Client::new(bba).get("/", &[("Cookie", &h)]).await.unwrap() }
            );
            (cookie, x, y)
        }));
    }
    for t in tasks {
        let (cookie, x, y) = t.await.unwrap();
        assert_eq!(backend_of(&x), backend_of(&y), "one owner for {cookie}");
        let announced = [&x, &y]
            .iter()
            .filter(|r| r.json()["headers"]["x-tether-moved-from"] == "b1")
            .count();
        let third = get(&a, &cookie).await;
        let later = usize::from(third.json()["headers"]["x-tether-moved-from"] == "b1");
        assert_eq!(announced + later, 1, "exactly one request carries the move for {cookie}: concurrent {announced}, later {later}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_loses_nothing() {
    let redis = RedisServer::start();
    let port = redis.port;
    let b = backends(3).await;
    let cfg = yaml(&b, &redis.url(), SLOW);
    let a = Tether::start(&cfg);
    let bb = Tether::start(&cfg);
    let mut sessions = HashMap::new();
    for _ in 0..60 {
        let (c, o) = new_session(&a).await;
        sessions.insert(c, o);
    }
    // traffic keeps flowing through both instances while Redis dies
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, list) = (stop.clone(), sessions.clone());
        let addrs = [a.addr("web"), bb.addr("web")];
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (cookie, owner) in &list {
                    for addr in addrs {
                        match Client::new(addr)
                            .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
                            .await
                        {
                            Ok(r) if r.status == 200 && &backend_of(&r) == owner => ok += 1,
                            _ => failed += 1,
                        }
                    }
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(redis); // SIGKILL: gone, empty when it comes back
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert_eq!(
        failed, 0,
        "requests failed or moved while Redis died ({ok} fine)"
    );
    assert!(ok > 100, "traffic really flowed: {ok}");
    for (cookie, owner) in &sessions {
        for t in [&a, &bb] {
            let start = Instant::now();
            let r = get(t, cookie).await;
            assert_eq!(r.status, 200, "no request fails while Redis is down");
            assert_eq!(&backend_of(&r), owner);
            assert!(start.elapsed() < Duration::from_secs(1));
        }
    }
    // new sessions while Redis is down: the hash decides, alike on both instances
    let mut fresh = HashMap::new();
    for _ in 0..30 {
        let (c, o) = new_session(&a).await;
        assert_eq!(
            backend_of(&get(&bb, &c).await),
            o,
            "B agrees on a session A made during the outage"
        );
        fresh.insert(c, o);
    }
    let m = Client::new(a.admin)
        .get("/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(m.contains("tether_store_up{store=\"redis\"} 0"), "{m}");
    // an empty Redis comes back on the same port: everything is written back
    let redis = RedisServer::start_on(port, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    for cookie in sessions.keys().chain(fresh.keys()) {
        while !redis.exists(&format!("t:s:app:{}", &cookie[..22])) {
            assert!(
                Instant::now() < deadline,
                "session {cookie} never written back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        redis.exists("t:secret"),
        "the cookie secret is written back too"
    );
    for t in [&a, &bb] {
        loop {
            let m = Client::new(t.admin)
                .get("/metrics", &[])
                .await
                .unwrap()
                .text();
            if m.contains("tether_store_up{store=\"redis\"} 1") {
                break;
            }
            assert!(Instant::now() < deadline, "store_up never back to 1:\n{m}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // a restarted instance replays affinity from Redis
    drop(a);
    let a = Tether::start(&cfg);
    for (cookie, owner) in sessions.iter().chain(fresh.iter()) {
        let r = get(&a, cookie).await;
        assert!(
            r.set_cookie("TETHER").is_none(),
            "the restarted instance accepts {cookie}\nA:\n{}\nB:\n{}",
            a.log_text(),
            bb.log_text()
        );
        assert_eq!(
            &backend_of(&r),
            owner,
            "{cookie} (made during the outage: {})",
            fresh.contains_key(cookie)
        );
    }
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_never_holds_a_request_past_the_timeout() {
    let redis = RedisServer::start();
    let b = backends(2).await;
    let t = Tether::start(&yaml(&b, &redis.url(), SLOW));
    let (cookie, owner) = new_session(&t).await;
    redis.signal(Signal::SIGSTOP);
    for _ in 0..5 {
        let start = Instant::now();
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(
            start.elapsed() < Duration::from_millis(600),
            "new session took {:?}",
            start.elapsed()
        );
    }
    assert_eq!(backend_of(&get(&t, &cookie).await), owner);
    redis.signal(Signal::SIGCONT);
}

#[test]
fn bad_redis_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    let base = |store: &str| {
        format!(
            "store: {store}\npools:\n  app:\n    backends:\n      - {{ id: a, addr: \"127.0.0.1:9\" }}\n\
             listeners:\n  - {{ name: web, bind: \"127.0.0.1:0\", pool: app, affinity: {{ key: source_ip }} }}\n"
        )
    };
    std::fs::write(
        &path,
        base("{ kind: redis, redis: { url: \"http://nope\" } }"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("store.redis.url"), "{err}");

    // a wrong password stops the start with a clear message
    // (the probe listener must be closed before redis-server binds the port)
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = RedisServer::start_on(port, &["--requirepass", "right"]);
    std::fs::write(
        &path,
        base(&format!(
            "{{ kind: redis, redis: {{ url: \"redis://:wrong@127.0.0.1:{}/0\" }} }}",
            redis.port
        )) + "admin: { listen: \"127.0.0.1:0\" }\n",
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("-c")
        .arg(&path)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
}

/// `tether check` on `yaml`: (exit code, stderr).
fn check(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_any_key_is_warned_about() {
    let b = backends(1).await;
    let evicting = RedisServer::start_on(free_port(), &["--maxmemory-policy", "allkeys-lru"]);
    let t = Tether::start(&yaml(&b, &evicting.url(), SLOW));
    let log = t.log_text();
    let warned: Vec<_> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("allkeys-lru"))
        .collect();
    assert_eq!(warned.len(), 1, "one warning at start:\n{log}");
    assert!(
        warned[0].contains("noeviction") && warned[0].contains("volatile-"),
        "it says what to use instead: {}",
        warned[0]
    );
    let (code, err) = check(&yaml(&b, &evicting.url(), SLOW));
    assert_eq!(code, Some(0), "a warning, not an error: {err}");
    assert!(
        err.contains("warning:") && err.contains("allkeys-lru") && err.contains("noeviction"),
        "{err}"
    );

    // noeviction (Redis's default) and volatile-* policies are fine.
    for policy in ["noeviction", "volatile-lru"] {
        let fine = RedisServer::start_on(free_port(), &["--maxmemory-policy", policy]);
        let t = Tether::start(&yaml(&b, &fine.url(), SLOW));
        let log = t.log_text();
        assert!(!log.contains("maxmemory"), "{policy}:\n{log}");
        let (code, err) = check(&yaml(&b, &fine.url(), SLOW));
        assert_eq!(code, Some(0), "{err}");
        assert!(
            !err.contains("maxmemory") && !err.contains("warning"),
            "{policy}: {err}"
        );
    }

    // Unreachable: check says it could not look, nothing more, and passes.
    let nobody = format!("redis://127.0.0.1:{}/0", free_port());
    let (code, err) = check(&yaml(&b, &nobody, SLOW));
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains("could not check"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookieless_requests_make_no_redis_key_and_another_instance_confirms_them() {
    let redis = RedisServer::start();
    let b = backends(4).await;
    // Bounded load counts this instance's sessions: it must not steer a new
    // cookie, or the instance that sees it come back could pick differently.
    let cfg = yaml(&b, &redis.url(), SLOW).replace("  app:\n", "  app:\n    bounded_load: 1.05\n");
    let a = Tether::start(&cfg);
    let bb = Tether::start(&cfg);
    let mut fresh = Vec::new();
    for _ in 0..40 {
        fresh.push(new_session(&a).await);
    }
    assert_eq!(
        redis.command(&["KEYS", "t:s:*"]),
        "*0\r\n",
        "no Redis key per cookieless request"
    );
    // Every cookie's first return goes to the other instance: same backend.
    for (cookie, owner) in &fresh {
        let r = get(&bb, cookie).await;
        assert!(r.set_cookie("TETHER").is_none());
        assert_eq!(&backend_of(&r), owner, "{cookie}");
        assert!(
            redis.exists(&format!("t:s:app:{}", &cookie[..22])),
            "confirmed in Redis"
        );
    }
    for (cookie, owner) in &fresh {
        assert_eq!(&backend_of(&get(&a, cookie).await), owner);
    }
}
