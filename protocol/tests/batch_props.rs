//! Property tests for record batches.
//!
//! Goal: every batch the builder makes decodes back to its inputs with the header it
//! promised, and no input of any shape makes a decoder panic or accept damaged bytes. Method:
//! proptest generates record lists, producer fields and attribute bits, builds batches and
//! checks them through `check_roundtrip`; the damage properties truncate, flip and
//! re-frame those batches. A failure prints the seed and the minimal input; proptest saves it
//! under `proptest-regressions/` so the next run replays it first.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use wharf_protocol::batch::{
    batches, compute_crc, parse_header, record_starts, set_base_offset, set_partition_leader_epoch,
    validate, Attributes, Batch, BatchBuilder, BatchError, BatchHeader, Header, NewRecord, Record,
    RecordView, RecordViews, Records, TimestampType, ATTRIBUTES_POS, BATCH_HEADER_BYTES,
    BATCH_LENGTH_POS, CRC_POS, LAST_OFFSET_DELTA_POS, LOG_OVERHEAD_BYTES, MAGIC_POS,
    RECORD_COUNT_POS,
};
use wharf_protocol::varint::{decode_varint, decode_varlong, encode_varint, encode_varlong};

/// Everything a batch is built from.
#[derive(Debug, Clone)]
struct BatchInput {
    base_offset: i64,
    partition_leader_epoch: i32,
    base_timestamp_ms: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: Attributes,
    records: Vec<NewRecord>,
}

impl BatchInput {
    fn builder(&self) -> BatchBuilder {
        let mut builder = BatchBuilder::new(self.base_timestamp_ms)
            .base_offset(self.base_offset)
            .partition_leader_epoch(self.partition_leader_epoch)
            .producer(self.producer_id, self.producer_epoch, self.base_sequence)
            .attributes(self.attributes);
        for record in &self.records {
            builder.push(record).expect("generated records are small");
        }
        builder
    }

    fn build(&self) -> Bytes {
        self.builder().build()
    }
}

fn optional_bytes(bytes_max: usize) -> impl Strategy<Value = Option<Bytes>> {
    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..bytes_max).prop_map(Bytes::from))
}

fn header_strategy() -> impl Strategy<Value = Header> {
    (".{0,8}", optional_bytes(16)).prop_map(|(key, value)| Header { key, value })
}

/// Record timestamps are mostly near the base, sometimes anywhere in `i64`, so deltas cover
/// short, long and wrapping varlongs.
fn record_strategy(base_timestamp_ms: i64) -> impl Strategy<Value = NewRecord> {
    let timestamp = prop_oneof![
        3 => (-100_000i64..100_000).prop_map(move |delta| base_timestamp_ms.wrapping_add(delta)),
        1 => any::<i64>(),
    ];
    (
        timestamp,
        optional_bytes(24),
        optional_bytes(64),
        proptest::collection::vec(header_strategy(), 0..4),
    )
        .prop_map(|(timestamp_ms, key, value, headers)| NewRecord {
            timestamp_ms,
            key,
            value,
            headers,
        })
}

/// Attribute bits other than compression: timestamp type, transactional, control, and the
/// unused bits 6 to 15, which must survive untouched.
fn attributes_strategy() -> impl Strategy<Value = Attributes> {
    any::<i16>().prop_map(|bits| Attributes(bits & !Attributes::COMPRESSION_CODEC_MASK))
}

fn batch_input_strategy() -> impl Strategy<Value = BatchInput> {
    let timestamp = prop_oneof![
        3 => 1_500_000_000_000i64..2_000_000_000_000,
        1 => any::<i64>(),
    ];
    (
        any::<i64>(),
        any::<i32>(),
        timestamp,
        any::<i64>(),
        any::<i16>(),
        any::<i32>(),
        attributes_strategy(),
    )
        .prop_flat_map(|fields| {
            let base_timestamp_ms = fields.2;
            (
                Just(fields),
                proptest::collection::vec(record_strategy(base_timestamp_ms), 0..12),
            )
        })
        .prop_map(|(fields, records)| BatchInput {
            base_offset: fields.0,
            partition_leader_epoch: fields.1,
            base_timestamp_ms: fields.2,
            producer_id: fields.3,
            producer_epoch: fields.4,
            base_sequence: fields.5,
            attributes: fields.6,
            records,
        })
}

