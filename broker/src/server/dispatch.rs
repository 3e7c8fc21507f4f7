//! Request → handler. Each handler turns one decoded request into one response (or none for
//! produce with acks = none). Storage errors become wire error codes in one place,
//! [`storage_error_code`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;
use wharf_protocol::api::SUPPORTED_APIS;
use wharf_protocol::batch::{self, BatchHeader, NO_PRODUCER_ID};
use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request, Response};

use crate::group::CommitCheck;
use crate::offsets::Committed;
use crate::producer::{last_sequence, BatchMetadata, Verdict};
use crate::queue::exchange::ExchangeKind;
use crate::queue::{
    args_from_pairs, AckScope, CancelReason, ConsumerEvent, ConsumerId, Delivered, DeliveryTag,
    Durability, Message, Published, QueueError, Requeue, SessionId,
};
use crate::server::connection::Session;
use crate::server::Broker;
use crate::storage::{Appended, Error as StorageError, Partition};
use crate::topic::{TopicError, TopicInfo, INTERNAL_TOPIC_PREFIX};
use crate::txn::Membership;
use wharf_protocol::batch::Header;
use wharf_protocol::frame::FrameHeader;
use wharf_protocol::wire::Wire;

/// Longest a fetch may wait for data, whatever the client asks.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;
/// Longest a produce may wait for durability.
pub const PRODUCE_TIMEOUT_MS_MAX: u32 = 5 * 60_000;
/// Largest fetch response, whatever the client asks (fits one frame).
pub const FETCH_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Largest metadata string stored with a committed offset (Kafka's default too): it lives in
/// memory for every partition of every group.
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;
/// How far in the future a batch's timestamp may be (Kafka 4's default): a timestamp far
/// ahead would keep its segment, and every later one, from ever expiring by age.
pub const TIMESTAMP_AHEAD_MS_MAX: i64 = 3600 * 1000;
/// Most names (topics, groups) one request may list: a frame can carry millions of tiny
/// names, and each costs memory and a response entry.
pub const REQUEST_NAMES_MAX: usize = 10_000;

/// What remains of a request after its ordered phase: waiting for durability or for data.
/// It resolves to the response (`None`: no response, for acks = none).
pub type Completion = Pin<Box<dyn Future<Output = Option<Response>> + Send>>;

fn ready(response: Response) -> Completion {
    Box::pin(std::future::ready(Some(response)))
}

/// Runs the ordered phase of one request and returns its completion.
///
/// The connection awaits this before it starts the next request, so requests on one
/// connection take effect in the order they were sent (two pipelined produces to a partition
/// append in order, as Kafka guarantees); the returned completions run concurrently and the
/// connection writes their responses in request order.
pub async fn handle(
    broker: &Arc<Broker>,
    request: Request,
    session: &Session,
    header: FrameHeader,
) -> Completion {
    if let Some(names) = listed_names(&request) {
        if names > REQUEST_NAMES_MAX {
            let message =
                format!("request lists {names} names; at most {REQUEST_NAMES_MAX} are allowed");
            return ready(Response::error_only(
                request.api_key(),
                ErrorCode::InvalidRequest,
                message,
            ));
        }
    }
    match request {
        Request::ApiVersions(_) => ready(Response::ApiVersions(api_versions())),
        Request::Metadata(request) => ready(Response::Metadata(metadata(broker, request))),
        Request::CreateTopics(request) => {
            ready(Response::CreateTopics(create_topics(broker, request).await))
        }
        Request::DeleteTopics(request) => {
            ready(Response::DeleteTopics(delete_topics(broker, request).await))
        }
        Request::Produce(request) => produce(broker, request).await,
        Request::Fetch(request) => {
            let broker = broker.clone();
            Box::pin(async move { Some(Response::Fetch(fetch(&broker, request).await)) })
        }
        Request::ListOffsets(request) => {
            ready(Response::ListOffsets(list_offsets(broker, request)))
        }
        Request::GroupHeartbeat(request) => ready(Response::GroupHeartbeat(
            broker
                .groups
                .heartbeat(&request, |topic| broker.partition_count(topic)),
        )),
        Request::LeaveGroup(request) => {
            let error = broker
                .groups
                .leave(&request.group_id, &request.member_id, |topic| {
                    broker.partition_count(topic)
                });
            ready(Response::LeaveGroup(LeaveGroupResponse {
                error,
                error_message: (!error.is_ok()).then(|| error.describe().to_string()),
            }))
        }
        Request::OffsetCommit(request) => {
            ready(Response::OffsetCommit(offset_commit(broker, request).await))
        }
        Request::OffsetFetch(request) => {
            ready(Response::OffsetFetch(offset_fetch(broker, request)))
        }
        Request::DescribeGroups(request) => {
            ready(Response::DescribeGroups(DescribeGroupsResponse {
                groups: dedupe(request.group_ids)
                    .iter()
                    .map(|group| broker.groups.describe(group))
                    .collect(),
                ..DescribeGroupsResponse::default()
            }))
        }
        Request::ListGroups(_) => ready(Response::ListGroups(list_groups(broker))),
        Request::InitProducerId(request) if request.transactional_id.is_some() => {
            ready(Response::InitProducerId(broker.txn.init(request).await))
        }
        Request::InitProducerId(request) => ready(Response::InitProducerId(
            init_producer_id(broker, request).await,
        )),
        Request::AddPartitionsToTxn(request) => ready(Response::AddPartitionsToTxn(
            broker.txn.add_partitions(request).await,
        )),
        Request::AddOffsetsToTxn(request) => ready(Response::AddOffsetsToTxn(
            broker.txn.add_offsets(request).await,
        )),
        Request::TxnOffsetCommit(request) => ready(Response::TxnOffsetCommit(
            broker.txn.offset_commit(request).await,
        )),
        Request::EndTxn(request) => ready(Response::EndTxn(broker.txn.end(request).await)),
        Request::Publish(request) => publish(broker, request).await,
        Request::Subscribe(request) => ready(Response::Subscribe(
            subscribe(broker, request, session, header).await,
        )),
        Request::Ack(request) => ack(broker, request, session).await,
        Request::Cancel(request) => {
            if !session.owns_consumer(&request.queue, request.consumer_id) {
                return ready(Response::Cancel(admin_answer(Err(QueueError::Invalid(
                    format!(
                        "consumer {} of queue {:?} was not started on this connection",
                        request.consumer_id, request.queue
                    ),
                )))));
            }
            broker
                .queues
                .cancel(
                    &request.queue,
                    ConsumerId(request.consumer_id),
                    CancelReason::ClientCancelled,
                )
                .await;
            session.remove_consumer(&request.queue, request.consumer_id);
            ready(Response::Cancel(QueueAdminResponse::default()))
        }
        Request::DeclareExchange(request) => {
            let outcome =
                off_runtime(broker, move |broker| declare_exchange(broker, request)).await;
            ready(Response::DeclareExchange(admin_answer(outcome)))
        }
        Request::DeclareQueue(request) => {
            let session_id = session.id();
            // Opening a queue's storage creates and fsyncs files.
            let outcome = off_runtime(broker, move |broker| {
                declare_queue(broker, request, session_id)
            })
            .await;
            ready(Response::DeclareQueue(admin_answer(outcome)))
        }
        Request::DeleteQueue(request) => ready(Response::DeleteQueue(admin_answer(
            broker.queues.delete_queue(&request.name).await,
        ))),
        Request::BindQueue(request) => {
            let outcome = off_runtime(broker, move |broker| {
                let pairs = header_pairs(&request);
                broker.queues.bind(
                    &request.queue,
                    &request.exchange,
                    &request.routing_key,
                    &pairs,
                )
            })
            .await;
            ready(Response::BindQueue(admin_answer(outcome)))
        }
        Request::UnbindQueue(request) => {
            let outcome = off_runtime(broker, move |broker| {
                let pairs = header_pairs(&request);
                broker
                    .queues
                    .unbind(
                        &request.queue,
                        &request.exchange,
                        &request.routing_key,
                        &pairs,
                    )
                    .map(|_| ())
            })
            .await;
            ready(Response::UnbindQueue(admin_answer(outcome)))
        }
        Request::PurgeQueue(request) => ready(Response::PurgeQueue(
            match broker.queues.purge(&request.name).await {
                Ok(purged) => PurgeQueueResponse {
                    purged,
                    ..PurgeQueueResponse::default()
                },
                Err(error) => PurgeQueueResponse {
                    error: queue_error_code(&error),
                    error_message: Some(error.to_string()),
                    purged: 0,
                },
            },
        )),
        Request::ListQueues(_) => ready(Response::ListQueues(ListQueuesResponse {
            queues: broker
                .queues
                .list()
                .await
                .into_iter()
                .map(|stats| QueueListing {
                    durable: stats.durability == Durability::Durable,
                    name: stats.name,
                    ready: stats.ready,
                    unacked: stats.unacked,
                    consumers: stats.consumers,
                })
                .collect(),
            ..ListQueuesResponse::default()
        })),
        Request::DeleteExchange(request) => {
            let outcome = off_runtime(broker, move |broker| {
                broker.queues.delete_exchange(&request.name)
            })
            .await;
            ready(Response::DeleteExchange(admin_answer(outcome)))
        }
        Request::ListExchanges(_) => ready(Response::ListExchanges(ListExchangesResponse {
            exchanges: broker
                .queues
                .list_exchanges()
                .into_iter()
                .map(|(name, kind, durability, bindings)| ExchangeListing {
                    name,
                    kind: kind.name().to_string(),
                    durable: durability == Durability::Durable,
                    bindings: u32::try_from(bindings).unwrap_or(u32::MAX),
                })
                .collect(),
            ..ListExchangesResponse::default()
        })),
        // Never decoded from clients (not in SUPPORTED_APIS); answered defensively.
        Request::Deliver(_) => ready(Response::error_only(
            wharf_protocol::ApiKey::Deliver,
            ErrorCode::InvalidRequest,
            "clients cannot send Deliver".to_string(),
        )),
        Request::ConsumerCancelled(_) => ready(Response::error_only(
            wharf_protocol::ApiKey::ConsumerCancelled,
            ErrorCode::InvalidRequest,
            "clients cannot send ConsumerCancelled".to_string(),
        )),
    }
}

async fn init_producer_id(
    broker: &Arc<Broker>,
    _request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let allocating = broker.clone();
    // Reserving a new block of ids writes and fsyncs a file: off the runtime's workers.
    match tokio::task::spawn_blocking(move || allocating.producers.allocate_id()).await {
        Ok(Ok(producer_id)) => InitProducerIdResponse {
            producer_id,
            producer_epoch: 0,
            ..InitProducerIdResponse::default()
        },
        Ok(Err(error)) => InitProducerIdResponse {
            error: storage_error_code(&error),
            error_message: Some(error.to_string()),
            producer_id: -1,
            producer_epoch: -1,
        },
        Err(error) => InitProducerIdResponse {
            error: ErrorCode::Unknown,
            error_message: Some(error.to_string()),
            producer_id: -1,
            producer_epoch: -1,
        },
    }
}

/// How many names (or partitions) a list-bearing request carries.
fn listed_names(request: &Request) -> Option<usize> {
    let partitions = |topics: &[TopicPartitions]| {
        topics
            .iter()
            .map(|topic| topic.partitions.len().max(1))
            .sum()
    };
    Some(match request {
        Request::Metadata(request) => request.topics.as_ref().map_or(0, Vec::len),
        Request::DescribeGroups(request) => request.group_ids.len(),
        Request::CreateTopics(request) => request.topics.len(),
        Request::DeleteTopics(request) => request.names.len(),
        Request::OffsetFetch(request) => request.topics.as_deref().map_or(0, partitions),
        Request::AddPartitionsToTxn(request) => partitions(&request.topics),
        _ => return None,
    })
}

/// Names in first-seen order without repeats.
fn dedupe(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names
        .into_iter()
        .filter(|name| seen.insert(name.clone()))
        .collect()
}

/// The wire code of a queue-layer error.
pub fn queue_error_code(error: &QueueError) -> ErrorCode {
    match error {
        QueueError::UnknownExchange(_) => ErrorCode::UnknownExchange,
        QueueError::UnknownQueue(_) | QueueError::Gone(_) => ErrorCode::UnknownQueue,
        QueueError::DeclareMismatch(_) => ErrorCode::PreconditionFailed,
        QueueError::Invalid(_) => ErrorCode::InvalidRequest,
        QueueError::QueueFull { .. } => ErrorCode::QueueFull,
        QueueError::UnknownDeliveryTag(_) => ErrorCode::UnknownDeliveryTag,
        QueueError::Storage(_) => ErrorCode::StorageFailed,
    }
}

fn admin_answer(outcome: Result<(), QueueError>) -> QueueAdminResponse {
    match outcome {
        Ok(()) => QueueAdminResponse::default(),
        Err(error) => QueueAdminResponse {
            error: queue_error_code(&error),
            error_message: Some(error.to_string()),
        },
    }
}

/// Runs a queue admin call that rewrites (and fsyncs) the definitions file or creates a
/// queue's files on the blocking pool, not on a runtime worker (STYLE.md §4).
async fn off_runtime<T: Send + 'static>(
    broker: &Arc<Broker>,
    call: impl FnOnce(&Broker) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || call(&broker))
        .await
        .unwrap_or_else(|error| Err(QueueError::Storage(error.to_string())))
}

