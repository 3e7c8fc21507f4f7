//! The raft logs' storage for openraft (the metadata log, issue #20, and each replicated
//! partition's group, issue #21), under the storage engine's rules
//! (docs/STORAGE.md, "Cluster metadata"): every record checksummed, nothing acknowledged
//! before its fsync, snapshots and small state replaced atomically (checkpoint files).
//!
//! Files in `<data-dir>/cluster/`:
//! - `raft-log`, then `raft-log.<first index, 20 digits>`: the log entries in segment files,
//!   each record `[payload length u32 BE][CRC-32 u32 BE][payload]`, the payload the entry
//!   version octet and the entry as MessagePack. Appended, then fsynced, then acknowledged;
//!   an append to a segment of [`SEGMENT_BYTES`] or more starts a new one. A purge deletes
//!   the segments holding only purged entries (after `raft-state` names the purged id); a
//!   truncate deletes the later segments, last first, and cuts the one holding its entry.
//!   The last segment is written with direct I/O where the file system takes it: each
//!   append rewrites, unchanged, the bytes of the block holding the log's end (only after a
//!   truncation, or at the end of a log not padded to blocks) and ends with a padding record
//!   on a block boundary; no other byte is rewritten. Opening keeps the longest prefix of
//!   whole, valid records of the last segment and cuts the rest (only an unacknowledged
//!   tail can be torn); damage in an earlier segment stops the open.
//! - `raft-state` (checkpoint `WRST` v1, JSON): the vote, the committed log id, the purged
//!   log id. Written before the call that changes it returns.
//! - `raft-snapshot` (checkpoint `WRSN` v1, JSON): the last snapshot, its meta and the state.
//!
//! File I/O is synchronous (`storage::Fs`); the openraft callbacks run it on the blocking
//! pool, or inline for the simulation tests over the in-memory file system.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::codec;
use super::metadata::{MetadataResult, MetadataState, NodeId};
use super::raft::TypeConfig;
use crate::storage::checkpoint;
use crate::storage::fs::{FileHandle, Fs, OpenMode, DIRECT_ALIGN};

/// The log file's name.
pub const LOG_FILE: &str = "raft-log";
/// The vote, committed and purged ids.
pub const STATE_FILE: &str = "raft-state";
/// The last snapshot.
pub const SNAPSHOT_FILE: &str = "raft-snapshot";
const STATE_MAGIC: [u8; 4] = *b"WRST";
const SNAPSHOT_MAGIC: [u8; 4] = *b"WRSN";
/// Bytes before a log record's payload: length and CRC.
pub const RECORD_HEADER_BYTES: usize = 8;
/// Largest log record accepted when reading: the internal wire's largest frame
/// (`transport::FRAME_BYTES_MAX`), so every entry a node can be sent or take reads back.
/// It was 16 MiB until 2026-12-07, below a partition's largest entry (a produce of up to
/// the listener's 16 MiB frame, or more with `frame_bytes_max` raised): such a record was
/// written and acknowledged, then cut at the next start as a torn tail.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The layout of a log record's payload: this octet, then one openraft 0.9 `Entry` as
/// MessagePack ([`super::codec`]). Version 1 records hold the entry as JSON after the octet
/// ([`ENTRY_VERSION_JSON`]), and records written before the octet existed hold the JSON
/// alone, which starts with `{` (0x7b); both are still read. A payload of zeros is padding
/// ([`PADDING`]). Any other leading octet is a layout this build does not know, and the
/// node does not start.
pub const ENTRY_VERSION: u8 = 2;
/// The version of records holding the entry as JSON (written until 2026-12-05).
pub const ENTRY_VERSION_JSON: u8 = 1;
/// The first payload octet of a padding record: it holds no entry and readers skip it. A
/// raft log written with direct I/O ends each append with one, up to the next
/// [`DIRECT_ALIGN`] boundary (docs/STORAGE.md).
pub const PADDING: u8 = 0;

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What a raft log store needs of its openraft type config: Wharf's node ids and nodes, and
/// openraft's own entry type (serde-encoded in the records).
pub trait LogConfig:
    openraft::RaftTypeConfig<NodeId = NodeId, Node = openraft::BasicNode, Entry = Entry<Self>, D: Clone>
{
}

impl<C> LogConfig for C where
    C: openraft::RaftTypeConfig<
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = Entry<C>,
        D: Clone,
    >
{
}

/// How file I/O runs: on the blocking pool (a broker), or inline (simulation tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// `spawn_blocking`.
    Blocking,
    /// On the calling task.
    Inline,
}

pub(crate) async fn run_io<T: Send + 'static>(
    io: Io,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    match io {
        Io::Inline => work(),
        Io::Blocking => tokio::task::spawn_blocking(work)
            .await
            .map_err(std::io::Error::other)?,
    }
}

/// Refuses a file version this build does not know (docs/STORAGE.md: readers never guess).
fn check_version(name: &str, version: u16) -> std::io::Result<()> {
    if version == 1 {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{name} has version {version}; this build reads version 1 only"
        )))
    }
}

pub(crate) fn io_error(error: crate::storage::Error) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// The vote, committed and purged ids (`raft-state`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HardState {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

/// One file of a raft log: `raft-log` (the first; the whole log of a directory that never
/// rolled) or `raft-log.<index>`, whose records start at that index.
#[derive(Debug)]
struct LogSegment {
    /// The first index it may hold (0 for `raft-log`).
    first: u64,
    path: PathBuf,
    file: Arc<dyn FileHandle>,
    /// The same file opened for direct writes (the last segment, where the file system
    /// takes them): appends bypass the page cache, which a log read back only at restart
    /// does not need, and which costs a copy of every byte. Opened by the first append to
    /// the segment; dropped when a newer segment takes the appends.
    direct: Option<Arc<dyn FileHandle>>,
    /// Whether opening `direct` was tried (it is not tried again once refused).
    direct_tried: bool,
    /// Bytes of whole records in it.
    bytes: u64,
}

/// Where an entry's record is: the segment's `first`, the record's byte offset in it, and
/// its bytes (header included).
type Location = (u64, u64, u64);

