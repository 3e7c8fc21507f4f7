//! The broker's configuration: command-line flags for the three things every run names
//! (`--data-dir`, `--listen`, `--config`) and a TOML file for the rest.
//!
//! Example `wharfd.toml` (every key optional):
//!
//! ```toml
//! data_dir = "./wharf-data"
//! listen = "127.0.0.1:7420"        # or "ssl://0.0.0.0:7421", "sasl_ssl://..."
//! kafka_listen = "127.0.0.1:9092"  # plaintext | ssl | sasl_plaintext | sasl_ssl, or "off"
//! amqp_listen = "amqps://0.0.0.0:5671"
//! amqp_connection_buffer_bytes_max = 134217728  # body bytes one AMQP connection may buffer
//! http_listen = "https://0.0.0.0:7443"
//! tls_cert = "/etc/wharf/server.pem"    # PEM certificate chain, leaf first
//! tls_key = "/etc/wharf/server.key"     # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! tls_client_ca = "/etc/wharf/clients.pem"  # optional: mutual TLS
//! advertised_address = "broker1.internal:7420"
//! frame_bytes_max = 16842752
//! auto_create_topics = true
//! default_partitions = 1
//! group_session_timeout_ms = 10000
//! retention_check_interval_ms = 60000
//!
//! [log]
//! segment_bytes_max = 1073741824
//! segment_age_ms_max = 604800000
//! retention_ms = 604800000
//! retention_bytes = 0            # 0: no size limit
//! flush = "always"               # always | interval | never
//! flush_interval_ms = 1000       # with flush = "interval"
//! preallocate_ahead_bytes = 4194304  # 0: no blocks reserved ahead of appends
//! index_bytes_max = 10485760     # most bytes an index file grows to (a segment rolls there)
//!
//! [quotas]                       # per-principal byte rates (Kafka's names), 0: unlimited
//! producer_byte_rate = 1048576
//! consumer_byte_rate = 2097152
//! users = { alice = { producer_byte_rate = 10485760 }, ANONYMOUS = { consumer_byte_rate = 0 } }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wharf_protocol::frame::FRAME_BYTES_MAX_DEFAULT;

use crate::storage::config::{CleanupPolicy, SEGMENT_BYTES_MAX_LIMIT, SEGMENT_BYTES_MIN_LIMIT};
use crate::storage::{FlushPolicy, LogConfig};

/// Default listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7420";
/// Default Kafka listener address (Kafka's own default port).
pub const KAFKA_LISTEN_DEFAULT: &str = "127.0.0.1:9092";
/// Default AMQP 0-9-1 listener address (RabbitMQ's port).
pub const AMQP_LISTEN_DEFAULT: &str = "127.0.0.1:5672";
/// Default HTTP listener address (metrics, health, admin API; issue #17).
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:7480";
/// Largest record batch a produce may carry unless the topic's `max.message.bytes` says
/// otherwise (Kafka's default: 1 MiB plus batch overhead).
pub const MESSAGE_BYTES_MAX_DEFAULT: u64 = 1_048_588;
/// Free space below which publishers are held (RabbitMQ's default `disk_free_limit`).
pub const DISK_FREE_LIMIT_BYTES_DEFAULT: u64 = 50_000_000;
/// Fraction of the machine's memory above which publishers are held (RabbitMQ's default
/// `vm_memory_high_watermark.relative`).
pub const MEMORY_HIGH_WATERMARK_DEFAULT: f64 = 0.4;
/// Default `amqp_connection_buffer_bytes_max`: 128 MiB, room for eight bodies of the
/// default frame maximum (16 MiB) in flight or in open transactions on one connection,
/// while bounding what one connection of 2047 channels can make the broker hold (without
/// it, 2047 partial bodies of 16 MiB each, plus transactions without end).
pub const AMQP_CONNECTION_BUFFER_BYTES_MAX_DEFAULT: u64 = 128 * 1024 * 1024;
/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./wharf-data";
/// Largest partition count of one topic: each partition is a directory with open files.
pub const PARTITIONS_MAX: u32 = 10_000;
/// The largest node id: Kafka's broker ids are 32-bit signed (issue #20).
pub const NODE_ID_MAX: u64 = i32::MAX as u64;

/// Everything `wharfd` is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Where partitions and metadata live.
    pub data_dir: PathBuf,
    /// Where the native listener binds, and whether it speaks TLS.
    pub listen: ListenerSpec,
    /// What metadata answers tell clients to connect to (default: the bound address).
    pub advertised_address: Option<String>,
    /// Where the Kafka wire protocol listener binds (`None`: off).
    pub kafka_listen: Option<ListenerSpec>,
    /// What Kafka metadata answers tell clients to connect to (default: the bound address).
    pub kafka_advertised: Option<String>,
    /// Where the AMQP 0-9-1 listener binds (`None`: off).
    pub amqp_listen: Option<ListenerSpec>,
    /// Where the HTTP listener binds (`None`: off): metrics, health checks, admin API.
    pub http_listen: Option<ListenerSpec>,
    /// The TLS listeners' certificate and key files, and the client CA of mutual TLS.
    pub tls: TlsFiles,
    /// Largest accepted frame (length field).
    pub frame_bytes_max: u32,
    /// Create unknown topics on first produce.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic.
    pub default_partitions: u32,
    /// Session timeout of group members that do not ask for one.
    pub group_session_timeout_ms: u32,
    /// How often retention runs.
    pub retention_check_interval_ms: u64,
    /// The log cleaner (issue #19): its pause between rounds over the compacted partitions
    /// (Kafka's `log.cleaner.backoff.ms`).
    pub cleaner_backoff_ms: u64,
    /// Most bytes one pass's key map takes (Kafka's `log.cleaner.dedupe.buffer.size`).
    pub cleaner_dedupe_buffer_bytes: u64,
    /// The cleaner's read plus write rate limit, bytes per second (0: none; Kafka's
    /// `log.cleaner.io.max.bytes.per.second`).
    pub cleaner_io_bytes_per_second: u64,
    /// This node's id in the cluster (issue #20; 1 for a lone broker).
    pub node_id: u64,
    /// Every node's internal (broker-to-broker) address, this node's included; empty: a
    /// cluster of one, with no internal listener.
    pub cluster_peers: std::collections::BTreeMap<u64, String>,
    /// A file holding the secret every node of the cluster shares (at least 16 bytes):
    /// the internal listener serves only frames sealed with it. None: no sealing.
    pub cluster_secret_file: Option<PathBuf>,
    /// PEM CA certificates of the cluster: with them, the internal listener and every
    /// connection to another node speak mutual TLS, each node presenting `tls_cert` and
    /// accepting only a peer whose certificate comes from these CAs. None: plain TCP.
    pub cluster_tls_ca: Option<PathBuf>,
    /// Lets the internal listener bind beyond loopback with neither a secret nor TLS: open
    /// to anyone who can reach it (a trusted network only). Otherwise such a node does not
    /// start.
    pub cluster_insecure: bool,
    /// The metadata log leader's heartbeat interval, ms.
    pub cluster_heartbeat_ms: u64,
    /// A follower that hears no leader for a random time between this and twice this
    /// starts an election, ms.
    pub cluster_election_timeout_ms: u64,
    /// The metadata log is snapshotted after this many applied entries.
    pub cluster_snapshot_entries: u64,
    /// How often a node hands the replicated partitions it leads to their preferred
    /// replicas when in sync and past `leader_imbalance_percentage` (Kafka's
    /// `leader.imbalance.check.interval.seconds` with `auto.leader.rebalance.enable`),
    /// ms; 0: only when `wharf cluster rebalance` asks.
    pub leader_rebalance_interval_ms: u64,
    /// The periodic check hands a node's partitions back to it when more than this
    /// percentage of the partitions it is the preferred replica of (internal topics aside)
    /// are led elsewhere (Kafka's `leader.imbalance.per.broker.percentage`); 0 to 100
    /// (100: never).
    pub leader_imbalance_percentage: u64,
    /// Most client connections at once.
    pub connections_max: usize,
    /// Most connections open at once from one client IP address, over all listeners
    /// (Kafka's `max.connections.per.ip`; 0: no limit).
    pub connections_per_ip_max: usize,
    /// Most connections logged in as one user at once, over the native, Kafka and AMQP
    /// listeners (0: no limit).
    pub connections_per_user_max: usize,
    /// Per-principal produce and fetch byte rates (issue #18).
    pub quotas: QuotaConfig,
    /// Idle idempotent producers are forgotten after this long (Kafka's default: 1 day).
    pub producer_expiry_ms: i64,
    /// Most partitions across all topics: each costs open files and preallocated index
    /// space, and auto-created topics must not exhaust the disk.
    pub partitions_max: u32,
    /// Whether connections must log in (`None`: decided from the listeners, see
    /// [`BrokerConfig::authentication_mode`]).
    pub authentication: Option<Authentication>,
    /// An unauthenticated connection that has not logged in after this long is closed.
    pub authentication_timeout_ms: u64,
    /// Failed logins one client address may make within a minute before its logins are
    /// refused unchecked until the oldest failure is a minute old.
    pub login_failures_per_minute_max: usize,
    /// Whether the AMQP front end accepts RabbitMQ's default `guest`/`guest` login (from
    /// loopback only, as RabbitMQ does) while no user exists.
    pub amqp_default_guest: bool,
    /// Most message body bytes one AMQP connection may have the broker hold at once,
    /// across its channels: bodies being received (counted at their declared size from the
    /// content header on) and publishes buffered by open transactions. A content header
    /// that would pass it closes the connection with 506 RESOURCE_ERROR.
    pub amqp_connection_buffer_bytes_max: u64,
    /// Defaults for every partition log.
    pub log: LogConfig,
    /// `authorization = required`: deny what no ACL allows even while there is no ACL
    /// (`optional`, the default: with no ACL at all, everything is allowed).
    pub authorization_required: bool,
    /// Principals (`User:NAME`) allowed everything whatever the ACLs say.
    pub super_users: Vec<String>,
    /// Publishers are held while the data directory's file system has less free space than
    /// this (RabbitMQ's `disk_free_limit`; 0: never).
    pub disk_free_limit_bytes: u64,
    /// Publishers are held while the broker's memory is above this fraction of the
    /// machine's (or its cgroup's) memory (RabbitMQ's `vm_memory_high_watermark.relative`;
    /// 0: never).
    pub memory_high_watermark: f64,
    /// The same watermark in bytes; overrides `memory_high_watermark` when above 0
    /// (RabbitMQ's `vm_memory_high_watermark.absolute`).
    pub memory_high_watermark_bytes: u64,
}

