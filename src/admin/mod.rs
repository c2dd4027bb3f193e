//! The admin listener: JSON API under `/api/*` and Prometheus `/metrics`.
//!
//! Served by pingora's `ServeHttp` on tether's own accept loop (see `runtime`).
//! Reads are open; mutating calls need `Authorization: Bearer <token>` when
//! `admin.token_file` is set, compared in constant time.

pub mod operator;
mod routes;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::pool::PoolRt;
use crate::store::Store;

/// What the admin API can see and act on.
pub struct AdminState {
    pub pools: Vec<Arc<PoolRt>>,
    pub metrics: Arc<Metrics>,
    /// Where operator state (drains) is shared with other instances.
    pub store: Arc<dyn Store>,
    pub token: Option<Arc<str>>,
    /// Set once shutdown starts: `/api/ping` stops answering ok.
    pub stopping: AtomicBool,
}

pub struct AdminApp {
    pub state: Arc<AdminState>,
}

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_default()
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response<Vec<u8>> {
    json(status, serde_json::json!({ "error": msg.into() }))
}

/// Length-independent-time comparison of a presented token with the configured one.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl AdminApp {
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.state.token else {
            return true;
        };
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        ct_eq(presented.trim().as_bytes(), token.as_bytes())
    }

    async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return Err(error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "request body too large",
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(error(StatusCode::BAD_REQUEST, format!("reading body: {e}"))),
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let mutating = !matches!(method, Method::GET | Method::HEAD);
        if mutating && !self.authorized(session) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        let body = match Self::read_body(session).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        if path == "/metrics" && method == Method::GET {
            return self.metrics();
        }
        if path == "/api/ping" && method == Method::GET {
            return if self.state.stopping.load(Ordering::Acquire) {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "status": "stopping" }),
                )
            } else {
                json(StatusCode::OK, serde_json::json!({ "status": "ok" }))
            };
        }
        routes::api(&self.state, &method, &path, &body).await
    }
}

impl AdminApp {
    fn metrics(&self) -> Response<Vec<u8>> {
        for pool in &self.state.pools {
            for b in &pool.backends {
                let n = pool.store.sessions_of(&b.id);
                self.state
                    .metrics
                    .sessions
                    .with_label_values(&[&*pool.cfg.name, &*b.id])
                    .set(n as i64);
            }
        }
        // The store counts evictions and expiries itself; mirror them into the counters.
        let st = self.state.store.stats();
        let kind = self.state.store.kind();
        let m = &self.state.metrics;
        let ev = m.sessions_evicted.with_label_values(&[kind]);
        ev.inc_by(st.evictions.saturating_sub(ev.get()));
        let ex = m.sessions_expired.with_label_values(&[kind]);
        ex.inc_by(st.expirations.saturating_sub(ex.get()));
        let body = self.state.metrics.render();
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ct_eq() {
        assert!(super::ct_eq(b"abc", b"abc"));
        assert!(!super::ct_eq(b"abc", b"abd"));
        assert!(!super::ct_eq(b"abc", b"abcd"));
        assert!(!super::ct_eq(b"", b"a"));
        assert!(super::ct_eq(b"", b""));
    }
}
