//! Replicated logs (issue #21, the foundation): one openraft group per replicated log (a
//! partition, later a durable queue), the log's own storage as its state machine.
//!
//! openraft runs the election, the replication and the commit rule of each group; Wharf
//! supplies, per group:
//! - the raft log: [`LogStore`] over `ReplicaConfig`, in the group's own directory (the same
//!   record format and fsync rules as the metadata log, docs/CLUSTER.md);
//! - the state machine: [`ReplicaMachine`] hands each committed command to an [`Applier`]
//!   (the core's, for a partition: the produce rules and the append path), so every replica
//!   applies the same commands in the same order to the same state and gets the same result;
//!   a command is applied only once it is committed, so what readers of the applied state see
//!   never goes away in a failover;
//! - the network: RPCs tagged with the group's name over the metadata log's [`Transport`].
//!
//! **Durability of the applied state.** Applying appends without an fsync of its own: the
//! raft log already holds each command durably on a majority. A snapshot (every
//! `snapshot_every` applied entries, openraft's policy) fsyncs the applier
//! ([`Applier::persist`]) and then writes the checkpoint `replica-applied` in the log's
//! directory (`storage::partition::ReplicaCheckpoint`): the last applied log id, the
//! applier's position then and the state it keeps beside its records at that position
//! ([`Applier::state`]: a partition's producer state), read together under the state
//! machine's lock. openraft purges the raft log up to it. After a
//! restart the applier's state must be cut back to the checkpoint's position
//! ([`ReplicaMachine::checkpointed_position`]; a partition's open does it, with
//! `storage::partition::truncate_closed`) before the group starts; the member installs the
//! checkpoint's state ([`Applier::install_state`]) and openraft applies the entries after
//! it again, so nothing is applied twice or lost.
//!
//! **Catching up past the purged log.** A follower whose next entry was purged gets a
//! snapshot. A snapshot holds no records of its own, only the checkpoint's state beside
//! them: when the leader sends one it asks the follower for its position
//! ([`ReplicaRpc::Position`]) and sends the stored bytes from there to the snapshot's
//! position ([`Applier::read_range`]), which the follower appends
//! ([`Applier::append_range`]), then the state, which it installs. Building a snapshot
//! and installing one never overlap (openraft 0.9 builds in a task of its own): a lock of
//! the machine's (`snapshot_io`) serializes them, so a checkpoint never pairs one position
//! with the state at another, nor replaces a newer checkpoint. A follower's applied state is always a prefix of the
//! leader's (only committed entries are applied), so the bytes continue it. A follower
//! ending below what the leader still holds ([`Applier::start`]: retention, DeleteRecords
//! or compaction moved it) is sent the bytes from there and empties its state and starts
//! again at it ([`Applier::restart_at`]); a snapshot ending below the leader's start is
//! not sent, and a newer one is taken. Bytes beyond
//! one message ([`STAGE_PIECE_BYTES`], well inside the internal wire's frame) go first in
//! pieces ([`ReplicaRpc::Stage`], [`Applier::read_range_bounded`]) that the follower keeps
//! in a staging file beside the log (`staged/records-<stream>`, one per run of pieces)
//! without touching its state, and the snapshot's own message carries the last piece:
//! the member hands the staged pieces to the install, which appends them and then that one
//! (and removes the file). Pieces that no snapshot installs (the leader changed, the node
//! restarted) are dropped with their file; an install that fails part way leaves records
//! past the checkpoint only until the partition reopens and is cut back to it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    ClientWriteError, Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, Raft, RaftNetwork, RaftNetworkFactory, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use super::codec::bytes_field;
use super::metadata::NodeId;
use super::raft::{RaftReply, RaftRpc, Timing, Transport};
use super::store::{io_error, lock, run_io, Io, LogStore};
use crate::storage::fs::Fs;
use crate::storage::partition::{read_replica_checkpoint, write_replica_checkpoint};

openraft::declare_raft_types!(
    /// A replicated log's types for openraft.
    pub ReplicaConfig:
        D = ReplicaCommand,
        R = ReplicaOutcome,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = ReplicaSnapshot,
);

/// Where a group keeps its raft log, under the directory of the log it replicates.
pub const RAFT_DIR: &str = "raft";

/// One command of a replicated log: bytes only its [`Applier`] reads (for a partition, a
/// produce's batches and what the produce rules need).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCommand(#[serde(with = "bytes_field")] pub Bytes);

/// What applying a command gave, as its [`Applier`] encodes it (only the leader's copy goes
/// back to the writer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaOutcome(#[serde(with = "bytes_field")] pub Bytes);

/// A snapshot of a replicated log: the position its state reaches and, on the way to a
/// follower, the stored bytes from the follower's position (`from`) to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    /// The applier's position after the snapshot's last entry.
    pub position: i64,
    /// Where `records` start.
    pub from: i64,
    /// Stored bytes from `staged_to` (or `from`) to `position` ([`Applier::read_range`]);
    /// empty at rest.
    #[serde(with = "bytes_field")]
    pub records: Bytes,
    /// When the bytes from `from` went ahead in [`ReplicaRpc::Stage`] pieces: where the
    /// staged pieces end and `records` start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged_to: Option<i64>,
    /// The applier's state beside its records at `position` ([`Applier::state`]: a
    /// partition's producer state), installed after the records; empty from a build
    /// before 2026-12-07 or an applier with none.
    #[serde(default, with = "bytes_field", skip_serializing_if = "Bytes::is_empty")]
    pub state: Bytes,
    /// On the receiving member, the staged pieces it checked and hands to the install
    /// (never on the wire).
    #[serde(skip)]
    pieces: Vec<StagedPiece>,
}

/// How many bytes of records one message carries when a follower catches up past the
/// purged log: a snapshot's bytes beyond it go ahead in [`ReplicaRpc::Stage`] pieces.
#[cfg(not(test))]
pub const STAGE_PIECE_BYTES: usize = 16 * 1024 * 1024;
/// Small in unit tests, so their snapshots go in pieces.
#[cfg(test)]
pub const STAGE_PIECE_BYTES: usize = 64;

/// The directory, in a replicated log's directory, of the pieces staged for a snapshot.
const STAGED_DIR: &str = "staged";
/// The staging file of run `stream` of pieces in [`STAGED_DIR`].
fn staged_file(dir: &Path, stream: u64) -> PathBuf {
    dir.join(STAGED_DIR).join(format!("records-{stream}"))
}

/// One piece staged for a snapshot: the records from `from` to `to`, `len` bytes at
/// `offset` in run `stream`'s staging file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StagedPiece {
    stream: u64,
    from: i64,
    to: i64,
    offset: u64,
    len: usize,
}

/// The state a replicated log applies its committed commands to. Every replica applies the
/// same commands in the same order, so `apply` must be deterministic: the same state and
/// command give the same result and the same next state on every node (no clock, no
/// randomness, no node-local facts).
pub trait Applier: Send + Sync + std::fmt::Debug + 'static {
    /// Applies one committed command; the outcome goes back to the writer on the leader.
    /// A refusal (a duplicate, a bad batch) is an outcome, not an error.
    ///
    /// # Errors
    /// A storage failure: the group stops on this node (nothing can be applied after a
    /// command that was not).
    fn apply(&self, command: &Bytes) -> std::io::Result<Bytes>;

    /// Called before each entry of raft term `term` is applied (its blank entry first: a
    /// leader's term opens with one), in log order on every replica, so terms only grow.
    /// A partition starts leader epoch `term` at its log end on the first call of a term.
    ///
    /// # Errors
    /// A storage failure, as for [`Applier::apply`].
    fn enter_term(&self, term: u64) -> std::io::Result<()> {
        let _ = term;
        Ok(())
    }

    /// Where the state ends (for a partition, the next offset).
    fn position(&self) -> i64;

    /// Makes everything applied so far durable (an fsync); returns the position it covers.
    ///
    /// # Errors
    /// The fsync's.
    fn persist(&self) -> std::io::Result<i64>;

    /// The stored bytes from position `from` to `to`, for a follower behind the purged log.
    ///
    /// # Errors
    /// A read failure, or a range this replica no longer holds.
    fn read_range(&self, from: i64, to: i64) -> std::io::Result<Bytes>;

    /// As [`Applier::read_range`], stopping once about `max_bytes` are read (at least one
    /// whole batch): the bytes, and the position they end at (`to` for the last piece,
    /// which is also read for an empty range: a queue's last piece carries its ack state).
    /// A log whose snapshot bytes cannot be cut reads the whole range: the default.
    ///
    /// # Errors
    /// As for [`Applier::read_range`].
    fn read_range_bounded(
        &self,
        from: i64,
        to: i64,
        max_bytes: usize,
    ) -> std::io::Result<(Bytes, i64)> {
        let _ = max_bytes;
        Ok((self.read_range(from, to)?, to))
    }

    /// Appends bytes another replica's `read_range(from, ..)` returned; returns the
    /// position reached. This replica may have applied entries since it reported its
    /// position: what it already has of the bytes (from `from` up to its position) is
    /// skipped, also all of them (the last piece of a snapshot is applied for the state it
    /// may carry).
    ///
    /// # Errors
    /// `from` is past this replica's position, the bytes do not continue its log, or a
    /// storage failure.
    fn append_range(&self, from: i64, records: &Bytes) -> std::io::Result<i64>;

    /// Brings the position up to `to` when a snapshot's records end below it: the leader's
    /// cleaner removed its last batches below the snapshot's position after taking it (a
    /// partition's log fills the offsets with an empty batch). Nothing by default.
    ///
    /// # Errors
    /// A storage failure.
    fn fill_to(&self, to: i64) -> std::io::Result<()> {
        let _ = to;
        Ok(())
    }

    /// The first position a snapshot can be read from ([`Applier::read_range`]): a log
    /// whose start moved up (retention, DeleteRecords, compaction) holds nothing below
    /// it. 0 by default.
    ///
    /// # Errors
    /// A read failure.
    fn start(&self) -> std::io::Result<i64> {
        Ok(0)
    }

    /// The state this applier keeps beside its records, as of its position (a partition's
    /// producer state: what its batches cannot rebuild once the log below was deleted or
    /// compacted, or a sweep forgot an idle producer). Read with the position when a
    /// snapshot is built, kept in the checkpoint, sent with the snapshot's last piece and
    /// given to [`Applier::install_state`]. Empty by default (a queue carries its ack
    /// state in its records).
    ///
    /// # Errors
    /// A failure reading it.
    fn state(&self) -> std::io::Result<Bytes> {
        Ok(Bytes::new())
    }

    /// Replaces the state beside the records with `state`, which [`Applier::state`] read
    /// at this applier's current position (on another replica, or here before a restart).
    ///
    /// # Errors
    /// Bytes that do not decode, or describe another position.
    fn install_state(&self, state: &Bytes) -> std::io::Result<()> {
        let _ = state;
        Ok(())
    }

    /// Whether `state`, sent with a snapshot, is one [`Applier::install_state`] can read
    /// (its position aside): checked before the install, whose failure would stop this
    /// member, so a state this build cannot read is refused and sent again instead.
    ///
    /// # Errors
    /// Why it cannot be read.
    fn check_state(&self, state: &Bytes) -> std::io::Result<()> {
        let _ = state;
        Ok(())
    }

    /// Empties this replica's state and starts it again at `from`, past its position: a
    /// snapshot's records start there because the leader holds nothing below (see
    /// [`Applier::start`]). Refused by default.
    ///
    /// # Errors
    /// A log that cannot restart, or a storage failure.
    fn restart_at(&self, from: i64) -> std::io::Result<()> {
        Err(std::io::Error::other(format!(
            "a snapshot's records start at {from}, past this replica's end {}",
            self.position()
        )))
    }
}

