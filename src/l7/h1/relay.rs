//! The backend's answer, relayed to the client: its head rewritten
//! (`rewrite::response_head`), its body in the backend's framing (length,
//! chunked with trailers, or until the backend closes), de-chunked for an
//! HTTP/1.0 client, chunked for an HTTP/1.1 client when the backend's body
//! ends at its close (so the client's connection stays open, and a body the
//! backend cuts short shows as such), with `response_idle` between the
//! backend's reads and the listener's `idle` for the client's writes; then
//! the upstream connection goes back to the pool when nothing about it is in
//! doubt. A body whose framing is invalid before any byte went to the client
//! is a 502. Also tether's own answers and the request's metrics and
//! access-log line.

use std::io::{IoSlice, Write as _};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use super::conn::Conn;
use super::exchange::{Job, Next, Sent};
use super::rewrite::{self, Keep, Reframe};
use crate::backend::BackendRt;
use crate::h1::chunked::Chunked;
use crate::h1::request::Method;
use crate::h1::response::{Framing, Head};
use crate::pool::{Failure, Fault};
use crate::tls::client::Upstream;
use crate::tunnel::Side;

/// A head and a body this small leave in one write.
const COALESCE: usize = 8 * 1024;

/// How relaying a body ended badly.
enum Cut {
    /// The client went away or stopped reading.
    Client,
    /// The backend failed, closed early or was silent past `response_idle`:
    /// the client's response is incomplete, so its connection must close.
    Backend,
    /// The body's framing is invalid and nothing was sent to the client yet.
    Invalid,
}

