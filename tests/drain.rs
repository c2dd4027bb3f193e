//! Drain and failback: planned moves with deadlines, spread closes, webhook
//! notifications, and sessions returning home.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{backend_of, backend_yaml, backends, wait_state, Client, Hook, Tether};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

fn yaml(backends: &str, pool_extra: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         pools:\n  app:\n{pool_extra}    backends:\n{backends}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n"
    )
}

async fn session(t: &Tether) -> (String, String) {
    let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
    (r.set_cookie("TETHER").unwrap(), backend_of(&r))
}

async fn get(t: &Tether, cookie: &str) -> common::Response {
    Client::new(t.addr("web"))
        .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_sessions_at_the_deadline_with_spread_closes_and_webhooks() {
    let b = backends(3).await;
    let hook = Hook::start().await;
    let t = Tether::start(&yaml(
        &backend_yaml(&b),
        &format!(
            "    close_spread: 1s\n    notify: {{ webhook: \"http://{}/hook\", before: 1s }}\n",
            hook.addr
        ),
    ));
    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(session(&t).await);
    }
    let mut per: HashMap<&str, usize> = HashMap::new();
    for (_, o) in &sessions {
        *per.entry(o.as_str()).or_default() += 1;
    }
    let victim = per
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| id.to_string())
        .unwrap();
    let mine: Vec<_> = sessions
        .iter()
        .filter(|(_, o)| *o == victim)
        .cloned()
        .collect();
    // a WebSocket per session on the victim
    let mut sockets = Vec::new();
    for (cookie, _) in &mine {
        let mut req = format!("ws://{}/ws", t.addr("web"))
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("cookie", format!("TETHER={cookie}").parse().unwrap());
        sockets.push(tokio_tungstenite::connect_async(req).await.unwrap().0);
    }

    let start = Instant::now();
    let r = Client::new(t.admin)
        .request(
            "POST",
            &format!("/api/pools/app/backends/{victim}/drain"),
            &[],
            br#"{"deadline":"2s"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    wait_state(&t, &victim, "draining", Duration::from_secs(1)).await;
    let watchers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                        Ok(Some(Ok(Message::Close(f)))) => {
                            return Some((start.elapsed(), f.map(|f| f.code)))
                        }
                        Ok(Some(Ok(_))) => continue,
                        _ => return None,
                    }
                }
            })
        })
        .collect();

    // before the deadline: no new session lands on it, old ones still do
    for _ in 0..30 {
        assert_ne!(
            session(&t).await.1,
            victim,
            "a new session landed on a draining backend"
        );
    }
    for (cookie, _) in &mine {
        assert_eq!(
            backend_of(&get(&t, cookie).await),
            victim,
            "old sessions keep working until the deadline"
        );
    }
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "the checks above took too long to mean anything"
    );

    let mut closes = Vec::new();
    for w in watchers {
        let (at, code) = w.await.unwrap().expect("a close frame at the deadline");
        assert_eq!(code, Some(CloseCode::Restart));
        closes.push(at);
    }
    closes.sort();
    let (first, last) = (closes[0], *closes.last().unwrap());
    assert!(
        first >= Duration::from_millis(1950),
        "closed before the deadline: {first:?}"
    );
    assert!(
        last < Duration::from_millis(3500),
        "closes done within the spread: {last:?}"
    );
    if closes.len() >= 4 {
        assert!(
            last - first >= Duration::from_millis(400),
            "closes spread over close_spread: {first:?}..{last:?}"
        );
    }
    for (cookie, _) in &mine {
        let r = get(&t, cookie).await;
        assert_ne!(backend_of(&r), victim);
        assert_eq!(r.json()["headers"]["x-tether-move-reason"], "drain");
    }
    // the webhook heard of it: the pending drain, then the moves
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ev = hook.events();
    let pending = ev
        .iter()
        .find(|e| e["event"] == "drain_pending")
        .expect("drain_pending event");
    assert_eq!(pending["backend"], victim.as_str());
    let moved: u64 = ev
        .iter()
        .filter(|e| {
            e["event"] == "moved" && e["backend"] == victim.as_str() && e["reason"] == "drain"
        })
        .map(|e| e["sessions"].as_u64().unwrap())
        .sum();
    assert_eq!(moved, mine.len() as u64, "events: {ev:?}");

    let r = Client::new(t.admin)
        .request(
            "POST",
            &format!("/api/pools/app/backends/{victim}/enable"),
            &[],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    wait_state(&t, &victim, "up", Duration::from_secs(1)).await;
}

async fn failback(mode: &str) -> (String, common::Response) {
    let b = backends(2).await;
    let t = Tether::start(&yaml(
        &backend_yaml(&b),
        &format!(
            "    failback: {mode}\n    health: {{ kind: http, path: /healthz, interval: 200ms, timeout: 150ms, rise: 1, fall: 1 }}\n"
        ),
    ));
    let (cookie, _) = loop {
        let s = session(&t).await;
        if s.1 == "b1" {
            break s;
        }
    };
    b[0].stats.set_health_status(500);
    wait_state(&t, "b1", "down", Duration::from_secs(3)).await;
    let r = get(&t, &cookie).await;
    assert_eq!(backend_of(&r), "b2");
    assert_eq!(r.json()["headers"]["x-tether-move-reason"], "down");
    b[0].stats.set_health_status(200);
    wait_state(&t, "b1", "up", Duration::from_secs(3)).await;
    let r = get(&t, &cookie).await;
    let again = get(&t, &cookie).await;
    assert_eq!(backend_of(&again), backend_of(&r), "settled");
    assert!(again.json()["headers"].get("x-tether-moved-from").is_none());
    (cookie, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_stay_keeps_the_new_owner() {
    let (_, r) = failback("stay").await;
    assert_eq!(backend_of(&r), "b2");
    assert!(r.json()["headers"].get("x-tether-moved-from").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_return_goes_home_once_it_is_back() {
    let (_, r) = failback("return").await;
    assert_eq!(backend_of(&r), "b1");
    assert_eq!(r.json()["headers"]["x-tether-moved-from"], "b2");
    assert_eq!(r.json()["headers"]["x-tether-move-reason"], "failback");
}
