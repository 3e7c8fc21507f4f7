//! Crash test, level 2 (STYLE.md section 7): a real process appends to a partition on the
//! real file system and is killed with SIGKILL at a random moment; the partition is then
//! reopened and must hold every record the process acknowledged as durable, in order, with
//! no hole and no garbage after the recovered end.
//!
//! The test re-runs its own test binary as the child: with `WHARF_CRASH_CHILD=<dir>` set,
//! the test `crash_child_writer` appends batches to the partition in `<dir>` with
//! `FlushPolicy::Always` and prints `ACK <next_offset>` after every successful
//! `wait_durable_blocking`; without it, that test returns at once. Every record's value holds
//! its offset and a checksum, so the parent can tell a misplaced or damaged record from a
//! good one. The kill/reopen cycle repeats on the same directory, so later children start by
//! recovering what earlier kills (and the parent's own recoveries) left.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use wharf_broker::storage::segment;
use wharf_broker::storage::testing::{batch_of, real_env, Seed, SplitMix};
use wharf_broker::storage::{FlushPolicy, LogConfig, Partition, StorageEnv};
use wharf_protocol::batch;

/// Set in the child's environment to the partition directory it writes to.
const CHILD_DIR_ENV: &str = "WHARF_CRASH_CHILD";
/// Set in the child's environment to the seed of its batch sizes.
const CHILD_SEED_ENV: &str = "WHARF_CRASH_CHILD_SEED";
/// The child prints this once its partition is open.
const READY_LINE: &str = "READY";
/// Prefix of the line the child prints after each durable append.
const ACK_PREFIX: &str = "ACK ";
/// Kill/reopen cycles per run.
const ROUNDS: usize = 8;
/// How long the child keeps writing if nobody kills it (the parent died, say).
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(20);
const NOW_MS: i64 = 1_000_000;
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a value before its payload (the offset) and after it (the CRC).
const VALUE_OVERHEAD_BYTES: usize = 8 + 4;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 1024,
        index_bytes_max: 4096,
        retention_ms: None,
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, env: &StorageEnv) -> Arc<Partition> {
    Partition::open(dir, config(), env.clone())
        .unwrap_or_else(|error| panic!("open {}: {error}", dir.display()))
}

/// The value of the record at `offset`: the offset (i64, big-endian), `payload_bytes` bytes
/// derived from it, and a CRC-32 of both.
fn encode_value(offset: i64, payload_bytes: usize) -> Vec<u8> {
    let mut value = Vec::with_capacity(payload_bytes + VALUE_OVERHEAD_BYTES);
    value.extend_from_slice(&offset.to_be_bytes());
    value.extend((0..payload_bytes).map(|index| (offset as usize * 31 + index) as u8));
    let crc = crc32fast::hash(&value);
    value.extend_from_slice(&crc.to_be_bytes());
    value
}

/// Checks a value's CRC and returns the offset it was written for.
fn decode_value(value: &[u8]) -> Result<i64, String> {
    if value.len() < VALUE_OVERHEAD_BYTES {
        return Err(format!("value of {} bytes is too short", value.len()));
    }
    let (body, crc) = value.split_at(value.len() - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != stored {
        return Err("value checksum does not match".to_string());
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&body[..8]);
    Ok(i64::from_be_bytes(offset))
}

/// The child: appends random batches forever, printing each acknowledged end offset.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .expect("the parent passes a seed")
        .parse()
        .expect("the seed is a u64");
    let mut rng = SplitMix(seed);
    let (env, _) = real_env(NOW_MS);
    let partition = open(Path::new(&dir), &env);
    let mut out = std::io::stdout().lock();
    // The harness has printed "test crash_child_writer ... " without a newline: end it.
    writeln!(out, "\n{READY_LINE}").expect("write to the parent");
    out.flush().expect("write to the parent");
    let started = Instant::now();
    while started.elapsed() < CHILD_LIFETIME_MAX {
        let base = partition.log_end_offset();
        let record_count = 1 + rng.below(5) as i64;
        let values: Vec<Vec<u8>> = (base..base + record_count)
            .map(|offset| encode_value(offset, rng.below(3000) as usize))
            .collect();
        let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let mut batch = batch_of(&slices, NOW_MS);
        let appended = partition.append(&mut batch).expect("append");
        assert_eq!(appended.base_offset, base);
        partition
            .wait_durable_blocking(appended.next_offset, WAIT_TIMEOUT)
            .expect("wait for durability");
        // One write per line, so a kill never leaves half an acknowledgement behind that
        // could be mistaken for a whole one (the parent also ignores an unterminated line).
        writeln!(out, "{ACK_PREFIX}{}", appended.next_offset).expect("write to the parent");
        out.flush().expect("write to the parent");
    }
}

