//! TLS to backends (`pools.NAME.tls`) for the connections tether opens
//! itself: tcp/tls listeners, WebSocket tunnels and health probes. HTTP
//! requests go through pingora's connector instead (`l7::router` hands it
//! the same SNI, CA and verification setting).
//!
//! Verification is on unless the config says `verify: false`; the rustls
//! client configuration is built once at config load, with the pool's `ca`
//! or else the system's roots.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use crate::backend::mono_ms;
use crate::config::PoolTls;

/// The client side of one pool's upstream TLS. `verify: false` accepts any
/// certificate (still checking the handshake signatures).
pub fn client_config(roots: RootCertStore, verify: bool) -> ClientConfig {
    super::acceptor::ensure_provider();
    let builder = ClientConfig::builder();
    if verify {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth()
    }
}

/// `verify: false`: any certificate, any name. Only ever set explicitly, and logged at start.
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algs = ring::default_provider().signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algs = ring::default_provider().signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A backend connection: plain TCP, or TLS over it when the pool says so.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Connect(#[source] io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake with the backend failed: {0}")]
    Tls(#[source] io::Error),
}

/// Connect to backend `who` at `addr` (and do the TLS handshake when `tls`
/// is set), all within `limit`.
pub async fn connect(
    who: &str,
    addr: SocketAddr,
    limit: Duration,
    tls: Option<&PoolTls>,
) -> Result<Upstream, ConnectError> {
    connect_with(who, addr, limit, tls, &[]).await
}

/// [`connect`], writing `preamble` on the TCP connection before any TLS:
/// a PROXY header goes in clear ahead of the handshake, as backends that
/// take both (`listen ... ssl proxy_protocol`) expect.
pub async fn connect_with(
    who: &str,
    addr: SocketAddr,
    limit: Duration,
    tls: Option<&PoolTls>,
    preamble: &[u8],
) -> Result<Upstream, ConnectError> {
    let work = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(ConnectError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            tcp.write_all(preamble)
                .await
                .map_err(ConnectError::Connect)?;
            return Ok(Upstream::Plain(tcp));
        };
        tcp.write_all(preamble)
            .await
            .map_err(ConnectError::Connect)?;
        let connector = TlsConnector::from(tls.client.clone());
        match connector.connect(tls.server_name.clone(), tcp).await {
            Ok(s) => Ok(Upstream::Tls(Box::new(s))),
            Err(e) => {
                warn_limited(&format!(
                    "upstream TLS to backend {who} ({addr}, sni {}) failed: {e}",
                    tls.sni
                ));
                Err(ConnectError::Tls(e))
            }
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(limit)),
    }
}

/// A failing upstream handshake is a configuration problem worth a warning,
/// but every connection would repeat it: at most one such line per second.
pub fn warn_limited(message: &str) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = mono_ms();
    let last = LAST.load(Ordering::Relaxed);
    if (last == 0 || now.saturating_sub(last) >= 1000)
        && LAST
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!("{message}");
    }
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
