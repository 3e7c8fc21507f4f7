//! `wharf perf`: load generators in the manner of kafka-producer-perf-test and `nats bench`.
//!
//! - `perf produce`: N records of `--size` bytes as fast as the producer takes them; reports
//!   throughput and the acknowledgement latency of each record (enqueue to ack).
//! - `perf consume`: reads N records back from the start of the topic (manual assignment, or
//!   a group with `--group`); throughput only.
//! - `perf e2e`: one producer paced at `--rate` and one consumer on its own connection; each
//!   payload starts with a run id and the send time (ns on this process's monotonic clock),
//!   so the consumer measures send-to-receipt latency into an HDR histogram.
//!
//! - `perf queue`: publishes N messages to a durable queue (default exchange), at most
//!   1,000 unconfirmed in flight per publisher, then consumes them with manual acks
//!   (cumulative, every half prefetch). Confirms are always awaited (the client cancels a
//!   publish whose confirm is dropped); `--confirm` also records their latency. The
//!   summary's rate fields are the publish phase's; `consume_*` fields the consume phase's.
//! - `perf queue-e2e`: a consumer subscribed to a durable queue first, then one publisher
//!   paced at `--rate` (confirms awaited off the pacing path); each body carries the run id
//!   and the send time as `perf e2e`'s, so the consumer measures publish-to-delivery
//!   latency. Acks are cumulative, every `--ack-every` deliveries (peerbench's latency case
//!   for RabbitMQ and JetStream, the same method).
//!
//! Each prints a live progress line on stderr when stderr is a terminal and, last, one JSON
//! line on stdout ([`Summary::to_json`]).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Subcommand;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wharf_client::{
    Acks, Admin, Client, CommitPolicy, Consumer, ConsumerConfig, Delivery, DeliveryFuture,
    Durability, Error, ErrorCode, Idempotence, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, PublishConfirm, Publisher, QueueArgs, Routing, Subscriber, TopicPartition,
};

use crate::table::counted;
use crate::{AcksArg, CliError};

/// Records enqueued but not yet acknowledged per producer before `perf produce` waits: far
/// more than the producer keeps in flight (5 batches of 1 MiB), so it never starves, and
/// bounded so that 1,000,000 outstanding delivery futures are never held at once.
const OUTSTANDING_RECORDS_MAX: usize = 262_144;
/// A consumer that receives nothing for this long stops and reports what it read.
const CONSUMER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one consumer poll waits for records.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// Bytes at the start of each e2e payload: run id (u64) and send time in ns (u64).
const E2E_HEADER_BYTES: usize = 16;
/// Latencies are recorded in µs between 1 µs and this (a minute); larger ones saturate.
const LATENCY_MAX_US: u64 = 60_000_000;
/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Period of the e2e producer's pacing timer; each tick sends what is due by then.
const E2E_TICK: Duration = Duration::from_millis(1);
/// Unconfirmed publishes one `perf queue` publisher keeps in flight (as peerbench does).
const PUBLISH_WINDOW: usize = 1000;
/// Cumulative acks `perf queue` keeps in flight before it waits for the oldest answer.
const ACKS_IN_FLIGHT_MAX: usize = 8;

/// `wharf perf ...`.
#[derive(Debug, Subcommand)]
pub enum PerfCommand {
    /// Produce N records as fast as possible; throughput and acknowledgement latency.
    Produce(PerfProduceArgs),
    /// Read N records from the start of a topic; throughput.
    Consume(PerfConsumeArgs),
    /// Produce at a fixed rate while consuming; send-to-receipt latency.
    E2e(PerfE2eArgs),
    /// Publish N messages to a durable queue, then consume them with manual acks.
    Queue(PerfQueueArgs),
    /// Publish to a durable queue at a fixed rate while a consumer takes deliveries;
    /// publish-to-delivery latency.
    QueueE2e(PerfQueueE2eArgs),
    /// The same over AMQP 0-9-1 to `--url` (wharfd's AMQP listener or RabbitMQ), as
    /// RabbitMQ's PerfTest does it.
    Amqp(crate::perf_amqp::PerfAmqpArgs),
}

/// `wharf perf queue`.
#[derive(Debug, clap::Args)]
pub struct PerfQueueArgs {
    /// The queue (declared durable if missing; messages go through the default exchange).
    #[arg(long)]
    pub queue: String,
    /// Messages to publish and then consume (in total).
    #[arg(long, value_name = "N")]
    pub messages: u64,
    /// Bytes of each message body.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub size: usize,
    /// Report publisher confirm latency (confirms are awaited either way, at most 1,000
    /// outstanding per publisher).
    #[arg(long)]
    pub confirm: bool,
    /// Unacknowledged deliveries each consumer may hold.
    #[arg(long, value_name = "P", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub prefetch: u32,
    /// Each consumer acknowledges (cumulatively) every this many deliveries; half the
    /// prefetch by default.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub ack_every: Option<u32>,
    /// Publishers, each with its own connection.
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub publishers: u32,
    /// Consumers, each with its own connection.
    #[arg(long, value_name = "C", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub consumers: u32,
}

/// `wharf perf queue-e2e`.
#[derive(Debug, clap::Args)]
pub struct PerfQueueE2eArgs {
    /// The queue (declared durable if missing; messages go through the default exchange).
    #[arg(long)]
    pub queue: String,
    /// Messages per second the publisher sends.
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// How long the publisher sends.
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Bytes of each message body (at least 16: run id and send time).
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = parse_e2e_size)]
    pub size: usize,
    /// Unacknowledged deliveries the consumer may hold.
    #[arg(long, value_name = "P", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub prefetch: u32,
    /// The consumer acknowledges (cumulatively) every this many deliveries.
    #[arg(long, value_name = "K", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub ack_every: u32,
}

