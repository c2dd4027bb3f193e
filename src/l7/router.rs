//! The pingora `ProxyHttp` implementation: per request, find the session key,
//! route it through the pool, rewrite headers (spec rule 7) and account.
//!
//! Order of work per request: `early_request_filter` (connection timeouts),
//! `request_filter` (hygiene, key, routing decision; tether's own answers such
//! as 400/503 end here), `upstream_peer` (connect to the decided backend),
//! `connected_to_upstream` (the response `watch`), `upstream_request_filter`
//! (X-Tether-*, X-Forwarded-*), `upstream_response_filter` and its body
//! filter (passive success, the watch's phases), `response_filter` (affinity
//! cookie), `logging` (metrics, re-arming the header guard). Failures go to
//! passive health through `pool::passive`'s rule (`fail_to_connect`,
//! `error_while_proxy`, see `upstream`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::ErrorType;

use super::conn::{ConnInfo, ConnStream};
use super::decide::{self, Outcome};
use super::hygiene;
use super::listener::ListenerRt;
use super::upstream;
use super::watch::{Phase, Plan, Watch};
use super::websocket;
use crate::affinity::hash::hash_key;
use crate::backend::TunnelGuard;
use crate::config::Key;
use crate::pool::{BackendRt, Decision, Failure, Fault};
use crate::store::{LiveGuard, MoveReason};

pub struct Router {
    /// The listener's current runtime, replaced whole by a reload; each
    /// request takes the one current when it starts.
    pub listener: Arc<ArcSwap<ListenerRt>>,
}

pub struct Ctx {
    pub(super) l: Arc<ListenerRt>,
    pub(super) conn: Option<Arc<ConnInfo>>,
    pub(super) start: Option<Instant>,
    /// `X-Tether-Session` value (the session key), when the request has one.
    pub(super) session: Option<HeaderValue>,
    pub(super) backend: Option<(usize, Arc<BackendRt>)>,
    pub(super) live: Option<LiveGuard>,
    pub(super) moved: Option<(Arc<str>, MoveReason)>,
    set_cookie: Option<String>,
    pub(super) client_ip: Option<IpAddr>,
    upgrade: bool,
    /// The request went to tether's WebSocket path (see `websocket`): it
    /// accounts for itself when the WebSocket ends.
    handed_off: bool,
    upstream_counted: bool,
    /// Backends that failed this request before answering (retries go elsewhere).
    tried: Vec<Arc<BackendRt>>,
    got_response: bool,
    /// The timeout pingora cannot apply itself on the current upstream
    /// connection (`watch`).
    watch: Option<Watch>,
    /// The response body ends with the backend's close (no length, not chunked).
    close_delimited: bool,
    /// A gRPC call registered with its backend's live connections (`grpc`).
    tunnel: Option<TunnelGuard>,
}

/// Retries of one request on other backends after a connect failure or an
/// early reset (spec rule 5); pingora's own limit (`max_retries`) is higher.
const MAX_RETRIES: usize = 2;

const SELF_ANSWER: &str = "tether";

