//! Core operations on queues: exchange and queue definitions, bindings, publish with
//! confirms, subscriptions and acks. The rules that do not belong to one queue's task live
//! here: broker-owned headers are stripped from what publishers send, an unroutable
//! mandatory message is returned, only the session that started a consumer may settle its
//! deliveries or cancel it, and definition changes (which fsync) run on the blocking pool.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use wharf_protocol::batch::Header;

use super::cluster_sync::BindingChange;
use crate::acl::{Operation, ResourceType};
use crate::cluster::metadata::BindingMeta;
use crate::core::{Broker, Session};
use crate::queue::delay::DUE_HEADER;
use crate::queue::exchange::ExchangeKind;
use crate::queue::{
    args_from_pairs, AckScope, BindingInfo, CancelReason, ConsumerId, ConsumerOptions,
    DeleteConditions, Deliveries, DeliveryTag, Durability, GetMode, GotMessage, Message, Moved,
    PublishTicket, Published, QueueArgs, QueueError, QueueManager, QueueStats, Requeue,
    SharedPrefetch, EXCHANGE_HEADER, GET_BYTES_MAX,
};

/// A publish.
#[derive(Debug, Clone)]
pub struct PublishQuery {
    /// The exchange (`""`: the default exchange).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// Return the message (an error) when no queue takes it.
    pub mandatory: Mandatory,
    /// Headers; broker-owned ones are dropped.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Bytes,
}

/// What happens to a message no queue takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mandatory {
    /// It is returned to the publisher ([`PublishOutcome::Returned`]).
    Return,
    /// It is dropped and counted.
    Drop,
}

/// The confirmed outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Durable in these queues.
    Routed(Vec<String>),
    /// No queue took it; it was dropped (not mandatory).
    Dropped,
    /// No queue took the mandatory message; it was not stored.
    Returned,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeQuery {
    /// The queue.
    pub queue: String,
    /// Most unacknowledged deliveries.
    pub prefetch: u32,
    /// Consumers of a higher priority with room get messages first (0: the default).
    pub priority: i32,
    /// The queue's only consumer (refused with [`crate::queue::Precondition::ExclusiveUse`] if it has
    /// consumers; later subscribes are refused the same way), decided in the queue's task.
    pub exclusive: bool,
    /// A window shared with other consumers, besides `prefetch` (AMQP's basic.qos
    /// `global`: the channel's consumers together).
    pub shared_prefetch: Option<Arc<SharedPrefetch>>,
}

/// An ack, nack or reject of deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleQuery {
    /// The queue.
    pub queue: String,
    /// The consumer the deliveries went to.
    pub consumer: ConsumerId,
    /// The delivery tag.
    pub tag: DeliveryTag,
    /// This delivery only, or every one up to it.
    pub scope: AckScope,
    /// Ack, or nack with or without requeue.
    pub settle: Settle,
}

/// How deliveries are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with them.
    Ack,
    /// Refused: requeued or dead-lettered.
    Nack(Requeue),
}

/// The confirm of a publish, awaited after the ordered phase.
pub type PublishCompletion =
    Pin<Box<dyn Future<Output = Result<PublishOutcome, QueueError>> + Send>>;
/// The confirms of a batch of publishes, awaited after the ordered phase: per publish, in
/// order, what its [`PublishCompletion`] would give.
pub type BatchCompletion =
    Pin<Box<dyn Future<Output = Vec<Result<PublishOutcome, QueueError>>> + Send>>;

/// A batch of publishes after the ordered phase ([`Broker::publish_batch`]).
pub struct PublishedBatch {
    /// Per publish, in order: why it was refused before it reached a queue, if it was.
    pub refused: Vec<Option<QueueError>>,
    /// Every publish's outcome, the refused ones' refusals included.
    pub completion: BatchCompletion,
}

impl std::fmt::Debug for PublishedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedBatch")
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

/// The durability of a settlement, awaited after the ordered phase.
pub type SettleCompletion = Pin<Box<dyn Future<Output = Result<(), QueueError>> + Send>>;

/// A move of messages between queues, run after the ordered phase.
pub type MoveCompletion = Pin<Box<dyn Future<Output = Moved> + Send>>;

/// Headers only the broker sets: a publisher's copies are dropped (they would fake the
/// source exchange, dead-letter history or bypass the delay limit).
fn is_reserved_header(key: &str) -> bool {
    key == EXCHANGE_HEADER || key == DUE_HEADER || key.starts_with("x-death-")
}

