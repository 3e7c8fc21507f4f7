//! The pure half of the idempotent producer: producer identities, sequence arithmetic,
//! restamping an encoded batch, and the verdict on a failed attempt. No I/O and no clock, so
//! every rule here is unit-tested without a runtime.
//!
//! Sequences follow Kafka's rules, which the broker checks (`broker::producer`): per producer
//! and partition the first batch starts at 0, each batch starts right after the last record
//! of the previous one, and sequences wrap from `i32::MAX` to 0.

use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{
    compute_crc, BASE_SEQUENCE_POS, BATCH_HEADER_BYTES, CRC_POS, PRODUCER_EPOCH_POS,
    PRODUCER_ID_POS,
};
use wharf_protocol::ErrorCode;

use crate::error::Error;

/// A producer id and epoch handed out by the broker's InitProducerId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerIdentity {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
}

/// The sequence numbers of one partition under one producer identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sequencer {
    pub(crate) identity: ProducerIdentity,
    next: i32,
}

impl Sequencer {
    /// A fresh sequence for `identity`: the broker expects 0 first.
    pub(crate) fn new(identity: ProducerIdentity) -> Self {
        Sequencer { identity, next: 0 }
    }

    /// Reserves `record_count` sequence numbers and returns the first.
    pub(crate) fn take(&mut self, record_count: i32) -> i32 {
        let first = self.next;
        self.next = sequence_after(first, record_count);
        first
    }
}

/// The sequence following a batch of `record_count` records that starts at `first`, wrapping
/// from `i32::MAX` to 0 as the broker's sequences do.
pub(crate) fn sequence_after(first: i32, record_count: i32) -> i32 {
    debug_assert!(first >= 0, "sequences are never negative");
    debug_assert!(record_count >= 0, "record counts are never negative");
    let modulus = i64::from(i32::MAX) + 1;
    let next = (i64::from(first) + i64::from(record_count)).rem_euclid(modulus);
    i32::try_from(next).expect("a value below 2^31 fits an i32")
}

/// A copy of the encoded batch `batch` with producer id, epoch and base sequence replaced and
/// the CRC recomputed (the three fields are inside the CRC's range).
pub(crate) fn restamp(batch: &[u8], identity: ProducerIdentity, base_sequence: i32) -> Bytes {
    assert!(
        batch.len() >= BATCH_HEADER_BYTES,
        "a sealed batch has a whole header"
    );
    let mut bytes = BytesMut::from(batch);
    bytes[PRODUCER_ID_POS..PRODUCER_ID_POS + 8]
        .copy_from_slice(&identity.producer_id.to_be_bytes());
    bytes[PRODUCER_EPOCH_POS..PRODUCER_EPOCH_POS + 2]
        .copy_from_slice(&identity.epoch.to_be_bytes());
    bytes[BASE_SEQUENCE_POS..BASE_SEQUENCE_POS + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = compute_crc(&bytes);
    bytes[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    bytes.freeze()
}

/// False only for failures that prove the broker did not append the batch: refusals it
/// answers before appending, and requests that never left the client. Everything else (a
/// lost connection, a timeout, a durability failure after the append) may hide an append.
pub(crate) fn may_have_appended(error: &Error) -> bool {
    match error {
        Error::Connect { .. }
        | Error::CircuitOpen { .. }
        | Error::UnknownBroker { .. }
        | Error::UnsupportedApi { .. }
        | Error::UnknownTopic { .. }
        | Error::UnknownPartition { .. }
        | Error::ProducerFenced { .. }
        | Error::OutOfOrderSequence { .. } => false,
        Error::Server { code, .. } => !matches!(
            code,
            ErrorCode::InvalidRequest
                | ErrorCode::UnknownTopicOrPartition
                | ErrorCode::InvalidTopicName
                | ErrorCode::CorruptRecordBatch
                | ErrorCode::MessageTooLarge
                | ErrorCode::TopicAutoCreateDisabled
                | ErrorCode::InvalidRequiredAcks
                | ErrorCode::OutOfOrderSequence
                | ErrorCode::ProducerFenced
                | ErrorCode::UnknownProducerId
        ),
        _ => true,
    }
}

/// What a failed attempt of a batch tells the producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Resend it, in order, after the backoff.
    Retry,
    /// Fail its records with this error.
    Fail,
    /// The broker forgot the producer (`UnknownProducerId`): nothing was appended; restart
    /// the partition's sequence under a new producer id and resend.
    Restart,
    /// The batch sits behind a broken sequence and waits for the restart.
    Hold,
    /// A newer producer owns the id: stop the producer.
    Fenced,
}

/// Where a failed batch stands in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    /// The producer stamps batches with sequence numbers.
    pub(crate) idempotent: bool,
    /// No older batch of the partition is unacknowledged.
    pub(crate) oldest: bool,
    /// The batch is behind a break of its partition's sequence.
    pub(crate) held: bool,
    /// Its delivery deadline leaves room for another attempt after the backoff.
    pub(crate) time_left: bool,
}

/// The verdict on a failed attempt.
///
/// `OutOfOrderSequence` means "a batch before this one is missing". For a batch with older
/// unacknowledged batches that is expected after one of them failed (or overtook it on another
/// connection), so it is retried in order behind them. For the oldest one it cannot be
/// explained by anything in flight, so the batch fails (Kafka treats it the same way).
pub(crate) fn judge(error: &Error, standing: Standing) -> Verdict {
    if !standing.idempotent {
        return if is_retriable_for_produce(error) && standing.time_left {
            Verdict::Retry
        } else {
            Verdict::Fail
        };
    }
    match error.code() {
        Some(ErrorCode::ProducerFenced) => Verdict::Fenced,
        _ if standing.held => Verdict::Hold,
        Some(ErrorCode::UnknownProducerId) => Verdict::Restart,
        Some(ErrorCode::OutOfOrderSequence) if standing.oldest => Verdict::Fail,
        Some(ErrorCode::OutOfOrderSequence) if standing.time_left => Verdict::Retry,
        _ if is_retriable_for_produce(error) && standing.time_left => Verdict::Retry,
        _ => Verdict::Fail,
    }
}

