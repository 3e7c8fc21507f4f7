//! Queue administration end to end through the `wharf` command line against the real
//! `wharfd` (issue #13): `queue get` (look at messages without a subscription, requeue or
//! ack), `queue bindings`, `queue move` (the shovel that puts dead-lettered messages back,
//! also across a broker SIGKILL mid-move) and the DELAYED count of `queue list`.
//!
//! Method: each test declares its topology with `wharf exchange|queue ...`, publishes with
//! `wharf publish --confirm`, and checks what the new commands print (text and `--json`)
//! and what is left in the queues afterwards (`wharf queue list --json`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{wharf, wharf_ok, wharf_path, BrokerProcess};
use serde_json::Value;

/// How long a subscriber waits for a message the test expects; only failing tests wait it
/// out.
const EXPECTED_WITHIN_MS: &str = "10000";

fn start_broker() -> (tempfile::TempDir, BrokerProcess) {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    (data, broker)
}

/// Runs `wharf` with `args` against `broker`, expecting success.
fn run(broker: &BrokerProcess, args: &[&str]) -> String {
    wharf_ok(&broker.address(), args, "")
}

/// Runs `wharf` with `args`, expecting failure: returns (exit code, stderr).
fn run_failing(broker: &BrokerProcess, args: &[&str]) -> (Option<i32>, String) {
    let output = wharf(&broker.address(), args, "");
    assert!(
        !output.status.success(),
        "wharf {args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Publishes one message per line of `lines` with `publish EXCHANGE KEY --confirm extra...`.
fn publish(broker: &BrokerProcess, exchange: &str, key: &str, extra: &[&str], lines: &[&str]) {
    let mut args = vec!["publish", exchange, key, "--confirm"];
    args.extend_from_slice(extra);
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    wharf_ok(&broker.address(), &args, &input);
}

/// One queue's entry in `wharf queue list --json`.
fn listed(broker: &BrokerProcess, queue: &str) -> Value {
    let listing: Value =
        serde_json::from_str(&run(broker, &["--json", "queue", "list"])).expect("json listing");
    listing
        .as_array()
        .expect("an array")
        .iter()
        .find(|entry| entry["name"] == queue)
        .unwrap_or_else(|| panic!("{queue} not listed in {listing}"))
        .clone()
}

/// `(ready, unacked)` of `queue`.
fn counts(broker: &BrokerProcess, queue: &str) -> (u64, u64) {
    let entry = listed(broker, queue);
    let number = |field: &str| entry[field].as_u64().expect("a count");
    (number("ready"), number("unacked"))
}

/// `wharf --json queue get QUEUE extra...`: one JSON object per message.
fn get_json(broker: &BrokerProcess, queue: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["--json", "queue", "get", queue];
    args.extend_from_slice(extra);
    run(broker, &args)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one json object per line"))
        .collect()
}

fn bodies(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|message| message["body"].as_str().expect("a body").to_string())
        .collect()
}

#[test]
fn queue_get_requeues_by_default_and_ack_removes() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "peek"]);
    publish(
        &broker,
        "",
        "peek",
        &["--header", "trace=t1"],
        &["a", "b", "c"],
    );

    // The default leaves the message in place, like rabbitmqadmin's ack_requeue_true.
    assert_eq!(run(&broker, &["queue", "get", "peek"]), "a\n");
    assert_eq!(counts(&broker, "peek"), (3, 0));

    // Printed as `wharf subscribe --json` prints (without a delivery tag): the message
    // already got once is marked redelivered, the next one is not.
    let got = get_json(&broker, "peek", &["--requeue", "--count", "2"]);
    assert_eq!(bodies(&got), ["a", "b"]);
    assert_eq!(got[0]["redelivered"], true, "{got:?}");
    assert_eq!(got[1]["redelivered"], false, "{got:?}");
    assert_eq!(got[0]["routing_key"], "peek");
    assert_eq!(got[0]["headers"]["trace"], "t1");
    assert_eq!(got[0]["headers"]["x-exchange"], "");
    assert!(got[0]["timestamp"].as_i64().expect("a timestamp") > 0);
    assert!(got[0].get("delivery_tag").is_none(), "{got:?}");
    assert_eq!(counts(&broker, "peek"), (3, 0));

    // --ack removes them; a subscriber then gets only the rest, in order.
    assert_eq!(
        run(&broker, &["queue", "get", "peek", "--ack", "--count", "2"]),
        "a\nb\n"
    );
    assert_eq!(counts(&broker, "peek"), (1, 0));
    let rest = run(
        &broker,
        &[
            "--json",
            "subscribe",
            "peek",
            "--max-messages",
            "1",
            "--timeout-ms",
            EXPECTED_WITHIN_MS,
        ],
    );
    let rest: Value = serde_json::from_str(rest.trim()).expect("json delivery");
    assert_eq!(rest["body"], "c");
    assert_eq!(rest["redelivered"], false);

    // An empty queue: nothing on stdout, a note on stderr, exit 0.
    let output = wharf(&broker.address(), &["queue", "get", "peek"], "");
    assert!(output.status.success(), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no ready message"), "{stderr}");

    let (_, stderr) = run_failing(&broker, &["queue", "get", "nosuch"]);
    assert!(stderr.contains("nosuch"), "{stderr}");
    let (code, _) = run_failing(&broker, &["queue", "get", "peek", "--ack", "--requeue"]);
    assert_eq!(code, Some(2), "--ack and --requeue conflict: a usage error");
    let (_, stderr) = run_failing(&broker, &["queue", "get", "peek", "--count", "0"]);
    assert!(stderr.contains("1 to 10000"), "{stderr}");
}

