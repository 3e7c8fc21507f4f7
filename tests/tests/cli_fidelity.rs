//! The `wharf` command line keeps the data and speaks one language (issue #13, "CLI fidelity
//! and consistency"): kcat-style `--format` templates, `--encoding text|base64|hex` on
//! produce and consume so any payload round-trips, one naming scheme and JSON errors under
//! `--json`, config errors named by the key the user wrote, and auto-created topics
//! reported. Each test runs the real `wharf` against the real `wharfd`.

use std::process::Output;

use integration_tests::{wharf, wharf_ok, BrokerProcess};

fn start() -> (tempfile::TempDir, BrokerProcess) {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    (data, broker)
}

/// Runs `wharf --broker ADDR args...` with raw bytes on stdin and requires success.
fn wharf_bytes(broker: &str, args: &[&str], stdin: &[u8]) -> Output {
    let output = integration_tests::wharf_bytes(broker, args, stdin);
    assert!(
        output.status.success(),
        "wharf {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn a_bad_topic_config_is_named_by_the_key_the_user_wrote() {
    let (_data, broker) = start();
    let output = wharf(
        &broker.address(),
        &[
            "topic",
            "create",
            "small",
            "--partitions",
            "1",
            "--config",
            "segment.bytes=1000",
        ],
        "",
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("segment.bytes=1000"), "{stderr}");
    assert!(!stderr.contains("segment_bytes_max"), "{stderr}");
}

fn create_topic(address: &str, topic: &str) {
    wharf_ok(
        address,
        &["topic", "create", topic, "--partitions", "1"],
        "",
    );
}

/// `wharf consume TOPIC --from earliest` with `extra` flags, stopping after `count` records.
fn consume(address: &str, topic: &str, count: usize, extra: &[&str]) -> Vec<u8> {
    let count = count.to_string();
    let mut args = vec![
        "consume",
        topic,
        "--from",
        "earliest",
        "--max-messages",
        &count,
        "--timeout-ms",
        "5000",
    ];
    args.extend_from_slice(extra);
    wharf_bytes(address, &args, b"").stdout
}

#[test]
fn a_format_template_prints_every_kcat_field() {
    let (_data, broker) = start();
    let address = broker.address();
    create_topic(&address, "fmt");
    wharf_ok(
        &address,
        &[
            "produce",
            "fmt",
            "--key-separator",
            ":",
            "--header",
            "trace=abc",
            "--timestamp-ms",
            "1700000000000",
        ],
        "k1:v1\nk2:value-2\n",
    );
    // The template is passed as the shell would: backslash escapes are the CLI's to expand.
    let output = consume(
        &address,
        "fmt",
        2,
        &["--format", "%t|%p|%o|%k|%s|%T|%h|%K|%S\\t%%\\n"],
    );
    assert_eq!(
        String::from_utf8_lossy(&output),
        "fmt|0|0|k1|v1|1700000000000|trace=abc|2|2\t%\n\
         fmt|0|1|k2|value-2|1700000000000|trace=abc|2|7\t%\n"
    );
    let misspelt = wharf(&address, &["consume", "fmt", "--format", "%x"], "");
    assert_eq!(misspelt.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&misspelt.stderr);
    assert!(stderr.contains("unknown format directive %x"), "{stderr}");
}

/// Keys and values that text lines cannot carry, with their base64 and hex spellings:
/// invalid UTF-8, a trailing carriage return, a newline, an empty value, a NUL key.
const PAYLOADS: [(&str, &str, &str, &str); 4] = [
    // (key base64, value base64, key hex, value hex)
    ("aw==", "//4=", "6b", "fffe"),
    ("aw==", "ZW5kcw0=", "6b", "656e64730d"),
    ("AA==", "YQpi", "00", "610a62"),
    ("AA==", "", "00", ""),
];

fn payload_lines(pick: impl Fn(&(&str, &str, &str, &str)) -> (String, String)) -> String {
    PAYLOADS
        .iter()
        .map(|payload| {
            let (key, value) = pick(payload);
            format!("{key}:{value}\n")
        })
        .collect()
}

#[test]
fn any_payload_round_trips_through_base64_and_hex() {
    let (_data, broker) = start();
    let address = broker.address();
    create_topic(&address, "bin");
    let base64_lines = payload_lines(|(key, value, _, _)| (key.to_string(), value.to_string()));
    let hex_lines = payload_lines(|(_, _, key, value)| (key.to_string(), value.to_string()));
    let keyed = ["--key-separator", ":"];
    wharf_bytes(
        &address,
        &["produce", "bin", "--encoding", "base64", keyed[0], keyed[1]],
        base64_lines.as_bytes(),
    );
    // Written as base64, read back as hex and as base64: the same bytes.
    let as_hex = consume(
        &address,
        "bin",
        4,
        &["--encoding", "hex", "--format", "%k:%s\\n"],
    );
    assert_eq!(String::from_utf8_lossy(&as_hex), hex_lines);
    let as_base64 = consume(
        &address,
        "bin",
        4,
        &["--encoding", "base64", "--format", "%k:%s\\n"],
    );
    assert_eq!(String::from_utf8_lossy(&as_base64), base64_lines);
    // JSON carries the encoded strings too.
    let json = consume(
        &address,
        "bin",
        1,
        &["--encoding", "base64", "--format", "json"],
    );
    let record: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(
        (&record["key"], &record["value"]),
        (&"aw==".into(), &"//4=".into())
    );
    // What consume printed in base64 is produce's input in base64: a copy, byte for byte.
    create_topic(&address, "copy");
    wharf_bytes(
        &address,
        &[
            "produce",
            "copy",
            "--encoding",
            "base64",
            keyed[0],
            keyed[1],
        ],
        &as_base64,
    );
    let copied = consume(
        &address,
        "copy",
        4,
        &["--encoding", "hex", "--format", "%k:%s\\n"],
    );
    assert_eq!(String::from_utf8_lossy(&copied), hex_lines);
    // Hex input works the same way, and a line that does not decode is named.
    wharf_bytes(
        &address,
        &["produce", "copy", "--encoding", "hex", keyed[0], keyed[1]],
        hex_lines.as_bytes(),
    );
    let again = consume(
        &address,
        "copy",
        8,
        &["--encoding", "hex", "--format", "%k:%s\\n"],
    );
    assert_eq!(String::from_utf8_lossy(&again), hex_lines.repeat(2));
    let bad = wharf(
        &address,
        &["produce", "copy", "--encoding", "hex"],
        "00\nzz\n",
    );
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("line 2 of standard input: value is not valid hex"),
        "{stderr}"
    );
}

