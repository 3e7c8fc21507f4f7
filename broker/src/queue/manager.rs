//! The queue manager: exchanges, queues and bindings, and one task per queue that owns its
//! storage, delivery state and delayed messages.
//!
//! - Declares are idempotent when the arguments match and an error when they differ.
//! - Durable definitions (exchanges, queues, bindings) are kept in `definitions` (a
//!   checkpoint file) under the queues directory and restored on start; durable queues keep
//!   their messages and ack state across restarts. Transient queues start empty.
//! - `publish` routes a message through an exchange (the default exchange `""` routes to the
//!   queue named by the routing key), stores it in every queue it routes to, and confirms
//!   only once it is durable in all of them. An unroutable message is reported (the caller
//!   returns it to a `mandatory` publisher) or dropped and counted.
//! - Dead-lettered messages (rejected, expired, over the length limit, past the delivery
//!   limit) are republished to the queue's dead-letter exchange with the reason and their
//!   original exchange, routing key and queue in `x-death-*` headers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::batch::{BatchBuilder, Header, NewRecord, Record};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::wire_struct;

use crate::queue::delay::{DelayQueue, DELAY_HEADER, DELAY_MS_MAX, DUE_HEADER};
use crate::queue::delivery::{
    AckScope, Action, ConsumerId, DeadLetterReason, DeliveryError, DeliveryState, DeliveryTag,
    MessageMeta, Overflow, QueueLimits, Requeue,
};
use crate::queue::exchange::{Bindings, ExchangeKind, HeadersArgs};
use crate::queue::store::QueueStore;
use crate::storage::{checkpoint, Clock, FlushPolicy, LogConfig, StorageEnv};

/// File holding durable definitions, in the queues directory.
pub const DEFINITIONS_FILE: &str = "definitions";
const DEFINITIONS_MAGIC: [u8; 4] = *b"WQDF";
/// Commands queued per queue task before callers wait (backpressure on publishers).
const QUEUE_COMMANDS_MAX: usize = 4096;
/// Largest prefetch window (AMQP's, a u16); prefetch 0 ("unlimited") means this. A
/// consumer's channel holds at most its window, so it never overflows: deliveries wait in
/// the queue, not in memory per consumer.
pub const PREFETCH_MAX: u32 = 65_535;
/// The reply to a publish or an ack.
type Confirm = oneshot::Sender<Result<(), QueueError>>;
/// A publish waiting to be stored with its batch.
type PendingPublish = (Vec<Message>, Confirm);
/// An ack already applied to the delivery state, waiting for its settle record.
type PendingAck = (Result<Vec<Action>, QueueError>, Confirm);

/// How often a queue checkpoints its ack state and deletes fully settled segments.
const COMPACTION_INTERVAL_MS: i64 = 30_000;
/// Most message bytes stored as one record batch: well below `BATCH_BYTES_MAX` so that a
/// run of publishes always fits one batch (record overhead included).
const PUBLISH_RUN_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most commands a queue task takes in one batch (bounds the work between ticks).
const COMMAND_BATCH_MAX: usize = 1024;
/// Longest a queue task sleeps when nothing is due (bounds TTL and ack-timeout checks).
const IDLE_WAKE: Duration = Duration::from_millis(100);

/// Longest queue or exchange name.
pub const NAME_BYTES_MAX: usize = 255;

/// Everything that can go wrong in the queue layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// No such exchange.
    #[error("unknown exchange {0:?}")]
    UnknownExchange(String),
    /// No such queue.
    #[error("unknown queue {0:?}")]
    UnknownQueue(String),
    /// A declare whose arguments differ from the existing entity's.
    #[error("{0} exists with different arguments")]
    DeclareMismatch(String),
    /// A name or argument is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The queue is full and rejects publishes.
    #[error("queue {queue:?} is full ({max_length} messages) and rejects publishes")]
    QueueFull { queue: String, max_length: u64 },
    /// An ack or nack names an unknown or settled delivery tag.
    #[error("unknown or already settled delivery tag {0}")]
    UnknownDeliveryTag(DeliveryTag),
    /// Storage failed underneath.
    #[error("storage: {0}")]
    Storage(String),
    /// The queue was deleted or the broker is stopping.
    #[error("queue {0:?} is gone")]
    Gone(String),
}

/// Arguments of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueArgs {
    /// Messages expire this long after publish.
    pub message_ttl_ms: Option<u64>,
    /// Most ready messages.
    pub max_length: Option<u64>,
    /// What happens past `max_length`.
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
}

/// Identifies a client connection (for exclusive queues).
pub type SessionId = u64;

/// Durability of a queue or exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives restarts (definition, messages and ack state).
    Durable,
    /// Gone at restart.
    #[default]
    Transient,
}

/// What a consumer's channel carries: deliveries, then possibly why the broker cancelled it.
#[derive(Debug, Clone)]
pub enum ConsumerEvent {
    /// A message for the consumer.
    Delivery(Delivered),
    /// The broker cancelled the consumer; nothing follows. After an ack timeout its
    /// unacknowledged deliveries (those still in the channel included) are back in the
    /// queue; after a queue delete they are gone with the queue.
    Cancelled(CancelReason),
}

/// Why the broker cancelled a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// A delivery stayed unacknowledged past the queue's ack timeout.
    AckTimeout,
    /// The queue was deleted.
    QueueDeleted,
}

impl CancelReason {
    /// A sentence for logs and clients.
    pub fn describe(self) -> &'static str {
        match self {
            CancelReason::AckTimeout => {
                "a delivery stayed unacknowledged past the queue's ack timeout; it was returned to the queue"
            }
            CancelReason::QueueDeleted => "the queue was deleted",
        }
    }
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

/// Header with a per-message TTL in milliseconds.
pub const EXPIRATION_HEADER: &str = "x-expiration-ms";
/// Header naming the exchange a message was published to.
pub const EXCHANGE_HEADER: &str = "x-exchange";

/// A publish handed to its queues, not yet confirmed.
#[derive(Debug)]
pub struct PublishTicket {
    confirmations: Vec<(String, oneshot::Receiver<Result<(), QueueError>>)>,
}

impl PublishTicket {
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue.
    pub name: String,
    /// Ready messages (delayed ones included).
    pub ready: u64,
    /// Delivered, unacknowledged messages.
    pub unacked: u64,
    /// Subscribed consumers.
    pub consumers: u64,
    /// Durable or transient.
    pub durability: Durability,
}

wire_struct! {
    /// A durable exchange.
    pub struct StoredExchange {
        pub name: String,
        pub kind: String,
    }
}

wire_struct! {
    /// A durable queue.
    pub struct StoredQueue {
        pub name: String,
        pub args: Vec<StoredArg>,
    }
}

wire_struct! {
    /// One queue argument.
    pub struct StoredArg {
        pub key: String,
        pub value: String,
    }
}

wire_struct! {
    /// A durable binding.
    pub struct StoredBinding {
        pub exchange: String,
        pub queue: String,
        pub routing_key: String,
        pub headers: Vec<StoredArg>,
    }
}

wire_struct! {
    /// The definitions file's payload.
    pub struct StoredDefinitions {
        pub exchanges: Vec<StoredExchange>,
        pub queues: Vec<StoredQueue>,
        pub bindings: Vec<StoredBinding>,
    }
}

enum Command {
    Publish(Vec<Message>, Confirm),
    Subscribe(ConsumerId, u32, mpsc::Sender<ConsumerEvent>),
    Cancel(ConsumerId, oneshot::Sender<()>),
    Ack(ConsumerId, DeliveryTag, AckScope, Confirm),
    Nack(ConsumerId, DeliveryTag, AckScope, Requeue, Confirm),
    Purge(oneshot::Sender<u64>),
    /// Settles messages whose dead-lettered copies are stored.
    Settle(Vec<i64>),
    Stats(oneshot::Sender<QueueStats>),
    /// Stops the task; consumers are told the reason, if any.
    Stop(oneshot::Sender<()>, Option<CancelReason>),
}