/// The `authentication` setting (issue #18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication {
    /// Every request but the login itself (and version negotiation) is refused until the
    /// connection has logged in.
    Required,
    /// A connection that does not log in acts as the anonymous principal.
    Optional,
}

impl Authentication {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Authentication::Required => "required",
            Authentication::Optional => "optional",
        }
    }

    /// Parses the config spelling; `auto` (`None`) leaves the choice to the listeners
    /// ([`BrokerConfig::authentication_mode`]).
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(text: &str) -> Result<Option<Authentication>, String> {
        match text {
            "required" => Ok(Some(Authentication::Required)),
            "optional" => Ok(Some(Authentication::Optional)),
            "auto" => Ok(None),
            other => Err(format!(
                "authentication {other:?} is not \"required\", \"optional\" or \"auto\""
            )),
        }
    }
}

/// Default of `authentication_timeout_ms`: long enough for a SCRAM round trip over a slow
/// link, short enough that idle unauthenticated sockets do not pile up.
pub const AUTHENTICATION_TIMEOUT_MS_DEFAULT: u64 = 10_000;

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            listen: ListenerSpec::plaintext(LISTEN_DEFAULT),
            advertised_address: None,
            kafka_listen: Some(ListenerSpec::plaintext(KAFKA_LISTEN_DEFAULT)),
            kafka_advertised: None,
            amqp_listen: Some(ListenerSpec::plaintext(AMQP_LISTEN_DEFAULT)),
            http_listen: Some(ListenerSpec::plaintext(HTTP_LISTEN_DEFAULT)),
            tls: TlsFiles::default(),
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            auto_create_topics: true,
            default_partitions: 1,
            group_session_timeout_ms: 10_000,
            retention_check_interval_ms: 60_000,
            cleaner_backoff_ms: 15_000,
            cleaner_dedupe_buffer_bytes: 128 * 1024 * 1024,
            cleaner_io_bytes_per_second: 0,
            node_id: 1,
            cluster_peers: std::collections::BTreeMap::new(),
            cluster_secret_file: None,
            cluster_tls_ca: None,
            cluster_insecure: false,
            cluster_heartbeat_ms: 100,
            cluster_election_timeout_ms: 400,
            cluster_snapshot_entries: 1_000,
            leader_rebalance_interval_ms: 300_000,
            leader_imbalance_percentage: 10,
            connections_max: 1024,
            connections_per_ip_max: 0,
            connections_per_user_max: 0,
            quotas: QuotaConfig::default(),
            producer_expiry_ms: 24 * 3600 * 1000,
            partitions_max: 10_000,
            authentication: None,
            authentication_timeout_ms: AUTHENTICATION_TIMEOUT_MS_DEFAULT,
            login_failures_per_minute_max: 10,
            amqp_default_guest: true,
            amqp_connection_buffer_bytes_max: AMQP_CONNECTION_BUFFER_BYTES_MAX_DEFAULT,
            log: LogConfig::default(),
            authorization_required: false,
            super_users: Vec::new(),
            disk_free_limit_bytes: DISK_FREE_LIMIT_BYTES_DEFAULT,
            memory_high_watermark: MEMORY_HIGH_WATERMARK_DEFAULT,
            memory_high_watermark_bytes: 0,
        }
    }
}

/// Kafka's byte-rate quotas (KIP-13): bytes per second that one principal (every
/// connection of one user together, or every anonymous connection together) may produce
/// and fetch, measured over a sliding window of `window_count` samples of `window_ms`
/// (Kafka's `quota.window.num` and `quota.window.size.seconds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Default produce (and publish) rate of a principal, bytes per second (0: unlimited).
    pub producer_byte_rate: u64,
    /// Default fetch (and delivery) rate of a principal, bytes per second (0: unlimited).
    pub consumer_byte_rate: u64,
    /// Length of one sample of the rate window, ms.
    pub window_ms: u64,
    /// Samples in the rate window; the rate is measured over at least `window_count - 1`
    /// of them, so a new principal may send a burst of that many windows' worth at first.
    pub window_count: u32,
    /// Overrides by user name (`ANONYMOUS` for unauthenticated connections).
    pub users: BTreeMap<String, UserQuota>,
}

/// Kafka's defaults: 11 samples of 1 s.
pub const QUOTA_WINDOW_MS_DEFAULT: u64 = 1000;
/// Kafka's `quota.window.num` default.
pub const QUOTA_WINDOW_COUNT_DEFAULT: u32 = 11;
/// Shortest sample: below 10 ms the timer's resolution is most of the sample.
pub const QUOTA_WINDOW_MS_MIN: u64 = 10;
/// Most samples in the window: the rate sums them per request.
pub const QUOTA_WINDOW_COUNT_MAX: u32 = 100;

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            producer_byte_rate: 0,
            consumer_byte_rate: 0,
            window_ms: QUOTA_WINDOW_MS_DEFAULT,
            window_count: QUOTA_WINDOW_COUNT_DEFAULT,
            users: BTreeMap::new(),
        }
    }
}

/// One user's quota overrides; `None` takes the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuota {
    /// Produce rate, bytes per second (0: unlimited).
    pub producer_byte_rate: Option<u64>,
    /// Fetch rate, bytes per second (0: unlimited).
    pub consumer_byte_rate: Option<u64>,
}

/// One key of the TOML configuration file, for the documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigKey {
    /// The key as written in the file (`[log]` keys as `log.<key>`).
    pub key: &'static str,
    /// Its default, as a TOML value.
    pub default: String,
    /// What it sets, with its unit.
    pub meaning: &'static str,
}

/// Every key the configuration file accepts, with its default taken from
/// [`BrokerConfig::default`] (so the documentation cannot drift from the code; a test
/// checks that this list and the file's keys are the same, and that README.md shows it).
pub fn config_keys() -> Vec<ConfigKey> {
    config_values(&BrokerConfig::default())
}

