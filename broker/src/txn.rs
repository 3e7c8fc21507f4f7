//! The transaction coordinator.
//!
//! A transactional id maps to a producer id and epoch. `InitProducerId` with a transactional
//! id fences any earlier producer of that id (the epoch goes up) and aborts its open
//! transaction. A transaction registers its partitions (`AddPartitionsToTxn`) and consumer
//! groups (`AddOffsetsToTxn`, `TxnOffsetCommit`), and `EndTxn` commits or aborts it:
//!
//! 1. log `PrepareCommit` / `PrepareAbort` (durable);
//! 2. write a marker (control batch) to every partition of the transaction (durable), through
//!    the [`MarkerSink`]: each partition's leader writes it, through the partition's
//!    replicated log where it has one;
//! 3. on commit, store the transaction's consumer offsets;
//! 4. log `CompleteCommit` / `CompleteAbort`.
//!
//! Every state change is a record in the internal topic `__transaction_state`, fsynced before
//! it takes effect, and replayed on start. In a cluster the records go to the replicated
//! `__consumer_offsets` partition instead, beside the committed offsets (tagged with
//! [`TXN_RECORD_HEADER`]), and the coordinator runs where that partition is led
//! ([`TxnCoordinator::lead`], `core/coordination.rs`): a new leader replays them and
//! recovers as a restarted node does. Recovery then finishes what a crash interrupted:
//! a prepared transaction is completed as logged, and an open one is aborted (its producer's
//! epoch goes up, fencing it). Open transactions older than their timeout are aborted the
//! same way.
//!
//! One task owns all coordinator state and handles requests one at a time (STYLE.md: an
//! owning task rather than a lock held across an fsync wait).
//!
//! **Layer rule:** speaks domain types only (no wire messages, no wire error codes): errors
//! are [`TxnError`], which each front end maps to its own codes. Its records and markers go
//! through the [`crate::append`] path.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::batch::{BatchBuilder, ControlKind, NewRecord};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::wire_struct;

use crate::append::{LocalLog, RecordLog};
use crate::groups::commit::{self, EntryRefusal, OffsetEntry};
use crate::groups::offsets::{is_txn_record, Committed, OffsetStore, TXN_RECORD_HEADER};
use crate::groups::{GroupCoordinator, GroupError};
use crate::storage::{Error as StorageError, Partition};
use crate::streams::topic::{
    internal_overrides, replay_records, TopicError, Topics, INTERNAL_TOPIC_PREFIX,
};
use crate::streams::Streams;

/// The internal topic holding transaction state.
pub const TXN_TOPIC: &str = "__transaction_state";
/// Timeout of a transaction that asks for none (Kafka's default).
pub const TXN_TIMEOUT_MS_DEFAULT: u32 = 60_000;
/// Longest transaction timeout a producer may ask for (Kafka's default maximum).
pub const TXN_TIMEOUT_MS_MAX: u32 = 15 * 60_000;
/// Requests queued for the coordinator before callers wait.
const COMMAND_QUEUE_MAX: usize = 1024;
/// How often open transactions are checked against their timeout.
const TIMEOUT_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Where a transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TxnState {
    /// No transaction open.
    Empty = 0,
    /// Partitions were added; records may be in flight.
    Ongoing = 1,
    /// Commit decided and logged; markers being written.
    PrepareCommit = 2,
    /// Abort decided and logged; markers being written.
    PrepareAbort = 3,
    /// Committed.
    CompleteCommit = 4,
    /// Aborted.
    CompleteAbort = 5,
}

impl TxnState {
    fn from_code(code: u8) -> Option<TxnState> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }
}

wire_struct! {
    /// A consumer offset that commits with the transaction.
    pub struct PendingOffset {
        pub group: String,
        pub topic: String,
        pub partition: u32,
        pub offset: i64,
        pub metadata: Option<String>,
    }
}

wire_struct! {
    /// Partitions of one topic in a transaction log record.
    pub struct TxnTopicPartitions {
        pub topic: String,
        pub partitions: Vec<u32>,
    }
}

wire_struct! {
    /// One record of the transaction log: the whole state of one transactional id.
    pub struct TxnRecord {
        pub producer_id: i64,
        pub epoch: i16,
        pub state: u8,
        pub timeout_ms: u32,
        pub started_ms: i64,
        pub partitions: Vec<TxnTopicPartitions>,
        pub groups: Vec<String>,
        pub offsets: Vec<PendingOffset>,
    }
}

/// What the coordinator knows of one transactional id.
#[derive(Debug, Clone)]
struct TxnMeta {
    producer_id: i64,
    epoch: i16,
    state: TxnState,
    timeout_ms: u32,
    started_ms: i64,
    partitions: BTreeSet<(String, u32)>,
    groups: BTreeSet<String>,
    offsets: Vec<PendingOffset>,
}

impl TxnMeta {
    fn to_record(&self) -> TxnRecord {
        let mut topics: Vec<TxnTopicPartitions> = Vec::new();
        for (topic, partition) in &self.partitions {
            match topics.last_mut() {
                Some(last) if &last.topic == topic => last.partitions.push(*partition),
                _ => topics.push(TxnTopicPartitions {
                    topic: topic.clone(),
                    partitions: vec![*partition],
                }),
            }
        }
        TxnRecord {
            producer_id: self.producer_id,
            epoch: self.epoch,
            state: self.state as u8,
            timeout_ms: self.timeout_ms,
            started_ms: self.started_ms,
            partitions: topics,
            groups: self.groups.iter().cloned().collect(),
            offsets: self.offsets.clone(),
        }
    }

