//! Consistent hashing of session keys over a pool's eligible backends.
//!
//! Owns the one decision every instance must make identically: which member of a
//! pool a session key belongs to. [`hash_key`] turns the key into a platform- and
//! run-independent 64-bit value; a [`Ring`] (Maglev, Ketama or Rendezvous, chosen
//! per pool by `config::HashKind`) maps that value to a member, and exposes the
//! key's preference order so bounded-load placement can spill over
//! deterministically. Rings are immutable: callers rebuild one whenever the set of
//! eligible members changes, so every algorithm places members by their *id* and
//! never by their position in the list.

mod ketama;
mod maglev;
mod rendezvous;

use std::sync::Arc;

use crate::config::HashKind;

pub use ketama::Ketama;
pub use maglev::{Maglev, DEFAULT_TABLE_SIZE};
pub use rendezvous::Rendezvous;

/// One eligible backend as seen by the hashing layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable backend identity; placement depends on it alone.
    pub id: Arc<str>,
    /// Relative share of keys, >= 1 (config validates it; 0 is treated as 1).
    pub weight: u32,
}

/// A consistent-hash ring built over a pool's eligible members.
#[derive(Debug)]
pub enum Ring {
    Maglev(Maglev),
    Ketama(Ketama),
    Rendezvous(Rendezvous),
}

impl Ring {
    pub fn build(kind: HashKind, members: &[Member]) -> Ring {
        match kind {
            HashKind::Maglev => Ring::Maglev(Maglev::new(members)),
            HashKind::Ketama => Ring::Ketama(Ketama::new(members)),
            HashKind::Rendezvous => Ring::Rendezvous(Rendezvous::new(members)),
        }
    }

    pub fn members(&self) -> &[Member] {
        match self {
            Ring::Maglev(r) => r.members(),
            Ring::Ketama(r) => r.members(),
            Ring::Rendezvous(r) => r.members(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members().is_empty()
    }

    /// Index (into [`Ring::members`]) of the key's owner. O(1) for maglev,
    /// O(log points) for ketama, O(n) for rendezvous. `None` when empty.
    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        match self {
            Ring::Maglev(r) => r.pick(key_hash),
            Ring::Ketama(r) => r.pick(key_hash),
            Ring::Rendezvous(r) => r.pick(key_hash),
        }
    }

    /// Bounded load ("consistent hashing with bounded loads"): walk the key's
    /// preference order and return the first member `accept(idx)` says yes to; if
    /// none accepts, the plain pick. `accept` sees each member at most once.
    pub fn pick_bounded(&self, key_hash: u64, accept: impl FnMut(usize) -> bool) -> Option<usize> {
        let n = self.members().len();
        let found = match self {
            Ring::Maglev(r) => first_accepted(n, r.preference(key_hash), accept),
            Ring::Ketama(r) => first_accepted(n, r.preference(key_hash), accept),
            Ring::Rendezvous(r) => r.first_accepted(key_hash, accept),
        };
        found.or_else(|| self.pick(key_hash))
    }
}

/// Offers each distinct member of `prefs` to `accept` once, in order; stops as
/// soon as all `n` members were offered so ring walks stay bounded.
fn first_accepted(
    n: usize,
    prefs: impl Iterator<Item = usize>,
    mut accept: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let mut tried = Tried::new(n);
    let mut left = n;
    for idx in prefs {
        if left == 0 {
            break;
        }
        if !tried.insert(idx) {
            continue;
        }
        if accept(idx) {
            return Some(idx);
        }
        left -= 1;
    }
    None
}

/// Set of member indices already offered. Inline for pools up to 256 members so
/// the per-request bounded pick does not allocate in the common case.
struct Tried {
    inline: [u64; 4],
    heap: Vec<u64>,
}

impl Tried {
    fn new(n: usize) -> Self {
        let heap = if n > 256 {
            vec![0; n.div_ceil(64)]
        } else {
            Vec::new()
        };
        Tried {
            inline: [0; 4],
            heap,
        }
    }

    /// True when `idx` was not in the set yet.
    fn insert(&mut self, idx: usize) -> bool {
        let words: &mut [u64] = if self.heap.is_empty() {
            &mut self.inline
        } else {
            &mut self.heap
        };
        let Some(word) = words.get_mut(idx / 64) else {
            return false;
        };
        let bit = 1u64 << (idx % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

/// Stable 64-bit hash of a session key: XXH64 with seed 0.
///
/// Two proxies must agree on placement, so this cannot be std's randomly keyed
/// SipHash; XXH64 is a published, byte-order-defined algorithm (every read is
/// little-endian here) with strong avalanche, so the result is identical on every
/// instance, run and platform; it consumes 8 bytes per step where FNV-1a takes
/// one, which matters on the per-request path. Reference vectors pin it in tests.
/// Keys are not secret-seeded: placement must be reproducible by any instance.
pub fn hash_key(key: &[u8]) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    const P4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P5: u64 = 0x27D4_EB2F_1656_67C5;
    fn round(acc: u64, lane: u64) -> u64 {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }
    fn merge(acc: u64, lane: u64) -> u64 {
        (acc ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4)
    }

    let mut rest = key;
    let mut h = if key.len() >= 32 {
        let mut v = [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)];
        while let Some((stripe, tail)) = rest.split_first_chunk::<32>() {
            for (lane, bytes) in v.iter_mut().zip(stripe.chunks_exact(8)) {
                let mut word = [0u8; 8];
                word.copy_from_slice(bytes);
                *lane = round(*lane, u64::from_le_bytes(word));
            }
            rest = tail;
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        P5
    };
    h = h.wrapping_add(key.len() as u64);
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        h ^= round(0, u64::from_le_bytes(*word));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = tail;
    }
    if let Some((word, tail)) = rest.split_first_chunk::<4>() {
        h ^= u64::from(u32::from_le_bytes(*word)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = tail;
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// splitmix64 finalizer: derives independent-looking values from one hash (a
/// member id hash xor a per-use constant), so each algorithm needs one pass over
/// the id only.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn members(n: usize) -> Vec<Member> {
        (0..n).map(|i| member(&format!("backend-{i}"), 1)).collect()
    }

    pub fn member(id: &str, weight: u32) -> Member {
        Member {
            id: Arc::from(id),
            weight,
        }
    }

    pub fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash_key(format!("session-{i:08}").as_bytes()))
            .collect()
    }

