//! The produce rules: which batches a producer may append to a partition, and how.
//!
//! A produce runs in two phases. [`Streams::append_produced`] is the ordered phase: it checks
//! the batches and appends them through [`crate::append`], so pipelined produces of one
//! connection append in request order. The caller then awaits each [`Receipt::durable`]
//! (acks = all) outside that phase, so every partition and every pipelined request shares
//! the flusher's fsyncs.
//!
//! Rules, in the order they apply: no internal topics; an unknown topic is created when
//! auto-creation is on (a concurrent create of the same name is fine); no control batches;
//! an idempotent produce carries exactly one batch per partition; no timestamp more than
//! [`TIMESTAMP_AHEAD_MS_MAX`] ahead; a transactional batch needs a producer id; an
//! idempotent batch's CRC is checked before it touches producer state; its sequence is
//! checked, appended and recorded under the partition's producer lock, taken before the
//! storage writer lock (markers take the same lock, so no transactional batch slips in
//! after its transaction's marker); a retry of a stored batch is answered with the
//! original offsets and appends nothing. A compacted topic takes only records with a key
//! (the one produce check that reads records, so it costs only compacted topics).

use std::sync::Arc;

use bytes::BytesMut;
use wharf_protocol::batch::{self, BatchHeader, ControlKind, NO_PRODUCER_ID};

use crate::append::{self, Receipt};
use crate::config::MESSAGE_BYTES_MAX_DEFAULT;
use crate::storage::Partition;
use crate::streams::producer::{last_sequence, BatchMetadata, Membership, Verdict};
use crate::streams::topic::{TopicError, TopicInfo, INTERNAL_TOPIC_PREFIX};
use crate::streams::{AutoCreate, StreamError, Streams, TIMESTAMP_AHEAD_MS_MAX};

/// Who checks what depends on a node's own state: that a transactional batch's partition
/// is in its producer's open transaction, and that its producer id was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnCheck {
    /// Applying the batch asks this node: its transaction membership table, under the
    /// partition's producer lock (the coordinator runs here and the partition is not
    /// replicated), and the producer ids it handed out.
    Here,
    /// The partition's leader checked before handing the batch on (the producer id in
    /// [`Streams::check_produced`]; the transaction with the coordinator, for a replicated
    /// partition or one led away from the coordinator: `core/txn_markers.rs`); applying it
    /// asks nothing of this node, so every replica applies the same batches alike, a
    /// replica rebuilt after losing its disk included.
    Verified,
}

impl Streams {
    /// Finds a topic for a produce without ever creating it: `Ok(None)` when it does not
    /// exist and auto-creation is on (then [`Streams::create_for_produce`], which blocks).
    ///
    /// # Errors
    /// `InternalTopic`; `AutoCreateDisabled` for an unknown topic with auto-creation off.
    pub fn find_for_produce(&self, name: &str) -> Result<Option<TopicInfo>, StreamError> {
        if name.starts_with(INTERNAL_TOPIC_PREFIX) {
            // Internal topics hold broker state in the broker's own record format.
            return Err(StreamError::InternalTopic(name.to_string()));
        }
        if let Some(info) = self.topics.get(name) {
            return Ok(Some(info));
        }
        if self.settings.auto_create_topics == AutoCreate::Off {
            return Err(StreamError::AutoCreateDisabled(name.to_string()));
        }
        Ok(None)
    }

    /// Creates a topic a produce named, with the default partition count (blocking: creates
    /// and fsyncs files; call it on the blocking pool). A concurrent create of the same name
    /// is no error.
    ///
    /// # Errors
    /// The topic error of the create.
    pub fn create_for_produce(&self, name: &str) -> Result<TopicInfo, StreamError> {
        match self
            .topics
            .create(name, self.settings.default_partitions, Vec::new())
        {
            Ok(info) => Ok(info),
            // Another request created it first.
            Err(TopicError::AlreadyExists(_)) => self
                .topics
                .get(name)
                .ok_or_else(|| StreamError::UnknownTopic(name.to_string())),
            Err(error) => Err(error.into()),
        }
    }

    /// Checks produced batches for one partition and appends them (the ordered phase of a
    /// produce). Returns the receipt to await durability on; for a retried idempotent batch
    /// it is the original's.
    ///
    /// # Errors
    /// The [`StreamError`] of the first rule the batches break, or of the append.
    pub fn append_produced(
        &self,
        info: &TopicInfo,
        partition: u32,
        records: &[u8],
        txn_check: TxnCheck,
    ) -> Result<Receipt, StreamError> {
        let log = self.produced_log(info, partition)?;
        let batches = self.check_produced(info, &log, records)?;
        self.apply_produced(
            &info.name,
            partition,
            &log,
            batches,
            self.clock.now_ms(),
            txn_check,
        )
    }

