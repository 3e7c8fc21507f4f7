//! The producer's background task: owns every batch and all partition state (no locks).
//!
//! One loop takes commands (records, flushes), answers of produce requests and timer
//! wake-ups, and after each one refreshes stale metadata, restarts broken sequences, sends
//! what may be sent and completes finished flushes. What may be sent per partition is the
//! business of [`super::queue`]; putting requests on the wire in order is the business of
//! [`super::sender`]; the rules for a failed attempt are in [`super::sequence::judge`].
//!
//! Must never: let a batch of a partition overtake an older one, resend a batch with other
//! bytes than before (except restamped under a new producer id after a sequence restart), or
//! complete a record's future twice.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wharf_protocol::messages::{
    Acks, InitProducerIdRequest, InitProducerIdResponse, ProducePartition, ProduceRequest,
    ProduceTopic, TxnResult,
};
use wharf_protocol::{
    Attributes, BatchBuilder, BatchError, ErrorCode, NewRecord, Request, Response,
};

use super::fast_hash::FastMap;
use super::queue::{complete_batch, Delivery, OpenBatch, PartitionQueue, SealedBatch};
use super::sender::{send_in_order, Completion, Outgoing, PartitionKey};
use super::sequence::{judge, may_have_appended, ProducerIdentity, Sequencer, Standing, Verdict};
use super::transaction::{self, Phase, Transaction, TxnCommand};
use super::{Command, Enqueued, Idempotence, ProducerConfig, ProducerRecord};
use crate::backoff::{Backoff, Jitter};
use crate::cluster::{Client, Target};
use crate::error::{Error, Result};
use crate::metadata::TopicDescription;

/// Commands the background task handles in one round before it dispatches and checks
/// completions again: large enough to amortise the round, small enough to keep acks flowing.
const COMMANDS_PER_ROUND_MAX: usize = 1024;
/// Produce outcomes the background task may have unread; answer tasks wait beyond it.
const COMPLETION_QUEUE_MAX: usize = 256;
/// Produce requests waiting for the sender task; dispatching waits beyond it. The sender only
/// queues them on connections, so this stays short unless a connection is being opened.
const REQUEST_QUEUE_MAX: usize = 64;
/// Batches in flight per partition with idempotence (Kafka's
/// `max.in.flight.requests.per.connection` = 5): the broker remembers the last five batches
/// of each producer and partition, so any batch the producer may resend is among them.
pub(super) const IDEMPOTENT_IN_FLIGHT_BATCHES_MAX: usize = 5;
/// Batches in flight per partition without idempotence: with no sequence numbers the broker
/// cannot refuse a batch that overtook a failed one, so only one at a time keeps order.
pub(super) const PLAIN_IN_FLIGHT_BATCHES_MAX: usize = 1;

/// A batch on its way into a request: its partition, id and bytes.
type OutgoingBatch = (PartitionKey, u64, Bytes);

/// Starts the background task and its sender task; returns the background task's handle.
pub(super) fn spawn(
    client: Client,
    config: ProducerConfig,
    commands: mpsc::Receiver<Command>,
) -> JoinHandle<()> {
    let (requests, requests_receiver) = mpsc::channel(REQUEST_QUEUE_MAX);
    let (completions, completions_receiver) = mpsc::channel(COMPLETION_QUEUE_MAX);
    tokio::spawn(send_in_order(
        client.clone(),
        requests_receiver,
        completions,
    ));
    let task = ProducerTask::new(client, config, requests);
    tokio::spawn(task.run(commands, completions_receiver))
}

#[derive(Debug)]
struct TopicState {
    description: TopicDescription,
    sticky: Option<u32>,
    stale: bool,
}

