//! Native request → one core call → native response. One small handler per api; every rule
//! lives in the core, every code mapping in [`super::error_code`].
//!
//! [`handle`] is the ordered phase of a request: the connection awaits it before reading the
//! next one, so requests of one connection take effect in the order sent (two pipelined
//! produces to a partition append in order, as Kafka guarantees). What it returns runs
//! concurrently and resolves to the response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use wharf_protocol::api::SUPPORTED_APIS;
use wharf_protocol::batch::Header;
use wharf_protocol::frame::FrameHeader;
use wharf_protocol::messages::*;
use wharf_protocol::wire::Wire;
use wharf_protocol::{ApiKey, ErrorCode, Request, Response};

use crate::config::ListenerKind;
use crate::core::routing::Routing;
use crate::core::{
    self, AckScope, AdminMode, Broker, CancelReason, Committed, ConfigSource as CoreConfigSource,
    ConsumerId, ConsumerPush, Delivered, Deliveries, DeliveryTag, Durability, Execution, Existing,
    FetchQuery, GetMode, GroupAdminError, GroupSummary, Heartbeat, Mandatory, MemberState,
    NewTopic, OffsetEntry, OffsetSpec, PartitionQuery, PartitionStatus, ProduceQuery,
    PublishOutcome, PublishQuery, QueueError, Requeue, ResetTarget, Session, Settle, SettleQuery,
    StreamError, SubscribeQuery, TopicInfo, TopicQuery, TxnEnd, TxnError, TxnOffsets, TxnProducer,
    REQUEST_NAMES_MAX,
};
use crate::frontend::native::{acls, cluster, error_code, sasl};
use crate::frontend::native::{Native, NativeConnection};

/// What remains of a request after its ordered phase; `None`: no response (acks = none).
pub type Answer = Pin<Box<dyn Future<Output = Option<Response>> + Send>>;

fn ready(response: Response) -> Answer {
    Box::pin(std::future::ready(Some(response)))
}

