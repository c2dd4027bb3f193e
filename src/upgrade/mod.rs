//! Zero-downtime binary upgrade: the listening-socket handoff from the running
//! tether (the predecessor, old side) to one started with `--upgrade` (the
//! successor, new side). Linux only; `runtime` drives both sides.
//!
//! Rendezvous: the abstract unix stream socket `@tether-upgrade-<16 hex>`, the
//! FNV-1a 64 of the config's identity (its directory canonicalized, its file
//! name kept: retargeting a `proxy.yaml` symlink keeps the name). The old side
//! binds it at start ([`Offer::bind`]; taken: [`UpgradeError::AlreadyRunning`])
//! and serves one successor at a time. Both ends check SO_PEERCRED: the peer
//! must run as our effective uid or as root.
//!
//! Frames: `u32` BE length, `u8` kind, body. The flow:
//! 1. new [`Predecessor::connect`]; old [`Offer::accept`] answers `HELLO` (`u16` version).
//! 2. old [`Successor::send_sockets`]: `SOCKETS` frames (`last: u8`, `count: u16`,
//!    `count` x `u16`-length-prefixed name), the fds in SCM_RIGHTS, at most
//!    [`MAX_FDS`] a frame; new [`Predecessor::receive_sockets`] maps them by name.
//! 3. new [`Predecessor::release`] sends `RELEASE`; old [`Successor::wait_release`]
//!    returns, the old side stops accepting and flushes the store, then
//!    [`Successor::released`] frees the rendezvous, answers `RELEASED` and tells
//!    systemd `MAINPID=<successor>`. The new side may then bind its own [`Offer`].
//!
//! Clients connecting meanwhile wait in the (shared) sockets' backlog. A
//! successor that leaves before `RELEASE` changes nothing on the old side.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::socket::{self as sock, sockopt, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

use crate::sdnotify;

/// Listening sockets per `SOCKETS` frame (the kernel takes up to 253).
pub const MAX_FDS: usize = 64;
/// Bounds each step after the greeting: sending, receiving, answering `RELEASE`.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the old side waits for its successor to start and ask for the release.
pub const SUCCESSOR_START_TIMEOUT: Duration = Duration::from_secs(120);
const VERSION: [u8; 2] = 1u16.to_be_bytes();
const MAX_FRAME: usize = 1 << 20;
const SCM_MAX_FD: usize = 253;
const HELLO: u8 = 1;
const REFUSED: u8 = 2;
const SOCKETS: u8 = 3;
const RELEASE: u8 = 4;
const RELEASED: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("another tether already runs on {config} (upgrade rendezvous @{name} is taken): stop it, or start with --upgrade to take over")]
    AlreadyRunning { config: String, name: String },
    #[error("no running tether for {config} to take over (nothing listens on upgrade rendezvous @{name})")]
    NoPredecessor { config: String, name: String },
    #[error("the successor went away before {0}")]
    SuccessorGone(&'static str),
    #[error("the running tether went away before {0}")]
    PredecessorGone(&'static str),
    #[error("upgrade refused: {0}")]
    PeerRefused(String),
    #[error("upgrade protocol error: expected {expected}, got {got}")]
    Protocol { expected: String, got: String },
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        waiting_for: &'static str,
        after: Duration,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> UpgradeError {
    let context = context.into();
    move |source| UpgradeError::Io { context, source }
}

fn protocol(expected: impl Into<String>, got: impl Into<String>) -> UpgradeError {
    let (expected, got) = (expected.into(), got.into());
    UpgradeError::Protocol { expected, got }
}

/// `step`, or [`UpgradeError::Timeout`] once `after` has passed.
async fn within<T>(
    after: Duration,
    waiting_for: &'static str,
    step: impl Future<Output = Result<T, UpgradeError>>,
) -> Result<T, UpgradeError> {
    let late = UpgradeError::Timeout { waiting_for, after };
    tokio::time::timeout(after, step).await.unwrap_or(Err(late))
}

/// The abstract socket name (without the leading `@`) for `config`.
pub fn rendezvous_name(config: &Path) -> Result<String, UpgradeError> {
    let shown = config.display();
    let abs = std::path::absolute(config).map_err(io_err(format!("make {shown} absolute")))?;
    let (Some(dir), Some(file)) = (abs.parent(), abs.file_name()) else {
        let e = io::Error::new(io::ErrorKind::InvalidInput, "the path names no file");
        return Err(io_err(shown.to_string())(e));
    };
    let dir = std::fs::canonicalize(dir).map_err(io_err(format!("resolve the dir of {shown}")))?;
    let identity = dir.join(file);
    let hash = (identity.as_os_str().as_bytes().iter()).fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    Ok(format!("tether-upgrade-{hash:016x}"))
}

fn abstract_path(name: &str) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&[b"\0", name.as_bytes()].concat()))
}

/// Sockets go only between processes of the same effective user, or root.
fn trusted(peer_uid: u32, own_euid: u32) -> bool {
    peer_uid == own_euid || peer_uid == 0
}

