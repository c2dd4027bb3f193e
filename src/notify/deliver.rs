//! The sender task: takes serialized events off the bounded queue and POSTs
//! them to the webhook one at a time, in order (a `drain_pending` reaches the
//! receiver before the `moved` that follows it), retrying with exponential
//! backoff; counts each outcome in `tether_notifications_total`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::Options;
use crate::config::Webhook;
use crate::metrics::Metrics;

/// A serialized event waiting for delivery.
pub(crate) struct Queued {
    /// For the metric label.
    pub pool: String,
    pub body: Vec<u8>,
}

/// Why one attempt did not get a 2xx.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a status line")]
    NoResponse,
    #[error("not an HTTP response: {0:?}")]
    BadResponse(String),
    #[error("answered {0}")]
    Status(u16),
}

/// Status lines longer than this are not HTTP.
const MAX_STATUS_LINE: usize = 1024;

pub(crate) async fn run(
    mut rx: mpsc::Receiver<Queued>,
    webhook: Webhook,
    metrics: Arc<Metrics>,
    opts: Options,
) {
    // Ends when the flusher and every Notifier are gone and the queue is empty.
    while let Some(q) = rx.recv().await {
        let result = if deliver(&webhook, &q.body, &opts).await {
            "sent"
        } else {
            "failed"
        };
        metrics
            .notifications
            .with_label_values(&[q.pool.as_str(), result])
            .inc();
    }
}

/// Up to `opts.attempts` POSTs; true once one got a 2xx.
async fn deliver(webhook: &Webhook, body: &[u8], opts: &Options) -> bool {
    let mut delay = opts.backoff;
    let mut attempt = 1;
    loop {
        let error = match tokio::time::timeout(opts.timeout, post(webhook, body)).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e,
            Err(_) => PostError::Timeout(opts.timeout),
        };
        if attempt >= opts.attempts {
            tracing::warn!(%webhook, attempts = attempt, %error, "notification given up");
            return false;
        }
        tracing::debug!(%webhook, attempt, %error, retry_in = ?delay, "notification failed");
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
        attempt += 1;
    }
}

/// One HTTP/1.1 POST on a fresh connection; Ok on a 2xx status.
async fn post(webhook: &Webhook, body: &[u8]) -> Result<(), PostError> {
    let mut stream = TcpStream::connect((webhook.host.as_str(), webhook.port))
        .await
        .map_err(PostError::Connect)?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tether/{}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        webhook.path,
        webhook.authority(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    // One buffer, one write: the request leaves in as few segments as possible.
    let mut request = Vec::with_capacity(head.len() + body.len());
    request.extend_from_slice(head.as_bytes());
    request.extend_from_slice(body);
    stream.write_all(&request).await?;
    let status = read_status(&mut stream).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(PostError::Status(status))
    }
}

/// The status code of the response's first line. The rest is not read: the
/// status is all we need and `Connection: close` ends the exchange.
async fn read_status(stream: &mut TcpStream) -> Result<u16, PostError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(PostError::NoResponse);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(PostError::BadResponse(lossy(&buf[..64])));
        }
    };
    let line = &buf[..line_end];
    let mut parts = line.split(|b| *b == b' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let status = std::str::from_utf8(code)
        .ok()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse::<u16>().ok());
    match status {
        Some(s) if version.starts_with(b"HTTP/1.") => Ok(s),
        _ => Err(PostError::BadResponse(lossy(line))),
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
