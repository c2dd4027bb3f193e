//! Persistence of the embedded store: file format, loading, and the journal handle.
//!
//! On disk a store at `PATH` is two files of JSON lines (one [`Line`] each):
//! - `PATH` is the snapshot: a header, the cookie secret, then one `put` per session.
//!   It is only ever replaced whole (written to a fresh temporary file, fsynced,
//!   renamed), so it is never torn.
//! - `PATH.log` is the append-only log: a header, then `put`/`del`/`touch` lines in
//!   the order the changes were made in memory. A crash can leave its last line torn.
//!
//! Both headers carry a generation. Compaction writes snapshot `g+1` and then a fresh
//! log `g+1`; a log whose generation is older than the snapshot's is left over from a
//! crash between those two renames and is ignored (the snapshot already holds it).
//! Every open compacts first (snapshot of what was loaded, empty log), so appends
//! never follow a torn line and expired sessions leave the files.
//!
//! The files hold the cookie secret: a directory tether creates is 0700, every
//! file 0600, and temporary files get unpredictable names and are opened with
//! `O_CREAT | O_EXCL | O_NOFOLLOW`, so nothing planted in the directory is
//! written through (`files.rs`).
//!
//! Data flows one way: the memory store queues each change on a [`Journal`] (a
//! channel; no file I/O on the request path) while still holding the key's shard
//! lock, so the log order matches the map order; the writer thread (`writer.rs`)
//! appends, fsyncs at least twice a second and compacts from a copy of the live
//! maps ([`SnapshotSource`]). `load.rs` replays snapshot + log at open.
//!
//! The queue is bounded (`JOURNAL_MAX` lines) without ever blocking a sender:
//! past the bound a line is dropped and counted, and the writer, seeing the
//! loss, skips what is queued and compacts, which rewrites every session from
//! memory (where each dropped change already is).

mod files;
mod load;
#[cfg(test)]
mod safety_tests;
#[cfg(test)]
mod tests;
mod writer;

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Session, StoreError};

pub(crate) use load::{load, Loaded};
pub(crate) use writer::start;

const FORMAT: &str = "tether-affinity";
const VERSION: u32 = 1;

/// Journal lines queued for the writer, at most (some 10 to 30 MB). Past it,
/// lines are dropped and the next compaction rewrites them from memory.
pub(crate) const JOURNAL_MAX: usize = 100_000;

/// One line of the snapshot or the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Line<'a> {
    Header {
        format: Cow<'a, str>,
        version: u32,
        gen: u64,
    },
    /// The cookie secret, base64.
    Secret {
        secret: String,
    },
    Put {
        pool: Arc<str>,
        key: Cow<'a, str>,
        session: Cow<'a, Session>,
    },
    Del {
        pool: Arc<str>,
        key: Cow<'a, str>,
    },
    /// A newer `last_seen` (written at most every ttl/10 per session).
    Touch {
        pool: Arc<str>,
        key: Cow<'a, str>,
        last_seen: u64,
    },
}

/// Called with each session's pool, key and record while writing a snapshot.
pub(crate) type Visit<'a> = dyn FnMut(&Arc<str>, &str, &Session) -> io::Result<()> + 'a;

/// What the writer needs from the memory store to write a snapshot.
pub(crate) trait SnapshotSource: Send + Sync {
    fn secret(&self) -> [u8; 32];
    fn session_count(&self) -> usize;
    /// Calls `f` for every session, stopping at the first error.
    fn each_session(&self, f: &mut Visit) -> io::Result<()>;
}

