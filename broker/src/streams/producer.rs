//! Idempotent producers: producer id allocation and, per partition, the state that turns a
//! retried batch into a no-op.
//!
//! Per partition and producer id the broker keeps the epoch and the sequence ranges and
//! offsets of the producer's last [`RETAINED_BATCHES`] batches. For an incoming batch:
//! - a stale epoch is fenced (`ProducerFenced`);
//! - a sequence range equal to a retained batch is a duplicate: the original offsets are
//!   returned and nothing is appended;
//! - the sequence right after the last batch (or 0 for a new producer or a new epoch) appends;
//! - anything else is a gap (`OutOfOrderSequence`), or for a producer the broker has no state
//!   for, `UnknownProducerId`.
//!
//! The check, the append and recording the result happen under one per-partition lock, so
//! two copies of a batch can never both append.
//!
//! Durability: the state is rebuilt on start from a snapshot (`producer-state` in the
//! partition directory, a checkpoint file) plus a replay of the batch headers appended after
//! the snapshot's offset. Snapshots are written at clean shutdown and periodically, at the
//! log end read under the producer lock, so a snapshot holds exactly the state of the log
//! below its offset and replay never counts a batch twice. A replicated partition's whole
//! state also travels in its group's checkpoint and snapshots
//! ([`PartitionProducers::encode_at`]).
//! Producer ids come from blocks reserved durably in `<data-dir>/producer-ids` before use,
//! so an id is never handed out twice, even across crashes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use wharf_protocol::batch::{self, BatchHeader, ControlKind, NO_PRODUCER_ID};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::wire_struct;

use crate::storage::{checkpoint, Error as StorageError, Fs, Partition};

/// Batches remembered per producer and partition, as Kafka does: a client keeps at most this
/// many batches in flight per partition, so any retry it can send is among them.
pub const RETAINED_BATCHES: usize = 5;
/// Producer ids reserved per durable write of the id block.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// Producer ids per cluster node: node N hands out ids from N × 2³¹ (issue #20).
pub const CLUSTER_ID_RANGE: i64 = 1 << 31;
/// How much longer than the expiry a sweep keeps an idle producer in memory (1 h): replicas
/// sweep on their own clocks, and a verdict counts a producer expired on the leader's
/// clock, so a sweep must not forget one a verdict could still know. Assumes the nodes'
/// clocks are within this of each other.
pub const SWEEP_MARGIN_MS: i64 = 3600 * 1000;
/// Version octet of [`PartitionProducers::encode_at`]'s bytes (the snapshot payload's
/// version: 2 adds the coordinator epochs).
pub const STATE_VERSION: u8 = 2;
/// Version of the `producer-state` file this build writes (2: with the coordinator
/// epochs); it reads 1 and 2.
pub const SNAPSHOT_VERSION: u16 = 2;
/// File name of the per-partition snapshot.
pub const SNAPSHOT_FILE: &str = "producer-state";
/// File name of the producer id block in the data directory.
pub const PRODUCER_IDS_FILE: &str = "producer-ids";
const SNAPSHOT_MAGIC: [u8; 4] = *b"WPST";
const IDS_MAGIC: [u8; 4] = *b"WPID";
/// Bytes read per step while replaying a partition's log.
const REPLAY_READ_BYTES: usize = 4 * 1024 * 1024;

/// One batch a producer appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    /// Sequence of the first record.
    pub first_sequence: i32,
    /// Sequence of the last record.
    pub last_sequence: i32,
    /// Offset of the first record.
    pub base_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
}

/// What a producer did on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The producer's current epoch.
    pub epoch: i16,
    /// Its last batches, oldest first (at most `RETAINED_BATCHES`).
    pub batches: VecDeque<BatchMetadata>,
    /// When it last appended (ms), for expiry.
    pub last_append_ms: i64,
    /// The coordinator epoch of its latest transaction marker here (-1: none): a marker of
    /// an older coordinator is refused (Kafka's `coordinator_epoch`).
    pub coordinator_epoch: i32,
}

/// Why a transaction marker is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MarkerRefusal {
    /// A coordinator of a later epoch wrote a marker for the producer here: this one comes
    /// from a deposed coordinator.
    #[error("coordinator epoch {epoch} is older than {latest}, the epoch of the producer's last marker here")]
    CoordinatorFenced { epoch: i32, latest: i32 },
    /// The producer has a newer epoch here than the marker's.
    #[error("producer epoch {epoch} is older than {current}, its epoch here")]
    ProducerFenced { epoch: i16, current: i16 },
}

/// The verdict on an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// A retry of a batch already stored: answer with its offsets, append nothing.
    Duplicate(BatchMetadata),
    /// Refuse it for this reason.
    Refuse(SequenceRefusal),
}

/// Why an idempotent batch is refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum SequenceRefusal {
    /// The partition knows nothing of the producer and the batch does not start at sequence
    /// 0 (its state expired or was never there).
    #[error("unknown producer id")]
    UnknownProducer,
    /// A newer epoch of the producer has written here.
    #[error("producer fenced by a newer epoch")]
    Fenced,
    /// The batch does not continue the producer's sequence.
    #[error("out of order sequence number")]
    OutOfOrder,
}

/// The sequence after `sequence` (sequences wrap from i32::MAX to 0, as Kafka's do).
fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

/// Sequence of the last record of a batch.
pub fn last_sequence(header: &BatchHeader) -> i32 {
    let count = header.last_offset_delta.max(0);
    // Wraps past i32::MAX to 0 like the sequences themselves.
    ((i64::from(header.base_sequence) + i64::from(count)) % (i64::from(i32::MAX) + 1)) as i32
}

/// One producer's state on a partition, as DescribeProducers shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerView {
    /// The producer id.
    pub producer_id: i64,
    /// Its current epoch.
    pub epoch: i16,
    /// The sequence of its last record here (-1: none retained).
    pub last_sequence: i32,
    /// When it last appended here (ms).
    pub last_append_ms: i64,
    /// The coordinator epoch of its last transaction marker here (-1: none).
    pub coordinator_epoch: i32,
    /// The first offset of its open transaction here, if one is open.
    pub transaction_start_offset: Option<i64>,
}

