//! Tests of the log cleaner over the simulated file system: the latest-value view against a
//! model, power loss at every fsync of a pass, and a property test with random keys,
//! tombstones, aborted transactions, cleaner passes and crashes in between.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wharf_protocol::batch::{self, Attributes, BatchBuilder, NewRecord};

use super::*;
use crate::storage::checkpoint;
use crate::storage::clock::Clock;
use crate::storage::config::{CleanupPolicy, CompactionConfig, LogConfig};
use crate::storage::partition::{Appended, StorageEnv};
use crate::storage::sim::Torn;
use crate::storage::testing::{env_with, sim_env};

const DIR: &str = "/data/compacted-0";
const NOW_MS: i64 = 1_000_000_000;

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 256,
        index_bytes_max: 4096,
        cleanup: CleanupPolicy::Compact,
        compaction: CompactionConfig {
            min_cleanable_dirty_ratio_permille: 0,
            delete_retention_ms: 60_000,
            ..CompactionConfig::default()
        },
        ..LogConfig::default()
    }
}

fn open(env: &StorageEnv) -> Arc<Partition> {
    Partition::open(Path::new(DIR), compact_config(), env.clone()).unwrap()
}

/// One record as the tests write it: key, value (None: a tombstone).
type Entry = (u8, Option<Vec<u8>>);

/// A record of the log as the model keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    key: u8,
    value: Option<Vec<u8>>,
    aborted: bool,
    timestamp_ms: i64,
}

fn batch_with(entries: &[Entry], timestamp_ms: i64, producer: Option<i64>) -> BytesMut {
    let mut builder = BatchBuilder::new(timestamp_ms);
    if let Some(producer_id) = producer {
        builder = builder
            .producer(producer_id, 0, 0)
            .attributes(Attributes::default().transactional());
    }
    for (key, value) in entries {
        builder
            .push(&NewRecord {
                timestamp_ms,
                key: Some(Bytes::from(vec![*key])),
                value: value.clone().map(Bytes::from),
                headers: Vec::new(),
            })
            .unwrap();
    }
    let mut out = BytesMut::new();
    builder.build_into(&mut out);
    out
}

fn append(partition: &Arc<Partition>, batch: &mut BytesMut) -> Appended {
    let appended = partition.append(batch).unwrap();
    partition
        .wait_durable_blocking(appended.next_offset, Duration::from_secs(10))
        .unwrap();
    appended
}

/// Every record from the log start: (offset, key, value), stepping over emptied batches.
fn read_view(partition: &Partition) -> Vec<(i64, u8, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut offset = partition.log_start_offset();
    while offset < partition.high_watermark() {
        let read = partition.read(offset, 1024 * 1024).unwrap();
        assert!(!read.bytes.is_empty(), "read at {offset} returned nothing");
        for decoded in batch::batches(read.bytes) {
            let decoded = decoded.unwrap();
            offset = decoded.header().next_offset();
            if decoded.header().attributes.is_control() {
                continue;
            }
            for record in decoded.records() {
                let record = record.unwrap();
                let key = record.key.as_ref().map_or(0, |key| key[0]);
                out.push((record.offset, key, record.value.map(|value| value.to_vec())));
            }
        }
    }
    out
}

struct Cleaner {
    aborted: HashSet<(i64, i64)>,
    stop: AtomicBool,
    map_bytes_max: usize,
}

impl Cleaner {
    fn new() -> Self {
        Cleaner {
            aborted: HashSet::new(),
            stop: AtomicBool::new(false),
            map_bytes_max: 1 << 20,
        }
    }

    fn run(&self, partition: &Partition) -> Result<Option<CleanReport>> {
        let aborted = |producer_id: i64, offset: i64| self.aborted.contains(&(producer_id, offset));
        let throttle = |_bytes: u64| {};
        partition.clean(&CleanInputs {
            stable_offset: i64::MAX,
            aborted: &aborted,
            map_bytes_max: self.map_bytes_max,
            throttle: &throttle,
            stop: &self.stop,
        })
    }
}

