//! Weighted rendezvous (highest random weight) hashing.
//!
//! Owns the O(n), table-free choice: every (key, member) pair gets a score and
//! the highest wins, so removing a member moves exactly the keys it owned and
//! nothing else, at the cost of scoring every member per pick. Weights use the
//! logarithmic method (Schindelhauer & Schomaker): score = -w / ln(u), which
//! makes a member's win probability exactly proportional to w.

use super::{hash_key, mix64, Member};

/// Pools up to this size score in a stack buffer during bounded picks.
const INLINE: usize = 64;

#[derive(Debug)]
pub struct Rendezvous {
    members: Box<[Member]>,
    /// Per member: (hash of the id, weight as f64), precomputed for the hot loop.
    scored: Box<[(u64, f64)]>,
}

impl Rendezvous {
    pub fn new(members: &[Member]) -> Self {
        let members: Box<[Member]> = members.into();
        let scored = members
            .iter()
            .map(|m| (hash_key(m.id.as_bytes()), f64::from(m.weight.max(1))))
            .collect();
        Rendezvous { members, scored }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, &(id_hash, w)) in self.scored.iter().enumerate() {
            let s = score(key_hash, id_hash, w);
            if best.is_none_or(|(b, bs)| self.beats(i, s, b, bs)) {
                best = Some((i, s));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Offers members in descending score order. Scores are computed once (the
    /// logarithm dominates the cost); selection is repeated max over the buffer,
    /// which beats sorting for the handful of tries a bounded pick usually needs.
    pub(super) fn first_accepted(
        &self,
        key_hash: u64,
        mut accept: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let n = self.scored.len();
        let mut inline = [0f64; INLINE];
        let mut heap = Vec::new();
        let scores: &mut [f64] = if n <= INLINE {
            &mut inline[..n]
        } else {
            heap.resize(n, 0.0);
            &mut heap
        };
        for (s, &(id_hash, w)) in scores.iter_mut().zip(self.scored.iter()) {
            *s = score(key_hash, id_hash, w);
        }
        for _ in 0..n {
            let mut best: Option<usize> = None;
            for (i, &s) in scores.iter().enumerate() {
                // Genuine scores are > 0; tried members are marked -inf.
                if s > f64::NEG_INFINITY && best.is_none_or(|b| self.beats(i, s, b, scores[b])) {
                    best = Some(i);
                }
            }
            let b = best?;
            if accept(b) {
                return Some(b);
            }
            scores[b] = f64::NEG_INFINITY;
        }
        None
    }

    /// Total order on (score, id hash, id): ties are astronomically rare, but the
    /// tie-break must not depend on list position or reorderings would move keys.
    fn beats(&self, i: usize, si: f64, j: usize, sj: f64) -> bool {
        let key = |k: usize| (self.scored[k].0, &self.members[k].id);
        match si.total_cmp(&sj) {
            std::cmp::Ordering::Equal => key(i) > key(j),
            o => o.is_gt(),
        }
    }
}

/// `u` takes the top 52 bits of a per-pair hash, centred in its bucket, so it lies
/// strictly inside (0, 1) and is exact in an f64: ln(u) is finite and negative.
/// `ln` is the platform libm's; an ulp difference between platforms could only
/// flip a pick whose top two scores agree to ~1e-16, which is negligible.
fn score(key_hash: u64, id_hash: u64, weight: f64) -> f64 {
    -weight / unit(mix64(key_hash ^ id_hash)).ln()
}

fn unit(h: u64) -> f64 {
    ((h >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Ring;
    use super::*;
    use crate::config::HashKind;

    const KEYS: usize = 100_000;

    #[test]
    fn scores_are_finite_and_positive_at_the_extremes() {
        for h in [0, u64::MAX, 1 << 12, (1 << 12) - 1] {
            let u = unit(h);
            assert!(u > 0.0 && u < 1.0, "h={h:#x} u={u}");
            for w in [1.0, 4_294_967_295.0] {
                let s = -w / u.ln();
                assert!(s.is_finite() && s > 0.0, "h={h:#x} s={s}");
            }
        }
    }

    #[test]
    fn distribution_over_four_equal_members() {
        let ms = members(4);
        let ring = Ring::build(HashKind::Rendezvous, &ms);
        let c = counts(&ring, &keys(KEYS));
        let r = max_over_mean(&c);
        eprintln!("rendezvous 4x1: {c:?} max/mean {r:.4}");
        assert!(r <= 1.02, "{c:?} {r}");
    }

    #[test]
    fn weight_two_gets_twice_the_keys() {
        let ms = vec![member("a", 2), member("b", 1), member("c", 1)];
        let ring = Ring::build(HashKind::Rendezvous, &ms);
        let c = counts(&ring, &keys(KEYS));
        let ratio = c[0] as f64 / ((c[1] + c[2]) as f64 / 2.0);
        eprintln!("rendezvous 2:1:1: {c:?} ratio {ratio:.4}");
        assert!((1.9..=2.1).contains(&ratio), "{c:?} {ratio}");
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let ks = keys(KEYS);
        let ms = members(10);
        let full = Ring::build(HashKind::Rendezvous, &ms);
        let before = owners(&full, &ks);
        let mut less = ms.clone();
        let gone = less.remove(6).id;
        let ring = Ring::build(HashKind::Rendezvous, &less);
        let after = owners(&ring, &ks);
        for (b, a) in before.iter().zip(&after) {
            if *b != gone {
                assert_eq!(a, b);
            }
        }
        let frac = moved(&before, &after);
        eprintln!("rendezvous remove 1 of 10: moved {frac:.4}");
        assert!((0.09..=0.11).contains(&frac), "{frac}");
    }

    #[test]
    fn large_pools_use_the_heap_buffer() {
        let ms = members(INLINE + 10);
        let ring = Rendezvous::new(&ms);
        let key = hash_key(b"k");
        let owner = ring.pick(key);
        let mut seen = 0;
        assert_eq!(
            ring.first_accepted(key, |_| {
                seen += 1;
                false
            }),
            None
        );
        assert_eq!(seen, ms.len());
        assert_eq!(ring.first_accepted(key, |_| true), owner);
    }
}