/// A transaction that was aborted on this partition: a read-committed consumer skips the
/// producer's records from `first_offset` up to the abort marker at `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    /// The producer.
    pub producer_id: i64,
    /// Offset of the transaction's first record on this partition.
    pub first_offset: i64,
    /// Offset of the abort marker.
    pub last_offset: i64,
}

/// Producer state of one partition.
#[derive(Debug, Default)]
pub struct PartitionProducers {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions on this partition: producer id → offset of its first record.
    ongoing: HashMap<i64, i64>,
    /// Aborted transactions, in marker order.
    aborted: Vec<AbortedTxn>,
}

impl PartitionProducers {
    /// The whole state as of `offset`, the end of the log it describes: a version octet
    /// ([`STATE_VERSION`]) then the layout of the snapshot file's payload
    /// (`producer-state`). A replicated partition's checkpoint keeps it and its snapshot
    /// carries it to a follower (issue #21).
    pub fn encode_at(&self, offset: i64) -> Bytes {
        let mut bytes = BytesMut::new();
        bytes.put_u8(STATE_VERSION);
        encode_snapshot(self, offset, &mut bytes);
        bytes.freeze()
    }

    /// The state [`PartitionProducers::encode_at`] encoded, and its offset.
    ///
    /// # Errors
    /// Bytes that do not decode, or of another version.
    pub fn decode_at(bytes: Bytes) -> Result<(PartitionProducers, i64), String> {
        match bytes.first() {
            Some(&version) if (1..=STATE_VERSION).contains(&version) => {
                decode_snapshot(bytes[1..].to_vec(), u16::from(version))
            }
            Some(other) => Err(format!(
                "a producer state of version {other}; this build reads 1 to {STATE_VERSION}"
            )),
            None => Err("an empty producer state".to_string()),
        }
    }

    /// Forgets producer `producer_id` here if its last append is before
    /// `expired_before_ms` and it has no transaction open here (Kafka's
    /// `producer.id.expiration.ms`), before a batch or marker of it is checked and recorded:
    /// an expired producer is then treated exactly as one a sweep already forgot, so
    /// replicas agree whether or not their sweeps ([`PartitionProducers::expire`]) ran.
    pub fn forget_expired(&mut self, producer_id: i64, expired_before_ms: i64) {
        if self.expired(producer_id, expired_before_ms) {
            self.producers.remove(&producer_id);
        }
    }

    /// Whether producer `producer_id` is known here and expired: its last append is before
    /// `expired_before_ms` and it has no transaction open here.
    fn expired(&self, producer_id: i64, expired_before_ms: i64) -> bool {
        !self.ongoing.contains_key(&producer_id)
            && self
                .producers
                .get(&producer_id)
                .is_some_and(|entry| entry.last_append_ms < expired_before_ms)
    }