#[derive(Debug)]
struct QueueHandle {
    args: QueueArgs,
    durability: Durability,
    sender: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("queue command")
    }
}

#[derive(Debug, Default)]
struct Registry {
    exchanges: HashMap<String, (Durability, Bindings)>,
    queues: HashMap<String, QueueHandle>,
    /// Durable bindings with their headers arguments, for the definitions file.
    bindings: Vec<StoredBinding>,
    /// Exclusive queues and the connection that owns each.
    owners: HashMap<String, SessionId>,
    /// Live consumer ids per queue, for auto-delete.
    consumer_ids: HashMap<String, std::collections::HashSet<ConsumerId>>,
    /// Queues being deleted: a declare of the name waits for the delete to finish.
    deleting: std::collections::HashSet<String>,
}

/// The queue manager.
#[derive(Debug)]
pub struct QueueManager {
    dir: PathBuf,
    env: StorageEnv,
    clock: Arc<dyn Clock>,
    registry: Mutex<Registry>,
    /// Serializes queue declares: checking for a queue and starting it must be one step, or
    /// two declares could open two writers on one queue's files.
    declaring: Mutex<()>,
    /// Generation of the newest definitions snapshot taken (under the registry lock).
    definitions_taken: AtomicU64,
    /// Generation of the newest definitions written; held while writing, so the file is
    /// written outside the registry lock and never goes back to an older snapshot.
    definitions_written: Mutex<u64>,
    next_consumer: AtomicU64,
    /// Messages published that no queue took (not mandatory).
    pub dropped_unroutable: AtomicU64,
    myself: Weak<QueueManager>,
}

impl QueueManager {
    /// Opens the queues directory, restoring durable definitions and queues (blocking: at
    /// start-up). Transient leftovers are removed.
    ///
    /// # Errors
    /// Storage errors, as text.
    pub fn open(dir: &Path, env: StorageEnv) -> Result<Arc<QueueManager>, QueueError> {
        let storage = |error: crate::storage::Error| QueueError::Storage(error.to_string());
        env.fs
            .create_dir_all(dir)
            .map_err(|error| QueueError::Storage(error.to_string()))?;
        let transient = dir.join("transient");
        if env.fs.is_dir(&transient) {
            env.fs
                .remove_dir_all(&transient)
                .map_err(|error| QueueError::Storage(error.to_string()))?;
        }
        let clock = env.clock.clone();
        let manager = Arc::new_cyclic(|myself| QueueManager {
            dir: dir.to_path_buf(),
            env,
            clock,
            registry: Mutex::new(Registry::default()),
            declaring: Mutex::new(()),
            definitions_taken: AtomicU64::new(0),
            definitions_written: Mutex::new(0),
            next_consumer: AtomicU64::new(1),
            dropped_unroutable: AtomicU64::new(0),
            myself: myself.clone(),
        });
        {
            let mut registry = manager.lock();
            registry.exchanges.insert(
                String::new(),
                (Durability::Durable, Bindings::new(ExchangeKind::Direct)),
            );
            for kind in [
                ExchangeKind::Direct,
                ExchangeKind::Fanout,
                ExchangeKind::Topic,
                ExchangeKind::Headers,
            ] {
                registry.exchanges.insert(
                    format!("amq.{}", kind.name()),
                    (Durability::Durable, Bindings::new(kind)),
                );
            }
        }
        let saved = checkpoint::read(
            manager.env.fs.as_ref(),
            &dir.join(DEFINITIONS_FILE),
            DEFINITIONS_MAGIC,
        )
        .map_err(storage)?;
        if let Some(found) = saved {
            if found.version != 1 {
                return Err(QueueError::Storage(format!(
                    "queue definitions version {} is not 1",
                    found.version
                )));
            }
            let mut reader = Reader::new(Bytes::from(found.payload));
            let definitions = StoredDefinitions::decode(&mut reader, "definitions")
                .and_then(|definitions| reader.finish().map(|()| definitions))
                .map_err(|error| {
                    QueueError::Storage(format!("definitions do not decode: {error}"))
                })?;
            manager.restore(definitions)?;
        }
        Ok(manager)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn restore(&self, definitions: StoredDefinitions) -> Result<(), QueueError> {
        for exchange in definitions.exchanges {
            let kind = ExchangeKind::parse(&exchange.kind).ok_or_else(|| {
                QueueError::Storage(format!("unknown exchange kind {:?}", exchange.kind))
            })?;
            self.lock()
                .exchanges
                .insert(exchange.name, (Durability::Durable, Bindings::new(kind)));
        }
        for queue in definitions.queues {
            let args = args_from_pairs(
                queue
                    .args
                    .iter()
                    .map(|arg| (arg.key.as_str(), arg.value.as_str())),
            )?;
            self.start_queue(&queue.name, args, Durability::Durable)?;
        }
        for binding in definitions.bindings {
            let pairs: Vec<(&str, &str)> = binding
                .headers
                .iter()
                .map(|arg| (arg.key.as_str(), arg.value.as_str()))
                .collect();
            self.bind_inner(
                &binding.queue,
                &binding.exchange,
                &binding.routing_key,
                &pairs,
                false,
            )?;
        }
        Ok(())
    }

    /// The durable definitions as of `registry`, numbered in the order of the registry's
    /// changes (the caller holds the registry lock). Write it with
    /// [`QueueManager::persist`] after releasing the lock: the write fsyncs twice, and
    /// routing takes the same lock for every publish.
    fn snapshot(&self, registry: &Registry) -> (u64, BytesMut) {
        let mut exchanges: Vec<StoredExchange> = registry
            .exchanges
            .iter()
            .filter(|(name, (durability, _))| {
                *durability == Durability::Durable && !name.is_empty() && !name.starts_with("amq.")
            })
            .map(|(name, (_, bindings))| StoredExchange {
                name: name.clone(),
                kind: bindings.kind().name().to_string(),
            })
            .collect();
        exchanges.sort_by(|left, right| left.name.cmp(&right.name));
        let mut queues: Vec<StoredQueue> = registry
            .queues
            .iter()
            .filter(|(_, handle)| handle.durability == Durability::Durable)
            .map(|(name, handle)| StoredQueue {
                name: name.clone(),
                args: args_to_pairs(&handle.args),
            })
            .collect();
        queues.sort_by(|left, right| left.name.cmp(&right.name));
        let payload = StoredDefinitions {
            exchanges,
            queues,
            bindings: registry.bindings.clone(),
        };
        let mut bytes = BytesMut::new();
        payload.encode(&mut bytes);
        let generation = self.definitions_taken.fetch_add(1, Ordering::Relaxed) + 1;
        (generation, bytes)
    }

    /// Writes a snapshot from [`QueueManager::snapshot`], unless a newer one (which holds
    /// its changes too) is already written.
    fn persist(&self, (generation, bytes): (u64, BytesMut)) -> Result<(), QueueError> {
        let mut written = self
            .definitions_written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *written >= generation {
            return Ok(());
        }
        checkpoint::write(
            self.env.fs.as_ref(),
            &self.dir,
            DEFINITIONS_FILE,
            DEFINITIONS_MAGIC,
            1,
            0,
            &bytes,
        )
        .map_err(|error| QueueError::Storage(error.to_string()))?;
        *written = generation;
        Ok(())
    }

    /// Declares an exchange (idempotent when the kind matches).
    ///
    /// # Errors
    /// `Invalid` for a bad name, `DeclareMismatch` for a different kind, `Storage`.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        durability: Durability,
    ) -> Result<(), QueueError> {
        check_name(name)?;
        let mut registry = self.lock();
        if let Some((_, existing)) = registry.exchanges.get(name) {
            return if existing.kind() == kind {
                Ok(())
            } else {
                Err(QueueError::DeclareMismatch(format!("exchange {name:?}")))
            };
        }
        registry
            .exchanges
            .insert(name.to_string(), (durability, Bindings::new(kind)));
        if durability == Durability::Durable {
            let snapshot = self.snapshot(&registry);
            drop(registry);
            self.persist(snapshot)?;
        }
        Ok(())
    }