/// Every key of the configuration file with its value in `config` (in `default`, as a TOML
/// value): what the broker runs with, for `GET /api/v1/broker`.
pub fn config_values(config: &BrokerConfig) -> Vec<ConfigKey> {
    let log = &config.log;
    let optional = |value: Option<u64>| value.unwrap_or(0).to_string();
    let (flush, flush_interval_ms) = match log.flush {
        FlushPolicy::Always => ("always", 1000),
        FlushPolicy::Interval { interval_ms } => ("interval", interval_ms),
        FlushPolicy::Never => ("never", 1000),
    };
    let key = |key, default: String, meaning| ConfigKey {
        key,
        default,
        meaning,
    };
    vec![
        key(
            "data_dir",
            format!("{:?}", config.data_dir.display().to_string()),
            "where partitions, queues and metadata live (`--data-dir`)",
        ),
        key(
            "listen",
            format!("{:?}", config.listen.setting(ListenerKind::Native)),
            "native protocol listener, [SCHEME://]HOST:PORT with SCHEME plaintext, ssl, sasl_plaintext or sasl_ssl (`--listen`)",
        ),
        key(
            "advertised_address",
            config
                .advertised_address
                .as_ref()
                .map_or_else(|| "(unset)".to_string(), |address| format!("{address:?}")),
            "HOST:PORT that metadata answers tell clients to connect to; unset: the bound address",
        ),
        key(
            "kafka_listen",
            listener_value(ListenerKind::Kafka, config.kafka_listen.as_ref()),
            "Kafka wire protocol listener, [SCHEME://]HOST:PORT with SCHEME plaintext, ssl, sasl_plaintext or sasl_ssl, or \"off\" (`--kafka-listen`)",
        ),
        key(
            "http_listen",
            listener_value(ListenerKind::Http, config.http_listen.as_ref()),
            "HTTP listener (metrics, health, admin API), [http:// or https://]HOST:PORT or \"off\" (`--http-listen`)",
        ),
        key(
            "kafka_advertised",
            config
                .kafka_advertised
                .as_ref()
                .map_or_else(|| "(unset)".to_string(), |address| format!("{address:?}")),
            "HOST:PORT that Kafka metadata answers carry; unset: the Kafka listener's bound address",
        ),
        key(
            "amqp_listen",
            listener_value(ListenerKind::Amqp, config.amqp_listen.as_ref()),
            "AMQP 0-9-1 listener, [amqp:// or amqps://]HOST:PORT or \"off\" (`--amqp-listen`)",
        ),
        key(
            "tls_cert",
            path_value(config.tls.cert.as_deref()),
            "PEM certificate chain (leaf first) of every TLS listener; reloaded on SIGHUP or when the file changes (`--tls-cert`)",
        ),
        key(
            "tls_key",
            path_value(config.tls.key.as_deref()),
            "PEM private key of `tls_cert` (`--tls-key`)",
        ),
        key(
            "tls_client_ca",
            path_value(config.tls.client_ca.as_deref()),
            "PEM CA certificates that TLS clients must present a certificate from (mutual TLS); unset: no client certificate asked (`--tls-client-ca`)",
        ),
        key(
            "frame_bytes_max",
            config.frame_bytes_max.to_string(),
            "largest request frame accepted, bytes",
        ),
        key(
            "auto_create_topics",
            config.auto_create_topics.to_string(),
            "create an unknown topic on its first produce",
        ),
        key(
            "default_partitions",
            config.default_partitions.to_string(),
            "partitions of an auto-created topic",
        ),
        key(
            "group_session_timeout_ms",
            config.group_session_timeout_ms.to_string(),
            "session timeout of group members that ask for none, ms",
        ),
        key(
            "retention_check_interval_ms",
            config.retention_check_interval_ms.to_string(),
            "how often retention runs, ms",
        ),
        key(
            "cleaner_backoff_ms",
            config.cleaner_backoff_ms.to_string(),
            "pause of the log cleaner between rounds over the compacted partitions, ms",
        ),
        key(
            "cleaner_dedupe_buffer_bytes",
            config.cleaner_dedupe_buffer_bytes.to_string(),
            "most memory one cleaner pass's key map takes, bytes",
        ),
        key(
            "cleaner_io_bytes_per_second",
            config.cleaner_io_bytes_per_second.to_string(),
            "the log cleaner's read plus write rate limit, bytes/s (0: none)",
        ),
        key(
            "node_id",
            config.node_id.to_string(),
            "this node's id in the cluster, 1 to 2147483647 (`--node-id`; Kafka broker ids are 32-bit)",
        ),
        key(
            "cluster_peers",
            if config.cluster_peers.is_empty() {
                "(unset)".to_string()
            } else {
                format!("{:?}", peers_text(&config.cluster_peers))
            },
            "every node of the cluster as ID@HOST:PORT (its internal listener), this one included, comma-separated; unset: a cluster of one (`--cluster-peers`)",
        ),
        key(
            "cluster_secret_file",
            config
                .cluster_secret_file
                .as_ref()
                .map_or_else(|| "(unset)".to_string(), |path| path.display().to_string()),
            "a file with the secret all nodes share (16 bytes or more): the internal listener serves only frames sealed with it (HMAC-SHA256); unset: unsealed (`--cluster-secret-file`)",
        ),
        key(
            "cluster_tls_ca",
            path_value(config.cluster_tls_ca.as_deref()),
            "PEM CA certificates of the cluster (a private CA of its own): set, the internal wire speaks mutual TLS, each node presenting `tls_cert` and accepting only peers with a certificate from these CAs (a listener's must also name the host dialled); unset: plain TCP (`--cluster-tls-ca`)",
        ),
        key(
            "cluster_insecure",
            config.cluster_insecure.to_string(),
            "true lets the internal listener bind beyond loopback with neither `cluster_secret_file` nor `cluster_tls_ca` (open to anyone who reaches it: a trusted network only); false: such a node refuses to start (`--cluster-insecure`)",
        ),
        key(
            "cluster_heartbeat_ms",
            config.cluster_heartbeat_ms.to_string(),
            "the metadata log leader's heartbeat interval, ms (at least 10)",
        ),
        key(
            "cluster_election_timeout_ms",
            config.cluster_election_timeout_ms.to_string(),
            "a follower hearing no leader for a random time between this and twice this starts an election, ms (at least 3 heartbeats)",
        ),
        key(
            "cluster_snapshot_entries",
            config.cluster_snapshot_entries.to_string(),
            "the metadata log is snapshotted after this many applied entries (at least 1)",
        ),
        key(
            "leader_rebalance_interval_ms",
            config.leader_rebalance_interval_ms.to_string(),
            "how often a node hands the replicated partitions it leads back to their preferred replicas once in sync, past `leader_imbalance_percentage` (Kafka's automatic preferred leader election), ms; 0: only when `wharf cluster rebalance` asks; else at least 1000",
        ),
        key(
            "leader_imbalance_percentage",
            config.leader_imbalance_percentage.to_string(),
            "the periodic check hands partitions back to a node when more than this percentage of those it is the preferred replica of (internal topics aside) are led elsewhere (Kafka's `leader.imbalance.per.broker.percentage`), 0 to 100 (100: never); `wharf cluster rebalance` hands back every one",
        ),
        key(
            "connections_max",
            config.connections_max.to_string(),
            "most client connections at once",
        ),
        key(
            "connections_per_ip_max",
            config.connections_per_ip_max.to_string(),
            "most connections open at once from one client IP address, all listeners together (0: no limit)",
        ),
        key(
            "connections_per_user_max",
            config.connections_per_user_max.to_string(),
            "most connections logged in as one user at once, native, Kafka and AMQP together (0: no limit)",
        ),
        key(
            "producer_expiry_ms",
            config.producer_expiry_ms.to_string(),
            "idle idempotent producers are forgotten after this long, ms",
        ),
        key(
            "partitions_max",
            config.partitions_max.to_string(),
            "most partitions across all topics",
        ),
        key(
            "authorization",
            format!(
                "{:?}",
                if config.authorization_required { "required" } else { "optional" }
            ),
            "\"required\": deny what no ACL allows; \"optional\": with no ACL at all, allow everything",
        ),
        key(
            "disk_free_limit_bytes",
            config.disk_free_limit_bytes.to_string(),
            "publishers are held (AMQP connection.blocked) while the data directory's disk has less free space than this; 0: never",
        ),
        key(
            "memory_high_watermark",
            config.memory_high_watermark.to_string(),
            "publishers are held (AMQP connection.blocked) while the broker's memory is above this fraction of the machine's (or cgroup's); 0: never",
        ),
        key(
            "memory_high_watermark_bytes",
            config.memory_high_watermark_bytes.to_string(),
            "the memory watermark in bytes; above 0 it overrides memory_high_watermark",
        ),
        key(
            "super_users",
            format!("{:?}", config.super_users),
            "principals (User:NAME) allowed everything whatever the ACLs say",
        ),
        key(
            "authentication",
            format!(
                "{:?}",
                config.authentication.map_or("auto", Authentication::name)
            ),
            "`required`, `optional`, or `auto`: optional while every listener binds to loopback, required otherwise (`--authentication`)",
        ),
        key(
            "authentication_timeout_ms",
            config.authentication_timeout_ms.to_string(),
            "a connection that has not logged in after this long is closed, ms",
        ),
        key(
            "login_failures_per_minute_max",
            config.login_failures_per_minute_max.to_string(),
            "failed logins one client address may make per minute before its logins are refused",
        ),
        key(
            "amqp_default_guest",
            config.amqp_default_guest.to_string(),
            "AMQP accepts guest/guest from loopback while no user exists (RabbitMQ's default user)",
        ),
        key(
            "amqp_connection_buffer_bytes_max",
            config.amqp_connection_buffer_bytes_max.to_string(),
            "most body bytes one AMQP connection may have buffered (partly received messages and open transactions, all channels); past it the connection is closed with 506",
        ),
        key(
            "log.segment_bytes_max",
            log.segment_bytes_max.to_string(),
            "a segment rolls at this size, bytes",
        ),
        key(
            "log.segment_age_ms_max",
            optional(log.segment_age_ms_max),
            "a segment rolls at this age, ms (0: never by age)",
        ),
        key(
            "log.index_interval_bytes",
            log.index_interval_bytes.to_string(),
            "bytes of log between offset index entries",
        ),
        key(
            "log.index_bytes_max",
            log.index_bytes_max.to_string(),
            "most bytes an index file grows to (they start at 4 KiB), bytes",
        ),
        key(
            "log.retention_ms",
            optional(log.retention_ms),
            "delete sealed segments older than this, ms (0: keep forever)",
        ),
        key(
            "log.retention_bytes",
            optional(log.retention_bytes),
            "delete the oldest sealed segments past this size per partition, bytes (0: no limit)",
        ),
        key(
            "log.flush",
            format!("{flush:?}"),
            "`always` (fsync before acks=all is answered), `interval` or `never`",
        ),
        key(
            "log.flush_interval_ms",
            flush_interval_ms.to_string(),
            "with `flush = \"interval\"`: how often to fsync, ms",
        ),
        key(
            "log.preallocate_ahead_bytes",
            log.preallocate_ahead_bytes.to_string(),
            "disk blocks reserved ahead of appends, bytes (0: none)",
        ),
        key(
            "quotas.producer_byte_rate",
            config.quotas.producer_byte_rate.to_string(),
            "bytes per second one principal may produce and publish, all its connections together (0: unlimited)",
        ),
        key(
            "quotas.consumer_byte_rate",
            config.quotas.consumer_byte_rate.to_string(),
            "bytes per second one principal may fetch and be delivered, all its connections together (0: unlimited)",
        ),
        key(
            "quotas.window_ms",
            config.quotas.window_ms.to_string(),
            "one sample of the quota's rate window, ms (Kafka's quota.window.size.seconds)",
        ),
        key(
            "quotas.window_count",
            config.quotas.window_count.to_string(),
            "samples in the quota's rate window (Kafka's quota.window.num)",
        ),
        key(
            "quotas.users",
            quota_users_value(&config.quotas.users),
            "per-user overrides: `{ NAME = { producer_byte_rate = N, consumer_byte_rate = N } }` (`ANONYMOUS`: unauthenticated)",
        ),
    ]
}

/// A listener setting as a TOML value: its `[SCHEME://]HOST:PORT`, or `"off"`.
fn listener_value(kind: ListenerKind, spec: Option<&ListenerSpec>) -> String {
    format!(
        "{:?}",
        spec.map_or_else(|| "off".to_string(), |spec| spec.setting(kind))
    )
}

/// The per-user quota overrides as a TOML inline table.
fn quota_users_value(users: &BTreeMap<String, UserQuota>) -> String {
    let entries: Vec<String> = users
        .iter()
        .map(|(user, quota)| {
            let mut fields = Vec::new();
            if let Some(rate) = quota.producer_byte_rate {
                fields.push(format!("producer_byte_rate = {rate}"));
            }
            if let Some(rate) = quota.consumer_byte_rate {
                fields.push(format!("consumer_byte_rate = {rate}"));
            }
            format!("{user:?} = {{ {} }}", fields.join(", "))
        })
        .collect();
    if entries.is_empty() {
        "{}".to_string()
    } else {
        format!("{{ {} }}", entries.join(", "))
    }
}

