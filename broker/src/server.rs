//! The `wharfd` server: validates the configuration, binds the front ends' listeners, opens
//! the broker core off the runtime, serves until shutdown, then closes gracefully.
//!
//! Layers, top to bottom: this file (wiring) → [`crate::frontend`] (one per protocol, over
//! the shared [`crate::net`] machinery) → [`crate::core`] → domain (`streams`, `groups`,
//! `txn`, `queue`) → [`crate::append`] → [`crate::storage`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cluster::node::{open_internal_listener, InternalGuard};
use crate::config::{BrokerConfig, ListenerKind, ListenerSpec};
use crate::core::{AuthPolicy, Authentication, Broker, OpenError, Transport};
use crate::frontend::amqp::Amqp;
use crate::frontend::http::status::BrokerInfo;
use crate::frontend::http::Http;
use crate::frontend::kafka::Kafka;
use crate::frontend::native::Native;
use crate::net::limits::AddressLimits;
use crate::net::listener;
use crate::net::tls::{self, Tls, TlsError};
use crate::storage::{Clock, SystemClock};

/// How long shutdown waits for in-flight requests before closing storage anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Opening the broker's state failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Binding a listener failed.
    #[error("cannot listen on {address} for the {listener} listener: {source}; {remedy}")]
    Bind {
        address: String,
        /// Which front end's listener.
        listener: &'static str,
        /// The flag that changes it, as a sentence.
        remedy: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("cannot load the TLS certificate: {0}")]
    Tls(#[from] TlsError),
    /// A background task panicked or closing storage failed.
    #[error("shutdown: {0}")]
    Shutdown(String),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    kafka_addr: Option<SocketAddr>,
    amqp_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    tls: Option<Arc<Tls>>,
    cluster_tls: Option<Arc<Tls>>,
    broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// The address the native listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the Kafka listener is bound to, if it is on.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addr
    }

    /// The address the AMQP 0-9-1 listener is bound to, if it is on.
    pub fn amqp_addr(&self) -> Option<SocketAddr> {
        self.amqp_addr
    }

    /// The address the HTTP listener is bound to, if it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The TLS certificate of the TLS listeners (`None`: no listener speaks TLS), to reload
    /// it ([`Tls::reload_logged`], on SIGHUP).
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// The internal wire's TLS (`--cluster-tls-ca`; `None`: plain TCP), to reload it on
    /// SIGHUP too.
    pub fn cluster_tls(&self) -> Option<Arc<Tls>> {
        self.cluster_tls.clone()
    }

    /// The running broker, for what changes while it runs (`wharfd` sets the resource
    /// alarms' limits on SIGHUP: [`Broker::set_alarm_limits`]).
    pub fn broker(&self) -> Arc<Broker> {
        self.broker.clone()
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

/// What guards the internal listener: `cluster_secret_file` or `cluster_tls_ca`, else
/// `cluster_insecure`'s leave, else nothing.
fn internal_guard(config: &BrokerConfig) -> InternalGuard {
    if config.cluster_secret_file.is_some() || config.cluster_tls_ca.is_some() {
        InternalGuard::SecretOrTls
    } else if config.cluster_insecure {
        InternalGuard::OpenAllowed
    } else {
        InternalGuard::Open
    }
}

/// Refuses an internal listener given as an IP address beyond loopback that nothing
/// guards, before anything is opened or bound (a host name is checked once bound,
/// `cluster::node`).
fn check_internal_listener(config: &BrokerConfig) -> Result<(), ServerError> {
    let own = config.cluster_peers.get(&config.node_id);
    let Some(address) = own.and_then(|own| own.parse::<SocketAddr>().ok()) else {
        return Ok(());
    };
    match open_internal_listener(address, internal_guard(config)) {
        Some(refusal) => Err(ServerError::Config(refusal)),
        None => Ok(()),
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
    check_internal_listener(&config)?;
    // Loaded before any port is bound, so a bad certificate is the error the operator sees.
    let tls = load_tls(&config).await?;
    let cluster_tls = load_cluster_tls(&config).await?;
    let (listener, local_addr) =
        listener::bind(&config.listen.address)
            .await
            .map_err(|source| {
                ServerError::Bind {
            address: config.listen.address.clone(),
            listener: "native",
            remedy:
                "choose another address with --listen HOST:PORT (or `listen` in the config file)",
            source,
        }
            })?;
    let kafka_listener = match &config.kafka_listen {
        None => None,
        Some(spec) => Some(listener::bind(&spec.address).await.map_err(|source| {
            ServerError::Bind {
                address: spec.address.clone(),
                listener: "Kafka",
                remedy: "choose another address with --kafka-listen HOST:PORT, or turn the Kafka listener off with --kafka-listen off (or `kafka_listen` in the config file)",
                source,
            }
        })?),
    };
    let kafka_addr = kafka_listener.as_ref().map(|(_, addr)| *addr);
    let amqp_listener = match &config.amqp_listen {
        None => None,
        Some(spec) => Some(listener::bind(&spec.address).await.map_err(|source| {
            ServerError::Bind {
                address: spec.address.clone(),
                listener: "AMQP",
                remedy: "choose another address with --amqp-listen HOST:PORT, or turn the AMQP listener off with --amqp-listen off (or `amqp_listen` in the config file)",
                source,
            }
        })?),
    };
    let amqp_addr = amqp_listener.as_ref().map(|(_, addr)| *addr);
    let (shutdown, shutdown_rx) = watch::channel(false);
    // One count of connections per client address over every listener.
    let address_limits = AddressLimits::new(config.connections_per_ip_max);
    // HTTP serves from before recovery, so the liveness probe answers while it runs (and
    // the readiness probe says it is recovering); dropping `shutdown` on a failed open
    // stops it.
    let (http, http_addr, http_task) = start_http(
        &config,
        (local_addr, kafka_addr, amqp_addr),
        tls.clone(),
        address_limits.clone(),
        shutdown_rx.clone(),
    )
    .await?;
    if let Some(tls) = &tls {
        tokio::spawn(tls::watch_files(tls.clone(), shutdown_rx.clone()));
    }
    // Each listener's TLS, if its scheme asks for it.
    let listener_tls =
        |spec: Option<&ListenerSpec>| tls.clone().filter(|_| spec.is_some_and(|spec| spec.tls));
    let native_tls = listener_tls(Some(&config.listen));
    let kafka_tls = listener_tls(config.kafka_listen.as_ref());
    let amqp_tls = listener_tls(config.amqp_listen.as_ref());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let open_config = config.clone();
    // Opening storage reads and fsyncs many files: keep it off the runtime's workers.
    let recovery_started = std::time::Instant::now();
    let opened = tokio::task::spawn_blocking(move || Broker::open(&open_config, clock))
        .await
        .map_err(|error| ServerError::Shutdown(error.to_string()))??;
    crate::metrics::STARTUP.record_recovery(recovery_started.elapsed());
    let bound: Vec<SocketAddr> = [Some(local_addr), kafka_addr, amqp_addr, http_addr]
        .into_iter()
        .flatten()
        .collect();
    let auth = AuthPolicy {
        mode: config.authentication_mode(&bound),
        timeout: Duration::from_millis(config.authentication_timeout_ms),
    };
    // A `sasl_plaintext://` or `sasl_ssl://` listener requires a login whatever the
    // broker-wide mode (Kafka's listener security protocols).
    let listener_auth = |spec: &ListenerSpec| AuthPolicy {
        mode: if spec.sasl {
            Authentication::Required
        } else {
            auth.mode
        },
        ..auth
    };
    let any_required = auth.mode == Authentication::Required
        || config.listeners().iter().any(|(_, spec)| spec.sasl);
    let (broker, background) = opened.start(shutdown_rx.clone());
    if any_required && !broker.users_exist() {
        let _ = shutdown.send(true);
        let _ = broker.close(background).await;
        return Err(ServerError::Config(format!(
            "authentication is required ({}) but no user exists; create one first with \
             `wharfd user create NAME --data-dir {} --password-stdin`, or set \
             --authentication optional",
            match config.authentication {
                _ if auth.mode != Authentication::Required =>
                    "a listener's scheme is sasl_plaintext:// or sasl_ssl://",
                Some(_) => "set by `authentication = \"required\"` or --authentication",
                None => "a listener binds beyond loopback",
            },
            config.data_dir.display()
        )));
    }
    // The cluster's metadata log (issue #20): a lone node forms a cluster of one.
    let mut listeners = std::collections::BTreeMap::new();
    listeners.insert(
        ListenerKind::Native.registered_name().to_string(),
        config
            .advertised_address
            .clone()
            .unwrap_or_else(|| local_addr.to_string()),
    );
    for (kind, addr) in [
        (ListenerKind::Kafka, kafka_addr),
        (ListenerKind::Amqp, amqp_addr),
        (ListenerKind::Http, http_addr),
    ] {
        if let Some(addr) = addr {
            listeners.insert(kind.registered_name().to_string(), addr.to_string());
        }
    }
    if let Some(kafka) = &config.kafka_advertised {
        listeners.insert(
            ListenerKind::Kafka.registered_name().to_string(),
            kafka.clone(),
        );
    }
    let node_settings = crate::cluster::node::NodeSettings {
        node_id: config.node_id,
        peers: config.cluster_peers.clone(),
        listeners,
        timing: crate::cluster::raft::Timing {
            heartbeat: std::time::Duration::from_millis(config.cluster_heartbeat_ms),
            election_min: std::time::Duration::from_millis(config.cluster_election_timeout_ms),
            election_max: std::time::Duration::from_millis(config.cluster_election_timeout_ms * 2),
            snapshot_every: config.cluster_snapshot_entries,
            ..crate::cluster::raft::Timing::default()
        },
        secret_file: config.cluster_secret_file.clone(),
        guard: internal_guard(&config),
        agreed: agreed_settings(&config, auth.mode),
        tls: cluster_tls.clone().map(|tls| {
            tokio::spawn(tls::watch_files(tls.clone(), shutdown_rx.clone()));
            let client = tls.clone();
            let generation = tls.clone();
            crate::cluster::transport::InternalTls {
                generation: Arc::new(move || generation.generation()),
                server: Arc::new(move || Ok(tls.server_config())),
                client: Arc::new(move || {
                    client
                        .client_config()
                        .ok_or_else(|| "no client side in the cluster's TLS".to_string())
                }),
            }
        }),
    };
    let fs: Arc<dyn crate::storage::fs::Fs> = Arc::new(crate::storage::fs::RealFs);
    match crate::cluster::node::start(node_settings, &config.data_dir, fs, shutdown_rx.clone())
        .await
    {
        Ok(node) => {
            if let Some(addr) = node.listen_addr {
                tracing::info!(%addr, node_id = config.node_id, "cluster listener listening");
            }
            broker.attach_cluster(node.cluster, !config.cluster_peers.is_empty());
            tokio::spawn(broker.clone().follow_metadata(shutdown_rx.clone()));
        }
        Err(error) => {
            let _ = shutdown.send(true);
            let _ = broker.close(background).await;
            return Err(ServerError::Config(error.to_string()));
        }
    }
    tracing::info!(authentication = auth.mode.name(), "authentication");
    http.set_broker(broker.clone(), auth);
    let native = Native::new(
        broker.clone(),
        config.frame_bytes_max,
        config.advertised_address.as_deref(),
        local_addr,
        listener_auth(&config.listen),
    )
    .map_err(ServerError::Config)?
    .over(if config.listen.tls {
        Transport::Tls
    } else {
        Transport::Plaintext
    });
    let kafka = match kafka_listener {
        None => None,
        Some((kafka_listener, kafka_addr)) => Some((
            Kafka::new(
                broker.clone(),
                config.frame_bytes_max,
                config.kafka_advertised.as_deref(),
                kafka_addr,
                config.kafka_listen.as_ref().map_or(auth, listener_auth),
            )
            .map_err(ServerError::Config)?,
            kafka_listener,
        )),
    };
    let amqp = amqp_listener.map(|(amqp_listener, _)| {
        (
            Amqp::new(
                broker.clone(),
                (
                    config.frame_bytes_max,
                    config.amqp_connection_buffer_bytes_max,
                ),
                auth,
                config.amqp_default_guest,
            ),
            amqp_listener,
        )
    });
    let handle_broker = broker.clone();
    let task = tokio::spawn(async move {
        // Every connection holds a clone of `done_tx`; when all are dropped, `done_rx`
        // yields None.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let native_loop = listener::accept_loop(
            Arc::new(native),
            listener,
            native_tls,
            (config.connections_max, address_limits.clone()),
            shutdown_rx.clone(),
            done_tx.clone(),
        );
        let (kafka_shutdown, kafka_done) = (shutdown_rx.clone(), done_tx.clone());
        let (kafka_limits, amqp_limits) = (address_limits.clone(), address_limits.clone());
        let kafka_loop = async move {
            if let Some((kafka, kafka_listener)) = kafka {
                listener::accept_loop(
                    Arc::new(kafka),
                    kafka_listener,
                    kafka_tls,
                    (config.connections_max, kafka_limits),
                    kafka_shutdown,
                    kafka_done,
                )
                .await;
            }
        };
        let amqp_loop = async move {
            if let Some((amqp, amqp_listener)) = amqp {
                listener::accept_loop(
                    Arc::new(amqp),
                    amqp_listener,
                    amqp_tls,
                    (config.connections_max, amqp_limits),
                    shutdown_rx,
                    done_tx,
                )
                .await;
            }
        };
        tokio::join!(native_loop, kafka_loop, amqp_loop);
        if let Some(http_task) = http_task {
            if tokio::time::timeout(SHUTDOWN_GRACE, http_task)
                .await
                .is_err()
            {
                tracing::warn!("http requests did not finish within the shutdown grace period");
            }
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("connections did not finish within the shutdown grace period");
        }
        broker
            .close(background)
            .await
            .map_err(|error| ServerError::Shutdown(error.to_string()))?;
        tracing::info!("wharfd stopped cleanly");
        Ok(())
    });
    let scheme =
        |kind, spec: &Option<ListenerSpec>| spec.as_ref().map_or("off", |spec| spec.scheme(kind));
    tracing::info!(%local_addr, scheme = config.listen.scheme(ListenerKind::Native), "wharfd listening");
    if let Some(kafka_addr) = kafka_addr {
        tracing::info!(%kafka_addr, scheme = scheme(ListenerKind::Kafka, &config.kafka_listen), "Kafka listener listening");
    }
    if let Some(amqp_addr) = amqp_addr {
        tracing::info!(%amqp_addr, scheme = scheme(ListenerKind::Amqp, &config.amqp_listen), "AMQP listener listening");
    }
    if let Some(http_addr) = http_addr {
        tracing::info!(%http_addr, scheme = scheme(ListenerKind::Http, &config.http_listen), "HTTP listener listening");
    }
    Ok(ServerHandle {
        local_addr,
        kafka_addr,
        amqp_addr,
        http_addr,
        tls,
        cluster_tls,
        broker: handle_broker,
        shutdown,
        task,
    })
}

/// The TLS certificate if a listener speaks TLS, read on the blocking pool as every file of
/// the broker.
async fn load_tls(config: &BrokerConfig) -> Result<Option<Arc<Tls>>, ServerError> {
    if !config.listeners().iter().any(|(_, spec)| spec.tls) {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (config.tls.cert.clone(), config.tls.key.clone()) else {
        return Err(ServerError::Tls(TlsError::NotConfigured));
    };
    let client_ca = config.tls.client_ca.clone();
    let loaded = tokio::task::spawn_blocking(move || Tls::load(&cert, &key, client_ca.as_deref()))
        .await
        .map_err(|error| ServerError::Shutdown(error.to_string()))??;
    Ok(Some(Arc::new(loaded)))
}

/// The TLS of the internal wire if `cluster_tls_ca` is set (with a cluster to speak it
/// to), read on the blocking pool.
async fn load_cluster_tls(config: &BrokerConfig) -> Result<Option<Arc<Tls>>, ServerError> {
    let Some(ca) = config.cluster_tls_ca.clone() else {
        return Ok(None);
    };
    if config.cluster_peers.is_empty() {
        tracing::warn!(
            ca = %ca.display(),
            "--cluster-tls-ca is set but this node has no --cluster-peers: a cluster of one has no internal wire to secure"
        );
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (config.tls.cert.clone(), config.tls.key.clone()) else {
        return Err(ServerError::Tls(TlsError::NotConfigured));
    };
    let loaded = tokio::task::spawn_blocking(move || Tls::load_cluster(&cert, &key, &ca))
        .await
        .map_err(|error| ServerError::Shutdown(error.to_string()))??;
    Ok(Some(Arc::new(loaded)))
}

/// The settings a cluster's nodes should share, as this node runs with them, by config key:
/// registered in the metadata so the nodes can tell when they differ (docs/CLUSTER.md,
/// "Settings every node should share").
fn agreed_settings(
    config: &BrokerConfig,
    authentication: crate::config::Authentication,
) -> std::collections::BTreeMap<String, String> {
    let mut super_users = config.super_users.clone();
    super_users.sort();
    super_users.dedup();
    [
        ("authentication", authentication.name().to_string()),
        (
            "authorization",
            if config.authorization_required {
                "required"
            } else {
                "optional"
            }
            .to_string(),
        ),
        ("super_users", super_users.join(",")),
        (
            "cluster_heartbeat_ms",
            config.cluster_heartbeat_ms.to_string(),
        ),
        (
            "cluster_election_timeout_ms",
            config.cluster_election_timeout_ms.to_string(),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect()
}

/// Binds the HTTP listener (if `http_listen` is on) and serves it until shutdown; the core
/// is handed to the returned [`Http`] once it has recovered.
async fn start_http(
    config: &BrokerConfig,
    (native_addr, kafka_addr, amqp_addr): (SocketAddr, Option<SocketAddr>, Option<SocketAddr>),
    tls: Option<Arc<Tls>>,
    address_limits: Arc<AddressLimits>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<Http>, Option<SocketAddr>, Option<JoinHandle<()>>), ServerError> {
    let bound = match &config.http_listen {
        None => None,
        Some(spec) => Some(listener::bind(&spec.address).await.map_err(|source| ServerError::Bind {
            address: spec.address.clone(),
            listener: "HTTP",
            remedy: "choose another address with --http-listen HOST:PORT, or turn the HTTP listener off with --http-listen off (or `http_listen` in the config file)",
            source,
        })?),
    };
    let info = BrokerInfo::new(
        config,
        native_addr,
        kafka_addr,
        amqp_addr,
        bound.as_ref().map(|(_, addr)| *addr),
    );
    let http = Http::new(shutdown.clone(), info);
    let Some((listener, addr)) = bound else {
        return Ok((http, None, None));
    };
    let mut capped =
        listener::CappedListener::new(listener, config.connections_max, address_limits);
    // HTTP logs in per request; a socket that never sends one is closed after the
    // authentication timeout when authentication is required (issue #18).
    let bound: Vec<SocketAddr> = [Some(native_addr), kafka_addr, amqp_addr, Some(addr)]
        .into_iter()
        .flatten()
        .collect();
    if config.authentication_mode(&bound) == Authentication::Required {
        capped = capped.close_silent_after(Duration::from_millis(config.authentication_timeout_ms));
    }
    let tls = tls.filter(|_| config.http_listen.as_ref().is_some_and(|spec| spec.tls));
    let task = tokio::spawn(crate::frontend::http::serve(
        http.clone(),
        capped,
        tls,
        shutdown,
    ));
    Ok((http, Some(addr), Some(task)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_listener_given_as_an_ip_beyond_loopback_is_refused_unless_guarded() {
        let peers = crate::config::parse_peers("1@10.0.0.7:7521,2@10.0.0.8:7521").expect("peers");
        let mut config = BrokerConfig {
            cluster_peers: peers,
            ..BrokerConfig::default()
        };
        assert_eq!(internal_guard(&config), InternalGuard::Open);
        let refused = check_internal_listener(&config).expect_err("open beyond loopback");
        assert!(
            refused.to_string().contains("--cluster-insecure"),
            "{refused}"
        );
        config.cluster_insecure = true;
        assert_eq!(internal_guard(&config), InternalGuard::OpenAllowed);
        assert!(check_internal_listener(&config).is_ok());
        config.cluster_secret_file = Some(std::path::PathBuf::from("secret"));
        assert_eq!(internal_guard(&config), InternalGuard::SecretOrTls);
        config.cluster_insecure = false;
        assert!(check_internal_listener(&config).is_ok());
        // Loopback and a host name (checked once bound) pass here.
        config.cluster_secret_file = None;
        config.cluster_peers = crate::config::parse_peers("1@127.0.0.1:7521").expect("peers");
        assert!(check_internal_listener(&config).is_ok());
        config.cluster_peers = crate::config::parse_peers("1@node1.lan:7521").expect("peers");
        assert!(check_internal_listener(&config).is_ok());
    }
}
