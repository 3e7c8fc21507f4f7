//! Request and response bodies, version 0 of every api. Each struct's wire encoding is its
//! fields in declaration order (see [`crate::wire`] for the primitives); docs/PROTOCOL.md
//! lists them as tables. Every response starts with a top-level `error` code and a nullable
//! human-readable `error_message`.

use bytes::Bytes;

use crate::error_code::ErrorCode;
use crate::{wire_enum, wire_struct};

/// Special `timestamp` values in a ListOffsets request.
pub const LIST_OFFSETS_LATEST: i64 = -1;
/// The earliest stored offset (the log start offset).
pub const LIST_OFFSETS_EARLIEST: i64 = -2;

/// The `CreateTopic` config entry that carries the topic's replication factor (a whole
/// number from 1; issue #21) instead of a config of the topic: the broker takes it out of
/// the configs. Without it the cluster's default applies (3 from three nodes, else 1).
pub const REPLICATION_FACTOR_KEY: &str = "replication.factor";

wire_enum! {
    /// How many acknowledgements a produce request waits for.
    #[derive(Default)]
    pub enum Acks: i16 {
        /// No response at all (at-most-once, fire and forget).
        None = 0,
        /// Acknowledge once the broker has appended the batch (page cache).
        Leader = 1,
        /// Acknowledge once the batch is durable as the flush policy promises (fsynced with
        /// `flush = always`).
        #[default]
        All = -1,
    }
}

wire_enum! {
    /// What a fetch may return.
    #[derive(Default)]
    pub enum Isolation: u8 {
        /// Everything up to the high watermark.
        #[default]
        ReadUncommitted = 0,
        /// Only up to the last stable offset (transactions, issue #4).
        ReadCommitted = 1,
    }
}

wire_struct! {
    /// Handshake request: the first request on a connection.
    pub struct ApiVersionsRequest {
        /// Free-form client name for logs.
        pub client_name: String,
    }
}

wire_struct! {
    /// One api's supported version range.
    pub struct ApiVersionRange {
        pub api_key: u16,
        pub min_version: u16,
        pub max_version: u16,
    }
}

wire_struct! {
    /// Handshake response: what the broker supports.
    pub struct ApiVersionsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub apis: Vec<ApiVersionRange>,
        /// The broker's software version, for logs.
        pub broker_version: String,
    }
}

wire_struct! {
    /// Metadata request: topics to describe, or null for all.
    pub struct MetadataRequest {
        pub topics: Option<Vec<String>>,
    }
}

wire_struct! {
    /// A broker as clients should reach it (its advertised address).
    pub struct BrokerInfo {
        pub node_id: i32,
        pub host: String,
        pub port: u16,
    }
}

wire_struct! {
    /// One partition in a metadata answer.
    pub struct PartitionMetadata {
        pub partition: u32,
        pub error: ErrorCode,
        /// Node id of the leader (the only broker for now).
        pub leader: i32,
        pub log_start_offset: i64,
        pub high_watermark: i64,
    }
}

wire_struct! {
    /// One topic in a metadata answer.
    pub struct TopicMetadata {
        pub error: ErrorCode,
        pub name: String,
        /// Stable id: a deleted and re-created topic gets a new one.
        pub topic_id: [u8; 16],
        pub partitions: Vec<PartitionMetadata>,
    }
}

wire_struct! {
    /// Metadata response.
    pub struct MetadataResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub brokers: Vec<BrokerInfo>,
        pub topics: Vec<TopicMetadata>,
    }
}

wire_struct! {
    /// A configuration override.
    pub struct ConfigEntry {
        pub key: String,
        pub value: String,
    }
}

wire_struct! {
    /// One topic to create.
    pub struct CreateTopic {
        pub name: String,
        pub partitions: u32,
        pub configs: Vec<ConfigEntry>,
    }
}

wire_struct! {
    /// CreateTopics request.
    pub struct CreateTopicsRequest {
        pub topics: Vec<CreateTopic>,
    }
}

wire_struct! {
    /// The outcome for one topic of a create or delete.
    pub struct TopicResult {
        pub name: String,
        pub topic_id: [u8; 16],
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// CreateTopics response.
    pub struct CreateTopicsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub topics: Vec<TopicResult>,
    }
}

wire_struct! {
    /// DeleteTopics request.
    pub struct DeleteTopicsRequest {
        pub names: Vec<String>,
    }
}

wire_struct! {
    /// DeleteTopics response.
    pub struct DeleteTopicsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub topics: Vec<TopicResult>,
    }
}

wire_struct! {
    /// Batches for one partition: one or more whole record batches, concatenated.
    pub struct ProducePartition {
        pub partition: u32,
        pub records: Bytes,
    }
}

wire_struct! {
    /// Batches for one topic.
    pub struct ProduceTopic {
        pub name: String,
        pub partitions: Vec<ProducePartition>,
    }
}

