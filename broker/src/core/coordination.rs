//! Where consumer groups and transactions are coordinated in a cluster (issue #21).
//!
//! One node coordinates every consumer group and transactional id: the node that leads
//! partition 0 of `__consumer_offsets`. That partition is placed by the metadata log like a
//! topic's (the cluster's default factor: replicated from three nodes on) and written
//! through its replicated log, so the committed offsets and the transaction log (whose
//! records share it, tagged) survive the loss of any minority of nodes.
//!
//! - **Placing it.** The node leading the metadata log proposes the partition once every
//!   voting member has registered (so it gets the full factor); the metadata log puts the
//!   lowest node id first among its replicas, so it is led there at first, where a client
//!   that knows no better looks.
//! - **Taking over.** A watcher on every node starts coordinating once its member of the
//!   partition's group leads with its whole log applied: the offset store replays this
//!   node's copy ([`OffsetStore::serve`](crate::groups::offsets::OffsetStore::serve)), the
//!   transaction coordinator replays its records and recovers (prepared transactions
//!   completed, open ones go on) and serves. It stops as soon as the member no longer
//!   leads or its term changed: calls are refused (NOT_COORDINATOR) and the clients find the
//!   new coordinator.
//! - **Writes** go through the group ([`ReplicatedRecordLog`]): an offset commit or a
//!   transaction's state change is answered only once a majority has it.
//!
//! A partition placed with one replica (a cluster of one or two nodes) is written here
//! when this node is its placed leader, as on a lone node; a lone node (no peers) keeps
//! its own `__consumer_offsets` and `__transaction_state` and none of this runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::append::{LocalLog, LogAppend, RecordLog, WriterCheck};
use crate::cluster::metadata::{MetadataCommand, MetadataState};
use crate::cluster::raft::Cluster;
use crate::cluster::replica::Replica;
use crate::groups::offsets::{replay_groups, OFFSETS_TOPIC};
use crate::storage::{Appended, Clock, Error as StorageError, Partition};
use crate::streams::topic::internal_overrides;
use crate::txn::{replay_shared, TxnDeps};

use super::replication::{append_through, group_name};
use super::Broker;

/// How often the watcher checks whether this node should coordinate.
const COORDINATION_CHECK_EVERY: Duration = Duration::from_millis(50);
/// How often the metadata log's leader proposes the coordinator's partition while the
/// log lacks it.
const PLACE_RETRY_EVERY: Duration = Duration::from_secs(1);

/// This node's part in coordination.
#[derive(Debug, Default)]
pub(crate) struct Coordination {
    /// This node coordinates groups and transactions now.
    active: AtomicBool,
    /// The term of the leadership it coordinates in (0: a partition placed here alone).
    term: AtomicU64,
    /// The transaction coordinator's task while this node coordinates.
    txn_task: Mutex<Option<JoinHandle<()>>>,
    /// What a transaction coordinator started here works on (set when the broker starts).
    deps: OnceLock<TxnDeps>,
}

impl Coordination {
    /// Whether this node coordinates groups and transactions now.
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Keeps what a transaction coordinator started here will work on.
    pub(crate) fn set_deps(&self, deps: TxnDeps) {
        let _ = self.deps.set(deps);
    }

