//! The `wharf` command line keeps the data and speaks one language (issue #13, "CLI fidelity
//! and consistency"): kcat-style `--format` templates, `--encoding text|base64|hex` on
//! produce and consume so any payload round-trips, one naming scheme and JSON errors under
//! `--json`, config errors named by the key the user wrote, and auto-created topics
//! reported. Each test runs the real `wharf` against the real `wharfd`.

use integration_tests::{wharf, BrokerProcess};

fn start() -> (tempfile::TempDir, BrokerProcess) {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));
    (data, broker)
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
