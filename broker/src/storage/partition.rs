//! A partition log: an ordered list of segments with one writer, many readers, group-commit
//! durability, roll, retention and recovery.
//!
//! Write path (numbered as in docs/ARCHITECTURE.md):
//! 1. `append` validates every batch (length, magic, CRC-32C) before taking the writer lock.
//! 2. Under the writer lock it rolls the active segment if needed, patches each batch's base
//!    offset (outside the CRC), and writes all batches with one positioned write.
//! 3. It publishes the new end (segment bytes, then the log end offset).
//! 4. With `FlushPolicy::Always` it asks the flusher for an fsync; the flusher fsyncs once for
//!    everything appended so far and then advances the durable offset and the high
//!    watermark, waking every waiter the fsync covered (group commit).
//!
//! Invariants: offsets are contiguous across segments (a segment's base offset is the end of
//! the previous one); `log_start ≤ high_watermark ≤ log_end`; after an fsync failure the
//! partition refuses every write and never advances the durable offset again.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wharf_protocol::batch::{self, BatchHeader};

use crate::metrics::{self, LogTraffic};
use crate::storage::checkpoint;
use crate::storage::clock::Clock;
use crate::storage::config::{CleanupPolicy, CompactionConfig, FlushPolicy, LogConfig};
use crate::storage::error::{Error, Result};
use crate::storage::flusher::Flusher;
use crate::storage::fs::Fs;
use crate::storage::segment::{self, KnownEpochs, Segment};
use crate::storage::watch::{WaitError, Watch};

mod cleaner;
mod epochs;
mod truncate;
pub use cleaner::{
    CleanInputs, CleanReport, DirtyView, CLEANER_POINT_FILE, CLEANING_DIR,
    MAP_ENTRY_OVERHEAD_BYTES, SWAP_FILE,
};
pub use epochs::{EpochStart, LeaderEpochs, LEADER_EPOCHS_FILE};
pub use truncate::{
    read_replica_checkpoint, truncate_closed, write_replica_checkpoint, ReplicaCheckpoint,
    REPLICA_CHECKPOINT_FILE,
};

/// Name of the clean-shutdown marker in a partition directory.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
const CLEAN_SHUTDOWN_MAGIC: [u8; 4] = *b"WCLN";
const CLEAN_SHUTDOWN_VERSION: u16 = 1;
const CLEAN_SHUTDOWN_PAYLOAD_BYTES: usize = 24;

/// Name of the recovery-point file in a partition directory: the base offset below which
/// every segment is sealed and fsynced. Recovery may cut segments from there on.
pub const RECOVERY_POINT_FILE: &str = "recovery-point";
const RECOVERY_POINT_MAGIC: [u8; 4] = *b"WRCP";
const RECOVERY_POINT_VERSION: u16 = 1;
const RECOVERY_POINT_PAYLOAD_BYTES: usize = 8;

/// Name of the log-start file in a partition directory: the log start offset that a
/// DeleteRecords moved past the first stored offset (records below it are gone for readers
/// even where their segment still holds them).
pub const LOG_START_FILE: &str = "log-start";
const LOG_START_MAGIC: [u8; 4] = *b"WLST";
const LOG_START_VERSION: u16 = 1;
const LOG_START_PAYLOAD_BYTES: usize = 8;

/// The partition leader epoch of every batch of a partition that is not replicated.
pub use wharf_protocol::batch::NO_PARTITION_LEADER_EPOCH;

/// The services a partition uses: file system, clock and the shared flusher.
#[derive(Debug, Clone)]
pub struct StorageEnv {
    /// Where files live.
    pub fs: Arc<dyn Fs>,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// The background fsync service.
    pub flusher: Flusher,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// The log end offset after the append; wait for durability up to here.
    pub next_offset: i64,
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole batches, possibly empty.
    pub bytes: Bytes,
    /// The high watermark when the read happened.
    pub high_watermark: i64,
    /// The log start offset when the read happened.
    pub log_start_offset: i64,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments_deleted: usize,
    /// Bytes freed.
    pub bytes_deleted: u64,
    /// The log start offset afterwards.
    pub log_start_offset: i64,
}

#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
    closed: bool,
    /// Bytes appended since the partition was opened (for the bytes-flushed metric).
    appended_bytes: u64,
}

/// Segments rolled but not yet sealed, and the recovery point as written.
#[derive(Debug)]
struct Rolled {
    /// Oldest first. Only `FlushPolicy::Never | Interval` rolls leave their seal (the fsync of
    /// everything the segment holds) to the flusher, so appends do not wait for it.
    segments: Vec<Arc<Segment>>,
    /// What `RECOVERY_POINT_FILE` holds (None: no file, which means the newest segment's
    /// base). Every segment below it is sealed.
    recovery_point: Option<i64>,
}

/// The fields of [`LogConfig`] that may change while a partition is open: each is read
/// afresh at every roll check or retention pass, and none shapes a file already written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLimits {
    /// As `LogConfig::segment_bytes_max`.
    pub segment_bytes_max: u64,
    /// As `LogConfig::segment_age_ms_max`.
    pub segment_age_ms_max: Option<u64>,
    /// As `LogConfig::retention_ms`.
    pub retention_ms: Option<u64>,
    /// As `LogConfig::retention_bytes`.
    pub retention_bytes: Option<u64>,
    /// As `LogConfig::cleanup`.
    pub cleanup: CleanupPolicy,
    /// As `LogConfig::compaction`.
    pub compaction: CompactionConfig,
}

impl LiveLimits {
    fn of(config: &LogConfig) -> LiveLimits {
        LiveLimits {
            segment_bytes_max: config.segment_bytes_max,
            segment_age_ms_max: config.segment_age_ms_max,
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            cleanup: config.cleanup,
            compaction: config.compaction,
        }
    }
}

/// One partition's log.
#[derive(Debug)]
pub struct Partition {
    dir: PathBuf,
    config: LogConfig,
    /// The roll and retention limits, which an operator may change while the partition is
    /// open (`Partition::set_limits`); `config` keeps the values it was opened with.
    limits: RwLock<LiveLimits>,
    env: StorageEnv,
    writer: Mutex<Writer>,
    segments: RwLock<BTreeMap<i64, Arc<Segment>>>,
    log_start: AtomicI64,
    log_end: AtomicI64,
    /// Taken after the writer lock or the sync lock when either is held, and held across
    /// writes of the recovery point (small) but never across the fsync of a segment.
    rolled: Mutex<Rolled>,
    /// Value: the high watermark. Consumers wait on it for new data.
    high_watermark: Arc<Watch>,
    /// Value: every offset below it is fsynced.
    durable: Arc<Watch>,
    failure: Mutex<Option<String>>,
    /// Held across every fsync of the log's data and the recording of its outcome, so a
    /// failed fsync is recorded before the next one starts: on Linux a writeback error is
    /// reported to one fsync caller only, and a concurrent fsync's success must not
    /// acknowledge data the failed one lost (rule 3, fsyncgate). Taken after the writer lock
    /// when both are held; never held while waiting for the writer lock.
    sync_lock: Mutex<()>,
    flush_requested: AtomicBool,
    last_flush: Mutex<Instant>,
    /// Records and bytes in and out, counted by the append and fetch paths (atomics).
    traffic: LogTraffic,
    /// `Writer::appended_bytes` as of the last successful fsync of `flush`.
    flushed_bytes: AtomicU64,
    /// Held by whoever removes or replaces sealed segments (retention, DeleteRecords, the
    /// cleaner's swap), never across a cleaner's reads and writes. Taken after the writer
    /// lock when both are held; the cleaner never takes the writer lock.
    maintenance: Mutex<()>,
    /// Offsets below it were cleaned against every later key (the cleaner point).
    cleaner_point: AtomicI64,
    /// Set by `close`: the cleaner swaps nothing in from then on.
    closing: AtomicBool,
    /// Where each leader epoch starts; appends stamp the current one. A leaf lock: taken
    /// last (after the writer lock when an append changes it) and held only briefly.
    epochs: Mutex<LeaderEpochs>,
}

