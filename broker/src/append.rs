//! The append path: the one way anything in the broker writes to a partition log.
//!
//! Produced record batches, transaction markers, committed offsets, the transaction log and
//! the queue stores' message and ack logs all append here and wait for durability here. It
//! is the seam where replication (an append answered only once a quorum has it), quotas
//! (bytes appended per principal) and metrics (append and fsync latency) will sit, so none
//! of them needs to find every caller.
//!
//! Today it is a thin layer over [`Partition::append`] and the partition's durability
//! watch; the storage engine owns the writer lock, offset patching and group commit.
//!
//! **Architecture invariant:** outside `storage`, only this module calls
//! `Partition::append` (or `append_without_fsync`), `Partition::wait_durable` or
//! `Partition::wait_durable_blocking`
//! (`broker/tests/architecture.rs` checks it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::metrics;
use crate::storage::{Appended, Error, FlushPolicy, Partition, Result};

/// Where an append landed, and the handle to wait for its durability.
#[derive(Debug, Clone)]
pub struct Receipt {
    log: Arc<Partition>,
    appended: Appended,
}

/// Appends whole record batches to `log` with one write (see [`Partition::append`]: every
/// batch is validated and its base offset patched in `batches`).
///
/// # Errors
/// The storage error of the append; nothing is appended then.
pub fn append(log: &Arc<Partition>, batches: &mut [u8]) -> Result<Receipt> {
    append_with(log, batches, Partition::append)
}

/// Appends whole batches another replica of the partition stored (a follower catching up,
/// issue #21): like [`append`], but each batch keeps the partition leader epoch it carries
/// (see [`Partition::append_keeping_epochs`]).
///
/// # Errors
/// The storage error of the append; nothing is appended then.
pub fn append_keeping_epochs(log: &Arc<Partition>, batches: &mut [u8]) -> Result<Receipt> {
    append_with(log, batches, Partition::append_keeping_epochs)
}

fn append_with(
    log: &Arc<Partition>,
    batches: &mut [u8],
    append: impl FnOnce(&Arc<Partition>, &mut [u8]) -> Result<Appended>,
) -> Result<Receipt> {
    let started = Instant::now();
    let byte_count = batches.len() as u64;
    let outcome = append(log, batches);
    metrics::STORAGE
        .append_seconds
        .observe_duration(started.elapsed());
    let appended = counted(log, outcome, byte_count)?;
    Ok(Receipt {
        log: log.clone(),
        appended,
    })
}

impl Receipt {
    /// Offsets of the first and last record appended, and the next one.
    pub fn appended(&self) -> Appended {
        self.appended
    }

    /// The log appended to.
    pub fn log(&self) -> &Arc<Partition> {
        &self.log
    }

    /// Resolves once the append is as durable as the log's flush policy promises: fsynced
    /// under `flush = always` (the group commit of the flusher threads), at once otherwise.
    /// This is what an acks=all answer or a publisher confirm waits for.
    ///
    /// # Errors
    /// The future fails with `Error::Failed` if the log failed (an fsync error) before the
    /// append was covered, or `Error::Closed` if it closed.
    pub fn durable(&self) -> impl Future<Output = Result<()>> + Send + 'static {
        self.log.wait_durable(self.appended.next_offset)
    }

    /// Blocking form of [`Receipt::durable`], for callers on the blocking pool.
    ///
    /// # Errors
    /// `Error::Failed` if the log failed, `Error::TimedOut` after `timeout`.
    pub fn durable_blocking(&self, timeout: Duration) -> Result<()> {
        self.log
            .wait_durable_blocking(self.appended.next_offset, timeout)
    }

    /// Resolves once the append is fsynced, whatever the log's flush policy: for records
    /// that others depend on even where the policy accepts losing data (a transaction
    /// marker must not vanish after its transaction is logged complete). Under
    /// `flush = always` this waits for the group commit; otherwise it fsyncs the log on the
    /// blocking pool.
    ///
    /// # Errors
    /// The storage error of the fsync; `Error::Closed` if the blocking pool is gone.
    pub async fn synced(&self) -> Result<()> {
        if self.log.config().flush == FlushPolicy::Always {
            return self.durable().await;
        }
        let flushing = self.log.clone();
        let dir = self.log.dir().to_path_buf();
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .unwrap_or(Err(crate::storage::Error::Closed { partition: dir }))
    }
}

