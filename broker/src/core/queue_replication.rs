//! Replicated queues (issue #21): a durable queue declared with more than one replica
//! (`x-queue-type: quorum`, or a `replication-factor`) has one openraft group among its
//! replicas (`cluster/replica.rs`), whose state machine is each replica's copy of the
//! queue's store (`queue/replicated.rs` says what the commands are and how they apply).
//!
//! - **Members.** The follower pass starts this node's member of each replicated queue the
//!   metadata places here, with the queue's store as its applier, in the store's message
//!   directory (its raft log in `messages/raft`, its checkpoint `replica-applied` there,
//!   where the message log's open finds it and cuts the log back to it), once the follower's
//!   record says this node's copy is of the log's incarnation of the queue (its group is
//!   `queue:<name>@<incarnation>`).
//! - **The task follows the leader.** A watcher per member starts the queue's task on this
//!   node once its member leads with every entry of its log applied (so the task's
//!   prediction of where its publishes land holds), and stops it as soon as the member no
//!   longer leads: consumers are cancelled and what waited for a commit is answered with
//!   an error. Nodes whose member follows hand the queue's operations to the leader their
//!   member knows (`core/routing.rs`, `queue/remote.rs`).
//! - **Writes.** The task submits each write through [`ReplicaLog`], one submitter task per
//!   leadership, in the task's order; a write is answered once committed and applied here.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::metadata::{MetadataState, NodeId, QueueMeta};
use crate::cluster::raft::Cluster;
use crate::cluster::replica::{Applier, Replica, ReplicaError};
use crate::cluster::store::Io;
use crate::queue::replicated::{self, CommitFuture, QueueLog};
use crate::queue::store::QueueStore;
use crate::queue::QueueError;
use crate::storage::{Clock, RealFs};

use super::Broker;
use crate::core::replication::{
    check_continues, read_batches_bounded, records_from, replica_timing,
};

/// How often a member's watcher checks whether its node should run the queue's task.
const LEAD_CHECK_EVERY: Duration = Duration::from_millis(50);
/// Entries one AppendEntries of a queue's group carries at most: a queue's entries are
/// mostly small (acks, delivery counts, runs of small publishes). A run of publishes is
/// 8 MiB (`PUBLISH_RUN_BYTES_MAX`) or one larger message (up to the listener's frame), so
/// the bytes are bounded too (`store::APPEND_BYTES_MAX`): six runs of 11 MiB and more
/// outgrew the internal wire's 64 MiB frame, and that follower never caught up.
const QUEUE_ENTRIES_PER_APPEND: u64 = 6;

/// The replicated log's name for incarnation `incarnation` of queue `queue` (topic names
/// cannot hold `:`, so it names no partition's group; queue names cannot hold `@`, so two
/// queues' groups never share a name). A queue deleted and declared again gets another
/// group, so a member of the old one (on a node that missed both changes) never joins
/// the new one. Incarnation 0 (declared before incarnations) is the plain `queue:<name>`.
pub(crate) fn queue_group_name(queue: &str, incarnation: u64) -> String {
    if incarnation == 0 {
        format!("queue:{queue}")
    } else {
        format!("queue:{queue}@{incarnation}")
    }
}

/// The queue whose replicated log `group` is (of whichever incarnation), if it is a
/// queue's.
pub(crate) fn queue_of_group(group: &str) -> Option<&str> {
    let rest = group.strip_prefix("queue:")?;
    match rest.rsplit_once('@') {
        Some((queue, number)) => number.parse::<u64>().is_ok().then_some(queue),
        None => Some(rest),
    }
}

/// Whether `group` is the replicated log of some incarnation of queue `queue`.
fn is_queue_group(group: &str, queue: &str) -> bool {
    queue_of_group(group) == Some(queue)
}

