//! One partition's batches as the producer's background task sees them: the open batch, the
//! sealed ones in send order, which of them are in flight, and (with idempotence) the
//! partition's sequence numbers and whether its sequence broke.
//!
//! No I/O here: the task decides what to send and when; this module answers "which batch may
//! go next", "when must the task wake up" and keeps the counts consistent.
//!
//! Invariants:
//! - `sealed` is in sequence order (send order); batch ids (`first_record_id`) increase along
//!   it. Batches leave it only when they are acknowledged or failed.
//! - `in_flight` counts the batches with `in_flight` set; `retried` counts those with
//!   `retried` set.
//! - A batch never overtakes an older one that is waiting to be (re)sent: the next batch to
//!   send is always the oldest one not in flight.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use wharf_protocol::BatchBuilder;

use super::sender::PartitionKey;
use super::sequence::{restamp, ProducerIdentity, Sequencer};
use super::RecordMetadata;
use crate::error::{Error, Result};

/// A record's promise and what its metadata needs.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) reply: oneshot::Sender<Result<RecordMetadata>>,
    pub(super) timestamp_ms: i64,
}

/// The batch a partition is filling.
#[derive(Debug)]
pub(super) struct OpenBatch {
    pub(super) builder: BatchBuilder,
    pub(super) deliveries: Vec<Delivery>,
    pub(super) first_record_id: u64,
    pub(super) created_at: Instant,
    pub(super) deadline: Instant,
    pub(super) payload_bytes: usize,
}

/// Producer id, epoch and first sequence a batch was stamped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) identity: ProducerIdentity,
    pub(super) base_sequence: i32,
}

/// A batch whose bytes are final (up to a restamp after a sequence restart).
#[derive(Debug)]
pub(super) struct SealedBatch {
    pub(super) bytes: Bytes,
    pub(super) deliveries: Vec<Delivery>,
    /// Record id of its first record: unique, and increasing in enqueue order.
    pub(super) first_record_id: u64,
    pub(super) deadline: Instant,
    pub(super) payload_bytes: usize,
    /// Sequence numbers the batch uses.
    pub(super) record_count: i32,
    /// With idempotence: what the bytes are stamped with.
    pub(super) stamp: Option<Stamp>,
    pub(super) attempts: u32,
    pub(super) in_flight: bool,
    /// An attempt failed and the batch has not been acknowledged since: while any batch of
    /// the partition is in this state, the partition sends one batch at a time.
    pub(super) retried: bool,
    /// The error of an attempt that ended without a clear answer: the broker may have
    /// appended the batch.
    pub(super) maybe_appended: Option<Error>,
}

/// Where a partition's sequence broke: a batch failed for good (or the broker forgot the
/// producer), so the batches from `from_record_id` on cannot follow it with their sequence
/// numbers and wait for a new producer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Breakage {
    pub(super) from_record_id: u64,
    /// The batch that broke it may have been appended, so held batches that may have been
    /// appended too cannot be resent under a new id without risking a duplicate.
    pub(super) ambiguous: bool,
}

/// One partition's queue.
#[derive(Debug, Default)]
pub(super) struct PartitionQueue {
    pub(super) open: Option<OpenBatch>,
    pub(super) sealed: VecDeque<SealedBatch>,
    in_flight: usize,
    retried: usize,
    /// Nothing of the partition is sent before this (a retry backoff).
    pub(super) retry_at: Option<Instant>,
    /// With idempotence: the partition's producer identity and next sequence.
    pub(super) sequencer: Option<Sequencer>,
    pub(super) broken: Option<Breakage>,
}

impl OpenBatch {
    /// Encodes the batch, stamped with the next sequence numbers of `sequencer` if given.
    pub(super) fn seal(self, sequencer: Option<&mut Sequencer>) -> SealedBatch {
        let record_count = i32::try_from(self.builder.record_count())
            .expect("a batch of at most BATCH_BYTES_MAX holds fewer than 2^31 records");
        let (builder, stamp) = match sequencer {
            Some(sequencer) => {
                let base_sequence = sequencer.take(record_count);
                let identity = sequencer.identity;
                let builder =
                    self.builder
                        .producer(identity.producer_id, identity.epoch, base_sequence);
                let stamp = Stamp {
                    identity,
                    base_sequence,
                };
                (builder, Some(stamp))
            }
            None => (self.builder, None),
        };
        SealedBatch {
            bytes: builder.build(),
            deliveries: self.deliveries,
            first_record_id: self.first_record_id,
            deadline: self.deadline,
            payload_bytes: self.payload_bytes,
            record_count,
            stamp,
            attempts: 0,
            in_flight: false,
            retried: false,
            maybe_appended: None,
        }
    }
}