/// `wharf perf produce`.
#[derive(Debug, clap::Args)]
pub struct PerfProduceArgs {
    /// The topic (created with --partitions if missing).
    #[arg(long)]
    pub topic: String,
    /// Records to produce (in total, over all producers).
    #[arg(long, value_name = "N")]
    pub messages: u64,
    /// Bytes of each record's value.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub size: usize,
    /// Producers, each with its own connection.
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub producers: u32,
    /// Partitions of the topic when it has to be created.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Acknowledgement to wait for (`leader` and `none` turn idempotence off).
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Batch size in bytes (the producer's default otherwise: 1 MiB).
    #[arg(long, value_name = "B")]
    pub batch_bytes: Option<usize>,
    /// Linger in ms (the producer's default otherwise: 5 ms).
    #[arg(long, value_name = "L")]
    pub linger_ms: Option<u64>,
    /// Deduplicated retries (the default with --acks all).
    #[arg(long, overrides_with = "no_idempotent")]
    pub idempotent: bool,
    /// Turn idempotence off.
    #[arg(long, overrides_with = "idempotent")]
    pub no_idempotent: bool,
    /// Stop producing after this many seconds (the summary counts what was acknowledged).
    #[arg(long, value_name = "S")]
    pub max_seconds: Option<f64>,
    /// Produce in transactions of this many records each (per producer).
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    pub transaction_records: Option<u64>,
}

/// `wharf perf consume`.
#[derive(Debug, clap::Args)]
pub struct PerfConsumeArgs {
    /// The topic.
    #[arg(long)]
    pub topic: String,
    /// Records to read (in total, over all consumers).
    #[arg(long, value_name = "N")]
    pub messages: u64,
    /// Consume as members of this group (from its committed offsets, else the earliest);
    /// without it the partitions are assigned to the consumers round-robin, from the start.
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Consumers, each with its own connection.
    #[arg(long, value_name = "C", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub consumers: u32,
}

/// `wharf perf e2e`.
#[derive(Debug, clap::Args)]
pub struct PerfE2eArgs {
    /// The topic (created with --partitions if missing).
    #[arg(long)]
    pub topic: String,
    /// Records per second the producer sends.
    #[arg(long, value_name = "MSGS_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// How long the producer sends.
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Bytes of each record's value (at least 16: run id and send time).
    #[arg(long, value_name = "BYTES", default_value_t = 100, value_parser = parse_e2e_size)]
    pub size: usize,
    /// Partitions of the topic when it has to be created.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Acknowledgement the producer waits for (`leader` and `none` turn idempotence off).
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Linger in ms (default 0: send at once, for latency).
    #[arg(long, value_name = "L", default_value_t = 0)]
    pub linger_ms: u64,
}

fn parse_e2e_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(size) if size >= E2E_HEADER_BYTES => Ok(size),
        Ok(size) => Err(format!(
            "{size} is too small: the payload carries a {E2E_HEADER_BYTES}-byte header"
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// Idempotence as `wharf produce` resolves it: on with acks=all unless --no-idempotent,
/// off with weaker acks unless --idempotent insists (which the producer then refuses).
fn idempotence(acks: AcksArg, idempotent: bool, no_idempotent: bool) -> Idempotence {
    match (idempotent, no_idempotent, acks) {
        (_, true, _) => Idempotence::Disabled,
        (true, false, _) | (false, false, AcksArg::All) => Idempotence::Enabled,
        (false, false, AcksArg::Leader | AcksArg::None) => Idempotence::Disabled,
    }
}

impl PerfProduceArgs {
    /// The producer configuration the flags ask for.
    pub fn producer_config(&self) -> ProducerConfig {
        let mut config = ProducerConfig::default()
            .acks(Acks::from(self.acks))
            .idempotence(idempotence(self.acks, self.idempotent, self.no_idempotent));
        if let Some(batch_bytes) = self.batch_bytes {
            config = config.batch_bytes(batch_bytes);
        }
        if let Some(linger_ms) = self.linger_ms {
            config = config.linger(Duration::from_millis(linger_ms));
        }
        config
    }
}

/// Latency percentiles in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Latency {
    /// The percentiles of `histogram`, or `None` if it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Latency> {
        if histogram.is_empty() {
            return None;
        }
        Some(Latency {
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        })
    }
}

/// What a run did: the last line `wharf perf` prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// `produce`, `consume` or `e2e`.
    pub workload: &'static str,
    /// Records acknowledged (produce) or received (consume, e2e).
    pub messages: u64,
    /// Value bytes of those records.
    pub bytes: u64,
    /// Wall time of the measured phase.
    pub seconds: f64,
    /// Latencies, where measured.
    pub latency: Option<Latency>,
    /// Further fields, appended after the standard ones.
    pub extra: Vec<(&'static str, serde_json::Value)>,
}

impl Summary {
    /// One JSON object on one line: workload, messages, bytes, seconds (ms precision),
    /// messages_per_second (0.1 precision), megabytes_per_second (10^6 bytes, 0.01
    /// precision) and, where measured, p50_us, p99_us, p999_us and max_us: the names every
    /// JSON summary of the CLI shares (README, "JSON output").
    pub fn to_json(&self) -> String {
        let (messages_per_second, megabytes_per_second) = if self.seconds > 0.0 {
            (
                self.messages as f64 / self.seconds,
                self.bytes as f64 / 1e6 / self.seconds,
            )
        } else {
            (0.0, 0.0)
        };
        let mut object = serde_json::Map::new();
        object.insert("workload".into(), self.workload.into());
        object.insert("messages".into(), self.messages.into());
        object.insert("bytes".into(), self.bytes.into());
        object.insert("seconds".into(), round(self.seconds, 1e3).into());
        object.insert(
            "messages_per_second".into(),
            round(messages_per_second, 10.0).into(),
        );
        object.insert(
            "megabytes_per_second".into(),
            round(megabytes_per_second, 100.0).into(),
        );
        if let Some(latency) = self.latency {
            object.insert("p50_us".into(), latency.p50_us.into());
            object.insert("p99_us".into(), latency.p99_us.into());
            object.insert("p999_us".into(), latency.p999_us.into());
            object.insert("max_us".into(), latency.max_us.into());
        }
        for (key, value) in &self.extra {
            object.insert((*key).into(), value.clone());
        }
        serde_json::Value::Object(object).to_string()
    }
}

fn round(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds (low >= 1, high >= 2 * low, 3 significant figures).
    match Histogram::new_with_bounds(1, LATENCY_MAX_US, 3) {
        Ok(histogram) => histogram,
        Err(error) => unreachable!("constant histogram bounds: {error:?}"),
    }
}

fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, LATENCY_MAX_US));
}

