//! Records over HTTP, for browsers and languages with no Wharf client (issue #17):
//!
//! - `POST /api/v1/topics/{topic}/partitions/{partition}/records` appends records (JSON,
//!   UTF-8 or base64 keys and values, headers) with acks=all, through the core's produce.
//! - `GET /api/v1/topics/{topic}/partitions/{partition}/stream?from=earliest|latest|OFFSET`
//!   streams the partition's records as Server-Sent Events, one `record` event per record,
//!   whose `id` is the record's offset; a reconnecting `EventSource` sends `Last-Event-ID`
//!   and the stream resumes after it.
//!
//! Backpressure: the stream fetches the next batch only when hyper asks for the next event,
//! which it does once the previous ones are written to the socket. A slow reader therefore
//! pauses its own fetches; at most one fetch ([`STREAM_FETCH_BYTES_MAX`]) is held per stream,
//! never an unbounded buffer. Streams end when the broker shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wharf_protocol::batch::{self, BatchBuilder, Header, NewRecord, Record};

use crate::core::{
    Acks, Broker, FetchQuery, Isolation, OffsetSpec, PartitionQuery, ProduceQuery, Session,
    TopicQuery,
};
use crate::frontend::http::error::{ApiError, ErrorBody, JsonBody, PathParams, QueryParams};
use crate::frontend::http::{Caller, Http, Shared};

/// Most bytes one fetch of a stream reads: what a stream holds at most while its reader is
/// slow.
pub const STREAM_FETCH_BYTES_MAX: u32 = 1024 * 1024;

/// Most bytes one compressed batch may decompress to in a stream (or a fetch over HTTP): a
/// batch past it is not sent; a `skipped` item says which offsets and why, so a reader can
/// take them with a Kafka or native consumer. 16 MiB holds any batch a producer with the
/// default limits sends (1 MiB compressed rarely grows past a few MiB).
pub const STREAM_DECOMPRESSED_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most bytes of record keys, values and headers a stream holds waiting to be sent (one
/// record at least): the records of one fetch past it are left for the next fetch, which
/// starts at the first record not taken. With the JSON around them (base64 makes binary
/// values a third larger) a stream so holds a few MiB at most, whatever the batches.
pub const STREAM_PENDING_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long one fetch of a stream waits for new records before it asks again (and the
/// keep-alive comment keeps proxies from closing an idle stream).
const STREAM_WAIT: Duration = Duration::from_secs(5);

/// Most records one POST may carry (its body is capped at 1 MiB too).
pub const PRODUCE_RECORDS_MAX: usize = 10_000;

/// The body of a produce.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceBody {
    /// The records, appended in order as one batch.
    pub records: Vec<RecordIn>,
}

/// One record to append: key and value as UTF-8 text, or as base64 (`key_base64`,
/// `value_base64`) for binary bytes; both absent means null.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    /// The key as text.
    pub key: Option<String>,
    /// The key as base64.
    pub key_base64: Option<String>,
    /// The value as text.
    pub value: Option<String>,
    /// The value as base64.
    pub value_base64: Option<String>,
    /// Headers, text values.
    #[serde(default)]
    pub headers: Vec<HeaderIn>,
}

/// One record header.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderIn {
    /// Its key.
    pub key: String,
    /// Its value as text (absent: null).
    pub value: Option<String>,
}

/// The answer to a produce.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProduceAnswer {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset of the first record appended.
    pub base_offset: i64,
    /// Records appended.
    pub record_count: usize,
}

/// One record of a stream (the `data` of an SSE `record` event; a WebSocket `record`
/// message adds `"type": "record"`). `*_base64` replaces a field whose bytes are not UTF-8.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamRecordDoc {
    /// Its offset (also the SSE event's `id`).
    pub offset: i64,
    /// Its timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    /// The key as text (null: none).
    pub key: Option<String>,
    /// The key as base64, when not UTF-8.
    pub key_base64: Option<String>,
    /// The value as text (null: none).
    pub value: Option<String>,
    /// The value as base64, when not UTF-8.
    pub value_base64: Option<String>,
    /// Its headers: `{"key", "value"}` or `{"key", "value_base64"}`.
    pub headers: Vec<HeaderDoc>,
}

