//! Live reload: every trigger, validation before any change, state carried
//! over by backend id, listeners added and removed, all under real traffic.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tcp::{metric, metrics};
use common::{backend_of, backends, whoami, ws, Client, Tether};

const HEALTH: &str =
    "    health: { kind: http, path: /healthz, interval: 200ms, timeout: 150ms, rise: 1, fall: 2 }\n";

/// Pool `app` over `list` of (backend, weight), keyed by header `X-Device`,
/// plus `listeners` extra listener entries.
fn yaml(list: &[(&whoami::Running, u32)], pool_extra: &str, listeners: &str) -> String {
    let backends: String = list
        .iter()
        .map(|(b, w)| {
            format!(
                "      - {{ id: {}, addr: \"{}\", weight: {w} }}\n",
                b.id, b.addr
            )
        })
        .collect();
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\n\
         pools:\n  app:\n{HEALTH}{pool_extra}    backends:\n{backends}\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: app\n    affinity: {{ key: {{ header: X-Device }} }}\n{listeners}"
    )
}

/// Replace the config as editors do: write a temp file, rename it over.
fn replace(t: &Tether, text: &str) {
    let tmp = t.config.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &t.config).unwrap();
}

async fn api_reload(t: &Tether) -> common::Response {
    Client::new(t.admin)
        .request("POST", "/api/reload", &[], b"")
        .await
        .expect("admin answers")
}

async fn backend_ids(t: &Tether) -> Vec<String> {
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
            format!(
                "{}:{}",
                b["id"].as_str().unwrap(),
                b["state"].as_str().unwrap()
            )
        })
        .collect()
}

