//! Queues end to end through the `wharf` command line (and, where a test needs to hold
//! deliveries unacknowledged, the client library's `Subscriber`) against the real `wharfd`:
//! routing by every exchange type, dead-lettering on reject and on TTL expiry, reject-publish
//! overflow seen by `publish --confirm`, queue counts, round-robin, redelivery after a
//! subscriber is SIGKILLed, the prefetch window, and delayed delivery.
//!
//! Method: a test declares its topology with `wharf exchange|queue ...`, publishes with
//! `wharf publish`, and reads with `wharf subscribe --max-messages N --timeout-ms T` (N the
//! expected count, T a generous bound that only a failing test waits out); it then checks
//! with `wharf queue list --json` that nothing else is left in the queue.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{wharf, wharf_ok, wharf_path, BrokerProcess};
use serde_json::Value;
use wharf_client::{Admin, Client, ClientConfig, Delivery, Subscriber};

/// How long a subscriber waits for a message the test expects; only failing tests wait it
/// out.
const EXPECTED_WITHIN_MS: &str = "10000";
const EXPECTED_WITHIN: Duration = Duration::from_secs(10);

fn start_broker() -> (tempfile::TempDir, BrokerProcess) {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    (data, broker)
}

/// Runs `wharf` with `args` against `broker`, expecting success.
fn run(broker: &BrokerProcess, args: &[&str]) -> String {
    wharf_ok(&broker.address(), args, "")
}

/// Publishes one message per line of `lines` with `publish EXCHANGE KEY --confirm extra...`.
fn publish(broker: &BrokerProcess, exchange: &str, key: &str, extra: &[&str], lines: &[&str]) {
    let mut args = vec!["publish", exchange, key, "--confirm"];
    args.extend_from_slice(extra);
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    wharf_ok(&broker.address(), &args, &input);
}

/// Reads exactly `count` messages of `queue` through the CLI (manual acks) and checks the
/// queue is then empty: returns their bodies in delivery order.
fn drain(broker: &BrokerProcess, queue: &str, count: usize) -> Vec<String> {
    let count_text = count.to_string();
    let output = if count == 0 {
        String::new()
    } else {
        run(
            broker,
            &[
                "subscribe",
                queue,
                "--max-messages",
                &count_text,
                "--timeout-ms",
                EXPECTED_WITHIN_MS,
            ],
        )
    };
    let bodies: Vec<String> = output.lines().map(str::to_string).collect();
    assert_eq!(bodies.len(), count, "messages of {queue}: {bodies:?}");
    let (ready, unacked, _) = queue_counts(broker, queue);
    assert_eq!((ready, unacked), (0, 0), "{queue} has messages left");
    bodies
}

