//! Kafka's group apis → core calls: FindCoordinator, the classic group protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup, with client-side assignors), OffsetCommit, OffsetFetch,
//! ListGroups and DescribeGroups. Offsets are the same committed offsets the native protocol
//! reads and writes; the commit rule is the core's.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::cluster::KafkaCluster;
use super::error_code;
use super::handlers::text;
use super::Kafka;
use std::collections::HashMap;

use uuid::Uuid;

use crate::core::{
    Broker, ClassicJoin, Committed, GroupAdminError, GroupError, Heartbeat, OffsetEntry, Session,
};

/// FindCoordinator: the node that coordinates every group and transactional id (this
/// broker on a lone node; docs/CLUSTER.md, Routing); COORDINATOR_NOT_AVAILABLE while that
/// node has no known Kafka listener.
pub fn find_coordinator(
    kafka: &Kafka,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let cluster = KafkaCluster::of(kafka);
    let found = cluster.coordinator();
    let (node_id, host, port, error) = match found {
        Some(broker) => (
            broker.node_id,
            broker.host.as_str(),
            i32::from(broker.port),
            0,
        ),
        None => (-1, "", -1, ResponseError::CoordinatorNotAvailable.code()),
    };
    if version >= 4 {
        // v4 batches the keys; the top-level fields are gone.
        return FindCoordinatorResponse::default().with_coordinators(
            request
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(key)
                        .with_node_id(BrokerId(node_id))
                        .with_host(text(host))
                        .with_port(port)
                        .with_error_code(error)
                })
                .collect(),
        );
    }
    FindCoordinatorResponse::default()
        .with_node_id(BrokerId(node_id))
        .with_host(text(host))
        .with_port(port)
        .with_error_code(error)
}

/// JoinGroup, answered when the group's rebalance completes.
pub async fn join_group(
    broker: &Broker,
    caller: &Session,
    request: JoinGroupRequest,
    client_id: String,
    version: i16,
) -> JoinGroupResponse {
    let join = ClassicJoin {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        client_id,
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|protocol| (protocol.name.to_string(), protocol.metadata))
            .collect(),
    };
    match broker.join_classic_group(caller, join).await {
        Ok(joined) => {
            let response = JoinGroupResponse::default()
                .with_generation_id(joined.generation)
                .with_protocol_name(Some(text(&joined.protocol)))
                .with_leader(text(&joined.leader))
                .with_member_id(text(&joined.member_id))
                .with_members(
                    joined
                        .members
                        .into_iter()
                        .map(|(member_id, metadata)| {
                            JoinGroupResponseMember::default()
                                .with_member_id(text(&member_id))
                                .with_metadata(metadata)
                        })
                        .collect(),
                );
            if version >= 7 {
                response.with_protocol_type(Some(text(&joined.protocol_type)))
            } else {
                response
            }
        }
        Err(error) => JoinGroupResponse::default()
            .with_error_code(error_code::group(&error))
            .with_generation_id(-1)
            .with_member_id(request.member_id),
    }
}

/// SyncGroup: the leader's assignments in, this member's assignment out.
pub async fn sync_group(
    broker: &Broker,
    caller: &Session,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let assignments = request
        .assignments
        .into_iter()
        .map(|assignment| (assignment.member_id.to_string(), assignment.assignment))
        .collect();
    let outcome = broker
        .sync_classic_group(
            caller,
            request.group_id.0.as_str(),
            request.member_id.as_str(),
            request.generation_id,
            assignments,
        )
        .await;
    let response = SyncGroupResponse::default()
        .with_protocol_type(request.protocol_type)
        .with_protocol_name(request.protocol_name);
    match outcome {
        Ok(assignment) => response.with_assignment(assignment),
        Err(error) => response.with_error_code(error_code::group(&error)),
    }
}

