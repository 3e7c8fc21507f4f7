//! [`Producer`]: batches records per partition and sends them in the background.
//!
//! Callers hand records to a background task over a bounded channel
//! ([`Producer::enqueue`] waits for room; [`Producer::send`] also waits for the
//! acknowledgement). The task owns all producer state (no locks): it picks each record's
//! partition ([`crate::Partitioner`], sticky for records without a key), appends it to the
//! partition's open batch, seals a batch when it reaches `batch_bytes`, when `linger` has
//! passed or on [`Producer::flush`], and sends sealed batches, one produce request per leader
//! carrying one batch for each ready partition.
//!
//! Invariants:
//! - At most one produce request per partition is in flight, and a failed batch is retried
//!   before anything behind it, so records of one partition are appended in send order even
//!   across retries. Different partitions proceed in parallel.
//! - Retriable failures are retried with exponential backoff and jitter until the batch's
//!   delivery deadline (first record's enqueue time + `delivery_timeout`); then every record
//!   of the batch fails with the last error. Every record's future completes exactly once.
//! - Buffered bytes are bounded by `buffer_bytes_max`: past it the task stops taking records
//!   and `enqueue` waits.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wharf_protocol::messages::{
    Acks, ProducePartition, ProduceRequest, ProduceResponse, ProduceTopic,
};
use wharf_protocol::{BatchBuilder, BatchError, ErrorCode, Header, NewRecord, Request, Response};

use crate::backoff::{Backoff, Jitter};
use crate::cluster::{Client, Retry, Target};
use crate::error::{Error, Result};
use crate::metadata::TopicDescription;
use crate::partitioner::Partitioner;

/// Records the channel to the background task holds before `enqueue` waits.
const COMMAND_QUEUE_RECORDS_MAX: usize = 1024;
/// Commands the background task handles in one round before it dispatches and checks
/// completions again: large enough to amortise the round, small enough to keep acks flowing.
const COMMANDS_PER_ROUND_MAX: usize = 1024;
/// Produce outcomes the background task may have unread; request tasks wait beyond it.
const COMPLETION_QUEUE_MAX: usize = 256;
/// Per-record bytes a batch spends besides key, value and headers (length, attributes and
/// delta varints), used to seal a batch before a record would overflow `batch_bytes`.
const RECORD_OVERHEAD_BYTES: usize = 24;

/// Producer settings.
///
/// ```
/// use std::time::Duration;
/// use wharf_client::{Acks, Partitioner, ProducerConfig};
///
/// let config = ProducerConfig::default()
///     .acks(Acks::Leader)
///     .linger(Duration::from_millis(20))
///     .partitioner(Partitioner::Consistent);
/// assert_eq!(config.batch_bytes, 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level (default [`Acks::All`]: acked once durable). With
    /// [`Acks::None`] the broker never answers and offsets are reported as -1.
    pub acks: Acks,
    /// How long a batch waits for more records before it is sent (default 5 ms, Kafka's
    /// `linger.ms`): trades a little latency for far fewer requests.
    pub linger: Duration,
    /// A batch is sealed when it reaches this many bytes (default 1 MiB, Kafka's
    /// `batch.size`). A single larger record gets a batch of its own.
    pub batch_bytes: usize,
    /// How long a record may take from `enqueue` to acknowledgement, retries included
    /// (default 30 s, Kafka's `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How keyed records are spread (default [`Partitioner::Murmur2`]).
    pub partitioner: Partitioner,
    /// Bytes of records buffered before `enqueue` waits (default 32 MiB, Kafka's
    /// `buffer.memory`).
    pub buffer_bytes_max: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: 1024 * 1024,
            delivery_timeout: Duration::from_secs(30),
            partitioner: Partitioner::Murmur2,
            buffer_bytes_max: 32 * 1024 * 1024,
        }
    }
}

impl ProducerConfig {
    /// Sets [`ProducerConfig::acks`].
    #[must_use]
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Sets [`ProducerConfig::linger`].
    #[must_use]
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets [`ProducerConfig::batch_bytes`].
    #[must_use]
    pub fn batch_bytes(mut self, batch_bytes: usize) -> Self {
        self.batch_bytes = batch_bytes;
        self
    }

