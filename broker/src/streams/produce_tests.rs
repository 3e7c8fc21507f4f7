//! A partition's producer state is the same function of its log on every path that builds
//! it (issue #21: replicas must agree on every idempotent verdict): appending produces and
//! markers, replaying the stored log (a restart), and appending another replica's stored
//! batches (a follower catching up from a snapshot).

use std::path::Path;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wharf_protocol::batch::{Attributes, BatchBuilder, ControlKind, NewRecord};

use super::TxnCheck;
use crate::storage::testing::sim_env;
use crate::storage::{LogConfig, Partition};
use crate::streams::producer::{PartitionProducers, Producers, SequenceRefusal};
use crate::streams::topic::Topics;
use crate::streams::{AutoCreate, StreamError, StreamSettings, Streams};

const START_MS: i64 = 1_000_000_000;
/// The producers' expiry in these tests.
const EXPIRY_MS: i64 = 60_000;
/// Producer ids the operations pick from.
const PRODUCERS: [i64; 3] = [11, 12, 13];

fn streams() -> Streams {
    let (env, _fs, clock) = sim_env(START_MS);
    let data_dir = Path::new("/data");
    let topics = Topics::open(data_dir, env.clone(), LogConfig::default()).unwrap();
    let producers = Producers::open(env.fs.clone(), data_dir, EXPIRY_MS).unwrap();
    let settings = StreamSettings {
        auto_create_topics: AutoCreate::Off,
        default_partitions: 1,
    };
    Streams::new(topics, producers, clock, settings)
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
    /// The coordinator ends the producer's transaction.
    Marker { producer: usize, commit: bool },
    /// Time passes: a little, or past the expiry.
    Wait { ms: i64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..PRODUCERS.len(), 0u8..6, 1usize..4, prop::bool::weighted(0.1), prop::bool::weighted(0.2), -5_000i64..5_000)
            .prop_map(|(producer, kind, count, new_epoch, transactional, skew_ms)| Step::Batch {
                producer, kind, count, new_epoch, transactional, skew_ms,
            }),
        1 => (0..PRODUCERS.len(), any::<bool>()).prop_map(|(producer, commit)| Step::Marker { producer, commit }),
        2 => prop_oneof![0i64..2_000, Just(EXPIRY_MS + 1_000)].prop_map(|ms| Step::Wait { ms }),
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
        let mut end = offset;
        for decoded in wharf_protocol::batch::batches(read.bytes.clone()) {
            end = decoded.unwrap().header().next_offset();
        }
        pieces.push(read.bytes);
        offset = end;
    }
    pieces
}

/// Applies `steps` as a replica applies its commands (the clock in each command, no
/// check of this node's own tables), counting the batches refused as unknown producers.
fn apply(streams: &Streams, log: &std::sync::Arc<Partition>, steps: &[Step]) -> usize {
    let mut now_ms = START_MS;
    // Per producer: epoch, next sequence, last batch (sequence, count).
    let mut model = [(0i16, 0i32, None::<(i32, usize)>); PRODUCERS.len()];
    let mut unknown = 0;
    for step in steps {
        match step {
            Step::Wait { ms } => now_ms += ms,
            Step::Marker { producer, commit } => {
                let kind = if *commit {
                    ControlKind::Commit
                } else {
                    ControlKind::Abort
                };
                let epoch = model[*producer].0;
                streams
                    .append_marker("t", 0, log, PRODUCERS[*producer], epoch, kind, now_ms)
                    .unwrap();
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
                match streams.apply_produced("t", 0, log, bytes, now_ms, TxnCheck::Verified) {
                    Ok(_) => {
                        *next = sequence + count as i32;
                        *last = Some((sequence, count));
                    }
                    Err(StreamError::Sequence { refusal, .. }) => {
                        if refusal == SequenceRefusal::UnknownProducer {
                            unknown += 1;
                        }
                    }
                    Err(other) => panic!("{other}"),
                }
            }
        }
    }
    unknown
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Goal: whatever producers do (retries, gaps, new epochs, transactions, markers,
    /// idling past the expiry), the state built by appending, by replaying the stored log
    /// and by copying the stored batches to another log is the same, so a restarted
    /// replica and one caught up from a snapshot give the same verdicts as the leader.
    #[test]
    fn appending_replaying_and_copying_a_log_build_the_same_producer_state(
        steps in prop::collection::vec(step(), 1..120),
        piece_bytes in prop_oneof![Just(1usize), Just(4_096usize)],
    ) {
        let streams = streams();
        streams.create_topic("t", 1, Vec::new()).unwrap();
        streams.create_topic("copy", 1, Vec::new()).unwrap();
        let log = streams.partition("t", 0).unwrap();
        apply(&streams, &log, &steps);
        let applied = summary(&streams.producers().partition("t", 0).lock().unwrap());

        let pieces = stored(&log, piece_bytes);
        let mut replayed = PartitionProducers::default();
        for piece in &pieces {
            replayed.replay(piece.clone()).unwrap();
        }
        prop_assert_eq!(&summary(&replayed), &applied, "replayed");

        let copy = streams.partition("copy", 0).unwrap();
        for piece in pieces {
            streams.append_stored("copy", 0, &copy, BytesMut::from(&piece[..])).unwrap();
        }
        let copied = summary(&streams.producers().partition("copy", 0).lock().unwrap());
        prop_assert_eq!(&copied, &applied, "copied");
    }
}

/// Goal: a producer idle past the expiry is unknown at once by the clock of the command
/// that applies its next batch, on every replica alike, not only after some node's sweep
/// forgot it; starting over at sequence 0 is accepted.
#[test]
fn a_producer_idle_past_the_expiry_is_unknown_by_the_commands_clock() {
    let streams = streams();
    streams.create_topic("t", 1, Vec::new()).unwrap();
    let log = streams.partition("t", 0).unwrap();
    let steps = [
        Step::Batch {
            producer: 0,
            kind: 0,
            count: 2,
            new_epoch: false,
            transactional: false,
            skew_ms: 0,
        },
        Step::Wait {
            ms: EXPIRY_MS + 1_000,
        },
        // Its next sequence: unknown now.
        Step::Batch {
            producer: 0,
            kind: 5,
            count: 1,
            new_epoch: false,
            transactional: false,
            skew_ms: 0,
        },
        // Starting over at 0: appended.
        Step::Batch {
            producer: 0,
            kind: 0,
            count: 1,
            new_epoch: false,
            transactional: false,
            skew_ms: 0,
        },
    ];
    assert_eq!(apply(&streams, &log, &steps), 1);
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