/// Checks `view` against the model: every record is one the model holds, in offset order;
/// the latest record of every key is there (a tombstone past the horizon may be gone if it
/// was below `cleaned_below`, the furthest cleaner point so far); right after a pass,
/// below `cleaned_up_to`, exactly the latest record of each key among the offsets below it,
/// without aborted records or tombstones past the horizon.
fn check_view(
    view: &[(i64, u8, Option<Vec<u8>>)],
    model: &BTreeMap<i64, Stored>,
    cleaned_up_to: i64,
    horizon_ms: i64,
) {
    check_view_after(view, model, cleaned_up_to, cleaned_up_to, horizon_ms);
}

fn check_view_after(
    view: &[(i64, u8, Option<Vec<u8>>)],
    model: &BTreeMap<i64, Stored>,
    cleaned_below: i64,
    cleaned_up_to: i64,
    horizon_ms: i64,
) {
    let mut previous = -1;
    for (offset, key, value) in view {
        assert!(*offset > previous, "offsets out of order at {offset}");
        previous = *offset;
        let stored = model
            .get(offset)
            .unwrap_or_else(|| panic!("offset {offset} was never written"));
        assert_eq!(
            (stored.key, &stored.value),
            (*key, value),
            "offset {offset} changed"
        );
    }
    let present: HashSet<i64> = view.iter().map(|(offset, _, _)| *offset).collect();
    let mut latest: BTreeMap<u8, i64> = BTreeMap::new();
    let mut latest_below: BTreeMap<u8, i64> = BTreeMap::new();
    for (offset, stored) in model.iter().filter(|(_, stored)| !stored.aborted) {
        latest.insert(stored.key, *offset);
        if *offset < cleaned_up_to {
            latest_below.insert(stored.key, *offset);
        }
    }
    for (key, offset) in &latest {
        let stored = &model[offset];
        let may_be_gone =
            stored.value.is_none() && stored.timestamp_ms < horizon_ms && *offset < cleaned_below;
        assert!(
            may_be_gone || present.contains(offset),
            "the latest record of key {key} (offset {offset}) is missing"
        );
    }
    for (offset, stored) in model.range(..cleaned_up_to) {
        let expected = !stored.aborted
            && latest_below.get(&stored.key) == Some(offset)
            && !(stored.value.is_none() && stored.timestamp_ms < horizon_ms);
        assert_eq!(
            present.contains(offset),
            expected,
            "offset {offset} (key {}) below the cleaner point {cleaned_up_to}",
            stored.key
        );
    }
}

/// Appends `rounds` batches of five records over 20 keys, 600-byte values, so that the
/// partition rolls every few dozen records.
fn fill(partition: &Arc<Partition>, model: &mut BTreeMap<i64, Stored>, rounds: u32) {
    for round in 0..rounds {
        let entries: Vec<Entry> = (0..5u32)
            .map(|index| {
                let key = ((round * 5 + index) % 20) as u8;
                (
                    key,
                    Some(format!("{round}-{index}-{}", "v".repeat(600)).into_bytes()),
                )
            })
            .collect();
        let appended = append(partition, &mut batch_with(&entries, NOW_MS, None));
        for (index, (key, value)) in entries.into_iter().enumerate() {
            model.insert(
                appended.base_offset + index as i64,
                Stored {
                    key,
                    value,
                    aborted: false,
                    timestamp_ms: NOW_MS,
                },
            );
        }
    }
}

#[test]
fn a_pass_keeps_the_latest_record_of_each_key_and_survives_reopening() {
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env);
    let mut model = BTreeMap::new();
    fill(&partition, &mut model, 120);
    let segments_before = partition.segment_count();
    let bytes_before = partition.size_bytes();
    assert!(segments_before > 5, "the test needs several segments");
    let report = Cleaner::new().run(&partition).unwrap().expect("a pass ran");
    assert!(report.records_removed > 0);
    assert!(partition.size_bytes() < bytes_before / 2);
    check_view(&read_view(&partition), &model, report.cleaned_up_to, 0);
    // Groups are made by the segments' sizes before the pass (as Kafka's cleaner does), so
    // the shrunken segments merge on the next pass.
    fill(&partition, &mut model, 20);
    let report = Cleaner::new().run(&partition).unwrap().expect("a pass ran");
    assert!(report.segments_after < report.segments_before, "{report:?}");
    assert!(partition.segment_count() < segments_before, "{report:?}");
    let view = read_view(&partition);
    check_view(&view, &model, report.cleaned_up_to, 0);
    // Power loss right after the pass, then a clean reopen.
    let image = fs.crash_image(Torn::None);
    let reopened = Partition::open(
        Path::new(DIR),
        compact_config(),
        env_with(Arc::new(image), clock.clone()),
    )
    .unwrap();
    assert_eq!(read_view(&reopened), view);
    partition.close().unwrap();
    let reopened = open(&env);
    assert_eq!(read_view(&reopened), view);
    // A second pass with nothing new finds nothing dirty.
    assert_eq!(Cleaner::new().run(&reopened).unwrap(), None);
}

