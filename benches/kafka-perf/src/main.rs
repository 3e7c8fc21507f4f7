//! `kafka-perf`: a librdkafka load generator that mirrors `wharf perf` (issue #14), so the
//! Kafka listener of `wharfd` (and any Kafka-compatible peer) is measured with a real Kafka
//! client and reported in the same JSON fields as the native path.
//!
//! - `produce`: N records of `--size` bytes as fast as librdkafka takes them, acks=all,
//!   idempotence on; throughput from the first send to the last delivery report (after one
//!   acknowledged warm-up record, see [`warm_up`]), and the enqueue-to-ack latency of each
//!   record. `--max-seconds S` stops sending after S seconds (the summary counts what was
//!   acknowledged), as in `wharf perf produce`.
//! - `consume`: assigns every partition of the topic from the beginning (no group) and reads
//!   N records; throughput from before the assignment to the Nth record.
//! - `e2e`: one producer paced at `--rate` (1 ms ticks, linger 0) and one consumer thread
//!   positioned at the end of each partition before the first send; each payload starts with
//!   a run id and the send time (ns on this process's monotonic clock), so the consumer
//!   measures send-to-receipt latency into an HDR histogram. The producer's
//!   send-to-delivery-report latency of the same records is reported too (`ack_*`); reports
//!   are served at the ticks, so those values are rounded up by up to 1 ms.
//!
//! Settings that matter, chosen to match `wharf perf`'s producer (1 MiB batches, 5 ms
//! linger, 5 batches in flight): `acks=all`, `enable.idempotence=true` (so at most 5
//! requests in flight per connection), `linger.ms=5`, `batch.size=1048576`,
//! `batch.num.messages=1000000` (so bytes, not a record count, close a batch),
//! `compression.type=none`. The consumers set `queued.min.messages=1000000` and
//! `fetch.queue.backoff.ms=10` (see [`consumer_config`]); everything else is librdkafka's
//! default. Any librdkafka property can be overridden with `-X key=value`.
//!
//! Prints one JSON line on stdout with `wharf perf`'s field names: workload, messages,
//! bytes, seconds, messages_per_second, megabytes_per_second and, where measured, p50_us,
//! p99_us, p999_us, max_us; for e2e also ack_p50_us, ack_p99_us, ack_p999_us; then `client`
//! (the librdkafka version).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

/// Latencies are recorded in µs between 1 µs and this (a minute), as in `wharf perf`.
const LATENCY_MAX_US: u64 = 60_000_000;
/// Bytes at the start of each e2e payload: run id (u64) and send time in ns (u64).
const E2E_HEADER_BYTES: usize = 16;
/// A consumer that receives nothing for this long stops and reports what it read.
const CONSUMER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one consumer poll waits for records (as `wharf perf`).
const POLL_TIMEOUT: Duration = Duration::from_millis(200);
/// Period of the e2e producer's pacing timer; each tick sends what is due by then.
const E2E_TICK: Duration = Duration::from_millis(1);
/// Longest wait for metadata and topic creation.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the acknowledgements of a run once everything is sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one producer poll serves delivery reports. rust-rdkafka's `BaseProducer::poll`
/// runs until its deadline and spins (zero-timeout polls) through the last millisecond, so
/// a 1 ms poll in a loop burns a whole core: one of the two this machine has.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: kafka-perf [--broker HOST:PORT] [-X key=value]... COMMAND ARGS
  produce --topic T --messages N [--size BYTES] [--partitions K] [--max-seconds S]
  consume --topic T --messages N
  e2e     --topic T --rate MSGS_PER_SEC --seconds S [--size BYTES] [--partitions K]
defaults: --broker 127.0.0.1:9092, --size 100, --partitions 1 (when the topic is created)";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(summary) => {
            println!("{}", summary.to_json());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed command line.
#[derive(Debug, Default)]
struct Args {
    command: String,
    broker: String,
    overrides: Vec<(String, String)>,
    topic: String,
    messages: u64,
    size: usize,
    partitions: i32,
    rate: u64,
    seconds: u64,
    max_seconds: Option<f64>,
}

