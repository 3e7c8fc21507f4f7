//! Queues another node of the cluster leads (issue #20): every node keeps a copy of each
//! queue the metadata log defines, but only the queue's leader stores and delivers its
//! messages. On the other nodes the manager hands a queue's commands to a *proxy* instead
//! of to the queue's task (`QueueManager::sender`, the routing of a publish, the counts of
//! a listing), and the proxy carries each command to the leader over the internal wire,
//! where [`QueueManager::serve_remote`] hands it to the real task. So every caller (the
//! four front ends, dead-lettering, the listing) works on a queue led elsewhere without
//! knowing it.
//!
//! - A publish is stamped and routed where it arrives; the proxy sends the messages of
//!   the publishes waiting for it in one request, and each confirm is answered with the
//!   leader's (stored and fsynced there).
//! - A subscription is made on the leader under the consumer's id (ids are unique in the
//!   cluster: each node numbers its consumers from `node_id << 32`), and a pump task pulls
//!   its deliveries (long polls of [`PULL_WAIT`]) into the local consumer's channel. Acks,
//!   nacks, cancels and stops go through the proxy with the leader's delivery tags.
//! - The leader cancels a pulled consumer whose node stopped pulling for
//!   [`PULL_LEASE`] (that node died or was cut off): its deliveries return to the queue.
//!   Every forwarded command carries its node's id and *epoch* (one per start): the first
//!   command of a node's new start cancels every consumer and holder its previous start
//!   made here, so a restarted node neither strands their deliveries nor meets its old
//!   consumer ids.
//! - A node serves a forwarded command only for a queue it leads in its own view (a node
//!   that applied a leader change later than the sender refuses, nothing done); it never
//!   forwards that command again.
//! - A consumer whose leader cannot be reached is cancelled with
//!   [`CancelReason::Unreachable`].
//! - A move of messages between queues runs whole on the source's leader, which stores
//!   into a destination led elsewhere through its own proxy: the publishes are a second
//!   forwarded command, served on the destination's leader (at most two hops, no loop).
//!
//! Not forwarded: a shared (AMQP `global`) prefetch window spans one node's consumers only.
//!
//! The wire types are JSON (bodies and records as base64), carried opaquely by the metadata
//! log's internal listener (`RaftRpc::Forward`).

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::batch::{Header, Record};

use crate::queue::delivery::{AckScope, CancelReason, ConsumerId, DeliveryTag, GetMode, Requeue};
use crate::queue::manager::{QueueManager, GET_COUNT_MAX};
use crate::queue::task::{Command, Control, Outcomes, PendingPublish, PublishReply, GET_BYTES_MAX};
use crate::queue::types::{
    ConsumerOptions, ConsumerPush, DeleteConditions, DeliveredRun, Deliveries, GotMessage, Message,
    Moved, Precondition, QueueError, QueueStats,
};

/// How long the leader holds a pull open when the consumer has nothing waiting.
pub const PULL_WAIT: Duration = Duration::from_millis(1_000);
/// A pulled consumer whose node did not pull for this long is cancelled by the leader.
/// A live pump pulls at least every [`PULL_WAIT`] plus a round trip; ten seconds outlast a
/// paused or briefly cut-off node, and bound how long a dead node's consumer holds its
/// unacknowledged deliveries (60 s until 2026-12-06: the fault loop's consumer, moving to
/// another node after a SIGKILL, waited that long for the messages its old subscription
/// held).
pub const PULL_LEASE: Duration = Duration::from_secs(10);
/// How long a forwarded command may take before the caller gives up on the leader.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a node waits for a move it forwarded to the source's leader: a move is many
/// rounds, each an fsync in the destination and one in the source.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a listing waits for a queue's counts from its leader (a listing asks every
/// queue in turn, so one node that does not answer must not hold it for long).
pub const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// Most message body bytes one forwarded publish request carries.
const PUBLISH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most delivery bytes one pull answers with.
const PULL_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long the leader waits for a queue the metadata log just defined to appear in its own
/// copy of the definitions (it applies the log a heartbeat after the proposer, at worst).
const DEFINITION_WAIT: Duration = Duration::from_secs(3);

/// A forwarded call's future.
pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// What the queues need of the cluster: who leads a queue, and a way to reach that node.
pub trait QueueCluster: Send + Sync + Debug + 'static {
    /// This node's id.
    fn node_id(&self) -> u64;
    /// The node that leads `queue`, when the metadata log places it on another node.
    fn leader_elsewhere(&self, queue: &str) -> Option<u64>;
    /// Sends `request` (JSON of a [`RemoteCall`]) to `node` and waits for its answer.
    fn call(&self, node: u64, request: String, timeout: Duration) -> CallFuture<'_>;
    /// `queue`'s own rule (auto-delete after its last consumer, `x-expires`) decided to
    /// delete it on this node, its leader. `None` when the metadata log does not hold it
    /// (this node's alone: the caller deletes it). Otherwise the log decides first: the
    /// future proposes a delete that applies only if nobody declared the queue since this
    /// call (a client's declare-ok between the rule and the delete keeps the queue), and
    /// answers whether the log dropped it (every node's follower then deletes its copy,
    /// this node's too). Not dropped (declared again, or the proposal failed): the queue
    /// stays.
    fn delete_by_rule(&self, queue: &str) -> Option<RuleFuture>;
    /// The node whose connection owns `queue` when the metadata log holds it as exclusive
    /// (`None`: not exclusive, or not in the log). A node's own owners are in its
    /// registry; this tells it about another node's.
    fn exclusive_node(&self, _queue: &str) -> Option<u64> {
        None
    }
}

/// The metadata log's answer to a queue's own rule ([`QueueCluster::delete_by_rule`]):
/// whether it dropped the queue.
pub type RuleFuture = Pin<Box<dyn Future<Output = bool> + Send + 'static>>;

/// A queue command for the queue's leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteCall {
    /// The queue.
    pub queue: String,
    /// The node that forwards it.
    pub origin: u64,
    /// That node's start ([`new_epoch`]).
    pub epoch: u64,
    /// What to do.
    pub op: RemoteOp,
}

