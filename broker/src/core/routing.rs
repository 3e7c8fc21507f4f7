//! Where things live in a cluster (issue #20): which node leads each partition, which node
//! coordinates consumer groups and transactions, and each node's client addresses, as this
//! node last applied them from the metadata log.
//!
//! Rules:
//! - A partition the metadata log places is served by its leader only: produce, fetch,
//!   list offsets and delete records on another node are refused with
//!   [`StreamError::NotLeader`], which every front end turns into its protocol's "ask the
//!   metadata again" answer (Kafka's NOT_LEADER_OR_FOLLOWER, the native NotLeaderOrFollower).
//!   Until issue #21 replicates the data, the leader's copy is the only one that counts.
//! - A partition the log does not place (an internal topic, a topic that existed before
//!   the node joined a cluster, partitions added on one node only) is served where it is,
//!   as on a lone node.
//! - Every consumer group and transactional id is coordinated by one node, the leader of
//!   the replicated `__consumer_offsets` partition (`core/coordination.rs`); calls on
//!   another node are refused, naming it (see docs/CLUSTER.md, Routing).
//! - A queue the metadata log places is served by its leader: the other nodes hand its
//!   operations (publish, consume, ack, get, purge, counts, conditional delete) to the
//!   leader over the internal wire ([`QueuePlacement`], `queue/remote.rs`), so an AMQP,
//!   HTTP or native client may use any node. Exclusive and transient queues are not in
//!   the log and stay on the node that made them.
//! - A lone node (no peers) has no routing: it leads and coordinates everything, and none of
//!   these checks runs.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::cluster::metadata::{MetadataCommand, MetadataError, MetadataResult, MetadataState};
use crate::cluster::raft::Cluster;
use crate::cluster::raft::Proposed;
use crate::config::{parse_host_port, ListenerKind};
use crate::groups::offsets::OFFSETS_TOPIC;
use crate::queue::remote::{CallFuture, QueueCluster, RuleFuture};
use crate::streams::StreamError;

use super::Broker;

/// A node's advertised address for one kind of listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAddress {
    /// The node id.
    pub id: u64,
    /// The advertised host.
    pub host: String,
    /// The advertised port.
    pub port: u16,
}

/// Where a partition lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlacement {
    /// The node that serves it; `None` while this node's member of a replicated
    /// partition's group knows no leader (an election, or this node cut off).
    pub leader: Option<u64>,
    /// The nodes holding a replica (the leader first when it is the preferred one).
    pub replicas: Vec<u64>,
    /// The leader's epoch as Kafka's clients see it: the raft term of a replicated
    /// partition's leader (-1 while no leader is known), 0 for one that is not replicated.
    pub leader_epoch: i32,
    /// Whether it is written through a replicated log (`Replicas::in_a_group`: several
    /// replicas, or one that moved or is moving); never outside it.
    pub in_a_group: bool,
}

/// A raft term as a Kafka leader epoch.
pub(crate) fn epoch_of(term: u64) -> i32 {
    i32::try_from(term).unwrap_or(i32::MAX)
}

/// This node's view of the cluster's placement, read once per request.
#[derive(Debug)]
pub struct Routing<'a> {
    cluster: &'a Cluster,
    state: Arc<MetadataState>,
    /// The topics this node created from the log (its follower's record).
    followed: Arc<BTreeSet<String>>,
    /// This node coordinates groups and transactions now.
    coordinating: bool,
}

