//! The stream and group admin commands of issue #13 against the real `wharfd`:
//! `wharf topic alter | add-partitions | describe` (configs) and
//! `wharf group reset-offsets | delete`, with their error cases and restart survival
//! (SIGKILL, then a start on the same data directory).

use std::time::{Duration, Instant};

use integration_tests::{wharf, wharf_ok, BrokerProcess, RawClient};
use serde_json::Value;
use wharf_protocol::messages::{GroupHeartbeatRequest, LeaveGroupRequest};
use wharf_protocol::{Request, Response};

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn start() -> (tempfile::TempDir, BrokerProcess) {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    (data, broker)
}

/// Runs `wharf args` expecting failure; returns its stderr.
fn wharf_fails(address: &str, args: &[&str]) -> String {
    let output = wharf(address, args, "");
    assert!(
        !output.status.success(),
        "wharf {args:?} should fail; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(address: &str, args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let output = wharf_ok(address, &full, "");
    serde_json::from_str(&output).unwrap_or_else(|error| panic!("{error}: {output}"))
}

/// The topic's configs from `topic describe --json`: key → (value, source).
fn configs(address: &str, topic: &str) -> Vec<(String, String, String)> {
    let described = json(address, &["topic", "describe", topic]);
    described["configs"]
        .as_array()
        .expect("configs array")
        .iter()
        .map(|config| {
            (
                config["key"].as_str().expect("key").to_string(),
                config["value"].as_str().expect("value").to_string(),
                config["source"].as_str().expect("source").to_string(),
            )
        })
        .collect()
}

fn config<'a>(configs: &'a [(String, String, String)], key: &str) -> (&'a str, &'a str) {
    let (_, value, source) = configs
        .iter()
        .find(|(name, _, _)| name == key)
        .unwrap_or_else(|| panic!("no {key} in {configs:?}"));
    (value, source)
}

/// Committed offsets of `group` per (topic, partition) from `group describe --json`.
fn committed(address: &str, group: &str) -> Vec<(String, u64, Option<i64>)> {
    let described = json(address, &["group", "describe", group]);
    described["partitions"]
        .as_array()
        .expect("partitions array")
        .iter()
        .map(|row| {
            (
                row["topic"].as_str().expect("topic").to_string(),
                row["partition"].as_u64().expect("partition"),
                row["committed_offset"].as_i64(),
            )
        })
        .collect()
}

/// Consumes `topic` in `group` from earliest (without a committed offset) until idle;
/// returns what it printed.
fn consume_group(address: &str, topic: &str, group: &str) -> Vec<String> {
    lines(&wharf_ok(
        address,
        &[
            "consume",
            topic,
            "--group",
            group,
            "--from",
            "earliest",
            "--timeout-ms",
            "2000",
        ],
        "",
    ))
}

/// A topic of two partitions with 10 records in partition 0 and 6 in partition 1.
fn two_partitions(address: &str, topic: &str) {
    wharf_ok(
        address,
        &["topic", "create", topic, "--partitions", "2"],
        "",
    );
    let first: String = (0..10).map(|index| format!("a{index}\n")).collect();
    wharf_ok(address, &["produce", topic, "--partition", "0"], &first);
    let second: String = (0..6).map(|index| format!("b{index}\n")).collect();
    wharf_ok(address, &["produce", topic, "--partition", "1"], &second);
}

