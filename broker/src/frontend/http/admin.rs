//! The admin JSON API under `/api/v1` (docs/HTTP.md): topics, consumer groups and queues,
//! each route one call of the same core operations the native admin apis use, with the same
//! errors (mapped to statuses in [`super::error`]).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::{
    AdminMode, ConfigChange, ConfigSource, Execution, GroupState, NewTopic, PartitionLag,
    PartitionStatus, QueueStats, ResetTarget, TopicView,
};
use crate::frontend::http::error::{ApiError, ErrorBody, JsonBody, PathParams};
use crate::frontend::http::{Caller, Http, Shared};

/// The `/api/v1` routes, each registered with its OpenAPI description
/// ([`super::openapi`]).
pub fn routes() -> OpenApiRouter<std::sync::Arc<Http>> {
    OpenApiRouter::new()
        .routes(routes!(list_topics, create_topic))
        .routes(routes!(describe_topic, delete_topic))
        .routes(routes!(alter_topic_configs))
        .routes(routes!(add_partitions))
        .routes(routes!(list_groups))
        .routes(routes!(describe_group, delete_group))
        .routes(routes!(reset_group_offsets))
        .routes(routes!(list_queues))
        .routes(routes!(describe_queue))
        .routes(routes!(purge_queue))
        .merge(super::acls::routes())
        .merge(super::stream::routes())
        .merge(super::websocket::routes())
        .merge(super::queue_stream::routes())
        .merge(super::exchanges::routes())
        .merge(super::status::routes())
        .merge(super::group_stream::routes())
        .merge(super::tokens::routes())
}

/// A topic in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicSummary {
    /// Its name.
    pub name: String,
    /// Its stable id, 32 hex digits.
    pub topic_id: String,
    /// Its partition count.
    pub partitions: usize,
}

/// The topics.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicList {
    /// Every topic but the internal ones.
    pub topics: Vec<TopicSummary>,
}

/// A topic described.
#[derive(Debug, Serialize, ToSchema)]
pub struct TopicDetail {
    /// Its name.
    pub name: String,
    /// Its stable id, 32 hex digits.
    pub topic_id: String,
    /// Its partitions with their offsets.
    pub partitions: Vec<PartitionDetail>,
    /// Its configs in force.
    pub configs: Vec<ConfigDetail>,
}

/// One partition of a described topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionDetail {
    /// The partition.
    pub partition: u32,
    /// `serving`, `failed` or `missing`.
    pub status: &'static str,
    /// First offset still stored.
    pub log_start_offset: i64,
    /// Offset consumers may read up to.
    pub high_watermark: i64,
}

/// One config in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigDetail {
    /// The key (`retention.ms`, ...).
    pub name: String,
    /// The value.
    pub value: String,
    /// `default` or `topic`.
    pub source: &'static str,
}

/// The body of `POST /api/v1/topics`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Its name.
    pub name: String,
    /// Its partition count (default: the broker's `default_partitions`).
    pub partitions: Option<u32>,
    /// Config overrides.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// How many nodes hold each partition (default: 3 in a cluster of three or more
    /// nodes, else 1; more than 1 needs a cluster of that many nodes).
    #[schema(minimum = 1)]
    pub replication_factor: Option<u32>,
}

/// The body of `PATCH /api/v1/topics/{topic}/configs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlterConfigs {
    /// Overrides to set.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Overrides to remove (back to the broker default).
    #[serde(default)]
    pub delete: Vec<String>,
}

/// The body of `POST /api/v1/topics/{topic}/partitions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddPartitions {
    /// The new partition count (larger than the current one).
    pub partitions: u32,
}

/// Lists the topics (internal topics hidden).
#[utoipa::path(get, path = "/topics", tag = "topics", responses((status = 200, description = "The topics", body = TopicList), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn list_topics(
    axum::extract::State(http): Shared,
    caller: Caller,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let topics: Vec<TopicSummary> = broker
        .topic_metadata(&caller, None)
        .into_iter()
        .map(|view| TopicSummary {
            topic_id: hex_id(view.topic_id),
            partitions: view.partitions.len(),
            name: view.name,
        })
        .collect();
    Ok(Json(TopicList { topics }).into_response())
}