/// Runs a `wharf perf` command against `client` (more connections are made like it) and
/// prints its summary.
///
/// # Errors
/// The client's errors; writing the summary to stdout.
pub async fn run(client: &Client, command: PerfCommand) -> Result<(), CliError> {
    let summary = match command {
        PerfCommand::Produce(args) => produce(client, args).await?,
        PerfCommand::Consume(args) => consume(client, args).await?,
        PerfCommand::E2e(args) => e2e(client, args).await?,
        PerfCommand::Queue(args) => queue(client, args).await?,
        PerfCommand::QueueE2e(args) => queue_e2e(client, args).await?,
        PerfCommand::Amqp(args) => crate::perf_amqp::run(&args).await?,
    };
    print(&summary)
}

/// Prints a run's summary: one JSON line on stdout.
///
/// # Errors
/// Writing to stdout.
pub fn print(summary: &Summary) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", summary.to_json())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Stdout)
}

/// Another connection like the command's own `client` (same broker and login).
async fn connect(client: &Client) -> Result<Client, CliError> {
    let config = client
        .config()
        .clone()
        .client_id("wharf-perf")
        .bootstrap_timeout(Duration::ZERO);
    Ok(Client::connect(config).await?)
}

/// A connection for a queue publisher: a request keeps its in-flight slot until its answer
/// is awaited, so the connection must allow the whole confirm window.
async fn connect_publisher(client: &Client) -> Result<Client, CliError> {
    let mut config = client
        .config()
        .clone()
        .client_id("wharf-perf")
        .bootstrap_timeout(Duration::ZERO);
    config.in_flight_requests_max = PUBLISH_WINDOW + 1;
    Ok(Client::connect(config).await?)
}

/// The first client is the command's own; each further one is a new connection.
async fn clients(client: &Client, count: u32) -> Result<Vec<Client>, CliError> {
    let mut clients = vec![client.clone()];
    for _ in 1..count {
        clients.push(connect(client).await?);
    }
    Ok(clients)
}

async fn ensure_topic(client: &Client, topic: &str, partitions: u32) -> Result<(), CliError> {
    match Admin::new(client)
        .create_topic(topic, partitions, &[])
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if error.code() == Some(ErrorCode::TopicAlreadyExists) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn joined<T>(result: Result<Result<T, CliError>, tokio::task::JoinError>) -> Result<T, CliError> {
    result.map_err(|_| CliError::Client(Error::Closed))?
}

/// A live `done / total` line on stderr, drawn only when stderr is a terminal.
#[derive(Debug)]
struct Progress {
    done: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    fn start(label: &'static str, total: u64) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let task = std::io::stderr().is_terminal().then(|| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                let started = Instant::now();
                let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
                loop {
                    ticker.tick().await;
                    let count = done.load(Ordering::Relaxed);
                    let rate = count as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    eprint!("\r\x1b[K{label}: {count} / {total} msgs, {rate:.0} msgs/s");
                }
            })
        });
        Progress { done, task }
    }

    fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.done)
    }

    fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
            eprint!("\r\x1b[K");
        }
    }
}

