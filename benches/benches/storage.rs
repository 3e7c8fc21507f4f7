//! Storage engine benchmarks: append throughput per flush policy (one appender, and group
//! commit with concurrent appenders), who owns a partition's appends (writer lock against an
//! owning task), sequential reads, and index lookups.
//!
//! Data goes to a temp directory under `$WHARF_BENCH_DIR` (default: the current directory,
//! which is the workspace's disk, not a tmpfs). Each sample writes into a fresh partition that
//! is deleted afterwards, so disk use stays bounded.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wharf_broker::storage::index::{IndexEntry, OffsetIndex};
use wharf_broker::storage::testing::{batch_of_size, real_env};
use wharf_broker::storage::{FlushPolicy, LogConfig, Partition, RealFs, StorageEnv};

const NOW_MS: i64 = 1_700_000_000_000;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var("WHARF_BENCH_DIR").unwrap_or_else(|_| ".".to_string());
    tempfile::Builder::new()
        .prefix("wharf-bench-")
        .tempdir_in(base)
        .expect("bench dir")
}

fn config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes_max: 512 * 1024 * 1024,
        flush,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, flush: FlushPolicy, env: &StorageEnv) -> Arc<Partition> {
    Partition::open(&dir.join("bench-0"), config(flush), env.clone()).expect("open partition")
}

/// Appends `count` copies of `batch` from `appenders` threads. Each keeps at most
/// `in_flight` appends waiting for durability: 1 is a producer with acks=all that waits for
/// each ack before its next batch; 5 is an idempotent producer's window (the client's
/// default `max_in_flight`), which the broker serves the same way: the next request is
/// appended while the earlier ones wait for their fsync. Returns the elapsed time.
fn run_appenders(
    partition: &Arc<Partition>,
    batch: &BytesMut,
    count: u64,
    appenders: u64,
    in_flight: usize,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for appender in 0..appenders {
            let share = count / appenders + u64::from(appender < count % appenders);
            let partition = partition.clone();
            let mut own = batch.clone();
            scope.spawn(move || {
                let mut waiting = std::collections::VecDeque::with_capacity(in_flight);
                let wait = |next_offset| {
                    partition
                        .wait_durable_blocking(next_offset, Duration::from_secs(30))
                        .expect("durable");
                };
                for _ in 0..share {
                    if waiting.len() == in_flight {
                        wait(waiting.pop_front().expect("a waiting append"));
                    }
                    waiting.push_back(partition.append(&mut own).expect("append").next_offset);
                }
                // Durability is monotonic: the last append's covers the rest.
                if let Some(last) = waiting.pop_back() {
                    wait(last);
                }
            });
        }
    });
    start.elapsed()
}

fn append(criterion: &mut Criterion) {
    let (env, _clock) = real_env(NOW_MS);
    let mut group = criterion.benchmark_group("append");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    // (policy, appenders, appends in flight per appender)
    let cases = [
        ("never", FlushPolicy::Never, 1u64, 1usize),
        ("always", FlushPolicy::Always, 1, 1),
        ("always", FlushPolicy::Always, 8, 1),
        ("always", FlushPolicy::Always, 8, 5),
    ];
    for (record_bytes, label) in [(100usize, "100x100B"), (1024, "100x1KiB")] {
        let batch = batch_of_size(100, record_bytes, NOW_MS);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        for (policy_name, policy, appenders, in_flight) in cases {
            let id = BenchmarkId::new(
                format!("{policy_name}/{appenders}-appenders-{in_flight}-in-flight"),
                label,
            );
            group.bench_function(id, |bencher| {
                bencher.iter_custom(|iters| {
                    let dir = bench_dir();
                    let partition = open(dir.path(), policy, &env);
                    let elapsed = run_appenders(&partition, &batch, iters, appenders, in_flight);
                    partition.close().expect("close");
                    elapsed
                });
            });
        }
    }
    group.finish();
}

/// Tasks that append concurrently in the `append_owner` group.
const OWNER_BENCH_APPENDERS: u64 = 4;

