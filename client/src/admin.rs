//! [`Admin`]: topics and consumer groups.
//!
//! Thin typed wrappers over CreateTopics, DeleteTopics, Metadata, AlterTopicConfigs,
//! CreatePartitions, DescribeTopicConfigs, ListGroups, DescribeGroups, ResetOffsets and
//! DeleteGroup, plus [`Admin::group_lag`], which joins a group's committed offsets
//! (OffsetFetch) with the partitions' end offsets (ListOffsets latest).

use std::collections::BTreeSet;

use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request};

use crate::cluster::{Client, FromResponse, Target};
use crate::error::{check_code, Error, Result};
use crate::metadata::{TopicDescription, TopicId, TopicPartition};
use crate::offsets;

/// How long a group list or description waits for the cluster to have a coordinator.
const COORDINATOR_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How far apart it asks meanwhile.
const COORDINATOR_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// Administration of topics and groups.
///
/// ```no_run
/// # async fn example() -> wharf_client::Result<()> {
/// use wharf_client::{Admin, Client, ClientConfig};
///
/// let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
/// let admin = Admin::new(&client);
/// admin.create_topic("orders", 6, &[("retention.ms", "86400000")]).await?;
/// for topic in admin.list_topics().await? {
///     println!("{} ({} partitions)", topic.name, topic.partition_count());
/// }
/// for lag in admin.group_lag("billing").await? {
///     println!("{}-{} lag {:?}", lag.topic, lag.partition, lag.lag);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    pub(crate) client: Client,
}

/// A consumer group as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group id.
    pub group_id: String,
    /// `empty` or `stable`.
    pub state: String,
    /// Members now.
    pub member_count: u32,
}

/// A consumer group described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group_id: String,
    /// `empty` or `stable`.
    pub state: String,
    /// The current generation.
    pub generation: i32,
    /// The assignor in use.
    pub assignor: String,
    /// The members and their assignments.
    pub members: Vec<GroupMemberDescription>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMemberDescription {
    /// The member id.
    pub member_id: String,
    /// The client id it joined with.
    pub client_id: String,
    /// Its subscription.
    pub topics: Vec<String>,
    /// The partitions assigned to it.
    pub assignment: Vec<TopicPartition>,
}

/// Progress of a group on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset (next to consume), `None` if nothing was committed.
    pub committed_offset: Option<i64>,
    /// The partition's end offset (high watermark).
    pub end_offset: i64,
    /// `end_offset - committed_offset`, `None` without a commit.
    pub lag: Option<i64>,
    /// The member the partition is assigned to now, if any.
    pub member_id: Option<String>,
}

/// One config of a topic as the broker runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfigValue {
    /// The key (`retention.ms`, ...).
    pub key: String,
    /// The value in force.
    pub value: String,
    /// An override of the topic, or the broker's default.
    pub source: ConfigSource,
}

/// Where [`Admin::reset_offsets`] moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSpec {
    /// Each partition's log start offset.
    Earliest,
    /// Each partition's end: the group skips everything stored.
    Latest,
    /// This offset, clamped by the broker to each partition's [log start, end].
    Offset(i64),
    /// The first record at or after this time (ms since the epoch); the end if none.
    Timestamp(i64),
}

/// Whether [`Admin::reset_offsets`] commits its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetMode {
    /// Only show the plan.
    DryRun,
    /// Commit the planned offsets.
    Execute,
}

/// One partition of a reset plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetResetPlan {
    /// The partition.
    pub partition: u32,
    /// The committed offset before the reset (`None`: none).
    pub current_offset: Option<i64>,
    /// The new committed offset.
    pub new_offset: i64,
}

impl Admin {
    /// An admin client over `client`. Does no I/O.
    pub fn new(client: &Client) -> Admin {
        Admin {
            client: client.clone(),
        }
    }