impl Broker {
    /// Declares an exchange of kind `kind` (`direct`, `fanout`, `topic`, `headers`). A
    /// declare of an exchange that exists (in the cluster's metadata when there is one,
    /// else here) needs Create or Describe and succeeds when the kind and durability match
    /// it (RabbitMQ's equivalence check), whatever its name; the default exchange (`""`)
    /// cannot be declared.
    ///
    /// # Errors
    /// `Invalid` for an unknown kind or the default exchange; `ExchangeDiffers`; the queue
    /// layer's refusal.
    pub async fn declare_exchange(
        &self,
        caller: &Session,
        name: String,
        kind: &str,
        durability: Durability,
    ) -> Result<(), QueueError> {
        let kind = ExchangeKind::parse(kind).ok_or_else(|| {
            QueueError::Invalid(format!(
                "exchange type {kind:?} is not direct, fanout, topic or headers"
            ))
        })?;
        if name.is_empty() {
            return Err(QueueError::Invalid(
                "operation not permitted on the default exchange (its name is reserved)"
                    .to_string(),
            ));
        }
        if let Some(current) = self.existing_exchange(&name) {
            // Whoever may create it or see it may declare it as it is; the refusal names
            // Create either way, so it does not tell whether the exchange exists.
            if self
                .check_exchange(caller, Operation::Describe, &name)
                .is_err()
            {
                self.check_exchange(caller, Operation::Create, &name)?;
            }
            crate::queue::manager::exchange_equivalence(&name, (kind, durability), current)?;
            if self.replicated().is_none() || self.queues.exchange_kind(&name).is_some() {
                return Ok(());
            }
            // In the cluster's metadata but not made here yet: the declare below (the same
            // as the log's, which it leaves as it is) makes this node's copy now, so a
            // publish through this node right after finds it.
        } else {
            self.check_exchange(caller, Operation::Create, &name)?;
        }
        if let Some(cluster) = self.replicated() {
            return self
                .declare_exchange_replicated(cluster, &name, kind, durability)
                .await;
        }
        let queues = self.queues.clone();
        blocking(move || queues.declare_exchange(&name, kind, durability)).await
    }

    /// Declares a queue for `session` (which owns it if it is exclusive).
    ///
    /// # Errors
    /// Bad arguments; a declare that differs from the existing queue; storage.
    pub async fn declare_queue(
        &self,
        session: &Session,
        name: String,
        args: Vec<(String, String)>,
        durability: Durability,
    ) -> Result<(), QueueError> {
        self.check_queue(session, Operation::Create, &name)?;
        let pairs = args;
        let args = args_from_pairs(
            pairs
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )?;
        // Every queue is cluster-wide (issue #20), a durable one any connection may use
        // replicated by default; an exclusive one is led by its connection's node.
        let shared = !args.exclusive;
        let replicable = shared && durability == Durability::Durable;
        let nodes = match self.replicated() {
            Some(cluster) if replicable => cluster.applied().state.nodes.len().max(1),
            _ => 1,
        };
        let existing = self
            .queues
            .args_of(&name)
            .map(|args| args.replication_factor);
        let (args, pairs) = resolve_replicas(args, pairs, nodes, replicable, existing)?;
        if let Some(cluster) = self.replicated() {
            // Checked before it is proposed: the local declare after it takes the log's
            // names as they are (server-named ones have a reserved prefix).
            crate::queue::manager::check_name(&name)?;
            let owner = (!shared).then(|| session.id());
            return self
                .declare_queue_replicated(cluster, &name, &pairs, args, durability, owner)
                .await;
        }
        let queues = self.queues.clone();
        let owner = session.id();
        // Opening a queue's storage creates and fsyncs files.
        blocking(move || queues.declare_queue_for(&name, args, durability, Some(owner))).await
    }

    /// Declares a queue named by the broker (`prefix` then random letters and digits, as
    /// AMQP's server-named `amq.gen-…` queues) for `session`; returns its name.
    ///
    /// # Errors
    /// As [`Broker::declare_queue`].
    pub async fn declare_server_named_queue(
        &self,
        session: &Session,
        prefix: String,
        args: Vec<(String, String)>,
        durability: Durability,
    ) -> Result<String, QueueError> {
        // The name is not known before it is made: the prefix stands for it (an ACL on
        // `amq.gen-` prefixed queues allows AMQP's server-named queues).
        self.check_queue(session, Operation::Create, &prefix)?;
        let pairs = args;
        let args = args_from_pairs(
            pairs
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )?;
        let (args, pairs) = resolve_replicas(args, pairs, 1, false, None)?;
        let queues = self.queues.clone();
        let owner = session.id();
        if let Some(cluster) = self.replicated() {
            // The name is drawn here, then declared as any other (through the log).
            let name = loop {
                let name = format!("{prefix}{}", crate::queue::manager::random_suffix());
                if !self.queues.exists(&name) {
                    break name;
                }
            };
            let owner = args.exclusive.then_some(owner);
            self.declare_queue_replicated(cluster, &name, &pairs, args, durability, owner)
                .await?;
            return Ok(name);
        }
        blocking(move || queues.declare_generated_queue_for(&prefix, args, durability, Some(owner)))
            .await
    }

    /// The counts of one queue, or `None` if it does not exist. Needs `Describe` on it.
    ///
    /// # Errors
    /// `Unauthorized`.
    pub async fn queue_stats(
        &self,
        caller: &Session,
        name: &str,
    ) -> Result<Option<QueueStats>, QueueError> {
        self.check_queue(caller, Operation::Describe, name)?;
        Ok(self
            .queues
            .list()
            .await
            .into_iter()
            .find(|stats| stats.name == name))
    }