wire_struct! {
    /// Produce request. With `acks = None` the broker sends no response.
    pub struct ProduceRequest {
        pub acks: Acks,
        /// How long the broker may wait for durability before answering RequestTimedOut.
        pub timeout_ms: u32,
        pub topics: Vec<ProduceTopic>,
    }
}

wire_struct! {
    /// The outcome for one partition of a produce.
    pub struct ProducePartitionResponse {
        pub partition: u32,
        pub error: ErrorCode,
        pub error_message: Option<String>,
        /// Offset of the first record appended (-1 on error).
        pub base_offset: i64,
        pub log_start_offset: i64,
    }
}

wire_struct! {
    /// The outcome for one topic of a produce.
    pub struct ProduceTopicResponse {
        pub name: String,
        pub partitions: Vec<ProducePartitionResponse>,
    }
}

wire_struct! {
    /// Produce response.
    pub struct ProduceResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub topics: Vec<ProduceTopicResponse>,
    }
}

wire_struct! {
    /// Where to fetch one partition from.
    pub struct FetchPartition {
        pub partition: u32,
        pub fetch_offset: i64,
        pub partition_max_bytes: u32,
    }
}

wire_struct! {
    /// Partitions of one topic to fetch.
    pub struct FetchTopic {
        pub name: String,
        pub partitions: Vec<FetchPartition>,
    }
}

wire_struct! {
    /// Fetch request: waits up to `max_wait_ms` until at least `min_bytes` are available.
    pub struct FetchRequest {
        pub max_wait_ms: u32,
        pub min_bytes: u32,
        pub max_bytes: u32,
        pub isolation: Isolation,
        pub topics: Vec<FetchTopic>,
    }
}

wire_struct! {
    /// A transaction whose records a read-committed consumer must skip (issue #4).
    pub struct AbortedTransaction {
        pub producer_id: i64,
        pub first_offset: i64,
    }
}

wire_struct! {
    /// Fetched data for one partition: raw record batches as stored.
    pub struct FetchPartitionResponse {
        pub partition: u32,
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub high_watermark: i64,
        pub last_stable_offset: i64,
        pub log_start_offset: i64,
        pub aborted_transactions: Vec<AbortedTransaction>,
        pub records: Bytes,
    }
}

wire_struct! {
    /// Fetched data for one topic.
    pub struct FetchTopicResponse {
        pub name: String,
        pub partitions: Vec<FetchPartitionResponse>,
    }
}

wire_struct! {
    /// Fetch response.
    pub struct FetchResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub topics: Vec<FetchTopicResponse>,
    }
}

wire_struct! {
    /// One partition to look up.
    pub struct ListOffsetsPartition {
        pub partition: u32,
        /// `LIST_OFFSETS_LATEST`, `LIST_OFFSETS_EARLIEST`, or a timestamp in ms.
        pub timestamp: i64,
    }
}

wire_struct! {
    /// Partitions of one topic to look up.
    pub struct ListOffsetsTopic {
        pub name: String,
        pub partitions: Vec<ListOffsetsPartition>,
    }
}

wire_struct! {
    /// ListOffsets request.
    pub struct ListOffsetsRequest {
        pub topics: Vec<ListOffsetsTopic>,
    }
}

wire_struct! {
    /// The answer for one partition: -1 when no offset matches the timestamp.
    pub struct ListOffsetsPartitionResponse {
        pub partition: u32,
        pub error: ErrorCode,
        pub offset: i64,
    }
}

wire_struct! {
    /// The answers for one topic.
    pub struct ListOffsetsTopicResponse {
        pub name: String,
        pub partitions: Vec<ListOffsetsPartitionResponse>,
    }
}

wire_struct! {
    /// ListOffsets response.
    pub struct ListOffsetsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub topics: Vec<ListOffsetsTopicResponse>,
    }
}

wire_struct! {
    /// Partitions of one topic.
    pub struct TopicPartitions {
        pub topic: String,
        pub partitions: Vec<u32>,
    }
}

wire_struct! {
    /// Join or heartbeat in a consumer group (broker-side assignment). An empty `member_id`
    /// joins; the broker answers with the member id, the group generation and the member's
    /// current assignment. Members send it every `heartbeat_interval_ms`.
    pub struct GroupHeartbeatRequest {
        pub group_id: String,
        pub member_id: String,
        /// The generation the member last saw (0 when joining).
        pub generation: i32,
        pub client_id: String,
        pub topics: Vec<String>,
        /// `range`, `roundrobin` or `sticky` (empty: the group's current or `range`).
        pub assignor: String,
        /// 0 for the broker's default.
        pub session_timeout_ms: u32,
    }
}

wire_struct! {
    /// The member's current view of the group.
    pub struct GroupHeartbeatResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub member_id: String,
        pub generation: i32,
        pub heartbeat_interval_ms: u32,
        pub assignment: Vec<TopicPartitions>,
    }
}

