//! The writer thread: the only code that writes the store's files.
//!
//! It drains the journal channel into a buffered log, fsyncs within `SYNC_EVERY` of
//! the first unsynced line (so `kill -9` or a power cut loses at most that much),
//! answers `flush`/`compact` requests in channel order, and compacts on its own once
//! the log holds more than twice as many lines as there are sessions. It is a plain
//! thread, not a tokio task, because every step is blocking file I/O.
//!
//! After a write error it stops appending (a half-written line must not be followed
//! by more) and retries a compaction, which rewrites everything from memory, until
//! one succeeds. After the journal dropped lines (the queue was full) it skips
//! what is queued, which memory already holds, and compacts.
//!
//! A compaction takes its copy of the sessions from the store quickly (no file
//! I/O while the store's locks are held, see [`SnapshotSource::each_session`]),
//! so requests never wait for the disk.
//!
//! Handover: a successor started with `--upgrade` opens the same path while this
//! process drains, and rewrites both files. From then on our appends go to the
//! unlinked old log (harmless), but our next compaction would rename stale files
//! over the successor's; so before compacting we check that the snapshot is still
//! the file we wrote, and otherwise retire: the files are no longer ours.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::files;
use super::{encode_secret, io_error, log_path, Inbox, Line, Link, Msg, SnapshotSource, Stall};
use super::{FORMAT, VERSION};
use crate::store::StoreError;

/// Upper bound on how long an appended line waits for its fsync. Half the promised
/// second, leaving room for a slow disk.
const SYNC_EVERY: Duration = Duration::from_millis(500);
/// Below this many log lines compaction is not worth its full rewrite.
const COMPACT_MIN_LINES: u64 = 10_000;

/// Write a fresh snapshot and log (generation `gen`) from `source`, then run the
/// writer thread on `inbox`. Fails if the files cannot be written.
pub(crate) fn start(
    path: PathBuf,
    gen: u64,
    inbox: Inbox,
    source: Weak<dyn SnapshotSource>,
) -> Result<JoinHandle<()>, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        files::create_dir(dir).map_err(|e| io_error(dir, e))?;
    }
    files::remove_stale_temps(&path, &log_path(&path));
    let Inbox { rx, link, stall } = inbox;
    let (log, snapshot) = rewrite(&path, gen, &source, &stall)?;
    let writer = Writer {
        log: BufWriter::with_capacity(1 << 16, log),
        path,
        gen,
        snapshot,
        lines: 0,
        dirty_since: None,
        broken: None,
        retired: false,
        source,
        link,
        stall,
    };
    std::thread::Builder::new()
        .name("tether-store".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StoreError::Unavailable(format!("cannot start store writer: {e}")))
}

struct Writer {
    path: PathBuf,
    gen: u64,
    /// (device, inode) of the snapshot we wrote last, to notice a successor's.
    snapshot: (u64, u64),
    log: BufWriter<File>,
    /// Lines in the current log, for the compaction trigger.
    lines: u64,
    /// When the oldest line not yet fsynced was appended.
    dirty_since: Option<Instant>,
    /// Set after a write error: when to retry (by compacting).
    broken: Option<Instant>,
    /// Another process rewrote the files: write nothing more.
    retired: bool,
    source: Weak<dyn SnapshotSource>,
    link: Arc<Link>,
    stall: Stall,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut next = None;
        loop {
            self.stall.before_message();
            if next.is_none() && self.link.is_lost() && !self.retired {
                next = self.recover(&rx);
            }
            let wait = match (self.dirty_since, self.broken) {
                (Some(since), _) => SYNC_EVERY.saturating_sub(since.elapsed()),
                (None, Some(retry)) => retry.saturating_duration_since(Instant::now()),
                (None, None) => Duration::from_secs(1),
            };
            let msg = match next.take() {
                Some(msg) => Ok(msg),
                None => rx.recv_timeout(wait),
            };
            match msg {
                Ok(Msg::Line(line)) => {
                    self.link.taken();
                    self.append(&line);
                }
                Ok(Msg::Flush(reply)) => {
                    let _ = reply.send(self.sync());
                }
                Ok(Msg::Compact(reply)) => {
                    let _ = reply.send(self.compact());
                }
                Ok(Msg::Retire(reply)) => {
                    let done = self.sync();
                    self.retired = true;
                    tracing::info!(path = %self.path.display(), "store: handed over to the successor, writing nothing more");
                    let _ = reply.send(done);
                }
                Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.sync() {
                        tracing::error!(error = %e, "store: final write failed");
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.housekeeping();
        }
    }

    /// The journal dropped lines, so the log misses changes: skip the lines
    /// queued now (each describes a change memory already has) and compact.
    /// Returns the first other message met, to be handled next in order.
    fn recover(&mut self, rx: &Receiver<Msg>) -> Option<Msg> {
        let mut next = None;
        let mut skipped = 0u64;
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(_)) => {
                    self.link.taken();
                    skipped += 1;
                }
                Ok(msg) => {
                    next = Some(msg);
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        tracing::warn!(path = %self.path.display(), skipped,
            "store: journal lines were dropped (writer too slow); rewriting the snapshot from memory");
        if let Err(e) = self.compact() {
            tracing::error!(error = %e, "store: compaction failed");
        }
        next
    }

    /// Periodic work checked after every message: the fsync deadline, healing after
    /// an error, and the size-triggered compaction.
    fn housekeeping(&mut self) {
        let sync_due = self.dirty_since.is_some_and(|t| t.elapsed() >= SYNC_EVERY);
        let retry_due = self.broken.is_some_and(|t| Instant::now() >= t);
        if sync_due || retry_due {
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, "store: sync failed");
            }
        }
        if sync_due && self.broken.is_none() && self.lines > COMPACT_MIN_LINES {
            let sessions = self.source.upgrade().map_or(0, |s| s.session_count());
            if self.lines > 2 * sessions as u64 {
                if let Err(e) = self.compact() {
                    tracing::error!(error = %e, "store: compaction failed");
                }
            }
        }
    }

    fn append(&mut self, line: &Line) {
        if self.broken.is_some() || self.retired {
            return; // the next successful compaction writes this change from memory
        }
        if let Err(e) = write_line(&mut self.log, line) {
            self.fail(&e);
            return;
        }
        self.lines += 1;
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::error!(path = %log_path(&self.path).display(), error = %e,
            "store: cannot append; will rewrite from memory");
        self.broken = Some(Instant::now() + Duration::from_secs(1));
    }

    /// Make everything appended durable; while broken, recover by compacting.
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.retired {
            return Ok(());
        }
        if self.broken.is_some() {
            return self.compact();
        }
        self.dirty_since = None;
        let res = self
            .log
            .flush()
            .and_then(|()| self.log.get_ref().sync_data());
        res.map_err(|e| {
            self.fail(&e);
            io_error(&log_path(&self.path), e)
        })?;
        // A dropped line is only in memory: only a compaction makes it durable.
        if self.link.is_lost() {
            return self.compact();
        }
        Ok(())
    }

    /// Snapshot generation `gen + 1` from memory, then an empty log of that generation.
    fn compact(&mut self) -> Result<(), StoreError> {
        if self.retired || self.taken_over() {
            return Ok(());
        }
        let gen = self.gen + 1;
        // Cleared before the copy is taken: a line dropped from now on may be
        // missing from it, and sets the flag again.
        self.link.take_lost();
        match rewrite(&self.path, gen, &self.source, &self.stall) {
            Ok((log, snapshot)) => {
                self.log = BufWriter::with_capacity(1 << 16, log);
                self.gen = gen;
                self.snapshot = snapshot;
                self.lines = 0;
                self.dirty_since = None;
                self.broken = None;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(Instant::now() + Duration::from_secs(1));
                Err(e)
            }
        }
    }

    /// Whether another process replaced our snapshot (see the module comment).
    fn taken_over(&mut self) -> bool {
        let now = fs::metadata(&self.path).map(|m| (m.dev(), m.ino()));
        // A vanished snapshot is rewritten; only a different file means a successor.
        if now.is_ok_and(|id| id != self.snapshot) {
            tracing::warn!(path = %self.path.display(),
                "store: files rewritten by another process; no longer writing them");
            self.retired = true;
            self.broken = None;
            self.dirty_since = None;
        }
        self.retired
    }
}

