//! Durable queue storage on the partition log: messages go to one log (a message's id is
//! its offset), settlements (acks, and dead-lettered or expired messages) to a second log,
//! and together they give the ack state: a low-water mark below which every message is
//! settled, plus the settled ids above it.
//!
//! Restart: the ack state comes from the last checkpoint (`ack-state`, a checkpoint file)
//! plus a replay of the ack log after it; then the message log is scanned from the
//! low-water mark and every unsettled message is returned for delivery. So a restart neither
//! loses an unacknowledged message nor redelivers one whose settlement was durable.
//!
//! Compaction: a checkpoint of the ack state lets the ack log's older segments go, and
//! message segments wholly below the low-water mark are deleted ("fully settled segments are
//! deleted").
//!
//! Durability: `append_messages` and `settle` append through [`crate::append`]; the caller
//! awaits `append::durable` on the returned offset (group commit) before confirming a
//! publish or answering an ack.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{self, BatchBuilder, NewRecord, Record};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::wire_struct;

use crate::storage::{checkpoint, Appended, Error, LogConfig, Partition, Result, StorageEnv};

/// File name of the ack-state checkpoint in a queue directory.
pub const ACK_STATE_FILE: &str = "ack-state";
const ACK_STATE_MAGIC: [u8; 4] = *b"WACK";
/// Bytes read per step when scanning a queue's logs.
const SCAN_READ_BYTES: usize = 4 * 1024 * 1024;
/// How long compaction waits for its delivery-counts record to be durable.
const COUNTS_DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most ids one settle record carries (bounds a record's size).
pub const SETTLE_IDS_MAX: usize = 64 * 1024;

wire_struct! {
    /// One settle record: message ids that are done.
    pub struct SettleRecord {
        pub ids: Vec<i64>,
    }
}

/// Key of an ack-log record holding delivery counts (settle records have no key).
pub const DELIVERY_COUNTS_KEY: &[u8] = b"delivery-counts";

wire_struct! {
    /// Delivery counts of messages handed to consumers or returned to the queue: each id's
    /// count replaces any earlier one. `ids` and `counts` are parallel.
    pub struct DeliveryCountsRecord {
        pub ids: Vec<i64>,
        pub counts: Vec<u32>,
    }
}

/// Key of an ack-log record settling runs of consecutive ids ([`SettleRunsRecord`]).
pub const SETTLE_RUNS_KEY: &[u8] = b"settle-runs";

wire_struct! {
    /// Settled ids as runs: `lens[i]` ids from `firsts[i]` on. Consumers ack in id order,
    /// so a run of thousands of acks is 12 bytes here against 8 bytes per id in a
    /// [`SettleRecord`]. `firsts` and `lens` are parallel.
    pub struct SettleRunsRecord {
        pub firsts: Vec<i64>,
        pub lens: Vec<u32>,
    }
}

/// Key of an ack-log record holding delivery counts as runs ([`DeliveryCountRunsRecord`]).
pub const DELIVERY_COUNT_RUNS_KEY: &[u8] = b"delivery-count-runs";

wire_struct! {
    /// Delivery counts as runs: the `lens[i]` ids from `firsts[i]` on were each delivered
    /// `counts[i]` times so far (a later count of an id replaces an earlier one). The three
    /// vectors are parallel.
    pub struct DeliveryCountRunsRecord {
        pub firsts: Vec<i64>,
        pub lens: Vec<u32>,
        pub counts: Vec<u32>,
    }
}

/// One ack-log batch: a record with key `key` per value.
fn ack_batch<T: Wire>(
    key: Option<&'static [u8]>,
    values: impl IntoIterator<Item = T>,
    now_ms: i64,
) -> Result<BytesMut> {
    let mut builder = BatchBuilder::new(now_ms);
    for record in values {
        let mut value = BytesMut::new();
        record.encode(&mut value);
        builder.push(&NewRecord {
            timestamp_ms: now_ms,
            key: key.map(Bytes::from_static),
            value: Some(value.freeze()),
            headers: Vec::new(),
        })?;
    }
    let mut bytes = BytesMut::new();
    builder.build_into(&mut bytes);
    Ok(bytes)
}

/// The record of delivery-count runs.
fn count_runs_record(runs: &[(i64, u32, u32)]) -> DeliveryCountRunsRecord {
    DeliveryCountRunsRecord {
        firsts: runs.iter().map(|(first, _, _)| *first).collect(),
        lens: runs.iter().map(|(_, len, _)| *len).collect(),
        counts: runs.iter().map(|(_, _, count)| *count).collect(),
    }
}

/// `(first, len, value)` runs of consecutive ids with equal values, in the order given.
fn runs<T: Copy + PartialEq>(items: impl IntoIterator<Item = (i64, T)>) -> Vec<(i64, u32, T)> {
    let mut runs: Vec<(i64, u32, T)> = Vec::new();
    for (id, value) in items {
        match runs.last_mut() {
            Some((first, len, run_value))
                if *run_value == value
                    && *len < u32::MAX
                    && first.checked_add(i64::from(*len)) == Some(id) =>
            {
                *len += 1;
            }
            _ => runs.push((id, 1, value)),
        }
    }
    runs
}

/// The ids of a run read back from the ack log, cut at `end` (the message log's end: an id
/// there names no stored message, and settling it would settle a message published later).
fn run_ids(first: i64, len: u32, end: i64) -> std::ops::Range<i64> {
    let last = first.saturating_add(i64::from(len)).min(end);
    let first = first.max(0);
    first..last.max(first)
}

/// Decodes one ack-log record by its key and applies it to the ack state or the delivery
/// counts; `end` is the message log's end.
fn replay_ack_record(
    key: Option<&[u8]>,
    value: Bytes,
    end: i64,
    state: &mut AckState,
    counts: &mut std::collections::HashMap<i64, u32>,
) -> std::result::Result<(), String> {
    match key {
        Some(DELIVERY_COUNTS_KEY) => {
            let returned: DeliveryCountsRecord = decode(value)?;
            if returned.ids.len() != returned.counts.len() {
                return Err("delivery-counts record with unequal ids and counts".to_string());
            }
            counts.extend(returned.ids.into_iter().zip(returned.counts));
        }
        Some(DELIVERY_COUNT_RUNS_KEY) => {
            let returned: DeliveryCountRunsRecord = decode(value)?;
            if returned.firsts.len() != returned.lens.len()
                || returned.firsts.len() != returned.counts.len()
            {
                return Err("delivery-count-runs record with unequal vectors".to_string());
            }
            for ((first, len), count) in returned
                .firsts
                .into_iter()
                .zip(returned.lens)
                .zip(returned.counts)
            {
                counts.extend(run_ids(first, len, end).map(|id| (id, count)));
            }
        }
        Some(SETTLE_RUNS_KEY) => {
            let settled: SettleRunsRecord = decode(value)?;
            if settled.firsts.len() != settled.lens.len() {
                return Err("settle-runs record with unequal vectors".to_string());
            }
            for (first, len) in settled.firsts.into_iter().zip(settled.lens) {
                for id in run_ids(first, len, end) {
                    state.settle(id);
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "ack-log record with unknown key {:?}",
                String::from_utf8_lossy(other)
            ))
        }
        None => {
            let settled: SettleRecord = decode(value)?;
            for id in settled.ids {
                state.settle(id);
            }
        }
    }
    Ok(())
}

wire_struct! {
    /// The ack-state checkpoint: state covering the ack log below `ack_log_offset`.
    pub struct AckCheckpoint {
        pub ack_log_offset: i64,
        pub low_water: i64,
        pub settled_above: Vec<i64>,
    }
}

/// Which messages are settled: all below `low_water`, and the listed ones above it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckState {
    low_water: i64,
    settled_above: BTreeSet<i64>,
}

