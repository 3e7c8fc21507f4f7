//! The cluster's metadata state machine (issue #20): every definition that is cluster-wide,
//! changed only by [`MetadataCommand`]s that the metadata log (openraft, `cluster/raft.rs`)
//! has committed, applied in log order by [`MetadataState::apply`].
//!
//! `apply` is a pure function of the state and the command: every node applies the same
//! commands in the same order and ends with the same state, placement included (the
//! placement rule reads only the state). It never fails as a whole: a command that breaks a
//! rule (a topic that exists, an unknown queue) leaves the state unchanged and returns the
//! reason as its [`MetadataResult`], which the proposer gets back.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::placement;
use super::security_meta::{AclMeta, SecurityCommand, TokenMeta, UsersMeta};

/// A node's id in the cluster (`--node-id`).
pub type NodeId = u64;

/// The replication factor of a topic created without one (Kafka's `replication_factor`
/// -1, a native create, an auto-created topic) in a cluster of at least this many nodes;
/// a smaller cluster gives such a topic 1.
pub const DEFAULT_FACTOR: u32 = 3;
/// How an internal topic's name starts (the streams catalog's rule,
/// `streams::topic::INTERNAL_TOPIC_PREFIX`, which this module may not import; a test in
/// `core/coordination.rs` keeps the two equal).
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

/// The factor a topic created without one gets in a cluster of `nodes` registered nodes:
/// [`DEFAULT_FACTOR`] once there are that many, else 1 (two replicas would need both for a
/// majority: a cluster of two keeps one).
pub fn default_factor(nodes: usize) -> u32 {
    if nodes >= DEFAULT_FACTOR as usize {
        DEFAULT_FACTOR
    } else {
        1
    }
}

/// A node as the metadata knows it: where its listeners are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The internal (broker-to-broker) address, `HOST:PORT`.
    pub cluster_addr: String,
    /// The advertised listener addresses by name (`native`, `kafka`, `amqp`, `http`).
    pub listeners: BTreeMap<String, String>,
    /// The settings every node should share, as this node runs with them, by config key
    /// ([`settings_differences`]); empty from a build before they were registered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

/// One setting node `this` runs with another value than node `node`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SettingDifference {
    /// The config key.
    pub key: String,
    /// Its value here, if this node registered it.
    pub here: Option<String>,
    /// The other node.
    pub node: NodeId,
    /// Its value there.
    pub there: Option<String>,
}

/// The settings node `this` runs with other values than another registered node does
/// (each node's own are in [`NodeInfo::settings`]): nothing checks that a cluster's nodes
/// were given the same authentication, authorization, super users or timing, so the
/// follower reports each difference (a warning, and `wharf_cluster_settings_differ`). A
/// node that registered none (an older build) is not compared.
pub fn settings_differences(state: &MetadataState, this: NodeId) -> Vec<SettingDifference> {
    let Some(own) = state.nodes.get(&this).map(|info| &info.settings) else {
        return Vec::new();
    };
    if own.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for (node, info) in &state.nodes {
        if *node == this || info.settings.is_empty() {
            continue;
        }
        let keys: std::collections::BTreeSet<&String> =
            own.keys().chain(info.settings.keys()).collect();
        for key in keys {
            let (here, there) = (own.get(key), info.settings.get(key));
            if here != there {
                found.push(SettingDifference {
                    key: key.clone(),
                    here: here.cloned(),
                    node: *node,
                    there: there.cloned(),
                });
            }
        }
    }
    found
}

/// One partition's (or queue's) replicas, the first of which is the preferred leader, and
/// its current leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicas {
    /// The nodes holding a replica; `replicas[0]` is the preferred leader.
    pub replicas: Vec<NodeId>,
    /// The node that leads it now.
    pub leader: NodeId,
    /// A set being moved through its group (`wharf cluster rebalance`, a node's drain or
    /// removal; an unreplicated partition too, through a group of its own): the nodes its
    /// group moves to. Its leader adds each new one as a learner, waits until it
    /// caught up, changes the group's voters, then records [`MetadataCommand::ReplicasMoved`].
    /// Until then `replicas` is where it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<Vec<NodeId>>,
    /// How many moves the set has completed. A group whose voters changed is initialized
    /// by none of its members: only the first `replicas` of a set never moved may write the
    /// group's first membership ([`Replicas::initializes`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub move_count: u32,
    /// A replicated partition's in-sync replicas as its leader last recorded them
    /// ([`MetadataCommand::SetPartitionInSync`], Kafka's ISR): what nodes without the
    /// leader's view answer in Kafka Metadata. `None` until recorded (and after a move):
    /// every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_sync: Option<Vec<NodeId>>,
}

impl Replicas {
    /// A set of `replicas` led by the first, never moved.
    pub fn new(replicas: Vec<NodeId>) -> Replicas {
        Replicas {
            leader: replicas.first().copied().unwrap_or(1),
            replicas,
            moving_to: None,
            move_count: 0,
            in_sync: None,
        }
    }

    /// Whether `node` holds (or is taking) a member of the set's replicated log.
    pub fn hosts(&self, node: NodeId) -> bool {
        self.replicas.contains(&node)
            || self
                .moving_to
                .as_ref()
                .is_some_and(|target| target.contains(&node))
    }

    /// Whether `node` starts the group with the first membership (`replicas`): only a
    /// first replica of a set that never moved. A node taking a replica in a move starts
    /// empty and is brought in by the group's leader; writing a first membership of its own
    /// would give it a log whose first entry differs from the group's.
    pub fn initializes(&self, node: NodeId) -> bool {
        self.move_count == 0 && self.replicas.contains(&node)
    }

    /// Whether a topic partition's set is written through a replicated log (a group of its
    /// replicas; queues go by their replica count alone): when
    /// it has more than one replica, and also, with one, once it has been moving or moved
    /// (an unreplicated partition moves with its records through a group of its own,
    /// [`MetadataCommand::DrainNode`], and keeps that group, of one voter, afterwards). A
    /// set that never ran a group is written by its one node directly.
    pub fn in_a_group(&self) -> bool {
        self.replicas.len() >= 2 || self.moving_to.is_some() || self.move_count > 0
    }
}

/// What a rebalance is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// `wharf cluster rebalance` (`MetadataCommand::Rebalance`).
    Asked,
    /// A node is being drained (`MetadataCommand::DrainNode`).
    Drain,
    /// A node was removed (`MetadataCommand::RemoveNode`).
    Removal,
}

/// What a replica set places, for a rebalance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetKind {
    /// A topic's partition.
    Partition,
    /// A partition of an internal topic (the coordinators').
    Internal,
    /// A queue.
    Queue,
}

impl SetKind {
    /// Whether a set of this kind is written through a group: a partition per
    /// [`Replicas::in_a_group`]; a queue while it has several replicas (an unreplicated
    /// queue never moves with its messages).
    fn grouped(self, set: &Replicas) -> bool {
        match self {
            SetKind::Partition | SetKind::Internal => set.in_a_group(),
            SetKind::Queue => set.replicas.len() >= 2,
        }
    }
}

/// Serde's test for leaving out a zero count.
fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// Serde's test for leaving out an incarnation or counter that is 0.
fn is_zero_u64(count: &u64) -> bool {
    *count == 0
}

/// A topic's cluster-wide definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Config overrides under Kafka's names, sorted by key.
    pub configs: BTreeMap<String, String>,
    /// One entry per partition, by partition number.
    pub partitions: Vec<Replicas>,
    /// Its id (every node's copy has it); `None` for a topic created before ids went
    /// through the log. A delete and a create of the same name give a new one, so a node
    /// that missed both still tells the new topic from its old copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<[u8; 16]>,
}

/// A queue's cluster-wide definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMeta {
    /// Its arguments as declared (`x-message-ttl` and the like), as text.
    pub arguments: BTreeMap<String, String>,
    /// Where it lives.
    pub placement: Replicas,
    /// Which declaration of the name this is: every declare of a name the log does not
    /// hold gets the next number ([`MetadataState::queue_incarnations`]), so a node that
    /// missed a delete and a declare of the same name tells the new queue from its old
    /// copy, and the new queue's replicated log is another group than the old one's. 0 for
    /// a queue declared before incarnations went through the log.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub incarnation: u64,
    /// A transient queue (AMQP `durable=false`): its messages live in its leader's memory
    /// and are gone when that node restarts, which then deletes the queue from the log
    /// (as RabbitMQ deletes transient queues when their node boots). Absent (false) for a
    /// durable one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub transient: bool,
    /// An exclusive queue (AMQP `exclusive=true`) of a connection on this node: led there,
    /// one copy, deleted when that connection ends or that node restarts or is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_on: Option<NodeId>,
    /// How many times this incarnation was declared again (a declare of the name with the
    /// same arguments): a delete by the queue's own rule ([`QueueSeen`]) is refused once
    /// this moved past what its node saw when the rule fired. Absent (0) before
    /// 2026-12-07's build.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub declares: u64,
}

/// What a node saw of a queue when its own rule (auto-delete after the last consumer,
/// `x-expires`) decided to delete it: a [`MetadataCommand::DeleteQueue`] carrying it
/// applies only if the queue is still that incarnation and was not declared again since.
/// So a client whose declare landed in the log between the rule and the delete keeps the
/// queue its declare-ok promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSeen {
    /// [`QueueMeta::incarnation`] then.
    pub incarnation: u64,
    /// [`QueueMeta::declares`] then.
    pub declares: u64,
}

impl QueueMeta {
    /// What a delete by the queue's own rule names of it now ([`QueueSeen`]).
    pub fn seen(&self) -> QueueSeen {
        QueueSeen {
            incarnation: self.incarnation,
            declares: self.declares,
        }
    }
}

/// A binding of a queue, or of another exchange, to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BindingMeta {
    /// The exchange (the source).
    pub exchange: String,
    /// The queue; with `to_exchange`, the destination exchange.
    pub queue: String,
    /// The binding key.
    pub key: String,
    /// A headers exchange's binding arguments (`x-match` and the headers to match).
    #[serde(default)]
    pub arguments: BTreeMap<String, String>,
    /// An exchange-to-exchange binding: `queue` names the destination exchange. Absent
    /// (false) in the JSON of a queue binding.
    #[serde(default, skip_serializing_if = "is_false")]
    pub to_exchange: bool,
}

/// Serde's test for leaving out a false flag.
fn is_false(flag: &bool) -> bool {
    !*flag
}

/// Whether `name` is an exchange every node has built in (`amq.direct` and the like): a
/// binding to it needs no declare in the metadata.
pub fn is_builtin_exchange(name: &str) -> bool {
    name.starts_with("amq.")
}

