//! Kafka request → core calls → Kafka response. One small handler per api; every rule lives
//! in the core, every code mapping in [`super::error_code`].
//!
//! [`handle`] is the ordered phase of a request: the connection awaits it before reading the
//! next one, so two pipelined produces to a partition append in the order sent. What it
//! returns runs concurrently (durability waits, long polls) and resolves to the response.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::cluster::{current_leader, KafkaCluster};
use super::{acls, admin, error_code, groups, sasl, txn};
use super::{Kafka, KafkaConnection, SUPPORTED_APIS};
use crate::core::{
    self, Broker, FetchQuery, NewTopic, OffsetSpec, PartitionQuery, PartitionStatus, ProduceQuery,
    Session, StreamError, TopicInfo, TopicQuery, TopicView,
};

/// What remains of a request after its ordered phase; `None`: no response (acks = 0).
pub type Answer = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>;

/// An answer that is already known.
pub fn ready(response: ResponseKind) -> Answer {
    Box::pin(std::future::ready(Some(response)))
}

/// ListOffsets' timestamp for the high watermark.
const LATEST_TIMESTAMP: i64 = -1;
/// ListOffsets' timestamp for the log start offset.
const EARLIEST_TIMESTAMP: i64 = -2;

/// Runs the ordered phase of one request and returns the rest of it.
pub async fn handle(
    kafka: &Kafka,
    connection: &KafkaConnection,
    request: RequestKind,
    version: i16,
    client_id: String,
) -> Answer {
    let broker: &Broker = &kafka.broker;
    let caller: &Session = &connection.session;
    match request {
        RequestKind::ApiVersions(_) => ready(ResponseKind::ApiVersions(api_versions())),
        RequestKind::Metadata(request) => ready(ResponseKind::Metadata(
            metadata(kafka, caller, request, version).await,
        )),
        RequestKind::Produce(request) => produce(kafka, caller, request).await,
        RequestKind::Fetch(request) => {
            fetch(kafka.broker.clone(), connection.session.clone(), request)
        }
        RequestKind::ListOffsets(request) => ready(ResponseKind::ListOffsets(list_offsets(
            broker, caller, request, version,
        ))),
        RequestKind::CreateTopics(request) => ready(ResponseKind::CreateTopics(
            create_topics(broker, caller, request).await,
        )),
        RequestKind::DeleteTopics(request) => ready(ResponseKind::DeleteTopics(
            delete_topics(broker, caller, request, version).await,
        )),
        RequestKind::InitProducerId(request) => ready(ResponseKind::InitProducerId(
            init_producer_id(broker, caller, request).await,
        )),
        RequestKind::FindCoordinator(request) => ready(ResponseKind::FindCoordinator(
            groups::find_coordinator(kafka, request, version),
        )),
        RequestKind::JoinGroup(request) => {
            // The join waits at the group's barrier: in the completion, so the connection
            // keeps reading (a heartbeat of the same client must not wait behind it).
            let broker = kafka.broker.clone();
            let caller = connection.session.clone();
            Box::pin(async move {
                Some(ResponseKind::JoinGroup(
                    groups::join_group(&broker, &caller, request, client_id, version).await,
                ))
            })
        }
        RequestKind::SyncGroup(request) => {
            let broker = kafka.broker.clone();
            let caller = connection.session.clone();
            Box::pin(async move {
                Some(ResponseKind::SyncGroup(
                    groups::sync_group(&broker, &caller, request).await,
                ))
            })
        }
        RequestKind::Heartbeat(request) => ready(ResponseKind::Heartbeat(groups::heartbeat(
            broker, caller, request,
        ))),
        RequestKind::LeaveGroup(request) => ready(ResponseKind::LeaveGroup(groups::leave_group(
            broker, caller, request, version,
        ))),
        RequestKind::OffsetCommit(request) => ready(ResponseKind::OffsetCommit(
            groups::offset_commit(broker, caller, request).await,
        )),
        RequestKind::OffsetFetch(request) => ready(ResponseKind::OffsetFetch(
            groups::offset_fetch(broker, caller, request),
        )),
        RequestKind::ListGroups(_) => ready(ResponseKind::ListGroups(groups::list_groups(
            broker, caller,
        ))),
        RequestKind::DescribeGroups(request) => ready(ResponseKind::DescribeGroups(
            groups::describe_groups(broker, caller, request),
        )),
        RequestKind::AddPartitionsToTxn(request) => ready(ResponseKind::AddPartitionsToTxn(
            txn::add_partitions_to_txn(broker, caller, request).await,
        )),
        RequestKind::AddOffsetsToTxn(request) => ready(ResponseKind::AddOffsetsToTxn(
            txn::add_offsets_to_txn(broker, caller, request).await,
        )),
        RequestKind::TxnOffsetCommit(request) => ready(ResponseKind::TxnOffsetCommit(
            txn::txn_offset_commit(broker, caller, request).await,
        )),
        RequestKind::EndTxn(request) => ready(ResponseKind::EndTxn(
            txn::end_txn(broker, caller, request).await,
        )),
        RequestKind::DescribeConfigs(request) => ready(ResponseKind::DescribeConfigs(
            admin::describe_configs(broker, caller, request, version),
        )),
        RequestKind::AlterConfigs(request) => ready(ResponseKind::AlterConfigs(
            admin::alter_configs(broker, caller, request).await,
        )),
        RequestKind::IncrementalAlterConfigs(request) => {
            ready(ResponseKind::IncrementalAlterConfigs(
                admin::incremental_alter_configs(broker, caller, request).await,
            ))
        }
        RequestKind::CreateAcls(request) => ready(ResponseKind::CreateAcls(
            acls::create_acls(broker, caller, request).await,
        )),
        RequestKind::DescribeAcls(request) => ready(ResponseKind::DescribeAcls(
            acls::describe_acls(broker, caller, request),
        )),
        RequestKind::DeleteAcls(request) => ready(ResponseKind::DeleteAcls(
            acls::delete_acls(broker, caller, request).await,
        )),
        RequestKind::CreatePartitions(request) => ready(ResponseKind::CreatePartitions(
            admin::create_partitions(broker, caller, request).await,
        )),
        RequestKind::DeleteGroups(request) => ready(ResponseKind::DeleteGroups(
            admin::delete_groups(broker, caller, request).await,
        )),
        RequestKind::DescribeCluster(_) => ready(ResponseKind::DescribeCluster(
            admin::describe_cluster(kafka),
        )),
        RequestKind::OffsetForLeaderEpoch(request) => ready(ResponseKind::OffsetForLeaderEpoch(
            admin::offset_for_leader_epoch(broker, caller, request),
        )),
        RequestKind::OffsetDelete(request) => ready(ResponseKind::OffsetDelete(
            groups::offset_delete(broker, caller, request).await,
        )),
        RequestKind::DescribeProducers(request) => ready(ResponseKind::DescribeProducers(
            txn::describe_producers(broker, caller, request),
        )),
        RequestKind::DescribeTransactions(request) => ready(ResponseKind::DescribeTransactions(
            txn::describe_transactions(broker, caller, request).await,
        )),
        RequestKind::ListTransactions(request) => ready(ResponseKind::ListTransactions(
            txn::list_transactions(broker, caller, request, version).await,
        )),
        RequestKind::DeleteRecords(request) => ready(ResponseKind::DeleteRecords(
            admin::delete_records(broker, caller, request).await,
        )),
        RequestKind::ConsumerGroupHeartbeat(request) => {
            ready(ResponseKind::ConsumerGroupHeartbeat(
                groups::consumer_group_heartbeat(broker, caller, request),
            ))
        }
        RequestKind::ConsumerGroupDescribe(request) => ready(ResponseKind::ConsumerGroupDescribe(
            groups::consumer_group_describe(broker, caller, request),
        )),
        RequestKind::SaslHandshake(request) => {
            let mut state = sasl_state(connection);
            ready(ResponseKind::SaslHandshake(sasl::handshake(
                broker, &mut state, &request,
            )))
        }
        RequestKind::SaslAuthenticate(request) => {
            let step = sasl::authenticate(
                broker,
                caller,
                &mut sasl_state(connection),
                &request,
                connection.peer,
            );
            match step {
                sasl::Authenticate::Answer(response) => {
                    ready(ResponseKind::SaslAuthenticate(response))
                }
                // Checked in the ordered phase: nothing of this connection is read until
                // the login is decided.
                sasl::Authenticate::Plain(message) => ready(ResponseKind::SaslAuthenticate(
                    sasl::authenticate_plain(&kafka.broker, caller, message, connection.peer).await,
                )),
            }
        }
        RequestKind::DescribeUserScramCredentials(request) => {
            ready(ResponseKind::DescribeUserScramCredentials(
                sasl::describe_user_scram_credentials(broker, caller, &request),
            ))
        }
        RequestKind::AlterUserScramCredentials(request) => {
            ready(ResponseKind::AlterUserScramCredentials(
                sasl::alter_user_scram_credentials(&kafka.broker, caller, request).await,
            ))
        }
        // Not in SUPPORTED_APIS, so never decoded; answered defensively all the same.
        other => {
            tracing::warn!(request = ?std::mem::discriminant(&other), "Kafka request without a handler");
            Box::pin(std::future::ready(None))
        }
    }
}

