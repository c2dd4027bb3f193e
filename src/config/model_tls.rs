//! The typed TLS settings (part of the model, re-exported with it): a TLS
//! listener's certificates, loaded and checked at load time, and a pool's
//! TLS to its backends with its rustls client ready to use.

use std::path::PathBuf;
use std::sync::Arc;

/// `listeners[*].tls`: the certificates of a TLS listener.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// In file order; names are unique. Never empty.
    pub certs: Vec<TlsCert>,
    /// Index into `certs`: for clients without SNI or with a name no certificate has.
    pub default: usize,
    /// Offered in this order; empty: no ALPN.
    pub alpn: Vec<Alpn>,
}

/// One certificate: its files, and the pair as loaded and checked at load time.
#[derive(Debug, Clone)]
pub struct TlsCert {
    pub name: Arc<str>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub loaded: crate::tls::LoadedCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    /// The protocol id on the wire.
    pub fn wire(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// `pools.NAME.tls`: TLS to the backends, verified unless `verify: false`.
#[derive(Debug, Clone)]
pub struct PoolTls {
    /// Sent as SNI and checked against the backends' certificates.
    pub sni: String,
    pub server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
    pub verify: bool,
    /// `ca`, when given: the only roots trusted; otherwise the system's.
    pub ca: Option<std::path::PathBuf>,
    /// The same CA for pingora's connector (HTTP requests).
    pub pingora_ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// For the connections tether opens itself (tcp/tls, WebSockets, health probes).
    pub client: Arc<tokio_rustls::rustls::ClientConfig>,
    /// `client` offering ALPN h2 only (gRPC health probes).
    pub client_h2: Arc<tokio_rustls::rustls::ClientConfig>,
}
