//! Committed consumer offsets, stored durably in the internal topic `__consumer_offsets`
//! (one partition) and replayed into memory on start.
//!
//! Each commit is one record batch: one record per partition, key = (group, topic,
//! partition), value = (offset, metadata), both in Wharf's wire encoding. A commit is
//! answered only after its batch is durable, and memory is updated only then, so a fetch of
//! committed offsets never reports one a crash could take back. The latest record for a key
//! wins on replay. A record with a null value is a tombstone: the key has no committed
//! offset from there on (a deleted topic, a deleted group); a group whose every key is
//! tombstoned is gone, on replay as in memory.
//!
//! In a cluster the log is the replicated partition 0 of `__consumer_offsets`, written only
//! by the node that leads it (the coordinator, `core/coordination.rs`): a store serves
//! (holds offsets in memory and writes) only while [`OffsetStore::serve`] made it, and
//! replays the log then, so a new coordinator starts from every committed offset. The
//! transaction log's records share that log there; they carry the [`TXN_RECORD_HEADER`]
//! header and are skipped here.
//!
//! The log is compacted by the cleaner (issue #19, docs/STORAGE.md "Internal topics"), so
//! replay follows the live keys rather than every commit ever made.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{BatchBuilder, NewRecord};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::wire_struct;

use crate::append::{LocalLog, RecordLog};
use crate::groups::classic::SavedGroup;
use crate::groups::SavedBrokerGroup;
use crate::storage::{Appended, Clock, Error as StorageError, Partition};
use crate::streams::topic::{replay_records, TopicError, Topics};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// The header key a transaction-log record carries, so it can share the offsets log in a
/// cluster (its value is empty).
pub const TXN_RECORD_HEADER: &str = "wharf.txn";

/// Whether `record` belongs to the transaction log (see [`TXN_RECORD_HEADER`]).
pub fn is_txn_record(record: &wharf_protocol::batch::Record) -> bool {
    record
        .headers
        .iter()
        .any(|header| header.key == TXN_RECORD_HEADER)
}

/// The header key of a group-state record (a classic group as its coordinator last
/// recorded it, [`SavedGroup`]; its value is empty): it shares the offsets log, and
/// neither the offsets nor the transaction log reads it.
pub const GROUP_RECORD_HEADER: &str = "wharf.group";
/// The first bytes of a group-state record's key, then the group id: no offset record's
/// key starts so (an offset key starts with its group's length, and a one-byte group id
/// is never 0xFE, which is not UTF-8), nor a transaction record's (`00 01 FF`), so the log
/// cleaner keeps each group's latest record apart.
pub const GROUP_KEY_PREFIX: [u8; 3] = [0x00, 0x01, 0xFE];
/// As [`GROUP_KEY_PREFIX`], for a group of the broker-side protocol (Wharf's own,
/// KIP-848's): [`SavedBrokerGroup`].
pub const BROKER_GROUP_KEY_PREFIX: [u8; 3] = [0x00, 0x01, 0xFD];

/// The groups a coordinators' log records ([`replay_groups`]), of either protocol.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecordedGroups {
    /// Classic groups (JoinGroup/SyncGroup).
    pub classic: Vec<(String, SavedGroup)>,
    /// Groups of the broker-side protocol.
    pub broker_side: Vec<(String, SavedBrokerGroup)>,
}

/// Whether `record` is a group-state record (see [`GROUP_RECORD_HEADER`]).
pub fn is_group_record(record: &wharf_protocol::batch::Record) -> bool {
    record
        .headers
        .iter()
        .any(|header| header.key == GROUP_RECORD_HEADER)
}

wire_struct! {
    /// Key of an offset record.
    pub struct OffsetKey {
        pub group: String,
        pub topic: String,
        pub partition: u32,
    }
}

wire_struct! {
    /// Value of an offset record.
    pub struct OffsetValue {
        pub offset: i64,
        pub metadata: Option<String>,
    }
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to consume.
    pub offset: i64,
    /// Client-supplied metadata.
    pub metadata: Option<String>,
}

/// Per (topic, partition): the committed offset and the log offset of the record that set
/// it. A later record always wins, in memory as on replay, whatever order concurrent
/// commits finish in.
type GroupOffsets = BTreeMap<(String, u32), (Committed, i64)>;

