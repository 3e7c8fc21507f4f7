//! The broker core: the one protocol-neutral API every front end calls.
//!
//! [`Broker`] is the aggregate of the domain (streams, consumer groups, committed offsets,
//! the transaction coordinator, queues). Every operation takes the caller's [`Session`]
//! (exclusive queues and consumer ownership use it today; the authenticated principal joins
//! it for ACLs, issue #18, without changing a signature) and returns domain results and
//! domain errors. A front end
//! decodes a request, calls one operation here, and encodes the answer; it decides nothing.
//!
//! The operations live beside the aggregate by domain: [`stream_ops`] (topics, produce,
//! fetch, list offsets), [`group_ops`] (membership, offset commits and fetches),
//! [`txn_ops`] (producer ids and transactions), [`queue_ops`] (exchanges, queues, publish,
//! subscribe, acks).
//!
//! **Architecture invariants:** the core imports no front end and no wire message type
//! (`wharf_protocol::messages`, `ErrorCode`); front ends reach the domain only through this
//! module (it re-exports the domain types they name). Blocking work (creating files,
//! fsyncs of definitions) runs on the blocking pool here; docs/ARCHITECTURE.md lists the
//! exceptions still left (FIXME there).

pub mod acl_ops;
pub mod alarm;
pub mod auth_ops;
pub mod cluster_ops;
mod cluster_sync;
mod coordination;
pub mod group_ops;
mod node_settings;
pub mod observe_ops;
pub mod queue_ops;
mod queue_replication;
pub mod quota;
mod replication;
pub mod routing;
mod security_sync;
mod silent_nodes;
pub mod stream_ops;
mod txn_markers;
pub mod txn_ops;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acl::store::AclStore;
use crate::acl::AuthorizerSettings;
use crate::auth::Users;
use crate::config::BrokerConfig;
use crate::groups::offsets::OffsetStore;
use crate::groups::GroupCoordinator;
use crate::queue::QueueManager;
use crate::storage::{Clock, Flusher, RealFs, StorageEnv};
use crate::streams::producer::Producers;
use crate::streams::topic::Topics;
use crate::streams::{AutoCreate, StreamSettings, Streams};
use crate::txn::{TxnCoordinator, TxnDeps, TxnLoaded};

pub use crate::acl::{
    binding_from_names, filter_from_names, Access, AclBinding, AclError, AclFilter, Decision,
    Denied, Operation, PatternFilter, PatternType, Permission, ResourceType, ANONYMOUS,
    ANY_PRINCIPAL, CLUSTER_NAME, WILDCARD,
};
pub use crate::auth::{AuthError, Principal, ScramServer, ScramStep, UserError, UserInfo};
pub use crate::config::Authentication;
pub use crate::groups::classic::{
    ClassicJoin, ClassicMemberSummary, ClassicState, ClassicSummary, Joined,
};
pub use crate::groups::commit::{EntryRefusal, OffsetEntry};
pub use crate::groups::offsets::Committed;
pub use crate::groups::reset::{Execution, ResetTarget};
pub use crate::groups::{
    GroupError, GroupListing, GroupState, GroupSummary, Heartbeat, MemberAssignment, MemberState,
};
pub use crate::queue::exchange::ExchangeKind;
/// Unacknowledged deliveries by tag, as the queues keep them; a front end that numbers
/// deliveries itself (an AMQP channel) keeps its own in the same structure.
pub(crate) use crate::queue::tag_map::TagMap;
pub use crate::queue::{
    AckScope, BindingInfo, CancelReason, ConsumerEvent, ConsumerId, ConsumerPush, DeleteConditions,
    Delivered, DeliveredRun, Deliveries, DeliveryTag, Durability, GetMode, GotMessage, Moved,
    Precondition, Published, QueueError, QueueStats, Requeue, SessionId, SharedPrefetch,
    DELAY_HEADER, EXCHANGE_HEADER, EXPIRATION_HEADER, GET_BYTES_MAX,
};
pub use crate::storage::Error as StorageError;
pub use crate::streams::fetch::{
    FetchQuery, FetchedPartition, FetchedTopic, Isolation, PartitionQuery, TopicQuery,
};
pub use crate::streams::producer::{AbortedTxn, ProducerView, SequenceRefusal};
pub use crate::streams::topic::{
    AdminMode, ConfigChange, ConfigSource, TopicConfig, TopicError, TopicInfo,
};
pub use crate::streams::{OffsetSpec, StreamError};
pub use crate::txn::{TxnEnd, TxnError, TxnOffsets, TxnProducer, TxnState, TxnSummary};
pub use auth_ops::{
    AuthPolicy, DefaultGuest, Existing, NewCredential, NewToken, TokenInfo, Transport, GUEST_USER,
};
pub use group_ops::{CommitError, GroupAdminError, PlannedOffset};
pub use observe_ops::{
    GroupObserved, Observed, PartitionLag, PartitionObserved, PartitionReplicas, Readiness,
    LAG_SERIES_MAX, PARTITION_SERIES_MAX, QUEUE_SERIES_MAX,
};
pub use queue_ops::{
    BatchCompletion, Mandatory, PublishCompletion, PublishOutcome, PublishQuery, PublishedBatch,
    Settle, SettleCompletion, SettleQuery, SubscribeQuery,
};
pub use quota::QuotaKind;
pub use stream_ops::ProduceCompletion;
pub use stream_ops::{
    Acks, NewTopic, PartitionStatus, PartitionView, ProduceQuery, Produced, ProducedPartition,
    ProducedTopic, TopicView,
};