/// The commands a proxy forwards.
#[derive(Debug, Serialize, Deserialize)]
pub enum RemoteOp {
    /// Store these publishes (already stamped and routed), each confirmed on its own.
    Publish(Vec<Vec<WireMessage>>),
    /// Ack deliveries of a consumer.
    Ack {
        consumer: u64,
        tag: u64,
        multiple: bool,
    },
    /// Nack deliveries of a consumer.
    Nack {
        consumer: u64,
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
    /// Subscribe consumer `consumer` (the id the calling node gave it).
    Subscribe {
        consumer: u64,
        prefetch: u32,
        priority: i32,
        exclusive: bool,
    },
    /// The deliveries waiting for a subscribed consumer (waits up to `wait_ms` for one).
    Pull { consumer: u64, wait_ms: u64 },
    /// Cancel a consumer or holder (its deliveries return).
    Cancel { consumer: u64, reason: CancelReason },
    /// Stop dispatching to a consumer that keeps its deliveries.
    Stop { consumer: u64 },
    /// Remove every ready message.
    Purge,
    /// The queue's counts.
    Stats,
    /// Take ready messages without a subscription.
    Get {
        count: usize,
        bytes: usize,
        mode: WireGetMode,
    },
    /// Check a delete's conditions and retire the queue.
    Retire { if_unused: bool, if_empty: bool },
    /// Take consumers again after a failed delete.
    Reopen,
    /// The queue was redeclared.
    Touch,
    /// Move every ready message of the queue to `destination` (the whole move runs on the
    /// queue's leader, whose proxy forwards to a destination led elsewhere).
    Move { destination: String },
}

/// The answer to a [`RemoteOp`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RemoteAnswer {
    /// To `Publish`: one outcome per publish.
    Published(Vec<Result<(), WireError>>),
    /// To `Ack`, `Nack`, `Subscribe`, `Cancel`, `Stop`, `Reopen`, `Touch`.
    Done(Result<(), WireError>),
    /// To `Pull`: runs of deliveries, then possibly the consumer's end.
    Pulled {
        runs: Vec<WireRun>,
        /// The broker cancelled the consumer (nothing follows).
        cancelled: Option<CancelReason>,
        /// The consumer's channel ended (stopped or cancelled by its client).
        ended: bool,
    },
    /// To `Purge` and `Retire`.
    Count(Result<u64, WireError>),
    /// To `Stats`.
    Stats(Result<QueueStats, WireError>),
    /// To `Get`.
    Got(Result<Vec<WireGot>, WireError>),
    /// To `Move`: how many moved, and why it stopped early.
    Moved {
        moved: u64,
        stopped: Option<WireError>,
    },
}

/// A [`GetMode`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum WireGetMode {
    Requeue,
    Ack,
    Hold(u64),
}

/// A [`QueueError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireError {
    UnknownExchange(String),
    UnknownQueue(String),
    DeclareMismatch(String),
    Invalid(String),
    QueueFull { queue: String, limit: String },
    UnknownDeliveryTag(u64),
    Storage(String),
    Gone(String),
    Precondition { queue: String, failed: Precondition },
    Cluster { no_leader: bool, message: String },
}

impl From<QueueError> for WireError {
    fn from(error: QueueError) -> WireError {
        match error {
            QueueError::UnknownExchange(name) => WireError::UnknownExchange(name),
            QueueError::UnknownQueue(name) => WireError::UnknownQueue(name),
            QueueError::DeclareMismatch(text) => WireError::DeclareMismatch(text),
            // Exchange declares are never forwarded (they go through the metadata log).
            differs @ QueueError::ExchangeDiffers { .. } => {
                WireError::DeclareMismatch(differs.to_string())
            }
            QueueError::Invalid(text) => WireError::Invalid(text),
            QueueError::QueueFull { queue, limit } => WireError::QueueFull { queue, limit },
            QueueError::UnknownDeliveryTag(tag) => WireError::UnknownDeliveryTag(tag.0),
            QueueError::Storage(text) => WireError::Storage(text),
            QueueError::Gone(name) => WireError::Gone(name),
            QueueError::Precondition { queue, failed } => WireError::Precondition { queue, failed },
            QueueError::Cluster { no_leader, message } => WireError::Cluster { no_leader, message },
            // The leader checks no ACLs (the node the client reached did); kept as text.
            QueueError::Unauthorized(denied) => WireError::Invalid(denied.to_string()),
        }
    }
}

impl From<WireError> for QueueError {
    fn from(error: WireError) -> QueueError {
        match error {
            WireError::UnknownExchange(name) => QueueError::UnknownExchange(name),
            WireError::UnknownQueue(name) => QueueError::UnknownQueue(name),
            WireError::DeclareMismatch(text) => QueueError::DeclareMismatch(text),
            WireError::Invalid(text) => QueueError::Invalid(text),
            WireError::QueueFull { queue, limit } => QueueError::QueueFull { queue, limit },
            WireError::UnknownDeliveryTag(tag) => QueueError::UnknownDeliveryTag(DeliveryTag(tag)),
            WireError::Storage(text) => QueueError::Storage(text),
            WireError::Gone(name) => QueueError::Gone(name),
            WireError::Precondition { queue, failed } => QueueError::Precondition { queue, failed },
            WireError::Cluster { no_leader, message } => QueueError::Cluster { no_leader, message },
        }
    }
}

/// A header on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireHeader {
    pub key: String,
    #[serde(with = "base64_option")]
    pub value: Option<Bytes>,
}

/// A stamped message on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMessage {
    pub routing_key: String,
    #[serde(with = "base64_bytes")]
    pub body: Bytes,
    pub headers: Vec<WireHeader>,
}

/// A run of deliveries on the wire ([`DeliveredRun`] without its consumer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRun {
    pub base_offset: i64,
    pub base_timestamp: i64,
    pub marks: Vec<(u64, bool)>,
    #[serde(with = "base64_bytes")]
    pub records: Bytes,
}

