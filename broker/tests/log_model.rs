//! Model-based property test of the partition log.
//!
//! Goal: whatever sequence of appends, reads, rolls, clock moves, retention passes, timestamp
//! lookups, clean reopens and crashes a partition goes through, it serves exactly what a plain
//! in-memory model of the log says: the same offsets, batches, values and timestamps, the same
//! log start and high watermark, and after a power loss every acknowledged append.
//!
//! Method: proptest generates a storage config (retention by bytes and/or age, roll by age)
//! and 1..60 operations. Each test case opens a real `Partition` over a `SimFs` with a
//! `ManualClock` and a config small enough that segments roll and index entries (and full
//! indexes) happen often. Every operation is applied to the partition and to the model, a
//! `Vec` of batches with their offsets, values, timestamps and encoded sizes plus the log start
//! and end; the model keeps batches rather than loose records because reads and retention work
//! in whole batches and segments. After every step the partition's offsets, segment layout,
//! size, the length of each `.log` file and the whole content (read back batch by batch) are
//! compared with the model. Every append waits for durability under `FlushPolicy::Always`, so
//! a crash image must recover to the model exactly: nothing lost, nothing beyond it served.
//! The one exception is deliberate: `CrashWithUnsyncedTail` appends a tail that no fsync ever
//! covers, and recovery may keep only a whole-batch prefix of it, which the model then adopts.
//! Retention is checked against the rule itself, applied to the segment boundaries the
//! partition reports. A failure prints the seed and the shrunk operation list; proptest saves
//! it in `log_model.proptest-regressions` beside this file, so the next run replays it first.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use wharf_broker::storage::partition::RetentionReport;
use wharf_broker::storage::segment;
use wharf_broker::storage::sim::{SimFs, Torn};
use wharf_broker::storage::testing::{batch_of, env_with};
use wharf_broker::storage::{
    Appended, Clock, Error, LogConfig, ManualClock, Partition, ReadResult, StorageEnv,
};
use wharf_protocol::batch;

/// Where the partition lives inside the simulated file system.
const DIR: &str = "/data/topic-0";

/// The manual clock's start; generated timestamps lie around it.
const START_MS: i64 = 1_000_000;

/// Generous: with `SimFs` an fsync takes microseconds; the limit only turns a hang into a
/// failure.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Cases per run: 256 take about 10 s in a debug build on a shared 2-core machine, within the
/// 20 s budget for this file. `PROPTEST_CASES` overrides it for longer hunts.
const CASES_DEFAULT: u32 = 256;

/// Small limits so that every case rolls, indexes and fills indexes: the smallest segment
/// allowed, an offset index entry every 128 bytes, and 4 KiB indexes. The offset index (512
/// entries, each after at least 128 bytes) cannot fill before the segment does, so "index
/// full" rolls come from the time index (341 entries), which rising timestamps fill.
const SEGMENT_BYTES_MAX: u64 = 64 * 1024;
const INDEX_INTERVAL_BYTES: u32 = 128;
const INDEX_BYTES_MAX: u32 = 4096;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn partition_matches_model(settings in settings_strategy(), ops in vec(op_strategy(), 1..60)) {
        run_model(&settings, &ops);
    }
}

/// The per-case config knobs; the size limits are fixed.
#[derive(Debug, Clone)]
struct Settings {
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    segment_age_ms_max: Option<u64>,
}

/// How an appended batch is stamped.
#[derive(Debug, Clone)]
enum Stamp {
    /// This timestamp.
    At(i64),
    /// The newest timestamp in the model plus this step, so timestamps rise and the time
    /// index fills up (a full time index rolls the segment).
    AfterNewest(i64),
}

/// Which timestamp a lookup asks for.
#[derive(Debug, Clone)]
enum Target {
    Raw(i64),
    /// A stored batch's timestamp plus a nudge.
    NearBatch {
        at: Pick,
        nudge_ms: i64,
    },
}

/// Several batches for one append call. Values are derived from their offsets, so every
/// record is distinct; the batches are stamped `stamp`, `stamp + step_ms`, ...
#[derive(Debug, Clone)]
struct ManySpec {
    batch_count: usize,
    records_per_batch: usize,
    value_bytes: usize,
    stamp: Stamp,
    step_ms: i64,
}