    fn task(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.txn_task
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The coordinator's records written through the replicated partition's group.
#[derive(Debug)]
struct ReplicatedRecordLog {
    replica: Replica,
    clock: Arc<dyn Clock>,
}

impl RecordLog for ReplicatedRecordLog {
    fn write_batches(&self, batches: BytesMut) -> LogAppend {
        let replica = self.replica.clone();
        let now_ms = self.clock.now_ms();
        Box::pin(async move {
            let (base_offset, last_offset) = append_through(&replica, now_ms, &batches)
                .await
                .map_err(|reason| StorageError::NotReplicated {
                    log: replica.group().to_string(),
                    reason,
                })?;
            Ok(Appended {
                base_offset,
                last_offset,
                next_offset: last_offset + 1,
            })
        })
    }

    fn confirm_writer(&self) -> WriterCheck {
        let replica = self.replica.clone();
        Box::pin(async move { replica.confirm_leader().await })
    }
}

/// Where this node would write the coordinator's records if it coordinated.
enum Seat {
    /// Its member of the replicated partition, leading with its log applied.
    Replicated(Box<Replica>),
    /// Its copy of a partition placed on this node alone.
    Local(Arc<Partition>),
}

impl Broker {
    /// Whether this node coordinates groups and transactions now (a lone node always does;
    /// a node started with peers only while [`Broker::coordinate`] says so).
    pub(crate) fn coordinates_here(&self) -> bool {
        if !self.cluster_expected {
            return true;
        }
        if !self.coordination.active() {
            return false;
        }
        // The watcher looks every 50 ms: between two looks the seat may be gone already.
        let Some(cluster) = self.replicated() else {
            return false;
        };
        Self::seat_term(cluster, &cluster.applied().state)
            == Some(self.coordination.term.load(Ordering::Acquire))
    }

    /// The node a call refused here should go to, as far as this node knows (none while
    /// this node is named but not coordinating yet: it is taking the seat).
    pub(crate) fn coordinator_elsewhere(&self) -> Option<u64> {
        self.routing().and_then(|routing| {
            routing
                .coordinator()
                .filter(|node| *node != routing.this_node())
        })
    }

    /// This node's seat, when it should coordinate now.
    fn coordinator_seat(&self, cluster: &Cluster, state: &MetadataState) -> Option<Seat> {
        let placed = state.topics.get(OFFSETS_TOPIC)?.partitions.first()?;
        if placed.in_a_group() {
            let member = cluster.replicas().get(&group_name(OFFSETS_TOPIC, 0))?;
            return member
                .leads_caught_up()
                .then_some(Seat::Replicated(Box::new(member)));
        }
        if placed.leader != cluster.node_id() {
            return None;
        }
        self.streams
            .topics()
            .partition(OFFSETS_TOPIC, 0)
            .map(Seat::Local)
    }

    /// The term this node's seat holds (0 for a partition placed here alone).
    fn seat_term(cluster: &Cluster, state: &MetadataState) -> Option<u64> {
        let placed = state.topics.get(OFFSETS_TOPIC)?.partitions.first()?;
        if placed.in_a_group() {
            let member = cluster.replicas().get(&group_name(OFFSETS_TOPIC, 0))?;
            let (leader, term) = member.leader_and_term()?;
            return (leader == cluster.node_id()).then_some(term);
        }
        (placed.leader == cluster.node_id()).then_some(0)
    }

    /// Coordinates groups and transactions on this node while it leads the coordinator's
    /// partition (see the module docs), until `shutdown`.
    pub(crate) async fn coordinate(
        self: Arc<Self>,
        cluster: Cluster,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut leading: Option<u64> = None;
        let mut proposed: Option<Instant> = None;
        loop {
            let state = cluster.applied().state;
            match leading {
                None => {
                    if let (Some(seat), Some(term)) = (
                        self.coordinator_seat(&cluster, &state),
                        Self::seat_term(&cluster, &state),
                    ) {
                        match self.start_coordinating(seat, term).await {
                            Ok(()) => {
                                tracing::info!(
                                    term,
                                    "now coordinates consumer groups and transactions"
                                );
                                leading = Some(term);
                            }
                            Err(error) => {
                                tracing::warn!(%error, "cannot start coordinating groups and transactions");
                                // Not again at once: a failing start would warn 20 times a
                                // second.
                                tokio::time::sleep(PLACE_RETRY_EVERY).await;
                            }
                        }
                    }
                }
                Some(term) => {
                    if Self::seat_term(&cluster, &state) != Some(term) {
                        self.stop_coordinating();
                        tracing::info!(
                            term,
                            "no longer coordinates consumer groups and transactions"
                        );
                        leading = None;
                    }
                }
            }
            if !state.topics.contains_key(OFFSETS_TOPIC)
                && proposed.is_none_or(|at| at.elapsed() >= PLACE_RETRY_EVERY)
            {
                proposed = Some(Instant::now());
                Self::place_coordinator_partition(&cluster, &state).await;
            }
            tokio::select! {
                () = tokio::time::sleep(COORDINATION_CHECK_EVERY) => {}
                _ = shutdown.changed() => {
                    self.stop_coordinating();
                    return;
                }
            }
        }
    }

    /// Starts the offset store and the transaction coordinator on `seat`.
    async fn start_coordinating(&self, seat: Seat, term: u64) -> Result<(), String> {
        let mut deps = self
            .coordination
            .deps
            .get()
            .cloned()
            .ok_or_else(|| "the broker has not started".to_string())?;
        // The markers of this leadership carry its term: a partition refuses them once a
        // later coordinator wrote one for the same producer.
        deps.coordinator_epoch = super::routing::epoch_of(term);
        let writer: Arc<dyn RecordLog> = match seat {
            Seat::Replicated(replica) => Arc::new(ReplicatedRecordLog {
                replica: *replica,
                clock: self.clock.clone(),
            }),
            Seat::Local(log) => Arc::new(LocalLog(log)),
        };
        let offsets = self.offsets.clone();
        let serving = writer.clone();
        let (replayed, saved) = tokio::task::spawn_blocking(move || {
            offsets.serve(serving)?;
            let replayed = replay_shared(offsets.log())?;
            Ok::<_, StorageError>((replayed, replay_groups(offsets.log())?))
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| {
            self.offsets.stop_serving();
            error.to_string()
        })?;
        // The groups the previous coordinator recorded go on here at their generations.
        self.groups.classic().restore(saved.classic);
        self.groups.restore(saved.broker_side);
        let task = self.txn.lead(replayed, writer, deps);
        if let Some(earlier) = self.coordination.task().replace(task) {
            earlier.abort();
        }
        self.coordination.term.store(term, Ordering::Release);
        self.coordination.active.store(true, Ordering::Release);
        Ok(())
    }

    /// Stops coordinating here: calls are refused from now on, the transaction
    /// coordinator's task stops (what it was doing is in the log: the next coordinator
    /// finishes it) and the offsets in memory are dropped.
    fn stop_coordinating(&self) {
        self.coordination.active.store(false, Ordering::Release);
        self.txn.stop();
        if let Some(task) = self.coordination.task().take() {
            task.abort();
        }
        self.offsets.stop_serving();
        self.groups.forget_all();
    }

    /// Proposes the coordinator's partition to the metadata log, when this node leads the
    /// log and every voting member has registered (a factor decided earlier would be
    /// too small for good).
    async fn place_coordinator_partition(cluster: &Cluster, state: &MetadataState) {
        let status = cluster.status();
        if status.leader != Some(cluster.node_id())
            || status
                .voters
                .keys()
                .any(|voter| !state.nodes.contains_key(voter))
        {
            return;
        }
        let command = MetadataCommand::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: 1,
            replication_factor: 0,
            configs: internal_overrides().into_iter().collect(),
            // Every node has its own copy already (made at start): none takes an id.
            topic_id: None,
        };
        match cluster.propose(command).await {
            Ok(_) => tracing::info!("placed the coordinator's partition {OFFSETS_TOPIC}-0"),
            Err(error) => {
                tracing::debug!(%error, "cannot place the coordinator's partition yet")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cluster_and_the_catalog_agree_on_internal_topic_names() {
        assert_eq!(
            crate::cluster::metadata::INTERNAL_TOPIC_PREFIX,
            crate::streams::topic::INTERNAL_TOPIC_PREFIX
        );
    }
}