/// Creates a topic.
#[utoipa::path(post, path = "/topics", tag = "topics", request_body = CreateTopic, responses((status = 201, description = "Created: the topic described", body = TopicDetail), (status = 400, description = "A bad name, partition count or config, or bad JSON", body = ErrorBody), (status = 409, description = "The topic exists", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn create_topic(
    axum::extract::State(http): Shared,
    caller: Caller,
    JsonBody(body): JsonBody<CreateTopic>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let topic = NewTopic {
        name: body.name.clone(),
        partitions: body
            .partitions
            .unwrap_or_else(|| broker.default_partitions()),
        configs: body.configs.into_iter().collect(),
        replication_factor: body.replication_factor,
    };
    let (_, outcome) = broker
        .create_topics(&caller, vec![topic], AdminMode::Apply)
        .await
        .pop()
        .ok_or_else(|| ApiError::bad_request("no topic created"))?;
    outcome?;
    let detail = topic_detail(&http, &caller, &body.name)?;
    Ok((StatusCode::CREATED, Json(detail)).into_response())
}

/// Describes a topic: its partitions with their offsets, and its configs.
#[utoipa::path(get, path = "/topics/{topic}", tag = "topics", params(("topic" = String, Path, description = "The topic's name")), responses((status = 200, description = "The topic", body = TopicDetail), (status = 404, description = "Unknown topic", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn describe_topic(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(topic): PathParams<String>,
) -> Result<Response, ApiError> {
    Ok(Json(topic_detail(&http, &caller, &topic)?).into_response())
}

/// Deletes a topic with its committed offsets and producer state.
#[utoipa::path(delete, path = "/topics/{topic}", tag = "topics", params(("topic" = String, Path, description = "The topic's name")), responses((status = 204, description = "Deleted"), (status = 404, description = "Unknown topic", body = ErrorBody), (status = 403, description = "An internal topic", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn delete_topic(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(topic): PathParams<String>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let (_, outcome) = broker
        .delete_topics(&caller, vec![topic])
        .await
        .pop()
        .ok_or_else(|| ApiError::bad_request("no topic deleted"))?;
    outcome?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Sets and removes a topic's config overrides.
#[utoipa::path(patch, path = "/topics/{topic}/configs", tag = "topics", params(("topic" = String, Path, description = "The topic's name")), request_body = AlterConfigs, responses((status = 200, description = "The topic described", body = TopicDetail), (status = 400, description = "An unknown key or a bad value", body = ErrorBody), (status = 404, description = "Unknown topic", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn alter_topic_configs(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(topic): PathParams<String>,
    JsonBody(body): JsonBody<AlterConfigs>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let changes = body
        .set
        .into_iter()
        .map(|(key, value)| ConfigChange::Set(key, value))
        .chain(body.delete.into_iter().map(ConfigChange::Delete))
        .collect();
    broker
        .change_topic_configs(&caller, &topic, changes, false, AdminMode::Apply)
        .await?;
    Ok(Json(topic_detail(&http, &caller, &topic)?).into_response())
}

/// Grows a topic to a larger partition count.
#[utoipa::path(post, path = "/topics/{topic}/partitions", tag = "topics", params(("topic" = String, Path, description = "The topic's name")), request_body = AddPartitions, responses((status = 200, description = "The topic described", body = TopicDetail), (status = 400, description = "Not larger than the current count, or over the limit", body = ErrorBody), (status = 404, description = "Unknown topic", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn add_partitions(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(topic): PathParams<String>,
    JsonBody(body): JsonBody<AddPartitions>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    broker
        .add_partitions(&caller, &topic, body.partitions, AdminMode::Apply)
        .await?;
    Ok(Json(topic_detail(&http, &caller, &topic)?).into_response())
}

