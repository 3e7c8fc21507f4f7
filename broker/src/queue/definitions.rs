//! The durable definitions file: the exchanges, queues and bindings that survive a restart,
//! kept as one checkpoint file (`definitions`) in the queues directory.
//!
//! Write ordering: the manager takes a `Snapshot` under its registry lock, which numbers
//! it in the order of the registry's changes, and writes it with
//! `DefinitionsFile::persist` after releasing the lock (the write fsyncs twice, and
//! routing takes the same lock for every publish). So two writers may race; `persist`
//! skips a snapshot older than the one already written, and the file never goes back to
//! an older state.
//!
//! Owns only the file and its payload types; what goes into a snapshot is the manager's
//! registry. Never called with the registry lock held across a write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::wire_struct;

use crate::queue::types::QueueError;
use crate::storage::{checkpoint, Fs};

/// File holding durable definitions, in the queues directory.
pub const DEFINITIONS_FILE: &str = "definitions";
const DEFINITIONS_MAGIC: [u8; 4] = *b"WQDF";
/// The payload version this code writes and reads.
const DEFINITIONS_VERSION: u16 = 1;

wire_struct! {
    /// A durable exchange.
    pub struct StoredExchange {
        pub name: String,
        pub kind: String,
    }
}

wire_struct! {
    /// A durable queue.
    pub struct StoredQueue {
        pub name: String,
        pub args: Vec<StoredArg>,
    }
}

wire_struct! {
    /// One queue argument.
    pub struct StoredArg {
        pub key: String,
        pub value: String,
    }
}

wire_struct! {
    /// A durable binding.
    pub struct StoredBinding {
        pub exchange: String,
        pub queue: String,
        pub routing_key: String,
        pub headers: Vec<StoredArg>,
    }
}

wire_struct! {
    /// The definitions file's payload.
    pub struct StoredDefinitions {
        pub exchanges: Vec<StoredExchange>,
        pub queues: Vec<StoredQueue>,
        pub bindings: Vec<StoredBinding>,
    }
}

/// Encoded definitions, numbered in the order they were taken.
#[derive(Debug)]
pub(crate) struct Snapshot {
    generation: u64,
    bytes: BytesMut,
}

/// The definitions file of one queues directory, and the order of its writes.
#[derive(Debug)]
pub(crate) struct DefinitionsFile {
    dir: PathBuf,
    fs: Arc<dyn Fs>,
    /// Generation of the newest snapshot taken (under the registry lock).
    taken: AtomicU64,
    /// Generation of the newest snapshot written; held while writing, so the file is
    /// written outside the registry lock and never goes back to an older snapshot.
    written: Mutex<u64>,
}

impl DefinitionsFile {
    /// The file in `dir` (no I/O).
    pub(crate) fn new(dir: &Path, fs: Arc<dyn Fs>) -> DefinitionsFile {
        DefinitionsFile {
            dir: dir.to_path_buf(),
            fs,
            taken: AtomicU64::new(0),
            written: Mutex::new(0),
        }
    }

    /// Reads the stored definitions; `None` if there is no file yet.
    ///
    /// # Errors
    /// `Storage` if the file cannot be read, fails its checks, has another version or does
    /// not decode.
    pub(crate) fn read(&self) -> Result<Option<StoredDefinitions>, QueueError> {
        let saved = checkpoint::read(
            self.fs.as_ref(),
            &self.dir.join(DEFINITIONS_FILE),
            DEFINITIONS_MAGIC,
        )
        .map_err(|error| QueueError::Storage(error.to_string()))?;
        let Some(found) = saved else {
            return Ok(None);
        };
        if found.version != DEFINITIONS_VERSION {
            return Err(QueueError::Storage(format!(
                "queue definitions version {} is not {DEFINITIONS_VERSION}",
                found.version
            )));
        }
        let mut reader = Reader::new(Bytes::from(found.payload));
        let definitions = StoredDefinitions::decode(&mut reader, "definitions")
            .and_then(|definitions| reader.finish().map(|()| definitions))
            .map_err(|error| QueueError::Storage(format!("definitions do not decode: {error}")))?;
        Ok(Some(definitions))
    }

    /// Encodes `definitions` and numbers the snapshot. The caller holds the registry lock
    /// that `definitions` was read under, so numbers follow the registry's changes; it
    /// writes the snapshot with [`DefinitionsFile::persist`] after releasing the lock.
    pub(crate) fn snapshot(&self, definitions: &StoredDefinitions) -> Snapshot {
        let mut bytes = BytesMut::new();
        definitions.encode(&mut bytes);
        let generation = self.taken.fetch_add(1, Ordering::Relaxed) + 1;
        Snapshot { generation, bytes }
    }

    /// Writes a snapshot from [`DefinitionsFile::snapshot`], unless a newer one (which
    /// holds its changes too) is already written.
    ///
    /// # Errors
    /// `Storage` if the write fails; the previous file is then intact.
    pub(crate) fn persist(&self, snapshot: Snapshot) -> Result<(), QueueError> {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *written >= snapshot.generation {
            return Ok(());
        }
        checkpoint::write(
            self.fs.as_ref(),
            &self.dir,
            DEFINITIONS_FILE,
            DEFINITIONS_MAGIC,
            DEFINITIONS_VERSION,
            0,
            &snapshot.bytes,
        )
        .map_err(|error| QueueError::Storage(error.to_string()))?;
        *written = snapshot.generation;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::exchange::ExchangeKind;
    use crate::queue::manager::QueueManager;
    use crate::storage::testing::real_env;

    fn durable_exchanges(names: &[&str]) -> StoredDefinitions {
        StoredDefinitions {
            exchanges: names
                .iter()
                .map(|name| StoredExchange {
                    name: name.to_string(),
                    kind: ExchangeKind::Fanout.name().to_string(),
                })
                .collect(),
            queues: Vec::new(),
            bindings: Vec::new(),
        }
    }

    #[test]
    fn an_older_definitions_snapshot_never_overwrites_a_newer_one() {
        // Goal: definitions are written outside the registry lock, so two writers may race;
        // the file must end with the newest state. Method: take two snapshots, write the
        // newer first, then the older, and reopen.
        let dir = tempfile::tempdir().expect("temp dir");
        let (env, _clock) = real_env(1_000);
        let file = DefinitionsFile::new(dir.path(), env.fs.clone());
        let older = file.snapshot(&durable_exchanges(&["first"]));
        let newer = file.snapshot(&durable_exchanges(&["first", "second"]));
        file.persist(newer).unwrap();
        file.persist(older).unwrap();
        let reopened = QueueManager::open(dir.path(), env).expect("reopen");
        let names: Vec<String> = reopened
            .list_exchanges()
            .into_iter()
            .map(|(name, ..)| name)
            .collect();
        assert!(names.contains(&"first".to_string()), "{names:?}");
        assert!(names.contains(&"second".to_string()), "{names:?}");
    }
}
