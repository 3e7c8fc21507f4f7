//! Limits and quotas end to end (issue #18): per-principal byte rates measured with real
//! clients (confluent-kafka producing and consuming, the native CLI producing), the throttle
//! time Kafka clients are told, connection limits per address (native, Kafka, AMQP, HTTP) and
//! per user (AMQP, native, Kafka).
//!
//! The rates are 1 MB/s over ~4 s, after a warm-up that spends the burst a fresh rate
//! window allows (Kafka measures over at least `window_count - 1` samples), so the
//! measurement sees the steady state the quota holds; 20 % is the tolerance.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    client_python, run_client_script, wharf_ok, workspace_root, BrokerProcess,
};

/// The configured rate of every quota test, bytes per second.
const RATE: f64 = 1_000_000.0;
/// How far a measured rate may be from [`RATE`].
const TOLERANCE: f64 = 0.20;
/// Small samples, so the burst a fresh window allows (3 × 250 ms) is short.
const QUOTA_WINDOW: &str = "window_ms = 250\nwindow_count = 4\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `quota_clients.py` and returns its last stdout line.
fn client(args: &[&str]) -> String {
    let output = run_client_script("quota_clients.py", args);
    assert!(
        output.status.success(),
        "quota_clients.py {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// `{"rate": ..., "throttle_max_ms": ...}` from a client's JSON line.
fn rate_and_throttle(line: &str) -> (f64, f64) {
    let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    (
        value["rate"].as_f64().expect("rate"),
        value["throttle_max_ms"].as_f64().expect("throttle_max_ms"),
    )
}

fn assert_near_rate(measured: f64, what: &str) {
    eprintln!("{what}: measured {measured:.0} B/s, configured {RATE:.0} B/s");
    assert!(
        (measured - RATE).abs() <= RATE * TOLERANCE,
        "{what}: measured {measured:.0} B/s, not within {:.0} % of {RATE:.0} B/s",
        TOLERANCE * 100.0
    );
}

#[test]
fn a_producer_is_held_to_its_byte_rate_on_kafka_and_native_and_told_the_throttle_time() {
    // Goal: `quotas.producer_byte_rate` holds a producer of any protocol to the rate, and a
    // Kafka producer hears throttle_time_ms. Method: confluent-kafka produces as fast as it
    // may for 1.5 s (warm-up) + 4 s and reports the acknowledged rate of the last 4 s and
    // the largest throttle its statistics saw; then the native CLI's `perf produce` (same
    // anonymous principal, so the window is already warm) sends 4 MB and reports its rate.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::start_with_config(
        &data_dir,
        &format!("[quotas]\nproducer_byte_rate = {RATE}\n{QUOTA_WINDOW}"),
    );
    let line = client(&["produce", &broker.kafka_address(), "kafka-rate", "1.5", "4"]);
    let (rate, throttle_max_ms) = rate_and_throttle(&line);
    assert_near_rate(rate, "confluent-kafka produce");
    assert!(
        throttle_max_ms > 0.0,
        "librdkafka saw no throttle time in produce responses: {line}"
    );

    let perf = |messages: &str| {
        let summary = wharf_ok(
            &broker.address(),
            &[
                "perf",
                "produce",
                "--topic",
                "native-rate",
                "--messages",
                messages,
                "--size",
                "10000",
                "--batch-bytes",
                "65536",
                "--acks",
                "leader",
            ],
            "",
        );
        let line = summary.lines().last().unwrap_or_default().to_string();
        let value: serde_json::Value = serde_json::from_str(&line).expect("perf JSON");
        value["bytes"].as_f64().expect("bytes") / value["seconds"].as_f64().expect("seconds")
    };
    perf("100");
    assert_near_rate(perf("400"), "native perf produce");
}

#[test]
fn a_consumer_is_held_to_its_fetch_byte_rate() {
    // Goal: `quotas.consumer_byte_rate` holds a Kafka consumer to the rate and it hears
    // throttle_time_ms. Method: fill a topic with 12 MB (produce is unlimited), then
    // confluent-kafka consumes it from the start in 64 KiB fetches for 1.5 s + 4 s.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::start_with_config(
        &data_dir,
        &format!("[quotas]\nconsumer_byte_rate = {RATE}\n{QUOTA_WINDOW}"),
    );
    let bootstrap = broker.kafka_address();
    assert_eq!(client(&["fill", &bootstrap, "fetch-rate", "1200"]), "ok");
    let line = client(&["consume", &bootstrap, "fetch-rate", "1.5", "4"]);
    let (rate, throttle_max_ms) = rate_and_throttle(&line);
    assert_near_rate(rate, "confluent-kafka consume");
    assert!(
        throttle_max_ms > 0.0,
        "librdkafka saw no throttle time in fetch responses: {line}"
    );
}

