//! The byte copy of one tcp session, both ways at once.
//!
//! Each direction runs on its own, so a peer that stops reading holds up
//! only the bytes going to it. An EOF in one direction is passed on as a
//! half-close (shutdown of the other socket's write side) while the other
//! direction goes on. The session ends when both directions are done, on an
//! error, when nothing moved for `idle`, or when tether closes it through
//! the backend's tunnel registry: a TCP stream has no close frame, so that
//! simply closes both sockets. The idle timer and the registry are watched
//! outside the copies, so they work even while a write is stuck on a frozen
//! peer.
//!
//! Buffers are bounded (`BUF` per direction) and held only while data
//! flows: an idle session keeps none, which keeps long-lived device
//! connections cheap. Sessions with TLS on either side (`run_io`) go through
//! rustls, which cannot say "readable" without a buffer to decrypt into:
//! they keep one buffer per direction for their whole life.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::backend::{mono_ms, CloseReason, TunnelCtl};

/// Largest chunk read at once per direction.
const BUF: usize = 16 * 1024;

pub struct Pump<'a> {
    pub idle: Duration,
    pub ctl: &'a TunnelCtl,
    /// `bytes_total{direction="in"}`: client to backend.
    pub bytes_in: &'a IntCounter,
    /// `bytes_total{direction="out"}`: backend to client.
    pub bytes_out: &'a IntCounter,
    /// This session's own bytes (in, out), for its access-log line.
    pub moved: [AtomicU64; 2],
}

/// A direction's counters: the listener's metric and the session's own count.
struct Count<'a>(&'a IntCounter, &'a AtomicU64);

impl Count<'_> {
    fn add(&self, n: usize) {
        self.0.inc_by(n as u64);
        self.1.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How a session ended (for the debug log).
pub enum End {
    /// Both sides closed their write side.
    Done,
    Error(io::Error),
    Idle,
    Closed(CloseReason),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Done => f.write_str("both sides closed"),
            End::Error(e) => write!(f, "error: {e}"),
            End::Idle => f.write_str("idle timeout"),
            End::Closed(CloseReason::Moved) => {
                f.write_str("closed by tether: backend down or drained")
            }
            End::Closed(CloseReason::Shutdown) => f.write_str("closed by tether: shutting down"),
        }
    }
}

/// Copy until the session ends. `first` goes to the backend before anything
/// else (the bytes read for the key); `client_eof`: the client
/// already half-closed while they were read.
pub async fn run(
    client: TcpStream,
    upstream: TcpStream,
    first: Vec<u8>,
    client_eof: bool,
    p: &Pump<'_>,
) -> End {
    let (mut c_rd, mut c_wr) = client.into_split();
    let (mut u_rd, mut u_wr) = upstream.into_split();
    let last = AtomicU64::new(mono_ms());
    let up = async {
        u_wr.write_all(&first).await?;
        drop(first);
        if client_eof {
            return u_wr.shutdown().await;
        }
        copy(&mut c_rd, &mut u_wr, Count(p.bytes_in, &p.moved[0]), &last).await
    };
    let down = copy(&mut u_rd, &mut c_wr, Count(p.bytes_out, &p.moved[1]), &last);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => End::Done,
            Err(e) => End::Error(e),
        },
        _ = idle_watch(&last, p.idle) => End::Idle,
        why = p.ctl.closed() => End::Closed(why),
    }
}

/// [`run`] for streams that are not bare sockets (TLS on either side).
pub async fn run_io<C, U>(
    client: C,
    upstream: U,
    first: Vec<u8>,
    client_eof: bool,
    p: &Pump<'_>,
) -> End
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut c_rd, mut c_wr) = tokio::io::split(client);
    let (mut u_rd, mut u_wr) = tokio::io::split(upstream);
    let last = AtomicU64::new(mono_ms());
    let up = async {
        u_wr.write_all(&first).await?;
        u_wr.flush().await?;
        drop(first);
        if client_eof {
            return u_wr.shutdown().await;
        }
        copy_io(&mut c_rd, &mut u_wr, Count(p.bytes_in, &p.moved[0]), &last).await
    };
    let down = copy_io(&mut u_rd, &mut c_wr, Count(p.bytes_out, &p.moved[1]), &last);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => End::Done,
            Err(e) => End::Error(e),
        },
        _ = idle_watch(&last, p.idle) => End::Idle,
        why = p.ctl.closed() => End::Closed(why),
    }
}

/// One direction of `run_io`; the TLS writer is flushed after every chunk so
/// nothing waits in a record buffer.
async fn copy_io<R, W>(rd: &mut R, wr: &mut W, count: Count<'_>, last: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return wr.shutdown().await;
        }
        wr.write_all(&buf[..n]).await?;
        wr.flush().await?;
        count.add(n);
        last.store(mono_ms(), Ordering::Relaxed);
    }
}

/// One direction: read, write, count; on EOF pass the half-close on.
async fn copy(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    count: Count<'_>,
    last: &AtomicU64,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        rd.readable().await?;
        // Only capacity: try_read_buf fills it without zeroing it first.
        buf.clear();
        buf.reserve_exact(BUF);
        match rd.try_read_buf(&mut buf) {
            Ok(0) => return wr.shutdown().await,
            Ok(n) => {
                wr.write_all(&buf[..n]).await?;
                count.add(n);
                last.store(mono_ms(), Ordering::Relaxed);
            }
            // Drained: give the buffer back until the next bytes arrive.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = Vec::new(),
            Err(e) => return Err(e),
        }
    }
}

/// Resolves once nothing moved either way for `idle`.
async fn idle_watch(last: &AtomicU64, idle: Duration) {
    loop {
        let quiet = Duration::from_millis(mono_ms().saturating_sub(last.load(Ordering::Relaxed)));
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}
