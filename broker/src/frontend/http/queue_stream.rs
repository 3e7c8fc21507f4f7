//! `GET /api/v1/queues/{queue}/stream?prefetch=N`: a queue's messages as Server-Sent Events,
//! for a browser's `EventSource` (issue #17). SSE has no way back to the broker, so there is
//! no client ack: a delivery is acknowledged once its event was taken by the connection
//! (hyper asks for the next event only once the previous one is written), as RabbitMQ's
//! auto-ack acknowledges on send. The delivery handed out last when the client goes away is
//! not acknowledged and returns to the queue, marked redelivered; one written to a connection
//! that breaks before the client reads it is lost. For acknowledgements use the WebSocket
//! consumer (`/api/v1/queues/{queue}/ws`).
//!
//! Events: `delivery` (`id` = the delivery tag, `data` = `{"type": "delivery", "tag",
//! "redelivered", "timestamp_ms", "routing_key", "body", "headers"}`, `*_base64` for bytes that
//! are not UTF-8), `cancelled` (`{"reason"}`, the queue was deleted; then the stream ends) and
//! `error` (`{"error", "message"}`, the acknowledgement failed; then the stream ends).
//!
//! Backpressure: the queue delivers at most `prefetch` messages the connection has not taken;
//! a slow reader pauses its own stream. Streams end when the broker shuts down.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::{AckScope, ConsumerEvent, Deliveries, DeliveryTag, Settle, SettleQuery};
use crate::frontend::http::error::{ApiError, ErrorBody, PathParams, QueryParams};
use crate::frontend::http::websocket::{delivery_json, QueueConsumer, QueueSocketQuery};
use crate::frontend::http::{Caller, Http, Shared};

/// How often an idle stream sends a comment line, so proxies keep it open.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// The routes of this module.
pub fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::new().routes(routes!(queue_stream))
}

/// Consumes a queue as Server-Sent Events (acknowledged as each event is written).
///
/// One `delivery` event per message (`id` = its delivery tag); `cancelled` when the queue is
/// deleted and `error` when an acknowledgement fails, each before the end.
#[utoipa::path(
    get,
    path = "/queues/{queue}/stream",
    tag = "queues",
    params(
        ("queue" = String, Path, description = "The queue's name"),
        QueueSocketQuery,
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `delivery` events", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad prefetch", body = ErrorBody),
        (status = 404, description = "Unknown queue", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn queue_stream(
    State(http): Shared,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    QueryParams(query): QueryParams<QueueSocketQuery>,
) -> Result<Response, ApiError> {
    let (consumer, deliveries) = QueueConsumer::start(&http, &caller, queue, &query).await?;
    let reader = QueueReader {
        consumer,
        deliveries,
        shutdown: http.shutdown.clone(),
        handed_out: None,
        done: false,
    };
    let events = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next_event().await?;
        Some((Ok::<Event, Infallible>(event), reader))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The state of one queue stream. Dropping it (the client went away) closes its session:
/// the consumer is cancelled and what it holds unacknowledged returns to the queue.
struct QueueReader {
    consumer: QueueConsumer,
    deliveries: Deliveries,
    shutdown: watch::Receiver<bool>,
    /// The tag of the delivery handed to the connection last, not yet acknowledged.
    handed_out: Option<u64>,
    /// An event that ends the stream was sent.
    done: bool,
}

impl QueueReader {
    /// The next event, once the one before it was taken (then acknowledged); `None` ends the
    /// stream.
    async fn next_event(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        if let Some(tag) = self.handed_out.take() {
            let query = SettleQuery {
                queue: self.consumer.queue.clone(),
                consumer: self.consumer.consumer,
                tag: DeliveryTag(tag),
                scope: AckScope::Single,
                settle: Settle::Ack,
            };
            if let Err(error) = self
                .consumer
                .broker
                .settle(&self.consumer.session, query)
                .await
            {
                self.done = true;
                let error = ApiError::from(error);
                let data = serde_json::json!({"error": error.kind, "message": error.message});
                return Some(Event::default().event("error").data(data.to_string()));
            }
        }
        let event = tokio::select! {
            event = self.deliveries.recv() => event?,
            _ = self.shutdown.changed() => return None,
        };
        match event {
            ConsumerEvent::Delivery(delivered) => {
                self.handed_out = Some(delivered.tag.0);
                Some(
                    Event::default()
                        .id(delivered.tag.0.to_string())
                        .event("delivery")
                        .data(delivery_json(&delivered).to_string()),
                )
            }
            ConsumerEvent::Cancelled(reason) => {
                self.done = true;
                let data = serde_json::json!({"reason": format!("{reason:?}")});
                Some(Event::default().event("cancelled").data(data.to_string()))
            }
        }
    }
}
