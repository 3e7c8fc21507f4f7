//! Record batches: Kafka's RecordBatch v2 (magic 2), byte for byte.
//!
//! One format serves the wire and the disk: producers send batches, the broker checks them
//! with [`validate`], patches [`set_base_offset`] and [`set_partition_leader_epoch`] (both
//! outside the CRC) and stores the bytes unchanged; fetches return them unchanged.
//! docs/PROTOCOL.md documents every byte and `tests/golden_batch.rs` pins them.
//!
//! This module owns the 61-byte batch header, its size constants, the CRC-32C check, the
//! zero-copy reader [`Batch`] and the splitter [`batches`]. Submodules own the attributes
//! field, single records, the [`BatchBuilder`] and control batches.
//!
//! It must never do I/O, never panic on any input, never allocate from a length it has not
//! checked, and never decode records on the validation path. Invariants: all integers are
//! big-endian; a batch is `LOG_OVERHEAD_BYTES + batch_length` bytes, at least
//! [`BATCH_HEADER_BYTES`] and at most [`BATCH_BYTES_MAX`]; the CRC covers
//! `bytes[ATTRIBUTES_POS..]`.

mod attributes;
mod builder;
pub mod compression;
mod control;
mod error;
mod record;

use std::iter::FusedIterator;

use bytes::Bytes;

pub use attributes::{Attributes, Compression, TimestampType};
pub use builder::BatchBuilder;
pub use control::{
    control_batch, ControlKind, ControlMarker, CONTROL_KEY_BYTES, CONTROL_VALUE_BYTES,
};
pub use error::BatchError;
pub use record::{record_starts, Header, NewRecord, Record, RecordView, RecordViews, Records};

use record::RecordsContext;

/// Position of `base_offset: i64`, the offset of the first record.
pub const BASE_OFFSET_POS: usize = 0;
/// Position of `batch_length: i32`, the bytes after this field.
pub const BATCH_LENGTH_POS: usize = 8;
/// Position of `partition_leader_epoch: i32`, set by the broker, outside the CRC.
pub const PARTITION_LEADER_EPOCH_POS: usize = 12;
/// Position of `magic: i8`, the format version (2).
pub const MAGIC_POS: usize = 16;
/// Position of `crc: u32`, CRC-32C over `bytes[ATTRIBUTES_POS..]`.
pub const CRC_POS: usize = 17;
/// Position of `attributes: i16`, the first byte the CRC covers.
pub const ATTRIBUTES_POS: usize = 21;
/// Position of `last_offset_delta: i32`.
pub const LAST_OFFSET_DELTA_POS: usize = 23;
/// Position of `base_timestamp: i64`.
pub const BASE_TIMESTAMP_POS: usize = 27;
/// Position of `max_timestamp: i64`.
pub const MAX_TIMESTAMP_POS: usize = 35;
/// Position of `producer_id: i64`.
pub const PRODUCER_ID_POS: usize = 43;
/// Position of `producer_epoch: i16`.
pub const PRODUCER_EPOCH_POS: usize = 51;
/// Position of `base_sequence: i32`.
pub const BASE_SEQUENCE_POS: usize = 53;
/// Position of `record_count: i32`.
pub const RECORD_COUNT_POS: usize = 57;
/// Size of the fixed batch header; records start here.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before the part `batch_length` counts: `base_offset` and `batch_length` themselves.
pub const LOG_OVERHEAD_BYTES: usize = 12;

/// The only batch format version this crate reads or writes.
pub const MAGIC_V2: i8 = 2;

/// Largest whole batch, in bytes, header included.
///
/// Why: one batch must fit in one frame, and every reader allocates or slices by the declared
/// length, so the length must be bounded before anything trusts it. 16 MiB leaves room for
/// large records while keeping a hostile length from costing more than that.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// `producer_id` of a batch from a producer that is neither idempotent nor transactional.
pub const NO_PRODUCER_ID: i64 = -1;
/// `producer_epoch` when there is no producer id.
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// `base_sequence` when there is no producer id, and of control batches.
pub const NO_SEQUENCE: i32 = -1;
/// `partition_leader_epoch` before the broker sets it (and until replication exists).
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;

/// Smallest `batch_length`: the header after the log overhead, with no records.
const BATCH_LENGTH_MIN: usize = BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES;