/// A message a get took, on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireGot {
    pub redelivered: bool,
    pub tag: Option<u64>,
    pub offset: i64,
    pub timestamp_ms: i64,
    #[serde(with = "base64_option")]
    pub key: Option<Bytes>,
    #[serde(with = "base64_option")]
    pub value: Option<Bytes>,
    pub headers: Vec<WireHeader>,
}

fn wire_headers(headers: Vec<Header>) -> Vec<WireHeader> {
    headers
        .into_iter()
        .map(|header| WireHeader {
            key: header.key,
            value: header.value,
        })
        .collect()
}

fn headers_of(headers: Vec<WireHeader>) -> Vec<Header> {
    headers
        .into_iter()
        .map(|header| Header {
            key: header.key,
            value: header.value,
        })
        .collect()
}

impl From<Message> for WireMessage {
    fn from(message: Message) -> WireMessage {
        WireMessage {
            routing_key: message.routing_key,
            body: message.body,
            headers: wire_headers(message.headers),
        }
    }
}

impl From<WireMessage> for Message {
    fn from(message: WireMessage) -> Message {
        Message {
            routing_key: message.routing_key,
            body: message.body,
            headers: headers_of(message.headers),
        }
    }
}

impl From<GotMessage> for WireGot {
    fn from(got: GotMessage) -> WireGot {
        WireGot {
            redelivered: got.redelivered,
            tag: got.tag.map(|tag| tag.0),
            offset: got.record.offset,
            timestamp_ms: got.record.timestamp_ms,
            key: got.record.key,
            value: got.record.value,
            headers: wire_headers(got.record.headers),
        }
    }
}

impl From<WireGot> for GotMessage {
    fn from(got: WireGot) -> GotMessage {
        GotMessage {
            redelivered: got.redelivered,
            tag: got.tag.map(DeliveryTag),
            record: Record {
                offset: got.offset,
                timestamp_ms: got.timestamp_ms,
                key: got.key,
                value: got.value,
                headers: headers_of(got.headers),
            },
        }
    }
}

impl WireRun {
    fn of(run: DeliveredRun) -> WireRun {
        WireRun {
            base_offset: run.base_offset,
            base_timestamp: run.base_timestamp,
            marks: run
                .marks
                .into_iter()
                .map(|(tag, redelivered)| (tag.0, redelivered))
                .collect(),
            records: run.records,
        }
    }