wire_struct! {
    /// Leave a group at once (instead of timing out).
    pub struct LeaveGroupRequest {
        pub group_id: String,
        pub member_id: String,
    }
}

wire_struct! {
    /// LeaveGroup response.
    pub struct LeaveGroupResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// One offset to commit.
    pub struct OffsetCommitPartition {
        pub partition: u32,
        /// The next offset to consume.
        pub offset: i64,
        pub metadata: Option<String>,
    }
}

wire_struct! {
    /// Offsets of one topic to commit.
    pub struct OffsetCommitTopic {
        pub name: String,
        pub partitions: Vec<OffsetCommitPartition>,
    }
}

wire_struct! {
    /// Commit offsets. A group member passes its member id and generation (a stale one is
    /// rejected); a consumer with manual assignment passes an empty member id and generation
    /// -1, accepted only while the group has no members.
    pub struct OffsetCommitRequest {
        pub group_id: String,
        pub member_id: String,
        pub generation: i32,
        pub topics: Vec<OffsetCommitTopic>,
    }
}

wire_struct! {
    /// The outcome for one partition of a commit.
    pub struct PartitionError {
        pub partition: u32,
        pub error: ErrorCode,
    }
}

wire_struct! {
    /// The outcome for one topic of a commit.
    pub struct OffsetCommitTopicResponse {
        pub name: String,
        pub partitions: Vec<PartitionError>,
    }
}

wire_struct! {
    /// OffsetCommit response.
    pub struct OffsetCommitResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub topics: Vec<OffsetCommitTopicResponse>,
    }
}

wire_struct! {
    /// Committed offsets to read: the listed partitions, or all of the group's when null.
    pub struct OffsetFetchRequest {
        pub group_id: String,
        pub topics: Option<Vec<TopicPartitions>>,
    }
}

wire_struct! {
    /// A committed offset (-1 when none).
    pub struct OffsetFetchPartition {
        pub partition: u32,
        pub offset: i64,
        pub metadata: Option<String>,
        pub error: ErrorCode,
    }
}

wire_struct! {
    /// Committed offsets of one topic.
    pub struct OffsetFetchTopic {
        pub name: String,
        pub partitions: Vec<OffsetFetchPartition>,
    }
}

wire_struct! {
    /// OffsetFetch response.
    pub struct OffsetFetchResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub topics: Vec<OffsetFetchTopic>,
    }
}

wire_struct! {
    /// DescribeGroups request.
    pub struct DescribeGroupsRequest {
        pub group_ids: Vec<String>,
    }
}

wire_struct! {
    /// One member of a group.
    pub struct GroupMember {
        pub member_id: String,
        pub client_id: String,
        pub topics: Vec<String>,
        pub assignment: Vec<TopicPartitions>,
    }
}

wire_struct! {
    /// One group described.
    pub struct GroupDescription {
        pub group_id: String,
        pub error: ErrorCode,
        /// `empty` or `stable`.
        pub state: String,
        pub generation: i32,
        pub assignor: String,
        pub members: Vec<GroupMember>,
    }
}

wire_struct! {
    /// DescribeGroups response.
    pub struct DescribeGroupsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub groups: Vec<GroupDescription>,
    }
}

wire_struct! {
    /// ListGroups request.
    pub struct ListGroupsRequest {}
}

wire_struct! {
    /// One group listed.
    pub struct GroupListing {
        pub group_id: String,
        pub state: String,
        pub member_count: u32,
    }
}

wire_struct! {
    /// ListGroups response.
    pub struct ListGroupsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub groups: Vec<GroupListing>,
    }
}

wire_struct! {
    /// Asks for a producer id and epoch (idempotent and transactional producers). With a
    /// transactional id the broker fences any earlier producer of that id (issue #4).
    pub struct InitProducerIdRequest {
        pub transactional_id: Option<String>,
        pub transaction_timeout_ms: u32,
    }
}

wire_struct! {
    /// The producer id and epoch to stamp on batches.
    pub struct InitProducerIdResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub producer_id: i64,
        pub producer_epoch: i16,
    }
}

wire_enum! {
    /// How a transaction ends.
    #[derive(Default)]
    pub enum TxnResult: u8 {
        /// Discard everything the transaction wrote.
        #[default]
        Abort = 0,
        /// Make everything the transaction wrote visible, atomically.
        Commit = 1,
    }
}

wire_struct! {
    /// Registers partitions the transaction will write to (before producing to them).
    pub struct AddPartitionsToTxnRequest {
        pub transactional_id: String,
        pub producer_id: i64,
        pub producer_epoch: i16,
        pub topics: Vec<TopicPartitions>,
    }
}

