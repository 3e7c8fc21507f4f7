//! A cluster of brokers, the control plane (issue #20): node identity, the replicated
//! metadata log on openraft and the placement of partitions and queues. docs/CLUSTER.md.
//!
//! - [`metadata`]: the state machine (every cluster-wide definition) and its commands.
//! - [`placement`]: where replicas and leaders go, a pure function of the state.
//! - [`store`]: the log and state-machine storage under the storage engine's rules.
//! - [`raft`]: the seam ([`raft::Cluster`]) over openraft, and the RPCs between nodes.

pub mod metadata;
pub mod placement;
pub mod raft;
pub mod store;

#[cfg(test)]
mod sim_tests;
