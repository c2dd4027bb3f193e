//! PROXY protocol v1/v2 (`l4::proxy_proto`): encode -> decode round trips
//! with random addresses, and hostile headers (random bytes, mutated valid
//! headers, random v1 token lines, v2 signatures with random lengths).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proptest::prelude::*;
use tether::config::ProxyVersion;
use tether::l4::proxy_proto::{encode, header_len, parse, Header, V1_MAX, V2_MAX, V2_SIG};

use crate::{bound, gen, peak};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        // v4-mapped IPv6: encode sends it as plain IPv4 when it can
        any::<[u8; 4]>().prop_map(|b| IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())),
    ]
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn version() -> impl Strategy<Value = ProxyVersion> {
    prop_oneof![Just(ProxyVersion::V1), Just(ProxyVersion::V2)]
}

/// What a header for `(src, dst)` decodes to: canonical addresses, both
/// IPv4 or else both IPv6 (v4-mapped), as `encode` documents.
fn expected(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (s, d) = (canon(src), canon(dst));
    if s.is_ipv4() && d.is_ipv4() {
        return (s, d);
    }
    let six = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (six(s), six(d))
}

/// A valid header of either version followed by what the client sends next.
fn valid() -> impl Strategy<Value = Vec<u8>> {
    (
        version(),
        addr(),
        addr(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(v, s, d, tail)| {
            let mut b = encode(v, s, d);
            b.extend(tail);
            b
        })
}

/// Peer bytes a balancer (or an attacker posing as one) might send.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just("TCP4".to_owned()),
        Just("TCP6".to_owned()),
        Just("UNKNOWN".to_owned()),
        Just("".to_owned()),
        "[0-9.:a-fA-F+-]{0,45}",
        "[ -~]{0,120}",
    ];
    let v1 = (prop::collection::vec(token, 0..7), prop::bool::ANY).prop_map(|(t, crlf)| {
        let mut s = format!("PROXY {}", t.join(" "));
        if crlf {
            s.push_str("\r\n");
        }
        s.into_bytes()
    });
    let v2 = (
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..1100),
    )
        .prop_map(|(ver_cmd, fam, len, body)| {
            let mut b = V2_SIG.to_vec();
            b.extend([ver_cmd, fam]);
            b.extend(len.to_be_bytes());
            b.extend(body);
            b
        });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1200),
        v1,
        v2,
        valid().prop_flat_map(gen::mutate),
    ]
}

/// `header_len`, then `parse` on as much as it said: the way `admit` uses them.
fn decode(
    buf: &[u8],
) -> (
    Result<Option<usize>, tether::l4::proxy_proto::ParseError>,
    Option<Header>,
) {
    let len = header_len(buf);
    let parsed = match len {
        Ok(Some(n)) if n <= buf.len() => parse(&buf[..n]).ok(),
        _ => None,
    };
    (len, parsed)
}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn encode_then_decode_round_trips(v in version(), src in addr(), dst in addr(),
                                      tail in prop::collection::vec(any::<u8>(), 0..40)) {
        let header = encode(v, src, dst);
        let mut wire = header.clone();
        wire.extend(&tail);
        let ((len, parsed), used) = peak(|| decode(&wire));
        prop_assert_eq!(len, Ok(Some(header.len())));
        prop_assert_eq!(parsed, Some(Header { addrs: Some(expected(src, dst)) }));
        prop_assert!(used <= bound(wire.len()), "{} bytes for {}", used, wire.len());
        // Until the header is whole, it is either "more" or already its length.
        for m in 0..header.len() {
            let early = header_len(&header[..m]);
            prop_assert!(early == Ok(None) || early == Ok(Some(header.len())), "{m}: {early:?}");
        }
    }

    #[test]
    fn hostile_headers_are_bounded_errors(buf in hostile(), cut in any::<prop::sample::Index>()) {
        let ((len, _), used) = peak(|| {
            let r = decode(&buf);
            let _ = parse(&buf); // parse on unframed bytes must not panic either
            r
        });
        prop_assert!(used <= bound(buf.len()), "{} bytes for {}", used, buf.len());
        match &len {
            // Waiting for more is only while the bounds are not reached.
            Ok(None) => prop_assert!(buf.len() < V1_MAX),
            Ok(Some(n)) => prop_assert!(*n <= V2_MAX && (buf.starts_with(&V2_SIG) || *n <= V1_MAX)),
            Err(_) => {}
        }
        // An answer never changes as more bytes arrive: a prefix says "more"
        // or the same thing.
        let m = cut.index(buf.len() + 1);
        let early = header_len(&buf[..m]);
        prop_assert!(early == Ok(None) || early == len, "{m}: {early:?} vs {len:?}");
    }
}