/// The background task: owns every batch and all partition state.
#[derive(Debug)]
struct ProducerTask {
    client: Client,
    config: ProducerConfig,
    backoff: Backoff,
    jitter: Jitter,
    topics: FastMap<String, TopicState>,
    queues: FastMap<PartitionKey, PartitionQueue>,
    /// First record id of every live batch (open, sealed or in flight).
    outstanding: BTreeSet<u64>,
    next_record_id: u64,
    /// Flushes waiting until every record id below theirs is done.
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    buffered_bytes: usize,
    /// Produce requests, in order, to the sender task.
    requests: mpsc::Sender<Outgoing>,
    /// With idempotence: the producer id and epoch new partitions start with, fetched before
    /// the first record (and replaced when a partition restarts its sequence).
    identity: Option<ProducerIdentity>,
    /// Once fenced, the error every record fails with; nothing is sent any more.
    fatal: Option<Error>,
    /// With a transactional id: the transaction state.
    transaction: Option<Transaction>,
    /// A commit or abort waiting for the transaction's batches to finish; no command is
    /// taken meanwhile.
    pending_end: Option<(TxnResult, oneshot::Sender<Result<()>>)>,
}

impl ProducerTask {
    fn new(client: Client, config: ProducerConfig, requests: mpsc::Sender<Outgoing>) -> Self {
        let backoff = Backoff::new(
            client.config().retry_backoff_base,
            client.config().retry_backoff_max,
        );
        ProducerTask {
            client,
            backoff,
            jitter: Jitter::from_entropy(),
            topics: FastMap::default(),
            queues: FastMap::default(),
            outstanding: BTreeSet::new(),
            next_record_id: 0,
            flush_waiters: Vec::new(),
            buffered_bytes: 0,
            requests,
            identity: None,
            fatal: None,
            transaction: config.transactional_id.clone().map(|transactional_id| {
                let timeout_ms =
                    u32::try_from(config.transaction_timeout.as_millis()).unwrap_or(u32::MAX);
                Transaction::new(transactional_id, timeout_ms)
            }),
            pending_end: None,
            config,
        }
    }

    fn idempotent(&self) -> bool {
        self.config.idempotence == Idempotence::Enabled
    }

