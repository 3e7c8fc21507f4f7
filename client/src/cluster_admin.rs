//! The cluster calls on [`Admin`] (issues #20 and #21): DescribeCluster, AddNode, Rebalance,
//! CancelDrain, RemoveNode, DescribeReplicas and FindCoordinator.

use wharf_protocol::messages::*;
use wharf_protocol::Request;

use crate::admin::Admin;
use crate::cluster::Target;
use crate::error::{check_code, Result};

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// The node that answered.
    pub node_id: u64,
    /// The cluster's id (None before it formed).
    pub cluster_id: Option<String>,
    /// The leader the node knows of.
    pub leader_id: Option<u64>,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The metadata log's term.
    pub term: u64,
    /// The last index of the node's metadata log.
    pub last_log_index: u64,
    /// The last index it applied.
    pub last_applied_index: u64,
    /// The members: id, internal address, voter.
    pub nodes: Vec<(u64, String, bool)>,
}

/// One partition's replicas ([`Admin::describe_replicas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplicas {
    /// The partition number.
    pub partition: u32,
    /// The nodes holding a replica.
    pub replicas: Vec<u64>,
    /// The leader, if one is known.
    pub leader: Option<u64>,
    /// The term of the partition's group (0: not replicated).
    pub term: u64,
    /// As the leader sees them: each follower's node, entries behind, and whether it is in
    /// sync. Empty when the leader could not be asked, or for an unreplicated partition.
    pub followers: Vec<(u64, u64, bool)>,
}

impl Admin {
    /// Where `topic`'s partitions are replicated, with each follower's lag as the
    /// partition's leader reports it: the bootstrap node answers first, then each other
    /// node leading a replicated partition is asked for its view (a leader that cannot be
    /// reached leaves that partition's followers empty).
    ///
    /// # Errors
    /// The bootstrap node's refusal (an unknown topic, a denied Describe), or a connection
    /// error to it.
    pub async fn describe_replicas(&self, topic: &str) -> Result<Vec<PartitionReplicas>> {
        let ask = |target: Target| async move {
            let response: DescribeReplicasResponse = self
                .client
                .call_unchecked(
                    target,
                    Request::DescribeReplicas(DescribeReplicasRequest {
                        topic: topic.to_string(),
                    }),
                )
                .await?;
            check_code(response.error, response.error_message.clone())?;
            Ok::<_, crate::Error>(response)
        };
        let first = ask(Target::Any).await?;
        let mut partitions: Vec<PartitionReplicas> = first
            .partitions
            .into_iter()
            .map(|entry| PartitionReplicas {
                partition: entry.partition,
                replicas: entry.replicas,
                leader: u64::try_from(entry.leader).ok(),
                term: entry.term,
                followers: entry
                    .followers
                    .into_iter()
                    .map(|follower| (follower.node_id, follower.lag_entries, follower.in_sync))
                    .collect(),
            })
            .collect();
        let others: std::collections::BTreeSet<u64> = partitions
            .iter()
            .filter(|partition| partition.replicas.len() > 1)
            .filter_map(|partition| partition.leader)
            .filter(|leader| *leader != first.node_id)
            .collect();
        for leader in others {
            let Ok(node) = i32::try_from(leader) else {
                continue;
            };
            let Ok(answer) = ask(Target::Node(node)).await else {
                continue;
            };
            for entry in answer.partitions {
                // Only the leader's own view of a partition it leads has the followers.
                if entry.leader != answer.node_id as i64 {
                    continue;
                }
                if let Some(partition) = partitions
                    .iter_mut()
                    .find(|partition| partition.partition == entry.partition)
                {
                    partition.leader = Some(answer.node_id);
                    partition.term = entry.term;
                    partition.followers = entry
                        .followers
                        .into_iter()
                        .map(|follower| (follower.node_id, follower.lag_entries, follower.in_sync))
                        .collect();
                }
            }
        }
        Ok(partitions)
    }

