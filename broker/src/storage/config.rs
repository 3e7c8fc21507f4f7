//! Per-partition log configuration: segment sizes, index density, retention and the flush
//! policy. Every limit explains its value.

use crate::storage::error::{Error, Result};

/// Largest allowed segment: positions in the offset index are u32 and Kafka caps segments at
/// `i32::MAX` bytes, so a segment never outgrows what an index entry can address.
pub const SEGMENT_BYTES_MAX_LIMIT: u64 = i32::MAX as u64;

/// Smallest allowed segment: small enough for tests to roll often. A batch larger than the
/// segment still fits: a fresh segment always takes one batch, whatever its size.
pub const SEGMENT_BYTES_MIN_LIMIT: u64 = 64 * 1024;

/// Default for [`LogConfig::preallocate_ahead_bytes`]: measured on ext4 (docs/BENCHMARKS.md),
/// a loop of 100 KB `pwrite`s into blocks reserved 4 MiB ahead ran about a fifth faster than
/// one that allocated as it went (1 and 2 MiB were not reliably as fast), with one
/// `fallocate` per 40 such writes. Each busy partition pins at most this much unused disk.
pub const PREALLOCATE_AHEAD_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;

/// When an acknowledgement that asks for durability may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append is fsynced before it is acknowledged as durable; concurrent appends share
    /// one fsync (group commit). The high watermark only covers fsynced data, so consumers
    /// never read what a power loss could take back.
    Always,
    /// fsync every `interval_ms`; acknowledgements do not wait for it.
    Interval { interval_ms: u64 },
    /// Never fsync except when a segment rolls or the log closes; leave it to the OS.
    Never,
}

/// Whether reads check each batch's CRC before serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadVerify {
    /// Check length, magic, offset continuity and CRC-32C of every batch served. A corrupt
    /// batch is refused with an error, never served.
    Crc,
    /// Check only the header chain (length, magic, offset continuity).
    Headers,
}

/// What happens to old records (Kafka's `cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanupPolicy {
    /// Whole segments are deleted by age and size (`retention.ms`, `retention.bytes`).
    #[default]
    Delete,
    /// The cleaner keeps the latest record of every key; nothing is deleted by age or size.
    Compact,
    /// Both: compacted, and whole segments still deleted by age and size.
    CompactDelete,
}

impl CleanupPolicy {
    /// Whether retention deletes segments by age and size.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    /// Whether the cleaner compacts the log.
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    /// Kafka's spelling: `delete`, `compact` or `compact,delete`.
    pub fn name(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// Parses Kafka's spellings (a comma list of `delete` and `compact`, in any order).
    pub fn parse(value: &str) -> Option<CleanupPolicy> {
        let mut delete = false;
        let mut compact = false;
        for part in value.split(',') {
            match part.trim() {
                "delete" => delete = true,
                "compact" => compact = true,
                _ => return None,
            }
        }
        match (compact, delete) {
            (false, true) => Some(CleanupPolicy::Delete),
            (true, false) => Some(CleanupPolicy::Compact),
            (true, true) => Some(CleanupPolicy::CompactDelete),
            (false, false) => None,
        }
    }
}

/// A compacted log's knobs, under Kafka's meanings (topic configs of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionConfig {
    /// `min.cleanable.dirty.ratio` in thousandths (Kafka's default 0.5 = 500): the cleaner
    /// takes a log once the records not yet cleaned are at least this share of its cleanable
    /// bytes.
    pub min_cleanable_dirty_ratio_permille: u32,
    /// `min.compaction.lag.ms`: a record stays uncompacted at least this long after it was
    /// written (its segment's newest timestamp is at least this old).
    pub min_compaction_lag_ms: u64,
    /// `max.compaction.lag.ms`: a log whose oldest uncleaned segment is older than this is
    /// cleaned whatever its dirty ratio (None: no bound, Kafka's default).
    pub max_compaction_lag_ms: Option<u64>,
    /// `delete.retention.ms`: a tombstone (a null value) is kept this long after its
    /// timestamp, so consumers that read the log slowly still see the delete.
    pub delete_retention_ms: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            min_cleanable_dirty_ratio_permille: 500,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: None,
            delete_retention_ms: 24 * 3600 * 1000,
        }
    }
}

/// Configuration of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would exceed this many bytes.
    pub segment_bytes_max: u64,
    /// Roll to a new segment when the active one is older than this (None: never by age).
    pub segment_age_ms_max: Option<u64>,
    /// Add an offset index entry every this many bytes of log (a read scans at most this much
    /// before it finds its batch).
    pub index_interval_bytes: u32,
    /// Most bytes each index file grows to (they start at 4 KiB and grow on demand); a
    /// segment rolls when an index reaches it.
    pub index_bytes_max: u32,
    /// Delete sealed segments whose newest record is older than this (None: keep forever).
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger than this (None: no limit).
    pub retention_bytes: Option<u64>,
    /// When durable acknowledgements may be given.
    pub flush: FlushPolicy,
    /// What reads verify before serving bytes.
    pub read_verify: ReadVerify,
    /// Disk blocks reserved ahead of the active segment's end, without growing the file
    /// (0: none). A young segment reserves about as much as it already holds (at least
    /// 64 KiB), so a quiet partition pins little disk; sealing a segment releases what it did
    /// not use. In all, a broker pins up to this much per partition written to since its
    /// segment rolled: plan free disk for it, or set 0 on disks that run nearly full.
    pub preallocate_ahead_bytes: u64,
    /// Delete old segments, compact, or both.
    pub cleanup: CleanupPolicy,
    /// How a compacted log is cleaned.
    pub compaction: CompactionConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1024 * 1024 * 1024,
            segment_age_ms_max: Some(7 * 24 * 3600 * 1000),
            index_interval_bytes: 4096,
            index_bytes_max: 10 * 1024 * 1024,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::Always,
            read_verify: ReadVerify::Crc,
            preallocate_ahead_bytes: PREALLOCATE_AHEAD_BYTES_DEFAULT,
            cleanup: CleanupPolicy::Delete,
            compaction: CompactionConfig::default(),
        }
    }
}

impl LogConfig {
    /// Checks every field against its limits.
    ///
    /// # Errors
    /// `Error::Config` naming the first field out of range.
    pub fn validate(&self) -> Result<()> {
        let fail = |reason: String| Err(Error::Config { reason });
        if !(SEGMENT_BYTES_MIN_LIMIT..=SEGMENT_BYTES_MAX_LIMIT).contains(&self.segment_bytes_max) {
            return fail(format!(
                "segment_bytes_max {} outside [{}, {}]",
                self.segment_bytes_max, SEGMENT_BYTES_MIN_LIMIT, SEGMENT_BYTES_MAX_LIMIT
            ));
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes must be positive".to_string());
        }
        if self.index_bytes_max < 1024 {
            return fail(format!(
                "index_bytes_max {} is below 1024",
                self.index_bytes_max
            ));
        }
        if self.preallocate_ahead_bytes > SEGMENT_BYTES_MAX_LIMIT {
            return fail(format!(
                "preallocate_ahead_bytes {} is above {}",
                self.preallocate_ahead_bytes, SEGMENT_BYTES_MAX_LIMIT
            ));
        }
        if self.compaction.min_cleanable_dirty_ratio_permille > 1000 {
            return fail(format!(
                "min_cleanable_dirty_ratio {} is above 1",
                f64::from(self.compaction.min_cleanable_dirty_ratio_permille) / 1000.0
            ));
        }
        if let FlushPolicy::Interval { interval_ms: 0 } = self.flush {
            return fail("flush interval_ms must be positive".to_string());
        }
        Ok(())
    }
}
