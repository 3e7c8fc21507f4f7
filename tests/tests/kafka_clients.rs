//! Real Kafka clients against `wharfd`'s Kafka listener (issue #14): kcat (librdkafka, from
//! Debian's packages), confluent-kafka and kafka-python (from PyPI), all installed by
//! `scripts/test.sh`. Each test starts its own broker on ephemeral ports with a temp data dir.
//!
//! Covered so far: metadata, topic admin, produce (idempotent, every compression codec),
//! fetch and list offsets, and the same records through the native protocol both ways.
//! Consumer groups and transactions over the Kafka protocol are not served yet.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use integration_tests::{kcat, run_client_script, wharf, wharf_ok, BrokerProcess};
use serde_json::Value;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_success(what: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A group's total lag as `wharf group describe` (the native CLI) shows it.
fn group_lag(broker: &BrokerProcess, group: &str) -> i64 {
    let described = wharf_ok(&broker.address(), &["group", "describe", group], "");
    described
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(4)?.parse::<i64>().ok())
        .sum()
}

/// The churn script's verdict: every one of `count` records processed exactly once, the
/// work spread over at least two members.
fn assert_each_record_processed_once_by_several_members(
    output: &std::process::Output,
    count: usize,
) {
    let summary: Value = serde_json::from_str(stdout(output).trim()).expect("JSON summary");
    let processed = summary["processed"].as_array().expect("processed");
    let mut seen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for row in processed {
        seen.entry(row[3].as_str().expect("value"))
            .or_default()
            .push(row[0].as_str().expect("member"));
    }
    let twice: Vec<_> = seen.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    assert_eq!(seen.len(), count, "every record processed");
    let members: std::collections::BTreeSet<&str> = seen.values().flatten().copied().collect();
    assert!(
        members.len() >= 2,
        "the work moved between members: {members:?}"
    );
}

/// (partition, offset, key, value) rows of a client script's JSON.
fn rows(value: &Value) -> Vec<(i64, i64, String, String)> {
    value
        .as_array()
        .expect("an array of rows")
        .iter()
        .map(|row| {
            (
                row[0].as_i64().expect("partition"),
                row[1].as_i64().expect("offset"),
                row[2].as_str().expect("key").to_string(),
                row[3].as_str().expect("value").to_string(),
            )
        })
        .collect()
}

#[test]
fn confluent_kafka_round_trips_records_with_every_compression_codec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let count = 300;
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("orders-{codec}");
        let output = run_client_script(
            "confluent_roundtrip.py",
            &[&broker.kafka_address(), &topic, codec, &count.to_string()],
        );
        assert_success(&format!("confluent-kafka with {codec}"), &output);
        let summary: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON summary");
        let mut acked = rows(&summary["acked"]);
        let read = rows(&summary["read"]);
        assert_eq!(acked.len(), count, "{codec}: every record acknowledged");
        acked.sort();
        let mut read_sorted = read.clone();
        read_sorted.sort();
        assert_eq!(
            read_sorted, acked,
            "{codec}: the records read back are exactly the acknowledged ones"
        );
        // Keyed ordering: a key stays on one partition, its records in produce order.
        let mut per_key: BTreeMap<String, Vec<(i64, i64, u32)>> = BTreeMap::new();
        for (partition, offset, key, value) in &read {
            let index: u32 = value
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("value ends in its index");
            per_key
                .entry(key.clone())
                .or_default()
                .push((*partition, *offset, index));
        }
        for (key, records) in per_key {
            assert!(
                records.iter().all(|record| record.0 == records[0].0),
                "{codec}: key {key} stays on one partition"
            );
            assert!(
                records.windows(2).all(|pair| pair[0].2 < pair[1].2),
                "{codec}: key {key} is read in produce order"
            );
        }
        // The native protocol serves the same records: `wharf consume` decompresses what
        // the Kafka client compressed.
        let ends = summary["ends"].as_object().expect("ends");
        let total: i64 = ends.values().map(|end| end.as_i64().expect("end")).sum();
        assert_eq!(total, count as i64, "{codec}: ends {ends:?}");
        let native = wharf(
            &broker.address(),
            &[
                "--json",
                "consume",
                &topic,
                "--from",
                "earliest",
                "--max-messages",
                &count.to_string(),
                "--timeout-ms",
                "10000",
            ],
            "",
        );
        assert_success(&format!("wharf consume of {codec} batches"), &native);
        let mut native_rows: Vec<(i64, i64, String, String)> = stdout(&native)
            .lines()
            .map(|line| {
                let record: Value = serde_json::from_str(line).expect("JSON record");
                (
                    record["partition"].as_i64().expect("partition"),
                    record["offset"].as_i64().expect("offset"),
                    record["key"].as_str().expect("key").to_string(),
                    record["value"].as_str().expect("value").to_string(),
                )
            })
            .collect();
        native_rows.sort();
        assert_eq!(
            native_rows, acked,
            "{codec}: the native CLI reads the same records"
        );
    }
}

