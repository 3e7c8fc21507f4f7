//! `GET /metrics`: the Prometheus text format (version 0.0.4), encoded by the official
//! `prometheus-client` crate from one collector built per scrape.
//!
//! Nothing is counted here: the counters live in [`crate::metrics`] (atomics the broker's
//! layers update per batch or request), and the gauges are the core's state read at scrape
//! time ([`Broker::observe`](crate::core::Broker::observe)). docs/METRICS.md lists every name,
//! type and label; the label sets are bounded (see there).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::core::{Observed, Readiness};
use crate::frontend::amqp::methods as amqp_methods;
use crate::frontend::http::{Caller, Shared};
use crate::frontend::kafka::error_code as kafka_error_code;
use crate::metrics::{self, HistogramSample, ListenerSample, ProcessSample};

/// Everything one scrape renders, copied out of the broker first.
#[derive(Debug)]
struct Scrape {
    observed: Option<Observed>,
    listeners: Vec<(&'static str, ListenerSample)>,
    histograms: Vec<(&'static str, &'static str, HistogramSample)>,
    process: ProcessSample,
    /// How long the open at start took (`None` while recovering).
    recovery_seconds: Option<f64>,
}

/// `GET /metrics`.
pub async fn scrape(axum::extract::State(http): Shared, caller: Caller) -> Response {
    let observed = match http.broker.get() {
        Some(broker) => Some(broker.observe(&caller).await),
        None => None,
    };
    // Procfs reads are quick, but they are file reads: off the runtime's workers.
    let process = tokio::task::spawn_blocking(metrics::process_sample)
        .await
        .unwrap_or_default();
    let scrape = Scrape {
        observed,
        listeners: vec![
            ("native", metrics::NATIVE.sample()),
            ("kafka", metrics::KAFKA.sample()),
            ("amqp", metrics::AMQP.sample()),
            ("http", metrics::HTTP.sample()),
        ],
        histograms: vec![
            (
                "wharf_storage_append_duration_seconds",
                "Time one append to a log took (validation, offset patching, the write).",
                metrics::STORAGE.append_seconds.sample(),
            ),
            (
                "wharf_storage_fsync_duration_seconds",
                "Time one fsync of a log's segment data took.",
                metrics::STORAGE.fsync_seconds.sample(),
            ),
            (
                "wharf_storage_group_commit_records",
                "Offsets one fsync made durable (group commit folds many appends into one fsync).",
                metrics::STORAGE.group_commit_records.sample(),
            ),
            (
                "wharf_cleaner_run_duration_seconds",
                "Time one log cleaner pass over a compacted partition took.",
                metrics::CLEANER.run_seconds.sample(),
            ),
        ],
        process,
        recovery_seconds: metrics::STARTUP.recovery_seconds(),
    };
    match render(scrape) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        )
            .into_response(),
    }
}

