//! The heads tether writes on its HTTP/1.1 path, assembled straight into
//! reused buffers from the spans of the heads it read.
//!
//! Upstream (spec rule 7 and its additions): the request line in origin-form,
//! every header but the hop-by-hop ones (RFC 9110 7.6.1: `Connection` and what
//! it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade` unless the
//! request is a WebSocket upgrade, `HTTP2-Settings`), the client's
//! `X-Tether-*`, and, unless the client is a trusted proxy, every forwarding
//! header it sent; then tether's own: `X-Tether-Session`, the move headers,
//! `X-Forwarded-For` (a trusted proxy's list with the peer appended) and
//! `X-Forwarded-Proto`. `Transfer-Encoding` stays: the body is relayed in the
//! framing the client chose. `Host` is an absolute-form target's authority
//! when the client's differs (RFC 9112 3.2.2: a proxy generates it from the
//! target), and a request without one (HTTP/1.0) gets an empty one (3.2: an
//! HTTP/1.1 request always carries `Host`, empty when the target has no
//! authority).
//!
//! To the client: the backend's status and headers, less its connection
//! headers (the client's connection is tether's), obs-folds replaced by a
//! space (RFC 9112 5.2), plus the insert-mode cookie, the body's new framing
//! when tether changes it ([`Reframe`]) and tether's own `Connection`
//! decision.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use super::super::listener::ListenerRt;
use crate::h1::request::{absolute_authority, trim, Request, Span};
use crate::h1::response::Head;
use crate::store::MoveReason;

fn at<'b>(buf: &'b [u8], s: &Span) -> &'b [u8] {
    &buf[s.start as usize..s.end as usize]
}

/// Does a backend read `name` as a statement about the client or the
/// original request? `_` counts as `-` (CGI-style servers merge them).
pub fn is_forwarding(name: &[u8]) -> bool {
    let same = |n: &[u8], p: &[u8]| {
        n.len() == p.len()
            && n.iter()
                .zip(p)
                .all(|(&a, &b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
    };
    const PREFIX: &[u8] = b"x-forwarded-";
    [&b"forwarded"[..], b"x-real-ip", b"x-scheme", b"x-forwarded"]
        .iter()
        .any(|h| same(name, h))
        || name.get(..PREFIX.len()).is_some_and(|n| same(n, PREFIX))
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Comma-separated tokens of every `Connection` line.
fn connection_tokens<'b>(buf: &'b [u8], req: &'b Request) -> impl Iterator<Item = &'b [u8]> + 'b {
    req.headers
        .iter()
        .filter(move |(n, _)| eq(at(buf, n), "connection"))
        .flat_map(move |(_, v)| at(buf, v).split(|&b| b == b','))
        .map(trim)
}

/// The client's address: the peer, or the first untrusted hop of
/// `X-Forwarded-For` (every line one list) when the peer is a trusted proxy.
pub fn client_ip(l: &ListenerRt, buf: &[u8], req: &Request, peer: IpAddr) -> IpAddr {
    if !l.is_trusted(peer) {
        return peer;
    }
    let lines: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|(n, _)| eq(at(buf, n), "x-forwarded-for"))
        .map(|(_, v)| at(buf, v))
        .collect();
    let mut last = peer;
    for line in lines.iter().rev() {
        let Ok(s) = std::str::from_utf8(line) else {
            break;
        };
        for hop in s.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
            match hop.parse::<IpAddr>() {
                Ok(ip) if l.is_trusted(ip) => last = ip,
                Ok(ip) => return ip,
                Err(_) => return last,
            }
        }
    }
    last
}

/// What tether adds to a request upstream.
pub struct Added<'a> {
    pub session: Option<&'a str>,
    pub moved: Option<&'a (Arc<str>, MoveReason)>,
    /// The socket peer (or the PROXY header's source).
    pub peer: IpAddr,
    pub websocket: bool,
}

