//! What operators look at: readiness and the state behind the metrics (issue #17).
//!
//! Gauges that the broker's state already holds (offsets, sizes, segments, group lag, queue
//! depths) are read here at scrape time, not counted on the hot path; counters come from
//! [`crate::metrics`]. Front ends render the result (the HTTP front end as Prometheus text).
//!
//! Label cardinality is bounded: at most [`PARTITION_SERIES_MAX`] partitions,
//! [`GROUP_SERIES_MAX`] groups, [`LAG_SERIES_MAX`] group lag series and [`QUEUE_SERIES_MAX`]
//! queues are reported, in name
//! order; the rest are left out and counted in [`Observed::left_out`].

use crate::core::{Broker, Session};
use crate::metrics::{self, TrafficSample};
use crate::queue::QueueStats;

/// Most partitions reported per scrape: each is about ten series.
pub const PARTITION_SERIES_MAX: usize = 10_000;
/// Most (group, topic, partition) lag series reported per scrape.
pub const LAG_SERIES_MAX: usize = 10_000;
/// Most groups reported per scrape (members, generation and rebalances: three series each).
pub const GROUP_SERIES_MAX: usize = 10_000;
/// Most queues reported per scrape.
pub const QUEUE_SERIES_MAX: usize = 2_000;

/// One partition's replicas as this node knows them ([`Broker::describe_replicas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplicas {
    pub partition: u32,
    /// The nodes holding a replica (the metadata's placement).
    pub replicas: Vec<u64>,
    /// The leader this node knows.
    pub leader: Option<u64>,
    /// This node's term of the partition's group (0: not replicated).
    pub term: u64,
    /// On the leader: each follower's node, lag in entries, and whether it is in sync.
    pub followers: Vec<(u64, u64, bool)>,
}

/// A leader's view of its followers as (node, entries behind, in sync) rows.
fn follower_rows(status: &crate::cluster::replica::ReplicaStatus) -> Vec<(u64, u64, bool)> {
    status
        .followers
        .iter()
        .map(|follower| (follower.node, follower.lag_entries, follower.in_sync))
        .collect()
}

/// Whether the broker should receive traffic (Kubernetes' readiness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Recovered and able to write.
    Ready,
    /// Serving reads, but writes fail: the disk is full or a log failed.
    NotReady {
        /// Why, as a sentence for the operator.
        reason: String,
    },
}

/// One partition of a visible topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionObserved {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// First offset still stored.
    pub log_start_offset: i64,
    /// Offset the next append gets.
    pub log_end_offset: i64,
    /// Offset consumers may read up to.
    pub high_watermark: i64,
    /// Bytes of valid batches on disk.
    pub size_bytes: u64,
    /// Segments, the active one included.
    pub segment_count: u64,
    /// Records and bytes in and out since start.
    pub traffic: TrafficSample,
}

/// One consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupObserved {
    /// The group.
    pub group_id: String,
    /// Members now.
    pub member_count: u32,
    /// Current generation (0 for a group with only committed offsets).
    pub generation: i32,
    /// Rebalances (generation bumps) since start, of either group protocol.
    pub rebalances: u64,
    /// Per committed partition, in (topic, partition) order.
    pub lags: Vec<PartitionLag>,
}

/// How far a group's committed offset is behind a partition's high watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The committed offset (the next one to consume).
    pub committed_offset: i64,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// `high_watermark - committed_offset`, at least 0.
    pub lag: i64,
}

/// This node's member of a replicated partition's group (issue #21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaObserved {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The leader this node's member knows, -1 for none.
    pub leader: i64,
    /// The member's current term.
    pub term: u64,
    /// On the leader: each other replica's node id, entries behind, and whether it has
    /// every record consumers can read.
    pub followers: Vec<(u64, u64, bool)>,
}

/// This node's member of a replicated queue's group (issue #21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReplicaObserved {
    /// The queue.
    pub queue: String,
    /// The leader this node's member knows, -1 for none.
    pub leader: i64,
    /// The member's current term.
    pub term: u64,
    /// On the leader: each other replica's node id, entries behind, and whether it is in
    /// sync (`cluster::replica::FollowerStatus::in_sync`).
    pub followers: Vec<(u64, u64, bool)>,
}

