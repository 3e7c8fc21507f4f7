//! Offset lookups shared by the consumer and the admin client: ListOffsets (earliest,
//! latest, by timestamp) routed to each partition's leader, and OffsetFetch / OffsetCommit
//! of a group's committed offsets.

use std::collections::{BTreeMap, HashMap};

use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request};

use crate::cluster::{Client, Target};
use crate::error::{Error, Result};
use crate::metadata::TopicPartition;

/// Groups `partitions` by the node id of their leader (-1 when metadata names none).
pub(crate) async fn by_leader(
    client: &Client,
    partitions: &[TopicPartition],
) -> Result<BTreeMap<i32, Vec<TopicPartition>>> {
    let mut groups: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
    for partition in partitions {
        let topic = client.topic(&partition.topic).await?;
        let leader = topic
            .partitions
            .iter()
            .find(|entry| entry.partition == partition.partition)
            .map_or(-1, |entry| entry.leader);
        groups.entry(leader).or_default().push(partition.clone());
    }
    Ok(groups)
}

/// The target for a leader node id (-1: any broker).
pub(crate) fn leader_target(leader: i32) -> Target {
    if leader >= 0 {
        Target::Node(leader)
    } else {
        Target::Any
    }
}

/// Looks up offsets by `timestamp` ([`LIST_OFFSETS_LATEST`], [`LIST_OFFSETS_EARLIEST`] or
/// ms): -1 where no record has a timestamp at or after it.
///
/// # Errors
/// [`Error::UnknownTopic`] for a partition the broker does not know, request errors.
pub(crate) async fn list_offsets(
    client: &Client,
    partitions: &[TopicPartition],
    timestamp: i64,
) -> Result<HashMap<TopicPartition, i64>> {
    let mut offsets = HashMap::new();
    for (leader, group) in by_leader(client, partitions).await? {
        let request = Request::ListOffsets(ListOffsetsRequest {
            topics: group_by_topic(&group)
                .into_iter()
                .map(|(name, numbers)| ListOffsetsTopic {
                    name,
                    partitions: numbers
                        .into_iter()
                        .map(|partition| ListOffsetsPartition {
                            partition,
                            timestamp,
                        })
                        .collect(),
                })
                .collect(),
        });
        let response: ListOffsetsResponse = client.call(leader_target(leader), request).await?;
        for topic in response.topics {
            for partition in topic.partitions {
                if partition.error == ErrorCode::UnknownTopicOrPartition {
                    return Err(Error::UnknownTopic { topic: topic.name });
                }
                if partition.error == ErrorCode::NotLeaderOrFollower {
                    // The leader moved: the retry asks the metadata again.
                    client.invalidate_topic(&topic.name);
                }
                crate::error::check_code(partition.error, None)?;
                offsets.insert(
                    TopicPartition::new(topic.name.clone(), partition.partition),
                    partition.offset,
                );
            }
        }
    }
    Ok(offsets)
}

/// The committed offsets of `group` for `partitions` (all of the group's when `None`);
/// partitions without a commit are absent, and so is everything of an unknown group.
///
/// # Errors
/// Request errors and error codes.
pub(crate) async fn fetch_committed(
    client: &Client,
    group: &str,
    partitions: Option<&[TopicPartition]>,
) -> Result<HashMap<TopicPartition, i64>> {
    let topics = partitions.map(|partitions| {
        group_by_topic(partitions)
            .into_iter()
            .map(|(topic, partitions)| TopicPartitions { topic, partitions })
            .collect()
    });
    let request = Request::OffsetFetch(OffsetFetchRequest {
        group_id: group.to_string(),
        topics,
    });
    let response: OffsetFetchResponse = match client.call(Target::Coordinator, request).await {
        // A group nobody has joined or committed to yet has committed nothing.
        Err(error) if error.code() == Some(ErrorCode::GroupIdNotFound) => return Ok(HashMap::new()),
        other => other?,
    };
    let mut committed = HashMap::new();
    for topic in response.topics {
        for partition in topic.partitions {
            if partition.error.is_ok() && partition.offset >= 0 {
                committed.insert(
                    TopicPartition::new(topic.name.clone(), partition.partition),
                    partition.offset,
                );
            }
        }
    }
    Ok(committed)
}

/// Commits `offsets` (next offset to consume) for `group` as `member_id` in `generation`.
///
/// # Errors
/// The first error code, top-level or per partition (`IllegalGeneration` and
/// `UnknownMemberId` for a fenced member), and request errors.
pub(crate) async fn commit(
    client: &Client,
    group: &str,
    member_id: &str,
    generation: i32,
    offsets: &[(TopicPartition, i64)],
) -> Result<()> {
    let mut topics: BTreeMap<String, Vec<OffsetCommitPartition>> = BTreeMap::new();
    for (partition, offset) in offsets {
        topics
            .entry(partition.topic.clone())
            .or_default()
            .push(OffsetCommitPartition {
                partition: partition.partition,
                offset: *offset,
                metadata: None,
            });
    }
    let request = Request::OffsetCommit(OffsetCommitRequest {
        group_id: group.to_string(),
        member_id: member_id.to_string(),
        generation,
        topics: topics
            .into_iter()
            .map(|(name, partitions)| OffsetCommitTopic { name, partitions })
            .collect(),
    });
    let response: OffsetCommitResponse = client.call(Target::Coordinator, request).await?;
    for topic in response.topics {
        for partition in topic.partitions {
            crate::error::check_code(partition.error, None)?;
        }
    }
    Ok(())
}

/// Partition numbers per topic, topics and numbers sorted.
pub(crate) fn group_by_topic(partitions: &[TopicPartition]) -> BTreeMap<String, Vec<u32>> {
    let mut topics: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for partition in partitions {
        topics
            .entry(partition.topic.clone())
            .or_default()
            .push(partition.partition);
    }
    for numbers in topics.values_mut() {
        numbers.sort_unstable();
        numbers.dedup();
    }
    topics
}
