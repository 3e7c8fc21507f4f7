//! Fault-injection tests of the storage engine over the simulated file system (STYLE.md
//! section 7, crash tests level 1): one or more tests per storage rule of DESIGN.md, named
//! after the rule, plus a full disk (ENOSPC) and a failed write (EIO).
//!
//! [`SimFs`] keeps live bytes (the page cache) apart from durable bytes (as of the last
//! fsync) and directory entries apart from durable entries (as of the last directory fsync),
//! so `crash_image` is exactly what a power loss would leave. A few tests wrap it in
//! [`ControlledFs`] to fail or hold one particular fsync.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wharf_broker::storage::checkpoint;
use wharf_broker::storage::fs::{DirLock, FileHandle, MappedRegion, OpenMode};
use wharf_broker::storage::partition::{StorageEnv, CLEAN_SHUTDOWN_FILE, RECOVERY_POINT_FILE};
use wharf_broker::storage::segment;
use wharf_broker::storage::sim::{SimFs, Torn};
use wharf_broker::storage::testing::{batch_of, env_with, sim_env, Seed};
use wharf_broker::storage::{
    Appended, Error, FlushPolicy, Flusher, Fs, LogConfig, ManualClock, Partition,
};
use wharf_broker::streams::produce::TxnCheck;
use wharf_protocol::batch;

const DIR: &str = "/data/topic-0";
const NOW_MS: i64 = 1_000_000;
const DURABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One record as a consumer sees it: (offset, value).
type Record = (i64, Vec<u8>);

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 256,
        index_bytes_max: 4096,
        retention_ms: None,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    }
}

fn open(env: &StorageEnv, config: LogConfig) -> Arc<Partition> {
    Partition::open(&dir(), config, env.clone()).unwrap_or_else(|error| panic!("open: {error}"))
}

/// Opens the partition on a crash image, as the next start after a crash would.
fn reopen(image: &SimFs, clock: &Arc<ManualClock>) -> Arc<Partition> {
    open(&env_with(Arc::new(image.clone()), clock.clone()), config())
}

fn segment_path(base_offset: i64, extension: &str) -> PathBuf {
    dir().join(segment::file_name(base_offset, extension))
}

/// The value stored at `offset`: it names its offset, so a misplaced record shows.
fn value_of(offset: i64, value_bytes: usize) -> Vec<u8> {
    let mut value = format!("record-{offset:010}|").into_bytes();
    let fill = b'a' + (offset % 26) as u8;
    value.resize(value_bytes.max(value.len()), fill);
    value
}

/// Appends one batch of `record_count` records of `value_bytes` bytes, without waiting for
/// durability. Returns the batch's records too.
fn append(
    partition: &Arc<Partition>,
    record_count: usize,
    value_bytes: usize,
) -> (wharf_broker::storage::Result<Appended>, Vec<Record>) {
    let (mut batch, records) = next_batch(partition, record_count, value_bytes);
    (partition.append(&mut batch), records)
}

/// The next batch for `partition`: `record_count` records of `value_bytes` bytes whose
/// values name their offsets, and those records.
fn next_batch(
    partition: &Partition,
    record_count: usize,
    value_bytes: usize,
) -> (bytes::BytesMut, Vec<Record>) {
    let base = partition.log_end_offset();
    let records: Vec<Record> = (base..base + record_count as i64)
        .map(|offset| (offset, value_of(offset, value_bytes)))
        .collect();
    let values: Vec<&[u8]> = records.iter().map(|record| record.1.as_slice()).collect();
    (batch_of(&values, NOW_MS), records)
}

/// Appends one batch, waits until it is durable, and adds it to `acked`.
fn append_durable(
    partition: &Arc<Partition>,
    record_count: usize,
    value_bytes: usize,
    acked: &mut Vec<Record>,
) -> Appended {
    let (appended, records) = append(partition, record_count, value_bytes);
    let appended = appended.expect("append");
    partition
        .wait_durable_blocking(appended.next_offset, DURABLE_TIMEOUT)
        .expect("wait for durability");
    acked.extend(records);
    appended
}

/// Reads the whole log from its start to the high watermark like a consumer. Every batch
/// must validate, offsets must be contiguous, and every value must be the one its offset
/// was written with.
fn read_all(partition: &Partition) -> Vec<Record> {
    let mut records = Vec::new();
    let mut offset = partition.log_start_offset();
    while offset < partition.high_watermark() {
        let read = partition
            .read(offset, 64 * 1024)
            .unwrap_or_else(|error| panic!("read at {offset}: {error}"));
        for decoded in batch::batches(read.bytes) {
            let decoded = decoded.expect("a read returned a batch that does not validate");
            assert_eq!(decoded.header().base_offset, offset, "a hole or a skip");
            for record in decoded.records() {
                let record = record.expect("records of a valid batch decode");
                let value = record.value.map(|value| value.to_vec()).unwrap_or_default();
                assert_eq!(record.offset, offset);
                assert!(
                    value == value_of(offset, value.len()),
                    "garbage at {offset}"
                );
                records.push((offset, value));
                offset += 1;
            }
        }
    }
    records
}

/// Asserts that `records` start with exactly `acked` (unacknowledged appends may follow).
fn assert_starts_with(records: &[Record], acked: &[Record], context: &str) {
    assert!(
        records.len() >= acked.len() && records[..acked.len()] == *acked,
        "{context}: {} records recovered, the first {} acknowledged ones are not all there",
        records.len(),
        acked.len()
    );
}

/// Disk bytes in use (file data plus reserved blocks): what SimFs counts against its space
/// limit.
fn used_bytes(fs: &SimFs) -> u64 {
    fs.used_bytes()
}

/// `config()` without blocks reserved ahead, so a write that does not fit runs out of space
/// in the middle (with a reservation it would have failed earlier, or fit).
fn config_unreserved() -> LogConfig {
    LogConfig {
        preallocate_ahead_bytes: 0,
        ..config()
    }
}

fn is_failed(result: &wharf_broker::storage::Result<impl std::fmt::Debug>) -> bool {
    matches!(result, Err(Error::Failed { .. }))
}

#[test]
fn rule1_durable_ack_only_after_the_covering_fsync() {
    // Goal: when wait_durable_blocking returns, a power loss at that instant keeps the data.
    // Method: after every acknowledged append (segments roll on the way), build the power
    // loss image at once and reopen it.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let mut acked = Vec::new();
    for round in 0..60 {
        append_durable(&partition, 1 + round % 3, 700, &mut acked);
        assert_power_loss_keeps(&fs, &clock, &acked, round);
    }
    assert!(partition.segment_count() > 1, "the test must cross a roll");
}

#[test]
fn rule1_durable_offset_never_runs_ahead_of_the_disk() {
    // Goal: at any moment, everything below durable_offset() survives a power loss. Method:
    // a writer thread appends and waits; the test thread repeatedly reads durable_offset(),
    // then builds the power-loss image and checks that it holds at least that much.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let writer = {
        let partition = partition.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for round in 0..300 {
                append_durable(&partition, 1 + round % 4, 100 + round % 700, &mut acked);
            }
            acked
        })
    };
    let mut checks = 0;
    while !writer.is_finished() || checks == 0 {
        let durable = partition.durable_offset();
        let image = fs.crash_image(Torn::None);
        let recovered = reopen(&image, &clock);
        assert!(
            recovered.log_end_offset() >= durable,
            "durable offset {durable} but a power loss keeps only {}",
            recovered.log_end_offset()
        );
        assert_eq!(
            read_all(&recovered).len() as i64,
            recovered.log_end_offset()
        );
        checks += 1;
    }
    let acked = writer.join().expect("writer thread");
    assert_eq!(acked.len() as i64, partition.durable_offset());
}

#[test]
fn rule2_new_segment_is_in_the_durable_directory_before_data_in_it_is_acknowledged() {
    // Goal: a roll fsyncs the directory after creating the segment, so an acknowledged
    // record in it cannot vanish with an unsynced directory entry. Method: check the power
    // loss image right after a roll (by hand and by size), before anything is acknowledged.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let mut acked = Vec::new();
    append_durable(&partition, 2, 100, &mut acked);
    partition.roll_now().expect("roll");
    let base = partition.log_end_offset();
    let image = fs.crash_image(Torn::None);
    for extension in ["log", "index", "timeindex"] {
        assert!(image.exists(&segment_path(base, extension)), ".{extension}");
    }
    assert_eq!(reopen(&image, &clock).segment_base_offsets(), vec![0, base]);
    // A roll by size inside append: the new file is durable before the append returns.
    let segments = partition.segment_count();
    loop {
        let (appended, records) = append(&partition, 1, 2000);
        let appended = appended.expect("append");
        if partition.segment_count() > segments {
            let image = fs.crash_image(Torn::None);
            let new_base = *partition.segment_base_offsets().last().expect("segments");
            assert!(image.exists(&segment_path(new_base, "log")));
        }
        partition
            .wait_durable_blocking(appended.next_offset, DURABLE_TIMEOUT)
            .expect("durable");
        acked.extend(records);
        if partition.segment_count() > segments {
            break;
        }
    }
    assert!(read_all(&reopen(&fs.crash_image(Torn::None), &clock)) == acked);
}