fn sasl_state(connection: &KafkaConnection) -> std::sync::MutexGuard<'_, sasl::SaslState> {
    connection
        .sasl
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

/// A Kafka string of `value`.
pub(super) fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn topic_name(value: &str) -> TopicName {
    TopicName(text(value))
}

fn api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        SUPPORTED_APIS
            .iter()
            .map(|(key, min, max)| {
                ApiVersion::default()
                    .with_api_key(*key as i16)
                    .with_min_version(*min)
                    .with_max_version(*max)
            })
            .collect(),
    )
}

/// The answer to ApiVersions at a version this build does not speak: UNSUPPORTED_VERSION
/// with the supported ranges, so the client retries at one it can use.
pub fn api_versions_unsupported() -> ResponseKind {
    ResponseKind::ApiVersions(
        api_versions().with_error_code(ResponseError::UnsupportedVersion.code()),
    )
}

async fn metadata(
    kafka: &Kafka,
    caller: &Session,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let broker = &kafka.broker;
    // v0 asks for every topic with an empty list; later versions with a null one.
    // v10+ may name a topic by id alone (KIP-848 consumers resolve their assignment so).
    let mut unknown_ids = Vec::new();
    let names: Option<Vec<String>> = match request.topics {
        None => None,
        Some(topics) if topics.is_empty() && version == 0 => None,
        Some(topics) => {
            // Names by id, looked up once per request and only when a topic needs it.
            let names_by_id = if topics.iter().any(|topic| topic.name.is_none()) {
                groups::topic_ids(broker, caller).0
            } else {
                std::collections::HashMap::new()
            };
            let by_id = |id: &Uuid| names_by_id.get(id).cloned();
            Some(
                topics
                    .into_iter()
                    .filter_map(|topic| match topic.name {
                        Some(name) => Some(name.0.to_string()),
                        None => {
                            let found = by_id(&topic.topic_id);
                            if found.is_none() {
                                unknown_ids.push(topic.topic_id);
                            }
                            found
                        }
                    })
                    .collect(),
            )
        }
    };
    // Before v4 every metadata request may create the topics it names.
    let may_create = version < 4 || request.allow_auto_topic_creation;
    let views = match names {
        None => broker.topic_metadata(caller, None),
        Some(names) if may_create => broker.topic_metadata_creating(caller, names).await,
        Some(names) => broker.topic_metadata(caller, Some(names)),
    };
    let cluster = KafkaCluster::of(kafka);
    MetadataResponse::default()
        .with_brokers(
            cluster
                .brokers
                .iter()
                .map(|broker| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(broker.node_id))
                        .with_host(text(&broker.host))
                        .with_port(i32::from(broker.port))
                })
                .collect(),
        )
        .with_cluster_id(Some(text(&cluster.cluster_id)))
        .with_controller_id(BrokerId(cluster.controller))
        .with_topics(
            views
                .into_iter()
                .map(|view| topic_metadata(&cluster, view))
                .chain(unknown_ids.into_iter().map(|id| {
                    MetadataResponseTopic::default()
                        .with_topic_id(id)
                        .with_error_code(ResponseError::UnknownTopicId.code())
                }))
                .collect(),
        )
}

