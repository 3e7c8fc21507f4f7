//! The delivery state of one queue, as a pure state machine: which messages are ready, which
//! are delivered and unacknowledged (by whom, under which delivery tag), and what happens on
//! ack, nack, reject, a consumer leaving, a TTL or a length limit.
//!
//! It does no I/O: every operation returns [`Action`]s for the queue's owning task to carry
//! out (send a delivery, mark a message settled in storage, dead-letter it). That keeps the
//! rules unit- and property-testable without a runtime (STYLE.md: pure functions, one task
//! per queue owns the state).
//!
//! Rules:
//! - Messages are delivered in id order (ids are log offsets); a message that returns to the
//!   queue goes back to its original position and is delivered with `redelivered = true`.
//! - With a `max_priority` (RabbitMQ's `x-max-priority`) the order is priority first
//!   (highest first, a priority above the maximum counting as the maximum), then id: the
//!   ready set is keyed by both, so every rule below that speaks of "the head" or "the
//!   oldest" means the oldest message of the highest priority, as in RabbitMQ's priority
//!   queues (TTL expiry and drop-head act on that head).
//! - A consumer never holds more unacknowledged deliveries than its prefetch (0: unlimited),
//!   and consumers sharing a [`SharedPrefetch`] (AMQP's basic.qos with `global`: one
//!   channel's consumers, of any queues) never hold more together than its limit.
//! - Ready messages go round-robin to consumers with room; with single-active-consumer only
//!   the oldest consumer receives.
//! - Acking or nacking an unknown (or already settled) delivery tag is an error, not a no-op.
//! - A message returned to the queue more than `delivery_limit` times is dead-lettered
//!   instead (poison message).
//! - A message whose TTL passed is dead-lettered when it reaches the head of the queue.
//! - Past `max_length` ready messages, `DropHead` dead-letters the head (after the new
//!   message joined) and `RejectPublish` refuses the new one.
//! - A get (no consumer) takes ready messages from the head: with [`GetMode::Requeue`] they
//!   stay at their places with one more delivery counted (as a delivery and a nack with
//!   requeue), with [`GetMode::Ack`] they leave the queue, with [`GetMode::Hold`] they are
//!   delivered to a holder that is never dispatched to (AMQP's basic.get with an ack).
//! - A move takes ready messages from the head up to a bound ([`DeliveryState::take_head`]);
//!   the task holds them until they are stored elsewhere, and puts back those that were not
//!   ([`DeliveryState::put_back`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::queue::ready::Ready;
use crate::queue::tag_set::TagSet;

/// A message's id: its offset in the queue's log.
pub type MessageId = i64;

/// A delivery's tag, unique per queue. Tags are handed out in increasing order from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DeliveryTag(pub u64);

/// A consumer's id, unique per queue (the manager numbers consumers across all queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerId(pub u64);

impl std::fmt::Display for DeliveryTag {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

impl std::fmt::Display for ConsumerId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

impl From<u64> for DeliveryTag {
    fn from(tag: u64) -> DeliveryTag {
        DeliveryTag(tag)
    }
}

impl From<DeliveryTag> for u64 {
    fn from(tag: DeliveryTag) -> u64 {
        tag.0
    }
}

impl From<u64> for ConsumerId {
    fn from(consumer: u64) -> ConsumerId {
        ConsumerId(consumer)
    }
}

impl From<ConsumerId> for u64 {
    fn from(consumer: ConsumerId) -> u64 {
        consumer.0
    }
}

/// What to do when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Dead-letter the oldest ready message to make room.
    #[default]
    DropHead,
    /// Refuse the new message.
    RejectPublish,
    /// Refuse the new message and dead-letter it (reason `maxlen`).
    RejectPublishDlx,
}

/// Limits of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueLimits {
    /// Most ready messages (None: unlimited).
    pub max_length: Option<u64>,
    /// Most body bytes of ready messages (None: unlimited).
    pub max_length_bytes: Option<u64>,
    /// What happens past `max_length` or `max_length_bytes`.
    pub overflow: Overflow,
    /// Most times a message may return to the queue before it is dead-lettered.
    pub delivery_limit: Option<u32>,
    /// Only the oldest consumer receives messages.
    pub single_active_consumer: bool,
    /// A delivery unacknowledged for longer returns to the queue and its consumer is
    /// cancelled.
    pub ack_timeout_ms: Option<u64>,
    /// The highest message priority the queue orders by (RabbitMQ's `x-max-priority`):
    /// higher priorities are delivered first, FIFO within one; a message above it counts
    /// as this priority. None: every message counts as priority 0 (a plain FIFO queue).
    pub max_priority: Option<u8>,
}

/// Why a message was dead-lettered (recorded in its headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Rejected or nacked without requeue.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped from the head because the queue was full.
    MaxLength,
    /// Returned to the queue more than the delivery limit allows.
    DeliveryLimit,
}

impl DeadLetterReason {
    /// The reason as RabbitMQ names it in `x-death` headers.
    pub fn name(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::MaxLength => "maxlen",
            DeadLetterReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Why a consumer was cancelled.
///
/// Only the broker's own cancels ([`CancelReason::AckTimeout`],
/// [`CancelReason::QueueDeleted`], [`CancelReason::Unreachable`]) reach the consumer as
/// `ConsumerEvent::Cancelled`; after the others its channel just ends, since the client
/// asked for it or is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CancelReason {
    /// A delivery stayed unacknowledged past the queue's ack timeout.
    AckTimeout,
    /// The queue was deleted.
    QueueDeleted,
    /// The client cancelled the consumer.
    ClientCancelled,
    /// The connection that started the consumer closed.
    ConnectionClosed,
    /// The node that leads the queue (in a cluster) could not be reached, or stopped
    /// serving the consumer; its unacknowledged deliveries return to the queue there.
    Unreachable,
}

impl CancelReason {
    /// A sentence for logs and clients.
    pub fn describe(self) -> &'static str {
        match self {
            CancelReason::AckTimeout => {
                "a delivery stayed unacknowledged past the queue's ack timeout; it was returned to the queue"
            }
            CancelReason::QueueDeleted => "the queue was deleted",
            CancelReason::ClientCancelled => "the client cancelled it",
            CancelReason::ConnectionClosed => "its connection closed",
            CancelReason::Unreachable => {
                "the node that leads the queue could not be reached; its unacknowledged deliveries return to the queue"
            }
        }
    }
}

/// A message the state machine tracks (its body stays in storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta {
    /// Its id (log offset).
    pub id: MessageId,
    /// When it expires (ms), if it has a TTL.
    pub expires_at_ms: Option<i64>,
    /// How many times it was delivered.
    pub delivery_count: u32,
    /// Its body's size in bytes (what `max-length-bytes` counts, as RabbitMQ does).
    pub bytes: u32,
    /// Its priority as published (0 without one); [`DeliveryState::enqueue`] caps it at the
    /// queue's `max_priority` (0 in a queue without priorities).
    pub priority: u8,
}