#[test]
fn kcat_and_the_native_cli_see_the_same_records_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let kafka = broker.kafka_address();

    let listing = kcat(&["-b", &kafka, "-L"], "");
    assert_success("kcat -L", &listing);
    assert!(
        stdout(&listing).contains(&format!("broker 0 at {kafka}")),
        "{}",
        stdout(&listing)
    );

    // Kafka → native: kcat produces (auto-creating the topic), wharf consume reads.
    let produced = kcat(
        &["-P", "-b", &kafka, "-t", "events", "-K", ":"],
        "a:one\nb:two\nc:three\n",
    );
    assert_success("kcat -P", &produced);
    let native = wharf(
        &broker.address(),
        &[
            "--json",
            "consume",
            "events",
            "--from",
            "earliest",
            "--max-messages",
            "3",
        ],
        "",
    );
    assert_success("wharf consume", &native);
    let values: Vec<String> = stdout(&native)
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("JSON record");
            format!(
                "{}={}",
                record["key"].as_str().unwrap_or(""),
                record["value"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(values, ["a=one", "b=two", "c=three"]);

    // Native → Kafka: wharf produce appends, kcat reads all four with offsets.
    wharf_ok(
        &broker.address(),
        &["produce", "events", "--key-separator", ":"],
        "d:four\n",
    );
    let consumed = kcat(
        &[
            "-C",
            "-b",
            &kafka,
            "-t",
            "events",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k=%s@%o\n",
        ],
        "",
    );
    assert_success("kcat -C", &consumed);
    assert_eq!(
        stdout(&consumed).lines().collect::<Vec<_>>(),
        ["a=one@0", "b=two@1", "c=three@2", "d=four@3"]
    );
}

#[test]
fn kafka_python_produces_and_consumes_by_timestamp_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let output = run_client_script(
        "kafka_python_roundtrip.py",
        &[&broker.kafka_address(), "ledger", "100"],
    );
    assert_success("kafka-python", &output);
    let summary: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON summary");
    assert_eq!(summary["sent"], 100);
    assert_eq!(
        summary["read"].as_array().expect("read").len(),
        100,
        "{summary}"
    );
    assert_eq!(summary["earliest"], 0, "{summary}");
    assert_eq!(summary["latest"], 100, "{summary}");
    // offsets_for_times(the 50th record's timestamp) finds the 50th record (or one before
    // it with the same millisecond).
    let by_time = summary["by_time"].as_i64().expect("by_time");
    assert!((0..=49).contains(&by_time), "{summary}");
}

/// One raw Kafka request: size, api key, version, correlation id, client id, body.
fn raw_request(api_key: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&api_key.to_be_bytes());
    frame.extend_from_slice(&version.to_be_bytes());
    frame.extend_from_slice(&correlation_id.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    frame.extend_from_slice(body);
    let mut out = (frame.len() as i32).to_be_bytes().to_vec();
    out.extend(frame);
    out
}

fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("response size");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).expect("response body");
    body
}

