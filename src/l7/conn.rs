//! A downstream connection wrapper that enforces the request-header limits
//! pingora leaves fixed: a whole-header deadline (`client_header`, the slowloris
//! guard: pingora only times out single reads) and a size cap answered with
//! 431 (pingora's own cap is ~1 MB and answers 400).
//!
//! The wrapper watches the bytes pingora reads. It is armed when a request
//! starts (at accept, then at the first byte after `ConnInfo::request_done`)
//! and disarmed at the blank line ending the header block, so bodies and
//! upgraded (WebSocket) traffic pass through with one branch of overhead. On a
//! violation it writes a short error response itself, drains what the client
//! is still sending (so the close does not reset the response away), and then
//! fails the read, which makes pingora drop the connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    raw_connect::ProxyDigest, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown,
    SocketDigest, Ssl, Stream, TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `impl AsyncWrite` for a wrapper whose writes all go to its `inner` field
/// unchanged (the wrappers only add behaviour on the read side).
#[macro_export]
macro_rules! forward_async_write {
    ($t:ty) => {
        impl tokio::io::AsyncWrite for $t {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                b: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}

const RESP_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const RESP_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// How long, and how much, we keep reading from a rejected client so it sees our answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// Per-connection state shared with the request filters.
#[derive(Default)]
pub struct ConnInfo {
    rearm: AtomicBool,
    /// A request pingora handed to tether to finish itself (a WebSocket
    /// upgrade): taken by `serve` once pingora lets go of the connection.
    handoff: std::sync::Mutex<Option<Box<super::websocket::Job>>>,
}

impl ConnInfo {
    /// The current request is finished: the next bytes start a new header block.
    pub fn request_done(&self) {
        self.rearm.store(true, Ordering::Release);
    }

    pub fn hand_off(&self, job: Box<super::websocket::Job>) {
        if let Ok(mut h) = self.handoff.lock() {
            *h = Some(job);
        }
    }

    pub fn take_handoff(&self) -> Option<Box<super::websocket::Job>> {
        self.handoff.lock().ok()?.take()
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

enum Phase {
    /// Waiting for the first byte of the next request (keepalive idle is pingora's).
    Idle,
    /// Inside a header block: `seen` bytes so far, `nl` = the last non-CR byte was LF.
    Header { seen: usize, nl: bool },
    /// Body or upgraded bytes.
    Passing,
    /// Writing `resp` (from `written`), then draining until `done`.
    Rejecting {
        resp: &'static [u8],
        written: usize,
        drained: usize,
        nl: bool,
    },
}

/// Like pingora's own listeners (which we cannot configure from outside),
/// buffer writes up to one MSS so a response header and a small body leave in
/// one segment, one syscall.
const WRITE_BUFFER: usize = 1460;

pub struct ConnStream {
    inner: BufWriter<Stream>,
    limits: HeaderLimits,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    info: Arc<ConnInfo>,
    /// Bytes that came in the same read as the end of the last header block,
    /// after it: pingora holds them as the start of the body (or of the next
    /// request); a hand-off needs them back (a WebSocket's first frames).
    tail: Vec<u8>,
}

impl ConnStream {
    pub fn new(inner: Stream, limits: HeaderLimits, info: Arc<ConnInfo>) -> Self {
        ConnStream {
            inner: BufWriter::with_capacity(WRITE_BUFFER, inner),
            limits,
            // The first request's header clock starts at accept: a silent client is cut too.
            phase: Phase::Header { seen: 0, nl: false },
            deadline: Box::pin(tokio::time::sleep(limits.timeout)),
            info,
            tail: Vec::new(),
        }
    }

    pub fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    /// The connection without the guard, and the bytes read past the last
    /// request head. Only once nothing is left to write (pingora flushes
    /// when a request finishes).
    pub fn into_parts(self) -> (Stream, Vec<u8>) {
        (self.inner.into_inner(), self.tail)
    }

    fn reject(&mut self, resp: &'static [u8], nl: bool) {
        self.phase = Phase::Rejecting {
            resp,
            written: 0,
            drained: 0,
            nl,
        };
        self.deadline.as_mut().reset(Instant::now() + LINGER);
    }

    /// Scan freshly read bytes for the end of the header block.
    fn scan(&mut self, data: &[u8]) {
        let Phase::Header { seen, nl } = &mut self.phase else {
            return;
        };
        for (i, &b) in data.iter().enumerate() {
            match b {
                b'\n' if *nl => {
                    if *seen + i + 1 > self.limits.max_bytes {
                        break;
                    }
                    self.phase = Phase::Passing;
                    self.tail.clear();
                    self.tail.extend_from_slice(&data[i + 1..]);
                    return;
                }
                b'\n' => *nl = true,
                b'\r' => {}
                _ => *nl = false,
            }
        }
        *seen += data.len();
        if *seen > self.limits.max_bytes {
            let nl = *nl;
            self.reject(RESP_431, nl);
        }
    }

    fn poll_reject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Phase::Rejecting {
                resp,
                written,
                drained,
                nl,
            } = &mut self.phase
            else {
                return Poll::Ready(Ok(()));
            };
            if *written < resp.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &resp[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
                continue;
            }
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            if *drained >= LINGER_BYTES || self.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(()));
            }
            *drained += got.len();
            for &b in got {
                match b {
                    b'\n' if *nl => return Poll::Ready(Ok(())),
                    b'\n' => *nl = true,
                    b'\r' => {}
                    _ => *nl = false,
                }
            }
        }
    }
}

