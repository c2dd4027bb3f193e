//! Unit tests of PROXY header parsing and encoding: round trips, the
//! spec's examples, and malformed input that must be an error, not a panic.

use super::*;

fn a(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn whole(buf: &[u8]) -> Result<Header, ParseError> {
    match header_len(buf)? {
        Some(n) => parse(&buf[..n]),
        None => Err(ParseError::V1("incomplete")),
    }
}

#[test]
fn v1_examples() {
    let h = whole(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET /").unwrap();
    assert_eq!(h.addrs, Some((a("192.0.2.7:56324"), a("10.0.0.1:443"))));
    let h = whole(b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n").unwrap();
    assert_eq!(h.addrs, Some((a("[2001:db8::1]:1"), a("[::1]:2"))));
    assert_eq!(whole(b"PROXY UNKNOWN\r\n").unwrap().addrs, None);
    assert_eq!(
        whole(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").unwrap().addrs,
        None
    );
}

#[test]
fn lengths_need_only_what_they_say() {
    assert_eq!(header_len(b""), Ok(None));
    assert_eq!(header_len(b"PRO"), Ok(None));
    assert_eq!(header_len(b"PROXY TCP4 1.2.3.4"), Ok(None));
    assert_eq!(header_len(b"\r\n\r\n\0\r\nQU"), Ok(None));
    assert_eq!(header_len(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotProxy));
    assert_eq!(header_len(&[0x16, 3, 1]), Err(ParseError::NotProxy));
    let long = [b"PROXY ".as_slice(), &[b'x'; 200]].concat();
    assert_eq!(header_len(&long), Err(ParseError::V1TooLong));
    let mut big = V2_SIG.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert_eq!(header_len(&big), Err(ParseError::V2TooLarge(16 + 65535)));
}

#[test]
fn malformed_v1_is_an_error() {
    for bad in [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
    ] {
        assert!(whole(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn round_trips() {
    for (src, dst) in [
        (a("192.0.2.7:56324"), a("10.0.0.1:443")),
        (a("[2001:db8::7]:1"), a("[::1]:65535")),
    ] {
        for v in [ProxyVersion::V1, ProxyVersion::V2] {
            let bytes = encode(v, src, dst);
            assert_eq!(header_len(&bytes), Ok(Some(bytes.len())), "{v:?}");
            assert_eq!(parse(&bytes).unwrap().addrs, Some((src, dst)), "{v:?}");
        }
    }
}

#[test]
fn mixed_families_are_sent_as_ipv6() {
    let bytes = encode(ProxyVersion::V1, a("192.0.2.7:1"), a("[::1]:2"));
    assert_eq!(bytes, b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n");
    let mapped = encode(ProxyVersion::V2, a("[::ffff:192.0.2.7]:1"), a("10.0.0.1:2"));
    assert_eq!(mapped[13], 0x11, "a v4-mapped address goes out as IPv4");
}

#[test]
fn v2_local_and_unspec_carry_no_address() {
    let mut local = V2_SIG.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert_eq!(whole(&local).unwrap().addrs, None);
    let mut unix = V2_SIG.to_vec();
    unix.extend_from_slice(&[0x21, 0x31, 0, 4, 1, 2, 3, 4]);
    assert_eq!(whole(&unix).unwrap().addrs, None);
}

#[test]
fn v2_with_tlvs_keeps_the_addresses() {
    let mut h = encode(ProxyVersion::V2, a("192.0.2.7:5"), a("10.0.0.1:6"));
    h[15] += 7; // one TLV: type, length 4, value
    h.extend_from_slice(&[0x04, 0, 4, 1, 2, 3, 4]);
    assert_eq!(
        whole(&h).unwrap().addrs,
        Some((a("192.0.2.7:5"), a("10.0.0.1:6")))
    );
}

#[test]
fn malformed_v2_is_an_error() {
    let good = encode(ProxyVersion::V2, a("192.0.2.7:5"), a("10.0.0.1:6"));
    let mut version = good.clone();
    version[12] = 0x11;
    let mut command = good.clone();
    command[12] = 0x2f;
    let mut family = good.clone();
    family[13] = 0x41;
    let mut short = good.clone();
    short[15] = 4;
    short.truncate(20);
    for bad in [version, command, family, short] {
        assert!(whole(&bad).is_err(), "{bad:?}");
    }
    // Every truncation of a good header asks for more (or names the full
    // length), and parsing it is an error, never a panic.
    for n in 0..good.len() {
        let len = header_len(&good[..n]);
        assert!(
            matches!(len, Ok(None)) || len == Ok(Some(good.len())),
            "{n}"
        );
        assert!(parse(&good[..n]).is_err(), "{n}");
    }
}