/// A binding's header arguments as name/value pairs.
fn header_pairs(request: &BindQueueRequest) -> Vec<(&str, &str)> {
    request
        .headers
        .iter()
        .map(|entry| (entry.key.as_str(), entry.value.as_str()))
        .collect()
}

fn declare_exchange(broker: &Broker, request: DeclareExchangeRequest) -> Result<(), QueueError> {
    let kind = ExchangeKind::parse(&request.kind).ok_or_else(|| {
        QueueError::Invalid(format!(
            "exchange type {:?} is not direct, fanout, topic or headers",
            request.kind
        ))
    })?;
    let durability = if request.durable {
        Durability::Durable
    } else {
        Durability::Transient
    };
    broker
        .queues
        .declare_exchange(&request.name, kind, durability)
}

fn declare_queue(
    broker: &Broker,
    request: DeclareQueueRequest,
    session: SessionId,
) -> Result<(), QueueError> {
    let args = args_from_pairs(
        request
            .args
            .iter()
            .map(|entry| (entry.key.as_str(), entry.value.as_str())),
    )?;
    let durability = if request.durable {
        Durability::Durable
    } else {
        Durability::Transient
    };
    broker
        .queues
        .declare_queue_for(&request.name, args, durability, Some(session))
}

/// Headers only the broker sets: a publisher's copies are dropped (they would fake the
/// source exchange, dead-letter history or bypass the delay limit).
fn is_reserved_header(key: &str) -> bool {
    key == crate::queue::EXCHANGE_HEADER
        || key == crate::queue::delay::DUE_HEADER
        || key.starts_with("x-death-")
}