    /// Deletes an exchange and its bindings; the default and `amq.*` exchanges stay.
    ///
    /// # Errors
    /// `UnknownExchange`, `Invalid`, `Storage`.
    pub fn delete_exchange(&self, name: &str) -> Result<(), QueueError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(QueueError::Invalid(format!(
                "exchange {name:?} is built in and cannot be deleted"
            )));
        }
        let mut registry = self.lock();
        if registry.exchanges.remove(name).is_none() {
            return Err(QueueError::UnknownExchange(name.to_string()));
        }
        registry.bindings.retain(|binding| binding.exchange != name);
        let snapshot = self.snapshot(&registry);
        drop(registry);
        self.persist(snapshot)
    }

    /// Every exchange: (name, kind, durability, binding count), sorted by name.
    pub fn list_exchanges(&self) -> Vec<(String, ExchangeKind, Durability, usize)> {
        let registry = self.lock();
        let mut listing: Vec<(String, ExchangeKind, Durability, usize)> = registry
            .exchanges
            .iter()
            .map(|(name, (durability, bindings))| {
                (
                    name.clone(),
                    bindings.kind(),
                    *durability,
                    bindings.list().len(),
                )
            })
            .collect();
        listing.sort_by(|left, right| left.0.cmp(&right.0));
        listing
    }

    /// Declares a queue (idempotent when the arguments match).
    ///
    /// # Errors
    /// `Invalid`, `DeclareMismatch`, `Storage`.
    pub fn declare_queue(
        &self,
        name: &str,
        args: QueueArgs,
        durability: Durability,
    ) -> Result<(), QueueError> {
        self.declare_queue_for(name, args, durability, None)
    }

    /// Declares a queue on behalf of connection `session` (which owns it if exclusive).
    ///
    /// # Errors
    /// `Invalid` (an exclusive queue needs a connection), `DeclareMismatch` (different
    /// arguments, or an exclusive queue owned by another connection), `Storage`.
    pub fn declare_queue_for(
        &self,
        name: &str,
        args: QueueArgs,
        durability: Durability,
        session: Option<SessionId>,
    ) -> Result<(), QueueError> {
        check_name(name)?;
        if args.exclusive && session.is_none() {
            return Err(QueueError::Invalid(
                "an exclusive queue needs an owning connection".to_string(),
            ));
        }
        if args.exclusive && durability == Durability::Durable {
            return Err(QueueError::Invalid(
                "an exclusive queue dies with its connection, so it cannot be durable".to_string(),
            ));
        }
        let _declaring = self
            .declaring
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        {
            let registry = self.lock();
            if registry.deleting.contains(name) {
                return Err(QueueError::DeclareMismatch(format!(
                    "queue {name:?} is being deleted; declare it again once it is gone"
                )));
            }
            if let Some(existing) = registry.queues.get(name) {
                let owner = registry.owners.get(name).copied();
                if owner.is_some() && owner != session {
                    return Err(QueueError::DeclareMismatch(format!(
                        "queue {name:?} is exclusive to another connection"
                    )));
                }
                return if existing.args == args && existing.durability == durability {
                    Ok(())
                } else {
                    Err(QueueError::DeclareMismatch(format!("queue {name:?}")))
                };
            }
        }
        let exclusive_owner = session.filter(|_| args.exclusive);
        // A crash during an earlier delete can leave the directory behind: a new queue must
        // not inherit its messages.
        let leftover = self.queue_dir(name, durability);
        if self.env.fs.is_dir(&leftover) {
            self.env
                .fs
                .remove_dir_all(&leftover)
                .map_err(|error| QueueError::Storage(error.to_string()))?;
        }
        self.start_queue(name, args, durability)?;
        if let Some(owner) = exclusive_owner {
            self.lock().owners.insert(name.to_string(), owner);
        }
        if durability == Durability::Durable {
            let snapshot = self.snapshot(&self.lock());
            self.persist(snapshot)?;
        }
        Ok(())
    }

    fn queue_dir(&self, name: &str, durability: Durability) -> PathBuf {
        match durability {
            Durability::Durable => self.dir.join("durable").join(name),
            Durability::Transient => self.dir.join("transient").join(name),
        }
    }

    fn start_queue(
        &self,
        name: &str,
        args: QueueArgs,
        durability: Durability,
    ) -> Result<(), QueueError> {
        let (dir, flush) = match durability {
            Durability::Durable => (self.dir.join("durable").join(name), FlushPolicy::Always),
            Durability::Transient => (self.dir.join("transient").join(name), FlushPolicy::Never),
        };
        let config = LogConfig {
            flush,
            retention_ms: None,
            ..LogConfig::default()
        };
        let store = QueueStore::open(&dir, config, self.env.clone())
            .map_err(|error| QueueError::Storage(error.to_string()))?;
        let (sender, receiver) = mpsc::channel(QUEUE_COMMANDS_MAX);
        let task = QueueTask::new(name, &args, store, self.clock.clone(), self.myself.clone())?;
        tokio::spawn(task.run(receiver));
        self.lock().queues.insert(
            name.to_string(),
            QueueHandle {
                args,
                durability,
                sender,
            },
        );
        Ok(())
    }

    /// Binds a queue to an exchange. Headers exchanges take `x-match` and header pairs.
    ///
    /// # Errors
    /// `UnknownExchange`, `UnknownQueue`, `Invalid`, `Storage`.
    pub fn bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), QueueError> {
        self.bind_inner(queue, exchange, routing_key, headers, true)
    }

    fn bind_inner(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        headers: &[(&str, &str)],
        persist: bool,
    ) -> Result<(), QueueError> {
        if exchange.is_empty() {
            return Err(QueueError::Invalid(
                "the default exchange cannot be bound".to_string(),
            ));
        }
        let args = HeadersArgs::from_pairs(headers.iter().copied()).map_err(QueueError::Invalid)?;
        let mut registry = self.lock();
        let queue_durable = match registry.queues.get(queue) {
            Some(handle) => handle.durability == Durability::Durable,
            None => return Err(QueueError::UnknownQueue(queue.to_string())),
        };
        let (exchange_durability, bindings) = registry
            .exchanges
            .get_mut(exchange)
            .ok_or_else(|| QueueError::UnknownExchange(exchange.to_string()))?;
        let exchange_durable = *exchange_durability == Durability::Durable;
        let added = bindings.bind(queue, routing_key, Some(&args));
        if added && queue_durable && exchange_durable {
            registry.bindings.push(StoredBinding {
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                routing_key: routing_key.to_string(),
                headers: headers
                    .iter()
                    .map(|(key, value)| StoredArg {
                        key: key.to_string(),
                        value: value.to_string(),
                    })
                    .collect(),
            });
            if persist {
                let snapshot = self.snapshot(&registry);
                drop(registry);
                self.persist(snapshot)?;
            }
        }
        Ok(())
    }

    /// Removes a binding.
    ///
    /// # Errors
    /// `UnknownExchange`, `Invalid`, `Storage`.
    pub fn unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        headers: &[(&str, &str)],
    ) -> Result<bool, QueueError> {
        let args = HeadersArgs::from_pairs(headers.iter().copied()).map_err(QueueError::Invalid)?;
        let mut registry = self.lock();
        let (_, bindings) = registry
            .exchanges
            .get_mut(exchange)
            .ok_or_else(|| QueueError::UnknownExchange(exchange.to_string()))?;
        let removed = bindings.unbind(queue, routing_key, Some(&args));
        let kind = bindings.kind();
        let stored_headers: Vec<StoredArg> = headers
            .iter()
            .map(|(key, value)| StoredArg {
                key: key.to_string(),
                value: value.to_string(),
            })
            .collect();
        registry.bindings.retain(|binding| {
            let same_key = kind == ExchangeKind::Fanout || binding.routing_key == routing_key;
            let same_headers = kind != ExchangeKind::Headers || binding.headers == stored_headers;
            !(binding.exchange == exchange && binding.queue == queue && same_key && same_headers)
        });
        let snapshot = self.snapshot(&registry);
        drop(registry);
        self.persist(snapshot)?;
        Ok(removed)
    }

    /// The queues a message goes to.
    fn route(
        &self,
        exchange: &str,
        message: &Message,
    ) -> Result<Vec<(String, mpsc::Sender<Command>)>, QueueError> {
        let registry = self.lock();
        let names = if exchange.is_empty() {
            vec![message.routing_key.clone()]
        } else {
            let (_, bindings) = registry
                .exchanges
                .get(exchange)
                .ok_or_else(|| QueueError::UnknownExchange(exchange.to_string()))?;
            let headers: Vec<(&str, Option<&[u8]>)> = message
                .headers
                .iter()
                .map(|header| (header.key.as_str(), header.value.as_deref()))
                .collect();
            bindings.route(&message.routing_key, &headers)
        };
        Ok(names
            .into_iter()
            .filter_map(|name| {
                registry
                    .queues
                    .get(&name)
                    .map(|handle| (name.clone(), handle.sender.clone()))
            })
            .collect())
    }

    /// Publishes one message through `exchange`; resolves once it is durable in every queue
    /// it routed to.
    ///
    /// # Errors
    /// `UnknownExchange`, `QueueFull` (reject-publish), `Storage`, `Invalid` (bad delay).
    pub async fn publish(&self, exchange: &str, message: Message) -> Result<Published, QueueError> {
        self.publish_enqueue(exchange, message)
            .await?
            .confirmed()
            .await
    }

    /// Routes a message and hands it to every target queue, in call order; the returned
    /// ticket resolves once it is durable in all of them. A connection enqueues its
    /// publishes one after the other and awaits the tickets concurrently, so its messages
    /// are stored in the order sent and share fsyncs.
    ///
    /// # Errors
    /// As for `publish`.
    pub async fn publish_enqueue(
        &self,
        exchange: &str,
        mut message: Message,
    ) -> Result<PublishTicket, QueueError> {
        stamp(&mut message, exchange, self.clock.now_ms())?;
        let targets = self.route(exchange, &message)?;
        let mut confirmations = Vec::with_capacity(targets.len());
        for (name, sender) in &targets {
            let (reply, confirmed) = oneshot::channel();
            sender
                .send(Command::Publish(vec![message.clone()], reply))
                .await
                .map_err(|_| QueueError::Gone(name.clone()))?;
            confirmations.push((name.clone(), confirmed));
        }
        Ok(PublishTicket { confirmations })
    }

    fn sender(&self, queue: &str) -> Result<mpsc::Sender<Command>, QueueError> {
        self.lock()
            .queues
            .get(queue)
            .map(|handle| handle.sender.clone())
            .ok_or_else(|| QueueError::UnknownQueue(queue.to_string()))
    }

    /// Subscribes to a queue with a prefetch window; deliveries arrive on the receiver.
    ///
    /// # Errors
    /// `UnknownQueue`, `Gone`.
    pub async fn subscribe(
        &self,
        queue: &str,
        prefetch: u32,
    ) -> Result<(ConsumerId, mpsc::Receiver<ConsumerEvent>), QueueError> {
        self.subscribe_for(queue, prefetch, None).await
    }

    /// Subscribes on behalf of connection `session` (refused on another connection's
    /// exclusive queue).
    ///
    /// # Errors
    /// `UnknownQueue`, `DeclareMismatch` (exclusive elsewhere), `Gone`.
    pub async fn subscribe_for(
        &self,
        queue: &str,
        prefetch: u32,
        session: Option<SessionId>,
    ) -> Result<(ConsumerId, mpsc::Receiver<ConsumerEvent>), QueueError> {
        {
            let registry = self.lock();
            if let Some(owner) = registry.owners.get(queue) {
                if Some(*owner) != session {
                    return Err(QueueError::DeclareMismatch(format!(
                        "queue {queue:?} is exclusive to another connection"
                    )));
                }
            }
        }
        let sender = self.sender(queue)?;
        let consumer = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        let prefetch = if prefetch == 0 {
            PREFETCH_MAX
        } else {
            prefetch.min(PREFETCH_MAX)
        };
        // One slot beyond the window for the Cancelled event, so it always fits.
        let (deliveries, receiver) = mpsc::channel(prefetch as usize + 1);
        sender
            .send(Command::Subscribe(consumer, prefetch, deliveries))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        self.lock()
            .consumer_ids
            .entry(queue.to_string())
            .or_default()
            .insert(consumer);
        Ok((consumer, receiver))
    }

    /// Cancels a consumer: its unacked deliveries return to the queue, redelivered.
    pub async fn cancel(&self, queue: &str, consumer: ConsumerId) {
        if let Ok(sender) = self.sender(queue) {
            let (reply, done) = oneshot::channel();
            if sender.send(Command::Cancel(consumer, reply)).await.is_ok() {
                // Answer only once the deliveries are back in the queue.
                let _ = done.await;
            }
        }
        self.forget_consumer(queue, consumer).await;
    }

    /// Drops a cancelled consumer from the registry; the last consumer of an auto-delete
    /// queue deletes it. Serves cancels by the client and by the broker (ack timeout).
    async fn forget_consumer(&self, queue: &str, consumer: ConsumerId) {
        let auto_delete = {
            let mut registry = self.lock();
            let removed = registry
                .consumer_ids
                .get_mut(queue)
                .is_some_and(|ids| ids.remove(&consumer));
            let remaining = registry.consumer_ids.get(queue).map_or(0, |ids| ids.len());
            removed
                && remaining == 0
                && registry
                    .queues
                    .get(queue)
                    .is_some_and(|handle| handle.args.auto_delete)
        };
        if auto_delete {
            tracing::info!(queue, "last consumer gone; deleting auto-delete queue");
            if let Err(error) = self.delete_queue(queue).await {
                tracing::warn!(queue, %error, "auto-delete failed");
            }
        }
    }

    /// A connection closed: its exclusive queues are deleted.
    pub async fn release_session(&self, session: SessionId) {
        let owned: Vec<String> = self
            .lock()
            .owners
            .iter()
            .filter(|(_, owner)| **owner == session)
            .map(|(queue, _)| queue.clone())
            .collect();
        for queue in owned {
            if let Err(error) = self.delete_queue(&queue).await {
                tracing::warn!(queue, %error, "deleting an exclusive queue failed");
            }
        }
    }

    /// Acknowledges a delivery (and with `multiple` every earlier one of the consumer).
    ///
    /// # Errors
    /// `UnknownDeliveryTag`, `UnknownQueue`, `Storage`.
    pub async fn ack(
        &self,
        queue: &str,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
    ) -> Result<(), QueueError> {
        let ticket = self.ack_enqueue(queue, consumer, tag, scope).await?;
        ticket
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?
    }

    /// Hands an ack to its queue in call order; the ticket resolves once the settlement is
    /// durable (acks of one connection share fsyncs this way).
    ///
    /// # Errors
    /// `UnknownQueue`, `Gone`.
    pub async fn ack_enqueue(
        &self,
        queue: &str,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
    ) -> Result<AckTicket, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.sender(queue)?
            .send(Command::Ack(consumer, tag, scope, reply))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        Ok(answer)
    }

    /// Hands a nack to its queue in call order (see `ack_enqueue`).
    ///
    /// # Errors
    /// `UnknownQueue`, `Gone`.
    pub async fn nack_enqueue(
        &self,
        queue: &str,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
        requeue: Requeue,
    ) -> Result<AckTicket, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.sender(queue)?
            .send(Command::Nack(consumer, tag, scope, requeue, reply))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        Ok(answer)
    }

    /// Negatively acknowledges: requeue, or dead-letter (reject).
    ///
    /// # Errors
    /// `UnknownDeliveryTag`, `UnknownQueue`, `Storage`.
    pub async fn nack(
        &self,
        queue: &str,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
        requeue: Requeue,
    ) -> Result<(), QueueError> {
        let (reply, answer) = oneshot::channel();
        self.sender(queue)?
            .send(Command::Nack(consumer, tag, scope, requeue, reply))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        answer
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?
    }

    /// Removes every ready message; returns how many.
    ///
    /// # Errors
    /// `UnknownQueue`, `Gone`.
    pub async fn purge(&self, queue: &str) -> Result<u64, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.sender(queue)?
            .send(Command::Purge(reply))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        answer
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))
    }

    /// Counts of every queue, sorted by name.
    pub async fn list(&self) -> Vec<QueueStats> {
        let handles: Vec<(String, Durability, mpsc::Sender<Command>)> = self
            .lock()
            .queues
            .iter()
            .map(|(name, handle)| (name.clone(), handle.durability, handle.sender.clone()))
            .collect();
        let mut stats = Vec::new();
        for (name, durability, sender) in handles {
            let (reply, answer) = oneshot::channel();
            // A queue being deleted (its task stopped) is listed, empty, until it is gone.
            let counted = match sender.send(Command::Stats(reply)).await {
                Ok(()) => answer.await.ok(),
                Err(_) => None,
            };
            let mut queue = counted.unwrap_or(QueueStats {
                name,
                ..QueueStats::default()
            });
            queue.durability = durability;
            stats.push(queue);
        }
        // A queue being deleted is listed, empty, until its files are gone.
        let deleting: Vec<String> = self.lock().deleting.iter().cloned().collect();
        for name in deleting {
            stats.push(QueueStats {
                name,
                ..QueueStats::default()
            });
        }
        stats.sort_by(|left, right| left.name.cmp(&right.name));
        stats
    }

    /// Deletes a queue, its bindings and its messages.
    ///
    /// # Errors
    /// `UnknownQueue`, `Storage`.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        // 1. Forget the queue durably first: a crash part-way through must not reopen a
        //    half-deleted queue (its leftover directory is removed by the next declare).
        //    The name stays reserved until the files are gone, so a declare meanwhile is
        //    refused rather than created and then wiped.
        let (sender, durability, snapshot) = {
            let mut registry = self.lock();
            let handle = registry
                .queues
                .remove(queue)
                .ok_or_else(|| QueueError::UnknownQueue(queue.to_string()))?;
            for (_, bindings) in registry.exchanges.values_mut() {
                bindings.remove_queue(queue);
            }
            registry.bindings.retain(|binding| binding.queue != queue);
            registry.owners.remove(queue);
            registry.consumer_ids.remove(queue);
            registry.deleting.insert(queue.to_string());
            (handle.sender, handle.durability, self.snapshot(&registry))
        };
        if let Err(error) = self.persist(snapshot) {
            self.lock().deleting.remove(queue);
            return Err(error);
        }
        // 2. Stop the task, 3. remove the files, 4. release the name.
        let (reply, stopped) = oneshot::channel();
        let deleted = Some(CancelReason::QueueDeleted);
        if sender.send(Command::Stop(reply, deleted)).await.is_ok() {
            let _ = stopped.await;
        }
        let dir = self.queue_dir(queue, durability);
        let removed = if self.env.fs.is_dir(&dir) {
            self.env
                .fs
                .remove_dir_all(&dir)
                .map_err(|error| QueueError::Storage(error.to_string()))
        } else {
            Ok(())
        };
        self.lock().deleting.remove(queue);
        removed
    }

    /// Stops every queue task, closing durable queues cleanly.
    pub async fn shutdown(&self) {
        let senders: Vec<mpsc::Sender<Command>> = self
            .lock()
            .queues
            .values()
            .map(|handle| handle.sender.clone())
            .collect();
        for sender in senders {
            let (reply, stopped) = oneshot::channel();
            if sender.send(Command::Stop(reply, None)).await.is_ok() {
                let _ = stopped.await;
            }
        }
    }

    /// Republishes a dead-lettered message through `exchange`.
    /// Republishes a dead-lettered message; true once it is stored (or there was nowhere to
    /// put it), false if the republish failed and the original must stay.
    async fn dead_letter(&self, exchange: &str, message: Message) -> bool {
        match self.publish(exchange, message).await {
            Ok(Published::Routed(_)) => true,
            Ok(Published::Unroutable) => {
                self.dropped_unroutable.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                // The original stays stored and comes back at the next start.
                tracing::warn!(exchange, %error, "dead-lettering failed; keeping the original");
                false
            }
        }
    }
}