fn render(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Arc::new(scrape)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(observed) = &self.observed {
            encode_partitions(&mut encoder, observed)?;
            encode_replicas(&mut encoder, observed)?;
            encode_queue_replicas(&mut encoder, observed)?;
            encode_groups(&mut encoder, observed)?;
            encode_queues(&mut encoder, observed)?;
            let ready = i64::from(observed.readiness == Readiness::Ready);
            family(
                &mut encoder,
                Kind::Gauge,
                "wharf_ready",
                "1 when the broker takes writes (GET /health/ready is 200), else 0.",
                [(NO_LABELS, ready)],
            )?;
            family(
                &mut encoder,
                Kind::Gauge,
                "wharf_coordinator",
                "1 while this node coordinates consumer groups and transactions (a lone node always does; in a cluster the leader of __consumer_offsets), else 0.",
                [(NO_LABELS, i64::from(observed.coordinator))],
            )?;
            family(
                &mut encoder,
                Kind::Gauge,
                "wharf_cluster_settings_differ",
                "Settings (authentication, authorization, super_users, cluster timing) this node runs with other values than another node of its cluster; 0 on a lone node.",
                [(
                    NO_LABELS,
                    i64::try_from(observed.settings_differ).unwrap_or(i64::MAX),
                )],
            )?;
            family(
                &mut encoder,
                Kind::Gauge,
                "wharf_disk_alarm",
                "1 while the data directory's free space is below disk_free_limit_bytes and publishers are held, else 0.",
                [(NO_LABELS, i64::from(observed.disk_alarm))],
            )?;
            family(
                &mut encoder,
                Kind::Gauge,
                "wharf_memory_alarm",
                "1 while the broker's memory is above its high watermark and publishers are held, else 0.",
                [(NO_LABELS, i64::from(observed.memory_alarm))],
            )?;
            let (memory_used, memory_watermark) = observed.memory_bytes;
            family(
                &mut encoder,
                Kind::Gauge,
                "wharf_memory_used_bytes",
                "The broker's anonymous resident memory (heap and stacks, not mapped files) at the memory alarm's last sample.",
                [(NO_LABELS, memory_used)],
            )?;
            family(
                &mut encoder,
                Kind::Gauge,
                "wharf_memory_high_watermark_bytes",
                "Memory above which the memory alarm holds publishers (0: no memory alarm).",
                [(NO_LABELS, memory_watermark)],
            )?;
            if let Some(free) = observed.disk_free_bytes {
                family(
                    &mut encoder,
                    Kind::Gauge,
                    "wharf_disk_free_bytes",
                    "Free bytes of the data directory's file system at the disk alarm's last sample.",
                    [(NO_LABELS, free)],
                )?;
            }
            family(
                &mut encoder,
                Kind::Counter,
                "wharf_storage_flushed_bytes",
                "Bytes of segment data that fsyncs of the flusher (group commit, interval flushes, close) made durable since start.",
                [(NO_LABELS, metrics::STORAGE.bytes_flushed())],
            )?;
            let cleaner = &metrics::CLEANER;
            let count = |counter: &std::sync::atomic::AtomicU64| {
                counter.load(std::sync::atomic::Ordering::Relaxed)
            };
            family(
                &mut encoder,
                Kind::Counter,
                "wharf_cleaner_runs",
                "Log cleaner passes over compacted partitions since start.",
                [(NO_LABELS, count(&cleaner.runs))],
            )?;
            family(
                &mut encoder,
                Kind::Counter,
                "wharf_cleaner_failures",
                "Log cleaner passes that failed since start.",
                [(NO_LABELS, count(&cleaner.failures))],
            )?;
            family(
                &mut encoder,
                Kind::Counter,
                "wharf_cleaner_cleaned_bytes",
                "Bytes of segments the log cleaner rewrote (their size before the pass).",
                [(NO_LABELS, count(&cleaner.bytes_before))],
            )?;
            family(
                &mut encoder,
                Kind::Counter,
                "wharf_cleaner_written_bytes",
                "Bytes of the segments the log cleaner wrote in their place.",
                [(NO_LABELS, count(&cleaner.bytes_after))],
            )?;
            family(
                &mut encoder,
                Kind::Counter,
                "wharf_cleaner_removed_records",
                "Records the log cleaner removed (superseded, expired tombstones, aborted).",
                [(NO_LABELS, count(&cleaner.records_removed))],
            )?;
            let mut dirty = encoder.encode_descriptor(
                "wharf_cleaner_max_dirty_ratio",
                "The highest dirty ratio (uncleaned bytes over cleanable bytes) among compacted partitions at the cleaner's last round.",
                None,
                MetricType::Gauge,
            )?;
            dirty.encode_gauge(&cleaner.max_dirty_ratio())?;
            family(&mut encoder, Kind::Gauge, "wharf_metrics_series_left_out", "Partitions, group lag series and queues left out of this scrape by the cardinality bounds.", [(NO_LABELS, observed.left_out)])?;
        }
        self.encode_listeners(&mut encoder)?;
        for (name, help, sample) in &self.histograms {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            metric.encode_histogram::<NoLabels>(sample.sum, sample.count, &sample.buckets, None)?;
        }
        if let Some(seconds) = self.recovery_seconds {
            let mut metric = encoder.encode_descriptor(
                "wharf_recovery_duration_seconds",
                "Time the broker took at start to open and recover its logs, offsets and queues.",
                None,
                MetricType::Gauge,
            )?;
            metric.encode_gauge(&seconds)?;
        }
        if let Some(resident) = self.process.resident_bytes {
            family(
                &mut encoder,
                Kind::Gauge,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                [(NO_LABELS, resident)],
            )?;
        }
        if let Some(open_fds) = self.process.open_fds {
            family(
                &mut encoder,
                Kind::Gauge,
                "process_open_fds",
                "Number of open file descriptors.",
                [(NO_LABELS, open_fds)],
            )?;
        }
        Ok(())
    }
}