    /// Refuses `session` a queue that is exclusive to another connection.
    ///
    /// # Errors
    /// `DeclareMismatch` naming the queue as exclusive to another connection.
    pub fn check_queue_access(&self, session: &Session, name: &str) -> Result<(), QueueError> {
        self.queues
            .check_not_exclusive_elsewhere(name, Some(session.id()))
    }

    /// One exchange's kind and binding count, or `None` if it does not exist. Needs
    /// `Describe` on it.
    ///
    /// # Errors
    /// `Unauthorized`.
    pub fn exchange_info(
        &self,
        caller: &Session,
        name: &str,
    ) -> Result<Option<(ExchangeKind, usize)>, QueueError> {
        self.check_exchange(caller, Operation::Describe, name)?;
        Ok(self
            .queues
            .list_exchanges()
            .into_iter()
            .find(|(exchange, ..)| exchange == name)
            .map(|(_, kind, _, bindings)| (kind, bindings)))
    }

    /// Binds a queue to an exchange.
    ///
    /// # Errors
    /// Unknown queue or exchange; bad headers arguments; storage.
    pub async fn bind_queue(
        &self,
        caller: &Session,
        queue: String,
        exchange: String,
        routing_key: String,
        headers: Vec<(String, String)>,
    ) -> Result<(), QueueError> {
        self.check_queue(caller, Operation::Write, &queue)?;
        self.check_exchange(caller, Operation::Read, &exchange)?;
        if let Some(cluster) = self.replicated() {
            let binding = binding_meta(queue, exchange, routing_key, headers);
            return self
                .binding_replicated(cluster, binding, BindingChange::Bind)
                .await;
        }
        let queues = self.queues.clone();
        blocking(move || queues.bind(&queue, &exchange, &routing_key, &borrowed(&headers))).await
    }

    /// Removes a binding (no error if it did not exist).
    ///
    /// # Errors
    /// Unknown queue or exchange; storage.
    pub async fn unbind_queue(
        &self,
        caller: &Session,
        queue: String,
        exchange: String,
        routing_key: String,
        headers: Vec<(String, String)>,
    ) -> Result<(), QueueError> {
        self.check_queue(caller, Operation::Write, &queue)?;
        self.check_exchange(caller, Operation::Read, &exchange)?;
        if let Some(cluster) = self.replicated() {
            let binding = binding_meta(queue, exchange, routing_key, headers);
            return self
                .binding_replicated(cluster, binding, BindingChange::Unbind)
                .await;
        }
        let queues = self.queues.clone();
        blocking(move || {
            queues
                .unbind(&queue, &exchange, &routing_key, &borrowed(&headers))
                .map(|_| ())
        })
        .await
    }

    /// Binds exchange `destination` to exchange `source`: messages `source` routes with
    /// `routing_key` (and `headers`) go on through `destination`.
    ///
    /// # Errors
    /// Unknown exchange; the default exchange; bad headers arguments; storage.
    pub async fn bind_exchange(
        &self,
        caller: &Session,
        destination: String,
        source: String,
        routing_key: String,
        headers: Vec<(String, String)>,
    ) -> Result<(), QueueError> {
        self.check_exchange(caller, Operation::Write, &destination)?;
        self.check_exchange(caller, Operation::Read, &source)?;
        if let Some(cluster) = self.replicated() {
            let binding = exchange_binding_meta(destination, source, routing_key, headers);
            return self
                .binding_replicated(cluster, binding, BindingChange::Bind)
                .await;
        }
        let queues = self.queues.clone();
        blocking(move || {
            queues.bind_exchange(&destination, &source, &routing_key, &borrowed(&headers))
        })
        .await
    }

    /// Removes an exchange-to-exchange binding (no error if it did not exist).
    ///
    /// # Errors
    /// Unknown exchange; storage.
    pub async fn unbind_exchange(
        &self,
        caller: &Session,
        destination: String,
        source: String,
        routing_key: String,
        headers: Vec<(String, String)>,
    ) -> Result<(), QueueError> {
        self.check_exchange(caller, Operation::Write, &destination)?;
        self.check_exchange(caller, Operation::Read, &source)?;
        if let Some(cluster) = self.replicated() {
            let binding = exchange_binding_meta(destination, source, routing_key, headers);
            return self
                .binding_replicated(cluster, binding, BindingChange::Unbind)
                .await;
        }
        let queues = self.queues.clone();
        blocking(move || {
            queues
                .unbind_exchange(&destination, &source, &routing_key, &borrowed(&headers))
                .map(|_| ())
        })
        .await
    }

