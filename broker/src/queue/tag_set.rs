//! One consumer's unacknowledged delivery tags.
//!
//! Tags are handed out in increasing order, and acks mostly take them from the oldest end
//! (an ack with `multiple`, or single acks in delivery order), so the set is a deque in tag
//! order: a delivery appends, an ack of the oldest tag pops, both O(1) with nothing to
//! allocate per message. An ack out of order only marks its entry gone (found by binary
//! search); gone entries leave from the ends as acks reach them, and the deque is compacted
//! when they outnumber the held ones, so its length stays within twice the held count.

use std::collections::VecDeque;

use crate::queue::delivery::DeliveryTag;

/// Gone entries tolerated beyond the held ones before a compaction.
const GONE_SLACK: usize = 32;

#[derive(Debug, Clone, Default)]
pub(crate) struct TagSet {
    /// In increasing tag order, each with whether it is still held.
    entries: VecDeque<(DeliveryTag, bool)>,
    held: usize,
}

impl TagSet {
    pub(crate) fn len(&self) -> usize {
        self.held
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held == 0
    }

    fn find(&self, tag: DeliveryTag) -> Result<usize, usize> {
        if self.entries.front().is_some_and(|(first, _)| *first == tag) {
            // The oldest, nearly always: no search.
            return Ok(0);
        }
        self.entries.binary_search_by_key(&tag, |(tag, _)| *tag)
    }

    pub(crate) fn contains(&self, tag: DeliveryTag) -> bool {
        self.find(tag).is_ok_and(|index| self.entries[index].1)
    }

    /// Adds `tag`; false if it was already held.
    pub(crate) fn insert(&mut self, tag: DeliveryTag) -> bool {
        if self.entries.back().is_none_or(|(last, _)| *last < tag) {
            self.entries.push_back((tag, true));
        } else {
            match self.find(tag) {
                Ok(index) if self.entries[index].1 => return false,
                Ok(index) => self.entries[index].1 = true,
                Err(index) => self.entries.insert(index, (tag, true)),
            }
        }
        self.held += 1;
        true
    }

    /// Removes `tag`; false if it was not held.
    pub(crate) fn remove(&mut self, tag: DeliveryTag) -> bool {
        let Ok(index) = self.find(tag) else {
            return false;
        };
        if !self.entries[index].1 {
            return false;
        }
        self.entries[index].1 = false;
        self.held -= 1;
        while self.entries.front().is_some_and(|(_, held)| !held) {
            self.entries.pop_front();
        }
        while self.entries.back().is_some_and(|(_, held)| !held) {
            self.entries.pop_back();
        }
        if self.entries.len() > 2 * self.held + GONE_SLACK {
            self.entries.retain(|(_, held)| *held);
        }
        true
    }

    /// The held tags up to and including `tag`, oldest first.
    pub(crate) fn up_to(&self, tag: DeliveryTag) -> impl Iterator<Item = DeliveryTag> + '_ {
        self.entries
            .iter()
            .take_while(move |(entry, _)| *entry <= tag)
            .filter(|(_, held)| *held)
            .map(|(tag, _)| *tag)
    }

    /// The held tags, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = DeliveryTag> + '_ {
        self.entries
            .iter()
            .filter(|(_, held)| *held)
            .map(|(tag, _)| *tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        /// A delivery: the next tag.
        Deliver,
        /// A tag again, or one never handed out (a put-back; a wrong ack).
        Insert(u64),
        Remove(u64),
        RemoveUpTo(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Deliver),
            1 => (0u64..80).prop_map(Op::Insert),
            4 => (0u64..80).prop_map(Op::Remove),
            2 => (0u64..80).prop_map(Op::RemoveUpTo),
        ]
    }

    proptest! {
        /// The set answers as an ordered set of the same tags after any mix of deliveries,
        /// single acks in any order and acks with `multiple`.
        #[test]
        fn reads_as_an_ordered_set(ops in proptest::collection::vec(op(), 1..200)) {
            let mut tags = TagSet::default();
            let mut model = BTreeSet::new();
            let mut next = 1u64;
            for op in ops {
                match op {
                    Op::Deliver => {
                        prop_assert!(tags.insert(DeliveryTag(next)));
                        model.insert(DeliveryTag(next));
                        next += 1;
                    }
                    Op::Insert(tag) => {
                        prop_assert_eq!(tags.insert(DeliveryTag(tag)), model.insert(DeliveryTag(tag)));
                        next = next.max(tag + 1);
                    }
                    Op::Remove(tag) => {
                        prop_assert_eq!(tags.remove(DeliveryTag(tag)), model.remove(&DeliveryTag(tag)));
                    }
                    Op::RemoveUpTo(tag) => {
                        let covered: Vec<DeliveryTag> = tags.up_to(DeliveryTag(tag)).collect();
                        let expected: Vec<DeliveryTag> =
                            model.range(..=DeliveryTag(tag)).copied().collect();
                        prop_assert_eq!(&covered, &expected);
                        for tag in covered {
                            prop_assert!(tags.remove(tag));
                            model.remove(&tag);
                        }
                    }
                }
                prop_assert_eq!(tags.len(), model.len());
                prop_assert_eq!(tags.is_empty(), model.is_empty());
                prop_assert!(tags.iter().eq(model.iter().copied()));
                for probe in 0..next + 1 {
                    prop_assert_eq!(tags.contains(DeliveryTag(probe)), model.contains(&DeliveryTag(probe)));
                }
                prop_assert!(tags.entries.len() <= 2 * tags.held + GONE_SLACK);
            }
        }
    }
}