fn check_name(name: &str) -> Result<(), QueueError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(QueueError::Invalid(format!(
            "name {name:?} must be 1 to {NAME_BYTES_MAX} bytes"
        )));
    }
    if name.starts_with("amq.") {
        return Err(QueueError::Invalid(format!(
            "name {name:?}: the amq. prefix is reserved"
        )));
    }
    if name == "." || name == ".." {
        // A durable queue's name is a directory name.
        return Err(QueueError::Invalid(format!("name {name:?} is not allowed")));
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b':'))
    {
        return Err(QueueError::Invalid(format!(
            "name {name:?} may only contain letters, digits and . _ - :"
        )));
    }
    Ok(())
}

fn header_value<'a>(headers: &'a [Header], key: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|header| header.key == key)
        .and_then(|header| header.value.as_deref())
}

fn header_number(headers: &[Header], key: &str) -> Option<i64> {
    header_value(headers, key)
        .and_then(|bytes| std::str::from_utf8(bytes).ok()?.trim().parse().ok())
}

/// Adds the broker's headers: the exchange, and for a delayed message its due time.
fn stamp(message: &mut Message, exchange: &str, now_ms: i64) -> Result<(), QueueError> {
    if let Some(delay) = header_number(&message.headers, DELAY_HEADER) {
        if delay < 0 || delay as u64 > DELAY_MS_MAX {
            return Err(QueueError::Invalid(format!(
                "{DELAY_HEADER} {delay} outside [0, {DELAY_MS_MAX}] ms"
            )));
        }
        if header_number(&message.headers, DUE_HEADER).is_none() {
            message.headers.push(Header {
                key: DUE_HEADER.to_string(),
                value: Some(Bytes::from((now_ms + delay).to_string())),
            });
        }
    }
    if header_value(&message.headers, EXCHANGE_HEADER).is_none() {
        message.headers.push(Header {
            key: EXCHANGE_HEADER.to_string(),
            value: Some(Bytes::copy_from_slice(exchange.as_bytes())),
        });
    }
    Ok(())
}

