//! One consumer's unacknowledged delivery tags: a [`TagMap`] of tags alone (its deque in
//! tag order, O(1) for deliveries and for acks from the oldest end).

use crate::queue::delivery::DeliveryTag;
use crate::queue::tag_map::TagMap;

#[derive(Debug, Clone, Default)]
pub(crate) struct TagSet {
    tags: TagMap<DeliveryTag, ()>,
}

impl TagSet {
    pub(crate) fn len(&self) -> usize {
        self.tags.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub(crate) fn contains(&self, tag: DeliveryTag) -> bool {
        self.tags.contains(tag)
    }

    /// Adds `tag`; false if it was already held.
    pub(crate) fn insert(&mut self, tag: DeliveryTag) -> bool {
        self.tags.insert(tag, ()).is_none()
    }

    /// Removes `tag`; false if it was not held.
    pub(crate) fn remove(&mut self, tag: DeliveryTag) -> bool {
        self.tags.remove(tag).is_some()
    }

    /// The held tags up to and including `tag`, oldest first.
    pub(crate) fn up_to(&self, tag: DeliveryTag) -> impl Iterator<Item = DeliveryTag> + '_ {
        self.tags.tags_up_to(tag)
    }

    /// The held tags, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = DeliveryTag> + '_ {
        self.tags.tags()
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
            }
        }
    }
}