    fn in_flight_max(&self) -> usize {
        if self.idempotent() {
            IDEMPOTENT_IN_FLIGHT_BATCHES_MAX
        } else {
            PLAIN_IN_FLIGHT_BATCHES_MAX
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut completions: mpsc::Receiver<Completion>,
    ) {
        let mut closing = false;
        loop {
            self.refresh_stale_topics().await;
            self.restart_broken_sequences().await;
            self.dispatch(Instant::now()).await;
            self.complete_flushes();
            self.end_transaction_if_ready().await;
            if closing && self.outstanding.is_empty() {
                return;
            }
            let wake = self.next_wake();
            let accepting = !closing
                && self.pending_end.is_none()
                && self.buffered_bytes < self.config.buffer_bytes_max;
            tokio::select! {
                command = commands.recv(), if accepting => match command {
                    Some(command) => {
                        self.on_command(command).await;
                        closing = self.drain_commands(&mut commands).await;
                    }
                    None => {
                        closing = true;
                        self.seal_all();
                    }
                },
                Some(completion) = completions.recv() => self.on_completion(completion),
                () = sleep_until_or_forever(wake) => {}
            }
        }
    }

    /// Takes the commands already queued (up to [`COMMANDS_PER_ROUND_MAX`]) without going
    /// round the loop for each: dispatching and timer bookkeeping then run once per burst
    /// instead of once per record. Returns true if the channel closed.
    async fn drain_commands(&mut self, commands: &mut mpsc::Receiver<Command>) -> bool {
        for _ in 0..COMMANDS_PER_ROUND_MAX {
            if self.buffered_bytes >= self.config.buffer_bytes_max || self.pending_end.is_some() {
                return false;
            }
            match commands.try_recv() {
                Ok(command) => self.on_command(command).await,
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.seal_all();
                    return true;
                }
            }
        }
        false
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Record(enqueued) => self.on_record(enqueued).await,
            Command::Flush(done) => {
                self.seal_all();
                self.flush_waiters.push((self.next_record_id, done));
            }
            Command::Txn(command, reply) => self.on_transaction(command, reply).await,
        }
    }

    async fn on_record(&mut self, enqueued: Enqueued) {
        let Enqueued {
            record,
            timestamp_ms,
            enqueued_at,
            reply,
        } = enqueued;
        if let Some(error) = &self.fatal {
            let _ = reply.send(Err(error.clone()));
            return;
        }
        if self
            .transaction
            .as_ref()
            .is_some_and(|txn| txn.phase != Phase::Open)
        {
            let _ = reply.send(Err(Error::InvalidState {
                reason: "a transactional producer sends only inside a transaction: call begin_transaction first",
            }));
            return;
        }
        let partition = match self.choose_partition(&record).await {
            Ok(partition) => partition,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        let payload_bytes = record.payload_bytes();
        let ProducerRecord {
            topic,
            key: record_key,
            value,
            headers,
            ..
        } = record;
        let key = (topic, partition);
        if let Err(error) = self.add_partition_to_transaction(&key, enqueued_at).await {
            let _ = reply.send(Err(error));
            return;
        }
        if let Err(error) = self.ensure_identity().await {
            let _ = reply.send(Err(error));
            return;
        }
        let new_record = NewRecord {
            timestamp_ms,
            key: record_key,
            value,
            headers,
        };
        let delivery = Delivery {
            reply,
            timestamp_ms,
        };
        let deadline = enqueued_at + self.config.delivery_timeout;
        self.append(key, new_record, delivery, payload_bytes, deadline);
    }

    /// Handles a transaction command (see [`super::Producer::init_transactions`] and the
    /// methods after it). A commit or abort is answered later, by
    /// [`ProducerTask::end_transaction_if_ready`].
    async fn on_transaction(&mut self, command: TxnCommand, reply: oneshot::Sender<Result<()>>) {
        if let Some(error) = &self.fatal {
            let _ = reply.send(Err(error.clone()));
            return;
        }
        let deadline = Instant::now() + self.config.delivery_timeout;
        let Some(txn) = &mut self.transaction else {
            let _ = reply.send(Err(Error::InvalidState {
                reason: "transactions need a transactional id in the producer config",
            }));
            return;
        };
        let answer = match (command, txn.phase) {
            (TxnCommand::Init, Phase::Uninitialized) => {
                match transaction::init(&self.client, txn, deadline).await {
                    Ok(identity) => {
                        txn.phase = Phase::Ready;
                        self.identity = Some(identity);
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            }
            (TxnCommand::Begin, Phase::Ready) => {
                txn.open();
                Ok(())
            }
            (TxnCommand::SendOffsets { offsets, group }, Phase::Open) => {
                let identity = self
                    .identity
                    .expect("an initialized producer has an identity");
                let sent = transaction::send_offsets(
                    &self.client,
                    txn,
                    identity,
                    &offsets,
                    &group,
                    deadline,
                )
                .await;
                match sent {
                    Ok(()) => {
                        txn.groups.insert(group.group_id);
                        Ok(())
                    }
                    Err(error) => {
                        let error = transaction::typed(error, identity);
                        txn.note_failure(&error);
                        Err(error)
                    }
                }
            }
            (TxnCommand::End(result), Phase::Open) => {
                self.start_end(result, reply);
                return;
            }
            (TxnCommand::Init, _) => Err(Error::InvalidState {
                reason: "init_transactions was already called",
            }),
            (_, Phase::Uninitialized) => Err(Error::InvalidState {
                reason: "call init_transactions first",
            }),
            (TxnCommand::Begin, _) => Err(Error::InvalidState {
                reason: "a transaction is already open",
            }),
            (_, _) => Err(Error::InvalidState {
                reason: "no transaction is open: call begin_transaction first",
            }),
        };
        if let Err(error @ Error::ProducerFenced { .. }) = &answer {
            self.fence(error.clone());
        }
        let _ = reply.send(answer);
    }

    /// Starts ending the open transaction: a commit seals every batch and waits for them; an
    /// abort fails every batch not yet sent and waits only for those in flight.
    fn start_end(&mut self, result: TxnResult, reply: oneshot::Sender<Result<()>>) {
        match result {
            TxnResult::Commit => self.seal_all(),
            TxnResult::Abort => {
                let mut idle = Vec::new();
                for (key, queue) in &mut self.queues {
                    for batch in queue.drain_idle() {
                        idle.push((key.clone(), batch));
                    }
                }
                for (key, batch) in idle {
                    self.finish(&key, batch, Err(Error::TransactionAborted));
                }
            }
        }
        self.pending_end = Some((result, reply));
    }

    /// Ends the transaction once its batches are settled: EndTxn, and after an abort a new
    /// epoch (InitProducerId again), so that the partitions restart at sequence 0 whatever
    /// the aborted batches did to their sequences.
    async fn end_transaction_if_ready(&mut self) {
        let Some((result, _)) = &self.pending_end else {
            return;
        };
        let result = *result;
        let Some(txn) = &mut self.transaction else {
            return;
        };
        if result == TxnResult::Commit {
            if let Some(failure) = &txn.failure {
                let error = Error::TransactionFailed {
                    source: Box::new(failure.clone()),
                };
                if let Some((_, reply)) = self.pending_end.take() {
                    let _ = reply.send(Err(error));
                }
                return;
            }
        }
        if !self.outstanding.is_empty() {
            return;
        }
        let Some((_, reply)) = self.pending_end.take() else {
            return;
        };
        let identity = self
            .identity
            .expect("an initialized producer has an identity");
        let deadline = Instant::now() + self.config.delivery_timeout;
        let registered = txn.is_registered();
        let mut answer = if registered {
            transaction::end(&self.client, txn, identity, result, deadline).await
        } else {
            Ok(())
        };
        if answer.is_ok() {
            txn.phase = Phase::Ready;
            // Batches were only ever stamped if something was added to the transaction.
            if result == TxnResult::Abort && registered {
                answer = match transaction::init(&self.client, txn, deadline).await {
                    Ok(identity) => {
                        self.identity = Some(identity);
                        // Every queue is empty (nothing outstanding): new ones start at 0.
                        self.queues.clear();
                        Ok(())
                    }
                    Err(error) => Err(error),
                };
            }
        }
        let answer = answer.map_err(|error| transaction::typed(error, identity));
        if let Err(error @ Error::ProducerFenced { .. }) = &answer {
            self.fence(error.clone());
        }
        let _ = reply.send(answer);
    }

    /// Adds `key` to the open transaction before its first batch (AddPartitionsToTxn).
    async fn add_partition_to_transaction(
        &mut self,
        key: &PartitionKey,
        enqueued_at: Instant,
    ) -> Result<()> {
        let Some(txn) = &mut self.transaction else {
            return Ok(());
        };
        if txn.partitions.contains(key) {
            return Ok(());
        }
        let identity = self
            .identity
            .expect("an initialized producer has an identity");
        let deadline = enqueued_at + self.config.delivery_timeout;
        match transaction::add_partition(&self.client, txn, identity, key, deadline).await {
            Ok(()) => {
                txn.partitions.insert(key.clone());
                Ok(())
            }
            Err(error) => {
                let error = transaction::typed(error, identity);
                txn.note_failure(&error);
                if matches!(error, Error::ProducerFenced { .. }) {
                    self.fence(error.clone());
                }
                Err(error)
            }
        }
    }

    /// With idempotence, gets the producer id and epoch before the first batch.
    async fn ensure_identity(&mut self) -> Result<()> {
        if self.idempotent() && self.identity.is_none() {
            self.identity = Some(self.init_producer_id().await?);
        }
        Ok(())
    }

    /// Asks the broker for a new producer id and epoch.
    async fn init_producer_id(&self) -> Result<ProducerIdentity> {
        let request = Request::InitProducerId(InitProducerIdRequest {
            transactional_id: None,
            transaction_timeout_ms: 0,
        });
        let response: InitProducerIdResponse = self.client.call(Target::Any, request).await?;
        if response.producer_id < 0 || response.producer_epoch < 0 {
            return Err(Error::server(
                ErrorCode::Unknown,
                Some(format!(
                    "broker handed out producer id {} epoch {}",
                    response.producer_id, response.producer_epoch
                )),
            ));
        }
        Ok(ProducerIdentity {
            producer_id: response.producer_id,
            epoch: response.producer_epoch,
        })
    }

    async fn choose_partition(&mut self, record: &ProducerRecord) -> Result<u32> {
        let topic = self.topic_state(&record.topic).await?;
        let partition_count = topic.description.partition_count();
        if partition_count == 0 {
            return Err(Error::UnknownTopic {
                topic: record.topic.clone(),
            });
        }
        match (&record.partition, &record.key) {
            (Some(partition), _) if *partition < partition_count => Ok(*partition),
            (Some(partition), _) => Err(Error::UnknownPartition {
                topic: record.topic.clone(),
                partition: *partition,
                partition_count,
            }),
            (None, Some(key)) => Ok(self.config.partitioner.partition(key, partition_count)),
            (None, None) => {
                let sticky = match topic.sticky {
                    Some(partition) if partition < partition_count => partition,
                    _ => self.jitter.below(partition_count),
                };
                if let Some(state) = self.topics.get_mut(&record.topic) {
                    state.sticky = Some(sticky);
                }
                Ok(sticky)
            }
        }
    }

    /// The topic's state, asking the broker (and triggering auto-creation) if unknown.
    async fn topic_state(&mut self, topic: &str) -> Result<&TopicState> {
        if !self.topics.contains_key(topic) {
            let description = match self.client.topic(topic).await {
                Err(Error::UnknownTopic { .. }) => self.auto_create(topic).await?,
                other => other?,
            };
            let state = TopicState {
                description,
                sticky: None,
                stale: false,
            };
            self.topics.insert(topic.to_string(), state);
        }
        self.topics.get(topic).ok_or(Error::UnknownTopic {
            topic: topic.to_string(),
        })
    }

    /// The broker creates unknown topics on produce (when configured to): an empty produce
    /// to partition 0 makes it create the topic with its default partition count without
    /// writing a record, and metadata then says how many partitions there are, so keyed
    /// records are spread over the real count from the first one on.
    async fn auto_create(&self, topic: &str) -> Result<TopicDescription> {
        let probe = Request::Produce(ProduceRequest {
            acks: Acks::Leader,
            timeout_ms: request_timeout_ms(&self.client),
            topics: vec![ProduceTopic {
                name: topic.to_string(),
                partitions: vec![ProducePartition {
                    partition: 0,
                    records: Bytes::new(),
                }],
            }],
        });
        let answer = self.client.send(Target::Any, &probe).await?;
        if let Some(Response::Produce(response)) = answer {
            let refused = response
                .topics
                .iter()
                .flat_map(|entry| &entry.partitions)
                .find(|partition| partition.error == ErrorCode::TopicAutoCreateDisabled);
            if let Some(refused) = refused {
                return Err(Error::server(refused.error, refused.error_message.clone()));
            }
        }
        self.client.refresh_topic(topic).await
    }

    fn append(
        &mut self,
        key: PartitionKey,
        record: NewRecord,
        delivery: Delivery,
        payload_bytes: usize,
        deadline: Instant,
    ) {
        let batch_bytes = self.config.batch_bytes;
        let sequencer = self.identity.map(Sequencer::new);
        // Looked up before inserting, so the key is cloned once per partition, not per record.
        if !self.queues.contains_key(&key) {
            self.queues
                .insert(key.clone(), PartitionQueue::new(sequencer));
        }
        let Some(queue) = self.queues.get_mut(&key) else {
            unreachable!("inserted above")
        };
        let full = queue.open.as_ref().is_some_and(|open| {
            open.builder.record_count() > 0
                && open.builder.encoded_bytes() + payload_bytes > batch_bytes
        });
        if full {
            seal(queue, &key, &mut self.topics);
        }
        let record_id = self.next_record_id;
        let attributes = if self.transaction.is_some() {
            Attributes::NONE.transactional()
        } else {
            Attributes::NONE
        };
        let open = queue.open.get_or_insert_with(|| OpenBatch {
            builder: BatchBuilder::new(record.timestamp_ms).attributes(attributes),
            deliveries: Vec::new(),
            first_record_id: record_id,
            created_at: Instant::now(),
            deadline,
            payload_bytes: 0,
        });
        if let Err(error) = open.builder.push(&record) {
            let error = match error {
                BatchError::LengthOutOfRange {
                    batch_length,
                    bytes_max,
                } => Error::RecordTooLarge {
                    record_bytes: usize::try_from(batch_length).unwrap_or(usize::MAX),
                    bytes_max,
                },
                other => Error::Batch {
                    topic: key.0.clone(),
                    partition: key.1,
                    source: other,
                },
            };
            if open.builder.record_count() == 0 {
                queue.open = None;
            }
            let _ = delivery.reply.send(Err(error));
            return;
        }
        if open.first_record_id == record_id {
            self.outstanding.insert(record_id);
        }
        self.next_record_id += 1;
        open.deliveries.push(delivery);
        open.payload_bytes += payload_bytes;
        self.buffered_bytes += payload_bytes;
        if open.builder.encoded_bytes() >= batch_bytes {
            seal(queue, &key, &mut self.topics);
        }
    }

    fn seal_all(&mut self) {
        for (key, queue) in &mut self.queues {
            seal(queue, key, &mut self.topics);
        }
    }

    /// Seals lingered batches and sends every batch the partitions' limits allow. A request
    /// carries at most one batch per partition, so the n-th batch a partition sends now goes
    /// into the n-th request to its leader; the requests leave in that order.
    async fn dispatch(&mut self, now: Instant) {
        if self.fatal.is_some() {
            return;
        }
        let in_flight_max = self.in_flight_max();
        let linger = self.config.linger;
        let mut by_leader: BTreeMap<i32, Vec<Vec<OutgoingBatch>>> = BTreeMap::new();
        for (key, queue) in &mut self.queues {
            if queue.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            queue.retry_at = None;
            if queue.lingered(now, linger, in_flight_max) {
                seal(queue, key, &mut self.topics);
            }
            let leader = self
                .topics
                .get(&key.0)
                .and_then(|topic| topic.description.partitions.get(key.1 as usize))
                .map_or(-1, |partition| partition.leader);
            let rounds = by_leader.entry(leader).or_default();
            let mut round = 0;
            while let Some(batch) = queue.start_next(in_flight_max) {
                if rounds.len() == round {
                    rounds.push(Vec::new());
                }
                rounds[round].push((key.clone(), batch.first_record_id, batch.bytes.clone()));
                round += 1;
            }
        }
        for (leader, rounds) in by_leader {
            for batches in rounds {
                self.send_request(leader, batches).await;
            }
        }
    }

    async fn send_request(&mut self, leader: i32, batches: Vec<OutgoingBatch>) {
        let mut topics: Vec<ProduceTopic> = Vec::new();
        let mut ids = Vec::with_capacity(batches.len());
        for ((topic, partition), batch_id, records) in batches {
            let partition_entry = ProducePartition { partition, records };
            match topics.iter_mut().find(|entry| entry.name == topic) {
                Some(entry) => entry.partitions.push(partition_entry),
                None => topics.push(ProduceTopic {
                    name: topic.clone(),
                    partitions: vec![partition_entry],
                }),
            }
            ids.push(((topic, partition), batch_id));
        }
        let request = Request::Produce(ProduceRequest {
            acks: self.config.acks,
            timeout_ms: request_timeout_ms(&self.client),
            topics,
        });
        let target = if leader >= 0 {
            Target::Node(leader)
        } else {
            Target::Any
        };
        let outgoing = Outgoing {
            target,
            request,
            batches: ids,
        };
        if let Err(refused) = self.requests.send(outgoing).await {
            // The sender task is gone (it only stops when this task drops its channel).
            let results = refused
                .0
                .batches
                .into_iter()
                .map(|(key, batch_id)| (key, batch_id, Err(Error::Closed)))
                .collect();
            self.on_completion(Completion { results });
        }
    }

    fn on_completion(&mut self, completion: Completion) {
        let now = Instant::now();
        for (key, batch_id, result) in completion.results {
            self.on_result(key, batch_id, result, now);
        }
    }

    /// Handles the answer for one batch: success completes it; a failure is judged
    /// ([`judge`]) and acted on ([`ProducerTask::on_failure`]).
    fn on_result(&mut self, key: PartitionKey, batch_id: u64, result: Result<i64>, now: Instant) {
        let idempotent = self.idempotent();
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        let Some(index) = queue.landed(batch_id) else {
            return;
        };
        let error = match (result, &self.fatal) {
            (Ok(base_offset), _) => {
                let batch = queue.remove(index);
                self.finish(&key, batch, Ok(base_offset));
                return;
            }
            (Err(_), Some(fatal)) => {
                let (batch, fatal) = (queue.remove(index), fatal.clone());
                self.finish(&key, batch, Err(fatal));
                return;
            }
            (Err(error), None) => error,
        };
        let held = queue.is_held(batch_id);
        let batch = &mut queue.sealed[index];
        let delay = self
            .backoff
            .delay(batch.attempts.saturating_sub(1), self.jitter.fraction());
        if batch.maybe_appended.is_none() && may_have_appended(&error) {
            batch.maybe_appended = Some(error.clone());
        }
        let standing = Standing {
            idempotent,
            oldest: index == 0,
            held,
            time_left: now + delay < batch.deadline,
        };
        let retry_at = now + delay;
        self.on_failure(key, index, error, standing, retry_at);
    }

    /// Acts on the verdict for the failed batch at `index` of `key`'s queue: retry it at
    /// `retry_at`, hold it, restart the sequence, fail it, or stop the producer.
    fn on_failure(
        &mut self,
        key: PartitionKey,
        index: usize,
        error: Error,
        standing: Standing,
        retry_at: Instant,
    ) {
        let Some(queue) = self.queues.get_mut(&key) else {
            return;
        };
        let batch_id = queue.sealed[index].first_record_id;
        match judge(&error, standing) {
            Verdict::Retry => {
                queue.mark_retried(index);
                queue.retry_at = Some(retry_at);
                // A refused sequence says nothing about metadata; anything else may mean
                // the leader moved or the topic changed.
                if error.code() != Some(ErrorCode::OutOfOrderSequence) {
                    if let Some(topic) = self.topics.get_mut(&key.0) {
                        topic.stale = true;
                    }
                }
            }
            Verdict::Hold => {}
            Verdict::Restart => {
                queue.break_sequence(batch_id, false);
                // A transactional producer cannot switch to a new producer id in the middle
                // of a transaction: the transaction can only abort (which starts a new epoch).
                if let Some(txn) = &mut self.transaction {
                    txn.note_failure(&error);
                }
            }
            Verdict::Fail => {
                let batch = queue.remove(index);
                if standing.idempotent {
                    queue.break_sequence(batch_id, batch.maybe_appended.is_some());
                }
                let error = failure(&key, &batch, error, standing);
                self.finish(&key, batch, Err(error));
            }
            Verdict::Fenced => {
                let batch = queue.remove(index);
                let error = match batch.stamp {
                    Some(stamp) => Error::ProducerFenced {
                        producer_id: stamp.identity.producer_id,
                        producer_epoch: stamp.identity.epoch,
                    },
                    None => error,
                };
                self.finish(&key, batch, Err(error.clone()));
                self.fence(error);
            }
        }
    }

    /// Stops the producer: every record not in flight fails with `error` now, those in
    /// flight when their answers arrive (unless they were written), and every later record
    /// at once.
    fn fence(&mut self, error: Error) {
        self.fatal = Some(error.clone());
        if let Some((_, reply)) = self.pending_end.take() {
            let _ = reply.send(Err(error.clone()));
        }
        let mut idle = Vec::new();
        for (key, queue) in &mut self.queues {
            for batch in queue.drain_idle() {
                idle.push((key.clone(), batch));
            }
        }
        for (key, batch) in idle {
            self.finish(&key, batch, Err(error.clone()));
        }
    }

    /// Gives every partition whose sequence broke, once everything before the break is
    /// settled, a new producer id and restarts its sequence at 0 (see
    /// [`PartitionQueue::restart_sequence`]).
    async fn restart_broken_sequences(&mut self) {
        // A transactional producer restarts its sequences only by aborting (a new epoch).
        if self.fatal.is_some() || self.transaction.is_some() {
            return;
        }
        let now = Instant::now();
        let ready: Vec<PartitionKey> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.ready_to_restart(now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in ready {
            // Like the first InitProducerId, this rides out a restarting broker within the
            // client's reconnect timeout; the partition sends nothing meanwhile anyway.
            let identity = self.init_producer_id().await;
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            let failed: Vec<(SealedBatch, Error)> = match identity {
                Ok(identity) => {
                    self.identity = Some(identity);
                    queue.restart_sequence(identity)
                }
                Err(error) => {
                    // Try again after a backoff; held batches out of time fail with the error.
                    let retry_at = Instant::now() + self.backoff.delay(1, self.jitter.fraction());
                    queue.retry_at = Some(retry_at);
                    queue
                        .take_expired(retry_at)
                        .into_iter()
                        .map(|batch| (batch, error.clone()))
                        .collect()
                }
            };
            for (batch, error) in failed {
                self.finish(&key, batch, Err(error));
            }
        }
    }

    /// Completes `batch` and forgets it.
    fn finish(&mut self, key: &PartitionKey, batch: SealedBatch, result: Result<i64>) {
        if let (Some(txn), Err(error)) = (&mut self.transaction, &result) {
            if !matches!(error, Error::TransactionAborted) {
                txn.note_failure(error);
            }
        }
        self.outstanding.remove(&batch.first_record_id);
        self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.payload_bytes);
        complete_batch(key, batch, result);
    }

    /// Re-reads metadata of topics whose produce failed; fails queued batches of topics
    /// that no longer exist.
    async fn refresh_stale_topics(&mut self) {
        let stale: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, state)| state.stale)
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.client.invalidate_topic(&name);
            match self.client.refresh_topic(&name).await {
                Ok(description) => {
                    if let Some(state) = self.topics.get_mut(&name) {
                        state.description = description;
                        state.stale = false;
                    }
                }
                Err(Error::UnknownTopic { topic }) => self.fail_topic(&topic),
                // Keep it stale; the next round tries again.
                Err(_) => {}
            }
        }
    }

    fn fail_topic(&mut self, topic: &str) {
        self.topics.remove(topic);
        let keys: Vec<PartitionKey> = self
            .queues
            .keys()
            .filter(|(name, _)| name == topic)
            .cloned()
            .collect();
        for key in keys {
            let Some(mut queue) = self.queues.remove(&key) else {
                continue;
            };
            if let Some(open) = queue.open.take() {
                queue.sealed.push_back(open.seal(None));
            }
            for batch in queue.sealed {
                let error = Error::UnknownTopic {
                    topic: topic.to_string(),
                };
                self.finish(&key, batch, Err(error));
            }
        }
    }

    /// Completes the flushes whose records are all done: no live batch starts below them.
    fn complete_flushes(&mut self) {
        let oldest = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flush_waiters)
            .into_iter()
            .partition(|(below, _)| *below <= oldest);
        self.flush_waiters = waiting;
        for (_, waiter) in done {
            let _ = waiter.send(());
        }
    }

    /// The next moment a timer must wake the task: a linger or a backoff ending. Partitions
    /// waiting for answers need no timer: the answers wake the task.
    fn next_wake(&self) -> Option<Instant> {
        let in_flight_max = self.in_flight_max();
        self.queues
            .values()
            .filter_map(|queue| queue.wake_at(in_flight_max, self.config.linger))
            .min()
    }
}

