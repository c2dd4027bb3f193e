//! Zero-downtime binary upgrade (`tether --upgrade`): the successor takes the
//! listening sockets and the store; the predecessor keeps its connections for
//! `upgrade_grace`, then closes WebSockets with 1001 and exits.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{backend_of, backends, ws, Client, Tether};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn yaml(b: &[common::whoami::Running], grace: &str) -> String {
    common::config(
        b,
        "{ key: { header: X-Device } }",
        "    health: { kind: http, path: /healthz, interval: 1s, timeout: 300ms }\n",
        "",
        &format!("server: {{ upgrade_grace: {grace}, shutdown_grace: 1s }}\nstore: {{ kind: embedded, path: affinity.db }}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_under_load_drops_nothing_and_keeps_sessions() {
    let b = backends(3).await;
    let mut old = Tether::start(&yaml(&b, "3s"));
    let web = old.addr("web");

    // Sessions made on the old process.
    let mut owners = HashMap::new();
    let mut c = Client::new(web);
    for i in 0..30 {
        let key = format!("k{i}");
        let r = c.get("/", &[("x-device", &key)]).await.unwrap();
        owners.insert(key, backend_of(&r));
    }
    let owners = Arc::new(owners);
    let mut sockets = Vec::new();
    for i in 0..10 {
        let key = format!("k{i}");
        let s = ws::open(web, &[("x-device", &key)])
            .await
            .expect("ws opens");
        sockets.push((s, owners[&key].clone()));
    }

    // Keep-alive load across the upgrade; every answer from the session's owner.
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for n in 0..2 {
        let (stop, requests, owners) = (stop.clone(), requests.clone(), owners.clone());
        load.push(tokio::spawn(async move {
            let mut c = Client::new(web);
            let mut failures = Vec::new();
            let mut i = n;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", i % 30);
                i += 1;
                match c.get_retrying("/", &[("x-device", &key)]).await {
                    Ok(r) if r.status == 200 && backend_of(&r) == owners[&key] => {}
                    Ok(r) => failures.push(format!("{key}: {} from {}", r.status, backend_of(&r))),
                    Err(e) => failures.push(format!("{key}: {e}")),
                }
                requests.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new = tokio::task::block_in_place(|| old.successor());
    assert_eq!(new.addr("web"), web, "the same socket");
    assert_eq!(new.admin, old.admin);
    assert!(
        old.log_text().contains("the successor took over"),
        "{}",
        old.log_text()
    );

    // The old process still carries its WebSockets during the grace...
    for (s, owner) in sockets.iter_mut() {
        assert_eq!(ws::echo(s, "during grace").await.as_ref(), Ok(&*owner));
    }
    // ...then says "going away" and exits.
    for (s, _) in sockets.iter_mut() {
        assert_eq!(
            ws::closed_with(s, Duration::from_secs(6)).await,
            Some(CloseCode::Away)
        );
    }
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(5)));
    assert!(
        exited.is_some_and(|s| s.success()),
        "old process exits after its grace\n{}",
        old.log_text()
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let failures = l.await.unwrap();
        assert!(
            failures.is_empty(),
            "failed requests: {failures:?}\nold:\n{}\nnew:\n{}",
            old.log_text(),
            new.log_text()
        );
    }
    assert!(requests.load(Ordering::Relaxed) > 50);

    // The successor has every session (read from the store file the old one handed over).
    let mut admin = Client::new(new.admin);
    for (key, owner) in owners.iter() {
        let r = admin
            .get(&format!("/api/pools/app/sessions/{key}"), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        assert_eq!(r.json()["session"]["backend"], owner.as_str(), "{key}");
    }
    // And serves new connections; a new WebSocket lands on its session's owner.
    let mut s = ws::open(web, &[("x-device", "k3")])
        .await
        .expect("ws on the successor");
    assert_eq!(ws::echo(&mut s, "after").await, Ok(owners["k3"].clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_without_a_running_tether_fails_clearly() {
    let b = backends(1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, yaml(&b, "1s")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["--upgrade", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no running tether"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_successor_itself() {
    let b = backends(1).await;
    let mut old = Tether::start(&yaml(&b, "1s"));
    old.signal(nix::sys::signal::Signal::SIGUSR2);
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(10)));
    assert!(
        exited.is_some(),
        "the old process hands over and exits\n{}",
        old.log_text()
    );
    // The successor (not a child we can wait on) serves on the same address.
    let end = Instant::now() + Duration::from_secs(5);
    let r = loop {
        match Client::new(old.addr("web"))
            .get("/", &[("x-device", "a")])
            .await
        {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < end, "successor serves: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(r.status, 200);
    // Stop the successor by its pid, from its own log line.
    let pid = old
        .log_text()
        .lines()
        .find_map(|l| {
            l.split("started a successor pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<i32>()
                .ok()
        })
        .expect("successor pid logged");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}
