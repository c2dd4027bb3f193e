//! tether's own HTTP/1.1 path: the request head parsed once (`crate::h1`),
//! routed (`super::decide`), rewritten in place into the upstream head,
//! forwarded on a pooled keep-alive connection and answered, with as few
//! copies, allocations and syscalls as the exchange allows; upgrades go to
//! the tunnel engine. pingora serves HTTP/2 (and, where a listener asks for
//! it, HTTP/1.1 too, as the reference implementation).
//!
//! Files: `conn` (a client connection: heads, limits, keep-alive, the way
//! out), `exchange` (one request: route, send, retries, the response head),
//! `relay` (the answer's body, tether's own answers, metrics and access
//! log), `rewrite` (the heads tether writes), `pool` (idle upstream
//! connections per backend).

mod conn;
mod exchange;
pub mod pool;
mod relay;
pub mod rewrite;

pub use conn::serve;
