//! The task that owns one queue: its store, its delivery state, its delayed messages and
//! the channels of its consumers. Everything else reaches the queue through [`Command`]s on
//! a bounded channel, in the order they were sent.
//!
//! - Each command kind is handled in one place: `handle_batch` takes publishes, acks, nacks
//!   and the stop; `handle_control` takes the [`Control`] commands one at a time.
//! - A batch of waiting commands shares work: a run of publishes is stored with one append
//!   and one fsync (`flush_publishes`), a run of acks settled with one append and one fsync
//!   (`flush_acks`). With `reject-publish` and a length limit each publish is stored on its
//!   own, so it sees the length its predecessors left.
//! - A publish is confirmed only once its messages are durable; an ack is answered only once
//!   its settle record is durable. The task does not sleep through those fsyncs: each append
//!   waits in a [`Pipeline`] (one for the message log, one for the ack log) while the task
//!   takes the next commands, and published messages become ready (deliverable) when their
//!   fsync completes. Control commands and the stop first wait for both pipelines, so they
//!   see every publish and ack before them done.
//! - A get (`Control::Get`) takes ready messages without a consumer; a move holds a round
//!   of ready messages out of delivery (`Control::TakeForMove`) until the destination has
//!   stored them, then settles them or puts them back (`Control::FinishMove`).
//! - Between batches (and at least every `IDLE_WAKE`) a tick moves due delayed messages to
//!   ready, dead-letters expired ones, times out unacknowledged deliveries, dispatches, and
//!   every `COMPACTION_INTERVAL_MS` compacts the store on the blocking pool.
//!
//! The task never holds the manager's registry lock and never blocks its worker on I/O
//! other than its own log appends and reads.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::batch::{BatchBuilder, NewRecord, Record};

use crate::queue::delay::{DelayQueue, DUE_HEADER};
use crate::queue::delivery::{
    AckScope, Action, CancelReason, ConsumerId, DeadLetterReason, DeliveryError, DeliveryState,
    DeliveryTag, GetMode, MessageMeta, Overflow, QueueLimits, Requeue,
};
use crate::queue::manager::QueueManager;
use crate::queue::pipeline::Pipeline;
use crate::queue::publish::{dead_letter_copy, header_number, header_value, message_priority};
use crate::queue::replicated::{self, CommitFuture, QueueCommand, QueueLog};
use crate::queue::store::{QueueStore, StoredRecord, SETTLE_IDS_MAX};
use crate::queue::types::{
    ConsumerOptions, ConsumerPush, DeleteConditions, DeliveredRun, Durability, GotMessage, Message,
    Precondition, QueueArgs, QueueError, QueueStats, EXPIRATION_HEADER,
};
use crate::storage::Clock;

/// Commands queued per queue task before callers wait (backpressure on publishers).
pub const QUEUE_COMMANDS_MAX: usize = 4096;
/// How often a queue checkpoints its ack state and deletes fully settled segments.
const COMPACTION_INTERVAL_MS: i64 = 30_000;
/// Most message bytes stored as one record batch: well below `BATCH_BYTES_MAX` so that a
/// run of publishes always fits one batch (record overhead included).
pub(crate) const PUBLISH_RUN_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most commands a queue task takes in one batch (bounds the work between ticks).
const COMMAND_BATCH_MAX: usize = 1024;
/// Most record bytes one delivery run carries (a run of one message may hold more): a
/// DeliverBatch frame stays far below the native frame limit whatever the stored batch.
const RUN_BYTES_MAX: usize = 1024 * 1024;
/// Longest a queue task sleeps when nothing is due (bounds TTL and ack-timeout checks).
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// Most message bytes one get returns (one message at least): half the default frame
/// maximum (16 MiB), so the answer fits one frame with room for its headers.
pub const GET_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most messages a move takes from its source per round (each round is one fsync in the
/// destination and one in the source).
pub(crate) const MOVE_ROUND_MESSAGES_MAX: usize = 1024;
/// Most message bytes a move holds in memory per round (one message at least).
const MOVE_ROUND_BYTES_MAX: usize = PUBLISH_RUN_BYTES_MAX;

/// The reply to a publish or an ack.
pub(crate) type Confirm = oneshot::Sender<Result<(), QueueError>>;
/// The answer to a get.
pub(crate) type GetReply = oneshot::Sender<Result<Vec<GotMessage>, QueueError>>;
/// A publish waiting to be stored with its run.
pub(crate) type PendingPublish = (Vec<Message>, PublishReply);

/// The outcomes of the messages of a [`Command::PublishMany`], sent once for all of them.
#[derive(Debug, Clone)]
pub(crate) enum Outcomes {
    /// The same for every message: they were stored in one run, or all failed.
    All(Result<(), QueueError>),
    /// One per message, in order: a queue that refuses publishes past its length limit
    /// stores each on its own.
    Each(Vec<Result<(), QueueError>>),
}

impl Outcomes {
    /// The outcome of the message at `index` (`Gone` past the end: never sent so).
    pub(crate) fn get(&self, index: usize, queue: &str) -> Result<(), QueueError> {
        match self {
            Outcomes::All(outcome) => outcome.clone(),
            Outcomes::Each(outcomes) => outcomes
                .get(index)
                .cloned()
                .unwrap_or_else(|| Err(QueueError::Gone(queue.to_string()))),
        }
    }
}

/// How a stored publish is answered: the run's one outcome, to one reply however many
/// messages the publish held.
pub(crate) enum PublishReply {
    /// A [`Command::Publish`]'s confirm.
    One(Confirm),
    /// A [`Command::PublishMany`]'s reply.
    Many(oneshot::Sender<Outcomes>),
}

impl PublishReply {
    fn send(self, outcome: Result<(), QueueError>) {
        let _ = match self {
            PublishReply::One(confirm) => confirm.send(outcome).is_ok(),
            PublishReply::Many(reply) => reply.send(Outcomes::All(outcome)).is_ok(),
        };
    }
}
/// An ack already applied to the delivery state, waiting for its settle record.
type PendingAck = (Result<Vec<Action>, QueueError>, Confirm);
/// What the delivery state needs of a stored message once it is durable.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// When a delayed message falls due.
    due_ms: Option<i64>,
    /// Its own TTL.
    ttl_ms: Option<u64>,
    /// Its body's size.
    bytes: u32,
    /// Its priority as published.
    priority: u8,
}

/// A run of publishes appended to the message log as one batch. Once durable, its messages
/// become ready (or delayed) and its publishers are confirmed.
struct StoredRun {
    base_offset: i64,
    /// One per message, in offset order.
    timings: Vec<Timing>,
    /// When it was stored (TTLs count from here).
    now: i64,
    replies: Vec<PublishReply>,
}

/// A settle record appended to the ack log. Once durable, its ids are confirmed settled
/// and the acks that wait for it are answered.
struct Settling {
    ids: Vec<i64>,
    replies: Vec<Confirm>,
}

/// What a queue task is asked to do.
pub(crate) enum Command {
    /// Store these messages (merged with neighbouring publishes) and confirm once durable.
    Publish(Vec<Message>, Confirm),
    /// Several publishes in one command (a batch of publishes from one request, in order),
    /// each handled exactly as a `Publish` of its own, and all answered with one reply: the
    /// same outcome for all when they are stored as one run, else one each.
    PublishMany(Vec<Message>, oneshot::Sender<Outcomes>),
    /// Ack a delivery (merged with neighbouring acks and nacks into one settle record).
    Ack(ConsumerId, DeliveryTag, AckScope, Confirm),
    /// Nack a delivery (merged like an ack).
    Nack(ConsumerId, DeliveryTag, AckScope, Requeue, Confirm),
    /// Stops the task; consumers are told the reason, if any.
    Stop(oneshot::Sender<()>, Option<CancelReason>),
    /// A command handled on its own, after the publishes and acks before it.
    Control(Control),
}

