//! The metadata log on openraft (issue #20), behind Wharf's own seam: the rest of the
//! broker calls [`Cluster`] (propose a [`MetadataCommand`], read the applied state, add or
//! remove a node, status) and never names an openraft type.
//!
//! openraft 0.9 (the stable line; 0.10 is still in alpha and changes the storage traits)
//! runs the election, replication and commit rules; Wharf supplies the storage
//! (`cluster/store.rs`), the state machine (`cluster/metadata.rs`) and the transport: a
//! [`Transport`] carries [`RaftRpc`]s to another node and [`serve`] answers them, so the same
//! code runs over TCP between processes (`cluster/transport.rs`) and over the simulated
//! network of the tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    ClientWriteError, Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, RaftNetwork, RaftNetworkFactory, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::metadata::{MetadataCommand, MetadataError, MetadataResult, MetadataState, NodeId};
use super::replica::{ReplicaReply, ReplicaRpc, Replicas};
use super::store::{Applied, LogStore, MachineStore};

openraft::declare_raft_types!(
    /// The metadata log's types for openraft.
    pub TypeConfig:
        D = MetadataCommand,
        R = MetadataResult,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Vec<u8>,
);

/// A request from one node to another over the internal listener.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    /// openraft's AppendEntries.
    Append(AppendEntriesRequest<TypeConfig>),
    /// openraft's RequestVote.
    Vote(VoteRequest<NodeId>),
    /// A whole snapshot (metadata snapshots are small).
    Snapshot {
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    },
    /// A metadata change forwarded to the leader.
    Propose(MetadataCommand),
    /// A node to add, forwarded to the leader.
    AddNode { id: NodeId, addr: String },
    /// A node to remove, forwarded to the leader.
    RemoveNode { id: NodeId },
    /// Which cluster the node is in, if any (bootstrap).
    Hello,
    /// A request of the broker's own (a queue operation forwarded to the queue's leader),
    /// as JSON the broker defines; the metadata log only carries it to the
    /// [`ForwardHandler`].
    Forward(String),
    /// An RPC of a replicated log's group (`cluster/replica.rs`), for this node's member.
    /// `instance` tells two groups of one name apart (a partition's topic id): a member of
    /// another instance refuses it. Absent from a sender that names none.
    Replica {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        instance: Option<[u8; 16]>,
        rpc: Box<ReplicaRpc>,
    },
}

/// The answer to a [`RaftRpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `Snapshot`.
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// To `Propose`: the log index it was applied at and its result.
    Propose(Result<Proposed, ClusterError>),
    /// To `AddNode` and `RemoveNode`.
    Membership(Result<(), ClusterError>),
    /// To `Hello`: the node's id and its cluster id (None: not in a cluster yet).
    Hello {
        node_id: NodeId,
        cluster_id: Option<String>,
    },
    /// To `Forward`: the broker's answer, as JSON it defines.
    Forward(String),
    /// To `Replica`.
    Replica(Box<ReplicaReply>),
    /// The node refused the request (another cluster's, say).
    Refused(String),
}

/// Serves a [`RaftRpc::Forward`] on the node that receives it: the broker's request in,
/// its answer out (both JSON of the broker's own types).
pub type ForwardHandler =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// A committed and applied metadata change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// The log index it was applied at.
    pub index: u64,
    /// What applying it gave.
    pub result: MetadataResult,
}

/// Whether a proposal made on a node that does not lead goes to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forward {
    /// Sent on to the leader this node knows.
    ToLeader,
    /// Not sent: `NoLeader` (only this node's own view supports the change).
    Never,
}