/// Applies a replicated queue's committed commands to this node's copy of its store.
#[derive(Debug)]
struct QueueApplier {
    queue: String,
    store: Arc<QueueStore>,
    clock: Arc<dyn Clock>,
    /// The position the previous checkpoint covered: message segments below it only may
    /// go (a restart cuts the log back to the last checkpoint, never below it).
    persisted: AtomicI64,
}

fn io_error(queue: &str, error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("queue {queue}: {error}"))
}

impl Applier for QueueApplier {
    fn apply(&self, command: &Bytes) -> std::io::Result<Bytes> {
        replicated::apply(&self.store, command).map_err(|error| io_error(&self.queue, error))
    }

    fn position(&self) -> i64 {
        self.store.messages().log_end_offset()
    }

    fn persist(&self) -> std::io::Result<i64> {
        let below = self.persisted.load(Ordering::Acquire);
        let end = self
            .store
            .persist_replicated(self.clock.now_ms(), below)
            .map_err(|error| io_error(&self.queue, error))?;
        self.persisted.store(end, Ordering::Release);
        Ok(end)
    }

    fn read_range(&self, from: i64, to: i64) -> std::io::Result<Bytes> {
        Ok(self.read_range_bounded(from, to, usize::MAX)?.0)
    }

    /// Batches from `from` up to about `max_bytes`: the ack state goes first only in the
    /// piece that reaches `to` (the last), the others are batches only.
    fn read_range_bounded(
        &self,
        from: i64,
        to: i64,
        max_bytes: usize,
    ) -> std::io::Result<(Bytes, i64)> {
        let (batches, end) =
            read_batches_bounded(self.store.messages(), from, to, max_bytes, &self.queue)?;
        if end < to {
            return Ok((replicated::snapshot_piece(&batches), end));
        }
        // The batches below `to` are committed and never change: the state may be read
        // after them (it is the leader's current state either way).
        let mut out = replicated::snapshot_state(&self.store);
        out.reserve(batches.len());
        out.put_slice(&batches);
        Ok((out.freeze(), end))
    }

    /// Compaction deletes whole settled segments: the log start is a batch's base.
    fn start(&self) -> std::io::Result<i64> {
        Ok(self.store.messages().log_start_offset())
    }

    /// The messages below `from` were all settled and compacted away on the leader; the
    /// snapshot's last piece brings the ack state, which settles them here too.
    fn restart_at(&self, from: i64) -> std::io::Result<()> {
        self.store
            .messages()
            .restart_at(from)
            .map_err(|error| io_error(&self.queue, error))?;
        self.store.settle_below(from);
        Ok(())
    }

    fn append_range(&self, from: i64, records: &Bytes) -> std::io::Result<i64> {
        if let Some(batches) = replicated::piece_batches(records) {
            self.append_missing(from, &batches)?;
            return Ok(self.store.messages().log_end_offset());
        }
        let snapshot =
            replicated::read_snapshot(records).map_err(|error| io_error(&self.queue, error))?;
        self.append_missing(from, &snapshot.batches)?;
        replicated::install_state(&self.store, &snapshot, self.clock.now_ms())
            .map_err(|error| io_error(&self.queue, error))?;
        let reached = self.store.messages().log_end_offset();
        tracing::info!(
            queue = self.queue,
            from,
            reached,
            low_water = snapshot.low_water,
            "a replica of the queue caught up from the leader's snapshot"
        );
        Ok(reached)
    }
}

impl QueueApplier {
    /// Appends what this replica lacks of `batches` (whole batches from message id `from`).
    fn append_missing(&self, from: i64, batches: &[u8]) -> std::io::Result<()> {
        let end = self.store.messages().log_end_offset();
        let missing =
            records_from(batches, from, end).map_err(|error| io_error(&self.queue, error))?;
        check_continues(missing, end).map_err(|error| io_error(&self.queue, error))?;
        if !missing.is_empty() {
            let mut missing = BytesMut::from(missing);
            crate::append::append_without_fsync(self.store.messages(), &mut missing)
                .map_err(|error| io_error(&self.queue, error))?;
        }
        Ok(())
    }
}