/// Heartbeat.
pub fn heartbeat(
    broker: &Broker,
    caller: &Session,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    match broker.heartbeat_classic_group(
        caller,
        request.group_id.0.as_str(),
        request.member_id.as_str(),
        request.generation_id,
    ) {
        Ok(()) => HeartbeatResponse::default(),
        Err(error) => HeartbeatResponse::default().with_error_code(error_code::group(&error)),
    }
}

/// LeaveGroup: one member (v0–v2) or a batch (v3+).
pub fn leave_group(
    broker: &Broker,
    caller: &Session,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group_id = request.group_id.0.to_string();
    if version < 3 {
        let outcome =
            broker.leave_classic_group(caller, &group_id, &[request.member_id.to_string()]);
        return match outcome.into_iter().next() {
            Some(Err(error)) => {
                LeaveGroupResponse::default().with_error_code(error_code::group(&error))
            }
            _ => LeaveGroupResponse::default(),
        };
    }
    let member_ids: Vec<String> = request
        .members
        .iter()
        .map(|member| member.member_id.to_string())
        .collect();
    let outcomes = broker.leave_classic_group(caller, &group_id, &member_ids);
    LeaveGroupResponse::default().with_members(
        request
            .members
            .into_iter()
            .zip(outcomes)
            .map(|(member, outcome)| {
                MemberResponse::default()
                    .with_member_id(member.member_id)
                    .with_group_instance_id(member.group_instance_id)
                    .with_error_code(outcome.err().map_or(0, |error| error_code::group(&error)))
            })
            .collect(),
    )
}

/// OffsetCommit under the core's commit rule (the member must be current; standalone commits
/// with generation -1 only while the group is empty).
pub async fn offset_commit(
    broker: &Broker,
    caller: &Session,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group_id = request.group_id.0.to_string();
    // Rows that no core call can name (negative partitions) are answered here.
    let mut entries = Vec::new();
    let mut slots: Vec<(usize, i32, Option<usize>)> = Vec::new();
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    for (topic_index, topic) in request.topics.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        for partition in topic.partitions {
            let entry = u32::try_from(partition.partition_index).ok().map(|index| {
                entries.push(OffsetEntry {
                    topic: name.clone(),
                    partition: index,
                    committed: Committed {
                        offset: partition.committed_offset,
                        metadata: partition.committed_metadata.map(|text| text.to_string()),
                    },
                });
                entries.len() - 1
            });
            slots.push((topic_index, partition.partition_index, entry));
        }
        topics.push(OffsetCommitResponseTopic::default().with_name(topic.name));
    }
    let outcome = broker
        .commit_offsets(
            caller,
            &group_id,
            request.member_id.as_str(),
            request.generation_id_or_member_epoch,
            entries,
        )
        .await;
    for (topic_index, partition_index, entry) in slots {
        let code = match (&outcome, entry) {
            (_, None) => ResponseError::UnknownTopicOrPartition.code(),
            (Err(error), Some(_)) => error_code::commit(error),
            (Ok(outcomes), Some(entry)) => match &outcomes[entry] {
                Ok(()) => 0,
                Err(refusal) => error_code::entry(refusal),
            },
        };
        topics[topic_index].partitions.push(
            OffsetCommitResponsePartition::default()
                .with_partition_index(partition_index)
                .with_error_code(code),
        );
    }
    OffsetCommitResponse::default().with_topics(topics)
}