    /// Deletes a queue with its messages.
    ///
    /// # Errors
    /// Unknown queue; storage.
    pub async fn delete_queue(&self, caller: &Session, name: &str) -> Result<(), QueueError> {
        self.check_queue(caller, Operation::Delete, name)?;
        match self.replicated() {
            Some(cluster) => self.delete_queue_replicated(cluster, name).await,
            None => self.queues.delete_queue(name).await,
        }
    }

    /// Deletes a queue if `conditions` hold, decided in the queue's task at one point in
    /// its order of operations (no consumer or message can slip in between the check and
    /// the delete); answers how many ready messages it deleted. Needs `Delete` on the
    /// queue.
    ///
    /// # Errors
    /// `Precondition` (`InUse`, `NotEmpty`) when a condition fails; unknown queue; storage.
    pub async fn delete_queue_if(
        &self,
        caller: &Session,
        name: &str,
        conditions: DeleteConditions,
    ) -> Result<u64, QueueError> {
        self.check_queue(caller, Operation::Delete, name)?;
        let deleted = self.queues.delete_queue_if(name, conditions).await?;
        if let Some(cluster) = self.replicated() {
            self.queue_deleted_here(cluster, name, false).await;
        }
        Ok(deleted)
    }

    /// Drops a queue's ready messages; returns how many. Needs `Delete` on the queue.
    ///
    /// # Errors
    /// Unknown queue.
    pub async fn purge_queue(&self, caller: &Session, name: &str) -> Result<u64, QueueError> {
        self.check_queue(caller, Operation::Delete, name)?;
        self.queues.purge(name).await
    }

    /// Every queue the caller may describe, with its counts.
    pub async fn list_queues(&self, caller: &Session) -> Vec<QueueStats> {
        let mut queues = self.queues.list().await;
        queues.retain(|stats| {
            self.permits(
                caller,
                Operation::Describe,
                ResourceType::Queue,
                &stats.name,
            )
        });
        queues
    }

    /// Takes up to `count` ready messages of a queue without a subscription: with
    /// [`GetMode::Requeue`] they stay, marked redelivered; with [`GetMode::Ack`] they are
    /// removed (durably, before the answer); with [`GetMode::Hold`] they are delivered to a
    /// holder of the session ([`new_holder`](Self::new_holder)).
    ///
    /// # Errors
    /// Unknown queue, an exclusive queue of another session, a holder of another session, a
    /// bad count, storage.
    pub async fn queue_get(
        &self,
        session: &Session,
        queue: &str,
        count: u32,
        mode: GetMode,
    ) -> Result<Vec<GotMessage>, QueueError> {
        self.queue_get_within(session, queue, count, GET_BYTES_MAX, mode)
            .await
    }

    /// Like [`queue_get`](Self::queue_get), taking messages only while their bytes (keys,
    /// bodies and headers) are below `bytes_max` (at most [`GET_BYTES_MAX`]); one message at
    /// least, so a get always makes progress.
    ///
    /// # Errors
    /// As [`queue_get`](Self::queue_get).
    pub async fn queue_get_within(
        &self,
        session: &Session,
        queue: &str,
        count: u32,
        bytes_max: usize,
        mode: GetMode,
    ) -> Result<Vec<GotMessage>, QueueError> {
        self.check_queue(session, Operation::Read, queue)?;
        if let GetMode::Hold(holder) = mode {
            check_owner(session, queue, holder)?;
        }
        self.queues
            .get_within(queue, count, bytes_max, mode, Some(session.id()))
            .await
    }

    /// A holder for [`GetMode::Hold`] gets of `queue` by `session`: the messages it takes
    /// are settled with [`settle`](Self::settle) under its id, return to the queue with
    /// [`cancel`](Self::cancel), and when the session closes.
    pub fn new_holder(&self, session: &Session, queue: &str) -> ConsumerId {
        let holder = self.queues.new_holder();
        session.add_consumer(queue, holder);
        holder
    }

    /// Every binding, or those of one queue.
    ///
    /// # Errors
    /// Unknown queue.
    pub fn list_bindings(
        &self,
        caller: &Session,
        queue: Option<&str>,
    ) -> Result<Vec<BindingInfo>, QueueError> {
        if let Some(queue) = queue {
            self.check_queue(caller, Operation::Describe, queue)?;
        }
        let mut bindings = self.queues.list_bindings(queue)?;
        bindings.retain(|binding| {
            self.permits(
                caller,
                Operation::Describe,
                ResourceType::Queue,
                &binding.queue,
            )
        });
        Ok(bindings)
    }

    /// Moves every ready message of `source` to `destination` (at-least-once: each is
    /// settled in `source` only once it is durable in `destination`). The returned future
    /// does the move; it borrows nothing, so a front end can run it as a completion.
    pub fn move_messages(
        &self,
        session: &Session,
        source: String,
        destination: String,
    ) -> MoveCompletion {
        let allowed = self
            .check_queue(session, Operation::Read, &source)
            .and_then(|()| self.check_queue(session, Operation::Write, &destination));
        if let Err(refused) = allowed {
            return Box::pin(async move {
                Moved {
                    moved: 0,
                    stopped: Some(refused),
                }
            });
        }
        let queues = self.queues.clone();
        let owner = session.id();
        Box::pin(async move {
            queues
                .move_messages(&source, &destination, Some(owner))
                .await
        })
    }