    /// The log of a partition a produce names.
    ///
    /// # Errors
    /// `PartitionOutOfRange`.
    pub fn produced_log(
        &self,
        info: &TopicInfo,
        partition: u32,
    ) -> Result<Arc<Partition>, StreamError> {
        self.topics.partition(&info.name, partition).ok_or_else(|| {
            StreamError::PartitionOutOfRange {
                topic: info.name.clone(),
                partition,
                partitions: info.partitions,
            }
        })
    }

    /// The rules of a produce that depend on this node (its clock, the topic's configs as
    /// this node has them, the producer ids it handed out): checked once, where the produce
    /// arrives. Returns the batches, copied, for [`Streams::apply_produced`].
    ///
    /// # Errors
    /// The [`StreamError`] of the first rule the batches break.
    pub fn check_produced(
        &self,
        info: &TopicInfo,
        log: &Arc<Partition>,
        records: &[u8],
    ) -> Result<BytesMut, StreamError> {
        // The broker patches offsets in place; the request's bytes are shared, so copy once.
        let batches = BytesMut::from(records);
        let headers = batch_headers(&batches);
        let bytes_max = message_bytes_max(info);
        if let Some(batch) = headers
            .iter()
            .find(|batch| batch.total_bytes() as u64 > bytes_max)
        {
            return Err(StreamError::MessageTooLarge {
                bytes: batch.total_bytes() as u64,
                bytes_max,
            });
        }
        let Some(header) = headers.first().copied() else {
            // Storage validates and reports what is wrong.
            return Ok(batches);
        };
        self.check_batches(&headers, header)?;
        if log.limits().cleanup.compacts() {
            check_keyed(&info.name, &batches)?;
        }
        if header.producer_id != NO_PRODUCER_ID {
            if header.total_bytes() != batches.len() {
                return Err(StreamError::SeveralIdempotentBatches);
            }
            // Check the CRC before the batch can touch producer state.
            batch::validate(&batches)
                .map_err(|error| StreamError::CorruptBatch(error.to_string()))?;
            if !self.producers.may_be_handed_out(header.producer_id) {
                return Err(StreamError::UnknownProducerId(header.producer_id));
            }
        }
        Ok(batches)
    }

    /// Appends checked batches (the second half of [`Streams::append_produced`]): an
    /// idempotent batch unless it is a retry of one stored, recording its sequence with
    /// `now_ms`. Deterministic for replicas: the same batches and `now_ms` on the same log
    /// and producer state give the same offsets, verdict and state on every node (with
    /// [`TxnCheck::Here`] a transactional batch also asks this node's transaction
    /// membership).
    ///
    /// # Errors
    /// A sequence refusal, or the append's storage error.
    pub fn apply_produced(
        &self,
        topic: &str,
        partition: u32,
        log: &Arc<Partition>,
        mut batches: BytesMut,
        now_ms: i64,
        txn_check: TxnCheck,
    ) -> Result<Receipt, StreamError> {
        match batch::parse_header(&batches) {
            Ok(Some(header)) if header.producer_id != NO_PRODUCER_ID => self.append_idempotent(
                topic,
                partition,
                log,
                &mut batches,
                header,
                now_ms,
                txn_check,
            ),
            _ => Ok(append::append(log, &mut batches)?),
        }
    }

