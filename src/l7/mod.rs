//! L7: HTTP/1.1 and WebSocket proxying on pingora.
//!
//! `runtime` accepts a connection, wraps it in a [`conn::ConnStream`] (header
//! deadline and size cap) and hands it to pingora's HTTP proxy, whose
//! [`router::Router`] makes every routing decision for the [`listener::ListenerRt`].

pub mod conn;
pub mod listener;
pub mod router;
pub mod tunnel;
pub mod wsframe;
