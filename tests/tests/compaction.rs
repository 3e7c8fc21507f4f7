//! Log compaction end to end (issue #19): a topic created by confluent-kafka with
//! `cleanup.policy=compact` is cleaned by the broker's cleaner thread, and both a Kafka
//! consumer (confluent-kafka) and the native CLI (`wharf consume`) then read, for every key,
//! its latest value (or its tombstone) in offset order, before and after a SIGKILL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use integration_tests::{http_get, http_send, run_client_script, wharf, wharf_ok, BrokerProcess};
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

type Row = (i64, String, Option<String>);

/// Every record of the topic as the native CLI reads it from the start.
fn native_rows(broker: &BrokerProcess, topic: &str) -> Vec<Row> {
    let output = wharf(
        &broker.address(),
        &[
            "--json",
            "consume",
            topic,
            "--from",
            "earliest",
            "--timeout-ms",
            "1500",
        ],
        "",
    );
    assert_success("wharf consume", &output);
    stdout(&output)
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).expect("JSON record");
            (
                record["offset"].as_i64().expect("offset"),
                record["key"].as_str().expect("key").to_string(),
                record["value"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// Every record of the topic as confluent-kafka reads it from the start.
fn kafka_rows(broker: &BrokerProcess, topic: &str) -> Vec<Row> {
    let output = run_client_script(
        "confluent_compacted.py",
        &[&broker.kafka_address(), topic, "read"],
    );
    assert_success("confluent-kafka read", &output);
    let rows: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON rows");
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            (
                row[0].as_i64().expect("offset"),
                row[1].as_str().expect("key").to_string(),
                row[2].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// The rows hold every key's latest value, in offset order, each key's last row being it.
fn assert_latest_values(rows: &[Row], latest: &BTreeMap<String, Option<String>>, what: &str) {
    assert!(
        rows.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "{what}: offsets increase"
    );
    let mut last: BTreeMap<&str, &Option<String>> = BTreeMap::new();
    for (_, key, value) in rows {
        last.insert(key, value);
    }
    assert_eq!(last.len(), latest.len(), "{what}: every key is there");
    for (key, value) in latest {
        assert_eq!(
            last.get(key.as_str()),
            Some(&value),
            "{what}: the latest value of {key}"
        );
    }
}

#[test]
fn a_compacted_topic_keeps_the_latest_value_per_key_for_kafka_clients_and_the_native_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker =
        BrokerProcess::start_with_config(&dir.path().join("data"), "cleaner_backoff_ms = 200\n");
    let count = 3000;
    for codec in ["none", "zstd"] {
        let topic = format!("compacted-{codec}");
        let output = run_client_script(
            "confluent_compacted.py",
            &[
                &broker.kafka_address(),
                &topic,
                "produce",
                &count.to_string(),
                "50",
                codec,
            ],
        );
        assert_success("confluent-kafka produce", &output);
        let summary: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON summary");
        assert_eq!(summary["described"]["cleanup.policy"], "compact");
        assert_eq!(summary["described"]["min.cleanable.dirty.ratio"], "0.01");
        assert_eq!(
            summary["keyless"],
            serde_json::json!(["INVALID_RECORD"]),
            "{summary}"
        );
        let latest: BTreeMap<String, Option<String>> = summary["latest"]
            .as_object()
            .expect("latest")
            .iter()
            .map(|(key, value)| (key.clone(), value.as_str().map(str::to_string)))
            .collect();
        // The cleaner runs every 200 ms; segments of 64 KiB roll every ~280 records.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut rows = native_rows(&broker, &topic);
        while rows.len() > count / 4 {
            assert!(
                Instant::now() < deadline,
                "{codec}: not compacted: {} records",
                rows.len()
            );
            std::thread::sleep(Duration::from_millis(300));
            rows = native_rows(&broker, &topic);
        }
        assert_latest_values(&rows, &latest, &format!("{codec}, wharf consume"));
        let kafka = kafka_rows(&broker, &topic);
        assert_latest_values(&kafka, &latest, &format!("{codec}, confluent-kafka"));
        assert_eq!(
            kafka,
            native_rows(&broker, &topic),
            "{codec}: both protocols read the same records"
        );
    }
    let (status, scrape) = http_get(&broker.http_address(), "/metrics", None);
    assert_eq!(status, 200);
    let runs: f64 = scrape
        .lines()
        .find_map(|line| line.strip_prefix("wharf_cleaner_runs_total "))
        .expect("wharf_cleaner_runs_total in the scrape")
        .trim()
        .parse()
        .expect("a number");
    assert!(runs >= 2.0, "cleaner runs: {runs}");
    // The policy and its knobs through the HTTP API and the native CLI too.
    let (status, created) = http_send(
        &broker.http_address(),
        "POST",
        "/api/v1/topics",
        None,
        Some(r#"{"name": "http-compacted", "configs": {"cleanup.policy": "compact,delete"}}"#),
    );
    assert!(status == 201 || status == 200, "{status} {created}");
    let (status, altered) = http_send(
        &broker.http_address(),
        "PATCH",
        "/api/v1/topics/http-compacted/configs",
        None,
        Some(r#"{"set": {"min.compaction.lag.ms": "60000", "delete.retention.ms": "1000"}}"#),
    );
    assert_eq!(status, 200, "{altered}");
    let described = wharf_ok(
        &broker.address(),
        &["topic", "describe", "http-compacted"],
        "",
    );
    for line in ["compact,delete", "60000", "1000"] {
        assert!(described.contains(line), "{line} in {described}");
    }
    let (status, refused) = http_send(
        &broker.http_address(),
        "PATCH",
        "/api/v1/topics/http-compacted/configs",
        None,
        Some(r#"{"set": {"min.cleanable.dirty.ratio": "1.5"}}"#),
    );
    assert_eq!(status, 400, "{refused}");
    wharf_ok(
        &broker.address(),
        &[
            "topic",
            "create",
            "cli-compacted",
            "--partitions",
            "1",
            "--config",
            "cleanup.policy=compact",
        ],
        "",
    );
    let described = wharf_ok(
        &broker.address(),
        &["topic", "describe", "cli-compacted"],
        "",
    );
    assert!(described.contains("compact"), "{described}");
    // The native CLI is refused a keyless record too, with the reason.
    let keyless = wharf(
        &broker.address(),
        &["produce", "compacted-none"],
        "no key\n",
    );
    assert!(!keyless.status.success(), "a keyless record was accepted");
    assert!(
        String::from_utf8_lossy(&keyless.stderr).contains("without a key"),
        "{}",
        String::from_utf8_lossy(&keyless.stderr)
    );
    // A SIGKILL and restart: the cleaned segments are what the log holds.
    let before = native_rows(&broker, "compacted-zstd");
    broker.kill();
    broker.restart();
    assert_eq!(native_rows(&broker, "compacted-zstd"), before);
}
