//! Cluster-wide definitions (issue #20): on a node started with peers, creating or deleting
//! a topic or a durable queue goes through the cluster's metadata log, and every node makes
//! its own catalog follow what the log applied. A lone `wharfd` (a cluster of one, no
//! peers) decides alone, as before.
//!
//! Write path: the front end's call reaches the core as on a lone node; the core checks the
//! request locally first (names, configs, arguments: the same refusals as a lone node's),
//! proposes the definition to the metadata log, and once it is committed creates it in this
//! node's catalog at once, so the caller sees it here when answered. Other nodes create it
//! when [`Broker::follow_metadata`] sees the applied change (within a heartbeat or two).
//!
//! Invariants: a definition is in a node's catalog only after the log committed it; the log
//! decides conflicts (two nodes creating one topic: one gets TopicExists); following is
//! idempotent (creating what exists or deleting what is gone changes nothing). Only the
//! definitions are cluster-wide so far: each node keeps its own copy of every partition and
//! queue, and records are not replicated (issue #21).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;

use crate::cluster::metadata::{
    is_builtin_exchange, BindingMeta, MetadataCommand, MetadataError, MetadataResult, MetadataState,
};
use crate::cluster::node::CLUSTER_DIR;
use crate::cluster::raft::{Cluster, ClusterError};
use crate::queue::exchange::ExchangeKind;
use crate::queue::{args_from_pairs, Durability, QueueArgs, QueueError, SessionId};
use crate::storage::{checkpoint, RealFs};
use crate::streams::topic::{
    AdminMode, ConfigChange, TopicError, TopicInfo, CONFIGS_FIXED_AT_CREATE,
};
use crate::streams::StreamError;

use super::queue_ops::blocking as queue_blocking;
use super::security_sync::{FollowedSecurity, WrittenSecurity};
use super::stream_ops::blocking;
use super::Broker;

/// The factor a topic created without one is proposed with: 0, the cluster's default
/// (`cluster::metadata::DEFAULT_FACTOR` replicas once it has that many nodes, else 1),
/// decided when the metadata log applies the create.
const TOPIC_DEFAULT_FACTOR: u32 = 0;
/// How long a proposer waits for its committed definition to be applied on its own node.
pub(super) const LOCAL_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How soon the follower tries again to propose this node's own users, tokens and ACLs when
/// no leader took them.
const BOOTSTRAP_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The definitions of the metadata log this node has followed: what it deletes when the
/// log drops it (a topic or queue the log never held is left alone), and what it does not
/// create again. Kept in `<data-dir>/cluster/followed` across restarts, so that a delete
/// committed while this node was down reaches it when it comes back.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Followed {
    /// The applied index of the state these sets were last changed at: a pass over an
    /// older state (a restarted node replaying its log) is skipped, so it never deletes
    /// what a newer state it followed before holds.
    index: u64,
    topics: BTreeSet<String>,
    queues: BTreeSet<String>,
    /// The incarnation ([`crate::cluster::metadata::QueueMeta::incarnation`]) of each
    /// followed queue whose copy here is known to be that incarnation's (absent from
    /// records written before 2026-12-07: such a queue's incarnation is taken as the log's
    /// when it is next seen).
    #[serde(default)]
    queue_incarnations: BTreeMap<String, u64>,
    exchanges: BTreeSet<String>,
    bindings: BTreeSet<BindingMeta>,
    /// Users, tokens and ACLs (`core/security_sync.rs`).
    #[serde(default)]
    security: FollowedSecurity,
}

/// The file of [`Followed`] in `<data-dir>/cluster/`: a checkpoint (header, JSON, CRC-32),
/// replaced atomically.
pub(crate) const FOLLOWED_FILE: &str = "followed";
const FOLLOWED_MAGIC: [u8; 4] = *b"WCFL";
const FOLLOWED_VERSION: u16 = 1;

impl Followed {
    /// What this node followed before it stopped, and the file's sequence number; nothing
    /// (and a warning) if the file is missing or unreadable.
    fn load(dir: &std::path::Path) -> (Followed, u64) {
        let path = dir.join(FOLLOWED_FILE);
        match checkpoint::read(&RealFs, &path, FOLLOWED_MAGIC) {
            Ok(Some(found)) if found.version == FOLLOWED_VERSION => {
                match serde_json::from_slice(&found.payload) {
                    Ok(followed) => (followed, found.sequence),
                    Err(error) => {
                        tracing::warn!(file = %path.display(), %error, "ignoring an unreadable record of followed definitions");
                        (Followed::default(), found.sequence)
                    }
                }
            }
            Ok(Some(found)) => {
                tracing::warn!(file = %path.display(), version = found.version, "ignoring a record of followed definitions of an unknown version");
                (Followed::default(), found.sequence)
            }
            Ok(None) => (Followed::default(), 0),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "ignoring a damaged record of followed definitions");
                (Followed::default(), 0)
            }
        }
    }

    /// Replaces the file with this record (write, fsync, rename).
    fn save(&self, dir: &std::path::Path, sequence: u64) -> Result<(), RecordError> {
        let payload = serde_json::to_vec(self)?;
        std::fs::create_dir_all(dir).map_err(|source| RecordError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        checkpoint::write(
            &RealFs,
            dir,
            FOLLOWED_FILE,
            FOLLOWED_MAGIC,
            FOLLOWED_VERSION,
            sequence,
            &payload,
        )?;
        Ok(())
    }
}

/// Why the record of followed definitions could not be written.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("cannot encode the record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cannot create {}: {source}", dir.display())]
    Dir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error("the writing task stopped: {0}")]
    Stopped(#[from] tokio::task::JoinError),
}