#[test]
fn rule2_segments_deleted_by_retention_are_gone_from_the_durable_directory() {
    let (env, fs, clock) = sim_env(NOW_MS);
    let config = LogConfig {
        retention_bytes: Some(8 * 1024),
        ..config()
    };
    let partition = open(&env, config);
    let mut acked = Vec::new();
    for _ in 0..4 {
        for _ in 0..6 {
            append_durable(&partition, 2, 500, &mut acked);
        }
        partition.roll_now().expect("roll");
    }
    let bases = partition.segment_base_offsets();
    let report = partition.apply_retention().expect("retention");
    assert!(report.segments_deleted > 0);
    let image = fs.crash_image(Torn::None);
    for base in &bases[..report.segments_deleted] {
        for extension in ["log", "index", "timeindex"] {
            let path = segment_path(*base, extension);
            assert!(!image.exists(&path), "{} survives a crash", path.display());
        }
    }
    let recovered = reopen(&image, &clock);
    assert_eq!(recovered.log_start_offset(), report.log_start_offset);
    let start = report.log_start_offset;
    let kept: Vec<Record> = acked.into_iter().filter(|r| r.0 >= start).collect();
    assert!(read_all(&recovered) == kept);
}

#[test]
fn rule3_fsync_error_fails_the_partition_for_good() {
    // Goal: after an fsync error nothing is acknowledged any more, writes are refused, and
    // the partition says why; a power loss then keeps exactly what was acknowledged.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let mut acked = Vec::new();
    for _ in 0..5 {
        append_durable(&partition, 2, 100, &mut acked);
    }
    let durable = partition.durable_offset();
    fs.fail_syncs_after(0);
    let (appended, _) = append(&partition, 1, 100);
    let appended = appended.expect("the write itself succeeds");
    let waited = partition.wait_durable_blocking(appended.next_offset, DURABLE_TIMEOUT);
    assert!(is_failed(&waited), "wait after a failed fsync: {waited:?}");
    let reason = partition
        .failure()
        .expect("the partition says why it failed");
    assert!(reason.contains("fsync"), "reason: {reason}");
    assert_eq!(partition.durable_offset(), durable);
    assert_eq!(partition.high_watermark(), durable);
    assert!(is_failed(&append(&partition, 1, 100).0));
    assert!(is_failed(&partition.flush()));
    assert!(is_failed(&partition.roll_now()));
    assert!(is_failed(
        &partition.wait_durable_blocking(durable + 1, DURABLE_TIMEOUT)
    ));
    assert!(partition.close().is_err());
    assert_eq!(partition.durable_offset(), durable);
    let image = fs.crash_image(Torn::None);
    assert!(!image.exists(&dir().join(CLEAN_SHUTDOWN_FILE)));
    assert!(read_all(&reopen(&image, &clock)) == acked);
    let after_process_crash = read_all(&reopen(&fs.process_crash_image(), &clock));
    assert_starts_with(&after_process_crash, &acked, "process crash");
}

#[test]
fn rule3_no_ack_after_a_failed_fsync_even_if_a_later_fsync_succeeds() {
    // Goal: fsyncgate. After a failed fsync the kernel may have dropped the dirty pages and
    // a later fsync can report success for data that is gone, so the partition itself must
    // refuse to acknowledge anything again. Method: a file system that fails exactly one
    // fsync and lets every later one succeed.
    let sim = SimFs::new();
    let fs = ControlledFs::new(sim.clone());
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let partition = open(&env_with(Arc::new(fs.clone()), clock.clone()), config());
    let mut acked = Vec::new();
    append_durable(&partition, 2, 100, &mut acked);
    let durable = partition.durable_offset();
    fs.fail_next_sync();
    let (appended, _) = append(&partition, 1, 100);
    let appended = appended.expect("the write itself succeeds");
    let waited = partition.wait_durable_blocking(appended.next_offset, DURABLE_TIMEOUT);
    assert!(is_failed(&waited), "wait after a failed fsync: {waited:?}");
    assert!(
        is_failed(&partition.flush()),
        "a retried fsync must not ack"
    );
    assert!(is_failed(&append(&partition, 1, 100).0));
    assert_eq!(partition.durable_offset(), durable);
    assert_eq!(partition.high_watermark(), durable);
    assert!(read_all(&reopen(&sim.crash_image(Torn::None), &clock)) == acked);
}

#[test]
fn rule3_concurrent_flush_does_not_ack_past_a_failing_fsync() {
    // Goal: with several flusher threads, two fsyncs of one log can overlap. If the first
    // fails, the second must not acknowledge anything even if it succeeds: on Linux the
    // error of a failed writeback is reported to one fsync caller only, and the other's
    // success says nothing about the pages the failed writeback lost. Method: two flusher
    // threads; the first fsync is held until released and then fails; meanwhile a second
    // append asks for another flush. Nothing may become durable while the first fsync is in
    // flight (a bounded wait that must time out: the event checked is one that must not
    // happen), and after it fails nothing is acknowledged.
    let sim = SimFs::new();
    let fs = ControlledFs::new(sim.clone());
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let env = StorageEnv {
        fs: Arc::new(fs.clone()),
        clock: clock.clone(),
        flusher: Flusher::spawn(2),
    };
    let partition = open(&env, config());
    let mut acked = Vec::new();
    append_durable(&partition, 2, 100, &mut acked);
    let durable = partition.durable_offset();
    let (entered, release) = fs.hold_next_sync_then_fail();
    let (first, _) = append(&partition, 1, 100);
    let first = first.expect("append");
    entered
        .recv_timeout(DURABLE_TIMEOUT)
        .expect("the flusher starts the first fsync");
    let (second, _) = append(&partition, 1, 100);
    let second = second.expect("append");
    let early = partition.wait_durable_blocking(second.next_offset, Duration::from_millis(300));
    assert!(
        matches!(early, Err(Error::TimedOut { .. })),
        "acknowledged while an earlier fsync was still in flight: {early:?}"
    );
    release.send(()).expect("release the first fsync");
    for next_offset in [first.next_offset, second.next_offset] {
        let waited = partition.wait_durable_blocking(next_offset, DURABLE_TIMEOUT);
        assert!(is_failed(&waited), "wait for {next_offset}: {waited:?}");
    }
    assert!(is_failed(&partition.flush()));
    assert_eq!(partition.durable_offset(), durable);
    assert_eq!(partition.high_watermark(), durable);
}

#[test]
fn rule3_failed_fsync_at_close_fails_the_partition() {
    // Goal: the fsync of close (sealing the active segment) is an fsync like any other: if
    // it fails, a later flush must not report the data as durable. Method: an interval flush
    // policy whose interval never comes, so the data is unsynced when close runs, and a file
    // system that fails exactly that one fsync.
    let sim = SimFs::new();
    let fs = ControlledFs::new(sim.clone());
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let config = LogConfig {
        flush: FlushPolicy::Interval {
            interval_ms: 3_600_000,
        },
        ..config()
    };
    let partition = open(&env_with(Arc::new(fs.clone()), clock), config);
    let (appended, _) = append(&partition, 2, 100);
    appended.expect("append");
    let durable = partition.durable_offset();
    fs.fail_next_sync();
    assert!(partition.close().is_err());
    assert!(
        partition.failure().is_some(),
        "close's failed fsync is recorded"
    );
    assert!(
        is_failed(&partition.flush()),
        "a retried fsync must not ack"
    );
    assert_eq!(partition.durable_offset(), durable);
    assert!(!sim.exists(&dir().join(CLEAN_SHUTDOWN_FILE)));
}

#[test]
fn rule3_failed_fsync_while_rolling_fails_the_partition() {
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let mut acked = Vec::new();
    append_durable(&partition, 2, 100, &mut acked);
    let (appended, _) = append(&partition, 1, 100);
    appended.expect("append");
    fs.fail_syncs_after(0);
    assert!(partition.roll_now().is_err());
    assert!(partition.failure().is_some());
    assert!(is_failed(&append(&partition, 1, 100).0));
    // The unwaited append may have been fsynced before the fault: acked is a prefix.
    let recovered = read_all(&reopen(&fs.crash_image(Torn::None), &clock));
    assert_starts_with(&recovered, &acked, "power loss after a failed roll");
}