    /// Deletes an exchange.
    ///
    /// # Errors
    /// Unknown or built-in exchange; storage.
    pub async fn delete_exchange(&self, caller: &Session, name: String) -> Result<(), QueueError> {
        self.check_exchange(caller, Operation::Delete, &name)?;
        if let Some(cluster) = self.replicated() {
            return self.delete_exchange_replicated(cluster, &name).await;
        }
        let queues = self.queues.clone();
        blocking(move || queues.delete_exchange(&name)).await
    }

    /// Every exchange: name, kind, durability and binding count.
    pub fn list_exchanges(
        &self,
        caller: &Session,
    ) -> Vec<(String, ExchangeKind, Durability, usize)> {
        let mut exchanges = self.queues.list_exchanges();
        exchanges.retain(|(name, ..)| {
            self.permits(caller, Operation::Describe, ResourceType::Exchange, name)
        });
        exchanges
    }

    /// The ordered phase of a publish: hands the message to its queues, so one session's
    /// messages are stored in the order sent. The completion waits for the confirm (durable
    /// in every routed queue), so pipelined publishes share fsyncs. While a resource alarm
    /// (disk or memory) is on it first waits for it to clear.
    ///
    /// # Errors
    /// Unknown exchange or a bad header (nothing stored).
    pub async fn publish(
        &self,
        caller: &Session,
        query: PublishQuery,
    ) -> Result<PublishCompletion, QueueError> {
        self.check_publish(caller, &query)?;
        self.charge_quota(caller, super::QuotaKind::Produce, query.body.len() as u64);
        // A publisher is held while a resource alarm is on (RabbitMQ's memory and disk
        // alarms): its connection reads nothing more until there is room again.
        self.alarms_cleared().await;
        let mandatory = query.mandatory;
        let (exchange, message) = publish_message(query);
        let ticket = self.queues.publish_enqueue(&exchange, message).await?;
        Ok(self.publish_completion(ticket, mandatory))
    }

    /// Whether `query` can only be stored (or dropped, or returned) and never refused, as
    /// far as can be known before it is routed: the default exchange, a caller allowed to
    /// write to the queue, no `x-delay` to validate. A front end may hold such publishes
    /// back and hand them over together with [`Broker::publish_batch`] without a later one
    /// being stored after an earlier one's refusal.
    pub fn publish_batchable(&self, caller: &Session, query: &PublishQuery) -> bool {
        query.exchange.is_empty()
            && !query
                .headers
                .iter()
                .any(|header| header.key == crate::queue::delay::DELAY_HEADER)
            && self.check_publish(caller, query).is_ok()
    }

    /// The ordered phase of many publishes at once: each is handled exactly as
    /// [`Broker::publish`] handles it, in order, with one look at the routing table for
    /// all; their confirms come back together, one reply per queue for the batch.
    pub async fn publish_batch(
        &self,
        caller: &Session,
        queries: Vec<PublishQuery>,
    ) -> PublishedBatch {
        let refusals: Vec<Result<(), QueueError>> = queries
            .iter()
            .map(|query| self.check_publish(caller, query))
            .collect();
        if refusals.iter().any(Result::is_err) {
            // A batch with a refused publish is handled one by one, so the others keep
            // their order and each refusal its place.
            let mut started = Vec::with_capacity(queries.len());
            for (query, refusal) in queries.into_iter().zip(refusals) {
                started.push(match refusal {
                    Ok(()) => self.publish(caller, query).await,
                    Err(error) => Err(error),
                });
            }
            let refused = started
                .iter()
                .map(|started| started.as_ref().err().cloned())
                .collect();
            return PublishedBatch {
                refused,
                completion: Box::pin(async move {
                    let mut outcomes = Vec::with_capacity(started.len());
                    for started in started {
                        outcomes.push(match started {
                            Ok(completion) => completion.await,
                            Err(error) => Err(error),
                        });
                    }
                    outcomes
                }),
            };
        }
        let bytes: usize = queries.iter().map(|query| query.body.len()).sum();
        self.charge_quota(caller, super::QuotaKind::Produce, bytes as u64);
        self.alarms_cleared().await;
        let mandatory: Vec<Mandatory> = queries.iter().map(|query| query.mandatory).collect();
        let ticket = self
            .queues
            .publish_enqueue_many(queries.into_iter().map(publish_message).collect())
            .await;
        let refused = (0..mandatory.len())
            .map(|index| ticket.refusal(index).cloned())
            .collect();
        let queues = self.queues.clone();
        PublishedBatch {
            refused,
            completion: Box::pin(async move {
                ticket
                    .confirmed()
                    .await
                    .into_iter()
                    .zip(mandatory)
                    .map(|(published, mandatory)| {
                        Ok(publish_outcome(&queues, published?, mandatory))
                    })
                    .collect()
            }),
        }
    }

