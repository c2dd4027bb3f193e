//! WebSocket upgrades, finished by tether rather than pingora's proxy loop.
//!
//! pingora reads the request head and the `Router` routes it like any other
//! request (key, store, health, rule 7 headers). Then, instead of proxying,
//! the router hands the request over ([`Job`], left in the connection's
//! `ConnInfo`) and returns; pingora lets go of the connection as after any
//! answered request, its per-request state freed, and [`serve`] takes the
//! bare client socket back, with whatever the client sent past the request
//! head. From there: connect (other live backends on failure, passive
//! health), send the upgrade, read the answer. A 101 whose
//! `Sec-WebSocket-Accept` matches the key goes to the client with the
//! insert-mode cookie, and the two sockets become a tunnel
//! ([`crate::tunnel`]); anything else is relayed as the ordinary response it
//! is (`refusal`).
//!
//! Not pingora's own upgrade path: it keeps the whole session and a 64 KB
//! body buffer per WebSocket for its life, gives no handle to close a live
//! upgraded connection (pingora #571) and can tear a tunnel down right after
//! the 101 (pingora #946).

mod handshake;
mod refusal;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName};
use pingora::protocols::Stream;
use pingora::proxy::Session;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::conn::ConnStream;
use super::listener::ListenerRt;
use super::router::Ctx;
use super::socket::ClientSocket;
use crate::affinity::hash::hash_key;
use crate::backend::BackendRt;
use crate::store::{LiveGuard, MoveReason};
use crate::tls::client::Upstream;
use crate::tunnel::{self, Mode, Params, Side};
use handshake::{Exchange, Failure};

/// A routed upgrade request for tether to finish.
pub struct Job {
    l: Arc<ListenerRt>,
    backend: Arc<BackendRt>,
    /// The session is live (not idle, not evictable) while the WebSocket is.
    _live: Option<LiveGuard>,
    moved: Option<(Arc<str>, MoveReason)>,
    /// The session key (`X-Tether-Session`).
    key: Option<String>,
    key_hash: u64,
    /// The insert-mode cookie for the 101 (or the refusal).
    set_cookie: Option<String>,
    /// The request head to send upstream, rewritten.
    head: Vec<u8>,
    /// The `Sec-WebSocket-Accept` a genuine answer carries.
    accept: String,
    client_ip: Option<IpAddr>,
    start: Instant,
}

/// What tether's own HTTP/1.1 path hands over for a job.
pub struct JobParts<'a> {
    pub l: Arc<ListenerRt>,
    pub backend: Arc<BackendRt>,
    pub live: Option<LiveGuard>,
    pub moved: Option<(Arc<str>, MoveReason)>,
    pub key: Option<String>,
    pub key_hash: u64,
    /// The whole `Set-Cookie` value, if the 101 carries one.
    pub set_cookie: Option<String>,
    /// The upstream request head, rewritten.
    pub head: Vec<u8>,
    /// The request's `Sec-WebSocket-Key`.
    pub ws_key: &'a [u8],
    pub client_ip: Option<IpAddr>,
    pub start: Instant,
}

impl Job {
    pub fn new(p: JobParts<'_>) -> Box<Job> {
        Box::new(Job {
            l: p.l,
            backend: p.backend,
            _live: p.live,
            moved: p.moved,
            key: p.key,
            key_hash: p.key_hash,
            set_cookie: p.set_cookie,
            head: p.head,
            accept: handshake::accept_for(p.ws_key),
            client_ip: p.client_ip,
            start: p.start,
        })
    }
}

/// A client connection tether can tunnel: the bare socket, or a TLS stream.
pub trait ClientSide: Sized {
    fn into_client(self) -> ClientIo;
}

impl ClientSide for TcpStream {
    fn into_client(self) -> ClientIo {
        ClientIo::Tcp(self)
    }
}

impl ClientSide for Stream {
    fn into_client(self) -> ClientIo {
        ClientIo::Tls(self)
    }
}

/// Finish a job from tether's own HTTP/1.1 path on `io`, `early` being
/// what the client sent past its head. `Some` when a tunnel is ready.
pub async fn open_on<C: Side + ClientSide>(job: Box<Job>, io: C, early: Vec<u8>) -> Option<Tunnel> {
    handshake_on(*job, io, early, ClientSide::into_client).await
}