impl PartitionQueue {
    /// An empty queue; with idempotence, its sequence starts at 0 under `sequencer`.
    pub(super) fn new(sequencer: Option<Sequencer>) -> Self {
        PartitionQueue {
            sequencer,
            ..PartitionQueue::default()
        }
    }

    /// Seals the open batch, if any; returns true if it did.
    pub(super) fn seal(&mut self) -> bool {
        let Some(open) = self.open.take() else {
            return false;
        };
        self.sealed.push_back(open.seal(self.sequencer.as_mut()));
        true
    }

    /// How many batches may be in flight now: one while a retry is pending or under way
    /// (so that every batch that may be resent stays among the last ones the broker
    /// remembers, and order holds), else `in_flight_max`.
    pub(super) fn in_flight_limit(&self, in_flight_max: usize) -> usize {
        if self.retried > 0 {
            1
        } else {
            in_flight_max
        }
    }

    /// True if a sealed batch waits to be sent or resent.
    pub(super) fn has_unsent(&self) -> bool {
        // In-flight batches come first except for failed ones, so this stops early.
        self.sealed.iter().any(|batch| !batch.in_flight)
    }

    /// True if the open batch has waited `linger` and could go now: nothing else waits and
    /// there is room in flight.
    pub(super) fn lingered(&self, now: Instant, linger: Duration, in_flight_max: usize) -> bool {
        self.open
            .as_ref()
            .is_some_and(|open| open.created_at + linger <= now)
            && !self.has_unsent()
            && self.in_flight < self.in_flight_limit(in_flight_max)
    }

    /// Marks the next batch to send as in flight and returns it, if the limits allow one:
    /// the oldest batch not in flight, unless it is held behind a broken sequence.
    pub(super) fn start_next(&mut self, in_flight_max: usize) -> Option<&SealedBatch> {
        if self.in_flight >= self.in_flight_limit(in_flight_max) {
            return None;
        }
        let held_from = self.broken.map(|breakage| breakage.from_record_id);
        let batch = self.sealed.iter_mut().find(|batch| !batch.in_flight)?;
        if held_from.is_some_and(|from| batch.first_record_id >= from) {
            return None;
        }
        batch.in_flight = true;
        batch.attempts = batch.attempts.saturating_add(1);
        self.in_flight += 1;
        Some(batch)
    }

    /// Records that the attempt of batch `batch_id` ended; returns its index, or `None` if
    /// the batch is gone (its topic failed meanwhile).
    pub(super) fn landed(&mut self, batch_id: u64) -> Option<usize> {
        let index = self
            .sealed
            .iter()
            .position(|batch| batch.first_record_id == batch_id)?;
        let batch = &mut self.sealed[index];
        assert!(batch.in_flight, "only batches in flight get answers");
        batch.in_flight = false;
        self.in_flight -= 1;
        Some(index)
    }

    /// Marks the batch at `index` as waiting for a resend.
    pub(super) fn mark_retried(&mut self, index: usize) {
        let batch = &mut self.sealed[index];
        if !batch.retried {
            batch.retried = true;
            self.retried += 1;
        }
    }

    /// Takes the batch at `index` out of the queue; it must not be in flight.
    pub(super) fn remove(&mut self, index: usize) -> SealedBatch {
        let batch = self
            .sealed
            .remove(index)
            .expect("callers pass the index of a queued batch");
        assert!(!batch.in_flight, "a batch in flight stays until its answer");
        if batch.retried {
            self.retried -= 1;
        }
        batch
    }

