//! The cluster's control plane as the front ends see it (issue #20): this node's view of
//! the cluster, and adding and removing nodes. The metadata log itself is
//! `crate::cluster`; the server attaches it once started.

use std::sync::Arc;
use std::time::Duration;

use crate::acl::{Denied, Operation};
use crate::cluster::metadata::NodeId;
use crate::cluster::raft::Cluster;
pub use crate::cluster::raft::{ClusterError, ClusterStatus};

use super::{Broker, Session};

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
    pub fn attach_cluster(&self, cluster: Cluster, replicated: bool) {
        if self.cluster.set(cluster.clone()).is_err() {
            return;
        }
        self.cluster_replicated
            .store(replicated, std::sync::atomic::Ordering::Release);
        if replicated {
            let queues = self.queues.clone();
            cluster.set_forward_handler(Arc::new(move |request| {
                let queues = queues.clone();
                Box::pin(async move { queues.serve_remote(request).await })
            }));
            self.queues
                .attach_cluster(Arc::new(super::routing::QueuePlacement::new(cluster)));
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
