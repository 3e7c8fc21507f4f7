//! Transactions whose partitions live on other nodes, or are replicated (issue #21).
//!
//! One node coordinates every transactional id (docs/CLUSTER.md, Coordinators); the
//! partitions of a transaction may be led anywhere. Two rules keep a transaction whole
//! there, as the producer lock keeps it whole on one node:
//!
//! - **A partition's leader verifies a transactional batch before it writes it.** The
//!   batch passes the partition's *gate* (an async lock per partition): its producer id
//!   and epoch must be in an open transaction that holds the partition, as the
//!   coordinator's membership table says (asked over the internal listener when the
//!   coordinator is another node; Kafka's KIP-890 verification is the same idea). A yes is
//!   remembered at the gate for the leader's term, so only a transaction's first batch to
//!   a partition asks. The batch is appended (or submitted to the partition's replicated
//!   log) before the gate opens again, and applying it asks nothing more
//!   ([`TxnCheck::Verified`]): every replica applies the same log alike.
//! - **A marker passes the same gate.** The coordinator hands each marker to the
//!   partition's leader ([`BrokerMarkers`]): written here, or forwarded. The leader forgets
//!   the producer's verified transaction and appends (or submits) the marker under the
//!   gate. The coordinator took the partitions out of its membership table when it logged
//!   the transaction prepared, before any marker, so a batch that reaches the gate after
//!   the marker asks again and is refused: no batch of the transaction lands after its
//!   marker, and none is left open that no marker closes.
//!
//! A partition that is not replicated and whose transactions are coordinated on its own
//! node needs no gate: its batches ask the membership table under the producer lock
//! ([`TxnCheck::Here`]).
//!
//! A marker that cannot be written (its leader is changing or unreachable) fails the
//! transaction's completion for now: the coordinator keeps it prepared, answers
//! CONCURRENT_TRANSACTIONS, and writes the markers again until all are written.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;
use wharf_protocol::batch::{self, ControlKind, NO_PRODUCER_ID};

use crate::cluster::metadata::{MetadataCommand, MetadataResult};
use crate::cluster::replica::Replica;
use crate::core::cluster_ops::{forward_call, Forwarded};
use crate::core::Broker;
use crate::streams::produce::TxnCheck;
use crate::streams::producer::Membership;
use crate::streams::producer::PRODUCER_ID_BLOCK;
use crate::streams::StreamError;
use crate::txn::{Marker, MarkerSink, MarkerWrite, ProducerIdSource, TxnError};

/// How long a forwarded verification or marker may take: well past a failover (about
/// 1.5 s), short enough that a produce refused for it is retried within its own timeout.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to a forwarded transaction request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum TxnAnswer {
    /// To a verification: the partition is in the producer's open transaction.
    Member,
    /// To a verification: a newer epoch of the producer exists.
    Fenced,
    /// To a verification: no open transaction of the producer holds the partition.
    NotAdded,
    /// To a marker: written.
    Written,
    /// Not done (this node is not the coordinator, or does not lead the partition, or
    /// failed to write).
    Failed(String),
}

/// The partitions' gates on this node.
#[derive(Debug, Default)]
pub(crate) struct TxnGates {
    gates: Mutex<HashMap<(String, u32), SharedGate>>,
}

type SharedGate = Arc<tokio::sync::Mutex<Gate>>;

/// One partition's gate: the transactions verified in the leader's current term.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    term: u64,
    verified: HashSet<(i64, i16)>,
}

/// A partition's gate, held while a transactional batch or a marker is handed on.
#[derive(Debug)]
pub(crate) struct GateGuard(OwnedMutexGuard<Gate>);

impl GateGuard {
    /// Notes the term this node leads the partition in, read after the gate was entered:
    /// what was verified in another term is forgotten (a leader again after another one
    /// wrote markers).
    fn in_term(&mut self, term: u64) {
        if self.0.term != term {
            self.0.term = term;
            self.0.verified.clear();
        }
    }
}

/// The term this node leads `replica`'s group in, read now.
///
/// # Errors
/// `NotLeader` when it does not lead it.
fn leading_term(
    replica: &Replica,
    this: u64,
    topic: &str,
    partition: u32,
) -> Result<u64, StreamError> {
    match replica.leader_and_term() {
        Some((leader, term)) if leader == this => Ok(term),
        other => Err(StreamError::NotLeader {
            topic: topic.to_string(),
            partition,
            leader: other.map(|(leader, _)| leader),
        }),
    }
}

