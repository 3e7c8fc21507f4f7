//! Kafka's admin apis → core calls: DescribeConfigs, AlterConfigs, IncrementalAlterConfigs,
//! CreatePartitions, DeleteRecords, DeleteGroups, DescribeCluster and OffsetForLeaderEpoch. Topic configs
//! are the ones `wharf topic describe` and `alter` show and change, under Kafka's names.

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response as incremental;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::cluster::KafkaCluster;
use super::error_code;
use super::handlers::text;
use super::Kafka;
use crate::core::{
    AdminMode, Broker, ConfigChange, ConfigSource, GroupAdminError, Session, StreamError,
};

/// Kafka's config resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's config resource type of a broker.
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs' source of a topic override.
const SOURCE_TOPIC: i8 = 1;
/// DescribeConfigs' source of a default.
const SOURCE_DEFAULT: i8 = 5;
/// IncrementalAlterConfigs' operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// Kafka's type of a config (DescribeConfigs v3+): STRING 2, INT 3, LONG 5, DOUBLE 6,
/// LIST 7.
fn config_type(key: &str) -> i8 {
    match key {
        "max.message.bytes" | "min.insync.replicas" => 3,
        "retention.ms"
        | "retention.bytes"
        | "segment.bytes"
        | "segment.ms"
        | "delete.retention.ms"
        | "min.compaction.lag.ms"
        | "max.compaction.lag.ms" => 5,
        "min.cleanable.dirty.ratio" => 6,
        "cleanup.policy" => 7,
        _ => 2,
    }
}