#[test]
fn text_keeps_a_trailing_carriage_return_and_invalid_utf8() {
    let (_data, broker) = start();
    let address = broker.address();
    create_topic(&address, "raw");
    wharf_bytes(&address, &["produce", "raw"], b"crlf\r\n\xff\xfe\n");
    let output = consume(&address, "raw", 2, &[]);
    assert_eq!(
        output.escape_ascii().to_string(),
        b"crlf\r\n\xff\xfe\n".escape_ascii().to_string()
    );
}

#[test]
fn a_topic_auto_created_by_produce_is_reported_on_stderr() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker =
        BrokerProcess::start_with_config(&data.path().join("data"), "default_partitions = 3\n");
    let address = broker.address();
    let first = wharf(&address, &["produce", "fresh"], "a\nb\n");
    assert!(first.status.success());
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stderr.starts_with("created topic \"fresh\" with 3 partitions (auto-create)\n"),
        "{stderr}"
    );
    assert!(stderr.contains("produced 2 records"), "{stderr}");
    // The topic exists now: nothing to report.
    let second = wharf(&address, &["produce", "fresh"], "c\n");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!stderr.contains("created topic"), "{stderr}");
    // A topic created beforehand is not reported either.
    create_topic(&address, "made");
    let made = wharf(&address, &["--json", "produce", "made"], "d\n");
    assert!(
        made.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// The last line of stderr as JSON: `--json` errors are one object there.
fn json_error(output: &Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| panic!("not a JSON error: {stderr}"))
}