fn run(argv: Vec<String>) -> Result<Summary, Error> {
    let args = parse(argv)?;
    match args.command.as_str() {
        "produce" => produce(&args),
        "consume" => consume(&args),
        "e2e" => e2e(&args),
        other => Err(format!("unknown command {other:?}\n{USAGE}").into()),
    }
}

fn parse(argv: Vec<String>) -> Result<Args, Error> {
    let mut args = Args {
        broker: "127.0.0.1:9092".into(),
        size: 100,
        partitions: 1,
        ..Args::default()
    };
    let mut words = argv.into_iter();
    while let Some(word) = words.next() {
        if !word.starts_with('-') {
            if !args.command.is_empty() {
                return Err(format!("unexpected argument {word:?}\n{USAGE}").into());
            }
            args.command = word;
            continue;
        }
        if word == "--help" || word == "-h" {
            return Err(USAGE.into());
        }
        let value = words
            .next()
            .ok_or_else(|| format!("{word} needs a value\n{USAGE}"))?;
        match word.as_str() {
            "--broker" => args.broker = value,
            "-X" => {
                let (key, setting) = value
                    .split_once('=')
                    .ok_or_else(|| format!("-X takes key=value, not {value:?}"))?;
                args.overrides.push((key.into(), setting.into()));
            }
            "--topic" => args.topic = value,
            "--messages" => args.messages = value.parse()?,
            "--size" => args.size = value.parse()?,
            "--partitions" => args.partitions = value.parse()?,
            "--rate" => args.rate = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--max-seconds" => args.max_seconds = Some(value.parse()?),
            _ => return Err(format!("unknown option {word}\n{USAGE}").into()),
        }
    }
    if args.topic.is_empty() {
        return Err(format!("--topic is required\n{USAGE}").into());
    }
    Ok(args)
}

/// What a run did: the one JSON line printed at the end.
#[derive(Debug)]
struct Summary {
    workload: &'static str,
    messages: u64,
    bytes: u64,
    seconds: f64,
    latency: Option<Histogram<u64>>,
    /// e2e only: send-to-acknowledgement latency of the same records, which tells whether a
    /// tail is on the produce side or the fetch side. Reports are served at the 1 ms ticks,
    /// so each value is rounded up by up to a tick.
    acks: Option<Histogram<u64>>,
}

impl Summary {
    fn to_json(&self) -> String {
        let (messages_per_second, megabytes_per_second) = if self.seconds > 0.0 {
            (
                self.messages as f64 / self.seconds,
                self.bytes as f64 / 1e6 / self.seconds,
            )
        } else {
            (0.0, 0.0)
        };
        let mut json = format!(
            "{{\"workload\":\"{}\",\"messages\":{},\"bytes\":{},\"seconds\":{},\
             \"messages_per_second\":{},\"megabytes_per_second\":{}",
            self.workload,
            self.messages,
            self.bytes,
            round(self.seconds, 1e3),
            round(messages_per_second, 10.0),
            round(megabytes_per_second, 100.0),
        );
        if let Some(histogram) = self.latency.as_ref().filter(|h| !h.is_empty()) {
            json.push_str(&format!(
                ",\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}",
                histogram.value_at_quantile(0.5),
                histogram.value_at_quantile(0.99),
                histogram.value_at_quantile(0.999),
                histogram.max(),
            ));
        }
        if let Some(acks) = self.acks.as_ref().filter(|h| !h.is_empty()) {
            json.push_str(&format!(
                ",\"ack_p50_us\":{},\"ack_p99_us\":{},\"ack_p999_us\":{}",
                acks.value_at_quantile(0.5),
                acks.value_at_quantile(0.99),
                acks.value_at_quantile(0.999),
            ));
        }
        let (_, version) = rdkafka::util::get_rdkafka_version();
        json.push_str(&format!(",\"client\":\"librdkafka {version}\"}}"));
        json
    }
}

fn round(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant, valid histogram bounds")
}