#[test]
fn unsupported_versions_and_bad_frames_get_kafkas_answers_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let kafka = broker.kafka_address();
    let connect = || {
        let stream = TcpStream::connect(&kafka).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
    };

    // ApiVersions at a version from the future: UNSUPPORTED_VERSION (35) with the ranges, in
    // the v0 layout, and the connection stays open.
    let mut stream = connect();
    stream
        .write_all(&raw_request(18, 99, 7, &[]))
        .expect("send");
    let response = read_response(&mut stream);
    assert_eq!(&response[0..4], &7i32.to_be_bytes(), "correlation id");
    assert_eq!(&response[4..6], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");
    let ranges = i32::from_be_bytes(response[6..10].try_into().expect("4 bytes"));
    assert!(ranges >= 5, "the supported ranges follow ({ranges})");
    let produce_range = response[10..]
        .chunks(6)
        .take(ranges as usize)
        .find(|range| range[0..2] == 0i16.to_be_bytes())
        .expect("Produce is advertised");
    assert_eq!(
        &produce_range[2..4],
        &0i16.to_be_bytes(),
        "Produce's advertised minimum stays 0 (KAFKA-18659)"
    );
    stream.write_all(&raw_request(18, 0, 8, &[])).expect("send");
    let response = read_response(&mut stream);
    assert_eq!(
        &response[0..6],
        &[0, 0, 0, 8, 0, 0],
        "v0 answered with no error"
    );

    // Produce v2: refused on use, per partition, with UNSUPPORTED_VERSION.
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks
    body.extend_from_slice(&1000i32.to_be_bytes()); // timeout
    body.extend_from_slice(&1i32.to_be_bytes()); // one topic
    body.extend_from_slice(&(5i16).to_be_bytes());
    body.extend_from_slice(b"old-t");
    body.extend_from_slice(&1i32.to_be_bytes()); // one partition
    body.extend_from_slice(&0i32.to_be_bytes()); // partition 0
    body.extend_from_slice(&0i32.to_be_bytes()); // empty message set
    stream
        .write_all(&raw_request(0, 2, 9, &body))
        .expect("send");
    let response = read_response(&mut stream);
    let mut expected = 9i32.to_be_bytes().to_vec();
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.extend_from_slice(&5i16.to_be_bytes());
    expected.extend_from_slice(b"old-t");
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.extend_from_slice(&0i32.to_be_bytes());
    expected.extend_from_slice(&35i16.to_be_bytes());
    assert_eq!(&response[..expected.len()], &expected[..]);

    // A truncated Metadata body, an unknown api key and an oversized frame each close their
    // connection; nothing panics and new connections are served.
    for bad in [
        raw_request(3, 9, 1, &[0x00, 0x00, 0x00, 0x05, 0x01]),
        raw_request(999, 0, 1, &[]),
        {
            let mut frame = (i32::MAX).to_be_bytes().to_vec();
            frame.extend_from_slice(&[0; 16]);
            frame
        },
    ] {
        let mut stream = connect();
        stream.write_all(&bad).expect("send");
        let mut rest = Vec::new();
        let closed = stream.read_to_end(&mut rest);
        assert!(
            matches!(closed, Ok(0)),
            "the connection is closed without an answer: {closed:?} {rest:?}"
        );
    }
    let listing = kcat(&["-b", &kafka, "-L"], "");
    assert_success("kcat -L after bad frames", &listing);
}

#[test]
fn confluent_kafka_group_members_joining_and_leaving_process_each_record_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let count = 400;
    let output = run_client_script(
        "confluent_group.py",
        &[
            &broker.kafka_address(),
            "churn",
            "churners",
            &count.to_string(),
        ],
    );
    assert_success("confluent-kafka group churn", &output);
    assert_each_record_processed_once_by_several_members(&output, count);
    // The group's committed offsets are the native ones: `wharf group describe` shows no lag.
    assert_eq!(group_lag(&broker, "churners"), 0);
}

