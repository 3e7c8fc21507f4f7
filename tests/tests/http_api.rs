//! The HTTP front end (issue #17) against the real `wharfd`: Prometheus metrics after real
//! traffic (parsed by the official Prometheus Python client's text parser), the Kubernetes
//! health probes (not ready on a full disk), the admin JSON API's round trips and its JSON
//! errors. Each test starts its own broker on ephemeral ports with a temp data dir.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use integration_tests::{kcat, run_client_script, wharf, wharf_ok, BrokerProcess};
use serde_json::{json, Value};

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.body))
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole answer: a minimal
/// client, so the tests need no HTTP crate. `body` is sent as `application/json`.
fn http(address: &str, method: &str, path: &str, body: Option<&str>) -> Answer {
    let mut stream = TcpStream::connect(address).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or(""));
    stream.write_all(request.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read answer");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_string(),
    }
}

fn get(address: &str, path: &str) -> Answer {
    http(address, "GET", path, None)
}

/// Samples of one scrape, parsed by `prometheus_client.parser`: (name, labels) → value.
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Scrapes `/metrics` with the Prometheus Python client's parser.
    fn take(http_address: &str) -> Scrape {
        let url = format!("http://{http_address}/metrics");
        let output = run_client_script("prometheus_parse.py", &[&url]);
        assert!(
            output.status.success(),
            "the Prometheus parser refused /metrics:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: Value = serde_json::from_slice(&output.stdout).expect("parser output");
        assert!(
            parsed["content_type"]
                .as_str()
                .is_some_and(|value| value.starts_with("text/plain; version=0.0.4")),
            "{}",
            parsed["content_type"]
        );
        let types = serde_json::from_value(parsed["types"].clone()).expect("types");
        let samples = parsed["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|sample| {
                (
                    sample[0].as_str().expect("name").to_string(),
                    serde_json::from_value(sample[1].clone()).expect("labels"),
                    sample[2].as_f64().expect("value"),
                )
            })
            .collect();
        Scrape { types, samples }
    }

    /// The value of the sample `name` whose labels include `labels`.
    ///
    /// # Panics
    /// If there is no such sample, or more than one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(sample, sample_labels, _)| {
                sample == name
                    && labels.iter().all(|(key, value)| {
                        sample_labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .map(|(_, _, value)| *value)
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one sample {name}{labels:?} expected, found {matching:?}"
        );
        matching[0]
    }
}

#[test]
fn metrics_after_real_traffic_equal_what_was_sent() {
    // Goal: /metrics is valid Prometheus text and its numbers are what the test did.
    // Method: produce, consume in a group, produce more, publish to and consume from a
    // queue with the `wharf` CLI, list metadata with kcat over the Kafka listener; then
    // scrape with the official Prometheus Python parser and compare.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "events", "--partitions", "1"],
        "",
    );
    let first: String = (0..10).map(|index| format!("event-{index}\n")).collect();
    wharf_ok(&address, &["produce", "events"], &first);
    let consumed = wharf_ok(
        &address,
        &[
            "consume",
            "events",
            "--group",
            "readers",
            "--from",
            "earliest",
            "--max-messages",
            "10",
            "--timeout-ms",
            "10000",
        ],
        "",
    );
    assert_eq!(consumed.lines().count(), 10, "{consumed}");
    let second: String = (10..15).map(|index| format!("event-{index}\n")).collect();
    wharf_ok(&address, &["produce", "events"], &second);
    wharf_ok(&address, &["queue", "declare", "jobs", "--durable"], "");
    wharf_ok(&address, &["publish", "", "jobs", "--confirm"], "a\nb\nc\n");
    let got = wharf_ok(
        &address,
        &[
            "subscribe",
            "jobs",
            "--prefetch",
            "1",
            "--max-messages",
            "2",
            "--timeout-ms",
            "10000",
        ],
        "",
    );
    assert_eq!(got.lines().count(), 2, "{got}");
    let listed = kcat(&["-L", "-b", &broker.kafka_address(), "-J"], "");
    assert!(listed.status.success(), "kcat -L failed");
    // A classic Kafka group: one join completes one rebalance (on a topic of its own, so
    // the counts of `events` stay what the test sent there).
    wharf_ok(&address, &["produce", "kevents"], "k1\nk2\nk3\nk4\nk5\n");
    let kafka_group = kcat(
        &[
            "-b",
            &broker.kafka_address(),
            "-G",
            "kreaders",
            "-X",
            "auto.offset.reset=earliest",
            "-c",
            "5",
            "-q",
            "kevents",
        ],
        "",
    );
    assert!(
        kafka_group.status.success(),
        "kcat -G failed: {}",
        String::from_utf8_lossy(&kafka_group.stderr)
    );
    // Deliberate errors: a topic that exists, over the native protocol, and a topic
    // and a path that do not, over HTTP.
    let again = wharf(
        &address,
        &["topic", "create", "events", "--partitions", "1"],
        "",
    );
    assert!(!again.status.success(), "a second create must fail");
    let web = broker.http_address();
    assert_eq!(get(&web, "/api/v1/topics/missing").status, 404);
    assert_eq!(get(&web, "/no/such/route").status, 404);
    assert_eq!(get(&web, "/health/live").status, 200);
    assert_eq!(get(&web, "/health/live").status, 200);
    // AMQP: 5 publishes (two of them bodies in several frames), a get, a 404.
    let amqp = broker.amqp_address();
    let output = run_client_script(
        "pika_scenarios.py",
        &[
            &amqp.ip().to_string(),
            &amqp.port().to_string(),
            "metrics_traffic",
            "5",
        ],
    );
    assert!(
        output.status.success(),
        "pika metrics_traffic failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Kafka: 5 ApiVersions v0 and one at a version no broker speaks (answered with
    // UNSUPPORTED_VERSION), counted between two scrapes so kcat's requests do not count.
    let before = Scrape::take(&web);
    kafka_api_versions(&broker.kafka_address(), &[0, 0, 0, 0, 0, 99]);

    let scrape = Scrape::take(&broker.http_address());
    check_request_metrics(&before, &scrape);
    // Every byte appended was fsynced before its acks=all answer (flush = always).
    assert_eq!(scrape.types["wharf_storage_flushed_bytes"], "counter");
    assert!(
        scrape.value("wharf_storage_flushed_bytes_total", &[])
            >= scrape.value("wharf_partition_bytes_in_total", &[("topic", "events")])
    );
    // `wharf consume --group readers` joined (a rebalance) and left (another).
    assert_eq!(scrape.types["wharf_group_rebalances"], "counter");
    assert_eq!(
        scrape.value("wharf_group_rebalances_total", &[("group", "readers")]),
        2.0
    );
    assert_eq!(
        scrape.value("wharf_group_rebalances_total", &[("group", "kreaders")]),
        1.0
    );
    let events = [("topic", "events"), ("partition", "0")];
    assert_eq!(scrape.types["wharf_partition_records_in"], "counter");
    assert_eq!(scrape.types["wharf_partition_log_end_offset"], "gauge");
    assert_eq!(
        scrape.types["wharf_storage_fsync_duration_seconds"],
        "histogram"
    );
    assert_eq!(
        scrape.value("wharf_partition_records_in_total", &events),
        15.0
    );
    assert_eq!(
        scrape.value("wharf_partition_records_out_total", &events),
        10.0
    );
    assert_eq!(
        scrape.value("wharf_partition_log_start_offset", &events),
        0.0
    );
    assert_eq!(
        scrape.value("wharf_partition_log_end_offset", &events),
        15.0
    );
    assert_eq!(
        scrape.value("wharf_partition_high_watermark", &events),
        15.0
    );
    assert_eq!(scrape.value("wharf_partition_segments", &events), 1.0);
    // Every byte appended is still stored (no retention ran), so bytes in = size on disk.
    let bytes_in = scrape.value("wharf_partition_bytes_in_total", &events);
    assert!(bytes_in > 15.0 * 7.0, "{bytes_in}");
    assert_eq!(
        scrape.value("wharf_partition_size_bytes", &events),
        bytes_in
    );
    assert!(scrape.value("wharf_partition_bytes_out_total", &events) > 0.0);

    let group = [
        ("group", "readers"),
        ("topic", "events"),
        ("partition", "0"),
    ];
    assert_eq!(scrape.value("wharf_group_committed_offset", &group), 10.0);
    assert_eq!(scrape.value("wharf_group_lag", &group), 5.0);
    assert_eq!(
        scrape.value("wharf_group_members", &[("group", "readers")]),
        0.0
    );

    let jobs = [("queue", "jobs")];
    assert_eq!(
        scrape.value("wharf_queue_messages_published_total", &jobs),
        3.0
    );
    assert_eq!(
        scrape.value("wharf_queue_messages_settled_total", &jobs),
        2.0
    );
    assert!(scrape.value("wharf_queue_messages_delivered_total", &jobs) >= 2.0);
    let left = scrape.value("wharf_queue_messages_ready", &jobs)
        + scrape.value("wharf_queue_messages_unacked", &jobs);
    assert_eq!(left, 1.0);
    assert_eq!(scrape.value("wharf_queue_messages_delayed", &jobs), 0.0);

    let native = [("listener", "native")];
    // Each `wharf` run above opened at least one connection: 8 runs.
    assert!(scrape.value("wharf_listener_connections_accepted_total", &native) >= 8.0);
    let produce_requests = scrape.value(
        "wharf_listener_requests_total",
        &[("listener", "native"), ("api", "Produce")],
    );
    assert!(produce_requests >= 2.0, "{produce_requests}");
    let kafka_metadata = scrape.value(
        "wharf_listener_requests_total",
        &[("listener", "kafka"), ("api", "Metadata")],
    );
    assert!(kafka_metadata >= 1.0, "{kafka_metadata}");
    assert!(scrape.value("wharf_storage_append_duration_seconds_count", &[]) >= 2.0);
    assert!(scrape.value("wharf_storage_fsync_duration_seconds_count", &[]) >= 1.0);
    assert!(scrape.value("wharf_storage_group_commit_records_count", &[]) >= 1.0);
    assert!(scrape.value("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(scrape.value("process_open_fds", &[]) > 3.0);
    assert_eq!(scrape.value("wharf_ready", &[]), 1.0);
    // The disk alarm is off.
    assert_eq!(scrape.value("wharf_disk_alarm", &[]), 0.0);
    assert_eq!(scrape.types["wharf_recovery_duration_seconds"], "gauge");
    let recovery = scrape.value("wharf_recovery_duration_seconds", &[]);
    assert!(recovery > 0.0 && recovery < 60.0, "{recovery}");
}

/// Sends one ApiVersions request per version in `versions` (v0 header, null client id) on one
/// connection to the Kafka listener at `address`, reading each answer.
fn kafka_api_versions(address: &str, versions: &[i16]) {
    let mut stream = TcpStream::connect(address).expect("connect to the Kafka listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    for (correlation_id, version) in versions.iter().enumerate() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&18i16.to_be_bytes());
        frame.extend_from_slice(&version.to_be_bytes());
        frame.extend_from_slice(&(correlation_id as i32).to_be_bytes());
        frame.extend_from_slice(&(-1i16).to_be_bytes());
        let mut request = (frame.len() as i32).to_be_bytes().to_vec();
        request.extend_from_slice(&frame);
        stream.write_all(&request).expect("send ApiVersions");
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).expect("answer size");
        let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut answer).expect("answer");
        assert_eq!(answer[..4], (correlation_id as i32).to_be_bytes());
    }
}

