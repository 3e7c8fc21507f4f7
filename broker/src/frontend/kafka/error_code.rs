//! The one place the Kafka front end turns domain errors into Kafka error codes, chosen as
//! Kafka chooses them so that clients retry, reset or fail as they were written to.

use kafka_protocol::ResponseError;

use crate::core::{
    AclError, CommitError, Denied, EntryRefusal, GroupError, ResourceType, SequenceRefusal,
    StorageError, StreamError, TopicError, TxnError,
};

/// A refusal by ACLs: Kafka's authorization code of the resource's type.
pub fn denied(denied: &Denied) -> i16 {
    let kind = match denied.resource_type {
        ResourceType::Topic => ResponseError::TopicAuthorizationFailed,
        ResourceType::Group => ResponseError::GroupAuthorizationFailed,
        ResourceType::TransactionalId => ResponseError::TransactionalIdAuthorizationFailed,
        // Queues and exchanges are not reached through Kafka; the cluster code is the
        // nearest should they ever be.
        ResourceType::Cluster | ResourceType::Queue | ResourceType::Exchange => {
            ResponseError::ClusterAuthorizationFailed
        }
    };
    kind.code()
}

/// An ACL change that failed: a malformed ACL is INVALID_REQUEST, a failed write
/// KAFKA_STORAGE_ERROR.
pub fn acl(error: &AclError) -> i16 {
    match error {
        AclError::Invalid(_) => ResponseError::InvalidRequest.code(),
        AclError::Storage(_) => ResponseError::KafkaStorageError.code(),
        AclError::Unauthorized(refused) => denied(refused),
        AclError::Cluster {
            no_leader: true, ..
        } => ResponseError::NotController.code(),
        AclError::Cluster { .. } => ResponseError::RequestTimedOut.code(),
    }
}

/// The Kafka code of a storage error.
pub fn storage(error: &StorageError) -> i16 {
    let kind = match error {
        StorageError::InvalidBatch(_) => ResponseError::CorruptMessage,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::Corrupt { .. } | StorageError::Failed { .. } => {
            ResponseError::KafkaStorageError
        }
        // Retriable: the client tries again (and finds the broker back after a restart).
        StorageError::Closed { .. } => ResponseError::NotLeaderOrFollower,
        // Retriable: the write did not commit through its replicated log (yet).
        StorageError::TimedOut { .. } | StorageError::NotReplicated { .. } => {
            ResponseError::RequestTimedOut
        }
        StorageError::InvalidName { .. } => ResponseError::InvalidTopicException,
        StorageError::AlreadyExists { .. } => ResponseError::TopicAlreadyExists,
        error if error.is_disk_full() => ResponseError::KafkaStorageError,
        // NotContinuous: a replica's copy only, never a client's request.
        StorageError::Io { .. }
        | StorageError::Config { .. }
        | StorageError::Locked { .. }
        | StorageError::NotContinuous { .. } => ResponseError::UnknownServerError,
    };
    kind.code()
}

/// The Kafka code of a storage error behind a coordinator's write (an offset commit, a
/// transaction's state): a write the replicated coordinator log did not take means this
/// node no longer coordinates, NOT_COORDINATOR, so the client looks the coordinator up
/// again (Kafka answers a coordinator log append that fails so too).
pub fn coordinator_storage(error: &StorageError) -> i16 {
    match error {
        StorageError::NotReplicated { .. } => ResponseError::NotCoordinator.code(),
        other => storage(other),
    }
}

/// The Kafka code of a topic catalog error.
pub fn topic(error: &TopicError) -> i16 {
    let kind = match error {
        TopicError::InvalidName { .. } => ResponseError::InvalidTopicException,
        TopicError::InvalidPartitions { .. } | TopicError::PartitionsNotIncreased { .. } => {
            ResponseError::InvalidPartitions
        }
        TopicError::InvalidConfig(_) => ResponseError::InvalidConfig,
        TopicError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        TopicError::Unknown(_) => ResponseError::UnknownTopicOrPartition,
        TopicError::Storage(error) => return storage(error),
    };
    kind.code()
}

