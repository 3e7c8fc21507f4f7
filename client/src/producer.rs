//! [`Producer`]: batches records per partition and sends them in the background.
//!
//! Callers hand records to a background task over a bounded channel
//! ([`Producer::enqueue`] waits for room; [`Producer::send`] also waits for the
//! acknowledgement). The task owns all producer state (no locks): it picks each record's
//! partition ([`crate::Partitioner`], sticky for records without a key), appends it to the
//! partition's open batch, seals a batch when it reaches `batch_bytes`, when `linger` has
//! passed or on [`Producer::flush`], and sends sealed batches, one produce request per leader
//! carrying at most one batch per partition.
//!
//! Idempotence (on by default, as in Kafka 3.x; [`Idempotence`]): before its first batch the
//! producer asks the broker for a producer id and epoch (InitProducerId). Every batch carries
//! them and the sequence number of its first record; per partition the sequence advances by
//! the batch's record count and wraps from `i32::MAX` to 0. Sequences are stamped when a batch
//! is sealed and a retry resends the same bytes, so the broker recognises a retry of a batch
//! it already appended (its answer was lost, even across a broker restart) and answers with
//! the original offset instead of appending it again.
//!
//! Invariants:
//! - Per partition, batches are sent in sequence order, at most five in flight with
//!   idempotence and one without (without sequence numbers the broker could not refuse a batch
//!   that overtook a failed one). Different partitions proceed in parallel. Requests reach the
//!   broker in the order they were made (`producer/sender.rs`).
//! - After a failed attempt the partition sends one batch at a time, oldest first, until every
//!   batch that failed is acknowledged; only then does pipelining resume. The batches that
//!   were in flight behind the failed one come back `OutOfOrderSequence` (the broker refuses
//!   gaps) and are resent the same way, so records of a partition are appended in send order
//!   even across retries, and a resent batch is always among the last five the broker
//!   remembers.
//! - Retriable failures are retried with exponential backoff and jitter until the batch's
//!   delivery deadline (first record's enqueue time + `delivery_timeout`); then every record
//!   of the batch fails with the last error. Every record's future completes exactly once,
//!   with its real offset (a duplicate is answered with the original one).
//! - With idempotence, a batch that fails for good breaks its partition's sequence: the
//!   batches behind it wait, then the partition gets a new producer id and restarts at
//!   sequence 0 with them (`UnknownProducerId`, the broker having forgotten the producer,
//!   does the same without failing anything). If the failed batch may have been written (a
//!   timeout), waiting batches that may have been written too fail with their error rather
//!   than risk a duplicate. `OutOfOrderSequence` for the oldest unacknowledged batch cannot be
//!   explained by anything in flight and fails it with [`Error::OutOfOrderSequence`].
//!   `ProducerFenced` stops the producer: every pending and later record fails with
//!   [`Error::ProducerFenced`].
//! - Buffered bytes are bounded by `buffer_bytes_max`: past it the task stops taking records
//!   and `enqueue` waits.

mod fast_hash;
mod queue;
mod sender;
mod sequence;
mod task;
mod transaction;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wharf_protocol::messages::{Acks, TxnResult};
use wharf_protocol::Header;

use self::transaction::TxnCommand;
use crate::cluster::Client;
use crate::consumer::ConsumerGroupMetadata;
use crate::error::{Error, Result};
use crate::metadata::TopicPartition;
use crate::partitioner::Partitioner;

/// Records the channel to the background task holds before `enqueue` waits.
const COMMAND_QUEUE_RECORDS_MAX: usize = 1024;
/// Per-record bytes a batch spends besides key, value and headers (length, attributes and
/// delta varints), used to seal a batch before a record would overflow `batch_bytes`.
const RECORD_OVERHEAD_BYTES: usize = 24;

/// Whether the producer makes its retries safe (Kafka's `enable.idempotence`).
///
/// With [`Idempotence::Enabled`] (the default) every batch carries a producer id and
/// sequence numbers, so the broker appends a retried batch at most once and keeps each
/// partition's batches in order with up to five in flight. It needs [`Acks::All`].
/// [`Idempotence::Disabled`] gives at-least-once delivery: a batch whose answer was lost is
/// written again when retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Idempotence {
    /// Deduplicated retries, ordered pipelining (needs [`Acks::All`]).
    #[default]
    Enabled,
    /// Plain produce: retries may duplicate, one batch in flight per partition.
    Disabled,
}