/// The retention limit a `RetentionAtEdge` step puts on a segment boundary.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Bytes,
    Age,
}

#[derive(Debug, Clone)]
enum Op {
    /// One batch with these values, waited for.
    Append {
        values: Vec<Vec<u8>>,
        stamp: Stamp,
    },
    /// Several batches concatenated in one append call, waited for.
    AppendMany(ManySpec),
    /// Read at `log_start - 2 + at` (within `[log_start - 2, high_watermark + 2]`).
    Read {
        at: Pick,
        max_bytes: usize,
    },
    Roll,
    AdvanceClock {
        ms: i64,
    },
    Retention,
    /// Reopens cleanly with one retention limit set exactly at a sealed segment's edge (plus
    /// `nudge`): the bytes from the next segment on, or the segment's age. Then a retention
    /// pass. Random limits almost never hit the edge of the rule's comparison.
    RetentionAtEdge {
        rule: Rule,
        at: Pick,
        nudge: i64,
    },
    TimestampLookup {
        target: Target,
    },
    ReopenClean,
    CrashPowerLoss {
        torn: Torn,
    },
    /// Closes cleanly, then loses power before the next open: the clean-shutdown marker and
    /// everything it vouches for must already be durable.
    CloseThenPowerLoss {
        torn: Torn,
    },
    /// Appends `tail` without waiting while every fsync fails, so the tail stays unsynced
    /// whatever the flusher does, then loses power: recovery must keep the model and may keep
    /// only a whole-batch prefix of the tail (the torn tail is truncated).
    CrashWithUnsyncedTail {
        tail: ManySpec,
        torn: Torn,
    },
    CrashProcess,
}

/// A position in a collection whose size is known only when the step runs: `Pick(p)` is the
/// fraction `p / 2^16` of the way through it.
#[derive(Debug, Clone, Copy)]
struct Pick(u16);

impl Pick {
    /// The picked position in `0..len` (`len > 0`).
    fn index(self, len: usize) -> usize {
        (usize::from(self.0) * len) >> 16
    }
}

fn pick_strategy() -> impl Strategy<Value = Pick> {
    any::<u16>().prop_map(Pick)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

fn settings_strategy() -> impl Strategy<Value = Settings> {
    (
        proptest::option::of(1u64..3_000_000),
        proptest::option::of(prop_oneof![0u64..8_192, 0u64..300_000]),
        proptest::option::of(1u64..1_000_000),
    )
        .prop_map(
            |(retention_ms, retention_bytes, segment_age_ms_max)| Settings {
                retention_ms,
                retention_bytes,
                segment_age_ms_max,
            },
        )
}

fn stamp_strategy() -> impl Strategy<Value = Stamp> {
    prop_oneof![
        (0..2 * START_MS).prop_map(Stamp::At),
        (0i64..4).prop_map(Stamp::AfterNewest),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let append = (vec(vec(any::<u8>(), 0..300), 1..5), stamp_strategy())
        .prop_map(|(values, stamp)| Op::Append { values, stamp });
    let torn = prop_oneof![
        Just(Torn::None),
        any::<u64>().prop_map(|seed| Torn::Random { seed }),
    ];
    let max_bytes = prop_oneof![0usize..200, 0usize..5_000, Just(1 << 20), Just(usize::MAX)];
    let read = (pick_strategy(), max_bytes).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes });
    let target = prop_oneof![
        (-10..2 * START_MS + 10).prop_map(Target::Raw),
        (pick_strategy(), -1i64..=1).prop_map(|(at, nudge_ms)| Target::NearBatch { at, nudge_ms }),
    ];
    prop_oneof![
        6 => append,
        4 => many_strategy().prop_map(Op::AppendMany),
        4 => read,
        2 => Just(Op::Roll),
        2 => (0i64..200_000).prop_map(|ms| Op::AdvanceClock { ms }),
        3 => Just(Op::Retention),
        1 => (prop_oneof![Just(Rule::Bytes), Just(Rule::Age)], pick_strategy(), -1i64..=1)
            .prop_map(|(rule, at, nudge)| Op::RetentionAtEdge { rule, at, nudge }),
        2 => target.prop_map(|target| Op::TimestampLookup { target }),
        1 => Just(Op::ReopenClean),
        1 => torn.clone().prop_map(|torn| Op::CrashPowerLoss { torn }),
        1 => torn.clone().prop_map(|torn| Op::CloseThenPowerLoss { torn }),
        1 => (many_strategy(), torn).prop_map(|(tail, torn)| Op::CrashWithUnsyncedTail { tail, torn }),
        1 => Just(Op::CrashProcess),
    ]
}

