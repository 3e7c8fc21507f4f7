//! The queue manager: the registry of exchanges, queues and bindings, and the entry points
//! the server calls (declare, bind, delete, publish, subscribe, cancel, ack, purge, list).
//! Each queue itself is owned by its task (`queue/task.rs`); the manager only
//! holds the task's command channel.
//!
//! - Declares are idempotent when the arguments match and an error when they differ.
//! - Durable definitions (exchanges, queues, bindings) are kept in the definitions file
//!   ([`definitions`](crate::queue::definitions)) under the queues directory and restored
//!   on start; durable queues keep their messages and ack state across restarts. Transient
//!   queues start empty.
//! - `publish` routes a message through an exchange (the default exchange `""` routes to the
//!   queue named by the routing key), stores it in every queue it routes to, and confirms
//!   only once it is durable in all of them. An unroutable message is reported (the caller
//!   returns it to a `mandatory` publisher) or dropped and counted.
//! - An exclusive queue belongs to the connection that declared it and is deleted when that
//!   connection closes; an auto-delete queue is deleted when its last consumer goes away.
//! - A dead-lettered message's copy is republished (`republish_dead_letters`) through the
//!   queue's dead-letter exchange; the queue task builds the copy and settles the original
//!   once the copy is stored.
//! - `get` takes ready messages without a consumer (requeued, marked redelivered, or
//!   removed); `list_bindings` lists every binding, the default exchange's included;
//!   `move_messages` moves a queue's ready messages to another in rounds, each message
//!   settled in the source only once it is durable in the destination (at-least-once).
//!
//! The registry lock is held only for short sections with no await and no file write:
//! definitions are snapshotted under it and written after it is released.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::batch::Record;

use crate::queue::args::{args_from_pairs, args_to_pairs};
use crate::queue::definitions::{
    DefinitionsFile, Snapshot, StoredArg, StoredBinding, StoredDefinitions, StoredExchange,
    StoredQueue,
};
use crate::queue::delivery::{AckScope, CancelReason, ConsumerId, DeliveryTag, GetMode, Requeue};
use crate::queue::exchange::{Bindings, ExchangeKind, HeadersArgs};
use crate::queue::publish::{route_names, stamp};
use crate::queue::remote::{self, Origins, PulledConsumers, QueueCluster};
use crate::queue::replicated::QueueLog;
use crate::queue::store::QueueStore;
use crate::queue::task::{
    message_bytes, spawn_refuser, Command, Control, MoveRound, Outcomes, QueueTask, GET_BYTES_MAX,
    PUBLISH_RUN_BYTES_MAX,
};
use crate::queue::types::{
    AckTicket, BindingInfo, ConsumerOptions, DeleteConditions, Deliveries, Durability, GotMessage,
    Message, Moved, PublishTicket, Published, QueueArgs, QueueError, QueueStats, SessionId,
};
use crate::storage::{Clock, FlushPolicy, LogConfig, StorageEnv};

/// Largest prefetch window (AMQP's, a u16); prefetch 0 ("unlimited") means this. A
/// consumer's channel holds at most its window, so it never overflows: deliveries wait in
/// the queue, not in memory per consumer.
pub const PREFETCH_MAX: u32 = 65_535;

/// Longest queue or exchange name.
pub const NAME_BYTES_MAX: usize = 255;

/// Most messages one get asks for: RabbitMQ's management api has no limit, but a get is for
/// looking, and its answer is also bounded by bytes (one frame).
pub const GET_COUNT_MAX: u32 = 10_000;

#[derive(Debug)]
struct QueueHandle {
    args: QueueArgs,
    durability: Durability,
    /// The queue's task. A replicated queue that this node does not lead has a stand-in
    /// that refuses every command, saying no leader serves the queue here
    /// (`task::spawn_refuser`).
    sender: mpsc::Sender<Command>,
    /// A replicated queue's store, shared with its replicated log's member here.
    replicated: Option<Arc<QueueStore>>,
    /// The leadership whose task runs now ([`QueueManager::lead_replicated`]'s token; 0:
    /// none).
    leadership: u64,
}

/// Tokens of replicated queues' leaderships on this node.
static LEADERSHIPS: AtomicU64 = AtomicU64::new(1);

/// The stand-in task of replicated queue `name` while this node does not lead it.
fn refuser(name: &str) -> mpsc::Sender<Command> {
    spawn_refuser(QueueError::Cluster {
        no_leader: true,
        message: format!(
            "replicated queue {name:?} has no leader serving it here right now (an election, \
             or this node was just deposed); try again"
        ),
    })
}

#[derive(Debug, Default)]
struct Registry {
    /// Each exchange's bindings behind an `Arc` that the routing snapshot ([`Routes`])
    /// shares; a change copies them only while a publish still reads the old snapshot.
    exchanges: HashMap<String, (Durability, Arc<Bindings>)>,
    queues: HashMap<String, QueueHandle>,
    /// Durable bindings with their headers arguments, for the definitions file. A binding
    /// to an exchange has [`TO_EXCHANGE`] as its first header pair.
    bindings: Vec<StoredBinding>,
    /// Exchange-to-exchange bindings by source exchange: the "queues" of these bindings
    /// are destination exchanges, which route the message on in turn.
    exchange_bindings: HashMap<String, Arc<Bindings>>,
    /// Exclusive queues and the connection that owns each.
    owners: HashMap<String, SessionId>,
    /// Live consumer ids per queue, for auto-delete.
    consumer_ids: HashMap<String, HashSet<ConsumerId>>,
    /// Queues being deleted: a declare of the name waits for the delete to finish.
    deleting: HashSet<String>,
}

/// What routing reads of the registry, as one snapshot that publishes read without a lock
/// (issue #15): exchanges and their bindings (shared with the registry), exchange-to-exchange
/// bindings, and each queue's task channel.
#[derive(Debug)]
struct Routes {
    exchanges: HashMap<String, Arc<Bindings>>,
    exchange_bindings: HashMap<String, Arc<Bindings>>,
    queues: HashMap<String, mpsc::Sender<Command>>,
}

impl Routes {
    fn of(registry: &Registry) -> Routes {
        Routes {
            exchanges: registry
                .exchanges
                .iter()
                .map(|(name, (_, bindings))| (name.clone(), Arc::clone(bindings)))
                .collect(),
            exchange_bindings: registry.exchange_bindings.clone(),
            queues: registry
                .queues
                .iter()
                .map(|(name, handle)| (name.clone(), handle.sender.clone()))
                .collect(),
        }
    }
}

/// The registry, locked; a change through it drops the routing snapshot (before the first
/// change, so that the registry's bindings are no longer shared with it and change in
/// place), and the next publish builds another under the lock.
struct RegistryGuard<'a> {
    registry: MutexGuard<'a, Registry>,
    routes: &'a ArcSwapOption<Routes>,
    changed: bool,
}

impl std::ops::Deref for RegistryGuard<'_> {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.registry
    }
}

impl std::ops::DerefMut for RegistryGuard<'_> {
    fn deref_mut(&mut self) -> &mut Registry {
        if !self.changed {
            self.changed = true;
            self.routes.store(None);
        }
        &mut self.registry
    }
}

/// The queue manager.
#[derive(Debug)]
pub struct QueueManager {
    dir: PathBuf,
    env: StorageEnv,
    clock: Arc<dyn Clock>,
    registry: Mutex<Registry>,
    /// The routing snapshot of the registry, `None` after a change until a publish needs
    /// it; only built and stored under the registry's lock.
    routes: ArcSwapOption<Routes>,
    /// Serializes queue declares: checking for a queue and starting it must be one step, or
    /// two declares could open two writers on one queue's files.
    declaring: Mutex<()>,
    /// The definitions file and the order of its writes.
    definitions: DefinitionsFile,
    next_consumer: AtomicU64,
    /// Messages published that no queue took (not mandatory).
    pub dropped_unroutable: AtomicU64,
    myself: Weak<QueueManager>,
    /// The cluster, on a node started with peers: queues it places on another node are
    /// served there, through proxies (`queue/remote.rs`).
    cluster: OnceLock<Arc<dyn QueueCluster>>,
    /// The proxies of queues led elsewhere, by queue and leader.
    proxies: Mutex<HashMap<(String, u64), mpsc::Sender<Command>>>,
    /// This node's consumers that other nodes pull.
    pulled: PulledConsumers,
    /// The nodes that forward to this one, each with its start and the consumers and
    /// holders it made here.
    origins: Origins,
    /// This start of the node (unique per start), sent with every forwarded command so a
    /// leader can tell a restarted node from the one before.
    epoch: AtomicU64,
}

impl QueueManager {
    /// Opens the queues directory, restoring durable definitions and queues (blocking: at
    /// start-up). Transient leftovers are removed.
    ///
    /// # Errors
    /// Storage errors, as text.
    pub fn open(dir: &Path, env: StorageEnv) -> Result<Arc<QueueManager>, QueueError> {
        env.fs
            .create_dir_all(dir)
            .map_err(|error| QueueError::Storage(error.to_string()))?;
        let transient = dir.join("transient");
        if env.fs.is_dir(&transient) {
            env.fs
                .remove_dir_all(&transient)
                .map_err(|error| QueueError::Storage(error.to_string()))?;
        }
        let clock = env.clock.clone();
        let definitions = DefinitionsFile::new(dir, env.fs.clone());
        let manager = Arc::new_cyclic(|myself| QueueManager {
            dir: dir.to_path_buf(),
            env,
            clock,
            registry: Mutex::new(Registry::with_builtin_exchanges()),
            routes: ArcSwapOption::empty(),
            declaring: Mutex::new(()),
            definitions,
            next_consumer: AtomicU64::new(1),
            dropped_unroutable: AtomicU64::new(0),
            myself: myself.clone(),
            cluster: OnceLock::new(),
            proxies: Mutex::new(HashMap::new()),
            pulled: PulledConsumers::default(),
            origins: Origins::default(),
            epoch: AtomicU64::new(0),
        });
        if let Some(stored) = manager.definitions.read()? {
            manager.restore(stored)?;
        }
        Ok(manager)
    }