/// The header `input` must produce, CRC aside.
fn expected_header(input: &BatchInput, total_bytes: usize, crc: u32) -> BatchHeader {
    let record_count = i32::try_from(input.records.len()).expect("few records");
    let max_timestamp = input
        .records
        .iter()
        .map(|record| record.timestamp_ms)
        .max()
        .unwrap_or(input.base_timestamp_ms);
    BatchHeader {
        base_offset: input.base_offset,
        batch_length: i32::try_from(total_bytes - LOG_OVERHEAD_BYTES).expect("small batch"),
        partition_leader_epoch: input.partition_leader_epoch,
        magic: 2,
        crc,
        attributes: input.attributes,
        last_offset_delta: (record_count - 1).max(0),
        base_timestamp: input.base_timestamp_ms,
        max_timestamp,
        producer_id: input.producer_id,
        producer_epoch: input.producer_epoch,
        base_sequence: input.base_sequence,
        record_count,
    }
}

/// The one round-trip helper: build `input`, then check size, header, validation, the
/// splitter and every decoded record.
fn check_roundtrip(input: &BatchInput) -> Result<(), TestCaseError> {
    let builder = input.builder();
    let promised_bytes = builder.encoded_bytes();
    prop_assert_eq!(builder.record_count(), input.records.len());
    let bytes = builder.build();
    prop_assert_eq!(bytes.len(), promised_bytes);

    let header = validate(&bytes).map_err(fail)?;
    prop_assert_eq!(
        header,
        expected_header(input, bytes.len(), compute_crc(&bytes))
    );
    prop_assert_eq!(parse_header(&bytes), Ok(Some(header)));

    let batch = Batch::decode(bytes.clone()).map_err(fail)?;
    prop_assert_eq!(batch.header(), &header);
    let records: Vec<Record> = batch.records().collect::<Result<_, _>>().map_err(fail)?;
    prop_assert_eq!(records.len(), input.records.len());
    let log_append_time = header.attributes.timestamp_type() == TimestampType::LogAppendTime;
    for ((record, wanted), offset_delta) in records.iter().zip(&input.records).zip(0i64..) {
        prop_assert_eq!(record.offset, input.base_offset.wrapping_add(offset_delta));
        let wanted_timestamp = if log_append_time {
            header.max_timestamp
        } else {
            wanted.timestamp_ms
        };
        prop_assert_eq!(record.timestamp_ms, wanted_timestamp);
        prop_assert_eq!(&record.key, &wanted.key);
        prop_assert_eq!(&record.value, &wanted.value);
        prop_assert_eq!(&record.headers, &wanted.headers);
    }

    let split: Vec<Result<Batch, BatchError>> = batches(bytes).collect();
    prop_assert_eq!(split, vec![Ok(batch)]);
    Ok(())
}

fn fail(error: BatchError) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

/// Wraps arbitrary `records_region` bytes in a header with a correct length and CRC, so the
/// record decoder (not the CRC check) is what meets the garbage.
fn frame_records(record_count: i32, attributes: i16, records_region: &[u8]) -> Bytes {
    let mut bytes = BatchBuilder::new(0).build().to_vec();
    bytes.extend_from_slice(records_region);
    let batch_length = i32::try_from(bytes.len() - LOG_OVERHEAD_BYTES).expect("small");
    // Keep last_offset_delta consistent with the count so validation lets the records through.
    let last_offset_delta = record_count.saturating_sub(1).max(0);
    put(&mut bytes, BATCH_LENGTH_POS, &batch_length.to_be_bytes());
    put(&mut bytes, ATTRIBUTES_POS, &attributes.to_be_bytes());
    put(
        &mut bytes,
        LAST_OFFSET_DELTA_POS,
        &last_offset_delta.to_be_bytes(),
    );
    put(&mut bytes, RECORD_COUNT_POS, &record_count.to_be_bytes());
    let crc = compute_crc(&bytes);
    put(&mut bytes, CRC_POS, &crc.to_be_bytes());
    Bytes::from(bytes)
}

fn put(bytes: &mut [u8], position: usize, field: &[u8]) {
    bytes[position..position + field.len()].copy_from_slice(field);
}

/// Runs every decoder over `bytes` and drains every iterator; the only property is that
/// nothing panics and iterators end.
fn exercise_decoders(bytes: &Bytes) {
    let _ = parse_header(bytes);
    let _ = validate(bytes);
    let _ = compute_crc(bytes);
    if let Ok(batch) = Batch::decode(bytes.clone()) {
        let _ = batch.records().count();
        for view in batch.records().views().flatten() {
            let _ = view.headers();
        }
        let _ = batch.control_marker();
    }
    for batch in batches(bytes.clone()).flatten() {
        let _ = batch.records().count();
        let _ = batch.control_kind();
    }
}