#[test]
fn rule3_failed_directory_fsync_after_retention_fails_the_partition() {
    // Goal: a directory fsync is an fsync: when the one that makes segment deletions durable
    // fails, the partition fails like after any other fsync error.
    let (env, fs, _) = sim_env(NOW_MS);
    let config = LogConfig {
        retention_bytes: Some(4 * 1024),
        ..config()
    };
    let partition = open(&env, config);
    let mut acked = Vec::new();
    for _ in 0..3 {
        for _ in 0..6 {
            append_durable(&partition, 2, 500, &mut acked);
        }
        partition.roll_now().expect("roll");
    }
    fs.fail_syncs_after(0);
    assert!(partition.apply_retention().is_err());
    let reason = partition
        .failure()
        .expect("the partition says why it failed");
    assert!(reason.contains("sync"), "reason: {reason}");
    assert!(is_failed(&append(&partition, 1, 100).0));
}

#[test]
fn rule3_failing_any_fsync_never_loses_an_acknowledged_record() {
    // Goal: whichever fsync fails (segment data, index msync, directory), every record
    // acknowledged before survives a power loss, and nothing is acknowledged after.
    // Method: for each n, let n fsyncs succeed and fail the rest, during a workload of
    // appends and rolls; then reopen the power-loss image.
    let mut workload_without_failure = false;
    for syncs_ok in 0..100 {
        let (env, fs, clock) = sim_env(NOW_MS);
        let partition = open(&env, config());
        fs.fail_syncs_after(syncs_ok);
        let mut acked = Vec::new();
        let mut failed_at = None;
        for round in 0..40 {
            let (appended, records) = append(&partition, 1 + round % 2, 300);
            let result = appended.and_then(|appended| {
                let roll = if round % 8 == 7 {
                    partition.roll_now()
                } else {
                    Ok(())
                };
                partition.wait_durable_blocking(appended.next_offset, DURABLE_TIMEOUT)?;
                roll
            });
            match (result, failed_at) {
                (Ok(()), None) => acked.extend(records),
                (Ok(()), Some(first)) => {
                    panic!("syncs_ok {syncs_ok}: round {round} acked after round {first} failed")
                }
                (Err(error), _) => {
                    eprintln!(
                        "syncs_ok {syncs_ok}, round {round}: {error} / {:?}",
                        partition.failure()
                    );
                    failed_at.get_or_insert(round);
                }
            }
        }
        if failed_at.is_some() {
            assert!(partition.failure().is_some(), "syncs_ok {syncs_ok}");
        } else {
            workload_without_failure = true;
        }
        let recovered = read_all(&reopen(&fs.crash_image(Torn::None), &clock));
        assert_starts_with(&recovered, &acked, &format!("syncs_ok {syncs_ok}"));
    }
    assert!(
        workload_without_failure,
        "some run must do all its fsyncs, so every fsync of the workload was failed once"
    );
}

#[test]
fn rule4_batch_with_a_bad_crc_at_the_tail_is_cut_on_recovery() {
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let mut acked = Vec::new();
    for _ in 0..5 {
        append_durable(&partition, 2, 100, &mut acked);
    }
    let last_base = acked[acked.len() - 2].0;
    drop(partition);
    let image = fs.process_crash_image();
    let path = segment_path(0, "log");
    let mut log = image.live_bytes(&path).expect("log");
    let length = log.len();
    log[length - 3] ^= 0x40;
    image.overwrite(&path, &log).expect("overwrite");
    let recovered = reopen(&image, &clock);
    let kept: Vec<Record> = acked.into_iter().filter(|r| r.0 < last_base).collect();
    assert!(read_all(&recovered) == kept);
    let valid = image.live_bytes(&path).expect("log").len();
    assert!(valid < length, "the bad batch is cut from the file");
}

#[test]
fn rule5_damage_in_a_sealed_segment_is_reported_not_cut_or_skipped() {
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let mut acked = Vec::new();
    for _ in 0..2 {
        for _ in 0..10 {
            append_durable(&partition, 2, 100, &mut acked);
        }
        partition.roll_now().expect("roll");
    }
    append_durable(&partition, 2, 100, &mut acked);
    let bases = partition.segment_base_offsets();
    drop(partition);
    let image = fs.process_crash_image();
    let path = segment_path(bases[1], "log");
    let mut log = image.live_bytes(&path).expect("log");
    let damaged_batch = 4;
    let position = {
        let mut position = 0;
        for _ in 0..damaged_batch {
            let header = batch::parse_header(&log[position..])
                .expect("valid")
                .expect("whole");
            position += header.total_bytes();
        }
        position
    };
    let damaged = bases[1] + 2 * damaged_batch as i64;
    log[position + batch::BATCH_HEADER_BYTES + 2] ^= 0x01;
    image.overwrite(&path, &log).expect("overwrite");
    let recovered = reopen(&image, &clock);
    assert_eq!(image.live_bytes(&path).expect("log").len(), log.len());
    let mut offset = 0;
    let error = loop {
        match recovered.read(offset, 4096) {
            Ok(read) => {
                let batches: Vec<_> = batch::batches(read.bytes).collect();
                let last = batches.last().expect("a batch").as_ref().expect("valid");
                offset = last.header().next_offset();
            }
            Err(error) => break error,
        }
    };
    assert_eq!(offset, damaged, "a consumer stops at the damaged batch");
    assert!(matches!(error, Error::Corrupt { .. }), "{error:?}");
    assert!(recovered.read(bases[2], 4096).is_ok());
    assert_eq!(recovered.log_end_offset(), acked.len() as i64);
}

#[test]
fn rule6_failed_checkpoint_write_leaves_the_old_file_readable() {
    // Goal: a metadata file is replaced atomically: whichever step of the replacement fails
    // (the temp file's fsync, or the directory fsync after the rename), a power loss leaves
    // the old file, complete and valid.
    const MAGIC: [u8; 4] = *b"WTST";
    let dir = dir();
    let path = dir.join("state");
    for syncs_ok in 0..2 {
        let fs = SimFs::new();
        fs.create_dir_all(&dir).expect("mkdir");
        checkpoint::write(&fs, &dir, "state", MAGIC, 1, 1, b"old").expect("first write");
        fs.fail_syncs_after(syncs_ok);
        let result = checkpoint::write(&fs, &dir, "state", MAGIC, 1, 2, b"new payload");
        assert!(result.is_err(), "syncs_ok {syncs_ok}");
        let image = fs.crash_image(Torn::None);
        let read_back = checkpoint::read(&image, &path, MAGIC)
            .expect("the old file is valid")
            .expect("the old file exists");
        assert_eq!(read_back.payload, b"old", "syncs_ok {syncs_ok}");
    }
}

#[test]
fn rule6_failed_fsync_during_close_never_leaves_a_lying_marker() {
    // Goal: close writes the clean-shutdown marker last; whichever fsync of close fails, a
    // power loss leaves either a marker that tells the truth or none, and the log reopens
    // with every acknowledged record.
    for syncs_ok in 0..16 {
        let (env, fs, clock) = sim_env(NOW_MS);
        let partition = open(&env, config());
        let mut acked = Vec::new();
        for round in 0..12 {
            append_durable(&partition, 1 + round % 2, 300, &mut acked);
        }
        fs.fail_syncs_after(syncs_ok);
        let closed = partition.close();
        let image = fs.crash_image(Torn::None);
        let marker = image.exists(&dir().join(CLEAN_SHUTDOWN_FILE));
        assert_eq!(closed.is_ok(), marker, "syncs_ok {syncs_ok}: {closed:?}");
        let recovered = reopen(&image, &clock);
        assert!(read_all(&recovered) == acked, "syncs_ok {syncs_ok}");
    }
}

#[test]
fn rule7_zero_filled_tail_is_not_taken_for_data() {
    // Goal: a file's size is not the length of its valid data: a log extended with zeros
    // (preallocation, or a file system that grew the file before the data reached it)
    // recovers to its last valid batch, after an unclean and after a clean shutdown.
    for clean in [false, true] {
        let (env, fs, clock) = sim_env(NOW_MS);
        let partition = open(&env, config());
        let mut acked = Vec::new();
        for _ in 0..6 {
            append_durable(&partition, 2, 100, &mut acked);
        }
        if clean {
            partition.close().expect("close");
        }
        drop(partition);
        let image = fs.process_crash_image();
        let path = segment_path(0, "log");
        let valid = image.live_bytes(&path).expect("log").len() as u64;
        let file = image
            .open_file(&path, OpenMode::Existing)
            .expect("open log");
        file.set_len(valid + 64 * 1024).expect("extend");
        let recovered = reopen(&image, &clock);
        assert!(read_all(&recovered) == acked, "clean {clean}");
        assert_eq!(file.len_bytes().expect("len"), valid, "clean {clean}");
        let mut after = acked.clone();
        let appended = append_durable(&recovered, 1, 10, &mut after);
        assert_eq!(appended.base_offset, acked.len() as i64);
    }
}