/// Whether an append asks the flusher for the fsync that covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushRequest {
    /// As the flush policy says (an fsync under `FlushPolicy::Always`).
    Now,
    /// No request of its own: the next fsync covers it.
    WithNextFsync,
}

/// The partition leader epoch an append writes into its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// The current epoch (`LeaderEpochs::current`).
    Current,
    /// Each batch's own (records another replica stored); newer epochs start where they do.
    Kept,
}

impl Partition {
    /// Opens (or creates) the partition in `dir`, recovering it if it was not closed cleanly.
    ///
    /// # Errors
    /// `Error::Config` for a bad config, `Error::Io` if files cannot be read, created or
    /// synced. Corruption in sealed segments is logged and refused on read, not returned.
    pub fn open(dir: &Path, config: LogConfig, env: StorageEnv) -> Result<Arc<Partition>> {
        config.validate()?;
        let fs = env.fs.as_ref();
        if !fs.is_dir(dir) {
            crate::storage::fs::create_dir_durable(fs, dir)?;
        }
        let started = Instant::now();
        // A replicated log holds only what its checkpoint proves applied: the rest is
        // applied again from the raft log (cluster/replica.rs).
        if let Some(checkpoint) = read_replica_checkpoint(fs, dir)? {
            truncate_closed(dir, checkpoint.position, &config, &env)?;
        }
        cleaner::recover(fs, dir)?;
        let cleaner_point = cleaner::read_cleaner_point(fs, dir)?;
        let marker = take_clean_marker(fs, dir)?;
        let clean = marker.is_some();
        let recovery_point = read_recovery_point(fs, dir)?;
        let mut epochs = LeaderEpochs::read(fs, dir)?;
        let known: Vec<i32> = epochs.starts().iter().map(|start| start.epoch).collect();
        let segments = open_segments(
            fs,
            dir,
            &config,
            (env.clock.now_ms(), KnownEpochs(&known)),
            marker,
            recovery_point,
        )?;
        let stored_first = segments
            .values()
            .next()
            .expect("open_segments returns at least one segment")
            .base_offset();
        let active = segments
            .values()
            .next_back()
            .expect("open_segments returns at least one segment")
            .clone();
        let end = active.next_offset();
        // Records a DeleteRecords removed stay gone; never past the end (a truncated log).
        let first = match read_log_start(fs, dir)? {
            Some(deleted_below) => deleted_below.clamp(stored_first, end),
            None => stored_first,
        };
        if epochs.cut(end) {
            epochs.write(fs, dir)?;
        }
        let active_base = active.base_offset();
        // Recovery sealed every segment below the active one: say so, if the file says less.
        // Under `flush = always` (rolls seal inline) a file left from a run under another
        // policy would go stale as segments roll and let a later recovery cut sealed
        // segments: remove it.
        let recovery_point = match recovery_point {
            Some(_) if config.flush == FlushPolicy::Always => {
                remove_recovery_point(fs, dir)?;
                None
            }
            Some(point) if point != active_base => {
                write_recovery_point(fs, dir, active_base)?;
                Some(active_base)
            }
            other => other,
        };
        let partition = Arc::new(Partition {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer {
                active,
                closed: false,
                appended_bytes: 0,
            }),
            epochs: Mutex::new(epochs),
            segments: RwLock::new(segments),
            rolled: Mutex::new(Rolled {
                segments: Vec::new(),
                recovery_point,
            }),
            log_start: AtomicI64::new(first),
            log_end: AtomicI64::new(end),
            high_watermark: Arc::new(Watch::new(end)),
            durable: Arc::new(Watch::new(end)),
            failure: Mutex::new(None),
            sync_lock: Mutex::new(()),
            flush_requested: AtomicBool::new(false),
            last_flush: Mutex::new(Instant::now()),
            traffic: LogTraffic::default(),
            flushed_bytes: AtomicU64::new(0),
            maintenance: Mutex::new(()),
            cleaner_point: AtomicI64::new(cleaner_point),
            closing: AtomicBool::new(false),
            limits: RwLock::new(LiveLimits::of(&config)),
            config,
            env,
        });
        if let FlushPolicy::Interval { .. } = partition.config.flush {
            partition.env.flusher.register_interval(&partition);
        }
        if clean {
            tracing::debug!(partition = %dir.display(), log_start = first, log_end = end, "partition opened");
        } else {
            // Truncations and index rebuilds were logged as they happened (WARN).
            let segments = partition.segment_count();
            let scanned_bytes = partition.lock_writer().active.valid_bytes();
            tracing::info!(
                partition = %dir.display(),
                segments,
                scanned_bytes,
                log_start = first,
                log_end = end,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "recovered after an unclean shutdown"
            );
        }
        Ok(partition)
    }

    /// The partition's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The partition's configuration as opened (the roll and retention limits in force are
    /// [`Partition::limits`]).
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The roll and retention limits in force.
    pub fn limits(&self) -> LiveLimits {
        *self
            .limits
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Changes the roll and retention limits of an open partition to those of `config` (its
    /// other fields need a reopen and are ignored): the next append judges a roll, and the
    /// next retention pass deletes, by the new values.
    pub fn set_limits(&self, config: &LogConfig) {
        *self
            .limits
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = LiveLimits::of(config);
    }

    /// The first offset still stored.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start.load(Ordering::Acquire)
    }

    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end.load(Ordering::Acquire)
    }

    /// The end of what consumers may read: the log end offset, or with
    /// `FlushPolicy::Always` the durable offset.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.value()
    }

    /// Every offset below this is fsynced.
    pub fn durable_offset(&self) -> i64 {
        self.durable.value()
    }

    /// The log's traffic counters (records and bytes in and out; issue #17's metrics).
    pub fn traffic(&self) -> &LogTraffic {
        &self.traffic
    }

    /// Why the partition refuses writes, if it does.
    pub fn failure(&self) -> Option<String> {
        self.lock_failure().clone()
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.segments_read().len()
    }

    /// Total bytes of valid batches across all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments_read()
            .values()
            .map(|segment| segment.valid_bytes())
            .sum()
    }

    /// Base offsets of all segments, in order.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.segments_read().keys().copied().collect()
    }

    fn segments_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<i64, Arc<Segment>>> {
        self.segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock_rolled(&self) -> MutexGuard<'_, Rolled> {
        self.rolled
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock_sync(&self) -> MutexGuard<'_, ()> {
        self.sync_lock
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock_maintenance(&self) -> MutexGuard<'_, ()> {
        self.maintenance
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn lock_failure(&self) -> MutexGuard<'_, Option<String>> {
        self.failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// `Error::Failed` with the reason if the partition failed (rule 3).
    fn ensure_not_failed(&self) -> Result<()> {
        match self.failure() {
            Some(reason) => Err(Error::Failed {
                partition: self.dir.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    fn check_writable(&self, writer: &Writer) -> Result<()> {
        self.ensure_not_failed()?;
        if writer.closed {
            return Err(Error::Closed {
                partition: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Appends one or more whole record batches, concatenated, with one write. Each batch is
    /// validated (length, magic, CRC-32C) first; its base offset and partition leader epoch
    /// are patched in `batches` (both lie outside the CRC). Durability depends on the policy:
    /// await [`Partition::wait_durable`] with the returned `next_offset` before acknowledging
    /// an acks=all request.
    ///
    /// # Errors
    /// `Error::InvalidBatch` (nothing written), `Error::Io` if the write fails (nothing
    /// published; the log stays readable), `Error::Failed` after an fsync failure,
    /// `Error::Closed` after close.
    pub fn append(self: &Arc<Self>, batches: &mut [u8]) -> Result<Appended> {
        self.append_requesting(batches, FlushRequest::Now, Stamp::Current)
    }

    /// Like [`Partition::append`] for batches another replica of the partition stored:
    /// each keeps the leader epoch it carries, and an epoch newer than the current one
    /// starts at its first batch (recorded before the batches are written).
    ///
    /// # Errors
    /// As for [`Partition::append`], and the epoch file's write.
    pub fn append_keeping_epochs(self: &Arc<Self>, batches: &mut [u8]) -> Result<Appended> {
        self.append_requesting(batches, FlushRequest::Now, Stamp::Kept)
    }

    /// Starts leader epoch `epoch` at the log end (a replica applying the first entry of a
    /// raft term): later appends carry it. Returns false, writing nothing, when it is not
    /// newer than the current epoch. The epoch file is rewritten (fsynced) first.
    ///
    /// # Errors
    /// The partition is closed or failed, or the epoch file's write failed.
    pub fn start_epoch(&self, epoch: i32) -> Result<bool> {
        // Most calls (every applied entry) find the epoch started: no lock but this one.
        if epoch <= self.lock_epochs().current() {
            return Ok(false);
        }
        let writer = self.lock_writer();
        self.check_writable(&writer)?;
        let at = writer.active.next_offset();
        let mut epochs = self.lock_epochs();
        if epoch <= epochs.current() {
            return Ok(false);
        }
        let mut started = epochs.clone();
        started.start(epoch, at);
        started.write(self.env.fs.as_ref(), &self.dir)?;
        *epochs = started;
        Ok(true)
    }

    /// Where each leader epoch starts (empty for a partition that is not replicated).
    pub fn leader_epochs(&self) -> LeaderEpochs {
        self.lock_epochs().clone()
    }

    /// Kafka's OffsetForLeaderEpoch answer for `requested` (`LeaderEpochs::end_offset_for`
    /// against the log end).
    pub fn epoch_end_offset(&self, requested: i32) -> (i32, i64) {
        let writer = self.lock_writer();
        let end = writer.active.next_offset();
        self.lock_epochs().end_offset_for(requested, end)
    }

    fn lock_epochs(&self) -> MutexGuard<'_, LeaderEpochs> {
        self.epochs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Like [`Partition::append`], but asks the flusher for no fsync under
    /// `FlushPolicy::Always`: the batches become durable with the next fsync another append
    /// (or a flush, or a close) asks for. For records that only need to survive a process
    /// crash (they are in the page cache at once) and must not cost an fsync of their own.
    /// Never wait for their durability: nothing may ask for the fsync that would cover them.
    ///
    /// # Errors
    /// As for [`Partition::append`].
    pub fn append_without_fsync(self: &Arc<Self>, batches: &mut [u8]) -> Result<Appended> {
        self.append_requesting(batches, FlushRequest::WithNextFsync, Stamp::Current)
    }

    fn append_requesting(
        self: &Arc<Self>,
        batches: &mut [u8],
        flush: FlushRequest,
        stamp: Stamp,
    ) -> Result<Appended> {
        let mut headers = split_batches(batches, stamp)?;
        let incoming_bytes = batches.len() as u64;
        let mut writer = self.lock_writer();
        self.check_writable(&writer)?;
        let base_offset = writer.active.next_offset();
        let mut next = base_offset;
        let mut epochs = self.lock_epochs();
        let current_epoch = epochs.current();
        let mut kept = None::<LeaderEpochs>;
        for (within, header) in headers.iter_mut() {
            let slice = &mut batches[*within..*within + header.total_bytes()];
            if stamp == Stamp::Kept && header.base_offset != next {
                return Err(Error::NotContinuous {
                    expected: next,
                    found: header.base_offset,
                });
            }
            batch::set_base_offset(slice, next);
            header.base_offset = next;
            match stamp {
                Stamp::Current => {
                    batch::set_partition_leader_epoch(slice, current_epoch);
                    header.partition_leader_epoch = current_epoch;
                }
                Stamp::Kept => {
                    let known = kept.get_or_insert_with(|| (*epochs).clone());
                    known.start(header.partition_leader_epoch, next);
                }
            }
            next = header.next_offset();
        }
        if let Some(mut started) = kept.filter(|kept| kept.starts() != epochs.starts()) {
            // Before the batches: the file never misses an epoch a stored batch carries.
            started.write(self.env.fs.as_ref(), &self.dir)?;
            *epochs = started;
        }
        drop(epochs);
        let last_offset = next - 1;
        let mut deferred_seal = false;
        if self.should_roll(&writer.active, incoming_bytes, last_offset) {
            deferred_seal = self.roll(&mut writer)?;
        }
        if let Err(error) = writer.active.append(batches, &headers, &self.config) {
            // Nothing was published; the caller answers the error. Logged here because the
            // operator must act on a full disk, and it is per failed request, not per record.
            tracing::warn!(
                partition = %self.dir.display(),
                bytes = incoming_bytes,
                disk_full = error.is_disk_full(),
                %error,
                "append failed"
            );
            return Err(error);
        }
        writer.appended_bytes += incoming_bytes;
        self.log_end.store(next, Ordering::Release);
        if self.config.flush != FlushPolicy::Always {
            self.high_watermark.advance(next);
        }
        drop(writer);
        let asks_fsync = self.config.flush == FlushPolicy::Always && flush == FlushRequest::Now;
        if asks_fsync || deferred_seal {
            self.request_flush();
        }
        Ok(Appended {
            base_offset,
            last_offset,
            next_offset: next,
        })
    }

    fn should_roll(&self, active: &Segment, incoming_bytes: u64, last_offset: i64) -> bool {
        let used = active.valid_bytes();
        if used == 0 {
            return false;
        }
        let limits = self.limits();
        let full = used + incoming_bytes > limits.segment_bytes_max;
        let old = limits.segment_age_ms_max.is_some_and(|age_max| {
            self.env.clock.now_ms().saturating_sub(active.created_ms()) >= age_max as i64
        });
        full || old || active.indexes_full() || active.offset_would_overflow(last_offset)
    }

    /// Starts a new segment at the log end offset. With `FlushPolicy::Always` it seals the
    /// old one first (little is unsynced there); otherwise the old one holds everything
    /// appended since it was created, so its seal is left to the flusher (returns true: the
    /// caller asks for a flush), after the recovery point is moved back to it so that a crash
    /// before the seal may cut it like an active segment.
    fn roll(&self, writer: &mut Writer) -> Result<bool> {
        let old = writer.active.clone();
        let base = old.next_offset();
        let deferred = self.config.flush != FlushPolicy::Always;
        if deferred {
            // Not under the sync lock: a seal in progress must not hold up the roll.
            let mut rolled = self.lock_rolled();
            if rolled
                .recovery_point
                .is_none_or(|point| point > old.base_offset())
            {
                // Before the new segment exists, so recovery never takes the old one for
                // sealed.
                if let Err(error) =
                    write_recovery_point(self.env.fs.as_ref(), &self.dir, old.base_offset())
                {
                    self.fail(&format!("writing the recovery point failed: {error}"));
                    return Err(error);
                }
                rolled.recovery_point = Some(old.base_offset());
            }
        }
        let fs = self.env.fs.as_ref();
        let now_ms = self.env.clock.now_ms();
        // The new segment first: if it cannot be created for a full disk, nothing has
        // changed and the old segment stays active, so the append fails and a later one
        // retries the roll. (A recovery point written above only says what is true of the active segment
        // anyway: it may hold unsynced data.)
        let created = match Segment::create(fs, &self.dir, base, &self.config, now_ms) {
            Ok(created) => created,
            Err(error) if error.is_disk_full() => {
                tracing::warn!(partition = %self.dir.display(), base_offset = base, %error, "disk full: cannot create the next segment; appends fail until there is room");
                return Err(error);
            }
            Err(error) => {
                // Anything else (a failed msync of the new index, an I/O error) is not a
                // condition that passes: refuse writes and say why.
                self.fail(&format!("creating segment failed: {error}"));
                return Err(error);
            }
        };
        if deferred {
            self.lock_rolled().segments.push(old.clone());
        } else {
            let _sync = self.lock_sync();
            if let Err(error) = old.seal() {
                // The seal fsyncs the log: a failure is an fsync failure (rule 3).
                self.fail(&format!("sealing segment failed: {error}"));
                return Err(error);
            }
            self.advance_durable(base);
        }
        if let Err(source) = fs.sync_dir(&self.dir) {
            let error = Error::io("sync directory", &self.dir, source);
            self.fail(&format!("directory fsync after roll failed: {error}"));
            return Err(error);
        }
        let created = Arc::new(created);
        self.segments
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(base, created.clone());
        writer.active = created;
        tracing::debug!(partition = %self.dir.display(), base_offset = base, deferred, "segment rolled");
        Ok(deferred)
    }

    /// Seals the rolled segments waiting for it, oldest first, then moves the recovery point
    /// past them. The caller holds the sync lock.
    fn seal_rolled(&self, _sync: &MutexGuard<'_, ()>) -> Result<()> {
        let mut sealed_end = None;
        loop {
            let Some(segment) = self.lock_rolled().segments.first().cloned() else {
                break;
            };
            if let Err(error) = segment.seal() {
                // The seal fsyncs the log: a failure is an fsync failure (rule 3).
                return Err(self.fail_with(format!("sealing a rolled segment failed: {error}")));
            }
            self.lock_rolled().segments.remove(0);
            self.advance_durable(segment.next_offset());
            sealed_end = Some(segment.next_offset());
        }
        let Some(sealed_end) = sealed_end else {
            return Ok(());
        };
        // Everything below the oldest segment still unsealed (one a roll queued meanwhile,
        // else the one after the last sealed) is sealed now.
        let point = {
            let rolled = self.lock_rolled();
            let point = rolled
                .segments
                .first()
                .map_or(sealed_end, |segment| segment.base_offset());
            if rolled
                .recovery_point
                .is_some_and(|written| written >= point)
            {
                return Ok(());
            }
            point
        };
        // Written without the rolled lock, so a roll never waits for these fsyncs. Only this
        // (under the sync lock) moves the point forward, never past the active segment's
        // base, and a concurrent roll writes only where there is no file yet.
        if let Err(error) = write_recovery_point(self.env.fs.as_ref(), &self.dir, point) {
            // Its fsyncs failed: rule 3, as for any fsync of the log's files.
            return Err(self.fail_with(format!("moving the recovery point failed: {error}")));
        }
        let mut rolled = self.lock_rolled();
        rolled.recovery_point = Some(
            rolled
                .recovery_point
                .map_or(point, |written| written.max(point)),
        );
        Ok(())
    }

    /// [`Partition::fail`], returning the `Error::Failed` to report.
    fn fail_with(&self, reason: String) -> Error {
        self.fail(&reason);
        Error::Failed {
            partition: self.dir.clone(),
            reason,
        }
    }

    /// What a flusher does when the partition asked for it: with `FlushPolicy::Never` only
    /// the seals of rolled segments, otherwise a full [`Partition::flush`].
    pub(crate) fn flush_on_request(&self) -> Result<()> {
        if self.config.flush != FlushPolicy::Never {
            return self.flush();
        }
        let sync = self.lock_sync();
        self.ensure_not_failed()?;
        self.seal_rolled(&sync)
    }

    /// Rolls the active segment now if it holds any data (for tests and admin tools).
    ///
    /// # Errors
    /// As for append.
    pub fn roll_now(self: &Arc<Self>) -> Result<()> {
        let mut writer = self.lock_writer();
        self.check_writable(&writer)?;
        if writer.active.valid_bytes() == 0 {
            return Ok(());
        }
        let deferred_seal = self.roll(&mut writer)?;
        drop(writer);
        if deferred_seal {
            self.request_flush();
        }
        Ok(())
    }

    fn request_flush(self: &Arc<Self>) {
        if !self.flush_requested.swap(true, Ordering::AcqRel) {
            if self.config.flush == FlushPolicy::Never {
                self.env.flusher.request_seal(self);
            } else {
                self.env.flusher.request(self);
            }
        }
    }

    /// Called by the flusher before it flushes: later appends must ask again.
    pub(crate) fn take_flush_request(&self) {
        self.flush_requested.store(false, Ordering::Release);
    }

    /// True if appended data is not yet fsynced.
    pub fn is_dirty(&self) -> bool {
        self.log_end_offset() > self.durable_offset()
    }

    pub(crate) fn since_last_flush(&self) -> Duration {
        self.last_flush
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .elapsed()
    }

    /// fsyncs everything appended so far and advances the durable offset (and, with
    /// `FlushPolicy::Always`, the high watermark). One call covers every append that
    /// finished before it started: this is the group commit.
    ///
    /// # Errors
    /// `Error::Failed` if the fsync fails (the partition then refuses writes for good) or
    /// failed before.
    pub fn flush(&self) -> Result<()> {
        let (target, target_bytes, file, segment_path) = {
            let writer = self.lock_writer();
            self.ensure_not_failed()?;
            (
                writer.active.next_offset(),
                writer.appended_bytes,
                writer.active.file(),
                writer.active.log_path().to_path_buf(),
            )
        };
        *self
            .last_flush
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Instant::now();
        if target <= self.durable_offset() {
            return Ok(());
        }
        // The fsync runs without the writer lock, so appends continue while it runs; they are
        // covered by the next flush. It holds the sync lock, and a failure recorded while
        // this flush waited for it must stop it.
        let sync = self.lock_sync();
        self.ensure_not_failed()?;
        // Segments rolled before `target` was noted lie below it: they must be durable too.
        self.seal_rolled(&sync)?;
        let started = Instant::now();
        let synced = file.sync_data();
        metrics::STORAGE
            .fsync_seconds
            .observe_duration(started.elapsed());
        match synced {
            Ok(()) => {
                let covered = target.saturating_sub(self.durable_offset()).max(0);
                metrics::STORAGE
                    .group_commit_records
                    .observe(u64::try_from(covered).unwrap_or(0));
                // Under the sync lock, so flushes record their marks in order.
                let before = self
                    .flushed_bytes
                    .fetch_max(target_bytes, Ordering::Relaxed);
                metrics::STORAGE.count_flushed(target_bytes.saturating_sub(before));
                self.advance_durable(target);
                Ok(())
            }
            Err(source) => {
                let error = Error::io("sync segment", segment_path, source);
                Err(self.fail_with(format!("fsync failed: {error}")))
            }
        }
    }

    fn advance_durable(&self, offset: i64) {
        if self.lock_failure().is_some() {
            return;
        }
        // The high watermark first: whoever wakes on durability may look at it at once.
        if self.config.flush == FlushPolicy::Always {
            self.high_watermark.advance(offset);
        }
        self.durable.advance(offset);
    }

    /// Puts the partition in the failed state (storage rule 3): no more writes, no more
    /// durability acknowledgements, every durability waiter gets the reason.
    pub fn fail(&self, reason: &str) {
        let mut failure = self.lock_failure();
        if failure.is_none() {
            tracing::error!(partition = %self.dir.display(), reason, "partition failed; refusing writes");
            *failure = Some(reason.to_string());
        }
        drop(failure);
        self.durable.fail(reason);
    }

    /// Resolves when every offset below `next_offset` is as durable as the policy promises:
    /// fsynced with `FlushPolicy::Always`, at once otherwise (those policies accept the risk).
    pub fn wait_durable(
        &self,
        next_offset: i64,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let wait =
            (self.config.flush == FlushPolicy::Always).then(|| self.durable.wait(next_offset));
        let partition = self.dir.clone();
        async move {
            match wait {
                None => Ok(()),
                Some(wait) => wait
                    .await
                    .map(|_| ())
                    .map_err(|error| wait_error(partition, error)),
            }
        }
    }

    /// Blocking form of [`Partition::wait_durable`].
    ///
    /// # Errors
    /// `Error::Failed` if the partition failed, `Error::TimedOut` after `timeout`.
    pub fn wait_durable_blocking(&self, next_offset: i64, timeout: Duration) -> Result<()> {
        if self.config.flush != FlushPolicy::Always {
            return Ok(());
        }
        self.durable
            .wait_blocking(next_offset, timeout)
            .map(|_| ())
            .map_err(|error| wait_error(self.dir.clone(), error))
    }

    /// Resolves when the high watermark moves past `offset` (new data to read), or with an
    /// error when the partition closes. Callers race it against their own timeout.
    pub fn wait_for_data(&self, offset: i64) -> impl Future<Output = Result<()>> + Send + 'static {
        let wait = self.high_watermark.wait(offset + 1);
        let partition = self.dir.clone();
        async move {
            wait.await
                .map(|_| ())
                .map_err(|error| wait_error(partition, error))
        }
    }

    /// Reads whole batches starting with the one containing `offset`, up to the high
    /// watermark: at least one batch if any is there, otherwise at most `max_bytes`.
    ///
    /// # Errors
    /// `Error::OffsetOutOfRange` outside `[log_start, high_watermark]`; `Error::Corrupt` if
    /// the stored bytes fail a check (the range is refused); `Error::Io` on read failure.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        self.read_bounded(offset, max_bytes, i64::MAX)
    }

    /// Like [`Partition::read`], but returns no batch at or past `end_offset` (the last
    /// stable offset, for read-committed fetches). Offsets between `end_offset` and the high
    /// watermark are valid and read as empty.
    ///
    /// # Errors
    /// As for [`Partition::read`].
    pub fn read_bounded(
        &self,
        offset: i64,
        max_bytes: usize,
        end_offset: i64,
    ) -> Result<ReadResult> {
        let high_watermark = self.high_watermark();
        let log_start_offset = self.log_start_offset();
        if offset < log_start_offset || offset > high_watermark {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: log_start_offset,
                high_watermark,
            });
        }
        let empty = ReadResult {
            bytes: Bytes::new(),
            high_watermark,
            log_start_offset,
        };
        let end_offset = end_offset.min(high_watermark);
        if offset >= end_offset {
            return Ok(empty);
        }
        let candidates: Vec<Arc<Segment>> = {
            let segments = self.segments_read();
            let first = segments
                .range(..=offset)
                .next_back()
                .map_or(offset, |(base, _)| *base);
            segments
                .range(first..)
                .map(|(_, segment)| segment.clone())
                .collect()
        };
        for segment in candidates {
            let from = offset.max(segment.base_offset());
            let found = segment.read(
                from,
                max_bytes,
                end_offset,
                self.config.read_verify,
                self.config.index_interval_bytes,
            )?;
            if let Some(bytes) = found {
                return Ok(ReadResult { bytes, ..empty });
            }
        }
        Ok(empty)
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, below the high
    /// watermark; `None` if there is none.
    ///
    /// # Errors
    /// `Error::Corrupt` or `Error::Io` as for reads.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        let high_watermark = self.high_watermark();
        let segments: Vec<Arc<Segment>> = self.segments_read().values().cloned().collect();
        for segment in segments {
            if let Some(offset) = segment.offset_for_timestamp(timestamp_ms, high_watermark)? {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }

    /// Deletes whole sealed segments, oldest first, while they are older than
    /// `retention_ms` or the log is larger than `retention_bytes`; advances the log start.
    /// The active segment is never deleted.
    ///
    /// # Errors
    /// `Error::Io` if a file cannot be deleted or the directory cannot be synced.
    pub fn apply_retention(&self) -> Result<RetentionReport> {
        let now = self.env.clock.now_ms();
        let segments: Vec<Arc<Segment>> = self.segments_read().values().cloned().collect();
        let sealed = &segments[..segments.len() - 1];
        let mut remaining_bytes: u64 = segments.iter().map(|segment| segment.valid_bytes()).sum();
        let mut doomed = Vec::new();
        let limits = self.limits();
        if !limits.cleanup.deletes() {
            return Ok(RetentionReport {
                log_start_offset: self.log_start_offset(),
                ..RetentionReport::default()
            });
        }
        for segment in sealed {
            let expired = limits.retention_ms.is_some_and(|retention| {
                let newest = segment.max_timestamp_ms();
                newest != i64::MIN && now.saturating_sub(newest) > retention as i64
            });
            let oversized = limits.retention_bytes.is_some_and(|retention| {
                remaining_bytes.saturating_sub(segment.valid_bytes()) >= retention
            });
            if !(expired || oversized) {
                break;
            }
            remaining_bytes -= segment.valid_bytes();
            doomed.push(segment.clone());
        }
        let report = self.delete_prefix(&doomed)?;
        if report.segments_deleted > 0 {
            tracing::info!(partition = %self.dir.display(), segments = report.segments_deleted, bytes = report.bytes_deleted, log_start = report.log_start_offset, "retention deleted segments");
        }
        Ok(report)
    }

    /// Deletes every sealed segment that holds only offsets below `offset` (a queue whose
    /// messages below it are all settled), advancing the log start. The active segment is
    /// never deleted.
    ///
    /// # Errors
    /// `Error::Io` if a file cannot be deleted or the directory cannot be synced.
    pub fn delete_segments_below(&self, offset: i64) -> Result<RetentionReport> {
        let segments: Vec<Arc<Segment>> = self.segments_read().values().cloned().collect();
        let sealed = &segments[..segments.len() - 1];
        let doomed: Vec<Arc<Segment>> = sealed
            .iter()
            .take_while(|segment| segment.next_offset() <= offset)
            .cloned()
            .collect();
        let report = self.delete_prefix(&doomed)?;
        if report.segments_deleted > 0 {
            tracing::info!(partition = %self.dir.display(), segments = report.segments_deleted, bytes = report.bytes_deleted, log_start = report.log_start_offset, "compaction deleted settled segments");
        }
        Ok(report)
    }

    /// Moves the log start offset up to `offset` (Kafka's DeleteRecords; -1 means the high
    /// watermark): records below it are gone for readers from then on, also after a restart
    /// (the new start is stored durably, in the log-start file, before it takes effect), and
    /// sealed segments wholly below it are deleted. Returns the new log start (unchanged when
    /// `offset` is not above it).
    ///
    /// # Errors
    /// `Error::OffsetOutOfRange` above the high watermark (or below -1); `Error::Io` if the
    /// log-start file cannot be written (nothing changed then) or a segment deleted.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64> {
        let _writer = self.lock_writer();
        let high_watermark = self.high_watermark();
        let log_start = self.log_start_offset();
        let offset = if offset == -1 { high_watermark } else { offset };
        if !(0..=high_watermark).contains(&offset) {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start,
                high_watermark,
            });
        }
        if offset <= log_start {
            return Ok(log_start);
        }
        write_log_start(self.env.fs.as_ref(), &self.dir, offset)?;
        self.log_start.fetch_max(offset, Ordering::AcqRel);
        tracing::info!(partition = %self.dir.display(), log_start = offset, "records deleted below the new log start");
        let report = self.delete_segments_below(offset)?;
        Ok(report.log_start_offset.max(offset))
    }

    /// Empties the log and starts it again at `offset`, past its end: a replica whose
    /// leader's log starts above this one's end (its records below were deleted there by
    /// retention, DeleteRecords or a queue's compaction) continues from the leader's start
    /// (Kafka's truncate-fully-and-start-at). Every record goes, and the leader epochs.
    ///
    /// Crash-safe by order: the new start is written first, then empty leader epochs, then
    /// every segment's files are deleted, then the new segment is made. A log opened
    /// between two steps ends below `offset` (its first stored offset, 0 with no segment
    /// left: the start is capped at the end): the replica is sent the same range and
    /// starts again.
    ///
    /// # Errors
    /// `Error::OffsetOutOfRange` for an `offset` not past the end; `Error::Io` (the partition then
    /// refuses writes) for a failed file operation; `Error::Failed` or `Error::Closed`.
    pub fn restart_at(&self, offset: i64) -> Result<()> {
        let mut writer = self.lock_writer();
        self.check_writable(&writer)?;
        let end = writer.active.next_offset();
        if offset <= end {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset(),
                high_watermark: self.high_watermark(),
            });
        }
        let _maintenance = self.lock_maintenance();
        let _sync = self.lock_sync();
        let fs = self.env.fs.as_ref();
        let step = |what: &str, result: Result<()>| {
            result.map_err(|error| {
                self.fail_with(format!("restarting the log at {offset}: {what}: {error}"))
            })
        };
        step("log start", write_log_start(fs, &self.dir, offset))?;
        {
            let mut epochs = self.lock_epochs();
            let mut emptied = epochs.clone();
            emptied.cut(-1);
            step("leader epochs", emptied.write(fs, &self.dir))?;
            *epochs = emptied;
        }
        // The files go first; the map keeps the old segments (readers, retention and the
        // cleaner see a log that is never empty) until the new one replaces them at once.
        let old: Vec<Arc<Segment>> = self
            .segments
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .values()
            .cloned()
            .collect();
        for segment in &old {
            step("delete segment", segment.delete(fs))?;
        }
        step(
            "sync directory",
            fs.sync_dir(&self.dir)
                .map_err(|source| Error::io("sync directory", &self.dir, source)),
        )?;
        let created = Arc::new(step_value(
            self,
            offset,
            Segment::create(fs, &self.dir, offset, &self.config, self.env.clock.now_ms()),
        )?);
        step(
            "sync directory",
            fs.sync_dir(&self.dir)
                .map_err(|source| Error::io("sync directory", &self.dir, source)),
        )?;
        // As `open` does: under `FlushPolicy::Always` no recovery point is kept.
        let recovery_point = if self.config.flush == FlushPolicy::Always {
            if self.lock_rolled().recovery_point.is_some() {
                step("recovery point", remove_recovery_point(fs, &self.dir))?;
            }
            None
        } else {
            step(
                "recovery point",
                write_recovery_point(fs, &self.dir, offset),
            )?;
            Some(offset)
        };
        {
            let mut rolled = self.lock_rolled();
            rolled.segments.clear();
            rolled.recovery_point = recovery_point;
        }
        *self
            .segments
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) =
            std::collections::BTreeMap::from([(offset, created.clone())]);
        writer.active = created;
        self.log_start.store(offset, Ordering::Release);
        self.log_end.store(offset, Ordering::Release);
        self.high_watermark.advance(offset);
        self.durable.advance(offset);
        tracing::info!(partition = %self.dir.display(), from = end, log_start = offset, "log emptied and restarted past its end");
        Ok(())
    }

    /// Deletes `doomed` (the oldest sealed segments, in order) and fsyncs the directory.
    fn delete_prefix(&self, doomed: &[Arc<Segment>]) -> Result<RetentionReport> {
        let mut report = RetentionReport {
            log_start_offset: self.log_start_offset(),
            ..RetentionReport::default()
        };
        let Some(last) = doomed.last() else {
            return Ok(report);
        };
        let _maintenance = self.lock_maintenance();
        // Never below a start DeleteRecords set inside a segment.
        let new_start = last.next_offset().max(self.log_start_offset());
        {
            // Readers stop finding the segments before their files go away; readers that
            // already hold one keep reading its open file.
            let mut map = self
                .segments
                .write()
                .unwrap_or_else(|poison| poison.into_inner());
            for segment in doomed {
                map.remove(&segment.base_offset());
            }
            self.log_start.store(new_start, Ordering::Release);
        }
        for segment in doomed {
            segment.delete(self.env.fs.as_ref())?;
            report.segments_deleted += 1;
            report.bytes_deleted += segment.valid_bytes();
        }
        if let Err(source) = self.env.fs.sync_dir(&self.dir) {
            let error = Error::io("sync directory", &self.dir, source);
            self.fail(&format!(
                "directory fsync after deleting segments failed: {error}"
            ));
            return Err(error);
        }
        report.log_start_offset = new_start;
        Ok(report)
    }

    /// Closes the partition cleanly: refuses further writes, fsyncs, seals the active
    /// segment's indexes and writes the clean-shutdown marker so the next open skips the
    /// recovery scan. Waiters for new data are released with an error.
    ///
    /// # Errors
    /// `Error::Io` or `Error::Failed`; without a marker the next open recovers instead.
    pub fn close(&self) -> Result<()> {
        let mut writer = self.lock_writer();
        if writer.closed {
            return Ok(());
        }
        writer.closed = true;
        self.closing.store(true, Ordering::Release);
        let active = writer.active.clone();
        drop(writer);
        self.high_watermark.fail("partition closed");
        let sync = self.lock_sync();
        // No marker after a failure: the next open must scan, since durability is unknown.
        self.ensure_not_failed()?;
        self.seal_rolled(&sync)?;
        if let Err(error) = active.seal() {
            // The seal fsyncs the log: a failure is an fsync failure (rule 3).
            self.fail(&format!("sealing segment at close failed: {error}"));
            return Err(error);
        }
        self.advance_durable(active.next_offset());
        drop(sync);
        let mut payload = Vec::with_capacity(CLEAN_SHUTDOWN_PAYLOAD_BYTES);
        payload.extend_from_slice(&active.base_offset().to_be_bytes());
        payload.extend_from_slice(&active.next_offset().to_be_bytes());
        payload.extend_from_slice(&active.valid_bytes().to_be_bytes());
        checkpoint::write(
            self.env.fs.as_ref(),
            &self.dir,
            CLEAN_SHUTDOWN_FILE,
            CLEAN_SHUTDOWN_MAGIC,
            CLEAN_SHUTDOWN_VERSION,
            0,
            &payload,
        )?;
        self.durable.fail("partition closed");
        tracing::debug!(partition = %self.dir.display(), log_end = active.next_offset(), "partition closed cleanly");
        Ok(())
    }
}

