//! Tests of the store files: reopen, crash, torn and corrupt lines, compaction.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::log_path;
use crate::store::memory::tests::config;
use crate::store::{MemoryStore, MoveReason, Session, Store, StoreError};

const TTL: Duration = Duration::from_secs(3600);

fn open(path: &Path) -> Result<Arc<MemoryStore>, StoreError> {
    MemoryStore::open(&config(TTL, 100_000, Some(path.to_owned())))
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    // A missing parent directory is created by open.
    dir.path().join("data").join("affinity.db")
}

/// `n` sessions over two pools; every 7th moved, every 10th deleted again.
async fn fill(store: &MemoryStore, n: usize) {
    for i in 0..n {
        let pool = store.pool(if i % 2 == 0 { "app" } else { "api" });
        let key = format!("key-{i}");
        let owner = format!("b{}", i % 3);
        pool.insert_if_absent(&key, owner.as_str().into())
            .await
            .expect("insert");
        if i % 7 == 0 {
            let new = Session {
                moved_from: Some(owner.as_str().into()),
                move_reason: Some(MoveReason::Removed),
                ..Session::new("b9".into())
            };
            assert!(pool.compare_and_set(&key, &owner, new).await.expect("cas"));
        }
        if i % 10 == 0 {
            assert!(pool.delete(&key).await.expect("delete"));
        }
    }
}

/// Check `store` holds exactly what [`fill`] left.
async fn check(store: &MemoryStore, n: usize) {
    let (app, api) = (store.pool("app"), store.pool("api"));
    for i in 0..n {
        let pool = if i % 2 == 0 { &app } else { &api };
        let got = pool.get(&format!("key-{i}")).await.expect("get");
        match got {
            None => assert!(i % 10 == 0, "key-{i} lost"),
            Some(s) => {
                assert!(i % 10 != 0, "key-{i} came back");
                let owner = if i % 7 == 0 {
                    "b9".to_string()
                } else {
                    format!("b{}", i % 3)
                };
                assert_eq!(*s.backend, *owner, "key-{i}");
                let reason = (i % 7 == 0).then_some(MoveReason::Removed);
                assert_eq!(s.move_reason, reason, "key-{i}");
            }
        }
    }
    let live = (0..n).filter(|i| i % 10 != 0).count();
    assert_eq!(app.len() + api.len(), live);
    let b9 = (0..n).filter(|i| i % 10 != 0 && i % 7 == 0).count() as u64;
    assert_eq!(app.sessions_of("b9") + api.sessions_of("b9"), b9);
}

fn log_lines(path: &Path) -> usize {
    fs::read_to_string(log_path(path))
        .expect("read log")
        .lines()
        .count()
}

#[tokio::test]
async fn reopen_keeps_sessions_owners_and_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open(&path).expect("open");
    fill(&store, 1000).await;
    let secret = store.cookie_secret().await.expect("secret");
    store.flush().await.expect("flush");
    drop(store);
    let store = open(&path).expect("reopen");
    check(&store, 1000).await;
    assert_eq!(store.cookie_secret().await.expect("secret"), secret);
    // Reopen compacted: everything is in the snapshot, the log is just its header.
    assert_eq!(log_lines(&path), 1);
}

#[tokio::test]
async fn crash_loses_at_most_the_last_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open(&path).expect("open");
    fill(&store, 500).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // What a kill -9 now would leave: the files as they are, no flush, no clean close.
    let crashed = dir.path().join("crashed.db");
    fs::copy(&path, &crashed).expect("copy snapshot");
    fs::copy(log_path(&path), log_path(&crashed)).expect("copy log");
    let secret = store.cookie_secret().await.expect("secret");
    let recovered = open(&crashed).expect("open crashed copy");
    check(&recovered, 500).await;
    assert_eq!(recovered.cookie_secret().await.expect("secret"), secret);
}

#[tokio::test]
async fn torn_last_line_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open(&path).expect("open");
    fill(&store, 100).await;
    store.flush().await.expect("flush");
    // Copy before the store closes, so the log is not compacted away by a reopen.
    let log = fs::read(log_path(&path)).expect("read log");
    drop(store);
    let mut torn = log.clone();
    torn.extend_from_slice(br#"{"op":"put","pool":"app","key":"half","sess"#);
    fs::write(log_path(&path), &torn).expect("write");
    let store = open(&path).expect("torn tail must be tolerated");
    check(&store, 100).await;
    assert!(store.pool("app").lookup("half").is_none());
}

#[tokio::test]
async fn garbage_inside_the_log_is_corrupt_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open(&path).expect("open");
    fill(&store, 20).await;
    store.flush().await.expect("flush");
    let mut log = fs::read(log_path(&path)).expect("read log");
    drop(store);
    let garbage_line = log.iter().filter(|&&b| b == b'\n').count() + 1;
    log.extend_from_slice(b"not json at all\n");
    log.extend_from_slice(br#"{"op":"del","pool":"app","key":"key-2"}"#);
    log.push(b'\n');
    fs::write(log_path(&path), &log).expect("write");
    match open(&path) {
        Err(StoreError::Corrupt { path: p, line, .. }) => {
            assert_eq!(line, garbage_line);
            assert!(p.ends_with("affinity.db.log"), "{p}");
        }
        other => panic!("want Corrupt, got {:?}", other.map(|_| ())),
    }
    // The snapshot is never torn: a bad last line there is corruption too.
    fs::remove_file(log_path(&path)).expect("rm log");
    let mut snap = fs::read(&path).expect("read snapshot");
    snap.extend_from_slice(b"{\"op\":");
    fs::write(&path, &snap).expect("write");
    assert!(matches!(open(&path), Err(StoreError::Corrupt { .. })));
}

