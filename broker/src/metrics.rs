//! Counters and histograms that the broker's layers update and a front end renders (issue
//! #17: `GET /metrics` of the HTTP front end).
//!
//! This module owns only plain atomics: no locks, no maps, no allocation, no knowledge of
//! any wire protocol or metrics format. Layers update them where the work happens (storage:
//! fsync latency and group-commit size; the append path: append latency, records and bytes
//! in; the fetch path: records and bytes out; front ends: connections and requests by api),
//! always once per batch or request, never per record. Gauges that the broker's state already
//! holds (offsets, sizes, lag, queue depths) are not counted here: the core reads them at
//! scrape time.
//!
//! **Architecture invariant:** `metrics` imports nothing of the crate, so every layer may
//! call it, and it never takes a lock on the hot path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Traffic of one partition log, held by the log itself so that updating it needs no lookup.
#[derive(Debug, Default)]
pub struct LogTraffic {
    records_in: AtomicU64,
    bytes_in: AtomicU64,
    records_out: AtomicU64,
    bytes_out: AtomicU64,
}

/// A point-in-time copy of a [`LogTraffic`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficSample {
    /// Offsets appended (records, and control records of transaction markers).
    pub records_in: u64,
    /// Bytes of record batches appended.
    pub bytes_in: u64,
    /// Records in the batches that fetches returned.
    pub records_out: u64,
    /// Bytes of record batches that fetches returned.
    pub bytes_out: u64,
}

impl LogTraffic {
    /// Counts one append of `record_count` offsets in `byte_count` bytes.
    pub fn count_in(&self, record_count: u64, byte_count: u64) {
        self.records_in.fetch_add(record_count, Ordering::Relaxed);
        self.bytes_in.fetch_add(byte_count, Ordering::Relaxed);
    }

