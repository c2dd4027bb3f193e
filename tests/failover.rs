//! Backend death with real processes: frozen (SIGSTOP) and killed backends,
//! failing health checks, connect failures, and no live backend at all.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{backend_of, proc_backend_yaml, wait_state, Client, ProcBackend, Tether};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn yaml(backends: &str, health: &str, pool_extra: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         pools:\n  app:\n{pool_extra}    health: {health}\n    backends:\n{backends}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n"
    )
}

const FAST_HEALTH: &str =
    "{ kind: http, path: /healthz, interval: 250ms, timeout: 200ms, rise: 2, fall: 2 }";

async fn ws_connect(t: &Tether, cookie: &str) -> Ws {
    let mut req = format!("ws://{}/ws", t.addr("web"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("TETHER={cookie}").parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket")
        .0
}

async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.expect("send");
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    m.into_text()
        .unwrap()
        .as_str()
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

struct Sess {
    cookie: String,
    owner: String,
    ws: Option<Ws>,
}

async fn open_sessions(t: &Tether, n: usize) -> Vec<Sess> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        let cookie = r.set_cookie("TETHER").unwrap();
        let owner = backend_of(&r);
        let mut ws = ws_connect(t, &cookie).await;
        assert_eq!(
            echo(&mut ws, "hi").await,
            owner,
            "the WebSocket follows the session"
        );
        out.push(Sess {
            cookie,
            owner,
            ws: Some(ws),
        });
    }
    out
}

/// Three backend processes, tether, and 200 sessions each holding a
/// WebSocket; the backend with the most sessions is the victim.
async fn three_backends_under_websockets() -> (Vec<ProcBackend>, Tether, Vec<Sess>, String, usize) {
    let procs: Vec<ProcBackend> = (1..=3)
        .map(|i| ProcBackend::start(&format!("b{i}")))
        .collect();
    let t = Tether::start(&yaml(&proc_backend_yaml(&procs), FAST_HEALTH, ""));
    let sessions = open_sessions(&t, 200).await;
    let mut per: HashMap<String, usize> = HashMap::new();
    for s in &sessions {
        *per.entry(s.owner.clone()).or_default() += 1;
    }
    let victim = per
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| id.clone())
        .unwrap();
    let affected = per[&victim];
    (procs, t, sessions, victim, affected)
}

