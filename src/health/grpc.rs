//! `health.kind: grpc`: the standard `grpc.health.v1.Health/Check`, one
//! unary call on a fresh HTTP/2 connection (TLS with ALPN h2 when the pool
//! has `tls`, else h2c with prior knowledge). The backend passes when the
//! call ends with `grpc-status: 0` and the answer says `SERVING`.
//!
//! The messages are two one-field protobufs, written and read here by hand:
//! `HealthCheckRequest { string service = 1 }` and
//! `HealthCheckResponse { ServingStatus status = 1 }`. The connection is
//! driven inside the probe (not spawned), so the caller's deadline drops it.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::probe::ProbeError;
use crate::config::PoolTls;

const PATH: &str = "/grpc.health.v1.Health/Check";
/// An answer larger than this is not a health response.
const MAX_ANSWER: usize = 4096;
/// `ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// One `Check` of `service` against `addr`.
pub(super) async fn check(
    addr: SocketAddr,
    tls: Option<&PoolTls>,
    service: &str,
) -> Result<(), ProbeError> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        _ => ProbeError::Connect(e),
    })?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return call(tcp, "http", &addr.to_string(), service).await;
    };
    let s = TlsConnector::from(tls.client_h2.clone())
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| ProbeError::BadResponse(format!("TLS handshake: {e}")))?;
    if s.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(ProbeError::BadResponse(
            "the backend did not agree to HTTP/2 (ALPN h2)".to_owned(),
        ));
    }
    call(s, "https", &tls.sni, service).await
}

async fn call<S>(io: S, scheme: &str, authority: &str, service: &str) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let h2err = |what: &str, e: h2::Error| ProbeError::BadResponse(format!("{what}: {e}"));
    let (client, conn) = h2::client::handshake(io)
        .await
        .map_err(|e| h2err("HTTP/2 handshake", e))?;
    let work = async move {
        let mut client = client.ready().await.map_err(|e| h2err("HTTP/2", e))?;
        let req = Request::post(format!("{scheme}://{authority}{PATH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "tether-health")
            .body(())
            .map_err(|e| ProbeError::BadResponse(format!("request: {e}")))?;
        let (answer, mut body) = client
            .send_request(req, false)
            .map_err(|e| h2err("sending the call", e))?;
        body.send_data(request_message(service), true)
            .map_err(|e| h2err("sending the call", e))?;
        let resp = answer.await.map_err(|e| h2err("reading the answer", e))?;
        if resp.status() != http::StatusCode::OK {
            return Err(ProbeError::BadStatus(resp.status().as_u16()));
        }
        let (head, mut recv) = resp.into_parts();
        // Trailers-Only: an error status can come in the head alone.
        if head.headers.contains_key("grpc-status") {
            grpc_status(&head.headers)?;
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(|e| h2err("reading the answer", e))?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
            if buf.len() > MAX_ANSWER {
                return Err(ProbeError::BadResponse("answer too large".to_owned()));
            }
        }
        let trailers = recv
            .trailers()
            .await
            .map_err(|e| h2err("reading the trailers", e))?
            .unwrap_or_default();
        grpc_status(&trailers)?;
        match serving_status(&buf)? {
            SERVING => Ok(()),
            other => Err(ProbeError::NotServing(status_name(other))),
        }
    };
    tokio::pin!(conn);
    tokio::select! {
        r = work => r,
        r = &mut conn => Err(match r {
            Ok(()) => ProbeError::BadResponse("connection closed during the call".to_owned()),
            Err(e) => h2err("HTTP/2 connection", e),
        }),
    }
}

/// The length-prefixed `HealthCheckRequest`.
fn request_message(service: &str) -> Bytes {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(msg.len() + 5);
    framed.push(0); // not compressed
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    Bytes::from(framed)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A call that did not end with `grpc-status: 0` failed.
fn grpc_status(h: &HeaderMap) -> Result<(), ProbeError> {
    let status = h.get("grpc-status").map(|v| v.as_bytes());
    match status {
        Some(b"0") => Ok(()),
        Some(code) => {
            let message = h
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Err(ProbeError::BadResponse(format!(
                "grpc-status {} {message}",
                String::from_utf8_lossy(code)
            )))
        }
        None => Err(ProbeError::BadResponse("no grpc-status".to_owned())),
    }
}

/// `HealthCheckResponse.status` out of one length-prefixed message; an
/// absent field is its default, `UNKNOWN` (0).
fn serving_status(buf: &[u8]) -> Result<u64, ProbeError> {
    let bad = |why: &str| ProbeError::BadResponse(format!("health answer: {why}"));
    let (&flag, rest) = buf.split_first().ok_or_else(|| bad("no message"))?;
    if flag != 0 {
        return Err(bad("compressed"));
    }
    let len = rest
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| bad("truncated"))?;
    let msg = rest.get(4..4 + len).ok_or_else(|| bad("truncated"))?;
    let mut at = 0;
    let mut status = 0;
    while at < msg.len() {
        let tag = get_varint(msg, &mut at).ok_or_else(|| bad("bad field"))?;
        match tag & 7 {
            0 => {
                let v = get_varint(msg, &mut at).ok_or_else(|| bad("bad field"))?;
                if tag >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let n = get_varint(msg, &mut at).ok_or_else(|| bad("bad field"))? as usize;
                at = at
                    .checked_add(n)
                    .filter(|e| *e <= msg.len())
                    .ok_or_else(|| bad("bad field"))?;
            }
            1 => at += 8,
            5 => at += 4,
            _ => return Err(bad("bad field")),
        }
    }
    Ok(status)
}

fn status_name(v: u64) -> String {
    match v {
        0 => "UNKNOWN".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        n => format!("status {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        assert_eq!(&request_message("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("a.B")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'.', b'B']
        );
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]).unwrap(), SERVING);
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]).unwrap(), 2);
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]).unwrap(), 0);
        assert!(serving_status(&[0, 0, 0, 0, 9, 0x08]).is_err());
        assert!(serving_status(&[1, 0, 0, 0, 0]).is_err());
    }
}