/// Runs the ordered phase of one request and returns the rest of it.
pub async fn handle(
    native: &Native,
    connection: &NativeConnection,
    request: Request,
    header: FrameHeader,
) -> Answer {
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
    let broker: &Broker = &native.broker;
    let caller: &Session = &connection.session;
    if !sasl::BEFORE_LOGIN.contains(&request.api_key()) && !caller.may_act(native.auth.mode) {
        return ready(Response::error_only(
            request.api_key(),
            ErrorCode::AuthenticationRequired,
            "this listener requires authentication: log in with SaslHandshake and SaslAuthenticate first (wharf --user NAME)".to_string(),
        ));
    }
    match request {
        Request::ApiVersions(_) => ready(Response::ApiVersions(api_versions())),
        Request::SaslHandshake(request) => ready(Response::SaslHandshake(sasl::handshake(
            native, connection, &request,
        ))),
        Request::SaslAuthenticate(request) => ready(Response::SaslAuthenticate(
            sasl::authenticate(native, connection, request).await,
        )),
        Request::CreateUser(request) => ready(Response::CreateUser(
            sasl::set_credentials(&native.broker, caller, request, Existing::MustNotExist).await,
        )),
        Request::AlterUserCredentials(request) => ready(Response::AlterUserCredentials(
            sasl::set_credentials(&native.broker, caller, request, Existing::MustExist).await,
        )),
        Request::DeleteUser(request) => ready(Response::DeleteUser(
            sasl::delete_user(&native.broker, caller, request).await,
        )),
        Request::ListUsers(_) => ready(Response::ListUsers(sasl::list_users(broker, caller))),
        Request::DescribeCluster(_) => {
            ready(Response::DescribeCluster(cluster::describe(broker, caller)))
        }
        Request::AddNode(request) => ready(Response::AddNode(
            cluster::add_node(broker, caller, request).await,
        )),
        Request::RemoveNode(request) => ready(Response::RemoveNode(
            cluster::remove_node(broker, caller, request).await,
        )),
        Request::Rebalance(request) => ready(Response::Rebalance(
            cluster::rebalance(broker, caller, request).await,
        )),
        Request::CancelDrain(request) => ready(Response::CancelDrain(
            cluster::cancel_drain(broker, caller, request).await,
        )),
        Request::DescribeReplicas(request) => {
            let this_node = broker
                .routing()
                .map_or(native.advertised.node_id as u64, |routing| {
                    routing.this_node()
                });
            ready(Response::DescribeReplicas(cluster::describe_replicas(
                broker, caller, request, this_node,
            )))
        }
        Request::CreateAcls(request) => ready(Response::CreateAcls(
            acls::create_acls(broker, caller, request).await,
        )),
        Request::DescribeAcls(request) => ready(Response::DescribeAcls(acls::describe_acls(
            broker, caller, request,
        ))),
        Request::DeleteAcls(request) => ready(Response::DeleteAcls(
            acls::delete_acls(broker, caller, request).await,
        )),
        Request::FindCoordinator(_) => ready(Response::FindCoordinator(find_coordinator(
            &native.advertised,
            broker,
        ))),
        Request::Metadata(request) => ready(Response::Metadata(metadata(
            &native.advertised,
            broker,
            caller,
            request,
        ))),
        Request::CreateTopics(request) => ready(Response::CreateTopics(
            create_topics(broker, caller, request).await,
        )),
        Request::DeleteTopics(request) => ready(Response::DeleteTopics(
            delete_topics(broker, caller, request).await,
        )),
        Request::Produce(request) => produce(broker, caller, request).await,
        Request::Fetch(request) => {
            fetch(native.broker.clone(), connection.session.clone(), request)
        }
        Request::ListOffsets(request) => {
            ready(Response::ListOffsets(list_offsets(broker, caller, request)))
        }
        Request::GroupHeartbeat(request) => {
            ready(Response::GroupHeartbeat(heartbeat(broker, caller, request)))
        }
        Request::LeaveGroup(request) => {
            ready(Response::LeaveGroup(leave_group(broker, caller, request)))
        }
        Request::OffsetCommit(request) => ready(Response::OffsetCommit(
            offset_commit(broker, caller, request).await,
        )),
        Request::OffsetFetch(request) => {
            ready(Response::OffsetFetch(offset_fetch(broker, caller, request)))
        }
        Request::DescribeGroups(request) => ready(Response::DescribeGroups(describe_groups(
            broker, caller, request,
        ))),
        Request::ListGroups(_) => ready(Response::ListGroups(list_groups(broker, caller))),
        Request::InitProducerId(request) => ready(Response::InitProducerId(
            init_producer_id(broker, caller, request).await,
        )),
        Request::AddPartitionsToTxn(request) => ready(Response::AddPartitionsToTxn(
            add_partitions_to_txn(broker, caller, request).await,
        )),
        Request::AddOffsetsToTxn(request) => ready(Response::AddOffsetsToTxn(
            add_offsets_to_txn(broker, caller, request).await,
        )),
        Request::TxnOffsetCommit(request) => ready(Response::TxnOffsetCommit(
            txn_offset_commit(broker, caller, request).await,
        )),
        Request::EndTxn(request) => ready(Response::EndTxn(end_txn(broker, caller, request).await)),
        Request::Publish(request) => {
            let held = tell_blocked(broker, connection).await;
            let answer = publish(broker, caller, request).await;
            tell_unblocked(held, connection).await;
            answer
        }
        Request::PublishBatch(request) => {
            let held = tell_blocked(broker, connection).await;
            let answer = publish_batch(broker, caller, request).await;
            tell_unblocked(held, connection).await;
            answer
        }
        Request::Subscribe(request) => ready(Response::Subscribe(
            subscribe(&native.broker, connection, request, header).await,
        )),
        Request::Ack(request) => ack(broker, caller, request).await,
        Request::Cancel(request) => ready(Response::Cancel(admin_answer(
            broker
                .cancel(caller, &request.queue, ConsumerId(request.consumer_id))
                .await,
        ))),
        Request::DeclareExchange(request) => ready(Response::DeclareExchange(admin_answer(
            broker
                .declare_exchange(
                    caller,
                    request.name,
                    &request.kind,
                    durability(request.durable),
                )
                .await,
        ))),
        Request::DeclareQueue(request) => ready(Response::DeclareQueue(admin_answer(
            broker
                .declare_queue(
                    caller,
                    request.name,
                    pairs(request.args),
                    durability(request.durable),
                )
                .await,
        ))),
        Request::DeleteQueue(request) => ready(Response::DeleteQueue(admin_answer(
            broker.delete_queue(caller, &request.name).await,
        ))),
        Request::BindQueue(request) => ready(Response::BindQueue(admin_answer(
            broker
                .bind_queue(
                    caller,
                    request.queue,
                    request.exchange,
                    request.routing_key,
                    pairs(request.headers),
                )
                .await,
        ))),
        Request::UnbindQueue(request) => ready(Response::UnbindQueue(admin_answer(
            broker
                .unbind_queue(
                    caller,
                    request.queue,
                    request.exchange,
                    request.routing_key,
                    pairs(request.headers),
                )
                .await,
        ))),
        Request::PurgeQueue(request) => ready(Response::PurgeQueue(
            purge_queue(broker, caller, request).await,
        )),
        Request::ListQueues(_) => ready(Response::ListQueues(list_queues(broker, caller).await)),
        Request::DeleteExchange(request) => ready(Response::DeleteExchange(admin_answer(
            broker.delete_exchange(caller, request.name).await,
        ))),
        Request::ListExchanges(_) => ready(Response::ListExchanges(list_exchanges(broker, caller))),
        Request::AlterTopicConfigs(request) => ready(Response::AlterTopicConfigs(
            alter_topic_configs(broker, caller, request).await,
        )),
        Request::CreatePartitions(request) => ready(Response::CreatePartitions(
            create_partitions(broker, caller, request).await,
        )),
        Request::DescribeTopicConfigs(request) => ready(Response::DescribeTopicConfigs(
            describe_topic_configs(broker, caller, &request),
        )),
        Request::ResetOffsets(request) => ready(Response::ResetOffsets(
            reset_offsets(broker, caller, request).await,
        )),
        Request::DeleteGroup(request) => ready(Response::DeleteGroup(
            delete_group(broker, caller, &request).await,
        )),
        Request::QueueGet(request) => queue_get(broker, caller, request).await,
        Request::ListBindings(request) => ready(Response::ListBindings(list_bindings(
            broker, caller, request,
        ))),
        Request::MoveMessages(request) => move_messages(broker, caller, request),
        // Never decoded from clients (not in SUPPORTED_APIS); answered defensively.
        Request::Deliver(_) => ready(Response::error_only(
            ApiKey::Deliver,
            ErrorCode::InvalidRequest,
            "clients cannot send Deliver".to_string(),
        )),
        Request::DeliverBatch(_) => ready(Response::error_only(
            ApiKey::DeliverBatch,
            ErrorCode::InvalidRequest,
            "clients cannot send DeliverBatch".to_string(),
        )),
        Request::ConsumerCancelled(_) => ready(Response::error_only(
            ApiKey::ConsumerCancelled,
            ErrorCode::InvalidRequest,
            "clients cannot send ConsumerCancelled".to_string(),
        )),
        Request::ConnectionBlocked(_) => ready(Response::error_only(
            ApiKey::ConnectionBlocked,
            ErrorCode::InvalidRequest,
            "clients cannot send ConnectionBlocked".to_string(),
        )),
    }
}

/// Before a publish: if a resource alarm is on (the core will hold the publish until it
/// clears), tells the client with a ConnectionBlocked push, as AMQP's connection.blocked.
/// Returns whether it did.
async fn tell_blocked(broker: &Broker, connection: &NativeConnection) -> bool {
    let Some(reason) = broker.alarms().reason() else {
        return false;
    };
    push_blocked(connection, Some(reason)).await;
    true
}

/// After a publish the alarm held: the ConnectionBlocked push that lets the client go.
async fn tell_unblocked(held: bool, connection: &NativeConnection) {
    if held {
        push_blocked(connection, None).await;
    }
}

