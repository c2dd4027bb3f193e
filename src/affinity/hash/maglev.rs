//! Maglev hashing (Eisenbud et al., NSDI'16): the default ring.
//!
//! Owns the lookup table that gives O(1) picks with near-perfect balance and
//! minimal disruption when a member comes or goes. Each member's permutation of
//! the table comes from two hashes of its *id*, and members take turns in id
//! order, so the table depends on the set of members and never on the order the
//! caller listed them in.

use super::{hash_key, mix64, Member};

/// Table size used in production. Must be prime (every skip is then coprime with
/// it, so each permutation visits every slot) and much larger than the member
/// count: the paper sizes it at 100x the backends or more, because the extra keys
/// moved on a membership change shrink as slots per member grow.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

const EMPTY: u32 = u32::MAX;
const OFFSET_SEED: u64 = 0x6F66_6673_6574_0001;
const SKIP_SEED: u64 = 0x736B_6970_0000_0002;

#[derive(Debug)]
pub struct Maglev {
    members: Box<[Member]>,
    /// Slot -> index into `members`.
    table: Box<[u32]>,
}

impl Maglev {
    pub fn new(members: &[Member]) -> Self {
        Self::with_size(members, DEFAULT_TABLE_SIZE)
    }

    /// Builds with a table of `size` slots, rounded up to the next prime (a
    /// composite size could leave a permutation unable to reach a free slot).
    pub fn with_size(members: &[Member], size: usize) -> Self {
        let members: Box<[Member]> = members.into();
        if members.is_empty() {
            return Maglev {
                members,
                table: Box::new([]),
            };
        }
        let m = next_prime(size.max(2));
        let table = populate(&members, m);
        Maglev { members, table }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    pub fn pick(&self, key_hash: u64) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        self.table.get((key_hash % m) as usize).map(|&i| i as usize)
    }

    /// Successive slots from the key's own: neighbouring slots belong to
    /// effectively random members, so spilled keys spread over the whole pool
    /// instead of piling onto one successor. Callers dedup and stop early.
    pub(super) fn preference(&self, key_hash: u64) -> impl Iterator<Item = usize> + '_ {
        let m = self.table.len();
        let start = if m == 0 {
            0
        } else {
            (key_hash % m as u64) as usize
        };
        let (tail, head) = self.table.split_at(start);
        head.iter().chain(tail).map(|&i| i as usize)
    }
}

