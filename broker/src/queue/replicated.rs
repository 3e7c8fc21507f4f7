//! Replicated queues (issue #21): a durable queue whose every write goes through a
//! replicated log, so that a new leader continues with the same messages, settlements and
//! delivery counts.
//!
//! - **The commands.** The queue's task on the leader does not write its store; it submits
//!   each write as a [`QueueCommand`] to the queue's log ([`QueueLog`], an openraft group
//!   among the queue's replicas that the core runs) and waits for it to be committed and
//!   applied here. Every replica, the leader included, applies the committed commands in
//!   log order to its own copy of the store with [`apply`]: publishes append to the message
//!   log, settlements (acks, dead-letters, expiries, purges) and delivery counts go to the
//!   ack log and the ack state. So every replica holds the same message ids and the same ack
//!   state, and only committed writes are in any store.
//! - **Message ids.** The leader knows where its publishes will land: it is the only
//!   writer, and it starts only once everything committed before its term is applied
//!   ([`QueueLog`]'s readiness is the core's business). Each publish carries the id the
//!   leader gave its first message; a replica whose log ends elsewhere refuses it (as every
//!   replica then does), which a correct leader never sees.
//! - **Deliveries.** A delivery's count goes through the log before the message is handed
//!   out, as a single node writes it to its ack log, so after a failover the new leader
//!   marks what may have been delivered `redelivered` and counts it toward a delivery limit.
//!   Not waited for: a count lost with its leader only loses the mark.
//! - **Durability.** The store's logs are written without fsyncs of their own: the raft log
//!   has each command durably on a majority. A checkpoint (every 128 applied entries)
//!   fsyncs both logs and compacts the ack log ([`QueueStore::persist_replicated`]); after
//!   a restart the message log is cut back to the checkpoint and the commands after it are
//!   applied again. Settling and counting again what is already settled or counted changes
//!   nothing, and the message log's cut makes the publishes land where they did.
//! - **Catching up.** A replica behind the leader's purged raft log gets the leader's ack
//!   state and the message batches it lacks in a snapshot ([`snapshot_state`],
//!   [`install_state`]); batches beyond one piece of the replicated log go ahead in
//!   pieces that hold batches only ([`snapshot_piece`]), the state travels with the last.
//!
//! Layer rule: this module knows the store and the bytes of a command, nothing of openraft
//! or the cluster; the core adapts [`apply`] to the replicated log's `Applier`.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::queue::store::QueueStore;
use crate::queue::types::QueueError;
use crate::storage::Error as StorageError;

/// Layout version of a replicated queue command.
const COMMAND_VERSION: u8 = 1;
/// Layout version of a queue snapshot's state.
const SNAPSHOT_VERSION: u8 = 1;

const KIND_MESSAGES: u8 = 1;
const KIND_SETTLE: u8 = 2;
const KIND_COUNTS: u8 = 3;

/// The wait for one submitted command: its outcome once it is committed and applied on this
/// node (the leader), or why it was not.
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<Bytes, QueueError>> + Send + 'static>>;

/// A replicated queue's log, as its task on the leader sees it.
pub trait QueueLog: Send + Sync + Debug + 'static {
    /// Hands `command` to the log at once (commands submitted one after another are in the
    /// log in that order) and returns the wait for its outcome.
    fn submit(&self, command: Bytes) -> CommitFuture;
}

/// One write of a replicated queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueCommand {
    /// Store a batch of messages, the first with id `base`.
    Messages {
        base: i64,
        now_ms: i64,
        batch: Bytes,
    },
    /// Settle these ids.
    Settle { now_ms: i64, ids: Vec<i64> },
    /// Record these delivery counts.
    Counts {
        now_ms: i64,
        counts: Vec<(i64, u32)>,
    },
}