#[test]
fn rule8_huge_batch_length_in_the_tail_is_cut_without_trusting_it() {
    // Goal: a length read from disk is checked before anything is sized by it: a header in
    // the tail claiming batch_length = i32::MAX (2 GiB), or the largest legal length past the
    // end of the file, is cut at once. Method: append such a header after valid batches and
    // check that recovery is quick and keeps exactly the valid batches.
    let largest_legal = (batch::BATCH_BYTES_MAX - batch::LOG_OVERHEAD_BYTES) as i32;
    for claimed in [i32::MAX, largest_legal] {
        let (env, fs, clock) = sim_env(NOW_MS);
        let partition = open(&env, config());
        let mut acked = Vec::new();
        for _ in 0..4 {
            append_durable(&partition, 2, 100, &mut acked);
        }
        drop(partition);
        let image = fs.process_crash_image();
        let path = segment_path(0, "log");
        let mut log = image.live_bytes(&path).expect("log");
        let valid = log.len();
        let mut header = log[..batch::BATCH_HEADER_BYTES].to_vec();
        header[batch::BASE_OFFSET_POS..batch::BATCH_LENGTH_POS]
            .copy_from_slice(&(acked.len() as i64).to_be_bytes());
        header[batch::BATCH_LENGTH_POS..batch::PARTITION_LEADER_EPOCH_POS]
            .copy_from_slice(&claimed.to_be_bytes());
        log.extend_from_slice(&header);
        log.extend_from_slice(&[0x33; 1000]);
        image.overwrite(&path, &log).expect("overwrite");
        let started = Instant::now();
        let recovered = reopen(&image, &clock);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "recovery took {took:?}");
        assert!(read_all(&recovered) == acked, "claimed {claimed}");
        assert_eq!(image.live_bytes(&path).expect("log").len(), valid);
    }
}

#[test]
fn rule9_roll_and_retention_by_age_follow_the_injected_clock() {
    // Goal: time sits behind the Clock trait, so age-based behavior is tested without
    // sleeping (I/O behind the Fs trait is what every other test here relies on). The unit
    // test `segments_roll_by_age` in broker/src/storage/partition/tests.rs covers the roll
    // edge too.
    let (env, _, clock) = sim_env(NOW_MS);
    let config = LogConfig {
        segment_age_ms_max: Some(60_000),
        retention_ms: Some(600_000),
        ..config()
    };
    let partition = open(&env, config);
    let mut acked = Vec::new();
    append_durable(&partition, 1, 10, &mut acked);
    clock.advance_ms(59_999);
    append_durable(&partition, 1, 10, &mut acked);
    assert_eq!(partition.segment_count(), 1);
    clock.advance_ms(1);
    append_durable(&partition, 1, 10, &mut acked);
    assert_eq!(partition.segment_base_offsets(), vec![0, 2]);
    // Records are stamped NOW_MS; retention deletes the sealed segment once it is older.
    clock.set_ms(NOW_MS + 600_000);
    assert_eq!(
        partition
            .apply_retention()
            .expect("retention")
            .segments_deleted,
        0
    );
    clock.set_ms(NOW_MS + 600_001);
    assert_eq!(
        partition
            .apply_retention()
            .expect("retention")
            .segments_deleted,
        1
    );
    assert_eq!(partition.log_start_offset(), 2);
}

#[test]
fn full_disk_mid_write_fails_the_append_and_publishes_nothing() {
    // Goal: ENOSPC in the middle of an append (a short write) fails that append with an
    // error that says "disk full", publishes nothing, keeps the log readable, and once space
    // is freed the log continues at the right offset; a crash at either point recovers.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config_unreserved());
    let mut acked = Vec::new();
    for _ in 0..5 {
        append_durable(&partition, 2, 200, &mut acked);
    }
    let end = partition.log_end_offset();
    fs.set_space_bytes(Some(used_bytes(&fs) + 300));
    let (appended, _) = append(&partition, 4, 300);
    let error = appended.expect_err("the disk is full");
    assert!(error.is_disk_full(), "{error:?}");
    assert_eq!(partition.log_end_offset(), end);
    assert_eq!(partition.high_watermark(), end);
    assert!(partition.failure().is_none(), "a full disk is not fatal");
    assert!(read_all(&partition) == acked);
    // A crash now (power loss or process crash) recovers exactly the acknowledged records.
    assert!(read_all(&reopen(&fs.crash_image(Torn::None), &clock)) == acked);
    assert!(read_all(&reopen(&fs.process_crash_image(), &clock)) == acked);
    // Space freed: the next (smaller) append lands at the old end, over the partial write.
    fs.set_space_bytes(None);
    let appended = append_durable(&partition, 1, 50, &mut acked);
    assert_eq!(appended.base_offset, end);
    assert!(read_all(&partition) == acked);
    assert!(read_all(&reopen(&fs.crash_image(Torn::None), &clock)) == acked);
    assert!(read_all(&reopen(&fs.process_crash_image(), &clock)) == acked);
}

#[test]
fn full_disk_after_whole_batches_does_not_resurrect_them_after_a_crash() {
    // Goal: a multi-batch append whose first batches fit on the disk but whose last does not
    // fails as a whole, and a process crash right after cannot bring the batches that did
    // reach the file back: the producer was told they failed. Method: leave room for exactly
    // the first batch plus a few bytes, append two batches in one call, crash, reopen.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config_unreserved());
    let mut acked = Vec::new();
    append_durable(&partition, 2, 100, &mut acked);
    let end = partition.log_end_offset();
    let first = batch_of(&[&[b'a'; 100]], NOW_MS);
    let mut both = first.clone();
    both.extend_from_slice(&batch_of(&[&[b'b'; 400]], NOW_MS));
    fs.set_space_bytes(Some(used_bytes(&fs) + first.len() as u64 + 10));
    let error = partition.append(&mut both).expect_err("the disk is full");
    assert!(error.is_disk_full(), "{error:?}");
    assert_eq!(partition.log_end_offset(), end);
    fs.set_space_bytes(None);
    let recovered = reopen(&fs.process_crash_image(), &clock);
    assert_eq!(recovered.log_end_offset(), end, "a failed batch came back");
    assert!(read_all(&recovered) == acked);
}

/// `config()` with segments large enough that the blocks reserved ahead (64 KiB for a young
/// segment) end well before the segment does.
fn config_large_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4 * 1024 * 1024,
        index_bytes_max: 64 * 1024,
        ..config()
    }
}

#[test]
fn blocks_reserved_ahead_take_appends_on_a_full_disk_and_a_failed_reservation_is_no_error() {
    // Goal: the blocks reserved ahead of the active segment's end hold later appends even
    // when the disk has filled up meanwhile; when there is room for an append but not for a
    // new reservation, the append still succeeds; only a write that fits nowhere fails, with
    // a disk-full error, publishing nothing.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config_large_segments());
    let mut acked = Vec::new();
    append_durable(&partition, 1, 1000, &mut acked);
    let log = segment_path(0, "log");
    let reserved = fs.reserved_bytes(&log).expect("the log exists");
    assert!(
        reserved >= 60 * 1024,
        "a young segment reserves 64 KiB ahead: {reserved}"
    );
    fs.set_space_bytes(Some(used_bytes(&fs)));
    let batch_bytes = fs.live_bytes(&log).expect("the log exists").len() as u64;
    let fitting = reserved / batch_bytes;
    for _ in 0..fitting {
        append_durable(&partition, 1, 1000, &mut acked);
    }
    assert!(fs.reserved_bytes(&log).expect("the log exists") < batch_bytes);
    let end = partition.log_end_offset();
    let (appended, _) = append(&partition, 1, 1000);
    let error = appended.expect_err("neither reserved nor free space is left");
    assert!(error.is_disk_full(), "{error:?}");
    assert_eq!(partition.log_end_offset(), end);
    assert!(partition.failure().is_none(), "a full disk is not fatal");
    assert!(read_all(&partition) == acked);
    // Room for two more appends, far less than a reservation: the reservation fails after
    // reserving what fitted, and the append goes in anyway.
    fs.set_space_bytes(Some(used_bytes(&fs) + 2 * batch_bytes));
    let appended = append_durable(&partition, 1, 1000, &mut acked);
    assert_eq!(appended.base_offset, end);
    assert!(read_all(&partition) == acked);
    let left = fs.reserved_bytes(&log).expect("the log exists");
    assert!(left > 0, "the failed reservation left blocks behind");
    // Sealing releases them too (with room for the next segment's index files, which are
    // allocated when it is created).
    fs.set_space_bytes(None);
    partition.roll_now().expect("roll");
    assert_eq!(fs.reserved_bytes(&log), Some(0), "sealed");
    assert!(read_all(&reopen(&fs.crash_image(Torn::None), &clock)) == acked);
}

