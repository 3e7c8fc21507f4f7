//! Core operations on streams: topic metadata, create and delete, alter configs, add
//! partitions and describe configs, produce (ordered phase and durability wait), fetch and
//! list offsets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::acl::{Denied, Operation, ResourceType};
use crate::append::Receipt;
use crate::core::{Broker, Session};
use crate::storage::partition::LeaderEpochs;
use crate::streams::fetch::{FetchQuery, FetchedPartition, FetchedTopic, TopicQuery};
use crate::streams::producer::ProducerView;
use crate::streams::topic::{AdminMode, ConfigChange, TopicConfig, TopicInfo};
use crate::streams::{OffsetSpec, StreamError, PRODUCE_TIMEOUT_MS_MAX};

/// When a produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Not at all.
    None,
    /// Once appended.
    Leader,
    /// Once durable (fsynced under `flush = always`).
    All,
}

/// A produce: record batches per topic and partition.
#[derive(Debug, Clone)]
pub struct ProduceQuery {
    /// When to answer.
    pub acks: Acks,
    /// Longest wait for durability (clamped to [`PRODUCE_TIMEOUT_MS_MAX`]).
    pub timeout_ms: u32,
    /// Topic → (partition, raw batches).
    pub topics: Vec<(String, Vec<(u32, Bytes)>)>,
}

/// Where one partition's batches landed.
#[derive(Debug)]
pub struct ProducedPartition {
    /// The partition.
    pub partition: u32,
    /// Where they landed, or why not.
    pub result: Result<Produced, StreamError>,
}

/// Where produced batches landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Offset of the first record (for a retried idempotent batch, the original's).
    pub base_offset: i64,
    /// The partition's log start offset at the append.
    pub log_start_offset: i64,
}

/// One topic's outcome.
#[derive(Debug)]
pub struct ProducedTopic {
    /// The topic.
    pub topic: String,
    /// Its partitions, in request order.
    pub partitions: Vec<ProducedPartition>,
}

/// What remains of a produce after its ordered phase: the durability wait. `None` for
/// acks = none (no answer).
pub type ProduceCompletion = Pin<Box<dyn Future<Output = Option<Vec<ProducedTopic>>> + Send>>;

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: u32,
    /// Config overrides (`retention.ms`, ...).
    pub configs: Vec<(String, String)>,
    /// Replicas per partition in a cluster (`None`: the default, 1 until queues and
    /// transactions are replicated too); a lone node has one.
    pub replication_factor: Option<u32>,
}

/// The answer of a produce to a replicated partition, once its group committed it.
type ReplicatedAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Produced, StreamError>> + Send>>;

/// One partition as metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// The partition.
    pub partition: u32,
    /// Whether its log serves.
    pub status: PartitionStatus,
    /// Log start offset (-1 if missing).
    pub log_start_offset: i64,
    /// High watermark (-1 if missing).
    pub high_watermark: i64,
}

/// Whether a partition's log serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionStatus {
    /// It reads and writes.
    Serving,
    /// It failed (an fsync error) and refuses writes until a restart recovers it.
    Failed,
    /// The catalog lists it but its log is missing.
    Missing,
}

/// One topic as metadata shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    /// The name.
    pub name: String,
    /// Its stable id (`None`: unknown topic).
    pub topic_id: Option<[u8; 16]>,
    /// Its partitions.
    pub partitions: Vec<PartitionView>,
    /// Set when the caller may not describe the topic (nothing else is told then).
    pub denied: Option<Denied>,
}

impl Broker {
    /// Metadata of the named topics (unknown ones have no id), or of every visible topic.
    /// Needs `Describe` on each topic: a listing leaves out the others, a named one the
    /// caller may not describe comes back `denied` (whether it exists is not told).
    pub fn topic_metadata(&self, caller: &Session, names: Option<Vec<String>>) -> Vec<TopicView> {
        match names {
            None => self
                .streams
                .visible_topics()
                .iter()
                .filter(|info| {
                    self.permits(caller, Operation::Describe, ResourceType::Topic, &info.name)
                })
                .map(|info| self.topic_view(info))
                .collect(),
            Some(names) => dedupe(names)
                .into_iter()
                .map(|name| {
                    let denied = self
                        .check(caller, Operation::Describe, ResourceType::Topic, &name)
                        .err();
                    match self.streams.topics().get(&name) {
                        Some(info) if denied.is_none() => self.topic_view(&info),
                        _ => TopicView {
                            name,
                            topic_id: None,
                            partitions: Vec::new(),
                            denied,
                        },
                    }
                })
                .collect(),
        }
    }

