//! Notifier against real sockets: a tiny HTTP receiver on 127.0.0.1:0 that
//! records each request and answers from a script of statuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{Notifier, Options};
use crate::config::Webhook;
use crate::metrics::Metrics;
use crate::store::MoveReason;

struct Received {
    at: Instant,
    head: String,
    body: Value,
}

fn webhook(port: u16) -> Webhook {
    Webhook {
        host: "127.0.0.1".into(),
        port,
        path: "/hook?x=1".into(),
    }
}

/// Answers the i-th request with `statuses[i]` (200 once the script runs out).
async fn receiver(statuses: Vec<u16>) -> (Webhook, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut script = statuses.into_iter();
        while let Ok((mut s, _)) = listener.accept().await {
            let status = script.next().unwrap_or(200);
            let (head, body) = read_request(&mut s).await;
            let body = serde_json::from_slice(&body).unwrap();
            let _ = tx.send(Received {
                at: Instant::now(),
                head,
                body,
            });
            let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (webhook(port), rx)
}

async fn read_request(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "request cut short: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(len) = req.parse(&buf).unwrap() {
            let cl = req.headers.iter().find(|h| h.name == "Content-Length");
            let cl: usize = std::str::from_utf8(cl.unwrap().value)
                .unwrap()
                .parse()
                .unwrap();
            if buf.len() >= len + cl {
                let head = String::from_utf8(buf[..len].to_vec()).unwrap();
                return (head, buf[len..len + cl].to_vec());
            }
        }
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no notification within 5 s")
        .expect("receiver gone")
}

fn count(m: &Metrics, result: &str) -> u64 {
    m.notifications.with_label_values(&["app", result]).get()
}

/// Waits until the `result` counter reaches `n` (the sender counts after the
/// receiver has answered, so shortly after the body arrived).
async fn wait_count(m: &Metrics, result: &str, n: u64) {
    let start = Instant::now();
    while count(m, result) < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{result} stuck at {}",
            count(m, result)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count(m, result), n, "{result}");
}

/// The event without its `time`, which is checked to be a recent unix ms.
fn strip_time(mut v: Value) -> Value {
    let time = v.as_object_mut().unwrap().remove("time").unwrap();
    let now = crate::store::now_ms();
    assert!(time.as_u64().unwrap() + 60_000 > now, "time {time}");
    v
}

#[tokio::test]
async fn drain_pending_is_posted_as_json() {
    let (hook, mut rx) = receiver(vec![]).await;
    let port = hook.port;
    let metrics = Arc::new(Metrics::new());
    let n = Notifier::spawn(hook, metrics.clone());
    n.drain_pending("app", "app-1", 1_700_000_000_000, 42);
    let got = next(&mut rx).await;
    assert!(
        got.head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"),
        "{}",
        got.head
    );
    for h in [
        format!("Host: 127.0.0.1:{port}\r\n"),
        "Content-Type: application/json\r\n".into(),
        "Connection: close\r\n".into(),
    ] {
        assert!(got.head.contains(&h), "{h:?} missing in {}", got.head);
    }
    let expected = json!({"event": "drain_pending", "pool": "app", "backend": "app-1",
        "reason": "drain", "deadline": 1_700_000_000_000u64, "sessions": 42});
    assert_eq!(strip_time(got.body), expected);
    wait_count(&metrics, "sent", 1).await;
    assert_eq!(count(&metrics, "failed") + count(&metrics, "dropped"), 0);
}

#[tokio::test]
async fn moves_within_a_window_make_one_event_per_backend_and_reason() {
    let (hook, mut rx) = receiver(vec![]).await;
    let metrics = Arc::new(Metrics::new());
    let n = Notifier::spawn(hook, metrics.clone());
    let start = Instant::now();
    for i in 0..100 {
        let to = if i % 5 == 0 { "b3" } else { "b2" };
        n.moved("app", "b1", to, MoveReason::Down);
    }
    for _ in 0..3 {
        n.moved("app", "b4", "b2", MoveReason::Drain);
    }
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    // The window closes 1 s after its first move, not before.
    assert!(
        first.at - start >= Duration::from_millis(900),
        "{:?}",
        first.at - start
    );
    let expected_b1 = json!({"event": "moved", "pool": "app", "backend": "b1", "reason": "down",
        "deadline": null, "sessions": 100, "to": {"b2": 80, "b3": 20}});
    let expected_b4 = json!({"event": "moved", "pool": "app", "backend": "b4", "reason": "drain",
        "deadline": null, "sessions": 3, "to": {"b2": 3}});
    assert_eq!(strip_time(first.body), expected_b1);
    assert_eq!(strip_time(second.body), expected_b4);
    // Nothing else: the 100 moves were one event.
    let more = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
    assert!(more.is_err(), "unexpected extra event");
    wait_count(&metrics, "sent", 2).await;

    // A later move opens a new window.
    n.moved("app", "b1", "b2", MoveReason::Failback);
    let later = next(&mut rx).await;
    assert_eq!(later.body["sessions"], 1);
    assert_eq!(later.body["reason"], "failback");
}

