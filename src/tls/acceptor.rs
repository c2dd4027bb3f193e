//! One TLS listener at run time: its rustls server configuration (TLS 1.2
//! and 1.3, certificate by SNI through the swappable [`Resolver`], ALPN as
//! configured), the handshake with its deadline, and the count of failed
//! handshakes by reason.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::resolver::{CertSet, Entry, Resolver};
use crate::config::ListenerTls;
use crate::metrics::Metrics;

/// Why a handshake failed: the `reason` label of `tether_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No complete handshake within the listener's `client_header` timeout.
    Timeout,
    /// The client went away mid-handshake.
    Closed,
    /// Not TLS, or TLS spoken wrongly (a plain HTTP request on the port, garbage).
    Protocol,
    /// Nothing in common: versions, cipher suites, signature schemes or ALPN.
    Incompatible,
    /// The client aborted with an alert (typically: it does not trust our certificate).
    Alert,
    /// No certificate for the client's name and no default.
    NoCert,
    Other,
}

impl Failure {
    const ALL: [Failure; 7] = [
        Failure::Timeout,
        Failure::Closed,
        Failure::Protocol,
        Failure::Incompatible,
        Failure::Alert,
        Failure::NoCert,
        Failure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::Protocol => "protocol",
            Failure::Incompatible => "incompatible",
            Failure::Alert => "alert",
            Failure::NoCert => "no_cert",
            Failure::Other => "other",
        }
    }

    /// Sort a handshake error from tokio-rustls (a rustls error inside an io::Error).
    pub fn of(e: &io::Error) -> Failure {
        use rustls::Error as E;
        match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
            Some(E::General(m)) if m.contains("no server certificate") => Failure::NoCert,
            Some(
                E::InvalidMessage(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::DecryptError
                | E::PeerMisbehaved(_),
            ) => Failure::Protocol,
            Some(E::PeerIncompatible(_) | E::NoApplicationProtocol) => Failure::Incompatible,
            Some(E::AlertReceived(_)) => Failure::Alert,
            Some(_) => Failure::Other,
            None => match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => Failure::Closed,
                _ => Failure::Other,
            },
        }
    }
}

pub struct TlsRt {
    pub(super) listener: Arc<str>,
    acceptor: TlsAcceptor,
    pub(super) resolver: Arc<Resolver>,
    /// `(cert, key)` file of each entry, in the resolver's order.
    pub(super) files: Vec<(PathBuf, PathBuf)>,
    failures: Vec<IntCounter>,
    pub(super) reloads: IntCounterVec,
}

/// rustls needs one process-wide provider; ring is the one pingora builds with.
pub(crate) fn ensure_provider() {
    // An error only says one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TlsRt {
    pub fn new(listener: &str, cfg: &ListenerTls, m: &Metrics) -> TlsRt {
        ensure_provider();
        m.certs_at_zero(listener, cfg.certs.iter().map(|c| &*c.name));
        let entries = cfg
            .certs
            .iter()
            .map(|c| Entry {
                name: c.name.clone(),
                cert: c.loaded.clone(),
            })
            .collect();
        let resolver = Arc::new(Resolver::new(CertSet::new(entries, cfg.default)));
        // rustls' defaults are TLS 1.3 and 1.2, the only versions it has.
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = cfg.alpn.iter().map(|a| a.wire().to_vec()).collect();
        TlsRt {
            listener: Arc::from(listener),
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            files: cfg
                .certs
                .iter()
                .map(|c| (c.cert.clone(), c.key.clone()))
                .collect(),
            failures: Failure::ALL
                .iter()
                .map(|f| {
                    m.tls_handshake_failures
                        .with_label_values(&[listener, f.as_str()])
                })
                .collect(),
            reloads: m.tls_cert_reloads.clone(),
        }
    }

    pub fn count(&self, f: Failure) {
        if let Some(c) = Failure::ALL
            .iter()
            .position(|x| *x == f)
            .and_then(|i| self.failures.get(i))
        {
            c.inc();
        }
    }

    /// The handshake, within `limit`; `None` (counted, logged at debug) when it failed.
    pub async fn accept<S>(&self, io: S, limit: Duration, peer: SocketAddr) -> Option<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let failure = match tokio::time::timeout(limit, self.acceptor.accept(io)).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => {
                let f = Failure::of(&e);
                // debug: scanners and broken clients must not flood the log.
                tracing::debug!(listener = %self.listener, %peer, reason = f.as_str(), error = %e, "TLS handshake failed");
                f
            }
            Err(_) => {
                tracing::debug!(listener = %self.listener, %peer, "TLS handshake timed out");
                Failure::Timeout
            }
        };
        self.count(failure);
        None
    }
}
