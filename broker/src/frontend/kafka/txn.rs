//! Kafka's transaction apis → core calls: AddPartitionsToTxn, AddOffsetsToTxn,
//! TxnOffsetCommit and EndTxn (InitProducerId is in [`super::handlers`]), and the ones that
//! look at transactions and producers: DescribeTransactions, ListTransactions,
//! DescribeProducers. The transaction
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
use super::handlers::text;
use crate::core::{
    Broker, Committed, OffsetEntry, Session, TxnEnd, TxnOffsets, TxnProducer, TxnState,
};

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

/// Kafka's name of a transaction state.
fn state_name(state: TxnState) -> &'static str {
    match state {
        TxnState::Empty => "Empty",
        TxnState::Ongoing => "Ongoing",
        TxnState::PrepareCommit => "PrepareCommit",
        TxnState::PrepareAbort => "PrepareAbort",
        TxnState::CompleteCommit => "CompleteCommit",
        TxnState::CompleteAbort => "CompleteAbort",
    }
}

/// DescribeTransactions: each named transactional id's state; TRANSACTIONAL_ID_NOT_FOUND for
/// an unknown one.
pub async fn describe_transactions(
    broker: &Broker,
    caller: &Session,
    request: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let wanted: Vec<String> = request
        .transactional_ids
        .iter()
        .map(|id| id.0.to_string())
        .collect();
    let found = broker
        .describe_transactions(caller, Some(wanted.clone()))
        .await;
    let states = wanted
        .into_iter()
        .map(|transactional_id| {
            let state = describe_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(text(&transactional_id)));
            let summary = match &found {
                Err(error) => return state.with_error_code(error_code::txn(error)),
                Ok(summaries) => summaries
                    .iter()
                    .find(|summary| summary.transactional_id == transactional_id),
            };
            let Some(summary) = summary else {
                return state.with_error_code(ResponseError::TransactionalIdNotFound.code());
            };
            let mut topics: Vec<describe_transactions_response::TopicData> = Vec::new();
            for (topic, partition) in &summary.partitions {
                let index = i32::try_from(*partition).unwrap_or(i32::MAX);
                match topics.last_mut() {
                    Some(last) if last.topic.0.as_str() == topic => last.partitions.push(index),
                    _ => topics.push(
                        describe_transactions_response::TopicData::default()
                            .with_topic(TopicName(text(topic)))
                            .with_partitions(vec![index]),
                    ),
                }
            }
            state
                .with_transaction_state(text(state_name(summary.state)))
                .with_transaction_timeout_ms(i32::try_from(summary.timeout_ms).unwrap_or(i32::MAX))
                .with_transaction_start_time_ms(if summary.state == TxnState::Ongoing {
                    summary.started_ms
                } else {
                    -1
                })
                .with_producer_id(ProducerId(summary.producer_id))
                .with_producer_epoch(summary.epoch)
                .with_topics(topics)
        })
        .collect();
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

/// ListTransactions, with the state, producer id and (v1) duration filters.
pub async fn list_transactions(
    broker: &Broker,
    caller: &Session,
    request: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    const KNOWN: [&str; 6] = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let states: Vec<String> = request
        .state_filters
        .iter()
        .map(|state| state.to_string())
        .collect();
    let unknown: Vec<_> = request
        .state_filters
        .iter()
        .filter(|state| !KNOWN.contains(&state.as_str()))
        .cloned()
        .collect();
    let summaries = match broker.describe_transactions(caller, None).await {
        Ok(summaries) => summaries,
        Err(error) => {
            return ListTransactionsResponse::default().with_error_code(error_code::txn(&error))
        }
    };
    let listed = summaries
        .into_iter()
        .filter(|summary| {
            states.is_empty()
                || states
                    .iter()
                    .any(|state| state == state_name(summary.state))
        })
        .filter(|summary| {
            request.producer_id_filters.is_empty()
                || request
                    .producer_id_filters
                    .iter()
                    .any(|id| id.0 == summary.producer_id)
        })
        .filter(|summary| {
            version < 1
                || request.duration_filter < 0
                || summary
                    .running_ms
                    .is_some_and(|running| running >= request.duration_filter)
        })
        .map(|summary| {
            list_transactions_response::TransactionState::default()
                .with_transactional_id(TransactionalId(text(&summary.transactional_id)))
                .with_producer_id(ProducerId(summary.producer_id))
                .with_transaction_state(text(state_name(summary.state)))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(listed)
}

/// DescribeProducers: the producers with state on each partition.
pub fn describe_producers(
    broker: &Broker,
    caller: &Session,
    request: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partition_indexes
                .iter()
                .map(|index| {
                    let answer = describe_producers_response::PartitionResponse::default()
                        .with_partition_index(*index);
                    let found = u32::try_from(*index)
                        .map_err(|_| None)
                        .and_then(|partition| {
                            broker
                                .describe_producers(caller, topic.name.0.as_str(), partition)
                                .map_err(Some)
                        });
                    match found {
                        Ok(producers) => answer.with_active_producers(
                            producers
                                .into_iter()
                                .map(|producer| {
                                    describe_producers_response::ProducerState::default()
                                        .with_producer_id(ProducerId(producer.producer_id))
                                        .with_producer_epoch(i32::from(producer.epoch))
                                        .with_last_sequence(producer.last_sequence)
                                        .with_last_timestamp(producer.last_append_ms)
                                        .with_coordinator_epoch(producer.coordinator_epoch)
                                        .with_current_txn_start_offset(
                                            producer.transaction_start_offset.unwrap_or(-1),
                                        )
                                })
                                .collect(),
                        ),
                        Err(error) => {
                            let code = error.as_ref().map_or(
                                ResponseError::UnknownTopicOrPartition.code(),
                                error_code::stream,
                            );
                            answer
                                .with_error_code(code)
                                .with_error_message(error.map(|error| text(&error.to_string())))
                        }
                    }
                })
                .collect();
            describe_producers_response::TopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