    /// Appends whole batches another replica of the partition stored (a follower catching
    /// up past its group's purged log, issue #21), keeping their offsets, and records each
    /// idempotent batch in the producer state as a replay of the log does. Returns the log
    /// end after them.
    ///
    /// A range the cleaner compacted skips offsets between batches (a compacted topic's
    /// sealed segments, `__consumer_offsets` among them). Storage keeps every segment free
    /// of such gaps past its cleaned part (crash recovery takes a jump forward in the
    /// active segment for damage), so each gap is written as empty batches spanning the
    /// skipped offsets ([`gap_filler`]): the log keeps the other replica's offsets, and
    /// readers step over an empty batch as over one the cleaner emptied.
    ///
    /// `fill_to`: where the copy ends when that is past its last batch (a leader's
    /// snapshot position whose last batches its cleaner removed since): the offsets up to
    /// it are filled too.
    ///
    /// # Errors
    /// `CorruptBatch` when a batch starts below the log end or below the end of the batch
    /// before it, or the append's storage error.
    pub fn append_stored(
        &self,
        topic: &str,
        partition: u32,
        log: &Arc<Partition>,
        batches: BytesMut,
        fill_to: Option<i64>,
    ) -> Result<i64, StreamError> {
        let headers = batch_headers(&batches);
        // Under the producer lock, as every append that changes producer state: a
        // producer-state snapshot never covers these batches without their state.
        let shared = self.producers.partition(topic, partition);
        let mut state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut copy = StoredCopy::new(log.log_end_offset(), log.leader_epochs().current());
        let mut position = 0;
        for header in &headers {
            if header.base_offset < copy.expected {
                return Err(StreamError::CorruptBatch(format!(
                    "stored records from offset {} do not continue {topic}-{partition} at {}",
                    header.base_offset, copy.expected
                )));
            }
            copy.fill(header.base_offset)?;
            copy.push(header, &batches[position..position + header.total_bytes()]);
            position += header.total_bytes();
        }
        if let Some(fill_to) = fill_to {
            copy.fill(fill_to)?;
        }
        // Whatever did not parse goes on too, for the append to refuse.
        copy.out
            .extend_from_slice(&batches[position.min(batches.len())..]);
        let mut end = log.log_end_offset();
        for mut chunk in copy.finish() {
            let receipt = append::append_keeping_epochs(log, &mut chunk)?;
            // Recorded as a replay of the log records them: idempotent batches, the open
            // transactions and the markers that end them (aborted ones for
            // read_committed). A snapshot from a leader of this build then replaces the
            // state with its own (`Applier::install_state`), which holds what the batches
            // cannot tell.
            state.replay(chunk.freeze(), i64::MIN)?;
            end = receipt.appended().next_offset;
        }
        Ok(end)
    }

    /// Appends the marker (control batch) that ends `producer_id`'s transaction on a
    /// partition and notes it in the partition's producer state, under the producer lock
    /// that transactional batches take: the one marker rule of the coordinator's own
    /// partitions and of a replicated partition's replicas. Deterministic for replicas, as
    /// [`Streams::apply_produced`] is.
    ///
    /// # Errors
    /// `MarkerRefused` for a marker of an older coordinator epoch than the producer's
    /// latest here, or of an older producer epoch (nothing appended); the append's storage
    /// error.
    #[allow(clippy::too_many_arguments)]
    pub fn append_marker(
        &self,
        topic: &str,
        partition: u32,
        log: &Arc<Partition>,
        producer_id: i64,
        epoch: i16,
        kind: ControlKind,
        now_ms: i64,
        coordinator_epoch: Option<i32>,
    ) -> Result<Receipt, StreamError> {
        let shared = self.producers.partition(topic, partition);
        let mut state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
        state.forget_expired(producer_id, self.expired_before(now_ms));
        // A marker without an epoch (an earlier build's, forwarded or in a replicated log)
        // is applied as that build applied it: unchecked, with epoch 0, so a replica that
        // applies it again after an upgrade writes the same bytes as one that did before.
        if let Some(coordinator_epoch) = coordinator_epoch {
            state
                .check_marker(producer_id, epoch, coordinator_epoch)
                .map_err(|refusal| StreamError::MarkerRefused {
                    topic: topic.to_string(),
                    partition,
                    producer_id,
                    refusal,
                })?;
        }
        let coordinator_epoch = coordinator_epoch.unwrap_or(0);
        let marker = batch::control_batch(now_ms, producer_id, epoch, kind, coordinator_epoch);
        let mut bytes = BytesMut::from(&marker[..]);
        let receipt = append::append(log, &mut bytes)?;
        state.record_marker(
            producer_id,
            epoch,
            kind,
            receipt.appended().base_offset,
            now_ms,
            coordinator_epoch,
        );
        Ok(receipt)
    }

