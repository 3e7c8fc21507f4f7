//! The topic/partition registry: lays partitions out as `<data-dir>/<topic>-<partition>/`,
//! reopens all of them on start, and owns the data directory's lock.
//!
//! Deleting a partition first renames its directory to `<topic>-<partition>.<n>-delete`
//! (one atomic step, made durable with a directory fsync) and then removes it; a crash in
//! between leaves a `-delete` directory that the next open finishes removing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::storage::config::LogConfig;
use crate::storage::error::{Error, Result};
use crate::storage::fs::DirLock;
use crate::storage::partition::{Partition, RetentionReport, StorageEnv};

/// Longest topic name (Kafka's limit, so names fit in a file name with a partition suffix).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

const DELETE_SUFFIX: &str = "-delete";

/// Checks a topic name: 1..=249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// `Error::InvalidName` saying what is wrong.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("topic name is empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return invalid("topic name is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return invalid("topic name may not be . or ..");
    }
    let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-');
    if !name.bytes().all(allowed) {
        return invalid("topic name may only contain letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// The directory name of a partition.
pub fn partition_dir_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

/// Parses `<topic>-<partition>`; the topic may itself contain '-'.
pub fn parse_partition_dir_name(name: &str) -> Option<(String, u32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    if partition.is_empty() || !partition.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    validate_topic_name(topic).ok()?;
    Some((topic.to_string(), partition.parse().ok()?))
}

type PartitionMap = BTreeMap<(String, u32), Arc<Partition>>;

/// All partitions under one data directory.
#[derive(Debug)]
pub struct Registry {
    data_dir: PathBuf,
    env: StorageEnv,
    partitions: RwLock<PartitionMap>,
    deletions: std::sync::atomic::AtomicU64,
    _lock: DirLock,
}

impl Registry {
    /// Locks `data_dir` (creating it if needed) and opens every partition in it, recovering
    /// those that were not closed cleanly. `config_for` gives each partition's config.
    ///
    /// # Errors
    /// `Error::Locked` if another process holds the directory, `Error::Io` or `Error::Config`
    /// from opening a partition.
    pub fn open(
        data_dir: &Path,
        env: StorageEnv,
        config_for: impl Fn(&str, u32) -> LogConfig,
    ) -> Result<Registry> {
        let started = std::time::Instant::now();
        let fs = env.fs.clone();
        fs.create_dir_all(data_dir)
            .map_err(|source| Error::io("create data dir", data_dir, source))?;
        let lock = fs.lock_dir(data_dir).map_err(|source| {
            if source.kind() == std::io::ErrorKind::WouldBlock {
                Error::Locked {
                    path: data_dir.to_path_buf(),
                }
            } else {
                Error::io("lock data dir", data_dir, source)
            }
        })?;
        let mut names = fs
            .list_dir(data_dir)
            .map_err(|source| Error::io("list data dir", data_dir, source))?;
        names.sort();
        let mut partitions = PartitionMap::new();
        for name in names {
            let path = data_dir.join(&name);
            if !fs.is_dir(&path) {
                continue;
            }
            if name.ends_with(DELETE_SUFFIX) {
                fs.remove_dir_all(&path)
                    .map_err(|source| Error::io("remove deleted partition", &path, source))?;
                continue;
            }
            let Some((topic, partition)) = parse_partition_dir_name(&name) else {
                // The queues and the cluster's metadata log live beside the partitions in
                // their own directories.
                if name != "queues" && name != "cluster" {
                    tracing::warn!(dir = %path.display(), "ignoring directory that is not a partition");
                }
                continue;
            };
            let config = config_for(&topic, partition);
            let opened = Partition::open(&path, config, env.clone())?;
            partitions.insert((topic, partition), opened);
        }
        tracing::info!(
            data_dir = %data_dir.display(),
            partitions = partitions.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage opened"
        );
        Ok(Registry {
            data_dir: data_dir.to_path_buf(),
            env,
            partitions: RwLock::new(partitions),
            deletions: std::sync::atomic::AtomicU64::new(0),
            _lock: lock,
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, PartitionMap> {
        self.partitions
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, PartitionMap> {
        self.partitions
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Creates a new partition.
    ///
    /// # Errors
    /// `Error::InvalidName`, `Error::AlreadyExists`, or the errors of `Partition::open`.
    pub fn create(&self, topic: &str, partition: u32, config: LogConfig) -> Result<Arc<Partition>> {
        validate_topic_name(topic)?;
        let mut partitions = self.write();
        let key = (topic.to_string(), partition);
        if partitions.contains_key(&key) {
            return Err(Error::AlreadyExists {
                topic: topic.to_string(),
                partition,
            });
        }
        let dir = self.data_dir.join(partition_dir_name(topic, partition));
        let created = Partition::open(&dir, config, self.env.clone())?;
        partitions.insert(key, created.clone());
        Ok(created)
    }

    /// The partition, if it exists.
    pub fn get(&self, topic: &str, partition: u32) -> Option<Arc<Partition>> {
        self.read().get(&(topic.to_string(), partition)).cloned()
    }

    /// Every (topic, partition) pair, sorted.
    pub fn list(&self) -> Vec<(String, u32)> {
        self.read().keys().cloned().collect()
    }

    /// Deletes a partition and all its data.
    ///
    /// # Errors
    /// `Error::Io` if the directory cannot be renamed, synced or removed.
    pub fn delete(&self, topic: &str, partition: u32) -> Result<bool> {
        let Some(removed) = self.write().remove(&(topic.to_string(), partition)) else {
            return Ok(false);
        };
        // Closing releases waiters; its marker is irrelevant since the directory goes away.
        let _ = removed.close();
        let fs = self.env.fs.as_ref();
        let dir = removed.dir().to_path_buf();
        let sequence = self
            .deletions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let doomed = self.data_dir.join(format!(
            "{}.{sequence}{DELETE_SUFFIX}",
            partition_dir_name(topic, partition)
        ));
        fs.rename(&dir, &doomed)
            .map_err(|source| Error::io("rename deleted partition", &dir, source))?;
        fs.sync_dir(&self.data_dir)
            .map_err(|source| Error::io("sync directory", &self.data_dir, source))?;
        fs.remove_dir_all(&doomed)
            .map_err(|source| Error::io("remove deleted partition", &doomed, source))?;
        Ok(true)
    }

    /// Runs retention on every partition; returns what each deleted.
    ///
    /// # Errors
    /// The first partition's error; the other partitions are still processed.
    pub fn apply_retention(&self) -> Result<Vec<((String, u32), RetentionReport)>> {
        let all: Vec<((String, u32), Arc<Partition>)> = self
            .read()
            .iter()
            .map(|(key, partition)| (key.clone(), partition.clone()))
            .collect();
        let mut reports = Vec::new();
        let mut first_error = None;
        for (key, partition) in all {
            match partition.apply_retention() {
                Ok(report) if report.segments_deleted > 0 => reports.push((key, report)),
                Ok(_) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(reports), Err)
    }

    /// Closes every partition cleanly (flush, seal indexes, clean-shutdown marker).
    ///
    /// # Errors
    /// The first partition's error; the other partitions are still closed.
    pub fn close(&self) -> Result<()> {
        let all: Vec<Arc<Partition>> = self.read().values().cloned().collect();
        let mut first_error = None;
        for partition in all {
            if let Err(error) = partition.close() {
                tracing::error!(partition = %partition.dir().display(), %error, "clean close failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_dir_names_round_trip_with_dashes_in_topic() {
        let name = partition_dir_name("orders-eu", 12);
        assert_eq!(name, "orders-eu-12");
        assert_eq!(
            parse_partition_dir_name(&name),
            Some(("orders-eu".to_string(), 12))
        );
        assert_eq!(parse_partition_dir_name("orders"), None);
        assert_eq!(parse_partition_dir_name("orders-"), None);
        assert_eq!(parse_partition_dir_name("-3"), None);
    }

    #[test]
    fn topic_names_are_checked() {
        assert!(validate_topic_name("a.b_c-d9").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
