//! Encoding of whole record batches: [`BatchBuilder`].
//!
//! The builder encodes each record as it is pushed, so `encoded_bytes` is always the exact
//! size of the batch `build` will produce, and building only writes the 61-byte header in
//! front and the CRC into it. It never produces a batch larger than
//! [`BATCH_BYTES_MAX`]: a record that would not fit is refused and leaves the builder as it
//! was. Every batch it builds passes [`validate`](crate::batch::validate).

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::record::{encode_record, record_bytes};
use crate::batch::{
    compute_crc, Attributes, BatchError, Compression, NewRecord, ATTRIBUTES_POS, BATCH_BYTES_MAX,
    BATCH_HEADER_BYTES, CRC_POS, LOG_OVERHEAD_BYTES, MAGIC_V2, NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
};

/// Builds one record batch (magic 2, uncompressed records).
///
/// Offset deltas run 0, 1, ... in push order; timestamp deltas are relative to the base
/// timestamp given to [`BatchBuilder::new`]. Defaults: base offset 0, partition leader epoch
/// -1, [`Attributes::NONE`], no producer id, epoch or sequence (-1).
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    base_offset: i64,
    partition_leader_epoch: i32,
    attributes: Attributes,
    base_timestamp_ms: i64,
    max_timestamp_ms: Option<i64>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    record_count: i32,
    /// Room for the batch header (written by `build`), then the records encoded so far.
    records: BytesMut,
}