#[test]
fn a_small_key_map_cleans_over_several_passes() {
    let (env, _, _) = sim_env(NOW_MS);
    let partition = open(&env);
    let mut model = BTreeMap::new();
    fill(&partition, &mut model, 120);
    let mut cleaner = Cleaner::new();
    // Room for about five keys: each pass maps one or two batches.
    cleaner.map_bytes_max = 5 * (1 + MAP_ENTRY_OVERHEAD_BYTES);
    let mut passes = 0;
    let mut cleaned_up_to = 0;
    while let Some(report) = cleaner.run(&partition).unwrap() {
        assert!(
            report.map_entries <= 10,
            "the map outgrew its budget: {report:?}"
        );
        assert!(
            report.cleaned_up_to > cleaned_up_to,
            "a pass made no progress"
        );
        cleaned_up_to = report.cleaned_up_to;
        check_view(&read_view(&partition), &model, cleaned_up_to, 0);
        passes += 1;
        assert!(passes < 1000);
    }
    assert!(passes > 3, "expected several passes, ran {passes}");
}

#[test]
fn power_loss_at_every_fsync_of_a_pass_leaves_old_or_new_segments() {
    let mut failed_at = 0;
    loop {
        let (env, fs, clock) = sim_env(NOW_MS);
        let partition = open(&env);
        let mut model = BTreeMap::new();
        fill(&partition, &mut model, 60);
        let before = read_view(&partition);
        fs.fail_syncs_after(failed_at);
        let outcome = Cleaner::new().run(&partition);
        let image = fs.crash_image(Torn::Random { seed: failed_at });
        let reopened = Partition::open(
            Path::new(DIR),
            compact_config(),
            env_with(Arc::new(image.clone()), clock.clone()),
        )
        .unwrap();
        let view = read_view(&reopened);
        // Old or new per group: every record is the model's, every key's latest is there.
        check_view(&view, &model, 0, 0);
        assert_eq!(reopened.high_watermark(), partition.log_end_offset());
        assert!(view.len() <= before.len());
        assert!(
            !image
                .file_paths()
                .iter()
                .any(|path| path.to_string_lossy().contains(CLEANING_DIR)),
            "cleaner leftovers survived the reopen"
        );
        if outcome.is_ok() {
            // Every fsync of the pass was covered.
            assert!(failed_at > 3, "the pass had only {failed_at} fsyncs");
            break;
        }
        failed_at += 1;
    }
}

