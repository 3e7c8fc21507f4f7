//! Golden bytes for record batch v2, written out field by field from the published Kafka
//! layout (docs/PROTOCOL.md, "Record batch", "Record", "Record header", "Control record").
//!
//! Goal: the builder's output is the spec's bytes exactly, and decoding those bytes gives back
//! the same records. Method: each expected batch is a byte array with one comment per field,
//! its CRC-32C computed here over `bytes[21..]` with the `crc32c` crate and also pinned as a
//! literal (the literal was computed by a separate bit-by-bit CRC-32C implementation). If one
//! of these tests fails, the wire format changed: that needs a version bump, not a new
//! golden.

use bytes::Bytes;
use wharf_protocol::batch::{
    batches, control_batch, validate, Attributes, Batch, BatchBuilder, ControlKind, ControlMarker,
    Header, NewRecord, Record, TimestampType, ATTRIBUTES_POS, CRC_POS,
};

/// 2023-11-14T22:13:20Z in milliseconds: 0x0000_018b_cfe5_6800.
const BASE_TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// Fills in the CRC of a hand-written batch whose CRC bytes are zero, checks it against the
/// pinned value and returns the finished bytes.
fn with_crc(mut bytes: Vec<u8>, pinned_crc: u32) -> Vec<u8> {
    assert_eq!(&bytes[CRC_POS..ATTRIBUTES_POS], &[0, 0, 0, 0]);
    let crc = crc32c::crc32c(&bytes[ATTRIBUTES_POS..]);
    assert_eq!(
        crc, pinned_crc,
        "crc {crc:#010x} differs from the pinned value"
    );
    bytes[CRC_POS..ATTRIBUTES_POS].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// The one helper every golden test goes through: built bytes equal the golden bytes, they
/// validate, and decoding them yields `expected_records`.
fn check_golden(built: &Bytes, golden: &[u8], expected_records: &[Record]) -> Batch {
    assert_eq!(
        built.as_ref(),
        golden,
        "built bytes differ from the golden bytes"
    );
    let header = validate(golden).expect("the golden batch is valid");
    assert_eq!(header.total_bytes(), golden.len());
    let batch = Batch::decode(Bytes::copy_from_slice(golden)).expect("the golden batch decodes");
    let records: Vec<Record> = batch
        .records()
        .collect::<Result<_, _>>()
        .expect("the golden records decode");
    assert_eq!(records, expected_records);
    batch
}

#[test]
fn crc32c_check_value() {
    // The standard check value of CRC-32C (Castagnoli), as opposed to CRC-32/IEEE's
    // 0xCBF43926: this pins that the batch CRC uses the right polynomial.
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(wharf_protocol::batch::crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn golden_data_batch() {
    #[rustfmt::skip]
    let golden = with_crc(vec![
        // ---- batch header, 61 bytes ----
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // @0  base_offset i64 = 0
        0x00, 0x00, 0x00, 0x52,                         // @8  batch_length i32 = 82 (94 - 12)
        0xff, 0xff, 0xff, 0xff,                         // @12 partition_leader_epoch i32 = -1
        0x02,                                           // @16 magic i8 = 2
        0x00, 0x00, 0x00, 0x00,                         // @17 crc u32, filled in by with_crc
        0x00, 0x00,                                     // @21 attributes i16 = 0
        0x00, 0x00, 0x00, 0x01,                         // @23 last_offset_delta i32 = 1
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // @27 base_timestamp i64 = 1700000000000
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x69, 0x2c, // @35 max_timestamp i64 = base + 300
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // @43 producer_id i64 = 42
        0x00, 0x03,                                     // @51 producer_epoch i16 = 3
        0x00, 0x00, 0x00, 0x07,                         // @53 base_sequence i32 = 7
        0x00, 0x00, 0x00, 0x02,                         // @57 record_count i32 = 2
        // ---- record 0, 17 bytes ----
        0x20,                                           // length varint = 16
        0x00,                                           // attributes i8 = 0
        0x00,                                           // timestamp_delta varlong = 0
        0x00,                                           // offset_delta varint = 0
        0x02, b'k',                                     // key length 1, "k"
        0x0a, b'h', b'e', b'l', b'l', b'o',             // value length 5, "hello"
        0x02,                                           // header_count varint = 1
        0x02, b'h',                                     //   header key length 1, "h"
        0x02, b'v',                                     //   header value length 1, "v"
        // ---- record 1, 16 bytes ----
        0x1e,                                           // length varint = 15
        0x00,                                           // attributes i8 = 0
        0xd8, 0x04,                                     // timestamp_delta varlong = 300
        0x02,                                           // offset_delta varint = 1
        0x01,                                           // key length -1 (null key)
        0x0a, b'w', b'o', b'r', b'l', b'd',             // value length 5, "world"
        0x02,                                           // header_count varint = 1
        0x02, b'n',                                     //   header key length 1, "n"
        0x01,                                           //   header value length -1 (null)
    ], 0xe91c_8404);
    assert_eq!(golden.len(), 94);

    let inputs = [
        NewRecord {
            timestamp_ms: BASE_TIMESTAMP_MS,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"hello")),
            headers: vec![Header {
                key: "h".to_owned(),
                value: Some(Bytes::from_static(b"v")),
            }],
        },
        NewRecord {
            timestamp_ms: BASE_TIMESTAMP_MS + 300,
            key: None,
            value: Some(Bytes::from_static(b"world")),
            headers: vec![Header {
                key: "n".to_owned(),
                value: None,
            }],
        },
    ];
    let mut builder = BatchBuilder::new(BASE_TIMESTAMP_MS).producer(42, 3, 7);
    for input in &inputs {
        builder.push(input).expect("small records fit");
    }
    assert_eq!(builder.encoded_bytes(), 94);
    assert_eq!(builder.record_count(), 2);
    let built = builder.build();

    let expected_records: Vec<Record> = inputs
        .iter()
        .zip(0..)
        .map(|(input, offset)| Record {
            offset,
            timestamp_ms: input.timestamp_ms,
            key: input.key.clone(),
            value: input.value.clone(),
            headers: input.headers.clone(),
        })
        .collect();
    let batch = check_golden(&built, &golden, &expected_records);

    let header = batch.header();
    assert_eq!(header.base_offset, 0);
    assert_eq!(header.batch_length, 82);
    assert_eq!(header.partition_leader_epoch, -1);
    assert_eq!(header.magic, 2);
    assert_eq!(header.crc, 0xe91c_8404);
    assert_eq!(header.attributes, Attributes::NONE);
    assert_eq!(header.last_offset_delta, 1);
    assert_eq!(header.base_timestamp, BASE_TIMESTAMP_MS);
    assert_eq!(header.max_timestamp, BASE_TIMESTAMP_MS + 300);
    assert_eq!(header.producer_id, 42);
    assert_eq!(header.producer_epoch, 3);
    assert_eq!(header.base_sequence, 7);
    assert_eq!(header.record_count, 2);
    assert_eq!(header.last_offset(), 1);
    assert_eq!(header.next_offset(), 2);
    assert_eq!(batch.control_kind(), Ok(None));
}

#[test]
fn golden_commit_control_batch() {
    #[rustfmt::skip]
    let golden = with_crc(vec![
        // ---- batch header, 61 bytes ----
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // @0  base_offset i64 = 0
        0x00, 0x00, 0x00, 0x42,                         // @8  batch_length i32 = 66 (78 - 12)
        0xff, 0xff, 0xff, 0xff,                         // @12 partition_leader_epoch i32 = -1
        0x02,                                           // @16 magic i8 = 2
        0x00, 0x00, 0x00, 0x00,                         // @17 crc u32, filled in by with_crc
        0x00, 0x30,                                     // @21 attributes i16: transactional | control
        0x00, 0x00, 0x00, 0x00,                         // @23 last_offset_delta i32 = 0
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // @27 base_timestamp i64 = 1700000000000
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // @35 max_timestamp i64 = base
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, // @43 producer_id i64 = 42
        0x00, 0x03,                                     // @51 producer_epoch i16 = 3
        0xff, 0xff, 0xff, 0xff,                         // @53 base_sequence i32 = -1
        0x00, 0x00, 0x00, 0x01,                         // @57 record_count i32 = 1
        // ---- the control record, 17 bytes ----
        0x20,                                           // length varint = 16
        0x00,                                           // attributes i8 = 0
        0x00,                                           // timestamp_delta varlong = 0
        0x00,                                           // offset_delta varint = 0
        0x08,                                           // key length 4
        0x00, 0x00,                                     //   key version i16 = 0
        0x00, 0x01,                                     //   type i16 = 1 (COMMIT)
        0x0c,                                           // value length 6
        0x00, 0x00,                                     //   value version i16 = 0
        0x00, 0x00, 0x00, 0x05,                         //   coordinator_epoch i32 = 5
        0x00,                                           // header_count varint = 0
    ], 0xeea0_9ada);
    assert_eq!(golden.len(), 78);

    let built = control_batch(BASE_TIMESTAMP_MS, 42, 3, ControlKind::Commit, 5);
    let expected_record = Record {
        offset: 0,
        timestamp_ms: BASE_TIMESTAMP_MS,
        key: Some(Bytes::from_static(&[0x00, 0x00, 0x00, 0x01])),
        value: Some(Bytes::from_static(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x05])),
        headers: Vec::new(),
    };
    let batch = check_golden(&built, &golden, &[expected_record]);

    let attributes = batch.header().attributes;
    assert!(attributes.is_control());
    assert!(attributes.is_transactional());
    assert_eq!(attributes.timestamp_type(), TimestampType::CreateTime);
    assert_eq!(batch.control_kind(), Ok(Some(ControlKind::Commit)));
    assert_eq!(
        batch.control_marker(),
        Ok(Some(ControlMarker {
            kind: ControlKind::Commit,
            coordinator_epoch: 5
        }))
    );
}