/// Reading records in place (`Records::views`, issue #16) agrees with decoding them: the
/// same fields record for record, the same headers once decoded, and the same error at the
/// same place (for a record whose headers are damaged, from `RecordView::headers`).
fn views_agree_with_records(records: &Records) -> Result<(), TestCaseError> {
    let mut views = records.views();
    for decoded in records.clone() {
        let viewed: Option<Result<RecordView<'_>, BatchError>> = views.next();
        let viewed = viewed.ok_or_else(|| TestCaseError::fail("fewer views than records"))?;
        match (decoded, viewed) {
            (Ok(record), Ok(view)) => {
                prop_assert_eq!(view.offset, record.offset);
                prop_assert_eq!(view.timestamp_ms, record.timestamp_ms);
                prop_assert_eq!(view.key, record.key.as_deref());
                prop_assert_eq!(view.value, record.value.as_deref());
                prop_assert_eq!(view.headers(), Ok(record.headers));
            }
            (Err(error), Ok(view)) => {
                // Only the headers are left unchecked by a view; the iterators end here.
                prop_assert_eq!(view.headers(), Err(error));
                return Ok(());
            }
            (Err(record_error), Err(view_error)) => {
                prop_assert_eq!(view_error, record_error);
                prop_assert!(views.next().is_none(), "nothing follows an error");
            }
            (Ok(record), Err(error)) => {
                return Err(TestCaseError::fail(format!(
                    "decoded {record:?} where the view failed: {error}"
                )));
            }
        }
    }
    prop_assert!(views.next().is_none(), "more views than records");
    Ok(())
}

