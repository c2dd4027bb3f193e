//! The upgrade request to the backend and its answer: connect, send the
//! head, read the response head, with retries on other live backends (spec
//! rule 5) and passive health for what the backend caused.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::Job;
use crate::backend::BackendRt;
use crate::config::Pool;
use crate::h1::response::{Head, HeadError, MAX_HEAD};
use crate::pool::{self, Fault};
use crate::tls::client::{self, ConnectError, Upstream};

/// Other backends tried after a failed one, as for any request.
const MAX_RETRIES: usize = 2;

/// The backend's final answer to the upgrade request.
pub(super) struct Exchange {
    pub backend: Arc<BackendRt>,
    pub upstream: Upstream,
    pub head: Head,
    /// What came after the head: the first tunnel bytes, or the start of a
    /// refusal's body.
    pub rest: Vec<u8>,
    /// Interim (1xx) heads that came first, to relay before the final one.
    pub interim: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("connecting: {0}")]
    Connect(ConnectError),
    #[error("no backend address (host name not resolved)")]
    Unresolved,
    #[error("connection lost before the response head: {0}")]
    Lost(io::Error),
    #[error("no response head within {0:?}")]
    Silent(Duration),
    #[error("{0}")]
    Invalid(HeadError),
}

impl Failure {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Failure::Silent(_) | Failure::Connect(ConnectError::Timeout(_)) => 504,
            _ => 502,
        }
    }

    /// As passive health sees it (`pool::passive` decides what counts). The
    /// upgrade request is a head alone, in tether's hands before it connects,
    /// so it is always complete: a reset or silence is the backend's.
    fn passive(&self) -> pool::Failure {
        let fault = match self {
            Failure::Connect(_) => Fault::Connect,
            Failure::Lost(_) => Fault::Reset,
            Failure::Silent(_) => Fault::Silent,
            Failure::Unresolved | Failure::Invalid(_) => Fault::Other,
        };
        pool::Failure::new(fault, true)
    }

    /// May the request go to another backend? Nothing reached the
    /// application yet (an upgrade request is a GET); a silent backend is
    /// not retried, which would double the wait.
    fn retryable(&self) -> bool {
        matches!(
            self,
            Failure::Connect(_) | Failure::Unresolved | Failure::Lost(_)
        )
    }
}

/// Send the upgrade to the job's backend, or on failure to the backend the
/// re-pin would choose without it (so a client whose backend just died
/// moves once), at most `MAX_RETRIES` more.
pub(super) async fn exchange(job: &Job) -> Result<Exchange, Failure> {
    let pool = &job.l.pool;
    let mut b = job.backend.clone();
    let mut tried = Vec::with_capacity(MAX_RETRIES + 1);
    loop {
        let cfg = pool.cfg();
        let fail = match attempt(&b, &cfg, &job.head).await {
            Ok((upstream, head, rest, interim)) => {
                b.passive_success();
                return Ok(Exchange {
                    backend: b,
                    upstream,
                    head,
                    rest,
                    interim,
                });
            }
            Err(f) => f,
        };
        tracing::debug!(pool = %pool.name, backend = %b.id, error = %fail, "websocket upgrade attempt failed");
        pool.passive_failure(&b, fail.passive());
        if !fail.retryable() {
            return Err(fail);
        }
        tried.push(b);
        if tried.len() > MAX_RETRIES {
            return Err(fail);
        }
        b = match pool.pick_alternative(job.key_hash, &tried, job.l.bounded_picks()) {
            Some((_, next)) => next,
            None => return Err(fail),
        };
    }
}

type Answer = (Upstream, Head, Vec<u8>, Vec<u8>);

async fn attempt(b: &BackendRt, cfg: &Pool, req: &[u8]) -> Result<Answer, Failure> {
    let addr = b.addr().ok_or(Failure::Unresolved)?;
    let mut up = client::connect(&b.id, addr, cfg.timeouts.connect, cfg.tls.as_ref())
        .await
        .map_err(Failure::Connect)?;
    up.write_all(req).await.map_err(Failure::Lost)?;
    up.flush().await.map_err(Failure::Lost)?;
    let wait = cfg.timeouts.response_header;
    let deadline = Instant::now() + wait;
    let mut buf = Vec::with_capacity(2048);
    let mut interim = Vec::new();
    loop {
        if let Some((head, len)) = Head::parse(&buf).map_err(Failure::Invalid)? {
            let rest = buf.split_off(len);
            if head.is_interim() {
                interim.extend_from_slice(&head.raw);
                buf = rest;
                continue;
            }
            return Ok((up, head, rest, interim));
        }
        if buf.len() >= MAX_HEAD {
            return Err(Failure::Invalid(HeadError::TooLarge));
        }
        buf.reserve(4096);
        let read = timeout_at(deadline, up.read_buf(&mut buf)).await;
        match read {
            Err(_) => return Err(Failure::Silent(wait)),
            Ok(Err(e)) => return Err(Failure::Lost(e)),
            Ok(Ok(0)) => {
                return Err(Failure::Lost(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before answering",
                )))
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// `Sec-WebSocket-Accept` for a request's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub(super) fn accept_for(key: &[u8]) -> String {
    use base64::Engine;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_of_rfc_6455() {
        assert_eq!(
            super::accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