    /// The clock reading before which a producer's last append makes it expired.
    pub(super) fn expired_before(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.producers.expiry_ms)
    }

    /// The rules every produced batch follows, before any is appended.
    fn check_batches(
        &self,
        headers: &[BatchHeader],
        first: BatchHeader,
    ) -> Result<(), StreamError> {
        if headers.iter().any(|header| header.attributes.is_control()) {
            return Err(StreamError::ControlBatch);
        }
        if headers.len() > 1
            && headers
                .iter()
                .any(|header| header.producer_id != NO_PRODUCER_ID)
        {
            return Err(StreamError::SeveralIdempotentBatches);
        }
        if first.max_timestamp > self.clock.now_ms().saturating_add(TIMESTAMP_AHEAD_MS_MAX) {
            return Err(StreamError::TimestampAhead {
                max_timestamp: first.max_timestamp,
            });
        }
        if first.producer_id == NO_PRODUCER_ID && first.attributes.is_transactional() {
            return Err(StreamError::TransactionalWithoutProducerId);
        }
        Ok(())
    }

    /// Appends one idempotent batch unless it is a retry of a batch already stored, checking
    /// and recording its sequence under the partition's producer lock.
    #[allow(clippy::too_many_arguments)]
    fn append_idempotent(
        &self,
        topic: &str,
        partition: u32,
        log: &Arc<Partition>,
        batches: &mut BytesMut,
        header: BatchHeader,
        now_ms: i64,
        txn_check: TxnCheck,
    ) -> Result<Receipt, StreamError> {
        let first = header.base_sequence;
        let last = last_sequence(&header);
        // The ids this node handed out are its own knowledge (lost with its disk): checked
        // where the produce arrived ([`Streams::check_produced`]), never by a replica.
        if txn_check == TxnCheck::Here && !self.producers.may_be_handed_out(header.producer_id) {
            return Err(StreamError::UnknownProducerId(header.producer_id));
        }
        let shared = self.producers.partition(topic, partition);
        let mut state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
        // Checked under the producer lock, which markers also take: a late transactional
        // batch cannot slip in after its transaction's marker.
        if header.attributes.is_transactional() && txn_check == TxnCheck::Here {
            self.check_membership(topic, partition, &header)?;
        }
        // Expiry by the caller's clock (a replicated partition's command carries the
        // leader's), so every replica forgets the same producers at the same command.
        state.forget_expired(header.producer_id, self.expired_before(now_ms));
        match state.check(header.producer_id, header.producer_epoch, first, last) {
            Verdict::Append => {
                let receipt = append::append(log, batches)?;
                let appended = receipt.appended();
                let metadata = BatchMetadata {
                    first_sequence: first,
                    last_sequence: last,
                    base_offset: appended.base_offset,
                    last_offset: appended.last_offset,
                };
                state.record(header.producer_id, header.producer_epoch, metadata, now_ms);
                if header.attributes.is_transactional() {
                    state.record_transactional(header.producer_id, appended.base_offset);
                }
                Ok(receipt)
            }
            Verdict::Duplicate(original) => Ok(append::stored_earlier(
                log,
                original.base_offset,
                original.last_offset,
            )),
            Verdict::Refuse(refusal) => Err(StreamError::Sequence {
                refusal,
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                first_sequence: first,
                last_sequence: last,
                topic: topic.to_string(),
                partition,
            }),
        }
    }

    fn check_membership(
        &self,
        topic: &str,
        partition: u32,
        header: &BatchHeader,
    ) -> Result<(), StreamError> {
        match self.txn_members.membership(
            header.producer_id,
            header.producer_epoch,
            topic,
            partition,
        ) {
            Membership::Member => Ok(()),
            Membership::Fenced => Err(StreamError::TxnFenced {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
            }),
            Membership::NotAdded => Err(StreamError::NotInTransaction {
                topic: topic.to_string(),
                partition,
                producer_id: header.producer_id,
            }),
        }
    }
}

/// The headers of the batches in a produce's records, up to the first that does not parse
/// (storage reports that one).
/// The largest batch a produce to the topic may carry: its `max.message.bytes`, or the
/// broker default.
fn message_bytes_max(info: &TopicInfo) -> u64 {
    info.overrides
        .iter()
        .find(|entry| entry.key == "max.message.bytes")
        .and_then(|entry| entry.value.parse().ok())
        .unwrap_or(MESSAGE_BYTES_MAX_DEFAULT)
}

/// Most offsets one chunk of [`Streams::append_stored`] spans.
const CHUNK_SPAN: i64 = 1 << 30;

/// The batches of [`Streams::append_stored`] with empty batches in their gaps, cut into
/// chunks of at most [`CHUNK_SPAN`] offsets, so that each fits one segment of fresh 32-bit
/// relative offsets (a compacted range may span billions).
struct StoredCopy {
    /// The offset the next batch must start at.
    expected: i64,
    /// The leader epoch of the batch before (the log's current one at first).
    epoch: i32,
    chunks: Vec<BytesMut>,
    out: BytesMut,
    chunk_start: i64,
}

impl StoredCopy {
    fn new(end: i64, epoch: i32) -> StoredCopy {
        StoredCopy {
            expected: end,
            epoch,
            chunks: Vec::new(),
            out: BytesMut::new(),
            chunk_start: end,
        }
    }

