//! HTTP/1.1 on the wire as tether speaks it itself, where pingora's proxy
//! loop is not in the way: a backend's response head and the framing of the
//! body behind it (RFC 9112 section 6), and the end of a chunked body found
//! while its bytes pass through untouched. WebSocket upgrades use them for
//! the backend's answer to the handshake (a 101, or a refusal relayed as an
//! ordinary response).

pub mod chunked;
pub mod request;
pub mod response;