async fn produce(client: &Client, args: PerfProduceArgs) -> Result<Summary, CliError> {
    let config = args.producer_config();
    config.validate()?;
    ensure_topic(client, &args.topic, args.partitions).await?;
    let clients = clients(client, args.producers).await?;
    let payload = Bytes::from(
        (0..args.size)
            .map(|index| b'a' + (index % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let progress = Progress::start("produce", args.messages);
    let started = Instant::now();
    let deadline = args
        .max_seconds
        .map(|seconds| started + Duration::from_secs_f64(seconds.max(0.0)));
    let producers = u64::from(args.producers);
    let mut tasks = Vec::new();
    for (index, client) in (0u64..).zip(clients) {
        // The first producers take the remainder.
        let count = args.messages / producers + u64::from(index < args.messages % producers);
        let mut config = config.clone();
        if args.transaction_records.is_some() {
            config = config.transactional_id(format!("wharf-perf-{}-{index}", run_id()));
        }
        let job = ProduceJob {
            topic: args.topic.clone(),
            count,
            payload: payload.clone(),
            deadline,
            transaction_records: args.transaction_records,
            acked: progress.counter(),
        };
        tasks.push(tokio::spawn(job.run(client, config)));
    }
    let mut histogram = new_histogram();
    let mut messages = 0;
    for task in tasks {
        let (acked, partial) = joined(task.await)?;
        messages += acked;
        histogram.add(&partial).ok();
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish();
    Ok(Summary {
        workload: "produce",
        messages,
        bytes: messages * args.size as u64,
        seconds,
        latency: Latency::of(&histogram),
        extra: Vec::new(),
    })
}

/// One producer's share of `perf produce`.
#[derive(Debug)]
struct ProduceJob {
    topic: String,
    count: u64,
    payload: Bytes,
    deadline: Option<Instant>,
    transaction_records: Option<u64>,
    acked: Arc<AtomicU64>,
}

impl ProduceJob {
    /// Produces the records; returns how many were acknowledged and their ack latencies.
    async fn run(
        self,
        client: Client,
        config: ProducerConfig,
    ) -> Result<(u64, Histogram<u64>), CliError> {
        let producer = Producer::try_new(&client, config)?;
        if self.transaction_records.is_some() {
            producer.init_transactions().await?;
        }
        // Deliveries are awaited in enqueue order by a task of their own, so the latency of
        // each is measured close to the moment its acknowledgement arrives.
        let (deliveries, mut pending) =
            mpsc::channel::<(Instant, DeliveryFuture)>(OUTSTANDING_RECORDS_MAX);
        let acked = Arc::clone(&self.acked);
        let collector = tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut count = 0u64;
            while let Some((sent_at, delivery)) = pending.recv().await {
                delivery.await?;
                record_latency(&mut histogram, sent_at.elapsed());
                count += 1;
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, CliError>((count, histogram))
        });
        let mut sent = 0u64;
        let mut in_transaction = false;
        while sent < self.count {
            if sent.is_multiple_of(1024) && self.deadline.is_some_and(|end| Instant::now() >= end) {
                break;
            }
            if let (Some(_), false) = (self.transaction_records, in_transaction) {
                producer.begin_transaction().await?;
                in_transaction = true;
            }
            let sent_at = Instant::now();
            let record = ProducerRecord::new(self.topic.clone(), self.payload.clone());
            let delivery = producer.enqueue(record).await?;
            if deliveries.send((sent_at, delivery)).await.is_err() {
                break; // The collector stopped at a failed delivery; its error is returned.
            }
            sent += 1;
            if self
                .transaction_records
                .is_some_and(|records| sent.is_multiple_of(records))
            {
                producer.commit_transaction().await?;
                in_transaction = false;
            }
        }
        if in_transaction {
            producer.commit_transaction().await?;
        }
        drop(deliveries);
        let result = joined(collector.await);
        producer.close().await?;
        result
    }
}

async fn consume(client: &Client, args: PerfConsumeArgs) -> Result<Summary, CliError> {
    let partitions = client.topic(&args.topic).await?.partition_count();
    let clients = clients(client, args.consumers).await?;
    let progress = Progress::start("consume", args.messages);
    let received = progress.counter();
    let consumers = args.consumers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, client) in (0u32..).zip(clients) {
        let config = ConsumerConfig::default()
            .auto_offset_reset(OffsetReset::Earliest)
            .commit(CommitPolicy::default());
        let mut consumer = Consumer::new(&client, config);
        match &args.group {
            Some(group) => consumer.subscribe(group, [args.topic.as_str()]).await?,
            None => {
                let mine: Vec<TopicPartition> = (0..partitions)
                    .filter(|partition| partition % consumers == index)
                    .map(|partition| TopicPartition::new(args.topic.clone(), partition))
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                consumer.assign(mine)?;
            }
        }
        let received = Arc::clone(&received);
        let target = args.messages;
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            let mut last_record = Instant::now();
            while received.load(Ordering::Relaxed) < target {
                let records = consumer.poll(POLL_TIMEOUT).await?;
                if records.is_empty() {
                    if last_record.elapsed() >= CONSUMER_IDLE_TIMEOUT {
                        break;
                    }
                    continue;
                }
                last_record = Instant::now();
                bytes += records
                    .iter()
                    .map(|record| record.value.as_ref().map_or(0, Bytes::len) as u64)
                    .sum::<u64>();
                received.fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            let finished = Instant::now();
            consumer.close().await?;
            Ok::<_, CliError>((bytes, finished))
        }));
    }
    let mut bytes = 0;
    let mut finished = started;
    for task in tasks {
        let (partial, end) = joined(task.await)?;
        bytes += partial;
        finished = finished.max(end);
    }
    progress.finish();
    let messages = received.load(Ordering::Relaxed);
    if messages < args.messages {
        eprintln!(
            "warning: read {messages} of {}: nothing more arrived for {} s",
            counted(args.messages, "record"),
            CONSUMER_IDLE_TIMEOUT.as_secs()
        );
    }
    Ok(Summary {
        workload: "consume",
        messages,
        bytes,
        seconds: finished.duration_since(started).as_secs_f64(),
        latency: None,
        extra: Vec::new(),
    })
}

/// A number that tells this run's records from those of earlier runs on the same topic.
fn run_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// An e2e payload: run id, send time (ns since `epoch`), zeros up to `size`.
fn e2e_payload(run: u64, sent_ns: u64, size: usize) -> Bytes {
    let mut payload = BytesMut::with_capacity(size);
    payload.put_u64(run);
    payload.put_u64(sent_ns);
    payload.resize(size, 0);
    payload.freeze()
}