#[test]
fn kcat_group_offsets_survive_a_broker_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = BrokerProcess::start(&dir.path().join("data"));
    let kafka = broker.kafka_address();
    let lines: String = (0..50).map(|i| format!("first-{i}\n")).collect();
    assert_success(
        "kcat -P",
        &kcat(&["-P", "-b", &kafka, "-t", "ledger"], &lines),
    );
    let group_read = |kafka: &str| {
        let output = kcat(
            &[
                "-b",
                kafka,
                "-G",
                "auditors",
                "ledger",
                // Not `-o beginning`: in group mode kcat would start there instead of at
                // the committed offset.
                "-X",
                "auto.offset.reset=earliest",
                "-e",
                "-f",
                "%s\n",
            ],
            "",
        );
        assert_success("kcat -G", &output);
        stdout(&output)
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let first = group_read(&kafka);
    assert_eq!(first.len(), 50, "{first:?}");
    // kcat commits what it read when it closes: the native CLI sees the committed offset.
    let described = wharf_ok(&broker.address(), &["group", "describe", "auditors"], "");
    assert!(
        described
            .lines()
            .any(|line| line.split_whitespace().take(3).eq(["ledger", "0", "50"])),
        "{described}"
    );
    broker.kill();
    broker.restart();
    let kafka = broker.kafka_address();
    let more: String = (0..5).map(|i| format!("second-{i}\n")).collect();
    assert_success(
        "kcat -P",
        &kcat(&["-P", "-b", &kafka, "-t", "ledger"], &more),
    );
    // The group resumes where its committed offset says: only the new records.
    let second = group_read(&kafka);
    assert_eq!(
        second,
        (0..5).map(|i| format!("second-{i}")).collect::<Vec<_>>()
    );
}

#[test]
fn confluent_kafka_transactions_read_process_write_with_aborts_and_a_fenced_zombie() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let count = 60;
    let output = run_client_script(
        "confluent_transactions.py",
        &[&broker.kafka_address(), &count.to_string()],
    );
    assert_transactions_whole(&output, count);
    // The offsets committed inside the transactions are the group's: no lag.
    assert_eq!(group_lag(&broker, "tx-group"), 0);
}

/// The same read-process-write loop on three nodes, on topics of three partitions with
/// three replicas each (issue #21): the partitions are led by the three nodes, node 1
/// coordinates the transactions, so batches are verified and markers written through
/// other nodes' replicated logs; read_committed sees every committed record once and no
/// aborted one, and the zombie is fenced.
#[test]
fn confluent_kafka_transactions_span_replicated_partitions_led_by_three_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, nodes) = integration_tests::cluster::three_nodes(dir.path());
    let brokers: Vec<String> = nodes.iter().map(BrokerProcess::address).collect();
    integration_tests::cluster::converged(&brokers, 3, "three nodes");
    integration_tests::cluster::registered(&brokers);
    let count = 60;
    let output = run_client_script(
        "confluent_transactions.py",
        &[&nodes[1].kafka_address(), &count.to_string(), "3", "3"],
    );
    assert_transactions_whole(&output, count);
    let leaders = integration_tests::cluster::native_leaders(&brokers[0], "tx-out");
    let mut distinct = leaders.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() >= 2,
        "the partitions are led by several nodes: {leaders:?}"
    );
    assert_eq!(group_lag(&nodes[0], "tx-group"), 0);
}

/// The transactions script's verdict: read_committed sees each of `count` records once,
/// read_uncommitted the aborted ones too, an open transaction holds the last stable offset
/// back, and the zombie was fenced.
fn assert_transactions_whole(output: &std::process::Output, count: usize) {
    assert_success("confluent-kafka transactions", output);
    let summary: Value = serde_json::from_str(stdout(output).trim()).expect("JSON summary");
    assert!(
        summary["aborted"].as_i64().expect("aborted") >= 1,
        "{summary}"
    );
    let mut committed: Vec<String> = summary["committed_view"]
        .as_array()
        .expect("committed view")
        .iter()
        .map(|value| value.as_str().expect("value").to_string())
        .collect();
    committed.sort();
    let mut expected: Vec<String> = (0..count).map(|i| format!("RECORD-{i}")).collect();
    expected.sort();
    assert_eq!(
        committed, expected,
        "read_committed sees each committed record once and no aborted one"
    );
    assert!(
        summary["uncommitted_count"].as_u64().expect("count") > count as u64,
        "read_uncommitted also sees the aborted records: {summary}"
    );
    let ends = &summary["open_transaction_ends"];
    assert!(
        ends["read_committed"].as_i64() < ends["read_uncommitted"].as_i64(),
        "read_committed's latest offset is the last stable offset, below an open transaction: {ends}"
    );
    assert_eq!(summary["zombie_error"], "_FENCED", "{summary}");
    let after: Vec<&str> = summary["after_fencing"]
        .as_array()
        .expect("after fencing")
        .iter()
        .map(|value| value.as_str().expect("value"))
        .collect();
    assert!(after.contains(&"successor"), "{after:?}");
    assert!(!after.contains(&"zombie"), "{after:?}");
}