fn topic_metadata(cluster: &KafkaCluster<'_>, view: TopicView) -> MetadataResponseTopic {
    let topic = MetadataResponseTopic::default().with_name(Some(topic_name(&view.name)));
    if let Some(refused) = &view.denied {
        return topic.with_error_code(error_code::denied(refused));
    }
    let Some(topic_id) = view.topic_id else {
        return topic.with_error_code(ResponseError::UnknownTopicOrPartition.code());
    };
    topic
        .with_topic_id(Uuid::from_bytes(topic_id))
        .with_partitions(
            view.partitions
                .into_iter()
                .map(|partition| {
                    let super::cluster::PartitionView {
                        leader,
                        leader_epoch,
                        replicas,
                        in_sync,
                    } = cluster.partition(&view.name, partition.partition);
                    // A partition led elsewhere is that node's to report on.
                    let serving =
                        partition.status == PartitionStatus::Serving || leader != cluster.this_node;
                    MetadataResponsePartition::default()
                        .with_error_code(if !serving {
                            ResponseError::KafkaStorageError.code()
                        } else if leader < 0 {
                            // A replicated partition between leaders: the client asks again.
                            ResponseError::LeaderNotAvailable.code()
                        } else {
                            0
                        })
                        .with_partition_index(
                            i32::try_from(partition.partition).unwrap_or(i32::MAX),
                        )
                        .with_leader_id(BrokerId(if serving { leader } else { -1 }))
                        .with_leader_epoch(if serving { leader_epoch } else { -1 })
                        .with_isr_nodes(if serving {
                            in_sync.into_iter().map(BrokerId).collect()
                        } else {
                            Vec::new()
                        })
                        .with_replica_nodes(replicas.into_iter().map(BrokerId).collect())
                })
                .collect(),
        )
}