/// Publishes. The ordered phase hands the message to its queues, so a connection's
/// messages are stored in the order sent; the completion waits for the confirm (durable in
/// every routed queue), so pipelined publishes share fsyncs.
async fn publish(broker: &Arc<Broker>, request: PublishRequest) -> Completion {
    let message = Message {
        routing_key: request.routing_key,
        body: request.body,
        headers: request
            .headers
            .into_iter()
            .filter(|entry| !is_reserved_header(&entry.key))
            .map(|entry| Header {
                key: entry.key,
                value: entry.value,
            })
            .collect(),
    };
    let failed = |error: QueueError| {
        ready(Response::Publish(PublishResponse {
            error: queue_error_code(&error),
            error_message: Some(error.to_string()),
            queues: Vec::new(),
        }))
    };
    let ticket = match broker
        .queues
        .publish_enqueue(&request.exchange, message)
        .await
    {
        Ok(ticket) => ticket,
        Err(error) => return failed(error),
    };
    let broker = broker.clone();
    let mandatory = request.mandatory;
    Box::pin(async move {
        let response = match ticket.confirmed().await {
            Ok(Published::Routed(queues)) => PublishResponse {
                queues,
                ..PublishResponse::default()
            },
            Ok(Published::Unroutable) if mandatory => PublishResponse {
                error: ErrorCode::Unroutable,
                error_message: Some(
                    "no queue matched the mandatory message; it was not stored".to_string(),
                ),
                queues: Vec::new(),
            },
            Ok(Published::Unroutable) => {
                broker
                    .queues
                    .dropped_unroutable
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                PublishResponse::default()
            }
            Err(error) => PublishResponse {
                error: queue_error_code(&error),
                error_message: Some(error.to_string()),
                queues: Vec::new(),
            },
        };
        Some(Response::Publish(response))
    })
}