/// A header of a streamed record.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderDoc {
    /// Its key.
    pub key: String,
    /// Its value as text (null: none).
    pub value: Option<String>,
    /// Its value as base64, when not UTF-8.
    pub value_base64: Option<String>,
}

/// The routes of this module.
pub fn routes() -> OpenApiRouter<Arc<Http>> {
    OpenApiRouter::new()
        .routes(routes!(produce, fetch_records))
        .routes(routes!(stream))
}

/// Appends records to a partition as one batch.
///
/// With acks=all: the answer comes once the records are durable.
#[utoipa::path(
    post,
    path = "/topics/{topic}/partitions/{partition}/records",
    tag = "records",
    params(
        ("topic" = String, Path, description = "The topic's name"),
        ("partition" = u32, Path, description = "The partition"),
    ),
    request_body = ProduceBody,
    responses(
        (status = 201, description = "Appended", body = ProduceAnswer),
        (status = 400, description = "Bad JSON, no records or too many, a field both as text and base64", body = ErrorBody),
        (status = 404, description = "Unknown topic or partition", body = ErrorBody),
        (status = 413, description = "Body or batch too large", body = ErrorBody),
        (status = 503, description = "Recovering, or the append timed out", body = ErrorBody),
    )
)]
pub async fn produce(
    State(http): Shared,
    caller: Caller,
    PathParams((topic, partition)): PathParams<(String, u32)>,
    JsonBody(body): JsonBody<ProduceBody>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    if body.records.is_empty() || body.records.len() > PRODUCE_RECORDS_MAX {
        return Err(ApiError::bad_request(format!(
            "a produce carries 1 to {PRODUCE_RECORDS_MAX} records, not {}",
            body.records.len()
        )));
    }
    let record_count = body.records.len();
    let batch = build_batch(body.records, now_ms())?;
    let query = ProduceQuery {
        acks: Acks::All,
        timeout_ms: 30_000,
        topics: vec![(topic.clone(), vec![(partition, batch)])],
    };
    let completion = broker.produce(&caller, query).await;
    let outcome = completion
        .await
        .and_then(|mut topics| topics.pop())
        .and_then(|mut topic| topic.partitions.pop())
        .ok_or_else(|| ApiError::bad_request("the produce had no answer"))?;
    let produced = outcome.result?;
    let answer = ProduceAnswer {
        topic,
        partition,
        base_offset: produced.base_offset,
        record_count,
    };
    hold_for_quota(&caller).await;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// HTTP has no throttle field: a request that a quota throttles is answered after the
/// delay instead (issue #18), so the client, which waits for the answer, keeps the rate.
pub(super) async fn hold_for_quota(session: &Session) {
    let delay = session.throttle_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn build_batch(records: Vec<RecordIn>, timestamp_ms: i64) -> Result<Bytes, ApiError> {
    let mut builder = BatchBuilder::new(timestamp_ms);
    for record in records {
        let new = NewRecord {
            timestamp_ms,
            key: bytes_of("key", record.key, record.key_base64)?,
            value: bytes_of("value", record.value, record.value_base64)?,
            headers: record
                .headers
                .into_iter()
                .map(|header| Header {
                    key: header.key,
                    value: header.value.map(Bytes::from),
                })
                .collect(),
        };
        builder
            .push(&new)
            .map_err(|error| ApiError::bad_request(error.to_string()))?;
    }
    Ok(builder.build())
}

fn bytes_of(
    field: &str,
    text: Option<String>,
    base64: Option<String>,
) -> Result<Option<Bytes>, ApiError> {
    match (text, base64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "give {field} or {field}_base64, not both"
        ))),
        (Some(text), None) => Ok(Some(Bytes::from(text))),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(|decoded| Some(Bytes::from(decoded)))
            .map_err(|error| ApiError::bad_request(format!("{field}_base64: {error}"))),
        (None, None) => Ok(None),
    }
}

