//! systemd's notify protocol, the minimal part tether needs: one datagram of
//! `KEY=VALUE` lines sent to `$NOTIFY_SOCKET` (a socket path, or an abstract
//! name when it starts with `@`). Without the variable (not started by systemd
//! with `Type=notify`) every call is a no-op that returns `Ok`.
//!
//! Data flows one way: `runtime` (and `upgrade` at a handoff) calls
//! [`notify`] with [`State`]s; nothing is read back. The variable is left set,
//! so a successor started by `tether --upgrade` can notify too (it needs
//! `NotifyAccess=all` in the unit).

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A send never waits longer than this for a full queue at systemd.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// One line of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State<'a> {
    /// `READY=1`: start-up (or a reload) is complete.
    Ready,
    /// `RELOADING=1`: a reload started; `Ready` ends it.
    Reloading,
    /// `STOPPING=1`: shutting down.
    Stopping,
    /// `MAINPID=<pid>`: this pid is now the service's main process.
    MainPid(u32),
    /// `STATUS=<text>`: free text for `systemctl status` (newlines become spaces).
    Status(&'a str),
}

impl State<'_> {
    fn line(&self) -> String {
        match self {
            State::Ready => "READY=1".to_owned(),
            State::Reloading => "RELOADING=1".to_owned(),
            State::Stopping => "STOPPING=1".to_owned(),
            State::MainPid(pid) => format!("MAINPID={pid}"),
            State::Status(text) => format!("STATUS={}", text.replace(['\n', '\r'], " ")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{NOTIFY_SOCKET}={0:?} is neither a socket path nor an @abstract name")]
    BadAddress(String),
    #[error("systemd notification to {socket:?}: {source}")]
    Send {
        socket: String,
        #[source]
        source: std::io::Error,
    },
}

/// Send `states` (one datagram) to `$NOTIFY_SOCKET`; `Ok` without doing
/// anything when it is unset or empty.
pub fn notify(states: &[State<'_>]) -> Result<(), NotifyError> {
    notify_at(std::env::var_os(NOTIFY_SOCKET).as_deref(), states)
}

/// [`notify`] with the socket given instead of read from the environment.
pub fn notify_at(socket: Option<&OsStr>, states: &[State<'_>]) -> Result<(), NotifyError> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(());
    };
    if states.is_empty() {
        return Ok(());
    }
    let shown = socket.to_string_lossy().into_owned();
    let addr = address(socket).ok_or_else(|| NotifyError::BadAddress(shown.clone()))?;
    let message = states
        .iter()
        .map(State::line)
        .collect::<Vec<_>>()
        .join("\n");
    let send = |source| NotifyError::Send {
        socket: shown.clone(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(send)?;
    sock.set_write_timeout(Some(SEND_TIMEOUT)).map_err(send)?;
    sock.send_to_addr(message.as_bytes(), &addr).map_err(send)?;
    Ok(())
}

/// `/path` -> that path; `@name` -> the abstract name; anything else (e.g.
/// systemd's `vsock:` form) is not supported.
fn address(socket: &OsStr) -> Option<SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).ok(),
        Some(b'/') => SocketAddr::from_pathname(socket).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn received(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn unset_or_empty_is_a_no_op() {
        assert!(notify_at(None, &[State::Ready]).is_ok());
        assert!(notify_at(Some(OsStr::new("")), &[State::Ready]).is_ok());
    }

    #[test]
    fn path_socket_gets_one_datagram_with_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let states = [
            State::MainPid(4242),
            State::Ready,
            State::Status("serving\n2 listeners"),
        ];
        notify_at(Some(path.as_os_str()), &states).unwrap();
        assert_eq!(
            received(&systemd),
            "MAINPID=4242\nREADY=1\nSTATUS=serving 2 listeners"
        );
        notify_at(Some(path.as_os_str()), &[State::Reloading]).unwrap();
        assert_eq!(received(&systemd), "RELOADING=1");
        notify_at(Some(path.as_os_str()), &[State::Stopping]).unwrap();
        assert_eq!(received(&systemd), "STOPPING=1");
    }

    #[test]
    fn abstract_socket_is_named_with_an_at_sign() {
        let name = format!("tether-sdnotify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let var = OsString::from(format!("@{name}"));
        notify_at(Some(&var), &[State::Ready]).unwrap();
        assert_eq!(received(&systemd), "READY=1");
    }

    #[test]
    fn bad_or_absent_socket_is_an_error() {
        let err = notify_at(Some(OsStr::new("vsock:2:1234")), &[State::Ready]).unwrap_err();
        assert!(matches!(err, NotifyError::BadAddress(_)), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nobody.sock");
        let err = notify_at(Some(gone.as_os_str()), &[State::Ready]).unwrap_err();
        assert!(matches!(err, NotifyError::Send { .. }), "{err}");
    }
}
