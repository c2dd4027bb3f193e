//! Stickiness over real sockets: cookie, header, query, app-cookie and
//! source-IP keys, fallbacks, spread, and persistence across restarts.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{backend_of, backends, config, Client, Tether};

/// Builds (path, headers) carrying key number `i`.
type RequestFor = dyn Fn(usize) -> (String, Vec<(String, String)>);

const COOKIE: &str = "{ key: { cookie: { name: TETHER, insert: true, max_age: 8h } } }";

/// One fresh session (no cookie) then `n - 1` more requests with its cookie.
async fn cookie_session(addr: std::net::SocketAddr, n: usize) -> (String, String) {
    let mut c = Client::new(addr);
    let first = c.get("/", &[]).await.expect("first request");
    assert_eq!(first.status, 200);
    let cookie = first.set_cookie("TETHER").expect("tether sets its cookie");
    let owner = backend_of(&first);
    let header = format!("TETHER={cookie}");
    for _ in 1..n {
        let r = c.get("/", &[("Cookie", &header)]).await.expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(backend_of(&r), owner, "session {cookie} moved");
        assert!(
            r.set_cookie("TETHER").is_none(),
            "a fresh cookie is not re-sent"
        );
        assert_eq!(
            r.json()["headers"]["x-tether-session"],
            cookie[..22],
            "backend sees the session key"
        );
    }
    (cookie, owner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_cookie_sessions_stick() {
    let b = backends(4).await;
    let t = Tether::start(&config(&b, COOKIE, "", "", ""));
    let addr = t.addr("web");
    let mut tasks = Vec::new();
    for _ in 0..25 {
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::new();
            for _ in 0..40 {
                v.push(cookie_session(addr, 5).await);
            }
            v
        }));
    }
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    let mut cookies = HashSet::new();
    for task in tasks {
        for (cookie, owner) in task.await.unwrap() {
            assert!(cookies.insert(cookie), "cookie values are unique");
            *per_backend.entry(owner).or_default() += 1;
        }
    }
    assert_eq!(cookies.len(), 1000);
    assert_eq!(
        per_backend.len(),
        4,
        "all backends get sessions: {per_backend:?}"
    );
    // the admin API agrees with what clients saw
    let mut admin = Client::new(t.admin);
    let pools = admin.get("/api/pools", &[]).await.unwrap().json();
    let total: u64 = pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sessions"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1000);
}

async fn spread(t: &Tether, n: usize) -> HashMap<String, usize> {
    let addr = t.addr("web");
    let mut tasks = Vec::new();
    let workers = 20;
    for w in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::new(addr);
            let mut v = Vec::new();
            for i in (w..n).step_by(workers) {
                let key = format!("device-{i}");
                let r = c.get("/", &[("X-Device-Id", &key)]).await.expect("request");
                assert_eq!(r.status, 200);
                v.push(backend_of(&r));
            }
            v
        }));
    }
    let mut count = HashMap::new();
    for task in tasks {
        for owner in task.await.unwrap() {
            *count.entry(owner).or_default() += 1;
        }
    }
    count
}