/// `(ready, unacked, consumers)` of `queue` from `wharf queue list --json`.
fn queue_counts(broker: &BrokerProcess, queue: &str) -> (u64, u64, u64) {
    let listing: Value =
        serde_json::from_str(&run(broker, &["--json", "queue", "list"])).expect("json listing");
    let entry = listing
        .as_array()
        .expect("an array")
        .iter()
        .find(|entry| entry["name"] == queue)
        .unwrap_or_else(|| panic!("{queue} not listed in {listing}"));
    let number = |field: &str| entry[field].as_u64().expect("a count");
    (number("ready"), number("unacked"), number("consumers"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn connect(runtime: &tokio::runtime::Runtime, broker: &BrokerProcess) -> Client {
    runtime
        .block_on(Client::connect(ClientConfig::new(broker.address())))
        .expect("client connects")
}

/// The next delivery of `subscriber`, failing the test if none comes in time.
fn next(runtime: &tokio::runtime::Runtime, subscriber: &mut Subscriber) -> Delivery {
    runtime
        .block_on(async { tokio::time::timeout(EXPECTED_WITHIN, subscriber.next()).await })
        .expect("a delivery in time")
        .expect("subscription alive")
        .expect("not cancelled")
}

/// True if `subscriber` receives nothing within `window` (used only where the window is the
/// assertion: a delivery beyond the prefetch window would arrive at once).
fn nothing_within(
    runtime: &tokio::runtime::Runtime,
    subscriber: &mut Subscriber,
    window: Duration,
) -> bool {
    runtime
        .block_on(async { tokio::time::timeout(window, subscriber.next()).await })
        .is_err()
}

/// Polls `wharf queue list` until `queue` has `(ready, unacked, consumers)`, failing with
/// `why` after [`EXPECTED_WITHIN`].
fn wait_for_counts(broker: &BrokerProcess, queue: &str, counts: (u64, u64, u64), why: &str) {
    let deadline = Instant::now() + EXPECTED_WITHIN;
    while queue_counts(broker, queue) != counts {
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `wharf subscribe QUEUE --prefetch 1` whose standard output nobody reads: a thread fills
/// the pipe first, so the CLI blocks writing the first message it receives, before its
/// manual ack. Once released it ends by itself at the latest [`EXPECTED_WITHIN`] after its
/// last message, so a test cannot hang on it.
struct StalledSubscriber {
    child: Child,
    stdout: std::io::PipeReader,
    filling: Arc<AtomicBool>,
    filler: std::thread::JoinHandle<()>,
}

impl StalledSubscriber {
    fn start(broker: &BrokerProcess, queue: &str) -> StalledSubscriber {
        let (stdout, mut writer) = std::io::pipe().expect("pipe");
        let mut filler = writer.try_clone().expect("clone pipe");
        let filling = Arc::new(AtomicBool::new(true));
        let still_filling = Arc::clone(&filling);
        let filler = std::thread::spawn(move || {
            // Blocks as soon as the pipe is full; stops once released or the reader is gone.
            let chunk = vec![b'x'; 4096];
            while still_filling.load(Ordering::Relaxed) && filler.write_all(&chunk).is_ok() {}
        });
        let child = Command::new(wharf_path())
            .args([
                "--broker",
                &broker.address(),
                "subscribe",
                queue,
                "--prefetch",
                "1",
                "--timeout-ms",
                EXPECTED_WITHIN_MS,
            ])
            .stdin(Stdio::null())
            .stdout(writer.try_clone().expect("clone pipe"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting wharf subscribe");
        writer.flush().expect("flush");
        drop(writer);
        StalledSubscriber {
            child,
            stdout,
            filling,
            filler,
        }
    }

    /// SIGKILLs the CLI while it is blocked.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
        drop(self.stdout);
        self.filler.join().expect("filler ends");
    }

    /// Reads its standard output, so it goes on, until it exits: its exit status, what it
    /// printed after the filler's bytes, and its standard error.
    fn release(mut self) -> (std::process::ExitStatus, String, String) {
        self.filling.store(false, Ordering::Relaxed);
        let mut printed = Vec::new();
        self.stdout
            .read_to_end(&mut printed)
            .expect("reading the CLI's stdout");
        self.filler.join().expect("filler ends");
        let output = self.child.wait_with_output().expect("the CLI exits");
        let printed = String::from_utf8_lossy(&printed);
        (
            output.status,
            printed.trim_start_matches('x').to_string(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8(delivery.body.to_vec()).expect("utf-8 body")
}

#[test]
fn every_exchange_type_routes_through_the_cli() {
    let (_data, broker) = start_broker();
    for (exchange, kind) in [
        ("direct-x", "direct"),
        ("fanout-x", "fanout"),
        ("topic-x", "topic"),
        ("headers-x", "headers"),
    ] {
        let out = run(&broker, &["exchange", "declare", exchange, "--type", kind]);
        assert!(out.contains("declared exchange"), "{out}");
    }
    for queue in [
        "d1", "f1", "f2", "t-star", "t-hash", "h-all", "h-any", "plain",
    ] {
        run(&broker, &["queue", "declare", queue]);
    }
    run(
        &broker,
        &["queue", "bind", "d1", "direct-x", "--routing-key", "pay"],
    );
    run(&broker, &["queue", "bind", "f1", "fanout-x"]);
    run(
        &broker,
        &[
            "queue",
            "bind",
            "f2",
            "fanout-x",
            "--routing-key",
            "ignored",
        ],
    );
    run(
        &broker,
        &[
            "queue",
            "bind",
            "t-star",
            "topic-x",
            "--routing-key",
            "order.*",
        ],
    );
    run(
        &broker,
        &[
            "queue",
            "bind",
            "t-hash",
            "topic-x",
            "--routing-key",
            "order.#",
        ],
    );
    let all = [
        "--header",
        "format=pdf",
        "--header",
        "type=report",
        "--match",
        "all",
    ];
    run(
        &broker,
        &[&["queue", "bind", "h-all", "headers-x"][..], &all].concat(),
    );
    let any = [
        "--header",
        "format=pdf",
        "--header",
        "type=log",
        "--match",
        "any",
    ];
    run(
        &broker,
        &[&["queue", "bind", "h-any", "headers-x"][..], &any].concat(),
    );

    publish(&broker, "direct-x", "pay", &[], &["d-hit"]);
    // A message that matches no binding is not stored, so `publish` exits with 3.
    let routed_nowhere = |exchange: &str, key: &str, extra: &[&str], body: &str| {
        let args = [&["publish", exchange, key, "--confirm"][..], extra].concat();
        let (code, last) = publish_outcome(&broker, &args, &[body]);
        assert_eq!(code, Some(3), "{body}: {last}");
        assert!(last.contains("1 unrouted"), "{body}: {last}");
    };
    routed_nowhere("direct-x", "refund", &[], "d-miss");
    publish(&broker, "fanout-x", "anything", &[], &["f"]);
    publish(&broker, "topic-x", "order", &[], &["t0"]);
    publish(&broker, "topic-x", "order.created", &[], &["t1"]);
    publish(&broker, "topic-x", "order.created.eu", &[], &["t2"]);
    let pdf_report = ["--header", "format=pdf", "--header", "type=report"];
    publish(&broker, "headers-x", "", &pdf_report, &["h-both"]);
    publish(
        &broker,
        "headers-x",
        "",
        &["--header", "type=log"],
        &["h-log"],
    );
    routed_nowhere("headers-x", "", &["--header", "format=csv"], "h-none");
    publish(&broker, "", "plain", &[], &["default-exchange"]);

    assert_eq!(drain(&broker, "d1", 1), ["d-hit"]);
    assert_eq!(drain(&broker, "f1", 1), ["f"]);
    assert_eq!(drain(&broker, "f2", 1), ["f"]);
    // `*` is exactly one word; `#` is zero or more.
    assert_eq!(drain(&broker, "t-star", 1), ["t1"]);
    assert_eq!(drain(&broker, "t-hash", 3), ["t0", "t1", "t2"]);
    assert_eq!(drain(&broker, "h-all", 1), ["h-both"]);
    assert_eq!(drain(&broker, "h-any", 2), ["h-both", "h-log"]);
    assert_eq!(drain(&broker, "plain", 1), ["default-exchange"]);

    // Unbinding stops the routing; a mandatory message then fails the publish.
    run(
        &broker,
        &["queue", "unbind", "d1", "direct-x", "--routing-key", "pay"],
    );
    let refused = wharf(
        &broker.address(),
        &["publish", "direct-x", "pay", "--confirm", "--mandatory"],
        "lost\n",
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unroutable"), "{stderr}");
    let listing = run(&broker, &["exchange", "list"]);
    assert!(listing.starts_with("NAME"), "{listing}");
    assert!(
        listing.contains("topic-x") && listing.contains("(default)"),
        "{listing}"
    );
}

#[test]
fn rejected_and_expired_messages_are_dead_lettered_with_their_reason() {
    let (_data, broker) = start_broker();
    run(&broker, &["exchange", "declare", "dlx", "--type", "fanout"]);
    run(&broker, &["queue", "declare", "dead"]);
    run(&broker, &["queue", "bind", "dead", "dlx"]);
    run(
        &broker,
        &["queue", "declare", "work", "--dead-letter-exchange", "dlx"],
    );
    let ttl = ["--message-ttl-ms", "100", "--dead-letter-exchange", "dlx"];
    run(
        &broker,
        &[&["queue", "declare", "short"][..], &ttl].concat(),
    );

    publish(&broker, "", "work", &[], &["poison"]);
    let printed = run(
        &broker,
        &[
            "subscribe",
            "work",
            "--reject",
            "--max-messages",
            "1",
            "--timeout-ms",
            EXPECTED_WITHIN_MS,
        ],
    );
    assert_eq!(printed, "poison\n");
    let dead = run(
        &broker,
        &[
            "subscribe",
            "dead",
            "--format",
            "json",
            "--max-messages",
            "1",
            "--timeout-ms",
            EXPECTED_WITHIN_MS,
        ],
    );
    let message: Value = serde_json::from_str(dead.trim()).expect("one json line");
    assert_eq!(message["body"], "poison");
    assert_eq!(
        message["headers"]["x-death-reason"], "rejected",
        "{message}"
    );
    assert_eq!(message["headers"]["x-death-queue"], "work", "{message}");
    assert_eq!(message["redelivered"], false);

    // Nobody consumes `short`: its message expires and goes to the dead-letter exchange.
    publish(&broker, "", "short", &[], &["stale"]);
    let dead = run(
        &broker,
        &[
            "subscribe",
            "dead",
            "--format",
            "json",
            "--max-messages",
            "1",
            "--timeout-ms",
            EXPECTED_WITHIN_MS,
        ],
    );
    let message: Value = serde_json::from_str(dead.trim()).expect("one json line");
    assert_eq!(message["body"], "stale");
    assert_eq!(message["headers"]["x-death-reason"], "expired", "{message}");
    assert_eq!(queue_counts(&broker, "short").0, 0);
    assert_eq!(queue_counts(&broker, "dead"), (0, 0, 0));
}

#[test]
fn reject_publish_overflow_fails_publish_confirm() {
    let (_data, broker) = start_broker();
    let args = ["--max-length", "2", "--overflow", "reject-publish"];
    run(
        &broker,
        &[&["queue", "declare", "small"][..], &args].concat(),
    );
    publish(&broker, "", "small", &[], &["a", "b"]);
    let output = wharf(
        &broker.address(),
        &["publish", "", "small", "--confirm"],
        "c\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("message 1 not confirmed"), "{stderr}");
    assert!(stderr.contains("full"), "{stderr}");
    assert!(
        stderr.contains("0 confirmed") && stderr.contains("1 refused"),
        "{stderr}"
    );
    assert_eq!(queue_counts(&broker, "small"), (2, 0, 0));
    // FIXME(#5): publishes pipelined on one connection may be stored out of order (the broker
    // completes them concurrently), so only the set is asserted here.
    let mut kept = drain(&broker, "small", 2);
    kept.sort();
    assert_eq!(kept, ["a", "b"]);
    // Declaring it again with other arguments is a clear error.
    let output = wharf(&broker.address(), &["queue", "declare", "small"], "");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: precondition failed"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// Runs `wharf publish` with `args` and one message per line of `lines`: its exit code and
/// the last line of its standard error.
fn publish_outcome(broker: &BrokerProcess, args: &[&str], lines: &[&str]) -> (Option<i32>, String) {
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let output = wharf(&broker.address(), args, &input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_string();
    (output.status.code(), last)
}

#[test]
fn publish_exits_non_zero_unless_every_message_was_stored() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "jobs"]);
    // Refused by the broker (no such exchange), with or without --confirm.
    for confirm in [&[][..], &["--confirm"][..]] {
        let args = [&["publish", "nosuchx", "k"][..], confirm].concat();
        let (code, last) = publish_outcome(&broker, &args, &["hi"]);
        assert_eq!(code, Some(3), "{args:?}: {last}");
        assert!(
            last.starts_with("error: published 1 message in ")
                && last.ends_with(", 1 not stored: 0 confirmed, 0 unrouted (dropped), 1 refused"),
            "{args:?}: {last}"
        );
    }
    // Routed nowhere (a typo in the queue name): dropped, with or without --confirm.
    for confirm in [&[][..], &["--confirm"][..]] {
        let args = [&["publish", "", "jbos"][..], confirm].concat();
        let (code, last) = publish_outcome(&broker, &args, &["a", "b"]);
        assert_eq!(code, Some(3), "{args:?}: {last}");
        assert!(
            last.ends_with(", 2 not stored: 0 confirmed, 2 unrouted (dropped), 0 refused"),
            "{args:?}: {last}"
        );
    }
    // A mandatory message refused as unroutable fails too; --json keeps the counts on stdout.
    let output = wharf(
        &broker.address(),
        &["--json", "publish", "", "jbos", "--mandatory"],
        "x\n",
    );
    assert_eq!(output.status.code(), Some(3));
    let summary: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(
        (summary["messages"].as_u64(), summary["refused"].as_u64()),
        (Some(1), Some(1))
    );
    // Every message stored: exit 0 and the usual summary.
    let (code, last) = publish_outcome(&broker, &["publish", "", "jobs"], &["j1", "j2"]);
    assert_eq!(code, Some(0), "{last}");
    assert!(
        last.starts_with("published 2 messages in ")
            && last.ends_with(": 2 confirmed, 0 unrouted (dropped), 0 refused"),
        "{last}"
    );
    assert_eq!(queue_counts(&broker, "jobs"), (2, 0, 0));
}

#[test]
fn queue_list_shows_ready_and_unacked_counts() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "jobs", "--durable"]);
    publish(&broker, "", "jobs", &[], &["j1", "j2", "j3"]);
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let mut subscriber = runtime
        .block_on(Subscriber::subscribe(&client, "jobs", 1))
        .expect("subscribe");
    let held = next(&runtime, &mut subscriber);
    // Pipelined publishes may be stored in any order.
    assert!(["j1", "j2", "j3"].contains(&text(&held).as_str()));
    assert_eq!(queue_counts(&broker, "jobs"), (2, 1, 1));
    let table = run(&broker, &["queue", "list"]);
    let row = table
        .lines()
        .find(|line| line.starts_with("jobs"))
        .expect("a jobs row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    // READY, DELAYED (issue #13), UNACKED, CONSUMERS.
    assert_eq!(cells, ["jobs", "true", "2", "0", "1", "1"], "{table}");
    runtime.block_on(held.ack()).expect("ack");
    let again = runtime.block_on(held.ack()).expect_err("second ack");
    assert!(
        matches!(again, wharf_client::Error::UnknownDeliveryTag { .. }),
        "{again}"
    );
    runtime.block_on(subscriber.cancel()).expect("cancel");
    assert_eq!(queue_counts(&broker, "jobs"), (2, 0, 0));
    let purged = run(&broker, &["queue", "purge", "jobs"]);
    assert_eq!(purged, "purged 2 messages from queue \"jobs\"\n");
    run(&broker, &["queue", "delete", "jobs"]);
    let output = wharf(&broker.address(), &["queue", "purge", "jobs"], "");
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: unknown queue \"jobs\"\n"
    );
}

#[test]
fn subscriber_prefetch_bound_matches_the_broker() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "bounds"]);
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    for prefetch in [0, wharf_client::PREFETCH_MAX + 1] {
        let refused = runtime
            .block_on(Subscriber::subscribe(&client, "bounds", prefetch))
            .err()
            .unwrap_or_else(|| panic!("prefetch {prefetch} accepted"));
        assert!(
            matches!(refused, wharf_client::Error::InvalidState { .. }),
            "{refused}"
        );
    }
    // The largest window the client accepts is one the broker keeps as asked.
    assert_eq!(wharf_client::PREFETCH_MAX, 65_535);
    publish(&broker, "", "bounds", &[], &["m"]);
    let mut subscriber = runtime
        .block_on(Subscriber::subscribe(
            &client,
            "bounds",
            wharf_client::PREFETCH_MAX,
        ))
        .expect("subscribe at the bound");
    assert_eq!(text(&next(&runtime, &mut subscriber)), "m");
}

#[test]
fn auto_delete_queue_goes_with_its_last_consumer() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "brief", "--auto-delete"]);
    run(&broker, &["queue", "declare", "kept"]);
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let mut first = runtime
        .block_on(Subscriber::subscribe(&client, "brief", 10))
        .expect("subscribe");
    let mut second = runtime
        .block_on(Subscriber::subscribe(&client, "brief", 10))
        .expect("subscribe");
    let mut kept = runtime
        .block_on(Subscriber::subscribe(&client, "kept", 10))
        .expect("subscribe");
    assert_eq!(queue_counts(&broker, "brief"), (0, 0, 2));
    runtime.block_on(first.cancel()).expect("cancel");
    // One consumer is left: the queue stays.
    assert_eq!(queue_counts(&broker, "brief"), (0, 0, 1));
    runtime.block_on(second.cancel()).expect("cancel");
    runtime.block_on(kept.cancel()).expect("cancel");
    let table = run(&broker, &["queue", "list"]);
    assert!(
        !table.lines().any(|line| line.starts_with("brief")),
        "{table}"
    );
    // A queue declared without the flag outlives its consumers.
    assert_eq!(queue_counts(&broker, "kept"), (0, 0, 0));
}

#[test]
fn ack_timeout_cancels_the_subscriber_with_a_clear_error() {
    let (_data, broker) = start_broker();
    run(
        &broker,
        &["queue", "declare", "slow", "--ack-timeout-ms", "300"],
    );
    publish(&broker, "", "slow", &[], &["m1"]);
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let mut stuck = runtime
        .block_on(Subscriber::subscribe(&client, "slow", 1))
        .expect("subscribe");
    let held = next(&runtime, &mut stuck);
    assert_eq!(text(&held), "m1");
    // Not acked: the broker cancels the consumer and says why.
    let ended = runtime
        .block_on(async { tokio::time::timeout(EXPECTED_WITHIN, stuck.next()).await })
        .expect("the cancel arrives in time");
    match ended {
        Err(wharf_client::Error::ConsumerCancelled {
            queue,
            code,
            message,
        }) => {
            assert_eq!(queue, "slow");
            assert_eq!(code, wharf_protocol::ErrorCode::AckTimeout);
            assert!(message.contains("ack timeout"), "{message}");
        }
        other => panic!("expected ConsumerCancelled, got {other:?}"),
    }
    // The late ack is refused; the message went back and comes again, flagged.
    assert!(matches!(
        runtime.block_on(held.ack()),
        Err(wharf_client::Error::UnknownDeliveryTag { .. })
    ));
    let mut next_subscriber = runtime
        .block_on(Subscriber::subscribe(&client, "slow", 1))
        .expect("subscribe");
    let again = next(&runtime, &mut next_subscriber);
    assert_eq!(text(&again), "m1");
    assert!(again.redelivered);
    runtime.block_on(again.ack()).expect("ack");
    assert_eq!(queue_counts(&broker, "slow"), (0, 0, 1));
}

#[test]
fn deleting_a_queue_cancels_its_subscriber() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "doomed"]);
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let mut subscriber = runtime
        .block_on(Subscriber::subscribe(&client, "doomed", 10))
        .expect("subscribe");
    run(&broker, &["queue", "delete", "doomed"]);
    let ended = runtime
        .block_on(async { tokio::time::timeout(EXPECTED_WITHIN, subscriber.next()).await })
        .expect("the cancel arrives in time");
    assert!(
        matches!(
            &ended,
            Err(wharf_client::Error::ConsumerCancelled { code, .. })
                if *code == wharf_protocol::ErrorCode::UnknownQueue
        ),
        "{ended:?}"
    );
}

