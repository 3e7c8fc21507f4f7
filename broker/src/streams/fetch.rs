//! The fetch rules: whole raw batches (never decoded) from each asked partition within a
//! byte budget, bounded by the last stable offset under read-committed isolation, and a
//! long poll until enough bytes arrive or the wait ends.
//!
//! Budget rule: each partition reads at most its own limit and what is left of the fetch's
//! total; only the first partition that returns data may exceed the budget (by one batch, so
//! a consumer always makes progress); a later one that does not fit returns nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use wharf_protocol::batch;

use crate::storage::Partition;
use crate::streams::producer::AbortedTxn;
use crate::streams::{StreamError, Streams};

/// Longest a fetch may wait for data, whatever the client asks.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;
/// Largest fetch response, whatever the client asks (fits one frame).
pub const FETCH_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Which records a fetch may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Everything up to the high watermark.
    #[default]
    ReadUncommitted,
    /// Only decided transactions: up to the last stable offset, with aborted ranges listed.
    ReadCommitted,
}

/// One partition a fetch asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionQuery {
    /// The partition.
    pub partition: u32,
    /// First offset wanted.
    pub fetch_offset: i64,
    /// Most bytes from this partition.
    pub partition_max_bytes: u32,
    /// The leader epoch the client takes the partition's leader to have (Kafka Fetch v9+'s
    /// `current_leader_epoch`): another one is fenced (`FencedLeaderEpoch`,
    /// `UnknownLeaderEpoch`); -1 is not checked.
    pub current_leader_epoch: i32,
}

/// The partitions of one topic a fetch asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicQuery {
    /// The topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: Vec<PartitionQuery>,
}

/// A fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchQuery {
    /// Longest wait for `min_bytes` (clamped to [`FETCH_WAIT_MS_MAX`]).
    pub max_wait_ms: u32,
    /// Bytes that end the wait.
    pub min_bytes: u32,
    /// Most bytes in all (clamped to [`FETCH_BYTES_MAX`]).
    pub max_bytes: u32,
    /// What may be seen.
    pub isolation: Isolation,
    /// What to read.
    pub topics: Vec<TopicQuery>,
}

/// What one partition returned.
#[derive(Debug)]
pub struct FetchedPartition {
    /// The partition.
    pub partition: u32,
    /// The error, if the partition could not be read.
    pub error: Option<StreamError>,
    /// High watermark (-1 when unknown).
    pub high_watermark: i64,
    /// Last stable offset (-1 when unknown).
    pub last_stable_offset: i64,
    /// Log start offset (-1 when unknown).
    pub log_start_offset: i64,
    /// Aborted transactions in the range read (read-committed only).
    pub aborted: Vec<AbortedTxn>,
    /// Whole raw batches.
    pub records: Bytes,
}

/// What one topic returned.
#[derive(Debug)]
pub struct FetchedTopic {
    /// The topic.
    pub topic: String,
    /// Its partitions, in query order.
    pub partitions: Vec<FetchedPartition>,
}

impl FetchedPartition {
    /// The answer to a partition that is not read: `error`, no records.
    pub fn failed(partition: u32, error: StreamError) -> FetchedPartition {
        FetchedPartition {
            partition,
            error: Some(error),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            aborted: Vec::new(),
            records: Bytes::new(),
        }
    }
}

struct FetchSlot {
    log: Option<Arc<Partition>>,
    /// New data means a high watermark above this.
    wait_offset: i64,
}

struct FetchRound {
    topics: Vec<FetchedTopic>,
    slots: Vec<FetchSlot>,
    total_bytes: usize,
    any_error: bool,
}

