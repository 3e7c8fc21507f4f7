//! The `wharfd` server: binds the listener, owns the broker state, runs background tasks
//! (group session expiry, retention) and shuts down gracefully.
//!
//! Layers, top to bottom: [`listener`] (accept, connection cap, shutdown) → [`connection`]
//! (frames in and out, in-flight bound, response order) → [`dispatch`] (request → handler) →
//! domain ([`crate::topic`], [`crate::group`], [`crate::offsets`]) → [`crate::storage`].

pub mod connection;
pub mod dispatch;
pub mod listener;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use wharf_protocol::messages::BrokerInfo;

use crate::config::{parse_host_port, BrokerConfig};
use crate::group::Coordinator;
use crate::offsets::OffsetStore;
use crate::producer::Producers;
use crate::queue::manager::QueueManager;
use crate::storage::{Clock, Flusher, RealFs, StorageEnv, SystemClock};
use crate::topic::{TopicError, Topics};
use crate::txn::{TxnCoordinator, TxnLoaded};

/// Node id of this broker in metadata answers (one broker for now).
pub const NODE_ID: i32 = 0;
/// How often expired group sessions are looked for.
const SESSION_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest retention check interval: retention scans every partition.
const RETENTION_CHECK_INTERVAL_MS_MIN: u64 = 10;
/// The queues' directory inside the data directory.
pub const QUEUES_DIR: &str = "queues";
/// How often producer-state snapshots are written (bounds the replay after a crash).
const PRODUCER_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight requests before closing storage anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Everything request handlers share.
#[derive(Debug)]
pub struct Broker {
    /// The configuration in force.
    pub config: BrokerConfig,
    /// Topics and their partition logs.
    pub topics: Topics,
    /// Committed offsets.
    pub offsets: OffsetStore,
    /// Consumer groups.
    pub groups: Coordinator,
    /// Idempotent producer state and producer ids.
    pub producers: Producers,
    /// The transaction coordinator.
    pub txn: TxnCoordinator,
    /// Exchanges and queues.
    pub queues: Arc<QueueManager>,
    /// What metadata answers tell clients to connect to.
    pub advertised: BrokerInfo,
    /// Time.
    pub clock: Arc<dyn Clock>,
}

impl Broker {
    /// Partition count of a topic, for group assignment.
    pub fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|info| info.partitions)
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Opening storage failed.
    #[error("cannot open storage in {dir}: {source}")]
    Storage {
        dir: String,
        #[source]
        source: TopicError,
    },
    /// Binding the listener failed.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// A background task panicked or closing storage failed.
    #[error("shutdown: {0}")]
    Shutdown(String),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, finishes in-flight requests, flushes and closes storage cleanly.
    ///
    /// # Errors
    /// `ServerError::Shutdown` if storage could not be closed cleanly.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after a shutdown).
    ///
    /// # Errors
    /// As for `shutdown`.
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(ServerError::Shutdown(error.to_string())),
        }
    }

    /// A sender that triggers shutdown (for signal handlers).
    pub fn shutdown_trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Opens storage, binds the listener and starts serving.
///
/// # Errors
/// `ServerError` if the config is invalid, storage cannot be opened or the address bound.
pub async fn start(config: BrokerConfig) -> Result<ServerHandle, ServerError> {
    config
        .validate()
        .map_err(|error| ServerError::Config(error.to_string()))?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            address: config.listen.clone(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        address: config.listen.clone(),
        source,
    })?;
    let advertised = advertised_info(&config, local_addr)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let open_config = config.clone();
    let open_clock = clock.clone();
    // Opening storage reads and fsyncs many files: keep it off the runtime's workers.
    let OpenedStorage {
        topics,
        offsets,
        producers,
        txn: (txn, txn_loaded),
        queues,
    } = tokio::task::spawn_blocking(move || open_storage(&open_config, open_clock))
        .await
        .map_err(|error| ServerError::Shutdown(error.to_string()))??;
    let broker = Arc::new(Broker {
        groups: Coordinator::new(clock.clone(), config.group_session_timeout_ms),
        config,
        topics,
        offsets,
        producers,
        txn,
        queues,
        advertised,
        clock,
    });
    let txn_task = TxnCoordinator::spawn(txn_loaded, Arc::downgrade(&broker));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(run(broker, listener, shutdown_rx, txn_task));
    tracing::info!(%local_addr, "wharfd listening");
    Ok(ServerHandle {
        local_addr,
        shutdown,
        task,
    })
}

fn advertised_info(
    config: &BrokerConfig,
    local_addr: SocketAddr,
) -> Result<BrokerInfo, ServerError> {
    let (host, port) = match &config.advertised_address {
        Some(address) => parse_host_port(address).map_err(ServerError::Config)?,
        None => {
            if local_addr.ip().is_unspecified() {
                tracing::warn!(%local_addr, "listening on all interfaces without advertised_address: clients on other hosts cannot reconnect to what metadata answers");
            }
            (local_addr.ip().to_string(), local_addr.port())
        }
    };
    Ok(BrokerInfo {
        node_id: NODE_ID,
        host,
        port,
    })
}