// The layout, checked field by field at compile time: each field starts where the previous
// one ends.
const _: () = assert!(BATCH_LENGTH_POS == BASE_OFFSET_POS + 8);
const _: () = assert!(PARTITION_LEADER_EPOCH_POS == BATCH_LENGTH_POS + 4);
const _: () = assert!(MAGIC_POS == PARTITION_LEADER_EPOCH_POS + 4);
const _: () = assert!(CRC_POS == MAGIC_POS + 1);
const _: () = assert!(ATTRIBUTES_POS == CRC_POS + 4);
const _: () = assert!(LAST_OFFSET_DELTA_POS == ATTRIBUTES_POS + 2);
const _: () = assert!(BASE_TIMESTAMP_POS == LAST_OFFSET_DELTA_POS + 4);
const _: () = assert!(MAX_TIMESTAMP_POS == BASE_TIMESTAMP_POS + 8);
const _: () = assert!(PRODUCER_ID_POS == MAX_TIMESTAMP_POS + 8);
const _: () = assert!(PRODUCER_EPOCH_POS == PRODUCER_ID_POS + 8);
const _: () = assert!(BASE_SEQUENCE_POS == PRODUCER_EPOCH_POS + 2);
const _: () = assert!(RECORD_COUNT_POS == BASE_SEQUENCE_POS + 4);
const _: () = assert!(BATCH_HEADER_BYTES == RECORD_COUNT_POS + 4);
const _: () = assert!(BATCH_HEADER_BYTES == 61);
const _: () = assert!(LOG_OVERHEAD_BYTES == PARTITION_LEADER_EPOCH_POS);
const _: () = assert!(BATCH_LENGTH_MIN == 49);
// batch_length is an i32 on the wire, so every allowed batch must be expressible.
const _: () = assert!(BATCH_BYTES_MAX - LOG_OVERHEAD_BYTES <= i32::MAX as usize);

/// The 61-byte fixed header of a record batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batch_length` field.
    pub batch_length: i32,
    /// Leader epoch stamped by the broker; -1 when unset.
    pub partition_leader_epoch: i32,
    /// Format version; 2.
    pub magic: i8,
    /// CRC-32C of the bytes from `attributes` to the end, as stored.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: Attributes,
    /// Offset of the last record minus `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp the record timestamp deltas are relative to.
    pub base_timestamp: i64,
    /// Largest record timestamp, or the log-append time.
    pub max_timestamp: i64,
    /// Idempotent or transactional producer id; -1 when none.
    pub producer_id: i64,
    /// Producer epoch; -1 when none.
    pub producer_epoch: i16,
    /// Sequence number of the first record; -1 when none.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Size of the whole batch: `LOG_OVERHEAD_BYTES + batch_length`. A negative
    /// `batch_length`, possible only in a header built by hand, counts as 0.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + usize::try_from(self.batch_length).unwrap_or(0)
    }

    /// Offset of the last record: `base_offset + last_offset_delta`, wrapping on overflow.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .wrapping_add(i64::from(self.last_offset_delta))
    }

    /// Offset after the batch: `last_offset() + 1`, wrapping on overflow.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().wrapping_add(1)
    }
}

/// Decodes the fixed header at the start of `bytes`.
///
/// Returns `Ok(None)` when fewer than [`BATCH_HEADER_BYTES`] bytes are present. Checks only
/// that `batch_length` is in range and the magic is 2: it does not need the rest of the batch
/// and does not check the CRC.
///
/// # Errors
///
/// [`BatchError::LengthOutOfRange`] if `batch_length` is below 49 or the batch would exceed
/// [`BATCH_BYTES_MAX`]; [`BatchError::BadMagic`] if the magic is not 2.
pub fn parse_header(bytes: &[u8]) -> Result<Option<BatchHeader>, BatchError> {
    let Some(header) = bytes.first_chunk::<BATCH_HEADER_BYTES>() else {
        return Ok(None);
    };
    let batch_length = be_i32(header, BATCH_LENGTH_POS);
    check_batch_length(batch_length)?;
    let magic = header[MAGIC_POS] as i8;
    if magic != MAGIC_V2 {
        return Err(BatchError::BadMagic { magic });
    }
    Ok(Some(BatchHeader {
        base_offset: be_i64(header, BASE_OFFSET_POS),
        batch_length,
        partition_leader_epoch: be_i32(header, PARTITION_LEADER_EPOCH_POS),
        magic,
        crc: be_u32(header, CRC_POS),
        attributes: Attributes(be_i16(header, ATTRIBUTES_POS)),
        last_offset_delta: be_i32(header, LAST_OFFSET_DELTA_POS),
        base_timestamp: be_i64(header, BASE_TIMESTAMP_POS),
        max_timestamp: be_i64(header, MAX_TIMESTAMP_POS),
        producer_id: be_i64(header, PRODUCER_ID_POS),
        producer_epoch: be_i16(header, PRODUCER_EPOCH_POS),
        base_sequence: be_i32(header, BASE_SEQUENCE_POS),
        record_count: be_i32(header, RECORD_COUNT_POS),
    }))
}

/// Checks that `bytes` is exactly one well-formed batch and returns its header.
///
/// Checks, in order: the header (as [`parse_header`]), that `bytes` is exactly
/// `total_bytes()` long, the CRC-32C, `record_count >= 0`, `0 <= last_offset_delta` with no
/// more records than offsets, and that the compression codec is defined. It reads only the
/// header and runs one CRC over the bytes: it never decodes records, so it is cheap enough
/// for the produce path.
///
/// # Errors
///
/// [`BatchError::Truncated`] if the header or batch is cut short,
/// [`BatchError::TrailingBytes`] if bytes follow the batch, [`BatchError::LengthOutOfRange`],
/// [`BatchError::BadMagic`], [`BatchError::BadCrc`], [`BatchError::NegativeCount`] for
/// `record_count`, [`BatchError::BadLastOffsetDelta`], or
/// [`BatchError::UnsupportedCompression`] for codecs 5 to 7.
pub fn validate(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(bytes)?.ok_or(BatchError::Truncated {
        field: "batch header",
        need_bytes: BATCH_HEADER_BYTES,
        have_bytes: bytes.len(),
    })?;
    let total_bytes = header.total_bytes();
    if bytes.len() < total_bytes {
        return Err(BatchError::Truncated {
            field: "batch",
            need_bytes: total_bytes,
            have_bytes: bytes.len(),
        });
    }
    if bytes.len() > total_bytes {
        return Err(BatchError::TrailingBytes {
            field: "batch",
            extra_bytes: bytes.len() - total_bytes,
        });
    }
    let actual = compute_crc(bytes);
    if actual != header.crc {
        return Err(BatchError::BadCrc {
            expected: header.crc,
            actual,
        });
    }
    check_counts(&header)?;
    header.attributes.compression()?;
    Ok(header)
}