/// Mostly small bursts; sometimes one large enough to fill a segment, and sometimes hundreds
/// of small batches with rising timestamps, which fill the 4 KiB time index (341 entries, one
/// per 128 bytes of log) before the segment is full: the next append then rolls on "index
/// full".
fn many_strategy() -> impl Strategy<Value = ManySpec> {
    let shape = prop_oneof![
        4 => (1usize..100, 1usize..4, 0usize..32),
        2 => (1usize..60, 1usize..4, 0usize..600),
        1 => (300usize..450, Just(1usize), 70usize..90),
    ];
    (shape, stamp_strategy(), 0i64..3).prop_map(
        |((batch_count, records_per_batch, value_bytes), stamp, step_ms)| ManySpec {
            batch_count,
            records_per_batch,
            value_bytes,
            stamp,
            step_ms,
        },
    )
}

/// Applies `ops` to a fresh partition and to the model, comparing them after every step.
fn run_model(settings: &Settings, ops: &[Op]) {
    let mut harness = Harness::new(log_config(settings));
    harness.check_state("after open");
    for (step, op) in ops.iter().enumerate() {
        let context = format!("step {step} ({op:?})");
        harness.apply(op, &context);
        harness.check_state(&context);
    }
    harness.finish();
}

fn log_config(settings: &Settings) -> LogConfig {
    LogConfig {
        segment_bytes_max: SEGMENT_BYTES_MAX,
        segment_age_ms_max: settings.segment_age_ms_max,
        index_interval_bytes: INDEX_INTERVAL_BYTES,
        index_bytes_max: INDEX_BYTES_MAX,
        retention_ms: settings.retention_ms,
        retention_bytes: settings.retention_bytes,
        ..LogConfig::default()
    }
}

/// One stored batch as the model (and a decoded read) sees it. Every record of a batch
/// carries the batch's timestamp, so one timestamp per batch describes it fully.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelBatch {
    base_offset: i64,
    timestamp_ms: i64,
    values: Vec<Vec<u8>>,
    /// Encoded bytes, as stored in the segment.
    size_bytes: u64,
}

impl ModelBatch {
    fn next_offset(&self) -> i64 {
        self.base_offset + self.values.len() as i64
    }
}

/// The log as it should be: the batches from the log start to the log end.
#[derive(Debug, Default)]
struct Model {
    batches: Vec<ModelBatch>,
    log_start: i64,
    log_end: i64,
}

impl Model {
    fn push(&mut self, batch: ModelBatch) {
        assert_eq!(
            batch.base_offset, self.log_end,
            "model batches are contiguous"
        );
        self.log_end = batch.next_offset();
        self.batches.push(batch);
    }

    fn size_bytes(&self) -> u64 {
        self.batches.iter().map(|batch| batch.size_bytes).sum()
    }

    fn newest_timestamp_ms(&self) -> i64 {
        self.batches
            .iter()
            .map(|batch| batch.timestamp_ms)
            .max()
            .unwrap_or(START_MS)
    }

    /// Index of the batch holding `offset`, if it is stored.
    fn batch_containing(&self, offset: i64) -> Option<usize> {
        self.batches
            .iter()
            .position(|batch| batch.base_offset <= offset && offset < batch.next_offset())
    }

    /// The first offset whose record is stamped at or after `timestamp_ms`.
    fn first_offset_at_or_after(&self, timestamp_ms: i64) -> Option<i64> {
        self.batches
            .iter()
            .find(|batch| batch.timestamp_ms >= timestamp_ms)
            .map(|batch| batch.base_offset)
    }