async fn push_blocked(connection: &NativeConnection, reason: Option<&str>) {
    let pushed = ConnectionBlockedPush {
        blocked: reason.is_some(),
        reason: reason.map(str::to_string),
    };
    let header = FrameHeader {
        api_key: ApiKey::ConnectionBlocked.code(),
        api_version: 0,
        correlation_id: 0,
    };
    let mut out = BytesMut::new();
    wharf_protocol::frame::encode_frame(header, &mut out, |body| pushed.encode(body));
    let _ = connection.push.send(out).await;
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

/// A Wharf node id as a native broker id (-1 if it does not fit).
fn broker_id(node: u64) -> i32 {
    i32::try_from(node).unwrap_or(-1)
}

/// The brokers a metadata answer lists: every node with a native listener (issue #20), or
/// this one on a lone node; and this node's id among them.
fn brokers(advertised: &BrokerInfo, routing: Option<&Routing<'_>>) -> (Vec<BrokerInfo>, i32) {
    let Some(routing) = routing else {
        return (vec![advertised.clone()], advertised.node_id);
    };
    let brokers = routing
        .addresses(ListenerKind::Native, (&advertised.host, advertised.port))
        .into_iter()
        .map(|address| BrokerInfo {
            node_id: broker_id(address.id),
            host: address.host,
            port: address.port,
        })
        .collect();
    (brokers, broker_id(routing.this_node()))
}

/// FindCoordinator: the native listener of the node coordinating every group and
/// transactional id (this one on a lone node), as the Kafka listener's FindCoordinator
/// answers; NotCoordinator with node -1 while none is known, or it has no native listener.
fn find_coordinator(advertised: &BrokerInfo, broker: &Broker) -> FindCoordinatorResponse {
    let routing = broker.routing();
    let found = match routing.as_ref() {
        None => Some(advertised.clone()),
        Some(routing) => routing.coordinator().and_then(|node| {
            brokers(advertised, Some(routing))
                .0
                .into_iter()
                .find(|listed| listed.node_id == broker_id(node))
        }),
    };
    match found {
        Some(coordinator) => FindCoordinatorResponse {
            error: ErrorCode::None,
            error_message: None,
            coordinator,
        },
        None => FindCoordinatorResponse {
            error: ErrorCode::NotCoordinator,
            error_message: Some(
                "no coordinator is known yet (an election, or its node has no native listener); retry"
                    .to_string(),
            ),
            coordinator: BrokerInfo {
                node_id: -1,
                host: String::new(),
                port: 0,
            },
        },
    }
}

fn metadata(
    advertised: &BrokerInfo,
    broker: &Broker,
    caller: &Session,
    request: MetadataRequest,
) -> MetadataResponse {
    let routing = broker.routing();
    let (brokers, this_node) = brokers(advertised, routing.as_ref());
    let topics = broker
        .topic_metadata(caller, request.topics)
        .into_iter()
        .map(|view| match view.topic_id {
            None if view.denied.is_some() => TopicMetadata {
                error: ErrorCode::Unauthorized,
                name: view.name,
                ..TopicMetadata::default()
            },
            None => TopicMetadata {
                error: ErrorCode::UnknownTopicOrPartition,
                name: view.name,
                ..TopicMetadata::default()
            },
            Some(topic_id) => TopicMetadata {
                error: ErrorCode::None,
                topic_id,
                partitions: view
                    .partitions
                    .into_iter()
                    .map(|partition| {
                        let placed = routing
                            .as_ref()
                            .and_then(|routing| routing.partition(&view.name, partition.partition))
                            .and_then(|placed| placed.leader.map(broker_id))
                            .filter(|leader| *leader != this_node);
                        match placed {
                            // Led elsewhere: that node reports its offsets.
                            Some(leader) => PartitionMetadata {
                                partition: partition.partition,
                                error: ErrorCode::None,
                                leader,
                                log_start_offset: -1,
                                high_watermark: -1,
                            },
                            None => PartitionMetadata {
                                partition: partition.partition,
                                error: match partition.status {
                                    PartitionStatus::Serving => ErrorCode::None,
                                    PartitionStatus::Failed => ErrorCode::StorageFailed,
                                    PartitionStatus::Missing => ErrorCode::UnknownTopicOrPartition,
                                },
                                leader: if partition.status == PartitionStatus::Missing {
                                    -1
                                } else {
                                    this_node
                                },
                                log_start_offset: partition.log_start_offset,
                                high_watermark: partition.high_watermark,
                            },
                        }
                    })
                    .collect(),
                name: view.name,
            },
        })
        .collect();
    MetadataResponse {
        error: ErrorCode::None,
        error_message: None,
        brokers,
        topics,
    }
}

async fn create_topics(
    broker: &Broker,
    caller: &Session,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut refused = Vec::new();
    let topics = request
        .topics
        .into_iter()
        .filter_map(|topic| {
            // The replication factor travels as a config entry (`REPLICATION_FACTOR_KEY`).
            let (factor, configs): (Vec<_>, Vec<_>) = pairs(topic.configs)
                .into_iter()
                .partition(|(key, _)| key == REPLICATION_FACTOR_KEY);
            let replication_factor = match factor.last() {
                None => None,
                Some((_, value)) => match value.parse::<u32>() {
                    Ok(factor) if factor >= 1 => Some(factor),
                    _ => {
                        refused.push(TopicResult {
                            error: ErrorCode::InvalidConfig,
                            error_message: Some(format!(
                                "{REPLICATION_FACTOR_KEY}={value:?}: a replication factor is a whole number from 1"
                            )),
                            name: topic.name,
                            ..TopicResult::default()
                        });
                        return None;
                    }
                },
            };
            Some(NewTopic {
                name: topic.name,
                partitions: topic.partitions,
                configs,
                replication_factor,
            })
        })
        .collect();
    let mut results: Vec<TopicResult> = broker
        .create_topics(caller, topics, AdminMode::Apply)
        .await
        .into_iter()
        .map(topic_result)
        .collect();
    results.extend(refused);
    CreateTopicsResponse {
        topics: results,
        ..CreateTopicsResponse::default()
    }
}

async fn delete_topics(
    broker: &Broker,
    caller: &Session,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    DeleteTopicsResponse {
        topics: broker
            .delete_topics(caller, request.names)
            .await
            .into_iter()
            .map(topic_result)
            .collect(),
        ..DeleteTopicsResponse::default()
    }
}

/// One topic's row in a create or delete answer.
fn topic_result((name, outcome): (String, Result<TopicInfo, StreamError>)) -> TopicResult {
    match outcome {
        Ok(info) => TopicResult {
            name,
            topic_id: info.topic_id,
            ..TopicResult::default()
        },
        Err(error) => TopicResult {
            name,
            error: error_code::stream(&error),
            error_message: Some(error.to_string()),
            ..TopicResult::default()
        },
    }
}

async fn produce(broker: &Broker, caller: &Session, request: ProduceRequest) -> Answer {
    let query = ProduceQuery {
        acks: match request.acks {
            Acks::None => core::Acks::None,
            Acks::Leader => core::Acks::Leader,
            Acks::All => core::Acks::All,
        },
        timeout_ms: request.timeout_ms,
        topics: request
            .topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|partition| (partition.partition, partition.records))
                    .collect();
                (topic.name, partitions)
            })
            .collect(),
    };
    let completion = broker.produce(caller, query).await;
    Box::pin(async move {
        let topics = completion.await?;
        Some(Response::Produce(ProduceResponse {
            topics: topics
                .into_iter()
                .map(|topic| ProduceTopicResponse {
                    name: topic.topic,
                    partitions: topic
                        .partitions
                        .into_iter()
                        .map(|partition| match partition.result {
                            Ok(produced) => ProducePartitionResponse {
                                partition: partition.partition,
                                error: ErrorCode::None,
                                error_message: None,
                                base_offset: produced.base_offset,
                                log_start_offset: produced.log_start_offset,
                            },
                            Err(error) => ProducePartitionResponse {
                                partition: partition.partition,
                                error: error_code::stream(&error),
                                error_message: Some(error.to_string()),
                                base_offset: -1,
                                log_start_offset: -1,
                            },
                        })
                        .collect(),
                })
                .collect(),
            ..ProduceResponse::default()
        }))
    })
}