/// The Kafka code of a stream error.
pub fn stream(error: &StreamError) -> i16 {
    let kind = match error {
        // Kafka refuses produce to internal topics with this code.
        StreamError::InternalTopic(_) => ResponseError::InvalidTopicException,
        // Kafka answers UNKNOWN_TOPIC_OR_PARTITION when it will not auto-create.
        StreamError::AutoCreateDisabled(_)
        | StreamError::UnknownTopic(_)
        | StreamError::UnknownPartition { .. }
        | StreamError::PartitionOutOfRange { .. } => ResponseError::UnknownTopicOrPartition,
        StreamError::ControlBatch | StreamError::TransactionalWithoutProducerId => {
            ResponseError::InvalidRecord
        }
        StreamError::SeveralIdempotentBatches => ResponseError::InvalidRequest,
        StreamError::TimestampAhead { .. } => ResponseError::InvalidTimestamp,
        StreamError::CorruptBatch(_) => ResponseError::CorruptMessage,
        StreamError::KeylessRecord { .. } => ResponseError::InvalidRecord,
        StreamError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        StreamError::RecordListTooLarge { .. } => ResponseError::RecordListTooLarge,
        StreamError::UnknownProducerId(_) => ResponseError::UnknownProducerId,
        StreamError::TxnFenced { .. } => ResponseError::InvalidProducerEpoch,
        StreamError::MarkerRefused { .. } => ResponseError::TransactionCoordinatorFenced,
        StreamError::NotInTransaction { .. } => ResponseError::InvalidTxnState,
        StreamError::Sequence { refusal, .. } => sequence(*refusal),
        StreamError::TxnUnverified(_) => ResponseError::NotEnoughReplicas,
        StreamError::TimedOut { .. } => ResponseError::RequestTimedOut,
        StreamError::Topic(error) => return topic(error),
        StreamError::Storage(error) => return storage(error),
        StreamError::TopicUnavailable(error) => return stream(error),
        StreamError::Internal(_) => ResponseError::UnknownServerError,
        StreamError::Unauthorized(refused) => return denied(refused),
        // No leader: nothing changed, and clients retry (as when Kafka's controller moves).
        StreamError::Cluster {
            no_leader: true, ..
        } => ResponseError::NotController,
        StreamError::Cluster { .. } => ResponseError::RequestTimedOut,
        StreamError::NotLeader { .. } => ResponseError::NotLeaderOrFollower,
        StreamError::InvalidReplicationFactor { .. } => ResponseError::InvalidReplicationFactor,
        StreamError::FencedLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        StreamError::UnknownLeaderEpoch { .. } => ResponseError::UnknownLeaderEpoch,
    };
    kind.code()
}

fn sequence(refusal: SequenceRefusal) -> ResponseError {
    match refusal {
        SequenceRefusal::UnknownProducer => ResponseError::UnknownProducerId,
        SequenceRefusal::Fenced => ResponseError::InvalidProducerEpoch,
        SequenceRefusal::OutOfOrder => ResponseError::OutOfOrderSequenceNumber,
    }
}

/// The Kafka code of a group error.
pub fn group(error: &GroupError) -> i16 {
    let kind = match error {
        GroupError::InvalidGroupId(_) => ResponseError::InvalidGroupId,
        GroupError::InvalidRequest(_) => ResponseError::InvalidRequest,
        GroupError::UnknownMember(_) => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration(_) => ResponseError::IllegalGeneration,
        GroupError::GroupNotFound(_) => ResponseError::GroupIdNotFound,
        GroupError::RebalanceInProgress(_) => ResponseError::RebalanceInProgress,
        GroupError::InconsistentProtocol(_) => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout(_) => ResponseError::InvalidSessionTimeout,
        GroupError::NotEmpty { .. } => ResponseError::NonEmptyGroup,
        GroupError::Unauthorized(refused) => return denied(refused),
        GroupError::NotCoordinator { .. } => ResponseError::NotCoordinator,
    };
    kind.code()
}