fn record_latency(histogram: &mut Histogram<u64>, latency_ns: u64) {
    histogram.saturating_record((latency_ns / 1000).clamp(1, LATENCY_MAX_US));
}

/// The process-wide monotonic epoch that send times in opaques and payloads count from.
fn nanos_now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// librdkafka configuration shared by every client: the broker, then the overrides.
fn client_config(args: &Args, base: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.broker);
    for (key, value) in base {
        config.set(*key, *value);
    }
    for (key, value) in &args.overrides {
        config.set(key, value);
    }
    config
}

/// The producer settings of the module docs; `linger_ms` differs between produce and e2e.
fn producer_config(args: &Args, linger_ms: &str) -> ClientConfig {
    client_config(
        args,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", linger_ms),
            ("batch.size", "1048576"),
            ("batch.num.messages", "1000000"),
            ("message.max.bytes", "2097152"),
            ("queue.buffering.max.messages", "2000000"),
            ("queue.buffering.max.kbytes", "2097151"),
            ("compression.type", "none"),
        ],
    )
}

fn consumer_config(args: &Args) -> ClientConfig {
    client_config(
        args,
        &[
            // librdkafka refuses assign() without a group id (Local: Unknown group); the
            // group is never joined, and nothing is committed.
            ("group.id", "kafka-perf"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
            // librdkafka 2.x stops fetching for fetch.queue.backoff.ms (default 1 s) whenever
            // its local queue holds queued.min.messages (default 100,000): one run here took
            // 4.7 s instead of 0.9 s that way. Neither is about the broker.
            ("queued.min.messages", "1000000"),
            ("fetch.queue.backoff.ms", "10"),
        ],
    )
}

/// Creates the topic with `--partitions` partitions unless it exists; returns its
/// partition count.
fn ensure_topic(args: &Args) -> Result<i32, Error> {
    let admin: AdminClient<DefaultClientContext> = client_config(args, &[]).create()?;
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = futures_executor::block_on(admin.create_topics([&topic], &options))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("create topic {name}: {code}").into()),
        }
    }
    partition_count(
        admin
            .inner()
            .fetch_metadata(Some(&args.topic), REQUEST_TIMEOUT)?,
    )
}

fn partition_count(metadata: rdkafka::metadata::Metadata) -> Result<i32, Error> {
    let topic = metadata.topics().first().ok_or("metadata names no topic")?;
    if let Some(error) = topic.error() {
        return Err(format!("topic {}: {:?}", topic.name(), error).into());
    }
    Ok(i32::try_from(topic.partitions().len())?)
}

/// Counts delivery reports and records each record's enqueue-to-ack latency; the opaque
/// of each record is its send time in ns since the process epoch.
struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// When the latest acknowledgement arrived (ns since the process epoch): the end of a
    /// produce run, whatever the granularity of the polling that served it.
    last_delivery_ns: AtomicU64,
    first_error: Mutex<Option<KafkaError>>,
    latency: Mutex<Histogram<u64>>,
}

impl ClientContext for DeliveryCounter {
    /// librdkafka's log lines (warnings, or what `-X debug=...` asks for) go to stderr.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        eprintln!("librdkafka {level:?} {facility}: {message}");
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                let now_ns = nanos_now();
                self.last_delivery_ns.store(now_ns, Ordering::Relaxed);
                let latency_ns = now_ns.saturating_sub(sent_ns as u64);
                let mut histogram = self.latency.lock().expect("not poisoned: no panics");
                record_latency(&mut histogram, latency_ns);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().expect("not poisoned: no panics");
                first.get_or_insert_with(|| error.clone());
            }
        }
    }
}

fn new_producer(config: &ClientConfig) -> Result<BaseProducer<DeliveryCounter>, Error> {
    let counter = DeliveryCounter {
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        first_error: Mutex::new(None),
        latency: Mutex::new(new_histogram()),
    };
    Ok(config.create_with_context(counter)?)
}

