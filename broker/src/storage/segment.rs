//! One segment of a partition log: `<base>.log` holding whole record batches back to back,
//! plus its offset index and time index.
//!
//! The owning partition's writer is the only one that appends; readers share the segment
//! through an `Arc` and never read past `valid_bytes`, which the writer publishes after the
//! bytes are written. A sealed segment never changes.
//!
//! Recovery lives here too: [`Segment::recover`] scans a log batch by batch (length, magic,
//! CRC-32C, offset continuity), truncates at the first invalid byte, and rebuilds both
//! indexes from what survived.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{
    self, BatchHeader, BATCH_BYTES_MAX, BATCH_HEADER_BYTES, NO_PARTITION_LEADER_EPOCH,
};

use crate::storage::config::{LogConfig, ReadVerify};
use crate::storage::error::{Error, Result};
use crate::storage::fs::{FileHandle, Fs, OpenMode};
use crate::storage::index::{IndexEntry, OffsetIndex};
use crate::storage::time_index::{TimeIndex, TimeIndexEntry, TIME_INDEX_ENTRY_BYTES};

/// Bytes read at a time when scanning a log during recovery.
const SCAN_WINDOW_BYTES: usize = 1024 * 1024;

/// The file name of a segment file: 20-digit zero-padded base offset plus `extension`.
pub fn file_name(base_offset: i64, extension: &str) -> String {
    format!("{base_offset:020}.{extension}")
}

/// Parses a segment file name back into its base offset and extension.
pub fn parse_file_name(name: &str) -> Option<(i64, &str)> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some((stem.parse().ok()?, extension))
}

/// What a recovery scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Valid bytes kept.
    pub valid_bytes: u64,
    /// Bytes cut from the tail.
    pub truncated_bytes: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stop_reason: Option<String>,
}

/// Index state that the writer updates with every batch.
#[derive(Debug)]
struct Indexes {
    offset: OffsetIndex,
    time: TimeIndex,
    bytes_since_entry: u64,
    /// Largest timestamp of the batches appended so far (i64::MIN if none).
    max_timestamp_ms: i64,
}

impl Indexes {
    /// Records a batch at `position`, adding index entries every `interval` bytes. A full
    /// index skips entries; the partition rolls before the next append when it sees that.
    fn on_batch(
        &mut self,
        relative_offset: u32,
        position: u32,
        header: &BatchHeader,
        interval: u32,
    ) {
        if self.bytes_since_entry >= u64::from(interval) {
            let added = self.offset.append(IndexEntry {
                relative_offset,
                position,
            });
            if added && self.max_timestamp_ms != i64::MIN {
                self.time.maybe_append(TimeIndexEntry {
                    timestamp_ms: self.max_timestamp_ms,
                    relative_offset,
                });
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += header.total_bytes() as u64;
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.max_timestamp);
    }

    fn clear(&mut self) {
        self.offset.clear();
        self.time.clear();
        self.bytes_since_entry = 0;
        self.max_timestamp_ms = i64::MIN;
    }

    fn is_full(&self) -> bool {
        self.offset.is_full() || self.time.is_full()
    }
}

/// The partition leader epochs a partition's batches may carry, for recovery's scans: the
/// field is outside the CRC, so this is its only check. -1 (every batch of a partition that
/// is not replicated), or an epoch the partition started (`leader-epochs`, written before
/// the first batch of an epoch, issue #21).
#[derive(Debug, Clone, Copy)]
pub struct KnownEpochs<'a>(pub &'a [i32]);

impl KnownEpochs<'_> {
    fn accepts(&self, epoch: i32) -> bool {
        epoch == NO_PARTITION_LEADER_EPOCH || self.0.contains(&epoch)
    }
}

/// One segment: a log file and its two indexes.
#[derive(Debug)]
pub struct Segment {
    base_offset: i64,
    log_path: PathBuf,
    index_path: PathBuf,
    time_index_path: PathBuf,
    file: Arc<dyn FileHandle>,
    /// Bytes of whole, valid batches; readers never read past it.
    valid_bytes: AtomicU64,
    /// Offset after the last batch.
    next_offset: AtomicI64,
    indexes: RwLock<Indexes>,
    /// Where a check found corruption in this (sealed) segment; reads reaching it fail.
    corrupt_at: AtomicU64,
    /// Disk blocks are reserved up to this position (`FileHandle::reserve`); only the writer
    /// changes it.
    reserved_end: AtomicU64,
    created_ms: i64,
}

/// The least a young segment reserves ahead at once, so its first appends do not each call
/// `fallocate`: 64 KiB is one 100 x 500 B batch, while a thousand quiet partitions pin only
/// 64 MiB.
const PREALLOCATE_AHEAD_BYTES_MIN: u64 = 64 * 1024;

/// Whether a scan accepts a batch that starts after the end of the one before it: yes in
/// sealed segments (the log cleaner removes whole batches), no where unsynced data may lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gaps {
    Allowed,
    Refused,
}