impl AckState {
    /// Marks `id` settled; false if it already was.
    pub fn settle(&mut self, id: i64) -> bool {
        if id == self.low_water {
            // The usual case, acks in id order: no set insert and remove per message.
            self.low_water += 1;
            while self.settled_above.first() == Some(&self.low_water) {
                self.settled_above.pop_first();
                self.low_water += 1;
            }
            return true;
        }
        if id < self.low_water || !self.settled_above.insert(id) {
            return false;
        }
        true
    }

    /// True if `id` is settled.
    pub fn is_settled(&self, id: i64) -> bool {
        id < self.low_water || self.settled_above.contains(&id)
    }

    /// Every id below this is settled.
    pub fn low_water(&self) -> i64 {
        self.low_water
    }

    /// The settled ids above the low-water mark.
    pub fn settled_above(&self) -> &BTreeSet<i64> {
        &self.settled_above
    }

    /// Settled ids above the low-water mark (bounded by the unacked window of the queue).
    pub fn settled_above_count(&self) -> usize {
        self.settled_above.len()
    }

    /// Moves the low-water mark up to `offset` (messages below the log start are gone).
    fn raise_to(&mut self, offset: i64) {
        if offset > self.low_water {
            self.low_water = offset;
            self.settled_above = self.settled_above.split_off(&offset);
            while self.settled_above.remove(&self.low_water) {
                self.low_water += 1;
            }
        }
    }
}

/// A message recovered from storage at start.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its id (offset in the message log).
    pub id: i64,
    /// The record (key, value, headers, timestamp), zero-copy from the log.
    pub record: Record,
}

/// A queue's durable storage.
#[derive(Debug)]
pub struct QueueStore {
    messages: Arc<Partition>,
    acks: Arc<Partition>,
    state: Mutex<AckState>,
    /// The batch read last, as bytes with its record boundaries: deliveries go through a
    /// batch in id order, so each batch is read and CRC-checked once rather than once per
    /// message ([`QueueStore::stored`]).
    read_cache: Mutex<ReadCache>,
    /// Delivery counts found at open (ack log after the checkpoint), for the queue's task.
    recovered_counts: Mutex<std::collections::HashMap<i64, u32>>,
    dir: std::path::PathBuf,
    env: StorageEnv,
}

/// The batch read last, as bytes: deliveries go through a batch in id order, so each batch
/// is read and CRC-checked once, and its records are found by their length prefixes alone
/// (a delivery hands out the stored record bytes; nothing is decoded).
#[derive(Debug, Default)]
struct ReadCache {
    base_offset: i64,
    base_timestamp: i64,
    /// The batch's records section (uncompressed).
    section: Bytes,
    /// Where each record starts in `section`, plus its end (`record_count + 1` entries).
    starts: Vec<u32>,
    /// Each record's offset, for a batch whose offsets are not `base_offset + index` (Wharf
    /// writes queue batches without gaps, so this is `None` for all of its own).
    offsets: Option<Vec<i64>>,
}

