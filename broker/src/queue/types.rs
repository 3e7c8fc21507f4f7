//! The public types of the queue api: its error, a queue's arguments and durability, the
//! messages going in and out, what a consumer's channel carries, the tickets a publish or an
//! ack returns, and a queue's counts.
//!
//! Plain data with no I/O and no locks; the manager, the queue task and the server's
//! dispatch share them. Must never depend on the manager or the task.

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::batch::{BatchError, Header, Record, RecordView, RecordViews, Records};

use crate::queue::delivery::{CancelReason, ConsumerId, DeliveryTag, Overflow};

/// Header with a per-message TTL in milliseconds.
pub const EXPIRATION_HEADER: &str = "x-expiration-ms";
/// Header naming the exchange a message was published to.
pub const EXCHANGE_HEADER: &str = "x-exchange";

/// Everything that can go wrong in the queue layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The caller may not do this (ACLs, issue #18).
    #[error(transparent)]
    Unauthorized(#[from] crate::acl::Denied),
    /// The cluster's metadata log did not take a queue definition (issue #20); with
    /// `no_leader` nothing changed and a retry may succeed, else the outcome is unknown.
    #[error("cluster: {message}")]
    Cluster { no_leader: bool, message: String },
    /// No such exchange.
    #[error("unknown exchange {0:?}")]
    UnknownExchange(String),
    /// No such queue.
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    /// A declare whose arguments differ from the existing entity's.
    #[error("{0} exists with different arguments")]
    DeclareMismatch(String),
    /// A declare of an exchange that exists with another `arg` (`type`, `durable`):
    /// RabbitMQ's "inequivalent arg".
    #[error("exchange {name:?} exists with {arg} {current}; the declare asked for {received}")]
    ExchangeDiffers {
        name: String,
        arg: &'static str,
        received: String,
        current: String,
    },
    /// A name or argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The queue is full and rejects publishes.
    #[error("queue {queue:?} is full ({limit}) and rejects publishes")]
    QueueFull {
        queue: String,
        /// The limit it is at: "5 messages", "1024 bytes".
        limit: String,
    },
    /// An ack or nack names an unknown or settled delivery tag.
    #[error("unknown or already settled delivery tag {0}")]
    UnknownDeliveryTag(DeliveryTag),
    /// Storage failed underneath.
    #[error("storage: {0}")]
    Storage(String),
    /// The queue was deleted or the broker is stopping.
    #[error("queue {0:?} is gone")]
    Gone(String),
    /// A condition the queue checked, atomically with the operation, refused it.
    #[error("queue {queue:?} {failed}")]
    Precondition { queue: String, failed: Precondition },
}

/// Why a conditional operation was refused (decided in the queue's task, so no other
/// operation comes between the check and the act).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum Precondition {
    /// A delete `if_unused` found consumers.
    #[error("is in use (it has consumers)")]
    InUse,
    /// A delete `if_empty` found messages (ready, unacknowledged or delayed).
    #[error("is not empty")]
    NotEmpty,
    /// An exclusive subscribe found consumers, or any subscribe found an exclusive one.
    #[error("is in exclusive use by a consumer")]
    ExclusiveUse,
}

/// The conditions of a queue delete (AMQP's queue.delete `if-unused`, `if-empty`); the
/// default has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeleteConditions {
    /// Refuse ([`Precondition::InUse`]) while the queue has consumers.
    pub if_unused: bool,
    /// Refuse ([`Precondition::NotEmpty`]) while it holds messages.
    pub if_empty: bool,
}

/// How a consumer takes its deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerOptions {
    /// Most unacknowledged deliveries (0: the broker's maximum).
    pub prefetch: u32,
    /// Consumers of a higher priority with room get messages first (0: the default).
    pub priority: i32,
    /// The only consumer of the queue while it lasts: refused
    /// ([`Precondition::ExclusiveUse`]) if the queue has consumers, and later subscribes
    /// are refused (AMQP's basic.consume `exclusive`).
    pub exclusive: bool,
    /// A window shared with other consumers (AMQP's basic.qos `global`), besides
    /// `prefetch`.
    pub shared_prefetch: Option<std::sync::Arc<crate::queue::delivery::SharedPrefetch>>,
}