/// Answer the request ourselves with an empty body.
async fn answer(
    session: &mut Session,
    status: u16,
    extra: &[(&'static str, &'static str)],
) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(2 + extra.len()))?;
    resp.insert_header(header::CONTENT_LENGTH, "0")?;
    resp.insert_header(header::SERVER, SELF_ANSWER)?;
    for (k, v) in extra {
        resp.insert_header(*k, *v)?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// The insert-mode `Set-Cookie` value this request's answer carries, if any
/// (taken: one answer carries it).
pub(super) fn set_cookie_header(ctx: &mut Ctx) -> Option<String> {
    let v = ctx.set_cookie.take()?;
    let Key::Cookie(c) = &ctx.l.cfg.affinity.key else {
        return None;
    };
    let max_age = c.insert.as_ref().map(|i| i.max_age.as_secs()).unwrap_or(0);
    // Secure on TLS listeners: the browser then never sends it in clear.
    let secure = if ctx.l.cfg.protocol.is_tls() {
        "; Secure"
    } else {
        ""
    };
    Some(format!(
        "{}={v}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        c.name
    ))
}

impl Router {
    /// Find the key and decide the backend (`decide`, shared with tether's
    /// own HTTP/1.1 path). `Ok(true)`: answered already.
    async fn decide(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let l = ctx.l.clone();
        let routed = match decide::decide(&l, session.req_header(), ctx.client_ip).await {
            Outcome::Route(r) => r,
            Outcome::Answer(503) => return answer(session, 503, &[("retry-after", "1")]).await,
            Outcome::Answer(status) => return answer(session, status, &[]).await,
        };
        ctx.session = routed
            .key
            .as_str()
            .and_then(|k| HeaderValue::from_bytes(k.as_bytes()).ok());
        ctx.set_cookie = routed.set_cookie;
        self.apply(session, ctx, routed.decision).await
    }

    /// Report a failure of the current backend to passive health, whose rule
    /// (`pool::passive`) decides whether it counts.
    fn passive_failure(&self, ctx: &Ctx, f: Failure) {
        if let Some((_, b)) = &ctx.backend {
            ctx.l.pool.passive_failure(b, f);
        }
    }

    /// Record the current backend as tried; may the request go elsewhere?
    fn may_retry(&self, ctx: &mut Ctx) -> bool {
        let Some((_, b)) = &ctx.backend else {
            return false;
        };
        ctx.tried.push(b.clone());
        let h = ctx
            .session
            .as_ref()
            .map(|v| hash_key(v.as_bytes()))
            .unwrap_or(0);
        ctx.tried.len() <= MAX_RETRIES
            && ctx
                .l
                .pool
                .pick_alternative(h, &ctx.tried, ctx.l.bounded_picks())
                .is_some()
    }

    /// Hand a WebSocket upgrade over to tether's own path (see `websocket`):
    /// pingora ends the request here without answering and gives the
    /// connection back to `serve`, which finishes the job.
    async fn hand_off(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let job = match websocket::prepare(session, ctx) {
            Ok(job) => job,
            Err(status) => return answer(session, status, &[]).await,
        };
        let Some(conn) = &ctx.conn else {
            return answer(session, 400, &[]).await;
        };
        conn.hand_off(job);
        ctx.handed_off = true;
        // The connection must come back from pingora: kept alive, and with
        // any bytes sent past the head (early frames) not held against it.
        session.set_keepalive(Some(ctx.l.cfg.timeouts.keepalive.as_secs().max(1)));
        if let pingora::protocols::http::ServerSession::H1(h1) = session.as_downstream_mut() {
            h1.set_pipelining_enabled(true);
        }
        Ok(true)
    }

    async fn apply(&self, session: &mut Session, ctx: &mut Ctx, d: Decision) -> Result<bool> {
        match d {
            Decision::NoBackend => answer(session, 503, &[("retry-after", "1")]).await,
            Decision::Backend {
                backend,
                live,
                moved,
            } => {
                let idx = ctx.l.pool.view().index_of(&backend).unwrap_or(usize::MAX);
                ctx.backend = Some((idx, backend));
                ctx.live = live;
                ctx.moved = moved;
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Router {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            l: self.listener.load_full(),
            conn: None,
            start: Some(Instant::now()),
            session: None,
            backend: None,
            live: None,
            moved: None,
            set_cookie: None,
            client_ip: None,
            upgrade: false,
            handed_off: false,
            upstream_counted: false,
            tried: Vec::new(),
            got_response: false,
            watch: None,
            close_delimited: false,
            tunnel: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let idle = Some(ctx.l.cfg.timeouts.idle);
        let down = session.as_downstream_mut();
        // pingora's 60 s default read timeout would cut every quiet WebSocket.
        down.set_read_timeout(idle);
        down.set_write_timeout(idle);
        // HTTP/1 only: an h2 stream has no stream of its own (`stream()` is None)
        // and no header guard; its headers are bounded by the h2 settings.
        ctx.conn = down
            .stream()
            .and_then(|s| s.as_any().downcast_ref::<ConnStream>())
            .map(|c| c.info().clone());
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        // Request smuggling guard (RFC 9112 6.1): both framings at once is an attack or a bug.
        // pingora drops Content-Length when both are present, so look at the raw header.
        if req.headers.contains_key(header::TRANSFER_ENCODING)
            && hygiene::raw_has_content_length(session)
        {
            return answer(session, 400, &[]).await;
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = hygiene::client_ip(&ctx.l, session.req_header(), peer);
        ctx.upgrade = hygiene::sanitize(session.req_header_mut());
        if self.decide(session, ctx).await? {
            return Ok(true);
        }
        if ctx.upgrade {
            return self.hand_off(session, ctx).await;
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx.l.pool.clone();
        let pool_cfg = pool.cfg();
        if !ctx.tried.is_empty() {
            // A retry: another live backend for this request only, no re-pin (rule 5).
            let h = ctx
                .session
                .as_ref()
                .map(|v| hash_key(v.as_bytes()))
                .unwrap_or_else(rand::random);
            let Some((i, next)) = pool.pick_alternative(h, &ctx.tried, ctx.l.bounded_picks())
            else {
                return Error::e_explain(
                    ErrorType::ConnectNoRoute,
                    "no other live backend to retry on",
                );
            };
            if ctx.upstream_counted {
                if let Some((_, old)) = &ctx.backend {
                    old.upstream_active.dec();
                }
                ctx.upstream_counted = false;
            }
            ctx.backend = Some((i, next));
        }
        let Some((_, b)) = &ctx.backend else {
            return Error::e_explain(ErrorType::InternalError, "no backend decided");
        };
        let Some(addr) = b.addr() else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "backend host name not resolved");
        };
        let t = &pool_cfg.timeouts;
        let mut peer = match &pool_cfg.tls {
            // The SNI is never empty (config): with rustls an empty one turns verification off.
            Some(tls) => {
                let mut peer = HttpPeer::new(addr, true, tls.sni.clone());
                peer.options.verify_cert = tls.verify;
                peer.options.ca = tls.pingora_ca.clone();
                peer
            }
            None => HttpPeer::new(addr, false, String::new()),
        };
        upstream::set_protocol(&mut peer, pool_cfg.protocol);
        peer.options.connection_timeout = Some(t.connect);
        // pingora applies this to the head and every body read alike: it gets
        // the longer of response_header and response_idle, a watch the other.
        peer.options.read_timeout = Some(Plan::new(t).read_timeout);
        peer.options.write_timeout = Some(ctx.l.cfg.timeouts.idle);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(tls), Some((_, b))) = (&ctx.l.pool.cfg().tls, &ctx.backend) {
            if matches!(
                e.etype(),
                ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
            ) {
                crate::tls::client::warn_limited(&format!(
                    "upstream TLS to backend {} ({:?}, sni {}) failed: {e}",
                    b.id,
                    b.addr(),
                    tls.sni
                ));
            }
        }
        self.passive_failure(ctx, Failure::new(upstream::connect_fault(&e), true));
        // Nothing was sent: any request may go to another backend.
        if self.may_retry(ctx) {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let fired = ctx.watch.take().and_then(|w| w.fired());
        let unprocessed = upstream::unprocessed(&e);
        let mut e = upstream::timed_out(e, fired, &ctx.l.pool.cfg().timeouts)
            .more_context(format!("Peer: {peer}"));
        if ctx.got_response || e.esource() != &ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        // Whether the client had sent the whole request decides whether a
        // reset or a silence is the backend's doing (pool::passive).
        let complete = session.is_body_done();
        self.passive_failure(ctx, Failure::new(upstream::fault(&e), complete));
        // A reset before the response: retry idempotent requests elsewhere. A timeout is
        // not retried (it would double the wait), nor is a request whose body may be lost.
        let replayable = (session.req_header().method.is_idempotent() || unprocessed)
            && !session.as_ref().retry_buffer_truncated();
        let timeout = matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        );
        let retry = replayable && !timeout && self.may_retry(ctx);
        e.set_retry(retry);
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.got_response = true;
        if !resp.status.is_informational() {
            let (has_body, close_delimited) =
                upstream::body_framing(&session.req_header().method, resp);
            ctx.close_delimited = close_delimited;
            if let Some(w) = &mut ctx.watch {
                w.head_received(has_body);
                if w.spent() {
                    ctx.watch = None;
                }
            }
        }
        if let Some((_, b)) = &ctx.backend {
            if resp.status.is_server_error() && ctx.l.pool.passive_5xx() {
                self.passive_failure(ctx, Failure::new(Fault::ServerError, true));
            } else {
                b.passive_success();
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let (true, Some(w)) = (end_of_stream, &mut ctx.watch) {
            // A close-delimited body ends at the close the watch made: pingora
            // cannot tell it from a clean end, so fail it here (framed bodies
            // cut short fail in pingora's own reader).
            if w.fired() == Some(Phase::Body) && ctx.close_delimited {
                return Err(upstream::idle_cut(&ctx.l.pool.cfg().timeouts));
            }
            w.body_ended();
            ctx.watch = None;
        }
        Ok(None)
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some((_, b)), false) = (&ctx.backend, ctx.upstream_counted) {
            b.upstream_active.inc();
            ctx.upstream_counted = true;
        }
        if let Some((_, b)) = &ctx.backend {
            let key = ctx.session.as_ref().and_then(|v| v.to_str().ok());
            // A retry replaces the registration with the new backend's.
            if let Some(g) = super::grpc::register(session.req_header(), b, key) {
                ctx.tunnel = Some(g);
            }
        }
        // HTTP/1 only: cutting an h2 connection would cut every stream on it.
        #[cfg(unix)]
        if peer.options.alpn == pingora::protocols::ALPN::H1 {
            ctx.watch = Watch::start(fd, &Plan::new(&ctx.l.pool.cfg().timeouts));
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        hygiene::rewrite_upstream(session, up, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(v) = set_cookie_header(ctx) {
            // append, not insert: the backend's own cookies must survive.
            resp.append_header(header::SET_COOKIE, v)?;
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &Error) -> bool {
        super::grpc::ended_by_tether(e, ctx.tunnel.is_some())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        super::grpc::end_failed(session.as_downstream_mut()).await;
        let code = upstream::error_status(e);
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                tracing::debug!(error = %err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.handed_off {
            return;
        }
        let l = &ctx.l;
        if let Some(c) = &ctx.conn {
            c.request_done();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if let (Some((from, reason)), 100..=499) = (&ctx.moved, status) {
            l.pool.observe_move(from, *reason);
        }
        if status != 0 {
            match &ctx.backend {
                Some((i, b)) => l.count_status(*i, b, status),
                None => l.own_status.inc(status),
            }
        }
        if let Some(start) = ctx.start {
            l.duration.observe(start.elapsed().as_secs_f64());
        }
        let (bytes_in, bytes_out) = (session.body_bytes_read(), session.body_bytes_sent());
        l.bytes_in.inc_by(bytes_in as u64);
        l.bytes_out.inc_by(bytes_out as u64);
        if l.cfg.access_log {
            hygiene::access_log(session, ctx, status, bytes_in, bytes_out);
        }
        if ctx.upstream_counted {
            if let Some((_, b)) = &ctx.backend {
                b.upstream_active.dec();
            }
        }
        let _ = Bytes::new();
    }
}
