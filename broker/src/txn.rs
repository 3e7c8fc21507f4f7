//! The transaction coordinator.
//!
//! A transactional id maps to a producer id and epoch. `InitProducerId` with a transactional
//! id fences any earlier producer of that id (the epoch goes up) and aborts its open
//! transaction. A transaction registers its partitions (`AddPartitionsToTxn`) and consumer
//! groups (`AddOffsetsToTxn`, `TxnOffsetCommit`), and `EndTxn` commits or aborts it:
//!
//! 1. log `PrepareCommit` / `PrepareAbort` (durable);
//! 2. write a marker (control batch) to every partition of the transaction (durable);
//! 3. on commit, store the transaction's consumer offsets;
//! 4. log `CompleteCommit` / `CompleteAbort`.
//!
//! Every state change is a record in the internal topic `__transaction_state`, fsynced before
//! it takes effect, and replayed on start. Recovery then finishes what a crash interrupted:
//! a prepared transaction is completed as logged, and an open one is aborted (its producer's
//! epoch goes up, fencing it). Open transactions older than their timeout are aborted the
//! same way.
//!
//! One task owns all coordinator state and handles requests one at a time (STYLE.md: an
//! owning task rather than a lock held across an fsync wait).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::batch::{self, BatchBuilder, ControlKind, NewRecord};
use wharf_protocol::messages::*;
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::{wire_struct, ErrorCode};

