//! [`Subscriber`]: a consumer of one queue, fed by the broker's pushes.
//!
//! Each subscriber owns a connection of its own: the broker ties a consumer to the connection
//! that subscribed, and returns every unacknowledged delivery to the queue (to be redelivered
//! with `redelivered = true`) when that connection closes. Sharing the pooled connection
//! would let an unrelated reconnect end the subscription silently.
//!
//! Deliveries arrive as `Deliver` pushes routed by the connection to a channel whose capacity
//! is the prefetch window: the broker never has more than `prefetch` deliveries unacknowledged
//! at this consumer, so the channel never fills, and a broker that broke the window closes the
//! connection with an error rather than blocking the reader (which would also block the
//! answers to acks). The channel is registered before the Subscribe request is sent, because
//! pushes may overtake its response.
//!
//! Invariants: a [`Delivery`] keeps the connection alive (it holds it through an `Arc`), so an
//! ack can always be sent while a delivery exists; after [`Subscriber::cancel`] no further
//! delivery is handed out.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wharf_protocol::messages::{
    AckRequest, CancelRequest, ConfigEntry, ConsumerCancelledPush, DeclareQueueRequest,
    DeliverPush, DeliveryMark, QueueAdminResponse, SubscribeRequest, SubscribeResponse,
};
use wharf_protocol::{ApiKey, Header, Request};

use crate::cluster::{response_as, Client};
use crate::connection::{Connection, PushReceiver, Pushed};
use crate::error::{check_queue_code, Error, QueueSubject, Result};
use crate::queue_admin::QueueArgs;

/// Largest prefetch window a subscriber accepts: the broker's own bound (AMQP's u16 limit),
/// so a window the client accepts is never silently lowered by the broker. The push channel
/// holds up to this many deliveries (allocated as they arrive), so the bound also caps the
/// memory one slow reader may pin.
pub const PREFETCH_MAX: u32 = 65_535;

/// Whether a negatively acknowledged message goes back to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Back to the queue, to be redelivered with `redelivered = true`.
    Yes,
    /// Dead-lettered (or dropped if the queue has no dead-letter exchange).
    No,
}

/// Whether an ack or nack settles one delivery or every earlier one too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Single,
    Multiple,
}

/// A consumer of one queue.
///
/// ```no_run
/// # async fn example() -> wharf_client::Result<()> {
/// use wharf_client::{Client, ClientConfig, Requeue, Subscriber};
///
/// let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
/// let mut subscriber = Subscriber::subscribe(&client, "orders", 10).await?;
/// while let Some(delivery) = subscriber.next().await? {
///     match std::str::from_utf8(&delivery.body) {
///         Ok(text) => {
///             println!("{} {text}", delivery.routing_key);
///             delivery.ack().await?;
///         }
///         // Not text: dead-letter it.
///         Err(_) => delivery.nack(Requeue::No).await?,
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Subscriber {
    shared: Arc<Shared>,
    pushes: PushReceiver,
    /// Deliveries of a `DeliverBatch` push not handed out yet.
    received: VecDeque<Delivery>,
    correlation_id: u32,
    cancelled: bool,
    /// How to subscribe again after a lost connection: `None` for an exclusive queue, which
    /// goes with the connection that declared it.
    resubscribe: Option<(Client, u32)>,
}

/// What a subscriber and its deliveries share.
#[derive(Debug)]
struct Shared {
    connection: Connection,
    queue: String,
    consumer_id: u64,
}

/// One message pushed to a [`Subscriber`]. Settle it with exactly one of the ack, nack or
/// reject calls; an unsettled delivery returns to the queue when the subscriber goes.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The delivery tag, unique per consumer, increasing.
    pub tag: u64,
    /// True if the message was delivered before (requeued, or its consumer went away).
    pub redelivered: bool,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its headers, broker-added ones (`x-exchange`, `x-death-*`) included.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Bytes,
    /// When the broker stored it (ms since the Unix epoch).
    pub timestamp_ms: i64,
    shared: Arc<Shared>,
}

impl Subscriber {
    /// Subscribes to `queue` with a window of `prefetch` unacknowledged deliveries, on a
    /// connection of its own.
    ///
    /// # Errors
    /// [`Error::InvalidState`] for a prefetch outside 1..=[`PREFETCH_MAX`],
    /// [`Error::UnknownQueue`], connection errors.
    pub async fn subscribe(client: &Client, queue: &str, prefetch: u32) -> Result<Subscriber> {
        check_prefetch(prefetch)?;
        let connection = client.open_dedicated().await?;
        let mut subscriber = Subscriber::subscribe_on(connection, queue, prefetch).await?;
        subscriber.resubscribe = Some((client.clone(), prefetch));
        Ok(subscriber)
    }