fn args_to_pairs(args: &QueueArgs) -> Vec<StoredArg> {
    let mut pairs = Vec::new();
    let mut push = |key: &str, value: String| {
        pairs.push(StoredArg {
            key: key.to_string(),
            value,
        })
    };
    if let Some(ttl) = args.message_ttl_ms {
        push("message-ttl-ms", ttl.to_string());
    }
    if let Some(max) = args.max_length {
        push("max-length", max.to_string());
    }
    push(
        "overflow",
        match args.overflow {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
        }
        .to_string(),
    );
    if let Some(exchange) = &args.dead_letter_exchange {
        push("dead-letter-exchange", exchange.clone());
    }
    if let Some(key) = &args.dead_letter_routing_key {
        push("dead-letter-routing-key", key.clone());
    }
    if let Some(limit) = args.delivery_limit {
        push("delivery-limit", limit.to_string());
    }
    if args.single_active_consumer {
        push("single-active-consumer", "true".to_string());
    }
    if let Some(timeout) = args.ack_timeout_ms {
        push("ack-timeout-ms", timeout.to_string());
    }
    if args.auto_delete {
        push("auto-delete", "true".to_string());
    }
    pairs
}

/// Parses queue arguments from `key=value` pairs (the names the CLI and the wire use).
///
/// # Errors
/// `Invalid` naming the bad key or value.
pub fn args_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<QueueArgs, QueueError> {
    let mut args = QueueArgs::default();
    for (key, value) in pairs {
        let number = || {
            value.parse::<u64>().map_err(|_| {
                QueueError::Invalid(format!(
                    "queue argument {key}={value:?} is not a non-negative integer"
                ))
            })
        };
        match key {
            "message-ttl-ms" => args.message_ttl_ms = Some(number()?),
            "max-length" => args.max_length = Some(number()?),
            "overflow" => {
                args.overflow = match value {
                    "drop-head" => Overflow::DropHead,
                    "reject-publish" => Overflow::RejectPublish,
                    other => {
                        return Err(QueueError::Invalid(format!(
                            "overflow {other:?} is not drop-head or reject-publish"
                        )))
                    }
                }
            }
            "dead-letter-exchange" => args.dead_letter_exchange = Some(value.to_string()),
            "dead-letter-routing-key" => args.dead_letter_routing_key = Some(value.to_string()),
            "delivery-limit" => {
                args.delivery_limit = Some(
                    u32::try_from(number()?)
                        .map_err(|_| QueueError::Invalid("delivery-limit too large".to_string()))?,
                )
            }
            "single-active-consumer" => args.single_active_consumer = value == "true",
            "ack-timeout-ms" => args.ack_timeout_ms = Some(number()?),
            "exclusive" => args.exclusive = value == "true",
            "auto-delete" => args.auto_delete = value == "true",
            other => {
                return Err(QueueError::Invalid(format!(
                    "unknown queue argument {other:?}"
                )))
            }
        }
    }
    Ok(args)
}

