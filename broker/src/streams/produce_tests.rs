//! Replicas of a partition must agree on every idempotent verdict (issue #21): two replicas
//! applying the same commands give the same outcomes whatever their own sweeps and
//! checkpoints did, and a follower copying stored batches records the transactions in them
//! as the leader did.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wharf_protocol::batch::{Attributes, BatchBuilder, ControlKind, NewRecord};

use super::TxnCheck;
use crate::storage::testing::sim_env;
use crate::storage::{LogConfig, Partition};
use crate::streams::producer::{PartitionProducers, Producers, SWEEP_MARGIN_MS};
use crate::streams::topic::Topics;
use crate::streams::{AutoCreate, StreamError, StreamSettings, Streams};

const START_MS: i64 = 1_000_000_000;
/// The producers' expiry in these tests.
const EXPIRY_MS: i64 = 60_000;
/// Producer ids the operations pick from.
const PRODUCERS: [i64; 3] = [11, 12, 13];

fn streams() -> Streams {
    streams_and_env().0
}

/// The streams of a simulated data directory `/data`, and its environment.
fn streams_and_env() -> (Streams, crate::storage::StorageEnv) {
    let (env, _fs, clock) = sim_env(START_MS);
    let data_dir = Path::new("/data");
    let topics = Topics::open(data_dir, env.clone(), LogConfig::default()).unwrap();
    let producers = Producers::open(env.fs.clone(), data_dir, EXPIRY_MS).unwrap();
    let settings = StreamSettings {
        auto_create_topics: AutoCreate::Off,
        default_partitions: 1,
    };
    (Streams::new(topics, producers, clock, settings), env)
}

/// Producer 0's first `batches` batches of `count` records each, in sequence, stamped
/// `skew_ms` from the clock.
fn in_sequence(batches: usize, count: usize, skew_ms: i64) -> Vec<Step> {
    (0..batches)
        .map(|n| Step::Batch {
            producer: 0,
            kind: if n == 0 { 0 } else { 5 },
            count,
            new_epoch: false,
            transactional: false,
            skew_ms,
        })
        .collect()
}

/// Producer `producer_id`'s batch of `count` records from `sequence`, written at
/// `timestamp_ms`.
fn batch(
    producer_id: i64,
    epoch: i16,
    sequence: i32,
    count: usize,
    timestamp_ms: i64,
    transactional: bool,
) -> BytesMut {
    let mut attributes = Attributes::default();
    if transactional {
        attributes = attributes.transactional();
    }
    let mut builder = BatchBuilder::new(timestamp_ms)
        .producer(producer_id, epoch, sequence)
        .attributes(attributes);
    for index in 0..count {
        builder
            .push(&NewRecord {
                timestamp_ms: timestamp_ms + index as i64,
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: Vec::new(),
            })
            .unwrap();
    }
    let mut out = BytesMut::new();
    builder.build_into(&mut out);
    out
}

/// One step of a producer's life on the partition.
#[derive(Debug, Clone)]
enum Step {
    /// A batch: the producer's next sequence, sequence 0 (starting over), a retry of its
    /// last batch, or a gap; in a new epoch sometimes; transactional sometimes.
    Batch {
        producer: usize,
        kind: u8,
        count: usize,
        new_epoch: bool,
        transactional: bool,
        /// The batch's time against the clock (a client's clock is its own).
        skew_ms: i64,
    },
    /// A coordinator of epoch `coordinator` ends the producer's transaction (a lower epoch
    /// than an earlier marker's: a deposed coordinator's late marker).
    Marker {
        producer: usize,
        commit: bool,
        coordinator: i32,
    },
    /// Time passes: a little, or past the expiry.
    Wait { ms: i64 },
    /// The second replica sweeps idle producers on its own clock, up to the margin ahead
    /// of the commands' clock.
    Sweep { ahead_ms: i64 },
    /// The second replica restarts from a checkpoint of its producer state at its log end.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..PRODUCERS.len(), 0u8..6, 1usize..4, prop::bool::weighted(0.1), prop::bool::weighted(0.2), -5_000i64..5_000)
            .prop_map(|(producer, kind, count, new_epoch, transactional, skew_ms)| Step::Batch {
                producer, kind, count, new_epoch, transactional, skew_ms,
            }),
        1 => (0..PRODUCERS.len(), any::<bool>(), 0i32..3).prop_map(|(producer, commit, coordinator)| Step::Marker { producer, commit, coordinator }),
        2 => prop_oneof![0i64..2_000, Just(EXPIRY_MS + 1_000)].prop_map(|ms| Step::Wait { ms }),
        1 => prop_oneof![0i64..SWEEP_MARGIN_MS, Just(SWEEP_MARGIN_MS)].prop_map(|ahead_ms| Step::Sweep { ahead_ms }),
        1 => Just(Step::Restart),
    ]
}