/// Arguments of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueArgs {
    /// Messages expire this long after publish.
    pub message_ttl_ms: Option<u64>,
    /// Most ready messages.
    pub max_length: Option<u64>,
    /// Most body bytes of ready messages (RabbitMQ's `x-max-length-bytes`).
    pub max_length_bytes: Option<u64>,
    /// What happens past `max_length` or `max_length_bytes`.
    pub overflow: Overflow,
    /// Where dead-lettered messages go.
    pub dead_letter_exchange: Option<String>,
    /// Their routing key (default: the original one).
    pub dead_letter_routing_key: Option<String>,
    /// Redeliveries before a message is dead-lettered.
    pub delivery_limit: Option<u32>,
    /// Only one consumer receives at a time.
    pub single_active_consumer: bool,
    /// Unacked deliveries older than this return and cancel their consumer.
    pub ack_timeout_ms: Option<u64>,
    /// Only the declaring connection may use the queue; it is deleted when that connection
    /// closes.
    pub exclusive: bool,
    /// The queue is deleted when its last consumer goes away.
    pub auto_delete: bool,
    /// The queue is deleted once it has been unused this long: no consumer, no get and no
    /// redeclare (AMQP's `x-expires`). Counted from the queue's start after a restart.
    pub expires_ms: Option<u64>,
    /// The highest message priority the queue orders by (AMQP's `x-max-priority`, at most
    /// [`PRIORITY_MAX`]); a message's priority is its [`PRIORITY_HEADER`]. None: FIFO.
    pub max_priority: Option<u8>,
    /// Asked for as a quorum queue (AMQP's `x-queue-type: quorum`, pair
    /// `queue-type=quorum`): in a cluster, replicated on three nodes (or every node of a
    /// smaller cluster) unless `replication_factor` says how many. The core resolves it into
    /// `replication_factor` when it declares the queue in the cluster.
    pub quorum: bool,
    /// How many nodes hold the queue (pair `replication-factor`, AMQP's
    /// `x-quorum-initial-group-size`): above 1, every write goes through the queue's
    /// replicated log (`queue/replicated.rs`). Only in a cluster.
    pub replication_factor: Option<u32>,
}

impl QueueArgs {
    /// Whether the queue's writes go through a replicated log (more than one replica).
    pub fn is_replicated(&self) -> bool {
        self.replication_factor.is_some_and(|factor| factor > 1)
    }
}

/// The header holding a message's priority as decimal text (AMQP's `priority` property
/// maps to it; native and HTTP publishers set it by name). Missing or not a number: 0;
/// above 255: 255.
pub const PRIORITY_HEADER: &str = "priority";

/// The highest `max-priority` a queue may have: AMQP's priority is an octet, and RabbitMQ
/// refuses a larger `x-max-priority` too.
pub const PRIORITY_MAX: u64 = 255;

/// Identifies a client connection (for exclusive queues).
pub type SessionId = u64;

/// Durability of a queue or exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Durability {
    /// Survives restarts (definition, messages and ack state).
    Durable,
    /// Gone at restart.
    #[default]
    Transient,
}

/// What a consumer receives, one message at a time ([`Deliveries::recv`]): deliveries,
/// then possibly why the broker cancelled it.
#[derive(Debug, Clone)]
pub enum ConsumerEvent {
    /// A message for the consumer.
    Delivery(Delivered),
    /// The broker cancelled the consumer; nothing follows. After an ack timeout its
    /// unacknowledged deliveries (those still in the channel included) are back in the
    /// queue; after a queue delete they are gone with the queue.
    Cancelled(CancelReason),
}

/// What a consumer's channel carries, as the queue task sends it: runs of deliveries as
/// stored bytes ([`Deliveries::recv_push`]), then possibly why the broker cancelled it.
#[derive(Debug, Clone)]
pub enum ConsumerPush {
    /// Messages for the consumer.
    Run(DeliveredRun),
    /// As [`ConsumerEvent::Cancelled`].
    Cancelled(CancelReason),
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The consumer it is for.
    pub consumer: ConsumerId,
    /// The tag to ack it with.
    pub tag: DeliveryTag,
    /// True if delivered before.
    pub redelivered: bool,
    /// The stored record (key = routing key, headers include `x-exchange`).
    pub record: Record,
}