/// A request of one replicated log's group to another node's member.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReplicaRpc {
    /// openraft's AppendEntries.
    Append(AppendEntriesRequest<ReplicaConfig>),
    /// openraft's RequestVote.
    Vote(VoteRequest<NodeId>),
    /// A snapshot, with the bytes the follower lacks.
    Snapshot {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        data: ReplicaSnapshot,
    },
    /// The member's applier position (before a snapshot is sent to it).
    Position,
    /// A piece of a snapshot's records, from position `from` to `to`, to keep until the
    /// snapshot installs it (see the module documentation).
    Stage {
        from: i64,
        to: i64,
        #[serde(with = "bytes_field")]
        records: Bytes,
    },
    /// The leader hands its leadership over ([`Replica::hand_over`]): the member calls an
    /// election now, if `leader` still leads `term` in its view (a late request of an
    /// earlier term deposes nobody; one of the same term, held up, still calls one).
    Elect { term: u64, leader: NodeId },
}

/// The answer to a [`ReplicaRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ReplicaReply {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `Snapshot`.
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// To `Position`.
    Position(i64),
    /// To `Stage`: kept, or why not.
    Staged(Result<(), String>),
    /// To `Elect`: called, or why not.
    Elect(Result<(), String>),
    /// The node has no member of the group (not started yet, or not a replica).
    Unknown(String),
}

/// Why a write to a replicated log did not happen (or may not have).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// This node does not lead the group: nothing was written; `leader` is the leader it
    /// knows of, if any.
    #[error(
        "this node does not lead the replicated log (leader: {leader:?}); nothing was written"
    )]
    NotLeader { leader: Option<NodeId> },
    /// Not committed in time: it may still be.
    #[error("{0}")]
    TimedOut(String),
    /// The group stopped on this node (a storage failure, or shutdown).
    #[error("the replicated log stopped: {0}")]
    Stopped(String),
    /// A command larger than a replicated log takes ([`COMMAND_BYTES_MAX`]): nothing was
    /// written.
    #[error("a command of {bytes} bytes exceeds the {COMMAND_BYTES_MAX} bytes a replicated log takes; nothing was written")]
    TooLarge { bytes: usize },
}

/// Largest command a group takes: its one-entry AppendEntries (openraft's fields around
/// it) must fit the internal wire's frame (`transport::FRAME_BYTES_MAX`, 64 MiB), which
/// is also the largest raft log record a reader takes (`store::RECORD_PAYLOAD_BYTES_MAX`).
/// Larger, it would be in the leader's log and never reach a follower.
pub const COMMAND_BYTES_MAX: usize = 48 * 1024 * 1024;

type StorageResult<T> = std::result::Result<T, StorageError<NodeId>>;

/// The replica's part of the checkpoint (`storage::partition::ReplicaCheckpoint`, which
/// stores the position beside it): the applied state up to `meta.last_log_id` is durable in
/// the applier, which then ended at `position`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Checkpoint {
    meta: SnapshotMeta<NodeId, BasicNode>,
    #[serde(skip)]
    position: i64,
    /// The applier's state at `position` ([`Applier::state`]; JSON: base64 text).
    #[serde(default, with = "bytes_field", skip_serializing_if = "Bytes::is_empty")]
    state: Bytes,
}

#[derive(Debug)]
struct MachineInner {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    io: Io,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    checkpoint: Option<Checkpoint>,
    sequence: u64,
    /// Pieces staged for a snapshot, in order (see the module documentation).
    staged: Vec<StagedPiece>,
    /// The number of the last run of staged pieces (each has its own file).
    streams: u64,
}

/// A replicated log's state machine: committed commands to its [`Applier`]; clones share it.
#[derive(Debug, Clone)]
pub struct ReplicaMachine {
    inner: Arc<Mutex<MachineInner>>,
    applier: Arc<dyn Applier>,
    /// Held by a snapshot's build and by an install from start to end (see the module
    /// documentation).
    snapshot_io: Arc<tokio::sync::Mutex<()>>,
}

fn read_checkpoint(fs: &dyn Fs, dir: &Path) -> std::io::Result<Option<(Checkpoint, u64)>> {
    let Some(found) = read_replica_checkpoint(fs, dir).map_err(io_error)? else {
        return Ok(None);
    };
    let mut checkpoint: Checkpoint =
        serde_json::from_slice(&found.replica).map_err(std::io::Error::other)?;
    checkpoint.position = found.position;
    Ok(Some((checkpoint, found.sequence)))
}

impl ReplicaMachine {
    /// The position the applier's state must be cut back to before the group starts in
    /// `dir`: that of the last checkpoint, or 0 when there is none (everything is applied
    /// again from the raft log).
    ///
    /// # Errors
    /// I/O errors, or a damaged checkpoint.
    pub fn checkpointed_position(fs: &dyn Fs, dir: &Path) -> std::io::Result<i64> {
        Ok(read_checkpoint(fs, dir)?.map_or(0, |(checkpoint, _)| checkpoint.position))
    }

    /// Opens the state machine in `dir` over `applier`, whose state must end at the
    /// checkpointed position. With [`Adopt::Records`] (a group that never ran here, over a
    /// log written without one), the applier's state as it stands becomes the state before
    /// the group's first entry: fsynced, then checkpointed with nothing applied.
    ///
    /// # Errors
    /// I/O errors, a damaged checkpoint, or an applier at another position.
    pub fn open(
        fs: Arc<dyn Fs>,
        dir: &Path,
        io: Io,
        applier: Arc<dyn Applier>,
        adopt: Adopt,
    ) -> std::io::Result<ReplicaMachine> {
        crate::storage::fs::create_dir_durable(fs.as_ref(), dir).map_err(io_error)?;
        // Pieces staged before a restart are never installed (their bounds were in memory).
        if fs.is_dir(&dir.join(STAGED_DIR)) {
            fs.remove_dir_all(&dir.join(STAGED_DIR))?;
        }
        let mut found = read_checkpoint(fs.as_ref(), dir)?;
        let applied_nothing = found
            .as_ref()
            .is_none_or(|(checkpoint, _)| checkpoint.meta.last_log_id.is_none());
        if adopt == Adopt::Records && applied_nothing {
            // The records written before the group become its starting state: a member
            // added later takes them from a snapshot ([`Replica::move_to`]).
            let position = applier.persist()?;
            let adopted = Checkpoint {
                meta: SnapshotMeta::default(),
                position,
                state: applier.state()?,
            };
            let sequence = found.as_ref().map_or(1, |(_, sequence)| sequence + 1);
            let payload = serde_json::to_vec(&adopted).map_err(std::io::Error::other)?;
            write_replica_checkpoint(fs.as_ref(), dir, sequence, position, &payload)
                .map_err(io_error)?;
            found = Some((adopted, sequence));
        }
        let position = found
            .as_ref()
            .map_or(0, |(checkpoint, _)| checkpoint.position);
        if applier.position() != position {
            return Err(std::io::Error::other(format!(
                "the replicated log in {} was checkpointed at position {position}, but its \
                 state ends at {}: cut it back before starting the group",
                dir.display(),
                applier.position()
            )));
        }
        // The state beside the records as the checkpoint took it, exactly at the position
        // the records were cut back to (what the records rebuilt since the restart may not
        // be: a sweep, a compaction, a log start moved up).
        if let Some((checkpoint, _)) = &found {
            if !checkpoint.state.is_empty() {
                // A member going on with another state than its checkpoint's could decide
                // otherwise than the other replicas: it does not start (the group goes on
                // with the others).
                applier.install_state(&checkpoint.state).map_err(|error| {
                    std::io::Error::other(format!(
                        "the state in the checkpoint of {} does not install ({error}): \
                         once the other replicas are up to date, remove that directory to \
                         have this replica rebuilt from them",
                        dir.display()
                    ))
                })?;
            }
        }
        let (checkpoint, sequence) = match found {
            // A checkpoint of nothing applied yet is no snapshot.
            Some((checkpoint, sequence)) if checkpoint.meta.last_log_id.is_none() => {
                (None, sequence)
            }
            Some((checkpoint, sequence)) => (Some(checkpoint), sequence),
            None => {
                // The first checkpoint, of nothing applied, marks the log as replicated:
                // from now on its open cuts what a restart re-applies.
                let empty = Checkpoint {
                    meta: SnapshotMeta::default(),
                    position,
                    state: Bytes::new(),
                };
                let payload = serde_json::to_vec(&empty).map_err(std::io::Error::other)?;
                write_replica_checkpoint(fs.as_ref(), dir, 1, position, &payload)
                    .map_err(io_error)?;
                (None, 1)
            }
        };
        let (last_applied, membership) = checkpoint.as_ref().map_or_else(
            || (None, StoredMembership::default()),
            |checkpoint| {
                (
                    checkpoint.meta.last_log_id,
                    checkpoint.meta.last_membership.clone(),
                )
            },
        );
        Ok(ReplicaMachine {
            inner: Arc::new(Mutex::new(MachineInner {
                fs,
                dir: dir.to_path_buf(),
                io,
                last_applied,
                membership,
                checkpoint,
                sequence,
                staged: Vec::new(),
                streams: 0,
            })),
            applier,
            snapshot_io: Arc::default(),
        })
    }

