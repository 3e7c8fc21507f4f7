//! The log cleaner's driver (issue #19): a thread of its own, off the runtime's workers,
//! that goes over the compacted partitions every `cleaner_backoff_ms` and runs a pass
//! (`Partition::clean`, `storage/partition/cleaner.rs`) on each that is dirty enough.
//!
//! It gives storage what only the streams layer knows: the last stable offset (an open
//! transaction's records are neither mapped nor rewritten), the aborted transactions, and a
//! producer-state snapshot taken just before the pass, whose offset also bounds the pass, so
//! that rebuilding producer state after a crash never needs a batch the cleaner removed.
//! One pass at a time; reads and writes are rate limited together
//! (`cleaner_io_bytes_per_second`); the key map is bounded by `cleaner_dedupe_buffer_bytes`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics;
use crate::storage::partition::{CleanInputs, CleanReport};
use crate::storage::Partition;
use crate::streams::producer::AbortedTxn;
use crate::streams::Streams;

/// The cleaner's settings (broker config keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanerSettings {
    /// Pause between rounds.
    pub backoff: Duration,
    /// Most bytes one pass's key map takes.
    pub dedupe_buffer_bytes: usize,
    /// Read plus write bytes per second (0: no limit).
    pub io_bytes_per_second: u64,
}

/// A read-plus-write byte rate limit: sleeps when the bytes so far are ahead of the rate.
#[derive(Debug)]
struct RateLimit {
    bytes_per_second: u64,
    state: Mutex<(Instant, u64)>,
}