/// Why a metadata operation did not happen (or may not have).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known (an election is under way, or this node is cut off from a
    /// majority): nothing was changed; retry.
    #[error("no leader is known (an election is under way or this node cannot reach a majority); nothing was changed")]
    NoLeader,
    /// The leader could not be reached or did not answer in time: the change may or may not
    /// have been made.
    #[error("the leader (node {leader}) did not answer: {reason}; the change may or may not have been made")]
    Unavailable { leader: NodeId, reason: String },
    /// openraft stopped (a storage failure, or shutdown).
    #[error("the metadata log stopped: {0}")]
    Stopped(String),
    /// A membership change was refused.
    #[error("{0}")]
    Membership(String),
    /// No answer in time: the change may or may not be made.
    #[error("{0}")]
    TimedOut(String),
    /// A command too large for the metadata log.
    #[error("a metadata command of {bytes} bytes exceeds the {COMMAND_BYTES_MAX} bytes the metadata log takes")]
    TooLarge { bytes: usize },
}

/// How recently the leader must have heard a node for its removal to drain it first.
const DRAINED_NODE_HEARD: Duration = Duration::from_secs(3);
/// How long one removal waits for a drain (well below the 30 s that the core and the
/// clients give the whole request); the CLI asks again while moves go on.
const DRAIN_WAIT: Duration = Duration::from_secs(15);
/// How often a removal looks whether the drain is done.
const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(200);

/// Largest metadata command, as JSON: far below the log's record limit
/// (`store::RECORD_PAYLOAD_BYTES_MAX`), which also holds openraft's entry fields.
pub const COMMAND_BYTES_MAX: usize = 1024 * 1024;

/// Carries RPCs to other nodes.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Sends `rpc` to node `target` at `addr` and waits for its reply.
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<RaftReply, String>> + Send + '_>>;
}

/// When each other node last answered one of this node's AppendEntries of the metadata
/// log (heartbeats included): while this node leads, which nodes are alive and reachable.
type Heard = Arc<std::sync::Mutex<HashMap<NodeId, std::time::Instant>>>;

/// openraft's network factory over a [`Transport`].
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    transport: Arc<dyn Transport>,
    heard: Heard,
}

/// openraft's connection to one node.
#[derive(Debug)]
pub struct Connection {
    transport: Arc<dyn Transport>,
    target: NodeId,
    addr: String,
    heard: Heard,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            transport: self.transport.clone(),
            target,
            addr: node.addr.clone(),
            heard: self.heard.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcResult<T> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId>>>;

impl Connection {
    async fn call(&self, rpc: RaftRpc, timeout: Duration) -> Result<RaftReply, Unreachable> {
        self.transport
            .call(self.target, &self.addr, rpc, timeout)
            .await
            .map_err(|reason| Unreachable::new(&TransportError(reason)))
    }
}

fn unexpected(reply: &RaftReply) -> NetworkError {
    NetworkError::new(&TransportError(format!("unexpected reply {reply:?}")))
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let reply = self.call(RaftRpc::Append(rpc), option.hard_ttl()).await?;
        if matches!(reply, RaftReply::Append(_)) {
            self.heard
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .insert(self.target, std::time::Instant::now());
        }
        match reply {
            RaftReply::Append(Ok(response)) => Ok(response),
            RaftReply::Append(Err(error)) => Err(RemoteError::new(self.target, error).into()),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(RaftRpc::Vote(rpc), option.hard_ttl()).await? {
            RaftReply::Vote(Ok(response)) => Ok(response),
            RaftReply::Vote(Err(error)) => Err(RemoteError::new(self.target, error).into()),
            other => Err(unexpected(&other).into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let rpc = RaftRpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: *snapshot.snapshot,
        };
        match self.call(rpc, option.hard_ttl()).await? {
            RaftReply::Snapshot(Ok(response)) => Ok(response),
            RaftReply::Snapshot(Err(fatal)) => Err(RemoteError::new(self.target, fatal).into()),
            other => Err(unexpected(&other).into()),
        }
    }
}

/// The timeouts of the metadata log (openraft's `Config`).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// A follower starts an election after a random time in this range without a leader.
    pub election_min: Duration,
    /// As above.
    pub election_max: Duration,
    /// A snapshot is taken after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Most entries one AppendEntries carries (openraft's `max_payload_entries`).
    pub entries_per_append: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
            snapshot_every: 1_000,
            entries_per_append: 300,
        }
    }
}