async fn produce(kafka: &Kafka, caller: &Session, request: ProduceRequest) -> Answer {
    let broker: &Broker = &kafka.broker;
    let acks = match request.acks {
        0 => core::Acks::None,
        1 => core::Acks::Leader,
        -1 => core::Acks::All,
        _ => {
            return ready(ResponseKind::Produce(refuse_produce(
                &request,
                ResponseError::InvalidRequiredAcks,
            )))
        }
    };
    // Partitions that no core call can name (negative indexes) are answered here.
    let mut refused: Vec<(String, i32)> = Vec::new();
    let topics = request
        .topic_data
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partition_data
                .into_iter()
                .filter_map(|partition| match u32::try_from(partition.index) {
                    Ok(index) => Some((index, partition.records.unwrap_or_default())),
                    Err(_) => {
                        refused.push((name.clone(), partition.index));
                        None
                    }
                })
                .collect();
            (name, partitions)
        })
        .collect();
    let query = ProduceQuery {
        acks,
        timeout_ms: u32::try_from(request.timeout_ms).unwrap_or(0),
        topics,
    };
    let completion = broker.produce(caller, query).await;
    // KIP-951: a partition refused because another node leads it names that leader and its
    // epoch, and the answer carries the leaders' addresses (Produce v10+), so librdkafka
    // moves to the leader without waiting for a Metadata refresh.
    let brokers = KafkaCluster::of(kafka).brokers;
    let router = kafka.broker.clone();
    Box::pin(async move {
        let topics = completion.await?;
        let mut named: Vec<i32> = Vec::new();
        let mut responses: Vec<TopicProduceResponse> = topics
            .into_iter()
            .map(|topic| {
                TopicProduceResponse::default()
                    .with_name(topic_name(&topic.topic))
                    .with_partition_responses(
                        topic
                            .partitions
                            .into_iter()
                            .map(|partition| {
                                let index = i32::try_from(partition.partition).unwrap_or(i32::MAX);
                                match partition.result {
                                    Ok(produced) => PartitionProduceResponse::default()
                                        .with_index(index)
                                        .with_base_offset(produced.base_offset)
                                        .with_log_append_time_ms(-1)
                                        .with_log_start_offset(produced.log_start_offset),
                                    Err(error) => {
                                        let refused = PartitionProduceResponse::default()
                                            .with_index(index)
                                            .with_error_code(error_code::stream(&error))
                                            .with_error_message(Some(text(&error.to_string())))
                                            .with_base_offset(-1)
                                            .with_log_append_time_ms(-1)
                                            .with_log_start_offset(-1);
                                        let leader = match &error {
                                            StreamError::NotLeader {
                                                topic, partition, ..
                                            } => current_leader(&router, topic, *partition),
                                            _ => None,
                                        };
                                        match leader {
                                            Some((leader, epoch)) => {
                                                named.push(leader);
                                                refused.with_current_leader(
                                                    LeaderIdAndEpoch::default()
                                                        .with_leader_id(BrokerId(leader))
                                                        .with_leader_epoch(epoch),
                                                )
                                            }
                                            None => refused,
                                        }
                                    }
                                }
                            })
                            .collect(),
                    )
            })
            .collect();
        for (name, index) in refused {
            let partition = PartitionProduceResponse::default()
                .with_index(index)
                .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            match responses
                .iter_mut()
                .find(|topic| topic.name.0.as_str() == name)
            {
                Some(topic) => topic.partition_responses.push(partition),
                None => responses.push(
                    TopicProduceResponse::default()
                        .with_name(topic_name(&name))
                        .with_partition_responses(vec![partition]),
                ),
            }
        }
        let endpoints = brokers
            .into_iter()
            .filter(|broker| named.contains(&broker.node_id))
            .map(|broker| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(broker.node_id))
                    .with_host(text(&broker.host))
                    .with_port(i32::from(broker.port))
            })
            .collect();
        Some(ResponseKind::Produce(
            ProduceResponse::default()
                .with_responses(responses)
                .with_node_endpoints(endpoints),
        ))
    })
}