/// Fills an `m`-slot table. Per-member state lives in one vector so the fill
/// loop never allocates; each turn advances the member's permutation with an
/// add-and-wrap instead of recomputing `(offset + j * skip) % m`.
fn populate(members: &[Member], m: usize) -> Box<[u32]> {
    struct Cursor {
        idx: u32,
        next: usize,
        skip: usize,
        turns: u32,
    }
    let mut cursors: Vec<Cursor> = members
        .iter()
        .enumerate()
        .map(|(idx, mb)| {
            let h = hash_key(mb.id.as_bytes());
            Cursor {
                idx: idx as u32,
                next: (mix64(h ^ OFFSET_SEED) % m as u64) as usize,
                skip: (mix64(h ^ SKIP_SEED) % (m as u64 - 1)) as usize + 1,
                turns: mb.weight.max(1),
            }
        })
        .collect();
    // Turn order decides contested slots, so it must not depend on list order.
    cursors.sort_by(|a, b| members[a.idx as usize].id.cmp(&members[b.idx as usize].id));

    let mut table = vec![EMPTY; m].into_boxed_slice();
    let mut filled = 0;
    // A weighted member claims `weight` slots per round: shares stay exactly
    // proportional to weight (up to one round's rounding at the end).
    'fill: loop {
        for c in cursors.iter_mut() {
            for _ in 0..c.turns {
                let mut slot = c.next;
                while table[slot] != EMPTY {
                    slot += c.skip;
                    if slot >= m {
                        slot -= m;
                    }
                }
                table[slot] = c.idx;
                c.next = if slot + c.skip >= m {
                    slot + c.skip - m
                } else {
                    slot + c.skip
                };
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

fn next_prime(mut n: usize) -> usize {
    fn is_prime(n: usize) -> bool {
        n >= 2
            && (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
    }
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::Ring;
    use super::*;
    use crate::config::HashKind;

    const KEYS: usize = 100_000;

    #[test]
    fn sizes_are_prime() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(1000), 1009);
        assert_eq!(Maglev::with_size(&members(3), 0).table_size(), 2);
        assert_eq!(Maglev::with_size(&members(3), 100).table_size(), 101);
    }

    #[test]
    fn every_slot_is_owned_and_shares_are_equal() {
        let ms = members(7);
        let ring = Maglev::with_size(&ms, 1009);
        let mut slots = vec![0usize; ms.len()];
        for k in 0..ring.table_size() as u64 {
            slots[ring.pick(k).expect("slot")] += 1;
        }
        // 1009 = 7 * 144 + 1: round-robin filling gives 144 or 145 each.
        assert!(slots.iter().all(|&s| s == 144 || s == 145), "{slots:?}");
    }

    #[test]
    fn distribution_over_four_equal_members() {
        let ms = members(4);
        let ring = Ring::build(HashKind::Maglev, &ms);
        let c = counts(&ring, &keys(KEYS));
        let r = max_over_mean(&c);
        eprintln!("maglev 4x1: {c:?} max/mean {r:.4}");
        assert!(r <= 1.02, "{c:?} {r}");
    }

    #[test]
    fn weight_two_gets_twice_the_keys() {
        let ms = vec![member("a", 2), member("b", 1), member("c", 1)];
        let ring = Ring::build(HashKind::Maglev, &ms);
        let c = counts(&ring, &keys(KEYS));
        let ratio = c[0] as f64 / ((c[1] + c[2]) as f64 / 2.0);
        eprintln!("maglev 2:1:1: {c:?} ratio {ratio:.4}");
        assert!((1.9..=2.1).contains(&ratio), "{c:?} {ratio}");
    }

    #[test]
    fn removing_one_member_moves_about_its_share() {
        let ks = keys(KEYS);
        for n in [5, 10, 20] {
            let ms = members(n);
            let full = Ring::build(HashKind::Maglev, &ms);
            let before = owners(&full, &ks);
            let mut less = ms.clone();
            less.remove(n / 2);
            let ring = Ring::build(HashKind::Maglev, &less);
            let frac = moved(&before, &owners(&ring, &ks));
            let bound = 1.0 / n as f64 + 0.01;
            eprintln!(
                "maglev remove 1 of {n}: moved {frac:.4} (1/N = {:.4})",
                1.0 / n as f64
            );
            assert!(frac <= bound, "n={n} moved {frac} > {bound}");
        }
    }

    #[test]
    fn adding_one_member_moves_about_its_share() {
        let ks = keys(KEYS);
        for n in [5, 10, 20] {
            let ms = members(n);
            let ring = Ring::build(HashKind::Maglev, &ms);
            let before = owners(&ring, &ks);
            let mut more = ms.clone();
            more.push(member("newcomer", 1));
            let grown = Ring::build(HashKind::Maglev, &more);
            let frac = moved(&before, &owners(&grown, &ks));
            let ideal = 1.0 / (n + 1) as f64;
            eprintln!("maglev add 1 to {n}: moved {frac:.4} (1/(N+1) = {ideal:.4})");
            assert!(
                (ideal - 0.01..=ideal + 0.01).contains(&frac),
                "n={n} moved {frac}"
            );
        }
    }

    #[test]
    fn builds_for_a_hundred_members() {
        let ms = members(100);
        let ring = Maglev::new(&ms);
        assert_eq!(ring.table_size(), DEFAULT_TABLE_SIZE);
        let mut slots = vec![0usize; ms.len()];
        for k in 0..DEFAULT_TABLE_SIZE as u64 {
            slots[ring.pick(k).expect("slot")] += 1;
        }
        assert!(slots.iter().all(|&s| s == 655 || s == 656), "{slots:?}");
    }

    #[test]
    fn more_members_than_slots_still_terminates() {
        let ring = Maglev::with_size(&members(10), 7);
        assert_eq!(ring.table_size(), 7);
        assert!(ring.pick(3).is_some());
    }
}
