//! The transactional producer's side of a transaction: its state and the coordinator
//! requests (InitProducerId with a transactional id, AddPartitionsToTxn, AddOffsetsToTxn,
//! TxnOffsetCommit, EndTxn).
//!
//! The background task owns one [`Transaction`]; the requests here are plain functions over
//! the client. Every coordinator request is retried with backoff while the answer is
//! retriable (ConcurrentTransactions while a previous transaction completes, a broker
//! restarting, a timeout: each request is safe to repeat), until the deadline.
//!
//! Invariants: a partition gets a transactional batch only after AddPartitionsToTxn for it
//! succeeded in the current transaction; a transaction commits only if every record sent in
//! it was acknowledged.

use std::collections::HashSet;

use tokio::time::Instant;
use wharf_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, EndTxnRequest, EndTxnResponse, InitProducerIdRequest,
    InitProducerIdResponse, OffsetCommitPartition, OffsetCommitTopic, TopicPartitions,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse, TxnResult,
};
use wharf_protocol::{ErrorCode, Request};

use super::sender::PartitionKey;
use super::sequence::ProducerIdentity;
use crate::backoff::{Backoff, Jitter};
use crate::cluster::{Client, FromResponse, Target};
use crate::consumer::ConsumerGroupMetadata;
use crate::error::{Error, Result};
use crate::metadata::TopicPartition;

/// Where the producer is in its transaction life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// `init_transactions` has not succeeded yet.
    Uninitialized,
    /// Between transactions.
    Ready,
    /// After `begin_transaction`, until commit or abort completes.
    Open,
}

/// A transaction command from [`super::Producer`].
#[derive(Debug)]
pub(super) enum TxnCommand {
    Init,
    Begin,
    SendOffsets {
        offsets: Vec<(TopicPartition, i64)>,
        group: ConsumerGroupMetadata,
    },
    End(TxnResult),
}

/// The transactional state the background task owns.
#[derive(Debug)]
pub(super) struct Transaction {
    pub(super) transactional_id: String,
    pub(super) timeout_ms: u32,
    pub(super) phase: Phase,
    /// Partitions added to the open transaction.
    pub(super) partitions: HashSet<PartitionKey>,
    /// Groups added to the open transaction.
    pub(super) groups: HashSet<String>,
    /// The first failure of a record in the open transaction: it can only abort.
    pub(super) failure: Option<Error>,
}

impl Transaction {
    pub(super) fn new(transactional_id: String, timeout_ms: u32) -> Self {
        Transaction {
            transactional_id,
            timeout_ms,
            phase: Phase::Uninitialized,
            partitions: HashSet::new(),
            groups: HashSet::new(),
            failure: None,
        }
    }

    /// Starts a transaction with nothing in it.
    pub(super) fn open(&mut self) {
        self.phase = Phase::Open;
        self.partitions.clear();
        self.groups.clear();
        self.failure = None;
    }

    /// True if the broker knows of the open transaction (something was added to it); an
    /// empty transaction ends without a request (the broker would answer InvalidTxnState).
    pub(super) fn is_registered(&self) -> bool {
        !self.partitions.is_empty() || !self.groups.is_empty()
    }

    /// Notes a failed record of the open transaction (the first failure is kept).
    pub(super) fn note_failure(&mut self, error: &Error) {
        if self.phase == Phase::Open && self.failure.is_none() {
            self.failure = Some(error.clone());
        }
    }
}

/// Retries a coordinator request with backoff until it succeeds, fails for good, or
/// `deadline` passes. A request timeout is retried too: every coordinator request is safe to
/// repeat (a repeated EndTxn of a completed transaction answers 0).
pub(super) async fn call_with_retries<T: FromResponse>(
    client: &Client,
    request: Request,
    deadline: Instant,
) -> Result<T> {
    let backoff = Backoff::new(
        client.config().retry_backoff_base,
        client.config().retry_backoff_max,
    );
    let mut jitter = Jitter::from_entropy();
    let mut attempt = 0u32;
    loop {
        let error = match client.call::<T>(Target::Coordinator, request.clone()).await {
            Ok(response) => return Ok(response),
            Err(error) => error,
        };
        let retriable = error.is_retriable() || matches!(error, Error::Timeout { .. });
        let retry_at = Instant::now() + backoff.delay(attempt, jitter.fraction());
        if !retriable || retry_at >= deadline {
            return Err(error);
        }
        attempt = attempt.saturating_add(1);
        tokio::time::sleep_until(retry_at).await;
    }
}

