//! The cluster calls on [`Admin`] (issue #20): DescribeCluster, AddNode and RemoveNode.

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

impl Admin {
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