    /// Whether queue `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.lock().queues.contains_key(name)
    }

    /// The arguments queue `name` was declared with, if it exists here.
    pub fn args_of(&self, name: &str) -> Option<QueueArgs> {
        self.lock()
            .queues
            .get(name)
            .map(|handle| handle.args.clone())
    }

    fn lock(&self) -> RegistryGuard<'_> {
        RegistryGuard {
            registry: self.lock_unrouted(),
            routes: &self.routes,
            changed: false,
        }
    }

    /// The registry for reading, or for changes that routing does not read (consumer ids,
    /// exclusive owners, deletions in progress): the routing snapshot stays.
    fn lock_unrouted(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The routing snapshot: read without a lock, or built under the registry's lock after
    /// a change (a change holds that lock and drops the snapshot, so none built before a
    /// change is stored after it).
    fn with_routes<R>(&self, route: impl FnOnce(&Routes) -> R) -> R {
        {
            // arc-swap's guard: no reference count touched on this path.
            let current = self.routes.load();
            if let Some(routes) = current.as_deref() {
                return route(routes);
            }
        }
        let routes = {
            let registry = self.lock_unrouted();
            match self.routes.load_full() {
                Some(routes) => routes,
                None => {
                    let routes = Arc::new(Routes::of(&registry));
                    self.routes.store(Some(Arc::clone(&routes)));
                    routes
                }
            }
        };
        route(&routes)
    }

    /// Joins the queues to a cluster (once, at start on a node started with peers): a queue
    /// the cluster places on another node is served by that node from then on, and this
    /// node numbers its consumers from `node_id << 32` so their ids are unique in the
    /// cluster. Starts the task that cancels consumers other nodes stopped pulling.
    pub fn attach_cluster(&self, cluster: Arc<dyn QueueCluster>) {
        // Node ids are at most 2^31 - 1, so the base fits; 2^32 ids per node.
        let base = cluster.node_id() << 32;
        if self.cluster.set(cluster).is_err() {
            return;
        }
        self.next_consumer.fetch_max(base, Ordering::Relaxed);
        self.epoch
            .store(remote::new_epoch(self.clock.now_ms()), Ordering::Relaxed);
        let manager = self.myself.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(remote::PULL_LEASE / 6).await;
                let Some(manager) = manager.upgrade() else {
                    return;
                };
                manager.expire_pulled().await;
            }
        });
    }

    /// The nodes that forward to this one.
    pub(crate) fn origins(&self) -> MutexGuard<'_, HashMap<u64, remote::Origin>> {
        self.origins
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The consumers other nodes pull from this one.
    pub(crate) fn pulled(
        &self,
    ) -> MutexGuard<'_, HashMap<ConsumerId, Arc<remote::PulledConsumer>>> {
        self.pulled
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Whether the cluster places `queue` on another node (its copy here is not used).
    pub(crate) fn led_elsewhere(&self, queue: &str) -> bool {
        self.cluster
            .get()
            .is_some_and(|cluster| cluster.leader_elsewhere(queue).is_some())
    }

    /// Where `queue`'s commands go: its task here (`local`), or the proxy to the node that
    /// leads it.
    fn redirect(&self, queue: &str, local: mpsc::Sender<Command>) -> mpsc::Sender<Command> {
        let Some(cluster) = self.cluster.get() else {
            return local;
        };
        let Some(node) = cluster.leader_elsewhere(queue) else {
            return local;
        };
        self.proxies
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .entry((queue.to_string(), node))
            .or_insert_with(|| {
                let epoch = self.epoch.load(Ordering::Relaxed);
                remote::spawn_proxy(queue.to_string(), node, cluster.clone(), epoch)
            })
            .clone()
    }

    fn restore(&self, definitions: StoredDefinitions) -> Result<(), QueueError> {
        for exchange in definitions.exchanges {
            let kind = ExchangeKind::parse(&exchange.kind).ok_or_else(|| {
                QueueError::Storage(format!("unknown exchange kind {:?}", exchange.kind))
            })?;
            self.lock().exchanges.insert(
                exchange.name,
                (Durability::Durable, Arc::new(Bindings::new(kind))),
            );
        }
        for queue in definitions.queues {
            let args = args_from_pairs(
                queue
                    .args
                    .iter()
                    .map(|arg| (arg.key.as_str(), arg.value.as_str())),
            )?;
            self.start_queue(&queue.name, args, Durability::Durable)?;
        }
        for binding in definitions.bindings {
            let pairs: Vec<(&str, &str)> = binding
                .headers
                .iter()
                .skip(usize::from(to_exchange(&binding)))
                .map(|arg| (arg.key.as_str(), arg.value.as_str()))
                .collect();
            let args = binding_args(&binding.exchange, &pairs)?;
            // Restoring the file it came from: nothing to write back.
            if to_exchange(&binding) {
                self.lock().add_exchange_binding(
                    &binding.queue,
                    &binding.exchange,
                    &binding.routing_key,
                    &args,
                    &pairs,
                )?;
                continue;
            }
            self.lock().add_binding(
                &binding.queue,
                &binding.exchange,
                &binding.routing_key,
                &args,
                &pairs,
            )?;
        }
        Ok(())
    }

    /// The durable definitions as of `registry`, numbered in the order of the registry's
    /// changes (the caller holds the registry lock). Write it with
    /// [`DefinitionsFile::persist`] after releasing the lock: the write fsyncs twice, and
    /// routing takes the same lock for every publish.
    fn snapshot(&self, registry: &Registry) -> Snapshot {
        self.definitions.snapshot(&registry.stored_definitions())
    }

    /// Declares an exchange (idempotent when the kind and durability match).
    ///
    /// # Errors
    /// `Invalid` for a bad name, `ExchangeDiffers` for another kind or durability,
    /// `Storage`.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        durability: Durability,
    ) -> Result<(), QueueError> {
        check_name(name)?;
        let mut registry = self.lock();
        if let Some((current, existing)) = registry.exchanges.get(name) {
            return exchange_equivalence(name, (kind, durability), (existing.kind(), *current));
        }
        registry.exchanges.insert(
            name.to_string(),
            (durability, Arc::new(Bindings::new(kind))),
        );
        if durability == Durability::Durable {
            let snapshot = self.snapshot(&registry);
            drop(registry);
            self.definitions.persist(snapshot)?;
        }
        Ok(())
    }

    /// Deletes an exchange and its bindings; the default and `amq.*` exchanges stay.
    ///
    /// # Errors
    /// `UnknownExchange`, `Invalid`, `Storage`.
    pub fn delete_exchange(&self, name: &str) -> Result<(), QueueError> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(QueueError::Invalid(format!(
                "exchange {name:?} is built in and cannot be deleted"
            )));
        }
        let mut registry = self.lock();
        if registry.exchanges.remove(name).is_none() {
            return Err(QueueError::UnknownExchange(name.to_string()));
        }
        registry.exchange_bindings.remove(name);
        for bindings in registry.exchange_bindings.values_mut() {
            if bindings.has_queue(name) {
                Arc::make_mut(bindings).remove_queue(name);
            }
        }
        registry.bindings.retain(|binding| {
            binding.exchange != name && !(to_exchange(binding) && binding.queue == name)
        });
        let snapshot = self.snapshot(&registry);
        drop(registry);
        self.definitions.persist(snapshot)
    }

    /// The kind and durability of exchange `name`, if it exists.
    pub fn exchange_kind(&self, name: &str) -> Option<(ExchangeKind, Durability)> {
        self.lock()
            .exchanges
            .get(name)
            .map(|(durability, bindings)| (bindings.kind(), *durability))
    }

    /// Every exchange: (name, kind, durability, binding count), sorted by name.
    pub fn list_exchanges(&self) -> Vec<(String, ExchangeKind, Durability, usize)> {
        let registry = self.lock();
        let mut listing: Vec<(String, ExchangeKind, Durability, usize)> = registry
            .exchanges
            .iter()
            .map(|(name, (durability, bindings))| {
                let to_exchanges = registry
                    .exchange_bindings
                    .get(name)
                    .map_or(0, |bindings| bindings.list().len());
                (
                    name.clone(),
                    bindings.kind(),
                    *durability,
                    bindings.list().len() + to_exchanges,
                )
            })
            .collect();
        listing.sort_by(|left, right| left.0.cmp(&right.0));
        listing
    }

    /// Declares a queue (idempotent when the arguments match).
    ///
    /// # Errors
    /// `Invalid`, `DeclareMismatch`, `Storage`.
    pub fn declare_queue(
        &self,
        name: &str,
        args: QueueArgs,
        durability: Durability,
    ) -> Result<(), QueueError> {
        self.declare_queue_for(name, args, durability, None)
    }

    /// Declares a queue on behalf of connection `session` (which owns it if exclusive).
    ///
    /// # Errors
    /// `Invalid` (an exclusive queue needs a connection), `DeclareMismatch` (different
    /// arguments, or an exclusive queue owned by another connection), `Storage`.
    pub fn declare_queue_for(
        &self,
        name: &str,
        args: QueueArgs,
        durability: Durability,
        session: Option<SessionId>,
    ) -> Result<(), QueueError> {
        check_name(name)?;
        self.declare_checked(name, args, durability, session)
    }

    /// Declares a queue whose name the broker picks: `prefix` (which may be reserved to
    /// the broker, such as `amq.gen-`) followed by 22 random letters and digits. Returns
    /// the name.
    ///
    /// # Errors
    /// As [`QueueManager::declare_queue_for`]; `Invalid` for a prefix that would make a bad
    /// name.
    pub fn declare_generated_queue_for(
        &self,
        prefix: &str,
        args: QueueArgs,
        durability: Durability,
        session: Option<SessionId>,
    ) -> Result<String, QueueError> {
        let name = format!("{prefix}{}", random_suffix());
        self.declare_checked_name_for(&name, args, durability, session)?;
        Ok(name)
    }

    /// Declares a queue of a name already checked elsewhere (a name the cluster's metadata
    /// holds, or one the broker drew with a reserved prefix such as `amq.gen-`): the
    /// reserved prefix is allowed, every other rule of names applies.
    ///
    /// # Errors
    /// As [`QueueManager::declare_queue_for`].
    pub fn declare_checked_name_for(
        &self,
        name: &str,
        args: QueueArgs,
        durability: Durability,
        session: Option<SessionId>,
    ) -> Result<(), QueueError> {
        // The prefix may be a reserved one: check the rest of the rules on a stand-in.
        check_name(&name.replacen("amq.", "amq-", 1))?;
        self.declare_checked(name, args, durability, session)
    }

    fn declare_checked(
        &self,
        name: &str,
        args: QueueArgs,
        durability: Durability,
        session: Option<SessionId>,
    ) -> Result<(), QueueError> {
        if args.exclusive && session.is_none() {
            return Err(QueueError::Invalid(
                "an exclusive queue needs an owning connection".to_string(),
            ));
        }
        if args.exclusive && durability == Durability::Durable {
            return Err(QueueError::Invalid(
                "an exclusive queue dies with its connection, so it cannot be durable".to_string(),
            ));
        }
        let _declaring = self
            .declaring
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        {
            let registry = self.lock();
            if registry.deleting.contains(name) {
                return Err(QueueError::DeclareMismatch(format!(
                    "queue {name:?} is being deleted; declare it again once it is gone"
                )));
            }
            if let Some(existing) = registry.queues.get(name) {
                let owner = registry.owners.get(name).copied();
                if owner.is_some() && owner != session {
                    return Err(QueueError::DeclareMismatch(format!(
                        "queue {name:?} is exclusive to another connection"
                    )));
                }
                return if existing.args == args && existing.durability == durability {
                    // A redeclare counts as a use of the queue (`expires-ms`), at its leader
                    // (whose copy decides expiry); a full command channel means the queue is
                    // busy, and so in use, anyway.
                    let sender = self.redirect(name, existing.sender.clone());
                    let _ = sender.try_send(Command::Control(Control::Touch));
                    Ok(())
                } else {
                    Err(QueueError::DeclareMismatch(format!("queue {name:?}")))
                };
            }
        }
        let exclusive_owner = session.filter(|_| args.exclusive);
        // A crash during an earlier delete can leave the directory behind: a new queue must
        // not inherit its messages.
        let leftover = self.queue_dir(name, durability);
        if self.env.fs.is_dir(&leftover) {
            self.env
                .fs
                .remove_dir_all(&leftover)
                .map_err(|error| QueueError::Storage(error.to_string()))?;
        }
        self.start_queue(name, args, durability)?;
        if let Some(owner) = exclusive_owner {
            self.lock_unrouted().owners.insert(name.to_string(), owner);
        }
        if durability == Durability::Durable {
            let snapshot = self.snapshot(&self.lock());
            self.definitions.persist(snapshot)?;
        }
        Ok(())
    }

    fn queue_dir(&self, name: &str, durability: Durability) -> PathBuf {
        match durability {
            Durability::Durable => self.dir.join("durable").join(name),
            Durability::Transient => self.dir.join("transient").join(name),
        }
    }

    fn start_queue(
        &self,
        name: &str,
        args: QueueArgs,
        durability: Durability,
    ) -> Result<(), QueueError> {
        let (dir, flush) = match durability {
            Durability::Durable => (self.dir.join("durable").join(name), FlushPolicy::Always),
            Durability::Transient => (self.dir.join("transient").join(name), FlushPolicy::Never),
        };
        let replicated = durability == Durability::Durable && args.is_replicated();
        let config = LogConfig {
            // A replicated queue's store is its applied state: the raft log holds each write
            // durably, and the replica's checkpoints fsync the store.
            flush: if replicated {
                FlushPolicy::Never
            } else {
                flush
            },
            retention_ms: None,
            ..LogConfig::default()
        };
        let store = Arc::new(
            QueueStore::open(&dir, config, self.env.clone())
                .map_err(|error| QueueError::Storage(error.to_string()))?,
        );
        let (sender, replicated) = if replicated {
            // Its task starts when this node's member of its log leads
            // ([`QueueManager::lead_replicated`]).
            (refuser(name), Some(store))
        } else {
            let sender = QueueTask::spawn(
                name,
                &args,
                store,
                None,
                self.clock.clone(),
                self.myself.clone(),
            )?;
            (sender, None)
        };
        self.lock().queues.insert(
            name.to_string(),
            QueueHandle {
                args,
                durability,
                sender,
                replicated,
                leadership: 0,
            },
        );
        Ok(())
    }

    /// The store of replicated queue `name` on this node, for its replicated log's member.
    pub fn replicated_store(&self, name: &str) -> Option<Arc<QueueStore>> {
        self.lock().queues.get(name)?.replicated.clone()
    }

    /// Starts replicated queue `name`'s task on this node, whose member of the queue's log
    /// now leads it with everything committed before applied: the task recovers the queue
    /// from the store (what may have been delivered comes back `redelivered`) and writes
    /// through `log`. Returns the leadership's token, for [`QueueManager::follow_replicated`].
    ///
    /// # Errors
    /// `UnknownQueue`; `Invalid` if the queue is not replicated or its task runs already;
    /// or the store's messages cannot be read back.
    pub fn lead_replicated(&self, name: &str, log: Arc<dyn QueueLog>) -> Result<u64, QueueError> {
        let (args, store) = {
            let registry = self.lock();
            let handle = registry
                .queues
                .get(name)
                .ok_or_else(|| QueueError::UnknownQueue(name.to_string()))?;
            let Some(store) = handle.replicated.clone() else {
                return Err(QueueError::Invalid(format!(
                    "queue {name:?} is not replicated"
                )));
            };
            if handle.leadership != 0 {
                return Err(QueueError::Invalid(format!(
                    "queue {name:?}'s task runs already"
                )));
            }
            (handle.args.clone(), store)
        };
        let sender = QueueTask::spawn(
            name,
            &args,
            store,
            Some(log),
            self.clock.clone(),
            self.myself.clone(),
        )?;
        let token = LEADERSHIPS.fetch_add(1, Ordering::Relaxed);
        match self.lock().queues.get_mut(name) {
            Some(handle) => {
                handle.sender = sender;
                handle.leadership = token;
            }
            // Deleted meanwhile: the task ends with its last sender.
            None => return Err(QueueError::UnknownQueue(name.to_string())),
        }
        Ok(token)
    }

    /// Stops replicated queue `name`'s task of leadership `token` on this node, which no
    /// longer leads it (a task of another leadership, or of a queue of the same name
    /// declared again, is left alone): its consumers are cancelled (their clients
    /// subscribe again, on the new leader) and what waited for a commit is answered with
    /// the error the wait ends with.
    pub async fn follow_replicated(&self, name: &str, token: u64) {
        let sender = {
            let mut registry = self.lock();
            let Some(handle) = registry.queues.get_mut(name) else {
                return;
            };
            if handle.replicated.is_none() || handle.leadership != token {
                return;
            }
            handle.leadership = 0;
            std::mem::replace(&mut handle.sender, refuser(name))
        };
        let (reply, stopped) = oneshot::channel();
        if sender
            .send(Command::Stop(reply, Some(CancelReason::Unreachable)))
            .await
            .is_ok()
        {
            let _ = stopped.await;
        }
    }

    /// Binds a queue to an exchange. Headers exchanges take `x-match` and header pairs.
    ///
    /// # Errors
    /// `UnknownExchange`, `UnknownQueue`, `Invalid`, `Storage`.
    pub fn bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), QueueError> {
        let args = binding_args(exchange, headers)?;
        let mut registry = self.lock();
        // A binding that exists already changes nothing: checked before the first change,
        // so the routing snapshot stays (clients declare their bindings on every connect).
        let exists = registry.queues.contains_key(queue)
            && registry
                .exchanges
                .get(exchange)
                .is_some_and(|(_, bindings)| bindings.is_bound(queue, routing_key, Some(&args)));
        if exists {
            return Ok(());
        }
        let added_durable = registry.add_binding(queue, exchange, routing_key, &args, headers)?;
        if added_durable {
            let snapshot = self.snapshot(&registry);
            drop(registry);
            self.definitions.persist(snapshot)?;
        }
        Ok(())
    }

    /// Removes a binding.
    ///
    /// # Errors
    /// `UnknownExchange`, `Invalid`, `Storage`.
    pub fn unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        headers: &[(&str, &str)],
    ) -> Result<bool, QueueError> {
        let args = HeadersArgs::from_pairs(headers.iter().copied()).map_err(QueueError::Invalid)?;
        let mut registry = self.lock();
        let (_, bindings) = registry
            .exchanges
            .get_mut(exchange)
            .ok_or_else(|| QueueError::UnknownExchange(exchange.to_string()))?;
        let removed = bindings.would_unbind(queue, routing_key, Some(&args))
            && Arc::make_mut(bindings).unbind(queue, routing_key, Some(&args));
        let kind = bindings.kind();
        let stored_headers = stored_pairs(headers);
        registry.bindings.retain(|binding| {
            let same_key = kind == ExchangeKind::Fanout || binding.routing_key == routing_key;
            let same_headers = kind != ExchangeKind::Headers || binding.headers == stored_headers;
            !(binding.exchange == exchange
                && binding.queue == queue
                && same_key
                && same_headers
                && !to_exchange(binding))
        });
        let snapshot = self.snapshot(&registry);
        drop(registry);
        self.definitions.persist(snapshot)?;
        Ok(removed)
    }

    /// Binds exchange `destination` to exchange `source`: what `source` routes with
    /// `routing_key` (and `headers`, for a headers exchange) goes on through `destination`.
    /// A message reaches each queue once, whatever the paths (cycles included).
    ///
    /// # Errors
    /// `UnknownExchange`, `Invalid` (the default exchange, bad header pairs), `Storage`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), QueueError> {
        binding_args(destination, headers)?;
        let args = binding_args(source, headers)?;
        let mut registry = self.lock();
        let added_durable =
            registry.add_exchange_binding(destination, source, routing_key, &args, headers)?;
        if added_durable {
            let snapshot = self.snapshot(&registry);
            drop(registry);
            self.definitions.persist(snapshot)?;
        }
        Ok(())
    }

    /// Removes an exchange-to-exchange binding; true if it existed.
    ///
    /// # Errors
    /// `UnknownExchange`, `Invalid`, `Storage`.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        headers: &[(&str, &str)],
    ) -> Result<bool, QueueError> {
        let args = HeadersArgs::from_pairs(headers.iter().copied()).map_err(QueueError::Invalid)?;
        let mut registry = self.lock();
        if !registry.exchanges.contains_key(destination) {
            return Err(QueueError::UnknownExchange(destination.to_string()));
        }
        let kind = registry
            .exchanges
            .get(source)
            .map(|(_, bindings)| bindings.kind())
            .ok_or_else(|| QueueError::UnknownExchange(source.to_string()))?;
        let removed = registry
            .exchange_bindings
            .get_mut(source)
            .is_some_and(|bindings| {
                bindings.would_unbind(destination, routing_key, Some(&args))
                    && Arc::make_mut(bindings).unbind(destination, routing_key, Some(&args))
            });
        let stored_headers = exchange_pairs(headers);
        registry.bindings.retain(|binding| {
            let same_key = kind == ExchangeKind::Fanout || binding.routing_key == routing_key;
            let same_headers = kind != ExchangeKind::Headers || binding.headers == stored_headers;
            !(binding.exchange == source
                && binding.queue == destination
                && same_key
                && same_headers
                && to_exchange(binding))
        });
        let snapshot = self.snapshot(&registry);
        drop(registry);
        self.definitions.persist(snapshot)?;
        Ok(removed)
    }

    /// The queues a message goes to, with their task channels.
    fn route(&self, exchange: &str, message: &Message) -> Result<Vec<Target>, QueueError> {
        self.with_routes(|routes| route_in(routes, exchange, message))
    }

    /// Publishes one message through `exchange`; resolves once it is durable in every queue
    /// it routed to.
    ///
    /// # Errors
    /// `UnknownExchange`, `QueueFull` (reject-publish), `Storage`, `Invalid` (bad delay).
    pub async fn publish(&self, exchange: &str, message: Message) -> Result<Published, QueueError> {
        self.publish_enqueue(exchange, message)
            .await?
            .confirmed()
            .await
    }

    /// Routes a message and hands it to every target queue, in call order; the returned
    /// ticket resolves once it is durable in all of them. A connection enqueues its
    /// publishes one after the other and awaits the tickets concurrently, so its messages
    /// are stored in the order sent and share fsyncs.
    ///
    /// # Errors
    /// As for `publish`.
    pub async fn publish_enqueue(
        &self,
        exchange: &str,
        mut message: Message,
    ) -> Result<PublishTicket, QueueError> {
        stamp(&mut message, exchange, self.clock.now_ms())?;
        let targets = self.route(exchange, &message)?;
        let targets = self.redirect_all(targets);
        enqueue(message, &targets).await
    }

    /// Routes many messages under one look at the routing table and hands each to its
    /// queues, in order: each message is handled exactly as [`QueueManager::publish_enqueue`]
    /// handles it. Messages to one queue go to its task as one command with one reply
    /// (several when they are more bytes than one run holds), so its task stores them as
    /// one run and answers them together; the ticket resolves to each message's outcome.
    pub async fn publish_enqueue_many(&self, messages: Vec<(String, Message)>) -> BatchTicket {
        let now = self.clock.now_ms();
        // Each message with the index of its route in `routes`. A message that routes as the
        // one before it (same exchange, routing key and headers: all that routing reads)
        // shares that route instead of being routed again.
        let mut routes: Vec<Vec<Target>> = Vec::new();
        let mut routed: Vec<Result<(Message, usize), QueueError>> =
            Vec::with_capacity(messages.len());
        self.with_routes(|table| {
            let mut last_exchange = String::new();
            for (exchange, mut message) in messages {
                if let Err(error) = stamp(&mut message, &exchange, now) {
                    routed.push(Err(error));
                    continue;
                }
                // The default exchange routes by the key alone.
                let same_route = match routed.last() {
                    Some(Ok((previous, route))) => (last_exchange == exchange
                        && previous.routing_key == message.routing_key
                        && (exchange.is_empty() || previous.headers == message.headers))
                        .then_some(*route),
                    _ => None,
                };
                if let Some(route) = same_route {
                    routed.push(Ok((message, route)));
                    continue;
                }
                match route_in(table, &exchange, &message) {
                    Ok(targets) => {
                        routes.push(targets);
                        routed.push(Ok((message, routes.len() - 1)));
                        last_exchange = exchange;
                    }
                    Err(error) => routed.push(Err(error)),
                }
            }
        });
        // Each route's queues as places in `queues`.
        let mut queues: Vec<QueueRuns> = Vec::new();
        let mut places: HashMap<String, usize> = HashMap::new();
        let route_places: Vec<Vec<usize>> = routes
            .into_iter()
            .map(|targets| {
                self.redirect_all(targets)
                    .into_iter()
                    .map(|(name, sender)| match places.get(&name) {
                        Some(place) => *place,
                        None => {
                            places.insert(name.clone(), queues.len());
                            queues.push(QueueRuns::new(name, sender));
                            queues.len() - 1
                        }
                    })
                    .collect()
            })
            .collect();
        let mut fates = Vec::with_capacity(routed.len());
        for routed in routed {
            let (message, route) = match routed {
                Ok(routed) => routed,
                Err(error) => {
                    fates.push(Err(error));
                    continue;
                }
            };
            let places = &route_places[route];
            // A message routed to one queue moves there instead of being copied.
            let mut copies = std::iter::repeat_n(message, places.len());
            for &place in places {
                let Some(copy) = copies.next() else { break };
                queues[place].add(copy);
            }
            fates.push(Ok(route));
        }
        let mut runs = Vec::with_capacity(queues.len());
        for queue in queues {
            runs.push(queue.send().await);
        }
        BatchTicket {
            fates,
            routes: route_places,
            queues: runs,
        }
    }

    /// Where `queue`'s commands go: its task, or the proxy to the node that leads it.
    pub(crate) fn sender(&self, queue: &str) -> Result<mpsc::Sender<Command>, QueueError> {
        let local = self.local_sender(queue)?;
        Ok(self.redirect(queue, local))
    }

    /// Whether replicated queue `name`'s task runs on this node (its leadership there is
    /// on): false once the task stopped on its own (a write that did not commit).
    pub fn leads_replicated(&self, name: &str) -> bool {
        self.lock()
            .queues
            .get(name)
            .is_some_and(|handle| handle.leadership != 0 && !handle.sender.is_closed())
    }

    /// The command channel of `queue`'s task on this node.
    pub(crate) fn local_sender(&self, queue: &str) -> Result<mpsc::Sender<Command>, QueueError> {
        self.lock()
            .queues
            .get(queue)
            .map(|handle| handle.sender.clone())
            .ok_or_else(|| QueueError::UnknownQueue(queue.to_string()))
    }

    /// Routed targets with each queue led elsewhere going to its proxy.
    fn redirect_all(&self, targets: Vec<Target>) -> Vec<Target> {
        if self.cluster.get().is_none() {
            return targets;
        }
        targets
            .into_iter()
            .map(|(name, local)| {
                let sender = self.redirect(&name, local);
                (name, sender)
            })
            .collect()
    }

    /// Subscribes to a queue with a prefetch window; deliveries arrive on the receiver.
    ///
    /// # Errors
    /// `UnknownQueue`, `Gone`.
    pub async fn subscribe(
        &self,
        queue: &str,
        prefetch: u32,
    ) -> Result<(ConsumerId, Deliveries), QueueError> {
        let options = ConsumerOptions {
            prefetch,
            ..ConsumerOptions::default()
        };
        self.subscribe_for(queue, options, None).await
    }

    /// Subscribes on behalf of connection `session` (refused on another connection's
    /// exclusive queue).
    ///
    /// # Errors
    /// `UnknownQueue`, `DeclareMismatch` (exclusive elsewhere), `Precondition`
    /// (`ExclusiveUse`: decided by the queue's task), `Gone`.
    pub async fn subscribe_for(
        &self,
        queue: &str,
        options: ConsumerOptions,
        session: Option<SessionId>,
    ) -> Result<(ConsumerId, Deliveries), QueueError> {
        {
            let registry = self.lock();
            if let Some(owner) = registry.owners.get(queue) {
                if Some(*owner) != session {
                    return Err(QueueError::DeclareMismatch(format!(
                        "queue {queue:?} is exclusive to another connection"
                    )));
                }
            }
        }
        let sender = self.sender(queue)?;
        let consumer = ConsumerId(self.next_consumer.fetch_add(1, Ordering::Relaxed));
        let deliveries = self.subscribe_as(queue, consumer, options, sender).await?;
        Ok((consumer, deliveries))
    }

    /// Subscribes `consumer` through `sender` (the queue's task or its proxy).
    pub(crate) async fn subscribe_as(
        &self,
        queue: &str,
        consumer: ConsumerId,
        options: ConsumerOptions,
        sender: mpsc::Sender<Command>,
    ) -> Result<Deliveries, QueueError> {
        let prefetch = if options.prefetch == 0 {
            PREFETCH_MAX
        } else {
            options.prefetch.min(PREFETCH_MAX)
        };
        // One slot beyond the window for the Cancelled event, so it always fits.
        let (deliveries, receiver) = mpsc::channel(prefetch as usize + 1);
        let (accepted, answer) = oneshot::channel();
        let options = ConsumerOptions {
            prefetch,
            ..options
        };
        sender
            .send(Command::Control(Control::Subscribe(
                consumer, options, deliveries, accepted,
            )))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        // The task decides (an exclusive consumer), so the answer is awaited.
        answer
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))??;
        self.lock_unrouted()
            .consumer_ids
            .entry(queue.to_string())
            .or_default()
            .insert(consumer);
        Ok(Deliveries::new(receiver))
    }

    /// Stops a consumer for the client without returning its deliveries (AMQP's
    /// basic.cancel): no more are dispatched to it and its channel ends, but the ones it
    /// holds are still acked or nacked under its id, and return to the queue when it is
    /// cancelled. An auto-delete queue whose last consumer this was is deleted.
    pub async fn stop(&self, queue: &str, consumer: ConsumerId) {
        if let Ok(sender) = self.sender(queue) {
            let (reply, done) = oneshot::channel();
            if sender
                .send(Command::Control(Control::Stop(consumer, reply)))
                .await
                .is_ok()
            {
                let _ = done.await;
            }
        }
        self.forget_consumer(queue, consumer).await;
    }

    /// Cancels a consumer for the client: `reason` is [`CancelReason::ClientCancelled`] or
    /// [`CancelReason::ConnectionClosed`]. Its unacked deliveries return to the queue,
    /// redelivered; its channel ends without a `Cancelled` event.
    pub async fn cancel(&self, queue: &str, consumer: ConsumerId, reason: CancelReason) {
        if let Ok(sender) = self.sender(queue) {
            let (reply, done) = oneshot::channel();
            let cancel = Control::Cancel(consumer, reason, reply);
            if sender.send(Command::Control(cancel)).await.is_ok() {
                // Answer only once the deliveries are back in the queue.
                let _ = done.await;
            }
        }
        self.forget_consumer(queue, consumer).await;
    }

    /// Forgets a consumer the broker cancelled because the queue's leader went away here
    /// (its task stopped): its client subscribes again, elsewhere. Unlike
    /// [`QueueManager::forget_consumer`] this never auto-deletes the queue, which lives on
    /// with its new leader.
    pub(crate) fn drop_consumer_id(&self, queue: &str, consumer: ConsumerId) {
        if let Some(ids) = self.lock_unrouted().consumer_ids.get_mut(queue) {
            ids.remove(&consumer);
        }
    }

    /// Drops a cancelled consumer from the registry; the last consumer of an auto-delete
    /// queue deletes it (at the queue's leader only, in a cluster: a node that forwards to
    /// it does not see the leader's other consumers). Serves cancels by the client and by
    /// the broker (ack timeout).
    pub(crate) async fn forget_consumer(&self, queue: &str, consumer: ConsumerId) {
        let led_elsewhere = self.led_elsewhere(queue);
        let auto_delete = {
            let mut registry = self.lock_unrouted();
            let removed = registry
                .consumer_ids
                .get_mut(queue)
                .is_some_and(|ids| ids.remove(&consumer));
            let remaining = registry.consumer_ids.get(queue).map_or(0, |ids| ids.len());
            removed
                && remaining == 0
                && !led_elsewhere
                && registry
                    .queues
                    .get(queue)
                    .is_some_and(|handle| handle.args.auto_delete)
        };
        if auto_delete {
            tracing::info!(queue, "last consumer gone; deleting auto-delete queue");
            if let Err(error) = self.delete_by_rule(queue).await {
                tracing::warn!(queue, %error, "auto-delete failed");
            }
        }
    }

    /// Deletes a queue by its own rule (auto-delete, `x-expires`), here at once when no
    /// metadata log holds it. In a cluster the metadata log decides first, behind the
    /// caller ([`QueueCluster::delete_by_rule`]): the queue takes no consumer meanwhile
    /// (one that came since the rule fired keeps it); once the log drops it every node's
    /// follower deletes its copy, this one's too; when the log keeps it (declared again
    /// since), it takes consumers again and counts as used (`expires-ms` starts over).
    pub(crate) async fn delete_by_rule(&self, queue: &str) -> Result<(), QueueError> {
        let Some(decision) = self
            .cluster
            .get()
            .and_then(|cluster| cluster.delete_by_rule(queue))
        else {
            return self.delete_queue(queue).await;
        };
        let sender = self.local_sender(queue)?;
        let (reply, answer) = oneshot::channel();
        let unused = DeleteConditions {
            if_unused: true,
            if_empty: false,
        };
        let retired = sender
            .send(Command::Control(Control::Retire(unused, reply)))
            .await
            .is_ok()
            && matches!(answer.await, Ok(Ok(_)));
        if !retired {
            // In use again (or gone): the decision is never asked for.
            let _ = sender.send(Command::Control(Control::Touch)).await;
            return Ok(());
        }
        tokio::spawn(async move {
            if !decision.await {
                let _ = sender.send(Command::Control(Control::Reopen)).await;
                let _ = sender.send(Command::Control(Control::Touch)).await;
            }
        });
        Ok(())
    }

    /// Whether connection `session` owns an exclusive queue.
    pub fn owns_queues(&self, session: SessionId) -> bool {
        self.lock().owners.values().any(|owner| *owner == session)
    }

    /// A connection closed: its exclusive queues are deleted. Answers the names of those
    /// deleted.
    pub async fn release_session(&self, session: SessionId) -> Vec<String> {
        let owned: Vec<String> = self
            .lock()
            .owners
            .iter()
            .filter(|(_, owner)| **owner == session)
            .map(|(queue, _)| queue.clone())
            .collect();
        let mut deleted = Vec::with_capacity(owned.len());
        for queue in owned {
            match self.delete_queue(&queue).await {
                Ok(()) => deleted.push(queue),
                Err(error) => tracing::warn!(queue, %error, "deleting an exclusive queue failed"),
            }
        }
        deleted
    }

    /// Acknowledges a delivery (and with `multiple` every earlier one of the consumer).
    ///
    /// # Errors
    /// `UnknownDeliveryTag`, `UnknownQueue`, `Storage`.
    pub async fn ack(
        &self,
        queue: &str,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
    ) -> Result<(), QueueError> {
        let ticket = self.ack_enqueue(queue, consumer, tag, scope).await?;
        ticket
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?
    }

    /// Hands an ack to its queue in call order; the ticket resolves once the settlement is
    /// durable (acks of one connection share fsyncs this way).
    ///
    /// # Errors
    /// `UnknownQueue`, `Gone`.
    pub async fn ack_enqueue(
        &self,
        queue: &str,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
    ) -> Result<AckTicket, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.sender(queue)?
            .send(Command::Ack(consumer, tag, scope, reply))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        Ok(answer)
    }

    /// Negatively acknowledges: requeue, or dead-letter (reject).
    ///
    /// # Errors
    /// `UnknownDeliveryTag`, `UnknownQueue`, `Storage`.
    pub async fn nack(
        &self,
        queue: &str,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
        requeue: Requeue,
    ) -> Result<(), QueueError> {
        let ticket = self
            .nack_enqueue(queue, consumer, tag, scope, requeue)
            .await?;
        ticket
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?
    }

    /// Hands a nack to its queue in call order (see `ack_enqueue`).
    ///
    /// # Errors
    /// `UnknownQueue`, `Gone`.
    pub async fn nack_enqueue(
        &self,
        queue: &str,
        consumer: ConsumerId,
        tag: DeliveryTag,
        scope: AckScope,
        requeue: Requeue,
    ) -> Result<AckTicket, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.sender(queue)?
            .send(Command::Nack(consumer, tag, scope, requeue, reply))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        Ok(answer)
    }

    /// Removes every ready message; returns how many.
    ///
    /// # Errors
    /// `UnknownQueue`, `Gone`.
    pub async fn purge(&self, queue: &str) -> Result<u64, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.sender(queue)?
            .send(Command::Control(Control::Purge(reply)))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        answer
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))
    }

    /// Counts of every queue, sorted by name.
    pub async fn list(&self) -> Vec<QueueStats> {
        let handles: Vec<(String, Durability, mpsc::Sender<Command>)> = self
            .lock()
            .queues
            .iter()
            .map(|(name, handle)| (name.clone(), handle.durability, handle.sender.clone()))
            .collect();
        let handles: Vec<(String, Durability, mpsc::Sender<Command>)> = handles
            .into_iter()
            .map(|(name, durability, local)| {
                let sender = self.redirect(&name, local);
                (name, durability, sender)
            })
            .collect();
        let mut stats = Vec::new();
        for (name, durability, sender) in handles {
            let (reply, answer) = oneshot::channel();
            // A queue being deleted (its task stopped) is listed, empty, until it is gone.
            let counted = match sender.send(Command::Control(Control::Stats(reply))).await {
                Ok(()) => answer.await.ok(),
                Err(_) => None,
            };
            let mut queue = counted.unwrap_or(QueueStats {
                name,
                ..QueueStats::default()
            });
            queue.durability = durability;
            stats.push(queue);
        }
        // A queue being deleted is listed, empty, until its files are gone.
        let deleting: Vec<String> = self.lock().deleting.iter().cloned().collect();
        for name in deleting {
            stats.push(QueueStats {
                name,
                ..QueueStats::default()
            });
        }
        stats.sort_by(|left, right| left.name.cmp(&right.name));
        stats
    }

    /// A new consumer id for [`GetMode::Hold`]: the queue registers it on its first get.
    /// Not a subscription (no deliveries, not counted as a consumer); cancel it with
    /// [`cancel`](Self::cancel) to return what it holds.
    pub fn new_holder(&self) -> ConsumerId {
        ConsumerId(self.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes up to `count` ready messages from the head of `queue` without a subscription,
    /// for connection `session` (another connection's exclusive queue is refused): with
    /// [`GetMode::Requeue`] they stay in the queue, marked redelivered; with
    /// [`GetMode::Ack`] they are removed, and the answer comes once that is durable; with
    /// [`GetMode::Hold`] they are delivered to the holder, under tags. Empty when no message
    /// is ready.
    ///
    /// # Errors
    /// `Invalid` (a count of 0 or above `GET_COUNT_MAX`), `UnknownQueue`, `DeclareMismatch`
    /// (exclusive elsewhere), `Storage`, `Gone`.
    pub async fn get(
        &self,
        queue: &str,
        count: u32,
        mode: GetMode,
        session: Option<SessionId>,
    ) -> Result<Vec<GotMessage>, QueueError> {
        self.get_within(queue, count, GET_BYTES_MAX, mode, session)
            .await
    }

    /// Like [`get`](Self::get), taking messages only while their bytes (keys, bodies and
    /// headers) are below `bytes_max` (and [`GET_BYTES_MAX`]); one message at least.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_within(
        &self,
        queue: &str,
        count: u32,
        bytes_max: usize,
        mode: GetMode,
        session: Option<SessionId>,
    ) -> Result<Vec<GotMessage>, QueueError> {
        if count == 0 || count > GET_COUNT_MAX {
            return Err(QueueError::Invalid(format!(
                "a get takes 1 to {GET_COUNT_MAX} messages, not {count}"
            )));
        }
        self.check_not_exclusive_elsewhere(queue, session)?;
        let (reply, answer) = oneshot::channel();
        self.sender(queue)?
            .send(Command::Control(Control::Get(
                count as usize,
                bytes_max.min(GET_BYTES_MAX),
                mode,
                reply,
            )))
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?;
        answer
            .await
            .map_err(|_| QueueError::Gone(queue.to_string()))?
    }

    /// Every binding, or those of `queue`, sorted by exchange, queue, routing key. The
    /// default exchange `""` is listed binding every queue by its name, as RabbitMQ lists it.
    ///
    /// # Errors
    /// `UnknownQueue` for a `queue` that does not exist.
    pub fn list_bindings(&self, queue: Option<&str>) -> Result<Vec<BindingInfo>, QueueError> {
        let registry = self.lock();
        if let Some(queue) = queue {
            if !registry.queues.contains_key(queue) {
                return Err(QueueError::UnknownQueue(queue.to_string()));
            }
        }
        let wanted = |name: &str| queue.is_none_or(|queue| queue == name);
        let mut listed: Vec<BindingInfo> = registry
            .queues
            .keys()
            .filter(|name| wanted(name))
            .map(|name| BindingInfo {
                exchange: String::new(),
                queue: name.clone(),
                routing_key: name.clone(),
                arguments: Vec::new(),
            })
            .collect();
        for (exchange, (_, bindings)) in &registry.exchanges {
            for (bound, routing_key, arguments) in bindings.describe() {
                if wanted(&bound) {
                    listed.push(BindingInfo {
                        exchange: exchange.clone(),
                        queue: bound,
                        routing_key,
                        arguments,
                    });
                }
            }
        }
        drop(registry);
        listed.sort_by(|left, right| {
            (
                &left.exchange,
                &left.queue,
                &left.routing_key,
                &left.arguments,
            )
                .cmp(&(
                    &right.exchange,
                    &right.queue,
                    &right.routing_key,
                    &right.arguments,
                ))
        });
        Ok(listed)
    }

    /// Moves every ready message of `source` to the end of `destination`, in order, with
    /// routing key, headers and body (the destination stores them as new messages: their
    /// timestamp, and a TTL counted from it, start at the move). Messages published to
    /// `source` after the move started stay there.
    ///
    /// At-least-once: each round holds up to `MOVE_ROUND_MESSAGES_MAX` messages of
    /// `source` (no consumer gets them meanwhile), stores them in `destination` (durable,
    /// one fsync), and only then settles them in `source` (durable). A crash between the
    /// two leaves those messages in both queues; none is ever in neither. The move runs on
    /// a task of its own, so a caller that goes away cannot strand held messages.
    ///
    /// # Errors
    /// In the outcome's `stopped`, with the count moved until then: `Invalid` (same queue),
    /// `UnknownQueue`, `DeclareMismatch` (exclusive elsewhere), `QueueFull`
    /// (`destination` rejects publishes), `Storage`, `Gone`.
    pub async fn move_messages(
        &self,
        source: &str,
        destination: &str,
        session: Option<SessionId>,
    ) -> Moved {
        if let Some(cluster) = self.cluster.get() {
            // An exclusive queue of another node's connection (this node's registry knows
            // only its own connections' owners).
            for queue in [source, destination] {
                if cluster
                    .exclusive_node(queue)
                    .is_some_and(|node| node != cluster.node_id())
                {
                    return Moved {
                        moved: 0,
                        stopped: Some(QueueError::DeclareMismatch(format!(
                            "queue {queue:?} is exclusive to a connection on another node"
                        ))),
                    };
                }
            }
            if let Some(node) = cluster.leader_elsewhere(source) {
                let exclusive = self
                    .check_not_exclusive_elsewhere(source, session)
                    .and_then(|()| self.check_not_exclusive_elsewhere(destination, session));
                if let Err(error) = exclusive {
                    return Moved {
                        moved: 0,
                        stopped: Some(error),
                    };
                }
                let epoch = self.epoch.load(Ordering::Relaxed);
                let (source, destination) = (source.to_string(), destination.to_string());
                return remote::forward_move(source, node, cluster.clone(), epoch, destination)
                    .await;
            }
        }
        self.move_here(source, destination, session).await
    }

    /// [`QueueManager::move_messages`] with the source's task on this node (its leader, or
    /// any node outside a cluster).
    pub(crate) async fn move_here(
        &self,
        source: &str,
        destination: &str,
        session: Option<SessionId>,
    ) -> Moved {
        let stopped = |error| Moved {
            moved: 0,
            stopped: Some(error),
        };
        if source == destination {
            return stopped(QueueError::Invalid(format!(
                "cannot move queue {source:?} into itself"
            )));
        }
        let senders = self
            .check_not_exclusive_elsewhere(source, session)
            .and_then(|()| self.check_not_exclusive_elsewhere(destination, session))
            .and_then(|()| Ok((self.sender(source)?, self.sender(destination)?)));
        let (from, to) = match senders {
            Ok(senders) => senders,
            Err(error) => return stopped(error),
        };
        let names = (source.to_string(), destination.to_string());
        match tokio::spawn(move_rounds(from, to, names)).await {
            Ok(moved) => moved,
            Err(error) => stopped(QueueError::Storage(format!("move task failed: {error}"))),
        }
    }

    /// Refuses a queue that is exclusive to a connection other than `session`.
    pub(crate) fn check_not_exclusive_elsewhere(
        &self,
        queue: &str,
        session: Option<SessionId>,
    ) -> Result<(), QueueError> {
        match self.lock().owners.get(queue) {
            Some(owner) if Some(*owner) != session => Err(QueueError::DeclareMismatch(format!(
                "queue {queue:?} is exclusive to another connection"
            ))),
            _ => Ok(()),
        }
    }

    /// Deletes a queue if `conditions` hold: the queue's task checks them and, if they
    /// hold, retires (refuses new consumers) in the same step, so nothing comes between the
    /// check and the delete that would have failed it; then the queue is deleted as
    /// [`delete_queue`](Self::delete_queue) does. Answers how many ready messages it held.
    /// A publish routed to the queue just before it is unregistered is deleted with it, as
    /// with any delete (RabbitMQ's too).
    ///
    /// # Errors
    /// `Precondition` (`InUse`, `NotEmpty`), `UnknownQueue`, `Storage`.
    pub async fn delete_queue_if(
        &self,
        queue: &str,
        conditions: DeleteConditions,
    ) -> Result<u64, QueueError> {
        let sender = self.sender(queue)?;
        let gone = || QueueError::UnknownQueue(queue.to_string());
        let (reply, answer) = oneshot::channel();
        sender
            .send(Command::Control(Control::Retire(conditions, reply)))
            .await
            .map_err(|_| gone())?;
        let ready = answer.await.map_err(|_| gone())??;
        match self.delete_queue(queue).await {
            Ok(()) => Ok(ready),
            Err(QueueError::UnknownQueue(_)) => Err(gone()),
            Err(error) => {
                // Still registered: it takes consumers again.
                let _ = sender.send(Command::Control(Control::Reopen)).await;
                Err(error)
            }
        }
    }

    /// Deletes a queue, its bindings and its messages.
    ///
    /// # Errors
    /// `UnknownQueue`, `Storage`.
    pub async fn delete_queue(&self, queue: &str) -> Result<(), QueueError> {
        // 1. Forget the queue durably first: a crash part-way through must not reopen a
        //    half-deleted queue (its leftover directory is removed by the next declare).
        //    The name stays reserved until the files are gone, so a declare meanwhile is
        //    refused rather than created and then wiped. Only what the definitions file
        //    holds is taken out before it is written; if it cannot be written (a full
        //    disk), that goes back and the queue stays as it was, in memory as on disk.
        let (handle, stored, snapshot) = {
            let mut registry = self.lock();
            let handle = registry
                .queues
                .remove(queue)
                .ok_or_else(|| QueueError::UnknownQueue(queue.to_string()))?;
            let (stored, kept): (Vec<StoredBinding>, Vec<StoredBinding>) =
                std::mem::take(&mut registry.bindings)
                    .into_iter()
                    .partition(|binding| binding.queue == queue && !to_exchange(binding));
            registry.bindings = kept;
            registry.deleting.insert(queue.to_string());
            let snapshot = self.snapshot(&registry);
            (handle, stored, snapshot)
        };
        if let Err(error) = self.definitions.persist(snapshot) {
            let mut registry = self.lock();
            registry.queues.insert(queue.to_string(), handle);
            registry.bindings.extend(stored);
            registry.deleting.remove(queue);
            return Err(error);
        }
        let (sender, durability) = {
            let mut registry = self.lock();
            for (_, bindings) in registry.exchanges.values_mut() {
                if bindings.has_queue(queue) {
                    Arc::make_mut(bindings).remove_queue(queue);
                }
            }
            registry.owners.remove(queue);
            registry.consumer_ids.remove(queue);
            (handle.sender, handle.durability)
        };
        // A proxy of the queue ends once the commands it holds are forwarded.
        self.proxies
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|(name, _), _| name != queue);
        // 2. Stop the task, 3. remove the files, 4. release the name.
        let (reply, stopped) = oneshot::channel();
        let deleted = Some(CancelReason::QueueDeleted);
        if sender.send(Command::Stop(reply, deleted)).await.is_ok() {
            let _ = stopped.await;
        }
        let dir = self.queue_dir(queue, durability);
        let removed = if self.env.fs.is_dir(&dir) {
            self.env
                .fs
                .remove_dir_all(&dir)
                .map_err(|error| QueueError::Storage(error.to_string()))
        } else {
            Ok(())
        };
        self.lock_unrouted().deleting.remove(queue);
        removed
    }

    /// Stops every queue task, closing durable queues cleanly (a replicated queue's store
    /// too, which its task leaves open: the caller stopped the replicated logs' members
    /// first).
    pub async fn shutdown(&self) {
        let (senders, replicated): (Vec<mpsc::Sender<Command>>, Vec<Arc<QueueStore>>) = {
            let registry = self.lock();
            (
                registry
                    .queues
                    .values()
                    .map(|handle| handle.sender.clone())
                    .collect(),
                registry
                    .queues
                    .values()
                    .filter_map(|handle| handle.replicated.clone())
                    .collect(),
            )
        };
        for sender in senders {
            let (reply, stopped) = oneshot::channel();
            if sender.send(Command::Stop(reply, None)).await.is_ok() {
                let _ = stopped.await;
            }
        }
        for store in replicated {
            if let Err(error) = store.close() {
                tracing::warn!(%error, "closing a replicated queue's storage failed");
            }
        }
    }

    /// Republishes dead-lettered copies through `exchange`, handing them to their queues in
    /// the order given (so they are stored in that order) and waiting for every confirm;
    /// for each copy, true once it is stored (or there was nowhere to put it), false if its
    /// republish failed and the original must stay.
    pub(crate) async fn republish_dead_letters(
        &self,
        exchange: &str,
        copies: impl Iterator<Item = Message>,
    ) -> Vec<bool> {
        let mut tickets = Vec::new();
        for copy in copies {
            tickets.push(self.publish_enqueue(exchange, copy).await);
        }
        let mut stored = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            let confirmed = match ticket {
                Ok(ticket) => ticket.confirmed().await,
                Err(error) => Err(error),
            };
            stored.push(match confirmed {
                Ok(Published::Routed(_)) => true,
                Ok(Published::Unroutable) => {
                    self.dropped_unroutable.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(error) => {
                    // The original stays stored and comes back at the next start.
                    tracing::warn!(exchange, %error, "dead-lettering failed; keeping the original");
                    false
                }
            });
        }
        stored
    }
}

