//! A queue's ready messages in delivery order: priority first (highest first), then id
//! (oldest first).
//!
//! Nearly every message of a queue without priorities arrives in id order and leaves from
//! the head, so the ready set keeps those in a `run`: a deque of one priority in id order,
//! appended to at the back and taken from the front in O(1), with no tree node to allocate
//! or rebalance per message. Whatever does not extend the run (a requeued message going back
//! to its old place, a message of another priority) goes to `others`, ordered by
//! [`ReadyKey`]. Every read merges the two; the order they give is that of one ordered map
//! holding both (the property test below checks it against one).

use std::collections::{BTreeMap, VecDeque};

use crate::queue::delivery::{MessageId, MessageMeta};

/// Where a ready message sits: higher priorities first, then id order (FIFO within a
/// priority). In a queue without priorities every message has priority 0, so this is id
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ReadyKey {
    /// `u8::MAX - priority`, so that the highest priority sorts first.
    rank: u8,
    id: MessageId,
}

impl ReadyKey {
    fn of(meta: &MessageMeta) -> ReadyKey {
        ReadyKey {
            rank: u8::MAX - meta.priority,
            id: meta.id,
        }
    }
}

/// The ready messages in delivery order, with the sum of their body sizes kept as they come
/// and go (for `max-length-bytes`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Ready {
    /// Messages of one priority in increasing id order.
    run: VecDeque<MessageMeta>,
    /// The other ready messages.
    others: BTreeMap<ReadyKey, MessageMeta>,
    bytes: u64,
}

impl Ready {
    pub(crate) fn len(&self) -> usize {
        self.run.len() + self.others.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Every ready message, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &MessageMeta> + '_ {
        self.run.iter().chain(self.others.values())
    }

    /// Where `key` is in the run, if it is there.
    fn run_index(&self, key: ReadyKey) -> Option<usize> {
        let front = self.run.front()?;
        if ReadyKey::of(front).rank != key.rank {
            return None;
        }
        if front.id == key.id {
            // The head, nearly always: no search.
            return Some(0);
        }
        self.run.binary_search_by_key(&key.id, |meta| meta.id).ok()
    }

    /// Adds `meta`, replacing a ready message with the same id and priority.
    pub(crate) fn insert(&mut self, meta: MessageMeta) {
        let key = ReadyKey::of(&meta);
        self.bytes += u64::from(meta.bytes);
        // A message newer than the run's last, of its priority, extends it (every publish
        // of a queue without priorities): it cannot be in the run, so no search.
        let extends_run = self.run.back().is_none_or(|last| {
            let last = ReadyKey::of(last);
            last.rank == key.rank && last.id < key.id
        });
        if extends_run && !self.others.contains_key(&key) {
            self.run.push_back(meta);
            return;
        }
        if let Some(index) = self.run_index(key) {
            let replaced = std::mem::replace(&mut self.run[index], meta);
            self.bytes -= u64::from(replaced.bytes);
        } else if let Some(replaced) = self.others.insert(key, meta) {
            self.bytes -= u64::from(replaced.bytes);
        }
    }

    /// Removes the message `meta` names (by id and priority).
    pub(crate) fn remove(&mut self, meta: &MessageMeta) -> Option<MessageMeta> {
        let key = ReadyKey::of(meta);
        let removed = match self.run_index(key) {
            // The head, nearly always: O(1).
            Some(0) => self.run.pop_front(),
            Some(index) => self.run.remove(index),
            None => self.others.remove(&key),
        }?;
        self.bytes -= u64::from(removed.bytes);
        Some(removed)
    }

    pub(crate) fn pop_first(&mut self) -> Option<MessageMeta> {
        let first = self.first()?;
        self.remove(&first)
    }

    /// The head: the oldest message of the highest priority.
    pub(crate) fn first(&self) -> Option<MessageMeta> {
        earlier(
            self.run.front().copied(),
            self.others.first_key_value().map(|(_, meta)| *meta),
        )
    }

    /// The next message in delivery order after `after` (none: the head).
    pub(crate) fn first_after(&self, after: Option<&MessageMeta>) -> Option<MessageMeta> {
        let Some(previous) = after else {
            return self.first();
        };
        let key = ReadyKey::of(previous);
        let from_others = self
            .others
            .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
            .next()
            .map(|(_, meta)| *meta);
        let from_run = self.run.front().and_then(|front| {
            let rank = ReadyKey::of(front).rank;
            if rank > key.rank {
                Some(*front)
            } else if rank == key.rank {
                let index = self.run.partition_point(|meta| meta.id <= key.id);
                self.run.get(index).copied()
            } else {
                None
            }
        });
        earlier(from_run, from_others)
    }