/// CRC-32C (Castagnoli) over `bytes[ATTRIBUTES_POS..]`, the range the batch `crc` covers.
///
/// Meant for a whole batch; given fewer than [`ATTRIBUTES_POS`] bytes it returns the CRC of
/// nothing (0) rather than panicking. Computed by `crc-fast` (CRC-32C is its
/// `Crc32Iscsi`), which folds with carry-less multiplies where the CPU has them and is about
/// four times faster than the `crc32c` crate on 100 KB batches (docs/BENCHMARKS.md); tests
/// check it against the `crc32c` crate.
pub fn compute_crc(bytes: &[u8]) -> u32 {
    crc32c(bytes.get(ATTRIBUTES_POS..).unwrap_or(&[]))
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes);
    u32::try_from(crc).expect("a CRC-32 fits in 32 bits")
}

/// Writes `base_offset` into a batch. The field is outside the CRC, so the batch stays valid.
///
/// Does nothing if `batch` is too short to hold the field; debug builds assert that `batch`
/// holds at least a whole header.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    debug_assert!(batch.len() >= BATCH_HEADER_BYTES, "not a batch header");
    if let Some(field) = batch.get_mut(BASE_OFFSET_POS..BATCH_LENGTH_POS) {
        field.copy_from_slice(&base_offset.to_be_bytes());
    }
}

/// Writes `partition_leader_epoch` into a batch. The field is outside the CRC, so the batch
/// stays valid.
///
/// Does nothing if `batch` is too short to hold the field; debug builds assert that `batch`
/// holds at least a whole header.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    debug_assert!(batch.len() >= BATCH_HEADER_BYTES, "not a batch header");
    if let Some(field) = batch.get_mut(PARTITION_LEADER_EPOCH_POS..MAGIC_POS) {
        field.copy_from_slice(&epoch.to_be_bytes());
    }
}

/// A batch with `header`'s fields and new records: `records` is the uncompressed records
/// section (encoded records, such as [`Records::next_with_bytes`] yields) holding
/// `record_count` records, compressed here with the header's codec (snappy in the framing of
/// `original_records`, the section it replaces). Base offset, last offset delta,
/// timestamps, producer fields and attributes stay as they were, so the batch keeps its place
/// in the log and its producer's sequence range (Kafka's cleaner does the same). An emptied
/// batch (`record_count` 0) is stored uncompressed.
///
/// # Errors
/// An undefined codec in the header, a compressor failure, or a batch that would exceed
/// [`BATCH_BYTES_MAX`].
pub fn rewrite_records(
    header: &BatchHeader,
    records: &[u8],
    record_count: i32,
    original_records: &[u8],
) -> Result<Bytes, BatchError> {
    let mut codec = header.attributes.compression()?;
    if record_count == 0 {
        codec = Compression::None;
    }
    let section = compression::compress(codec, records, original_records)?;
    let total = BATCH_HEADER_BYTES + section.len();
    if total > BATCH_BYTES_MAX {
        return Err(BatchError::LengthOutOfRange {
            batch_length: i64::try_from(total - LOG_OVERHEAD_BYTES).unwrap_or(i64::MAX),
            bytes_max: BATCH_BYTES_MAX,
        });
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header.base_offset.to_be_bytes());
    out.extend_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
    out.extend_from_slice(&header.partition_leader_epoch.to_be_bytes());
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&header.attributes.with_compression(codec).0.to_be_bytes());
    out.extend_from_slice(&header.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&header.base_timestamp.to_be_bytes());
    out.extend_from_slice(&header.max_timestamp.to_be_bytes());
    out.extend_from_slice(&header.producer_id.to_be_bytes());
    out.extend_from_slice(&header.producer_epoch.to_be_bytes());
    out.extend_from_slice(&header.base_sequence.to_be_bytes());
    out.extend_from_slice(&record_count.to_be_bytes());
    debug_assert_eq!(out.len(), BATCH_HEADER_BYTES);
    out.extend_from_slice(&section);
    let crc = compute_crc(&out);
    out[CRC_POS..ATTRIBUTES_POS].copy_from_slice(&crc.to_be_bytes());
    Ok(Bytes::from(out))
}

/// One validated record batch, holding its bytes without copying them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
    header: BatchHeader,
}