/// The rounds of a move (see [`QueueManager::move_messages`]) until the source has no
/// ready message up to the bound taken in the first round, or a round fails.
async fn move_rounds(
    from: mpsc::Sender<Command>,
    to: mpsc::Sender<Command>,
    (source, destination): (String, String),
) -> Moved {
    let mut moved = 0u64;
    let mut up_to = None;
    loop {
        let round = match take_round(&from, up_to, &source).await {
            Ok(round) => round,
            Err(error) => {
                return Moved {
                    moved,
                    stopped: Some(error),
                }
            }
        };
        if round.messages.is_empty() {
            return Moved {
                moved,
                stopped: None,
            };
        }
        up_to = round.up_to;
        let stored = store_round(&to, round.messages, &destination).await;
        let count = stored.stored.len() as u64;
        if let Err(error) = finish_round(&from, stored.stored, stored.not_stored, &source).await {
            // Stored in the destination but perhaps not settled in the source: those may
            // come back there (at-least-once); they are not counted as moved.
            return Moved {
                moved,
                stopped: Some(error),
            };
        }
        moved += count;
        if let Some(error) = stored.failed {
            return Moved {
                moved,
                stopped: Some(error),
            };
        }
    }
}

/// What the destination did with one round of a move.
struct StoredRound {
    /// Ids (in the source) of the messages durable in the destination.
    stored: Vec<i64>,
    /// Ids of the messages it did not take.
    not_stored: Vec<i64>,
    /// The first refusal, which ends the move after this round.
    failed: Option<QueueError>,
}