/// What the tests compare: each producer's entry, the open transactions' bound and the
/// aborted transactions.
fn summary(state: &PartitionProducers) -> String {
    let entries: Vec<_> = PRODUCERS
        .iter()
        .map(|id| (id, state.get(*id).cloned()))
        .collect();
    format!(
        "{entries:?} lso {} aborted {:?}",
        state.last_stable_offset(i64::MAX),
        state.aborted_between(0, i64::MAX)
    )
}

/// The partition's stored batches, read in pieces of about `piece_bytes`.
fn stored(log: &Partition, piece_bytes: usize) -> Vec<Bytes> {
    log.flush().unwrap();
    let mut pieces = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let read = log.read(offset, piece_bytes).unwrap();
        assert!(!read.bytes.is_empty(), "nothing read at {offset}");
        let mut end = offset;
        for decoded in wharf_protocol::batch::batches(read.bytes.clone()) {
            end = decoded.unwrap().header().next_offset();
        }
        pieces.push(read.bytes);
        offset = end;
    }
    pieces
}

/// Applies `steps` to partition 0 of each of `topics`, as replicas apply their commands
/// (the clock in each command, no check of this node's own tables); sweeps and restarts
/// happen on every replica but the first. Returns each replica's outcomes, in order.
fn apply(streams: &Streams, topics: &[&str], steps: &[Step]) -> Vec<Vec<String>> {
    let logs: Vec<_> = topics
        .iter()
        .map(|topic| streams.partition(topic, 0).unwrap())
        .collect();
    let mut outcomes = vec![Vec::new(); topics.len()];
    let mut now_ms = START_MS;
    // Per producer: epoch, next sequence, last batch (sequence, count), as the first
    // replica answered.
    let mut model = [(0i16, 0i32, None::<(i32, usize)>); PRODUCERS.len()];
    for step in steps {
        match step {
            Step::Wait { ms } => now_ms += ms,
            Step::Sweep { ahead_ms } => {
                for topic in &topics[1..] {
                    let shared = streams.producers().partition(topic, 0);
                    shared.lock().unwrap().expire(now_ms + ahead_ms, EXPIRY_MS);
                }
            }
            Step::Restart => {
                for (topic, log) in topics.iter().zip(&logs).skip(1) {
                    let shared = streams.producers().partition(topic, 0);
                    let mut state = shared.lock().unwrap();
                    let (restored, offset) =
                        PartitionProducers::decode_at(state.encode_at(log.log_end_offset()))
                            .unwrap();
                    assert_eq!(offset, log.log_end_offset());
                    *state = restored;
                }
            }
            Step::Marker {
                producer,
                commit,
                coordinator,
            } => {
                let kind = if *commit {
                    ControlKind::Commit
                } else {
                    ControlKind::Abort
                };
                let epoch = model[*producer].0;
                for ((topic, log), out) in topics.iter().zip(&logs).zip(&mut outcomes) {
                    let marked = streams.append_marker(
                        topic,
                        0,
                        log,
                        PRODUCERS[*producer],
                        epoch,
                        kind,
                        now_ms,
                        Some(*coordinator),
                    );
                    match marked {
                        Ok(receipt) => {
                            out.push(format!("marker at {}", receipt.appended().base_offset));
                        }
                        Err(StreamError::MarkerRefused { refusal, .. }) => {
                            out.push(format!("{refusal:?}"));
                        }
                        Err(other) => panic!("{other}"),
                    }
                }
            }
            Step::Batch {
                producer,
                kind,
                count,
                new_epoch,
                transactional,
                skew_ms,
            } => {
                let (epoch, next, last) = &mut model[*producer];
                if *new_epoch {
                    *epoch += 1;
                    *next = 0;
                }
                let (sequence, count) = match (kind, *last) {
                    (0, _) => (0, *count),
                    (1, Some(last)) => last,
                    (2, _) => (*next + 3, *count),
                    _ => (*next, *count),
                };
                let bytes = batch(
                    PRODUCERS[*producer],
                    *epoch,
                    sequence,
                    count,
                    now_ms + skew_ms,
                    *transactional,
                );
                for (index, ((topic, log), out)) in
                    topics.iter().zip(&logs).zip(&mut outcomes).enumerate()
                {
                    let applied = streams.apply_produced(
                        topic,
                        0,
                        log,
                        bytes.clone(),
                        now_ms,
                        TxnCheck::Verified,
                    );
                    match applied {
                        Ok(receipt) => {
                            let appended = receipt.appended();
                            out.push(format!(
                                "{}..{}",
                                appended.base_offset, appended.last_offset
                            ));
                            if index == 0 {
                                *next = sequence + count as i32;
                                *last = Some((sequence, count));
                            }
                        }
                        Err(StreamError::Sequence { refusal, .. }) => {
                            out.push(format!("{refusal:?}"));
                        }
                        Err(other) => panic!("{other}"),
                    }
                }
            }
        }
    }
    outcomes
}