fn wait_error(partition: PathBuf, error: WaitError) -> Error {
    match error {
        WaitError::Failed(reason) => Error::Failed {
            partition,
            reason: reason.to_string(),
        },
        WaitError::TimedOut => Error::TimedOut { waited_ms: 0 },
    }
}

/// Most offsets one batch copied from another replica may span (see [`split_batches`]).
pub const COPIED_SPAN_MAX: i32 = 1 << 24;

/// Splits a concatenation of batches, validating each (length, magic, CRC-32C). Returns each
/// batch's position within `batches` and its header.
fn split_batches(batches: &[u8], stamp: Stamp) -> Result<Vec<(usize, BatchHeader)>> {
    let mut headers = Vec::new();
    let mut position = 0;
    while position < batches.len() {
        let rest = &batches[position..];
        let header = match batch::parse_header(rest)? {
            Some(header) => header,
            None => {
                return Err(Error::InvalidBatch(batch::BatchError::Truncated {
                    field: "batch header",
                    need_bytes: batch::BATCH_HEADER_BYTES,
                    have_bytes: rest.len(),
                }))
            }
        };
        let total = header.total_bytes();
        if total > rest.len() {
            return Err(Error::InvalidBatch(batch::BatchError::Truncated {
                field: "batch",
                need_bytes: total,
                have_bytes: rest.len(),
            }));
        }
        let header = batch::validate(&rest[..total])?;
        // Every offset a batch claims must hold a record: a batch claiming billions of
        // offsets for one record would overflow a segment's 32-bit relative offsets. A batch
        // another replica stored may hold fewer (its cleaner removed records, or it is an
        // empty batch filling offsets its cleaner removed): up to 2^24 offsets, which one
        // segment of fresh relative offsets always takes.
        let sound = match stamp {
            Stamp::Current => {
                header.record_count >= 1 && header.last_offset_delta == header.record_count - 1
            }
            Stamp::Kept => header.last_offset_delta < COPIED_SPAN_MAX,
        };
        if !sound {
            return Err(Error::InvalidBatch(batch::BatchError::BadLastOffsetDelta {
                last_offset_delta: header.last_offset_delta,
                record_count: header.record_count,
            }));
        }
        headers.push((position, header));
        position += total;
    }
    if headers.is_empty() {
        return Err(Error::InvalidBatch(batch::BatchError::Truncated {
            field: "batch header",
            need_bytes: batch::BATCH_HEADER_BYTES,
            have_bytes: 0,
        }));
    }
    Ok(headers)
}

