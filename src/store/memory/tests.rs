//! Tests of the in-memory behaviour: races, compare-and-set, counts, pools.
//! Expiry and eviction are tested in `lifetime_tests.rs`, provisional sessions
//! in `provisional_tests.rs`, persistence in `persist/tests.rs`; they use the
//! helpers here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::MemoryStore;
use crate::config::{Store as StoreConfig, StoreKind};
use crate::store::{now_ms, LiveGuard, MoveReason, PoolStore, Session, Store};

pub(crate) fn config(ttl: Duration, max_sessions: usize, path: Option<PathBuf>) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Embedded { path },
        session_ttl: ttl,
        provisional_ttl: Duration::from_secs(120),
        max_sessions,
    }
}

impl MemoryStore {
    /// What the maintenance task's next tick would do to the clock hits stamp.
    pub(crate) fn refresh_clock(&self) {
        self.shared.clock.store(now_ms(), Relaxed);
    }

    /// Journal lines waiting for the writer thread.
    pub(crate) fn journal_queued(&self) -> usize {
        self.shared.journal.as_ref().map_or(0, |j| j.queued())
    }

    /// What the maintenance task does on a tick with work to do, now.
    pub(crate) fn upkeep(&self) {
        self.shared.upkeep(now_ms());
    }
}

/// A memory-only store whose sweeps and clock the test drives itself.
pub(super) fn quiet(ttl: Duration, max_sessions: usize) -> Arc<MemoryStore> {
    MemoryStore::open_without_maintenance(&config(ttl, max_sessions, None)).expect("open")
}

fn moved(backend: &str, from: &str, reason: MoveReason) -> Session {
    Session {
        moved_from: Some(from.into()),
        move_reason: Some(reason),
        ..Session::new(backend.into())
    }
}