/// Producer settings.
///
/// ```
/// use std::time::Duration;
/// use wharf_client::{Acks, Idempotence, Partitioner, ProducerConfig};
///
/// let config = ProducerConfig::default()
///     .acks(Acks::Leader)
///     .idempotence(Idempotence::Disabled)
///     .linger(Duration::from_millis(20))
///     .partitioner(Partitioner::Consistent);
/// assert_eq!(config.batch_bytes, 1024 * 1024);
/// assert!(config.validate().is_ok());
/// // Idempotence (the default) needs acks = all.
/// assert!(ProducerConfig::default().acks(Acks::Leader).validate().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Acknowledgement level (default [`Acks::All`]: acked once durable). With
    /// [`Acks::None`] the broker never answers and offsets are reported as -1. Anything but
    /// [`Acks::All`] needs [`Idempotence::Disabled`].
    pub acks: Acks,
    /// Whether retries are deduplicated by the broker (default [`Idempotence::Enabled`]).
    pub idempotence: Idempotence,
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
    /// Makes the producer transactional (Kafka's `transactional.id`, default `None`): records
    /// are sent inside transactions ([`Producer::begin_transaction`]) that commit or abort
    /// atomically, and a new producer with the same id fences this one. Needs idempotence.
    pub transactional_id: Option<String>,
    /// How long the broker lets a transaction stay open before it aborts it (default 60 s,
    /// Kafka's `transaction.timeout.ms`).
    pub transaction_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            idempotence: Idempotence::Enabled,
            linger: Duration::from_millis(5),
            batch_bytes: 1024 * 1024,
            delivery_timeout: Duration::from_secs(30),
            partitioner: Partitioner::Murmur2,
            buffer_bytes_max: 32 * 1024 * 1024,
            transactional_id: None,
            transaction_timeout: Duration::from_secs(60),
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

    /// Sets [`ProducerConfig::idempotence`].
    #[must_use]
    pub fn idempotence(mut self, idempotence: Idempotence) -> Self {
        self.idempotence = idempotence;
        self
    }

    /// Sets [`ProducerConfig::transactional_id`].
    #[must_use]
    pub fn transactional_id(mut self, transactional_id: impl Into<String>) -> Self {
        self.transactional_id = Some(transactional_id.into());
        self
    }

    /// Sets [`ProducerConfig::transaction_timeout`].
    #[must_use]
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.transaction_timeout = timeout;
        self
    }

    /// Checks that the settings fit together.
    ///
    /// # Errors
    /// [`Error::InvalidState`] if idempotence is enabled with acks other than
    /// [`Acks::All`] (as Kafka refuses it: an answer before the batch is durable could be
    /// followed by a broker crash that loses it while the producer's sequence moved on), or
    /// if a transactional id is set without idempotence or is empty.
    pub fn validate(&self) -> Result<()> {
        if let Some(transactional_id) = &self.transactional_id {
            if transactional_id.is_empty() {
                return Err(Error::InvalidState {
                    reason: "the transactional id must not be empty",
                });
            }
            if self.idempotence != Idempotence::Enabled {
                return Err(Error::InvalidState {
                    reason: "a transactional producer needs idempotence",
                });
            }
        }
        if self.idempotence == Idempotence::Enabled && self.acks != Acks::All {
            return Err(Error::InvalidState {
                reason: "idempotence requires acks = all: set acks to all or disable idempotence",
            });
        }
        Ok(())
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
    Record(Enqueued),
    Flush(oneshot::Sender<()>),
    Txn(TxnCommand, oneshot::Sender<Result<()>>),
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
    /// until the first record (with idempotence, the first record first fetches the producer
    /// id).
    ///
    /// # Panics
    /// Outside a tokio runtime (the background task needs one), and if `config` is invalid
    /// ([`ProducerConfig::validate`]): a configuration mistake is a bug of the caller, as in
    /// Kafka's constructor. [`Producer::try_new`] returns the error instead.
    pub fn new(client: &Client, config: ProducerConfig) -> Producer {
        match Producer::try_new(client, config) {
            Ok(producer) => producer,
            Err(error) => panic!("invalid producer config: {error}"),
        }
    }

    /// Like [`Producer::new`], but returns an invalid configuration as an error.
    ///
    /// ```no_run
    /// # async fn example() -> wharf_client::Result<()> {
    /// use wharf_client::{Acks, Client, ClientConfig, Error, Idempotence, Producer, ProducerConfig};
    ///
    /// let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
    /// let fast = ProducerConfig::default().acks(Acks::Leader);
    /// let refused = Producer::try_new(&client, fast.clone());
    /// assert!(matches!(refused, Err(Error::InvalidState { .. })));
    /// let producer = Producer::try_new(&client, fast.idempotence(Idempotence::Disabled))?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidState`] if `config` is invalid ([`ProducerConfig::validate`]).
    ///
    /// # Panics
    /// Outside a tokio runtime (the background task needs one).
    pub fn try_new(client: &Client, config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_RECORDS_MAX);
        let task = task::spawn(client.clone(), config, receiver);
        Ok(Producer { commands, task })
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
            .send(Command::Record(enqueued))
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

    /// Registers the transactional id with the broker (InitProducerId): fences any earlier
    /// producer with the same id, and completes or aborts its open transaction. Call it once,
    /// before the first transaction.
    ///
    /// ```no_run
    /// # async fn example() -> wharf_client::Result<()> {
    /// use wharf_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
    ///
    /// let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
    /// let config = ProducerConfig::default().transactional_id("billing-1");
    /// let producer = Producer::new(&client, config);
    /// producer.init_transactions().await?;
    ///
    /// producer.begin_transaction().await?;
    /// let sent = async {
    ///     producer.enqueue(ProducerRecord::new("invoices", "42")).await?;
    ///     producer.enqueue(ProducerRecord::new("ledger", "42")).await?;
    ///     producer.commit_transaction().await
    /// };
    /// if let Err(error) = sent.await {
    ///     // Fenced: another producer took over the id; this one must stop.
    ///     if matches!(error, wharf_client::Error::ProducerFenced { .. }) {
    ///         return Err(error);
    ///     }
    ///     producer.abort_transaction().await?;
    /// }
    /// producer.close().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidState`] without a transactional id or if already initialized; the
    /// broker's error if it refuses (retriable ones are retried until `delivery_timeout`).
    pub async fn init_transactions(&self) -> Result<()> {
        self.transaction(TxnCommand::Init).await
    }

    /// Starts a transaction: records enqueued from now until [`Producer::commit_transaction`]
    /// or [`Producer::abort_transaction`] belong to it. No request is sent until the first
    /// record or offsets.
    ///
    /// # Errors
    /// [`Error::InvalidState`] before `init_transactions` or while a transaction is open;
    /// [`Error::ProducerFenced`] once fenced.
    pub async fn begin_transaction(&self) -> Result<()> {
        self.transaction(TxnCommand::Begin).await
    }

    /// Commits consumer `offsets` (for each partition, the next offset to consume) of
    /// `group` as part of the open transaction (consume-transform-produce): they become the
    /// group's committed offsets if and only if the transaction commits.
    ///
    /// # Errors
    /// [`Error::InvalidState`] with no open transaction; the broker's error
    /// (`IllegalGeneration`, `UnknownMemberId` for a fenced consumer, [`Error::ProducerFenced`]).
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: Vec<(TopicPartition, i64)>,
        group: ConsumerGroupMetadata,
    ) -> Result<()> {
        self.transaction(TxnCommand::SendOffsets { offsets, group })
            .await
    }

    /// Sends every record of the open transaction, waits for their acknowledgements, then
    /// commits it (EndTxn): its records become visible to read-committed consumers, and its
    /// offsets committed, atomically.
    ///
    /// # Errors
    /// [`Error::TransactionFailed`] if a record or request of the transaction failed (the
    /// transaction stays open: abort it); [`Error::ProducerFenced`] if fenced (fatal: the
    /// broker aborts the transaction); [`Error::InvalidState`] with no open transaction;
    /// otherwise the broker's last error (then the outcome is unknown until the next
    /// `init_transactions` of the id completes or aborts it).
    pub async fn commit_transaction(&self) -> Result<()> {
        self.transaction(TxnCommand::End(TxnResult::Commit)).await
    }

    /// Aborts the open transaction: records not yet sent fail with
    /// [`Error::TransactionAborted`], the producer waits for those in flight, then aborts
    /// (EndTxn), so nothing of the transaction is ever visible to read-committed consumers.
    ///
    /// # Errors
    /// [`Error::InvalidState`] with no open transaction; [`Error::ProducerFenced`] if fenced;
    /// the broker's error otherwise.
    pub async fn abort_transaction(&self) -> Result<()> {
        self.transaction(TxnCommand::End(TxnResult::Abort)).await
    }

    async fn transaction(&self, command: TxnCommand) -> Result<()> {
        let (reply, waiter) = oneshot::channel();
        self.commands
            .send(Command::Txn(command, reply))
            .await
            .map_err(|_| Error::Closed)?;
        waiter.await.map_err(|_| Error::Closed)?
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
