//! The `wharf` command line against the real `wharfd`, following the contract in DESIGN.md:
//! topics, produce from stdin, consume with and without a group, JSON output, group lag,
//! clear one-line errors with non-zero exit codes.

use integration_tests::{wharf, wharf_ok, BrokerProcess};

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn start() -> (tempfile::TempDir, BrokerProcess) {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    (data, broker)
}

#[test]
fn produce_then_consume_through_the_cli() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "events", "--partitions", "1"],
        "",
    );
    let input: String = (0..100).map(|index| format!("event-{index}\n")).collect();
    wharf_ok(&address, &["produce", "events"], &input);
    let output = wharf_ok(
        &address,
        &[
            "consume",
            "events",
            "--from",
            "earliest",
            "--max-messages",
            "100",
            "--timeout-ms",
            "5000",
        ],
        "",
    );
    let expected: Vec<String> = (0..100).map(|index| format!("event-{index}")).collect();
    assert_eq!(lines(&output), expected);
}

#[test]
fn topics_are_listed_described_and_deleted() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "alpha", "--partitions", "3"],
        "",
    );
    wharf_ok(
        &address,
        &["topic", "create", "beta", "--partitions", "1"],
        "",
    );
    let listed = wharf_ok(&address, &["topic", "list"], "");
    assert!(
        listed.contains("alpha") && listed.contains("beta"),
        "{listed}"
    );
    assert!(
        !listed.contains("__consumer_offsets"),
        "internal topics are hidden: {listed}"
    );
    let described = wharf_ok(&address, &["--json", "topic", "describe", "alpha"], "");
    let json: serde_json::Value =
        serde_json::from_str(&described).expect("describe --json is JSON");
    assert_eq!(
        json.to_string().matches("\"partition\"").count(),
        3,
        "{described}"
    );
    // A lone broker's partitions each have one replica, itself, in sync (DescribeReplicas).
    for partition in json["partitions"].as_array().expect("partitions") {
        let leader = partition["leader"].clone();
        assert_eq!(
            partition["replicas"],
            serde_json::json!([leader]),
            "{described}"
        );
        assert_eq!(
            partition["in_sync"],
            serde_json::json!([leader]),
            "{described}"
        );
        assert_eq!(partition["term"], 0, "{described}");
        assert_eq!(partition["followers"], serde_json::json!([]), "{described}");
    }
    let text = wharf_ok(&address, &["topic", "describe", "alpha"], "");
    assert!(
        text.lines()
            .next()
            .is_some_and(|_| text.contains("REPLICAS")
                && text.contains("IN-SYNC")
                && text.contains("MAX-LAG")),
        "{text}"
    );
    wharf_ok(&address, &["topic", "delete", "beta"], "");
    let listed = wharf_ok(&address, &["topic", "list"], "");
    assert!(!listed.contains("beta"), "{listed}");
    // Creating an existing topic is a clear error.
    let output = wharf(
        &address,
        &["topic", "create", "alpha", "--partitions", "3"],
        "",
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("exists"), "{stderr}");
}

#[test]
fn keyed_produce_and_json_consume() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "keyed", "--partitions", "4"],
        "",
    );
    let input: String = (0..40)
        .map(|index| format!("user-{}:{index}\n", index % 4))
        .collect();
    wharf_ok(
        &address,
        &["produce", "keyed", "--key-separator", ":"],
        &input,
    );
    let output = wharf_ok(
        &address,
        &[
            "consume",
            "keyed",
            "--from",
            "earliest",
            "--max-messages",
            "40",
            "--timeout-ms",
            "5000",
            "--format",
            "json",
        ],
        "",
    );
    let records: Vec<serde_json::Value> = output
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(records.len(), 40);
    // Every key lands on one partition, and its values keep their order.
    let mut partition_of_key = std::collections::HashMap::new();
    let mut values_of_key: std::collections::HashMap<String, Vec<i64>> = Default::default();
    for record in &records {
        for field in [
            "topic",
            "partition",
            "offset",
            "timestamp",
            "key",
            "value",
            "headers",
        ] {
            assert!(record.get(field).is_some(), "missing {field}: {record}");
        }
        let key = record["key"].as_str().expect("key").to_string();
        let partition = record["partition"].as_u64().expect("partition");
        assert_eq!(
            *partition_of_key.entry(key.clone()).or_insert(partition),
            partition
        );
        let value: i64 = record["value"]
            .as_str()
            .expect("value")
            .parse()
            .expect("number");
        values_of_key.entry(key).or_default().push(value);
    }
    for values in values_of_key.values() {
        assert!(
            values.windows(2).all(|pair| pair[0] < pair[1]),
            "{values:?}"
        );
    }
}