impl TxnGates {
    /// Waits for `topic`-`partition`'s gate.
    async fn enter(&self, topic: &str, partition: u32) -> GateGuard {
        let gate = self
            .gates
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry((topic.to_string(), partition))
            .or_default()
            .clone();
        GateGuard(gate.lock_owned().await)
    }

    /// Forgets the gates of a deleted topic.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.gates
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|(name, _), _| name != topic);
    }
}

impl Broker {
    /// A producer id never handed out before. A lone node reserves blocks of ids in a file
    /// of its own (written and fsynced on the blocking pool); a node with peers reserves
    /// each block through the metadata log (`ReserveProducerIds`), which remembers every
    /// node's reservations, so a node that lost its disk never hands out an id again (its
    /// producers' sequences would clash with the partitions' producer state).
    ///
    /// # Errors
    /// Storage errors; the metadata log did not take the reservation.
    pub(crate) async fn allocate_producer_id(&self) -> Result<i64, TxnError> {
        let Some(cluster) = self.replicated() else {
            let streams = self.streams.clone();
            return tokio::task::spawn_blocking(move || streams.allocate_producer_id())
                .await
                .map_err(|error| TxnError::Internal(error.to_string()))?
                .map_err(TxnError::from);
        };
        loop {
            if let Some(id) = self.streams.producers().take_reserved() {
                return Ok(id);
            }
            let command = MetadataCommand::ReserveProducerIds {
                node_id: cluster.node_id(),
                from: self.streams.producers().next_id(),
                count: PRODUCER_ID_BLOCK,
            };
            // No leader, a timeout: the client asks again (COORDINATOR_NOT_AVAILABLE).
            let reserved = cluster.propose(command).await.map_err(|error| {
                tracing::warn!(%error, "the cluster did not reserve producer ids");
                TxnError::NotRunning
            })?;
            let MetadataResult::ProducerIds { start, end } = reserved.result else {
                return Err(TxnError::Internal(format!(
                    "a producer id reservation answered {:?}",
                    reserved.result
                )));
            };
            let streams = self.streams.clone();
            tokio::task::spawn_blocking(move || streams.producers().adopt_block(start, end))
                .await
                .map_err(|error| TxnError::Internal(error.to_string()))??;
        }
    }

    /// Whether transactional ids are coordinated on this node (a lone node coordinates
    /// everything).
    fn coordinates_txns_here(&self) -> bool {
        self.coordinates_here()
    }

    /// Passes `records` (one produce's batches for `topic`-`partition`) through the
    /// partition's gate when they are a transactional batch that needs it (see the module
    /// doc), verifying its transaction. Returns how applying it checks the transaction and
    /// the gate to hold until the batch is appended or submitted.
    ///
    /// # Errors
    /// `TxnFenced`, `NotInTransaction` as the coordinator answers; `TxnUnverified` when it
    /// cannot be asked.
    pub(crate) async fn txn_gate(
        &self,
        topic: &str,
        partition: u32,
        records: &[u8],
        replica: Option<&Replica>,
    ) -> Result<(TxnCheck, Option<GateGuard>), StreamError> {
        let header = match batch::parse_header(records) {
            Ok(Some(header))
                if header.attributes.is_transactional() && header.producer_id != NO_PRODUCER_ID =>
            {
                header
            }
            // Not transactional, or not a batch (the produce rules say what is wrong).
            _ => return Ok((TxnCheck::Here, None)),
        };
        let coordinator_here = self.coordinates_txns_here();
        if replica.is_none() && coordinator_here {
            return Ok((TxnCheck::Here, None));
        }
        let this = self.cluster().map_or(0, |cluster| cluster.node_id());
        let mut gate = self.txn_gates.enter(topic, partition).await;
        // The term is read once the gate is held: a term read before waiting could be stale.
        let term = match replica {
            Some(replica) => leading_term(replica, this, topic, partition)?,
            None => 0,
        };
        gate.in_term(term);
        let key = (header.producer_id, header.producer_epoch);
        if !gate.0.verified.contains(&key) {
            let membership = if coordinator_here {
                self.streams.txn_members().membership(
                    header.producer_id,
                    header.producer_epoch,
                    topic,
                    partition,
                )
            } else {
                self.ask_coordinator(header.producer_id, header.producer_epoch, topic, partition)
                    .await?
            };
            // The coordinator's answer holds for this term only: a leader that lost and won
            // back leadership meanwhile may have seen the transaction's marker go by.
            if let Some(replica) = replica {
                if leading_term(replica, this, topic, partition)? != term {
                    return Err(StreamError::NotLeader {
                        topic: topic.to_string(),
                        partition,
                        leader: None,
                    });
                }
            }
            match membership {
                Membership::Member => {
                    gate.0.verified.insert(key);
                }
                Membership::Fenced => {
                    return Err(StreamError::TxnFenced {
                        producer_id: header.producer_id,
                        epoch: header.producer_epoch,
                    })
                }
                Membership::NotAdded => {
                    return Err(StreamError::NotInTransaction {
                        topic: topic.to_string(),
                        partition,
                        producer_id: header.producer_id,
                    })
                }
            }
        }
        Ok((TxnCheck::Verified, Some(gate)))
    }