/// Deliveries to one consumer of messages stored in one batch, as the stored record bytes
/// (issue #15): the queue task hands them out without decoding them, and a front end that
/// ships bytes (the native `DeliverBatch` push) sends them as they are. `records` holds one
/// record per mark, in order, in the RecordBatch v2 record encoding, with offset and
/// timestamp deltas counted from `base_offset` and `base_timestamp`.
#[derive(Debug, Clone)]
pub struct DeliveredRun {
    /// The consumer they are for.
    pub consumer: ConsumerId,
    pub base_offset: i64,
    pub base_timestamp: i64,
    /// Per delivery: its tag and whether it was delivered before.
    pub marks: Vec<(DeliveryTag, bool)>,
    pub records: Bytes,
}

impl DeliveredRun {
    /// The deliveries, decoded one by one (keys, values and header values are slices of
    /// `records`); a malformed record is an error, and nothing follows it.
    pub fn deliveries(&self) -> impl Iterator<Item = Result<Delivered, BatchError>> + '_ {
        let count = i32::try_from(self.marks.len()).unwrap_or(i32::MAX);
        let records = Records::of_run(
            self.records.clone(),
            count,
            self.base_offset,
            self.base_timestamp,
        );
        self.marks
            .iter()
            .zip(records)
            .map(|(&(tag, redelivered), record)| {
                record.map(|record| Delivered {
                    consumer: self.consumer,
                    tag,
                    redelivered,
                    record,
                })
            })
    }
}

impl DeliveredRun {
    /// The deliveries read in place (no allocation per message, headers left encoded):
    /// each mark with its record, in order. A malformed record is an error, and nothing
    /// follows it.
    pub fn views(
        &self,
    ) -> impl Iterator<Item = ((DeliveryTag, bool), Result<RecordView<'_>, BatchError>)> + '_ {
        let count = i32::try_from(self.marks.len()).unwrap_or(i32::MAX);
        let records =
            RecordViews::of_run(&self.records, count, self.base_offset, self.base_timestamp);
        self.marks.iter().copied().zip(records)
    }
}

/// A consumer's end of its channel. Take either whole runs ([`Deliveries::recv_push`]) or
/// one message at a time ([`Deliveries::recv`]), not both: a run `recv` started is finished
/// by `recv` only.
#[derive(Debug)]
pub struct Deliveries {
    receiver: mpsc::Receiver<ConsumerPush>,
    /// The deliveries `recv` took out of a run and has not handed out yet.
    pending: std::collections::VecDeque<Delivered>,
}

impl Deliveries {
    pub(crate) fn new(receiver: mpsc::Receiver<ConsumerPush>) -> Deliveries {
        Deliveries {
            receiver,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// The next message (or the cancel); `None` once the consumer ended and all is taken.
    pub async fn recv(&mut self) -> Option<ConsumerEvent> {
        loop {
            if let Some(delivered) = self.pending.pop_front() {
                return Some(ConsumerEvent::Delivery(delivered));
            }
            let push = self.receiver.recv().await?;
            if let Some(event) = self.unpack(push) {
                return Some(event);
            }
        }
    }

    /// Like [`Deliveries::recv`], without waiting.
    ///
    /// # Errors
    /// `Empty` when nothing is waiting, `Disconnected` once the consumer ended.
    pub fn try_recv(&mut self) -> Result<ConsumerEvent, mpsc::error::TryRecvError> {
        loop {
            if let Some(delivered) = self.pending.pop_front() {
                return Ok(ConsumerEvent::Delivery(delivered));
            }
            let push = self.receiver.try_recv()?;
            if let Some(event) = self.unpack(push) {
                return Ok(event);
            }
        }
    }

    /// The next run of deliveries as stored bytes (or the cancel).
    pub async fn recv_push(&mut self) -> Option<ConsumerPush> {
        self.receiver.recv().await
    }

    /// Like [`Deliveries::recv_push`], without waiting.
    ///
    /// # Errors
    /// As [`Deliveries::try_recv`].
    pub fn try_recv_push(&mut self) -> Result<ConsumerPush, mpsc::error::TryRecvError> {
        self.receiver.try_recv()
    }

    /// Decodes a run into `pending`; returns the cancel, if that is what came.
    fn unpack(&mut self, push: ConsumerPush) -> Option<ConsumerEvent> {
        match push {
            ConsumerPush::Cancelled(reason) => Some(ConsumerEvent::Cancelled(reason)),
            ConsumerPush::Run(run) => {
                for delivered in run.deliveries() {
                    match delivered {
                        Ok(delivered) => self.pending.push_back(delivered),
                        Err(error) => {
                            // The store found the record's bounds, so this is damage
                            // inside one record; it stays unacknowledged at this consumer
                            // and comes back when the consumer goes.
                            tracing::warn!(%error, "a stored queue message does not decode");
                            break;
                        }
                    }
                }
                None
            }
        }
    }
}

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored durably in these queues.
    Routed(Vec<String>),
    /// No queue matched.
    Unroutable,
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The routing key.
    pub routing_key: String,
    /// The body.
    pub body: Bytes,
    /// Headers (`x-delay` delays delivery; `x-expiration-ms` sets a per-message TTL).
    pub headers: Vec<Header>,
}

/// A publish handed to its queues, not yet confirmed.
#[derive(Debug)]
pub struct PublishTicket {
    confirmations: Vec<(String, oneshot::Receiver<Result<(), QueueError>>)>,
}

impl PublishTicket {
    /// A ticket waiting for one reply per routed queue (none: unroutable).
    pub(crate) fn new(
        confirmations: Vec<(String, oneshot::Receiver<Result<(), QueueError>>)>,
    ) -> PublishTicket {
        PublishTicket { confirmations }
    }