    /// Starts a new chunk if one spanning to `to` would be too long.
    fn room_to(&mut self, from: i64, to: i64) {
        if to - self.chunk_start > CHUNK_SPAN && !self.out.is_empty() {
            self.chunks.push(std::mem::take(&mut self.out));
            self.chunk_start = from;
        }
    }

    /// Empty batches from the expected offset up to `to`, at most
    /// [`crate::storage::COPIED_SPAN_MAX`] offsets each.
    fn fill(&mut self, to: i64) -> Result<(), StreamError> {
        while self.expected < to {
            let upto = to.min(self.expected + i64::from(crate::storage::COPIED_SPAN_MAX));
            self.room_to(self.expected, upto);
            gap_filler(self.expected, upto, self.epoch, &mut self.out)?;
            self.expected = upto;
        }
        Ok(())
    }

    fn push(&mut self, header: &BatchHeader, bytes: &[u8]) {
        self.room_to(header.base_offset, header.next_offset());
        self.out.extend_from_slice(bytes);
        self.expected = header.next_offset();
        self.epoch = header.partition_leader_epoch;
    }

    fn finish(mut self) -> Vec<BytesMut> {
        self.chunks.push(self.out);
        self.chunks.retain(|chunk| !chunk.is_empty());
        self.chunks
    }
}

/// Appends to `out` an empty batch (no records, no producer, uncompressed, no timestamp)
/// spanning offsets `from` to `to` (exclusive, at most [`crate::storage::COPIED_SPAN_MAX`]
/// of them): offsets a compacted range skips, for a log whose segments take no gaps (see
/// [`Streams::append_stored`]). It carries `epoch` (the leader epoch of the batch before the
/// gap, so no epoch seems to start earlier than it did) and no timestamp (-1, Kafka's "no
/// timestamp"), so no lookup by time lands on it.
///
/// # Errors
/// None in practice (an empty batch always encodes); the encoder's error otherwise.
fn gap_filler(from: i64, to: i64, epoch: i32, out: &mut BytesMut) -> Result<(), StreamError> {
    let header = BatchHeader {
        base_offset: from,
        batch_length: 0,
        partition_leader_epoch: epoch,
        magic: 2,
        crc: 0,
        attributes: batch::Attributes::default(),
        last_offset_delta: i32::try_from(to - from - 1)
            .map_err(|_| StreamError::CorruptBatch(format!("a gap of {from}..{to} is too long")))?,
        base_timestamp: -1,
        max_timestamp: -1,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: -1,
        base_sequence: -1,
        record_count: 0,
    };
    let empty = batch::rewrite_records(&header, &[], 0, &[])
        .map_err(|error| StreamError::CorruptBatch(error.to_string()))?;
    out.extend_from_slice(&empty);
    Ok(())
}

/// Whether a batch is one [`gap_filler`] wrote (or a cleaner emptied without a producer):
/// no records, no producer, no control record. A copy may skip one that straddles where
/// it starts: it holds nothing, and the receiving replica fills the offsets itself.
pub(crate) fn is_filler(header: &BatchHeader) -> bool {
    header.record_count == 0
        && header.producer_id == NO_PRODUCER_ID
        && !header.attributes.is_control()
}

fn batch_headers(records: &[u8]) -> Vec<BatchHeader> {
    let mut headers = Vec::new();
    let mut position = 0;
    while let Ok(Some(header)) = batch::parse_header(&records[position..]) {
        headers.push(header);
        position += header.total_bytes();
        if position >= records.len() {
            break;
        }
    }
    headers
}

/// Refuses a batch of a compacted topic that holds a record without a key: the cleaner keeps
/// the latest record per key, so a keyless one could never be superseded (Kafka refuses it
/// with INVALID_RECORD too). Compressed batches are decompressed to look.
fn check_keyed(topic: &str, batches: &[u8]) -> Result<(), StreamError> {
    for decoded in batch::batches(bytes::Bytes::copy_from_slice(batches)) {
        let decoded = decoded.map_err(|error| StreamError::CorruptBatch(error.to_string()))?;
        let records = decoded
            .records_decompressed()
            .map_err(|error| StreamError::CorruptBatch(error.to_string()))?;
        for record in records {
            let record = record.map_err(|error| StreamError::CorruptBatch(error.to_string()))?;
            if record.key.is_none() {
                return Err(StreamError::KeylessRecord {
                    topic: topic.to_string(),
                    offset_delta: record.offset - decoded.header().base_offset,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "produce_tests.rs"]
mod tests;
