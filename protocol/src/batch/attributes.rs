//! The batch `attributes` field (i16 at offset 21) and the enums it packs.
//!
//! Bits 0-2 hold the compression codec, bit 3 the timestamp type, bit 4 the transactional
//! flag and bit 5 the control flag; other bits are kept as they are and never interpreted.
//! This module only reads and sets bits: it never compresses or decompresses anything.

use crate::batch::BatchError;

/// The batch `attributes` field, kept as its raw bits so unknown bits survive a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes(pub i16);

impl Attributes {
    /// No compression, create-time timestamps, not transactional, not control.
    pub const NONE: Attributes = Attributes(0);
    /// Bits 0-2: the compression codec number.
    pub const COMPRESSION_CODEC_MASK: i16 = 0b0000_0111;
    /// Bit 3: set when record timestamps are the broker's log-append time.
    pub const TIMESTAMP_TYPE_BIT: i16 = 0b0000_1000;
    /// Bit 4: set when the batch belongs to a transaction.
    pub const TRANSACTIONAL_BIT: i16 = 0b0001_0000;
    /// Bit 5: set when the batch holds a control record (a transaction marker).
    pub const CONTROL_BIT: i16 = 0b0010_0000;

    /// The raw codec number, bits 0-2 (0 to 7; only 0 to 4 are defined).
    pub const fn compression_code(self) -> u8 {
        (self.0 & Self::COMPRESSION_CODEC_MASK) as u8
    }

    /// The compression codec named by bits 0-2.
    ///
    /// # Errors
    ///
    /// [`BatchError::UnsupportedCompression`] for the undefined codec numbers 5 to 7.
    pub fn compression(self) -> Result<Compression, BatchError> {
        let codec = self.compression_code();
        Compression::from_code(codec).ok_or(BatchError::UnsupportedCompression { codec })
    }

    /// Whether record timestamps were set by the producer or by the broker on append.
    pub const fn timestamp_type(self) -> TimestampType {
        if self.0 & Self::TIMESTAMP_TYPE_BIT == 0 {
            TimestampType::CreateTime
        } else {
            TimestampType::LogAppendTime
        }
    }

    /// Whether the batch belongs to a transaction.
    pub const fn is_transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL_BIT != 0
    }

    /// Whether the batch holds a control record.
    pub const fn is_control(self) -> bool {
        self.0 & Self::CONTROL_BIT != 0
    }

    /// These attributes with the transactional bit set.
    #[must_use]
    pub const fn transactional(self) -> Self {
        Attributes(self.0 | Self::TRANSACTIONAL_BIT)
    }

    /// These attributes with the control bit set.
    #[must_use]
    pub const fn control(self) -> Self {
        Attributes(self.0 | Self::CONTROL_BIT)
    }

    /// These attributes with the timestamp type set to log-append time.
    #[must_use]
    pub const fn log_append_time(self) -> Self {
        Attributes(self.0 | Self::TIMESTAMP_TYPE_BIT)
    }

    /// These attributes with the compression bits replaced by `compression`.
    #[must_use]
    pub const fn with_compression(self, compression: Compression) -> Self {
        Attributes((self.0 & !Self::COMPRESSION_CODEC_MASK) | compression.code() as i16)
    }
}

/// A record batch compression codec, as numbered in attributes bits 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// 0: records are stored as they are.
    None,
    /// 1: gzip.
    Gzip,
    /// 2: snappy.
    Snappy,
    /// 3: lz4.
    Lz4,
    /// 4: zstd.
    Zstd,
}

impl Compression {
    /// The codec number stored in attributes bits 0-2.
    pub const fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec with number `code`, or `None` for an undefined number.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Where record timestamps come from (attributes bit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// 0: each record carries the producer's timestamp.
    CreateTime,
    /// 1: the broker's append time, stored as the batch's `max_timestamp`, applies to every
    /// record.
    LogAppendTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_has_no_bits_set() {
        let attributes = Attributes::NONE;
        assert_eq!(attributes.compression(), Ok(Compression::None));
        assert_eq!(attributes.timestamp_type(), TimestampType::CreateTime);
        assert!(!attributes.is_transactional());
        assert!(!attributes.is_control());
    }

    #[test]
    fn builders_set_the_documented_bits() {
        assert_eq!(Attributes::NONE.log_append_time().0, 0x08);
        assert_eq!(Attributes::NONE.transactional().0, 0x10);
        assert_eq!(Attributes::NONE.control().0, 0x20);
        assert_eq!(Attributes::NONE.with_compression(Compression::Zstd).0, 0x04);
        let marker = Attributes::NONE.transactional().control();
        assert!(marker.is_transactional());
        assert!(marker.is_control());
        assert_eq!(marker.0, 0x30);
    }

    #[test]
    fn with_compression_replaces_only_codec_bits() {
        let attributes = Attributes(0x7f).with_compression(Compression::Snappy);
        assert_eq!(attributes.0, 0x7a);
        assert_eq!(attributes.compression(), Ok(Compression::Snappy));
    }

    #[test]
    fn codes_round_trip_and_undefined_codecs_are_refused() {
        for code in 0..=4 {
            let codec = Compression::from_code(code).expect("0 to 4 are defined");
            assert_eq!(codec.code(), code);
        }
        for codec in 5..=7 {
            assert_eq!(
                Attributes(i16::from(codec)).compression(),
                Err(BatchError::UnsupportedCompression { codec })
            );
        }
    }
}