/// One node's metadata log: the seam the broker calls.
#[derive(Clone)]
pub struct Cluster {
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    applied: watch::Receiver<Applied>,
    transport: Arc<dyn Transport>,
    cluster_id: Arc<std::sync::Mutex<Option<String>>>,
    timing: Timing,
    /// Who answers [`RaftRpc::Forward`] here, once the broker set it.
    forward_handler: Arc<std::sync::OnceLock<ForwardHandler>>,
    /// This node's members of replicated logs, who answer [`RaftRpc::Replica`].
    replicas: Replicas,
    /// Shared with the network: when each node last answered this one's AppendEntries.
    heard: Heard,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id())
            .finish_non_exhaustive()
    }
}

/// What `wharf cluster status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: NodeId,
    /// The cluster's id (None before it has one).
    pub cluster_id: Option<String>,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's role: `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// The current term.
    pub term: u64,
    /// Voting members and their internal addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// Non-voting members (catching up before they vote).
    pub learners: BTreeMap<NodeId, String>,
    /// The last log index this node has, and the last it applied.
    pub last_log_index: u64,
    /// As above.
    pub last_applied_index: u64,
}

impl Cluster {
    /// Starts node `node_id`'s metadata log over `log` and `machine`, talking to the others
    /// through `transport`.
    ///
    /// # Errors
    /// openraft's, for a bad config or a storage failure while starting.
    pub async fn start(
        node_id: NodeId,
        cluster_id: Option<String>,
        log: LogStore,
        machine: MachineStore,
        transport: Arc<dyn Transport>,
        timing: Timing,
    ) -> Result<Cluster, ClusterError> {
        let config = openraft::Config {
            cluster_name: "wharf".to_string(),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election_min.as_millis() as u64,
            election_timeout_max: timing.election_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|error| ClusterError::Stopped(error.to_string()))?;
        let applied = machine.subscribe();
        let heard = Heard::default();
        let network = NetworkFactory {
            transport: transport.clone(),
            heard: heard.clone(),
        };
        let raft = Raft::new(node_id, Arc::new(config), network, log, machine)
            .await
            .map_err(|error| ClusterError::Stopped(error.to_string()))?;
        Ok(Cluster {
            node_id,
            raft,
            applied,
            transport,
            cluster_id: Arc::new(std::sync::Mutex::new(cluster_id)),
            timing,
            forward_handler: Arc::new(std::sync::OnceLock::new()),
            replicas: Replicas::default(),
            heard,
        })
    }