impl Batch {
    /// Validates `bytes` as exactly one batch (see [`validate`]) and keeps them.
    ///
    /// # Errors
    ///
    /// Any error of [`validate`].
    pub fn decode(bytes: Bytes) -> Result<Batch, BatchError> {
        let header = validate(&bytes)?;
        Ok(Batch { bytes, header })
    }

    /// The decoded header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes, exactly as received.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The batch's bytes, exactly as received.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Iterates over the records; key and value bytes are slices of this batch.
    ///
    /// For a compressed batch the iterator yields one
    /// [`BatchError::UnsupportedCompression`], since this crate does not decompress.
    pub fn records(&self) -> Records {
        let attributes = self.header.attributes;
        let refusal = match attributes.compression() {
            Ok(Compression::None) => None,
            _ => Some(BatchError::UnsupportedCompression {
                codec: attributes.compression_code(),
            }),
        };
        let log_append_time_ms = match attributes.timestamp_type() {
            TimestampType::CreateTime => None,
            TimestampType::LogAppendTime => Some(self.header.max_timestamp),
        };
        let context = RecordsContext {
            record_count: self.header.record_count,
            base_offset: self.header.base_offset,
            base_timestamp: self.header.base_timestamp,
            log_append_time_ms,
            refusal,
        };
        Records::new(self.bytes.slice(BATCH_HEADER_BYTES..), context)
    }

    /// Iterates over the records, decompressing a compressed batch's records first (into a
    /// buffer the keys and values then slice). Readers use this; the broker's produce and
    /// fetch paths never need records.
    ///
    /// # Errors
    /// [`BatchError::Decompression`] when the records do not decompress, and
    /// [`BatchError::UnsupportedCompression`] for an undefined codec.
    pub fn records_decompressed(&self) -> Result<Records, BatchError> {
        self.records_decompressed_within(compression::DECOMPRESSED_BYTES_MAX)
    }

    /// Like [`Batch::records_decompressed`], refusing a compressed batch whose records
    /// decompress to more than `bytes_max` (an uncompressed batch is never copied, so it
    /// is never refused).
    ///
    /// # Errors
    /// As [`Batch::records_decompressed`]; [`BatchError::Decompression`] past `bytes_max`.
    pub fn records_decompressed_within(&self, bytes_max: usize) -> Result<Records, BatchError> {
        let attributes = self.header.attributes;
        let codec = attributes.compression()?;
        if codec == Compression::None {
            return Ok(self.records());
        }
        let decompressed =
            compression::decompress_within(codec, &self.bytes[BATCH_HEADER_BYTES..], bytes_max)?;
        let log_append_time_ms = match attributes.timestamp_type() {
            TimestampType::CreateTime => None,
            TimestampType::LogAppendTime => Some(self.header.max_timestamp),
        };
        let context = RecordsContext {
            record_count: self.header.record_count,
            base_offset: self.header.base_offset,
            base_timestamp: self.header.base_timestamp,
            log_append_time_ms,
            refusal: None,
        };
        Ok(Records::new(Bytes::from(decompressed), context))
    }

    /// The marker kind of a control batch, or `None` for a data batch.
    ///
    /// # Errors
    ///
    /// As [`Batch::control_marker`].
    pub fn control_kind(&self) -> Result<Option<ControlKind>, BatchError> {
        Ok(self.control_marker()?.map(|marker| marker.kind))
    }

    /// The marker of a control batch, or `None` for a data batch.
    ///
    /// # Errors
    ///
    /// [`BatchError::BadControlRecord`] if the batch does not hold exactly one record or the
    /// record is not a marker, [`BatchError::UnknownControlType`] for a type other than ABORT
    /// or COMMIT, or any error from decoding the record.
    pub fn control_marker(&self) -> Result<Option<ControlMarker>, BatchError> {
        if !self.header.attributes.is_control() {
            return Ok(None);
        }
        if self.header.record_count != 1 {
            return Err(BatchError::BadControlRecord {
                reason: "control batch must hold exactly one record",
            });
        }
        let mut records = self.records();
        let record = records.next().ok_or(BatchError::BadControlRecord {
            reason: "control batch holds no record",
        })??;
        // Drain the iterator so trailing bytes after the one record are reported.
        if let Some(Err(error)) = records.next() {
            return Err(error);
        }
        control::decode_marker(&record).map(Some)
    }
}

/// Splits a concatenation of whole batches, such as a log slice or a fetch response, into
/// [`Batch`]es without copying.
///
/// Each batch is validated as [`Batch::decode`] does. The iterator yields the batches in
/// order; on the first malformed or cut-short batch it yields that error and then `None`
/// forever.
pub fn batches(bytes: Bytes) -> BatchIter {
    BatchIter {
        remaining: bytes,
        finished: false,
    }
}

/// Iterator returned by [`batches`].
#[derive(Debug, Clone)]
pub struct BatchIter {
    remaining: Bytes,
    finished: bool,
}