    fn from_record(record: TxnRecord) -> Option<TxnMeta> {
        Some(TxnMeta {
            producer_id: record.producer_id,
            epoch: record.epoch,
            state: TxnState::from_code(record.state)?,
            timeout_ms: record.timeout_ms,
            started_ms: record.started_ms,
            partitions: record
                .partitions
                .into_iter()
                .flat_map(|topic| {
                    let name = topic.topic;
                    topic
                        .partitions
                        .into_iter()
                        .map(move |partition| (name.clone(), partition))
                })
                .collect(),
            groups: record.groups.into_iter().collect(),
            offsets: record.offsets,
        })
    }

    /// Checks the caller's producer id and epoch against this transactional id's.
    fn check_producer(&self, producer_id: i64, epoch: i16) -> Outcome {
        if producer_id != self.producer_id {
            return Err(TxnError::ProducerIdMismatch(format!(
                "producer id {producer_id} does not own this transactional id"
            )));
        }
        if epoch < self.epoch {
            return Err(TxnError::ProducerFenced(format!(
                "epoch {epoch} was fenced by epoch {}",
                self.epoch
            )));
        }
        if epoch > self.epoch {
            return Err(TxnError::ProducerIdMismatch(format!(
                "unknown epoch {epoch}"
            )));
        }
        Ok(())
    }
}

type Reply<T> = oneshot::Sender<Result<T, TxnError>>;

/// Why a transaction request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The request is malformed or over a limit.
    #[error("{0}")]
    InvalidRequest(String),
    /// The producer id or epoch does not match the transactional id's (or the id is unknown).
    #[error("{0}")]
    ProducerIdMismatch(String),
    /// A newer epoch of the producer exists.
    #[error("{0}")]
    ProducerFenced(String),
    /// The transaction is not in a state that allows the request.
    #[error("{0}")]
    InvalidState(String),
    /// The transaction is completing; retry.
    #[error("{0}")]
    Concurrent(String),
    /// Internal topics cannot be part of a transaction.
    #[error("internal topic {0:?} cannot be part of a transaction")]
    InternalTopic(String),
    /// No such topic or partition.
    #[error("unknown topic or partition {topic}-{partition}")]
    UnknownPartition { topic: String, partition: u32 },
    /// Another node of the cluster coordinates transactions (issue #20).
    #[error("this node does not coordinate transactions ({})", crate::groups::coordinator_named(*.coordinator))]
    NotCoordinator { coordinator: Option<u64> },
    /// The group id is empty.
    #[error("group id is empty")]
    InvalidGroupId,
    /// The group refused the committing member.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// An offset of the commit is refused.
    #[error(transparent)]
    Offset(#[from] EntryRefusal),
    /// Storage failed underneath.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The coordinator is not running.
    #[error("transaction coordinator is not running")]
    NotRunning,
    /// A blocking task failed (a bug or shutdown).
    #[error("{0}")]
    Internal(String),
    /// The caller may not do this (ACLs, issue #18).
    #[error(transparent)]
    Unauthorized(#[from] crate::acl::Denied),
}

/// A transactional producer as a request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnProducer {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: i64,
    /// Its epoch.
    pub epoch: i16,
}

/// A transactional id as DescribeTransactions and ListTransactions show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnSummary {
    /// The transactional id.
    pub transactional_id: String,
    /// Its producer id.
    pub producer_id: i64,
    /// Its current epoch.
    pub epoch: i16,
    /// Where its transaction is.
    pub state: TxnState,
    /// Its transaction timeout.
    pub timeout_ms: u32,
    /// When its current transaction started (ms).
    pub started_ms: i64,
    /// The partitions in its current transaction.
    pub partitions: Vec<(String, u32)>,
    /// How long its transaction has been open, by the broker's clock (`None`: none open).
    pub running_ms: Option<i64>,
}

/// How a transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnEnd {
    /// Commit it.
    Commit,
    /// Abort it.
    Abort,
}

/// Offsets committed inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOffsets {
    /// The producer.
    pub producer: TxnProducer,
    /// The group the offsets are for.
    pub group_id: String,
    /// The committing member (empty for a standalone consumer).
    pub member_id: String,
    /// Its generation.
    pub generation: i32,
    /// The offsets.
    pub entries: Vec<OffsetEntry>,
}

enum Command {
    Describe(Option<Vec<String>>, Reply<Vec<TxnSummary>>),
    Init(String, u32, Reply<(i64, i16)>),
    AddPartitions(TxnProducer, Vec<(String, Vec<u32>)>, Reply<()>),
    AddOffsets(TxnProducer, String, Reply<()>),
    OffsetCommit(TxnOffsets, Reply<()>),
    End(TxnProducer, TxnEnd, Reply<()>),
}