    /// Takes the staged pieces if they cover exactly the records from `from` to `to`, in
    /// order (leaving them staged otherwise).
    fn take_staged(&self, from: i64, to: i64) -> Option<Vec<StagedPiece>> {
        let mut inner = lock(&self.inner);
        let whole = inner.staged.first().is_some_and(|first| first.from == from)
            && inner.staged.last().is_some_and(|last| last.to == to)
            && inner
                .staged
                .windows(2)
                .all(|pair| pair[0].to == pair[1].from);
        whole.then(|| std::mem::take(&mut inner.staged))
    }

    /// Removes the staging files of `pieces` (after their install, or its failure).
    async fn drop_staged(&self, pieces: &[StagedPiece]) {
        let (fs, dir, io) = {
            let inner = lock(&self.inner);
            (inner.fs.clone(), inner.dir.clone(), inner.io)
        };
        let mut streams: Vec<u64> = pieces.iter().map(|piece| piece.stream).collect();
        streams.dedup();
        let _ = run_io(io, move || {
            for stream in streams {
                let _ = fs.remove_file(&staged_file(&dir, stream));
            }
            Ok(())
        })
        .await;
    }

    /// Keeps the records from `from` to `to` in the staging file for a snapshot to install.
    /// A piece that does not continue the staged ones starts them again.
    ///
    /// # Errors
    /// The staging file's I/O errors.
    pub async fn stage(&self, from: i64, to: i64, records: Bytes) -> std::io::Result<()> {
        let (fs, dir, io, piece, abandoned) = {
            let mut inner = lock(&self.inner);
            let continued = match inner.staged.last() {
                Some(last) if last.to == from => Some((last.stream, last.offset + last.len as u64)),
                _ => None,
            };
            let (stream, offset, abandoned) = match continued {
                Some((stream, offset)) => (stream, offset, Vec::new()),
                None => {
                    // A new run of pieces, in a file of its own: the pieces of the one it
                    // replaces (another stream, or one no snapshot came for) go.
                    inner.streams += 1;
                    (inner.streams, 0, std::mem::take(&mut inner.staged))
                }
            };
            let piece = StagedPiece {
                stream,
                from,
                to,
                offset,
                len: records.len(),
            };
            (
                inner.fs.clone(),
                inner.dir.clone(),
                inner.io,
                piece,
                abandoned,
            )
        };
        self.drop_staged(&abandoned).await;
        let written = run_io(io, move || {
            fs.create_dir_all(&dir.join(STAGED_DIR))?;
            let file = fs.open_file(
                &staged_file(&dir, piece.stream),
                crate::storage::fs::OpenMode::CreateOrOpen,
            )?;
            file.write_all_at(&records, piece.offset)
        })
        .await;
        let mut inner = lock(&self.inner);
        match written {
            Ok(()) => {
                // Unless another run started meanwhile, or the run was taken by a snapshot
                // (then this piece is not part of what is staged).
                let continues = match inner.staged.last() {
                    Some(last) => last.stream == piece.stream && last.to == piece.from,
                    None => piece.offset == 0,
                };
                if continues {
                    inner.staged.push(piece);
                }
                Ok(())
            }
            Err(error) => {
                inner.staged.clear();
                Err(error)
            }
        }
    }

    /// Writes the checkpoint (fsynced, atomic) and keeps it as the current snapshot.
    async fn store_checkpoint(&self, checkpoint: Checkpoint) -> std::io::Result<()> {
        let (fs, dir, io, sequence) = {
            let mut inner = lock(&self.inner);
            inner.sequence += 1;
            (
                inner.fs.clone(),
                inner.dir.clone(),
                inner.io,
                inner.sequence,
            )
        };
        let payload = serde_json::to_vec(&checkpoint).map_err(std::io::Error::other)?;
        let position = checkpoint.position;
        run_io(io, move || {
            write_replica_checkpoint(fs.as_ref(), &dir, sequence, position, &payload)
                .map_err(io_error)
        })
        .await?;
        lock(&self.inner).checkpoint = Some(checkpoint);
        Ok(())
    }

    fn snapshot_of(checkpoint: &Checkpoint) -> Snapshot<ReplicaConfig> {
        Snapshot {
            meta: checkpoint.meta.clone(),
            snapshot: Box::new(ReplicaSnapshot {
                position: checkpoint.position,
                from: checkpoint.position,
                records: Bytes::new(),
                staged_to: None,
                state: checkpoint.state.clone(),
                pieces: Vec::new(),
            }),
        }
    }
}

impl RaftSnapshotBuilder<ReplicaConfig> for ReplicaMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<ReplicaConfig>> {
        let _building = self.snapshot_io.clone().lock_owned().await;
        // The applied id, the position and the state beside the records are read together
        // (apply holds the lock), then made durable: the fsync covers at least that
        // position.
        let (meta, position, state, io) = {
            let inner = lock(&self.inner);
            let snapshot_id = match inner.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, inner.sequence + 1),
                None => format!("none-{}", inner.sequence + 1),
            };
            (
                SnapshotMeta {
                    last_log_id: inner.last_applied,
                    last_membership: inner.membership.clone(),
                    snapshot_id,
                },
                self.applier.position(),
                self.applier
                    .state()
                    .map_err(|error| StorageIOError::write_snapshot(None, &error))?,
                inner.io,
            )
        };
        let applier = self.applier.clone();
        run_io(io, move || applier.persist())
            .await
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        let checkpoint = Checkpoint {
            meta,
            position,
            state,
        };
        self.store_checkpoint(checkpoint.clone())
            .await
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        Ok(ReplicaMachine::snapshot_of(&checkpoint))
    }
}

impl RaftStateMachine<ReplicaConfig> for ReplicaMachine {
    type SnapshotBuilder = ReplicaMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        let inner = lock(&self.inner);
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ReplicaOutcome>>
    where
        I: IntoIterator<Item = Entry<ReplicaConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = lock(&self.inner);
        let mut outcomes = Vec::new();
        for entry in entries {
            self.applier
                .enter_term(entry.log_id.leader_id.term)
                .map_err(|error| StorageIOError::apply(entry.log_id, &error))?;
            let outcome = match entry.payload {
                EntryPayload::Blank => ReplicaOutcome::default(),
                EntryPayload::Normal(command) => ReplicaOutcome(
                    self.applier
                        .apply(&command.0)
                        .map_err(|error| StorageIOError::apply(entry.log_id, &error))?,
                ),
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    ReplicaOutcome::default()
                }
            };
            inner.last_applied = Some(entry.log_id);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<ReplicaSnapshot>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<ReplicaSnapshot>,
    ) -> StorageResult<()> {
        let _installing = self.snapshot_io.clone().lock_owned().await;
        let (io, fs, dir) = {
            let inner = lock(&self.inner);
            (inner.io, inner.fs.clone(), inner.dir.clone())
        };
        let applier = self.applier.clone();
        let ReplicaSnapshot {
            position,
            from,
            records,
            staged_to,
            state,
            pieces,
        } = *snapshot;
        // `Replica::serve` took the staged pieces, checked, into the snapshot.
        let tail_from = staged_to.unwrap_or(from);
        let (reached, state) = run_io(io, move || {
            // The replica may have applied entries since it told the leader its position:
            // the applier skips the records it already has.
            let here = applier.position();
            if from > position {
                return Err(std::io::Error::other(format!(
                    "a snapshot's records start at {from}, past its end {position}"
                )));
            }
            if here <= position {
                if here < from {
                    // The leader holds nothing below `from` (its log start moved up).
                    applier.restart_at(from)?;
                    tracing::info!(
                        dir = %dir.display(),
                        was = here,
                        from,
                        "emptied a replica ending below its leader's log start, to go on from there"
                    );
                }
                for piece in &pieces {
                    if applier.position() >= piece.to {
                        continue;
                    }
                    let file = fs.open_file(
                        &staged_file(&dir, piece.stream),
                        crate::storage::fs::OpenMode::Existing,
                    )?;
                    let mut bytes = vec![0u8; piece.len];
                    file.read_exact_at(&mut bytes, piece.offset)?;
                    applier.append_range(piece.from, &Bytes::from(bytes))?;
                }
                // The last piece also when the replica has every record already: a log whose
                // snapshot carries state besides its records (a queue's ack state) installs
                // it from there.
                if applier.position() < position || !records.is_empty() {
                    applier.append_range(tail_from, &records)?;
                }
                if applier.position() < position {
                    applier.fill_to(position)?;
                }
                // The state beside the records, as the leader had it at their end (a
                // leader of an older build sends none: the records rebuilt what they can).
                if !state.is_empty() {
                    if applier.position() == position {
                        applier.install_state(&state)?;
                    } else {
                        tracing::warn!(
                            dir = %dir.display(),
                            reached = applier.position(),
                            position,
                            "a snapshot's records did not end where its state was taken; its state is not installed"
                        );
                    }
                }
            }
            let reached = applier.persist()?;
            let state = applier.state()?;
            if !pieces.is_empty() {
                tracing::info!(
                    dir = %dir.display(),
                    pieces = pieces.len(),
                    from,
                    position,
                    "installed a snapshot's records sent in pieces"
                );
            }
            Ok((reached, state))
        })
        .await
        .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error))?;
        if reached != position {
            tracing::warn!(
                reached,
                position,
                "a replica installing a snapshot ends past it (it had applied more)"
            );
        }
        // The checkpoint after the records are durable: a crash before it cuts them again.
        let checkpoint = Checkpoint {
            meta: meta.clone(),
            position: reached,
            state,
        };
        self.store_checkpoint(checkpoint)
            .await
            .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error))?;
        let mut inner = lock(&self.inner);
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<ReplicaConfig>>> {
        let inner = lock(&self.inner);
        Ok(inner.checkpoint.as_ref().map(ReplicaMachine::snapshot_of))
    }
}