/// InitProducerId with the transactional id: fences earlier producers of the id, completes
/// or aborts their transaction, and hands out the id and a new epoch.
pub(super) async fn init(
    client: &Client,
    txn: &Transaction,
    deadline: Instant,
) -> Result<ProducerIdentity> {
    let request = Request::InitProducerId(InitProducerIdRequest {
        transactional_id: Some(txn.transactional_id.clone()),
        transaction_timeout_ms: txn.timeout_ms,
    });
    let response: InitProducerIdResponse = call_with_retries(client, request, deadline).await?;
    if response.producer_id < 0 || response.producer_epoch < 0 {
        return Err(Error::server(
            ErrorCode::Unknown,
            Some(format!(
                "broker handed out producer id {} epoch {}",
                response.producer_id, response.producer_epoch
            )),
        ));
    }
    Ok(ProducerIdentity {
        producer_id: response.producer_id,
        epoch: response.producer_epoch,
    })
}

/// AddPartitionsToTxn for one partition.
pub(super) async fn add_partition(
    client: &Client,
    txn: &Transaction,
    identity: ProducerIdentity,
    key: &PartitionKey,
    deadline: Instant,
) -> Result<()> {
    let request = Request::AddPartitionsToTxn(AddPartitionsToTxnRequest {
        transactional_id: txn.transactional_id.clone(),
        producer_id: identity.producer_id,
        producer_epoch: identity.epoch,
        topics: vec![TopicPartitions {
            topic: key.0.clone(),
            partitions: vec![key.1],
        }],
    });
    call_with_retries::<AddPartitionsToTxnResponse>(client, request, deadline)
        .await
        .map(drop)
}

/// AddOffsetsToTxn (unless the group is already in the transaction), then TxnOffsetCommit.
pub(super) async fn send_offsets(
    client: &Client,
    txn: &Transaction,
    identity: ProducerIdentity,
    offsets: &[(TopicPartition, i64)],
    group: &ConsumerGroupMetadata,
    deadline: Instant,
) -> Result<()> {
    if !txn.groups.contains(&group.group_id) {
        let request = Request::AddOffsetsToTxn(AddOffsetsToTxnRequest {
            transactional_id: txn.transactional_id.clone(),
            producer_id: identity.producer_id,
            producer_epoch: identity.epoch,
            group_id: group.group_id.clone(),
        });
        call_with_retries::<AddOffsetsToTxnResponse>(client, request, deadline).await?;
    }
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for (partition, offset) in offsets {
        let entry = OffsetCommitPartition {
            partition: partition.partition,
            offset: *offset,
            metadata: None,
        };
        match topics
            .iter_mut()
            .find(|topic| topic.name == partition.topic)
        {
            Some(topic) => topic.partitions.push(entry),
            None => topics.push(OffsetCommitTopic {
                name: partition.topic.clone(),
                partitions: vec![entry],
            }),
        }
    }
    let request = Request::TxnOffsetCommit(TxnOffsetCommitRequest {
        transactional_id: txn.transactional_id.clone(),
        group_id: group.group_id.clone(),
        producer_id: identity.producer_id,
        producer_epoch: identity.epoch,
        member_id: group.member_id.clone(),
        generation: group.generation,
        topics,
    });
    call_with_retries::<TxnOffsetCommitResponse>(client, request, deadline)
        .await
        .map(drop)
}

/// EndTxn with `result`.
pub(super) async fn end(
    client: &Client,
    txn: &Transaction,
    identity: ProducerIdentity,
    result: TxnResult,
    deadline: Instant,
) -> Result<()> {
    let request = Request::EndTxn(EndTxnRequest {
        transactional_id: txn.transactional_id.clone(),
        producer_id: identity.producer_id,
        producer_epoch: identity.epoch,
        result,
    });
    call_with_retries::<EndTxnResponse>(client, request, deadline)
        .await
        .map(drop)
}

/// The typed error for a coordinator failure: ProducerFenced becomes
/// [`Error::ProducerFenced`] with the identity that was fenced.
pub(super) fn typed(error: Error, identity: ProducerIdentity) -> Error {
    match error.code() {
        Some(ErrorCode::ProducerFenced) => Error::ProducerFenced {
            producer_id: identity.producer_id,
            producer_epoch: identity.epoch,
        },
        _ => error,
    }
}