impl BatchBuilder {
    /// An empty builder whose record timestamps are stored relative to `base_timestamp_ms`.
    pub fn new(base_timestamp_ms: i64) -> Self {
        let mut records = BytesMut::new();
        records.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            base_offset: 0,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            attributes: Attributes::NONE,
            base_timestamp_ms,
            max_timestamp_ms: None,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            record_count: 0,
            records,
        }
    }

    /// Sets the idempotent-producer fields: id, epoch and the sequence of the first record.
    #[must_use]
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Sets the attributes: timestamp type, transactional and control bits, and any other
    /// bits as given. The compression bits are cleared, because the builder always writes
    /// records uncompressed and the attributes must say so.
    #[must_use]
    pub fn attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes.with_compression(Compression::None);
        self
    }

    /// Sets the partition leader epoch (outside the CRC; normally set by the broker).
    #[must_use]
    pub fn partition_leader_epoch(mut self, partition_leader_epoch: i32) -> Self {
        self.partition_leader_epoch = partition_leader_epoch;
        self
    }

    /// Sets the base offset (outside the CRC; normally assigned by the broker).
    #[must_use]
    pub fn base_offset(mut self, base_offset: i64) -> Self {
        self.base_offset = base_offset;
        self
    }

    /// Encodes `record` at the next offset delta.
    ///
    /// # Errors
    ///
    /// [`BatchError::LengthOutOfRange`] if the batch with this record would exceed
    /// [`BATCH_BYTES_MAX`]; the builder is then unchanged and can still be built.
    pub fn push(&mut self, record: &NewRecord) -> Result<(), BatchError> {
        let offset_delta = self.record_count;
        let timestamp_delta = record.timestamp_ms.wrapping_sub(self.base_timestamp_ms);
        let bytes_left = BATCH_BYTES_MAX - self.encoded_bytes();
        let too_large = || BatchError::LengthOutOfRange {
            batch_length: self.would_be_batch_length(record),
            bytes_max: BATCH_BYTES_MAX,
        };
        let record_bytes = record_bytes(record, offset_delta, timestamp_delta, bytes_left)
            .ok_or_else(too_large)?;
        if record_bytes > bytes_left {
            return Err(too_large());
        }
        encode_record(record, offset_delta, timestamp_delta, &mut self.records);
        self.record_count += 1;
        self.max_timestamp_ms = Some(match self.max_timestamp_ms {
            Some(max) => max.max(record.timestamp_ms),
            None => record.timestamp_ms,
        });
        debug_assert!(self.encoded_bytes() <= BATCH_BYTES_MAX);
        Ok(())
    }

    /// The exact size in bytes of the batch [`build`](Self::build) will return.
    pub fn encoded_bytes(&self) -> usize {
        self.records.len()
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> usize {
        usize::try_from(self.record_count).expect("record count never goes negative")
    }

    /// Makes room for `bytes` more bytes of records, so that pushing them does not grow
    /// (and copy) the buffer again and again.
    pub fn reserve(&mut self, bytes: usize) {
        self.records.reserve(bytes);
    }

    /// Encodes the batch and returns its bytes.
    pub fn build(self) -> Bytes {
        self.build_mut().freeze()
    }

    /// Encodes the batch in the buffer the records were pushed into and returns it, still
    /// mutable (an append path patches offsets in place).
    pub fn build_mut(mut self) -> BytesMut {
        // The header goes into the room left for it: the records are not copied again.
        let header = self.header();
        self.records[..BATCH_HEADER_BYTES].copy_from_slice(&header);
        let crc = compute_crc(&self.records);
        self.records[CRC_POS..ATTRIBUTES_POS].copy_from_slice(&crc.to_be_bytes());
        debug_assert!(crate::batch::validate(&self.records).is_ok());
        self.records
    }

    /// Appends the encoded batch to `out`.
    ///
    /// `last_offset_delta` is `record_count - 1`, or 0 for an empty batch (which then claims
    /// one offset, like a Kafka batch emptied by compaction). `max_timestamp` is the largest
    /// record timestamp, or the base timestamp when there are no records.
    pub fn build_into(self, out: &mut BytesMut) {
        let start = out.len();
        let batch_bytes = self.encoded_bytes();
        out.reserve(batch_bytes);
        out.put_slice(&self.header());
        out.put_slice(&self.records[BATCH_HEADER_BYTES..]);
        debug_assert_eq!(out.len() - start, batch_bytes);

        let crc = compute_crc(&out[start..]);
        out[start + CRC_POS..start + ATTRIBUTES_POS].copy_from_slice(&crc.to_be_bytes());
        debug_assert!(crate::batch::validate(&out[start..]).is_ok());
    }

    /// The batch header with a zero CRC (computed once the records follow it).
    fn header(&self) -> [u8; BATCH_HEADER_BYTES] {
        let batch_length = i32::try_from(self.encoded_bytes() - LOG_OVERHEAD_BYTES)
            .expect("push keeps batches within BATCH_BYTES_MAX");
        let mut header = [0u8; BATCH_HEADER_BYTES];
        let mut out = &mut header[..];
        out.put_i64(self.base_offset);
        out.put_i32(batch_length);
        out.put_i32(self.partition_leader_epoch);
        out.put_i8(MAGIC_V2);
        // The CRC covers the bytes after it, so it is written once they are in place.
        out.put_u32(0);
        out.put_i16(self.attributes.0);
        out.put_i32((self.record_count - 1).max(0));
        out.put_i64(self.base_timestamp_ms);
        out.put_i64(self.max_timestamp_ms.unwrap_or(self.base_timestamp_ms));
        out.put_i64(self.producer_id);
        out.put_i16(self.producer_epoch);
        out.put_i32(self.base_sequence);
        out.put_i32(self.record_count);
        debug_assert!(out.is_empty(), "the header fields fill the header exactly");
        header
    }

    /// The `batch_length` the batch would have with `record`, for error reports.
    fn would_be_batch_length(&self, record: &NewRecord) -> i64 {
        let offset_delta = self.record_count;
        let timestamp_delta = record.timestamp_ms.wrapping_sub(self.base_timestamp_ms);
        let record_bytes =
            record_bytes(record, offset_delta, timestamp_delta, usize::MAX).unwrap_or(usize::MAX);
        let total = self.encoded_bytes().saturating_add(record_bytes);
        i64::try_from(total - LOG_OVERHEAD_BYTES).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::validate;

    #[test]
    fn empty_builder_builds_a_valid_header_only_batch() {
        let builder = BatchBuilder::new(1_000);
        assert_eq!(builder.encoded_bytes(), BATCH_HEADER_BYTES);
        let batch = builder.build();
        let header = validate(&batch).expect("an empty batch is valid");
        assert_eq!(header.record_count, 0);
        assert_eq!(header.last_offset_delta, 0);
        assert_eq!(header.max_timestamp, 1_000);
    }

    #[test]
    fn build_build_mut_and_build_into_write_the_same_bytes() {
        let filled = || {
            let mut builder = BatchBuilder::new(1_000).producer(7, 1, 3);
            for index in 0..5u8 {
                builder
                    .push(&NewRecord {
                        timestamp_ms: 1_000 + i64::from(index),
                        value: Some(Bytes::from(vec![index; usize::from(index) * 10])),
                        ..NewRecord::default()
                    })
                    .unwrap();
            }
            builder
        };
        let built = filled().build();
        let mut into = BytesMut::from(&b"prefix"[..]);
        filled().build_into(&mut into);
        assert_eq!(&into[..6], b"prefix");
        assert_eq!(&into[6..], &built[..]);
        let mut reserved = filled();
        reserved.reserve(4096);
        assert_eq!(&reserved.build_mut()[..], &built[..]);
        let header = validate(&built).expect("valid");
        assert_eq!(header.record_count, 5);
        assert_eq!(built.len(), filled().encoded_bytes());
    }

    #[test]
    fn record_that_would_overflow_the_batch_is_refused_and_builder_unchanged() {
        let mut builder = BatchBuilder::new(0);
        let small = NewRecord {
            value: Some(Bytes::from_static(b"small")),
            ..NewRecord::default()
        };
        builder.push(&small).expect("a small record fits");
        let bytes_before = builder.encoded_bytes();
        let huge = NewRecord {
            value: Some(Bytes::from(vec![0u8; BATCH_BYTES_MAX])),
            ..NewRecord::default()
        };
        let error = builder
            .push(&huge)
            .expect_err("the batch would exceed the max");
        match error {
            BatchError::LengthOutOfRange {
                batch_length,
                bytes_max,
            } => {
                assert_eq!(bytes_max, BATCH_BYTES_MAX);
                assert!(batch_length > (BATCH_BYTES_MAX - LOG_OVERHEAD_BYTES) as i64);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(builder.encoded_bytes(), bytes_before);
        assert_eq!(builder.record_count(), 1);
        let header = validate(&builder.build()).expect("still valid");
        assert_eq!(header.record_count, 1);
    }

    #[test]
    fn record_exactly_filling_the_batch_is_accepted() {
        // Goal: the size check is exact at the boundary. Method: size a value so the batch is
        // exactly BATCH_BYTES_MAX, then check one more byte is refused.
        let header_and_fixed = |value_bytes: usize| {
            let record = NewRecord {
                value: Some(Bytes::from(vec![7u8; value_bytes])),
                ..NewRecord::default()
            };
            let mut builder = BatchBuilder::new(0);
            builder.push(&record).map(|()| builder.encoded_bytes())
        };
        // Value length and record length each take 4 varint bytes at this size.
        let fixed_bytes = BATCH_HEADER_BYTES + 4 + 1 + 1 + 1 + 1 + 4 + 1;
        let value_bytes = BATCH_BYTES_MAX - fixed_bytes;
        assert_eq!(header_and_fixed(value_bytes), Ok(BATCH_BYTES_MAX));
        assert!(header_and_fixed(value_bytes + 1).is_err());
    }
}