/// What a member starting over an empty raft log takes for the group's starting state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopt {
    /// The applier's state as it stands (an unreplicated partition's records, its node
    /// starting a group to move them).
    Records,
    /// Nothing: the state must end where the checkpoint says (0 without one).
    Nothing,
}

/// A replicated log's group as its RPCs name it: its name and, where a name can be
/// reused, which instance of it this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupName {
    /// The name (a partition's `<topic>-<partition>`, a queue's `queue:<name>@<n>`).
    pub name: String,
    /// The instance (a partition's topic id: a topic deleted and created again under its
    /// name gets another). A member of one instance refuses the RPCs of another, so a
    /// node that missed the delete and the create cannot take part in the new group with
    /// the old group's raft log. `None` where the name alone tells groups apart (a queue's
    /// carries its incarnation) or none is known.
    pub instance: Option<[u8; 16]>,
}

impl From<String> for GroupName {
    fn from(name: String) -> GroupName {
        GroupName {
            name,
            instance: None,
        }
    }
}

/// Whether a member of instance `ours` serves an RPC sent for instance `theirs`: when
/// they are the same, or the sender names none (a build before instances). A member of a
/// topic without an id (created before ids went through the log) refuses the RPCs of the
/// topic created again in its place, which has one.
fn same_instance(ours: Option<[u8; 16]>, theirs: Option<[u8; 16]>) -> bool {
    theirs.is_none() || ours == theirs
}

/// openraft's network factory for one group.
#[derive(Debug, Clone)]
struct ReplicaNetwork {
    group: String,
    instance: Option<[u8; 16]>,
    transport: Arc<dyn Transport>,
    applier: Arc<dyn Applier>,
    io: Io,
    /// When each member last answered an AppendEntries of this one (heartbeats included).
    heard: Arc<Mutex<HashMap<NodeId, std::time::Instant>>>,
    /// Set when a follower needs a snapshot past this one's (the log's start moved past
    /// it); [`Replica::status`] has the group take one.
    snapshot_wanted: Arc<std::sync::atomic::AtomicBool>,
}

/// openraft's connection to one member of a group.
#[derive(Debug)]
struct ReplicaConnection {
    network: ReplicaNetwork,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<ReplicaConfig> for ReplicaNetwork {
    type Network = ReplicaConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> ReplicaConnection {
        ReplicaConnection {
            network: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T> = std::result::Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId>>>;

impl ReplicaConnection {
    async fn call(
        &self,
        rpc: ReplicaRpc,
        timeout: Duration,
    ) -> std::result::Result<ReplicaReply, Unreachable> {
        let rpc = RaftRpc::Replica {
            group: self.network.group.clone(),
            instance: self.network.instance,
            rpc: Box::new(rpc),
        };
        match self
            .network
            .transport
            .call(self.target, &self.addr, rpc, timeout)
            .await
        {
            Ok(RaftReply::Replica(reply)) => match *reply {
                ReplicaReply::Unknown(reason) => Err(Unreachable::new(&TransportError(reason))),
                reply => Ok(reply),
            },
            Ok(other) => Err(Unreachable::new(&TransportError(format!(
                "unexpected reply {other:?}"
            )))),
            Err(reason) => Err(Unreachable::new(&TransportError(reason))),
        }
    }
}

fn unexpected(reply: &ReplicaReply) -> NetworkError {
    NetworkError::new(&TransportError(format!("unexpected reply {reply:?}")))
}

impl RaftNetwork<ReplicaConfig> for ReplicaConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ReplicaConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self
            .call(ReplicaRpc::Append(rpc), option.hard_ttl())
            .await?
        {
            ReplicaReply::Append(Ok(response)) => {
                lock(&self.network.heard).insert(self.target, std::time::Instant::now());
                Ok(response)
            }
            ReplicaReply::Append(Err(error)) => Err(RemoteError::new(self.target, error).into()),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(ReplicaRpc::Vote(rpc), option.hard_ttl()).await? {
            ReplicaReply::Vote(Ok(response)) => Ok(response),
            ReplicaReply::Vote(Err(error)) => Err(RemoteError::new(self.target, error).into()),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<ReplicaConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> std::result::Result<SnapshotResponse<NodeId>, StreamingError<ReplicaConfig, Fatal<NodeId>>>
    {
        let from = match self.call(ReplicaRpc::Position, option.hard_ttl()).await? {
            ReplicaReply::Position(position) => position,
            other => return Err(unexpected(&other).into()),
        };
        // A follower ending below what this log still holds gets it from the log's start:
        // it empties its log and restarts it there when it installs the snapshot.
        let position = snapshot.snapshot.position;
        let applier = self.network.applier.clone();
        // A snapshot without the state beside the records (its checkpoint was written by an
        // earlier build) would leave a follower with what the records rebuild only: a new
        // one is taken instead.
        let carries_state = !snapshot.snapshot.state.is_empty();
        let (start, lacks_state) = run_io(self.network.io, move || {
            let lacks_state = !carries_state && !applier.state()?.is_empty();
            Ok((applier.start()?, lacks_state))
        })
        .await
        .map_err(|error| NetworkError::new(&error))?;
        if lacks_state {
            self.network
                .snapshot_wanted
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(NetworkError::new(&std::io::Error::other(
                "the snapshot lacks the state beside its records (an earlier build took it): a new snapshot is taken",
            ))
            .into());
        }
        if from < start && start > position {
            // The log's start moved past this snapshot (DeleteRecords or retention on a
            // quiet log): a new one is asked for, and this one not sent.
            self.network
                .snapshot_wanted
                .store(true, std::sync::atomic::Ordering::Release);
            return Err(NetworkError::new(&std::io::Error::other(format!(
                "the log starts at {start}, past the snapshot's end {position}: a new snapshot is taken"
            )))
            .into());
        }
        let from = from.max(start);
        // Pieces of at most STAGE_PIECE_BYTES go ahead; the last travels with the snapshot.
        let mut at = from;
        let mut staged_to = None;
        let mut staged_bytes = 0u64;
        let mut records = Bytes::new();
        // The last piece is read also when the follower has every record (`from ==
        // position`): a queue's carries its ack state, which the follower may lack.
        while at <= position {
            let applier = self.network.applier.clone();
            let (bytes, end) = run_io(self.network.io, move || {
                applier.read_range_bounded(at, position, STAGE_PIECE_BYTES)
            })
            .await
            .map_err(|error| NetworkError::new(&error))?;
            if end >= position {
                records = bytes;
                break;
            }
            if end <= at {
                return Err(NetworkError::new(&std::io::Error::other(format!(
                    "reading the records from {at} for a snapshot made no progress"
                )))
                .into());
            }
            staged_bytes += bytes.len() as u64;
            let piece = ReplicaRpc::Stage {
                from: at,
                to: end,
                records: bytes,
            };
            match self.call(piece, option.hard_ttl()).await? {
                ReplicaReply::Staged(Ok(())) => {}
                ReplicaReply::Staged(Err(reason)) => {
                    return Err(NetworkError::new(&std::io::Error::other(reason)).into())
                }
                other => return Err(unexpected(&other).into()),
            }
            at = end;
            staged_to = Some(end);
        }
        let rpc = ReplicaRpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: ReplicaSnapshot {
                position,
                from,
                records,
                staged_to,
                state: snapshot.snapshot.state.clone(),
                pieces: Vec::new(),
            },
        };
        // Installing appends the staged pieces too: a second more for each 16 MiB of them.
        let install_ttl =
            option.hard_ttl() + Duration::from_secs(staged_bytes / STAGE_PIECE_BYTES.max(1) as u64);
        match self.call(rpc, install_ttl).await? {
            ReplicaReply::Snapshot(Ok(response)) => Ok(response),
            ReplicaReply::Snapshot(Err(fatal)) => Err(RemoteError::new(self.target, fatal).into()),
            other => Err(unexpected(&other).into()),
        }
    }
}

/// A member's view of its group (see [`Replica::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The leader it knows (see [`Replica::leader`]).
    pub leader: Option<NodeId>,
    /// Its current term (the group's leader epoch once a leader of that term is elected).
    pub term: u64,
    /// On the leader, each other member's replication; empty elsewhere.
    pub followers: Vec<FollowerStatus>,
}

/// How long a follower may go without answering its leader, or without having what the
/// leader had, and still count as in sync: Kafka's `replica.lag.time.max.ms` (30 s there
/// by default; shorter here, where heartbeats go every 200 ms).
pub const REPLICA_LAG_MAX: Duration = Duration::from_secs(6);
/// How often a leader's last log index is sampled for [`in_sync`] at most.
const SYNC_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A leader's record of its own last log index over the last [`REPLICA_LAG_MAX`], to
/// judge its followers against what it had that long ago.
#[derive(Debug, Default)]
struct SyncTracker {
    /// The term led and since when; `None` while not leading.
    led: Option<(u64, std::time::Instant)>,
    /// (when, the leader's last log index then), oldest first: the newest sample at least
    /// [`REPLICA_LAG_MAX`] old and every later one.
    samples: std::collections::VecDeque<(std::time::Instant, u64)>,
    /// Followers out of the in-sync set in this term.
    out: std::collections::BTreeSet<NodeId>,
}

impl SyncTracker {
    /// Records that this member leads `term` with `last_log_index` at `now`; answers since
    /// when it leads and the index it had [`REPLICA_LAG_MAX`] ago (None: it has not led
    /// that long).
    fn observe(
        &mut self,
        now: std::time::Instant,
        term: u64,
        last_log_index: u64,
    ) -> (std::time::Instant, Option<u64>) {
        let since = match self.led {
            Some((led_term, since)) if led_term == term => since,
            _ => {
                self.samples.clear();
                self.out.clear();
                self.led = Some((term, now));
                now
            }
        };
        if self
            .samples
            .back()
            .is_none_or(|(at, _)| now.saturating_duration_since(*at) >= SYNC_SAMPLE_EVERY)
        {
            self.samples.push_back((now, last_log_index));
        }
        let old = |at: &std::time::Instant| now.saturating_duration_since(*at) >= REPLICA_LAG_MAX;
        while self.samples.len() > 1 && self.samples.get(1).is_some_and(|(at, _)| old(at)) {
            self.samples.pop_front();
        }
        let reference = self
            .samples
            .front()
            .filter(|(at, _)| old(at))
            .map(|(_, index)| *index);
        (since, reference)
    }

    /// Not leading (any more).
    fn forget(&mut self) {
        self.led = None;
        self.samples.clear();
        self.out.clear();
    }

    /// Judges follower `node` ([`in_sync`]) and records the verdict: a follower out of
    /// the set rejoins only once it has every applied entry (Kafka's rule), so one whose
    /// lag hovers at [`REPLICA_LAG_MAX`] does not go in and out.
    fn judge(
        &mut self,
        node: NodeId,
        contact: Contact,
        matched: u64,
        applied: u64,
        reference: Option<u64>,
    ) -> bool {
        let was = if self.out.contains(&node) {
            Seat::Out
        } else {
            Seat::In
        };
        let verdict = in_sync(was, contact, matched, applied, reference);
        if verdict {
            self.out.remove(&node);
        } else {
            self.out.insert(node);
        }
        verdict
    }
}

/// Whether a follower was in the in-sync set when last judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seat {
    In,
    Out,
}

/// Whether a follower answers its leader: heard from within [`REPLICA_LAG_MAX`] (one never
/// heard from in the leader's term: within an election timeout of its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contact {
    Answering,
    Silent,
}

/// Whether a follower is in sync with its leader: it is answering and, with entries up to
/// `matched`, has every entry the leader applied (up to `applied`) or, while it was in the
/// set, every entry the leader had [`REPLICA_LAG_MAX`] ago (`reference`; `None` in a term
/// younger than that).
fn in_sync(
    was: Seat,
    contact: Contact,
    matched: u64,
    applied: u64,
    reference: Option<u64>,
) -> bool {
    let level = matched >= applied;
    let keeping_up = was == Seat::In && reference.is_none_or(|then| matched >= then);
    contact == Contact::Answering && (level || keeping_up)
}

/// How far one member is behind its group's leader, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    /// The member's node.
    pub node: NodeId,
    /// Entries of the leader's log it does not have yet.
    pub lag_entries: u64,
    /// It is in the in-sync set: it answered the leader within [`REPLICA_LAG_MAX`] and
    /// has every entry the leader had that long ago (Kafka's ISR rule).
    pub in_sync: bool,
}