/// The committed-offset store.
#[derive(Debug)]
pub struct OffsetStore {
    log: Arc<Partition>,
    clock: Arc<dyn Clock>,
    offsets: Mutex<HashMap<String, GroupOffsets>>,
    /// Where commits are written while this store serves; `None`: it does not (another
    /// node of the cluster coordinates groups).
    writer: std::sync::RwLock<Option<Arc<dyn RecordLog>>>,
}

impl OffsetStore {
    /// Opens (creating if needed) the offsets topic and replays it.
    ///
    /// # Errors
    /// Storage errors; a record that does not decode is corruption.
    pub fn open(topics: &Topics, clock: Arc<dyn Clock>) -> Result<OffsetStore, TopicError> {
        // Committed offsets are kept forever and always fsynced before they are answered.
        topics.ensure_internal(
            OFFSETS_TOPIC,
            1,
            crate::streams::topic::internal_overrides(),
        )?;
        let log = topics
            .partition(OFFSETS_TOPIC, 0)
            .ok_or_else(|| TopicError::Unknown(OFFSETS_TOPIC.to_string()))?;
        let offsets = replay(&log)?;
        Ok(OffsetStore {
            writer: std::sync::RwLock::new(Some(Arc::new(LocalLog(log.clone())))),
            log,
            clock,
            offsets: Mutex::new(offsets),
        })
    }

    /// This node's copy of the offsets log (in a cluster the transaction log shares it).
    pub fn log(&self) -> &Arc<Partition> {
        &self.log
    }

    /// Serves from now on, writing through `writer`: flushes this node's copy of the log
    /// and replays it into memory first (blocking), so every offset committed before is
    /// there. The caller makes sure the copy holds every committed record (the replicated
    /// log's leader with its whole log applied).
    ///
    /// # Errors
    /// Storage errors; the store does not serve then.
    pub fn serve(&self, writer: Arc<dyn RecordLog>) -> Result<(), StorageError> {
        self.log.flush()?;
        let replayed = replay(&self.log)?;
        *self.lock() = replayed;
        *self
            .writer
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(writer);
        Ok(())
    }