#[test]
fn json_summaries_share_field_names_and_errors_are_json_with_the_same_exit_codes() {
    let (_data, broker) = start();
    let address = broker.address();
    create_topic(&address, "named");
    let summary_fields = |stdout: &str| -> Vec<String> {
        let document: serde_json::Value = serde_json::from_str(stdout).expect("JSON");
        let object = document.as_object().expect("an object");
        object.keys().cloned().collect()
    };
    let produced = wharf_ok(&address, &["--json", "produce", "named"], "a\nb\n");
    let fields = summary_fields(&produced);
    for field in ["messages", "bytes", "seconds", "messages_per_second"] {
        assert!(fields.contains(&field.to_string()), "{field}: {produced}");
    }
    let perf = wharf_ok(
        &address,
        &[
            "--json",
            "perf",
            "produce",
            "--topic",
            "named",
            "--messages",
            "10",
        ],
        "",
    );
    let fields = summary_fields(&perf);
    for field in ["messages", "bytes", "seconds", "messages_per_second"] {
        assert!(fields.contains(&field.to_string()), "{field}: {perf}");
    }
    // publish says `refused` in JSON as in its text summary, and exits 3 either way.
    wharf_ok(&address, &["queue", "declare", "q"], "");
    let published = wharf(
        &address,
        &["--json", "publish", "", "nosuchqueue", "--mandatory"],
        "x\n",
    );
    assert_eq!(published.status.code(), Some(3));
    let counts: serde_json::Value = serde_json::from_slice(&published.stdout).expect("JSON");
    assert_eq!(
        (&counts["messages"], &counts["refused"]),
        (&1.into(), &1.into())
    );
    let error = json_error(&published);
    assert_eq!(error["kind"], "not_stored", "{error}");
    assert!(
        error["error"]
            .as_str()
            .expect("message")
            .contains("1 refused"),
        "{error}"
    );

    // A broker's refusal: exit 1, the message, a kind and the wire code.
    let exists = wharf(
        &address,
        &["--json", "topic", "create", "named", "--partitions", "1"],
        "",
    );
    assert_eq!(exists.status.code(), Some(1));
    assert!(exists.stdout.is_empty(), "stdout carries only data");
    let error = json_error(&exists);
    assert!(
        error["error"].as_str().expect("message").contains("exists"),
        "{error}"
    );
    assert_eq!(error["kind"], "server", "{error}");
    assert_eq!(error["code"], "topic_already_exists", "{error}");
    let missing = wharf(&address, &["--json", "consume", "missing"], "");
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(json_error(&missing)["kind"], "unknown_topic");
    let down = wharf("127.0.0.1:1", &["--json", "topic", "list"], "");
    assert_eq!(down.status.code(), Some(1));
    assert_eq!(json_error(&down)["kind"], "connect");
    // A usage error keeps clap's exit code 2.
    let usage = wharf(
        &address,
        &["--json", "topic", "create", "x", "--partitons", "2"],
        "",
    );
    assert_eq!(usage.status.code(), Some(2));
    let error = json_error(&usage);
    assert_eq!(error["kind"], "usage", "{error}");
    assert!(
        error["error"]
            .as_str()
            .expect("message")
            .contains("--partitons"),
        "{error}"
    );
    // Without --json, errors stay one line of text.
    let text = wharf(&address, &["consume", "missing"], "");
    assert!(String::from_utf8_lossy(&text.stderr).starts_with("error: unknown topic"));
}
