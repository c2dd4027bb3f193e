//! Reading a session key out of a request, without allocating.
//!
//! Values are borrowed from the request header; a client address becomes a
//! key in a small stack buffer. Keys longer than [`MAX_KEY_LEN`] or empty count
//! as absent, so a client cannot bloat the store with huge keys.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, COOKIE};

use crate::config::IpMask;

pub const MAX_KEY_LEN: usize = 256;

pub fn usable(v: &str) -> Option<&str> {
    (!v.is_empty() && v.len() <= MAX_KEY_LEN).then_some(v)
}

/// The value of cookie `name` from any `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|line| cookie_in_line(line, name))
}

/// The value of cookie `name` in one `Cookie` header line.
pub fn cookie_in_line<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    for pair in line.split(';') {
        let pair = pair.trim_start_matches(' ');
        if let Some(v) = pair.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            let v = v.trim_end_matches(' ');
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            return usable(v);
        }
    }
    None
}

/// The raw (not percent-decoded) value of query parameter `name`.
pub fn query<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .and_then(usable)
}

/// The first value of header `name`.
pub fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(usable)
}

/// A client address, masked to its network, as a key in a stack buffer.
#[derive(Clone, Copy)]
pub struct IpKey {
    buf: [u8; 48],
    len: usize,
}

impl IpKey {
    pub fn new(ip: IpAddr, mask: IpMask) -> Self {
        let ip = ip.to_canonical();
        let masked = match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let m = if mask.ipv4 == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(mask.ipv4.min(32)))
                };
                IpAddr::from((bits & m).to_be_bytes())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let m = if mask.ipv6 == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(mask.ipv6.min(128)))
                };
                IpAddr::from((bits & m).to_be_bytes())
            }
        };
        let mut k = IpKey {
            buf: [0; 48],
            len: 0,
        };
        // An IPv6 address prints in at most 39 bytes, so this cannot overflow.
        let _ = write!(k, "{masked}");
        k
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for IpKey {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn cookies() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; TETHERX=no; TETHER=abc"),
        );
        h.append(COOKIE, HeaderValue::from_static("JSESSIONID=\"q\""));
        assert_eq!(cookie(&h, "TETHER"), Some("abc"));
        assert_eq!(cookie(&h, "JSESSIONID"), Some("q"));
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn queries() {
        assert_eq!(query(Some("a=1&device=d7&x"), "device"), Some("d7"));
        assert_eq!(query(Some("devices=1"), "device"), None);
        assert_eq!(query(Some("device="), "device"), None);
        assert_eq!(query(None, "device"), None);
    }

    #[test]
    fn ip_masks() {
        let m = IpMask { ipv4: 24, ipv6: 64 };
        assert_eq!(
            IpKey::new("10.1.2.3".parse().unwrap(), m).as_str(),
            "10.1.2.0"
        );
        assert_eq!(
            IpKey::new("2001:db8:1:2:3:4:5:6".parse().unwrap(), m).as_str(),
            "2001:db8:1:2::"
        );
        assert_eq!(
            IpKey::new("::ffff:10.1.2.3".parse().unwrap(), IpMask::default()).as_str(),
            "10.1.2.3"
        );
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(IpKey::new(full, IpMask::default()).as_str().len(), 39);
    }
}