    /// Stops serving: commits are refused and the offsets in memory forgotten (the next
    /// [`OffsetStore::serve`] replays them).
    pub fn stop_serving(&self) {
        *self
            .writer
            .write()
            .unwrap_or_else(|poison| poison.into_inner()) = None;
        self.lock().clear();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, GroupOffsets>> {
        self.offsets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Stores `entries` for `group` durably, then makes them visible.
    ///
    /// # Errors
    /// Storage errors; nothing is visible then.
    pub async fn commit(
        &self,
        group: &str,
        entries: Vec<(String, u32, Committed)>,
    ) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mut builder = BatchBuilder::new(now);
        for (topic, partition, committed) in &entries {
            let mut key = BytesMut::new();
            OffsetKey {
                group: group.to_string(),
                topic: topic.clone(),
                partition: *partition,
            }
            .encode(&mut key);
            let mut value = BytesMut::new();
            OffsetValue {
                offset: committed.offset,
                metadata: committed.metadata.clone(),
            }
            .encode(&mut value);
            builder.push(&NewRecord {
                timestamp_ms: now,
                key: Some(key.freeze()),
                value: Some(value.freeze()),
                headers: Vec::new(),
            })?;
        }
        let appended = self.append_durably(builder).await?;
        let mut offsets = self.lock();
        let group_offsets = offsets.entry(group.to_string()).or_default();
        for (index, (topic, partition, committed)) in entries.into_iter().enumerate() {
            let record_offset = appended.base_offset + index as i64;
            let slot = group_offsets
                .entry((topic, partition))
                .or_insert((committed.clone(), record_offset));
            if slot.1 <= record_offset {
                *slot = (committed, record_offset);
            }
        }
        Ok(())
    }

    /// Records `group`'s state for the next coordinator (`None`: a tombstone, the group
    /// has no members to carry over), durably, through the same writer as commits.
    ///
    /// # Errors
    /// Storage errors (nothing recorded: the next coordinator makes its members rejoin).
    pub async fn record_group(
        &self,
        group: &str,
        state: Option<&SavedGroup>,
    ) -> Result<(), StorageError> {
        // (Plain data: it always encodes; were it not to, a tombstone carries nothing over.)
        let value = state.and_then(|state| serde_json::to_vec(state).ok());
        self.record_state(GROUP_KEY_PREFIX, group, value).await
    }

    /// As [`OffsetStore::record_group`], for a group of the broker-side protocol.
    ///
    /// # Errors
    /// Storage errors (nothing recorded: the next coordinator makes its members rejoin).
    pub async fn record_broker_group(
        &self,
        group: &str,
        state: Option<&SavedBrokerGroup>,
    ) -> Result<(), StorageError> {
        let value = state.and_then(|state| serde_json::to_vec(state).ok());
        self.record_state(BROKER_GROUP_KEY_PREFIX, group, value)
            .await
    }

    /// Appends one group-state record (key `prefix` + `group`; a null `value` is a
    /// tombstone) and waits until it is durable.
    async fn record_state(
        &self,
        prefix: [u8; 3],
        group: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), StorageError> {
        let now = self.clock.now_ms();
        let mut builder = BatchBuilder::new(now);
        builder.push(&NewRecord {
            timestamp_ms: now,
            key: Some(Bytes::from([&prefix[..], group.as_bytes()].concat())),
            value: value.map(Bytes::from),
            headers: vec![wharf_protocol::batch::Header {
                key: GROUP_RECORD_HEADER.to_string(),
                value: Some(Bytes::new()),
            }],
        })?;
        self.append_durably(builder).await.map(|_| ())
    }

    /// Forgets every committed offset of `topic` (it was deleted: a re-created topic of the
    /// same name is a new topic and must not inherit them). Writes tombstones durably.
    ///
    /// # Errors
    /// Storage errors; the offsets stay then.
    pub async fn forget_topic(&self, topic: &str) -> Result<(), StorageError> {
        let doomed: Vec<(String, String, u32)> = self
            .lock()
            .iter()
            .flat_map(|(group, offsets)| {
                offsets
                    .keys()
                    .filter(|(name, _)| name == topic)
                    .map(move |(name, partition)| (group.clone(), name.clone(), *partition))
            })
            .collect();
        let Some(appended) = self.write_tombstones(&doomed).await? else {
            return Ok(());
        };
        let mut offsets = self.lock();
        for group_offsets in offsets.values_mut() {
            group_offsets
                .retain(|(name, _), (_, set_at)| name != topic || *set_at > appended.last_offset);
        }
        offsets.retain(|_, group_offsets| !group_offsets.is_empty());
        Ok(())
    }

    /// Forgets the committed offsets of `group` on `partitions` (Kafka's OffsetDelete), as
    /// [`OffsetStore::delete_group`] does for all of them. Returns how many existed.
    ///
    /// # Errors
    /// Storage errors; the offsets stay then.
    pub async fn delete_partitions(
        &self,
        group: &str,
        partitions: &[(String, u32)],
    ) -> Result<usize, StorageError> {
        let doomed: Vec<(String, String, u32)> = {
            let offsets = self.lock();
            let Some(group_offsets) = offsets.get(group) else {
                return Ok(0);
            };
            partitions
                .iter()
                .filter(|key| group_offsets.contains_key(key))
                .map(|(topic, partition)| (group.to_string(), topic.clone(), *partition))
                .collect()
        };
        let Some(appended) = self.write_tombstones(&doomed).await? else {
            return Ok(0);
        };
        let mut offsets = self.lock();
        if let Some(group_offsets) = offsets.get_mut(group) {
            group_offsets.retain(|(topic, partition), (_, set_at)| {
                *set_at > appended.last_offset
                    || !partitions
                        .iter()
                        .any(|(doomed_topic, doomed)| doomed_topic == topic && doomed == partition)
            });
            if group_offsets.is_empty() {
                offsets.remove(group);
            }
        }
        Ok(doomed.len())
    }

    /// Forgets every committed offset of `group` (Kafka's DeleteGroups): writes a tombstone
    /// per partition durably, then drops them from memory, except offsets a commit stored
    /// after the tombstones. Returns how many partitions' offsets were deleted (0: the group
    /// had none, and nothing was written).
    ///
    /// # Errors
    /// Storage errors; the offsets stay then.
    pub async fn delete_group(&self, group: &str) -> Result<usize, StorageError> {
        let doomed: Vec<(String, String, u32)> = self
            .lock()
            .get(group)
            .map(|offsets| {
                offsets
                    .keys()
                    .map(|(topic, partition)| (group.to_string(), topic.clone(), *partition))
                    .collect()
            })
            .unwrap_or_default();
        let Some(appended) = self.write_tombstones(&doomed).await? else {
            return Ok(0);
        };
        let mut offsets = self.lock();
        if let Some(group_offsets) = offsets.get_mut(group) {
            group_offsets.retain(|_, (_, set_at)| *set_at > appended.last_offset);
            if group_offsets.is_empty() {
                offsets.remove(group);
            }
        }
        Ok(doomed.len())
    }

    /// Appends one tombstone (a record with a null value) per (group, topic, partition) as
    /// one batch and waits until it is durable; `None` when there is nothing to write.
    async fn write_tombstones(
        &self,
        keys: &[(String, String, u32)],
    ) -> Result<Option<Appended>, StorageError> {
        if keys.is_empty() {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let mut builder = BatchBuilder::new(now);
        for (group, topic, partition) in keys {
            let mut key = BytesMut::new();
            OffsetKey {
                group: group.clone(),
                topic: topic.clone(),
                partition: *partition,
            }
            .encode(&mut key);
            builder.push(&NewRecord {
                timestamp_ms: now,
                key: Some(key.freeze()),
                value: None,
                headers: Vec::new(),
            })?;
        }
        Ok(Some(self.append_durably(builder).await?))
    }

    /// Appends the built batch through the append path and waits until it is durable.
    async fn append_durably(&self, builder: BatchBuilder) -> Result<Appended, StorageError> {
        let writer = self
            .writer
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .ok_or_else(|| StorageError::NotReplicated {
                log: OFFSETS_TOPIC.to_string(),
                reason: "this node does not coordinate consumer groups now".to_string(),
            })?;
        let mut bytes = BytesMut::new();
        builder.build_into(&mut bytes);
        writer.write_batches(bytes).await
    }

    /// The committed offset of one partition.
    pub fn get(&self, group: &str, topic: &str, partition: u32) -> Option<Committed> {
        self.lock()
            .get(group)?
            .get(&(topic.to_string(), partition))
            .map(|(committed, _)| committed.clone())
    }

    /// Every committed offset of a group.
    pub fn group(&self, group: &str) -> Vec<(String, u32, Committed)> {
        self.lock()
            .get(group)
            .map(|offsets| {
                offsets
                    .iter()
                    .map(|((topic, partition), (committed, _))| {
                        (topic.clone(), *partition, committed.clone())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every group that has committed offsets.
    pub fn groups(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

fn replay(log: &Partition) -> Result<HashMap<String, GroupOffsets>, StorageError> {
    let mut offsets: HashMap<String, GroupOffsets> = HashMap::new();
    replay_records(log, |record| {
        if is_txn_record(&record) || is_group_record(&record) {
            return Ok(());
        }
        let Some(key) = record.key else {
            return Ok(());
        };
        let key = decode_exact::<OffsetKey>(key).map_err(|reason| corrupt(log, reason))?;
        let Some(value) = record.value else {
            // A tombstone: the topic or the group was deleted.
            if let Some(group_offsets) = offsets.get_mut(&key.group) {
                group_offsets.remove(&(key.topic, key.partition));
                if group_offsets.is_empty() {
                    offsets.remove(&key.group);
                }
            }
            return Ok(());
        };
        let value = decode_exact::<OffsetValue>(value).map_err(|reason| corrupt(log, reason))?;
        offsets.entry(key.group).or_default().insert(
            (key.topic, key.partition),
            (
                Committed {
                    offset: value.offset,
                    metadata: value.metadata,
                },
                record.offset,
            ),
        );
        Ok(())
    })?;
    Ok(offsets)
}

/// The groups recorded in `log` ([`OffsetStore::record_group`],
/// [`OffsetStore::record_broker_group`]), each group's latest record (a tombstone ends
/// it). A record that does not read is skipped with a warning: its group's members
/// rejoin, as they would without it.
///
/// # Errors
/// Storage errors reading the log.
pub fn replay_groups(log: &Partition) -> Result<RecordedGroups, StorageError> {
    let mut classic: BTreeMap<String, SavedGroup> = BTreeMap::new();
    let mut broker_side: BTreeMap<String, SavedBrokerGroup> = BTreeMap::new();
    replay_records(log, |record| {
        if !is_group_record(&record) {
            return Ok(());
        }
        let Some(key) = record.key.as_ref() else {
            return Ok(());
        };
        let group_of = |prefix: [u8; 3]| {
            key.strip_prefix(&prefix[..])
                .and_then(|id| std::str::from_utf8(id).ok())
                .map(str::to_string)
        };
        // A group id is in use by one protocol at a time: its latest state of either kind
        // ends what the other kind said (a tombstone ends only its own kind's: one written
        // late must not erase the other protocol's group that took the id since).
        if let Some(group) = group_of(GROUP_KEY_PREFIX) {
            if record.value.is_some() {
                broker_side.remove(&group);
            }
            keep_latest(&mut classic, group, record.value.as_deref());
        } else if let Some(group) = group_of(BROKER_GROUP_KEY_PREFIX) {
            if record.value.is_some() {
                classic.remove(&group);
            }
            keep_latest(&mut broker_side, group, record.value.as_deref());
        }
        Ok(())
    })?;
    Ok(RecordedGroups {
        classic: classic.into_iter().collect(),
        broker_side: broker_side.into_iter().collect(),
    })
}

/// Replay's step for one group-state record: `value` (JSON) replaces `group`'s, a null
/// value or one that does not read removes it.
fn keep_latest<T: serde::de::DeserializeOwned>(
    groups: &mut BTreeMap<String, T>,
    group: String,
    value: Option<&[u8]>,
) {
    match value.map(serde_json::from_slice::<T>) {
        None => {
            groups.remove(&group);
        }
        Some(Ok(saved)) => {
            groups.insert(group, saved);
        }
        Some(Err(error)) => {
            tracing::warn!(group, %error, "a recorded group state does not read; its members rejoin");
            groups.remove(&group);
        }
    }
}

fn decode_exact<T: Wire>(bytes: Bytes) -> Result<T, String> {
    let mut reader = Reader::new(bytes);
    let value = T::decode(&mut reader, "offset record").map_err(|error| error.to_string())?;
    reader.finish().map_err(|error| error.to_string())?;
    Ok(value)
}

fn corrupt(log: &Partition, reason: String) -> StorageError {
    StorageError::Corrupt {
        segment: log.dir().to_path_buf(),
        position: 0,
        reason: format!("offset record does not decode: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::sim_env;
    use crate::storage::LogConfig;
    use std::path::Path;

    #[test]
    fn group_states_share_the_log_apart_from_offsets_and_the_latest_wins() {
        let (env, _, clock) = sim_env(1_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let saved = |generation: i32| SavedGroup {
            version: crate::groups::classic::SAVED_GROUP_VERSION,
            generation,
            protocol_type: "consumer".to_string(),
            protocol: "range".to_string(),
            leader: "m-1".to_string(),
            members: vec![crate::groups::classic::SavedMember {
                member_id: "m-1".to_string(),
                client_id: "c".to_string(),
                session_timeout_ms: 45_000,
                rebalance_timeout_ms: 300_000,
                protocols: vec![crate::groups::classic::SavedProtocol {
                    name: "range".to_string(),
                    metadata: Bytes::from_static(&[0, 1, 0xFE, 0xFF]),
                }],
                assignment: Bytes::from_static(b"assigned"),
            }],
        };
        {
            let topics = Topics::open(Path::new("/d"), env.clone(), LogConfig::default()).unwrap();
            let store = OffsetStore::open(&topics, clock.clone()).unwrap();
            let committed = Committed {
                offset: 5,
                metadata: None,
            };
            runtime
                .block_on(store.commit("g", vec![("t".into(), 0, committed)]))
                .unwrap();
            for (group, state) in [
                ("g", Some(saved(1))),
                ("g", Some(saved(2))),
                ("gone", Some(saved(1))),
                ("gone", None),
            ] {
                runtime
                    .block_on(store.record_group(group, state.as_ref()))
                    .unwrap();
            }
            topics.registry().close().unwrap();
        }
        let topics = Topics::open(Path::new("/d"), env, LogConfig::default()).unwrap();
        let store = OffsetStore::open(&topics, clock).unwrap();
        assert_eq!(store.get("g", "t", 0).map(|c| c.offset), Some(5));
        assert_eq!(
            store.groups(),
            vec!["g".to_string()],
            "group records are no offsets"
        );
        assert_eq!(
            replay_groups(store.log()).unwrap().classic,
            vec![("g".to_string(), saved(2))],
            "each group's latest record; a tombstone ends one"
        );
        // docs/STORAGE.md's layout: key `00 01 FE` + the group id, one header
        // `wharf.group` with an empty value, the value JSON (bytes as base64).
        let mut group_records = Vec::new();
        replay_records(store.log(), |record| {
            if is_group_record(&record) {
                group_records.push(record);
            }
            Ok(())
        })
        .unwrap();
        let first = &group_records[0];
        assert_eq!(first.key.as_deref(), Some(&b"\x00\x01\xFEg"[..]));
        assert_eq!(first.headers.len(), 1);
        assert_eq!(first.headers[0].value.as_deref(), Some(&b""[..]));
        let value: serde_json::Value =
            serde_json::from_slice(first.value.as_deref().expect("a value")).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["generation"], 1);
        assert_eq!(value["members"][0]["assignment"], "YXNzaWduZWQ=");
        assert_eq!(value["members"][0]["protocols"][0]["metadata"], "AAH+/w==");
        assert_eq!(group_records[3].value, None, "a tombstone");

        // A broker-side group's record (00 01 FD): latest wins, and a group id's latest
        // record of either kind ends the other kind's.
        let broker_side = crate::groups::SavedBrokerGroup {
            version: crate::groups::SAVED_BROKER_GROUP_VERSION,
            generation: 4,
            assignor: "range".to_string(),
            members: vec![crate::groups::SavedBrokerMember {
                member_id: "n-1".to_string(),
                client_id: "wharf".to_string(),
                topics: vec!["t".to_string()],
                session_timeout_ms: 10_000,
                assignment: BTreeMap::from([("t".to_string(), vec![0, 1])]),
                applied_generation: 4,
                releasing: vec![("t".to_string(), 2, 4)],
            }],
        };
        runtime
            .block_on(store.record_broker_group("native", Some(&broker_side)))
            .unwrap();
        runtime
            .block_on(store.record_broker_group("g", Some(&broker_side)))
            .unwrap();
        let recorded = replay_groups(store.log()).unwrap();
        assert_eq!(
            recorded.classic,
            Vec::new(),
            "g's latest record is broker-side"
        );
        assert_eq!(
            recorded.broker_side,
            vec![
                ("g".to_string(), broker_side.clone()),
                ("native".to_string(), broker_side)
            ]
        );
        let mut keys = Vec::new();
        replay_records(store.log(), |record| {
            if is_group_record(&record) {
                keys.push(record.key.expect("a key"));
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(keys.last().map(|key| &key[..]), Some(&b"\x00\x01\xFDg"[..]));
    }

    #[test]
    fn commits_survive_reopen_and_latest_wins() {
        let (env, _, clock) = sim_env(1_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        {
            let topics = Topics::open(Path::new("/d"), env.clone(), LogConfig::default()).unwrap();
            let store = OffsetStore::open(&topics, clock.clone()).unwrap();
            let first = Committed {
                offset: 5,
                metadata: None,
            };
            let second = Committed {
                offset: 9,
                metadata: Some("m".into()),
            };
            runtime
                .block_on(store.commit("g", vec![("t".into(), 0, first)]))
                .unwrap();
            runtime
                .block_on(store.commit("g", vec![("t".into(), 0, second)]))
                .unwrap();
            topics.registry().close().unwrap();
        }
        let topics = Topics::open(Path::new("/d"), env.clone(), LogConfig::default()).unwrap();
        let store = OffsetStore::open(&topics, clock).unwrap();
        let committed = store.get("g", "t", 0).unwrap();
        assert_eq!(committed.offset, 9);
        assert_eq!(committed.metadata.as_deref(), Some("m"));
        assert_eq!(store.get("g", "t", 1), None);
        assert_eq!(store.groups(), vec!["g".to_string()]);
        runtime.block_on(store.forget_topic("t")).unwrap();
        assert_eq!(store.get("g", "t", 0), None);
        topics.registry().close().unwrap();
        drop(store);
        drop(topics);
        let topics = Topics::open(Path::new("/d"), env, LogConfig::default()).unwrap();
        let store =
            OffsetStore::open(&topics, Arc::new(crate::storage::ManualClock::new(1_000))).unwrap();
        assert_eq!(
            store.get("g", "t", 0),
            None,
            "the tombstone survives a restart"
        );
        assert!(
            store.groups().is_empty(),
            "a group whose offsets are all tombstoned is gone after a restart"
        );
    }

    #[test]
    fn deleted_group_stays_deleted_after_reopen_and_others_keep_theirs() {
        let (env, _, clock) = sim_env(1_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let committed = |offset| Committed {
            offset,
            metadata: None,
        };
        {
            let topics = Topics::open(Path::new("/d"), env.clone(), LogConfig::default()).unwrap();
            let store = OffsetStore::open(&topics, clock.clone()).unwrap();
            runtime
                .block_on(store.commit(
                    "doomed",
                    vec![("a".into(), 0, committed(3)), ("b".into(), 1, committed(4))],
                ))
                .unwrap();
            runtime
                .block_on(store.commit("kept", vec![("a".into(), 0, committed(7))]))
                .unwrap();
            assert_eq!(runtime.block_on(store.delete_group("doomed")).unwrap(), 2);
            assert_eq!(store.groups(), vec!["kept".to_string()]);
            assert_eq!(
                runtime.block_on(store.delete_group("doomed")).unwrap(),
                0,
                "a second delete finds nothing"
            );
            topics.registry().close().unwrap();
        }
        let topics = Topics::open(Path::new("/d"), env, LogConfig::default()).unwrap();
        let store = OffsetStore::open(&topics, clock).unwrap();
        assert_eq!(store.groups(), vec!["kept".to_string()]);
        assert!(store.group("doomed").is_empty());
        assert_eq!(store.get("kept", "a", 0), Some(committed(7)));
    }

    #[test]
    fn the_offsets_topic_is_compacted_and_replays_to_the_same_offsets() {
        let (env, _, clock) = sim_env(1_000);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let committed = |offset| Committed {
            offset,
            metadata: None,
        };
        {
            let topics = Topics::open(Path::new("/d"), env.clone(), LogConfig::default()).unwrap();
            let store = OffsetStore::open(&topics, clock.clone()).unwrap();
            for round in 0..200 {
                for partition in 0..4 {
                    runtime
                        .block_on(
                            store.commit("g", vec![("t".into(), partition, committed(round))]),
                        )
                        .unwrap();
                }
                runtime
                    .block_on(store.commit("gone", vec![("t".into(), 0, committed(round))]))
                    .unwrap();
            }
            runtime.block_on(store.delete_group("gone")).unwrap();
            let log = topics.partition(OFFSETS_TOPIC, 0).unwrap();
            assert!(
                log.limits().cleanup.compacts(),
                "internal overrides compact it"
            );
            log.roll_now().unwrap();
            let stop = std::sync::atomic::AtomicBool::new(false);
            let report = log
                .clean(&crate::storage::partition::CleanInputs {
                    stable_offset: i64::MAX,
                    aborted: &|_, _| false,
                    map_bytes_max: 1 << 20,
                    throttle: &|_| {},
                    stop: &stop,
                })
                .unwrap()
                .expect("a pass ran");
            // 1,000 commits and a tombstone over 5 keys: the latest of each stays (the
            // tombstone of the deleted group too, within
            // delete.retention.ms).
            assert_eq!(report.records_removed, 1_001 - 5);
            topics.registry().close().unwrap();
        }
        let topics = Topics::open(Path::new("/d"), env, LogConfig::default()).unwrap();
        let store = OffsetStore::open(&topics, clock).unwrap();
        for partition in 0..4 {
            assert_eq!(store.get("g", "t", partition), Some(committed(199)));
        }
        assert_eq!(store.groups(), vec!["g".to_string()]);
    }
}
