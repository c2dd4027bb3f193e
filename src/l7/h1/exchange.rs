//! One request on tether's HTTP/1.1 path, head to last body byte: route it
//! (`decide`), send it to the backend on a kept-alive connection when one is
//! idle (retried once on a fresh one if the backend closed it meanwhile and
//! the request can be sent again), relay the body in the client's framing,
//! read the answer (interim 1xx relayed, `response_header` for the head) and
//! relay it (`relay`). Failures follow spec rules 5 and 6 and go to passive
//! health through `pool::passive`'s rule. A WebSocket upgrade leaves here as
//! a job for `websocket`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use super::super::decide::{self, Outcome, Routed, Source};
use super::super::websocket::{self, ClientSide};
use super::conn::Conn;
use super::rewrite::{self, Added};
use crate::affinity::hash::hash_key;
use crate::backend::BackendRt;
use crate::config::PoolTimeouts;
use crate::h1::chunked::Chunked;
use crate::h1::request::{Body, Method, Request, Span};
use crate::h1::response::{Head, HeadError, MAX_HEAD};
use crate::pool::{Decision, Failure, Fault};
use crate::store::{LiveGuard, MoveReason};
use crate::tls::client::{self, ConnectError, Upstream};
use crate::tunnel::Side;

/// Other backends tried after a failed one (spec rule 5).
const MAX_RETRIES: usize = 2;
/// How long a `100-continue` request waits for the backend's 100 before
/// the body goes anyway (curl waits 1 s for it too).
const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// What the connection does next.
pub enum Next {
    /// Read the next request.
    Again,
    /// Close (after our FIN).
    Close,
    /// The connection failed: drop it.
    Gone,
    /// A WebSocket upgrade to finish on this connection, with the bytes the
    /// client sent past its head.
    Upgrade(Box<websocket::Job>, Vec<u8>),
    /// Answer this status and close.
    Refuse(u16),
}

/// The request head as `decide` reads it.
struct Raw<'b> {
    buf: &'b [u8],
    req: &'b Request,
}

impl Raw<'_> {
    fn at(&self, s: &Span) -> &[u8] {
        &self.buf[s.start as usize..s.end as usize]
    }

    fn values<'s>(&'s self, name: &'static str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.req
            .headers
            .iter()
            .filter(move |(n, _)| self.at(n).eq_ignore_ascii_case(name.as_bytes()))
            .map(move |(_, v)| self.at(v))
    }

    fn first<'s>(&'s self, name: &str) -> Option<&'s [u8]> {
        let (_, v) = self
            .req
            .headers
            .iter()
            .find(|(n, _)| self.at(n).eq_ignore_ascii_case(name.as_bytes()))?;
        Some(self.at(v))
    }
}

impl Source for Raw<'_> {
    fn cookie(&self, name: &str) -> Option<&str> {
        self.values("cookie")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .find_map(|line| crate::affinity::key::cookie_in_line(line, name))
    }

    fn header(&self, name: &http::HeaderName) -> Option<&str> {
        let v = self.first(name.as_str())?;
        crate::affinity::key::usable(std::str::from_utf8(v).ok()?.trim())
    }

    fn query(&self, name: &str) -> Option<&str> {
        let target = std::str::from_utf8(self.at(&self.req.target)).ok()?;
        crate::affinity::key::query(target.split_once('?').map(|(_, q)| q), name)
    }
}

/// Why a request got no answer from a backend.
pub(super) enum Failed {
    /// Answer this status (502, 504).
    Status(u16),
    /// The client went away or broke its side: nothing to answer.
    Client,
}

/// One attempt's failure, before passive health and retries judge it.
enum Attempt {
    Unresolved,
    Connect(ConnectError),
    /// A reused connection turned out closed: try again on a fresh one.
    Stale,
    /// Reset or closed before a response head; `complete`: the whole request was sent.
    Lost(bool),
    Silent,
    Invalid(HeadError),
    Client,
    /// The client's chunked body is malformed (RFC 9112 7.1): a 400.
    BadBody,
}

/// The backend that answered, on which connection.
pub(super) struct Sent {
    pub b: Arc<BackendRt>,
    pub up: Upstream,
    pub addr: SocketAddr,
    /// The response head, its bytes in `ubuf[..head_len]`.
    pub head: Head,
    /// The client's body was not read (the backend answered first): the
    /// client connection cannot be reused.
    pub body_unread: bool,
}