    /// Declares a transient queue exclusive to this subscriber and subscribes to it: the
    /// queue belongs to the subscriber's own connection, which alone may consume from it,
    /// and it is deleted when that connection closes (as RabbitMQ's exclusive queues are).
    /// Bind it to exchanges with [`Admin`](crate::Admin) like any queue. Declaring it again
    /// while it exists (from any connection) fails.
    ///
    /// # Errors
    /// [`Error::InvalidState`] for a prefetch outside 1..=[`PREFETCH_MAX`],
    /// [`Error::PreconditionFailed`] if the queue exists, [`Error::Server`] for invalid
    /// arguments, connection errors.
    pub async fn subscribe_exclusive(
        client: &Client,
        queue: &str,
        args: &QueueArgs,
        prefetch: u32,
    ) -> Result<Subscriber> {
        check_prefetch(prefetch)?;
        let connection = client.open_dedicated().await?;
        let mut entries = args.to_entries();
        entries.push(ConfigEntry {
            key: "exclusive".to_string(),
            value: "true".to_string(),
        });
        let request = Request::DeclareQueue(DeclareQueueRequest {
            name: queue.to_string(),
            durable: false,
            args: entries,
        });
        let response: QueueAdminResponse =
            response_as(connection.request(&request).await?, ApiKey::DeclareQueue)?;
        let subject = QueueSubject {
            queue,
            ..QueueSubject::default()
        };
        check_queue_code(response.error, response.error_message, subject)?;
        Subscriber::subscribe_on(connection, queue, prefetch).await
    }

    /// Subscribes on `connection`, which the subscriber then owns.
    async fn subscribe_on(
        connection: Connection,
        queue: &str,
        prefetch: u32,
    ) -> Result<Subscriber> {
        let capacity = usize::try_from(prefetch).expect("u32 fits in usize on supported targets");
        let request = Request::Subscribe(SubscribeRequest {
            queue: queue.to_string(),
            prefetch,
        });
        let (in_flight, pushes) = connection.begin_with_pushes(&request, capacity).await?;
        let correlation_id = in_flight.correlation_id();
        let response: SubscribeResponse =
            response_as(in_flight.finish().await?, ApiKey::Subscribe)?;
        let subject = QueueSubject {
            queue,
            ..QueueSubject::default()
        };
        check_queue_code(response.error, response.error_message, subject)?;
        Ok(Subscriber {
            shared: Arc::new(Shared {
                connection,
                queue: queue.to_string(),
                consumer_id: response.consumer_id,
            }),
            pushes,
            received: VecDeque::new(),
            correlation_id,
            cancelled: false,
            resubscribe: None,
        })
    }

    /// The next delivery, waiting as long as it takes; `None` once cancelled.
    ///
    /// # Errors
    /// [`Error::ConsumerCancelled`] once the broker cancelled the consumer (ack timeout,
    /// queue deleted); the connection's error ([`Error::Disconnected`], [`Error::Io`], ...)
    /// once it closed.
    ///
    /// A lost connection (a broker restart) is not an error while the client's
    /// `reconnect_timeout` allows: the subscriber connects and subscribes again, and the
    /// broker redelivers what was not acknowledged, marked redelivered (at-least-once:
    /// settling a delivery received before the reconnect then fails with a connection
    /// error, and the message comes again). A subscriber of an exclusive queue does not
    /// resubscribe: its queue went with its connection.
    pub async fn next(&mut self) -> Result<Option<Delivery>> {
        loop {
            if let Some(delivery) = self.received.pop_front() {
                return Ok(Some(delivery));
            }
            match self.pushes.recv().await {
                Some(Pushed::One(pushed)) => return Ok(Some(self.delivery(pushed))),
                Some(Pushed::Batch(batch)) => self.take_batch(batch),
                None if self.cancelled => return Ok(None),
                None => {
                    if let Some(cancelled) = self.pushes.cancelled() {
                        return Err(cancelled_error(cancelled));
                    }
                    let lost = self.shared.connection.disconnected();
                    self.subscribe_again(lost).await?;
                }
            }
        }
    }

    /// The next delivery if one has already arrived, without waiting; `None` otherwise
    /// (then [`Subscriber::next`] waits, and reports a cancel or a lost connection).
    pub fn try_next(&mut self) -> Option<Delivery> {
        if self.received.is_empty() {
            match self.pushes.try_recv().ok()? {
                Pushed::One(pushed) => return Some(self.delivery(pushed)),
                Pushed::Batch(batch) => self.take_batch(batch),
            }
        }
        self.received.pop_front()
    }

