//! Replicated partitions (issue #21, first part): a partition the metadata log places on
//! more than one node is written through its replicated log (`cluster/replica.rs`), one
//! openraft group per partition among its replicas.
//!
//! - **Write path.** A produce reaches the partition's leader as before (routing). The
//!   leader checks what depends on it ([`Streams::check_produced`]: sizes, the clock, the
//!   producer ids it handed out), then submits the batches and its clock reading to the
//!   group in request order. Once a majority has the command durably it is applied on every
//!   replica by [`PartitionApplier`]: the produce rules that decide offsets and idempotent
//!   verdicts ([`Streams::apply_produced`]) and the append path. The leader's outcome is the
//!   produce's answer: acks=all and acks=1 alike are answered after the majority commit.
//! - **Read path.** A replica's partition holds only applied, so committed, records: a
//!   consumer of the leader never reads a record that a failover removes.
//! - **Leaders.** A node whose member becomes the group's leader proposes
//!   `SetPartitionLeader` to the metadata log, and routing (Kafka Metadata, native
//!   Metadata, the NotLeader refusals) follows it.
//!
//! - **Transactions.** A transactional batch is checked against its transaction by the
//!   leader (`core/txn_markers.rs`) before it is submitted, and a transaction's marker is a
//!   command of its own ([`MARKER_COMMAND`]) that every replica applies with
//!   [`Streams::append_marker`], so the last stable offset and the aborted transactions
//!   are the same on every replica.
//!
//! - **DeleteRecords** is a command too ([`DELETE_RECORDS_COMMAND`]): every replica moves its
//!   log start at the same point of the log, so a new leader keeps it.
//!
//! - **Producer state** travels with the group's checkpoints and snapshots
//!   ([`Applier::state`]): a restarted or rebuilt replica holds the leader's, not what its
//!   records alone could rebuild.
//!
//! Not yet: retention and compaction still act on each replica on its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cluster::metadata::{
    MetadataCommand, MetadataResult, MetadataState, NodeId, INTERNAL_TOPIC_PREFIX,
};
use crate::cluster::raft::{Cluster, Timing};
use crate::cluster::replica::{Adopt, Applier, GroupName, Replica, ReplicaError};
use crate::cluster::store::Io;
use crate::storage::{Partition, RealFs};
use crate::streams::produce::TxnCheck;
use crate::streams::producer::SequenceRefusal;
use crate::streams::{StreamError, Streams};
use wharf_protocol::batch::ControlKind;

use super::Broker;

/// Layout version of a replicated produce command (its first byte).
const COMMAND_VERSION: u8 = 1;
/// First byte of a replicated transaction marker command.
pub(crate) const MARKER_COMMAND: u8 = 2;
/// Bytes of a marker command: kind, clock, producer id, epoch, commit.
const MARKER_COMMAND_BYTES: usize = 1 + 8 + 8 + 2 + 1 + 4;
/// A marker command of a build before coordinator epochs (no epoch: read as -1).
const MARKER_COMMAND_BYTES_V1: usize = MARKER_COMMAND_BYTES - 4;
/// First byte of a replicated DeleteRecords command (Kafka's: the log start moves up).
const DELETE_RECORDS_COMMAND: u8 = 3;
/// Bytes of a DeleteRecords command: kind, offset.
const DELETE_RECORDS_COMMAND_BYTES: usize = 1 + 8;
/// Applied entries between two checkpoints of a replicated partition: bounds the raft log
/// held in memory and the entries applied again after a restart.
const SNAPSHOT_EVERY: u64 = 128;
/// The shortest heartbeat of a replicated partition's group.
const REPLICA_HEARTBEAT_MIN: Duration = Duration::from_millis(200);
/// How often a node looks for groups it now leads that the metadata does not name yet,
/// and samples its members' in-sync views (`Replica::status`).
const LEADER_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Entries one AppendEntries of a partition's group carries at most (and at most
/// `store::APPEND_BYTES_MAX` bytes past the first). One per AppendEntries (until
/// 2026-12-07) made each entry a follower round trip of its own; four gave 1.1x the
/// replicated produce at 1 KiB (docs/BENCHMARKS.md).
const PARTITION_ENTRIES_PER_APPEND: u64 = 4;

/// A replicated partition's timeouts: the metadata log's, but a heartbeat of at least
/// 200 ms (openraft 0.9 gives an AppendEntries one heartbeat to be answered, and a
/// partition's entries are large) and an election timeout of 2.5–3.5 heartbeats. openraft
/// 0.9 starts an election only after the leader's lease (the longest election timeout)
/// plus the election timeout without hearing from the leader, so a dead leader is
/// replaced 1.2–1.4 s after its last heartbeat (heartbeat 200 ms): six heartbeats missed.
pub(crate) fn replica_timing(metadata: Timing) -> Timing {
    let heartbeat = metadata.heartbeat.max(REPLICA_HEARTBEAT_MIN);
    let election_min = metadata.election_min.max(heartbeat * 5 / 2);
    Timing {
        heartbeat,
        election_min,
        election_max: election_min + heartbeat,
        snapshot_every: SNAPSHOT_EVERY,
        // A produce's batches are MiBs: a few entries per AppendEntries, at most
        // `store::APPEND_BYTES_MAX` of them past the first (see Replica::start).
        entries_per_append: PARTITION_ENTRIES_PER_APPEND,
    }
}

/// The environment switch of the fault loop's control run (`tests/tests/fault_loop.rs`):
/// with `WHARF_UNSAFE_ACK_BEFORE_COMMIT=1` a replicated produce is acknowledged as soon as
/// the leader submitted it (base offset -1), before any replica has it durably — the "no
/// quorum" broker the control run must catch losing acknowledged records. Never for
/// production; the broker warns once when it is on.
pub(crate) fn acks_before_commit() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on =
            std::env::var_os("WHARF_UNSAFE_ACK_BEFORE_COMMIT").is_some_and(|value| value == "1");
        if on {
            crate::cluster::replica::check_leases(false);
            tracing::warn!(
                "WHARF_UNSAFE_ACK_BEFORE_COMMIT=1: replicated produces are acknowledged before \
                 a majority has them, so acknowledged records can be lost (a test's control \
                 run only)"
            );
        }
        on
    })
}

/// A leader's in-sync replicas (Kafka's ISR) among `set`'s: itself and each follower its
/// `status` reports in sync that the set holds or is moving to (a node a redirected move
/// left in the group's voters is not listed), sorted.
pub(crate) fn in_sync_set(
    leader: NodeId,
    status: &crate::cluster::replica::ReplicaStatus,
    set: &crate::cluster::metadata::Replicas,
) -> Vec<NodeId> {
    let mut in_sync: Vec<NodeId> = std::iter::once(leader)
        .chain(
            status
                .followers
                .iter()
                .filter(|follower| follower.in_sync && set.hosts(follower.node))
                .map(|follower| follower.node),
        )
        .collect();
    in_sync.sort_unstable();
    in_sync.dedup();
    in_sync
}

/// The least time between two records of one partition's in-sync replicas by this node:
/// each record is a metadata-log entry every node applies, and a set that changes faster
/// than this is not worth telling clients about.
const IN_SYNC_RECORD_EVERY: Duration = Duration::from_secs(1);

/// The replicated log's name for partition `partition` of `topic` (unambiguous: the
/// partition is the text after the last `-`, as in partition directory names).
pub(crate) fn group_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

/// This node's member of partition `partition` of `topic`'s replicated log when it is a
/// member of the topic `state` holds: a member of a deleted topic of this name (the delete
/// and the create again not carried out here yet) serves nothing of the new topic.
pub(crate) fn topic_member(
    cluster: &Cluster,
    state: &MetadataState,
    topic: &str,
    partition: u32,
) -> Option<Replica> {
    let member = cluster.replicas().get(&group_name(topic, partition))?;
    (member.instance() == state.topics.get(topic)?.topic_id).then_some(member)
}

/// A produce's command: the leader's clock reading and the checked batches.
fn encode_command(now_ms: i64, batches: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(9 + batches.len());
    out.put_u8(COMMAND_VERSION);
    out.put_i64(now_ms);
    out.put_slice(batches);
    out.freeze()
}

fn decode_command(command: &Bytes) -> Option<(i64, BytesMut)> {
    let mut body = command.clone();
    if body.remaining() < 9 || body.get_u8() != COMMAND_VERSION {
        return None;
    }
    let now_ms = body.get_i64();
    Some((now_ms, BytesMut::from(&body[..])))
}

/// A transaction marker's command: the coordinator's clock reading, the producer id and
/// epoch whose transaction it ends, whether it committed, and the coordinator's epoch.
pub(crate) fn encode_marker(marker: &crate::txn::Marker) -> Bytes {
    let mut out = BytesMut::with_capacity(MARKER_COMMAND_BYTES);
    out.put_u8(MARKER_COMMAND);
    out.put_i64(marker.now_ms);
    out.put_i64(marker.producer_id);
    out.put_i16(marker.epoch);
    out.put_u8(u8::from(marker.kind == ControlKind::Commit));
    // A marker without an epoch (an earlier build's) keeps the earlier layout.
    if let Some(coordinator_epoch) = marker.coordinator_epoch {
        out.put_i32(coordinator_epoch);
    }
    out.freeze()
}

/// A DeleteRecords command: the offset the log start moves up to (-1: the log end when it
/// is applied, the same on every replica).
fn encode_delete_records(offset: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(DELETE_RECORDS_COMMAND_BYTES);
    out.put_u8(DELETE_RECORDS_COMMAND);
    out.put_i64(offset);
    out.freeze()
}

