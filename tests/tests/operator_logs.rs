//! What an operator reads in `wharfd`'s log (issue #13): connections opened and closed at
//! DEBUG, how long opening storage took, and a recovery after an unclean shutdown at INFO
//! with what it scanned and how long it took; nothing about recovery after a clean stop.

use std::path::Path;

use integration_tests::{wharf_ok, BrokerProcess};

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path:?}: {error}"))
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(needle)).collect()
}

#[test]
fn the_log_tells_connections_storage_opening_and_recovery() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let filter = "info,wharf_broker::net=debug";
    let first_log = temp.path().join("first.log");
    let mut broker = BrokerProcess::start_logging(&data, &first_log, filter);
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "events", "--partitions", "1"],
        "",
    );
    let input: String = (0..100).map(|index| format!("event-{index}\n")).collect();
    wharf_ok(&address, &["produce", "events"], &input);
    broker.kill();
    let first = read_log(&first_log);
    assert!(
        !lines_with(&first, "connection opened").is_empty()
            && !lines_with(&first, "connection closed").is_empty(),
        "connections are logged at DEBUG:\n{first}"
    );
    assert!(
        lines_with(&first, "storage opened")
            .iter()
            .any(|line| line.contains("elapsed_ms")),
        "opening storage says how long it took:\n{first}"
    );

    let second_log = temp.path().join("second.log");
    let mut broker = BrokerProcess::start_logging(&data, &second_log, filter);
    broker.stop();
    let second = read_log(&second_log);
    let recovered = lines_with(&second, "recovered after an unclean shutdown");
    assert!(
        recovered.iter().any(|line| line.contains("events-0")
            && line.contains("scanned_bytes")
            && line.contains("log_end=100")
            && line.contains("elapsed_ms")),
        "the recovery of events-0 is logged at INFO with what it scanned:\n{second}"
    );

    let third_log = temp.path().join("third.log");
    let mut broker = BrokerProcess::start_logging(&data, &third_log, filter);
    broker.stop();
    let third = read_log(&third_log);
    assert!(
        lines_with(&third, "recovered after an unclean shutdown").is_empty(),
        "a clean stop needs no recovery:\n{third}"
    );
}