use crate::group::CommitCheck;
use crate::offsets::Committed;
use crate::server::dispatch::storage_error_code;
use crate::server::Broker;
use crate::storage::{Error as StorageError, Partition};
use crate::topic::{TopicError, Topics};

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
/// Bytes read per step while replaying the transaction log.
const REPLAY_READ_BYTES: usize = 1024 * 1024;

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
    /// One record of the transaction log: the whole state of one transactional id.
    pub struct TxnRecord {
        pub producer_id: i64,
        pub epoch: i16,
        pub state: u8,
        pub timeout_ms: u32,
        pub started_ms: i64,
        pub partitions: Vec<TopicPartitions>,
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
        let mut topics: Vec<TopicPartitions> = Vec::new();
        for (topic, partition) in &self.partitions {
            match topics.last_mut() {
                Some(last) if &last.topic == topic => last.partitions.push(*partition),
                _ => topics.push(TopicPartitions {
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
    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), (ErrorCode, String)> {
        if producer_id != self.producer_id {
            return Err((
                ErrorCode::InvalidProducerIdMapping,
                format!("producer id {producer_id} does not own this transactional id"),
            ));
        }
        if epoch < self.epoch {
            return Err((
                ErrorCode::ProducerFenced,
                format!("epoch {epoch} was fenced by epoch {}", self.epoch),
            ));
        }
        if epoch > self.epoch {
            return Err((
                ErrorCode::InvalidProducerIdMapping,
                format!("unknown epoch {epoch}"),
            ));
        }
        Ok(())
    }
}

type Reply<T> = oneshot::Sender<T>;

enum Command {
    Init(InitProducerIdRequest, Reply<InitProducerIdResponse>),
    AddPartitions(AddPartitionsToTxnRequest, Reply<AddPartitionsToTxnResponse>),
    AddOffsets(AddOffsetsToTxnRequest, Reply<AddOffsetsToTxnResponse>),
    OffsetCommit(TxnOffsetCommitRequest, Reply<TxnOffsetCommitResponse>),
    End(EndTxnRequest, Reply<EndTxnResponse>),
}

/// Transactional producers' current epochs and open transactions' partitions, readable
/// without asking the task: producer id → (epoch, partitions). The produce path checks a transactional batch against it.
type OpenPartitions = Arc<std::sync::Mutex<HashMap<i64, (i16, BTreeSet<(String, u32)>)>>>;

/// Whether a transactional batch may be appended to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The partition is in the producer's open transaction.
    Member,
    /// A newer epoch of the producer exists.
    Fenced,
    /// The partition was not added to an open transaction of this producer.
    NotAdded,
}

/// Handle to the coordinator task.
#[derive(Debug, Clone)]
pub struct TxnCoordinator {
    sender: mpsc::Sender<Command>,
    open: OpenPartitions,
}

/// The coordinator's state loaded at start, before its task runs.
#[derive(Debug)]
pub struct TxnLoaded {
    log: Arc<Partition>,
    txns: HashMap<String, TxnMeta>,
    receiver: mpsc::Receiver<Command>,
    open: OpenPartitions,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Command")
    }
}

macro_rules! call {
    ($self:ident, $variant:ident, $request:ident, $response:ident) => {{
        let (reply, answer) = oneshot::channel();
        #[allow(clippy::needless_update)]
        let unavailable = || $response {
            error: ErrorCode::ShuttingDown,
            error_message: Some("transaction coordinator is not running".to_string()),
            ..Default::default()
        };
        if $self
            .sender
            .send(Command::$variant($request, reply))
            .await
            .is_err()
        {
            return unavailable();
        }
        answer.await.unwrap_or_else(|_| unavailable())
    }};
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
        let txns = replay(&log)?;
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE_MAX);
        let open = OpenPartitions::default();
        {
            let mut known = open.lock().unwrap_or_else(|poison| poison.into_inner());
            for meta in txns.values() {
                // Recovery aborts open transactions before serving; only epochs matter here.
                known.insert(meta.producer_id, (meta.epoch, BTreeSet::new()));
            }
        }
        Ok((
            TxnCoordinator {
                sender,
                open: open.clone(),
            },
            TxnLoaded {
                log,
                txns,
                receiver,
                open,
            },
        ))
    }

    /// Whether producer `producer_id` at `epoch` may append a transactional batch to
    /// `topic`-`partition` (it must have been added with AddPartitionsToTxn).
    pub fn membership(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: u32,
    ) -> Membership {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match open.get(&producer_id) {
            Some((current, _)) if epoch < *current => Membership::Fenced,
            Some((current, partitions))
                if epoch == *current && partitions.contains(&(topic.to_string(), partition)) =>
            {
                Membership::Member
            }
            _ => Membership::NotAdded,
        }
    }

    /// Starts the coordinator task: it first completes or aborts what a crash left open.
    pub fn spawn(loaded: TxnLoaded, broker: Weak<Broker>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run(loaded, broker))
    }

    /// InitProducerId with a transactional id.
    pub async fn init(&self, request: InitProducerIdRequest) -> InitProducerIdResponse {
        call!(self, Init, request, InitProducerIdResponse)
    }

    /// AddPartitionsToTxn.
    pub async fn add_partitions(
        &self,
        request: AddPartitionsToTxnRequest,
    ) -> AddPartitionsToTxnResponse {
        call!(self, AddPartitions, request, AddPartitionsToTxnResponse)
    }

    /// AddOffsetsToTxn.
    pub async fn add_offsets(&self, request: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
        call!(self, AddOffsets, request, AddOffsetsToTxnResponse)
    }

    /// TxnOffsetCommit.
    pub async fn offset_commit(&self, request: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
        call!(self, OffsetCommit, request, TxnOffsetCommitResponse)
    }

    /// EndTxn.
    pub async fn end(&self, request: EndTxnRequest) -> EndTxnResponse {
        call!(self, End, request, EndTxnResponse)
    }
}

fn replay(log: &Partition) -> Result<HashMap<String, TxnMeta>, StorageError> {
    let mut txns = HashMap::new();
    let mut position = log.log_start_offset();
    while position < log.high_watermark() {
        let read = log.read(position, REPLAY_READ_BYTES)?;
        if read.bytes.is_empty() {
            break;
        }
        for decoded in batch::batches(read.bytes) {
            let decoded = decoded?;
            position = decoded.header().next_offset();
            if decoded.header().attributes.is_control() {
                continue;
            }
            for record in decoded.records() {
                let record = record?;
                let (Some(key), Some(value)) = (record.key, record.value) else {
                    continue;
                };
                let corrupt = |reason: String| StorageError::Corrupt {
                    segment: log.dir().to_path_buf(),
                    position: 0,
                    reason: format!("transaction record does not decode: {reason}"),
                };
                let transactional_id =
                    String::from_utf8(key.to_vec()).map_err(|error| corrupt(error.to_string()))?;
                let mut reader = Reader::new(value);
                let decoded = TxnRecord::decode(&mut reader, "txn record")
                    .and_then(|decoded| reader.finish().map(|()| decoded))
                    .map_err(|error| corrupt(error.to_string()))?;
                let meta = TxnMeta::from_record(decoded)
                    .ok_or_else(|| corrupt("unknown state".to_string()))?;
                txns.insert(transactional_id, meta);
            }
        }
    }
    Ok(txns)
}