/// Every partition of `request` refused with `error`.
fn refuse_produce(request: &ProduceRequest, error: ResponseError) -> ProduceResponse {
    ProduceResponse::default().with_responses(
        request
            .topic_data
            .iter()
            .map(|topic| {
                TopicProduceResponse::default()
                    .with_name(topic.name.clone())
                    .with_partition_responses(
                        topic
                            .partition_data
                            .iter()
                            .map(|partition| {
                                PartitionProduceResponse::default()
                                    .with_index(partition.index)
                                    .with_error_code(error.code())
                                    .with_base_offset(-1)
                                    .with_log_append_time_ms(-1)
                                    .with_log_start_offset(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Fetches run wholly in the completion: a long poll must not hold up the connection's next
/// request.
fn fetch(broker: Arc<Broker>, caller: Arc<Session>, request: FetchRequest) -> Answer {
    Box::pin(async move {
        Some(ResponseKind::Fetch(
            fetch_answer(&broker, &caller, request).await,
        ))
    })
}

async fn fetch_answer(broker: &Broker, caller: &Session, request: FetchRequest) -> FetchResponse {
    let read_committed = request.isolation_level == 1;
    let non_negative = |value: i32| u32::try_from(value).unwrap_or(0);
    // Partitions that no core call can name (negative indexes) are answered here.
    let mut refused: Vec<(String, i32)> = Vec::new();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.topic.0.to_string();
            let partitions = topic
                .partitions
                .into_iter()
                .filter_map(|partition| match u32::try_from(partition.partition) {
                    Ok(index) => Some(PartitionQuery {
                        partition: index,
                        fetch_offset: partition.fetch_offset,
                        partition_max_bytes: non_negative(partition.partition_max_bytes),
                        current_leader_epoch: partition.current_leader_epoch,
                    }),
                    Err(_) => {
                        refused.push((name.clone(), partition.partition));
                        None
                    }
                })
                .collect();
            TopicQuery {
                topic: name,
                partitions,
            }
        })
        .collect();
    let query = FetchQuery {
        max_wait_ms: non_negative(request.max_wait_ms),
        min_bytes: non_negative(request.min_bytes),
        max_bytes: non_negative(request.max_bytes),
        isolation: if read_committed {
            core::Isolation::ReadCommitted
        } else {
            core::Isolation::ReadUncommitted
        },
        topics,
    };
    let fetched = broker.fetch(caller, &query).await;
    let mut responses: Vec<FetchableTopicResponse> = fetched
        .into_iter()
        .map(|topic| {
            FetchableTopicResponse::default()
                .with_topic(topic_name(&topic.topic))
                .with_partitions(
                    topic
                        .partitions
                        .into_iter()
                        .map(|partition| {
                            let data = PartitionData::default()
                                .with_partition_index(
                                    i32::try_from(partition.partition).unwrap_or(i32::MAX),
                                )
                                .with_error_code(
                                    partition.error.as_ref().map_or(0, error_code::stream),
                                )
                                .with_high_watermark(partition.high_watermark)
                                .with_last_stable_offset(partition.last_stable_offset)
                                .with_log_start_offset(partition.log_start_offset)
                                .with_preferred_read_replica(BrokerId(-1))
                                .with_records(Some(partition.records));
                            if read_committed {
                                data.with_aborted_transactions(Some(
                                    partition
                                        .aborted
                                        .into_iter()
                                        .map(|txn| {
                                            AbortedTransaction::default()
                                                .with_producer_id(ProducerId(txn.producer_id))
                                                .with_first_offset(txn.first_offset)
                                        })
                                        .collect(),
                                ))
                            } else {
                                data
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    for (name, index) in refused {
        let partition = PartitionData::default()
            .with_partition_index(index)
            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_preferred_read_replica(BrokerId(-1))
            .with_records(Some(Bytes::new()));
        match responses
            .iter_mut()
            .find(|topic| topic.topic.0.as_str() == name)
        {
            Some(topic) => topic.partitions.push(partition),
            None => responses.push(
                FetchableTopicResponse::default()
                    .with_topic(topic_name(&name))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    FetchResponse::default().with_responses(responses)
}

fn list_offsets(
    broker: &Broker,
    caller: &Session,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    // The codec refuses a leader epoch in versions without the field (before v4).
    let with_epochs = version >= 4;
    // A read_committed consumer's "latest" is the last stable offset (v2+), as in Kafka.
    let read_committed = request.isolation_level == 1;
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partitions
                .into_iter()
                .map(|wanted| {
                    let spec = match wanted.timestamp {
                        LATEST_TIMESTAMP if read_committed => OffsetSpec::LastStable,
                        LATEST_TIMESTAMP => OffsetSpec::Latest,
                        EARLIEST_TIMESTAMP => OffsetSpec::Earliest,
                        timestamp => OffsetSpec::Timestamp(timestamp),
                    };
                    let answer = ListOffsetsPartitionResponse::default()
                        .with_partition_index(wanted.partition_index)
                        .with_timestamp(-1)
                        .with_leader_epoch(-1);
                    let Ok(partition) = u32::try_from(wanted.partition_index) else {
                        return answer
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_offset(-1);
                    };
                    // ListOffsets v4+ names the epoch the client takes the leader's to be
                    // (-1 before v4, not checked).
                    let current = wanted.current_leader_epoch;
                    match broker.list_offset_at_epoch(caller, &name, partition, spec, current) {
                        // The epoch of the record found (the current one at the log end):
                        // a client validates its position against it after a failover.
                        Ok(Some(offset)) if with_epochs => answer
                            .with_offset(offset)
                            .with_leader_epoch(broker.epoch_at(&name, partition, offset)),
                        Ok(offset) => answer.with_offset(offset.unwrap_or(-1)),
                        Err(error) => answer
                            .with_error_code(error_code::stream(&error))
                            .with_offset(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

async fn create_topics(
    broker: &Broker,
    caller: &Session,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    let mut wanted = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let refusal = if !topic.assignments.is_empty() {
            Some((
                ResponseError::InvalidReplicaAssignment,
                "replica assignments are not supported: this is a single broker".to_string(),
            ))
        } else if topic.replication_factor < -1 {
            // -1 is the default; 0 and more than the cluster's nodes are the core's to refuse.
            Some((
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is not between 1 and the {} node(s) of the cluster",
                    topic.replication_factor,
                    broker.broker_count()
                ),
            ))
        } else if topic.num_partitions == 0 || topic.num_partitions < -1 {
            Some((
                ResponseError::InvalidPartitions,
                format!(
                    "number of partitions {} must be positive",
                    topic.num_partitions
                ),
            ))
        } else {
            None
        };
        if let Some((error, message)) = refusal {
            results.push(
                CreatableTopicResult::default()
                    .with_name(topic.name)
                    .with_error_code(error.code())
                    .with_error_message(Some(text(&message))),
            );
            continue;
        }
        let partitions =
            u32::try_from(topic.num_partitions).unwrap_or_else(|_| broker.default_partitions());
        let configs = topic
            .configs
            .into_iter()
            .filter_map(|config| {
                config
                    .value
                    .map(|value| (config.name.to_string(), value.to_string()))
            })
            .collect();
        wanted.push(NewTopic {
            name,
            partitions,
            configs,
            replication_factor: u32::try_from(topic.replication_factor).ok(),
        });
    }
    let mode = admin::mode(request.validate_only);
    for (name, outcome) in broker.create_topics(caller, wanted, mode).await {
        // The factor the metadata placed it with (the cluster's default when not asked).
        let factor = broker.placed_factor(&name);
        results.push(created_topic(name, outcome, factor));
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn created_topic(
    name: String,
    outcome: Result<TopicInfo, StreamError>,
    factor: u32,
) -> CreatableTopicResult {
    let result = CreatableTopicResult::default().with_name(topic_name(&name));
    match outcome {
        Ok(info) => result
            .with_topic_id(Uuid::from_bytes(info.topic_id))
            .with_num_partitions(i32::try_from(info.partitions).unwrap_or(i32::MAX))
            .with_replication_factor(i16::try_from(factor).unwrap_or(i16::MAX)),
        Err(error) => result
            .with_error_code(error_code::stream(&error))
            .with_error_message(Some(text(&error.to_string())))
            .with_num_partitions(-1)
            .with_replication_factor(-1),
    }
}

async fn delete_topics(
    broker: &Broker,
    caller: &Session,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6 moved the names into `topics` (beside topic ids); earlier versions list names.
    let names: Vec<String> = if version >= 6 {
        request
            .topics
            .into_iter()
            .filter_map(|topic| topic.name.map(|name| name.0.to_string()))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|name| name.0.to_string())
            .collect()
    };
    let responses = broker
        .delete_topics(caller, names)
        .await
        .into_iter()
        .map(|(name, outcome)| {
            let result = DeletableTopicResult::default().with_name(Some(topic_name(&name)));
            match outcome {
                Ok(info) => result.with_topic_id(Uuid::from_bytes(info.topic_id)),
                Err(error) => result
                    .with_error_code(error_code::stream(&error))
                    .with_error_message(Some(text(&error.to_string()))),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

async fn init_producer_id(
    broker: &Broker,
    caller: &Session,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let transactional_id = request.transactional_id.map(|id| id.0.to_string());
    let timeout_ms = u32::try_from(request.transaction_timeout_ms).unwrap_or(0);
    match broker
        .init_producer_id(caller, transactional_id, timeout_ms)
        .await
    {
        Ok((producer_id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch),
        Err(error) => InitProducerIdResponse::default()
            .with_error_code(error_code::txn(&error))
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