/// OffsetFetch of the named partitions, or (null topics, v2+) of every committed one.
pub fn offset_fetch(
    broker: &Broker,
    caller: &Session,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let group_id = request.group_id.0.to_string();
    let wanted = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partition_indexes
                    .into_iter()
                    .filter_map(|index| u32::try_from(index).ok())
                    .collect();
                (topic.name.0.to_string(), partitions)
            })
            .collect()
    });
    let committed = match broker.fetch_offsets(caller, &group_id, wanted) {
        Ok(committed) => committed,
        Err(error) => {
            return OffsetFetchResponse::default().with_error_code(error_code::group(&error))
        }
    };
    let topics = committed
        .into_iter()
        .map(|(topic, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(text(&topic)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(partition, committed)| {
                            let answer = OffsetFetchResponsePartition::default()
                                .with_partition_index(i32::try_from(partition).unwrap_or(i32::MAX));
                            match committed {
                                Some(committed) => answer
                                    .with_committed_offset(committed.offset)
                                    .with_metadata(Some(text(
                                        committed.metadata.as_deref().unwrap_or(""),
                                    ))),
                                None => answer
                                    .with_committed_offset(-1)
                                    .with_metadata(Some(text(""))),
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// ListGroups: every group, of either group protocol, and every group with only committed
/// offsets.
pub fn list_groups(broker: &Broker, caller: &Session) -> ListGroupsResponse {
    ListGroupsResponse::default().with_groups(
        broker
            .list_groups(caller)
            .into_iter()
            .map(|listing| {
                let classic = broker
                    .describe_classic_group(caller, &listing.group_id)
                    .ok()
                    .flatten();
                ListedGroup::default()
                    .with_group_id(GroupId(text(&listing.group_id)))
                    .with_protocol_type(text(
                        classic
                            .as_ref()
                            .map_or("consumer", |group| &group.protocol_type),
                    ))
                    .with_group_state(text(classic.as_ref().map_or(
                        if listing.member_count == 0 {
                            "Empty"
                        } else {
                            "Stable"
                        },
                        |group| group.state.name(),
                    )))
            })
            .collect(),
    )
}

/// DescribeGroups: classic groups as Kafka describes them; groups of Wharf's own protocol
/// and unknown ones as empty.
pub fn describe_groups(
    broker: &Broker,
    caller: &Session,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    DescribeGroupsResponse::default().with_groups(
        request
            .groups
            .into_iter()
            .map(|group_id| {
                let described = DescribedGroup::default().with_group_id(group_id.clone());
                match broker.describe_classic_group(caller, group_id.0.as_str()) {
                    Err(error) => described.with_error_code(error_code::group(&error)),
                    Ok(Some(group)) => described
                        .with_group_state(text(group.state.name()))
                        .with_protocol_type(text(&group.protocol_type))
                        .with_protocol_data(text(&group.protocol))
                        .with_members(
                            group
                                .members
                                .into_iter()
                                .map(|member| {
                                    DescribedGroupMember::default()
                                        .with_member_id(text(&member.member_id))
                                        .with_client_id(text(&member.client_id))
                                        .with_member_metadata(member.metadata)
                                        .with_member_assignment(member.assignment)
                                })
                                .collect(),
                        ),
                    Ok(None) => described
                        .with_group_state(text("Dead"))
                        .with_protocol_type(text("")),
                }
            })
            .collect(),
    )
}

/// OffsetDelete: forgets a group's committed offsets of the named partitions, durably.
/// While the group has members every partition is refused with GROUP_SUBSCRIBED_TO_TOPIC
/// (Wharf does not read a Kafka group's subscriptions, so it keeps all of an active
/// group's offsets).
pub async fn offset_delete(
    broker: &Broker,
    caller: &Session,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group_id = request.group_id.0.to_string();
    let partitions: Vec<(String, u32)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().filter_map(|partition| {
                u32::try_from(partition.partition_index)
                    .ok()
                    .map(|index| (topic.name.0.to_string(), index))
            })
        })
        .collect();
    let (group_code, partition_code) =
        match broker.delete_offsets(caller, &group_id, &partitions).await {
            Ok(_) => (0, 0),
            Err(GroupAdminError::Group(GroupError::NotEmpty { .. })) => {
                (0, ResponseError::GroupSubscribedToTopic.code())
            }
            Err(GroupAdminError::Group(error)) => (error_code::group(&error), 0),
            Err(GroupAdminError::Stream(error)) => (error_code::stream(&error), 0),
            Err(GroupAdminError::Storage(error)) => (error_code::storage(&error), 0),
        };
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            OffsetDeleteResponseTopic::default()
                .with_partitions(
                    topic
                        .partitions
                        .iter()
                        .map(|partition| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(partition.partition_index)
                                .with_error_code(if partition.partition_index < 0 {
                                    ResponseError::UnknownTopicOrPartition.code()
                                } else {
                                    partition_code
                                })
                        })
                        .collect(),
                )
                .with_name(topic.name)
        })
        .collect();
    OffsetDeleteResponse::default()
        .with_error_code(group_code)
        .with_topics(if group_code == 0 { topics } else { Vec::new() })
}