/// Checks the per-listener request metrics against the traffic of
/// `metrics_after_real_traffic_equal_what_was_sent`: `before` was scraped just before the
/// raw Kafka requests, `after` after them.
fn check_request_metrics(before: &Scrape, after: &Scrape) {
    let requests = |scrape: &Scrape, listener: &str, api: &str| {
        scrape.value(
            "wharf_listener_requests_total",
            &[("listener", listener), ("api", api)],
        )
    };
    let timed = |scrape: &Scrape, listener: &str, api: &str| {
        scrape.value(
            "wharf_listener_request_duration_seconds_count",
            &[("listener", listener), ("api", api)],
        )
    };
    let errors = |scrape: &Scrape, listener: &str, api: &str, code: &str| {
        scrape.value(
            "wharf_listener_request_errors_total",
            &[("listener", listener), ("api", api), ("code", code)],
        )
    };
    assert_eq!(
        after.types["wharf_listener_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(after.types["wharf_listener_request_errors"], "counter");
    // Native: every request timed once; two creates, the second refused.
    for api in ["Produce", "Fetch", "CreateTopics"] {
        assert_eq!(
            requests(after, "native", api),
            timed(after, "native", api),
            "{api}"
        );
    }
    assert_eq!(requests(after, "native", "CreateTopics"), 2.0);
    assert_eq!(
        errors(after, "native", "CreateTopics", "TOPIC_ALREADY_EXISTS"),
        1.0
    );
    // Kafka: the six raw requests, one refused.
    assert_eq!(
        requests(after, "kafka", "ApiVersions") - requests(before, "kafka", "ApiVersions"),
        6.0
    );
    assert_eq!(
        timed(after, "kafka", "ApiVersions") - timed(before, "kafka", "ApiVersions"),
        6.0
    );
    let unsupported = |scrape: &Scrape| {
        scrape
            .samples
            .iter()
            .filter(|(name, labels, _)| {
                name == "wharf_listener_request_errors_total"
                    && labels.get("listener").map(String::as_str) == Some("kafka")
                    && labels.get("code").map(String::as_str) == Some("UNSUPPORTED_VERSION")
            })
            .map(|(_, _, value)| *value)
            .sum::<f64>()
    };
    assert_eq!(unsupported(after) - unsupported(before), 1.0);
    assert!(requests(after, "kafka", "Metadata") >= 1.0);
    // AMQP: the pika scenario's methods, publishes counted once each whatever their frames.
    assert_eq!(requests(after, "amqp", "basic.publish"), 5.0);
    assert_eq!(timed(after, "amqp", "basic.publish"), 5.0);
    assert_eq!(requests(after, "amqp", "basic.get"), 1.0);
    assert_eq!(requests(after, "amqp", "queue.declare"), 2.0);
    assert_eq!(errors(after, "amqp", "queue.declare", "NOT_FOUND"), 1.0);
    // HTTP: routes by template, statuses of 400 and above by number.
    assert_eq!(requests(after, "http", "GET /health/live"), 2.0);
    assert_eq!(
        errors(after, "http", "GET /api/v1/topics/{topic}", "404"),
        1.0
    );
    assert_eq!(errors(after, "http", "other", "404"), 1.0);
    // Each of the test's HTTP requests (Connection: close) and the scrape before this one
    // had its own connection; this scrape's is open.
    let http = [("listener", "http")];
    assert!(after.value("wharf_listener_connections_accepted_total", &http) >= 6.0);
    assert!(after.value("wharf_listener_connections", &http) >= 1.0);
    // The scrape before this one was answered (the one in progress is not yet).
    assert!(requests(after, "http", "GET /metrics") >= 1.0);
}

#[test]
fn health_probes_answer_as_kubernetes_expects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let live = get(&broker.http_address(), "/health/live");
    assert_eq!(live.status, 200, "{live:?}");
    assert_eq!(live.json(), json!({"status": "live"}));
    let ready = get(&broker.http_address(), "/health/ready");
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.json(), json!({"status": "ready"}));
}