fn decode_delete_records(command: &Bytes) -> Option<i64> {
    let mut body = command.clone();
    if body.remaining() != DELETE_RECORDS_COMMAND_BYTES || body.get_u8() != DELETE_RECORDS_COMMAND {
        return None;
    }
    Some(body.get_i64())
}

/// A decoded marker command: clock, producer id, epoch, kind, coordinator epoch (none in
/// an earlier build's command).
type MarkerFields = (i64, i64, i16, ControlKind, Option<i32>);

fn decode_marker(command: &Bytes) -> Option<MarkerFields> {
    let mut body = command.clone();
    let length = body.remaining();
    if (length != MARKER_COMMAND_BYTES && length != MARKER_COMMAND_BYTES_V1)
        || body.get_u8() != MARKER_COMMAND
    {
        return None;
    }
    let now_ms = body.get_i64();
    let producer_id = body.get_i64();
    let epoch = body.get_i16();
    let kind = match body.get_u8() {
        0 => ControlKind::Abort,
        1 => ControlKind::Commit,
        _ => return None,
    };
    let coordinator_epoch = body.has_remaining().then(|| body.get_i32());
    Some((now_ms, producer_id, epoch, kind, coordinator_epoch))
}

/// What applying a produce gave, as the leader hands it back to the producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum AppliedProduce {
    Appended {
        base_offset: i64,
        last_offset: i64,
    },
    Sequence {
        refusal: SequenceRefusal,
        producer_id: i64,
        epoch: i16,
        first_sequence: i32,
        last_sequence: i32,
    },
    Refused(String),
    /// A DeleteRecords applied: the new log start.
    Deleted {
        log_start: i64,
    },
    /// A DeleteRecords past the log end (Kafka's OFFSET_OUT_OF_RANGE).
    DeleteOutOfRange {
        offset: i64,
        log_start: i64,
        high_watermark: i64,
    },
}

/// Applies a replicated partition's committed produces to its log on this node.
#[derive(Debug)]
pub(crate) struct PartitionApplier {
    streams: Arc<Streams>,
    topic: String,
    partition: u32,
    log: Arc<Partition>,
}

/// A command's refusal as its outcome, or the local storage failure that must stop this
/// member (the others applied the command; this replica cannot go on without it).
fn refused(error: StreamError) -> std::io::Result<AppliedProduce> {
    match error {
        StreamError::Storage(error) if error.is_local_failure() => {
            Err(std::io::Error::other(error.to_string()))
        }
        other => Ok(AppliedProduce::Refused(other.to_string())),
    }
}

/// An applied command's outcome as the bytes the leader hands back to the caller.
fn outcome_bytes(outcome: &AppliedProduce) -> std::io::Result<Bytes> {
    serde_json::to_vec(outcome)
        .map(Bytes::from)
        .map_err(std::io::Error::other)
}

impl PartitionApplier {
    /// The partition's producer state.
    fn producers(&self) -> crate::streams::producer::SharedProducers {
        self.streams
            .producers()
            .partition(&self.topic, self.partition)
    }

    /// Applies a DeleteRecords command: every replica moves its log start alike.
    fn apply_delete_records(&self, command: &Bytes) -> std::io::Result<Bytes> {
        let outcome = match decode_delete_records(command) {
            None => AppliedProduce::Refused("a delete command this build does not read".into()),
            // The log's high watermark (what the range is checked against, and -1 means)
            // moves with each replica's own fsyncs: fsync first, so it is the log end,
            // the same on every replica at this point of the log.
            Some(offset) => match self
                .log
                .flush()
                .and_then(|()| self.log.delete_records_before(offset))
            {
                Ok(log_start) => AppliedProduce::Deleted { log_start },
                Err(crate::storage::Error::OffsetOutOfRange {
                    offset,
                    log_start,
                    high_watermark,
                }) => AppliedProduce::DeleteOutOfRange {
                    offset,
                    log_start,
                    high_watermark,
                },
                Err(error) if error.is_local_failure() => {
                    return Err(std::io::Error::other(error.to_string()))
                }
                Err(other) => AppliedProduce::Refused(other.to_string()),
            },
        };
        outcome_bytes(&outcome)
    }

    /// Applies a transaction marker's command.
    fn apply_marker(&self, command: &Bytes) -> std::io::Result<Bytes> {
        let outcome = match decode_marker(command) {
            None => AppliedProduce::Refused("a marker command this build does not read".into()),
            Some((now_ms, producer_id, epoch, kind, coordinator_epoch)) => {
                match self.streams.append_marker(
                    &self.topic,
                    self.partition,
                    &self.log,
                    producer_id,
                    epoch,
                    kind,
                    now_ms,
                    coordinator_epoch,
                ) {
                    Ok(receipt) => AppliedProduce::Appended {
                        base_offset: receipt.appended().base_offset,
                        last_offset: receipt.appended().last_offset,
                    },
                    Err(error) => refused(error)?,
                }
            }
        };
        outcome_bytes(&outcome)
    }
}

impl Applier for PartitionApplier {
    fn enter_term(&self, term: u64) -> std::io::Result<()> {
        self.log
            .start_epoch(super::routing::epoch_of(term))
            .map(|_| ())
            .map_err(|error| {
                std::io::Error::other(format!("{}-{}: {error}", self.topic, self.partition))
            })
    }

    fn apply(&self, command: &Bytes) -> std::io::Result<Bytes> {
        match command.first() {
            Some(&MARKER_COMMAND) => return self.apply_marker(command),
            Some(&DELETE_RECORDS_COMMAND) => return self.apply_delete_records(command),
            _ => {}
        }
        let outcome = match decode_command(command) {
            None => AppliedProduce::Refused("a replicated command this build does not read".into()),
            Some((now_ms, batches)) => match self.streams.apply_produced(
                &self.topic,
                self.partition,
                &self.log,
                batches,
                now_ms,
                TxnCheck::Verified,
            ) {
                Ok(receipt) => AppliedProduce::Appended {
                    base_offset: receipt.appended().base_offset,
                    last_offset: receipt.appended().last_offset,
                },
                Err(StreamError::Sequence {
                    refusal,
                    producer_id,
                    epoch,
                    first_sequence,
                    last_sequence,
                    ..
                }) => AppliedProduce::Sequence {
                    refusal,
                    producer_id,
                    epoch,
                    first_sequence,
                    last_sequence,
                },
                Err(error) => refused(error)?,
            },
        };
        outcome_bytes(&outcome)
    }

    fn position(&self) -> i64 {
        self.log.log_end_offset()
    }

    fn persist(&self) -> std::io::Result<i64> {
        let end = self.log.log_end_offset();
        self.log
            .flush()
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        Ok(end)
    }

    fn read_range(&self, from: i64, to: i64) -> std::io::Result<Bytes> {
        read_batches(
            &self.log,
            from,
            to,
            &format!("{}-{}", self.topic, self.partition),
        )
    }

    fn read_range_bounded(
        &self,
        from: i64,
        to: i64,
        max_bytes: usize,
    ) -> std::io::Result<(Bytes, i64)> {
        read_batches_bounded(
            &self.log,
            from,
            to,
            max_bytes,
            &format!("{}-{}", self.topic, self.partition),
        )
    }

    /// The first batch holding the log start (a DeleteRecords may have put the start
    /// inside a batch: the whole batch is sent, and the follower's start is its base).
    fn start(&self) -> std::io::Result<i64> {
        let start = self.log.log_start_offset();
        if start >= self.log.high_watermark() {
            return Ok(start);
        }
        let read = self
            .log
            .read(start, 1)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        match wharf_protocol::batch::parse_header(&read.bytes) {
            Ok(Some(header)) => Ok(header.base_offset.min(start)),
            other => Err(std::io::Error::other(format!(
                "{}-{}: no readable batch at its log start {start}: {other:?}",
                self.topic, self.partition
            ))),
        }
    }

    /// The partition's producer state at its log end: a follower installs it with the
    /// records of a snapshot, so it holds what the copied batches cannot rebuild (producers
    /// whose batches lie below the leader's log start, or were compacted, or idled out of
    /// the sweep's reach), and a restart takes it from the checkpoint.
    fn state(&self) -> std::io::Result<Bytes> {
        let producers = self.producers();
        let state = producers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        Ok(state.encode_at(self.log.log_end_offset()))
    }

    fn check_state(&self, state: &Bytes) -> std::io::Result<()> {
        crate::streams::producer::PartitionProducers::decode_at(state.clone())
            .map(|_| ())
            .map_err(|reason| {
                std::io::Error::other(format!(
                    "{}-{}: a producer state that does not decode: {reason}",
                    self.topic, self.partition
                ))
            })
    }

    fn install_state(&self, state: &Bytes) -> std::io::Result<()> {
        let (installed, offset) = crate::streams::producer::PartitionProducers::decode_at(
            state.clone(),
        )
        .map_err(|reason| {
            std::io::Error::other(format!(
                "{}-{}: a producer state that does not decode: {reason}",
                self.topic, self.partition
            ))
        })?;
        let end = self.log.log_end_offset();
        if offset != end {
            return Err(std::io::Error::other(format!(
                "{}-{}: a producer state of offset {offset} for a log ending at {end}",
                self.topic, self.partition
            )));
        }
        let producers = self.producers();
        *producers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = installed;
        Ok(())
    }