/// Most record bytes one AppendEntries carries ([`LogStore`]'s `limited_get_log_entries`),
/// unless its first entry alone is larger: openraft asks for up to `max_payload_entries`
/// entries, and a group's entries are MiBs (a produce's batches, a run of publishes), so a
/// count alone could exceed the internal wire's 64 MiB frame — a follower then never
/// catches up — or the one heartbeat openraft 0.9 gives an AppendEntries to be answered.
/// 16 MiB is the largest single entry a default listener frame makes.
pub const APPEND_BYTES_MAX: u64 = 16 * 1024 * 1024;

#[derive(Debug)]
struct LogInner<C: LogConfig> {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    io: Io,
    entries: BTreeMap<u64, Entry<C>>,
    locations: BTreeMap<u64, Location>,
    /// Oldest first; the last one is appended to.
    segments: Vec<LogSegment>,
    /// An append to a segment holding at least this many bytes goes to a new one.
    segment_bytes: u64,
    hard: HardState,
    state_sequence: u64,
    /// Direct writes refused and written through the page cache instead (tests).
    #[cfg(test)]
    direct_refusals: u64,
}

impl<C: LogConfig> LogInner<C> {
    fn active(&self) -> &LogSegment {
        self.segments
            .last()
            .unwrap_or_else(|| unreachable!("a raft log always has a segment"))
    }
}

/// Bytes after which a raft log starts a new segment file ([`LogStore`]): a purge deletes
/// whole segments, never rewriting the entries it keeps.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The file name of the segment whose records start at `first` (0: `raft-log`).
fn segment_name(first: u64) -> String {
    if first == 0 {
        LOG_FILE.to_string()
    } else {
        format!("{LOG_FILE}.{first:020}")
    }
}

/// The `first` of a segment file's name, or None for another file.
fn segment_first(name: &str) -> Option<u64> {
    if name == LOG_FILE {
        return Some(0);
    }
    let digits = name.strip_prefix(LOG_FILE)?.strip_prefix('.')?;
    if digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit()) {
        digits.parse().ok().filter(|first| *first > 0)
    } else {
        None
    }
}

/// A raft log (`raft-log` and `raft-state` in one directory): the metadata log's by
/// default, or a replicated partition's (`cluster/replica.rs`); clones share it.
#[derive(Debug)]
pub struct LogStore<C: LogConfig = TypeConfig> {
    inner: Arc<Mutex<LogInner<C>>>,
}

impl<C: LogConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Encodes one log record.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).expect("metadata entries are small");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends the record of `entry` to `out`: the bytes of [`encode_record`] of
/// [`encode_entry`], with the entry encoded in place (one copy of its bytes, not two).
///
/// # Errors
/// An entry serde cannot write, or one past 4 GiB.
pub(crate) fn encode_entry_record<C: LogConfig>(
    entry: &Entry<C>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    out.push(ENTRY_VERSION);
    codec::encode_into(entry, out)?;
    let payload = &out[start + RECORD_HEADER_BYTES..];
    let length = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::other("a raft log entry past 4 GiB"))?;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Appends a padding record to `out` so that its bytes from `from` on fill whole
/// [`DIRECT_ALIGN`] blocks: a header and at least the [`PADDING`] octet, zeros after it.
fn pad_record(out: &mut Vec<u8>, from: usize) {
    let mut gap = (DIRECT_ALIGN - (out.len() - from) % DIRECT_ALIGN) % DIRECT_ALIGN;
    if gap == 0 {
        return;
    }
    if gap <= RECORD_HEADER_BYTES {
        gap += DIRECT_ALIGN;
    }
    let payload = vec![PADDING; gap - RECORD_HEADER_BYTES];
    encode_record(&payload, out);
}

/// Moves `buf[lead..]` forward until it starts at a [`DIRECT_ALIGN`]-aligned address (the
/// buffer may have moved while it grew), returning the new `lead`.
fn realign(buf: &mut Vec<u8>, mut lead: usize) -> usize {
    loop {
        let shift = buf.as_ptr().wrapping_add(lead).align_offset(DIRECT_ALIGN);
        if shift == 0 {
            return lead;
        }
        if buf.capacity() - buf.len() < shift {
            buf.reserve(DIRECT_ALIGN);
            continue;
        }
        let end = buf.len();
        buf.resize(end + shift, 0);
        buf.copy_within(lead..end, lead + shift);
        lead += shift;
    }
}

/// Append buffers kept for reuse, across every raft log of the node: an append's buffer
/// (MiBs for a partition's produce) allocated afresh faults in new pages each time.
static SCRATCH: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// Most buffers [`SCRATCH`] keeps, and the largest it keeps.
const SCRATCH_KEPT: usize = 4;
const SCRATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

fn take_scratch() -> Vec<u8> {
    lock(&SCRATCH).pop().unwrap_or_default()
}

fn keep_scratch(mut buf: Vec<u8>) {
    if buf.capacity() <= SCRATCH_BYTES_MAX {
        buf.clear();
        let mut kept = lock(&SCRATCH);
        if kept.len() < SCRATCH_KEPT {
            kept.push(buf);
        }
    }
}

/// A log entry as a record's payload: [`ENTRY_VERSION`], then the entry as MessagePack.
///
/// # Errors
/// An entry serde cannot write.
#[cfg(test)]
pub(crate) fn encode_entry<C: LogConfig>(entry: &Entry<C>) -> std::io::Result<Vec<u8>> {
    let mut payload = vec![ENTRY_VERSION];
    codec::encode_into(entry, &mut payload)?;
    Ok(payload)
}

/// The entry of a record's payload: of [`ENTRY_VERSION`], [`ENTRY_VERSION_JSON`], or the
/// layout before the octet (the JSON alone).
///
/// # Errors
/// Another version, an empty payload, or bytes that are not an entry.
pub(crate) fn decode_entry<C: LogConfig>(payload: &[u8]) -> std::io::Result<Entry<C>> {
    let json = match payload.first() {
        Some(&ENTRY_VERSION) => return codec::decode(&payload[1..]),
        Some(&ENTRY_VERSION_JSON) => &payload[1..],
        Some(b'{') => payload,
        Some(other) => {
            return Err(std::io::Error::other(format!(
                "a {LOG_FILE} record of layout version {other}, which this build does not read \
                 (it reads versions {ENTRY_VERSION_JSON} and {ENTRY_VERSION}, and the \
                 unversioned records before them)"
            )))
        }
        None => return Err(std::io::Error::other(format!("an empty {LOG_FILE} record"))),
    };
    serde_json::from_slice(json).map_err(std::io::Error::other)
}