proptest! {
    // Failing cases are saved next to this file and replayed first on the next run.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn built_batches_round_trip(input in batch_input_strategy()) {
        check_roundtrip(&input)?;
    }

    #[test]
    fn batch_crc_agrees_with_the_reference_crc32c_crate(
        bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
        skip in 0usize..64,
    ) {
        // The SIMD paths differ by length and alignment: cover both, from 0 bytes up through
        // several folding blocks.
        let tail = &bytes[skip.min(bytes.len())..];
        prop_assert_eq!(wharf_protocol::batch::crc32c(tail), crc32c::crc32c(tail));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        exercise_decoders(&Bytes::from(bytes));
    }

    #[test]
    fn random_bytes_after_a_valid_header_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), BATCH_HEADER_BYTES..256),
        magic_is_right in any::<bool>(),
    ) {
        // Random bytes rarely get past the length and magic checks, so force them half the
        // time to reach the CRC and the batch splitter.
        let batch_length = i32::try_from(bytes.len() - LOG_OVERHEAD_BYTES).expect("small");
        bytes[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4].copy_from_slice(&batch_length.to_be_bytes());
        if magic_is_right {
            bytes[MAGIC_POS] = 2;
        }
        exercise_decoders(&Bytes::from(bytes));
    }

    #[test]
    fn garbage_records_with_a_valid_crc_never_panic(
        record_count in prop_oneof![0i32..4, any::<i32>()],
        attributes in prop_oneof![3 => attributes_strategy().prop_map(|bits| bits.0), 1 => any::<i16>()],
        records_region in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let bytes = frame_records(record_count, attributes, &records_region);
        exercise_decoders(&bytes);
    }

    #[test]
    fn every_truncation_is_rejected_as_truncated(
        input in batch_input_strategy(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let bytes = input.build();
        let kept_bytes = cut.index(bytes.len());
        let result = validate(&bytes[..kept_bytes]);
        prop_assert!(
            matches!(result, Err(BatchError::Truncated { .. })),
            "kept {} of {} bytes, got {:?}", kept_bytes, bytes.len(), result
        );
        prop_assert!(Batch::decode(bytes.slice(..kept_bytes)).is_err());
        let split: Vec<_> = batches(bytes.slice(..kept_bytes)).collect();
        prop_assert!(split.len() <= 1);
        prop_assert!(split.iter().all(Result::is_err));
    }

    /// A run of deliveries (issue #15) is a selection of a batch's records cut out with
    /// `record_starts` and concatenated: it decodes to exactly those records, offsets and
    /// timestamps included, from the batch's base offset and base timestamp.
    #[test]
    fn a_selection_of_records_cut_by_their_starts_decodes_to_those_records(
        input in batch_input_strategy(),
        keep in proptest::collection::vec(any::<bool>(), 0..40),
    ) {
        prop_assume!(input.attributes.timestamp_type() == TimestampType::CreateTime);
        prop_assume!(input.attributes.compression_code() == 0);
        let batch = Batch::decode(input.build()).map_err(fail)?;
        let section = batch.as_bytes().slice(BATCH_HEADER_BYTES..);
        let starts = record_starts(&section, batch.header().record_count).map_err(fail)?;
        prop_assert_eq!(starts.len(), input.records.len() + 1);
        prop_assert_eq!(*starts.last().expect("one start at least") as usize, section.len());
        let all: Vec<Record> = batch.records().collect::<Result<_, _>>().map_err(fail)?;
        let mut run = Vec::new();
        let mut wanted = Vec::new();
        for (index, record) in all.iter().enumerate() {
            if keep.get(index).copied().unwrap_or(true) {
                run.extend_from_slice(&section[starts[index] as usize..starts[index + 1] as usize]);
                wanted.push(record.clone());
            }
        }
        let count = i32::try_from(wanted.len()).expect("small");
        let header = batch.header();
        let run = Bytes::from(run);
        let records = Records::of_run(run.clone(), count, header.base_offset, header.base_timestamp);
        let decoded: Vec<Record> = records.clone().collect::<Result<_, _>>().map_err(fail)?;
        prop_assert_eq!(decoded, wanted);
        views_agree_with_records(&records)?;
        let views: Vec<_> =
            RecordViews::of_run(&run, count, header.base_offset, header.base_timestamp).collect();
        prop_assert_eq!(views, records.views().collect::<Vec<_>>());
    }

    #[test]
    fn views_of_built_batches_agree_with_their_records(input in batch_input_strategy()) {
        let batch = Batch::decode(input.build()).map_err(fail)?;
        views_agree_with_records(&batch.records())?;
    }

    #[test]
    fn views_of_garbage_records_agree_with_their_records(
        record_count in prop_oneof![0i32..4, any::<i32>()],
        records_region in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let bytes = frame_records(record_count, 0, &records_region);
        if let Ok(batch) = Batch::decode(bytes) {
            views_agree_with_records(&batch.records())?;
        }
    }

    #[test]
    fn record_starts_never_panics_and_refuses_a_wrong_count(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        count in -2i32..50,
    ) {
        let bytes = Bytes::from(bytes);
        if let Ok(starts) = record_starts(&bytes, count) {
            prop_assert_eq!(starts.len(), usize::try_from(count).unwrap_or(0) + 1);
            prop_assert_eq!(*starts.last().expect("one start") as usize, bytes.len());
        }
        let _ = Records::of_run(bytes, count, 0, 0).count();
    }

    #[test]
    fn every_byte_flip_in_the_crc_range_is_rejected(
        input in batch_input_strategy(),
        position in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut bytes = input.build().to_vec();
        let position = ATTRIBUTES_POS + position.index(bytes.len() - ATTRIBUTES_POS);
        bytes[position] ^= flip;
        let result = validate(&bytes);
        prop_assert!(
            matches!(result, Err(BatchError::BadCrc { .. })),
            "flip {:#04x} at {} gave {:?}", flip, position, result
        );
    }

    #[test]
    fn every_byte_flip_in_the_crc_field_or_checked_header_is_rejected(
        input in batch_input_strategy(),
        position in prop_oneof![BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4, MAGIC_POS..ATTRIBUTES_POS],
        flip in 1u8..=255,
    ) {
        let mut bytes = input.build().to_vec();
        bytes[position] ^= flip;
        prop_assert!(validate(&bytes).is_err(), "flip {:#04x} at {} was accepted", flip, position);
    }

    #[test]
    fn patching_fields_outside_the_crc_keeps_the_batch_valid(
        input in batch_input_strategy(),
        base_offset in any::<i64>(),
        epoch in any::<i32>(),
    ) {
        let mut bytes = input.build().to_vec();
        set_base_offset(&mut bytes, base_offset);
        set_partition_leader_epoch(&mut bytes, epoch);
        let header = validate(&bytes).map_err(fail)?;
        prop_assert_eq!(header.base_offset, base_offset);
        prop_assert_eq!(header.partition_leader_epoch, epoch);
        let batch = Batch::decode(Bytes::from(bytes)).map_err(fail)?;
        for (record, offset_delta) in batch.records().zip(0i64..) {
            let record = record.map_err(fail)?;
            prop_assert_eq!(record.offset, base_offset.wrapping_add(offset_delta));
        }
    }

    #[test]
    fn concatenated_batches_split_back(inputs in proptest::collection::vec(batch_input_strategy(), 0..4)) {
        let built: Vec<Bytes> = inputs.iter().map(BatchInput::build).collect();
        let joined = Bytes::from(built.concat());
        let split: Vec<Bytes> = batches(joined)
            .map(|batch| batch.map(Batch::into_bytes))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        prop_assert_eq!(split, built);
    }

    #[test]
    fn varints_round_trip(value in any::<i32>(), long_value in any::<i64>()) {
        let mut out = bytes::BytesMut::new();
        encode_varint(value, &mut out);
        let varint_end = out.len();
        encode_varlong(long_value, &mut out);
        prop_assert_eq!(decode_varint(&out), Ok(Some((value, varint_end))));
        prop_assert_eq!(
            decode_varlong(&out[varint_end..]),
            Ok(Some((long_value, out.len() - varint_end)))
        );
    }

    #[test]
    fn varint_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        let _ = decode_varint(&bytes);
        let _ = decode_varlong(&bytes);
    }
}