struct Task {
    broker: Weak<Broker>,
    log: Arc<Partition>,
    txns: HashMap<String, TxnMeta>,
    open: OpenPartitions,
}

type Outcome = Result<(), (ErrorCode, String)>;

async fn run(loaded: TxnLoaded, broker: Weak<Broker>) {
    let TxnLoaded {
        log,
        txns,
        mut receiver,
        open,
    } = loaded;
    let mut task = Task {
        broker,
        log,
        txns,
        open,
    };
    task.recover().await;
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

fn error_parts(outcome: Outcome) -> (ErrorCode, Option<String>) {
    match outcome {
        Ok(()) => (ErrorCode::None, None),
        Err((code, message)) => (code, Some(message)),
    }
}

impl Task {
    fn broker(&self) -> Result<Arc<Broker>, (ErrorCode, String)> {
        self.broker.upgrade().ok_or((
            ErrorCode::ShuttingDown,
            "broker is shutting down".to_string(),
        ))
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Init(request, reply) => {
                let response = match self.init(request).await {
                    Ok((producer_id, producer_epoch)) => InitProducerIdResponse {
                        producer_id,
                        producer_epoch,
                        ..InitProducerIdResponse::default()
                    },
                    Err((error, message)) => InitProducerIdResponse {
                        error,
                        error_message: Some(message),
                        producer_id: -1,
                        producer_epoch: -1,
                    },
                };
                let _ = reply.send(response);
            }
            Command::AddPartitions(request, reply) => {
                let (error, error_message) = error_parts(self.add_partitions(request).await);
                let _ = reply.send(AddPartitionsToTxnResponse {
                    error,
                    error_message,
                });
            }
            Command::AddOffsets(request, reply) => {
                let (error, error_message) = error_parts(self.add_offsets(request).await);
                let _ = reply.send(AddOffsetsToTxnResponse {
                    error,
                    error_message,
                });
            }
            Command::OffsetCommit(request, reply) => {
                let (error, error_message) = error_parts(self.offset_commit(request).await);
                let _ = reply.send(TxnOffsetCommitResponse {
                    error,
                    error_message,
                });
            }
            Command::End(request, reply) => {
                let (error, error_message) = error_parts(self.end(request).await);
                let _ = reply.send(EndTxnResponse {
                    error,
                    error_message,
                });
            }
        }
    }

    /// Logs `meta` as the state of `transactional_id` and waits until it is durable.
    async fn log_state(&mut self, transactional_id: &str, meta: TxnMeta) -> Outcome {
        let broker = self.broker()?;
        let now = broker.clock.now_ms();
        let mut value = BytesMut::new();
        meta.to_record().encode(&mut value);
        let mut builder = BatchBuilder::new(now);
        builder
            .push(&NewRecord {
                timestamp_ms: now,
                key: Some(Bytes::copy_from_slice(transactional_id.as_bytes())),
                value: Some(value.freeze()),
                headers: Vec::new(),
            })
            .map_err(|error| (ErrorCode::Unknown, error.to_string()))?;
        let mut bytes = BytesMut::new();
        builder.build_into(&mut bytes);
        let storage = |error: StorageError| (storage_error_code(&error), error.to_string());
        let appended = self.log.append(&mut bytes).map_err(storage)?;
        self.log
            .wait_durable(appended.next_offset)
            .await
            .map_err(storage)?;
        {
            let mut open = self
                .open
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            // Every transactional producer keeps its epoch here (for fencing); only an open
            // transaction has partitions.
            let partitions = if meta.state == TxnState::Ongoing {
                meta.partitions.clone()
            } else {
                BTreeSet::new()
            };
            open.insert(meta.producer_id, (meta.epoch, partitions));
        }
        self.txns.insert(transactional_id.to_string(), meta);
        Ok(())
    }

    async fn init(
        &mut self,
        request: InitProducerIdRequest,
    ) -> Result<(i64, i16), (ErrorCode, String)> {
        let Some(transactional_id) = request.transactional_id else {
            return Err((ErrorCode::InvalidRequest, "no transactional id".to_string()));
        };
        if transactional_id.is_empty() {
            return Err((
                ErrorCode::InvalidRequest,
                "transactional id is empty".to_string(),
            ));
        }
        let timeout_ms = match request.transaction_timeout_ms {
            0 => TXN_TIMEOUT_MS_DEFAULT,
            asked if asked > TXN_TIMEOUT_MS_MAX => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("transaction timeout {asked} ms exceeds max {TXN_TIMEOUT_MS_MAX}"),
                ))
            }
            asked => asked,
        };
        let broker = self.broker()?;
        let existing = self.txns.get(&transactional_id).cloned();
        let mut meta = match existing {
            None => TxnMeta {
                producer_id: allocate(&broker).await?,
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
                self.bumped(&broker, &transactional_id).await?
            }
            Some(meta) if meta.state == TxnState::Ongoing => {
                // The previous producer of this id is gone or a zombie: abort its transaction.
                self.abort_with_bump(&transactional_id, meta, "a new producer took over")
                    .await?;
                let mut aborted = self.txns.get(&transactional_id).cloned().ok_or((
                    ErrorCode::Unknown,
                    "transaction vanished during abort".to_string(),
                ))?;
                if aborted.epoch == i16::MAX {
                    aborted.producer_id = allocate(&broker).await?;
                    aborted.epoch = 0;
                }
                aborted
            }
            Some(_) => self.bumped(&broker, &transactional_id).await?,
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
    async fn bumped(
        &mut self,
        broker: &Arc<Broker>,
        transactional_id: &str,
    ) -> Result<TxnMeta, (ErrorCode, String)> {
        let mut meta = self
            .txns
            .get(transactional_id)
            .cloned()
            .ok_or((ErrorCode::Unknown, "transaction vanished".to_string()))?;
        if meta.epoch == i16::MAX {
            meta.producer_id = allocate(broker).await?;
            meta.epoch = 0;
        } else {
            meta.epoch += 1;
        }
        Ok(meta)
    }

    async fn add_partitions(&mut self, request: AddPartitionsToTxnRequest) -> Outcome {
        let broker = self.broker()?;
        let mut meta = self.current(
            &request.transactional_id,
            request.producer_id,
            request.producer_epoch,
        )?;
        for topic in &request.topics {
            if topic.topic.starts_with(crate::topic::INTERNAL_TOPIC_PREFIX) {
                return Err((
                    ErrorCode::InvalidTopicName,
                    format!(
                        "internal topic {:?} cannot be part of a transaction",
                        topic.topic
                    ),
                ));
            }
            for partition in &topic.partitions {
                if broker.topics.partition(&topic.topic, *partition).is_none() {
                    return Err((
                        ErrorCode::UnknownTopicOrPartition,
                        format!("unknown topic or partition {}-{partition}", topic.topic),
                    ));
                }
            }
        }
        let before = meta.partitions.len();
        self.open_if_needed(&mut meta, broker.clock.now_ms());
        let was_ongoing = self
            .txns
            .get(&request.transactional_id)
            .map(|meta| meta.state)
            == Some(TxnState::Ongoing);
        for topic in request.topics {
            for partition in topic.partitions {
                meta.partitions.insert((topic.topic.clone(), partition));
            }
        }
        if was_ongoing && meta.partitions.len() == before {
            return Ok(());
        }
        self.log_state(&request.transactional_id, meta).await
    }

    async fn add_offsets(&mut self, request: AddOffsetsToTxnRequest) -> Outcome {
        let broker = self.broker()?;
        if request.group_id.is_empty() {
            return Err((ErrorCode::InvalidGroupId, "group id is empty".to_string()));
        }
        let mut meta = self.current(
            &request.transactional_id,
            request.producer_id,
            request.producer_epoch,
        )?;
        self.open_if_needed(&mut meta, broker.clock.now_ms());
        meta.groups.insert(request.group_id);
        self.log_state(&request.transactional_id, meta).await
    }

    async fn offset_commit(&mut self, request: TxnOffsetCommitRequest) -> Outcome {
        let broker = self.broker()?;
        let mut meta = self.current(
            &request.transactional_id,
            request.producer_id,
            request.producer_epoch,
        )?;
        if meta.state != TxnState::Ongoing || !meta.groups.contains(&request.group_id) {
            return Err((
                ErrorCode::InvalidTxnState,
                format!(
                    "group {:?} was not added to the transaction (AddOffsetsToTxn)",
                    request.group_id
                ),
            ));
        }
        if let CommitCheck::Refused(code) =
            broker
                .groups
                .check_commit(&request.group_id, &request.member_id, request.generation)
        {
            return Err((
                code,
                format!("commit refused for group {:?}", request.group_id),
            ));
        }
        for topic in request.topics {
            let count = broker.partition_count(&topic.name);
            if topic.name.starts_with(crate::topic::INTERNAL_TOPIC_PREFIX) || count.is_none() {
                return Err((
                    ErrorCode::UnknownTopicOrPartition,
                    format!("cannot commit offsets for topic {:?}", topic.name),
                ));
            }
            for partition in topic.partitions {
                if partition.offset < 0 || count.is_some_and(|count| partition.partition >= count) {
                    return Err((
                        ErrorCode::InvalidRequest,
                        format!(
                            "bad offset {} for {}-{}",
                            partition.offset, topic.name, partition.partition
                        ),
                    ));
                }
                if partition.metadata.as_ref().is_some_and(|text| {
                    text.len() > crate::server::dispatch::OFFSET_METADATA_BYTES_MAX
                }) {
                    return Err((
                        ErrorCode::InvalidRequest,
                        "offset metadata too long".to_string(),
                    ));
                }
                meta.offsets.retain(|pending| {
                    !(pending.group == request.group_id
                        && pending.topic == topic.name
                        && pending.partition == partition.partition)
                });
                meta.offsets.push(PendingOffset {
                    group: request.group_id.clone(),
                    topic: topic.name.clone(),
                    partition: partition.partition,
                    offset: partition.offset,
                    metadata: partition.metadata,
                });
            }
        }
        self.log_state(&request.transactional_id, meta).await
    }

    async fn end(&mut self, request: EndTxnRequest) -> Outcome {
        let meta = self.txns.get(&request.transactional_id).cloned().ok_or((
            ErrorCode::InvalidProducerIdMapping,
            "unknown transactional id".to_string(),
        ))?;
        meta.check_producer(request.producer_id, request.producer_epoch)?;
        let commit = request.result == TxnResult::Commit;
        match (meta.state, commit) {
            (TxnState::Ongoing, _) => {}
            // A retried EndTxn whose first answer was lost.
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => return Ok(()),
            (TxnState::PrepareCommit | TxnState::PrepareAbort, _) => {
                return Err((
                    ErrorCode::ConcurrentTransactions,
                    "transaction is completing".to_string(),
                ))
            }
            (state, _) => {
                return Err((
                    ErrorCode::InvalidTxnState,
                    format!(
                        "cannot {} a transaction in state {state:?}",
                        if commit { "commit" } else { "abort" }
                    ),
                ))
            }
        }
        let mut prepared = meta;
        prepared.state = if commit {
            TxnState::PrepareCommit
        } else {
            TxnState::PrepareAbort
        };
        self.log_state(&request.transactional_id, prepared.clone())
            .await?;
        self.complete(&request.transactional_id, prepared).await
    }

    /// Writes the markers (and on commit the offsets) of a prepared transaction, then logs it
    /// complete.
    async fn complete(&mut self, transactional_id: &str, prepared: TxnMeta) -> Outcome {
        let broker = self.broker()?;
        let commit = prepared.state == TxnState::PrepareCommit;
        let kind = if commit {
            ControlKind::Commit
        } else {
            ControlKind::Abort
        };
        write_markers(&broker, &prepared, kind).await?;
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
                broker
                    .offsets
                    .commit(group, entries)
                    .await
                    .map_err(|error| (storage_error_code(&error), error.to_string()))?;
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
        let broker = self.broker()?;
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
        let _ = &broker;
        prepared.epoch = prepared.epoch.saturating_add(1);
        self.log_state(transactional_id, prepared.clone()).await?;
        self.complete(transactional_id, prepared).await
    }

    /// Recovery after a restart: finish prepared transactions, abort open ones.
    async fn recover(&mut self) {
        let pending: Vec<(String, TxnMeta)> = self
            .txns
            .iter()
            .filter(|(_, meta)| {
                matches!(
                    meta.state,
                    TxnState::Ongoing | TxnState::PrepareCommit | TxnState::PrepareAbort
                )
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
            if let Err((code, message)) = outcome {
                tracing::error!(transactional_id, %code, message, "cannot finish transaction at start");
            }
        }
    }

    async fn abort_timed_out(&mut self) {
        let Ok(broker) = self.broker() else {
            return;
        };
        let now = broker.clock.now_ms();
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
            if let Err((code, message)) = self
                .abort_with_bump(&transactional_id, meta, "timed out")
                .await
            {
                tracing::error!(transactional_id, %code, message, "cannot abort timed-out transaction");
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
            if let Err((code, message)) = self.complete(&transactional_id, meta).await {
                tracing::warn!(transactional_id, %code, message, "retrying transaction completion failed");
            }
        }
    }

    /// The id's metadata after checking the caller, ready to add to.
    fn current(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
    ) -> Result<TxnMeta, (ErrorCode, String)> {
        let meta = self.txns.get(transactional_id).cloned().ok_or((
            ErrorCode::InvalidProducerIdMapping,
            "unknown transactional id".to_string(),
        ))?;
        meta.check_producer(producer_id, epoch)?;
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Err((
                ErrorCode::ConcurrentTransactions,
                "transaction is completing".to_string(),
            ));
        }
        Ok(meta)
    }

    /// Starts a new transaction if none is open.
    fn open_if_needed(&self, meta: &mut TxnMeta, now_ms: i64) {
        if meta.state != TxnState::Ongoing {
            meta.state = TxnState::Ongoing;
            meta.started_ms = now_ms;
            meta.partitions.clear();
            meta.groups.clear();
            meta.offsets.clear();
        }
    }
}

