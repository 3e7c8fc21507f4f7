//! What an idle broker costs on disk (issue #13: an empty partition took 20 MiB and a durable
//! queue 41 MB, because index files were allocated at their maximum when created).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use integration_tests::{wharf_ok, BrokerProcess};

/// Most bytes of allocated disk an empty partition or queue may cost on average, index
/// files, checkpoints and its directory included.
const EMPTY_PARTITION_BYTES_MAX: u64 = 64 * 1024;

/// Bytes allocated on disk (not the apparent length) for everything under `dir`.
fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read data dir").flatten() {
        let metadata = entry.metadata().expect("metadata");
        total += metadata.blocks() * 512;
        if metadata.is_dir() {
            total += allocated_bytes(&entry.path());
        }
    }
    total
}

#[test]
fn empty_partitions_and_queues_cost_kilobytes_not_megabytes() {
    // Goal: 50 empty partitions and a durable queue fit in a few MiB (they took about
    // 1 GB before). Method: create them through the CLI on a real broker, then add up the
    // blocks allocated under the data directory.
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let broker = BrokerProcess::start(&data);
    let address = broker.address();
    wharf_ok(
        &address,
        &["topic", "create", "wide", "--partitions", "50"],
        "",
    );
    wharf_ok(&address, &["queue", "declare", "jobs", "--durable"], "");
    let partitions_and_queues = 50 + 2 + 1; // the topic, the two internal topics, the queue
    let used = allocated_bytes(&data);
    assert!(
        used <= partitions_and_queues * EMPTY_PARTITION_BYTES_MAX,
        "{used} bytes allocated for {partitions_and_queues} empty partitions and queues"
    );
}