/// A topic's partitions and configs; 404 for an unknown topic.
fn topic_detail(http: &Http, caller: &Caller, name: &str) -> Result<TopicDetail, ApiError> {
    let broker = http.broker()?;
    let view: TopicView = broker
        .topic_metadata(caller, Some(vec![name.to_string()]))
        .pop()
        .map(|view| match view.denied {
            Some(denied) => Err(ApiError::from(denied)),
            None => Ok(view),
        })
        .transpose()?
        .filter(|view| view.topic_id.is_some())
        .ok_or_else(|| ApiError::not_found(format!("unknown topic {name:?}")))?;
    let configs = broker
        .describe_topic_configs(caller, name)?
        .into_iter()
        .map(|config| ConfigDetail {
            name: config.key,
            value: config.value,
            source: match config.source {
                ConfigSource::Default => "default",
                ConfigSource::TopicOverride => "topic",
            },
        })
        .collect();
    Ok(TopicDetail {
        topic_id: hex_id(view.topic_id),
        partitions: view
            .partitions
            .iter()
            .map(|partition| PartitionDetail {
                partition: partition.partition,
                status: match partition.status {
                    PartitionStatus::Serving => "serving",
                    PartitionStatus::Failed => "failed",
                    PartitionStatus::Missing => "missing",
                },
                log_start_offset: partition.log_start_offset,
                high_watermark: partition.high_watermark,
            })
            .collect(),
        name: view.name,
        configs,
    })
}

/// A group in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupSummaryJson {
    /// Its id.
    pub group_id: String,
    /// `empty` or `stable`.
    pub state: &'static str,
    /// Its member count.
    pub members: u32,
}

/// The groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    /// Every group, those with only committed offsets listed as empty.
    pub groups: Vec<GroupSummaryJson>,
}

/// A group described.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDetail {
    /// Its id.
    pub group_id: String,
    /// `empty` or `stable`.
    pub state: &'static str,
    /// Its generation.
    pub generation: i32,
    /// Its assignor.
    pub assignor: &'static str,
    /// Its members and their partitions.
    pub members: Vec<MemberDetail>,
    /// Committed offsets with lag, by (topic, partition).
    pub offsets: Vec<LagDetail>,
}

/// One member of a described group.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberDetail {
    /// Its id.
    pub member_id: String,
    /// Its client id.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
}

/// One committed partition of a group.
#[derive(Debug, Serialize, ToSchema)]
pub struct LagDetail {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset (next to consume).
    pub committed_offset: i64,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// `high_watermark - committed_offset`.
    pub lag: i64,
}

impl From<PartitionLag> for LagDetail {
    fn from(lag: PartitionLag) -> LagDetail {
        LagDetail {
            topic: lag.topic,
            partition: lag.partition,
            committed_offset: lag.committed_offset,
            high_watermark: lag.high_watermark,
            lag: lag.lag,
        }
    }
}

/// Lists the consumer groups.
#[utoipa::path(get, path = "/groups", tag = "groups", responses((status = 200, description = "The groups", body = GroupList), (status = 503, description = "The broker is recovering its logs, or another node of the cluster coordinates groups", body = ErrorBody)))]
async fn list_groups(
    axum::extract::State(http): Shared,
    caller: Caller,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    broker.check_coordinating().map_err(ApiError::from)?;
    let groups: Vec<GroupSummaryJson> = broker
        .list_groups(&caller)
        .into_iter()
        .map(|listing| GroupSummaryJson {
            group_id: listing.group_id,
            state: state_name(listing.state),
            members: listing.member_count,
        })
        .collect();
    Ok(Json(GroupList { groups }).into_response())
}

/// Describes a consumer group: members, and committed offsets with lag per partition.
#[utoipa::path(get, path = "/groups/{group}", tag = "groups", params(("group" = String, Path, description = "The group id")), responses((status = 200, description = "The group", body = GroupDetail), (status = 404, description = "Unknown group", body = ErrorBody), (status = 503, description = "The broker is recovering its logs, or another node of the cluster coordinates groups", body = ErrorBody)))]
async fn describe_group(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(group_id): PathParams<String>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let describe = || {
        broker
            .describe_groups(&caller, vec![group_id.clone()])
            .pop()
            .ok_or_else(|| ApiError::not_found(format!("unknown group {group_id:?}")))
    };
    if let Some(denied) = describe()?.denied {
        return Err(ApiError::from(denied));
    }
    // Permission first (403), then whether this node has the group at all; described
    // again after that check (this node may have just taken the coordinator's seat).
    broker.check_coordinating().map_err(ApiError::from)?;
    let summary = describe()?;
    let known = broker
        .list_groups(&caller)
        .iter()
        .any(|listing| listing.group_id == group_id);
    if !known {
        return Err(ApiError::not_found(format!("unknown group {group_id:?}")));
    }
    let detail = GroupDetail {
        state: state_name(summary.state),
        generation: summary.generation,
        assignor: summary.assignor,
        members: summary
            .members
            .into_iter()
            .map(|member| MemberDetail {
                member_id: member.member_id,
                client_id: member.client_id,
                topics: member.topics,
            })
            .collect(),
        offsets: broker
            .group_lags(&caller, &group_id)
            .into_iter()
            .map(LagDetail::from)
            .collect(),
        group_id,
    };
    Ok(Json(detail).into_response())
}