#[test]
fn queue_get_redelivered_mark_survives_a_restart() {
    let (_data, mut broker) = start_broker();
    run(&broker, &["queue", "declare", "kept", "--durable"]);
    publish(&broker, "", "kept", &[], &["only"]);
    let first = get_json(&broker, "kept", &[]);
    assert_eq!(first[0]["redelivered"], false);
    broker.kill();
    broker.restart();
    let again = get_json(&broker, "kept", &[]);
    assert_eq!(bodies(&again), ["only"]);
    assert_eq!(
        again[0]["redelivered"], true,
        "a message got before the crash may have been seen: {again:?}"
    );
}

#[test]
fn queue_bindings_lists_every_binding_with_its_arguments() {
    let (_data, broker) = start_broker();
    run(
        &broker,
        &["exchange", "declare", "orders", "--type", "topic"],
    );
    run(&broker, &["exchange", "declare", "all", "--type", "fanout"]);
    run(
        &broker,
        &["exchange", "declare", "docs", "--type", "headers"],
    );
    run(&broker, &["queue", "declare", "eu"]);
    run(&broker, &["queue", "declare", "pdf"]);
    run(
        &broker,
        &["queue", "bind", "eu", "orders", "--routing-key", "*.eu.#"],
    );
    run(&broker, &["queue", "bind", "eu", "all"]);
    run(
        &broker,
        &[
            "queue",
            "bind",
            "pdf",
            "docs",
            "--header",
            "format=pdf",
            "--match",
            "any",
        ],
    );

    let listing: Value =
        serde_json::from_str(&run(&broker, &["--json", "queue", "bindings"])).expect("json");
    let expected = serde_json::json!([
        {"exchange": "", "queue": "eu", "routing_key": "eu", "arguments": {}},
        {"exchange": "", "queue": "pdf", "routing_key": "pdf", "arguments": {}},
        {"exchange": "all", "queue": "eu", "routing_key": "", "arguments": {}},
        {"exchange": "docs", "queue": "pdf", "routing_key": "",
         "arguments": {"x-match": "any", "format": "pdf"}},
        {"exchange": "orders", "queue": "eu", "routing_key": "*.eu.#", "arguments": {}},
    ]);
    assert_eq!(listing, expected);

    let one: Value =
        serde_json::from_str(&run(&broker, &["--json", "queue", "bindings", "pdf"])).expect("json");
    let queues: Vec<&str> = one
        .as_array()
        .expect("an array")
        .iter()
        .map(|binding| binding["queue"].as_str().expect("a queue"))
        .collect();
    assert_eq!(queues, ["pdf", "pdf"]);

    let table = run(&broker, &["queue", "bindings", "eu"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("EXCHANGE"), "{table}");
    assert!(table.contains("(default)"), "{table}");
    assert!(table.contains("*.eu.#"), "{table}");

    // Unbinding removes it from the listing; an unknown queue is an error.
    run(
        &broker,
        &["queue", "unbind", "eu", "orders", "--routing-key", "*.eu.#"],
    );
    assert!(!run(&broker, &["queue", "bindings", "eu"]).contains("orders"));
    let (_, stderr) = run_failing(&broker, &["queue", "bindings", "nosuch"]);
    assert!(stderr.contains("nosuch"), "{stderr}");
}

#[test]
fn queue_move_puts_dead_lettered_messages_back_in_order() {
    let (_data, broker) = start_broker();
    run(&broker, &["exchange", "declare", "dlx", "--type", "fanout"]);
    run(&broker, &["queue", "declare", "dead", "--durable"]);
    run(&broker, &["queue", "bind", "dead", "dlx"]);
    run(
        &broker,
        &[
            "queue",
            "declare",
            "work",
            "--durable",
            "--dead-letter-exchange",
            "dlx",
        ],
    );
    let lines: Vec<String> = (1..=5).map(|index| format!("job-{index}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    publish(&broker, "", "work", &["--header", "tenant=acme"], &lines);
    // A consumer that fails every job: all five are dead-lettered into "dead".
    run(
        &broker,
        &[
            "subscribe",
            "work",
            "--reject",
            "--max-messages",
            "5",
            "--timeout-ms",
            EXPECTED_WITHIN_MS,
        ],
    );
    wait_for_ready(&broker, "dead", 5);
    assert_eq!(counts(&broker, "work"), (0, 0));

    let moved = run(&broker, &["queue", "move", "dead", "work"]);
    assert_eq!(
        moved,
        "moved 5 messages from queue \"dead\" to queue \"work\"\n"
    );
    assert_eq!(counts(&broker, "dead"), (0, 0));
    assert_eq!(counts(&broker, "work"), (5, 0));

    // In order, with routing key, headers (the dead-letter history included) and body.
    let back = get_json(&broker, "work", &["--count", "10"]);
    assert_eq!(bodies(&back), lines);
    for message in &back {
        assert_eq!(message["routing_key"], "work", "{message}");
        assert_eq!(message["headers"]["tenant"], "acme", "{message}");
        assert_eq!(
            message["headers"]["x-death-reason"], "rejected",
            "{message}"
        );
        assert_eq!(message["headers"]["x-death-queue"], "work", "{message}");
    }

    let json: Value =
        serde_json::from_str(&run(&broker, &["--json", "queue", "move", "dead", "work"]))
            .expect("json");
    assert_eq!(
        json,
        serde_json::json!({"source": "dead", "destination": "work", "moved": 0})
    );
    let (_, stderr) = run_failing(&broker, &["queue", "move", "work", "nosuch"]);
    assert!(stderr.contains("nosuch"), "{stderr}");
    let (_, stderr) = run_failing(&broker, &["queue", "move", "work", "work"]);
    assert!(stderr.contains("into itself"), "{stderr}");
    assert_eq!(
        counts(&broker, "work"),
        (5, 0),
        "failed moves leave the source alone"
    );
}

#[test]
fn queue_move_stopped_by_a_full_destination_reports_the_count_and_fails() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "src"]);
    run(
        &broker,
        &[
            "queue",
            "declare",
            "small",
            "--max-length",
            "2",
            "--overflow",
            "reject-publish",
        ],
    );
    publish(&broker, "", "src", &[], &["m1", "m2", "m3", "m4", "m5"]);
    let output = wharf(&broker.address(), &["queue", "move", "src", "small"], "");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "moved 2 messages from queue \"src\" to queue \"small\"\n"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("full"), "{stderr}");
    // The rest stayed in the source, in order and not marked redelivered.
    let rest = get_json(&broker, "src", &["--count", "10"]);
    assert_eq!(bodies(&rest), ["m3", "m4", "m5"]);
    assert!(rest.iter().all(|message| message["redelivered"] == false));
    assert_eq!(
        bodies(&get_json(&broker, "small", &["--count", "10"])),
        ["m1", "m2"]
    );
}

