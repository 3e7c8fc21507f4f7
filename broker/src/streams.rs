//! Streams (the Kafka model): the topic catalog, idempotent producer state, and the rules of
//! produce, fetch and list-offsets, over partition logs written only through the
//! [`crate::append`] path.
//!
//! - [`topic`]: the catalog (names, UUIDs, partition counts, overrides).
//! - [`producer`]: idempotent producer state per partition, producer ids, and the table of
//!   partitions each transactional producer's open transaction covers.
//! - [`produce`]: which batches may be appended, and how (plain or idempotent).
//! - [`fetch`]: reads with byte budgets, read-committed bounds and long polls.
//!
//! **Layer rule:** speaks domain types only: no wire messages, no wire error codes. Errors
//! are [`StreamError`]; each front end maps them to its own codes.

pub mod compaction;
pub mod fetch;
pub mod produce;
pub mod producer;
pub mod topic;

use std::sync::Arc;

use crate::storage::{Clock, Error as StorageError, Partition};
use producer::{ProducerView, Producers, SequenceRefusal, TxnMembers};
use topic::{TopicError, TopicInfo, Topics, INTERNAL_TOPIC_PREFIX};

/// Longest a produce may wait for durability.
pub const PRODUCE_TIMEOUT_MS_MAX: u32 = 5 * 60_000;
/// How far in the future a batch's timestamp may be (Kafka 4's default): a timestamp far
/// ahead would keep its segment, and every later one, from ever expiring by age.
pub const TIMESTAMP_AHEAD_MS_MAX: i64 = 3600 * 1000;

/// What streams are configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// Create unknown topics on first produce.
    pub auto_create_topics: AutoCreate,
    /// Partitions of an auto-created topic.
    pub default_partitions: u32,
}