/// Hands one round to the destination's task, one publish command per message in order:
/// the task merges them into one append and one fsync and answers each, so each message is
/// settled in the source only if it is stored. After a refused send the rest are not sent.
async fn store_round(
    to: &mpsc::Sender<Command>,
    messages: Vec<(i64, Record)>,
    destination: &str,
) -> StoredRound {
    let mut confirms = Vec::with_capacity(messages.len());
    let mut failed = None;
    for (id, record) in messages {
        let (reply, confirmed) = oneshot::channel();
        if failed.is_none() {
            let message = Message {
                routing_key: record
                    .key
                    .as_ref()
                    .map(|key| String::from_utf8_lossy(key).into_owned())
                    .unwrap_or_default(),
                body: record.value.unwrap_or_default(),
                headers: record.headers,
            };
            if to
                .send(Command::Publish(vec![message], reply))
                .await
                .is_err()
            {
                failed = Some(QueueError::Gone(destination.to_string()));
            }
        }
        confirms.push((id, confirmed));
    }
    let mut round = StoredRound {
        stored: Vec::new(),
        not_stored: Vec::new(),
        failed,
    };
    for (id, confirmed) in confirms {
        match confirmed.await {
            Ok(Ok(())) => round.stored.push(id),
            Ok(Err(error)) => {
                round.failed.get_or_insert(error);
                round.not_stored.push(id);
            }
            Err(_) => {
                round
                    .failed
                    .get_or_insert(QueueError::Gone(destination.to_string()));
                round.not_stored.push(id);
            }
        }
    }
    round
}