/// One delivery to send to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The consumer.
    pub consumer: ConsumerId,
    /// The tag the consumer acks with.
    pub tag: DeliveryTag,
    /// The message.
    pub message: MessageId,
    /// True if the message was delivered before.
    pub redelivered: bool,
    /// Deliveries of the message, this one included (recorded before it is handed out, so
    /// a restart knows the message may have been delivered).
    pub delivery_count: u32,
}

/// What the owning task must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send this delivery.
    Deliver(Delivery),
    /// The message is done: mark it settled in storage.
    Settle(MessageId),
    /// Dead-letter the message (then settle it).
    DeadLetter(MessageId, DeadLetterReason),
    /// Cancel a consumer (its deliveries already returned to the queue), for this reason.
    Cancel(ConsumerId, CancelReason),
    /// The message returned to the queue after this many deliveries; recorded durably
    /// (only with a delivery limit) so the limit survives a restart.
    Returned(MessageId, u32),
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// No unacknowledged delivery has this tag for this consumer.
    UnknownDeliveryTag { tag: DeliveryTag },
    /// The consumer is not subscribed (never was, or was cancelled): `tag` is unknown too.
    UnknownConsumer {
        consumer: ConsumerId,
        tag: DeliveryTag,
    },
    /// The queue is full and refuses new messages.
    QueueFull {
        /// The limit it is at: "5 messages", "1024 bytes".
        limit: String,
    },
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::UnknownDeliveryTag { tag } => {
                write!(formatter, "unknown or already settled delivery tag {tag}")
            }
            DeliveryError::UnknownConsumer { consumer, tag } => {
                write!(
                    formatter,
                    "delivery tag {tag} is unknown: consumer {consumer} is not subscribed (cancelled?)"
                )
            }
            DeliveryError::QueueFull { limit } => {
                write!(formatter, "queue is full ({limit}) and rejects publishes")
            }
        }
    }
}

impl std::error::Error for DeliveryError {}

/// A prefetch window shared by several consumers, whatever their queues: AMQP's basic.qos
/// with `global=true`, the channel's limit across its consumers (RabbitMQ 3.x).
///
/// Each queue task takes a slot for every delivery to a consumer that shares the window
/// and gives it back when the delivery is settled or returns to its queue. The queues run
/// on different tasks, so the count is atomic and a slot is taken with a compare-and-swap:
/// the limit is never passed, even by two queues delivering at once.
#[derive(Debug, Default)]
pub struct SharedPrefetch {
    /// Most deliveries held together (0: unlimited).
    limit: AtomicU32,
    /// Deliveries held now by the consumers that share it.
    held: AtomicU32,
}

impl SharedPrefetch {
    /// Sets the limit (0: unlimited). Deliveries already held above a lowered limit stay;
    /// no more are made until the count is below it.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    /// Deliveries held now.
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::Acquire)
    }

    fn has_room(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        limit == 0 || self.held() < limit
    }

    /// Takes a slot if one is free.
    fn try_take(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let limit = self.limit.load(Ordering::Acquire);
                (limit == 0 || held < limit).then_some(held + 1)
            })
            .is_ok()
    }

    fn give_back(&self, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let _ = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(count))
            });
    }
}

/// Two handles are equal when they are the same window.
impl PartialEq for SharedPrefetch {
    fn eq(&self, other: &SharedPrefetch) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for SharedPrefetch {}

#[derive(Debug, Clone)]
struct Consumer {
    prefetch: u32,
    /// The window it shares with other consumers, if any.
    shared: Option<Arc<SharedPrefetch>>,
    tags: TagSet,
    /// Never dispatched to: a holder of messages taken with [`GetMode::Hold`], or a
    /// stopped consumer that still holds its deliveries.
    gets_only: bool,
    /// Stopped ([`DeliveryState::stop_consumer`]): removed once it holds nothing.
    stopped: bool,
    /// Consumers of a higher priority with room get messages first.
    priority: i32,
}

/// Hashes delivery tags for the unacknowledged map: tags are the broker's own sequence
/// numbers (no client picks them, so no flooding of one bucket), and a multiply spreads
/// consecutive ones over the buckets at a fraction of SipHash's cost per ack and delivery.
#[derive(Debug, Clone, Copy, Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: 2^64 / golden ratio, odd, so distinct tags stay distinct.
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Clone, Copy)]
struct Unacked {
    consumer: ConsumerId,
    meta: MessageMeta,
    delivered_ms: i64,
}

/// The delivery state of one queue.
#[derive(Debug, Clone, Default)]
pub struct DeliveryState {
    limits: QueueLimits,
    ready: Ready,
    unacked: HashMap<DeliveryTag, Unacked, BuildHasherDefault<TagHasher>>,
    consumers: BTreeMap<ConsumerId, Consumer>,
    /// The consumer that got the last delivery (round-robin continues after it).
    last_consumer: Option<ConsumerId>,
    next_tag: DeliveryTag,
}

impl DeliveryState {
    /// An empty queue with `limits`.
    pub fn new(limits: QueueLimits) -> DeliveryState {
        DeliveryState {
            limits,
            next_tag: DeliveryTag(1),
            ..DeliveryState::default()
        }
    }

    /// The queue's limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Ready messages.
    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// Delivered, unacknowledged messages.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    /// Unacknowledged deliveries of one consumer.
    pub fn consumer_unacked(&self, consumer: ConsumerId) -> usize {
        self.consumers
            .get(&consumer)
            .map_or(0, |state| state.tags.len())
    }

    /// Adds a message (new, or recovered from storage at start). Returns what a full queue
    /// makes necessary.
    ///
    /// # Errors
    /// `QueueFull` with `Overflow::RejectPublish` when the queue is at `max_length`.
    pub fn enqueue(&mut self, meta: MessageMeta) -> Result<Vec<Action>, DeliveryError> {
        let meta = MessageMeta {
            priority: meta.priority.min(self.limits.max_priority.unwrap_or(0)),
            ..meta
        };
        if let Some(limit) = self.overflowed_by(u64::from(meta.bytes)) {
            if self.limits.overflow != Overflow::DropHead {
                return Err(DeliveryError::QueueFull { limit });
            }
        }
        // Drop-head as RabbitMQ does it: the message joins the queue, then heads are
        // dead-lettered while the queue is over its limit. The head is the oldest message
        // of the highest priority, so in a priority queue a newcomer of the highest
        // priority can be the one that goes (RabbitMQ's documented behaviour), and a
        // message larger than the limit goes itself, after everything older.
        self.ready.insert(meta);
        let mut actions = Vec::new();
        while self.over_limit() {
            let Some(head) = self.ready.pop_first() else {
                break;
            };
            actions.push(Action::DeadLetter(head.id, DeadLetterReason::MaxLength));
        }
        Ok(actions)
    }

