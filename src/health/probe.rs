//! One active health probe against one backend address.
//!
//! `tcp` passes once the connection is accepted. `http` sends one HTTP/1.1
//! request with `Connection: close` and judges the status line only: the body
//! and headers are never read, so a slow or huge body cannot stall the checker.
//! The whole probe (connect, write, read) is bounded by one deadline, because a
//! frozen backend accepts connections in its kernel but never answers.
//! Against a pool with upstream `tls`, `http` probes speak HTTPS (verified
//! like every other connection to those backends); `tcp` probes only connect.
//! `grpc` probes are in `grpc`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthKind, PoolTls};
use crate::tls::client::{self as upstream, ConnectError};

/// Longest status line accepted; anything longer is not an HTTP server talking.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// Why a probe failed; the message goes into the mark-down log line.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connection refused")]
    Refused,
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("bad status {0}")]
    BadStatus(u16),
    #[error("bad response: {0}")]
    BadResponse(String),
    #[error("host name not resolved")]
    Unresolved,
    #[error("not serving: {0}")]
    NotServing(String),
}

/// Probe `addr` once as `kind` says, within `timeout`. `HealthKind::None` passes.
pub async fn probe(
    kind: &HealthKind,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), ProbeError> {
    probe_with(kind, addr, timeout, None).await
}

/// [`probe`] over TLS when `tls` is set (the pool's upstream TLS).
pub async fn probe_with(
    kind: &HealthKind,
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&PoolTls>,
) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, run(kind, addr, timeout, tls)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::TimedOut(timeout)),
    }
}

async fn run(
    kind: &HealthKind,
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&PoolTls>,
) -> Result<(), ProbeError> {
    let (method, path, host, expect_status) = match kind {
        HealthKind::None => return Ok(()),
        HealthKind::Tcp => {
            connect(addr).await?;
            return Ok(());
        }
        HealthKind::Grpc { service } => return super::grpc::check(addr, tls, service).await,
        HealthKind::Http {
            method,
            path,
            host,
            expect_status,
        } => (method, path, host, expect_status),
    };
    let mut stream = match tls {
        None => upstream::Upstream::Plain(connect(addr).await?),
        Some(_) => match upstream::connect("(health check)", addr, timeout, tls).await {
            Ok(s) => s,
            Err(ConnectError::Connect(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ProbeError::Refused)
            }
            Err(ConnectError::Connect(e)) => return Err(ProbeError::Connect(e)),
            Err(ConnectError::Timeout(t)) => return Err(ProbeError::TimedOut(t)),
            Err(e @ ConnectError::Tls(_)) => return Err(ProbeError::BadResponse(e.to_string())),
        },
    };
    // SocketAddr's Display brackets IPv6 literals, as a Host header needs.
    let host = match host {
        Some(h) => h.clone(),
        None => addr.to_string(),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tether-health\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::BadResponse(format!("sending the request: {e}")))?;
    let status = read_status(&mut stream).await?;
    if expect_status.contains(&status) {
        Ok(())
    } else {
        Err(ProbeError::BadStatus(status))
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        _ => ProbeError::Connect(e),
    })
}

/// Read until the status line is complete and return its code.
async fn read_status<S: AsyncRead + Unpin>(stream: &mut S) -> Result<u16, ProbeError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            return parse_status_line(&buf[..=nl]);
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(ProbeError::BadResponse("status line too long".to_owned()));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProbeError::BadResponse(format!("reading the status line: {e}")))?;
        if n == 0 {
            let what = if buf.is_empty() {
                "connection closed without a response".to_owned()
            } else {
                "connection closed inside the status line".to_owned()
            };
            return Err(ProbeError::BadResponse(what));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `line` ends with `\n`. With no header slots httparse stops right after the
/// status line (partial or "too many headers"), having filled in the code.
fn parse_status_line(line: &[u8]) -> Result<u16, ProbeError> {
    let mut headers = [];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = resp.parse(line);
    match (parsed, resp.code) {
        (Ok(_) | Err(httparse::Error::TooManyHeaders), Some(code)) => Ok(code),
        (Err(e), _) => Err(ProbeError::BadResponse(format!(
            "not an HTTP/1.x status line ({e}): {:?}",
            String::from_utf8_lossy(line.get(..80).unwrap_or(line)).trim_end()
        ))),
        (Ok(_), None) => Err(ProbeError::BadResponse("no status code".to_owned())),
    }
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
