//! What tether does to the headers of every request (spec rule 7) and what it
//! logs of it: the client address (trusted `X-Forwarded-For`), removing
//! `X-Tether-*` and non-WebSocket upgrades, the request-smuggling check, the
//! headers added upstream, and the access-log line (no secrets).

use std::net::IpAddr;

use http::header;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::listener::ListenerRt;
use super::router::Ctx;

/// Did the client's raw header block carry a `Content-Length` line?
pub(super) fn raw_has_content_length(session: &Session) -> bool {
    let Some(h1) = session.as_downstream().as_http1() else {
        return false;
    };
    h1.get_headers_raw_bytes()
        .split(|&b| b == b'\n')
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// The client's address: the peer, or the first untrusted hop of
/// `X-Forwarded-For` when the peer is a trusted proxy.
pub(super) fn client_ip(
    l: &ListenerRt,
    req: &RequestHeader,
    peer: Option<IpAddr>,
) -> Option<IpAddr> {
    let peer = peer?;
    if !l.is_trusted(peer) {
        return Some(peer);
    }
    let mut last = peer;
    for v in req.headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(s) = v.to_str() else { break };
        for hop in s.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if l.is_trusted(ip) => last = ip,
                Ok(ip) => return Some(ip),
                Err(_) => return Some(last),
            }
        }
    }
    Some(last)
}

/// Remove what clients must not send upstream: `X-Tether-*` and non-WebSocket upgrades.
pub(super) fn sanitize(req: &mut RequestHeader) -> bool {
    let strip: Vec<_> = req
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-tether-"))
        .cloned()
        .collect();
    for k in strip {
        req.remove_header(&k);
    }
    let Some(up) = req.headers.get(header::UPGRADE) else {
        return false;
    };
    if up.as_bytes().eq_ignore_ascii_case(b"websocket") {
        return true;
    }
    // Only WebSocket is tunnelled: any other upgrade (h2c...) is served as plain HTTP/1.1.
    req.remove_header(&header::UPGRADE);
    req.remove_header(&header::CONNECTION);
    req.remove_header("http2-settings");
    false
}

/// Spec rule 7: what every request forwarded upstream carries.
pub(super) fn rewrite_upstream(session: &Session, up: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    if let Some(v) = &ctx.session {
        up.insert_header("x-tether-session", v.clone())?;
    }
    if let Some((from, reason)) = &ctx.moved {
        up.insert_header("x-tether-moved-from", &**from)?;
        up.insert_header("x-tether-move-reason", reason.as_str())?;
    }
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    if let Some(peer) = peer {
        let trusted = ctx.l.is_trusted(peer);
        let prior = up
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .filter(|_| trusted);
        let xff = match prior {
            Some(p) => format!("{p}, {peer}"),
            None => peer.to_string(),
        };
        up.insert_header("x-forwarded-for", xff)?;
        if !(trusted && up.headers.contains_key("x-forwarded-proto")) {
            let proto = if ctx.l.cfg.protocol.is_tls() {
                "https"
            } else {
                "http"
            };
            up.insert_header("x-forwarded-proto", proto)?;
        }
    }
    Ok(())
}

/// One `tether::access` line for a finished request. The session key is
/// logged as a hash and no header or query is: cookies and tokens stay out.
pub(super) fn access_log(
    session: &Session,
    ctx: &Ctx,
    status: u16,
    bytes_in: usize,
    bytes_out: usize,
) {
    let l = &ctx.l;
    let key = ctx.session.as_ref().and_then(|v| v.to_str().ok());
    tracing::info!(
        target: "tether::access",
        listener = %l.cfg.name,
        pool = %l.pool.name,
        backend = %ctx.backend.as_ref().map_or("", |(_, b)| &*b.id),
        client = %ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        method = %session.req_header().method,
        status,
        session = %key.map(crate::pool::key_hash).unwrap_or_default(),
        bytes_in,
        bytes_out,
        duration_ms = ctx.start.map_or(0, |s| s.elapsed().as_millis() as u64),
        moved_from = %ctx.moved.as_ref().map_or("", |(f, _)| &**f),
        "request"
    );
}