impl BatchIter {
    fn next_result(&mut self) -> Option<Result<Batch, BatchError>> {
        if self.remaining.is_empty() {
            return None;
        }
        let header = match parse_header(&self.remaining) {
            Ok(Some(header)) => header,
            Ok(None) => {
                return Some(Err(BatchError::Truncated {
                    field: "batch header",
                    need_bytes: BATCH_HEADER_BYTES,
                    have_bytes: self.remaining.len(),
                }))
            }
            Err(error) => return Some(Err(error)),
        };
        let total_bytes = header.total_bytes();
        if self.remaining.len() < total_bytes {
            return Some(Err(BatchError::Truncated {
                field: "batch",
                need_bytes: total_bytes,
                have_bytes: self.remaining.len(),
            }));
        }
        let batch_bytes = self.remaining.split_to(total_bytes);
        Some(Batch::decode(batch_bytes))
    }
}

impl Iterator for BatchIter {
    type Item = Result<Batch, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let item = self.next_result();
        if !matches!(item, Some(Ok(_))) {
            self.finished = true;
        }
        item
    }
}

impl FusedIterator for BatchIter {}

fn check_batch_length(batch_length: i32) -> Result<(), BatchError> {
    let allowed = BATCH_LENGTH_MIN..=BATCH_BYTES_MAX - LOG_OVERHEAD_BYTES;
    let in_range = usize::try_from(batch_length).is_ok_and(|length| allowed.contains(&length));
    if in_range {
        Ok(())
    } else {
        Err(BatchError::LengthOutOfRange {
            batch_length: i64::from(batch_length),
            bytes_max: BATCH_BYTES_MAX,
        })
    }
}

fn check_counts(header: &BatchHeader) -> Result<(), BatchError> {
    if header.record_count < 0 {
        return Err(BatchError::NegativeCount {
            field: "record count",
            count: i64::from(header.record_count),
        });
    }
    // Compaction may leave fewer records than offsets, never more.
    let offset_count = i64::from(header.last_offset_delta) + 1;
    if header.last_offset_delta < 0 || i64::from(header.record_count) > offset_count {
        return Err(BatchError::BadLastOffsetDelta {
            last_offset_delta: header.last_offset_delta,
            record_count: header.record_count,
        });
    }
    Ok(())
}

fn be_i16(header: &[u8; BATCH_HEADER_BYTES], position: usize) -> i16 {
    i16::from_be_bytes([header[position], header[position + 1]])
}

fn be_u32(header: &[u8; BATCH_HEADER_BYTES], position: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&header[position..position + 4]);
    u32::from_be_bytes(raw)
}

fn be_i32(header: &[u8; BATCH_HEADER_BYTES], position: usize) -> i32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&header[position..position + 4]);
    i32::from_be_bytes(raw)
}

