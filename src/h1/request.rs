//! A client's request head, parsed once, strictly (RFC 9112), into spans of
//! the connection's read buffer: nothing is copied and, once a connection's
//! span list has grown to its usual size, nothing is allocated per request.
//!
//! Refused, each with the status a client gets: bare LF line endings,
//! obs-fold, whitespace before a header's colon (httparse refuses the last
//! two), a request line or header httparse cannot read (400); a well-formed
//! version other than HTTP/1.x (505; a higher 1.x minor is read as 1.1, RFC
//! 9110 6.2); both `Content-Length` and `Transfer-Encoding`, more than
//! one `Content-Length` or an invalid one, a `Transfer-Encoding` whose final
//! coding is not `chunked`, or any `Transfer-Encoding` from an HTTP/1.0 client
//! (400; 501 for a coding tether does not know); no `Host`, several, or one
//! that is not a valid `uri-host [":" port]` (RFC 9112 3.2) (400). An
//! absolute-form target's authority overrides the `Host` (RFC 9112 3.2.2).

use std::ops::Range;

/// Most header lines in a request head (more: 431, like too many bytes);
/// pingora's bound.
pub const MAX_HEADERS: usize = 256;

/// A byte range of the read buffer.
pub type Span = Range<u32>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReqError {
    #[error("malformed request head")]
    Malformed,
    #[error("bare LF in the request head")]
    BareLf,
    #[error("too many header lines")]
    TooManyHeaders,
    #[error("unsupported HTTP version")]
    Version,
    #[error("no Host header, several, or one that contradicts the target")]
    Host,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    #[error("invalid or repeated Content-Length")]
    BadLength,
    #[error("Transfer-Encoding without chunked last")]
    BadEncoding,
    #[error("Transfer-Encoding from an HTTP/1.0 client")]
    EncodingOn10,
    #[error("unknown transfer coding")]
    UnknownCoding,
}

