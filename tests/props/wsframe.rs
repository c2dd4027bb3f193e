//! The WebSocket frame tracker (`tunnel::wsframe`): valid frame streams
//! (any opcode, masked or not, all three length forms) followed by junk, and
//! random bytes with huge declared lengths. The lib's own
//! `same_boundaries_at_every_split` cuts streams at random places; here every
//! single cut point is tried, and the tracker must not allocate at all.

use proptest::prelude::*;
use tether::tunnel::wsframe::FrameTracker;

use crate::{bound, peak};

/// One frame: `fin`, `opcode`, a payload of `len` bytes (never looked at),
/// a masking key when `masked`; `wide` uses a longer length form than needed.
fn frame(fin: bool, opcode: u8, len: usize, masked: bool, wide: bool) -> Vec<u8> {
    let mut f = vec![u8::from(fin) << 7 | opcode];
    let mask = if masked { 0x80 } else { 0 };
    match (len, wide) {
        (0..=125, false) => f.push(mask | len as u8),
        (0..=65535, _) if !wide || len > 125 => {
            f.push(mask | 126);
            f.extend((len as u16).to_be_bytes());
        }
        _ => {
            f.push(mask | 127);
            f.extend((len as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend([0x37, 0xfa, 0x21, 0x3d]);
    }
    f.extend(std::iter::repeat_n(b'p', len));
    f
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    let one = (
        prop::bool::ANY,
        0u8..16,
        prop_oneof![8 => 0usize..130, 1 => 126usize..400],
        prop::bool::ANY,
        prop::bool::weighted(0.2),
    );
    (
        prop::collection::vec(one, 0..16),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(frames, junk)| {
            let mut s: Vec<u8> = frames
                .into_iter()
                .flat_map(|(fin, op, len, m, w)| frame(fin, op, len, m, w))
                .collect();
            s.extend(junk);
            s
        })
}

fn hostile() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        // 64-bit lengths up to u64::MAX: the tracker only counts them down
        (
            any::<u8>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..100)
        )
            .prop_map(|(b0, len, rest)| {
                let mut v = vec![b0, 0x7f | (b0 & 0x80)];
                v.extend(len.to_be_bytes());
                v.extend(rest);
                v
            }),
    ]
}

/// Every offset at which a frame ends, feeding `pieces` in order (the
/// router's way: `boundary_in` while inside a frame, `feed` otherwise).
fn boundaries(t: &mut FrameTracker, pieces: &[&[u8]], out: &mut Vec<usize>) {
    let mut base = 0;
    for p in pieces {
        let mut at = 0;
        while at < p.len() {
            if t.at_boundary() {
                t.feed(&p[at..at + 1]);
                at += 1;
                if t.at_boundary() {
                    out.push(base + at);
                }
                continue;
            }
            match t.boundary_in(&p[at..]) {
                Some(k) => {
                    at += k;
                    out.push(base + at);
                }
                None => at = p.len(),
            }
        }
        base += p.len();
    }
}

fn check_every_split(s: &[u8]) -> Result<(), TestCaseError> {
    let mut whole = FrameTracker::default();
    let mut ends = Vec::with_capacity(s.len() + 1);
    boundaries(&mut whole, &[s], &mut ends);
    let mut got = Vec::with_capacity(s.len() + 1);
    for k in 0..=s.len() {
        let mut t = FrameTracker::default();
        got.clear();
        let (_, used) = peak(|| boundaries(&mut t, &[&s[..k], &s[k..]], &mut got));
        // The tracker holds a fixed-size header buffer: no heap at all.
        prop_assert_eq!(used, 0);
        prop_assert!(used <= bound(s.len()));
        prop_assert_eq!(&got, &ends, "split at {}", k);
        prop_assert_eq!(t.at_boundary(), whole.at_boundary());
        prop_assert_eq!(t.saw_close(), whole.saw_close());
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::config(64))]

    #[test]
    fn same_boundaries_at_every_single_split(s in stream()) {
        check_every_split(&s)?;
    }

    #[test]
    fn hostile_streams_same_boundaries_no_heap(s in hostile()) {
        check_every_split(&s)?;
    }
}