#[test]
fn killed_writer_never_loses_an_acknowledged_record() {
    // Goal: the prefix property across real process kills. Method: ROUNDS times, start the
    // child on the same directory, let it write for a random 50-500 ms (or, one round in
    // four, kill it within its first 50 ms, likely while it recovers), SIGKILL it, collect the
    // offsets it acknowledged, reopen the partition here and check it; every other round the
    // parent closes cleanly, so children start from both clean and unclean shutdowns.
    // Randomized: prints its seed on failure, WHARF_TEST_SEED replays the same choices.
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return;
    }
    let seed = Seed::from_env();
    let mut rng = seed.rng();
    let dir = TempDir::new().expect("create temp dir");
    let (env, _) = real_env(NOW_MS);
    let mut recovered_end = 0;
    let mut acked_total = 0;
    for round in 0..ROUNDS {
        let early_kill = rng.below(4) == 0;
        let run_for = if early_kill {
            Duration::from_millis(rng.below(50))
        } else {
            Duration::from_millis(50 + rng.below(451))
        };
        let acked = run_and_kill_child(dir.path(), rng.next_u64(), early_kill, run_for);
        let context = format!("round {round}, ran {run_for:?}, early kill {early_kill}");
        let partition = open(dir.path(), &env);
        let end = check_prefix_property(&partition, dir.path(), &context);
        let segments = partition.segment_count();
        eprintln!("{context}: acknowledged up to {acked}, recovered {end}, {segments} segments");
        assert!(
            end >= acked,
            "{context}: acknowledged up to {acked}, recovered {end}"
        );
        assert!(
            end >= recovered_end,
            "{context}: an earlier recovery reached {recovered_end}, now only {end}"
        );
        acked_total += acked - recovered_end.min(acked);
        recovered_end = end;
        if round % 2 == 1 {
            partition.close().expect("close");
        }
    }
    assert!(acked_total > 0, "no child acknowledged anything");
}

/// Runs one child on `dir`, kills it after `run_for` (counted from its READY line unless
/// `early_kill`), and returns the highest offset it acknowledged (0 if none).
fn run_and_kill_child(dir: &Path, child_seed: u64, early_kill: bool, run_for: Duration) -> i64 {
    let exe = std::env::current_exe().expect("path of the test binary");
    let child = Command::new(exe)
        .args([
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_SEED_ENV, child_seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                // An unterminated last line is what a kill mid-write would leave: ignore it.
                Ok(_) if line.last() != Some(&b'\n') => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if lines_tx.send(text).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut lines = Vec::new();
    if !early_kill {
        loop {
            let line = lines_rx
                .recv_timeout(WAIT_TIMEOUT)
                .expect("the child opens its partition and says READY");
            let ready = line == READY_LINE;
            lines.push(line);
            if ready {
                break;
            }
        }
    }
    // The one sleep of this test: the child must run for a while before it is killed.
    std::thread::sleep(run_for);
    if let Some(status) = child.0.try_wait().expect("poll the child") {
        panic!("the child exited by itself before the kill: {status}");
    }
    child.0.kill().expect("SIGKILL the child");
    child.0.wait().expect("reap the child");
    reader.join().expect("stdout reader");
    lines.extend(lines_rx.try_iter());
    let acks: Vec<i64> = lines
        .iter()
        .filter_map(|line| line.strip_prefix(ACK_PREFIX))
        .map(|offset| offset.parse().expect("an ACK line holds an offset"))
        .collect();
    assert!(
        acks.windows(2).all(|pair| pair[0] < pair[1]),
        "acknowledged offsets increase"
    );
    acks.last().copied().unwrap_or(0)
}

/// Reads the whole reopened log and checks it: it starts at 0, every batch validates, every
/// record sits at the offset its value names with an intact checksum, offsets have no hole,
/// and the segment files hold nothing past the valid batches. Returns the log end offset.
fn check_prefix_property(partition: &Partition, dir: &Path, context: &str) -> i64 {
    assert_eq!(partition.log_start_offset(), 0, "{context}");
    let end = partition.log_end_offset();
    assert_eq!(partition.high_watermark(), end, "{context}");
    let mut offset = 0;
    while offset < end {
        let read = partition
            .read(offset, 256 * 1024)
            .unwrap_or_else(|error| panic!("{context}: read at {offset}: {error}"));
        for decoded in batch::batches(read.bytes) {
            let decoded = decoded
                .unwrap_or_else(|error| panic!("{context}: invalid batch at {offset}: {error}"));
            assert_eq!(decoded.header().base_offset, offset, "{context}: hole");
            for record in decoded.records() {
                let record = record.unwrap_or_else(|error| panic!("{context}: {error}"));
                let value = record.value.unwrap_or_default();
                let named = decode_value(&value)
                    .unwrap_or_else(|error| panic!("{context}: record {offset}: {error}"));
                assert_eq!(record.offset, offset, "{context}");
                assert_eq!(
                    named, offset,
                    "{context}: record {offset} holds record {named}"
                );
                offset += 1;
            }
        }
    }
    assert_eq!(offset, end, "{context}");
    let mut log_bytes = 0;
    for entry in std::fs::read_dir(dir).expect("list partition dir") {
        let entry = entry.expect("list partition dir");
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((base, "log")) = segment::parse_file_name(&name) {
            assert!(
                partition.segment_base_offsets().contains(&base),
                "{context}"
            );
            log_bytes += entry.metadata().expect("stat segment").len();
        }
    }
    assert_eq!(
        log_bytes,
        partition.size_bytes(),
        "{context}: segment files hold bytes past their valid batches"
    );
    end
}

/// Kills the child if the test fails before it does, so no writer outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
