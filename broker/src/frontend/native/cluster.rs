//! The native front end's cluster requests (issues #20 and #21): DescribeCluster, AddNode,
//! RemoveNode, DescribeReplicas, Rebalance, CancelDrain, each → a core call.

use wharf_protocol::messages::{
    AddNodeRequest, CancelDrainRequest, ClusterNodeEntry, DescribeClusterResponse,
    DescribeReplicasRequest, DescribeReplicasResponse, RebalanceRequest, RebalanceResponse,
    RemoveNodeRequest, ReplicaFollowerEntry, ReplicaMoveEntry, ReplicaPartitionEntry,
    StreamAdminResponse,
};
use wharf_protocol::ErrorCode;

use super::error_code;
use crate::core::cluster_ops::ClusterOpError;
use crate::core::{Broker, Session};

/// DescribeCluster: the answering node's view.
pub fn describe(broker: &Broker, caller: &Session) -> DescribeClusterResponse {
    match broker.cluster_status(caller) {
        Ok(status) => {
            let mut nodes: Vec<ClusterNodeEntry> = status
                .voters
                .iter()
                .map(|(id, address)| ClusterNodeEntry {
                    node_id: *id,
                    address: address.clone(),
                    voter: true,
                })
                .chain(
                    status
                        .learners
                        .iter()
                        .map(|(id, address)| ClusterNodeEntry {
                            node_id: *id,
                            address: address.clone(),
                            voter: false,
                        }),
                )
                .collect();
            nodes.sort_by_key(|node| node.node_id);
            DescribeClusterResponse {
                error: ErrorCode::None,
                error_message: None,
                node_id: status.node_id,
                cluster_id: status.cluster_id,
                leader_id: status.leader.map_or(-1, |leader| leader as i64),
                role: status.role,
                term: status.term,
                last_log_index: status.last_log_index,
                last_applied_index: status.last_applied_index,
                nodes,
            }
        }
        Err(error) => DescribeClusterResponse {
            error: error_code::cluster(&error),
            error_message: Some(error.to_string()),
            node_id: 0,
            cluster_id: None,
            leader_id: -1,
            role: String::new(),
            term: 0,
            last_log_index: 0,
            last_applied_index: 0,
            nodes: Vec::new(),
        },
    }
}

fn answer(result: Result<(), ClusterOpError>) -> StreamAdminResponse {
    match result {
        Ok(()) => StreamAdminResponse {
            error: ErrorCode::None,
            error_message: None,
        },
        Err(error) => StreamAdminResponse {
            error: error_code::cluster(&error),
            error_message: Some(error.to_string()),
        },
    }
}

/// AddNode.
pub async fn add_node(
    broker: &Broker,
    caller: &Session,
    request: AddNodeRequest,
) -> StreamAdminResponse {
    answer(
        broker
            .add_node(caller, request.node_id, request.address)
            .await,
    )
}

/// RemoveNode.
pub async fn remove_node(
    broker: &Broker,
    caller: &Session,
    request: RemoveNodeRequest,
) -> StreamAdminResponse {
    answer(broker.remove_node(caller, request.node_id).await)
}

/// DescribeReplicas: the topic's replicas as this node knows them.
pub fn describe_replicas(
    broker: &Broker,
    caller: &Session,
    request: DescribeReplicasRequest,
    this_node: u64,
) -> DescribeReplicasResponse {
    match broker.describe_replicas(caller, &request.topic, this_node) {
        Ok(partitions) => DescribeReplicasResponse {
            error: ErrorCode::None,
            error_message: None,
            node_id: this_node,
            partitions: partitions
                .into_iter()
                .map(|partition| ReplicaPartitionEntry {
                    partition: partition.partition,
                    replicas: partition.replicas,
                    leader: partition.leader.map_or(-1, |leader| leader as i64),
                    term: partition.term,
                    followers: partition
                        .followers
                        .into_iter()
                        .map(|(node_id, lag_entries, in_sync)| ReplicaFollowerEntry {
                            node_id,
                            lag_entries,
                            in_sync,
                        })
                        .collect(),
                })
                .collect(),
        },
        Err(error) => DescribeReplicasResponse {
            error: error_code::stream(&error),
            error_message: Some(error.to_string()),
            node_id: this_node,
            partitions: Vec::new(),
        },
    }
}

/// Rebalance: the moves under way after it.
pub async fn rebalance(
    broker: &Broker,
    caller: &Session,
    request: RebalanceRequest,
) -> RebalanceResponse {
    moves_answer(broker.rebalance(caller, request.start).await)
}

/// CancelDrain: the moves still under way after it.
pub async fn cancel_drain(
    broker: &Broker,
    caller: &Session,
    request: CancelDrainRequest,
) -> RebalanceResponse {
    moves_answer(broker.cancel_drain(caller, request.node_id).await)
}

fn moves_answer(
    result: Result<Vec<crate::core::cluster_ops::ReplicaMove>, ClusterOpError>,
) -> RebalanceResponse {
    match result {
        Ok(moves) => RebalanceResponse {
            error: ErrorCode::None,
            error_message: None,
            moves: moves
                .into_iter()
                .map(|moved| ReplicaMoveEntry {
                    name: moved.name,
                    partition: moved.partition.map_or(-1, i64::from),
                    from: moved.from,
                    to: moved.to,
                })
                .collect(),
        },
        Err(error) => RebalanceResponse {
            error: error_code::cluster(&error),
            error_message: Some(error.to_string()),
            moves: Vec::new(),
        },
    }
}