/// Counts per backend recomputed from the records, to check `sessions_of` against.
async fn recount(pool: &dyn PoolStore, keys: &[String]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for key in keys {
        if let Some(s) = pool.get(key).await.expect("get") {
            *counts.entry(s.backend.to_string()).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn insert_race_has_one_winner() {
    let store = quiet(Duration::from_secs(60), 1000);
    for round in 0..20 {
        let key = format!("k{round}");
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let pool = store.pool("app");
                let key = key.clone();
                tokio::spawn(async move {
                    let backend: Arc<str> = format!("b{round}-{i}").into();
                    pool.insert_if_absent(&key, backend)
                        .await
                        .expect("insert")
                        .backend
                })
            })
            .collect();
        let mut owners = Vec::new();
        for t in tasks {
            owners.push(t.await.expect("task"));
        }
        assert!(
            owners.iter().all(|o| *o == owners[0]),
            "round {round}: {owners:?}"
        );
        let pool = store.pool("app");
        assert_eq!(pool.sessions_of(&owners[0]), 1);
    }
    let pool = store.pool("app");
    assert_eq!(pool.len(), 20);
    assert_eq!(store.len(), 20);
    let total: u64 = (0..20)
        .flat_map(|round| (0..32).map(move |i| format!("b{round}-{i}")))
        .map(|b| pool.sessions_of(&b))
        .sum();
    assert_eq!(total, 20);
}

#[tokio::test]
async fn compare_and_set_only_from_expected_owner() {
    let store = quiet(Duration::from_secs(60), 100);
    let pool = store.pool("app");
    let first = pool
        .insert_if_absent("k", "a".into())
        .await
        .expect("insert");
    assert_eq!(&*first.backend, "a");
    assert!(first.moved.is_none());
    let _guard = LiveGuard::new(first.meta.clone());

    assert!(!pool
        .compare_and_set("k", "b", Session::new("c".into()))
        .await
        .expect("cas"));
    assert!(!pool
        .compare_and_set("nope", "a", Session::new("c".into()))
        .await
        .expect("cas"));
    assert_eq!(&*pool.lookup("k").expect("hit").backend, "a");

    assert!(pool
        .compare_and_set("k", "a", moved("b", "a", MoveReason::Down))
        .await
        .expect("cas"));
    let hit = pool.lookup("k").expect("hit");
    assert_eq!(&*hit.backend, "b");
    assert_eq!(hit.moved, Some(("a".into(), MoveReason::Down)));
    // Same entry: the live counter followed the key to its new owner.
    assert!(Arc::ptr_eq(&hit.meta, &first.meta));
    assert_eq!(hit.meta.live(), 1);
    assert_eq!((pool.sessions_of("a"), pool.sessions_of("b")), (0, 1));
    // The loser of a second racing CAS from the old owner changes nothing.
    assert!(!pool
        .compare_and_set("k", "a", Session::new("c".into()))
        .await
        .expect("cas"));
    assert_eq!(
        pool.get("k")
            .await
            .expect("get")
            .expect("some")
            .backend
            .as_ref(),
        "b"
    );
    // insert_if_absent on a known key returns the current owner.
    let again = pool
        .insert_if_absent("k", "z".into())
        .await
        .expect("insert");
    assert_eq!(&*again.backend, "b");
    assert_eq!(pool.sessions_of("z"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn take_moved_is_true_exactly_once() {
    let store = quiet(Duration::from_secs(60), 100);
    let pool = store.pool("app");
    for round in 0..20 {
        let key = format!("k{round}");
        pool.insert_if_absent(&key, "a".into())
            .await
            .expect("insert");
        assert!(
            !pool.take_moved(&key, "a").await.expect("take"),
            "nothing moved yet"
        );
        let new = moved("b", "a", MoveReason::Drain);
        assert!(pool.compare_and_set(&key, "a", new).await.expect("cas"));
        assert!(
            !pool.take_moved(&key, "a").await.expect("take"),
            "wrong owner"
        );
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let pool = store.pool("app");
                let key = key.clone();
                tokio::spawn(async move { pool.take_moved(&key, "b").await.expect("take") })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.expect("task"));
        }
        assert_eq!(won, 1, "round {round}");
        let hit = pool.lookup(&key).expect("hit");
        assert!(hit.moved.is_none());
        assert_eq!(&*hit.backend, "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_stay_exact_under_concurrent_changes() {
    let store = quiet(Duration::from_secs(60), 10_000);
    let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let pool = store.pool("app");
            let keys = keys.clone();
            tokio::spawn(async move {
                for (i, key) in keys.iter().enumerate() {
                    let b: Arc<str> = format!("b{}", (i + t) % 3).into();
                    let owner = pool.insert_if_absent(key, b).await.expect("insert").backend;
                    match (i + t) % 4 {
                        0 => {
                            pool.delete(key).await.expect("delete");
                        }
                        1 => {
                            let next = format!("b{}", (i + t + 1) % 3);
                            pool.compare_and_set(key, &owner, Session::new(next.into()))
                                .await
                                .expect("cas");
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let pool = store.pool("app");
    let expected = recount(&*pool, &keys).await;
    for b in ["b0", "b1", "b2"] {
        assert_eq!(
            pool.sessions_of(b),
            expected.get(b).copied().unwrap_or(0),
            "{b}"
        );
    }
    assert_eq!(expected.values().sum::<u64>() as usize, pool.len());
    assert_eq!(pool.len(), store.len());
}

#[tokio::test]
async fn pools_are_separate_and_shared_by_name() {
    let store = quiet(Duration::from_secs(60), 100);
    let (app, api) = (store.pool("app"), store.pool("api"));
    app.insert_if_absent("k", "a".into()).await.expect("insert");
    assert!(api.lookup("k").is_none());
    assert_eq!(&*store.pool("app").lookup("k").expect("hit").backend, "a");
    assert!(store.pool("app").delete("k").await.expect("delete"));
    assert!(!app.delete("k").await.expect("delete"));
    assert_eq!(
        (app.sessions_of("a"), store.len(), store.kind()),
        (0, 0, "embedded")
    );
    let secret = store.cookie_secret().await.expect("secret");
    assert_eq!(secret.len(), 32);
    assert_eq!(secret, store.cookie_secret().await.expect("secret"));
    store.flush().await.expect("flush without a path");
}