/// DescribeConfigs: topics (all keys, or the ones asked for); a broker as having no
/// dynamic configs (its settings are the config file's).
pub fn describe_configs(
    broker: &Broker,
    caller: &Session,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            match resource.resource_type {
                RESOURCE_TOPIC => {
                    match broker.describe_topic_configs(caller, resource.resource_name.as_str()) {
                        Ok(configs) => result.with_configs(
                            configs
                                .into_iter()
                                .filter(|config| {
                                    resource.configuration_keys.as_ref().is_none_or(|keys| {
                                        keys.iter().any(|key| key.as_str() == config.key)
                                    })
                                })
                                .map(|config| {
                                    let entry = DescribeConfigsResourceResult::default()
                                        .with_name(text(&config.key))
                                        .with_value(Some(text(&config.value)))
                                        .with_config_source(match config.source {
                                            ConfigSource::TopicOverride => SOURCE_TOPIC,
                                            ConfigSource::Default => SOURCE_DEFAULT,
                                        })
                                        .with_read_only(config.key == "flush");
                                    if version >= 3 {
                                        entry.with_config_type(config_type(&config.key))
                                    } else {
                                        entry
                                    }
                                })
                                .collect(),
                        ),
                        Err(error) => result
                            .with_error_code(error_code::stream(&error))
                            .with_error_message(Some(text(&error.to_string()))),
                    }
                }
                RESOURCE_BROKER => result,
                other => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(text(&format!(
                        "config resource type {other} is not supported (topics: 2, brokers: 4)"
                    )))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Kafka's `validate_only` flag as the core's mode: run every check, change nothing.
pub fn mode(validate_only: bool) -> AdminMode {
    if validate_only {
        AdminMode::ValidateOnly
    } else {
        AdminMode::Apply
    }
}

/// What an alter of one resource comes to before the core is called.
enum Plan {
    /// Change a topic's overrides.
    Topic(String, Vec<ConfigChange>),
    /// Refuse with this code and message.
    Refuse(ResponseError, String),
}

fn plan(resource_type: i8, name: &str, changes: Result<Vec<ConfigChange>, String>) -> Plan {
    match (resource_type, changes) {
        (RESOURCE_TOPIC, Ok(changes)) => Plan::Topic(name.to_string(), changes),
        (RESOURCE_TOPIC, Err(message)) => Plan::Refuse(ResponseError::InvalidConfig, message),
        (RESOURCE_BROKER, _) => Plan::Refuse(
            ResponseError::InvalidRequest,
            "broker configs are set in the broker's config file, not altered at run time"
                .to_string(),
        ),
        (other, _) => Plan::Refuse(
            ResponseError::InvalidRequest,
            format!("config resource type {other} is not supported"),
        ),
    }
}

/// Runs one planned alter: (error code, message).
async fn run_plan(
    broker: &Broker,
    caller: &Session,
    plan: Plan,
    replace: bool,
    mode: AdminMode,
) -> (i16, Option<String>) {
    match plan {
        Plan::Refuse(error, message) => (error.code(), Some(message)),
        Plan::Topic(name, changes) => {
            match broker
                .change_topic_configs(caller, &name, changes, replace, mode)
                .await
            {
                Ok(_) => (0, None),
                Err(error) => (error_code::stream(&error), Some(error.to_string())),
            }
        }
    }
}

/// AlterConfigs: the given configs become the resource's whole set of overrides.
pub async fn alter_configs(
    broker: &Broker,
    caller: &Session,
    request: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let changes = resource
            .configs
            .into_iter()
            .map(|config| match config.value {
                Some(value) => ConfigChange::Set(config.name.to_string(), value.to_string()),
                None => ConfigChange::Delete(config.name.to_string()),
            })
            .collect();
        let planned = plan(
            resource.resource_type,
            resource.resource_name.as_str(),
            Ok(changes),
        );
        let (code, message) =
            run_plan(broker, caller, planned, true, mode(request.validate_only)).await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(|message| text(&message)))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// IncrementalAlterConfigs: SET and DELETE per key (APPEND and SUBTRACT are for list
/// configs, which topics here do not have).
pub async fn incremental_alter_configs(
    broker: &Broker,
    caller: &Session,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in request.resources {
        let changes: Result<Vec<ConfigChange>, String> = resource
            .configs
            .into_iter()
            .map(|config| match (config.config_operation, config.value) {
                (OP_SET, Some(value)) => {
                    Ok(ConfigChange::Set(config.name.to_string(), value.to_string()))
                }
                (OP_SET, None) => Err(format!("SET of {} needs a value", config.name.as_str())),
                (OP_DELETE, _) => Ok(ConfigChange::Delete(config.name.to_string())),
                (operation, _) => Err(format!(
                    "operation {operation} on {} is not supported: only SET (0) and DELETE (1); no topic config is a list",
                    config.name.as_str()
                )),
            })
            .collect();
        let planned = plan(
            resource.resource_type,
            resource.resource_name.as_str(),
            changes,
        );
        let (code, message) =
            run_plan(broker, caller, planned, false, mode(request.validate_only)).await;
        responses.push(
            incremental::AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(|message| text(&message)))
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// CreatePartitions: `count` is the new total.
pub async fn create_partitions(
    broker: &Broker,
    caller: &Session,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let refusal = if topic.assignments.is_some() {
            Some((
                ResponseError::InvalidReplicaAssignment,
                "replica assignments are not supported: this is a single broker".to_string(),
            ))
        } else {
            None
        };
        let outcome = match (refusal, u32::try_from(topic.count)) {
            (Some(refusal), _) => Err(refusal),
            (None, Err(_)) => Err((
                ResponseError::InvalidPartitions,
                format!("partition count {} must be positive", topic.count),
            )),
            (None, Ok(count)) => broker
                .add_partitions(
                    caller,
                    topic.name.0.as_str(),
                    count,
                    mode(request.validate_only),
                )
                .await
                .map(|_| ())
                .map_err(|error: StreamError| {
                    (
                        ResponseError::try_from_code(error_code::stream(&error))
                            .unwrap_or(ResponseError::UnknownServerError),
                        error.to_string(),
                    )
                }),
        };
        let result = CreatePartitionsTopicResult::default().with_name(topic.name);
        results.push(match outcome {
            Ok(()) => result,
            Err((error, message)) => result
                .with_error_code(error.code())
                .with_error_message(Some(text(&message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// DeleteGroups: forgets each group's committed offsets durably (refused while it has
/// members).
pub async fn delete_groups(
    broker: &Broker,
    caller: &Session,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let code = match broker.delete_group(caller, group_id.0.as_str()).await {
            Ok(_) => 0,
            Err(GroupAdminError::Group(error)) => error_code::group(&error),
            Err(GroupAdminError::Stream(error)) => error_code::stream(&error),
            Err(GroupAdminError::Storage(error)) => error_code::coordinator_storage(&error),
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// DescribeCluster: every node with a Kafka listener and the controller (this one broker
/// on a lone node).
pub fn describe_cluster(kafka: &Kafka) -> DescribeClusterResponse {
    let cluster = KafkaCluster::of(kafka);
    DescribeClusterResponse::default()
        .with_cluster_id(text(&cluster.cluster_id))
        .with_controller_id(BrokerId(cluster.controller))
        .with_brokers(
            cluster
                .brokers
                .iter()
                .map(|broker| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(broker.node_id))
                        .with_host(text(&broker.host))
                        .with_port(i32::from(broker.port))
                })
                .collect(),
        )
}

/// OffsetForLeaderEpoch: where each asked epoch ends on the partition's leader (the core's
/// `Broker::epoch_end_offset`: a replicated partition's epochs are its raft terms; one that
/// is not replicated has had the one epoch 0).
pub fn offset_for_leader_epoch(
    broker: &Broker,
    caller: &Session,
    request: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.topic.0.to_string();
            let partitions = topic
                .partitions
                .into_iter()
                .map(|wanted| {
                    let answer = EpochEndOffset::default().with_partition(wanted.partition);
                    let Ok(partition) = u32::try_from(wanted.partition) else {
                        return answer
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1);
                    };
                    match broker.epoch_end_offset(
                        caller,
                        &name,
                        partition,
                        wanted.current_leader_epoch,
                        wanted.leader_epoch,
                    ) {
                        Ok((epoch, end)) => answer.with_leader_epoch(epoch).with_end_offset(end),
                        Err(error) => answer
                            .with_error_code(error_code::stream(&error))
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// DeleteRecords: each partition's log start moves up to the given offset (-1: the high
/// watermark); the answer's low watermark is the new log start.
pub async fn delete_records(
    broker: &Broker,
    caller: &Session,
    request: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let wanted: Vec<(u32, i64)> = topic
            .partitions
            .iter()
            .filter_map(|partition| {
                u32::try_from(partition.partition_index)
                    .ok()
                    .map(|index| (index, partition.offset))
            })
            .collect();
        let outcomes = broker
            .delete_records(caller, topic.name.0.as_str(), wanted)
            .await;
        let partitions = topic
            .partitions
            .iter()
            .map(|partition| {
                let answer = DeleteRecordsPartitionResult::default()
                    .with_partition_index(partition.partition_index);
                let outcome = outcomes
                    .iter()
                    .find(|(index, _)| i64::from(*index) == i64::from(partition.partition_index));
                match outcome {
                    Some((_, Ok(log_start))) => answer.with_low_watermark(*log_start),
                    Some((_, Err(error))) => answer
                        .with_low_watermark(-1)
                        .with_error_code(error_code::stream(error)),
                    None if partition.partition_index < 0 => answer
                        .with_low_watermark(-1)
                        .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                    None => answer
                        .with_low_watermark(-1)
                        .with_error_code(ResponseError::UnknownServerError.code()),
                }
            })
            .collect();
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}
