//! The metadata log's storage for openraft (issue #20), under the storage engine's rules
//! (docs/STORAGE.md, "Cluster metadata"): every record checksummed, nothing acknowledged
//! before its fsync, snapshots and small state replaced atomically (checkpoint files).
//!
//! Files in `<data-dir>/cluster/`:
//! - `raft-log`: the log entries, each `[payload length u32 BE][CRC-32 u32 BE][payload]`,
//!   the payload an entry as JSON. Appended, then fsynced, then acknowledged. A truncate or
//!   a purge rewrites the file (temp file, fsync, rename, directory fsync): the metadata log
//!   is small. Opening it keeps the longest prefix of whole, valid records and cuts the rest
//!   (only an unacknowledged tail can be torn).
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

use super::metadata::{MetadataResult, MetadataState, NodeId};
use super::raft::TypeConfig;
use crate::storage::checkpoint;
use crate::storage::fs::{FileHandle, Fs, OpenMode};

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
/// Largest log record accepted when reading.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The layout of a log record's payload: this octet, then one openraft 0.9 `Entry` as JSON.
/// Records written before the octet existed hold the JSON alone, which starts with `{`
/// (0x7b), so they are still told apart and read; any other leading octet is a layout this
/// build does not know, and the node does not start.
pub const ENTRY_VERSION: u8 = 1;

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