    /// Whether a marker of `producer_id` at `epoch`, written by a coordinator of
    /// `coordinator_epoch`, may end its transaction here: not when a later coordinator
    /// already wrote one for it (a deposed coordinator's late marker could otherwise end
    /// the producer's next transaction), nor when the producer has a newer epoch here.
    ///
    /// # Errors
    /// Why the marker is refused.
    pub fn check_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), MarkerRefusal> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(MarkerRefusal::CoordinatorFenced {
                epoch: coordinator_epoch,
                latest: entry.coordinator_epoch,
            });
        }
        if epoch < entry.epoch {
            return Err(MarkerRefusal::ProducerFenced {
                epoch,
                current: entry.epoch,
            });
        }
        Ok(())
    }

    /// Decides what to do with an incoming batch of producer `producer_id`.
    pub fn check(
        &self,
        producer_id: i64,
        epoch: i16,
        first_sequence: i32,
        last_sequence: i32,
    ) -> Verdict {
        let Some(entry) = self.producers.get(&producer_id) else {
            return if first_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::Refuse(SequenceRefusal::UnknownProducer)
            };
        };
        if epoch < entry.epoch {
            return Verdict::Refuse(SequenceRefusal::Fenced);
        }
        if epoch > entry.epoch {
            // A new epoch starts its sequences over.
            return if first_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::Refuse(SequenceRefusal::OutOfOrder)
            };
        }
        if let Some(original) = entry.batches.iter().find(|batch| {
            batch.first_sequence == first_sequence && batch.last_sequence == last_sequence
        }) {
            return Verdict::Duplicate(*original);
        }
        match entry.batches.back() {
            Some(last) if first_sequence == next_sequence(last.last_sequence) => Verdict::Append,
            None if first_sequence == 0 => Verdict::Append,
            _ => Verdict::Refuse(SequenceRefusal::OutOfOrder),
        }
    }

    /// Records an appended batch at `now_ms`: the broker's clock when it appended it (on
    /// a replicated partition the leader's, carried in the command, the same on every
    /// replica); a replay of the log has only the batch's own timestamp. A batch at
    /// sequence 0 drops the batches retained before it unless it continues a sequence
    /// that wrapped past `i32::MAX` (a replay meeting a producer that started over).
    pub fn record(&mut self, producer_id: i64, epoch: i16, batch: BatchMetadata, now_ms: i64) {
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch,
                batches: VecDeque::new(),
                last_append_ms: now_ms,
                coordinator_epoch: -1,
            });
        let starts_over = batch.first_sequence == 0
            && entry
                .batches
                .back()
                .is_some_and(|last| last.last_sequence != i32::MAX);
        if epoch != entry.epoch || starts_over {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(batch);
        while entry.batches.len() > RETAINED_BATCHES {
            entry.batches.pop_front();
        }
        entry.last_append_ms = entry.last_append_ms.max(now_ms);
    }

    /// Forgets producers idle for longer than `expiry_ms` plus [`SWEEP_MARGIN_MS`] by
    /// `now_ms` (this node's clock), unless a transaction of theirs is open here. Only
    /// memory: [`PartitionProducers::forget_expired`] forgets each one before its next
    /// batch or marker anyway. The margin keeps a sweep from forgetting a producer that a
    /// replica's next command, on a leader's clock behind this node's, would still count
    /// as live.
    pub fn expire(&mut self, now_ms: i64, expiry_ms: i64) -> usize {
        let before = self.producers.len();
        let ongoing = &self.ongoing;
        let keep_ms = expiry_ms.saturating_add(SWEEP_MARGIN_MS);
        self.producers.retain(|producer_id, entry| {
            ongoing.contains_key(producer_id)
                || now_ms.saturating_sub(entry.last_append_ms) <= keep_ms
        });
        before - self.producers.len()
    }

    /// Notes a transactional batch appended at `base_offset`: it opens the producer's
    /// transaction on this partition if none is open.
    pub fn record_transactional(&mut self, producer_id: i64, base_offset: i64) {
        self.ongoing.entry(producer_id).or_insert(base_offset);
    }

    /// Notes a transaction marker at `marker_offset` written with `epoch`: it ends the
    /// producer's open transaction on this partition (an abort is remembered for
    /// read-committed fetches), and a marker with a newer epoch fences older epochs here.
    pub fn record_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        kind: ControlKind,
        marker_offset: i64,
        timestamp_ms: i64,
        coordinator_epoch: i32,
    ) {
        // Even a producer that never wrote here learns the epoch, so a zombie's first batch
        // to this partition is fenced too.
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch,
                batches: VecDeque::new(),
                last_append_ms: timestamp_ms,
                coordinator_epoch,
            });
        entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        // A marker counts as the producer's activity (as in Kafka since KAFKA-9144): its
        // transaction's end does not leave it looking idle since its last batch.
        entry.last_append_ms = entry.last_append_ms.max(timestamp_ms);
        let Some(first_offset) = self.ongoing.remove(&producer_id) else {
            // A marker for a transaction that wrote nothing here: nothing to skip.
            return;
        };
        if kind == ControlKind::Abort {
            self.aborted.push(AbortedTxn {
                producer_id,
                first_offset,
                last_offset: marker_offset,
            });
        }
    }

    /// The last stable offset: below it every transaction is decided. `high_watermark` when
    /// no transaction is open.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.ongoing
            .values()
            .copied()
            .min()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// Aborted transactions a fetch of `[from_offset, to_offset)` must skip.
    pub fn aborted_between(&self, from_offset: i64, to_offset: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|txn| txn.last_offset >= from_offset && txn.first_offset < to_offset)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below `log_start` (their segments are gone).
    pub fn prune_aborted(&mut self, log_start: i64) {
        self.aborted.retain(|txn| txn.last_offset >= log_start);
    }

    /// Number of producers with state.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// True if no producer has state.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Every producer with state here, by id, but those expired by `expired_before_ms`
    /// that no sweep forgot yet (their next batch or marker finds them forgotten).
    pub fn describe(&self, expired_before_ms: i64) -> Vec<ProducerView> {
        let mut views: Vec<ProducerView> = self
            .producers
            .iter()
            .filter(|(producer_id, _)| !self.expired(**producer_id, expired_before_ms))
            .map(|(producer_id, entry)| ProducerView {
                producer_id: *producer_id,
                epoch: entry.epoch,
                last_sequence: entry.batches.back().map_or(-1, |batch| batch.last_sequence),
                last_append_ms: entry.last_append_ms,
                coordinator_epoch: entry.coordinator_epoch,
                transaction_start_offset: self.ongoing.get(producer_id).copied(),
            })
            .collect();
        views.sort_by_key(|view| view.producer_id);
        views
    }

    /// The entry of one producer.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Replays stored batches: every idempotent batch of `bytes` (whole batches) and every
    /// transaction marker is recorded, as appending them did, but at the batch's own
    /// timestamp or `floor_ms`, whichever is later (the broker's clock at the append is not
    /// in the batch: a restart passes its clock, so a producer seen in the replayed tail
    /// counts as active since the restart). Returns the offset after the last batch (-1
    /// for none).
    ///
    /// # Errors
    /// A batch that does not decode.
    pub fn replay(&mut self, bytes: Bytes, floor_ms: i64) -> Result<i64, StorageError> {
        let mut next = -1;
        for decoded in batch::batches(bytes) {
            let decoded = decoded?;
            let header = *decoded.header();
            next = header.next_offset();
            if header.producer_id == NO_PRODUCER_ID {
                continue;
            }
            if header.attributes.is_control() {
                if let Some(marker) = decoded.control_marker()? {
                    self.record_marker(
                        header.producer_id,
                        header.producer_epoch,
                        marker.kind,
                        header.base_offset,
                        header.max_timestamp.max(floor_ms),
                        marker.coordinator_epoch,
                    );
                }
                continue;
            }
            if header.attributes.is_transactional() {
                self.record_transactional(header.producer_id, header.base_offset);
            }
            let metadata = BatchMetadata {
                first_sequence: header.base_sequence,
                last_sequence: last_sequence(&header),
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
            };
            self.record(
                header.producer_id,
                header.producer_epoch,
                metadata,
                header.max_timestamp.max(floor_ms),
            );
        }
        Ok(next)
    }
}

wire_struct! {
    /// One remembered batch in a snapshot.
    pub struct SnapshotBatch {
        pub first_sequence: i32,
        pub last_sequence: i32,
        pub base_offset: i64,
        pub last_offset: i64,
    }
}

wire_struct! {
    /// One producer in a snapshot.
    pub struct SnapshotProducer {
        pub producer_id: i64,
        pub epoch: i16,
        pub last_append_ms: i64,
        pub batches: Vec<SnapshotBatch>,
    }
}

wire_struct! {
    /// A transaction open at the snapshot's offset.
    pub struct SnapshotOngoing {
        pub producer_id: i64,
        pub first_offset: i64,
    }
}

wire_struct! {
    /// An aborted transaction below the snapshot's offset.
    pub struct SnapshotAborted {
        pub producer_id: i64,
        pub first_offset: i64,
        pub last_offset: i64,
    }
}

