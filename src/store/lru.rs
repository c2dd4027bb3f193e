//! Picking eviction victims: the `want` least recently seen idle sessions of a
//! scan, kept in a bounded max-heap so a key is copied only when it may be
//! evicted. Both stores (the embedded map, the Redis cache) use it.

use std::collections::BinaryHeap;

pub(crate) struct Oldest {
    want: usize,
    heap: BinaryHeap<(u64, usize, Box<str>)>,
}

impl Oldest {
    pub(crate) fn new(want: usize) -> Self {
        Oldest {
            want,
            heap: BinaryHeap::with_capacity(want + 1),
        }
    }

    /// Consider `key` of pool number `pool`, last seen at `seen`.
    pub(crate) fn offer(&mut self, seen: u64, pool: usize, key: &str) {
        if self.heap.len() < self.want {
            self.heap.push((seen, pool, key.into()));
        } else if self.heap.peek().is_some_and(|top| seen < top.0) {
            self.heap.pop();
            self.heap.push((seen, pool, key.into()));
        }
    }

    /// The chosen `(last_seen, pool, key)`, in no particular order.
    pub(crate) fn into_vec(self) -> Vec<(u64, usize, Box<str>)> {
        self.heap.into_vec()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_oldest() {
        let mut o = super::Oldest::new(2);
        for (seen, key) in [(5, "e"), (1, "a"), (9, "i"), (3, "c")] {
            o.offer(seen, 0, key);
        }
        let mut got: Vec<_> = o.into_vec().into_iter().map(|(_, _, k)| k).collect();
        got.sort();
        assert_eq!(got, vec!["a".into(), "c".into()] as Vec<Box<str>>);
    }
}