/// Everything a scrape reports from the broker's state.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Partitions of visible topics, by (topic, partition).
    pub partitions: Vec<PartitionObserved>,
    /// This node's members of replicated partitions, by (topic, partition).
    pub replicas: Vec<ReplicaObserved>,
    /// This node's members of replicated queues, by queue.
    pub queue_replicas: Vec<QueueReplicaObserved>,
    /// Groups, by id.
    pub groups: Vec<GroupObserved>,
    /// Queues, by name.
    pub queues: Vec<QueueStats>,
    /// Series left out by the cardinality bounds.
    pub left_out: u64,
    /// Readiness now.
    pub readiness: Readiness,
    /// The disk alarm is on: publishers are held (issue #16).
    pub disk_alarm: bool,
    /// This node coordinates consumer groups and transactions now (always on a lone node;
    /// in a cluster the leader of `__consumer_offsets`, issue #21).
    pub coordinator: bool,
    /// Settings this node runs with other values than another node of its cluster, by
    /// key (issue #20; 0 on a lone node).
    pub settings_differ: usize,
    /// Free bytes of the data directory's file system at the alarm's last sample (`None`
    /// before the first, or with the alarm off).
    pub disk_free_bytes: Option<u64>,
    /// The memory alarm is on: publishers are held (issue #16).
    pub memory_alarm: bool,
    /// The broker's anonymous resident memory at the alarm's last sample, and the memory
    /// high watermark (0: no memory alarm).
    pub memory_bytes: (u64, u64),
}

impl Broker {
    /// Whether the broker can take writes: not when the last append found the disk full, nor
    /// when a partition log failed (an fsync error; storage rule 3).
    pub fn readiness(&self) -> Readiness {
        if metrics::HEALTH.disk_full() {
            return Readiness::NotReady {
                reason: "disk full: the last append failed with no space left on device"
                    .to_string(),
            };
        }
        for info in self.streams.topics().list() {
            for partition in 0..info.partitions {
                let failure = self
                    .streams
                    .partition(&info.name, partition)
                    .and_then(|log| log.failure());
                if let Some(failure) = failure {
                    return Readiness::NotReady {
                        reason: format!("log {}-{partition} failed: {failure}", info.name),
                    };
                }
            }
        }
        Readiness::Ready
    }

    /// The broker's state for a metrics scrape, within the cardinality bounds.
    pub async fn observe(&self, caller: &Session) -> Observed {
        let mut left_out = 0u64;
        let partitions = self.observe_partitions(&mut left_out);
        let replicas = self.observe_replicas(&mut left_out);
        let queue_replicas = self.observe_queue_replicas(&mut left_out);
        let groups = self.observe_groups(caller, &mut left_out);
        let mut queues = self.list_queues(caller).await;
        queues.sort_by(|left, right| left.name.cmp(&right.name));
        if queues.len() > QUEUE_SERIES_MAX {
            left_out += (queues.len() - QUEUE_SERIES_MAX) as u64;
            queues.truncate(QUEUE_SERIES_MAX);
        }
        Observed {
            partitions,
            replicas,
            queue_replicas,
            groups,
            queues,
            left_out,
            readiness: self.readiness(),
            disk_alarm: self.disk_alarm(),
            coordinator: self.coordinates_here(),
            settings_differ: self.settings_differ(),
            disk_free_bytes: Some(self.free_disk_bytes()).filter(|free| *free != u64::MAX),
            memory_alarm: self.memory_alarm(),
            memory_bytes: self.memory_bytes(),
        }
    }

    fn observe_partitions(&self, left_out: &mut u64) -> Vec<PartitionObserved> {
        let mut topics = self.streams.visible_topics();
        topics.sort_by(|left, right| left.name.cmp(&right.name));
        let mut partitions = Vec::new();
        for info in topics {
            for partition in 0..info.partitions {
                let Some(log) = self.streams.partition(&info.name, partition) else {
                    continue;
                };
                if partitions.len() >= PARTITION_SERIES_MAX {
                    *left_out += 1;
                    continue;
                }
                partitions.push(PartitionObserved {
                    topic: info.name.clone(),
                    partition,
                    log_start_offset: log.log_start_offset(),
                    log_end_offset: log.log_end_offset(),
                    high_watermark: log.high_watermark(),
                    size_bytes: log.size_bytes(),
                    segment_count: log.segment_count() as u64,
                    traffic: log.traffic().sample(),
                });
            }
        }
        partitions
    }

    /// Where each of `topic`'s partitions is replicated and how far each follower is behind,
    /// as this node knows it (Describe on the topic). A partition this node's member leads
    /// carries its followers' lag; elsewhere the followers are empty (its leader has them).
    /// Without a cluster, or for a partition with one replica, the replica is this node
    /// (`this_node`) at term 0.
    ///
    /// # Errors
    /// `Unauthorized`, or an unknown topic.
    pub fn describe_replicas(
        &self,
        caller: &Session,
        topic: &str,
        this_node: u64,
    ) -> Result<Vec<PartitionReplicas>, crate::streams::StreamError> {
        self.check(
            caller,
            crate::acl::Operation::Describe,
            crate::acl::ResourceType::Topic,
            topic,
        )?;
        let info = self
            .streams
            .topics()
            .get(topic)
            .ok_or_else(|| crate::streams::StreamError::UnknownTopic(topic.to_string()))?;
        let routing = self.routing();
        Ok((0..info.partitions)
            .map(|partition| {
                let placed = routing
                    .as_ref()
                    .and_then(|routing| routing.partition(topic, partition));
                let status = routing
                    .as_ref()
                    .and_then(|routing| routing.replica_status(topic, partition));
                match (placed, status) {
                    (Some(placed), Some(status)) => PartitionReplicas {
                        partition,
                        replicas: placed.replicas,
                        leader: status.leader,
                        term: status.term,
                        followers: follower_rows(&status),
                    },
                    (Some(placed), None) => PartitionReplicas {
                        partition,
                        replicas: placed.replicas,
                        leader: placed.leader,
                        term: 0,
                        followers: Vec::new(),
                    },
                    (None, _) => PartitionReplicas {
                        partition,
                        replicas: vec![this_node],
                        leader: Some(this_node),
                        term: 0,
                        followers: Vec::new(),
                    },
                }
            })
            .collect())
    }

