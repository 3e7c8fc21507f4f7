//! The one error type of the record batch layer.
//!
//! Every way a batch's bytes can be wrong has its own variant carrying the numbers that
//! explain it, so the broker can map it to a wire error code and an operator can read the
//! message without a debugger. Building this type never allocates.

use std::fmt;

/// A record batch whose bytes break the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The input ends before `field` does.
    Truncated {
        /// The structure or field that was cut short.
        field: &'static str,
        /// Bytes the field needs.
        need_bytes: usize,
        /// Bytes that were left.
        have_bytes: usize,
    },
    /// `batch_length` is below the fixed header or the batch would exceed
    /// [`BATCH_BYTES_MAX`](crate::batch::BATCH_BYTES_MAX).
    LengthOutOfRange {
        /// The declared (or, when building, the would-be) `batch_length`.
        batch_length: i64,
        /// The largest whole batch allowed, in bytes.
        bytes_max: usize,
    },
    /// The magic byte is not 2.
    BadMagic {
        /// The magic byte found.
        magic: i8,
    },
    /// The stored CRC-32C does not match the bytes it covers.
    BadCrc {
        /// The CRC stored in the header.
        expected: u32,
        /// The CRC computed over the batch's bytes.
        actual: u32,
    },
    /// A count or length that must not be negative is.
    NegativeCount {
        /// The count or length field.
        field: &'static str,
        /// Its value.
        count: i64,
    },
    /// A varint in `field` is longer than its type allows.
    VarintOverflow {
        /// The field holding the varint.
        field: &'static str,
    },
    /// The batch uses a compression codec this crate cannot read, or an unknown codec.
    UnsupportedCompression {
        /// The codec number from the attributes (bits 0-2).
        codec: u8,
    },
    /// A compressed records section does not decompress.
    Decompression {
        /// The codec number from the attributes.
        codec: u8,
        /// What was wrong.
        reason: &'static str,
    },
    /// The header's `record_count` differs from the records present.
    RecordCountMismatch {
        /// `record_count` from the header.
        declared: i32,
        /// Records actually found before the bytes ran out.
        actual: i32,
    },
    /// Bytes remain after `field` where none may.
    TrailingBytes {
        /// The structure that should have ended.
        field: &'static str,
        /// How many bytes follow it.
        extra_bytes: usize,
    },
    /// `last_offset_delta` is negative or leaves fewer offsets than records.
    BadLastOffsetDelta {
        /// `last_offset_delta` from the header.
        last_offset_delta: i32,
        /// `record_count` from the header.
        record_count: i32,
    },
    /// A header key is not UTF-8.
    InvalidUtf8 {
        /// The field holding the text.
        field: &'static str,
    },
    /// A control batch's record does not have the control layout.
    BadControlRecord {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A control record names a type other than ABORT (0) or COMMIT (1).
    UnknownControlType {
        /// The type found in the record key.
        type_id: i16,
    },
}

impl fmt::Display for BatchError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated {
                field,
                need_bytes,
                have_bytes,
            } => write!(
                formatter,
                "{field} truncated: needs {need_bytes} bytes, {have_bytes} left"
            ),
            BatchError::LengthOutOfRange {
                batch_length,
                bytes_max,
            } => write!(
                formatter,
                "batch length {batch_length} out of range: batch must hold its 61-byte header \
                 and fit in {bytes_max} bytes"
            ),
            BatchError::BadMagic { magic } => {
                write!(formatter, "batch magic {magic} unsupported, expected 2")
            }
            BatchError::BadCrc { expected, actual } => write!(
                formatter,
                "batch crc mismatch: header has {expected:#010x}, bytes give {actual:#010x}"
            ),
            BatchError::NegativeCount { field, count } => {
                write!(formatter, "{field} is negative: {count}")
            }
            BatchError::VarintOverflow { field } => {
                write!(formatter, "{field} varint overflows its type")
            }
            BatchError::UnsupportedCompression { codec } => {
                write!(formatter, "compression codec {codec} unsupported")
            }
            BatchError::Decompression { codec, reason } => {
                write!(formatter, "records compressed with codec {codec}: {reason}")
            }
            BatchError::RecordCountMismatch { declared, actual } => write!(
                formatter,
                "batch declares {declared} records but holds {actual}"
            ),
            BatchError::TrailingBytes { field, extra_bytes } => {
                write!(formatter, "{extra_bytes} trailing bytes after {field}")
            }
            BatchError::BadLastOffsetDelta {
                last_offset_delta,
                record_count,
            } => write!(
                formatter,
                "last offset delta {last_offset_delta} does not fit record count {record_count}"
            ),
            BatchError::InvalidUtf8 { field } => write!(formatter, "{field} is not utf-8"),
            BatchError::BadControlRecord { reason } => {
                write!(formatter, "bad control record: {reason}")
            }
            BatchError::UnknownControlType { type_id } => {
                write!(formatter, "control record type {type_id} unknown")
            }
        }
    }
}

impl std::error::Error for BatchError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_with_numbers() {
        let cases = [
            (
                BatchError::Truncated {
                    field: "batch",
                    need_bytes: 90,
                    have_bytes: 70,
                },
                "batch truncated: needs 90 bytes, 70 left",
            ),
            (
                BatchError::BadCrc {
                    expected: 0xdead_beef,
                    actual: 1,
                },
                "batch crc mismatch: header has 0xdeadbeef, bytes give 0x00000001",
            ),
            (
                BatchError::RecordCountMismatch {
                    declared: 3,
                    actual: 2,
                },
                "batch declares 3 records but holds 2",
            ),
            (
                BatchError::LengthOutOfRange {
                    batch_length: -4,
                    bytes_max: 16_777_216,
                },
                "batch length -4 out of range: batch must hold its 61-byte header and fit in \
                 16777216 bytes",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }
}