/// Topic names by id and ids by name, of every visible topic.
pub(super) fn topic_ids(
    broker: &Broker,
    caller: &Session,
) -> (HashMap<Uuid, String>, HashMap<String, Uuid>) {
    let mut by_id = HashMap::new();
    let mut by_name = HashMap::new();
    for view in broker.topic_metadata(caller, None) {
        if let Some(id) = view.topic_id {
            let id = Uuid::from_bytes(id);
            by_id.insert(id, view.name.clone());
            by_name.insert(view.name, id);
        }
    }
    (by_id, by_name)
}

/// Kafka's name of a KIP-848 server assignor → Wharf's assignor (`uniform` spreads
/// partitions evenly and keeps them where they are, as `sticky` does).
fn assignor_name(kafka_name: &str) -> &str {
    match kafka_name {
        "uniform" => "sticky",
        other => other,
    }
}

/// ConsumerGroupHeartbeat (KIP-848), mapped onto Wharf's broker-side groups: the member
/// epoch is the group's generation; the partitions a member reports owning decide when the
/// ones it was asked to release go to their next owner (the two-step handover), so a member
/// that is still revoking keeps them.
pub fn consumer_group_heartbeat(
    broker: &Broker,
    caller: &Session,
    request: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let group_id = request.group_id.0.to_string();
    let member_id = request.member_id.to_string();
    let refused = |error: &GroupError| {
        ConsumerGroupHeartbeatResponse::default()
            .with_error_code(error_code::group(error))
            .with_error_message(Some(text(&error.to_string())))
    };
    if request.member_epoch < 0 {
        // -1 leaves, -2 leaves a static membership: both end the membership here.
        return match broker.leave_group(caller, &group_id, &member_id) {
            Ok(()) => ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(text(&member_id)))
                .with_member_epoch(request.member_epoch),
            Err(error) => refused(&error),
        };
    }
    let (names, ids) = topic_ids(broker, caller);
    // Unchanged subscription or assignor: what the member had.
    let current = (request.member_epoch > 0)
        .then(|| {
            broker
                .describe_groups(caller, vec![group_id.clone()])
                .into_iter()
                .next()
        })
        .flatten();
    let topics = match request.subscribed_topic_names {
        Some(topics) => topics
            .into_iter()
            .map(|topic| topic.0.to_string())
            .collect(),
        None => current
            .as_ref()
            .and_then(|group| {
                group
                    .members
                    .iter()
                    .find(|member| member.member_id == member_id)
            })
            .map(|member| member.topics.clone())
            .unwrap_or_default(),
    };
    let assignor = match &request.server_assignor {
        Some(name) => assignor_name(name.as_str()).to_string(),
        None => current
            .as_ref()
            .map(|group| group.assignor.to_string())
            .unwrap_or_default(),
    };
    let owned = request.topic_partitions.map(|owned| {
        owned
            .into_iter()
            .filter_map(|topic| {
                let name = names.get(&topic.topic_id)?.clone();
                let partitions = topic
                    .partitions
                    .into_iter()
                    .filter_map(|partition| u32::try_from(partition).ok())
                    .collect();
                Some((name, partitions))
            })
            .collect()
    });
    let heartbeat = Heartbeat {
        group_id,
        member_id,
        // KIP-848 members echo their epoch before they finish revoking: releases follow
        // what they report owning instead.
        generation: i32::MIN,
        client_id: String::new(),
        session_timeout_ms: 0,
        topics,
        assignor,
        owned,
        // v1 members name themselves (a UUID) when they join with epoch 0.
        joins_with_own_id: request.member_epoch == 0,
    };
    match broker.heartbeat(caller, &heartbeat) {
        Ok(state) => {
            let assignment = state
                .assignment
                .iter()
                .filter_map(|(topic, partitions)| {
                    Some(
                        consumer_group_heartbeat_response::TopicPartitions::default()
                            .with_topic_id(*ids.get(topic)?)
                            .with_partitions(
                                partitions
                                    .iter()
                                    .map(|partition| i32::try_from(*partition).unwrap_or(i32::MAX))
                                    .collect(),
                            ),
                    )
                })
                .collect();
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(text(&state.member_id)))
                .with_member_epoch(state.generation)
                .with_heartbeat_interval_ms(
                    i32::try_from(state.heartbeat_interval_ms).unwrap_or(i32::MAX),
                )
                .with_assignment(Some(
                    consumer_group_heartbeat_response::Assignment::default()
                        .with_topic_partitions(assignment),
                ))
        }
        Err(error) => refused(&error),
    }
}