    /// True if the ready messages are past `max-length` or `max-length-bytes`.
    fn over_limit(&self) -> bool {
        self.limits
            .max_length
            .is_some_and(|max_length| self.ready.len() as u64 > max_length)
            || self
                .limits
                .max_length_bytes
                .is_some_and(|max_bytes| self.ready.bytes() > max_bytes)
    }

    /// The limit (`max-length` or `max-length-bytes`) one more ready message of `bytes`
    /// would pass, described for an error, if any.
    pub fn overflowed_by(&self, bytes: u64) -> Option<String> {
        if let Some(max_length) = self.limits.max_length {
            if self.ready.len() as u64 >= max_length {
                return Some(format!("{max_length} messages"));
            }
        }
        if let Some(max_bytes) = self.limits.max_length_bytes {
            if self.ready.bytes() + bytes > max_bytes {
                return Some(format!("{max_bytes} bytes"));
            }
        }
        None
    }

    /// The ready messages' body bytes.
    pub fn ready_bytes(&self) -> u64 {
        self.ready.bytes()
    }

    /// Subscribes a consumer with a prefetch window (0: unlimited).
    pub fn add_consumer(&mut self, consumer: ConsumerId, prefetch: u32) {
        self.add_consumer_with_priority(consumer, prefetch, 0);
    }

    /// Subscribes a consumer with a prefetch window and a priority: messages go to the
    /// consumers of the highest priority that have room, round-robin among them (AMQP's
    /// consumer priorities; a single active consumer ignores them).
    pub fn add_consumer_with_priority(
        &mut self,
        consumer: ConsumerId,
        prefetch: u32,
        priority: i32,
    ) {
        self.add_consumer_sharing(consumer, prefetch, priority, None);
    }

    /// Subscribes a consumer as [`add_consumer_with_priority`](Self::add_consumer_with_priority)
    /// does, which also counts its deliveries in a window it shares with other consumers.
    pub fn add_consumer_sharing(
        &mut self,
        consumer: ConsumerId,
        prefetch: u32,
        priority: i32,
        shared: Option<Arc<SharedPrefetch>>,
    ) {
        self.consumers.insert(
            consumer,
            Consumer {
                prefetch,
                shared,
                tags: TagSet::default(),
                gets_only: false,
                stopped: false,
                priority,
            },
        );
    }

    /// Stops dispatching to a consumer that keeps its unacknowledged deliveries (AMQP's
    /// basic.cancel): they are still acked or nacked under its id, and return to the queue
    /// if it is removed. It goes by itself once it holds nothing.
    pub fn stop_consumer(&mut self, consumer: ConsumerId) {
        let Some(state) = self.consumers.get_mut(&consumer) else {
            return;
        };
        if state.tags.is_empty() {
            self.consumers.remove(&consumer);
        } else {
            state.gets_only = true;
            state.stopped = true;
        }
        if self.last_consumer == Some(consumer) {
            self.last_consumer = None;
        }
    }

    /// Removes a consumer (cancelled or disconnected): every delivery it did not ack returns
    /// to the queue at its original position, marked redelivered.
    pub fn remove_consumer(&mut self, consumer: ConsumerId) -> Vec<Action> {
        let Some(state) = self.consumers.remove(&consumer) else {
            return Vec::new();
        };
        if self.last_consumer == Some(consumer) {
            self.last_consumer = None;
        }
        if let Some(shared) = &state.shared {
            shared.give_back(state.tags.len());
        }
        let mut actions = Vec::new();
        for tag in state.tags.iter() {
            if let Some(unacked) = self.unacked.remove(&tag) {
                self.requeue(unacked.meta, &mut actions);
            }
        }
        actions
    }

    fn requeue(&mut self, meta: MessageMeta, actions: &mut Vec<Action>) {
        let returned = meta.delivery_count;
        if self
            .limits
            .delivery_limit
            .is_some_and(|limit| returned > limit)
        {
            actions.push(Action::DeadLetter(meta.id, DeadLetterReason::DeliveryLimit));
        } else {
            if self.limits.delivery_limit.is_some() {
                actions.push(Action::Returned(meta.id, returned));
            }
            self.ready.insert(meta);
        }
    }

    /// Deliveries so far of every message delivered at least once and not settled, ready or
    /// unacknowledged (a delivery in flight counts: after a restart the message may have
    /// been delivered, and comes back redelivered). For the store's checkpoint of delivery
    /// counts.
    pub fn delivery_counts(&self) -> Vec<(MessageId, u32)> {
        let ready = self
            .ready
            .iter()
            .filter(|meta| meta.delivery_count > 0)
            .map(|meta| (meta.id, meta.delivery_count));
        let unacked = self
            .unacked
            .values()
            .map(|unacked| (unacked.meta.id, unacked.meta.delivery_count));
        ready.chain(unacked).collect()
    }

    /// The tags `tag` covers for `consumer`: just it, or with `multiple` every tag up to it.
    fn covered(
        &self,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
    ) -> Result<Vec<DeliveryTag>, DeliveryError> {
        let state = self
            .consumers
            .get(&consumer)
            .ok_or(DeliveryError::UnknownConsumer { consumer, tag })?;
        if !state.tags.contains(tag) {
            return Err(DeliveryError::UnknownDeliveryTag { tag });
        }
        Ok(if scope == AckScope::Multiple {
            state.tags.up_to(tag).collect()
        } else {
            vec![tag]
        })
    }

    fn take(&mut self, consumer: ConsumerId, tag: DeliveryTag) -> Option<Unacked> {
        if let Some(state) = self.consumers.get_mut(&consumer) {
            if state.tags.remove(tag) {
                if let Some(shared) = &state.shared {
                    shared.give_back(1);
                }
            }
            if state.stopped && state.tags.is_empty() {
                self.consumers.remove(&consumer);
            }
        }
        self.unacked.remove(&tag)
    }

    /// Acknowledges `tag` (and with `multiple`, every earlier tag of the consumer).
    ///
    /// # Errors
    /// `UnknownDeliveryTag` or `UnknownConsumer`; nothing changes then.
    pub fn ack(
        &mut self,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
    ) -> Result<Vec<Action>, DeliveryError> {
        let tags = self.covered(consumer, tag, scope)?;
        Ok(tags
            .into_iter()
            .filter_map(|tag| self.take(consumer, tag))
            .map(|unacked| Action::Settle(unacked.meta.id))
            .collect())
    }

    /// Negatively acknowledges: with `requeue` the messages return to the queue (redelivered
    /// later), without it they are dead-lettered as rejected. `reject` is a nack of one tag.
    ///
    /// # Errors
    /// `UnknownDeliveryTag` or `UnknownConsumer`; nothing changes then.
    pub fn nack(
        &mut self,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
        requeue: Requeue,
    ) -> Result<Vec<Action>, DeliveryError> {
        let tags = self.covered(consumer, tag, scope)?;
        let mut actions = Vec::new();
        for tag in tags {
            let Some(unacked) = self.take(consumer, tag) else {
                continue;
            };
            match requeue {
                Requeue::Yes => self.requeue(unacked.meta, &mut actions),
                Requeue::No => actions.push(Action::DeadLetter(
                    unacked.meta.id,
                    DeadLetterReason::Rejected,
                )),
            }
        }
        Ok(actions)
    }