    /// Refuses creating topic `name` unless the caller may `Create` on the cluster or on
    /// the topic (Kafka's rule).
    fn check_create_topic(&self, caller: &Session, name: &str) -> Result<(), Denied> {
        if self.permits(
            caller,
            Operation::Create,
            ResourceType::Cluster,
            crate::acl::CLUSTER_NAME,
        ) {
            return Ok(());
        }
        self.check(caller, Operation::Create, ResourceType::Topic, name)
    }

    fn topic_view(&self, info: &TopicInfo) -> TopicView {
        let partitions = (0..info.partitions)
            .map(
                |partition| match self.streams.partition(&info.name, partition) {
                    Some(log) => PartitionView {
                        partition,
                        status: if log.failure().is_some() {
                            PartitionStatus::Failed
                        } else {
                            PartitionStatus::Serving
                        },
                        log_start_offset: log.log_start_offset(),
                        high_watermark: log.high_watermark(),
                    },
                    None => PartitionView {
                        partition,
                        status: PartitionStatus::Missing,
                        log_start_offset: -1,
                        high_watermark: -1,
                    },
                },
            )
            .collect();
        TopicView {
            name: info.name.clone(),
            topic_id: Some(info.topic_id),
            partitions,
            denied: None,
        }
    }

    /// Creates topics one by one on the blocking pool (each creates and fsyncs files), or
    /// under [`AdminMode::ValidateOnly`] only checks that each could be created.
    pub async fn create_topics(
        &self,
        caller: &Session,
        topics: Vec<NewTopic>,
        mode: AdminMode,
    ) -> Vec<(String, Result<TopicInfo, StreamError>)> {
        let mut results = Vec::with_capacity(topics.len());
        for NewTopic {
            name,
            partitions,
            configs,
            replication_factor,
        } in topics
        {
            if let Err(denied) = self.check_create_topic(caller, &name) {
                results.push((name, Err(denied.into())));
                continue;
            }
            let brokers = self.broker_count();
            if let Some(factor) =
                replication_factor.filter(|&factor| factor == 0 || factor > brokers)
            {
                results.push((
                    name,
                    Err(StreamError::InvalidReplicationFactor { factor, brokers }),
                ));
                continue;
            }
            // The factor the metadata will place it with (its default rule).
            let factor = replication_factor
                .unwrap_or_else(|| crate::cluster::metadata::default_factor(brokers as usize));
            if let Err(refused) = check_min_insync(&configs, factor) {
                results.push((name, Err(refused)));
                continue;
            }
            let streams = self.streams.clone();
            let creating = name.clone();
            let outcome = match (mode, self.replicated()) {
                (AdminMode::Apply, Some(cluster)) => {
                    self.create_topic_replicated(
                        cluster,
                        &creating,
                        partitions,
                        configs,
                        replication_factor,
                    )
                    .await
                }
                (AdminMode::Apply, None) => {
                    blocking(move || {
                        streams
                            .create_topic(&creating, partitions, configs)
                            .map_err(StreamError::from)
                    })
                    .await
                }
                (AdminMode::ValidateOnly, _) => streams
                    .topics()
                    .check_create(&creating, partitions, configs)
                    .map_err(StreamError::from),
            };
            results.push((name, outcome));
        }
        results
    }