    /// Sets [`ProducerConfig::delivery_timeout`].
    #[must_use]
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// Sets [`ProducerConfig::partitioner`].
    #[must_use]
    pub fn partitioner(mut self, partitioner: Partitioner) -> Self {
        self.partitioner = partitioner;
        self
    }
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// A fixed partition, or `None` to let the partitioner choose.
    pub partition: Option<u32>,
    /// The key; records with equal keys land on the same partition.
    pub key: Option<Bytes>,
    /// The value (`None` is a tombstone).
    pub value: Option<Bytes>,
    /// The headers.
    pub headers: Vec<Header>,
    /// Creation time in ms since the Unix epoch; `None` for the time of `enqueue`.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record for `topic` with `value` and no key.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Fixes the partition.
    #[must_use]
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    fn payload_bytes(&self) -> usize {
        let header_bytes: usize = self
            .headers
            .iter()
            .map(|header| header.key.len() + header.value.as_ref().map_or(0, Bytes::len) + 4)
            .sum();
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + header_bytes
            + RECORD_OVERHEAD_BYTES
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The record's offset; -1 when produced with [`Acks::None`].
    pub offset: i64,
    /// The record's timestamp (ms since the Unix epoch).
    pub timestamp_ms: i64,
}

/// Resolves when an enqueued record is acknowledged (or definitively failed).
///
/// Returned by [`Producer::enqueue`]; the record is sent whether or not this is awaited.
#[derive(Debug)]
#[must_use = "the delivery result is only known by awaiting the future"]
pub struct DeliveryFuture {
    receiver: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(context)
            .map(|result| result.unwrap_or(Err(Error::Closed)))
    }
}

/// An asynchronous, batching producer.
///
/// ```no_run
/// # async fn example() -> wharf_client::Result<()> {
/// use bytes::Bytes;
/// use wharf_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
///
/// let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
/// let producer = Producer::new(&client, ProducerConfig::default());
///
/// // One record, waiting for its acknowledgement.
/// let written = producer
///     .send("orders", Some(Bytes::from("customer-7")), Some(Bytes::from("paid")), vec![])
///     .await?;
/// println!("written at {}-{}@{}", written.topic, written.partition, written.offset);
///
/// // Many records: enqueue them all, then wait.
/// let mut deliveries = Vec::new();
/// for index in 0..1000 {
///     deliveries.push(producer.enqueue(ProducerRecord::new("orders", format!("{index}"))).await?);
/// }
/// for delivery in deliveries {
///     delivery.await?;
/// }
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Producer {
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
enum Command {
    Record(Box<Enqueued>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Enqueued {
    record: ProducerRecord,
    timestamp_ms: i64,
    enqueued_at: Instant,
    reply: oneshot::Sender<Result<RecordMetadata>>,
}

impl Producer {
    /// A producer sending through `client`. Starts the background task but does no I/O
    /// until the first record.
    ///
    /// # Panics
    /// Outside a tokio runtime (the background task needs one).
    pub fn new(client: &Client, config: ProducerConfig) -> Producer {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_RECORDS_MAX);
        let task = ProducerTask::new(client.clone(), config);
        let task = tokio::spawn(task.run(receiver));
        Producer { commands, task }
    }

    /// Sends one record to `topic` and waits for its acknowledgement.
    ///
    /// # Errors
    /// The record's delivery error: [`Error::UnknownTopic`] if the topic does not exist
    /// and cannot be auto-created, [`Error::RecordTooLarge`], or the last retriable error
    /// when the delivery timeout ran out.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: Vec<Header>,
    ) -> Result<RecordMetadata> {
        let record = ProducerRecord {
            topic: topic.to_string(),
            key,
            value,
            headers,
            ..ProducerRecord::default()
        };
        self.enqueue(record).await?.await
    }

    /// Hands `record` to the background task, waiting only for buffer room, and returns a
    /// future of its acknowledgement. Records enqueued one after another keep their order
    /// within a partition.
    ///
    /// # Errors
    /// [`Error::Closed`] if the producer's background task has stopped.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let (reply, receiver) = oneshot::channel();
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let enqueued = Enqueued {
            record,
            timestamp_ms,
            enqueued_at: Instant::now(),
            reply,
        };
        self.commands
            .send(Command::Record(Box::new(enqueued)))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(DeliveryFuture { receiver })
    }

    /// Sends every buffered record now and waits until all records enqueued before this
    /// call are acknowledged or failed.
    ///
    /// # Errors
    /// [`Error::Closed`] if the background task has stopped.
    pub async fn flush(&self) -> Result<()> {
        let (done, waiter) = oneshot::channel();
        self.commands
            .send(Command::Flush(done))
            .await
            .map_err(|_| Error::Closed)?;
        waiter.await.map_err(|_| Error::Closed)
    }

    /// Flushes, then stops the background task.
    ///
    /// # Errors
    /// [`Error::Closed`] if the background task had already stopped.
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        drop(self.commands);
        self.task.await.map_err(|_| Error::Closed)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

type PartitionKey = (String, u32);

/// A record's promise and what its metadata needs.
#[derive(Debug)]
struct Delivery {
    reply: oneshot::Sender<Result<RecordMetadata>>,
    timestamp_ms: i64,
}

#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    deliveries: Vec<Delivery>,
    first_record_id: u64,
    created_at: Instant,
    deadline: Instant,
    payload_bytes: usize,
}

