//! Ketama (libketama / nginx `hash ... consistent`) ring via `pingora-ketama`.
//!
//! Owns the adapter between pool members and pingora's `Continuum`, which keys
//! buckets by `SocketAddr`. Backends can share or change addresses, so each member
//! gets a synthetic IPv6 address derived from its *id*: ring points then depend on
//! the id alone, a member's arcs survive others joining or leaving, and a sorted
//! address table maps a ring hit back to the member's index.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use pingora_ketama::{Bucket, Continuum, DEFAULT_POINT_MULTIPLE};

use super::{hash_key, mix64, Member};

/// Caps a bucket's weight: the continuum allocates 160 points per unit (a weight
/// of 1000 is already 160k points for one member) and sums them in a `u32`.
/// Ratios between weights up to the cap are kept exactly.
pub const MAX_WEIGHT: u32 = 1024;

const ADDR_SEED: u64 = 0x6B65_7461_6D61_0003;

pub struct Ketama {
    members: Box<[Member]>,
    continuum: Continuum,
    /// Synthetic address -> member index, sorted by address for binary search.
    addrs: Box<[(SocketAddr, usize)]>,
    /// Upper bound on ring points: a full lap of the ring for preference walks.
    points: usize,
}

impl Ketama {
    pub fn new(members: &[Member]) -> Self {
        let members: Box<[Member]> = members.into();
        let mut addrs: Vec<(SocketAddr, usize)> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (synthetic_addr(&m.id), i))
            .collect();
        addrs.sort_unstable();
        // Buckets in address order: the continuum's dedup of colliding points then
        // keeps the same winner whatever order the caller listed members in.
        let buckets: Vec<Bucket> = addrs
            .iter()
            .map(|&(addr, i)| Bucket::new(addr, weight(&members[i])))
            .collect();
        let continuum = Continuum::new(&buckets);
        let points = members
            .iter()
            .map(|m| weight(m) as usize * DEFAULT_POINT_MULTIPLE as usize)
            .sum();
        Ketama {
            members,
            continuum,
            addrs: addrs.into_boxed_slice(),
            points,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        self.continuum
            .node(&key_hash.to_le_bytes())
            .and_then(|addr| self.index_of(&addr))
    }

    /// The ring's next points clockwise from the key, one lap at most.
    pub(super) fn preference(&self, key_hash: u64) -> impl Iterator<Item = usize> + '_ {
        self.continuum
            .node_iter(&key_hash.to_le_bytes())
            .take(self.points)
            .filter_map(|addr| self.index_of(addr))
    }

    fn index_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.addrs
            .binary_search_by(|(a, _)| a.cmp(addr))
            .ok()
            .and_then(|pos| self.addrs.get(pos))
            .map(|&(_, i)| i)
    }
}

impl fmt::Debug for Ketama {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ketama")
            .field("members", &self.members)
            .field("points", &self.points)
            .finish_non_exhaustive()
    }
}

fn weight(m: &Member) -> u32 {
    m.weight.clamp(1, MAX_WEIGHT)
}

/// 128 bits from the id so distinct ids never share an address in practice; the
/// address is never dialled, it only names the member on the ring.
fn synthetic_addr(id: &str) -> SocketAddr {
    let h = hash_key(id.as_bytes());
    let bits = (u128::from(h) << 64) | u128::from(mix64(h ^ ADDR_SEED));
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(bits), 1, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Ring;
    use super::*;
    use crate::config::HashKind;

    const KEYS: usize = 100_000;

    #[test]
    fn distribution_over_four_equal_members() {
        let ms = members(4);
        let ring = Ring::build(HashKind::Ketama, &ms);
        let c = counts(&ring, &keys(KEYS));
        let r = max_over_mean(&c);
        eprintln!("ketama 4x1: {c:?} max/mean {r:.4}");
        assert!(r <= 1.10, "{c:?} {r}");
    }

    /// 160 points per member leave visible arc-length noise, so the spread
    /// depends on the ids; check many id sets, not one lucky draw.
    #[test]
    fn distribution_over_many_id_sets() {
        let ks = keys(KEYS);
        let mut worst: f64 = 0.0;
        for set in 0..20 {
            let ms: Vec<Member> = (0..4)
                .map(|i| member(&format!("pool{set}-b{i}"), 1))
                .collect();
            let ring = Ring::build(HashKind::Ketama, &ms);
            worst = worst.max(max_over_mean(&counts(&ring, &ks)));
        }
        eprintln!("ketama 4x1 worst of 20 id sets: max/mean {worst:.4}");
        assert!(worst <= 1.15, "{worst}");
    }

    #[test]
    fn weight_two_gets_about_twice_the_keys() {
        let ms = vec![member("a", 2), member("b", 1), member("c", 1)];
        let ring = Ring::build(HashKind::Ketama, &ms);
        let c = counts(&ring, &keys(KEYS));
        let ratio = c[0] as f64 / ((c[1] + c[2]) as f64 / 2.0);
        eprintln!("ketama 2:1:1: {c:?} ratio {ratio:.4}");
        assert!((1.7..=2.3).contains(&ratio), "{c:?} {ratio}");
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let ks = keys(KEYS);
        let ms = members(10);
        let full = Ring::build(HashKind::Ketama, &ms);
        let before = owners(&full, &ks);
        let gone = ms[3].id.clone();
        let mut less = ms.clone();
        less.remove(3);
        let ring = Ring::build(HashKind::Ketama, &less);
        let after = owners(&ring, &ks);
        let mut owned = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == gone {
                owned += 1;
                assert_ne!(*a, gone);
            } else {
                assert_eq!(a, b, "a key not owned by the removed member moved");
            }
        }
        let frac = moved(&before, &after);
        eprintln!("ketama remove 1 of 10: moved {frac:.4} (its share {owned})");
        assert!(owned > 0);
    }

    #[test]
    fn huge_weights_are_capped() {
        let ms = vec![member("a", u32::MAX), member("b", 0)];
        let ring = Ketama::new(&ms);
        assert_eq!(ring.points, (MAX_WEIGHT as usize + 1) * 160);
        assert!(ring.pick(7).is_some());
    }
}
