//! Queues, exchanges and bindings over HTTP (docs/HTTP.md): declare, list and delete
//! queues and exchanges, bind and unbind, publish with confirms, and get from a queue. Each
//! route is one core call, with the errors the CLI gets (mapped in [`super::error`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wharf_protocol::batch::Header;

use crate::core::{
    Durability, ExchangeKind, GetMode, GotMessage, Mandatory, PublishOutcome, PublishQuery,
    QueueError, QueueStats,
};
use crate::frontend::http::admin::QueueDetail;
use crate::frontend::http::error::{ApiError, ErrorBody, JsonBody, PathParams, QueryParams};
use crate::frontend::http::stream::{headers_json, put_bytes, HeaderDoc, HeaderIn};
use crate::frontend::http::{Caller, Http, Shared};

/// Most messages one get takes.
pub const GET_COUNT_MAX: u32 = 1_000;

/// Most bytes of messages (routing keys, bodies, headers) one get answers with, and the
/// default: a get stops taking messages once they pass it (one message at least, so a get
/// always makes progress) and says so (`bytes_limited`). As JSON the answer is at most
/// about a third larger (base64 of binary bodies), or up to six times for text made of
/// control characters (`\u0000` escapes).
pub const GET_ANSWER_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// The routes of this module.
pub fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::new()
        .routes(routes!(declare_queue, delete_queue))
        .routes(routes!(get_messages))
        .routes(routes!(list_exchanges))
        .routes(routes!(declare_exchange, delete_exchange))
        .routes(routes!(list_bindings, bind))
        .routes(routes!(unbind))
        .routes(routes!(publish))
}

fn durability(durable: bool) -> Durability {
    if durable {
        Durability::Durable
    } else {
        Durability::Transient
    }
}

fn durability_name(durability: Durability) -> &'static str {
    match durability {
        Durability::Durable => "durable",
        Durability::Transient => "transient",
    }
}

/// The body of a queue declare.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareQueue {
    /// Survives restarts (default true).
    pub durable: Option<bool>,
    /// Arguments, as the CLI's `--arg KEY=VALUE` (`x-message-ttl`, `x-max-length`,
    /// `x-overflow`, `x-dead-letter-exchange`, ...).
    #[serde(default)]
    pub arguments: BTreeMap<String, String>,
}