#[derive(Debug)]
struct LogInner<C: LogConfig> {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    io: Io,
    entries: BTreeMap<u64, Entry<C>>,
    file: Arc<dyn FileHandle>,
    file_bytes: u64,
    hard: HardState,
    state_sequence: u64,
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

/// A log entry as a record's payload: [`ENTRY_VERSION`], then the entry as JSON.
///
/// # Errors
/// An entry serde cannot write.
pub(crate) fn encode_entry<C: LogConfig>(entry: &Entry<C>) -> serde_json::Result<Vec<u8>> {
    let mut payload = vec![ENTRY_VERSION];
    serde_json::to_writer(&mut payload, entry)?;
    Ok(payload)
}

/// The entry of a record's payload: of [`ENTRY_VERSION`], or of the layout before it (the
/// JSON alone).
///
/// # Errors
/// Another version, an empty payload, or JSON that is not an entry.
pub(crate) fn decode_entry<C: LogConfig>(payload: &[u8]) -> std::io::Result<Entry<C>> {
    let json = match payload.first() {
        Some(&ENTRY_VERSION) => &payload[1..],
        Some(b'{') => payload,
        Some(other) => {
            return Err(std::io::Error::other(format!(
                "a {LOG_FILE} record of layout version {other}, which this build does not read \
                 (it reads version {ENTRY_VERSION} and the unversioned records before it)"
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
        let path = dir.join(LOG_FILE);
        let file = fs.open_file(&path, OpenMode::CreateOrOpen)?;
        let length = file.len_bytes()?;
        let mut bytes = vec![0u8; length as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let (payloads, valid) = decode_records(&bytes);
        let mut entries = BTreeMap::new();
        for payload in payloads {
            let entry = decode_entry::<C>(payload)?;
            let purged = hard.purged.is_some_and(|id| entry.log_id.index <= id.index);
            if !purged {
                entries.insert(entry.log_id.index, entry);
            }
        }
        if valid as u64 != length {
            tracing::warn!(
                path = %path.display(),
                valid,
                length,
                "cutting a raft log's torn tail"
            );
            file.set_len(valid as u64)?;
            file.sync_data()?;
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                fs,
                dir: dir.to_path_buf(),
                io,
                entries,
                file,
                file_bytes: valid as u64,
                hard,
                state_sequence,
            })),
        })
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

    /// Rewrites the log file with the entries in memory (after a truncate or purge).
    async fn rewrite(&self) -> std::io::Result<()> {
        let (fs, dir, io, bytes) = {
            let inner = lock(&self.inner);
            let mut bytes = Vec::new();
            for entry in inner.entries.values() {
                let payload = encode_entry(entry).map_err(std::io::Error::other)?;
                encode_record(&payload, &mut bytes);
            }
            (inner.fs.clone(), inner.dir.clone(), inner.io, bytes)
        };
        let length = bytes.len() as u64;
        let file = run_io(io, move || {
            let temp = dir.join(format!("{LOG_FILE}.tmp"));
            let path = dir.join(LOG_FILE);
            let file = fs.open_file(&temp, OpenMode::CreateOrOpen)?;
            file.set_len(0)?;
            file.write_all_at(&bytes, 0)?;
            file.sync_data()?;
            fs.rename(&temp, &path)?;
            fs.sync_dir(&dir)?;
            fs.open_file(&path, OpenMode::Existing)
        })
        .await?;
        let mut inner = lock(&self.inner);
        inner.file = file;
        inner.file_bytes = length;
        Ok(())
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
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        let mut bytes = Vec::new();
        for entry in &entries {
            let payload =
                encode_entry(entry).map_err(|error| StorageIOError::write_logs(&error))?;
            encode_record(&payload, &mut bytes);
        }
        let (file, position, io) = {
            let mut inner = lock(&self.inner);
            let position = inner.file_bytes;
            inner.file_bytes += bytes.len() as u64;
            for entry in entries {
                inner.entries.insert(entry.log_id.index, entry);
            }
            (inner.file.clone(), position, inner.io)
        };
        // Acknowledged (the callback) only once the bytes are fsynced.
        let written = run_io(io, move || {
            file.write_all_at(&bytes, position)?;
            file.sync_data()
        })
        .await;
        match written {
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
        {
            let mut inner = lock(&self.inner);
            let removed: Vec<u64> = inner
                .entries
                .range(log_id.index..)
                .map(|(index, _)| *index)
                .collect();
            for index in removed {
                inner.entries.remove(&index);
            }
        }
        self.rewrite()
            .await
            .map_err(|error| StorageIOError::write_logs(&error).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // The purged id first: a crash before the rewrite leaves entries that opening drops.
        self.save_hard(move |hard| hard.purged = Some(log_id))
            .await
            .map_err(|error| StorageIOError::write_logs(&error))?;
        {
            let mut inner = lock(&self.inner);
            let removed: Vec<u64> = inner
                .entries
                .range(..=log_id.index)
                .map(|(index, _)| *index)
                .collect();
            for index in removed {
                inner.entries.remove(&index);
            }
        }
        self.rewrite()
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

    #[test]
    fn a_record_is_the_version_octet_and_the_entry_as_json() {
        // docs/CLUSTER.md, `raft-log`: length, CRC-32 of the payload, version 1, JSON.
        let entry: Entry<TypeConfig> = serde_json::from_str(BLANK_JSON).expect("an entry");
        let payload = encode_entry(&entry).expect("encodes");
        assert_eq!(payload[0], ENTRY_VERSION);
        assert_eq!(&payload[1..], BLANK_JSON.as_bytes());
        let mut record = Vec::new();
        encode_record(&payload, &mut record);
        assert_eq!(
            record[..8],
            [0x00, 0x00, 0x00, 0x4c, 0x87, 0x52, 0x4b, 0xcc]
        );
        assert_eq!(record[8..], payload[..]);
        assert_eq!(
            decode_entry::<TypeConfig>(&payload).expect("decodes"),
            entry
        );
        // Records from before the version octet hold the JSON alone.
        assert_eq!(
            decode_entry::<TypeConfig>(BLANK_JSON.as_bytes()).expect("decodes"),
            entry
        );
    }

    #[test]
    fn a_log_holding_an_unknown_record_version_does_not_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = Vec::new();
        encode_record(BLANK_JSON.as_bytes(), &mut bytes);
        let mut future = vec![ENTRY_VERSION + 1];
        future.extend_from_slice(BLANK_JSON.as_bytes());
        encode_record(&future, &mut bytes);
        std::fs::write(dir.path().join(LOG_FILE), &bytes).expect("written");
        let fs: Arc<dyn Fs> = Arc::new(crate::storage::fs::RealFs);
        let Err(error) = LogStore::<TypeConfig>::open(fs.clone(), dir.path(), Io::Inline) else {
            panic!("a record of an unknown version was read");
        };
        assert!(error.to_string().contains("layout version 2"), "{error}");

        // The old record alone opens, and the log then appends version-1 records after it.
        let mut old = Vec::new();
        encode_record(BLANK_JSON.as_bytes(), &mut old);
        std::fs::write(dir.path().join(LOG_FILE), &old).expect("written");
        let store = LogStore::<TypeConfig>::open(fs, dir.path(), Io::Inline).expect("opens");
        assert_eq!(lock(&store.inner).entries.len(), 1);
    }
}