wire_struct! {
    /// AddPartitionsToTxn response.
    pub struct AddPartitionsToTxnResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// Registers a consumer group whose offsets the transaction will commit.
    pub struct AddOffsetsToTxnRequest {
        pub transactional_id: String,
        pub producer_id: i64,
        pub producer_epoch: i16,
        pub group_id: String,
    }
}

wire_struct! {
    /// AddOffsetsToTxn response.
    pub struct AddOffsetsToTxnResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// Consumer offsets committed only if the transaction commits (consume-transform-produce).
    /// Member id and generation are checked like a plain commit's (empty and -1 for a
    /// consumer with manual assignment).
    pub struct TxnOffsetCommitRequest {
        pub transactional_id: String,
        pub group_id: String,
        pub producer_id: i64,
        pub producer_epoch: i16,
        pub member_id: String,
        pub generation: i32,
        pub topics: Vec<OffsetCommitTopic>,
    }
}

wire_struct! {
    /// TxnOffsetCommit response.
    pub struct TxnOffsetCommitResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// Commits or aborts the transaction: the broker writes a marker to every partition in
    /// it, then answers.
    pub struct EndTxnRequest {
        pub transactional_id: String,
        pub producer_id: i64,
        pub producer_epoch: i16,
        pub result: TxnResult,
    }
}

wire_struct! {
    /// EndTxn response.
    pub struct EndTxnResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// A message header on the queue apis.
    pub struct HeaderEntry {
        pub key: String,
        pub value: Option<Bytes>,
    }
}

wire_struct! {
    /// Declares an exchange (idempotent when the kind matches).
    pub struct DeclareExchangeRequest {
        pub name: String,
        /// `direct`, `fanout`, `topic` or `headers`.
        pub kind: String,
        pub durable: bool,
    }
}

wire_struct! {
    /// Declares a queue (idempotent when the arguments match). Arguments: `message-ttl-ms`,
    /// `max-length`, `overflow` (`drop-head` | `reject-publish`), `dead-letter-exchange`,
    /// `dead-letter-routing-key`, `delivery-limit`, `single-active-consumer`,
    /// `ack-timeout-ms`.
    pub struct DeclareQueueRequest {
        pub name: String,
        pub durable: bool,
        pub args: Vec<ConfigEntry>,
    }
}

wire_struct! {
    /// Deletes a queue with its messages and bindings.
    pub struct DeleteQueueRequest {
        pub name: String,
    }
}

wire_struct! {
    /// Binds (or unbinds) a queue to an exchange; headers exchanges match on `headers`
    /// (with `x-match` = `all` | `any`).
    pub struct BindQueueRequest {
        pub queue: String,
        pub exchange: String,
        pub routing_key: String,
        pub headers: Vec<ConfigEntry>,
    }
}

wire_struct! {
    /// Publishes one message. The answer comes once the message is durable in every queue
    /// it routed to (a publisher confirm); a client that does not want to wait pipelines.
    /// An unroutable message is an `Unroutable` error when `mandatory`, else dropped.
    pub struct PublishRequest {
        pub exchange: String,
        pub routing_key: String,
        pub mandatory: bool,
        pub headers: Vec<HeaderEntry>,
        pub body: Bytes,
    }
}

wire_struct! {
    /// Publish answer: the queues the message is stored in.
    pub struct PublishResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub queues: Vec<String>,
    }
}

wire_struct! {
    /// Many publishes in one request (issue #15): each message is handled exactly as a
    /// `Publish` of its own, in order, and gets its own confirm in the answer. Messages to
    /// one queue are stored together, so a batch costs one append and one fsync per queue.
    pub struct PublishBatchRequest {
        pub messages: Vec<PublishRequest>,
    }
}

wire_struct! {
    /// PublishBatch answer: one `PublishResponse` per message, in request order, sent once
    /// every message is confirmed or refused. `error` is for the request as a whole (then
    /// `results` is empty and nothing was published).
    pub struct PublishBatchResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub results: Vec<PublishResponse>,
    }
}

wire_struct! {
    /// Starts a consumer. Deliveries then arrive as `Deliver` frames carrying this
    /// request's correlation id, until the consumer is cancelled or the connection closes.
    pub struct SubscribeRequest {
        pub queue: String,
        /// Most unacknowledged deliveries at once (0: unlimited).
        pub prefetch: u32,
    }
}

wire_struct! {
    /// Subscribe answer.
    pub struct SubscribeResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub consumer_id: u64,
    }
}

wire_struct! {
    /// A message pushed to a consumer (api key `Deliver`, never answered).
    pub struct DeliverPush {
        pub consumer_id: u64,
        pub delivery_tag: u64,
        pub redelivered: bool,
        pub routing_key: String,
        pub timestamp_ms: i64,
        pub headers: Vec<HeaderEntry>,
        pub body: Bytes,
    }
}

wire_struct! {
    /// One delivery of a [`DeliverBatchPush`]: its tag and whether it was delivered before.
    pub struct DeliveryMark {
        pub delivery_tag: u64,
        pub redelivered: bool,
    }
}

