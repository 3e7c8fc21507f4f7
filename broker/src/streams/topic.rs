//! The topic catalog: which topics exist, their stable UUIDs, partition counts and config
//! overrides, persisted in `<data-dir>/topics.meta` (a checkpoint file, STORAGE.md) and kept
//! consistent with the partition directories of the storage registry.
//!
//! Order of operations, so a crash leaves nothing half-done that the next start cannot tidy:
//! create and add-partitions write the partition directories first and the catalog last;
//! delete writes the catalog first and removes directories after; alter rewrites only the
//! catalog (one atomic checkpoint replace), then applies the new limits to the open
//! partitions. On start, partition directories that the
//! catalog does not list are removed, and listed partitions whose directory is missing are
//! created empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::wire_struct;

use crate::config::{apply_topic_overrides, topic_config_values, PARTITIONS_MAX};
use crate::storage::registry::validate_topic_name;
use crate::storage::{
    checkpoint, Error as StorageError, LogConfig, Partition, Registry, StorageEnv,
};

/// File name of the catalog in the data directory.
pub const CATALOG_FILE: &str = "topics.meta";
const CATALOG_MAGIC: [u8; 4] = *b"WTOP";
const CATALOG_VERSION: u16 = 1;

/// Prefix of internal topics, which clients cannot create or delete.
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

wire_struct! {
    /// A config override of a topic.
    pub struct TopicOverride {
        pub key: String,
        pub value: String,
    }
}

wire_struct! {
    /// One topic as the catalog stores it.
    pub struct TopicInfo {
        pub name: String,
        pub topic_id: [u8; 16],
        pub partitions: u32,
        pub overrides: Vec<TopicOverride>,
    }
}

wire_struct! {
    /// The catalog file's payload.
    pub struct CatalogPayload {
        pub topics: Vec<TopicInfo>,
    }
}

/// Config overrides of internal topics: never deleted by age or size, compacted (issue
/// #19: each holds state by key, the latest record of a key winning on replay, and a null
/// value deleting it, so the cleaner keeps exactly what replay needs; before, they grew
/// forever), in 100 MiB segments so that sealed segments become cleanable (Kafka's
/// `offsets.topic.segment.bytes`), and fsynced before anything they record is answered.
pub fn internal_overrides() -> Vec<(String, String)> {
    vec![
        ("retention.ms".to_string(), "0".to_string()),
        ("retention.bytes".to_string(), "0".to_string()),
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("segment.bytes".to_string(), (100 * 1024 * 1024).to_string()),
        ("flush".to_string(), "always".to_string()),
    ]
}

/// Bytes read per step while replaying an internal topic.
const REPLAY_READ_BYTES: usize = 1024 * 1024;

/// Calls `on_record` with every record of the data batches of `log` (control batches are
/// skipped), in offset order: how the broker rebuilds the state its internal topics hold.
///
/// # Errors
/// Storage errors of the reads, batches or records that fail their checks, and whatever
/// `on_record` returns.
pub fn replay_records(
    log: &Partition,
    mut on_record: impl FnMut(wharf_protocol::batch::Record) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut position = log.log_start_offset();
    while position < log.high_watermark() {
        let read = log.read(position, REPLAY_READ_BYTES)?;
        if read.bytes.is_empty() {
            break;
        }
        for decoded in wharf_protocol::batch::batches(read.bytes) {
            let decoded = decoded?;
            position = decoded.header().next_offset();
            if decoded.header().attributes.is_control() {
                continue;
            }
            for record in decoded.records() {
                on_record(record?)?;
            }
        }
    }
    Ok(())
}

/// Who a topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicKind {
    /// Created by clients; counts against `partitions_max`, may not use the `__` prefix.
    User,
    /// Broker state (`__consumer_offsets`, `__transaction_state`).
    Internal,
}

/// Why a topic operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The name breaks the rules (or is reserved).
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// The partition count is out of range.
    #[error("invalid partition count {partitions}: must be 1..={PARTITIONS_MAX}")]
    InvalidPartitions { partitions: u32 },
    /// A config override is invalid.
    #[error("{0}")]
    InvalidConfig(String),
    /// Add-partitions asked for no more partitions than the topic has.
    #[error("topic {topic:?} has {current} partitions; the new count {requested} must be larger")]
    PartitionsNotIncreased {
        topic: String,
        current: u32,
        requested: u32,
    },
    /// The topic exists.
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    /// The topic does not exist.
    #[error("unknown topic {0:?}")]
    Unknown(String),
    /// Storage failed underneath.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Topic config keys that [`Topics::alter_configs`] refuses: they shape how a partition is
