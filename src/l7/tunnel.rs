//! WebSocket tunnels, driven by tether rather than pingora's proxy loop.
//!
//! pingora 0.9 can tear an upgrade down right after the 101 when the
//! backend answers before the request's empty body is processed (pingora
//! #946), and gives no handle to close a live upgraded connection (#571).
//! So for `Upgrade: websocket` tether connects to the backend itself, relays
//! the handshake, and then copies bytes both ways through the downstream
//! session (which pingora switches to pass-through after a 101), with the
//! listener's idle timeout. A refused upgrade (any status but 101) is relayed
//! as an ordinary response.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::ErrorType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::wsframe::FrameTracker;
use crate::backend::{CloseReason, TunnelCtl};
use crate::config::PoolTls;
use crate::tls::client::{self, ConnectError, Upstream};

/// Largest backend response header block accepted on an upgrade.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body of a refused upgrade relayed back.
const MAX_REFUSAL_BODY: usize = 1 << 20;

pub struct Timeouts {
    pub connect: Duration,
    pub response_header: Duration,
    pub idle: Duration,
}

fn upstream_err(kind: ErrorType, why: impl Into<String>) -> Box<Error> {
    let mut e = Error::explain(kind, why.into());
    e.esource = ErrorSource::Upstream;
    e
}

fn head_bytes(req: &RequestHeader) -> Vec<u8> {
    let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in req.headers.iter() {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Read the backend's response head; returns it and any bytes read past it.
async fn read_head(up: &mut Upstream) -> Result<(ResponseHeader, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = up.read(&mut chunk).await.map_err(|e| {
            upstream_err(
                ErrorType::ReadError,
                format!("reading upgrade response: {e}"),
            )
        })?;
        if n == 0 {
            return Err(upstream_err(
                ErrorType::ConnectionClosed,
                "backend closed before answering the upgrade",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = parsed.code.unwrap_or(502);
                let mut resp = ResponseHeader::build(code, Some(parsed.headers.len()))?;
                for h in parsed.headers.iter() {
                    resp.append_header(h.name.to_owned(), h.value)?;
                }
                return Ok((resp, buf.split_off(len)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(upstream_err(
                    ErrorType::InvalidHTTPHeader,
                    "upgrade response header too large",
                ))
            }
            Err(e) => {
                return Err(upstream_err(
                    ErrorType::InvalidHTTPHeader,
                    format!("bad upgrade response: {e}"),
                ))
            }
        }
    }
}

/// Relay a refused upgrade (not 101) as a plain response, re-framed with Content-Length.
async fn relay_refusal(
    session: &mut Session,
    up: &mut Upstream,
    mut resp: ResponseHeader,
    mut body: Vec<u8>,
) -> Result<()> {
    let len = resp
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let chunked = resp.headers.get("transfer-encoding").is_some();
    if !chunked {
        let want = len.unwrap_or(0).min(MAX_REFUSAL_BODY);
        let mut chunk = [0u8; 4096];
        while body.len() < want {
            match up.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        body.truncate(want);
    } else {
        // A chunked refusal body is not worth decoding: answer with the status alone.
        body.clear();
    }
    resp.remove_header("transfer-encoding");
    resp.remove_header("upgrade");
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("connection", "close")?;
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// Tunnel one WebSocket to `addr` (over TLS when the pool says so). `req` is
/// the upstream request, headers already rewritten. Returns the status sent
/// to the client.
pub async fn websocket(
    session: &mut Session,
    addr: SocketAddr,
    tls: Option<&PoolTls>,
    req: &RequestHeader,
    t: &Timeouts,
    ctl: &TunnelCtl,
) -> Result<u16> {
    let mut up = match client::connect(addr, t.connect, tls).await {
        Ok(s) => s,
        Err(ConnectError::Timeout(_)) => {
            return Err(upstream_err(
                ErrorType::ConnectTimedout,
                format!("connecting {addr}"),
            ))
        }
        Err(ConnectError::Tls(e)) => {
            return Err(upstream_err(
                ErrorType::TLSHandshakeFailure,
                format!("TLS to {addr}: {e}"),
            ))
        }
        Err(ConnectError::Connect(e)) => {
            return Err(upstream_err(
                ErrorType::ConnectRefused,
                format!("connecting {addr}: {e}"),
            ))
        }
    };
    up.write_all(&head_bytes(req)).await.map_err(|e| {
        upstream_err(
            ErrorType::WriteError,
            format!("sending upgrade to {addr}: {e}"),
        )
    })?;
    let (resp, early) = match tokio::time::timeout(t.response_header, read_head(&mut up)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(upstream_err(
                ErrorType::ReadTimedout,
                "backend did not answer the upgrade",
            ))
        }
    };
    let status = resp.status.as_u16();
    if status != 101 {
        relay_refusal(session, &mut up, resp, early).await?;
        return Ok(status);
    }
    session.write_response_header(Box::new(resp), false).await?;
    if !early.is_empty() {
        session
            .write_response_body(Some(Bytes::from(early)), false)
            .await?;
    }
    pump(session, up, t.idle, ctl).await;
    Ok(101)
}

/// A server-to-client WebSocket close frame (unmasked) with `code` and no reason.
fn close_frame(code: u16) -> Bytes {
    let [hi, lo] = code.to_be_bytes();
    Bytes::copy_from_slice(&[0x88, 0x02, hi, lo])
}

/// Copy both ways until either side closes, fails, nothing moves for `idle`,
/// or tether closes the tunnel (backend down or drained out, or shutdown).
/// tether's close frame goes only between two of the backend's frames and
/// never after the backend's own close (see `wsframe`).
async fn pump(session: &mut Session, up: Upstream, idle: Duration, ctl: &TunnelCtl) {
    let (mut up_rd, mut up_wr) = tokio::io::split(up);
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = FrameTracker::default();
    let mut client_open = true;
    // The close code to send the client when we end the tunnel, if any.
    let goodbye = loop {
        let idle_timer = tokio::time::sleep(idle);
        tokio::select! {
            r = session.read_request_body(), if client_open => match r {
                Ok(Some(data)) => {
                    if up_wr.write_all(&data).await.is_err() {
                        break Some(1012);
                    }
                }
                // the client half-closed: pass it on, keep relaying the backend's side
                Ok(None) => {
                    client_open = false;
                    let _ = up_wr.shutdown().await;
                }
                Err(_) => break None,
            },
            r = up_rd.read(&mut buf) => match r {
                // The backend went away (crash, restart): tell the client to reconnect now.
                Ok(0) | Err(_) => break Some(1012),
                Ok(n) => {
                    frames.feed(&buf[..n]);
                    if session.write_response_body(Some(Bytes::copy_from_slice(&buf[..n])), false).await.is_err() {
                        break None;
                    }
                }
            },
            _ = idle_timer => break Some(1001),
            why = ctl.closed() => break Some(match why {
                CloseReason::Moved => 1012,
                CloseReason::Shutdown => 1001,
            }),
        }
    };
    if let Some(code) = goodbye.filter(|_| frames.may_close()) {
        let _ = session
            .write_response_body(Some(close_frame(code)), false)
            .await;
    }
    let _ = session.write_response_body(None, true).await;
}
