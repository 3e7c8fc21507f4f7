//! Log compaction, the storage half: rewrites sealed segments of a `compact` partition so
//! that each key keeps only its latest record (Kafka's log cleaner), and swaps the rewritten
//! segments in crash-safely. What storage cannot know (the last stable offset, which
//! transactions aborted, where the producer state was last saved) comes in [`CleanInputs`]
//! from the streams layer, which drives the passes (`streams/compaction.rs`).
//!
//! One pass (docs/STORAGE.md, "Log compaction"):
//! 1. The *cleanable* segments are the sealed ones below the stable end (the inputs' bound,
//!    no rolled-but-unsynced segment, each at least `min.compaction.lag.ms` old). The
//!    *dirty* part starts at the cleaner point (`cleaner-point`, where the last pass
//!    stopped). The pass runs when dirty bytes are at least `min.cleanable.dirty.ratio` of
//!    the cleanable bytes, or the oldest dirty segment is past `max.compaction.lag.ms`.
//! 2. A key → latest offset map is built over the dirty part, within a byte budget; when
//!    the budget is spent the map ends at a batch boundary (`map_end`) and the next pass
//!    goes on from there.
//! 3. Every cleanable segment below `map_end` is rewritten, consecutive segments merged into
//!    groups of at most `segment.bytes`: a record goes when a later record has its key, a
//!    tombstone also once it is older than `delete.retention.ms`, and a record of an aborted
//!    transaction always. A transaction marker goes once no record of its transaction is
//!    left and it is older than `delete.retention.ms`. Kept records keep their offsets and bytes;
//!    a batch that loses records is re-encoded with its codec and header fields. Each group
//!    keeps its first and last batch (emptied if need be), so it spans the same offsets as
//!    the segments it replaces.
//! 4. Swap, per group (crash-safe): the new segment is written and fsynced under
//!    `cleaning/`; the swap file (`cleaner-swap`, a checkpoint naming the group) is written;
//!    the new files are renamed over the first old segment's, the other old segments are
//!    deleted, the directory is fsynced, the in-memory map switches, and the swap file is
//!    removed. Opening the partition finishes a swap whose file exists and otherwise removes
//!    `cleaning/`, so a crash at any step leaves the old segments or the new one, never
//!    both or neither.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use wharf_protocol::batch::{self, Batch, BatchHeader};

use super::Partition;
use crate::storage::checkpoint;
use crate::storage::config::ReadVerify;
use crate::storage::error::{Error, Result};
use crate::storage::fs::Fs;
use crate::storage::segment::{self, KnownEpochs, Segment};

/// Directory inside a partition where the cleaner writes new segments before the swap.
pub const CLEANING_DIR: &str = "cleaning";
/// The swap file: present from the moment a cleaned group is complete until it replaced
/// the old segments.
pub const SWAP_FILE: &str = "cleaner-swap";
const SWAP_MAGIC: [u8; 4] = *b"WCSW";
const SWAP_VERSION: u16 = 1;
/// Where the last pass stopped: offsets below it were cleaned against every later key.
pub const CLEANER_POINT_FILE: &str = "cleaner-point";
const CLEANER_POINT_MAGIC: [u8; 4] = *b"WCLP";
const CLEANER_POINT_VERSION: u16 = 1;

/// Bytes the key map charges per entry beyond the key's own bytes: the offset, the hash
/// table's slot and the key's allocation header, rounded up.
pub const MAP_ENTRY_OVERHEAD_BYTES: usize = 48;

/// Bytes the cleaner reads at once from a segment.
const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of cleaned batches collected before one append to the new segment.
const WRITE_CHUNK_BYTES: usize = 1024 * 1024;

/// What the streams layer tells the cleaner about a partition.
pub struct CleanInputs<'a> {
    /// Nothing at or above this offset is mapped or rewritten: the last stable offset (an
    /// open transaction may still abort) and the offset of the producer-state snapshot
    /// (rebuilding producer state replays the log from there), whichever is lower.
    pub stable_offset: i64,
    /// Whether the transactional batch of `producer_id` at `offset` belongs to an aborted
    /// transaction.
    pub aborted: &'a dyn Fn(i64, i64) -> bool,
    /// Most bytes the key map may take (Kafka's `log.cleaner.dedupe.buffer.size`).
    pub map_bytes_max: usize,
    /// Called with every byte count read or written; sleeps to keep the I/O rate limit.
    pub throttle: &'a dyn Fn(u64),
    /// Set when the broker stops: the pass ends between groups.
    pub stop: &'a AtomicBool,
}

