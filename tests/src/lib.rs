//! Shared helpers for the end-to-end tests: start the real `wharfd` binary on an ephemeral
//! port with a temp data dir, kill it (SIGKILL) or stop it (SIGTERM), restart it on the same
//! port and data, and run the `wharf` CLI against it.
//!
//! The binaries are built once per test process with `cargo build --bins` (a no-op when they
//! are fresh), so a test never runs a stale `wharf` or `wharfd`.

pub mod cluster;
pub mod netns;
pub mod tls;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a broker may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding the workspace's debug binaries.
pub fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> → target/<profile>
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test executable lives in target/<profile>/deps")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let mut build = Command::new(cargo);
            build.args([
                "build",
                "--bins",
                "-p",
                "wharf-broker",
                "-p",
                "wharf-client",
            ]);
            if dir.file_name().and_then(|name| name.to_str()) == Some("release") {
                build.arg("--release");
            }
            let status = build
                .status()
                .expect("running cargo build for the binaries");
            assert!(status.success(), "cargo build --bins failed");
            dir
        })
        .clone()
}

/// Path of the `wharfd` binary.
pub fn wharfd_path() -> PathBuf {
    bin_dir().join("wharfd")
}

/// Path of the `wharf` binary.
pub fn wharf_path() -> PathBuf {
    bin_dir().join("wharf")
}

/// A `wharfd` child process.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    addr: SocketAddr,
    /// The Kafka listener's address (`None`: turned off by the test's arguments).
    kafka_addr: Option<SocketAddr>,
    /// The AMQP listener's address (`None`: turned off by the test's arguments).
    amqp_addr: Option<SocketAddr>,
    /// The HTTP listener's address (`None`: turned off by the test's arguments).
    http_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    /// The scheme of `--listen` with its `://` (`ssl://`), or empty: a restart keeps it.
    listen_scheme: String,
    extra_args: Vec<String>,
    /// Where its log (stderr) goes, appended across restarts; inherited when `None`.
    log_path: Option<PathBuf>,
    /// Environment variables set for it beyond the test's own (kept across restarts).
    env: Vec<(String, String)>,
}

impl BrokerProcess {
    /// Starts `wharfd` on 127.0.0.1 with an ephemeral port and `data_dir`.
    pub fn start(data_dir: &Path) -> BrokerProcess {
        BrokerProcess::start_with(data_dir, "127.0.0.1:0", &[], &[])
    }

    /// Starts `wharfd` with a config file (TOML text written next to the data dir).
    pub fn start_with_config(data_dir: &Path, config_toml: &str) -> BrokerProcess {
        let config_path = data_dir.with_extension("toml");
        std::fs::write(&config_path, config_toml).expect("writing the config file");
        let args = vec!["--config".to_string(), config_path.display().to_string()];
        BrokerProcess::start_with(data_dir, "127.0.0.1:0", &args, &[])
    }

    /// Starts `wharfd` with `WHARF_LOG=log_filter`, its log appended to `log_path` (for tests
    /// of what an operator reads).
    pub fn start_logging(data_dir: &Path, log_path: &Path, log_filter: &str) -> BrokerProcess {
        let mut broker = BrokerProcess::spawn(
            data_dir,
            "127.0.0.1:0",
            &[],
            Some((log_path, log_filter)),
            &[],
        );
        broker.log_path = Some(log_path.to_path_buf());
        broker
    }

    /// Starts `wharfd` with `--listen listen` (a scheme may lead: `ssl://127.0.0.1:0`) and
    /// `extra_args`; other listeners not named in them get ephemeral plaintext ports. With
    /// `log`, its log goes to that file at that filter.
    pub fn start_listening(
        data_dir: &Path,
        listen: &str,
        extra_args: &[String],
        log: Option<(&Path, &str)>,
    ) -> BrokerProcess {
        let mut broker = BrokerProcess::spawn(data_dir, listen, extra_args, log, &[]);
        broker.log_path = log.map(|(path, _)| path.to_path_buf());
        broker
    }