/// An optional file setting as a TOML value, `(unset)` when absent.
fn path_value(path: Option<&Path>) -> String {
    path.map_or_else(
        || "(unset)".to_string(),
        |path| format!("{:?}", path.display().to_string()),
    )
}

/// A TOML error's message with the line and column it points at (1-based), when it has one.
fn located(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return error.message().to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
    format!("line {line}, column {column}: {}", error.message())
}

/// The README's configuration table: one row per [`config_keys`] entry.
pub fn config_table() -> String {
    let mut table = String::from("| key | default | meaning |\n|---|---|---|\n");
    for key in config_keys() {
        table.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            key.key, key.default, key.meaning
        ));
    }
    table
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertised_address: Option<String>,
    kafka_listen: Option<String>,
    kafka_advertised: Option<String>,
    amqp_listen: Option<String>,
    http_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    frame_bytes_max: Option<u32>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<u32>,
    group_session_timeout_ms: Option<u32>,
    retention_check_interval_ms: Option<u64>,
    cleaner_backoff_ms: Option<u64>,
    cleaner_dedupe_buffer_bytes: Option<u64>,
    cleaner_io_bytes_per_second: Option<u64>,
    node_id: Option<u64>,
    cluster_peers: Option<String>,
    cluster_secret_file: Option<PathBuf>,
    cluster_tls_ca: Option<PathBuf>,
    cluster_insecure: Option<bool>,
    cluster_heartbeat_ms: Option<u64>,
    cluster_election_timeout_ms: Option<u64>,
    cluster_snapshot_entries: Option<u64>,
    leader_rebalance_interval_ms: Option<u64>,
    leader_imbalance_percentage: Option<u64>,
    connections_max: Option<usize>,
    connections_per_ip_max: Option<usize>,
    connections_per_user_max: Option<usize>,
    producer_expiry_ms: Option<i64>,
    partitions_max: Option<u32>,
    authorization: Option<String>,
    super_users: Option<Vec<String>>,
    disk_free_limit_bytes: Option<u64>,
    memory_high_watermark: Option<f64>,
    memory_high_watermark_bytes: Option<u64>,
    authentication: Option<String>,
    authentication_timeout_ms: Option<u64>,
    login_failures_per_minute_max: Option<usize>,
    amqp_default_guest: Option<bool>,
    amqp_connection_buffer_bytes_max: Option<u64>,
    log: Option<FileLogConfig>,
    quotas: Option<FileQuotaConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuotaConfig {
    producer_byte_rate: Option<u64>,
    consumer_byte_rate: Option<u64>,
    window_ms: Option<u64>,
    window_count: Option<u32>,
    users: Option<BTreeMap<String, UserQuota>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLogConfig {
    segment_bytes_max: Option<u64>,
    segment_age_ms_max: Option<u64>,
    index_interval_bytes: Option<u32>,
    index_bytes_max: Option<u32>,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    flush: Option<String>,
    flush_interval_ms: Option<u64>,
    preallocate_ahead_bytes: Option<u64>,
}

impl BrokerConfig {
    /// Loads `path` over the defaults.
    ///
    /// # Errors
    /// `ConfigError` naming the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: FileConfig = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: located(&text, &error),
        })?;
        let mut config = BrokerConfig::default();
        config.apply(file)?;
        Ok(config)
    }

    fn apply(&mut self, file: FileConfig) -> Result<(), ConfigError> {
        let defaults = BrokerConfig::default();
        self.data_dir = file.data_dir.unwrap_or(defaults.data_dir);
        let setting_error = |kind: ListenerKind, error: ListenerError| {
            ConfigError::Invalid(format!("{}: {error}", kind.config_key()))
        };
        self.listen = match file.listen {
            Some(listen) => ListenerSpec::parse(ListenerKind::Native, &listen)
                .map_err(|error| setting_error(ListenerKind::Native, error))?,
            None => defaults.listen,
        };
        self.advertised_address = file.advertised_address;
        for (kind, setting, spec) in [
            (
                ListenerKind::Kafka,
                file.kafka_listen,
                &mut self.kafka_listen,
            ),
            (ListenerKind::Amqp, file.amqp_listen, &mut self.amqp_listen),
            (ListenerKind::Http, file.http_listen, &mut self.http_listen),
        ] {
            if let Some(setting) = setting {
                *spec =
                    listener_setting(kind, &setting).map_err(|error| setting_error(kind, error))?;
            }
        }
        self.kafka_advertised = file.kafka_advertised;
        self.tls = TlsFiles {
            cert: file.tls_cert,
            key: file.tls_key,
            client_ca: file.tls_client_ca,
        };
        self.frame_bytes_max = file.frame_bytes_max.unwrap_or(defaults.frame_bytes_max);
        self.auto_create_topics = file.auto_create_topics.unwrap_or(true);
        self.default_partitions = file.default_partitions.unwrap_or(1);
        self.group_session_timeout_ms = file
            .group_session_timeout_ms
            .unwrap_or(defaults.group_session_timeout_ms);
        self.retention_check_interval_ms = file
            .retention_check_interval_ms
            .unwrap_or(defaults.retention_check_interval_ms);
        self.cleaner_backoff_ms = file
            .cleaner_backoff_ms
            .unwrap_or(defaults.cleaner_backoff_ms);
        self.leader_rebalance_interval_ms = file
            .leader_rebalance_interval_ms
            .unwrap_or(defaults.leader_rebalance_interval_ms);
        self.leader_imbalance_percentage = file
            .leader_imbalance_percentage
            .unwrap_or(defaults.leader_imbalance_percentage);
        self.cleaner_dedupe_buffer_bytes = file
            .cleaner_dedupe_buffer_bytes
            .unwrap_or(defaults.cleaner_dedupe_buffer_bytes);
        self.cleaner_io_bytes_per_second = file
            .cleaner_io_bytes_per_second
            .unwrap_or(defaults.cleaner_io_bytes_per_second);
        self.node_id = file.node_id.unwrap_or(defaults.node_id);
        self.cluster_peers = match file.cluster_peers {
            Some(text) => parse_peers(&text)
                .map_err(|error| ConfigError::Invalid(format!("cluster_peers: {error}")))?,
            None => defaults.cluster_peers,
        };
        self.cluster_secret_file = file.cluster_secret_file.or(defaults.cluster_secret_file);
        self.cluster_tls_ca = file.cluster_tls_ca.or(defaults.cluster_tls_ca);
        self.cluster_insecure = file.cluster_insecure.unwrap_or(defaults.cluster_insecure);
        self.cluster_heartbeat_ms = file
            .cluster_heartbeat_ms
            .unwrap_or(defaults.cluster_heartbeat_ms);
        self.cluster_election_timeout_ms = file
            .cluster_election_timeout_ms
            .unwrap_or(defaults.cluster_election_timeout_ms);
        self.cluster_snapshot_entries = file
            .cluster_snapshot_entries
            .unwrap_or(defaults.cluster_snapshot_entries);
        self.connections_max = file.connections_max.unwrap_or(defaults.connections_max);
        self.connections_per_ip_max = file
            .connections_per_ip_max
            .unwrap_or(defaults.connections_per_ip_max);
        self.connections_per_user_max = file
            .connections_per_user_max
            .unwrap_or(defaults.connections_per_user_max);
        if let Some(quotas) = file.quotas {
            let base = QuotaConfig::default();
            self.quotas = QuotaConfig {
                producer_byte_rate: quotas.producer_byte_rate.unwrap_or(base.producer_byte_rate),
                consumer_byte_rate: quotas.consumer_byte_rate.unwrap_or(base.consumer_byte_rate),
                window_ms: quotas.window_ms.unwrap_or(base.window_ms),
                window_count: quotas.window_count.unwrap_or(base.window_count),
                users: quotas.users.unwrap_or_default(),
            };
        }
        self.producer_expiry_ms = file
            .producer_expiry_ms
            .unwrap_or(defaults.producer_expiry_ms);
        self.partitions_max = file.partitions_max.unwrap_or(defaults.partitions_max);
        self.authorization_required = match file.authorization.as_deref() {
            None | Some("optional") => false,
            Some("required") => true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "authorization {other:?} is neither \"required\" nor \"optional\""
                )))
            }
        };
        self.super_users = file.super_users.unwrap_or_default();
        self.disk_free_limit_bytes = file
            .disk_free_limit_bytes
            .unwrap_or(defaults.disk_free_limit_bytes);
        self.memory_high_watermark = file
            .memory_high_watermark
            .unwrap_or(defaults.memory_high_watermark);
        self.memory_high_watermark_bytes = file
            .memory_high_watermark_bytes
            .unwrap_or(defaults.memory_high_watermark_bytes);
        if let Some(user) = self
            .super_users
            .iter()
            .find(|user| !user.starts_with("User:"))
        {
            return Err(ConfigError::Invalid(format!(
                "super_users entry {user:?} must be User:NAME"
            )));
        }
        self.authentication = match file.authentication.as_deref() {
            None => None,
            Some(text) => Authentication::parse(text).map_err(ConfigError::Invalid)?,
        };
        self.authentication_timeout_ms = file
            .authentication_timeout_ms
            .unwrap_or(defaults.authentication_timeout_ms);
        self.login_failures_per_minute_max = file
            .login_failures_per_minute_max
            .unwrap_or(defaults.login_failures_per_minute_max);
        self.amqp_default_guest = file
            .amqp_default_guest
            .unwrap_or(defaults.amqp_default_guest);
        self.amqp_connection_buffer_bytes_max = match file.amqp_connection_buffer_bytes_max {
            Some(0) => {
                return Err(ConfigError::Invalid(
                    "amqp_connection_buffer_bytes_max must be above 0".to_string(),
                ))
            }
            other => other.unwrap_or(defaults.amqp_connection_buffer_bytes_max),
        };
        if let Some(log) = file.log {
            apply_log(&mut self.log, log)?;
        }
        self.validate()
    }

    /// Checks every value against its limits.
    ///
    /// # Errors
    /// `ConfigError::Invalid` naming the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Kafka broker ids are 32-bit signed; a node's producer ids start at its id << 31.
        if self.node_id == 0 || self.node_id > NODE_ID_MAX {
            return Err(ConfigError::Invalid(format!(
                "node_id (--node-id) must be between 1 and {NODE_ID_MAX}, not {}",
                self.node_id
            )));
        }
        if self.cluster_heartbeat_ms < 10 {
            return Err(ConfigError::Invalid(format!(
                "cluster_heartbeat_ms must be at least 10, not {}",
                self.cluster_heartbeat_ms
            )));
        }
        if self.cluster_election_timeout_ms / 3 < self.cluster_heartbeat_ms
            || self.cluster_election_timeout_ms > u64::MAX / 2
        {
            return Err(ConfigError::Invalid(format!(
                "cluster_election_timeout_ms ({}) must be at least 3 heartbeats (cluster_heartbeat_ms {} × 3): a follower must miss several before it calls an election",
                self.cluster_election_timeout_ms, self.cluster_heartbeat_ms
            )));
        }
        if self.leader_imbalance_percentage > 100 {
            return Err(ConfigError::Invalid(format!(
                "leader_imbalance_percentage ({}) must be between 0 and 100",
                self.leader_imbalance_percentage
            )));
        }
        if (1..1_000).contains(&self.leader_rebalance_interval_ms) {
            return Err(ConfigError::Invalid(format!(
                "leader_rebalance_interval_ms ({}) must be 0 (never) or at least 1000: each hand-over pauses a partition's writes for about a second",
                self.leader_rebalance_interval_ms
            )));
        }
        if self.cluster_snapshot_entries == 0 {
            return Err(ConfigError::Invalid(
                "cluster_snapshot_entries must be at least 1".to_string(),
            ));
        }
        if !self.cluster_peers.is_empty() && !self.cluster_peers.contains_key(&self.node_id) {
            return Err(ConfigError::Invalid(format!(
                "cluster_peers (--cluster-peers) must list this node, {}, with its own HOST:PORT",
                self.node_id
            )));
        }
        if self.frame_bytes_max < 1024 {
            return Err(ConfigError::Invalid(format!(
                "frame_bytes_max {} is below 1024",
                self.frame_bytes_max
            )));
        }
        if !(1..=PARTITIONS_MAX).contains(&self.default_partitions) {
            return Err(ConfigError::Invalid(format!(
                "default_partitions {} outside [1, {PARTITIONS_MAX}]",
                self.default_partitions
            )));
        }
        if self.group_session_timeout_ms < 100 {
            return Err(ConfigError::Invalid(
                "group_session_timeout_ms must be at least 100".to_string(),
            ));
        }
        if self.connections_max == 0 {
            return Err(ConfigError::Invalid(
                "connections_max must be positive".to_string(),
            ));
        }
        if !(0.0..=1.0).contains(&self.memory_high_watermark) {
            return Err(ConfigError::Invalid(format!(
                "memory_high_watermark {} is not a fraction of the memory between 0 and 1 (use memory_high_watermark_bytes for a size)",
                self.memory_high_watermark
            )));
        }
        self.log
            .validate()
            .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        if let Some(advertised) = &self.advertised_address {
            parse_host_port(advertised).map_err(ConfigError::Invalid)?;
        }
        if let Some(advertised) = &self.kafka_advertised {
            parse_host_port(advertised)
                .map_err(|error| ConfigError::Invalid(format!("kafka_advertised: {error}")))?;
        }
        if self.quotas.window_ms < QUOTA_WINDOW_MS_MIN {
            return Err(ConfigError::Invalid(format!(
                "quotas.window_ms {} is below {QUOTA_WINDOW_MS_MIN}",
                self.quotas.window_ms
            )));
        }
        if !(2..=QUOTA_WINDOW_COUNT_MAX).contains(&self.quotas.window_count) {
            return Err(ConfigError::Invalid(format!(
                "quotas.window_count {} outside [2, {QUOTA_WINDOW_COUNT_MAX}]",
                self.quotas.window_count
            )));
        }
        if self.login_failures_per_minute_max == 0 {
            return Err(ConfigError::Invalid(
                "login_failures_per_minute_max must be positive".to_string(),
            ));
        }
        if self.authentication_timeout_ms < 100 {
            return Err(ConfigError::Invalid(
                "authentication_timeout_ms must be at least 100".to_string(),
            ));
        }
        self.validate_tls()
    }

    /// The listeners that are on, with their kinds.
    pub fn listeners(&self) -> Vec<(ListenerKind, &ListenerSpec)> {
        let mut listeners = vec![(ListenerKind::Native, &self.listen)];
        for (kind, spec) in [
            (ListenerKind::Kafka, &self.kafka_listen),
            (ListenerKind::Amqp, &self.amqp_listen),
            (ListenerKind::Http, &self.http_listen),
        ] {
            if let Some(spec) = spec {
                listeners.push((kind, spec));
            }
        }
        listeners
    }

    /// A TLS listener needs a certificate and its key; the key needs a certificate and the
    /// certificate a key; a client CA needs a certificate to ask for client certificates with.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        if let Some((kind, spec)) = self.listeners().into_iter().find(|(_, spec)| spec.tls) {
            if tls.cert.is_none() || tls.key.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "the {} listener {} ({}) speaks TLS but no certificate is configured: give --tls-cert FILE and --tls-key FILE (or `tls_cert` and `tls_key` in the config file)",
                    kind.name(),
                    spec.setting(kind),
                    kind.flag()
                )));
            }
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => Err(ConfigError::Invalid(
                "--tls-cert (`tls_cert`) is set without --tls-key (`tls_key`)".to_string(),
            )),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "--tls-key (`tls_key`) is set without --tls-cert (`tls_cert`)".to_string(),
            )),
            (None, None) if tls.client_ca.is_some() => Err(ConfigError::Invalid(
                "--tls-client-ca (`tls_client_ca`) is set without --tls-cert and --tls-key: mutual TLS needs the server's own certificate".to_string(),
            )),
            (None, None) if self.cluster_tls_ca.is_some() => Err(ConfigError::Invalid(
                "--cluster-tls-ca (`cluster_tls_ca`) is set without --tls-cert and --tls-key: each node presents that certificate to the others".to_string(),
            )),
            _ => Ok(()),
        }
    }
}