/// What the coordinator works on: the stream partitions it marks, the groups it checks and
/// the offsets it commits.
#[derive(Debug, Clone)]
pub struct TxnDeps {
    /// Topics, producer state and the transactional membership table.
    pub streams: Arc<Streams>,
    /// Consumer groups, for the member check of transactional commits.
    pub groups: Arc<GroupCoordinator>,
    /// Committed offsets, written when a transaction commits.
    pub offsets: Arc<OffsetStore>,
    /// Where the markers go.
    pub markers: Arc<dyn MarkerSink>,
    /// Where new producer ids come from.
    pub ids: Arc<dyn ProducerIdSource>,
    /// This coordinator's epoch, carried by every marker it writes: the term of its
    /// leadership of the coordinators' partition in a cluster, 0 on a lone node. A
    /// partition refuses a marker of an older epoch than the last one it took for the
    /// producer, so a deposed coordinator's late marker cannot end the next transaction.
    pub coordinator_epoch: i32,
}

/// Hands out producer ids: this node's own reservations on a lone node, blocks the
/// cluster's metadata log reserves in a cluster (`core/txn_markers.rs`).
pub trait ProducerIdSource: Send + Sync + std::fmt::Debug {
    /// A producer id never handed out before.
    ///
    /// # Errors
    /// Storage errors; the cluster could not reserve a block.
    fn allocate(&self) -> Pin<Box<dyn Future<Output = Result<i64, TxnError>> + Send>>;
}

/// One transaction marker: the partition, the producer and epoch whose transaction it
/// ends, how it ended, and the coordinator's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The producer id.
    pub producer_id: i64,
    /// The epoch the marker carries (one above the producer's when an abort fences it).
    pub epoch: i16,
    /// Commit or abort.
    pub kind: ControlKind,
    /// The coordinator's clock, the marker's timestamp.
    pub now_ms: i64,
    /// The coordinator's epoch ([`TxnDeps::coordinator_epoch`]); `None` for a marker of a
    /// build before coordinator epochs (forwarded by one, or in a replicated partition's
    /// log), which is applied as that build applied it: unchecked, with epoch 0.
    pub coordinator_epoch: Option<i32>,
}

/// The wait for one marker.
pub type MarkerWrite = Pin<Box<dyn Future<Output = Result<(), TxnError>> + Send>>;

/// Writes markers where they belong: the partition's leader, which may be another node
/// and may write through the partition's replicated log (`core/txn_markers.rs`).
pub trait MarkerSink: Send + Sync + std::fmt::Debug {
    /// Writes `marker`; resolves once it is durable (fsynced, or committed by a majority
    /// of the partition's replicas). A partition that no longer exists needs no marker.
    ///
    /// # Errors
    /// A marker not written (its leader unreachable or changing, storage failing): the
    /// coordinator keeps the transaction prepared and writes the markers again.
    fn write(&self, marker: Marker) -> MarkerWrite;
}

/// Handle to the coordinator task (none runs on a node of a cluster that does not lead the
/// coordinator's log: calls answer `NotRunning`).
#[derive(Debug, Clone)]
pub struct TxnCoordinator {
    sender: Arc<std::sync::RwLock<Option<mpsc::Sender<Command>>>>,
}

/// The coordinator's state loaded at start, before its task runs.
#[derive(Debug)]
pub struct TxnLoaded {
    log: Arc<dyn RecordLog>,
    kind: TxnLog,
    txns: HashMap<String, TxnMeta>,
    receiver: mpsc::Receiver<Command>,
}

/// Which log a transaction coordinator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnLog {
    /// `__transaction_state`, its own (a lone node): every record is a transaction record,
    /// keyed by the transactional id.
    Own,
    /// The offsets log a cluster shares: transaction records carry the
    /// [`TXN_RECORD_HEADER`] and are keyed by [`SHARED_TXN_KEY_PREFIX`] and the id.
    Shared,
}

/// The start of a transaction record's key in the shared offsets log: a group name of one
/// byte that is not UTF-8, which no committed offset's key (`OffsetKey`) can start with, so
/// the log cleaner never takes a transaction record and an offset for one key.
pub const SHARED_TXN_KEY_PREFIX: [u8; 3] = [0x00, 0x01, 0xFF];

impl TxnLog {
    fn key_prefix(self) -> &'static [u8] {
        match self {
            TxnLog::Own => &[],
            TxnLog::Shared => &SHARED_TXN_KEY_PREFIX,
        }
    }
}

/// A transaction log replayed from the offsets log a cluster shares ([`replay_shared`]).
#[derive(Debug)]
pub struct TxnReplayed(HashMap<String, TxnMeta>);

/// Replays the transaction records of `log`, the offsets log they share in a cluster
/// (blocking). The caller flushed it and made sure it holds every committed record.
///
/// # Errors
/// Storage errors; a record that does not decode is corruption.
pub fn replay_shared(log: &Partition) -> Result<TxnReplayed, StorageError> {
    replay(log, TxnLog::Shared).map(TxnReplayed)
}

impl std::fmt::Debug for Command {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Command")
    }
}

