//! Turning the raw record batches of one fetched partition into [`ConsumerRecord`]s.
//!
//! The broker returns whole stored batches starting with the batch that *contains* the
//! fetch offset, so records below the fetch offset are skipped here. Control batches
//! (transaction markers) are never handed to the application but still advance the next
//! fetch offset, or a consumer would fetch the same marker forever. A batch cut short at the
//! end of the response (the broker's byte limit) is not an error: it is fetched again, whole,
//! next time. Pure code: no I/O, no runtime.

use bytes::Bytes;
use wharf_protocol::{batches, BatchError, Header};

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

/// Decodes the batches of `topic`-`partition` fetched from `fetch_offset`.
///
/// # Errors
/// [`Error::Batch`] for a malformed batch or record (other than a cut-short last batch).
pub(crate) fn decode_partition(
    topic: &str,
    partition: u32,
    records: Bytes,
    fetch_offset: i64,
) -> Result<DecodedPartition, Error> {
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
        if header.attributes.is_control() {
            continue;
        }
        for record in batch.records() {
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
    use wharf_protocol::{control_batch, BatchBuilder, ControlKind, NewRecord};

    use super::*;

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
        let decoded = decode_partition("t", 0, bytes, 12).unwrap();
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
        let decoded = decode_partition("t", 3, bytes, 0).unwrap();
        assert_eq!(values(&decoded), vec![(0, "a".into()), (1, "b".into())]);
        assert_eq!(decoded.next_offset, 3);
    }

    #[test]
    fn cut_short_last_batch_is_left_for_the_next_fetch() {
        let second = data_batch(2, &["c"]);
        let mut bytes = BytesMut::new();
        bytes.extend_from_slice(&data_batch(0, &["a", "b"]));
        bytes.extend_from_slice(&second[..second.len() - 5]);
        let decoded = decode_partition("t", 0, bytes.freeze(), 0).unwrap();
        assert_eq!(values(&decoded).len(), 2);
        assert_eq!(decoded.next_offset, 2);
        assert_eq!(decoded.first_batch_bytes, None);
    }

    #[test]
    fn cut_short_first_batch_reports_its_size() {
        let batch = data_batch(0, &["a", "b"]);
        let decoded = decode_partition("t", 0, batch.slice(..batch.len() - 1), 0).unwrap();
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.next_offset, 0);
        assert_eq!(decoded.first_batch_bytes, Some(batch.len()));
    }

    #[test]
    fn corrupt_batch_is_an_error() {
        let mut bytes = BytesMut::from(&data_batch(0, &["a"])[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let error = decode_partition("t", 1, bytes.freeze(), 0).unwrap_err();
        assert!(
            matches!(error, Error::Batch { partition: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn empty_response_keeps_the_offset() {
        let decoded = decode_partition("t", 0, Bytes::new(), 42).unwrap();
        assert!(decoded.records.is_empty());
        assert_eq!(decoded.next_offset, 42);
    }
}