/// One write waiting for the submitter: its command and where its outcome goes.
type Submission = (Bytes, oneshot::Sender<Result<Bytes, QueueError>>);

/// A replicated queue's log as its task on the leader sees it: writes go, in order, to the
/// member's group; `closed` refuses the ones not handed over yet once the leadership ends.
#[derive(Debug)]
struct ReplicaLog {
    queue: String,
    submissions: mpsc::UnboundedSender<Submission>,
}

fn no_leader(queue: &str, error: &ReplicaError) -> QueueError {
    QueueError::Cluster {
        no_leader: !matches!(error, ReplicaError::TimedOut(_)),
        message: format!("replicated queue {queue:?}: {error}"),
    }
}

impl QueueLog for ReplicaLog {
    fn submit(&self, command: Bytes) -> CommitFuture {
        let (reply, answer) = oneshot::channel();
        let sent = self.submissions.send((command, reply)).is_ok();
        let queue = self.queue.clone();
        Box::pin(async move {
            let stopped = || {
                no_leader(
                    &queue,
                    &ReplicaError::Stopped("this node no longer leads the queue".to_string()),
                )
            };
            if !sent {
                return Err(stopped());
            }
            answer.await.unwrap_or_else(|_| Err(stopped()))
        })
    }
}

/// Starts the submitter of one leadership: it hands each write to `replica` in order until
/// `closed` is set, then refuses the rest.
fn spawn_submitter(replica: Replica, queue: String, closed: Arc<AtomicBool>) -> ReplicaLog {
    // Unbounded (STYLE.md §4 asks why): the queue's task hands writes over without waiting
    // (it must not await while it holds its delivery state between two steps), and what it
    // submits is bounded elsewhere: publishes and acks by its own command channel
    // (QUEUE_COMMANDS_MAX) and the confirms they wait for, delivery counts by the
    // consumers' prefetch windows; openraft takes each write at once (client_write_ff).
    let (submissions, mut waiting) = mpsc::unbounded_channel::<Submission>();
    let name = queue.clone();
    tokio::spawn(async move {
        while let Some((command, reply)) = waiting.recv().await {
            if closed.load(Ordering::Acquire) {
                let error = ReplicaError::Stopped("this node no longer leads the queue".into());
                let _ = reply.send(Err(no_leader(&name, &error)));
                continue;
            }
            match replica.submit(command).await {
                Ok(wait) => {
                    let name = name.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(wait.await.map_err(|error| no_leader(&name, &error)));
                    });
                }
                Err(error) => {
                    let _ = reply.send(Err(no_leader(&name, &error)));
                }
            }
        }
    });
    ReplicaLog { queue, submissions }
}

impl Broker {
    /// A queue's replicas (its preferred leader first) and its leader as this node knows
    /// it, for a queue the cluster's metadata log holds (RabbitMQ's management API shows a
    /// quorum queue's `members` and `leader`); `None` on a lone node or for a queue only
    /// this node has.
    pub fn queue_members(&self, name: &str) -> Option<(Vec<NodeId>, Option<NodeId>)> {
        let cluster = self.replicated()?;
        let applied = cluster.applied();
        let queue = applied.state.queues.get(name)?;
        let group = queue_group_name(name, queue.incarnation);
        let leader = match cluster.replicas().get(&group) {
            Some(replica) => replica.leader(),
            None => Some(queue.placement.leader),
        };
        Some((queue.placement.replicas.clone(), leader))
    }