/// The peer's pid (0 if the kernel gave none); `Err((uid, pid))` unless [`trusted`].
fn peer(stream: &UnixStream) -> Result<u32, (u32, u32)> {
    let euid = nix::unistd::geteuid().as_raw();
    let cred = stream.peer_cred().map_err(|_| (u32::MAX, 0))?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    match trusted(cred.uid(), euid) {
        true => Ok(pid),
        false => Err((cred.uid(), pid)),
    }
}

mod exe;
mod wire;

#[cfg(test)]
use exe::resolve_argv0;
pub use exe::{remember_start, successor_command, successor_exe};
use wire::Conn;

/// Old side: the bound rendezvous. Dropping it frees the name at once.
pub struct Offer {
    listener: UnixListener,
    name: String,
}

impl Offer {
    /// Bind the rendezvous for `config` (inside the tokio runtime).
    pub fn bind(config: &Path) -> Result<Offer, UpgradeError> {
        Offer::bind_at(rendezvous_name(config)?, config.display().to_string())
    }

    /// [`Offer::bind`] on an explicit abstract name (tests, tools).
    pub fn bind_named(name: &str) -> Result<Offer, UpgradeError> {
        Offer::bind_at(name.to_owned(), format!("@{name}"))
    }

    fn bind_at(name: String, config: String) -> Result<Offer, UpgradeError> {
        match UnixListener::bind(abstract_path(&name)) {
            Ok(listener) => Ok(Offer { listener, name }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                Err(UpgradeError::AlreadyRunning { config, name })
            }
            Err(e) => Err(io_err(format!("bind upgrade rendezvous @{name}"))(e)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wait for a trusted successor and greet it; others are logged and
    /// skipped. Serve it to the end before accepting the next one.
    pub async fn accept(&self) -> Result<Successor, UpgradeError> {
        loop {
            let (stream, _) = self
                .listener
                .accept()
                .await
                .map_err(io_err("accept a successor"))?;
            let conn = Conn::new(stream, UpgradeError::SuccessorGone);
            let pid = match peer(&conn.stream) {
                Ok(pid) => pid,
                Err((uid, pid)) => {
                    tracing::warn!(
                        uid,
                        pid,
                        "upgrade: refused a successor that runs as another user"
                    );
                    let why = format!("the running tether hands its sockets only to its own user or root, not uid {uid}");
                    let refuse = conn.send(REFUSED, why.as_bytes(), &[], "being refused");
                    let _ = within(Duration::from_secs(1), "a refused successor", refuse).await;
                    continue;
                }
            };
            let hello = conn.send(HELLO, &VERSION, &[], "our greeting");
            match within(STEP_TIMEOUT, "a successor to read our greeting", hello).await {
                Ok(()) => return Ok(Successor { conn, pid }),
                Err(e) => tracing::warn!(pid, error = %e, "upgrade: lost a successor at once"),
            }
        }
    }
}

/// Old side: one connected, trusted successor.
pub struct Successor {
    conn: Conn,
    pid: u32,
}

impl Successor {
    /// The successor's pid (from SO_PEERCRED; 0 if the kernel gave none).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Send the listening sockets with their names (listener names, `admin`).
    pub async fn send_sockets<N: AsRef<str>, F: AsFd>(
        &mut self,
        socks: &[(N, F)],
    ) -> Result<(), UpgradeError> {
        let mut chunks: Vec<&[(N, F)]> = socks.chunks(MAX_FDS).collect();
        if chunks.is_empty() {
            chunks.push(&[]); // still one (last) frame
        }
        let frames = chunks.len();
        let send = async {
            for (i, chunk) in chunks.into_iter().enumerate() {
                let mut body = vec![u8::from(i + 1 == frames)];
                body.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                for (name, _) in chunk {
                    let name = name.as_ref().as_bytes();
                    let len = u16::try_from(name.len())
                        .map_err(|_| protocol("a name under 64 KiB", "a longer one"))?;
                    body.extend_from_slice(&len.to_be_bytes());
                    body.extend_from_slice(name);
                }
                let fds: Vec<RawFd> = chunk.iter().map(|(_, fd)| fd.as_fd().as_raw_fd()).collect();
                self.conn
                    .send(SOCKETS, &body, &fds, "taking the sockets")
                    .await?;
            }
            Ok(())
        };
        within(STEP_TIMEOUT, "the successor to take the sockets", send).await
    }

    /// Wait until the successor is ready and asks us to let go. `Err` (we
    /// keep running as before) if it leaves or takes too long.
    pub async fn wait_release(&mut self) -> Result<(), UpgradeError> {
        let wait = self.conn.expect(RELEASE, "asking for the release");
        within(
            SUCCESSOR_START_TIMEOUT,
            "the successor to ask for the release",
            wait,
        )
        .await?;
        Ok(())
    }

    /// Call once we stopped accepting and flushed the store: frees the
    /// rendezvous, answers `RELEASED`, then tells systemd `MAINPID=<successor>`.
    /// `Err`: the successor is gone. The sockets are still ours: resume
    /// accepting, and bind a new [`Offer`] to allow another attempt.
    pub async fn released(self, offer: Offer) -> Result<(), UpgradeError> {
        drop(offer);
        let answer = self
            .conn
            .send(RELEASED, &[], &[], "hearing it was released");
        within(
            STEP_TIMEOUT,
            "the successor to hear it was released",
            answer,
        )
        .await?;
        if self.pid != 0 {
            if let Err(e) = sdnotify::notify(&[sdnotify::State::MainPid(self.pid)]) {
                tracing::warn!(error = %e, "upgrade: could not tell systemd the successor's pid");
            }
        }
        tracing::info!(pid = self.pid, "upgrade: handed over to the successor");
        Ok(())
    }
}

/// New side: the running tether we take over from.
pub struct Predecessor {
    conn: Conn,
    pid: u32,
}

impl Predecessor {
    /// Connect to the running tether of `config`; `wait` bounds it and the greeting.
    pub async fn connect(config: &Path, wait: Duration) -> Result<Predecessor, UpgradeError> {
        let name = rendezvous_name(config)?;
        Predecessor::connect_at(name, config.display().to_string(), wait).await
    }

    /// [`Predecessor::connect`] on an explicit abstract name (tests, tools).
    pub async fn connect_named(name: &str, wait: Duration) -> Result<Predecessor, UpgradeError> {
        Predecessor::connect_at(name.to_owned(), format!("@{name}"), wait).await
    }

    async fn connect_at(
        name: String,
        config: String,
        wait: Duration,
    ) -> Result<Predecessor, UpgradeError> {
        let greeted = async {
            let stream = loop {
                match UnixStream::connect(abstract_path(&name)).await {
                    Ok(stream) => break stream,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                        ) =>
                    {
                        return Err(UpgradeError::NoPredecessor { config, name });
                    }
                    // A full backlog: the old side is busy with other successors.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(Duration::from_millis(25)).await
                    }
                    Err(e) => {
                        return Err(io_err(format!("connect to upgrade rendezvous @{name}"))(e))
                    }
                }
            };
            let pid = match peer(&stream) {
                Ok(pid) => pid,
                Err((uid, _)) => {
                    let why = format!("@{name} is held by uid {uid}, not by our user or root: not taking its sockets");
                    return Err(UpgradeError::PeerRefused(why));
                }
            };
            let mut conn = Conn::new(stream, UpgradeError::PredecessorGone);
            match conn.expect(HELLO, "its greeting").await? {
                hello if hello == VERSION => Ok(Predecessor { conn, pid }),
                other => Err(protocol("protocol version 1", format!("{other:?}"))),
            }
        };
        within(
            wait,
            "the running tether's greeting (busy with another successor?)",
            greeted,
        )
        .await
    }

    /// The running tether's pid (from SO_PEERCRED; 0 if the kernel gave none).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Receive the listening sockets: name -> blocking, close-on-exec listener.
    pub async fn receive_sockets(&mut self) -> Result<HashMap<String, TcpListener>, UpgradeError> {
        let receive = async {
            let mut out = HashMap::new();
            loop {
                let body = self.conn.expect(SOCKETS, "the listening sockets").await?;
                if self.take_sockets(&body, &mut out)? {
                    return Ok(out);
                }
            }
        };
        let out = within(STEP_TIMEOUT, "the listening sockets", receive).await?;
        self.conn.fds.clear();
        Ok(out)
    }

    /// Decode one `SOCKETS` frame into `out`; `true` if it was the last.
    fn take_sockets(
        &mut self,
        body: &[u8],
        out: &mut HashMap<String, TcpListener>,
    ) -> Result<bool, UpgradeError> {
        let bad = || protocol("a well-formed SOCKETS frame", "a truncated one");
        let (&[last, c0, c1], mut rest) = body.split_first_chunk::<3>().ok_or_else(bad)?;
        let count = usize::from(u16::from_be_bytes([c0, c1]));
        if self.conn.fds.len() < count {
            return Err(protocol(
                format!("{count} descriptors"),
                self.conn.fds.len().to_string(),
            ));
        }
        for fd in self.conn.fds.drain(..count) {
            let (len, tail) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
            let (name, tail) = tail
                .split_at_checked(usize::from(u16::from_be_bytes(*len)))
                .ok_or_else(bad)?;
            rest = tail;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| protocol("a UTF-8 name", "other bytes"))?;
            let listening = sock::getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false);
            let listener = TcpListener::from(fd);
            if !listening || listener.local_addr().is_err() {
                return Err(protocol(
                    format!("a listening TCP socket for {name}"),
                    "another descriptor",
                ));
            }
            if out.insert(name.clone(), listener).is_some() {
                return Err(protocol("unique listener names", format!("{name} twice")));
            }
        }
        Ok(last != 0)
    }

    /// Ask the running tether to stop accepting and let go; returns once it has.
    pub async fn release(&mut self) -> Result<(), UpgradeError> {
        self.conn.send(RELEASE, &[], &[], "the release").await?;
        let answer = self.conn.expect(RELEASED, "its release");
        within(
            STEP_TIMEOUT,
            "the running tether to release its sockets",
            answer,
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
