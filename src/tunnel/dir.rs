//! One direction of a tunnel: bytes read from one side are written to the
//! other, an EOF is passed on as a half-close.
//!
//! Reads land in a buffer on the stack of the poll and are written from
//! there at once; only what the writer does not take right away is copied
//! to the heap, and that copy is freed as soon as it is written. So a quiet
//! direction, and one whose writes keep up, holds no buffer at all.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::wsframe::FrameTracker;

/// Largest chunk read at once.
pub(super) const CHUNK: usize = 16 * 1024;

/// Why a direction stopped with an error.
pub(super) enum Fail {
    Read(io::Error),
    Write(io::Error),
}

/// How far a direction may read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reading {
    /// Everything the reader sends.
    Open,
    /// Up to the end of the WebSocket frame in flight, then stop.
    ToBoundary,
    /// Read and drop (after tether's close frame: waiting for the client's).
    Discard,
}

pub(super) struct Dir<'a> {
    /// Bytes read but not yet written (empty, no allocation, most of the time).
    pending: Vec<u8>,
    pos: usize,
    /// The writer buffers (TLS): flush before reading on.
    dirty: bool,
    /// The reader sent EOF.
    pub eof: bool,
    /// The EOF was passed on (the writer's write side is shut down).
    pub shut: bool,
    /// Reached the frame boundary in `ToBoundary` mode; nothing more is read.
    pub at_boundary: bool,
    /// `mono_ms()` since when pending bytes have not moved; 0: not blocked.
    pub blocked_since: u64,
    /// Set by any write progress, for the tunnel's idle timer.
    pub progressed: bool,
    /// WebSocket tunnels: where frames begin and end in this direction.
    pub frames: Option<FrameTracker>,
    pub moved: u64,
    counter: &'a IntCounter,
}

impl<'a> Dir<'a> {
    /// `first`: bytes to write before anything is read (already read from
    /// the reader by someone else).
    pub fn new(first: Vec<u8>, ws: bool, counter: &'a IntCounter) -> Self {
        let mut frames = ws.then(FrameTracker::default);
        if let Some(f) = &mut frames {
            f.feed(&first);
        }
        Dir {
            pending: first,
            pos: 0,
            dirty: false,
            eof: false,
            shut: false,
            at_boundary: false,
            blocked_since: 0,
            progressed: false,
            frames,
            moved: 0,
            counter,
        }
    }

    /// Queue bytes of tether's own (a close frame) behind what is pending.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    pub fn saw_close(&self) -> bool {
        self.frames.as_ref().is_some_and(|f| f.saw_close())
    }

    /// Write what is pending. `Ready(Ok)`: nothing left (flushed).
    fn poll_flush_pending<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        wr: &mut W,
        now: u64,
    ) -> Poll<Result<(), Fail>> {
        while self.pos < self.pending.len() {
            match Pin::new(&mut *wr).poll_write(cx, &self.pending[self.pos..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Fail::Write(io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => {
                    self.pos += n;
                    self.wrote(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Fail::Write(e))),
                Poll::Pending => return self.blocked(now),
            }
        }
        if !self.pending.is_empty() {
            // Written: give the memory back.
            self.pending = Vec::new();
            self.pos = 0;
        }
        if self.dirty {
            match Pin::new(&mut *wr).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.dirty = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Fail::Write(e))),
                Poll::Pending => return self.blocked(now),
            }
        }
        self.blocked_since = 0;
        Poll::Ready(Ok(()))
    }

    fn blocked<T>(&mut self, now: u64) -> Poll<T> {
        if self.blocked_since == 0 {
            self.blocked_since = now;
        }
        Poll::Pending
    }

    fn wrote(&mut self, n: usize) {
        self.dirty = true;
        self.progressed = true;
        self.blocked_since = 0;
        self.moved += n as u64;
        self.counter.inc_by(n as u64);
    }

    /// Move bytes until the reader has nothing more for now or the writer
    /// takes no more. `Ready(Ok)`: finished (EOF passed on, or the frame
    /// boundary reached in `ToBoundary` mode, or EOF read in `Discard`
    /// mode); `Pending`: woken when either side can go on.
    pub fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        rd: &mut R,
        wr: &mut W,
        mode: Reading,
        now: u64,
    ) -> Poll<Result<(), Fail>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if mode != Reading::Discard {
                std::task::ready!(self.poll_flush_pending(cx, wr, now))?;
            }
            if self.eof {
                if mode == Reading::Discard {
                    return Poll::Ready(Ok(()));
                }
                if !self.shut {
                    // A failed shutdown (peer already gone) changes nothing: we are done.
                    if Pin::new(&mut *wr).poll_shutdown(cx).is_pending() {
                        return self.blocked(now);
                    }
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            if self.at_boundary {
                return Poll::Ready(Ok(()));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut rb = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut *rd).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Fail::Read(e))),
                Poll::Ready(Ok(())) => {}
            }
            let mut got = rb.filled();
            if got.is_empty() {
                self.eof = true;
                continue;
            }
            match (mode, &mut self.frames) {
                (Reading::ToBoundary, Some(f)) => {
                    if let Some(k) = f.boundary_in(got) {
                        got = &got[..k];
                        self.at_boundary = true;
                    }
                }
                (Reading::Discard, Some(f)) => {
                    f.feed(got);
                    if f.saw_close() && f.at_boundary() {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                (Reading::Discard, None) => continue,
                (_, Some(f)) => f.feed(got),
                (_, None) => {}
            }
            // Straight from the stack; only what the writer leaves is copied.
            let mut off = 0;
            while off < got.len() {
                match Pin::new(&mut *wr).poll_write(cx, &got[off..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Fail::Write(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.wrote(n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Fail::Write(e))),
                    Poll::Pending => {
                        self.pending = got[off..].to_vec();
                        self.pos = 0;
                        return self.blocked(now);
                    }
                }
            }
        }
    }
}
