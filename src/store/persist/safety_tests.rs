//! Tests of what the store files promise beyond their content: private modes,
//! temporary files nothing planted can redirect, a journal queue that stays
//! bounded behind a stalled writer, and compactions that never hold requests.
//!
//! A stalled disk is played by a [`Valve`] the real writer thread waits at
//! (see `Stall`): closed, the thread stops there exactly as if a write hung.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{files, log_path, Stall};
use crate::store::memory::tests::config;
use crate::store::{MemoryStore, PoolStore, Store};

const TTL: Duration = Duration::from_secs(3600);

/// A gate the writer thread passes at its pause points; closed, it waits.
#[derive(Default)]
pub(crate) struct Valve {
    closed: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicUsize,
}

impl Valve {
    fn closed() -> Arc<Valve> {
        let v = Arc::new(Valve::default());
        *v.closed.lock().unwrap() = true;
        v
    }

    pub(crate) fn pass(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if !*closed {
            return;
        }
        self.waiting.fetch_add(1, SeqCst);
        while *closed {
            closed = self.opened.wait(closed).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.fetch_sub(1, SeqCst);
    }

    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }

    /// Wait until the writer is held at the valve.
    fn wait_for_writer(&self) {
        let start = Instant::now();
        while self.waiting.load(SeqCst) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "writer never reached the valve"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Opens the valve when dropped: a failed assertion must not leave the writer
/// (and the store's drop, which joins it) waiting forever.
struct OpenOnDrop(Arc<Valve>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777
}

fn open(path: &Path) -> Arc<MemoryStore> {
    MemoryStore::open(&config(TTL, 100_000, Some(path.to_owned()))).expect("open")
}

fn open_stalled(path: &Path, journal_max: usize, stall: Stall) -> Arc<MemoryStore> {
    MemoryStore::open_with(
        &config(TTL, 100_000, Some(path.to_owned())),
        journal_max,
        stall,
    )
    .expect("open")
}

async fn insert(store: &MemoryStore, keys: std::ops::Range<usize>) {
    let pool = store.pool("app");
    for i in keys {
        pool.insert_if_absent(&format!("k{i}"), "b1".into())
            .await
            .expect("insert");
    }
}

async fn has_all(store: &MemoryStore, n: usize) {
    let pool = store.pool("app");
    for i in 0..n {
        assert!(
            pool.get(&format!("k{i}")).await.expect("get").is_some(),
            "k{i} lost"
        );
    }
    assert_eq!(pool.len(), n);
}

#[tokio::test]
async fn directory_and_files_are_private_whatever_the_umask() {
    // The usual umask, under which the files used to be world-readable.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state").join("data").join("affinity.db");
    let store = open(&path);
    insert(&store, 0..10).await;
    store.compact().await.expect("compact");
    store.flush().await.expect("flush");
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&dir.path().join("state/data")), 0o700);
    assert_eq!(mode(&path), 0o600, "the snapshot holds the cookie secret");
    assert_eq!(mode(&log_path(&path)), 0o600);
    drop(store);
    // Files left readable by an older version are replaced by private ones.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::set_permissions(log_path(&path), fs::Permissions::from_mode(0o644)).expect("chmod");
    let store = open(&path);
    has_all(&store, 10).await;
    assert_eq!((mode(&path), mode(&log_path(&path))), (0o600, 0o600));
    // A directory the operator made is left as it is.
    let own = dir.path().join("own");
    fs::create_dir(&own).expect("mkdir");
    fs::set_permissions(&own, fs::Permissions::from_mode(0o750)).expect("chmod");
    drop(open(&own.join("affinity.db")));
    assert_eq!(mode(&own), 0o750);
}

#[tokio::test]
async fn symlinks_planted_at_temporary_names_are_never_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious").expect("write");
    let path = dir.path().join("affinity.db");
    // The names the writer used to write through, and a stale-looking random one.
    for name in [
        "affinity.db.tmp",
        "affinity.db.log.tmp",
        "affinity.db.tmp-0123456789abcdef",
    ] {
        symlink(&victim, dir.path().join(name)).expect("symlink");
    }
    let store = open(&path);
    insert(&store, 0..50).await;
    store.compact().await.expect("compact");
    store.flush().await.expect("flush");
    drop(store);
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
    has_all(&open(&path), 50).await;
    // The temporary-file opener itself refuses what exists, link or not.
    let link = dir.path().join("link");
    symlink(&victim, &link).expect("symlink");
    assert!(files::create_new(&link).is_err());
    let dangling = dir.path().join("dangling");
    symlink(dir.path().join("nowhere"), &dangling).expect("symlink");
    assert!(files::create_new(&dangling).is_err());
    assert!(
        !dir.path().join("nowhere").exists(),
        "not created through the link"
    );
    assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
    // A crash's leftover of ours is removed at open; a link only unlinked.
    assert!(fs::symlink_metadata(dir.path().join("affinity.db.tmp-0123456789abcdef")).is_err());
    assert!(victim.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_drops_and_counts_lines_and_a_compaction_restores_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("affinity.db");
    let valve = Valve::closed();
    let stall = Stall {
        before_message: Some(valve.clone()),
        ..Stall::default()
    };
    let store = open_stalled(&path, 50, stall);
    let _open = OpenOnDrop(valve.clone());
    insert(&store, 0..1000).await;
    valve.wait_for_writer();
    // The queue stayed bounded; what did not fit was counted, not kept.
    assert!(
        store.journal_queued() <= 50,
        "{} queued",
        store.journal_queued()
    );
    let dropped = store.stats().journal_dropped;
    assert!(dropped >= 950, "dropped {dropped}");
    // Requests never waited for the stalled writer: all 1000 are in memory.
    assert_eq!(store.len(), 1000);
    valve.open();
    store
        .flush()
        .await
        .expect("flush compacts what was dropped");
    drop(store);
    has_all(&open(&path), 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_do_not_wait_for_a_compaction_writing_to_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("affinity.db");
    let valve = Valve::closed();
    let stall = Stall {
        in_snapshot: Some(valve.clone()),
        ..Stall::default()
    };
    let store = open_stalled(&path, 100_000, stall);
    let _open = OpenOnDrop(valve.clone());
    insert(&store, 0..2000).await;
    let compaction = tokio::spawn({
        let store = store.clone();
        async move { store.compact().await }
    });
    // The writer is now in the middle of the snapshot, its disk "hung".
    valve.wait_for_writer();
    let (tx, rx) = std::sync::mpsc::channel();
    let pool: Arc<dyn PoolStore> = store.pool("app");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for i in 0..2000 {
                assert!(pool.lookup(&format!("k{i}")).is_some());
            }
            for i in 2000..2500 {
                let key = format!("k{i}");
                pool.insert_if_absent(&key, "b2".into())
                    .await
                    .expect("insert");
            }
        });
        let _ = tx.send(());
    });
    let done = rx.recv_timeout(Duration::from_secs(5));
    valve.open();
    assert!(
        done.is_ok(),
        "lookups and inserts waited for the compaction's disk writes"
    );
    compaction.await.expect("task").expect("compact");
    store.flush().await.expect("flush");
    drop(store);
    has_all(&open(&path), 2500).await;
}