async fn allocate(broker: &Arc<Broker>) -> Result<i64, (ErrorCode, String)> {
    let allocating = broker.clone();
    match tokio::task::spawn_blocking(move || allocating.producers.allocate_id()).await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(error)) => Err((storage_error_code(&error), error.to_string())),
        Err(error) => Err((ErrorCode::Unknown, error.to_string())),
    }
}

/// Appends a marker to every partition of the transaction and waits until all are durable.
async fn write_markers(broker: &Arc<Broker>, meta: &TxnMeta, kind: ControlKind) -> Outcome {
    let now = broker.clock.now_ms();
    let mut waits = Vec::new();
    for (topic, partition) in &meta.partitions {
        let Some(log) = broker.topics.partition(topic, *partition) else {
            // The topic was deleted since: nothing to mark.
            continue;
        };
        let marker = batch::control_batch(now, meta.producer_id, meta.epoch, kind, 0);
        let mut bytes = BytesMut::from(&marker[..]);
        let shared = broker.producers.partition(topic, *partition);
        let appended = {
            let mut state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
            let appended = log
                .append(&mut bytes)
                .map_err(|error| (storage_error_code(&error), error.to_string()))?;
            state.record_marker(
                meta.producer_id,
                meta.epoch,
                kind,
                appended.base_offset,
                now,
            );
            appended
        };
        waits.push((log, appended.next_offset));
    }
    for (log, next_offset) in waits {
        if log.config().flush == crate::storage::FlushPolicy::Always {
            log.wait_durable(next_offset)
                .await
                .map_err(|error| (storage_error_code(&error), error.to_string()))?;
        } else {
            // A marker must be durable before the transaction is logged complete, whatever
            // the partition's flush policy: otherwise a power loss could leave the last
            // stable offset stuck behind a transaction no one will finish.
            let flushing = log.clone();
            tokio::task::spawn_blocking(move || flushing.flush())
                .await
                .map_err(|error| (ErrorCode::Unknown, error.to_string()))?
                .map_err(|error| (storage_error_code(&error), error.to_string()))?;
        }
    }
    Ok(())
}

/// Config overrides of internal topics: kept forever (no time or size retention) and
/// fsynced before anything they record is answered.
pub fn internal_overrides() -> Vec<(String, String)> {
    vec![
        ("retention.ms".to_string(), "0".to_string()),
        ("retention.bytes".to_string(), "0".to_string()),
        ("flush".to_string(), "always".to_string()),
    ]
}