impl ReqError {
    /// The status the client is answered with.
    pub fn status(self) -> u16 {
        match self {
            ReqError::TooManyHeaders => 431,
            ReqError::Version => 505,
            ReqError::UnknownCoding => 501,
            _ => 400,
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// The few methods the path treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Connect,
    Trace,
    Patch,
    Other,
}

impl Method {
    fn of(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"CONNECT" => Method::Connect,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other => "OTHER",
        }
    }

    /// RFC 9110 9.2.2: safe to send again after a connection died under it.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// One parsed request head. Spans index the buffer it was parsed from.
#[derive(Debug, Default)]
pub struct Request {
    /// The head's length in the buffer (the body starts there).
    pub len: usize,
    pub method_span: Span,
    pub method: Method,
    pub target: Span,
    /// `HTTP/1.<minor>`.
    pub minor: u8,
    /// (name, value) of every header line, in order.
    pub headers: Vec<(Span, Span)>,
    pub host: Option<Span>,
    pub body: Option<Body>,
    /// The client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// `Upgrade: websocket` with `Connection: upgrade`.
    pub websocket: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Parse the head at the start of `buf` into `req` (its vectors reused).
/// `Ok(false)`: incomplete, read more.
pub fn parse(buf: &[u8], req: &mut Request) -> Result<bool, ReqError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut slots);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(httparse::Error::TooManyHeaders) => return Err(ReqError::TooManyHeaders),
        Err(httparse::Error::Version) => return bad_version(buf, req),
        Err(_) => return Err(ReqError::Malformed),
    };
    // httparse takes a bare LF as a line end; RFC 9112 2.2 lets a server
    // refuse it, and request smuggling feeds on parsers that disagree.
    if has_bare_lf(&buf[..len]) {
        return Err(ReqError::BareLf);
    }
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| -> Span {
        let start = (s.as_ptr() as usize - base) as u32;
        start..start + s.len() as u32
    };
    let method = r.method.ok_or(ReqError::Malformed)?;
    let target = r.path.ok_or(ReqError::Malformed)?;
    req.len = len;
    req.method_span = span(method.as_bytes());
    req.method = Method::of(method.as_bytes());
    req.target = span(target.as_bytes());
    req.minor = match r.version {
        Some(v @ (0 | 1)) => v,
        _ => return Err(ReqError::Version),
    };
    req.headers.clear();
    req.host = None;
    req.websocket = false;
    req.expect_continue = false;
    let (mut cl, mut te_last, mut te_seen, mut hosts) = (None::<&[u8]>, None::<&[u8]>, false, 0);
    let (mut conn_close, mut conn_keep, mut conn_upgrade, mut upgrade_ws) =
        (false, false, false, false);
    for h in r.headers.iter() {
        let (name, value) = (h.name.as_bytes(), h.value);
        req.headers.push((span(name), span(value)));
        if name.eq_ignore_ascii_case(b"content-length") {
            if cl.is_some() {
                return Err(ReqError::BadLength);
            }
            cl = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_seen = true;
            for c in value
                .split(|&b| b == b',')
                .map(trim)
                .filter(|c| !c.is_empty())
            {
                te_last = Some(c);
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            req.host = Some(span(value));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in value.split(|&b| b == b',').map(trim) {
                conn_close |= t.eq_ignore_ascii_case(b"close");
                conn_keep |= t.eq_ignore_ascii_case(b"keep-alive");
                conn_upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_ws |= trim(value).eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case(b"expect") {
            req.expect_continue |= trim(value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    req.body = Some(match (cl, te_seen) {
        (Some(_), true) => return Err(ReqError::LengthAndEncoding),
        (None, true) if req.minor == 0 => return Err(ReqError::EncodingOn10),
        (None, true) => match te_last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Body::Chunked,
            Some(c) if KNOWN_CODINGS.iter().any(|k| c.eq_ignore_ascii_case(k)) => {
                return Err(ReqError::BadEncoding)
            }
            Some(_) => return Err(ReqError::UnknownCoding),
            None => return Err(ReqError::BadEncoding),
        },
        (Some(v), false) => match super::response::parse_length(v) {
            Ok(0) => Body::None,
            Ok(n) => Body::Length(n),
            Err(_) => return Err(ReqError::BadLength),
        },
        (None, false) => Body::None,
    });
    // RFC 9112 3.2: exactly one valid Host for HTTP/1.1. An absolute-form
    // target's authority wins over it (3.2.2: the Host is ignored, and
    // replaced upstream, see `l7::h1::rewrite`).
    if hosts > 1 || (req.minor == 1 && hosts == 0) {
        return Err(ReqError::Host);
    }
    if let Some(h) = &req.host {
        if !valid_host(&buf[h.start as usize..h.end as usize]) {
            return Err(ReqError::Host);
        }
    }
    req.websocket = upgrade_ws && conn_upgrade;
    req.keep_alive = match req.minor {
        0 => conn_keep && !conn_close,
        _ => !conn_close,
    };
    Ok(true)
}

/// A request line httparse refused for its version. A well-formed
/// `HTTP/<digit>.<digit>` that is not 1.0 or 1.1: a higher 1.x minor is
/// served as 1.1 (RFC 9110 6.2: processed as the highest minor version the
/// recipient implements), another major version is a 505. Anything else is
/// not a request line (400). An unfinished line waits for its end.
#[cold]
fn bad_version(buf: &[u8], req: &mut Request) -> Result<bool, ReqError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return Ok(false);
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let version = match parts[..] {
        [m, t, v] if !m.is_empty() && !t.is_empty() => v,
        _ => return Err(ReqError::Malformed),
    };
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => {
            // Read it as HTTP/1.1: same length, so every span still fits `buf`.
            let mut copy = buf.to_vec();
            copy[line.len() - 1] = b'1';
            parse(&copy, req)
        }
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(ReqError::Version)
        }
        _ => Err(ReqError::Malformed),
    }
}

/// A `Host` value: empty, or `uri-host [":" port]` (RFC 3986 3.2.2: an
/// IP-literal in brackets, or a reg-name / IPv4 address of unreserved,
/// percent-encoded and sub-delims characters). Brackets take the same
/// characters and colons (IPv6, a zone id, IPvFuture) without a closer look.
fn valid_host(v: &[u8]) -> bool {
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|&b| b == b']') {
            Some(end) => {
                let inside = &v[1..end];
                if inside.is_empty() || !inside.iter().all(|&b| b == b':' || reg_name(&b)) {
                    return false;
                }
                (&v[..0], &v[end + 1..])
            }
            None => return false,
        },
        _ => match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        },
    };
    host.iter().all(reg_name)
        && (port.is_empty() || (port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit)))
}