impl Segment {
    /// Creates a new, empty segment whose first offset will be `base_offset`. The caller
    /// fsyncs the directory before acknowledging data in it.
    ///
    /// # Errors
    /// `Error::Io` if a file cannot be created (also if it already exists).
    pub fn create(
        fs: &dyn Fs,
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        now_ms: i64,
    ) -> Result<Segment> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let file = fs
            .open_file(&log_path, OpenMode::CreateNew)
            .map_err(|source| Error::io("create segment", &log_path, source))?;
        let index_path = dir.join(file_name(base_offset, "index"));
        let time_index_path = dir.join(file_name(base_offset, "timeindex"));
        let capacity = u64::from(config.index_bytes_max);
        let created = OffsetIndex::create(fs, &index_path, capacity).and_then(|offset| {
            Ok(Indexes {
                offset,
                time: TimeIndex::create(fs, &time_index_path, capacity)?,
                bytes_since_entry: 0,
                max_timestamp_ms: i64::MIN,
            })
        });
        let indexes = match created {
            Ok(indexes) => indexes,
            Err(error) => {
                // A full disk, typically: leave no half-created segment behind to block the
                // next try.
                for path in [&log_path, &index_path, &time_index_path] {
                    if let Err(remove) = fs.remove_file(path) {
                        if remove.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(path = %path.display(), error = %remove, "cannot remove a half-created segment file");
                        }
                    }
                }
                return Err(error);
            }
        };
        Ok(Segment::assemble(
            base_offset,
            (log_path, index_path, time_index_path),
            file,
            indexes,
            0,
            base_offset,
            now_ms,
        ))
    }

    fn assemble(
        base_offset: i64,
        paths: (PathBuf, PathBuf, PathBuf),
        file: Arc<dyn FileHandle>,
        indexes: Indexes,
        valid_bytes: u64,
        next_offset: i64,
        created_ms: i64,
    ) -> Segment {
        Segment {
            base_offset,
            log_path: paths.0,
            index_path: paths.1,
            time_index_path: paths.2,
            file,
            valid_bytes: AtomicU64::new(valid_bytes),
            next_offset: AtomicI64::new(next_offset),
            indexes: RwLock::new(indexes),
            corrupt_at: AtomicU64::new(u64::MAX),
            reserved_end: AtomicU64::new(valid_bytes),
            created_ms,
        }
    }

    fn paths(dir: &Path, base_offset: i64) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join(file_name(base_offset, "log")),
            dir.join(file_name(base_offset, "index")),
            dir.join(file_name(base_offset, "timeindex")),
        )
    }

    /// Opens a segment by trusting its indexes after a light check, used for sealed segments
    /// and for the active segment after a clean shutdown. `next_offset` is the offset after
    /// the segment's last batch when the caller knows it (the next segment's base).
    ///
    /// The check scans from the last index entry to the end of the file, verifying headers,
    /// CRC and offset continuity, and that the last batch ends exactly at the file's end.
    /// Indexes that are missing or fail their structural check are rebuilt from the log. A
    /// failed tail check is returned beside the segment as the position and reason, so the
    /// caller decides: recover (active segment) or report and refuse the range (sealed).
    ///
    /// # Errors
    /// `Error::Io` if files cannot be opened, read or mapped.
    pub fn open(
        fs: &dyn Fs,
        dir: &Path,
        base_offset: i64,
        next_offset: Option<i64>,
        config: &LogConfig,
        now_ms: i64,
        epochs: KnownEpochs<'_>,
    ) -> Result<(Segment, Option<(u64, String)>)> {
        let paths = Segment::paths(dir, base_offset);
        let file = fs
            .open_file(&paths.0, OpenMode::Existing)
            .map_err(|source| Error::io("open segment", &paths.0, source))?;
        let file_bytes = file
            .len_bytes()
            .map_err(|source| Error::io("stat segment", &paths.0, source))?;
        let relative_end = next_offset.map(|next| (next - base_offset) as u64);
        // Checked before `open_indexes`, which creates a missing index empty: an empty index
        // looks valid but knows neither positions nor the segment's newest timestamp.
        let indexes_missing = !fs.exists(&paths.1) || !fs.exists(&paths.2);
        let indexes = open_indexes(fs, &paths, file_bytes, relative_end, config)?;
        let segment = Segment::assemble(
            base_offset,
            paths,
            file,
            indexes,
            file_bytes,
            base_offset,
            now_ms,
        );
        let mut problem = segment.check_tail(file_bytes, next_offset, epochs).err();
        if let Some(next) = next_offset {
            // The next segment's base is the truth about where this one ends.
            segment.next_offset.store(next, Ordering::Release);
        }
        if problem.is_none() && (indexes_missing || segment.indexes_need_rebuild()) {
            tracing::warn!(segment = %segment.log_path.display(), "index missing or damaged; rebuilding from the log");
            segment.reactivate(config)?;
            let scan = segment.rebuild_indexes(config, Gaps::Allowed, epochs)?;
            if let Some(reason) = scan.stop_reason {
                // Damage before the tail that `check_tail` covered. Report it like a failed
                // tail check and keep the segment's full extent: the caller decides, and a
                // sealed segment is never cut (rule 5).
                segment.valid_bytes.store(file_bytes, Ordering::Release);
                if let Some(next) = next_offset {
                    segment.next_offset.store(next, Ordering::Release);
                }
                problem = Some((scan.position, reason));
            } else {
                // Sealing (not just trimming) the rebuilt indexes writes the final time index
                // entry, which is how the next open learns the segment's newest timestamp.
                segment.seal()?;
            }
        }
        Ok((segment, problem))
    }

    /// Opens the active segment after an unclean shutdown: scans the whole log, keeps the
    /// longest valid prefix, truncates the rest, and rebuilds both indexes.
    ///
    /// # Errors
    /// `Error::Io` if files cannot be opened, read, truncated or mapped.
    pub fn recover(
        fs: &dyn Fs,
        dir: &Path,
        base_offset: i64,
        config: &LogConfig,
        now_ms: i64,
        epochs: KnownEpochs<'_>,
    ) -> Result<(Segment, RecoveryReport)> {
        let paths = Segment::paths(dir, base_offset);
        let file = fs
            .open_file(&paths.0, OpenMode::Existing)
            .map_err(|source| Error::io("open segment", &paths.0, source))?;
        let file_bytes = file
            .len_bytes()
            .map_err(|source| Error::io("stat segment", &paths.0, source))?;
        let capacity = u64::from(config.index_bytes_max);
        let indexes = Indexes {
            offset: OffsetIndex::create(fs, &paths.1, capacity)?,
            time: TimeIndex::create(fs, &paths.2, capacity)?,
            bytes_since_entry: 0,
            max_timestamp_ms: i64::MIN,
        };
        let segment = Segment::assemble(
            base_offset,
            paths,
            file,
            indexes,
            file_bytes,
            base_offset,
            now_ms,
        );
        // Strict: a segment that may hold unsynced data is never one the cleaner wrote (the
        // cleaner only rewrites segments below the recovery point), so a forward jump of
        // offsets here is damage (a base offset is outside the batch CRC).
        let scan = segment.rebuild_indexes(config, Gaps::Refused, epochs)?;
        // Cuts the torn tail, and releases blocks the crashed process reserved past the end
        // (setting the length does that even when it does not change).
        segment
            .file
            .set_len(scan.position)
            .map_err(|source| Error::io("truncate segment", &segment.log_path, source))?;
        segment.reserved_end.store(scan.position, Ordering::Release);
        if scan.position < file_bytes {
            segment
                .file
                .sync_data()
                .map_err(|source| Error::io("sync segment", &segment.log_path, source))?;
        }
        let report = RecoveryReport {
            valid_bytes: scan.position,
            truncated_bytes: file_bytes - scan.position,
            stop_reason: scan.stop_reason,
        };
        Ok((segment, report))
    }

    /// Scans the whole log from position 0, rebuilding both indexes, and publishes the valid
    /// prefix as the segment's contents.
    fn rebuild_indexes(
        &self,
        config: &LogConfig,
        gaps: Gaps,
        epochs: KnownEpochs<'_>,
    ) -> Result<ScanEnd> {
        let mut indexes = self.indexes_write();
        indexes.clear();
        let end = self.valid_bytes();
        let mut scanner = BatchScanner::new(self, 0, end, SCAN_WINDOW_BYTES).checking(epochs);
        let mut expected = self.base_offset;
        let stop_reason = loop {
            let (position, header, bytes) = match scanner.next()? {
                Step::End => break None,
                Step::Bad { reason, .. } => break Some(reason),
                Step::Batch {
                    position,
                    header,
                    bytes,
                    ..
                } => (position, header, bytes),
            };
            if let Err(error) = batch::validate(&bytes) {
                break Some(format!("batch at {position}: {error}"));
            }
            let gap_refused = gaps == Gaps::Refused || position == 0;
            if header.base_offset < expected || (gap_refused && header.base_offset != expected) {
                break Some(format!(
                    "batch at {position} has base offset {} but {expected} was expected",
                    header.base_offset
                ));
            }
            let Some(relative) = self.relative(header.last_offset()) else {
                break Some(format!(
                    "batch at {position} overflows the segment's offsets"
                ));
            };
            let relative_base = relative - (header.last_offset_delta as u32);
            indexes.on_batch(
                relative_base,
                position as u32,
                &header,
                config.index_interval_bytes,
            );
            expected = header.next_offset();
            scanner.advance_past(&header);
        };
        let position = scanner.position();
        self.valid_bytes.store(position, Ordering::Release);
        self.next_offset.store(expected, Ordering::Release);
        Ok(ScanEnd {
            position,
            stop_reason,
        })
    }

    fn indexes_need_rebuild(&self) -> bool {
        // Sealed and cleanly closed indexes are trimmed to their entries, so a file holding
        // more entries than its valid prefix is damaged (or was cut off mid-roll).
        if self.indexes_read().offset.was_cut() || self.indexes_read().time.was_cut() {
            return true;
        }
        // Every entry of a valid index points at a batch start with the right base offset;
        // check the first and the last (scrambled files fail this almost surely, and reads
        // check every entry they use).
        let indexes = self.indexes_read();
        let count = indexes.offset.entry_count();
        let probes = [0, count.saturating_sub(1)];
        probes
            .iter()
            .filter(|&&entry_index| entry_index < count)
            .any(|&entry_index| {
                let entry = indexes.offset.entry(entry_index);
                !self.batch_starts_at(u64::from(entry.position), entry.relative_offset)
            })
    }

    fn batch_starts_at(&self, position: u64, relative_offset: u32) -> bool {
        let mut header_bytes = [0u8; BATCH_HEADER_BYTES];
        if self
            .file
            .read_exact_at(&mut header_bytes, position)
            .is_err()
        {
            return false;
        }
        matches!(
            batch::parse_header(&header_bytes),
            Ok(Some(header)) if header.base_offset == self.base_offset + i64::from(relative_offset)
        )
    }

    /// Checks the log from its last index entry to `file_bytes`: whole valid batches with
    /// continuous offsets ending exactly at the end of the file (and at `next_offset` when
    /// known). On success publishes the end offset.
    fn check_tail(
        &self,
        file_bytes: u64,
        next_offset: Option<i64>,
        epochs: KnownEpochs<'_>,
    ) -> Result<(), (u64, String)> {
        let (start, mut expected) = {
            let indexes = self.indexes_read();
            match indexes.offset.last_entry() {
                Some(entry) => (
                    u64::from(entry.position),
                    self.base_offset + i64::from(entry.relative_offset),
                ),
                None => (0, self.base_offset),
            }
        };
        let mut scanner =
            BatchScanner::new(self, start, file_bytes, SCAN_WINDOW_BYTES).checking(epochs);
        loop {
            match scanner.next() {
                Err(error) => return Err((scanner.position(), error.to_string())),
                Ok(Step::End) => break,
                Ok(Step::Bad { position, reason }) => return Err((position, reason)),
                Ok(Step::Batch {
                    position,
                    header,
                    bytes,
                    ..
                }) => {
                    if let Err(error) = batch::validate(&bytes) {
                        return Err((position, format!("batch at {position}: {error}")));
                    }
                    if header.base_offset < expected
                        || (position == start && header.base_offset != expected)
                    {
                        let reason = format!(
                            "batch at {position} has base offset {} but {expected} was expected",
                            header.base_offset
                        );
                        return Err((position, reason));
                    }
                    expected = header.next_offset();
                    scanner.advance_past(&header);
                }
            }
        }
        if let Some(next) = next_offset {
            if next != expected {
                let reason = format!("log ends at offset {expected} but {next} was expected");
                return Err((file_bytes, reason));
            }
        }
        self.next_offset.store(expected, Ordering::Release);
        let max_timestamp = self
            .indexes_read()
            .time
            .last_entry()
            .map_or(i64::MIN, |entry| entry.timestamp_ms);
        let mut indexes = self.indexes_write();
        indexes.max_timestamp_ms = indexes.max_timestamp_ms.max(max_timestamp);
        Ok(())
    }

    /// Marks the segment corrupt from `position` on; reads reaching it fail.
    pub fn mark_corrupt(&self, position: u64) {
        self.corrupt_at.fetch_min(position, Ordering::AcqRel);
    }

    fn relative(&self, offset: i64) -> Option<u32> {
        u32::try_from(offset.checked_sub(self.base_offset)?).ok()
    }

    fn indexes_read(&self) -> RwLockReadGuard<'_, Indexes> {
        self.indexes
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn indexes_write(&self) -> RwLockWriteGuard<'_, Indexes> {
        self.indexes
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The first offset of the segment.
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// The offset after the segment's last batch.
    pub fn next_offset(&self) -> i64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Bytes of valid batches.
    pub fn valid_bytes(&self) -> u64 {
        self.valid_bytes.load(Ordering::Acquire)
    }

    /// Path of the `.log` file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The largest batch max-timestamp in the segment (i64::MIN if none).
    pub fn max_timestamp_ms(&self) -> i64 {
        self.indexes_read().max_timestamp_ms
    }

    /// When this segment was created or opened by this process (for roll by age).
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// True if the indexes cannot take another entry.
    pub fn indexes_full(&self) -> bool {
        self.indexes_read().is_full()
    }

    /// True if a batch ending at `last_offset` would overflow the 32-bit relative offsets.
    pub fn offset_would_overflow(&self, last_offset: i64) -> bool {
        // Keep one spare so the segment's end offset is addressable in the time index too.
        self.relative(last_offset)
            .is_none_or(|relative| relative == u32::MAX)
    }

    /// Appends already validated batches (offsets patched) with one write at the end of the
    /// segment, into blocks reserved ahead when `config.preallocate_ahead_bytes` asks for it.
    /// `headers` lists each batch with its position inside `batches`. Publishes the new end
    /// only after the write succeeded; a failed write publishes nothing, and the next append
    /// overwrites whatever part of it reached the file.
    ///
    /// # Errors
    /// `Error::Io` if the write fails (for example ENOSPC).
    pub fn append(
        &self,
        batches: &[u8],
        headers: &[(usize, BatchHeader)],
        config: &LogConfig,
    ) -> Result<()> {
        let start = self.valid_bytes();
        let end = start + batches.len() as u64;
        self.reserve_ahead(end, config);
        if let Err(source) = self.file.write_all_at(batches, start) {
            // Cut whatever part of the failed write reached the file, so a crash before the
            // next append cannot bring back batches whose producer was told they failed. The
            // cut also releases the blocks reserved past it.
            if let Err(error) = self.file.set_len(start) {
                tracing::warn!(segment = %self.log_path.display(), %error, "cannot cut a failed write");
            }
            self.reserved_end.store(start, Ordering::Release);
            return Err(Error::io("append to segment", &self.log_path, source));
        }
        let interval = config.index_interval_bytes;
        let mut indexes = self.indexes_write();
        let mut next = self.next_offset();
        for (within, header) in headers {
            let relative = self
                .relative(header.base_offset)
                .expect("the partition rolls before relative offsets overflow");
            let position = u32::try_from(start + *within as u64)
                .expect("segments are capped below u32::MAX bytes");
            indexes.on_batch(relative, position, header, interval);
            next = header.next_offset();
        }
        drop(indexes);
        self.next_offset.store(next, Ordering::Release);
        self.valid_bytes.store(end, Ordering::Release);
        Ok(())
    }

    /// Reserves blocks so that a write ending at `end` lands in reserved space, plus room
    /// ahead for the next appends: as much as the segment already holds, between
    /// `PREALLOCATE_AHEAD_BYTES_MIN` and `config.preallocate_ahead_bytes`, never past the
    /// segment's size limit. Best effort: on a failure (a full disk) the write goes ahead
    /// unreserved and reports its own error if there is no room for it either.
    fn reserve_ahead(&self, end: u64, config: &LogConfig) {
        let reserved = self.reserved_end.load(Ordering::Acquire);
        if config.preallocate_ahead_bytes == 0 || end <= reserved {
            return;
        }
        let ahead = end
            .max(PREALLOCATE_AHEAD_BYTES_MIN)
            .min(config.preallocate_ahead_bytes);
        let target = end.max((end + ahead).min(config.segment_bytes_max));
        match self.file.reserve(reserved, target - reserved) {
            Ok(()) => self.reserved_end.store(target, Ordering::Release),
            Err(error) => {
                tracing::debug!(segment = %self.log_path.display(), %error, "cannot reserve blocks ahead of the append");
            }
        }
    }

    /// Reads whole batches starting with the one that contains `offset`, stopping before
    /// `end_offset` (the high watermark), taking at least one batch and otherwise at most
    /// `max_bytes`. `None` if the segment holds nothing at or after `offset`.
    ///
    /// # Errors
    /// `Error::Corrupt` if the bytes on disk fail a check; `Error::Io` on read failure.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        end_offset: i64,
        verify: ReadVerify,
        index_interval_bytes: u32,
    ) -> Result<Option<Bytes>> {
        let Some(relative) = self.relative(offset) else {
            return Ok(None);
        };
        let (start, expected) = self.index_start(relative);
        let window = max_bytes
            .saturating_add(index_interval_bytes as usize)
            .saturating_add(BATCH_HEADER_BYTES)
            .min(BATCH_BYTES_MAX * 2);
        let found = match self.read_from(
            start, expected, offset, max_bytes, end_offset, verify, window,
        ) {
            Err(Error::Corrupt { reason, .. })
                if start > 0 && reason.starts_with(INDEX_MISMATCH) =>
            {
                // The index pointed somewhere that is not the batch it claims: it is only a
                // hint, so scan from the start of the segment instead.
                tracing::warn!(segment = %self.log_path.display(), reason, "index entry is wrong; scanning from the segment start");
                self.read_from(
                    0,
                    self.base_offset,
                    offset,
                    max_bytes,
                    end_offset,
                    verify,
                    window,
                )
            }
            other => other,
        }?;
        if found.is_none() && offset < self.next_offset().min(end_offset) {
            // The segment owns `offset` but no readable batch holds it: the range is damaged
            // (refused from `corrupt_at`) or missing. Refuse it rather than let the caller
            // skip ahead to the next segment (rule 5).
            let position = self
                .valid_bytes()
                .min(self.corrupt_at.load(Ordering::Acquire));
            let reason = format!("offset {offset} is not in a readable batch of the segment");
            return Err(self.corrupt_error(position, reason));
        }
        Ok(found)
    }

    fn index_start(&self, relative: u32) -> (u64, i64) {
        match self.indexes_read().offset.lookup(relative) {
            Some(entry) => (
                u64::from(entry.position),
                self.base_offset + i64::from(entry.relative_offset),
            ),
            None => (0, self.base_offset),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read_from(
        &self,
        start: u64,
        mut expected: i64,
        offset: i64,
        max_bytes: usize,
        end_offset: i64,
        verify: ReadVerify,
        window: usize,
    ) -> Result<Option<Bytes>> {
        let end = self
            .valid_bytes()
            .min(self.corrupt_at.load(Ordering::Acquire));
        let mut scanner = BatchScanner::new(self, start, end, window);
        // The first collected batch's window, and the collected range inside it.
        let mut collected: Option<(Bytes, usize, usize, u64)> = None;
        let mut first = true;
        loop {
            let (position, header, bytes, window_id) = match scanner.next()? {
                Step::End => break,
                Step::Bad { position, reason } => {
                    if collected.is_some() {
                        break;
                    }
                    return Err(self.corrupt_error(position, reason));
                }
                Step::Batch {
                    position,
                    header,
                    bytes,
                    window_id,
                } => (position, header, bytes, window_id),
            };
            // The batch the scan starts at (an index entry's, or the segment's first) has
            // exactly the expected base offset; a later one starts at or after the end of
            // the one before it (after it exactly unless the cleaner removed batches).
            if header.base_offset < expected || (first && header.base_offset != expected) {
                if collected.is_some() {
                    // Serve the good batches before the break; the next read reports it.
                    break;
                }
                let reason = format!(
                    "{INDEX_MISMATCH}: batch at {position} has base offset {} but {expected} was expected",
                    header.base_offset
                );
                return Err(self.corrupt_error(position, reason));
            }
            expected = header.next_offset();
            first = false;
            if header.base_offset >= end_offset {
                break;
            }
            if header.last_offset() < offset {
                scanner.advance_past(&header);
                continue;
            }
            if verify == ReadVerify::Crc {
                if let Err(error) = batch::validate(&bytes) {
                    if collected.is_some() {
                        break;
                    }
                    return Err(self.corrupt_error(position, error.to_string()));
                }
            }
            let (from, to) = scanner.window_range(&bytes);
            match collected.as_mut() {
                None => collected = Some((scanner.window.clone(), from, to, window_id)),
                Some((_, first, last, id)) => {
                    // Only whole batches from one window, within max_bytes after the first.
                    if *id != window_id || (to - *first) > max_bytes {
                        break;
                    }
                    debug_assert_eq!(*last, from);
                    *last = to;
                }
            }
            scanner.advance_past(&header);
        }
        Ok(collected.map(|(window, from, to, _)| window.slice(from..to)))
    }

    fn corrupt_error(&self, position: u64, reason: String) -> Error {
        tracing::error!(segment = %self.log_path.display(), position, reason, "corrupt batch refused");
        Error::corrupt(&self.log_path, position, reason)
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, if this segment
    /// holds one below `end_offset`.
    ///
    /// # Errors
    /// `Error::Corrupt` or `Error::Io` as for reads.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64, end_offset: i64) -> Result<Option<i64>> {
        if self.max_timestamp_ms() < timestamp_ms {
            return Ok(None);
        }
        let start_relative = self
            .indexes_read()
            .time
            .lookup_before(timestamp_ms)
            .map_or(0, |entry| entry.relative_offset);
        let (start, mut expected) = self.index_start(start_relative);
        let end = self
            .valid_bytes()
            .min(self.corrupt_at.load(Ordering::Acquire));
        let mut scanner = BatchScanner::new(self, start, end, SCAN_WINDOW_BYTES);
        loop {
            let (position, header, bytes) = match scanner.next()? {
                Step::End if end < self.valid_bytes() => {
                    // The answer may lie in the damaged range: refuse rather than guess.
                    let reason = format!("timestamp lookup reached damage at {end}");
                    return Err(self.corrupt_error(end, reason));
                }
                Step::End => return Ok(None),
                Step::Bad { position, reason } => return Err(self.corrupt_error(position, reason)),
                Step::Batch {
                    position,
                    header,
                    bytes,
                    ..
                } => (position, header, bytes),
            };
            // As a read: the batch the scan starts at has exactly the expected base offset,
            // a later one starts at or after the end of the one before it (after it exactly
            // unless the cleaner removed batches between: a compacted topic's timestamp
            // lookups failed here as damage until 2026-12-06).
            if header.base_offset < expected
                || (position == start && header.base_offset != expected)
            {
                let reason = format!("batch at {position} breaks offset continuity");
                return Err(self.corrupt_error(position, reason));
            }
            if header.base_offset >= end_offset {
                return Ok(None);
            }
            expected = header.next_offset();
            if header.max_timestamp >= timestamp_ms && !header.attributes.is_control() {
                return Ok(Some(first_record_at(bytes, &header, timestamp_ms)));
            }
            scanner.advance_past(&header);
        }
    }

    /// Makes the segment's log durable (fdatasync).
    ///
    /// # Errors
    /// `Error::Io` if the fsync fails.
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|source| Error::io("sync segment", &self.log_path, source))
    }

    /// The file handle, for the flusher to fsync without holding any lock.
    pub(crate) fn file(&self) -> Arc<dyn FileHandle> {
        self.file.clone()
    }

    /// Seals the segment: cuts any failed-write garbage after the valid bytes, records its
    /// final time index entry, trims and syncs both indexes and fsyncs the log.
    ///
    /// # Errors
    /// `Error::Io` if a resize or fsync fails.
    pub fn seal(&self) -> Result<()> {
        let valid = self.valid_bytes();
        // Setting the length, even to the current one, cuts failed-write garbage and releases
        // every block reserved past it, also any that a failed `fallocate` left behind. Once
        // per segment, so always.
        self.file
            .set_len(valid)
            .map_err(|source| Error::io("truncate segment", &self.log_path, source))?;
        self.reserved_end.store(valid, Ordering::Release);
        self.sync()?;
        let end_relative = self.relative(self.next_offset()).unwrap_or(u32::MAX);
        let mut indexes = self.indexes_write();
        if indexes.max_timestamp_ms != i64::MIN {
            let entry = TimeIndexEntry {
                timestamp_ms: indexes.max_timestamp_ms,
                relative_offset: end_relative,
            };
            if !indexes.time.maybe_append(entry) {
                // The index is at its maximum: let it grow by exactly the final entry.
                let grown = (indexes.time.entry_count() + 1) * TIME_INDEX_ENTRY_BYTES;
                indexes.time.reactivate(grown as u64);
                if !indexes.time.maybe_append(entry) {
                    tracing::warn!(segment = %self.log_path.display(), "cannot add the final time index entry");
                }
            }
        }
        indexes.offset.seal()?;
        indexes.time.seal()?;
        Ok(())
    }

    /// Lets the indexes of a segment that becomes active again after a clean open grow
    /// again (they were trimmed when it was closed).
    ///
    /// # Errors
    /// None today; kept fallible for the callers' error paths.
    pub fn reactivate(&self, config: &LogConfig) -> Result<()> {
        let mut indexes = self.indexes_write();
        let capacity = u64::from(config.index_bytes_max);
        indexes.offset.reactivate(capacity);
        indexes.time.reactivate(capacity);
        // Count bytes since the last entry so index density stays as configured.
        let last_position = indexes
            .offset
            .last_entry()
            .map_or(0, |entry| entry.position);
        indexes.bytes_since_entry = self.valid_bytes() - u64::from(last_position);
        Ok(())
    }

    /// Removes the segment's files. The caller fsyncs the directory afterwards.
    ///
    /// # Errors
    /// `Error::Io` if a file cannot be removed.
    pub fn delete(&self, fs: &dyn Fs) -> Result<()> {
        for path in [&self.log_path, &self.index_path, &self.time_index_path] {
            match fs.remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::io("delete segment file", path, source)),
            }
        }
        Ok(())
    }
}