/// Whether a leader counts as one only while a majority acknowledged it within the lease
/// ([`Replica::leader`]). Off only for the fault loop's control run
/// (`WHARF_UNSAFE_ACK_BEFORE_COMMIT=1`): its leaders serve as a broker without quorum checks
/// would, a paused one going on after it resumes.
static LEASE_CHECKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the leaders' lease check off (`false`) for this process (the control run only).
pub fn check_leases(on: bool) {
    LEASE_CHECKED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// How long one snapshot message (a staged piece, or the snapshot with its last piece) may
/// take to be read, sent and handled, in milliseconds; the snapshot's own message gets a
/// second more per staged piece, which its install appends.
const SNAPSHOT_TIMEOUT_MS: u64 = 10_000;

/// How long a hand-over waits for the group's writer in the core to stop
/// ([`Replica::hand_over`]) before it gives up.
const WRITER_STOP_WAIT: Duration = Duration::from_secs(2);

/// How many longest election timeouts a first member other than the placement's leader
/// waits before it initializes a new group itself ([`Replica::found`]).
pub const FOUNDING_WAIT_ELECTIONS: u32 = 4;

/// [`Replica::initialize`] over the group's handle.
async fn initialize_group(
    raft: &Raft<ReplicaConfig>,
    members: BTreeMap<NodeId, String>,
) -> std::result::Result<bool, ReplicaError> {
    if raft.is_initialized().await.unwrap_or(false) {
        return Ok(false);
    }
    let nodes: BTreeMap<NodeId, BasicNode> = members
        .into_iter()
        .map(|(id, addr)| (id, BasicNode { addr }))
        .collect();
    match raft.initialize(nodes).await {
        Ok(()) => Ok(true),
        Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(false),
        Err(error) => Err(ReplicaError::Stopped(error.to_string())),
    }
}

/// Why a hand-over ([`Replica::hand_over`]) did not happen.
#[derive(Debug)]
pub struct HandOverError {
    /// The reason.
    pub error: ReplicaError,
    /// Whether the group's writes were paused (refused) on the way: a queue's task was
    /// stopped and its consumers cancelled.
    pub paused: bool,
}

impl HandOverError {
    fn before(error: ReplicaError) -> HandOverError {
        HandOverError {
            error,
            paused: false,
        }
    }
}

impl std::fmt::Display for HandOverError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.error)
    }
}

/// A hand-over under way ([`Replica::hand_over`]): the member names no leader from its
/// start, refuses writes and sends no heartbeat once paused, until it is dropped, however
/// the hand-over ends.
struct HandOver<'a> {
    replica: &'a Replica,
    paused: bool,
}

impl<'a> HandOver<'a> {
    /// The member names no leader (its writer stops); `None` when a hand-over is under way
    /// already.
    fn begin(replica: &'a Replica) -> Option<HandOver<'a>> {
        if replica
            .handing_over
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return None;
        }
        Some(HandOver {
            replica,
            paused: false,
        })
    }

