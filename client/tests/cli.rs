//! The `wharf` binary against the client's fake in-process broker: the command-line
//! contract (flags, output formats, one-line errors, exit codes) without the real server.
//! The real end-to-end tests against `wharfd` live in the workspace's `tests/` package.

use std::io::Write;
use std::process::{Command, Output, Stdio};

#[allow(dead_code)]
#[path = "../src/fake_broker.rs"]
mod fake_broker;

use fake_broker::FakeBroker;

/// Runs `wharf --broker <broker> args...` with `stdin`, off the runtime's threads.
async fn wharf(broker: &str, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wharf"));
    command
        .arg("--broker")
        .arg(broker)
        .args(args)
        .env_remove("WHARF_BROKER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("wharf starts");
        let mut input = child.stdin.take().expect("piped stdin");
        input
            .write_all(stdin.as_bytes())
            .expect("stdin accepts input");
        drop(input);
        child.wait_with_output().expect("wharf runs")
    })
    .await
    .expect("the blocking task completes")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_commands_print_tables_and_json() {
    let broker = FakeBroker::start().await;
    let address = broker.bootstrap();
    let created = wharf(
        &address,
        &["topic", "create", "orders", "--partitions", "3"],
        "",
    )
    .await;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).starts_with("created topic \"orders\" with 3 partitions"));

    let listed = wharf(&address, &["topic", "list"], "").await;
    let text = stdout(&listed);
    assert!(
        text.starts_with("NAME    PARTITIONS  TOPIC-ID\norders  3"),
        "{text}"
    );

    let listed = wharf(&address, &["--json", "topic", "list"], "").await;
    let document: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(document[0]["name"], "orders");
    assert_eq!(document[0]["partitions"], 3);

    let described = wharf(&address, &["--json", "topic", "describe", "orders"], "").await;
    let document: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(document["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(document["configs"][0]["key"], "flush");
    assert_eq!(document["configs"][0]["source"], "default");

    let deleted = wharf(&address, &["topic", "delete", "orders"], "").await;
    assert!(deleted.status.success());
    let missing = wharf(&address, &["topic", "describe", "orders"], "").await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stderr(&missing), "error: unknown topic \"orders\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_consume_round_trip() {
    let broker = FakeBroker::start().await;
    let address = broker.bootstrap();
    broker.create_topic("t", 1);
    let produced = wharf(
        &address,
        &["produce", "t", "--key-separator", ":"],
        "k1:hello\nk2:world\nno-key\n",
    )
    .await;
    assert!(produced.status.success(), "{}", stderr(&produced));
    let summary = stderr(&produced);
    assert!(summary.starts_with("produced 3 records in "), "{summary}");
    assert!(
        summary.contains("msgs/s") && summary.contains("MB/s"),
        "{summary}"
    );

    let consumed = wharf(
        &address,
        &["consume", "t", "--from", "earliest", "--max-messages", "3"],
        "",
    )
    .await;
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    assert_eq!(stdout(&consumed), "hello\nworld\nno-key\n");

    let consumed = wharf(
        &address,
        &[
            "consume",
            "t",
            "--from",
            "1",
            "--max-messages",
            "1",
            "--format",
            "json",
        ],
        "",
    )
    .await;
    let record: serde_json::Value = serde_json::from_slice(&consumed.stdout).unwrap();
    assert_eq!(record["offset"], 1);
    assert_eq!(record["key"], "k2");
    assert_eq!(record["value"], "world");
    assert_eq!(record["topic"], "t");
    assert!(record["timestamp"].as_i64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_consume_commits_exactly_what_it_printed() {
    let broker = FakeBroker::start().await;
    let address = broker.bootstrap();
    broker.create_topic("t", 1);
    let lines: String = (0..10).map(|index| format!("m{index}\n")).collect();
    let produced = wharf(&address, &["produce", "t"], &lines).await;
    assert!(produced.status.success(), "{}", stderr(&produced));

    let args = [
        "consume",
        "t",
        "--group",
        "g",
        "--from",
        "earliest",
        "--max-messages",
        "4",
    ];
    let first = wharf(&address, &args, "").await;
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(stdout(&first), "m0\nm1\nm2\nm3\n");
    assert_eq!(broker.committed("g", "t", 0), Some(4));

    let rest = wharf(
        &address,
        &["consume", "t", "--group", "g", "--timeout-ms", "300"],
        "",
    )
    .await;
    assert!(rest.status.success(), "{}", stderr(&rest));
    assert_eq!(stdout(&rest).lines().count(), 6);
    assert_eq!(broker.committed("g", "t", 0), Some(10));

    let described = wharf(&address, &["group", "describe", "g"], "").await;
    let text = stdout(&described);
    assert!(
        text.starts_with("TOPIC  PARTITION  COMMITTED-OFFSET  END-OFFSET  LAG"),
        "{text}"
    );
    assert!(
        text.contains("\nt      0          10                10          0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_of_unknown_topic_is_one_line_error() {
    let broker = FakeBroker::start().await;
    let output = wharf(
        &broker.bootstrap(),
        &["consume", "nope", "--timeout-ms", "10"],
        "",
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "error: unknown topic \"nope\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_one_line_error() {
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let output = wharf(&address, &["topic", "list"], "").await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        format!("error: cannot connect to broker {address}: connection refused\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flag_is_a_usage_error() {
    let output = wharf("127.0.0.1:1", &["consume", "t", "--from", "yesterday"], "").await;
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_group_consume_commits_what_it_printed() {
    // Goal: Ctrl-C (SIGINT) ends `consume` cleanly and commits the printed records.
    // Method: read the five printed lines, send SIGINT with kill(1), check exit and commit.
    let broker = FakeBroker::start().await;
    let address = broker.bootstrap();
    broker.create_topic("t", 1);
    let lines: String = (0..5).map(|index| format!("m{index}\n")).collect();
    assert!(wharf(&address, &["produce", "t"], &lines)
        .await
        .status
        .success());
    let mut command = Command::new(env!("CARGO_BIN_EXE_wharf"));
    command
        .args([
            "--broker", &address, "consume", "t", "--group", "g", "--from", "earliest",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut child = command.spawn().expect("wharf starts");
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut printed = Vec::new();
        for _ in 0..5 {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a printed line");
            printed.push(line);
        }
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        (printed, child.wait_with_output().expect("wharf exits"))
    })
    .await
    .expect("the blocking task completes");
    let (printed, output) = output;
    assert_eq!(printed.concat(), lines);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(broker.committed("g", "t", 0), Some(5));
}