impl QueueCommand {
    /// The command's bytes: version, kind, clock reading, then the kind's fields.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(COMMAND_VERSION);
        match self {
            QueueCommand::Messages {
                base,
                now_ms,
                batch,
            } => {
                out.reserve(17 + batch.len());
                out.put_u8(KIND_MESSAGES);
                out.put_i64(*now_ms);
                out.put_i64(*base);
                out.put_slice(batch);
            }
            QueueCommand::Settle { now_ms, ids } => {
                out.reserve(13 + ids.len() * 8);
                out.put_u8(KIND_SETTLE);
                out.put_i64(*now_ms);
                out.put_u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
                for id in ids {
                    out.put_i64(*id);
                }
            }
            QueueCommand::Counts { now_ms, counts } => {
                out.reserve(13 + counts.len() * 12);
                out.put_u8(KIND_COUNTS);
                out.put_i64(*now_ms);
                out.put_u32(u32::try_from(counts.len()).unwrap_or(u32::MAX));
                for (id, count) in counts {
                    out.put_i64(*id);
                    out.put_u32(*count);
                }
            }
        }
        out.freeze()
    }

    /// Reads a command's bytes.
    ///
    /// # Errors
    /// Another version or kind, or bytes that end early or run on.
    pub fn decode(bytes: &Bytes) -> Result<QueueCommand, String> {
        let mut body = bytes.clone();
        if body.remaining() < 10 {
            return Err("a replicated queue command of fewer than 10 bytes".to_string());
        }
        let version = body.get_u8();
        if version != COMMAND_VERSION {
            return Err(format!(
                "a replicated queue command of version {version}, which this build does not read"
            ));
        }
        let kind = body.get_u8();
        let now_ms = body.get_i64();
        let command = match kind {
            KIND_MESSAGES => {
                if body.remaining() < 8 {
                    return Err("a replicated publish without its base id".to_string());
                }
                let base = body.get_i64();
                QueueCommand::Messages {
                    base,
                    now_ms,
                    batch: body.split_to(body.remaining()),
                }
            }
            KIND_SETTLE => {
                let count = counted(&mut body, 8)?;
                let ids = (0..count).map(|_| body.get_i64()).collect();
                QueueCommand::Settle { now_ms, ids }
            }
            KIND_COUNTS => {
                let count = counted(&mut body, 12)?;
                let counts = (0..count)
                    .map(|_| (body.get_i64(), body.get_u32()))
                    .collect();
                QueueCommand::Counts { now_ms, counts }
            }
            other => {
                return Err(format!(
                    "a replicated queue command of unknown kind {other}"
                ))
            }
        };
        if body.has_remaining() {
            return Err("a replicated queue command with bytes after its end".to_string());
        }
        Ok(command)
    }
}

/// Reads a u32 count of items of `width` bytes each and checks they are all there.
fn counted(body: &mut Bytes, width: usize) -> Result<usize, String> {
    if body.remaining() < 4 {
        return Err("a replicated queue command without its count".to_string());
    }
    let count = body.get_u32() as usize;
    if body.remaining() != count.saturating_mul(width) {
        return Err(format!(
            "a replicated queue command of {count} items in {} bytes",
            body.remaining()
        ));
    }
    Ok(count)
}

/// Applies one committed command to this replica's store; the outcome is what the leader's
/// task gets back: empty, or a refusal's reason as text.
///
/// # Errors
/// A storage failure (the replica stops applying: every replica refuses bad bytes alike,
/// but only this one failed to write good ones).
pub fn apply(store: &QueueStore, command: &Bytes) -> Result<Bytes, StorageError> {
    let refused = |reason: String| Ok(Bytes::from(reason.into_bytes()));
    match QueueCommand::decode(command) {
        Err(reason) => refused(reason),
        Ok(QueueCommand::Messages { base, batch, .. }) => {
            let mut batch = BytesMut::from(&batch[..]);
            match store.apply_messages(base, &mut batch) {
                Ok(Ok(_)) => Ok(Bytes::new()),
                Ok(Err(reason)) => refused(reason),
                Err(error) if error.is_local_failure() => Err(error),
                Err(error) => refused(error.to_string()),
            }
        }
        Ok(QueueCommand::Settle { now_ms, ids }) => {
            store.apply_settle(&ids, now_ms).map(|()| Bytes::new())
        }
        Ok(QueueCommand::Counts { now_ms, counts }) => {
            store.apply_counts(&counts, now_ms).map(|()| Bytes::new())
        }
    }
}

/// The leader's task's view of an outcome: `Ok` when applied, the refusal otherwise.
///
/// # Errors
/// The refusal, as a storage error of the queue.
pub fn outcome(applied: &Bytes) -> Result<(), QueueError> {
    if applied.is_empty() {
        return Ok(());
    }
    Err(QueueError::Storage(format!(
        "the replicated queue refused a write: {}",
        String::from_utf8_lossy(applied)
    )))
}

/// The first byte of a snapshot piece that holds message batches only: the ones before the
/// last piece of a snapshot sent in pieces, whose state travels with the last.
const PIECE_VERSION: u8 = 0x80;

/// A snapshot piece of `batches` only (see [`PIECE_VERSION`]).
pub fn snapshot_piece(batches: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + batches.len());
    out.put_u8(PIECE_VERSION);
    out.put_slice(batches);
    out.freeze()
}