    fn take_batch(&mut self, batch: Vec<(DeliveryMark, wharf_protocol::batch::Record)>) {
        let shared = &self.shared;
        self.received.extend(
            batch
                .into_iter()
                .map(|(mark, record)| batch_delivery(shared, mark, record)),
        );
    }

    /// Connects and subscribes again after `lost`, retrying with backoff within the
    /// client's reconnect timeout.
    async fn subscribe_again(&mut self, lost: Error) -> Result<()> {
        let Some((client, prefetch)) = self.resubscribe.clone() else {
            return Err(lost);
        };
        let config = client.config().clone();
        let deadline = tokio::time::Instant::now() + config.reconnect_timeout;
        let mut wait = config.retry_backoff_base;
        loop {
            let attempt = async {
                let connection = client.open_dedicated().await?;
                Subscriber::subscribe_on(connection, &self.shared.queue, prefetch).await
            };
            match attempt.await {
                Ok(fresh) => {
                    self.shared = fresh.shared;
                    self.pushes = fresh.pushes;
                    self.received.clear();
                    self.correlation_id = fresh.correlation_id;
                    return Ok(());
                }
                Err(error) if error.is_connection_error() => {
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(error);
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(config.retry_backoff_max);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Why the broker cancelled this consumer ([`Error::ConsumerCancelled`]), waiting up to
    /// `within` for its ConsumerCancelled push if it has not arrived yet. `None` if it did
    /// not come in time or the subscription ended otherwise ([`Subscriber::cancel`], a lost
    /// connection). Deliveries still waiting for [`Subscriber::next`] stay there.
    ///
    /// Use it to explain a refused settle: after an ack timeout the broker answers a late
    /// ack with [`Error::UnknownDeliveryTag`], and that answer and the push that cancels the
    /// consumer travel separately, so either may reach the client first.
    ///
    /// ```no_run
    /// # async fn example(mut subscriber: wharf_client::Subscriber) -> wharf_client::Result<()> {
    /// use std::time::Duration;
    /// use wharf_client::Error;
    ///
    /// while let Some(delivery) = subscriber.next().await? {
    ///     if let Err(error) = delivery.ack().await {
    ///         let explained = match error {
    ///             Error::UnknownDeliveryTag { .. } => {
    ///                 subscriber.cancel_reason(Duration::from_secs(1)).await
    ///             }
    ///             _ => None,
    ///         };
    ///         return Err(explained.unwrap_or(error));
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cancel_reason(&mut self, within: Duration) -> Option<Error> {
        let cancelled = match self.pushes.cancelled() {
            Some(cancelled) => cancelled,
            None => tokio::time::timeout(within, self.pushes.wait_cancelled())
                .await
                .ok()
                .flatten()?,
        };
        Some(cancelled_error(cancelled))
    }

    /// Stops the consumer. The broker returns its unacknowledged deliveries to the queue;
    /// deliveries received but not yet handed out by [`Subscriber::next`] are discarded (they
    /// are among those returned).
    ///
    /// # Errors
    /// [`Error::UnknownQueue`] if the queue was deleted, connection errors.
    pub async fn cancel(&mut self) -> Result<()> {
        let request = Request::Cancel(CancelRequest {
            queue: self.shared.queue.clone(),
            consumer_id: self.shared.consumer_id,
        });
        let result = self.shared.settle_request(request, 0).await;
        self.cancelled = true;
        self.shared.connection.stop_pushes(self.correlation_id);
        self.pushes.close();
        while self.pushes.try_recv().is_ok() {}
        self.received.clear();
        result
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.shared.queue
    }

    /// The broker's id of this consumer.
    pub fn consumer_id(&self) -> u64 {
        self.shared.consumer_id
    }

    fn delivery(&self, pushed: DeliverPush) -> Delivery {
        Delivery {
            tag: pushed.delivery_tag,
            redelivered: pushed.redelivered,
            routing_key: pushed.routing_key,
            headers: pushed
                .headers
                .into_iter()
                .map(|header| Header {
                    key: header.key,
                    value: header.value,
                })
                .collect(),
            body: pushed.body,
            timestamp_ms: pushed.timestamp_ms,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The [`Delivery`] of one record of a `DeliverBatch` push: the record's key is the
/// routing key and its value the body.
fn batch_delivery(
    shared: &Arc<Shared>,
    mark: DeliveryMark,
    record: wharf_protocol::batch::Record,
) -> Delivery {
    Delivery {
        tag: mark.delivery_tag,
        redelivered: mark.redelivered,
        routing_key: record
            .key
            .map(|key| String::from_utf8_lossy(&key).into_owned())
            .unwrap_or_default(),
        headers: record.headers,
        body: record.value.unwrap_or_default(),
        timestamp_ms: record.timestamp_ms,
        shared: Arc::clone(shared),
    }
}

/// The error a broker-side cancel becomes.
fn cancelled_error(cancelled: ConsumerCancelledPush) -> Error {
    let message = cancelled
        .error_message
        .unwrap_or_else(|| cancelled.error.describe().to_string());
    Error::ConsumerCancelled {
        queue: cancelled.queue,
        code: cancelled.error,
        message,
    }
}

fn check_prefetch(prefetch: u32) -> Result<()> {
    if (1..=PREFETCH_MAX).contains(&prefetch) {
        Ok(())
    } else {
        Err(Error::InvalidState {
            reason: "prefetch must be between 1 and 65535",
        })
    }
}

impl Delivery {
    /// Acknowledges this delivery: the message is done.
    ///
    /// # Errors
    /// [`Error::UnknownDeliveryTag`] if it was settled already, connection errors.
    pub async fn ack(&self) -> Result<()> {
        self.settle(Negative::Ack, Scope::Single).await
    }

    /// Acknowledges this delivery and every earlier unsettled one of the subscriber.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub async fn ack_multiple(&self) -> Result<()> {
        self.settle(Negative::Ack, Scope::Multiple).await
    }

    /// Like [`Delivery::ack_multiple`], without waiting for the broker's answer. When this
    /// returns, the ack is queued on the subscriber's connection behind every earlier
    /// request, so acks sent this way keep their order; the returned future resolves with
    /// the answer, once the settle record is durable. A consumer goes on with its next
    /// deliveries meanwhile instead of idling for the broker's fsync.
    ///
    /// Each returned future holds one of the connection's in-flight request slots
    /// (`ClientConfig::in_flight_requests_max`, 64 by default) until it is awaited or
    /// dropped: keep fewer unawaited than that, or the next call waits for a slot forever.
    ///
    /// # Errors
    /// Connection errors now; the future: as [`Delivery::ack`].
    pub async fn ack_multiple_sent(
        &self,
    ) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
        let request = Request::Ack(AckRequest {
            queue: self.shared.queue.clone(),
            consumer_id: self.shared.consumer_id,
            delivery_tag: self.tag,
            multiple: true,
            negative: false,
            requeue: false,
        });
        let in_flight = self.shared.connection.begin(&request).await?;
        let shared = Arc::clone(&self.shared);
        let delivery_tag = self.tag;
        Ok(async move {
            let response: QueueAdminResponse = response_as(in_flight.finish().await?, ApiKey::Ack)?;
            let subject = QueueSubject {
                queue: &shared.queue,
                delivery_tag,
                ..QueueSubject::default()
            };
            check_queue_code(response.error, response.error_message, subject)
        })
    }

    /// Negatively acknowledges this delivery: back to the queue, or dead-lettered.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub async fn nack(&self, requeue: Requeue) -> Result<()> {
        self.settle(Negative::Nack(requeue), Scope::Single).await
    }

    /// Like [`Delivery::nack`] for this delivery and every earlier unsettled one.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub async fn nack_multiple(&self, requeue: Requeue) -> Result<()> {
        self.settle(Negative::Nack(requeue), Scope::Multiple).await
    }

    /// Rejects this delivery without requeue (it is dead-lettered): `nack(Requeue::No)`.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub async fn reject(&self) -> Result<()> {
        self.nack(Requeue::No).await
    }

    /// The value of header `key`, if present.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|header| header.key == key)
            .and_then(|header| header.value.as_deref())
    }

    async fn settle(&self, negative: Negative, scope: Scope) -> Result<()> {
        let requeue = matches!(negative, Negative::Nack(Requeue::Yes));
        let request = Request::Ack(AckRequest {
            queue: self.shared.queue.clone(),
            consumer_id: self.shared.consumer_id,
            delivery_tag: self.tag,
            multiple: scope == Scope::Multiple,
            negative: negative != Negative::Ack,
            requeue,
        });
        self.shared.settle_request(request, self.tag).await
    }
}

/// An ack, or a nack with its requeue choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negative {
    Ack,
    Nack(Requeue),
}

impl Shared {
    /// Sends an Ack or Cancel on the subscriber's own connection (no retry: after a
    /// reconnect the consumer and its tags would be gone anyway).
    async fn settle_request(&self, request: Request, delivery_tag: u64) -> Result<()> {
        let api_key = request.api_key();
        let response: QueueAdminResponse =
            response_as(self.connection.request(&request).await?, api_key)?;
        let subject = QueueSubject {
            queue: &self.queue,
            delivery_tag,
            ..QueueSubject::default()
        };
        check_queue_code(response.error, response.error_message, subject)
    }
}