impl Routing<'_> {
    /// This node's id.
    pub fn this_node(&self) -> u64 {
        self.cluster.node_id()
    }

    /// The cluster's id, once this node knows it.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster.cluster_id()
    }

    /// The node leading the metadata log (Kafka's controller), if one is known.
    pub fn controller(&self) -> Option<u64> {
        self.cluster.status().leader
    }

    /// Every registered node's advertised address for `listener`, by id (a node with that
    /// listener off is left out); this node's is `this_address` when its registration is
    /// not applied yet.
    pub fn addresses(
        &self,
        listener: ListenerKind,
        this_address: (&str, u16),
    ) -> Vec<ClusterAddress> {
        let this_node = self.this_node();
        let mut found: Vec<ClusterAddress> = self
            .state
            .nodes
            .iter()
            .filter_map(|(id, info)| {
                let address = info.listeners.get(listener.registered_name())?;
                let (host, port) = parse_host_port(address).ok()?;
                Some(ClusterAddress {
                    id: *id,
                    host,
                    port,
                })
            })
            .collect();
        if !found.iter().any(|address| address.id == this_node) {
            found.push(ClusterAddress {
                id: this_node,
                host: this_address.0.to_string(),
                port: this_address.1,
            });
        }
        found
    }

    /// Where the log places `topic`'s `partition`; `None` when it does not (the partition
    /// is then served by the node that has it).
    pub fn partition(&self, topic: &str, partition: u32) -> Option<PartitionPlacement> {
        let replicas = self.placed(topic, partition)?;
        // A replicated partition's leader as this node's member of its group knows it: the
        // metadata's record of it follows only once the new leader proposed it. None while
        // the member knows no leader: naming another replica as a guess (tried on
        // 2026-12-05 to move clients off a cut-off node) sent librdkafka's idempotent
        // producer back and forth between a guess and the leader until it stayed on a
        // node that refused it (docs/CLUSTER.md, "Stalls the loop found", 4).
        let (leader, leader_epoch) = match self.member(topic, partition) {
            Some(member) => member
                .leader_and_term()
                .map_or((None, -1), |(leader, term)| (Some(leader), epoch_of(term))),
            // No member here: the metadata's leader. Of a replicated partition, with no
            // epoch (-1): this node does not know the group's term, and an epoch of 0 made
            // librdkafka, which knew a higher one, ignore the update as outdated and stay
            // on a leader that had left (seen after a rebalance moved the leader off).
            None if replicas.in_a_group() => (Some(replicas.leader), -1),
            None => (Some(replicas.leader), 0),
        };
        // While the set moves, its replicas are those it runs on and those it moves to
        // (Kafka lists the adding replicas during a reassignment too): a node moved to may
        // already lead.
        let mut listed = replicas.replicas.clone();
        for node in replicas.moving_to.iter().flatten() {
            if !listed.contains(node) {
                listed.push(*node);
            }
        }
        Some(PartitionPlacement {
            leader,
            replicas: listed,
            leader_epoch,
            in_a_group: replicas.in_a_group(),
        })
    }

    /// `topic`'s `partition`'s in-sync replicas (Kafka's ISR), sorted: the view of this
    /// node's member when it leads the group, else the set the leader last recorded in
    /// the metadata (every replica until one is recorded), with the leader `leader`
    /// named in either case. None for a partition the cluster does not place.
    pub fn in_sync(&self, topic: &str, partition: u32, leader: Option<u64>) -> Option<Vec<u64>> {
        let placed = self.placed(topic, partition)?;
        let this = self.cluster.node_id();
        let leading = self
            .member(topic, partition)
            .filter(|member| member.is_leader())
            .map(|member| super::replication::in_sync_set(this, &member.status(), placed));
        let mut in_sync = match leading {
            Some(view) => view,
            None => placed
                .in_sync
                .clone()
                .unwrap_or_else(|| placed.replicas.clone()),
        };
        if let Some(leader) = leader {
            if !in_sync.contains(&leader) {
                in_sync.push(leader);
            }
        }
        in_sync.sort_unstable();
        Some(in_sync)
    }

    /// This node's member's view of `topic`'s `partition`'s group (None for a partition
    /// that is not replicated, or whose member is not running here).
    pub fn replica_status(
        &self,
        topic: &str,
        partition: u32,
    ) -> Option<crate::cluster::replica::ReplicaStatus> {
        Some(self.member(topic, partition)?.status())
    }

    /// The metadata log's record of `topic`'s `partition`.
    fn placed(&self, topic: &str, partition: u32) -> Option<&crate::cluster::metadata::Replicas> {
        self.state
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)
    }

    /// This node's member of `topic`'s `partition`'s replicated log, when the log places
    /// the partition on several nodes, this one among them, and the member runs.
    fn member(&self, topic: &str, partition: u32) -> Option<crate::cluster::replica::Replica> {
        let placed = self.placed(topic, partition)?;
        if !placed.in_a_group() {
            return None;
        }
        // A member of a deleted topic of this name is not the partition's: the request is
        // refused below as for a topic this node does not hold yet.
        super::replication::topic_member(self.cluster, &self.state, topic, partition)
    }

    /// The refusal of a request for `topic`'s `partition` on this node, when another node
    /// leads it, or when the topic came from the log and the state this node applied does
    /// not hold it (a restarted node still replaying, or a delete not carried out yet):
    /// then no leader is named.
    pub fn refusal(&self, topic: &str, partition: u32) -> Option<StreamError> {
        // A replicated partition with a member here: served while the member leads (the
        // metadata may still name the previous leader), else refused naming the leader the
        // member knows.
        if let Some(member) = self.member(topic, partition) {
            let leader = member.leader();
            return (leader != Some(self.this_node())).then(|| StreamError::NotLeader {
                topic: topic.to_string(),
                partition,
                leader,
            });
        }
        refusal(
            &self.state,
            &self.followed,
            self.this_node(),
            topic,
            partition,
        )
        .or_else(|| self.replica_refusal(topic, partition))
    }

    /// A replicated partition (issue #21) the metadata says this node leads while no
    /// member of its group runs here (not started yet): refused with no leader named, and
    /// the client asks again.
    fn replica_refusal(&self, topic: &str, partition: u32) -> Option<StreamError> {
        let placed = self.placed(topic, partition)?;
        placed.in_a_group().then(|| StreamError::NotLeader {
            topic: topic.to_string(),
            partition,
            leader: None,
        })
    }

    /// The node coordinating every consumer group and transactional id: this one while it
    /// does, else the leader of the coordinator's partition as this node's member of its
    /// group knows it (the placement's, for a partition not replicated); `None` while the
    /// partition is not placed yet or no leader is known.
    pub fn coordinator(&self) -> Option<u64> {
        if self.coordinating {
            return Some(self.this_node());
        }
        let placed = self.placed(OFFSETS_TOPIC, 0)?;
        match self.member(OFFSETS_TOPIC, 0) {
            Some(member) => member.leader(),
            None => Some(placed.leader),
        }
    }
}