    /// Delivers ready messages to consumers with room, round-robin, oldest message first;
    /// dead-letters expired messages it meets at the head.
    pub fn dispatch(&mut self, now_ms: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(meta) = self.ready.first() {
            let id = meta.id;
            if meta.expires_at_ms.is_some_and(|expires| expires <= now_ms) {
                self.ready.remove(&meta);
                actions.push(Action::DeadLetter(id, DeadLetterReason::Expired));
                continue;
            }
            let Some(consumer) = self.next_consumer_with_room() else {
                break;
            };
            let shared = self
                .consumers
                .get(&consumer)
                .and_then(|state| state.shared.as_ref());
            if shared.is_some_and(|shared| !shared.try_take()) {
                // Another queue took the window's last slot since `has_room` looked; the
                // next dispatch (at the latest the queue's next tick) tries again.
                break;
            }
            self.ready.remove(&meta);
            let tag = self.next_tag;
            self.next_tag = DeliveryTag(tag.0 + 1);
            let delivered = MessageMeta {
                delivery_count: meta.delivery_count + 1,
                ..meta
            };
            self.unacked.insert(
                tag,
                Unacked {
                    consumer,
                    meta: delivered,
                    delivered_ms: now_ms,
                },
            );
            if let Some(state) = self.consumers.get_mut(&consumer) {
                state.tags.insert(tag);
            }
            self.last_consumer = Some(consumer);
            actions.push(Action::Deliver(Delivery {
                consumer,
                tag,
                message: id,
                redelivered: meta.delivery_count > 0,
                delivery_count: delivered.delivery_count,
            }));
        }
        actions
    }

    fn has_room(&self, consumer: ConsumerId) -> bool {
        self.consumers.get(&consumer).is_some_and(|state| {
            !state.gets_only
                && (state.prefetch == 0 || (state.tags.len() as u32) < state.prefetch)
                && state.shared.as_ref().is_none_or(|shared| shared.has_room())
        })
    }

    fn next_consumer_with_room(&self) -> Option<ConsumerId> {
        if self.limits.single_active_consumer {
            let (&active, _) = self.consumers.iter().find(|(_, state)| !state.gets_only)?;
            return self.has_room(active).then_some(active);
        }
        let best = self
            .consumers
            .iter()
            .filter(|(id, _)| self.has_room(**id))
            .map(|(_, state)| state.priority)
            .max()?;
        let after = self.last_consumer.unwrap_or(ConsumerId(u64::MIN));
        let ordered = self
            .consumers
            .range(ConsumerId(after.0.saturating_add(1))..)
            .chain(self.consumers.range(..=after));
        ordered
            .filter(|(_, state)| state.priority == best)
            .map(|(id, _)| *id)
            .find(|id| self.has_room(*id))
    }

    /// Returns deliveries unacknowledged past the ack timeout to the queue and cancels their
    /// consumers (a stuck consumer).
    pub fn check_ack_timeouts(&mut self, now_ms: i64) -> Vec<Action> {
        let Some(timeout) = self.limits.ack_timeout_ms else {
            return Vec::new();
        };
        let stuck: BTreeSet<ConsumerId> = self
            .unacked
            .values()
            .filter(|unacked| now_ms - unacked.delivered_ms > timeout as i64)
            .map(|unacked| unacked.consumer)
            .collect();
        let mut actions = Vec::new();
        for consumer in stuck {
            actions.extend(self.remove_consumer(consumer));
            actions.push(Action::Cancel(consumer, CancelReason::AckTimeout));
        }
        actions
    }

    /// Gives back the shared-window slots of every delivery still held: the queue is
    /// deleted or the broker stops, so those deliveries will never be settled here.
    pub fn close(&mut self) {
        for state in self.consumers.values() {
            if let Some(shared) = &state.shared {
                shared.give_back(state.tags.len());
            }
        }
        self.consumers.clear();
        self.unacked.clear();
    }

    /// Removes every ready message (unacknowledged ones stay with their consumers).
    pub fn purge(&mut self) -> Vec<MessageId> {
        self.ready.take_all()
    }

    /// Takes up to `count` ready messages from the head for a get, without a consumer.
    /// Expired messages met at the head are dead-lettered and not returned, as `dispatch`
    /// does. With [`GetMode::Requeue`] each message stays at its place with one more
    /// delivery counted, so it is marked redelivered next time (past the delivery limit it
    /// is dead-lettered instead, as after a nack with requeue); with [`GetMode::Ack`] it
    /// leaves the queue (`Settle`); with [`GetMode::Hold`] it is delivered to the holder
    /// (registered on first use, never dispatched to) under a new tag, to be acked or nacked
    /// as a consumer's delivery, and returns to the queue if the holder is removed.
    pub fn get(&mut self, count: usize, now_ms: i64, mode: GetMode) -> (Vec<Got>, Vec<Action>) {
        let mut got = Vec::new();
        let mut actions = Vec::new();
        let mut after = None;
        while got.len() < count {
            let (next, more) = self.get_after(after.as_ref(), now_ms, mode);
            actions.extend(more);
            let Some(next) = next else {
                break;
            };
            after = Some(next.before);
            got.push(next);
        }
        (got, actions)
    }

    /// One step of [`get`](Self::get): the next ready message in delivery order after
    /// `after` (a previous step's `Got::before`; none: from the head), so a caller can stop between messages (a byte bound) without getting a
    /// requeued message twice.
    pub fn get_after(
        &mut self,
        after: Option<&MessageMeta>,
        now_ms: i64,
        mode: GetMode,
    ) -> (Option<Got>, Vec<Action>) {
        let mut actions = Vec::new();
        loop {
            let Some(meta) = self.ready.first_after(after) else {
                return (None, actions);
            };
            let id = meta.id;
            self.ready.remove(&meta);
            if meta.expires_at_ms.is_some_and(|expires| expires <= now_ms) {
                actions.push(Action::DeadLetter(id, DeadLetterReason::Expired));
                continue;
            }
            let counted = MessageMeta {
                delivery_count: meta.delivery_count + 1,
                ..meta
            };
            let mut tag = None;
            match mode {
                GetMode::Ack => actions.push(Action::Settle(id)),
                GetMode::Requeue => self.requeue(counted, &mut actions),
                GetMode::Hold(holder) => tag = Some(self.hold(holder, counted, now_ms)),
            }
            let got = Got {
                message: id,
                redelivered: meta.delivery_count > 0,
                delivery_count: counted.delivery_count,
                before: meta,
                tag,
            };
            return (Some(got), actions);
        }
    }