/// The query of a stream.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// `earliest`, `latest` (the default) or an offset.
    pub from: Option<String>,
}

/// Most records one fetch over HTTP answers.
pub const FETCH_RECORDS_MAX: u32 = 1_000;

/// The query of a fetch.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FetchParams {
    /// `earliest` (the default), `latest` or an offset: where to start.
    pub offset: Option<String>,
    /// Most records (1 to 1,000; default 100).
    pub max_records: Option<u32>,
}

/// Records fetched by offset.
#[derive(Debug, Serialize, ToSchema)]
pub struct FetchAnswer {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The records, in offset order (committed ones only).
    pub records: Vec<StreamRecordDoc>,
    /// Where the next fetch starts.
    pub next_offset: i64,
    /// The partition's last stable offset: no more records below it than these.
    pub high_watermark: i64,
    /// Batches in the range read that are not sent over HTTP (they decompress past 16 MiB,
    /// or not at all); usually empty.
    pub skipped: Vec<SkippedDoc>,
}

/// Records not sent over HTTP: the `skipped` entries of a fetch, and the data of a stream's
/// `skipped` event.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkippedDoc {
    /// Always true.
    pub skipped: bool,
    /// The first offset not sent.
    pub first_offset: i64,
    /// The last offset not sent.
    pub last_offset: i64,
    /// Why, and how to read them instead.
    pub message: String,
}

/// Reads a partition's committed records from an offset, without waiting.
#[utoipa::path(
    get,
    path = "/topics/{topic}/partitions/{partition}/records",
    tag = "records",
    params(
        ("topic" = String, Path, description = "The topic's name"),
        ("partition" = u32, Path, description = "The partition"),
        FetchParams,
    ),
    responses(
        (status = 200, description = "The records (none at the end of the partition)", body = FetchAnswer),
        (status = 400, description = "A bad offset or max_records, or an offset out of range", body = ErrorBody),
        (status = 404, description = "Unknown topic or partition", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn fetch_records(
    State(http): Shared,
    caller: Caller,
    PathParams((topic, partition)): PathParams<(String, u32)>,
    QueryParams(query): QueryParams<FetchParams>,
) -> Result<Response, ApiError> {
    let max_records = query.max_records.unwrap_or(100);
    if !(1..=FETCH_RECORDS_MAX).contains(&max_records) {
        return Err(ApiError::bad_request(format!(
            "max_records is 1 to {FETCH_RECORDS_MAX}, not {max_records}"
        )));
    }
    let from = query.offset.as_deref().unwrap_or("earliest");
    let mut reader =
        StreamReader::open(&http, &caller, topic.clone(), partition, Some(from), None)?;
    reader.fetch_once().await?;
    hold_for_quota(&reader.session).await;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut next_offset = reader.next_offset;
    while let Some(item) = reader.pending.pop_front() {
        match item {
            StreamItem::Record { offset, data } => {
                if records.len() == max_records as usize {
                    next_offset = offset;
                    break;
                }
                records.push(data);
            }
            StreamItem::Skipped(data) => {
                if records.len() == max_records as usize {
                    next_offset = data["first_offset"].as_i64().unwrap_or(next_offset);
                    break;
                }
                skipped.push(data);
            }
            StreamItem::Failed(_) => {}
        }
    }
    let high_watermark = http
        .broker()?
        .list_offset(&caller, &topic, partition, OffsetSpec::LastStable)?
        .unwrap_or(0);
    let answer = serde_json::json!({
        "topic": topic,
        "partition": partition,
        "records": records,
        "next_offset": next_offset,
        "high_watermark": high_watermark,
        "skipped": skipped,
    });
    Ok(Json(answer).into_response())
}

/// Streams a partition's committed records as Server-Sent Events.
///
/// One `record` event per record (`id` = its offset, `data` = StreamRecordDoc), resuming
/// after `Last-Event-ID`; one `error` event (`data` = ErrorBody) before the end when the
/// partition cannot be read.
#[utoipa::path(
    get,
    path = "/topics/{topic}/partitions/{partition}/stream",
    tag = "records",
    params(
        ("topic" = String, Path, description = "The topic's name"),
        ("partition" = u32, Path, description = "The partition"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this offset (what a reconnecting EventSource sends)"),
        StreamQuery,
    ),
    responses(
        (status = 200, description = "The event stream; each record event's data is a StreamRecordDoc", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad `from` or Last-Event-ID", body = ErrorBody),
        (status = 404, description = "Unknown topic or partition", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
pub async fn stream(
    State(http): Shared,
    caller: Caller,
    PathParams((topic, partition)): PathParams<(String, u32)>,
    QueryParams(query): QueryParams<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("Last-Event-ID {value:?} is not an offset"))
            })
        })
        .transpose()?;
    let reader = StreamReader::open(
        &http,
        &caller,
        topic,
        partition,
        query.from.as_deref(),
        resume,
    )?;
    let events = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = match reader.next_item().await? {
            StreamItem::Record { offset, data } => Event::default()
                .id(offset.to_string())
                .event("record")
                .data(data.to_string()),
            StreamItem::Failed(error) => Event::default().event("error").data(error.to_string()),
            StreamItem::Skipped(skipped) => {
                Event::default().event("skipped").data(skipped.to_string())
            }
        };
        Some((Ok::<Event, Infallible>(event), reader))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(STREAM_WAIT))
        .into_response())
}