/// Fetches run wholly in the completion: a long poll must not hold up the connection's
/// next request.
fn fetch(broker: Arc<Broker>, caller: Arc<Session>, request: FetchRequest) -> Answer {
    Box::pin(async move {
        Some(Response::Fetch(
            fetch_answer(&broker, &caller, request).await,
        ))
    })
}

async fn fetch_answer(broker: &Broker, caller: &Session, request: FetchRequest) -> FetchResponse {
    let query = FetchQuery {
        max_wait_ms: request.max_wait_ms,
        min_bytes: request.min_bytes,
        max_bytes: request.max_bytes,
        isolation: if request.isolation == Isolation::ReadCommitted {
            core::Isolation::ReadCommitted
        } else {
            core::Isolation::ReadUncommitted
        },
        topics: request
            .topics
            .into_iter()
            .map(|topic| TopicQuery {
                topic: topic.name,
                partitions: topic
                    .partitions
                    .into_iter()
                    .map(|partition| PartitionQuery {
                        partition: partition.partition,
                        fetch_offset: partition.fetch_offset,
                        partition_max_bytes: partition.partition_max_bytes,
                        current_leader_epoch: -1,
                    })
                    .collect(),
            })
            .collect(),
    };
    let topics = broker.fetch(caller, &query).await;
    FetchResponse {
        topics: topics
            .into_iter()
            .map(|topic| FetchTopicResponse {
                name: topic.topic,
                partitions: topic
                    .partitions
                    .into_iter()
                    .map(|partition| FetchPartitionResponse {
                        partition: partition.partition,
                        error: partition
                            .error
                            .as_ref()
                            .map_or(ErrorCode::None, error_code::stream),
                        error_message: partition.error.map(|error| error.to_string()),
                        high_watermark: partition.high_watermark,
                        last_stable_offset: partition.last_stable_offset,
                        log_start_offset: partition.log_start_offset,
                        aborted_transactions: partition
                            .aborted
                            .into_iter()
                            .map(|txn| AbortedTransaction {
                                producer_id: txn.producer_id,
                                first_offset: txn.first_offset,
                            })
                            .collect(),
                        records: partition.records,
                    })
                    .collect(),
            })
            .collect(),
        ..FetchResponse::default()
    }
}

