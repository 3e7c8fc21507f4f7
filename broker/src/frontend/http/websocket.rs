//! WebSocket streams (issue #17), for browsers and languages with no Wharf client:
//!
//! - `GET /api/v1/topics/{topic}/partitions/{partition}/ws?from=earliest|latest|OFFSET`: the
//!   partition's committed records, one text message each (`{"type": "record", "offset", ...}`,
//!   the JSON of the SSE stream in [`super::stream`]).
//! - `GET /api/v1/queues/{queue}/ws?prefetch=N`: a consumer of the queue. Deliveries arrive as
//!   `{"type": "delivery", "tag", ...}`; the client settles them with `{"ack": TAG}` or
//!   `{"nack": TAG, "requeue": BOOL}` (`"multiple": true` settles every earlier tag too) and
//!   gets `{"type": "settled", "tag"}` once the settlement is durable, or
//!   `{"type": "error", "error", "message"}`. When the socket closes, the unacknowledged
//!   deliveries return to the queue, marked redelivered.
//!
//! Backpressure: a topic socket fetches its next batch only once the previous records are
//! written to the socket; a queue socket holds at most `prefetch` unacknowledged deliveries
//! (the queue stops delivering until some are settled), and the next delivery is written only
//! once the previous one is. A slow reader is paused, never buffered for without bound.
//! Sockets close when the broker shuts down.

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::watch;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::{
    AckScope, Broker, ConsumerEvent, ConsumerId, Delivered, Deliveries, DeliveryTag, Requeue,
    Session, Settle, SettleQuery, SubscribeQuery,
};
use crate::frontend::http::error::{ApiError, ErrorBody, PathParams, QueryParams};
use crate::frontend::http::group_stream::{GroupItem, GroupStreamQuery, Member};
use crate::frontend::http::stream::{
    headers_json, put_bytes, StreamItem, StreamQuery, StreamReader,
};
use crate::frontend::http::{Caller, Http, Shared};

/// Largest message a client may send (acks are a few dozen bytes).
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// Prefetch of a queue socket when the query names none.
pub const PREFETCH_DEFAULT: u32 = 10;

/// Largest prefetch of a queue socket: what one slow reader can hold out of a queue.
pub const PREFETCH_MAX: u32 = 1_000;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::new()
        .routes(routes!(topic_socket))
        .routes(routes!(queue_socket))
        .routes(routes!(group_socket))
}

/// The upgrade, or a JSON 400 when the request is no WebSocket handshake.
fn upgrade(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    upgrade
        .map(|upgrade| {
            upgrade
                .max_message_size(CLIENT_MESSAGE_BYTES_MAX)
                .max_frame_size(CLIENT_MESSAGE_BYTES_MAX)
        })
        .map_err(|rejection| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_websocket",
                format!(
                    "a WebSocket handshake is expected: {}",
                    rejection.body_text()
                ),
            )
        })
}