    /// The producer state goes with the records: [`Applier::install_state`] replaces what
    /// the copied batches rebuilt.
    fn restart_at(&self, from: i64) -> std::io::Result<()> {
        self.log
            .restart_at(from)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let producers = self.producers();
        *producers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Default::default();
        Ok(())
    }

    fn append_range(&self, from: i64, records: &Bytes) -> std::io::Result<i64> {
        let end = self.log.log_end_offset();
        let missing = records_from(records, from, end).map_err(|reason| {
            std::io::Error::other(format!("{}-{}: {reason}", self.topic, self.partition))
        })?;
        if missing.is_empty() {
            return Ok(end);
        }
        self.streams
            .append_stored(
                &self.topic,
                self.partition,
                &self.log,
                BytesMut::from(missing),
                None,
            )
            .map_err(|error| std::io::Error::other(error.to_string()))
    }

    /// Fills the offsets up to a snapshot's position that its records did not reach:
    /// the leader's cleaner removed its last batches below it after the snapshot.
    fn fill_to(&self, to: i64) -> std::io::Result<()> {
        if self.log.log_end_offset() >= to {
            return Ok(());
        }
        self.streams
            .append_stored(
                &self.topic,
                self.partition,
                &self.log,
                BytesMut::new(),
                Some(to),
            )
            .map(|_| ())
            .map_err(|error| std::io::Error::other(error.to_string()))
    }
}

/// The stored batches of `log` from offset `from` to `to` (whole batches, for a follower
/// behind the purged raft log); `what` names the log in errors.
///
/// # Errors
/// A read failure, or a range the log no longer holds whole (deleted, or compacted).
pub(crate) fn read_batches(
    log: &Partition,
    from: i64,
    to: i64,
    what: &str,
) -> std::io::Result<Bytes> {
    Ok(read_batches_bounded(log, from, to, usize::MAX, what)?.0)
}

/// As [`read_batches`], stopping after the batch that brings the bytes read to
/// `max_bytes` or more: the bytes and the offset they end at (`to` when they reach it).
///
/// # Errors
/// As for [`read_batches`].
pub(crate) fn read_batches_bounded(
    log: &Partition,
    from: i64,
    to: i64,
    max_bytes: usize,
    what: &str,
) -> std::io::Result<(Bytes, i64)> {
    let mut out = BytesMut::new();
    let mut at = from;
    while at < to && out.len() < max_bytes {
        // From the start of the batch holding the log start (see `Applier::start`), the
        // read is asked at the start and answers with that whole batch.
        let read = log
            .read(at.max(log.log_start_offset()), 1024 * 1024)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let mut bytes = read.bytes;
        if bytes.is_empty() {
            return Err(std::io::Error::other(format!(
                "{what} holds nothing at {at} (below {to})"
            )));
        }
        while let Ok(Some(header)) = wharf_protocol::batch::parse_header(&bytes) {
            if header.base_offset >= to {
                // Nothing is left below `to`: the cleaner removed the last batches below it
                // (after the snapshot that ends there); the follower fills them.
                at = to;
                break;
            }
            if header.total_bytes() > bytes.len() {
                break;
            }
            if header.base_offset < at {
                // An empty batch filling offsets a compaction removed, straddling `at`:
                // it holds nothing, and the follower fills the offsets itself.
                if crate::streams::produce::is_filler(&header) && header.next_offset() > at {
                    at = header.next_offset().min(to);
                    bytes.advance(header.total_bytes());
                    continue;
                }
                return Err(std::io::Error::other(format!(
                    "{what} has a batch at {} where {at} was expected",
                    header.base_offset
                )));
            }
            // A batch past `at` follows offsets the cleaner compacted away; the follower
            // fills them (`Streams::append_stored`).
            out.put_slice(&bytes[..header.total_bytes()]);
            at = header.last_offset() + 1;
            bytes.advance(header.total_bytes());
            if out.len() >= max_bytes {
                break;
            }
        }
    }
    Ok((out.freeze(), at.min(to)))
}

/// The part of `records` (whole batches from offset `from`) at and after offset `end`, the
/// end of a replica's log. The replica may have applied entries since it told the leader
/// where it ended (a snapshot and entries from the log race), so it can already hold a
/// prefix of the records: its log is a prefix of the leader's, as the same batches, so that
/// prefix is whole batches and is skipped.
pub(crate) fn records_from(records: &[u8], from: i64, end: i64) -> Result<&[u8], String> {
    if end < from {
        return Err(format!(
            "the records start at {from}, past the log's end {end}"
        ));
    }
    let mut at = 0usize;
    while at < records.len() {
        let header = header_at(records, at)?;
        // The first batch at or past the end is where the replica goes on (past it: the
        // offsets between were compacted away on the leader, and the append fills them).
        if header.base_offset >= end {
            break;
        }
        let last = header.base_offset + i64::from(header.last_offset_delta);
        if last >= end && crate::streams::produce::is_filler(&header) {
            // An empty batch filling offsets a compaction removed, straddling the end: the
            // replica fills them itself (its own end lies in what the sender filled at
            // once, or it took the offsets before the compaction).
            let size = usize::try_from(header.batch_length).unwrap_or(usize::MAX);
            at = at.saturating_add(12).saturating_add(size);
            break;
        }
        if last >= end {
            return Err(format!(
                "a batch of offsets {}..={last} straddles the log's end {end}",
                header.base_offset
            ));
        }
        let size = usize::try_from(header.batch_length).unwrap_or(usize::MAX);
        at = at.saturating_add(12).saturating_add(size);
    }
    Ok(records.get(at..).unwrap_or_default())
}

/// The header of the batch at byte `at` of `records`.
fn header_at(records: &[u8], at: usize) -> Result<wharf_protocol::batch::BatchHeader, String> {
    match wharf_protocol::batch::parse_header(&records[at..]) {
        Ok(Some(header)) => Ok(header),
        Ok(None) => Err("the records end in a torn batch header".to_string()),
        Err(error) => Err(format!("unreadable records: {error}")),
    }
}

/// Checks that `records` (whole batches) continue a log ending at `end` offset for offset:
/// a queue's log has no compacted gaps (its compaction deletes whole segments), and its
/// append numbers the batches from its end.
pub(crate) fn check_continues(records: &[u8], end: i64) -> Result<(), String> {
    let mut expected = end;
    let mut at = 0usize;
    while at < records.len() {
        let header = header_at(records, at)?;
        if header.base_offset != expected {
            return Err(format!(
                "the records skip from {expected} to {}",
                header.base_offset
            ));
        }
        expected = header.next_offset();
        at = at.saturating_add(header.total_bytes().max(1));
    }
    Ok(())
}

/// Appends broker-built batches (no producer id: a coordinator's records) through a
/// replicated partition's group this node leads and waits for the commit. Returns the
/// first and last offset they landed at. A leader deposed while it waits answers at once.
///
/// # Errors
/// Why the group did not take them, or (`TimedOut`) did not confirm them in time.
pub(crate) async fn append_through(
    replica: &Replica,
    now_ms: i64,
    batches: &[u8],
) -> Result<(i64, i64), String> {
    let pending = replica
        .submit(encode_command(now_ms, batches))
        .await
        .map_err(|error| error.to_string())?;
    let answered = tokio::select! {
        biased;
        answered = pending => answered,
        () = replica.deposed() => Err(ReplicaError::NotLeader { leader: replica.leader() }),
    };
    let outcome = answered.map_err(|error| error.to_string())?;
    match serde_json::from_slice::<AppliedProduce>(&outcome) {
        Ok(AppliedProduce::Appended {
            base_offset,
            last_offset,
        }) => Ok((base_offset, last_offset)),
        Ok(other) => Err(format!("an append applied as {other:?}")),
        Err(error) => Err(format!("an unreadable outcome of an append: {error}")),
    }
}

/// The answer to a replicated produce: its base offset, or why it was refused.
///
/// A leader that loses its majority while the produce waits answers NotLeader at once (the
/// entry may still commit through the next leader: an idempotent producer's retry is then
/// recognised as a duplicate), so the producer finds the new leader instead of waiting out
/// its timeout on a leader cut off from its followers.
pub(crate) async fn produce_answer(
    pending: impl std::future::Future<Output = Result<Bytes, ReplicaError>>,
    replica: Replica,
    topic: &str,
    partition: u32,
    timeout_ms: u32,
) -> Result<i64, StreamError> {
    let answered = tokio::select! {
        biased;
        answered = pending => answered,
        () = replica.deposed() => Err(ReplicaError::NotLeader { leader: replica.leader() }),
    };
    let outcome = match answered {
        Ok(outcome) => outcome,
        Err(error) => return Err(replica_refusal(error, topic, partition, timeout_ms)),
    };
    match serde_json::from_slice::<AppliedProduce>(&outcome) {
        Ok(AppliedProduce::Appended { base_offset, .. }) => Ok(base_offset),
        Ok(AppliedProduce::Sequence {
            refusal,
            producer_id,
            epoch,
            first_sequence,
            last_sequence,
        }) => Err(StreamError::Sequence {
            refusal,
            producer_id,
            epoch,
            first_sequence,
            last_sequence,
            topic: topic.to_string(),
            partition,
        }),
        Ok(AppliedProduce::Refused(reason)) => Err(StreamError::CorruptBatch(reason)),
        Ok(other) => Err(StreamError::Internal(format!(
            "a produce applied as {other:?}"
        ))),
        Err(error) => Err(StreamError::CorruptBatch(format!(
            "an unreadable outcome of a replicated produce: {error}"
        ))),
    }
}