/// What a stream sends next.
#[derive(Debug)]
pub(super) enum StreamItem {
    /// A record: its offset and its JSON form ([`record_json`]).
    Record {
        /// The record's offset.
        offset: i64,
        /// `{"offset", "timestamp_ms", "key", "value", "headers"}`.
        data: serde_json::Value,
    },
    /// The partition cannot be read: `{"error", "message"}`, then the stream ends.
    Failed(serde_json::Value),
    /// A batch that is not sent (it decompresses past [`STREAM_DECOMPRESSED_BYTES_MAX`], or
    /// not at all): `{"skipped": true, "first_offset", "last_offset", "message"}`; the
    /// stream goes on after it.
    Skipped(serde_json::Value),
}

/// The reading side of one stream (SSE or WebSocket) of a partition.
pub(super) struct StreamReader {
    broker: Arc<Broker>,
    session: Arc<Session>,
    topic: String,
    partition: u32,
    /// The offset of the next record to send.
    next_offset: i64,
    /// Records of the last fetch not yet sent.
    pending: VecDeque<StreamItem>,
    shutdown: watch::Receiver<bool>,
    /// An error event was sent: the stream ends.
    done: bool,
}

impl StreamReader {
    /// A reader of `partition` of `topic` starting after `resume` (a `Last-Event-ID`), else
    /// at `from`: `earliest`, `latest` (the default) or an offset.
    ///
    /// # Errors
    /// 503 while recovering; 404 for an unknown topic or partition; 400 for a bad `from`.
    pub(super) fn open(
        http: &Http,
        caller: &Caller,
        topic: String,
        partition: u32,
        from: Option<&str>,
        resume: Option<i64>,
    ) -> Result<StreamReader, ApiError> {
        let broker = http.broker()?.clone();
        // Also the check that the partition exists, whatever the start.
        let earliest = broker
            .list_offset(caller, &topic, partition, OffsetSpec::Earliest)?
            .unwrap_or(0);
        let start = match (resume, from) {
            (Some(last), _) => last.saturating_add(1),
            (None, None | Some("latest")) => broker
                .list_offset(caller, &topic, partition, OffsetSpec::LastStable)?
                .unwrap_or(0),
            (None, Some("earliest")) => earliest,
            (None, Some(offset)) => offset.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("from={offset:?}: earliest, latest or an offset"))
            })?,
        };
        Ok(StreamReader {
            broker,
            session: Arc::new(caller.like()),
            topic,
            partition,
            next_offset: start,
            pending: VecDeque::new(),
            shutdown: http.shutdown.clone(),
            done: false,
        })
    }

    /// A reader of `partition` of `topic` at `offset`, for a member of a group
    /// ([`super::group_stream`]), which fetches for all its partitions at once.
    pub(super) fn at(
        broker: Arc<Broker>,
        session: Arc<Session>,
        topic: String,
        partition: u32,
        offset: i64,
        shutdown: watch::Receiver<bool>,
    ) -> StreamReader {
        StreamReader {
            broker,
            session,
            topic,
            partition,
            next_offset: offset,
            pending: VecDeque::new(),
            shutdown,
            done: false,
        }
    }

    /// The offset of the next record to read.
    pub(super) fn position(&self) -> i64 {
        self.next_offset
    }

    /// The records read and not yet taken.
    pub(super) fn take_pending(&mut self) -> impl Iterator<Item = StreamItem> + '_ {
        self.pending.drain(..)
    }

    /// The next item: a record, or an error before the end. `None` ends the stream (after
    /// an error, or on shutdown). Cancel-safe: a fetch dropped half way loses nothing.
    pub(super) async fn next_item(&mut self) -> Option<StreamItem> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done || *self.shutdown.borrow() {
                return None;
            }
            let query = self.query(u32::try_from(STREAM_WAIT.as_millis()).unwrap_or(u32::MAX));
            let mut shutdown = self.shutdown.clone();
            let fetched = tokio::select! {
                fetched = self.broker.fetch(&self.session, &query) => fetched,
                _ = shutdown.changed() => return None,
            };
            let fetched = fetched
                .into_iter()
                .next()
                .and_then(|topic| topic.partitions.into_iter().next())?;
            if let Some(error) = fetched.error {
                self.done = true;
                let error = ApiError::from(error);
                let message = serde_json::json!({"error": error.kind, "message": error.message});
                return Some(StreamItem::Failed(message));
            }
            self.take_records(fetched.records, &fetched.aborted);
        }
    }

    /// The fetch of the next records, waiting up to `wait_ms` for some.
    fn query(&self, wait_ms: u32) -> FetchQuery {
        FetchQuery {
            max_wait_ms: wait_ms,
            min_bytes: 1,
            max_bytes: STREAM_FETCH_BYTES_MAX,
            isolation: Isolation::ReadCommitted,
            topics: vec![TopicQuery {
                topic: self.topic.clone(),
                partitions: vec![PartitionQuery {
                    partition: self.partition,
                    fetch_offset: self.next_offset,
                    partition_max_bytes: STREAM_FETCH_BYTES_MAX,
                    current_leader_epoch: -1,
                }],
            }],
        }
    }

    /// One fetch without waiting: up to [`STREAM_FETCH_BYTES_MAX`] of records become
    /// pending.
    ///
    /// # Errors
    /// The partition cannot be read (an offset out of range, storage).
    async fn fetch_once(&mut self) -> Result<(), ApiError> {
        let fetched = self.broker.fetch(&self.session, &self.query(0)).await;
        let fetched = fetched
            .into_iter()
            .next()
            .and_then(|topic| topic.partitions.into_iter().next())
            .ok_or_else(|| ApiError::not_found("the partition was not fetched"))?;
        if let Some(error) = fetched.error {
            return Err(ApiError::from(error));
        }
        self.take_records(fetched.records, &fetched.aborted);
        Ok(())
    }

    /// Turns fetched batches into events, skipping control batches, records before
    /// `next_offset` and aborted transactions' records.
    pub(super) fn take_records(&mut self, records: Bytes, aborted: &[crate::core::AbortedTxn]) {
        take_batches(records, aborted, &mut self.next_offset, &mut self.pending);
    }
}