#[test]
fn sealing_recovering_and_closing_release_the_blocks_reserved_ahead() {
    // Goal: reserved blocks never outlive the active segment: a roll releases the sealed
    // segment's, recovery after a crash releases what the crashed process reserved, and a
    // clean close releases the active segment's.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config_large_segments());
    let mut acked = Vec::new();
    append_durable(&partition, 3, 500, &mut acked);
    let first_log = segment_path(0, "log");
    assert!(fs.reserved_bytes(&first_log).expect("first log") > 0);
    partition.roll_now().expect("roll");
    assert_eq!(fs.reserved_bytes(&first_log), Some(0), "sealed");
    append_durable(&partition, 3, 500, &mut acked);
    let second_log = segment_path(partition.log_end_offset() - 3, "log");
    assert!(fs.reserved_bytes(&second_log).expect("second log") > 0);
    for (image, crash) in [
        (fs.process_crash_image(), "process crash"),
        (fs.crash_image(Torn::None), "power loss"),
    ] {
        assert!(image.reserved_bytes(&second_log).expect("second log") > 0);
        let recovered = open(
            &env_with(Arc::new(image.clone()), clock.clone()),
            config_large_segments(),
        );
        assert_eq!(
            image.reserved_bytes(&second_log),
            Some(0),
            "recovered: {crash}"
        );
        assert!(read_all(&recovered) == acked, "{crash}");
    }
    partition.close().expect("close");
    assert_eq!(fs.reserved_bytes(&second_log), Some(0), "closed");
}

/// The partition's recovery point as the file says, if there is one.
fn recovery_point(fs: &SimFs) -> Option<i64> {
    let path = dir().join(RECOVERY_POINT_FILE);
    let found = checkpoint::read(fs, &path, *b"WRCP").expect("readable")?;
    Some(i64::from_be_bytes(
        found.payload.try_into().expect("8 bytes"),
    ))
}

/// A simulated file system whose flusher has no threads: nothing is fsynced unless the
/// test flushes or closes, so rolled segments stay unsealed until then.
fn idle_env() -> (StorageEnv, SimFs, Arc<ManualClock>) {
    let sim = SimFs::new();
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let env = StorageEnv {
        fs: Arc::new(sim.clone()),
        clock: clock.clone(),
        flusher: Flusher::idle(),
    };
    (env, sim, clock)
}

/// Appends one batch that must succeed and adds its records to `appended`.
fn append_ok(
    partition: &Arc<Partition>,
    record_count: usize,
    value_bytes: usize,
    appended: &mut Vec<Record>,
) {
    let (result, records) = append(partition, record_count, value_bytes);
    result.expect("append");
    appended.extend(records);
}

fn config_never() -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Never,
        ..config()
    }
}

/// Polls `condition` for up to 10 s.
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_roll_under_flush_never_leaves_the_fsync_to_the_flusher() {
    // Goal: under flush = never a roll does not wait for the fsync of everything the old
    // segment holds; the flusher seals it while appends go on, and a failure of that fsync
    // still fails the partition (rule 3). Method: hold the rolled segment's fsync; the roll,
    // and an append after it, must finish meanwhile.
    let sim = SimFs::new();
    let fs = ControlledFs::new(sim.clone());
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let partition = open(
        &env_with(Arc::new(fs.clone()), clock.clone()),
        config_never(),
    );
    // A first roll writes the recovery point; once the flusher has sealed that segment
    // (durable offset) and moved the point on, the next roll writes no file.
    append(&partition, 2, 100).0.expect("append");
    partition.roll_now().expect("roll");
    let first_end = partition.log_end_offset();
    wait_until(
        "the first rolled segment is sealed and the point moved on",
        || recovery_point(&sim) == Some(first_end),
    );
    append(&partition, 2, 100).0.expect("append");
    let second_end = partition.log_end_offset();
    let (entered, release) = fs.hold_next_sync_then_fail();
    let (rolled_tx, rolled_rx) = mpsc::channel();
    let roller = partition.clone();
    std::thread::spawn(move || {
        let _ = rolled_tx.send(roller.roll_now());
    });
    let rolled = rolled_rx.recv_timeout(Duration::from_secs(10));
    let started = entered.recv_timeout(Duration::from_secs(10));
    if rolled.is_err() {
        release.send(()).expect("release the held fsync");
        panic!("the roll waited for the fsync of the segment it rolled");
    }
    let appended = append(&partition, 1, 100).0;
    release.send(()).expect("release the held fsync");
    rolled.expect("rolled").expect("roll");
    started.expect("the flusher fsyncs the rolled segment");
    appended.expect("an append goes in while the rolled segment is fsynced");
    wait_until("the failed seal fails the partition", || {
        partition.failure().is_some()
    });
    assert!(is_failed(&append(&partition, 1, 100).0));
    assert_eq!(partition.durable_offset(), first_end);
    assert!(partition.durable_offset() < second_end);
}

#[test]
fn a_long_seal_does_not_hold_up_group_commit_of_other_partitions() {
    // Goal: the seal of a segment rolled under flush = never fsyncs the whole segment
    // (seconds for a GiB); it runs on the flusher's sealer thread, so a flush = always
    // partition sharing the flusher still gets its acks=all fsyncs meanwhile. Method: one
    // flush thread, the seal's fsync held, an always append waited for.
    let sim = SimFs::new();
    let fs = ControlledFs::new(sim.clone());
    let env = StorageEnv {
        fs: Arc::new(fs.clone()),
        clock: Arc::new(ManualClock::new(NOW_MS)),
        flusher: Flusher::spawn(1),
    };
    let never = open(&env, config_never());
    let always = Partition::open(Path::new("/data/other-0"), config(), env.clone())
        .unwrap_or_else(|error| panic!("open: {error}"));
    append(&never, 2, 100).0.expect("append");
    never.roll_now().expect("roll");
    let first_end = never.log_end_offset();
    wait_until(
        "the first rolled segment is sealed and the point moved on",
        || recovery_point(&sim) == Some(first_end),
    );
    append(&never, 2, 100).0.expect("append");
    let (entered, release) = fs.hold_next_sync_then_fail();
    never.roll_now().expect("roll");
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the sealer fsyncs the rolled segment");
    let (appended, _) = append(&always, 1, 100);
    let waited = always.wait_durable_blocking(
        appended.expect("append").next_offset,
        Duration::from_secs(5),
    );
    release.send(()).expect("release the held fsync");
    waited.expect("the always partition's fsync ran while the seal was held");
}

#[test]
fn power_loss_after_rolls_without_fsync_recovers_a_prefix_of_whole_batches() {
    // Goal: segments rolled under flush = never are not fsynced until the flusher seals them,
    // so a power loss may tear any of them. Recovery must then keep a prefix of whole,
    // valid batches: the first torn segment becomes the active one and the segments after
    // it are deleted; nothing is served as corrupt and nothing fsynced (here, what an
    // explicit flush covered) is lost. Method: no flusher threads, so only the explicit
    // flush makes anything durable; many rolls; power losses that keep a random part of each
    // unsynced tail, with garbage at its end. Randomized: WHARF_TEST_SEED replays.
    let seed = Seed::from_env();
    let mut rng = seed.rng();
    for round in 0..40 {
        let (env, sim, clock) = idle_env();
        let partition = open(&env, config_never());
        let mut appended = Vec::new();
        let mut durable_end = 0;
        for step in 0..(20 + rng.below(60)) {
            let (result, records) = append(
                &partition,
                1 + rng.below(4) as usize,
                50 + rng.below(3000) as usize,
            );
            result.expect("append");
            appended.extend(records);
            if step % 7 == 6 || rng.below(8) == 0 {
                partition.roll_now().expect("roll");
            }
            if step == 10 {
                partition.flush().expect("flush");
                durable_end = partition.log_end_offset();
                assert_eq!(partition.durable_offset(), durable_end);
            }
        }
        assert!(
            partition.segment_count() > 2,
            "round {round}: rolls happened"
        );
        let torn = if round % 5 == 0 {
            Torn::None
        } else {
            Torn::Random {
                seed: rng.next_u64(),
            }
        };
        let image = sim.crash_image(torn);
        let recovered = open(
            &env_with(Arc::new(image.clone()), clock.clone()),
            config_never(),
        );
        let kept = read_all(&recovered);
        let context = format!("round {round}, seed {seed:?}, {torn:?}");
        assert!(
            kept.len() as i64 >= durable_end,
            "{context}: lost fsynced records"
        );
        assert_starts_with(&appended, &kept, &context);
        assert_eq!(recovered.log_end_offset(), kept.len() as i64, "{context}");
        // The log goes on from there, and a second recovery keeps what the first did.
        let mut after = kept.clone();
        append_durable(&recovered, 1, 10, &mut after);
        recovered.flush().expect("flush");
        drop(recovered);
        let again = open(
            &env_with(Arc::new(image.crash_image(Torn::None)), clock.clone()),
            config_never(),
        );
        assert!(read_all(&again) == after, "{context}: second recovery");
    }
}

