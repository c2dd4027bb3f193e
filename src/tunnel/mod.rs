//! The tunnel engine: what WebSockets (after the 101) and tcp/tls sessions
//! (after their key is read) become. One engine for both, one task per
//! tunnel.
//!
//! Each direction moves on its own ([`dir`]), so a peer that stops reading
//! stalls only the bytes going to it. Everything that can end a tunnel is
//! watched outside the copies, in one poll: the idle timer (nothing moved
//! either way for `idle`), a write that has made no progress for `idle`, a
//! half-closed tunnel that stays so for `half_closed`, and tether's own
//! decisions through the backend's registry ([`TunnelCtl`]: mark-down,
//! drain, shutdown). So any tunnel can be closed at any moment, whatever is
//! blocked. One timer serves all the deadlines; it is re-armed lazily when it
//! fires, not on every byte.
//!
//! A peer's close is passed on as it came: an EOF as a half-close (FIN), a
//! reset as a reset. WebSockets are transparent: frames pass untouched both
//! ways and tether adds a close frame only for its own decisions (1012 when
//! the backend is marked down or drained out, 1001 on shutdown or idle),
//! between two frames of the backend's, never after a close frame of either
//! side. A frame in flight gets [`GRACE`] to finish, else the connection is
//! cut without a frame. After its frame tether half-closes the client and
//! reads it until its close frame or EOF (at most [`GRACE`]) so the frame is
//! not wiped by a reset; the backend gets a FIN, never a forged frame.
//!
//! Memory: an idle tunnel holds its two sockets, this future (one task) and
//! its registry entry; buffers exist only while a write is blocked.

mod dir;
mod side;
pub mod wsframe;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::time::Sleep;

use crate::backend::{mono_instant, mono_ms, CloseReason, TunnelCtl};
use dir::{Dir, Fail, Reading};
pub use side::Side;

/// How long a frame in flight may take to finish, and how long tether waits
/// for the client's answer to its close frame.
pub const GRACE: Duration = Duration::from_secs(1);

/// What flows through the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes (tcp/tls sessions): tether's decisions simply close both sockets.
    Raw,
    /// A WebSocket after its 101: tether's decisions close with a frame.
    WebSocket,
}

pub struct Params<'a> {
    pub mode: Mode,
    pub idle: Duration,
    pub half_closed: Duration,
    pub ctl: &'a TunnelCtl,
    /// `bytes_total{direction="in"}`: client to backend.
    pub bytes_in: &'a IntCounter,
    /// `bytes_total{direction="out"}`: backend to client.
    pub bytes_out: &'a IntCounter,
}

/// Which end of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Backend,
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their write side.
    Done,
    /// A side reset its connection; the other was reset too.
    Reset(Peer),
    /// A side failed otherwise; the other was closed.
    Error(Peer, io::Error),
    /// Nothing moved either way for `idle`.
    Idle,
    /// A write made no progress for `idle`.
    Stalled(Peer),
    /// One side closed and the other did not follow within `half_closed`.
    HalfClosed,
    /// tether closed it (backend down or drained out, or shutting down).
    Closed(CloseReason),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Done => f.write_str("both sides closed"),
            End::Reset(p) => write!(f, "{p:?} reset the connection"),
            End::Error(p, e) => write!(f, "{p:?} error: {e}"),
            End::Idle => f.write_str("idle timeout"),
            End::Stalled(p) => write!(f, "{p:?} stopped reading"),
            End::HalfClosed => f.write_str("half-closed timeout"),
            End::Closed(CloseReason::Moved) => {
                f.write_str("closed by tether: backend down or drained")
            }
            End::Closed(CloseReason::Shutdown) => f.write_str("closed by tether: shutting down"),
        }
    }
}

/// What a tunnel moved, for its access-log line.
#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    /// Client to backend.
    pub bytes_in: u64,
    /// Backend to client.
    pub bytes_out: u64,
}

/// Run a tunnel until it ends. `to_backend` / `to_client`: bytes already
/// read from one side that go to the other before anything else (the
/// opening bytes a key was read from; the bytes that came with a 101).
/// `client_eof`: the client already half-closed.
pub async fn run<C: Side, U: Side>(
    client: C,
    backend: U,
    to_backend: Vec<u8>,
    to_client: Vec<u8>,
    client_eof: bool,
    p: &Params<'_>,
) -> Outcome {
    let ws = p.mode == Mode::WebSocket;
    let mut t = Tunnel {
        client,
        backend,
        up: Dir::new(to_backend, ws, p.bytes_in),
        down: Dir::new(to_client, ws, p.bytes_out),
        p,
        phase: Phase::Open,
        last: mono_ms(),
        half_since: 0,
        armed: 0,
        backend_fin: false,
    };
    t.up.eof = client_eof;
    let sleep = tokio::time::sleep(p.idle);
    tokio::pin!(sleep);
    let end = poll_fn(|cx| t.poll(cx, sleep.as_mut())).await;
    Outcome {
        end,
        bytes_in: t.up.moved,
        bytes_out: t.down.moved,
    }
}