/// The certificate files of the TLS listeners (PEM). One certificate serves every TLS
/// listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`--tls-cert`, `tls_cert`).
    pub cert: Option<PathBuf>,
    /// The private key of the leaf certificate (`--tls-key`, `tls_key`).
    pub key: Option<PathBuf>,
    /// CA certificates that clients must present a certificate from (`--tls-client-ca`,
    /// `tls_client_ca`); `None`: no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// Which front end a listener serves: it decides the schemes its address may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// The native protocol (`--listen`).
    Native,
    /// The Kafka wire protocol (`--kafka-listen`).
    Kafka,
    /// AMQP 0-9-1 (`--amqp-listen`).
    Amqp,
    /// HTTP (`--http-listen`).
    Http,
}

impl ListenerKind {
    /// The command-line flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            ListenerKind::Native => "--listen",
            ListenerKind::Kafka => "--kafka-listen",
            ListenerKind::Amqp => "--amqp-listen",
            ListenerKind::Http => "--http-listen",
        }
    }

    /// The configuration file key that sets it.
    pub fn config_key(self) -> &'static str {
        match self {
            ListenerKind::Native => "listen",
            ListenerKind::Kafka => "kafka_listen",
            ListenerKind::Amqp => "amqp_listen",
            ListenerKind::Http => "http_listen",
        }
    }

    /// Its name among a node's registered addresses in the cluster's metadata (issue #20).
    pub fn registered_name(self) -> &'static str {
        match self {
            ListenerKind::Native => "native",
            ListenerKind::Kafka => "kafka",
            ListenerKind::Amqp => "amqp",
            ListenerKind::Http => "http",
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Native => "native",
            ListenerKind::Kafka => "Kafka",
            ListenerKind::Amqp => "AMQP",
            ListenerKind::Http => "HTTP",
        }
    }

    /// The schemes it accepts, the plaintext one first.
    fn schemes(self) -> &'static [Scheme] {
        match self {
            ListenerKind::Native | ListenerKind::Kafka => &KAFKA_SCHEMES,
            ListenerKind::Amqp => &AMQP_SCHEMES,
            ListenerKind::Http => &HTTP_SCHEMES,
        }
    }

    /// Which listener a scheme it does not accept belongs to, for the error message.
    fn owner_of(scheme: &str) -> Option<ListenerKind> {
        [ListenerKind::Kafka, ListenerKind::Amqp, ListenerKind::Http]
            .into_iter()
            .find(|kind| kind.schemes().iter().any(|known| known.name == scheme))
    }
}

/// A listener's address and what it speaks there, parsed once from its setting
/// (`[SCHEME://]HOST:PORT`, Kafka's listener scheme names).
///
/// | scheme | listeners | `tls` | `sasl` |
/// |---|---|---|---|
/// | none, `plaintext` | native, Kafka | no | no |
/// | `ssl` | native, Kafka | yes | no |
/// | `sasl_plaintext` | native, Kafka | no | yes |
/// | `sasl_ssl` | native, Kafka | yes | yes |
/// | none, `amqp` / `amqps` | AMQP | no / yes | no |
/// | none, `http` / `https` | HTTP | no / yes | no |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// `HOST:PORT` to bind (port 0: the kernel picks one).
    pub address: String,
    /// Connections speak TLS (certificate from [`TlsFiles`]).
    pub tls: bool,
    /// Clients must authenticate with SASL before anything else (Kafka's `sasl_*`
    /// schemes). Always false for AMQP and HTTP, whose authentication is their own.
    pub sasl: bool,
}