    /// Starts this node's member of replicated queue `name` (defined by `queue`: placed on
    /// its replicas, led at first by its leader), unless it runs or the queue's copy here
    /// is not made yet.
    pub(crate) async fn start_queue_replica(
        self: &Arc<Self>,
        cluster: &Cluster,
        state: &MetadataState,
        name: &str,
        queue: &QueueMeta,
    ) {
        let set = &queue.placement;
        let replicas = &set.replicas;
        let group = queue_group_name(name, queue.incarnation);
        if cluster.replicas().get(&group).is_some() {
            return;
        }
        let Some(store) = self.queues.replicated_store(name) else {
            return; // not declared here yet, or declared before this build replicated it
        };
        let members: std::collections::BTreeMap<NodeId, String> = replicas
            .iter()
            .filter_map(|id| {
                let addr = &state.nodes.get(id)?.cluster_addr;
                (!addr.is_empty()).then(|| (*id, addr.clone()))
            })
            .collect();
        if set.initializes(cluster.node_id()) && members.len() != replicas.len() {
            return; // a first replica's address is not registered yet
        }
        let applier = Arc::new(QueueApplier {
            queue: name.to_string(),
            persisted: AtomicI64::new(store.messages().log_end_offset()),
            store: store.clone(),
            clock: self.clock.clone(),
        });
        let started = Replica::start(
            cluster.node_id(),
            group.clone(),
            store.messages().dir(),
            Arc::new(RealFs),
            Io::Blocking,
            applier,
            cluster.transport(),
            crate::cluster::raft::Timing {
                entries_per_append: QUEUE_ENTRIES_PER_APPEND,
                ..replica_timing(cluster.timing())
            },
            crate::cluster::replica::Adopt::Nothing,
        )
        .await;
        let replica = match started {
            Ok(replica) => replica,
            Err(error) => {
                tracing::warn!(%group, %error, "cannot start a replicated queue");
                return;
            }
        };
        cluster.replicas().insert(replica.clone());
        // The placement's leader founds the group at once, the other first members later if
        // it did not (`Replica::found`); a node taking the queue's replica in a move starts
        // empty and is brought in by the group's leader (`Replicas::initializes`).
        if set.initializes(cluster.node_id()) {
            let leads = set.leader == cluster.node_id();
            if let Err(error) = replica.found(members, leads).await {
                tracing::warn!(%group, %error, "cannot initialize a replicated queue");
            }
        }
        tracing::info!(%group, "replicated queue started");
        tokio::spawn(self.clone().run_queue_while_leading(
            cluster.clone(),
            replica,
            name.to_string(),
        ));
    }

    /// Runs queue `queue`'s task on this node while its member `replica` leads (see the
    /// module docs), until the member is stopped.
    async fn run_queue_while_leading(
        self: Arc<Self>,
        cluster: Cluster,
        replica: Replica,
        queue: String,
    ) {
        let group = replica.group().to_string();
        // The current leadership: its token, its term, and its submitter's switch (closed
        // when it ends).
        let mut leading: Option<(u64, u64, Arc<AtomicBool>)> = None;
        loop {
            // This member, not a later one of the same group (the queue deleted and
            // declared again): a stale watcher must never stop the new member's task.
            let member = cluster
                .replicas()
                .get(&group)
                .is_some_and(|current| current.is_same(&replica));
            let term = replica.leader_and_term().map(|(_, term)| term);
            // (A term read as none: a hand-over began between the two reads.)
            if leading.is_none() && member && term.is_some() && replica.leads_caught_up() {
                let closed = Arc::new(AtomicBool::new(false));
                let log = spawn_submitter(replica.clone(), queue.clone(), closed.clone());
                match self.queues.lead_replicated(&queue, Arc::new(log)) {
                    Ok(token) => {
                        tracing::info!(queue, "now leads the replicated queue");
                        leading = Some((token, term.unwrap_or(0), closed));
                    }
                    Err(error) => {
                        tracing::warn!(queue, %error, "cannot start the replicated queue's task")
                    }
                }
            } else if let Some((token, started, _)) = &leading {
                // Leadership ended, moved to another term between two checks (the task's
                // view predates entries it did not write), or the task stopped on a write
                // that did not commit: stop it; it starts again from the store once this
                // member leads caught up.
                let ended = !member
                    || !replica.is_leader()
                    || term != Some(*started)
                    || !self.queues.leads_replicated(&queue);
                if ended {
                    let token = *token;
                    if let Some((_, _, closed)) = leading.take() {
                        closed.store(true, Ordering::Release);
                    }
                    self.queues.follow_replicated(&queue, token).await;
                    tracing::info!(queue, "no longer leads the replicated queue");
                }
            }
            if !member {
                return;
            }
            tokio::time::sleep(LEAD_CHECK_EVERY).await;
        }
    }