async fn subscribe(
    broker: &Arc<Broker>,
    request: SubscribeRequest,
    session: &Session,
    header: FrameHeader,
) -> SubscribeResponse {
    let (consumer_id, mut deliveries) = match broker
        .queues
        .subscribe_for(&request.queue, request.prefetch, Some(session.id()))
        .await
    {
        Ok(started) => started,
        Err(error) => {
            return SubscribeResponse {
                error: queue_error_code(&error),
                error_message: Some(error.to_string()),
                consumer_id: 0,
            }
        }
    };
    let consumer_id = consumer_id.0;
    session.add_consumer(&request.queue, consumer_id);
    let push = session.push();
    let push_header = FrameHeader {
        api_key: wharf_protocol::ApiKey::Deliver.code(),
        api_version: 0,
        correlation_id: header.correlation_id,
    };
    let cancelled_header = FrameHeader {
        api_key: wharf_protocol::ApiKey::ConsumerCancelled.code(),
        ..push_header
    };
    let queue = request.queue;
    tokio::spawn(async move {
        while let Some(event) = deliveries.recv().await {
            let mut out = BytesMut::new();
            let last = match event {
                ConsumerEvent::Delivery(delivered) => {
                    let pushed = deliver_push(consumer_id, delivered);
                    wharf_protocol::frame::encode_frame(push_header, &mut out, |body| {
                        pushed.encode(body)
                    });
                    false
                }
                ConsumerEvent::Cancelled(reason) => {
                    let pushed = ConsumerCancelledPush {
                        consumer_id,
                        queue: queue.clone(),
                        error: match reason {
                            CancelReason::AckTimeout => ErrorCode::AckTimeout,
                            CancelReason::QueueDeleted => ErrorCode::UnknownQueue,
                            // Never sent as an event (the client asked, or is gone); no
                            // error code fits better than none.
                            CancelReason::ClientCancelled | CancelReason::ConnectionClosed => {
                                ErrorCode::None
                            }
                        },
                        error_message: Some(format!(
                            "consumer {consumer_id} of queue {queue:?} was cancelled: {}",
                            reason.describe()
                        )),
                    };
                    wharf_protocol::frame::encode_frame(cancelled_header, &mut out, |body| {
                        pushed.encode(body)
                    });
                    true
                }
            };
            if push.send(out).await.is_err() || last {
                // Cancelled, or the connection is gone (its consumers are cancelled as it
                // closes).
                break;
            }
        }
    });
    SubscribeResponse {
        consumer_id,
        ..SubscribeResponse::default()
    }
}

/// The `Deliver` push for one delivery: the record's bytes are moved, not copied.
fn deliver_push(consumer_id: u64, delivered: Delivered) -> DeliverPush {
    DeliverPush {
        consumer_id,
        delivery_tag: delivered.tag.0,
        redelivered: delivered.redelivered,
        routing_key: delivered
            .record
            .key
            .as_ref()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .unwrap_or_default(),
        timestamp_ms: delivered.record.timestamp_ms,
        headers: delivered
            .record
            .headers
            .into_iter()
            .map(|header| HeaderEntry {
                key: header.key,
                value: header.value,
            })
            .collect(),
        body: delivered.record.value.unwrap_or_default(),
    }
}

/// Acks or nacks. Only the connection that started a consumer may settle its deliveries.
/// The ordered phase hands the ack to the queue; the completion waits until the settlement
/// is durable, so pipelined acks share fsyncs.
async fn ack(broker: &Broker, request: AckRequest, session: &Session) -> Completion {
    if !session.owns_consumer(&request.queue, request.consumer_id) {
        return ready(Response::Ack(admin_answer(Err(QueueError::Invalid(
            format!(
                "consumer {} of queue {:?} was not started on this connection",
                request.consumer_id, request.queue
            ),
        )))));
    }
    let scope = if request.multiple {
        AckScope::Multiple
    } else {
        AckScope::Single
    };
    let ticket = if request.negative {
        let requeue = if request.requeue {
            Requeue::Yes
        } else {
            Requeue::No
        };
        broker
            .queues
            .nack_enqueue(
                &request.queue,
                ConsumerId(request.consumer_id),
                DeliveryTag(request.delivery_tag),
                scope,
                requeue,
            )
            .await
    } else {
        broker
            .queues
            .ack_enqueue(
                &request.queue,
                ConsumerId(request.consumer_id),
                DeliveryTag(request.delivery_tag),
                scope,
            )
            .await
    };
    let queue = request.queue;
    Box::pin(async move {
        let outcome = match ticket {
            Ok(ticket) => ticket.await.unwrap_or(Err(QueueError::Gone(queue))),
            Err(error) => Err(error),
        };
        Some(Response::Ack(admin_answer(outcome)))
    })
}

/// Maps a storage error to its wire code and message (the one place this happens).
pub fn storage_error_code(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::InvalidBatch(_) => ErrorCode::CorruptRecordBatch,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::Corrupt { .. } => ErrorCode::CorruptStoredData,
        StorageError::Failed { .. } => ErrorCode::StorageFailed,
        StorageError::Closed { .. } => ErrorCode::ShuttingDown,
        StorageError::TimedOut { .. } => ErrorCode::RequestTimedOut,
        StorageError::InvalidName { .. } => ErrorCode::InvalidTopicName,
        StorageError::AlreadyExists { .. } => ErrorCode::TopicAlreadyExists,
        error if error.is_disk_full() => ErrorCode::DiskFull,
        StorageError::Io { .. } | StorageError::Config { .. } | StorageError::Locked { .. } => {
            ErrorCode::Unknown
        }
    }
}

fn topic_error_code(error: &TopicError) -> ErrorCode {
    match error {
        TopicError::InvalidName { .. } => ErrorCode::InvalidTopicName,
        TopicError::InvalidPartitions { .. } => ErrorCode::InvalidPartitions,
        TopicError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        TopicError::AlreadyExists(_) => ErrorCode::TopicAlreadyExists,
        TopicError::Unknown(_) => ErrorCode::UnknownTopicOrPartition,
        TopicError::Storage(error) => storage_error_code(error),
    }
}