/// Does the backend keep its connection open after this response?
fn backend_keeps(head: &Head) -> bool {
    let mut close = false;
    let mut keep = false;
    for v in head.values("connection") {
        for t in v.split(|&b| b == b',') {
            let t = t.trim_ascii();
            close |= t.eq_ignore_ascii_case(b"close");
            keep |= t.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (head.minor >= 1 || keep)
}

impl<C: Side> Conn<'_, C> {
    /// Relay the answer in `sent` and finish the exchange.
    pub(super) async fn relay(&mut self, job: Job, sent: Sent) -> Next {
        let Sent {
            b,
            mut up,
            addr,
            head,
            body_unread,
        } = sent;
        let l = self.l;
        let framing = match head.framing(self.req.method == Method::Head) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(backend = %b.id, error = %e, "invalid response framing: answered 502");
                self.log(&job, None, 502, (self.body_sent, 0));
                return self.own(502, true).await;
            }
        };
        let status = head.status;
        if status >= 500 && l.pool.passive_5xx() {
            l.pool
                .passive_failure(&b, Failure::new(Fault::ServerError, true));
        }
        let reframe = match framing {
            Framing::Chunked if self.req.minor == 0 => Reframe::Dechunk,
            // Close-delimited for want of any framing (not after a final
            // coding other than chunked, which stays as the backend sent it).
            Framing::Close
                if self.req.minor == 1 && head.values("transfer-encoding").next().is_none() =>
            {
                Reframe::Chunk
            }
            _ => Reframe::None,
        };
        let stopping = *self.stop.borrow();
        let client_keeps = self.req.keep_alive
            && (framing != Framing::Close || reframe == Reframe::Chunk)
            && reframe != Reframe::Dechunk
            && !body_unread
            && !stopping;
        let keep = match (client_keeps, self.req.minor) {
            (false, _) => Keep::Close,
            (true, 0) => Keep::Confirm,
            _ => Keep::Default,
        };
        rewrite::response_head(
            &mut self.out,
            l,
            &head,
            job.set_cookie.as_deref(),
            keep,
            reframe,
        );
        let head_len = head.raw.len();
        let backend_keeps = backend_keeps(&head);
        drop(head);
        b.upstream_active.inc();
        let relayed = self.relay_body(&mut up, framing, reframe, head_len).await;
        b.upstream_active.dec();
        let (sent_out, clean) = match relayed {
            Ok(r) => r,
            Err((_, Cut::Invalid)) => {
                tracing::warn!(backend = %b.id, "invalid response body framing: answered 502");
                self.out.clear();
                self.log(&job, None, 502, (self.body_sent, 0));
                return self.own(502, true).await;
            }
            Err((n, cut)) => {
                self.log(&job, Some(&b), status, (self.body_sent, n));
                return match cut {
                    Cut::Client | Cut::Backend | Cut::Invalid => Next::Gone,
                };
            }
        };
        if clean && backend_keeps && framing != Framing::Close && !body_unread {
            b.conns.put(up, addr);
        }
        self.log(&job, Some(&b), status, (self.body_sent, sent_out));
        match keep {
            Keep::Close => Next::Close,
            _ => Next::Again,
        }
    }

    /// Relay the body behind the head now in `out` (the backend's bytes
    /// past its head start at `ubuf[pos..]`). Returns the body bytes sent and
    /// whether the backend sent nothing beyond the body (reusable).
    async fn relay_body(
        &mut self,
        up: &mut Upstream,
        framing: Framing,
        reframe: Reframe,
        mut pos: usize,
    ) -> Result<(u64, bool), (u64, Cut)> {
        let dechunk = reframe == Reframe::Dechunk;
        let upstream_idle = self.l.pool.cfg().timeouts.response_idle;
        let client_idle = self.l.cfg.timeouts.idle;
        let mut chunked = Chunked::default();
        let mut left = match framing {
            Framing::Empty => 0,
            Framing::Length(n) => n,
            Framing::Chunked | Framing::Close => u64::MAX,
        };
        let mut sent = 0u64;
        let mut plain = Vec::new();
        loop {
            let avail = &self.ubuf[pos..];
            // Invalid framing before the head left: the client gets a 502.
            let bad = if self.out.is_empty() {
                Cut::Backend
            } else {
                Cut::Invalid
            };
            let (take, done) = match framing {
                Framing::Chunked if dechunk => {
                    plain.clear();
                    let end = chunked
                        .feed_with(avail, |p| plain.extend_from_slice(p))
                        .map_err(|_| (sent, bad))?;
                    (end.unwrap_or(avail.len()), end.is_some())
                }
                Framing::Chunked => {
                    let end = chunked.feed(avail).map_err(|_| (sent, bad))?;
                    (end.unwrap_or(avail.len()), end.is_some())
                }
                _ => {
                    let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    (n, n as u64 == left)
                }
            };
            if reframe == Reframe::Chunk {
                plain.clear();
                if take > 0 {
                    let _ = write!(plain, "{take:x}\r\n");
                    plain.extend_from_slice(&avail[..take]);
                    plain.extend_from_slice(b"\r\n");
                }
            }
            let body = if reframe == Reframe::None {
                &avail[..take]
            } else {
                &plain[..]
            };
            let write = if !self.out.is_empty() && body.len() <= COALESCE {
                // The head and a small body: one write.
                self.out.extend_from_slice(body);
                let r = timeout(client_idle, write_all(&mut self.io, &self.out)).await;
                self.out.clear();
                r
            } else if !self.out.is_empty() {
                let r = timeout(client_idle, write_two(&mut self.io, &self.out, body)).await;
                self.out.clear();
                r
            } else if !body.is_empty() {
                timeout(client_idle, write_all(&mut self.io, body)).await
            } else {
                Ok(Ok(()))
            };
            if !matches!(write, Ok(Ok(()))) {
                return Err((sent, Cut::Client));
            }
            let payload = if reframe == Reframe::Chunk {
                take
            } else {
                body.len()
            };
            sent += payload as u64;
            self.l.bytes_out.inc_by(payload as u64);
            pos += take;
            left = left.saturating_sub(take as u64);
            if done || left == 0 {
                let clean = pos == self.ubuf.len();
                self.ubuf.clear();
                return Ok((sent, clean));
            }
            self.ubuf.clear();
            pos = 0;
            self.ubuf.reserve(16 * 1024);
            match timeout(upstream_idle, up.read_buf(&mut self.ubuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                // The backend closed: the end of a close-delimited body.
                Ok(Ok(_)) if framing == Framing::Close => {
                    if reframe == Reframe::Chunk {
                        let end = timeout(client_idle, write_all(&mut self.io, b"0\r\n\r\n"));
                        if !matches!(end.await, Ok(Ok(()))) {
                            return Err((sent, Cut::Client));
                        }
                    }
                    let _ = self.io.flush().await;
                    return Ok((sent, false));
                }
                _ => {
                    self.ubuf.clear();
                    return Err((sent, Cut::Backend));
                }
            }
        }
    }

    /// Answer `status` ourselves. `close`: and close the connection (also
    /// done when the request announced a body that was not read).
    pub(super) async fn own(&mut self, status: u16, close: bool) -> Next {
        let unread_body = !matches!(self.req.body, None | Some(crate::h1::request::Body::None));
        let close = close || unread_body || !self.req.keep_alive || *self.stop.borrow();
        rewrite::own_answer(&mut self.out, status, close);
        let idle = self.l.cfg.timeouts.idle;
        let r = timeout(idle, write_all(&mut self.io, &self.out)).await;
        self.out.clear();
        match (r, close) {
            (Ok(Ok(())), false) => Next::Again,
            (Ok(Ok(())), true) => Next::Close,
            _ => Next::Gone,
        }
    }

    /// [`Self::own`] for an answer given before any backend was chosen:
    /// counted as tether's own.
    pub(super) async fn own_counted(
        &mut self,
        status: u16,
        close: bool,
        started: tokio::time::Instant,
    ) -> Next {
        self.l.own_status.inc(status);
        self.l.duration.observe(started.elapsed().as_secs_f64());
        self.own(status, close).await
    }

    /// Metrics and the access-log line of one request; `b`: the backend
    /// that answered (`None`: tether did).
    pub(super) fn log(
        &self,
        job: &Job,
        b: Option<&Arc<BackendRt>>,
        status: u16,
        bytes: (u64, u64),
    ) {
        let l = self.l;
        if let (Some((from, reason)), 100..=499) = (&job.moved, status) {
            l.pool.observe_move(from, *reason);
        }
        if status != 0 {
            match b {
                Some(b) => {
                    let i = l.pool.view().index_of(b).unwrap_or(usize::MAX);
                    l.count_status(i, b, status);
                }
                None => l.own_status.inc(status),
            }
        }
        l.duration.observe(job.started.elapsed().as_secs_f64());
        if l.cfg.access_log {
            let method = job.method.as_str();
            tracing::info!(
                target: "tether::access",
                listener = %l.cfg.name,
                pool = %l.pool.name,
                backend = %b.map_or("", |b| &*b.id),
                client = %job.client_ip,
                method = %method,
                status,
                session = %job.session.as_deref().unwrap_or(""),
                bytes_in = bytes.0,
                bytes_out = bytes.1,
                duration_ms = job.started.elapsed().as_millis() as u64,
                moved_from = %job.moved.as_ref().map_or("", |(f, _)| &**f),
                "request"
            );
        }
    }
}

async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Two buffers, with as few writes as the kernel allows.
async fn write_two<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    a: &[u8],
    b: &[u8],
) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    w.write_all(b).await?;
    w.flush().await
}