    /// Deletes topics, their producer state and their committed offsets (a re-created topic
    /// of the same name is a new topic and must not inherit them).
    pub async fn delete_topics(
        &self,
        caller: &Session,
        names: Vec<String>,
    ) -> Vec<(String, Result<TopicInfo, StreamError>)> {
        let mut results = Vec::with_capacity(names.len());
        for name in names {
            if let Err(denied) = self.check(caller, Operation::Delete, ResourceType::Topic, &name) {
                results.push((name, Err(denied.into())));
                continue;
            }
            let streams = self.streams.clone();
            let deleting = name.clone();
            let outcome = match self.replicated() {
                Some(cluster) if streams.topics().get(&name).is_some() => {
                    self.delete_topic_replicated(cluster, &name).await
                }
                _ => {
                    blocking(move || streams.delete_topic(&deleting).map_err(StreamError::from))
                        .await
                }
            };
            if outcome.is_ok() {
                self.txn_gates.forget_topic(&name);
                if let Err(error) = self.offsets.forget_topic(&name).await {
                    tracing::warn!(topic = name, %error, "cannot forget the deleted topic's committed offsets");
                }
            }
            results.push((name, outcome));
        }
        results
    }

    /// Sets config overrides of a topic durably and applies them to its open partitions
    /// (blocking work on the blocking pool: the catalog is rewritten and fsynced).
    ///
    /// # Errors
    /// As [`crate::streams::topic::Topics::alter_configs`].
    pub async fn alter_topic_configs(
        &self,
        caller: &Session,
        name: &str,
        configs: Vec<(String, String)>,
    ) -> Result<TopicInfo, StreamError> {
        self.check(caller, Operation::AlterConfigs, ResourceType::Topic, name)?;
        check_min_insync(&configs, self.placed_factor(name))?;
        if let (Some(cluster), false) = (self.placed_topic(name), configs.is_empty()) {
            let changes = configs
                .into_iter()
                .map(|(key, value)| ConfigChange::Set(key, value))
                .collect();
            return self
                .change_configs_replicated(&cluster, name, changes, false)
                .await;
        }
        let streams = self.streams.clone();
        let name = name.to_string();
        blocking(move || {
            streams
                .topics()
                .alter_configs(&name, configs)
                .map_err(StreamError::from)
        })
        .await
    }

    /// Changes config overrides of a topic durably: sets and deletes, and with `replace` the
    /// removal of every override not set (Kafka's AlterConfigs). Blocking work on the
    /// blocking pool.
    ///
    /// # Errors
    /// As [`crate::streams::topic::Topics::change_configs`].
    pub async fn change_topic_configs(
        &self,
        caller: &Session,
        name: &str,
        changes: Vec<ConfigChange>,
        replace: bool,
        mode: AdminMode,
    ) -> Result<TopicInfo, StreamError> {
        self.check(caller, Operation::AlterConfigs, ResourceType::Topic, name)?;
        let set: Vec<(String, String)> = changes
            .iter()
            .filter_map(|change| match change {
                ConfigChange::Set(key, value) => Some((key.clone(), value.clone())),
                ConfigChange::Delete(_) => None,
            })
            .collect();
        check_min_insync(&set, self.placed_factor(name))?;
        if let (Some(cluster), AdminMode::Apply) = (self.placed_topic(name), mode) {
            return self
                .change_configs_replicated(&cluster, name, changes, replace)
                .await;
        }
        let streams = self.streams.clone();
        let name = name.to_string();
        blocking(move || {
            streams
                .topics()
                .change_configs(&name, changes, replace, mode)
                .map_err(StreamError::from)
        })
        .await
    }

    /// Grows a topic to `partition_count` partitions (blocking work on the blocking pool:
    /// new partition directories and the catalog are created and fsynced).
    ///
    /// # Errors
    /// As [`crate::streams::topic::Topics::add_partitions`].
    pub async fn add_partitions(
        &self,
        caller: &Session,
        name: &str,
        partition_count: u32,
        mode: AdminMode,
    ) -> Result<TopicInfo, StreamError> {
        self.check(caller, Operation::Alter, ResourceType::Topic, name)?;
        if let (Some(cluster), AdminMode::Apply) = (self.placed_topic(name), mode) {
            return self
                .add_partitions_replicated(&cluster, name, partition_count)
                .await;
        }
        let streams = self.streams.clone();
        let name = name.to_string();
        blocking(move || {
            streams
                .topics()
                .add_partitions(&name, partition_count, mode)
                .map_err(StreamError::from)
        })
        .await
    }