#[derive(Debug, Clone, Copy)]
struct CleanMarker {
    active_base: i64,
    next_offset: i64,
    valid_bytes: u64,
}

/// Reads and removes the clean-shutdown marker. It is removed (and the removal made durable)
/// before anything is written, so a crash after this open is never mistaken for a clean one.
fn take_clean_marker(fs: &dyn Fs, dir: &Path) -> Result<Option<CleanMarker>> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    let marker = match checkpoint::read(fs, &path, CLEAN_SHUTDOWN_MAGIC) {
        Ok(None) => return Ok(None),
        Ok(Some(found)) if found.payload.len() == CLEAN_SHUTDOWN_PAYLOAD_BYTES => {
            let field = |at: usize| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&found.payload[at..at + 8]);
                bytes
            };
            Some(CleanMarker {
                active_base: i64::from_be_bytes(field(0)),
                next_offset: i64::from_be_bytes(field(8)),
                valid_bytes: u64::from_be_bytes(field(16)),
            })
        }
        Ok(Some(_)) | Err(Error::Corrupt { .. }) => {
            tracing::warn!(partition = %dir.display(), "clean-shutdown marker is damaged; recovering");
            None
        }
        Err(error) => return Err(error),
    };
    fs.remove_file(&path)
        .map_err(|source| Error::io("remove clean-shutdown marker", &path, source))?;
    fs.sync_dir(dir)
        .map_err(|source| Error::io("sync directory", dir, source))?;
    Ok(marker)
}