    /// Writes refused.
    fn refuse(&self) {
        self.replica
            .refusing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Heartbeats off.
    fn silence(&mut self) {
        self.replica.raft.runtime_config().heartbeat(false);
        self.paused = true;
    }
}

impl Drop for HandOver<'_> {
    fn drop(&mut self) {
        let raft = &self.replica.raft;
        if self.paused {
            raft.runtime_config().heartbeat(true);
            // Heard at once: a follower whose lease lapsed must not call an election of
            // its own when the hand-over failed.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let raft = raft.clone();
                runtime.spawn(async move {
                    let _ = raft.trigger().heartbeat().await;
                });
            }
        }
        self.replica
            .refusing
            .store(false, std::sync::atomic::Ordering::Release);
        self.replica
            .handing_over
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// One node's member of a replicated log's group: the seam the broker calls.
#[derive(Clone)]
pub struct Replica {
    group: String,
    /// [`GroupName::instance`].
    instance: Option<[u8; 16]>,
    node_id: NodeId,
    raft: Raft<ReplicaConfig>,
    applier: Arc<dyn Applier>,
    /// The state machine openraft runs, for the pieces a snapshot stages.
    machine: ReplicaMachine,
    /// Held while a piece is staged and while a snapshot is checked and installed, so a
    /// piece of another leader's stream never changes the pieces an install reads.
    staging: Arc<tokio::sync::Mutex<()>>,
    timing: Timing,
    /// This start of the member: clones share it, a later start of the same group has
    /// another ([`Replica::is_same`]).
    start: Arc<()>,
    /// When each other member last answered this one's AppendEntries.
    heard: Arc<Mutex<HashMap<NodeId, std::time::Instant>>>,
    /// While this member leads: what its followers are judged in sync against.
    sync: Arc<Mutex<SyncTracker>>,
    /// Shared with its network: a follower needs a newer snapshot.
    snapshot_wanted: Arc<std::sync::atomic::AtomicBool>,
    /// Its network, for the calls openraft does not make ([`ReplicaRpc::Elect`]).
    network: ReplicaNetwork,
    /// Set while this member hands its leadership over ([`Replica::hand_over`]): it
    /// answers as a member without a leader.
    handing_over: Arc<std::sync::atomic::AtomicBool>,
    /// Set while a hand-over pauses the group: no write is taken.
    refusing: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("group", &self.group)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Starts node `node_id`'s member of group `group` for the log in `dir` (its raft log
    /// in `dir/raft`, its checkpoint `replica-applied` in `dir`, where the partition's open
    /// reads it), applying to `applier` (whose state must end at
    /// [`ReplicaMachine::checkpointed_position`]). With [`Adopt::Records`], a member whose
    /// raft log is empty (no entry, no vote: the group never ran here) takes the applier's
    /// state as it stands for the group's starting state, whatever it holds: the one node
    /// of an unreplicated partition starting a group to move it with its records.
    ///
    /// # Errors
    /// Storage errors opening the log or the checkpoint, or openraft's.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node_id: NodeId,
        group: impl Into<GroupName>,
        dir: &Path,
        fs: Arc<dyn Fs>,
        io: Io,
        applier: Arc<dyn Applier>,
        transport: Arc<dyn Transport>,
        timing: Timing,
        adopt: Adopt,
    ) -> std::result::Result<Replica, ReplicaError> {
        use openraft::storage::RaftLogStorage;
        let GroupName {
            name: group,
            instance,
        } = group.into();
        let stopped = |error: &dyn std::fmt::Display| ReplicaError::Stopped(error.to_string());
        let mut log = LogStore::<ReplicaConfig>::open(fs.clone(), &dir.join(RAFT_DIR), io)
            .map_err(|e| stopped(&e))?;
        let never_ran = log
            .get_log_state()
            .await
            .map_err(|e| stopped(&e))?
            .last_log_id
            .is_none()
            && log.read_vote().await.map_err(|e| stopped(&e))?.is_none();
        let adopt = if never_ran { adopt } else { Adopt::Nothing };
        let machine =
            ReplicaMachine::open(fs, dir, io, applier.clone(), adopt).map_err(|e| stopped(&e))?;
        let config = openraft::Config {
            cluster_name: format!("wharf-{group}"),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election_min.as_millis() as u64,
            election_timeout_max: timing.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
            // A follower a little behind catches up from the log, not a snapshot.
            max_in_snapshot_log_to_keep: timing.snapshot_every,
            // The group's choice (`Timing::entries_per_append`): a partition's entry is a
            // produce's batches (1–3 MiB from a busy producer), and openraft 0.9 gives an
            // AppendEntries one heartbeat interval to be answered, the follower's fsync
            // included, backing off 500 ms after a miss. The log reader also stops at
            // `store::APPEND_BYTES_MAX` (16 MiB) past the first entry, which keeps a message
            // inside that on this machine class and far below the internal wire's 64 MiB
            // frame. A queue's entries are small (a run of publishes, acks, counts).
            max_payload_entries: timing.entries_per_append.max(1),
            // A snapshot carries the records a follower lacks in one message (MiBs), read,
            // sent, appended and fsynced within this time. With openraft's default (200 ms)
            // a follower whose snapshot takes longer under load is sent the same snapshot
            // again and again and never catches up; with another replica down the
            // partition then cannot commit (the likely cause of a 60 s stall in the fault
            // loop, seed 20261205, fault 91, whose logs were off).
            install_snapshot_timeout: SNAPSHOT_TIMEOUT_MS,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| stopped(&e))?;
        let heard: Arc<Mutex<HashMap<NodeId, std::time::Instant>>> = Arc::default();
        let snapshot_wanted: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let network = ReplicaNetwork {
            group: group.clone(),
            instance,
            transport,
            applier: applier.clone(),
            io,
            heard: heard.clone(),
            snapshot_wanted: snapshot_wanted.clone(),
        };
        let staging = machine.clone();
        let calls = network.clone();
        let raft = Raft::new(node_id, Arc::new(config), network, log, machine)
            .await
            .map_err(|e| stopped(&e))?;
        Ok(Replica {
            group,
            instance,
            node_id,
            raft,
            applier,
            machine: staging,
            staging: Arc::default(),
            timing,
            start: Arc::new(()),
            heard,
            sync: Arc::default(),
            snapshot_wanted,
            network: calls,
            handing_over: Arc::default(),
            refusing: Arc::default(),
        })
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Which instance of its name the group is ([`GroupName::instance`]).
    pub fn instance(&self) -> Option<[u8; 16]> {
        self.instance
    }

    /// Whether `other` is this very member (a clone of it), not a later start of its group.
    pub fn is_same(&self, other: &Replica) -> bool {
        Arc::ptr_eq(&self.start, &other.start)
    }

    /// Makes `members` (node id → internal address) the group's first voters; true when
    /// this call initialized the group here (false: it already was, here or by a vote or
    /// entries from another member).
    ///
    /// # Errors
    /// openraft's refusal.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, String>,
    ) -> std::result::Result<bool, ReplicaError> {
        initialize_group(&self.raft, members).await
    }