wire_struct! {
    /// Several messages pushed to one consumer (api key `DeliverBatch`, never answered),
    /// sent instead of `Deliver` pushes to a consumer that subscribed at version 1. The
    /// messages are the queue's stored records, unchanged: `records` holds one record per
    /// mark, in order, in the record encoding of a RecordBatch v2 (docs/STORAGE.md), whose
    /// offset and timestamp deltas count from `base_offset` and `base_timestamp`. A record's
    /// key is the routing key and its value the body; its headers are the message's.
    pub struct DeliverBatchPush {
        pub consumer_id: u64,
        pub base_offset: i64,
        pub base_timestamp: i64,
        pub marks: Vec<DeliveryMark>,
        pub records: Bytes,
    }
}

impl DeliverBatchPush {
    /// The records, one per mark, decoded as they are iterated (keys, values and header
    /// values are slices of `records`). A record count other than the marks' or a malformed
    /// record is the iterator's error.
    pub fn records(&self) -> crate::batch::Records {
        let count = i32::try_from(self.marks.len()).unwrap_or(i32::MAX);
        crate::batch::Records::of_run(
            self.records.clone(),
            count,
            self.base_offset,
            self.base_timestamp,
        )
    }
}

wire_struct! {
    /// The broker cancelled a consumer on its own (api key `ConsumerCancelled`, a push
    /// carrying the Subscribe's correlation id, never answered). No further `Deliver`
    /// follows for it. After an ack timeout its unacknowledged deliveries are back in the
    /// queue; after a queue delete they went with the queue.
    pub struct ConsumerCancelledPush {
        pub consumer_id: u64,
        pub queue: String,
        /// `AckTimeout` or `UnknownQueue` (the queue was deleted).
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// Acknowledges (`requeue` ignored), or with `negative` rejects: back to the queue when
    /// `requeue`, else dead-lettered. `multiple` covers every earlier tag of the consumer.
    pub struct AckRequest {
        pub queue: String,
        pub consumer_id: u64,
        pub delivery_tag: u64,
        pub multiple: bool,
        pub negative: bool,
        pub requeue: bool,
    }
}

wire_struct! {
    /// Stops a consumer; its unacknowledged deliveries return to the queue.
    pub struct CancelRequest {
        pub queue: String,
        pub consumer_id: u64,
    }
}

wire_struct! {
    /// Removes every ready message of a queue.
    pub struct PurgeQueueRequest {
        pub name: String,
    }
}

wire_struct! {
    /// Purge answer.
    pub struct PurgeQueueResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub purged: u64,
    }
}

wire_struct! {
    /// Lists queues.
    pub struct ListQueuesRequest {}
}

wire_struct! {
    /// One queue's counts: `ready` excludes delayed messages, which `delayed` counts.
    pub struct QueueListing {
        pub name: String,
        pub durable: bool,
        pub ready: u64,
        pub unacked: u64,
        pub consumers: u64,
        /// Messages waiting for their `x-delay` (not in `ready`); appended in place to v0
        /// (docs/PROTOCOL.md, version history).
        pub delayed: u64,
    }
}

wire_struct! {
    /// ListQueues answer.
    pub struct ListQueuesResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub queues: Vec<QueueListing>,
    }
}

wire_struct! {
    /// An answer that carries only the error (queue admin and acks).
    pub struct QueueAdminResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// Deletes an exchange and its bindings (not the built-in ones).
    pub struct DeleteExchangeRequest {
        pub name: String,
    }
}

wire_struct! {
    /// Lists exchanges.
    pub struct ListExchangesRequest {}
}

wire_struct! {
    /// One exchange.
    pub struct ExchangeListing {
        pub name: String,
        pub kind: String,
        pub durable: bool,
        pub bindings: u32,
    }
}

wire_struct! {
    /// ListExchanges answer.
    pub struct ListExchangesResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub exchanges: Vec<ExchangeListing>,
    }
}

// ---- Stream and group admin (api keys 35..=39, issue #13) ----

wire_struct! {
    /// Sets config overrides of a topic (each key replaces its earlier override; keys not
    /// named keep theirs). Validated as CreateTopics validates them.
    pub struct AlterTopicConfigsRequest {
        pub topic: String,
        pub configs: Vec<ConfigEntry>,
    }
}

wire_struct! {
    /// Grows a topic to `partition_count` partitions in all (Kafka's CreatePartitions: the
    /// new total, which must exceed the current count).
    pub struct CreatePartitionsRequest {
        pub topic: String,
        pub partition_count: u32,
    }
}

wire_struct! {
    /// An answer that carries only the error (stream and group admin).
    pub struct StreamAdminResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// Asks for a topic's configs: its overrides and the broker defaults of the rest.
    pub struct DescribeTopicConfigsRequest {
        pub topic: String,
    }
}

