//! L7: HTTP/1.1, HTTP/2 and WebSocket proxying on pingora.
//!
//! `runtime` accepts a connection and [`serve`] takes it from there (TLS
//! handshake on https, h2 or HTTP/1.1 behind the [`conn::ConnStream`] header
//! guard) into pingora's HTTP proxy, whose [`router::Router`] makes every
//! routing decision for the [`listener::ListenerRt`].

pub mod conn;
mod decide;
mod grpc;
pub mod h1;
mod h2_conn;
mod hygiene;
pub mod listener;
pub mod router;
pub mod serve;
mod socket;
mod upstream;
mod watch;
mod websocket;
