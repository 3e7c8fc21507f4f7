//! The exclusive queues of a node that went silent (issue #20): RabbitMQ deletes the
//! exclusive queues of a node that goes down with its connections. Wharf's metadata leader
//! hears every node at each heartbeat of the metadata log; a node it has not heard from
//! for [`SILENCE_BEFORE_DROP`] (counted from when this node became leader, at the earliest)
//! is taken for gone with its connections, and its exclusive queues are deleted from the
//! log (`MetadataCommand::DropExclusiveQueues`), with their bindings. Until then a publish
//! through another node that routes to such a queue waits for the dead node and fails
//! (a confirm is nacked after the forward's timeout); after it, the message goes only where
//! the other bindings route it, as in RabbitMQ.
//!
//! A node cut off from the leader but alive (a partition) loses them too: when it hears
//! the log again its follower deletes its copies, and their consumers are cancelled.
//!
//! **Invariants.** Only a leader's own view decides, and only its own write carries the
//! decision out (`Cluster::propose_as_leader`, never forwarded): a leader that was the one
//! cut off, deposed before its entry committed, drops nothing. A drop names the queues the
//! leader saw (name and incarnation): one declared after the decision stays. A connection's
//! close deletes its queue from the log only while the log holds it as that node's
//! (`DeleteQueue::exclusive_on`), so it never deletes another connection's queue declared
//! under the name after the drop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cluster::metadata::{MetadataCommand, MetadataState, NodeId};
use crate::cluster::raft::Cluster;

use super::Broker;

/// How long the metadata leader waits without hearing a node before it deletes that node's
/// exclusive queues: the forward's timeout (a publish routed there fails after 15 s), and
/// many heartbeats (100 ms each), so a node paused or slow for a few seconds keeps them.
pub(crate) const SILENCE_BEFORE_DROP: Duration = Duration::from_secs(15);

/// How often the leader looks.
const CHECK_EVERY: Duration = Duration::from_secs(1);

impl Broker {
    /// Until shut down: while this node leads the metadata log, deletes the exclusive
    /// queues of each node it has not heard from for [`SILENCE_BEFORE_DROP`].
    pub(crate) async fn drop_silent_nodes_exclusive_queues(
        self: Arc<Self>,
        cluster: Cluster,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut leading_since: Option<Instant> = None;
        loop {
            if cluster.leads() {
                let since = *leading_since.get_or_insert_with(Instant::now);
                let state = cluster.applied().state;
                for (node, queues) in exclusive_queues_by_node(&state, cluster.node_id()) {
                    // Checked again before each proposal: a leader deposed meanwhile (it
                    // was the one cut off) decides nothing more.
                    let now = Instant::now();
                    if !cluster.leads()
                        || !silent(cluster.last_heard(node), since, now, SILENCE_BEFORE_DROP)
                    {
                        continue;
                    }
                    let count = queues.len();
                    // Never forwarded: only this leader's view supports the decision.
                    match cluster
                        .propose_as_leader(MetadataCommand::DropExclusiveQueues {
                            node_id: node,
                            queues,
                        })
                        .await
                    {
                        Ok(_) => tracing::warn!(
                            node,
                            queues = count,
                            silent_ms = SILENCE_BEFORE_DROP.as_millis() as u64,
                            "deleted the exclusive queues of a node not heard from: its connections are taken for gone"
                        ),
                        Err(error) => tracing::debug!(
                            node,
                            %error,
                            "cannot delete a silent node's exclusive queues yet"
                        ),
                    }
                }
            } else {
                leading_since = None;
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The exclusive queues in `state` of each node other than `this`, by name and
/// incarnation.
fn exclusive_queues_by_node(
    state: &MetadataState,
    this: NodeId,
) -> BTreeMap<NodeId, Vec<(String, u64)>> {
    let mut by_node: BTreeMap<NodeId, Vec<(String, u64)>> = BTreeMap::new();
    for (name, queue) in &state.queues {
        if let Some(node) = queue.exclusive_on.filter(|node| *node != this) {
            by_node
                .entry(node)
                .or_default()
                .push((name.clone(), queue.incarnation));
        }
    }
    by_node
}

/// Whether a node last heard at `heard` (if ever) is silent long enough at `now`, this node
/// leading since `leading_since`.
fn silent(heard: Option<Instant>, leading_since: Instant, now: Instant, limit: Duration) -> bool {
    let last = heard.map_or(leading_since, |heard| heard.max(leading_since));
    now.saturating_duration_since(last) >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_silent_only_counting_from_the_later_of_its_last_answer_and_the_lead() {
        let start = Instant::now();
        let limit = Duration::from_secs(15);
        let at = |seconds| start + Duration::from_secs(seconds);
        // Never heard: counted from when this node began to lead.
        assert!(!silent(None, at(0), at(14), limit));
        assert!(silent(None, at(0), at(15), limit));
        // Heard before this node led (an earlier term): the lead counts.
        assert!(!silent(Some(at(0)), at(10), at(20), limit));
        assert!(silent(Some(at(0)), at(10), at(25), limit));
        // Heard while leading: from the last answer.
        assert!(!silent(Some(at(12)), at(10), at(26), limit));
        assert!(silent(Some(at(12)), at(10), at(27), limit));
    }
}