wire_enum! {
    /// Where a topic config's value comes from.
    #[derive(Default)]
    pub enum ConfigSource: u8 {
        /// The broker's default (its config file or built-in value).
        #[default]
        Default = 0,
        /// An override set on the topic (at create or by AlterTopicConfigs).
        TopicOverride = 1,
    }
}

wire_struct! {
    /// One effective config of a topic.
    pub struct TopicConfigEntry {
        pub key: String,
        pub value: String,
        pub source: ConfigSource,
    }
}

wire_struct! {
    /// DescribeTopicConfigs answer: every topic config key, sorted by key.
    pub struct DescribeTopicConfigsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub configs: Vec<TopicConfigEntry>,
    }
}

wire_enum! {
    /// Where ResetOffsets moves a group's committed offsets.
    #[derive(Default)]
    pub enum ResetTo: u8 {
        /// Each partition's log start offset.
        #[default]
        Earliest = 0,
        /// Each partition's end (high watermark).
        Latest = 1,
        /// `value`, clamped to each partition's [log start, end].
        Offset = 2,
        /// The first record at or after the timestamp `value` (ms); the end if none.
        Timestamp = 3,
    }
}

wire_struct! {
    /// Plans (and with `execute`, commits) new committed offsets of a group on every
    /// partition of a topic. Refused with GroupNotEmpty while the group has members.
    pub struct ResetOffsetsRequest {
        pub group_id: String,
        pub topic: String,
        pub to: ResetTo,
        /// The offset or timestamp (ms) for `Offset` and `Timestamp`; ignored otherwise.
        pub value: i64,
        /// False: a dry run that only answers the plan.
        pub execute: bool,
    }
}

wire_struct! {
    /// One partition's planned (or committed) offset.
    pub struct ResetOffsetsPartition {
        pub partition: u32,
        /// The committed offset before the reset (-1: none).
        pub current_offset: i64,
        pub new_offset: i64,
        pub error: ErrorCode,
    }
}

wire_struct! {
    /// ResetOffsets answer: one row per partition, in partition order.
    pub struct ResetOffsetsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        /// True when the offsets were committed (the request's `execute`).
        pub executed: bool,
        pub partitions: Vec<ResetOffsetsPartition>,
    }
}

wire_struct! {
    /// Deletes a group's committed offsets. Refused with GroupNotEmpty while it has members
    /// and with GroupIdNotFound when it has neither members nor committed offsets.
    pub struct DeleteGroupRequest {
        pub group_id: String,
    }
}

wire_enum! {
    /// What QueueGet does with the messages it returns.
    #[derive(Default)]
    pub enum GetAckMode: u8 {
        /// They stay in the queue at their places, marked redelivered, as after RabbitMQ's
        /// `basic.get` and a `basic.nack` with requeue.
        #[default]
        Requeue = 0,
        /// They leave the queue: the answer comes once their removal is durable, as
        /// RabbitMQ's `basic.get` with `no-ack`.
        Ack = 1,
    }
}

wire_struct! {
    /// Takes up to `count` ready messages from the head of a queue without a subscription
    /// (RabbitMQ's `basic.get`, `rabbitmqadmin get`). Delayed and unacknowledged messages
    /// are not looked at.
    pub struct QueueGetRequest {
        pub queue: String,
        /// Most messages returned (0 is refused).
        pub count: u32,
        pub ack_mode: GetAckMode,
    }
}

wire_struct! {
    /// One message returned by QueueGet (a `Deliver` without consumer and tag).
    pub struct GotMessage {
        /// True if the message was delivered (or got) before this get.
        pub redelivered: bool,
        pub routing_key: String,
        pub timestamp_ms: i64,
        pub headers: Vec<HeaderEntry>,
        pub body: Bytes,
    }
}

wire_struct! {
    /// QueueGet answer: the messages in queue order; empty when no message is ready.
    pub struct QueueGetResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub messages: Vec<GotMessage>,
    }
}

wire_struct! {
    /// Lists bindings: every one, or (with `queue`) those of one queue.
    pub struct ListBindingsRequest {
        pub queue: Option<String>,
    }
}

wire_struct! {
    /// One binding: messages published to `exchange` that match go to `queue`.
    pub struct BindingListing {
        /// The source exchange (`""`: the default exchange, which binds every queue by its
        /// name).
        pub exchange: String,
        /// The destination queue.
        pub queue: String,
        /// The routing key, or the pattern of a topic exchange (empty for fanout and headers
        /// exchanges, which ignore it).
        pub routing_key: String,
        /// The headers a headers exchange matches, `x-match` first; empty otherwise.
        pub arguments: Vec<ConfigEntry>,
    }
}

wire_struct! {
    /// ListBindings answer, sorted by exchange, queue, routing key.
    pub struct ListBindingsResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub bindings: Vec<BindingListing>,
    }
}

