//! Loading the store files at open: replay snapshot, then log, into [`Loaded`].
//!
//! The snapshot must parse completely (it is only ever renamed into place whole).
//! The log may end in a torn line from a crash, which is skipped with a warning;
//! anything unreadable before its end is [`StoreError::Corrupt`] with file and line.
//! A log from an older generation than the snapshot is ignored (see `persist`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use base64::Engine;

use super::{io_error, log_path, Line, FORMAT, VERSION};
use crate::store::{Session, StoreError};

/// The sessions found on disk, already without expired ones.
#[derive(Default)]
pub(crate) struct Loaded {
    /// Generation of the files read (0 for a new store).
    pub gen: u64,
    pub secret: Option<[u8; 32]>,
    pub pools: HashMap<Arc<str>, HashMap<Box<str>, Session>>,
}

fn corrupt(path: &Path, line: usize, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.display().to_string(),
        line,
        message: message.into(),
    }
}

/// Read snapshot + log at `path`, dropping sessions idle for longer than `ttl_ms` at `now`.
pub(crate) fn load(path: &Path, ttl_ms: u64, now: u64) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let snap_gen = replay(path, false, &mut loaded, &|_| Ok(true))?;
    let log = log_path(path);
    let log_gen = replay(&log, true, &mut loaded, &|gen| match snap_gen {
        Some(snap) if gen < snap => {
            tracing::info!(path = %log.display(), gen, snap, "ignoring log older than snapshot");
            Ok(false)
        }
        Some(snap) if gen > snap => Err(corrupt(&log, 1, "log is newer than the snapshot")),
        _ => Ok(true),
    })?;
    loaded.gen = snap_gen.max(log_gen).unwrap_or(0);
    let cutoff = now.saturating_sub(ttl_ms);
    for sessions in loaded.pools.values_mut() {
        sessions.retain(|_, s| s.last_seen >= cutoff);
    }
    loaded.pools.retain(|_, sessions| !sessions.is_empty());
    Ok(loaded)
}

/// Apply one file's lines to `loaded`; returns its generation (None: no such file).
/// `accept` sees the header's generation and says whether to apply the rest.
/// With `torn_ok`, an unreadable last line (a write cut short by a crash) is skipped.
fn replay(
    path: &Path,
    torn_ok: bool,
    loaded: &mut Loaded,
    accept: &dyn Fn(u64) -> Result<bool, StoreError>,
) -> Result<Option<u64>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let (mut buf, mut lineno, mut gen) = (Vec::new(), 0usize, None);
    // A line that did not parse; fatal unless nothing but whitespace follows it.
    let mut bad: Option<(usize, String)> = None;
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| io_error(path, e))?
            == 0
        {
            break;
        }
        lineno += 1;
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if let Some((line, message)) = bad.take() {
            return Err(corrupt(path, line, message));
        }
        let line = match serde_json::from_slice::<Line>(text) {
            Ok(line) => line,
            Err(e) => {
                bad = Some((lineno, e.to_string()));
                continue;
            }
        };
        match (line, gen) {
            (
                Line::Header {
                    format,
                    version,
                    gen: g,
                },
                None,
            ) => {
                if format != FORMAT || version != VERSION {
                    let msg = format!("unsupported format {format} version {version}");
                    return Err(corrupt(path, lineno, msg));
                }
                gen = Some(g);
                if !accept(g)? {
                    return Ok(gen);
                }
            }
            (_, None) => return Err(corrupt(path, lineno, "missing header")),
            (line, Some(_)) => apply(loaded, line).map_err(|m| corrupt(path, lineno, m))?,
        }
    }
    if let Some((line, message)) = bad {
        if !torn_ok || gen.is_none() {
            return Err(corrupt(path, line, message));
        }
        tracing::warn!(path = %path.display(), line, error = %message, "ignoring torn last line");
    }
    Ok(gen)
}

fn apply(loaded: &mut Loaded, line: Line) -> Result<(), String> {
    match line {
        Line::Header { .. } => return Err("unexpected second header".into()),
        Line::Secret { secret } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret)
                .map_err(|e| format!("bad secret: {e}"))?;
            let secret = <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| format!("secret has {} bytes, want 32", bytes.len()))?;
            loaded.secret = Some(secret);
        }
        Line::Put { pool, key, session } => {
            let sessions = loaded.pools.entry(pool).or_default();
            sessions.insert(key.into_owned().into_boxed_str(), session.into_owned());
        }
        Line::Del { pool, key } => {
            if let Some(sessions) = loaded.pools.get_mut(&pool) {
                sessions.remove(key.as_ref());
            }
        }
        Line::Touch {
            pool,
            key,
            last_seen,
        } => {
            let session = loaded
                .pools
                .get_mut(&pool)
                .and_then(|s| s.get_mut(key.as_ref()));
            if let Some(session) = session {
                session.last_seen = session.last_seen.max(last_seen);
            }
        }
    }
    Ok(())
}