    /// Records `meta` as delivered to `holder` (registered as a gets-only consumer if new).
    fn hold(&mut self, holder: ConsumerId, meta: MessageMeta, now_ms: i64) -> DeliveryTag {
        let tag = self.next_tag;
        self.next_tag = DeliveryTag(tag.0 + 1);
        self.unacked.insert(
            tag,
            Unacked {
                consumer: holder,
                meta,
                delivered_ms: now_ms,
            },
        );
        self.consumers
            .entry(holder)
            .or_insert_with(|| Consumer {
                prefetch: 0,
                shared: None,
                tags: TagSet::default(),
                gets_only: true,
                stopped: false,
                priority: 0,
            })
            .tags
            .insert(tag);
        tag
    }

    /// Forgets a held message without settling or requeueing it (a get that failed puts
    /// it back with [`put_back`](Self::put_back)).
    pub fn unhold(&mut self, holder: ConsumerId, tag: DeliveryTag) {
        self.take(holder, tag);
    }

    /// The id of the newest ready message: the bound of a move, so that messages arriving
    /// during the move are not chased.
    pub fn last_ready_id(&self) -> Option<MessageId> {
        self.ready.last_id()
    }

    /// Takes the oldest ready message if its id is at most `up_to` (for a move). The caller
    /// holds it until it is stored elsewhere, then settles it or hands it to `put_back`.
    pub fn take_head(&mut self, up_to: MessageId) -> Option<MessageMeta> {
        let head = self.ready.first_up_to(up_to)?;
        self.ready.remove(&head)
    }

    /// Returns messages taken by `take_head` to their places, unchanged (not redelivered:
    /// nobody saw them).
    pub fn put_back(&mut self, messages: impl IntoIterator<Item = MessageMeta>) {
        for meta in messages {
            self.ready.insert(meta);
        }
    }
}

/// What a get does with the messages it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetMode {
    /// They stay in the queue at their places, marked redelivered from then on.
    Requeue,
    /// They leave the queue (settled).
    Ack,
    /// They are delivered to this holder (a consumer id of the caller's session that is
    /// never dispatched to), to be acked, nacked or returned with its other deliveries.
    Hold(ConsumerId),
}

/// A message a get returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    /// The message.
    pub message: MessageId,
    /// True if it was delivered (or got) before this get.
    pub redelivered: bool,
    /// Deliveries of the message, this get included (recorded so a restart keeps
    /// `redelivered`).
    pub delivery_count: u32,
    /// The message as it was before the get (to put it back if the get fails).
    pub before: MessageMeta,
    /// Its delivery tag, with [`GetMode::Hold`].
    pub tag: Option<DeliveryTag>,
}

/// Which deliveries an ack or nack covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckScope {
    /// Only the named delivery tag.
    Single,
    /// The named tag and every earlier unsettled tag of the same consumer.
    Multiple,
}