/// The body of an offset reset.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetOffsets {
    /// The topic whose partitions are reset (all of them).
    pub topic: String,
    /// `earliest`, `latest`, `offset` (with `offset`) or `timestamp` (with `timestamp_ms`).
    pub to: String,
    /// With `"to": "offset"`: the offset, clamped to each partition's bounds.
    pub offset: Option<i64>,
    /// With `"to": "timestamp"`: the first record at or after this time (ms since the epoch).
    pub timestamp_ms: Option<i64>,
    /// Plan only, change nothing (default false).
    #[serde(default)]
    pub dry_run: bool,
}

/// One partition of a reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlannedJson {
    /// The partition.
    pub partition: u32,
    /// Its committed offset before (null: none).
    pub current_offset: Option<i64>,
    /// Its committed offset after.
    pub new_offset: i64,
}

/// The outcome of a reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetAnswer {
    /// The group.
    pub group_id: String,
    /// The topic.
    pub topic: String,
    /// False for a dry run.
    pub executed: bool,
    /// Each partition's plan.
    pub partitions: Vec<PlannedJson>,
}

/// The outcome of a group delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupDeleted {
    /// The group.
    pub group_id: String,
    /// Partitions whose committed offsets were deleted.
    pub deleted_partitions: usize,
}

/// Resets a group's committed offsets on every partition of a topic (as `wharf group
/// reset`); the group must have no members.
#[utoipa::path(
    post,
    path = "/groups/{group}/reset",
    tag = "groups",
    params(("group" = String, Path, description = "The group id")),
    request_body = ResetOffsets,
    responses(
        (status = 200, description = "The plan, committed unless a dry run", body = ResetAnswer),
        (status = 400, description = "A bad target or group id", body = ErrorBody),
        (status = 404, description = "Unknown topic", body = ErrorBody),
        (status = 409, description = "The group has members", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
async fn reset_group_offsets(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(group_id): PathParams<String>,
    JsonBody(body): JsonBody<ResetOffsets>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let target = match (body.to.as_str(), body.offset, body.timestamp_ms) {
        ("earliest", None, None) => ResetTarget::Earliest,
        ("latest", None, None) => ResetTarget::Latest,
        ("offset", Some(offset), None) => ResetTarget::Offset(offset),
        ("timestamp", None, Some(timestamp_ms)) => ResetTarget::Timestamp(timestamp_ms),
        _ => {
            return Err(ApiError::bad_request(
                "to is earliest, latest, offset (with offset) or timestamp (with timestamp_ms)",
            ))
        }
    };
    let execution = if body.dry_run {
        Execution::DryRun
    } else {
        Execution::Execute
    };
    let plan = broker
        .reset_offsets(&caller, &group_id, &body.topic, target, execution)
        .await?;
    Ok(Json(ResetAnswer {
        group_id,
        topic: body.topic,
        executed: !body.dry_run,
        partitions: plan
            .into_iter()
            .map(|planned| PlannedJson {
                partition: planned.partition,
                current_offset: planned.current_offset,
                new_offset: planned.new_offset,
            })
            .collect(),
    })
    .into_response())
}

/// Deletes a group's committed offsets (as `wharf group delete`); the group must have no
/// members.
#[utoipa::path(
    delete,
    path = "/groups/{group}",
    tag = "groups",
    params(("group" = String, Path, description = "The group id")),
    responses(
        (status = 200, description = "Deleted", body = GroupDeleted),
        (status = 404, description = "Unknown group (no committed offsets)", body = ErrorBody),
        (status = 409, description = "The group has members", body = ErrorBody),
        (status = 503, description = "Recovering", body = ErrorBody),
    )
)]
async fn delete_group(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(group_id): PathParams<String>,
) -> Result<Response, ApiError> {
    let deleted_partitions = http.broker()?.delete_group(&caller, &group_id).await?;
    Ok(Json(GroupDeleted {
        group_id,
        deleted_partitions,
    })
    .into_response())
}