    /// Owner *id* per key, so placements compare across differently-ordered lists.
    pub fn owners(ring: &Ring, keys: &[u64]) -> Vec<Arc<str>> {
        let owner = |k| ring.pick(k).map(|i| ring.members()[i].id.clone());
        keys.iter()
            .map(|&k| owner(k).expect("non-empty ring"))
            .collect()
    }

    pub fn counts(ring: &Ring, keys: &[u64]) -> Vec<usize> {
        let mut c = vec![0; ring.members().len()];
        for &k in keys {
            c[ring.pick(k).expect("non-empty ring")] += 1;
        }
        c
    }

    pub fn max_over_mean(c: &[usize]) -> f64 {
        let mean = c.iter().sum::<usize>() as f64 / c.len() as f64;
        *c.iter().max().expect("non-empty") as f64 / mean
    }

    pub fn moved(a: &[Arc<str>], b: &[Arc<str>]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    const KINDS: [HashKind; 3] = [HashKind::Maglev, HashKind::Ketama, HashKind::Rendezvous];

    #[test]
    fn hash_key_matches_xxh64_reference_vectors() {
        let cases = [
            ("", 0xEF46_DB37_51D8_E999),
            ("a", 0xD24E_C4F1_A98C_6E5B),
            ("abc", 0x44BC_2CF5_AD77_0999),
            ("asdf", 0x4158_72F5_99CE_A71E),
            ("Call me Ishmael.", 0x6D04_390F_C9D6_1A90),
            (
                "Nobody inspects the spammish repetition",
                0xFBCE_A83C_8A37_8BF1,
            ),
            (
                "Some years ago--never mind how long precisely-",
                0x8F26_F2B9_86AF_DC52,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hash_key(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn rings_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Ring>();
    }

    #[test]
    fn empty_ring_picks_nothing() {
        for kind in KINDS {
            let ring = Ring::build(kind, &[]);
            assert!(ring.is_empty());
            assert_eq!(ring.pick(42), None);
            assert_eq!(ring.pick_bounded(42, |_| true), None);
        }
    }

    #[test]
    fn deterministic_across_rebuilds_and_reorderings() {
        let ms = members(7);
        let mut rev = ms.clone();
        rev.reverse();
        rev.swap(1, 4);
        let ks = keys(20_000);
        for kind in KINDS {
            let a = Ring::build(kind, &ms);
            let b = Ring::build(kind, &ms);
            let r = Ring::build(kind, &rev);
            let base = owners(&a, &ks);
            assert_eq!(base, owners(&b, &ks), "{kind:?} rebuild");
            assert_eq!(base, owners(&r, &ks), "{kind:?} reorder");
        }
    }

    #[test]
    fn pick_bounded_spills_to_another_member_and_falls_back() {
        let ms = members(10);
        for kind in KINDS {
            let ring = Ring::build(kind, &ms);
            for key in keys(200) {
                let owner = ring.pick(key).expect("owner");
                assert_eq!(ring.pick_bounded(key, |_| true), Some(owner), "{kind:?}");
                let spill = ring.pick_bounded(key, |i| i != owner).expect("spill");
                assert_ne!(spill, owner, "{kind:?}");

                let mut seen = Vec::new();
                let got = ring.pick_bounded(key, |i| {
                    seen.push(i);
                    false
                });
                assert_eq!(got, Some(owner), "{kind:?} refuses all -> plain pick");
                assert_eq!(seen[0], owner, "{kind:?} preference starts at the owner");
                seen.sort_unstable();
                assert_eq!(
                    seen,
                    (0..ms.len()).collect::<Vec<_>>(),
                    "{kind:?} visits all once"
                );
            }
        }
    }

    #[test]
    fn tried_set_spills_to_heap_for_large_pools() {
        let mut t = Tried::new(1000);
        assert!(t.insert(999));
        assert!(!t.insert(999));
        assert!(t.insert(3));
        let mut small = Tried::new(4);
        assert!(small.insert(255));
        assert!(!small.insert(255));
    }
}