/// Decodes the records of a log file: the payloads of the longest valid prefix and its
/// length in bytes.
pub fn decode_records(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut payloads = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= RECORD_HEADER_BYTES {
        let length = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if length > RECORD_PAYLOAD_BYTES_MAX || bytes.len() - at - RECORD_HEADER_BYTES < length {
            break;
        }
        let payload = &bytes[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + length];
        if crc32fast::hash(payload) != crc {
            break;
        }
        payloads.push(payload);
        at += RECORD_HEADER_BYTES + length;
    }
    (payloads, at)
}

impl<C: LogConfig> LogStore<C> {
    /// Opens (or creates) the log in `dir`, cutting a torn tail.
    ///
    /// # Errors
    /// I/O errors, or a damaged `raft-state`.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, io: Io) -> std::io::Result<LogStore<C>> {
        crate::storage::fs::create_dir_durable(fs.as_ref(), dir).map_err(io_error)?;
        let (hard, state_sequence) =
            match checkpoint::read(fs.as_ref(), &dir.join(STATE_FILE), STATE_MAGIC)
                .map_err(io_error)?
            {
                Some(found) => {
                    check_version(STATE_FILE, found.version)?;
                    (
                        serde_json::from_slice(&found.payload).map_err(std::io::Error::other)?,
                        found.sequence,
                    )
                }
                None => (HardState::default(), 0),
            };
        let mut firsts: Vec<u64> = fs
            .list_dir(dir)?
            .iter()
            .filter_map(|name| segment_first(name))
            .collect();
        firsts.sort_unstable();
        if firsts.is_empty() {
            firsts.push(0);
        }
        let last_first = firsts[firsts.len() - 1];
        let mut entries = BTreeMap::new();
        let mut locations = BTreeMap::new();
        let mut segments = Vec::new();
        for first in firsts {
            let path = dir.join(segment_name(first));
            let file = fs.open_file(&path, OpenMode::CreateOrOpen)?;
            let length = file.len_bytes()?;
            let mut bytes = vec![0u8; length as usize];
            file.read_exact_at(&mut bytes, 0)?;
            let (payloads, valid) = decode_records(&bytes);
            let mut offset = 0u64;
            for payload in payloads {
                if payload.first() == Some(&PADDING) && payload.iter().all(|&b| b == PADDING) {
                    offset += (RECORD_HEADER_BYTES + payload.len()) as u64;
                    continue;
                }
                let entry = decode_entry::<C>(payload)?;
                let index = entry.log_id.index;
                if index < first {
                    return Err(std::io::Error::other(format!(
                        "{} holds entry {index}, before its first index {first}",
                        path.display()
                    )));
                }
                let purged = hard.purged.is_some_and(|id| index <= id.index);
                if !purged {
                    entries.insert(index, entry);
                    let bytes = (RECORD_HEADER_BYTES + payload.len()) as u64;
                    locations.insert(index, (first, offset, bytes));
                }
                offset += (RECORD_HEADER_BYTES + payload.len()) as u64;
            }
            if valid as u64 != length {
                if first != last_first {
                    // Only the segment being appended to can be torn: a new one is started
                    // after the previous one's records were fsynced.
                    return Err(std::io::Error::other(format!(
                        "{} is damaged at byte {valid} of {length}, and it is not the last \
                         segment of the raft log",
                        path.display()
                    )));
                }
                tracing::warn!(
                    path = %path.display(),
                    valid,
                    length,
                    "cutting a raft log's torn tail"
                );
                file.set_len(valid as u64)?;
                file.sync_data()?;
            }
            segments.push(LogSegment {
                first,
                path,
                file,
                direct: None,
                direct_tried: false,
                bytes: valid as u64,
            });
        }
        let mut inner = LogInner {
            fs,
            dir: dir.to_path_buf(),
            io,
            entries,
            locations,
            segments,
            segment_bytes: SEGMENT_BYTES,
            hard,
            state_sequence,
            #[cfg(test)]
            direct_refusals: 0,
        };
        // Segments a purge had not deleted yet when the node stopped.
        if let Some(purged) = inner.hard.purged {
            for segment in Self::take_purged(&mut inner, purged.index) {
                inner.fs.remove_file(&segment.path)?;
            }
            inner.fs.sync_dir(dir)?;
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Sets the segment size (tests roll segments after a few records).
    #[cfg(test)]
    fn set_segment_bytes(&self, bytes: u64) {
        lock(&self.inner).segment_bytes = bytes;
    }

    /// Removes from `inner` the segments that hold only entries at or below `purged` (never
    /// the last one), and returns them for their files to be deleted.
    fn take_purged(inner: &mut LogInner<C>, purged: u64) -> Vec<LogSegment> {
        let mut keep_from = 0;
        while keep_from + 1 < inner.segments.len()
            && inner.segments[keep_from + 1].first <= purged + 1
        {
            keep_from += 1;
        }
        inner.segments.drain(..keep_from).collect()
    }

    /// Appends `entries` (indexes following the log's) to the last segment, or to a new
    /// one when it is full, and fsyncs them.
    async fn write_entries(&self, entries: Vec<Entry<C>>) -> std::io::Result<()> {
        let Some(first_index) = entries.first().map(|entry| entry.log_id.index) else {
            return Ok(());
        };
        // A full segment is followed by a new one starting at this append's first entry
        // (openraft appends one call at a time, so nothing appends in between).
        let roll = {
            let inner = lock(&self.inner);
            let active = inner.active();
            (active.bytes >= inner.segment_bytes && active.bytes > 0)
                .then(|| (inner.fs.clone(), inner.dir.clone(), inner.io))
        };
        if let Some((fs, dir, io)) = roll {
            let path = dir.join(segment_name(first_index));
            let created = path.clone();
            let file = run_io(io, move || {
                let file = fs.open_file(&created, OpenMode::CreateOrOpen)?;
                fs.sync_dir(&dir)?;
                Ok(file)
            })
            .await?;
            let mut inner = lock(&self.inner);
            // The full segment takes no more appends (unless a truncation makes it the
            // last again: its direct handle is opened again then).
            if let Some(full) = inner.segments.last_mut() {
                full.direct = None;
                full.direct_tried = false;
            }
            inner.segments.push(LogSegment {
                first: first_index,
                path,
                file,
                direct: None,
                direct_tried: false,
                bytes: 0,
            });
        }
        let untried = {
            let inner = lock(&self.inner);
            let active = inner.active();
            (!active.direct_tried).then(|| (inner.fs.clone(), active.path.clone(), inner.io))
        };
        if let Some((fs, path, io)) = untried {
            let direct = run_io(io, move || fs.open_direct(&path)).await?;
            let mut inner = lock(&self.inner);
            let active = inner
                .segments
                .last_mut()
                .unwrap_or_else(|| unreachable!("a raft log always has a segment"));
            active.direct = direct;
            active.direct_tried = true;
        }
        let (file, direct, position, io) = {
            let inner = lock(&self.inner);
            let active = inner.active();
            (
                active.file.clone(),
                active.direct.clone(),
                active.bytes,
                inner.io,
            )
        };
        // A direct write starts at the block holding `position`: the records before it in
        // that block (only after a truncation or a restart; appends end on a boundary) are
        // read back and written again unchanged.
        let kept = if direct.is_some() {
            (position % DIRECT_ALIGN as u64) as usize
        } else {
            0
        };
        let write_from = position - kept as u64;
        let mut buf = take_scratch();
        buf.reserve(2 * DIRECT_ALIGN + kept);
        let lead = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        buf.resize(lead + kept, 0);
        let records_at = buf.len();
        let mut offsets = Vec::with_capacity(entries.len());
        for entry in &entries {
            let at = buf.len();
            encode_entry_record(entry, &mut buf)?;
            offsets.push(((at - records_at) as u64, (buf.len() - at) as u64));
        }
        let lead = if direct.is_some() {
            pad_record(&mut buf, lead);
            realign(&mut buf, lead)
        } else {
            lead
        };
        let appended = (buf.len() - lead - kept) as u64;
        {
            let mut inner = lock(&self.inner);
            let active = inner
                .segments
                .last_mut()
                .unwrap_or_else(|| unreachable!("a raft log always has a segment"));
            active.bytes = position + appended;
            let segment = active.first;
            for (entry, (offset, bytes)) in entries.into_iter().zip(offsets) {
                let index = entry.log_id.index;
                inner.entries.insert(index, entry);
                inner
                    .locations
                    .insert(index, (segment, position + offset, bytes));
            }
        }
        let (buf, refused) = run_io(io, move || {
            let mut buf = buf;
            let Some(direct) = direct else {
                file.write_all_at(&buf[lead..], position)?;
                file.sync_data()?;
                return Ok((buf, false));
            };
            if kept > 0 {
                file.read_exact_at(&mut buf[lead..lead + kept], write_from)?;
            }
            match direct.write_all_at(&buf[lead..], write_from) {
                Ok(()) => {
                    direct.sync_data()?;
                    Ok((buf, false))
                }
                // Refused (a block size above DIRECT_ALIGN, or a short write that would
                // go on unaligned): the same bytes through the page cache, and this
                // segment's later appends too. Any other error is the append's.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(%error, "direct raft log writes refused; writing through the page cache");
                    file.write_all_at(&buf[lead..], write_from)?;
                    file.sync_data()?;
                    Ok((buf, true))
                }
                Err(error) => Err(error),
            }
        })
        .await?;
        if refused {
            let mut inner = lock(&self.inner);
            if let Some(active) = inner.segments.last_mut() {
                active.direct = None;
            }
            #[cfg(test)]
            {
                inner.direct_refusals += 1;
            }
        }
        keep_scratch(buf);
        Ok(())
    }