/// A change to the metadata. Every variant names what it changes; see [`MetadataState::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Records (or updates) a node's addresses; the node takes replicas from then on.
    RegisterNode { node_id: NodeId, info: NodeInfo },
    /// Forgets a node; its replicas move to the others (as [`MetadataCommand::Rebalance`];
    /// an unreplicated partition or queue it still held is placed again, empty: its data
    /// was on that node's disk, which is why `wharf cluster remove-node` drains a live node
    /// first, [`MetadataCommand::DrainNode`]).
    RemoveNode {
        node_id: NodeId,
        /// Set by a removal that drained the node first: refused if the drain was
        /// cancelled meanwhile ([`MetadataCommand::CancelDrain`]), so a cancel wins over a
        /// removal that has not been applied yet. Absent in entries of earlier builds.
        #[serde(default, skip_serializing_if = "is_false")]
        only_if_draining: bool,
    },
    /// Takes every topic partition off node `node_id` while it is still up, before its
    /// removal: the node is marked draining (no new replica is placed on it, a rebalance
    /// plans without it) and every set on it gets a `moving_to` elsewhere, its group's
    /// leader carrying the move out, records included. An unreplicated partition moves too:
    /// its node starts a group of one voter over the partition's records, the new node
    /// joins it and takes the records from a snapshot, then the group's voters become the
    /// new node (Kafka's reassignment copies a partition of one replica the same way, by
    /// adding the new replica first). Unreplicated queues and internal topics stay until the
    /// node is removed. Answers `Moves` with the sets moving after it.
    DrainNode { node_id: NodeId },
    /// Deletes, with their bindings, exclusive queues of node `node_id`'s connections
    /// ([`QueueMeta::exclusive_on`]) that the metadata leader saw when it decided: `queues`
    /// (name, incarnation); one declared since, or declared again, stays. The leader has
    /// not heard from that node for a while, and its connections are taken for gone, as
    /// RabbitMQ deletes the exclusive queues of a node that went down. Answers `Done` (none
    /// is fine).
    DropExclusiveQueues {
        node_id: NodeId,
        queues: Vec<(String, u64)>,
    },
    /// Creates a topic, placing `replication_factor` replicas of each partition (0: the
    /// cluster's default, [`DEFAULT_FACTOR`] once it has that many nodes, else 1).
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
        /// The topic's id, chosen by the proposer: every node's copy takes it. Absent from
        /// entries written before ids went through the log.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic_id: Option<[u8; 16]>,
    },
    /// Deletes a topic.
    DeleteTopic { name: String },
    /// Replaces a topic's config overrides.
    AlterTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Changes some of a topic's config overrides: each key of `set` is overridden with its
    /// value, each key of `delete` goes back to the default, and with `replace` every other
    /// override not named in `keep` is removed too (Kafka's AlterConfigs). Applied to the
    /// overrides the log holds when it commits, so changes of different keys made at once
    /// through different nodes all land. Answers `Configs` with the resulting overrides.
    ChangeTopicConfigs {
        name: String,
        set: BTreeMap<String, String>,
        delete: BTreeSet<String>,
        replace: bool,
        keep: BTreeSet<String>,
    },
    /// Grows a topic to `total` partitions.
    AddPartitions { name: String, total: u32 },
    /// Records that `leader` leads partition `partition` of topic `name` now: its replicated
    /// log elected it (issue #21), and clients are routed to it from then on.
    SetPartitionLeader {
        name: String,
        partition: u32,
        leader: NodeId,
    },
    /// Records that partition `partition` of topic `name`, led by `leader`, has `in_sync`
    /// as its in-sync replicas (issue #21: the leader's view, Kafka's ISR, for the
    /// Metadata answers of nodes without it). Refused unless `leader` is the recorded
    /// leader, so a deposed leader's late record never overwrites its successor's.
    SetPartitionInSync {
        name: String,
        partition: u32,
        leader: NodeId,
        in_sync: Vec<NodeId>,
    },
    /// Declares a queue (idempotent when the arguments are the same). With `incarnated`
    /// (every proposer since 2026-12-07), a new queue gets the next incarnation; entries
    /// of earlier builds (absent: false) declare incarnation 0, so every node gives them
    /// the same number whether it replays them or has them in an older snapshot.
    DeclareQueue {
        name: String,
        replication_factor: u32,
        arguments: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "is_false")]
        incarnated: bool,
        /// Counts in the existing queue's [`QueueMeta::declares`] (every proposer since
        /// 2026-12-07's second build): entries of earlier builds count on no node, so a
        /// node that replays them and one that has them in a snapshot agree.
        #[serde(default, skip_serializing_if = "is_false")]
        counted: bool,
        /// A transient queue ([`QueueMeta::transient`]); absent (false) for a durable one.
        #[serde(default, skip_serializing_if = "is_false")]
        transient: bool,
        /// An exclusive queue of a connection on this node ([`QueueMeta::exclusive_on`]),
        /// placed there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exclusive_on: Option<NodeId>,
    },
    /// Deletes a queue and its bindings.
    /// With `exclusive_on`, only while the queue is exclusive to that node's connections
    /// (its connection ended there): the log may have dropped it since (the node went
    /// silent) and another connection declared the name.
    /// With `if_unchanged` (a delete by the queue's own rule), only while the queue is
    /// what its leader saw when the rule fired ([`QueueSeen`]).
    DeleteQueue {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exclusive_on: Option<NodeId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_unchanged: Option<QueueSeen>,
    },
    /// Records that `leader` leads replicated queue `name` now: its replicated log elected
    /// it (issue #21), and nodes holding no replica route the queue's operations to it.
    SetQueueLeader { name: String, leader: NodeId },
    /// Declares an exchange of `kind` (idempotent for the same kind and durability).
    DeclareExchange {
        name: String,
        kind: String,
        /// A transient exchange (AMQP `durable=false`); absent (false) for a durable one.
        #[serde(default, skip_serializing_if = "is_false")]
        transient: bool,
    },
    /// Deletes an exchange and its bindings.
    DeleteExchange { name: String },
    /// Binds a queue to an exchange.
    Bind(BindingMeta),
    /// Removes a binding.
    Unbind(BindingMeta),
    /// Moves replicas so every node holds a fair share (`wharf cluster rebalance`): each
    /// replicated set whose nodes change gets a `moving_to`, which its group's leader
    /// carries out, and so does an unreplicated partition the plan moves (through a group
    /// of its own). Unreplicated queues on registered nodes stay (their messages are on one
    /// disk); internal topics stay. Answers `Moves` with the sets moving after it.
    Rebalance,
    /// Records that the replicated log of partition `partition` of topic `name` (of queue
    /// `name` when `partition` is `None`) runs on `replicas` now: its leader changed the
    /// group's voters to the set's `moving_to`. Refused unless that move is under way.
    ReplicasMoved {
        name: String,
        partition: Option<u32>,
        replicas: Vec<NodeId>,
    },
    /// Reserves `count` producer ids for node `node_id` (issue #21): a block from `from` or
    /// from the end of the node's last reservation, whichever is higher. The cluster
    /// remembers each node's reservations, so a node that lost its disk never hands out an
    /// id again.
    ReserveProducerIds {
        node_id: NodeId,
        from: i64,
        count: i64,
    },
    /// A register for tests: sets `key` to `value` and answers the previous value.
    #[doc(hidden)]
    TestPut { key: String, value: u64 },
    /// Changes the users, tokens or ACLs (`cluster::security_meta`).
    Security(SecurityCommand),
    /// Stops node `node_id`'s drain ([`MetadataCommand::DrainNode`]): it takes replicas
    /// again and a rebalance plans with it. Moves under way go on (a later rebalance may
    /// move sets back); a removal waiting for the drain gives up. Answers `Moves` with the
    /// moves still under way; refused for a node that is not being drained.
    CancelDrain { node_id: NodeId },
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetadataError {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("topic {0:?} does not exist")]
    UnknownTopic(String),
    #[error("queue {0:?} does not exist")]
    UnknownQueue(String),
    #[error("queue {0:?} exists with other arguments")]
    QueueDiffers(String),
    #[error("exchange {0:?} does not exist")]
    UnknownExchange(String),
    #[error("exchange {name:?} exists with kind {kind:?}")]
    ExchangeDiffers { name: String, kind: String },
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(NodeId),
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    #[error("token {0:?} does not exist")]
    UnknownToken(String),
    #[error("queue {0:?} is exclusive to a connection on another node")]
    QueueLocked(String),
    #[error("queue {0:?} was declared again since its own rule deleted it")]
    QueueDeclaredAgain(String),
    #[error("{0}")]
    Invalid(String),
}

/// What applying a command gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataResult {
    /// Applied.
    Done,
    /// A topic was created or grown: its partitions' placement.
    Placed(Vec<Replicas>),
    /// A topic's config overrides after a change.
    Configs(BTreeMap<String, String>),
    /// A test register's previous value.
    Previous(Option<u64>),
    /// Producer ids reserved: `start..end`.
    ProducerIds { start: i64, end: i64 },
    /// The replica moves under way after a rebalance.
    Moves(Vec<ReplicaMove>),
    /// The ACLs a removal found.
    Acls(Vec<AclMeta>),
    /// Nothing changed, for this reason.
    Refused(MetadataError),
}

/// A replicated set being moved (see [`Replicas::moving_to`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    /// The topic's or the queue's name.
    pub name: String,
    /// The partition; `None` for a queue.
    pub partition: Option<u32>,
    /// Where the group runs.
    pub from: Vec<NodeId>,
    /// Where it moves.
    pub to: Vec<NodeId>,
}

/// Every cluster-wide definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    /// The nodes, by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Topics, by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Queues, by name.
    pub queues: BTreeMap<String, QueueMeta>,
    /// Exchanges, by name: their kind.
    pub exchanges: BTreeMap<String, String>,
    /// The exchanges of `exchanges` that are transient (AMQP `durable=false`); absent from
    /// snapshots written before 2026-12-07, when transient exchanges stayed on their node.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub transient_exchanges: BTreeSet<String>,
    /// Bindings, sorted.
    pub bindings: Vec<BindingMeta>,
    /// Each node's producer-id reservations: every id of its range below this may have
    /// been handed out (absent from snapshots written before 2026-12-06).
    #[serde(default)]
    pub producer_ids: BTreeMap<NodeId, i64>,
    /// The last queue incarnation handed out ([`QueueMeta::incarnation`]); absent (0)
    /// from snapshots written before 2026-12-07.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub queue_incarnations: u64,
    /// How many `Rebalance` commands were applied (`wharf cluster rebalance`): each one
    /// asks every node to hand the replicated partitions and queues it leads back to their
    /// preferred replicas now. Absent (0) before 2026-12-07's second build.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub leader_rebalances: u64,
    /// Nodes being drained before their removal ([`MetadataCommand::DrainNode`]): no new
    /// replica goes there, and rebalances plan without them. Absent before 2026-12-07's
    /// third build.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub draining: BTreeSet<NodeId>,
    /// The test register.
    #[doc(hidden)]
    pub test_register: BTreeMap<String, u64>,
    /// Users and their credentials, by name (absent from snapshots written before
    /// 2026-12-07, when each node kept its own).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: UsersMeta,
    /// HTTP bearer tokens, by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens: BTreeMap<String, TokenMeta>,
    /// ACLs.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub acls: BTreeSet<AclMeta>,
}

impl MetadataState {
    /// Applies one committed command (see the module documentation).
    pub fn apply(&mut self, command: &MetadataCommand) -> MetadataResult {
        match self.try_apply(command) {
            Ok(result) => result,
            Err(error) => MetadataResult::Refused(error),
        }
    }

