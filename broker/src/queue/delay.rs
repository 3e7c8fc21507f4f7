//! Delayed delivery: messages published with a delay (`x-delay` ms) wait here until due.
//!
//! A min-heap ordered by due time (then id, for a stable order): adding a message and taking
//! the due ones cost O(log n) each, and the owning task sleeps until [`DelayQueue::next_due_ms`]
//! instead of scanning, so millions of pending messages cost nothing per tick. Durability
//! comes from the queue's log: a delayed message is stored like any other with its due time
//! in a header, and on restart every unsettled message whose due time is still ahead goes back
//! in here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::queue::delivery::MessageId;

/// Header carrying a message's delay in milliseconds when published.
pub const DELAY_HEADER: &str = "x-delay";
/// Header the broker stores with a delayed message: when it becomes ready (ms since epoch).
pub const DUE_HEADER: &str = "x-wharf-due-ms";
/// Longest accepted delay (30 days): a due time further out is almost surely a unit mistake.
pub const DELAY_MS_MAX: u64 = 30 * 24 * 3600 * 1000;

/// Messages waiting for their due time.
#[derive(Debug, Default, Clone)]
pub struct DelayQueue {
    heap: BinaryHeap<Reverse<(i64, MessageId)>>,
}

impl DelayQueue {
    /// An empty delay queue.
    pub fn new() -> DelayQueue {
        DelayQueue::default()
    }

    /// Holds `id` until `due_ms`.
    pub fn insert(&mut self, id: MessageId, due_ms: i64) {
        self.heap.push(Reverse((due_ms, id)));
    }

    /// When the next message becomes due, if any is waiting.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((due_ms, _))| *due_ms)
    }

    /// Takes every message due at or before `now_ms`, in due order.
    pub fn take_due(&mut self, now_ms: i64) -> Vec<MessageId> {
        let mut due = Vec::new();
        while let Some(Reverse((due_ms, id))) = self.heap.peek().copied() {
            if due_ms > now_ms {
                break;
            }
            self.heap.pop();
            due.push(id);
        }
        due
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True if nothing waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Forgets every waiting message (purge).
    pub fn clear(&mut self) -> Vec<MessageId> {
        std::mem::take(&mut self.heap)
            .into_iter()
            .map(|Reverse((_, id))| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_out_in_due_order_and_not_before() {
        let mut delays = DelayQueue::new();
        delays.insert(1, 300);
        delays.insert(2, 100);
        delays.insert(3, 200);
        assert_eq!(delays.next_due_ms(), Some(100));
        assert!(delays.take_due(99).is_empty());
        assert_eq!(delays.take_due(200), vec![2, 3]);
        assert_eq!(delays.next_due_ms(), Some(300));
        assert_eq!(delays.take_due(1_000), vec![1]);
        assert!(delays.is_empty());
    }

    #[test]
    fn a_million_pending_messages_are_cheap() {
        let mut delays = DelayQueue::new();
        for id in 0..1_000_000i64 {
            delays.insert(id, 1_000_000 - id);
        }
        assert_eq!(delays.len(), 1_000_000);
        assert_eq!(
            delays.take_due(10),
            vec![
                999_999, 999_998, 999_997, 999_996, 999_995, 999_994, 999_993, 999_992, 999_991,
                999_990
            ]
        );
    }
}