/// ConsumerGroupDescribe (KIP-848): Wharf's broker-side groups with their members,
/// subscriptions and assignments.
pub fn consumer_group_describe(
    broker: &Broker,
    caller: &Session,
    request: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let (_, ids) = topic_ids(broker, caller);
    let assignment = |assigned: &crate::core::MemberAssignment| {
        consumer_group_describe_response::Assignment::default().with_topic_partitions(
            assigned
                .iter()
                .map(|(topic, partitions)| {
                    consumer_group_describe_response::TopicPartitions::default()
                        .with_topic_id(ids.get(topic).copied().unwrap_or_default())
                        .with_topic_name(TopicName(text(topic)))
                        .with_partitions(
                            partitions
                                .iter()
                                .map(|partition| i32::try_from(*partition).unwrap_or(i32::MAX))
                                .collect(),
                        )
                })
                .collect(),
        )
    };
    let groups = broker
        .describe_groups(
            caller,
            request
                .group_ids
                .iter()
                .map(|group_id| group_id.0.to_string())
                .collect(),
        )
        .into_iter()
        .map(|group| {
            let described = consumer_group_describe_response::DescribedGroup::default()
                .with_group_id(GroupId(text(&group.group_id)));
            if let Some(refused) = &group.denied {
                return described
                    .with_error_code(error_code::denied(refused))
                    .with_error_message(Some(text(&refused.to_string())));
            }
            if group.members.is_empty()
                && matches!(
                    broker.describe_classic_group(caller, &group.group_id),
                    Ok(Some(_))
                )
            {
                return described
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(text("the group uses the classic protocol")));
            }
            described
                .with_group_state(text(if group.members.is_empty() {
                    "Empty"
                } else {
                    "Stable"
                }))
                .with_group_epoch(group.generation)
                .with_assignment_epoch(group.generation)
                .with_assignor_name(text(group.assignor))
                .with_members(
                    group
                        .members
                        .iter()
                        .map(|member| {
                            consumer_group_describe_response::Member::default()
                                .with_member_id(text(&member.member_id))
                                .with_member_epoch(group.generation)
                                .with_client_id(text(&member.client_id))
                                .with_subscribed_topic_names(
                                    member
                                        .topics
                                        .iter()
                                        .map(|topic| TopicName(text(topic)))
                                        .collect(),
                                )
                                .with_assignment(assignment(&member.assignment))
                                .with_target_assignment(assignment(&member.assignment))
                        })
                        .collect(),
                )
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}
