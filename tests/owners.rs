//! One owner at a time (issue 13's chaos soak, findings as regression tests):
//! a session's live connections and its record never name two backends for
//! longer than a reconnect, whatever moved the session.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{
    backend_of, backend_yaml, backends, proc_backend_yaml, ws, Client, ProcBackend, Tether,
};
use nix::sys::signal::Signal;

fn cookie_yaml(backends: &str, store: &str, pool_extra: &str) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\nstore: {store}\n\
         pools:\n  app:\n{pool_extra}    backends:\n{backends}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n"
    )
}

/// The backend a session's record names, from `t`'s admin API.
async fn recorded(t: &Tether, cookie: &str) -> String {
    let r = Client::new(t.admin)
        .get(&format!("/api/pools/app/sessions/{}", &cookie[..22]), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["session"]["backend"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

async fn get(t: &Tether, cookie: &str) -> String {
    let r = Client::new(t.addr("web"))
        .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    backend_of(&r)
}

/// A WebSocket refused by its session's backend and retried on another
/// moves the session with it: when the first backend comes back before
/// anything marks it down (here nothing can: no checks), the record, new
/// requests and new connections all follow the live connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_connection_takes_its_session_along() {
    let mut procs: Vec<ProcBackend> = (1..=2)
        .map(|i| ProcBackend::start(&format!("b{i}")))
        .collect();
    let t = Tether::start(&cookie_yaml(
        &proc_backend_yaml(&procs),
        "{ kind: embedded }",
        "    health: { kind: none }\n",
    ));
    let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
    let cookie = r.set_cookie("TETHER").unwrap();
    let first = backend_of(&r);
    assert_eq!(get(&t, &cookie).await, first, "confirmed");
    let header = format!("TETHER={cookie}");
    let mut s = ws::open(t.addr("web"), &[("Cookie", &header)])
        .await
        .unwrap();
    assert_eq!(ws::echo(&mut s, "a").await.unwrap(), first);

    // The owner dies; its client reconnects at once, before it comes back.
    let i = procs.iter().position(|p| p.id == first).unwrap();
    let addr = procs[i].addr.to_string();
    procs[i].signal(Signal::SIGKILL);
    assert!(ws::echo(&mut s, "b").await.is_err(), "the connection ended");
    let mut again = ws::open(t.addr("web"), &[("Cookie", &header)])
        .await
        .unwrap();
    let second = ws::echo(&mut again, "c").await.unwrap();
    assert_ne!(second, first);
    procs[i] = ProcBackend::start_on(&first, &addr);

    assert_eq!(
        recorded(&t, &cookie).await,
        second,
        "the record follows the connection"
    );
    assert_eq!(get(&t, &cookie).await, second);
    let mut third = ws::open(t.addr("web"), &[("Cookie", &header)])
        .await
        .unwrap();
    assert_eq!(
        ws::echo(&mut third, "d").await.unwrap(),
        second,
        "not split over two backends"
    );
    assert_eq!(
        ws::echo(&mut again, "e").await.unwrap(),
        second,
        "and the first stays"
    );
}

/// An instance that routed during a Redis outage on a stale (empty) cache
/// learns, when Redis is back, that the session lives elsewhere: it closes
/// the connection it opened on the wrong backend, and the client's reconnect
/// lands on the recorded owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_redis_comeback_proves_misrouted_are_closed() {
    let redis = RedisServer::start();
    let b = backends(3).await;
    let store = format!(
        "{{ kind: redis, redis: {{ url: \"{}\", prefix: t, command_timeout: 200ms, connect_timeout: 500ms }} }}",
        redis.url()
    );
    let extra = "    failback: stay\n    health: { kind: tcp, interval: 30s, timeout: 500ms, rise: 1, fall: 100 }\n";
    let yaml = cookie_yaml(&backend_yaml(&b), &store, extra);
    let a = Tether::start(&yaml);
    let bb = Tether::start(&yaml);

    // A session that lives away from its hash owner: made on A, confirmed,
    // then moved off its first backend by a drain, which is then undone.
    let r = Client::new(a.addr("web")).get("/", &[]).await.unwrap();
    let cookie = r.set_cookie("TETHER").unwrap();
    let home = backend_of(&r);
    assert_eq!(get(&a, &cookie).await, home);
    let drain = Client::new(a.admin)
        .request(
            "POST",
            &format!("/api/pools/app/backends/{home}/drain"),
            &[],
            br#"{"deadline":"100ms"}"#,
        )
        .await
        .unwrap();
    assert_eq!(drain.status, 202);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let owner = get(&a, &cookie).await;
    assert_ne!(owner, home, "moved off the drained backend");
    let enable = Client::new(a.admin)
        .request(
            "POST",
            &format!("/api/pools/app/backends/{home}/enable"),
            &[],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(enable.status, 200);
    common::wait_state(&bb, &home, "up", Duration::from_secs(3)).await;

    // B has never seen the session; Redis stops answering.
    redis.signal(Signal::SIGSTOP);
    let header = format!("TETHER={cookie}");
    let mut s = ws::open(bb.addr("web"), &[("Cookie", &header)])
        .await
        .unwrap();
    let during = ws::echo(&mut s, "x").await.unwrap();
    // Without Redis, B can only follow the hash (home), or another backend
    // if that one failed: anything but where the session really lives.
    assert_ne!(during, owner, "B cannot know the owner:\n{}", bb.log_text());
    redis.signal(Signal::SIGCONT);
    let code = ws::closed_with(&mut s, Duration::from_secs(10)).await;
    assert_eq!(
        code.map(u16::from),
        Some(1012),
        "closed once Redis said where the session lives"
    );
    let mut again = ws::open(bb.addr("web"), &[("Cookie", &header)])
        .await
        .unwrap();
    assert_eq!(ws::echo(&mut again, "y").await.unwrap(), owner);
    assert_eq!(recorded(&bb, &cookie).await, owner);
}