/// Retriable for a producer: what is retriable anywhere, plus a topic or partition the
/// broker does not know yet (metadata is refreshed before the retry).
pub(crate) fn is_retriable_for_produce(error: &Error) -> bool {
    error.is_retriable()
        || matches!(error, Error::UnknownBroker { .. })
        || error.code() == Some(ErrorCode::UnknownTopicOrPartition)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use wharf_protocol::batch::{validate, BatchBuilder, NewRecord};

    use super::*;

    const IDENTITY: ProducerIdentity = ProducerIdentity {
        producer_id: 7,
        epoch: 3,
    };

    fn standing() -> Standing {
        Standing {
            idempotent: true,
            oldest: false,
            held: false,
            time_left: true,
        }
    }

    fn server(code: ErrorCode) -> Error {
        Error::server(code, None)
    }

    #[test]
    fn sequences_advance_by_record_count_and_wrap_at_i32_max() {
        let mut sequencer = Sequencer::new(IDENTITY);
        assert_eq!(sequencer.take(3), 0);
        assert_eq!(sequencer.take(1), 3);
        assert_eq!(sequencer.take(0), 4);
        assert_eq!(sequence_after(i32::MAX, 1), 0);
        assert_eq!(sequence_after(i32::MAX - 1, 5), 3);
        assert_eq!(sequence_after(5, i32::MAX), 4);
    }

    #[test]
    fn restamp_rewrites_producer_fields_and_keeps_the_batch_valid() {
        let mut builder = BatchBuilder::new(1_000).producer(1, 0, 0);
        for value in ["a", "b"] {
            builder
                .push(&NewRecord {
                    timestamp_ms: 1_000,
                    value: Some(Bytes::from(value)),
                    ..NewRecord::default()
                })
                .expect("fits");
        }
        let original = builder.build();
        let restamped = restamp(&original, IDENTITY, 41);
        let header = validate(&restamped).expect("the CRC was recomputed");
        assert_eq!(header.producer_id, 7);
        assert_eq!(header.producer_epoch, 3);
        assert_eq!(header.base_sequence, 41);
        assert_eq!(header.record_count, 2);
        assert_eq!(restamped.len(), original.len());
        assert_eq!(
            restamped[BATCH_HEADER_BYTES..],
            original[BATCH_HEADER_BYTES..],
            "records are untouched"
        );
    }

    #[test]
    fn only_refusals_and_unsent_requests_prove_nothing_was_appended() {
        assert!(!may_have_appended(&server(ErrorCode::OutOfOrderSequence)));
        assert!(!may_have_appended(&server(ErrorCode::UnknownProducerId)));
        assert!(!may_have_appended(&server(ErrorCode::CorruptRecordBatch)));
        assert!(!may_have_appended(&Error::UnknownBroker { node_id: 3 }));
        assert!(may_have_appended(&server(ErrorCode::RequestTimedOut)));
        assert!(may_have_appended(&server(ErrorCode::StorageFailed)));
        assert!(may_have_appended(&Error::Disconnected {
            address: "a:1".to_string()
        }));
    }

    #[test]
    fn out_of_order_is_retried_behind_older_batches_and_fatal_for_the_oldest() {
        let out_of_order = server(ErrorCode::OutOfOrderSequence);
        assert_eq!(judge(&out_of_order, standing()), Verdict::Retry);
        let oldest = Standing {
            oldest: true,
            ..standing()
        };
        assert_eq!(judge(&out_of_order, oldest), Verdict::Fail);
        let late = Standing {
            time_left: false,
            ..standing()
        };
        assert_eq!(judge(&out_of_order, late), Verdict::Fail);
    }

    #[test]
    fn fencing_wins_over_everything_and_held_batches_wait() {
        let held = Standing {
            held: true,
            ..standing()
        };
        assert_eq!(
            judge(&server(ErrorCode::ProducerFenced), held),
            Verdict::Fenced
        );
        assert_eq!(
            judge(&server(ErrorCode::OutOfOrderSequence), held),
            Verdict::Hold
        );
        assert_eq!(
            judge(&server(ErrorCode::CorruptRecordBatch), held),
            Verdict::Hold
        );
    }

    #[test]
    fn unknown_producer_restarts_the_sequence() {
        let oldest = Standing {
            oldest: true,
            ..standing()
        };
        assert_eq!(
            judge(&server(ErrorCode::UnknownProducerId), oldest),
            Verdict::Restart
        );
    }

    #[test]
    fn without_idempotence_only_retriability_and_time_count() {
        let plain = Standing {
            idempotent: false,
            ..standing()
        };
        assert_eq!(
            judge(&server(ErrorCode::RequestTimedOut), plain),
            Verdict::Retry
        );
        assert_eq!(
            judge(&server(ErrorCode::OutOfOrderSequence), plain),
            Verdict::Fail
        );
        let late = Standing {
            time_left: false,
            ..plain
        };
        assert_eq!(
            judge(&server(ErrorCode::RequestTimedOut), late),
            Verdict::Fail
        );
    }
}
