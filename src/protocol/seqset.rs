//! Sets of chunk seqs, shared by the client (acknowledged chunks) and the
//! reference server (received chunks).
//!
//! Seqs are kept as disjoint inclusive ranges `start -> end`, merged as they
//! touch: a nearly in-order transfer is one or two ranges whatever its number
//! of chunks, so the set's size is bounded by the out-of-order window, not by
//! the file.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(BTreeMap<u32, u32>);

impl SeqRanges {
    pub fn contains(&self, seq: u32) -> bool {
        self.0
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    /// Adds `seq`; false if it was already there.
    pub fn insert(&mut self, seq: u32) -> bool {
        if self.contains(seq) {
            return false;
        }
        let mut start = seq;
        let mut end = seq;
        if let Some((&s, &e)) = self.0.range(..seq).next_back() {
            if e.checked_add(1) == Some(seq) {
                start = s;
            }
        }
        if let Some(e) = seq.checked_add(1).and_then(|next| self.0.remove(&next)) {
            end = e;
        }
        self.0.insert(start, end);
        true
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The highest seq `n` such that every seq `1..=n` is in the set (0 if
    /// seq 1 is not).
    pub fn prefix(&self) -> u32 {
        self.0.get(&1).copied().unwrap_or(0)
    }

    /// The seqs above the prefix, in order.
    pub fn beyond_prefix(&self) -> impl Iterator<Item = u32> + '_ {
        self.0
            .iter()
            .filter(|(&s, _)| s != 1)
            .flat_map(|(&s, &e)| s..=e)
    }

    /// Whether the set is exactly `1..=max_seq`.
    pub fn covers(&self, max_seq: u32) -> bool {
        self.0.len() == 1 && self.0.get(&1) == Some(&max_seq)
    }

    pub fn to_vec(&self) -> Vec<(u32, u32)> {
        self.0.iter().map(|(&s, &e)| (s, e)).collect()
    }

    /// From stored ranges: sorted, disjoint, within `1..=max_seq`, or `None`.
    pub fn from_vec(v: &[(u32, u32)], max_seq: u32) -> Option<SeqRanges> {
        let mut out = SeqRanges::default();
        let mut prev_end = 0u32;
        for &(s, e) in v {
            if s == 0 || s > e || e > max_seq || (prev_end > 0 && s <= prev_end) {
                return None;
            }
            match out.0.iter_mut().next_back() {
                Some((_, end)) if end.checked_add(1) == Some(s) => *end = e,
                _ => {
                    out.0.insert(s, e);
                }
            }
            prev_end = e;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_merge_and_the_prefix_follows() {
        let mut r = SeqRanges::default();
        assert_eq!(r.prefix(), 0);
        assert!(r.insert(3) && r.insert(5) && r.insert(1));
        assert!(!r.insert(3), "already there");
        assert_eq!(
            (r.prefix(), r.beyond_prefix().collect::<Vec<_>>()),
            (1, vec![3, 5])
        );
        assert!(r.insert(2) && r.insert(4));
        assert_eq!((r.prefix(), r.to_vec()), (5, vec![(1, 5)]));
        assert!(r.covers(5) && !r.covers(6));
        assert!(
            r.insert(u32::MAX) && r.contains(u32::MAX),
            "no overflow at the top"
        );
        assert_eq!(SeqRanges::from_vec(&[(1, 2), (2, 3)], 9), None, "overlap");
        assert_eq!(
            SeqRanges::from_vec(&[(1, 2), (3, 4)], 9).unwrap().to_vec(),
            vec![(1, 4)]
        );
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(seqs in prop::collection::vec(1u32..200, 0..300)) {
            let mut r = SeqRanges::default();
            let mut plain = std::collections::BTreeSet::new();
            for s in seqs {
                prop_assert_eq!(r.insert(s), plain.insert(s));
            }
            let prefix = (1..).take_while(|s| plain.contains(s)).last().unwrap_or(0);
            prop_assert_eq!(r.prefix(), prefix);
            let beyond: Vec<u32> = plain.iter().copied().filter(|s| *s > prefix).collect();
            prop_assert_eq!(r.beyond_prefix().collect::<Vec<_>>(), beyond);
        }
    }
}