#[test]
fn admin_api_round_trips_topics_groups_and_queues_with_the_cli() {
    // Goal: the admin API and the CLI see the same objects. Method: create and alter with
    // one, check with the other, then delete.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let address = broker.address();
    let web = broker.http_address();

    let created = http(
        &web,
        "POST",
        "/api/v1/topics",
        Some(r#"{"name": "orders", "partitions": 3, "configs": {"retention.ms": "60000"}}"#),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let created = created.json();
    assert_eq!(
        created["partitions"].as_array().expect("partitions").len(),
        3
    );
    let described = wharf_ok(&address, &["topic", "describe", "orders"], "");
    assert!(described.contains("retention.ms"), "{described}");
    let duplicate = http(
        &web,
        "POST",
        "/api/v1/topics",
        Some(r#"{"name": "orders"}"#),
    );
    assert_eq!(duplicate.status, 409, "{duplicate:?}");
    assert_eq!(duplicate.json()["error"], "already_exists");

    wharf_ok(
        &address,
        &["produce", "orders", "--key-separator", ":"],
        "k:one\nk:two\n",
    );
    let topic = get(&web, "/api/v1/topics/orders").json();
    let records: i64 = topic["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|partition| partition["high_watermark"].as_i64().expect("offset"))
        .sum();
    assert_eq!(records, 2, "{topic}");
    let retention = |topic: &Value| {
        topic["configs"]
            .as_array()
            .expect("configs")
            .iter()
            .find(|config| config["name"] == "retention.ms")
            .cloned()
            .expect("retention.ms")
    };
    assert_eq!(
        retention(&topic),
        json!({"name": "retention.ms", "value": "60000", "source": "topic"})
    );
    let altered = http(
        &web,
        "PATCH",
        "/api/v1/topics/orders/configs",
        Some(r#"{"set": {"segment.bytes": "1048576"}, "delete": ["retention.ms"]}"#),
    );
    assert_eq!(altered.status, 200, "{altered:?}");
    assert_eq!(retention(&altered.json())["source"], "default");
    let grown = http(
        &web,
        "POST",
        "/api/v1/topics/orders/partitions",
        Some(r#"{"partitions": 4}"#),
    );
    assert_eq!(grown.status, 200, "{grown:?}");
    let listed = get(&web, "/api/v1/topics").json();
    assert_eq!(listed["topics"][0]["name"], "orders", "{listed}");
    assert_eq!(listed["topics"][0]["partitions"], 4, "{listed}");

    // Groups: committed offsets and lag as the CLI's consumer left them.
    wharf_ok(
        &address,
        &[
            "consume",
            "orders",
            "--group",
            "billing",
            "--from",
            "earliest",
            "--max-messages",
            "1",
            "--timeout-ms",
            "10000",
        ],
        "",
    );
    let groups = get(&web, "/api/v1/groups").json();
    assert_eq!(groups["groups"][0]["group_id"], "billing", "{groups}");
    let group = get(&web, "/api/v1/groups/billing");
    assert_eq!(group.status, 200, "{group:?}");
    let group = group.json();
    let offsets = group["offsets"].as_array().expect("offsets");
    let committed: i64 = offsets
        .iter()
        .map(|entry| entry["committed_offset"].as_i64().expect("offset"))
        .sum();
    let lag: i64 = offsets
        .iter()
        .map(|entry| entry["lag"].as_i64().expect("lag"))
        .sum();
    assert_eq!(committed, 1, "{group}");
    assert_eq!(lag, 1, "{group}");
    assert_eq!(get(&web, "/api/v1/groups/nobody").status, 404);

    // Queues: counts, and a purge the CLI sees.
    wharf_ok(&address, &["queue", "declare", "mail", "--durable"], "");
    wharf_ok(
        &address,
        &["publish", "", "mail", "--confirm"],
        "m1\nm2\nm3\n",
    );
    let queue = get(&web, "/api/v1/queues/mail").json();
    assert_eq!(queue["ready"], 3, "{queue}");
    assert_eq!(queue["durability"], "durable", "{queue}");
    let queues = get(&web, "/api/v1/queues").json();
    assert_eq!(queues["queues"][0]["name"], "mail", "{queues}");
    let purged = http(&web, "POST", "/api/v1/queues/mail/purge", None);
    assert_eq!(purged.status, 200, "{purged:?}");
    assert_eq!(purged.json()["purged"], 3);
    let listed = wharf_ok(&address, &["queue", "list"], "");
    assert!(listed.contains("mail"), "{listed}");
    assert_eq!(get(&web, "/api/v1/queues/mail").json()["ready"], 0);
    assert_eq!(
        http(&web, "POST", "/api/v1/queues/nothing/purge", None).status,
        404
    );

    // Delete, then the topic is gone for both.
    let deleted = http(&web, "DELETE", "/api/v1/topics/orders", None);
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert_eq!(get(&web, "/api/v1/topics/orders").status, 404);
    let cli = wharf(&address, &["topic", "describe", "orders"], "");
    assert!(!cli.status.success());
}

#[test]
fn bad_requests_get_json_errors_never_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let web = broker.http_address();
    let check = |answer: Answer, status: u16, kind: &str| {
        assert_eq!(answer.status, status, "{answer:?}");
        assert!(
            answer.content_type.starts_with("application/json"),
            "{answer:?}"
        );
        let body = answer.json();
        assert_eq!(body["error"], kind, "{body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|message| !message.is_empty()),
            "{body}"
        );
    };
    check(
        http(&web, "POST", "/api/v1/topics", Some("{\"name\": ")),
        400,
        "bad_json",
    );
    check(
        http(&web, "POST", "/api/v1/topics", Some("[1, 2]")),
        400,
        "bad_json",
    );
    check(
        http(
            &web,
            "POST",
            "/api/v1/topics",
            Some(r#"{"name": "x", "partitions": -1}"#),
        ),
        400,
        "bad_json",
    );
    check(
        http(
            &web,
            "POST",
            "/api/v1/topics",
            Some(r#"{"name": "x", "bogus": 1}"#),
        ),
        400,
        "bad_json",
    );
    check(
        http(
            &web,
            "POST",
            "/api/v1/topics",
            Some(r#"{"name": "x", "partitions": 0}"#),
        ),
        400,
        "bad_request",
    );
    check(
        http(
            &web,
            "POST",
            "/api/v1/topics",
            Some(r#"{"name": "bad/name"}"#),
        ),
        400,
        "bad_request",
    );
    check(get(&web, "/api/v1/topics/missing"), 404, "not_found");
    check(
        http(&web, "DELETE", "/api/v1/topics/missing", None),
        404,
        "not_found",
    );
    check(
        http(&web, "PATCH", "/api/v1/topics/missing/configs", Some("{}")),
        404,
        "not_found",
    );
    check(get(&web, "/api/v1/queues/missing"), 404, "not_found");
    check(get(&web, "/no/such/route"), 404, "not_found");
    let too_large = format!(r#"{{"name": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    check(
        http(&web, "POST", "/api/v1/topics", Some(&too_large)),
        413,
        "body_too_large",
    );
    // Still serving after all of that.
    assert_eq!(get(&web, "/health/live").status, 200);
}

#[test]
fn a_busy_http_port_is_a_startup_error_that_names_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let output = std::process::Command::new(integration_tests::wharfd_path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "off",
            "--amqp-listen",
            "off",
        ])
        .args(["--http-listen", &address])
        .output()
        .expect("run wharfd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {address} for the HTTP listener"))
            && stderr.contains("--http-listen HOST:PORT")
            && stderr.contains("--http-listen off"),
        "{stderr}"
    );
}

/// A full disk makes the broker not ready (the readiness probe answers 503 with the reason),
/// while it stays live and serves reads; once space is freed and a write succeeds, it is
/// ready again. The disk is an 8 MiB tmpfs in a private mount namespace (`unshare -m`, which
/// needs root, as CI runs; tests/tests/disk_usage.rs does the same).
#[test]
fn a_full_disk_makes_the_broker_not_ready_until_a_write_succeeds_again() {
    let broker = integration_tests::TmpfsBroker::start(
        "8m",
        "",
        "--listen 127.0.0.1:0 --kafka-listen off --amqp-listen off --http-listen 127.0.0.1:0",
        2,
        None,
        "error",
    );
    let address = broker.address(0);
    let web = broker.address(1);
    {
        assert_eq!(get(&web, "/health/ready").status, 200);
        wharf_ok(
            &address,
            &["topic", "create", "events", "--partitions", "1"],
            "",
        );
        let line = "x".repeat(1023);
        let flood: String = (0..10 * 1024).map(|_| format!("{line}\n")).collect();
        let full = wharf(&address, &["produce", "events"], &flood);
        assert!(!full.status.success(), "the produce cannot fit");

        let ready = get(&web, "/health/ready");
        assert_eq!(ready.status, 503, "{ready:?}");
        let body = ready.json();
        assert_eq!(body["status"], "not_ready", "{body}");
        assert!(
            body["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("disk full")),
            "{body}"
        );
        assert_eq!(get(&web, "/health/live").status, 200);
        assert_eq!(
            get(&web, "/api/v1/topics").status,
            200,
            "reads still served"
        );

        wharf_ok(&address, &["topic", "delete", "events"], "");
        wharf_ok(&address, &["produce", "after"], "room again\n");
        let ready = get(&web, "/health/ready");
        assert_eq!(ready.status, 200, "{ready:?}");
    }
}

/// Opens an SSE stream at `path` and reads `count` events: (id, event name, data as JSON).
/// `last_event_id` is sent as `Last-Event-ID`, as a reconnecting `EventSource` does.
/// `while_open` runs once the stream's headers arrived (to produce while it streams).
fn sse_events(
    address: &str,
    path: &str,
    last_event_id: Option<&str>,
    count: usize,
    while_open: impl FnOnce(),
) -> Vec<(String, String, Value)> {
    let mut stream = TcpStream::connect(address).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n");
    if let Some(id) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.contains(" 200 "), "{status}");
    while_open();
    // The body is chunked; every event's lines arrive whole, so chunk-size lines are
    // skipped by only looking at `id:`, `event:` and `data:` lines.
    let mut events = Vec::new();
    let (mut id, mut name) = (String::new(), String::new());
    while events.len() < count {
        let mut line = String::new();
        let read = reader
            .read_line(&mut line)
            .expect("an event line within 30 s");
        assert!(read > 0, "the stream ended after {events:?}");
        let line = line.trim_end();
        if let Some(value) = line.strip_prefix("id: ") {
            id = value.to_string();
        } else if let Some(value) = line.strip_prefix("event: ") {
            name = value.to_string();
        } else if let Some(value) = line.strip_prefix("data: ") {
            let data = serde_json::from_str(value).expect("JSON data");
            events.push((std::mem::take(&mut id), std::mem::take(&mut name), data));
        }
    }
    events
}

#[test]
fn records_posted_over_http_stream_as_server_sent_events_and_meet_the_cli() {
    // Goal: one partition, three doors: records appended with POST are read by
    // `wharf consume`, records produced with the CLI arrive on the SSE stream (also while it
    // is open), and a reconnect with Last-Event-ID resumes after the last event.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let address = broker.address();
    let web = broker.http_address();
    wharf_ok(
        &address,
        &["topic", "create", "feed", "--partitions", "1"],
        "",
    );
    let posted = http(
        &web,
        "POST",
        "/api/v1/topics/feed/partitions/0/records",
        Some(
            r#"{"records": [{"key": "k1", "value": "one", "headers": [{"key": "h", "value": "v"}]}, {"value_base64": "AP8="}]}"#,
        ),
    );
    assert_eq!(posted.status, 201, "{posted:?}");
    assert_eq!(posted.json()["base_offset"], 0);
    let consumed = wharf_ok(
        &address,
        &[
            "consume",
            "feed",
            "--from",
            "earliest",
            "--max-messages",
            "1",
            "--timeout-ms",
            "10000",
        ],
        "",
    );
    assert_eq!(consumed.trim(), "one");
    wharf_ok(&address, &["produce", "feed"], "three\n");

    let events = sse_events(
        &web,
        "/api/v1/topics/feed/partitions/0/stream?from=earliest",
        None,
        4,
        || {
            wharf_ok(&address, &["produce", "feed"], "four\n");
        },
    );
    let ids: Vec<&str> = events.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["0", "1", "2", "3"]);
    assert!(events.iter().all(|(_, name, _)| name == "record"));
    assert_eq!(events[0].2["key"], "k1");
    assert_eq!(events[0].2["value"], "one");
    assert_eq!(events[0].2["headers"], json!([{"key": "h", "value": "v"}]));
    assert_eq!(events[1].2["value_base64"], "AP8=");
    assert_eq!(events[2].2["value"], "three");
    assert_eq!(events[3].2["value"], "four");

    let resumed = sse_events(
        &web,
        "/api/v1/topics/feed/partitions/0/stream",
        Some("2"),
        1,
        || {},
    );
    assert_eq!(resumed[0].0, "3");
    assert_eq!(resumed[0].2["value"], "four");

    let unknown = http(
        &web,
        "POST",
        "/api/v1/topics/feed/partitions/7/records",
        Some(r#"{"records": [{"value": "x"}]}"#),
    );
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let unknown = get(&web, "/api/v1/topics/nothing/partitions/0/stream");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let bad = http(
        &web,
        "POST",
        "/api/v1/topics/feed/partitions/0/records",
        Some(r#"{"records": [{"value": "x", "value_base64": "eA=="}]}"#),
    );
    assert_eq!(bad.status, 400, "{bad:?}");
}

/// A WebSocket to the HTTP listener at `path` (tungstenite's blocking client on a plain
/// TCP stream), or the handshake's HTTP answer status when it is refused.
fn ws_connect(address: &str, path: &str) -> Result<tungstenite::WebSocket<TcpStream>, u16> {
    let stream = TcpStream::connect(address).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    match tungstenite::client(format!("ws://{address}{path}"), stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(answer))) => {
            Err(answer.status().as_u16())
        }
        Err(error) => panic!("WebSocket handshake to {path}: {error}"),
    }
}

/// The next text message of `socket` as JSON (pings and pongs skipped).
fn ws_next(socket: &mut tungstenite::WebSocket<TcpStream>) -> Value {
    loop {
        match socket.read().expect("a message within 30 s") {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(text.as_str()).expect("JSON text message")
            }
            tungstenite::Message::Close(frame) => panic!("the socket closed: {frame:?}"),
            _ => {}
        }
    }
}

fn ws_send(socket: &mut tungstenite::WebSocket<TcpStream>, message: &Value) {
    socket
        .send(tungstenite::Message::text(message.to_string()))
        .expect("send a message");
}

#[test]
fn websockets_stream_a_partition_and_consume_a_queue_with_acks() {
    // Goal: a topic socket sends the partition's records from the asked offset (also those
    // produced while it is open); a queue socket delivers what the CLI published, at most
    // `prefetch` unacknowledged, an ack removes a message, a nack requeues it (redelivered),
    // and a closed socket returns its unacknowledged deliveries to the queue.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let address = broker.address();
    let web = broker.http_address();

    wharf_ok(
        &address,
        &["topic", "create", "feed", "--partitions", "1"],
        "",
    );
    wharf_ok(&address, &["produce", "feed"], "a\nb\n");
    let mut socket =
        ws_connect(&web, "/api/v1/topics/feed/partitions/0/ws?from=1").expect("topic socket");
    let first = ws_next(&mut socket);
    assert_eq!(first["type"], "record", "{first}");
    assert_eq!(first["offset"], 1, "{first}");
    assert_eq!(first["value"], "b", "{first}");
    wharf_ok(&address, &["produce", "feed"], "c\n");
    let next = ws_next(&mut socket);
    assert_eq!(
        (next["offset"].clone(), next["value"].clone()),
        (json!(2), json!("c"))
    );
    socket.close(None).expect("close");
    assert_eq!(
        ws_connect(&web, "/api/v1/topics/nothing/partitions/0/ws").err(),
        Some(404)
    );
    let plain = get(&web, "/api/v1/topics/feed/partitions/0/ws");
    assert_eq!(plain.status, 400, "{plain:?}");
    assert_eq!(plain.json()["error"], "not_websocket");

    wharf_ok(&address, &["queue", "declare", "jobs", "--durable"], "");
    wharf_ok(
        &address,
        &["publish", "", "jobs", "--confirm"],
        "j1\nj2\nj3\n",
    );
    let mut socket = ws_connect(&web, "/api/v1/queues/jobs/ws?prefetch=2").expect("queue socket");
    let one = ws_next(&mut socket);
    let two = ws_next(&mut socket);
    assert_eq!(
        (one["type"].clone(), one["body"].clone()),
        (json!("delivery"), json!("j1"))
    );
    assert_eq!(one["routing_key"], "jobs", "{one}");
    assert_eq!(one["redelivered"], false, "{one}");
    assert_eq!(two["body"], "j2", "{two}");
    // Prefetch 2: j3 waits until one is settled.
    let queue = get(&web, "/api/v1/queues/jobs").json();
    assert_eq!(
        (queue["ready"].clone(), queue["unacked"].clone()),
        (json!(1), json!(2)),
        "{queue}"
    );

    ws_send(&mut socket, &json!({"ack": one["tag"]}));
    let mut after_ack = [ws_next(&mut socket), ws_next(&mut socket)];
    after_ack.sort_by_key(|message| message["type"].to_string());
    assert_eq!(after_ack[0]["type"], "delivery", "{after_ack:?}");
    assert_eq!(after_ack[0]["body"], "j3", "{after_ack:?}");
    assert_eq!(after_ack[1], json!({"type": "settled", "tag": one["tag"]}));

    ws_send(&mut socket, &json!({"nack": two["tag"], "requeue": true}));
    let mut after_nack = [ws_next(&mut socket), ws_next(&mut socket)];
    after_nack.sort_by_key(|message| message["type"].to_string());
    assert_eq!(after_nack[0]["body"], "j2", "{after_nack:?}");
    assert_eq!(after_nack[0]["redelivered"], true, "{after_nack:?}");
    assert_eq!(after_nack[1], json!({"type": "settled", "tag": two["tag"]}));

    // The redelivery is counted in /metrics.
    let scraped = get(&web, "/metrics").body;
    assert!(
        scraped.contains("wharf_queue_messages_redelivered_total{queue=\"jobs\"} 1"),
        "{scraped}"
    );

    // Bad client messages are answered, the socket stays.
    ws_send(&mut socket, &json!({"ack": 1, "nack": 2}));
    assert_eq!(ws_next(&mut socket)["error"], "bad_request");
    socket
        .send(tungstenite::Message::text("not json"))
        .expect("send");
    assert_eq!(ws_next(&mut socket)["error"], "bad_json");
    ws_send(&mut socket, &json!({"ack": 999_999}));
    let unknown = ws_next(&mut socket);
    assert_eq!(unknown["type"], "error", "{unknown}");

    // Closing returns the two unacknowledged deliveries (j2 again and j3).
    socket.close(None).expect("close");
    let mut queue = Value::Null;
    for _ in 0..100 {
        queue = get(&web, "/api/v1/queues/jobs").json();
        if queue["ready"] == 2 && queue["unacked"] == 0 && queue["consumers"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        (
            queue["ready"].clone(),
            queue["unacked"].clone(),
            queue["consumers"].clone()
        ),
        (json!(2), json!(0), json!(0)),
        "{queue}"
    );
    assert_eq!(
        ws_connect(&web, "/api/v1/queues/nothing/ws").err(),
        Some(404)
    );
    assert_eq!(
        ws_connect(&web, "/api/v1/queues/jobs/ws?prefetch=0").err(),
        Some(400)
    );
}

#[test]
fn the_openapi_document_is_valid_and_lists_exactly_the_served_routes() {
    // Goal: the document wharfd serves passes a real OpenAPI validator (openapi-spec-validator
    // from PyPI), is the committed docs/openapi.json, and every operation it lists is served:
    // none answers the router's "no route" 404 or a 405.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let web = broker.http_address();
    let served = get(&web, "/api/v1/openapi.json");
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.content_type, "application/json");
    let committed =
        std::fs::read_to_string(integration_tests::workspace_root().join("docs/openapi.json"))
            .expect("docs/openapi.json");
    assert_eq!(served.body.trim_end(), committed.trim_end());

    let output = run_client_script(
        "openapi_validate.py",
        &[&format!("http://{web}/api/v1/openapi.json")],
    );
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let validated: Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert!(
        validated["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{validated}"
    );
    let operations = validated["operations"].as_array().expect("operations");
    assert!(operations.len() >= 25, "{validated}");
    for operation in operations {
        let method = operation[0].as_str().expect("method").to_uppercase();
        let path = operation[1]
            .as_str()
            .expect("path")
            .replace("{topic}", "nothing")
            .replace("{partition}", "0")
            .replace("{queue}", "nothing")
            .replace("{group}", "nothing");
        let body = matches!(method.as_str(), "POST" | "PATCH").then_some("{}");
        let answer = http(&web, &method, &path, body);
        assert_ne!(answer.status, 405, "{method} {path}: {answer:?}");
        assert!(
            !answer.body.contains("no route"),
            "{method} {path} is documented but not served: {answer:?}"
        );
    }
}

#[test]
fn exchanges_bindings_publish_get_fetch_and_group_admin_over_http_meet_the_cli() {
    // Goal: the queue side (declare, bind, publish with confirms, get, unbind, delete), fetch
    // by offset and the group admin (reset, delete) work over HTTP with the CLI's semantics,
    // and the CLI sees what HTTP did.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let address = broker.address();
    let web = broker.http_address();

    // Declares.
    let queue = http(
        &web,
        "PUT",
        "/api/v1/queues/tasks",
        Some(r#"{"durable": true}"#),
    );
    assert_eq!(queue.status, 200, "{queue:?}");
    assert_eq!(queue.json()["durability"], "durable");
    let again = http(
        &web,
        "PUT",
        "/api/v1/queues/tasks",
        Some(r#"{"durable": false}"#),
    );
    assert_eq!(again.status, 409, "{again:?}");
    let exchange = http(
        &web,
        "PUT",
        "/api/v1/exchanges/events",
        Some(r#"{"kind": "topic"}"#),
    );
    assert_eq!(exchange.status, 200, "{exchange:?}");
    assert_eq!(exchange.json()["kind"], "topic");
    let bad = http(
        &web,
        "PUT",
        "/api/v1/exchanges/bad",
        Some(r#"{"kind": "direkt"}"#),
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(wharf_ok(&address, &["queue", "list"], "").contains("tasks"));
    assert!(wharf_ok(&address, &["exchange", "list"], "").contains("events"));
    let binding = r#"{"exchange": "events", "queue": "tasks", "routing_key": "order.*"}"#;
    let bound = http(&web, "POST", "/api/v1/bindings", Some(binding));
    assert_eq!(bound.status, 201, "{bound:?}");
    let bindings = get(&web, "/api/v1/bindings?queue=tasks").json();
    assert!(
        bindings["bindings"]
            .as_array()
            .expect("bindings")
            .contains(&json!({"exchange": "events", "queue": "tasks", "routing_key": "order.*", "arguments": {}})),
        "{bindings}"
    );
    let exchanges = get(&web, "/api/v1/exchanges").json();
    let events = exchanges["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .find(|exchange| exchange["name"] == "events")
        .cloned()
        .expect("events listed");
    assert_eq!(events["bindings"], 1, "{exchanges}");

    // Publish with confirms: routed, dropped, returned, unknown exchange.
    let publish = |body: &str| http(&web, "POST", "/api/v1/publish", Some(body));
    let routed = publish(
        r#"{"exchange": "events", "routing_key": "order.created", "body": "o1", "headers": [{"key": "h", "value": "v"}]}"#,
    );
    assert_eq!(routed.status, 200, "{routed:?}");
    assert_eq!(
        routed.json(),
        json!({"outcome": "routed", "queues": ["tasks"]})
    );
    let dropped = publish(r#"{"exchange": "events", "routing_key": "user.x", "body": "x"}"#);
    assert_eq!(dropped.json()["outcome"], "dropped", "{dropped:?}");
    let returned = publish(
        r#"{"exchange": "events", "routing_key": "user.x", "body": "x", "mandatory": true}"#,
    );
    assert_eq!(returned.json()["outcome"], "returned", "{returned:?}");
    assert_eq!(
        publish(r#"{"exchange": "nothing", "body": "x"}"#).status,
        404
    );
    assert_eq!(
        publish(r#"{"body": "x", "body_base64": "eA=="}"#).status,
        400
    );
    wharf_ok(&address, &["publish", "", "tasks", "--confirm"], "o2\n");

    // Get: requeue leaves them (redelivered next time), ack takes them.
    let peek = http(
        &web,
        "POST",
        "/api/v1/queues/tasks/get",
        Some(r#"{"count": 10, "mode": "requeue"}"#),
    );
    assert_eq!(peek.status, 200, "{peek:?}");
    let peeked = peek.json();
    let messages = peeked["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2, "{peeked}");
    assert_eq!(messages[0]["body"], "o1", "{peeked}");
    assert_eq!(messages[0]["routing_key"], "order.created", "{peeked}");
    assert_eq!(messages[0]["redelivered"], false, "{peeked}");
    assert!(
        messages[0]["headers"]
            .as_array()
            .expect("headers")
            .contains(&json!({"key": "h", "value": "v"})),
        "{peeked}"
    );
    assert_eq!(messages[1]["body"], "o2", "{peeked}");
    assert_eq!(peeked["bytes_limited"], false, "{peeked}");
    // A byte budget smaller than one message still takes one, and says it stopped there.
    let limited = http(
        &web,
        "POST",
        "/api/v1/queues/tasks/get",
        Some(r#"{"count": 10, "mode": "requeue", "bytes_max": 1}"#),
    );
    assert_eq!(limited.status, 200, "{limited:?}");
    let limited = limited.json();
    assert_eq!(
        limited["messages"].as_array().map(Vec::len),
        Some(1),
        "{limited}"
    );
    assert_eq!(limited["messages"][0]["body"], "o1", "{limited}");
    assert_eq!(limited["bytes_limited"], true, "{limited}");
    for bad in [r#"{"bytes_max": 0}"#, r#"{"bytes_max": 4194305}"#] {
        let refused = http(&web, "POST", "/api/v1/queues/tasks/get", Some(bad));
        assert_eq!(refused.status, 400, "{bad}: {refused:?}");
        assert!(refused.body.contains("bytes_max"), "{refused:?}");
    }
    let taken = http(
        &web,
        "POST",
        "/api/v1/queues/tasks/get",
        Some(r#"{"count": 10}"#),
    )
    .json();
    let bodies: Vec<&Value> = taken["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| &message["body"])
        .collect();
    assert_eq!(bodies, [&json!("o1"), &json!("o2")], "{taken}");
    assert_eq!(taken["bytes_limited"], false, "{taken}");
    assert_eq!(taken["messages"][0]["redelivered"], true, "{taken}");
    assert_eq!(get(&web, "/api/v1/queues/tasks").json()["ready"], 0);
    assert_eq!(
        http(
            &web,
            "POST",
            "/api/v1/queues/tasks/get",
            Some(r#"{"count": 0}"#)
        )
        .status,
        400
    );
    assert_eq!(
        http(
            &web,
            "POST",
            "/api/v1/queues/tasks/get",
            Some(r#"{"mode": "keep"}"#)
        )
        .status,
        400
    );

    // Unbind and delete.
    let unbound = http(&web, "POST", "/api/v1/bindings/delete", Some(binding));
    assert_eq!(unbound.status, 204, "{unbound:?}");
    let bindings = get(&web, "/api/v1/bindings?queue=tasks").json();
    assert!(!bindings.to_string().contains("order.*"), "{bindings}");
    assert_eq!(
        http(&web, "DELETE", "/api/v1/exchanges/events", None).status,
        204
    );
    assert_eq!(
        http(&web, "DELETE", "/api/v1/exchanges/events", None).status,
        404
    );
    assert_eq!(
        http(&web, "DELETE", "/api/v1/queues/tasks", None).status,
        204
    );
    assert_eq!(get(&web, "/api/v1/queues/tasks").status, 404);
    assert!(!wharf_ok(&address, &["queue", "list"], "").contains("tasks"));

    // Fetch by offset.
    wharf_ok(
        &address,
        &["topic", "create", "log", "--partitions", "1"],
        "",
    );
    wharf_ok(&address, &["produce", "log"], "r0\nr1\nr2\nr3\n");
    let page = get(
        &web,
        "/api/v1/topics/log/partitions/0/records?offset=1&max_records=2",
    );
    assert_eq!(page.status, 200, "{page:?}");
    let page = page.json();
    let offsets: Vec<(i64, &str)> = page["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|record| {
            (
                record["offset"].as_i64().expect("offset"),
                record["value"].as_str().expect("value"),
            )
        })
        .collect();
    assert_eq!(offsets, [(1, "r1"), (2, "r2")], "{page}");
    assert_eq!(
        (page["next_offset"].clone(), page["high_watermark"].clone()),
        (json!(3), json!(4))
    );
    let rest = get(&web, "/api/v1/topics/log/partitions/0/records?offset=3").json();
    assert_eq!(rest["records"][0]["value"], "r3", "{rest}");
    assert_eq!(rest["next_offset"], 4, "{rest}");
    let end = get(
        &web,
        "/api/v1/topics/log/partitions/0/records?offset=latest",
    )
    .json();
    assert_eq!(end["records"], json!([]), "{end}");
    assert_eq!(
        get(
            &web,
            "/api/v1/topics/log/partitions/0/records?max_records=0"
        )
        .status,
        400
    );
    assert_eq!(
        get(&web, "/api/v1/topics/log/partitions/9/records").status,
        404
    );

    // Group reset (dry run, then for real) and delete.
    wharf_ok(
        &address,
        &[
            "consume",
            "log",
            "--group",
            "g",
            "--from",
            "earliest",
            "--max-messages",
            "4",
            "--timeout-ms",
            "10000",
        ],
        "",
    );
    let committed = |group: &Value| group["offsets"][0]["committed_offset"].clone();
    assert_eq!(committed(&get(&web, "/api/v1/groups/g").json()), 4);
    let planned = http(
        &web,
        "POST",
        "/api/v1/groups/g/reset",
        Some(r#"{"topic": "log", "to": "offset", "offset": 1, "dry_run": true}"#),
    );
    assert_eq!(planned.status, 200, "{planned:?}");
    assert_eq!(
        planned.json()["partitions"],
        json!([{"partition": 0, "current_offset": 4, "new_offset": 1}])
    );
    assert_eq!(committed(&get(&web, "/api/v1/groups/g").json()), 4);
    let reset = http(
        &web,
        "POST",
        "/api/v1/groups/g/reset",
        Some(r#"{"topic": "log", "to": "earliest"}"#),
    );
    assert_eq!(reset.json()["executed"], true, "{reset:?}");
    let group = get(&web, "/api/v1/groups/g").json();
    assert_eq!(committed(&group), 0, "{group}");
    assert_eq!(group["offsets"][0]["lag"], 4, "{group}");
    let incomplete = http(
        &web,
        "POST",
        "/api/v1/groups/g/reset",
        Some(r#"{"topic": "log", "to": "offset"}"#),
    );
    assert_eq!(incomplete.status, 400, "{incomplete:?}");
    let deleted = http(&web, "DELETE", "/api/v1/groups/g", None);
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert_eq!(deleted.json()["deleted_partitions"], 1);
    assert_eq!(get(&web, "/api/v1/groups/g").status, 404);
    assert_eq!(http(&web, "DELETE", "/api/v1/groups/g", None).status, 404);
}

#[test]
fn broker_status_shows_readiness_listeners_counts_and_the_configuration_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start_with_config(
        &dir.path().join("data"),
        "default_partitions = 3\n[log]\nretention_ms = 60000\n",
    );
    let address = broker.address();
    let web = broker.http_address();
    // The topic takes default_partitions from the configuration file.
    let created = http(
        &web,
        "POST",
        "/api/v1/topics",
        Some(r#"{"name": "orders"}"#),
    );
    assert_eq!(created.status, 201, "{created:?}");
    wharf_ok(&address, &["queue", "declare", "jobs", "--durable"], "");
    let status = get(&web, "/api/v1/broker");
    assert_eq!(status.status, 200, "{status:?}");
    let status = status.json();
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["not_ready_reason"], Value::Null, "{status}");
    assert_eq!(status["listeners"]["native"], address, "{status}");
    assert_eq!(status["listeners"]["http"], web, "{status}");
    assert_eq!(
        (
            status["topics"].clone(),
            status["partitions"].clone(),
            status["queues"].clone()
        ),
        (json!(1), json!(3), json!(1)),
        "{status}"
    );
    assert_eq!(status["config"]["default_partitions"], "3", "{status}");
    assert_eq!(status["config"]["log.retention_ms"], "60000", "{status}");
    assert_eq!(status["config"]["auto_create_topics"], "true", "{status}");
    assert!(status["uptime_ms"].as_u64().is_some(), "{status}");
    assert!(
        status["version"]
            .as_str()
            .is_some_and(|version| !version.is_empty()),
        "{status}"
    );
}

#[test]
fn a_group_stream_consumes_as_a_member_commits_and_resumes_where_the_group_left_off() {
    // Goal: an SSE stream in a group gets every partition's records from the group's position
    // (`from=earliest` with none committed), is a member while open, commits what it sent and
    // leaves when closed; a new stream of the same group resumes after the committed offsets.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let address = broker.address();
    let web = broker.http_address();
    wharf_ok(
        &address,
        &["topic", "create", "feed", "--partitions", "2"],
        "",
    );
    let post = |partition: u32, values: &[&str]| {
        let records: Vec<Value> = values.iter().map(|value| json!({"value": value})).collect();
        let answer = http(
            &web,
            "POST",
            &format!("/api/v1/topics/feed/partitions/{partition}/records"),
            Some(&json!({ "records": records }).to_string()),
        );
        assert_eq!(answer.status, 201, "{answer:?}");
    };
    post(0, &["a0", "a1"]);
    post(1, &["b0"]);

    let path = "/api/v1/groups/web/topics/feed/stream?from=earliest";
    let mut members_while_open = Value::Null;
    let events = sse_events(&web, path, None, 3, || {
        members_while_open = get(&web, "/api/v1/groups/web").json()["members"].clone();
    });
    let mut seen: Vec<(String, i64, String)> = events
        .iter()
        .map(|(id, name, data)| {
            assert_eq!(name, "record");
            (
                id.clone(),
                data["partition"].as_i64().expect("partition"),
                data["value"].as_str().expect("value").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("0-0".to_string(), 0, "a0".to_string()),
            ("0-1".to_string(), 0, "a1".to_string()),
            ("1-0".to_string(), 1, "b0".to_string())
        ]
    );
    assert_eq!(
        members_while_open.as_array().map(Vec::len),
        Some(1),
        "{members_while_open}"
    );
    let member = &members_while_open[0];
    assert_eq!(member["client_id"], "wharf-http", "{member}");

    // Closed: the offsets of what was sent are committed and the member left.
    let mut group = Value::Null;
    for _ in 0..100 {
        group = get(&web, "/api/v1/groups/web").json();
        let committed: Vec<i64> = group["offsets"]
            .as_array()
            .map(|offsets| {
                offsets
                    .iter()
                    .map(|entry| entry["committed_offset"].as_i64().unwrap_or(-1))
                    .collect()
            })
            .unwrap_or_default();
        if committed == [2, 1] && group["members"] == json!([]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(group["members"], json!([]), "{group}");
    let committed: Vec<(Value, Value)> = group["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|entry| {
            (
                entry["partition"].clone(),
                entry["committed_offset"].clone(),
            )
        })
        .collect();
    assert_eq!(
        committed,
        [(json!(0), json!(2)), (json!(1), json!(1))],
        "{group}"
    );

    // A new stream of the group starts after the committed offsets.
    post(1, &["b1"]);
    let resumed = sse_events(&web, path, None, 1, || {});
    assert_eq!(resumed[0].0, "1-1", "{resumed:?}");
    assert_eq!(resumed[0].2["value"], "b1", "{resumed:?}");

    assert_eq!(
        get(&web, "/api/v1/groups/web/topics/nothing/stream").status,
        404
    );
    assert_eq!(
        get(&web, "/api/v1/groups/web/topics/feed/stream?from=middle").status,
        400
    );
}

/// The anonymous caller may manage ACLs: once an ACL exists, only super users and callers
/// with Alter on the cluster may add or remove more.
const ADMIN_ANONYMOUS: &str = "super_users = [\"User:ANONYMOUS\"]\n";

#[test]
fn acls_are_added_listed_filtered_and_removed_over_http_and_refused_when_they_mean_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start_with_config(&dir.path().join("data"), ADMIN_ANONYMOUS);
    let address = broker.http_address();
    let add = |body: &str| http(&address, "POST", "/api/v1/acls", Some(body));
    let added = add(
        r#"{"principal":"User:alice","resource_type":"queue","pattern_type":"prefixed","name":"jobs.","operation":"read","permission":"allow"}"#,
    );
    assert_eq!(added.status, 201, "{}", added.body);
    let added: Value = serde_json::from_str(&added.body).expect("JSON");
    assert_eq!(added["operation"], "Read");
    assert_eq!(added["host"], "*");
    let added = add(
        r#"{"principal":"User:bob","resource_type":"topic","name":"orders","operation":"Write","permission":"deny"}"#,
    );
    assert_eq!(added.status, 201, "{}", added.body);

    // A group has no Write; a principal must be User:...; unknown names are named.
    for (body, expected) in [
        (
            r#"{"principal":"User:a","resource_type":"group","name":"g","operation":"Write","permission":"allow"}"#,
            "means nothing for a group",
        ),
        (
            r#"{"principal":"alice","resource_type":"topic","name":"t","operation":"Read","permission":"allow"}"#,
            "User:NAME",
        ),
        (
            r#"{"principal":"User:a","resource_type":"table","name":"t","operation":"Read","permission":"allow"}"#,
            "is none of topic, group, transactional-id",
        ),
    ] {
        let refused = add(body);
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert!(refused.body.contains(expected), "{}", refused.body);
    }

    let listed: Value = serde_json::from_str(&get(&address, "/api/v1/acls").body).expect("JSON");
    assert_eq!(
        listed["acls"].as_array().expect("acls").len(),
        2,
        "{listed}"
    );
    let matching = get(
        &address,
        "/api/v1/acls?resource_type=queue&pattern=match&name=jobs.eu",
    );
    let matching: Value = serde_json::from_str(&matching.body).expect("JSON");
    assert_eq!(matching["acls"][0]["principal"], "User:alice", "{matching}");
    assert_eq!(matching["acls"].as_array().expect("acls").len(), 1);

    let removed = http(&address, "DELETE", "/api/v1/acls?principal=User:bob", None);
    assert_eq!(removed.status, 200, "{}", removed.body);
    let removed: Value = serde_json::from_str(&removed.body).expect("JSON");
    assert_eq!(removed["acls"][0]["name"], "orders", "{removed}");
    let listed: Value = serde_json::from_str(&get(&address, "/api/v1/acls").body).expect("JSON");
    assert_eq!(
        listed["acls"].as_array().expect("acls").len(),
        1,
        "{listed}"
    );
}

#[test]
fn a_queue_streams_as_server_sent_events_acknowledged_as_written() {
    // Goal: GET /api/v1/queues/{queue}/stream delivers a queue's messages in order as SSE
    // `delivery` events and acknowledges each once the connection took it (no client acks
    // over SSE). Method: publish three with the CLI, read three events, close, and watch
    // the queue settle them (the one handed out last may come back, marked redelivered).
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let address = broker.address();
    let web = broker.http_address();
    wharf_ok(&address, &["queue", "declare", "feed", "--durable"], "");
    wharf_ok(
        &address,
        &["publish", "", "feed", "--confirm"],
        "m1\nm2\nm3\n",
    );
    let events = sse_events(
        &web,
        "/api/v1/queues/feed/stream?prefetch=2",
        None,
        3,
        || {},
    );
    let bodies: Vec<&Value> = events.iter().map(|(_, _, data)| &data["body"]).collect();
    assert_eq!(
        bodies,
        [&json!("m1"), &json!("m2"), &json!("m3")],
        "{events:?}"
    );
    let tags: Vec<u64> = events
        .iter()
        .map(|(id, _, data)| {
            assert_eq!(id, &data["tag"].to_string(), "the event id is the tag");
            data["tag"].as_u64().expect("a tag")
        })
        .collect();
    assert!(tags.windows(2).all(|pair| pair[0] < pair[1]), "{tags:?}");
    assert!(
        events.iter().all(|(_, name, _)| name == "delivery"),
        "{events:?}"
    );
    // The connection is closed: the consumer goes, nothing stays unacknowledged.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let queue = loop {
        let queue = get(&web, "/api/v1/queues/feed").json();
        if queue["unacked"] == 0 && queue["consumers"] == 0 {
            break queue;
        }
        assert!(std::time::Instant::now() < deadline, "{queue}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let settled = queue["settled"].as_u64().expect("settled");
    let ready = queue["ready"].as_u64().expect("ready");
    assert!(settled >= 2 && settled + ready == 3, "{queue}");
    assert_eq!(
        get(&web, "/api/v1/queues/feed/stream?prefetch=0").status,
        400
    );
    assert_eq!(get(&web, "/api/v1/queues/missing/stream").status, 404);
}