#[tokio::test]
async fn compaction_preserves_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open(&path).expect("open");
    fill(&store, 300).await;
    store.flush().await.expect("flush");
    assert!(log_lines(&path) > 300);
    store.compact().await.expect("compact");
    assert_eq!(log_lines(&path), 1);
    // Changes after a compaction land in the new log.
    let pool = store.pool("web");
    pool.insert_if_absent("late", "b1".into())
        .await
        .expect("insert");
    store.flush().await.expect("flush");
    assert_eq!(log_lines(&path), 2);
    drop((pool, store));
    let store = open(&path).expect("reopen");
    check(&store, 300).await;
    assert_eq!(
        &*store.pool("web").lookup("late").expect("late").backend,
        "b1"
    );
}

#[tokio::test]
async fn log_compacts_itself_past_twice_the_live_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open(&path).expect("open");
    let pool = store.pool("app");
    for i in 0..100 {
        pool.insert_if_absent(&format!("k{i}"), "a".into())
            .await
            .expect("insert");
    }
    // 12k re-pins of 100 sessions: far past the trigger.
    for round in 0..120 {
        let (from, to) = if round % 2 == 0 {
            ("a", "b")
        } else {
            ("b", "a")
        };
        for i in 0..100 {
            let key = format!("k{i}");
            assert!(pool
                .compare_and_set(&key, from, Session::new(to.into()))
                .await
                .expect("cas"));
        }
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        log_lines(&path) < 1000,
        "log has {} lines",
        log_lines(&path)
    );
    drop((pool, store));
    let store = open(&path).expect("reopen");
    assert_eq!(
        (store.len(), store.pool("app").sessions_of("a")),
        (100, 100)
    );
}

#[tokio::test]
async fn stale_log_after_crash_mid_compaction_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let store = open(&path).expect("open");
    let pool = store.pool("app");
    pool.insert_if_absent("k", "a".into())
        .await
        .expect("insert");
    store.flush().await.expect("flush");
    let old_log = fs::read(log_path(&path)).expect("read log");
    assert!(pool
        .compare_and_set("k", "a", Session::new("b".into()))
        .await
        .expect("cas"));
    store.compact().await.expect("compact");
    // Crash between the snapshot rename and the log rename: the old log is back.
    fs::write(log_path(&path), &old_log).expect("write");
    let crashed = dir.path().join("crashed.db");
    fs::copy(&path, &crashed).expect("copy");
    fs::copy(log_path(&path), log_path(&crashed)).expect("copy");
    let store = open(&crashed).expect("open");
    assert_eq!(&*store.pool("app").lookup("k").expect("hit").backend, "b");
}

#[tokio::test]
async fn expiry_applies_across_restarts_and_last_seen_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let cfg = config(Duration::from_millis(1000), 100, Some(path.clone()));
    let store = MemoryStore::open(&cfg).expect("open");
    let pool = store.pool("app");
    pool.insert_if_absent("used", "a".into())
        .await
        .expect("insert");
    pool.insert_if_absent("unused", "a".into())
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(600)).await;
    store.refresh_clock();
    assert!(pool.lookup("used").is_some());
    store.flush().await.expect("flush");
    drop((pool, store));
    tokio::time::sleep(Duration::from_millis(600)).await;
    // 1.2 s after insert, 0.6 s after the last hit: only "used" is within the ttl.
    let store = MemoryStore::open(&cfg).expect("reopen");
    let pool = store.pool("app");
    assert!(pool.lookup("used").is_some());
    assert!(pool.lookup("unused").is_none());
    assert_eq!((store.len(), pool.sessions_of("a")), (1, 1));
}

#[tokio::test]
async fn predecessor_stops_writing_after_a_successor_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db(&dir);
    let old = open(&path).expect("open");
    fill(&old, 100).await;
    old.flush().await.expect("flush");
    // `tether --upgrade`: the successor opens the same files while the old one drains.
    let new = open(&path).expect("successor");
    check(&new, 100).await;
    let pool = new.pool("web");
    pool.insert_if_absent("after-upgrade", "b1".into())
        .await
        .expect("insert");
    new.flush().await.expect("flush");
    // The old process keeps changing its memory, compacts and closes: none of it
    // may replace the successor's files.
    old.pool("web")
        .insert_if_absent("stale", "b2".into())
        .await
        .expect("insert");
    old.compact().await.expect("retired compaction is a no-op");
    old.flush().await.expect("flush");
    drop(old);
    drop((pool, new));
    let store = open(&path).expect("reopen");
    check(&store, 100).await;
    let pool = store.pool("web");
    assert!(pool.lookup("after-upgrade").is_some());
    assert!(pool.lookup("stale").is_none());
}