/// Ends a round in the source: settles what was stored (durably, before the answer) and
/// puts the rest back.
async fn finish_round(
    from: &mpsc::Sender<Command>,
    stored: Vec<i64>,
    not_stored: Vec<i64>,
    source: &str,
) -> Result<(), QueueError> {
    let (reply, settled) = oneshot::channel();
    let finish = Command::Control(Control::FinishMove {
        stored,
        not_stored,
        reply,
    });
    from.send(finish)
        .await
        .map_err(|_| QueueError::Gone(source.to_string()))?;
    settled
        .await
        .unwrap_or_else(|_| Err(QueueError::Gone(source.to_string())))
}

/// Asks the source of a move for its next round.
async fn take_round(
    from: &mpsc::Sender<Command>,
    up_to: Option<i64>,
    source: &str,
) -> Result<MoveRound, QueueError> {
    let (reply, answer) = oneshot::channel();
    from.send(Command::Control(Control::TakeForMove(up_to, reply)))
        .await
        .map_err(|_| QueueError::Gone(source.to_string()))?;
    answer
        .await
        .map_err(|_| QueueError::Gone(source.to_string()))?
}

impl Registry {
    /// An empty registry with the default exchange `""` and one `amq.<kind>` per kind.
    fn with_builtin_exchanges() -> Registry {
        let mut registry = Registry::default();
        registry.exchanges.insert(
            String::new(),
            (
                Durability::Durable,
                Arc::new(Bindings::new(ExchangeKind::Direct)),
            ),
        );
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
            ExchangeKind::Headers,
        ] {
            registry.exchanges.insert(
                format!("amq.{}", kind.name()),
                (Durability::Durable, Arc::new(Bindings::new(kind))),
            );
        }
        registry
    }

    /// What the definitions file holds: the durable exchanges (not the built-in ones) and
    /// queues, sorted by name, and the durable bindings.
    fn stored_definitions(&self) -> StoredDefinitions {
        let mut exchanges: Vec<StoredExchange> = self
            .exchanges
            .iter()
            .filter(|(name, (durability, _))| {
                *durability == Durability::Durable && !name.is_empty() && !name.starts_with("amq.")
            })
            .map(|(name, (_, bindings))| StoredExchange {
                name: name.clone(),
                kind: bindings.kind().name().to_string(),
            })
            .collect();
        exchanges.sort_by(|left, right| left.name.cmp(&right.name));
        let mut queues: Vec<StoredQueue> = self
            .queues
            .iter()
            .filter(|(_, handle)| handle.durability == Durability::Durable)
            .map(|(name, handle)| StoredQueue {
                name: name.clone(),
                args: args_to_pairs(&handle.args),
            })
            .collect();
        queues.sort_by(|left, right| left.name.cmp(&right.name));
        StoredDefinitions {
            exchanges,
            queues,
            bindings: self.bindings.clone(),
        }
    }

    /// Binds `queue` to `exchange`; true if the binding is new and both ends are durable,
    /// so the definitions file must be written again (the caller decides when).
    fn add_binding(
        &mut self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        args: &HeadersArgs,
        headers: &[(&str, &str)],
    ) -> Result<bool, QueueError> {
        let queue_durable = match self.queues.get(queue) {
            Some(handle) => handle.durability == Durability::Durable,
            None => return Err(QueueError::UnknownQueue(queue.to_string())),
        };
        let (exchange_durability, bindings) = self
            .exchanges
            .get_mut(exchange)
            .ok_or_else(|| QueueError::UnknownExchange(exchange.to_string()))?;
        let exchange_durable = *exchange_durability == Durability::Durable;
        let added = !bindings.is_bound(queue, routing_key, Some(args))
            && Arc::make_mut(bindings).bind(queue, routing_key, Some(args));
        if !(added && queue_durable && exchange_durable) {
            return Ok(false);
        }
        self.bindings.push(StoredBinding {
            exchange: exchange.to_string(),
            queue: queue.to_string(),
            routing_key: routing_key.to_string(),
            headers: stored_pairs(headers),
        });
        Ok(true)
    }
}