    /// The first message of each priority present, highest priority first: at most 256
    /// lookups, however many messages are ready.
    fn heads_by_priority(&self) -> Vec<MessageMeta> {
        let mut heads = Vec::new();
        let mut from = Some(0u8);
        while let Some(rank) = from {
            let Some((key, meta)) = self
                .others
                .range(
                    ReadyKey {
                        rank,
                        id: MessageId::MIN,
                    }..,
                )
                .next()
            else {
                break;
            };
            heads.push(*meta);
            from = key.rank.checked_add(1);
        }
        if let Some(front) = self.run.front() {
            let rank = ReadyKey::of(front).rank;
            match heads.binary_search_by_key(&rank, |head| ReadyKey::of(head).rank) {
                Ok(index) => {
                    heads[index] = earlier(Some(heads[index]), Some(*front)).unwrap_or(*front)
                }
                Err(index) => heads.insert(index, *front),
            }
        }
        heads
    }

    /// The newest message's id, whatever its priority.
    pub(crate) fn last_id(&self) -> Option<MessageId> {
        let newest_other = self
            .heads_by_priority()
            .into_iter()
            .filter_map(|head| {
                let last_of_priority = ReadyKey {
                    rank: u8::MAX - head.priority,
                    id: MessageId::MAX,
                };
                self.others
                    .range(..=last_of_priority)
                    .next_back()
                    .map(|(key, _)| key.id)
            })
            .max();
        newest_other.max(self.run.back().map(|meta| meta.id))
    }

    /// The first message in delivery order whose id is at most `up_to` (a move's bound).
    pub(crate) fn first_up_to(&self, up_to: MessageId) -> Option<MessageMeta> {
        self.heads_by_priority()
            .into_iter()
            .find(|head| head.id <= up_to)
    }