    /// Starts a new group with `members` as its first voters so that the placement's leader
    /// leads it. With `leads`, this member initializes now, which makes it a candidate at
    /// once (openraft elects as it initializes). Any other first member waits
    /// [`FOUNDING_WAIT_ELECTIONS`] longest election timeouts and initializes only if by then
    /// nothing reached it (the placement's leader was down or slow to start the group).
    /// Were every member to initialize at once, whichever started first would be elected by
    /// a member that had not initialized yet, the placement's leader would find the group
    /// taken, and every group could end up led by one node.
    ///
    /// # Errors
    /// With `leads`: the group stopped here, or openraft refused a membership without this
    /// node (already initialized is no error). A waiting member logs its own at debug.
    pub async fn found(
        &self,
        members: BTreeMap<NodeId, String>,
        leads: bool,
    ) -> std::result::Result<(), ReplicaError> {
        if leads {
            return self.initialize(members).await.map(|_| ());
        }
        if self.raft.is_initialized().await.unwrap_or(false) {
            return Ok(()); // a restart, or entries came first
        }
        let wait = self.timing.election_max * FOUNDING_WAIT_ELECTIONS;
        // Only the group's handle waits (not the member, whose applier holds the node's
        // stores): a member shut down meanwhile makes the late initialize fail, harmlessly.
        let (raft, group) = (self.raft.clone(), self.group.clone());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Err(error) = initialize_group(&raft, members).await {
                tracing::debug!(%group, %error, "cannot initialize");
            }
        });
        Ok(())
    }

    /// The leader this node knows of. This node counts as leader only while a majority
    /// acknowledged it within the leader's lease (the longest election timeout): a leader
    /// cut off from its followers stops serving before they elect another, and its clients
    /// go looking for the new one instead of waiting on writes that cannot commit.
    /// While it hands its leadership over ([`Replica::hand_over`]) it names no leader.
    pub fn leader(&self) -> Option<NodeId> {
        let leader = self.leader_by_lease()?;
        let handing_over = self.handing_over.load(std::sync::atomic::Ordering::Acquire);
        (leader != self.node_id || !handing_over).then_some(leader)
    }

    /// [`Replica::leader`] without the hand-over: openraft's leader, this node only within
    /// its lease.
    fn leader_by_lease(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        if leader != self.node_id || !LEASE_CHECKED.load(std::sync::atomic::Ordering::Relaxed) {
            return Some(leader);
        }
        let lease = u64::try_from(self.timing.election_max.as_millis()).unwrap_or(u64::MAX);
        metrics
            .millis_since_quorum_ack
            .is_some_and(|since| since <= lease)
            .then_some(leader)
    }

    /// The leader this node knows of (see [`Replica::leader`]) and the term it leads: the
    /// leader epoch Kafka's clients see for the group's partition.
    pub fn leader_and_term(&self) -> Option<(NodeId, u64)> {
        let leader = self.leader()?;
        let term = self.raft.metrics().borrow().current_term;
        Some((leader, term))
    }

    /// This member's view of its group (metrics, Describe, Kafka's in-sync replicas). On
    /// the leader, a follower is in sync ([`in_sync`]) while it answered within
    /// [`REPLICA_LAG_MAX`] and has every entry the leader had that long ago (or every entry
    /// the leader applied), and rejoins once it has every applied entry: Kafka's
    /// `replica.lag.time.max.ms` rule. The core's leader check calls it every 100 ms for
    /// each member, which keeps the leader's samples.
    pub fn status(&self) -> ReplicaStatus {
        // Taken only where a runtime can run the trigger, so the request is never lost.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            if self
                .snapshot_wanted
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                let raft = self.raft.clone();
                runtime.spawn(async move {
                    if let Err(error) = raft.trigger().snapshot().await {
                        tracing::warn!(%error, "cannot take the snapshot a follower needs");
                    }
                });
            }
        }
        let leader = self.leader();
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let applied = metrics.last_applied.as_ref().map_or(0, |id| id.index);
        // The in-sync record lives as long as this member leads the term (a lapsed lease
        // only hides the followers; it does not start the record again).
        let mut sync = lock(&self.sync);
        if metrics.current_leader != Some(self.node_id) {
            sync.forget();
        }
        let followers = if leader == Some(self.node_id) {
            let now = std::time::Instant::now();
            let (led_since, reference) = sync.observe(now, metrics.current_term, last_log_index);
            let heard = lock(&self.heard).clone();
            let grace = self.timing.election_max;
            metrics
                .replication
                .iter()
                .flatten()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, matched)| {
                    let matched = matched.as_ref().map_or(0, |log_id| log_id.index);
                    // Heard from in this term, or not yet.
                    let last_heard = heard.get(id).copied().filter(|at| *at >= led_since);
                    let answering = match last_heard {
                        Some(at) => now.saturating_duration_since(at) <= REPLICA_LAG_MAX,
                        None => now.saturating_duration_since(led_since) <= grace,
                    };
                    let contact = if answering {
                        Contact::Answering
                    } else {
                        Contact::Silent
                    };
                    FollowerStatus {
                        node: *id,
                        lag_entries: last_log_index.saturating_sub(matched),
                        in_sync: sync.judge(*id, contact, matched, applied, reference),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        drop(sync);
        ReplicaStatus {
            leader,
            term: metrics.current_term,
            followers,
        }
    }

    /// Whether this node leads the group now (see [`Replica::leader`]).
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// Whether this node leads the group and has applied every entry of its log, its own
    /// term's first entry included: everything committed before its term is in the applied
    /// state, and nothing it submitted waits. A writer that predicts where its writes land
    /// (a replicated queue's task) starts only then.
    pub fn leads_caught_up(&self) -> bool {
        if !self.is_leader() {
            return false;
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.last_applied.is_some_and(|applied| {
            applied.leader_id.term == metrics.current_term
                && Some(applied.index) == metrics.last_log_index
        })
    }

    /// Resolves once this node no longer leads the group (it stepped down, or lost its
    /// majority's acknowledgements for longer than the lease).
    /// A hand-over under way does not count: the writes it let through are answered as they
    /// commit.
    pub async fn deposed(&self) {
        let mut metrics = self.raft.metrics();
        while self.leader_by_lease() == Some(self.node_id) {
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether this node leads the group, confirmed just now by a majority's answers to a
    /// heartbeat (not the metrics' last view, which a process paused and resumed still
    /// shows as leading): no other member can be elected for an election timeout after.
    /// False when the confirmation fails or takes longer than the longest election timeout.
    pub async fn confirm_leader(&self) -> bool {
        matches!(
            tokio::time::timeout(self.timing.election_max, self.raft.get_read_log_id()).await,
            Ok(Ok(_))
        )
    }

    /// The voters of the group's membership as this member knows it (both sides of a
    /// joint configuration while a change is under way).
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Moves the group onto `voters` (node id → internal address), on its leader: each node
    /// that is not a voter yet is added as a learner and given until `catch_up` to have
    /// every entry the leader had when it was added, then the voters become `voters`
    /// (openraft's joint consensus; a voter left out is removed from the group). Done again
    /// after a failure it picks up where it stopped: a node already voting is not added
    /// again, and a change to the voters the group has changes nothing.
    ///
    /// # Errors
    /// `NotLeader` on a member that does not lead; `TimedOut` when a new node did not catch
    /// up in time (it stays a learner; the voters are unchanged); `Stopped` for openraft's
    /// refusal of the change.
    pub async fn move_to(
        &self,
        voters: BTreeMap<NodeId, String>,
        catch_up: Duration,
    ) -> std::result::Result<(), ReplicaError> {
        let node_id = self.node_id;
        let refused = |error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                ReplicaError::NotLeader {
                    leader: forward.leader_id.filter(|&leader| leader != node_id),
                }
            }
            other => ReplicaError::Stopped(other.to_string()),
        };
        if !self.is_leader() {
            return Err(ReplicaError::NotLeader {
                leader: self.leader(),
            });
        }
        let current = self.voters();
        if current.len() == 1 && voters.keys().any(|id| !current.contains(id)) {
            // A group of one voter may hold records its entries do not (it adopted an
            // unreplicated partition's, `Replica::start`): a new member must start from a
            // snapshot of them, not from the log's first entry.
            self.cover_log_with_snapshot(catch_up).await?;
        }
        for (id, addr) in voters.iter().filter(|(id, _)| !current.contains(id)) {
            let added = self
                .raft
                .add_learner(*id, BasicNode { addr: addr.clone() }, false)
                .await
                .map_err(refused)?;
            // Caught up: the learner matched the leader's log as it was once it was added.
            let wanted = self
                .raft
                .metrics()
                .borrow()
                .last_log_index
                .unwrap_or(added.log_id.index);
            let learner = *id;
            let waited = self
                .raft
                .wait(Some(catch_up))
                .metrics(
                    move |metrics| {
                        metrics
                            .replication
                            .as_ref()
                            .and_then(|replication| replication.get(&learner))
                            .and_then(|matched| matched.as_ref())
                            .is_some_and(|matched| matched.index >= wanted)
                    },
                    "a new replica caught up",
                )
                .await;
            if waited.is_err() {
                return Err(ReplicaError::TimedOut(format!(
                    "node {learner} did not catch up with group {} within {} ms",
                    self.group,
                    catch_up.as_millis()
                )));
            }
        }
        let wanted: std::collections::BTreeSet<NodeId> = voters.keys().copied().collect();
        if self.voters() != wanted {
            self.raft
                .change_membership(wanted, false)
                .await
                .map_err(refused)?;
        }
        Ok(())
    }

    /// Takes a snapshot of everything applied and purges the raft log up to it, each step
    /// waited for at most `within`.
    ///
    /// # Errors
    /// `TimedOut` when nothing is applied yet or a step did not finish in time; `Stopped`
    /// when openraft stopped.
    async fn cover_log_with_snapshot(
        &self,
        within: Duration,
    ) -> std::result::Result<(), ReplicaError> {
        let stopped = |error: Fatal<NodeId>| ReplicaError::Stopped(error.to_string());
        let Some(applied) = self.raft.metrics().borrow().last_applied else {
            return Err(ReplicaError::TimedOut(format!(
                "group {} has applied nothing yet",
                self.group
            )));
        };
        self.raft.trigger().snapshot().await.map_err(stopped)?;
        let taken = self
            .raft
            .wait(Some(within))
            .metrics(
                move |metrics| {
                    metrics
                        .snapshot
                        .is_some_and(|snapshot| snapshot.index >= applied.index)
                },
                "a snapshot of everything applied",
            )
            .await
            .map_err(|error| ReplicaError::TimedOut(error.to_string()))?;
        let upto = taken
            .snapshot
            .map_or(applied.index, |snapshot| snapshot.index);
        self.raft.trigger().purge_log(upto).await.map_err(stopped)?;
        self.raft
            .wait(Some(within))
            .metrics(
                move |metrics| metrics.purged.is_some_and(|purged| purged.index >= upto),
                "the raft log purged up to the snapshot",
            )
            .await
            .map_err(|error| ReplicaError::TimedOut(error.to_string()))?;
        Ok(())
    }

    /// Hands this member's leadership to voter `to`, which must have every entry of the
    /// leader's log. openraft 0.9 has no leadership transfer, and a follower refuses to
    /// vote while it heard a leader within the lease (the longest election timeout), so:
    /// this member first names no leader and waits for `writer_stopped` (the core's writer
    /// of the group, a replicated queue's task, stops on that, its own writes answered);
    /// then it refuses writes ([`Replica::submit`] answers `NotLeader`) until `to` has
    /// every entry, then stops its heartbeats; once a lease has passed with nothing sent,
    /// `to` calls an election ([`ReplicaRpc::Elect`]), which the other followers grant
    /// (their own elections start only a lease plus an election timeout after they last
    /// heard the leader, so `to` is asked first); its vote request or first AppendEntries
    /// deposes this member. Writes are refused for about one lease and a round trip. When
    /// `to` was not asked, heartbeats and writes resume at once with this member leading.
    ///
    /// # Errors
    /// `NotLeader` on a member that does not lead; `TimedOut` when the writer did not stop,
    /// `to` did not answer or catch up, or no election followed; `Stopped` when `to` is not
    /// a voter, cannot be reached or refused, or another member was elected. The error
    /// says whether the group's writes were paused.
    pub async fn hand_over(
        &self,
        to: NodeId,
        writer_stopped: impl Future<Output = ()>,
    ) -> std::result::Result<(), HandOverError> {
        let before = HandOverError::before;
        if !self.is_leader() {
            return Err(before(ReplicaError::NotLeader {
                leader: self.leader(),
            }));
        }
        let (addr, term) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let addr = membership
                .voter_ids()
                .any(|id| id == to)
                .then(|| membership.get_node(&to).map(|node| node.addr.clone()))
                .flatten();
            (addr, metrics.current_term)
        };
        let Some(addr) = addr.filter(|_| to != self.node_id) else {
            return Err(before(ReplicaError::Stopped(format!(
                "node {to} is not another voter of group {}",
                self.group
            ))));
        };
        // Answering now (openraft beats every one and a half heartbeats): a member that
        // went silent would be asked in vain, and the pause would last until a third
        // member's own election.
        let answering = lock(&self.heard)
            .get(&to)
            .is_some_and(|at| at.elapsed() <= self.timing.heartbeat * 3);
        if !answering {
            return Err(before(ReplicaError::TimedOut(format!(
                "node {to} did not answer group {}'s last heartbeats",
                self.group
            ))));
        }
        let Some(mut hand_over) = HandOver::begin(self) else {
            return Err(before(ReplicaError::TimedOut(format!(
                "group {} is already being handed over",
                self.group
            ))));
        };
        if tokio::time::timeout(WRITER_STOP_WAIT, writer_stopped)
            .await
            .is_err()
        {
            return Err(before(ReplicaError::TimedOut(format!(
                "the writer of group {} did not stop within {} ms",
                self.group,
                WRITER_STOP_WAIT.as_millis()
            ))));
        }
        hand_over.refuse();
        self.elect_successor(&mut hand_over, to, addr, term)
            .await
            .map_err(|error| HandOverError {
                error,
                paused: true,
            })
    }

    /// [`Replica::hand_over`]'s steps once writes are refused. Timed so that `to` is asked
    /// before any follower's own election could start: that is a lease plus the shortest
    /// election timeout after it last heard this leader, whose last heartbeat may be one
    /// and a half heartbeats before they stopped (openraft beats on its ticks).
    async fn elect_successor(
        &self,
        hand_over: &mut HandOver<'_>,
        to: NodeId,
        addr: String,
        term: u64,
    ) -> std::result::Result<(), ReplicaError> {
        let lease = self.timing.election_max;
        let heartbeat = self.timing.heartbeat;
        // What was submitted before the writes stopped reaches `to` first, heartbeats still
        // on (the followers' patience counts from when they stop).
        let matched = move |metrics: &openraft::RaftMetrics<NodeId, BasicNode>| {
            let last = metrics.last_log_index;
            metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&to))
                .is_some_and(|matched| matched.as_ref().map(|id| id.index) == last)
        };
        let caught_up = self
            .raft
            .wait(Some(lease))
            .metrics(matched, "the successor has every entry")
            .await;
        let Ok(caught_up) = caught_up else {
            return Err(ReplicaError::TimedOut(format!(
                "node {to} did not catch up with group {} within {} ms",
                self.group,
                lease.as_millis()
            )));
        };
        let last = caught_up.last_log_index;
        hand_over.silence();
        // A lease with nothing sent: the followers' leases lapse (the last entry's commit
        // may travel in one more AppendEntries right after, hence the margin).
        tokio::time::sleep(lease + heartbeat / 4).await;
        {
            // A write that passed the flag just before it was set, appended since, would
            // have refreshed the leases and left `to` behind: not this time.
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.last_log_index != last || !matched(&metrics) {
                return Err(ReplicaError::TimedOut(format!(
                    "group {} took a write while it was handed over",
                    self.group
                )));
            }
        }
        let connection = ReplicaConnection {
            network: self.network.clone(),
            target: to,
            addr,
        };
        let elect = ReplicaRpc::Elect {
            term,
            leader: self.node_id,
        };
        match connection.call(elect, heartbeat / 2).await {
            Ok(ReplicaReply::Elect(Ok(()))) => {}
            Ok(ReplicaReply::Elect(Err(reason))) => return Err(ReplicaError::Stopped(reason)),
            Ok(other) => return Err(ReplicaError::Stopped(format!("unexpected reply {other:?}"))),
            Err(unreachable) => {
                // A slow answer may still have started the election: its vote request
                // would have reached this member by now.
                let started = self
                    .raft
                    .wait(Some(heartbeat / 4))
                    .metrics(move |metrics| metrics.current_term > term, "a later term")
                    .await;
                if started.is_err() {
                    return Err(ReplicaError::Stopped(unreachable.to_string()));
                }
            }
        }
        // The election is under way: this member hears of the new term from the vote
        // request or the winner's first AppendEntries (it does not lead again then, so
        // resuming heartbeats after changes nothing); given a lease for it.
        let moved_on = self
            .raft
            .wait(Some(lease))
            .metrics(
                move |metrics| metrics.current_term > term && metrics.current_leader.is_some(),
                "a leader of a later term",
            )
            .await;
        match moved_on {
            Ok(metrics) if metrics.current_leader == Some(to) => Ok(()),
            Ok(metrics) => Err(ReplicaError::Stopped(format!(
                "node {:?} was elected leader of group {} instead of node {to}",
                metrics.current_leader, self.group
            ))),
            Err(_) => Err(ReplicaError::TimedOut(format!(
                "no leader of a later term of group {} within {} ms",
                self.group,
                lease.as_millis()
            ))),
        }
    }

    /// The applied state's position on this node.
    pub fn position(&self) -> i64 {
        self.applier.position()
    }

    /// Commits `command` and answers with the leader's outcome of applying it, once a
    /// majority of the group has it durably and the leader applied it.
    ///
    /// # Errors
    /// `TooLarge` and `NotLeader` (nothing written), `TimedOut` (unknown), `Stopped`.
    pub async fn write(&self, command: Bytes) -> std::result::Result<Bytes, ReplicaError> {
        self.submit(command).await?.await
    }

    /// Hands `command` to the group (writes submitted one after another are in the log in
    /// that order) and returns the wait for its outcome, as [`Replica::write`] answers it.
    ///
    /// # Errors
    /// `TooLarge` for a command over [`COMMAND_BYTES_MAX`] (nothing written); `Stopped`
    /// when the group stopped on this node.
    pub async fn submit(
        &self,
        command: Bytes,
    ) -> std::result::Result<
        impl Future<Output = std::result::Result<Bytes, ReplicaError>> + Send + 'static,
        ReplicaError,
    > {
        if command.len() > COMMAND_BYTES_MAX {
            return Err(ReplicaError::TooLarge {
                bytes: command.len(),
            });
        }
        if self.refusing.load(std::sync::atomic::Ordering::Acquire) {
            return Err(ReplicaError::NotLeader { leader: None });
        }
        let limit = self.timing.election_max * 10;
        let node_id = self.node_id;
        let answer = self
            .raft
            .client_write_ff(ReplicaCommand(command))
            .await
            .map_err(|fatal| ReplicaError::Stopped(fatal.to_string()))?;
        Ok(async move {
            match tokio::time::timeout(limit, answer).await {
                Ok(Ok(Ok(response))) => Ok(response.data.0),
                Ok(Ok(Err(ClientWriteError::ForwardToLeader(forward)))) => {
                    Err(ReplicaError::NotLeader {
                        leader: forward.leader_id.filter(|&leader| leader != node_id),
                    })
                }
                Ok(Ok(Err(other))) => Err(ReplicaError::Stopped(other.to_string())),
                Ok(Err(_)) => Err(ReplicaError::Stopped(
                    "the group stopped before the write was answered".to_string(),
                )),
                Err(_) => Err(ReplicaError::TimedOut(format!(
                    "the write was not committed within {} ms; it may still be",
                    limit.as_millis()
                ))),
            }
        })
    }

    /// Answers one RPC of this group from another member.
    pub async fn serve(&self, rpc: ReplicaRpc) -> ReplicaReply {
        match rpc {
            ReplicaRpc::Append(request) => {
                ReplicaReply::Append(self.raft.append_entries(request).await)
            }
            ReplicaRpc::Vote(request) => ReplicaReply::Vote(self.raft.vote(request).await),
            ReplicaRpc::Snapshot { vote, meta, data } => {
                if !data.state.is_empty() {
                    if let Err(error) = self.applier.check_state(&data.state) {
                        // Refused like an incomplete staging: a network error to openraft,
                        // which sends the snapshot again later (after an upgrade, readable).
                        return ReplicaReply::Staged(Err(format!(
                            "the snapshot's state cannot be read here: {error}"
                        )));
                    }
                }
                let mut data = data;
                if let Some(to) = data.staged_to {
                    let _staging = self.staging.lock().await;
                    let Some(pieces) = self.machine.take_staged(data.from, to) else {
                        // Another stream's pieces came in between: the leader sends it
                        // again (a network error to openraft, which retries).
                        return ReplicaReply::Staged(Err(format!(
                            "the snapshot's staged records from {} to {to} are not all here",
                            data.from
                        )));
                    };
                    data.pieces = pieces;
                }
                let pieces = data.pieces.clone();
                let snapshot = Snapshot {
                    meta,
                    snapshot: Box::new(data),
                };
                let installed = self.raft.install_full_snapshot(vote, snapshot).await;
                // Installed or not, these pieces are not used again (the leader stages
                // anew): their files go.
                self.machine.drop_staged(&pieces).await;
                ReplicaReply::Snapshot(installed)
            }
            ReplicaRpc::Position => ReplicaReply::Position(self.applier.position()),
            ReplicaRpc::Elect { term, leader } => {
                let current = {
                    let metrics = self.raft.metrics();
                    let metrics = metrics.borrow();
                    (metrics.current_term, metrics.current_leader)
                };
                if current != (term, Some(leader)) {
                    return ReplicaReply::Elect(Err(format!(
                        "node {} does not see node {leader} lead term {term} (term {}, leader {:?})",
                        self.node_id, current.0, current.1
                    )));
                }
                ReplicaReply::Elect(
                    self.raft
                        .trigger()
                        .elect()
                        .await
                        .map_err(|error| error.to_string()),
                )
            }
            ReplicaRpc::Stage { from, to, records } => {
                let _staging = self.staging.lock().await;
                ReplicaReply::Staged(
                    self.machine
                        .stage(from, to, records)
                        .await
                        .map_err(|error| error.to_string()),
                )
            }
        }
    }

    /// Stops this member.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// The replicated logs this node is a member of, by group name: who answers a