#[test]
fn confluent_kafka_admin_creates_describes_alters_grows_and_deletes_with_kafkas_error_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = BrokerProcess::start(&dir.path().join("data"));
    let output = run_client_script("confluent_admin.py", &[&broker.kafka_address()]);
    assert_success("confluent-kafka admin", &output);
    let out: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON summary");
    // librdkafka's ConfigSource: 1 = dynamic topic config (an override), 5 = default.
    let config = |step: &str, key: &str| out[step][key].clone();
    assert_eq!(out["create"], Value::Null, "{out}");
    assert_eq!(out["create_again"], "TOPIC_ALREADY_EXISTS");
    assert_eq!(out["create_compacted"], Value::Null, "{out}");
    assert_eq!(out["create_bad_policy"], "INVALID_CONFIG");
    assert_eq!(
        config("described", "retention.ms"),
        serde_json::json!(["3600000", 1])
    );
    assert_eq!(
        config("described", "max.message.bytes"),
        serde_json::json!(["2000", 1])
    );
    assert_eq!(
        config("described", "cleanup.policy"),
        serde_json::json!(["delete", 1])
    );
    assert_eq!(config("described", "retention.bytes")[1], 5);
    // validate_only runs the checks and changes nothing.
    assert_eq!(out["validate_create"], Value::Null, "{out}");
    assert_eq!(out["validate_create_bad_config"], "INVALID_CONFIG");
    assert_eq!(out["validate_create_existing"], "TOPIC_ALREADY_EXISTS");
    assert_eq!(out["validated_topic_exists"], false);
    assert_eq!(out["validate_partitions"], Value::Null, "{out}");
    assert_eq!(out["validate_alter"], Value::Null, "{out}");
    assert_eq!(out["after_validate"], out["described"]);
    assert_eq!(out["partitions_after_validate"], 2);
    assert_eq!(out["incremental"], Value::Null, "{out}");
    assert_eq!(
        config("after_incremental", "retention.bytes"),
        serde_json::json!(["1000000", 1])
    );
    assert_eq!(
        config("after_incremental", "retention.ms")[1],
        5,
        "DELETE puts the default back"
    );
    assert_eq!(out["add_partitions"], Value::Null, "{out}");
    assert_eq!(out["shrink_partitions"], "INVALID_PARTITIONS");
    assert_eq!(out["partitions"], 4);
    assert_eq!(
        out["oversized"], "MSG_SIZE_TOO_LARGE",
        "a batch over max.message.bytes gets MESSAGE_TOO_LARGE"
    );
    assert_eq!(out["small"], Value::Null, "{out}");
    assert_eq!(out["unknown_topic_configs"], "UNKNOWN_TOPIC_OR_PART");
    assert_eq!(out["groups_before"], serde_json::json!(["admin-g"]));
    assert_eq!(out["delete_group"], Value::Null, "{out}");
    assert_eq!(out["delete_unknown_group"], "GROUP_ID_NOT_FOUND");
    assert_eq!(out["groups_after"], serde_json::json!([]));
    assert_eq!(
        out["cluster"],
        serde_json::json!({"id": "wharf", "nodes": 1, "controller": 0})
    );
    assert_eq!(out["delete_records"], 6, "{out}");
    assert_eq!(out["delete_records_past_end"], "OFFSET_OUT_OF_RANGE");
    assert_eq!(out["low_after_delete"], 6);
    assert_eq!(out["first_after_delete"], serde_json::json!([6, "d6"]));
    // Deleted records stay deleted across a SIGKILL: the log starts at 6.
    broker.kill();
    broker.restart();
    let described = wharf_ok(
        &broker.address(),
        &["--json", "topic", "describe", "admin-d"],
        "",
    );
    assert!(described.contains("\"log_start_offset\":6"), "{described}");
    assert_eq!(out["delete_topic"], Value::Null, "{out}");
    assert!(
        out["topics_after"]
            .as_array()
            .expect("topics")
            .iter()
            .all(|topic| topic != "admin-t"),
        "{out}"
    );
}

