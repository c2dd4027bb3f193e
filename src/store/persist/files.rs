//! Creating the store's directory and files so that nobody else can read the
//! cookie secret in them or make the writer write elsewhere.
//!
//! - A directory tether creates is 0700 (an existing one is left as it is: the
//!   operator chose it).
//! - Every file is written under a fresh name `NAME.tmp-RANDOM` opened with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600, then renamed over `NAME`: a
//!   file or symlink planted at any name is never opened, and the name cannot
//!   be guessed ahead of time. The rename replaces a `NAME` left by an older
//!   version with mode 0644 as well.
//! - Temporary files left by a crash are removed at open.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::with_suffix;

/// Marks a temporary file: `NAME` + this + 16 hex digits.
const TMP_MARK: &str = ".tmp-";

/// Create `dir` and any missing parents, each 0700.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Open `path` for writing only if nothing exists there yet, not even a
/// dangling symlink; mode 0600.
pub(crate) fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A new temporary file beside `path`, with an unpredictable name.
pub(crate) fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..8 {
        let tmp = with_suffix(path, &format!("{TMP_MARK}{:016x}", rand::random::<u64>()));
        match create_new(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Remove the temporary files of `path` and of its log left by a crash.
/// Unlinking never follows a symlink, so this cannot touch anything else.
pub(crate) fn remove_stale_temps(path: &Path, log: &Path) {
    let Some(dir) = path.parent() else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefixes: Vec<String> = [path, log]
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| format!("{}{TMP_MARK}", n.to_string_lossy()))
        .collect();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = prefixes.iter().any(|p| {
            name.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if ours {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "store: cannot remove a stale temporary file");
            }
        }
    }
}