#[test]
fn tombstones_go_after_the_horizon_and_aborted_records_always() {
    let (env, _, clock) = sim_env(NOW_MS);
    let partition = open(&env);
    let mut model = BTreeMap::new();
    fill(&partition, &mut model, 40);
    let mut cleaner = Cleaner::new();
    let value = append(
        &partition,
        &mut batch_with(&[(30, Some(b"gone".to_vec()))], NOW_MS, None),
    );
    model.insert(
        value.base_offset,
        Stored {
            key: 30,
            value: Some(b"gone".to_vec()),
            aborted: false,
            timestamp_ms: NOW_MS,
        },
    );
    let tombstone = append(&partition, &mut batch_with(&[(30, None)], NOW_MS, None));
    model.insert(
        tombstone.base_offset,
        Stored {
            key: 30,
            value: None,
            aborted: false,
            timestamp_ms: NOW_MS,
        },
    );
    let aborted_entries: Vec<Entry> =
        vec![(40, Some(vec![b'x'; 600])), (41, Some(vec![b'y'; 600]))];
    let aborted = append(
        &partition,
        &mut batch_with(&aborted_entries, NOW_MS, Some(77)),
    );
    cleaner.aborted.insert((77, aborted.base_offset));
    for (index, (key, value)) in aborted_entries.into_iter().enumerate() {
        model.insert(
            aborted.base_offset + index as i64,
            Stored {
                key,
                value,
                aborted: true,
                timestamp_ms: NOW_MS,
            },
        );
    }
    fill(&partition, &mut model, 40);
    // Within the horizon the tombstone stays; the aborted records go at once.
    let report = cleaner.run(&partition).unwrap().expect("a pass ran");
    assert!(report.cleaned_up_to > aborted.next_offset);
    let view = read_view(&partition);
    check_view(&view, &model, report.cleaned_up_to, 0);
    assert!(view
        .iter()
        .any(|(offset, _, _)| *offset == tombstone.base_offset));
    assert!(!view
        .iter()
        .any(|(offset, _, _)| *offset == value.base_offset));
    assert!(!view.iter().any(|(_, key, _)| [40, 41].contains(key)));
    // Past the horizon it goes too.
    clock.advance_ms(61_000);
    fill(&partition, &mut model, 40);
    let report = cleaner.run(&partition).unwrap().expect("a pass ran");
    let horizon = NOW_MS + 61_000 - 60_000;
    check_view(
        &read_view(&partition),
        &model,
        report.cleaned_up_to,
        horizon,
    );
    assert!(!read_view(&partition)
        .iter()
        .any(|(_, key, _)| [30, 40, 41].contains(key)));
}

#[test]
fn cleaner_files_are_pinned() {
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    // cleaner-swap: the group based at 5 replacing segments 5 and 9 (docs/STORAGE.md).
    let swap = checkpoint::encode(SWAP_MAGIC, SWAP_VERSION, 0, &encode_swap(5, &[5, 9]));
    assert_eq!(
        hex(&swap[..18 + 28]),
        concat!(
            "57435357",         // magic WCSW
            "0001",             // version 1
            "0000000000000000", // sequence 0
            "0000001c",         // payload bytes: 28
            "0000000000000005", // base
            "00000002",         // replaced count
            "0000000000000005", // replaced bases
            "0000000000000009",
        )
    );
    assert_eq!(decode_swap(&swap[18..18 + 28]), Some((5, vec![5, 9])));
    assert_eq!(decode_swap(&swap[18..18 + 27]), None);
    // cleaner-point: offset 4096.
    let point = checkpoint::encode(
        CLEANER_POINT_MAGIC,
        CLEANER_POINT_VERSION,
        0,
        &4096i64.to_be_bytes(),
    );
    assert_eq!(
        hex(&point[..18 + 8]),
        concat!(
            "57434c50",         // magic WCLP
            "0001",             // version 1
            "0000000000000000", // sequence 0
            "00000008",         // payload bytes
            "0000000000001000", // the offset
        )
    );
}

#[test]
fn a_large_topic_keeps_the_key_map_within_its_budget() {
    let (env, _, _) = sim_env(NOW_MS);
    let partition = open(&env);
    // 20,000 distinct four-byte keys in batches of 100, then each rewritten once.
    for round in 0..2u32 {
        for chunk in 0..200u32 {
            let mut builder = BatchBuilder::new(NOW_MS);
            for index in 0..100u32 {
                let key = (chunk * 100 + index).to_be_bytes();
                builder
                    .push(&NewRecord {
                        timestamp_ms: NOW_MS,
                        key: Some(Bytes::copy_from_slice(&key)),
                        value: Some(Bytes::from(format!("{round}-{}", "v".repeat(40)))),
                        headers: Vec::new(),
                    })
                    .unwrap();
            }
            let mut out = BytesMut::new();
            builder.build_into(&mut out);
            append(&partition, &mut out);
        }
    }
    let budget = 64 * 1024;
    let one_batch = 100 * (4 + MAP_ENTRY_OVERHEAD_BYTES);
    let mut cleaner = Cleaner::new();
    cleaner.map_bytes_max = budget;
    let mut passes = 0;
    while let Some(report) = cleaner.run(&partition).unwrap() {
        assert!(report.map_bytes <= budget + one_batch, "{report:?}");
        passes += 1;
    }
    assert!(
        passes >= 20,
        "40,000 records of 20,000 keys in a 64 KiB map need many passes, ran {passes}"
    );
    // Every key's first value is gone below the cleaner point.
    let remaining = partition.dirty_view(i64::MAX);
    assert_eq!(remaining.dirty_bytes, 0);
    let mut offset = partition.log_start_offset();
    let mut first_round_left = 0;
    while offset < partition.high_watermark() {
        let read = partition.read(offset, 1024 * 1024).unwrap();
        for decoded in batch::batches(read.bytes) {
            let decoded = decoded.unwrap();
            offset = decoded.header().next_offset();
            for record in decoded.records() {
                let record = record.unwrap();
                if record
                    .value
                    .as_deref()
                    .is_some_and(|value| value.starts_with(b"0-"))
                {
                    first_round_left += 1;
                }
            }
        }
    }
    let active_records = (partition.high_watermark()
        - partition
            .segment_base_offsets()
            .last()
            .copied()
            .unwrap_or(0)) as usize;
    assert!(
        first_round_left <= active_records,
        "{first_round_left} stale records left"
    );
}