/// Prefix of the corruption reason given when an index entry points at the wrong batch.
const INDEX_MISMATCH: &str = "offset continuity broken";

fn open_indexes(
    fs: &dyn Fs,
    paths: &(PathBuf, PathBuf, PathBuf),
    log_bytes: u64,
    relative_end: Option<u64>,
    config: &LogConfig,
) -> Result<Indexes> {
    let capacity = u64::from(config.index_bytes_max);
    let offset = if fs.exists(&paths.1) {
        OffsetIndex::open(fs, &paths.1, log_bytes, relative_end)?
    } else {
        OffsetIndex::create(fs, &paths.1, capacity)?
    };
    let time = if fs.exists(&paths.2) {
        TimeIndex::open(fs, &paths.2, relative_end.unwrap_or(u64::from(u32::MAX)))?
    } else {
        TimeIndex::create(fs, &paths.2, capacity)?
    };
    let max_timestamp_ms = time
        .last_entry()
        .map_or(i64::MIN, |entry| entry.timestamp_ms);
    let last_position = offset.last_entry().map_or(0, |entry| entry.position);
    Ok(Indexes {
        offset,
        time,
        bytes_since_entry: log_bytes.saturating_sub(u64::from(last_position)),
        max_timestamp_ms,
    })
}

/// The offset of the first record in `bytes` at or after `timestamp_ms`; the batch's base
/// offset if its records cannot be decoded (compressed): a safe lower bound.
fn first_record_at(bytes: Bytes, header: &BatchHeader, timestamp_ms: i64) -> i64 {
    let Ok(decoded) = batch::Batch::decode(bytes) else {
        return header.base_offset;
    };
    for record in decoded.records() {
        match record {
            Ok(record) if record.timestamp_ms >= timestamp_ms => return record.offset,
            Ok(_) => {}
            Err(_) => return header.base_offset,
        }
    }
    header.base_offset
}