/// [`StreamReader::take_records`]: turns the fetched `records` into items at the end of
/// `pending` and moves `next_offset` past what was taken, within the byte budgets
/// ([`STREAM_PENDING_BYTES_MAX`], [`STREAM_DECOMPRESSED_BYTES_MAX`]).
fn take_batches(
    records: Bytes,
    aborted: &[crate::core::AbortedTxn],
    next_offset: &mut i64,
    pending: &mut VecDeque<StreamItem>,
) {
    let mut pending_bytes: usize = pending.iter().map(StreamItem::bytes).sum();
    for batch in batch::batches(records) {
        let Ok(batch) = batch else {
            break;
        };
        let header = *batch.header();
        let batch_end = header
            .base_offset
            .saturating_add(i64::from(header.last_offset_delta))
            .saturating_add(1);
        let skipped = header.attributes.is_control()
            || (header.attributes.is_transactional()
                && aborted.iter().any(|txn| {
                    txn.producer_id == header.producer_id
                        && (txn.first_offset..=txn.last_offset).contains(&header.base_offset)
                }));
        if !skipped {
            match batch.records_decompressed_within(STREAM_DECOMPRESSED_BYTES_MAX) {
                Ok(records) => {
                    for record in records.flatten() {
                        if record.offset < *next_offset {
                            continue;
                        }
                        if pending_bytes >= STREAM_PENDING_BYTES_MAX && !pending.is_empty() {
                            // The budget is spent: the next fetch starts here.
                            *next_offset = record.offset;
                            return;
                        }
                        pending_bytes += record_bytes(&record);
                        pending.push_back(StreamItem::Record {
                            offset: record.offset,
                            data: record_json(&record),
                        });
                    }
                }
                Err(error) if header.base_offset.max(*next_offset) < batch_end => {
                    let first_offset = header.base_offset.max(*next_offset);
                    pending.push_back(StreamItem::Skipped(serde_json::json!({
                        "skipped": true,
                        "first_offset": first_offset,
                        "last_offset": batch_end - 1,
                        "message": format!(
                            "records {first_offset} to {} are not sent over HTTP: {error} (at most {STREAM_DECOMPRESSED_BYTES_MAX} bytes decompressed per batch); read them with a Kafka or native consumer",
                            batch_end - 1
                        ),
                    })));
                }
                Err(_) => {}
            }
        }
        *next_offset = (*next_offset).max(batch_end);
    }
}