/// The task that owns one queue.
struct QueueTask {
    name: String,
    /// Shared with the blocking pool only while it compacts.
    store: Arc<QueueStore>,
    state: DeliveryState,
    delays: DelayQueue,
    consumers: HashMap<ConsumerId, mpsc::Sender<ConsumerEvent>>,
    ttl_ms: Option<u64>,
    dead_letter: Option<(String, Option<String>)>,
    clock: Arc<dyn Clock>,
    manager: Weak<QueueManager>,
    last_compaction_ms: i64,
    /// Actions decided outside a tick (recovery) and carried out at the next one.
    pending_actions: Vec<Action>,
}

impl QueueTask {
    fn new(
        name: &str,
        args: &QueueArgs,
        store: QueueStore,
        clock: Arc<dyn Clock>,
        manager: Weak<QueueManager>,
    ) -> Result<QueueTask, QueueError> {
        let limits = QueueLimits {
            max_length: args.max_length,
            overflow: args.overflow,
            delivery_limit: args.delivery_limit,
            single_active_consumer: args.single_active_consumer,
            ack_timeout_ms: args.ack_timeout_ms,
        };
        let mut task = QueueTask {
            name: name.to_string(),
            state: DeliveryState::new(limits),
            delays: DelayQueue::new(),
            consumers: HashMap::new(),
            ttl_ms: args.message_ttl_ms,
            dead_letter: args
                .dead_letter_exchange
                .clone()
                .map(|exchange| (exchange, args.dead_letter_routing_key.clone())),
            store: Arc::new(store),
            last_compaction_ms: clock.now_ms(),
            pending_actions: Vec::new(),
            clock,
            manager,
        };
        // Refill from storage: every unsettled message, delayed ones back in the delay queue.
        let now = task.clock.now_ms();
        let recovered = task
            .store
            .unsettled()
            .map_err(|error| QueueError::Storage(error.to_string()))?;
        // Deliveries before the restart still count toward the delivery limit.
        let counts = task.store.take_recovered_counts();
        let mut overflowed = Vec::new();
        for message in recovered {
            let due = header_number(&message.record.headers, DUE_HEADER);
            match due {
                Some(due) if due > now => task.delays.insert(message.id, due),
                _ => {
                    let meta = MessageMeta {
                        delivery_count: counts.get(&message.id).copied().unwrap_or(0),
                        ..task.meta(message.id, &message.record)
                    };
                    match task.state.enqueue(meta) {
                        Ok(actions) => overflowed.extend(actions),
                        Err(_) => overflowed
                            .push(Action::DeadLetter(message.id, DeadLetterReason::MaxLength)),
                    }
                }
            }
        }
        if !overflowed.is_empty() {
            tracing::warn!(
                queue = name,
                dropped = overflowed.len(),
                "recovered queue exceeded its max length; dead-lettering the oldest"
            );
        }
        // Carried out (dead-lettered and settled) at the first tick.
        task.pending_actions = overflowed;
        Ok(task)
    }