    /// What remains of a publish handed to its queues: its confirm, or what became of it.
    fn publish_completion(&self, ticket: PublishTicket, mandatory: Mandatory) -> PublishCompletion {
        let queues = self.queues.clone();
        Box::pin(async move {
            Ok(publish_outcome(
                &queues,
                ticket.confirmed().await?,
                mandatory,
            ))
        })
    }

    /// Starts a consumer of `session` on a queue; its deliveries arrive on the returned
    /// channel, bounded by the prefetch.
    ///
    /// # Errors
    /// Unknown queue, an exclusive queue of another session, a bad prefetch.
    pub async fn subscribe(
        &self,
        session: &Session,
        query: SubscribeQuery,
    ) -> Result<(ConsumerId, Deliveries), QueueError> {
        self.check_queue(session, Operation::Read, &query.queue)?;
        let (consumer, deliveries) = self
            .queues
            .subscribe_for(
                &query.queue,
                ConsumerOptions {
                    prefetch: query.prefetch,
                    priority: query.priority,
                    exclusive: query.exclusive,
                    shared_prefetch: query.shared_prefetch,
                },
                Some(session.id()),
            )
            .await?;
        session.add_consumer(&query.queue, consumer);
        Ok((consumer, deliveries))
    }

    /// The ordered phase of an ack or nack: only the session that started the consumer may
    /// settle its deliveries. The completion waits until the settlement is durable, so
    /// pipelined acks share fsyncs.
    ///
    /// # Errors
    /// A consumer of another session; unknown queue or tag.
    pub async fn settle(
        &self,
        session: &Session,
        query: SettleQuery,
    ) -> Result<SettleCompletion, QueueError> {
        check_owner(session, &query.queue, query.consumer)?;
        let ticket = match query.settle {
            Settle::Ack => {
                self.queues
                    .ack_enqueue(&query.queue, query.consumer, query.tag, query.scope)
                    .await?
            }
            Settle::Nack(requeue) => {
                self.queues
                    .nack_enqueue(
                        &query.queue,
                        query.consumer,
                        query.tag,
                        query.scope,
                        requeue,
                    )
                    .await?
            }
        };
        let queue = query.queue;
        Ok(Box::pin(async move {
            ticket.await.unwrap_or(Err(QueueError::Gone(queue)))
        }))
    }

    /// Cancels a consumer of `session`: its unacknowledged deliveries return to the queue.
    ///
    /// # Errors
    /// A consumer of another session.
    pub async fn cancel(
        &self,
        session: &Session,
        queue: &str,
        consumer: ConsumerId,
    ) -> Result<(), QueueError> {
        check_owner(session, queue, consumer)?;
        self.queues
            .cancel(queue, consumer, CancelReason::ClientCancelled)
            .await;
        session.remove_consumer(queue, consumer);
        Ok(())
    }

    /// Stops a consumer of `session` that keeps its unacknowledged deliveries (AMQP's
    /// basic.cancel): no more are delivered, those it holds are still settled with
    /// [`settle`](Self::settle), and return to the queue with [`cancel`](Self::cancel) or
    /// when the session closes.
    ///
    /// # Errors
    /// A consumer of another session.
    pub async fn stop_consumer(
        &self,
        session: &Session,
        queue: &str,
        consumer: ConsumerId,
    ) -> Result<(), QueueError> {
        check_owner(session, queue, consumer)?;
        self.queues.stop(queue, consumer).await;
        Ok(())
    }

    /// Refuses a publish the caller may not make: `Write` on the exchange, or on the queue
    /// the routing key names for the default exchange (which has no name to put in an ACL).
    fn check_publish(&self, caller: &Session, query: &PublishQuery) -> Result<(), QueueError> {
        if query.exchange.is_empty() {
            self.check_queue(caller, Operation::Write, &query.routing_key)
        } else {
            self.check_exchange(caller, Operation::Write, &query.exchange)
        }
    }

    /// [`Broker::check`] of an operation on a queue.
    fn check_queue(
        &self,
        caller: &Session,
        operation: Operation,
        name: &str,
    ) -> Result<(), QueueError> {
        Ok(self.check(caller, operation, ResourceType::Queue, name)?)
    }

    /// The kind and durability of exchange `name` as the cluster's applied metadata holds
    /// it (a built-in one as this node does), or as this node does on a lone node.
    fn existing_exchange(&self, name: &str) -> Option<(ExchangeKind, Durability)> {
        let Some(cluster) = self.replicated() else {
            return self.queues.exchange_kind(name);
        };
        if crate::cluster::metadata::is_builtin_exchange(name) {
            return self.queues.exchange_kind(name);
        }
        let state = cluster.applied().state;
        let kind = ExchangeKind::parse(state.exchanges.get(name)?)?;
        Some((kind, super::cluster_sync::logged_durability(&state, name)))
    }

