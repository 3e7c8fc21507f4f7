//! Values by delivery tag, for tags handed out in increasing order and settled mostly from
//! the oldest end: a queue consumer's unacknowledged tags ([`super::tag_set::TagSet`]) and an
//! AMQP channel's unacknowledged deliveries (`frontend/amqp`).
//!
//! Clients settle from the oldest end (an ack with `multiple`, or single acks in delivery
//! order), so the map is a deque in tag order: a delivery appends, a settlement of the
//! oldest tag pops, both O(1) with no tree node per message. A settlement out of order only
//! empties its slot (found by binary search); empty slots leave from the ends as
//! settlements reach them, and the deque is compacted when they outnumber the held values,
//! so its length stays within twice the held count (plus [`EMPTY_SLACK`]).

use std::collections::VecDeque;

/// Empty slots tolerated beyond the held ones before a compaction.
const EMPTY_SLACK: usize = 32;

#[derive(Debug, Clone)]
pub(crate) struct TagMap<K, V> {
    /// In increasing tag order; `None` for a value settled out of order.
    slots: VecDeque<(K, Option<V>)>,
    held: usize,
}

impl<K, V> Default for TagMap<K, V> {
    fn default() -> Self {
        TagMap {
            slots: VecDeque::new(),
            held: 0,
        }
    }
}

impl<K: Ord + Copy, V> TagMap<K, V> {
    /// Tags held.
    pub(crate) fn len(&self) -> usize {
        self.held
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held == 0
    }

    fn find(&self, tag: K) -> Result<usize, usize> {
        if self.slots.front().is_some_and(|(first, _)| *first == tag) {
            // The oldest, nearly always: no search.
            return Ok(0);
        }
        self.slots.binary_search_by_key(&tag, |(tag, _)| *tag)
    }

    pub(crate) fn contains(&self, tag: K) -> bool {
        self.find(tag)
            .is_ok_and(|index| self.slots[index].1.is_some())
    }

    /// Holds `value` under `tag`; what the tag held before.
    pub(crate) fn insert(&mut self, tag: K, value: V) -> Option<V> {
        if self.slots.back().is_none_or(|(last, _)| *last < tag) {
            self.slots.push_back((tag, Some(value)));
            self.held += 1;
            return None;
        }
        match self.find(tag) {
            Ok(index) => {
                let previous = self.slots[index].1.replace(value);
                if previous.is_none() {
                    self.held += 1;
                }
                previous
            }
            Err(index) => {
                self.slots.insert(index, (tag, Some(value)));
                self.held += 1;
                None
            }
        }
    }

    /// Takes what `tag` holds.
    pub(crate) fn remove(&mut self, tag: K) -> Option<V> {
        let index = self.find(tag).ok()?;
        let value = self.slots[index].1.take()?;
        self.held -= 1;
        self.trim();
        Some(value)
    }

    /// Takes everything held under a tag up to `upto` (inclusive), in tag order.
    pub(crate) fn take_up_to(&mut self, upto: K) -> Vec<V> {
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

    /// The held tags up to and including `upto`, in tag order.
    pub(crate) fn tags_up_to(&self, upto: K) -> impl Iterator<Item = K> + '_ {
        self.slots
            .iter()
            .take_while(move |(tag, _)| *tag <= upto)
            .filter(|(_, value)| value.is_some())
            .map(|(tag, _)| *tag)
    }

    /// The held tags, in tag order.
    pub(crate) fn tags(&self) -> impl Iterator<Item = K> + '_ {
        self.slots
            .iter()
            .filter(|(_, value)| value.is_some())
            .map(|(tag, _)| *tag)
    }

    /// The held values, in tag order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().filter_map(|(_, value)| value.as_ref())
    }

    pub(crate) fn clear(&mut self) {
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
        /// A delivery: the next tag.
        Deliver,
        /// A tag again, or one never handed out (a put-back; a wrong ack).
        Insert(u64),
        Remove(u64),
        TakeUpTo(u64),
        Clear,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => Just(Step::Deliver),
            3 => (0u64..200).prop_map(Step::Insert),
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
            let mut map = TagMap::default();
            let mut model = BTreeMap::new();
            let mut next = 1u64;
            for (n, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Deliver => {
                        prop_assert_eq!(map.insert(next, n), None);
                        model.insert(next, n);
                        next += 1;
                    }
                    Step::Insert(tag) => {
                        prop_assert_eq!(map.insert(tag, n), model.insert(tag, n));
                        next = next.max(tag + 1);
                    }
                    Step::Remove(tag) => prop_assert_eq!(map.remove(tag), model.remove(&tag)),
                    Step::TakeUpTo(upto) => {
                        let tags: Vec<u64> = model.range(..=upto).map(|(tag, _)| *tag).collect();
                        prop_assert_eq!(map.tags_up_to(upto).collect::<Vec<_>>(), tags.clone());
                        let expected: Vec<usize> =
                            tags.iter().filter_map(|tag| model.remove(tag)).collect();
                        prop_assert_eq!(map.take_up_to(upto), expected);
                    }
                    Step::Clear => {
                        map.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.is_empty(), model.is_empty());
                prop_assert!(map.tags().eq(model.keys().copied()));
                prop_assert!(map.values().eq(model.values()));
                for probe in 0..next + 1 {
                    prop_assert_eq!(map.contains(probe), model.contains_key(&probe));
                }
                prop_assert!(map.slots.len() <= 2 * map.len() + EMPTY_SLACK);
            }
        }
    }

    #[test]
    fn a_cumulative_settlement_pops_the_oldest_and_leaves_the_rest() {
        let mut map = TagMap::default();
        for tag in 1..=10u64 {
            map.insert(tag, tag * 100);
        }
        assert_eq!(map.remove(3), Some(300));
        assert_eq!(map.take_up_to(5), vec![100, 200, 400, 500]);
        assert_eq!(map.len(), 5);
        assert_eq!(map.remove(5), None);
        assert_eq!(map.values().next(), Some(&600));
    }
}