/// Hop-by-hop headers (RFC 9110 7.6.1): the client's connection to tether,
/// not the request; the upgrade's own two are set again.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Turn a routed upgrade request into a job, or the status to answer.
pub(super) fn prepare(session: &Session, ctx: &mut Ctx) -> Result<Box<Job>, u16> {
    let req = session.req_header();
    let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let Some(key) = req.headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(400);
    };
    if has_body || ctx.conn.is_none() {
        return Err(400);
    }
    let accept = handshake::accept_for(key.as_bytes());
    let Some((_, backend)) = ctx.backend.clone() else {
        return Err(503);
    };
    let mut up = req.clone();
    super::hygiene::rewrite_upstream(session, &mut up, ctx).map_err(|_| 500u16)?;
    let nominated: Vec<HeaderName> = up
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(&nominated) {
        up.remove_header(h);
    }
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(up.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(up.raw_path());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in up.headers.iter() {
        head.extend_from_slice(k.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
    Ok(Box::new(Job {
        key_hash: ctx
            .session
            .as_ref()
            .map_or_else(rand::random, |k| hash_key(k.as_bytes())),
        key: ctx
            .session
            .as_ref()
            .and_then(|k| k.to_str().ok())
            .map(str::to_owned),
        set_cookie: super::router::set_cookie_header(ctx),
        _live: ctx.live.take(),
        moved: ctx.moved.take(),
        l: ctx.l.clone(),
        backend,
        head,
        accept,
        client_ip: ctx.client_ip,
        start: ctx.start.unwrap_or_else(Instant::now),
    }))
}

/// The client's end of a WebSocket: the bare socket, or the TLS stream of
/// an https listener.
pub enum ClientIo {
    Tcp(TcpStream),
    Tls(Stream),
}

/// A WebSocket whose 101 went out: what the tunnel needs, nothing more.
pub struct Tunnel {
    job: Job,
    backend: Arc<BackendRt>,
    client: ClientIo,
    upstream: Upstream,
    to_backend: Vec<u8>,
    to_client: Vec<u8>,
}

/// Finish the job's handshake on `stream`, the connection pingora handed
/// back. `Some` when a tunnel is ready; otherwise the client got its answer
/// (an error, or the backend's refusal) and the connection is done.
pub async fn open(job: Box<Job>, stream: Stream) -> Option<Tunnel> {
    if !stream.as_any().is::<ConnStream>() {
        tracing::warn!("websocket hand-off on an unexpected stream");
        return None;
    }
    let (inner, early) = match stream.into_any().downcast::<ConnStream>() {
        Ok(conn) => conn.into_parts(),
        Err(_) => return None,
    };
    let client = if inner.as_any().is::<ClientSocket>() {
        match inner.into_any().downcast::<ClientSocket>() {
            Ok(s) => ClientIo::Tcp(s.into_tcp()),
            Err(_) => return None,
        }
    } else {
        ClientIo::Tls(inner)
    };
    match client {
        ClientIo::Tcp(c) => handshake_on(*job, c, early, ClientIo::Tcp).await,
        ClientIo::Tls(c) => handshake_on(*job, c, early, ClientIo::Tls).await,
    }
}

async fn handshake_on<C: Side>(
    mut job: Job,
    mut client: C,
    early: Vec<u8>,
    wrap: fn(C) -> ClientIo,
) -> Option<Tunnel> {
    let ex = match handshake::exchange(&job).await {
        Ok(ex) => ex,
        Err(fail) => {
            failed(&job, &mut client, fail).await;
            return None;
        }
    };
    let Exchange {
        backend,
        mut upstream,
        head,
        rest,
        interim,
    } = ex;
    // Sent: not worth keeping for the life of the tunnel.
    job.head = Vec::new();
    let l = &job.l;
    if !interim.is_empty() && client.write_all(&interim).await.is_err() {
        return None;
    }
    let status = head.status;
    if status != 101 {
        let idle = l.pool.cfg().timeouts.response_idle;
        let set_cookie = job.set_cookie.as_deref();
        backend.upstream_active.inc();
        let relay = refusal::relay(&mut client, &mut upstream, &head, rest, set_cookie, idle).await;
        backend.upstream_active.dec();
        let sent = match relay {
            Ok(n) => n,
            Err(refusal::RelayError::Framing(e)) => {
                failed(&job, &mut client, Failure::Invalid(e)).await;
                return None;
            }
            Err(e) => {
                tracing::debug!(backend = %backend.id, error = %e, "relaying a refused upgrade");
                0
            }
        };
        l.bytes_out.inc_by(sent);
        finish(&job, Some(&backend), status, (0, sent));
        return None;
    }
    if !head
        .values("sec-websocket-accept")
        .any(|v| v == job.accept.as_bytes())
    {
        tracing::warn!(backend = %backend.id, "101 with a wrong Sec-WebSocket-Accept: answered 502");
        let fail = Failure::Invalid(crate::h1::response::HeadError::Malformed(
            "Sec-WebSocket-Accept does not match the key".into(),
        ));
        failed(&job, &mut client, fail).await;
        return None;
    }
    job.accept = String::new();
    if !Arc::ptr_eq(&backend, &job.backend) {
        // Retried elsewhere: the session follows its connection (see `follow_connection`).
        if let Some(k) = job.key.as_deref() {
            job.l
                .pool
                .follow_connection(k, &job.backend, &backend)
                .await;
        }
    }
    let answer = answer_101(&head, job.set_cookie.take());
    if client.write_all(&answer).await.is_err() || client.flush().await.is_err() {
        return None;
    }
    Some(Tunnel {
        job,
        backend,
        client: wrap(client),
        upstream,
        to_backend: early,
        to_client: rest,
    })
}

impl Tunnel {
    /// Copy both ways until the WebSocket ends, then account for it.
    pub async fn run(self) {
        let Tunnel {
            job,
            backend,
            client,
            upstream,
            to_backend,
            to_client,
        } = self;
        let l = &job.l;
        backend.upstream_active.inc();
        // Registered with the backend it is connected to, which a retry may
        // have changed: that backend's mark-down or drain closes it, not the
        // one that refused.
        let reg = backend.register_tunnel(crate::backend::session_tag(job.key.as_deref()));
        let p = Params {
            mode: Mode::WebSocket,
            idle: l.cfg.timeouts.idle,
            half_closed: l.cfg.timeouts.half_closed,
            ctl: &reg.ctl,
            bytes_in: &l.bytes_in,
            bytes_out: &l.bytes_out,
        };
        let done = match client {
            ClientIo::Tcp(c) => tunnel::run(c, upstream, to_backend, to_client, false, &p).await,
            ClientIo::Tls(c) => tunnel::run(c, upstream, to_backend, to_client, false, &p).await,
        };
        drop(reg);
        backend.upstream_active.dec();
        tracing::debug!(listener = %l.cfg.name, backend = %backend.id, end = %done.end, "websocket ended");
        finish(&job, Some(&backend), 101, (done.bytes_in, done.bytes_out));
    }
}

/// The backend's 101 as the client gets it: untouched, plus the insert-mode cookie.
fn answer_101(head: &crate::h1::response::Head, set_cookie: Option<String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.raw.len() + 128);
    out.extend_from_slice(&head.raw[..head.raw.len() - 2]);
    if let Some(c) = set_cookie {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The upgrade could not be sent or answered: tell the client with a bare status.
async fn failed<C: Side>(job: &Job, client: &mut C, fail: Failure) {
    let status = fail.status();
    tracing::debug!(listener = %job.l.cfg.name, error = %fail, status, "websocket upgrade failed");
    let reason = match status {
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Bad Gateway",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nserver: tether\r\nconnection: close\r\n{}\r\n",
        if status == 503 { "retry-after: 1\r\n" } else { "" }
    );
    let _ = client.write_all(resp.as_bytes()).await;
    let _ = client.shutdown().await;
    finish(job, None, status, (0, 0));
}

/// Metrics and the access-log line of a finished upgrade.
fn finish(job: &Job, backend: Option<&Arc<BackendRt>>, status: u16, bytes: (u64, u64)) {
    let l = &job.l;
    if let (Some((from, reason)), 100..=499) = (&job.moved, status) {
        l.pool.observe_move(from, *reason);
    }
    match backend {
        Some(b) => {
            let i = l.pool.view().index_of(b).unwrap_or(usize::MAX);
            l.count_status(i, b, status);
        }
        None => l.own_status.inc(status),
    }
    l.duration.observe(job.start.elapsed().as_secs_f64());
    if l.cfg.access_log {
        tracing::info!(
            target: "tether::access",
            listener = %l.cfg.name,
            pool = %l.pool.name,
            backend = %backend.map_or("", |b| &*b.id),
            client = %job.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            method = "GET",
            status,
            session = %job.key.as_deref().map(crate::pool::key_hash).unwrap_or_default(),
            bytes_in = bytes.0,
            bytes_out = bytes.1,
            duration_ms = job.start.elapsed().as_millis() as u64,
            moved_from = %job.moved.as_ref().map_or("", |(f, _)| &**f),
            "request"
        );
    }
}