#[test]
fn readers_during_swaps_see_the_old_or_the_new_segments() {
    let (env, _, _) = sim_env(NOW_MS);
    let partition = open(&env);
    let mut model = BTreeMap::new();
    fill(&partition, &mut model, 150);
    let model = Arc::new(model);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let partition = partition.clone();
        let model = model.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) || reads < 3 {
                // Every read succeeds and every record in it is the model's, in order, with
                // each key's latest record present.
                check_view(&read_view(&partition), &model, 0, 0);
                reads += 1;
            }
            reads
        })
    };
    let mut cleaner = Cleaner::new();
    // A small map: many passes, many swaps while the reader reads.
    cleaner.map_bytes_max = 10 * (1 + MAP_ENTRY_OVERHEAD_BYTES);
    let mut passes = 0;
    while cleaner.run(&partition).unwrap().is_some() {
        passes += 1;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let reads = reader.join().expect("the reader never failed");
    assert!(passes > 5 && reads >= 3, "passes {passes}, reads {reads}");
}

/// The producer ids of the transaction markers in the log, in offset order.
fn markers(partition: &Partition) -> Vec<i64> {
    let mut out = Vec::new();
    let mut offset = partition.log_start_offset();
    while offset < partition.high_watermark() {
        let read = partition.read(offset, 1024 * 1024).unwrap();
        for decoded in batch::batches(read.bytes) {
            let decoded = decoded.unwrap();
            offset = decoded.header().next_offset();
            if decoded.header().attributes.is_control() {
                out.push(decoded.header().producer_id);
            }
        }
    }
    out
}