impl std::fmt::Debug for CleanInputs<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("CleanInputs")
            .field("stable_offset", &self.stable_offset)
            .field("map_bytes_max", &self.map_bytes_max)
            .finish_non_exhaustive()
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Where the dirty part started, and where the next pass starts.
    pub first_dirty: i64,
    /// The new cleaner point.
    pub cleaned_up_to: i64,
    /// Distinct keys in the map.
    pub map_entries: usize,
    /// Bytes the map was charged (keys plus `MAP_ENTRY_OVERHEAD_BYTES` each): at most the
    /// budget plus one batch's keys.
    pub map_bytes: usize,
    /// Segments rewritten, and the segments they became.
    pub segments_before: usize,
    /// As above.
    pub segments_after: usize,
    /// Bytes of the rewritten segments before and after.
    pub bytes_before: u64,
    /// As above.
    pub bytes_after: u64,
    /// Records removed.
    pub records_removed: u64,
    /// Bytes read (map pass and rewrite).
    pub bytes_read: u64,
}

/// How much of a compacted log is waiting for the cleaner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirtyView {
    /// Bytes of the cleanable segments.
    pub cleanable_bytes: u64,
    /// Bytes of those at or past the cleaner point.
    pub dirty_bytes: u64,
    /// Newest timestamp of the oldest dirty segment (ms; `i64::MIN` if none).
    pub oldest_dirty_ms: i64,
}

impl DirtyView {
    /// Dirty bytes over cleanable bytes, 0 when nothing is cleanable.
    pub fn ratio(&self) -> f64 {
        if self.cleanable_bytes == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / self.cleanable_bytes as f64
        }
    }
}

/// Finishes or abandons a swap a crash interrupted; run by `Partition::open` before it lists
/// the segments.
///
/// # Errors
/// `Error::Io` if a file cannot be renamed or removed; `Error::Corrupt` for a damaged swap
/// file (written atomically, so damage is the disk's).
pub(super) fn recover(fs: &dyn Fs, dir: &Path) -> Result<()> {
    if let Some(swap) = checkpoint::read(fs, &dir.join(SWAP_FILE), SWAP_MAGIC)? {
        let (base, replaced) = decode_swap(&swap.payload).ok_or_else(|| {
            Error::corrupt(dir.join(SWAP_FILE), 0, "bad swap payload".to_string())
        })?;
        tracing::warn!(partition = %dir.display(), base, segments = replaced.len(), "finishing a cleaner swap that a crash interrupted");
        install(fs, dir, base, &replaced)?;
        remove_swap(fs, dir)?;
    }
    let cleaning = dir.join(CLEANING_DIR);
    if fs.is_dir(&cleaning) {
        fs.remove_dir_all(&cleaning)
            .map_err(|source| Error::io("remove cleaner leftovers", &cleaning, source))?;
    }
    Ok(())
}

/// Reads the cleaner point (0 when the partition was never cleaned).
pub(super) fn read_cleaner_point(fs: &dyn Fs, dir: &Path) -> Result<i64> {
    let path = dir.join(CLEANER_POINT_FILE);
    match checkpoint::read(fs, &path, CLEANER_POINT_MAGIC) {
        Ok(Some(point)) => match point.payload.as_slice().try_into() {
            Ok(raw) => Ok(i64::from_be_bytes(raw)),
            Err(_) => {
                tracing::error!(file = %path.display(), "cleaner point has a bad payload; cleaning from the start");
                Ok(0)
            }
        },
        Ok(None) => Ok(0),
        Err(error) => {
            // Only a hint: the next pass cleans from the start again.
            tracing::error!(file = %path.display(), %error, "cannot read the cleaner point; cleaning from the start");
            Ok(0)
        }
    }
}

