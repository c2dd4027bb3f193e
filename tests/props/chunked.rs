//! The chunked-body end finder (`h1::chunked`): valid bodies (random chunk
//! sizes in either hex case with leading zeros, extensions, trailers)
//! followed by the next message, and mutated or random bytes. The same
//! answer (end or error) at every split of the input, and no heap at all.

use proptest::prelude::*;
use tether::h1::chunked::{ChunkError, Chunked};

use crate::{bound, gen, peak};

/// A chunked body, its length and its payload size.
fn body() -> impl Strategy<Value = (Vec<u8>, usize, u64)> {
    let chunk = (
        1usize..200,
        prop::bool::ANY,
        0usize..3,
        prop::option::weighted(0.3, ";[a-z]{1,8}(=[a-z0-9\"]{0,12})?"),
    );
    (
        prop::collection::vec(chunk, 0..10),
        0usize..3,
        prop::collection::vec("[A-Za-z-]{1,12}: [ -~]{0,30}", 0..3),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(chunks, last_zeros, trailers, next)| {
            let mut b = Vec::new();
            let mut payload = 0u64;
            for (size, upper, zeros, ext) in chunks {
                let hex = if upper {
                    format!("{size:X}")
                } else {
                    format!("{size:x}")
                };
                b.extend(
                    format!("{}{hex}{}\r\n", "0".repeat(zeros), ext.unwrap_or_default()).bytes(),
                );
                b.extend(std::iter::repeat_n(b'd', size));
                b.extend(b"\r\n");
                payload += size as u64;
            }
            b.extend(format!("{}0\r\n", "0".repeat(last_zeros)).bytes());
            for t in trailers {
                b.extend(t.bytes());
                b.extend(b"\r\n");
            }
            b.extend(b"\r\n");
            let end = b.len();
            b.extend(next);
            (b, end, payload)
        })
}

/// Feeds `a` then `b` to one finder, as two reads.
fn in_two(a: &[u8], b: &[u8]) -> (Result<Option<usize>, ChunkError>, u64) {
    let mut c = Chunked::default();
    let r = match c.feed(a) {
        Ok(None) => c.feed(b).map(|o| o.map(|k| a.len() + k)),
        other => other,
    };
    (r, c.payload)
}

fn check_every_split(
    buf: &[u8],
) -> Result<(Result<Option<usize>, ChunkError>, u64), TestCaseError> {
    let (whole, payload) = in_two(buf, &[]);
    for k in 0..=buf.len() {
        let ((r, p), used) = peak(|| in_two(&buf[..k], &buf[k..]));
        prop_assert_eq!(used, 0, "the finder allocated");
        prop_assert!(used <= bound(buf.len()));
        prop_assert_eq!(&r, &whole, "split at {}", k);
        if r.is_ok() {
            prop_assert_eq!(p, payload);
        }
    }
    Ok((whole, payload))
}

proptest! {
    #![proptest_config(crate::config(128))]

    #[test]
    fn valid_bodies_end_in_the_same_place_at_every_split((buf, end, payload) in body()) {
        let (r, p) = check_every_split(&buf)?;
        prop_assert_eq!(r, Ok(Some(end)));
        prop_assert_eq!(p, payload);
    }

    #[test]
    fn hostile_bodies_same_answer_at_every_split(
        buf in prop_oneof![
            body().prop_flat_map(|(b, _, _)| gen::mutate(b)),
            prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'0'), Just(b';'), any::<u8>()], 0..400),
        ],
    ) {
        let _ = check_every_split(&buf)?;
    }
}
