//! A refused upgrade (the backend answered anything but 101) goes back to
//! the client as the ordinary response it is: the head at once, then the
//! body as the backend frames it, each read bounded by the pool's
//! `response_idle`. The connection closes after it (`Connection: close`):
//! the client's next request starts afresh.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::h1::chunked::Chunked;
use crate::h1::response::{Framing, Head, HeadError};
use crate::tls::client::Upstream;

/// Headers of the backend's that describe its own connection, not the
/// message: the client's connection is ours and closes after this answer.
const OWN_CONNECTION: [&str; 4] = ["connection", "keep-alive", "proxy-connection", "upgrade"];

#[derive(Debug, thiserror::Error)]
pub(super) enum RelayError {
    /// Nothing sent yet: the client can still get a 502.
    #[error("{0}")]
    Framing(HeadError),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no response bytes for {0:?}")]
    Idle(Duration),
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] crate::h1::chunked::ChunkError),
}

/// The head to send the client: the backend's, minus its connection
/// headers, plus `set_cookie` and `Connection: close`.
pub(super) fn client_head(head: &Head, set_cookie: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.raw.len() + 96);
    let line_end = head.raw.iter().position(|&b| b == b'\n').unwrap_or(0);
    out.extend_from_slice(&head.raw[..=line_end]);
    for (name, value) in head.headers() {
        if OWN_CONNECTION
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(c) = set_cookie {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// Relay the refusal; returns the body bytes sent.
pub(super) async fn relay<C: AsyncWrite + Unpin>(
    client: &mut C,
    up: &mut Upstream,
    head: &Head,
    rest: Vec<u8>,
    set_cookie: Option<&str>,
    idle: Duration,
) -> Result<u64, RelayError> {
    let framing = head.framing(false).map_err(RelayError::Framing)?;
    client.write_all(&client_head(head, set_cookie)).await?;
    let mut chunked = Chunked::default();
    let mut left = match framing {
        Framing::Empty => 0,
        Framing::Length(n) => n,
        Framing::Chunked | Framing::Close => u64::MAX,
    };
    let mut sent = 0u64;
    let mut data = rest;
    loop {
        let take = match framing {
            Framing::Chunked => chunked.feed(&data)?.unwrap_or(data.len()),
            _ => data.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
        };
        client.write_all(&data[..take]).await?;
        sent += take as u64;
        left = left.saturating_sub(take as u64);
        if left == 0 || chunked.is_done() {
            break;
        }
        data.clear();
        data.reserve(16 * 1024);
        match tokio::time::timeout(idle, up.read_buf(&mut data)).await {
            Err(_) => return Err(RelayError::Idle(idle)),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(0)) if framing == Framing::Close => break,
            Ok(Ok(0)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed in the middle of the body",
                )
                .into())
            }
            Ok(Ok(_)) => {}
        }
    }
    client.flush().await?;
    let _ = client.shutdown().await;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_head_drops_connection_headers_and_adds_the_cookie() {
        let raw = b"HTTP/1.1 403 Forbidden\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nSet-Cookie: app=1\r\n\r\n";
        let (head, _) = Head::parse(raw).unwrap().unwrap();
        let out = String::from_utf8(client_head(&head, Some("TETHER=x; Path=/"))).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nSet-Cookie: app=1\r\nset-cookie: TETHER=x; Path=/\r\nconnection: close\r\n\r\n"
        );
    }
}