fn list_offsets(
    broker: &Broker,
    caller: &Session,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| ListOffsetsTopicResponse {
            partitions: topic
                .partitions
                .iter()
                .map(|wanted| {
                    let spec = match wanted.timestamp {
                        LIST_OFFSETS_LATEST => OffsetSpec::Latest,
                        LIST_OFFSETS_EARLIEST => OffsetSpec::Earliest,
                        timestamp => OffsetSpec::Timestamp(timestamp),
                    };
                    let (error, offset) =
                        match broker.list_offset(caller, &topic.name, wanted.partition, spec) {
                            Ok(found) => (ErrorCode::None, found.unwrap_or(-1)),
                            Err(error) => (error_code::stream(&error), -1),
                        };
                    ListOffsetsPartitionResponse {
                        partition: wanted.partition,
                        error,
                        offset,
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

fn heartbeat(
    broker: &Broker,
    caller: &Session,
    request: GroupHeartbeatRequest,
) -> GroupHeartbeatResponse {
    let heartbeat = Heartbeat {
        group_id: request.group_id,
        member_id: request.member_id,
        generation: request.generation,
        client_id: request.client_id,
        session_timeout_ms: request.session_timeout_ms,
        topics: request.topics,
        assignor: request.assignor,
        owned: None,
        joins_with_own_id: false,
    };
    match broker.heartbeat(caller, &heartbeat) {
        Ok(MemberState {
            member_id,
            generation,
            heartbeat_interval_ms,
            assignment,
        }) => GroupHeartbeatResponse {
            error: ErrorCode::None,
            error_message: None,
            member_id,
            generation,
            heartbeat_interval_ms,
            assignment: assignment_to_wire(assignment),
        },
        Err(error) => GroupHeartbeatResponse {
            error: error_code::group(&error),
            error_message: Some(error.to_string()),
            ..GroupHeartbeatResponse::default()
        },
    }
}

fn leave_group(
    broker: &Broker,
    caller: &Session,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    match broker.leave_group(caller, &request.group_id, &request.member_id) {
        Ok(()) => LeaveGroupResponse::default(),
        Err(error) => {
            let code = error_code::group(&error);
            LeaveGroupResponse {
                error: code,
                error_message: Some(code.describe().to_string()),
            }
        }
    }
}

fn assignment_to_wire(
    assignment: std::collections::BTreeMap<String, Vec<u32>>,
) -> Vec<TopicPartitions> {
    assignment
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions { topic, partitions })
        .collect()
}

fn group_description(summary: GroupSummary) -> GroupDescription {
    GroupDescription {
        group_id: summary.group_id,
        error: if summary.denied.is_some() {
            ErrorCode::Unauthorized
        } else {
            ErrorCode::None
        },
        state: summary.state.name().to_string(),
        generation: summary.generation,
        assignor: summary.assignor.to_string(),
        members: summary
            .members
            .into_iter()
            .map(|member| GroupMember {
                member_id: member.member_id,
                client_id: member.client_id,
                topics: member.topics,
                assignment: assignment_to_wire(member.assignment),
            })
            .collect(),
    }
}

fn describe_groups(
    broker: &Broker,
    caller: &Session,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    // Another node's view of groups is empty: NotCoordinator sends the client to the
    // coordinator (it asks FindCoordinator again), as Kafka's DescribeGroups does.
    if let Err(refused) = broker.check_coordinating() {
        return DescribeGroupsResponse {
            error: error_code::group(&refused),
            error_message: Some(refused.to_string()),
            ..DescribeGroupsResponse::default()
        };
    }
    DescribeGroupsResponse {
        groups: broker
            .describe_groups(caller, request.group_ids)
            .into_iter()
            .map(group_description)
            .collect(),
        ..DescribeGroupsResponse::default()
    }
}

fn list_groups(broker: &Broker, caller: &Session) -> ListGroupsResponse {
    // As DescribeGroups: the coordinator lists them (Kafka's ListGroups answers each
    // broker's own groups instead, and its admin clients ask every broker).
    if let Err(refused) = broker.check_coordinating() {
        return ListGroupsResponse {
            error: error_code::group(&refused),
            error_message: Some(refused.to_string()),
            ..ListGroupsResponse::default()
        };
    }
    ListGroupsResponse {
        groups: broker
            .list_groups(caller)
            .into_iter()
            .map(|listing| GroupListing {
                group_id: listing.group_id,
                state: listing.state.name().to_string(),
                member_count: listing.member_count,
            })
            .collect(),
        ..ListGroupsResponse::default()
    }
}

fn offset_entries(topics: Vec<OffsetCommitTopic>) -> Vec<OffsetEntry> {
    topics
        .into_iter()
        .flat_map(|topic| {
            let name = topic.name;
            topic
                .partitions
                .into_iter()
                .map(move |partition| OffsetEntry {
                    topic: name.clone(),
                    partition: partition.partition,
                    committed: Committed {
                        offset: partition.offset,
                        metadata: partition.metadata,
                    },
                })
        })
        .collect()
}

async fn offset_commit(
    broker: &Broker,
    caller: &Session,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let shape: Vec<(String, Vec<u32>)> = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|partition| partition.partition)
                .collect();
            (topic.name.clone(), partitions)
        })
        .collect();
    let outcome = broker
        .commit_offsets(
            caller,
            &request.group_id,
            &request.member_id,
            request.generation,
            offset_entries(request.topics),
        )
        .await;
    match outcome {
        Ok(outcomes) => {
            let mut codes = outcomes.iter().map(|outcome| match outcome {
                Ok(()) => ErrorCode::None,
                Err(refusal) => error_code::entry(refusal),
            });
            OffsetCommitResponse {
                topics: commit_rows(&shape, || codes.next().unwrap_or(ErrorCode::None)),
                ..OffsetCommitResponse::default()
            }
        }
        Err(error) => {
            let code = error_code::commit(&error);
            OffsetCommitResponse {
                error: code,
                error_message: Some(error.to_string()),
                topics: commit_rows(&shape, || code),
            }
        }
    }
}

/// The per-partition rows of a commit answer, in request order.
fn commit_rows(
    shape: &[(String, Vec<u32>)],
    mut code: impl FnMut() -> ErrorCode,
) -> Vec<OffsetCommitTopicResponse> {
    shape
        .iter()
        .map(|(name, partitions)| OffsetCommitTopicResponse {
            name: name.clone(),
            partitions: partitions
                .iter()
                .map(|partition| PartitionError {
                    partition: *partition,
                    error: code(),
                })
                .collect(),
        })
        .collect()
}

fn offset_fetch(
    broker: &Broker,
    caller: &Session,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|topic| (topic.topic, topic.partitions))
            .collect()
    });
    let committed = match broker.fetch_offsets(caller, &request.group_id, wanted) {
        Ok(committed) => committed,
        Err(error) => {
            return OffsetFetchResponse {
                error: error_code::group(&error),
                ..OffsetFetchResponse::default()
            }
        }
    };
    OffsetFetchResponse {
        topics: committed
            .into_iter()
            .map(|(name, partitions)| OffsetFetchTopic {
                name,
                partitions: partitions
                    .into_iter()
                    .map(|(partition, committed)| OffsetFetchPartition {
                        partition,
                        offset: committed.as_ref().map_or(-1, |committed| committed.offset),
                        metadata: committed.and_then(|committed| committed.metadata),
                        error: ErrorCode::None,
                    })
                    .collect(),
            })
            .collect(),
        ..OffsetFetchResponse::default()
    }
}

async fn init_producer_id(
    broker: &Broker,
    caller: &Session,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let outcome = broker
        .init_producer_id(
            caller,
            request.transactional_id,
            request.transaction_timeout_ms,
        )
        .await;
    match outcome {
        Ok((producer_id, producer_epoch)) => InitProducerIdResponse {
            producer_id,
            producer_epoch,
            ..InitProducerIdResponse::default()
        },
        Err(error) => InitProducerIdResponse {
            error: error_code::txn(&error),
            error_message: Some(error.to_string()),
            producer_id: -1,
            producer_epoch: -1,
        },
    }
}

async fn add_partitions_to_txn(
    broker: &Broker,
    caller: &Session,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let producer = txn_producer(
        request.transactional_id,
        request.producer_id,
        request.producer_epoch,
    );
    let topics = request
        .topics
        .into_iter()
        .map(|topic| (topic.topic, topic.partitions))
        .collect();
    let (error, error_message) =
        txn_parts(broker.add_partitions_to_txn(caller, producer, topics).await);
    AddPartitionsToTxnResponse {
        error,
        error_message,
    }
}

async fn add_offsets_to_txn(
    broker: &Broker,
    caller: &Session,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let producer = txn_producer(
        request.transactional_id,
        request.producer_id,
        request.producer_epoch,
    );
    let (error, error_message) = txn_parts(
        broker
            .add_offsets_to_txn(caller, producer, request.group_id)
            .await,
    );
    AddOffsetsToTxnResponse {
        error,
        error_message,
    }
}