fn api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse {
        error: ErrorCode::None,
        error_message: None,
        apis: SUPPORTED_APIS
            .iter()
            .map(|(key, min_version, max_version)| ApiVersionRange {
                api_key: key.code(),
                min_version: *min_version,
                max_version: *max_version,
            })
            .collect(),
        broker_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn topic_metadata(broker: &Broker, info: &TopicInfo) -> TopicMetadata {
    TopicMetadata {
        error: ErrorCode::None,
        name: info.name.clone(),
        topic_id: info.topic_id,
        partitions: (0..info.partitions)
            .map(
                |partition| match broker.topics.partition(&info.name, partition) {
                    Some(log) => PartitionMetadata {
                        partition,
                        error: log
                            .failure()
                            .map_or(ErrorCode::None, |_| ErrorCode::StorageFailed),
                        leader: broker.advertised.node_id,
                        log_start_offset: log.log_start_offset(),
                        high_watermark: log.high_watermark(),
                    },
                    None => PartitionMetadata {
                        partition,
                        error: ErrorCode::UnknownTopicOrPartition,
                        leader: -1,
                        log_start_offset: -1,
                        high_watermark: -1,
                    },
                },
            )
            .collect(),
    }
}

fn metadata(broker: &Broker, request: MetadataRequest) -> MetadataResponse {
    let topics = match request.topics {
        None => broker
            .topics
            .list()
            .iter()
            .filter(|info| !info.name.starts_with(INTERNAL_TOPIC_PREFIX))
            .map(|info| topic_metadata(broker, info))
            .collect(),
        Some(names) => dedupe(names)
            .into_iter()
            .map(|name| match broker.topics.get(&name) {
                Some(info) => topic_metadata(broker, &info),
                None => TopicMetadata {
                    error: ErrorCode::UnknownTopicOrPartition,
                    name,
                    ..TopicMetadata::default()
                },
            })
            .collect(),
    };
    MetadataResponse {
        error: ErrorCode::None,
        error_message: None,
        brokers: vec![broker.advertised.clone()],
        topics,
    }
}

async fn create_topics(broker: &Arc<Broker>, request: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let broker = broker.clone();
        let name = topic.name.clone();
        let configs: Vec<(String, String)> = topic
            .configs
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect();
        // Creating partitions creates and fsyncs files: off the runtime's workers.
        let outcome = tokio::task::spawn_blocking(move || {
            broker.topics.create(&topic.name, topic.partitions, configs)
        })
        .await;
        results.push(topic_result(name, outcome));
    }
    CreateTopicsResponse {
        topics: results,
        ..CreateTopicsResponse::default()
    }
}

/// One topic's row in a create or delete answer, from the outcome of its blocking task.
fn topic_result(
    name: String,
    outcome: Result<Result<TopicInfo, TopicError>, tokio::task::JoinError>,
) -> TopicResult {
    match outcome {
        Ok(Ok(info)) => TopicResult {
            name,
            topic_id: info.topic_id,
            ..TopicResult::default()
        },
        Ok(Err(error)) => TopicResult {
            name,
            error: topic_error_code(&error),
            error_message: Some(error.to_string()),
            ..TopicResult::default()
        },
        Err(error) => TopicResult {
            name,
            error: ErrorCode::Unknown,
            error_message: Some(error.to_string()),
            ..TopicResult::default()
        },
    }
}

async fn delete_topics(broker: &Arc<Broker>, request: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(request.names.len());
    for name in request.names {
        let deleting_broker = broker.clone();
        let deleting = name.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let deleted = deleting_broker.topics.delete(&deleting)?;
            for partition in 0..deleted.partitions {
                deleting_broker.producers.remove(&deleting, partition);
            }
            Ok::<_, TopicError>(deleted)
        })
        .await;
        if let Ok(Ok(_)) = &outcome {
            // A re-created topic of the same name is a new topic: it must not inherit
            // committed offsets.
            if let Err(error) = broker.offsets.forget_topic(&name).await {
                tracing::warn!(topic = name, %error, "cannot forget the deleted topic's committed offsets");
            }
        }
        results.push(topic_result(name, outcome));
    }
    DeleteTopicsResponse {
        topics: results,
        ..DeleteTopicsResponse::default()
    }
}

/// Finds a topic, creating it when auto-creation is on.
async fn topic_for_produce(
    broker: &Arc<Broker>,
    name: &str,
) -> Result<TopicInfo, (ErrorCode, String)> {
    if name.starts_with(INTERNAL_TOPIC_PREFIX) {
        // Internal topics hold broker state in the broker's own record format.
        return Err((
            ErrorCode::InvalidTopicName,
            format!("cannot produce to internal topic {name:?}"),
        ));
    }
    if let Some(info) = broker.topics.get(name) {
        return Ok(info);
    }
    if !broker.config.auto_create_topics {
        return Err((
            ErrorCode::TopicAutoCreateDisabled,
            format!("unknown topic {name:?} and auto-create is disabled"),
        ));
    }
    let creating = broker.clone();
    let topic = name.to_string();
    let partitions = broker.config.default_partitions;
    match tokio::task::spawn_blocking(move || {
        creating.topics.create(&topic, partitions, Vec::new())
    })
    .await
    {
        Ok(Ok(info)) => Ok(info),
        // Another request created it first.
        Ok(Err(TopicError::AlreadyExists(_))) => broker.topics.get(name).ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!("unknown topic {name:?}"),
            )
        }),
        Ok(Err(error)) => Err((topic_error_code(&error), error.to_string())),
        Err(error) => Err((ErrorCode::Unknown, error.to_string())),
    }
}

fn partition_failure(partition: u32, code: ErrorCode, message: String) -> ProducePartitionResponse {
    ProducePartitionResponse {
        partition,
        error: code,
        error_message: Some(message),
        base_offset: -1,
        log_start_offset: -1,
    }
}

