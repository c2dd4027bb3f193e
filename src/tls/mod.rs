//! TLS with rustls: termination for `https` (then HTTP, h2 by ALPN) and
//! `tls` (then L4) listeners, and TLS to backends for the connections tether
//! opens itself.
//!
//! Files: `certs` (reading and checking a cert/key PEM pair, shared by config
//! load and reloads), `resolver` (the certificate by SNI, behind an
//! `ArcSwap`), `watch` (polling the files, swapping in good pairs),
//! `acceptor` (the server config, the handshake with its deadline, failure
//! counts), `stream` (a terminated connection as a pingora stream), `client`
//! (upstream TLS).

mod acceptor;
pub mod certs;
pub mod client;
pub mod resolver;
mod stream;
mod watch;

pub use acceptor::{Failure, TlsRt};
pub use certs::{load_pair, CertError, LoadedCert};
pub use stream::TlsConn;
pub use watch::POLL;

/// Aborts a spawned task when dropped (the certificate watcher lives as long
/// as its listener's accept loop).
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