async fn txn_offset_commit(
    broker: &Broker,
    caller: &Session,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let offsets = TxnOffsets {
        producer: txn_producer(
            request.transactional_id,
            request.producer_id,
            request.producer_epoch,
        ),
        group_id: request.group_id,
        member_id: request.member_id,
        generation: request.generation,
        entries: offset_entries(request.topics),
    };
    let (error, error_message) = txn_parts(broker.txn_offset_commit(caller, offsets).await);
    TxnOffsetCommitResponse {
        error,
        error_message,
    }
}

async fn end_txn(broker: &Broker, caller: &Session, request: EndTxnRequest) -> EndTxnResponse {
    let producer = txn_producer(
        request.transactional_id,
        request.producer_id,
        request.producer_epoch,
    );
    let end = if request.result == TxnResult::Commit {
        TxnEnd::Commit
    } else {
        TxnEnd::Abort
    };
    let (error, error_message) = txn_parts(broker.end_txn(caller, producer, end).await);
    EndTxnResponse {
        error,
        error_message,
    }
}

fn txn_producer(transactional_id: String, producer_id: i64, epoch: i16) -> TxnProducer {
    TxnProducer {
        transactional_id,
        producer_id,
        epoch,
    }
}

fn txn_parts(outcome: Result<(), TxnError>) -> (ErrorCode, Option<String>) {
    match outcome {
        Ok(()) => (ErrorCode::None, None),
        Err(error) => (error_code::txn(&error), Some(error.to_string())),
    }
}

fn durability(durable: bool) -> Durability {
    if durable {
        Durability::Durable
    } else {
        Durability::Transient
    }
}

async fn alter_topic_configs(
    broker: &Broker,
    caller: &Session,
    request: AlterTopicConfigsRequest,
) -> StreamAdminResponse {
    let outcome = broker
        .alter_topic_configs(caller, &request.topic, pairs(request.configs))
        .await;
    stream_admin_answer(outcome.map(|_| ()))
}

async fn create_partitions(
    broker: &Broker,
    caller: &Session,
    request: CreatePartitionsRequest,
) -> StreamAdminResponse {
    let outcome = broker
        .add_partitions(
            caller,
            &request.topic,
            request.partition_count,
            AdminMode::Apply,
        )
        .await;
    stream_admin_answer(outcome.map(|_| ()))
}

fn stream_admin_answer(outcome: Result<(), StreamError>) -> StreamAdminResponse {
    match outcome {
        Ok(()) => StreamAdminResponse::default(),
        Err(error) => StreamAdminResponse {
            error: error_code::stream(&error),
            error_message: Some(error.to_string()),
        },
    }
}

fn describe_topic_configs(
    broker: &Broker,
    caller: &Session,
    request: &DescribeTopicConfigsRequest,
) -> DescribeTopicConfigsResponse {
    match broker.describe_topic_configs(caller, &request.topic) {
        Ok(configs) => DescribeTopicConfigsResponse {
            configs: configs
                .into_iter()
                .map(|config| TopicConfigEntry {
                    key: config.key,
                    value: config.value,
                    source: match config.source {
                        CoreConfigSource::Default => ConfigSource::Default,
                        CoreConfigSource::TopicOverride => ConfigSource::TopicOverride,
                    },
                })
                .collect(),
            ..DescribeTopicConfigsResponse::default()
        },
        Err(error) => DescribeTopicConfigsResponse {
            error: error_code::stream(&error),
            error_message: Some(error.to_string()),
            configs: Vec::new(),
        },
    }
}

async fn reset_offsets(
    broker: &Broker,
    caller: &Session,
    request: ResetOffsetsRequest,
) -> ResetOffsetsResponse {
    let target = match request.to {
        ResetTo::Earliest => ResetTarget::Earliest,
        ResetTo::Latest => ResetTarget::Latest,
        ResetTo::Offset => ResetTarget::Offset(request.value),
        ResetTo::Timestamp => ResetTarget::Timestamp(request.value),
    };
    let execution = if request.execute {
        Execution::Execute
    } else {
        Execution::DryRun
    };
    let outcome = broker
        .reset_offsets(caller, &request.group_id, &request.topic, target, execution)
        .await;
    match outcome {
        Ok(plan) => ResetOffsetsResponse {
            executed: request.execute,
            partitions: plan
                .into_iter()
                .map(|planned| ResetOffsetsPartition {
                    partition: planned.partition,
                    current_offset: planned.current_offset.unwrap_or(-1),
                    new_offset: planned.new_offset,
                    error: ErrorCode::None,
                })
                .collect(),
            ..ResetOffsetsResponse::default()
        },
        Err(error) => ResetOffsetsResponse {
            error: error_code::group_admin(&error),
            error_message: Some(error.to_string()),
            ..ResetOffsetsResponse::default()
        },
    }
}

async fn delete_group(
    broker: &Broker,
    caller: &Session,
    request: &DeleteGroupRequest,
) -> StreamAdminResponse {
    match broker.delete_group(caller, &request.group_id).await {
        Ok(_) => StreamAdminResponse::default(),
        Err(error) => group_admin_answer(&error),
    }
}

fn group_admin_answer(error: &GroupAdminError) -> StreamAdminResponse {
    StreamAdminResponse {
        error: error_code::group_admin(error),
        error_message: Some(error.to_string()),
    }
}

fn pairs(entries: Vec<ConfigEntry>) -> Vec<(String, String)> {
    entries
        .into_iter()
        .map(|entry| (entry.key, entry.value))
        .collect()
}

async fn purge_queue(
    broker: &Broker,
    caller: &Session,
    request: PurgeQueueRequest,
) -> PurgeQueueResponse {
    match broker.purge_queue(caller, &request.name).await {
        Ok(purged) => PurgeQueueResponse {
            purged,
            ..PurgeQueueResponse::default()
        },
        Err(error) => PurgeQueueResponse {
            error: error_code::queue(&error),
            error_message: Some(error.to_string()),
            purged: 0,
        },
    }
}

async fn list_queues(broker: &Broker, caller: &Session) -> ListQueuesResponse {
    ListQueuesResponse {
        queues: broker
            .list_queues(caller)
            .await
            .into_iter()
            .map(|stats| QueueListing {
                durable: stats.durability == Durability::Durable,
                name: stats.name,
                ready: stats.ready,
                unacked: stats.unacked,
                consumers: stats.consumers,
                delayed: stats.delayed,
            })
            .collect(),
        ..ListQueuesResponse::default()
    }
}