    /// Counts one read returned to a consumer.
    pub fn count_out(&self, record_count: u64, byte_count: u64) {
        self.records_out.fetch_add(record_count, Ordering::Relaxed);
        self.bytes_out.fetch_add(byte_count, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn sample(&self) -> TrafficSample {
        TrafficSample {
            records_in: self.records_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// Buckets of every histogram: a fixed count keeps the series per histogram bounded.
pub const HISTOGRAM_BUCKETS: usize = 17;

/// Upper bounds of the latency histograms, in nanoseconds: 10 µs to 2.5 s. An append is a
/// page-cache write (microseconds); an fsync takes from tens of microseconds (NVMe) to
/// seconds (a saturated disk), so the range covers both.
const LATENCY_BOUNDS_NS: [u64; HISTOGRAM_BUCKETS] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Upper bounds of the group-commit size histogram, in offsets made durable by one fsync:
/// powers of two up to 65536.
const COUNT_BOUNDS: [u64; HISTOGRAM_BUCKETS] = [
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];

/// A histogram with fixed buckets over atomics: `observe` is two or three relaxed atomic
/// adds and a short search of the bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64; HISTOGRAM_BUCKETS],
    /// How many observations fell in each bucket (not cumulative); the last slot holds those
    /// above every bound.
    counts: [AtomicU64; HISTOGRAM_BUCKETS + 1],
    sum: AtomicU64,
    /// What one unit of the observed values is in the rendered unit (1e-9: ns → seconds).
    scale: f64,
}

/// A point-in-time copy of a [`Histogram`], in the rendered unit.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    /// `(upper bound, count)` per bucket, in increasing bound order: the observations above
    /// the bucket before and at most this bound, not cumulative (the Prometheus encoder
    /// sums them into `le` buckets). The last is `(f64::INFINITY, those above every bound)`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Sum of the observed values.
    pub sum: f64,
}

impl Histogram {
    const fn new(bounds: &'static [u64; HISTOGRAM_BUCKETS], scale: f64) -> Histogram {
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; HISTOGRAM_BUCKETS + 1],
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// Records one value, in the histogram's base unit.
    pub fn observe(&self, value: u64) {
        self.observe_times(value, 1);
    }

    /// Records `count` observations of `value`.
    fn observe_times(&self, value: u64, count: u64) {
        let slot = self.bounds.partition_point(|bound| *bound < value);
        self.counts[slot].fetch_add(count, Ordering::Relaxed);
        self.sum
            .fetch_add(value.saturating_mul(count), Ordering::Relaxed);
    }

    /// Records a duration (for histograms in seconds).
    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records `count` observations of the same duration.
    pub fn observe_durations(&self, count: u64, each: Duration) {
        self.observe_times(u64::try_from(each.as_nanos()).unwrap_or(u64::MAX), count);
    }

    /// True while nothing was observed.
    pub fn is_empty(&self) -> bool {
        self.counts
            .iter()
            .all(|count| count.load(Ordering::Relaxed) == 0)
    }

    /// The histogram now. Concurrent observations may land between the reads of two
    /// buckets; each bucket is still monotonic, and the count is the buckets' sum so the
    /// sample is self-consistent.
    pub fn sample(&self) -> HistogramSample {
        let bounds = self
            .bounds
            .iter()
            .map(|bound| *bound as f64 * self.scale)
            .chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        HistogramSample {
            buckets,
            count,
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.scale,
        }
    }
}

/// Storage-wide histograms, shared by every log of the process.
#[derive(Debug)]
pub struct StorageMetrics {
    /// Seconds one append call took (validation, offset patching, the write).
    pub append_seconds: Histogram,
    /// Seconds one fsync of segment data took.
    pub fsync_seconds: Histogram,
    /// Offsets one fsync made durable: how many appends group commit folded together.
    pub group_commit_records: Histogram,
    /// Bytes of segment data that fsyncs made durable.
    pub bytes_flushed: AtomicU64,
}

/// The storage histograms of this process.
pub static STORAGE: StorageMetrics = StorageMetrics {
    append_seconds: Histogram::new(&LATENCY_BOUNDS_NS, 1e-9),
    fsync_seconds: Histogram::new(&LATENCY_BOUNDS_NS, 1e-9),
    group_commit_records: Histogram::new(&COUNT_BOUNDS, 1.0),
    bytes_flushed: AtomicU64::new(0),
};

/// The log cleaner's counters (issue #19).
#[derive(Debug)]
pub struct CleanerMetrics {
    /// Passes run.
    pub runs: AtomicU64,
    /// Passes that failed.
    pub failures: AtomicU64,
    /// Bytes of segments rewritten, before and after.
    pub bytes_before: AtomicU64,
    /// As above.
    pub bytes_after: AtomicU64,
    /// Records the cleaner removed.
    pub records_removed: AtomicU64,
    /// Pass durations.
    pub run_seconds: Histogram,
    /// The highest dirty ratio among compacted partitions at the last round, in millionths.
    pub max_dirty_ratio_millionths: AtomicU64,
}

/// The cleaner's counters of this process.
pub static CLEANER: CleanerMetrics = CleanerMetrics {
    runs: AtomicU64::new(0),
    failures: AtomicU64::new(0),
    bytes_before: AtomicU64::new(0),
    bytes_after: AtomicU64::new(0),
    records_removed: AtomicU64::new(0),
    run_seconds: Histogram::new(&LATENCY_BOUNDS_NS, 1e-9),
    max_dirty_ratio_millionths: AtomicU64::new(0),
};

impl CleanerMetrics {
    /// Counts one finished pass.
    pub fn count_run(
        &self,
        bytes_before: u64,
        bytes_after: u64,
        records_removed: u64,
        took: Duration,
    ) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.bytes_before.fetch_add(bytes_before, Ordering::Relaxed);
        self.bytes_after.fetch_add(bytes_after, Ordering::Relaxed);
        self.records_removed
            .fetch_add(records_removed, Ordering::Relaxed);
        self.run_seconds.observe_duration(took);
    }

    /// Counts one failed pass.
    pub fn count_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the highest dirty ratio seen in the last round.
    pub fn set_max_dirty_ratio(&self, ratio: f64) {
        self.max_dirty_ratio_millionths
            .store((ratio.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// The highest dirty ratio seen in the last round.
    pub fn max_dirty_ratio(&self) -> f64 {
        self.max_dirty_ratio_millionths.load(Ordering::Relaxed) as f64 / 1e6
    }
}

impl StorageMetrics {
    /// Counts `byte_count` bytes of segment data made durable by one fsync.
    pub fn count_flushed(&self, byte_count: u64) {
        self.bytes_flushed.fetch_add(byte_count, Ordering::Relaxed);
    }

    /// Bytes of segment data made durable since start.
    pub fn bytes_flushed(&self) -> u64 {
        self.bytes_flushed.load(Ordering::Relaxed)
    }
}

/// Request counters are kept per api slot below this bound; a slot at or above it (no
/// protocol Wharf speaks has one) is counted in the last slot. This bounds the `api` label.
/// A front end's api slot is its api key (native, Kafka), its method's index in a fixed
/// table (AMQP) or its route's index in the route table (HTTP).
pub const API_KEY_SLOTS: usize = 128;

/// Error code slots per api, which bound the `code` label: a front end maps each error code
/// of its protocol to one slot below this (native codes are below 64, Kafka's below 128
/// with -1 in slot 0, AMQP's 18 reply codes by index, HTTP's statuses 400–527 as status −
/// 400); a larger slot is counted in the last one.
pub const ERROR_CODE_SLOTS: usize = 128;

/// Connections of one listener, and its requests: per api a latency histogram (whose count
/// is the api's requests) and per (api, error code) the requests answered with that error.
#[derive(Debug)]
pub struct ListenerMetrics {
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    requests: [Histogram; API_KEY_SLOTS],
    errors: [[AtomicU64; ERROR_CODE_SLOTS]; API_KEY_SLOTS],
}

/// A point-in-time copy of a [`ListenerMetrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSample {
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections refused since start for a connection limit (per address or per user).
    pub connections_refused: u64,
    /// Every api slot that has had a request, in slot order.
    pub apis: Vec<ApiSample>,
}

/// The requests of one api of a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSample {
    /// The api slot (see [`API_KEY_SLOTS`]).
    pub api: u16,
    /// Request latency, seconds; its count is the api's requests.
    pub latency: HistogramSample,
    /// `(error code slot, requests answered with it)` for every error seen, in slot order.
    pub errors: Vec<(u16, u64)>,
}

impl ListenerMetrics {
    const fn new() -> ListenerMetrics {
        ListenerMetrics {
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            requests: [const { Histogram::new(&LATENCY_BOUNDS_NS, 1e-9) }; API_KEY_SLOTS],
            errors: [const { [const { AtomicU64::new(0) }; ERROR_CODE_SLOTS] }; API_KEY_SLOTS],
        }
    }

    /// Counts a connection opened.
    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed.
    pub fn connection_closed(&self) {
        // Saturating: a close without an open (never expected) must not wrap to 2^64.
        let _ = self
            .connections_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                Some(open.saturating_sub(1))
            });
    }

    /// Counts a connection refused for a connection limit.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request of `api` answered after `took`, with the error code in slot
    /// `error` (`None`: it succeeded). One call per request, when its answer is ready: two
    /// or three relaxed atomic adds.
    pub fn request(&self, api: u16, error: Option<u16>, took: Duration) {
        let api = usize::from(api).min(API_KEY_SLOTS - 1);
        self.requests[api].observe_duration(took);
        if let Some(error) = error {
            let error = usize::from(error).min(ERROR_CODE_SLOTS - 1);
            self.errors[api][error].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records `count` requests for `api` handled together, each taking `each` (its share
    /// of the time they took together).
    pub fn requests(&self, api: u16, count: u64, each: Duration) {
        let api = usize::from(api).min(API_KEY_SLOTS - 1);
        self.requests[api].observe_durations(count, each);
    }

    /// Counts one error answered for `api` outside [`ListenerMetrics::request`] (an AMQP
    /// channel or connection closed by the broker, which is not the answer of one request
    /// the driver timed).
    pub fn error(&self, api: u16, error: u16) {
        let api = usize::from(api).min(API_KEY_SLOTS - 1);
        let error = usize::from(error).min(ERROR_CODE_SLOTS - 1);
        self.errors[api][error].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn sample(&self) -> ListenerSample {
        let apis = self
            .requests
            .iter()
            .zip(&self.errors)
            .enumerate()
            .filter_map(|(slot, (latency, errors))| {
                let errors: Vec<(u16, u64)> = errors
                    .iter()
                    .enumerate()
                    .filter_map(|(code, count)| {
                        let count = count.load(Ordering::Relaxed);
                        let code = u16::try_from(code).expect("ERROR_CODE_SLOTS fits in u16");
                        (count > 0).then_some((code, count))
                    })
                    .collect();
                if latency.is_empty() && errors.is_empty() {
                    return None;
                }
                Some(ApiSample {
                    api: u16::try_from(slot).expect("API_KEY_SLOTS fits in u16"),
                    latency: latency.sample(),
                    errors,
                })
            })
            .collect();
        ListenerSample {
            connections_open: self.connections_open.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            apis,
        }
    }
}

/// The native protocol listener's counters.
pub static NATIVE: ListenerMetrics = ListenerMetrics::new();
/// The Kafka listener's counters.
pub static KAFKA: ListenerMetrics = ListenerMetrics::new();
/// The AMQP 0-9-1 listener's counters (api: the method; see `frontend/amqp`).
pub static AMQP: ListenerMetrics = ListenerMetrics::new();
/// The HTTP listener's counters (api: the route; connections from accept to close).
pub static HTTP: ListenerMetrics = ListenerMetrics::new();

/// Health signals that no state of the core holds: whether the last append failed for lack
/// of space (a full disk makes the broker not ready, but it keeps serving reads).
#[derive(Debug)]
pub struct HealthSignals {
    disk_full: AtomicBool,
}

/// The health signals of this process.
pub static HEALTH: HealthSignals = HealthSignals {
    disk_full: AtomicBool::new(false),
};

impl HealthSignals {
    /// Records the outcome of an append: `true` when it failed with "no space left on
    /// device", `false` when it succeeded. Stores only on a change, so the steady state is
    /// one relaxed load.
    pub fn set_disk_full(&self, full: bool) {
        if self.disk_full.load(Ordering::Relaxed) != full {
            self.disk_full.store(full, Ordering::Relaxed);
        }
    }

    /// Whether the last append found the disk full.
    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Relaxed)
    }
}

/// What happened at start: how long opening (recovering) the logs and queues took.
#[derive(Debug)]
pub struct StartupMetrics {
    /// Microseconds the open took, plus one (0: not finished yet).
    recovery_micros: AtomicU64,
}

/// The startup metrics of this process.
pub static STARTUP: StartupMetrics = StartupMetrics {
    recovery_micros: AtomicU64::new(0),
};

impl StartupMetrics {
    /// Records how long the open at start took.
    pub fn record_recovery(&self, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX - 1);
        self.recovery_micros
            .store(micros.saturating_add(1), Ordering::Relaxed);
    }

    /// How long the open at start took, seconds; `None` while it runs.
    pub fn recovery_seconds(&self) -> Option<f64> {
        match self.recovery_micros.load(Ordering::Relaxed) {
            0 => None,
            // Micros of a start fit f64's 52-bit mantissa exactly for 142 years.
            #[allow(clippy::cast_precision_loss)]
            stored => Some((stored - 1) as f64 / 1_000_000.0),
        }
    }
}

/// The process's memory and file descriptors, from `/proc` (Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessSample {
    /// Resident set size, bytes (`VmRSS` of `/proc/self/status`).
    pub resident_bytes: Option<u64>,
    /// Open file descriptors (entries of `/proc/self/fd`).
    pub open_fds: Option<u64>,
}

/// Most entries of `/proc/self/fd` counted: the broker's own cap on open files is far below.
const OPEN_FDS_COUNTED_MAX: usize = 1_000_000;

/// Reads the process's RSS and open file descriptors from `/proc`; `None` where `/proc` is
/// not there. Blocking (procfs reads, though they stay in memory): call it off the runtime.
/// This is the one file access outside `storage`: procfs is the kernel's view of the
/// process, not broker data.
pub fn process_sample() -> ProcessSample {
    let resident_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| resident_from_status(&status));
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|entries| entries.take(OPEN_FDS_COUNTED_MAX).count() as u64);
    ProcessSample {
        resident_bytes,
        open_fds,
    }
}