/// True if the peer closes `stream` without a byte within a few seconds.
fn closed_without_a_byte(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

/// One HTTP/1.1 GET on `stream`; the whole answer.
fn http_get(stream: &mut TcpStream, address: &str, path: &str) -> String {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn connections_per_address_are_limited_over_every_listener() {
    // Goal: `connections_per_ip_max` counts one address's connections over all listeners
    // and refuses the next one in each protocol's terms: native and Kafka close it at once
    // (as Kafka does), AMQP answers connection.open with 530 NOT_ALLOWED, HTTP answers 429;
    // a connection is counted until it closes. Method: hold two raw connections, then try
    // each listener.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let broker = BrokerProcess::start_with_config(&data_dir, "connections_per_ip_max = 2\n");
    let first = TcpStream::connect(broker.addr()).expect("first connection");
    let second = TcpStream::connect(broker.amqp_address()).expect("second connection");
    // The broker counts a connection when it accepts it; give it a moment to do so.
    std::thread::sleep(Duration::from_millis(200));

    let mut native = TcpStream::connect(broker.addr()).expect("connect native");
    assert!(closed_without_a_byte(&mut native), "native over the limit");
    let mut kafka = TcpStream::connect(broker.kafka_address()).expect("connect kafka");
    assert!(closed_without_a_byte(&mut kafka), "Kafka over the limit");
    let amqp = broker.amqp_address();
    let refused = client(&[
        "amqp-connect",
        &amqp.ip().to_string(),
        &amqp.port().to_string(),
        "guest",
        "guest",
    ]);
    assert!(
        refused.contains("530") && refused.contains("connection limit"),
        "AMQP over the limit: {refused}"
    );
    let http = broker.http_address();
    let mut stream = TcpStream::connect(&http).expect("connect http");
    let answer = http_get(&mut stream, &http, "/api/v1/topics");
    assert!(
        answer.starts_with("HTTP/1.1 429"),
        "HTTP over the limit: {answer}"
    );
    assert!(answer.contains("connection limit"), "{answer}");
    let metrics = {
        drop(first);
        std::thread::sleep(Duration::from_millis(200));
        let mut stream = TcpStream::connect(&http).expect("connect http");
        http_get(&mut stream, &http, "/metrics")
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for listener in ["native", "kafka", "amqp"] {
        assert!(
            metrics.contains(&format!(
                "wharf_listener_connections_refused_total{{listener=\"{listener}\"}} 1"
            )),
            "{listener} refusal counted: {metrics}"
        );
    }
    // With one slot free again (the HTTP request above has closed), native works.
    std::thread::sleep(Duration::from_millis(200));
    wharf_ok(&broker.address(), &["topic", "list"], "");
    drop(second);
}

/// Runs `wharfd user create NAME --data-dir DIR --password-stdin`.
fn create_user(data_dir: &Path, name: &str, password: &str) {
    let mut child = Command::new(integration_tests::wharfd_path())
        .args(["user", "create", name, "--data-dir"])
        .arg(data_dir)
        .arg("--password-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wharfd user create");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    drop(stdin);
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn connections_per_user_are_limited_on_every_protocol_that_logs_in() {
    // Goal: `connections_per_user_max` refuses a user's next login on AMQP (530 at
    // connection.open, as RabbitMQ does), natively and on Kafka (an authentication failure
    // saying why) while the user holds its connections, and lets it in once one closes.
    // Method: pika holds alice's one allowed connection; then each protocol logs in again.
    const PASSWORD: &str = "quota test password";
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    create_user(&data_dir, "alice", PASSWORD);
    let broker = BrokerProcess::start_with_config(
        &data_dir,
        "authentication = \"required\"\nconnections_per_user_max = 1\n",
    );
    let amqp = broker.amqp_address();
    let (host, port) = (amqp.ip().to_string(), amqp.port().to_string());
    let script = workspace_root().join("tests/clients/quota_clients.py");
    let mut holder = Command::new(client_python())
        .arg(&script)
        .args(["amqp-hold", &host, &port, "alice", PASSWORD])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pika holder");
    let mut held = String::new();
    BufReader::new(holder.stdout.take().expect("stdout"))
        .read_line(&mut held)
        .expect("read held");
    assert_eq!(held.trim(), "held");

    let refused = client(&["amqp-connect", &host, &port, "alice", PASSWORD]);
    assert!(
        refused.contains("530") && refused.contains("user connection limit"),
        "AMQP: {refused}"
    );
    let kafka = client(&["kafka-login", &broker.kafka_address(), "alice", PASSWORD]);
    assert!(kafka.starts_with("failed"), "Kafka: {kafka}");
    assert!(kafka.contains("connection limit"), "Kafka: {kafka}");
    let native = Command::new(integration_tests::wharf_path())
        .args([
            "--broker",
            &broker.address(),
            "--user",
            "alice",
            "topic",
            "list",
        ])
        .env("WHARF_PASSWORD", PASSWORD)
        .output()
        .expect("wharf");
    assert!(!native.status.success());
    assert!(
        text(&native.stderr).contains("connection limit"),
        "native: {}",
        text(&native.stderr)
    );

    drop(holder.stdin.take());
    holder.wait().expect("holder exits");
    std::thread::sleep(Duration::from_millis(300));
    let allowed = client(&["amqp-connect", &host, &port, "alice", PASSWORD]);
    assert_eq!(allowed, "ok");
}