/// The bytes of a record's key, value and headers: what [`STREAM_PENDING_BYTES_MAX`] counts.
pub(super) fn record_bytes(record: &Record) -> usize {
    let field = |bytes: Option<&Bytes>| bytes.map_or(0, Bytes::len);
    field(record.key.as_ref())
        + field(record.value.as_ref())
        + record
            .headers
            .iter()
            .map(|header| header.key.len() + field(header.value.as_ref()))
            .sum::<usize>()
}

impl StreamItem {
    /// About the bytes it holds (a record's key, value and headers).
    fn bytes(&self) -> usize {
        match self {
            StreamItem::Record { data, .. } => {
                let text = |field: &str| {
                    data.get(field)
                        .and_then(serde_json::Value::as_str)
                        .map_or(0, str::len)
                };
                text("key") + text("key_base64") + text("value") + text("value_base64")
            }
            StreamItem::Failed(_) | StreamItem::Skipped(_) => 0,
        }
    }
}

/// One record as JSON, with text fields where the bytes are UTF-8 and `*_base64` fields
/// where they are not.
fn record_json(record: &Record) -> serde_json::Value {
    let mut data = serde_json::json!({
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
    });
    put_bytes(&mut data, "key", record.key.as_ref());
    put_bytes(&mut data, "value", record.value.as_ref());
    data["headers"] = headers_json(&record.headers);
    data
}

