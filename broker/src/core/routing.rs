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
//! - Every consumer group and transactional id is coordinated by one node, the registered
//!   node with the lowest id: the native client sends group calls to the lowest node id it
//!   knows, so both protocols meet the same coordinator (see docs/CLUSTER.md, Routing).
//! - A lone node (no peers) has no routing: it leads and coordinates everything, and none of
//!   these checks runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cluster::metadata::MetadataState;
use crate::cluster::raft::Cluster;
use crate::streams::StreamError;

use super::Broker;

/// A node's client addresses, by listener name (`native`, `kafka`, `amqp`, `http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node id.
    pub id: u64,
    /// Advertised `HOST:PORT` by listener name; a listener that is off is missing.
    pub listeners: BTreeMap<String, String>,
}

/// Where a partition lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlacement {
    /// The node that serves it.
    pub leader: u64,
    /// The nodes holding a replica (the leader first when it is the preferred one).
    pub replicas: Vec<u64>,
}

/// This node's view of the cluster's placement, read once per request.
#[derive(Debug)]
pub struct Routing<'a> {
    cluster: &'a Cluster,
    state: Arc<MetadataState>,
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

    /// Every registered node, by id.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        self.state
            .nodes
            .iter()
            .map(|(id, info)| ClusterNode {
                id: *id,
                listeners: info.listeners.clone(),
            })
            .collect()
    }

    /// Where the log places `topic`'s `partition`; `None` when it does not (the partition
    /// is then served by the node that has it).
    pub fn partition(&self, topic: &str, partition: u32) -> Option<PartitionPlacement> {
        let replicas = self
            .state
            .topics
            .get(topic)?
            .partitions
            .get(usize::try_from(partition).ok()?)?;
        Some(PartitionPlacement {
            leader: replicas.leader,
            replicas: replicas.replicas.clone(),
        })
    }

    /// The refusal of a request for `topic`'s `partition` on this node, when another node
    /// leads it.
    pub fn refusal(&self, topic: &str, partition: u32) -> Option<StreamError> {
        let placed = self.partition(topic, partition)?;
        (placed.leader != self.this_node()).then(|| StreamError::NotLeader {
            topic: topic.to_string(),
            partition,
            leader: Some(placed.leader),
        })
    }

    /// The node coordinating every consumer group and transactional id: the registered
    /// node with the lowest id (this node before any has registered).
    pub fn coordinator(&self) -> u64 {
        self.state
            .nodes
            .keys()
            .next()
            .copied()
            .unwrap_or_else(|| self.this_node())
    }

    /// Whether this node coordinates groups and transactions.
    pub fn coordinates_here(&self) -> bool {
        self.coordinator() == self.this_node()
    }
}

impl Broker {
    /// The cluster's placement as this node last applied it; `None` on a lone node (which
    /// leads and coordinates everything).
    pub fn routing(&self) -> Option<Routing<'_>> {
        let cluster = self.replicated()?;
        Some(Routing {
            cluster,
            state: cluster.applied().state,
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
