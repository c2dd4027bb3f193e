//! Process lifecycle: graceful restart keeps sessions, kill -9 loses at most
//! the last second, SIGTERM exits promptly, SIGHUP never kills, adding a
//! backend moves no session.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{backend_of, backend_yaml, backends, whoami, Client, Tether};
use nix::sys::signal::Signal;

fn persistent_config(b: &[whoami::Running]) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         server: {{ shutdown_grace: 5s }}\n\
         store: {{ kind: embedded, path: data/affinity.db }}\n\
         pools:\n  app:\n    backends:\n{}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    \
         affinity: {{ key: {{ cookie: {{ name: TETHER, insert: true, max_age: 8h }} }} }}\n",
        backend_yaml(b)
    )
}

/// `n` fresh cookie sessions: cookie -> backend. Each cookie comes back once,
/// which confirms its session (until then it is provisional: memory only).
async fn sessions(t: &Tether, n: usize) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let mut c = Client::new(t.addr("web"));
        let r = c.get("/", &[]).await.unwrap();
        let cookie = r.set_cookie("TETHER").unwrap();
        let back = c
            .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
            .await
            .unwrap();
        assert_eq!(backend_of(&back), backend_of(&r));
        out.insert(cookie, backend_of(&r));
    }
    out
}

async fn moved(t: &Tether, s: &HashMap<String, String>) -> usize {
    let mut c = Client::new(t.addr("web"));
    let mut moved = 0;
    for (cookie, owner) in s {
        let r = c
            .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
            .await
            .unwrap();
        assert!(
            r.set_cookie("TETHER").is_none(),
            "cookie still accepted after restart"
        );
        moved += usize::from(&backend_of(&r) != owner);
    }
    moved
}

fn restart(mut t: Tether, yaml: Option<&str>) -> Tether {
    t.signal(Signal::SIGTERM);
    let st = t
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(st.success(), "clean exit: {st:?}\n{}", t.log_text());
    let config = t.config.clone();
    if let Some(y) = yaml {
        std::fs::write(&config, y).unwrap();
    }
    let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
    Tether::spawn(dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_every_session() {
    let b = backends(4).await;
    let t = Tether::start(&persistent_config(&b));
    let s = sessions(&t, 200).await;
    let t = restart(t, None);
    assert_eq!(moved(&t, &s).await, 0);
    let pools = Client::new(t.admin)
        .get("/api/pools", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(pools["pools"][0]["sessions"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_fifth_backend_moves_no_session() {
    let mut b = backends(5).await;
    let fifth = b.pop().unwrap();
    let t = Tether::start(&persistent_config(&b));
    let s = sessions(&t, 300).await;
    b.push(fifth);
    let t = restart(t, Some(&persistent_config(&b)));
    assert_eq!(
        moved(&t, &s).await,
        0,
        "existing sessions stay where they are"
    );
    let fresh = sessions(&t, 200).await;
    let on_fifth = fresh.values().filter(|o| *o == "b5").count();
    assert!(
        on_fifth >= 20,
        "new sessions reach the new backend: {on_fifth}/200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_last_second() {
    let b = backends(3).await;
    let mut t = Tether::start(&persistent_config(&b));
    let s = sessions(&t, 100).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    t.signal(Signal::SIGKILL);
    t.wait_exit(Duration::from_secs(5)).expect("killed");
    let config = t.config.clone();
    let dir = std::mem::replace(&mut t.dir, tempfile::tempdir().unwrap());
    let t = Tether::spawn(dir, config);
    assert_eq!(
        moved(&t, &s).await,
        0,
        "sessions older than a second survive kill -9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_even_with_idle_keepalive_connections() {
    let b = backends(1).await;
    let mut t = Tether::start(&persistent_config(&b));
    // an idle kept-alive client must not hold the exit for the grace period
    let mut idle = Client::new(t.addr("web"));
    assert_eq!(idle.get("/", &[]).await.unwrap().status, 200);
    let start = Instant::now();
    t.signal(Signal::SIGTERM);
    let st = t.wait_exit(Duration::from_secs(4)).expect("exited");
    assert!(st.success());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_open_exits_within_two_seconds() {
    let b = backends(1).await;
    let mut t = Tether::start(&persistent_config(&b));
    let start = Instant::now();
    t.signal(Signal::SIGTERM);
    let st = t.wait_exit(Duration::from_secs(4)).expect("exited");
    assert!(st.success());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_never_kills_the_process() {
    let b = backends(1).await;
    let mut t = Tether::start(&persistent_config(&b));
    t.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // even with a broken file on disk
    std::fs::write(&t.config, "pools: [oops\n").unwrap();
    t.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.child.try_wait().unwrap().is_none(), "still running");
    let r = Client::new(t.admin).get("/api/ping", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        Client::new(t.addr("web"))
            .get("/", &[])
            .await
            .unwrap()
            .status,
        200
    );
    let m = Client::new(t.admin)
        .get("/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(
        m.contains("tether_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(m.contains("tether_config_reloads_total{result=\"error\"} 1"));
    assert!(
        t.log_text().contains("proxy.yaml:"),
        "the error names the file"
    );
}