    /// Stops this node's member of replicated queue `name`, of whichever incarnation
    /// (before its files go).
    pub(crate) async fn stop_queue_replica(&self, name: &str) {
        if let Some(cluster) = self.replicated() {
            for replica in cluster.replicas().all() {
                if !is_queue_group(replica.group(), name) {
                    continue;
                }
                if let Some(stopped) = cluster.replicas().remove(replica.group()) {
                    stopped.shutdown().await;
                    tracing::info!(group = stopped.group(), "replicated queue stopped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::replicated::QueueCommand;
    use wharf_protocol::batch::{BatchBuilder, NewRecord};

    fn applier(dir: &str) -> QueueApplier {
        let (store, clock) = crate::queue::replicated::tests::test_store(dir);
        QueueApplier {
            queue: dir.to_string(),
            store: Arc::new(store),
            clock,
            persisted: AtomicI64::new(0),
        }
    }

    fn publish(base: i64, count: usize) -> Bytes {
        let mut builder = BatchBuilder::new(1_000);
        for index in 0..count {
            let value = format!("m{}-{}", base + index as i64, "x".repeat(300));
            builder
                .push(&NewRecord {
                    timestamp_ms: 1_000,
                    value: Some(Bytes::from(value)),
                    ..NewRecord::default()
                })
                .unwrap();
        }
        let mut batch = BytesMut::new();
        builder.build_into(&mut batch);
        QueueCommand::Messages {
            base,
            now_ms: 1_000,
            batch: batch.freeze(),
        }
        .encode()
    }

    /// What a task starting from the replica would serve (see the store's test view).
    fn view(applier: &QueueApplier) -> (Vec<i64>, Vec<(i64, u32)>, i64) {
        crate::queue::replicated::tests::view(&applier.store)
    }

    #[test]
    fn a_replica_below_the_leaders_compacted_messages_restarts_at_its_start() {
        // Goal: a replica whose message log ends below the leader's first segment (a lost
        // disk, after the leader compacted settled messages away) empties its log and
        // continues from the leader's start, then serves what the leader serves.
        let leader = applier("/data/queues/compacted");
        for run in 0..120 {
            leader.apply(&publish(run * 3, 3)).unwrap();
        }
        leader
            .apply(
                &QueueCommand::Settle {
                    now_ms: 2_000,
                    ids: (0..300).collect(),
                }
                .encode(),
            )
            .unwrap();
        leader.persist().unwrap();
        leader.store.compact(&[], 2_000).unwrap();
        let start = leader.start().unwrap();
        assert!(start > 0, "the leader compacted its first segments");
        let to = leader.position();

        let lost = applier("/data/queues/lost");
        lost.apply(&publish(0, 3)).unwrap();
        assert!(lost.position() < start);
        // What the replicated log does with a snapshot from `start` (see `install_snapshot`).
        lost.restart_at(start).unwrap();
        let records = leader.read_range(start, to).unwrap();
        assert_eq!(lost.append_range(start, &records).unwrap(), to);
        assert_eq!(view(&lost), view(&leader));
        assert_eq!(lost.store.messages().log_start_offset(), start);
        assert!(lost.restart_at(start).is_err(), "only past the end");
    }

    #[test]
    fn a_queue_snapshot_in_pieces_brings_a_replica_level_with_the_leader() {
        // Goal: a replicated queue's snapshot can be cut into pieces (the replicated log
        // stages those beyond STAGE_PIECE_BYTES): every piece but the last holds message
        // batches only, the last the leader's ack state too, and a replica behind that
        // appends them in order serves what the leader serves.
        let leader = applier("/data/queues/leader");
        let behind = applier("/data/queues/behind");
        let mut commands: Vec<Bytes> = (0..12).map(|run| publish(run * 3, 3)).collect();
        commands.push(
            QueueCommand::Settle {
                now_ms: 2_000,
                ids: vec![0, 1, 4, 30],
            }
            .encode(),
        );
        commands.push(
            QueueCommand::Counts {
                now_ms: 2_000,
                counts: vec![(2, 1), (5, 2), (31, 1)],
            }
            .encode(),
        );
        for (index, command) in commands.iter().enumerate() {
            assert_eq!(leader.apply(command).unwrap(), Bytes::new(), "{index}");
            if index < 2 {
                behind.apply(command).unwrap();
            }
        }
        let (from, to) = (behind.position(), leader.position());
        assert_eq!((from, to), (6, 36));

        // About a batch (3 messages of 300 B) a piece.
        let mut at = from;
        let mut pieces = 0;
        while at < to {
            let (bytes, end) = leader.read_range_bounded(at, to, 1_000).unwrap();
            assert!(end > at, "a piece moves on");
            let only_batches = replicated::piece_batches(&bytes).is_some();
            assert_eq!(
                only_batches,
                end < to,
                "the state travels with the last piece only"
            );
            assert_eq!(behind.append_range(at, &bytes).unwrap(), end);
            pieces += 1;
            at = end;
        }
        assert!(pieces >= 3, "{pieces} pieces");
        assert_eq!(view(&behind), view(&leader));
        assert_eq!(behind.persist().unwrap(), to);
        // A piece the replica already holds (it applied entries after telling the leader
        // where it ended) is skipped.
        let (first, _) = leader.read_range_bounded(from, to, 1_000).unwrap();
        assert_eq!(behind.append_range(from, &first).unwrap(), to);
        assert_eq!(view(&behind), view(&leader));

        // A replica with every message but not the settles and counts after them (entries
        // it missed behind the purged raft log): the last piece of an empty range still
        // carries the leader's state.
        let settled = applier("/data/queues/settled");
        for command in &commands[..12] {
            settled.apply(command).unwrap();
        }
        assert_eq!(settled.position(), to);
        assert_ne!(view(&settled), view(&leader));
        let (state_only, end) = leader.read_range_bounded(to, to, 1_000).unwrap();
        assert_eq!(end, to);
        assert!(replicated::piece_batches(&state_only).is_none());
        assert_eq!(settled.append_range(to, &state_only).unwrap(), to);
        assert_eq!(view(&settled), view(&leader));

        // The whole range at once is one snapshot with the state, as before.
        let again = applier("/data/queues/again");
        again.apply(&commands[0]).unwrap();
        let whole = leader.read_range(3, to).unwrap();
        assert!(replicated::piece_batches(&whole).is_none());
        assert_eq!(again.append_range(3, &whole).unwrap(), to);
        assert_eq!(view(&again), view(&leader));
    }

    #[test]
    fn queue_groups_are_named_apart_from_partitions_and_other_incarnations() {
        assert_eq!(queue_group_name("orders", 0), "queue:orders");
        assert_eq!(queue_group_name("orders", 7), "queue:orders@7");
        assert_ne!(
            queue_group_name("orders-0", 0),
            crate::core::replication::group_name("orders", 0)
        );
        assert!(is_queue_group("queue:orders", "orders"));
        assert!(is_queue_group("queue:orders@7", "orders"));
        assert!(!is_queue_group("queue:orders-2@7", "orders"));
        assert!(!is_queue_group("queue:orders.x", "orders"));
        assert!(!is_queue_group("queue:orders@", "orders"));
        assert!(!is_queue_group("orders-0", "orders"));
        assert_eq!(queue_of_group("queue:orders@7"), Some("orders"));
        assert_eq!(queue_of_group("queue:orders"), Some("orders"));
        assert_eq!(queue_of_group("orders-0"), None);
    }
}