/// The commands that neither merge with their neighbours nor stop the task.
pub(crate) enum Control {
    /// Adds a consumer with its options and channel; answers whether it was taken (an
    /// exclusive consumer, a retiring queue).
    Subscribe(
        ConsumerId,
        ConsumerOptions,
        mpsc::Sender<ConsumerPush>,
        oneshot::Sender<Result<(), QueueError>>,
    ),
    /// Checks a delete's conditions and, if they hold, retires the queue (no consumer is
    /// taken any more) in the same step; answers the ready count.
    Retire(DeleteConditions, oneshot::Sender<Result<u64, QueueError>>),
    /// The delete after a `Retire` failed: the queue takes consumers again.
    Reopen,
    /// Removes a consumer (its deliveries return to the queue); answered before they are
    /// dispatched again.
    Cancel(ConsumerId, CancelReason, oneshot::Sender<()>),
    /// Stops dispatching to a consumer that keeps its unacknowledged deliveries, and ends
    /// its channel; answered once done.
    Stop(ConsumerId, oneshot::Sender<()>),
    /// The queue was redeclared: it counts as used (`expires-ms`).
    Touch,
    /// Removes every ready and delayed message; answers how many.
    Purge(oneshot::Sender<u64>),
    /// Settles messages whose dead-lettered copies are stored.
    Settle(Vec<i64>),
    /// Answers the queue's counts.
    Stats(oneshot::Sender<QueueStats>),
    /// Takes up to this many ready messages from the head without a consumer.
    /// A get: most messages, most bytes, mode.
    Get(usize, usize, GetMode, GetReply),
    /// Holds the oldest ready messages with ids up to the bound (none: the newest ready
    /// message now) for a move, and answers them with the bound used.
    TakeForMove(Option<i64>, oneshot::Sender<Result<MoveRound, QueueError>>),
    /// Ends a move round: settles the held messages stored in the destination (answered
    /// once durable) and puts the others back.
    FinishMove {
        stored: Vec<i64>,
        not_stored: Vec<i64>,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
}

/// The stand-in for the task of a replicated queue this node does not lead (issue #21, the
/// leader's member is elsewhere or none is elected): answers every command that carries an
/// error with `error`, so callers say that no leader serves the queue here; the others
/// (a purge's count, a listing's stats, a stop) are answered as for an empty queue or
/// dropped, which their callers report as they report a queue being deleted.
pub(crate) fn spawn_refuser(error: QueueError) -> mpsc::Sender<Command> {
    let (sender, mut receiver) = mpsc::channel(QUEUE_COMMANDS_MAX);
    tokio::spawn(async move {
        while let Some(command) = receiver.recv().await {
            let refused = || Err(error.clone());
            match command {
                Command::Publish(_, confirm)
                | Command::Ack(_, _, _, confirm)
                | Command::Nack(_, _, _, _, confirm) => {
                    let _ = confirm.send(refused());
                }
                Command::PublishMany(_, reply) => {
                    let _ = reply.send(Outcomes::All(refused()));
                }
                Command::Stop(reply, _) => {
                    let _ = reply.send(());
                }
                Command::Control(control) => match control {
                    Control::Subscribe(_, _, _, reply) => {
                        let _ = reply.send(refused());
                    }
                    Control::Retire(_, reply) => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Control::Get(_, _, _, reply) => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Control::TakeForMove(_, reply) => {
                        let _ = reply.send(Err(error.clone()));
                    }
                    Control::FinishMove { reply, .. } => {
                        let _ = reply.send(refused());
                    }
                    Control::Cancel(_, _, reply) | Control::Stop(_, reply) => {
                        let _ = reply.send(());
                    }
                    Control::Reopen
                    | Control::Touch
                    | Control::Settle(_)
                    | Control::Purge(_)
                    | Control::Stats(_) => {}
                },
            }
        }
    });
    sender
}

/// The messages one move round takes from its source, in id order.
pub(crate) struct MoveRound {
    /// The bound of the move (the newest message it may take); none when the queue had no
    /// ready message at the start.
    pub(crate) up_to: Option<i64>,
    /// The held messages with their ids.
    pub(crate) messages: Vec<(i64, Record)>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("queue command")
    }
}

/// The task that owns one queue.
pub(crate) struct QueueTask {
    name: String,
    /// Shared with the blocking pool only while it compacts.
    store: Arc<QueueStore>,
    state: DeliveryState,
    delays: DelayQueue,
    consumers: HashMap<ConsumerId, mpsc::Sender<ConsumerPush>>,
    ttl_ms: Option<u64>,
    /// The dead-letter exchange and routing key, if the queue has one.
    dead_letter_target: Option<(String, Option<String>)>,
    /// The queue's dead-letter forwarder, started at the first dead-lettered message: one
    /// task per queue, so copies are republished in the order the queue dead-lettered them.
    dead_letters: Option<mpsc::UnboundedSender<(i64, Message)>>,
    clock: Arc<dyn Clock>,
    manager: Weak<QueueManager>,
    last_compaction_ms: i64,
    /// Actions decided outside a tick (recovery) and carried out at the next one.
    pending_actions: Vec<Action>,
    /// Messages taken by a move, neither ready nor settled until the move round ends (a
    /// crash meanwhile leaves them unsettled in storage, so they come back at start).
    held: HashMap<i64, MessageMeta>,
    /// `expires-ms`: the queue is deleted once unused this long.
    expires_ms: Option<u64>,
    /// When the queue was last used: a consumer, a get, a redeclare.
    last_used_ms: i64,
    /// The expiry delete was asked for.
    expired: bool,
    /// A conditional delete passed its check: no consumer is taken any more.
    retiring: bool,
    /// The consumer that subscribed `exclusive`, while it is subscribed.
    exclusive_consumer: Option<ConsumerId>,
    /// Counts since start for the metrics (issue #17): plain integers, since only this task
    /// changes them, and reported with the queue's stats.
    counters: Counters,
    /// Runs of publishes waiting for the message log's fsync.
    publishing: Pipeline<StoredRun>,
    /// Settle records waiting for the ack log's fsync.
    settling: Pipeline<Settling>,
    /// Where the task's writes go.
    writes: Writes,
    /// A replicated write did not commit (the leadership ended, or its commit timed out and
    /// may still happen): the task's view (its next id, its delivery state) may no longer
    /// be the store's, so it stops; its leader starts it again from the store once its log
    /// is applied (`core/queue_replication.rs`).
    broken: bool,
}

/// Where a queue task's writes go.
enum Writes {
    /// To its store, each waiting for its log's fsync.
    Local,
    /// Through the queue's replicated log (`queue/replicated.rs`), each waiting for its
    /// commit; the store is written by applying them. `next_id` is where the next publish
    /// lands.
    Replicated {
        log: Arc<dyn QueueLog>,
        next_id: i64,
    },
}

/// Where a run of publishes waits to be durable.
enum Written {
    /// Its message log's fsync up to this offset.
    Fsync(i64),
    /// Its replicated write's commit.
    Commit(CommitFuture),
}

/// A queue's message counters since the broker started.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    published: u64,
    delivered: u64,
    settled: u64,
    dead_lettered: u64,
    redelivered: u64,
}

