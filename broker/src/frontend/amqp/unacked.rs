//! A channel's unacknowledged deliveries, by channel delivery tag.
//!
//! A channel hands out delivery tags in increasing order and clients mostly settle them from
//! the oldest end (`multiple`, or single acks in delivery order), so the set is a deque in
//! tag order (issue #16): a delivery appends, a cumulative ack pops from the front, both
//! without a tree node per message. A settlement out of order only empties its slot (found
//! by binary search); empty slots leave from the ends as settlements reach them, and the
//! deque is compacted when they outnumber the held deliveries.

use std::collections::VecDeque;

/// Empty slots tolerated beyond the held ones before a compaction.
const EMPTY_SLACK: usize = 32;

#[derive(Debug)]
pub(super) struct Unacked<T> {
    /// In increasing tag order; `None` for a delivery settled out of order.
    slots: VecDeque<(u64, Option<T>)>,
    held: usize,
}

impl<T> Default for Unacked<T> {
    fn default() -> Self {
        Unacked {
            slots: VecDeque::new(),
            held: 0,
        }
    }
}

impl<T> Unacked<T> {
    /// Holds `value` under `tag`, replacing what the tag held.
    pub(super) fn insert(&mut self, tag: u64, value: T) {
        if self.slots.back().is_none_or(|(last, _)| *last < tag) {
            self.slots.push_back((tag, Some(value)));
            self.held += 1;
            return;
        }
        match self.slots.binary_search_by_key(&tag, |(tag, _)| *tag) {
            Ok(index) => {
                if self.slots[index].1.replace(value).is_none() {
                    self.held += 1;
                }
            }
            Err(index) => {
                self.slots.insert(index, (tag, Some(value)));
                self.held += 1;
            }
        }
    }

    /// Takes what `tag` holds.
    pub(super) fn remove(&mut self, tag: u64) -> Option<T> {
        let index = if self.slots.front().is_some_and(|(first, _)| *first == tag) {
            0
        } else {
            self.slots
                .binary_search_by_key(&tag, |(tag, _)| *tag)
                .ok()?
        };
        let value = self.slots[index].1.take()?;
        self.held -= 1;
        self.trim();
        Some(value)
    }

    /// Takes everything held under a tag up to `upto` (inclusive), in tag order.
    pub(super) fn take_up_to(&mut self, upto: u64) -> Vec<T> {
        let mut taken = Vec::new();
        while self.slots.front().is_some_and(|(tag, _)| *tag <= upto) {
            if let Some((_, Some(value))) = self.slots.pop_front() {
                taken.push(value);
            }
        }
        self.held -= taken.len();
        self.trim();
        taken
    }

    /// What is held, in tag order.
    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|(_, value)| value.as_ref())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held
    }

    pub(super) fn clear(&mut self) {
        self.slots.clear();
        self.held = 0;
    }

    /// Drops empty slots at the ends, and all of them once they are too many.
    fn trim(&mut self) {
        while self.slots.front().is_some_and(|(_, value)| value.is_none()) {
            self.slots.pop_front();
        }
        while self.slots.back().is_some_and(|(_, value)| value.is_none()) {
            self.slots.pop_back();
        }
        if self.slots.len() > 2 * self.held + EMPTY_SLACK {
            self.slots.retain(|(_, value)| value.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u64),
        Remove(u64),
        TakeUpTo(u64),
        Clear,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u64..200).prop_map(Step::Insert),
            3 => (0u64..200).prop_map(Step::Remove),
            2 => (0u64..200).prop_map(Step::TakeUpTo),
            1 => Just(Step::Clear),
        ]
    }

    proptest! {
        /// Whatever the order of deliveries and settlements, the deque answers as an
        /// ordered map of tags does, and stays within twice the held count (plus slack).
        #[test]
        fn behaves_as_an_ordered_map(steps in proptest::collection::vec(step(), 0..400)) {
            let mut unacked = Unacked::default();
            let mut model = BTreeMap::new();
            for (n, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Insert(tag) => {
                        unacked.insert(tag, n);
                        model.insert(tag, n);
                    }
                    Step::Remove(tag) => prop_assert_eq!(unacked.remove(tag), model.remove(&tag)),
                    Step::TakeUpTo(upto) => {
                        let tags: Vec<u64> = model.range(..=upto).map(|(tag, _)| *tag).collect();
                        let expected: Vec<usize> =
                            tags.iter().filter_map(|tag| model.remove(tag)).collect();
                        prop_assert_eq!(unacked.take_up_to(upto), expected);
                    }
                    Step::Clear => {
                        unacked.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(unacked.len(), model.len());
                prop_assert_eq!(
                    unacked.values().copied().collect::<Vec<_>>(),
                    model.values().copied().collect::<Vec<_>>()
                );
                prop_assert!(unacked.slots.len() <= 2 * unacked.len() + EMPTY_SLACK);
            }
        }
    }

    #[test]
    fn a_cumulative_ack_pops_the_oldest_and_leaves_the_rest() {
        let mut unacked = Unacked::default();
        for tag in 1..=10 {
            unacked.insert(tag, tag * 100);
        }
        assert_eq!(unacked.remove(3), Some(300));
        assert_eq!(unacked.take_up_to(5), vec![100, 200, 400, 500]);
        assert_eq!(unacked.len(), 5);
        assert_eq!(unacked.remove(5), None);
        assert_eq!(unacked.values().next(), Some(&600));
    }
}