/// The state of partition 0 of `topic` without the producers expired by `now_ms` (which a
/// sweep may or may not have forgotten yet).
fn live_summary(streams: &Streams, topic: &str, now_ms: i64) -> String {
    let shared = streams.producers().partition(topic, 0);
    let mut state = shared.lock().unwrap();
    for id in PRODUCERS {
        state.forget_expired(id, now_ms - EXPIRY_MS);
    }
    summary(&state)
}

/// Each producer's epoch and retained batches, the open transactions' bound and the aborted
/// transactions: what a replay of stored batches can tell (not the times of the appends).
fn stored_summary(state: &PartitionProducers) -> String {
    let entries: Vec<_> = PRODUCERS
        .iter()
        .map(|id| {
            state
                .get(*id)
                .map(|entry| (entry.epoch, entry.batches.clone()))
        })
        .collect();
    format!(
        "{entries:?} lso {} aborted {:?}",
        state.last_stable_offset(i64::MAX),
        state.aborted_between(0, i64::MAX)
    )
}

fn final_clock(steps: &[Step]) -> i64 {
    START_MS
        + steps
            .iter()
            .map(|step| match step {
                Step::Wait { ms } => *ms,
                _ => 0,
            })
            .sum::<i64>()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Goal: two replicas applying the same commands (retries, gaps, new epochs,
    /// transactions, markers, producers idling past the expiry) give the same outcome to
    /// every command and end with the same live producers, although the second one
    /// sweeps idle producers at its own times (on a clock up to the margin ahead) and
    /// restarts from checkpoints of its state.
    #[test]
    fn replicas_agree_on_every_verdict_whatever_their_sweeps_and_restarts(
        steps in prop::collection::vec(step(), 1..150),
    ) {
        let streams = streams();
        streams.create_topic("a", 1, Vec::new()).unwrap();
        streams.create_topic("b", 1, Vec::new()).unwrap();
        let outcomes = apply(&streams, &["a", "b"], &steps);
        prop_assert_eq!(&outcomes[0], &outcomes[1]);
        let now_ms = final_clock(&steps);
        prop_assert_eq!(live_summary(&streams, "a", now_ms), live_summary(&streams, "b", now_ms));
    }

    /// Goal: a follower that copies the leader's stored batches (a snapshot's, in pieces)
    /// records the same producers, epochs, retained batches and open and aborted
    /// transactions as appending them did; so does a replay of the log.
    #[test]
    fn copying_or_replaying_stored_batches_records_what_appending_did(
        steps in prop::collection::vec(step(), 1..120)
            .prop_map(|steps| steps.into_iter().filter(|step| !matches!(step, Step::Wait { ms } if *ms > EXPIRY_MS)).collect::<Vec<_>>()),
        piece_bytes in prop_oneof![Just(1usize), Just(4_096usize)],
    ) {
        let streams = streams();
        streams.create_topic("t", 1, Vec::new()).unwrap();
        streams.create_topic("copy", 1, Vec::new()).unwrap();
        apply(&streams, &["t"], &steps);
        let applied = stored_summary(&streams.producers().partition("t", 0).lock().unwrap());

        let log = streams.partition("t", 0).unwrap();
        let pieces = stored(&log, piece_bytes);
        let mut replayed = PartitionProducers::default();
        for piece in &pieces {
            replayed.replay(piece.clone(), i64::MIN).unwrap();
        }
        prop_assert_eq!(&stored_summary(&replayed), &applied, "replayed");

        let copy = streams.partition("copy", 0).unwrap();
        for piece in pieces {
            streams
                .append_stored("copy", 0, &copy, BytesMut::from(&piece[..]), None)
                .unwrap();
        }
        let copied = stored_summary(&streams.producers().partition("copy", 0).lock().unwrap());
        prop_assert_eq!(&copied, &applied, "copied");
    }
}

/// Goal: a producer idle past the expiry is forgotten by the clock of the command that
/// applies its next batch, on every replica alike, not only after some node's sweep;
/// starting over at sequence 0 is accepted and keeps none of its earlier batches.
#[test]
fn a_producer_idle_past_the_expiry_is_unknown_by_the_commands_clock() {
    let streams = streams();
    streams.create_topic("t", 1, Vec::new()).unwrap();
    let batch = |kind: u8, count: usize| Step::Batch {
        producer: 0,
        kind,
        count,
        new_epoch: false,
        transactional: false,
        skew_ms: 0,
    };
    let steps = [
        batch(0, 2),
        Step::Wait {
            ms: EXPIRY_MS + 1_000,
        },
        // Its next sequence: unknown now.
        batch(5, 1),
        // Starting over at 0: appended.
        batch(0, 1),
    ];
    let outcomes = apply(&streams, &["t"], &steps);
    assert_eq!(outcomes[0], ["0..1", "UnknownProducer", "2..2"]);
    let state = streams.producers().partition("t", 0);
    let state = state.lock().unwrap();
    let entry = state.get(PRODUCERS[0]).expect("known again");
    assert_eq!(
        entry.batches.len(),
        1,
        "the batches before the expiry are dropped"
    );
    assert_eq!(entry.batches[0].base_offset, 2);
    assert_eq!(entry.last_append_ms, START_MS + EXPIRY_MS + 1_000);
}

/// Goal: a producer's last append is the broker's clock, not the records' timestamps: one
/// writing records stamped far in the past (a backfill, a mirror keeping timestamps) is
/// not expired while it writes.
#[test]
fn records_stamped_long_ago_do_not_expire_their_producer() {
    let streams = streams();
    streams.create_topic("t", 1, Vec::new()).unwrap();
    let steps = in_sequence(4, 1, -10 * EXPIRY_MS);
    let outcomes = apply(&streams, &["t"], &steps);
    assert_eq!(outcomes[0], ["0..0", "1..1", "2..2", "3..3"]);
}

/// Goal: a restart's replay of the log's tail does not make a producer writing old-stamped
/// records look idle: its appends count from the restart's clock at the earliest.
#[test]
fn a_replayed_producer_counts_as_active_since_the_restart() {
    let streams = streams();
    streams.create_topic("t", 1, Vec::new()).unwrap();
    let steps = [Step::Batch {
        producer: 0,
        kind: 0,
        count: 1,
        new_epoch: false,
        transactional: false,
        skew_ms: -10 * EXPIRY_MS,
    }];
    apply(&streams, &["t"], &steps);
    let log = streams.partition("t", 0).unwrap();
    let restart_ms = START_MS + 5_000;
    let mut replayed = PartitionProducers::default();
    for piece in stored(&log, 4_096) {
        replayed.replay(piece, restart_ms).unwrap();
    }
    let entry = replayed.get(PRODUCERS[0]).expect("replayed");
    assert_eq!(entry.last_append_ms, restart_ms);
}

/// Goal: a deposed coordinator's late marker does not end the producer's next transaction
/// (issue #21): the partition refuses a marker of an older coordinator epoch than the last
/// one it took for the producer, so the second transaction stays open and its abort hides
/// it.
#[test]
fn a_deposed_coordinators_late_marker_does_not_end_the_next_transaction() {
    let streams = streams();
    streams.create_topic("t", 1, Vec::new()).unwrap();
    let txn_batch = |kind: u8| Step::Batch {
        producer: 0,
        kind,
        count: 1,
        new_epoch: false,
        transactional: true,
        skew_ms: 0,
    };
    let marker = |commit: bool, coordinator: i32| Step::Marker {
        producer: 0,
        commit,
        coordinator,
    };
    let steps = [
        // The first transaction, committed by the coordinator of epoch 2.
        txn_batch(0),
        marker(true, 2),
        // The next one opens; coordinator 1, deposed, commits the first one late.
        txn_batch(5),
        marker(true, 1),
        // Coordinator 2 aborts the second one.
        marker(false, 2),
    ];
    let outcomes = apply(&streams, &["t"], &steps);
    assert_eq!(
        outcomes[0],
        [
            "0..0",
            "marker at 1",
            "2..2",
            "CoordinatorFenced { epoch: 1, latest: 2 }",
            "marker at 3"
        ]
    );
    let state = streams.producers().partition("t", 0);
    let state = state.lock().unwrap();
    assert_eq!(state.last_stable_offset(4), 4);
    let aborted = state.aborted_between(0, 4);
    assert_eq!(aborted.len(), 1);
    assert_eq!((aborted[0].first_offset, aborted[0].last_offset), (2, 3));
}

/// Goal: a marker without a coordinator epoch (an earlier build's, in a replicated log
/// applied again after an upgrade, or forwarded by an older coordinator) is applied as that
/// build applied it, unchecked and with epoch 0, so every replica writes the same bytes.
#[test]
fn a_marker_without_a_coordinator_epoch_is_applied_as_before() {
    let streams = streams();
    streams.create_topic("t", 1, Vec::new()).unwrap();
    let log = streams.partition("t", 0).unwrap();
    let marker = |coordinator_epoch| {
        streams.append_marker(
            "t",
            0,
            &log,
            PRODUCERS[0],
            0,
            ControlKind::Commit,
            START_MS,
            coordinator_epoch,
        )
    };
    marker(Some(3)).unwrap();
    let earlier = marker(None).expect("not checked");
    log.flush().unwrap();
    let read = log.read(earlier.appended().base_offset, 1 << 20).unwrap();
    let decoded = wharf_protocol::batch::batches(read.bytes)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        decoded.control_marker().unwrap().unwrap().coordinator_epoch,
        0
    );
    // Checked markers still are: one older than 3 is refused.
    assert!(matches!(
        marker(Some(2)),
        Err(StreamError::MarkerRefused { .. })
    ));
}