    /// [`Broker::check`] of an operation on an exchange.
    fn check_exchange(
        &self,
        caller: &Session,
        operation: Operation,
        name: &str,
    ) -> Result<(), QueueError> {
        Ok(self.check(caller, operation, ResourceType::Exchange, name)?)
    }

    /// The session ends: its consumers are cancelled (their unacknowledged deliveries
    /// return, marked redelivered) and its exclusive queues deleted.
    pub async fn close_session(&self, session: &Session) {
        for (queue, consumer) in session.take_consumers() {
            self.queues
                .cancel(&queue, consumer, CancelReason::ConnectionClosed)
                .await;
        }
        let Some(cluster) = self
            .replicated()
            .filter(|_| self.queues.owns_queues(session.id()))
        else {
            self.queues.release_session(session.id()).await;
            return;
        };
        // Its exclusive queues leave the cluster's metadata too (a failure leaves them to
        // this node's follower, which tells the log of each one that is gone from here).
        // The follower's lock is held throughout, so a declare of one of the names by
        // another connection waits until the delete is in the log (else the delete would
        // remove the new queue).
        let _following = self.cluster_follow.lock().await;
        for name in self.queues.release_session(session.id()).await {
            self.queue_deleted_here(cluster, &name, true).await;
        }
    }
}

/// Name/value pairs as the queue layer takes them.
fn borrowed(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect()
}

fn check_owner(session: &Session, queue: &str, consumer: ConsumerId) -> Result<(), QueueError> {
    if session.owns_consumer(queue, consumer) {
        return Ok(());
    }
    Err(QueueError::Invalid(format!(
        "consumer {consumer} of queue {queue:?} was not started on this connection"
    )))
}

/// A queue binding as the metadata log records it.
fn binding_meta(
    queue: String,
    exchange: String,
    key: String,
    headers: Vec<(String, String)>,
) -> BindingMeta {
    BindingMeta {
        exchange,
        queue,
        key,
        arguments: headers.into_iter().collect(),
        to_exchange: false,
    }
}

/// An exchange-to-exchange binding as the metadata log records it.
fn exchange_binding_meta(
    destination: String,
    source: String,
    key: String,
    headers: Vec<(String, String)>,
) -> BindingMeta {
    BindingMeta {
        to_exchange: true,
        ..binding_meta(destination, source, key, headers)
    }
}

/// Runs a queue call that rewrites (and fsyncs) the definitions file or creates a queue's
/// files on the blocking pool, not on a runtime worker (STYLE.md section 4).
pub(super) async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|error| Err(QueueError::Storage(error.to_string())))
}

/// A publish as the queues take it: the exchange, and the message without the headers the
/// broker owns.
fn publish_message(query: PublishQuery) -> (String, Message) {
    let message = Message {
        routing_key: query.routing_key,
        body: query.body,
        headers: query
            .headers
            .into_iter()
            .filter(|header| !is_reserved_header(&header.key))
            .collect(),
    };
    (query.exchange, message)
}

/// What a confirmed publish became: stored, or (unroutable) returned or dropped and
/// counted.
fn publish_outcome(
    queues: &QueueManager,
    published: Published,
    mandatory: Mandatory,
) -> PublishOutcome {
    match published {
        Published::Routed(names) => PublishOutcome::Routed(names),
        Published::Unroutable if mandatory == Mandatory::Return => PublishOutcome::Returned,
        Published::Unroutable => {
            queues.dropped_unroutable.fetch_add(1, Ordering::Relaxed);
            PublishOutcome::Dropped
        }
    }
}

/// Replicas a quorum queue gets when it names no factor: three, or every node of a smaller
/// cluster (RabbitMQ's default quorum-queue group size is three).
const QUORUM_FACTOR: usize = 3;