impl Streams {
    /// Reads what `query` asks for, waiting up to its `max_wait_ms` for `min_bytes`.
    pub async fn fetch(&self, query: &FetchQuery) -> Vec<FetchedTopic> {
        let max_wait = Duration::from_millis(u64::from(query.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
        let deadline = Instant::now() + max_wait;
        let max_bytes = query.max_bytes.clamp(1, FETCH_BYTES_MAX) as usize;
        loop {
            let round = self.fetch_once(query, max_bytes);
            if round.total_bytes >= query.min_bytes as usize
                || round.any_error
                || Instant::now() >= deadline
            {
                return round.topics;
            }
            // Long poll: sleep until any fetched partition gets new data or the deadline.
            let waits: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = round
                .slots
                .iter()
                .filter_map(|slot| slot.log.as_ref().map(|log| (log, slot.wait_offset)))
                .map(|(log, offset)| {
                    let wait = log.wait_for_data(offset);
                    Box::pin(async move {
                        let _ = wait.await;
                    }) as Pin<Box<dyn Future<Output = ()> + Send>>
                })
                .collect();
            if waits.is_empty()
                || tokio::time::timeout_at(deadline, AnyOf(waits))
                    .await
                    .is_err()
            {
                return self.fetch_once(query, max_bytes).topics;
            }
        }
    }

    fn fetch_once(&self, query: &FetchQuery, max_bytes: usize) -> FetchRound {
        let mut round = FetchRound {
            topics: Vec::with_capacity(query.topics.len()),
            slots: Vec::new(),
            total_bytes: 0,
            any_error: false,
        };
        let mut remaining = max_bytes;
        for topic in &query.topics {
            let mut partitions = Vec::with_capacity(topic.partitions.len());
            for wanted in &topic.partitions {
                let log = self.topics.partition(&topic.topic, wanted.partition);
                let (answer, wait_offset) = match &log {
                    None => (unknown(&topic.topic, wanted.partition), wanted.fetch_offset),
                    Some(log) => self.read_partition(
                        &topic.topic,
                        log,
                        wanted,
                        query.isolation,
                        &mut remaining,
                        &mut round.total_bytes,
                    ),
                };
                round.any_error |= answer.error.is_some();
                round.slots.push(FetchSlot { log, wait_offset });
                partitions.push(answer);
            }
            round.topics.push(FetchedTopic {
                topic: topic.topic.clone(),
                partitions,
            });
        }
        round
    }

    /// Reads one partition within the budget; returns the answer and the offset a long poll
    /// waits past.
    fn read_partition(
        &self,
        topic: &str,
        log: &Arc<Partition>,
        wanted: &PartitionQuery,
        isolation: Isolation,
        remaining: &mut usize,
        total: &mut usize,
    ) -> (FetchedPartition, i64) {
        let high_watermark = log.high_watermark();
        let mut answer = FetchedPartition {
            partition: wanted.partition,
            error: None,
            high_watermark,
            last_stable_offset: high_watermark,
            log_start_offset: log.log_start_offset(),
            aborted: Vec::new(),
            records: Bytes::new(),
        };
        // A long poll waits for data beyond what this read could see.
        let wait_offset = wanted.fetch_offset.max(high_watermark);
        let mut end_offset = high_watermark;
        if isolation == Isolation::ReadCommitted {
            // Only decided transactions are visible, and the client skips the aborted ones.
            let shared = self.producers.partition(topic, wanted.partition);
            let state = shared.lock().unwrap_or_else(|poison| poison.into_inner());
            end_offset = state.last_stable_offset(high_watermark);
            answer.aborted = state.aborted_between(wanted.fetch_offset, end_offset);
        }
        answer.last_stable_offset = end_offset;
        if *remaining == 0 {
            return (answer, wait_offset);
        }
        let limit = (wanted.partition_max_bytes as usize).min(*remaining).max(1);
        match log.read_bounded(wanted.fetch_offset, limit, end_offset) {
            // Only the first non-empty partition may exceed the limit (by one batch, so
            // consumers make progress); later ones must fit.
            Ok(read) if *total > 0 && read.bytes.len() > *remaining => *remaining = 0,
            Ok(read) => {
                answer.high_watermark = read.high_watermark;
                answer.log_start_offset = read.log_start_offset;
                *remaining = remaining.saturating_sub(read.bytes.len());
                *total += read.bytes.len();
                log.traffic()
                    .count_out(record_count(&read.bytes), read.bytes.len() as u64);
                answer.records = read.bytes;
            }
            Err(error) => answer.error = Some(error.into()),
        }
        (answer, wait_offset)
    }
}

/// Records in whole batches, from their headers' record counts: one header read per batch,
/// never a record decoded (the metrics' records out).
fn record_count(bytes: &[u8]) -> u64 {
    let mut count = 0u64;
    let mut position = 0usize;
    while let Some(rest) = bytes.get(position..) {
        let Ok(Some(header)) = batch::parse_header(rest) else {
            break;
        };
        count += u64::try_from(header.record_count).unwrap_or(0);
        let Ok(batch_bytes) = usize::try_from(header.batch_length) else {
            break;
        };
        position += batch::LOG_OVERHEAD_BYTES + batch_bytes;
    }
    count
}

fn unknown(topic: &str, partition: u32) -> FetchedPartition {
    FetchedPartition {
        partition,
        error: Some(StreamError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        }),
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
        aborted: Vec::new(),
        records: Bytes::new(),
    }
}

/// Resolves when any of its futures resolves.
struct AnyOf(Vec<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Future for AnyOf {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        for future in self.0.iter_mut() {
            if future.as_mut().poll(context).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