async fn wait_ids(t: &Tether, want: &[&str], limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        let ids = backend_ids(t).await;
        if ids == want {
            return;
        }
        assert!(
            Instant::now() < end,
            "backends {ids:?}, want {want:?}\n{}",
            t.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_drop_nothing_and_keep_sessions() {
    let b = backends(3).await;
    let drain = "    drain_timeout: 2s\n    close_spread: 0s\n";
    let a = yaml(&[(&b[0], 1), (&b[1], 1)], drain, "");
    let with_b3 = yaml(&[(&b[0], 2), (&b[1], 1), (&b[2], 1)], drain, "");
    let t = Tether::start(&a);
    let web = t.addr("web");

    // 100 WebSockets, opened before the reloads, each echoing until the end.
    let mut sockets = Vec::new();
    for i in 0..100 {
        let key = format!("ws-{i}");
        let mut s = ws::open(web, &[("x-device", &key)])
            .await
            .expect("ws opens");
        let owner = ws::echo(&mut s, "hi").await.expect("first echo");
        sockets.push((s, owner));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ws_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut failures = Vec::new();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                for (i, (s, owner)) in sockets.iter_mut().enumerate() {
                    match ws::echo(s, &format!("m{round}")).await {
                        Ok(id) if id == *owner => {}
                        Ok(id) => failures.push(format!("ws {i} moved from {owner} to {id}")),
                        Err(e) => failures.push(format!("ws {i}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            failures
        }
    });

    // Keep-alive clients, 40 session keys each, recording every key's owners.
    let requests = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..3 {
        let (stop, requests) = (stop.clone(), requests.clone());
        clients.push(tokio::spawn(async move {
            let mut client = Client::new(web);
            let mut owners: HashMap<String, Vec<String>> = HashMap::new();
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{c}-{}", n % 40);
                n += 1;
                match client.get("/", &[("x-device", &key)]).await {
                    Ok(r) if r.status == 200 => {
                        let seen = owners.entry(key).or_default();
                        let id = backend_of(&r);
                        if seen.last() != Some(&id) {
                            seen.push(id);
                        }
                    }
                    Ok(r) => failures.push(format!("{key}: status {}", r.status)),
                    Err(e) => failures.push(format!("{key}: {e}")),
                }
                requests.fetch_add(1, Ordering::Relaxed);
            }
            (owners, failures)
        }));
    }

    // 20 reloads in 10 s, alternating: add b3 and change a weight, then remove b3.
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        replace(&t, if i % 2 == 0 { &with_b3 } else { &a });
        let r = api_reload(&t).await;
        assert_eq!(r.status, 200, "reload {i}: {}\n{}", r.text(), t.log_text());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let ws_failures = ws_task.await.unwrap();
    assert!(ws_failures.is_empty(), "websockets: {ws_failures:?}");
    let mut on_b3 = Vec::new();
    for c in clients {
        let (owners, failures) = c.await.unwrap();
        assert!(failures.is_empty(), "requests failed: {failures:?}");
        for (key, seen) in owners {
            assert_eq!(seen.len(), 1, "{key} moved: {seen:?}");
            if seen[0] == "b3" {
                on_b3.push(key);
            }
        }
    }
    assert!(requests.load(Ordering::Relaxed) > 100, "the load ran");

    // b3 ended removed: once its drain deadline passed, its sessions move, reason `removed`.
    wait_ids(&t, &["b1:up", "b2:up"], Duration::from_secs(5)).await;
    let mut client = Client::new(web);
    for key in &on_b3 {
        let r = client.get("/", &[("x-device", key)]).await.unwrap();
        assert_ne!(backend_of(&r), "b3");
        let seen = r.json()["headers"].clone();
        assert_eq!(seen["x-tether-move-reason"], "removed", "{key}: {seen}");
        assert_eq!(seen["x-tether-moved-from"], "b3");
    }
    let m = metrics(&t).await;
    let stayed_moved: Vec<_> = m
        .lines()
        .filter(|l| l.starts_with("tether_session_moves_total{"))
        .filter(|l| l.contains("from=\"b1\"") || l.contains("from=\"b2\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        stayed_moved.is_empty(),
        "sessions of staying backends moved: {stayed_moved:?}"
    );
    assert!(metric(&m, "tether_config_reloads_total{result=\"ok\"}") >= 20.0);
    assert_eq!(
        metric(&m, "tether_config_reloads_total{result=\"error\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_a_fixed_one_applies() {
    let b = backends(3).await;
    let good = yaml(&[(&b[0], 1), (&b[1], 1)], "", "");
    let t = Tether::start(&good);
    let mut client = Client::new(t.addr("web"));
    let bad = [
        ("yaml error", good.replace("pools:\n", "pools: [\n")),
        (
            "unknown key",
            good.replace("    backends:\n", "    bogus_key: 1\n    backends:\n"),
        ),
        (
            "bad address",
            good.replace(&b[1].addr.to_string(), "300.1.2.3:80"),
        ),
    ];
    for (n, (what, text)) in bad.iter().enumerate() {
        replace(&t, text);
        let r = api_reload(&t).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let body = r.json();
        let errors = body["errors"].to_string();
        assert!(
            errors.contains("proxy.yaml:"),
            "{what}: errors name the file: {errors}"
        );
        match *what {
            "unknown key" => assert!(errors.contains("bogus_key"), "{errors}"),
            "bad address" => assert!(errors.contains("300.1.2.3"), "{errors}"),
            _ => {}
        }
        // Still serving on the old config.
        let r = client.get("/", &[("x-device", "k")]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(backend_ids(&t).await, ["b1:up", "b2:up"]);
        let m = metrics(&t).await;
        assert!(metric(&m, "tether_config_reloads_total{result=\"error\"}") >= (n + 1) as f64);
    }
    let last = Client::new(t.admin)
        .get("/api/reload", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(last["result"], "error", "{last}");

    // Fixed by an editor-style replace, picked up without being asked.
    let fixed = yaml(&[(&b[0], 1), (&b[1], 1), (&b[2], 1)], "", "");
    replace(&t, &fixed);
    wait_ids(&t, &["b1:up", "b2:up", "b3:up"], Duration::from_secs(5)).await;
    let last = Client::new(t.admin)
        .get("/api/reload", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(last["result"], "ok", "{last}");
    assert_eq!(last["trigger"], "file", "{last}");
    assert_eq!(last["summary"]["pools"]["app"]["added"][0], "b3", "{last}");
    assert!(
        t.log_text().contains("configuration rejected"),
        "errors are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_never_kills() {
    let b = backends(2).await;
    let t = Tether::start(&yaml(&[(&b[0], 1)], "", ""));
    // Written in place (not renamed) and signalled at once.
    std::fs::write(&t.config, yaml(&[(&b[0], 1), (&b[1], 3)], "", "")).unwrap();
    t.signal(nix::sys::signal::Signal::SIGHUP);
    wait_ids(&t, &["b1:up", "b2:up"], Duration::from_secs(5)).await;
    let pools = Client::new(t.admin)
        .get("/api/pools", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(pools["pools"][0]["backends"][1]["weight"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_and_go_without_touching_the_others() {
    let b = backends(2).await;
    let list = [(&b[0], 1), (&b[1], 1)];
    let t = Tether::start(&yaml(&list, "", ""));
    let mut on_web = Client::new(t.addr("web"));
    assert_eq!(
        on_web.get("/", &[("x-device", "a")]).await.unwrap().status,
        200
    );

    let extra = "  - name: extra\n    bind: \"127.0.0.1:0\"\n    pool: app\n    affinity: { key: source_ip }\n";
    replace(&t, &yaml(&list, "", extra));
    let r = api_reload(&t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["summary"]["listeners"]["added"][0], "extra");
    let extra_addr = listening(&t, "extra");
    let mut on_extra = Client::new(extra_addr);
    assert_eq!(on_extra.get("/", &[]).await.unwrap().status, 200);
    // The keep-alive connection on `web` is the same one, still served.
    assert_eq!(
        on_web.get("/", &[("x-device", "a")]).await.unwrap().status,
        200
    );

    // Removed again: no new connections, but the open one finishes its work.
    replace(&t, &yaml(&list, "", ""));
    let r = api_reload(&t).await;
    assert_eq!(r.json()["summary"]["listeners"]["removed"][0], "extra");
    assert_eq!(
        on_extra.get("/", &[]).await.unwrap().status,
        200,
        "established connection survives"
    );
    assert!(
        tokio::net::TcpStream::connect(extra_addr).await.is_err(),
        "no new connections"
    );
    assert_eq!(
        on_web.get("/", &[("x-device", "a")]).await.unwrap().status,
        200
    );

    // Re-bound to another port: the new one serves, the old one takes no new
    // connection, and the connection accepted on the old one goes on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let moved = yaml(&list, "", "").replace("bind: \"127.0.0.1:0\"", &format!("bind: \"{free}\""));
    replace(&t, &moved);
    let r = api_reload(&t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["summary"]["listeners"]["changed"][0],
        "web",
        "{}",
        r.text()
    );
    assert_eq!(listening(&t, "web"), free);
    assert_eq!(
        Client::new(free)
            .get("/", &[("x-device", "a")])
            .await
            .unwrap()
            .status,
        200
    );
    assert!(
        tokio::net::TcpStream::connect(t.addr("web")).await.is_err(),
        "old port closed"
    );
    assert_eq!(
        on_web.get("/", &[("x-device", "a")]).await.unwrap().status,
        200,
        "established connection survives"
    );
}

/// The address of listener `name` from the log (`listening listener=NAME addr=...`).
fn listening(t: &Tether, name: &str) -> std::net::SocketAddr {
    let log = t.log_text();
    let line = log
        .lines()
        .rev()
        .find(|l| {
            l.contains("listening")
                && (l.contains(&format!("listener={name} "))
                    || l.contains(&format!("listener=\"{name}\"")))
        })
        .unwrap_or_else(|| panic!("no listening line for {name}:\n{log}"));
    line.split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_or_hash_change_moves_no_session() {
    let b = backends(3).await;
    let t = Tether::start(&yaml(&[(&b[0], 1), (&b[1], 1)], "", ""));
    let mut owners = HashMap::new();
    for i in 0..20 {
        let key = format!("k{i}");
        let r = Client::new(t.addr("web"))
            .get("/", &[("x-device", &key)])
            .await
            .unwrap();
        owners.insert(key, backend_of(&r));
    }
    // b1's address now points at the server that answers as b3; the hash changes too.
    let moved = format!(
        "      - {{ id: b1, addr: \"{}\", weight: 1 }}\n      - {{ id: b2, addr: \"{}\", weight: 1 }}\n",
        b[2].addr, b[1].addr
    );
    let text = yaml(&[(&b[0], 1), (&b[1], 1)], "    hash: rendezvous\n", "");
    let start = text.find("      - { id: b1").unwrap();
    let end = text.find("listeners:").unwrap();
    replace(&t, &format!("{}{moved}{}", &text[..start], &text[end..]));
    let r = api_reload(&t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let summary = &r.json()["summary"]["pools"]["app"];
    assert_eq!(summary["changed"][0], "b1", "{summary}");
    assert_eq!(summary["settings"], true, "{summary}");
    for (key, owner) in &owners {
        let r = Client::new(t.addr("web"))
            .get("/", &[("x-device", key)])
            .await
            .unwrap();
        // Same session owner; b1's new connections go to its new address.
        let want = if owner == "b1" { "b3" } else { owner.as_str() };
        assert_eq!(backend_of(&r), want, "{key}");
        let s = Client::new(t.admin)
            .get(&format!("/api/pools/app/sessions/{key}"), &[])
            .await
            .unwrap()
            .json();
        assert_eq!(s["session"]["backend"], owner.as_str(), "{key}: {s}");
    }
    assert!(
        !metrics(&t).await.contains("tether_session_moves_total{"),
        "nothing moved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pool_drains_out() {
    let b = backends(2).await;
    let two_pools = |with_old: bool| {
        let old = if with_old {
            format!(
                "  old:\n    drain_timeout: 1s\n    close_spread: 0s\n    backends:\n      - {{ id: o1, addr: \"{}\" }}\n",
                b[0].addr
            )
        } else {
            String::new()
        };
        let pool = if with_old { "old" } else { "new" };
        format!(
            "admin: {{ listen: \"127.0.0.1:0\" }}\npools:\n{old}  new:\n    backends:\n      - {{ id: n1, addr: \"{}\" }}\n\
             listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n    pool: {pool}\n    affinity: {{ key: {{ header: X-Device }} }}\n",
            b[1].addr
        )
    };
    let t = Tether::start(&two_pools(true));
    let mut s = ws::open(t.addr("web"), &[("x-device", "w")]).await.unwrap();
    assert_eq!(ws::echo(&mut s, "a").await.unwrap(), "b1");
    replace(&t, &two_pools(false));
    let r = api_reload(&t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["summary"]["pools_removed"][0], "old");
    // New requests go to the listener's new pool; the old pool's tunnel lives on until its drain ends.
    let r = Client::new(t.addr("web"))
        .get("/", &[("x-device", "w")])
        .await
        .unwrap();
    assert_eq!(backend_of(&r), "b2");
    assert_eq!(
        ws::echo(&mut s, "b").await.unwrap(),
        "b1",
        "still open while draining"
    );
    let code = ws::closed_with(&mut s, Duration::from_secs(4)).await;
    assert_eq!(code.map(u16::from), Some(1012), "closed once drained out");
}