impl RateLimit {
    fn new(bytes_per_second: u64) -> RateLimit {
        RateLimit {
            bytes_per_second,
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    fn take(&self, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        let wait = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            // Windows of a second, so a long idle spell does not bank a burst.
            if state.0.elapsed() > Duration::from_secs(1) {
                *state = (Instant::now(), 0);
            }
            state.1 += bytes;
            let due = Duration::from_secs_f64(state.1 as f64 / self.bytes_per_second as f64);
            due.saturating_sub(state.0.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

impl Streams {
    /// One cleaner round: a pass on every compacted partition that is dirty enough
    /// (blocking). Returns what each pass did.
    pub fn clean_round(
        &self,
        settings: &CleanerSettings,
        stop: &AtomicBool,
    ) -> Vec<((String, u32), CleanReport)> {
        let limit = RateLimit::new(settings.io_bytes_per_second);
        let mut reports = Vec::new();
        let mut max_ratio: f64 = 0.0;
        for info in self.topics.list() {
            for partition in 0..info.partitions {
                if stop.load(Ordering::Acquire) {
                    return reports;
                }
                let Some(log) = self.partition(&info.name, partition) else {
                    continue;
                };
                if !log.limits().cleanup.compacts() {
                    continue;
                }
                let stable = self.stable_offset(&info.name, partition, &log);
                max_ratio = max_ratio.max(log.dirty_view(stable).ratio());
                if !log.wants_cleaning(stable) {
                    continue;
                }
                let started = Instant::now();
                match self.clean_partition(&info.name, partition, &log, settings, &limit, stop) {
                    Ok(Some(report)) => {
                        let took = started.elapsed();
                        metrics::CLEANER.count_run(
                            report.bytes_before,
                            report.bytes_after,
                            report.records_removed,
                            took,
                        );
                        tracing::info!(
                            topic = info.name,
                            partition,
                            first_dirty = report.first_dirty,
                            cleaned_up_to = report.cleaned_up_to,
                            keys = report.map_entries,
                            segments_before = report.segments_before,
                            segments_after = report.segments_after,
                            bytes_before = report.bytes_before,
                            bytes_after = report.bytes_after,
                            records_removed = report.records_removed,
                            bytes_read = report.bytes_read,
                            took_ms = took.as_millis() as u64,
                            "log cleaner pass"
                        );
                        reports.push(((info.name.clone(), partition), report));
                    }
                    Ok(None) => {}
                    Err(error) => {
                        metrics::CLEANER.count_failure();
                        tracing::error!(topic = info.name, partition, %error, "log cleaner pass failed");
                    }
                }
            }
        }
        metrics::CLEANER.set_max_dirty_ratio(max_ratio);
        reports
    }

    /// The last stable offset of a partition (below an open transaction's first record).
    fn stable_offset(&self, topic: &str, partition: u32, log: &Partition) -> i64 {
        let shared = self.producers.partition(topic, partition);
        let state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
        state.last_stable_offset(log.high_watermark())
    }

    fn clean_partition(
        &self,
        topic: &str,
        partition: u32,
        log: &Partition,
        settings: &CleanerSettings,
        limit: &RateLimit,
        stop: &AtomicBool,
    ) -> Result<Option<CleanReport>, crate::storage::Error> {
        // The snapshot first: producer state rebuilt after a crash replays the log from its
        // offset, so the pass stays below it.
        let shared = self.producers.partition(topic, partition);
        let snapshot_offset = self.producers.snapshot(&shared, log, self.clock.now_ms())?;
        let (stable, aborted): (i64, Vec<AbortedTxn>) = {
            let state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
            (
                state.last_stable_offset(log.high_watermark()),
                state.aborted_between(0, i64::MAX),
            )
        };
        let is_aborted = |producer_id: i64, offset: i64| {
            aborted.iter().any(|txn| {
                txn.producer_id == producer_id
                    && txn.first_offset <= offset
                    && offset <= txn.last_offset
            })
        };
        let throttle = |bytes: u64| limit.take(bytes);
        log.clean(&CleanInputs {
            stable_offset: stable.min(snapshot_offset),
            aborted: &is_aborted,
            map_bytes_max: settings.dedupe_buffer_bytes,
            throttle: &throttle,
            stop,
        })
    }
}

/// The cleaner thread; stopped (and joined) before storage closes.
#[derive(Debug)]
pub struct CleanerThread {
    stop: Arc<AtomicBool>,
    wake: Arc<(Mutex<()>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl CleanerThread {
    /// Starts the thread over `streams`.
    ///
    /// # Panics
    /// If the OS cannot start a thread.
    pub fn spawn(streams: Arc<Streams>, settings: CleanerSettings) -> CleanerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new((Mutex::new(()), Condvar::new()));
        let handle = {
            let stop = stop.clone();
            let wake = wake.clone();
            std::thread::Builder::new()
                .name("wharf-cleaner".to_string())
                .spawn(move || loop {
                    {
                        let (lock, condvar) = &*wake;
                        let guard = lock.lock().unwrap_or_else(|poison| poison.into_inner());
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        drop(
                            condvar
                                .wait_timeout(guard, settings.backoff)
                                .unwrap_or_else(|poison| poison.into_inner()),
                        );
                    }
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    streams.clean_round(&settings, &stop);
                })
                .expect("the OS starts the cleaner thread")
        };
        CleanerThread {
            stop,
            wake,
            handle: Some(handle),
        }
    }

    /// Stops the thread after the group it is cleaning, if any, and waits for it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        {
            let _guard = self
                .wake
                .0
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            self.wake.1.notify_all();
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use bytes::{Bytes, BytesMut};
    use wharf_protocol::batch::{self, Attributes, BatchBuilder, ControlKind, NewRecord};

    use super::*;
    use crate::storage::testing::sim_env;
    use crate::storage::LogConfig;
    use crate::streams::producer::Producers;
    use crate::streams::topic::{TopicInfo, Topics};
    use crate::streams::{AutoCreate, StreamSettings};

    const NOW_MS: i64 = 1_000_000_000;
    const VALUE_BYTES: usize = 2_000;

    fn streams() -> Streams {
        let (env, _fs, clock) = sim_env(NOW_MS);
        let data_dir = Path::new("/data");
        let topics = Topics::open(data_dir, env.clone(), LogConfig::default()).unwrap();
        let producers = Producers::open(env.fs.clone(), data_dir, 60_000).unwrap();
        let settings = StreamSettings {
            auto_create_topics: AutoCreate::Off,
            default_partitions: 1,
        };
        Streams::new(topics, producers, clock, settings)
    }

    fn settings() -> CleanerSettings {
        CleanerSettings {
            backoff: Duration::from_secs(1),
            dedupe_buffer_bytes: 1 << 20,
            io_bytes_per_second: 0,
        }
    }

    /// One record with key `k` and value `name` padded to `VALUE_BYTES`, as a plain batch or
    /// as producer `pid`'s transactional batch at `sequence`.
    fn record(name: &str, transactional: Option<(i64, i32)>) -> BytesMut {
        let mut builder = BatchBuilder::new(NOW_MS);
        if let Some((producer_id, sequence)) = transactional {
            builder = builder
                .producer(producer_id, 0, sequence)
                .attributes(Attributes::default().transactional());
        }
        let mut value = name.as_bytes().to_vec();
        value.resize(VALUE_BYTES, b' ');
        builder
            .push(&NewRecord {
                timestamp_ms: NOW_MS,
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from(value)),
                headers: Vec::new(),
            })
            .unwrap();
        let mut out = BytesMut::new();
        builder.build_into(&mut out);
        out
    }

    /// The names of the data records left in the partition, in offset order.
    fn names(streams: &Streams) -> Vec<String> {
        let log = streams.partition("t", 0).unwrap();
        // The flusher may not have reached the newest appends yet: reads stop at the high
        // watermark, so fsync first or the tail is missing from the list.
        log.flush().unwrap();
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < log.high_watermark() {
            let read = log.read(offset, 1 << 20).unwrap();
            for decoded in batch::batches(read.bytes) {
                let decoded = decoded.unwrap();
                offset = decoded.header().next_offset();
                if decoded.header().attributes.is_control() {
                    continue;
                }
                for record in decoded.records() {
                    let value = record.unwrap().value.unwrap();
                    let text = String::from_utf8_lossy(&value).trim_end().to_string();
                    out.push(text);
                }
            }
        }
        out
    }

    fn produce(streams: &Streams, info: &TopicInfo, name: &str, txn: Option<(i64, i32)>) {
        streams
            .append_produced(
                info,
                0,
                &record(name, txn),
                crate::streams::produce::TxnCheck::Here,
            )
            .unwrap();
    }

    #[test]
    fn a_pass_leaves_an_open_transaction_and_everything_after_it_alone() {
        // Goal: the cleaner never maps or rewrites a record at or past the last stable
        // offset, so an open transaction's records (and every later record of the same key)
        // stay until the transaction ends, and are cleaned after its commit. Method: one key
        // written many times, an open transaction in the middle of sealed segments, a round;
        // then the commit marker, a round.
        let streams = streams();
        let configs = [
            ("cleanup.policy", "compact"),
            ("segment.bytes", "65536"),
            ("min.cleanable.dirty.ratio", "0"),
        ]
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .to_vec();
        let info = streams.create_topic("t", 1, configs).unwrap();
        for n in 0..60 {
            produce(&streams, &info, &format!("before-{n}"), None);
        }
        let producer_id = streams.allocate_producer_id().unwrap();
        let members = BTreeSet::from([("t".to_string(), 0)]);
        streams.txn_members().set(producer_id, 0, members);
        produce(&streams, &info, "in-txn", Some((producer_id, 0)));
        for n in 0..120 {
            produce(&streams, &info, &format!("after-{n}"), None);
        }
        let log = streams.partition("t", 0).unwrap();
        assert!(
            log.segment_count() > 4,
            "the test needs sealed segments past the txn"
        );
        let stop = AtomicBool::new(false);

        let reports = streams.clean_round(&settings(), &stop);
        assert_eq!(reports.len(), 1, "one pass: {reports:?}");
        let left = names(&streams);
        let from_txn: Vec<String> = std::iter::once("in-txn".to_string())
            .chain((0..120).map(|n| format!("after-{n}")))
            .collect();
        let txn_at = left.iter().position(|name| name == "in-txn");
        assert_eq!(
            txn_at.map(|at| &left[at..]),
            Some(&from_txn[..]),
            "from the open transaction on, every record stays"
        );
        assert!(
            left.contains(&"before-59".to_string()) && !left.contains(&"before-0".to_string()),
            "below it, the pass cleaned: {left:?}"
        );

        // The commit ends the transaction: the next round cleans past it.
        let marker = batch::control_batch(NOW_MS, producer_id, 0, ControlKind::Commit, 0);
        let shared = streams.producers().partition("t", 0);
        {
            let mut state = shared.lock().unwrap();
            let receipt = crate::append::append(&log, &mut BytesMut::from(&marker[..])).unwrap();
            state.record_marker(
                producer_id,
                0,
                ControlKind::Commit,
                receipt.appended().base_offset,
                NOW_MS,
                0,
            );
        }
        for n in 120..200 {
            produce(&streams, &info, &format!("after-{n}"), None);
        }
        streams.clean_round(&settings(), &stop);
        let left = names(&streams);
        assert!(
            !left.contains(&"in-txn".to_string()) && !left.contains(&"after-0".to_string()),
            "after the commit the transaction's superseded record goes: {left:?}"
        );
        assert_eq!(left.last().map(String::as_str), Some("after-199"));
    }
}