/// Transfer codings registered with IANA that are not `chunked`.
const KNOWN_CODINGS: [&[u8]; 6] = [
    b"gzip",
    b"x-gzip",
    b"deflate",
    b"compress",
    b"x-compress",
    b"identity",
];

fn has_bare_lf(head: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in head {
        if b == b'\n' && prev != b'\r' {
            return true;
        }
        prev = b;
    }
    false
}

/// `http://authority/path` or `https://...`: the authority.
pub fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let rest =
        strip_prefix_ci(target, b"http://").or_else(|| strip_prefix_ci(target, b"https://"))?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

fn strip_prefix_ci<'a>(s: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)).then(|| &s[p.len()..])
}

/// `v` without the optional whitespace (SP, HTAB) around a field value or list item.
pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Request {
        let mut r = Request::default();
        assert_eq!(parse(s.as_bytes(), &mut r), Ok(true), "{s:?}");
        r
    }

    fn err(s: &str) -> ReqError {
        let mut r = Request::default();
        parse(s.as_bytes(), &mut r).expect_err(s)
    }

    #[test]
    fn framing_and_connection() {
        let r = ok("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(
            (r.body, r.keep_alive, r.method),
            (Some(Body::Length(5)), true, Method::Post)
        );
        assert_eq!(r.len, 48);
        let r = ok("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(r.body, Some(Body::Chunked));
        let r = ok("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive && r.host.is_none());
        assert!(!ok("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        let ws = ok("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n");
        assert!(ws.websocket);
        assert!(!ok("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").websocket);
        assert!(
            ok("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        let mut r = Request::default();
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut r), Ok(false));
    }

    #[test]
    fn smuggling_and_malformed_heads_are_refused() {
        let cases: [(&str, ReqError); 12] = [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", ReqError::LengthAndEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", ReqError::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", ReqError::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", ReqError::BadLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", ReqError::BadEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n", ReqError::UnknownCoding),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", ReqError::EncodingOn10),
            ("GET / HTTP/1.1\nHost: a\n\n", ReqError::BareLf),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", ReqError::Malformed),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", ReqError::Malformed),
            ("GET / HTTP/1.1\r\n\r\n", ReqError::Host),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", ReqError::Host),
        ];
        for (req, want) in cases {
            assert_eq!(err(req), want, "{req:?}");
        }
        assert_eq!(err("GET / HTTP/2.0\r\nHost: a\r\n\r\n").status(), 505);
        for bad_line in [
            "GET / http/1.1\r\nHost: a\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1x\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(err(bad_line), ReqError::Malformed, "{bad_line:?}");
        }
        let r = ok("GET /x HTTP/1.7\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!((r.minor, r.body, r.len), (1, Some(Body::Length(2)), 47));
        let mut r = Request::default();
        assert_eq!(parse(b"GET / HTTP/1.2", &mut r), Ok(false));
        for host in ["a b", "a/b", "a:b", "[::1", "a@b", "[]", "[::1]x"] {
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(err(&req), ReqError::Host, "{host:?}");
        }
        for host in [
            "",
            "a.test",
            "a.test:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
            "[fe80::1%25eth0]:1",
            "x:",
            "a.test \t",
        ] {
            ok(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        }
        ok("GET http://A:80/x HTTP/1.1\r\nHost: a:80\r\n\r\n");
        ok("GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n");
        ok("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n");
    }
}