impl ReadCache {
    /// The index of the record with offset `id`, if this batch holds it.
    fn index(&self, id: i64) -> Option<usize> {
        let records = self.starts.len().saturating_sub(1);
        match &self.offsets {
            None => usize::try_from(id.checked_sub(self.base_offset)?)
                .ok()
                .filter(|index| *index < records),
            Some(offsets) => offsets.binary_search(&id).ok(),
        }
    }

    /// Replaces the cache with `decoded`'s records.
    fn fill(&mut self, decoded: &batch::Batch, log: &Path) -> Result<()> {
        let header = decoded.header();
        if header.attributes.compression_code() != 0 {
            // Queue batches are written by the broker, uncompressed.
            return Err(Error::corrupt(
                log,
                u64::try_from(header.base_offset).unwrap_or(0),
                "a queue batch is compressed; the broker writes them uncompressed".to_string(),
            ));
        }
        let section = decoded.as_bytes().slice(batch::BATCH_HEADER_BYTES..);
        let starts = batch::record_starts(&section, header.record_count)?;
        let offsets = if i64::from(header.last_offset_delta) + 1 == i64::from(header.record_count) {
            None
        } else {
            Some(
                decoded
                    .records()
                    .map(|record| record.map(|record| record.offset))
                    .collect::<std::result::Result<Vec<i64>, _>>()?,
            )
        };
        *self = ReadCache {
            base_offset: header.base_offset,
            base_timestamp: header.base_timestamp,
            section,
            starts,
            offsets,
        };
        Ok(())
    }

    fn stored(&self, index: usize) -> StoredRecord {
        StoredRecord {
            base_offset: self.base_offset,
            base_timestamp: self.base_timestamp,
            section: self.section.clone(),
            range: self.starts[index]..self.starts[index + 1],
        }
    }
}

/// One stored message as bytes: its record (length prefix included) is
/// `section[range]`, and its offset and timestamp deltas count from `base_offset` and
/// `base_timestamp`. `section` is shared with the read cache (no copy).
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub base_offset: i64,
    pub base_timestamp: i64,
    pub section: Bytes,
    pub range: std::ops::Range<u32>,
}

impl StoredRecord {
    /// The record's bytes, length prefix included.
    pub fn bytes(&self) -> Bytes {
        self.section
            .slice(self.range.start as usize..self.range.end as usize)
    }

    /// The record, decoded.
    ///
    /// # Errors
    /// A malformed record.
    pub fn decode(&self) -> Result<Record> {
        let mut records =
            batch::Records::of_run(self.bytes(), 1, self.base_offset, self.base_timestamp);
        match records.next() {
            Some(record) => Ok(record?),
            None => Err(Error::InvalidBatch(
                batch::BatchError::RecordCountMismatch {
                    declared: 1,
                    actual: 0,
                },
            )),
        }
    }
}