/// Goal: a `producer-state` file of version 1 (before coordinator epochs) still loads at
/// start: its state is used (not a replay of the log), every coordinator epoch -1.
#[test]
fn a_producer_state_file_of_version_1_still_loads() {
    let (streams, env) = streams_and_env();
    let data_dir = Path::new("/data");
    streams.create_topic("t", 1, Vec::new()).unwrap();
    // Records stamped 5 s before the appends: a replay would record their time instead.
    let steps = in_sequence(2, 2, -5_000);
    apply(&streams, &["t"], &steps);
    let log = streams.partition("t", 0).unwrap();
    log.flush().unwrap();
    let end = log.log_end_offset();
    let (written, current) = {
        let shared = streams.producers().partition("t", 0);
        let state = shared.lock().unwrap();
        (state.get(PRODUCERS[0]).cloned(), state.encode_at(end))
    };
    // Version 1 is version 2 without the coordinator epochs (none here: a count of 0).
    assert_eq!(&current[current.len() - 4..], &[0, 0, 0, 0]);
    let first = &current[1..current.len() - 4];
    crate::storage::checkpoint::write(
        env.fs.as_ref(),
        log.dir(),
        crate::streams::producer::SNAPSHOT_FILE,
        *b"WPST",
        1,
        end as u64,
        first,
    )
    .unwrap();
    let reloaded = Producers::open(env.fs.clone(), data_dir, EXPIRY_MS).unwrap();
    let shared = reloaded.load("t", 0, &log, START_MS + 60_000).unwrap();
    let loaded = shared.lock().unwrap().get(PRODUCERS[0]).cloned();
    assert_eq!(loaded, written);
    assert_eq!(loaded.map(|entry| entry.last_append_ms), Some(START_MS));
}
