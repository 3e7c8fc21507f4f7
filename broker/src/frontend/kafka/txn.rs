//! Kafka's transaction apis → core calls: AddPartitionsToTxn, AddOffsetsToTxn,
//! TxnOffsetCommit and EndTxn (InitProducerId is in [`super::handlers`]). The transaction
//! coordinator is the core's, shared with the native protocol: a transactional id is the
//! same transaction from either protocol.

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;

use super::error_code;
use crate::core::{Broker, Committed, OffsetEntry, Session, TxnEnd, TxnOffsets, TxnProducer};

fn producer(
    transactional_id: &TransactionalId,
    producer_id: ProducerId,
    epoch: i16,
) -> TxnProducer {
    TxnProducer {
        transactional_id: transactional_id.0.to_string(),
        producer_id: producer_id.0,
        epoch,
    }
}

/// AddPartitionsToTxn (v0–v3: one transaction per request): every partition gets the
/// outcome of the whole request, as the coordinator decides it at once.
pub async fn add_partitions_to_txn(
    broker: &Broker,
    caller: &Session,
    request: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let txn_producer = producer(
        &request.v3_and_below_transactional_id,
        request.v3_and_below_producer_id,
        request.v3_and_below_producer_epoch,
    );
    let mut partitions = Vec::new();
    let mut negative = false;
    for topic in &request.v3_and_below_topics {
        let indexes: Vec<u32> = topic
            .partitions
            .iter()
            .filter_map(|index| u32::try_from(*index).ok())
            .collect();
        negative |= indexes.len() != topic.partitions.len();
        partitions.push((topic.name.0.to_string(), indexes));
    }
    let code = if negative {
        ResponseError::UnknownTopicOrPartition.code()
    } else {
        match broker
            .add_partitions_to_txn(caller, txn_producer, partitions)
            .await
        {
            Ok(()) => 0,
            Err(error) => error_code::txn(&error),
        }
    };
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
        request
            .v3_and_below_topics
            .into_iter()
            .map(|topic| {
                AddPartitionsToTxnTopicResult::default()
                    .with_results_by_partition(
                        topic
                            .partitions
                            .iter()
                            .map(|index| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(*index)
                                    .with_partition_error_code(code)
                            })
                            .collect(),
                    )
                    .with_name(topic.name)
            })
            .collect(),
    )
}

/// AddOffsetsToTxn.
pub async fn add_offsets_to_txn(
    broker: &Broker,
    caller: &Session,
    request: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let txn_producer = producer(
        &request.transactional_id,
        request.producer_id,
        request.producer_epoch,
    );
    match broker
        .add_offsets_to_txn(caller, txn_producer, request.group_id.0.to_string())
        .await
    {
        Ok(()) => AddOffsetsToTxnResponse::default(),
        Err(error) => AddOffsetsToTxnResponse::default().with_error_code(error_code::txn(&error)),
    }
}

/// TxnOffsetCommit: the offsets become visible when the transaction commits; every
/// partition gets the outcome of the whole request.
pub async fn txn_offset_commit(
    broker: &Broker,
    caller: &Session,
    request: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let txn_producer = producer(
        &request.transactional_id,
        request.producer_id,
        request.producer_epoch,
    );
    let mut entries = Vec::new();
    let mut negative = false;
    for topic in &request.topics {
        for partition in &topic.partitions {
            match u32::try_from(partition.partition_index) {
                Ok(index) => entries.push(OffsetEntry {
                    topic: topic.name.0.to_string(),
                    partition: index,
                    committed: Committed {
                        offset: partition.committed_offset,
                        metadata: partition
                            .committed_metadata
                            .as_ref()
                            .map(|text| text.to_string()),
                    },
                }),
                Err(_) => negative = true,
            }
        }
    }
    let code = if negative {
        ResponseError::UnknownTopicOrPartition.code()
    } else {
        let offsets = TxnOffsets {
            producer: txn_producer,
            group_id: request.group_id.0.to_string(),
            member_id: request.member_id.to_string(),
            generation: request.generation_id,
            entries,
        };
        match broker.txn_offset_commit(caller, offsets).await {
            Ok(()) => 0,
            Err(error) => error_code::txn(&error),
        }
    };
    TxnOffsetCommitResponse::default().with_topics(
        request
            .topics
            .into_iter()
            .map(|topic| {
                TxnOffsetCommitResponseTopic::default()
                    .with_partitions(
                        topic
                            .partitions
                            .iter()
                            .map(|partition| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(partition.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
                    .with_name(topic.name)
            })
            .collect(),
    )
}

/// EndTxn: commit or abort; answered once the markers are durable.
pub async fn end_txn(broker: &Broker, caller: &Session, request: EndTxnRequest) -> EndTxnResponse {
    let txn_producer = producer(
        &request.transactional_id,
        request.producer_id,
        request.producer_epoch,
    );
    let end = if request.committed {
        TxnEnd::Commit
    } else {
        TxnEnd::Abort
    };
    match broker.end_txn(caller, txn_producer, end).await {
        Ok(()) => EndTxnResponse::default(),
        Err(error) => EndTxnResponse::default().with_error_code(error_code::txn(&error)),
    }
}