wire_struct! {
    /// Moves every ready message of `source` to the end of queue `destination`, in order,
    /// keeping routing key, headers and body (a shovel, for putting dead-lettered messages
    /// back). Each message is removed from `source` only after it is durable in
    /// `destination`: at-least-once, so a crash mid-move can leave a message in both.
    pub struct MoveMessagesRequest {
        pub source: String,
        pub destination: String,
    }
}

wire_struct! {
    /// MoveMessages answer: how many messages were moved, also when an error stopped the
    /// move part-way (the rest stay in the source).
    pub struct MoveMessagesResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub moved: u64,
    }
}

wire_struct! {
    /// Chooses the SASL mechanism of the SaslAuthenticates that follow (issue #18):
    /// `SCRAM-SHA-256`, `SCRAM-SHA-512`, or `PLAIN` (over TLS only).
    pub struct SaslHandshakeRequest {
        pub mechanism: String,
    }
}

wire_struct! {
    /// The mechanisms the listener offers; an error if the chosen one is not among them.
    pub struct SaslHandshakeResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub mechanisms: Vec<String>,
    }
}

wire_struct! {
    /// One SASL message of the chosen mechanism (SCRAM: client-first, then client-final;
    /// PLAIN: the one message).
    pub struct SaslAuthenticateRequest {
        pub auth_bytes: Bytes,
    }
}

wire_struct! {
    /// The server's SASL message (SCRAM: server-first, then server-final; PLAIN: empty).
    pub struct SaslAuthenticateResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub auth_bytes: Bytes,
    }
}

wire_struct! {
    /// A SCRAM credential as the client salted it (Kafka's AlterUserScramCredentials shape):
    /// the password itself never travels.
    pub struct ScramCredentialUpsert {
        /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
        pub mechanism: String,
        pub iterations: u32,
        pub salt: Bytes,
        /// `Hi(password, salt, iterations)`.
        pub salted_password: Bytes,
    }
}

wire_struct! {
    /// CreateUser (fails if the user exists) and AlterUserCredentials (fails if not): sets
    /// the listed credentials; the user's other mechanisms are left as they are.
    pub struct UserCredentialsRequest {
        pub name: String,
        pub credentials: Vec<ScramCredentialUpsert>,
    }
}

wire_struct! {
    /// Deletes a user and all its credentials.
    pub struct DeleteUserRequest {
        pub name: String,
    }
}

wire_struct! {
    /// Lists every user.
    pub struct ListUsersRequest {}
}

wire_struct! {
    /// An answer that carries only the error (user admin).
    pub struct UserAdminResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// One user's credential: never a key.
    pub struct UserCredentialInfo {
        pub mechanism: String,
        pub iterations: u32,
    }
}

wire_struct! {
    /// One user.
    pub struct UserListing {
        pub name: String,
        pub credentials: Vec<UserCredentialInfo>,
    }
}

wire_struct! {
    /// Every user, by name.
    pub struct ListUsersResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub users: Vec<UserListing>,
    }
}

wire_struct! {
    /// One ACL (issue #18), its enums as the names `wharf acl` and the HTTP API use:
    /// `resource_type` is `topic`, `group`, `transactional-id`, `cluster`, `queue` or
    /// `exchange`; `pattern_type` `literal` or `prefixed`; `operation` one of Kafka's names
    /// (`Read`, `DescribeConfigs`, ...); `permission` `allow` or `deny`.
    pub struct AclEntry {
        pub principal: String,
        pub host: String,
        pub resource_type: String,
        pub pattern_type: String,
        pub name: String,
        pub operation: String,
        pub permission: String,
    }
}

wire_struct! {
    /// Adds ACLs, all or none: one malformed ACL refuses the request (InvalidAcl).
    pub struct CreateAclsRequest {
        pub acls: Vec<AclEntry>,
    }
}

wire_struct! {
    /// A filter over the ACLs (DescribeAcls lists, DeleteAcls removes what it selects): each
    /// field given must match; `pattern` is `any`, `match` (the ACLs that apply to `name`),
    /// `literal` or `prefixed`.
    pub struct AclFilterRequest {
        pub principal: Option<String>,
        pub host: Option<String>,
        pub resource_type: Option<String>,
        pub pattern: String,
        pub name: Option<String>,
        pub operation: Option<String>,
        pub permission: Option<String>,
    }
}

wire_struct! {
    /// An answer that carries only the error (CreateAcls).
    pub struct AclAdminResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
    }
}

wire_struct! {
    /// The ACLs a filter selected (DescribeAcls) or removed (DeleteAcls).
    pub struct AclListResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub acls: Vec<AclEntry>,
    }
}