    fn into_run(self, consumer: ConsumerId) -> DeliveredRun {
        DeliveredRun {
            consumer,
            base_offset: self.base_offset,
            base_timestamp: self.base_timestamp,
            marks: self
                .marks
                .into_iter()
                .map(|(tag, redelivered)| (DeliveryTag(tag), redelivered))
                .collect(),
            records: self.records,
        }
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

mod base64_option {
    use base64::Engine as _;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Bytes>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => {
                serializer.serialize_some(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Bytes>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(|bytes| Some(Bytes::from(bytes)))
            .map_err(serde::de::Error::custom)
    }
}

/// Decodes a forwarded request (the internal listener's decoder of the broker's requests).
///
/// # Errors
/// serde's description of what does not parse.
pub fn decode_call(request: &str) -> Result<RemoteCall, String> {
    serde_json::from_str(request).map_err(|error| error.to_string())
}

/// A number for this start of the node: the injected clock's milliseconds when the queues
/// joined the cluster, times 1,000, plus a count of the managers this process joined (a
/// restart takes longer than a millisecond, and two managers in one process, as in tests,
/// differ by the count).
pub(crate) fn new_epoch(now_ms: i64) -> u64 {
    static JOINED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let joined = JOINED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000;
    u64::try_from(now_ms)
        .unwrap_or(0)
        .saturating_mul(1_000)
        .saturating_add(joined)
}

/// A node that forwards to this one: its start, and the consumers and holders (queue, id)
/// that start made here.
#[derive(Debug, Default)]
pub(crate) struct Origin {
    epoch: u64,
    owned: std::collections::HashSet<(String, ConsumerId)>,
}

/// The nodes that forward to this one, by node id.
pub(crate) type Origins = std::sync::Mutex<HashMap<u64, Origin>>;

/// A proxy's way to the leader of one queue.
#[derive(Debug, Clone)]
struct Link {
    queue: String,
    node: u64,
    cluster: Arc<dyn QueueCluster>,
    epoch: u64,
}

impl Link {
    /// Sends `op` and waits for the answer; a failure is the cluster error to hand back.
    async fn call(&self, op: RemoteOp, timeout: Duration) -> Result<RemoteAnswer, QueueError> {
        let request = serde_json::to_string(&RemoteCall {
            queue: self.queue.clone(),
            origin: self.cluster.node_id(),
            epoch: self.epoch,
            op,
        })
        .map_err(|error| QueueError::Storage(error.to_string()))?;
        let answer = self
            .cluster
            .call(self.node, request, timeout)
            .await
            .map_err(|reason| self.unreachable(&reason))?;
        serde_json::from_str(&answer).map_err(|error| self.unreachable(&error.to_string()))
    }

    fn unreachable(&self, reason: &str) -> QueueError {
        QueueError::Cluster {
            no_leader: false,
            message: format!(
                "queue {:?} is led by node {}, which did not answer ({reason}); the operation may or may not have been done",
                self.queue, self.node
            ),
        }
    }

    fn unexpected(&self, answer: &RemoteAnswer) -> QueueError {
        self.unreachable(&format!("unexpected answer {answer:?}"))
    }

    async fn done(&self, op: RemoteOp) -> Result<(), QueueError> {
        match self.call(op, CALL_TIMEOUT).await? {
            RemoteAnswer::Done(result) => result.map_err(QueueError::from),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn count(&self, op: RemoteOp) -> Result<u64, QueueError> {
        match self.call(op, CALL_TIMEOUT).await? {
            RemoteAnswer::Count(result) => result.map_err(QueueError::from),
            other => Err(self.unexpected(&other)),
        }
    }
}

/// Runs a move of `source`'s ready messages to `destination` on `source`'s leader `node`
/// ([`RemoteOp::Move`]), waiting up to [`MOVE_TIMEOUT`]. A move the leader is still doing
/// when the wait ends goes on there; the caller is told it may or may not have moved.
pub(crate) async fn forward_move(
    source: String,
    node: u64,
    cluster: Arc<dyn QueueCluster>,
    epoch: u64,
    destination: String,
) -> Moved {
    let link = Link {
        queue: source,
        node,
        cluster,
        epoch,
    };
    let stopped = |error| Moved {
        moved: 0,
        stopped: Some(error),
    };
    match link
        .call(RemoteOp::Move { destination }, MOVE_TIMEOUT)
        .await
    {
        Ok(RemoteAnswer::Moved { moved, stopped }) => Moved {
            moved,
            stopped: stopped.map(QueueError::from),
        },
        // A leader of an earlier build, which knows no `Move`: nothing was done.
        Ok(RemoteAnswer::Done(Err(error))) => stopped(error.into()),
        Ok(other) => stopped(link.unexpected(&other)),
        Err(error) => stopped(error),
    }
}

/// Starts the proxy of `queue`, led by `node`; the manager sends it the queue's commands.
pub(crate) fn spawn_proxy(
    queue: String,
    node: u64,
    cluster: Arc<dyn QueueCluster>,
    epoch: u64,
) -> mpsc::Sender<Command> {
    let (sender, receiver) = mpsc::channel(1_024);
    let link = Link {
        queue,
        node,
        cluster,
        epoch,
    };
    tokio::spawn(proxy(link, receiver));
    sender
}

/// The proxy: one command after the other, in the order they came (so one connection's
/// publishes are stored in order); waiting publishes go to the leader together.
async fn proxy(link: Link, mut commands: mpsc::Receiver<Command>) {
    let mut next: Option<Command> = None;
    loop {
        let command = match next.take() {
            Some(command) => command,
            None => match commands.recv().await {
                Some(command) => command,
                None => return,
            },
        };
        match command {
            Command::Publish(messages, confirm) => {
                let pending = vec![(messages, PublishReply::One(confirm))];
                next = forward_publishes(&link, pending, &mut commands).await;
            }
            Command::PublishMany(messages, reply) => {
                let pending = vec![(messages, PublishReply::Many(reply))];
                next = forward_publishes(&link, pending, &mut commands).await;
            }
            Command::Ack(consumer, tag, scope, confirm) => {
                let op = RemoteOp::Ack {
                    consumer: consumer.0,
                    tag: tag.0,
                    multiple: scope == AckScope::Multiple,
                };
                let _ = confirm.send(link.done(op).await);
            }
            Command::Nack(consumer, tag, scope, requeue, confirm) => {
                let op = RemoteOp::Nack {
                    consumer: consumer.0,
                    tag: tag.0,
                    multiple: scope == AckScope::Multiple,
                    requeue: requeue == Requeue::Yes,
                };
                let _ = confirm.send(link.done(op).await);
            }
            Command::Stop(reply, _) => {
                // Only a queue's own task is stopped; a proxy just ends.
                let _ = reply.send(());
                return;
            }
            Command::Control(control) => forward_control(&link, control).await,
        }
    }
}

/// Sends `pending` and the publishes waiting behind them as one request; answers each
/// confirm. Returns the command that ended the run of publishes, if any. A
/// [`Command::PublishMany`]'s messages travel as publishes of their own, each with its own
/// outcome, as the queue's task would answer them.
async fn forward_publishes(
    link: &Link,
    mut pending: Vec<PendingPublish>,
    commands: &mut mpsc::Receiver<Command>,
) -> Option<Command> {
    let body_bytes = |pending: &[PendingPublish]| -> usize {
        pending
            .iter()
            .flat_map(|(messages, _)| messages.iter())
            .map(|message| message.body.len())
            .sum()
    };
    let mut next = None;
    while body_bytes(&pending) < PUBLISH_BYTES_MAX {
        match commands.try_recv() {
            Ok(Command::Publish(messages, confirm)) => {
                pending.push((messages, PublishReply::One(confirm)));
            }
            Ok(Command::PublishMany(messages, reply)) => {
                pending.push((messages, PublishReply::Many(reply)));
            }
            Ok(other) => {
                next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    let mut batches: Vec<Vec<WireMessage>> = Vec::new();
    let mut replies = Vec::with_capacity(pending.len());
    for (messages, reply) in pending {
        match reply {
            PublishReply::One(_) => {
                batches.push(messages.into_iter().map(WireMessage::from).collect());
                replies.push((reply, 1));
            }
            PublishReply::Many(_) => {
                let count = messages.len();
                batches.extend(
                    messages
                        .into_iter()
                        .map(|message| vec![WireMessage::from(message)]),
                );
                replies.push((reply, count));
            }
        }
    }
    let expected = batches.len();
    let outcomes: Vec<Result<(), QueueError>> =
        match link.call(RemoteOp::Publish(batches), CALL_TIMEOUT).await {
            Ok(RemoteAnswer::Published(outcomes)) if outcomes.len() == expected => outcomes
                .into_iter()
                .map(|outcome| outcome.map_err(QueueError::from))
                .collect(),
            Ok(other) => vec![Err(link.unexpected(&other)); expected],
            Err(error) => vec![Err(error); expected],
        };
    let mut outcomes = outcomes.into_iter();
    for (reply, count) in replies {
        match reply {
            PublishReply::One(confirm) => {
                let missing = || Err(QueueError::Invalid("no outcome for a publish".into()));
                let _ = confirm.send(outcomes.next().unwrap_or_else(missing));
            }
            PublishReply::Many(reply) => {
                let _ = reply.send(Outcomes::Each(outcomes.by_ref().take(count).collect()));
            }
        }
    }
    next
}

async fn forward_control(link: &Link, control: Control) {
    match control {
        Control::Subscribe(consumer, options, push, reply) => {
            let op = RemoteOp::Subscribe {
                consumer: consumer.0,
                prefetch: options.prefetch,
                priority: options.priority,
                exclusive: options.exclusive,
            };
            let subscribed = link.done(op).await;
            if subscribed.is_ok() {
                tokio::spawn(pump(link.clone(), consumer, push));
            }
            let _ = reply.send(subscribed);
        }
        Control::Retire(conditions, reply) => {
            let op = RemoteOp::Retire {
                if_unused: conditions.if_unused,
                if_empty: conditions.if_empty,
            };
            let _ = reply.send(link.count(op).await);
        }
        Control::Reopen => {
            if let Err(error) = link.done(RemoteOp::Reopen).await {
                tracing::warn!(queue = link.queue, %error, "reopening a queue on its leader failed");
            }
        }
        Control::Cancel(consumer, reason, reply) => {
            let op = RemoteOp::Cancel {
                consumer: consumer.0,
                reason,
            };
            end_consumer(link, consumer, op, reply).await;
        }
        Control::Stop(consumer, reply) => {
            let op = RemoteOp::Stop {
                consumer: consumer.0,
            };
            end_consumer(link, consumer, op, reply).await;
        }
        Control::Touch => {
            let _ = link.done(RemoteOp::Touch).await;
        }
        Control::Purge(reply) => match link.count(RemoteOp::Purge).await {
            Ok(purged) => {
                let _ = reply.send(purged);
            }
            // Dropping the reply answers the caller `Gone`.
            Err(error) => {
                tracing::warn!(queue = link.queue, %error, "purge on the queue's leader failed")
            }
        },
        Control::Stats(reply) => match link.call(RemoteOp::Stats, STATS_TIMEOUT).await {
            Ok(RemoteAnswer::Stats(Ok(stats))) => {
                let _ = reply.send(stats);
            }
            Ok(other) => tracing::debug!(
                queue = link.queue,
                ?other,
                "no counts from the queue's leader"
            ),
            Err(error) => {
                tracing::debug!(queue = link.queue, %error, "no counts from the queue's leader")
            }
        },
        Control::Get(count, bytes, mode, reply) => {
            let _ = reply.send(forward_get(link, count, bytes, mode).await);
        }
        Control::TakeForMove(_, reply) => {
            let _ = reply.send(Err(move_refused(link)));
        }
        Control::FinishMove { reply, .. } => {
            let _ = reply.send(Err(move_refused(link)));
        }
        Control::Settle(_) => {
            // Only a queue's own dead-letter forwarder settles, on the leader.
            tracing::warn!(
                queue = link.queue,
                "a settle reached a queue's proxy; ignored"
            );
        }
    }
}

/// Cancels or stops a consumer at the leader; answered either way (a leader that does not
/// answer cancels it itself once its lease runs out).
async fn end_consumer(link: &Link, consumer: ConsumerId, op: RemoteOp, reply: oneshot::Sender<()>) {
    if let Err(error) = link.done(op).await {
        tracing::warn!(queue = link.queue, %consumer, %error, "ending a consumer on the queue's leader failed");
    }
    let _ = reply.send(());
}

/// A get at the leader.
async fn forward_get(
    link: &Link,
    count: usize,
    bytes: usize,
    mode: GetMode,
) -> Result<Vec<GotMessage>, QueueError> {
    let mode = match mode {
        GetMode::Requeue => WireGetMode::Requeue,
        GetMode::Ack => WireGetMode::Ack,
        GetMode::Hold(holder) => WireGetMode::Hold(holder.0),
    };
    let op = RemoteOp::Get { count, bytes, mode };
    match link.call(op, CALL_TIMEOUT).await? {
        RemoteAnswer::Got(got) => got
            .map(|got| got.into_iter().map(GotMessage::from).collect())
            .map_err(QueueError::from),
        other => Err(link.unexpected(&other)),
    }
}

/// A round of a move reached a proxy: the source's leader changed after the move was
/// routed. Nothing was taken; asking again reaches the new leader.
fn move_refused(link: &Link) -> QueueError {
    QueueError::Cluster {
        no_leader: true,
        message: format!(
            "queue {:?} is led by node {} now; nothing more was moved, ask again",
            link.queue, link.node
        ),
    }
}

/// Pulls a consumer's deliveries from the leader into its local channel until the
/// consumer ends there, the leader cancels it, or the leader cannot be reached.
async fn pump(link: Link, consumer: ConsumerId, push: mpsc::Sender<ConsumerPush>) {
    loop {
        if push.is_closed() {
            // The local consumer is gone (its cancel may have failed): end it at the
            // leader too, or its lease would be renewed by pulls forever.
            let op = RemoteOp::Cancel {
                consumer: consumer.0,
                reason: CancelReason::ConnectionClosed,
            };
            if let Err(error) = link.done(op).await {
                tracing::debug!(queue = link.queue, %consumer, %error, "cancelling a consumer whose channel closed");
            }
            return;
        }
        let op = RemoteOp::Pull {
            consumer: consumer.0,
            wait_ms: PULL_WAIT.as_millis() as u64,
        };
        match link.call(op, PULL_WAIT + CALL_TIMEOUT).await {
            Ok(RemoteAnswer::Pulled {
                runs,
                cancelled,
                ended,
            }) => {
                for run in runs {
                    if push
                        .send(ConsumerPush::Run(run.into_run(consumer)))
                        .await
                        .is_err()
                    {
                        // The local consumer is gone; its cancel reaches the leader
                        // through the proxy.
                        return;
                    }
                }
                if let Some(reason) = cancelled {
                    let _ = push.send(ConsumerPush::Cancelled(reason)).await;
                    return;
                }
                if ended {
                    return;
                }
            }
            other => {
                let reason = match other {
                    Ok(answer) => format!("{:?}", link.unexpected(&answer)),
                    Err(error) => error.to_string(),
                };
                tracing::warn!(queue = link.queue, %consumer, %reason, "consumer cancelled: the queue's leader is unreachable");
                let _ = push
                    .send(ConsumerPush::Cancelled(CancelReason::Unreachable))
                    .await;
                return;
            }
        }
    }
}

/// A consumer of this node's queue that another node pulls.
#[derive(Debug)]
pub(crate) struct PulledConsumer {
    queue: String,
    /// Its channel; a pull takes it out while it waits (no lock across the wait) and puts
    /// it back. `None` while a pull has it.
    deliveries: std::sync::Mutex<Option<Deliveries>>,
    /// When it was last pulled (start or end of a pull).
    last_pull: std::sync::Mutex<Instant>,
}

/// The consumers other nodes pull from this one, by id.
pub(crate) type PulledConsumers = std::sync::Mutex<HashMap<ConsumerId, Arc<PulledConsumer>>>;

impl QueueManager {
    /// Serves one forwarded queue command (the leader's half of the proxy): hands it to
    /// this node's task of the queue and answers with the outcome, as JSON.
    pub async fn serve_remote(self: &Arc<Self>, request: String) -> String {
        let answer = match decode_call(&request) {
            Ok(call) => {
                self.check_origin(call.origin, call.epoch).await;
                if self.led_elsewhere(&call.queue) {
                    refusal(
                        &call.op,
                        QueueError::Cluster {
                            no_leader: true,
                            message: format!(
                                "this node no longer leads queue {:?}; nothing was done, ask again",
                                call.queue
                            ),
                        },
                    )
                } else {
                    self.serve_call(call).await
                }
            }
            Err(error) => RemoteAnswer::Done(Err(WireError::Invalid(format!(
                "a forwarded queue request does not parse: {error}"
            )))),
        };
        serde_json::to_string(&answer).unwrap_or_else(|error| {
            format!(
                "{{\"Done\":{{\"Err\":{{\"Storage\":{:?}}}}}}}",
                error.to_string()
            )
        })
    }

    /// The first command of a node's new start cancels what its previous start made here.
    async fn check_origin(&self, origin: u64, epoch: u64) {
        let stale: Vec<(String, ConsumerId)> = {
            let mut origins = self.origins();
            let known = origins.entry(origin).or_default();
            if known.epoch == epoch {
                return;
            }
            known.epoch = epoch;
            known.owned.drain().collect()
        };
        for (queue, consumer) in stale {
            tracing::info!(queue, %consumer, origin, "the node that made this consumer restarted; cancelled, its deliveries return to the queue");
            self.end_remote_consumer(&queue, consumer, CancelReason::ConnectionClosed)
                .await;
        }
    }

    /// Cancels a consumer or holder another node made here: its deliveries return.
    async fn end_remote_consumer(&self, queue: &str, consumer: ConsumerId, reason: CancelReason) {
        self.pulled().remove(&consumer);
        if let Ok(sender) = self.local_sender(queue) {
            ask(&sender, |reply| {
                Command::Control(Control::Cancel(consumer, reason, reply))
            })
            .await;
        }
        self.forget_consumer(queue, consumer).await;
    }

    /// Records a consumer or holder `origin` made here (cancelled when it restarts).
    fn own(&self, origin: u64, queue: &str, consumer: ConsumerId) {
        if let Some(known) = self.origins().get_mut(&origin) {
            known.owned.insert((queue.to_string(), consumer));
        }
    }

    /// Forgets a consumer or holder `origin` cancelled.
    fn disown(&self, origin: u64, queue: &str, consumer: ConsumerId) {
        if let Some(known) = self.origins().get_mut(&origin) {
            known.owned.remove(&(queue.to_string(), consumer));
        }
    }

    async fn serve_call(self: &Arc<Self>, call: RemoteCall) -> RemoteAnswer {
        let RemoteCall {
            queue, origin, op, ..
        } = call;
        if let RemoteOp::Pull { consumer, wait_ms } = op {
            let wait = Duration::from_millis(wait_ms.min(5_000));
            return self.serve_pull(ConsumerId(consumer), wait).await;
        }
        let sender = match self.local_sender_when_defined(&queue).await {
            Ok(sender) => sender,
            Err(error) => return refusal(&op, error),
        };
        // No connection of another node owns an exclusive queue of this one: only what any
        // connection may do to it (publish, counts) passes.
        if matches!(
            op,
            RemoteOp::Subscribe { .. }
                | RemoteOp::Get { .. }
                | RemoteOp::Purge
                | RemoteOp::Retire { .. }
        ) {
            if let Err(error) = self.check_not_exclusive_elsewhere(&queue, None) {
                return refusal(&op, error);
            }
        }
        let gone = || WireError::Gone(queue.clone());
        let settled = |outcome: Option<Result<(), QueueError>>| {
            outcome.map_or(Err(gone()), |outcome| outcome.map_err(WireError::from))
        };
        match op {
            RemoteOp::Publish(batches) => serve_publish(&sender, batches, gone()).await,
            RemoteOp::Ack {
                consumer,
                tag,
                multiple,
            } => {
                let (consumer, tag) = (ConsumerId(consumer), DeliveryTag(tag));
                let command = |reply| Command::Ack(consumer, tag, scope(multiple), reply);
                RemoteAnswer::Done(settled(ask(&sender, command).await))
            }
            RemoteOp::Nack {
                consumer,
                tag,
                multiple,
                requeue,
            } => {
                let (consumer, tag) = (ConsumerId(consumer), DeliveryTag(tag));
                let requeue = if requeue { Requeue::Yes } else { Requeue::No };
                let command = |reply| Command::Nack(consumer, tag, scope(multiple), requeue, reply);
                RemoteAnswer::Done(settled(ask(&sender, command).await))
            }
            RemoteOp::Subscribe {
                consumer,
                prefetch,
                priority,
                exclusive,
            } => {
                let options = ConsumerOptions {
                    prefetch,
                    priority,
                    exclusive,
                    shared_prefetch: None,
                };
                let consumer = ConsumerId(consumer);
                let subscribed = self
                    .serve_subscribe(&queue, consumer, options, sender)
                    .await;
                if subscribed.is_ok() {
                    self.own(origin, &queue, consumer);
                }
                RemoteAnswer::Done(subscribed.map_err(WireError::from))
            }
            RemoteOp::Cancel { consumer, reason } => {
                let consumer = ConsumerId(consumer);
                self.disown(origin, &queue, consumer);
                self.end_remote_consumer(&queue, consumer, reason).await;
                RemoteAnswer::Done(Ok(()))
            }
            RemoteOp::Stop { consumer } => {
                let consumer = ConsumerId(consumer);
                let command = |reply| Command::Control(Control::Stop(consumer, reply));
                ask(&sender, command).await;
                self.forget_consumer(&queue, consumer).await;
                RemoteAnswer::Done(Ok(()))
            }
            RemoteOp::Purge => {
                let purged = ask(&sender, |reply| Command::Control(Control::Purge(reply))).await;
                RemoteAnswer::Count(purged.ok_or_else(gone))
            }
            RemoteOp::Stats => {
                let stats = ask(&sender, |reply| Command::Control(Control::Stats(reply))).await;
                RemoteAnswer::Stats(stats.ok_or_else(gone))
            }
            RemoteOp::Get { count, bytes, mode } => {
                let mode = match mode {
                    WireGetMode::Requeue => GetMode::Requeue,
                    WireGetMode::Ack => GetMode::Ack,
                    WireGetMode::Hold(holder) => {
                        self.own(origin, &queue, ConsumerId(holder));
                        GetMode::Hold(ConsumerId(holder))
                    }
                };
                // The forwarding node checked these; the leader holds to its own limits.
                let (count, bytes) = (
                    count.clamp(1, GET_COUNT_MAX as usize),
                    bytes.min(GET_BYTES_MAX),
                );
                let command = |reply| Command::Control(Control::Get(count, bytes, mode, reply));
                RemoteAnswer::Got(ask(&sender, command).await.map_or(Err(gone()), |got| {
                    got.map(|got| got.into_iter().map(WireGot::from).collect())
                        .map_err(WireError::from)
                }))
            }
            RemoteOp::Retire {
                if_unused,
                if_empty,
            } => {
                let conditions = DeleteConditions {
                    if_unused,
                    if_empty,
                };
                let command = |reply| Command::Control(Control::Retire(conditions, reply));
                RemoteAnswer::Count(
                    ask(&sender, command)
                        .await
                        .map_or(Err(gone()), |ready| ready.map_err(WireError::from)),
                )
            }
            RemoteOp::Reopen => {
                let sent = sender.send(Command::Control(Control::Reopen)).await;
                RemoteAnswer::Done(sent.map_err(|_| gone()))
            }
            RemoteOp::Touch => {
                let sent = sender.send(Command::Control(Control::Touch)).await;
                RemoteAnswer::Done(sent.map_err(|_| gone()))
            }
            RemoteOp::Move { destination } => {
                // Here, never forwarded again (this node leads the source in its view).
                // A destination declared just before the move may reach this node's
                // definitions a moment after the source.
                if let Err(error) = self.local_sender_when_defined(&destination).await {
                    return RemoteAnswer::Moved {
                        moved: 0,
                        stopped: Some(error.into()),
                    };
                }
                let moved = self.move_here(&queue, &destination, None).await;
                RemoteAnswer::Moved {
                    moved: moved.moved,
                    stopped: moved.stopped.map(WireError::from),
                }
            }
            RemoteOp::Pull { .. } => unreachable_pull(),
        }
    }

    /// Subscribes a consumer another node will pull, under the id that node gave it.
    async fn serve_subscribe(
        &self,
        queue: &str,
        consumer: ConsumerId,
        options: ConsumerOptions,
        sender: mpsc::Sender<Command>,
    ) -> Result<(), QueueError> {
        let deliveries = self.subscribe_as(queue, consumer, options, sender).await?;
        let pulled = Arc::new(PulledConsumer {
            queue: queue.to_string(),
            deliveries: std::sync::Mutex::new(Some(deliveries)),
            last_pull: std::sync::Mutex::new(Instant::now()),
        });
        self.pulled().insert(consumer, pulled);
        Ok(())
    }

    /// The deliveries waiting for a pulled consumer: waits up to `wait` for the first.
    async fn serve_pull(&self, consumer: ConsumerId, wait: Duration) -> RemoteAnswer {
        let Some(pulled) = self.pulled().get(&consumer).cloned() else {
            // Its lease ran out (or the leader restarted): its deliveries were returned.
            return RemoteAnswer::Pulled {
                runs: Vec::new(),
                cancelled: Some(CancelReason::Unreachable),
                ended: true,
            };
        };
        pulled.touch();
        let Some(mut deliveries) = pulled.take_deliveries() else {
            // Another pull of this consumer is under way (the node retried): nothing here.
            return RemoteAnswer::Pulled {
                runs: Vec::new(),
                cancelled: None,
                ended: false,
            };
        };
        let mut runs = Vec::new();
        let mut cancelled = None;
        let mut ended = false;
        let mut bytes = 0;
        let first = match tokio::time::timeout(wait, deliveries.recv_push()).await {
            Ok(Some(push)) => Some(push),
            Ok(None) => {
                ended = true;
                None
            }
            Err(_) => None,
        };
        let mut next = first;
        while let Some(push) = next.take() {
            match push {
                ConsumerPush::Run(run) => {
                    bytes += run.records.len();
                    runs.push(WireRun::of(run));
                }
                ConsumerPush::Cancelled(reason) => {
                    cancelled = Some(reason);
                    break;
                }
            }
            if bytes >= PULL_BYTES_MAX {
                break;
            }
            next = match deliveries.try_recv_push() {
                Ok(push) => Some(push),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    ended = true;
                    None
                }
            };
        }
        pulled.put_back(deliveries);
        pulled.touch();
        if ended || cancelled.is_some() {
            self.pulled().remove(&consumer);
        }
        RemoteAnswer::Pulled {
            runs,
            cancelled,
            ended,
        }
    }

    /// Cancels the pulled consumers whose node stopped pulling for [`PULL_LEASE`]: their
    /// deliveries return to their queues, as when a connection closes.
    pub(crate) async fn expire_pulled(&self) {
        let expired: Vec<(ConsumerId, String)> = {
            let mut pulled = self.pulled();
            let expired: Vec<(ConsumerId, String)> = pulled
                .iter()
                .filter(|(_, consumer)| consumer.idle() > PULL_LEASE)
                .map(|(id, consumer)| (*id, consumer.queue.clone()))
                .collect();
            for (id, _) in &expired {
                pulled.remove(id);
            }
            expired
        };
        for (consumer, queue) in expired {
            tracing::warn!(queue, %consumer, "a consumer's node stopped pulling its deliveries; cancelled, its deliveries return to the queue");
            if let Ok(sender) = self.local_sender(&queue) {
                let (reply, done) = oneshot::channel();
                let cancel = Control::Cancel(consumer, CancelReason::ConnectionClosed, reply);
                if sender.send(Command::Control(cancel)).await.is_ok() {
                    let _ = done.await;
                }
            }
            self.forget_consumer(&queue, consumer).await;
        }
    }

    /// This node's task of `queue`, waiting briefly for a queue the metadata log defined
    /// but this node has not applied yet.
    async fn local_sender_when_defined(
        &self,
        queue: &str,
    ) -> Result<mpsc::Sender<Command>, QueueError> {
        let deadline = Instant::now() + DEFINITION_WAIT;
        loop {
            match self.local_sender(queue) {
                Err(QueueError::UnknownQueue(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }
}

impl PulledConsumer {
    fn take_deliveries(&self) -> Option<Deliveries> {
        self.deliveries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }

    fn put_back(&self, deliveries: Deliveries) {
        *self
            .deliveries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(deliveries);
    }

    fn touch(&self) {
        *self
            .last_pull
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Instant::now();
    }

    fn idle(&self) -> Duration {
        self.last_pull
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .elapsed()
    }
}

fn scope(multiple: bool) -> AckScope {
    if multiple {
        AckScope::Multiple
    } else {
        AckScope::Single
    }
}

/// Sends the command `command` builds around a reply channel to a queue's task and waits
/// for the reply; None when the task is gone.
async fn ask<T>(
    sender: &mpsc::Sender<Command>,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    sender.send(command(reply)).await.ok()?;
    answer.await.ok()
}

/// Hands forwarded publishes to the queue's task as one command and waits for each one's
/// confirm.
async fn serve_publish(
    sender: &mpsc::Sender<Command>,
    batches: Vec<Vec<WireMessage>>,
    gone: WireError,
) -> RemoteAnswer {
    let mut answers = Vec::with_capacity(batches.len());
    let mut sent = true;
    for batch in batches {
        let (confirm, answer) = oneshot::channel();
        let messages = batch.into_iter().map(Message::from).collect();
        // Sent one after the other, they wait in the task's channel together and are
        // stored as one run.
        sent = sent
            && sender
                .send(Command::Publish(messages, confirm))
                .await
                .is_ok();
        answers.push(answer);
    }
    let mut outcomes = Vec::with_capacity(answers.len());
    for answer in answers {
        outcomes.push(match (sent, answer.await) {
            (true, Ok(outcome)) => outcome.map_err(WireError::from),
            _ => Err(gone.clone()),
        });
    }
    RemoteAnswer::Published(outcomes)
}

/// The answer to `op` when the queue is not here.
fn refusal(op: &RemoteOp, error: QueueError) -> RemoteAnswer {
    let error = WireError::from(error);
    match op {
        RemoteOp::Publish(batches) => RemoteAnswer::Published(vec![Err(error); batches.len()]),
        RemoteOp::Purge | RemoteOp::Retire { .. } => RemoteAnswer::Count(Err(error)),
        RemoteOp::Stats => RemoteAnswer::Stats(Err(error)),
        RemoteOp::Get { .. } => RemoteAnswer::Got(Err(error)),
        RemoteOp::Move { .. } => RemoteAnswer::Moved {
            moved: 0,
            stopped: Some(error),
        },
        _ => RemoteAnswer::Done(Err(error)),
    }
}

fn unreachable_pull() -> RemoteAnswer {
    // serve_call answers pulls before it looks the queue up.
    RemoteAnswer::Done(Err(WireError::Invalid("a pull was misrouted".to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_runs_and_errors_survive_the_wire() {
        let message = Message {
            routing_key: "k".to_string(),
            body: Bytes::from_static(b"\x00\xffbody"),
            headers: vec![
                Header {
                    key: "a".to_string(),
                    value: Some(Bytes::from_static(b"\x01v")),
                },
                Header {
                    key: "null".to_string(),
                    value: None,
                },
            ],
        };
        let call = RemoteCall {
            queue: "q".to_string(),
            origin: 1,
            epoch: 7,
            op: RemoteOp::Publish(vec![vec![WireMessage::from(message.clone())]]),
        };
        let decoded = decode_call(&serde_json::to_string(&call).unwrap()).unwrap();
        let RemoteOp::Publish(batches) = decoded.op else {
            panic!("not a publish: {decoded:?}");
        };
        let back = Message::from(batches[0][0].clone());
        assert_eq!(back.routing_key, message.routing_key);
        assert_eq!(back.body, message.body);
        assert_eq!(back.headers, message.headers);

        let run = WireRun {
            base_offset: 7,
            base_timestamp: 9,
            marks: vec![(3, false), (4, true)],
            records: Bytes::from_static(b"\x02\x03"),
        };
        let text = serde_json::to_string(&run).unwrap();
        let back: WireRun = serde_json::from_str(&text).unwrap();
        let run = back.into_run(ConsumerId(5));
        assert_eq!(run.consumer, ConsumerId(5));
        assert_eq!(
            run.marks,
            vec![(DeliveryTag(3), false), (DeliveryTag(4), true)]
        );
        assert_eq!(run.records, Bytes::from_static(b"\x02\x03"));

        let full = QueueError::QueueFull {
            queue: "q".to_string(),
            limit: "5 messages".to_string(),
        };
        let text = serde_json::to_string(&WireError::from(full.clone())).unwrap();
        let back: WireError = serde_json::from_str(&text).unwrap();
        assert_eq!(QueueError::from(back).to_string(), full.to_string());
    }

    #[test]
    fn a_request_that_does_not_parse_is_an_error_not_a_panic() {
        for bad in ["", "{", "{\"queue\":\"q\",\"op\":{\"Publish\":[[{\"routing_key\":\"k\",\"body\":\"!!\",\"headers\":[]}]]}}", "[1,2]"] {
            assert!(decode_call(bad).is_err(), "{bad:?} parsed");
        }
    }
}