    /// Takes every batch that is not in flight out of the queue, the open one included, and
    /// forgets backoff and breakage: only answers are left to wait for.
    pub(super) fn drain_idle(&mut self) -> Vec<SealedBatch> {
        self.retry_at = None;
        self.broken = None;
        let mut idle = Vec::new();
        if let Some(open) = self.open.take() {
            idle.push(open.seal(None));
        }
        let mut index = 0;
        while index < self.sealed.len() {
            if self.sealed[index].in_flight {
                index += 1;
            } else {
                idle.push(self.remove(index));
            }
        }
        idle
    }

    /// Takes the batches not in flight whose delivery deadline is at or before `at`.
    pub(super) fn take_expired(&mut self, at: Instant) -> Vec<SealedBatch> {
        let mut expired = Vec::new();
        let mut index = 0;
        while index < self.sealed.len() {
            let batch = &self.sealed[index];
            if !batch.in_flight && batch.deadline <= at {
                expired.push(self.remove(index));
            } else {
                index += 1;
            }
        }
        expired
    }

    /// True if batch `batch_id` is behind a broken sequence.
    pub(super) fn is_held(&self, batch_id: u64) -> bool {
        self.broken
            .is_some_and(|breakage| batch_id >= breakage.from_record_id)
    }

    /// Notes that the sequence broke at batch `from_record_id`.
    pub(super) fn break_sequence(&mut self, from_record_id: u64, ambiguous: bool) {
        self.broken = Some(match self.broken {
            Some(earlier) => Breakage {
                from_record_id: earlier.from_record_id.min(from_record_id),
                ambiguous: earlier.ambiguous || ambiguous,
            },
            None => Breakage {
                from_record_id,
                ambiguous,
            },
        });
    }

    /// True if the sequence broke and everything before the break is settled: nothing in
    /// flight, no older batch left, no backoff running.
    pub(super) fn ready_to_restart(&self, now: Instant) -> bool {
        let Some(breakage) = self.broken else {
            return false;
        };
        self.in_flight == 0
            && self.retry_at.is_none_or(|at| at <= now)
            && self
                .sealed
                .front()
                .is_none_or(|batch| batch.first_record_id >= breakage.from_record_id)
    }

    /// Starts the partition's sequence over under `identity`: batches that may have been
    /// appended under the old identity behind an ambiguous break are returned with their
    /// error (resending them could duplicate them); the rest are restamped from sequence 0
    /// in order.
    pub(super) fn restart_sequence(
        &mut self,
        identity: ProducerIdentity,
    ) -> Vec<(SealedBatch, Error)> {
        assert_eq!(self.in_flight, 0, "restart only with nothing in flight");
        let ambiguous = self
            .broken
            .take()
            .is_some_and(|breakage| breakage.ambiguous);
        let mut sequencer = Sequencer::new(identity);
        let mut kept = VecDeque::with_capacity(self.sealed.len());
        let mut failed = Vec::new();
        for mut batch in self.sealed.drain(..) {
            match batch.maybe_appended.take() {
                Some(error) if ambiguous => failed.push((batch, error)),
                _ => {
                    let base_sequence = sequencer.take(batch.record_count);
                    batch.bytes = restamp(&batch.bytes, identity, base_sequence);
                    batch.stamp = Some(Stamp {
                        identity,
                        base_sequence,
                    });
                    batch.retried = false;
                    kept.push_back(batch);
                }
            }
        }
        self.sealed = kept;
        self.retried = 0;
        self.sequencer = Some(sequencer);
        failed
    }

    /// When the task must wake up for this partition: a backoff ending, or the open batch's
    /// linger ending while there is room to send it. `None` if only an answer (or a new
    /// record) can move it on.
    pub(super) fn wake_at(&self, in_flight_max: usize, linger: Duration) -> Option<Instant> {
        if self.broken.is_some() || self.has_unsent() {
            return self.retry_at;
        }
        if self.in_flight >= self.in_flight_limit(in_flight_max) {
            return None;
        }
        let ready_at = self.open.as_ref()?.created_at + linger;
        Some(self.retry_at.map_or(ready_at, |at| at.max(ready_at)))
    }
}