#[derive(Debug)]
struct SealedBatch {
    bytes: Bytes,
    deliveries: Vec<Delivery>,
    first_record_id: u64,
    deadline: Instant,
    attempts: u32,
    payload_bytes: usize,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    /// Sealed batches in send order; while `in_flight`, the front one is being sent.
    sealed: VecDeque<SealedBatch>,
    in_flight: bool,
    retry_at: Option<Instant>,
}

impl PartitionQueue {
    fn is_free(&self, now: Instant) -> bool {
        !self.in_flight && self.retry_at.is_none_or(|at| at <= now)
    }
}

#[derive(Debug)]
struct TopicState {
    description: TopicDescription,
    sticky: Option<u32>,
    stale: bool,
}

/// The outcome of one produce request, per partition: the base offset or the error.
#[derive(Debug)]
struct Completion {
    results: Vec<(PartitionKey, Result<i64>)>,
}

/// The background task: owns every batch and all partition state.
#[derive(Debug)]
struct ProducerTask {
    client: Client,
    config: ProducerConfig,
    backoff: Backoff,
    jitter: Jitter,
    topics: HashMap<String, TopicState>,
    queues: HashMap<PartitionKey, PartitionQueue>,
    /// First record id of every live batch (open, sealed or in flight).
    outstanding: BTreeSet<u64>,
    next_record_id: u64,
    /// Flushes waiting until every record id below theirs is done.
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    buffered_bytes: usize,
    completions: mpsc::Sender<Completion>,
    completions_receiver: Option<mpsc::Receiver<Completion>>,
}