    /// Partition `partition` of topic `name`'s set, to change.
    fn partition_mut(
        &mut self,
        name: &str,
        partition: u32,
    ) -> Result<&mut Replicas, MetadataError> {
        self.topics
            .get_mut(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))?
            .partitions
            .get_mut(partition as usize)
            .ok_or_else(|| {
                MetadataError::Invalid(format!("topic {name:?} has no partition {partition}"))
            })
    }

    fn try_apply(&mut self, command: &MetadataCommand) -> Result<MetadataResult, MetadataError> {
        if let MetadataCommand::DeleteTopic { name }
        | MetadataCommand::AlterTopicConfigs { name, .. }
        | MetadataCommand::ChangeTopicConfigs { name, .. }
        | MetadataCommand::AddPartitions { name, .. } = command
        {
            // The coordinators' partition (`__consumer_offsets`) is placed once and kept.
            if name.starts_with(INTERNAL_TOPIC_PREFIX) {
                return Err(MetadataError::Invalid(format!(
                    "internal topic {name:?} cannot be deleted or changed"
                )));
            }
        }
        match command {
            MetadataCommand::RegisterNode { node_id, info } => {
                self.nodes.insert(*node_id, info.clone());
                Ok(MetadataResult::Done)
            }
            MetadataCommand::RemoveNode {
                node_id,
                only_if_draining,
            } => {
                if !self.nodes.contains_key(node_id) {
                    return Err(MetadataError::UnknownNode(*node_id));
                }
                if *only_if_draining && !self.draining.contains(node_id) {
                    return Err(MetadataError::Invalid(format!(
                        "node {node_id}'s drain was cancelled: it stays in the cluster"
                    )));
                }
                self.nodes.remove(node_id);
                self.draining.remove(node_id);
                // Its connections' exclusive queues end with it.
                self.drop_exclusive_queues(*node_id);
                self.rebalance(Why::Removal);
                Ok(MetadataResult::Done)
            }
            MetadataCommand::DrainNode { node_id } => {
                if !self.nodes.contains_key(node_id) {
                    return Err(MetadataError::UnknownNode(*node_id));
                }
                let others = self
                    .nodes
                    .keys()
                    .any(|id| id != node_id && !self.draining.contains(id));
                if !others {
                    return Err(MetadataError::Invalid(format!(
                        "node {node_id} is the last node that is not being drained: its \
                         partitions would have nowhere to go"
                    )));
                }
                self.draining.insert(*node_id);
                self.rebalance(Why::Drain);
                Ok(MetadataResult::Moves(self.moves()))
            }
            MetadataCommand::CancelDrain { node_id } => {
                if !self.nodes.contains_key(node_id) {
                    return Err(MetadataError::UnknownNode(*node_id));
                }
                if !self.draining.remove(node_id) {
                    return Err(MetadataError::Invalid(format!(
                        "node {node_id} is not being drained"
                    )));
                }
                Ok(MetadataResult::Moves(self.moves()))
            }
            MetadataCommand::DropExclusiveQueues { node_id, queues } => {
                for (name, incarnation) in queues {
                    let seen = self.queues.get(name).is_some_and(|queue| {
                        queue.exclusive_on == Some(*node_id) && queue.incarnation == *incarnation
                    });
                    if seen {
                        self.remove_queue(name);
                    }
                }
                Ok(MetadataResult::Done)
            }
            MetadataCommand::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
                topic_id,
            } => {
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists(name.clone()));
                }
                if *partitions == 0 {
                    return Err(MetadataError::Invalid(
                        "a topic needs at least one partition".to_string(),
                    ));
                }
                let factor = self.check_factor(*replication_factor)?;
                let mut load = placement::Load::of(self);
                let mut placed: Vec<Replicas> =
                    (0..*partitions).map(|_| load.place(factor)).collect();
                if name.starts_with(INTERNAL_TOPIC_PREFIX) {
                    // An internal topic (the coordinators' log) is led first by the lowest
                    // node id among its replicas: where a client that knows no better
                    // sends its group calls.
                    if let Some(lowest) = self.nodes.keys().next().copied() {
                        for set in &mut placed {
                            if let Some(at) = set.replicas.iter().position(|id| *id == lowest) {
                                set.replicas.remove(at);
                                set.replicas.insert(0, lowest);
                                set.leader = lowest;
                            }
                        }
                    }
                }
                self.topics.insert(
                    name.clone(),
                    TopicMeta {
                        configs: configs.clone(),
                        partitions: placed.clone(),
                        topic_id: *topic_id,
                    },
                );
                Ok(MetadataResult::Placed(placed))
            }
            MetadataCommand::DeleteTopic { name } => {
                self.topics
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                Ok(MetadataResult::Done)
            }
            MetadataCommand::AlterTopicConfigs { name, configs } => {
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                topic.configs = configs.clone();
                Ok(MetadataResult::Done)
            }
            MetadataCommand::ChangeTopicConfigs {
                name,
                set,
                delete,
                replace,
                keep,
            } => {
                let topic = self
                    .topics
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownTopic(name.clone()))?;
                if *replace {
                    topic.configs.retain(|key, _| keep.contains(key));
                }
                for key in delete {
                    topic.configs.remove(key);
                }
                for (key, value) in set {
                    topic.configs.insert(key.clone(), value.clone());
                }
                Ok(MetadataResult::Configs(topic.configs.clone()))
            }
            MetadataCommand::AddPartitions { name, total } => {
                let (existing, factor) = match self.topics.get(name) {
                    Some(topic) => (
                        topic.partitions.len(),
                        topic.partitions.first().map_or(1, |p| p.replicas.len()),
                    ),
                    None => return Err(MetadataError::UnknownTopic(name.clone())),
                };
                if (*total as usize) <= existing {
                    return Err(MetadataError::Invalid(format!(
                        "topic {name:?} has {existing} partitions; the new total must be more"
                    )));
                }
                let mut load = placement::Load::of(self);
                let added: Vec<Replicas> = (existing..*total as usize)
                    .map(|_| load.place(factor))
                    .collect();
                let topic = self.topics.get_mut(name).expect("checked above");
                topic.partitions.extend(added.iter().cloned());
                Ok(MetadataResult::Placed(added))
            }
            MetadataCommand::SetPartitionLeader {
                name,
                partition,
                leader,
            } => {
                let set = self.partition_mut(name, *partition)?;
                if !set.hosts(*leader) {
                    return Err(MetadataError::Invalid(format!(
                        "node {leader} holds no replica of {name}-{partition}"
                    )));
                }
                set.leader = *leader;
                Ok(MetadataResult::Done)
            }
            MetadataCommand::SetPartitionInSync {
                name,
                partition,
                leader,
                in_sync,
            } => {
                let set = self.partition_mut(name, *partition)?;
                if set.leader != *leader {
                    return Err(MetadataError::Invalid(format!(
                        "node {leader} does not lead {name}-{partition}"
                    )));
                }
                if let Some(outsider) = in_sync.iter().find(|node| !set.hosts(**node)) {
                    return Err(MetadataError::Invalid(format!(
                        "node {outsider} holds no replica of {name}-{partition}"
                    )));
                }
                set.in_sync = Some(in_sync.clone());
                Ok(MetadataResult::Done)
            }
            MetadataCommand::DeclareQueue {
                name,
                replication_factor,
                arguments,
                incarnated,
                counted,
                transient,
                exclusive_on,
            } => {
                if let Some(queue) = self.queues.get(name) {
                    if queue.exclusive_on.is_some() && queue.exclusive_on != *exclusive_on {
                        return Err(MetadataError::QueueLocked(name.clone()));
                    }
                    if &queue.arguments == arguments
                        && queue.transient == *transient
                        && queue.exclusive_on == *exclusive_on
                    {
                        let placement = queue.placement.clone();
                        if let (true, Some(queue)) = (*counted, self.queues.get_mut(name)) {
                            queue.declares += 1;
                        }
                        return Ok(MetadataResult::Placed(vec![placement]));
                    }
                    return Err(MetadataError::QueueDiffers(name.clone()));
                }
                let placed = match exclusive_on {
                    // The connection's node leads it, alone.
                    Some(node) => {
                        if !self.nodes.is_empty() && !self.nodes.contains_key(node) {
                            return Err(MetadataError::UnknownNode(*node));
                        }
                        Replicas::new(vec![*node])
                    }
                    None => {
                        let factor = self.check_factor(*replication_factor)?;
                        placement::Load::of(self).place(factor)
                    }
                };
                let incarnation = if *incarnated {
                    self.queue_incarnations += 1;
                    self.queue_incarnations
                } else {
                    0
                };
                self.queues.insert(
                    name.clone(),
                    QueueMeta {
                        arguments: arguments.clone(),
                        placement: placed.clone(),
                        incarnation,
                        transient: *transient,
                        exclusive_on: *exclusive_on,
                        declares: 0,
                    },
                );
                Ok(MetadataResult::Placed(vec![placed]))
            }
            MetadataCommand::SetQueueLeader { name, leader } => {
                let placement = &mut self
                    .queues
                    .get_mut(name)
                    .ok_or_else(|| MetadataError::UnknownQueue(name.clone()))?
                    .placement;
                if !placement.hosts(*leader) {
                    return Err(MetadataError::Invalid(format!(
                        "node {leader} holds no replica of queue {name:?}"
                    )));
                }
                placement.leader = *leader;
                Ok(MetadataResult::Done)
            }
            MetadataCommand::DeleteQueue {
                name,
                exclusive_on,
                if_unchanged,
            } => {
                let queue = self
                    .queues
                    .get(name)
                    .ok_or_else(|| MetadataError::UnknownQueue(name.clone()))?;
                if exclusive_on.is_some() && queue.exclusive_on != *exclusive_on {
                    // Not that node's connection's queue any more: none of its to delete.
                    return Err(MetadataError::UnknownQueue(name.clone()));
                }
                if if_unchanged.is_some_and(|seen| seen != queue.seen()) {
                    return Err(MetadataError::QueueDeclaredAgain(name.clone()));
                }
                self.remove_queue(name);
                Ok(MetadataResult::Done)
            }
            MetadataCommand::DeclareExchange {
                name,
                kind,
                transient,
            } => match self.exchanges.get(name) {
                Some(existing)
                    if existing != kind
                        || self.transient_exchanges.contains(name) != *transient =>
                {
                    let durability = if self.transient_exchanges.contains(name) {
                        "transient"
                    } else {
                        "durable"
                    };
                    Err(MetadataError::ExchangeDiffers {
                        name: name.clone(),
                        kind: format!("{durability} {existing}"),
                    })
                }
                Some(_) => Ok(MetadataResult::Done),
                None => {
                    self.exchanges.insert(name.clone(), kind.clone());
                    if *transient {
                        self.transient_exchanges.insert(name.clone());
                    }
                    Ok(MetadataResult::Done)
                }
            },
            MetadataCommand::DeleteExchange { name } => {
                self.exchanges
                    .remove(name)
                    .ok_or_else(|| MetadataError::UnknownExchange(name.clone()))?;
                self.transient_exchanges.remove(name);
                self.bindings.retain(|binding| {
                    &binding.exchange != name && !(binding.to_exchange && &binding.queue == name)
                });
                Ok(MetadataResult::Done)
            }
            MetadataCommand::Bind(binding) => {
                if !self.exchanges.contains_key(&binding.exchange)
                    && !is_builtin_exchange(&binding.exchange)
                {
                    return Err(MetadataError::UnknownExchange(binding.exchange.clone()));
                }
                if binding.to_exchange {
                    if !self.exchanges.contains_key(&binding.queue)
                        && !is_builtin_exchange(&binding.queue)
                    {
                        return Err(MetadataError::UnknownExchange(binding.queue.clone()));
                    }
                } else if !self.queues.contains_key(&binding.queue) {
                    return Err(MetadataError::UnknownQueue(binding.queue.clone()));
                }
                if let Err(at) = self.bindings.binary_search(binding) {
                    self.bindings.insert(at, binding.clone());
                }
                Ok(MetadataResult::Done)
            }
            MetadataCommand::Unbind(binding) => {
                if let Ok(at) = self.bindings.binary_search(binding) {
                    self.bindings.remove(at);
                }
                Ok(MetadataResult::Done)
            }
            MetadataCommand::Rebalance => {
                self.rebalance(Why::Asked);
                self.leader_rebalances += 1;
                Ok(MetadataResult::Moves(self.moves()))
            }
            MetadataCommand::ReplicasMoved {
                name,
                partition,
                replicas,
            } => {
                let set = match partition {
                    Some(partition) => self
                        .topics
                        .get_mut(name)
                        .and_then(|topic| topic.partitions.get_mut(*partition as usize)),
                    None => self.queues.get_mut(name).map(|queue| &mut queue.placement),
                };
                let Some(set) = set.filter(|set| set.moving_to.as_ref() == Some(replicas)) else {
                    return Err(MetadataError::Invalid(format!(
                        "no move of {name} {partition:?} to {replicas:?} is under way"
                    )));
                };
                set.replicas = replicas.clone();
                set.moving_to = None;
                set.move_count += 1;
                set.in_sync = None;
                if let [only] = replicas.as_slice() {
                    // A group of one voter is led by it (the node that led it may still,
                    // until its member stops: it then refuses, naming the new one).
                    set.leader = *only;
                }
                Ok(MetadataResult::Done)
            }
            MetadataCommand::ReserveProducerIds {
                node_id,
                from,
                count,
            } => {
                // A node asks for 1,000 at a time; a million bounds a bad request's waste of
                // the node's 2^31 ids.
                if !(1..=1_000_000).contains(count) || *from < 0 {
                    return Err(MetadataError::Invalid(format!(
                        "cannot reserve {count} producer ids from {from}"
                    )));
                }
                let start = self
                    .producer_ids
                    .get(node_id)
                    .map_or(*from, |reserved| (*reserved).max(*from));
                let end = start.saturating_add(*count);
                self.producer_ids.insert(*node_id, end);
                Ok(MetadataResult::ProducerIds { start, end })
            }
            MetadataCommand::TestPut { key, value } => Ok(MetadataResult::Previous(
                self.test_register.insert(key.clone(), *value),
            )),
            MetadataCommand::Security(command) => self.apply_security(command),
        }
    }

    /// The replication factor to place with: 1 to the node count (a cluster with no
    /// registered node places on node 1, the lone broker); 0 asks for the default, decided
    /// here, when the command is applied, so every node places alike.
    fn check_factor(&self, requested: u32) -> Result<usize, MetadataError> {
        // Nodes being drained take no new replica.
        let taking = self
            .nodes
            .keys()
            .filter(|id| !self.draining.contains(id))
            .count();
        let nodes = if taking == 0 {
            self.nodes.len()
        } else {
            taking
        }
        .max(1);
        match requested as usize {
            0 => Ok(default_factor(nodes) as usize),
            factor if factor <= nodes => Ok(factor),
            factor if taking == 0 || taking == self.nodes.len() => {
                Err(MetadataError::Invalid(format!(
                    "replication factor {factor} is more than the {nodes} nodes of the cluster"
                )))
            }
            factor => Err(MetadataError::Invalid(format!(
                "replication factor {factor} is more than the {nodes} nodes of the cluster that \
                 are not being drained"
            ))),
        }
    }

    /// Deletes the exclusive queues of node `node`'s connections and the bindings to them.
    fn drop_exclusive_queues(&mut self, node: NodeId) {
        let ended: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.exclusive_on == Some(node))
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            self.remove_queue(&name);
        }
    }

    /// Removes queue `name` and the bindings to it.
    fn remove_queue(&mut self, name: &str) {
        self.queues.remove(name);
        self.bindings
            .retain(|binding| binding.to_exchange || binding.queue != name);
    }

    /// Plans where every set goes ([`placement::rebalance`]) and applies the plan: a set
    /// written through a group ([`Replicas::in_a_group`]) whose nodes change gets a
    /// `moving_to` (its group's leader moves it; its `replicas` and elected leader stay
    /// until then), and so does an unreplicated partition the plan puts elsewhere (it moves
    /// with its records through a group of its own: on a `Rebalance`, and otherwise only
    /// off a node being drained); a set none of whose nodes is
    /// registered any more is placed again at once, empty, as a new set (no group is left
    /// to move it). Unreplicated queues on registered nodes are left out (their messages
    /// cannot follow them), and so are internal topics unless a node was removed (they
    /// are led first by the lowest id; after a removal the plan evens them out with the
    /// rest). Draining nodes take nothing.
    fn rebalance(&mut self, why: Why) {
        let node_removed = why == Why::Removal;
        let registered: BTreeSet<NodeId> = self.nodes.keys().copied().collect();
        let mut nodes: Vec<NodeId> = registered
            .iter()
            .filter(|id| !self.draining.contains(id))
            .copied()
            .collect();
        if nodes.is_empty() {
            nodes = registered.iter().copied().collect();
        }
        let draining = self.draining.clone();
        // The test of which sets the plan may move (`moved`); the unreplicated partitions
        // and queues it may not move still count in the load (as `Load::of` counts them
        // for new sets), so a drain's plan and a rebalance's agree on what is even.
        let moved = |set: &Replicas, kind: SetKind| {
            kind.grouped(set)
                || set.replicas.iter().any(|id| !registered.contains(id))
                || (kind == SetKind::Partition
                    && (why == Why::Asked || set.replicas.iter().any(|id| draining.contains(id))))
        };
        let fixed: Vec<NodeId> = self
            .topics
            .iter()
            .filter(|(name, _)| !name.starts_with(INTERNAL_TOPIC_PREFIX))
            .flat_map(|(_, topic)| topic.partitions.iter())
            .filter(|set| !moved(set, SetKind::Partition))
            .chain(
                self.queues
                    .values()
                    .map(|queue| &queue.placement)
                    .filter(|set| !moved(set, SetKind::Queue)),
            )
            .flat_map(|set| set.replicas.iter().copied())
            .collect();
        let mut sets: Vec<(&mut Replicas, SetKind)> = self
            .topics
            .iter_mut()
            .filter(|(name, _)| node_removed || !name.starts_with(INTERNAL_TOPIC_PREFIX))
            .flat_map(|(name, topic)| {
                let kind = if name.starts_with(INTERNAL_TOPIC_PREFIX) {
                    SetKind::Internal
                } else {
                    SetKind::Partition
                };
                topic.partitions.iter_mut().map(move |set| (set, kind))
            })
            .chain(
                self.queues
                    .values_mut()
                    .map(|queue| (&mut queue.placement, SetKind::Queue)),
            )
            .filter(|(set, kind)| moved(set, *kind))
            .collect();
        // Plan from where each set is going (a move under way counts as done).
        let mut plans: Vec<Replicas> = sets
            .iter()
            .map(|(set, _)| {
                let mut plan = (**set).clone();
                if let Some(target) = plan.moving_to.take() {
                    plan.replicas = target;
                }
                plan
            })
            .collect();
        let mut planned: Vec<&mut Replicas> = plans.iter_mut().collect();
        placement::rebalance(&nodes, &mut planned, &fixed);
        for ((set, kind), plan) in sets.iter_mut().zip(plans) {
            if set.replicas.iter().all(|id| !registered.contains(id)) {
                // Every node holding it is gone (a partition of one replica whose node
                // died, during its drain or after a move): nothing is left to copy or to
                // lead its group; it starts again, empty, where the plan puts it.
                **set = Replicas {
                    leader: plan.leader,
                    ..Replicas::new(plan.replicas)
                };
                continue;
            }
            if !kind.grouped(set) {
                // An unreplicated partition on a registered node (the filter above): its
                // records go with it, through a group of its own.
                if plan.replicas != set.replicas {
                    set.moving_to = Some(plan.replicas);
                }
                continue;
            }
            let mut now: Vec<NodeId> = set.replicas.clone();
            now.sort_unstable();
            let mut then: Vec<NodeId> = plan.replicas.clone();
            then.sort_unstable();
            if now == then && set.moving_to.is_none() {
                // Staying: the plan's order names the preferred leader; the elected one
                // stays.
                set.replicas = plan.replicas;
            } else {
                // A move under way is never cancelled, only redirected (back to where the
                // set runs, perhaps): its group's voters may have changed already, and only
                // a completed move (`ReplicasMoved` of exactly the group's voters) lets the
                // metadata say where the group runs.
                set.moving_to = Some(plan.replicas);
            }
        }
    }

    /// Whether node `node` holds nothing a drain moves ([`MetadataCommand::DrainNode`]): no
    /// partition of a topic other than an internal one, and no set written through a
    /// group, names it among its replicas or where it moves.
    pub fn drained(&self, node: NodeId) -> bool {
        let partitions = self
            .topics
            .iter()
            .filter(|(name, _)| !name.starts_with(INTERNAL_TOPIC_PREFIX))
            .flat_map(|(_, topic)| topic.partitions.iter());
        let grouped_queues = self
            .queues
            .values()
            .map(|queue| &queue.placement)
            .filter(|set| SetKind::Queue.grouped(set));
        !partitions.chain(grouped_queues).any(|set| set.hosts(node))
    }

    /// Every replicated set being moved, partitions by topic then queues.
    pub fn moves(&self) -> Vec<ReplicaMove> {
        let partitions = self.topics.iter().flat_map(|(name, topic)| {
            topic
                .partitions
                .iter()
                .enumerate()
                .filter_map(move |(index, set)| {
                    Some(ReplicaMove {
                        name: name.clone(),
                        partition: Some(u32::try_from(index).ok()?),
                        from: set.replicas.clone(),
                        to: set.moving_to.clone()?,
                    })
                })
        });
        let queues = self.queues.iter().filter_map(|(name, queue)| {
            Some(ReplicaMove {
                name: name.clone(),
                partition: None,
                from: queue.placement.replicas.clone(),
                to: queue.placement.moving_to.clone()?,
            })
        });
        partitions.chain(queues).collect()
    }

    /// Every replica set, topics' partitions then queues, for checks and status.
    pub fn replica_sets(&self) -> impl Iterator<Item = &Replicas> {
        self.topics
            .values()
            .flat_map(|topic| topic.partitions.iter())
            .chain(self.queues.values().map(|queue| &queue.placement))
    }

    /// The node that coordinates consumer group or transactional id `key`: the leader of
    /// the internal topic's partition that `key` hashes to (Kafka's rule), or `None` while
    /// that topic is not in the metadata.
    pub fn coordinator(&self, internal_topic: &str, key: &str) -> Option<NodeId> {
        let topic = self.topics.get(internal_topic)?;
        if topic.partitions.is_empty() {
            return None;
        }
        let index = placement::key_hash(key) as usize % topic.partitions.len();
        Some(topic.partitions[index].leader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A declare of durable queue `name` with no arguments and one replica.
    fn declare_plain(name: &str) -> MetadataCommand {
        MetadataCommand::DeclareQueue {
            name: name.into(),
            replication_factor: 1,
            arguments: BTreeMap::new(),
            incarnated: true,
            counted: true,
            transient: false,
            exclusive_on: None,
        }
    }

    fn node(port: u16) -> NodeInfo {
        NodeInfo {
            cluster_addr: format!("127.0.0.1:{port}"),
            listeners: BTreeMap::new(),
            settings: BTreeMap::new(),
        }
    }

    #[test]
    fn each_setting_a_node_runs_with_another_value_than_another_node_is_a_difference() {
        let mut state = MetadataState::default();
        let with = |pairs: &[(&str, &str)]| NodeInfo {
            settings: pairs
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..node(1)
        };
        let same = [("authorization", "optional"), ("super_users", "")];
        for (id, info) in [
            (1, with(&same)),
            (2, with(&same)),
            (
                3,
                with(&[("authorization", "required"), ("super_users", "")]),
            ),
            (4, with(&[])), // an older build: not compared
            (5, with(&[("authorization", "optional")])),
        ] {
            state.apply(&MetadataCommand::RegisterNode { node_id: id, info });
        }
        let difference =
            |key: &str, here: Option<&str>, node, there: Option<&str>| SettingDifference {
                key: key.to_string(),
                here: here.map(str::to_string),
                node,
                there: there.map(str::to_string),
            };
        assert_eq!(
            settings_differences(&state, 1),
            vec![
                difference("authorization", Some("optional"), 3, Some("required")),
                difference("super_users", Some(""), 5, None),
            ]
        );
        assert!(
            settings_differences(&state, 4).is_empty(),
            "it registered none"
        );
        assert!(settings_differences(&state, 9).is_empty(), "not registered");
    }

    fn three_nodes() -> MetadataState {
        let mut state = MetadataState::default();
        for id in 1..=3 {
            state.apply(&MetadataCommand::RegisterNode {
                node_id: id,
                info: node(7000 + id as u16),
            });
        }
        state
    }

    #[test]
    fn a_partitions_in_sync_replicas_are_recorded_by_its_leader_only() {
        let mut state = three_nodes();
        state.apply(&MetadataCommand::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: 2,
            configs: BTreeMap::new(),
            topic_id: None,
        });
        let set = state.topics["t"].partitions[0].clone();
        assert_eq!(set.in_sync, None, "every replica until one is recorded");
        let (leader, follower) = (set.replicas[0], set.replicas[1]);
        let outsider = (1..=3)
            .find(|id| !set.replicas.contains(id))
            .expect("a third");
        let record = |leader: NodeId, in_sync: Vec<NodeId>| MetadataCommand::SetPartitionInSync {
            name: "t".into(),
            partition: 0,
            leader,
            in_sync,
        };
        assert_eq!(
            state.apply(&record(leader, vec![leader])),
            MetadataResult::Done
        );
        assert_eq!(state.topics["t"].partitions[0].in_sync, Some(vec![leader]));
        // A deposed leader's late record, and a node holding no replica, are refused.
        assert!(matches!(
            state.apply(&record(follower, vec![follower])),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
        assert!(matches!(
            state.apply(&record(leader, vec![leader, outsider])),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
        assert_eq!(state.topics["t"].partitions[0].in_sync, Some(vec![leader]));
        // The command and the state round-trip; a set written before has none.
        let command = record(leader, vec![leader, follower]);
        let json = serde_json::to_string(&command).expect("encodes");
        assert_eq!(
            serde_json::from_str::<MetadataCommand>(&json).expect("decodes"),
            command
        );
        let old: Replicas =
            serde_json::from_str(r#"{"replicas":[1,2],"leader":1}"#).expect("decodes");
        assert_eq!(old.in_sync, None);
    }

    #[test]
    fn a_replicated_queues_leader_is_recorded_only_among_its_replicas() {
        let mut state = three_nodes();
        let placed = state.apply(&MetadataCommand::DeclareQueue {
            name: "q".into(),
            replication_factor: 2,
            arguments: BTreeMap::from([("replication-factor".into(), "2".into())]),
            incarnated: true,
            counted: true,
            transient: false,
            exclusive_on: None,
        });
        let MetadataResult::Placed(sets) = placed else {
            panic!("placed: {placed:?}");
        };
        let replicas = sets[0].replicas.clone();
        assert_eq!(replicas.len(), 2);
        let other = replicas[1];
        assert_eq!(
            state.apply(&MetadataCommand::SetQueueLeader {
                name: "q".into(),
                leader: other,
            }),
            MetadataResult::Done
        );
        assert_eq!(state.queues["q"].placement.leader, other);
        let outsider = (1..=3)
            .find(|id| !replicas.contains(id))
            .expect("a third node");
        assert!(matches!(
            state.apply(&MetadataCommand::SetQueueLeader {
                name: "q".into(),
                leader: outsider,
            }),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
        assert_eq!(
            state.apply(&MetadataCommand::SetQueueLeader {
                name: "gone".into(),
                leader: other,
            }),
            MetadataResult::Refused(MetadataError::UnknownQueue("gone".into()))
        );
        assert_eq!(
            state.queues["q"].placement.leader, other,
            "refusals change nothing"
        );
    }

    fn create(name: &str, partitions: u32, factor: u32) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor: factor,
            configs: BTreeMap::new(),
            topic_id: None,
        }
    }

    #[test]
    fn a_topic_without_a_factor_gets_three_replicas_from_three_nodes_on_and_one_below() {
        let factors = |state: &MetadataState, name: &str| -> Vec<usize> {
            state.topics[name]
                .partitions
                .iter()
                .map(|placed| placed.replicas.len())
                .collect()
        };
        let register = |state: &mut MetadataState, ids: std::ops::RangeInclusive<u64>| {
            for id in ids {
                state.apply(&MetadataCommand::RegisterNode {
                    node_id: id,
                    info: node(7000 + id as u16),
                });
            }
        };
        let mut state = MetadataState::default();
        state.apply(&create("alone", 2, 0));
        assert_eq!(factors(&state, "alone"), vec![1, 1]);
        register(&mut state, 1..=2);
        state.apply(&create("two", 2, 0));
        assert_eq!(factors(&state, "two"), vec![1, 1]);
        register(&mut state, 3..=5);
        state.apply(&create("five", 3, 0));
        assert_eq!(factors(&state, "five"), vec![3, 3, 3]);
        // A factor asked for is kept (up to the node count).
        state.apply(&create("asked", 1, 5));
        assert_eq!(factors(&state, "asked"), vec![5]);
    }

    #[test]
    fn a_topic_keeps_the_id_its_create_carried_and_older_entries_read_without_one() {
        let mut state = three_nodes();
        let id = [7u8; 16];
        let command = MetadataCommand::CreateTopic {
            name: "t".to_string(),
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
            topic_id: Some(id),
        };
        state.apply(&command);
        assert_eq!(state.topics["t"].topic_id, Some(id));
        // The command and the state round-trip through the log's and the snapshot's JSON.
        let json = serde_json::to_string(&command).expect("encodes");
        assert_eq!(
            serde_json::from_str::<MetadataCommand>(&json).expect("decodes"),
            command
        );
        let again: MetadataState =
            serde_json::from_str(&serde_json::to_string(&state).expect("encodes"))
                .expect("decodes");
        assert_eq!(again, state);
        // An entry and a state written before ids went through the log.
        let old =
            r#"{"CreateTopic":{"name":"u","partitions":1,"replication_factor":1,"configs":{}}}"#;
        let MetadataCommand::CreateTopic { topic_id, .. } =
            serde_json::from_str::<MetadataCommand>(old).expect("an older entry decodes")
        else {
            panic!("not a create");
        };
        assert_eq!(topic_id, None);
        let old_meta = r#"{"configs":{},"partitions":[{"replicas":[1],"leader":1}]}"#;
        let meta: TopicMeta = serde_json::from_str(old_meta).expect("an older topic decodes");
        assert_eq!(meta.topic_id, None);
    }

    #[test]
    fn a_transient_queue_or_exchange_is_not_the_durable_one_of_its_name() {
        let mut state = three_nodes();
        let queue = |transient: bool| MetadataCommand::DeclareQueue {
            name: "q".into(),
            replication_factor: 1,
            arguments: BTreeMap::new(),
            incarnated: true,
            counted: true,
            transient,
            exclusive_on: None,
        };
        assert!(matches!(
            state.apply(&queue(true)),
            MetadataResult::Placed(_)
        ));
        assert!(state.queues["q"].transient);
        assert!(matches!(
            state.apply(&queue(true)),
            MetadataResult::Placed(_)
        ));
        assert_eq!(
            state.apply(&queue(false)),
            MetadataResult::Refused(MetadataError::QueueDiffers("q".into()))
        );
        let exchange = |transient: bool| MetadataCommand::DeclareExchange {
            name: "x".into(),
            kind: "fanout".into(),
            transient,
        };
        assert_eq!(state.apply(&exchange(true)), MetadataResult::Done);
        assert_eq!(
            state.apply(&exchange(false)),
            MetadataResult::Refused(MetadataError::ExchangeDiffers {
                name: "x".into(),
                kind: "transient fanout".into()
            })
        );
        state.apply(&MetadataCommand::DeleteExchange { name: "x".into() });
        assert!(state.transient_exchanges.is_empty());
        assert_eq!(state.apply(&exchange(false)), MetadataResult::Done);
        assert!(state.transient_exchanges.is_empty());
    }

    #[test]
    fn an_exclusive_queue_is_led_by_its_connections_node_and_ends_with_it() {
        let mut state = three_nodes();
        let declare = |exclusive_on: Option<NodeId>| MetadataCommand::DeclareQueue {
            name: "amq.gen-x".into(),
            replication_factor: 1,
            arguments: BTreeMap::from([("exclusive".into(), "true".into())]),
            incarnated: true,
            counted: true,
            transient: true,
            exclusive_on,
        };
        let MetadataResult::Placed(sets) = state.apply(&declare(Some(2))) else {
            panic!("placed");
        };
        assert_eq!((sets[0].leader, sets[0].replicas.clone()), (2, vec![2]));
        // Its own node declares it again (the same connection, say); no other node may.
        assert!(matches!(
            state.apply(&declare(Some(2))),
            MetadataResult::Placed(_)
        ));
        for other in [Some(3), None] {
            assert_eq!(
                state.apply(&declare(other)),
                MetadataResult::Refused(MetadataError::QueueLocked("amq.gen-x".into()))
            );
        }
        assert_eq!(
            state.apply(&declare(Some(9))),
            MetadataResult::Refused(MetadataError::QueueLocked("amq.gen-x".into()))
        );
        state.apply(&MetadataCommand::Bind(BindingMeta {
            exchange: "amq.fanout".into(),
            queue: "amq.gen-x".into(),
            key: String::new(),
            arguments: BTreeMap::new(),
            to_exchange: false,
        }));
        assert_eq!(state.bindings.len(), 1);
        // A drop names what the leader saw: another node's, or another incarnation of the
        // name, leaves it; its own node's drops it with its bindings, the node staying
        // registered; a drop of one gone is fine.
        let incarnation = state.queues["amq.gen-x"].incarnation;
        let drop = |node_id, incarnation| MetadataCommand::DropExclusiveQueues {
            node_id,
            queues: vec![("amq.gen-x".to_string(), incarnation)],
        };
        assert_eq!(state.apply(&drop(3, incarnation)), MetadataResult::Done);
        assert_eq!(state.apply(&drop(2, incarnation + 1)), MetadataResult::Done);
        assert_eq!(state.queues.len(), 1);
        // Its connection's close, told from another node, deletes nothing.
        let closed = |node| MetadataCommand::DeleteQueue {
            name: "amq.gen-x".into(),
            exclusive_on: Some(node),
            if_unchanged: None,
        };
        assert_eq!(
            state.apply(&closed(3)),
            MetadataResult::Refused(MetadataError::UnknownQueue("amq.gen-x".into()))
        );
        assert_eq!(state.queues.len(), 1);
        let kept = state.clone();
        assert_eq!(state.apply(&drop(2, incarnation)), MetadataResult::Done);
        assert!(state.queues.is_empty() && state.bindings.is_empty());
        assert!(state.nodes.contains_key(&2));
        assert_eq!(state.apply(&drop(2, incarnation)), MetadataResult::Done);
        let mut closing = kept.clone();
        assert_eq!(closing.apply(&closed(2)), MetadataResult::Done);
        assert!(closing.queues.is_empty() && closing.bindings.is_empty());
        // Its node removed, it is gone with its bindings (not placed elsewhere).
        let mut state = kept;
        state.apply(&MetadataCommand::RemoveNode {
            node_id: 2,
            only_if_draining: false,
        });
        assert!(state.queues.is_empty() && state.bindings.is_empty());
    }

    #[test]
    fn a_delete_by_a_queues_own_rule_yields_to_a_declare_it_did_not_see() {
        let mut state = MetadataState::default();
        let declare = declare_plain("q");
        let by_rule = |seen: QueueSeen| MetadataCommand::DeleteQueue {
            name: "q".into(),
            exclusive_on: None,
            if_unchanged: Some(seen),
        };
        state.apply(&declare);
        // The rule fires on the leader; a client's declare lands in the log before the
        // rule's delete: the delete is refused, and the client's queue stays.
        let seen = state.queues["q"].seen();
        assert_eq!(
            state.apply(&declare),
            MetadataResult::Placed(vec![state.queues["q"].placement.clone()])
        );
        assert_eq!(state.queues["q"].declares, 1);
        assert_eq!(
            state.apply(&by_rule(seen)),
            MetadataResult::Refused(MetadataError::QueueDeclaredAgain("q".into()))
        );
        assert!(state.queues.contains_key("q"));
        // Deleted and declared anew (another incarnation, no declares since): refused too.
        let stale = state.queues["q"].seen();
        state.apply(&MetadataCommand::DeleteQueue {
            name: "q".into(),
            exclusive_on: None,
            if_unchanged: None,
        });
        state.apply(&declare);
        assert_eq!(state.queues["q"].declares, 0);
        assert_eq!(
            state.apply(&by_rule(stale)),
            MetadataResult::Refused(MetadataError::QueueDeclaredAgain("q".into()))
        );
        // Nothing since the rule fired: the delete applies.
        let seen = state.queues["q"].seen();
        assert_eq!(state.apply(&by_rule(seen)), MetadataResult::Done);
        assert!(!state.queues.contains_key("q"));
        // An entry of an earlier build (no `if_unchanged`) deletes as before, and a queue
        // of a snapshot from before `declares` reads 0.
        let old: MetadataCommand = serde_json::from_str(r#"{"DeleteQueue":{"name":"q"}}"#)
            .expect("an older entry decodes");
        assert_eq!(
            old,
            MetadataCommand::DeleteQueue {
                name: "q".into(),
                exclusive_on: None,
                if_unchanged: None
            }
        );
        // A declare of an earlier build (no `counted`) counts on no node: one that replays
        // it and one that has it in an older build's snapshot agree.
        state.apply(&declare);
        let old: MetadataCommand = serde_json::from_str(
            r#"{"DeclareQueue":{"name":"q","replication_factor":1,"arguments":{},"incarnated":true}}"#,
        )
        .expect("an older declare decodes");
        assert!(matches!(
            old,
            MetadataCommand::DeclareQueue { counted: false, .. }
        ));
        state.apply(&old);
        assert_eq!(state.queues["q"].declares, 0);
    }

    #[test]
    fn each_declare_of_a_queue_name_the_log_lacks_is_a_new_incarnation() {
        let mut state = three_nodes();
        let declare = |arguments: &[(&str, &str)]| MetadataCommand::DeclareQueue {
            name: "q".to_string(),
            replication_factor: 1,
            arguments: arguments
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            incarnated: true,
            counted: true,
            transient: false,
            exclusive_on: None,
        };
        state.apply(&declare(&[]));
        assert_eq!(state.queues["q"].incarnation, 1);
        // The same declare again is the same queue.
        state.apply(&declare(&[]));
        assert_eq!(state.queues["q"].incarnation, 1);
        // Another queue takes the next number; a delete and a declare of the name, whatever
        // the arguments, give it another one.
        state.apply(&declare_plain("other"));
        assert_eq!(state.queues["other"].incarnation, 2);
        state.apply(&MetadataCommand::DeleteQueue {
            name: "q".into(),
            exclusive_on: None,
            if_unchanged: None,
        });
        state.apply(&declare(&[]));
        assert_eq!(state.queues["q"].incarnation, 3);
        state.apply(&MetadataCommand::DeleteQueue {
            name: "q".into(),
            exclusive_on: None,
            if_unchanged: None,
        });
        state.apply(&declare(&[("x-max-length", "5")]));
        assert_eq!(state.queues["q"].incarnation, 4);
        assert_eq!(state.queue_incarnations, 4);
        // An entry of an earlier build (no `incarnated`) declares incarnation 0 and takes
        // no number, so nodes that replay it and nodes that have it in an older snapshot
        // agree.
        let old_entry =
            r#"{"DeclareQueue":{"name":"legacy","replication_factor":1,"arguments":{}}}"#;
        let old_command: MetadataCommand =
            serde_json::from_str(old_entry).expect("an older entry decodes");
        state.apply(&old_command);
        assert_eq!(state.queues["legacy"].incarnation, 0);
        assert_eq!(state.queue_incarnations, 4);
        // The state round-trips through the snapshot's JSON; a state and a queue written
        // before incarnations read as 0.
        let again: MetadataState =
            serde_json::from_str(&serde_json::to_string(&state).expect("encodes"))
                .expect("decodes");
        assert_eq!(again, state);
        let old_meta = r#"{"arguments":{},"placement":{"replicas":[1],"leader":1}}"#;
        let meta: QueueMeta = serde_json::from_str(old_meta).expect("an older queue decodes");
        assert_eq!(meta.incarnation, 0);
        let mut old_state = three_nodes();
        old_state.queue_incarnations = 0;
        let text = serde_json::to_string(&old_state).expect("encodes");
        assert!(!text.contains("queue_incarnations"), "{text}");
        let read: MetadataState = serde_json::from_str(&text).expect("decodes");
        assert_eq!(read.queue_incarnations, 0);
    }

    #[test]
    fn a_topic_is_placed_across_the_nodes_and_refused_twice() {
        let mut state = three_nodes();
        let MetadataResult::Placed(placed) = state.apply(&create("t", 6, 3)) else {
            panic!("placed");
        };
        assert_eq!(placed.len(), 6);
        for replicas in &placed {
            let mut nodes = replicas.replicas.clone();
            nodes.sort_unstable();
            nodes.dedup();
            assert_eq!(nodes.len(), 3, "three distinct replicas: {replicas:?}");
            assert_eq!(replicas.leader, replicas.replicas[0]);
        }
        let mut leaders = BTreeMap::new();
        for replicas in &placed {
            *leaders.entry(replicas.leader).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        assert_eq!(
            state.apply(&create("t", 1, 1)),
            MetadataResult::Refused(MetadataError::TopicExists("t".to_string()))
        );
        assert!(matches!(
            state.apply(&create("u", 1, 4)),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
    }

    #[test]
    fn deleting_a_queue_or_exchange_removes_its_bindings() {
        let mut state = three_nodes();
        state.apply(&MetadataCommand::DeclareExchange {
            name: "x".into(),
            kind: "direct".into(),
            transient: false,
        });
        state.apply(&declare_plain("q"));
        let binding = BindingMeta {
            exchange: "x".into(),
            queue: "q".into(),
            key: "k".into(),
            arguments: BTreeMap::new(),
            to_exchange: false,
        };
        assert_eq!(
            state.apply(&MetadataCommand::Bind(binding.clone())),
            MetadataResult::Done
        );
        // A built-in exchange needs no declare; an unknown one is refused.
        let builtin = BindingMeta {
            exchange: "amq.topic".into(),
            ..binding.clone()
        };
        assert_eq!(
            state.apply(&MetadataCommand::Bind(builtin.clone())),
            MetadataResult::Done
        );
        assert_eq!(
            state.apply(&MetadataCommand::Bind(BindingMeta {
                exchange: "nowhere".into(),
                ..binding.clone()
            })),
            MetadataResult::Refused(MetadataError::UnknownExchange("nowhere".into()))
        );
        state.apply(&MetadataCommand::Unbind(builtin));
        assert_eq!(state.bindings, vec![binding]);
        state.apply(&MetadataCommand::DeleteQueue {
            name: "q".into(),
            exclusive_on: None,
            if_unchanged: None,
        });
        assert!(state.bindings.is_empty());
        assert_eq!(
            state.apply(&MetadataCommand::DeclareExchange {
                name: "x".into(),
                kind: "fanout".into(),
                transient: false,
            }),
            MetadataResult::Refused(MetadataError::ExchangeDiffers {
                name: "x".into(),
                kind: "durable direct".into()
            })
        );
    }

    #[test]
    fn exchange_to_exchange_bindings_need_both_exchanges_and_go_with_either() {
        let mut state = three_nodes();
        for name in ["src", "dst"] {
            state.apply(&MetadataCommand::DeclareExchange {
                name: name.into(),
                kind: "topic".into(),
                transient: false,
            });
        }
        // A queue of the destination's name is not an exchange.
        state.apply(&declare_plain("dst"));
        let binding = BindingMeta {
            exchange: "src".into(),
            queue: "dst".into(),
            key: "a.#".into(),
            arguments: BTreeMap::new(),
            to_exchange: true,
        };
        assert_eq!(
            state.apply(&MetadataCommand::Bind(binding.clone())),
            MetadataResult::Done
        );
        assert_eq!(
            state.apply(&MetadataCommand::Bind(BindingMeta {
                queue: "nowhere".into(),
                ..binding.clone()
            })),
            MetadataResult::Refused(MetadataError::UnknownExchange("nowhere".into()))
        );
        // The queue named like the destination going takes no exchange binding with it.
        state.apply(&MetadataCommand::DeleteQueue {
            name: "dst".into(),
            exclusive_on: None,
            if_unchanged: None,
        });
        assert_eq!(state.bindings, vec![binding.clone()]);
        // A queue binding's JSON has no flag; an exchange binding's has it.
        let json = serde_json::to_string(&binding).expect("json");
        assert!(json.contains("\"to_exchange\":true"), "{json}");
        let queue_binding = BindingMeta {
            to_exchange: false,
            ..binding.clone()
        };
        let json = serde_json::to_string(&queue_binding).expect("json");
        assert!(!json.contains("to_exchange"), "{json}");
        // Deleting the destination, or the source, removes it.
        state.apply(&MetadataCommand::DeleteExchange { name: "dst".into() });
        assert!(state.bindings.is_empty());
        state.apply(&MetadataCommand::DeclareExchange {
            name: "dst".into(),
            kind: "topic".into(),
            transient: false,
        });
        state.apply(&MetadataCommand::Bind(binding));
        state.apply(&MetadataCommand::DeleteExchange { name: "src".into() });
        assert!(state.bindings.is_empty());
    }

    fn change(name: &str, set: &[(&str, &str)], delete: &[&str], replace: bool) -> MetadataCommand {
        MetadataCommand::ChangeTopicConfigs {
            name: name.to_string(),
            set: set
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            delete: delete.iter().map(|key| key.to_string()).collect(),
            replace,
            keep: ["flush".to_string()].into(),
        }
    }

    #[test]
    fn config_changes_apply_to_the_overrides_the_log_holds() {
        let mut state = three_nodes();
        state.apply(&create("t", 1, 1));
        // Two changes of different keys, each made from a copy without the other: both land.
        state.apply(&change(
            "t",
            &[("retention.ms", "1000"), ("flush", "always")],
            &[],
            false,
        ));
        let answer = state.apply(&change("t", &[("segment.bytes", "4096")], &[], false));
        let both: BTreeMap<String, String> = [
            ("flush", "always"),
            ("retention.ms", "1000"),
            ("segment.bytes", "4096"),
        ]
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        assert_eq!(answer, MetadataResult::Configs(both));
        // A delete removes one key; a replace keeps only what it sets and the kept keys.
        state.apply(&change("t", &[], &["retention.ms"], false));
        assert!(!state.topics["t"].configs.contains_key("retention.ms"));
        let answer = state.apply(&change("t", &[("retention.bytes", "10")], &[], true));
        let replaced: BTreeMap<String, String> = [("flush", "always"), ("retention.bytes", "10")]
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        assert_eq!(answer, MetadataResult::Configs(replaced));
        assert_eq!(
            state.apply(&change("missing", &[], &[], false)),
            MetadataResult::Refused(MetadataError::UnknownTopic("missing".to_string()))
        );
    }

    #[test]
    fn removing_a_node_moves_its_replicas_to_the_others() {
        let mut state = three_nodes();
        state.apply(&create("t", 9, 2));
        state.apply(&create("one", 3, 1));
        let before = state.clone();
        state.apply(&MetadataCommand::RemoveNode {
            node_id: 3,
            only_if_draining: false,
        });
        // An unreplicated partition on the removed node is placed again at once (its data
        // went with the node); the others stay.
        for (at, set) in state.topics["one"].partitions.iter().enumerate() {
            let was = &before.topics["one"].partitions[at];
            if was.replicas == vec![3] {
                assert_ne!(set.replicas, vec![3]);
                assert_eq!(set.leader, set.replicas[0]);
            } else {
                assert_eq!(set, was);
            }
        }
        // A replicated set holding a replica there runs where it was until its group's
        // leader moved it to the set's `moving_to`; the others do not move.
        let moves = state.moves();
        assert!(!moves.is_empty());
        for moved in &moves {
            assert!(moved.from.contains(&3), "{moved:?}");
            assert!(!moved.to.contains(&3), "{moved:?}");
            assert_eq!(moved.to.len(), 2);
            assert_eq!(complete(&mut state, moved), MetadataResult::Done);
        }
        for (at, set) in state.topics["t"].partitions.iter().enumerate() {
            assert!(!set.replicas.contains(&3), "{set:?}");
            assert_eq!(set.replicas.len(), 2);
            let was = &before.topics["t"].partitions[at];
            assert_eq!(set.move_count, u32::from(was.replicas.contains(&3)));
            // Only the first replicas of a set that never moved initialize its group.
            for node in 1..=3 {
                assert_eq!(
                    set.initializes(node),
                    set.move_count == 0 && set.replicas.contains(&node)
                );
            }
        }
        // A move that is not under way (again, or elsewhere) is refused.
        assert!(matches!(
            complete(&mut state, &moves[0]),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
    }

    #[test]
    fn draining_a_node_moves_its_partitions_with_their_records_before_its_removal() {
        let mut state = three_nodes();
        state.apply(&create("t", 6, 2));
        state.apply(&create("one", 6, 1));
        let before = state.clone();
        let on_3: Vec<usize> = (0..6)
            .filter(|at| before.topics["one"].partitions[*at].replicas == vec![3])
            .collect();
        assert!(
            !on_3.is_empty(),
            "placement spreads unreplicated partitions too"
        );
        let MetadataResult::Moves(moves) = state.apply(&MetadataCommand::DrainNode { node_id: 3 })
        else {
            panic!("a drain answers its moves")
        };
        assert_eq!(moves, state.moves());
        assert!(state.draining.contains(&3));
        assert!(!state.drained(3));
        // Every set on node 3 moves off it, the unreplicated ones too (through a group of
        // their own: they stay where they are, and their one node leads, until the move is
        // recorded); nothing moves onto it.
        for (at, set) in state.topics["one"].partitions.iter().enumerate() {
            let was = &before.topics["one"].partitions[at];
            assert_eq!(set.replicas, was.replicas);
            if on_3.contains(&at) {
                let target = set.moving_to.clone().expect("moves off the drained node");
                assert_eq!(target.len(), 1);
                assert_ne!(target, vec![3]);
                assert!(set.in_a_group());
                assert!(set.initializes(3), "its one node starts the group");
            } else {
                assert!(!set.in_a_group(), "{set:?}");
            }
        }
        for moved in &moves {
            assert!(!moved.to.contains(&3), "{moved:?}");
        }
        // New replicas go elsewhere while it drains.
        let MetadataResult::Placed(placed) = state.apply(&create("new", 4, 2)) else {
            panic!("a create answers its placement")
        };
        assert!(placed.iter().all(|set| !set.replicas.contains(&3)));
        // Once every move is recorded, nothing is left on the node; a moved unreplicated
        // partition keeps its group of one voter, led by it.
        for moved in &moves {
            assert_eq!(complete(&mut state, moved), MetadataResult::Done);
        }
        assert!(state.drained(3));
        for at in &on_3 {
            let set = &state.topics["one"].partitions[*at];
            assert_eq!(set.replicas.len(), 1);
            assert_eq!(set.leader, set.replicas[0]);
            assert!(set.in_a_group());
            assert!(!set.initializes(set.replicas[0]), "the group already runs");
        }
        let drained = state.clone();
        assert_eq!(
            state.apply(&MetadataCommand::RemoveNode {
                node_id: 3,
                only_if_draining: false,
            }),
            MetadataResult::Done
        );
        assert!(state.draining.is_empty());
        assert_eq!(
            state.topics["one"], drained.topics["one"],
            "nothing left to place"
        );
        // A moved partition's one node dies and is removed: no group is left to move it,
        // so it starts again, empty, elsewhere (as an unreplicated set of a dead node
        // always did), instead of waiting for good on a move nobody can make.
        let holder = state.topics["one"].partitions[on_3[0]].replicas[0];
        state.apply(&MetadataCommand::RemoveNode {
            node_id: holder,
            only_if_draining: false,
        });
        let set = &state.topics["one"].partitions[on_3[0]];
        assert!(!set.replicas.contains(&holder), "{set:?}");
        assert_eq!(set.moving_to, None);
        assert!(!set.in_a_group(), "a new unreplicated set: {set:?}");
        for id in [3, holder] {
            state.apply(&MetadataCommand::RegisterNode {
                node_id: id,
                info: node(7000 + u16::try_from(id).expect("a small id")),
            });
        }
        // While nodes drain, a factor is checked against the others; the last node that
        // is not draining is not drained.
        state.apply(&MetadataCommand::DrainNode { node_id: 2 });
        state.apply(&MetadataCommand::DrainNode { node_id: 3 });
        assert!(matches!(
            state.apply(&create("wide", 1, 2)),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
        assert!(matches!(
            state.apply(&MetadataCommand::DrainNode { node_id: 1 }),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
        assert!(matches!(
            state.apply(&MetadataCommand::DrainNode { node_id: 9 }),
            MetadataResult::Refused(MetadataError::UnknownNode(9))
        ));
    }

    #[test]
    fn a_cancelled_drain_gives_the_node_back_to_placement_and_leaves_its_moves() {
        // `wharf cluster remove-node --cancel`: a drain that cannot finish (a move waiting
        // for a node that is down) or was started by mistake is stopped, and the node takes
        // replicas again.
        let mut state = three_nodes();
        state.apply(&create("three", 2, 3));
        state.apply(&create("one", 6, 1));
        let MetadataResult::Moves(moves) = state.apply(&MetadataCommand::DrainNode { node_id: 3 })
        else {
            panic!("a drain answers its moves")
        };
        assert!(!moves.is_empty(), "node 3's unreplicated partitions move");
        assert!(!state.drained(3), "a factor of 3 cannot leave node 3");
        assert!(matches!(
            state.apply(&create("wide", 1, 3)),
            MetadataResult::Refused(MetadataError::Invalid(_))
        ));
        let MetadataResult::Moves(left) = state.apply(&MetadataCommand::CancelDrain { node_id: 3 })
        else {
            panic!("a cancel answers the moves left")
        };
        assert_eq!(left, moves, "moves under way go on");
        assert!(state.draining.is_empty());
        let MetadataResult::Placed(placed) = state.apply(&create("wide", 1, 3)) else {
            panic!("node 3 takes replicas again")
        };
        assert!(placed[0].replicas.contains(&3), "{placed:?}");
        assert_eq!(
            state.apply(&MetadataCommand::CancelDrain { node_id: 3 }),
            MetadataResult::Refused(MetadataError::Invalid(
                "node 3 is not being drained".to_string()
            ))
        );
        assert_eq!(
            state.apply(&MetadataCommand::CancelDrain { node_id: 9 }),
            MetadataResult::Refused(MetadataError::UnknownNode(9))
        );
        // The moves finish as planned; a rebalance may then use node 3 again.
        for moved in &moves {
            assert_eq!(complete(&mut state, moved), MetadataResult::Done);
        }
        assert!(state.moves().is_empty());
        // A removal that drained node 3 and decided before the cancel was applied loses
        // to it; one that asks for no drain still removes.
        assert_eq!(
            state.apply(&MetadataCommand::RemoveNode {
                node_id: 3,
                only_if_draining: true,
            }),
            MetadataResult::Refused(MetadataError::Invalid(
                "node 3's drain was cancelled: it stays in the cluster".to_string()
            ))
        );
        assert!(state.nodes.contains_key(&3));
        assert_eq!(
            state.apply(&MetadataCommand::RemoveNode {
                node_id: 3,
                only_if_draining: false,
            }),
            MetadataResult::Done
        );
        // The flag travels in the log's encoding; an entry of an earlier build (without
        // it) reads as a removal that asks nothing.
        let flagged = MetadataCommand::RemoveNode {
            node_id: 3,
            only_if_draining: true,
        };
        let encoded = crate::cluster::codec::encode(&flagged).expect("encodes");
        let decoded: MetadataCommand = crate::cluster::codec::decode(&encoded).expect("decodes");
        assert_eq!(decoded, flagged);
        let old: MetadataCommand = serde_json::from_str(r#"{"RemoveNode":{"node_id":3}}"#)
            .expect("an older entry decodes");
        assert_eq!(
            old,
            MetadataCommand::RemoveNode {
                node_id: 3,
                only_if_draining: false,
            }
        );
    }

    /// Records `moved` as done (its group's leader changed the voters).
    fn complete(state: &mut MetadataState, moved: &ReplicaMove) -> MetadataResult {
        state.apply(&MetadataCommand::ReplicasMoved {
            name: moved.name.clone(),
            partition: moved.partition,
            replicas: moved.to.clone(),
        })
    }

    /// Node 4 registers, then a `Rebalance`: the state before the rebalance and its moves.
    fn join_fourth_and_rebalance(state: &mut MetadataState) -> (MetadataState, Vec<ReplicaMove>) {
        state.apply(&MetadataCommand::RegisterNode {
            node_id: 4,
            info: node(7004),
        });
        let before = state.clone();
        let MetadataResult::Moves(moves) = state.apply(&MetadataCommand::Rebalance) else {
            panic!("a rebalance answers its moves")
        };
        (before, moves)
    }

    #[test]
    fn a_rebalance_moves_unreplicated_partitions_onto_a_new_node_with_their_records() {
        let mut state = three_nodes();
        state.apply(&create("one", 6, 1));
        let (before, moves) = join_fourth_and_rebalance(&mut state);
        // Six partitions of one replica on four nodes: one moves to node 4 (2, 2, 1, 1),
        // through a group of its own that its node founds over its records.
        assert_eq!(moves.len(), 1, "{moves:?}");
        let moved = &moves[0];
        assert_eq!(moved.to, vec![4]);
        let index = moved.partition.expect("a partition") as usize;
        let set = &state.topics["one"].partitions[index];
        let was = &before.topics["one"].partitions[index];
        assert_eq!((&set.replicas, set.leader), (&was.replicas, was.leader));
        assert!(set.in_a_group() && set.hosts(4) && set.initializes(was.leader));
        assert!(
            !set.initializes(4),
            "node 4 starts empty and takes a snapshot"
        );
        for (at, other) in state.topics["one"].partitions.iter().enumerate() {
            if at != index {
                assert_eq!(other, &before.topics["one"].partitions[at]);
            }
        }
        // Done: node 4 holds and leads it, still through a group (of one voter).
        assert_eq!(complete(&mut state, moved), MetadataResult::Done);
        let set = &state.topics["one"].partitions[index];
        assert_eq!((set.replicas.clone(), set.leader), (vec![4], 4));
        assert!(set.in_a_group() && set.moving_to.is_none());
        assert_eq!(
            state.apply(&MetadataCommand::Rebalance),
            MetadataResult::Moves(vec![])
        );
    }

    #[test]
    fn a_rebalance_moves_replicated_sets_from_any_loaded_node_before_an_unreplicated_partition() {
        // Node 1 holds three unreplicated partitions, nodes 2 and 3 three sets of two; node
        // 4 joins. Node 1 is as loaded as the others (and first by id), but moving two of
        // the replicated sets evens the counts out: no unreplicated partition moves.
        let mut state = MetadataState::default();
        state.apply(&MetadataCommand::RegisterNode {
            node_id: 1,
            info: node(7001),
        });
        state.apply(&create("u", 3, 1));
        for (id, port) in [(2, 7002), (3, 7003)] {
            state.apply(&MetadataCommand::RegisterNode {
                node_id: id,
                info: node(port),
            });
        }
        state.apply(&create("r", 3, 2));
        assert!(state.topics["r"].partitions.iter().all(|set| !set.hosts(1)));
        state.apply(&MetadataCommand::RegisterNode {
            node_id: 4,
            info: node(7004),
        });
        let MetadataResult::Moves(moves) = state.apply(&MetadataCommand::Rebalance) else {
            panic!("a rebalance answers its moves")
        };
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert!(
            moves
                .iter()
                .all(|moved| moved.name == "r" && moved.to.contains(&4)),
            "{moves:?}"
        );
        // A drain of node 3 plans the same way, counting the unreplicated partitions it
        // may not move: its two replicas go to nodes 2 and 4, not onto node 1.
        let mut drained = state.clone();
        let MetadataResult::Moves(moves) =
            drained.apply(&MetadataCommand::DrainNode { node_id: 3 })
        else {
            panic!("a drain answers its moves")
        };
        assert!(
            moves
                .iter()
                .all(|moved| !moved.to.contains(&1) && !moved.to.contains(&3)),
            "{moves:?}"
        );
    }

    #[test]
    fn a_rebalance_moves_replicated_sets_onto_a_new_node_through_their_groups() {
        let mut state = three_nodes();
        state.apply(&create("t", 4, 3));
        state.apply(&create("one", 4, 1));
        let (before, moves) = join_fourth_and_rebalance(&mut state);
        // Sixteen replicas on four nodes: four move to node 4, all of replicated sets
        // (an unreplicated partition moves only when they cannot even the counts out: it
        // keeps a group of its own afterwards); nothing else changes until the groups
        // moved.
        assert_eq!(moves.len(), 4, "{moves:?}");
        assert!(moves
            .iter()
            .all(|moved| moved.to.contains(&4) && moved.name == "t"));
        assert_eq!(before.topics["one"], state.topics["one"]);
        for (at, set) in state.topics["t"].partitions.iter().enumerate() {
            let sorted = |replicas: &[NodeId]| {
                let mut sorted = replicas.to_vec();
                sorted.sort_unstable();
                sorted
            };
            let was = &before.topics["t"].partitions[at];
            assert_eq!(sorted(&set.replicas), sorted(&was.replicas));
            assert_eq!(set.leader, was.leader);
            // Node 4 hosts a member of each moving set (it starts it empty, not
            // initializing), and may be recorded as its leader once elected.
            assert_eq!(set.hosts(4), set.moving_to.is_some());
            assert!(!set.initializes(4));
        }
        // Asked again, the same plan: nothing new moves. Each one asks the nodes to hand
        // leaders back to the preferred replicas (`leader_rebalances`).
        assert_eq!(
            state.apply(&MetadataCommand::Rebalance),
            MetadataResult::Moves(moves.clone())
        );
        assert_eq!((before.leader_rebalances, state.leader_rebalances), (0, 2));
        let moving = moves[0].partition.expect("a partition");
        assert_eq!(
            state.apply(&MetadataCommand::SetPartitionLeader {
                name: "t".to_string(),
                partition: moving,
                leader: 4,
            }),
            MetadataResult::Done
        );
        // Node 4 goes before the moves completed: each move is redirected back to the
        // nodes its set runs on, never cancelled (its group's voters may have changed), so
        // the group's leader changes them back and records it.
        state.apply(&MetadataCommand::RemoveNode {
            node_id: 4,
            only_if_draining: false,
        });
        let back = state.moves();
        assert_eq!(back.len(), moves.len(), "{back:?}");
        for moved in &back {
            let mut to = moved.to.clone();
            to.sort_unstable();
            assert_eq!(to, vec![1, 2, 3], "{moved:?}");
            assert_eq!(complete(&mut state, moved), MetadataResult::Done);
        }
        assert!(state.moves().is_empty());
    }

    #[test]
    fn producer_id_reservations_never_go_back() {
        let mut state = MetadataState::default();
        let reserve = |state: &mut MetadataState, node_id, from| {
            state.apply(&MetadataCommand::ReserveProducerIds {
                node_id,
                from,
                count: 1000,
            })
        };
        assert_eq!(
            reserve(&mut state, 1, 100),
            MetadataResult::ProducerIds {
                start: 100,
                end: 1100
            }
        );
        // A node that lost its disk asks from the start of its range again: it gets ids
        // past what it reserved before.
        assert_eq!(
            reserve(&mut state, 1, 0),
            MetadataResult::ProducerIds {
                start: 1100,
                end: 2100
            }
        );
        assert_eq!(
            reserve(&mut state, 1, 5000),
            MetadataResult::ProducerIds {
                start: 5000,
                end: 6000
            }
        );
        // Another node's reservations are its own.
        assert_eq!(
            reserve(&mut state, 2, 7),
            MetadataResult::ProducerIds {
                start: 7,
                end: 1007
            }
        );
        assert!(matches!(
            state.apply(&MetadataCommand::ReserveProducerIds {
                node_id: 1,
                from: 0,
                count: 0
            }),
            MetadataResult::Refused(_)
        ));
    }

    #[test]
    fn an_internal_topic_is_led_first_by_the_lowest_node_whatever_the_load() {
        let mut state = three_nodes();
        // Nodes 1 and 2 lead one partition each: a user topic would be led by node 3.
        state.apply(&create("busy", 1, 3));
        state.apply(&create("more", 1, 3));
        assert_eq!(state.topics["busy"].partitions[0].leader, 1);
        assert_eq!(state.topics["more"].partitions[0].leader, 2);
        state.apply(&create("__consumer_offsets", 1, 3));
        let placed = &state.topics["__consumer_offsets"].partitions[0];
        assert_eq!(placed.leader, 1);
        assert_eq!(placed.replicas[0], 1);
        assert_eq!(placed.replicas.len(), 3);
    }

    #[test]
    fn the_coordinators_partition_does_not_move_where_topics_go() {
        let mut state = three_nodes();
        state.apply(&create("__consumer_offsets", 1, 3));
        // Placed as in a cluster without it: the first topic is led by node 1.
        state.apply(&create("first", 1, 1));
        assert_eq!(state.topics["first"].partitions[0].replicas, vec![1]);
    }

    #[test]
    fn an_internal_topic_is_neither_deleted_nor_changed() {
        let mut state = three_nodes();
        state.apply(&create("__consumer_offsets", 1, 3));
        let before = state.topics["__consumer_offsets"].clone();
        for command in [
            MetadataCommand::DeleteTopic {
                name: "__consumer_offsets".to_string(),
            },
            MetadataCommand::AddPartitions {
                name: "__consumer_offsets".to_string(),
                total: 4,
            },
            MetadataCommand::AlterTopicConfigs {
                name: "__consumer_offsets".to_string(),
                configs: BTreeMap::new(),
            },
        ] {
            assert!(
                matches!(
                    state.apply(&command),
                    MetadataResult::Refused(MetadataError::Invalid(_))
                ),
                "{command:?}"
            );
        }
        assert_eq!(state.topics["__consumer_offsets"], before);
    }

    #[test]
    fn the_coordinator_is_the_leader_of_the_partition_the_key_hashes_to() {
        let mut state = three_nodes();
        assert_eq!(state.coordinator("__consumer_offsets", "g"), None);
        state.apply(&create("__consumer_offsets", 50, 3));
        let leader = state
            .coordinator("__consumer_offsets", "g")
            .expect("placed");
        let index = placement::key_hash("g") as usize % 50;
        assert_eq!(
            leader,
            state.topics["__consumer_offsets"].partitions[index].leader
        );
    }
}
