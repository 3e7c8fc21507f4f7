//! Arbitrary bytes as the log file of an active segment after an unclean shutdown, through
//! the recovery scan `Segment::recover` on the in-memory `SimFs`. Property: no input panics,
//! and recovery keeps a prefix of the file and truncates exactly the rest.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wharf_broker::storage::fs::{Fs, OpenMode};
use wharf_broker::storage::segment::{file_name, KnownEpochs, Segment};
use wharf_broker::storage::sim::SimFs;
use wharf_broker::storage::LogConfig;

fuzz_target!(|data: &[u8]| {
    let fs = SimFs::new();
    let dir = Path::new("/p");
    fs.create_dir_all(dir).expect("sim fs");
    let log = fs
        .open_file(&dir.join(file_name(0, "log")), OpenMode::CreateNew)
        .expect("sim fs");
    log.write_all_at(data, 0).expect("sim fs");
    drop(log);
    // Small indexes with an entry per batch, so the scan also fills them up.
    let config = LogConfig {
        index_interval_bytes: 1,
        index_bytes_max: 1024,
        ..LogConfig::default()
    };
    // As a replicated partition with three leader epochs started: -1 and these pass the
    // header check, any other epoch is damage.
    let (segment, report) =
        Segment::recover(&fs, dir, 0, &config, 0, KnownEpochs(&[0, 1, 7])).expect("sim fs");
    assert_eq!(
        report.valid_bytes + report.truncated_bytes,
        data.len() as u64
    );
    assert_eq!(segment.valid_bytes(), report.valid_bytes);
});