    fn meta(&self, id: i64, record: &Record) -> MessageMeta {
        let ttl = header_number(&record.headers, EXPIRATION_HEADER)
            .and_then(|ttl| u64::try_from(ttl).ok())
            .or(self.ttl_ms);
        MessageMeta {
            id,
            expires_at_ms: ttl.map(|ttl| record.timestamp_ms.saturating_add(ttl as i64)),
            delivery_count: 0,
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let now = self.clock.now_ms();
            let due = self
                .delays
                .next_due_ms()
                .map(|due| (due - now).max(0) as u64);
            let wake = due.map_or(IDLE_WAKE, |ms| Duration::from_millis(ms).min(IDLE_WAKE));
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    // Take every command already waiting: publishes and acks among them share
                    // one append and one fsync (group commit for queues).
                    let mut batch = vec![command];
                    while batch.len() < COMMAND_BATCH_MAX {
                        match commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if self.handle_batch(batch).await == Flow::Stop {
                        return;
                    }
                }
                _ = tokio::time::sleep(wake) => {}
            }
            self.tick().await;
        }
    }

    /// Handles a batch of commands in order, merging runs of publishes and runs of acks.
    async fn handle_batch(&mut self, batch: Vec<Command>) -> Flow {
        let mut publishes: Vec<PendingPublish> = Vec::new();
        let mut acks: Vec<PendingAck> = Vec::new();
        let limits = self.state.limits();
        // With reject-publish, each publish must see the length its predecessors left.
        let merge_publishes =
            !(limits.max_length.is_some() && limits.overflow == Overflow::RejectPublish);
        for command in batch {
            match command {
                Command::Publish(messages, reply) if merge_publishes => {
                    self.flush_acks(&mut acks).await;
                    publishes.push((messages, reply));
                }
                Command::Ack(consumer, tag, scope, reply) => {
                    self.flush_publishes(&mut publishes).await;
                    acks.push((
                        self.state.ack(consumer, tag, scope).map_err(delivery_error),
                        reply,
                    ));
                }
                Command::Nack(consumer, tag, scope, requeue, reply) => {
                    self.flush_publishes(&mut publishes).await;
                    acks.push((
                        self.state
                            .nack(consumer, tag, scope, requeue)
                            .map_err(delivery_error),
                        reply,
                    ));
                }
                Command::Stop(reply, reason) => {
                    self.flush_publishes(&mut publishes).await;
                    self.flush_acks(&mut acks).await;
                    if let Some(reason) = reason {
                        let consumers: Vec<ConsumerId> = self.consumers.keys().copied().collect();
                        for consumer in consumers {
                            self.cancel_consumer(consumer, reason);
                        }
                    }
                    if let Err(error) = self.store.close() {
                        tracing::warn!(queue = self.name, %error, "closing queue storage failed");
                    }
                    let _ = reply.send(());
                    return Flow::Stop;
                }
                other => {
                    self.flush_publishes(&mut publishes).await;
                    self.flush_acks(&mut acks).await;
                    self.handle(other).await;
                }
            }
        }
        self.flush_publishes(&mut publishes).await;
        self.flush_acks(&mut acks).await;
        Flow::Continue
    }

    /// Stores a run of publishes with one append and one fsync, then confirms each.
    async fn flush_publishes(&mut self, publishes: &mut Vec<PendingPublish>) {
        if publishes.is_empty() {
            return;
        }
        let taken = std::mem::take(publishes);
        // One batch per run, unless the run is larger than a batch may be: then several, so a
        // large neighbour never fails an unrelated publish.
        let mut chunk: Vec<PendingPublish> = Vec::new();
        let mut chunk_bytes = 0usize;
        for pending in taken {
            let bytes: usize = pending.0.iter().map(message_bytes).sum();
            if !chunk.is_empty() && chunk_bytes + bytes > PUBLISH_RUN_BYTES_MAX {
                self.store_run(std::mem::take(&mut chunk)).await;
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunk.push(pending);
        }
        self.store_run(chunk).await;
    }

    async fn store_run(&mut self, run: Vec<PendingPublish>) {
        if run.is_empty() {
            return;
        }
        let messages: Vec<Message> = run
            .iter()
            .flat_map(|(messages, _)| messages.iter().cloned())
            .collect();
        let outcome = self.publish(messages).await;
        for (_, reply) in run {
            let _ = reply.send(outcome.clone());
        }
    }

    /// Settles what a run of acks released with one append and one fsync, then answers each.
    async fn flush_acks(&mut self, acks: &mut Vec<PendingAck>) {
        if acks.is_empty() {
            return;
        }
        let taken = std::mem::take(acks);
        let mut actions = Vec::new();
        let mut replies = Vec::new();
        for (outcome, reply) in taken {
            match outcome {
                Ok(more) => {
                    actions.extend(more);
                    replies.push((Ok(()), reply));
                }
                Err(error) => replies.push((Err(error), reply)),
            }
        }
        let applied = self.apply(actions).await;
        for (outcome, reply) in replies {
            let answer = match (outcome, &applied) {
                (Err(error), _) => Err(error),
                (Ok(()), Err(error)) => Err(error.clone()),
                (Ok(()), Ok(())) => Ok(()),
            };
            let _ = reply.send(answer);
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Publish(messages, reply) => {
                let outcome = self.publish(messages).await;
                let _ = reply.send(outcome);
            }
            Command::Subscribe(consumer, prefetch, sender) => {
                self.state.add_consumer(consumer, prefetch);
                self.consumers.insert(consumer, sender);
            }
            Command::Cancel(consumer, reply) => {
                self.consumers.remove(&consumer);
                let _ = reply.send(());
                let actions = self.state.remove_consumer(consumer);
                if let Err(error) = self.apply(actions).await {
                    tracing::warn!(queue = self.name, %error, "returning a cancelled consumer's deliveries failed");
                }
            }
            Command::Ack(consumer, tag, scope, reply) => {
                let outcome = self.state.ack(consumer, tag, scope).map_err(delivery_error);
                let outcome = match outcome {
                    Ok(actions) => self.apply(actions).await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(outcome);
            }
            Command::Nack(consumer, tag, scope, requeue, reply) => {
                let outcome = match self
                    .state
                    .nack(consumer, tag, scope, requeue)
                    .map_err(delivery_error)
                {
                    Ok(actions) => self.apply(actions).await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(outcome);
            }
            Command::Settle(ids) => {
                if let Err(error) = self.settle(&ids).await {
                    tracing::warn!(queue = self.name, %error, "settling dead-lettered messages failed");
                }
            }
            Command::Purge(reply) => {
                let mut ids = self.state.purge();
                ids.extend(self.delays.clear());
                let count = ids.len() as u64;
                let _ = self.settle(&ids).await;
                let _ = reply.send(count);
            }
            Command::Stats(reply) => {
                let _ = reply.send(QueueStats {
                    name: self.name.clone(),
                    ready: (self.state.ready_count() + self.delays.len()) as u64,
                    unacked: self.state.unacked_count() as u64,
                    consumers: self.consumers.len() as u64,
                    durability: Durability::default(),
                });
            }
            Command::Stop(..) => {}
        }
    }

    async fn publish(&mut self, messages: Vec<Message>) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let mut builder = BatchBuilder::new(now);
        for message in &messages {
            builder
                .push(&NewRecord {
                    timestamp_ms: now,
                    key: Some(Bytes::copy_from_slice(message.routing_key.as_bytes())),
                    value: Some(message.body.clone()),
                    headers: message.headers.clone(),
                })
                .map_err(|error| QueueError::Invalid(error.to_string()))?;
        }
        let mut bytes = BytesMut::new();
        builder.build_into(&mut bytes);
        let storage = |error: crate::storage::Error| QueueError::Storage(error.to_string());
        // Check the length limit before storing, so a refused message is never stored.
        let limits = self.state.limits();
        if let (Some(max_length), Overflow::RejectPublish) = (limits.max_length, limits.overflow) {
            if self.state.ready_count() as u64 >= max_length {
                return Err(QueueError::QueueFull {
                    queue: self.name.clone(),
                    max_length,
                });
            }
        }
        let appended = self.store.publish(&mut bytes).map_err(storage)?;
        crate::append::durable(self.store.messages(), appended.next_offset)
            .await
            .map_err(storage)?;
        let mut actions = Vec::new();
        for (index, message) in messages.iter().enumerate() {
            let id = appended.base_offset + index as i64;
            if let Some(due) = header_number(&message.headers, DUE_HEADER).filter(|due| *due > now)
            {
                self.delays.insert(id, due);
                continue;
            }
            let record_ttl = header_number(&message.headers, EXPIRATION_HEADER)
                .and_then(|ttl| u64::try_from(ttl).ok());
            let meta = MessageMeta {
                id,
                expires_at_ms: record_ttl
                    .or(self.ttl_ms)
                    .map(|ttl| now.saturating_add(ttl as i64)),
                delivery_count: 0,
            };
            match self.state.enqueue(meta) {
                Ok(more) => actions.extend(more),
                Err(DeliveryError::QueueFull { max_length }) => {
                    // Stored but refused: settle it so it never comes back.
                    let _ = self.settle(&[id]).await;
                    return Err(QueueError::QueueFull {
                        queue: self.name.clone(),
                        max_length,
                    });
                }
                Err(error) => return Err(delivery_error(error)),
            }
        }
        self.apply(actions).await
    }

    /// Moves due delayed messages to ready, expires, times out acks, and delivers.
    async fn tick(&mut self) {
        let now = self.clock.now_ms();
        let mut actions = std::mem::take(&mut self.pending_actions);
        for id in self.delays.take_due(now) {
            match self.store.read(id) {
                Ok(Some(record)) => {
                    let meta = self.meta(id, &record);
                    match self.state.enqueue(meta) {
                        Ok(more) => actions.extend(more),
                        // A due message finding a reject-publish queue full is dead-lettered
                        // rather than left stranded (neither ready nor settled).
                        Err(_) => actions.push(Action::DeadLetter(id, DeadLetterReason::MaxLength)),
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(queue = self.name, id, %error, "cannot read a due delayed message")
                }
            }
        }
        actions.extend(self.state.check_ack_timeouts(now));
        actions.extend(self.state.dispatch(now));
        let _ = self.apply(actions).await;
        if now.saturating_sub(self.last_compaction_ms) >= COMPACTION_INTERVAL_MS {
            self.last_compaction_ms = now;
            // Deletes segments whose messages are all settled ("fully settled segments are
            // deleted") and ack-log segments the checkpoint covers.
            // A checkpoint write with fsync and file deletes: on the blocking pool, while
            // this queue waits (STYLE.md §4).
            let store = Arc::clone(&self.store);
            let counts = self.state.delivery_counts();
            let compacted = tokio::task::spawn_blocking(move || store.compact(&counts, now)).await;
            match compacted {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(queue = self.name, %error, "queue compaction failed")
                }
                Err(error) => {
                    tracing::warn!(queue = self.name, %error, "queue compaction task failed")
                }
            }
        }
    }

    /// Carries out actions: deliveries go to consumers, settled and dead-lettered messages
    /// are recorded durably.
    async fn apply(&mut self, actions: Vec<Action>) -> Result<(), QueueError> {
        let mut settled = Vec::new();
        let mut returned = Vec::new();
        for action in actions {
            match action {
                Action::Deliver(delivery) => {
                    let record = match self.store.read(delivery.message) {
                        Ok(Some(record)) => record,
                        _ => continue,
                    };
                    let delivered = Delivered {
                        consumer: delivery.consumer,
                        tag: delivery.tag,
                        redelivered: delivery.redelivered,
                        record,
                    };
                    // The channel holds the consumer's prefetch window plus one, so it is never
                    // full here; an error means the consumer is gone.
                    let gone = match self.consumers.get(&delivery.consumer) {
                        Some(sender) => {
                            sender.try_send(ConsumerEvent::Delivery(delivered)).is_err()
                        }
                        None => true,
                    };
                    if gone {
                        // The consumer went away: its deliveries return to the queue.
                        self.consumers.remove(&delivery.consumer);
                        let returned = self.state.remove_consumer(delivery.consumer);
                        Box::pin(self.apply(returned)).await?;
                    }
                }
                Action::Settle(id) => settled.push(id),
                Action::DeadLetter(id, reason) => {
                    // With a dead-letter exchange the message is settled only once its copy
                    // is stored there (the republish settles it); without one it is dropped.
                    if !self.dead_letter(id, reason).await {
                        settled.push(id);
                    }
                }
                Action::Cancel(consumer, reason) => {
                    tracing::warn!(queue = self.name, consumer, reason, "consumer cancelled");
                    self.cancel_consumer(consumer, CancelReason::AckTimeout);
                }
                Action::Returned(id, deliveries) => returned.push((id, deliveries)),
            }
        }
        if let Err(error) = self
            .store
            .record_delivery_counts(&returned, self.clock.now_ms())
        {
            // The counts only tighten the delivery limit after a restart; the messages
            // themselves are safe.
            tracing::warn!(queue = self.name, %error, "recording delivery counts failed");
        }
        self.settle(&settled).await
    }

    /// Cancels a consumer on the broker's initiative (its deliveries are already back in the
    /// queue): tells it why, then forgets it here and in the manager's registry.
    fn cancel_consumer(&mut self, consumer: ConsumerId, reason: CancelReason) {
        if let Some(sender) = self.consumers.remove(&consumer) {
            // The channel keeps a slot beyond the window for this; a closed channel means
            // the consumer is gone and there is nobody to tell.
            let _ = sender.try_send(ConsumerEvent::Cancelled(reason));
        }
        if reason == CancelReason::QueueDeleted {
            // The delete already dropped the queue's consumers from the registry.
            return;
        }
        if let Some(manager) = self.manager.upgrade() {
            let queue = self.name.clone();
            // Spawned: an auto-delete stops this very task and waits for it.
            tokio::spawn(async move { manager.forget_consumer(&queue, consumer).await });
        }
    }

    async fn settle(&mut self, ids: &[i64]) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let storage = |error: crate::storage::Error| QueueError::Storage(error.to_string());
        if let Some(appended) = self.store.settle(ids, now).map_err(storage)? {
            let durable = crate::append::durable(self.store.acks(), appended.next_offset);
            // The settled messages freed prefetch room: fill it while the settle record is
            // fsynced, so consumers are not idle for the fsync. Those deliveries are of
            // other, already durable messages.
            let more = self.state.dispatch(now);
            let delivered = if more.is_empty() {
                Ok(())
            } else {
                Box::pin(self.apply(more)).await
            };
            // Whatever happened to those deliveries, these settlements are confirmed once
            // durable (else compaction's low-water mark would stick until a restart).
            durable.await.map_err(storage)?;
            self.store.confirm_settled(ids);
            delivered?;
        }
        Ok(())
    }

    /// Republishes a dead-lettered message; true if a republish was started (it settles the
    /// message when the copy is stored).
    async fn dead_letter(&mut self, id: i64, reason: DeadLetterReason) -> bool {
        let Some((exchange, routing_key)) = self.dead_letter.clone() else {
            return false;
        };
        let Some(manager) = self.manager.upgrade() else {
            return false;
        };
        let Ok(Some(record)) = self.store.read(id) else {
            return false;
        };
        let original_key = record
            .key
            .as_ref()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .unwrap_or_default();
        let original_exchange = header_value(&record.headers, EXCHANGE_HEADER)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_default();
        let mut headers: Vec<Header> = record
            .headers
            .into_iter()
            .filter(|header| {
                !matches!(
                    header.key.as_str(),
                    EXCHANGE_HEADER | DELAY_HEADER | DUE_HEADER
                ) && !header.key.starts_with("x-death-")
            })
            .collect();
        for (key, value) in [
            ("x-death-reason", reason.name().to_string()),
            ("x-death-queue", self.name.clone()),
            ("x-death-exchange", original_exchange),
            ("x-death-routing-key", original_key.clone()),
        ] {
            headers.push(Header {
                key: key.to_string(),
                value: Some(Bytes::from(value)),
            });
        }
        let message = Message {
            routing_key: routing_key.unwrap_or(original_key),
            body: record.value.unwrap_or_default(),
            headers,
        };
        // Dead-lettering runs on its own task: the target may be this very queue.
        let queue = self.name.clone();
        tokio::spawn(async move {
            if manager.dead_letter(&exchange, message).await {
                if let Ok(sender) = manager.sender(&queue) {
                    let _ = sender.send(Command::Settle(vec![id])).await;
                }
            }
        });
        true
    }
}