/// Whether a produce to an unknown topic creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCreate {
    /// Create it with the default partition count.
    On,
    /// Refuse the produce.
    Off,
}

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Producers cannot write to internal topics.
    #[error("cannot produce to internal topic {0:?}")]
    InternalTopic(String),
    /// The topic does not exist and auto-creation is off.
    #[error("unknown topic {0:?} and auto-create is disabled")]
    AutoCreateDisabled(String),
    /// No such topic.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No such partition.
    #[error("unknown topic or partition {topic}-{partition}")]
    UnknownPartition { topic: String, partition: u32 },
    /// A produce names a partition the topic does not have.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    PartitionOutOfRange {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// Producers cannot write control batches (transaction markers are the broker's).
    #[error("producers cannot write control batches")]
    ControlBatch,
    /// A batch is larger than the topic's `max.message.bytes`.
    #[error("a record batch of {bytes} bytes exceeds max.message.bytes {bytes_max}")]
    MessageTooLarge { bytes: u64, bytes_max: u64 },
    /// The batches of one partition in one produce are more than a replicated partition
    /// takes in one command (`cluster::replica::COMMAND_BYTES_MAX`).
    #[error("the record batches for one partition ({bytes} bytes) exceed the {bytes_max} bytes a replicated partition takes in one produce")]
    RecordListTooLarge { bytes: u64, bytes_max: u64 },
    /// An idempotent produce must carry exactly one batch per partition.
    #[error("an idempotent produce carries exactly one batch per partition")]
    SeveralIdempotentBatches,
    /// A batch's max timestamp is more than [`TIMESTAMP_AHEAD_MS_MAX`] in the future.
    #[error("batch max_timestamp {max_timestamp} is more than {TIMESTAMP_AHEAD_MS_MAX} ms in the future")]
    TimestampAhead { max_timestamp: i64 },
    /// A transactional batch without a producer id.
    #[error("a transactional batch needs a producer id")]
    TransactionalWithoutProducerId,
    /// A batch fails its checksum or header checks.
    #[error("{0}")]
    CorruptBatch(String),
    /// A record without a key for a compacted topic (the cleaner keeps the latest record
    /// per key; Kafka refuses these too).
    #[error("compacted topic {topic:?} cannot accept a record without a key (offset delta {offset_delta})")]
    KeylessRecord { topic: String, offset_delta: i64 },
    /// The producer id was never handed out.
    #[error("producer id {0} was never handed out (InitProducerId first)")]
    UnknownProducerId(i64),
    /// A newer epoch of this transactional producer exists.
    #[error("producer {producer_id} epoch {epoch} was fenced")]
    TxnFenced { producer_id: i64, epoch: i16 },
    /// A transaction marker refused: it comes from a deposed coordinator, or for an older
    /// epoch of the producer (only the coordinator writes markers; no client sees this).
    #[error("the marker of producer {producer_id} for {topic}-{partition} was refused: {refusal}")]
    MarkerRefused {
        topic: String,
        partition: u32,
        producer_id: i64,
        refusal: crate::streams::producer::MarkerRefusal,
    },
    /// A transactional batch for a partition not added to the producer's transaction.
    #[error("{topic}-{partition} was not added to the transaction of producer {producer_id} (AddPartitionsToTxn first)")]
    NotInTransaction {
        topic: String,
        partition: u32,
        producer_id: i64,
    },
    /// The idempotent sequence check refused the batch.
    #[error("producer {producer_id} epoch {epoch} sequence {first_sequence}..={last_sequence} on {topic}-{partition}: {refusal}")]
    Sequence {
        refusal: SequenceRefusal,
        producer_id: i64,
        epoch: i16,
        first_sequence: i32,
        last_sequence: i32,
        topic: String,
        partition: u32,
    },
    /// The append was not durable in time; it may still be stored.
    #[error("not durable within {timeout_ms} ms; the records may still be stored")]
    TimedOut { timeout_ms: u32 },
    /// A topic operation failed.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// Storage failed underneath.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The topic could not be found or created (shared by every partition of a produce).
    #[error("{0}")]
    TopicUnavailable(Arc<StreamError>),
    /// A blocking task failed (a bug or shutdown).
    #[error("{0}")]
    Internal(String),
    /// The caller may not do this (ACLs, issue #18).
    #[error(transparent)]
    Unauthorized(#[from] crate::acl::Denied),
    /// The cluster's metadata log did not take a topic definition (issue #20); with
    /// `no_leader` nothing changed and a retry may succeed, else the outcome is unknown.
    #[error("the cluster's metadata log: {message}")]
    Cluster { no_leader: bool, message: String },
    /// A transactional batch's transaction could not be verified with the coordinator
    /// (another node, unreachable or changing; `core/txn_markers.rs`): nothing written,
    /// retry.
    #[error("the transaction coordinator could not verify the batch's transaction: {0}")]
    TxnUnverified(String),
    /// Another node leads the partition (issue #20): the client asks again where it is
    /// and sends there. `leader` is `None` while the metadata names no reachable leader.
    #[error("{topic}-{partition} is led by {}", match leader { Some(node) => format!("node {node}"), None => "no node right now".to_string() })]
    NotLeader {
        topic: String,
        partition: u32,
        leader: Option<u64>,
    },
    /// A topic asked for more replicas than the cluster has nodes, or none.
    #[error(
        "replication factor {factor} is not between 1 and the {brokers} node(s) of the cluster"
    )]
    InvalidReplicationFactor { factor: u32, brokers: u32 },
    /// The client names an older leader epoch than the partition's leader has (issue
    /// #21): its metadata is stale, and it refreshes it.
    #[error("{topic}-{partition}: leader epoch {client} is older than the leader's {leader}")]
    FencedLeaderEpoch {
        topic: String,
        partition: u32,
        client: i32,
        leader: i32,
    },
    /// The client names a newer leader epoch than this node knows: this node is behind,
    /// and the client asks again.
    #[error(
        "{topic}-{partition}: leader epoch {client} is newer than the {leader} this node knows"
    )]
    UnknownLeaderEpoch {
        topic: String,
        partition: u32,
        client: i32,
        leader: i32,
    },
}

/// Topics, their partition logs and producer state.
#[derive(Debug)]
pub struct Streams {
    topics: Topics,
    producers: Producers,
    txn_members: TxnMembers,
    clock: Arc<dyn Clock>,
    settings: StreamSettings,
}

impl Streams {
    /// Partitions of a topic created without a count.
    pub fn default_partitions(&self) -> u32 {
        self.settings.default_partitions
    }

    /// Streams over opened storage.
    pub fn new(
        topics: Topics,
        producers: Producers,
        clock: Arc<dyn Clock>,
        settings: StreamSettings,
    ) -> Streams {
        Streams {
            topics,
            producers,
            txn_members: TxnMembers::default(),
            clock,
            settings,
        }
    }

    /// The topic catalog.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Idempotent producer state.
    pub fn producers(&self) -> &Producers {
        &self.producers
    }

    /// Which partitions each transactional producer's open transaction covers.
    pub fn txn_members(&self) -> &TxnMembers {
        &self.txn_members
    }