#[test]
fn a_process_crash_after_rolls_without_fsync_keeps_every_segment_whole() {
    // Goal: a process crash (SIGKILL) keeps the page cache, so segments rolled under
    // flush = never and not yet sealed come back whole: recovery seals them and keeps every
    // segment and record, including one whose tail holds garbage from a failed write.
    let (env, sim, clock) = idle_env();
    let partition = open(&env, config_never());
    let mut appended = Vec::new();
    for _ in 0..4 {
        for _ in 0..3 {
            append_ok(&partition, 2, 400, &mut appended);
        }
        partition.roll_now().expect("roll");
    }
    let segment_count = partition.segment_count();
    drop(partition);
    let image = sim.process_crash_image();
    // Garbage after the last batch of the first rolled segment, as a failed write whose cut
    // also failed would leave.
    let first = segment_path(0, "log");
    let mut log = image.live_bytes(&first).expect("first log");
    log.extend_from_slice(&[0x5a; 300]);
    image.overwrite(&first, &log).expect("overwrite");
    let recovered = open(
        &env_with(Arc::new(image.clone()), clock.clone()),
        config_never(),
    );
    assert!(read_all(&recovered) == appended);
    assert_eq!(
        recovered.segment_count(),
        segment_count,
        "no segment was cut"
    );
    assert_eq!(
        recovery_point(&image),
        Some(*recovered.segment_base_offsets().last().expect("a segment"))
    );
}

#[test]
fn a_damaged_recovery_point_cuts_no_sealed_segment() {
    // Goal: when the recovery point fails its checks, recovery does not guess that sealed
    // segments are unsynced: cutting one at a damaged batch would delete every later
    // segment. It treats them as sealed, so the damage is refused on read (rule 5) and the
    // later segments stay; and it writes a good recovery point.
    let (env, sim, clock) = sim_env(NOW_MS);
    let partition = open(&env, config_never());
    let mut acked = Vec::new();
    for _ in 0..3 {
        append_durable(&partition, 2, 300, &mut acked);
        partition.roll_now().expect("roll");
    }
    partition.flush().expect("flush");
    let bases = partition.segment_base_offsets();
    drop(partition);
    let image = sim.process_crash_image();
    let path = dir().join(RECOVERY_POINT_FILE);
    let mut damaged = image.live_bytes(&path).expect("recovery point");
    damaged[20] ^= 0xff;
    image.overwrite(&path, &damaged).expect("overwrite");
    let first = segment_path(0, "log");
    let mut log = image.live_bytes(&first).expect("first log");
    log[100] ^= 0x01;
    image.overwrite(&first, &log).expect("overwrite");
    let recovered = open(
        &env_with(Arc::new(image.clone()), clock.clone()),
        config_never(),
    );
    assert_eq!(
        recovered.segment_base_offsets(),
        bases,
        "no segment was cut or deleted"
    );
    assert!(matches!(
        recovered.read(0, 64 * 1024),
        Err(Error::Corrupt { .. })
    ));
    let later = recovered
        .read(bases[1], 64 * 1024)
        .expect("later segments read");
    assert!(!later.bytes.is_empty());
    assert_eq!(recovery_point(&image), bases.last().copied());
}

#[test]
fn retention_may_delete_rolled_segments_before_their_seal() {
    // Goal: retention can delete a segment rolled under flush = never before the flusher
    // sealed it; the later seal (of the deleted file) and the recovery point stay correct,
    // and a power loss afterwards recovers the retained records.
    let (env, sim, clock) = idle_env();
    let config = LogConfig {
        retention_bytes: Some(1),
        ..config_never()
    };
    let partition = open(&env, config.clone());
    let mut appended = Vec::new();
    for _ in 0..4 {
        append_ok(&partition, 2, 500, &mut appended);
        partition.roll_now().expect("roll");
    }
    append_ok(&partition, 2, 500, &mut appended);
    let report = partition.apply_retention().expect("retention");
    assert_eq!(report.segments_deleted, 4, "every sealed segment goes");
    partition
        .flush()
        .expect("the seals of deleted segments succeed");
    assert_eq!(partition.durable_offset(), partition.log_end_offset());
    let start = partition.log_start_offset();
    assert_eq!(recovery_point(&sim), Some(start));
    let kept: Vec<Record> = appended
        .into_iter()
        .filter(|record| record.0 >= start)
        .collect();
    let recovered = open(
        &env_with(Arc::new(sim.crash_image(Torn::None)), clock.clone()),
        config,
    );
    assert!(read_all(&recovered) == kept);
}

#[test]
fn a_power_loss_at_any_fsync_of_rolls_and_seals_recovers_a_prefix() {
    // Goal: the write order of deferred seals and the recovery point holds at every step:
    // whichever fsync (segment, checkpoint temp file or directory) is the last to reach the
    // disk before a power loss, recovery serves a prefix of whole batches holding at least
    // what a successful flush covered, and no corrupt byte. Method: the disk stops taking
    // fsyncs after the n-th, for every n; from then on the partition fails, and a power loss
    // with torn tails follows. Randomized tails: WHARF_TEST_SEED replays.
    let seed = Seed::from_env();
    let mut rng = seed.rng();
    for syncs in 0..70 {
        let (env, sim, clock) = idle_env();
        let partition = open(&env, config_never());
        sim.fail_syncs_after(syncs);
        let mut appended = Vec::new();
        let mut durable_end = 0;
        for step in 0..40 {
            let (result, records) = append(&partition, 1 + step % 3, 200 + 150 * step);
            if result.is_err() {
                break;
            }
            appended.extend(records);
            if step % 4 == 3 && partition.roll_now().is_err() {
                break;
            }
            if step % 6 == 5 {
                match partition.flush() {
                    Ok(()) => durable_end = partition.log_end_offset(),
                    Err(_) => break,
                }
            }
        }
        let image = sim.crash_image(Torn::Random {
            seed: rng.next_u64(),
        });
        let recovered = open(&env_with(Arc::new(image), clock.clone()), config_never());
        let kept = read_all(&recovered);
        let context = format!("fsyncs allowed {syncs}, seed {seed:?}");
        assert!(
            kept.len() as i64 >= durable_end,
            "{context}: lost flushed records"
        );
        assert_starts_with(&appended, &kept, &context);
    }
}

#[test]
fn reopening_under_flush_always_removes_the_recovery_point() {
    // Goal: a recovery point left by a run under flush = never would go stale under always
    // (whose rolls do not move it) and let a later recovery cut sealed segments instead of
    // refusing damage in them (rule 5); opening under always removes it.
    let (env, sim, _clock) = sim_env(NOW_MS);
    let partition = open(&env, config_never());
    let mut acked = Vec::new();
    for _ in 0..3 {
        append_durable(&partition, 2, 300, &mut acked);
        partition.roll_now().expect("roll");
    }
    partition.close().expect("close");
    drop(partition);
    assert!(recovery_point(&sim).is_some(), "written under never");
    let partition = open(&env, config());
    assert_eq!(recovery_point(&sim), None, "removed under always");
    assert!(read_all(&partition) == acked);
}