enum Phase {
    Open,
    /// tether is closing a WebSocket with `code`: the backend's frame in
    /// flight finishes (until `until`), then the close frame goes out.
    Closing {
        code: u16,
        until: u64,
        why: End,
    },
    /// The close frame is out and the client half-closed: read the client
    /// until its close frame or EOF, until `until`.
    Lingering {
        until: u64,
        why: End,
    },
}

struct Tunnel<'a, C, U> {
    client: C,
    backend: U,
    /// Client to backend.
    up: Dir<'a>,
    /// Backend to client.
    down: Dir<'a>,
    p: &'a Params<'a>,
    phase: Phase,
    /// `mono_ms()` of the last byte moved either way.
    last: u64,
    /// `mono_ms()` since one direction finished; 0 while both are open.
    half_since: u64,
    /// The deadline the timer is set to (`mono_ms()`).
    armed: u64,
    /// A FIN was sent to the backend by tether's close.
    backend_fin: bool,
}

impl<C: Side, U: Side> Tunnel<'_, C, U> {
    fn poll(&mut self, cx: &mut Context<'_>, mut sleep: Pin<&mut Sleep>) -> Poll<End> {
        loop {
            let now = mono_ms();
            let before = std::mem::discriminant(&self.phase);
            let step = match self.phase {
                Phase::Open => self.poll_open(cx, now),
                Phase::Closing { .. } => self.poll_closing(cx, now),
                Phase::Lingering { .. } => self.poll_lingering(cx),
            };
            if let Poll::Ready(end) = step {
                return Poll::Ready(end);
            }
            if std::mem::discriminant(&self.phase) != before {
                // A new phase: poll its I/O before sleeping.
                continue;
            }
            if self.up.progressed || self.down.progressed {
                self.up.progressed = false;
                self.down.progressed = false;
                self.last = now;
            }
            let due = self.deadline();
            if due <= now {
                if let Poll::Ready(end) = self.on_deadline(now) {
                    return Poll::Ready(end);
                }
                continue;
            }
            if self.armed == 0 || due < self.armed || sleep.is_elapsed() {
                self.armed = due;
                sleep.as_mut().reset(mono_instant(due));
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: loop to see which deadline (if any) is due.
        }
    }

    fn poll_open(&mut self, cx: &mut Context<'_>, now: u64) -> Poll<End> {
        // The data first, then tether's decisions: an end a peer already sent
        // (a crashed backend's FIN or reset, waiting in the socket) is passed on
        // as it came, not overtaken by a mark-down made after it arrived.
        let up = self
            .up
            .poll(cx, &mut self.client, &mut self.backend, Reading::Open, now);
        if let Poll::Ready(Err(f)) = up {
            return Poll::Ready(self.fail(Peer::Client, f));
        }
        let down = self
            .down
            .poll(cx, &mut self.backend, &mut self.client, Reading::Open, now);
        if let Poll::Ready(Err(f)) = down {
            return Poll::Ready(self.fail(Peer::Backend, f));
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(End::Done);
        }
        if let Some(why) = self.p.ctl.poll_closed(cx) {
            return self.decide(End::Closed(why), now);
        }
        if (up.is_ready() || down.is_ready()) && self.half_since == 0 {
            self.half_since = now;
        }
        Poll::Pending
    }

    /// A side failed: pass a reset on as a reset, anything else as a close.
    fn fail(&mut self, from: Peer, f: Fail) -> End {
        // A read error is the reader's; a write error, the writer's.
        let (who, e) = match (from, f) {
            (p, Fail::Read(e)) => (p, e),
            (Peer::Client, Fail::Write(e)) => (Peer::Backend, e),
            (Peer::Backend, Fail::Write(e)) => (Peer::Client, e),
        };
        let reset = matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        );
        if !reset {
            return End::Error(who, e);
        }
        match who {
            Peer::Client => self.backend.set_reset(),
            Peer::Backend => self.client.set_reset(),
        }
        End::Reset(who)
    }

    /// tether decided to end the tunnel (`why`). Bytes just close; a
    /// WebSocket gets a close frame when one is allowed.
    fn decide(&mut self, why: End, now: u64) -> Poll<End> {
        let code = match &why {
            End::Closed(CloseReason::Moved) => 1012,
            _ => 1001,
        };
        let frame_allowed = self.p.mode == Mode::WebSocket
            && !self.up.saw_close()
            && !self.down.saw_close()
            && !self.down.eof
            && !self.down.shut;
        if !frame_allowed {
            return Poll::Ready(why);
        }
        self.down.at_boundary = self.down.frames.as_ref().is_some_and(|f| f.at_boundary());
        self.phase = Phase::Closing {
            code,
            until: now + GRACE.as_millis() as u64,
            why,
        };
        Poll::Pending
    }

    fn poll_closing(&mut self, cx: &mut Context<'_>, now: u64) -> Poll<End> {
        if !self.backend_fin {
            // Best effort: a backend that does not read may never take a TLS close_notify.
            if Pin::new(&mut self.backend).poll_shutdown(cx).is_ready() {
                self.backend_fin = true;
            }
        }
        let down = self.down.poll(
            cx,
            &mut self.backend,
            &mut self.client,
            Reading::ToBoundary,
            now,
        );
        match down {
            Poll::Ready(Err(f)) => return Poll::Ready(self.fail(Peer::Backend, f)),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {}
        }
        let Phase::Closing { code, .. } = self.phase else {
            return Poll::Pending;
        };
        if self.down.shut || !self.down.at_boundary {
            // The backend ended first: its FIN went on, nothing to add.
            let why = self.take_why();
            return Poll::Ready(why);
        }
        // At the boundary, everything before it written: our frame, then FIN.
        self.down.push(&wsframe::close_frame(code));
        self.down.at_boundary = false;
        self.down.eof = true;
        let why = self.take_why();
        self.phase = Phase::Lingering {
            until: now + GRACE.as_millis() as u64,
            why,
        };
        Poll::Pending
    }

    fn poll_lingering(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        let now = mono_ms();
        // First the close frame and the FIN behind it...
        match self
            .down
            .poll(cx, &mut self.backend, &mut self.client, Reading::Open, now)
        {
            Poll::Ready(Err(_)) => return Poll::Ready(self.take_why()),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {}
        }
        // ...then the client's answer, read and dropped.
        if self.up.eof {
            return Poll::Ready(self.take_why());
        }
        match self.up.poll(
            cx,
            &mut self.client,
            &mut self.backend,
            Reading::Discard,
            now,
        ) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(self.take_why()),
        }
    }

    fn take_why(&mut self) -> End {
        match std::mem::replace(&mut self.phase, Phase::Open) {
            Phase::Closing { why, .. } | Phase::Lingering { why, .. } => why,
            Phase::Open => End::Done,
        }
    }

    /// The earliest moment something must happen without I/O.
    fn deadline(&self) -> u64 {
        match &self.phase {
            Phase::Closing { until, .. } | Phase::Lingering { until, .. } => *until,
            Phase::Open => {
                let idle = self.p.idle.as_millis() as u64;
                let mut due = self.last.saturating_add(idle);
                for b in [self.up.blocked_since, self.down.blocked_since] {
                    if b != 0 {
                        due = due.min(b.saturating_add(idle));
                    }
                }
                if self.half_since != 0 {
                    let half = self.p.half_closed.as_millis() as u64;
                    due = due.min(self.half_since.saturating_add(half));
                }
                due
            }
        }
    }

    fn on_deadline(&mut self, now: u64) -> Poll<End> {
        match self.phase {
            // Out of time for the frame in flight, or for the client's answer: cut.
            Phase::Closing { .. } | Phase::Lingering { .. } => Poll::Ready(self.take_why()),
            Phase::Open => {
                let idle = self.p.idle.as_millis() as u64;
                let stalled = |b: u64| b != 0 && now >= b.saturating_add(idle);
                let why = if stalled(self.up.blocked_since) {
                    End::Stalled(Peer::Backend)
                } else if stalled(self.down.blocked_since) {
                    End::Stalled(Peer::Client)
                } else if self.half_since != 0
                    && now
                        >= self
                            .half_since
                            .saturating_add(self.p.half_closed.as_millis() as u64)
                {
                    End::HalfClosed
                } else {
                    End::Idle
                };
                self.decide(why, now)
            }
        }
    }
}

#[cfg(test)]
mod tests;