#[test]
fn exclusive_subscriber_owns_its_queue_until_it_goes() {
    let (_data, broker) = start_broker();
    run(
        &broker,
        &["exchange", "declare", "events", "--type", "fanout"],
    );
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let mut mine = runtime
        .block_on(Subscriber::subscribe_exclusive(
            &client,
            "mine",
            &wharf_client::QueueArgs::default(),
            10,
        ))
        .expect("declare and subscribe");
    run(
        &broker,
        &["queue", "bind", "mine", "events", "--routing-key", ""],
    );
    publish(&broker, "events", "any", &[], &["hello"]);
    assert_eq!(text(&next(&runtime, &mut mine)), "hello");
    // Nobody else may consume from it or declare it.
    assert!(matches!(
        runtime.block_on(Subscriber::subscribe(&client, "mine", 10)),
        Err(wharf_client::Error::PreconditionFailed { .. })
    ));
    assert!(matches!(
        runtime.block_on(Subscriber::subscribe_exclusive(
            &client,
            "mine",
            &wharf_client::QueueArgs::default(),
            10,
        )),
        Err(wharf_client::Error::PreconditionFailed { .. })
    ));
    // Its connection closing takes the queue with it.
    drop(mine);
    let deadline = std::time::Instant::now() + EXPECTED_WITHIN;
    loop {
        let table = run(&broker, &["queue", "list"]);
        if !table.lines().any(|line| line.starts_with("mine")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{table}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_subscribers_receive_round_robin() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "rr"]);
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let mut first = runtime
        .block_on(Subscriber::subscribe(&client, "rr", 10))
        .expect("subscribe");
    let mut second = runtime
        .block_on(Subscriber::subscribe(&client, "rr", 10))
        .expect("subscribe");
    // One command per message: the broker does not promise the order of publishes pipelined
    // on one connection, and this test asserts the order of delivery.
    for body in ["m0", "m1", "m2", "m3"] {
        publish(&broker, "", "rr", &[], &[body]);
    }
    // With room for all four at either consumer, each gets two: they alternate.
    let mut bodies = Vec::new();
    for subscriber in [&mut first, &mut second] {
        let one = next(&runtime, subscriber);
        let two = next(&runtime, subscriber);
        assert!(two.tag > one.tag);
        bodies.push(vec![text(&one), text(&two)]);
        runtime.block_on(two.ack_multiple()).expect("ack both");
    }
    let mut all: Vec<String> = bodies.concat();
    all.sort();
    assert_eq!(all, ["m0", "m1", "m2", "m3"]);
    assert!(
        bodies[0] == ["m0", "m2"] || bodies[0] == ["m1", "m3"],
        "not alternating: {bodies:?}"
    );
    assert_eq!(queue_counts(&broker, "rr"), (0, 0, 2));
}