    /// Forgets everything before `log_start` (a retention pass moved it there).
    fn advance_start(&mut self, log_start: i64) {
        assert!(log_start >= self.log_start, "log start moved backwards");
        self.batches.retain(|batch| batch.base_offset >= log_start);
        self.log_start = log_start;
    }

    /// What a retention pass must do to the segments starting at `bases` (the last one
    /// active): delete sealed segments oldest first while the segment's newest timestamp is
    /// more than `retention_ms` before `now_ms`, or while the log without the segment still
    /// holds at least `retention_bytes`; stop at the first one to keep.
    fn expected_retention(
        &self,
        bases: &[i64],
        config: &LogConfig,
        now_ms: i64,
    ) -> RetentionReport {
        let mut remaining_bytes = self.size_bytes();
        let mut report = RetentionReport {
            log_start_offset: self.log_start,
            ..RetentionReport::default()
        };
        for pair in bases.windows(2) {
            let inside = || {
                self.batches
                    .iter()
                    .filter(|batch| pair[0] <= batch.base_offset && batch.base_offset < pair[1])
            };
            let segment_bytes: u64 = inside().map(|batch| batch.size_bytes).sum();
            let newest = inside()
                .map(|batch| batch.timestamp_ms)
                .max()
                .unwrap_or(i64::MIN);
            let expired = config.retention_ms.is_some_and(|retention| {
                newest != i64::MIN && now_ms.saturating_sub(newest) > retention as i64
            });
            let oversized = config.retention_bytes.is_some_and(|retention| {
                remaining_bytes.saturating_sub(segment_bytes) >= retention
            });
            if !(expired || oversized) {
                break;
            }
            remaining_bytes -= segment_bytes;
            report.segments_deleted += 1;
            report.bytes_deleted += segment_bytes;
            report.log_start_offset = pair[1];
        }
        report
    }
}

/// The partition under test, its environment and the model it must match.
struct Harness {
    config: LogConfig,
    fs: SimFs,
    clock: Arc<ManualClock>,
    env: StorageEnv,
    partition: Option<Arc<Partition>>,
    model: Model,
}

impl Harness {
    fn new(config: LogConfig) -> Harness {
        let fs = SimFs::new();
        let clock = Arc::new(ManualClock::new(START_MS));
        let env = env_with(Arc::new(fs.clone()), clock.clone());
        let partition = open(&env, &config);
        Harness {
            config,
            fs,
            clock,
            env,
            partition: Some(partition),
            model: Model::default(),
        }
    }

    fn partition(&self) -> &Arc<Partition> {
        self.partition
            .as_ref()
            .expect("the partition is open between steps")
    }

    fn apply(&mut self, op: &Op, context: &str) {
        match op {
            Op::Append { values, stamp } => {
                let timestamp_ms = self.resolve(stamp);
                self.append(&[(values.clone(), timestamp_ms)], context);
            }
            Op::AppendMany(many) => {
                let specs = self.many_specs(many);
                self.append(&specs, context);
            }
            Op::Read { at, max_bytes } => {
                let low = self.model.log_start - 2;
                let span = (self.model.log_end - self.model.log_start + 5) as usize;
                let offset = low + at.index(span) as i64;
                let result = self.partition().read(offset, *max_bytes);
                check_read(&self.model, offset, *max_bytes, result, context);
            }
            Op::Roll => {
                self.partition()
                    .roll_now()
                    .unwrap_or_else(|error| panic!("{context}: roll failed: {error}"));
                let bases = self.partition().segment_base_offsets();
                assert_eq!(
                    bases.last().copied(),
                    Some(self.model.log_end),
                    "{context}: after a roll the active segment starts at the log end"
                );
            }
            Op::AdvanceClock { ms } => self.clock.advance_ms(*ms),
            Op::Retention => self.retention(context),
            Op::RetentionAtEdge { rule, at, nudge } => {
                self.retention_at_edge(*rule, at, *nudge, context);
            }
            Op::TimestampLookup { target } => self.timestamp_lookup(target, context),
            Op::ReopenClean => self.reopen_clean(context),
            Op::CrashPowerLoss { torn } => {
                let torn = *torn;
                self.crash(|fs| fs.crash_image(torn), context);
            }
            Op::CloseThenPowerLoss { torn } => {
                let torn = *torn;
                self.partition()
                    .close()
                    .unwrap_or_else(|error| panic!("{context}: close failed: {error}"));
                self.crash(|fs| fs.crash_image(torn), context);
            }
            Op::CrashWithUnsyncedTail { tail, torn } => {
                self.crash_with_unsynced_tail(tail, *torn, context);
            }
            Op::CrashProcess => self.crash(SimFs::process_crash_image, context),
        }
    }

