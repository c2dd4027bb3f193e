//! Tests of how long sessions live: idle expiry, the maintenance task, and LRU
//! eviction under `max_sessions`, all with live sessions exempt.

use std::sync::Arc;
use std::time::Duration;

use super::tests::{config, quiet};
use super::MemoryStore;
use crate::store::{LiveGuard, Store};

#[tokio::test]
async fn idle_sessions_expire_live_ones_never() {
    let store = quiet(Duration::from_millis(200), 100);
    let pool = store.pool("app");
    pool.insert_if_absent("idle", "a".into())
        .await
        .expect("insert");
    let busy = pool
        .insert_if_absent("busy", "a".into())
        .await
        .expect("insert");
    let guard = LiveGuard::new(busy.meta);
    assert_eq!(store.shared.sweep(), 0, "nothing is old yet");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.shared.sweep(), 1);
    assert!(pool.lookup("idle").is_none());
    assert!(pool.lookup("busy").is_some());
    assert_eq!((pool.sessions_of("a"), store.expirations()), (1, 1));
    // Once the connection ends the session is idle from then on, not from its last request.
    drop(guard);
    assert_eq!(store.shared.sweep(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.shared.sweep(), 1);
    assert_eq!(
        (pool.len(), pool.sessions_of("a"), store.expirations()),
        (0, 0, 2)
    );
}

#[tokio::test]
async fn lookups_keep_sessions_alive() {
    let store = quiet(Duration::from_millis(400), 100);
    let pool = store.pool("app");
    pool.insert_if_absent("k", "a".into())
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(250)).await;
    store.refresh_clock();
    assert!(pool.lookup("k").is_some());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(store.shared.sweep(), 0, "seen 250 ms ago");
    assert_eq!(pool.len(), 1);
}

#[tokio::test]
async fn maintenance_task_expires_and_stops_with_the_store() {
    let store = MemoryStore::open(&config(Duration::from_millis(200), 100, None)).expect("open");
    let pool = store.pool("app");
    pool.insert_if_absent("k", "a".into())
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!((pool.len(), store.expirations()), (0, 1));
    let weak = Arc::downgrade(&store.shared);
    drop((pool, store));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        weak.upgrade().is_none(),
        "the task must not keep the store alive"
    );
}

#[tokio::test]
async fn eviction_drops_least_recently_used_first() {
    let store = quiet(Duration::from_secs(60), 10);
    let pool = store.pool("app");
    for i in 0..10 {
        pool.insert_if_absent(&format!("k{i}"), "a".into())
            .await
            .expect("insert");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.refresh_clock();
    for i in 0..5 {
        assert!(pool.lookup(&format!("k{i}")).is_some());
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 10..15 {
        pool.insert_if_absent(&format!("k{i}"), "b".into())
            .await
            .expect("insert");
    }
    assert_eq!((store.len(), store.evictions()), (10, 5));
    for i in 0..15 {
        let kept = pool.lookup(&format!("k{i}")).is_some();
        assert_eq!(kept, !(5..10).contains(&i), "k{i}");
    }
    assert_eq!((pool.sessions_of("a"), pool.sessions_of("b")), (5, 5));
}

#[tokio::test]
async fn eviction_spares_live_sessions() {
    let store = quiet(Duration::from_secs(60), 200);
    let pool = store.pool("app");
    let mut guards = Vec::new();
    for i in 0..200 {
        let hit = pool
            .insert_if_absent(&format!("k{i}"), "a".into())
            .await
            .expect("insert");
        if i < 10 {
            guards.push(LiveGuard::new(hit.meta)); // the oldest ten are busy
        }
        if i < 12 {
            // Distinct timestamps for the oldest, so "least recent" is well defined.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // One overflow evicts one session: the least recent idle one.
    pool.insert_if_absent("new", "a".into())
        .await
        .expect("insert");
    assert_eq!((store.len(), store.evictions()), (200, 1));
    for i in 0..10 {
        assert!(pool.lookup(&format!("k{i}")).is_some(), "busy k{i} evicted");
    }
    assert!(pool.lookup("k10").is_none() && pool.lookup("k11").is_some());
    // Nothing idle left: the bound gives way rather than dropping a live session.
    let store = quiet(Duration::from_secs(60), 3);
    let pool = store.pool("app");
    for i in 0..5 {
        let hit = pool
            .insert_if_absent(&format!("k{i}"), "a".into())
            .await
            .expect("insert");
        guards.push(LiveGuard::new(hit.meta));
    }
    assert_eq!(
        (store.len(), store.evictions(), pool.sessions_of("a")),
        (5, 0, 5)
    );
}