/// opened (its flusher registration), so a change would take effect only at a restart.
pub const CONFIGS_FIXED_AT_CREATE: [&str; 1] = ["flush"];

/// Where a topic's config value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    /// The broker's default.
    Default,
    /// An override of the topic.
    TopicOverride,
}

/// One effective config of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// The key (`retention.ms`, ...).
    pub key: String,
    /// The value in force.
    pub value: String,
    /// Where it comes from.
    pub source: ConfigSource,
}

/// One change to a topic's config overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// Override the key with the value.
    Set(String, String),
    /// Remove the key's override (back to the broker default).
    Delete(String),
}

/// Whether an admin change is made or only checked (Kafka's `validate_only`): a check runs
/// every rule the change would (name, counts, configs, limits, existence) and answers what
/// the topic would become, with no file, catalog or partition touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMode {
    /// Make the change.
    Apply,
    /// Run the checks only.
    ValidateOnly,
}

impl ConfigChange {
    /// The key it changes.
    pub fn key(&self) -> &str {
        match self {
            ConfigChange::Set(key, _) | ConfigChange::Delete(key) => key,
        }
    }
}

/// The topic catalog over a storage registry.
#[derive(Debug)]
pub struct Topics {
    data_dir: PathBuf,
    env: StorageEnv,
    base_config: LogConfig,
    registry: Registry,
    catalog: Mutex<BTreeMap<String, TopicInfo>>,
    catalog_sequence: std::sync::atomic::AtomicU64,
    partitions_max: std::sync::atomic::AtomicU32,
}

