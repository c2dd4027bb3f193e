//! A backend's response head, read by tether itself, and how long the body
//! behind it is (RFC 9112 6.3). Framing the RFC calls invalid, or that
//! request smuggling feeds on (both `Content-Length` and
//! `Transfer-Encoding`, several or malformed lengths), is an error: the
//! caller answers 502 and does not reuse the connection.
//!
//! Where RFC 9112 lets a proxy repair a response instead, it is read like
//! pingora reads it (the reference): whitespace between a field name and its
//! colon is dropped (5.1), obs-fold is accepted and replaced by a space when
//! relayed (5.2, see [`Head::folded`]), a bare LF ends a line (2.2); and the
//! same bounds (a head of up to 1 MiB, 256 lines).

use std::ops::Range;

/// Largest response head accepted (pingora's bound).
pub const MAX_HEAD: usize = 1024 * 1024 - 1;
/// Most header lines in a response head (pingora's bound).
const MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed response head: {0}")]
    Malformed(String),
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndEncoding,
    #[error("invalid or repeated Content-Length")]
    BadLength,
    #[error("unsupported Transfer-Encoding")]
    BadEncoding,
}

/// One response head, as the backend wrote it.
#[derive(Debug, Clone)]
pub struct Head {
    /// Status line to the blank line, inclusive.
    pub raw: Vec<u8>,
    pub status: u16,
    /// `HTTP/1.<minor>`.
    pub minor: u8,
    /// Some value holds an obs-fold (line break and indent): relayed with
    /// each fold replaced by one space.
    pub folded: bool,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (1xx, 204, 304, an answer to HEAD).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    Close,
}

impl Head {
    /// Parse a head at the start of `buf`. `Ok(None)`: incomplete.
    /// On success also returns the head's length (the body starts there).
    pub fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match httparse::ParserConfig::default()
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .parse_response(&mut resp, buf)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        };
        if len > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let base = buf.as_ptr() as usize;
        let range = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let headers = resp
            .headers
            .iter()
            .map(|h| (range(h.name.as_bytes()), range(h.value)))
            .collect();
        let folded = resp.headers.iter().any(|h| h.value.contains(&b'\n'));
        Ok(Some((
            Head {
                raw: buf[..len].to_vec(),
                status: resp.code.unwrap_or(0),
                minor: resp.version.unwrap_or(1),
                folded,
                headers,
            },
            len,
        )))
    }

    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    /// The values of header `name` (case-insensitive), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// The body's framing, for a response to a request that was (`head`) or
    /// was not a HEAD request.
    pub fn framing(&self, head: bool) -> Result<Framing, HeadError> {
        if head || (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
            return Ok(Framing::Empty);
        }
        let mut te = self.values("transfer-encoding").peekable();
        let has_te = te.peek().is_some();
        let mut last_coding: Option<&[u8]> = None;
        for v in te {
            for coding in v.split(|&b| b == b',') {
                let c = coding.trim_ascii();
                if !c.is_empty() {
                    last_coding = Some(c);
                }
            }
        }
        let mut cl = self.values("content-length");
        let length = cl.next();
        if has_te {
            if length.is_some() {
                return Err(HeadError::LengthAndEncoding);
            }
            // Chunked only as the final coding; any other final coding is
            // close-delimited for a response (RFC 9112 6.3, item 4).
            return Ok(match last_coding {
                Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
                Some(_) => Framing::Close,
                None => return Err(HeadError::BadEncoding),
            });
        }
        match (length, cl.next()) {
            (None, _) => Ok(Framing::Close),
            (Some(_), Some(_)) => Err(HeadError::BadLength),
            (Some(v), None) => parse_length(v).map(Framing::Length),
        }
    }
}

/// A `Content-Length` value: digits only (no sign, no list, no spaces inside).
pub fn parse_length(v: &[u8]) -> Result<u64, HeadError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadLength);
    }
    v.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(HeadError::BadLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        Head::parse(s.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |s: &str| head(s).framing(false);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::Close));
        assert_eq!(
            f("HTTP/1.1 204 No\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(f("HTTP/1.1 304 No\r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Ok(Framing::Close)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            Err(HeadError::LengthAndEncoding)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            Err(HeadError::BadLength)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n"),
            Err(HeadError::BadLength)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 3,3\r\n\r\n"),
            Err(HeadError::BadLength)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n").framing(true),
            Ok(Framing::Empty)
        );
    }

    #[test]
    fn repairable_heads_are_read_like_pingora_reads_them() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length : 3\r\nX-Fold: a\r\n b\r\n\r\n");
        assert_eq!(h.framing(false), Ok(Framing::Length(3)));
        assert!(h.folded);
        assert_eq!(h.values("x-fold").next(), Some(&b"a\r\n b"[..]));
        let h = head("HTTP/1.1 204 No Content\nX-A: 1\n\n");
        assert_eq!((h.status, h.folded), (204, false));
        assert_eq!(h.values("x-a").next(), Some(&b"1"[..]));
    }

    #[test]
    fn partial_and_oversized_heads() {
        assert!(matches!(Head::parse(b"HTTP/1.1 101 Switching"), Ok(None)));
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(Head::parse(big.as_bytes()).err(), Some(HeadError::TooLarge));
        let h = head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\r\n");
        assert_eq!(h.status, 101);
        assert_eq!(h.values("sec-websocket-accept").next(), Some(&b"abc"[..]));
    }
}