/// A WebSocket of a partition's committed records.
///
/// One JSON text message per record (`{"type": "record", ...}`, the fields of StreamRecordDoc), `{"type": "error", "error",
/// "message"}` then a close when the partition cannot be read.
#[utoipa::path(
    get,
    path = "/topics/{topic}/partitions/{partition}/ws",
    tag = "records",
    params(
        ("topic" = String, Path, description = "The topic's name"),
        ("partition" = u32, Path, description = "The partition"),
        StreamQuery,
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "No WebSocket handshake, or a bad `from`", body = ErrorBody),
        (status = 404, description = "Unknown topic or partition", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn topic_socket(
    State(http): Shared,
    caller: Caller,
    PathParams((topic, partition)): PathParams<(String, u32)>,
    QueryParams(query): QueryParams<StreamQuery>,
    handshake: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let handshake = upgrade(handshake)?;
    let reader = StreamReader::open(
        &http,
        &caller,
        topic,
        partition,
        query.from.as_deref(),
        None,
    )?;
    let shutdown = http.shutdown.clone();
    Ok(handshake.on_upgrade(move |socket| {
        stream_records(socket, RecordSource::Partition(reader), shutdown)
    }))
}

/// What a record WebSocket reads: one partition, or a topic as a member of a group.
enum RecordSource {
    Partition(StreamReader),
    Group(Member),
}

impl RecordSource {
    /// The next record's JSON; `Err` with the error's JSON when the stream cannot go on;
    /// `None` at its end.
    async fn next(&mut self) -> Option<Result<serde_json::Value, serde_json::Value>> {
        match self {
            RecordSource::Partition(reader) => match reader.next_item().await? {
                StreamItem::Record { data, .. } | StreamItem::Skipped(data) => Some(Ok(data)),
                StreamItem::Failed(error) => Some(Err(error)),
            },
            RecordSource::Group(member) => match member.next_item().await? {
                GroupItem::Record { data, .. } => Some(Ok(data)),
                GroupItem::Failed(error) => Some(Err(error)),
            },
        }
    }
}

/// Sends one `{"type": "record", ...}` text message per record of `source` (an
/// `{"type": "error", ...}` one if it fails) until it ends, the client goes or the broker
/// shuts down.
async fn stream_records(
    mut socket: WebSocket,
    mut source: RecordSource,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            item = source.next() => {
                let text = match item {
                    Some(Ok(mut data)) => {
                        // A batch the stream could not send says so as `skipped`.
                        let kind = if data.get("skipped").is_some() { "skipped" } else { "record" };
                        data["type"] = kind.into();
                        data
                    }
                    Some(Err(mut error)) => {
                        error["type"] = "error".into();
                        let _ = socket.send(Message::text(error.to_string())).await;
                        break;
                    }
                    None => break,
                };
                if socket.send(Message::text(text.to_string())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => {
                if ended(incoming.as_ref()) {
                    return;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// A WebSocket of a topic as a member of a consumer group.
///
/// The group stream of [`super::group_stream`] over a WebSocket: one `{"type": "record",
/// "partition", "offset", ...}` text message per record, starting at the group's committed
/// offsets, committing what was sent before each fetch; closing leaves the group.
#[utoipa::path(
    get,
    path = "/groups/{group}/topics/{topic}/ws",
    tag = "groups",
    params(
        ("group" = String, Path, description = "The group id"),
        ("topic" = String, Path, description = "The topic's name"),
        GroupStreamQuery,
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "No WebSocket handshake, a bad group id or `from`", body = ErrorBody),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn group_socket(
    State(http): Shared,
    caller: Caller,
    PathParams((group_id, topic)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<GroupStreamQuery>,
    handshake: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let handshake = upgrade(handshake)?;
    let member = Member::join(&http, &caller, group_id, topic, query.from.as_deref())?;
    let shutdown = http.shutdown.clone();
    Ok(handshake
        .on_upgrade(move |socket| stream_records(socket, RecordSource::Group(member), shutdown)))
}

/// True when what the client sent ends the socket: a close, an error or the end.
fn ended(incoming: Option<&Result<Message, axum::Error>>) -> bool {
    matches!(incoming, None | Some(Err(_) | Ok(Message::Close(_))))
}

/// The query of a queue socket.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueSocketQuery {
    /// Most unacknowledged deliveries (1 to [`PREFETCH_MAX`], default
    /// [`PREFETCH_DEFAULT`]).
    pub prefetch: Option<u32>,
}

/// A consumer started for a queue socket. Dropping it (the socket ended, or its handshake
/// never finished) closes its session, which cancels the consumer and returns its
/// unacknowledged deliveries to the queue.
pub(super) struct QueueConsumer {
    pub(super) broker: Arc<Broker>,
    pub(super) session: Arc<Session>,
    pub(super) queue: String,
    pub(super) consumer: ConsumerId,
}

impl QueueConsumer {
    /// Subscribes to `queue` as the request's caller (in a session of its own, closed when
    /// the consumer is dropped) with the query's prefetch; 400 for a prefetch out of
    /// bounds.
    pub(super) async fn start(
        http: &Http,
        caller: &Caller,
        queue: String,
        query: &QueueSocketQuery,
    ) -> Result<(QueueConsumer, Deliveries), ApiError> {
        let broker = http.broker()?.clone();
        let prefetch = query.prefetch.unwrap_or(PREFETCH_DEFAULT);
        if !(1..=PREFETCH_MAX).contains(&prefetch) {
            return Err(ApiError::bad_request(format!(
                "prefetch is 1 to {PREFETCH_MAX}, not {prefetch}"
            )));
        }
        let session = Arc::new(caller.like());
        let (consumer, deliveries) = broker
            .subscribe(
                &session,
                SubscribeQuery {
                    queue: queue.clone(),
                    prefetch,
                    priority: 0,
                    exclusive: false,
                    shared_prefetch: None,
                },
            )
            .await?;
        let consumer = QueueConsumer {
            broker,
            session,
            queue,
            consumer,
        };
        Ok((consumer, deliveries))
    }
}

impl Drop for QueueConsumer {
    fn drop(&mut self) {
        let broker = self.broker.clone();
        let session = self.session.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { broker.close_session(&session).await });
        }
    }
}

/// A WebSocket consumer of a queue.
///
/// Server → client: `{"type": "delivery", "tag",
/// "redelivered", "timestamp_ms", "routing_key", "body", "headers"}` (`*_base64` for bytes
/// that are not UTF-8), `{"type": "settled", "tag"}`, `{"type": "error", "error", "message"}`,
/// `{"type": "cancelled", "reason"}`. Client → server: `{"ack": TAG}` or `{"nack": TAG,
/// "requeue": BOOL}`, with `"multiple": true` to settle every earlier tag too. Closing returns
/// the unacknowledged deliveries to the queue.
#[utoipa::path(
    get,
    path = "/queues/{queue}/ws",
    tag = "queues",
    params(
        ("queue" = String, Path, description = "The queue's name"),
        QueueSocketQuery,
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "No WebSocket handshake, or a bad prefetch", body = ErrorBody),
        (status = 404, description = "Unknown queue", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn queue_socket(
    State(http): Shared,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    QueryParams(query): QueryParams<QueueSocketQuery>,
    handshake: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let handshake = upgrade(handshake)?;
    let (consumer, deliveries) = QueueConsumer::start(&http, &caller, queue, &query).await?;
    let shutdown = http.shutdown.clone();
    Ok(handshake.on_upgrade(move |socket| consume_queue(socket, consumer, deliveries, shutdown)))
}

async fn consume_queue(
    mut socket: WebSocket,
    consumer: QueueConsumer,
    mut deliveries: Deliveries,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            event = deliveries.recv() => {
                let text = match event {
                    Some(ConsumerEvent::Delivery(delivered)) => delivery_json(&delivered),
                    Some(ConsumerEvent::Cancelled(reason)) => {
                        let cancelled = serde_json::json!({
                            "type": "cancelled",
                            "reason": format!("{reason:?}"),
                        });
                        let _ = socket.send(Message::text(cancelled.to_string())).await;
                        break;
                    }
                    None => break,
                };
                if socket.send(Message::text(text.to_string())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => {
                if ended(incoming.as_ref()) {
                    return;
                }
                let answer = match incoming {
                    Some(Ok(Message::Text(text))) => settle(&consumer, text.as_str()).await,
                    Some(Ok(Message::Binary(_))) => error_json(&ApiError::bad_request(
                        "send JSON text: {\"ack\": TAG} or {\"nack\": TAG, \"requeue\": BOOL}",
                    )),
                    _ => continue,
                };
                if socket.send(Message::text(answer.to_string())).await.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// A settlement the client sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleMessage {
    /// Ack this tag.
    ack: Option<u64>,
    /// Nack this tag.
    nack: Option<u64>,
    /// With `nack`: back to the queue (the default) or dead-lettered.
    requeue: Option<bool>,
    /// Settle every earlier unsettled tag of this socket too.
    #[serde(default)]
    multiple: bool,
}

/// Settles what `text` asks and answers `settled` once durable, or an error.
async fn settle(consumer: &QueueConsumer, text: &str) -> serde_json::Value {
    let message: SettleMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(error) => {
            return error_json(&ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                error.to_string(),
            ))
        }
    };
    let (tag, settle) = match (message.ack, message.nack) {
        (Some(tag), None) if message.requeue.is_none() => (tag, Settle::Ack),
        (None, Some(tag)) => {
            let requeue = if message.requeue.unwrap_or(true) {
                Requeue::Yes
            } else {
                Requeue::No
            };
            (tag, Settle::Nack(requeue))
        }
        _ => {
            return error_json(&ApiError::bad_request(
                "give one of ack and nack (requeue goes with nack only)",
            ))
        }
    };
    let query = SettleQuery {
        queue: consumer.queue.clone(),
        consumer: consumer.consumer,
        tag: DeliveryTag(tag),
        scope: if message.multiple {
            AckScope::Multiple
        } else {
            AckScope::Single
        },
        settle,
    };
    let settled = match consumer.broker.settle(&consumer.session, query).await {
        Ok(completion) => completion.await,
        Err(error) => Err(error),
    };
    match settled {
        Ok(()) => serde_json::json!({"type": "settled", "tag": tag}),
        Err(error) => error_json(&ApiError::from(error)),
    }
}

fn error_json(error: &ApiError) -> serde_json::Value {
    serde_json::json!({"type": "error", "error": error.kind, "message": error.message})
}

/// A delivery as JSON: the routing key, the body (text, or `body_base64`) and the headers.
pub(super) fn delivery_json(delivered: &Delivered) -> serde_json::Value {
    let record = &delivered.record;
    let mut data = serde_json::json!({
        "type": "delivery",
        "tag": delivered.tag.0,
        "redelivered": delivered.redelivered,
        "timestamp_ms": record.timestamp_ms,
    });
    put_bytes(&mut data, "routing_key", record.key.as_ref());
    put_bytes(&mut data, "body", record.value.as_ref());
    data["headers"] = headers_json(&record.headers);
    data
}