/// Sends one record and waits for its acknowledgement, so that the measured phase starts
/// with a connected producer that has its producer id (librdkafka's idempotent start-up,
/// metadata and InitProducerId on a timer, took 0.1-1 s here: a third of a 1M-record run).
/// Returns the acknowledged count so far (1), which the caller subtracts.
fn warm_up(
    producer: &BaseProducer<DeliveryCounter>,
    topic: &str,
    size: usize,
) -> Result<u64, Error> {
    send(producer, topic, &vec![b'w'; size])?;
    let warm = finish(producer, 1)?;
    producer
        .context()
        .latency
        .lock()
        .expect("not poisoned: no panics")
        .reset();
    Ok(warm)
}

/// Enqueues one record, serving delivery reports while librdkafka's queue is full.
fn send(
    producer: &BaseProducer<DeliveryCounter>,
    topic: &str,
    payload: &[u8],
) -> Result<(), Error> {
    let sent_ns = usize::try_from(nanos_now())?;
    let mut record = BaseRecord::<(), [u8], usize>::with_opaque_to(topic, sent_ns).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(POLL_INTERVAL);
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

/// Serves the delivery reports that are ready. A `poll` with a zero timeout serves at most
/// one event (the reports of one produce request), so a single poll per e2e tick fell
/// behind the ~1.4 requests per millisecond and the acknowledgement latencies grew to
/// seconds. Stops at the first poll that answers no record (nothing ready, or another kind
/// of event); the next tick serves what is behind it.
fn serve_delivery_reports(producer: &BaseProducer<DeliveryCounter>) {
    let context = producer.context();
    let answered =
        || context.delivered.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed);
    loop {
        let before = answered();
        producer.poll(Duration::ZERO);
        if answered() == before {
            return;
        }
    }
}

/// Serves delivery reports until `sent` records are answered, then turns failures into an
/// error. `flush` alone would add up to 100 ms of its own polling interval at the end, a
/// tenth of a short run; the run's end is taken from the last acknowledgement instead.
fn finish(producer: &BaseProducer<DeliveryCounter>, sent: u64) -> Result<u64, Error> {
    let context = producer.context();
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while context.delivered.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed) < sent
    {
        if Instant::now() >= deadline {
            return Err(format!("records unanswered after {FLUSH_TIMEOUT:?}").into());
        }
        producer.poll(POLL_INTERVAL);
    }
    producer.flush(FLUSH_TIMEOUT)?;
    let failed = context.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = context.first_error.lock().expect("not poisoned: no panics");
        return Err(format!("{failed} deliveries failed, the first with {first:?}").into());
    }
    Ok(context.delivered.load(Ordering::Relaxed))
}

fn produce(args: &Args) -> Result<Summary, Error> {
    ensure_topic(args)?;
    let producer = new_producer(&producer_config(args, "5"))?;
    let warm = warm_up(&producer, &args.topic, args.size)?;
    let payload = vec![b'k'; args.size];
    let max = args.max_seconds.map(Duration::from_secs_f64);
    let started = Instant::now();
    let started_ns = nanos_now();
    let mut sent = 0;
    while sent < args.messages {
        send(&producer, &args.topic, &payload)?;
        sent += 1;
        if sent % 1024 == 0 {
            producer.poll(Duration::ZERO);
            if max.is_some_and(|max| started.elapsed() >= max) {
                break;
            }
        }
    }
    let delivered = finish(&producer, warm + sent)? - warm;
    let last_ns = producer.context().last_delivery_ns.load(Ordering::Relaxed);
    let seconds = last_ns.saturating_sub(started_ns) as f64 / 1e9;
    let latency = producer
        .context()
        .latency
        .lock()
        .expect("not poisoned: no panics")
        .clone();
    Ok(Summary {
        workload: "produce",
        messages: delivered,
        bytes: delivered * args.size as u64,
        seconds,
        latency: Some(latency),
        acks: None,
    })
}

