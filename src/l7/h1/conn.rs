//! One client connection on tether's HTTP/1.1 path: request heads read and
//! bounded (the whole-head deadline `client_header`, the size cap
//! `max_header_bytes`: 408 and 431 like the header guard of pingora's path),
//! the keep-alive wait between requests, pipelined requests answered in
//! order, and the way out: a closed connection, or a WebSocket handed to the
//! tunnel engine.
//!
//! The read buffer lives only while bytes are in flight: a connection that
//! waits for its next request gives it back (see [`Conn::fill`]).

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use pingora::server::ShutdownWatch;
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::time::{timeout_at, Instant};

use super::super::listener::ListenerRt;
use super::super::websocket::{self, ClientSide, Tunnel};
use super::exchange::Next;
use super::rewrite;
use crate::h1::request::{self, Request};
use crate::tunnel::Side;

/// Bytes read from the client at once.
const READ_CHUNK: usize = 16 * 1024;
/// How long, and how much, a refused client is still read so it sees the answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

pub struct Conn<'l, C> {
    pub l: &'l ListenerRt,
    pub la: Arc<ListenerRt>,
    pub io: C,
    /// The client (a PROXY header's source when there was one).
    pub peer: SocketAddr,
    /// Client bytes read: `rbuf[rpos..]` not consumed yet.
    pub rbuf: Vec<u8>,
    pub rpos: usize,
    pub req: Request,
    /// Heads being assembled.
    pub out: Vec<u8>,
    /// Backend bytes read and not relayed yet.
    pub ubuf: Vec<u8>,
    pub stop: ShutdownWatch,
    /// Request body bytes sent upstream so far (this request).
    pub body_sent: u64,
    accepted: Instant,
}

/// Why no request head came.
enum HeadEnd {
    /// Closed, failed or idle: nothing to answer.
    Closed,
    /// Answer this status and close.
    Answer(u16),
}

/// Serve HTTP/1.1 requests on `io` until the connection closes. `Some`: a
/// WebSocket is ready to tunnel (its handshake done).
pub async fn serve<C: Side + ClientSide>(
    io: C,
    peer: SocketAddr,
    la: &Arc<ListenerRt>,
    stop: &ShutdownWatch,
) -> Option<Tunnel> {
    let mut c = Conn {
        l: la,
        la: la.clone(),
        io,
        peer,
        rbuf: Vec::new(),
        rpos: 0,
        req: Request::default(),
        out: Vec::new(),
        ubuf: Vec::new(),
        stop: stop.clone(),
        body_sent: 0,
        accepted: Instant::now(),
    };
    let mut first = true;
    loop {
        match c.read_head(first).await {
            Ok(()) => {}
            Err(HeadEnd::Closed) => return None,
            Err(HeadEnd::Answer(status)) => {
                la.own_status.inc(status);
                c.refuse(status).await;
                return None;
            }
        }
        first = false;
        match c.exchange().await {
            Next::Again => continue,
            Next::Close => {
                let _ = c.io.shutdown().await;
                return None;
            }
            Next::Gone => return None,
            Next::Refuse(status) => {
                la.own_status.inc(status);
                c.refuse(status).await;
                return None;
            }
            Next::Upgrade(job, early) => return websocket::open_on(job, c.io, early).await,
        }
    }
}

impl<C: Side> Conn<'_, C> {
    /// Read until a whole request head sits at `rbuf[rpos..]`, parsed into `req`.
    async fn read_head(&mut self, first: bool) -> Result<(), HeadEnd> {
        let cfg = &self.l.cfg;
        // The head's clock starts at its first byte (at accept for the first
        // request: a client that says nothing is cut too).
        let mut deadline = first.then(|| self.accepted + cfg.timeouts.client_header);
        loop {
            let pending = &self.rbuf[self.rpos..];
            if !pending.is_empty() {
                deadline.get_or_insert_with(|| Instant::now() + cfg.timeouts.client_header);
                match request::parse(pending, &mut self.req) {
                    Ok(true) if self.req.len > cfg.max_header_bytes => {
                        return Err(HeadEnd::Answer(431))
                    }
                    Ok(true) => return Ok(()),
                    Ok(false) if pending.len() > cfg.max_header_bytes => {
                        return Err(HeadEnd::Answer(431))
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(listener = %cfg.name, client = %self.peer, error = %e, "bad request head");
                        return Err(HeadEnd::Answer(e.status()));
                    }
                }
            }
            let waiting = self.rbuf.len() == self.rpos;
            let until = deadline.unwrap_or_else(|| Instant::now() + cfg.timeouts.keepalive);
            let stop = self.stop.clone();
            let read = tokio::select! {
                r = timeout_at(until, self.fill()) => r,
                // Shutting down: a connection between requests closes now.
                _ = stopped(stop), if waiting => return Err(HeadEnd::Closed),
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(HeadEnd::Closed),
                Ok(Ok(_)) => {}
                Err(_) if self.rbuf.len() == self.rpos => return Err(HeadEnd::Closed),
                Err(_) => return Err(HeadEnd::Answer(408)),
            }
        }
    }

    /// Read more client bytes behind the unread ones. While nothing is
    /// buffered and the client is quiet, the buffer is given back.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        poll_fn(|cx| {
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let len = self.rbuf.len();
            let mut rb = ReadBuf::uninit(self.rbuf.spare_capacity_mut());
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if len == 0 {
                        self.rbuf = Vec::new();
                    }
                    Poll::Pending
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    // SAFETY: `poll_read` initialised the first `n` bytes of
                    // the spare capacity it was given.
                    unsafe { self.rbuf.set_len(len + n) };
                    Poll::Ready(Ok(n))
                }
            }
        })
        .await
    }

    /// Answer `status` ourselves and close, reading what the client still
    /// sends for a moment so the close does not reset the answer away.
    async fn refuse(&mut self, status: u16) {
        rewrite::own_answer(&mut self.out, status, true);
        let write = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await?;
            self.io.shutdown().await
        };
        if timeout_at(Instant::now() + LINGER, write).await.is_err() {
            return;
        }
        let until = Instant::now() + LINGER;
        let mut drained = 0;
        let mut scratch = vec![0u8; 8192];
        while drained < LINGER_BYTES {
            match timeout_at(
                until,
                tokio::io::AsyncReadExt::read(&mut self.io, &mut scratch),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => return,
            }
        }
    }
}

/// Resolves when shutdown starts (or the watch is gone).
async fn stopped(mut stop: ShutdownWatch) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
