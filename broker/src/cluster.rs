//! A cluster of brokers, the control plane (issue #20): node identity, the replicated
//! metadata log on openraft and the placement of partitions and queues. docs/CLUSTER.md.
//!
//! - [`metadata`]: the state machine (every cluster-wide definition) and its commands.
//! - [`placement`]: where replicas and leaders go, a pure function of the state.
//! - [`store`]: the log and state-machine storage under the storage engine's rules.
//! - [`raft`]: the seam ([`raft::Cluster`]) over openraft, and the RPCs between nodes.
//! - [`transport`]: those RPCs over TCP, the internal listener.
//! - [`codec`]: the binary encoding (MessagePack) of those RPCs and of the raft logs' entries.
//! - [`identity`]: the node and cluster ids stamped in the data directory.
//! - [`node`]: starting a node: bootstrap, joining, registering its addresses.

pub mod codec;
pub mod identity;
pub mod metadata;
pub mod node;
pub mod placement;
pub mod raft;
pub mod replica;
pub mod security_meta;
pub mod store;
pub mod transport;

#[cfg(test)]
mod sim_tests;