fn encode_swap(base: i64, replaced: &[i64]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(12 + 8 * replaced.len());
    payload.extend_from_slice(&base.to_be_bytes());
    payload.extend_from_slice(&(replaced.len() as u32).to_be_bytes());
    for replaced_base in replaced {
        payload.extend_from_slice(&replaced_base.to_be_bytes());
    }
    payload
}

fn decode_swap(payload: &[u8]) -> Option<(i64, Vec<i64>)> {
    let base = i64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let count = u32::from_be_bytes(payload.get(8..12)?.try_into().ok()?) as usize;
    let rest = payload.get(12..)?;
    if rest.len() != count * 8 {
        return None;
    }
    let replaced = rest
        .chunks_exact(8)
        .map(|chunk| i64::from_be_bytes(chunk.try_into().expect("chunks of 8")))
        .collect();
    Some((base, replaced))
}

/// Moves the cleaned segment at `base` from `cleaning/` into place and deletes the other
/// replaced segments; idempotent, so recovery can run it again after a crash inside it.
fn install(fs: &dyn Fs, dir: &Path, base: i64, replaced: &[i64]) -> Result<()> {
    let cleaning = dir.join(CLEANING_DIR);
    for extension in ["log", "index", "timeindex"] {
        let name = segment::file_name(base, extension);
        let from = cleaning.join(&name);
        if fs.exists(&from) {
            let to = dir.join(&name);
            fs.rename(&from, &to)
                .map_err(|source| Error::io("install cleaned segment", &to, source))?;
        }
    }
    for &old in replaced.iter().filter(|&&old| old != base) {
        for extension in ["log", "index", "timeindex"] {
            let path = dir.join(segment::file_name(old, extension));
            match fs.remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::io("delete cleaned-away segment", &path, source)),
            }
        }
    }
    fs.sync_dir(dir)
        .map_err(|source| Error::io("sync directory", dir, source))
}

fn remove_swap(fs: &dyn Fs, dir: &Path) -> Result<()> {
    let path = dir.join(SWAP_FILE);
    match fs.remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::io("remove swap file", &path, source)),
    }
    fs.sync_dir(dir)
        .map_err(|source| Error::io("sync directory", dir, source))
}