/// One scheme: its name and what it turns on.
#[derive(Debug)]
struct Scheme {
    name: &'static str,
    tls: bool,
    sasl: bool,
}

const KAFKA_SCHEMES: [Scheme; 4] = [
    Scheme {
        name: "plaintext",
        tls: false,
        sasl: false,
    },
    Scheme {
        name: "ssl",
        tls: true,
        sasl: false,
    },
    Scheme {
        name: "sasl_plaintext",
        tls: false,
        sasl: true,
    },
    Scheme {
        name: "sasl_ssl",
        tls: true,
        sasl: true,
    },
];
const AMQP_SCHEMES: [Scheme; 2] = [
    Scheme {
        name: "amqp",
        tls: false,
        sasl: false,
    },
    Scheme {
        name: "amqps",
        tls: true,
        sasl: false,
    },
];
const HTTP_SCHEMES: [Scheme; 2] = [
    Scheme {
        name: "http",
        tls: false,
        sasl: false,
    },
    Scheme {
        name: "https",
        tls: true,
        sasl: false,
    },
];

/// Why a listener setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerError {
    /// A scheme no listener knows.
    #[error("unknown scheme {scheme}:// in {setting:?}; the {listener} listener takes {accepted}")]
    UnknownScheme {
        setting: String,
        scheme: String,
        listener: &'static str,
        accepted: String,
    },
    /// A scheme of another listener (`amqps://` on the Kafka listener).
    #[error("scheme {scheme}:// in {setting:?} is for {owner_flag}; the {listener} listener takes {accepted}")]
    WrongListener {
        setting: String,
        scheme: String,
        owner_flag: &'static str,
        listener: &'static str,
        accepted: String,
    },
    /// The part after the scheme is not `HOST:PORT`.
    #[error("{0}")]
    BadAddress(String),
}

impl ListenerSpec {
    /// A plaintext listener on `address` (no scheme).
    pub fn plaintext(address: impl Into<String>) -> ListenerSpec {
        ListenerSpec {
            address: address.into(),
            tls: false,
            sasl: false,
        }
    }

    /// Parses `[SCHEME://]HOST:PORT` for a listener of `kind`; the scheme is matched
    /// without regard to case (`SASL_SSL://` as Kafka writes it).
    ///
    /// # Errors
    /// [`ListenerError`] for an unknown scheme, a scheme of another listener, or an address
    /// that is not `HOST:PORT`.
    pub fn parse(kind: ListenerKind, setting: &str) -> Result<ListenerSpec, ListenerError> {
        let (scheme, address) = match setting.split_once("://") {
            Some((scheme, address)) => (Some(scheme.to_ascii_lowercase()), address),
            None => (None, setting),
        };
        let accepted = || {
            kind.schemes()
                .iter()
                .map(|scheme| format!("{}://", scheme.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (tls, sasl) = match &scheme {
            None => (false, false),
            Some(name) => match kind.schemes().iter().find(|known| known.name == name) {
                Some(known) => (known.tls, known.sasl),
                None => {
                    return Err(match ListenerKind::owner_of(name) {
                        Some(owner) => ListenerError::WrongListener {
                            setting: setting.to_string(),
                            scheme: name.clone(),
                            owner_flag: owner.flag(),
                            listener: kind.name(),
                            accepted: accepted(),
                        },
                        None => ListenerError::UnknownScheme {
                            setting: setting.to_string(),
                            scheme: name.clone(),
                            listener: kind.name(),
                            accepted: accepted(),
                        },
                    })
                }
            },
        };
        parse_host_port(address).map_err(ListenerError::BadAddress)?;
        Ok(ListenerSpec {
            address: address.to_string(),
            tls,
            sasl,
        })
    }

    /// The scheme name for a listener of `kind` (`ssl`, `amqps`, ...).
    pub fn scheme(&self, kind: ListenerKind) -> &'static str {
        kind.schemes()
            .iter()
            .find(|scheme| scheme.tls == self.tls && scheme.sasl == self.sasl)
            .map_or("plaintext", |scheme| scheme.name)
    }

    /// The setting that [`ListenerSpec::parse`] reads back for a listener of `kind`: the
    /// bare `HOST:PORT` for plaintext (as it is usually written), else `SCHEME://HOST:PORT`.
    pub fn setting(&self, kind: ListenerKind) -> String {
        if !self.tls && !self.sasl {
            return self.address.clone();
        }
        format!("{}://{}", self.scheme(kind), self.address)
    }
}

impl BrokerConfig {
    /// Whether connections must log in, given the addresses the listeners are bound to: the
    /// `authentication` setting when there is one; otherwise optional while every listener
    /// binds to loopback (the quickstart needs no setup) and required as soon as one binds
    /// beyond it (reachable by others: issue #18).
    ///
    /// This is the one place the decision is made. When listeners get a per-listener SASL
    /// setting (the `sasl_plaintext://` and `sasl_ssl://` schemes), it plugs in here.
    pub fn authentication_mode(&self, bound: &[SocketAddr]) -> Authentication {
        match self.authentication {
            Some(mode) => mode,
            None if bound.iter().all(|address| address.ip().is_loopback()) => {
                Authentication::Optional
            }
            None => Authentication::Required,
        }
    }
}

fn apply_log(log: &mut LogConfig, file: FileLogConfig) -> Result<(), ConfigError> {
    if let Some(bytes) = file.segment_bytes_max {
        log.segment_bytes_max = bytes;
    }
    if let Some(age) = file.segment_age_ms_max {
        log.segment_age_ms_max = (age > 0).then_some(age);
    }
    if let Some(interval) = file.index_interval_bytes {
        log.index_interval_bytes = interval;
    }
    if let Some(bytes) = file.index_bytes_max {
        log.index_bytes_max = bytes;
    }
    if let Some(retention) = file.retention_ms {
        log.retention_ms = (retention > 0).then_some(retention);
    }
    if let Some(retention) = file.retention_bytes {
        log.retention_bytes = (retention > 0).then_some(retention);
    }
    if let Some(bytes) = file.preallocate_ahead_bytes {
        log.preallocate_ahead_bytes = bytes;
    }
    if let Some(flush) = file.flush {
        let interval_ms = file.flush_interval_ms.unwrap_or(1000);
        log.flush = parse_flush(&flush, interval_ms).map_err(ConfigError::Invalid)?;
    }
    Ok(())
}

/// A listener setting: `off` turns the listener off, anything else is its
/// `[SCHEME://]HOST:PORT` ([`ListenerSpec::parse`]).
///
/// # Errors
/// As [`ListenerSpec::parse`].
pub fn listener_setting(
    kind: ListenerKind,
    setting: &str,
) -> Result<Option<ListenerSpec>, ListenerError> {
    if setting == "off" {
        return Ok(None);
    }
    ListenerSpec::parse(kind, setting).map(Some)
}

/// Parses a flush policy name.
///
/// # Errors
/// A message naming the allowed values.
pub fn parse_flush(name: &str, interval_ms: u64) -> Result<FlushPolicy, String> {
    match name {
        "always" => Ok(FlushPolicy::Always),
        "interval" => Ok(FlushPolicy::Interval { interval_ms }),
        "never" => Ok(FlushPolicy::Never),
        other => Err(format!(
            "flush {other:?} is not one of always, interval, never"
        )),
    }
}

/// Splits `host:port`.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_host_port(address: &str) -> Result<(String, u16), String> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Ok((socket.ip().to_string(), socket.port()));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("address {address:?} is not host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("address {address:?} has an invalid port"))?;
    if host.is_empty() {
        return Err(format!("address {address:?} has an empty host"));
    }
    Ok((host.to_string(), port))
}

/// Applies a topic's config overrides (Kafka-style keys) to a log config.
///
/// # Errors
/// A message naming the bad key or value.
pub fn apply_topic_overrides(
    log: &mut LogConfig,
    overrides: &[(String, String)],
) -> Result<(), String> {
    for (key, value) in overrides {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("config {key}={value:?} is not a non-negative integer"))
        };
        match key.as_str() {
            "retention.ms" => log.retention_ms = Some(number()?).filter(|ms| *ms > 0),
            "retention.bytes" => log.retention_bytes = Some(number()?).filter(|bytes| *bytes > 0),
            // Checked here, not only by `LogConfig::validate`, so that the error names the
            // key the user wrote rather than the storage field it sets.
            "segment.bytes" => {
                let bytes = number()?;
                if !(SEGMENT_BYTES_MIN_LIMIT..=SEGMENT_BYTES_MAX_LIMIT).contains(&bytes) {
                    return Err(format!(
                        "config segment.bytes={bytes} is outside [{SEGMENT_BYTES_MIN_LIMIT}, {SEGMENT_BYTES_MAX_LIMIT}] bytes"
                    ));
                }
                log.segment_bytes_max = bytes;
            }
            "segment.ms" => log.segment_age_ms_max = Some(number()?).filter(|ms| *ms > 0),
            "flush" => log.flush = parse_flush(value, 1000)?,
            // Checked by the produce path (streams), not by storage.
            "max.message.bytes" => {
                let bytes = number()?;
                if !(1..=i32::MAX as u64).contains(&bytes) {
                    return Err(format!(
                        "config max.message.bytes={bytes} is outside [1, {}] bytes",
                        i32::MAX
                    ));
                }
            }
            "cleanup.policy" => {
                log.cleanup = CleanupPolicy::parse(value).ok_or_else(|| {
                    format!(
                        "config cleanup.policy={value:?} is not one of \"delete\", \"compact\", \"compact,delete\""
                    )
                })?;
            }
            "min.cleanable.dirty.ratio" => {
                let ratio = value
                    .parse::<f64>()
                    .ok()
                    .filter(|ratio| (0.0..=1.0).contains(ratio))
                    .ok_or_else(|| {
                        format!("config {key}={value:?} is not a number between 0 and 1")
                    })?;
                log.compaction.min_cleanable_dirty_ratio_permille = (ratio * 1000.0).round() as u32;
            }
            "min.compaction.lag.ms" => log.compaction.min_compaction_lag_ms = number()?,
            // Kafka's default is Long.MAX_VALUE: no bound.
            "max.compaction.lag.ms" => {
                let ms = number()?;
                if ms == 0 {
                    return Err(format!("config {key}={value:?} must be positive"));
                }
                log.compaction.max_compaction_lag_ms = (ms < i64::MAX as u64).then_some(ms);
            }
            "delete.retention.ms" => log.compaction.delete_retention_ms = number()?,
            // Kafka's names for what Wharf does one way only (so far): accepted with that
            // value, so Kafka tools that set them explicitly keep working.
            "message.timestamp.type" => {
                if value != "CreateTime" {
                    return Err(format!(
                        "config message.timestamp.type={value:?} is not supported: only \"CreateTime\""
                    ));
                }
            }
            // Checked against the topic's replication factor by the core
            // (`Broker::check_min_insync`): at most the majority of its replicas.
            "min.insync.replicas" => {
                if !matches!(value.parse::<u32>(), Ok(1..)) {
                    return Err(format!(
                        "config min.insync.replicas={value:?} must be a whole number from 1"
                    ));
                }
            }
            other => return Err(format!("unknown topic config {other:?}")),
        }
    }
    log.validate().map_err(|error| error.to_string())
}