fn consume(args: &Args) -> Result<Summary, Error> {
    let consumer: BaseConsumer = consumer_config(args).create()?;
    let started = Instant::now();
    let partitions = partition_count(consumer.fetch_metadata(Some(&args.topic), REQUEST_TIMEOUT)?)?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(&args.topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut last_record = Instant::now();
    while messages < args.messages {
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                messages += 1;
                bytes += message.payload_len() as u64;
                last_record = Instant::now();
            }
            Some(Err(error)) => return Err(error.into()),
            None if last_record.elapsed() >= CONSUMER_IDLE_TIMEOUT => {
                eprintln!("warning: read {messages} of {} records", args.messages);
                break;
            }
            None => {}
        }
    }
    Ok(Summary {
        workload: "consume",
        messages,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        latency: None,
        acks: None,
    })
}

fn e2e(args: &Args) -> Result<Summary, Error> {
    if args.size < E2E_HEADER_BYTES || args.rate == 0 || args.seconds == 0 {
        return Err(format!("e2e needs --rate, --seconds and --size >= {E2E_HEADER_BYTES}").into());
    }
    let partitions = ensure_topic(args)?;
    let total = args.rate * args.seconds;
    let run = run_id();
    let producer = new_producer(&producer_config(args, "0"))?;
    let warm = warm_up(&producer, &args.topic, args.size)?;

    // The consumer starts at each partition's high watermark, read before the first send.
    let consumer: BaseConsumer = consumer_config(args).create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(&args.topic, partition, REQUEST_TIMEOUT)?;
        assignment.add_partition_offset(&args.topic, partition, Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    if let Some(Err(error)) = consumer.poll(POLL_TIMEOUT) {
        return Err(error.into());
    }
    let producer_done = Arc::new(AtomicBool::new(false));
    let reader = {
        let producer_done = Arc::clone(&producer_done);
        thread::spawn(move || read_e2e(&consumer, run, total, &producer_done))
    };

    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = started;
    let mut payload = vec![0u8; args.size];
    payload[..8].copy_from_slice(&run.to_be_bytes());
    while sent < total {
        tick += E2E_TICK;
        thread::sleep(tick.saturating_duration_since(Instant::now()));
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            payload[8..16].copy_from_slice(&nanos_now().to_be_bytes());
            send(&producer, &args.topic, &payload)?;
            sent += 1;
        }
        serve_delivery_reports(&producer);
    }
    let seconds = started.elapsed().as_secs_f64();
    let produced = finish(&producer, warm + sent);
    producer_done.store(true, Ordering::Relaxed);
    produced?;
    let (messages, bytes, histogram) = reader.join().map_err(|_| "consumer thread panicked")??;
    if messages < total {
        eprintln!("warning: received {messages} of {total} sent records");
    }
    let acks = producer
        .context()
        .latency
        .lock()
        .expect("not poisoned: no panics")
        .clone();
    Ok(Summary {
        workload: "e2e",
        messages,
        bytes,
        seconds,
        latency: Some(histogram),
        acks: Some(acks),
    })
}

/// The e2e consumer: records the latency of each record of this run.
fn read_e2e(
    consumer: &BaseConsumer,
    run: u64,
    total: u64,
    producer_done: &AtomicBool,
) -> Result<(u64, u64, Histogram<u64>), Error> {
    let mut histogram = new_histogram();
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut last_record = Instant::now();
    while messages < total {
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => {
                let now_ns = nanos_now();
                let Some(sent_ns) = message.payload().and_then(|value| e2e_sent_ns(run, value))
                else {
                    continue;
                };
                record_latency(&mut histogram, now_ns.saturating_sub(sent_ns));
                messages += 1;
                bytes += message.payload_len() as u64;
                last_record = Instant::now();
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
        if producer_done.load(Ordering::Relaxed) && last_record.elapsed() >= CONSUMER_IDLE_TIMEOUT {
            break;
        }
    }
    Ok((messages, bytes, histogram))
}

fn run_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// The send time of an e2e payload of run `run`, or `None` for another run's record.
fn e2e_sent_ns(run: u64, payload: &[u8]) -> Option<u64> {
    let run_bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let sent_bytes: [u8; 8] = payload.get(8..16)?.try_into().ok()?;
    (u64::from_be_bytes(run_bytes) == run).then(|| u64::from_be_bytes(sent_bytes))
}
