//! Queues (the RabbitMQ model): exchanges route published messages by routing key or headers
//! into queues; the broker pushes messages to consumers and waits for acks.
//!
//! - [`exchange`]: routing (direct, fanout, topic trie, headers) as pure functions.
//! - [`delivery`]: one queue's delivery state machine (prefetch, acks, requeue, limits), pure.
//! - [`delay`]: delayed delivery by due time.
//! - [`store`]: durable queue storage on the partition log with ack state and compaction.
//! - [`types`]: the public types: [`QueueError`], [`QueueArgs`], [`Message`],
//!   [`ConsumerEvent`], the publish and ack tickets, [`QueueStats`]. The ids
//!   ([`ConsumerId`], [`DeliveryTag`]) and the reasons ([`CancelReason`],
//!   [`delivery::DeadLetterReason`]) live with the state machine that hands them out, in
//!   [`delivery`].
//! - [`args`]: the queue-argument codec (`key=value` pairs to and from [`QueueArgs`]).
//! - [`definitions`]: the durable definitions file and the order of its writes.
//! - `publish`: pure message shaping: the broker's headers on a publish, the queue names
//!   an exchange routes to, the copy a dead-lettered message is republished as.
//! - `task`: the task that owns one queue (its store, delivery state, delays and
//!   consumers) and the commands it takes.
//! - `pipeline`: a queue task's appends that wait for their fsync, with the confirms and
//!   ready messages that wait on them, so the task appends the next run meanwhile.
//! - [`replicated`]: a replicated queue's writes as commands of its replicated log, and
//!   how every replica applies them to its store.
//! - [`remote`]: queues another node of the cluster leads: the proxy that forwards their
//!   commands, and the leader's side that serves them.
//! - [`manager`]: the registry (declares, bindings, deletes, exclusive and auto-delete
//!   queues) and the entry points: publish with confirms, subscribe, cancel, ack, nack,
//!   get (look without a subscription), list bindings, move (the shovel).
//!
//! The core (`core/queue_ops.rs`) maps its queue operations onto the [`QueueManager`]; the
//! manager is also exercised in-process by `broker/tests/queues.rs`. Callers outside this
//! module use the re-exports below (`crate::queue::QueueManager`, `crate::queue::QueueError`,
//! ...), not the submodules' paths.
//!
//! Words used here with one meaning each:
//! - *publish*: a message entering through an exchange and being routed to queues
//!   ([`QueueManager::publish`], [`QueueManager::publish_enqueue`], the task's
//!   `Command::Publish`).
//! - *store*: a queue task writing published messages to its message log: `flush_publishes`
//!   merges waiting publishes into runs, `store_run` stores one run and confirms it,
//!   `store_messages` builds the batch and appends it with
//!   [`store::QueueStore::append_messages`].
//! - *dead-letter*: the delivery state's decision that a message leaves its queue
//!   unconsumed ([`delivery::Action::DeadLetter`] with a [`delivery::DeadLetterReason`]).
//!   The task's `forward_dead_letter` builds the message's copy with `x-death-*` headers and
//!   hands it to the queue's one forwarder task, which republishes the copies in order
//!   (`QueueManager::republish_dead_letters`) through the queue's dead-letter exchange; the
//!   original is settled once its copy is stored.
//! - *cancel*: a consumer stops receiving; its [`CancelReason`] says who ended it (ack
//!   timeout, queue deleted, the client, its connection closing).
//! - *settle*: a message is done in its queue (acked, dead-lettered, expired, purged) and
//!   recorded so in the ack log.

pub mod args;
pub mod definitions;
pub mod delay;
pub mod delivery;
pub mod exchange;
pub mod manager;
mod pipeline;
mod publish;
mod ready;
pub mod remote;
pub mod replicated;
pub mod store;
pub(crate) mod tag_map;
mod tag_set;
mod task;
pub mod types;

pub use args::args_from_pairs;
pub use delay::DELAY_HEADER;
pub use delivery::{
    AckScope, CancelReason, ConsumerId, DeliveryTag, GetMode, Requeue, SharedPrefetch,
};
pub use manager::{BatchTicket, QueueManager, NAME_BYTES_MAX, PREFETCH_MAX};
pub use task::GET_BYTES_MAX;
pub use types::{
    AckTicket, BindingInfo, ConsumerEvent, ConsumerOptions, ConsumerPush, DeleteConditions,
    Delivered, DeliveredRun, Deliveries, Durability, GotMessage, Message, Moved, Precondition,
    PublishTicket, Published, QueueArgs, QueueError, QueueStats, SessionId, EXCHANGE_HEADER,
    EXPIRATION_HEADER,
};