impl ProducerTask {
    fn new(client: Client, config: ProducerConfig) -> Self {
        let backoff = Backoff::new(
            client.config().retry_backoff_base,
            client.config().retry_backoff_max,
        );
        let (completions, completions_receiver) = mpsc::channel(COMPLETION_QUEUE_MAX);
        ProducerTask {
            client,
            config,
            backoff,
            jitter: Jitter::from_entropy(),
            topics: HashMap::new(),
            queues: HashMap::new(),
            outstanding: BTreeSet::new(),
            next_record_id: 0,
            flush_waiters: Vec::new(),
            buffered_bytes: 0,
            completions,
            completions_receiver: Some(completions_receiver),
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let Some(mut completions) = self.completions_receiver.take() else {
            return;
        };
        let mut closing = false;
        loop {
            self.refresh_stale_topics().await;
            self.dispatch(Instant::now());
            self.complete_flushes();
            if closing && self.outstanding.is_empty() {
                return;
            }
            let wake = self.next_wake();
            let accepting = !closing && self.buffered_bytes < self.config.buffer_bytes_max;
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
            if self.buffered_bytes >= self.config.buffer_bytes_max {
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
            Command::Record(enqueued) => self.on_record(*enqueued).await,
            Command::Flush(done) => {
                self.seal_all();
                self.flush_waiters.push((self.next_record_id, done));
            }
        }
    }

    async fn on_record(&mut self, enqueued: Enqueued) {
        let Enqueued {
            record,
            timestamp_ms,
            enqueued_at,
            reply,
        } = enqueued;
        let partition = match self.choose_partition(&record).await {
            Ok(partition) => partition,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        let payload_bytes = record.payload_bytes();
        let key = (record.topic, partition);
        let new_record = NewRecord {
            timestamp_ms,
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        let delivery = Delivery {
            reply,
            timestamp_ms,
        };
        let deadline = enqueued_at + self.config.delivery_timeout;
        self.append(key, new_record, delivery, payload_bytes, deadline);
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
        let answer = self
            .client
            .send(Target::Any, &probe, Retry::Reconnect)
            .await?;
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
        let queue = self.queues.entry(key.clone()).or_default();
        let full = queue.open.as_ref().is_some_and(|open| {
            open.builder.record_count() > 0
                && open.builder.encoded_bytes() + payload_bytes > batch_bytes
        });
        if full {
            seal(queue, &key, &mut self.topics);
        }
        let record_id = self.next_record_id;
        let open = queue.open.get_or_insert_with(|| OpenBatch {
            builder: BatchBuilder::new(record.timestamp_ms),
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

    /// Seals lingered batches of free partitions and sends one batch per ready partition.
    fn dispatch(&mut self, now: Instant) {
        let mut by_leader: HashMap<i32, Vec<(PartitionKey, Bytes)>> = HashMap::new();
        for (key, queue) in &mut self.queues {
            if !queue.is_free(now) {
                continue;
            }
            queue.retry_at = None;
            let lingered = queue
                .open
                .as_ref()
                .is_some_and(|open| open.created_at + self.config.linger <= now);
            if queue.sealed.is_empty() && lingered {
                seal(queue, key, &mut self.topics);
            }
            let Some(front) = queue.sealed.front_mut() else {
                continue;
            };
            front.attempts += 1;
            queue.in_flight = true;
            let leader = self
                .topics
                .get(&key.0)
                .and_then(|topic| topic.description.partitions.get(key.1 as usize))
                .map_or(-1, |partition| partition.leader);
            by_leader
                .entry(leader)
                .or_default()
                .push((key.clone(), front.bytes.clone()));
        }
        for (leader, batches) in by_leader {
            self.send_request(leader, batches);
        }
    }

    fn send_request(&self, leader: i32, batches: Vec<(PartitionKey, Bytes)>) {
        let mut topics: Vec<ProduceTopic> = Vec::new();
        let mut keys = Vec::with_capacity(batches.len());
        for ((topic, partition), records) in batches {
            let partition_entry = ProducePartition { partition, records };
            match topics.iter_mut().find(|entry| entry.name == topic) {
                Some(entry) => entry.partitions.push(partition_entry),
                None => topics.push(ProduceTopic {
                    name: topic.clone(),
                    partitions: vec![partition_entry],
                }),
            }
            keys.push((topic, partition));
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
        let client = self.client.clone();
        let completions = self.completions.clone();
        tokio::spawn(async move {
            let answer = client.send(target, &request, Retry::Once).await;
            let results = produce_results(keys, answer);
            // The task only stops once nothing is outstanding, which needs this reply.
            let _ = completions.send(Completion { results }).await;
        });
    }

    fn on_completion(&mut self, completion: Completion) {
        let now = Instant::now();
        for (key, result) in completion.results {
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            queue.in_flight = false;
            let retry = match &result {
                Ok(_) => None,
                Err(error) => {
                    let attempts = queue.sealed.front().map_or(1, |batch| batch.attempts);
                    let delay = self
                        .backoff
                        .delay(attempts.saturating_sub(1), self.jitter.fraction());
                    let deadline = queue.sealed.front().map_or(now, |batch| batch.deadline);
                    (is_retriable_for_produce(error) && now + delay < deadline).then_some(delay)
                }
            };
            if let Some(delay) = retry {
                queue.retry_at = Some(now + delay);
                if let Some(topic) = self.topics.get_mut(&key.0) {
                    topic.stale = true;
                }
                continue;
            }
            let Some(batch) = queue.sealed.pop_front() else {
                continue;
            };
            self.outstanding.remove(&batch.first_record_id);
            self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.payload_bytes);
            complete_batch(&key, batch, result);
        }
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
                queue.sealed.push_back(open.seal());
            }
            for batch in queue.sealed {
                self.outstanding.remove(&batch.first_record_id);
                self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.payload_bytes);
                let error = Error::UnknownTopic {
                    topic: topic.to_string(),
                };
                complete_batch(&key, batch, Err(error));
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

    /// The next moment a timer must wake the task: a linger or a retry backoff ending.
    /// Partitions in flight need no timer: their completion wakes the task.
    fn next_wake(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter(|queue| !queue.in_flight)
            .filter_map(|queue| {
                let ready_at = if queue.sealed.is_empty() {
                    queue
                        .open
                        .as_ref()
                        .map(|open| open.created_at + self.config.linger)?
                } else {
                    queue.retry_at?
                };
                Some(
                    queue
                        .retry_at
                        .map_or(ready_at, |retry_at| ready_at.max(retry_at)),
                )
            })
            .min()
    }
}

impl OpenBatch {
    fn seal(self) -> SealedBatch {
        SealedBatch {
            bytes: self.builder.build(),
            deliveries: self.deliveries,
            first_record_id: self.first_record_id,
            deadline: self.deadline,
            attempts: 0,
            payload_bytes: self.payload_bytes,
        }
    }
}

/// Seals the open batch of `queue`; a sealed batch ends the topic's sticky partition.
fn seal(queue: &mut PartitionQueue, key: &PartitionKey, topics: &mut HashMap<String, TopicState>) {
    let Some(open) = queue.open.take() else {
        return;
    };
    queue.sealed.push_back(open.seal());
    if let Some(topic) = topics.get_mut(&key.0) {
        if topic.sticky == Some(key.1) {
            topic.sticky = None;
        }
    }
}

fn complete_batch(key: &PartitionKey, batch: SealedBatch, result: Result<i64>) {
    for (index, delivery) in batch.deliveries.into_iter().enumerate() {
        let outcome = match &result {
            Ok(base_offset) if *base_offset >= 0 => {
                let delta = i64::try_from(index).unwrap_or(i64::MAX);
                Ok(RecordMetadata {
                    topic: key.0.clone(),
                    partition: key.1,
                    offset: base_offset.saturating_add(delta),
                    timestamp_ms: delivery.timestamp_ms,
                })
            }
            Ok(_) => Ok(RecordMetadata {
                topic: key.0.clone(),
                partition: key.1,
                offset: -1,
                timestamp_ms: delivery.timestamp_ms,
            }),
            Err(error) => Err(error.clone()),
        };
        let _ = delivery.reply.send(outcome);
    }
}

/// Retriable for a producer: what is retriable anywhere, plus a topic or partition the
/// broker does not know yet (metadata is refreshed before the retry).
fn is_retriable_for_produce(error: &Error) -> bool {
    error.is_retriable()
        || matches!(error, Error::UnknownBroker { .. })
        || error.code() == Some(ErrorCode::UnknownTopicOrPartition)
}

/// Splits a produce answer into per-partition outcomes, in the order of `keys`.
fn produce_results(
    keys: Vec<PartitionKey>,
    answer: Result<Option<Response>>,
) -> Vec<(PartitionKey, Result<i64>)> {
    let response: ProduceResponse = match answer {
        // Acks::None: no answer, no offsets.
        Ok(None) => return keys.into_iter().map(|key| (key, Ok(-1))).collect(),
        Ok(Some(Response::Produce(response))) => response,
        Ok(Some(_)) => {
            let error = Error::Decode(wharf_protocol::DecodeError::InvalidValue {
                field: "produce response type",
                value: 0,
            });
            return keys
                .into_iter()
                .map(|key| (key, Err(error.clone())))
                .collect();
        }
        Err(error) => {
            return keys
                .into_iter()
                .map(|key| (key, Err(error.clone())))
                .collect()
        }
    };
    if !response.error.is_ok() {
        let error = Error::server(response.error, response.error_message);
        return keys
            .into_iter()
            .map(|key| (key, Err(error.clone())))
            .collect();
    }
    keys.into_iter()
        .map(|key| {
            let found = response
                .topics
                .iter()
                .filter(|topic| topic.name == key.0)
                .flat_map(|topic| &topic.partitions)
                .find(|partition| partition.partition == key.1);
            let outcome = match found {
                Some(partition) if partition.error.is_ok() => Ok(partition.base_offset),
                Some(partition) => Err(Error::server(
                    partition.error,
                    partition.error_message.clone(),
                )),
                None => Err(Error::server(
                    ErrorCode::Unknown,
                    Some(format!("produce response lacks {}-{}", key.0, key.1)),
                )),
            };
            (key, outcome)
        })
        .collect()
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