impl QueueStore {
    /// Opens (creating if needed) the queue stored in `dir` and rebuilds its ack state.
    ///
    /// # Errors
    /// Storage errors; a settle record or checkpoint that does not decode is corruption.
    pub fn open(dir: &Path, config: LogConfig, env: StorageEnv) -> Result<QueueStore> {
        let messages = Partition::open(&dir.join("messages"), config.clone(), env.clone())?;
        let acks = Partition::open(&dir.join("acks"), config, env.clone())?;
        let store = QueueStore {
            messages,
            acks,
            state: Mutex::new(AckState::default()),
            read_cache: Mutex::new(ReadCache::default()),
            recovered_counts: Mutex::new(std::collections::HashMap::new()),
            dir: dir.to_path_buf(),
            env,
        };
        let (state, counts) = store.recover_ack_state()?;
        *store.lock() = state;
        *store
            .recovered_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = counts;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, AckState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes the delivery counts recovered at open (unsettled messages only).
    pub fn take_recovered_counts(&self) -> std::collections::HashMap<i64, u32> {
        std::mem::take(
            &mut *self
                .recovered_counts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn recover_ack_state(&self) -> Result<(AckState, std::collections::HashMap<i64, u32>)> {
        let mut counts = std::collections::HashMap::new();
        let fs = self.env.fs.as_ref();
        let path = self.dir.join(ACK_STATE_FILE);
        let mut state = AckState::default();
        let mut from = self.acks.log_start_offset();
        if let Some(found) = checkpoint::read(fs, &path, ACK_STATE_MAGIC)? {
            if found.version != 1 {
                return Err(Error::Corrupt {
                    segment: path.clone(),
                    position: 0,
                    reason: format!("ack-state version {} is not 1", found.version),
                });
            }
            let saved: AckCheckpoint =
                decode(Bytes::from(found.payload)).map_err(|reason| Error::Corrupt {
                    segment: path.clone(),
                    position: 0,
                    reason,
                })?;
            state.low_water = saved.low_water;
            state.settled_above = saved.settled_above.into_iter().collect();
            from = from.max(saved.ack_log_offset);
        }
        let end = self.acks.high_watermark();
        let messages_end = self.messages.high_watermark();
        while from < end {
            let read = self.acks.read(from, SCAN_READ_BYTES)?;
            if read.bytes.is_empty() {
                break;
            }
            for decoded in batch::batches(read.bytes) {
                let decoded = decoded?;
                from = decoded.header().next_offset();
                if decoded.header().attributes.is_control() {
                    continue;
                }
                for record in decoded.records() {
                    let record = record?;
                    let Some(value) = record.value else { continue };
                    replay_ack_record(
                        record.key.as_deref(),
                        value,
                        messages_end,
                        &mut state,
                        &mut counts,
                    )
                    .map_err(|reason| Error::Corrupt {
                        segment: self.acks.dir().to_path_buf(),
                        position: 0,
                        reason,
                    })?;
                }
            }
        }
        state.raise_to(self.messages.log_start_offset());
        counts.retain(|id, _| !state.is_settled(*id));
        Ok((state, counts))
    }

    /// Appends the delivery counts of messages delivered or returned to the queue to the ack
    /// log. Not waited for: a power loss may lose the newest counts (the delivery limit then
    /// allows a few more deliveries, and a message may come back without `redelivered`),
    /// never a settlement.
    ///
    /// # Errors
    /// As for `Partition::append`.
    pub fn record_delivery_counts(
        &self,
        counts: &[(i64, u32)],
        now_ms: i64,
    ) -> Result<Option<Appended>> {
        if counts.is_empty() {
            return Ok(None);
        }
        let runs = runs(counts.iter().copied());
        let records = runs.chunks(SETTLE_IDS_MAX).map(count_runs_record);
        self.append_ack_records(Some(DELIVERY_COUNT_RUNS_KEY), records, now_ms)
            .map(Some)
    }

    /// Records the delivery counts of messages about to be handed to consumers, without an
    /// fsync of its own: the record survives a process crash at once (page cache) and is
    /// fsynced with the next settle record, so delivering costs no fsync.
    ///
    /// # Errors
    /// As for `Partition::append`.
    pub fn record_deliveries(&self, counts: &[(i64, u32)], now_ms: i64) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        let runs = runs(counts.iter().copied());
        let records = runs.chunks(SETTLE_IDS_MAX).map(count_runs_record);
        let mut bytes = ack_batch(Some(DELIVERY_COUNT_RUNS_KEY), records, now_ms)?;
        crate::append::append_without_fsync(&self.acks, &mut bytes).map(|_| ())
    }

    /// Appends one batch to the ack log, a record with key `key` per value.
    fn append_ack_records<T: Wire>(
        &self,
        key: Option<&'static [u8]>,
        values: impl IntoIterator<Item = T>,
        now_ms: i64,
    ) -> Result<Appended> {
        let mut bytes = ack_batch(key, values, now_ms)?;
        crate::append::append(&self.acks, &mut bytes).map(|receipt| receipt.appended())
    }

    /// Appends messages (one record each, as built by the caller) and returns where they
    /// landed; their ids are `base_offset..=last_offset`.
    ///
    /// # Errors
    /// As for `Partition::append`.
    pub fn append_messages(&self, batch: &mut [u8]) -> Result<Appended> {
        crate::append::append(&self.messages, batch).map(|receipt| receipt.appended())
    }

    /// Records that `ids` are done (acked, dead-lettered, expired, purged) by appending them
    /// to the ack log. They count as settled only after the caller awaited durability and
    /// called [`QueueStore::confirm_settled`]: compaction must never checkpoint a settlement
    /// a crash could take back.
    ///
    /// # Errors
    /// As for `Partition::append`; nothing is marked settled then.
    pub fn settle(&self, ids: &[i64], now_ms: i64) -> Result<Option<Appended>> {
        if ids.is_empty() {
            return Ok(None);
        }
        let runs = runs(ids.iter().map(|id| (*id, ())));
        let records = runs.chunks(SETTLE_IDS_MAX).map(|chunk| SettleRunsRecord {
            firsts: chunk.iter().map(|(first, _, ())| *first).collect(),
            lens: chunk.iter().map(|(_, len, ())| *len).collect(),
        });
        self.append_ack_records(Some(SETTLE_RUNS_KEY), records, now_ms)
            .map(Some)
    }

    /// Marks `ids` settled once their settle record is durable.
    pub fn confirm_settled(&self, ids: &[i64]) {
        let mut state = self.lock();
        for id in ids {
            state.settle(*id);
        }
    }

    /// Blocks until a publish is durable (as the flush policy promises).
    ///
    /// # Errors
    /// `Error::Failed` or `Error::TimedOut`.
    pub fn wait_published(&self, appended: Appended, timeout: std::time::Duration) -> Result<()> {
        crate::append::durable_blocking(&self.messages, appended.next_offset, timeout)
    }

    /// Blocks until a settle is durable.
    ///
    /// # Errors
    /// `Error::Failed` or `Error::TimedOut`.
    pub fn wait_settled(&self, appended: Appended, timeout: std::time::Duration) -> Result<()> {
        crate::append::durable_blocking(&self.acks, appended.next_offset, timeout)
    }

    /// The message log (for async durability waits).
    pub fn messages(&self) -> &Arc<Partition> {
        &self.messages
    }

    /// The ack log (for async durability waits).
    pub fn acks(&self) -> &Arc<Partition> {
        &self.acks
    }

    /// Treats every message below `offset` as settled in memory (a replica whose message
    /// log restarted there: the leader settled and compacted them; the ack log's records of
    /// them, if any, are below its state after the snapshot's install, and a restart does
    /// the same from the log start).
    pub fn settle_below(&self, offset: i64) {
        self.lock().raise_to(offset);
    }

    /// A copy of the ack state.
    pub fn ack_state(&self) -> AckState {
        self.lock().clone()
    }

    /// Every unsettled message, in id order (at start, to refill the delivery state).
    ///
    /// # Errors
    /// Storage errors reading the log.
    pub fn unsettled(&self) -> Result<Vec<StoredMessage>> {
        let state = self.ack_state();
        let mut from = state.low_water.max(self.messages.log_start_offset());
        let end = self.messages.high_watermark();
        let mut out = Vec::new();
        while from < end {
            let read = self.messages.read(from, SCAN_READ_BYTES)?;
            if read.bytes.is_empty() {
                break;
            }
            for decoded in batch::batches(read.bytes) {
                let decoded = decoded?;
                from = decoded.header().next_offset();
                for record in decoded.records() {
                    let record = record?;
                    if !state.is_settled(record.offset) {
                        out.push(StoredMessage {
                            id: record.offset,
                            record,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads one message.
    ///
    /// # Errors
    /// Storage errors, or `Error::OffsetOutOfRange` if it is gone.
    pub fn read(&self, id: i64) -> Result<Option<Record>> {
        self.stored(id)?.map(|stored| stored.decode()).transpose()
    }

    /// One message as its stored record bytes, to deliver it without decoding it.
    ///
    /// # Errors
    /// As [`QueueStore::read`].
    pub fn stored(&self, id: i64) -> Result<Option<StoredRecord>> {
        let mut cache = self
            .read_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(index) = cache.index(id) {
            return Ok(Some(cache.stored(index)));
        }
        // Messages never change once written, so the cache is only ever replaced.
        let read = self.messages.read(id, 1)?;
        let Some(decoded) = batch::batches(read.bytes).next() else {
            return Ok(None);
        };
        cache.fill(&decoded?, &self.dir.join("messages"))?;
        Ok(cache.index(id).map(|index| cache.stored(index)))
    }

    /// Writes an ack-state checkpoint, then deletes ack-log segments it covers and message
    /// segments below the low-water mark.
    ///
    /// # Errors
    /// Storage errors; a failed step leaves the previous checkpoint valid.
    pub fn compact(&self, delivery_counts: &[(i64, u32)], now_ms: i64) -> Result<()> {
        // Replay after a restart starts at the checkpoint's offset, so the delivery counts
        // are written again first, durably, and the checkpoint stops before them.
        let counts_at = match self.record_delivery_counts(delivery_counts, now_ms)? {
            Some(appended) => {
                crate::append::durable_blocking(
                    &self.acks,
                    appended.next_offset,
                    COUNTS_DURABLE_WAIT,
                )?;
                appended.base_offset
            }
            None => i64::MAX,
        };
        // The in-memory state holds only confirmed (durable) settlements, and the ack log up to
        // its durable offset is covered by it.
        let state = self.ack_state();
        let ack_log_offset = self
            .acks
            .durable_offset()
            .min(self.acks.high_watermark())
            .min(counts_at);
        self.write_ack_checkpoint(ack_log_offset, &state)?;
        self.acks.delete_segments_below(ack_log_offset)?;
        self.messages.delete_segments_below(state.low_water)?;
        Ok(())
    }

    /// Applies a replicated queue's committed publish (`queue/replicated.rs`): appends the
    /// batch if the message log ends at `expected_base`, where the leader placed it (every
    /// replica applies the same commands in the same order, so they all end there; anything
    /// else refuses the batch alike on every replica). No fsync: the raft log holds it.
    ///
    /// # Errors
    /// Storage errors; `Ok(Err(reason))` when the log ends elsewhere.
    pub fn apply_messages(
        &self,
        expected_base: i64,
        batch: &mut [u8],
    ) -> Result<std::result::Result<Appended, String>> {
        let end = self.messages.log_end_offset();
        if end != expected_base {
            return Ok(Err(format!(
                "the leader placed the messages at {expected_base}, but the queue's log ends at {end}"
            )));
        }
        crate::append::append_without_fsync(&self.messages, batch).map(Ok)
    }

    /// Applies a replicated queue's committed settlement: recorded in the ack log (no fsync:
    /// the raft log holds it) and settled at once.
    ///
    /// # Errors
    /// Storage errors; nothing is settled then.
    pub fn apply_settle(&self, ids: &[i64], now_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let runs = runs(ids.iter().map(|id| (*id, ())));
        let records = runs.chunks(SETTLE_IDS_MAX).map(|chunk| SettleRunsRecord {
            firsts: chunk.iter().map(|(first, _, ())| *first).collect(),
            lens: chunk.iter().map(|(_, len, ())| *len).collect(),
        });
        let mut bytes = ack_batch(Some(SETTLE_RUNS_KEY), records, now_ms)?;
        crate::append::append_without_fsync(&self.acks, &mut bytes)?;
        self.confirm_settled(ids);
        let mut counts = self.counts();
        for id in ids {
            counts.remove(id);
        }
        Ok(())
    }

    /// Applies a replicated queue's committed delivery counts: recorded in the ack log and
    /// kept for the task a new leader starts ([`QueueStore::delivery_counts`]).
    ///
    /// # Errors
    /// Storage errors.
    pub fn apply_counts(&self, counts: &[(i64, u32)], now_ms: i64) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        self.record_deliveries(counts, now_ms)?;
        let state = self.lock();
        let mut kept = self.counts();
        kept.extend(
            counts
                .iter()
                .copied()
                .filter(|(id, _)| !state.is_settled(*id)),
        );
        Ok(())
    }

    /// The delivery counts of unsettled messages a replicated queue applied (and found at
    /// open), for the task a new leader starts: a message delivered before a failover comes
    /// back with `redelivered` set.
    pub fn delivery_counts(&self) -> std::collections::HashMap<i64, u32> {
        self.counts().clone()
    }

    fn counts(&self) -> MutexGuard<'_, std::collections::HashMap<i64, u32>> {
        self.recovered_counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes a replicated queue's applied state durable (its logs are written without
    /// fsyncs of their own) and compacts it as [`QueueStore::compact`] does, deleting
    /// message segments only below `messages_below` as well (a replica's message log may be
    /// cut back to its last checkpoint at a restart: what it still needs must stay).
    ///
    /// # Errors
    /// Storage errors.
    pub fn persist_replicated(&self, now_ms: i64, messages_below: i64) -> Result<i64> {
        let end = self.messages.log_end_offset();
        let counts: Vec<(i64, u32)> = {
            let mut counts: Vec<(i64, u32)> = self
                .counts()
                .iter()
                .map(|(id, count)| (*id, *count))
                .collect();
            counts.sort_unstable();
            counts
        };
        let counts_at = if counts.is_empty() {
            i64::MAX
        } else {
            let mut bytes = ack_batch(
                Some(DELIVERY_COUNT_RUNS_KEY),
                runs(counts.iter().copied())
                    .chunks(SETTLE_IDS_MAX)
                    .map(count_runs_record),
                now_ms,
            )?;
            crate::append::append_without_fsync(&self.acks, &mut bytes)?.base_offset
        };
        self.messages.flush()?;
        self.acks.flush()?;
        let state = self.ack_state();
        let ack_log_offset = self.acks.log_end_offset().min(counts_at);
        self.write_ack_checkpoint(ack_log_offset, &state)?;
        self.acks.delete_segments_below(ack_log_offset)?;
        self.messages
            .delete_segments_below(state.low_water.min(messages_below))?;
        Ok(end)
    }

    fn write_ack_checkpoint(&self, ack_log_offset: i64, state: &AckState) -> Result<()> {
        let saved = AckCheckpoint {
            ack_log_offset,
            low_water: state.low_water,
            settled_above: state.settled_above.iter().copied().collect(),
        };
        let mut bytes = BytesMut::new();
        saved.encode(&mut bytes);
        checkpoint::write(
            self.env.fs.as_ref(),
            &self.dir,
            ACK_STATE_FILE,
            ACK_STATE_MAGIC,
            1,
            ack_log_offset as u64,
            &bytes,
        )
    }

    /// Closes both logs cleanly.
    ///
    /// # Errors
    /// As for `Partition::close`.
    pub fn close(&self) -> Result<()> {
        self.messages.close()?;
        self.acks.close()
    }
}

fn decode<T: Wire>(bytes: Bytes) -> std::result::Result<T, String> {
    let mut reader = Reader::new(bytes);
    let value = T::decode(&mut reader, "queue record").map_err(|error| error.to_string())?;
    reader.finish().map_err(|error| error.to_string())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sim::Torn;
    use crate::storage::testing::{env_with, sim_env};
    use std::time::Duration;

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes_max: 64 * 1024,
            index_bytes_max: 4096,
            ..LogConfig::default()
        }
    }

    /// Appends `count` batches of one 300-byte message each; returns their ids.
    fn publish(store: &QueueStore, count: usize) -> Vec<i64> {
        (0..count)
            .map(|index| append_batch(store, &[format!("message-{index}-{}", "x".repeat(300))]))
            .collect()
    }

    /// Appends one batch with a message per body, durably; returns the first message's id.
    fn append_batch(store: &QueueStore, bodies: &[String]) -> i64 {
        let mut builder = BatchBuilder::new(1_000);
        for body in bodies {
            builder
                .push(&NewRecord {
                    timestamp_ms: 1_000,
                    value: Some(Bytes::from(body.clone())),
                    ..NewRecord::default()
                })
                .unwrap();
        }
        let mut bytes = BytesMut::new();
        builder.build_into(&mut bytes);
        let appended = store.append_messages(&mut bytes).unwrap();
        store
            .wait_published(appended, Duration::from_secs(10))
            .unwrap();
        appended.base_offset
    }

    fn settle(store: &QueueStore, ids: &[i64]) {
        if let Some(appended) = store.settle(ids, 1_000).unwrap() {
            store
                .wait_settled(appended, Duration::from_secs(10))
                .unwrap();
            store.confirm_settled(ids);
        }
    }

    fn unsettled_ids(store: &QueueStore) -> Vec<i64> {
        store
            .unsettled()
            .unwrap()
            .iter()
            .map(|message| message.id)
            .collect()
    }

    /// Appends one batch of `count` messages whose bodies are `prefix-<index>`.
    fn publish_batch(store: &QueueStore, prefix: &str, count: usize) -> i64 {
        let bodies: Vec<String> = (0..count)
            .map(|index| format!("{prefix}-{index}"))
            .collect();
        append_batch(store, &bodies)
    }

    #[test]
    fn read_finds_each_message_in_any_order_across_batches() {
        let (env, _fs, _clock) = sim_env(1_000);
        let store = QueueStore::open(Path::new("/data/queues/read"), config(), env).unwrap();
        let first = publish_batch(&store, "a", 3);
        let second = publish_batch(&store, "b", 2);
        let body = |id: i64| {
            let record = store.read(id).unwrap().expect("stored");
            assert_eq!(record.offset, id);
            String::from_utf8(record.value.unwrap().to_vec()).unwrap()
        };
        // In order, then back into the first batch after the second was cached, then out of
        // order within a batch.
        assert_eq!(body(first), "a-0");
        assert_eq!(body(first + 1), "a-1");
        assert_eq!(body(second), "b-0");
        assert_eq!(body(first + 2), "a-2");
        assert_eq!(body(second + 1), "b-1");
        assert_eq!(body(first), "a-0");
        assert!(store.read(second + 2).unwrap().is_none(), "past the end");
    }

    #[test]
    fn stored_records_are_slices_of_their_batch_that_decode_to_the_message() {
        let (env, _fs, _clock) = sim_env(1_000);
        let store = QueueStore::open(Path::new("/data/queues/stored"), config(), env).unwrap();
        let first = publish_batch(&store, "a", 3);
        let second = publish_batch(&store, "b", 2);
        let stored = |id: i64| store.stored(id).unwrap().expect("stored");
        let body = |stored: &StoredRecord| {
            String::from_utf8(stored.decode().unwrap().value.unwrap().to_vec()).unwrap()
        };
        let (a0, a1, a2) = (stored(first), stored(first + 1), stored(first + 2));
        assert_eq!(
            (body(&a0), body(&a1), body(&a2)),
            ("a-0".into(), "a-1".into(), "a-2".into())
        );
        // One batch: the same base, adjacent ranges covering the records section.
        assert_eq!((a0.base_offset, a1.base_offset), (first, first));
        assert_eq!(a0.range.end, a1.range.start);
        assert_eq!(a1.range.end, a2.range.start);
        assert_eq!(a2.range.end as usize, a2.section.len());
        assert_eq!(a1.decode().unwrap().offset, first + 1);
        // Another batch, then back: the first batch is read again, same bytes.
        let b1 = stored(second + 1);
        assert_eq!((b1.base_offset, body(&b1)), (second, "b-1".to_string()));
        assert_eq!(stored(first + 1).bytes(), a1.bytes());
        assert_eq!(store.read(second).unwrap().unwrap().offset, second);
        assert!(store.stored(second + 2).unwrap().is_none(), "past the end");
    }

    #[test]
    fn ack_log_run_records_have_the_documented_bytes() {
        // docs/STORAGE.md, "Ack log": pinned here.
        let mut value = BytesMut::new();
        SettleRunsRecord {
            firsts: vec![5, 0x0102],
            lens: vec![3, 1],
        }
        .encode(&mut value);
        assert_eq!(
            &value[..],
            [
                &[0, 0, 0, 2][..],
                &[0, 0, 0, 0, 0, 0, 0, 5],
                &[0, 0, 0, 0, 0, 0, 1, 2],
                &[0, 0, 0, 2],
                &[0, 0, 0, 3],
                &[0, 0, 0, 1],
            ]
            .concat()
        );
        let mut value = BytesMut::new();
        DeliveryCountRunsRecord {
            firsts: vec![7],
            lens: vec![2],
            counts: vec![4],
        }
        .encode(&mut value);
        assert_eq!(
            &value[..],
            [
                &[0, 0, 0, 1][..],
                &[0, 0, 0, 0, 0, 0, 0, 7],
                &[0, 0, 0, 1],
                &[0, 0, 0, 2],
                &[0, 0, 0, 1],
                &[0, 0, 0, 4],
            ]
            .concat()
        );
    }

    #[test]
    fn runs_cover_exactly_the_ids_given_in_their_order() {
        let ids = [4, 5, 6, 9, 3, 4, 10, 11];
        let found = runs(ids.iter().map(|id| (*id, ())));
        assert_eq!(found, [(4, 3, ()), (9, 1, ()), (3, 2, ()), (10, 2, ())]);
        let counted = runs([(1, 1u32), (2, 1), (3, 2), (4, 2), (6, 2)]);
        assert_eq!(counted, [(1, 2, 1), (3, 2, 2), (6, 1, 2)]);
        assert_eq!(run_ids(-3, 5, 100), 0..2, "no negative ids");
        assert_eq!(run_ids(98, 5, 100), 98..100, "cut at the message log's end");
        assert_eq!(run_ids(120, 5, 100), 120..120);
        assert_eq!(
            run_ids(i64::MAX - 1, u32::MAX, i64::MAX),
            i64::MAX - 1..i64::MAX
        );
    }

    proptest::proptest! {
        #[test]
        fn runs_expand_to_the_ids_and_values_they_came_from(
            items in proptest::collection::vec((0i64..40, 0u32..3), 0..60),
        ) {
            let expanded: Vec<(i64, u32)> = runs(items.iter().copied())
                .into_iter()
                .flat_map(|(first, len, value)| (first..first + i64::from(len)).map(move |id| (id, value)))
                .collect();
            proptest::prop_assert_eq!(expanded, items);
        }
    }

    #[test]
    fn ack_logs_written_as_single_ids_by_earlier_brokers_still_replay() {
        let (env, _fs, _clock) = sim_env(1_000);
        let dir = Path::new("/data/queues/older");
        let store = QueueStore::open(dir, config(), env.clone()).unwrap();
        let first = publish_batch(&store, "m", 6);
        // What a broker before the run records wrote: a keyless SettleRecord and a
        // DeliveryCountsRecord, beside the run records this one writes.
        let old_settle = [SettleRecord {
            ids: vec![first + 1, first],
        }];
        let appended = store.append_ack_records(None, old_settle, 1_000).unwrap();
        store
            .wait_settled(appended, Duration::from_secs(10))
            .unwrap();
        let old_counts = [DeliveryCountsRecord {
            ids: vec![first + 3, first + 4],
            counts: vec![2, 5],
        }];
        store
            .append_ack_records(Some(DELIVERY_COUNTS_KEY), old_counts, 1_000)
            .unwrap();
        settle(&store, &[first + 2]);
        store
            .record_delivery_counts(&[(first + 4, 6), (first + 5, 6)], 1_000)
            .unwrap();
        let appended = store
            .settle(&[first + 99], 1_000)
            .unwrap()
            .expect("appended");
        store
            .wait_settled(appended, Duration::from_secs(10))
            .unwrap();
        store.close().unwrap();
        drop(store);
        let reopened = QueueStore::open(dir, config(), env).unwrap();
        assert_eq!(unsettled_ids(&reopened), [first + 3, first + 4, first + 5]);
        assert!(
            !reopened.ack_state().is_settled(first + 99),
            "an id past the message log's end settles nothing a later publish gets"
        );
        let counts = reopened.take_recovered_counts();
        let expected: std::collections::HashMap<i64, u32> =
            [(first + 3, 2), (first + 4, 6), (first + 5, 6)]
                .into_iter()
                .collect();
        assert_eq!(counts, expected);
    }

    #[test]
    fn ack_state_low_water_advances_over_contiguous_settles() {
        let mut state = AckState::default();
        assert!(state.settle(1));
        assert_eq!(state.low_water(), 0);
        assert!(state.settle(0));
        assert_eq!(state.low_water(), 2);
        assert!(!state.settle(1));
        assert!(state.is_settled(1) && !state.is_settled(2));
        state.settle(5);
        assert_eq!(state.settled_above_count(), 1);
    }

    #[test]
    fn restart_returns_exactly_the_unsettled_messages() {
        let (env, fs, clock) = sim_env(1_000);
        let dir = Path::new("/data/queues/jobs");
        let store = QueueStore::open(dir, config(), env).unwrap();
        let ids = publish(&store, 100);
        let acked: Vec<i64> = ids.iter().copied().filter(|id| id % 2 == 0).collect();
        settle(&store, &acked);
        let expected: Vec<i64> = ids.iter().copied().filter(|id| id % 2 == 1).collect();
        assert_eq!(unsettled_ids(&store), expected);
        // A power loss: everything acknowledged (published and settled durably) holds.
        let image = fs.crash_image(Torn::None);
        drop(store);
        let reopened = QueueStore::open(dir, config(), env_with(Arc::new(image), clock)).unwrap();
        assert_eq!(unsettled_ids(&reopened), expected);
        let record = reopened.read(expected[0]).unwrap().unwrap();
        assert!(record.value.unwrap().starts_with(b"message-1-"));
    }

    #[test]
    fn compaction_deletes_settled_segments_and_survives_restart() {
        let (env, _fs, _clock) = sim_env(1_000);
        let dir = Path::new("/data/queues/bulk");
        let store = QueueStore::open(dir, config(), env.clone()).unwrap();
        let ids = publish(&store, 600);
        let segments_before = store.messages().segment_count();
        assert!(segments_before > 2);
        settle(&store, &ids[..500]);
        store.compact(&[], 1_000).unwrap();
        assert!(
            store.messages().segment_count() < segments_before,
            "settled segments deleted"
        );
        assert_eq!(unsettled_ids(&store), ids[500..].to_vec());
        store.close().unwrap();
        drop(store);
        let reopened = QueueStore::open(dir, config(), env).unwrap();
        assert_eq!(unsettled_ids(&reopened), ids[500..].to_vec());
        assert_eq!(reopened.ack_state().low_water(), ids[500]);
    }

    #[test]
    fn delivery_counts_survive_reopen_and_compaction_but_not_settlement() {
        let (env, _fs, _clock) = sim_env(1_000);
        let dir = Path::new("/data/queues/counted");
        let store = QueueStore::open(dir, config(), env.clone()).unwrap();
        let ids = publish(&store, 4);
        let appended = store
            .record_delivery_counts(&[(ids[0], 1), (ids[1], 2), (ids[2], 1)], 1_000)
            .unwrap()
            .expect("appended");
        store
            .wait_settled(appended, Duration::from_secs(10))
            .unwrap();
        // A later count replaces an earlier one; a settled message has none.
        store
            .record_delivery_counts(&[(ids[0], 3)], 1_000)
            .unwrap()
            .expect("appended");
        settle(&store, &[ids[2]]);
        store.close().unwrap();
        drop(store);
        let reopened = QueueStore::open(dir, config(), env.clone()).unwrap();
        let counts = reopened.take_recovered_counts();
        let expected: std::collections::HashMap<i64, u32> =
            [(ids[0], 3), (ids[1], 2)].into_iter().collect();
        assert_eq!(counts, expected);
        // Compaction checkpoints past the old count records, so it writes the counts again.
        reopened
            .compact(&[(ids[0], 3), (ids[1], 2)], 1_000)
            .unwrap();
        reopened.close().unwrap();
        drop(reopened);
        let again = QueueStore::open(dir, config(), env).unwrap();
        assert_eq!(again.take_recovered_counts(), expected);
    }
}