/// Goal: a CLI subscriber killed with a delivery unacknowledged causes its redelivery, flagged,
/// to another subscriber. Method: a [`StalledSubscriber`] blocks writing the message it
/// received (manual ack comes after printing); once the broker counts it unacked, the CLI is
/// SIGKILLed.
#[test]
fn killed_subscriber_causes_redelivery_to_another() {
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "tasks"]);
    publish(&broker, "", "tasks", &[], &["only"]);
    let stalled = StalledSubscriber::start(&broker, "tasks");
    wait_for_counts(
        &broker,
        "tasks",
        (0, 1, 1),
        "the CLI never took the message",
    );
    stalled.kill();

    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let mut other = runtime
        .block_on(Subscriber::subscribe(&client, "tasks", 1))
        .expect("subscribe");
    let delivery = next(&runtime, &mut other);
    assert_eq!(text(&delivery), "only");
    assert!(delivery.redelivered, "redelivered flag set");
    runtime.block_on(delivery.ack()).expect("ack");
    assert_eq!(queue_counts(&broker, "tasks"), (0, 0, 1));
}

/// Goal: a CLI subscriber too slow for the queue's ack timeout says that the broker cancelled
/// it for an ack timeout and how to give it more time, and exits non-zero (it used to report
/// its late ack's "unknown or already settled delivery tag" and exit 0). Method: a
/// [`StalledSubscriber`] holds the message past a 300 ms ack timeout; once the broker has put
/// the message back, its stdout is read, so it prints, acks late and ends.
#[test]
fn subscriber_cancelled_for_an_ack_timeout_says_so_and_exits_non_zero() {
    let (_data, broker) = start_broker();
    run(
        &broker,
        &["queue", "declare", "slow", "--ack-timeout-ms", "300"],
    );
    publish(&broker, "", "slow", &[], &["m1"]);
    let stalled = StalledSubscriber::start(&broker, "slow");
    wait_for_counts(&broker, "slow", (0, 1, 1), "the CLI never took the message");
    wait_for_counts(
        &broker,
        "slow",
        (1, 0, 0),
        "the ack timeout never cancelled the CLI",
    );
    let (status, stdout, stderr) = stalled.release();
    assert!(stdout.ends_with("m1\n"), "printed before the late ack");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "error: the broker cancelled the subscription to queue \"slow\" for an ack timeout"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("--ack-timeout-ms"), "{stderr}");
    assert!(!stderr.contains("delivery tag"), "{stderr}");
    // The message went back to the queue and comes again.
    assert_eq!(drain(&broker, "slow", 1), ["m1"]);
}