/// Whether a queue task goes on after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl QueueTask {
    /// Recovers the queue from `store` and starts its task; returns the task's command
    /// channel (bounded by `QUEUE_COMMANDS_MAX`).
    ///
    /// # Errors
    /// `Storage` if the unsettled messages cannot be read back.
    /// With `replicated`, the queue's writes go through that log and its store is written
    /// by applying them (the task then leaves the store open when it stops).
    pub(crate) fn spawn(
        name: &str,
        args: &QueueArgs,
        store: Arc<QueueStore>,
        replicated: Option<Arc<dyn QueueLog>>,
        clock: Arc<dyn Clock>,
        manager: Weak<QueueManager>,
    ) -> Result<mpsc::Sender<Command>, QueueError> {
        let (sender, receiver) = mpsc::channel(QUEUE_COMMANDS_MAX);
        let task = QueueTask::new(name, args, store, replicated, clock, manager)?;
        tokio::spawn(task.run(receiver));
        Ok(sender)
    }

    fn new(
        name: &str,
        args: &QueueArgs,
        store: Arc<QueueStore>,
        replicated: Option<Arc<dyn QueueLog>>,
        clock: Arc<dyn Clock>,
        manager: Weak<QueueManager>,
    ) -> Result<QueueTask, QueueError> {
        let writes = match replicated {
            Some(log) => Writes::Replicated {
                log,
                next_id: store.messages().log_end_offset(),
            },
            None => Writes::Local,
        };
        let limits = QueueLimits {
            max_length: args.max_length,
            max_length_bytes: args.max_length_bytes,
            overflow: args.overflow,
            delivery_limit: args.delivery_limit,
            single_active_consumer: args.single_active_consumer,
            ack_timeout_ms: args.ack_timeout_ms,
            max_priority: args.max_priority,
        };
        let mut task = QueueTask {
            name: name.to_string(),
            state: DeliveryState::new(limits),
            delays: DelayQueue::new(),
            consumers: HashMap::new(),
            ttl_ms: args.message_ttl_ms,
            dead_letter_target: args
                .dead_letter_exchange
                .clone()
                .map(|exchange| (exchange, args.dead_letter_routing_key.clone())),
            dead_letters: None,
            last_compaction_ms: clock.now_ms(),
            pending_actions: Vec::new(),
            held: HashMap::new(),
            expires_ms: args.expires_ms,
            last_used_ms: clock.now_ms(),
            expired: false,
            retiring: false,
            exclusive_consumer: None,
            counters: Counters::default(),
            publishing: Pipeline::new(Arc::clone(store.messages())),
            settling: Pipeline::new(Arc::clone(store.acks())),
            store,
            writes,
            broken: false,
            clock,
            manager,
        };
        task.recover()?;
        Ok(task)
    }

    /// Refills the queue from storage: every unsettled message, delayed ones back in the
    /// delay queue. What overflows the length limit is dead-lettered at the first tick.
    fn recover(&mut self) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        let recovered = self
            .store
            .unsettled()
            .map_err(|error| QueueError::Storage(error.to_string()))?;
        // Deliveries before the restart (or the failover) still count toward the delivery
        // limit.
        let counts = match self.writes {
            Writes::Local => self.store.take_recovered_counts(),
            Writes::Replicated { .. } => self.store.delivery_counts(),
        };
        let mut overflowed = Vec::new();
        for message in recovered {
            let due = header_number(&message.record.headers, DUE_HEADER);
            match due {
                Some(due) if due > now => self.delays.insert(message.id, due),
                _ => {
                    let meta = MessageMeta {
                        delivery_count: counts.get(&message.id).copied().unwrap_or(0),
                        ..self.meta(message.id, &message.record)
                    };
                    match self.state.enqueue(meta) {
                        Ok(actions) => overflowed.extend(actions),
                        Err(_) => overflowed
                            .push(Action::DeadLetter(message.id, DeadLetterReason::MaxLength)),
                    }
                }
            }
        }
        if !overflowed.is_empty() {
            tracing::warn!(
                queue = self.name,
                dropped = overflowed.len(),
                "recovered queue exceeded its max length; dead-lettering the oldest"
            );
        }
        // Carried out (dead-lettered and settled) at the first tick.
        self.pending_actions = overflowed;
        Ok(())
    }

    fn meta(&self, id: i64, record: &Record) -> MessageMeta {
        let ttl = header_number(&record.headers, EXPIRATION_HEADER)
            .and_then(|ttl| u64::try_from(ttl).ok())
            .or(self.ttl_ms);
        MessageMeta {
            id,
            expires_at_ms: ttl.map(|ttl| record.timestamp_ms.saturating_add(ttl as i64)),
            delivery_count: 0,
            bytes: body_bytes(record.value.as_ref().map_or(0, Bytes::len)),
            priority: message_priority(&record.headers),
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
            let published = self.publishing.oldest_durable();
            let settled = self.settling.oldest_durable();
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else {
                        // Every sender is gone: finish what waits for an fsync, then end.
                        self.drain().await;
                        return;
                    };
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
                outcome = published, if !self.publishing.is_empty() => {
                    self.finish_published(outcome).await;
                }
                outcome = settled, if !self.settling.is_empty() => {
                    let _ = self.finish_settled(outcome);
                }
                _ = tokio::time::sleep(wake) => {}
            }
            if self.broken {
                self.stop_broken();
                return;
            }
            self.tick().await;
        }
    }

    /// Ends a replicated queue's task after a write that did not commit: everything waiting
    /// for a commit fails, consumers are told (they subscribe again).
    fn stop_broken(&mut self) {
        let error = QueueError::Cluster {
            no_leader: true,
            message: format!(
                "a write to replicated queue {:?} did not commit; its leader starts it again",
                self.name
            ),
        };
        tracing::warn!(
            queue = self.name,
            "a replicated write did not commit; the queue's task stops"
        );
        for run in self.publishing.take_all() {
            for reply in run.replies {
                reply.send(Err(error.clone()));
            }
        }
        for record in self.settling.take_all() {
            for reply in record.replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.stop(Some(CancelReason::Unreachable));
    }

    /// Notes a failed commit of a replicated write (see [`QueueTask::broken`]).
    fn note_failure(&mut self) {
        if matches!(self.writes, Writes::Replicated { .. }) {
            self.broken = true;
        }
    }

    /// Handles a batch of commands in order, merging runs of publishes and runs of acks.
    async fn handle_batch(&mut self, batch: Vec<Command>) -> Flow {
        let mut publishes: Vec<PendingPublish> = Vec::new();
        let mut acks: Vec<PendingAck> = Vec::new();
        let limits = self.state.limits();
        // With reject-publish, each publish must see the length its predecessors left.
        let limited = limits.max_length.is_some() || limits.max_length_bytes.is_some();
        let merge_publishes = !(limited && limits.overflow != Overflow::DropHead);
        for command in batch {
            match command {
                Command::Publish(messages, reply) => {
                    self.flush_acks(&mut acks).await;
                    publishes.push((messages, PublishReply::One(reply)));
                    if !merge_publishes {
                        self.flush_publishes(&mut publishes).await;
                    }
                }
                Command::PublishMany(messages, reply) => {
                    self.flush_acks(&mut acks).await;
                    if merge_publishes {
                        publishes.push((messages, PublishReply::Many(reply)));
                    } else {
                        // Each message sees the length the ones before it left.
                        self.flush_publishes(&mut publishes).await;
                        let mut outcomes = Vec::with_capacity(messages.len());
                        for message in messages {
                            outcomes.push(self.store_limited(vec![message]).await);
                        }
                        let _ = reply.send(Outcomes::Each(outcomes));
                    }
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
                    self.drain().await;
                    self.stop(reason);
                    let _ = reply.send(());
                    return Flow::Stop;
                }
                Command::Control(control) => {
                    self.flush_publishes(&mut publishes).await;
                    self.flush_acks(&mut acks).await;
                    self.drain().await;
                    self.handle_control(control).await;
                }
            }
        }
        self.flush_publishes(&mut publishes).await;
        self.flush_acks(&mut acks).await;
        Flow::Continue
    }

    /// Adds a consumer unless the queue is retiring or an exclusive consumer forbids it.
    /// Checked and done in one step of the task, so two subscribes cannot both pass.
    fn subscribe(
        &mut self,
        consumer: ConsumerId,
        options: ConsumerOptions,
        sender: mpsc::Sender<ConsumerPush>,
    ) -> Result<(), QueueError> {
        if self.retiring {
            return Err(QueueError::UnknownQueue(self.name.clone()));
        }
        let exclusive_held = self
            .exclusive_consumer
            .is_some_and(|holder| self.consumers.contains_key(&holder));
        if exclusive_held || (options.exclusive && !self.consumers.is_empty()) {
            return Err(QueueError::Precondition {
                queue: self.name.clone(),
                failed: Precondition::ExclusiveUse,
            });
        }
        self.state.add_consumer_sharing(
            consumer,
            options.prefetch,
            options.priority,
            options.shared_prefetch,
        );
        self.consumers.insert(consumer, sender);
        if options.exclusive {
            self.exclusive_consumer = Some(consumer);
        }
        Ok(())
    }

    /// Checks a delete's conditions; if they hold, the queue takes no consumer from now
    /// on. Answers the ready count.
    fn retire(&mut self, conditions: DeleteConditions) -> Result<u64, QueueError> {
        let refused = |failed| QueueError::Precondition {
            queue: self.name.clone(),
            failed,
        };
        if conditions.if_unused && !self.consumers.is_empty() {
            return Err(refused(Precondition::InUse));
        }
        let held = self.state.ready_count() + self.state.unacked_count() + self.delays.len();
        if conditions.if_empty && held > 0 {
            return Err(refused(Precondition::NotEmpty));
        }
        self.retiring = true;
        Ok(self.state.ready_count() as u64)
    }

    /// Cancels every consumer with `reason` (none: at shutdown, they are not told) and
    /// closes the store.
    fn stop(&mut self, reason: Option<CancelReason>) {
        if let Some(reason) = reason {
            let consumers: Vec<ConsumerId> = self.consumers.keys().copied().collect();
            for consumer in consumers {
                self.cancel_consumer(consumer, reason);
            }
        }
        // Deliveries still held will never be settled here: give their shared-window
        // slots back, or the channel sharing them would stall.
        self.state.close();
        if matches!(self.writes, Writes::Replicated { .. }) {
            // The replicated log's member goes on applying to the store.
            return;
        }
        if let Err(error) = self.store.close() {
            tracing::warn!(queue = self.name, %error, "closing queue storage failed");
        }
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

    /// Stores one run of publishes as one batch and gives each the run's outcome.
    async fn store_run(&mut self, run: Vec<PendingPublish>) {
        if run.is_empty() {
            return;
        }
        let mut messages = Vec::with_capacity(run.iter().map(|(messages, _)| messages.len()).sum());
        let mut replies = Vec::with_capacity(run.len());
        for (batch, reply) in run {
            messages.extend(batch);
            replies.push(reply);
        }
        let limits = self.state.limits();
        let limited = limits.max_length.is_some() || limits.max_length_bytes.is_some();
        if limited && limits.overflow != Overflow::DropHead {
            // Each publish must see the length the ones before it left: no pipelining.
            let outcome = self.store_limited(messages).await;
            for reply in replies {
                reply.send(outcome.clone());
            }
            return;
        }
        match self.append_run(messages) {
            Ok((written, mut run)) => {
                run.replies = replies;
                match written {
                    Written::Fsync(next_offset) => self.publishing.push(next_offset, run),
                    Written::Commit(commit) => self.publishing.push_commit(commit, run),
                }
            }
            Err(error) => {
                for reply in replies {
                    reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Stores one publish of a queue with a length limit that refuses publishes, once
    /// every earlier one is settled: it is stored whole or refused.
    async fn store_limited(&mut self, messages: Vec<Message>) -> Result<(), QueueError> {
        let message_count = messages.len() as u64;
        let outcome = self.store_messages(messages).await;
        if outcome.is_ok() {
            self.counters.published += message_count;
        }
        outcome
    }

    /// Settles what a run of acks released with one append; each ack is answered once the
    /// newest settle record is durable (at once when nothing waits for an fsync).
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
                (Ok(()), Ok(())) => match self.settling.newest_mut() {
                    // The newest settle record covers this ack's (if it had one).
                    Some(settling) => {
                        settling.replies.push(reply);
                        continue;
                    }
                    None => Ok(()),
                },
            };
            let _ = reply.send(answer);
        }
    }

    /// Waits until every append in both pipelines is durable and finishes their work.
    async fn drain(&mut self) {
        while !self.publishing.is_empty() {
            let outcome = self.publishing.oldest_durable().await;
            self.finish_published(outcome).await;
        }
        let _ = self.drain_settled().await;
    }

    /// Waits until every settle record is durable and finishes their work.
    ///
    /// # Errors
    /// `Storage` if the ack log failed before they were.
    async fn drain_settled(&mut self) -> Result<(), QueueError> {
        let mut drained = Ok(());
        while !self.settling.is_empty() {
            let outcome = self.settling.oldest_durable().await;
            if let Err(error) = self.finish_settled(outcome) {
                drained = Err(error);
            }
        }
        drained
    }

    /// After the wait for the oldest run of publishes: makes every durable run's messages
    /// ready (or delayed) and confirms its publishers; after a failed wait, fails them all.
    async fn finish_published(&mut self, outcome: Result<(), QueueError>) {
        let runs = match outcome {
            Ok(()) => self.publishing.take_durable(),
            Err(error) => {
                self.note_failure();
                for run in self.publishing.take_all() {
                    for reply in run.replies {
                        reply.send(Err(error.clone()));
                    }
                }
                return;
            }
        };
        for run in runs {
            let message_count = run.timings.len() as u64;
            let outcome = self.make_ready(run.base_offset, run.timings, run.now).await;
            if outcome.is_ok() {
                self.counters.published += message_count;
            }
            for reply in run.replies {
                reply.send(outcome.clone());
            }
        }
    }

    /// After the wait for the oldest settle record: confirms every durable record's ids
    /// settled and answers its acks; after a failed wait, fails them all.
    ///
    /// # Errors
    /// `Storage` after a failed wait.
    fn finish_settled(&mut self, outcome: Result<(), QueueError>) -> Result<(), QueueError> {
        let (records, answer) = match outcome {
            Ok(()) => (self.settling.take_durable(), Ok(())),
            Err(error) => {
                self.note_failure();
                (self.settling.take_all(), Err(error))
            }
        };
        for record in records {
            if answer.is_ok() {
                self.store.confirm_settled(&record.ids);
                self.counters.settled += record.ids.len() as u64;
            }
            for reply in record.replies {
                let _ = reply.send(answer.clone());
            }
        }
        answer
    }

    /// `expires-ms`: a queue unused for that long asks the manager to delete it (spawned:
    /// the delete stops this very task and waits for it). A consumer keeps it used.
    fn check_expiry(&mut self, now: i64) {
        let Some(expires) = self.expires_ms else {
            return;
        };
        if !self.consumers.is_empty() {
            self.last_used_ms = now;
            return;
        }
        let idle = u64::try_from(now.saturating_sub(self.last_used_ms)).unwrap_or(0);
        if self.expired || idle < expires {
            return;
        }
        let Some(manager) = self.manager.upgrade() else {
            return;
        };
        if manager.led_elsewhere(&self.name) {
            // This node's copy of a queue another node leads sees no use: the leader's
            // copy decides expiry.
            self.last_used_ms = now;
            return;
        }
        self.expired = true;
        {
            let queue = self.name.clone();
            tokio::spawn(async move {
                tracing::info!(
                    queue,
                    expires_ms = expires,
                    "queue unused past its expiry; deleting"
                );
                if let Err(error) = manager.delete_by_rule(&queue).await {
                    tracing::warn!(queue, %error, "deleting an expired queue failed");
                }
            });
        }
    }

    async fn handle_control(&mut self, control: Control) {
        if matches!(control, Control::Subscribe(..) | Control::Get(..)) {
            self.last_used_ms = self.clock.now_ms();
        }
        match control {
            Control::Subscribe(consumer, options, sender, accepted) => {
                let _ = accepted.send(self.subscribe(consumer, options, sender));
            }
            Control::Retire(conditions, reply) => {
                let _ = reply.send(self.retire(conditions));
            }
            Control::Reopen => self.retiring = false,
            Control::Cancel(consumer, reason, reply) => {
                self.cancel_consumer(consumer, reason);
                let _ = reply.send(());
                let actions = self.state.remove_consumer(consumer);
                if let Err(error) = self.apply(actions).await {
                    tracing::warn!(queue = self.name, %error, "returning a cancelled consumer's deliveries failed");
                }
            }
            Control::Settle(ids) => {
                if let Err(error) = self.settle(&ids).await {
                    tracing::warn!(queue = self.name, %error, "settling dead-lettered messages failed");
                }
            }
            Control::Touch => {
                // A use: an expiry that fired and was not carried out (the cluster's
                // metadata kept the queue) may fire again.
                self.last_used_ms = self.clock.now_ms();
                self.expired = false;
            }
            Control::Stop(consumer, reply) => {
                self.state.stop_consumer(consumer);
                // Dropping the sender ends the consumer's channel after what it holds.
                self.consumers.remove(&consumer);
                let _ = reply.send(());
            }
            Control::Purge(reply) => {
                let mut ids = self.state.purge();
                ids.extend(self.delays.clear());
                let count = ids.len() as u64;
                if self.settle(&ids).await.is_ok() {
                    let _ = self.drain_settled().await;
                }
                let _ = reply.send(count);
            }
            Control::Stats(reply) => {
                let _ = reply.send(QueueStats {
                    name: self.name.clone(),
                    ready: self.state.ready_count() as u64,
                    delayed: self.delays.len() as u64,
                    unacked: self.state.unacked_count() as u64,
                    consumers: self.consumers.len() as u64,
                    published: self.counters.published,
                    delivered: self.counters.delivered,
                    settled: self.counters.settled,
                    dead_lettered: self.counters.dead_lettered,
                    redelivered: self.counters.redelivered,
                    durability: Durability::default(),
                });
            }
            Control::Get(count, bytes_max, mode, reply) => {
                let _ = reply.send(self.get(count, bytes_max, mode).await);
            }
            Control::TakeForMove(up_to, reply) => {
                let _ = reply.send(self.take_for_move(up_to));
            }
            Control::FinishMove {
                stored,
                not_stored,
                reply,
            } => {
                let returned = not_stored.iter().filter_map(|id| self.held.remove(id));
                self.state.put_back(returned.collect::<Vec<_>>());
                for id in &stored {
                    self.held.remove(id);
                }
                let settled = match self.settle(&stored).await {
                    Ok(()) => self.drain_settled().await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(settled);
            }
        }
    }

    /// Takes up to `count` ready messages from the head for a get (while their keys, bodies
    /// and headers are below `bytes_max`, itself at most `GET_BYTES_MAX`; one message at
    /// least). With `Requeue` and `Hold` their new delivery counts are
    /// recorded as deliveries' are, so they come back redelivered after a restart too; with
    /// `Ack` the answer comes once their settlement is durable.
    async fn get(
        &mut self,
        count: usize,
        bytes_max: usize,
        mode: GetMode,
    ) -> Result<Vec<GotMessage>, QueueError> {
        let now = self.clock.now_ms();
        let mut messages = Vec::new();
        let mut counts = Vec::new();
        let mut actions = Vec::new();
        let mut bytes = 0usize;
        let mut taken = Vec::new();
        let mut held = Vec::new();
        let mut failed = None;
        let mut after = None;
        let bytes_max = bytes_max.min(GET_BYTES_MAX);
        while messages.len() < count && bytes < bytes_max {
            let (got, more) = self.state.get_after(after.as_ref(), now, mode);
            actions.extend(more);
            let Some(got) = got else {
                break;
            };
            after = Some(got.before);
            counts.push((got.message, got.delivery_count));
            taken.push(got.before);
            held.extend(got.tag);
            match self.store.read(got.message) {
                Ok(Some(record)) => {
                    let field = |bytes: Option<&Bytes>| bytes.map_or(0, Bytes::len);
                    bytes += field(record.key.as_ref())
                        + field(record.value.as_ref())
                        + record
                            .headers
                            .iter()
                            .map(|header| header.key.len() + field(header.value.as_ref()))
                            .sum::<usize>();
                    messages.push(GotMessage {
                        redelivered: got.redelivered,
                        tag: got.tag,
                        record,
                    });
                }
                // The task owns the queue, so a ready message missing from the log is a
                // store that lost it: say so rather than skip it.
                Ok(None) => {
                    failed = Some(QueueError::Storage(format!(
                        "message {} of queue {:?} is missing from its log",
                        got.message, self.name
                    )));
                    break;
                }
                Err(error) => {
                    failed = Some(QueueError::Storage(error.to_string()));
                    break;
                }
            }
        }
        if let Some(error) = failed {
            if let GetMode::Hold(holder) = mode {
                for tag in held {
                    self.state.unhold(holder, tag);
                }
                self.state.put_back(taken);
            } else if mode == GetMode::Ack {
                // Nothing is settled unseen: the taken messages go back untouched.
                self.state.put_back(taken);
                actions.retain(|action| !matches!(action, Action::Settle(_)));
            }
            let _ = self.apply(actions).await;
            return Err(error);
        }
        if mode != GetMode::Ack {
            if let Err(error) = self.record_counts(&counts, now) {
                tracing::warn!(queue = self.name, %error, "recording got messages failed");
            }
        }
        self.apply(actions).await?;
        if mode == GetMode::Ack {
            // Answered once the settlement of what it took is durable.
            self.drain_settled().await?;
        }
        Ok(messages)
    }

    /// Holds the oldest ready messages up to `up_to` for a move round (at most
    /// `MOVE_ROUND_MESSAGES_MAX` messages and about `MOVE_ROUND_BYTES_MAX` bytes).
    fn take_for_move(&mut self, up_to: Option<i64>) -> Result<MoveRound, QueueError> {
        let Some(bound) = up_to.or_else(|| self.state.last_ready_id()) else {
            return Ok(MoveRound {
                up_to: None,
                messages: Vec::new(),
            });
        };
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        while messages.len() < MOVE_ROUND_MESSAGES_MAX && bytes < MOVE_ROUND_BYTES_MAX {
            let Some(meta) = self.state.take_head(bound) else {
                break;
            };
            match self.store.read(meta.id) {
                Ok(Some(record)) => {
                    bytes += record.value.as_ref().map_or(0, Bytes::len);
                    self.held.insert(meta.id, meta);
                    messages.push((meta.id, record));
                }
                other => {
                    self.state.put_back([meta]);
                    let ids: Vec<MessageMeta> = messages
                        .iter()
                        .filter_map(|(id, _)| self.held.remove(id))
                        .collect();
                    self.state.put_back(ids);
                    let reason = match other {
                        Err(error) => error.to_string(),
                        _ => format!("message {} is missing from its log", meta.id),
                    };
                    return Err(QueueError::Storage(reason));
                }
            }
        }
        Ok(MoveRound {
            up_to: Some(bound),
            messages,
        })
    }

    /// Stores messages as one batch with one append and one fsync, then makes them ready
    /// (or delayed) in the delivery state. With `reject-publish` and a length limit a
    /// publish finding the queue full is refused before it is stored.
    async fn store_messages(&mut self, messages: Vec<Message>) -> Result<(), QueueError> {
        let now = self.clock.now_ms();
        // Check the length limit before storing, so a refused message is never stored.
        let limits = self.state.limits();
        if matches!(
            limits.overflow,
            Overflow::RejectPublish | Overflow::RejectPublishDlx
        ) {
            let bytes = messages
                .iter()
                .map(|message| message.body.len() as u64)
                .sum();
            if let Some(limit) = self.state.overflowed_by(bytes) {
                if limits.overflow == Overflow::RejectPublishDlx {
                    for message in &messages {
                        self.forward_refused(message, now);
                    }
                }
                return Err(QueueError::QueueFull {
                    queue: self.name.clone(),
                    limit,
                });
            }
        }
        let (written, run) = self.append_run(messages)?;
        match written {
            Written::Fsync(next_offset) => {
                crate::append::durable(self.store.messages(), next_offset)
                    .await
                    .map_err(|error| QueueError::Storage(error.to_string()))?
            }
            Written::Commit(commit) => {
                if let Err(error) = commit
                    .await
                    .and_then(|outcome| replicated::outcome(&outcome))
                {
                    self.note_failure();
                    return Err(error);
                }
            }
        }
        self.make_ready(run.base_offset, run.timings, run.now).await
    }

    /// Appends messages to the message log as one batch (one write, no fsync wait); returns
    /// the offset the append must reach to be durable and the run to finish then (its
    /// replies empty).
    ///
    /// # Errors
    /// `Invalid` for a message the batch cannot hold, `Storage` if the append failed.
    fn append_run(&mut self, messages: Vec<Message>) -> Result<(Written, StoredRun), QueueError> {
        let now = self.clock.now_ms();
        let mut builder = BatchBuilder::new(now);
        builder.reserve(messages.iter().map(message_bytes).sum());
        // What the delivery state needs of each message once it is stored (its due time
        // and TTL); the message itself moves into the batch, not copied.
        let mut timings = Vec::with_capacity(messages.len());
        for message in messages {
            timings.push(Timing {
                due_ms: header_number(&message.headers, DUE_HEADER).filter(|due| *due > now),
                ttl_ms: header_number(&message.headers, EXPIRATION_HEADER)
                    .and_then(|ttl| u64::try_from(ttl).ok()),
                bytes: body_bytes(message.body.len()),
                priority: message_priority(&message.headers),
            });
            builder
                .push(&NewRecord {
                    timestamp_ms: now,
                    key: Some(Bytes::from(message.routing_key.into_bytes())),
                    value: Some(message.body),
                    headers: message.headers,
                })
                .map_err(|error| QueueError::Invalid(error.to_string()))?;
        }
        let mut bytes = builder.build_mut();
        let count = timings.len() as i64;
        let (written, base_offset) = match &mut self.writes {
            Writes::Local => {
                let appended = self
                    .store
                    .append_messages(&mut bytes)
                    .map_err(|error| QueueError::Storage(error.to_string()))?;
                (Written::Fsync(appended.next_offset), appended.base_offset)
            }
            Writes::Replicated { log, next_id } => {
                let base = *next_id;
                let command = QueueCommand::Messages {
                    base,
                    now_ms: now,
                    batch: bytes.freeze(),
                };
                *next_id += count;
                (Written::Commit(log.submit(command.encode())), base)
            }
        };
        let run = StoredRun {
            base_offset,
            timings,
            now,
            replies: Vec::new(),
        };
        Ok((written, run))
    }

    /// Makes durable stored messages ready (or delayed) in the delivery state: the messages
    /// from `base_offset` on, one per timing.
    async fn make_ready(
        &mut self,
        base_offset: i64,
        timings: Vec<Timing>,
        now: i64,
    ) -> Result<(), QueueError> {
        let limits = self.state.limits();
        let mut actions = Vec::new();
        for (index, timing) in timings.into_iter().enumerate() {
            let id = base_offset + index as i64;
            if let Some(due) = timing.due_ms {
                self.delays.insert(id, due);
                continue;
            }
            let meta = MessageMeta {
                id,
                expires_at_ms: timing
                    .ttl_ms
                    .or(self.ttl_ms)
                    .map(|ttl| now.saturating_add(ttl as i64)),
                delivery_count: 0,
                bytes: timing.bytes,
                priority: timing.priority,
            };
            match self.state.enqueue(meta) {
                Ok(more) => actions.extend(more),
                Err(DeliveryError::QueueFull { limit }) => {
                    // Stored but refused: dead-lettered with reject-publish-dlx (its copy,
                    // once stored, settles it), else settled so it never comes back.
                    if limits.overflow != Overflow::RejectPublishDlx
                        || !self.forward_dead_letter(id, DeadLetterReason::MaxLength)
                    {
                        let _ = self.settle(&[id]).await;
                    }
                    return Err(QueueError::QueueFull {
                        queue: self.name.clone(),
                        limit,
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
        self.check_expiry(now);
        if now.saturating_sub(self.last_compaction_ms) >= COMPACTION_INTERVAL_MS {
            self.last_compaction_ms = now;
            // Compaction checkpoints the settled state: only what is durable counts.
            self.drain().await;
            self.compact(now).await;
        }
    }

    /// Records the delivery counts of the deliveries among `actions` in the ack log before
    /// any is handed out, so that after a restart a message that may have been delivered
    /// comes back with `redelivered` set (and the delivery toward its limit counted). The
    /// append is not waited for: it survives a process crash (it is in the page cache); a
    /// power loss may lose the newest, and those messages come back unmarked.
    fn record_deliveries(&self, actions: &[Action]) {
        let counts: Vec<(i64, u32)> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Deliver(delivery) => Some((delivery.message, delivery.delivery_count)),
                _ => None,
            })
            .collect();
        if let Err(error) = self.record_counts(&counts, self.clock.now_ms()) {
            tracing::warn!(queue = self.name, %error, "recording deliveries failed");
        }
    }

    /// Records delivery counts in the ack log, or through the replicated log (not waited
    /// for either way: a lost count only loses a `redelivered` mark).
    fn record_counts(&self, counts: &[(i64, u32)], now: i64) -> crate::storage::Result<()> {
        match &self.writes {
            Writes::Local => self.store.record_delivery_counts(counts, now).map(|_| ()),
            Writes::Replicated { .. } if counts.is_empty() => Ok(()),
            Writes::Replicated { log, .. } => {
                let command = QueueCommand::Counts {
                    now_ms: now,
                    counts: counts.to_vec(),
                };
                drop(log.submit(command.encode()));
                Ok(())
            }
        }
    }

    /// Deletes segments whose messages are all settled ("fully settled segments are
    /// deleted") and ack-log segments the checkpoint covers. A replicated queue's replicas
    /// compact at their checkpoints instead (`QueueStore::persist_replicated`).
    async fn compact(&mut self, now: i64) {
        if matches!(self.writes, Writes::Replicated { .. }) {
            return;
        }
        // A checkpoint write with fsync and file deletes: on the blocking pool, while this
        // queue waits (STYLE.md §4).
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

    /// Carries out actions: deliveries go to consumers, settled and dead-lettered messages
    /// are recorded (durable once the settle pipeline's fsync completes).
    ///
    /// Deliveries leave as runs (issue #15): a consumer's deliveries of messages stored in
    /// one batch become one [`DeliveredRun`] holding their stored record bytes, one channel
    /// send for the lot. Each consumer's runs leave in tag order; a consumer found gone has
    /// its deliveries returned to the queue after all runs are out, so that redispatching
    /// them never overtakes another consumer's run still being built.
    async fn apply(&mut self, actions: Vec<Action>) -> Result<(), QueueError> {
        self.record_deliveries(&actions);
        let mut settled = Vec::new();
        let mut returned = Vec::new();
        let mut runs: Vec<RunBuilder> = Vec::new();
        let mut gone: Vec<ConsumerId> = Vec::new();
        for action in actions {
            match action {
                Action::Deliver(delivery) => {
                    let stored = match self.store.stored(delivery.message) {
                        Ok(Some(stored)) => stored,
                        Ok(None) => continue,
                        Err(error) => {
                            tracing::warn!(
                                queue = self.name,
                                id = delivery.message,
                                %error,
                                "cannot read a message to deliver"
                            );
                            continue;
                        }
                    };
                    let mark = (delivery.tag, delivery.redelivered);
                    match runs
                        .iter_mut()
                        .find(|run| run.consumer == delivery.consumer)
                    {
                        Some(run) if run.takes(&stored) => run.push(mark, &stored),
                        Some(run) => {
                            let full = std::mem::replace(
                                run,
                                RunBuilder::start(delivery.consumer, mark, &stored),
                            );
                            self.send_run(full, &mut gone);
                        }
                        None => runs.push(RunBuilder::start(delivery.consumer, mark, &stored)),
                    }
                }
                Action::Settle(id) => settled.push(id),
                Action::DeadLetter(id, reason) => {
                    self.counters.dead_lettered += 1;
                    // With a dead-letter exchange the message is settled only once its copy
                    // is stored there (the republish settles it); without one it is dropped.
                    if !self.forward_dead_letter(id, reason) {
                        settled.push(id);
                    }
                }
                Action::Cancel(consumer, reason) => {
                    let description = reason.describe();
                    tracing::warn!(
                        queue = self.name,
                        consumer = consumer.0,
                        reason = description,
                        "consumer cancelled"
                    );
                    self.cancel_consumer(consumer, reason);
                }
                Action::Returned(id, deliveries) => returned.push((id, deliveries)),
            }
        }
        for run in runs {
            self.send_run(run, &mut gone);
        }
        for consumer in gone {
            // The consumer went away: its deliveries (those just sent included) return to
            // the queue.
            self.consumers.remove(&consumer);
            let returned = self.state.remove_consumer(consumer);
            Box::pin(self.apply(returned)).await?;
        }
        if let Err(error) = self.record_counts(&returned, self.clock.now_ms()) {
            // The counts only tighten the delivery limit after a restart; the messages
            // themselves are safe.
            tracing::warn!(queue = self.name, %error, "recording delivery counts failed");
        }
        self.settle(&settled).await
    }

    /// Hands a run to its consumer; notes the consumer in `gone` if it went away.
    fn send_run(&mut self, run: RunBuilder, gone: &mut Vec<ConsumerId>) {
        let consumer = run.consumer;
        if gone.contains(&consumer) {
            return;
        }
        let run = run.finish();
        let count = run.marks.len() as u64;
        let redelivered = run.marks.iter().filter(|(_, again)| *again).count() as u64;
        // The channel holds the consumer's prefetch window plus one and a run holds one
        // delivery at least, so it is never full here; an error means the consumer is gone.
        let sent = self
            .consumers
            .get(&consumer)
            .is_some_and(|sender| sender.try_send(ConsumerPush::Run(run)).is_ok());
        if sent {
            self.counters.delivered += count;
            self.counters.redelivered += redelivered;
        } else {
            gone.push(consumer);
        }
    }

    /// Ends a consumer's channel here, whoever cancelled it (its deliveries are back in the
    /// queue, or about to be). The broker's own cancels tell the consumer why; after an ack
    /// timeout the manager's registry forgets it too.
    fn cancel_consumer(&mut self, consumer: ConsumerId, reason: CancelReason) {
        let sender = self.consumers.remove(&consumer);
        let tell = |sender: Option<mpsc::Sender<ConsumerPush>>| {
            if let Some(sender) = sender {
                // The channel keeps a slot beyond the window for this; a closed channel means
                // the consumer is gone and there is nobody to tell.
                let _ = sender.try_send(ConsumerPush::Cancelled(reason));
            }
        };
        match reason {
            CancelReason::AckTimeout => {
                tell(sender);
                if let Some(manager) = self.manager.upgrade() {
                    let queue = self.name.clone();
                    // Spawned: an auto-delete stops this very task and waits for it.
                    tokio::spawn(async move { manager.forget_consumer(&queue, consumer).await });
                }
            }
            // The delete already dropped the queue's consumers from the registry. A
            // replicated queue's task stopping on a node that no longer leads it cancels
            // with `Unreachable`: its clients must hear it to subscribe again (through the
            // new leader); a pulled consumer hears it through its next pull.
            CancelReason::QueueDeleted => tell(sender),
            CancelReason::Unreachable => {
                tell(sender);
                if let Some(manager) = self.manager.upgrade() {
                    manager.drop_consumer_id(&self.name, consumer);
                }
            }
            // The client asked for this or is gone: dropping the sender ends its channel, and
            // `QueueManager::cancel` forgets the consumer once this task answers.
            CancelReason::ClientCancelled | CancelReason::ConnectionClosed => drop(sender),
        }
    }

    /// Appends a settle record for `ids` to the ack log. They are confirmed settled (and the
    /// acks that wait for the record answered) once it is durable, through the settle
    /// pipeline; callers that answer after the settle wait with `drain_settled`. The room
    /// the settled messages freed is filled at once: those deliveries are of other, already
    /// durable messages.
    ///
    /// # Errors
    /// `Storage` if the append failed (nothing is settled then).
    async fn settle(&mut self, ids: &[i64]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        match &self.writes {
            Writes::Local => {
                let appended = self
                    .store
                    .settle(ids, now)
                    .map_err(|error| QueueError::Storage(error.to_string()))?;
                let Some(appended) = appended else {
                    return Ok(());
                };
                let settling = Settling {
                    ids: ids.to_vec(),
                    replies: Vec::new(),
                };
                self.settling.push(appended.next_offset, settling);
            }
            Writes::Replicated { log, .. } => {
                // A purge settles every ready message at once: commands of at most
                // SETTLE_IDS_MAX ids (512 KiB) keep each raft entry far below a frame. The
                // acks waiting wait for the last.
                for chunk in ids.chunks(SETTLE_IDS_MAX) {
                    let command = QueueCommand::Settle {
                        now_ms: now,
                        ids: chunk.to_vec(),
                    };
                    let settling = Settling {
                        ids: chunk.to_vec(),
                        replies: Vec::new(),
                    };
                    self.settling
                        .push_commit(log.submit(command.encode()), settling);
                }
            }
        }
        let more = self.state.dispatch(now);
        if !more.is_empty() {
            Box::pin(self.apply(more)).await?;
        }
        Ok(())
    }

    /// Sends a dead-lettered message's copy to the queue's dead-letter exchange; true if a
    /// republish was started (it settles the message when the copy is stored), false if
    /// there is nowhere to send it and the caller settles it.
    fn forward_dead_letter(&mut self, id: i64, reason: DeadLetterReason) -> bool {
        let Ok(Some(record)) = self.store.read(id) else {
            return false;
        };
        self.forward_copy(id, record, reason)
    }

    /// Dead-letters a message refused before it was stored (`reject-publish-dlx`): its copy
    /// goes to the dead-letter exchange with reason `maxlen`, and there is nothing to settle.
    /// A refused message that is itself a dead-lettered copy is dropped instead, so full
    /// queues that dead-letter into each other cannot pass a message round for ever.
    fn forward_refused(&mut self, message: &Message, now: i64) {
        if header_value(&message.headers, "x-death-reason").is_some() {
            return;
        }
        let record = Record {
            key: Some(Bytes::copy_from_slice(message.routing_key.as_bytes())),
            value: Some(message.body.clone()),
            headers: message.headers.clone(),
            offset: NOT_STORED,
            timestamp_ms: now,
        };
        self.forward_copy(NOT_STORED, record, DeadLetterReason::MaxLength);
    }

    /// Hands the dead-lettered copy of `record` (message `id`) to the queue's forwarder.
    fn forward_copy(&mut self, id: i64, record: Record, reason: DeadLetterReason) -> bool {
        let Some((exchange, routing_key)) = self.dead_letter_target.clone() else {
            return false;
        };
        let message = dead_letter_copy(record, reason, &self.name, routing_key);
        let forwarder = match &self.dead_letters {
            Some(forwarder) if !forwarder.is_closed() => forwarder.clone(),
            _ => {
                let (sender, receiver) = mpsc::unbounded_channel();
                tokio::spawn(forward_dead_letters(
                    self.manager.clone(),
                    self.name.clone(),
                    exchange,
                    receiver,
                ));
                self.dead_letters = Some(sender.clone());
                sender
            }
        };
        forwarder.send((id, message)).is_ok()
    }
}

/// The id of a dead-lettered message that was never stored (refused by `reject-publish-dlx`).
const NOT_STORED: i64 = -1;

/// Most dead-lettered copies one forwarder round republishes before it settles them.
const DEAD_LETTER_BATCH_MAX: usize = 1024;

/// Republishes a queue's dead-lettered copies through `exchange` in the order they come,
/// and settles each original once its copy is stored (or found no queue). It runs as a
/// task of its own because the target may be this very queue.
///
/// The channel is unbounded on purpose: each entry is a message already stored in the
/// queue (so the queue's length limit and the disk bound it), and a bounded channel could
/// deadlock a queue that dead-letters into itself (its task waiting for room here while
/// this task waits for room in the queue's command channel).
async fn forward_dead_letters(
    manager: Weak<QueueManager>,
    queue: String,
    exchange: String,
    mut copies: mpsc::UnboundedReceiver<(i64, Message)>,
) {
    while let Some(first) = copies.recv().await {
        let mut round = vec![first];
        while round.len() < DEAD_LETTER_BATCH_MAX {
            match copies.try_recv() {
                Ok(copy) => round.push(copy),
                Err(_) => break,
            }
        }
        let Some(manager) = manager.upgrade() else {
            return;
        };
        let ids: Vec<i64> = round.iter().map(|(id, _)| *id).collect();
        // A refused message (`NOT_STORED`) has no original to settle.
        let stored = manager
            .republish_dead_letters(&exchange, round.into_iter().map(|(_, copy)| copy))
            .await;
        let settled: Vec<i64> = ids
            .into_iter()
            .zip(stored)
            .filter_map(|(id, stored)| (stored && id != NOT_STORED).then_some(id))
            .collect();
        if settled.is_empty() {
            continue;
        }
        if let Ok(sender) = manager.sender(&queue) {
            let _ = sender
                .send(Command::Control(Control::Settle(settled)))
                .await;
        }
    }
}

/// Bytes a message takes in a record batch, roughly (body, key, headers).
pub(crate) fn message_bytes(message: &Message) -> usize {
    let headers: usize = message
        .headers
        .iter()
        .map(|header| header.key.len() + header.value.as_ref().map_or(0, Bytes::len) + 16)
        .sum();
    message.body.len() + message.routing_key.len() + headers + 32
}

/// A body's size as the delivery state counts it (bodies are far below 4 GiB: a frame
/// holds them).
fn body_bytes(length: usize) -> u32 {
    u32::try_from(length).unwrap_or(u32::MAX)
}

fn delivery_error(error: DeliveryError) -> QueueError {
    match error {
        DeliveryError::UnknownDeliveryTag { tag } => QueueError::UnknownDeliveryTag(tag),
        // A cancelled consumer's deliveries went back to the queue: its tags are unknown.
        DeliveryError::UnknownConsumer { tag, .. } => QueueError::UnknownDeliveryTag(tag),
        DeliveryError::QueueFull { limit } => QueueError::QueueFull {
            queue: String::new(),
            limit,
        },
    }
}

/// A [`DeliveredRun`] being gathered: one consumer's deliveries of messages from one stored
/// batch, as ranges of that batch's records section (adjacent ones merged, so a run of
/// consecutive messages is one slice of the stored bytes and is never copied).
struct RunBuilder {
    consumer: ConsumerId,
    base_offset: i64,
    base_timestamp: i64,
    section: Bytes,
    ranges: Vec<std::ops::Range<u32>>,
    marks: Vec<(DeliveryTag, bool)>,
    /// Record bytes so far.
    bytes: usize,
}

impl RunBuilder {
    fn start(consumer: ConsumerId, mark: (DeliveryTag, bool), stored: &StoredRecord) -> RunBuilder {
        RunBuilder {
            consumer,
            base_offset: stored.base_offset,
            base_timestamp: stored.base_timestamp,
            section: stored.section.clone(),
            ranges: vec![stored.range.clone()],
            marks: vec![mark],
            bytes: stored.range.len(),
        }
    }

    /// Whether `stored` joins this run: it comes from the run's batch (a stored batch never
    /// changes, so its base offset names its bytes, whichever read of them `stored`
    /// slices) and keeps the run within [`RUN_BYTES_MAX`].
    fn takes(&self, stored: &StoredRecord) -> bool {
        stored.base_offset == self.base_offset && self.bytes + stored.range.len() <= RUN_BYTES_MAX
    }

    fn push(&mut self, mark: (DeliveryTag, bool), stored: &StoredRecord) {
        self.marks.push(mark);
        self.bytes += stored.range.len();
        match self.ranges.last_mut() {
            Some(last) if last.end == stored.range.start => last.end = stored.range.end,
            _ => self.ranges.push(stored.range.clone()),
        }
    }

    fn finish(self) -> DeliveredRun {
        let records = match self.ranges.as_slice() {
            [only] => self.section.slice(only.start as usize..only.end as usize),
            ranges => {
                let bytes = ranges.iter().map(|range| range.len()).sum();
                let mut out = BytesMut::with_capacity(bytes);
                for range in ranges {
                    out.extend_from_slice(&self.section[range.start as usize..range.end as usize]);
                }
                out.freeze()
            }
        };
        DeliveredRun {
            consumer: self.consumer,
            base_offset: self.base_offset,
            base_timestamp: self.base_timestamp,
            marks: self.marks,
            records,
        }
    }
}