/// The batches of a piece [`snapshot_piece`] made, or `None` for a whole snapshot (state
/// first, [`read_snapshot`]).
pub fn piece_batches(bytes: &Bytes) -> Option<Bytes> {
    (bytes.first() == Some(&PIECE_VERSION)).then(|| bytes.slice(1..))
}

/// A snapshot's state part: the leader's ack state and delivery counts, then (appended by
/// the caller) the message batches the follower lacks.
pub fn snapshot_state(store: &QueueStore) -> BytesMut {
    let state = store.ack_state();
    let counts = store.delivery_counts();
    let settled = state.settled_above();
    let mut out = BytesMut::with_capacity(1 + 8 + 4 + settled.len() * 8 + 4 + counts.len() * 12);
    out.put_u8(SNAPSHOT_VERSION);
    out.put_i64(state.low_water());
    out.put_u32(u32::try_from(settled.len()).unwrap_or(u32::MAX));
    for id in settled {
        out.put_i64(*id);
    }
    out.put_u32(u32::try_from(counts.len()).unwrap_or(u32::MAX));
    let mut counts: Vec<(i64, u32)> = counts.into_iter().collect();
    counts.sort_unstable();
    for (id, count) in counts {
        out.put_i64(id);
        out.put_u32(count);
    }
    out
}

/// A snapshot read back: the leader's ack state and counts, and the batches after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotState {
    /// Every id below this is settled on the leader.
    pub low_water: i64,
    /// The leader's settled ids above `low_water`.
    pub settled_above: Vec<i64>,
    /// The leader's delivery counts of unsettled messages.
    pub counts: Vec<(i64, u32)>,
    /// Message batches from the follower's end.
    pub batches: Bytes,
}

/// Reads a snapshot [`snapshot_state`] began.
///
/// # Errors
/// Another version, or bytes that end early.
pub fn read_snapshot(bytes: &Bytes) -> Result<SnapshotState, String> {
    let mut body = bytes.clone();
    let short = || "a queue snapshot that ends early".to_string();
    if body.remaining() < 13 {
        return Err(short());
    }
    let version = body.get_u8();
    if version != SNAPSHOT_VERSION {
        return Err(format!(
            "a queue snapshot of version {version}, which this build does not read"
        ));
    }
    let low_water = body.get_i64();
    let settled = body.get_u32() as usize;
    if body.remaining() < settled.saturating_mul(8).saturating_add(4) {
        return Err(short());
    }
    let settled_above = (0..settled).map(|_| body.get_i64()).collect();
    let counted = body.get_u32() as usize;
    if body.remaining() < counted.saturating_mul(12) {
        return Err(short());
    }
    let counts = (0..counted)
        .map(|_| (body.get_i64(), body.get_u32()))
        .collect();
    Ok(SnapshotState {
        low_water,
        settled_above,
        counts,
        batches: body,
    })
}