/// Most names (topics, groups) or partitions one request may list, in any protocol: a
/// frame can carry millions of tiny names, and each costs memory and a response entry.
pub const REQUEST_NAMES_MAX: usize = 10_000;
/// The queues' directory inside the data directory.
pub const QUEUES_DIR: &str = "queues";
/// How often expired group sessions are looked for.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest retention check interval: retention scans every partition.
const RETENTION_CHECK_INTERVAL_MS_MIN: u64 = 10;
/// How often producer-state snapshots are written (bounds the replay after a crash).
const PRODUCER_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(30);
/// Fsync threads of the stream partitions (group commit).
const STREAM_FLUSH_THREADS: usize = 2;
/// Fsync threads of the queue stores.
const QUEUE_FLUSH_THREADS: usize = 1;

/// Why the broker's state could not be opened, or closed cleanly.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Opening storage failed.
    #[error("cannot open storage in {dir}: {source}")]
    Storage {
        dir: String,
        #[source]
        source: TopicError,
    },
    /// Opening the queues failed.
    #[error("cannot open queues: {0}")]
    Queues(String),
    /// Reading the ACLs failed.
    #[error("cannot open ACLs: {0}")]
    Acls(String),
    /// Opening the users file failed.
    #[error("cannot open users: {0}")]
    Users(String),
    /// Closing storage failed.
    #[error("{0}")]
    Close(String),
}

/// The domain aggregate every front end shares.
#[derive(Debug)]
pub struct Broker {
    streams: Arc<Streams>,
    groups: Arc<GroupCoordinator>,
    offsets: Arc<OffsetStore>,
    txn: TxnCoordinator,
    queues: Arc<QueueManager>,
    acls: Arc<AclStore>,
    authorizer: AuthorizerSettings,
    alarm: alarm::Alarms,
    clock: Arc<dyn Clock>,
    retention_check_interval_ms: u64,
    /// `leader_rebalance_interval_ms` (zero: never).
    leader_rebalance_interval: Duration,
    /// `leader_imbalance_percentage`.
    leader_imbalance_percentage: u64,
    cleaner: crate::streams::compaction::CleanerSettings,
    /// Users, failed logins (issue #18).
    auth: auth_ops::AuthState,
    /// Per-principal byte rates (issue #18).
    quotas: quota::Quotas,
    /// Connections per logged-in user (issue #18).
    user_connections: Arc<quota::UserConnections>,
    /// This node's metadata log (issue #20), attached by the server once it started.
    cluster: std::sync::OnceLock<crate::cluster::raft::Cluster>,
    /// Definitions go through the metadata log (a node started with peers, issue #20).
    cluster_replicated: std::sync::atomic::AtomicBool,
    /// Started with peers: until the metadata log is attached, nothing that must go to a
    /// partition's leader (a transaction's marker) is written here.
    cluster_expected: bool,
    /// Held by a pass of `follow_metadata` and by a proposer's local step (issue #20); holds
    /// what local steps made that the pass's record must take in (queues' incarnations).
    cluster_follow: tokio::sync::Mutex<cluster_sync::LocalSteps>,
    /// The topics this node created from the metadata log (issue #20, `core/routing.rs`).
    followed_topics: std::sync::RwLock<Arc<std::collections::BTreeSet<String>>>,
    /// The incarnation of each queue this node's copy is, as its follower last recorded it
    /// (shared with the queues' cluster seam, `routing::QueuePlacement`).
    followed_queues: routing::FollowedQueues,
    /// Each partition's gate for transactional batches and markers (issue #21,
    /// `core/txn_markers.rs`).
    txn_gates: txn_markers::TxnGates,
    /// Whether this node coordinates groups and transactions (a cluster, issue #21,
    /// `core/coordination.rs`).
    coordination: coordination::Coordination,
}