    /// Writes `raft-state` with `change` applied (fsynced, atomic).
    async fn save_hard(&self, change: impl FnOnce(&mut HardState)) -> std::io::Result<()> {
        let (fs, dir, io, sequence, payload) = {
            let mut inner = lock(&self.inner);
            change(&mut inner.hard);
            inner.state_sequence += 1;
            let payload = serde_json::to_vec(&inner.hard).map_err(std::io::Error::other)?;
            (
                inner.fs.clone(),
                inner.dir.clone(),
                inner.io,
                inner.state_sequence,
                payload,
            )
        };
        run_io(io, move || {
            checkpoint::write(
                fs.as_ref(),
                &dir,
                STATE_FILE,
                STATE_MAGIC,
                1,
                sequence,
                &payload,
            )
            .map_err(io_error)
        })
        .await
    }
}

impl<C: LogConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>> {
        let inner = lock(&self.inner);
        Ok(inner
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry<C>>> {
        // The entries from `start` while their records total at most APPEND_BYTES_MAX,
        // and always the first (openraft needs one).
        let inner = lock(&self.inner);
        let mut bytes = 0;
        let mut entries = Vec::new();
        for (index, entry) in inner.entries.range(start..end) {
            let size = inner.locations.get(index).map_or(0, |location| location.2);
            if !entries.is_empty() && bytes + size > APPEND_BYTES_MAX {
                break;
            }
            bytes += size;
            entries.push(entry.clone());
        }
        Ok(entries)
    }
}

impl<C: LogConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>> {
        let inner = lock(&self.inner);
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|entry| entry.log_id)
            .or(inner.hard.purged);
        Ok(LogState {
            last_purged_log_id: inner.hard.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let vote = *vote;
        self.save_hard(move |hard| hard.vote = Some(vote))
            .await
            .map_err(|error| StorageIOError::write_vote(&error).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        Ok(lock(&self.inner).hard.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.save_hard(move |hard| hard.committed = committed)
            .await
            .map_err(|error| StorageIOError::write(&error).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(lock(&self.inner).hard.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        // Acknowledged (the callback) only once the bytes are fsynced.
        match self.write_entries(entries.into_iter().collect()).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let message = error.to_string();
                callback.log_io_completed(Err(error));
                Err(StorageIOError::write_logs(&std::io::Error::other(message)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // Entries from `log_id` on go: the segments after the one holding it are deleted
        // (the last first, so a crash never leaves a gap), and that one is cut at its record.
        let (fs, dir, io, cut, deleted) = {
            let mut inner = lock(&self.inner);
            let at = log_id.index;
            inner.entries.split_off(&at);
            let Some(&(segment, offset, _)) = inner.locations.get(&at) else {
                return Ok(());
            };
            inner.locations.split_off(&at);
            let keep = inner
                .segments
                .iter()
                .position(|kept| kept.first == segment)
                .unwrap_or_else(|| unreachable!("a location names a segment of the log"));
            let deleted: Vec<LogSegment> = inner.segments.drain(keep + 1..).rev().collect();
            let active = &mut inner.segments[keep];
            active.bytes = offset;
            let cut = active.file.clone();
            (
                inner.fs.clone(),
                inner.dir.clone(),
                inner.io,
                (cut, offset),
                deleted,
            )
        };
        run_io(io, move || {
            for segment in &deleted {
                fs.remove_file(&segment.path)?;
            }
            if !deleted.is_empty() {
                fs.sync_dir(&dir)?;
            }
            let (file, offset) = cut;
            file.set_len(offset)?;
            file.sync_data()
        })
        .await
        .map_err(|error| StorageIOError::write_logs(&error).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // The purged id first: a crash before the segments are deleted leaves entries that
        // opening drops (and segments it deletes).
        self.save_hard(move |hard| hard.purged = Some(log_id))
            .await
            .map_err(|error| StorageIOError::write_logs(&error))?;
        let (fs, dir, io, deleted) = {
            let mut inner = lock(&self.inner);
            let after = log_id.index + 1;
            inner.entries = inner.entries.split_off(&after);
            inner.locations = inner.locations.split_off(&after);
            let deleted = Self::take_purged(&mut inner, log_id.index);
            (inner.fs.clone(), inner.dir.clone(), inner.io, deleted)
        };
        if deleted.is_empty() {
            return Ok(());
        }
        run_io(io, move || {
            for segment in &deleted {
                fs.remove_file(&segment.path)?;
            }
            fs.sync_dir(&dir)
        })
        .await
        .map_err(|error| StorageIOError::write_logs(&error).into())
    }
}

/// What the state machine has applied, as readers see it.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The state after the last applied entry.
    pub state: Arc<MetadataState>,
    /// The index of the last applied entry (0: none).
    pub index: u64,
}

/// A stored snapshot: its meta and the state as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

#[derive(Debug)]
struct MachineInner {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    io: Io,
    state: MetadataState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshot_sequence: u64,
}

/// The metadata state machine openraft applies committed entries to; clones share it.
#[derive(Debug, Clone)]
pub struct MachineStore {
    inner: Arc<Mutex<MachineInner>>,
    published: Arc<watch::Sender<Applied>>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state: MetadataState,
}

impl MachineStore {
    /// Opens the state machine in `dir`: the last snapshot's state, or an empty one.
    ///
    /// # Errors
    /// I/O errors, or a damaged snapshot file.
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, io: Io) -> std::io::Result<MachineStore> {
        crate::storage::fs::create_dir_durable(fs.as_ref(), dir).map_err(io_error)?;
        let found = checkpoint::read(fs.as_ref(), &dir.join(SNAPSHOT_FILE), SNAPSHOT_MAGIC)
            .map_err(io_error)?;
        if let Some(found) = &found {
            check_version(SNAPSHOT_FILE, found.version)?;
        }
        let (snapshot, sequence) = match found {
            Some(found) => (
                Some(
                    serde_json::from_slice::<StoredSnapshot>(&found.payload)
                        .map_err(std::io::Error::other)?,
                ),
                found.sequence,
            ),
            None => (None, 0),
        };
        let (state, last_applied, membership) = match &snapshot {
            Some(stored) => {
                let body: SnapshotBody =
                    serde_json::from_slice(&stored.data).map_err(std::io::Error::other)?;
                (
                    body.state,
                    stored.meta.last_log_id,
                    stored.meta.last_membership.clone(),
                )
            }
            None => (MetadataState::default(), None, StoredMembership::default()),
        };
        let (published, _) = watch::channel(Applied {
            state: Arc::new(state.clone()),
            index: last_applied.map_or(0, |id| id.index),
        });
        Ok(MachineStore {
            inner: Arc::new(Mutex::new(MachineInner {
                fs,
                dir: dir.to_path_buf(),
                io,
                state,
                last_applied,
                membership,
                snapshot,
                snapshot_sequence: sequence,
            })),
            published: Arc::new(published),
        })
    }

    /// A receiver of what has been applied, updated after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.published.subscribe()
    }

    fn publish(&self, inner: &MachineInner) {
        self.published.send_replace(Applied {
            state: Arc::new(inner.state.clone()),
            index: inner.last_applied.map_or(0, |id| id.index),
        });
    }

    async fn store_snapshot(&self, stored: StoredSnapshot) -> std::io::Result<()> {
        let (fs, dir, io, sequence) = {
            let mut inner = lock(&self.inner);
            inner.snapshot_sequence += 1;
            (
                inner.fs.clone(),
                inner.dir.clone(),
                inner.io,
                inner.snapshot_sequence,
            )
        };
        let payload = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
        run_io(io, move || {
            checkpoint::write(
                fs.as_ref(),
                &dir,
                SNAPSHOT_FILE,
                SNAPSHOT_MAGIC,
                1,
                sequence,
                &payload,
            )
            .map_err(io_error)
        })
        .await?;
        lock(&self.inner).snapshot = Some(stored);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let stored = {
            let inner = lock(&self.inner);
            let data = serde_json::to_vec(&SnapshotBody {
                state: inner.state.clone(),
            })
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
            let snapshot_id = match inner.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, inner.snapshot_sequence),
                None => format!("none-{}", inner.snapshot_sequence),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: inner.last_applied,
                    last_membership: inner.membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        self.store_snapshot(stored.clone())
            .await
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(stored.data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MachineStore {
    type SnapshotBuilder = MachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        let inner = lock(&self.inner);
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetadataResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = lock(&self.inner);
        let mut results = Vec::new();
        for entry in entries {
            inner.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => MetadataResult::Done,
                EntryPayload::Normal(command) => inner.state.apply(&command),
                EntryPayload::Membership(membership) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                    MetadataResult::Done
                }
            };
            results.push(result);
        }
        self.publish(&inner);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Vec<u8>>,
    ) -> Result<()> {
        let body: SnapshotBody = serde_json::from_slice(&snapshot)
            .map_err(|error| StorageIOError::read_snapshot(None, &error))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: *snapshot,
        };
        // Durable first: a crash after this reopens from the new snapshot.
        self.store_snapshot(stored)
            .await
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        let mut inner = lock(&self.inner);
        inner.state = body.state;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        self.publish(&inner);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let inner = lock(&self.inner);
        Ok(inner.snapshot.as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(stored.data.clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use crate::cluster::metadata::MetadataCommand;

    use super::*;

    #[test]
    fn a_torn_or_damaged_tail_ends_the_valid_records() {
        let mut bytes = Vec::new();
        encode_record(b"one", &mut bytes);
        encode_record(b"two", &mut bytes);
        let whole = bytes.len();
        encode_record(b"three", &mut bytes);
        let (payloads, valid) = decode_records(&bytes[..bytes.len() - 1]);
        assert_eq!(payloads, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(valid, whole);
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(decode_records(&damaged).1, whole);
        assert_eq!(decode_records(&bytes).1, bytes.len());
        let mut huge = bytes[..whole].to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(decode_records(&huge).1, whole);
    }

    /// A new leader's blank entry at term 1, node 1, index 1, as openraft 0.9's JSON.
    const BLANK_JSON: &str =
        r#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"payload":"Blank"}"#;

    /// The same entry as MessagePack: a map of `log_id` (a map of `leader_id`, itself a map
    /// of `term` and `node_id`, and `index`) and `payload`, the unit variant's name.
    const BLANK_MSGPACK: &[u8] = &[
        0x82, 0xa6, b'l', b'o', b'g', b'_', b'i', b'd', 0x82, 0xa9, b'l', b'e', b'a', b'd', b'e',
        b'r', b'_', b'i', b'd', 0x82, 0xa4, b't', b'e', b'r', b'm', 0x01, 0xa7, b'n', b'o', b'd',
        b'e', b'_', b'i', b'd', 0x01, 0xa5, b'i', b'n', b'd', b'e', b'x', 0x01, 0xa7, b'p', b'a',
        b'y', b'l', b'o', b'a', b'd', 0xa5, b'B', b'l', b'a', b'n', b'k',
    ];

    #[test]
    fn a_record_is_the_version_octet_and_the_entry_as_messagepack() {
        // docs/CLUSTER.md, `raft-log`: length, CRC-32 of the payload, version 2, MessagePack.
        let entry: Entry<TypeConfig> = serde_json::from_str(BLANK_JSON).expect("an entry");
        let payload = encode_entry(&entry).expect("encodes");
        assert_eq!(payload[0], ENTRY_VERSION);
        assert_eq!(&payload[1..], BLANK_MSGPACK);
        let mut record = Vec::new();
        encode_record(&payload, &mut record);
        assert_eq!(record[..8], RECORD_HEADER_GOLDEN);
        assert_eq!(record[8..], payload[..]);
        assert_eq!(
            decode_entry::<TypeConfig>(&payload).expect("decodes"),
            entry
        );
        // Version 1 records hold the JSON after the octet; records from before the octet
        // hold the JSON alone.
        let mut version_1 = vec![ENTRY_VERSION_JSON];
        version_1.extend_from_slice(BLANK_JSON.as_bytes());
        assert_eq!(
            decode_entry::<TypeConfig>(&version_1).expect("decodes"),
            entry
        );
        assert_eq!(
            decode_entry::<TypeConfig>(BLANK_JSON.as_bytes()).expect("decodes"),
            entry
        );
    }

    #[test]
    fn an_entry_encoded_in_place_is_the_record_of_its_payload_and_padding_is_skipped() {
        let entry: Entry<TypeConfig> = serde_json::from_str(BLANK_JSON).expect("an entry");
        let mut in_place = vec![7u8; 3];
        encode_entry_record(&entry, &mut in_place).expect("encodes");
        let mut two_steps = vec![7u8; 3];
        encode_record(&encode_entry(&entry).expect("encodes"), &mut two_steps);
        assert_eq!(in_place, two_steps);
        // A padding record fills the rest of the block from `from`; one too short for a
        // header and the padding octet takes the next block too; none on a boundary.
        for (before, expected) in [
            (3 + 65, 4096),
            (4096 - 8, 8192),
            (4096 - 9, 4096),
            (4096, 4096),
        ] {
            let mut bytes = vec![1u8; before];
            pad_record(&mut bytes, 0);
            assert_eq!(bytes.len(), expected, "{before} bytes before the padding");
            let (payloads, valid) = decode_records(&bytes[before..]);
            assert_eq!(valid, expected - before);
            assert_eq!(payloads.len(), usize::from(expected > before));
            assert!(payloads
                .iter()
                .all(|payload| payload.iter().all(|&b| b == PADDING)));
        }
        // realign moves the bytes after `lead` to an aligned address, unchanged.
        let mut buf: Vec<u8> = Vec::with_capacity(10);
        buf.extend_from_slice(&[0, 1, 2, 3]);
        let lead = realign(&mut buf, 1);
        assert_eq!(
            buf.as_ptr().wrapping_add(lead).align_offset(DIRECT_ALIGN),
            0
        );
        assert_eq!(buf[lead..], [1, 2, 3]);
    }

    #[tokio::test]
    async fn direct_appends_end_on_blocks_and_survive_truncation_and_reopening() {
        // Goal: with direct writes (the last segment on a file system that takes them), each
        // append ends on a block boundary and every entry reads back: after a truncation
        // left the end mid-block (the block's kept bytes read back and rewritten), after a
        // reopen, and after a log written before padding (its end mid-block). Where the
        // file system refuses direct I/O the same checks run buffered, without the
        // boundary check.
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_on_disk(dir.path());
        let length = || {
            std::fs::metadata(dir.path().join(LOG_FILE))
                .expect("log")
                .len()
        };
        // A log from before padding: two records, its end mid-block.
        let mut old = Vec::new();
        for entry in [put(1, 1, 10), put(1, 2, 5_000)] {
            encode_record(&encode_entry(&entry).expect("encodes"), &mut old);
        }
        std::fs::write(dir.path().join(LOG_FILE), &old).expect("written");
        let mut store = open().expect("opens");
        store
            .write_entries(vec![put(1, 3, 100)])
            .await
            .expect("append");
        let direct = lock(&store.inner).active().direct.is_some();
        eprintln!("direct writes: {direct}");
        assert_eq!(
            &std::fs::read(dir.path().join(LOG_FILE)).expect("log")[..old.len()],
            &old[..]
        );
        for (index, size) in [(4, 70_000), (5, 3)] {
            store
                .write_entries(vec![put(1, index, size)])
                .await
                .expect("append");
            assert_eq!(
                length().is_multiple_of(DIRECT_ALIGN as u64),
                direct,
                "length {}",
                length()
            );
        }
        // Two entries in one append: the second starts mid-block, and a truncation there
        // leaves the end mid-block.
        store
            .write_entries(vec![put(1, 6, 20), put(1, 7, 30)])
            .await
            .expect("append");
        store.truncate(log_id(1, 1, 7)).await.expect("truncate");
        if direct {
            assert!(!length().is_multiple_of(DIRECT_ALIGN as u64));
        }
        store
            .write_entries(vec![put(2, 7, 40), put(2, 8, 9_000)])
            .await
            .expect("append");
        assert_eq!(length().is_multiple_of(DIRECT_ALIGN as u64), direct);
        assert_eq!(lock(&store.inner).direct_refusals, 0);
        drop(store);
        let reopened = open().expect("reopens");
        reopened
            .write_entries(vec![put(2, 9, 1)])
            .await
            .expect("append");
        let expected: Vec<Entry<TypeConfig>> = [
            (1, 1, 10),
            (1, 2, 5_000),
            (1, 3, 100),
            (1, 4, 70_000),
            (1, 5, 3),
            (1, 6, 20),
            (2, 7, 40),
            (2, 8, 9_000),
            (2, 9, 1),
        ]
        .into_iter()
        .map(|(term, index, size)| put(term, index, size))
        .collect();
        let held: Vec<Entry<TypeConfig>> =
            lock(&reopened.inner).entries.values().cloned().collect();
        assert_eq!(held, expected);
        assert_eq!(lock(&reopened.inner).direct_refusals, 0);
        drop(reopened);
        let again: Vec<Entry<TypeConfig>> = lock(&open().expect("reopens").inner)
            .entries
            .values()
            .cloned()
            .collect();
        assert_eq!(again, expected);
    }

    #[tokio::test]
    async fn an_entry_past_16_mib_reads_back_after_a_restart() {
        // Goal: every entry a node takes reads back. Until 2026-12-07 the reader stopped at
        // records over 16 MiB, which a partition's produce can reach: such an entry was
        // acknowledged, then cut at the next start as a torn tail, with all after it.
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_on_disk(dir.path());
        let store = open().expect("opens");
        let big = put(1, 1, 20 * 1024 * 1024);
        store
            .write_entries(vec![big.clone(), blank(1, 2)])
            .await
            .expect("append");
        drop(store);
        let reopened = open().expect("reopens");
        assert_eq!(held(&reopened), vec![(1, 1), (1, 2)]);
        assert_eq!(lock(&reopened.inner).entries[&1], big);
    }

    #[tokio::test]
    async fn an_append_to_a_follower_carries_at_most_append_bytes_max_past_its_first_entry() {
        // Goal: openraft's AppendEntries never outgrows the internal frame however many
        // entries it may carry: before, six queue entries of up to 16 MiB each made a frame
        // the wire refused, and that follower never caught up. Method: entries of 10 MiB and
        // small ones; the reader returns small ones together, a large one alone or with
        // what fits, and always the first entry, also after a reopen.
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_on_disk(dir.path());
        let store = open().expect("opens");
        let big = 10 * 1024 * 1024;
        for (index, bytes) in [(1, 10), (2, 20), (3, big), (4, big), (5, 30), (6, big)] {
            store
                .write_entries(vec![put(1, index, bytes)])
                .await
                .expect("append");
        }
        for mut reader in [store, open().expect("reopens")] {
            for (start, end, expected) in [
                (1, 7, vec![1, 2, 3]),
                (3, 7, vec![3]),
                (4, 7, vec![4, 5]),
                (6, 7, vec![6]),
                (1, 3, vec![1, 2]),
            ] {
                let entries = reader
                    .limited_get_log_entries(start, end)
                    .await
                    .expect("read");
                let indexes: Vec<u64> = entries.iter().map(|entry| entry.log_id.index).collect();
                assert_eq!(indexes, expected, "entries {start}..{end}");
            }
        }
    }

    /// The header of the blank entry's record: payload length 57, its CRC-32.
    const RECORD_HEADER_GOLDEN: [u8; 8] = [0x00, 0x00, 0x00, 0x39, 0xdf, 0x19, 0x56, 0x5f];

    #[test]
    fn a_log_holding_an_unknown_record_version_does_not_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = Vec::new();
        encode_record(BLANK_JSON.as_bytes(), &mut bytes);
        let mut future = vec![ENTRY_VERSION + 1];
        future.extend_from_slice(BLANK_MSGPACK);
        encode_record(&future, &mut bytes);
        std::fs::write(dir.path().join(LOG_FILE), &bytes).expect("written");
        let fs: Arc<dyn Fs> = Arc::new(crate::storage::fs::RealFs);
        let Err(error) = LogStore::<TypeConfig>::open(fs.clone(), dir.path(), Io::Inline) else {
            panic!("a record of an unknown version was read");
        };
        assert!(error.to_string().contains("layout version 3"), "{error}");

        // The old record alone opens, and the log then appends version-2 records after it.
        let mut old = Vec::new();
        encode_record(BLANK_JSON.as_bytes(), &mut old);
        std::fs::write(dir.path().join(LOG_FILE), &old).expect("written");
        let store = LogStore::<TypeConfig>::open(fs, dir.path(), Io::Inline).expect("opens");
        assert_eq!(lock(&store.inner).entries.len(), 1);
    }

    fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
        openraft::testing::blank_ent::<TypeConfig>(term, 1, index)
    }

    /// Entry `index` of `term` (leader node 1), about `bytes` long.
    fn put(term: u64, index: u64, bytes: usize) -> Entry<TypeConfig> {
        Entry::<TypeConfig> {
            log_id: log_id(term, 1, index),
            payload: EntryPayload::Normal(MetadataCommand::TestPut {
                key: "k".repeat(bytes),
                value: index,
            }),
        }
    }

    /// The log in `dir`, on the real file system.
    fn open_on_disk(dir: &Path) -> std::io::Result<LogStore> {
        LogStore::<TypeConfig>::open(Arc::new(crate::storage::fs::RealFs), dir, Io::Inline)
    }

    fn log_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .filter(|name| segment_first(name).is_some())
            .collect();
        names.sort();
        names
    }

    fn held(store: &LogStore) -> Vec<(u64, u64)> {
        lock(&store.inner)
            .entries
            .values()
            .map(|entry| (entry.log_id.leader_id.term, entry.log_id.index))
            .collect()
    }

    #[tokio::test]
    async fn a_log_rolls_segments_a_purge_deletes_whole_ones_and_a_truncate_cuts_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_on_disk(dir.path());
        let mut store = open().expect("opens");
        // Every append after the first starts a new segment.
        store.set_segment_bytes(1);
        for index in 1..=10 {
            store
                .write_entries(vec![blank(1, index)])
                .await
                .expect("append");
        }
        let mut expected = vec!["raft-log".to_string()];
        expected.extend((2..=10).map(|first| format!("raft-log.{first:020}")));
        assert_eq!(log_files(dir.path()), expected);
        let kept = std::fs::read(dir.path().join(segment_name(5))).expect("segment 5");

        // A purge deletes the segments holding only purged entries, keeps the others as
        // they were, and a reopened log holds what the store held.
        store.purge(log_id(1, 1, 4)).await.expect("purge");
        assert_eq!(log_files(dir.path()), expected[4..].to_vec());
        assert_eq!(
            std::fs::read(dir.path().join(segment_name(5))).expect("segment 5"),
            kept
        );
        let after_purge: Vec<(u64, u64)> = (5..=10).map(|index| (1, index)).collect();
        assert_eq!(held(&store), after_purge);
        assert_eq!(held(&open().expect("reopens")), after_purge);

        // A truncate deletes the later segments and cuts the one holding its entry.
        store.truncate(log_id(1, 1, 7)).await.expect("truncate");
        assert_eq!(log_files(dir.path()), expected[4..7].to_vec());
        let cut = std::fs::metadata(dir.path().join(segment_name(7))).expect("segment 7");
        assert_eq!(cut.len(), 0);
        // The cut segment is appended to again (it is empty), then the next one rolls.
        store
            .write_entries(vec![blank(2, 7), blank(2, 8)])
            .await
            .expect("append");
        store
            .write_entries(vec![blank(2, 9)])
            .await
            .expect("append");
        assert_eq!(
            log_files(dir.path()).last().map(String::as_str),
            Some("raft-log.00000000000000000009")
        );
        let reopened = open().expect("reopens");
        assert_eq!(
            held(&reopened),
            vec![(1, 5), (1, 6), (2, 7), (2, 8), (2, 9)]
        );
        let state = lock(&reopened.inner).hard.purged;
        assert_eq!(state, Some(log_id(1, 1, 4)));
    }

    #[tokio::test]
    async fn only_the_last_segment_may_be_torn() {
        let dir = tempfile::tempdir().expect("temp dir");
        let open = || open_on_disk(dir.path());
        let store = open().expect("opens");
        store.set_segment_bytes(1);
        for index in 1..=3 {
            store
                .write_entries(vec![blank(1, index)])
                .await
                .expect("append");
        }
        drop(store);
        // A torn tail of the last segment is cut at open.
        let last = dir.path().join(segment_name(3));
        let mut bytes = std::fs::read(&last).expect("last");
        let whole = bytes.len();
        bytes.extend_from_slice(&[0, 0, 0, 9, 1, 2]);
        std::fs::write(&last, &bytes).expect("torn");
        assert_eq!(held(&open().expect("opens")), vec![(1, 1), (1, 2), (1, 3)]);
        assert_eq!(std::fs::read(&last).expect("last").len(), whole);
        // Damage in an earlier one stops the open, naming the file.
        let middle = dir.path().join(segment_name(2));
        let mut bytes = std::fs::read(&middle).expect("middle");
        let at = bytes.len() - 1;
        bytes[at] ^= 1;
        std::fs::write(&middle, &bytes).expect("damaged");
        let Err(error) = open() else {
            panic!("a damaged middle segment was read");
        };
        assert!(
            error.to_string().contains("not the last segment"),
            "{error}"
        );
    }

    #[test]
    fn segment_names_sort_by_their_first_index() {
        assert_eq!(segment_first("raft-log"), Some(0));
        assert_eq!(segment_first(&segment_name(42)), Some(42));
        assert_eq!(segment_name(42), "raft-log.00000000000000000042");
        assert_eq!(segment_first("raft-log.tmp"), None);
        assert_eq!(segment_first("raft-log.42"), None);
        assert_eq!(segment_first("raft-log.00000000000000000000"), None);
        assert_eq!(segment_first("raft-state"), None);
    }

    /// openraft's storage suite over the log (with a segment per append, so its purges and
    /// truncates cross segments) and the metadata state machine.
    struct SuiteBuilder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, MachineStore, tempfile::TempDir>
        for SuiteBuilder
    {
        async fn build(
            &self,
        ) -> std::result::Result<(tempfile::TempDir, LogStore, MachineStore), StorageError<NodeId>>
        {
            let dir = tempfile::tempdir().expect("temp dir");
            let fs: Arc<dyn Fs> = Arc::new(crate::storage::fs::RealFs);
            let log = LogStore::open(fs.clone(), dir.path(), Io::Inline).expect("log");
            log.set_segment_bytes(1);
            let machine = MachineStore::open(fs, dir.path(), Io::Inline).expect("machine");
            Ok((dir, log, machine))
        }
    }

    #[test]
    fn the_stores_pass_openraft_s_storage_suite() {
        openraft::testing::Suite::test_all(SuiteBuilder).expect("suite");
    }
}