    /// The node coordinating groups and transactional ids, as the answering node knows it:
    /// its node id and native address; `None` while it knows none (an election).
    ///
    /// # Errors
    /// A connection error, or `UnsupportedApi` from a broker without FindCoordinator.
    pub async fn find_coordinator(&self) -> Result<Option<(i32, String)>> {
        let response: FindCoordinatorResponse = self
            .client
            .call_unchecked(
                Target::Any,
                Request::FindCoordinator(FindCoordinatorRequest { key: String::new() }),
            )
            .await?;
        if response.error == wharf_protocol::ErrorCode::NotCoordinator {
            return Ok(None);
        }
        check_code(response.error, response.error_message)?;
        let address = crate::metadata::broker_address(&response.coordinator);
        Ok(Some((response.coordinator.node_id, address)))
    }

    /// The answering node's view of the cluster.
    ///
    /// # Errors
    /// A connection or server error.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        let response: DescribeClusterResponse = self
            .client
            .call_unchecked(
                Target::Any,
                Request::DescribeCluster(DescribeClusterRequest {}),
            )
            .await?;
        check_code(response.error, response.error_message)?;
        Ok(ClusterDescription {
            node_id: response.node_id,
            cluster_id: response.cluster_id,
            leader_id: u64::try_from(response.leader_id).ok(),
            role: response.role,
            term: response.term,
            last_log_index: response.last_log_index,
            last_applied_index: response.last_applied_index,
            nodes: response
                .nodes
                .into_iter()
                .map(|node| (node.node_id, node.address, node.voter))
                .collect(),
        })
    }

    /// Adds node `node_id`, whose internal listener is at `address`, to the cluster.
    ///
    /// # Errors
    /// [`crate::Error::Server`] with `MembershipRefused` (another cluster's node, say) or
    /// `NoClusterLeader`, or a connection error.
    pub async fn add_node(&self, node_id: u64, address: &str) -> Result<()> {
        let response: StreamAdminResponse = self
            .client
            .call_unchecked(
                Target::Any,
                Request::AddNode(AddNodeRequest {
                    node_id,
                    address: address.to_string(),
                }),
            )
            .await?;
        check_code(response.error, response.error_message)
    }

    /// Rebalances the cluster's replicas (`start`; without it, only asks): answers the
    /// moves of replicated partitions and queues under way after it, each with the nodes
    /// its group runs on and the nodes it moves to.
    ///
    /// # Errors
    /// [`crate::Error::Server`] with `Unauthorized` or `NoClusterLeader`, or a connection
    /// error.
    pub async fn rebalance(&self, start: bool) -> Result<Vec<ReplicaMoveEntry>> {
        let response: RebalanceResponse = self
            .client
            .call_unchecked(Target::Any, Request::Rebalance(RebalanceRequest { start }))
            .await?;
        check_code(response.error, response.error_message)?;
        Ok(response.moves)
    }

    /// Stops node `node_id`'s drain (a `remove-node` still moving its replicas off it):
    /// it takes replicas again and stays. Answers the moves still under way, which go on.
    ///
    /// # Errors
    /// [`crate::Error::Server`] with `MembershipRefused` (the node is unknown or not being
    /// drained), `Unauthorized` or `NoClusterLeader`, or a connection error.
    pub async fn cancel_drain(&self, node_id: u64) -> Result<Vec<ReplicaMoveEntry>> {
        let response: RebalanceResponse = self
            .client
            .call_unchecked(
                Target::Any,
                Request::CancelDrain(CancelDrainRequest { node_id }),
            )
            .await?;
        check_code(response.error, response.error_message)?;
        Ok(response.moves)
    }

    /// Removes node `node_id` from the cluster.
    ///
    /// # Errors
    /// As for [`Admin::add_node`].
    pub async fn remove_node(&self, node_id: u64) -> Result<()> {
        let response: StreamAdminResponse = self
            .client
            .call_unchecked(
                Target::Any,
                Request::RemoveNode(RemoveNodeRequest { node_id }),
            )
            .await?;
        check_code(response.error, response.error_message)
    }
}