/// What a request carries to the end of its exchange.
pub(super) struct Job {
    pub started: Instant,
    pub method: Method,
    pub backend: Arc<BackendRt>,
    pub _live: Option<LiveGuard>,
    pub moved: Option<(Arc<str>, MoveReason)>,
    pub set_cookie: Option<String>,
    pub key_hash: u64,
    /// The session key's short hash, for the access log.
    pub session: Option<String>,
    /// The session key itself, only for a WebSocket (its tunnel is tagged with it).
    pub key: Option<String>,
    pub client_ip: std::net::IpAddr,
}

impl<C: Side + ClientSide> Conn<'_, C> {
    /// Route and forward the request at `rbuf[rpos..]` (parsed in `req`).
    pub async fn exchange(&mut self) -> Next {
        let started = Instant::now();
        if self.req.method == Method::Connect {
            // A reverse proxy: no tunnels to anywhere.
            self.skip_request();
            return self.own_counted(405, true, started).await;
        }
        let job = match self.route(started).await {
            Ok(job) => job,
            Err(next) => return next,
        };
        let body = self.req.body.unwrap_or(Body::None);
        self.rpos += self.req.len;
        if self.req.websocket {
            return self.upgrade(job, body);
        }
        let sent = match self.send(&job, body).await {
            Ok(sent) => sent,
            Err(Failed::Status(status)) => {
                self.log(&job, None, status, (self.body_sent, 0));
                // Closed after, as pingora does: the exchange failed midway.
                return self.own(status, true).await;
            }
            Err(Failed::Client) => return Next::Gone,
        };
        self.relay(job, sent).await
    }

    /// The routing decision and the upstream head (in `out`), or what to do
    /// instead (tether's own answer).
    async fn route(&mut self, started: Instant) -> Result<Job, Next> {
        let l = self.l;
        let raw = Raw {
            buf: &self.rbuf[self.rpos..],
            req: &self.req,
        };
        let client_ip = rewrite::client_ip(l, raw.buf, raw.req, self.peer.ip());
        let routed = match decide::decide(l, &raw, Some(client_ip)).await {
            Outcome::Route(r) => r,
            Outcome::Answer(status) => {
                self.skip_request();
                // 503: the store failed; the client may keep its connection.
                return Err(self.own_counted(status, status != 503, started).await);
            }
        };
        let Routed {
            key,
            set_cookie,
            decision,
        } = routed;
        let Decision::Backend {
            backend,
            live,
            moved,
        } = decision
        else {
            self.skip_request();
            return Err(self.own_counted(503, false, started).await);
        };
        let raw = Raw {
            buf: &self.rbuf[self.rpos..],
            req: &self.req,
        };
        let key_str = key.as_str();
        let add = Added {
            session: key_str,
            moved: moved.as_ref(),
            peer: self.peer.ip(),
            websocket: self.req.websocket,
        };
        rewrite::request_head(&mut self.out, l, raw.buf, raw.req, &add);
        let job = Job {
            started,
            method: self.req.method,
            key_hash: key_str.map_or_else(rand::random, |k| hash_key(k.as_bytes())),
            session: key_str.map(crate::pool::key_hash),
            key: key_str.filter(|_| self.req.websocket).map(str::to_owned),
            backend,
            _live: live,
            moved,
            set_cookie,
            client_ip,
        };
        Ok(job)
    }

    /// A WebSocket upgrade: the job for the tunnel path, with the bytes the
    /// client sent past its head.
    fn upgrade(&mut self, job: Job, body: Body) -> Next {
        let raw = Raw {
            buf: &self.rbuf,
            req: &self.req,
        };
        let ws_key = raw.values("sec-websocket-key").next().map(<[u8]>::to_vec);
        let Some(ws_key) = ws_key.filter(|_| body == Body::None) else {
            // Not a handshake tether can check (no key, or a body): refused.
            return Next::Refuse(400);
        };
        let early = self.rbuf.split_off(self.rpos);
        self.rbuf = Vec::new();
        self.rpos = 0;
        let l = self.l;
        let ws = websocket::Job::new(websocket::JobParts {
            l: self.la.clone(),
            backend: job.backend,
            live: job._live,
            moved: job.moved,
            key: job.key,
            key_hash: job.key_hash,
            set_cookie: job.set_cookie.map(|v| rewrite::cookie_value(l, &v)),
            head: std::mem::take(&mut self.out),
            ws_key: &ws_key,
            client_ip: Some(job.client_ip),
            start: job.started.into_std(),
        });
        Next::Upgrade(ws, early)
    }

    /// Forget the current request (answered by tether without forwarding):
    /// its head, and a body it announced can only be skipped by closing.
    pub(super) fn skip_request(&mut self) {
        self.rpos += self.req.len;
    }

    /// Send the request (retries: rule 5; a stale kept-alive connection: once
    /// more on a fresh one) and read the response head.
    async fn send(&mut self, job: &Job, body: Body) -> Result<Sent, Failed> {
        let pool = &self.l.pool;
        let replayable = self.req.method.is_idempotent() && body == Body::None;
        let mut b = job.backend.clone();
        let mut tried: Vec<Arc<BackendRt>> = Vec::new();
        let mut fresh = false;
        loop {
            let (fault, status, retry) = match self.attempt(&b, body, replayable, fresh).await {
                Ok(sent) => {
                    b.passive_success();
                    return Ok(sent);
                }
                Err(Attempt::Client) => return Err(Failed::Client),
                Err(Attempt::BadBody) => return Err(Failed::Status(400)),
                Err(Attempt::Stale) => {
                    fresh = true;
                    continue;
                }
                Err(Attempt::Unresolved) => (None, 502, true),
                Err(Attempt::Connect(e)) => {
                    tracing::debug!(backend = %b.id, error = %e, "connect failed");
                    let status = if matches!(e, ConnectError::Timeout(_)) {
                        504
                    } else {
                        502
                    };
                    (Some(Failure::new(Fault::Connect, false)), status, true)
                }
                Err(Attempt::Lost(complete)) => {
                    (Some(Failure::new(Fault::Reset, complete)), 502, replayable)
                }
                Err(Attempt::Silent) => (Some(Failure::new(Fault::Silent, true)), 504, false),
                Err(Attempt::Invalid(e)) => {
                    tracing::warn!(backend = %b.id, error = %e, "invalid response head: answered 502");
                    (None, 502, false)
                }
            };
            if let Some(f) = fault {
                pool.passive_failure(&b, f);
            }
            if retry {
                tried.push(b.clone());
                if tried.len() <= MAX_RETRIES {
                    let next = pool.pick_alternative(job.key_hash, &tried, self.l.bounded_picks());
                    if let Some((_, next)) = next {
                        b = next;
                        fresh = false;
                        continue;
                    }
                }
            }
            return Err(Failed::Status(status));
        }
    }

    async fn attempt(
        &mut self,
        b: &Arc<BackendRt>,
        body: Body,
        replayable: bool,
        fresh: bool,
    ) -> Result<Sent, Attempt> {
        let cfg = self.l.pool.cfg();
        let t = cfg.timeouts;
        let addr = b.addr().ok_or(Attempt::Unresolved)?;
        let pooled = if fresh {
            None
        } else {
            b.conns.take(addr, replayable)
        };
        let (mut up, reused) = match pooled {
            Some(c) => (c, true),
            None => (
                client::connect(&b.id, addr, t.connect, cfg.tls.as_ref())
                    .await
                    .map_err(Attempt::Connect)?,
                false,
            ),
        };
        let lost = |complete: bool| {
            if reused && replayable {
                Attempt::Stale
            } else {
                Attempt::Lost(complete)
            }
        };
        // The head, with whatever body bytes already came along.
        let expect = self.req.expect_continue && body != Body::None;
        let early = match self.send_head(&mut up, body, expect, &t).await {
            Ok(head) => head,
            Err(SendErr::Client) => return Err(Attempt::Client),
            Err(SendErr::Backend) => return Err(lost(body == Body::None)),
            Err(SendErr::Head(e)) => return Err(e),
            Err(SendErr::BadBody) => return Err(Attempt::BadBody),
        };
        let body_unread = early.is_some() && body != Body::None;
        if early.is_none() {
            match self.send_body(&mut up, body).await {
                Ok(()) => {}
                Err(SendErr::Backend) => return Err(lost(false)),
                Err(SendErr::BadBody) => return Err(Attempt::BadBody),
                Err(SendErr::Client) | Err(SendErr::Head(_)) => return Err(Attempt::Client),
            }
        }
        let head = match early {
            Some(h) => h,
            None => match self.response_head(&mut up, t.response_header, false).await {
                Ok(h) => h,
                Err(Attempt::Lost(_)) => return Err(lost(true)),
                Err(e) => return Err(e),
            },
        };
        Ok(Sent {
            b: b.clone(),
            up,
            addr,
            head,
            body_unread,
        })
    }

    /// Write the upstream head (in `out`). With `100-continue`, wait a
    /// moment for the backend's 100 (relayed) before the body; a final
    /// answer instead ends the request there (`Some`).
    async fn send_head(
        &mut self,
        up: &mut Upstream,
        body: Body,
        expect: bool,
        t: &PoolTimeouts,
    ) -> Result<Option<Head>, SendErr> {
        let idle = self.l.cfg.timeouts.idle;
        // A small body that came with the head goes in the same write.
        let avail = self.rbuf.len() - self.rpos;
        let inline = match body {
            Body::Length(n) if avail > 0 && !expect => (n.min(avail as u64) as usize).min(4096),
            _ => 0,
        };
        if inline > 0 {
            self.out
                .extend_from_slice(&self.rbuf[self.rpos..self.rpos + inline]);
            self.rpos += inline;
            self.body_sent = inline as u64;
        } else {
            self.body_sent = 0;
        }
        match timeout(idle, write_flush(up, &self.out)).await {
            Ok(Ok(())) => {}
            _ => return Err(SendErr::Backend),
        }
        self.l.bytes_in.inc_by(inline as u64);
        if !expect || self.rbuf.len() > self.rpos {
            return Ok(None);
        }
        let wait = CONTINUE_WAIT.min(t.response_header);
        match self.response_head(up, wait, true).await {
            // The backend said nothing yet: send the body anyway.
            Err(Attempt::Silent) => Ok(None),
            Err(Attempt::Lost(_)) => Err(SendErr::Backend),
            Err(e) => Err(SendErr::Head(e)),
            // Relayed: now the body.
            Ok(h) if h.status == 100 => Ok(None),
            Ok(h) => Ok(Some(h)),
        }
    }

    /// Relay the rest of the request body (the client's framing, as is).
    async fn send_body(&mut self, up: &mut Upstream, body: Body) -> Result<(), SendErr> {
        let idle = self.l.cfg.timeouts.idle;
        let mut chunked = Chunked::default();
        let mut left = match body {
            Body::None => return Ok(()),
            Body::Length(n) => n - self.body_sent,
            Body::Chunked => u64::MAX,
        };
        loop {
            let avail = &self.rbuf[self.rpos..];
            let take = match body {
                Body::Chunked => match chunked.feed(avail) {
                    Ok(end) => end.unwrap_or(avail.len()),
                    Err(_) => return Err(SendErr::BadBody),
                },
                _ => avail.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            };
            if take > 0 {
                let part = &self.rbuf[self.rpos..self.rpos + take];
                match timeout(idle, write_flush(up, part)).await {
                    Ok(Ok(())) => {}
                    _ => return Err(SendErr::Backend),
                }
                self.rpos += take;
                self.l.bytes_in.inc_by(take as u64);
                left = left.saturating_sub(take as u64);
            }
            if left == 0 || chunked.is_done() {
                return Ok(());
            }
            match timeout(idle, self.fill()).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Err(SendErr::Client),
            }
        }
    }

    /// Read the backend's final response head into `ubuf` within `wait`.
    /// Interim 1xx heads are relayed to an HTTP/1.1 client and dropped; with
    /// `until_continue` a 100 ends the wait (it is returned, relayed).
    async fn response_head(
        &mut self,
        up: &mut Upstream,
        wait: Duration,
        until_continue: bool,
    ) -> Result<Head, Attempt> {
        let deadline = Instant::now() + wait;
        loop {
            if !self.ubuf.is_empty() {
                match Head::parse(&self.ubuf) {
                    Err(e) => return Err(Attempt::Invalid(e)),
                    Ok(Some((head, len))) if head.is_interim() => {
                        if self.req.minor == 1 && self.io.write_all(&head.raw).await.is_err() {
                            return Err(Attempt::Client);
                        }
                        self.ubuf.drain(..len);
                        if until_continue && head.status == 100 {
                            return Ok(head);
                        }
                        continue;
                    }
                    Ok(Some((head, _))) if head.status == 101 => {
                        return Err(Attempt::Invalid(HeadError::Malformed(
                            "101 to a request that asked for no upgrade".into(),
                        )))
                    }
                    Ok(Some((head, _))) => return Ok(head),
                    Ok(None) if self.ubuf.len() >= MAX_HEAD => {
                        return Err(Attempt::Invalid(HeadError::TooLarge))
                    }
                    Ok(None) => {}
                }
            }
            self.ubuf.reserve(8192);
            match timeout_at(deadline, up.read_buf(&mut self.ubuf)).await {
                Err(_) => return Err(Attempt::Silent),
                Ok(Err(_)) | Ok(Ok(0)) => return Err(Attempt::Lost(true)),
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Why sending the request stopped.
enum SendErr {
    /// The backend's side failed.
    Backend,
    /// The client's side (its body) failed or stalled.
    Client,
    /// The client's chunked framing is invalid.
    BadBody,
    /// Reading an early answer failed.
    Head(Attempt),
}

pub(super) async fn write_flush(up: &mut Upstream, bytes: &[u8]) -> io::Result<()> {
    up.write_all(bytes).await?;
    up.flush().await
}