wire_struct! {
    /// A producer's coordinator epoch, after the payload (version 2 on).
    pub struct SnapshotCoordinatorEpoch {
        pub producer_id: i64,
        pub coordinator_epoch: i32,
    }
}

wire_struct! {
    /// The snapshot payload: state covering every batch below `offset`.
    pub struct SnapshotPayload {
        pub offset: i64,
        pub producers: Vec<SnapshotProducer>,
        pub ongoing: Vec<SnapshotOngoing>,
        pub aborted: Vec<SnapshotAborted>,
    }
}

/// Producer state of one partition with its lock; the lock is held across check, append and
/// record.
pub type SharedProducers = Arc<Mutex<PartitionProducers>>;

/// All partitions' producer state and the producer id allocator.
#[derive(Debug)]
pub struct Producers {
    fs: Arc<dyn Fs>,
    data_dir: PathBuf,
    partitions: Mutex<BTreeMap<(String, u32), SharedProducers>>,
    ids: Mutex<IdBlock>,
    /// Idle producers are forgotten after this long (ms).
    pub expiry_ms: i64,
}

#[derive(Debug)]
struct IdBlock {
    next: i64,
    end: i64,
    /// The first id of this cluster node's range (`None` on a lone node).
    range_first: Option<i64>,
    /// The end of this node's reservations as the cluster's metadata log recorded them.
    reserved: i64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Producers {
    /// Loads the id allocator's state; partitions are added with [`Producers::load`].
    ///
    /// # Errors
    /// Storage errors reading or reserving the id block.
    pub fn open(
        fs: Arc<dyn Fs>,
        data_dir: &Path,
        expiry_ms: i64,
    ) -> Result<Producers, StorageError> {
        let stored = checkpoint::read(fs.as_ref(), &data_dir.join(PRODUCER_IDS_FILE), IDS_MAGIC)?;
        let next = match stored {
            Some(found) if found.version == 1 && found.payload.len() == 8 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&found.payload);
                i64::from_be_bytes(bytes)
            }
            Some(_) => {
                return Err(StorageError::Corrupt {
                    segment: data_dir.join(PRODUCER_IDS_FILE),
                    position: 0,
                    reason: "producer id block has the wrong size".to_string(),
                })
            }
            None => 0,
        };
        let producers = Producers {
            fs,
            data_dir: data_dir.to_path_buf(),
            partitions: Mutex::new(BTreeMap::new()),
            // Nothing reserved yet: the first allocation reserves a block starting at `next`.
            ids: Mutex::new(IdBlock {
                next,
                end: next,
                range_first: None,
                reserved: 0,
            }),
            expiry_ms,
        };
        Ok(producers)
    }

    /// Hands out a new producer id, reserving a new block durably when the current one is
    /// used up (blocking file I/O: call off the runtime's workers).
    ///
    /// # Errors
    /// Storage errors writing the block.
    pub fn allocate_id(&self) -> Result<i64, StorageError> {
        let mut ids = lock(&self.ids);
        // Past its range a node would hand out the next node's ids.
        self.check_in_range(&ids, ids.next + 1)?;
        if ids.next >= ids.end {
            let end = ids.next + PRODUCER_ID_BLOCK;
            self.write_block_end(end)?;
            ids.end = end;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    /// Makes every id handed out from now on at least `first`: a cluster node hands out
    /// ids from its own range (issue #20), so producers of two nodes never share an id on a
    /// partition. Ids already at or above `first` are left as they are.
    pub fn hand_out_from(&self, first: i64) {
        let mut ids = lock(&self.ids);
        if ids.next < first {
            ids.next = first;
            ids.end = first;
        }
        ids.range_first = Some(first);
    }

    /// The next id of the block reserved through the cluster's metadata log, if it has one
    /// left (no I/O).
    pub fn take_reserved(&self) -> Option<i64> {
        let mut ids = lock(&self.ids);
        if ids.next >= ids.end {
            return None;
        }
        let id = ids.next;
        ids.next += 1;
        Some(id)
    }

    /// Adopts the block `start..end` the cluster's metadata log reserved for this node,
    /// recording its end durably here too (so a restart knows every id below it may have
    /// been handed out; blocking file I/O).
    ///
    /// # Errors
    /// A block past this node's range, or the storage error writing its end.
    pub fn adopt_block(&self, start: i64, end: i64) -> Result<(), StorageError> {
        let mut ids = lock(&self.ids);
        if end <= ids.next.max(ids.end) {
            // An older block adopted after a newer one (concurrent reservations): the
            // recorded end never goes back.
            return Ok(());
        }
        self.check_in_range(&ids, end)?;
        self.write_block_end(end)?;
        ids.next = ids.next.max(start);
        ids.end = end;
        Ok(())
    }

    /// Notes the end of this node's reservations as the cluster's metadata log recorded
    /// them: every id below it may have been handed out, also by this node before it lost
    /// its disk ([`Producers::may_be_handed_out`]).
    pub fn note_reserved(&self, end: i64) {
        let mut ids = lock(&self.ids);
        ids.reserved = ids.reserved.max(end);
    }

    /// Refuses ids up to `end` (exclusive) past this cluster node's range.
    fn check_in_range(&self, ids: &IdBlock, end: i64) -> Result<(), StorageError> {
        match ids.range_first {
            Some(first) if end - first > CLUSTER_ID_RANGE => Err(StorageError::Failed {
                partition: self.data_dir.join(PRODUCER_IDS_FILE),
                reason: format!(
                    "this node handed out all {CLUSTER_ID_RANGE} producer ids of its range"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Records durably that every id below `end` may have been handed out.
    fn write_block_end(&self, end: i64) -> Result<(), StorageError> {
        checkpoint::write(
            self.fs.as_ref(),
            &self.data_dir,
            PRODUCER_IDS_FILE,
            IDS_MAGIC,
            1,
            end as u64,
            &end.to_be_bytes(),
        )
    }

    /// The id the next allocation hands out: every id below it was handed out at some time.
    pub fn next_id(&self) -> i64 {
        lock(&self.ids).next
    }

    /// Whether `id` may be a producer id some node handed out: on a lone node, one below
    /// [`Producers::next_id`]; in a cluster, one this node handed out within its own range,
    /// or any id outside that range (another node's to vouch for).
    pub fn may_be_handed_out(&self, id: i64) -> bool {
        let ids = lock(&self.ids);
        if id < 0 {
            return false;
        }
        match ids.range_first {
            Some(first) if id >= first && id - first < CLUSTER_ID_RANGE => {
                id < ids.next.max(ids.reserved)
            }
            Some(_) => true,
            None => id < ids.next,
        }
    }

    /// Loads a partition's state: its snapshot, then a replay of the log after it (blocking:
    /// call at start-up or off the runtime's workers).
    ///
    /// # Errors
    /// Storage errors reading the snapshot or the log.
    pub fn load(
        &self,
        topic: &str,
        partition: u32,
        log: &Partition,
        now_ms: i64,
    ) -> Result<SharedProducers, StorageError> {
        let mut state = PartitionProducers::default();
        let mut from = log.log_start_offset();
        // A replayed producer counts as active since the restart: the broker's clock at
        // its appends is not in the log, and the records' own timestamps may be far in the
        // past (a backfill). Producers of a log replayed whole then stay a day longer than
        // they would have. A replicated partition takes the batches' timestamps (its
        // checkpoint's state replaces this one, and every replica reads the same bytes).
        let replicated = self.fs.exists(
            &log.dir()
                .join(crate::storage::partition::REPLICA_CHECKPOINT_FILE),
        );
        let floor_ms = if replicated { i64::MIN } else { now_ms };
        let path = log.dir().join(SNAPSHOT_FILE);
        match checkpoint::read(self.fs.as_ref(), &path, SNAPSHOT_MAGIC) {
            Ok(Some(found)) if !(1..=SNAPSHOT_VERSION).contains(&found.version) => {
                tracing::warn!(snapshot = %path.display(), version = found.version, "ignoring producer snapshot of an unknown version");
            }
            Ok(Some(found)) => match decode_snapshot(found.payload, found.version) {
                // A snapshot past the log end (the tail was cut by recovery) or before the log
                // start (segments were deleted) cannot be trusted: replay everything.
                Ok((snapshot, offset)) if (from..=log.log_end_offset()).contains(&offset) => {
                    from = offset;
                    state = snapshot;
                }
                Ok(_) => {}
                Err(reason) => {
                    tracing::warn!(snapshot = %path.display(), reason, "ignoring damaged producer snapshot")
                }
            },
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(snapshot = %path.display(), %error, "ignoring unreadable producer snapshot")
            }
        }
        let end = log.high_watermark();
        while from < end {
            let read = log.read(from, REPLAY_READ_BYTES)?;
            if read.bytes.is_empty() {
                break;
            }
            from = state.replay(read.bytes, floor_ms)?;
        }
        let shared = Arc::new(Mutex::new(state));
        lock(&self.partitions).insert((topic.to_string(), partition), shared.clone());
        Ok(shared)
    }

    /// The state of a partition, created empty if it has none yet (a new partition).
    pub fn partition(&self, topic: &str, partition: u32) -> SharedProducers {
        lock(&self.partitions)
            .entry((topic.to_string(), partition))
            .or_default()
            .clone()
    }

    /// Forgets a deleted partition.
    pub fn remove(&self, topic: &str, partition: u32) {
        lock(&self.partitions).remove(&(topic.to_string(), partition));
    }

    /// Writes a snapshot of one partition covering everything below its log end, and
    /// expires idle producers first. The log end is read under the producer lock, which
    /// every append that changes producer state holds, so the state is exactly that of the
    /// log below it (nothing from a later append); the log is fsynced up to it before the
    /// snapshot is written, so a crash never leaves a snapshot past the recovered log that
    /// a replay would have to skip.
    ///
    /// Returns the snapshot's offset.
    ///
    /// # Errors
    /// Storage errors of the fsync or writing the snapshot.
    pub fn snapshot(
        &self,
        shared: &SharedProducers,
        log: &Partition,
        now_ms: i64,
    ) -> Result<i64, StorageError> {
        let (offset, payload) = {
            let mut state = lock(shared);
            state.expire(now_ms, self.expiry_ms);
            state.prune_aborted(log.log_start_offset());
            let offset = log.log_end_offset();
            let mut bytes = BytesMut::new();
            encode_snapshot(&state, offset, &mut bytes);
            (offset, bytes)
        };
        log.flush()?;
        checkpoint::write(
            self.fs.as_ref(),
            log.dir(),
            SNAPSHOT_FILE,
            SNAPSHOT_MAGIC,
            SNAPSHOT_VERSION,
            offset as u64,
            &payload,
        )?;
        Ok(offset)
    }

    /// Every partition's state, for periodic snapshots.
    pub fn all(&self) -> Vec<((String, u32), SharedProducers)> {
        lock(&self.partitions)
            .iter()
            .map(|(key, shared)| (key.clone(), shared.clone()))
            .collect()
    }
}

/// Whether a transactional batch may be appended to a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The partition is in the producer's open transaction.
    Member,
    /// A newer epoch of the producer exists.
    Fenced,
    /// The partition was not added to an open transaction of this producer.
    NotAdded,
}

/// The partitions of one open transaction.
pub type TxnPartitions = std::collections::BTreeSet<(String, u32)>;

/// Transactional producers' current epochs and the partitions of their open transactions:
/// producer id → (epoch, partitions). The transaction coordinator writes it after logging a
/// state change; the produce path reads it to check a transactional batch.
#[derive(Debug, Default)]
pub struct TxnMembers {
    open: Mutex<HashMap<i64, (i16, TxnPartitions)>>,
}

impl TxnMembers {
    /// Whether producer `producer_id` at `epoch` may append a transactional batch to
    /// `topic`-`partition` (it must have been added to its open transaction).
    pub fn membership(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: u32,
    ) -> Membership {
        let open = lock(&self.open);
        match open.get(&producer_id) {
            Some((current, _)) if epoch < *current => Membership::Fenced,
            Some((current, partitions))
                if epoch == *current && partitions.contains(&(topic.to_string(), partition)) =>
            {
                Membership::Member
            }
            _ => Membership::NotAdded,
        }
    }

    /// Records a producer's epoch and the partitions of its open transaction (empty when
    /// none is open). Only the transaction coordinator calls it, after logging the state.
    pub(crate) fn set(&self, producer_id: i64, epoch: i16, partitions: TxnPartitions) {
        lock(&self.open).insert(producer_id, (epoch, partitions));
    }
}

fn to_snapshot(state: &PartitionProducers, offset: i64) -> SnapshotPayload {
    let mut producers: Vec<SnapshotProducer> = state
        .producers
        .iter()
        .map(|(producer_id, entry)| SnapshotProducer {
            producer_id: *producer_id,
            epoch: entry.epoch,
            last_append_ms: entry.last_append_ms,
            // Batches at or past the snapshot offset are replayed from the log instead.
            batches: entry
                .batches
                .iter()
                .filter(|batch| batch.last_offset < offset)
                .map(|batch| SnapshotBatch {
                    first_sequence: batch.first_sequence,
                    last_sequence: batch.last_sequence,
                    base_offset: batch.base_offset,
                    last_offset: batch.last_offset,
                })
                .collect(),
        })
        .collect();
    producers.sort_by_key(|producer| producer.producer_id);
    // Transactions opened at or past the offset, and aborts decided there, are replayed.
    // A transaction aborted at or past the offset was still open at the offset: save it as
    // open, and the replay of its marker records the abort again.
    let open_at_offset = state
        .ongoing
        .iter()
        .map(|(producer_id, first_offset)| (*producer_id, *first_offset))
        .chain(
            state
                .aborted
                .iter()
                .filter(|txn| txn.last_offset >= offset)
                .map(|txn| (txn.producer_id, txn.first_offset)),
        );
    let mut ongoing: Vec<SnapshotOngoing> = open_at_offset
        .filter(|(_, first_offset)| *first_offset < offset)
        .map(|(producer_id, first_offset)| SnapshotOngoing {
            producer_id,
            first_offset,
        })
        .collect();
    ongoing.sort_by_key(|entry| entry.producer_id);
    let aborted = state
        .aborted
        .iter()
        .filter(|txn| txn.last_offset < offset)
        .map(|txn| SnapshotAborted {
            producer_id: txn.producer_id,
            first_offset: txn.first_offset,
            last_offset: txn.last_offset,
        })
        .collect();
    SnapshotPayload {
        offset,
        producers,
        ongoing,
        aborted,
    }
}

fn from_snapshot(snapshot: SnapshotPayload) -> PartitionProducers {
    let mut state = PartitionProducers::default();
    for producer in snapshot.producers {
        state.producers.insert(
            producer.producer_id,
            ProducerEntry {
                epoch: producer.epoch,
                batches: VecDeque::new(),
                last_append_ms: producer.last_append_ms,
                coordinator_epoch: -1,
            },
        );
        for batch in producer.batches {
            let metadata = BatchMetadata {
                first_sequence: batch.first_sequence,
                last_sequence: batch.last_sequence,
                base_offset: batch.base_offset,
                last_offset: batch.last_offset,
            };
            state.record(
                producer.producer_id,
                producer.epoch,
                metadata,
                producer.last_append_ms,
            );
        }
    }
    for entry in snapshot.ongoing {
        state.ongoing.insert(entry.producer_id, entry.first_offset);
    }
    state.aborted = snapshot
        .aborted
        .into_iter()
        .map(|txn| AbortedTxn {
            producer_id: txn.producer_id,
            first_offset: txn.first_offset,
            last_offset: txn.last_offset,
        })
        .collect();
    state
}

/// The state in a snapshot payload of `version` (1: without the coordinator epochs, read
/// as -1), and its offset.
fn decode_snapshot(payload: Vec<u8>, version: u16) -> Result<(PartitionProducers, i64), String> {
    let mut reader = Reader::new(Bytes::from(payload));
    let snapshot =
        SnapshotPayload::decode(&mut reader, "snapshot").map_err(|error| error.to_string())?;
    let epochs = if version >= 2 {
        Vec::<SnapshotCoordinatorEpoch>::decode(&mut reader, "coordinator_epochs")
            .map_err(|error| error.to_string())?
    } else {
        Vec::new()
    };
    reader.finish().map_err(|error| error.to_string())?;
    let offset = snapshot.offset;
    let mut state = from_snapshot(snapshot);
    for epoch in epochs {
        if let Some(entry) = state.producers.get_mut(&epoch.producer_id) {
            entry.coordinator_epoch = epoch.coordinator_epoch;
        }
    }
    Ok((state, offset))
}

/// The snapshot payload of the current version ([`SNAPSHOT_VERSION`]): the state as of
/// `offset`, then each producer's coordinator epoch.
fn encode_snapshot(state: &PartitionProducers, offset: i64, out: &mut BytesMut) {
    to_snapshot(state, offset).encode(out);
    let mut epochs: Vec<SnapshotCoordinatorEpoch> = state
        .producers
        .iter()
        .filter(|(_, entry)| entry.coordinator_epoch >= 0)
        .map(|(producer_id, entry)| SnapshotCoordinatorEpoch {
            producer_id: *producer_id,
            coordinator_epoch: entry.coordinator_epoch,
        })
        .collect();
    epochs.sort_by_key(|epoch| epoch.producer_id);
    epochs.encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first_sequence: i32, last_sequence: i32, base_offset: i64) -> BatchMetadata {
        BatchMetadata {
            first_sequence,
            last_sequence,
            base_offset,
            last_offset: base_offset + i64::from(last_sequence - first_sequence),
        }
    }

    #[test]
    fn a_cluster_node_hands_out_ids_from_its_range_and_keeps_them_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Fs> = Arc::new(crate::storage::RealFs);
        let first = 3 * CLUSTER_ID_RANGE;
        let producers = Producers::open(fs.clone(), dir.path(), 60_000).unwrap();
        assert_eq!(
            producers.allocate_id().unwrap(),
            0,
            "a lone node starts at 0"
        );
        producers.hand_out_from(first);
        assert_eq!(producers.allocate_id().unwrap(), first);
        assert_eq!(producers.allocate_id().unwrap(), first + 1);
        drop(producers);
        let reopened = Producers::open(fs, dir.path(), 60_000).unwrap();
        reopened.hand_out_from(first);
        let next = reopened.allocate_id().unwrap();
        assert!(
            next > first + 1,
            "{next} repeats an id handed out before the restart"
        );
        // Its own range: only what it handed out; another node's: not its to refuse.
        assert!(reopened.may_be_handed_out(first + 1));
        assert!(!reopened.may_be_handed_out(next + 1));
        assert!(reopened.may_be_handed_out(2 * CLUSTER_ID_RANGE));
        assert!(reopened.may_be_handed_out(5 * CLUSTER_ID_RANGE));
        assert!(!reopened.may_be_handed_out(-1));
    }

    #[test]
    fn new_producer_must_start_at_sequence_zero() {
        let state = PartitionProducers::default();
        assert_eq!(state.check(7, 0, 0, 4), Verdict::Append);
        assert_eq!(
            state.check(7, 0, 5, 9),
            Verdict::Refuse(SequenceRefusal::UnknownProducer)
        );
    }

    #[test]
    fn next_sequence_appends_gap_is_refused_retry_is_duplicate() {
        let mut state = PartitionProducers::default();
        state.record(7, 0, batch(0, 4, 100), 1);
        assert_eq!(state.check(7, 0, 5, 9), Verdict::Append);
        assert_eq!(
            state.check(7, 0, 6, 9),
            Verdict::Refuse(SequenceRefusal::OutOfOrder)
        );
        assert_eq!(
            state.check(7, 0, 10, 12),
            Verdict::Refuse(SequenceRefusal::OutOfOrder)
        );
        assert_eq!(
            state.check(7, 0, 0, 4),
            Verdict::Duplicate(batch(0, 4, 100))
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut state = PartitionProducers::default();
        for index in 0..7 {
            state.record(
                7,
                0,
                batch(index * 10, index * 10 + 9, i64::from(index) * 10),
                1,
            );
        }
        assert_eq!(state.get(7).unwrap().batches.len(), RETAINED_BATCHES);
        assert!(matches!(state.check(7, 0, 20, 29), Verdict::Duplicate(_)));
        // Older than the window: no longer recognised, and not the next sequence either.
        assert_eq!(
            state.check(7, 0, 0, 9),
            Verdict::Refuse(SequenceRefusal::OutOfOrder)
        );
    }

    #[test]
    fn stale_epoch_is_fenced_and_new_epoch_restarts_sequences() {
        let mut state = PartitionProducers::default();
        state.record(7, 3, batch(0, 4, 0), 1);
        assert_eq!(
            state.check(7, 2, 5, 9),
            Verdict::Refuse(SequenceRefusal::Fenced)
        );
        assert_eq!(
            state.check(7, 4, 5, 9),
            Verdict::Refuse(SequenceRefusal::OutOfOrder)
        );
        assert_eq!(state.check(7, 4, 0, 0), Verdict::Append);
        state.record(7, 4, batch(0, 0, 5), 2);
        assert_eq!(
            state.check(7, 3, 5, 9),
            Verdict::Refuse(SequenceRefusal::Fenced)
        );
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut state = PartitionProducers::default();
        state.record(7, 0, batch(0, 0, 0), 1);
        state.producers.get_mut(&7).unwrap().batches[0].last_sequence = i32::MAX;
        assert_eq!(state.check(7, 0, 0, 3), Verdict::Append);
    }

    #[test]
    fn the_whole_state_at_the_log_end_round_trips() {
        // Goal: what a replicated snapshot carries to a follower is the state itself:
        // producers, their retained batches, open and aborted transactions.
        let mut state = PartitionProducers::default();
        state.record(1, 0, batch(0, 4, 0), 1_000);
        state.record(1, 0, batch(5, 9, 5), 2_000);
        state.record(2, 3, batch(0, 0, 10), 3_000);
        state.record_transactional(2, 10);
        state.record_transactional(4, 11);
        state.record_marker(4, 0, ControlKind::Abort, 12, 4_000, 7);
        let encoded = state.encode_at(13);
        // Golden: after the payload, the coordinator epochs (version 2): one, producer 4's 7.
        assert_eq!(encoded[0], STATE_VERSION);
        assert_eq!(
            &encoded[encoded.len() - 16..],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 7][..]
        );
        let (restored, offset) = PartitionProducers::decode_at(encoded.clone()).unwrap();
        assert_eq!(offset, 13);
        for id in [1, 2, 4] {
            assert_eq!(restored.get(id), state.get(id), "producer {id}");
        }
        assert_eq!(restored.last_stable_offset(13), 10);
        assert_eq!(
            restored.aborted_between(0, 13),
            state.aborted_between(0, 13)
        );
        assert_eq!(restored.get(4).unwrap().coordinator_epoch, 7);
        // A state of version 1 (no coordinator epochs) reads with epoch -1.
        let mut first = BytesMut::new();
        first.put_u8(1);
        to_snapshot(&state, 13).encode(&mut first);
        let (older, _) = PartitionProducers::decode_at(first.freeze()).unwrap();
        assert_eq!(older.get(4).unwrap().coordinator_epoch, -1);
        assert_eq!(older.get(1), state.get(1));
        // Refused: an unknown version, a damaged payload, nothing.
        assert!(PartitionProducers::decode_at(Bytes::from_static(b"nonsense")).is_err());
        let mut damaged = encoded.to_vec();
        damaged.truncate(damaged.len() - 3);
        assert!(PartitionProducers::decode_at(Bytes::from(damaged)).is_err());
        assert!(PartitionProducers::decode_at(Bytes::new()).is_err());
    }

    #[test]
    fn a_marker_of_an_older_coordinator_or_producer_epoch_is_refused() {
        // Goal: a deposed coordinator's late marker (an older coordinator epoch than the
        // producer's last marker here) cannot end the producer's next transaction, nor can
        // a marker for an older epoch of the producer.
        let mut state = PartitionProducers::default();
        assert_eq!(state.check_marker(1, 0, 0), Ok(()), "an unknown producer");
        state.record(1, 2, batch(0, 0, 0), 0);
        state.record_transactional(1, 0);
        state.record_marker(1, 2, ControlKind::Commit, 1, 0, 5);
        state.record_transactional(1, 2);
        assert_eq!(
            state.check_marker(1, 2, 4),
            Err(MarkerRefusal::CoordinatorFenced {
                epoch: 4,
                latest: 5
            })
        );
        assert_eq!(
            state.check_marker(1, 1, 5),
            Err(MarkerRefusal::ProducerFenced {
                epoch: 1,
                current: 2
            })
        );
        assert_eq!(state.check_marker(1, 2, 5), Ok(()));
        assert_eq!(state.check_marker(1, 3, 6), Ok(()));
    }

    #[test]
    fn last_stable_offset_waits_for_open_transactions() {
        let mut state = PartitionProducers::default();
        assert_eq!(state.last_stable_offset(10), 10);
        state.record_transactional(1, 4);
        state.record_transactional(1, 6);
        state.record_transactional(2, 8);
        assert_eq!(state.last_stable_offset(10), 4);
        state.record_marker(1, 0, ControlKind::Commit, 9, 0, -1);
        assert_eq!(state.last_stable_offset(12), 8);
        state.record_marker(2, 0, ControlKind::Abort, 12, 0, -1);
        assert_eq!(state.last_stable_offset(13), 13);
        assert_eq!(
            state.aborted_between(0, 13),
            vec![AbortedTxn {
                producer_id: 2,
                first_offset: 8,
                last_offset: 12
            }]
        );
        assert!(state.aborted_between(13, 20).is_empty());
        state.prune_aborted(13);
        assert!(state.aborted_between(0, 20).is_empty());
    }

    #[test]
    fn snapshot_keeps_a_transaction_aborted_past_its_offset_as_open() {
        let mut state = PartitionProducers::default();
        state.record_transactional(1, 2);
        state.record_marker(1, 0, ControlKind::Abort, 15, 0, -1);
        let mut restored = from_snapshot(to_snapshot(&state, 10));
        assert_eq!(restored.last_stable_offset(30), 2);
        // Replaying the marker past the offset records the abort again.
        restored.record_marker(1, 0, ControlKind::Abort, 15, 0, -1);
        assert_eq!(restored.aborted_between(0, 30).len(), 1);
    }

    #[test]
    fn a_marker_fences_older_epochs_even_without_earlier_batches() {
        let mut state = PartitionProducers::default();
        state.record_marker(9, 3, ControlKind::Abort, 0, 0, -1);
        assert_eq!(
            state.check(9, 2, 0, 0),
            Verdict::Refuse(SequenceRefusal::Fenced)
        );
        let restored = from_snapshot(to_snapshot(&state, 10));
        assert_eq!(
            restored.check(9, 2, 0, 0),
            Verdict::Refuse(SequenceRefusal::Fenced)
        );
    }

    #[test]
    fn snapshot_keeps_transactions_below_its_offset() {
        let mut state = PartitionProducers::default();
        state.record_transactional(1, 2);
        state.record_marker(1, 0, ControlKind::Abort, 5, 0, -1);
        state.record_transactional(3, 7);
        state.record_transactional(4, 20);
        let restored = from_snapshot(to_snapshot(&state, 10));
        assert_eq!(restored.last_stable_offset(30), 7);
        assert_eq!(restored.aborted_between(0, 30).len(), 1);
    }

    #[test]
    fn idle_producers_expire() {
        // Goal: a sweep forgets a producer only past the expiry plus the margin, never one
        // with an open transaction; a verdict counts it unknown from the expiry on.
        let mut state = PartitionProducers::default();
        state.record(1, 0, batch(0, 0, 0), 1_000);
        state.record(2, 0, batch(0, 0, 1), 5_000);
        state.record(3, 0, batch(0, 0, 2), 1_000);
        state.record_transactional(3, 2);
        assert_eq!(state.expire(6_000, 2_000), 0, "within the margin");
        let mut checked = PartitionProducers::default();
        checked.record(1, 0, batch(0, 0, 0), 1_000);
        checked.record(2, 0, batch(0, 0, 1), 5_000);
        checked.record(3, 0, batch(0, 0, 2), 1_000);
        checked.record_transactional(3, 2);
        for id in [1, 2, 3] {
            checked.forget_expired(id, 6_000 - 2_000);
        }
        assert_eq!(
            checked.check(1, 0, 1, 1),
            Verdict::Refuse(SequenceRefusal::UnknownProducer)
        );
        assert_eq!(checked.check(2, 0, 1, 1), Verdict::Append);
        assert_eq!(checked.check(3, 0, 1, 1), Verdict::Append);
        assert_eq!(state.expire(6_000 + SWEEP_MARGIN_MS, 2_000), 1);
        assert!(state.get(1).is_none() && state.get(2).is_some() && state.get(3).is_some());
    }

    #[test]
    fn snapshot_keeps_only_batches_below_its_offset() {
        let mut state = PartitionProducers::default();
        state.record(1, 0, batch(0, 4, 0), 1);
        state.record(1, 0, batch(5, 9, 5), 1);
        let snapshot = to_snapshot(&state, 5);
        let restored = from_snapshot(snapshot);
        assert_eq!(restored.get(1).unwrap().batches.len(), 1);
        assert_eq!(restored.check(1, 0, 5, 9), Verdict::Append);
    }
}