    /// Values and timestamp of each batch `many` describes, appended at the log end.
    fn many_specs(&self, many: &ManySpec) -> Vec<(Vec<Vec<u8>>, i64)> {
        let first_ms = self.resolve(&many.stamp);
        let mut offset = self.model.log_end;
        (0..many.batch_count)
            .map(|within| {
                let values = (0..many.records_per_batch)
                    .map(|_| {
                        offset += 1;
                        value_for(offset - 1, many.value_bytes)
                    })
                    .collect();
                (values, first_ms + within as i64 * many.step_ms)
            })
            .collect()
    }

    fn resolve(&self, stamp: &Stamp) -> i64 {
        match stamp {
            Stamp::At(timestamp_ms) => *timestamp_ms,
            Stamp::AfterNewest(step_ms) => self.model.newest_timestamp_ms() + step_ms,
        }
    }

    /// Appends `specs` (values and timestamp per batch) with one call, waits for durability
    /// and checks the offsets handed back.
    fn append(&mut self, specs: &[(Vec<Vec<u8>>, i64)], context: &str) {
        let base_offset = self.model.log_end;
        let (mut bytes, expected) = encode(specs, base_offset);
        let record_count = expected.last().expect("at least one batch").next_offset() - base_offset;
        let partition = self.partition();
        let appended = partition
            .append(&mut bytes)
            .unwrap_or_else(|error| panic!("{context}: append failed: {error}"));
        assert_eq!(
            appended,
            Appended {
                base_offset,
                last_offset: base_offset + record_count - 1,
                next_offset: base_offset + record_count,
            },
            "{context}: append offsets"
        );
        partition
            .wait_durable_blocking(appended.next_offset, DURABLE_TIMEOUT)
            .unwrap_or_else(|error| panic!("{context}: wait for durability failed: {error}"));
        for batch in expected {
            self.model.push(batch);
        }
    }

    fn retention(&mut self, context: &str) {
        let bases = self.partition().segment_base_offsets();
        let expected = self
            .model
            .expected_retention(&bases, &self.config, self.clock.now_ms());
        let report = self
            .partition()
            .apply_retention()
            .unwrap_or_else(|error| panic!("{context}: retention failed: {error}"));
        assert_eq!(
            report, expected,
            "{context}: retention report (bases {bases:?})"
        );
        self.model.advance_start(report.log_start_offset);
        assert_eq!(
            self.partition().segment_base_offsets(),
            bases[report.segments_deleted..],
            "{context}: retention deletes the oldest segments, never the active one"
        );
    }

    fn retention_at_edge(&mut self, rule: Rule, at: &Pick, nudge: i64, context: &str) {
        let bases = self.partition().segment_base_offsets();
        if bases.len() > 1 {
            let sealed = at.index(bases.len() - 1);
            let (from, to) = (bases[sealed], bases[sealed + 1]);
            let batches = &self.model.batches;
            match rule {
                Rule::Bytes => {
                    let after: u64 = batches
                        .iter()
                        .filter(|batch| batch.base_offset >= to)
                        .map(|batch| batch.size_bytes)
                        .sum();
                    self.config.retention_bytes = Some(after.saturating_add_signed(nudge));
                    self.config.retention_ms = None;
                }
                Rule::Age => {
                    let newest = batches
                        .iter()
                        .filter(|batch| from <= batch.base_offset && batch.base_offset < to)
                        .map(|batch| batch.timestamp_ms)
                        .max()
                        .expect("sealed segments are never empty");
                    let age_ms = self.clock.now_ms() - newest + nudge;
                    self.config.retention_ms = Some(age_ms.max(0) as u64);
                    self.config.retention_bytes = None;
                }
            }
            self.reopen_clean(context);
        }
        self.retention(context);
    }