    /// When node `node` last answered an AppendEntries (a heartbeat at least every
    /// heartbeat interval) of this node's metadata log; only a leader sends them, so this
    /// says whether `node` is alive and reachable only while this node leads.
    pub fn last_heard(&self, node: NodeId) -> Option<std::time::Instant> {
        self.heard
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&node)
            .copied()
    }

    /// Whether this node leads the metadata log now.
    pub fn leads(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == openraft::ServerState::Leader
            && metrics.current_leader == Some(self.node_id)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This node's members of replicated logs (issue #21).
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// The metadata log's timeouts, which replicated logs share.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The transport the metadata log talks over, which replicated logs share.
    pub fn transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    /// Sets who answers the broker's forwarded requests on this node (once; a second call
    /// changes nothing). Until then a `Forward` is answered `Refused`.
    pub fn set_forward_handler(&self, handler: ForwardHandler) {
        let _ = self.forward_handler.set(handler);
    }

    /// Sends one of the broker's requests (`body`, JSON) to node `node` over the internal
    /// wire and waits up to `timeout` for its answer. The node's internal address comes
    /// from the applied metadata.
    ///
    /// # Errors
    /// A node the metadata does not know, one that cannot be reached or does not answer
    /// in time, or that refused the request: a sentence naming the node.
    pub async fn forward(
        &self,
        node: NodeId,
        body: String,
        timeout: Duration,
    ) -> Result<String, String> {
        let addr = self
            .applied()
            .state
            .nodes
            .get(&node)
            .map(|info| info.cluster_addr.clone())
            .filter(|addr| !addr.is_empty())
            .ok_or_else(|| format!("node {node} is not a registered member"))?;
        match self
            .transport
            .call(node, &addr, RaftRpc::Forward(body), timeout)
            .await?
        {
            RaftReply::Forward(answer) => Ok(answer),
            other => Err(format!("node {node} answered {other:?}")),
        }
    }

    /// The cluster id, once known.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Sets the cluster id (bootstrap, or adopted from the first peer that has one).
    pub fn set_cluster_id(&self, id: String) {
        *self
            .cluster_id
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(id);
    }

    /// Makes this node the first member of a new cluster of `members` (id → internal
    /// address). Only for a node with an empty log.
    ///
    /// # Errors
    /// `Membership` when the log is not empty.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), ClusterError> {
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        self.raft
            .initialize(nodes)
            .await
            .map_err(|error| ClusterError::Membership(error.to_string()))
    }

    /// Whether this node's log has been initialized (it is or was in a cluster).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// The state as last applied on this node.
    pub fn applied(&self) -> Applied {
        self.applied.borrow().clone()
    }

    /// The applied state, to watch for changes.
    pub fn applied_changes(&self) -> watch::Receiver<Applied> {
        self.applied.clone()
    }

    /// Waits until this node has applied `index` (after a proposal answered elsewhere).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.clone();
        tokio::time::timeout(timeout, applied.wait_for(|now| now.index >= index))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Commits `command` through the leader (forwarding it when this node is not the
    /// leader) and answers once it is applied on the leader.
    ///
    /// # Errors
    /// `NoLeader` (nothing changed), `Unavailable` (unknown), `Stopped`.
    pub async fn propose(&self, command: MetadataCommand) -> Result<Proposed, ClusterError> {
        self.propose_bounded(command, Forward::ToLeader).await
    }

    /// Commits `command` only as this node's own write while it leads: never forwarded. A
    /// decision only a leader's view supports (what it has not heard) must not be carried
    /// out by another leader: when this node stops leading before the entry commits (cut
    /// off, then deposed), its entry is dropped with its log's conflicting tail, and this
    /// answers `NoLeader` instead of sending the command to the new leader.
    ///
    /// # Errors
    /// `NoLeader` (this node does not lead, or stopped leading), `TooLarge`, `TimedOut`,
    /// `Stopped`.
    pub async fn propose_as_leader(
        &self,
        command: MetadataCommand,
    ) -> Result<Proposed, ClusterError> {
        self.propose_bounded(command, Forward::Never).await
    }

    /// [`Cluster::propose_unbounded`] of a command within [`COMMAND_BYTES_MAX`], within a
    /// bound: a leader cut off from the majority does not step down by itself (openraft
    /// 0.9), so the wait ends, saying the outcome is unknown.
    async fn propose_bounded(
        &self,
        command: MetadataCommand,
        forward: Forward,
    ) -> Result<Proposed, ClusterError> {
        let bytes = serde_json::to_vec(&command).map_or(usize::MAX, |json| json.len());
        if bytes > COMMAND_BYTES_MAX {
            return Err(ClusterError::TooLarge { bytes });
        }
        let limit = self.timing.election_max * 10;
        match tokio::time::timeout(limit, self.propose_unbounded(command, forward)).await {
            Ok(result) => result,
            Err(_) => Err(ClusterError::TimedOut(format!(
                "the metadata change was not committed within {} ms; it may still be",
                limit.as_millis()
            ))),
        }
    }

    async fn propose_unbounded(
        &self,
        command: MetadataCommand,
        forward: Forward,
    ) -> Result<Proposed, ClusterError> {
        match self.raft.client_write(command.clone()).await {
            Ok(response) => Ok(Proposed {
                index: response.log_id.index,
                result: response.data,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                if forward == Forward::Never =>
            {
                Err(ClusterError::NoLeader)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to))) => {
                let (Some(leader), Some(node)) = (to.leader_id, to.leader_node) else {
                    return Err(ClusterError::NoLeader);
                };
                if leader == self.node_id {
                    return Err(ClusterError::NoLeader);
                }
                let reply = self
                    .transport
                    .call(
                        leader,
                        &node.addr,
                        RaftRpc::Propose(command),
                        self.timing.election_max * 4,
                    )
                    .await
                    .map_err(|reason| ClusterError::Unavailable { leader, reason })?;
                match reply {
                    RaftReply::Propose(result) => result,
                    other => Err(ClusterError::Unavailable {
                        leader,
                        reason: format!("unexpected reply {other:?}"),
                    }),
                }
            }
            Err(RaftError::APIError(other)) => Err(ClusterError::Membership(other.to_string())),
            Err(RaftError::Fatal(fatal)) => Err(ClusterError::Stopped(fatal.to_string())),
        }
    }

    /// Adds node `id` at internal address `addr`: first as a learner that catches up, then
    /// as a voter. Runs on the leader (forwarded there from another node). The new node is
    /// asked first which cluster it is in: one of another cluster, or that answers as
    /// another node id, is refused.
    ///
    /// # Errors
    /// `Membership` with the reason, `NoLeader`, `Unavailable`.
    pub async fn add_node(&self, id: NodeId, addr: String) -> Result<(), ClusterError> {
        if let Some((leader, leader_addr)) = self.leader_elsewhere()? {
            return self
                .forward_membership(leader, &leader_addr, RaftRpc::AddNode { id, addr })
                .await;
        }
        let hello = self
            .transport
            .call(id, &addr, RaftRpc::Hello, Duration::from_secs(3))
            .await
            .map_err(|reason| {
                ClusterError::Membership(format!("cannot reach node {id} at {addr}: {reason}"))
            })?;
        match hello {
            RaftReply::Hello { node_id, .. } if node_id != id => {
                return Err(ClusterError::Membership(format!(
                    "the node at {addr} is node {node_id}, not node {id}"
                )))
            }
            RaftReply::Hello {
                cluster_id: Some(theirs),
                ..
            } if Some(&theirs) != self.cluster_id().as_ref() => {
                return Err(ClusterError::Membership(format!(
                    "node {id} at {addr} belongs to another cluster ({theirs}); \
                     a node joins with an empty data directory"
                )))
            }
            RaftReply::Hello { .. } => {}
            other => {
                return Err(ClusterError::Membership(format!(
                    "node {id} at {addr} answered {other:?}"
                )))
            }
        }
        let node = BasicNode { addr };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|error| ClusterError::Membership(error.to_string()))?;
        let mut voters = self.voters();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|error| ClusterError::Membership(error.to_string()))?;
        Ok(())
    }

    /// Removes node `id` from the voters and the cluster. Runs on the leader (forwarded
    /// there from another node).
    ///
    /// # Errors
    /// `Membership` with the reason, `NoLeader`, `Unavailable`.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        if let Some((leader, leader_addr)) = self.leader_elsewhere()? {
            return self
                .forward_membership(leader, &leader_addr, RaftRpc::RemoveNode { id })
                .await;
        }
        let mut voters = self.voters();
        if !voters.remove(&id) {
            return Err(ClusterError::Membership(format!(
                "node {id} is not a voting member"
            )));
        }
        if voters.is_empty() {
            return Err(ClusterError::Membership(
                "the last node cannot be removed".to_string(),
            ));
        }
        let drained = self.drain(id).await?;
        if self.leader_elsewhere()?.is_some() {
            // The lead moved during the drain: this node can no longer change the voters.
            // The removal is asked again (the CLI does on "being drained") and reaches the
            // new leader, which finds the node draining.
            return Err(ClusterError::TimedOut(format!(
                "node {id} is being drained, and the metadata leader changed meanwhile: \
                 remove it again (`wharf cluster remove-node` asks again until its \
                 --timeout-ms)"
            )));
        }
        // Its replicas move to the others first (a node never registered, or already
        // removed by an earlier attempt, is no error), while this node still leads: a leader
        // removing itself is deposed by the membership change, and a command it proposed
        // after it could wait for a commit the others no longer take from it. A drained
        // node goes only if its drain was not cancelled since the check.
        let proposed = self
            .propose(MetadataCommand::RemoveNode {
                node_id: id,
                only_if_draining: drained,
            })
            .await?;
        if let MetadataResult::Refused(refusal @ MetadataError::Invalid(_)) = proposed.result {
            return Err(ClusterError::Membership(refusal.to_string()));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|error| ClusterError::Membership(error.to_string()))?;
        Ok(())
    }

    /// Drains node `id` before its removal when it is up (this node, the leader, heard it
    /// within [`DRAINED_NODE_HEARD`]): proposes [`MetadataCommand::DrainNode`] unless the
    /// node is draining already, then waits up to [`DRAIN_WAIT`] until the applied state
    /// shows nothing left on it ([`MetadataState::drained`]). A node that is down is not
    /// waited for: what it alone held is placed again without its records. Answers whether
    /// the node was drained (so its removal must find it still draining).
    ///
    /// # Errors
    /// `TimedOut` (its message says "being drained") while moves go on; the metadata log's
    /// refusal of the drain, or its cancel while waiting, as `Membership`; the proposal's
    /// errors.
    async fn drain(&self, id: NodeId) -> Result<bool, ClusterError> {
        let state = self.applied().state;
        if !state.nodes.contains_key(&id) {
            return Ok(false);
        }
        if state.drained(id) {
            return Ok(state.draining.contains(&id));
        }
        let heard_lately = || {
            id == self.node_id
                || self
                    .last_heard(id)
                    .is_some_and(|heard| heard.elapsed() <= DRAINED_NODE_HEARD)
        };
        if !heard_lately() {
            // A leader elected a moment ago has not heard anyone yet.
            tokio::time::sleep(self.timing.heartbeat * 4).await;
            if !heard_lately() {
                tracing::warn!(
                    node = id,
                    "removing a node that does not answer: the partitions and queues it \
                     alone held are placed again without their records"
                );
                // A drain started earlier and cancelled since still wins.
                return Ok(state.draining.contains(&id));
            }
        }
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        if !state.draining.contains(&id) {
            let proposed = self
                .propose(MetadataCommand::DrainNode { node_id: id })
                .await?;
            if let MetadataResult::Refused(refusal) = proposed.result {
                return Err(ClusterError::Membership(refusal.to_string()));
            }
            // Applied where it was decided (another node, should the lead have moved):
            // this node's state must show it before it can tell a cancel from a lag.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.wait_applied(proposed.index, left).await {
                return Err(self.still_draining(id, &self.applied().state));
            }
        }
        self.wait_drained(id, deadline).await
    }

    /// Waits until `deadline` for node `id` to hold nothing a drain moves: `Ok(true)` then;
    /// `Ok(false)` if it was removed meanwhile; `Membership` if its drain was cancelled.
    async fn wait_drained(
        &self,
        id: NodeId,
        deadline: tokio::time::Instant,
    ) -> Result<bool, ClusterError> {
        loop {
            let state = self.applied().state;
            if !state.nodes.contains_key(&id) {
                // Another removal was quicker.
                return Ok(false);
            }
            if !state.draining.contains(&id) {
                // `wharf cluster remove-node --cancel` (CancelDrain): the node stays.
                return Err(ClusterError::Membership(format!(
                    "node {id}'s drain was cancelled: it stays in the cluster"
                )));
            }
            if state.drained(id) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.still_draining(id, &state));
            }
            tokio::time::sleep(DRAIN_CHECK_EVERY).await;
        }
    }

    /// The `TimedOut` of a drain still under way (the CLI asks again on "being drained").
    fn still_draining(&self, id: NodeId, state: &MetadataState) -> ClusterError {
        let left = state
            .moves()
            .iter()
            .filter(|moved| moved.from.contains(&id) || moved.to.contains(&id))
            .count();
        ClusterError::TimedOut(format!(
            "node {id} is being drained: {left} partition(s) or queue(s) are still \
             moving off it with their records (`wharf cluster rebalance --no-wait` \
             lists them); the moves go on: remove it again once none is left (`wharf cluster \
             remove-node` asks again until its --timeout-ms)"
        ))
    }

    /// The leader and its address when it is another node; `None` when this node leads.
    fn leader_elsewhere(&self) -> Result<Option<(NodeId, String)>, ClusterError> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader.ok_or(ClusterError::NoLeader)?;
        if leader == self.node_id {
            return Ok(None);
        }
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())
            .ok_or(ClusterError::NoLeader)?;
        Ok(Some((leader, addr)))
    }

    async fn forward_membership(
        &self,
        leader: NodeId,
        addr: &str,
        rpc: RaftRpc,
    ) -> Result<(), ClusterError> {
        let reply = self
            .transport
            .call(leader, addr, rpc, Duration::from_secs(60))
            .await
            .map_err(|reason| ClusterError::Unavailable { leader, reason })?;
        match reply {
            RaftReply::Membership(result) => result,
            other => Err(ClusterError::Unavailable {
                leader,
                reason: format!("unexpected reply {other:?}"),
            }),
        }
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.membership_config.membership().voter_ids().collect()
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voter_ids: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voters = BTreeMap::new();
        let mut learners = BTreeMap::new();
        for (id, node) in membership.nodes() {
            if voter_ids.contains(id) {
                voters.insert(*id, node.addr.clone());
            } else {
                learners.insert(*id, node.addr.clone());
            }
        }
        let role = match metrics.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Shutdown => "shutdown",
        };
        ClusterStatus {
            node_id: self.node_id,
            cluster_id: self.cluster_id(),
            leader: metrics.current_leader,
            role: role.to_string(),
            term: metrics.current_term,
            voters,
            learners,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied_index: metrics.last_applied.map_or(0, |id| id.index),
        }
    }

    /// Stops openraft (before the process exits or a test "crashes" the node).
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }

    /// Answers one RPC from another node (the server half of [`Transport`]).
    pub async fn serve(&self, rpc: RaftRpc) -> RaftReply {
        match rpc {
            RaftRpc::Append(request) => RaftReply::Append(self.raft.append_entries(request).await),
            RaftRpc::Vote(request) => RaftReply::Vote(self.raft.vote(request).await),
            RaftRpc::Snapshot { vote, meta, data } => {
                let snapshot = Snapshot {
                    meta,
                    snapshot: Box::new(data),
                };
                RaftReply::Snapshot(self.raft.install_full_snapshot(vote, snapshot).await)
            }
            RaftRpc::Propose(command) => {
                // Only the leader takes a forwarded proposal; no second hop.
                let result = match self.raft.client_write(command).await {
                    Ok(response) => Ok(Proposed {
                        index: response.log_id.index,
                        result: response.data,
                    }),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        Err(ClusterError::NoLeader)
                    }
                    Err(RaftError::APIError(other)) => {
                        Err(ClusterError::Membership(other.to_string()))
                    }
                    Err(RaftError::Fatal(fatal)) => Err(ClusterError::Stopped(fatal.to_string())),
                };
                RaftReply::Propose(result)
            }
            RaftRpc::AddNode { id, addr } => RaftReply::Membership(match self.leader_elsewhere() {
                Ok(None) => self.add_node(id, addr).await,
                Ok(Some(_)) | Err(_) => Err(ClusterError::NoLeader),
            }),
            RaftRpc::RemoveNode { id } => RaftReply::Membership(match self.leader_elsewhere() {
                Ok(None) => self.remove_node(id).await,
                Ok(Some(_)) | Err(_) => Err(ClusterError::NoLeader),
            }),
            RaftRpc::Hello => RaftReply::Hello {
                node_id: self.node_id,
                cluster_id: self.cluster_id(),
            },
            RaftRpc::Forward(body) => match self.forward_handler.get() {
                Some(handler) => RaftReply::Forward(handler(body).await),
                None => RaftReply::Refused(format!(
                    "node {} is starting and serves no forwarded requests yet",
                    self.node_id
                )),
            },
            RaftRpc::Replica {
                group,
                instance,
                rpc,
            } => RaftReply::Replica(Box::new(self.replicas.serve(&group, instance, *rpc).await)),
        }
    }
}
