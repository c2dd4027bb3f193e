//! The `prefix` reader (`l4::opening::read` with a `prefix` key): a device
//! id matched by a regex in a connection's first bytes, bounded by
//! `max_bytes`. Inputs: hello lines the patterns expect, random bytes, and
//! mutations of both, arriving in reads of random sizes.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use regex::bytes::Regex;
use tether::config::{Key, PrefixKey};
use tether::l4::opening;

use crate::{bound, gen, peak, Chopped};

/// Patterns like the documented ones: anchored, the id ended by a byte its
/// class excludes (so the id cannot grow with later bytes), plus one that is
/// neither (only the bounds are checked for it).
const PATTERNS: &[(&str, bool)] = &[
    (r"^HELLO device=([a-z0-9]+)\n", true),
    (r"^ID:([0-9A-F]{8});", true),
    (
        r"^(?:\x02|\x03)len=[0-9]{1,4} id=([^ \r\n]{1,64})\r\n",
        true,
    ),
    (r"dev(?:ice)?=([a-zA-Z0-9_-]*)", false),
];

/// Bytes a device might open with, for pattern `which`.
fn opening_bytes(which: usize) -> BoxedStrategy<Vec<u8>> {
    let tail = prop::collection::vec(any::<u8>(), 0..200);
    let line = match which {
        0 => "HELLO device=[a-z0-9]{0,300}\n".boxed(),
        1 => "ID:[0-9A-F]{8};".boxed(),
        2 => "\x02len=[0-9]{1,4} id=[!-~]{1,80}\r\n".boxed(),
        _ => "[ -~]{0,40}device=[a-zA-Z0-9_-]{0,300}[ ;]".boxed(),
    };
    let valid = (line, tail).prop_map(|(l, t)| [l.into_bytes(), t].concat());
    prop_oneof![
        4 => valid.clone(),
        2 => valid.prop_flat_map(gen::mutate),
        1 => prop::collection::vec(any::<u8>(), 0..2000),
    ]
    .boxed()
}

fn case() -> impl Strategy<Value = (usize, Vec<u8>, usize, Vec<usize>)> {
    (0..PATTERNS.len()).prop_flat_map(|which| {
        (
            Just(which),
            opening_bytes(which),
            prop_oneof![1usize..64, 64usize..4096, Just(65_536)],
            prop::collection::vec(1usize..300, 1..6),
        )
    })
}

fn prefix_key(pattern: &Regex, max_bytes: usize) -> Key {
    Key::Prefix(PrefixKey {
        pattern: pattern.clone(),
        max_bytes,
        timeout: Duration::from_secs(3600),
    })
}

proptest! {
    #![proptest_config(crate::config(128))]

    #[test]
    fn reads_within_bounds_and_keys_like_one_read((which, data, max, sizes) in case()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (src, split_invariant) = PATTERNS[which];
        let re = Regex::new(src).unwrap();
        // The regex's lazily built caches belong to the config, built once
        // per pattern, not to one connection: warm them before measuring.
        let _ = re.captures(&data);
        let key = prefix_key(&re, max);
        let read = |sizes: Vec<usize>| {
            let mut peer = Chopped::new(Arc::new(data.clone()), sizes);
            let (got, used) = peak(|| {
                rt.block_on(opening::read(&mut peer, &key, Duration::from_secs(1)))
                    .expect("in-memory reads do not fail")
            });
            (got, used)
        };
        let (got, used) = read(sizes);
        prop_assert!(used <= bound(data.len()), "{} bytes for {}", used, data.len());
        // The bytes read are the peer's, untouched, and never more than max_bytes.
        prop_assert!(got.bytes.len() <= max);
        prop_assert_eq!(&got.bytes[..], &data[..got.bytes.len()]);
        let decided = re.captures(&got.bytes);
        // It stops only at a decision, at max_bytes or at EOF.
        prop_assert!(decided.is_some() || got.bytes.len() == max || got.eof);
        if let Some(k) = &got.key {
            let id = decided.as_ref().and_then(|c| c.get(1)).map(|m| m.as_bytes());
            prop_assert_eq!(id, Some(k.as_bytes()));
            prop_assert!(!k.is_empty() && k.len() <= 256);
        }
        if split_invariant {
            // However the bytes were cut into reads, the same key.
            let (whole, _) = read(vec![usize::MAX]);
            let (bytewise, _) = read(vec![1]);
            prop_assert_eq!(&got.key, &whole.key);
            prop_assert_eq!(&got.key, &bytewise.key);
        }
    }
}