/// A queue's counts.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueDetail {
    /// Its name.
    pub name: String,
    /// `durable` or `transient`.
    pub durability: &'static str,
    /// Ready messages.
    pub ready: u64,
    /// Delivered, unacknowledged messages.
    pub unacked: u64,
    /// Messages waiting for their delay.
    pub delayed: u64,
    /// Subscribed consumers.
    pub consumers: u64,
    /// Messages stored since the broker started.
    pub published: u64,
    /// Deliveries since the broker started.
    pub delivered: u64,
    /// Messages settled since the broker started.
    pub settled: u64,
    /// In a cluster: the nodes holding the queue, its preferred leader first (RabbitMQ's
    /// `members`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<u64>>,
    /// In a cluster: the node leading the queue as this node knows it (none during an
    /// election).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
}

impl QueueDetail {
    /// The counts of `stats`, with the queue's members and leader in a cluster.
    pub(crate) fn of(stats: QueueStats, broker: &crate::core::Broker) -> QueueDetail {
        let members = broker.queue_members(&stats.name);
        let mut detail = QueueDetail::from(stats);
        if let Some((replicas, leader)) = members {
            detail.members = Some(replicas);
            detail.leader = leader;
        }
        detail
    }
}

/// The queues.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    /// Every queue with its counts.
    pub queues: Vec<QueueDetail>,
}

/// The outcome of a purge.
#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    /// The queue.
    pub queue: String,
    /// Ready messages removed.
    pub purged: u64,
}

impl From<QueueStats> for QueueDetail {
    fn from(stats: QueueStats) -> QueueDetail {
        QueueDetail {
            durability: match stats.durability {
                crate::core::Durability::Durable => "durable",
                crate::core::Durability::Transient => "transient",
            },
            name: stats.name,
            ready: stats.ready,
            unacked: stats.unacked,
            delayed: stats.delayed,
            consumers: stats.consumers,
            published: stats.published,
            delivered: stats.delivered,
            settled: stats.settled,
            members: None,
            leader: None,
        }
    }
}

/// Lists the queues with their counts.
#[utoipa::path(get, path = "/queues", tag = "queues", responses((status = 200, description = "The queues", body = QueueList), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn list_queues(
    axum::extract::State(http): Shared,
    caller: Caller,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let queues: Vec<QueueDetail> = broker
        .list_queues(&caller)
        .await
        .into_iter()
        .map(|stats| QueueDetail::of(stats, broker))
        .collect();
    Ok(Json(QueueList { queues }).into_response())
}

/// One queue's counts.
#[utoipa::path(get, path = "/queues/{queue}", tag = "queues", params(("queue" = String, Path, description = "The queue's name")), responses((status = 200, description = "The queue", body = QueueDetail), (status = 404, description = "Unknown queue", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn describe_queue(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(queue): PathParams<String>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let stats = broker
        .list_queues(&caller)
        .await
        .into_iter()
        .find(|stats| stats.name == queue)
        .ok_or_else(|| ApiError::not_found(format!("unknown queue {queue:?}")))?;
    Ok(Json(QueueDetail::of(stats, broker)).into_response())
}

/// Removes every ready message of a queue.
#[utoipa::path(post, path = "/queues/{queue}/purge", tag = "queues", params(("queue" = String, Path, description = "The queue's name")), responses((status = 200, description = "Purged", body = Purged), (status = 404, description = "Unknown queue", body = ErrorBody), (status = 503, description = "The broker is recovering its logs", body = ErrorBody)))]
async fn purge_queue(
    axum::extract::State(http): Shared,
    caller: Caller,
    PathParams(queue): PathParams<String>,
) -> Result<Response, ApiError> {
    let broker = http.broker()?;
    let purged = broker.purge_queue(&caller, &queue).await?;
    Ok(Json(Purged { queue, purged }).into_response())
}

fn state_name(state: GroupState) -> &'static str {
    state.name()
}

/// A topic id as 32 lowercase hex digits (empty for none).
fn hex_id(topic_id: Option<[u8; 16]>) -> String {
    topic_id
        .map(|id| id.iter().map(|byte| format!("{byte:02x}")).collect())
        .unwrap_or_default()
}