/// The send time of an e2e payload of run `run`, or `None` for another run's record.
fn e2e_sent_ns(run: u64, payload: &[u8]) -> Option<u64> {
    let run_bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let sent_bytes: [u8; 8] = payload.get(8..16)?.try_into().ok()?;
    (u64::from_be_bytes(run_bytes) == run).then(|| u64::from_be_bytes(sent_bytes))
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

async fn e2e(client: &Client, args: PerfE2eArgs) -> Result<Summary, CliError> {
    let config = ProducerConfig::default()
        .acks(Acks::from(args.acks))
        .idempotence(idempotence(args.acks, false, false))
        .linger(Duration::from_millis(args.linger_ms));
    ensure_topic(client, &args.topic, args.partitions).await?;
    let partitions = client.topic(&args.topic).await?.partition_count();
    let run = run_id();
    let epoch = Instant::now();
    let total = paced_total(args.rate, args.seconds)?;

    // The consumer reads from the end of each partition on its own connection, and is
    // positioned (one poll) before the first record is sent.
    let consumer_client = connect(client).await?;
    let mut consumer = Consumer::new(
        &consumer_client,
        ConsumerConfig::default().auto_offset_reset(OffsetReset::Latest),
    );
    consumer.assign(
        (0..partitions)
            .map(|partition| TopicPartition::new(args.topic.clone(), partition))
            .collect(),
    )?;
    consumer.poll(POLL_TIMEOUT).await?;

    let progress = Progress::start("e2e", total);
    let received = progress.counter();
    let producer_done = Arc::new(AtomicBool::new(false));
    let consumer_task = {
        let received = Arc::clone(&received);
        let producer_done = Arc::clone(&producer_done);
        tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut bytes = 0u64;
            let mut last_record = Instant::now();
            while received.load(Ordering::Relaxed) < total {
                let records = consumer.poll(POLL_TIMEOUT).await?;
                let now_ns = nanos_since(epoch);
                for record in &records {
                    let Some(value) = &record.value else { continue };
                    let Some(sent_ns) = e2e_sent_ns(run, value) else {
                        continue;
                    };
                    record_latency(
                        &mut histogram,
                        Duration::from_nanos(now_ns.saturating_sub(sent_ns)),
                    );
                    bytes += value.len() as u64;
                    received.fetch_add(1, Ordering::Relaxed);
                    last_record = Instant::now();
                }
                if producer_done.load(Ordering::Relaxed)
                    && last_record.elapsed() >= CONSUMER_IDLE_TIMEOUT
                {
                    break;
                }
            }
            consumer.close().await?;
            Ok::<_, CliError>((histogram, bytes))
        })
    };

    let producer = Producer::try_new(client, config)?;
    let (deliveries, collector) = in_order::<DeliveryFuture, _, _>();
    let mut pacer = Pacer::new(args.rate, total);
    'pacing: while !pacer.done() {
        for _ in 0..pacer.due().await {
            let payload = e2e_payload(run, nanos_since(epoch), args.size);
            let delivery = producer
                .enqueue(ProducerRecord::new(args.topic.clone(), payload))
                .await?;
            if deliveries.send(delivery).await.is_err() {
                break 'pacing; // A delivery failed; the collector returns its error.
            }
        }
    }
    let seconds = pacer.seconds();
    drop(deliveries);
    let produced = joined(collector.await);
    producer.close().await?;
    producer_done.store(true, Ordering::Relaxed);
    produced?;
    let (histogram, bytes) = joined(consumer_task.await)?;
    progress.finish();
    let messages = received.load(Ordering::Relaxed);
    if messages < total {
        eprintln!(
            "warning: received {messages} of {} sent",
            counted(total, "record")
        );
    }
    Ok(Summary {
        workload: "e2e",
        messages,
        bytes,
        seconds,
        latency: Latency::of(&histogram),
        extra: Vec::new(),
    })
}