#[test]
fn an_idempotent_kafka_producer_streaming_through_a_broker_sigkill_stores_each_acked_record_once_in_order(
) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = BrokerProcess::start(&dir.path().join("data"));
    let script =
        integration_tests::workspace_root().join("tests/clients/confluent_idempotent_stream.py");
    let mut producer = std::process::Command::new(integration_tests::client_python())
        .arg(script)
        .args([broker.kafka_address().as_str(), "stream", "6"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the producer");
    let mut lines = std::io::BufReader::new(producer.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("ready"), "ready");
    std::thread::sleep(Duration::from_millis(1500));
    broker.kill();
    std::thread::sleep(Duration::from_millis(500));
    broker.restart();
    let summary = lines.next().expect("the summary").expect("a line");
    assert!(producer.wait().expect("producer exit").success());
    let summary: Value = serde_json::from_str(&summary).expect("JSON summary");
    assert_eq!(summary["unflushed"], 0, "{}", summary["errors"]);
    assert_eq!(
        summary["errors"].as_array().expect("errors").len(),
        0,
        "{}",
        summary["errors"]
    );
    let acked = summary["acked"].as_array().expect("acked");
    assert_eq!(
        acked.len() as u64,
        summary["sent"].as_u64().expect("sent"),
        "every record was acknowledged"
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stored = runtime.block_on(broker.read_everything("stream", |value| {
        String::from_utf8_lossy(value).into_owned()
    }));
    let mut count = 0;
    for (partition, records) in &stored {
        let sequences: Vec<u64> = records
            .iter()
            .map(|(_, value)| {
                value
                    .strip_prefix("seq-")
                    .and_then(|n| n.parse().ok())
                    .expect("seq-N")
            })
            .collect();
        assert!(
            sequences.windows(2).all(|pair| pair[0] < pair[1]),
            "partition {partition} holds each record once, in produce order"
        );
        count += records.len();
    }
    assert_eq!(count, acked.len(), "no record stored twice or lost");
    for row in acked {
        let partition = u32::try_from(row[0].as_i64().expect("partition")).expect("index");
        let offset = row[1].as_i64().expect("offset");
        let value = row[2].as_str().expect("value");
        let found = stored[&partition]
            .iter()
            .find(|(stored_offset, _)| *stored_offset == offset)
            .map(|(_, stored)| stored.as_str());
        assert_eq!(found, Some(value), "acked {value} at {partition}/{offset}");
    }
}

#[test]
fn kafkajs_produces_consumes_in_a_group_and_runs_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let count = 100;
    let output = integration_tests::run_node_script(
        "kafkajs_roundtrip.js",
        &[&broker.kafka_address(), &count.to_string()],
    );
    assert_success("kafkajs", &output);
    let out: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON summary");
    assert_eq!(out["created"], true);
    assert_eq!(out["partitions"], 3);
    let seen = out["seen"].as_array().expect("seen");
    let mut values: Vec<&str> = seen
        .iter()
        .map(|row| row[4].as_str().expect("value"))
        .collect();
    values.sort_unstable();
    let mut expected: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(
        values, expected,
        "each gzip record consumed once by the group"
    );
    assert_eq!(
        out["committed"], out["ends"],
        "the group committed everything"
    );
    assert_eq!(out["tx_values"], serde_json::json!(["committed"]));
}

#[test]
fn kafka_python_describes_transactions_and_producers_and_deletes_group_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let output = run_client_script("kafka_python_admin.py", &[&broker.kafka_address()]);
    assert_success("kafka-python admin", &output);
    let out: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON summary");
    assert_eq!(
        out["described"],
        serde_json::json!({"state": "Ongoing", "partitions": [["kp-t", 0]]})
    );
    assert_eq!(out["unknown"], "TransactionalIdNotFoundError");
    assert_eq!(
        out["listed_open"],
        serde_json::json!([["kp-tx", "Ongoing"]])
    );
    assert_eq!(
        out["producers"],
        serde_json::json!([{"epoch": 0, "txn_start": 0}])
    );
    assert_eq!(
        out["listed_after_abort"],
        serde_json::json!([["kp-tx", "CompleteAbort"]])
    );
    assert_eq!(
        out["offset_delete"],
        serde_json::json!({"kp-t-0": "NoError"})
    );
    assert_eq!(out["remaining"], serde_json::json!([["kp-t", 1, 0]]));
}