impl TxnCoordinator {
    /// Opens (creating if needed) the transaction log and replays it (blocking: at start-up).
    ///
    /// # Errors
    /// Storage errors; a record that does not decode is corruption.
    pub fn open(topics: &Topics) -> Result<(TxnCoordinator, TxnLoaded), TopicError> {
        topics.ensure_internal(TXN_TOPIC, 1, internal_overrides())?;
        let log = topics
            .partition(TXN_TOPIC, 0)
            .ok_or_else(|| TopicError::Unknown(TXN_TOPIC.to_string()))?;
        let txns = replay(&log, TxnLog::Own)?;
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE_MAX);
        Ok((
            TxnCoordinator {
                sender: Arc::new(std::sync::RwLock::new(Some(sender))),
            },
            TxnLoaded {
                log: Arc::new(LocalLog(log)),
                kind: TxnLog::Own,
                txns,
                receiver,
            },
        ))
    }

    /// Starts a coordinator task on `replayed` writing through `log` (this node leads the
    /// cluster's coordinator log now), answering the calls from then on. Its first step is
    /// recovery: prepared transactions are completed, open ones aborted.
    pub fn lead(
        &self,
        replayed: TxnReplayed,
        log: Arc<dyn RecordLog>,
        deps: TxnDeps,
    ) -> tokio::task::JoinHandle<()> {
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE_MAX);
        *self
            .sender
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(sender);
        Self::spawn(
            TxnLoaded {
                log,
                kind: TxnLog::Shared,
                txns: replayed.0,
                receiver,
            },
            deps,
        )
    }

    /// Stops answering calls (this node no longer leads the coordinator's log); the caller
    /// stops the task [`TxnCoordinator::lead`] returned.
    pub fn stop(&self) {
        *self
            .sender
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = None;
    }

    /// Starts the coordinator task: it first completes or aborts what a crash left open.
    pub fn spawn(loaded: TxnLoaded, deps: TxnDeps) -> tokio::task::JoinHandle<()> {
        for meta in loaded.txns.values() {
            // A restarted node's recovery aborts open transactions before serving: only
            // epochs matter. A new coordinator of a cluster goes on with them: their
            // partitions are members again.
            let partitions = if loaded.kind == TxnLog::Shared && meta.state == TxnState::Ongoing {
                meta.partitions.clone()
            } else {
                BTreeSet::new()
            };
            deps.streams
                .txn_members()
                .set(meta.producer_id, meta.epoch, partitions);
        }
        tokio::spawn(run(loaded, deps))
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, TxnError> {
        let (reply, answer) = oneshot::channel();
        let sender = self
            .sender
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let Some(sender) = sender else {
            return Err(TxnError::NotRunning);
        };
        if sender.send(command(reply)).await.is_err() {
            return Err(TxnError::NotRunning);
        }
        answer.await.unwrap_or(Err(TxnError::NotRunning))
    }

    /// The state of the named transactional ids (unknown ones left out), or of every one.
    ///
    /// # Errors
    /// `NotRunning` when the coordinator has stopped.
    pub async fn describe(&self, ids: Option<Vec<String>>) -> Result<Vec<TxnSummary>, TxnError> {
        self.call(|reply| Command::Describe(ids, reply)).await
    }

    /// InitProducerId with a transactional id: fences earlier producers of the id and
    /// returns its producer id and new epoch. `timeout_ms` 0 asks for the default.
    ///
    /// # Errors
    /// `InvalidRequest` for an empty id or a timeout over the max; storage errors.
    pub async fn init(
        &self,
        transactional_id: String,
        timeout_ms: u32,
    ) -> Result<(i64, i16), TxnError> {
        self.call(|reply| Command::Init(transactional_id, timeout_ms, reply))
            .await
    }

    /// AddPartitionsToTxn.
    ///
    /// # Errors
    /// As the request's checks decide (see [`TxnError`]).
    pub async fn add_partitions(
        &self,
        producer: TxnProducer,
        partitions: Vec<(String, Vec<u32>)>,
    ) -> Result<(), TxnError> {
        self.call(|reply| Command::AddPartitions(producer, partitions, reply))
            .await
    }

    /// AddOffsetsToTxn.
    ///
    /// # Errors
    /// As the request's checks decide.
    pub async fn add_offsets(
        &self,
        producer: TxnProducer,
        group_id: String,
    ) -> Result<(), TxnError> {
        self.call(|reply| Command::AddOffsets(producer, group_id, reply))
            .await
    }

    /// TxnOffsetCommit: stages offsets that commit with the transaction.
    ///
    /// # Errors
    /// As the request's checks decide; the commit rule is [`commit::check`], shared with
    /// plain commits.
    pub async fn offset_commit(&self, offsets: TxnOffsets) -> Result<(), TxnError> {
        self.call(|reply| Command::OffsetCommit(offsets, reply))
            .await
    }

    /// EndTxn.
    ///
    /// # Errors
    /// As the request's checks decide; storage errors while completing.
    pub async fn end(&self, producer: TxnProducer, end: TxnEnd) -> Result<(), TxnError> {
        self.call(|reply| Command::End(producer, end, reply)).await
    }
}

/// Replays a transaction log: every record of its own log, or the transaction records of
/// the offsets log a cluster shares.
fn replay(log: &Partition, kind: TxnLog) -> Result<HashMap<String, TxnMeta>, StorageError> {
    let mut txns = HashMap::new();
    replay_records(log, |record| {
        if kind == TxnLog::Shared && !is_txn_record(&record) {
            return Ok(());
        }
        let (Some(key), Some(value)) = (record.key, record.value) else {
            return Ok(());
        };
        let corrupt = |reason: String| StorageError::Corrupt {
            segment: log.dir().to_path_buf(),
            position: 0,
            reason: format!("transaction record does not decode: {reason}"),
        };
        let id = key
            .strip_prefix(kind.key_prefix())
            .ok_or_else(|| corrupt("a key without the shared log's prefix".to_string()))?;
        let transactional_id =
            String::from_utf8(id.to_vec()).map_err(|error| corrupt(error.to_string()))?;
        let mut reader = Reader::new(value);
        let decoded = TxnRecord::decode(&mut reader, "txn record")
            .and_then(|decoded| reader.finish().map(|()| decoded))
            .map_err(|error| corrupt(error.to_string()))?;
        let meta =
            TxnMeta::from_record(decoded).ok_or_else(|| corrupt("unknown state".to_string()))?;
        txns.insert(transactional_id, meta);
        Ok(())
    })?;
    Ok(txns)
}