wire_struct! {
    /// The broker holds this connection's publishes (`blocked`: the disk alarm is on; the
    /// held publish waits, nothing is refused) or lets them go again (api key
    /// `ConnectionBlocked`, a push with correlation id 0, never answered).
    pub struct ConnectionBlockedPush {
        pub blocked: bool,
        /// Why (`low on disk`); null when unblocked.
        pub reason: Option<String>,
    }
}

wire_struct! {
    /// DescribeCluster: this node's view of the cluster (issue #20). Empty body.
    pub struct DescribeClusterRequest {}
}

wire_struct! {
    /// One member of the cluster.
    pub struct ClusterNodeEntry {
        pub node_id: u64,
        /// Its internal (broker-to-broker) listener, `HOST:PORT` (empty for a lone node).
        pub address: String,
        /// True for a voter, false for a learner still catching up.
        pub voter: bool,
    }
}

wire_struct! {
    /// DescribeCluster answer.
    pub struct DescribeClusterResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        /// The node that answered.
        pub node_id: u64,
        /// The cluster's id (None before the cluster has formed).
        pub cluster_id: Option<String>,
        /// The leader the node knows of, -1 for none.
        pub leader_id: i64,
        /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
        pub role: String,
        /// The metadata log's current term.
        pub term: u64,
        /// The last index in the node's metadata log, and the last it applied.
        pub last_log_index: u64,
        pub last_applied_index: u64,
        /// The members, by node id.
        pub nodes: Vec<ClusterNodeEntry>,
    }
}

wire_struct! {
    /// AddNode: node `node_id`, whose internal listener is at `address`, joins the cluster.
    pub struct AddNodeRequest {
        pub node_id: u64,
        pub address: String,
    }
}

wire_struct! {
    /// RemoveNode: node `node_id` leaves the cluster.
    pub struct RemoveNodeRequest {
        pub node_id: u64,
    }
}

wire_struct! {
    /// CancelDrain: node `node_id`, being drained before its removal, takes replicas again;
    /// moves under way go on.
    pub struct CancelDrainRequest {
        pub node_id: u64,
    }
}

wire_struct! {
    /// DescribeReplicas: where `topic`'s partitions are replicated and how far each replica
    /// is behind, as the answering node knows it (issue #21).
    pub struct DescribeReplicasRequest {
        pub topic: String,
    }
}

wire_struct! {
    /// One follower of a replicated partition, as its leader sees it.
    pub struct ReplicaFollowerEntry {
        pub node_id: u64,
        /// Entries of the leader's log it does not have yet.
        pub lag_entries: u64,
        /// It is in sync: it answered the leader within 6 s and has every entry the leader
        /// had 6 s ago, or every one it applied (Kafka's ISR rule, docs/CLUSTER.md).
        pub in_sync: bool,
    }
}

wire_struct! {
    /// One partition's replicas.
    pub struct ReplicaPartitionEntry {
        pub partition: u32,
        /// The nodes holding a replica (the metadata's placement); one for an unreplicated
        /// partition.
        pub replicas: Vec<u64>,
        /// The leader the answering node knows, -1 for none.
        pub leader: i64,
        /// The answering node's term of the partition's group (0: not replicated).
        pub term: u64,
        /// Each follower's lag, when the answering node leads the partition; empty
        /// otherwise (ask the leader).
        pub followers: Vec<ReplicaFollowerEntry>,
    }
}

wire_struct! {
    /// DescribeReplicas answer.
    pub struct DescribeReplicasResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        /// The node that answered.
        pub node_id: u64,
        pub partitions: Vec<ReplicaPartitionEntry>,
    }
}

wire_struct! {
    /// FindCoordinator: the node coordinating consumer group or transactional id `key`
    /// (issue #20; every key has the same coordinator today).
    pub struct FindCoordinatorRequest {
        pub key: String,
    }
}

wire_struct! {
    /// FindCoordinator answer: the coordinator's native listener, or NotCoordinator with
    /// `node_id` -1 while the answering node knows none (an election; retry).
    pub struct FindCoordinatorResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub coordinator: BrokerInfo,
    }
}

wire_struct! {
    /// Rebalance: with `start`, moves replicated partitions and queues onto the nodes
    /// holding fewest replicas (`wharf cluster rebalance`); without, only lists the moves
    /// under way.
    pub struct RebalanceRequest {
        pub start: bool,
    }
}

wire_struct! {
    /// One replicated partition or queue being moved.
    pub struct ReplicaMoveEntry {
        /// The topic's or the queue's name.
        pub name: String,
        /// The partition; -1 for a queue.
        pub partition: i64,
        /// The nodes its group runs on.
        pub from: Vec<u64>,
        /// The nodes it moves to.
        pub to: Vec<u64>,
    }
}

wire_struct! {
    /// Rebalance answer: the moves under way once the request was applied.
    pub struct RebalanceResponse {
        pub error: ErrorCode,
        pub error_message: Option<String>,
        pub moves: Vec<ReplicaMoveEntry>,
    }
}