#[test]
fn group_consume_commits_what_it_printed_and_resumes() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "jobs", "--partitions", "2"],
        "",
    );
    let input: String = (0..30).map(|index| format!("job-{index}\n")).collect();
    wharf_ok(&address, &["produce", "jobs"], &input);
    let consume = |max: &str| {
        wharf_ok(
            &address,
            &[
                "consume",
                "jobs",
                "--group",
                "workers",
                "--from",
                "earliest",
                "--max-messages",
                max,
                "--timeout-ms",
                "3000",
            ],
            "",
        )
    };
    let first = lines(&consume("10"));
    assert_eq!(first.len(), 10);
    // The second run starts after what the first printed: nothing twice, nothing lost.
    let second = lines(&consume("100"));
    assert_eq!(second.len(), 20, "{second:?}");
    let mut all: Vec<String> = first.into_iter().chain(second).collect();
    all.sort();
    let mut expected: Vec<String> = (0..30).map(|index| format!("job-{index}")).collect();
    expected.sort();
    assert_eq!(all, expected);
    // The group shows no lag now.
    let described = wharf_ok(&address, &["--json", "group", "describe", "workers"], "");
    let json: serde_json::Value = serde_json::from_str(&described).expect("JSON");
    let text = json.to_string();
    assert!(text.contains("\"lag\":0"), "{text}");
    assert!(!text.contains("\"lag\":1"), "{text}");
    let listed = wharf_ok(&address, &["group", "list"], "");
    assert!(listed.contains("workers"), "{listed}");
}

#[test]
fn consume_from_a_partition_and_an_offset() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "one", "--partitions", "1"],
        "",
    );
    let input: String = (0..10).map(|index| format!("r{index}\n")).collect();
    wharf_ok(&address, &["produce", "one"], &input);
    let output = wharf_ok(
        &address,
        &[
            "consume",
            "one",
            "--partition",
            "0",
            "--from",
            "7",
            "--timeout-ms",
            "2000",
        ],
        "",
    );
    assert_eq!(lines(&output), vec!["r7", "r8", "r9"]);
}

#[test]
fn errors_are_one_clear_line_and_exit_non_zero() {
    let (_data, broker) = start();
    let address = broker.address();
    let output = wharf(&address, &["consume", "missing", "--timeout-ms", "500"], "");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // A broker nobody listens on.
    let output = wharf("127.0.0.1:1", &["topic", "list"], "");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    // A wrong flag is a usage error.
    let output = wharf(&address, &["topic", "create", "x", "--partitons", "2"], "");
    assert!(!output.status.success());
}

#[test]
fn help_describes_the_command_line_and_every_perf_workload() {
    let help = wharf_ok("127.0.0.1:1", &["--help"], "");
    assert_eq!(
        help.lines().next(),
        Some("Command line for the Wharf message broker"),
        "{help}"
    );
    let perf_line = help
        .lines()
        .find(|line| line.trim_start().starts_with("perf "))
        .unwrap_or_else(|| panic!("no perf line in {help}"));
    let perf_help = wharf_ok("127.0.0.1:1", &["perf", "--help"], "");
    let perf_about = perf_help.lines().next().unwrap_or_default();
    for workload in ["produce", "consume", "end-to-end", "queue"] {
        assert!(perf_line.contains(workload), "{workload}: {perf_line}");
        assert!(perf_about.contains(workload), "{workload}: {perf_about}");
    }
}

#[test]
fn counts_of_one_are_singular() {
    let (_data, broker) = start();
    let address = broker.address();
    let created = wharf_ok(
        &address,
        &["topic", "create", "one", "--partitions", "1"],
        "",
    );
    assert!(
        created.starts_with("created topic \"one\" with 1 partition (id "),
        "{created}"
    );
    let described = wharf_ok(&address, &["topic", "describe", "one"], "");
    assert!(described.contains(", 1 partition)\n"), "{described}");
    let produced = wharf(&address, &["produce", "one"], "only\n");
    let summary = String::from_utf8_lossy(&produced.stderr);
    assert!(summary.starts_with("produced 1 record in "), "{summary}");
    wharf_ok(&address, &["queue", "declare", "q"], "");
    let published = wharf(&address, &["publish", "", "q"], "only\n");
    let summary = String::from_utf8_lossy(&published.stderr);
    assert!(summary.starts_with("published 1 message in "), "{summary}");
    let purged = wharf_ok(&address, &["queue", "purge", "q"], "");
    assert_eq!(purged, "purged 1 message from queue \"q\"\n");
}

/// Goal: pointing the CLI at a server that speaks another protocol (here HTTP) says so,
/// rather than reporting "HTTP" read as a frame length. Method: a listener in the test
/// answers the handshake with an HTTP error response.
#[test]
fn a_server_that_is_not_a_wharf_broker_is_named_as_such() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            // Wait for the client to close, so it reads the answer before any reset.
            while matches!(stream.read(&mut request), Ok(count) if count > 0) {}
        }
    });
    let output = wharf(&address, &["topic", "list"], "");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: not a Wharf broker at {address}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("HTTP/1.1 400 Bad Request"), "{stderr}");
    assert!(!stderr.contains("exceeds max"), "{stderr}");
}

