//! Control batches: the transaction markers (ABORT and COMMIT) written to a partition when a
//! transaction ends.
//!
//! A control batch has the control and transactional attribute bits set and exactly one
//! record. Its key is `version: i16 = 0, type: i16` and its value is
//! `version: i16 = 0, coordinator_epoch: i32`. Readers accept a higher version and ignore the
//! bytes they do not know, as Kafka does; they refuse a negative version, a short key or
//! value and an unknown type. This module never decides what a marker means for the log.

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{Attributes, BatchBuilder, BatchError, NewRecord, Record, NO_SEQUENCE};

/// Bytes of a version 0 control record key: version i16, type i16.
pub const CONTROL_KEY_BYTES: usize = 4;

/// Bytes of a version 0 control record value: version i16, coordinator_epoch i32.
pub const CONTROL_VALUE_BYTES: usize = 6;

/// The type of a transaction marker, as stored in the control record key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum ControlKind {
    /// The transaction's records are discarded by read-committed consumers.
    Abort = 0,
    /// The transaction's records become visible to read-committed consumers.
    Commit = 1,
}

impl ControlKind {
    /// The type number stored in the control record key.
    pub const fn code(self) -> i16 {
        self as i16
    }

    /// The kind with type number `code`, or `None` for an unknown number.
    pub const fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(ControlKind::Abort),
            1 => Some(ControlKind::Commit),
            _ => None,
        }
    }
}

/// The contents of a control record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMarker {
    /// ABORT or COMMIT.
    pub kind: ControlKind,
    /// The epoch of the transaction coordinator that wrote the marker.
    pub coordinator_epoch: i32,
}

/// Builds a control batch holding one marker of `kind`.
///
/// The batch has base offset 0, partition leader epoch -1, the transactional and control bits
/// set, base sequence -1 and one record at offset delta 0 and timestamp `base_timestamp_ms`.
pub fn control_batch(
    base_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    kind: ControlKind,
    coordinator_epoch: i32,
) -> Bytes {
    let mut key = BytesMut::with_capacity(CONTROL_KEY_BYTES);
    key.put_i16(0);
    key.put_i16(kind.code());
    let mut value = BytesMut::with_capacity(CONTROL_VALUE_BYTES);
    value.put_i16(0);
    value.put_i32(coordinator_epoch);
    let record = NewRecord {
        timestamp_ms: base_timestamp_ms,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Vec::new(),
    };
    let mut builder = BatchBuilder::new(base_timestamp_ms)
        .producer(producer_id, producer_epoch, NO_SEQUENCE)
        .attributes(Attributes::NONE.transactional().control());
    builder
        .push(&record)
        .expect("a 17-byte control record fits in any batch");
    builder.build()
}

/// Reads the marker from the single record of a control batch.
pub(crate) fn decode_marker(record: &Record) -> Result<ControlMarker, BatchError> {
    let key = record.key.as_deref().ok_or(BatchError::BadControlRecord {
        reason: "control record key is null",
    })?;
    if key.len() < CONTROL_KEY_BYTES {
        return Err(BatchError::BadControlRecord {
            reason: "control record key shorter than 4 bytes",
        });
    }
    if be_i16(key, 0) < 0 {
        return Err(BatchError::BadControlRecord {
            reason: "control record key version is negative",
        });
    }
    let type_id = be_i16(key, 2);
    let kind = ControlKind::from_code(type_id).ok_or(BatchError::UnknownControlType { type_id })?;

    let value = record
        .value
        .as_deref()
        .ok_or(BatchError::BadControlRecord {
            reason: "control record value is null",
        })?;
    if value.len() < CONTROL_VALUE_BYTES {
        return Err(BatchError::BadControlRecord {
            reason: "control record value shorter than 6 bytes",
        });
    }
    if be_i16(value, 0) < 0 {
        return Err(BatchError::BadControlRecord {
            reason: "control record value version is negative",
        });
    }
    let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
    Ok(ControlMarker {
        kind,
        coordinator_epoch,
    })
}

/// Reads a big-endian i16 at `position`; the caller has checked the length.
fn be_i16(bytes: &[u8], position: usize) -> i16 {
    i16::from_be_bytes([bytes[position], bytes[position + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_with(key: Field, value: Field) -> Record {
        Record {
            offset: 0,
            timestamp_ms: 0,
            key: key.map(Bytes::from_static),
            value: value.map(Bytes::from_static),
            headers: Vec::new(),
        }
    }

    #[test]
    fn marker_decodes_commit_and_abort() {
        let commit = record_with(Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 9]));
        assert_eq!(
            decode_marker(&commit),
            Ok(ControlMarker {
                kind: ControlKind::Commit,
                coordinator_epoch: 9
            })
        );
        let abort = record_with(Some(&[0, 0, 0, 0]), Some(&[0, 0, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(
            decode_marker(&abort),
            Ok(ControlMarker {
                kind: ControlKind::Abort,
                coordinator_epoch: -1
            })
        );
    }

    #[test]
    fn marker_with_newer_version_and_extra_bytes_is_accepted() {
        let newer = record_with(Some(&[0, 1, 0, 1, 0xaa]), Some(&[0, 1, 0, 0, 0, 2, 0xbb]));
        assert_eq!(
            decode_marker(&newer).map(|marker| marker.kind),
            Ok(ControlKind::Commit)
        );
    }

    type Field = Option<&'static [u8]>;

    #[test]
    fn malformed_markers_are_refused() {
        let value: Field = Some(&[0, 0, 0, 0, 0, 0]);
        let cases: [(Field, Field); 6] = [
            (None, value),
            (Some(&[0, 0, 0]), value),
            (Some(&[0xff, 0xff, 0, 1]), value),
            (Some(&[0, 0, 0, 1]), None),
            (Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0])),
            (Some(&[0, 0, 0, 1]), Some(&[0x80, 0, 0, 0, 0, 0])),
        ];
        for (key, value) in cases {
            let result = decode_marker(&record_with(key, value));
            assert!(
                matches!(result, Err(BatchError::BadControlRecord { .. })),
                "key {key:?} value {value:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn unknown_marker_type_is_refused_with_its_number() {
        let unknown = record_with(Some(&[0, 0, 0, 7]), Some(&[0, 0, 0, 0, 0, 0]));
        assert_eq!(
            decode_marker(&unknown),
            Err(BatchError::UnknownControlType { type_id: 7 })
        );
    }
}
