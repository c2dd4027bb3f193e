//! L4: `protocol: tcp` and `protocol: tls` listeners (TLS terminated by
//! `crate::tls`, then the same as tcp), and the PROXY protocol for every listener.
//!
//! A tcp connection is pinned like an HTTP request (same pool, store, health
//! and failover), keyed by its source address, by the server name of a TLS
//! ClientHello (`sni`, passthrough: TLS is never terminated) or by an id
//! matched in its first bytes (`prefix`). The bytes read to find the key are
//! forwarded to the backend untouched; then bytes are copied both ways.
//!
//! Files: `proxy_proto` (PROXY v1/v2 parsing and encoding, pure), `admit`
//! (reading a PROXY header off an accepted socket, trust, counters), `sni`
//! (ClientHello parsing, pure), `opening` (reading a key from the first bytes,
//! bounded), `session` (route, connect with retries, register, then the
//! copy by `crate::tunnel`).

mod admit;
// pub for the property tests (tests/props), which drive `read` over in-memory bytes.
pub mod opening;
pub mod proxy_proto;
mod session;
pub mod sni;

pub use admit::{admit, ClientAddr, ProxyErrors};
pub use session::serve;