    fn observe_replicas(&self, left_out: &mut u64) -> Vec<ReplicaObserved> {
        let Some(cluster) = self.replicated() else {
            return Vec::new();
        };
        let mut replicas: Vec<ReplicaObserved> = cluster
            .replicas()
            .all()
            .into_iter()
            .filter_map(|replica| {
                // Group names are `<topic>-<partition>`, as partition directories; a
                // queue's is `queue:<name>` (topic names hold no `:`).
                if replica.group().contains(':') {
                    return None;
                }
                let (topic, partition) = replica.group().rsplit_once('-')?;
                let status = replica.status();
                Some(ReplicaObserved {
                    topic: topic.to_string(),
                    partition: partition.parse().ok()?,
                    leader: status.leader.map_or(-1, |leader| leader as i64),
                    term: status.term,
                    followers: follower_rows(&status),
                })
            })
            .collect();
        replicas.sort_by(|left, right| {
            (&left.topic, left.partition).cmp(&(&right.topic, right.partition))
        });
        if replicas.len() > PARTITION_SERIES_MAX {
            *left_out += (replicas.len() - PARTITION_SERIES_MAX) as u64;
            replicas.truncate(PARTITION_SERIES_MAX);
        }
        replicas
    }

    fn observe_queue_replicas(&self, left_out: &mut u64) -> Vec<QueueReplicaObserved> {
        let Some(cluster) = self.replicated() else {
            return Vec::new();
        };
        let mut replicas: Vec<QueueReplicaObserved> = cluster
            .replicas()
            .all()
            .into_iter()
            .filter_map(|replica| {
                let queue = super::queue_replication::queue_of_group(replica.group())?.to_string();
                let status = replica.status();
                Some(QueueReplicaObserved {
                    queue,
                    leader: status.leader.map_or(-1, |leader| leader as i64),
                    term: status.term,
                    followers: follower_rows(&status),
                })
            })
            .collect();
        replicas.sort_by(|left, right| left.queue.cmp(&right.queue));
        if replicas.len() > QUEUE_SERIES_MAX {
            *left_out += (replicas.len() - QUEUE_SERIES_MAX) as u64;
            replicas.truncate(QUEUE_SERIES_MAX);
        }
        replicas
    }

    fn observe_groups(&self, caller: &Session, left_out: &mut u64) -> Vec<GroupObserved> {
        let mut lag_series = 0usize;
        let listings = self.list_groups(caller);
        let mut groups = Vec::with_capacity(listings.len());
        for listing in listings {
            if groups.len() >= GROUP_SERIES_MAX {
                *left_out += 1;
                continue;
            }
            let summary = self.groups.describe(&listing.group_id);
            let mut lags = self.group_lags(caller, &listing.group_id);
            let room = LAG_SERIES_MAX.saturating_sub(lag_series);
            if lags.len() > room {
                *left_out += (lags.len() - room) as u64;
                lags.truncate(room);
            }
            lag_series += lags.len();
            let rebalances = self.groups.rebalances(&listing.group_id);
            groups.push(GroupObserved {
                group_id: listing.group_id,
                member_count: listing.member_count,
                generation: summary.generation,
                rebalances,
                lags,
            });
        }
        groups
    }

    /// A group's lag per committed partition of an existing topic, by (topic, partition).
    pub fn group_lags(&self, caller: &Session, group_id: &str) -> Vec<PartitionLag> {
        let mut lags = Vec::new();
        for (topic, partitions) in self
            .fetch_offsets(caller, group_id, None)
            .unwrap_or_default()
        {
            for (partition, committed) in partitions {
                // Another node's partition: this node's copy says nothing of its lag.
                if self.check_leader(&topic, partition).is_err() {
                    continue;
                }
                let (Some(committed), Some(log)) =
                    (committed, self.streams.partition(&topic, partition))
                else {
                    continue;
                };
                let high_watermark = log.high_watermark();
                lags.push(PartitionLag {
                    topic: topic.clone(),
                    partition,
                    committed_offset: committed.offset,
                    high_watermark,
                    lag: high_watermark.saturating_sub(committed.offset).max(0),
                });
            }
        }
        lags.sort_by(|left, right| {
            (&left.topic, left.partition).cmp(&(&right.topic, right.partition))
        });
        lags
    }
}