/// Completes every record of `batch`: with its offset (base offset + index) or the error.
pub(super) fn complete_batch(key: &PartitionKey, batch: SealedBatch, result: Result<i64>) {
    for (index, delivery) in batch.deliveries.into_iter().enumerate() {
        let outcome = match &result {
            Ok(base_offset) if *base_offset >= 0 => {
                let delta = i64::try_from(index).unwrap_or(i64::MAX);
                Ok(RecordMetadata {
                    topic: key.0.clone(),
                    partition: key.1,
                    offset: base_offset.saturating_add(delta),
                    timestamp_ms: delivery.timestamp_ms,
                })
            }
            Ok(_) => Ok(RecordMetadata {
                topic: key.0.clone(),
                partition: key.1,
                offset: -1,
                timestamp_ms: delivery.timestamp_ms,
            }),
            Err(error) => Err(error.clone()),
        };
        let _ = delivery.reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use wharf_protocol::batch::validate;
    use wharf_protocol::NewRecord;

    use super::*;

    const FIRST: ProducerIdentity = ProducerIdentity {
        producer_id: 1,
        epoch: 0,
    };
    const SECOND: ProducerIdentity = ProducerIdentity {
        producer_id: 2,
        epoch: 0,
    };

    /// A queue with `counts.len()` sealed batches of the given record counts; batch ids are
    /// 10, 20, 30, ...
    fn queue_with(counts: &[usize]) -> PartitionQueue {
        let mut queue = PartitionQueue::new(Some(Sequencer::new(FIRST)));
        let now = Instant::now();
        for (index, count) in counts.iter().enumerate() {
            let mut builder = BatchBuilder::new(0);
            for _ in 0..*count {
                builder
                    .push(&NewRecord {
                        value: Some(Bytes::from_static(b"v")),
                        ..NewRecord::default()
                    })
                    .expect("fits");
            }
            queue.open = Some(OpenBatch {
                builder,
                deliveries: Vec::new(),
                first_record_id: (index as u64 + 1) * 10,
                created_at: now,
                deadline: now + Duration::from_secs(30),
                payload_bytes: 0,
            });
            assert!(queue.seal());
        }
        queue
    }

    fn sequences(queue: &PartitionQueue) -> Vec<(i64, i32)> {
        queue
            .sealed
            .iter()
            .map(|batch| {
                let header = validate(&batch.bytes).expect("valid batch");
                (header.producer_id, header.base_sequence)
            })
            .collect()
    }

    #[test]
    fn sealing_stamps_consecutive_sequences() {
        let queue = queue_with(&[3, 1, 2]);
        assert_eq!(sequences(&queue), vec![(1, 0), (1, 3), (1, 4)]);
    }

    #[test]
    fn up_to_the_limit_go_in_order_then_a_retry_goes_alone() {
        let mut queue = queue_with(&[1, 1, 1, 1, 1, 1, 1]);
        let sent: Vec<u64> =
            std::iter::from_fn(|| queue.start_next(5).map(|batch| batch.first_record_id)).collect();
        assert_eq!(sent, vec![10, 20, 30, 40, 50]);
        // The first fails; the others come back one by one (out of order sequence).
        let first = queue.landed(10).expect("queued");
        queue.mark_retried(first);
        assert!(queue.start_next(5).is_none(), "others still in flight");
        for id in [20, 30, 40, 50] {
            let index = queue.landed(id).expect("queued");
            queue.mark_retried(index);
        }
        assert_eq!(
            queue.start_next(5).map(|batch| batch.first_record_id),
            Some(10)
        );
        assert!(
            queue.start_next(5).is_none(),
            "one at a time while retrying"
        );
        let index = queue.landed(10).expect("queued");
        queue.remove(index);
        assert_eq!(
            queue.start_next(5).map(|batch| batch.first_record_id),
            Some(20)
        );
        for id in [20, 30, 40, 50] {
            let index = queue.landed(id).expect("queued");
            queue.remove(index);
            let next = queue.start_next(5).map(|batch| batch.first_record_id);
            if id < 50 {
                assert_eq!(next, Some(id + 10));
            } else {
                assert_eq!(next, Some(60), "pipelining resumes after the retries");
                assert_eq!(
                    queue.start_next(5).map(|batch| batch.first_record_id),
                    Some(70)
                );
            }
        }
    }

    #[test]
    fn held_batches_wait_for_the_restart_and_are_restamped_from_zero() {
        let mut queue = queue_with(&[2, 2, 2]);
        for _ in 0..3 {
            assert!(queue.start_next(5).is_some());
        }
        // The first is refused as unknown producer: clean break at it.
        let index = queue.landed(10).expect("queued");
        queue.break_sequence(queue.sealed[index].first_record_id, false);
        assert!(
            !queue.ready_to_restart(Instant::now()),
            "two still in flight"
        );
        assert!(queue.start_next(5).is_none(), "held");
        for id in [20, 30] {
            queue.landed(id).expect("queued");
        }
        assert!(queue.ready_to_restart(Instant::now()));
        let failed = queue.restart_sequence(SECOND);
        assert!(failed.is_empty());
        assert_eq!(sequences(&queue), vec![(2, 0), (2, 2), (2, 4)]);
        assert!(queue.broken.is_none());
        assert_eq!(
            queue.start_next(5).map(|batch| batch.first_record_id),
            Some(10)
        );
    }

    #[test]
    fn after_an_ambiguous_break_batches_that_may_be_written_fail() {
        let mut queue = queue_with(&[1, 1, 1]);
        for _ in 0..3 {
            assert!(queue.start_next(5).is_some());
        }
        let lost = Error::Disconnected {
            address: "a:1".to_string(),
        };
        // The first timed out for good (may be written) and fails; the second may be written
        // too; the third was refused (not written).
        let index = queue.landed(10).expect("queued");
        queue.sealed[index].maybe_appended = Some(lost.clone());
        let failed_first = queue.remove(index);
        queue.break_sequence(failed_first.first_record_id, true);
        let index = queue.landed(20).expect("queued");
        queue.sealed[index].maybe_appended = Some(lost);
        queue.landed(30).expect("queued");
        let failed = queue.restart_sequence(SECOND);
        let failed_ids: Vec<u64> = failed
            .iter()
            .map(|(batch, _)| batch.first_record_id)
            .collect();
        assert_eq!(failed_ids, vec![20]);
        assert_eq!(sequences(&queue), vec![(2, 0)]);
    }

    #[test]
    fn a_break_waits_for_older_batches_to_settle() {
        let mut queue = queue_with(&[1, 1]);
        assert!(queue.start_next(5).is_some());
        assert!(queue.start_next(5).is_some());
        let index = queue.landed(20).expect("queued");
        queue.break_sequence(queue.sealed[index].first_record_id, false);
        let index = queue.landed(10).expect("queued");
        queue.mark_retried(index);
        assert!(!queue.ready_to_restart(Instant::now()), "batch 10 is older");
        assert_eq!(
            queue.start_next(5).map(|batch| batch.first_record_id),
            Some(10)
        );
        let index = queue.landed(10).expect("queued");
        queue.remove(index);
        assert!(queue.ready_to_restart(Instant::now()));
    }

    #[test]
    fn draining_leaves_only_batches_in_flight_and_nothing_to_wake_for() {
        let mut queue = queue_with(&[1, 1, 1]);
        assert!(queue.start_next(5).is_some());
        queue.break_sequence(20, false);
        queue.retry_at = Some(Instant::now());
        let idle: Vec<u64> = queue
            .drain_idle()
            .iter()
            .map(|batch| batch.first_record_id)
            .collect();
        assert_eq!(idle, vec![20, 30]);
        assert_eq!(queue.sealed.len(), 1);
        assert_eq!(queue.wake_at(5, Duration::from_millis(5)), None);
        assert!(!queue.ready_to_restart(Instant::now()));
    }

    #[test]
    fn wake_at_waits_for_answers_while_everything_is_in_flight() {
        let mut queue = queue_with(&[1]);
        let linger = Duration::from_millis(5);
        assert_eq!(
            queue.wake_at(1, linger),
            None,
            "unsent, no backoff: send now"
        );
        assert!(queue.start_next(1).is_some());
        let now = Instant::now();
        queue.open = Some(OpenBatch {
            builder: BatchBuilder::new(0),
            deliveries: Vec::new(),
            first_record_id: 99,
            created_at: now,
            deadline: now,
            payload_bytes: 0,
        });
        assert_eq!(queue.wake_at(1, linger), None, "the answer wakes the task");
        assert_eq!(queue.wake_at(5, linger), Some(now + linger));
    }
}