/// The `VmRSS:   1234 kB` line of `/proc/self/status`, in bytes.
fn resident_from_status(status: &str) -> Option<u64> {
    status_bytes(status, "VmRSS:")
}

/// A `Key:   1234 kB` line of a procfs status or meminfo text, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(key))?;
    let kilobytes: u64 = line
        .trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kilobytes.checked_mul(1024)
}

/// The process's anonymous resident memory (`RssAnon` of `/proc/self/status`; `VmRSS` on
/// kernels without it), what the memory alarm compares with its watermark: the pages of
/// mapped segment files are page cache the kernel reclaims, so they do not count. `None`
/// without `/proc`. Blocking (a procfs read): call it off the runtime.
pub fn anonymous_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_bytes(&status, "RssAnon:").or_else(|| resident_from_status(&status))
}

/// The memory the broker may use: the machine's (`MemTotal` of `/proc/meminfo`), or its
/// cgroup's limit (`memory.max`, cgroup v2) when that is smaller. `None` without `/proc`.
pub fn memory_total_bytes() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| status_bytes(&meminfo, "MemTotal:"))?;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|limit| limit.trim().parse::<u64>().ok());
    Some(cgroup.map_or(machine, |cgroup| cgroup.min(machine)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_count_each_range_once_and_values_above_every_bound() {
        let histogram = Histogram::new(&COUNT_BOUNDS, 1.0);
        histogram.observe(1);
        histogram.observe(3);
        histogram.observe(3);
        histogram.observe(1_000_000);
        let sample = histogram.sample();
        assert_eq!(sample.count, 4);
        assert_eq!(sample.sum, 1_000_007.0);
        assert_eq!(sample.buckets[0], (1.0, 1));
        assert_eq!(sample.buckets[1], (2.0, 0));
        assert_eq!(sample.buckets[2], (4.0, 2));
        assert_eq!(sample.buckets[HISTOGRAM_BUCKETS - 1], (65536.0, 0));
        assert_eq!(sample.buckets[HISTOGRAM_BUCKETS], (f64::INFINITY, 1));
    }

    #[test]
    fn latency_histogram_renders_seconds() {
        let histogram = Histogram::new(&LATENCY_BOUNDS_NS, 1e-9);
        histogram.observe_duration(Duration::from_micros(20));
        let sample = histogram.sample();
        assert_eq!(sample.buckets[1].1, 1);
        assert!((sample.buckets[1].0 - 25e-6).abs() < 1e-12);
        assert!((sample.sum - 20e-6).abs() < 1e-12);
    }

    #[test]
    fn listener_counts_requests_by_api_and_error_and_clamps_unknown_slots() {
        let listener = ListenerMetrics::new();
        listener.connection_opened();
        listener.request(0, None, Duration::from_micros(5));
        listener.request(0, Some(3), Duration::from_millis(2));
        listener.request(9000, Some(9000), Duration::from_secs(9));
        listener.error(5, 4);
        listener.connection_closed();
        listener.connection_closed();
        let sample = listener.sample();
        assert_eq!(sample.connections_open, 0);
        assert_eq!(sample.connections_total, 1);
        let apis: Vec<u16> = sample.apis.iter().map(|api| api.api).collect();
        assert_eq!(apis, vec![0, 5, 127]);
        let first = &sample.apis[0];
        assert_eq!(first.latency.count, 2);
        assert_eq!(first.latency.buckets[0].1, 1, "5 us in the first bucket");
        assert_eq!(first.errors, vec![(3, 1)]);
        // An error counted outside a timed request shows with no request.
        assert_eq!(sample.apis[1].latency.count, 0);
        assert_eq!(sample.apis[1].errors, vec![(4, 1)]);
        let last = &sample.apis[2];
        assert_eq!(last.latency.count, 1);
        assert_eq!(
            last.latency.buckets[HISTOGRAM_BUCKETS - 1].1,
            0,
            "9 s is above 2.5 s"
        );
        assert_eq!(last.latency.buckets[HISTOGRAM_BUCKETS].1, 1);
        assert_eq!(last.errors, vec![(127, 1)]);
    }

    #[test]
    fn requests_handled_together_count_each_with_its_share() {
        let listener = ListenerMetrics::new();
        listener.requests(60, 4, Duration::from_micros(5));
        listener.request(60, None, Duration::from_millis(2));
        let sample = listener.sample();
        let api = &sample.apis[0];
        assert_eq!(api.api, 60);
        assert_eq!(api.latency.count, 5);
        assert_eq!(
            api.latency.buckets[0].1, 4,
            "four of 5 us in the first bucket"
        );
        assert!((api.latency.sum - (20e-6 + 2e-3)).abs() < 1e-12);
    }

    #[test]
    fn bytes_flushed_accumulate() {
        let storage = StorageMetrics {
            append_seconds: Histogram::new(&LATENCY_BOUNDS_NS, 1e-9),
            fsync_seconds: Histogram::new(&LATENCY_BOUNDS_NS, 1e-9),
            group_commit_records: Histogram::new(&COUNT_BOUNDS, 1.0),
            bytes_flushed: AtomicU64::new(0),
        };
        storage.count_flushed(100);
        storage.count_flushed(23);
        assert_eq!(storage.bytes_flushed(), 123);
    }

    #[test]
    fn resident_bytes_come_from_the_vmrss_line() {
        let status = "Name:\twharfd\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\nRssAnon:\t  1024 kB\n";
        assert_eq!(status_bytes(status, "RssAnon:"), Some(1024 * 1024));
        assert_eq!(status_bytes(status, "RssFile:"), None);
        assert_eq!(resident_from_status(status), Some(2048 * 1024));
        assert_eq!(resident_from_status("Name: x\n"), None);
    }

    #[test]
    fn process_sample_reads_proc_on_linux() {
        let sample = process_sample();
        assert!(sample.resident_bytes.unwrap_or(0) > 0);
        assert!(sample.open_fds.unwrap_or(0) > 0);
    }
}
