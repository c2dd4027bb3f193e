//! A terminated TLS connection as a pingora [`Stream`](pingora::protocols::Stream):
//! the IO traits pingora's HTTP server needs, answered from the rustls
//! connection (negotiated ALPN, so pingora serves h2 when the client chose
//! it; cipher and version in the SSL digest) or from the TCP stream
//! underneath (socket digest with the client address, timing, id).
//!
//! For h2 it can also bound the wait for the client's connection preface:
//! pingora's h2 handshake has no deadline of its own, and a client that
//! completes TLS and then says nothing would otherwise hold its slot forever.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;

/// Length of the HTTP/2 client connection preface (RFC 9113 3.4).
const H2_PREFACE_LEN: usize = 24;

pub struct TlsConn {
    inner: TlsStream<L4Stream>,
    digest: Option<Arc<SslDigest>>,
    alpn: Option<ALPN>,
    /// Bytes of the h2 preface still expected, and by when.
    preface: Option<(usize, Pin<Box<Sleep>>)>,
}

impl TlsConn {
    pub fn new(inner: TlsStream<L4Stream>) -> TlsConn {
        let conn = inner.get_ref().1;
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown");
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown");
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        TlsConn {
            digest: Some(Arc::new(SslDigest::new(
                cipher,
                version,
                None,
                None,
                Vec::new(),
            ))),
            alpn,
            preface: None,
            inner,
        }
    }

    /// Did ALPN pick HTTP/2?
    pub fn is_h2(&self) -> bool {
        matches!(self.alpn, Some(ALPN::H2))
    }

    /// Fail reads with `TimedOut` unless the h2 preface arrives `within`.
    pub fn expect_preface(&mut self, within: Duration) {
        self.preface = Some((H2_PREFACE_LEN, Box::pin(tokio::time::sleep(within))));
    }

    fn l4(&self) -> &L4Stream {
        self.inner.get_ref().0
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        let Some((left, deadline)) = &mut this.preface else {
            return res;
        };
        if res.is_pending() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the client_header timeout",
                )));
            }
            return Poll::Pending;
        }
        let got = buf.filled().len() - before;
        *left = left.saturating_sub(got);
        if *left == 0 || got == 0 {
            this.preface = None;
        }
        res
    }
}

crate::forward_async_write!(TlsConn);

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("tcp", self.l4())
            .field("alpn", &self.alpn)
            .finish()
    }
}

#[async_trait]
impl Shutdown for TlsConn {
    async fn shutdown(&mut self) {
        // close_notify, then the TCP write side.
        let _ = AsyncWriteExt::shutdown(&mut self.inner).await;
    }
}

impl UniqueID for TlsConn {
    fn id(&self) -> UniqueIDType {
        self.l4().id()
    }
}

impl Ssl for TlsConn {
    fn get_ssl(&self) -> Option<&TlsRef> {
        None
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.digest.clone()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.l4().get_timing_digest()
    }
}

impl GetProxyDigest for TlsConn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.l4().get_proxy_digest()
    }
}

impl GetSocketDigest for TlsConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.l4().get_socket_digest()
    }
}

/// Decrypted bytes cannot be peeked: pingora then goes by ALPN alone.
#[async_trait]
impl Peek for TlsConn {}