#[test]
fn a_flush_or_a_close_covers_the_segments_rolled_before_it() {
    // Goal: rolled segments whose seal is still pending are fsynced by the next flush
    // (flush = interval) or by a clean close (flush = never) before it reports durability,
    // so a power loss right after keeps everything.
    for policy in [
        FlushPolicy::Interval {
            interval_ms: 3_600_000,
        },
        FlushPolicy::Never,
    ] {
        let (env, sim, clock) = idle_env();
        let config = LogConfig {
            flush: policy,
            ..config()
        };
        let partition = open(&env, config.clone());
        let mut appended = Vec::new();
        for _ in 0..3 {
            for _ in 0..4 {
                append_ok(&partition, 2, 700, &mut appended);
            }
            partition.roll_now().expect("roll");
        }
        assert!(partition.durable_offset() < partition.log_end_offset());
        match policy {
            FlushPolicy::Never => partition.close().expect("close"),
            _ => {
                partition.flush().expect("flush");
                assert_eq!(partition.durable_offset(), partition.log_end_offset());
            }
        }
        let image = sim.crash_image(Torn::None);
        let recovered = open(&env_with(Arc::new(image), clock.clone()), config);
        assert!(read_all(&recovered) == appended, "{policy:?}");
        assert_eq!(
            recovered.segment_count(),
            4,
            "{policy:?}: no segment was cut"
        );
    }
}

#[test]
fn failed_write_fails_only_that_append() {
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let mut acked = Vec::new();
    append_durable(&partition, 2, 100, &mut acked);
    let end = partition.log_end_offset();
    fs.fail_next_write(libc::EIO);
    let (appended, _) = append(&partition, 2, 100);
    match appended {
        Err(Error::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::EIO)),
        other => panic!("expected Error::Io(EIO), got {other:?}"),
    }
    assert_eq!(partition.log_end_offset(), end);
    assert!(partition.failure().is_none());
    let appended = append_durable(&partition, 2, 100, &mut acked);
    assert_eq!(appended.base_offset, end);
    assert!(read_all(&partition) == acked);
    assert!(read_all(&reopen(&fs.crash_image(Torn::None), &clock)) == acked);
}

#[test]
fn torn_power_loss_at_random_points_keeps_every_acknowledged_record() {
    // Goal: the prefix property under torn writes: at random points of a random workload
    // (appends waited for or not, rolls, retention), a power loss that keeps a random part
    // of every unsynced tail, with garbage at its end, loses no acknowledged record and
    // serves no garbage. Randomized: prints its seed on failure, WHARF_TEST_SEED replays.
    let seed = Seed::from_env();
    let mut rng = seed.rng();
    let (env, fs, clock) = sim_env(NOW_MS);
    let config = LogConfig {
        retention_bytes: Some(48 * 1024),
        ..config()
    };
    let partition = open(&env, config);
    let mut acked = Vec::new();
    for step in 0..400 {
        let record_count = 1 + rng.below(4) as usize;
        let value_bytes = 10 + rng.below(1500) as usize;
        match rng.below(20) {
            0 => partition.roll_now().expect("roll"),
            1 => {
                partition.apply_retention().expect("retention");
            }
            2..=5 => {
                let (appended, _) = append(&partition, record_count, value_bytes);
                appended.expect("append");
            }
            _ => {
                let appended = append_durable(&partition, record_count, value_bytes, &mut acked);
                // Everything before this append was acknowledged by it too.
                acked = read_all(&partition);
                assert_eq!(acked.last().map(|r| r.0 + 1), Some(appended.next_offset));
            }
        }
        if rng.below(10) == 0 {
            let image = fs.crash_image(Torn::Random {
                seed: rng.next_u64(),
            });
            let recovered = read_all(&reopen(&image, &clock));
            let start = recovered.first().map_or(0, |record| record.0);
            let acked_kept: Vec<Record> = acked.iter().filter(|r| r.0 >= start).cloned().collect();
            assert_starts_with(&recovered, &acked_kept, &format!("step {step}"));
        }
    }
}

/// A [`SimFs`] whose segment and checkpoint fsyncs (`sync_data`) the test controls: fail the
/// next one, or hold the next one until released and then fail it. A failed fsync makes
/// nothing durable; every other call goes straight to the SimFs.
#[derive(Debug, Clone)]
struct ControlledFs {
    inner: SimFs,
    control: Arc<SyncControl>,
}

#[derive(Debug, Default)]
struct SyncControl {
    fail_next: AtomicBool,
    /// (tell the test the fsync started, wait for the test to release it).
    hold_next: Mutex<Option<(Sender<()>, Receiver<()>)>>,
}

impl ControlledFs {
    fn new(inner: SimFs) -> ControlledFs {
        ControlledFs {
            inner,
            control: Arc::default(),
        }
    }

    /// The next fsync fails with EIO; later ones succeed.
    fn fail_next_sync(&self) {
        self.control.fail_next.store(true, Ordering::SeqCst);
    }

    /// The next fsync reports on the returned receiver that it started, waits until the
    /// test sends on the returned sender, then fails with EIO.
    fn hold_next_sync_then_fail(&self) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.control.hold_next.lock().expect("lock") = Some((entered_tx, release_rx));
        (entered_rx, release_tx)
    }
}

#[derive(Debug)]
struct ControlledFile {
    inner: Arc<dyn FileHandle>,
    control: Arc<SyncControl>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl FileHandle for ControlledFile {
    fn write_all_at(&self, bytes: &[u8], position: u64) -> io::Result<()> {
        self.inner.write_all_at(bytes, position)
    }

    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, position)
    }

    fn sync_data(&self) -> io::Result<()> {
        let held = self.control.hold_next.lock().expect("lock").take();
        if let Some((entered, release)) = held {
            // The test may have finished with a failure already; then nobody listens.
            let _ = entered.send(());
            let _ = release.recv();
            return Err(eio());
        }
        if self.control.fail_next.swap(false, Ordering::SeqCst) {
            return Err(eio());
        }
        self.inner.sync_data()
    }

    fn set_len(&self, bytes: u64) -> io::Result<()> {
        self.inner.set_len(bytes)
    }

    fn allocate(&self, bytes: u64) -> io::Result<()> {
        self.inner.allocate(bytes)
    }

    fn reserve(&self, position: u64, bytes: u64) -> io::Result<()> {
        self.inner.reserve(position, bytes)
    }

    fn len_bytes(&self) -> io::Result<u64> {
        self.inner.len_bytes()
    }

    fn map_mut(&self, bytes: u64) -> io::Result<Box<dyn MappedRegion>> {
        self.inner.map_mut(bytes)
    }
}