    /// Asks the coordinator (another node) whether the producer's open transaction holds
    /// the partition.
    async fn ask_coordinator(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: u32,
    ) -> Result<Membership, StreamError> {
        let (Some(cluster), Some(coordinator)) = (
            self.cluster(),
            self.routing().and_then(|routing| routing.coordinator()),
        ) else {
            return Err(StreamError::TxnUnverified(
                "no coordinator is known yet".to_string(),
            ));
        };
        let request = Forwarded::TxnVerify {
            producer_id,
            epoch,
            topic: topic.to_string(),
            partition,
        };
        let answer = forward_call(cluster, coordinator, &request, FORWARD_TIMEOUT)
            .await
            .map_err(StreamError::TxnUnverified)?;
        match serde_json::from_str::<TxnAnswer>(&answer) {
            Ok(TxnAnswer::Member) => Ok(Membership::Member),
            Ok(TxnAnswer::Fenced) => Ok(Membership::Fenced),
            Ok(TxnAnswer::NotAdded) => Ok(Membership::NotAdded),
            Ok(TxnAnswer::Failed(reason)) => Err(StreamError::TxnUnverified(format!(
                "node {coordinator}: {reason}"
            ))),
            Ok(TxnAnswer::Written) | Err(_) => Err(StreamError::TxnUnverified(format!(
                "node {coordinator} answered a verification with {answer:?}"
            ))),
        }
    }

    /// Answers a partition leader's verification, as the coordinator.
    pub(crate) fn serve_txn_verify(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: u32,
    ) -> TxnAnswer {
        if !self.coordinates_txns_here() {
            return TxnAnswer::Failed("this node does not coordinate transactions".to_string());
        }
        match self
            .streams
            .txn_members()
            .membership(producer_id, epoch, topic, partition)
        {
            Membership::Member => TxnAnswer::Member,
            Membership::Fenced => TxnAnswer::Fenced,
            Membership::NotAdded => TxnAnswer::NotAdded,
        }
    }

    /// Writes `marker` as the leader of its partition: through the partition's replicated
    /// log where it has one, else to its log here, fsynced. A partition that no longer
    /// exists needs none.
    ///
    /// # Errors
    /// Why it was not written: another node leads, or none does, or storage failed.
    pub(crate) async fn write_marker_here(&self, marker: &Marker) -> Result<(), String> {
        let Marker {
            topic, partition, ..
        } = marker;
        let partition = *partition;
        if let Some(replica) = self.partition_replica(topic, partition) {
            let this = self.cluster().map_or(0, |cluster| cluster.node_id());
            let pending = {
                let mut gate = self.txn_gates.enter(topic, partition).await;
                let term = leading_term(&replica, this, topic, partition)
                    .map_err(|refusal| refusal.to_string())?;
                gate.in_term(term);
                gate.0
                    .verified
                    .retain(|(producer_id, _)| *producer_id != marker.producer_id);
                self.submit_marker(&replica, marker).await?
            };
            return pending.await;
        }
        if let Some(routing) = self.routing() {
            if routing
                .partition(topic, partition)
                .is_some_and(|placed| placed.in_a_group)
            {
                return Err(format!(
                    "{topic}-{partition} is replicated and its group is not running here"
                ));
            }
            if let Some(refusal) = routing.refusal(topic, partition) {
                return Err(refusal.to_string());
            }
        }
        let Some(log) = self.streams.partition(topic, partition) else {
            return Ok(());
        };
        let receipt = {
            let mut gate = self.txn_gates.enter(topic, partition).await;
            gate.in_term(0);
            gate.0
                .verified
                .retain(|(producer_id, _)| *producer_id != marker.producer_id);
            self.streams
                .append_marker(
                    topic,
                    partition,
                    &log,
                    marker.producer_id,
                    marker.epoch,
                    marker.kind,
                    marker.now_ms,
                    marker.coordinator_epoch,
                )
                .map_err(|error| error.to_string())?
        };
        receipt.synced().await.map_err(|error| error.to_string())
    }