pub(crate) enum Msg {
    Line(Line<'static>),
    Flush(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    Compact(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    /// Write and fsync what is queued, then write nothing more (a successor owns the files).
    Retire(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    Close,
}

/// The sending side of the writer thread; cheap, never blocks, never touches a file.
pub(crate) struct Journal {
    tx: mpsc::Sender<Msg>,
    thread: OnceLock<JoinHandle<()>>,
    link: Arc<Link>,
    max: usize,
    dropped: AtomicU64,
}

/// What the journal and the writer thread share.
#[derive(Default)]
pub(crate) struct Link {
    /// Lines sent and not yet taken by the writer.
    queued: AtomicUsize,
    /// A line was dropped: the log misses a change until the next compaction.
    lost: AtomicBool,
}

/// The writer's end of a journal: its messages and the shared counters.
pub(crate) struct Inbox {
    pub(crate) rx: mpsc::Receiver<Msg>,
    pub(crate) link: Arc<Link>,
    pub(crate) stall: Stall,
}

/// A new journal holding at most `max` lines, and the inbox to hand to
/// [`start`] once the store exists.
pub(crate) fn channel(max: usize, stall: Stall) -> (Journal, Inbox) {
    let (tx, rx) = mpsc::channel();
    let link = Arc::new(Link::default());
    let journal = Journal {
        tx,
        thread: OnceLock::new(),
        link: link.clone(),
        max,
        dropped: AtomicU64::new(0),
    };
    (journal, Inbox { rx, link, stall })
}

impl Link {
    /// The writer took a line off the queue.
    pub(crate) fn taken(&self) {
        self.queued.fetch_sub(1, Relaxed);
    }

    /// Whether lines were lost since the last call (which clears it).
    pub(crate) fn take_lost(&self) -> bool {
        self.lost.swap(false, Relaxed)
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Relaxed)
    }
}

/// Pause points of the writer thread for tests (a stalled disk); compiled to
/// nothing outside tests.
#[derive(Clone, Default)]
pub(crate) struct Stall {
    #[cfg(test)]
    pub(crate) before_message: Option<Arc<safety_tests::Valve>>,
    #[cfg(test)]
    pub(crate) in_snapshot: Option<Arc<safety_tests::Valve>>,
}

impl Stall {
    pub(crate) fn before_message(&self) {
        #[cfg(test)]
        if let Some(v) = &self.before_message {
            v.pass();
        }
    }

    pub(crate) fn in_snapshot(&self) {
        #[cfg(test)]
        if let Some(v) = &self.in_snapshot {
            v.pass();
        }
    }
}

impl Journal {
    pub(crate) fn attach(&self, thread: JoinHandle<()>) {
        // Only `open` attaches, once; a second handle would just not be joined.
        let _ = self.thread.set(thread);
    }

    fn send(&self, line: Line<'static>) {
        if self.link.queued.fetch_add(1, Relaxed) >= self.max {
            self.link.queued.fetch_sub(1, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
            self.link.lost.store(true, Relaxed);
            return;
        }
        // Fails only when the writer thread is gone (it panicked); the change is
        // still in memory and `flush` reports the writer as unavailable.
        if self.tx.send(Msg::Line(line)).is_err() {
            self.link.queued.fetch_sub(1, Relaxed);
        }
    }

    /// Lines dropped since open because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Lines waiting for the writer now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.link.queued.load(Relaxed)
    }

    pub(crate) fn put(&self, pool: &Arc<str>, key: &str, session: Session) {
        self.send(Line::Put {
            pool: pool.clone(),
            key: Cow::Owned(key.to_owned()),
            session: Cow::Owned(session),
        });
    }

    pub(crate) fn del(&self, pool: &Arc<str>, key: &str) {
        self.send(Line::Del {
            pool: pool.clone(),
            key: Cow::Owned(key.to_owned()),
        });
    }

    pub(crate) fn touch(&self, pool: &Arc<str>, key: &str, last_seen: u64) {
        self.send(Line::Touch {
            pool: pool.clone(),
            key: Cow::Owned(key.to_owned()),
            last_seen,
        });
    }

    /// Everything queued before this call is written and fsynced.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        self.request(Msg::Flush).await
    }

    /// Everything queued is written and fsynced; nothing is written afterwards.
    pub(crate) async fn retire(&self) -> Result<(), StoreError> {
        self.request(Msg::Retire).await
    }

    /// Rewrite the snapshot from memory and start a fresh log.
    pub(crate) async fn compact(&self) -> Result<(), StoreError> {
        self.request(Msg::Compact).await
    }

    async fn request(
        &self,
        msg: fn(tokio::sync::oneshot::Sender<Result<(), StoreError>>) -> Msg,
    ) -> Result<(), StoreError> {
        let gone = || StoreError::Unavailable("store writer thread stopped".into());
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(msg(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Let the writer finish what is queued and fsync before the store is gone,
        // so a reopen right after sees everything. The writer itself can drop the
        // last store reference (while compacting); it must not join itself.
        let _ = self.tx.send(Msg::Close);
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

pub(crate) fn log_path(path: &Path) -> PathBuf {
    with_suffix(path, ".log")
}

pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub(crate) fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn encode_secret(secret: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(secret)
}