    /// Waits until the message is durable in every queue it routed to.
    ///
    /// # Errors
    /// The first queue's error (full, storage, gone).
    pub async fn confirmed(self) -> Result<Published, QueueError> {
        if self.confirmations.is_empty() {
            return Ok(Published::Unroutable);
        }
        let mut queues = Vec::with_capacity(self.confirmations.len());
        for (name, confirmed) in self.confirmations {
            confirmed
                .await
                .map_err(|_| QueueError::Gone(name.clone()))??;
            queues.push(name);
        }
        Ok(Published::Routed(queues))
    }
}

/// An ack or nack handed to its queue, not yet durable.
pub type AckTicket = oneshot::Receiver<Result<(), QueueError>>;

/// Counts of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// The queue.
    pub name: String,
    /// Ready messages (delayed ones not included).
    pub ready: u64,
    /// Messages waiting for their `x-delay`.
    pub delayed: u64,
    /// Delivered, unacknowledged messages.
    pub unacked: u64,
    /// Subscribed consumers.
    pub consumers: u64,
    /// Messages stored (published and made durable) since the broker started.
    pub published: u64,
    /// Deliveries pushed to consumers since the broker started (redeliveries included).
    pub delivered: u64,
    /// Messages settled since the broker started: acknowledged by a consumer or a get, or
    /// dropped (expired, or past the delivery limit with no dead-letter exchange).
    pub settled: u64,
    /// Messages dead-lettered since the broker started.
    pub dead_lettered: u64,
    /// Redeliveries pushed to consumers since the broker started (a message delivered
    /// before: nacked with requeue, or returned by a consumer that went away).
    pub redelivered: u64,
    /// Durable or transient.
    pub durability: Durability,
}

/// A message taken by a get ([`QueueManager::get`](crate::queue::QueueManager::get)).
#[derive(Debug, Clone)]
pub struct GotMessage {
    /// True if it was delivered (or got) before.
    pub redelivered: bool,
    /// Its delivery tag, with [`GetMode::Hold`](crate::queue::GetMode::Hold): the holder
    /// settles it as a consumer settles a delivery.
    pub tag: Option<DeliveryTag>,
    /// The stored record (key = routing key, headers include `x-exchange`).
    pub record: Record,
}

/// One binding: messages published to `exchange` that match go to `queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingInfo {
    /// The source exchange (`""`: the default exchange).
    pub exchange: String,
    /// The destination queue.
    pub queue: String,
    /// The routing key or topic pattern (empty where the exchange ignores it).
    pub routing_key: String,
    /// A headers binding's arguments, `x-match` first.
    pub arguments: Vec<(String, String)>,
}

/// The outcome of a move: how many messages were moved, and what stopped it early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Messages now in the destination and gone from the source.
    pub moved: u64,
    /// Why the move stopped before the source was empty (the rest stay in the source).
    pub stopped: Option<QueueError>,
}