/// QueueGet in the ordered phase: a later request of the connection sees the queue after
/// the get (a requeued message counted, an acked one gone).
async fn queue_get(broker: &Broker, caller: &Session, request: QueueGetRequest) -> Answer {
    let mode = match request.ack_mode {
        GetAckMode::Requeue => GetMode::Requeue,
        GetAckMode::Ack => GetMode::Ack,
    };
    let response = match broker
        .queue_get(caller, &request.queue, request.count, mode)
        .await
    {
        Ok(messages) => QueueGetResponse {
            messages: messages.into_iter().map(got_message).collect(),
            ..QueueGetResponse::default()
        },
        Err(error) => QueueGetResponse {
            error: error_code::queue(&error),
            error_message: Some(error.to_string()),
            messages: Vec::new(),
        },
    };
    ready(Response::QueueGet(response))
}

fn got_message(got: core::GotMessage) -> GotMessage {
    GotMessage {
        redelivered: got.redelivered,
        routing_key: got
            .record
            .key
            .as_ref()
            .map(|key| String::from_utf8_lossy(key).into_owned())
            .unwrap_or_default(),
        timestamp_ms: got.record.timestamp_ms,
        headers: got
            .record
            .headers
            .into_iter()
            .map(|header| HeaderEntry {
                key: header.key,
                value: header.value,
            })
            .collect(),
        body: got.record.value.unwrap_or_default(),
    }
}

fn list_bindings(
    broker: &Broker,
    caller: &Session,
    request: ListBindingsRequest,
) -> ListBindingsResponse {
    match broker.list_bindings(caller, request.queue.as_deref()) {
        Ok(bindings) => ListBindingsResponse {
            bindings: bindings
                .into_iter()
                .map(|binding| BindingListing {
                    exchange: binding.exchange,
                    queue: binding.queue,
                    routing_key: binding.routing_key,
                    arguments: binding
                        .arguments
                        .into_iter()
                        .map(|(key, value)| ConfigEntry { key, value })
                        .collect(),
                })
                .collect(),
            ..ListBindingsResponse::default()
        },
        Err(error) => ListBindingsResponse {
            error: error_code::queue(&error),
            error_message: Some(error.to_string()),
            bindings: Vec::new(),
        },
    }
}

/// A move can take long: it runs as the completion, so the connection's later requests
/// are not held up behind it (they may see the queues part-way through the move).
fn move_messages(broker: &Broker, caller: &Session, request: MoveMessagesRequest) -> Answer {
    let completion = broker.move_messages(caller, request.source, request.destination);
    Box::pin(async move {
        let moved = completion.await;
        Some(Response::MoveMessages(MoveMessagesResponse {
            error: moved
                .stopped
                .as_ref()
                .map_or(ErrorCode::None, error_code::queue),
            error_message: moved.stopped.map(|error| error.to_string()),
            moved: moved.moved,
        }))
    })
}

fn list_exchanges(broker: &Broker, caller: &Session) -> ListExchangesResponse {
    ListExchangesResponse {
        exchanges: broker
            .list_exchanges(caller)
            .into_iter()
            .map(|(name, kind, durability, bindings)| ExchangeListing {
                name,
                kind: kind.name().to_string(),
                durable: durability == Durability::Durable,
                bindings: u32::try_from(bindings).unwrap_or(u32::MAX),
            })
            .collect(),
        ..ListExchangesResponse::default()
    }
}

fn admin_answer(outcome: Result<(), QueueError>) -> QueueAdminResponse {
    match outcome {
        Ok(()) => QueueAdminResponse::default(),
        Err(error) => QueueAdminResponse {
            error: error_code::queue(&error),
            error_message: Some(error.to_string()),
        },
    }
}

async fn publish(broker: &Broker, caller: &Session, request: PublishRequest) -> Answer {
    let completion = match broker.publish(caller, publish_query(request)).await {
        Ok(completion) => completion,
        Err(error) => return ready(Response::Publish(publish_failed(error))),
    };
    Box::pin(async move { Some(Response::Publish(publish_answer(completion.await))) })
}

/// Each message as its own publish, in order; one answer once all are confirmed or refused.
async fn publish_batch(broker: &Broker, caller: &Session, request: PublishBatchRequest) -> Answer {
    let queries = request.messages.into_iter().map(publish_query).collect();
    let published = broker.publish_batch(caller, queries).await;
    Box::pin(async move {
        let results = published
            .completion
            .await
            .into_iter()
            .map(publish_answer)
            .collect();
        Some(Response::PublishBatch(PublishBatchResponse {
            results,
            ..PublishBatchResponse::default()
        }))
    })
}

fn publish_query(request: PublishRequest) -> PublishQuery {
    PublishQuery {
        exchange: request.exchange,
        routing_key: request.routing_key,
        mandatory: if request.mandatory {
            Mandatory::Return
        } else {
            Mandatory::Drop
        },
        headers: request
            .headers
            .into_iter()
            .map(|entry| Header {
                key: entry.key,
                value: entry.value,
            })
            .collect(),
        body: request.body,
    }
}

fn publish_failed(error: QueueError) -> PublishResponse {
    PublishResponse {
        error: error_code::queue(&error),
        error_message: Some(error.to_string()),
        queues: Vec::new(),
    }
}

fn publish_answer(outcome: Result<PublishOutcome, QueueError>) -> PublishResponse {
    match outcome {
        Ok(PublishOutcome::Routed(queues)) => PublishResponse {
            queues,
            ..PublishResponse::default()
        },
        Ok(PublishOutcome::Dropped) => PublishResponse::default(),
        Ok(PublishOutcome::Returned) => PublishResponse {
            error: ErrorCode::Unroutable,
            error_message: Some(
                "no queue matched the mandatory message; it was not stored".to_string(),
            ),
            queues: Vec::new(),
        },
        Err(error) => publish_failed(error),
    }
}