/// The Kafka code of one refused offset.
pub fn entry(refusal: &EntryRefusal) -> i16 {
    let kind = match refusal {
        EntryRefusal::UnknownTopicOrPartition { .. } => ResponseError::UnknownTopicOrPartition,
        EntryRefusal::NegativeOffset { .. } => ResponseError::InvalidRequest,
        EntryRefusal::MetadataTooLarge { .. } => ResponseError::OffsetMetadataTooLarge,
        EntryRefusal::Unauthorized(refused) => return denied(refused),
    };
    kind.code()
}

/// The Kafka code of a failed commit.
pub fn commit(error: &CommitError) -> i16 {
    match error {
        CommitError::Group(error) => group(error),
        CommitError::Storage(error) => coordinator_storage(error),
    }
}

/// The Kafka code of a transaction error.
pub fn txn(error: &TxnError) -> i16 {
    let kind = match error {
        TxnError::InvalidRequest(_) => ResponseError::InvalidRequest,
        TxnError::ProducerIdMismatch(_) => ResponseError::InvalidProducerIdMapping,
        TxnError::ProducerFenced(_) => ResponseError::ProducerFenced,
        TxnError::InvalidState(_) => ResponseError::InvalidTxnState,
        TxnError::Concurrent(_) => ResponseError::ConcurrentTransactions,
        TxnError::InternalTopic(_) => ResponseError::InvalidTopicException,
        TxnError::UnknownPartition { .. } => ResponseError::UnknownTopicOrPartition,
        TxnError::InvalidGroupId => ResponseError::InvalidGroupId,
        TxnError::Group(error) => return group(error),
        TxnError::Offset(refusal) => return entry(refusal),
        TxnError::Storage(error) => return coordinator_storage(error),
        TxnError::NotRunning => ResponseError::CoordinatorNotAvailable,
        TxnError::Internal(_) => ResponseError::UnknownServerError,
        TxnError::Unauthorized(refused) => return denied(refused),
        TxnError::NotCoordinator { .. } => ResponseError::NotCoordinator,
    };
    kind.code()
}

/// The Kafka code of a failed login, as Kafka's SASL authenticator answers.
pub fn auth(error: &crate::core::AuthError) -> ResponseError {
    use crate::core::AuthError;
    match error {
        AuthError::UnsupportedMechanism(_) => ResponseError::UnsupportedSaslMechanism,
        AuthError::IllegalState(_) => ResponseError::IllegalSaslState,
        // Kafka answers every other failure (bad proof, malformed message, throttled) with
        // SASL_AUTHENTICATION_FAILED, which clients report as an authentication failure.
        AuthError::BadCredentials
        | AuthError::Malformed(_)
        | AuthError::TooManyFailures { .. }
        | AuthError::ConnectionLimit { .. }
        | AuthError::Storage(_) => ResponseError::SaslAuthenticationFailed,
    }
}

/// The Kafka code of a refused user change (AlterUserScramCredentials).
pub fn user(error: &crate::core::UserError) -> ResponseError {
    use crate::core::UserError;
    match error {
        UserError::NotFound { .. } => ResponseError::ResourceNotFound,
        UserError::AlreadyExists { .. } => ResponseError::DuplicateResource,
        UserError::InvalidName { .. } | UserError::InvalidCredential { .. } => {
            ResponseError::UnacceptableCredential
        }
        UserError::TooMany { .. } => ResponseError::PolicyViolation,
        UserError::Locked { .. } | UserError::Storage(_) => ResponseError::KafkaStorageError,
        UserError::Unauthorized(_) => ResponseError::ClusterAuthorizationFailed,
        UserError::Cluster {
            no_leader: true, ..
        } => ResponseError::NotController,
        UserError::Cluster { .. } => ResponseError::RequestTimedOut,
    }
}