/// Who owns a partition's appends (issue #12, STYLE.md section 4): the storage writer lock
/// that the append path takes today (each caller appends itself), against an owning task
/// that receives every batch over a bounded channel and answers each with a oneshot, as an
/// actor would. `flush = never`, so the figure is the cost of the hand-off, not of fsyncs.
fn append_owner(criterion: &mut Criterion) {
    let (env, _clock) = real_env(NOW_MS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let mut group = criterion.benchmark_group("append_owner");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    let batch = batch_of_size(100, 100, NOW_MS);
    group.throughput(Throughput::Bytes(batch.len() as u64));
    for owner in ["writer-lock", "owning-task"] {
        let id = BenchmarkId::new(owner, format!("{OWNER_BENCH_APPENDERS}-appenders-100x100B"));
        group.bench_function(id, |bencher| {
            bencher.iter_custom(|iters| {
                let dir = bench_dir();
                let partition = open(dir.path(), FlushPolicy::Never, &env);
                let elapsed = runtime.block_on(run_owner(owner, &partition, &batch, iters));
                partition.close().expect("close");
                elapsed
            });
        });
    }
    group.finish();
}

type AppendRequest = (BytesMut, tokio::sync::oneshot::Sender<i64>);

async fn run_owner(
    owner: &str,
    partition: &Arc<Partition>,
    batch: &BytesMut,
    count: u64,
) -> Duration {
    let start = Instant::now();
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<AppendRequest>(1024);
    let owning = (owner == "owning-task").then(|| {
        let partition = partition.clone();
        tokio::spawn(async move {
            while let Some((mut bytes, reply)) = receiver.recv().await {
                let receipt = wharf_broker::append::append(&partition, &mut bytes).expect("append");
                let _ = reply.send(receipt.appended().next_offset);
            }
        })
    });
    let mut appenders = Vec::new();
    for appender in 0..OWNER_BENCH_APPENDERS {
        let share =
            count / OWNER_BENCH_APPENDERS + u64::from(appender < count % OWNER_BENCH_APPENDERS);
        let partition = partition.clone();
        let sender = sender.clone();
        let batch = batch.clone();
        let through_owner = owning.is_some();
        appenders.push(tokio::spawn(async move {
            for _ in 0..share {
                let mut bytes = batch.clone();
                if through_owner {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    sender.send((bytes, reply)).await.expect("owner running");
                    black_box(answer.await.expect("owner answers"));
                } else {
                    let receipt =
                        wharf_broker::append::append(&partition, &mut bytes).expect("append");
                    black_box(receipt.appended().next_offset);
                }
            }
        }));
    }
    for appender in appenders {
        appender.await.expect("appender");
    }
    let elapsed = start.elapsed();
    drop(sender);
    if let Some(owning) = owning {
        owning.await.expect("owner");
    }
    elapsed
}

fn read(criterion: &mut Criterion) {
    let (env, _clock) = real_env(NOW_MS);
    let dir = bench_dir();
    let partition = open(dir.path(), FlushPolicy::Never, &env);
    let mut batch = batch_of_size(100, 1024, NOW_MS);
    let batch_bytes = batch.len() as u64;
    let batch_count = (256 * 1024 * 1024) / batch_bytes;
    for _ in 0..batch_count {
        partition.append(&mut batch).expect("append");
    }
    partition.flush().expect("flush");
    let mut group = criterion.benchmark_group("read");
    group.measurement_time(Duration::from_secs(5));
    let max_bytes = 1024 * 1024;
    group.throughput(Throughput::Bytes(max_bytes as u64));
    group.bench_function("sequential/1MiB-fetches", |bencher| {
        let mut offset = 0;
        bencher.iter(|| {
            if offset >= partition.high_watermark() {
                offset = 0;
            }
            let result = partition.read(offset, max_bytes).expect("read");
            let last = wharf_protocol::batch::batches(result.bytes)
                .last()
                .expect("a batch")
                .expect("valid");
            offset = last.header().next_offset();
            black_box(offset)
        });
    });
    group.finish();
}

fn index_lookup(criterion: &mut Criterion) {
    let dir = bench_dir();
    let entry_count = 262_144u32; // a 1 GiB segment at one entry per 4 KiB
    let path = dir.path().join("00000000000000000000.index");
    let mut index = OffsetIndex::create(&RealFs, &path, u64::from(entry_count) * 8).expect("index");
    for entry in 0..entry_count {
        index.append(IndexEntry {
            relative_offset: entry * 40 + 1,
            position: entry * 4096 + 1,
        });
    }
    let mut group = criterion.benchmark_group("index_lookup");
    group.throughput(Throughput::Elements(1));
    group.bench_function("262144-entries", |bencher| {
        let mut probe = 12_345u32;
        bencher.iter(|| {
            // A cheap pseudo-random walk over the whole offset range.
            probe = probe.wrapping_mul(1_664_525).wrapping_add(1_013_904_223) % (entry_count * 40);
            black_box(index.lookup(black_box(probe)))
        });
    });
    group.finish();
}

criterion_group!(benches, append, append_owner, read, index_lookup);
criterion_main!(benches);