    /// Creates topic `name` with `partitions` partitions and config overrides.
    ///
    /// # Errors
    /// `TopicAlreadyExists`, `InvalidTopicName`, `InvalidPartitions`, `InvalidConfig` as
    /// [`Error::Server`], and request errors.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<TopicId> {
        let request = Request::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: name.to_string(),
                partitions,
                configs: configs
                    .iter()
                    .map(|(key, value)| ConfigEntry {
                        key: (*key).to_string(),
                        value: (*value).to_string(),
                    })
                    .collect(),
            }],
        });
        let response: CreateTopicsResponse = self.client.call(Target::Any, request).await?;
        let result = topic_result(response.topics, name)?;
        self.client.invalidate_topic(name);
        Ok(TopicId(result.topic_id))
    }

    /// Deletes topic `name`.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`] if it does not exist, request errors.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = Request::DeleteTopics(DeleteTopicsRequest {
            names: vec![name.to_string()],
        });
        let response: DeleteTopicsResponse = self.client.call(Target::Any, request).await?;
        topic_result(response.topics, name)?;
        self.client.invalidate_topic(name);
        Ok(())
    }

    /// Every topic, sorted by name.
    ///
    /// # Errors
    /// Request errors.
    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>> {
        self.client.topics().await
    }

    /// One topic with its partitions, their log start offsets and end offsets.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`] if it does not exist, request errors.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        self.client.refresh_topic(name).await
    }

    /// A coordinator's answer to `request`: while the cluster has none (an election, or
    /// the new one replaying its log) every node refuses with NotCoordinator, and the
    /// request is asked again, [`COORDINATOR_RETRY`] apart, for up to
    /// [`COORDINATOR_WAIT`].
    async fn call_coordinator_patiently<T: FromResponse>(&self, request: Request) -> Result<T> {
        let deadline = tokio::time::Instant::now() + COORDINATOR_WAIT;
        loop {
            match self
                .client
                .call::<T>(Target::Coordinator, request.clone())
                .await
            {
                Err(Error::Server {
                    code: ErrorCode::NotCoordinator,
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(COORDINATOR_RETRY).await;
                }
                answered => return answered,
            }
        }
    }

    /// Every consumer group, sorted by id.
    ///
    /// # Errors
    /// Request errors.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>> {
        let response: ListGroupsResponse = self
            .call_coordinator_patiently(Request::ListGroups(ListGroupsRequest {}))
            .await?;
        let mut groups: Vec<GroupSummary> = response
            .groups
            .into_iter()
            .map(|group| GroupSummary {
                group_id: group.group_id,
                state: group.state,
                member_count: group.member_count,
            })
            .collect();
        groups.sort_by(|left, right| left.group_id.cmp(&right.group_id));
        Ok(groups)
    }

    /// Group `group_id` with its members and their assignments.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if it does not exist, request errors.
    pub async fn describe_group(&self, group_id: &str) -> Result<GroupDescription> {
        let request = Request::DescribeGroups(DescribeGroupsRequest {
            group_ids: vec![group_id.to_string()],
        });
        let response: DescribeGroupsResponse = self.call_coordinator_patiently(request).await?;
        let group = response
            .groups
            .into_iter()
            .find(|group| group.group_id == group_id)
            .ok_or_else(|| Error::UnknownGroup {
                group: group_id.to_string(),
            })?;
        if group.error == ErrorCode::GroupIdNotFound {
            return Err(Error::UnknownGroup {
                group: group_id.to_string(),
            });
        }
        check_code(group.error, None)?;
        Ok(GroupDescription {
            group_id: group.group_id,
            state: group.state,
            generation: group.generation,
            assignor: group.assignor,
            members: group
                .members
                .into_iter()
                .map(|member| GroupMemberDescription {
                    member_id: member.member_id,
                    client_id: member.client_id,
                    topics: member.topics,
                    assignment: member
                        .assignment
                        .iter()
                        .flat_map(|topic| {
                            topic.partitions.iter().map(|partition| {
                                TopicPartition::new(topic.topic.clone(), *partition)
                            })
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// Per partition the group has committed to or is assigned: committed offset, end
    /// offset and lag, sorted by topic and partition.
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if the group does not exist, request errors.
    pub async fn group_lag(&self, group_id: &str) -> Result<Vec<PartitionLag>> {
        Ok(self.describe_group_with_lag(group_id).await?.1)
    }

    /// [`Admin::describe_group`] and [`Admin::group_lag`] from one DescribeGroups (so one
    /// wait for a coordinator while the cluster has none).
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] if the group does not exist, request errors.
    pub async fn describe_group_with_lag(
        &self,
        group_id: &str,
    ) -> Result<(GroupDescription, Vec<PartitionLag>)> {
        let description = self.describe_group(group_id).await?;
        let committed = offsets::fetch_committed(&self.client, group_id, None).await?;
        let mut partitions: BTreeSet<TopicPartition> = committed.keys().cloned().collect();
        for member in &description.members {
            partitions.extend(member.assignment.iter().cloned());
        }
        let partitions: Vec<TopicPartition> = partitions.into_iter().collect();
        let ends = if partitions.is_empty() {
            Default::default()
        } else {
            offsets::list_offsets(&self.client, &partitions, LIST_OFFSETS_LATEST).await?
        };
        let lags = partitions
            .into_iter()
            .map(|partition| {
                let committed_offset = committed.get(&partition).copied();
                let end_offset = ends.get(&partition).copied().unwrap_or(-1);
                let member_id = description
                    .members
                    .iter()
                    .find(|member| member.assignment.contains(&partition))
                    .map(|member| member.member_id.clone());
                PartitionLag {
                    lag: committed_offset.map(|offset| (end_offset - offset).max(0)),
                    topic: partition.topic,
                    partition: partition.partition,
                    committed_offset,
                    end_offset,
                    member_id,
                }
            })
            .collect();
        Ok((description, lags))
    }
}

/// The result for `name` in a create or delete answer, as an error if it failed.
impl Admin {
    /// Sets config overrides of topic `name` (each key replaces its earlier override). The
    /// broker stores them durably and applies the new retention and roll limits at once.
    ///
    /// ```no_run
    /// # async fn example(admin: wharf_client::Admin) -> wharf_client::Result<()> {
    /// admin.alter_topic_configs("orders", &[("retention.ms", "3600000")]).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownTopic`]; `InvalidConfig` (an unknown key, a bad value, or `flush`,
    /// which is fixed at create) as [`Error::Server`]; request errors.
    pub async fn alter_topic_configs(&self, name: &str, configs: &[(&str, &str)]) -> Result<()> {
        let request = Request::AlterTopicConfigs(AlterTopicConfigsRequest {
            topic: name.to_string(),
            configs: configs
                .iter()
                .map(|(key, value)| ConfigEntry {
                    key: (*key).to_string(),
                    value: (*value).to_string(),
                })
                .collect(),
        });
        let response: StreamAdminResponse =
            self.client.call_unchecked(Target::Any, request).await?;
        topic_answer(response.error, response.error_message, name)
    }

    /// Grows topic `name` to `partition_count` partitions in all (the new total, as Kafka's
    /// `--partitions`).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`]; `InvalidPartitions` (not more than today, or over the
    /// limit) as [`Error::Server`]; request errors.
    pub async fn add_partitions(&self, name: &str, partition_count: u32) -> Result<()> {
        let request = Request::CreatePartitions(CreatePartitionsRequest {
            topic: name.to_string(),
            partition_count,
        });
        let response: StreamAdminResponse =
            self.client.call_unchecked(Target::Any, request).await?;
        topic_answer(response.error, response.error_message, name)?;
        self.client.invalidate_topic(name);
        Ok(())
    }

    /// Every config of topic `name` with its value in force and where it comes from, sorted
    /// by key.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`]; request errors.
    pub async fn describe_topic_configs(&self, name: &str) -> Result<Vec<TopicConfigValue>> {
        let request = Request::DescribeTopicConfigs(DescribeTopicConfigsRequest {
            topic: name.to_string(),
        });
        let response: DescribeTopicConfigsResponse =
            self.client.call_unchecked(Target::Any, request).await?;
        topic_answer(response.error, response.error_message, name)?;
        Ok(response
            .configs
            .into_iter()
            .map(|config| TopicConfigValue {
                key: config.key,
                value: config.value,
                source: config.source,
            })
            .collect())
    }

    /// Plans new committed offsets of `group` on every partition of `topic`, and with
    /// [`ResetMode::Execute`] commits them. The group must have no active members (as
    /// Kafka's `--reset-offsets` requires), even for a dry run.
    ///
    /// ```no_run
    /// # async fn example(admin: wharf_client::Admin) -> wharf_client::Result<()> {
    /// use wharf_client::{ResetMode, ResetSpec};
    /// let plan = admin
    ///     .reset_offsets("billing", "orders", ResetSpec::Earliest, ResetMode::Execute)
    ///     .await?;
    /// println!("partition 0 now starts at {}", plan[0].new_offset);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// `GroupNotEmpty`, `InvalidGroupId` as [`Error::Server`]; [`Error::UnknownTopic`];
    /// request errors.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        spec: ResetSpec,
        mode: ResetMode,
    ) -> Result<Vec<OffsetResetPlan>> {
        let (to, value) = match spec {
            ResetSpec::Earliest => (ResetTo::Earliest, 0),
            ResetSpec::Latest => (ResetTo::Latest, 0),
            ResetSpec::Offset(offset) => (ResetTo::Offset, offset),
            ResetSpec::Timestamp(timestamp_ms) => (ResetTo::Timestamp, timestamp_ms),
        };
        let request = Request::ResetOffsets(ResetOffsetsRequest {
            group_id: group.to_string(),
            topic: topic.to_string(),
            to,
            value,
            execute: mode == ResetMode::Execute,
        });
        let response: ResetOffsetsResponse = self
            .client
            .call_unchecked(Target::Coordinator, request)
            .await?;
        topic_answer(response.error, response.error_message, topic)?;
        Ok(response
            .partitions
            .into_iter()
            .map(|partition| OffsetResetPlan {
                partition: partition.partition,
                current_offset: (partition.current_offset >= 0).then_some(partition.current_offset),
                new_offset: partition.new_offset,
            })
            .collect())
    }

    /// Deletes the committed offsets of `group` (Kafka's DeleteGroups).
    ///
    /// # Errors
    /// [`Error::UnknownGroup`] when it has no committed offsets; `GroupNotEmpty` as
    /// [`Error::Server`] while it has members; request errors.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let request = Request::DeleteGroup(DeleteGroupRequest {
            group_id: group.to_string(),
        });
        let response: StreamAdminResponse = self
            .client
            .call_unchecked(Target::Coordinator, request)
            .await?;
        match response.error {
            ErrorCode::GroupIdNotFound => Err(Error::UnknownGroup {
                group: group.to_string(),
            }),
            code => check_code(code, response.error_message),
        }
    }
}

/// A topic admin answer's code as a result: an unknown topic as [`Error::UnknownTopic`].
fn topic_answer(code: ErrorCode, message: Option<String>, name: &str) -> Result<()> {
    match code {
        ErrorCode::UnknownTopicOrPartition => Err(Error::UnknownTopic {
            topic: name.to_string(),
        }),
        code => check_code(code, message),
    }
}

fn topic_result(results: Vec<TopicResult>, name: &str) -> Result<TopicResult> {
    let result = results
        .into_iter()
        .find(|result| result.name == name)
        .ok_or_else(|| {
            Error::server(
                ErrorCode::Unknown,
                Some(format!("no result for topic \"{name}\"")),
            )
        })?;
    match result.error {
        ErrorCode::None => Ok(result),
        ErrorCode::UnknownTopicOrPartition => Err(Error::UnknownTopic {
            topic: name.to_string(),
        }),
        code => Err(Error::server(code, result.error_message)),
    }
}