/// Every topic config key with its value in `log`, sorted by key: what a topic that
/// overrides nothing runs with. `0` stands for "no limit", as in overrides.
pub fn topic_config_values(log: &LogConfig) -> Vec<(&'static str, String)> {
    let limit = |value: Option<u64>| value.unwrap_or(0).to_string();
    let flush = match log.flush {
        FlushPolicy::Always => "always",
        FlushPolicy::Interval { .. } => "interval",
        FlushPolicy::Never => "never",
    };
    let compaction = &log.compaction;
    let ratio = f64::from(compaction.min_cleanable_dirty_ratio_permille) / 1000.0;
    vec![
        ("cleanup.policy", log.cleanup.name().to_string()),
        (
            "delete.retention.ms",
            compaction.delete_retention_ms.to_string(),
        ),
        ("flush", flush.to_string()),
        (
            "max.compaction.lag.ms",
            compaction
                .max_compaction_lag_ms
                .unwrap_or(i64::MAX as u64)
                .to_string(),
        ),
        ("max.message.bytes", MESSAGE_BYTES_MAX_DEFAULT.to_string()),
        ("message.timestamp.type", "CreateTime".to_string()),
        ("min.cleanable.dirty.ratio", ratio.to_string()),
        (
            "min.compaction.lag.ms",
            compaction.min_compaction_lag_ms.to_string(),
        ),
        ("min.insync.replicas", "1".to_string()),
        ("retention.bytes", limit(log.retention_bytes)),
        ("retention.ms", limit(log.retention_ms)),
        ("segment.bytes", log.segment_bytes_max.to_string()),
        ("segment.ms", limit(log.segment_age_ms_max)),
    ]
}

/// Parses `--cluster-peers`: `ID@HOST:PORT` entries separated by commas.
///
/// # Errors
/// A message naming the bad entry.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| format!("cluster peer {entry:?} is not ID@HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .map_err(|_| format!("cluster peer {entry:?}: {id:?} is not a node id"))?;
        if id == 0 {
            return Err(format!("cluster peer {entry:?}: node ids start at 1"));
        }
        if addr
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(format!("cluster peer {entry:?}: {addr:?} is not HOST:PORT"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("cluster peer {id} is listed twice"));
        }
    }
    Ok(peers)
}