/// Everything opened from the data directory at start.
struct OpenedStorage {
    topics: Topics,
    offsets: OffsetStore,
    producers: Producers,
    txn: (TxnCoordinator, TxnLoaded),
    queues: Arc<QueueManager>,
}

fn open_storage(
    config: &BrokerConfig,
    clock: Arc<dyn Clock>,
) -> Result<OpenedStorage, ServerError> {
    let env = StorageEnv {
        fs: Arc::new(RealFs),
        clock: clock.clone(),
        flusher: Flusher::spawn(2),
    };
    let wrap = |source| ServerError::Storage {
        dir: config.data_dir.display().to_string(),
        source,
    };
    let topics = Topics::open(&config.data_dir, env, config.log.clone()).map_err(wrap)?;
    topics.set_partitions_max(config.partitions_max);
    let offsets = OffsetStore::open(&topics, clock.clone()).map_err(wrap)?;
    let fs: Arc<dyn crate::storage::Fs> = Arc::new(RealFs);
    let producers = Producers::open(fs, &config.data_dir, config.producer_expiry_ms)
        .map_err(|error| wrap(error.into()))?;
    for info in topics.list() {
        for partition in 0..info.partitions {
            if let Some(log) = topics.partition(&info.name, partition) {
                producers
                    .load(&info.name, partition, &log)
                    .map_err(|error| wrap(error.into()))?;
            }
        }
    }
    let txn = TxnCoordinator::open(&topics).map_err(wrap)?;
    let queue_env = StorageEnv {
        fs: Arc::new(RealFs),
        clock: clock.clone(),
        flusher: Flusher::spawn(1),
    };
    let queues = QueueManager::open(&config.data_dir.join(QUEUES_DIR), queue_env)
        .map_err(|error| ServerError::Config(format!("cannot open queues: {error}")))?;
    Ok(OpenedStorage {
        topics,
        offsets,
        producers,
        txn,
        queues,
    })
}

async fn run(
    broker: Arc<Broker>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    txn_task: JoinHandle<()>,
) -> Result<(), ServerError> {
    // Every connection holds a clone of `done_tx`; when all are dropped, `done_rx` yields None.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let background = spawn_background(&broker, shutdown.clone());
    listener::accept_loop(broker.clone(), listener, shutdown, done_tx).await;
    if tokio::time::timeout(SHUTDOWN_GRACE, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections did not finish within the shutdown grace period");
    }
    for task in background {
        task.abort();
    }
    txn_task.abort();
    let snapshotting = broker.clone();
    let _ = tokio::task::spawn_blocking(move || snapshot_producers(&snapshotting)).await;
    broker.queues.shutdown().await;
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.topics.registry().close())
        .await
        .map_err(|error| ServerError::Shutdown(error.to_string()))?
        .map_err(|error| ServerError::Shutdown(error.to_string()))?;
    tracing::info!("wharfd stopped cleanly");
    Ok(())
}

fn spawn_background(broker: &Arc<Broker>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let shutdown_for_snapshots = shutdown.clone();
    let sessions = {
        let broker = broker.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(SESSION_CHECK_INTERVAL);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        broker.groups.expire_sessions(|topic| broker.partition_count(topic));
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    };
    let retention = {
        let broker = broker.clone();
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            let period = Duration::from_millis(
                broker
                    .config
                    .retention_check_interval_ms
                    .max(RETENTION_CHECK_INTERVAL_MS_MIN),
            );
            let mut ticker = tokio::time::interval(period);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let broker = broker.clone();
                        let outcome = tokio::task::spawn_blocking(move || broker.topics.registry().apply_retention()).await;
                        if let Ok(Err(error)) = outcome {
                            tracing::error!(%error, "retention failed");
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    };
    let snapshots = {
        let broker = broker.clone();
        let mut shutdown = shutdown_for_snapshots;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(PRODUCER_SNAPSHOT_INTERVAL);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let broker = broker.clone();
                        let _ = tokio::task::spawn_blocking(move || snapshot_producers(&broker)).await;
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    };
    vec![sessions, retention, snapshots]
}

/// Writes every partition's producer-state snapshot, so a restart replays little of the log.
fn snapshot_producers(broker: &Broker) {
    let now_ms = broker.clock.now_ms();
    for ((topic, partition), shared) in broker.producers.all() {
        let Some(log) = broker.topics.partition(&topic, partition) else {
            continue;
        };
        if let Err(error) = broker.producers.snapshot(&shared, &log, now_ms) {
            tracing::warn!(topic, partition, %error, "producer snapshot failed");
        }
    }
}