/// What [`Broker::open`] leaves for [`Broker::start`]: the transaction coordinator's
/// replayed state, whose task needs a runtime.
#[derive(Debug)]
pub struct Opened {
    broker: Arc<Broker>,
    txn: TxnLoaded,
}

/// The broker's background tasks, stopped by [`Broker::close`].
#[derive(Debug)]
pub struct Background {
    tasks: Vec<JoinHandle<()>>,
    /// The log cleaner's thread (issue #19), stopped before storage closes.
    cleaner: Option<crate::streams::compaction::CleanerThread>,
}

impl Broker {
    /// Opens every partition, offset, producer state, the transaction log and the queues
    /// under the data directory (blocking: reads and fsyncs many files; call it on the
    /// blocking pool).
    ///
    /// # Errors
    /// [`OpenError`] naming what could not be opened.
    pub fn open(config: &BrokerConfig, clock: Arc<dyn Clock>) -> Result<Opened, OpenError> {
        let env = StorageEnv {
            fs: Arc::new(RealFs),
            clock: clock.clone(),
            flusher: Flusher::spawn(STREAM_FLUSH_THREADS),
        };
        let wrap = |source| OpenError::Storage {
            dir: config.data_dir.display().to_string(),
            source,
        };
        let topics = Topics::open(&config.data_dir, env, config.log.clone()).map_err(wrap)?;
        topics.set_partitions_max(config.partitions_max);
        let offsets = OffsetStore::open(&topics, clock.clone()).map_err(wrap)?;
        // A lone node coordinates from the start: the classic groups it recorded go on
        // at their generations (members reconnecting after a restart need not rejoin). A
        // node of a cluster restores them when it starts coordinating.
        let saved_groups = if config.cluster_peers.is_empty() {
            crate::groups::offsets::replay_groups(offsets.log())
                .map_err(|error| wrap(error.into()))?
        } else {
            crate::groups::offsets::RecordedGroups::default()
        };
        if !config.cluster_peers.is_empty() {
            // A node of a cluster serves offsets only while it coordinates
            // (`core/coordination.rs`).
            offsets.stop_serving();
        }
        let fs: Arc<dyn crate::storage::Fs> = Arc::new(RealFs);
        let producers = Producers::open(fs, &config.data_dir, config.producer_expiry_ms)
            .map_err(|error| wrap(error.into()))?;
        if !config.cluster_peers.is_empty() {
            // Node N hands out producer ids from N × 2³¹ (N ≤ i32::MAX, so no overflow).
            producers.hand_out_from(
                i64::try_from(config.node_id).unwrap_or(0)
                    * crate::streams::producer::CLUSTER_ID_RANGE,
            );
        }
        for info in topics.list() {
            for partition in 0..info.partitions {
                if let Some(log) = topics.partition(&info.name, partition) {
                    producers
                        .load(&info.name, partition, &log, clock.now_ms())
                        .map_err(|error| wrap(error.into()))?;
                }
            }
        }
        let (txn, txn_loaded) = TxnCoordinator::open(&topics).map_err(wrap)?;
        let queue_env = StorageEnv {
            fs: Arc::new(RealFs),
            clock: clock.clone(),
            flusher: Flusher::spawn(QUEUE_FLUSH_THREADS),
        };
        let queues = QueueManager::open(&config.data_dir.join(QUEUES_DIR), queue_env)
            .map_err(|error| OpenError::Queues(error.to_string()))?;
        let acls = acl_ops::open_store(Arc::new(RealFs), &config.data_dir)
            .map_err(|error| OpenError::Acls(error.to_string()))?;
        let users = Users::open(Arc::new(RealFs), &config.data_dir)
            .map_err(|error| OpenError::Users(error.to_string()))?;
        let auth = auth_ops::AuthState::new(users, config.login_failures_per_minute_max)
            .map_err(OpenError::Users)?;
        let settings = StreamSettings {
            auto_create_topics: if config.auto_create_topics {
                AutoCreate::On
            } else {
                AutoCreate::Off
            },
            default_partitions: config.default_partitions,
        };
        let broker = Broker {
            streams: Arc::new(Streams::new(topics, producers, clock.clone(), settings)),
            groups: Arc::new({
                let groups = GroupCoordinator::new(clock.clone(), config.group_session_timeout_ms);
                groups.classic().restore(saved_groups.classic);
                groups.restore(saved_groups.broker_side);
                groups
            }),
            offsets: Arc::new(offsets),
            txn,
            queues,
            acls,
            authorizer: AuthorizerSettings {
                required: config.authorization_required,
                super_users: config.super_users.clone(),
            },
            alarm: alarm::Alarms::new(
                config.data_dir.clone(),
                config.disk_free_limit_bytes,
                alarm::memory_limit_bytes(config),
            ),
            clock,
            retention_check_interval_ms: config.retention_check_interval_ms,
            leader_rebalance_interval: Duration::from_millis(config.leader_rebalance_interval_ms),
            leader_imbalance_percentage: config.leader_imbalance_percentage,
            cleaner: crate::streams::compaction::CleanerSettings {
                backoff: Duration::from_millis(config.cleaner_backoff_ms.max(10)),
                dedupe_buffer_bytes: usize::try_from(config.cleaner_dedupe_buffer_bytes)
                    .unwrap_or(usize::MAX),
                io_bytes_per_second: config.cleaner_io_bytes_per_second,
            },
            auth,
            quotas: quota::Quotas::new(&config.quotas),
            user_connections: quota::UserConnections::new(config.connections_per_user_max),
            cluster: std::sync::OnceLock::new(),
            cluster_replicated: std::sync::atomic::AtomicBool::new(false),
            cluster_expected: !config.cluster_peers.is_empty(),
            cluster_follow: tokio::sync::Mutex::default(),
            followed_topics: std::sync::RwLock::new(Arc::default()),
            followed_queues: routing::FollowedQueues::default(),
            txn_gates: txn_markers::TxnGates::default(),
            coordination: coordination::Coordination::default(),
        };
        // The first sample of the free space and memory now (open runs on the blocking
        // pool), so the alarms and their gauges are right from the start, not one period
        // later.
        broker.alarm.check();
        Ok(Opened {
            broker: Arc::new(broker),
            txn: txn_loaded,
        })
    }