    fn timestamp_lookup(&self, target: &Target, context: &str) {
        let timestamp_ms = match target {
            Target::Raw(timestamp_ms) => *timestamp_ms,
            Target::NearBatch { at, nudge_ms } if !self.model.batches.is_empty() => {
                let batch = &self.model.batches[at.index(self.model.batches.len())];
                batch.timestamp_ms + nudge_ms
            }
            Target::NearBatch { nudge_ms, .. } => START_MS + nudge_ms,
        };
        let found = self
            .partition()
            .offset_for_timestamp(timestamp_ms)
            .unwrap_or_else(|error| panic!("{context}: timestamp lookup failed: {error}"));
        assert_eq!(
            found,
            self.model.first_offset_at_or_after(timestamp_ms),
            "{context}: first offset stamped at or after {timestamp_ms}"
        );
    }

    fn reopen_clean(&mut self, context: &str) {
        let bases = self.partition().segment_base_offsets();
        let partition = self.partition.take().expect("open");
        partition
            .close()
            .unwrap_or_else(|error| panic!("{context}: close failed: {error}"));
        drop_fully(partition);
        let reopened = open(&self.env, &self.config);
        self.partition = Some(reopened);
        assert_eq!(
            self.partition().segment_base_offsets(),
            bases,
            "{context}: a clean reopen keeps the segments"
        );
    }

    /// Drops the partition without closing it, reopens it on the image `crash` builds from the
    /// file system, and carries on with that image as the file system.
    fn crash(&mut self, crash: impl FnOnce(&SimFs) -> SimFs, context: &str) {
        let bases = self.partition().segment_base_offsets();
        drop_fully(self.partition.take().expect("open"));
        let image = crash(&self.fs);
        self.reopen_on(image);
        assert_eq!(
            self.partition().segment_base_offsets(),
            bases,
            "{context}: recovery keeps every durable segment"
        );
    }

    /// Opens the partition on `image`, which becomes the file system from now on. The flusher
    /// is shared: a dropped partition's queued requests simply fail to upgrade.
    fn reopen_on(&mut self, image: SimFs) {
        self.fs = image;
        self.env = StorageEnv {
            fs: Arc::new(self.fs.clone()),
            clock: self.clock.clone(),
            flusher: self.env.flusher.clone(),
        };
        self.partition = Some(open(&self.env, &self.config));
    }

    fn crash_with_unsynced_tail(&mut self, tail: &ManySpec, torn: Torn, context: &str) {
        let bases = self.partition().segment_base_offsets();
        let specs = self.many_specs(tail);
        let (mut bytes, candidates) = encode(&specs, self.model.log_end);
        self.fs.fail_syncs_after(0);
        // Fails (and writes nothing) when the tail needs a roll, since sealing fsyncs.
        let _ = self.partition().append(&mut bytes);
        drop_fully(self.partition.take().expect("open"));
        let image = self.fs.crash_image(torn);
        self.reopen_on(image);
        assert_eq!(
            self.partition().segment_base_offsets(),
            bases,
            "{context}: a failed roll creates no segment"
        );
        let recovered = read_everything(self.partition(), context);
        let kept = self.model.batches.len();
        assert!(
            recovered.len() >= kept && recovered[..kept] == self.model.batches[..],
            "{context}: recovery lost acknowledged batches"
        );
        let extra = &recovered[kept..];
        assert!(
            extra.len() <= candidates.len() && extra == &candidates[..extra.len()],
            "{context}: recovery served {} batches beyond the acknowledged ones that are not a \
             prefix of the unsynced tail",
            extra.len()
        );
        for batch in extra {
            self.model.push(batch.clone());
        }
    }