/// The wait for one [`RecordLog`] append.
pub type LogAppend = Pin<Box<dyn Future<Output = Result<Appended>> + Send>>;
/// The wait for [`RecordLog::confirm_writer`].
pub type WriterCheck = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Where a coordinator's records go: committed offsets and the transaction log. On a lone
/// node that is a log of this node ([`LocalLog`]); in a cluster it is the replicated
/// `__consumer_offsets` partition, written by the node that leads it (`core/coordination.rs`),
/// so the state survives the loss of any minority of nodes.
pub trait RecordLog: Send + Sync + std::fmt::Debug {
    /// Appends whole built batches and resolves once they are durable (fsynced here, or
    /// committed by a majority of the log's replicas), with where they landed.
    ///
    /// # Errors
    /// The storage error of the append; `Error::NotReplicated` when a replicated log did
    /// not take the write (this node no longer leads it, or the commit timed out).
    fn write_batches(&self, batches: BytesMut) -> LogAppend;

    /// Whether this node still is the log's one writer: a replicated log's leader
    /// confirmed by a majority just now (a coordinator checks it before an effect outside
    /// the log, such as a transaction marker, that a deposed one must not have); a log of
    /// this node always is.
    fn confirm_writer(&self) -> WriterCheck {
        Box::pin(async { true })
    }
}

/// A [`RecordLog`] on this node: [`append`], then [`Receipt::durable`].
#[derive(Debug, Clone)]
pub struct LocalLog(pub Arc<Partition>);

impl RecordLog for LocalLog {
    fn write_batches(&self, mut batches: BytesMut) -> LogAppend {
        let log = self.0.clone();
        Box::pin(async move {
            let receipt = append(&log, &mut batches)?;
            receipt.durable().await?;
            Ok(receipt.appended())
        })
    }
}

/// Appends like [`append`], but without asking for an fsync of its own: the records are in
/// the page cache at once (they survive a process crash) and become durable with the log's
/// next fsync, which some other append, a flush or a close asks for. For bookkeeping that
/// must not cost an fsync per write (the queue's delivery counts). Never wait for such a
/// receipt's durability.
///
/// # Errors
/// The storage error of the append; nothing is appended then.
pub fn append_without_fsync(log: &Arc<Partition>, batches: &mut [u8]) -> Result<Appended> {
    log.append_without_fsync(batches)
}

/// The receipt of records appended earlier (`base_offset..=last_offset`), for a retried
/// idempotent batch answered with its original offsets: waiting on it waits for the
/// original's durability.
pub fn stored_earlier(log: &Arc<Partition>, base_offset: i64, last_offset: i64) -> Receipt {
    Receipt {
        log: log.clone(),
        appended: Appended {
            base_offset,
            last_offset,
            next_offset: last_offset + 1,
        },
    }
}

/// Waits until everything below `next_offset` in `log` is durable (see
/// [`Receipt::durable`]), for callers that kept only the offsets of their append.
///
/// # Errors
/// As for [`Receipt::durable`].
pub fn durable(
    log: &Partition,
    next_offset: i64,
) -> impl Future<Output = Result<()>> + Send + 'static {
    log.wait_durable(next_offset)
}

/// Blocking form of [`durable`].
///
/// # Errors
/// `Error::Failed` if the log failed, `Error::TimedOut` after `timeout`.
pub fn durable_blocking(log: &Partition, next_offset: i64, timeout: Duration) -> Result<()> {
    log.wait_durable_blocking(next_offset, timeout)
}

/// Counts an append's outcome: records and bytes in on success (one add per append, from the
/// offsets it was given, never by walking records), and whether the disk was full.
fn counted(log: &Partition, outcome: Result<Appended>, byte_count: u64) -> Result<Appended> {
    match &outcome {
        Ok(appended) => {
            let record_count = appended.next_offset.saturating_sub(appended.base_offset);
            log.traffic()
                .count_in(u64::try_from(record_count).unwrap_or(0), byte_count);
            metrics::HEALTH.set_disk_full(false);
        }
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC) => {
            metrics::HEALTH.set_disk_full(true);
        }
        Err(_) => {}
    }
    outcome
}