impl Registry {
    /// Binds exchange `destination` to `source`; true if the binding is new and both are
    /// durable (the definitions file must be written again).
    fn add_exchange_binding(
        &mut self,
        destination: &str,
        source: &str,
        routing_key: &str,
        args: &HeadersArgs,
        headers: &[(&str, &str)],
    ) -> Result<bool, QueueError> {
        let (destination_durability, _) = self
            .exchanges
            .get(destination)
            .ok_or_else(|| QueueError::UnknownExchange(destination.to_string()))?;
        let destination_durable = *destination_durability == Durability::Durable;
        let (source_durability, source_bindings) = self
            .exchanges
            .get(source)
            .ok_or_else(|| QueueError::UnknownExchange(source.to_string()))?;
        let durable = destination_durable && *source_durability == Durability::Durable;
        let kind = source_bindings.kind();
        let bindings = self
            .exchange_bindings
            .entry(source.to_string())
            .or_insert_with(|| Arc::new(Bindings::new(kind)));
        let added = !bindings.is_bound(destination, routing_key, Some(args))
            && Arc::make_mut(bindings).bind(destination, routing_key, Some(args));
        if !(added && durable) {
            return Ok(false);
        }
        self.bindings.push(StoredBinding {
            exchange: source.to_string(),
            queue: destination.to_string(),
            routing_key: routing_key.to_string(),
            headers: exchange_pairs(headers),
        });
        Ok(true)
    }
}

