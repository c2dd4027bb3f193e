//! Provisional sessions in the embedded store: memory only until confirmed,
//! evicted before any confirmed session, expired after `provisional_ttl`
//! unless a connection pins them, confirmed with their live connections.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::tests::config;
use super::MemoryStore;
use crate::store::persist::log_path;
use crate::store::{LiveGuard, Store};

fn open(max: usize, prov_ttl: Duration, path: Option<&Path>) -> Arc<MemoryStore> {
    let mut cfg = config(Duration::from_secs(3600), max, path.map(Path::to_owned));
    cfg.provisional_ttl = prov_ttl;
    MemoryStore::open_without_maintenance(&cfg).expect("open")
}

fn journal_puts(path: &Path) -> usize {
    fs::read_to_string(log_path(path))
        .expect("read log")
        .lines()
        .filter(|l| l.contains(r#""op":"put""#))
        .count()
}

#[tokio::test]
async fn provisional_sessions_reach_the_journal_only_when_confirmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("affinity.db");
    let store = open(1000, Duration::from_secs(120), Some(&path));
    let pool = store.pool("app");
    for i in 0..100 {
        let hit = pool.insert_provisional(&format!("p{i}"), "b1".into());
        assert!(hit.provisional && &*hit.backend == "b1");
    }
    store.flush().await.expect("flush");
    assert_eq!(
        journal_puts(&path),
        0,
        "no journal line for a provisional session"
    );
    assert_eq!(
        (pool.len(), pool.provisional_len(), store.len()),
        (0, 100, 0)
    );
    assert!(pool.lookup("p7").expect("provisional").provisional);
    // The cookie came back: confirmed, journaled, counted.
    let hit = pool.confirm("p7").await.expect("confirm").expect("known");
    assert!(!hit.provisional);
    assert!(pool.confirm("nobody").await.expect("confirm").is_none());
    store.flush().await.expect("flush");
    assert_eq!(journal_puts(&path), 1);
    assert_eq!((pool.len(), pool.provisional_len()), (1, 99));
    assert_eq!(
        pool.sessions_of("b1"),
        1,
        "counts hold confirmed sessions only"
    );
    let st = store.stats().provisional;
    assert_eq!((st.created, st.confirmed, st.sessions), (100, 1, 99));
    drop(pool);
    drop(store);
    let store = open(1000, Duration::from_secs(120), Some(&path));
    let pool = store.pool("app");
    assert!(!pool.lookup("p7").expect("survives a restart").provisional);
    assert!(pool.lookup("p8").is_none(), "provisional sessions do not");
}

#[tokio::test]
async fn a_flood_of_provisional_sessions_evicts_no_confirmed_one() {
    let store = open(20, Duration::from_secs(120), None);
    let pool = store.pool("app");
    for i in 0..10 {
        pool.insert_if_absent(&format!("c{i}"), "b1".into())
            .await
            .expect("insert");
    }
    for i in 0..1000 {
        pool.insert_provisional(&format!("p{i}"), "b2".into());
    }
    for i in 0..10 {
        assert!(pool.lookup(&format!("c{i}")).is_some(), "c{i} evicted");
    }
    assert_eq!((pool.len(), pool.provisional_len()), (10, 10));
    assert!(
        pool.lookup("p999").is_some(),
        "the newest provisional ones stay"
    );
    assert_eq!(
        (store.evictions(), store.stats().provisional.evicted),
        (0, 990)
    );
    // A new confirmed session evicts a provisional one first, the oldest.
    pool.insert_if_absent("c10", "b1".into())
        .await
        .expect("insert");
    assert_eq!(
        (pool.len(), pool.provisional_len(), store.evictions()),
        (11, 9, 0)
    );
    assert!(pool.lookup("p990").is_none() && pool.lookup("p991").is_some());
}

#[tokio::test]
async fn provisional_sessions_expire_unless_a_connection_pins_them() {
    let store = open(100, Duration::from_millis(100), None);
    let pool = store.pool("app");
    pool.insert_provisional("idle", "b1".into());
    // A WebSocket that got the cookie on its 101 and never sends it again.
    let pinned = pool.insert_provisional("ws", "b1".into());
    let guard = LiveGuard::new(pinned.meta);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(110)).await;
        store.upkeep();
    }
    assert!(
        pool.lookup("idle").is_none(),
        "expired after provisional_ttl"
    );
    assert!(
        pool.lookup("ws").is_some(),
        "pinned for as long as it is open"
    );
    drop(guard);
    tokio::time::sleep(Duration::from_millis(110)).await;
    store.upkeep();
    tokio::time::sleep(Duration::from_millis(110)).await;
    store.upkeep();
    assert!(
        pool.lookup("ws").is_none(),
        "gone within two periods of closing"
    );
    assert_eq!(store.stats().provisional.expired, 2);
}

#[tokio::test]
async fn confirming_keeps_the_live_connections_of_the_session() {
    let store = open(100, Duration::from_secs(120), None);
    let pool = store.pool("app");
    let first = pool.insert_provisional("k", "b1".into());
    let _guard = LiveGuard::new(first.meta.clone());
    let hit = pool.confirm("k").await.expect("confirm").expect("known");
    assert!(Arc::ptr_eq(&hit.meta, &first.meta));
    assert_eq!(hit.meta.live(), 1, "the open connection still pins it");
    assert_eq!((pool.len(), pool.provisional_len()), (1, 0));
    // Confirmed twice (two requests raced): the same session.
    let again = pool.confirm("k").await.expect("confirm").expect("known");
    assert!(Arc::ptr_eq(&again.meta, &first.meta));
    assert!(pool.delete("k").await.expect("delete"));
    assert!(pool.lookup("k").is_none());
    pool.insert_provisional("p", "b1".into());
    assert!(
        pool.delete("p").await.expect("delete"),
        "deletes reach provisional ones"
    );
    assert_eq!(pool.provisional_len(), 0);
}