#[test]
fn produce_sets_headers_and_timestamps_that_consume_shows() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &[
            "produce",
            "traced",
            "--header",
            "trace=abc",
            "--header",
            "origin=cli",
            "--timestamp-ms",
            "1700000000000",
        ],
        "hello\n",
    );
    let output = wharf_ok(
        &address,
        &[
            "consume",
            "traced",
            "--from",
            "earliest",
            "--format",
            "json",
            "--max-messages",
            "1",
            "--timeout-ms",
            "5000",
        ],
        "",
    );
    let record: serde_json::Value =
        serde_json::from_str(output.lines().next().expect("one record")).expect("json");
    assert_eq!(record["value"], "hello");
    assert_eq!(record["timestamp"], 1_700_000_000_000i64);
    let headers = record["headers"].as_array().expect("headers");
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|header| {
            (
                header["key"].as_str().expect("key").to_string(),
                header["value"].as_str().expect("value").to_string(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("trace".to_string(), "abc".to_string()),
            ("origin".to_string(), "cli".to_string())
        ]
    );
}

#[test]
fn consume_from_time_starts_at_the_first_record_at_or_after_it() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "timed", "--partitions", "1"],
        "",
    );
    for (value, timestamp) in [("one", "1000"), ("two", "2000"), ("three", "3000")] {
        wharf_ok(
            &address,
            &["produce", "timed", "--timestamp-ms", timestamp],
            &format!("{value}\n"),
        );
    }
    let consume_from = |time: &str| {
        wharf_ok(
            &address,
            &[
                "consume",
                "timed",
                "--from-time",
                time,
                "--timeout-ms",
                "1500",
            ],
            "",
        )
    };
    assert_eq!(lines(&consume_from("2000")), ["two", "three"]);
    assert_eq!(lines(&consume_from("1970-01-01T00:00:02.500Z")), ["three"]);
    assert!(
        consume_from("4000").is_empty(),
        "nothing is that new: start at the end"
    );
}

#[test]
fn describing_an_unknown_group_fails_with_a_clear_error() {
    let (_data, broker) = start();
    let output = wharf(&broker.address(), &["group", "describe", "nosuch"], "");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown group \"nosuch\""),
        "stderr: {stderr}"
    );
}

#[test]
fn subscribe_nack_requeue_puts_the_message_back_redelivered() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(&address, &["queue", "declare", "retry"], "");
    wharf_ok(&address, &["publish", "", "retry"], "again\n");
    let first = wharf_ok(
        &address,
        &[
            "subscribe",
            "retry",
            "--nack-requeue",
            "--max-messages",
            "1",
            "--timeout-ms",
            "5000",
        ],
        "",
    );
    assert_eq!(lines(&first), ["again"]);
    let second = wharf_ok(
        &address,
        &[
            "subscribe",
            "retry",
            "--max-messages",
            "1",
            "--timeout-ms",
            "5000",
            "--format",
            "json",
        ],
        "",
    );
    let delivered: serde_json::Value =
        serde_json::from_str(second.lines().next().expect("a message")).expect("json");
    assert_eq!(delivered["body"], "again");
    assert_eq!(
        delivered["redelivered"], true,
        "it came back after the nack"
    );
}

#[test]
fn consume_from_an_offset_past_the_end_warns() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "short", "--partitions", "1"],
        "",
    );
    wharf_ok(&address, &["produce", "short"], "a\nb\nc\n");
    let output = wharf(
        &address,
        &["consume", "short", "--from", "10", "--timeout-ms", "1000"],
        "",
    );
    assert!(output.status.success());
    assert!(output.stdout.is_empty(), "nothing is past the end");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--from 10 is past the end of short (largest end offset 3)"),
        "stderr: {stderr}"
    );
}

#[test]
fn a_lone_node_takes_replication_factor_one_and_refuses_more() {
    // Goal: `--replication-factor` reaches the broker (the native CreateTopics'
    // `replication.factor` entry) and a lone node refuses a factor it cannot place with a
    // message naming it, creating nothing; 0 never leaves the CLI.
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &[
            "topic",
            "create",
            "single",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ],
        "",
    );
    let refused = wharf(
        &address,
        &[
            "topic",
            "create",
            "triple",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
        "",
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("replication factor 3 is not between 1 and the 1 node(s)"),
        "{stderr}"
    );
    let zero = wharf(
        &address,
        &[
            "topic",
            "create",
            "none",
            "--partitions",
            "1",
            "--replication-factor",
            "0",
        ],
        "",
    );
    assert_eq!(zero.status.code(), Some(2), "a usage error");
    let listed = wharf_ok(&address, &["topic", "list"], "");
    assert!(listed.contains("single") && !listed.contains("triple") && !listed.contains("none"));
    // The config entry is taken out: the topic's configs do not list it.
    let described = wharf_ok(&address, &["topic", "describe", "single"], "");
    assert!(!described.contains("replication.factor"), "{described}");
    // min.insync.replicas can be at most the majority of the replicas: 1 here.
    let insync = wharf(
        &address,
        &[
            "topic",
            "create",
            "insync",
            "--partitions",
            "1",
            "--config",
            "min.insync.replicas=2",
        ],
        "",
    );
    assert!(!insync.status.success());
    let stderr = String::from_utf8_lossy(&insync.stderr);
    assert!(
        stderr.contains("min.insync.replicas=2 is more than the majority (1)"),
        "{stderr}"
    );
}
