//! PROXY protocol headers (HAProxy's spec, v1 text and v2 binary): parsing
//! the one a trusted load balancer puts in front of a connection, and
//! encoding the one tether sends to backends (`send_proxy`).
//!
//! Pure functions on bytes, so every malformed input is an `Err` and never a
//! panic; reading from a socket (with its size bound and timeout) is `admit`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::ProxyVersion;

/// The 12 bytes every v2 header starts with.
pub const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the spec's own bound).
pub const V1_MAX: usize = 107;
/// Largest v2 header accepted: the fixed 16 bytes, addresses and a generous
/// allowance for TLVs. A bigger one is refused rather than buffered.
pub const V2_MAX: usize = 16 + 1024;

/// What a header says. `addrs` is `None` for v2 `LOCAL`, v1 `UNKNOWN` and
/// address families without IP addresses: the connection's own peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `(source, destination)`: the client and the address it connected to.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("v1 header without CRLF in its first {V1_MAX} bytes")]
    V1TooLong,
    #[error("v2 header of {0} bytes is over the {V2_MAX}-byte bound")]
    V2TooLarge(usize),
    #[error("bad v1 header: {0}")]
    V1(&'static str),
    #[error("bad v2 header: {0}")]
    V2(&'static str),
}

/// The length of the header at the start of `buf`: `Ok(None)` while more
/// bytes are needed to tell. Never asks for more than the bounds above.
pub fn header_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        let Some(len) = buf.get(14..16) else {
            return Ok(None);
        };
        let total = 16 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        return if total > V2_MAX {
            Err(ParseError::V2TooLarge(total))
        } else {
            Ok(Some(total))
        };
    }
    let m = buf.len().min(6);
    if buf[..m] != b"PROXY "[..m] {
        return Err(ParseError::NotProxy);
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(p) if p + 2 <= V1_MAX => Ok(Some(p + 2)),
        Some(_) => Err(ParseError::V1TooLong),
        None if buf.len() >= V1_MAX => Err(ParseError::V1TooLong),
        None => Ok(None),
    }
}

/// Parse exactly one header (as long as `header_len` said).
pub fn parse(buf: &[u8]) -> Result<Header, ParseError> {
    if buf.starts_with(&V2_SIG) {
        parse_v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(ParseError::NotProxy)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Header, ParseError> {
    let bad = ParseError::V1;
    let text = std::str::from_utf8(buf).map_err(|_| bad("not ASCII"))?;
    let text = text.strip_suffix("\r\n").ok_or(bad("no CRLF at the end"))?;
    let mut parts = text.split(' ');
    parts.next(); // "PROXY", checked by the caller
    let v4 = match parts.next() {
        // Whatever follows UNKNOWN is to be ignored (spec 2.1).
        Some("UNKNOWN") => return Ok(Header { addrs: None }),
        Some("TCP4") => true,
        Some("TCP6") => false,
        _ => return Err(bad("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad("expected exactly: source destination sport dport"));
    };
    let ip = |s: &str| -> Result<IpAddr, ParseError> {
        if v4 {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        } else {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        }
        .map_err(|_| bad("address does not match the protocol"))
    };
    Ok(Header {
        addrs: Some((
            SocketAddr::new(ip(src)?, port(sport)?),
            SocketAddr::new(ip(dst)?, port(dport)?),
        )),
    })
}

/// A v1 port: 1 to 5 digits only (`str::parse` would also take `+80`).
fn port(s: &str) -> Result<u16, ParseError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse() {
        Ok(p) if digits => Ok(p),
        _ => Err(ParseError::V1("port is not a number 0-65535")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Header, ParseError> {
    let bad = ParseError::V2;
    let (ver_cmd, family) = match buf.get(12..16) {
        Some(b) if 16 + usize::from(u16::from_be_bytes([b[2], b[3]])) == buf.len() => (b[0], b[1]),
        _ => return Err(bad("length does not match")),
    };
    if ver_cmd >> 4 != 2 {
        return Err(bad("version is not 2"));
    }
    let body = &buf[16..];
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (a health check): no client behind it.
        0 => return Ok(Header { addrs: None }),
        1 => {}
        _ => return Err(bad("command is neither LOCAL nor PROXY")),
    }
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let addrs = match family {
        // TCP or UDP over IPv4.
        0x11 | 0x12 => {
            let a = body.get(..12).ok_or(bad("IPv4 addresses cut short"))?;
            let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
            Some((
                SocketAddr::new(ip(0), be16(&a[8..])),
                SocketAddr::new(ip(4), be16(&a[10..])),
            ))
        }
        // TCP or UDP over IPv6.
        0x21 | 0x22 => {
            let a = body.get(..36).ok_or(bad("IPv6 addresses cut short"))?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::from(b)
            };
            Some((
                SocketAddr::new(ip(0), be16(&a[32..])),
                SocketAddr::new(ip(16), be16(&a[34..])),
            ))
        }
        // UNSPEC and unix sockets carry no IP address.
        0x00 | 0x31 | 0x32 => None,
        _ => return Err(bad("unknown address family")),
    };
    Ok(Header { addrs })
}

/// The header announcing a connection from `src` to `dst`. v1 and v2 need
/// both addresses in one family: mixed ones are sent as IPv6 (v4-mapped).
pub fn encode(v: ProxyVersion, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    let six = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    let (src, dst) = if src.is_ipv4() && dst.is_ipv4() {
        (src, dst)
    } else {
        (six(src), six(dst))
    };
    match v {
        ProxyVersion::V1 => {
            let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let (s, d) = (src.ip(), dst.ip());
            let (sp, dp) = (src.port(), dst.port());
            format!("PROXY {fam} {s} {d} {sp} {dp}\r\n").into_bytes()
        }
        ProxyVersion::V2 => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIG);
            out.push(0x21); // version 2, PROXY
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
#[path = "proxy_proto_tests.rs"]
mod tests;