async fn produce(broker: &Arc<Broker>, request: ProduceRequest) -> Completion {
    let timeout_ms = request.timeout_ms.min(PRODUCE_TIMEOUT_MS_MAX);
    let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
    let mut topics = Vec::with_capacity(request.topics.len());
    // Append everything now (the ordered phase); wait for durability in the completion, so
    // all partitions and all pipelined requests share the flusher's fsyncs.
    let mut waits: Vec<(usize, usize, Arc<Partition>, i64)> = Vec::new();
    for topic in request.topics {
        let info = topic_for_produce(broker, &topic.name).await;
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for produced in topic.partitions {
            let outcome = match &info {
                Err((code, message)) => Err((*code, message.clone())),
                Ok(info) => append(broker, info, produced.partition, produced.records),
            };
            partitions.push(match outcome {
                Ok((log, appended)) => {
                    waits.push((
                        topics.len(),
                        partitions.len(),
                        log.clone(),
                        appended.next_offset,
                    ));
                    ProducePartitionResponse {
                        partition: produced.partition,
                        error: ErrorCode::None,
                        error_message: None,
                        base_offset: appended.base_offset,
                        log_start_offset: log.log_start_offset(),
                    }
                }
                Err((code, message)) => partition_failure(produced.partition, code, message),
            });
        }
        topics.push(ProduceTopicResponse {
            name: topic.name,
            partitions,
        });
    }
    let acks = request.acks;
    Box::pin(async move {
        match acks {
            Acks::None => return None,
            Acks::Leader => {}
            Acks::All => {
                for (topic_index, partition_index, log, next_offset) in waits {
                    let outcome =
                        tokio::time::timeout_at(deadline, log.wait_durable(next_offset)).await;
                    let failure = match outcome {
                        Ok(Ok(())) => continue,
                        Ok(Err(error)) => (storage_error_code(&error), error.to_string()),
                        Err(_) => (
                            ErrorCode::RequestTimedOut,
                            format!("not durable within {timeout_ms} ms; the records may still be stored"),
                        ),
                    };
                    let slot = &mut topics[topic_index].partitions[partition_index];
                    *slot = partition_failure(slot.partition, failure.0, failure.1);
                }
            }
        }
        Some(Response::Produce(ProduceResponse {
            topics,
            ..ProduceResponse::default()
        }))
    })
}

fn append(
    broker: &Broker,
    info: &TopicInfo,
    partition: u32,
    records: Bytes,
) -> Result<(Arc<Partition>, Appended), (ErrorCode, String)> {
    let log = broker
        .topics
        .partition(&info.name, partition)
        .ok_or_else(|| {
            (
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "topic {:?} has no partition {partition} (it has {})",
                    info.name, info.partitions
                ),
            )
        })?;
    // The broker patches offsets in place; the request's bytes are shared, so copy once.
    let mut batches = BytesMut::from(&records[..]);
    let headers = batch_headers(&batches);
    let Some(header) = headers.first().copied() else {
        // Storage validates and reports what is wrong.
        return plain_append(log, &mut batches);
    };
    if headers.iter().any(|header| header.attributes.is_control()) {
        return Err((
            ErrorCode::InvalidRequest,
            "producers cannot write control batches".to_string(),
        ));
    }
    if headers.len() > 1
        && headers
            .iter()
            .any(|header| header.producer_id != NO_PRODUCER_ID)
    {
        return Err((
            ErrorCode::InvalidRequest,
            "an idempotent produce carries exactly one batch per partition".to_string(),
        ));
    }
    if header.max_timestamp > broker.clock.now_ms().saturating_add(TIMESTAMP_AHEAD_MS_MAX) {
        return Err((
            ErrorCode::InvalidRequest,
            format!(
                "batch max_timestamp {} is more than {TIMESTAMP_AHEAD_MS_MAX} ms in the future",
                header.max_timestamp
            ),
        ));
    }
    if header.producer_id == NO_PRODUCER_ID {
        if header.attributes.is_transactional() {
            return Err((
                ErrorCode::InvalidRequest,
                "a transactional batch needs a producer id".to_string(),
            ));
        }
        return plain_append(log, &mut batches);
    }
    idempotent_append(broker, info, partition, log, &mut batches, header)
}

/// The headers of the batches in a produce's records, up to the first that does not parse
/// (storage reports that one).
fn batch_headers(records: &[u8]) -> Vec<BatchHeader> {
    let mut headers = Vec::new();
    let mut position = 0;
    while let Ok(Some(header)) = batch::parse_header(&records[position..]) {
        headers.push(header);
        position += header.total_bytes();
        if position >= records.len() {
            break;
        }
    }
    headers
}

fn plain_append(
    log: Arc<Partition>,
    batches: &mut BytesMut,
) -> Result<(Arc<Partition>, Appended), (ErrorCode, String)> {
    match log.append(batches) {
        Ok(appended) => Ok((log, appended)),
        Err(error) => Err((storage_error_code(&error), error.to_string())),
    }
}