/// The error a batch's records fail with: an out-of-order refusal of the oldest batch gets
/// its own type (it is not explained by anything in flight), the rest are passed on.
fn failure(key: &PartitionKey, batch: &SealedBatch, error: Error, standing: Standing) -> Error {
    match batch.stamp {
        Some(stamp) if standing.oldest && error.code() == Some(ErrorCode::OutOfOrderSequence) => {
            Error::OutOfOrderSequence {
                topic: key.0.clone(),
                partition: key.1,
                producer_id: stamp.identity.producer_id,
                base_sequence: stamp.base_sequence,
            }
        }
        _ => error,
    }
}

/// Seals the open batch of `queue`; a sealed batch ends the topic's sticky partition.
fn seal(queue: &mut PartitionQueue, key: &PartitionKey, topics: &mut FastMap<String, TopicState>) {
    if !queue.seal() {
        return;
    }
    if let Some(topic) = topics.get_mut(&key.0) {
        if topic.sticky == Some(key.1) {
            topic.sticky = None;
        }
    }
}

fn request_timeout_ms(client: &Client) -> u32 {
    u32::try_from(client.config().request_timeout.as_millis()).unwrap_or(u32::MAX)
}

async fn sleep_until_or_forever(wake: Option<Instant>) {
    match wake {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