/// Freeze the busiest backend under 200 WebSocket sessions (its sockets stay
/// open: only tether's checks notice) and check every affected client is
/// closed with 1012 within 1 s of the mark-down and lands, with its cookie,
/// on one new backend that learns the move exactly once.
async fn backend_freezes_under_websockets(sig: Signal) {
    let (procs, t, mut sessions, victim, affected) = three_backends_under_websockets().await;
    let vi = procs.iter().position(|p| p.id == victim).unwrap();

    // Watch every affected WebSocket for its close.
    let start = Instant::now();
    let mut watchers = Vec::new();
    for s in sessions.iter_mut().filter(|s| s.owner == victim) {
        let mut ws = s.ws.take().unwrap();
        watchers.push(tokio::spawn(async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Close(frame)))) => {
                        return Some((start.elapsed(), frame.map(|f| f.code)))
                    }
                    Ok(Some(Ok(_))) => continue,
                    _ => return None,
                }
            }
        }));
    }
    procs[vi].signal(sig);
    let marked = wait_state(&t, &victim, "down", Duration::from_secs(5)).await;
    for w in watchers {
        let (at, code) = w.await.unwrap().expect("affected client got a close frame");
        assert_eq!(code, Some(CloseCode::Restart), "close code 1012");
        assert!(
            at < marked + Duration::from_secs(1),
            "closed {at:?} after the signal, marked down at {marked:?}"
        );
    }

    let mut new_owner: HashMap<String, String> = HashMap::new();
    for s in sessions.iter_mut() {
        let h = format!("TETHER={}", s.cookie);
        let r = Client::new(t.addr("web"))
            .get("/", &[("Cookie", &h)])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(
            r.set_cookie("TETHER").is_none(),
            "the session is kept, not replaced"
        );
        let owner = backend_of(&r);
        let hdr = &r.json()["headers"];
        if s.owner == victim {
            assert_ne!(owner, victim);
            assert_eq!(
                hdr["x-tether-moved-from"],
                victim.as_str(),
                "first request after the move carries it"
            );
            assert_eq!(hdr["x-tether-move-reason"], "down");
            // exactly once
            let again = Client::new(t.addr("web"))
                .get("/", &[("Cookie", &h)])
                .await
                .unwrap();
            assert_eq!(backend_of(&again), owner, "not split across backends");
            assert!(again.json()["headers"].get("x-tether-moved-from").is_none());
            let mut ws = ws_connect(&t, &s.cookie).await;
            assert_eq!(
                echo(&mut ws, "back").await,
                owner,
                "reconnects to the new owner"
            );
            new_owner.insert(s.cookie.clone(), owner);
        } else {
            assert_eq!(owner, s.owner, "unaffected sessions stay");
            assert!(hdr.get("x-tether-moved-from").is_none());
            let ws = s.ws.as_mut().unwrap();
            assert_eq!(
                echo(ws, "still").await,
                s.owner,
                "unaffected WebSockets stay open"
            );
        }
    }
    assert_eq!(new_owner.len(), affected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_backend_sessions_move_within_a_second() {
    backend_freezes_under_websockets(Signal::SIGSTOP).await;
}

/// A killed backend's clients learn it at once (their connections end as
/// the backend's did, with no frame of tether's), reconnect without waiting
/// for any health check, land on the backend the re-pin will choose, and
/// stay there: the mark-down (passive, from their own refused reconnects, or
/// active) closes none of them again, and the session moves once, to that
/// same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_clients_move_once() {
    let (procs, t, mut sessions, victim, affected) = three_backends_under_websockets().await;
    let vi = procs.iter().position(|p| p.id == victim).unwrap();
    let start = Instant::now();
    let mut watchers = Vec::new();
    for s in sessions.iter_mut().filter(|s| s.owner == victim) {
        let mut ws = s.ws.take().unwrap();
        let cookie = s.cookie.clone();
        watchers.push(tokio::spawn(async move {
            let end = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Close(f))) => {
                            return Err(format!("tether added a close frame {f:?}"))
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return Ok(start.elapsed()),
                    }
                }
            })
            .await;
            (cookie, end)
        }));
    }
    procs[vi].signal(Signal::SIGKILL);
    let mut reconnected = Vec::new();
    for w in watchers {
        let (cookie, end) = w.await.unwrap();
        let ended = end.expect("the connection ends").unwrap();
        assert!(
            ended < Duration::from_secs(1),
            "ended {ended:?} after the kill"
        );
        let mut ws = ws_connect(&t, &cookie).await;
        let owner = echo(&mut ws, "again").await;
        assert_ne!(owner, victim, "reconnected elsewhere");
        reconnected.push((cookie, owner, ws));
    }
    wait_state(&t, &victim, "down", Duration::from_secs(5)).await;
    // Give the mark-down's migration time to close anything it would close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (cookie, owner, ws) in reconnected.iter_mut() {
        assert_eq!(
            echo(ws, "still").await,
            *owner,
            "the mark-down did not close it again"
        );
        let h = format!("TETHER={cookie}");
        let r = Client::new(t.addr("web"))
            .get("/", &[("Cookie", &h)])
            .await
            .unwrap();
        assert_eq!(
            backend_of(&r),
            *owner,
            "the re-pin chose where it reconnected"
        );
        // The first request after the re-pin carries the move: this one, or
        // the reconnect's upgrade if the re-pin came first.
        let first = &r.json()["headers"]["x-tether-moved-from"];
        assert!(first.is_null() || first == victim.as_str(), "{first}");
        let again = Client::new(t.addr("web"))
            .get("/", &[("Cookie", &h)])
            .await
            .unwrap();
        assert_eq!(backend_of(&again), *owner);
        assert!(again.json()["headers"].get("x-tether-moved-from").is_none());
    }
    assert_eq!(reconnected.len(), affected);
    // Each session moved exactly once, to where its client reconnected.
    let m = common::tcp::metrics(&t).await;
    let moves: f64 = m
        .lines()
        .filter(|l| l.starts_with("tether_session_moves_total{"))
        .filter(|l| l.contains(&format!("from=\"{victim}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(moves as usize, affected, "{m}");
    for s in sessions.iter_mut().filter(|s| s.owner != victim) {
        let ws = s.ws.as_mut().unwrap();
        assert_eq!(
            echo(ws, "still").await,
            s.owner,
            "unaffected WebSockets stay open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_goes_down_after_fall_and_up_after_rise() {
    let b = common::backends(2).await;
    let t = Tether::start(&yaml(
        &common::backend_yaml(&b),
        "{ kind: http, path: /healthz, interval: 200ms, timeout: 150ms, rise: 2, fall: 3 }",
        "",
    ));
    let before = b[0].stats.health_checks();
    b[0].stats.set_health_status(500);
    wait_state(&t, "b1", "down", Duration::from_secs(3)).await;
    assert!(
        b[0].stats.health_checks() - before >= 3,
        "down only after `fall` failing probes"
    );
    // every new session goes to b2 meanwhile
    for _ in 0..20 {
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        assert_eq!(backend_of(&r), "b2");
    }
    b[0].stats.set_health_status(200);
    let back = Instant::now();
    wait_state(&t, "b1", "up", Duration::from_secs(3)).await;
    assert!(
        back.elapsed() >= Duration::from_millis(150),
        "up only after `rise` passing probes"
    );
    let m = Client::new(t.admin)
        .get("/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(
        m.contains("tether_health_checks_total{backend=\"b1\",pool=\"app\",result=\"fail\"}"),
        "{m}"
    );
    assert!(m.contains("tether_backend_up{backend=\"b1\",pool=\"app\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refused_is_retried_and_moves_only_when_marked_down() {
    let b = common::backends(2).await;
    // slow active checks: the passive path has to find the failure
    let t = Tether::start(&yaml(
        &common::backend_yaml(&b),
        "{ kind: tcp, interval: 30s, timeout: 500ms, rise: 1, fall: 3 }",
        "",
    ));
    // a session on b1
    let (cookie, _) = loop {
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        if backend_of(&r) == "b1" {
            break (r.set_cookie("TETHER").unwrap(), ());
        }
    };
    let key = &cookie[..22];
    let mut b = b;
    let b1 = b.remove(0);
    b1.shutdown().await; // connection refused from now on
    let h = format!("TETHER={cookie}");
    for i in 0..2 {
        let r = Client::new(t.addr("web"))
            .get("/", &[("Cookie", &h)])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "retried on a live backend (try {i})");
        assert_eq!(backend_of(&r), "b2");
        assert!(
            r.json()["headers"].get("x-tether-moved-from").is_none(),
            "not re-pinned by one failure"
        );
        let s = Client::new(t.admin)
            .get(&format!("/api/pools/app/sessions/{key}"), &[])
            .await
            .unwrap()
            .json();
        assert_eq!(s["session"]["backend"], "b1", "still pinned to b1");
    }
    // the third failure reaches `fall`: b1 is down, the session moves
    let r = Client::new(t.addr("web"))
        .get("/", &[("Cookie", &h)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    wait_state(&t, "b1", "down", Duration::from_secs(1)).await;
    let r2 = Client::new(t.addr("web"))
        .get("/", &[("Cookie", &h)])
        .await
        .unwrap();
    let moved = [&r, &r2]
        .iter()
        .filter(|r| r.json()["headers"]["x-tether-moved-from"] == "b1")
        .count();
    assert_eq!(moved, 1, "exactly one request carries the move");
    let s = Client::new(t.admin)
        .get(&format!("/api/pools/app/sessions/{key}"), &[])
        .await
        .unwrap()
        .json();
    assert_eq!(s["session"]["backend"], "b2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_backend_answers_503_at_once_and_keeps_pins() {
    let b = common::backends(1).await;
    let t = Tether::start(&yaml(&common::backend_yaml(&b), FAST_HEALTH, ""));
    let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
    let cookie = r.set_cookie("TETHER").unwrap();
    let h = format!("TETHER={cookie}");
    b[0].stats.set_health_status(503);
    wait_state(&t, "b1", "down", Duration::from_secs(3)).await;
    for _ in 0..5 {
        let start = Instant::now();
        let r = Client::new(t.addr("web"))
            .get("/", &[("Cookie", &h)])
            .await
            .unwrap();
        assert_eq!(r.status, 503);
        assert!(r.header("retry-after").is_some());
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
    }
    let s = Client::new(t.admin)
        .get(&format!("/api/pools/app/sessions/{}", &cookie[..22]), &[])
        .await
        .unwrap();
    assert_eq!(s.json()["session"]["backend"], "b1", "the pin is kept");
    b[0].stats.set_health_status(200);
    wait_state(&t, "b1", "up", Duration::from_secs(3)).await;
    let r = Client::new(t.addr("web"))
        .get("/", &[("Cookie", &h)])
        .await
        .unwrap();
    assert_eq!((r.status, backend_of(&r)), (200, "b1".to_string()));
    assert!(r.json()["headers"].get("x-tether-moved-from").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_at_start_gets_nothing_until_it_passes() {
    let b = common::backends(1).await;
    // b2's port: bound now, released, so the first round finds it refusing
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = spare.local_addr().unwrap();
    drop(spare);
    let backends = format!(
        "{}      - {{ id: b2, addr: \"{addr}\" }}\n",
        common::backend_yaml(&b)
    );
    let t = Tether::start(&yaml(&backends, FAST_HEALTH, ""));
    wait_state(&t, "b2", "down", Duration::from_millis(10)).await;
    for _ in 0..30 {
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        assert_eq!(backend_of(&r), "b1");
    }
    let late = common::whoami::start("b2", &addr.to_string())
        .await
        .unwrap();
    wait_state(&t, "b2", "up", Duration::from_secs(3)).await;
    let mut on_b2 = 0;
    for _ in 0..60 {
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        on_b2 += usize::from(backend_of(&r) == "b2");
    }
    assert!(on_b2 > 10, "new sessions reach it once up: {on_b2}/60");
    drop(late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_before_the_response_are_retried_only_when_safe() {
    let b = common::backends(2).await;
    // a high `fall`: this test is about retries, not mark-downs
    let t = Tether::start(&yaml(
        &common::backend_yaml(&b),
        "{ kind: tcp, interval: 30s, timeout: 500ms, rise: 1, fall: 100 }",
        "",
    ));
    let seen = || b.iter().map(|b| b.stats.requests()).sum::<u64>();
    let before = seen();
    let r = Client::new(t.addr("web")).get("/reset", &[]).await.unwrap();
    assert_eq!(r.status, 502, "every backend reset");
    assert_eq!(
        seen() - before,
        2,
        "an idempotent GET is retried on the other backend"
    );
    let before = seen();
    let r = Client::new(t.addr("web"))
        .request("POST", "/reset", &[], b"payload")
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        seen() - before,
        1,
        "a POST whose body was sent is not replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revived_backend_slow_starts() {
    let b = common::backends(2).await;
    let t = Tether::start(&yaml(
        &common::backend_yaml(&b),
        "{ kind: http, path: /healthz, interval: 100ms, timeout: 80ms, rise: 1, fall: 1, slowstart: 3s }",
        "",
    ));
    b[0].stats.set_health_status(500);
    wait_state(&t, "b1", "down", Duration::from_secs(2)).await;
    b[0].stats.set_health_status(200);
    wait_state(&t, "b1", "up", Duration::from_secs(2)).await;
    let share = |n: usize| {
        let addr = t.addr("web");
        async move {
            let mut on_b1 = 0;
            for _ in 0..n {
                let r = Client::new(addr).get("/", &[]).await.unwrap();
                on_b1 += usize::from(backend_of(&r) == "b1");
            }
            on_b1 as f64 / n as f64
        }
    };
    let early = share(100).await;
    assert!(
        early < 0.3,
        "right after coming back b1 takes a small share: {early}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = share(200).await;
    assert!(
        late > 0.35,
        "after the window b1 takes its full share: {late}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_backend_down_keep_leaves_websockets_open() {
    let procs: Vec<ProcBackend> = (1..=2)
        .map(|i| ProcBackend::start(&format!("b{i}")))
        .collect();
    let t = Tether::start(&yaml(
        &proc_backend_yaml(&procs),
        FAST_HEALTH,
        "    on_backend_down: keep\n",
    ));
    let mut sessions = open_sessions(&t, 10).await;
    let victim = sessions[0].owner.clone();
    let vi = procs.iter().position(|p| p.id == victim).unwrap();
    procs[vi].signal(Signal::SIGSTOP);
    wait_state(&t, &victim, "down", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in sessions.iter_mut().filter(|s| s.owner == victim) {
        let ws = s.ws.as_mut().unwrap();
        let next = tokio::time::timeout(Duration::from_millis(50), ws.next()).await;
        assert!(
            next.is_err(),
            "tether must not close it with `keep`: {next:?}"
        );
    }
    procs[vi].signal(Signal::SIGCONT);
}