    /// A topic's configs in force (its overrides and the broker defaults of the rest).
    /// Internal topics are described too: their configs are not secret.
    ///
    /// # Errors
    /// An unknown topic.
    pub fn describe_topic_configs(
        &self,
        caller: &Session,
        name: &str,
    ) -> Result<Vec<TopicConfig>, StreamError> {
        self.check(
            caller,
            Operation::DescribeConfigs,
            ResourceType::Topic,
            name,
        )?;
        Ok(self.streams.topics().configs(name)?)
    }

    /// The ordered phase of a produce: finds (or creates) each topic and appends each
    /// partition's batches, in request order. The returned completion waits for durability
    /// (acks = all) so that all partitions and pipelined requests share the flusher's fsyncs.
    pub async fn produce(&self, caller: &Session, query: ProduceQuery) -> ProduceCompletion {
        self.charge_produced(
            caller,
            query.topics.iter().flat_map(|(_, p)| p).map(|(_, b)| b),
        );
        let timeout_ms = query.timeout_ms.min(PRODUCE_TIMEOUT_MS_MAX);
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let mut topics = Vec::with_capacity(query.topics.len());
        let mut receipts: Vec<(usize, usize, Receipt)> = Vec::new();
        // Produces to replicated partitions, submitted in order, answered once committed.
        let mut replicated: Vec<(usize, usize, ReplicatedAnswer)> = Vec::new();
        for (topic, produced) in query.topics {
            let info = match self.check(caller, Operation::Write, ResourceType::Topic, &topic) {
                Ok(()) => self.topic_for_produce(caller, &topic).await,
                Err(denied) => Err(denied.into()),
            }
            .map_err(Arc::new);
            // Read after the topic is found or created, so a topic this produce created
            // through the metadata log is placed already.
            let routing = self.routing();
            let mut partitions = Vec::with_capacity(produced.len());
            for (partition, records) in produced {
                let outcome = match &info {
                    Err(error) => Err(StreamError::TopicUnavailable(error.clone())),
                    Ok(info) => match routing
                        .as_ref()
                        .and_then(|routing| routing.refusal(&topic, partition))
                    {
                        Some(refusal) => Err(refusal),
                        None => match self.partition_replica(&topic, partition) {
                            // Placed on several nodes but its group is not running here
                            // (yet): never written outside it.
                            None if routing.as_ref().is_some_and(|routing| {
                                routing
                                    .partition(&topic, partition)
                                    .is_some_and(|placed| placed.in_a_group)
                            }) =>
                            {
                                Err(StreamError::NotLeader {
                                    topic: topic.clone(),
                                    partition,
                                    leader: None,
                                })
                            }
                            None => match self.txn_gate(&topic, partition, &records, None).await {
                                // Looked at again after the gate's wait: a drain may have
                                // put the partition in a group since (its node then adopts
                                // the records as they stand, and a direct append after that
                                // would lie outside the group's checkpoint).
                                Ok(_) if self.written_through_group(&topic, partition) => {
                                    Err(StreamError::NotLeader {
                                        topic: topic.clone(),
                                        partition,
                                        leader: None,
                                    })
                                }
                                // The gate (if any) stays shut until the batch is appended.
                                Ok((txn_check, _gate)) => self
                                    .streams
                                    .append_produced(info, partition, &records, txn_check),
                                Err(error) => Err(error),
                            },
                            Some(replica) => {
                                let submitted = match self
                                    .txn_gate(&topic, partition, &records, Some(&replica))
                                    .await
                                {
                                    // The gate (if any) stays shut until the batch is
                                    // submitted.
                                    Ok((_, _gate)) => {
                                        self.submit_replicated(&replica, info, partition, &records)
                                            .await
                                    }
                                    Err(error) => Err(error),
                                };
                                match submitted {
                                    Ok(pending) => {
                                        let log_start = self
                                            .streams
                                            .produced_log(info, partition)
                                            .map_or(0, |log| log.log_start_offset());
                                        let (topic, at) = (topic.clone(), topics.len());
                                        let answer: ReplicatedAnswer =
                                            Box::pin(async move {
                                                super::replication::produce_answer(
                                                    pending, replica, &topic, partition, timeout_ms,
                                                )
                                                .await
                                                .map(|base_offset| Produced {
                                                    base_offset,
                                                    log_start_offset: log_start,
                                                })
                                            });
                                        replicated.push((at, partitions.len(), answer));
                                        partitions.push(ProducedPartition {
                                            partition,
                                            result: Ok(Produced {
                                                base_offset: -1,
                                                log_start_offset: log_start,
                                            }),
                                        });
                                        continue;
                                    }
                                    Err(error) => Err(error),
                                }
                            }
                        },
                    },
                };
                let result = outcome.map(|receipt| {
                    let answer = Produced {
                        base_offset: receipt.appended().base_offset,
                        log_start_offset: receipt.log().log_start_offset(),
                    };
                    receipts.push((topics.len(), partitions.len(), receipt));
                    answer
                });
                partitions.push(ProducedPartition { partition, result });
            }
            topics.push(ProducedTopic { topic, partitions });
        }
        let acks = query.acks;
        Box::pin(async move {
            // A replicated produce is answered once a majority has it, at acks=1 too (the
            // leader learns its offsets only then); with acks=0 nobody waits, nor does the
            // fault loop's control run (`acks_before_commit`).
            if acks != Acks::None && !super::replication::acks_before_commit() {
                for (topic_index, partition_index, answer) in replicated {
                    let result = match tokio::time::timeout_at(deadline, answer).await {
                        Ok(result) => result,
                        Err(_) => Err(StreamError::TimedOut { timeout_ms }),
                    };
                    topics[topic_index].partitions[partition_index].result = result;
                }
            }
            match acks {
                Acks::None => return None,
                Acks::Leader => {}
                Acks::All => {
                    for (topic_index, partition_index, receipt) in receipts {
                        let failure =
                            match tokio::time::timeout_at(deadline, receipt.durable()).await {
                                Ok(Ok(())) => continue,
                                Ok(Err(error)) => StreamError::from(error),
                                Err(_) => StreamError::TimedOut { timeout_ms },
                            };
                        topics[topic_index].partitions[partition_index].result = Err(failure);
                    }
                }
            }
            Some(topics)
        })
    }