/// Sets `field` of `object` to the bytes as text, or `{field}_base64` when they are not
/// UTF-8; null when absent.
/// A record's headers as JSON: `[{"key": ..., "value" or "value_base64": ...}]`.
pub(super) fn headers_json(headers: &[wharf_protocol::batch::Header]) -> serde_json::Value {
    headers
        .iter()
        .map(|header| {
            let mut entry = serde_json::json!({"key": header.key});
            put_bytes(&mut entry, "value", header.value.as_ref());
            entry
        })
        .collect::<Vec<_>>()
        .into()
}

pub(super) fn put_bytes(object: &mut serde_json::Value, field: &str, bytes: Option<&Bytes>) {
    match bytes {
        None => object[field] = serde_json::Value::Null,
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => object[field] = serde_json::Value::from(text),
            Err(_) => {
                object[format!("{field}_base64")] = serde_json::Value::from(
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                );
            }
        },
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    /// One batch at `base_offset` of `count` records of `value_bytes` bytes each.
    fn batch_of(base_offset: i64, count: usize, value_bytes: usize) -> Bytes {
        let mut builder = BatchBuilder::new(0).base_offset(base_offset);
        for _ in 0..count {
            builder
                .push(&NewRecord {
                    timestamp_ms: 0,
                    key: None,
                    value: Some(Bytes::from(vec![b'v'; value_bytes])),
                    headers: Vec::new(),
                })
                .expect("fits a batch");
        }
        builder.build()
    }

    fn offsets(pending: &VecDeque<StreamItem>) -> Vec<i64> {
        pending
            .iter()
            .filter_map(|item| match item {
                StreamItem::Record { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_fetch_larger_than_the_pending_budget_is_taken_over_several_rounds() {
        // Goal: a stream holds at most STREAM_PENDING_BYTES_MAX (plus one record) of records
        // whatever a fetch returns, and loses none. Method: 8 records of 1 MiB in one batch;
        // take, drain, take the same bytes again (as the next fetch from next_offset would
        // return them), until every record came through once, in order.
        let value_bytes = 1024 * 1024;
        let records = batch_of(100, 8, value_bytes);
        let mut next_offset = 100;
        let mut pending = VecDeque::new();
        let mut seen = Vec::new();
        for _round in 0..8 {
            take_batches(records.clone(), &[], &mut next_offset, &mut pending);
            let taken = offsets(&pending);
            assert!(
                taken.len() * value_bytes <= STREAM_PENDING_BYTES_MAX + value_bytes,
                "{taken:?}"
            );
            seen.extend(taken);
            pending.clear();
            if next_offset == 108 {
                break;
            }
        }
        assert_eq!(seen, (100..108).collect::<Vec<_>>());
        assert_eq!(next_offset, 108);
    }

    #[test]
    fn a_batch_that_does_not_decompress_is_reported_as_skipped_and_passed() {
        // A batch claiming gzip whose records are not gzip data (CRC made valid again).
        let mut broken = BytesMut::from(&batch_of(5, 3, 10)[..]);
        broken[21..23].copy_from_slice(&1i16.to_be_bytes());
        let crc = batch::compute_crc(&broken);
        broken[17..21].copy_from_slice(&crc.to_be_bytes());
        let mut fetched = BytesMut::from(&broken[..]);
        fetched.extend_from_slice(&batch_of(8, 1, 10));
        let mut next_offset = 6;
        let mut pending = VecDeque::new();
        take_batches(fetched.freeze(), &[], &mut next_offset, &mut pending);
        assert_eq!(pending.len(), 2, "a skipped item, then the next record");
        let StreamItem::Skipped(skipped) = &pending[0] else {
            panic!("first the skipped batch");
        };
        assert_eq!(skipped["first_offset"], 6, "from where the reader was");
        assert_eq!(skipped["last_offset"], 7);
        assert_eq!(offsets(&pending), vec![8]);
        assert_eq!(next_offset, 9);
    }
}