async fn subscribe(
    broker: &Arc<Broker>,
    connection: &NativeConnection,
    request: SubscribeRequest,
    header: FrameHeader,
) -> SubscribeResponse {
    let query = SubscribeQuery {
        queue: request.queue,
        prefetch: request.prefetch,
        priority: 0,
        exclusive: false,
        shared_prefetch: None,
    };
    let queue = query.queue.clone();
    let (consumer_id, deliveries) = match broker.subscribe(&connection.session, query).await {
        Ok((consumer, deliveries)) => (consumer.0, deliveries),
        Err(error) => {
            return SubscribeResponse {
                error: error_code::queue(&error),
                error_message: Some(error.to_string()),
                consumer_id: 0,
            }
        }
    };
    // Subscribe v1 takes deliveries as runs of stored records (issue #15).
    let shape = if header.api_version >= 1 {
        PushShape::Runs
    } else {
        PushShape::PerMessage
    };
    tokio::spawn(forward_deliveries(
        deliveries,
        (broker.clone(), connection.session.clone()),
        connection.push.clone(),
        (consumer_id, shape),
        queue,
        header.correlation_id,
    ));
    SubscribeResponse {
        consumer_id,
        ..SubscribeResponse::default()
    }
}

/// Most bytes of pushes [`forward_deliveries`] gathers into one buffer before it hands
/// them to the connection (one message at least).
const PUSH_GATHER_BYTES: usize = 256 * 1024;

/// How a consumer's deliveries are pushed: as they are stored (`DeliverBatch`, to a
/// Subscribe at version 1) or one `Deliver` frame each (version 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PushShape {
    Runs,
    PerMessage,
}

/// Encodes a consumer's pushes (with the Subscribe's correlation id) into the connection's
/// push channel, until the consumer ends or the connection goes (its consumers are
/// cancelled as it closes). Whatever is waiting goes out together: one buffer of
/// consecutive frames (up to [`PUSH_GATHER_BYTES`]), one channel send and one write. A run
/// of deliveries becomes one `DeliverBatch` frame carrying the stored record bytes as they
/// are, or one `Deliver` frame per message for a version 0 subscriber.
async fn forward_deliveries(
    mut deliveries: Deliveries,
    (broker, session): (Arc<Broker>, Arc<Session>),
    push: tokio::sync::mpsc::Sender<BytesMut>,
    (consumer_id, shape): (u64, PushShape),
    queue: String,
    correlation_id: u32,
) {
    let push_header = FrameHeader {
        api_key: ApiKey::Deliver.code(),
        api_version: 0,
        correlation_id,
    };
    let batch_header = FrameHeader {
        api_key: ApiKey::DeliverBatch.code(),
        ..push_header
    };
    let cancelled_header = FrameHeader {
        api_key: ApiKey::ConsumerCancelled.code(),
        ..push_header
    };
    while let Some(first) = deliveries.recv_push().await {
        // Sized for the first run as a DeliverBatch (frame, fixed fields, 9 bytes a mark),
        // so encoding it never regrows the buffer.
        let first_bytes = match &first {
            ConsumerPush::Run(run) => run.records.len() + 9 * run.marks.len() + 64,
            ConsumerPush::Cancelled(_) => 256,
        };
        let mut out = BytesMut::with_capacity(first_bytes.min(PUSH_GATHER_BYTES));
        let mut next = Some(first);
        let mut last = false;
        while let Some(pushed) = next.take() {
            match pushed {
                ConsumerPush::Run(run) if shape == PushShape::Runs => {
                    let pushed = DeliverBatchPush {
                        consumer_id,
                        base_offset: run.base_offset,
                        base_timestamp: run.base_timestamp,
                        marks: run
                            .marks
                            .iter()
                            .map(|&(tag, redelivered)| DeliveryMark {
                                delivery_tag: tag.0,
                                redelivered,
                            })
                            .collect(),
                        records: run.records,
                    };
                    wharf_protocol::frame::encode_frame(batch_header, &mut out, |body| {
                        pushed.encode(body)
                    });
                }
                ConsumerPush::Run(run) => {
                    for delivered in run.deliveries() {
                        let Ok(delivered) = delivered else {
                            tracing::warn!(queue, "a stored queue message does not decode");
                            break;
                        };
                        let pushed = deliver_push(consumer_id, delivered);
                        wharf_protocol::frame::encode_frame(push_header, &mut out, |body| {
                            pushed.encode(body)
                        });
                    }
                }
                ConsumerPush::Cancelled(reason) => {
                    let error = match reason {
                        CancelReason::AckTimeout => ErrorCode::AckTimeout,
                        CancelReason::QueueDeleted => ErrorCode::UnknownQueue,
                        CancelReason::Unreachable => ErrorCode::RequestTimedOut,
                        // The client asked for these itself (or is gone): nothing to tell.
                        CancelReason::ClientCancelled | CancelReason::ConnectionClosed => {
                            last = true;
                            break;
                        }
                    };
                    let pushed = ConsumerCancelledPush {
                        consumer_id,
                        queue: queue.clone(),
                        error,
                        error_message: Some(format!(
                            "consumer {consumer_id} of queue {queue:?} was cancelled: {}",
                            reason.describe()
                        )),
                    };
                    wharf_protocol::frame::encode_frame(cancelled_header, &mut out, |body| {
                        pushed.encode(body)
                    });
                    last = true;
                    break;
                }
            }
            if out.len() < PUSH_GATHER_BYTES {
                next = deliveries.try_recv_push().ok();
            }
        }
        let pushed_bytes = out.len() as u64;
        if !out.is_empty() && push.send(out).await.is_err() {
            break;
        }
        if last {
            break;
        }
        // The consumer's byte rate (issue #18): the next deliveries wait out the delay.
        let delay = broker.charge_delivered(&session, core::QuotaKind::Fetch, pushed_bytes);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
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

async fn ack(broker: &Broker, caller: &Session, request: AckRequest) -> Answer {
    let query = SettleQuery {
        queue: request.queue,
        consumer: ConsumerId(request.consumer_id),
        tag: DeliveryTag(request.delivery_tag),
        scope: if request.multiple {
            AckScope::Multiple
        } else {
            AckScope::Single
        },
        settle: if !request.negative {
            Settle::Ack
        } else if request.requeue {
            Settle::Nack(Requeue::Yes)
        } else {
            Settle::Nack(Requeue::No)
        },
    };
    match broker.settle(caller, query).await {
        Err(error) => ready(Response::Ack(admin_answer(Err(error)))),
        Ok(completion) => {
            Box::pin(async move { Some(Response::Ack(admin_answer(completion.await))) })
        }
    }
}