/// Brings a follower's ack state up to a snapshot's: settles what the leader settled and
/// this replica has not (its state is a prefix of the leader's, so nothing it settled is
/// unsettled there) and takes the leader's delivery counts. The caller has appended the
/// snapshot's batches first.
///
/// # Errors
/// Storage errors.
pub fn install_state(
    store: &QueueStore,
    snapshot: &SnapshotState,
    now_ms: i64,
) -> Result<(), StorageError> {
    let here = store.ack_state();
    let mut ids: Vec<i64> = (here.low_water()..snapshot.low_water)
        .filter(|id| !here.is_settled(*id))
        .collect();
    ids.extend(
        snapshot
            .settled_above
            .iter()
            .filter(|id| !here.is_settled(**id)),
    );
    for chunk in ids.chunks(crate::queue::store::SETTLE_IDS_MAX) {
        store.apply_settle(chunk, now_ms)?;
    }
    store.apply_counts(&snapshot.counts, now_ms)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::testing::sim_env;
    use crate::storage::{FlushPolicy, LogConfig};
    use proptest::prelude::*;
    use std::path::Path;
    use wharf_protocol::batch::{BatchBuilder, NewRecord};

    /// A replicated queue's store for a test, on a simulated disk with a manual clock:
    /// small segments (several in a test), no fsyncs of its own (a replica's durability
    /// is its raft log's).
    pub(crate) fn test_store(
        dir: &str,
    ) -> (QueueStore, std::sync::Arc<crate::storage::ManualClock>) {
        let (env, _fs, clock) = sim_env(1_000);
        let config = LogConfig {
            flush: FlushPolicy::Never,
            segment_bytes_max: 64 * 1024,
            index_bytes_max: 4096,
            ..LogConfig::default()
        };
        (
            QueueStore::open(Path::new(dir), config, env).unwrap(),
            clock,
        )
    }

    fn open(dir: &str) -> QueueStore {
        test_store(dir).0
    }

    fn batch(count: usize) -> Bytes {
        let mut builder = BatchBuilder::new(1_000);
        for index in 0..count {
            builder
                .push(&NewRecord {
                    timestamp_ms: 1_000,
                    value: Some(Bytes::from(format!("m{index}-{}", "x".repeat(200)))),
                    ..NewRecord::default()
                })
                .unwrap();
        }
        let mut bytes = BytesMut::new();
        builder.build_into(&mut bytes);
        bytes.freeze()
    }

    /// One step of a leader's writes: a publish of 1–4 messages, or a settle or a count of
    /// ids picked (modulo the messages so far) by the numbers given.
    #[derive(Debug, Clone)]
    enum Step {
        Publish(usize),
        Settle(Vec<u16>),
        Count(Vec<(u16, u32)>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..5).prop_map(Step::Publish),
            proptest::collection::vec(any::<u16>(), 1..6).prop_map(Step::Settle),
            proptest::collection::vec((any::<u16>(), 1u32..4), 1..4).prop_map(Step::Count),
        ]
    }

    /// The commands a leader would submit for `steps`, with the ids each publish lands on.
    fn commands(steps: &[Step]) -> Vec<Bytes> {
        let mut next = 0i64;
        let mut out = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            let now_ms = 1_000 + index as i64;
            let command = match step {
                Step::Publish(count) => {
                    let command = QueueCommand::Messages {
                        base: next,
                        now_ms,
                        batch: batch(*count),
                    };
                    next += *count as i64;
                    command
                }
                Step::Settle(_) | Step::Count(_) if next == 0 => continue,
                Step::Settle(picks) => QueueCommand::Settle {
                    now_ms,
                    ids: picks.iter().map(|pick| i64::from(*pick) % next).collect(),
                },
                Step::Count(picks) => QueueCommand::Counts {
                    now_ms,
                    counts: picks
                        .iter()
                        .map(|(pick, count)| (i64::from(*pick) % next, *count))
                        .collect(),
                },
            };
            out.push(command.encode());
        }
        out
    }

    /// What a replica's store holds as a task would start from it: unsettled ids, their
    /// delivery counts, the end of the message log.
    pub(crate) fn view(store: &QueueStore) -> (Vec<i64>, Vec<(i64, u32)>, i64) {
        let unsettled: Vec<i64> = store.unsettled().unwrap().iter().map(|m| m.id).collect();
        let mut counts: Vec<(i64, u32)> = store
            .delivery_counts()
            .into_iter()
            .filter(|(id, _)| unsettled.contains(id))
            .collect();
        counts.sort_unstable();
        (unsettled, counts, store.messages().log_end_offset())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Replicas applying the same commands hold the same queue; one that applied a
        /// prefix and then installed the leader's snapshot holds it too; applying the
        /// settlements and counts again (a restart re-applies what follows its
        /// checkpoint) changes nothing.
        #[test]
        fn replicas_and_snapshots_agree_with_the_leader(
            steps in proptest::collection::vec(step(), 1..40),
            cut in 0usize..40,
        ) {
            let commands = commands(&steps);
            let leader = open("/data/queues/leader");
            let follower = open("/data/queues/follower");
            let behind = open("/data/queues/behind");
            let cut = cut.min(commands.len());
            for (index, command) in commands.iter().enumerate() {
                prop_assert_eq!(apply(&leader, command).unwrap(), Bytes::new());
                prop_assert_eq!(apply(&follower, command).unwrap(), Bytes::new());
                if index % 5 == 4 {
                    // A checkpoint compacts the follower's copy: nothing it serves changes.
                    let end = follower.messages().log_end_offset();
                    prop_assert_eq!(follower.persist_replicated(2_000, end).unwrap(), end);
                }
                if index < cut {
                    apply(&behind, command).unwrap();
                }
            }
            prop_assert_eq!(view(&follower), view(&leader));

            let from = behind.messages().log_end_offset();
            let to = leader.messages().log_end_offset();
            let mut snapshot = snapshot_state(&leader);
            let mut at = from;
            while at < to {
                let read = leader.messages().read(at, 1 << 20).unwrap();
                for decoded in wharf_protocol::batch::batches(read.bytes) {
                    let decoded = decoded.unwrap();
                    snapshot.extend_from_slice(decoded.as_bytes());
                    at = decoded.header().next_offset();
                }
            }
            let snapshot = read_snapshot(&snapshot.freeze()).unwrap();
            let mut missing = BytesMut::from(&snapshot.batches[..]);
            if !missing.is_empty() {
                crate::append::append_without_fsync(behind.messages(), &mut missing).unwrap();
            }
            install_state(&behind, &snapshot, 5_000).unwrap();
            prop_assert_eq!(view(&behind), view(&leader));

            for command in &commands {
                if !matches!(QueueCommand::decode(command), Ok(QueueCommand::Messages { .. })) {
                    apply(&follower, command).unwrap();
                }
            }
            prop_assert_eq!(view(&follower), view(&leader));
        }
    }

    #[test]
    fn snapshot_bytes_are_as_docs_cluster_md_says() {
        // Golden bytes of the two layouts a queue's snapshot pieces have (docs/CLUSTER.md,
        // Replicated queues): a piece of batches only, and the state that begins the last.
        let piece = snapshot_piece(b"batches");
        assert_eq!(&piece[..], b"\x80batches");
        assert_eq!(piece_batches(&piece).as_deref(), Some(&b"batches"[..]));
        let store = open("/data/queues/golden");
        let state = snapshot_state(&store).freeze();
        assert_eq!(
            &state[..],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            "version 1, low-water mark 0 (i64), no settled ids (u32), no counts (u32)"
        );
        assert_eq!(piece_batches(&state), None);
        let read = read_snapshot(&state).unwrap();
        assert_eq!((read.low_water, read.batches.len()), (0, 0));
    }

    #[test]
    fn a_publish_the_leader_placed_elsewhere_is_refused_alike() {
        let store = open("/data/queues/misplaced");
        let first = QueueCommand::Messages {
            base: 0,
            now_ms: 1,
            batch: batch(2),
        }
        .encode();
        assert_eq!(apply(&store, &first).unwrap(), Bytes::new());
        // Applied again (or placed by a stale leader): the log ends at 2, not 0.
        let refused = apply(&store, &first).unwrap();
        assert!(outcome(&refused).is_err());
        assert_eq!(store.messages().log_end_offset(), 2);
        // Bytes this build does not read are refused, not a storage failure.
        assert!(outcome(&apply(&store, &Bytes::from_static(b"\x09")).unwrap()).is_err());
    }

    #[test]
    fn commands_read_back_as_written_and_refuse_other_layouts() {
        let commands = [
            QueueCommand::Messages {
                base: 42,
                now_ms: 7,
                batch: Bytes::from_static(b"batch bytes"),
            },
            QueueCommand::Settle {
                now_ms: 8,
                ids: vec![1, 2, 9],
            },
            QueueCommand::Counts {
                now_ms: 9,
                counts: vec![(3, 1), (4, 2)],
            },
            QueueCommand::Settle {
                now_ms: 10,
                ids: Vec::new(),
            },
        ];
        for command in commands {
            let bytes = command.encode();
            assert_eq!(QueueCommand::decode(&bytes), Ok(command.clone()));
            let mut other = bytes.to_vec();
            other[0] = 2;
            assert!(QueueCommand::decode(&Bytes::from(other)).is_err());
            if !matches!(command, QueueCommand::Messages { .. }) {
                // A count that does not match the bytes.
                let mut longer = bytes.to_vec();
                longer.push(0);
                assert!(QueueCommand::decode(&Bytes::from(longer)).is_err());
                let shorter = bytes.slice(..bytes.len() - 1);
                assert!(QueueCommand::decode(&shorter).is_err());
            }
        }
        let mut unknown = QueueCommand::Settle {
            now_ms: 1,
            ids: vec![],
        }
        .encode()
        .to_vec();
        unknown[1] = 9;
        assert!(QueueCommand::decode(&Bytes::from(unknown)).is_err());
        assert!(QueueCommand::decode(&Bytes::from_static(b"\x01\x01")).is_err());
    }

    #[test]
    fn a_settle_command_is_pinned_byte_for_byte() {
        let bytes = QueueCommand::Settle {
            now_ms: 0x0102,
            ids: vec![5],
        }
        .encode();
        assert_eq!(
            &bytes[..],
            &[
                1, // version
                2, // kind: settle
                0, 0, 0, 0, 0, 0, 1, 2, // now_ms
                0, 0, 0, 1, // count
                0, 0, 0, 0, 0, 0, 0, 5, // id
            ]
        );
    }
}