/// A replicated log's refusal as the produce's error.
fn replica_refusal(
    error: ReplicaError,
    topic: &str,
    partition: u32,
    timeout_ms: u32,
) -> StreamError {
    match error {
        ReplicaError::NotLeader { leader } => StreamError::NotLeader {
            topic: topic.to_string(),
            partition,
            leader,
        },
        ReplicaError::TimedOut(_) => StreamError::TimedOut { timeout_ms },
        ReplicaError::Stopped(_) => StreamError::NotLeader {
            topic: topic.to_string(),
            partition,
            leader: None,
        },
        ReplicaError::TooLarge { bytes } => StreamError::RecordListTooLarge {
            bytes: bytes as u64,
            bytes_max: crate::cluster::replica::COMMAND_BYTES_MAX as u64,
        },
    }
}

impl Broker {
    /// Whether the applied metadata has `topic`'s `partition` written through a group
    /// (`Replicas::in_a_group`), whether or not this node's member runs.
    pub(crate) fn written_through_group(&self, topic: &str, partition: u32) -> bool {
        self.routing()
            .and_then(|routing| routing.partition(topic, partition))
            .is_some_and(|placed| placed.in_a_group)
    }

    /// This node's member of partition `partition` of `topic`'s replicated log, if the
    /// partition is replicated and has one here.
    pub(crate) fn partition_replica(&self, topic: &str, partition: u32) -> Option<Replica> {
        let cluster = self.replicated()?;
        topic_member(cluster, &cluster.applied().state, topic, partition)
    }

    /// Stops this node's members of `topic`'s replicated partitions (before its copy here
    /// is deleted). A member left running would keep the deleted topic's raft log under
    /// the group's name (`<topic>-<partition>`), which the topic created again in its place
    /// reuses: the follower pass does not start a member where one runs, and the old one,
    /// holding a longer log, could be elected in the new group and overwrite its records.
    pub(crate) async fn stop_partition_replicas(&self, topic: &str) {
        let Some(cluster) = self.replicated() else {
            return;
        };
        let partitions = self
            .streams
            .topics()
            .get(topic)
            .map_or(0, |info| info.partitions);
        for partition in 0..partitions {
            if let Some(stopped) = cluster.replicas().remove(&group_name(topic, partition)) {
                stopped.shutdown().await;
                tracing::info!(group = stopped.group(), "replicated partition stopped");
            }
        }
    }

    /// Submits a checked produce to a replicated partition (in request order) and returns
    /// the wait for its answer. A transactional batch's transaction was verified by the
    /// caller, under the partition's gate (`core/txn_markers.rs`).
    ///
    /// # Errors
    /// The produce rules' refusal, or a group that stopped here.
    pub(crate) async fn submit_replicated(
        &self,
        replica: &Replica,
        info: &crate::streams::topic::TopicInfo,
        partition: u32,
        records: &[u8],
    ) -> Result<
        impl std::future::Future<Output = Result<Bytes, ReplicaError>> + Send + 'static,
        StreamError,
    > {
        let log = self.streams.produced_log(info, partition)?;
        let batches = self.streams.check_produced(info, &log, records)?;
        let command = encode_command(self.clock.now_ms(), &batches);
        replica
            .submit(command)
            .await
            .map_err(|error| replica_refusal(error, &info.name, partition, 0))
    }

    /// Submits a transaction's marker to a replicated partition this node leads (under the
    /// partition's gate) and returns the wait for its commit.
    ///
    /// # Errors
    /// Why it was not submitted, or (the wait) not committed.
    pub(crate) async fn submit_marker(
        &self,
        replica: &Replica,
        marker: &crate::txn::Marker,
    ) -> Result<impl std::future::Future<Output = Result<(), String>> + Send + 'static, String>
    {
        let command = encode_marker(marker);
        let pending = replica
            .submit(command)
            .await
            .map_err(|error| error.to_string())?;
        Ok(async move {
            let outcome = pending.await.map_err(|error| error.to_string())?;
            match serde_json::from_slice::<AppliedProduce>(&outcome) {
                Ok(AppliedProduce::Appended { .. }) => Ok(()),
                Ok(AppliedProduce::Refused(reason)) => Err(reason),
                Ok(other) => Err(format!("a marker applied as {other:?}")),
                Err(error) => Err(format!("an unreadable outcome of a marker: {error}")),
            }
        })
    }