impl Scrape {
    fn encode_listeners(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listeners = &self.listeners;
        family(
            encoder,
            Kind::Gauge,
            "wharf_listener_connections",
            "Connections open now, per listener.",
            listeners
                .iter()
                .map(|(name, sample)| ([("listener", *name)], sample.connections_open)),
        )?;
        family(
            encoder,
            Kind::Counter,
            "wharf_listener_connections_accepted",
            "Connections accepted since start, per listener.",
            listeners
                .iter()
                .map(|(name, sample)| ([("listener", *name)], sample.connections_total)),
        )?;
        family(
            encoder,
            Kind::Counter,
            "wharf_listener_connections_refused",
            "Connections refused for a connection limit (per address or per user), per listener.",
            listeners
                .iter()
                .map(|(name, sample)| ([("listener", *name)], sample.connections_refused)),
        )?;
        let apis = || {
            listeners
                .iter()
                .flat_map(|(listener, sample)| sample.apis.iter().map(move |api| (*listener, api)))
        };
        family(
            encoder,
            Kind::Counter,
            "wharf_listener_requests",
            "Requests answered since start, per listener and api.",
            apis().map(|(listener, api)| {
                (
                    [
                        ("listener", listener.to_string()),
                        ("api", api_name(listener, api.api)),
                    ],
                    api.latency.count,
                )
            }),
        )?;
        family(
            encoder,
            Kind::Counter,
            "wharf_listener_request_errors",
            "Requests answered with an error since start, per listener, api and error code.",
            apis().flat_map(|(listener, api)| {
                api.errors.iter().map(move |(code, count)| {
                    (
                        [
                            ("listener", listener.to_string()),
                            ("api", api_name(listener, api.api)),
                            ("code", code_name(listener, *code)),
                        ],
                        *count,
                    )
                })
            }),
        )?;
        let mut timed = apis().filter(|(_, api)| api.latency.count > 0).peekable();
        if timed.peek().is_some() {
            let mut metric = encoder.encode_descriptor(
                "wharf_listener_request_duration_seconds",
                "Time from a request's arrival to its answer, per listener and api.",
                None,
                MetricType::Histogram,
            )?;
            for (listener, api) in timed {
                let labels = [
                    ("listener", listener.to_string()),
                    ("api", api_name(listener, api.api)),
                ];
                let latency = &api.latency;
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabels>(
                        latency.sum,
                        latency.count,
                        &latency.buckets,
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

fn encode_partitions(
    encoder: &mut DescriptorEncoder,
    observed: &Observed,
) -> Result<(), std::fmt::Error> {
    let partitions = &observed.partitions;
    let labels = |topic: &str, partition: u32| {
        [
            ("topic", topic.to_string()),
            ("partition", partition.to_string()),
        ]
    };
    macro_rules! partition_family {
        ($kind:expr, $name:expr, $help:expr, $value:expr) => {
            family(
                encoder,
                $kind,
                $name,
                $help,
                partitions.iter().map(|observed| {
                    (
                        labels(&observed.topic, observed.partition),
                        $value(observed),
                    )
                }),
            )?
        };
    }
    use crate::core::PartitionObserved as P;
    partition_family!(
        Kind::Counter,
        "wharf_partition_records_in",
        "Offsets appended to the partition since start (records, and transaction markers).",
        |p: &P| p.traffic.records_in
    );
    partition_family!(
        Kind::Counter,
        "wharf_partition_bytes_in",
        "Bytes of record batches appended to the partition since start.",
        |p: &P| p.traffic.bytes_in
    );
    partition_family!(
        Kind::Counter,
        "wharf_partition_records_out",
        "Records in the batches fetches returned from the partition since start.",
        |p: &P| p.traffic.records_out
    );
    partition_family!(
        Kind::Counter,
        "wharf_partition_bytes_out",
        "Bytes of record batches fetches returned from the partition since start.",
        |p: &P| p.traffic.bytes_out
    );
    partition_family!(
        Kind::Gauge,
        "wharf_partition_log_start_offset",
        "First offset the partition still stores.",
        |p: &P| p.log_start_offset
    );
    partition_family!(
        Kind::Gauge,
        "wharf_partition_log_end_offset",
        "Offset the partition's next record gets.",
        |p: &P| p.log_end_offset
    );
    partition_family!(
        Kind::Gauge,
        "wharf_partition_high_watermark",
        "Offset consumers may read up to (exclusive).",
        |p: &P| p.high_watermark
    );
    partition_family!(
        Kind::Gauge,
        "wharf_partition_size_bytes",
        "Bytes of valid record batches the partition holds on disk.",
        |p: &P| p.size_bytes
    );
    partition_family!(
        Kind::Gauge,
        "wharf_partition_segments",
        "Segments of the partition, the active one included.",
        |p: &P| p.segment_count
    );
    Ok(())
}

/// The replicated partitions' groups as this node's members see them (issue #21): the
/// leader and term everywhere, each follower's lag and whether it is in sync on the leader.
fn encode_replicas(
    encoder: &mut DescriptorEncoder,
    observed: &Observed,
) -> Result<(), std::fmt::Error> {
    let replicas = &observed.replicas;
    let labels = |topic: &str, partition: u32| {
        [
            ("topic", topic.to_string()),
            ("partition", partition.to_string()),
        ]
    };
    family(
        encoder,
        Kind::Gauge,
        "wharf_replica_leader",
        "Node leading the replicated partition as this node's replica knows it (-1: none).",
        replicas
            .iter()
            .map(|replica| (labels(&replica.topic, replica.partition), replica.leader)),
    )?;
    family(
        encoder,
        Kind::Gauge,
        "wharf_replica_term",
        "Raft term of this node's replica of the partition (each election raises it).",
        replicas
            .iter()
            .map(|replica| (labels(&replica.topic, replica.partition), replica.term)),
    )?;
    let followers = || {
        replicas.iter().flat_map(|replica| {
            replica.followers.iter().map(move |(node, lag, in_sync)| {
                let [topic, partition] = labels(&replica.topic, replica.partition);
                (
                    [topic, partition, ("replica", node.to_string())],
                    (*lag, *in_sync),
                )
            })
        })
    };
    family(
        encoder,
        Kind::Gauge,
        "wharf_replica_lag_entries",
        "On the partition's leader: entries of its log a replica does not have yet.",
        followers().map(|(labels, (lag, _))| (labels, lag)),
    )?;
    family(
        encoder,
        Kind::Gauge,
        "wharf_replica_in_sync",
        "On the partition's leader: 1 when a replica is in sync (answered within 6 s and has what the leader had 6 s ago).",
        followers().map(|(labels, (_, in_sync))| (labels, i64::from(in_sync))),
    )?;
    Ok(())
}

/// The replicated queues' groups as this node's members see them (issue #21).
fn encode_queue_replicas(
    encoder: &mut DescriptorEncoder,
    observed: &Observed,
) -> Result<(), std::fmt::Error> {
    let replicas = &observed.queue_replicas;
    family(
        encoder,
        Kind::Gauge,
        "wharf_queue_replica_leader",
        "Node leading the replicated queue as this node's replica knows it (-1: none).",
        replicas
            .iter()
            .map(|replica| ([("queue", replica.queue.as_str())], replica.leader)),
    )?;
    family(
        encoder,
        Kind::Gauge,
        "wharf_queue_replica_term",
        "Raft term of this node's replica of the queue (each election raises it).",
        replicas
            .iter()
            .map(|replica| ([("queue", replica.queue.as_str())], replica.term)),
    )?;
    let followers = || {
        replicas.iter().flat_map(|replica| {
            replica.followers.iter().map(move |(node, lag, in_sync)| {
                (
                    [
                        ("queue", replica.queue.clone()),
                        ("replica", node.to_string()),
                    ],
                    (*lag, *in_sync),
                )
            })
        })
    };
    family(
        encoder,
        Kind::Gauge,
        "wharf_queue_replica_lag_entries",
        "On the queue's leader: entries of its log a replica does not have yet.",
        followers().map(|(labels, (lag, _))| (labels, lag)),
    )?;
    family(
        encoder,
        Kind::Gauge,
        "wharf_queue_replica_in_sync",
        "On the queue's leader: 1 when a replica is in sync (answered within 6 s and has what the leader had 6 s ago).",
        followers().map(|(labels, (_, in_sync))| (labels, i64::from(in_sync))),
    )?;
    Ok(())
}

fn encode_groups(
    encoder: &mut DescriptorEncoder,
    observed: &Observed,
) -> Result<(), std::fmt::Error> {
    let groups = &observed.groups;
    family(
        encoder,
        Kind::Gauge,
        "wharf_group_members",
        "Members of the consumer group now.",
        groups
            .iter()
            .map(|group| ([("group", group.group_id.as_str())], group.member_count)),
    )?;
    family(
        encoder,
        Kind::Gauge,
        "wharf_group_generation",
        "Generation of the consumer group (bumped on every membership change).",
        groups
            .iter()
            .map(|group| ([("group", group.group_id.as_str())], group.generation)),
    )?;
    family(
        encoder,
        Kind::Counter,
        "wharf_group_rebalances",
        "Rebalances of the consumer group since start (generation bumps; classic Kafka and broker-side groups).",
        groups
            .iter()
            .map(|group| ([("group", group.group_id.as_str())], group.rebalances)),
    )?;
    let lags = || {
        groups
            .iter()
            .flat_map(|group| group.lags.iter().map(move |lag| (group, lag)))
    };
    let labels = |group: &str, topic: &str, partition: u32| {
        [
            ("group", group.to_string()),
            ("topic", topic.to_string()),
            ("partition", partition.to_string()),
        ]
    };
    family(
        encoder,
        Kind::Gauge,
        "wharf_group_committed_offset",
        "The group's committed offset (next to consume) per partition.",
        lags().map(|(group, lag)| {
            (
                labels(&group.group_id, &lag.topic, lag.partition),
                lag.committed_offset,
            )
        }),
    )?;
    family(
        encoder,
        Kind::Gauge,
        "wharf_group_lag",
        "Offsets between the partition's high watermark and the group's committed offset.",
        lags().map(|(group, lag)| (labels(&group.group_id, &lag.topic, lag.partition), lag.lag)),
    )
}

fn encode_queues(
    encoder: &mut DescriptorEncoder,
    observed: &Observed,
) -> Result<(), std::fmt::Error> {
    let queues = &observed.queues;
    macro_rules! queue_family {
        ($kind:expr, $name:expr, $help:expr, $field:ident) => {
            family(
                encoder,
                $kind,
                $name,
                $help,
                queues
                    .iter()
                    .map(|queue| ([("queue", queue.name.as_str())], queue.$field)),
            )?
        };
    }
    queue_family!(
        Kind::Gauge,
        "wharf_queue_messages_ready",
        "Messages ready for delivery (delayed ones not included).",
        ready
    );
    queue_family!(
        Kind::Gauge,
        "wharf_queue_messages_unacked",
        "Messages delivered and not yet acknowledged.",
        unacked
    );
    queue_family!(
        Kind::Gauge,
        "wharf_queue_messages_delayed",
        "Messages waiting for their delay (x-delay).",
        delayed
    );
    queue_family!(
        Kind::Gauge,
        "wharf_queue_consumers",
        "Consumers subscribed to the queue.",
        consumers
    );
    queue_family!(
        Kind::Counter,
        "wharf_queue_messages_published",
        "Messages stored in the queue since start.",
        published
    );
    queue_family!(
        Kind::Counter,
        "wharf_queue_messages_delivered",
        "Deliveries pushed to consumers since start (redeliveries included).",
        delivered
    );
    queue_family!(Kind::Counter, "wharf_queue_messages_settled", "Messages settled since start: acknowledged, or dropped (expired, over the delivery limit).", settled);
    queue_family!(
        Kind::Counter,
        "wharf_queue_messages_dead_lettered",
        "Messages dead-lettered since start.",
        dead_lettered
    );
    queue_family!(
        Kind::Counter,
        "wharf_queue_messages_redelivered",
        "Redeliveries pushed to consumers since start (messages delivered before).",
        redelivered
    );
    Ok(())
}

/// A metric's type, as this renderer writes it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// The label set of a metric without labels.
type NoLabels = [(&'static str, &'static str); 0];
const NO_LABELS: NoLabels = [];

/// Writes one metric family: its descriptor, then one sample per label set. A family with
/// no samples is left out (Prometheus' parsers accept it, but it says nothing).
fn family<L, V>(
    encoder: &mut DescriptorEncoder,
    kind: Kind,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet,
    V: Value,
{
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let metric_type = match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
    };
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            Kind::Counter => {
                sample.encode_counter::<NoLabels, _, u64>(&value.as_counter(), None)?
            }
            Kind::Gauge => sample.encode_gauge(&value.as_gauge())?,
        }
    }
    Ok(())
}

/// The integer types samples come in.
trait Value: Copy {
    fn as_counter(self) -> u64;
    fn as_gauge(self) -> i64;
}

impl Value for u64 {
    fn as_counter(self) -> u64 {
        self
    }
    fn as_gauge(self) -> i64 {
        i64::try_from(self).unwrap_or(i64::MAX)
    }
}

impl Value for i64 {
    fn as_counter(self) -> u64 {
        u64::try_from(self).unwrap_or(0)
    }
    fn as_gauge(self) -> i64 {
        self
    }
}

impl Value for u32 {
    fn as_counter(self) -> u64 {
        u64::from(self)
    }
    fn as_gauge(self) -> i64 {
        i64::from(self)
    }
}

impl Value for i32 {
    fn as_counter(self) -> u64 {
        u64::try_from(self).unwrap_or(0)
    }
    fn as_gauge(self) -> i64 {
        i64::from(self)
    }
}

/// The `api` label: the api's name in its protocol (the Kafka or native api, the AMQP
/// method, the HTTP route), or `key_<n>` for a key the protocol does not name (a bounded set:
/// keys are counted below [`metrics::API_KEY_SLOTS`]).
fn api_name(listener: &str, api_key: u16) -> String {
    let named = match listener {
        "native" => wharf_protocol::ApiKey::from_code(api_key).map(|key| format!("{key:?}")),
        "kafka" => i16::try_from(api_key)
            .ok()
            .and_then(|key| kafka_protocol::messages::ApiKey::try_from(key).ok())
            .map(|key| format!("{key:?}")),
        "amqp" => Some(amqp_methods::method_name(api_key).to_string()),
        "http" => Some(route_name(api_key).to_string()),
        _ => None,
    };
    named.unwrap_or_else(|| {
        let mut name = String::from("key_");
        let _ = write!(name, "{api_key}");
        name
    })
}

/// The `code` label: the error's name as its protocol writes it (Kafka's and Wharf's codes
/// in upper snake case, `UNKNOWN_TOPIC_OR_PARTITION`; AMQP's reply codes by RabbitMQ's names,
/// `NOT_FOUND`), the HTTP status as a number (`404`), or `code_<n>` for a code the
/// protocol does not name. Bounded by [`metrics::ERROR_CODE_SLOTS`].
fn code_name(listener: &str, slot: u16) -> String {
    let named = match listener {
        "native" => {
            wharf_protocol::ErrorCode::from_code(slot).map(|code| upper_snake(&format!("{code:?}")))
        }
        "kafka" => {
            let code = kafka_error_code::code_of_metrics_slot(slot);
            match kafka_protocol::ResponseError::try_from_code(code) {
                Some(kafka_protocol::ResponseError::Unknown(_)) | None => None,
                Some(error) => Some(upper_snake(&format!("{error:?}"))),
            }
        }
        "amqp" => Some(amqp_methods::reply_name(slot).to_string()),
        "http" => Some((400 + u32::from(slot)).to_string()),
        _ => None,
    };
    named.unwrap_or_else(|| format!("code_{slot}"))
}

/// `UnknownTopicOrPartition` → `UNKNOWN_TOPIC_OR_PARTITION`.
fn upper_snake(camel: &str) -> String {
    let mut snake = String::with_capacity(camel.len() + 8);
    for (index, character) in camel.chars().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            snake.push('_');
        }
        snake.push(character.to_ascii_uppercase());
    }
    snake
}

/// The HTTP routes, `METHOD /path` in sorted order: a route's index is its api slot. Set
/// once from the served routes ([`set_routes`]); the same for the broker's whole life.
static ROUTES: OnceLock<Vec<String>> = OnceLock::new();

/// Records the routes the router serves: the documented `/api/v1` routes of `document`
/// and the undocumented ones (`fixed`, as `METHOD /path`). Only the first call counts (every
/// router of the process serves the same routes).
pub(super) fn set_routes(document: &utoipa::openapi::OpenApi, fixed: &[&str]) {
    ROUTES.get_or_init(|| {
        let mut routes: Vec<String> = fixed.iter().map(|route| route.to_string()).collect();
        for (path, item) in &document.paths.paths {
            let methods = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("PATCH", item.patch.is_some()),
                ("HEAD", item.head.is_some()),
            ];
            for (method, served) in methods {
                if served {
                    routes.push(format!("{method} {path}"));
                }
            }
        }
        routes.sort();
        routes.dedup();
        routes.truncate(metrics::API_KEY_SLOTS - 1);
        routes
    });
}