impl Fs for ControlledFs {
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileHandle>> {
        Ok(Arc::new(ControlledFile {
            inner: self.inner.open_file(path, mode)?,
            control: self.control.clone(),
        }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }

    fn lock_dir(&self, path: &Path) -> io::Result<DirLock> {
        self.inner.lock_dir(path)
    }
}

/// Asserts that a power loss now recovers exactly the `acked` records.
fn assert_power_loss_keeps(fs: &SimFs, clock: &Arc<ManualClock>, acked: &[Record], round: usize) {
    let image = fs.crash_image(Torn::None);
    assert!(
        read_all(&reopen(&image, clock)) == acked,
        "round {round}: an acknowledged append was lost"
    );
}

/// Polls `future` once with a waker that does nothing.
fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    future.poll(&mut context)
}

/// Appends one batch through the broker's append path (as produce, markers, offsets and the
/// queue stores do) and returns its receipt and records.
fn append_via_path(
    partition: &Arc<Partition>,
    record_count: usize,
    value_bytes: usize,
) -> (wharf_broker::append::Receipt, Vec<Record>) {
    let (mut batch, records) = next_batch(partition, record_count, value_bytes);
    let receipt = wharf_broker::append::append(partition, &mut batch).expect("append");
    (receipt, records)
}

#[test]
fn append_path_durable_resolves_only_after_the_covering_fsync() {
    // Goal: the async wait that acks=all produce answers on (`Receipt::durable`, the path
    // produce takes) never resolves before the fsync that covers the append. Method: no
    // flusher threads, so nothing is fsynced until the test flushes; the wait must stay
    // pending and the power-loss image must lack the batch until then, and after the flush
    // the wait resolves and the image holds every acknowledged record.
    let (env, fs, clock) = idle_env();
    let partition = open(&env, config());
    let mut acked = Vec::new();
    for round in 0..50 {
        let (receipt, records) = append_via_path(&partition, 1 + round % 3, 900);
        let mut durable = std::pin::pin!(receipt.durable());
        assert!(
            poll_once(durable.as_mut()).is_pending(),
            "round {round}: acks=all was answered before any fsync"
        );
        let image = fs.crash_image(Torn::None);
        assert_eq!(
            read_all(&reopen(&image, &clock)),
            acked,
            "round {round}: the unflushed batch must not survive a power loss"
        );
        partition.flush().expect("flush");
        assert!(
            matches!(poll_once(durable.as_mut()), std::task::Poll::Ready(Ok(()))),
            "round {round}: the wait must resolve once the flush covered it"
        );
        acked.extend(records);
        assert_power_loss_keeps(&fs, &clock, &acked, round);
    }
    assert!(partition.segment_count() > 1, "the test must cross a roll");
}

#[test]
fn append_path_acknowledged_records_survive_a_power_loss_at_once() {
    // Goal: with the real group-commit flusher, whatever `Receipt::durable().await` has
    // acknowledged is in the power-loss image taken right after. Method: append through the
    // append path, await the receipt on a runtime, then build the crash image and reopen.
    let (env, fs, clock) = sim_env(NOW_MS);
    let partition = open(&env, config());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut acked = Vec::new();
    for round in 0..60 {
        let (receipt, records) = append_via_path(&partition, 1 + round % 4, 700);
        runtime
            .block_on(receipt.durable())
            .expect("wait for durability");
        acked.extend(records);
        assert_power_loss_keeps(&fs, &clock, &acked, round);
    }
    assert!(partition.segment_count() > 1, "the test must cross a roll");
}

/// Streams over the simulated file system of `env`, with one topic named so that its only
/// partition lives in [`DIR`] (what `reopen` reads).
fn streams_on(
    env: &StorageEnv,
    clock: &Arc<ManualClock>,
) -> (
    wharf_broker::streams::Streams,
    wharf_broker::streams::topic::TopicInfo,
) {
    use wharf_broker::streams::{AutoCreate, StreamSettings, Streams};
    let data_dir = dir().parent().expect("DIR has a parent").to_path_buf();
    let topics = wharf_broker::streams::topic::Topics::open(&data_dir, env.clone(), config())
        .expect("open topics");
    let producers =
        wharf_broker::streams::producer::Producers::open(env.fs.clone(), &data_dir, 60_000)
            .expect("open producers");
    let settings = StreamSettings {
        auto_create_topics: AutoCreate::Off,
        default_partitions: 1,
    };
    let streams = Streams::new(topics, producers, clock.clone(), settings);
    let info = streams
        .create_topic("topic", 1, Vec::new())
        .expect("create topic");
    (streams, info)
}

/// An idempotent batch of `record_count` records for `partition`, whose values name their
/// offsets, and those records.
fn idempotent_batch(
    partition: &Partition,
    producer_id: i64,
    base_sequence: i32,
    record_count: usize,
) -> (bytes::Bytes, Vec<Record>) {
    let base = partition.log_end_offset();
    let records: Vec<Record> = (base..base + record_count as i64)
        .map(|offset| (offset, value_of(offset, 300)))
        .collect();
    let mut builder = batch::BatchBuilder::new(NOW_MS).producer(producer_id, 0, base_sequence);
    for (_, value) in &records {
        builder
            .push(&batch::NewRecord {
                timestamp_ms: NOW_MS,
                key: None,
                value: Some(bytes::Bytes::copy_from_slice(value)),
                headers: Vec::new(),
            })
            .expect("record fits");
    }
    (builder.build(), records)
}

#[test]
fn produce_path_acks_only_after_the_fsync_and_a_retry_waits_for_its_original() {
    // Goal: the path produce takes (`Streams::append_produced`, plain and idempotent, then
    // `Receipt::durable` in the acks=all completion) never acknowledges before the fsync
    // that covers the batch, and a retried idempotent batch, answered with its original
    // offsets, waits for the original's fsync. Method: no flusher threads, so nothing is
    // fsynced until the test flushes; check the waits stay pending and the power-loss image
    // lacks the batches until then.
    let (env, fs, clock) = idle_env();
    let (streams, info) = streams_on(&env, &clock);
    let partition = streams.partition("topic", 0).expect("partition 0");
    let producer_id = streams.allocate_producer_id().expect("producer id");
    let mut acked = Vec::new();
    let (plain, plain_records) = next_batch(&partition, 3, 300);
    let plain_receipt = streams
        .append_produced(&info, 0, &plain, TxnCheck::Here)
        .expect("plain append");
    let (idempotent, idempotent_records) = idempotent_batch(&partition, producer_id, 0, 2);
    let original = streams
        .append_produced(&info, 0, &idempotent, TxnCheck::Here)
        .expect("idempotent append");
    let retry = streams
        .append_produced(&info, 0, &idempotent, TxnCheck::Here)
        .expect("a retry is answered, not refused");
    assert_eq!(
        retry.appended(),
        original.appended(),
        "the retry gets the original offsets"
    );
    assert_eq!(partition.log_end_offset(), 5, "the retry appended nothing");
    let mut waits = [
        Box::pin(plain_receipt.durable()),
        Box::pin(original.durable()),
        Box::pin(retry.durable()),
    ];
    for wait in waits.iter_mut() {
        assert!(
            poll_once(wait.as_mut()).is_pending(),
            "acks=all was answered before any fsync"
        );
    }
    assert_power_loss_keeps(&fs, &clock, &acked, 0);
    partition.flush().expect("flush");
    for wait in waits.iter_mut() {
        assert!(matches!(
            poll_once(wait.as_mut()),
            std::task::Poll::Ready(Ok(()))
        ));
    }
    acked.extend(plain_records);
    acked.extend(idempotent_records);
    assert_power_loss_keeps(&fs, &clock, &acked, 1);
}

#[test]
fn synced_fsyncs_a_marker_whatever_the_flush_policy() {
    // Goal: `Receipt::synced`, which transaction markers wait on, means on disk even under
    // `flush = never` (where `durable` resolves at once). Method: append under `never` with
    // no flusher threads, check the power-loss image lacks the batch, await `synced`, check
    // the image holds it.
    let (env, fs, clock) = idle_env();
    let partition = open(&env, config_never());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (receipt, records) = append_via_path(&partition, 2, 500);
    assert_eq!(runtime.block_on(receipt.durable()).ok(), Some(()));
    let image = fs.crash_image(Torn::None);
    let never = |image: &SimFs| {
        Partition::open(
            &dir(),
            config_never(),
            env_with(Arc::new(image.clone()), clock.clone()),
        )
        .expect("reopen")
    };
    assert!(
        read_all(&never(&image)).is_empty(),
        "nothing was fsynced yet"
    );
    runtime.block_on(receipt.synced()).expect("synced");
    let image = fs.crash_image(Torn::None);
    assert_eq!(read_all(&never(&image)), records);
}

#[test]
fn a_full_disk_when_an_index_must_grow_rolls_the_segment_and_loses_nothing() {
    // Goal: index files grow on demand (issue #13), so a growth can meet a full disk; that
    // must not fail the append whose data is written, nor ever fault through the map: the
    // index counts as full, the segment rolls at the next append (which reports the full
    // disk if the new segment cannot be created), and once space is freed appends go on;
    // a power loss at any point keeps every acknowledged record. Method: fill the initial
    // 4 KiB offset index (512 entries, one per append), leave room for one more batch but
    // not for the index to double, and append on.
    let (env, fs, clock) = sim_env(NOW_MS);
    let config = LogConfig {
        segment_bytes_max: 8 * 1024 * 1024,
        index_interval_bytes: 64,
        index_bytes_max: 64 * 1024,
        preallocate_ahead_bytes: 0,
        ..config()
    };
    let partition = open(&env, config.clone());
    let mut acked = Vec::new();
    let entries_initial = wharf_broker::storage::index::INDEX_INITIAL_BYTES as usize / 8;
    // The first batch adds no entry (entries come every `index_interval_bytes`), each later
    // one adds one: this fills the initial index exactly.
    for _ in 0..=entries_initial {
        append_durable(&partition, 1, 100, &mut acked);
    }
    fs.set_space_bytes(Some(used_bytes(&fs) + 1_000));
    append_durable(&partition, 1, 100, &mut acked);
    assert_eq!(partition.segment_count(), 1);
    let (refused, _) = append(&partition, 1, 100);
    let error = refused.expect_err("the new segment's files do not fit");
    assert!(error.is_disk_full(), "{error:?}");
    assert!(read_all(&partition) == acked);
    assert!(read_all(&reopen_with(&fs.crash_image(Torn::None), &clock, &config)) == acked);
    fs.set_space_bytes(None);
    append_durable(&partition, 1, 100, &mut acked);
    assert_eq!(
        partition.segment_count(),
        2,
        "the full index rolled the segment"
    );
    assert!(read_all(&partition) == acked);
    assert!(read_all(&reopen_with(&fs.crash_image(Torn::None), &clock, &config)) == acked);
}

/// Opens the partition on a crash image with `config`.
fn reopen_with(image: &SimFs, clock: &Arc<ManualClock>, config: &LogConfig) -> Arc<Partition> {
    open(
        &env_with(Arc::new(image.clone()), clock.clone()),
        config.clone(),
    )
}
