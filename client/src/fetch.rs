//! Turning the raw record batches of one fetched partition into [`ConsumerRecord`]s.
//!
//! The broker returns whole stored batches starting with the batch that *contains* the
//! fetch offset, so records below the fetch offset are skipped here. Control batches
//! (transaction markers) are never handed to the application but still advance the next
//! fetch offset, or a consumer would fetch the same marker forever. A batch cut short at the
//! end of the response (the broker's byte limit) is not an error: it is fetched again, whole,
//! next time. Pure code: no I/O, no runtime.
//!
//! Read committed ([`Isolation::ReadCommitted`]): the broker returns batches below the last
//! stable offset and the transactions among them that aborted, as (producer id, first
//! offset). Batches are walked in offset order, as Kafka's consumer does: once a batch reaches
//! an aborted transaction's first offset, its producer is *aborted*; transactional data
//! batches of an aborted producer are skipped; that producer's ABORT marker ends it. So a
//! producer's committed transactions before or after an aborted one stay visible, and other
//! producers' batches interleaved with it are untouched.
//!
//! Invariant: the application never receives a record of a control batch, and with read
//! committed never one of an aborted transaction listed by the broker.

use std::collections::HashSet;

use bytes::Bytes;
use wharf_protocol::messages::{AbortedTransaction, Isolation};
use wharf_protocol::{batches, BatchError, BatchHeader, ControlKind, Header};

use crate::error::Error;

/// A record read by a [`crate::Consumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The record's offset.
    pub offset: i64,
    /// The record's timestamp (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// The value (`None` for a tombstone).
    pub value: Option<Bytes>,
    /// The headers, in order.
    pub headers: Vec<Header>,
}

/// The records of one fetched partition and where to fetch next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedPartition {
    /// Records at or after the fetch offset, in offset order.
    pub(crate) records: Vec<ConsumerRecord>,
    /// The offset after the last whole batch (never below the fetch offset).
    pub(crate) next_offset: i64,
    /// Bytes of a cut-short first batch: fetch at least this much to make progress.
    pub(crate) first_batch_bytes: Option<usize>,
}

/// One fetched partition as the broker returned it.
#[derive(Debug, Clone)]
pub(crate) struct FetchedPartition<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: u32,
    pub(crate) records: Bytes,
    pub(crate) fetch_offset: i64,
    pub(crate) isolation: Isolation,
    /// The aborted transactions the broker listed (read committed only).
    pub(crate) aborted: &'a [AbortedTransaction],
}

/// Which batches of a read-committed fetch belong to aborted transactions (Kafka's
/// algorithm, see the module docs). Fed the batches in offset order.
#[derive(Debug)]
struct AbortFilter {
    /// Aborted transactions not yet reached, sorted by first offset, the next one last.
    pending: Vec<AbortedTransaction>,
    /// Producers inside an aborted transaction at the current batch.
    aborted_producers: HashSet<i64>,
}

impl AbortFilter {
    fn new(aborted: &[AbortedTransaction]) -> Self {
        let mut pending = aborted.to_vec();
        pending.sort_by_key(|txn| std::cmp::Reverse(txn.first_offset));
        AbortFilter {
            pending,
            aborted_producers: HashSet::new(),
        }
    }

    /// True if the data records of the batch must be skipped. `abort_marker` says the batch
    /// is an ABORT control batch; it ends its producer's aborted transaction.
    fn skips(&mut self, header: &BatchHeader, abort_marker: bool) -> bool {
        if header.producer_id < 0 {
            return false;
        }
        while let Some(next) = self.pending.last() {
            if next.first_offset > header.last_offset() {
                break;
            }
            self.aborted_producers.insert(next.producer_id);
            self.pending.pop();
        }
        if abort_marker {
            self.aborted_producers.remove(&header.producer_id);
            return false;
        }
        header.attributes.is_transactional() && self.aborted_producers.contains(&header.producer_id)
    }
}