#[test]
fn a_busy_kafka_port_is_a_startup_error_that_names_the_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let output = std::process::Command::new(integration_tests::wharfd_path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "off",
            "--kafka-listen",
            &address,
        ])
        .args(["--http-listen", "off"])
        .output()
        .expect("run wharfd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen on {address} for the Kafka listener"
        )) && stderr.contains("--kafka-listen HOST:PORT")
            && stderr.contains("--kafka-listen off"),
        "{stderr}"
    );
}

#[test]
fn kip_848_consumers_joining_and_leaving_process_each_record_once() {
    // The same churn as the classic-protocol test, with `group.protocol=consumer`: the
    // broker assigns (Wharf's broker-side groups), and a partition moves only once its
    // previous owner reports it no longer owns it.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let count = 400;
    let output = run_client_script(
        "confluent_group.py",
        &[
            &broker.kafka_address(),
            "churn",
            "kip848",
            &count.to_string(),
            "consumer",
        ],
    );
    assert_success("confluent-kafka KIP-848 group churn", &output);
    assert_each_record_processed_once_by_several_members(&output, count);
    assert_eq!(group_lag(&broker, "kip848"), 0);
}

/// The anonymous caller may manage ACLs: once an ACL exists, only super users and callers
/// with Alter on the cluster may add or remove more.
const ADMIN_ANONYMOUS: &str = "super_users = [\"User:ANONYMOUS\"]\n";

#[test]
fn confluent_kafka_admin_creates_describes_and_deletes_acls_that_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut broker = BrokerProcess::start_with_config(&data, ADMIN_ANONYMOUS);
    let output = run_client_script("confluent_acls.py", &[&broker.kafka_address()]);
    assert_success("confluent-kafka ACL admin", &output);
    let out: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON summary");
    let acl = |fields: [&str; 7]| serde_json::json!(fields);
    let read_orders = acl([
        "TOPIC",
        "orders",
        "LITERAL",
        "User:alice",
        "*",
        "READ",
        "ALLOW",
    ]);
    let write_prefixed = acl([
        "TOPIC", "ord", "PREFIXED", "User:bob", "*", "WRITE", "ALLOW",
    ]);
    let deny_group = acl([
        "GROUP", "billing", "LITERAL", "User:bob", "*", "READ", "DENY",
    ]);
    let created = out["create"].as_object().expect("create results");
    assert_eq!(
        created["TOPIC|orders|LITERAL|User:alice|*|READ|ALLOW"],
        Value::Null,
        "{out}"
    );
    let refused: Vec<&Value> = created.values().filter(|error| !error.is_null()).collect();
    assert_eq!(refused, vec![&Value::from("INVALID_REQUEST")], "{out}");
    assert_eq!(
        out["all"],
        serde_json::json!([deny_group, write_prefixed, read_orders]),
        "{out}"
    );
    assert_eq!(
        out["match_orders"],
        serde_json::json!([write_prefixed, read_orders]),
        "{out}"
    );
    assert_eq!(
        out["deleted"],
        serde_json::json!([deny_group, write_prefixed]),
        "{out}"
    );
    assert_eq!(
        out["after_delete"],
        serde_json::json!([read_orders]),
        "{out}"
    );

    // The ACLs are durable: after a restart the one left is still there.
    broker.stop();
    let broker = BrokerProcess::start_with_config(&data, ADMIN_ANONYMOUS);
    let output = run_client_script("confluent_acls.py", &[&broker.kafka_address(), "list"]);
    assert_success("confluent-kafka ACL list", &output);
    let listed: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON list");
    assert_eq!(listed, serde_json::json!([read_orders]));
}