/// Reads the recovery point: `Ok(None)` without a file. A damaged file is reported and read
/// as the highest point: no segment but the newest is cut, and damage in the others is
/// refused on read (rule 5) rather than cut with everything after it.
fn read_recovery_point(fs: &dyn Fs, dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(RECOVERY_POINT_FILE);
    match checkpoint::read(fs, &path, RECOVERY_POINT_MAGIC) {
        Ok(None) => Ok(None),
        Ok(Some(found)) if found.payload.len() == RECOVERY_POINT_PAYLOAD_BYTES => {
            let mut bytes = [0u8; RECOVERY_POINT_PAYLOAD_BYTES];
            bytes.copy_from_slice(&found.payload);
            Ok(Some(i64::from_be_bytes(bytes)))
        }
        Ok(Some(_)) | Err(Error::Corrupt { .. }) => {
            // Which segments are unsynced is unknown. Cutting sealed ones could delete
            // fsynced data, so none is cut: damage in them is refused (rule 5) instead.
            tracing::error!(partition = %dir.display(), "recovery point is damaged; treating every segment but the newest as sealed");
            Ok(Some(i64::MAX))
        }
        Err(error) => Err(error),
    }
}

/// Reads the log start a DeleteRecords stored: `Ok(None)` without a file. A damaged file is
/// reported and ignored (the log starts at its first stored offset again).
fn read_log_start(fs: &dyn Fs, dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(LOG_START_FILE);
    match checkpoint::read(fs, &path, LOG_START_MAGIC) {
        Ok(None) => Ok(None),
        Ok(Some(found)) if found.payload.len() == LOG_START_PAYLOAD_BYTES => {
            let mut bytes = [0u8; LOG_START_PAYLOAD_BYTES];
            bytes.copy_from_slice(&found.payload);
            Ok(Some(i64::from_be_bytes(bytes)))
        }
        Ok(Some(_)) | Err(Error::Corrupt { .. }) => {
            tracing::error!(partition = %dir.display(), "log-start file is damaged; the log starts at its first stored offset");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// A value-returning step of [`Partition::restart_at`]: a failure fails the partition.
fn step_value<T>(partition: &Partition, offset: i64, result: Result<T>) -> Result<T> {
    result.map_err(|error| {
        partition.fail_with(format!(
            "restarting the log at {offset}: new segment: {error}"
        ))
    })
}

/// Replaces the log-start file atomically (rule 6).
fn write_log_start(fs: &dyn Fs, dir: &Path, offset: i64) -> Result<()> {
    checkpoint::write(
        fs,
        dir,
        LOG_START_FILE,
        LOG_START_MAGIC,
        LOG_START_VERSION,
        0,
        &offset.to_be_bytes(),
    )
}

/// Replaces the recovery point atomically (rule 6).
fn write_recovery_point(fs: &dyn Fs, dir: &Path, point: i64) -> Result<()> {
    checkpoint::write(
        fs,
        dir,
        RECOVERY_POINT_FILE,
        RECOVERY_POINT_MAGIC,
        RECOVERY_POINT_VERSION,
        0,
        &point.to_be_bytes(),
    )
}

/// Removes the recovery point (and makes the removal durable): every segment below the
/// newest is sealed.
fn remove_recovery_point(fs: &dyn Fs, dir: &Path) -> Result<()> {
    let path = dir.join(RECOVERY_POINT_FILE);
    fs.remove_file(&path)
        .map_err(|source| Error::io("remove recovery point", &path, source))?;
    fs.sync_dir(dir)
        .map_err(|source| Error::io("sync directory", dir, source))
}

/// Opens every segment in `dir` (creating the first if there is none), recovering the active
/// one unless the clean marker vouches for it. Segments from `recovery_point` on were rolled
/// without an fsync (flush = never | interval) and may have lost their tails in a power loss:
/// they are recovered like the active segment, and the first one cut short becomes the
/// active segment, the later ones (beyond the gap) deleted.
fn open_segments(
    fs: &dyn Fs,
    dir: &Path,
    config: &LogConfig,
    (now_ms, epochs): (i64, KnownEpochs<'_>),
    marker: Option<CleanMarker>,
    recovery_point: Option<i64>,
) -> Result<BTreeMap<i64, Arc<Segment>>> {
    let mut bases = Vec::new();
    for name in fs
        .list_dir(dir)
        .map_err(|source| Error::io("list partition dir", dir, source))?
    {
        match segment::parse_file_name(&name) {
            Some((base, "log")) => bases.push(base),
            Some(_) => {}
            None if name.ends_with(".tmp") => {
                // A checkpoint whose rename never happened: the old file is still valid.
                let _ = fs.remove_file(&dir.join(&name));
            }
            None => {}
        }
    }
    bases.sort_unstable();
    let mut segments = BTreeMap::new();
    if bases.is_empty() {
        let created = Segment::create(fs, dir, 0, config, now_ms)?;
        fs.sync_dir(dir)
            .map_err(|source| Error::io("sync directory", dir, source))?;
        segments.insert(0, Arc::new(created));
        return Ok(segments);
    }
    let active_base = *bases.last().expect("not empty");
    let unsealed_from = recovery_point.unwrap_or(active_base).min(active_base);
    for (window_index, window) in bases.windows(2).enumerate() {
        let (base, next_base) = (window[0], window[1]);
        if base >= unsealed_from && marker.is_none() {
            let (segment, report) = Segment::recover(fs, dir, base, config, now_ms, epochs)?;
            if segment.next_offset() == next_base {
                // Whole (recovery cut only garbage after its last batch, if any): seal it
                // now (fsync, trimmed indexes), as its roll would have.
                segment.seal()?;
                segments.insert(base, Arc::new(segment));
                continue;
            }
            tracing::warn!(
                segment = %segment.log_path().display(),
                valid_bytes = report.valid_bytes,
                truncated_bytes = report.truncated_bytes,
                end_offset = segment.next_offset(),
                expected_end_offset = next_base,
                reason = report.stop_reason.as_deref().unwrap_or(""),
                "a segment rolled without an fsync lost its tail; it becomes the active segment and the later ones are deleted"
            );
            delete_segments(fs, dir, &bases[window_index + 1..])?;
            segment.sync()?;
            segment.reactivate(config)?;
            segments.insert(base, Arc::new(segment));
            return Ok(segments);
        }
        let (sealed, problem) =
            Segment::open(fs, dir, base, Some(next_base), config, now_ms, epochs)?;
        if let Some((position, reason)) = problem {
            // Rule 5: a sealed segment is never truncated; the range is refused on read.
            tracing::error!(segment = %sealed.log_path().display(), position, reason, "corruption in a sealed segment; refusing reads from there");
            sealed.mark_corrupt(position);
        }
        segments.insert(base, Arc::new(sealed));
    }
    let active = open_active(fs, dir, active_base, config, (now_ms, epochs), marker)?;
    active.reactivate(config)?;
    segments.insert(active_base, Arc::new(active));
    Ok(segments)
}

/// Deletes the segments at `bases` (their three files each), then fsyncs the directory.
fn delete_segments(fs: &dyn Fs, dir: &Path, bases: &[i64]) -> Result<()> {
    for &base in bases {
        for extension in ["log", "index", "timeindex"] {
            let path = dir.join(segment::file_name(base, extension));
            match fs.remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::io("delete segment file", &path, source)),
            }
        }
    }
    fs.sync_dir(dir)
        .map_err(|source| Error::io("sync directory", dir, source))
}

fn open_active(
    fs: &dyn Fs,
    dir: &Path,
    base: i64,
    config: &LogConfig,
    (now_ms, epochs): (i64, KnownEpochs<'_>),
    marker: Option<CleanMarker>,
) -> Result<Segment> {
    if let Some(marker) = marker.filter(|marker| marker.active_base == base) {
        let (segment, problem) = Segment::open(
            fs,
            dir,
            base,
            Some(marker.next_offset),
            config,
            now_ms,
            epochs,
        )?;
        if problem.is_none() && segment.valid_bytes() == marker.valid_bytes {
            return Ok(segment);
        }
        tracing::warn!(partition = %dir.display(), ?problem, "active segment does not match the clean-shutdown marker; recovering");
    }
    let (segment, report) = Segment::recover(fs, dir, base, config, now_ms, epochs)?;
    if report.truncated_bytes > 0 {
        tracing::warn!(
            segment = %segment.log_path().display(),
            valid_bytes = report.valid_bytes,
            truncated_bytes = report.truncated_bytes,
            reason = report.stop_reason.as_deref().unwrap_or(""),
            "recovery truncated the torn tail of the active segment"
        );
    }
    // What survived recovery may sit only in the page cache (the process died, not the
    // machine): make it durable before the log reports it as such.
    segment.sync()?;
    Ok(segment)
}

#[cfg(test)]
mod tests;