struct ScanEnd {
    position: u64,
    stop_reason: Option<String>,
}

/// One step of a sequential scan over a segment's batches.
enum Step {
    End,
    Bad {
        position: u64,
        reason: String,
    },
    Batch {
        position: u64,
        header: BatchHeader,
        bytes: Bytes,
        window_id: u64,
    },
}

/// Reads a segment's batches in order through a window buffer, so a scan costs one read per
/// window instead of one per batch. Bytes handed out are zero-copy slices of the window.
struct BatchScanner<'a> {
    segment: &'a Segment,
    /// Recovery's scans check each header's epoch against these; other scans only that it
    /// is not below -1 (an epoch may have started since the partition opened).
    epochs: Option<KnownEpochs<'a>>,
    window: Bytes,
    window_start: u64,
    window_id: u64,
    position: u64,
    end: u64,
    window_bytes: usize,
}

impl<'a> BatchScanner<'a> {
    fn new(segment: &'a Segment, start: u64, end: u64, window_bytes: usize) -> Self {
        BatchScanner {
            segment,
            epochs: None,
            window: Bytes::new(),
            window_start: start,
            window_id: 0,
            position: start,
            end,
            window_bytes,
        }
    }

    fn checking(mut self, epochs: KnownEpochs<'a>) -> Self {
        self.epochs = Some(epochs);
        self
    }