/// The first header pair of a stored binding whose destination is an exchange.
const TO_EXCHANGE: (&str, &str) = ("x-wharf-destination", "exchange");

/// True if the stored binding's destination is an exchange.
fn to_exchange(binding: &StoredBinding) -> bool {
    binding
        .headers
        .first()
        .is_some_and(|arg| (arg.key.as_str(), arg.value.as_str()) == TO_EXCHANGE)
}

/// The stored header pairs of an exchange-to-exchange binding: the marker, then `headers`.
fn exchange_pairs(headers: &[(&str, &str)]) -> Vec<StoredArg> {
    let mut pairs = stored_pairs(&[TO_EXCHANGE]);
    pairs.extend(stored_pairs(headers));
    pairs
}

/// The headers arguments of a binding to `exchange`.
///
/// # Errors
/// `Invalid` for the default exchange (it cannot be bound) or bad header pairs.
fn binding_args(exchange: &str, headers: &[(&str, &str)]) -> Result<HeadersArgs, QueueError> {
    if exchange.is_empty() {
        return Err(QueueError::Invalid(
            "the default exchange cannot be bound".to_string(),
        ));
    }
    HeadersArgs::from_pairs(headers.iter().copied()).map_err(QueueError::Invalid)
}

fn stored_pairs(headers: &[(&str, &str)]) -> Vec<StoredArg> {
    headers
        .iter()
        .map(|(key, value)| StoredArg {
            key: key.to_string(),
            value: value.to_string(),
        })
        .collect()
}

/// 22 letters and digits (about 130 bits) from the standard library's randomly keyed
/// hasher, so generated names do not repeat across restarts or processes.
pub(crate) fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut suffix = String::with_capacity(22);
    let mut bits = 0u128;
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        bits = (bits << 64) | u128::from(hasher.finish());
    }
    for _ in 0..22 {
        let digit = usize::try_from(bits % 62).unwrap_or(0);
        suffix.push(char::from(ALPHABET[digit]));
        bits /= 62;
    }
    suffix
}

pub(crate) fn check_name(name: &str) -> Result<(), QueueError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(QueueError::Invalid(format!(
            "name {name:?} must be 1 to {NAME_BYTES_MAX} bytes"
        )));
    }
    if name.starts_with("amq.") {
        return Err(QueueError::Invalid(format!(
            "name {name:?}: the amq. prefix is reserved"
        )));
    }
    if name == "." || name == ".." {
        // A durable queue's name is a directory name.
        return Err(QueueError::Invalid(format!("name {name:?} is not allowed")));
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b':'))
    {
        return Err(QueueError::Invalid(format!(
            "name {name:?} may only contain letters, digits and . _ - :"
        )));
    }
    Ok(())
}

/// A queue a message is routed to, with its task's command channel.
type Target = (String, mpsc::Sender<Command>);

/// The messages of one batch bound for one queue, cut into runs of at most
/// [`PUBLISH_RUN_BYTES_MAX`] bytes: one command and one reply per run.
struct QueueRuns {
    name: String,
    sender: mpsc::Sender<Command>,
    /// Runs cut so far, each with its message count.
    runs: Vec<(Vec<Message>, usize)>,
    bytes: usize,
}

impl QueueRuns {
    fn new(name: String, sender: mpsc::Sender<Command>) -> QueueRuns {
        QueueRuns {
            name,
            sender,
            runs: Vec::new(),
            bytes: 0,
        }
    }

    fn add(&mut self, message: Message) {
        let bytes = message_bytes(&message);
        match self.runs.last_mut() {
            Some((messages, count)) if self.bytes + bytes <= PUBLISH_RUN_BYTES_MAX => {
                messages.push(message);
                *count += 1;
                self.bytes += bytes;
            }
            _ => {
                self.runs.push((vec![message], 1));
                self.bytes = bytes;
            }
        }
    }

    /// Hands each run to the queue (a queue deleted meanwhile drops the command: its
    /// reply answers `Gone`).
    async fn send(self) -> QueueReplies {
        let mut replies = Vec::with_capacity(self.runs.len());
        for (messages, count) in self.runs {
            let (reply, answer) = oneshot::channel();
            let _ = self
                .sender
                .send(Command::PublishMany(messages, reply))
                .await;
            replies.push((answer, count));
        }
        QueueReplies {
            name: self.name,
            replies,
        }
    }
}

/// The replies one queue owes a batch, one per run in order, each with its message count.
#[derive(Debug)]
struct QueueReplies {
    name: String,
    replies: Vec<(oneshot::Receiver<Outcomes>, usize)>,
}

/// A batch of publishes handed to their queues, not yet confirmed
/// ([`QueueManager::publish_enqueue_many`]).
#[derive(Debug)]
pub struct BatchTicket {
    /// Per message, in order: its route (an index into `routes`), or why it was refused.
    fates: Vec<Result<usize, QueueError>>,
    /// Per route, its queues as indexes into `queues`.
    routes: Vec<Vec<usize>>,
    queues: Vec<QueueReplies>,
}

impl BatchTicket {
    /// Whether message `index` was refused before it reached a queue, and why.
    pub fn refusal(&self, index: usize) -> Option<&QueueError> {
        self.fates.get(index).and_then(|fate| fate.as_ref().err())
    }

    /// Waits until every message is durable in every queue it routed to (or failed): per
    /// message, in order, what [`PublishTicket::confirmed`] gives for one.
    pub async fn confirmed(self) -> Vec<Result<Published, QueueError>> {
        // Per queue, the outcomes of its runs in order.
        let mut outcomes: Vec<(String, Vec<(Outcomes, usize)>)> =
            Vec::with_capacity(self.queues.len());
        for queue in self.queues {
            let mut runs = Vec::with_capacity(queue.replies.len());
            for (answer, count) in queue.replies {
                let outcome = answer
                    .await
                    .unwrap_or_else(|_| Outcomes::All(Err(QueueError::Gone(queue.name.clone()))));
                runs.push((outcome, count));
            }
            outcomes.push((queue.name, runs));
        }
        // Each queue's messages are its runs' messages in order: a cursor per queue (run,
        // place in the run) walks them as the batch's messages are walked.
        let mut cursors = vec![(0usize, 0usize); outcomes.len()];
        let mut results = Vec::with_capacity(self.fates.len());
        for fate in self.fates {
            let route = match fate {
                Ok(route) => &self.routes[route],
                Err(error) => {
                    results.push(Err(error));
                    continue;
                }
            };
            if route.is_empty() {
                results.push(Ok(Published::Unroutable));
                continue;
            }
            let mut names = Vec::with_capacity(route.len());
            let mut failed = None;
            for &queue in route {
                let (name, runs) = &outcomes[queue];
                let (run, place) = &mut cursors[queue];
                let outcome = match runs.get(*run) {
                    Some((outcomes, count)) => {
                        let outcome = outcomes.get(*place, name);
                        *place += 1;
                        if *place == *count {
                            *run += 1;
                            *place = 0;
                        }
                        outcome
                    }
                    None => Err(QueueError::Gone(name.clone())),
                };
                match outcome {
                    Ok(()) => names.push(name.clone()),
                    Err(error) => {
                        // The first queue's error, as for one publish; the cursors of
                        // the other queues still move past this message.
                        failed.get_or_insert(error);
                    }
                }
            }
            results.push(match failed {
                Some(error) => Err(error),
                None => Ok(Published::Routed(names)),
            });
        }
        results
    }
}

/// The queues `message` published to `exchange` goes to, with their task channels, as the
/// registry holds them now.
fn route_in(routes: &Routes, exchange: &str, message: &Message) -> Result<Vec<Target>, QueueError> {
    let bindings = routes.exchanges.get(exchange).map(|bindings| &**bindings);
    let mut names = route_names(exchange, bindings, message)?;
    if !routes.exchange_bindings.is_empty() {
        // Through exchange-to-exchange bindings, each exchange once (cycles end).
        let mut seen: BTreeSet<&str> = BTreeSet::from([exchange]);
        let mut sources = vec![exchange.to_string()];
        while let Some(source) = sources.pop() {
            let Some(onward) = routes.exchange_bindings.get(&source) else {
                continue;
            };
            for destination in route_names(&source, Some(&**onward), message)? {
                let Some((name, bindings)) = routes.exchanges.get_key_value(&destination) else {
                    continue;
                };
                if seen.insert(name.as_str()) {
                    names.extend(route_names(name, Some(&**bindings), message)?);
                    sources.push(destination);
                }
            }
        }
        names.sort();
        names.dedup();
    }
    Ok(names
        .into_iter()
        .filter_map(|name| {
            routes
                .queues
                .get(&name)
                .map(|sender| (name.clone(), sender.clone()))
        })
        .collect())
}