/// Appends one idempotent batch unless it is a retry of a batch already stored, checking
/// and recording its sequence under the partition's producer lock.
fn idempotent_append(
    broker: &Broker,
    info: &TopicInfo,
    partition: u32,
    log: Arc<Partition>,
    batches: &mut BytesMut,
    header: BatchHeader,
) -> Result<(Arc<Partition>, Appended), (ErrorCode, String)> {
    if header.total_bytes() != batches.len() {
        return Err((
            ErrorCode::InvalidRequest,
            "an idempotent produce carries exactly one batch per partition".to_string(),
        ));
    }
    // Check the CRC before the batch can touch producer state.
    if let Err(error) = batch::validate(batches) {
        return Err((ErrorCode::CorruptRecordBatch, error.to_string()));
    }
    let first = header.base_sequence;
    let last = last_sequence(&header);
    if header.producer_id >= broker.producers.next_id() || header.producer_id < 0 {
        return Err((
            ErrorCode::InvalidProducerIdMapping,
            format!(
                "producer id {} was never handed out (InitProducerId first)",
                header.producer_id
            ),
        ));
    }
    let shared = broker.producers.partition(&info.name, partition);
    let mut state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
    // Checked under the producer lock, which markers also take: a late transactional batch
    // cannot slip in after its transaction's marker.
    if header.attributes.is_transactional() {
        match broker.txn.membership(header.producer_id, header.producer_epoch, &info.name, partition) {
            Membership::Member => {}
            Membership::Fenced => {
                return Err((
                    ErrorCode::ProducerFenced,
                    format!("producer {} epoch {} was fenced", header.producer_id, header.producer_epoch),
                ))
            }
            Membership::NotAdded => {
                return Err((
                    ErrorCode::InvalidTxnState,
                    format!(
                        "{}-{partition} was not added to the transaction of producer {} (AddPartitionsToTxn first)",
                        info.name, header.producer_id
                    ),
                ))
            }
        }
    }
    match state.check(header.producer_id, header.producer_epoch, first, last) {
        Verdict::Append => {
            let appended = log
                .append(batches)
                .map_err(|error| (storage_error_code(&error), error.to_string()))?;
            let metadata = BatchMetadata {
                first_sequence: first,
                last_sequence: last,
                base_offset: appended.base_offset,
                last_offset: appended.last_offset,
            };
            state.record(
                header.producer_id,
                header.producer_epoch,
                metadata,
                broker.clock.now_ms(),
            );
            if header.attributes.is_transactional() {
                state.record_transactional(header.producer_id, appended.base_offset);
            }
            Ok((log, appended))
        }
        Verdict::Duplicate(original) => Ok((
            log,
            Appended {
                base_offset: original.base_offset,
                last_offset: original.last_offset,
                next_offset: original.last_offset + 1,
            },
        )),
        Verdict::Refuse(code) => Err((
            code,
            format!(
                "producer {} epoch {} sequence {first}..={last} on {}-{partition}: {}",
                header.producer_id,
                header.producer_epoch,
                info.name,
                code.describe()
            ),
        )),
    }
}

struct FetchSlot {
    log: Option<Arc<Partition>>,
    /// New data means a high watermark above this.
    wait_offset: i64,
}