    /// Offsets, durability, segment layout, size, file lengths and the whole content against
    /// the model.
    fn check_state(&self, context: &str) {
        let partition = self.partition();
        let model = &self.model;
        let log_start = partition.log_start_offset();
        let high_watermark = partition.high_watermark();
        let log_end = partition.log_end_offset();
        assert!(
            log_start <= high_watermark && high_watermark <= log_end,
            "{context}: log start {log_start}, high watermark {high_watermark}, log end {log_end}"
        );
        assert_eq!(
            (log_start, high_watermark, log_end),
            (model.log_start, model.log_end, model.log_end),
            "{context}: (log start, high watermark, log end) against the model"
        );
        assert!(
            partition.durable_offset() >= high_watermark,
            "{context}: durable offset {} below the high watermark {high_watermark}",
            partition.durable_offset()
        );
        let bases = partition.segment_base_offsets();
        assert_eq!(
            bases.first().copied(),
            Some(log_start),
            "{context}: first segment"
        );
        assert!(
            bases.windows(2).all(|pair| pair[0] < pair[1]),
            "{context}: segment bases {bases:?} not increasing (an empty sealed segment?)"
        );
        assert!(
            bases.iter().all(|&base| base == model.log_end
                || model.batches.iter().any(|batch| batch.base_offset == base)),
            "{context}: segment bases {bases:?} must fall on batch boundaries"
        );
        assert_eq!(
            partition.size_bytes(),
            model.size_bytes(),
            "{context}: size"
        );
        self.check_files(&bases, context);
        assert_eq!(
            read_everything(partition, context),
            model.batches,
            "{context}: the log's content"
        );
    }

    /// Each segment's `.log` file holds exactly its batches: recovery cut the torn tail off
    /// the disk, not only out of the published size.
    fn check_files(&self, bases: &[i64], context: &str) {
        for (at, &base) in bases.iter().enumerate() {
            let next = bases.get(at + 1).copied().unwrap_or(i64::MAX);
            let expected: u64 = self
                .model
                .batches
                .iter()
                .filter(|batch| base <= batch.base_offset && batch.base_offset < next)
                .map(|batch| batch.size_bytes)
                .sum();
            let path = Path::new(DIR).join(segment::file_name(base, "log"));
            let file_bytes = self.fs.live_bytes(&path).map(|bytes| bytes.len() as u64);
            assert_eq!(
                file_bytes,
                Some(expected),
                "{context}: length of {}",
                path.display()
            );
        }
    }

    /// Drops the partition before the environment, so the flusher thread never ends up
    /// holding the last reference.
    fn finish(mut self) {
        if let Some(partition) = self.partition.take() {
            drop_fully(partition);
        }
    }
}

fn open(env: &StorageEnv, config: &LogConfig) -> Arc<Partition> {
    Partition::open(Path::new(DIR), config.clone(), env.clone())
        .unwrap_or_else(|error| panic!("open failed: {error}"))
}

/// Drops `partition` and waits until no other thread (the flusher finishing a flush) holds it,
/// so its simulated memory maps are written back before a crash image is taken or the
/// directory is reopened.
fn drop_fully(partition: Arc<Partition>) {
    let weak = Arc::downgrade(&partition);
    drop(partition);
    let deadline = Instant::now() + DURABLE_TIMEOUT;
    while weak.strong_count() > 0 {
        assert!(Instant::now() < deadline, "the partition is never released");
        std::thread::yield_now();
    }
}

/// The concatenated batches for `specs` and the model's view of them once appended at
/// `base_offset`.
fn encode(specs: &[(Vec<Vec<u8>>, i64)], base_offset: i64) -> (BytesMut, Vec<ModelBatch>) {
    let mut bytes = BytesMut::new();
    let mut batches: Vec<ModelBatch> = Vec::with_capacity(specs.len());
    for (values, timestamp_ms) in specs {
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let one = batch_of(&slices, *timestamp_ms);
        batches.push(ModelBatch {
            base_offset: batches.last().map_or(base_offset, ModelBatch::next_offset),
            timestamp_ms: *timestamp_ms,
            values: values.clone(),
            size_bytes: one.len() as u64,
        });
        bytes.extend_from_slice(&one);
    }
    (bytes, batches)
}

/// A value of `value_bytes` bytes derived from its record's offset.
fn value_for(offset: i64, value_bytes: usize) -> Vec<u8> {
    let seed = offset.to_be_bytes();
    (0..value_bytes)
        .map(|at| seed[7 - at % 8] ^ (at / 8) as u8)
        .collect()
}