    /// Stops the background tasks, writes producer-state snapshots, stops the queue tasks
    /// and closes storage cleanly (the clean-shutdown marker).
    ///
    /// # Errors
    /// [`OpenError::Close`] if storage could not be closed cleanly.
    pub async fn close(self: &Arc<Self>, background: Background) -> Result<(), OpenError> {
        if let Some(cluster) = self.cluster.get() {
            cluster.shutdown().await;
            // The replicated logs' members stop applying before the logs and stores they
            // apply to are closed below.
            for replica in cluster.replicas().all() {
                replica.shutdown().await;
            }
        }
        for task in background.tasks {
            task.abort();
        }
        if let Some(cleaner) = background.cleaner {
            // Joins a thread that may be inside a group's rewrite: off the runtime.
            let _ = tokio::task::spawn_blocking(move || cleaner.stop()).await;
        }
        let snapshotting = self.clone();
        let _ = tokio::task::spawn_blocking(move || snapshotting.snapshot_producers()).await;
        self.queues.shutdown().await;
        let closing = self.clone();
        tokio::task::spawn_blocking(move || closing.streams.topics().registry().close())
            .await
            .map_err(|error| OpenError::Close(error.to_string()))?
            .map_err(|error| OpenError::Close(error.to_string()))
    }

    /// Writes every partition's producer-state snapshot, so a restart replays little of the
    /// log (blocking).
    fn snapshot_producers(&self) {
        let now_ms = self.clock.now_ms();
        let producers = self.streams.producers();
        for ((topic, partition), shared) in producers.all() {
            let Some(log) = self.streams.partition(&topic, partition) else {
                continue;
            };
            if let Err(error) = producers.snapshot(&shared, &log, now_ms) {
                tracing::warn!(topic, partition, %error, "producer snapshot failed");
            }
        }
    }
}