async fn fetch(broker: &Arc<Broker>, request: FetchRequest) -> FetchResponse {
    let max_wait = Duration::from_millis(u64::from(request.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
    let deadline = Instant::now() + max_wait;
    let max_bytes = request.max_bytes.clamp(1, FETCH_BYTES_MAX) as usize;
    loop {
        let (response, slots, total_bytes, any_error) = fetch_once(broker, &request, max_bytes);
        if total_bytes >= request.min_bytes as usize || any_error || Instant::now() >= deadline {
            return response;
        }
        // Long poll: sleep until any fetched partition gets new data or the deadline passes.
        let waits: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = slots
            .iter()
            .filter_map(|slot| slot.log.as_ref().map(|log| (log, slot.wait_offset)))
            .map(|(log, offset)| {
                let wait = log.wait_for_data(offset);
                Box::pin(async move {
                    let _ = wait.await;
                }) as Pin<Box<dyn Future<Output = ()> + Send>>
            })
            .collect();
        if waits.is_empty()
            || tokio::time::timeout_at(deadline, AnyOf(waits))
                .await
                .is_err()
        {
            return fetch_once(broker, &request, max_bytes).0;
        }
    }
}

fn fetch_once(
    broker: &Broker,
    request: &FetchRequest,
    max_bytes: usize,
) -> (FetchResponse, Vec<FetchSlot>, usize, bool) {
    let mut remaining = max_bytes;
    let mut total = 0;
    let mut any_error = false;
    let mut slots = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for wanted in &topic.partitions {
            let log = broker.topics.partition(&topic.name, wanted.partition);
            let mut answer = FetchPartitionResponse {
                partition: wanted.partition,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                ..FetchPartitionResponse::default()
            };
            let mut wait_offset = wanted.fetch_offset;
            match &log {
                None => {
                    answer.error = ErrorCode::UnknownTopicOrPartition;
                    answer.error_message = Some(format!(
                        "unknown topic or partition {}-{}",
                        topic.name, wanted.partition
                    ));
                    any_error = true;
                }
                Some(log) => {
                    answer.high_watermark = log.high_watermark();
                    answer.last_stable_offset = answer.high_watermark;
                    answer.log_start_offset = log.log_start_offset();
                    // A long poll waits for data beyond what this read could see.
                    wait_offset = wait_offset.max(answer.high_watermark);
                    let mut end_offset = answer.high_watermark;
                    if request.isolation == Isolation::ReadCommitted {
                        // Only decided transactions are visible, and the client skips the
                        // aborted ones in what it gets.
                        let shared = broker.producers.partition(&topic.name, wanted.partition);
                        let state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
                        end_offset = state.last_stable_offset(answer.high_watermark);
                        answer.aborted_transactions = state
                            .aborted_between(wanted.fetch_offset, end_offset)
                            .into_iter()
                            .map(|txn| AbortedTransaction {
                                producer_id: txn.producer_id,
                                first_offset: txn.first_offset,
                            })
                            .collect();
                    }
                    answer.last_stable_offset = end_offset;
                    if remaining > 0 {
                        let limit = (wanted.partition_max_bytes as usize).min(remaining).max(1);
                        match log.read_bounded(wanted.fetch_offset, limit, end_offset) {
                            // Only the first non-empty partition may exceed the limit (by one
                            // batch, so consumers make progress); later ones must fit.
                            Ok(read) if total > 0 && read.bytes.len() > remaining => remaining = 0,
                            Ok(read) => {
                                answer.high_watermark = read.high_watermark;
                                answer.log_start_offset = read.log_start_offset;
                                remaining = remaining.saturating_sub(read.bytes.len());
                                total += read.bytes.len();
                                answer.records = read.bytes;
                            }
                            Err(error) => {
                                answer.error = storage_error_code(&error);
                                answer.error_message = Some(error.to_string());
                                any_error = true;
                            }
                        }
                    }
                }
            }
            slots.push(FetchSlot { log, wait_offset });
            partitions.push(answer);
        }
        topics.push(FetchTopicResponse {
            name: topic.name.clone(),
            partitions,
        });
    }
    let response = FetchResponse {
        topics,
        ..FetchResponse::default()
    };
    (response, slots, total, any_error)
}

/// Resolves when any of its futures resolves.
struct AnyOf(Vec<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Future for AnyOf {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        for future in self.0.iter_mut() {
            if future.as_mut().poll(context).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

fn list_offsets(broker: &Broker, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| ListOffsetsTopicResponse {
            partitions: topic
                .partitions
                .iter()
                .map(|wanted| {
                    let answer = |error, offset| ListOffsetsPartitionResponse {
                        partition: wanted.partition,
                        error,
                        offset,
                    };
                    let Some(log) = broker.topics.partition(&topic.name, wanted.partition) else {
                        return answer(ErrorCode::UnknownTopicOrPartition, -1);
                    };
                    match wanted.timestamp {
                        LIST_OFFSETS_LATEST => answer(ErrorCode::None, log.high_watermark()),
                        LIST_OFFSETS_EARLIEST => answer(ErrorCode::None, log.log_start_offset()),
                        timestamp => match log.offset_for_timestamp(timestamp) {
                            Ok(found) => answer(ErrorCode::None, found.unwrap_or(-1)),
                            Err(error) => answer(storage_error_code(&error), -1),
                        },
                    }
                })
                .collect(),
            name: topic.name,
        })
        .collect();
    ListOffsetsResponse {
        topics,
        ..ListOffsetsResponse::default()
    }
}

async fn offset_commit(broker: &Arc<Broker>, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let refused = |code: ErrorCode| OffsetCommitResponse {
        error: code,
        error_message: Some(format!(
            "commit refused for group {:?}: {}",
            request.group_id,
            code.describe()
        )),
        topics: request
            .topics
            .iter()
            .map(|topic| OffsetCommitTopicResponse {
                name: topic.name.clone(),
                partitions: topic
                    .partitions
                    .iter()
                    .map(|partition| PartitionError {
                        partition: partition.partition,
                        error: code,
                    })
                    .collect(),
            })
            .collect(),
    };
    if let CommitCheck::Refused(code) =
        broker
            .groups
            .check_commit(&request.group_id, &request.member_id, request.generation)
    {
        return refused(code);
    }
    let mut entries = Vec::new();
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let count = broker.partition_count(&topic.name);
        let partitions = topic
            .partitions
            .iter()
            .map(|partition| {
                let exists = !topic.name.starts_with(INTERNAL_TOPIC_PREFIX)
                    && count.is_some_and(|count| partition.partition < count);
                let error = if !exists {
                    ErrorCode::UnknownTopicOrPartition
                } else if partition.offset < 0
                    || partition
                        .metadata
                        .as_ref()
                        .is_some_and(|text| text.len() > OFFSET_METADATA_BYTES_MAX)
                {
                    ErrorCode::InvalidRequest
                } else {
                    entries.push((
                        topic.name.clone(),
                        partition.partition,
                        Committed {
                            offset: partition.offset,
                            metadata: partition.metadata.clone(),
                        },
                    ));
                    ErrorCode::None
                };
                PartitionError {
                    partition: partition.partition,
                    error,
                }
            })
            .collect();
        topics.push(OffsetCommitTopicResponse {
            name: topic.name.clone(),
            partitions,
        });
    }
    if let Err(error) = broker.offsets.commit(&request.group_id, entries).await {
        let code = storage_error_code(&error);
        let mut response = refused(code);
        response.error_message = Some(format!("commit failed: {error}"));
        return response;
    }
    OffsetCommitResponse {
        topics,
        ..OffsetCommitResponse::default()
    }
}

fn offset_fetch(broker: &Broker, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let answer = |topic: &str, partition: u32| {
        let committed = broker.offsets.get(&request.group_id, topic, partition);
        OffsetFetchPartition {
            partition,
            offset: committed.as_ref().map_or(-1, |committed| committed.offset),
            metadata: committed.and_then(|committed| committed.metadata),
            error: ErrorCode::None,
        }
    };
    let topics = match &request.topics {
        Some(wanted) => wanted
            .iter()
            .map(|topic| OffsetFetchTopic {
                name: topic.topic.clone(),
                partitions: topic
                    .partitions
                    .iter()
                    .map(|partition| answer(&topic.topic, *partition))
                    .collect(),
            })
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<OffsetFetchPartition>> =
                Default::default();
            for (topic, partition, committed) in broker.offsets.group(&request.group_id) {
                by_topic
                    .entry(topic)
                    .or_default()
                    .push(OffsetFetchPartition {
                        partition,
                        offset: committed.offset,
                        metadata: committed.metadata,
                        error: ErrorCode::None,
                    });
            }
            by_topic
                .into_iter()
                .map(|(name, partitions)| OffsetFetchTopic { name, partitions })
                .collect()
        }
    };
    OffsetFetchResponse {
        topics,
        ..OffsetFetchResponse::default()
    }
}

fn list_groups(broker: &Broker) -> ListGroupsResponse {
    let mut groups = broker.groups.list();
    for group_id in broker.offsets.groups() {
        if !groups.iter().any(|listing| listing.group_id == group_id) {
            groups.push(GroupListing {
                group_id,
                state: "empty".to_string(),
                member_count: 0,
            });
        }
    }
    groups.sort_by(|left, right| left.group_id.cmp(&right.group_id));
    ListGroupsResponse {
        groups,
        ..ListGroupsResponse::default()
    }
}