/// Declares a queue (idempotent; a declare with other arguments is a 409).
#[utoipa::path(
    put,
    path = "/queues/{queue}",
    tag = "queues",
    params(("queue" = String, Path, description = "The queue's name")),
    request_body = DeclareQueue,
    responses(
        (status = 200, description = "Declared: the queue's counts", body = QueueDetail),
        (status = 400, description = "A bad name or argument", body = ErrorBody),
        (status = 409, description = "The queue exists with other arguments", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn declare_queue(
    State(http): Shared,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<DeclareQueue>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    broker
        .declare_queue(
            &caller,
            queue.clone(),
            body.arguments.into_iter().collect(),
            durability(body.durable.unwrap_or(true)),
        )
        .await?;
    // A caller who may create the queue but not describe it gets its name without counts
    // (nor its members and leader).
    let detail = match broker.queue_stats(&caller, &queue).await {
        Ok(stats) => QueueDetail::of(
            stats.ok_or_else(|| ApiError::not_found(format!("unknown queue {queue:?}")))?,
            broker,
        ),
        Err(QueueError::Unauthorized(_)) => QueueDetail::from(QueueStats {
            name: queue,
            ..QueueStats::default()
        }),
        Err(error) => return Err(error.into()),
    };
    Ok(Json(detail).into_response())
}

/// Deletes a queue with its messages.
#[utoipa::path(
    delete,
    path = "/queues/{queue}",
    tag = "queues",
    params(("queue" = String, Path, description = "The queue's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Unknown queue", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn delete_queue(
    State(http): Shared,
    caller: Caller,
    PathParams(queue): PathParams<String>,
) -> Result<Response, ApiError> {
    http.broker()?.delete_queue(&caller, &queue).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of a get.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetBody {
    /// Most messages to take (1 to 1,000; default 1).
    pub count: Option<u32>,
    /// Most bytes of messages (routing keys, bodies, headers) to take: 1 to 4 MiB
    /// (4194304, the default). The get stops once the messages taken pass it; one message
    /// is taken whatever its size.
    pub bytes_max: Option<u32>,
    /// `ack` (the default): they leave the queue, durably, before the answer. `requeue`:
    /// they stay, marked redelivered.
    pub mode: Option<String>,
}

/// A message got from a queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct GotJson {
    /// Delivered (or got) before.
    pub redelivered: bool,
    /// Its routing key (null: none); `routing_key_base64` when not UTF-8.
    pub routing_key: Option<String>,
    /// Its body as text; `body_base64` when not UTF-8.
    pub body: Option<String>,
    /// Its headers (`x-exchange` names the exchange it was published to).
    pub headers: Vec<HeaderDoc>,
    /// When it was published, ms since the epoch.
    pub timestamp_ms: i64,
}

/// The messages of a get.
#[derive(Debug, Serialize, ToSchema)]
pub struct GotList {
    /// Up to `count` ready messages, oldest first.
    pub messages: Vec<GotJson>,
    /// True when the get stopped at `bytes_max` before `count` messages: more may be ready.
    pub bytes_limited: bool,
}

/// Takes ready messages from a queue without a subscription.
#[utoipa::path(
    post,
    path = "/queues/{queue}/get",
    tag = "queues",
    params(("queue" = String, Path, description = "The queue's name")),
    request_body = GetBody,
    responses(
        (status = 200, description = "The messages (none when the queue has no ready message)", body = GotList),
        (status = 400, description = "A bad count, bytes_max or mode", body = ErrorBody),
        (status = 404, description = "Unknown queue", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn get_messages(
    State(http): Shared,
    caller: Caller,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<GetBody>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let count = body.count.unwrap_or(1);
    if !(1..=GET_COUNT_MAX).contains(&count) {
        return Err(ApiError::bad_request(format!(
            "count is 1 to {GET_COUNT_MAX}, not {count}"
        )));
    }
    let bytes_max = body.bytes_max.unwrap_or(GET_ANSWER_BYTES_MAX);
    if !(1..=GET_ANSWER_BYTES_MAX).contains(&bytes_max) {
        return Err(ApiError::bad_request(format!(
            "bytes_max is 1 to {GET_ANSWER_BYTES_MAX}, not {bytes_max}"
        )));
    }
    let mode = match body.mode.as_deref() {
        None | Some("ack") => GetMode::Ack,
        Some("requeue") => GetMode::Requeue,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "mode {other:?} is not ack or requeue"
            )))
        }
    };
    let got = broker
        .queue_get_within(&caller, &queue, count, bytes_max as usize, mode)
        .await?;
    let taken_bytes: usize = got.iter().map(got_bytes).sum();
    let bytes_limited = got.len() < count as usize && taken_bytes >= bytes_max as usize;
    let messages: Vec<serde_json::Value> = got.iter().map(got_json).collect();
    Ok(
        Json(serde_json::json!({ "messages": messages, "bytes_limited": bytes_limited }))
            .into_response(),
    )
}

/// The bytes of a got message that a get's byte budget counts (as the queue counts them).
fn got_bytes(got: &GotMessage) -> usize {
    crate::frontend::http::stream::record_bytes(&got.record)
}

/// A got message as JSON (the shape of [`GotJson`], with `*_base64` fields where the bytes
/// are not UTF-8).
fn got_json(got: &GotMessage) -> serde_json::Value {
    let record = &got.record;
    let mut data = serde_json::json!({
        "redelivered": got.redelivered,
        "timestamp_ms": record.timestamp_ms,
    });
    put_bytes(&mut data, "routing_key", record.key.as_ref());
    put_bytes(&mut data, "body", record.value.as_ref());
    data["headers"] = headers_json(&record.headers);
    data
}

/// An exchange.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExchangeJson {
    /// Its name (`""`: the default exchange).
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    pub kind: &'static str,
    /// `durable` or `transient`.
    pub durability: &'static str,
    /// Its bindings.
    pub bindings: usize,
}

/// The exchanges.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExchangeList {
    /// Every exchange, by name.
    pub exchanges: Vec<ExchangeJson>,
}