impl Opened {
    /// Starts the transaction coordinator and the background tasks (group session expiry,
    /// retention, producer-state snapshots) until `shutdown` turns true.
    pub fn start(self, shutdown: watch::Receiver<bool>) -> (Arc<Broker>, Background) {
        let broker = self.broker;
        let deps = TxnDeps {
            streams: broker.streams.clone(),
            groups: broker.groups.clone(),
            offsets: broker.offsets.clone(),
            markers: Arc::new(txn_markers::BrokerMarkers(Arc::downgrade(&broker))),
            ids: Arc::new(txn_markers::BrokerIds(Arc::downgrade(&broker))),
            coordinator_epoch: 0,
        };
        let mut tasks = Vec::new();
        if broker.cluster_expected {
            // In a cluster the coordinator runs where the coordinator's partition is led
            // (`core/coordination.rs`), on the records that partition holds.
            broker.txn.stop();
            broker.coordination.set_deps(deps);
        } else {
            tasks.push(TxnCoordinator::spawn(self.txn, deps));
        }
        tasks.push(every(
            SESSION_CHECK_INTERVAL,
            shutdown.clone(),
            broker.clone(),
            |broker| async move {
                let streams = &broker.streams;
                broker
                    .groups
                    .expire_sessions(|topic| streams.partition_count(topic));
                broker.record_group_changes().await;
            },
        ));
        let retention = Duration::from_millis(
            broker
                .retention_check_interval_ms
                .max(RETENTION_CHECK_INTERVAL_MS_MIN),
        );
        tasks.push(every(
            retention,
            shutdown.clone(),
            broker.clone(),
            |broker| async move {
                let outcome = tokio::task::spawn_blocking(move || {
                    broker.streams.topics().registry().apply_retention()
                })
                .await;
                if let Ok(Err(error)) = outcome {
                    tracing::error!(%error, "retention failed");
                }
            },
        ));
        tasks.push({
            // Not `every`: the period shortens as the free space nears its limit.
            let (broker, mut shutdown) = (broker.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(broker.alarm.next_check_in()) => {
                            broker.check_alarms().await;
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            })
        });
        tasks.push(every(
            PRODUCER_SNAPSHOT_INTERVAL,
            shutdown,
            broker.clone(),
            |broker| async move {
                let _ = tokio::task::spawn_blocking(move || broker.snapshot_producers()).await;
            },
        ));
        let cleaner = crate::streams::compaction::CleanerThread::spawn(
            broker.streams.clone(),
            broker.cleaner,
        );
        (
            broker,
            Background {
                tasks,
                cleaner: Some(cleaner),
            },
        )
    }
}

/// Runs `work` every `period` (the first run one period after the start) until `shutdown`.
fn every<F, Fut>(
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    broker: Arc<Broker>,
    work: F,
) -> JoinHandle<()>
where
    F: Fn(Arc<Broker>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => work(broker.clone()).await,
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// The caller of core operations: one client connection of any front end. It owns the
/// connection's exclusive queues and the consumers started on it, which are cancelled when
/// it closes ([`Broker::close_session`]).
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    /// Who the caller acts as: anonymous until a login succeeds (issue #18).
    principal: Mutex<Principal>,
    /// The client's IP address as ACL hosts name it (empty when unknown: only `*` ACLs
    /// apply then).
    host: String,
    /// Queue name → consumers started on it by this caller.
    consumers: Mutex<HashMap<String, HashSet<ConsumerId>>>,
    /// Until when a quota holds this caller back (issue #18): the connection reads nothing
    /// more before then.
    throttled_until: Mutex<Option<tokio::time::Instant>>,
    /// This connection's place in its user's connection count (`connections_per_user_max`),
    /// given back when the session is dropped.
    user_slot: Mutex<Option<quota::UserSlot>>,
    /// Made for one request of a protocol that logs in per request (HTTP), not for a
    /// connection: it counts against no connection limit.
    per_request: bool,
}

/// An address as ACL hosts name it (IPv4-mapped IPv6 addresses as IPv4).
fn host_of(peer: SocketAddr) -> String {
    peer.ip().to_canonical().to_string()
}

/// Connection ids, unique within the process.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

impl Session {
    /// A new caller with a process-unique id and no known address (in-process callers).
    pub fn new() -> Session {
        Session::build(Principal::Anonymous, String::new(), false)
    }