/// The error a response answers with, for the request metrics: its top-level error code if
/// set, else the first partition's, topic's or resource's that is set (one walk over the
/// response's entries, never its records); 0 when everything succeeded. A response with
/// entries that failed in different ways reports the first.
pub fn first_error(response: &kafka_protocol::messages::ResponseKind) -> i16 {
    use kafka_protocol::messages::ResponseKind as R;
    /// The first non-zero code of `codes`, else 0.
    fn first(codes: impl IntoIterator<Item = i16>) -> i16 {
        codes.into_iter().find(|code| *code != 0).unwrap_or(0)
    }
    match response {
        R::Produce(r) => first(
            r.responses
                .iter()
                .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)),
        ),
        R::Fetch(r) => first(
            std::iter::once(r.error_code).chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            ),
        ),
        R::ListOffsets(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        R::Metadata(r) => first(
            std::iter::once(r.error_code).chain(r.topics.iter().flat_map(|t| {
                std::iter::once(t.error_code).chain(t.partitions.iter().map(|p| p.error_code))
            })),
        ),
        R::CreateTopics(r) => first(r.topics.iter().map(|t| t.error_code)),
        R::DeleteTopics(r) => first(r.responses.iter().map(|t| t.error_code)),
        R::FindCoordinator(r) => {
            first(std::iter::once(r.error_code).chain(r.coordinators.iter().map(|c| c.error_code)))
        }
        R::JoinGroup(r) => r.error_code,
        R::SyncGroup(r) => r.error_code,
        R::Heartbeat(r) => r.error_code,
        R::LeaveGroup(r) => r.error_code,
        R::ListGroups(r) => r.error_code,
        R::DescribeGroups(r) => first(r.groups.iter().map(|g| g.error_code)),
        R::DeleteGroups(r) => first(r.results.iter().map(|g| g.error_code)),
        R::OffsetCommit(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        R::OffsetFetch(r) => first(
            std::iter::once(r.error_code)
                .chain(
                    r.topics
                        .iter()
                        .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
                )
                .chain(r.groups.iter().flat_map(|g| {
                    std::iter::once(g.error_code).chain(
                        g.topics
                            .iter()
                            .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
                    )
                })),
        ),
        R::OffsetDelete(r) => first(
            std::iter::once(r.error_code).chain(
                r.topics
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            ),
        ),
        R::ConsumerGroupHeartbeat(r) => r.error_code,
        R::ConsumerGroupDescribe(r) => first(r.groups.iter().map(|g| g.error_code)),
        R::InitProducerId(r) => r.error_code,
        R::AddPartitionsToTxn(r) => first(
            std::iter::once(r.error_code)
                .chain(r.results_by_topic_v3_and_below.iter().flat_map(|t| {
                    t.results_by_partition
                        .iter()
                        .map(|p| p.partition_error_code)
                }))
                .chain(r.results_by_transaction.iter().flat_map(|x| {
                    x.topic_results.iter().flat_map(|t| {
                        t.results_by_partition
                            .iter()
                            .map(|p| p.partition_error_code)
                    })
                })),
        ),
        R::AddOffsetsToTxn(r) => r.error_code,
        R::TxnOffsetCommit(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        R::EndTxn(r) => r.error_code,
        R::DescribeTransactions(r) => first(r.transaction_states.iter().map(|t| t.error_code)),
        R::ListTransactions(r) => r.error_code,
        R::DescribeProducers(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        R::DescribeConfigs(r) => first(r.results.iter().map(|c| c.error_code)),
        R::AlterConfigs(r) => first(r.responses.iter().map(|c| c.error_code)),
        R::IncrementalAlterConfigs(r) => first(r.responses.iter().map(|c| c.error_code)),
        R::CreatePartitions(r) => first(r.results.iter().map(|t| t.error_code)),
        R::DeleteRecords(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        R::OffsetForLeaderEpoch(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        R::DescribeCluster(r) => r.error_code,
        R::ApiVersions(r) => r.error_code,
        R::SaslHandshake(r) => r.error_code,
        R::SaslAuthenticate(r) => r.error_code,
        R::CreateAcls(r) => first(r.results.iter().map(|a| a.error_code)),
        R::DescribeAcls(r) => r.error_code,
        R::DeleteAcls(r) => first(r.filter_results.iter().flat_map(|f| {
            std::iter::once(f.error_code).chain(f.matching_acls.iter().map(|a| a.error_code))
        })),
        R::AlterUserScramCredentials(r) => first(r.results.iter().map(|u| u.error_code)),
        R::DescribeUserScramCredentials(r) => {
            first(std::iter::once(r.error_code).chain(r.results.iter().map(|u| u.error_code)))
        }
        // An api Wharf does not serve has no response of its own.
        _ => 0,
    }
}

/// The metrics' error slot of a Kafka error code ([`crate::metrics::ERROR_CODE_SLOTS`]):
/// UNKNOWN_SERVER_ERROR (-1) in slot 0 (NONE, 0, is never an error), the others at their
/// code; `None` for success.
pub fn metrics_slot(code: i16) -> Option<u16> {
    match code {
        0 => None,
        -1 => Some(0),
        code => Some(u16::try_from(code).unwrap_or(u16::MAX)),
    }
}

/// The Kafka error code of a metrics slot ([`metrics_slot`] backwards).
pub fn code_of_metrics_slot(slot: u16) -> i16 {
    if slot == 0 {
        -1
    } else {
        i16::try_from(slot).unwrap_or(i16::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_get_the_authorization_code_of_their_resource_type() {
        let refused = |resource_type| Denied {
            principal: "User:bob".to_string(),
            operation: crate::core::Operation::Read,
            resource_type,
            name: "x".to_string(),
        };
        assert_eq!(
            denied(&refused(ResourceType::Topic)),
            29,
            "TOPIC_AUTHORIZATION_FAILED"
        );
        assert_eq!(
            denied(&refused(ResourceType::Group)),
            30,
            "GROUP_AUTHORIZATION_FAILED"
        );
        assert_eq!(
            denied(&refused(ResourceType::Cluster)),
            31,
            "CLUSTER_AUTHORIZATION_FAILED"
        );
        assert_eq!(
            denied(&refused(ResourceType::TransactionalId)),
            53,
            "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"
        );
        assert_eq!(
            stream(&StreamError::Unauthorized(refused(ResourceType::Topic))),
            29
        );
    }

    #[test]
    fn produce_errors_get_the_codes_kafka_clients_act_on() {
        assert_eq!(
            stream(&StreamError::UnknownTopic("t".to_string())),
            3,
            "UNKNOWN_TOPIC_OR_PARTITION"
        );
        assert_eq!(
            stream(&StreamError::NotLeader {
                topic: "t".to_string(),
                partition: 0,
                leader: Some(2),
            }),
            6,
            "NOT_LEADER_OR_FOLLOWER: clients refresh metadata and go to the leader"
        );
        assert_eq!(
            stream(&StreamError::Sequence {
                refusal: SequenceRefusal::OutOfOrder,
                producer_id: 1,
                epoch: 0,
                first_sequence: 5,
                last_sequence: 5,
                topic: "t".to_string(),
                partition: 0,
            }),
            45,
            "OUT_OF_ORDER_SEQUENCE_NUMBER"
        );
        assert_eq!(
            stream(&StreamError::TxnFenced {
                producer_id: 1,
                epoch: 0
            }),
            47,
            "INVALID_PRODUCER_EPOCH"
        );
        assert_eq!(
            topic(&TopicError::AlreadyExists("t".to_string())),
            36,
            "TOPIC_ALREADY_EXISTS"
        );
    }

    #[test]
    fn first_error_finds_a_partitions_code_and_slots_round_trip() {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        use kafka_protocol::messages::{ProduceResponse, ResponseKind};
        let partition = |code: i16| PartitionProduceResponse::default().with_error_code(code);
        let response = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default().with_partition_responses(vec![
                partition(0),
                partition(3),
                partition(6),
            ]),
        ]));
        assert_eq!(first_error(&response), 3);
        let fine = ResponseKind::Produce(ProduceResponse::default());
        assert_eq!(first_error(&fine), 0);
        assert_eq!(metrics_slot(0), None);
        for code in [-1i16, 1, 3, 35, 127] {
            let slot = metrics_slot(code).expect("an error");
            assert_eq!(code_of_metrics_slot(slot), code);
        }
    }
}
