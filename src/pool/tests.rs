//! Routing of inserted cookies: a new cookie's session is provisional and
//! placed by the hash alone, the cookie's return confirms it, and a connection
//! holding its `LiveGuard` keeps it past `provisional_ttl`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Decision, PoolRt};
use crate::config;
use crate::metrics::Metrics;
use crate::store::{MemoryStore, Store};

/// Pool `app` over four backends (no health checks: all up), on its own store.
fn pool(pool_extra: &str, provisional_ttl: &str) -> Arc<PoolRt> {
    let backends: String = (0..4)
        .map(|i| format!("      - {{ id: b{i}, addr: \"127.0.0.1:{}\" }}\n", 9000 + i))
        .collect();
    let text = format!(
        "store: {{ provisional_ttl: {provisional_ttl} }}\n\
         pools:\n  app:\n{pool_extra}    backends:\n{backends}\
         listeners:\n  - {{ name: web, bind: \"127.0.0.1:1\", pool: app, affinity: {{ key: {{ cookie: {{ name: T, insert: true }} }} }} }}\n"
    );
    let snap = config::parse(Path::new("test.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let store = MemoryStore::open(&snap.store).expect("open");
    Arc::new(PoolRt::new(
        snap.pools[0].clone(),
        store.pool("app"),
        Arc::new(Metrics::new()),
    ))
}

fn backend(d: &Decision) -> Arc<str> {
    match d {
        Decision::Backend { backend, .. } => backend.id.clone(),
        Decision::NoBackend => panic!("no backend"),
    }
}

#[tokio::test]
async fn new_cookies_are_placed_by_the_hash_alone_and_confirmed_on_return() {
    // Bounded load would steer new sessions off b0, which holds every session
    // here; a new cookie must not depend on this instance's counts.
    let busy = pool("    bounded_load: 1.05\n", "2m");
    for i in 0..200 {
        let key = format!("device-{i}");
        busy.store
            .insert_if_absent(&key, "b0".into())
            .await
            .expect("insert");
    }
    let fresh = pool("    bounded_load: 1.05\n", "2m");
    for i in 0..100 {
        let id = format!("cookie-id-{i:012}");
        let d = busy.route_new_cookie(&id);
        assert_eq!(backend(&d), backend(&fresh.route_new_cookie(&id)), "{id}");
        assert!(busy.store.lookup(&id).expect("recorded").provisional);
    }
    let before = busy.store.len();
    let id = "cookie-id-000000000007";
    let owner = backend(&busy.route_new_cookie(id));
    // The cookie comes back: same backend, now a confirmed session.
    let d = busy.route_cookie(id).await.expect("route");
    assert_eq!(backend(&d), owner);
    assert!(!busy.store.lookup(id).expect("kept").provisional);
    assert_eq!(busy.store.len(), before + 1);
    // It comes back to an instance that never saw it: the same pick, confirmed.
    let d = fresh
        .route_cookie("cookie-id-000000000042")
        .await
        .expect("route");
    assert_eq!(
        backend(&d),
        backend(&busy.route_new_cookie("cookie-id-000000000042"))
    );
    assert!(
        !fresh
            .store
            .lookup("cookie-id-000000000042")
            .expect("kept")
            .provisional
    );
}

#[tokio::test]
async fn a_connection_holding_the_guard_keeps_its_provisional_session() {
    let p = pool("", "200ms");
    // The upgrade request that got the Set-Cookie keeps its decision (and
    // guard) for the life of the tunnel.
    let tunnel = p.route_new_cookie("websocket-client");
    drop(p.route_new_cookie("prober"));
    assert!(matches!(&tunnel, Decision::Backend { live: Some(_), .. }));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        p.store.lookup("prober").is_none(),
        "expired after provisional_ttl"
    );
    assert!(
        p.store.lookup("websocket-client").is_some(),
        "kept while its connection is open"
    );
    drop(tunnel);
    let closed = Instant::now();
    while p.store.lookup("websocket-client").is_some() {
        assert!(
            closed.elapsed() < Duration::from_secs(3),
            "never expired after closing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        closed.elapsed() >= Duration::from_millis(100),
        "kept a while after closing"
    );
}
