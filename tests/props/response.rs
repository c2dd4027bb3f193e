//! A backend's response head and its framing (`h1::response`): heads with
//! random mixes of Content-Length and Transfer-Encoding (repeated, in any
//! case, with signs, lists, spaces, overflowing values), random bytes and
//! mutations. Framing never accepts both headers or two lengths.

use proptest::prelude::*;
use tether::h1::response::{Framing, Head, HeadError, MAX_HEAD};

use crate::{bound, gen, peak};

fn header() -> impl Strategy<Value = String> {
    let cl_name = prop_oneof![
        Just("Content-Length"),
        Just("content-length"),
        Just("CONTENT-LENGTH")
    ];
    let cl_value = prop_oneof![
        8 => "[0-9]{1,5}",
        1 => Just("18446744073709551615".to_owned()),
        1 => Just("18446744073709551616".to_owned()),
        1 => Just("99999999999999999999".to_owned()),
        1 => "[ \t]{0,2}[0-9]{1,3}[ \t]{0,2}",
        1 => "[+-][0-9]{1,3}",
        1 => "[0-9]{1,2}, ?[0-9]{1,2}",
        1 => Just("0x10".to_owned()),
        1 => Just("".to_owned()),
    ];
    let te_name = prop_oneof![Just("Transfer-Encoding"), Just("transfer-encoding")];
    let te_value = prop_oneof![
        4 => Just("chunked"),
        1 => Just("CHUNKED"),
        1 => Just("gzip, chunked"),
        1 => Just("chunked, gzip"),
        1 => Just("chunked,"),
        1 => Just(" , "),
        1 => Just(""),
        1 => Just("identity"),
    ];
    prop_oneof![
        1 => (cl_name, cl_value).prop_map(|(n, v)| format!("{n}: {v}")),
        1 => (te_name, te_value).prop_map(|(n, v)| format!("{n}: {v}")),
        3 => "[A-Za-z-]{1,16}: [ -~]{0,40}",
    ]
}

fn head() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0u8), Just(1u8)],
        prop_oneof![2 => 100u16..600, 1 => prop::sample::select(vec![101u16, 204, 304]), 6 => Just(200)],
        "[A-Za-z ]{0,20}",
        prop::collection::vec(header(), 0..6),
        prop::collection::vec(any::<u8>(), 0..100),
    )
        .prop_map(|(minor, status, reason, headers, body)| {
            let mut h = format!("HTTP/1.{minor} {status} {reason}\r\n");
            for line in headers {
                h.push_str(&line);
                h.push_str("\r\n");
            }
            h.push_str("\r\n");
            let mut b = h.into_bytes();
            b.extend(body);
            b
        })
}

fn count(h: &Head, name: &str) -> usize {
    h.values(name).count()
}

proptest! {
    #![proptest_config(crate::config(256))]

    #[test]
    fn framing_never_accepts_ambiguous_lengths(
        buf in prop_oneof![4 => head(), 2 => head().prop_flat_map(gen::mutate), 1 => prop::collection::vec(any::<u8>(), 0..2000)],
        cut in any::<prop::sample::Index>(),
        head_request in prop::bool::weighted(0.1),
    ) {
        let (parsed, used) = peak(|| {
            Head::parse(&buf).map(|r| r.map(|(h, len)| {
                let f = h.framing(head_request);
                (h, len, f)
            }))
        });
        prop_assert!(used <= bound(buf.len()), "{} bytes for {}", used, buf.len());
        match parsed {
            Ok(None) => prop_assert!(buf.len() < MAX_HEAD, "waiting past the bound"),
            Err(_) => {}
            Ok(Some((h, len, framing))) => {
                prop_assert!(len <= buf.len() && len <= MAX_HEAD);
                prop_assert_eq!(&h.raw[..], &buf[..len]);
                // A shorter read of the same bytes is incomplete, not another head.
                let m = cut.index(len);
                prop_assert!(matches!(Head::parse(&buf[..m]), Ok(None)), "prefix of {} bytes", m);
                let (cl, te) = (count(&h, "content-length"), count(&h, "transfer-encoding"));
                let bodyless = head_request || (100..200).contains(&h.status) || h.status == 204 || h.status == 304;
                match framing {
                    Ok(Framing::Empty) => prop_assert!(bodyless),
                    Ok(Framing::Length(n)) => {
                        prop_assert!(cl == 1 && te == 0, "cl {} te {}", cl, te);
                        let v = h.values("content-length").next().unwrap();
                        let digits = String::from_utf8_lossy(v).trim().to_owned();
                        prop_assert_eq!(digits.parse::<u64>().ok(), Some(n));
                        prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                    }
                    Ok(Framing::Chunked) => prop_assert!(cl == 0 && te >= 1),
                    Ok(Framing::Close) => prop_assert!(cl == 0),
                    Err(HeadError::LengthAndEncoding) => prop_assert!(cl >= 1 && te >= 1),
                    Err(_) => {}
                }
                if !bodyless && cl >= 1 && (te >= 1 || cl >= 2) {
                    prop_assert!(framing.is_err(), "accepted {} lengths with {} encodings: {:?}", cl, te, framing);
                }
            }
        }
    }
}