#[test]
fn queue_move_across_a_broker_kill_loses_no_message() {
    // Goal: a crash mid-move loses nothing (at-least-once). Method: move thousands of
    // messages between durable queues, SIGKILL the broker as soon as the destination has
    // some, restart, and take everything from both queues: every message is there at least
    // once, each queue still in publish order. Wherever the kill lands the checks hold; the
    // test reports how many messages it left in both queues.
    const MESSAGES: usize = 5000;
    let (_data, mut broker) = start_broker();
    run(&broker, &["queue", "declare", "from", "--durable"]);
    run(&broker, &["queue", "declare", "to", "--durable"]);
    let input: String = (0..MESSAGES)
        .map(|index| format!("m-{index:05}\n"))
        .collect();
    wharf_ok(
        &broker.address(),
        &["publish", "", "from", "--confirm"],
        &input,
    );
    assert_eq!(counts(&broker, "from"), (MESSAGES as u64, 0));

    let mut mover = Command::new(wharf_path())
        .args(["--broker", &broker.address(), "queue", "move", "from", "to"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wharf queue move");
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts(&broker, "to").0 == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.kill();
    let _ = mover.wait();
    broker.restart();

    let mut from = bodies(&get_json(&broker, "from", &["--ack", "--count", "10000"]));
    let to = bodies(&get_json(&broker, "to", &["--ack", "--count", "10000"]));
    assert!(
        to.windows(2).all(|pair| pair[0] < pair[1]),
        "destination order"
    );
    assert!(
        from.windows(2).all(|pair| pair[0] < pair[1]),
        "source order"
    );
    let in_both = from.iter().filter(|body| to.contains(body)).count();
    eprintln!(
        "after the kill: {} in the source, {} in the destination, {in_both} in both",
        from.len(),
        to.len()
    );
    from.extend(to);
    from.sort();
    from.dedup();
    let expected: Vec<String> = (0..MESSAGES).map(|index| format!("m-{index:05}")).collect();
    assert_eq!(from.len(), MESSAGES, "every message survives the kill");
    assert_eq!(from, expected);
}

#[test]
fn queue_list_shows_delayed_messages_apart_from_ready() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "later"]);
    publish(
        &broker,
        "",
        "later",
        &["--delay-ms", "600000"],
        &["tomorrow"],
    );
    publish(&broker, "", "later", &[], &["now"]);
    let entry = listed(&broker, "later");
    assert_eq!(entry["ready"], 1, "{entry}");
    assert_eq!(entry["delayed"], 1, "{entry}");
    let table = run(&broker, &["queue", "list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DURABLE",
            "READY",
            "DELAYED",
            "UNACKED",
            "CONSUMERS"
        ]
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row, ["later", "false", "1", "1", "0", "0"]);
    // Only the ready message can be got; the delayed one stays delayed.
    assert_eq!(
        run(&broker, &["queue", "get", "later", "--count", "5"]),
        "now\n"
    );
}

/// Waits until `queue` has `ready` ready messages (dead-lettering runs after the reject is
/// answered).
fn wait_for_ready(broker: &BrokerProcess, queue: &str, ready: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, _) = counts(broker, queue);
        if now == ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} has {now} ready, not {ready}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