impl Topics {
    /// Opens the catalog and every partition under `data_dir`, tidying what a crash left.
    ///
    /// # Errors
    /// Storage errors from the registry or the catalog file.
    pub fn open(
        data_dir: &Path,
        env: StorageEnv,
        base_config: LogConfig,
    ) -> Result<Topics, TopicError> {
        let fs = env.fs.clone();
        fs.create_dir_all(data_dir)
            .map_err(|source| StorageError::Io {
                op: "create data dir",
                path: data_dir.to_path_buf(),
                source,
            })?;
        let catalog = read_catalog(fs.as_ref(), data_dir)?;
        let configs: BTreeMap<String, LogConfig> = catalog
            .values()
            .map(|info| (info.name.clone(), config_for(&base_config, info)))
            .collect();
        let fallback = base_config.clone();
        let registry = Registry::open(data_dir, env.clone(), move |topic, _| {
            configs
                .get(topic)
                .cloned()
                .unwrap_or_else(|| fallback.clone())
        })?;
        for (topic, partition) in registry.list() {
            let listed = catalog
                .get(&topic)
                .is_some_and(|info| partition < info.partitions);
            if !listed {
                tracing::warn!(
                    topic,
                    partition,
                    "removing partition that the catalog does not list"
                );
                registry.delete(&topic, partition)?;
            }
        }
        for info in catalog.values() {
            for partition in 0..info.partitions {
                if registry.get(&info.name, partition).is_none() {
                    registry.create(&info.name, partition, config_for(&base_config, info))?;
                }
            }
        }
        Ok(Topics {
            data_dir: data_dir.to_path_buf(),
            env,
            base_config,
            registry,
            catalog: Mutex::new(catalog),
            catalog_sequence: std::sync::atomic::AtomicU64::new(1),
            partitions_max: std::sync::atomic::AtomicU32::new(u32::MAX),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, TopicInfo>> {
        self.catalog
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Limits the partitions of all non-internal topics together.
    pub fn set_partitions_max(&self, partitions_max: u32) {
        self.partitions_max
            .store(partitions_max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Creates a topic with a fresh UUID.
    ///
    /// # Errors
    /// `TopicError` for a bad name, count or config, an existing topic, or storage failure.
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        overrides: Vec<(String, String)>,
    ) -> Result<TopicInfo, TopicError> {
        self.create_with_id(name, partitions, overrides, None)
    }

    /// [`Topics::create`] with the id a cluster's metadata log gave the topic, so that every
    /// node's copy of it has the same id (and a re-created topic a new one on every node);
    /// `None`: a fresh one.
    ///
    /// # Errors
    /// As for [`Topics::create`].
    pub fn create_with_id(
        &self,
        name: &str,
        partitions: u32,
        overrides: Vec<(String, String)>,
        topic_id: Option<[u8; 16]>,
    ) -> Result<TopicInfo, TopicError> {
        self.create_inner(
            name,
            partitions,
            overrides,
            TopicKind::User,
            AdminMode::Apply,
            topic_id,
        )
    }

    /// Checks that [`Topics::create`] would succeed, changing nothing: the topic it would
    /// make (its id is not kept).
    ///
    /// # Errors
    /// As for `create`, but never a storage failure.
    pub fn check_create(
        &self,
        name: &str,
        partitions: u32,
        overrides: Vec<(String, String)>,
    ) -> Result<TopicInfo, TopicError> {
        self.create_inner(
            name,
            partitions,
            overrides,
            TopicKind::User,
            AdminMode::ValidateOnly,
            None,
        )
    }

    /// Creates an internal topic (name starting with `__`) if it does not exist.
    ///
    /// # Errors
    /// As for `create`.
    pub fn ensure_internal(
        &self,
        name: &str,
        partitions: u32,
        overrides: Vec<(String, String)>,
    ) -> Result<TopicInfo, TopicError> {
        if let Some(info) = self.get(name) {
            return Ok(info);
        }
        self.create_inner(
            name,
            partitions,
            overrides,
            TopicKind::Internal,
            AdminMode::Apply,
            None,
        )
    }

    fn create_inner(
        &self,
        name: &str,
        partitions: u32,
        overrides: Vec<(String, String)>,
        kind: TopicKind,
        mode: AdminMode,
        topic_id: Option<[u8; 16]>,
    ) -> Result<TopicInfo, TopicError> {
        validate_topic_name(name).map_err(|error| TopicError::InvalidName {
            name: name.to_string(),
            reason: match error {
                StorageError::InvalidName { reason, .. } => reason.to_string(),
                other => other.to_string(),
            },
        })?;
        if kind == TopicKind::User && name.starts_with(INTERNAL_TOPIC_PREFIX) {
            return Err(TopicError::InvalidName {
                name: name.to_string(),
                reason: format!("names starting with {INTERNAL_TOPIC_PREFIX:?} are reserved"),
            });
        }
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(TopicError::InvalidPartitions { partitions });
        }
        let info = TopicInfo {
            name: name.to_string(),
            topic_id: topic_id.unwrap_or_else(new_uuid),
            partitions,
            overrides: overrides
                .into_iter()
                .map(|(key, value)| TopicOverride { key, value })
                .collect(),
        };
        let mut log_config = self.base_config.clone();
        apply_topic_overrides(&mut log_config, &override_pairs(&info))
            .map_err(TopicError::InvalidConfig)?;
        let mut catalog = self.lock();
        if catalog.contains_key(name) {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        let existing = user_partitions(&catalog);
        let limit = u64::from(
            self.partitions_max
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if kind == TopicKind::User && existing + u64::from(partitions) > limit {
            return Err(TopicError::InvalidConfig(format!(
                "{partitions} more partitions would exceed partitions_max {limit} ({existing} exist)"
            )));
        }
        if mode == AdminMode::ValidateOnly {
            return Ok(info);
        }
        for partition in 0..partitions {
            if let Err(error) = self.registry.create(name, partition, log_config.clone()) {
                // Undo the partitions already made, so a retry can create the topic.
                for created in 0..partition {
                    let _ = self.registry.delete(name, created);
                }
                return Err(error.into());
            }
        }
        catalog.insert(name.to_string(), info.clone());
        self.write_catalog(&catalog)?;
        tracing::info!(topic = name, partitions, "topic created");
        Ok(info)
    }

    /// Deletes a topic and all its data: the catalog that no longer lists it first, then
    /// the partitions. On a full disk there is no room for the new catalog, and deleting a
    /// topic is how an operator makes room: the partitions then go first, and a crash
    /// before the catalog is written back leaves the topic listed with empty partitions
    /// (recovery recreates them), never a catalog naming data that is half gone.
    ///
    /// # Errors
    /// `TopicError::Unknown`, or storage failure (the topic is still listed then).
    pub fn delete(&self, name: &str) -> Result<TopicInfo, TopicError> {
        refuse_internal(name, "deleted")?;
        let mut catalog = self.lock();
        let info = catalog
            .remove(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let mut written = self.write_catalog(&catalog);
        if matches!(&written, Err(TopicError::Storage(error)) if error.is_disk_full()) {
            tracing::warn!(
                topic = name,
                "disk full: deleting the topic's partitions before the catalog that drops it"
            );
            written = (0..info.partitions)
                .try_for_each(|partition| self.registry.delete(name, partition).map(|_| ()))
                .map_err(TopicError::from)
                .and_then(|()| self.write_catalog(&catalog));
        }
        if let Err(error) = written {
            // Still listed on disk, so still listed here (its partitions, if they went,
            // come back empty at the next start).
            catalog.insert(name.to_string(), info);
            return Err(error);
        }
        drop(catalog);
        for partition in 0..info.partitions {
            self.registry.delete(name, partition)?;
        }
        tracing::info!(topic = name, "topic deleted");
        Ok(info)
    }

    /// Sets config overrides of a topic: each key replaces its earlier override, keys not
    /// named keep theirs ([`Topics::change_configs`] without `replace`).
    ///
    /// # Errors
    /// As [`Topics::change_configs`], and `InvalidConfig` for no change at all.
    pub fn alter_configs(
        &self,
        name: &str,
        changes: Vec<(String, String)>,
    ) -> Result<TopicInfo, TopicError> {
        if changes.is_empty() {
            return Err(TopicError::InvalidConfig(
                "no config to alter (give KEY=VALUE)".to_string(),
            ));
        }
        let changes = changes
            .into_iter()
            .map(|(key, value)| ConfigChange::Set(key, value))
            .collect();
        self.change_configs(name, changes, false, AdminMode::Apply)
    }

    /// Changes config overrides of a topic durably and applies them to its open partitions
    /// at once: `Set` replaces a key's override, `Delete` removes it (back to the broker
    /// default); with `replace`, every override not set here is removed too (Kafka's
    /// AlterConfigs). Validated as at create; nothing changes on an error, nor under
    /// [`AdminMode::ValidateOnly`], which answers what the topic would become.
    ///
    /// # Errors
    /// `InvalidName` for an internal topic, `Unknown`, `InvalidConfig` (a bad key or value,
    /// or a key of [`CONFIGS_FIXED_AT_CREATE`]), or storage failure (nothing changed then).
    pub fn change_configs(
        &self,
        name: &str,
        changes: Vec<ConfigChange>,
        replace: bool,
        mode: AdminMode,
    ) -> Result<TopicInfo, TopicError> {
        refuse_internal(name, "altered")?;
        if let Some(key) = changes
            .iter()
            .map(ConfigChange::key)
            .find(|key| CONFIGS_FIXED_AT_CREATE.contains(key))
        {
            return Err(TopicError::InvalidConfig(format!(
                "config {key:?} is fixed when the topic is created and cannot be altered"
            )));
        }
        let mut catalog = self.lock();
        let mut info = catalog
            .get(name)
            .cloned()
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        if replace {
            info.overrides.retain(|entry| {
                CONFIGS_FIXED_AT_CREATE.contains(&entry.key.as_str())
                    || changes.iter().any(|change| change.key() == entry.key)
            });
        }
        for change in changes {
            match change {
                ConfigChange::Set(key, value) => {
                    match info.overrides.iter_mut().find(|entry| entry.key == key) {
                        Some(entry) => entry.value = value,
                        None => info.overrides.push(TopicOverride { key, value }),
                    }
                }
                ConfigChange::Delete(key) => info.overrides.retain(|entry| entry.key != key),
            }
        }
        info.overrides
            .sort_by(|left, right| left.key.cmp(&right.key));
        let mut log_config = self.base_config.clone();
        apply_topic_overrides(&mut log_config, &override_pairs(&info))
            .map_err(TopicError::InvalidConfig)?;
        if mode == AdminMode::ValidateOnly {
            return Ok(info);
        }
        let mut altered = catalog.clone();
        altered.insert(name.to_string(), info.clone());
        self.write_catalog(&altered)?;
        *catalog = altered;
        drop(catalog);
        for partition in 0..info.partitions {
            if let Some(log) = self.registry.get(name, partition) {
                log.set_limits(&log_config);
            }
        }
        tracing::info!(topic = name, overrides = ?override_pairs(&info), "topic config altered");
        Ok(info)
    }

    /// Grows a topic to `partition_count` partitions in all. The new partitions' directories
    /// are created first and the catalog written last, so a crash in between leaves
    /// directories that the next start removes (the catalog does not list them). Under
    /// [`AdminMode::ValidateOnly`] only the checks run, and the answer is what the topic
    /// would become.
    ///
    /// # Errors
    /// `InvalidName` for an internal topic, `Unknown`, `PartitionsNotIncreased`,
    /// `InvalidPartitions` past `PARTITIONS_MAX`, `InvalidConfig` past `partitions_max`, or
    /// storage failure (nothing changed then).
    pub fn add_partitions(
        &self,
        name: &str,
        partition_count: u32,
        mode: AdminMode,
    ) -> Result<TopicInfo, TopicError> {
        refuse_internal(name, "altered")?;
        if partition_count > PARTITIONS_MAX {
            return Err(TopicError::InvalidPartitions {
                partitions: partition_count,
            });
        }
        let mut catalog = self.lock();
        let mut info = catalog
            .get(name)
            .cloned()
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let current = info.partitions;
        if partition_count <= current {
            return Err(TopicError::PartitionsNotIncreased {
                topic: name.to_string(),
                current,
                requested: partition_count,
            });
        }
        let added = partition_count - current;
        let existing = user_partitions(&catalog);
        let limit = u64::from(
            self.partitions_max
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if existing + u64::from(added) > limit {
            return Err(TopicError::InvalidConfig(format!(
                "{added} more partitions would exceed partitions_max {limit} ({existing} exist)"
            )));
        }
        if mode == AdminMode::ValidateOnly {
            info.partitions = partition_count;
            return Ok(info);
        }
        let log_config = config_for(&self.base_config, &info);
        for partition in current..partition_count {
            if let Err(error) = self.registry.create(name, partition, log_config.clone()) {
                self.undo_partitions(name, current..partition);
                return Err(error.into());
            }
        }
        info.partitions = partition_count;
        let mut grown = catalog.clone();
        grown.insert(name.to_string(), info.clone());
        if let Err(error) = self.write_catalog(&grown) {
            self.undo_partitions(name, current..partition_count);
            return Err(error);
        }
        *catalog = grown;
        tracing::info!(
            topic = name,
            from = current,
            to = partition_count,
            "partitions added"
        );
        Ok(info)
    }

    /// Every topic config key with its value in force and where it comes from, sorted by
    /// key.
    ///
    /// # Errors
    /// `Unknown`.
    pub fn configs(&self, name: &str) -> Result<Vec<TopicConfig>, TopicError> {
        let info = self
            .get(name)
            .ok_or_else(|| TopicError::Unknown(name.to_string()))?;
        let effective = config_for(&self.base_config, &info);
        let overridden = |key: &str| info.overrides.iter().find(|entry| entry.key == key);
        // An override's value as written (keys such as `max.message.bytes` are enforced
        // outside the storage config `effective` holds).
        Ok(topic_config_values(&effective)
            .into_iter()
            .map(|(key, value)| match overridden(key) {
                Some(entry) => TopicConfig {
                    key: key.to_string(),
                    value: entry.value.clone(),
                    source: ConfigSource::TopicOverride,
                },
                None => TopicConfig {
                    key: key.to_string(),
                    value,
                    source: ConfigSource::Default,
                },
            })
            .collect())
    }

    /// Removes partitions made by a failed add, so a retry starts clean (a crash instead
    /// leaves them to the next start, which removes what the catalog does not list).
    fn undo_partitions(&self, name: &str, partitions: std::ops::Range<u32>) {
        for partition in partitions {
            if let Err(error) = self.registry.delete(name, partition) {
                tracing::warn!(topic = name, partition, %error, "cannot remove a partition of a failed add");
            }
        }
    }

    /// The topic, if it exists.
    pub fn get(&self, name: &str) -> Option<TopicInfo> {
        self.lock().get(name).cloned()
    }

    /// All topics, sorted by name.
    pub fn list(&self) -> Vec<TopicInfo> {
        self.lock().values().cloned().collect()
    }

    /// One partition's log, if the topic and partition exist.
    pub fn partition(&self, name: &str, partition: u32) -> Option<Arc<Partition>> {
        self.registry.get(name, partition)
    }

    /// The storage registry underneath.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn write_catalog(&self, catalog: &BTreeMap<String, TopicInfo>) -> Result<(), TopicError> {
        let payload = CatalogPayload {
            topics: catalog.values().cloned().collect(),
        };
        let mut bytes = BytesMut::new();
        payload.encode(&mut bytes);
        let sequence = self
            .catalog_sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        checkpoint::write(
            self.env.fs.as_ref(),
            &self.data_dir,
            CATALOG_FILE,
            CATALOG_MAGIC,
            CATALOG_VERSION,
            sequence,
            &bytes,
        )?;
        Ok(())
    }
}

/// Refuses an operation on an internal topic: `action` says what cannot be done.
pub(crate) fn refuse_internal(name: &str, action: &str) -> Result<(), TopicError> {
    if name.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(TopicError::InvalidName {
            name: name.to_string(),
            reason: format!("internal topics cannot be {action}"),
        });
    }
    Ok(())
}

/// Partitions of every user topic together (what `partitions_max` limits).
fn user_partitions(catalog: &BTreeMap<String, TopicInfo>) -> u64 {
    catalog
        .values()
        .filter(|info| !info.name.starts_with(INTERNAL_TOPIC_PREFIX))
        .map(|info| u64::from(info.partitions))
        .sum()
}

fn override_pairs(info: &TopicInfo) -> Vec<(String, String)> {
    info.overrides
        .iter()
        .map(|entry| (entry.key.clone(), entry.value.clone()))
        .collect()
}

fn config_for(base: &LogConfig, info: &TopicInfo) -> LogConfig {
    let mut config = base.clone();
    let mut pairs = override_pairs(info);
    if info.name.starts_with(INTERNAL_TOPIC_PREFIX) {
        // Internal topics keep everything and fsync before answering, whatever an older
        // catalog entry or the broker-wide defaults say.
        pairs.extend(internal_overrides());
    }
    if let Err(reason) = apply_topic_overrides(&mut config, &pairs) {
        tracing::error!(
            topic = info.name,
            reason,
            "stored topic config is invalid; using defaults"
        );
        return base.clone();
    }
    config
}

fn read_catalog(
    fs: &dyn crate::storage::Fs,
    data_dir: &Path,
) -> Result<BTreeMap<String, TopicInfo>, TopicError> {
    let path = data_dir.join(CATALOG_FILE);
    let Some(found) = checkpoint::read(fs, &path, CATALOG_MAGIC)? else {
        return Ok(BTreeMap::new());
    };
    if found.version != CATALOG_VERSION {
        return Err(StorageError::Corrupt {
            segment: path,
            position: 0,
            reason: format!("catalog version {} is not {CATALOG_VERSION}", found.version),
        }
        .into());
    }
    let mut reader = Reader::new(Bytes::from(found.payload));
    let payload = CatalogPayload::decode(&mut reader, "catalog")
        .and_then(|payload| reader.finish().map(|()| payload))
        .map_err(|error| StorageError::Corrupt {
            segment: path.clone(),
            position: 0,
            reason: error.to_string(),
        })?;
    Ok(payload
        .topics
        .into_iter()
        .map(|info| (info.name.clone(), info))
        .collect())
}

/// A random (version 4) UUID from the operating system's generator.
pub fn new_uuid() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes));
    if from_os.is_err() {
        // No /dev/urandom: mix time and a process-wide counter through std's random hasher.
        use std::hash::{BuildHasher, Hasher};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for half in 0..2 {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            bytes[half * 8..half * 8 + 8].copy_from_slice(&hasher.finish().to_be_bytes());
        }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// Formats a UUID in the usual 8-4-4-4-12 hex form.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::sim_env;

    fn open(env: &StorageEnv) -> Topics {
        Topics::open(Path::new("/data"), env.clone(), LogConfig::default()).unwrap()
    }

    #[test]
    fn topics_survive_reopen_with_same_uuid() {
        let (env, _, _) = sim_env(1_000);
        let topics = open(&env);
        let created = topics.create("orders", 3, vec![]).unwrap();
        topics.registry().close().unwrap();
        drop(topics);
        let reopened = open(&env);
        let info = reopened.get("orders").unwrap();
        assert_eq!(info.topic_id, created.topic_id);
        assert_eq!(info.partitions, 3);
        assert!(reopened.partition("orders", 2).is_some());
    }

    #[test]
    fn recreated_topic_gets_a_new_uuid() {
        let (env, _, _) = sim_env(1_000);
        let topics = open(&env);
        let first = topics.create("t", 1, vec![]).unwrap();
        topics.delete("t").unwrap();
        assert!(topics.partition("t", 0).is_none());
        let second = topics.create("t", 1, vec![]).unwrap();
        assert_ne!(first.topic_id, second.topic_id);
    }

    #[test]
    fn a_topic_is_deleted_on_a_full_disk_and_its_space_is_free_again() {
        let (env, fs, _) = sim_env(1_000);
        let topics = open(&env);
        topics.create("kept", 1, vec![]).unwrap();
        topics.create("big", 2, vec![]).unwrap();
        // Not a byte to spare: the catalog without "big" cannot be written first.
        fs.set_space_bytes(Some(fs.used_bytes()));
        assert!(matches!(
            topics.create("more", 1, vec![]),
            Err(TopicError::Storage(error)) if error.is_disk_full()
        ));
        let deleted = topics
            .delete("big")
            .expect("deleting frees the room it needs");
        assert_eq!(deleted.partitions, 2);
        assert!(topics.get("big").is_none() && topics.partition("big", 0).is_none());
        topics.create("after", 1, vec![]).expect("room again");
        topics.registry().close().unwrap();
        drop(topics);
        let reopened = open(&env);
        assert!(
            reopened.get("big").is_none(),
            "the catalog on disk dropped it"
        );
        assert!(reopened.get("kept").is_some() && reopened.get("after").is_some());
    }

    #[test]
    fn a_delete_that_cannot_write_the_catalog_keeps_the_topic() {
        let (env, fs, _) = sim_env(1_000);
        let topics = open(&env);
        topics.create("t", 1, vec![]).unwrap();
        fs.fail_next_write(libc::EIO);
        assert!(matches!(topics.delete("t"), Err(TopicError::Storage(_))));
        assert!(topics.get("t").is_some() && topics.partition("t", 0).is_some());
        topics.delete("t").expect("the next delete works");
    }

    #[test]
    fn bad_creates_are_refused() {
        let (env, _, _) = sim_env(1_000);
        let topics = open(&env);
        assert!(matches!(
            topics.create("a/b", 1, vec![]),
            Err(TopicError::InvalidName { .. })
        ));
        assert!(matches!(
            topics.create("__x", 1, vec![]),
            Err(TopicError::InvalidName { .. })
        ));
        assert!(matches!(
            topics.create("ok", 0, vec![]),
            Err(TopicError::InvalidPartitions { .. })
        ));
        assert!(matches!(
            topics.create("ok", 1, vec![("bogus".into(), "1".into())]),
            Err(TopicError::InvalidConfig(_))
        ));
        topics.create("ok", 1, vec![]).unwrap();
        assert!(matches!(
            topics.create("ok", 1, vec![]),
            Err(TopicError::AlreadyExists(_))
        ));
        assert!(matches!(
            topics.delete("missing"),
            Err(TopicError::Unknown(_))
        ));
    }

    #[test]
    fn altered_configs_merge_survive_reopen_and_apply_to_open_partitions() {
        let (env, _, _) = sim_env(1_000);
        let topics = open(&env);
        topics
            .create("t", 2, vec![("segment.ms".into(), "60000".into())])
            .unwrap();
        let altered = topics
            .alter_configs("t", vec![("retention.ms".into(), "5000".into())])
            .unwrap();
        assert_eq!(
            override_pairs(&altered),
            vec![
                ("retention.ms".to_string(), "5000".to_string()),
                ("segment.ms".to_string(), "60000".to_string()),
            ]
        );
        assert_eq!(
            topics.partition("t", 1).unwrap().limits().retention_ms,
            Some(5000)
        );
        topics
            .alter_configs("t", vec![("retention.ms".into(), "0".into())])
            .unwrap();
        assert_eq!(
            topics.partition("t", 0).unwrap().limits().retention_ms,
            None
        );
        topics.registry().close().unwrap();
        drop(topics);
        let reopened = open(&env);
        let configs = reopened.configs("t").unwrap();
        let retention = configs
            .iter()
            .find(|config| config.key == "retention.ms")
            .unwrap();
        assert_eq!(retention.value, "0");
        assert_eq!(retention.source, ConfigSource::TopicOverride);
        let segment_bytes = configs
            .iter()
            .find(|config| config.key == "segment.bytes")
            .unwrap();
        assert_eq!(segment_bytes.source, ConfigSource::Default);
        assert_eq!(
            reopened.partition("t", 0).unwrap().limits().retention_ms,
            None
        );
    }

    #[test]
    fn bad_alters_are_refused_and_change_nothing() {
        let (env, _, _) = sim_env(1_000);
        let topics = open(&env);
        topics.create("t", 1, vec![]).unwrap();
        let refused = [
            ("bogus", "1"),
            ("retention.ms", "-5"),
            ("segment.bytes", "10"),
            ("flush", "never"),
        ];
        for (key, value) in refused {
            assert!(
                matches!(
                    topics.alter_configs("t", vec![(key.into(), value.into())]),
                    Err(TopicError::InvalidConfig(_))
                ),
                "{key}={value}"
            );
        }
        assert!(topics.get("t").unwrap().overrides.is_empty());
        assert!(matches!(
            topics.alter_configs("missing", vec![("retention.ms".into(), "1".into())]),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            topics.alter_configs(
                "__consumer_offsets",
                vec![("retention.ms".into(), "1".into())]
            ),
            Err(TopicError::InvalidName { .. })
        ));
    }

    #[test]
    fn validate_only_runs_every_check_and_changes_nothing() {
        let (env, _, _) = sim_env(1_000);
        let topics = open(&env);
        topics.create("t", 2, vec![]).unwrap();
        let catalog_before = topics.list();

        let would_be = topics
            .check_create("new", 3, vec![("retention.ms".into(), "5".into())])
            .unwrap();
        assert_eq!((would_be.name.as_str(), would_be.partitions), ("new", 3));
        assert!(topics.get("new").is_none());
        assert!(topics.partition("new", 0).is_none());
        assert!(matches!(
            topics.check_create("t", 1, vec![]),
            Err(TopicError::AlreadyExists(_))
        ));
        assert!(matches!(
            topics.check_create("bad name", 1, vec![]),
            Err(TopicError::InvalidName { .. })
        ));
        assert!(matches!(
            topics.check_create("x", 1, vec![("retention.ms".into(), "soon".into())]),
            Err(TopicError::InvalidConfig(_))
        ));

        let altered = topics
            .change_configs(
                "t",
                vec![ConfigChange::Set("retention.ms".into(), "7".into())],
                false,
                AdminMode::ValidateOnly,
            )
            .unwrap();
        assert_eq!(altered.overrides.len(), 1);
        assert!(topics.get("t").unwrap().overrides.is_empty());
        assert!(matches!(
            topics.change_configs(
                "t",
                vec![ConfigChange::Set("retention.ms".into(), "-5x".into())],
                false,
                AdminMode::ValidateOnly,
            ),
            Err(TopicError::InvalidConfig(_))
        ));

        let grown = topics
            .add_partitions("t", 5, AdminMode::ValidateOnly)
            .unwrap();
        assert_eq!(grown.partitions, 5);
        assert!(topics.partition("t", 2).is_none());
        assert!(matches!(
            topics.add_partitions("t", 2, AdminMode::ValidateOnly),
            Err(TopicError::PartitionsNotIncreased { .. })
        ));
        assert_eq!(topics.list(), catalog_before);
    }

    #[test]
    fn added_partitions_survive_reopen_and_fewer_are_refused() {
        let (env, _, _) = sim_env(1_000);
        let topics = open(&env);
        let created = topics.create("t", 2, vec![]).unwrap();
        for count in [1, 2] {
            assert!(matches!(
                topics.add_partitions("t", count, AdminMode::Apply),
                Err(TopicError::PartitionsNotIncreased { current: 2, .. })
            ));
        }
        assert!(matches!(
            topics.add_partitions("missing", 3, AdminMode::Apply),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            topics.add_partitions("t", PARTITIONS_MAX + 1, AdminMode::Apply),
            Err(TopicError::InvalidPartitions { .. })
        ));
        topics.set_partitions_max(4);
        assert!(matches!(
            topics.add_partitions("t", 5, AdminMode::Apply),
            Err(TopicError::InvalidConfig(_))
        ));
        let grown = topics.add_partitions("t", 4, AdminMode::Apply).unwrap();
        assert_eq!(grown.partitions, 4);
        assert_eq!(grown.topic_id, created.topic_id);
        assert!(topics.partition("t", 3).is_some());
        topics.registry().close().unwrap();
        drop(topics);
        let reopened = open(&env);
        assert_eq!(reopened.get("t").unwrap().partitions, 4);
        assert!(reopened.partition("t", 3).is_some());
    }

    #[test]
    fn partitions_added_without_their_catalog_write_are_removed_on_start() {
        // Goal: a crash between creating the new partitions' directories and writing the
        // catalog leaves the topic as it was. Method: create the directory of partition 2 of
        // a 2-partition topic directly in the registry (what add_partitions does first), then
        // reopen without writing the catalog.
        let (env, _, _) = sim_env(1_000);
        let topics = open(&env);
        topics.create("t", 2, vec![]).unwrap();
        topics
            .registry()
            .create("t", 2, LogConfig::default())
            .unwrap();
        topics.registry().close().unwrap();
        drop(topics);
        let reopened = open(&env);
        assert_eq!(reopened.get("t").unwrap().partitions, 2);
        assert!(reopened.partition("t", 2).is_none());
    }

    #[test]
    fn uuid_formats_and_is_version_4() {
        let uuid = new_uuid();
        let text = format_uuid(&uuid);
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert_ne!(new_uuid(), uuid);
    }
}