/// Write snapshot `gen` from memory, then swap in an empty log of that generation.
/// In this order a crash in between leaves a log older than the snapshot, which
/// `load` ignores; the snapshot already holds all of it.
/// Returns the new log and the snapshot's (device, inode).
fn rewrite(
    path: &Path,
    gen: u64,
    source: &Weak<dyn SnapshotSource>,
    stall: &Stall,
) -> Result<(File, (u64, u64)), StoreError> {
    let Some(source) = source.upgrade() else {
        return Err(StoreError::Unavailable("store is gone".into()));
    };
    let snapshot = write_snapshot(path, gen, &*source, stall).map_err(|(p, e)| io_error(&p, e))?;
    // Hold the store only while reading it: the writer must not keep it alive.
    drop(source);
    let log = fresh_log(path, gen).map_err(|e| io_error(&log_path(path), e))?;
    Ok((log, snapshot))
}

fn write_line(out: &mut impl Write, line: &Line) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

fn header(gen: u64) -> Line<'static> {
    Line::Header {
        format: Cow::Borrowed(FORMAT),
        version: VERSION,
        gen,
    }
}

/// Replace the snapshot atomically: write a new temporary file, fsync, rename,
/// fsync the directory. Returns the snapshot's (device, inode).
fn write_snapshot(
    path: &Path,
    gen: u64,
    source: &dyn SnapshotSource,
    stall: &Stall,
) -> Result<(u64, u64), (PathBuf, io::Error)> {
    let (tmp, file) = files::create_temp(path).map_err(|e| (path.to_owned(), e))?;
    let write = || -> io::Result<(u64, u64)> {
        let mut out = BufWriter::with_capacity(1 << 16, file);
        write_line(&mut out, &header(gen))?;
        let secret = encode_secret(&source.secret());
        write_line(&mut out, &Line::Secret { secret })?;
        source.each_session(&mut |pool, key, session| {
            stall.in_snapshot();
            let line = Line::Put {
                pool: pool.clone(),
                key: Cow::Borrowed(key),
                session: Cow::Borrowed(session),
            };
            write_line(&mut out, &line)
        })?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let meta = file.metadata()?;
        Ok((meta.dev(), meta.ino()))
    };
    let placed = write().and_then(|id| fs::rename(&tmp, path).map(|()| id));
    let id = placed.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        (tmp.clone(), e)
    })?;
    sync_dir(path).map_err(|e| (path.to_owned(), e))?;
    Ok(id)
}

/// An empty log (just the header) of generation `gen`, swapped in atomically.
fn fresh_log(path: &Path, gen: u64) -> io::Result<File> {
    let log = log_path(path);
    let (tmp, mut file) = files::create_temp(&log)?;
    let placed = write_line(&mut file, &header(gen))
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, &log));
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&log)?;
    // The handle stays valid across the rename and is positioned after the header.
    Ok(file)
}

/// Renames are durable only once the directory itself is fsynced.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