/// [`Routing::refusal`] over a state, the followed topics and this node's id.
fn refusal(
    state: &MetadataState,
    followed: &BTreeSet<String>,
    this_node: u64,
    topic: &str,
    partition: u32,
) -> Option<StreamError> {
    let refused = |leader| StreamError::NotLeader {
        topic: topic.to_string(),
        partition,
        leader,
    };
    let Some(placed) = state.topics.get(topic) else {
        // Not in the log: served here, unless it came from the log (this node is behind).
        return followed.contains(topic).then(|| refused(None));
    };
    let replicas = placed.partitions.get(usize::try_from(partition).ok()?)?;
    (replicas.leader != this_node).then(|| refused(Some(replicas.leader)))
}

impl Broker {
    /// How many brokers hold replicas: the cluster's registered nodes (at least this one),
    /// 1 on a lone node.
    pub fn broker_count(&self) -> u32 {
        self.replicated().map_or(1, |cluster| {
            u32::try_from(cluster.applied().state.nodes.len().max(1)).unwrap_or(u32::MAX)
        })
    }

    /// The cluster's placement as this node last applied it; `None` on a lone node (which
    /// leads and coordinates everything).
    pub fn routing(&self) -> Option<Routing<'_>> {
        let cluster = self.replicated()?;
        Some(Routing {
            cluster,
            state: cluster.applied().state,
            followed: Arc::clone(
                &self
                    .followed_topics
                    .read()
                    .unwrap_or_else(|poison| poison.into_inner()),
            ),
            coordinating: self.coordination.active(),
        })
    }

    /// Refuses a request for `topic`'s `partition` that another node leads.
    ///
    /// # Errors
    /// `NotLeader`.
    pub(crate) fn check_leader(&self, topic: &str, partition: u32) -> Result<(), StreamError> {
        match self
            .routing()
            .and_then(|routing| routing.refusal(topic, partition))
        {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }
}

/// The queues' view of the cluster: the leader of each queue as this node last applied the
/// metadata log, and the internal wire to reach it.
#[derive(Debug)]
pub(crate) struct QueuePlacement {
    cluster: Cluster,
    followed: FollowedQueues,
}

impl QueuePlacement {
    pub(crate) fn new(cluster: Cluster, followed: FollowedQueues) -> QueuePlacement {
        QueuePlacement { cluster, followed }
    }
}

/// Which incarnation of each queue this node's copy is, as the metadata follower last
/// recorded it (`Followed::queue_incarnations`).
#[derive(Debug, Clone, Default)]
pub(crate) struct FollowedQueues(
    Arc<std::sync::RwLock<Arc<std::collections::BTreeMap<String, u64>>>>,
);

impl FollowedQueues {
    /// Replaces the record (the follower, after a pass).
    pub(crate) fn publish(&self, incarnations: std::collections::BTreeMap<String, u64>) {
        *self.0.write().unwrap_or_else(|poison| poison.into_inner()) = Arc::new(incarnations);
    }

    /// The incarnation `queue`'s copy here was recorded as, if any.
    fn incarnation(&self, queue: &str) -> Option<u64> {
        self.0
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(queue)
            .copied()
    }
}

/// How often a delete by a queue's own rule is proposed again after a failure (no metadata
/// leader), and the pause before each: the delete is conditional, so a declare since still
/// refuses it.
const RULE_DELETE_RETRIES: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(4),
];

impl QueueCluster for QueuePlacement {
    fn node_id(&self) -> u64 {
        self.cluster.node_id()
    }