async fn queue(client: &Client, args: PerfQueueArgs) -> Result<Summary, CliError> {
    let ack_every = args.ack_every.unwrap_or((args.prefetch / 2).max(1));
    check_ack_every(ack_every, args.prefetch)?;
    Admin::new(client)
        .declare_queue(&args.queue, Durability::Durable, &QueueArgs::default())
        .await?;
    let body = Bytes::from(vec![b'q'; args.size]);

    // Publish.
    let mut clients = Vec::new();
    for _ in 0..args.publishers {
        clients.push(connect_publisher(client).await?);
    }
    let progress = Progress::start("queue publish", args.messages);
    let started = Instant::now();
    let publishers = u64::from(args.publishers);
    let mut tasks = Vec::new();
    for (index, client) in (0u64..).zip(clients) {
        let count = args.messages / publishers + u64::from(index < args.messages % publishers);
        let queue = args.queue.clone();
        let body = body.clone();
        let confirmed = progress.counter();
        let confirm = args.confirm;
        tasks.push(tokio::spawn(async move {
            let publisher = Publisher::new(&client);
            let mut histogram = new_histogram();
            let mut window: VecDeque<(Instant, PublishConfirm)> = VecDeque::new();
            for _ in 0..count {
                if window.len() >= PUBLISH_WINDOW {
                    if let Some((sent_at, pending)) = window.pop_front() {
                        pending.await?;
                        if confirm {
                            record_latency(&mut histogram, sent_at.elapsed());
                        }
                        confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let sent_at = Instant::now();
                let pending = publisher
                    .start("", &queue, body.clone(), Vec::new(), Routing::Mandatory)
                    .await?;
                window.push_back((sent_at, pending));
            }
            for (sent_at, pending) in window {
                pending.await?;
                if confirm {
                    record_latency(&mut histogram, sent_at.elapsed());
                }
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, CliError>(histogram)
        }));
    }
    let mut histogram = new_histogram();
    for task in tasks {
        histogram.add(&joined(task.await)?).ok();
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    progress.finish();

    // Consume.
    let progress = Progress::start("queue consume", args.messages);
    let received = progress.counter();
    let ack_every = u64::from(ack_every);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.consumers {
        let mut subscriber = Subscriber::subscribe(client, &args.queue, args.prefetch).await?;
        let received = Arc::clone(&received);
        let target = args.messages;
        tasks.push(tokio::spawn(async move {
            let mut acks = CumulativeAcks::new(ack_every);
            let mut last_record = Instant::now();
            let mut progressed = false;
            while received.load(Ordering::Relaxed) < target {
                // What has arrived is taken without a timer; only an empty subscriber waits,
                // and then at most POLL_TIMEOUT before checking whether the run is over.
                let delivery = match subscriber.try_next() {
                    Some(delivery) => {
                        progressed = true;
                        delivery
                    }
                    None => {
                        if progressed {
                            last_record = Instant::now();
                            progressed = false;
                        }
                        let Ok(next) = tokio::time::timeout(POLL_TIMEOUT, subscriber.next()).await
                        else {
                            if last_record.elapsed() >= CONSUMER_IDLE_TIMEOUT {
                                break;
                            }
                            continue;
                        };
                        let Some(delivery) = next? else { break };
                        last_record = Instant::now();
                        delivery
                    }
                };
                received.fetch_add(1, Ordering::Relaxed);
                acks.delivered(delivery).await?;
            }
            acks.finish().await?;
            let finished = Instant::now();
            subscriber.cancel().await?;
            Ok::<_, CliError>(finished)
        }));
    }
    let mut finished = started;
    for task in tasks {
        finished = finished.max(joined(task.await)?);
    }
    progress.finish();
    let consumed = received.load(Ordering::Relaxed);
    let consume_seconds = finished.duration_since(started).as_secs_f64();
    if consumed < args.messages {
        eprintln!(
            "warning: consumed {consumed} of {}",
            counted(args.messages, "message")
        );
    }
    Ok(Summary {
        workload: "queue",
        messages: args.messages,
        bytes: args.messages * args.size as u64,
        seconds: publish_seconds,
        latency: Latency::of(&histogram),
        extra: consume_fields(consumed, consume_seconds, args.size),
    })
}

/// A consumer's cumulative acks, one every `every` deliveries, with up to
/// [`ACKS_IN_FLIGHT_MAX`] unanswered (the oldest awaited first): the consumer goes on while
/// the broker makes them durable.
struct CumulativeAcks {
    every: u64,
    unacked: u64,
    /// The last delivery not acked yet: `finish` acks up to it.
    last: Option<Delivery>,
    in_flight: VecDeque<AckAnswer>,
}

/// The answer to one sent ack.
type AckAnswer = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

impl CumulativeAcks {
    fn new(every: u64) -> CumulativeAcks {
        CumulativeAcks {
            every,
            unacked: 0,
            last: None,
            in_flight: VecDeque::new(),
        }
    }

    /// Counts `delivery`; every `every`-th one sends an ack of it and all before it.
    async fn delivered(&mut self, delivery: Delivery) -> Result<(), CliError> {
        self.unacked += 1;
        if self.unacked < self.every {
            self.last = Some(delivery);
            return Ok(());
        }
        self.in_flight
            .push_back(Box::pin(delivery.ack_multiple_sent().await?));
        if self.in_flight.len() > ACKS_IN_FLIGHT_MAX {
            if let Some(oldest) = self.in_flight.pop_front() {
                oldest.await?;
            }
        }
        self.unacked = 0;
        self.last = None;
        Ok(())
    }

    /// Acks what is left and waits for every ack's answer.
    async fn finish(mut self) -> Result<(), CliError> {
        if let Some(delivery) = self.last.take() {
            self.in_flight
                .push_back(Box::pin(delivery.ack_multiple_sent().await?));
        }
        for ack in self.in_flight {
            ack.await?;
        }
        Ok(())
    }
}

/// A consumer that acks every `ack_every` deliveries must be allowed to hold that many, or
/// the broker stops delivering before it acks.
fn check_ack_every(ack_every: u32, prefetch: u32) -> Result<(), CliError> {
    if ack_every > prefetch {
        return Err(CliError::Client(Error::InvalidState {
            reason: "--ack-every must not exceed --prefetch: the broker stops delivering at the prefetch, before the consumer acks",
        }));
    }
    Ok(())
}

/// How many messages `rate` per second for `seconds` is.
fn paced_total(rate: u64, seconds: u64) -> Result<u64, CliError> {
    rate.checked_mul(seconds)
        .ok_or(CliError::Client(Error::InvalidState {
            reason: "--rate times --seconds is more messages than can be counted",
        }))
}

async fn queue_e2e(client: &Client, args: PerfQueueE2eArgs) -> Result<Summary, CliError> {
    check_ack_every(args.ack_every, args.prefetch)?;
    let total = paced_total(args.rate, args.seconds)?;
    Admin::new(client)
        .declare_queue(&args.queue, Durability::Durable, &QueueArgs::default())
        .await?;
    let run = run_id();
    let epoch = Instant::now();

    // The consumer is subscribed (on its own connection) before the first publish. Messages
    // of earlier runs left in the queue are acknowledged and not measured.
    let mut subscriber = Subscriber::subscribe(client, &args.queue, args.prefetch).await?;
    let progress = Progress::start("queue-e2e", total);
    let received = progress.counter();
    let publisher_done = Arc::new(AtomicBool::new(false));
    let ack_every = u64::from(args.ack_every);
    let consumer_task = {
        let received = Arc::clone(&received);
        let publisher_done = Arc::clone(&publisher_done);
        tokio::spawn(async move {
            let mut histogram = new_histogram();
            let (mut bytes, mut stale) = (0u64, 0u64);
            let mut acks = CumulativeAcks::new(ack_every);
            let mut last_delivery = Instant::now();
            while received.load(Ordering::Relaxed) < total {
                // What has arrived is taken without a timer.
                let delivery = match subscriber.try_next() {
                    Some(delivery) => delivery,
                    None => {
                        let Ok(next) = tokio::time::timeout(POLL_TIMEOUT, subscriber.next()).await
                        else {
                            if publisher_done.load(Ordering::Relaxed)
                                && last_delivery.elapsed() >= CONSUMER_IDLE_TIMEOUT
                            {
                                break;
                            }
                            continue;
                        };
                        let Some(delivery) = next? else { break };
                        delivery
                    }
                };
                let now_ns = nanos_since(epoch);
                last_delivery = Instant::now();
                if let Some(sent_ns) = e2e_sent_ns(run, &delivery.body) {
                    record_latency(
                        &mut histogram,
                        Duration::from_nanos(now_ns.saturating_sub(sent_ns)),
                    );
                    bytes += delivery.body.len() as u64;
                    received.fetch_add(1, Ordering::Relaxed);
                } else {
                    stale += 1;
                }
                acks.delivered(delivery).await?;
            }
            acks.finish().await?;
            subscriber.cancel().await?;
            if stale > 0 {
                eprintln!(
                    "warning: {} of earlier runs were in the queue first (acked, not measured; \
                     this run's first messages waited behind them)",
                    counted(stale, "message")
                );
            }
            Ok::<_, CliError>((histogram, bytes))
        })
    };

    // Confirms are awaited by a task of their own, so the pacing never waits for one.
    let publisher_client = connect_publisher(client).await?;
    let publisher = Publisher::new(&publisher_client);
    let (confirms, collector) = in_order::<PublishConfirm, _, _>();
    let mut pacer = Pacer::new(args.rate, total);
    'pacing: while !pacer.done() {
        for _ in 0..pacer.due().await {
            let body = e2e_payload(run, nanos_since(epoch), args.size);
            let confirm = publisher
                .start("", &args.queue, body, Vec::new(), Routing::Mandatory)
                .await?;
            if confirms.send(confirm).await.is_err() {
                break 'pacing; // A confirm failed; the collector returns its error.
            }
        }
    }
    let seconds = pacer.seconds();
    drop(confirms);
    let published = joined(collector.await);
    publisher_done.store(true, Ordering::Relaxed);
    published?;
    let (histogram, bytes) = joined(consumer_task.await)?;
    progress.finish();
    let messages = received.load(Ordering::Relaxed);
    if messages < total {
        eprintln!(
            "warning: received {messages} of {} sent",
            counted(total, "message")
        );
    }
    Ok(Summary {
        workload: "queue-e2e",
        messages,
        bytes,
        seconds,
        latency: Latency::of(&histogram),
        extra: Vec::new(),
    })
}

/// A task that awaits the futures sent to it in order (each send's delivery or confirm),
/// ending with the first failure, which it returns; the sender fails from then on.
fn in_order<F, T, E>() -> (mpsc::Sender<F>, JoinHandle<Result<(), CliError>>)
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Into<CliError> + Send + 'static,
{
    let (sender, mut pending) = mpsc::channel::<F>(OUTSTANDING_RECORDS_MAX);
    let collector = tokio::spawn(async move {
        while let Some(future) = pending.recv().await {
            future.await.map_err(Into::into)?;
        }
        Ok(())
    });
    (sender, collector)
}

/// Paces `total` sends at `rate` a second from its start: each tick of [`E2E_TICK`] says
/// how many are due (`perf e2e`, `perf queue-e2e`).
struct Pacer {
    started: Instant,
    tick: Instant,
    rate: u64,
    total: u64,
    /// Sends due so far, all ticks together.
    due_total: u64,
}

impl Pacer {
    fn new(rate: u64, total: u64) -> Pacer {
        let started = Instant::now();
        Pacer {
            started,
            tick: started,
            rate,
            total,
            due_total: 0,
        }
    }

    /// Sleeps to the next tick; how many sends are due now (those the rate asks for by
    /// then, less those already due at earlier ticks).
    async fn due(&mut self) -> u64 {
        self.tick += E2E_TICK;
        tokio::time::sleep_until(self.tick.into()).await;
        let by_now =
            ((self.started.elapsed().as_secs_f64() * self.rate as f64) as u64).min(self.total);
        let now = by_now.saturating_sub(self.due_total);
        self.due_total = by_now.max(self.due_total);
        now
    }

    /// Whether every send was due.
    fn done(&self) -> bool {
        self.due_total >= self.total
    }

    /// Seconds since the start.
    fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// The `consume_*` fields of a publish-then-consume summary (`perf queue`, `perf amqp`).
pub(crate) fn consume_fields(
    consumed: u64,
    seconds: f64,
    size: usize,
) -> Vec<(&'static str, serde_json::Value)> {
    let rate = if seconds > 0.0 {
        consumed as f64 / seconds
    } else {
        0.0
    };
    vec![
        ("consume_messages", consumed.into()),
        ("consume_seconds", round(seconds, 1e3).into()),
        ("consume_messages_per_second", round(rate, 10.0).into()),
        (
            "consume_megabytes_per_second",
            round(rate * size as f64 / 1e6, 100.0).into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn perf(args: &[&str]) -> Result<PerfCommand, clap::Error> {
        let all = ["wharf", "perf"].iter().chain(args).copied();
        let Command::Perf { command } = Cli::try_parse_from(all)?.command else {
            panic!("not perf");
        };
        Ok(command)
    }

    #[test]
    fn produce_flags() {
        let PerfCommand::Produce(args) = perf(&[
            "produce",
            "--topic",
            "t",
            "--messages",
            "1000",
            "--size",
            "1024",
            "--producers",
            "2",
            "--partitions",
            "4",
            "--acks",
            "leader",
            "--batch-bytes",
            "65536",
            "--linger-ms",
            "2",
            "--max-seconds",
            "1.5",
        ])
        .unwrap() else {
            panic!("not produce");
        };
        assert_eq!(args.topic, "t");
        assert_eq!((args.messages, args.size), (1000, 1024));
        assert_eq!((args.producers, args.partitions), (2, 4));
        assert_eq!(args.max_seconds, Some(1.5));
        let config = args.producer_config();
        assert_eq!(config.acks, Acks::Leader);
        assert_eq!(config.idempotence, Idempotence::Disabled);
        assert_eq!(config.batch_bytes, 65536);
        assert_eq!(config.linger, Duration::from_millis(2));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn produce_defaults_and_idempotence() {
        let produce_config = |extra: &[&str]| {
            let mut args = vec!["produce", "--topic", "t", "--messages", "1"];
            args.extend_from_slice(extra);
            let PerfCommand::Produce(args) = perf(&args).unwrap() else {
                panic!("not produce");
            };
            args.producer_config()
        };
        let config = produce_config(&[]);
        assert_eq!(config.acks, Acks::All);
        assert_eq!(config.idempotence, Idempotence::Enabled);
        assert_eq!(config.batch_bytes, ProducerConfig::default().batch_bytes);
        assert_eq!(
            produce_config(&["--no-idempotent"]).idempotence,
            Idempotence::Disabled
        );
        assert_eq!(
            produce_config(&["--no-idempotent", "--idempotent"]).idempotence,
            Idempotence::Enabled
        );
        // Asking for idempotence with weak acks is an invalid combination, refused later.
        assert!(produce_config(&["--acks", "none", "--idempotent"])
            .validate()
            .is_err());
    }

    #[test]
    fn produce_needs_topic_and_messages_and_a_producer() {
        assert!(perf(&["produce", "--topic", "t"]).is_err());
        assert!(perf(&["produce", "--messages", "5"]).is_err());
        assert!(perf(&[
            "produce",
            "--topic",
            "t",
            "--messages",
            "5",
            "--producers",
            "0"
        ])
        .is_err());
    }

    #[test]
    fn consume_flags() {
        let PerfCommand::Consume(args) = perf(&[
            "consume",
            "--topic",
            "t",
            "--messages",
            "10",
            "--group",
            "g",
            "--consumers",
            "3",
        ])
        .unwrap() else {
            panic!("not consume");
        };
        assert_eq!(args.group.as_deref(), Some("g"));
        assert_eq!((args.messages, args.consumers), (10, 3));
        let PerfCommand::Consume(args) =
            perf(&["consume", "--topic", "t", "--messages", "10"]).unwrap()
        else {
            panic!("not consume");
        };
        assert_eq!((args.group, args.consumers), (None, 1));
    }

    #[test]
    fn e2e_flags() {
        let PerfCommand::E2e(args) = perf(&[
            "e2e",
            "--topic",
            "t",
            "--rate",
            "5000",
            "--seconds",
            "10",
            "--size",
            "100",
            "--acks",
            "leader",
        ])
        .unwrap() else {
            panic!("not e2e");
        };
        assert_eq!((args.rate, args.seconds, args.size), (5000, 10, 100));
        assert_eq!(args.acks, AcksArg::Leader);
        assert_eq!(args.linger_ms, 0);
        assert!(perf(&[
            "e2e",
            "--topic",
            "t",
            "--rate",
            "1",
            "--seconds",
            "1",
            "--size",
            "15"
        ])
        .is_err());
        assert!(perf(&["e2e", "--topic", "t", "--rate", "0", "--seconds", "1"]).is_err());
    }

    #[test]
    fn queue_flags() {
        let PerfCommand::Queue(args) = perf(&[
            "queue",
            "--queue",
            "q",
            "--messages",
            "100",
            "--size",
            "1024",
            "--confirm",
            "--prefetch",
            "50",
            "--publishers",
            "2",
            "--consumers",
            "3",
        ])
        .unwrap() else {
            panic!("not queue");
        };
        assert_eq!(
            (args.queue.as_str(), args.messages, args.size),
            ("q", 100, 1024)
        );
        assert!(args.confirm);
        assert_eq!((args.prefetch, args.publishers, args.consumers), (50, 2, 3));
        let PerfCommand::Queue(args) = perf(&["queue", "--queue", "q", "--messages", "1"]).unwrap()
        else {
            panic!("not queue");
        };
        assert!(!args.confirm);
        assert_eq!((args.prefetch, args.size), (100, 100));
        assert!(perf(&[
            "queue",
            "--queue",
            "q",
            "--messages",
            "1",
            "--prefetch",
            "0"
        ])
        .is_err());
    }

    #[test]
    fn queue_e2e_flags() {
        let PerfCommand::QueueE2e(args) = perf(&[
            "queue-e2e",
            "--queue",
            "q",
            "--rate",
            "5000",
            "--seconds",
            "10",
            "--size",
            "1024",
        ])
        .unwrap() else {
            panic!("not queue-e2e");
        };
        assert_eq!(
            (args.queue.as_str(), args.rate, args.seconds, args.size),
            ("q", 5000, 10, 1024)
        );
        assert_eq!((args.prefetch, args.ack_every), (1000, 100));
        let too_small = ["queue-e2e", "--queue", "q", "--rate", "1", "--seconds", "1"];
        assert!(perf(&[&too_small[..], &["--size", "15"]].concat()).is_err());
        assert!(perf(&[&too_small[..], &["--ack-every", "0"]].concat()).is_err());
    }

    #[test]
    fn summary_json_with_and_without_latency() {
        let summary = Summary {
            workload: "produce",
            messages: 1_000_000,
            bytes: 100_000_000,
            seconds: 2.5,
            latency: None,
            extra: Vec::new(),
        };
        assert_eq!(
            summary.to_json(),
            r#"{"workload":"produce","messages":1000000,"bytes":100000000,"seconds":2.5,"messages_per_second":400000.0,"megabytes_per_second":40.0}"#
        );
        let summary = Summary {
            workload: "e2e",
            messages: 3,
            bytes: 300,
            seconds: 0.123_456_7,
            latency: Some(Latency {
                p50_us: 250,
                p99_us: 900,
                p999_us: 1_500,
                max_us: 4_000,
            }),
            extra: vec![("consume_seconds", 1.5.into())],
        };
        assert_eq!(
            summary.to_json(),
            r#"{"workload":"e2e","messages":3,"bytes":300,"seconds":0.123,"messages_per_second":24.3,"megabytes_per_second":0.0,"p50_us":250,"p99_us":900,"p999_us":1500,"max_us":4000,"consume_seconds":1.5}"#
        );
        let empty = Summary {
            workload: "consume",
            messages: 0,
            bytes: 0,
            seconds: 0.0,
            latency: None,
            extra: Vec::new(),
        };
        assert!(empty.to_json().contains(r#""messages_per_second":0.0"#));
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let mut histogram = new_histogram();
        assert_eq!(Latency::of(&histogram), None);
        for micros in 1..=1000 {
            record_latency(&mut histogram, Duration::from_micros(micros));
        }
        let latency = Latency::of(&histogram).unwrap();
        assert_eq!(latency.p50_us, 500);
        assert_eq!(latency.p99_us, 990);
        assert_eq!(latency.p999_us, 999);
        assert_eq!(latency.max_us, 1000);
    }

    #[test]
    fn e2e_payload_round_trips_and_ignores_other_runs() {
        let payload = e2e_payload(7, 123_456, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(e2e_sent_ns(7, &payload), Some(123_456));
        assert_eq!(e2e_sent_ns(8, &payload), None);
        assert_eq!(e2e_sent_ns(7, b"short"), None);
    }
}