#[test]
fn topic_alter_sets_overrides_that_describe_shows_and_a_restart_keeps() {
    let (_data, mut broker) = start();
    let address = broker.address();
    wharf_ok(
        &address,
        &[
            "topic",
            "create",
            "audit",
            "--partitions",
            "1",
            "--config",
            "segment.ms=60000",
        ],
        "",
    );
    let before = configs(&address, "audit");
    assert_eq!(config(&before, "segment.ms"), ("60000", "override"));
    assert_eq!(config(&before, "retention.ms"), ("604800000", "default"));
    assert_eq!(config(&before, "flush").1, "default");
    let keys: Vec<&str> = before.iter().map(|(key, _, _)| key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cleanup.policy",
            "delete.retention.ms",
            "flush",
            "max.compaction.lag.ms",
            "max.message.bytes",
            "message.timestamp.type",
            "min.cleanable.dirty.ratio",
            "min.compaction.lag.ms",
            "min.insync.replicas",
            "retention.bytes",
            "retention.ms",
            "segment.bytes",
            "segment.ms"
        ]
    );

    let altered = wharf_ok(
        &address,
        &[
            "topic",
            "alter",
            "audit",
            "--config",
            "retention.ms=3600000",
            "--config",
            "retention.bytes=1048576",
        ],
        "",
    );
    assert!(altered.contains("altered topic \"audit\""), "{altered}");
    let text = wharf_ok(&address, &["topic", "describe", "audit"], "");
    assert!(
        text.lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()
                == ["retention.ms", "3600000", "override"]),
        "{text}"
    );

    broker.restart();
    let address = broker.address();
    let after = configs(&address, "audit");
    assert_eq!(config(&after, "retention.ms"), ("3600000", "override"));
    assert_eq!(config(&after, "retention.bytes"), ("1048576", "override"));
    assert_eq!(
        config(&after, "segment.ms"),
        ("60000", "override"),
        "an alter keeps the overrides it does not name"
    );
}