/// The core's rule for a queue's replicas (issue #21): an explicit `replication-factor`
/// holds (1 opts out: AMQP's `x-queue-type: classic` asks for it), a quorum queue gets
/// [`QUORUM_FACTOR`] (at most the `nodes`), and any other durable queue all connections
/// share gets the cluster's default, as a topic does (three from three nodes on, else 1).
/// A factor above 1 needs a queue all connections share (durable, not exclusive) and at
/// most `nodes` (1 on a lone node). A redeclare of an existing queue (`existing`: its
/// factor) that names no factor keeps the queue's, so a client that redeclares with the
/// arguments it declared with is not refused after the cluster grew, nor one that leaves
/// out `x-queue-type`. Returns the arguments with the factor resolved (the
/// quorum flag gone, the factor present only above 1, so every node reads the same) and
/// the given `pairs` changed to match, as the metadata log records them.
///
/// # Errors
/// `Invalid` for a factor the queue or the cluster cannot have.
pub(crate) fn resolve_replicas(
    mut args: QueueArgs,
    mut pairs: Vec<(String, String)>,
    nodes: usize,
    shared: bool,
    existing: Option<Option<u32>>,
) -> Result<(QueueArgs, Vec<(String, String)>), QueueError> {
    let factor = match (args.replication_factor, args.quorum) {
        (Some(factor), _) => factor as usize,
        (None, _) if existing.is_some() => existing.flatten().map_or(1, |factor| factor as usize),
        (None, true) if shared => QUORUM_FACTOR.min(nodes),
        (None, false) if shared => crate::cluster::metadata::default_factor(nodes) as usize,
        (None, _) => 1,
    };
    if factor > 1 && !shared {
        return Err(QueueError::Invalid(
            "a replicated queue must be durable and not exclusive".to_string(),
        ));
    }
    if factor > nodes.max(1) {
        return Err(QueueError::Invalid(format!(
            "replication-factor {factor} is more than the {} node{} of the cluster",
            nodes.max(1),
            if nodes > 1 { "s" } else { "" }
        )));
    }
    args.quorum = false;
    args.replication_factor = (factor > 1).then(|| u32::try_from(factor).unwrap_or(u32::MAX));
    pairs.retain(|(key, _)| key != "queue-type" && key != "replication-factor");
    if let Some(factor) = args.replication_factor {
        pairs.push(("replication-factor".to_string(), factor.to_string()));
    }
    Ok((args, pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs = Vec<(String, String)>;

    fn resolved(
        pairs: &[(&str, &str)],
        nodes: usize,
        shared: bool,
    ) -> Result<(Option<u32>, Pairs), QueueError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let args = args_from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        resolve_replicas(args, pairs, nodes, shared, None)
            .map(|(args, pairs)| (args.replication_factor, pairs))
    }

    #[test]
    fn a_queue_gets_the_factor_asked_for_quorum_three_or_the_clusters_default() {
        // A durable shared queue: the cluster's default (3 from three nodes, else 1).
        assert_eq!(resolved(&[], 3, true).unwrap().0, Some(3));
        assert_eq!(resolved(&[], 5, true).unwrap().0, Some(3));
        assert_eq!(resolved(&[], 2, true).unwrap().0, None);
        assert_eq!(resolved(&[], 1, true).unwrap().0, None);
        // Quorum: three, or every node of a smaller cluster; a lone node's is one copy.
        assert_eq!(
            resolved(&[("queue-type", "quorum")], 2, true).unwrap().0,
            Some(2)
        );
        assert_eq!(
            resolved(&[("queue-type", "quorum")], 1, true).unwrap().0,
            None
        );
        // Explicit: held, 1 opts out; more than the nodes is refused.
        assert_eq!(
            resolved(&[("replication-factor", "1")], 3, true).unwrap().0,
            None
        );
        assert_eq!(
            resolved(&[("replication-factor", "2")], 3, true).unwrap().0,
            Some(2)
        );
        assert!(matches!(
            resolved(&[("replication-factor", "4")], 3, true),
            Err(QueueError::Invalid(_))
        ));
        assert!(matches!(
            resolved(&[("replication-factor", "2")], 1, true),
            Err(QueueError::Invalid(_))
        ));
        // Transient or exclusive queues are one connection's: never replicated.
        assert_eq!(
            resolved(&[("queue-type", "quorum")], 3, false).unwrap().0,
            None
        );
        assert_eq!(resolved(&[], 3, false).unwrap().0, None);
        assert!(matches!(
            resolved(&[("replication-factor", "3")], 3, false),
            Err(QueueError::Invalid(_))
        ));
        // The recorded pairs name the factor only above 1, and never the quorum flag, so
        // every node reads the same arguments.
        let (_, pairs) =
            resolved(&[("queue-type", "quorum"), ("max-length", "9")], 3, true).unwrap();
        assert_eq!(
            pairs,
            [
                ("max-length".to_string(), "9".to_string()),
                ("replication-factor".to_string(), "3".to_string())
            ]
        );
        let (_, pairs) = resolved(&[("replication-factor", "1")], 3, true).unwrap();
        assert!(pairs.is_empty());
        // A redeclare naming no factor keeps the queue's: one declared with a single copy
        // (before this rule, or as classic) stays so, and one replicated stays replicated
        // even if the cluster shrank.
        let again = |existing: Option<u32>, pairs: &[(&str, &str)], nodes: usize| {
            let owned: Vec<(String, String)> = pairs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect();
            let args =
                args_from_pairs(owned.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
            resolve_replicas(args, owned, nodes, true, Some(existing))
                .map(|(args, _)| args.replication_factor)
        };
        assert_eq!(again(None, &[], 3).unwrap(), None);
        assert_eq!(again(Some(3), &[], 3).unwrap(), Some(3));
        assert_eq!(
            again(Some(3), &[("queue-type", "quorum")], 3).unwrap(),
            Some(3)
        );
        assert_eq!(again(None, &[("queue-type", "quorum")], 3).unwrap(), None);
        // An explicit factor is what the client asks for (compared with the queue's).
        assert_eq!(
            again(None, &[("replication-factor", "3")], 3).unwrap(),
            Some(3)
        );
    }
}