    /// Writes `marker` through its partition's leader: here, or forwarded.
    async fn route_marker(&self, marker: Marker) -> Result<(), String> {
        if self.cluster_expected && self.cluster().is_none() {
            // Recovery runs at start, before the metadata log is attached: a marker written
            // now would bypass the partition's group.
            return Err("the cluster is still starting".to_string());
        }
        let Some(routing) = self.routing() else {
            return self.write_marker_here(&marker).await;
        };
        let this = routing.this_node();
        let leader = match routing.partition(&marker.topic, marker.partition) {
            // Not placed: the partition is this node's own.
            None => Some(this),
            Some(placed) => placed.leader,
        };
        drop(routing);
        match leader {
            Some(leader) if leader == this => self.write_marker_here(&marker).await,
            Some(leader) => {
                let cluster = self
                    .cluster()
                    .ok_or_else(|| "the cluster is still starting".to_string())?;
                let request = Forwarded::TxnMarker {
                    topic: marker.topic.clone(),
                    partition: marker.partition,
                    producer_id: marker.producer_id,
                    epoch: marker.epoch,
                    commit: marker.kind == ControlKind::Commit,
                    now_ms: marker.now_ms,
                    coordinator_epoch: marker.coordinator_epoch,
                };
                let answer = forward_call(cluster, leader, &request, FORWARD_TIMEOUT).await?;
                match serde_json::from_str::<TxnAnswer>(&answer) {
                    Ok(TxnAnswer::Written) => Ok(()),
                    Ok(TxnAnswer::Failed(reason)) => Err(format!("node {leader}: {reason}")),
                    _ => Err(format!("node {leader} answered a marker with {answer:?}")),
                }
            }
            None => Err(format!(
                "{}-{} has no leader right now",
                marker.topic, marker.partition
            )),
        }
    }
}

/// The coordinator's [`ProducerIdSource`]: [`Broker::allocate_producer_id`]. Holds the
/// broker weakly (the broker holds the coordinator).
#[derive(Debug)]
pub(crate) struct BrokerIds(pub(crate) Weak<Broker>);

impl ProducerIdSource for BrokerIds {
    fn allocate(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<i64, TxnError>> + Send>> {
        let broker = self.0.clone();
        Box::pin(async move {
            let broker = broker.upgrade().ok_or(TxnError::NotRunning)?;
            broker.allocate_producer_id().await
        })
    }
}

/// The coordinator's [`MarkerSink`]: each marker to its partition's leader. Holds the
/// broker weakly (the broker holds the coordinator).
#[derive(Debug)]
pub(crate) struct BrokerMarkers(pub(crate) Weak<Broker>);

impl MarkerSink for BrokerMarkers {
    fn write(&self, marker: Marker) -> MarkerWrite {
        let broker = self.0.clone();
        Box::pin(async move {
            let broker = broker.upgrade().ok_or(TxnError::NotRunning)?;
            let what = format!(
                "the {} marker of {}-{}",
                if marker.kind == ControlKind::Commit {
                    "commit"
                } else {
                    "abort"
                },
                marker.topic,
                marker.partition
            );
            broker.route_marker(marker).await.map_err(|reason| {
                tracing::warn!(%reason, "{what} is not written yet; the coordinator tries again");
                TxnError::Concurrent(format!(
                    "{what} is not written yet ({reason}); the coordinator writes it again, retry"
                ))
            })
        })
    }
}