/// Whether a nacked message returns to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Back to the queue, redelivered later.
    Yes,
    /// Dead-lettered (or dropped without a dead-letter exchange).
    No,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: MessageId) -> MessageMeta {
        MessageMeta {
            id,
            expires_at_ms: None,
            delivery_count: 0,
            bytes: 10,
            priority: 0,
        }
    }

    fn queue_with(limits: QueueLimits, ids: std::ops::Range<i64>) -> DeliveryState {
        let mut state = DeliveryState::new(limits);
        for id in ids {
            state.enqueue(message(id)).unwrap();
        }
        state
    }

    fn deliveries(actions: &[Action]) -> Vec<Delivery> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Deliver(delivery) => Some(*delivery),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn prefetch_bounds_unacked_deliveries() {
        let mut state = queue_with(QueueLimits::default(), 0..10);
        state.add_consumer(ConsumerId(1), 3);
        let first = deliveries(&state.dispatch(0));
        assert_eq!(
            first.iter().map(|d| d.message).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(state.dispatch(0).is_empty());
        state
            .ack(ConsumerId(1), first[0].tag, AckScope::Single)
            .unwrap();
        assert_eq!(deliveries(&state.dispatch(0)).len(), 1);
        assert_eq!(state.consumer_unacked(ConsumerId(1)), 3);
    }

    #[test]
    fn consumers_receive_round_robin() {
        let mut state = queue_with(QueueLimits::default(), 0..6);
        state.add_consumer(ConsumerId(1), 0);
        state.add_consumer(ConsumerId(2), 0);
        let consumers: Vec<ConsumerId> = deliveries(&state.dispatch(0))
            .iter()
            .map(|d| d.consumer)
            .collect();
        assert_eq!(consumers, [1, 2, 1, 2, 1, 2].map(ConsumerId).to_vec());
    }

    #[test]
    fn nack_with_requeue_redelivers_in_original_position() {
        let mut state = queue_with(QueueLimits::default(), 0..3);
        state.add_consumer(ConsumerId(1), 1);
        let first = deliveries(&state.dispatch(0))[0];
        state
            .nack(ConsumerId(1), first.tag, AckScope::Single, Requeue::Yes)
            .unwrap();
        let again = deliveries(&state.dispatch(0))[0];
        assert_eq!(again.message, 0);
        assert!(again.redelivered);
        assert!(!first.redelivered);
    }

    #[test]
    fn a_departed_consumers_deliveries_go_to_another() {
        let mut state = queue_with(QueueLimits::default(), 0..4);
        state.add_consumer(ConsumerId(1), 2);
        state.add_consumer(ConsumerId(2), 2);
        let given = deliveries(&state.dispatch(0));
        assert_eq!(given.len(), 4);
        state.remove_consumer(ConsumerId(1));
        let redelivered = deliveries(&state.dispatch(0));
        assert!(redelivered.is_empty(), "consumer 2 is full");
        let two: Vec<Delivery> = given
            .iter()
            .filter(|d| d.consumer == ConsumerId(2))
            .copied()
            .collect();
        state
            .ack(ConsumerId(2), two[1].tag, AckScope::Multiple)
            .unwrap();
        let redelivered = deliveries(&state.dispatch(0));
        assert_eq!(
            redelivered.iter().map(|d| d.message).collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert!(redelivered
            .iter()
            .all(|d| d.redelivered && d.consumer == ConsumerId(2)));
    }

    #[test]
    fn unknown_and_double_acks_are_errors() {
        let mut state = queue_with(QueueLimits::default(), 0..1);
        state.add_consumer(ConsumerId(1), 0);
        let delivery = deliveries(&state.dispatch(0))[0];
        assert_eq!(
            state.ack(ConsumerId(1), DeliveryTag(99), AckScope::Single),
            Err(DeliveryError::UnknownDeliveryTag {
                tag: DeliveryTag(99)
            })
        );
        assert_eq!(
            state
                .ack(ConsumerId(1), delivery.tag, AckScope::Single)
                .unwrap(),
            vec![Action::Settle(0)]
        );
        assert_eq!(
            state.ack(ConsumerId(1), delivery.tag, AckScope::Single),
            Err(DeliveryError::UnknownDeliveryTag { tag: delivery.tag })
        );
        assert_eq!(
            state.ack(ConsumerId(7), DeliveryTag(1), AckScope::Single),
            Err(DeliveryError::UnknownConsumer {
                consumer: ConsumerId(7),
                tag: DeliveryTag(1)
            })
        );
    }

    #[test]
    fn reject_without_requeue_dead_letters() {
        let mut state = queue_with(QueueLimits::default(), 0..1);
        state.add_consumer(ConsumerId(1), 0);
        let delivery = deliveries(&state.dispatch(0))[0];
        let actions = state
            .nack(ConsumerId(1), delivery.tag, AckScope::Single, Requeue::No)
            .unwrap();
        assert_eq!(
            actions,
            vec![Action::DeadLetter(0, DeadLetterReason::Rejected)]
        );
        assert_eq!(state.ready_count() + state.unacked_count(), 0);
    }

    #[test]
    fn poison_message_is_dead_lettered_past_the_delivery_limit() {
        let limits = QueueLimits {
            delivery_limit: Some(2),
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..1);
        state.add_consumer(ConsumerId(1), 0);
        let mut outcome = Vec::new();
        for _ in 0..3 {
            let delivery = deliveries(&state.dispatch(0))[0];
            outcome = state
                .nack(ConsumerId(1), delivery.tag, AckScope::Single, Requeue::Yes)
                .unwrap();
        }
        assert_eq!(
            outcome,
            vec![Action::DeadLetter(0, DeadLetterReason::DeliveryLimit)]
        );
        assert!(state.dispatch(0).is_empty());
    }

    #[test]
    fn expired_messages_are_dead_lettered_at_the_head() {
        let mut state = DeliveryState::new(QueueLimits::default());
        state
            .enqueue(MessageMeta {
                id: 0,
                expires_at_ms: Some(100),
                delivery_count: 0,
                bytes: 10,
                priority: 0,
            })
            .unwrap();
        state
            .enqueue(MessageMeta {
                id: 1,
                expires_at_ms: Some(500),
                delivery_count: 0,
                bytes: 10,
                priority: 0,
            })
            .unwrap();
        state.add_consumer(ConsumerId(1), 0);
        let actions = state.dispatch(200);
        assert_eq!(actions[0], Action::DeadLetter(0, DeadLetterReason::Expired));
        assert_eq!(deliveries(&actions)[0].message, 1);
    }

    #[test]
    fn overflow_drop_head_and_reject_publish() {
        let limits = QueueLimits {
            max_length: Some(2),
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..2);
        assert_eq!(
            state.enqueue(message(2)).unwrap(),
            vec![Action::DeadLetter(0, DeadLetterReason::MaxLength)]
        );
        assert_eq!(state.ready_count(), 2);
        let limits = QueueLimits {
            max_length: Some(2),
            overflow: Overflow::RejectPublish,
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..2);
        assert_eq!(
            state.enqueue(message(2)),
            Err(DeliveryError::QueueFull {
                limit: "2 messages".to_string()
            })
        );
        assert_eq!(state.ready_count(), 2);
    }

    #[test]
    fn max_length_bytes_counts_ready_bodies_as_they_come_and_go() {
        // Ten-byte bodies under a 25-byte limit: two fit, a third drops the head.
        let limits = QueueLimits {
            max_length_bytes: Some(25),
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..2);
        assert_eq!(state.ready_bytes(), 20);
        assert_eq!(
            state.enqueue(message(2)).unwrap(),
            vec![Action::DeadLetter(0, DeadLetterReason::MaxLength)]
        );
        assert_eq!(state.ready_bytes(), 20);
        // A delivery takes its bytes out of the ready count; a requeue brings them back.
        state.add_consumer(ConsumerId(1), 1);
        let delivered = deliveries(&state.dispatch(0))[0];
        assert_eq!(state.ready_bytes(), 10);
        state
            .nack(ConsumerId(1), delivered.tag, AckScope::Single, Requeue::Yes)
            .unwrap();
        assert_eq!(state.ready_bytes(), 20);
        // A body larger than the whole limit is dead-lettered itself.
        let huge = MessageMeta {
            bytes: 26,
            ..message(3)
        };
        assert_eq!(
            state.enqueue(huge).unwrap(),
            vec![
                Action::DeadLetter(1, DeadLetterReason::MaxLength),
                Action::DeadLetter(2, DeadLetterReason::MaxLength),
                Action::DeadLetter(3, DeadLetterReason::MaxLength),
            ]
        );
        assert_eq!(state.ready_bytes(), 0);
        assert_eq!(state.purge(), Vec::<MessageId>::new());

        let limits = QueueLimits {
            max_length_bytes: Some(25),
            overflow: Overflow::RejectPublish,
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..2);
        assert_eq!(
            state.enqueue(message(2)),
            Err(DeliveryError::QueueFull {
                limit: "25 bytes".to_string()
            })
        );
        state.purge();
        assert_eq!(state.ready_bytes(), 0);
        assert!(state.enqueue(message(3)).is_ok());
    }

    #[test]
    fn single_active_consumer_gets_everything_until_it_leaves() {
        let limits = QueueLimits {
            single_active_consumer: true,
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..4);
        state.add_consumer(ConsumerId(1), 2);
        state.add_consumer(ConsumerId(2), 2);
        assert!(deliveries(&state.dispatch(0))
            .iter()
            .all(|d| d.consumer == ConsumerId(1)));
        state.remove_consumer(ConsumerId(1));
        let next = deliveries(&state.dispatch(0));
        assert_eq!(next.len(), 2);
        assert!(next.iter().all(|d| d.consumer == ConsumerId(2)));
    }

    #[test]
    fn stuck_consumer_is_cancelled_and_its_deliveries_return() {
        let limits = QueueLimits {
            ack_timeout_ms: Some(1000),
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..2);
        state.add_consumer(ConsumerId(1), 0);
        state.dispatch(0);
        assert!(state.check_ack_timeouts(1000).is_empty());
        let actions = state.check_ack_timeouts(1001);
        assert!(actions.contains(&Action::Cancel(ConsumerId(1), CancelReason::AckTimeout)));
        assert_eq!(state.ready_count(), 2);
        assert_eq!(state.unacked_count(), 0);
    }

    #[test]
    fn get_with_requeue_leaves_messages_in_place_marked_redelivered() {
        let mut state = queue_with(QueueLimits::default(), 0..3);
        let (got, actions) = state.get(2, 0, GetMode::Requeue);
        assert_eq!(got.iter().map(|g| g.message).collect::<Vec<_>>(), [0, 1]);
        assert!(got.iter().all(|g| !g.redelivered && g.delivery_count == 1));
        assert!(actions.is_empty());
        assert_eq!(state.ready_count(), 3);
        let (again, _) = state.get(5, 0, GetMode::Requeue);
        let redelivered: Vec<bool> = again.iter().map(|g| g.redelivered).collect();
        assert_eq!(redelivered, [true, true, false]);
        state.add_consumer(ConsumerId(1), 0);
        let delivered = deliveries(&state.dispatch(0));
        assert_eq!(
            delivered.iter().map(|d| d.message).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(
            delivered[0].redelivered,
            "a got message comes back redelivered"
        );
        assert_eq!(delivered[0].delivery_count, 3);
    }

    #[test]
    fn get_with_ack_settles_and_skips_expired_head() {
        let mut state = DeliveryState::new(QueueLimits::default());
        state
            .enqueue(MessageMeta {
                expires_at_ms: Some(10),
                ..message(0)
            })
            .unwrap();
        state.enqueue(message(1)).unwrap();
        state.enqueue(message(2)).unwrap();
        let (got, actions) = state.get(1, 20, GetMode::Ack);
        assert_eq!(got.iter().map(|g| g.message).collect::<Vec<_>>(), [1]);
        assert_eq!(
            actions,
            [
                Action::DeadLetter(0, DeadLetterReason::Expired),
                Action::Settle(1)
            ]
        );
        assert_eq!(state.ready_count(), 1);
        let (empty, none) = DeliveryState::new(QueueLimits::default()).get(3, 0, GetMode::Ack);
        assert!(empty.is_empty() && none.is_empty());
    }

    #[test]
    fn get_with_requeue_counts_toward_the_delivery_limit() {
        let limits = QueueLimits {
            delivery_limit: Some(1),
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..1);
        let (_, first) = state.get(1, 0, GetMode::Requeue);
        assert_eq!(first, [Action::Returned(0, 1)]);
        let (got, second) = state.get(1, 0, GetMode::Requeue);
        assert_eq!(got.len(), 1);
        assert_eq!(
            second,
            [Action::DeadLetter(0, DeadLetterReason::DeliveryLimit)]
        );
        assert_eq!(state.ready_count(), 0);
    }

    #[test]
    fn get_with_hold_delivers_to_a_holder_that_acks_nacks_or_leaves() {
        let limits = QueueLimits {
            single_active_consumer: true,
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..4);
        let holder = ConsumerId(7);
        let (got, actions) = state.get(1, 0, GetMode::Hold(holder));
        assert!(actions.is_empty());
        let tag = got[0].tag.expect("held under a tag");
        assert_eq!(
            (got[0].message, state.ready_count(), state.unacked_count()),
            (0, 3, 1)
        );
        // Never dispatched to, and not the single active consumer.
        state.add_consumer(ConsumerId(9), 0);
        let dispatched = deliveries(&state.dispatch(0));
        assert!(dispatched.iter().all(|d| d.consumer == ConsumerId(9)));
        assert_eq!(dispatched.len(), 3);
        state.remove_consumer(ConsumerId(9));
        // Rejected without requeue: dead-lettered, as a consumer's delivery.
        let rejected = state
            .nack(holder, tag, AckScope::Single, Requeue::No)
            .unwrap();
        assert_eq!(
            rejected,
            [Action::DeadLetter(0, DeadLetterReason::Rejected)]
        );
        // Nacked with requeue: back at its place, redelivered.
        let (got, _) = state.get(1, 0, GetMode::Hold(holder));
        let tag = got[0].tag.unwrap();
        assert_eq!(got[0].message, 1);
        assert!(state
            .nack(holder, tag, AckScope::Single, Requeue::Yes)
            .unwrap()
            .is_empty());
        let (again, _) = state.get(1, 0, GetMode::Hold(holder));
        assert!(again[0].redelivered && again[0].message == 1);
        assert_eq!(
            state
                .ack(holder, again[0].tag.unwrap(), AckScope::Single)
                .unwrap(),
            [Action::Settle(1)]
        );
        // A holder that goes returns what it holds.
        state.get(1, 0, GetMode::Hold(holder));
        state.remove_consumer(holder);
        assert_eq!((state.ready_count(), state.unacked_count()), (2, 0));
    }

    #[test]
    fn stopped_consumer_keeps_its_deliveries_gets_no_more_and_goes_when_empty() {
        let limits = QueueLimits {
            single_active_consumer: true,
            ..QueueLimits::default()
        };
        let mut state = queue_with(limits, 0..4);
        state.add_consumer(ConsumerId(1), 2);
        state.add_consumer(ConsumerId(2), 2);
        let first = deliveries(&state.dispatch(0));
        assert_eq!(first.len(), 2);
        state.stop_consumer(ConsumerId(1));
        // The next consumer takes over; the stopped one still settles what it holds.
        let next = deliveries(&state.dispatch(0));
        assert!(next.iter().all(|d| d.consumer == ConsumerId(2)) && next.len() == 2);
        assert_eq!(
            state
                .ack(ConsumerId(1), first[0].tag, AckScope::Single)
                .unwrap(),
            [Action::Settle(first[0].message)]
        );
        assert_eq!(state.consumer_unacked(ConsumerId(1)), 1);
        state
            .nack(ConsumerId(1), first[1].tag, AckScope::Single, Requeue::Yes)
            .unwrap();
        // Holding nothing, it is gone: a later ack is an unknown consumer.
        assert!(state
            .ack(ConsumerId(1), first[1].tag, AckScope::Single)
            .is_err());
        assert_eq!(state.ready_count(), 1);
        // Stopped while holding nothing: gone at once.
        state.add_consumer(ConsumerId(3), 1);
        state.stop_consumer(ConsumerId(3));
        assert!(state.remove_consumer(ConsumerId(3)).is_empty());
    }

    #[test]
    fn higher_priority_consumers_with_room_get_messages_first() {
        let mut state = queue_with(QueueLimits::default(), 0..7);
        state.add_consumer_with_priority(ConsumerId(1), 10, 1);
        state.add_consumer_with_priority(ConsumerId(2), 2, 5);
        state.add_consumer_with_priority(ConsumerId(3), 2, 5);
        let got = deliveries(&state.dispatch(0));
        let to = |consumer: u64| -> Vec<MessageId> {
            got.iter()
                .filter(|d| d.consumer == ConsumerId(consumer))
                .map(|d| d.message)
                .collect()
        };
        // Round-robin between the two of priority 5 until both are full, then the rest.
        assert_eq!(
            (to(2), to(3), to(1)),
            (vec![0, 2], vec![1, 3], vec![4, 5, 6])
        );
    }

    fn prioritised(id: MessageId, priority: u8) -> MessageMeta {
        MessageMeta {
            priority,
            ..message(id)
        }
    }

    fn priority_queue(max_priority: u8, messages: &[(MessageId, u8)]) -> DeliveryState {
        let mut state = DeliveryState::new(QueueLimits {
            max_priority: Some(max_priority),
            ..QueueLimits::default()
        });
        for &(id, priority) in messages {
            state.enqueue(prioritised(id, priority)).unwrap();
        }
        state
    }

    fn delivered_ids(state: &mut DeliveryState) -> Vec<MessageId> {
        deliveries(&state.dispatch(0))
            .iter()
            .map(|delivery| delivery.message)
            .collect()
    }

    #[test]
    fn higher_priorities_are_delivered_first_fifo_within_one_and_capped_at_the_max() {
        // 7 and 9 are above the max of 5, so they count as 5, in publish order.
        let mut state = priority_queue(5, &[(0, 0), (1, 3), (2, 9), (3, 3), (4, 5), (5, 7)]);
        state.add_consumer(ConsumerId(1), 0);
        assert_eq!(delivered_ids(&mut state), [2, 4, 5, 1, 3, 0]);
    }

    #[test]
    fn without_max_priority_every_message_is_fifo() {
        let mut state = queue_with(QueueLimits::default(), 0..0);
        for (id, priority) in [(0, 0), (1, 9), (2, 4)] {
            state.enqueue(prioritised(id, priority)).unwrap();
        }
        state.add_consumer(ConsumerId(1), 0);
        assert_eq!(delivered_ids(&mut state), [0, 1, 2]);
    }

    #[test]
    fn a_requeued_message_returns_to_its_place_within_its_priority() {
        let mut state = priority_queue(9, &[(0, 1), (1, 5), (2, 5)]);
        state.add_consumer(ConsumerId(1), 1);
        let first = deliveries(&state.dispatch(0))[0];
        assert_eq!(first.message, 1);
        state.enqueue(prioritised(3, 5)).unwrap();
        state
            .nack(ConsumerId(1), first.tag, AckScope::Single, Requeue::Yes)
            .unwrap();
        state.remove_consumer(ConsumerId(1));
        state.add_consumer(ConsumerId(2), 0);
        assert_eq!(delivered_ids(&mut state), [1, 2, 3, 0]);
    }

    #[test]
    fn drop_head_in_a_priority_queue_drops_the_highest_priority_oldest() {
        // RabbitMQ's documented behaviour: the queue drops from its head, so a higher
        // priority message may go to make room for a lower one, the newcomer included.
        let mut state = DeliveryState::new(QueueLimits {
            max_priority: Some(9),
            max_length: Some(2),
            ..QueueLimits::default()
        });
        assert!(state.enqueue(prioritised(0, 1)).unwrap().is_empty());
        assert!(state.enqueue(prioritised(1, 5)).unwrap().is_empty());
        assert_eq!(
            state.enqueue(prioritised(2, 1)).unwrap(),
            [Action::DeadLetter(1, DeadLetterReason::MaxLength)]
        );
        assert_eq!(
            state.enqueue(prioritised(3, 7)).unwrap(),
            [Action::DeadLetter(3, DeadLetterReason::MaxLength)]
        );
        state.add_consumer(ConsumerId(1), 0);
        assert_eq!(delivered_ids(&mut state), [0, 2]);
    }

    #[test]
    fn expiry_and_gets_follow_priority_order() {
        let mut state = priority_queue(9, &[(0, 0), (1, 2)]);
        state
            .enqueue(MessageMeta {
                expires_at_ms: Some(5),
                ..prioritised(2, 9)
            })
            .unwrap();
        let (got, actions) = state.get(3, 10, GetMode::Requeue);
        assert_eq!(
            actions
                .iter()
                .filter(|action| matches!(action, Action::DeadLetter(2, DeadLetterReason::Expired)))
                .count(),
            1
        );
        let got: Vec<MessageId> = got.iter().map(|got| got.message).collect();
        assert_eq!(got, [1, 0], "each requeued message is got once, in order");
    }

    #[test]
    fn a_move_takes_in_priority_order_up_to_its_bound() {
        let mut state = priority_queue(9, &[(0, 0), (1, 4), (2, 2)]);
        let bound = state.last_ready_id().unwrap();
        assert_eq!(bound, 2);
        state.enqueue(prioritised(3, 9)).unwrap();
        let mut taken = Vec::new();
        while let Some(meta) = state.take_head(bound) {
            taken.push(meta.id);
        }
        assert_eq!(taken, [1, 2, 0], "the newer message 3 is not chased");
        assert_eq!(state.ready_count(), 1);
    }

    #[test]
    fn consumers_of_two_queues_sharing_a_window_never_hold_more_than_it() {
        // Goal: a channel-wide prefetch (basic.qos global) spans queues. Method: two queues'
        // states, one consumer each, sharing a window of 3.
        let shared = Arc::new(SharedPrefetch::default());
        shared.set_limit(3);
        let mut first = queue_with(QueueLimits::default(), 0..5);
        let mut second = queue_with(QueueLimits::default(), 0..5);
        first.add_consumer_sharing(ConsumerId(1), 10, 0, Some(Arc::clone(&shared)));
        second.add_consumer_sharing(ConsumerId(2), 10, 0, Some(Arc::clone(&shared)));
        let from_first = deliveries(&first.dispatch(0));
        let from_second = deliveries(&second.dispatch(0));
        assert_eq!((from_first.len(), from_second.len()), (3, 0));
        assert_eq!(shared.held(), 3);
        // An ack in the first queue frees a slot the second one takes.
        first
            .ack(ConsumerId(1), from_first[0].tag, AckScope::Single)
            .unwrap();
        assert_eq!(deliveries(&second.dispatch(0)).len(), 1);
        assert!(first.dispatch(0).is_empty());
        // A per-consumer prefetch still applies within the window.
        shared.set_limit(0);
        assert_eq!(deliveries(&second.dispatch(0)).len(), 4);
        // Deliveries returned by a departing consumer give their slots back.
        second.remove_consumer(ConsumerId(2));
        assert_eq!(shared.held(), 2);
        first.close();
        assert_eq!(shared.held(), 0);
    }

    #[test]
    fn take_head_stops_at_the_bound_and_put_back_restores_order() {
        let mut state = queue_with(QueueLimits::default(), 0..4);
        let bound = state.last_ready_id().unwrap();
        state.enqueue(message(9)).unwrap();
        let mut taken = Vec::new();
        while let Some(meta) = state.take_head(bound) {
            taken.push(meta);
        }
        assert_eq!(
            taken.iter().map(|meta| meta.id).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(state.ready_count(), 1, "the message after the bound stays");
        state.put_back(taken.into_iter().skip(2));
        state.add_consumer(ConsumerId(1), 0);
        let delivered = deliveries(&state.dispatch(0));
        assert_eq!(
            delivered.iter().map(|d| d.message).collect::<Vec<_>>(),
            [2, 3, 9]
        );
        assert!(delivered.iter().all(|d| !d.redelivered));
    }
}