    /// Finds a topic, creating it on the blocking pool when it does not exist (and may be
    /// created).
    async fn topic_for_produce(
        &self,
        caller: &Session,
        name: &str,
    ) -> Result<TopicInfo, StreamError> {
        if let Some(info) = self.streams.find_for_produce(name)? {
            return Ok(info);
        }
        self.check_create_topic(caller, name)?;
        if let Some(cluster) = self.replicated() {
            return self.auto_create_replicated(cluster, name).await;
        }
        let streams = self.streams.clone();
        let name = name.to_string();
        blocking(move || streams.create_for_produce(&name)).await
    }

    /// Reads what `query` asks for, long-polling up to its wait. Each topic needs `Read`;
    /// the partitions of a refused one come back with `Unauthorized` and no records, and a
    /// partition another node leads with `NotLeader` (issue #20).
    pub async fn fetch(&self, caller: &Session, query: &FetchQuery) -> Vec<FetchedTopic> {
        let routing = self.routing();
        let refusals: Vec<Vec<Option<StreamError>>> = query
            .topics
            .iter()
            .map(|wanted| {
                let denied = self
                    .check(caller, Operation::Read, ResourceType::Topic, &wanted.topic)
                    .err();
                wanted
                    .partitions
                    .iter()
                    .map(|asked| match &denied {
                        Some(denied) => Some(StreamError::Unauthorized(denied.clone())),
                        None => routing
                            .as_ref()
                            .and_then(|routing| routing.refusal(&wanted.topic, asked.partition))
                            .or_else(|| {
                                self.check_leader_epoch(
                                    &wanted.topic,
                                    asked.partition,
                                    asked.current_leader_epoch,
                                )
                                .err()
                            }),
                    })
                    .collect()
            })
            .collect();
        if refusals.iter().flatten().all(Option::is_none) {
            let fetched = self.streams.fetch(query).await;
            self.charge_fetched(caller, &fetched);
            return fetched;
        }
        let allowed = FetchQuery {
            topics: query
                .topics
                .iter()
                .zip(&refusals)
                .filter_map(|(wanted, refused)| {
                    let partitions: Vec<_> = wanted
                        .partitions
                        .iter()
                        .zip(refused)
                        .filter(|(_, refusal)| refusal.is_none())
                        .map(|(asked, _)| asked.clone())
                        .collect();
                    (!partitions.is_empty()).then(|| TopicQuery {
                        topic: wanted.topic.clone(),
                        partitions,
                    })
                })
                .collect(),
            ..query.clone()
        };
        let fetched = if allowed.topics.is_empty() {
            Vec::new()
        } else {
            self.streams.fetch(&allowed).await
        };
        self.charge_fetched(caller, &fetched);
        // Put the refusals back in the query's order, between what was read.
        let mut fetched = fetched.into_iter();
        query
            .topics
            .iter()
            .zip(refusals)
            .map(|(wanted, refused)| {
                let mut read = if refused.iter().any(Option::is_none) {
                    fetched.next().map(|topic| topic.partitions.into_iter())
                } else {
                    None
                };
                FetchedTopic {
                    topic: wanted.topic.clone(),
                    partitions: wanted
                        .partitions
                        .iter()
                        .zip(refused)
                        .filter_map(|(asked, refusal)| match refusal {
                            Some(error) => Some(FetchedPartition::failed(asked.partition, error)),
                            None => read.as_mut().and_then(Iterator::next),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Metadata of the named topics, first creating those that do not exist when topics may
    /// be auto-created (as a produce would), for protocols whose metadata request asks for it
    /// (Kafka's `allow_auto_topic_creation`). A name that cannot be created stays unknown.
    pub async fn topic_metadata_creating(
        &self,
        caller: &Session,
        names: Vec<String>,
    ) -> Vec<TopicView> {
        let names = dedupe(names);
        let mut refused = Vec::new();
        for name in &names {
            if self.streams.topics().get(name).is_none() {
                match self.topic_for_produce(caller, name).await {
                    Ok(_) => {}
                    // A caller who may not create it hears so, as Kafka answers.
                    Err(StreamError::Unauthorized(denied)) => refused.push(denied),
                    Err(error) => {
                        tracing::debug!(topic = name, %error, "metadata did not auto-create the topic");
                    }
                }
            }
        }
        let mut views = self.topic_metadata(caller, Some(names));
        for view in views.iter_mut().filter(|view| view.denied.is_none()) {
            if let Some(index) = refused.iter().position(|denied| denied.name == view.name) {
                view.denied = Some(refused.swap_remove(index));
            }
        }
        views
    }

    /// Moves partitions' log starts up (Kafka's DeleteRecords): records below each new start
    /// are gone for readers, also after a restart. `offsets` are (partition, offset), -1
    /// meaning the high watermark; each answer is the new log start. Blocking work on the
    /// blocking pool; a replicated partition's delete goes through its group, so every
    /// replica moves its log start alike.
    pub async fn delete_records(
        &self,
        caller: &Session,
        topic: &str,
        offsets: Vec<(u32, i64)>,
    ) -> Vec<(u32, Result<i64, StreamError>)> {
        if let Err(denied) = self.check(caller, Operation::Delete, ResourceType::Topic, topic) {
            return offsets
                .into_iter()
                .map(|(partition, _)| (partition, Err(denied.clone().into())))
                .collect();
        }
        let mut answers = Vec::with_capacity(offsets.len());
        for (partition, offset) in offsets {
            let replica = self.partition_replica(topic, partition);
            let refusal = self.routing().and_then(|routing| {
                routing.refusal(topic, partition).or_else(|| {
                    // Placed on several nodes but its group is not running here (yet).
                    (replica.is_none()
                        && routing
                            .partition(topic, partition)
                            .is_some_and(|placed| placed.in_a_group))
                    .then(|| StreamError::NotLeader {
                        topic: topic.to_string(),
                        partition,
                        leader: None,
                    })
                })
            });
            let answer = match (refusal, replica) {
                (Some(refusal), _) => Err(refusal),
                (None, Some(replica)) => {
                    match self.streams.check_delete_records(topic, partition) {
                        Ok(()) => {
                            self.delete_records_replicated(&replica, topic, partition, offset)
                                .await
                        }
                        Err(error) => Err(error),
                    }
                }
                (None, None) => {
                    let (streams, topic) = (self.streams.clone(), topic.to_string());
                    tokio::task::spawn_blocking(move || {
                        streams.delete_records(&topic, partition, offset)
                    })
                    .await
                    .unwrap_or_else(|error| Err(StreamError::Internal(error.to_string())))
                }
            };
            answers.push((partition, answer));
        }
        answers
    }

    /// The producers with state on a partition (Kafka's DescribeProducers).
    ///
    /// # Errors
    /// An unknown topic or partition.
    pub fn describe_producers(
        &self,
        caller: &Session,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<ProducerView>, StreamError> {
        self.check(caller, Operation::Read, ResourceType::Topic, topic)?;
        self.check_leader(topic, partition)?;
        self.streams.describe_producers(topic, partition)
    }

    /// Partitions of a topic created without a count (Kafka's `num_partitions = -1`): the
    /// broker's `default_partitions`.
    pub fn default_partitions(&self) -> u32 {
        self.streams.default_partitions()
    }

    /// One partition's offset by `spec` (`None`: no record at or after the timestamp).
    ///
    /// # Errors
    /// `UnknownPartition`, or the storage error of a time-index lookup.
    pub fn list_offset(
        &self,
        caller: &Session,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<i64>, StreamError> {
        self.list_offset_at_epoch(caller, topic, partition, spec, -1)
    }

    /// [`Broker::list_offset`] for a client that names the leader epoch it takes the
    /// partition's leader to have (Kafka ListOffsets v4+'s `current_leader_epoch`; -1: not
    /// checked).
    ///
    /// # Errors
    /// As [`Broker::list_offset`]; `FencedLeaderEpoch` or `UnknownLeaderEpoch` when
    /// `current` is not the leader's epoch.
    pub fn list_offset_at_epoch(
        &self,
        caller: &Session,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
        current: i32,
    ) -> Result<Option<i64>, StreamError> {
        self.check(caller, Operation::Describe, ResourceType::Topic, topic)?;
        self.check_leader(topic, partition)?;
        self.check_leader_epoch(topic, partition, current)?;
        self.streams.list_offset(topic, partition, spec)
    }

    /// Kafka's fencing by leader epoch: a client that names an epoch (`current` >= 0) other
    /// than the leader's is refused, with `FencedLeaderEpoch` when it is older (the client
    /// missed a leader change) and `UnknownLeaderEpoch` when it is newer (this node has not
    /// seen the change yet). -1 is not checked.
    ///
    /// # Errors
    /// Those two.
    pub(crate) fn check_leader_epoch(
        &self,
        topic: &str,
        partition: u32,
        current: i32,
    ) -> Result<(), StreamError> {
        if current < 0 {
            return Ok(());
        }
        let leader = self.leader_epoch(topic, partition);
        if current == leader {
            return Ok(());
        }
        let (topic, client) = (topic.to_string(), current);
        Err(if current < leader {
            StreamError::FencedLeaderEpoch {
                topic,
                partition,
                client,
                leader,
            }
        } else {
            StreamError::UnknownLeaderEpoch {
                topic,
                partition,
                client,
                leader,
            }
        })
    }

    /// The leader epoch Kafka's clients see for `topic`'s `partition`: its group leader's
    /// raft term for a replicated partition (-1 while this node knows no leader), 0 for
    /// one that is not replicated (docs/KAFKA.md).
    pub fn leader_epoch(&self, topic: &str, partition: u32) -> i32 {
        self.routing()
            .and_then(|routing| routing.partition(topic, partition))
            .map_or(0, |placed| placed.leader_epoch)
    }

    /// The leader epoch of the record at `offset` (what its batch header carries, issue
    /// #21; for the log end, the current epoch): -1 for an unknown partition, 0 on one that
    /// is not replicated.
    pub fn epoch_at(&self, topic: &str, partition: u32, offset: i64) -> i32 {
        self.streams
            .partition(topic, partition)
            .map_or(-1, |log| epochs_or_zero(&log).epoch_at(offset))
    }

    /// Kafka's OffsetForLeaderEpoch on `topic`'s `partition`'s leader: the largest epoch at
    /// or below `requested` and where the epoch after it starts (the log end for the
    /// current one), so a client can tell whether records it read were truncated.
    /// `current` is the epoch the client takes the leader's to be (-1: not checked).
    ///
    /// # Errors
    /// ACLs and routing as for [`Broker::list_offset`]; `FencedLeaderEpoch` or
    /// `UnknownLeaderEpoch` when `current` is not the leader's; `NotLeader` (no leader
    /// named) while a new leader has not applied its term's first entry yet.
    pub fn epoch_end_offset(
        &self,
        caller: &Session,
        topic: &str,
        partition: u32,
        current: i32,
        requested: i32,
    ) -> Result<(i32, i64), StreamError> {
        self.check(caller, Operation::Describe, ResourceType::Topic, topic)?;
        self.check_leader(topic, partition)?;
        let log = self.streams.partition(topic, partition).ok_or_else(|| {
            StreamError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            }
        })?;
        self.check_leader_epoch(topic, partition, current)?;
        let leader = self.leader_epoch(topic, partition);
        let epochs = epochs_or_zero(&log);
        if leader > epochs.current() {
            return Err(StreamError::NotLeader {
                topic: topic.to_string(),
                partition,
                leader: None,
            });
        }
        Ok(epochs.end_offset_for(requested, log.log_end_offset()))
    }
}

impl Broker {
    /// How many replicas `topic`'s partitions have (1 for a topic the cluster does not
    /// place, and on a lone node).
    pub fn placed_factor(&self, topic: &str) -> u32 {
        self.routing()
            .and_then(|routing| routing.partition(topic, 0))
            .map_or(1, |placed| {
                u32::try_from(placed.replicas.len()).unwrap_or(u32::MAX)
            })
    }
}

/// `min.insync.replicas` among `configs` must not exceed the majority of `factor` replicas:
/// a replicated partition answers acks=all once a majority of its replicas has the record
/// durably (its raft group's commit), so that is how many replicas an acknowledged record
/// is on at least; more cannot be promised (Kafka's ISR rule is not Wharf's).
fn check_min_insync(configs: &[(String, String)], factor: u32) -> Result<(), StreamError> {
    let majority = factor / 2 + 1;
    let wanted = configs
        .iter()
        .rev()
        .find(|(key, _)| key == "min.insync.replicas")
        .and_then(|(_, value)| value.parse::<u32>().ok());
    match wanted {
        Some(wanted) if wanted > majority => Err(StreamError::Topic(
            crate::streams::topic::TopicError::InvalidConfig(format!(
                "config min.insync.replicas={wanted} is more than the majority ({majority}) of \
                 the topic's {factor} replica(s): an acks=all produce is acknowledged once a \
                 majority has the record, so at most {majority} can be promised"
            )),
        )),
        _ => Ok(()),
    }
}

/// `log`'s leader epochs; for a log that never started one (not replicated), the one epoch
/// 0 from its start, which Kafka's clients see in Metadata.
fn epochs_or_zero(log: &crate::storage::Partition) -> LeaderEpochs {
    let mut epochs = log.leader_epochs();
    if epochs.starts().is_empty() {
        epochs.start(0, log.log_start_offset());
    }
    epochs
}

/// Runs blocking stream work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StreamError> + Send + 'static,
) -> Result<T, StreamError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(StreamError::Internal(error.to_string())))
}

/// Names in first-seen order without repeats.
pub(crate) fn dedupe(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names
        .into_iter()
        .filter(|name| seen.insert(name.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check_min_insync;

    fn configs(value: &str) -> Vec<(String, String)> {
        vec![
            ("retention.ms".to_string(), "1000".to_string()),
            ("min.insync.replicas".to_string(), value.to_string()),
        ]
    }

    #[test]
    fn min_insync_replicas_may_be_at_most_the_majority_of_the_replicas() {
        assert!(check_min_insync(&configs("1"), 1).is_ok());
        assert!(check_min_insync(&configs("2"), 1).is_err(), "one replica");
        assert!(check_min_insync(&configs("2"), 3).is_ok());
        let refused = check_min_insync(&configs("3"), 3).expect_err("all three");
        assert!(
            refused
                .to_string()
                .contains("more than the majority (2) of the topic's 3 replica(s)"),
            "{refused}"
        );
        assert!(check_min_insync(&configs("3"), 5).is_ok());
        assert!(
            check_min_insync(&[], 1).is_ok(),
            "not set: Kafka's default, 1"
        );
    }
}
