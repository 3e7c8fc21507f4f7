//! Which node a data directory belongs to, and in which cluster (issue #20): the
//! `cluster/cluster-id` checkpoint (`WCID` v1, JSON `{"node_id": N, "cluster_id": "…"}`).
//!
//! Written when the directory is first used (node id only) and again when the node first
//! learns its cluster's id (bootstrapping it, or on the first request from a member). A
//! directory stamped for another node id is refused at startup, and a request from another
//! cluster is refused by the internal listener, so a node never joins the wrong cluster or
//! reuses another node's disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::metadata::NodeId;
use crate::storage::checkpoint;
use crate::storage::fs::Fs;

/// The file's name, in `<data-dir>/cluster/`.
pub const IDENTITY_FILE: &str = "cluster-id";
const MAGIC: [u8; 4] = *b"WCID";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    node_id: NodeId,
    cluster_id: Option<String>,
}

/// A data directory's node id and cluster id.
#[derive(Debug)]
pub struct Identity {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    node_id: NodeId,
    cluster_id: Mutex<Option<String>>,
    sequence: Mutex<u64>,
}

impl Identity {
    /// Opens the stamp in `dir` for node `node_id`, writing it if the directory is new.
    ///
    /// # Errors
    /// A message naming both ids when the directory belongs to another node; I/O errors.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, node_id: NodeId) -> Result<Identity, String> {
        crate::storage::fs::create_dir_durable(fs.as_ref(), dir).map_err(|e| e.to_string())?;
        let found = checkpoint::read(fs.as_ref(), &dir.join(IDENTITY_FILE), MAGIC)
            .map_err(|error| error.to_string())?;
        let (cluster_id, sequence) = match found {
            Some(found) => {
                if found.version != 1 {
                    return Err(format!(
                        "{} has version {}; this build reads version 1 only",
                        dir.join(IDENTITY_FILE).display(),
                        found.version
                    ));
                }
                let stamp: Stamp = serde_json::from_slice(&found.payload)
                    .map_err(|error| format!("{}: {error}", dir.join(IDENTITY_FILE).display()))?;
                if stamp.node_id != node_id {
                    return Err(format!(
                        "data directory {} belongs to node {} (of cluster {}), not node {node_id}: \
                         start with --node-id {} or another --data-dir",
                        dir.parent().unwrap_or(dir).display(),
                        stamp.node_id,
                        stamp.cluster_id.as_deref().unwrap_or("not yet formed"),
                        stamp.node_id
                    ));
                }
                (stamp.cluster_id, found.sequence)
            }
            None => (None, 0),
        };
        let identity = Identity {
            fs,
            dir: dir.to_path_buf(),
            node_id,
            cluster_id: Mutex::new(cluster_id.clone()),
            sequence: Mutex::new(sequence),
        };
        if sequence == 0 {
            identity.write(cluster_id)?;
        }
        Ok(identity)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The cluster id, once known.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Records the cluster id durably (blocking: writes and fsyncs the stamp). A node
    /// already in a cluster keeps its id.
    ///
    /// # Errors
    /// A message when the node is in another cluster, or the write failed.
    pub fn adopt(&self, cluster_id: &str) -> Result<(), String> {
        match self.cluster_id() {
            Some(own) if own == cluster_id => Ok(()),
            Some(own) => Err(format!(
                "node {} belongs to cluster {own}, not {cluster_id}",
                self.node_id
            )),
            None => {
                self.write(Some(cluster_id.to_string()))?;
                *self
                    .cluster_id
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = Some(cluster_id.to_string());
                tracing::info!(node_id = self.node_id, cluster_id, "joined cluster");
                Ok(())
            }
        }
    }

    fn write(&self, cluster_id: Option<String>) -> Result<(), String> {
        let mut sequence = self
            .sequence
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *sequence += 1;
        let payload = serde_json::to_vec(&Stamp {
            node_id: self.node_id,
            cluster_id,
        })
        .map_err(|error| error.to_string())?;
        checkpoint::write(
            self.fs.as_ref(),
            &self.dir,
            IDENTITY_FILE,
            MAGIC,
            1,
            *sequence,
            &payload,
        )
        .map_err(|error| error.to_string())
    }
}

/// A new cluster id: 128 random bits as 32 hex digits.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn new_cluster_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| error.to_string())?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::SimFs;

    #[test]
    fn a_directory_is_refused_to_another_node_and_a_cluster_id_is_kept() {
        let fs: Arc<dyn Fs> = Arc::new(SimFs::new());
        let dir = Path::new("/data/cluster");
        let identity = Identity::open(fs.clone(), dir, 2).unwrap();
        assert_eq!(identity.cluster_id(), None);
        identity.adopt("abc").unwrap();
        assert!(identity
            .adopt("def")
            .unwrap_err()
            .contains("belongs to cluster abc"));
        let reopened = Identity::open(fs.clone(), dir, 2).unwrap();
        assert_eq!(reopened.cluster_id().as_deref(), Some("abc"));
        let error = Identity::open(fs, dir, 3).unwrap_err();
        assert!(error.contains("belongs to node 2"), "{error}");
        assert!(error.contains("--node-id 2"), "{error}");
        assert_eq!(new_cluster_id().unwrap().len(), 32);
    }
}