    fn position(&self) -> u64 {
        self.position
    }

    /// Makes `[position, position + need)` available in the window.
    fn ensure(&mut self, need: usize) -> Result<()> {
        let window_end = self.window_start + self.window.len() as u64;
        if self.position >= self.window_start && self.position + need as u64 <= window_end {
            return Ok(());
        }
        let remaining = self.end - self.position;
        let read_bytes = (self.window_bytes.max(need) as u64).min(remaining);
        let mut buffer = BytesMut::zeroed(read_bytes as usize);
        self.segment
            .file
            .read_exact_at(&mut buffer, self.position)
            .map_err(|source| Error::io("read segment", &self.segment.log_path, source))?;
        self.window = buffer.freeze();
        self.window_start = self.position;
        self.window_id += 1;
        Ok(())
    }

    fn next(&mut self) -> Result<Step> {
        let position = self.position;
        if position >= self.end {
            return Ok(Step::End);
        }
        let remaining = self.end - position;
        if remaining < BATCH_HEADER_BYTES as u64 {
            return Ok(Step::Bad {
                position,
                reason: format!("{remaining} bytes at the end are too short for a batch header"),
            });
        }
        self.ensure(BATCH_HEADER_BYTES)?;
        let within = (position - self.window_start) as usize;
        let header = match batch::parse_header(&self.window[within..]) {
            Ok(Some(header)) => header,
            Ok(None) => {
                return Ok(Step::Bad {
                    position,
                    reason: format!("short read of the batch header at {position}"),
                })
            }
            Err(error) => {
                return Ok(Step::Bad {
                    position,
                    reason: format!("batch header at {position}: {error}"),
                })
            }
        };
        let epoch = header.partition_leader_epoch;
        let epoch_fits = match self.epochs {
            Some(known) => known.accepts(epoch),
            None => epoch >= NO_PARTITION_LEADER_EPOCH,
        };
        if !epoch_fits {
            return Ok(Step::Bad {
                position,
                reason: format!(
                    "batch at {position} has partition leader epoch {epoch}, which the partition never started"
                ),
            });
        }
        let total = header.total_bytes();
        if total as u64 > remaining {
            return Ok(Step::Bad {
                position,
                reason: format!(
                    "batch at {position} of {total} bytes overruns the valid end at {}",
                    self.end
                ),
            });
        }
        self.ensure(total)?;
        let within = (position - self.window_start) as usize;
        Ok(Step::Batch {
            position,
            header,
            bytes: self.window.slice(within..within + total),
            window_id: self.window_id,
        })
    }

    fn advance_past(&mut self, header: &BatchHeader) {
        self.position += header.total_bytes() as u64;
    }

    /// Where `bytes` (a slice of the current window) lies within the window.
    fn window_range(&self, bytes: &Bytes) -> (usize, usize) {
        let from = (self.position - self.window_start) as usize;
        (from, from + bytes.len())
    }
}