#[tokio::test]
async fn failed_posts_are_retried_with_backoff() {
    let (hook, mut rx) = receiver(vec![500, 500, 200]).await;
    let metrics = Arc::new(Metrics::new());
    let n = Notifier::spawn(hook, metrics.clone());
    n.drain_pending("app", "app-2", 1, 7);
    let tries = [
        next(&mut rx).await,
        next(&mut rx).await,
        next(&mut rx).await,
    ];
    // The default backoff: 200 ms before the 2nd attempt, 400 ms before the 3rd.
    let gaps = [tries[1].at - tries[0].at, tries[2].at - tries[1].at];
    assert!(gaps[0] >= Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(400), "{gaps:?}");
    assert!(tries.iter().all(|t| t.body == tries[0].body));
    wait_count(&metrics, "sent", 1).await;
    assert_eq!(count(&metrics, "failed"), 0);
    let more = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    assert!(more.is_err(), "delivered after a 2xx");
}

#[tokio::test]
async fn a_dead_receiver_blocks_nothing_and_is_counted() {
    // A port nobody listens on: every attempt is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics = Arc::new(Metrics::new());
    let opts = Options {
        backoff: Duration::from_millis(10),
        ..Options::default()
    };
    let n = Notifier::spawn_with(webhook(port), metrics.clone(), opts);
    let start = Instant::now();
    for i in 0..10_000 {
        let to = ["b2", "b3", "b4"][i % 3];
        n.moved("app", "b1", to, MoveReason::Down);
    }
    let took = start.elapsed();
    println!("10000 moved() calls took {took:?}");
    assert!(
        took < Duration::from_millis(500),
        "moved() blocked: {took:?}"
    );
    wait_count(&metrics, "failed", 1).await;
    assert_eq!(count(&metrics, "sent") + count(&metrics, "dropped"), 0);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    // A receiver that reads nothing and never answers: the first event holds
    // the sender for its whole timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let metrics = Arc::new(Metrics::new());
    let opts = Options {
        queue: 4,
        ..Options::default()
    };
    let n = Notifier::spawn_with(webhook(port), metrics.clone(), opts);
    // This single-threaded runtime runs no task before the loop yields, so the
    // queue takes exactly 4 and the other 16 are dropped.
    for i in 0..20 {
        n.drain_pending("app", &format!("b{i}"), 1, 1);
    }
    assert_eq!(count(&metrics, "dropped"), 16);
    tokio::time::sleep(Duration::from_millis(100)).await;
    n.drain_pending("app", "late", 1, 1);
    // The sender took one off the queue, so there was room for this one.
    assert_eq!(count(&metrics, "dropped"), 16);
    assert_eq!(count(&metrics, "sent") + count(&metrics, "failed"), 0);
}

#[tokio::test]
async fn dropping_the_notifier_flushes_the_open_window() {
    let (hook, mut rx) = receiver(vec![]).await;
    let metrics = Arc::new(Metrics::new());
    let n = Notifier::spawn(hook, metrics.clone());
    let start = Instant::now();
    n.moved("app", "b1", "b2", MoveReason::Removed);
    n.moved("app", "b1", "b2", MoveReason::Removed);
    // Let the flusher start waiting out the window.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A pool removed by a reload drops its notifier: its last moves still go out,
    // at once rather than at the end of the window.
    drop(n);
    let got = next(&mut rx).await;
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(got.body["sessions"], 2);
    assert_eq!(got.body["reason"], "removed");
    wait_count(&metrics, "sent", 1).await;
}
