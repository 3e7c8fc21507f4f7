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

use bytes::Bytes;
use wharf_protocol::messages::{HeaderEntry, PublishRequest, PublishResponse};
use wharf_protocol::{ApiKey, Header, Request};

use crate::cluster::{response_as, Client, ResponseFuture, Target};
use crate::error::{check_queue_code, QueueSubject, Result};

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
}

impl Publisher {
    /// A publisher over `client`. Does no I/O.
    pub fn new(client: &Client) -> Publisher {
        Publisher {
            client: client.clone(),
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

    /// Sends one message and returns once it is queued on the connection; the returned
    /// future resolves to its confirm (as [`Publisher::publish`]).
    ///
    /// # Errors
    /// Connection errors (no retry).
    /// Each started publish holds one of the connection's in-flight request slots
    /// (`ClientConfig::in_flight_requests_max`) until its confirm is awaited: keep fewer
    /// unawaited confirms than that, or `start` waits for a slot forever.
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: Bytes,
        headers: Vec<Header>,
        routing: Routing,
    ) -> Result<PublishConfirm> {
        let request = publish_request(exchange, routing_key, body, headers, routing);
        let answer = self.client.start(Target::Any, &request).await?;
        Ok(PublishConfirm {
            answer,
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
        })
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
    answer: ResponseFuture,
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
        let response = match self.answer.as_mut().poll(context) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(response) => response,
        };
        let result = response
            .and_then(|response| response_as::<PublishResponse>(response, ApiKey::Publish))
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