struct Task {
    deps: TxnDeps,
    log: Arc<dyn RecordLog>,
    /// Which log it is (how its keys start).
    kind: TxnLog,
    txns: HashMap<String, TxnMeta>,
    /// The partitions a completing transaction already has its marker on, by producer id
    /// and epoch: a completion tried again writes only the others (held in memory only;
    /// after a restart every marker is written again, which is harmless).
    marked: HashMap<(i64, i16), BTreeSet<(String, u32)>>,
}

type Outcome = Result<(), TxnError>;

async fn run(loaded: TxnLoaded, deps: TxnDeps) {
    let TxnLoaded {
        log,
        kind,
        txns,
        mut receiver,
    } = loaded;
    let mut task = Task {
        deps,
        log,
        kind,
        txns,
        marked: HashMap::new(),
    };
    task.recover(kind).await;
    let mut ticker = tokio::time::interval(TIMEOUT_CHECK_INTERVAL);
    loop {
        tokio::select! {
            command = receiver.recv() => match command {
                Some(command) => task.handle(command).await,
                None => return,
            },
            _ = ticker.tick() => task.abort_timed_out().await,
        }
    }
}

impl Task {
    fn now_ms(&self) -> i64 {
        self.deps.streams.clock().now_ms()
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Describe(ids, reply) => {
                let _ = reply.send(Ok(self.describe(ids)));
            }
            Command::Init(transactional_id, timeout_ms, reply) => {
                let _ = reply.send(self.init(transactional_id, timeout_ms).await);
            }
            Command::AddPartitions(producer, partitions, reply) => {
                let _ = reply.send(self.add_partitions(producer, partitions).await);
            }
            Command::AddOffsets(producer, group_id, reply) => {
                let _ = reply.send(self.add_offsets(producer, group_id).await);
            }
            Command::OffsetCommit(offsets, reply) => {
                let _ = reply.send(self.offset_commit(offsets).await);
            }
            Command::End(producer, end, reply) => {
                let _ = reply.send(self.end(producer, end).await);
            }
        }
    }

    /// The named transactional ids (unknown ones left out), or every one, sorted by id.
    fn describe(&self, ids: Option<Vec<String>>) -> Vec<TxnSummary> {
        let now = self.now_ms();
        let summary = |(transactional_id, meta): (&String, &TxnMeta)| TxnSummary {
            running_ms: (meta.state == TxnState::Ongoing).then(|| now - meta.started_ms),
            transactional_id: transactional_id.clone(),
            producer_id: meta.producer_id,
            epoch: meta.epoch,
            state: meta.state,
            timeout_ms: meta.timeout_ms,
            started_ms: meta.started_ms,
            partitions: meta.partitions.iter().cloned().collect(),
        };
        let mut summaries: Vec<TxnSummary> = match ids {
            None => self.txns.iter().map(summary).collect(),
            Some(ids) => ids
                .iter()
                .filter_map(|id| self.txns.get_key_value(id))
                .map(summary)
                .collect(),
        };
        summaries.sort_by(|left, right| left.transactional_id.cmp(&right.transactional_id));
        summaries
    }

    /// Logs `meta` as the state of `transactional_id` and waits until it is durable.
    async fn log_state(&mut self, transactional_id: &str, meta: TxnMeta) -> Outcome {
        let now = self.now_ms();
        let mut builder = BatchBuilder::new(now);
        builder
            .push(&txn_record(self.kind, transactional_id, &meta, now))
            .map_err(|error| TxnError::Internal(error.to_string()))?;
        let mut bytes = BytesMut::new();
        builder.build_into(&mut bytes);
        self.log.write_batches(bytes).await?;
        // Every transactional producer keeps its epoch in the membership table (for
        // fencing); only an open transaction has partitions.
        let partitions = if meta.state == TxnState::Ongoing {
            meta.partitions.clone()
        } else {
            BTreeSet::new()
        };
        self.deps
            .streams
            .txn_members()
            .set(meta.producer_id, meta.epoch, partitions);
        self.txns.insert(transactional_id.to_string(), meta);
        Ok(())
    }

    async fn init(
        &mut self,
        transactional_id: String,
        asked_timeout_ms: u32,
    ) -> Result<(i64, i16), TxnError> {
        if transactional_id.is_empty() {
            return Err(TxnError::InvalidRequest(
                "transactional id is empty".to_string(),
            ));
        }
        let timeout_ms = match asked_timeout_ms {
            0 => TXN_TIMEOUT_MS_DEFAULT,
            asked if asked > TXN_TIMEOUT_MS_MAX => {
                return Err(TxnError::InvalidRequest(format!(
                    "transaction timeout {asked} ms exceeds max {TXN_TIMEOUT_MS_MAX}"
                )))
            }
            asked => asked,
        };
        let existing = self.txns.get(&transactional_id).cloned();
        let mut meta = match existing {
            None => TxnMeta {
                producer_id: self.allocate().await?,
                epoch: 0,
                state: TxnState::Empty,
                timeout_ms,
                started_ms: 0,
                partitions: BTreeSet::new(),
                groups: BTreeSet::new(),
                offsets: Vec::new(),
            },
            Some(meta)
                if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) =>
            {
                // Finish the decided transaction first (a crash can leave one prepared).
                self.complete(&transactional_id, meta).await?;
                self.bumped(&transactional_id).await?
            }
            Some(meta) if meta.state == TxnState::Ongoing => {
                // The previous producer of this id is gone or a zombie: abort its transaction.
                self.abort_with_bump(&transactional_id, meta, "a new producer took over")
                    .await?;
                let mut aborted = self.txns.get(&transactional_id).cloned().ok_or_else(|| {
                    TxnError::Internal("transaction vanished during abort".to_string())
                })?;
                if aborted.epoch == i16::MAX {
                    aborted.producer_id = self.allocate().await?;
                    aborted.epoch = 0;
                }
                aborted
            }
            Some(_) => self.bumped(&transactional_id).await?,
        };
        meta.timeout_ms = timeout_ms;
        meta.state = TxnState::Empty;
        meta.partitions.clear();
        meta.groups.clear();
        meta.offsets.clear();
        let answer = (meta.producer_id, meta.epoch);
        self.log_state(&transactional_id, meta).await?;
        Ok(answer)
    }

    /// The id's metadata with the epoch raised (a new producer id when the epoch is spent).
    async fn bumped(&mut self, transactional_id: &str) -> Result<TxnMeta, TxnError> {
        let mut meta = self
            .txns
            .get(transactional_id)
            .cloned()
            .ok_or_else(|| TxnError::Internal("transaction vanished".to_string()))?;
        if meta.epoch == i16::MAX {
            meta.producer_id = self.allocate().await?;
            meta.epoch = 0;
        } else {
            meta.epoch += 1;
        }
        Ok(meta)
    }

    async fn add_partitions(
        &mut self,
        producer: TxnProducer,
        topics: Vec<(String, Vec<u32>)>,
    ) -> Outcome {
        let mut meta = self.current(&producer)?;
        for (topic, partitions) in &topics {
            if topic.starts_with(INTERNAL_TOPIC_PREFIX) {
                return Err(TxnError::InternalTopic(topic.clone()));
            }
            for partition in partitions {
                if self.deps.streams.partition(topic, *partition).is_none() {
                    return Err(TxnError::UnknownPartition {
                        topic: topic.clone(),
                        partition: *partition,
                    });
                }
            }
        }
        let before = meta.partitions.len();
        self.open_if_needed(&mut meta);
        let was_ongoing = self
            .txns
            .get(&producer.transactional_id)
            .map(|meta| meta.state)
            == Some(TxnState::Ongoing);
        for (topic, partitions) in topics {
            for partition in partitions {
                meta.partitions.insert((topic.clone(), partition));
            }
        }
        if was_ongoing && meta.partitions.len() == before {
            return Ok(());
        }
        self.log_state(&producer.transactional_id, meta).await
    }

    async fn add_offsets(&mut self, producer: TxnProducer, group_id: String) -> Outcome {
        if group_id.is_empty() {
            return Err(TxnError::InvalidGroupId);
        }
        let mut meta = self.current(&producer)?;
        self.open_if_needed(&mut meta);
        meta.groups.insert(group_id);
        self.log_state(&producer.transactional_id, meta).await
    }

    async fn offset_commit(&mut self, offsets: TxnOffsets) -> Outcome {
        let TxnOffsets {
            producer,
            group_id,
            member_id,
            generation,
            entries,
        } = offsets;
        let mut meta = self.current(&producer)?;
        if meta.state != TxnState::Ongoing || !meta.groups.contains(&group_id) {
            return Err(TxnError::InvalidState(format!(
                "group {group_id:?} was not added to the transaction (AddOffsetsToTxn)"
            )));
        }
        let streams = &self.deps.streams;
        let outcomes = commit::check(
            &self.deps.groups,
            &group_id,
            &member_id,
            generation,
            &entries,
            |topic| streams.partition_count(topic),
        )?;
        // A transactional commit is all or nothing: the first refused offset refuses it.
        if let Some(Err(refusal)) = outcomes.into_iter().find(Result::is_err) {
            return Err(refusal.into());
        }
        for entry in entries {
            meta.offsets.retain(|pending| {
                !(pending.group == group_id
                    && pending.topic == entry.topic
                    && pending.partition == entry.partition)
            });
            meta.offsets.push(PendingOffset {
                group: group_id.clone(),
                topic: entry.topic,
                partition: entry.partition,
                offset: entry.committed.offset,
                metadata: entry.committed.metadata,
            });
        }
        self.log_state(&producer.transactional_id, meta).await
    }

    async fn end(&mut self, producer: TxnProducer, end: TxnEnd) -> Outcome {
        let meta = self.owned_by(&producer)?;
        let commit = end == TxnEnd::Commit;
        match (meta.state, commit) {
            (TxnState::Ongoing, _) => {}
            // A retried EndTxn whose first answer was lost.
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => return Ok(()),
            (TxnState::PrepareCommit | TxnState::PrepareAbort, _) => {
                return Err(TxnError::Concurrent(
                    "transaction is completing".to_string(),
                ))
            }
            (state, _) => {
                return Err(TxnError::InvalidState(format!(
                    "cannot {} a transaction in state {state:?}",
                    if commit { "commit" } else { "abort" }
                )))
            }
        }
        let mut prepared = meta;
        prepared.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        self.log_state(&producer.transactional_id, prepared.clone())
            .await?;
        self.complete(&producer.transactional_id, prepared).await
    }

    /// Writes the markers (and on commit the offsets) of a prepared transaction, then logs it
    /// complete.
    async fn complete(&mut self, transactional_id: &str, prepared: TxnMeta) -> Outcome {
        let commit = prepared.state == TxnState::PrepareCommit;
        let kind = if commit {
            ControlKind::Commit
        } else {
            ControlKind::Abort
        };
        self.write_markers(&prepared, kind).await?;
        self.marked.remove(&(prepared.producer_id, prepared.epoch));
        if commit {
            let mut by_group: HashMap<&str, Vec<(String, u32, Committed)>> = HashMap::new();
            for pending in &prepared.offsets {
                by_group.entry(&pending.group).or_default().push((
                    pending.topic.clone(),
                    pending.partition,
                    Committed {
                        offset: pending.offset,
                        metadata: pending.metadata.clone(),
                    },
                ));
            }
            for (group, entries) in by_group {
                self.deps.offsets.commit(group, entries).await?;
            }
        }
        let mut done = prepared;
        done.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        done.partitions.clear();
        done.groups.clear();
        done.offsets.clear();
        self.log_state(transactional_id, done).await
    }

    /// Aborts an open transaction and raises the epoch, fencing the producer that opened it.
    async fn abort_with_bump(
        &mut self,
        transactional_id: &str,
        meta: TxnMeta,
        why: &str,
    ) -> Outcome {
        tracing::info!(
            transactional_id,
            producer_id = meta.producer_id,
            why,
            "aborting transaction"
        );
        let mut prepared = meta;
        prepared.state = TxnState::PrepareAbort;
        self.txns
            .insert(transactional_id.to_string(), prepared.clone());
        // The abort keeps the producer id (its markers must close that id's transactions); a
        // spent epoch gets a new producer id at the next InitProducerId.
        prepared.epoch = prepared.epoch.saturating_add(1);
        self.log_state(transactional_id, prepared.clone()).await?;
        self.complete(transactional_id, prepared).await
    }

    /// Recovery after a restart: finish prepared transactions, abort open ones. A new
    /// coordinator of a cluster (`kind` Shared: the previous one's node failed or lost its
    /// leadership) finishes the prepared ones and goes on with the open ones, as Kafka's
    /// does: their producers are not fenced, and one that went away is aborted at its
    /// transaction's timeout.
    async fn recover(&mut self, kind: TxnLog) {
        let pending: Vec<(String, TxnMeta)> = self
            .txns
            .iter()
            .filter(|(_, meta)| match meta.state {
                TxnState::Ongoing => kind == TxnLog::Own,
                TxnState::PrepareCommit | TxnState::PrepareAbort => true,
                _ => false,
            })
            .map(|(id, meta)| (id.clone(), meta.clone()))
            .collect();
        for (transactional_id, meta) in pending {
            let outcome = if meta.state == TxnState::Ongoing {
                self.abort_with_bump(&transactional_id, meta, "open at broker start")
                    .await
            } else {
                self.complete(&transactional_id, meta).await
            };
            if let Err(error) = outcome {
                tracing::error!(transactional_id, %error, "cannot finish transaction at start");
            }
        }
    }

    async fn abort_timed_out(&mut self) {
        let now = self.now_ms();
        let expired: Vec<(String, TxnMeta)> = self
            .txns
            .iter()
            .filter(|(_, meta)| {
                meta.state == TxnState::Ongoing
                    && now - meta.started_ms > i64::from(meta.timeout_ms)
            })
            .map(|(id, meta)| (id.clone(), meta.clone()))
            .collect();
        for (transactional_id, meta) in expired {
            if let Err(error) = self
                .abort_with_bump(&transactional_id, meta, "timed out")
                .await
            {
                tracing::error!(transactional_id, %error, "cannot abort timed-out transaction");
            }
        }
        // A completion that failed (storage trouble) is retried until it succeeds.
        let prepared: Vec<(String, TxnMeta)> = self
            .txns
            .iter()
            .filter(|(_, meta)| {
                matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort)
            })
            .map(|(id, meta)| (id.clone(), meta.clone()))
            .collect();
        for (transactional_id, meta) in prepared {
            if let Err(error) = self.complete(&transactional_id, meta).await {
                tracing::warn!(transactional_id, %error, "retrying transaction completion failed");
            }
        }
    }

    /// The id's metadata after checking the caller, ready to add to.
    fn current(&self, producer: &TxnProducer) -> Result<TxnMeta, TxnError> {
        let meta = self.owned_by(producer)?;
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Err(TxnError::Concurrent(
                "transaction is completing".to_string(),
            ));
        }
        Ok(meta)
    }

    /// The id's metadata, if `producer` is its current producer and epoch.
    fn owned_by(&self, producer: &TxnProducer) -> Result<TxnMeta, TxnError> {
        let meta = self
            .txns
            .get(&producer.transactional_id)
            .cloned()
            .ok_or_else(unknown_id)?;
        meta.check_producer(producer.producer_id, producer.epoch)?;
        Ok(meta)
    }

    /// Starts a new transaction if none is open.
    fn open_if_needed(&self, meta: &mut TxnMeta) {
        if meta.state != TxnState::Ongoing {
            meta.state = TxnState::Ongoing;
            meta.started_ms = self.now_ms();
            meta.partitions.clear();
            meta.groups.clear();
            meta.offsets.clear();
        }
    }

    /// A new producer id.
    async fn allocate(&self) -> Result<i64, TxnError> {
        self.deps.ids.allocate().await
    }

    /// Writes a marker to every partition of the transaction, all at once, and waits until
    /// every one is durable, whatever the partition's flush policy: otherwise a power loss
    /// could leave the last stable offset stuck behind a transaction no one will finish.
    async fn write_markers(&mut self, meta: &TxnMeta, kind: ControlKind) -> Outcome {
        let now_ms = self.now_ms();
        let marked = self
            .marked
            .entry((meta.producer_id, meta.epoch))
            .or_default();
        let pending: Vec<&(String, u32)> = meta
            .partitions
            .iter()
            .filter(|partition| !marked.contains(*partition))
            .collect();
        // A coordinator deposed since it logged the transaction prepared (a paused process
        // resumed, its task a step ahead of its watcher) must not write markers: its
        // successor completes the transaction, and the producer may have opened the next
        // one on these partitions with the same epoch.
        if !pending.is_empty() && !self.log.confirm_writer().await {
            return Err(TxnError::NotCoordinator { coordinator: None });
        }
        let writes = pending.iter().map(|(topic, partition)| {
            self.deps.markers.write(Marker {
                topic: topic.clone(),
                partition: *partition,
                producer_id: meta.producer_id,
                epoch: meta.epoch,
                kind,
                now_ms,
                coordinator_epoch: Some(self.deps.coordinator_epoch),
            })
        });
        let outcomes = futures_util::future::join_all(writes).await;
        let mut failed = None;
        for (partition, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    marked.insert(partition.clone());
                }
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

fn unknown_id() -> TxnError {
    TxnError::ProducerIdMismatch("unknown transactional id".to_string())
}

/// The record of `meta` as the state of `transactional_id` in a log of `kind`.
fn txn_record(kind: TxnLog, transactional_id: &str, meta: &TxnMeta, now_ms: i64) -> NewRecord {
    let mut value = BytesMut::new();
    meta.to_record().encode(&mut value);
    NewRecord {
        timestamp_ms: now_ms,
        key: Some(Bytes::from(
            [kind.key_prefix(), transactional_id.as_bytes()].concat(),
        )),
        value: Some(value.freeze()),
        headers: vec![wharf_protocol::batch::Header {
            key: TXN_RECORD_HEADER.to_string(),
            value: Some(Bytes::new()),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::offsets::{OffsetKey, OFFSETS_TOPIC};
    use crate::storage::testing::sim_env;
    use crate::storage::LogConfig;
    use std::path::Path;

    fn meta(state: TxnState) -> TxnMeta {
        TxnMeta {
            producer_id: 7,
            epoch: 2,
            state,
            timeout_ms: 60_000,
            started_ms: 1_000,
            partitions: [("t".to_string(), 0)].into_iter().collect(),
            groups: BTreeSet::new(),
            offsets: Vec::new(),
        }
    }

    #[test]
    fn a_shared_log_holds_offsets_and_transaction_records_apart() {
        let (env, _, clock) = sim_env(1_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let topics = Topics::open(Path::new("/d"), env, LogConfig::default()).unwrap();
        let offsets = OffsetStore::open(&topics, clock).unwrap();
        runtime
            .block_on(offsets.commit(
                "g",
                vec![(
                    "t".to_string(),
                    0,
                    Committed {
                        offset: 5,
                        metadata: None,
                    },
                )],
            ))
            .unwrap();
        // The coordinator's records, as a cluster's coordinator writes them there.
        let mut builder = BatchBuilder::new(1_000);
        builder
            .push(&txn_record(
                TxnLog::Shared,
                "tx",
                &meta(TxnState::Ongoing),
                1_000,
            ))
            .unwrap();
        let mut bytes = BytesMut::new();
        builder.build_into(&mut bytes);
        let log = topics.partition(OFFSETS_TOPIC, 0).unwrap();
        let shared = LocalLog(log.clone());
        runtime.block_on(shared.write_batches(bytes)).unwrap();

        // The key: the prefix, then the id; the header marks the record.
        let read = log.read(1, 1 << 20).unwrap();
        let batch = wharf_protocol::batch::batches(read.bytes)
            .next()
            .unwrap()
            .unwrap();
        let record = batch.records().next().unwrap().unwrap();
        assert_eq!(record.key.as_deref(), Some(&b"\x00\x01\xfftx"[..]));
        assert!(is_txn_record(&record));
        // No committed offset's key starts so (a one-byte group that is not UTF-8).
        let mut reader = Reader::new(record.key.clone().unwrap());
        assert!(OffsetKey::decode(&mut reader, "key").is_err());

        // Each side replays its own records only.
        let replayed = replay_shared(&log).unwrap();
        assert_eq!(replayed.0.len(), 1);
        assert_eq!(replayed.0["tx"].producer_id, 7);
        assert_eq!(replayed.0["tx"].state, TxnState::Ongoing);
        offsets.serve(Arc::new(shared)).unwrap();
        assert_eq!(offsets.get("g", "t", 0).map(|c| c.offset), Some(5));
        assert_eq!(offsets.groups(), vec!["g".to_string()]);
        topics.registry().close().unwrap();
    }
}
