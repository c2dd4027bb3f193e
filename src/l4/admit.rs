//! Admission of an accepted connection on a `proxy_protocol: accept`
//! listener (http and tcp alike), before anything else reads from it.
//!
//! The header is believed only from `server.trusted_proxies`: anyone else
//! could claim any address, so an untrusted peer is closed without reading.
//! From a trusted peer the header is required; it is read with `peek` first,
//! so not one byte past it leaves the socket (for HTTP the request that
//! follows stays for pingora), bounded in size (`proxy_proto`'s bounds) and
//! in time (the listener's `client_header` timeout). Every refusal closes
//! the connection and counts in `tether_proxy_protocol_errors_total`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::proxy_proto::{self, Header, ParseError, V1_MAX};
use crate::l7::listener::ListenerRt;

/// Who a connection is from once its PROXY header (if any) is accounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client: keys, logs and `X-Forwarded-For` use it.
    pub src: SocketAddr,
    /// The address the client connected to, when a PROXY header said so;
    /// `None`: the socket's own local address (looked up only if needed).
    pub dst: Option<SocketAddr>,
}

/// `tether_proxy_protocol_errors_total{listener,reason}`, resolved once per listener.
pub struct ProxyErrors {
    untrusted: IntCounter,
    malformed: IntCounter,
    timeout: IntCounter,
    closed: IntCounter,
}

impl ProxyErrors {
    pub fn new(vec: &IntCounterVec, listener: &str) -> Self {
        let c = |reason: &str| vec.with_label_values(&[listener, reason]);
        ProxyErrors {
            untrusted: c("untrusted"),
            malformed: c("malformed"),
            timeout: c("timeout"),
            closed: c("closed"),
        }
    }

    fn count(&self, e: &AdmitError) {
        match e {
            AdmitError::Untrusted => &self.untrusted,
            AdmitError::Malformed(_) => &self.malformed,
            AdmitError::Timeout(_) => &self.timeout,
            AdmitError::Closed | AdmitError::Io(_) => &self.closed,
        }
        .inc();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("peer is not in server.trusted_proxies: its PROXY header is not believed")]
    Untrusted,
    #[error(transparent)]
    Malformed(#[from] ParseError),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[source] io::Error),
}

/// The client's addresses, or `None` when the connection must be closed
/// (already counted and logged).
pub async fn admit(tcp: &mut TcpStream, peer: SocketAddr, l: &ListenerRt) -> Option<ClientAddr> {
    let own = ClientAddr {
        src: peer,
        dst: None,
    };
    if !l.cfg.proxy_protocol {
        return Some(own);
    }
    let res = if l.is_trusted(peer.ip()) {
        let limit = l.cfg.timeouts.client_header;
        // Boxed: its buffers would otherwise sit in every connection's task for good.
        match Box::pin(tokio::time::timeout(limit, read_header(tcp))).await {
            Ok(r) => r,
            Err(_) => Err(AdmitError::Timeout(limit)),
        }
    } else {
        Err(AdmitError::Untrusted)
    };
    match res {
        Ok(Header {
            addrs: Some((src, dst)),
        }) => Some(ClientAddr {
            src,
            dst: Some(dst),
        }),
        Ok(Header { addrs: None }) => Some(own),
        Err(e) => {
            l.proxy_errors.count(&e);
            // debug: a scan or a misconfigured balancer must not flood the log.
            tracing::debug!(listener = %l.cfg.name, %peer, error = %e, "PROXY header refused");
            None
        }
    }
}

/// Read exactly one header. `peek` until its length is known (a v1 line
/// needs its CRLF, v2 its fixed 16 bytes), then read just that much.
async fn read_header(tcp: &mut TcpStream) -> Result<Header, AdmitError> {
    let mut peeked = [0u8; V1_MAX + 1];
    let mut pause = Duration::from_millis(1);
    let len = loop {
        let n = tcp.peek(&mut peeked).await.map_err(AdmitError::Io)?;
        if n == 0 {
            return Err(AdmitError::Closed);
        }
        if let Some(len) = proxy_proto::header_len(&peeked[..n])? {
            break len;
        }
        // peek keeps answering at once while bytes sit unread: wait for the
        // rest of a header split over segments instead of spinning on it.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let mut buf = vec![0u8; len];
    tcp.read_exact(&mut buf).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => AdmitError::Closed,
        _ => AdmitError::Io(e),
    })?;
    Ok(proxy_proto::parse(&buf)?)
}