/// Write the upstream request head for `req` (parsed from `buf`) into `out`.
pub fn request_head(out: &mut Vec<u8>, l: &ListenerRt, buf: &[u8], req: &Request, add: &Added<'_>) {
    out.clear();
    out.extend_from_slice(at(buf, &req.method_span));
    out.push(b' ');
    let target = at(buf, &req.target);
    let authority = absolute_authority(target);
    match authority {
        // absolute-form: origin-form upstream (its authority is the Host, checked equal).
        Some(a) => {
            let origin = origin_form(target, a);
            if origin.first() != Some(&b'/') {
                out.push(b'/');
            }
            out.extend_from_slice(origin);
        }
        None => out.extend_from_slice(target),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let trusted = l.is_trusted(add.peer);
    let nominated: Vec<&[u8]> = connection_tokens(buf, req)
        .filter(|t| !t.is_empty() && !eq(t, "close") && !eq(t, "keep-alive") && !eq(t, "upgrade"))
        .collect();
    let mut xff: Option<Vec<u8>> = None;
    let mut has_proto = false;
    let mut has_host = false;
    for (n, v) in &req.headers {
        let (name, value) = (at(buf, n), at(buf, v));
        let drop = eq(name, "connection")
            || eq(name, "keep-alive")
            || eq(name, "proxy-connection")
            || eq(name, "te")
            || eq(name, "http2-settings")
            || (eq(name, "upgrade") && !add.websocket)
            || name.len() >= 9 && name[..9].eq_ignore_ascii_case(b"x-tether-")
            || nominated.iter().any(|t| t.eq_ignore_ascii_case(name));
        if drop {
            continue;
        }
        if is_forwarding(name) {
            if !trusted {
                continue;
            }
            if eq(name, "x-forwarded-for") {
                let list = xff.get_or_insert_with(Vec::new);
                let value = trim(value);
                if !value.is_empty() {
                    list.extend_from_slice(value);
                    list.extend_from_slice(b", ");
                }
                continue;
            }
            has_proto |= eq(name, "x-forwarded-proto");
        }
        if eq(name, "host") {
            // An absolute-form target's authority replaces a Host that
            // differs (RFC 9112 3.2.2).
            if authority.is_some_and(|a| !a.eq_ignore_ascii_case(value)) {
                continue;
            }
            has_host = true;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.unwrap_or_default());
        out.extend_from_slice(b"\r\n");
    }
    if add.websocket {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    if let Some(s) = add.session {
        out.extend_from_slice(b"x-tether-session: ");
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((from, reason)) = add.moved {
        out.extend_from_slice(b"x-tether-moved-from: ");
        out.extend_from_slice(from.as_bytes());
        out.extend_from_slice(b"\r\nx-tether-move-reason: ");
        out.extend_from_slice(reason.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(list) = &xff {
        out.extend_from_slice(list);
    }
    let _ = write!(out, "{}\r\n", add.peer);
    if !(trusted && has_proto) {
        out.extend_from_slice(if l.cfg.protocol.is_tls() {
            b"x-forwarded-proto: https\r\n"
        } else {
            b"x-forwarded-proto: http\r\n"
        });
    }
    out.extend_from_slice(b"\r\n");
}

/// The path and query of an absolute-form target whose authority is `a`.
fn origin_form<'t>(target: &'t [u8], a: &[u8]) -> &'t [u8] {
    let scheme = target.iter().position(|&b| b == b':').unwrap_or(0) + 3;
    &target[(scheme + a.len()).min(target.len())..]
}

/// How the client's connection goes on after this answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// HTTP/1.1 default: say nothing.
    Default,
    /// An HTTP/1.0 client asked for keep-alive: confirm it.
    Confirm,
    Close,
}

/// How tether re-frames a response body on its way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reframe {
    /// As the backend framed it.
    None,
    /// Chunked from the backend, plain to an HTTP/1.0 client (close-delimited).
    Dechunk,
    /// Close-delimited from the backend, chunked to an HTTP/1.1 client, so
    /// its connection can stay open (as pingora does).
    Chunk,
}

/// Write the client's response head for the backend's `head` into `out`.
/// `reframe`: `Transfer-Encoding` goes (de-chunked) or is added (chunked).
pub fn response_head(
    out: &mut Vec<u8>,
    l: &ListenerRt,
    head: &Head,
    set_cookie: Option<&str>,
    keep: Keep,
    reframe: Reframe,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // The status code and reason phrase as the backend wrote them (its line
    // may end in a bare LF).
    let line_end = head
        .raw
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(head.raw.len());
    let line = &head.raw[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    out.extend_from_slice(line.get(9..).unwrap_or(b"502 Bad Gateway"));
    out.extend_from_slice(b"\r\n");
    let nominated: Vec<&[u8]> = head
        .values("connection")
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim)
        .filter(|t| !t.is_empty() && !eq(t, "close") && !eq(t, "keep-alive"))
        .collect();
    for (name, value) in head.headers() {
        let drop = eq(name, "connection")
            || eq(name, "keep-alive")
            || eq(name, "proxy-connection")
            || (reframe == Reframe::Dechunk && eq(name, "transfer-encoding"))
            || nominated.iter().any(|t| t.eq_ignore_ascii_case(name));
        if drop {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        if head.folded {
            unfold(out, value);
        } else {
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n");
    }
    if reframe == Reframe::Chunk {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(v) = set_cookie {
        cookie_line(out, l, v);
    }
    match keep {
        Keep::Default => {}
        Keep::Confirm => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Keep::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `value` with every obs-fold (a line break and the indent after it)
/// replaced by one space.
fn unfold(out: &mut Vec<u8>, value: &[u8]) {
    let mut folding = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => folding = true,
            b' ' | b'\t' if folding => {}
            _ => {
                if folding {
                    out.push(b' ');
                    folding = false;
                }
                out.push(b);
            }
        }
    }
}

/// The insert-mode `Set-Cookie` line for cookie value `v`.
pub fn cookie_line(out: &mut Vec<u8>, l: &ListenerRt, v: &str) {
    out.extend_from_slice(b"set-cookie: ");
    cookie_attrs(out, l, v);
    out.extend_from_slice(b"\r\n");
}

/// The whole `Set-Cookie` value for cookie value `v`.
pub fn cookie_value(l: &ListenerRt, v: &str) -> String {
    let mut out = Vec::with_capacity(128);
    cookie_attrs(&mut out, l, v);
    String::from_utf8(out).unwrap_or_default()
}

fn cookie_attrs(out: &mut Vec<u8>, l: &ListenerRt, v: &str) {
    let crate::config::Key::Cookie(c) = &l.cfg.affinity.key else {
        return;
    };
    let max_age = c.insert.as_ref().map(|i| i.max_age.as_secs()).unwrap_or(0);
    // Secure on TLS listeners: the browser then never sends it in clear.
    let secure = if l.cfg.protocol.is_tls() {
        "; Secure"
    } else {
        ""
    };
    let _ = write!(
        out,
        "{}={v}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        c.name
    );
}

/// A whole answer of tether's own (no body).
pub fn own_answer(out: &mut Vec<u8>, status: u16, close: bool) {
    out.clear();
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nserver: tether\r\n"
    );
    if status == 503 {
        out.extend_from_slice(b"retry-after: 1\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