#[test]
fn a_marker_goes_once_nothing_of_its_transaction_is_left_and_the_horizon_passed() {
    let (env, _, clock) = sim_env(NOW_MS);
    let partition = open(&env);
    let mut model = BTreeMap::new();
    fill(&partition, &mut model, 10);
    let mut cleaner = Cleaner::new();
    let marker = |producer_id: i64, kind: batch::ControlKind| {
        let mut bytes = BytesMut::from(&batch::control_batch(NOW_MS, producer_id, 0, kind, 0)[..]);
        append(&partition, &mut bytes);
    };
    // 501 commits a value that a later record supersedes; 502 commits the latest value of
    // its key; 503 aborts.
    append(
        &partition,
        &mut batch_with(&[(50, Some(b"a".to_vec()))], NOW_MS, Some(501)),
    );
    marker(501, batch::ControlKind::Commit);
    append(
        &partition,
        &mut batch_with(&[(51, Some(b"x".to_vec()))], NOW_MS, Some(502)),
    );
    marker(502, batch::ControlKind::Commit);
    let aborted = append(
        &partition,
        &mut batch_with(&[(52, Some(b"y".to_vec()))], NOW_MS, Some(503)),
    );
    cleaner.aborted.insert((503, aborted.base_offset));
    marker(503, batch::ControlKind::Abort);
    append(
        &partition,
        &mut batch_with(&[(50, Some(b"b".to_vec()))], NOW_MS, None),
    );
    fill(&partition, &mut model, 60);
    // Within the delete horizon every marker stays.
    cleaner.run(&partition).unwrap().expect("a pass ran");
    assert_eq!(markers(&partition), vec![501, 502, 503]);
    // Past it, the markers of 501 (its record superseded) and 503 (aborted) go; 502's
    // record is still there, so its marker stays.
    clock.advance_ms(61_000);
    fill(&partition, &mut model, 60);
    cleaner.run(&partition).unwrap().expect("a pass ran");
    assert_eq!(markers(&partition), vec![502]);
    let view = read_view(&partition);
    assert!(view
        .iter()
        .any(|(_, key, value)| *key == 51 && value.as_deref() == Some(&b"x"[..])));
    assert!(!view.iter().any(|(_, key, _)| *key == 52));
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Entry>),
    AppendAborted(Vec<Entry>),
    Roll,
    Clean { map_keys: usize },
    PowerLoss { seed: u64 },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let entry = (
        0u8..12,
        prop::option::weighted(0.85, prop::collection::vec(any::<u8>(), 0..300)),
    );
    prop_oneof![
        8 => prop::collection::vec(entry.clone(), 1..8).prop_map(Op::Append),
        1 => prop::collection::vec(entry, 1..4).prop_map(Op::AppendAborted),
        2 => Just(Op::Roll),
        2 => (1usize..20).prop_map(|map_keys| Op::Clean { map_keys }),
        1 => any::<u64>().prop_map(|seed| Op::PowerLoss { seed }),
        1 => (0u64..40_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random keys, values, tombstones and aborted transactions, random cleaner passes and
    /// power losses in between: the log read from the start always matches the model, and
    /// below the cleaner point it is exactly the latest-value view.
    #[test]
    fn the_cleaned_log_matches_a_latest_value_model(ops in prop::collection::vec(op(), 1..60)) {
        let (env, fs, clock) = sim_env(NOW_MS);
        let mut fs = fs;
        let mut partition = open(&env);
        let mut model: BTreeMap<i64, Stored> = BTreeMap::new();
        let mut cleaner = Cleaner::new();
        let mut producer = 1000;
        let mut cleaned_up_to = 0;
        let mut horizon = 0;
        for op in ops {
            match op {
                Op::Append(entries) | Op::AppendAborted(entries) if entries.is_empty() => {}
                Op::Append(entries) => {
                    let now = clock.now_ms();
                    let appended = append(&partition, &mut batch_with(&entries, now, None));
                    for (index, (key, value)) in entries.into_iter().enumerate() {
                        model.insert(appended.base_offset + index as i64, Stored { key, value, aborted: false, timestamp_ms: now });
                    }
                }
                Op::AppendAborted(entries) => {
                    producer += 1;
                    let now = clock.now_ms();
                    let appended = append(&partition, &mut batch_with(&entries, now, Some(producer)));
                    cleaner.aborted.insert((producer, appended.base_offset));
                    for (index, (key, value)) in entries.into_iter().enumerate() {
                        model.insert(appended.base_offset + index as i64, Stored { key, value, aborted: true, timestamp_ms: now });
                    }
                }
                Op::Roll => partition.roll_now().unwrap(),
                Op::Clean { map_keys } => {
                    cleaner.map_bytes_max = map_keys * (1 + MAP_ENTRY_OVERHEAD_BYTES);
                    if let Some(report) = cleaner.run(&partition).unwrap() {
                        cleaned_up_to = cleaned_up_to.max(report.cleaned_up_to);
                        horizon = clock.now_ms() - 60_000;
                        check_view(&read_view(&partition), &model, cleaned_up_to, horizon);
                    }
                }
                Op::PowerLoss { seed } => {
                    let image = fs.crash_image(Torn::Random { seed });
                    fs = image.clone();
                    partition = Partition::open(Path::new(DIR), compact_config(), env_with(Arc::new(image), clock.clone())).unwrap();
                    // Every append was waited for: nothing the model holds is lost.
                    prop_assert_eq!(partition.log_end_offset(), model.keys().next_back().map_or(0, |last| last + 1));
                }
                Op::Advance { ms } => clock.advance_ms(ms as i64),
            }
            check_view_after(&read_view(&partition), &model, cleaned_up_to, 0, horizon);
        }
    }
}
