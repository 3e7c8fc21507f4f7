//! The cluster's control plane as the front ends see it (issue #20): this node's view of
//! the cluster, and adding and removing nodes. The metadata log itself is
//! `crate::cluster`; the server attaches it once started.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_protocol::batch::ControlKind;

use crate::acl::{Denied, Operation};
pub use crate::cluster::metadata::ReplicaMove;
use crate::cluster::metadata::{MetadataCommand, MetadataResult, NodeId};
use crate::cluster::raft::Cluster;
pub use crate::cluster::raft::{ClusterError, ClusterStatus};
use crate::core::txn_markers::TxnAnswer;
use crate::txn::Marker;

use super::{Broker, Session};

/// Whether the data directory `data_dir` is a node's that followed a cluster's metadata:
/// its users and ACLs are the cluster's, changed through a running node only.
pub fn followed_a_cluster(data_dir: &std::path::Path) -> bool {
    data_dir
        .join(crate::cluster::node::CLUSTER_DIR)
        .join(super::cluster_sync::FOLLOWED_FILE)
        .exists()
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterOpError {
    /// The caller may not.
    #[error(transparent)]
    Unauthorized(#[from] Denied),
    /// The metadata log refused or could not answer.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The node has no metadata log attached (still starting).
    #[error("the cluster is still starting")]
    Starting,
}

/// A request one node forwards to another over the internal listener
/// (`RaftRpc::Forward`), as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    /// A queue operation for the queue's leader (`queue/remote.rs` defines the JSON inside).
    Queue(String),
    /// A partition's leader asks the transaction coordinator whether the producer's open
    /// transaction holds the partition (`core/txn_markers.rs`).
    TxnVerify {
        producer_id: i64,
        epoch: i16,
        topic: String,
        partition: u32,
    },
    /// The transaction coordinator asks a partition's leader to write a marker.
    TxnMarker {
        topic: String,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        now_ms: i64,
        /// The coordinator's epoch (none from a build before coordinator epochs).
        #[serde(default)]
        coordinator_epoch: Option<i32>,
    },
}

/// Sends `request` to node `node` and returns its answer (JSON).
///
/// # Errors
/// The node could not be reached or did not answer in time.
pub(crate) async fn forward_call(
    cluster: &Cluster,
    node: NodeId,
    request: &Forwarded,
    timeout: Duration,
) -> Result<String, String> {
    let body = serde_json::to_string(request).map_err(|error| error.to_string())?;
    cluster.forward(node, body, timeout).await
}

fn answer(answer: &TxnAnswer) -> String {
    serde_json::to_string(answer)
        .unwrap_or_else(|error| format!("{{\"Failed\":{:?}}}", error.to_string()))
}

/// How long a membership change may take before the caller is told it may still happen.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

impl Broker {
    /// Attaches this node's metadata log (once; the server calls it after starting it).
    /// With `replicated` (a node started with peers) topics and durable queues are defined
    /// through it ([`Broker::follow_metadata`]); a lone node decides alone.
    ///
    /// A replicated node also serves the queues the metadata log places on it to the other
    /// nodes, and hands its operations on queues placed elsewhere to their leaders
    /// (`queue/remote.rs`).
    pub fn attach_cluster(self: &Arc<Self>, cluster: Cluster, replicated: bool) {
        if self.cluster.set(cluster.clone()).is_err() {
            return;
        }
        self.cluster_replicated
            .store(replicated, std::sync::atomic::Ordering::Release);
        if replicated {
            // Weak: the cluster (held by the broker) holds the handler.
            let broker = Arc::downgrade(self);
            cluster.set_forward_handler(Arc::new(move |request| {
                let broker = broker.clone();
                Box::pin(async move {
                    match broker.upgrade() {
                        Some(broker) => broker.serve_forwarded(request).await,
                        None => answer(&TxnAnswer::Failed("the broker is stopping".to_string())),
                    }
                })
            }));
            self.queues
                .attach_cluster(Arc::new(super::routing::QueuePlacement::new(
                    cluster,
                    self.followed_queues.clone(),
                )));
        }
    }

    /// Serves a request another node forwarded here.
    async fn serve_forwarded(&self, request: String) -> String {
        match serde_json::from_str::<Forwarded>(&request) {
            Ok(Forwarded::Queue(call)) => self.queues.serve_remote(call).await,
            Ok(Forwarded::TxnVerify {
                producer_id,
                epoch,
                topic,
                partition,
            }) => answer(&self.serve_txn_verify(producer_id, epoch, &topic, partition)),
            Ok(Forwarded::TxnMarker {
                topic,
                partition,
                producer_id,
                epoch,
                commit,
                now_ms,
                coordinator_epoch,
            }) => {
                let marker = Marker {
                    topic,
                    partition,
                    producer_id,
                    epoch,
                    kind: if commit {
                        ControlKind::Commit
                    } else {
                        ControlKind::Abort
                    },
                    now_ms,
                    coordinator_epoch,
                };
                answer(&match self.write_marker_here(&marker).await {
                    Ok(()) => TxnAnswer::Written,
                    Err(reason) => TxnAnswer::Failed(reason),
                })
            }
            Err(error) => answer(&TxnAnswer::Failed(format!(
                "a forwarded request does not parse: {error}"
            ))),
        }
    }

    /// This node's metadata log, once attached.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// This node's view of the cluster (Describe on the cluster).
    ///
    /// # Errors
    /// `Unauthorized`, `Starting`.
    pub fn cluster_status(&self, caller: &Session) -> Result<ClusterStatus, ClusterOpError> {
        self.check_cluster(caller, Operation::Describe)?;
        Ok(self.cluster.get().ok_or(ClusterOpError::Starting)?.status())
    }

    /// Adds node `id`, whose internal listener is at `addr` (Alter on the cluster).
    ///
    /// # Errors
    /// `Unauthorized`, `Starting`, or the metadata log's refusal.
    pub async fn add_node(
        &self,
        caller: &Session,
        id: NodeId,
        addr: String,
    ) -> Result<(), ClusterOpError> {
        self.check_cluster(caller, Operation::Alter)?;
        let cluster = self.cluster.get().ok_or(ClusterOpError::Starting)?;
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, cluster.add_node(id, addr))
            .await
            .map_err(|_| {
                ClusterError::TimedOut(format!(
                    "node {id} did not catch up within {} s; it may still join",
                    MEMBERSHIP_TIMEOUT.as_secs()
                ))
            })??;
        Ok(())
    }

    /// Rebalances the cluster's replicas (`wharf cluster rebalance`): with `start` (Alter
    /// on the cluster), proposes `Rebalance` (partitions and replicated queues move onto
    /// the nodes holding fewest, each through its group's leader); without (Describe),
    /// changes nothing. Either way answers the moves under way as the metadata log has them
    /// then.
    ///
    /// # Errors
    /// `Unauthorized`, `Starting`, or the metadata log's refusal.
    pub async fn rebalance(
        &self,
        caller: &Session,
        start: bool,
    ) -> Result<Vec<ReplicaMove>, ClusterOpError> {
        let operation = if start {
            Operation::Alter
        } else {
            Operation::Describe
        };
        self.check_cluster(caller, operation)?;
        let cluster = self.cluster.get().ok_or(ClusterOpError::Starting)?;
        if !start {
            return Ok(cluster.applied().state.moves());
        }
        match cluster.propose(MetadataCommand::Rebalance).await?.result {
            MetadataResult::Moves(moves) => Ok(moves),
            other => Err(ClusterError::Membership(format!(
                "the metadata log answered a rebalance with {other:?}"
            ))
            .into()),
        }
    }

    /// Stops node `id`'s drain (Alter on the cluster; `wharf cluster remove-node --cancel`):
    /// proposes `CancelDrain`, after which the node takes replicas again. Answers the moves
    /// still under way, which go on.
    ///
    /// # Errors
    /// `Unauthorized`, `Starting`, the metadata log's refusal (`Membership`: the node is
    /// unknown or not being drained), or the proposal's errors.
    pub async fn cancel_drain(
        &self,
        caller: &Session,
        id: NodeId,
    ) -> Result<Vec<ReplicaMove>, ClusterOpError> {
        self.check_cluster(caller, Operation::Alter)?;
        let cluster = self.cluster.get().ok_or(ClusterOpError::Starting)?;
        match cluster
            .propose(MetadataCommand::CancelDrain { node_id: id })
            .await?
            .result
        {
            MetadataResult::Moves(moves) => Ok(moves),
            MetadataResult::Refused(refusal) => {
                Err(ClusterError::Membership(refusal.to_string()).into())
            }
            other => Err(ClusterError::Membership(format!(
                "the metadata log answered a drain's cancel with {other:?}"
            ))
            .into()),
        }
    }

    /// Removes node `id` (Alter on the cluster).
    ///
    /// # Errors
    /// `Unauthorized`, `Starting`, or the metadata log's refusal.
    pub async fn remove_node(&self, caller: &Session, id: NodeId) -> Result<(), ClusterOpError> {
        self.check_cluster(caller, Operation::Alter)?;
        let cluster = self.cluster.get().ok_or(ClusterOpError::Starting)?;
        tokio::time::timeout(MEMBERSHIP_TIMEOUT, cluster.remove_node(id))
            .await
            .map_err(|_| {
                ClusterError::TimedOut(format!(
                    "removing node {id} did not finish within {} s; it may still happen",
                    MEMBERSHIP_TIMEOUT.as_secs()
                ))
            })??;
        Ok(())
    }
}