/// What the proposers' local steps made that the follower's record must know: held under
/// the lock that a local step and a pass of the follower share
/// ([`Broker::follow_metadata`]).
#[derive(Debug, Default)]
pub(crate) struct LocalSteps {
    /// Queues a local step declared here, with the incarnation the log held when it did
    /// (the copy is that incarnation's, so the next pass does not take it for the copy of
    /// an older one), or `None` when this node had not applied the declare yet: the next
    /// pass then adopts the copy as the incarnation the log holds.
    declared_queues: BTreeMap<String, Option<u64>>,
    /// What the write paths of users, tokens and ACLs made before this node bootstrapped
    /// them (`core/security_sync.rs`).
    pub(super) security_written: WrittenSecurity,
}

/// Whether a binding is made or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindingChange {
    Bind,
    Unbind,
}

/// The durability of exchange `name` as the metadata log holds it.
pub(super) fn logged_durability(state: &MetadataState, name: &str) -> Durability {
    if state.transient_exchanges.contains(name) {
        Durability::Transient
    } else {
        Durability::Durable
    }
}

impl Broker {
    /// The metadata log, when definitions go through it: a node started with peers.
    pub(crate) fn replicated(&self) -> Option<&Cluster> {
        if self
            .cluster_replicated
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.cluster.get()
        } else {
            None
        }
    }

    /// Commits `command` to the metadata log and waits until this node applied it too, so
    /// that the local step that follows comes after it in this node's view; its result as
    /// applied.
    async fn propose_definition(
        cluster: &Cluster,
        command: MetadataCommand,
    ) -> Result<MetadataResult, ClusterError> {
        Ok(Self::propose_and_apply(cluster, command).await?.0)
    }

    /// As [`Broker::propose_definition`], and whether this node applied it in time.
    async fn propose_and_apply(
        cluster: &Cluster,
        command: MetadataCommand,
    ) -> Result<(MetadataResult, bool), ClusterError> {
        let proposed = cluster.propose(command).await?;
        let applied = cluster.wait_applied(proposed.index, LOCAL_APPLY_WAIT).await;
        if !applied {
            // Committed; this node lags. Following the log brings it level.
            tracing::warn!(
                index = proposed.index,
                "a committed definition is not applied on this node yet"
            );
        }
        Ok((proposed.result, applied))
    }

    /// Proposes a queue or exchange declare; a declare that differs from the log's
    /// definition is a mismatch, any other refusal invalid.
    /// Answers whether this node applied the declare in time.
    async fn propose_declare(
        cluster: &Cluster,
        command: MetadataCommand,
    ) -> Result<bool, QueueError> {
        match Self::propose_and_apply(cluster, command).await {
            Ok((MetadataResult::Refused(MetadataError::QueueDiffers(name)), _)) => Err(
                QueueError::DeclareMismatch(format!("queue {name:?} (declared on another node)")),
            ),
            Ok((MetadataResult::Refused(MetadataError::QueueLocked(name)), _)) => {
                Err(QueueError::DeclareMismatch(format!(
                    "queue {name:?} is exclusive to another connection (on another node)"
                )))
            }
            Ok((MetadataResult::Refused(MetadataError::ExchangeDiffers { name, kind }), _)) => {
                Err(QueueError::DeclareMismatch(format!(
                    "exchange {name:?} (declared as {kind} on another node)"
                )))
            }
            Ok((MetadataResult::Refused(refused), _)) => {
                Err(QueueError::Invalid(refused.to_string()))
            }
            Ok((_, applied)) => Ok(applied),
            Err(error) => Err(queue_refusal(error)),
        }
    }

    /// Proposes a delete; answers whether the log held what it names (refused: only this
    /// node has it, and the caller deletes it here all the same).
    async fn propose_delete(
        cluster: &Cluster,
        command: MetadataCommand,
    ) -> Result<bool, ClusterError> {
        let result = Self::propose_definition(cluster, command).await?;
        Ok(!matches!(result, MetadataResult::Refused(_)))
    }

    /// Creates a topic through the metadata log, then in this node's catalog.
    pub(crate) async fn create_topic_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
        partitions: u32,
        configs: Vec<(String, String)>,
        replication_factor: Option<u32>,
    ) -> Result<crate::streams::topic::TopicInfo, StreamError> {
        // The same refusals as a lone node's (name, partitions, configs, exists here).
        self.streams
            .topics()
            .check_create(name, partitions, configs.clone())?;
        // The id every node's copy takes (Kafka's topic ids are cluster-wide too).
        let topic_id = crate::streams::topic::new_uuid();
        let command = MetadataCommand::CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor: replication_factor.unwrap_or(TOPIC_DEFAULT_FACTOR),
            configs: configs.iter().cloned().collect::<BTreeMap<_, _>>(),
            topic_id: Some(topic_id),
        };
        match Self::propose_definition(cluster, command).await {
            Ok(MetadataResult::Refused(MetadataError::TopicExists(name))) => {
                return Err(TopicError::AlreadyExists(name).into())
            }
            Ok(MetadataResult::Refused(refused)) => {
                return Err(TopicError::InvalidConfig(refused.to_string()).into())
            }
            Ok(_) => {}
            Err(error) => return Err(stream_refusal(error)),
        }
        let _following = self.cluster_follow.lock().await;
        self.create_topic_locally(name, partitions, configs, Some(topic_id))
            .await
    }

    /// Creates a topic a produce or a Kafka Metadata request named (default partition
    /// count, no overrides) through the metadata log. Another node creating it first is no
    /// error: this node takes the log's definition.
    pub(crate) async fn auto_create_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
    ) -> Result<crate::streams::topic::TopicInfo, StreamError> {
        let partitions = self.default_partitions();
        match self
            .create_topic_replicated(cluster, name, partitions, Vec::new(), None)
            .await
        {
            Err(StreamError::Topic(TopicError::AlreadyExists(_))) => {
                if let Some(info) = self.streams.topics().get(name) {
                    return Ok(info);
                }
                let Some(topic) = cluster.applied().state.topics.get(name).cloned() else {
                    return Err(StreamError::UnknownTopic(name.to_string()));
                };
                let partitions = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
                let _following = self.cluster_follow.lock().await;
                self.create_topic_locally(
                    name,
                    partitions,
                    topic.configs.into_iter().collect(),
                    topic.topic_id,
                )
                .await
            }
            other => other,
        }
    }

    /// Deletes a topic through the metadata log, then from this node's catalog.
    pub(crate) async fn delete_topic_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
    ) -> Result<crate::streams::topic::TopicInfo, StreamError> {
        // The same refusal as a lone node's, before the log hears of it: the log holds the
        // coordinators' partition (`core/coordination.rs`).
        crate::streams::topic::refuse_internal(name, "deleted")?;
        let existing = self.streams.topics().get(name);
        let command = MetadataCommand::DeleteTopic {
            name: name.to_string(),
        };
        // A topic only this node has (created before it joined) is still deleted here.
        let in_metadata = Self::propose_delete(cluster, command)
            .await
            .map_err(stream_refusal)?;
        let _following = self.cluster_follow.lock().await;
        // Its partition members first, as the follower's delete does (`stop_partition_replicas`).
        self.stop_partition_replicas(name).await;
        let streams = self.streams.clone();
        let deleting = name.to_string();
        match blocking(move || streams.delete_topic(&deleting).map_err(StreamError::from)).await {
            // Following the log deleted it here first.
            Err(StreamError::Topic(TopicError::Unknown(_))) if in_metadata => {
                existing.ok_or_else(|| StreamError::UnknownTopic(name.to_string()))
            }
            other => other,
        }
    }

    /// Declares a queue through the metadata log (its arguments as given), then in this
    /// node's catalog. An exclusive queue (`owner`: its connection, on this node) is led by
    /// this node; its declare holds the follower's lock throughout, so no pass sees it in
    /// the log before it is made here (a pass deletes an exclusive queue of this node's
    /// that is not here: its connection ended).
    pub(crate) async fn declare_queue_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
        pairs: &[(String, String)],
        args: QueueArgs,
        durability: Durability,
        owner: Option<SessionId>,
    ) -> Result<(), QueueError> {
        let command = MetadataCommand::DeclareQueue {
            name: name.to_string(),
            // Resolved by the core's rule (`queue_ops::resolve_replicas`): the arguments
            // name it when above 1.
            replication_factor: args.replication_factor.unwrap_or(1),
            arguments: pairs.iter().cloned().collect(),
            incarnated: true,
            counted: true,
            transient: durability == Durability::Transient,
            exclusive_on: owner.map(|_| cluster.node_id()),
        };
        let held = match owner {
            Some(_) => Some(self.cluster_follow.lock().await),
            None => None,
        };
        let applied_here = Self::propose_declare(cluster, command).await?;
        let mut steps = match held {
            Some(steps) => steps,
            None => self.cluster_follow.lock().await,
        };
        // A copy made here now is of the incarnation this node's log holds now, once it
        // applied the declare (a copy that exists is whichever the follower's record says).
        let made = !self.queues.exists(name);
        let incarnation = applied_here
            .then(|| {
                let applied = cluster.applied();
                applied
                    .state
                    .queues
                    .get(name)
                    .map(|queue| queue.incarnation)
            })
            .flatten();
        let queues = self.queues.clone();
        let declaring = name.to_string();
        // Its name was checked before it was proposed (a server-named queue's has the
        // reserved `amq.gen-` prefix).
        queue_blocking(move || {
            queues.declare_checked_name_for(&declaring, args, durability, owner)
        })
        .await?;
        if made {
            steps.declared_queues.insert(name.to_string(), incarnation);
        }
        Ok(())
    }

    /// Tells the metadata log that a queue was deleted here by a conditional delete
    /// (decided by the queue's task on this node, so after the fact), or with its
    /// connection (`exclusive`: deleted from the log only while it is still this node's
    /// connection's there): the other nodes delete their copies. A failure is logged; the
    /// queue stays in the log then, and the other nodes keep it.
    pub(crate) async fn queue_deleted_here(&self, cluster: &Cluster, name: &str, exclusive: bool) {
        let command = MetadataCommand::DeleteQueue {
            name: name.to_string(),
            exclusive_on: exclusive.then(|| cluster.node_id()),
            if_unchanged: None,
        };
        if let Err(error) = Self::propose_definition(cluster, command).await {
            tracing::warn!(queue = name, %error, "a deleted queue stays in the cluster's metadata");
        }
    }

    /// Deletes a queue through the metadata log, then from this node's catalog (a queue the
    /// log does not hold is only this node's, and is deleted here all the same).
    pub(crate) async fn delete_queue_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
    ) -> Result<(), QueueError> {
        // Only its own connection deletes an exclusive queue, and that is on its node.
        let owner_node = cluster
            .applied()
            .state
            .queues
            .get(name)
            .and_then(|queue| queue.exclusive_on);
        if owner_node.is_some_and(|node| node != cluster.node_id()) {
            return Err(QueueError::DeclareMismatch(format!(
                "queue {name:?} is exclusive to another connection"
            )));
        }
        let command = MetadataCommand::DeleteQueue {
            name: name.to_string(),
            exclusive_on: None,
            if_unchanged: None,
        };
        let in_metadata = Self::propose_delete(cluster, command)
            .await
            .map_err(queue_refusal)?;
        let _following = self.cluster_follow.lock().await;
        self.stop_queue_replica(name).await;
        match self.queues.delete_queue(name).await {
            // Following the log deleted it here first.
            Err(QueueError::UnknownQueue(_)) if in_metadata => Ok(()),
            other => other,
        }
    }

    /// Declares an exchange through the metadata log, then in this node's catalog.
    pub(crate) async fn declare_exchange_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
        kind: ExchangeKind,
        durability: Durability,
    ) -> Result<(), QueueError> {
        let command = MetadataCommand::DeclareExchange {
            name: name.to_string(),
            kind: kind.name().to_string(),
            transient: durability == Durability::Transient,
        };
        Self::propose_declare(cluster, command).await?;
        let _following = self.cluster_follow.lock().await;
        let queues = self.queues.clone();
        let declaring = name.to_string();
        queue_blocking(move || queues.declare_exchange(&declaring, kind, durability)).await
    }

    /// Deletes an exchange through the metadata log (with its bindings), then here; one the
    /// log does not hold is only this node's and is deleted here all the same.
    pub(crate) async fn delete_exchange_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
    ) -> Result<(), QueueError> {
        let command = MetadataCommand::DeleteExchange {
            name: name.to_string(),
        };
        let in_metadata = Self::propose_delete(cluster, command)
            .await
            .map_err(queue_refusal)?;
        let _following = self.cluster_follow.lock().await;
        let queues = self.queues.clone();
        let deleting = name.to_string();
        match queue_blocking(move || queues.delete_exchange(&deleting)).await {
            // Following the log deleted it here first.
            Err(QueueError::UnknownExchange(_)) if in_metadata => Ok(()),
            other => other,
        }
    }

    /// Binds (or unbinds) a queue, or an exchange to an exchange, through the metadata log
    /// when the log holds the destination, then here. A binding whose destination or
    /// source only this node has (a transient exchange or queue) stays here.
    pub(crate) async fn binding_replicated(
        &self,
        cluster: &Cluster,
        binding: BindingMeta,
        change: BindingChange,
    ) -> Result<(), QueueError> {
        let in_log = {
            let state = &cluster.applied().state;
            if binding.to_exchange {
                state.exchanges.contains_key(&binding.queue) || is_builtin_exchange(&binding.queue)
            } else {
                state.queues.contains_key(&binding.queue)
            }
        };
        if in_log {
            let command = match change {
                BindingChange::Bind => MetadataCommand::Bind(binding.clone()),
                BindingChange::Unbind => MetadataCommand::Unbind(binding.clone()),
            };
            match Self::propose_definition(cluster, command).await {
                // An exchange only this node has: the binding stays here.
                Ok(MetadataResult::Refused(MetadataError::UnknownExchange(_))) | Ok(_) => {}
                Err(error) => return Err(queue_refusal(error)),
            }
        }
        let _following = self.cluster_follow.lock().await;
        self.bind_locally(&binding, change).await
    }

    async fn bind_locally(
        &self,
        binding: &BindingMeta,
        change: BindingChange,
    ) -> Result<(), QueueError> {
        let queues = self.queues.clone();
        let binding = binding.clone();
        queue_blocking(move || {
            let arguments: Vec<(&str, &str)> = binding
                .arguments
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .collect();
            let (destination, source, key) = (&binding.queue, &binding.exchange, &binding.key);
            match (change, binding.to_exchange) {
                (BindingChange::Bind, false) => queues.bind(destination, source, key, &arguments),
                (BindingChange::Unbind, false) => queues
                    .unbind(destination, source, key, &arguments)
                    .map(|_| ()),
                (BindingChange::Bind, true) => {
                    queues.bind_exchange(destination, source, key, &arguments)
                }
                (BindingChange::Unbind, true) => queues
                    .unbind_exchange(destination, source, key, &arguments)
                    .map(|_| ()),
            }
        })
        .await
    }

    /// Whether `name` is a topic the metadata log defines (changes to it go through the
    /// log); None on a lone node.
    pub(crate) fn placed_topic(&self, name: &str) -> Option<Cluster> {
        self.replicated()
            .filter(|cluster| cluster.applied().state.topics.contains_key(name))
            .cloned()
    }

    /// Changes a placed topic's config overrides through the metadata log: checked here
    /// first as a lone node checks it, then proposed as the change itself (applied to the
    /// overrides the log holds when it commits), then the resulting set is made here.
    pub(crate) async fn change_configs_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
        changes: Vec<ConfigChange>,
        replace: bool,
    ) -> Result<TopicInfo, StreamError> {
        let streams = self.streams.clone();
        let checking = name.to_string();
        let checked = changes.clone();
        blocking(move || {
            streams
                .topics()
                .change_configs(&checking, checked, replace, AdminMode::ValidateOnly)
                .map_err(StreamError::from)
        })
        .await?;
        let mut set = BTreeMap::new();
        let mut delete = BTreeSet::new();
        for change in changes {
            match change {
                ConfigChange::Set(key, value) => {
                    delete.remove(&key);
                    set.insert(key, value);
                }
                ConfigChange::Delete(key) => {
                    set.remove(&key);
                    delete.insert(key);
                }
            }
        }
        let command = MetadataCommand::ChangeTopicConfigs {
            name: name.to_string(),
            set,
            delete,
            replace,
            keep: CONFIGS_FIXED_AT_CREATE
                .iter()
                .map(|key| (*key).to_string())
                .collect(),
        };
        let configs = match Self::propose_definition(cluster, command).await {
            Ok(MetadataResult::Configs(configs)) => configs,
            Ok(MetadataResult::Refused(MetadataError::UnknownTopic(name))) => {
                return Err(StreamError::UnknownTopic(name))
            }
            Ok(MetadataResult::Refused(refused)) => {
                return Err(TopicError::InvalidConfig(refused.to_string()).into())
            }
            Ok(other) => {
                return Err(StreamError::Cluster {
                    no_leader: false,
                    message: format!("unexpected answer to a config change: {other:?}"),
                })
            }
            Err(error) => return Err(stream_refusal(error)),
        };
        let _following = self.cluster_follow.lock().await;
        self.set_overrides_locally(name, configs).await
    }

    /// Grows a placed topic through the metadata log (which places the new partitions),
    /// checked here first as a lone node checks it, then here.
    pub(crate) async fn add_partitions_replicated(
        &self,
        cluster: &Cluster,
        name: &str,
        total: u32,
    ) -> Result<TopicInfo, StreamError> {
        let streams = self.streams.clone();
        let checking = name.to_string();
        blocking(move || {
            streams
                .topics()
                .add_partitions(&checking, total, AdminMode::ValidateOnly)
                .map_err(StreamError::from)
        })
        .await?;
        let command = MetadataCommand::AddPartitions {
            name: name.to_string(),
            total,
        };
        match Self::propose_definition(cluster, command).await {
            Ok(MetadataResult::Refused(MetadataError::UnknownTopic(name))) => {
                return Err(StreamError::UnknownTopic(name))
            }
            Ok(MetadataResult::Refused(_)) => {
                // Another node grew it meanwhile, to `total` or more.
                let current = cluster.applied().state.topics.get(name).map_or(0, |topic| {
                    u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX)
                });
                return Err(TopicError::PartitionsNotIncreased {
                    topic: name.to_string(),
                    current,
                    requested: total,
                }
                .into());
            }
            Ok(_) => {}
            Err(error) => return Err(stream_refusal(error)),
        }
        let _following = self.cluster_follow.lock().await;
        self.add_partitions_locally(name, total).await
    }

    /// Sets a topic's overrides here to exactly `configs` (a key fixed at create keeps its
    /// value: the log never changes it).
    async fn set_overrides_locally(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicInfo, StreamError> {
        let changes: Vec<ConfigChange> = configs
            .into_iter()
            .filter(|(key, _)| !CONFIGS_FIXED_AT_CREATE.contains(&key.as_str()))
            .map(|(key, value)| ConfigChange::Set(key, value))
            .collect();
        let streams = self.streams.clone();
        let name = name.to_string();
        blocking(move || {
            streams
                .topics()
                .change_configs(&name, changes, true, AdminMode::Apply)
                .map_err(StreamError::from)
        })
        .await
    }

    /// Grows a topic here to `total` partitions; one that has them already is left as is.
    async fn add_partitions_locally(
        &self,
        name: &str,
        total: u32,
    ) -> Result<TopicInfo, StreamError> {
        let streams = self.streams.clone();
        let name = name.to_string();
        blocking(move || {
            match streams
                .topics()
                .add_partitions(&name, total, AdminMode::Apply)
            {
                // Following the log got there first.
                Err(TopicError::PartitionsNotIncreased { .. }) => streams
                    .topics()
                    .get(&name)
                    .ok_or_else(|| StreamError::UnknownTopic(name.clone())),
                other => other.map_err(StreamError::from),
            }
        })
        .await
    }

    /// A pass's part for topics this node has: grows them to the log's partition count
    /// and sets their overrides to the log's.
    async fn follow_topic_changes(&self, state: &MetadataState) {
        for (name, topic) in &state.topics {
            let Some(local) = self.streams.topics().get(name) else {
                continue;
            };
            let total = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
            if total > local.partitions {
                match self.add_partitions_locally(name, total).await {
                    Ok(_) => tracing::info!(
                        topic = name,
                        total,
                        "added partitions as the cluster's metadata did"
                    ),
                    Err(error) => {
                        tracing::warn!(topic = name, %error, "cannot add the partitions the cluster's metadata holds")
                    }
                }
            }
            let changeable = |configs: &BTreeMap<String, String>| -> BTreeMap<String, String> {
                configs
                    .iter()
                    .filter(|(key, _)| !CONFIGS_FIXED_AT_CREATE.contains(&key.as_str()))
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect()
            };
            if changeable(&override_map(&local)) != changeable(&topic.configs) {
                match self
                    .set_overrides_locally(name, topic.configs.clone())
                    .await
                {
                    Ok(_) => {
                        tracing::info!(topic = name, configs = ?topic.configs, "altered topic configs as the cluster's metadata did")
                    }
                    Err(error) => {
                        tracing::warn!(topic = name, %error, "cannot set the topic configs the cluster's metadata holds")
                    }
                }
            }
        }
    }

    /// Creates this node's copy of a topic of the metadata log, with the log's id for it
    /// (`None`: a topic the log recorded without one gets a fresh id).
    async fn create_topic_locally(
        &self,
        name: &str,
        partitions: u32,
        configs: Vec<(String, String)>,
        topic_id: Option<[u8; 16]>,
    ) -> Result<crate::streams::topic::TopicInfo, StreamError> {
        let streams = self.streams.clone();
        let creating = name.to_string();
        blocking(move || {
            match streams.create_topic_with_id(&creating, partitions, configs, topic_id) {
                // Following the log got there first.
                Err(TopicError::AlreadyExists(_)) => streams
                    .topics()
                    .get(&creating)
                    .ok_or_else(|| StreamError::UnknownTopic(creating.clone())),
                other => other.map_err(StreamError::from),
            }
        })
        .await
    }

    /// Deletes this node's copy of a topic the metadata log dropped (or replaced), and its
    /// committed offsets, as a delete here does (a re-created topic must not inherit
    /// them); false (and a warning) when the copy could not be deleted.
    async fn delete_topic_locally(&self, name: &str) -> bool {
        self.stop_partition_replicas(name).await;
        let streams = self.streams.clone();
        let deleting = name.to_string();
        match blocking(move || streams.delete_topic(&deleting).map_err(StreamError::from)).await {
            Ok(_) => {
                self.txn_gates.forget_topic(name);
                if let Err(error) = self.offsets.forget_topic(name).await {
                    tracing::warn!(topic = name, %error, "cannot forget the deleted topic's committed offsets");
                }
                true
            }
            Err(error) => {
                tracing::warn!(topic = name, %error, "cannot delete a topic the cluster's metadata dropped");
                false
            }
        }
    }

    /// Makes this node's catalog follow the metadata log until `shutdown`: every applied
    /// change to the topics and queues is carried out here (run by the server as a task on
    /// a node with peers).
    pub async fn follow_metadata(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(cluster) = self.replicated().cloned() else {
            return;
        };
        let mut applied = cluster.applied_changes();
        let dir = self.streams.topics().data_dir().join(CLUSTER_DIR);
        let loading = dir.clone();
        let (mut followed, mut sequence) =
            tokio::task::spawn_blocking(move || Followed::load(&loading))
                .await
                .unwrap_or_default();
        self.publish_followed(&followed);
        tokio::spawn(
            self.clone()
                .publish_partition_leaders(cluster.clone(), shutdown.clone()),
        );
        tokio::spawn(self.clone().coordinate(cluster.clone(), shutdown.clone()));
        tokio::spawn(
            self.clone()
                .drop_silent_nodes_exclusive_queues(cluster.clone(), shutdown.clone()),
        );
        let mut bootstrapping = false;
        let mut settings_reported = std::collections::BTreeSet::new();
        // Until the first pass over a current state: transient queues and exchanges missing
        // here were lost with the process.
        let mut restarted = true;
        loop {
            {
                // A proposer's local step and a pass exclude each other, and a pass reads
                // the state only once it holds the lock: it never acts on a state older
                // than a local step already made.
                let mut steps = self.cluster_follow.lock().await;
                let now = applied.borrow_and_update().clone();
                // What local steps made goes into the record first (saved below even when
                // this pass replays an older state and changes nothing else).
                let mut changed = !steps.declared_queues.is_empty();
                for (name, incarnation) in std::mem::take(&mut steps.declared_queues) {
                    match incarnation {
                        Some(incarnation) => {
                            followed.queues.insert(name.clone());
                            followed.queue_incarnations.insert(name, incarnation);
                        }
                        None => {
                            // Not applied here in time: the next pass adopts the copy.
                            followed.queues.remove(&name);
                            followed.queue_incarnations.remove(&name);
                        }
                    }
                }
                let current = now.index >= followed.index;
                if current {
                    let before = followed.clone();
                    self.follow(&now.state, &mut followed, restarted).await;
                    restarted = false;
                    bootstrapping = self
                        .follow_security(
                            &cluster,
                            &now.state,
                            &mut followed.security,
                            &mut steps.security_written,
                        )
                        .await;
                    if followed != before {
                        followed.index = now.index;
                        changed = true;
                    }
                }
                if changed {
                    self.publish_followed(&followed);
                    sequence += 1;
                    let (record, saving) = (followed.clone(), dir.clone());
                    let saved = tokio::task::spawn_blocking(move || record.save(&saving, sequence))
                        .await
                        .unwrap_or_else(|error| Err(RecordError::from(error)));
                    if let Err(error) = saved {
                        tracing::warn!(%error, "cannot record the followed definitions: a delete made while this node is down may not reach it");
                    }
                }
                if current {
                    self.sync_replicas(&cluster, &now.state, &followed.queue_incarnations)
                        .await;
                    self.report_setting_differences(&now.state, &mut settings_reported);
                }
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
                // This node's own users wait for a leader to be proposed to: try again.
                () = tokio::time::sleep(BOOTSTRAP_RETRY), if bootstrapping => {}
            }
        }
    }

    /// Shows routing the topics this node created from the log, and the queues' cluster
    /// seam which incarnation each queue's copy here is.
    fn publish_followed(&self, followed: &Followed) {
        *self
            .followed_topics
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Arc::new(followed.topics.clone());
        self.followed_queues
            .publish(followed.queue_incarnations.clone());
    }

    /// One pass: creates what the log holds and this node lacks, deletes what the log
    /// dropped since this node followed it.
    async fn follow(&self, state: &MetadataState, followed: &mut Followed, restarted: bool) {
        for (name, topic) in &state.topics {
            let mut local = self.streams.topics().get(name);
            // A followed topic whose copy here has another id than the log's was deleted
            // and created again while this node saw only the state after both (it was
            // down, or the two changes came in one pass): the copy is the old topic's, and
            // goes, records and committed offsets with it, before the new one is made.
            let stale = followed.topics.contains(name)
                && matches!((&local, topic.topic_id), (Some(copy), Some(id)) if copy.topic_id != id);
            if stale {
                if !self.delete_topic_locally(name).await {
                    continue;
                }
                tracing::info!(
                    topic = name,
                    "replaced this node's copy of a topic the cluster's metadata deleted and created again"
                );
                followed.topics.remove(name);
                local = None;
            }
            // Only a definition new to this node's follower is created: one deleted here
            // since (by a node-local path) is not brought back. One whose create failed is
            // not recorded, so the next pass tries again.
            if followed.topics.contains(name) {
                continue;
            }
            if local.is_some() {
                followed.topics.insert(name.clone());
                continue;
            }
            let partitions = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
            let configs = topic.configs.clone().into_iter().collect();
            match self
                .create_topic_locally(name, partitions, configs, topic.topic_id)
                .await
            {
                Ok(_) => {
                    followed.topics.insert(name.clone());
                    tracing::info!(
                        topic = name,
                        partitions,
                        "created topic from the cluster's metadata"
                    );
                }
                Err(error) => {
                    tracing::warn!(topic = name, %error, "cannot create a topic the cluster's metadata holds")
                }
            }
        }
        self.follow_topic_changes(state).await;
        let dropped: Vec<String> = followed
            .topics
            .iter()
            .filter(|name| !state.topics.contains_key(*name))
            .cloned()
            .collect();
        for name in dropped {
            followed.topics.remove(&name);
            if self.streams.topics().get(&name).is_some() && self.delete_topic_locally(&name).await
            {
                tracing::info!(topic = name, "deleted topic as the cluster's metadata did");
            }
        }
        let this_node = self.replicated().map(Cluster::node_id);
        let mut ended = Vec::new();
        let mut transient_ended = Vec::new();
        for (name, queue) in &state.queues {
            // An exclusive queue of a connection on this node that is not here any more
            // ended with its connection (or this node's restart): the log is told.
            if queue.exclusive_on.is_some() && queue.exclusive_on == this_node {
                if self.queues.exists(name) {
                    // Recorded (its declare may not have been applied here in time), so
                    // this node deletes its copy when the log drops it (its node went
                    // silent to the leader).
                    followed.queues.insert(name.clone());
                    followed
                        .queue_incarnations
                        .insert(name.clone(), queue.incarnation);
                } else {
                    ended.push(name.clone());
                }
                continue;
            }
            // A followed queue whose copy here is of another incarnation than the log's was
            // deleted and declared again while this node saw only the state after both:
            // the copy (messages, arguments, replicated log) is the old queue's, and goes
            // before the new one is declared.
            let known = followed.queue_incarnations.get(name).copied();
            if followed.queues.contains(name) && known.is_some_and(|at| at != queue.incarnation) {
                self.stop_queue_replica(name).await;
                match self.queues.delete_queue(name).await {
                    Ok(()) | Err(QueueError::UnknownQueue(_)) => {
                        tracing::info!(
                            queue = name,
                            "replaced this node's copy of a queue the cluster's metadata deleted and declared again"
                        );
                        followed.queues.remove(name);
                        followed.queue_incarnations.remove(name);
                        // Its bindings went with the copy: the log's are made again.
                        followed
                            .bindings
                            .retain(|binding| binding.to_exchange || binding.queue != *name);
                    }
                    Err(error) => {
                        tracing::warn!(queue = name, %error, "cannot delete this node's copy of a queue the cluster's metadata declared again");
                        continue;
                    }
                }
            }
            // A transient queue's copy is gone whenever its node restarts: at this node's
            // first pass it is declared again (empty) even though this node followed it, and
            // the log's bindings to it are made again (they were not stored). Later, one
            // missing here was deleted here and the log is being told (a delete through
            // this node, which the log took first; a queue's own rule asks the log before
            // anything is deleted, `QueueCluster::delete_by_rule`).
            let lost = restarted && queue.transient && !self.queues.exists(name);
            if lost {
                followed
                    .bindings
                    .retain(|binding| binding.to_exchange || binding.queue != *name);
                if this_node == Some(queue.placement.leader) {
                    // Its node restarted, and its messages (in that process's memory) went
                    // with it: the queue goes, as RabbitMQ deletes transient queues when
                    // their node boots. Only as the log held it then: a declare of the
                    // name since (through any node) keeps it, and the next pass declares
                    // it here again, empty.
                    followed.queues.remove(name);
                    followed.queue_incarnations.remove(name);
                    transient_ended.push((name.clone(), queue.seen()));
                    continue;
                }
            }
            if followed.queues.contains(name) && !lost {
                followed
                    .queue_incarnations
                    .insert(name.clone(), queue.incarnation);
                continue;
            }
            if self.queues.exists(name) {
                followed.queues.insert(name.clone());
                followed
                    .queue_incarnations
                    .insert(name.clone(), queue.incarnation);
                continue;
            }
            let outcome = match args_from_pairs(
                queue
                    .arguments
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            ) {
                // Another node's connection owns an exclusive queue: here it is a copy
                // that operations pass through to that node.
                Ok(args) if queue.exclusive_on.is_some() => {
                    let args = QueueArgs {
                        exclusive: false,
                        ..args
                    };
                    let queues = self.queues.clone();
                    let declaring = name.clone();
                    queue_blocking(move || {
                        queues.declare_checked_name_for(
                            &declaring,
                            args,
                            Durability::Transient,
                            None,
                        )
                    })
                    .await
                }
                Ok(args) => {
                    let queues = self.queues.clone();
                    let declaring = name.clone();
                    let durability = if queue.transient {
                        Durability::Transient
                    } else {
                        Durability::Durable
                    };
                    queue_blocking(move || {
                        queues.declare_queue_for(&declaring, args, durability, None)
                    })
                    .await
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {
                    followed.queues.insert(name.clone());
                    followed
                        .queue_incarnations
                        .insert(name.clone(), queue.incarnation);
                    tracing::info!(queue = name, "declared queue from the cluster's metadata");
                }
                Err(error) => {
                    tracing::warn!(queue = name, %error, "cannot declare a queue the cluster's metadata holds")
                }
            }
        }
        if let Some(cluster) = self.replicated() {
            for (name, seen) in transient_ended {
                let command = MetadataCommand::DeleteQueue {
                    name: name.clone(),
                    exclusive_on: None,
                    if_unchanged: Some(seen),
                };
                match Self::propose_definition(cluster, command).await {
                    Ok(MetadataResult::Done) => tracing::info!(
                        queue = name,
                        "a transient queue led here went with this node's restart"
                    ),
                    Ok(other) => {
                        tracing::info!(queue = name, result = ?other, "a transient queue led here was declared again since this node's restart: it stays")
                    }
                    Err(error) => {
                        tracing::warn!(queue = name, %error, "a transient queue led here stays in the cluster's metadata for now")
                    }
                }
            }
            for name in ended {
                // Only while the log still holds it as this node's: it may have dropped it
                // (this node went silent) and another connection declared the name since.
                let command = MetadataCommand::DeleteQueue {
                    name: name.clone(),
                    exclusive_on: Some(cluster.node_id()),
                    if_unchanged: None,
                };
                match Self::propose_definition(cluster, command).await {
                    Ok(_) => tracing::info!(
                        queue = name,
                        "an exclusive queue of a connection that ended left the cluster's metadata"
                    ),
                    Err(error) => {
                        tracing::warn!(queue = name, %error, "an ended exclusive queue stays in the cluster's metadata for now")
                    }
                }
            }
        }
        let dropped: Vec<String> = followed
            .queues
            .iter()
            .filter(|name| !state.queues.contains_key(*name))
            .cloned()
            .collect();
        for name in dropped {
            followed.queues.remove(&name);
            followed.queue_incarnations.remove(&name);
            if !self.queues.exists(&name) {
                continue;
            }
            self.stop_queue_replica(&name).await;
            match self.queues.delete_queue(&name).await {
                Ok(()) | Err(QueueError::UnknownQueue(_)) => {
                    tracing::info!(queue = name, "deleted queue as the cluster's metadata did")
                }
                Err(error) => {
                    tracing::warn!(queue = name, %error, "cannot delete a queue the cluster's metadata dropped")
                }
            }
        }
        self.follow_exchanges(state, followed, restarted).await;
    }
}

impl Broker {
    /// As [`Broker::follow`] for exchanges and bindings: exchanges first (a binding needs
    /// its exchange), bindings after, dropped bindings before dropped exchanges.
    async fn follow_exchanges(
        &self,
        state: &MetadataState,
        followed: &mut Followed,
        restarted: bool,
    ) {
        for (name, kind) in &state.exchanges {
            let Some(kind) = ExchangeKind::parse(kind) else {
                tracing::warn!(
                    exchange = name,
                    kind,
                    "the cluster's metadata holds an exchange of an unknown kind"
                );
                continue;
            };
            // A copy here of another kind or durability than the log's goes (its bindings
            // with it), and the log's is declared: a followed one was deleted and declared
            // again while this node saw only the state after both; one this node made
            // before it followed the log (or before a declare compared durability) is not
            // the cluster's, and declaring the log's over it would fail on every pass.
            let durability = logged_durability(state, name);
            let local = self.queues.exchange_kind(name);
            let stale = local.is_some_and(|(here, durable)| here != kind || durable != durability);
            if stale {
                let queues = self.queues.clone();
                let deleting = name.clone();
                match queue_blocking(move || queues.delete_exchange(&deleting)).await {
                    Ok(()) | Err(QueueError::UnknownExchange(_)) => {
                        tracing::info!(
                            exchange = name,
                            "replaced this node's copy of an exchange the cluster's metadata declared again as another kind"
                        );
                        followed.exchanges.remove(name);
                        followed.bindings.retain(|binding| {
                            binding.exchange != *name
                                && !(binding.to_exchange && binding.queue == *name)
                        });
                    }
                    Err(error) => {
                        tracing::warn!(exchange = name, %error, "cannot delete this node's copy of an exchange the cluster's metadata declared again");
                        continue;
                    }
                }
            }
            // A transient exchange's copy is gone whenever its node restarts: at this
            // node's first pass it is declared again, and the log's bindings from and to it
            // made again (they were not stored), even though this node followed it.
            let lost = restarted && local.is_none() && durability == Durability::Transient;
            if followed.exchanges.contains(name) && !lost {
                continue;
            }
            if local.is_none() {
                followed.bindings.retain(|binding| {
                    binding.exchange != *name && !(binding.to_exchange && binding.queue == *name)
                });
            }
            let queues = self.queues.clone();
            let declaring = name.clone();
            let declared =
                queue_blocking(move || queues.declare_exchange(&declaring, kind, durability)).await;
            match declared {
                Ok(_) => {
                    followed.exchanges.insert(name.clone());
                }
                Err(error) => {
                    tracing::warn!(exchange = name, %error, "cannot declare an exchange the cluster's metadata holds");
                }
            }
        }
        for binding in &state.bindings {
            if followed.bindings.contains(binding) {
                continue;
            }
            match self.bind_locally(binding, BindingChange::Bind).await {
                Ok(()) => {
                    followed.bindings.insert(binding.clone());
                }
                Err(error) => {
                    tracing::warn!(queue = binding.queue, exchange = binding.exchange, %error, "cannot make a binding the cluster's metadata holds");
                }
            }
        }
        let dropped: Vec<BindingMeta> = followed
            .bindings
            .iter()
            .filter(|binding| state.bindings.binary_search(binding).is_err())
            .cloned()
            .collect();
        for binding in dropped {
            followed.bindings.remove(&binding);
            // Gone with its queue or exchange already, or removed now.
            let _ = self.bind_locally(&binding, BindingChange::Unbind).await;
        }
        let dropped: Vec<String> = followed
            .exchanges
            .iter()
            .filter(|name| !state.exchanges.contains_key(*name))
            .cloned()
            .collect();
        for name in dropped {
            followed.exchanges.remove(&name);
            let queues = self.queues.clone();
            let deleting = name.clone();
            match queue_blocking(move || queues.delete_exchange(&deleting)).await {
                Ok(()) | Err(QueueError::UnknownExchange(_)) => {}
                Err(error) => {
                    tracing::warn!(exchange = name, %error, "cannot delete an exchange the cluster's metadata dropped")
                }
            }
        }
    }
}

/// A topic's overrides as the metadata log records them.
fn override_map(info: &TopicInfo) -> BTreeMap<String, String> {
    info.overrides
        .iter()
        .map(|entry| (entry.key.clone(), entry.value.clone()))
        .collect()
}

/// A failure of the metadata log as a stream error.
fn stream_refusal(error: ClusterError) -> StreamError {
    StreamError::Cluster {
        no_leader: error == ClusterError::NoLeader,
        message: error.to_string(),
    }
}

/// A failure of the metadata log as a queue error.
fn queue_refusal(error: ClusterError) -> QueueError {
    QueueError::Cluster {
        no_leader: error == ClusterError::NoLeader,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_followed_definitions_from_before_incarnations_still_reads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = br#"{"index":7,"topics":["t"],"queues":["q"],"exchanges":[],"bindings":[]}"#;
        checkpoint::write(
            &RealFs,
            dir.path(),
            FOLLOWED_FILE,
            FOLLOWED_MAGIC,
            FOLLOWED_VERSION,
            3,
            old,
        )
        .expect("written");
        let (followed, sequence) = Followed::load(dir.path());
        assert_eq!(sequence, 3);
        assert_eq!(followed.index, 7);
        assert!(followed.queues.contains("q"));
        assert!(followed.queue_incarnations.is_empty());
        // A record with incarnations round-trips.
        let mut record = followed;
        record.queue_incarnations.insert("q".into(), 4);
        record.save(dir.path(), 4).expect("saved");
        assert_eq!(Followed::load(dir.path()), (record, 4));
    }
}