#[test]
fn prefetch_window_is_never_exceeded() {
    const PREFETCH: usize = 3;
    const MESSAGES: usize = 12;
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "window"]);
    let lines: Vec<String> = (0..MESSAGES).map(|index| format!("w{index}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    publish(&broker, "", "window", &[], &lines);
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let admin = Admin::new(&client);
    let mut subscriber = runtime
        .block_on(Subscriber::subscribe(&client, "window", PREFETCH as u32))
        .expect("subscribe");
    let mut held: std::collections::VecDeque<Delivery> = std::collections::VecDeque::new();
    let mut received = Vec::new();
    while received.len() < MESSAGES {
        if held.len() == PREFETCH {
            // The window is full: the broker must not push more until one is acked.
            assert!(nothing_within(
                &runtime,
                &mut subscriber,
                Duration::from_millis(100)
            ));
            let queues = runtime.block_on(admin.list_queues()).expect("list");
            let window = queues
                .iter()
                .find(|queue| queue.name == "window")
                .expect("listed");
            assert_eq!(window.unacked, PREFETCH as u64);
            let oldest = held.pop_front().expect("held");
            runtime.block_on(oldest.ack()).expect("ack");
        }
        let delivery = next(&runtime, &mut subscriber);
        received.push(text(&delivery));
        held.push_back(delivery);
        assert!(held.len() <= PREFETCH);
    }
    // Pipelined publishes may be stored in any order; each arrives once.
    received.sort();
    let mut expected = lines.clone();
    expected.sort();
    assert_eq!(received, expected);
    let last = held.back().expect("held");
    runtime.block_on(last.ack_multiple()).expect("ack the rest");
    assert_eq!(queue_counts(&broker, "window"), (0, 0, 1));
}

#[test]
fn delayed_message_is_delivered_when_due() {
    const DELAY: Duration = Duration::from_millis(500);
    let (_data, broker) = start_broker();
    run(&broker, &["queue", "declare", "later"]);
    let runtime = runtime();
    let client = connect(&runtime, &broker);
    let mut subscriber = runtime
        .block_on(Subscriber::subscribe(&client, "later", 10))
        .expect("subscribe");
    let published_at = Instant::now();
    publish(&broker, "", "later", &["--delay-ms", "500"], &["tick"]);
    let confirmed_at = Instant::now();
    let delivery = next(&runtime, &mut subscriber);
    let received_at = Instant::now();
    assert_eq!(text(&delivery), "tick");
    // Due no earlier than 500 ms after the publish started; delivered soon after it is due
    // (the slack covers the CLI's own start-up and a loaded test machine).
    assert!(
        received_at - published_at >= DELAY,
        "early: {:?}",
        received_at - published_at
    );
    assert!(
        received_at - confirmed_at <= DELAY + Duration::from_millis(400),
        "late: {:?} after the confirm",
        received_at - confirmed_at
    );
    runtime.block_on(delivery.ack()).expect("ack");
}

#[test]
fn publishing_many_lines_does_not_stall() {
    // Regression: the CLI kept more confirms outstanding than the connection's in-flight
    // limit, so `wharf publish` hung after 64 lines.
    let data = tempfile::tempdir().expect("temp dir");
    let broker = integration_tests::BrokerProcess::start(&data.path().join("data"));
    let address = broker.address();
    integration_tests::wharf_ok(&address, &["queue", "declare", "many", "--durable"], "");
    let input: String = (0..500).map(|index| format!("line-{index}\n")).collect();
    integration_tests::wharf_ok(&address, &["publish", "", "many", "--confirm"], &input);
    let listed = integration_tests::wharf_ok(&address, &["--json", "queue", "list"], "");
    assert!(listed.contains("500"), "{listed}");
}