/// `--cluster-peers` as it is written: `ID@HOST:PORT` entries joined by commas.
pub fn peers_text(peers: &std::collections::BTreeMap<u64, String>) -> String {
    peers
        .iter()
        .map(|(id, addr)| format!("{id}@{addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_is_optional_on_loopback_only_and_required_beyond_unless_set() {
        let loopback: SocketAddr = "127.0.0.1:7420".parse().expect("address");
        let ipv6_loopback: SocketAddr = "[::1]:9092".parse().expect("address");
        let everywhere: SocketAddr = "0.0.0.0:5672".parse().expect("address");
        let mut config = BrokerConfig::default();
        assert_eq!(
            config.authentication_mode(&[loopback, ipv6_loopback]),
            Authentication::Optional
        );
        assert_eq!(
            config.authentication_mode(&[loopback, everywhere]),
            Authentication::Required
        );
        config.authentication = Some(Authentication::Optional);
        assert_eq!(
            config.authentication_mode(&[everywhere]),
            Authentication::Optional
        );
        config.authentication = Some(Authentication::Required);
        assert_eq!(
            config.authentication_mode(&[loopback]),
            Authentication::Required
        );
        assert_eq!(Authentication::parse("auto"), Ok(None));
        assert!(Authentication::parse("sometimes").is_err());
    }

    #[test]
    fn topic_config_values_name_every_key_and_apply_back_unchanged() {
        for flush in [FlushPolicy::Always, FlushPolicy::Never] {
            let base = LogConfig {
                flush,
                retention_bytes: Some(4096),
                ..LogConfig::default()
            };
            let values: Vec<(String, String)> = topic_config_values(&base)
                .into_iter()
                .map(|(key, value)| (key.to_string(), value))
                .collect();
            let mut applied = LogConfig {
                retention_ms: None,
                segment_bytes_max: 1 << 20,
                ..LogConfig::default()
            };
            apply_topic_overrides(&mut applied, &values).unwrap();
            assert_eq!(applied, base);
        }
    }

    #[test]
    fn file_config_overrides_defaults() {
        let file: FileConfig = toml::from_str(
            "listen = \"0.0.0.0:9000\"\ndefault_partitions = 3\n[log]\nflush = \"interval\"\nflush_interval_ms = 50\nretention_bytes = 0\nindex_bytes_max = 65536\n",
        )
        .unwrap();
        let mut config = BrokerConfig::default();
        config.apply(file).unwrap();
        assert_eq!(config.listen, ListenerSpec::plaintext("0.0.0.0:9000"));
        assert_eq!(config.default_partitions, 3);
        assert_eq!(config.log.flush, FlushPolicy::Interval { interval_ms: 50 });
        assert_eq!(config.log.retention_bytes, None);
        assert_eq!(config.log.index_bytes_max, 65536);
    }

    /// The keys serde lists as expected when `toml` holds an unknown one.
    fn accepted_keys<T: for<'de> Deserialize<'de> + std::fmt::Debug>(toml: &str) -> Vec<String> {
        let error = toml::from_str::<T>(toml)
            .expect_err("an unknown key")
            .to_string();
        let listed = error
            .split("expected one of ")
            .nth(1)
            .or_else(|| error.split("expected ").nth(1))
            .unwrap_or_else(|| panic!("no key list in {error:?}"));
        listed
            .split(',')
            .map(|key| {
                key.trim()
                    .trim_matches(|c: char| c == '`' || c.is_whitespace())
            })
            .map(|key| key.split('`').next().unwrap_or(key).to_string())
            .filter(|key| !key.is_empty())
            .collect()
    }

    #[test]
    fn documented_keys_are_exactly_the_accepted_keys_and_parse_with_their_defaults() {
        let mut accepted: Vec<String> = accepted_keys::<FileConfig>("no_such_key = 1")
            .into_iter()
            .filter(|key| key != "log" && key != "quotas")
            .collect();
        accepted.extend(
            accepted_keys::<FileConfig>("[log]\nno_such_key = 1")
                .into_iter()
                .map(|key| format!("log.{key}")),
        );
        accepted.extend(
            accepted_keys::<FileConfig>("[quotas]\nno_such_key = 1")
                .into_iter()
                .map(|key| format!("quotas.{key}")),
        );
        accepted.sort();
        let mut documented: Vec<String> = config_keys()
            .iter()
            .map(|key| key.key.to_string())
            .collect();
        documented.sort();
        assert_eq!(documented, accepted);
        // Every documented default is valid TOML of the right type, and applies.
        let mut top = String::new();
        let mut log = String::from("[log]\n");
        let mut quotas = String::from("[quotas]\n");
        for key in config_keys() {
            if key.default == "(unset)" {
                continue;
            }
            if let Some(name) = key.key.strip_prefix("quotas.") {
                quotas.push_str(&format!("{name} = {}\n", key.default));
                continue;
            }
            match key.key.strip_prefix("log.") {
                Some(name) => log.push_str(&format!("{name} = {}\n", key.default)),
                None => top.push_str(&format!("{} = {}\n", key.key, key.default)),
            }
        }
        let file: FileConfig =
            toml::from_str(&format!("{top}{log}{quotas}")).expect("defaults parse");
        let mut config = BrokerConfig::default();
        config.apply(file).expect("defaults apply");
        assert_eq!(config, BrokerConfig::default());
    }

    #[test]
    fn readme_shows_the_configuration_table() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .expect("README.md");
        assert!(
            readme.contains(&config_table()),
            "README.md's configuration table is out of date; it must contain:\n{}",
            config_table()
        );
    }

    #[test]
    fn a_toml_error_names_its_line_and_column() {
        let text = "listen = \"x\"\n[log]\nflush = 3\n";
        let error = toml::from_str::<FileConfig>(text).expect_err("flush is not a string");
        let message = located(text, &error);
        assert!(message.starts_with("line 3, column 9: "), "{message}");
    }

    #[test]
    fn peers_parse_and_bad_ones_are_named() {
        let peers = parse_peers("1@127.0.0.1:7001, 2@localhost:7002").unwrap();
        assert_eq!(peers[&2], "localhost:7002");
        assert_eq!(peers_text(&peers), "1@127.0.0.1:7001,2@localhost:7002");
        assert!(parse_peers("1@x:1,1@y:2").unwrap_err().contains("twice"));
        assert!(parse_peers("one@x:1")
            .unwrap_err()
            .contains("not a node id"));
        assert!(parse_peers("1@x").unwrap_err().contains("HOST:PORT"));
        assert!(parse_peers("0@x:1").unwrap_err().contains("start at 1"));
        assert!(parse_peers("1:x:1").unwrap_err().contains("ID@HOST:PORT"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<FileConfig>("listn = \"x\"").is_err());
    }

    #[test]
    fn bad_values_are_rejected() {
        let file: FileConfig = toml::from_str("default_partitions = 0").unwrap();
        assert!(BrokerConfig::default().apply(file).is_err());
        let file: FileConfig = toml::from_str("[log]\nflush = \"sometimes\"").unwrap();
        assert!(BrokerConfig::default().apply(file).is_err());
        let mut config = BrokerConfig {
            memory_high_watermark: 1.5,
            ..BrokerConfig::default()
        };
        let error = config.validate().expect_err("not a fraction").to_string();
        assert!(error.contains("memory_high_watermark 1.5"), "{error}");
        config.memory_high_watermark = 0.6;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn the_metadata_log_timing_is_read_and_checked() {
        let file: FileConfig = toml::from_str(
            "cluster_heartbeat_ms = 50\ncluster_election_timeout_ms = 300\ncluster_snapshot_entries = 10\nleader_imbalance_percentage = 25",
        )
        .expect("parse");
        let mut config = BrokerConfig::default();
        assert_eq!(config.leader_imbalance_percentage, 10, "Kafka's default");
        config.apply(file).expect("valid timing");
        assert_eq!(
            (
                config.cluster_heartbeat_ms,
                config.cluster_election_timeout_ms,
                config.cluster_snapshot_entries,
                config.leader_imbalance_percentage
            ),
            (50, 300, 10, 25)
        );
        for (text, named) in [
            ("cluster_heartbeat_ms = 5", "cluster_heartbeat_ms"),
            ("cluster_election_timeout_ms = 250", "at least 3 heartbeats"),
            ("cluster_snapshot_entries = 0", "cluster_snapshot_entries"),
            (
                "leader_imbalance_percentage = 101",
                "leader_imbalance_percentage (101) must be between 0 and 100",
            ),
        ] {
            let file: FileConfig = toml::from_str(text).expect("parse");
            let error = BrokerConfig::default()
                .apply(file)
                .expect_err(text)
                .to_string();
            assert!(error.contains(named), "{text}: {error}");
        }
    }

    #[test]
    fn topic_overrides_parse() {
        let mut log = LogConfig::default();
        apply_topic_overrides(&mut log, &[("retention.ms".into(), "1000".into())]).unwrap();
        assert_eq!(log.retention_ms, Some(1000));
        assert!(apply_topic_overrides(&mut log, &[("nope".into(), "1".into())]).is_err());
        let too_small = apply_topic_overrides(&mut log, &[("segment.bytes".into(), "10".into())]);
        assert_eq!(
            too_small.unwrap_err(),
            "config segment.bytes=10 is outside [65536, 2147483647] bytes",
            "named by the key the user wrote, not the storage field"
        );
    }

    /// Parses `setting` for `kind` and checks what it turns on.
    fn check_listener(kind: ListenerKind, setting: &str, address: &str, tls: bool, sasl: bool) {
        let spec = ListenerSpec::parse(kind, setting)
            .unwrap_or_else(|error| panic!("{setting:?} on {}: {error}", kind.flag()));
        assert_eq!(
            spec,
            ListenerSpec {
                address: address.to_string(),
                tls,
                sasl
            },
            "{setting:?}"
        );
        // What the configuration documents reads back as the same listener.
        assert_eq!(ListenerSpec::parse(kind, &spec.setting(kind)), Ok(spec));
    }

    #[test]
    fn listener_schemes_parse_for_their_listeners() {
        for kind in [ListenerKind::Native, ListenerKind::Kafka] {
            check_listener(kind, "127.0.0.1:9092", "127.0.0.1:9092", false, false);
            check_listener(kind, "plaintext://h:1", "h:1", false, false);
            check_listener(kind, "ssl://h:1", "h:1", true, false);
            check_listener(kind, "sasl_plaintext://h:1", "h:1", false, true);
            check_listener(kind, "sasl_ssl://[::1]:9093", "[::1]:9093", true, true);
            check_listener(kind, "SASL_SSL://h:1", "h:1", true, true);
        }
        check_listener(ListenerKind::Amqp, "h:5672", "h:5672", false, false);
        check_listener(ListenerKind::Amqp, "amqp://h:5672", "h:5672", false, false);
        check_listener(ListenerKind::Amqp, "amqps://h:5671", "h:5671", true, false);
        check_listener(ListenerKind::Http, "h:80", "h:80", false, false);
        check_listener(ListenerKind::Http, "http://h:80", "h:80", false, false);
        check_listener(
            ListenerKind::Http,
            "https://0.0.0.0:0",
            "0.0.0.0:0",
            true,
            false,
        );
    }

    #[test]
    fn a_scheme_of_another_listener_names_the_flag_it_belongs_to() {
        let cases = [
            (ListenerKind::Kafka, "amqps://h:1", "--amqp-listen"),
            (ListenerKind::Native, "https://h:1", "--http-listen"),
            (ListenerKind::Amqp, "ssl://h:1", "--kafka-listen"),
            (ListenerKind::Amqp, "sasl_ssl://h:1", "--kafka-listen"),
            (ListenerKind::Http, "amqp://h:1", "--amqp-listen"),
        ];
        for (kind, setting, owner) in cases {
            let error = ListenerSpec::parse(kind, setting).expect_err(setting);
            assert!(
                matches!(&error, ListenerError::WrongListener { owner_flag, .. } if *owner_flag == owner),
                "{setting:?} on {}: {error:?}",
                kind.flag()
            );
        }
        let message = ListenerSpec::parse(ListenerKind::Kafka, "amqps://h:1")
            .expect_err("amqps on Kafka")
            .to_string();
        assert_eq!(
            message,
            "scheme amqps:// in \"amqps://h:1\" is for --amqp-listen; the Kafka listener takes plaintext://, ssl://, sasl_plaintext://, sasl_ssl://"
        );
    }

    #[test]
    fn unknown_schemes_and_bad_addresses_are_refused() {
        let error = ListenerSpec::parse(ListenerKind::Kafka, "tls://h:1").expect_err("tls://");
        assert_eq!(
            error.to_string(),
            "unknown scheme tls:// in \"tls://h:1\"; the Kafka listener takes plaintext://, ssl://, sasl_plaintext://, sasl_ssl://"
        );
        for setting in ["ssl://", "ssl://h", "amqps://:1", "h:port", ""] {
            let kind = if setting.starts_with("amqps") {
                ListenerKind::Amqp
            } else {
                ListenerKind::Kafka
            };
            assert!(
                matches!(
                    ListenerSpec::parse(kind, setting),
                    Err(ListenerError::BadAddress(_))
                ),
                "{setting:?}"
            );
        }
        assert_eq!(listener_setting(ListenerKind::Http, "off"), Ok(None));
    }

    #[test]
    fn a_bad_listener_in_the_file_names_its_key() {
        let file: FileConfig = toml::from_str("kafka_listen = \"amqps://h:1\"").unwrap();
        let error = BrokerConfig::default().apply(file).expect_err("mismatch");
        assert!(
            error
                .to_string()
                .starts_with("invalid config: kafka_listen: scheme amqps://"),
            "{error}"
        );
    }

    #[test]
    fn a_tls_listener_needs_a_certificate_and_key() {
        let file: FileConfig = toml::from_str("http_listen = \"https://127.0.0.1:0\"").unwrap();
        let error = BrokerConfig::default()
            .apply(file)
            .expect_err("no certificate");
        let message = error.to_string();
        assert!(
            message.contains("--tls-cert FILE and --tls-key FILE"),
            "{message}"
        );
        assert!(
            message.contains("HTTP listener https://127.0.0.1:0 (--http-listen)"),
            "{message}"
        );
        let file: FileConfig = toml::from_str(
            "http_listen = \"https://127.0.0.1:0\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"",
        )
        .unwrap();
        let mut config = BrokerConfig::default();
        config.apply(file).expect("with a certificate");
        assert!(config.http_listen.as_ref().is_some_and(|spec| spec.tls));
        let file: FileConfig = toml::from_str("tls_cert = \"c.pem\"").unwrap();
        let error = BrokerConfig::default().apply(file).expect_err("no key");
        assert!(error.to_string().contains("without --tls-key"), "{error}");
        let file: FileConfig = toml::from_str("tls_client_ca = \"ca.pem\"").unwrap();
        let error = BrokerConfig::default()
            .apply(file)
            .expect_err("no certificate");
        assert!(error.to_string().contains("--tls-client-ca"), "{error}");
        // The cluster's TLS presents the node's certificate: it needs one.
        let file: FileConfig = toml::from_str("cluster_tls_ca = \"ca.pem\"").unwrap();
        let error = BrokerConfig::default()
            .apply(file)
            .expect_err("no certificate");
        assert!(error.to_string().contains("--cluster-tls-ca"), "{error}");
        let file: FileConfig = toml::from_str(
            "cluster_tls_ca = \"ca.pem\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"",
        )
        .unwrap();
        let mut config = BrokerConfig::default();
        config.apply(file).expect("with a certificate");
        assert_eq!(config.cluster_tls_ca.as_deref(), Some(Path::new("ca.pem")));
    }

    #[test]
    fn host_port_parses() {
        assert_eq!(
            parse_host_port("127.0.0.1:7420").unwrap(),
            ("127.0.0.1".into(), 7420)
        );
        assert_eq!(
            parse_host_port("broker.local:1").unwrap(),
            ("broker.local".into(), 1)
        );
        assert!(parse_host_port("nohost").is_err());
        assert!(parse_host_port(":12").is_err());
    }
}