    /// Every ready message, in id order.
    pub(crate) fn take_all(&mut self) -> Vec<MessageId> {
        self.bytes = 0;
        let mut ids: Vec<MessageId> = std::mem::take(&mut self.run)
            .into_iter()
            .chain(std::mem::take(&mut self.others).into_values())
            .map(|meta| meta.id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// Whichever of two messages comes first in delivery order.
fn earlier(left: Option<MessageMeta>, right: Option<MessageMeta>) -> Option<MessageMeta> {
    match (left, right) {
        (Some(left), Some(right)) => Some(if ReadyKey::of(&right) < ReadyKey::of(&left) {
            right
        } else {
            left
        }),
        (left, right) => left.or(right),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(id: MessageId, priority: u8, bytes: u32) -> MessageMeta {
        MessageMeta {
            id,
            expires_at_ms: None,
            delivery_count: 0,
            bytes,
            priority,
        }
    }

    /// The model: one ordered map, as the ready set was before the run.
    #[derive(Default)]
    struct Model {
        messages: BTreeMap<ReadyKey, MessageMeta>,
    }

    impl Model {
        fn bytes(&self) -> u64 {
            self.messages
                .values()
                .map(|meta| u64::from(meta.bytes))
                .sum()
        }
        fn first_after(&self, after: Option<&MessageMeta>) -> Option<MessageMeta> {
            match after {
                None => self.messages.values().next().copied(),
                Some(previous) => self
                    .messages
                    .range((
                        std::ops::Bound::Excluded(ReadyKey::of(previous)),
                        std::ops::Bound::Unbounded,
                    ))
                    .next()
                    .map(|(_, meta)| *meta),
            }
        }
        fn heads(&self) -> Vec<MessageMeta> {
            let mut heads: Vec<MessageMeta> = Vec::new();
            for meta in self.messages.values() {
                if heads
                    .last()
                    .is_none_or(|head| head.priority != meta.priority)
                {
                    heads.push(*meta);
                }
            }
            heads
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A message with the next id (a publish).
        Publish {
            priority: u8,
            bytes: u32,
        },
        /// A message back at an id already used (a requeue, a put-back, a recovery).
        Insert {
            id: MessageId,
            priority: u8,
            bytes: u32,
        },
        Remove {
            id: MessageId,
            priority: u8,
        },
        PopFirst,
        FirstAfter {
            id: MessageId,
            priority: u8,
        },
        FirstUpTo {
            id: MessageId,
        },
        TakeAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few priorities and ids, so that operations meet the same messages often.
        let priority = prop_oneof![4 => Just(0u8), 1 => 0u8..4];
        prop_oneof![
            6 => (priority.clone(), 1u32..50).prop_map(|(priority, bytes)| Op::Publish { priority, bytes }),
            2 => (0i64..40, priority.clone(), 1u32..50)
                .prop_map(|(id, priority, bytes)| Op::Insert { id, priority, bytes }),
            3 => (0i64..40, priority.clone()).prop_map(|(id, priority)| Op::Remove { id, priority }),
            3 => Just(Op::PopFirst),
            2 => (0i64..40, priority).prop_map(|(id, priority)| Op::FirstAfter { id, priority }),
            1 => (0i64..40).prop_map(|id| Op::FirstUpTo { id }),
            1 => Just(Op::TakeAll),
        ]
    }

    proptest! {
        /// Every read of the ready set answers what one ordered map of the same messages
        /// answers, whatever mix of in-order publishes, out-of-order inserts, removals and
        /// priorities came before.
        #[test]
        fn the_run_and_the_others_read_as_one_ordered_map(ops in proptest::collection::vec(op(), 1..120)) {
            let mut ready = Ready::default();
            let mut model = Model::default();
            let mut next_id = 0i64;
            for op in ops {
                match op {
                    Op::Publish { priority, bytes } => {
                        let message = meta(next_id, priority, bytes);
                        next_id += 1;
                        ready.insert(message);
                        model.messages.insert(ReadyKey::of(&message), message);
                    }
                    Op::Insert { id, priority, bytes } => {
                        let message = meta(id, priority, bytes);
                        next_id = next_id.max(id + 1);
                        ready.insert(message);
                        model.messages.insert(ReadyKey::of(&message), message);
                    }
                    Op::Remove { id, priority } => {
                        let message = meta(id, priority, 0);
                        prop_assert_eq!(
                            ready.remove(&message),
                            model.messages.remove(&ReadyKey::of(&message))
                        );
                    }
                    Op::PopFirst => {
                        let expected = model.messages.pop_first().map(|(_, meta)| meta);
                        prop_assert_eq!(ready.pop_first(), expected);
                    }
                    Op::FirstAfter { id, priority } => {
                        let after = meta(id, priority, 0);
                        prop_assert_eq!(ready.first_after(Some(&after)), model.first_after(Some(&after)));
                    }
                    Op::FirstUpTo { id } => {
                        let expected = model.heads().into_iter().find(|head| head.id <= id);
                        prop_assert_eq!(ready.first_up_to(id), expected);
                    }
                    Op::TakeAll => {
                        let mut expected: Vec<MessageId> =
                            std::mem::take(&mut model.messages).into_values().map(|meta| meta.id).collect();
                        expected.sort_unstable();
                        prop_assert_eq!(ready.take_all(), expected);
                    }
                }
                prop_assert_eq!(ready.len(), model.messages.len());
                prop_assert_eq!(ready.bytes(), model.bytes());
                prop_assert_eq!(ready.first(), model.first_after(None));
                prop_assert_eq!(ready.heads_by_priority(), model.heads());
                prop_assert_eq!(ready.last_id(), model.messages.values().map(|meta| meta.id).max());
            }
        }
    }

    #[test]
    fn in_order_messages_of_one_priority_stay_in_the_run() {
        let mut ready = Ready::default();
        for id in 0..1000 {
            ready.insert(meta(id, 0, 1));
        }
        assert_eq!(ready.run.len(), 1000);
        assert!(ready.others.is_empty());
        // A requeued message goes back to its place, ahead of the run.
        let head = ready.pop_first().unwrap();
        ready.pop_first();
        ready.insert(head);
        assert_eq!(ready.others.len(), 1);
        assert_eq!(ready.first().map(|meta| meta.id), Some(0));
        assert_eq!(ready.pop_first().map(|meta| meta.id), Some(0));
        assert_eq!(ready.pop_first().map(|meta| meta.id), Some(2));
    }
}