/// Hands a routed message to each of its queues' tasks; the ticket resolves once it is
/// durable in all of them.
async fn enqueue(message: Message, targets: &[Target]) -> Result<PublishTicket, QueueError> {
    let mut confirmations = Vec::with_capacity(targets.len());
    for (name, sender) in targets {
        let (reply, confirmed) = oneshot::channel();
        sender
            .send(Command::Publish(vec![message.clone()], reply))
            .await
            .map_err(|_| QueueError::Gone(name.clone()))?;
        confirmations.push((name.clone(), confirmed));
    }
    Ok(PublishTicket::new(confirmations))
}

/// Whether a declare of exchange `name` as `declared` (kind, durability) matches the
/// existing one, `current` ([`QueueManager::exchange_kind`]): the kind first, then the
/// durability, as RabbitMQ checks.
///
/// # Errors
/// `ExchangeDiffers`, naming the first argument that differs.
pub fn exchange_equivalence(
    name: &str,
    declared: (ExchangeKind, Durability),
    current: (ExchangeKind, Durability),
) -> Result<(), QueueError> {
    let durable = |durability: Durability| (durability == Durability::Durable).to_string();
    if declared.0 != current.0 {
        return Err(QueueError::ExchangeDiffers {
            name: name.to_string(),
            arg: "type",
            received: declared.0.name().to_string(),
            current: current.0.name().to_string(),
        });
    }
    if declared.1 != current.1 {
        return Err(QueueError::ExchangeDiffers {
            name: name.to_string(),
            arg: "durable",
            received: durable(declared.1),
            current: durable(current.1),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::sim_env;
    use bytes::Bytes;

    fn message(body: &'static str) -> Message {
        Message {
            routing_key: String::new(),
            body: Bytes::from_static(body.as_bytes()),
            headers: Vec::new(),
        }
    }

    /// The queues a publish of `key` to `exchange` reached (sorted), `None` if unroutable.
    async fn reached(manager: &QueueManager, exchange: &str, key: &str) -> Option<Vec<String>> {
        let mut sent = message("m");
        sent.routing_key = key.to_string();
        match manager.publish(exchange, sent).await.expect("published") {
            Published::Routed(mut queues) => {
                queues.sort();
                Some(queues)
            }
            Published::Unroutable => None,
        }
    }

    fn names(queues: &[&str]) -> Option<Vec<String>> {
        Some(queues.iter().map(|queue| queue.to_string()).collect())
    }

    #[tokio::test]
    async fn an_exchange_declared_again_must_match_its_kind_and_durability() {
        // Goal: RabbitMQ's equivalence check on exchange.declare: the same kind and
        // durability is accepted (a built-in exchange too), another kind or durability is
        // refused with what differs, and the refused declare changes nothing.
        let (env, _fs, _) = sim_env(1_000);
        let manager = QueueManager::open(Path::new("/data"), env).expect("opens");
        manager
            .declare_exchange("logs", ExchangeKind::Fanout, Durability::Transient)
            .expect("declared");
        manager
            .declare_exchange("logs", ExchangeKind::Fanout, Durability::Transient)
            .expect("declared again as it is");
        let differs = |arg: &str, received: &str, current: &str| {
            Err(QueueError::ExchangeDiffers {
                name: "logs".to_string(),
                arg: if arg == "type" { "type" } else { "durable" },
                received: received.to_string(),
                current: current.to_string(),
            })
        };
        assert_eq!(
            manager.declare_exchange("logs", ExchangeKind::Fanout, Durability::Durable),
            differs("durable", "true", "false")
        );
        assert_eq!(
            manager.declare_exchange("logs", ExchangeKind::Direct, Durability::Durable),
            differs("type", "direct", "fanout"),
            "the kind is compared first"
        );
        let built_in = manager.exchange_kind("amq.topic").expect("built in");
        assert_eq!(
            exchange_equivalence(
                "amq.topic",
                (ExchangeKind::Topic, Durability::Durable),
                built_in
            ),
            Ok(())
        );
        let listed = manager.list_exchanges();
        let logs = listed
            .iter()
            .find(|(name, ..)| name == "logs")
            .expect("listed");
        assert_eq!(
            (logs.1, logs.2),
            (ExchangeKind::Fanout, Durability::Transient)
        );
    }

    #[tokio::test]
    async fn the_publish_after_each_routing_change_routes_by_it() {
        // Goal: publishes read a snapshot of the routing table without taking the registry's
        // lock (issue #15); every change must drop that snapshot, so the first publish after
        // a change already routes by it.
        let (env, _fs, _) = sim_env(1_000);
        let manager = QueueManager::open(Path::new("/data"), env).expect("opens");
        manager
            .declare_exchange("x", ExchangeKind::Fanout, Durability::Durable)
            .expect("exchange");
        assert_eq!(reached(&manager, "x", "").await, None);
        manager
            .declare_queue("a", QueueArgs::default(), Durability::Durable)
            .expect("queue a");
        assert_eq!(reached(&manager, "", "a").await, names(&["a"]));
        manager.bind("a", "x", "", &[]).expect("bind a");
        assert_eq!(reached(&manager, "x", "").await, names(&["a"]));
        // Consumers coming and going change nothing routing reads: the snapshot stays.
        let (consumer, _deliveries) = manager.subscribe("a", 10).await.expect("subscribed");
        manager.forget_consumer("a", consumer).await;
        assert!(manager.routes.load().is_some(), "the snapshot was kept");
        // Binding again what is bound changes nothing either, and copies no bindings.
        let before = manager.with_routes(|routes| Arc::clone(&routes.exchanges["x"]));
        manager.bind("a", "x", "", &[]).expect("bound again");
        let after = manager.with_routes(|routes| Arc::clone(&routes.exchanges["x"]));
        assert!(Arc::ptr_eq(&before, &after), "the bindings were not copied");
        drop((before, after));
        manager
            .declare_queue("b", QueueArgs::default(), Durability::Transient)
            .expect("queue b");
        manager.bind("b", "x", "", &[]).expect("bind b");
        assert_eq!(reached(&manager, "x", "").await, names(&["a", "b"]));
        assert!(manager.unbind("a", "x", "", &[]).expect("unbind a"));
        assert_eq!(reached(&manager, "x", "").await, names(&["b"]));
        manager
            .declare_exchange("y", ExchangeKind::Fanout, Durability::Durable)
            .expect("exchange y");
        assert_eq!(reached(&manager, "y", "").await, None);
        manager.bind_exchange("x", "y", "", &[]).expect("y to x");
        assert_eq!(reached(&manager, "y", "").await, names(&["b"]));
        assert!(manager.unbind_exchange("x", "y", "", &[]).expect("unbound"));
        assert_eq!(reached(&manager, "y", "").await, None);
        manager
            .bind_exchange("x", "y", "", &[])
            .expect("y to x again");
        manager.delete_queue("b").await.expect("b deleted");
        assert_eq!(reached(&manager, "x", "").await, None);
        assert_eq!(reached(&manager, "y", "").await, None);
        manager.delete_exchange("x").expect("x deleted");
        assert!(matches!(
            manager.publish("x", message("m")).await,
            Err(QueueError::UnknownExchange(_))
        ));
        // A batch of publishes reads the same snapshot rules.
        manager.bind("a", "y", "", &[]).expect("bind a to y");
        let ticket = manager
            .publish_enqueue_many(vec![
                ("y".to_string(), message("1")),
                (String::new(), message("2")),
            ])
            .await;
        assert_eq!(ticket.routes, vec![vec![0usize], vec![]]);
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn unbinding_what_a_listing_shows_stops_the_routing() {
        // Goal: an unbind removes what routing holds, whatever key a fanout or headers
        // binding is listed under (the manager skips only unbinds that change nothing).
        let (env, _fs, _) = sim_env(1_000);
        let manager = QueueManager::open(Path::new("/data"), env).expect("opens");
        manager
            .declare_queue("q", QueueArgs::default(), Durability::Durable)
            .expect("queue");
        manager
            .declare_exchange("h", ExchangeKind::Headers, Durability::Durable)
            .expect("headers exchange");
        let (a, b) = (
            [("x-match", "any"), ("a", "1")],
            [("x-match", "any"), ("b", "1")],
        );
        manager.bind("q", "h", "", &a).expect("bind a");
        manager.bind("q", "h", "", &b).expect("bind b");
        let mut with_b = message("m");
        with_b.headers = vec![wharf_protocol::batch::Header {
            key: "b".to_string(),
            value: Some(Bytes::from_static(b"1")),
        }];
        let routed = manager
            .publish("h", with_b.clone())
            .await
            .expect("published");
        assert_eq!(routed, Published::Routed(vec!["q".to_string()]));
        assert!(manager.unbind("q", "h", "", &a).expect("unbind a"));
        assert!(manager.unbind("q", "h", "", &b).expect("unbind b"));
        let routed = manager.publish("h", with_b).await.expect("published");
        assert_eq!(routed, Published::Unroutable);

        manager
            .declare_exchange("f", ExchangeKind::Fanout, Durability::Durable)
            .expect("fanout exchange");
        manager.bind("q", "f", "some-key", &[]).expect("bind");
        assert!(manager.unbind("q", "f", "", &[]).expect("unbind as listed"));
        assert_eq!(reached(&manager, "f", "").await, None);
        manager.shutdown().await;
    }

    #[tokio::test]
    async fn a_delete_that_cannot_write_the_definitions_keeps_the_queue_and_its_bindings() {
        let (env, fs, _) = sim_env(1_000);
        let dir = Path::new("/data");
        let manager = QueueManager::open(dir, env.clone()).expect("opens");
        manager
            .declare_exchange("fan", ExchangeKind::Fanout, Durability::Durable)
            .expect("exchange");
        manager
            .declare_queue("q", QueueArgs::default(), Durability::Durable)
            .expect("queue");
        manager.bind("q", "fan", "", &[]).expect("binding");
        fs.fail_next_write(libc::ENOSPC);
        assert!(matches!(
            manager.delete_queue("q").await,
            Err(QueueError::Storage(_))
        ));
        // Still declared, bound and reachable, and declarable again as it was.
        assert!(manager.exists("q"));
        assert_eq!(manager.list_bindings(Some("q")).expect("bindings").len(), 2);
        assert_eq!(
            manager
                .publish("fan", message("kept"))
                .await
                .expect("routed"),
            Published::Routed(vec!["q".to_string()])
        );
        manager
            .declare_queue("q", QueueArgs::default(), Durability::Durable)
            .expect("the same declare is idempotent");
        // A later delete works and sticks across a restart.
        manager.delete_queue("q").await.expect("deleted");
        assert!(!manager.exists("q"));
        assert_eq!(
            manager
                .publish("fan", message("gone"))
                .await
                .expect("publish"),
            Published::Unroutable
        );
        manager.shutdown().await;
        drop(manager);
        let reopened = QueueManager::open(dir, env).expect("reopens");
        assert!(!reopened.exists("q"));
        assert!(reopened.list_bindings(Some("q")).is_err());
    }
}
