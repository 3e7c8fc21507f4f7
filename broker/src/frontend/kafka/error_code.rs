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
        StorageError::TimedOut { .. } => ResponseError::RequestTimedOut,
        StorageError::InvalidName { .. } => ResponseError::InvalidTopicException,
        StorageError::AlreadyExists { .. } => ResponseError::TopicAlreadyExists,
        error if error.is_disk_full() => ResponseError::KafkaStorageError,
        StorageError::Io { .. } | StorageError::Config { .. } | StorageError::Locked { .. } => {
            ResponseError::UnknownServerError
        }
    };
    kind.code()
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
        StreamError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
        StreamError::UnknownProducerId(_) => ResponseError::UnknownProducerId,
        StreamError::TxnFenced { .. } => ResponseError::InvalidProducerEpoch,
        StreamError::NotInTransaction { .. } => ResponseError::InvalidTxnState,
        StreamError::Sequence { refusal, .. } => sequence(*refusal),
        StreamError::TimedOut { .. } => ResponseError::RequestTimedOut,
        StreamError::Topic(error) => return topic(error),
        StreamError::Storage(error) => return storage(error),
        StreamError::TopicUnavailable(error) => return stream(error),
        StreamError::Internal(_) => ResponseError::UnknownServerError,
        StreamError::Unauthorized(refused) => return denied(refused),
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
        CommitError::Storage(error) => storage(error),
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
        TxnError::Storage(error) => return storage(error),
        TxnError::NotRunning => ResponseError::CoordinatorNotAvailable,
        TxnError::Internal(_) => ResponseError::UnknownServerError,
        TxnError::Unauthorized(refused) => return denied(refused),
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
}
