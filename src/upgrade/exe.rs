//! Which executable a successor is started from (SIGUSR2), and how.

use super::*;

/// The executable tether was started as, and the directory it started in.
static START: OnceLock<(Option<PathBuf>, Option<PathBuf>)> = OnceLock::new();

/// Call first thing in `main`: remembers the path tether was started as
/// (argv[0] made absolute, or found on `PATH`), which still names the
/// installed binary once a package upgrade replaced it (`/proc/self/exe` then
/// reads "... (deleted)") and, if it is a symlink, is followed anew.
pub fn remember_start() {
    START.get_or_init(|| {
        let dir = std::env::current_dir().ok();
        let argv0 = std::env::args_os().next().map(PathBuf::from);
        let path = std::env::var_os("PATH");
        let exe = argv0.and_then(|a| resolve_argv0(&a, dir.as_deref(), path.as_deref()));
        (exe.or_else(|| std::env::current_exe().ok()), dir)
    });
}

pub(super) fn resolve_argv0(
    argv0: &Path,
    dir: Option<&Path>,
    path: Option<&OsStr>,
) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = match argv0.as_os_str().as_bytes().contains(&b'/') {
        true => argv0.to_path_buf(),
        false => std::env::split_paths(path?)
            .map(|d| d.join(argv0))
            .find(|c| is_exe(c))?,
    };
    let found = if found.is_absolute() {
        found
    } else {
        dir?.join(found)
    };
    is_exe(&found).then_some(found)
}

/// The binary to start as successor: the remembered start path while it
/// exists, else the running image's path without " (deleted)".
pub fn successor_exe() -> PathBuf {
    if let Some((Some(exe), _)) = START
        .get()
        .filter(|(exe, _)| exe.as_ref().is_some_and(|e| e.is_file()))
    {
        return exe.clone();
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(kept) => PathBuf::from(OsStr::from_bytes(kept)),
        None => exe,
    }
}

/// `<exe> --upgrade --config <config, absolute>`, stdin closed, stdout and
/// stderr inherited. Append other flags (e.g. `--log-format`) to it.
pub fn successor_command(config: &Path) -> Command {
    let config = match START.get() {
        Some((_, Some(dir))) => dir.join(config),
        _ => std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf()),
    };
    let mut cmd = Command::new(successor_exe());
    cmd.arg("--upgrade").arg("--config").arg(config);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    cmd
}