/// Decodes the batches of one fetched partition: the data records at or after the fetch
/// offset, without control batches and (read committed) without aborted transactions.
///
/// # Errors
/// [`Error::Batch`] for a malformed batch or record (other than a cut-short last batch).
pub(crate) fn decode_partition(fetched: FetchedPartition<'_>) -> Result<DecodedPartition, Error> {
    let FetchedPartition {
        topic,
        partition,
        records,
        fetch_offset,
        isolation,
        aborted,
    } = fetched;
    let mut filter = match isolation {
        Isolation::ReadCommitted => Some(AbortFilter::new(aborted)),
        Isolation::ReadUncommitted => None,
    };
    let mut decoded = DecodedPartition {
        records: Vec::new(),
        next_offset: fetch_offset,
        first_batch_bytes: None,
    };
    let batch_error = |source: BatchError| Error::Batch {
        topic: topic.to_string(),
        partition,
        source,
    };
    let mut first = true;
    for batch in batches(records) {
        let batch = match batch {
            Ok(batch) => batch,
            Err(BatchError::Truncated { need_bytes, .. }) => {
                if first {
                    decoded.first_batch_bytes = Some(need_bytes);
                }
                break;
            }
            Err(error) => return Err(batch_error(error)),
        };
        first = false;
        let header = batch.header();
        decoded.next_offset = decoded.next_offset.max(header.next_offset());
        let abort_marker = batch.control_kind().map_err(batch_error)? == Some(ControlKind::Abort);
        let skipped = filter
            .as_mut()
            .is_some_and(|filter| filter.skips(header, abort_marker));
        if skipped || header.attributes.is_control() {
            continue;
        }
        // Batches Kafka clients compressed are decompressed here, in the reader.
        for record in batch.records_decompressed().map_err(batch_error)? {
            let record = record.map_err(batch_error)?;
            if record.offset < fetch_offset {
                continue;
            }
            decoded.records.push(ConsumerRecord {
                topic: topic.to_string(),
                partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                value: record.value,
                headers: record.headers,
            });
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use wharf_protocol::{control_batch, Attributes, BatchBuilder, ControlKind, NewRecord};

    use super::*;

    /// Decodes read uncommitted, as every test before transactions did.
    fn decode(
        topic: &str,
        partition: u32,
        records: Bytes,
        fetch_offset: i64,
    ) -> Result<DecodedPartition, Error> {
        decode_partition(FetchedPartition {
            topic,
            partition,
            records,
            fetch_offset,
            isolation: Isolation::ReadUncommitted,
            aborted: &[],
        })
    }

    fn decode_committed(records: Bytes, aborted: &[(i64, i64)]) -> DecodedPartition {
        let aborted: Vec<AbortedTransaction> = aborted
            .iter()
            .map(|&(producer_id, first_offset)| AbortedTransaction {
                producer_id,
                first_offset,
            })
            .collect();
        decode_partition(FetchedPartition {
            topic: "t",
            partition: 0,
            records,
            fetch_offset: 0,
            isolation: Isolation::ReadCommitted,
            aborted: &aborted,
        })
        .unwrap()
    }

    /// A transactional batch of `producer_id` at `base_offset`.
    fn txn_batch(producer_id: i64, base_offset: i64, values: &[&str]) -> Bytes {
        let mut builder = BatchBuilder::new(1_000)
            .base_offset(base_offset)
            .producer(producer_id, 0, 0)
            .attributes(Attributes::NONE.transactional());
        for value in values {
            builder
                .push(&NewRecord {
                    timestamp_ms: 1_000,
                    key: None,
                    value: Some(Bytes::copy_from_slice(value.as_bytes())),
                    headers: vec![],
                })
                .unwrap();
        }
        builder.build()
    }

    fn marker(producer_id: i64, offset: i64, kind: ControlKind) -> Bytes {
        let marker = control_batch(1_000, producer_id, 0, kind, 0);
        let mut marker = BytesMut::from(&marker[..]);
        wharf_protocol::batch::set_base_offset(&mut marker, offset);
        marker.freeze()
    }

    fn value_list(decoded: &DecodedPartition) -> Vec<String> {
        values(decoded)
            .into_iter()
            .map(|(_, value)| value)
            .collect()
    }

    #[test]
    fn read_committed_skips_an_aborted_transaction_and_its_marker() {
        let bytes = concat(&[
            txn_batch(7, 0, &["a0", "a1"]),
            marker(7, 2, ControlKind::Abort),
            txn_batch(7, 3, &["c0"]),
            marker(7, 4, ControlKind::Commit),
        ]);
        let decoded = decode_committed(bytes.clone(), &[(7, 0)]);
        assert_eq!(value_list(&decoded), vec!["c0"]);
        assert_eq!(decoded.next_offset, 5);
        // Read uncommitted sees both transactions' data, but never the markers.
        let uncommitted = decode("t", 0, bytes, 0).unwrap();
        assert_eq!(value_list(&uncommitted), vec!["a0", "a1", "c0"]);
    }

    #[test]
    fn read_committed_keeps_interleaved_producers_apart() {
        // Producer 7 aborts a transaction spanning offsets 0..=4; producer 8 commits one
        // interleaved with it; plain records sit in between.
        let bytes = concat(&[
            txn_batch(7, 0, &["abort-1"]),
            txn_batch(8, 1, &["commit-1"]),
            data_batch(2, &["plain"]),
            txn_batch(7, 3, &["abort-2"]),
            marker(7, 4, ControlKind::Abort),
            txn_batch(8, 5, &["commit-2"]),
            marker(8, 6, ControlKind::Commit),
            txn_batch(7, 7, &["later"]),
            marker(7, 8, ControlKind::Commit),
        ]);
        let decoded = decode_committed(bytes, &[(7, 0)]);
        assert_eq!(
            value_list(&decoded),
            vec!["commit-1", "plain", "commit-2", "later"]
        );
        assert_eq!(decoded.next_offset, 9);
    }

    #[test]
    fn read_committed_handles_two_aborted_transactions_of_one_producer() {
        let bytes = concat(&[
            txn_batch(7, 0, &["x"]),
            marker(7, 1, ControlKind::Abort),
            txn_batch(7, 2, &["kept"]),
            marker(7, 3, ControlKind::Commit),
            txn_batch(7, 4, &["y"]),
            marker(7, 5, ControlKind::Abort),
        ]);
        // The broker lists them in any order; the filter sorts.
        let decoded = decode_committed(bytes, &[(7, 4), (7, 0)]);
        assert_eq!(value_list(&decoded), vec!["kept"]);
    }

    #[test]
    fn read_committed_skips_an_aborted_transaction_begun_before_the_fetch() {
        // The fetch starts mid-transaction: the aborted one began at offset 0, the response
        // starts at offset 2.
        let bytes = concat(&[txn_batch(7, 2, &["z"]), marker(7, 3, ControlKind::Abort)]);
        let decoded = decode_committed(bytes, &[(7, 0)]);
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.next_offset, 4);
    }

    #[test]
    fn read_committed_without_aborted_transactions_returns_every_data_record() {
        let bytes = concat(&[
            txn_batch(7, 0, &["a"]),
            marker(7, 1, ControlKind::Commit),
            data_batch(2, &["b"]),
        ]);
        let decoded = decode_committed(bytes, &[]);
        assert_eq!(value_list(&decoded), vec!["a", "b"]);
    }

    fn data_batch(base_offset: i64, values: &[&str]) -> Bytes {
        let mut builder = BatchBuilder::new(1_000).base_offset(base_offset);
        for value in values {
            builder
                .push(&NewRecord {
                    timestamp_ms: 1_000,
                    key: None,
                    value: Some(Bytes::copy_from_slice(value.as_bytes())),
                    headers: vec![],
                })
                .unwrap();
        }
        builder.build()
    }

    fn concat(parts: &[Bytes]) -> Bytes {
        let mut out = BytesMut::new();
        for part in parts {
            out.extend_from_slice(part);
        }
        out.freeze()
    }

    fn values(decoded: &DecodedPartition) -> Vec<(i64, String)> {
        decoded
            .records
            .iter()
            .map(|record| {
                let value = record.value.as_ref().unwrap();
                (record.offset, String::from_utf8_lossy(value).into_owned())
            })
            .collect()
    }

    #[test]
    fn records_below_fetch_offset_are_skipped() {
        let bytes = concat(&[data_batch(10, &["a", "b", "c"]), data_batch(13, &["d"])]);
        let decoded = decode("t", 0, bytes, 12).unwrap();
        assert_eq!(values(&decoded), vec![(12, "c".into()), (13, "d".into())]);
        assert_eq!(decoded.next_offset, 14);
        assert!(decoded.records.iter().all(|record| record.topic == "t"));
    }

    #[test]
    fn control_batches_are_skipped_but_advance_the_offset() {
        let marker = control_batch(5_000, 7, 0, ControlKind::Commit, 0);
        let mut marker = BytesMut::from(&marker[..]);
        wharf_protocol::batch::set_base_offset(&mut marker, 2);
        let bytes = concat(&[data_batch(0, &["a", "b"]), marker.freeze()]);
        let decoded = decode("t", 3, bytes, 0).unwrap();
        assert_eq!(values(&decoded), vec![(0, "a".into()), (1, "b".into())]);
        assert_eq!(decoded.next_offset, 3);
    }

    #[test]
    fn cut_short_last_batch_is_left_for_the_next_fetch() {
        let second = data_batch(2, &["c"]);
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&data_batch(0, &["a", "b"]));
        bytes.extend_from_slice(&second[..second.len() - 5]);
        let decoded = decode("t", 0, bytes.freeze(), 0).unwrap();
        assert_eq!(values(&decoded).len(), 2);
        assert_eq!(decoded.next_offset, 2);
        assert_eq!(decoded.first_batch_bytes, None);
    }

    #[test]
    fn cut_short_first_batch_reports_its_size() {
        let batch = data_batch(0, &["a", "b"]);
        let decoded = decode("t", 0, batch.slice(..batch.len() - 1), 0).unwrap();
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.next_offset, 0);
        assert_eq!(decoded.first_batch_bytes, Some(batch.len()));
    }

    #[test]
    fn corrupt_batch_is_an_error() {
        let mut bytes = BytesMut::from(&data_batch(0, &["a"])[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let error = decode("t", 1, bytes.freeze(), 0).unwrap_err();
        assert!(
            matches!(error, Error::Batch { partition: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn empty_response_keeps_the_offset() {
        let decoded = decode("t", 0, Bytes::new(), 42).unwrap();
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.next_offset, 42);
    }
}