#[test]
fn topic_alter_applies_a_new_retention_without_a_restart() {
    // Goal: an altered retention.ms deletes old segments at the broker's next retention
    // pass. Method: a topic created to keep everything (retention.ms=0) with 64 KiB
    // segments holds records stamped in 1970 across several segments; after the alter, the
    // log start offset moves past them within a bounded wait.
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start_with_config(
        &data.path().join("data"),
        "retention_check_interval_ms = 50\n",
    );
    let address = broker.address();
    wharf_ok(
        &address,
        &[
            "topic",
            "create",
            "old",
            "--partitions",
            "1",
            "--config",
            "retention.ms=0",
            "--config",
            "segment.bytes=65536",
        ],
        "",
    );
    let payload = "x".repeat(1000);
    let input: String = (0..100).map(|_| format!("{payload}\n")).collect();
    for _ in 0..3 {
        wharf_ok(
            &address,
            &["produce", "old", "--timestamp-ms", "1000"],
            &input,
        );
    }
    let log_start = || {
        json(&address, &["topic", "describe", "old"])["partitions"][0]["log_start_offset"]
            .as_i64()
            .expect("log_start_offset")
    };
    assert_eq!(log_start(), 0, "retention.ms=0 keeps everything");
    wharf_ok(
        &address,
        &["topic", "alter", "old", "--config", "retention.ms=60000"],
        "",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while log_start() == 0 {
        assert!(
            Instant::now() < deadline,
            "retention did not delete the expired segments within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn topic_alter_refuses_bad_configs_and_unknown_topics() {
    let (_data, broker) = start();
    let address = broker.address();
    wharf_ok(&address, &["topic", "create", "t", "--partitions", "1"], "");
    let stderr = wharf_fails(&address, &["topic", "alter", "t", "--config", "bogus=1"]);
    assert!(
        stderr.contains("unknown topic config \"bogus\""),
        "{stderr}"
    );
    let stderr = wharf_fails(
        &address,
        &["topic", "alter", "t", "--config", "retention.ms=soon"],
    );
    assert!(stderr.contains("retention.ms"), "{stderr}");
    let stderr = wharf_fails(
        &address,
        &["topic", "alter", "t", "--config", "flush=never"],
    );
    assert!(stderr.contains("cannot be altered"), "{stderr}");
    let stderr = wharf_fails(&address, &["topic", "alter", "t"]);
    assert!(stderr.contains("--config"), "{stderr}");
    let stderr = wharf_fails(
        &address,
        &["topic", "alter", "missing", "--config", "retention.ms=1"],
    );
    assert!(stderr.contains("unknown topic \"missing\""), "{stderr}");
    let stderr = wharf_fails(&address, &["topic", "describe", "missing"]);
    assert!(stderr.contains("unknown topic \"missing\""), "{stderr}");
    // Nothing of the refused alters stuck.
    assert!(configs(&address, "t")
        .iter()
        .all(|(_, _, source)| source == "default"));
}

#[test]
fn add_partitions_grows_the_topic_and_survives_a_restart() {
    let (_data, mut broker) = start();
    let address = broker.address();
    two_partitions(&address, "grow");
    let output = wharf_ok(
        &address,
        &["topic", "add-partitions", "grow", "--count", "4"],
        "",
    );
    assert!(
        output.contains("topic \"grow\" now has 4 partitions"),
        "{output}"
    );
    wharf_ok(&address, &["produce", "grow", "--partition", "3"], "new\n");
    let read = wharf_ok(
        &address,
        &[
            "consume",
            "grow",
            "--partition",
            "3",
            "--from",
            "earliest",
            "--max-messages",
            "1",
            "--timeout-ms",
            "5000",
        ],
        "",
    );
    assert_eq!(lines(&read), ["new"]);

    broker.restart();
    let address = broker.address();
    let described = json(&address, &["topic", "describe", "grow"]);
    let partitions = described["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 4, "{described}");
    assert_eq!(partitions[0]["end_offset"], 10, "old records stay put");
    assert_eq!(partitions[3]["end_offset"], 1, "{described}");

    for count in ["4", "3"] {
        let stderr = wharf_fails(
            &address,
            &["topic", "add-partitions", "grow", "--count", count],
        );
        assert!(stderr.contains("must be larger"), "{stderr}");
    }
    let stderr = wharf_fails(
        &address,
        &["topic", "add-partitions", "missing", "--count", "2"],
    );
    assert!(stderr.contains("unknown topic \"missing\""), "{stderr}");
}

#[test]
fn reset_offsets_is_a_dry_run_unless_executed() {
    let (_data, broker) = start();
    let address = broker.address();
    two_partitions(&address, "orders");
    assert_eq!(consume_group(&address, "orders", "billing").len(), 16);
    let done = vec![
        ("orders".to_string(), 0, Some(10)),
        ("orders".to_string(), 1, Some(6)),
    ];
    assert_eq!(committed(&address, "billing"), done);

    let output = wharf(
        &address,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--to",
            "earliest",
        ],
        "",
    );
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "GROUP",
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "NEW-OFFSET"
            ],
            vec!["billing", "orders", "0", "10", "0"],
            vec!["billing", "orders", "1", "6", "0"],
        ]
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("dry run"),
        "the dry run says so"
    );
    assert_eq!(
        committed(&address, "billing"),
        done,
        "a dry run commits nothing"
    );

    let reset = |to: &str, execute: bool| {
        let mut args = vec![
            "--json",
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "orders",
            "--to",
            to,
        ];
        if execute {
            args.push("--execute");
        }
        let document: Value = serde_json::from_str(&wharf_ok(&address, &args, "")).expect("JSON");
        assert_eq!(document["executed"], execute);
        document["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .map(|row| row["new_offset"].as_i64().expect("new_offset"))
            .collect::<Vec<i64>>()
    };
    assert_eq!(
        reset("99", false),
        [10, 6],
        "an offset is clamped to the log"
    );
    assert_eq!(reset("4", true), [4, 4]);
    assert_eq!(
        committed(&address, "billing"),
        [
            ("orders".to_string(), 0, Some(4)),
            ("orders".to_string(), 1, Some(4)),
        ]
    );
    let mut again = consume_group(&address, "orders", "billing");
    again.sort();
    assert_eq!(again, ["a4", "a5", "a6", "a7", "a8", "a9", "b4", "b5"]);
    assert_eq!(reset("earliest", true), [0, 0]);
    assert_eq!(consume_group(&address, "orders", "billing").len(), 16);
    assert_eq!(reset("latest", true), [10, 6]);
    assert!(consume_group(&address, "orders", "billing").is_empty());
}

#[test]
fn reset_offsets_to_a_time_finds_the_first_record_at_or_after_it() {
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
    let plan = |to: &str| {
        let document = json(
            &address,
            &[
                "group",
                "reset-offsets",
                "fresh",
                "--topic",
                "timed",
                "--to",
                to,
            ],
        );
        let row = &document["partitions"][0];
        assert_eq!(row["current_offset"], Value::Null, "a new group has none");
        row["new_offset"].as_i64().expect("new_offset")
    };
    assert_eq!(plan("1970-01-01T00:00:02Z"), 1);
    assert_eq!(plan("2500ms"), 2);
    assert_eq!(plan("4000ms"), 3, "past every record: the end");
    assert_eq!(plan("1"), 1, "a bare number is an offset");
    let stderr = wharf_fails(
        &address,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "timed",
            "--to",
            "yesterday",
        ],
    );
    assert!(stderr.contains("expected earliest, latest"), "{stderr}");
    let stderr = wharf_fails(
        &address,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "missing",
            "--to",
            "earliest",
        ],
    );
    assert!(stderr.contains("unknown topic \"missing\""), "{stderr}");
}

