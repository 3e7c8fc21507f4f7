//! Queue clients ride through a broker restart (issue #13 item 2): `wharf publish --confirm`
//! publishes again what was not confirmed and reports its counts; `wharf subscribe`
//! subscribes again and keeps printing.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{wharf_ok, wharf_path, BrokerProcess};
use serde_json::Value;

/// How long the tests wait for what they expect.
const EXPECTED_WITHIN: Duration = Duration::from_secs(30);

fn ready_count(address: &str, queue: &str) -> u64 {
    let listing: Value = serde_json::from_str(&wharf_ok(address, &["--json", "queue", "list"], ""))
        .expect("json listing");
    listing
        .as_array()
        .expect("an array")
        .iter()
        .find(|entry| entry["name"] == queue)
        .and_then(|entry| entry["ready"].as_u64())
        .unwrap_or(0)
}

#[test]
fn publish_rides_through_a_broker_restart_and_loses_nothing() {
    // Method: feed `wharf publish --confirm` 4,000 lines in two halves, SIGKILL and
    // restart the broker between them, then check the command confirmed all 4,000 and
    // the queue holds every line (at-least-once: some may be there twice).
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let address = broker.address();
    wharf_ok(&address, &["queue", "declare", "jobs", "--durable"], "");
    let mut publish = Command::new(wharf_path())
        .args(["--broker", &address, "publish", "", "jobs", "--confirm"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wharf publish");
    let mut stdin = publish.stdin.take().expect("stdin");
    let first: String = (0..2_000).map(|index| format!("line-{index}\n")).collect();
    stdin.write_all(first.as_bytes()).expect("first half");
    stdin.flush().expect("flush");
    let deadline = Instant::now() + EXPECTED_WITHIN;
    while ready_count(&address, "jobs") < 1_000 {
        assert!(Instant::now() < deadline, "the first half is not arriving");
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.kill();
    broker.restart();
    let second: String = (2_000..4_000)
        .map(|index| format!("line-{index}\n"))
        .collect();
    stdin.write_all(second.as_bytes()).expect("second half");
    drop(stdin);
    let output = publish.wait_with_output().expect("wait for wharf publish");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "wharf publish failed: {stderr}");
    assert!(
        stderr.contains("4000 confirmed"),
        "every line is confirmed: {stderr}"
    );
    let stored = wharf_ok(
        &broker.address(),
        &[
            "subscribe",
            "jobs",
            "--timeout-ms",
            "2000",
            "--prefetch",
            "1000",
        ],
        "",
    );
    let lines: BTreeSet<&str> = stored.lines().collect();
    let expected: BTreeSet<String> = (0..4_000).map(|index| format!("line-{index}")).collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(lines, expected, "every line is stored");
}

#[test]
fn subscribe_rides_through_a_broker_restart() {
    // Method: a `wharf subscribe` runs while the broker is SIGKILLed and restarted; it must
    // keep going and print what is published after the restart too.
    let data = tempfile::tempdir().expect("temp dir");
    let mut broker = BrokerProcess::start(&data.path().join("data"));
    let address = broker.address();
    wharf_ok(&address, &["queue", "declare", "events", "--durable"], "");
    let mut subscribe = Command::new(wharf_path())
        .args([
            "--broker",
            &address,
            "subscribe",
            "events",
            "--timeout-ms",
            "20000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wharf subscribe");
    let mut printed = BufReader::new(subscribe.stdout.take().expect("stdout")).lines();
    wharf_ok(&address, &["publish", "", "events"], "before\n");
    assert_eq!(printed.next().expect("a line").expect("utf-8"), "before");
    broker.kill();
    broker.restart();
    wharf_ok(&broker.address(), &["publish", "", "events"], "after\n");
    // "before" may come again first: its ack may have been lost with the broker
    // (at-least-once); nothing else may.
    let next = loop {
        let line = printed
            .next()
            .expect("the subscriber is still running")
            .expect("utf-8");
        if line != "before" {
            break line;
        }
    };
    assert_eq!(next, "after", "the subscriber subscribed again");
    let _ = subscribe.kill();
    let _ = subscribe.wait();
}