    /// Moves a replicated partition's log start up through its group (Kafka's DeleteRecords
    /// on the leader): every replica applies it at the same point of the log, so a new
    /// leader keeps the start. Returns the new log start.
    ///
    /// # Errors
    /// `OffsetOutOfRange` past the log end, or why the group did not take it.
    pub(crate) async fn delete_records_replicated(
        &self,
        replica: &Replica,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<i64, StreamError> {
        let pending = replica
            .submit(encode_delete_records(offset))
            .await
            .map_err(|error| replica_refusal(error, topic, partition, 0))?;
        let outcome = pending
            .await
            .map_err(|error| replica_refusal(error, topic, partition, 0))?;
        match serde_json::from_slice::<AppliedProduce>(&outcome) {
            Ok(AppliedProduce::Deleted { log_start }) => Ok(log_start),
            Ok(AppliedProduce::DeleteOutOfRange {
                offset,
                log_start,
                high_watermark,
            }) => Err(StreamError::Storage(
                crate::storage::Error::OffsetOutOfRange {
                    offset,
                    log_start,
                    high_watermark,
                },
            )),
            Ok(other) => Err(StreamError::Internal(format!(
                "a delete of records applied as {other:?}"
            ))),
            Err(error) => Err(StreamError::Internal(format!(
                "an unreadable outcome of a delete of records: {error}"
            ))),
        }
    }

    /// Starts this node's member of every replicated partition and queue the metadata
    /// places here and this node has a log or a store of; stops the members of those no
    /// longer placed here. A queue's member starts only once `queues_here` (the follower's
    /// record) says this node's copy is of the log's incarnation, so a new group never
    /// starts on an old copy's raft log.
    pub(crate) async fn sync_replicas(
        self: &Arc<Self>,
        cluster: &Cluster,
        state: &MetadataState,
        queues_here: &std::collections::BTreeMap<String, u64>,
    ) {
        // The control run's switch takes effect (and warns) before any member starts.
        acks_before_commit();
        let this = cluster.node_id();
        if let Some(end) = state.producer_ids.get(&this) {
            self.streams.producers().note_reserved(*end);
        }
        let mut placed = std::collections::BTreeSet::new();
        for (name, topic) in &state.topics {
            for (index, set) in topic.partitions.iter().enumerate() {
                let Ok(partition) = u32::try_from(index) else {
                    continue;
                };
                if !set.in_a_group() || !set.hosts(this) {
                    continue;
                }
                let group = group_name(name, partition);
                placed.insert(group.clone());
                if let Some(running) = cluster.replicas().get(&group) {
                    if running.instance() == topic.topic_id {
                        continue;
                    }
                    // The member of the deleted topic of this name, whose delete this node
                    // missed: it must not vote in or lead the new topic's group (which
                    // refuses its RPCs); the new member starts once the copy here is
                    // replaced.
                    if let Some(stopped) = cluster.replicas().remove(&group) {
                        stopped.shutdown().await;
                        tracing::info!(%group, "the deleted topic's replicated partition stopped");
                    }
                }
                // A copy here of another id is the deleted topic's (its delete failed, or
                // the follower has not replaced it yet): a member of the new group never
                // starts on its raft log.
                if let (Some(local), Some(id)) = (self.streams.topics().get(name), topic.topic_id) {
                    if local.topic_id != id {
                        tracing::debug!(%group, "the copy here is of another topic of this name; its member waits for the copy's replacement");
                        continue;
                    }
                }
                let Some(log) = self.streams.topics().partition(name, partition) else {
                    continue;
                };
                let members: BTreeMap<NodeId, String> = set
                    .replicas
                    .iter()
                    .filter_map(|id| {
                        let addr = &state.nodes.get(id)?.cluster_addr;
                        (!addr.is_empty()).then(|| (*id, addr.clone()))
                    })
                    .collect();
                if set.initializes(this) && members.len() != set.replicas.len() {
                    continue; // a first replica's address is not registered yet
                }
                let applier = Arc::new(PartitionApplier {
                    streams: self.streams.clone(),
                    topic: name.clone(),
                    partition,
                    log: log.clone(),
                });
                let timing = replica_timing(cluster.timing());
                // The one node of a partition written without a group, which now moves
                // (a drain): its records become the group's starting state, which the
                // node moved to takes from a snapshot.
                let adopt = if set.replicas == [this] && set.move_count == 0 {
                    Adopt::Records
                } else {
                    Adopt::Nothing
                };
                let started = Replica::start(
                    this,
                    GroupName {
                        name: group.clone(),
                        instance: topic.topic_id,
                    },
                    log.dir(),
                    Arc::new(RealFs),
                    Io::Blocking,
                    applier,
                    cluster.transport(),
                    timing,
                    adopt,
                )
                .await;
                match started {
                    Ok(replica) => {
                        cluster.replicas().insert(replica.clone());
                        // Every first member founds the group with the same members (the
                        // same first entry everywhere), the placement's leader at once so
                        // leaders start spread as placement put them; a node taking a
                        // replica in a move starts empty and is brought in by the group's
                        // leader (`Replicas::initializes`).
                        if set.initializes(this) {
                            if let Err(error) = replica.found(members, set.leader == this).await {
                                tracing::warn!(%group, %error, "cannot initialize a replicated partition");
                            }
                        }
                        tracing::info!(%group, "replicated partition started");
                    }
                    Err(error) => {
                        tracing::warn!(%group, %error, "cannot start a replicated partition")
                    }
                }
            }
        }
        for (name, queue) in &state.queues {
            let set = &queue.placement;
            if set.replicas.len() < 2 || !set.hosts(this) {
                continue;
            }
            placed.insert(super::queue_replication::queue_group_name(
                name,
                queue.incarnation,
            ));
            if queues_here.get(name) == Some(&queue.incarnation) {
                self.start_queue_replica(cluster, state, name, queue).await;
            }
        }
        for replica in cluster.replicas().all() {
            if !placed.contains(replica.group()) {
                if let Some(stopped) = cluster.replicas().remove(replica.group()) {
                    stopped.shutdown().await;
                    tracing::info!(group = stopped.group(), "replicated partition stopped");
                }
            }
        }
    }

    /// Until shut down, every [`LEADER_CHECK_EVERY`]: reads each member's status (which
    /// samples a leader's in-sync view and takes a snapshot a follower asked for),
    /// proposes `SetPartitionLeader` (`SetQueueLeader`) for each replicated partition
    /// (queue) this node's member leads while the metadata names another node, then
    /// `SetPartitionInSync` where its in-sync set differs from the metadata's.
    pub(crate) async fn publish_partition_leaders(
        self: Arc<Self>,
        cluster: Cluster,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let moving: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
        // When this node last proposed each partition's in-sync replicas.
        let mut recorded: std::collections::HashMap<(String, u32), std::time::Instant> =
            std::collections::HashMap::new();
        // Automatic preferred leader election: when this node last looked, and whether its
        // hand-overs of the last look are still under way.
        let mut rebalanced_at = std::time::Instant::now();
        let handing: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        // `wharf cluster rebalance` (the metadata's count of them): partitions and queues
        // go back to their preferred replicas now, looked at every few seconds for a while
        // (a rebalance's moves finish first, and a returning replica must be in sync).
        // (Read when this task starts: a rebalance applied later, even one the log held
        // before this node restarted, is acted on; one applied before is not.)
        let mut rebalances_seen = cluster.applied().state.leader_rebalances;
        let mut asked_until: Option<std::time::Instant> = None;
        let mut asked_looked_at = std::time::Instant::now();
        // Logs whose hand-over failed after pausing their writes (a queue's consumers
        // cancelled), with when: not tried again for a while, nor before the next ask.
        let given_up: GroupTimes = Arc::default();
        loop {
            let state = cluster.applied().state;
            let this = cluster.node_id();
            drive_moves(&cluster, &state, &moving);
            // Leaders first: they route clients. In-sync sets after, each at most once
            // a second per partition.
            let mut in_sync_changes = Vec::new();
            if state.leader_rebalances != rebalances_seen {
                rebalances_seen = state.leader_rebalances;
                asked_until = Some(std::time::Instant::now() + ASKED_REBALANCE_FOR);
                given_up
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .clear();
            }
            let asked = asked_until.is_some_and(|until| std::time::Instant::now() < until)
                && asked_looked_at.elapsed() >= ASKED_REBALANCE_EVERY;
            let periodic = !self.leader_rebalance_interval.is_zero()
                && rebalanced_at.elapsed() >= self.leader_rebalance_interval;
            let rebalance =
                (asked || periodic) && !handing.load(std::sync::atomic::Ordering::Acquire);
            // The periodic check hands back only to nodes past the imbalance threshold;
            // an asked rebalance hands back every partition.
            let imbalanced = (rebalance && !asked)
                .then(|| imbalanced_nodes(&state, self.leader_imbalance_percentage));
            let mut hand_overs = Vec::new();
            for (name, topic) in &state.topics {
                for (index, set) in topic.partitions.iter().enumerate() {
                    let Ok(partition) = u32::try_from(index) else {
                        continue;
                    };
                    if !set.in_a_group() {
                        continue;
                    }
                    let Some(replica) = cluster.replicas().get(&group_name(name, partition)) else {
                        continue;
                    };
                    if replica.instance() != topic.topic_id {
                        continue; // the deleted topic's, stopped by the next follower pass
                    }
                    // Leading or not, the member's view keeps its in-sync record current.
                    let status = replica.status();
                    if !replica.is_leader() {
                        continue;
                    }
                    if set.leader == this {
                        // Recorded as leader: keep the in-sync set the metadata holds level
                        // with this member's view (Kafka's ISR for the other nodes).
                        let in_sync = in_sync_set(this, &status, set);
                        if set.in_sync.as_ref() != Some(&in_sync) {
                            in_sync_changes.push((name.clone(), partition, in_sync));
                        }
                        if rebalance
                            && !name.starts_with(INTERNAL_TOPIC_PREFIX)
                            && !backing_off(
                                &given_up,
                                &group_name(name, partition),
                                self.leader_rebalance_interval,
                            )
                            && preferred_successor(this, &status, set).is_some_and(|preferred| {
                                imbalanced
                                    .as_ref()
                                    .is_none_or(|nodes| nodes.contains(&preferred))
                            })
                        {
                            hand_overs
                                .push((replica.clone(), Led::Partition(name.clone(), partition)));
                        }
                        continue;
                    }
                    let command = MetadataCommand::SetPartitionLeader {
                        name: name.clone(),
                        partition,
                        leader: this,
                    };
                    match cluster.propose(command).await {
                        Ok(_) => {
                            tracing::info!(topic = %name, partition, "now leads the replicated partition")
                        }
                        Err(error) => {
                            tracing::debug!(topic = %name, partition, %error, "cannot record the partition's new leader yet")
                        }
                    }
                }
            }
            for (name, queue) in &state.queues {
                let set = &queue.placement;
                if set.replicas.len() < 2 {
                    continue;
                }
                let group = super::queue_replication::queue_group_name(name, queue.incarnation);
                let Some(replica) = cluster.replicas().get(&group) else {
                    continue;
                };
                // Keeps the leader's in-sync record current (metrics read it).
                let status = replica.status();
                if !replica.is_leader() {
                    continue;
                }
                if set.leader == this {
                    // Queues only when asked: a new leader cancels the queue's consumers
                    // (RabbitMQ moves quorum queue leaders only when told to, too).
                    let tried = given_up
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .contains_key(&group);
                    if rebalance
                        && asked
                        && !tried
                        && preferred_successor(this, &status, set).is_some()
                    {
                        hand_overs.push((replica.clone(), Led::Queue(name.clone())));
                    }
                    continue;
                }
                let command = MetadataCommand::SetQueueLeader {
                    name: name.clone(),
                    leader: this,
                };
                match cluster.propose(command).await {
                    Ok(_) => {
                        tracing::info!(queue = %name, "recorded as the replicated queue's leader")
                    }
                    Err(error) => {
                        tracing::debug!(queue = %name, %error, "cannot record the queue's new leader yet")
                    }
                }
            }
            for (name, partition, in_sync) in in_sync_changes {
                let key = (name.clone(), partition);
                let now = std::time::Instant::now();
                if recorded
                    .get(&key)
                    .is_some_and(|at| now.saturating_duration_since(*at) < IN_SYNC_RECORD_EVERY)
                {
                    continue;
                }
                recorded.insert(key, now);
                let command = MetadataCommand::SetPartitionInSync {
                    name: name.clone(),
                    partition,
                    leader: this,
                    in_sync: in_sync.clone(),
                };
                match cluster.propose(command).await {
                    Ok(proposed) if proposed.result == MetadataResult::Done => {
                        tracing::info!(topic = %name, partition, ?in_sync, "recorded the partition's in-sync replicas")
                    }
                    Ok(proposed) => {
                        tracing::debug!(topic = %name, partition, result = ?proposed.result, "the partition's in-sync replicas were not recorded")
                    }
                    Err(error) => {
                        tracing::debug!(topic = %name, partition, %error, "cannot record the partition's in-sync replicas yet")
                    }
                }
            }
            recorded.retain(|_, at| at.elapsed() < IN_SYNC_RECORD_EVERY);
            if rebalance {
                if periodic {
                    rebalanced_at = std::time::Instant::now();
                }
                if asked {
                    asked_looked_at = std::time::Instant::now();
                    // As now applied: this pass may have recorded itself as a leader.
                    if hand_overs.is_empty() && leaders_are_preferred(&cluster.applied().state) {
                        asked_until = None;
                    }
                }
                if !hand_overs.is_empty() {
                    handing.store(true, std::sync::atomic::Ordering::Release);
                    tokio::spawn(hand_over_all(
                        self.clone(),
                        cluster.clone(),
                        hand_overs,
                        (moving.clone(), given_up.clone()),
                        handing.clone(),
                    ));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(LEADER_CHECK_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The node a replicated partition led by `this` goes back to: its preferred replica
/// (`replicas[0]`) when that is another node, in sync, and the set is not moving. Kafka's
/// automatic preferred leader election (its imbalance threshold is [`imbalanced_nodes`]).
/// (The hand-over itself waits until it has every entry.)
fn preferred_successor(
    this: NodeId,
    status: &crate::cluster::replica::ReplicaStatus,
    set: &crate::cluster::metadata::Replicas,
) -> Option<NodeId> {
    let preferred = *set.replicas.first()?;
    let in_sync = status
        .followers
        .iter()
        .any(|follower| follower.node == preferred && follower.in_sync);
    (preferred != this && set.moving_to.is_none() && in_sync).then_some(preferred)
}

/// The nodes that more than `percentage` % of the partitions (internal topics aside, whose
/// leaders are never handed back) whose preferred replica they are see led elsewhere, as
/// the metadata records the leaders: Kafka's `leader.imbalance.per.broker.percentage`
/// rule (over every partition, unreplicated ones too, which are always led by their one
/// replica), which the periodic preferred leader check applies so that one partition led
/// elsewhere among many does not pause its writes for a hand-over.
fn imbalanced_nodes(state: &MetadataState, percentage: u64) -> std::collections::BTreeSet<NodeId> {
    let mut counts: std::collections::BTreeMap<NodeId, (u64, u64)> =
        std::collections::BTreeMap::new();
    let sets = state
        .topics
        .iter()
        .filter(|(name, _)| !name.starts_with(INTERNAL_TOPIC_PREFIX))
        .flat_map(|(_, topic)| topic.partitions.iter());
    for set in sets {
        let Some(preferred) = set.replicas.first() else {
            continue;
        };
        let (preferred_of, led_elsewhere) = counts.entry(*preferred).or_default();
        *preferred_of += 1;
        if set.leader != *preferred {
            *led_elsewhere += 1;
        }
    }
    counts
        .into_iter()
        .filter(|(_, (preferred_of, led_elsewhere))| {
            led_elsewhere * 100 > percentage * preferred_of
        })
        .map(|(node, _)| node)
        .collect()
}

/// Clears the "hand-overs under way" flag however [`hand_over_all`] ends.
struct Handing(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Handing {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Replicated logs by group name.
type GroupSet = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;
/// Replicated logs by group name, each with a time.
type GroupTimes = Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>;

/// Whether the hand-over of `group` failed after pausing it lately: within three
/// intervals of the periodic check (a minute at least).
fn backing_off(given_up: &GroupTimes, group: &str, interval: Duration) -> bool {
    let pause = (interval * 3).max(Duration::from_secs(60));
    given_up
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .get(group)
        .is_some_and(|at| at.elapsed() < pause)
}

/// Whether every replicated partition (internal topics aside) and queue is led by its
/// preferred replica and none is moving: what `wharf cluster rebalance` asks for, as the
/// metadata records it (so every node agrees when it is done).
fn leaders_are_preferred(state: &MetadataState) -> bool {
    state
        .topics
        .iter()
        .filter(|(name, _)| !name.starts_with(INTERNAL_TOPIC_PREFIX))
        .flat_map(|(_, topic)| topic.partitions.iter())
        .chain(state.queues.values().map(|queue| &queue.placement))
        .filter(|set| set.replicas.len() >= 2)
        .all(|set| set.moving_to.is_none() && set.replicas.first() == Some(&set.leader))
}

/// A replicated log this node leads, to hand over.
#[derive(Debug)]
enum Led {
    /// A topic's partition.
    Partition(String, u32),
    /// A queue.
    Queue(String),
}

/// How long after a `wharf cluster rebalance` each node keeps looking for partitions and
/// queues to hand back to their preferred replicas, at most: it stops once the metadata
/// shows every replicated set led by its preferred replica with no move under way.
const ASKED_REBALANCE_FOR: Duration = Duration::from_secs(120);
/// How often it looks meanwhile.
const ASKED_REBALANCE_EVERY: Duration = Duration::from_secs(2);

/// Hands each partition or queue over to its preferred replica, one after another (each
/// stops the log's writes for about a lease: one at a time keeps the rest writable). Each
/// is looked at again just before its turn, as the metadata and its member show it then:
/// one that started moving (`moving_to`, or its move still under way here), that this node
/// no longer leads, or whose preferred replica fell out of sync stays as it is.
async fn hand_over_all(
    broker: Arc<Broker>,
    cluster: Cluster,
    hand_overs: Vec<(Replica, Led)>,
    (moving, given_up): (GroupSet, GroupTimes),
    handing: Arc<std::sync::atomic::AtomicBool>,
) {
    let _handing = Handing(handing);
    let this = cluster.node_id();
    for (replica, led) in hand_overs {
        let state = cluster.applied().state;
        let set = match &led {
            Led::Partition(topic, partition) => state
                .topics
                .get(topic)
                .filter(|meta| meta.topic_id == replica.instance())
                .and_then(|meta| meta.partitions.get(usize::try_from(*partition).ok()?)),
            Led::Queue(name) => state
                .queues
                .get(name)
                .filter(|queue| {
                    super::queue_replication::queue_group_name(name, queue.incarnation)
                        == replica.group()
                })
                .map(|queue| &queue.placement),
        };
        let Some(set) = set else {
            continue;
        };
        let moving_here = moving
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains(replica.group());
        if set.leader != this || moving_here || !replica.is_leader() {
            continue;
        }
        let Some(to) = preferred_successor(this, &replica.status(), set) else {
            continue;
        };
        // A queue's task stops once its member names no leader (its watcher), its own
        // writes answered; a partition's writers are refused and retry.
        let writer_stopped = async {
            if let Led::Queue(name) = &led {
                // Two of the watcher's checks first: a task it was starting as the
                // hand-over began is stopped by then.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while broker.queues.leads_replicated(name) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        match replica.hand_over(to, writer_stopped).await {
            Ok(()) => tracing::info!(
                ?led,
                to,
                "handed the leadership back to the preferred replica"
            ),
            Err(error) => {
                tracing::warn!(?led, to, %error, "the leadership stays here for now");
                if error.paused {
                    given_up
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner())
                        .insert(replica.group().to_string(), std::time::Instant::now());
                }
            }
        }
    }
}

/// How long a node taking a replica in a move has to catch up with its group before the
/// leader gives up this attempt (and tries again on its next check).
const MOVE_CATCH_UP: Duration = Duration::from_secs(120);

/// How long the voters' change of a move may take after the new nodes caught up.
const MOVE_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts carrying out each move of a replicated set (`Replicas::moving_to`, from
/// `wharf cluster rebalance` or a node's removal) whose group this node leads and that no
/// task here is moving yet: the new nodes join as learners and catch up, the voters change
/// (`Replica::move_to`), then `ReplicasMoved` records it. A failed attempt is tried again
/// on a later check; a leader that changes picks the move up where it stopped.
fn drive_moves(
    cluster: &Cluster,
    state: &MetadataState,
    moving: &Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
) {
    let partitions = state.topics.iter().flat_map(|(name, topic)| {
        topic
            .partitions
            .iter()
            .enumerate()
            .filter_map(move |(index, set)| {
                let partition = u32::try_from(index).ok()?;
                let group = group_name(name, partition);
                Some((group, topic.topic_id, name, Some(partition), set))
            })
    });
    let queues = state.queues.iter().map(|(name, queue)| {
        (
            super::queue_replication::queue_group_name(name, queue.incarnation),
            None,
            name,
            None,
            &queue.placement,
        )
    });
    for (group, instance, name, partition, set) in partitions.chain(queues) {
        let Some(target) = set.moving_to.clone() else {
            continue;
        };
        let Some(replica) = cluster.replicas().get(&group) else {
            continue;
        };
        if !replica.is_leader() || replica.instance() != instance {
            continue;
        }
        let voters: BTreeMap<NodeId, String> = target
            .iter()
            .filter_map(|id| {
                let addr = &state.nodes.get(id)?.cluster_addr;
                (!addr.is_empty()).then(|| (*id, addr.clone()))
            })
            .collect();
        if voters.len() != target.len() {
            continue; // a node moved to is not registered (yet)
        }
        if !moving
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(group.clone())
        {
            continue; // this node's task for it is still at work
        }
        let cluster = cluster.clone();
        let moving = moving.clone();
        let name = name.clone();
        tokio::spawn(async move {
            // Bounded as a whole: openraft's membership calls wait while the group has no
            // majority, and a task stuck there would keep this group from being tried again.
            let moved = tokio::time::timeout(
                MOVE_CATCH_UP + MOVE_CHANGE_TIMEOUT,
                replica.move_to(voters, MOVE_CATCH_UP),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ReplicaError::TimedOut(
                    "the group's membership change did not finish in time".to_string(),
                ))
            });
            match moved {
                Ok(()) => {
                    let command = MetadataCommand::ReplicasMoved {
                        name: name.clone(),
                        partition,
                        replicas: target.clone(),
                    };
                    match cluster.propose(command).await {
                        Ok(proposed) if proposed.result == MetadataResult::Done => {
                            tracing::info!(%group, ?target, "replicas moved")
                        }
                        Ok(proposed) => {
                            tracing::debug!(%group, result = ?proposed.result, "move not recorded")
                        }
                        Err(error) => {
                            tracing::debug!(%group, %error, "cannot record the move yet")
                        }
                    }
                }
                Err(error) => tracing::info!(%group, ?target, %error, "replica move not done yet"),
            }
            moving
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .remove(&group);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_carries_the_clock_and_the_batches_and_refuses_another_layout() {
        let command = encode_command(1_234, b"batches");
        assert_eq!(command[0], COMMAND_VERSION);
        let (now_ms, batches) = decode_command(&command).expect("decodes");
        assert_eq!(now_ms, 1_234);
        assert_eq!(&batches[..], b"batches");
        let mut other = command.to_vec();
        other[0] = 2;
        assert!(decode_command(&Bytes::from(other)).is_none());
        assert!(decode_command(&Bytes::from_static(b"\x01short")).is_none());
    }

    /// A batch of `count` offsets from `base` (header fields only; the bytes after the
    /// header are zeros).
    fn batch(base: i64, count: i32) -> Vec<u8> {
        let mut bytes = vec![0u8; 61];
        bytes[0..8].copy_from_slice(&base.to_be_bytes());
        bytes[8..12].copy_from_slice(&49i32.to_be_bytes());
        bytes[16] = 2;
        bytes[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        bytes
    }

    #[test]
    fn snapshot_records_a_replica_already_has_are_skipped_whole_batches() {
        let records: Vec<u8> = [batch(108, 2), batch(110, 3), batch(113, 1)].concat();
        // The replica ends where the records start: all of them.
        assert_eq!(records_from(&records, 108, 108), Ok(&records[..]));
        // It applied the first batch meanwhile (the race the fault loop found).
        assert_eq!(records_from(&records, 108, 110), Ok(&records[61..]));
        assert_eq!(records_from(&records, 108, 114), Ok(&records[183..]));
        assert!(records_from(&records, 108, 114).is_ok_and(<[u8]>::is_empty));
        // An end inside a batch, or before the records, is not a prefix of the leader's log.
        assert!(records_from(&records, 108, 111).is_err());
        assert!(records_from(&records, 108, 100).is_err());
    }

    #[test]
    fn snapshot_records_may_skip_the_offsets_a_compaction_removed_but_a_queues_may_not() {
        let records: Vec<u8> = [batch(108, 2), batch(115, 3), batch(130, 1)].concat();
        // A replica ending at 110 goes on at 115: 110–114 were compacted away.
        assert_eq!(records_from(&records, 108, 110), Ok(&records[61..]));
        // One ending inside the gap too (it ended there when the offsets were still
        // there, or an empty batch filled them).
        assert_eq!(records_from(&records, 108, 112), Ok(&records[61..]));
        assert_eq!(records_from(&records, 108, 118), Ok(&records[122..]));
        // A queue's log has no gaps: its records must continue it offset for offset.
        assert!(check_continues(&records[..61], 108).is_ok());
        assert!(check_continues(&records, 108).is_err());
        assert!(check_continues(&records[..61], 107).is_err());
        assert!(check_continues(&[], 5).is_ok());
    }

    mod compacted {
        use std::path::Path;
        use std::sync::atomic::AtomicBool;
        use std::time::Duration;

        use bytes::{Bytes, BytesMut};
        use wharf_protocol::batch::{self, BatchBuilder, NewRecord};

        use crate::cluster::replica::Applier;
        use crate::core::replication::PartitionApplier;
        use crate::storage::clock::ManualClock;
        use crate::storage::sim::{SimFs, Torn};
        use crate::storage::testing::env_with;
        use crate::storage::LogConfig;
        use crate::streams::compaction::CleanerSettings;
        use crate::streams::producer::Producers;
        use crate::streams::topic::{TopicInfo, Topics};
        use crate::streams::{AutoCreate, StreamSettings, Streams};

        const NOW_MS: i64 = 1_000_000_000;

        fn streams() -> std::sync::Arc<Streams> {
            streams_on(SimFs::new())
        }

        fn streams_on(fs: SimFs) -> std::sync::Arc<Streams> {
            let clock = std::sync::Arc::new(ManualClock::new(NOW_MS));
            let env = env_with(std::sync::Arc::new(fs), clock.clone());
            let data_dir = Path::new("/data");
            let topics = Topics::open(data_dir, env.clone(), LogConfig::default()).unwrap();
            let producers = Producers::open(env.fs.clone(), data_dir, 60_000).unwrap();
            let settings = StreamSettings {
                auto_create_topics: AutoCreate::Off,
                default_partitions: 1,
            };
            std::sync::Arc::new(Streams::new(topics, producers, clock, settings))
        }

        fn compacted_topic(streams: &Streams, segment_bytes: &str) -> TopicInfo {
            let configs = [
                ("cleanup.policy", "compact"),
                ("segment.bytes", segment_bytes),
                ("min.cleanable.dirty.ratio", "0"),
            ]
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .to_vec();
            streams.create_topic("t", 1, configs).unwrap()
        }

        fn applier(streams: &std::sync::Arc<Streams>) -> PartitionApplier {
            PartitionApplier {
                streams: streams.clone(),
                topic: "t".to_string(),
                partition: 0,
                log: streams.partition("t", 0).unwrap(),
            }
        }

        /// One record of key `key` with value `value` (padded so segments fill quickly),
        /// stamped `timestamp_ms`.
        fn record(key: &str, value: &str, timestamp_ms: i64) -> BytesMut {
            let mut padded = value.as_bytes().to_vec();
            padded.resize(2_000, b' ');
            let mut builder = BatchBuilder::new(timestamp_ms);
            builder
                .push(&NewRecord {
                    timestamp_ms,
                    key: Some(Bytes::from(key.to_string())),
                    value: Some(Bytes::from(padded)),
                    headers: Vec::new(),
                })
                .unwrap();
            let mut out = BytesMut::new();
            builder.build_into(&mut out);
            out
        }

        /// Every record of the log: (offset, key, value), and the base offsets of its
        /// batches that hold none.
        fn contents(streams: &Streams) -> (Vec<(i64, String, String)>, Vec<i64>) {
            let log = streams.partition("t", 0).unwrap();
            log.flush().unwrap();
            let mut records = Vec::new();
            let mut empty = Vec::new();
            let mut offset = log.log_start_offset();
            while offset < log.high_watermark() {
                let read = log.read(offset, 1 << 20).unwrap();
                for decoded in batch::batches(read.bytes) {
                    let decoded = decoded.unwrap();
                    offset = decoded.header().next_offset();
                    if decoded.header().record_count == 0 {
                        empty.push(decoded.header().base_offset);
                    }
                    for record in decoded.records() {
                        let record = record.unwrap();
                        let text = |bytes: Option<Bytes>| {
                            String::from_utf8_lossy(&bytes.unwrap_or_default())
                                .trim_end()
                                .to_string()
                        };
                        records.push((record.offset, text(record.key), text(record.value)));
                    }
                }
            }
            (records, empty)
        }

        /// A leader whose partition `t` holds 120 records, one a batch (every tenth key
        /// written once, the others four keys written over and over), record `n` at offset
        /// and time `NOW_MS + n`, optionally compacted by one cleaner round.
        fn leader(compacted: bool) -> std::sync::Arc<Streams> {
            let leader = streams();
            let info = compacted_topic(&leader, "65536");
            for n in 0..120 {
                let key = if n % 10 == 0 {
                    format!("u{n}")
                } else {
                    format!("k{}", n % 4)
                };
                leader
                    .append_produced(
                        &info,
                        0,
                        &record(&key, &format!("v{n}"), NOW_MS + n),
                        crate::streams::produce::TxnCheck::Here,
                    )
                    .unwrap();
            }
            if compacted {
                compact(&leader);
            }
            leader
        }

        fn compact(streams: &Streams) {
            let stop = AtomicBool::new(false);
            let settings = CleanerSettings {
                backoff: Duration::from_secs(1),
                dedupe_buffer_bytes: 1 << 20,
                io_bytes_per_second: 0,
            };
            assert_eq!(streams.clean_round(&settings, &stop).len(), 1);
        }

        /// Copies `source`'s records from `from` to `to` into `target` in pieces of about
        /// `piece_bytes`, as a snapshot does (each piece twice: the second changes
        /// nothing, as when the target applied entries meanwhile), then fills up to `to`;
        /// returns the number of pieces.
        fn copy(
            source: &std::sync::Arc<Streams>,
            target: &std::sync::Arc<Streams>,
            (from, to): (i64, i64),
            piece_bytes: usize,
        ) -> usize {
            let mut at = from;
            let mut pieces = 0;
            while at < to {
                let (bytes, end) = applier(source)
                    .read_range_bounded(at, to, piece_bytes)
                    .unwrap();
                applier(target).append_range(at, &bytes).unwrap();
                applier(target).append_range(at, &bytes).unwrap();
                at = end;
                pieces += 1;
            }
            applier(target).fill_to(to).unwrap();
            pieces
        }

        /// The (base, next) offsets of the batches of `streams`' partition.
        fn batch_spans(streams: &Streams) -> Vec<(i64, i64)> {
            let log = streams.partition("t", 0).unwrap();
            log.flush().unwrap();
            let mut spans = Vec::new();
            let mut offset = log.log_start_offset();
            while offset < log.high_watermark() {
                let read = log.read(offset, 1 << 20).unwrap();
                for decoded in batch::batches(read.bytes) {
                    let header = *decoded.unwrap().header();
                    spans.push((header.base_offset, header.next_offset()));
                    offset = header.next_offset();
                }
            }
            spans
        }

        #[test]
        fn a_follower_copies_a_compacted_range_at_its_leaders_offsets() {
            // Goal: a follower catching up from a snapshot over a range the cleaner
            // compacted (offsets skipped between batches: a compacted topic, and
            // `__consumer_offsets`) gets every record at the leader's offset and ends where
            // the leader ends. Before, the leader's read refused the range ("a compacted
            // range cannot be copied") and so did the follower's append: a node that lost
            // its disk never caught up on such a partition. Method: a compacted leader, the
            // copy in small pieces as `full_snapshot` sends them, into a follower whose one
            // segment stays active (the segment recovery scans strictly), then a power loss.
            let leader = leader(true);
            let (leader_records, _) = contents(&leader);
            let gaps = batch_spans(&leader)
                .windows(2)
                .filter(|pair| pair[1].0 > pair[0].1)
                .count();
            assert!(
                gaps > 5,
                "the test needs a compacted range: {leader_records:?}"
            );
            assert!(leader_records.iter().any(|(_, key, _)| key == "u10"));

            let follower_fs = SimFs::new();
            let follower = streams_on(follower_fs.clone());
            compacted_topic(&follower, "1073741824");
            let range = (
                applier(&leader).start().unwrap(),
                applier(&leader).position(),
            );
            let pieces = copy(&leader, &follower, range, 4_096);
            assert!(pieces > 3, "copied in {pieces} pieces");
            assert_eq!(applier(&follower).position(), range.1);
            let (follower_records, empty) = contents(&follower);
            assert_eq!(follower_records, leader_records);
            assert!(!empty.is_empty(), "the gaps are filled with empty batches");
            assert_eq!(follower.partition("t", 0).unwrap().segment_count(), 1);
            // After a power loss the follower's log recovers whole: its active segment
            // holds no jump forward, which recovery would take for damage and cut.
            follower.partition("t", 0).unwrap().flush().unwrap();
            let recovered = streams_on(follower_fs.crash_image(Torn::None));
            assert_eq!(contents(&recovered).0, leader_records);
            assert_eq!(applier(&recovered).position(), range.1);
        }

        #[test]
        fn a_timestamp_lookup_steps_over_the_offsets_a_compaction_removed() {
            // Goal: ListOffsets by timestamp on a compacted topic. Its scan took a batch
            // past the end of the one before it for damage ("breaks offset continuity")
            // and failed over every range the cleaner had compacted.
            let leader = leader(true);
            let log = leader.partition("t", 0).unwrap();
            let kept: Vec<i64> = contents(&leader)
                .0
                .iter()
                .map(|(offset, _, _)| *offset)
                .collect();
            assert!(kept.windows(2).any(|pair| pair[1] > pair[0] + 1));
            for offset in kept {
                assert_eq!(
                    log.offset_for_timestamp(NOW_MS + offset).unwrap(),
                    Some(offset),
                    "the record written at time NOW_MS + {offset}"
                );
            }
        }

        #[test]
        fn a_snapshot_position_whose_last_batches_were_compacted_is_reached_by_filling() {
            // Goal: a snapshot's position is the leader's log end when it was taken; its
            // cleaner may remove the batches just below it later. The leader's read then
            // finds nothing more below the position (it looped forever before the fix) and
            // the follower fills up to it, so the entries after the snapshot apply at the
            // leader's offsets.
            let leader = leader(true);
            let spans = batch_spans(&leader);
            let position = spans
                .windows(2)
                .find(|pair| pair[1].0 > pair[0].1)
                .map(|pair| pair[1].0)
                .expect("a gap");
            let follower = streams();
            compacted_topic(&follower, "65536");
            let from = applier(&leader).start().unwrap();
            copy(&leader, &follower, (from, position), 4_096);
            assert_eq!(applier(&follower).position(), position);
            let below: Vec<_> = contents(&leader)
                .0
                .into_iter()
                .filter(|(offset, _, _)| *offset < position)
                .collect();
            assert_eq!(contents(&follower).0, below);
        }

        #[test]
        fn a_replica_ending_inside_a_copys_filled_gap_catches_up_from_that_copy() {
            // Goal: replica C copied offsets 0..45 from A before A's cleaner removed 41..49;
            // B, rebuilt from A after, holds one empty batch over that gap, and when B leads
            // C must catch up from it: B's read from 45 starts inside that batch, and C's
            // end lies inside it. Both skip it and C fills the rest of the gap itself.
            let a = leader(false);
            let c = streams();
            compacted_topic(&c, "65536");
            copy(&a, &c, (0, 45), 4_096);
            compact(&a);
            let b = streams();
            compacted_topic(&b, "65536");
            let end = applier(&a).position();
            copy(&a, &b, (0, end), 4_096);
            assert!(
                batch_spans(&b)
                    .iter()
                    .any(|(base, next)| *base < 45 && *next > 45),
                "the test needs 45 inside a filled gap of B: {:?}",
                batch_spans(&b)
            );
            copy(&b, &c, (45, end), 4_096);
            assert_eq!(applier(&c).position(), end);
            let from_45 = |streams: &Streams| -> Vec<_> {
                contents(streams)
                    .0
                    .into_iter()
                    .filter(|(offset, _, _)| *offset >= 45)
                    .collect()
            };
            assert_eq!(from_45(&c), from_45(&a));
        }
    }

    #[test]
    fn a_marker_command_is_its_kind_then_the_clock_producer_epoch_outcome_and_coordinator_epoch() {
        let marker = |now_ms, producer_id, epoch, kind, coordinator_epoch| crate::txn::Marker {
            topic: "t".to_string(),
            partition: 0,
            producer_id,
            epoch,
            kind,
            now_ms,
            coordinator_epoch,
        };
        let command = encode_marker(&marker(0x0102, 7, 3, ControlKind::Commit, Some(0x0A0B)));
        assert_eq!(
            &command[..],
            &[2, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 3, 1, 0, 0, 0x0A, 0x0B][..]
        );
        assert_eq!(
            decode_marker(&command),
            Some((0x0102, 7, 3, ControlKind::Commit, Some(0x0A0B)))
        );
        let abort = encode_marker(&marker(5, 9, -1, ControlKind::Abort, Some(2)));
        assert_eq!(abort[MARKER_COMMAND_BYTES_V1 - 1], 0);
        assert_eq!(
            decode_marker(&abort),
            Some((5, 9, -1, ControlKind::Abort, Some(2)))
        );
        // An earlier build's marker (no coordinator epoch) is written and read as before.
        let earlier = encode_marker(&marker(0x0102, 7, 3, ControlKind::Commit, None));
        assert_eq!(&earlier[..], &command[..MARKER_COMMAND_BYTES_V1]);
        assert_eq!(
            decode_marker(&earlier),
            Some((0x0102, 7, 3, ControlKind::Commit, None))
        );
        // A produce command is not a marker, nor is a marker with another outcome byte.
        assert!(decode_marker(&encode_command(1, b"batches")).is_none());
        let mut other = command.to_vec();
        other[MARKER_COMMAND_BYTES_V1 - 1] = 2;
        assert!(decode_marker(&Bytes::from(other)).is_none());
    }

    #[test]
    fn a_delete_records_command_is_its_kind_then_the_offset() {
        let command = encode_delete_records(0x0102);
        assert_eq!(&command[..], &[3, 0, 0, 0, 0, 0, 0, 1, 2][..]);
        assert_eq!(decode_delete_records(&command), Some(0x0102));
        assert_eq!(decode_delete_records(&encode_delete_records(-1)), Some(-1));
        assert!(decode_delete_records(&encode_marker(&crate::txn::Marker {
            topic: "t".to_string(),
            partition: 0,
            producer_id: 2,
            epoch: 3,
            kind: ControlKind::Abort,
            now_ms: 1,
            coordinator_epoch: Some(0),
        }))
        .is_none());
        assert!(decode_delete_records(&Bytes::from_static(&[3, 0])).is_none());
    }

    #[test]
    fn the_periodic_preferred_leader_check_hands_back_only_past_the_imbalance_threshold() {
        use crate::cluster::metadata::{Replicas, TopicMeta};
        // Node 1 is the preferred replica of 20 replicated partitions and 10 unreplicated
        // ones (which count, as in Kafka), node 2 of one; `led` of node 1's replicated ones
        // are led by node 3, and node 2's by node 3 too.
        let state = |led: usize| {
            let mut state = MetadataState::default();
            let mut partitions: Vec<Replicas> = (0..20)
                .map(|at| Replicas {
                    leader: if at < led { 3 } else { 1 },
                    ..Replicas::new(vec![1, 2, 3])
                })
                .collect();
            partitions.push(Replicas {
                leader: 3,
                ..Replicas::new(vec![2, 3, 1])
            });
            partitions.extend((0..10).map(|_| Replicas::new(vec![1])));
            state.topics.insert(
                "t".to_string(),
                TopicMeta {
                    configs: BTreeMap::new(),
                    partitions,
                    topic_id: None,
                },
            );
            // Internal topics do not count: node 3 prefers one led elsewhere.
            state.topics.insert(
                format!("{INTERNAL_TOPIC_PREFIX}consumer_offsets"),
                TopicMeta {
                    configs: BTreeMap::new(),
                    partitions: vec![Replicas {
                        leader: 1,
                        ..Replicas::new(vec![3, 1, 2])
                    }],
                    topic_id: None,
                },
            );
            state
        };
        let nodes = |ids: &[NodeId]| {
            ids.iter()
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
        };
        // 3 of 30 is 10 %: not more than Kafka's default threshold; 4 of 30 is (and 3 of
        // 20 would be, had the unreplicated ones not counted).
        assert_eq!(imbalanced_nodes(&state(3), 10), nodes(&[2]));
        assert_eq!(imbalanced_nodes(&state(4), 10), nodes(&[1, 2]));
        assert_eq!(imbalanced_nodes(&state(0), 10), nodes(&[2]));
        // 0: every partition led elsewhere goes back; 100: none.
        assert_eq!(imbalanced_nodes(&state(1), 0), nodes(&[1, 2]));
        assert_eq!(imbalanced_nodes(&state(20), 100), nodes(&[]));
    }

    #[test]
    fn group_names_are_the_partition_directory_names() {
        assert_eq!(group_name("orders", 3), "orders-3");
        assert_eq!(group_name("a-1", 0), "a-1-0");
    }
}