/// Joins `group` as a member subscribed to `topic` with a long session, so it stays active
/// until it leaves; returns the connection and the member id.
fn join(broker: &BrokerProcess, group: &str, topic: &str) -> (RawClient, String) {
    let mut raw = RawClient::connect(broker.addr());
    let response = raw.call(&Request::GroupHeartbeat(GroupHeartbeatRequest {
        group_id: group.to_string(),
        member_id: String::new(),
        generation: 0,
        client_id: "test".to_string(),
        topics: vec![topic.to_string()],
        assignor: String::new(),
        session_timeout_ms: 600_000,
    }));
    let Response::GroupHeartbeat(joined) = response else {
        panic!("not a heartbeat answer: {response:?}");
    };
    assert!(joined.error.is_ok(), "{joined:?}");
    (raw, joined.member_id)
}

#[test]
fn reset_and_delete_are_refused_while_the_group_has_members() {
    let (_data, broker) = start();
    let address = broker.address();
    two_partitions(&address, "busy");
    consume_group(&address, "busy", "live");
    let (mut raw, member_id) = join(&broker, "live", "busy");

    for args in [
        &[
            "group",
            "reset-offsets",
            "live",
            "--topic",
            "busy",
            "--to",
            "earliest",
        ][..],
        &[
            "group",
            "reset-offsets",
            "live",
            "--topic",
            "busy",
            "--to",
            "earliest",
            "--execute",
        ][..],
        &["group", "delete", "live"][..],
    ] {
        let stderr = wharf_fails(&address, args);
        assert!(
            stderr.contains("group \"live\" has 1 active member"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        committed(&address, "live")
            .iter()
            .map(|(_, _, offset)| *offset)
            .collect::<Vec<_>>(),
        [Some(10), Some(6)],
        "nothing changed"
    );

    let left = raw.call(&Request::LeaveGroup(LeaveGroupRequest {
        group_id: "live".to_string(),
        member_id,
    }));
    assert!(left.error().is_ok(), "{left:?}");
    let output = wharf_ok(&address, &["group", "delete", "live"], "");
    assert!(output.contains("deleted group \"live\""), "{output}");
}

#[test]
fn group_delete_removes_committed_offsets_durably() {
    let (_data, mut broker) = start();
    let address = broker.address();
    two_partitions(&address, "events");
    assert_eq!(consume_group(&address, "events", "doomed").len(), 16);
    assert_eq!(consume_group(&address, "events", "kept").len(), 16);

    let stderr = wharf_fails(&address, &["group", "delete", "nosuch"]);
    assert!(stderr.contains("unknown group \"nosuch\""), "{stderr}");
    wharf_ok(&address, &["group", "delete", "doomed"], "");
    let listed = wharf_ok(&address, &["group", "list"], "");
    assert!(!listed.contains("doomed"), "{listed}");
    assert!(listed.contains("kept"), "{listed}");
    let stderr = wharf_fails(&address, &["group", "delete", "doomed"]);
    assert!(
        stderr.contains("unknown group \"doomed\""),
        "a second delete finds nothing: {stderr}"
    );

    broker.restart();
    let address = broker.address();
    let listed = wharf_ok(&address, &["group", "list"], "");
    assert!(!listed.contains("doomed"), "deleted for good: {listed}");
    let stderr = wharf_fails(&address, &["group", "describe", "doomed"]);
    assert!(stderr.contains("unknown group \"doomed\""), "{stderr}");
    assert_eq!(
        committed(&address, "kept")
            .iter()
            .map(|(_, _, offset)| *offset)
            .collect::<Vec<_>>(),
        [Some(10), Some(6)],
        "other groups keep theirs"
    );
    assert_eq!(
        consume_group(&address, "events", "doomed").len(),
        16,
        "a group of the same name starts afresh"
    );
}