    /// A new caller connected from `peer`: ACLs with that host apply to it.
    pub fn at(peer: SocketAddr) -> Session {
        Session::build(Principal::Anonymous, host_of(peer), false)
    }

    /// A caller for one request of a protocol that proves who it is on every request
    /// (HTTP): `principal` is what the request's credentials proved, `peer` where it came
    /// from. It counts against no connection limit (it is not a connection).
    pub fn for_request(principal: Principal, peer: Option<SocketAddr>) -> Session {
        Session::build(principal, peer.map(host_of).unwrap_or_default(), true)
    }

    fn build(principal: Principal, host: String, per_request: bool) -> Session {
        Session {
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            principal: Mutex::new(principal),
            host,
            consumers: Mutex::new(HashMap::new()),
            throttled_until: Mutex::new(None),
            user_slot: Mutex::new(None),
            per_request,
        }
    }

    /// The client's IP address (empty when unknown).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A new caller acting as this one (same principal and address, its own id, consumers
    /// and throttle): a stream a request opens lives on in it.
    pub fn like(&self) -> Session {
        Session::build(self.principal(), self.host.clone(), self.per_request)
    }

    /// True for a session made for one request ([`Session::for_request`]).
    pub fn is_per_request(&self) -> bool {
        self.per_request
    }

    /// When a quota holds this caller back until a moment still to come, that moment. The
    /// connection driver reads nothing from the connection before it (KIP-219's mute).
    pub fn throttled_until(&self) -> Option<tokio::time::Instant> {
        let until = *self
            .throttled_until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        until.filter(|until| *until > tokio::time::Instant::now())
    }

    /// What is left of this caller's throttle, ms (Kafka's `throttle_time_ms`; 0: none).
    pub fn throttle_time_ms(&self) -> i32 {
        self.throttled_until().map_or(0, |until| {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            i32::try_from(left.as_millis()).unwrap_or(i32::MAX)
        })
    }

    /// What is left of this caller's throttle (zero: none).
    pub fn throttle_delay(&self) -> Duration {
        self.throttled_until().map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(tokio::time::Instant::now())
        })
    }

    /// Holds this caller back for `delay` from now (the later of this and any throttle
    /// already running).
    fn throttle(&self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        let mut current = self
            .throttled_until
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if current.is_none_or(|current| current < until) {
            *current = Some(until);
        }
    }

    /// This caller's id (owner of its exclusive queues).
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Who this caller acts as (what ACL checks will be made against).
    pub fn principal(&self) -> Principal {
        self.principal
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// True if this caller may make requests under `mode`: it logged in, or authentication
    /// is optional. Every front end asks this before any request but the login itself.
    pub fn may_act(&self, mode: Authentication) -> bool {
        mode == Authentication::Optional
            || self
                .principal
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .is_authenticated()
    }

    /// Records a successful login (only the core's login operations call it), with the
    /// connection's place in its user's count.
    fn set_principal(&self, principal: Principal, slot: Option<quota::UserSlot>) {
        *self
            .principal
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = principal;
        *self
            .user_slot
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = slot;
    }

    fn consumers(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<ConsumerId>>> {
        self.consumers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn add_consumer(&self, queue: &str, consumer: ConsumerId) {
        self.consumers()
            .entry(queue.to_string())
            .or_default()
            .insert(consumer);
    }

    /// True if this caller started `consumer` on `queue` (no allocation: every ack asks).
    fn owns_consumer(&self, queue: &str, consumer: ConsumerId) -> bool {
        self.consumers()
            .get(queue)
            .is_some_and(|consumers| consumers.contains(&consumer))
    }

    fn remove_consumer(&self, queue: &str, consumer: ConsumerId) {
        let mut consumers = self.consumers();
        if let Some(started) = consumers.get_mut(queue) {
            started.remove(&consumer);
            if started.is_empty() {
                consumers.remove(queue);
            }
        }
    }

    /// Forgets every consumer, returning them (the session is closing).
    fn take_consumers(&self) -> Vec<(String, ConsumerId)> {
        std::mem::take(&mut *self.consumers())
            .into_iter()
            .flat_map(|(queue, consumers)| {
                consumers
                    .into_iter()
                    .map(move |consumer| (queue.clone(), consumer))
            })
            .collect()
    }
}

impl Default for Session {
    fn default() -> Self {
        Session::new()
    }
}