/// The api slot of a request: its route's index, or the last slot (`other`: no route
/// matched, or a method the route does not serve).
fn route_slot(method: &axum::http::Method, path: Option<&str>) -> u16 {
    let other = (metrics::API_KEY_SLOTS - 1) as u16;
    let (Some(routes), Some(path)) = (ROUTES.get(), path) else {
        return other;
    };
    routes
        .binary_search_by(|route| {
            let (route_method, route_path) = route.split_once(' ').unwrap_or((route, ""));
            (route_method, route_path).cmp(&(method.as_str(), path))
        })
        .map_or(other, |index| index as u16)
}

/// The `api` label of an HTTP api slot.
fn route_name(slot: u16) -> &'static str {
    ROUTES
        .get()
        .and_then(|routes| routes.get(usize::from(slot)))
        .map_or("other", String::as_str)
}

/// Middleware of every route: one observation per request, when the answer's head is ready
/// (a stream's duration is the time to its first byte, not its life): the route, the
/// status (400 and above count as errors by status) and the time taken.
pub async fn observe(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|matched| matched.as_str());
    let api = route_slot(request.method(), path);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let error = (status >= 400).then(|| status - 400);
    metrics::HTTP.request(api, error, started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_names_come_from_each_protocol() {
        assert_eq!(api_name("native", 0), "ApiVersions");
        assert_eq!(api_name("kafka", 0), "Produce");
        assert_eq!(api_name("kafka", 9999), "key_9999");
    }

    #[test]
    fn histogram_buckets_render_cumulative_once() {
        // Two observations up to 1 ms, one up to 10 ms, one above every bound: each `le`
        // bucket counts what is at most its bound, and `+Inf` is the count.
        let sample = HistogramSample {
            buckets: vec![(0.001, 2), (0.01, 1), (f64::INFINITY, 1)],
            count: 4,
            sum: 9.0,
        };
        let scrape = Scrape {
            observed: None,
            listeners: Vec::new(),
            histograms: vec![("wharf_test_seconds", "help", sample)],
            process: ProcessSample {
                resident_bytes: None,
                open_fds: None,
            },
            recovery_seconds: None,
        };
        let text = render(scrape).expect("renders");
        let buckets: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("wharf_test_seconds_bucket"))
            .collect();
        assert_eq!(
            buckets,
            vec![
                "wharf_test_seconds_bucket{le=\"0.001\"} 2",
                "wharf_test_seconds_bucket{le=\"0.01\"} 3",
                "wharf_test_seconds_bucket{le=\"+Inf\"} 4",
            ],
            "{text}"
        );
        assert!(text.contains("wharf_test_seconds_count 4"), "{text}");
    }

    #[test]
    fn a_scrape_without_the_core_renders_listeners_and_histograms() {
        let scrape = Scrape {
            observed: None,
            listeners: vec![("native", metrics::NATIVE.sample())],
            histograms: vec![(
                "wharf_storage_fsync_duration_seconds",
                "help",
                metrics::STORAGE.fsync_seconds.sample(),
            )],
            process: ProcessSample {
                resident_bytes: Some(4096),
                open_fds: Some(7),
            },
            recovery_seconds: Some(0.25),
        };
        let text = render(scrape).expect("renders");
        assert!(
            text.contains("# TYPE wharf_recovery_duration_seconds gauge"),
            "{text}"
        );
        assert!(
            text.contains("wharf_recovery_duration_seconds 0.25"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE wharf_storage_fsync_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("wharf_storage_fsync_duration_seconds_bucket{le=\"+Inf\"}"),
            "{text}"
        );
        assert!(
            text.contains("process_resident_memory_bytes 4096"),
            "{text}"
        );
        assert!(text.contains("process_open_fds 7"), "{text}");
        assert!(
            text.contains("wharf_listener_connections{listener=\"native\"}"),
            "{text}"
        );
    }
}
