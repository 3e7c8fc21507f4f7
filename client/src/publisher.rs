//! [`Publisher`]: publishes messages to exchanges, with publisher confirms.
//!
//! Every publish is answered once the message is durable in every queue it routed to (the
//! confirm), with the names of those queues. [`Publisher::start`] returns once the request is
//! queued on the connection, so many publishes can be in flight at once and their confirms
//! awaited later; publishes started one after another by one caller reach the broker in that
//! order. A started publish is not retried: if its confirm is lost with the connection, the
//! message may or may not be stored, and resending it (with [`Publisher::publish`], which
//! rides through a broker restart) is the caller's decision: at-least-once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use wharf_protocol::messages::{
    HeaderEntry, PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse,
};
use wharf_protocol::{ApiKey, DecodeError, Header, Request};

use crate::cluster::{response_as, Client, Target};
use crate::error::{check_code, check_queue_code, Error, QueueSubject, Result};

/// Header with a per-message time to live in milliseconds.
pub const EXPIRATION_HEADER: &str = "x-expiration-ms";
/// Header with a delivery delay in milliseconds: the broker holds the message until then.
pub const DELAY_HEADER: &str = "x-delay";

/// What happens to a message that matches no queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// It is refused: the publish fails with [`Error::Unroutable`](crate::Error::Unroutable).
    Mandatory,
    /// It is dropped (and counted by the broker); the publish succeeds with no queues.
    Optional,
}

/// Publishes messages to exchanges.
///
/// ```no_run
/// # async fn example() -> wharf_client::Result<()> {
/// use bytes::Bytes;
/// use wharf_client::{Client, ClientConfig, Header, Publisher, Routing};
///
/// let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
/// let publisher = Publisher::new(&client);
/// // One message, waiting for its confirm.
/// let queues = publisher
///     .publish("events", "order.created", Bytes::from("o1"), Vec::new(), Routing::Mandatory)
///     .await?;
/// println!("stored in {queues:?}");
/// // Many in flight: start them all, then collect the confirms.
/// let mut confirms = Vec::new();
/// for index in 0..100 {
///     let headers = vec![Header { key: "x-delay".into(), value: Some(Bytes::from("500")) }];
///     let body = Bytes::from(format!("o{index}"));
///     confirms.push(publisher.start("events", "order.created", body, headers, Routing::Optional).await?);
/// }
/// for confirm in confirms {
///     confirm.await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    /// Started publishes not yet sent, shared by the clones of this publisher.
    batch: Arc<tokio::sync::Mutex<PendingBatch>>,
    linger: Duration,
}

/// Most messages sent in one PublishBatch request.
pub const PUBLISH_BATCH_MESSAGES_MAX: usize = 1_000;
/// Most message bytes (bodies, keys, headers) sent in one PublishBatch request.
pub const PUBLISH_BATCH_BYTES_MAX: usize = 1024 * 1024;

/// Started publishes waiting to go out as one PublishBatch request.
#[derive(Debug, Default)]
struct PendingBatch {
    messages: Vec<PublishRequest>,
    confirms: Vec<oneshot::Sender<Result<PublishResponse>>>,
    bytes: usize,
    /// Counts sent batches, so a linger timer flushes only the batch it was started for.
    sent: u64,
}

impl Publisher {
    /// A publisher over `client`. Does no I/O. Started publishes go out in batches (see
    /// [`Publisher::start`]) with no linger: a batch is sent once the caller yields.
    pub fn new(client: &Client) -> Publisher {
        Publisher::with_linger(client, Duration::ZERO)
    }

    /// A publisher whose started publishes wait up to `linger` for others to share their
    /// request with (as a producer's `linger`), unless a batch fills first.
    pub fn with_linger(client: &Client, linger: Duration) -> Publisher {
        Publisher {
            client: client.clone(),
            batch: Arc::default(),
            linger,
        }
    }