/// Lists the exchanges.
#[utoipa::path(
    get,
    path = "/exchanges",
    tag = "exchanges",
    responses(
        (status = 200, description = "The exchanges", body = ExchangeList),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn list_exchanges(State(http): Shared, caller: Caller) -> Result<Response, ApiError> {
    let exchanges = http
        .broker()?
        .list_exchanges(&caller)
        .into_iter()
        .map(|(name, kind, durability, bindings)| ExchangeJson {
            name,
            kind: kind.name(),
            durability: durability_name(durability),
            bindings,
        })
        .collect();
    Ok(Json(ExchangeList { exchanges }).into_response())
}

/// The body of an exchange declare.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclareExchange {
    /// `direct`, `fanout`, `topic` or `headers`.
    pub kind: String,
    /// Survives restarts (default true).
    pub durable: Option<bool>,
}

/// Declares an exchange (idempotent; another kind is a 409).
#[utoipa::path(
    put,
    path = "/exchanges/{exchange}",
    tag = "exchanges",
    params(("exchange" = String, Path, description = "The exchange's name")),
    request_body = DeclareExchange,
    responses(
        (status = 200, description = "Declared", body = ExchangeJson),
        (status = 400, description = "A bad name or kind", body = ErrorBody),
        (status = 409, description = "The exchange exists with another kind or durability", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn declare_exchange(
    State(http): Shared,
    caller: Caller,
    PathParams(exchange): PathParams<String>,
    JsonBody(body): JsonBody<DeclareExchange>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    broker
        .declare_exchange(
            &caller,
            exchange.clone(),
            &body.kind,
            durability(body.durable.unwrap_or(true)),
        )
        .await?;
    let described = broker
        .list_exchanges(&caller)
        .into_iter()
        .find(|(name, ..)| *name == exchange)
        .map(|(name, kind, durability, bindings)| ExchangeJson {
            name,
            kind: kind.name(),
            durability: durability_name(durability),
            bindings,
        });
    // A caller who may create the exchange but not describe it gets it as declared, without
    // its bindings count (shown as 0).
    let declared = match described {
        Some(described) => described,
        None => ExchangeJson {
            kind: ExchangeKind::parse(&body.kind).map_or("direct", ExchangeKind::name),
            durability: durability_name(durability(body.durable.unwrap_or(true))),
            name: exchange,
            bindings: 0,
        },
    };
    Ok(Json(declared).into_response())
}

/// Deletes an exchange with its bindings.
#[utoipa::path(
    delete,
    path = "/exchanges/{exchange}",
    tag = "exchanges",
    params(("exchange" = String, Path, description = "The exchange's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "A built-in exchange", body = ErrorBody),
        (status = 404, description = "Unknown exchange", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn delete_exchange(
    State(http): Shared,
    caller: Caller,
    PathParams(exchange): PathParams<String>,
) -> Result<Response, ApiError> {
    http.broker()?.delete_exchange(&caller, exchange).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A binding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingJson {
    /// The source exchange (`""`: the default exchange).
    pub exchange: String,
    /// The destination queue.
    pub queue: String,
    /// The routing key or topic pattern.
    #[serde(default)]
    pub routing_key: String,
    /// A headers binding's arguments (`x-match` and the headers to match).
    #[serde(default)]
    pub arguments: BTreeMap<String, String>,
}

/// The bindings.
#[derive(Debug, Serialize, ToSchema)]
pub struct BindingList {
    /// Every binding (or those of the queue asked for).
    pub bindings: Vec<BindingJson>,
}

/// The query of a bindings listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BindingsQuery {
    /// Only this queue's bindings.
    pub queue: Option<String>,
}

/// Lists the bindings.
#[utoipa::path(
    get,
    path = "/bindings",
    tag = "exchanges",
    params(BindingsQuery),
    responses(
        (status = 200, description = "The bindings", body = BindingList),
        (status = 404, description = "Unknown queue", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn list_bindings(
    State(http): Shared,
    caller: Caller,
    QueryParams(query): QueryParams<BindingsQuery>,
) -> Result<Response, ApiError> {
    let bindings = http
        .broker()?
        .list_bindings(&caller, query.queue.as_deref())?
        .into_iter()
        .map(|binding| BindingJson {
            exchange: binding.exchange,
            queue: binding.queue,
            routing_key: binding.routing_key,
            arguments: binding.arguments.into_iter().collect(),
        })
        .collect();
    Ok(Json(BindingList { bindings }).into_response())
}

/// Binds a queue to an exchange.
#[utoipa::path(
    post,
    path = "/bindings",
    tag = "exchanges",
    request_body = BindingJson,
    responses(
        (status = 201, description = "Bound (also when the binding existed)", body = BindingJson),
        (status = 400, description = "Bad headers arguments", body = ErrorBody),
        (status = 404, description = "Unknown queue or exchange", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn bind(
    State(http): Shared,
    caller: Caller,
    JsonBody(body): JsonBody<BindingJson>,
) -> Result<Response, ApiError> {
    http.broker()?
        .bind_queue(
            &caller,
            body.queue.clone(),
            body.exchange.clone(),
            body.routing_key.clone(),
            body.arguments.clone().into_iter().collect(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Removes a binding (no error when it did not exist).
#[utoipa::path(
    post,
    path = "/bindings/delete",
    tag = "exchanges",
    request_body = BindingJson,
    responses(
        (status = 204, description = "Unbound"),
        (status = 404, description = "Unknown queue or exchange", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn unbind(
    State(http): Shared,
    caller: Caller,
    JsonBody(body): JsonBody<BindingJson>,
) -> Result<Response, ApiError> {
    http.broker()?
        .unbind_queue(
            &caller,
            body.queue,
            body.exchange,
            body.routing_key,
            body.arguments.into_iter().collect(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of a publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// The exchange (`""`, the default: the default exchange, which routes to the queue named
    /// by the routing key).
    #[serde(default)]
    pub exchange: String,
    /// The routing key.
    #[serde(default)]
    pub routing_key: String,
    /// The body as text.
    pub body: Option<String>,
    /// The body as base64, for binary bytes.
    pub body_base64: Option<String>,
    /// Headers, text values.
    #[serde(default)]
    pub headers: Vec<HeaderIn>,
    /// Refuse (`returned`, not stored) when no queue takes it, instead of dropping it.
    #[serde(default)]
    pub mandatory: bool,
}

/// The confirm of a publish.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishAnswer {
    /// `routed` (durable in `queues`), `dropped` (no queue took it) or `returned` (no queue
    /// took the mandatory message; not stored).
    pub outcome: &'static str,
    /// The queues that stored it.
    pub queues: Vec<String>,
}

/// Publishes a message to an exchange; answers once it is durable in every queue it was
/// routed to (the confirm).
#[utoipa::path(
    post,
    path = "/publish",
    tag = "exchanges",
    request_body = PublishBody,
    responses(
        (status = 200, description = "Confirmed", body = PublishAnswer),
        (status = 400, description = "Bad JSON, a body both as text and base64, a bad header", body = ErrorBody),
        (status = 404, description = "Unknown exchange", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn publish(
    State(http): Shared,
    caller: Caller,
    JsonBody(body): JsonBody<PublishBody>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let payload = match (body.body, body.body_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give body or body_base64, not both"));
        }
        (Some(text), None) => Bytes::from(text),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(|error| ApiError::bad_request(format!("body_base64: {error}")))?,
        (None, None) => Bytes::new(),
    };
    let query = PublishQuery {
        exchange: body.exchange,
        routing_key: body.routing_key,
        mandatory: if body.mandatory {
            Mandatory::Return
        } else {
            Mandatory::Drop
        },
        headers: body
            .headers
            .into_iter()
            .map(|header| Header {
                key: header.key,
                value: header.value.map(Bytes::from),
            })
            .collect(),
        body: payload,
    };
    let confirmed = broker.publish(&caller, query).await?.await?;
    crate::frontend::http::stream::hold_for_quota(&caller).await;
    let answer = match confirmed {
        PublishOutcome::Routed(queues) => PublishAnswer {
            outcome: "routed",
            queues,
        },
        PublishOutcome::Dropped => PublishAnswer {
            outcome: "dropped",
            queues: Vec::new(),
        },
        PublishOutcome::Returned => PublishAnswer {
            outcome: "returned",
            queues: Vec::new(),
        },
    };
    Ok(Json(answer).into_response())
}
