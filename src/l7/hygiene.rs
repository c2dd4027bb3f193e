//! What tether does to the headers of every request (spec rule 7) and what it
//! logs of it: the client address (trusted `X-Forwarded-For`), removing
//! `X-Tether-*` and non-WebSocket upgrades, the request-smuggling check, the
//! forwarding headers sent upstream (a client's own are dropped unless it is a
//! trusted proxy), and the access-log line (no secrets).

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
    // Every line is part of one list, read from the nearest hop back; empty
    // elements are allowed in lists (RFC 9110 5.6.1).
    for v in req.headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(s) = v.to_str() else { break };
        for hop in s.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
            match hop.parse::<IpAddr>() {
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

/// Does a backend read `name` as a statement about the client or the original
/// request (address, scheme, host, port, path, certificate)? Matched in both
/// spellings: CGI-style servers turn `-` into `_`, so `X_Forwarded_For` is the
/// same header to them. `name` is lower case (`http::HeaderName`).
fn is_forwarding(name: &str) -> bool {
    let name = name.as_bytes();
    // `_` in `name` counts as `-`.
    let same = |n: &[u8], p: &[u8]| {
        n.len() == p.len()
            && n.iter()
                .zip(p)
                .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
    };
    const PREFIX: &[u8] = b"x-forwarded-";
    [&b"forwarded"[..], b"x-real-ip", b"x-scheme", b"x-forwarded"]
        .iter()
        .any(|h| same(name, h))
        || name.get(..PREFIX.len()).is_some_and(|n| same(n, PREFIX))
}

/// Remove every forwarding header a client sent: only a trusted proxy's are believed.
fn strip_forwarding(req: &mut RequestHeader) {
    let strip: Vec<_> = (req.headers.keys())
        .filter(|k| is_forwarding(k.as_str()))
        .cloned()
        .collect();
    for k in strip {
        req.remove_header(&k);
    }
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
    let trusted = peer.is_some_and(|p| ctx.l.is_trusted(p));
    if !trusted {
        strip_forwarding(up);
    }
    if let Some(peer) = peer {
        // Several lines are one list (RFC 9110 5.3): keep every hop, in order.
        let mut xff = String::new();
        for line in up.headers.get_all("x-forwarded-for") {
            let Ok(line) = line.to_str() else { continue };
            let line = line.trim();
            if !line.is_empty() {
                xff.push_str(line);
                xff.push_str(", ");
            }
        }
        xff.push_str(&peer.to_string());
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
    if ctx.l.pool.cfg().protocol.is_h2() && wants_trailers(session.req_header()) {
        // pingora drops TE as hop-by-hop when it rewrites a request for h2
        // (HTTP/1.1 clients, gRPC streams); `te: trailers` is the one value
        // HTTP/2 allows, and some gRPC servers insist on it.
        up.insert_header(header::TE, "trailers")?;
    }
    Ok(())
}

/// Did the client say it accepts trailers (`TE: trailers`)?
fn wants_trailers(req: &RequestHeader) -> bool {
    req.headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        })
    })
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

#[cfg(test)]
mod tests {
    #[test]
    fn forwarding_headers_in_both_spellings() {
        for yes in [
            "forwarded",
            "x-real-ip",
            "x_real_ip",
            "x-scheme",
            "x_scheme",
            "x-forwarded",
            "x-forwarded-for",
            "x_forwarded_for",
            "x-forwarded_for",
            "x-forwarded-tls-client-cert-info",
            "x_forwarded_tls_client_cert_info",
            "x-forwarded-anything",
            "x_forwarded_a_very_long_name_beyond_thirty_two_bytes",
        ] {
            assert!(super::is_forwarding(yes), "{yes}");
        }
        for no in [
            "x-forwardedness",
            "forwarded-for",
            "x-real-ip-2",
            "x-tether-session",
            "host",
            "x-forwarde",
            "",
        ] {
            assert!(!super::is_forwarding(no), "{no}");
        }
    }
}
