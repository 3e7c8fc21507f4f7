//! The web console (issue #17) end to end in headless Chromium: a live `wharfd` with real
//! traffic, the console loaded from `/`, the numbers it shows checked against what this test
//! sent, and admin actions done through the UI (create a topic, purge a queue, declare a
//! queue and an exchange, bind, publish) checked with the CLI and the API. The browser is Debian's `chromium`, driven by playwright-core
//! from npm (both installed by scripts/test.sh); screenshots are kept in
//! `target/test-artifacts/console/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use integration_tests::{run_node_script, wharf_ok, workspace_root, BrokerProcess};
use serde_json::{json, Value};

/// Sends one HTTP/1.1 request with an optional JSON body and returns (status, body).
fn http(address: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the HTTP listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get_json(address: &str, path: &str) -> Value {
    let (status, body) = http(address, "GET", path, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Where the screenshots go: a test artifact CI can keep.
fn artifacts() -> PathBuf {
    workspace_root().join("target/test-artifacts/console")
}

#[test]
fn the_console_shows_what_was_sent_and_its_forms_act_on_the_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(&dir.path().join("data"));
    let address = broker.address();
    let web = broker.http_address();

    // Traffic: 3 records in orders/0 and 2 in orders/1, a group that consumed one record, a
    // queue with 4 messages.
    wharf_ok(
        &address,
        &["topic", "create", "orders", "--partitions", "2"],
        "",
    );
    let records = |partition: u32, values: &[(&str, &str)]| {
        let records: Vec<Value> = values
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value, "headers": [{"key": "source", "value": "test"}]}))
            .collect();
        let (status, body) = http(
            &web,
            "POST",
            &format!("/api/v1/topics/orders/partitions/{partition}/records"),
            Some(&json!({ "records": records })),
        );
        assert_eq!(status, 201, "{body}");
    };
    records(0, &[("k0", "v0"), ("k1", "v1"), ("k2", "v2")]);
    records(1, &[("k3", "v3"), ("k4", "v4")]);
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
    // The browser script sends traffic here while the overview's charts poll.
    wharf_ok(
        &address,
        &["topic", "create", "traffic", "--partitions", "1"],
        "",
    );
    wharf_ok(&address, &["queue", "declare", "jobs", "--durable"], "");
    wharf_ok(
        &address,
        &["exchange", "declare", "events", "--type", "topic"],
        "",
    );
    let (status, body) = http(
        &web,
        "POST",
        "/api/v1/bindings",
        Some(&json!({"exchange": "events", "queue": "jobs", "routing_key": "order.*"})),
    );
    assert_eq!(status, 201, "{body}");
    wharf_ok(
        &address,
        &["publish", "", "jobs", "--confirm"],
        "j1\nj2\nj3\nj4\n",
    );

    let output = run_node_script(
        "console_browser.js",
        &[&web, artifacts().to_str().expect("UTF-8 path")],
    );
    assert!(
        output.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("the browser's JSON");

    assert_eq!(seen["title"], "Wharf console", "{seen}");
    // Overview cards.
    let overview = &seen["overview"];
    assert_eq!(overview["topics"], "2", "{seen}");
    assert_eq!(overview["partitions"], "3", "{seen}");
    assert_eq!(overview["records-in"], "5", "{seen}");
    assert_eq!(overview["groups"], "1", "{seen}");
    assert_eq!(overview["queues"], "1", "{seen}");
    assert_eq!(overview["ready"], "4", "{seen}");
    assert!(seen["chart_drawn"].as_u64() > Some(0), "{seen}");
    // 200 records over about 5 s while the console polled every 2 s.
    assert!(
        seen["chart_max_records_per_s"].as_f64() > Some(5.0),
        "{seen}"
    );
    assert_eq!(
        get_json(&web, "/api/v1/topics/traffic")["partitions"][0]["high_watermark"],
        200
    );
    // Topic listing: name, partitions, records.
    assert_eq!(
        seen["topic_row"].as_array().map(|row| &row[0..3]),
        Some(&[json!("orders"), json!("2"), json!("5")][..])
    );
    // Partitions: high watermarks 3 and 2.
    let partitions: Vec<(String, String)> = seen["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap_or("").into(),
                row[3].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        partitions,
        [
            ("0".to_string(), "3".to_string()),
            ("1".to_string(), "2".to_string())
        ]
    );
    // Message browser: partition 0's records with keys and headers.
    let messages: Vec<Vec<&str>> = seen["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|row| {
            let row = row.as_array().expect("row");
            [0, 2, 3, 4]
                .iter()
                .map(|&i| row[i].as_str().unwrap_or(""))
                .collect()
        })
        .collect();
    assert_eq!(
        messages,
        [
            ["0", "k0", "v0", "source=test"],
            ["1", "k1", "v1", "source=test"],
            ["2", "k2", "v2", "source=test"]
        ]
    );
    // Group lag: what the API says, committed 1 of 5 in all.
    let group = get_json(&web, "/api/v1/groups/billing");
    let expected: Vec<Value> = group["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|entry| {
            json!([
                entry["topic"],
                entry["partition"].to_string(),
                entry["committed_offset"].to_string(),
                entry["high_watermark"].to_string(),
                entry["lag"].to_string()
            ])
        })
        .collect();
    assert_eq!(seen["group_offsets"], Value::from(expected), "{seen}");
    let committed: i64 = group["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|entry| entry["committed_offset"].as_i64().expect("offset"))
        .sum();
    assert_eq!(committed, 1, "{group}");
    // Queue: 4 ready, then purged through the UI.
    assert_eq!(
        seen["queue_row"].as_array().map(|row| &row[0..6]),
        Some(
            &[
                json!("jobs"),
                json!("durable"),
                json!("4"),
                json!("0"),
                json!("0"),
                json!("0")
            ][..]
        ),
        "{seen}"
    );
    assert_eq!(seen["queue_row_after_purge"][2], "0", "{seen}");
    // Exchanges: the listing, and what the forms did (the publish went to the purged queue).
    assert_eq!(
        seen["exchange_row"].as_array().map(|row| &row[0..4]),
        Some(
            &[
                json!("events"),
                json!("topic"),
                json!("durable"),
                json!("1")
            ][..]
        ),
        "{seen}"
    );
    assert_eq!(
        seen["binding_row"].as_array().map(|row| &row[0..3]),
        Some(&[json!("events"), json!("jobs"), json!("order.*")][..]),
        "{seen}"
    );
    assert_eq!(seen["publish_message"], "routed to jobs", "{seen}");
    assert_eq!(
        seen["declared_queue_message"], "declared browser-queue",
        "{seen}"
    );
    assert!(wharf_ok(&address, &["exchange", "list"], "").contains("browser-fanout"));
    assert!(wharf_ok(&address, &["queue", "list"], "").contains("browser-queue"));
    let got = http(
        &web,
        "POST",
        "/api/v1/queues/jobs/get",
        Some(&json!({"count": 10})),
    );
    let got: Value = serde_json::from_str(&got.1).expect("JSON");
    assert_eq!(
        got["messages"].as_array().map(|messages| messages
            .iter()
            .map(|m| m["body"].clone())
            .collect::<Vec<_>>()),
        Some(vec![json!("from the browser")]),
        "{got}"
    );
    // The topic the form created, as the CLI sees it; a second create is refused with the
    // broker's message.
    assert_eq!(seen["created_message"], "created made-in-browser", "{seen}");
    assert_eq!(seen["created_row"][1], "2", "{seen}");
    let described = wharf_ok(&address, &["topic", "describe", "made-in-browser"], "");
    assert!(described.contains("made-in-browser"), "{described}");
    assert_eq!(
        get_json(&web, "/api/v1/topics/made-in-browser")["partitions"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert!(
        seen["refused_message"]
            .as_str()
            .is_some_and(|message| message.contains("made-in-browser")),
        "{seen}"
    );
    // No failed asset or API request, no script error (the refused create's 409 aside).
    assert_eq!(seen["failed_requests"], json!([]), "{seen}");
    let errors: Vec<&Value> = seen["console_errors"]
        .as_array()
        .expect("console errors")
        .iter()
        .filter(|error| !error.as_str().unwrap_or("").contains("status of 409"))
        .collect();
    assert!(errors.is_empty(), "{seen}");
    assert!(artifacts().join("console-overview.png").exists());
}