impl AsyncRead for ConnStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Passing) && this.info.rearm.swap(false, Ordering::AcqRel) {
            this.phase = Phase::Idle;
        }
        match this.phase {
            Phase::Passing => return Pin::new(&mut this.inner).poll_read(cx, buf),
            Phase::Rejecting { resp, .. } => {
                ready!(this.poll_reject(cx))?;
                let why = if resp == RESP_431 {
                    "request header too large"
                } else {
                    "request header timeout"
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)));
            }
            Phase::Header { seen, nl } => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    if seen == 0 {
                        return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                    }
                    this.reject(RESP_408, nl);
                    return Pin::new(this).poll_read(cx, buf);
                }
            }
            Phase::Idle => {}
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let start = buf.filled().len();
        if start > before && matches!(this.phase, Phase::Idle) {
            this.phase = Phase::Header { seen: 0, nl: false };
            let t = this.limits.timeout;
            this.deadline.as_mut().reset(Instant::now() + t);
        }
        this.scan(&buf.filled()[before..start]);
        if let Phase::Rejecting { .. } = this.phase {
            // Hide the oversized bytes from pingora: it gets the error on its next read.
            buf.set_filled(before);
            return Pin::new(this).poll_read(cx, buf);
        }
        Poll::Ready(Ok(()))
    }
}

crate::forward_async_write!(ConnStream);

impl fmt::Debug for ConnStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnStream")
            .field("inner", self.inner.get_ref())
            .finish()
    }
}

#[async_trait]
impl Shutdown for ConnStream {
    async fn shutdown(&mut self) {
        let _ = self.inner.flush().await;
        Shutdown::shutdown(&mut **self.inner.get_mut()).await
    }
}

impl UniqueID for ConnStream {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().id()
    }
}

impl Ssl for ConnStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ref().get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ref().get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.get_ref().selected_alpn_proto()
    }
}

impl GetTimingDigest for ConnStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().get_timing_digest()
    }
}

impl GetProxyDigest for ConnStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_ref().get_proxy_digest()
    }
}

impl GetSocketDigest for ConnStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().get_socket_digest()
    }
}

#[async_trait]
impl Peek for ConnStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.get_mut().try_peek(buf).await
    }
}