/// [`RaftRpc::Replica`].
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    groups: Arc<RwLock<HashMap<String, Replica>>>,
}

impl Replicas {
    /// Registers `replica` (replacing one of the same group).
    pub fn insert(&self, replica: Replica) {
        self.groups
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(replica.group.clone(), replica);
    }

    /// Unregisters and returns group `group`'s member.
    pub fn remove(&self, group: &str) -> Option<Replica> {
        self.groups
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(group)
    }

    /// This node's member of `group`.
    pub fn get(&self, group: &str) -> Option<Replica> {
        self.groups
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(group)
            .cloned()
    }

    /// Every group with a member here, by name.
    pub fn all(&self) -> Vec<Replica> {
        self.groups
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Answers an RPC for instance `instance` of `group`. A member here of another
    /// instance answers as if there were none: it must not vote in, nor take entries of, a
    /// group that only shares its name.
    pub async fn serve(
        &self,
        group: &str,
        instance: Option<[u8; 16]>,
        rpc: ReplicaRpc,
    ) -> ReplicaReply {
        match self.get(group) {
            Some(replica) if same_instance(replica.instance, instance) => replica.serve(rpc).await,
            Some(_) => ReplicaReply::Unknown(format!(
                "the member of replicated log {group} here is of another instance (its topic was deleted and created again)"
            )),
            None => ReplicaReply::Unknown(format!("no member of replicated log {group} here")),
        }
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