#[test]
fn abort_control_batch_differs_from_commit_only_in_type_and_crc() {
    let commit = control_batch(BASE_TIMESTAMP_MS, 42, 3, ControlKind::Commit, 5);
    let abort = control_batch(BASE_TIMESTAMP_MS, 42, 3, ControlKind::Abort, 5);
    let differing: Vec<usize> = (0..commit.len())
        .filter(|&position| commit[position] != abort[position])
        .collect();
    // Bytes 17-20 are the CRC; byte 69 is the low byte of the control type in the key.
    assert!(differing
        .iter()
        .all(|&position| (17..21).contains(&position) || position == 69));
    assert_eq!(abort[69], 0x00);
    let batch = Batch::decode(abort).expect("valid");
    assert_eq!(batch.control_kind(), Ok(Some(ControlKind::Abort)));
}

#[test]
fn golden_batches_split_from_a_log_slice() {
    let data = {
        let mut builder = BatchBuilder::new(BASE_TIMESTAMP_MS);
        builder
            .push(&NewRecord {
                timestamp_ms: BASE_TIMESTAMP_MS,
                value: Some(Bytes::from_static(b"hello")),
                ..NewRecord::default()
            })
            .expect("fits");
        builder.build()
    };
    let marker = control_batch(BASE_TIMESTAMP_MS, 42, 3, ControlKind::Commit, 5);
    let mut slice = data.to_vec();
    slice.extend_from_slice(&marker);
    let split: Vec<Batch> = batches(Bytes::from(slice))
        .collect::<Result<_, _>>()
        .expect("both batches are valid");
    assert_eq!(split.len(), 2);
    assert_eq!(split[0].as_bytes(), &data);
    assert_eq!(split[1].as_bytes(), &marker);
}