    /// Publishes one message and waits for its confirm; returns the queues it is stored in
    /// (empty for an optional message that matched none). A lost connection is retried
    /// within the client's `reconnect_timeout` (a broker restart), resending the message:
    /// at-least-once, so a message whose confirm was lost with the connection may be
    /// stored twice.
    ///
    /// # Errors
    /// [`Error::Unroutable`](crate::Error::Unroutable) for a mandatory message that matched
    /// no queue, [`Error::QueueFull`](crate::Error::QueueFull),
    /// [`Error::UnknownExchange`](crate::Error::UnknownExchange), connection errors once
    /// the reconnect timeout has passed.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        headers: Vec<Header>,
        routing: Routing,
    ) -> Result<Vec<String>> {
        let request = publish_request(exchange, routing_key, body, headers, routing);
        let response: PublishResponse = self.client.call_unchecked(Target::Any, request).await?;
        let subject = QueueSubject {
            exchange,
            routing_key,
            ..QueueSubject::default()
        };
        check_queue_code(response.error, response.error_message, subject)?;
        Ok(response.queues)
    }

    /// Starts publishing one message; the returned future resolves to its confirm (as
    /// [`Publisher::publish`]). Started publishes are sent in order, many to one
    /// PublishBatch request (up to [`PUBLISH_BATCH_MESSAGES_MAX`] messages and
    /// [`PUBLISH_BATCH_BYTES_MAX`] bytes): a batch goes out when it is full, or once the
    /// linger has passed (with none, as soon as the calling task yields, so the messages
    /// started in one burst share a request). Each message still gets its own confirm.
    ///
    /// # Errors
    /// Connection errors (no retry) of a batch sent by this call; the others reach the
    /// confirms.
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        headers: Vec<Header>,
        routing: Routing,
    ) -> Result<PublishConfirm> {
        let request = match publish_request(exchange, routing_key, body, headers, routing) {
            Request::Publish(request) => request,
            _ => unreachable!("publish_request builds a Publish"),
        };
        let bytes = request.body.len()
            + request.exchange.len()
            + request.routing_key.len()
            + request
                .headers
                .iter()
                .map(|header| header.key.len() + header.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>();
        let (confirm, confirmed) = oneshot::channel();
        let mut batch = self.batch.lock().await;
        if !batch.messages.is_empty() && batch.bytes + bytes > PUBLISH_BATCH_BYTES_MAX {
            self.send_batch(&mut batch).await?;
        }
        batch.messages.push(request);
        batch.confirms.push(confirm);
        batch.bytes += bytes;
        if batch.messages.len() >= PUBLISH_BATCH_MESSAGES_MAX {
            self.send_batch(&mut batch).await?;
        } else if batch.messages.len() == 1 {
            // The first of a batch starts its linger timer.
            let publisher = self.clone();
            let sent = batch.sent;
            tokio::spawn(async move {
                if publisher.linger.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(publisher.linger).await;
                }
                let mut batch = publisher.batch.lock().await;
                if batch.sent == sent && !batch.messages.is_empty() {
                    // A failed send reaches every confirm of the batch.
                    let _ = publisher.send_batch(&mut batch).await;
                }
            });
        }
        drop(batch);
        Ok(PublishConfirm {
            confirmed,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        })
    }

    /// Sends the pending batch (under its lock, so batches go out in order) and hands each
    /// message's answer to its confirm when it comes.
    async fn send_batch(&self, batch: &mut PendingBatch) -> Result<()> {
        batch.sent += 1;
        batch.bytes = 0;
        let messages = std::mem::take(&mut batch.messages);
        let confirms = std::mem::take(&mut batch.confirms);
        let request = Request::PublishBatch(PublishBatchRequest { messages });
        let answer = match self.client.start(Target::Any, &request).await {
            Ok(answer) => answer,
            Err(error) => {
                for confirm in confirms {
                    let _ = confirm.send(Err(error.clone()));
                }
                return Err(error);
            }
        };
        tokio::spawn(async move {
            let response = answer.await.and_then(|response| {
                response_as::<PublishBatchResponse>(response, ApiKey::PublishBatch)
            });
            let results = response.and_then(|response| {
                check_code(response.error, response.error_message)?;
                if response.results.len() == confirms.len() {
                    Ok(response.results)
                } else {
                    Err(Error::Decode(DecodeError::InvalidValue {
                        field: "PublishBatch results",
                        value: response.results.len() as i64,
                    }))
                }
            });
            match results {
                Ok(results) => {
                    for (confirm, result) in confirms.into_iter().zip(results) {
                        let _ = confirm.send(Ok(result));
                    }
                }
                Err(error) => {
                    for confirm in confirms {
                        let _ = confirm.send(Err(error.clone()));
                    }
                }
            }
        });
        Ok(())
    }
}

fn publish_request(
    exchange: &str,
    routing_key: &str,
    body: Bytes,
    headers: Vec<Header>,
    routing: Routing,
) -> Request {
    Request::Publish(PublishRequest {
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        mandatory: routing == Routing::Mandatory,
        headers: headers
            .into_iter()
            .map(|header| HeaderEntry {
                key: header.key,
                value: header.value,
            })
            .collect(),
        body,
    })
}

/// The confirm of one started publish: resolves to the queues the message is stored in.
#[must_use = "a publish is confirmed only when its confirm is awaited"]
pub struct PublishConfirm {
    confirmed: oneshot::Receiver<Result<PublishResponse>>,
    exchange: String,
    routing_key: String,
}

impl std::fmt::Debug for PublishConfirm {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PublishConfirm")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

impl Future for PublishConfirm {
    type Output = Result<Vec<String>>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match Pin::new(&mut self.confirmed).poll(context) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(answer) => answer,
        };
        let result = answer
            .unwrap_or_else(|_| {
                // The sending task is gone: the runtime is shutting down.
                Err(Error::Disconnected {
                    address: String::new(),
                })
            })
            .and_then(|response| {
                let subject = QueueSubject {
                    exchange: &self.exchange,
                    routing_key: &self.routing_key,
                    ..QueueSubject::default()
                };
                check_queue_code(response.error, response.error_message, subject)?;
                Ok(response.queues)
            });
        Poll::Ready(result)
    }
}