/// Bytes a message takes in a record batch, roughly (body, key, headers).
fn message_bytes(message: &Message) -> usize {
    let headers: usize = message
        .headers
        .iter()
        .map(|header| header.key.len() + header.value.as_ref().map_or(0, Bytes::len) + 16)
        .sum();
    message.body.len() + message.routing_key.len() + headers + 32
}

/// Whether a queue task goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

fn delivery_error(error: DeliveryError) -> QueueError {
    match error {
        DeliveryError::UnknownDeliveryTag { tag } => QueueError::UnknownDeliveryTag(tag),
        // A cancelled consumer's deliveries went back to the queue: its tags are unknown.
        DeliveryError::UnknownConsumer { tag, .. } => QueueError::UnknownDeliveryTag(tag),
        DeliveryError::QueueFull { max_length } => QueueError::QueueFull {
            queue: String::new(),
            max_length,
        },
    }
}

/// Parses `k=v` header pairs.
pub fn parse_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>, QueueError> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .ok_or_else(|| QueueError::Invalid(format!("{pair:?} is not key=value")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::real_env;

    #[test]
    fn an_older_definitions_snapshot_never_overwrites_a_newer_one() {
        // Goal: definitions are written outside the registry lock, so two writers may race;
        // the file must end with the newest state. Method: take two snapshots, write the
        // newer first, then the older, and reopen.
        let dir = tempfile::tempdir().expect("temp dir");
        let (env, _clock) = real_env(1_000);
        let manager = QueueManager::open(dir.path(), env.clone()).expect("open");
        manager
            .declare_exchange("first", ExchangeKind::Fanout, Durability::Durable)
            .unwrap();
        let older = manager.snapshot(&manager.lock());
        manager.lock().exchanges.insert(
            "second".to_string(),
            (Durability::Durable, Bindings::new(ExchangeKind::Topic)),
        );
        let newer = manager.snapshot(&manager.lock());
        manager.persist(newer).unwrap();
        manager.persist(older).unwrap();
        drop(manager);
        let reopened = QueueManager::open(dir.path(), env).expect("reopen");
        let names: Vec<String> = reopened
            .list_exchanges()
            .into_iter()
            .map(|(name, ..)| name)
            .collect();
        assert!(names.contains(&"first".to_string()), "{names:?}");
        assert!(names.contains(&"second".to_string()), "{names:?}");
    }
}