    /// As [`BrokerProcess::start_listening`] with no log file, and `env` set in its
    /// environment (and again at each restart).
    pub fn start_listening_with_env(
        data_dir: &Path,
        listen: &str,
        extra_args: &[String],
        env: &[(String, String)],
    ) -> BrokerProcess {
        BrokerProcess::spawn(data_dir, listen, extra_args, None, env)
    }

    /// Its process id (for a test that signals it from a client script).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The config file [`BrokerProcess::start_with_config`] wrote (rewrite it, then
    /// [`BrokerProcess::hangup`], to change what a SIGHUP reloads).
    pub fn config_path(&self) -> PathBuf {
        self.data_dir.with_extension("toml")
    }

    /// Sends it SIGHUP (reload the TLS certificate and the resource alarms' limits).
    pub fn hangup(&self) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args(["-HUP", &child.id().to_string()])
                .status()
                .expect("running kill");
            assert!(status.success(), "kill -HUP failed");
        }
    }

    fn start_with(
        data_dir: &Path,
        listen: &str,
        extra_args: &[String],
        env: &[(String, String)],
    ) -> BrokerProcess {
        BrokerProcess::spawn(data_dir, listen, extra_args, None, env)
    }

    fn spawn(
        data_dir: &Path,
        listen: &str,
        extra_args: &[String],
        log: Option<(&Path, &str)>,
        env: &[(String, String)],
    ) -> BrokerProcess {
        let stderr = match log {
            Some((path, _)) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("opening the broker log"),
            ),
            None => Stdio::inherit(),
        };
        // Every broker gets its own ephemeral Kafka port unless the test chose one (or `off`):
        // the default 9092 would collide between tests running in parallel.
        let mut extra_args = extra_args.to_vec();
        if !extra_args.iter().any(|arg| arg == "--kafka-listen") {
            extra_args.extend(["--kafka-listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        if !extra_args.iter().any(|arg| arg == "--amqp-listen") {
            extra_args.extend(["--amqp-listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        let kafka_on = extra_args
            .windows(2)
            .any(|pair| pair[0] == "--kafka-listen" && pair[1] != "off");
        let amqp_on = extra_args
            .windows(2)
            .any(|pair| pair[0] == "--amqp-listen" && pair[1] != "off");
        // Likewise the HTTP listener (default 7480).
        if !extra_args.iter().any(|arg| arg == "--http-listen") {
            extra_args.extend(["--http-listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        let http_on = extra_args
            .windows(2)
            .any(|pair| pair[0] == "--http-listen" && pair[1] != "off");
        let filter = match log {
            Some((_, filter)) => filter.to_string(),
            None => std::env::var("WHARF_LOG").unwrap_or_else(|_| "warn".to_string()),
        };
        let mut child = Command::new(wharfd_path())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen)
            .args(&extra_args)
            .env("WHARF_LOG", filter)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting wharfd");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The listeners' lines, then keep draining so the child never blocks on a full
            // pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let address_of = |line: &str| -> SocketAddr {
            line.rsplit(' ')
                .next()
                .and_then(|text| text.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line from wharfd: {line:?}"))
        };
        let line = receiver
            .recv_timeout(START_TIMEOUT)
            .expect("wharfd did not report its address in time");
        let addr = address_of(&line);
        let kafka_addr = kafka_on.then(|| {
            let line = receiver
                .recv_timeout(START_TIMEOUT)
                .expect("wharfd did not report its Kafka address in time");
            assert!(line.starts_with("kafka listening on "), "{line:?}");
            address_of(&line)
        });
        let amqp_addr = amqp_on.then(|| {
            let line = receiver
                .recv_timeout(START_TIMEOUT)
                .expect("wharfd did not report its AMQP address in time");
            assert!(line.starts_with("amqp listening on "), "{line:?}");
            address_of(&line)
        });
        let http_addr = http_on.then(|| {
            let line = receiver
                .recv_timeout(START_TIMEOUT)
                .expect("wharfd did not report its HTTP address in time");
            assert!(line.starts_with("http listening on "), "{line:?}");
            address_of(&line)
        });
        // The test's own arguments, so a restart can pin the ports it got.
        for (flag, bound) in [
            ("--kafka-listen", kafka_addr),
            ("--amqp-listen", amqp_addr),
            ("--http-listen", http_addr),
        ] {
            // A scheme (`ssl://127.0.0.1:0`) stays in front of the pinned port.
            let at = extra_args
                .windows(2)
                .position(|pair| pair[0] == flag && scheme_and_rest(&pair[1]).1 == "127.0.0.1:0");
            if let (Some(bound), Some(at)) = (bound, at) {
                let scheme = scheme_and_rest(&extra_args[at + 1]).0.to_string();
                extra_args[at + 1] = format!("{scheme}{bound}");
            }
        }
        BrokerProcess {
            child: Some(child),
            addr,
            kafka_addr,
            amqp_addr,
            http_addr,
            data_dir: data_dir.to_path_buf(),
            listen_scheme: scheme_and_rest(listen).0.to_string(),
            extra_args,
            log_path: None,
            env: env.to_vec(),
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The AMQP 0-9-1 listener's address.
    ///
    /// # Panics
    /// If the test turned the AMQP listener off.
    pub fn amqp_address(&self) -> SocketAddr {
        self.amqp_addr
            .expect("the AMQP listener is off for this broker")
    }

    /// `host:port` of the Kafka listener, for Kafka clients' `bootstrap.servers`.
    ///
    /// # Panics
    /// If the test turned the Kafka listener off.
    pub fn kafka_address(&self) -> String {
        self.kafka_addr
            .expect("the Kafka listener is off for this broker")
            .to_string()
    }

    /// `host:port` of the HTTP listener (metrics, health, admin API).
    ///
    /// # Panics
    /// If the test turned the HTTP listener off.
    pub fn http_address(&self) -> String {
        self.http_addr
            .expect("the HTTP listener is off for this broker")
            .to_string()
    }

    /// `host:port` for `--broker`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Sends it `signal` by name (`STOP` pauses it, `CONT` resumes it) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Whether its process has ended (killed by someone else, say), reaping it if so.
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))))
    }

    /// Kills it with SIGKILL and waits for it to die.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM (graceful shutdown) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("wharfd did not stop within 30 s of SIGTERM");
        }
    }

    /// Starts it again on the same port and data directory (after `kill` or `stop`).
    pub fn restart(&mut self) {
        self.kill();
        let listen = format!("{}{}", self.listen_scheme, self.addr);
        let deadline = Instant::now() + START_TIMEOUT;
        // The old socket is gone with the process; retry briefly in case the port lingers.
        loop {
            let attempt = std::panic::catch_unwind(|| {
                BrokerProcess::start_with(&self.data_dir, &listen, &self.extra_args, &self.env)
            });
            match attempt {
                Ok(started) => {
                    *self = started;
                    return;
                }
                Err(panic) if Instant::now() >= deadline => std::panic::resume_unwind(panic),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl BrokerProcess {
    /// Reads every partition of `topic` from the earliest offset up to its high watermark at
    /// the time of the call: per partition, (offset, `decode(value)`) in offset order.
    pub async fn read_everything<T>(
        &self,
        topic: &str,
        decode: impl Fn(&[u8]) -> T,
    ) -> std::collections::BTreeMap<u32, Vec<(i64, T)>> {
        use wharf_client::{
            Admin, Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset, TopicPartition,
        };
        let client = Client::connect(ClientConfig::new(self.address()))
            .await
            .expect("connect");
        let description = Admin::new(&client)
            .describe_topic(topic)
            .await
            .expect("describe");
        let ends: std::collections::HashMap<u32, i64> = description
            .partitions
            .iter()
            .map(|partition| (partition.partition, partition.high_watermark))
            .collect();
        let mut consumer = Consumer::new(
            &client,
            ConsumerConfig::default().auto_offset_reset(OffsetReset::Earliest),
        );
        consumer
            .assign(
                ends.keys()
                    .map(|partition| TopicPartition::new(topic, *partition))
                    .collect(),
            )
            .expect("assign");
        let mut stored: std::collections::BTreeMap<u32, Vec<(i64, T)>> =
            std::collections::BTreeMap::new();
        let done = |stored: &std::collections::BTreeMap<u32, Vec<(i64, T)>>| {
            ends.iter().all(|(partition, end)| {
                stored
                    .get(partition)
                    .and_then(|records| records.last())
                    .map_or(*end == 0, |last| last.0 + 1 >= *end)
            })
        };
        while !done(&stored) {
            for record in consumer
                .poll(Duration::from_millis(500))
                .await
                .expect("poll")
            {
                stored
                    .entry(record.partition)
                    .or_default()
                    .push((record.offset, decode(&record.value.expect("value"))));
            }
        }
        stored
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `ssl://127.0.0.1:0` → (`ssl://`, `127.0.0.1:0`); no scheme → (``, the setting).
fn scheme_and_rest(setting: &str) -> (&str, &str) {
    match setting.find("://") {
        Some(at) => setting.split_at(at + 3),
        None => ("", setting),
    }
}

/// Runs `wharf --broker ADDR args...` with `stdin` and returns its output.
pub fn wharf(broker: &str, args: &[&str], stdin: &str) -> Output {
    wharf_bytes(broker, args, stdin.as_bytes())
}

/// Like [`wharf`], with raw bytes on stdin (payloads that are not UTF-8).
pub fn wharf_bytes(broker: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(wharf_path())
        .arg("--broker")
        .arg(broker)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wharf");
    let mut input = child.stdin.take().expect("piped stdin");
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let output = child.wait_with_output().expect("waiting for wharf");
    let _ = writer.join();
    output
}

/// Runs `wharf args` on `broker` until it succeeds, or fails saying `done` (a non-empty
/// `done`: the change was made by an earlier attempt whose answer was lost), for 30 s (a
/// metadata change waits while the cluster elects a leader).
pub fn wharf_until_done(broker: &str, args: &[&str], done: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = wharf(broker, args, "");
        let said = String::from_utf8_lossy(&output.stderr).to_string();
        if output.status.success() || (!done.is_empty() && said.contains(done)) {
            return;
        }
        assert!(Instant::now() < deadline, "{args:?} on {broker}: {said}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Like [`wharf`], but panics with both streams unless it exits successfully.
pub fn wharf_ok(broker: &str, args: &[&str], stdin: &str) -> String {
    let output = wharf(broker, args, stdin);
    assert!(
        output.status.success(),
        "wharf {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A minimal blocking client speaking raw frames, for tests that need exact control over
/// what goes on the wire (pipelining, malformed input).
#[derive(Debug)]
pub struct RawClient {
    stream: std::net::TcpStream,
    buffer: bytes::BytesMut,
    next_correlation_id: u32,
    sent: std::collections::VecDeque<(u32, wharf_protocol::ApiKey)>,
    pushed: std::collections::VecDeque<(u32, wharf_protocol::messages::DeliverPush)>,
    /// Frames of deliveries received so far: `Deliver` ones, and per `DeliverBatch` frame
    /// how many deliveries it carried.
    pub deliver_frames: usize,
    pub batch_frames: Vec<usize>,
}

impl RawClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        RawClient {
            stream,
            buffer: bytes::BytesMut::new(),
            next_correlation_id: 1,
            sent: Default::default(),
            pushed: Default::default(),
            deliver_frames: 0,
            batch_frames: Vec::new(),
        }
    }

    /// Sends a request without waiting; returns its correlation id.
    pub fn send(&mut self, request: &wharf_protocol::Request) -> u32 {
        let version = wharf_protocol::api::sent_version(request.api_key());
        self.send_at(request, version)
    }

    /// Sends a request at api version `version` without waiting; returns its correlation id.
    pub fn send_at(&mut self, request: &wharf_protocol::Request, version: u16) -> u32 {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let mut out = bytes::BytesMut::new();
        let header = wharf_protocol::FrameHeader {
            api_key: request.api_key().code(),
            api_version: version,
            correlation_id,
        };
        wharf_protocol::frame::encode_frame(header, &mut out, |body| request.encode_body(body));
        self.stream.write_all(&out).expect("write");
        self.sent.push_back((correlation_id, request.api_key()));
        correlation_id
    }

    /// Reads frames until one arrives, stashing pushed deliveries (they may come between
    /// responses).
    fn read_frame(&mut self) -> wharf_protocol::Frame {
        use std::io::Read;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(frame) =
                wharf_protocol::frame::decode_frame(&mut self.buffer, 64 * 1024 * 1024)
                    .expect("valid frame")
            {
                return frame;
            }
            let count = self.stream.read(&mut chunk).expect("read");
            assert!(count > 0, "broker closed the connection");
            self.buffer.extend_from_slice(&chunk[..count]);
        }
    }

    /// Stashes a pushed delivery frame: a `Deliver` as it is, a `DeliverBatch` as one
    /// `DeliverPush` per delivery it carries (so tests read both shapes alike).
    fn stash_if_push(&mut self, frame: &wharf_protocol::Frame) -> bool {
        use wharf_protocol::wire::Wire;
        let correlation_id = frame.header.correlation_id;
        let mut reader = wharf_protocol::wire::Reader::new(frame.body.clone());
        if frame.header.api_key == wharf_protocol::ApiKey::Deliver.code() {
            let push = wharf_protocol::messages::DeliverPush::decode(&mut reader, "deliver")
                .expect("push decodes");
            self.deliver_frames += 1;
            self.pushed.push_back((correlation_id, push));
            return true;
        }
        if frame.header.api_key != wharf_protocol::ApiKey::DeliverBatch.code() {
            return false;
        }
        let batch = wharf_protocol::messages::DeliverBatchPush::decode(&mut reader, "batch")
            .expect("batch push decodes");
        let records: Vec<wharf_protocol::batch::Record> = batch
            .records()
            .collect::<Result<_, _>>()
            .expect("batch records decode");
        assert_eq!(records.len(), batch.marks.len(), "one record per mark");
        self.batch_frames.push(records.len());
        for (mark, record) in batch.marks.iter().zip(records) {
            let push = wharf_protocol::messages::DeliverPush {
                consumer_id: batch.consumer_id,
                delivery_tag: mark.delivery_tag,
                redelivered: mark.redelivered,
                routing_key: record
                    .key
                    .map(|key| String::from_utf8(key.to_vec()).expect("utf-8 routing key"))
                    .unwrap_or_default(),
                timestamp_ms: record.timestamp_ms,
                headers: record
                    .headers
                    .into_iter()
                    .map(|header| wharf_protocol::messages::HeaderEntry {
                        key: header.key,
                        value: header.value,
                    })
                    .collect(),
                body: record.value.unwrap_or_default(),
            };
            self.pushed.push_back((correlation_id, push));
        }
        true
    }

    /// The next pushed delivery (from any subscription of this connection) with the
    /// correlation id of the Subscribe that started it.
    pub fn next_push(&mut self) -> (u32, wharf_protocol::messages::DeliverPush) {
        loop {
            if let Some(push) = self.pushed.pop_front() {
                return push;
            }
            let frame = self.read_frame();
            assert!(
                self.stash_if_push(&frame),
                "a response arrived while only pushes were expected"
            );
        }
    }

    /// Reads the next response (responses come in request order).
    pub fn receive(&mut self) -> (u32, wharf_protocol::Response) {
        let (expected_id, api_key) = self.sent.pop_front().expect("a request in flight");
        loop {
            let frame = self.read_frame();
            if self.stash_if_push(&frame) {
                continue;
            }
            assert_eq!(
                frame.header.correlation_id, expected_id,
                "responses out of order"
            );
            let response =
                wharf_protocol::Response::decode(api_key, frame.body).expect("response decodes");
            return (expected_id, response);
        }
    }

    /// Sends a request and waits for its response.
    pub fn call(&mut self, request: &wharf_protocol::Request) -> wharf_protocol::Response {
        self.send(request);
        self.receive().1
    }
}

/// The workspace root (where README.md and `tests/clients` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The Python of the venv that `scripts/test.sh` fills with the real Kafka clients
/// (`tests/clients/requirements.txt`); `WHARF_TEST_PYTHON` overrides it.
///
/// # Panics
/// If it is missing: the real-client tests need `scripts/test.sh` (README) to install them.
pub fn client_python() -> PathBuf {
    let python = std::env::var_os("WHARF_TEST_PYTHON").map_or_else(
        || workspace_root().join("target/test-clients/venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (README), which installs the real client libraries these tests drive",
        python.display()
    );
    python
}

/// Runs `tests/clients/<script>` with the clients' Python and `args`, with a time limit.
pub fn run_client_script(script: &str, args: &[&str]) -> Output {
    let path = workspace_root().join("tests/clients").join(script);
    run_with_deadline(
        Command::new(client_python()).arg(path).args(args),
        Duration::from_secs(180),
    )
}

/// Checks the answer of `confluent_coordinator.py steady`: the group settled, no member
/// saw a revoke or an assign after the kill (`what` says what the kill was), both read on
/// to the end of the window, and both then committed as members of the group.
pub fn assert_steady_group(answer: &serde_json::Value, what: &str) {
    assert_eq!(answer["settled"], true, "{answer}");
    assert_eq!(
        answer["events_after_kill"],
        serde_json::json!([]),
        "no member rebalanced {what}: {answer}"
    );
    let read: Vec<u64> = answer["read_after_kill"]
        .as_array()
        .expect("counts")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(
        read.len() == 2 && read.iter().all(|count| *count > 0),
        "both members read on {what}: {answer}"
    );
    assert!(
        answer["last_read_s"].as_f64().unwrap_or(0.0) > 6.0,
        "reading went on to the end of the window: {answer}"
    );
    assert_eq!(
        answer["commits"],
        serde_json::json!(["ok", "ok"]),
        "both are still members of the group the coordinator holds: {answer}"
    );
}

/// Runs `tests/clients/<script>` as [`run_client_script`] does and returns the one JSON
/// document it prints.
///
/// # Panics
/// If the script fails or prints no JSON.
pub fn run_client_json(script: &str, args: &[&str]) -> serde_json::Value {
    let output = run_client_script(script, args);
    assert!(
        output.status.success(),
        "{script} {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

/// Runs `kcat` (Debian's package, installed by `scripts/test.sh`) with `args` and `stdin`.
///
/// # Panics
/// If kcat is not installed.
pub fn kcat(args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new("kcat");
    command.args(args);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is missing: run scripts/test.sh (README), which installs it");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("writing kcat's stdin");
    wait_with_deadline(child, Duration::from_secs(120))
}

/// Runs `command` with no stdin and its output captured, killing it after `limit`.
pub fn run_with_deadline(command: &mut Command, limit: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    wait_with_deadline(child, limit)
}

/// Waits for `child`, killing it after `limit` (a hung client fails the test, not CI).
fn wait_with_deadline(child: Child, limit: Duration) -> Output {
    let id = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if receiver.recv_timeout(limit).is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
        }
    });
    let output = child.wait_with_output().expect("waiting for the client");
    let _ = sender.send(());
    output
}

/// Runs `tests/clients/<script>` with Node.js (kafkajs from `tests/clients/node_modules`,
/// installed by `scripts/test.sh`), with a time limit.
///
/// # Panics
/// If kafkajs is not installed.
pub fn run_node_script(script: &str, args: &[&str]) -> Output {
    let clients = workspace_root().join("tests/clients");
    assert!(
        clients.join("node_modules/kafkajs").exists(),
        "kafkajs is missing from tests/clients/node_modules: run scripts/test.sh (README), which installs it"
    );
    run_with_deadline(
        Command::new("node")
            .arg(clients.join(script))
            .args(args)
            .current_dir(&clients),
        Duration::from_secs(180),
    )
}

/// Runs `wharfd user create NAME --data-dir DIR --password-stdin [extra]` with `password`.
pub fn wharfd_user_create(data_dir: &Path, name: &str, password: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(wharfd_path())
        .args(["user", "create", name, "--data-dir"])
        .arg(data_dir)
        .arg("--password-stdin")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wharfd user create");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .expect("writing the password");
    drop(stdin);
    child.wait_with_output().expect("waiting for wharfd")
}

/// Runs `wharf --broker ADDR [--user USER with WHARF_PASSWORD] args` with `stdin`.
pub fn wharf_as(broker: &str, login: Option<(&str, &str)>, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(wharf_path());
    command.arg("--broker").arg(broker);
    command
        .env_remove("WHARF_PASSWORD")
        .env_remove("WHARF_USER");
    if let Some((user, password)) = login {
        command
            .arg("--user")
            .arg(user)
            .env("WHARF_PASSWORD", password);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wharf");
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin.as_bytes()).expect("writing stdin");
    drop(input);
    child.wait_with_output().expect("waiting for wharf")
}

/// One HTTP/1.1 GET on a fresh connection; returns the status and the whole answer.
pub fn http_get(address: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    http_call(address, "GET", path, authorization)
}

/// One HTTP/1.1 request without a body on a fresh connection; returns the status and the
/// whole answer.
pub fn http_call(
    address: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    http_send(address, method, path, authorization, None)
}

/// One HTTP/1.1 request on a fresh connection, with an optional JSON body; returns the
/// status and the whole answer.
pub fn http_send(
    address: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    json_body: Option<&str>,
) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let header = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    let body = json_body.unwrap_or("");
    let content_type = if json_body.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{header}{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("read answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// Base64 of `user:password`, as HTTP basic auth sends it.
pub fn basic(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in bytes.chunks(3) {
        let triple = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(char::from(
                    ALPHABET[((triple >> (18 - 6 * index)) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `wharfd` with its data directory on a tmpfs of its own (`size` as `mount -o size=`
/// takes it: `8m`, `128m`), mounted in a private mount namespace (`unshare -m`, util-linux;
/// it needs root, as CI runs): a small disk for full-disk and disk-alarm tests that nothing
/// outside the broker sees. Killed when dropped.
#[derive(Debug)]
pub struct TmpfsBroker {
    child: Child,
    lines: Vec<String>,
    /// Kept open: a later line from wharfd must not meet a closed pipe.
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    _temp: tempfile::TempDir,
}

impl TmpfsBroker {
    /// Starts it with `config_toml` as its config file and `listeners` (wharfd's listener
    /// flags, space-separated), and waits for its first `listening` lines. Its log
    /// (`WHARF_LOG=log_filter`) goes to `log`, or nowhere.
    pub fn start(
        size: &str,
        config_toml: &str,
        listeners: &str,
        listening: usize,
        log: Option<&Path>,
        log_filter: &str,
    ) -> TmpfsBroker {
        let temp = tempfile::tempdir().expect("temp dir");
        let mount = temp.path().join("tmpfs");
        std::fs::create_dir(&mount).expect("mount point");
        let config = temp.path().join("wharf.toml");
        std::fs::write(&config, config_toml).expect("config");
        let script = format!(
            "mount -t tmpfs -o size={size} tmpfs \"$1\" && exec \"$2\" --config \"$3\" --data-dir \"$1/data\" {listeners}"
        );
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        };
        let mut child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script, "sh"])
            .arg(&mount)
            .arg(wharfd_path())
            .arg(&config)
            .env("WHARF_LOG", log_filter)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("unshare (util-linux) runs wharfd in its own mount namespace");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let lines: Vec<String> = stdout
            .by_ref()
            .take(listening)
            .map(|line| line.expect("a line"))
            .collect();
        assert_eq!(
            lines.len(),
            listening,
            "wharfd started on the tmpfs (a mount failure ends it without a line): {lines:?}"
        );
        TmpfsBroker {
            child,
            lines,
            _stdout: stdout,
            _temp: temp,
        }
    }

    /// The address of the `index`th listening line (0: the first printed).
    pub fn address(&self, index: usize) -> String {
        self.lines[index]
            .rsplit(' ')
            .next()
            .expect("an address")
            .to_string()
    }

    /// The address of the listening line that starts with `prefix` (`amqp listening on`).
    pub fn address_of(&self, prefix: &str) -> String {
        let line = self
            .lines
            .iter()
            .find(|line| line.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {:?}", self.lines));
        line.rsplit(' ').next().expect("an address").to_string()
    }
}

impl Drop for TmpfsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SplitMix64: a tiny deterministic generator, so a test's seed replays the same choices.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// A number below `bound` (not 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}