/// Checks one read against the model: out of range exactly when the model says so;
/// otherwise whole batches, starting with the one containing `offset`, a contiguous run of
/// the model's batches from there, at least one below the high watermark, and within
/// `max_bytes` unless it is the only one.
fn check_read(
    model: &Model,
    offset: i64,
    max_bytes: usize,
    result: Result<ReadResult, Error>,
    context: &str,
) {
    if offset < model.log_start || offset > model.log_end {
        match result {
            Err(Error::OffsetOutOfRange {
                offset: refused,
                log_start,
                high_watermark,
            }) => assert_eq!(
                (refused, log_start, high_watermark),
                (offset, model.log_start, model.log_end),
                "{context}: out-of-range error fields"
            ),
            other => panic!(
                "{context}: read at {offset} outside [{}, {}] gave {other:?}",
                model.log_start, model.log_end
            ),
        }
        return;
    }
    let read = result.unwrap_or_else(|error| panic!("{context}: read at {offset}: {error}"));
    assert_eq!(
        (read.log_start_offset, read.high_watermark),
        (model.log_start, model.log_end),
        "{context}: read at {offset} reports (log start, high watermark)"
    );
    let total_bytes = read.bytes.len();
    let got = decode_batches(read.bytes, context);
    if offset == model.log_end {
        assert!(
            got.is_empty(),
            "{context}: read at the high watermark gave data"
        );
        return;
    }
    let first = model
        .batch_containing(offset)
        .expect("offsets in [log start, log end) are in the model");
    assert!(
        !got.is_empty(),
        "{context}: read at {offset} below the high watermark gave nothing"
    );
    assert!(
        first + got.len() <= model.batches.len(),
        "{context}: read at {offset} served {} batches, the model has {} from there",
        got.len(),
        model.batches.len() - first
    );
    assert_eq!(
        got,
        model.batches[first..first + got.len()],
        "{context}: read at {offset} (max_bytes {max_bytes})"
    );
    assert!(
        got.len() == 1 || total_bytes <= max_bytes,
        "{context}: read at {offset} gave {} batches, {total_bytes} bytes, over max_bytes {max_bytes}",
        got.len()
    );
}

/// Reads the whole log from the log start to the high watermark.
fn read_everything(partition: &Partition, context: &str) -> Vec<ModelBatch> {
    let mut out: Vec<ModelBatch> = Vec::new();
    let mut offset = partition.log_start_offset();
    while offset < partition.high_watermark() {
        let read = partition
            .read(offset, 1 << 20)
            .unwrap_or_else(|error| panic!("{context}: full read at {offset}: {error}"));
        let batches = decode_batches(read.bytes, context);
        let last = batches
            .last()
            .unwrap_or_else(|| panic!("{context}: full read at {offset} gave nothing"));
        offset = last.next_offset();
        out.extend(batches);
    }
    out
}

/// Decodes whole batches into the model's form, checking that record offsets are contiguous
/// within each batch and that every record carries the batch's timestamp.
fn decode_batches(bytes: Bytes, context: &str) -> Vec<ModelBatch> {
    let mut out = Vec::new();
    for decoded in batch::batches(bytes) {
        let decoded = decoded.unwrap_or_else(|error| {
            panic!("{context}: served bytes are not whole batches: {error}")
        });
        let header = *decoded.header();
        let mut values = Vec::new();
        for (within, record) in decoded.records().enumerate() {
            let record = record.unwrap_or_else(|error| {
                panic!("{context}: served record does not decode: {error}")
            });
            assert_eq!(
                record.offset,
                header.base_offset + within as i64,
                "{context}: record offsets within a batch"
            );
            assert_eq!(
                record.timestamp_ms, header.max_timestamp,
                "{context}: record timestamp within a batch"
            );
            values.push(record.value.map(|value| value.to_vec()).unwrap_or_default());
        }
        out.push(ModelBatch {
            base_offset: header.base_offset,
            timestamp_ms: header.max_timestamp,
            values,
            size_bytes: decoded.as_bytes().len() as u64,
        });
    }
    out
}