fn be_i64(header: &[u8; BATCH_HEADER_BYTES], position: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&header[position..position + 8]);
    i64::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::varint::encode_varint;

    /// A valid batch with one small record.
    fn one_record_batch() -> Vec<u8> {
        let mut builder = BatchBuilder::new(1_000).producer(7, 1, 0);
        builder
            .push(&NewRecord {
                timestamp_ms: 1_005,
                key: Some(Bytes::from_static(b"key")),
                value: Some(Bytes::from_static(b"value")),
                headers: Vec::new(),
            })
            .expect("fits");
        builder.build().to_vec()
    }

    fn put(bytes: &mut [u8], position: usize, field: &[u8]) {
        bytes[position..position + field.len()].copy_from_slice(field);
    }

    /// Rewrites the CRC after a test has changed a covered field on purpose.
    fn refresh_crc(bytes: &mut [u8]) {
        let crc = compute_crc(bytes);
        put(bytes, CRC_POS, &crc.to_be_bytes());
    }

    /// A batch with a correct length and CRC around `records_region`, declaring
    /// `record_count` records.
    fn framed(record_count: i32, records_region: &[u8]) -> Batch {
        let mut bytes = BatchBuilder::new(0).build().to_vec();
        bytes.extend_from_slice(records_region);
        let batch_length = i32::try_from(bytes.len() - LOG_OVERHEAD_BYTES).expect("small");
        put(&mut bytes, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
        let last_offset_delta = (record_count - 1).max(0);
        put(
            &mut bytes,
            LAST_OFFSET_DELTA_POS,
            &last_offset_delta.to_be_bytes(),
        );
        put(&mut bytes, RECORD_COUNT_POS, &record_count.to_be_bytes());
        refresh_crc(&mut bytes);
        Batch::decode(Bytes::from(bytes)).expect("framed batches are valid")
    }

    /// The first error the records of `framed(record_count, region)` give.
    fn first_record_error(record_count: i32, records_region: &[u8]) -> BatchError {
        let batch = framed(record_count, records_region);
        let mut records = batch.records();
        let error = records
            .find_map(Result::err)
            .expect("the records are malformed");
        assert!(records.next().is_none(), "iterator ends after an error");
        error
    }

    /// Encodes one record body (everything after its length) with the given fields.
    fn record_body(key_length: i32, header_count: i32, tail: &[u8]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_i8(0);
        encode_varint(0, &mut body); // timestamp delta, same encoding as the varlong
        encode_varint(0, &mut body);
        encode_varint(key_length, &mut body);
        encode_varint(-1, &mut body);
        encode_varint(header_count, &mut body);
        body.put_slice(tail);
        body.to_vec()
    }

    fn with_length(body: &[u8]) -> Vec<u8> {
        let mut record = BytesMut::new();
        encode_varint(i32::try_from(body.len()).expect("small"), &mut record);
        record.put_slice(body);
        record.to_vec()
    }

    #[test]
    fn parse_header_needs_61_bytes() {
        let bytes = one_record_batch();
        assert_eq!(parse_header(&bytes[..BATCH_HEADER_BYTES - 1]), Ok(None));
        assert_eq!(parse_header(&[]), Ok(None));
        let header = parse_header(&bytes[..BATCH_HEADER_BYTES])
            .expect("valid header")
            .expect("61 bytes are enough");
        assert_eq!(header.total_bytes(), bytes.len());
        assert_eq!(header.producer_id, 7);
    }

    #[test]
    fn parse_header_rejects_out_of_range_lengths() {
        let mut bytes = one_record_batch();
        for batch_length in [-1, 0, 48, 16 * 1024 * 1024 - 11, i32::MAX, i32::MIN] {
            put(&mut bytes, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
            assert_eq!(
                parse_header(&bytes),
                Err(BatchError::LengthOutOfRange {
                    batch_length: i64::from(batch_length),
                    bytes_max: BATCH_BYTES_MAX
                }),
                "batch_length {batch_length}"
            );
        }
        for batch_length in [49i32, 16 * 1024 * 1024 - 12] {
            put(&mut bytes, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
            assert!(parse_header(&bytes).is_ok(), "batch_length {batch_length}");
        }
    }

    #[test]
    fn parse_header_rejects_other_magic() {
        let mut bytes = one_record_batch();
        bytes[MAGIC_POS] = 1;
        assert_eq!(parse_header(&bytes), Err(BatchError::BadMagic { magic: 1 }));
    }

    #[test]
    fn validate_rejects_short_and_long_input() {
        let bytes = one_record_batch();
        let total_bytes = bytes.len();
        assert_eq!(
            validate(&bytes[..total_bytes - 1]),
            Err(BatchError::Truncated {
                field: "batch",
                need_bytes: total_bytes,
                have_bytes: total_bytes - 1
            })
        );
        assert_eq!(
            validate(&bytes[..10]),
            Err(BatchError::Truncated {
                field: "batch header",
                need_bytes: BATCH_HEADER_BYTES,
                have_bytes: 10
            })
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            validate(&longer),
            Err(BatchError::TrailingBytes {
                field: "batch",
                extra_bytes: 1
            })
        );
    }

    #[test]
    fn validate_reports_stored_and_computed_crc() {
        let mut bytes = one_record_batch();
        let stored = compute_crc(&bytes);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let computed = compute_crc(&bytes);
        assert_eq!(
            validate(&bytes),
            Err(BatchError::BadCrc {
                expected: stored,
                actual: computed
            })
        );
    }

    #[test]
    fn validate_rejects_bad_counts() {
        let cases = [
            // (record_count, last_offset_delta, expected error)
            (
                -1,
                0,
                BatchError::NegativeCount {
                    field: "record count",
                    count: -1,
                },
            ),
            (
                1,
                -1,
                BatchError::BadLastOffsetDelta {
                    last_offset_delta: -1,
                    record_count: 1,
                },
            ),
            (
                3,
                1,
                BatchError::BadLastOffsetDelta {
                    last_offset_delta: 1,
                    record_count: 3,
                },
            ),
        ];
        for (record_count, last_offset_delta, expected) in cases {
            let mut bytes = one_record_batch();
            put(
                &mut bytes,
                RECORD_COUNT_POS,
                &i32::to_be_bytes(record_count),
            );
            put(
                &mut bytes,
                LAST_OFFSET_DELTA_POS,
                &i32::to_be_bytes(last_offset_delta),
            );
            refresh_crc(&mut bytes);
            assert_eq!(validate(&bytes), Err(expected));
        }
    }

    #[test]
    fn validate_accepts_fewer_records_than_offsets() {
        // A batch whose records were partly removed (as compaction does) keeps its offsets.
        let mut bytes = one_record_batch();
        put(&mut bytes, LAST_OFFSET_DELTA_POS, &i32::to_be_bytes(4));
        refresh_crc(&mut bytes);
        let header = validate(&bytes).expect("one record over five offsets is valid");
        assert_eq!(header.next_offset(), 5);
    }

    #[test]
    fn compressed_batches_validate_but_their_records_are_refused() {
        let mut bytes = one_record_batch();
        let gzip = Attributes::NONE.with_compression(Compression::Gzip);
        put(&mut bytes, ATTRIBUTES_POS, &gzip.0.to_be_bytes());
        refresh_crc(&mut bytes);
        let batch = Batch::decode(Bytes::from(bytes)).expect("gzip is a defined codec");
        let records: Vec<_> = batch.records().collect();
        assert_eq!(
            records,
            vec![Err(BatchError::UnsupportedCompression { codec: 1 })]
        );
    }

    #[test]
    fn undefined_codec_fails_validation() {
        let mut bytes = one_record_batch();
        put(&mut bytes, ATTRIBUTES_POS, &5i16.to_be_bytes());
        refresh_crc(&mut bytes);
        assert_eq!(
            validate(&bytes),
            Err(BatchError::UnsupportedCompression { codec: 5 })
        );
    }

    #[test]
    fn patching_offset_and_epoch_keeps_crc() {
        let mut bytes = one_record_batch();
        set_base_offset(&mut bytes, 1_000_000);
        set_partition_leader_epoch(&mut bytes, 12);
        let header = validate(&bytes).expect("still valid");
        assert_eq!(header.base_offset, 1_000_000);
        assert_eq!(header.partition_leader_epoch, 12);
        assert_eq!(header.last_offset(), 1_000_000);
        assert_eq!(header.next_offset(), 1_000_001);
    }

    #[test]
    fn compute_crc_of_short_input_does_not_panic() {
        assert_eq!(compute_crc(&[]), 0);
        assert_eq!(compute_crc(&[1; ATTRIBUTES_POS]), 0);
    }

    #[test]
    fn header_offsets_wrap_instead_of_panicking() {
        let mut header = parse_header(&one_record_batch())
            .expect("valid")
            .expect("whole");
        header.base_offset = i64::MAX;
        assert_eq!(header.last_offset(), i64::MAX);
        assert_eq!(header.next_offset(), i64::MIN);
        header.batch_length = -5;
        assert_eq!(header.total_bytes(), LOG_OVERHEAD_BYTES);
    }

    #[test]
    fn batches_stops_after_the_first_bad_batch() {
        // A torn copy of a batch in the middle: its header promises a whole batch, so the
        // splitter takes that many bytes, which then fail the CRC.
        let good = one_record_batch();
        let mut joined = good.clone();
        joined.extend_from_slice(&good[..BATCH_HEADER_BYTES + 2]);
        joined.extend_from_slice(&good);
        let mut split = batches(Bytes::from(joined));
        assert!(matches!(split.next(), Some(Ok(_))));
        assert!(matches!(split.next(), Some(Err(BatchError::BadCrc { .. }))));
        assert!(split.next().is_none());
        assert!(split.next().is_none());
    }

    #[test]
    fn batches_reports_a_cut_short_tail() {
        let good = one_record_batch();
        let mut joined = good.clone();
        joined.extend_from_slice(&good[..20]);
        let results: Vec<_> = batches(Bytes::from(joined)).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert_eq!(
            results[1],
            Err(BatchError::Truncated {
                field: "batch header",
                need_bytes: BATCH_HEADER_BYTES,
                have_bytes: 20
            })
        );
    }

    #[test]
    fn records_report_a_length_beyond_the_batch() {
        let region = [0x40, 0x00, 0x00]; // length 32, three bytes present
        assert_eq!(
            first_record_error(1, &region),
            BatchError::Truncated {
                field: "record",
                need_bytes: 32,
                have_bytes: 2
            }
        );
    }

    #[test]
    fn records_report_bytes_left_inside_a_record() {
        let mut body = record_body(-1, 0, &[]);
        body.push(0xee);
        assert_eq!(
            first_record_error(1, &with_length(&body)),
            BatchError::TrailingBytes {
                field: "record",
                extra_bytes: 1
            }
        );
    }

    #[test]
    fn records_report_fewer_records_than_declared() {
        let record = with_length(&record_body(-1, 0, &[]));
        let batch = framed(2, &record);
        let results: Vec<_> = batch.records().collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert_eq!(
            results[1],
            Err(BatchError::RecordCountMismatch {
                declared: 2,
                actual: 1
            })
        );
    }

    #[test]
    fn records_report_bytes_after_the_last_record() {
        let mut region = with_length(&record_body(-1, 0, &[]));
        region.extend_from_slice(&[0x00, 0x00]);
        assert_eq!(
            first_record_error(1, &region),
            BatchError::TrailingBytes {
                field: "records",
                extra_bytes: 2
            }
        );
    }

    #[test]
    fn records_reject_negative_lengths() {
        let region = with_length(&record_body(-2, 0, &[]));
        assert_eq!(
            first_record_error(1, &region),
            BatchError::NegativeCount {
                field: "record key",
                count: -2
            }
        );
        let region = with_length(&record_body(-1, -1, &[]));
        assert_eq!(
            first_record_error(1, &region),
            BatchError::NegativeCount {
                field: "record header count",
                count: -1
            }
        );
        // A header key may not be null.
        let region = with_length(&record_body(-1, 1, &[0x01, 0x01]));
        assert_eq!(
            first_record_error(1, &region),
            BatchError::NegativeCount {
                field: "header key length",
                count: -1
            }
        );
        let region = [0x03]; // record length -2
        assert_eq!(
            first_record_error(1, &region),
            BatchError::NegativeCount {
                field: "record length",
                count: -2
            }
        );
    }

    #[test]
    fn records_reject_invalid_utf8_header_keys() {
        let region = with_length(&record_body(-1, 1, &[0x02, 0xff, 0x01]));
        assert_eq!(
            first_record_error(1, &region),
            BatchError::InvalidUtf8 {
                field: "header key"
            }
        );
    }

    #[test]
    fn huge_header_count_fails_on_bytes_not_allocation() {
        // Goal: a header count of i32::MAX must not reserve memory for i32::MAX headers.
        // Method: declare it with one header's worth of bytes; decoding must fail on the
        // second header as truncated (an allocation of that size would abort the test).
        let region = with_length(&record_body(-1, i32::MAX, &[0x00, 0x01]));
        assert_eq!(
            first_record_error(1, &region),
            BatchError::Truncated {
                field: "header key length",
                need_bytes: 1,
                have_bytes: 0
            }
        );
    }

    #[test]
    fn records_reject_overlong_varints() {
        let mut body = vec![0x00];
        body.extend_from_slice(&[0xff; 11]); // timestamp delta longer than ten bytes
        assert_eq!(
            first_record_error(1, &with_length(&body)),
            BatchError::VarintOverflow {
                field: "record timestamp delta"
            }
        );
        let region = [0xff, 0xff, 0xff, 0xff, 0xff, 0x01]; // record length longer than five
        assert_eq!(
            first_record_error(1, &region),
            BatchError::VarintOverflow {
                field: "record length"
            }
        );
    }

    #[test]
    fn log_append_time_replaces_record_timestamps_with_max_timestamp() {
        let mut builder = BatchBuilder::new(100).attributes(Attributes::NONE.log_append_time());
        for timestamp_ms in [100, 250, 180] {
            builder
                .push(&NewRecord {
                    timestamp_ms,
                    ..NewRecord::default()
                })
                .expect("fits");
        }
        let batch = Batch::decode(builder.build()).expect("valid");
        let timestamps: Vec<i64> = batch
            .records()
            .map(|record| record.expect("valid").timestamp_ms)
            .collect();
        assert_eq!(timestamps, vec![250, 250, 250]);
    }

    #[test]
    fn control_batch_with_two_records_is_refused() {
        let mut builder =
            BatchBuilder::new(0).attributes(Attributes::NONE.transactional().control());
        for _ in 0..2 {
            builder.push(&NewRecord::default()).expect("fits");
        }
        let batch = Batch::decode(builder.build()).expect("valid batch");
        assert_eq!(
            batch.control_kind(),
            Err(BatchError::BadControlRecord {
                reason: "control batch must hold exactly one record"
            })
        );
    }

    /// Rewrites a three-record batch keeping `keep`, through `codec` (snappy in the framing
    /// `like` has), and returns the rewritten batch.
    fn rewritten(codec: Compression, keep: &[usize], like: &[u8]) -> Batch {
        let mut builder = BatchBuilder::new(1_000).producer(7, 1, 40);
        for index in 0..3u8 {
            builder
                .push(&NewRecord {
                    timestamp_ms: 1_000 + i64::from(index),
                    key: Some(Bytes::from(vec![b'k', index])),
                    value: Some(Bytes::from(vec![index; 50])),
                    headers: Vec::new(),
                })
                .expect("push");
        }
        let original = Batch::decode(builder.build()).expect("batch");
        let mut records = original.records();
        let mut section = Vec::new();
        let mut count = 0;
        let mut index = 0;
        while let Some(next) = records.next_with_bytes() {
            let (_, bytes) = next.expect("record");
            if keep.contains(&index) {
                section.extend_from_slice(&bytes);
                count += 1;
            }
            index += 1;
        }
        let mut header = *original.header();
        header.attributes = header.attributes.with_compression(codec);
        Batch::decode(rewrite_records(&header, &section, count, like).expect("rewrite"))
            .expect("a valid batch")
    }

    #[test]
    fn rewritten_batches_keep_their_offsets_codec_and_producer_fields() {
        let xerial = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
        for (codec, like) in [
            (Compression::None, &b""[..]),
            (Compression::Gzip, b""),
            (Compression::Snappy, b""),
            (Compression::Snappy, xerial),
            (Compression::Lz4, b""),
            (Compression::Zstd, b""),
        ] {
            let batch = rewritten(codec, &[0, 2], like);
            let header = batch.header();
            assert_eq!(header.attributes.compression().expect("codec"), codec);
            assert_eq!((header.base_offset, header.last_offset_delta), (0, 2));
            assert_eq!((header.producer_id, header.base_sequence), (7, 40));
            assert_eq!(header.record_count, 2);
            if !like.is_empty() {
                assert!(batch.as_bytes()[BATCH_HEADER_BYTES..].starts_with(&like[..8]));
            }
            let kept: Vec<(i64, Option<Bytes>)> = batch
                .records_decompressed()
                .expect("decompress")
                .map(|record| {
                    let record = record.expect("record");
                    (record.offset, record.key)
                })
                .collect();
            assert_eq!(
                kept,
                vec![
                    (0, Some(Bytes::from_static(b"k\x00"))),
                    (2, Some(Bytes::from_static(b"k\x02")))
                ],
                "{codec:?}"
            );
        }
        let emptied = rewritten(Compression::Zstd, &[], b"");
        assert_eq!(emptied.header().record_count, 0);
        assert_eq!(emptied.header().last_offset_delta, 2);
        assert_eq!(
            emptied.header().attributes.compression().expect("codec"),
            Compression::None
        );
        assert_eq!(emptied.records().count(), 0);
    }
}