    fn leader_elsewhere(&self, queue: &str) -> Option<u64> {
        // A replicated queue with a member here: the leader that member knows (none while
        // it knows none: then the queue has no task here either, and its callers are told
        // no leader serves it).
        let applied = self.cluster.applied();
        let defined = applied.state.queues.get(queue)?;
        let group = super::queue_replication::queue_group_name(queue, defined.incarnation);
        if let Some(replica) = self.cluster.replicas().get(&group) {
            return replica
                .leader()
                .filter(|leader| *leader != self.cluster.node_id());
        }
        let leader = defined.placement.leader;
        (leader != self.cluster.node_id()).then_some(leader)
    }

    fn call(&self, node: u64, request: String, timeout: std::time::Duration) -> CallFuture<'_> {
        let request = crate::core::cluster_ops::Forwarded::Queue(request);
        Box::pin(async move {
            crate::core::cluster_ops::forward_call(&self.cluster, node, &request, timeout).await
        })
    }

    fn exclusive_node(&self, queue: &str) -> Option<u64> {
        self.cluster.applied().state.queues.get(queue)?.exclusive_on
    }

    fn delete_by_rule(&self, queue: &str) -> Option<RuleFuture> {
        // What the log holds of it as the rule fires: a declare applied after this is one
        // the rule did not see, and keeps the queue.
        let seen = self.cluster.applied().state.queues.get(queue)?.seen();
        if self
            .followed
            .incarnation(queue)
            .is_some_and(|copy| copy != seen.incarnation)
        {
            // The copy whose rule fired is of an incarnation the log deleted: the next
            // follower pass replaces it, and the log's queue is not this rule's to delete.
            return Some(Box::pin(std::future::ready(false)));
        }
        let cluster = self.cluster.clone();
        let name = queue.to_string();
        Some(Box::pin(async move {
            let command = MetadataCommand::DeleteQueue {
                name: name.clone(),
                exclusive_on: None,
                if_unchanged: Some(seen),
            };
            let mut pauses = RULE_DELETE_RETRIES.iter();
            loop {
                match cluster.propose(command.clone()).await {
                    Ok(Proposed {
                        result: MetadataResult::Refused(MetadataError::QueueDeclaredAgain(_)),
                        ..
                    }) => {
                        tracing::info!(
                            queue = name,
                            "a queue its own rule would delete was declared again: it stays"
                        );
                        return false;
                    }
                    // Dropped now, or by another delete before it.
                    Ok(_) => {
                        tracing::info!(
                            queue = name,
                            "a queue deleted by its own rule is dropped from the cluster's metadata"
                        );
                        return true;
                    }
                    Err(error) => match pauses.next() {
                        Some(pause) => {
                            tracing::debug!(queue = name, %error, "a queue's own rule's delete waits for the cluster's metadata");
                            tokio::time::sleep(*pause).await;
                        }
                        None => {
                            tracing::warn!(queue = name, %error, "a queue its own rule would delete stays: the cluster's metadata did not drop it");
                            return false;
                        }
                    },
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cluster::metadata::NodeInfo;

    /// Three registered nodes and topic `t` of three partitions, one led by each.
    fn placed() -> MetadataState {
        let mut state = MetadataState::default();
        for node_id in 1..=3 {
            state.apply(&MetadataCommand::RegisterNode {
                node_id,
                info: NodeInfo {
                    cluster_addr: format!("127.0.0.1:{}", 7700 + node_id),
                    listeners: BTreeMap::new(),
                    settings: BTreeMap::new(),
                },
            });
        }
        state.apply(&MetadataCommand::CreateTopic {
            name: "t".to_string(),
            partitions: 3,
            replication_factor: 1,
            configs: BTreeMap::new(),
            topic_id: None,
        });
        state
    }

    #[test]
    fn only_the_leader_serves_a_placed_partition() {
        let state = placed();
        let followed = BTreeSet::from(["t".to_string()]);
        for partition in 0..3 {
            let leader = state.topics["t"].partitions[partition as usize].leader;
            for this_node in 1..=3 {
                let refused = refusal(&state, &followed, this_node, "t", partition);
                if this_node == leader {
                    assert!(refused.is_none(), "node {this_node} leads t-{partition}");
                } else {
                    assert!(
                        matches!(refused, Some(StreamError::NotLeader { leader: Some(named), .. }) if named == leader),
                        "node {this_node} on t-{partition}: {refused:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn unplaced_topics_are_served_here_unless_they_came_from_the_log() {
        let state = placed();
        let nothing = BTreeSet::new();
        assert!(refusal(&state, &nothing, 1, "__consumer_offsets", 0).is_none());
        // A partition beyond the placed ones (added on this node only) is served here.
        assert!(refusal(&state, &nothing, 1, "t", 7).is_none());
        // Followed from the log and not in the applied state: this node is behind.
        let followed = BTreeSet::from(["gone".to_string()]);
        assert!(matches!(
            refusal(&state, &followed, 1, "gone", 0),
            Some(StreamError::NotLeader { leader: None, .. })
        ));
    }
}