    /// Time.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Partition count of a topic (None if it does not exist).
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|info| info.partitions)
    }

    /// A partition's log.
    pub fn partition(&self, topic: &str, partition: u32) -> Option<Arc<Partition>> {
        self.topics.partition(topic, partition)
    }

    /// Every topic clients may see (internal ones hidden).
    pub fn visible_topics(&self) -> Vec<TopicInfo> {
        self.topics
            .list()
            .into_iter()
            .filter(|info| !info.name.starts_with(INTERNAL_TOPIC_PREFIX))
            .collect()
    }

    /// Creates a topic (blocking: creates and fsyncs files).
    ///
    /// # Errors
    /// As for [`Topics::create`].
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: Vec<(String, String)>,
    ) -> Result<TopicInfo, TopicError> {
        self.topics.create(name, partitions, configs)
    }

    /// [`Streams::create_topic`] with the id the cluster's metadata log gave the topic
    /// (`None`: a fresh one, for a topic the log recorded without an id).
    ///
    /// # Errors
    /// As for [`Topics::create`].
    pub fn create_topic_with_id(
        &self,
        name: &str,
        partitions: u32,
        configs: Vec<(String, String)>,
        topic_id: Option<[u8; 16]>,
    ) -> Result<TopicInfo, TopicError> {
        self.topics
            .create_with_id(name, partitions, configs, topic_id)
    }

    /// Deletes a topic and its partitions' producer state (blocking: removes files).
    ///
    /// # Errors
    /// As for [`Topics::delete`].
    pub fn delete_topic(&self, name: &str) -> Result<TopicInfo, TopicError> {
        let deleted = self.topics.delete(name)?;
        for partition in 0..deleted.partitions {
            self.producers.remove(name, partition);
        }
        Ok(deleted)
    }

    /// Hands out a new producer id (blocking: may write and fsync the id block file).
    ///
    /// # Errors
    /// Storage errors.
    pub fn allocate_producer_id(&self) -> Result<i64, StorageError> {
        self.producers.allocate_id()
    }

    /// Moves a partition's log start up to `offset` (-1: the high watermark), durably
    /// (Kafka's DeleteRecords; blocking: fsyncs). Returns the new log start.
    ///
    /// # Errors
    /// `UnknownPartition`, an offset above the high watermark, or the storage error.
    pub fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<i64, StreamError> {
        self.check_delete_records(topic, partition)?;
        let log =
            self.partition(topic, partition)
                .ok_or_else(|| StreamError::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                })?;
        Ok(log.delete_records_before(offset)?)
    }

    /// Whether records of `topic`'s `partition` may be deleted: not an internal topic's, and
    /// the partition exists.
    ///
    /// # Errors
    /// `InternalTopic`, `UnknownPartition`.
    pub fn check_delete_records(&self, topic: &str, partition: u32) -> Result<(), StreamError> {
        if topic.starts_with(topic::INTERNAL_TOPIC_PREFIX) {
            return Err(StreamError::InternalTopic(topic.to_string()));
        }
        if self.partition(topic, partition).is_none() {
            return Err(StreamError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            });
        }
        Ok(())
    }

    /// The producers with state on a partition (Kafka's DescribeProducers).
    ///
    /// # Errors
    /// `UnknownPartition`.
    pub fn describe_producers(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<ProducerView>, StreamError> {
        if self.partition(topic, partition).is_none() {
            return Err(StreamError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            });
        }
        let shared = self.producers.partition(topic, partition);
        let state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
        Ok(state.describe(self.expired_before(self.clock.now_ms())))
    }

    /// The offset of the first record at or after `timestamp_ms` (`None`: none), or the log
    /// start or end for [`OffsetSpec::Earliest`] and [`OffsetSpec::Latest`].
    ///
    /// # Errors
    /// `UnknownPartition`, or the storage error of a time-index lookup.
    pub fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<i64>, StreamError> {
        let log =
            self.partition(topic, partition)
                .ok_or_else(|| StreamError::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                })?;
        Ok(match spec {
            OffsetSpec::Latest => Some(log.high_watermark()),
            OffsetSpec::LastStable => {
                let high_watermark = log.high_watermark();
                let shared = self.producers.partition(topic, partition);
                let state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
                Some(state.last_stable_offset(high_watermark))
            }
            OffsetSpec::Earliest => Some(log.log_start_offset()),
            OffsetSpec::Timestamp(timestamp_ms) => log.offset_for_timestamp(timestamp_ms)?,
        })
    }
}

/// Which offset a list-offsets query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The high watermark.
    Latest,
    /// The last stable offset: where read_committed consumers' view ends (below the first
    /// record of an undecided transaction).
    LastStable,
    /// The log start offset.
    Earliest,
    /// The first record at or after this timestamp (ms).
    Timestamp(i64),
}
