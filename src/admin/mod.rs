//! The admin listener: JSON API under `/api/*` and Prometheus `/metrics`.
//!
//! Served by pingora's `ServeHttp` on tether's own accept loop (see `runtime`).
//! Mutating calls need `Authorization: Bearer <token>` when
//! `admin.token_file` is set (compared in constant time); with
//! `admin.protect_reads` every call does but the status page itself and
//! `/api/ping` (a liveness probe that tells nothing). Before any of that, a
//! request must name this listener in its `Host` and come from its own
//! origin, if any (`origin`).

pub mod operator;
mod origin;
mod routes;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::runtime::reload::{Outcome, ReloadRequest, Trigger};
use crate::runtime::Live;
use crate::store::Store;

/// What the admin API can see and act on.
pub struct AdminState {
    /// The pools and config in force (replaced by each reload).
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Arc<Metrics>,
    /// Where operator state (drains) is shared with other instances.
    pub store: Arc<dyn Store>,
    /// Set once shutdown starts: `/api/ping` stops answering ok.
    pub stopping: AtomicBool,
    /// The runtime's one reload path (`POST /api/reload`).
    pub reload: tokio::sync::mpsc::Sender<ReloadRequest>,
    /// The outcome of the last reload, whatever triggered it (`GET /api/reload`).
    pub last_reload: Arc<Mutex<Option<Outcome>>>,
    /// The virtual IP, when configured (`/api/vip`).
    pub vip: Option<Arc<crate::vip::Vip>>,
}

pub struct AdminApp {
    pub state: Arc<AdminState>,
}

/// The admin listener speaks plain HTTP: the scheme its pages' origin has.
const ADMIN_SCHEME: &str = "http";

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

/// The status page: one static file compiled into the binary, which polls the API.
const STATUS_PAGE: &str = include_str!("status.html");

fn status_page() -> Response<Vec<u8>> {
    let body = STATUS_PAGE.as_bytes().to_vec();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        .header("content-length", body.len())
        .header("cache-control", "no-cache")
        // Nothing but this file's own inline code may run; fetches go to this origin only.
        .header(
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
        )
        .header("x-frame-options", "DENY")
        .body(body)
        .unwrap_or_default()
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
        let live = self.state.live.load();
        let Some(token) = &live.snapshot.admin.token else {
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
        let live = self.state.live.load();
        let checked = origin::check(
            session.req_header(),
            ADMIN_SCHEME,
            &live.snapshot.admin.hosts,
        );
        drop(live);
        if let Err(refused) = checked {
            return error(refused.status(), refused.to_string());
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let mutating = !matches!(method, Method::GET | Method::HEAD);
        // The page itself holds no data: it asks for the token when the API wants one.
        let page = path == "/" && !mutating;
        let open = page || path == "/api/ping";
        let protect = mutating || (!open && self.state.live.load().snapshot.admin.protect_reads);
        if protect && !self.authorized(session) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
        let body = match Self::read_body(session).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        if page {
            return status_page();
        }
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
        if path == "/api/reload" {
            return self.reload(&method).await;
        }
        if path == "/api/vip" || path == "/api/vip/release" {
            return self.vip(&method, &path).await;
        }
        routes::api(&self.state, &method, &path, &body).await
    }
}

impl AdminApp {
    /// `POST /api/reload`: 200 with the summary, or 400 with the errors (the
    /// old config keeps running). `GET`: the last reload's outcome.
    async fn reload(&self, method: &Method) -> Response<Vec<u8>> {
        match *method {
            Method::POST => {}
            Method::GET => {
                let last = self
                    .state
                    .last_reload
                    .lock()
                    .map(|l| l.clone())
                    .unwrap_or_default();
                return match last {
                    Some(o) => json(StatusCode::OK, o.to_json()),
                    None => json(StatusCode::OK, serde_json::json!({ "result": "none" })),
                };
            }
            _ => {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} not allowed on /api/reload"),
                )
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = ReloadRequest {
            trigger: Trigger::Api,
            reply: Some(tx),
        };
        if self.state.reload.send(req).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down: no reload");
        }
        match rx.await {
            Ok(o) if o.ok() => json(StatusCode::OK, o.to_json()),
            Ok(o) => json(StatusCode::BAD_REQUEST, o.to_json()),
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down: no reload"),
        }
    }

    /// `GET /api/vip` (role, holder, since) and `POST /api/vip/release`.
    async fn vip(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let Some(vip) = &self.state.vip else {
            return error(StatusCode::NOT_FOUND, "no virtual IP configured (vip:)");
        };
        match (method, path) {
            (&Method::GET, "/api/vip") => json(StatusCode::OK, serde_json::json!(vip.status())),
            (&Method::POST, "/api/vip/release") => match vip.release().await {
                true => json(StatusCode::OK, serde_json::json!(vip.status())),
                false => error(
                    StatusCode::CONFLICT,
                    "this node does not hold the virtual IP",
                ),
            },
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} not allowed on {path}"),
            ),
        }
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let live = self.state.live.load();
        for pool in &live.pools {
            for b in pool.view().backends.iter() {
                let n = pool.store.sessions_of(&b.id);
                self.state
                    .metrics
                    .sessions
                    .with_label_values(&[&*pool.name, &*b.id])
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
        m.mirror_store(kind, &st);
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
