//! The server name (SNI) of a TLS ClientHello, read from a connection's
//! first bytes without terminating TLS: the bytes are only looked at, and the
//! backend still gets them all, untouched.
//!
//! Parsing is defensive: every length is checked against what is there, a
//! handshake message split over several records is reassembled, and anything
//! that is not a ClientHello (or has no usable name) answers "no name", which
//! the listener's fallback turns into a decision. Nothing here panics.

/// Largest ClientHello message accepted; a bigger one counts as "no name".
pub const MAX_HELLO: usize = 16 * 1024;
/// Bytes buffered at most while looking for the name: the message plus the
/// headers of the records it may be split over.
pub const MAX_BUFFER: usize = MAX_HELLO + 2048;
/// Longest DNS name (RFC 1035).
const MAX_NAME: usize = 253;

/// Where reading a ClientHello stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello may be on its way: read more.
    More,
    /// Decided: the server name (lower case, no trailing dot), or none.
    Done(Option<String>),
}

/// Look at the bytes read so far.
pub fn server_name(buf: &[u8]) -> Hello {
    // A handshake record (22) of TLS 1.x (major version 3): anything else is
    // not TLS, and waiting for more would only delay the fallback.
    if buf.first().is_some_and(|&b| b != 0x16) || buf.get(1).is_some_and(|&b| b != 3) {
        return Hello::Done(None);
    }
    let mut msg: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        let Some(head) = rest.get(..5) else {
            return Hello::More;
        };
        if head[0] != 0x16 || head[1] != 3 {
            return Hello::Done(None);
        }
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        // TLSPlaintext.length is at most 2^14; an empty handshake record is invalid.
        if len == 0 || len > 16 * 1024 {
            return Hello::Done(None);
        }
        let Some(payload) = rest.get(5..5 + len) else {
            return Hello::More;
        };
        msg.extend_from_slice(payload);
        rest = &rest[5 + len..];
        if let Some(h) = msg.get(..4) {
            if h[0] != 1 {
                return Hello::Done(None); // not a ClientHello
            }
            let body = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
            if body > MAX_HELLO {
                return Hello::Done(None);
            }
            if let Some(hello) = msg.get(4..4 + body) {
                return Hello::Done(parse_hello(hello));
            }
        }
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A vector with a `width`-byte length prefix.
    fn vec(&mut self, width: usize) -> Option<&'a [u8]> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        self.take(n)
    }
}

/// The ClientHello body (RFC 8446 4.1.2): the `server_name` extension's host name.
fn parse_hello(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec(1)?; // legacy_session_id
    r.vec(2)?; // cipher_suites
    r.vec(1)?; // legacy_compression_methods
    let mut exts = Reader(r.vec(2)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec(2)?;
        if kind == 0 {
            return host_name(data);
        }
    }
    None
}

/// The `server_name` extension (RFC 6066 3): the first `host_name` entry.
fn host_name(data: &[u8]) -> Option<String> {
    let mut list = Reader(Reader(data).vec(2)?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec(2)?;
        if kind != 0 {
            continue;
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        // Names are case-insensitive: one session per name, however it is spelled.
        return ok.then(|| String::from_utf8_lossy(name).to_ascii_lowercase());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record with an unrelated extension before SNI.
    fn hello(name: &[u8]) -> Vec<u8> {
        let mut sni = vec![0u8];
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name);
        let mut list = (sni.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&sni);
        let mut exts = vec![0x0a, 0x0a, 0, 0]; // a GREASE extension, empty
        exts.extend_from_slice(&[0, 0]);
        exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
        exts.extend_from_slice(&list);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1, 0];
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn finds_the_name() {
        let h = hello(b"Device-7.Example.com.");
        assert_eq!(
            server_name(&h),
            Hello::Done(Some("device-7.example.com".into()))
        );
        for n in 0..h.len() {
            assert_eq!(server_name(&h[..n]), Hello::More, "{n} bytes");
        }
    }

    #[test]
    fn reassembles_a_hello_split_over_records() {
        let h = hello(b"split.example");
        let msg = &h[5..];
        let mut two = Vec::new();
        for part in [&msg[..10], &msg[10..]] {
            two.extend_from_slice(&[0x16, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(server_name(&two), Hello::Done(Some("split.example".into())));
    }

    #[test]
    fn anything_else_is_no_name() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Hello::Done(None));
        assert_eq!(server_name(&[0x16, 2]), Hello::Done(None));
        assert_eq!(server_name(&hello(b"bad name")), Hello::Done(None));
        assert_eq!(server_name(&hello(b"")), Hello::Done(None));
        let mut not_hello = hello(b"x.example");
        not_hello[5] = 2; // ServerHello
        assert_eq!(server_name(&not_hello), Hello::Done(None));
        // Lengths that lie: inner vectors longer than their container.
        let mut lying = hello(b"x.example");
        let at = lying.len() - 11; // high byte of the name length
        lying[at] = 0xff;
        assert!(matches!(server_name(&lying), Hello::Done(_)));
    }
}