/// Calls `each` with every batch of `segment` from `from` on, in order.
fn for_each_batch(
    segment: &Segment,
    from: i64,
    index_interval_bytes: u32,
    inputs: &CleanInputs<'_>,
    bytes_read: &mut u64,
    mut each: impl FnMut(Batch) -> Result<bool>,
) -> Result<()> {
    let end = segment.next_offset();
    let mut offset = from.max(segment.base_offset());
    while offset < end {
        let Some(bytes) = segment.read(
            offset,
            READ_CHUNK_BYTES,
            end,
            ReadVerify::Crc,
            index_interval_bytes,
        )?
        else {
            break;
        };
        *bytes_read += bytes.len() as u64;
        (inputs.throttle)(bytes.len() as u64);
        for batch in batch::batches(bytes) {
            let batch = batch.map_err(|error| {
                Error::corrupt(segment.log_path(), 0, format!("cleaner read: {error}"))
            })?;
            offset = batch.header().next_offset();
            if !each(batch)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Per producer, whether the cleaner kept any record of its current transaction in this
/// pass: a transaction marker goes once no record of its transaction is left (and it is past
/// the delete horizon), as Kafka's cleaner removes markers; until then read_committed
/// readers and producer-state replay need it.
#[derive(Debug, Default)]
struct Transactions {
    kept_any: HashMap<i64, bool>,
}

/// The latest offset of each key in the dirty part, and where the map ends.
struct KeyMap {
    latest: HashMap<Bytes, i64>,
    bytes: usize,
    end: i64,
}

/// Whether a batch's records are data that compaction judges (not a control batch, not an
/// aborted transaction's).
fn is_aborted(header: &BatchHeader, inputs: &CleanInputs<'_>) -> bool {
    header.attributes.is_transactional()
        && !header.attributes.is_control()
        && (inputs.aborted)(header.producer_id, header.base_offset)
}

fn records_of(batch: &Batch, path: &Path) -> Result<batch::Records> {
    batch
        .records_decompressed()
        .map_err(|error| Error::corrupt(path, 0, format!("cleaner cannot read records: {error}")))
}

impl Partition {
    /// How much of the log is waiting for the cleaner, for the pass choice and the metrics.
    pub fn dirty_view(&self, stable_offset: i64) -> DirtyView {
        let cleanable = self.cleanable_segments(stable_offset);
        let first_dirty = self.cleaner_point.load(Ordering::Acquire);
        let mut view = DirtyView {
            oldest_dirty_ms: i64::MIN,
            ..DirtyView::default()
        };
        for segment in &cleanable {
            view.cleanable_bytes += segment.valid_bytes();
            if segment.next_offset() > first_dirty {
                view.dirty_bytes += segment.valid_bytes();
                if view.oldest_dirty_ms == i64::MIN {
                    view.oldest_dirty_ms = segment.max_timestamp_ms();
                }
            }
        }
        view
    }

    /// Whether a pass would run: the partition is compacted and its dirty bytes are at least
    /// `min.cleanable.dirty.ratio` of the cleanable bytes, or its oldest dirty segment is
    /// past `max.compaction.lag.ms`.
    pub fn wants_cleaning(&self, stable_offset: i64) -> bool {
        let limits = self.limits();
        if !limits.cleanup.compacts() {
            return false;
        }
        let now = self.env.clock.now_ms();
        let view = self.dirty_view(stable_offset);
        let ratio_met = view.dirty_bytes > 0
            && view.dirty_bytes * 1000
                >= view.cleanable_bytes
                    * u64::from(limits.compaction.min_cleanable_dirty_ratio_permille);
        let overdue = view.dirty_bytes > 0
            && limits.compaction.max_compaction_lag_ms.is_some_and(|max| {
                view.oldest_dirty_ms != i64::MIN
                    && now.saturating_sub(view.oldest_dirty_ms) > max as i64
            });
        ratio_met || overdue
    }

    /// The sealed segments the cleaner may rewrite, oldest first: below `stable_offset`,
    /// below every rolled segment not yet fsynced, each at least `min.compaction.lag.ms` old.
    fn cleanable_segments(&self, stable_offset: i64) -> Vec<Arc<Segment>> {
        let now = self.env.clock.now_ms();
        let lag = self.limits().compaction.min_compaction_lag_ms;
        // Below the recovery point too: a segment at or past it is scanned strictly after a
        // crash (its seal may have finished before the point moved), and must not have gaps.
        let unsealed_from = {
            let rolled = self.lock_rolled();
            let first = rolled
                .segments
                .first()
                .map_or(i64::MAX, |segment| segment.base_offset());
            first.min(rolled.recovery_point.unwrap_or(i64::MAX))
        };
        let segments: Vec<Arc<Segment>> = self.segments_read().values().cloned().collect();
        let sealed = &segments[..segments.len() - 1];
        sealed
            .iter()
            .take_while(|segment| {
                let newest = segment.max_timestamp_ms();
                segment.next_offset() <= stable_offset
                    && segment.base_offset() < unsealed_from
                    && (lag == 0
                        || (newest != i64::MIN && now.saturating_sub(newest) >= lag as i64))
            })
            .cloned()
            .collect()
    }

    /// Runs one cleaner pass if the partition is compacted and dirty enough (see the module
    /// documentation); `None` when there was nothing to do.
    ///
    /// # Errors
    /// `Error::Corrupt` for a batch that fails its checks (the pass stops, nothing swapped
    /// for the group it was in), `Error::Io` for a failed read, write, rename or fsync.
    pub fn clean(&self, inputs: &CleanInputs<'_>) -> Result<Option<CleanReport>> {
        let limits = self.limits();
        if !limits.cleanup.compacts() || self.closing.load(Ordering::Acquire) {
            return Ok(None);
        }
        let now = self.env.clock.now_ms();
        if !self.wants_cleaning(inputs.stable_offset) {
            return Ok(None);
        }
        let cleanable = self.cleanable_segments(inputs.stable_offset);
        let first_dirty = self.cleaner_point.load(Ordering::Acquire);
        let mut report = CleanReport {
            first_dirty,
            ..CleanReport::default()
        };
        let map = self.build_map(&cleanable, first_dirty, inputs, &mut report.bytes_read)?;
        report.map_entries = map.latest.len();
        report.map_bytes = map.bytes;
        let doomed: Vec<Arc<Segment>> = cleanable
            .iter()
            .filter(|segment| segment.base_offset() < map.end)
            .cloned()
            .collect();
        // Groups go in offset order from the first cleanable segment, so a transaction's
        // data batches are seen before its marker.
        let mut transactions = Transactions::default();
        for group in self.groups(&doomed) {
            if inputs.stop.load(Ordering::Acquire) || self.closing.load(Ordering::Acquire) {
                break;
            }
            self.clean_group(&group, &map, now, inputs, &mut transactions, &mut report)?;
        }
        report.cleaned_up_to = map.end;
        if map.end > first_dirty {
            checkpoint::write(
                self.env.fs.as_ref(),
                &self.dir,
                CLEANER_POINT_FILE,
                CLEANER_POINT_MAGIC,
                CLEANER_POINT_VERSION,
                0,
                &map.end.to_be_bytes(),
            )?;
            self.cleaner_point.fetch_max(map.end, Ordering::AcqRel);
        }
        Ok(Some(report))
    }

    fn build_map(
        &self,
        cleanable: &[Arc<Segment>],
        first_dirty: i64,
        inputs: &CleanInputs<'_>,
        bytes_read: &mut u64,
    ) -> Result<KeyMap> {
        let mut map = KeyMap {
            latest: HashMap::new(),
            bytes: 0,
            end: cleanable
                .last()
                .map_or(first_dirty, |segment| segment.next_offset()),
        };
        let budget = inputs.map_bytes_max;
        let interval = self.config.index_interval_bytes;
        let mut mapped_any = false;
        'segments: for segment in cleanable
            .iter()
            .filter(|segment| segment.next_offset() > first_dirty)
        {
            let mut full_at = None;
            for_each_batch(
                segment,
                first_dirty,
                interval,
                inputs,
                bytes_read,
                |batch| {
                    let header = *batch.header();
                    if header.next_offset() <= first_dirty {
                        return Ok(true);
                    }
                    if mapped_any && map.bytes >= budget {
                        full_at = Some(header.base_offset);
                        return Ok(false);
                    }
                    mapped_any = true;
                    if header.attributes.is_control() || is_aborted(&header, inputs) {
                        return Ok(true);
                    }
                    for record in records_of(&batch, segment.log_path())? {
                        let record = record.map_err(|error| {
                            Error::corrupt(
                                segment.log_path(),
                                0,
                                format!("cleaner cannot read a record: {error}"),
                            )
                        })?;
                        if let Some(key) = record.key {
                            let charge = key.len() + MAP_ENTRY_OVERHEAD_BYTES;
                            // Copied out of the batch: a slice would pin the whole read chunk.
                            if map
                                .latest
                                .insert(Bytes::copy_from_slice(&key), record.offset)
                                .is_none()
                            {
                                map.bytes += charge;
                            }
                        }
                    }
                    Ok(true)
                },
            )?;
            if let Some(end) = full_at {
                map.end = end;
                break 'segments;
            }
        }
        Ok(map)
    }

    /// Splits `segments` into runs of consecutive segments whose bytes together fit one
    /// segment (and whose offsets fit its 32-bit relative offsets).
    fn groups(&self, segments: &[Arc<Segment>]) -> Vec<Vec<Arc<Segment>>> {
        let bytes_max = self.limits().segment_bytes_max;
        let mut groups: Vec<Vec<Arc<Segment>>> = Vec::new();
        let mut bytes = 0u64;
        for segment in segments {
            let fits = groups.last().is_some_and(|group| {
                let base = group[0].base_offset();
                bytes + segment.valid_bytes() <= bytes_max
                    && segment.next_offset() - base < i64::from(u32::MAX)
            });
            if fits {
                bytes += segment.valid_bytes();
                groups
                    .last_mut()
                    .expect("fits needs a group")
                    .push(segment.clone());
            } else {
                bytes = segment.valid_bytes();
                groups.push(vec![segment.clone()]);
            }
        }
        groups
    }

    /// Rewrites one group into `cleaning/` and swaps it in.
    fn clean_group(
        &self,
        group: &[Arc<Segment>],
        map: &KeyMap,
        now_ms: i64,
        inputs: &CleanInputs<'_>,
        transactions: &mut Transactions,
        report: &mut CleanReport,
    ) -> Result<()> {
        let fs = self.env.fs.as_ref();
        let base = group[0].base_offset();
        let end = group.last().expect("groups are not empty").next_offset();
        let cleaning = self.dir.join(CLEANING_DIR);
        if fs.is_dir(&cleaning) {
            fs.remove_dir_all(&cleaning)
                .map_err(|source| Error::io("remove cleaner leftovers", &cleaning, source))?;
        }
        crate::storage::fs::create_dir_durable(fs, &cleaning)?;
        let config = &self.config;
        let cleaned = Segment::create(fs, &cleaning, base, config, now_ms)?;
        let horizon = now_ms.saturating_sub(self.limits().compaction.delete_retention_ms as i64);
        let mut pending: Vec<u8> = Vec::new();
        let mut headers: Vec<(usize, BatchHeader)> = Vec::new();
        let flush =
            |pending: &mut Vec<u8>, headers: &mut Vec<(usize, BatchHeader)>| -> Result<()> {
                if pending.is_empty() {
                    return Ok(());
                }
                cleaned.append(pending, headers, config)?;
                (inputs.throttle)(pending.len() as u64);
                pending.clear();
                headers.clear();
                Ok(())
            };
        let interval = config.index_interval_bytes;
        for segment in group {
            report.bytes_before += segment.valid_bytes();
            let path = segment.log_path().to_path_buf();
            for_each_batch(
                segment,
                segment.base_offset(),
                interval,
                inputs,
                &mut report.bytes_read,
                |batch| {
                    let (kept, removed) = self.clean_batch(
                        &batch,
                        map,
                        horizon,
                        (base, end),
                        inputs,
                        transactions,
                        &path,
                    )?;
                    report.records_removed += removed;
                    if let Some(kept) = kept {
                        let header = batch::parse_header(&kept)
                            .ok()
                            .flatten()
                            .expect("kept batches were validated or built here");
                        headers.push((pending.len(), header));
                        pending.extend_from_slice(&kept);
                        if pending.len() >= WRITE_CHUNK_BYTES {
                            flush(&mut pending, &mut headers)?;
                        }
                    }
                    Ok(true)
                },
            )?;
        }
        flush(&mut pending, &mut headers)?;
        cleaned.seal()?;
        fs.sync_dir(&cleaning)
            .map_err(|source| Error::io("sync directory", &cleaning, source))?;
        drop(cleaned);
        self.swap(group, base, end, report)
    }

    /// Decides one batch: `None` when it goes, else the bytes to keep (the original ones
    /// when every record stays), with the number of records removed. The group's first and
    /// last batches stay, emptied if need be, so the group keeps its offset range.
    #[allow(clippy::too_many_arguments)]
    fn clean_batch(
        &self,
        batch: &Batch,
        map: &KeyMap,
        horizon_ms: i64,
        (group_base, group_end): (i64, i64),
        inputs: &CleanInputs<'_>,
        transactions: &mut Transactions,
        path: &Path,
    ) -> Result<(Option<Bytes>, u64)> {
        let header = *batch.header();
        let pinned = header.base_offset == group_base || header.next_offset() == group_end;
        if header.base_offset >= map.end {
            return Ok((Some(batch.as_bytes().clone()), 0));
        }
        if header.attributes.is_control() {
            // A marker ends its producer's transaction: it goes when nothing of the
            // transaction is left and it is past the delete horizon (never at a group's
            // edge, which keeps the group's offset range).
            let kept_any = transactions
                .kept_any
                .remove(&header.producer_id)
                .unwrap_or(false);
            if !kept_any && !pinned && header.max_timestamp < horizon_ms {
                return Ok((None, 1));
            }
            return Ok((Some(batch.as_bytes().clone()), 0));
        }
        let aborted = is_aborted(&header, inputs);
        let mut section = Vec::new();
        let mut kept = 0i32;
        let mut removed = 0u64;
        let mut records = records_of(batch, path)?;
        while let Some(next) = records.next_with_bytes() {
            let (record, bytes) = next.map_err(|error| {
                Error::corrupt(path, 0, format!("cleaner cannot read a record: {error}"))
            })?;
            let keep = !aborted
                && match &record.key {
                    None => true,
                    Some(key) => {
                        let latest = map
                            .latest
                            .get(key)
                            .is_none_or(|&latest| latest <= record.offset);
                        let expired_tombstone = record.value.is_none()
                            && record.offset < map.end
                            && header.max_timestamp < horizon_ms;
                        latest && !expired_tombstone
                    }
                };
            if keep {
                section.extend_from_slice(&bytes);
                kept += 1;
            } else {
                removed += 1;
            }
        }
        if header.attributes.is_transactional() {
            *transactions
                .kept_any
                .entry(header.producer_id)
                .or_insert(false) |= kept > 0;
        }
        if removed == 0 {
            return Ok((Some(batch.as_bytes().clone()), 0));
        }
        if kept == 0 && !pinned {
            return Ok((None, removed));
        }
        let rewritten = batch::rewrite_records(
            &header,
            &section,
            kept,
            &batch.as_bytes()[batch::BATCH_HEADER_BYTES..],
        )
        .map_err(|error| {
            Error::corrupt(path, 0, format!("cleaner cannot rewrite a batch: {error}"))
        })?;
        Ok((Some(rewritten), removed))
    }

    /// Swaps the cleaned segment in for `group` (see the module documentation, step 4).
    fn swap(
        &self,
        group: &[Arc<Segment>],
        base: i64,
        end: i64,
        report: &mut CleanReport,
    ) -> Result<()> {
        let fs = self.env.fs.as_ref();
        let _maintenance = self.lock_maintenance();
        let still_there = {
            let map = self.segments_read();
            group.iter().all(|segment| {
                map.get(&segment.base_offset())
                    .is_some_and(|held| Arc::ptr_eq(held, segment))
            })
        };
        if !still_there || self.closing.load(Ordering::Acquire) {
            // Retention or DeleteRecords removed part of the group meanwhile, or the
            // partition is closing: the cleaned copy is dropped.
            let cleaning = self.dir.join(CLEANING_DIR);
            fs.remove_dir_all(&cleaning)
                .map_err(|source| Error::io("remove cleaner leftovers", &cleaning, source))?;
            return Ok(());
        }
        let replaced: Vec<i64> = group.iter().map(|segment| segment.base_offset()).collect();
        checkpoint::write(
            fs,
            &self.dir,
            SWAP_FILE,
            SWAP_MAGIC,
            SWAP_VERSION,
            0,
            &encode_swap(base, &replaced),
        )?;
        let known: Vec<i32> = self
            .leader_epochs()
            .starts()
            .iter()
            .map(|start| start.epoch)
            .collect();
        let installed = install(fs, &self.dir, base, &replaced).and_then(|()| {
            let (segment, problem) = Segment::open(
                fs,
                &self.dir,
                base,
                Some(end),
                &self.config,
                self.env.clock.now_ms(),
                KnownEpochs(&known),
            )?;
            match problem {
                None => Ok(segment),
                Some((position, reason)) => {
                    Err(Error::corrupt(segment.log_path(), position, reason))
                }
            }
        });
        let segment = match installed {
            Ok(segment) => Arc::new(segment),
            Err(error) => {
                // The swap file stays: the next open finishes the swap. Until then this
                // partition refuses writes, as after any failed fsync.
                self.fail(&format!("cleaner swap failed: {error}"));
                return Err(error);
            }
        };
        report.segments_before += group.len();
        report.segments_after += 1;
        report.bytes_after += segment.valid_bytes();
        {
            let mut map = self
                .segments
                .write()
                .unwrap_or_else(|poison| poison.into_inner());
            for old in &replaced {
                map.remove(old);
            }
            map.insert(base, segment);
        }
        remove_swap(fs, &self.dir)?;
        let cleaning = self.dir.join(CLEANING_DIR);
        if fs.is_dir(&cleaning) {
            fs.remove_dir_all(&cleaning)
                .map_err(|source| Error::io("remove cleaner leftovers", &cleaning, source))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "cleaner_tests.rs"]
mod tests;