fn max_over_mean(count: &HashMap<String, usize>, n: usize) -> f64 {
    let max = *count.values().max().unwrap() as f64;
    max / (n as f64 / count.len() as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_spread_evenly() {
    let b = backends(4).await;
    let t = Tether::start(&config(&b, "{ key: { header: X-Device-Id } }", "", "", ""));
    let count = spread(&t, 10_000).await;
    assert_eq!(count.len(), 4);
    let r = max_over_mean(&count, 10_000);
    assert!(r <= 1.10, "max/mean {r:.3} over {count:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_load_caps_the_busiest_backend() {
    let b = backends(4).await;
    for hash in ["maglev", "ketama", "rendezvous"] {
        let t = Tether::start(&config(
            &b,
            "{ key: { header: X-Device-Id } }",
            &format!("    hash: {hash}\n    bounded_load: 1.05\n"),
            "",
            "",
        ));
        let count = spread(&t, 4_000).await;
        let r = max_over_mean(&count, 4_000);
        // ceil() of the cap may add one session over the factor.
        assert!(
            r <= 1.05 + 4.0 / 4_000.0,
            "{hash}: max/mean {r:.3} over {count:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_query_app_cookie_and_source_ip_keys() {
    let b = backends(4).await;
    let cases: [(&str, &RequestFor); 3] = [
        ("{ key: { header: X-Device-Id } }", &|i| {
            ("/".into(), vec![("X-Device-Id".into(), format!("d{i}"))])
        }),
        ("{ key: { query: device } }", &|i| {
            (format!("/p?x=1&device=d{i}"), vec![])
        }),
        ("{ key: { cookie: { name: JSESSIONID } } }", &|i| {
            (
                "/".into(),
                vec![("Cookie".into(), format!("a=b; JSESSIONID=d{i}"))],
            )
        }),
    ];
    for (affinity, req) in cases {
        let t = Tether::start(&config(&b, affinity, "", "", ""));
        let mut seen = HashSet::new();
        for i in 0..40 {
            let (path, headers) = req(i);
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut owner = None;
            for _ in 0..3 {
                // a new connection each time: the key, not the connection, pins
                let r = Client::new(t.addr("web")).get(&path, &h).await.unwrap();
                assert_eq!(r.status, 200, "{affinity}");
                assert_eq!(
                    r.json()["headers"]["x-tether-session"],
                    format!("d{i}"),
                    "{affinity}"
                );
                let o = backend_of(&r);
                assert!(
                    owner.get_or_insert(o.clone()) == &o,
                    "{affinity}: key d{i} moved"
                );
            }
            seen.insert(owner.unwrap());
            assert!(
                r_has_no_cookie(&t, &path, &h).await,
                "{affinity}: no cookie inserted"
            );
        }
        assert!(
            seen.len() >= 3,
            "{affinity}: keys spread over backends: {seen:?}"
        );
    }
    // source IP: every connection from 127.0.0.1 is one session
    let t = Tether::start(&config(&b, "{ key: source_ip }", "", "", ""));
    let mut owners = HashSet::new();
    for _ in 0..10 {
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        assert_eq!(r.json()["headers"]["x-tether-session"], "127.0.0.1");
        owners.insert(backend_of(&r));
    }
    assert_eq!(owners.len(), 1);
    // masked: the /24 network is the key
    let t = Tether::start(&config(
        &b,
        "{ key: { source_ip: { ipv4_mask: 24, ipv6_mask: 64 } } }",
        "",
        "",
        "",
    ));
    let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
    assert_eq!(r.json()["headers"]["x-tether-session"], "127.0.0.0");
}

async fn r_has_no_cookie(t: &Tether, path: &str, h: &[(&str, &str)]) -> bool {
    let r = Client::new(t.addr("web")).get(path, h).await.unwrap();
    r.headers_named("set-cookie").is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_when_the_key_is_absent() {
    let b = backends(4).await;
    // source_ip: keyed by the client address
    let t = Tether::start(&config(
        &b,
        "{ key: { header: X-Device-Id }, fallback: source_ip }",
        "",
        "",
        "",
    ));
    let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"]["x-tether-session"], "127.0.0.1");
    // reject: 400, nothing reaches a backend
    let before: u64 = b.iter().map(|b| b.stats.requests()).sum();
    let t = Tether::start(&config(
        &b,
        "{ key: { header: X-Device-Id }, fallback: reject }",
        "",
        "",
        "",
    ));
    let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
    assert_eq!(r.status, 400);
    let after: u64 = b.iter().map(|b| b.stats.requests()).sum();
    assert_eq!(before, after);
    let r = Client::new(t.addr("web"))
        .get("/", &[("X-Device-Id", "d1")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // random: spread, nothing recorded, no session header
    let t = Tether::start(&config(
        &b,
        "{ key: { header: X-Device-Id }, fallback: random }",
        "",
        "",
        "",
    ));
    let mut owners = HashSet::new();
    for _ in 0..60 {
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.json()["headers"].get("x-tether-session").is_none());
        owners.insert(backend_of(&r));
    }
    assert!(owners.len() >= 3, "random spreads: {owners:?}");
    let pools = Client::new(t.admin)
        .get("/api/pools", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(pools["pools"][0]["sessions"], 0, "random records nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_tampered_cookies_get_a_fresh_session() {
    let b = backends(4).await;
    let t = Tether::start(&config(&b, COOKIE, "", "", ""));
    let (cookie, _) = cookie_session(t.addr("web"), 2).await;
    let mut tampered = cookie.clone().into_bytes();
    tampered[3] = if tampered[3] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let forged = "A".repeat(73);
    for bad in [tampered.as_str(), forged.as_str(), "127.0.0.1:9001", ""] {
        let r = Client::new(t.addr("web"))
            .get("/", &[("Cookie", &format!("TETHER={bad}"))])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let fresh = r.set_cookie("TETHER").expect("a fresh cookie");
        assert_ne!(fresh, cookie);
        assert_ne!(fresh[..22], cookie[..22], "a new session id");
        assert_eq!(r.json()["headers"]["x-tether-session"], fresh[..22]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_is_resent_after_half_its_max_age() {
    let b = backends(2).await;
    let t = Tether::start(&config(
        &b,
        "{ key: { cookie: { name: TETHER, insert: true, max_age: 4s } } }",
        "",
        "",
        "",
    ));
    let mut c = Client::new(t.addr("web"));
    let first = c.get("/", &[]).await.unwrap();
    let cookie = first.set_cookie("TETHER").unwrap();
    let set = first.header("set-cookie").unwrap().to_string();
    for attr in ["Max-Age=4", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(
        !set.contains("Secure"),
        "no Secure on a plain-HTTP listener"
    );
    let h = format!("TETHER={cookie}");
    let r = c.get("/", &[("Cookie", &h)]).await.unwrap();
    assert!(r.set_cookie("TETHER").is_none());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = c.get("/", &[("Cookie", &h)]).await.unwrap();
    let again = r
        .set_cookie("TETHER")
        .expect("re-sent after half of max_age");
    assert_eq!(again[..22], cookie[..22], "same session id");
    assert_eq!(backend_of(&r), backend_of(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cookies_are_kept_beside_ours() {
    let b = backends(1).await;
    let t = Tether::start(&config(&b, COOKIE, "", "", ""));
    let r = Client::new(t.addr("web"))
        .get("/set-cookie", &[])
        .await
        .unwrap();
    assert!(r.set_cookie("TETHER").is_some());
    assert_eq!(r.set_cookie("app").as_deref(), Some("1"));
}

// --- provisional sessions (inserted cookies that have not come back) --------

/// Lines of the embedded store's journal that record a session.
fn journal_puts(db: &std::path::Path) -> usize {
    let log = format!("{}.log", db.display());
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""op":"put""#))
        .count()
}

async fn admin_session(t: &Tether, id: &str) -> u16 {
    Client::new(t.admin)
        .get(&format!("/api/pools/app/sessions/{id}"), &[])
        .await
        .unwrap()
        .status
}

async fn metric(t: &Tether, series: &str) -> Option<f64> {
    let m = Client::new(t.admin)
        .get("/metrics", &[])
        .await
        .unwrap()
        .text();
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookieless_requests_write_nothing_until_their_cookie_comes_back() {
    let b = backends(2).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("affinity.db");
    let store = format!("store: {{ path: \"{}\" }}", db.display());
    let t = Tether::start(&config(&b, COOKIE, "", "", &store));
    // A health prober: never sends the cookie back.
    let mut first = Vec::new();
    for _ in 0..50 {
        let r = Client::new(t.addr("web")).get("/", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        first.push((r.set_cookie("TETHER").unwrap(), backend_of(&r)));
    }
    // The writer fsyncs within 500 ms: anything recorded would be on disk now.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        journal_puts(&db),
        0,
        "a journal line per cookieless request"
    );
    let gauge = "tether_provisional_sessions{store=\"embedded\"}";
    assert_eq!(metric(&t, gauge).await, Some(50.0));
    // One cookie comes back: same backend, confirmed, on disk.
    let (cookie, owner) = &first[0];
    let r = Client::new(t.addr("web"))
        .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
        .await
        .unwrap();
    assert_eq!(&backend_of(&r), owner);
    assert!(r.set_cookie("TETHER").is_none());
    let start = std::time::Instant::now();
    while journal_puts(&db) < 1 {
        assert!(start.elapsed() < Duration::from_secs(5), "never journaled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(journal_puts(&db), 1);
    assert_eq!(metric(&t, gauge).await, Some(49.0));
    // It survives a crash and restart; the others were never stored.
    drop(t);
    let t = Tether::start(&config(&b, COOKIE, "", "", &store));
    assert_eq!(admin_session(&t, &cookie[..22]).await, 200);
    assert_eq!(admin_session(&t, &first[1].0[..22]).await, 404);
    let r = Client::new(t.addr("web"))
        .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
        .await
        .unwrap();
    assert_eq!(&backend_of(&r), owner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cookieless_requests_evicts_no_returning_session() {
    let b = backends(4).await;
    let t = Tether::start(&config(&b, COOKIE, "", "", "store: { max_sessions: 20 }"));
    let addr = t.addr("web");
    let mut kept = Vec::new();
    for _ in 0..10 {
        kept.push(cookie_session(addr, 3).await);
    }
    let mut flood = Vec::new();
    for _ in 0..4 {
        flood.push(tokio::spawn(async move {
            let mut c = Client::new(addr);
            for _ in 0..100 {
                assert_eq!(c.get("/", &[]).await.unwrap().status, 200);
            }
        }));
    }
    for f in flood {
        f.await.unwrap();
    }
    for (cookie, owner) in &kept {
        assert_eq!(
            admin_session(&t, &cookie[..22]).await,
            200,
            "{cookie} evicted"
        );
        let r = Client::new(addr)
            .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
            .await
            .unwrap();
        assert_eq!(&backend_of(&r), owner);
    }
    let evicted =
        "tether_store_operations_total{op=\"provisional\",result=\"evicted\",store=\"embedded\"}";
    assert!(metric(&t, evicted).await.unwrap_or(0.0) >= 380.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_sessions_expire_but_not_under_an_open_request() {
    let b = backends(2).await;
    let t = Tether::start(&config(
        &b,
        COOKIE,
        "",
        "",
        "store: { provisional_ttl: 1s }",
    ));
    let addr = t.addr("web");
    // A long request without the cookie: its session is pinned while it runs.
    let long =
        tokio::spawn(async move { Client::new(addr).get("/delay/3500", &[]).await.unwrap() });
    for _ in 0..5 {
        Client::new(addr).get("/", &[]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let gauge = "tether_provisional_sessions{store=\"embedded\"}";
    assert_eq!(
        metric(&t, gauge).await,
        Some(1.0),
        "only the open request's session is left"
    );
    let r = long.await.unwrap();
    let cookie = r.set_cookie("TETHER").expect("cookie");
    let back = Client::new(addr)
        .get("/", &[("Cookie", &format!("TETHER={cookie}"))])
        .await
        .unwrap();
    assert_eq!(backend_of(&back), backend_of(&r));
    assert_eq!(admin_session(&t, &cookie[..22]).await, 200, "confirmed");
    let expired =
        "tether_store_operations_total{op=\"provisional\",result=\"expired\",store=\"embedded\"}";
    assert_eq!(metric(&t, expired).await, Some(5.0));
    assert_eq!(metric(&t, gauge).await, Some(0.0));
}
