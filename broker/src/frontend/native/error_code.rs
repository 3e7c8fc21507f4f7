//! The one place the native front end turns domain errors into wire [`ErrorCode`]s.
//! Codes are listed in docs/PROTOCOL.md and never renumbered or reused.

use wharf_protocol::ErrorCode;

use crate::core::{
    CommitError, EntryRefusal, GroupAdminError, GroupError, QueueError, SequenceRefusal,
    StorageError, StreamError, TopicError, TxnError,
};

/// The wire code of a storage error.
pub fn storage(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::InvalidBatch(_) => ErrorCode::CorruptRecordBatch,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::Corrupt { .. } => ErrorCode::CorruptStoredData,
        StorageError::Failed { .. } => ErrorCode::StorageFailed,
        StorageError::Closed { .. } => ErrorCode::ShuttingDown,
        StorageError::TimedOut { .. } | StorageError::NotReplicated { .. } => {
            ErrorCode::RequestTimedOut
        }
        StorageError::InvalidName { .. } => ErrorCode::InvalidTopicName,
        StorageError::AlreadyExists { .. } => ErrorCode::TopicAlreadyExists,
        error if error.is_disk_full() => ErrorCode::DiskFull,
        // NotContinuous: a replica's copy only, never a client's request.
        StorageError::Io { .. }
        | StorageError::Config { .. }
        | StorageError::Locked { .. }
        | StorageError::NotContinuous { .. } => ErrorCode::Unknown,
    }
}

/// The wire code of a storage error behind a coordinator's write: NotCoordinator when the
/// replicated coordinator log did not take it (the client goes on to the next node).
pub fn coordinator_storage(error: &StorageError) -> ErrorCode {
    match error {
        StorageError::NotReplicated { .. } => ErrorCode::NotCoordinator,
        other => storage(other),
    }
}

/// The wire code of a cluster operation's error (issue #20).
pub fn cluster(error: &crate::core::cluster_ops::ClusterOpError) -> ErrorCode {
    use crate::core::cluster_ops::ClusterOpError;
    match error {
        ClusterOpError::Unauthorized(_) => ErrorCode::Unauthorized,
        ClusterOpError::Starting => ErrorCode::NoClusterLeader,
        ClusterOpError::Cluster(error) => cluster_error(error),
    }
}

/// The wire code of a definition the metadata log did not take (issue #20).
fn definition(no_leader: bool) -> ErrorCode {
    if no_leader {
        ErrorCode::NoClusterLeader
    } else {
        ErrorCode::RequestTimedOut
    }
}

/// The wire code of the metadata log's error (issue #20).
pub fn cluster_error(error: &crate::core::cluster_ops::ClusterError) -> ErrorCode {
    use crate::core::cluster_ops::ClusterError;
    match error {
        ClusterError::NoLeader => ErrorCode::NoClusterLeader,
        // The outcome is unknown: the change may still be made.
        ClusterError::Unavailable { .. } | ClusterError::TimedOut(_) => ErrorCode::RequestTimedOut,
        ClusterError::TooLarge { .. } => ErrorCode::InvalidRequest,
        ClusterError::Membership(_) => ErrorCode::MembershipRefused,
        ClusterError::Stopped(_) => ErrorCode::ShuttingDown,
    }
}

/// The wire code of a topic catalog error.
pub fn topic(error: &TopicError) -> ErrorCode {
    match error {
        TopicError::InvalidName { .. } => ErrorCode::InvalidTopicName,
        TopicError::InvalidPartitions { .. } | TopicError::PartitionsNotIncreased { .. } => {
            ErrorCode::InvalidPartitions
        }
        TopicError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        TopicError::AlreadyExists(_) => ErrorCode::TopicAlreadyExists,
        TopicError::Unknown(_) => ErrorCode::UnknownTopicOrPartition,
        TopicError::Storage(error) => storage(error),
    }
}

/// The wire code of a stream error.
pub fn stream(error: &StreamError) -> ErrorCode {
    match error {
        StreamError::InternalTopic(_) => ErrorCode::InvalidTopicName,
        StreamError::AutoCreateDisabled(_) => ErrorCode::TopicAutoCreateDisabled,
        StreamError::UnknownTopic(_)
        | StreamError::UnknownPartition { .. }
        | StreamError::PartitionOutOfRange { .. } => ErrorCode::UnknownTopicOrPartition,
        StreamError::ControlBatch
        | StreamError::SeveralIdempotentBatches
        | StreamError::TimestampAhead { .. }
        | StreamError::TransactionalWithoutProducerId
        | StreamError::KeylessRecord { .. } => ErrorCode::InvalidRequest,
        StreamError::CorruptBatch(_) => ErrorCode::CorruptRecordBatch,
        StreamError::MessageTooLarge { .. } | StreamError::RecordListTooLarge { .. } => {
            ErrorCode::MessageTooLarge
        }
        StreamError::UnknownProducerId(_) => ErrorCode::InvalidProducerIdMapping,
        StreamError::TxnFenced { .. } => ErrorCode::ProducerFenced,
        StreamError::MarkerRefused { .. } => ErrorCode::ProducerFenced,
        StreamError::NotInTransaction { .. } => ErrorCode::InvalidTxnState,
        StreamError::Sequence { refusal, .. } => sequence(*refusal),
        StreamError::TxnUnverified(_) => ErrorCode::RequestTimedOut,
        StreamError::TimedOut { .. } => ErrorCode::RequestTimedOut,
        StreamError::Topic(error) => topic(error),
        StreamError::Storage(error) => storage(error),
        StreamError::TopicUnavailable(error) => stream(error),
        StreamError::Internal(_) => ErrorCode::Unknown,
        StreamError::Unauthorized(_) => ErrorCode::Unauthorized,
        StreamError::Cluster { no_leader, .. } => definition(*no_leader),
        StreamError::InvalidReplicationFactor { .. } => ErrorCode::InvalidConfig,
        // Only Kafka's requests carry leader epochs; a stale view either way is the
        // client's to refresh.
        StreamError::NotLeader { .. }
        | StreamError::FencedLeaderEpoch { .. }
        | StreamError::UnknownLeaderEpoch { .. } => ErrorCode::NotLeaderOrFollower,
    }
}

fn sequence(refusal: SequenceRefusal) -> ErrorCode {
    match refusal {
        SequenceRefusal::UnknownProducer => ErrorCode::UnknownProducerId,
        SequenceRefusal::Fenced => ErrorCode::ProducerFenced,
        SequenceRefusal::OutOfOrder => ErrorCode::OutOfOrderSequence,
    }
}

/// The wire code of a group error.
pub fn group(error: &GroupError) -> ErrorCode {
    match error {
        GroupError::InvalidGroupId(_) => ErrorCode::InvalidGroupId,
        GroupError::InvalidRequest(_) => ErrorCode::InvalidRequest,
        GroupError::UnknownMember(_) => ErrorCode::UnknownMemberId,
        GroupError::IllegalGeneration(_) => ErrorCode::IllegalGeneration,
        GroupError::GroupNotFound(_) => ErrorCode::GroupIdNotFound,
        // The classic protocol's refusals (a Kafka group id in use by Kafka clients).
        GroupError::RebalanceInProgress(_)
        | GroupError::InconsistentProtocol(_)
        | GroupError::InvalidSessionTimeout(_) => ErrorCode::InvalidRequest,
        GroupError::NotEmpty { .. } => ErrorCode::GroupNotEmpty,
        GroupError::Unauthorized(_) => ErrorCode::Unauthorized,
        GroupError::NotCoordinator { .. } => ErrorCode::NotCoordinator,
    }
}

/// The wire code of a failed group reset or delete.
pub fn group_admin(error: &GroupAdminError) -> ErrorCode {
    match error {
        GroupAdminError::Group(error) => group(error),
        GroupAdminError::Stream(error) => stream(error),
        GroupAdminError::Storage(error) => coordinator_storage(error),
    }
}

/// The wire code of one refused offset.
pub fn entry(refusal: &EntryRefusal) -> ErrorCode {
    match refusal {
        EntryRefusal::UnknownTopicOrPartition { .. } => ErrorCode::UnknownTopicOrPartition,
        EntryRefusal::NegativeOffset { .. } | EntryRefusal::MetadataTooLarge { .. } => {
            ErrorCode::InvalidRequest
        }
        EntryRefusal::Unauthorized(_) => ErrorCode::Unauthorized,
    }
}

/// The wire code of a failed commit.
pub fn commit(error: &CommitError) -> ErrorCode {
    match error {
        CommitError::Group(error) => group(error),
        CommitError::Storage(error) => coordinator_storage(error),
    }
}

/// The wire code of a transaction error.
pub fn txn(error: &TxnError) -> ErrorCode {
    match error {
        TxnError::InvalidRequest(_) => ErrorCode::InvalidRequest,
        TxnError::ProducerIdMismatch(_) => ErrorCode::InvalidProducerIdMapping,
        TxnError::ProducerFenced(_) => ErrorCode::ProducerFenced,
        TxnError::InvalidState(_) => ErrorCode::InvalidTxnState,
        TxnError::Concurrent(_) => ErrorCode::ConcurrentTransactions,
        TxnError::InternalTopic(_) => ErrorCode::InvalidTopicName,
        TxnError::UnknownPartition { .. } => ErrorCode::UnknownTopicOrPartition,
        TxnError::NotCoordinator { .. } => ErrorCode::NotCoordinator,
        TxnError::InvalidGroupId => ErrorCode::InvalidGroupId,
        TxnError::Group(error) => group(error),
        TxnError::Offset(refusal) => entry(refusal),
        TxnError::Storage(error) => coordinator_storage(error),
        TxnError::NotRunning => ErrorCode::ShuttingDown,
        TxnError::Internal(_) => ErrorCode::Unknown,
        TxnError::Unauthorized(_) => ErrorCode::Unauthorized,
    }
}

/// The wire code of a queue-layer error.
pub fn queue(error: &QueueError) -> ErrorCode {
    match error {
        QueueError::UnknownExchange(_) => ErrorCode::UnknownExchange,
        QueueError::UnknownQueue(_) | QueueError::Gone(_) => ErrorCode::UnknownQueue,
        QueueError::DeclareMismatch(_)
        | QueueError::ExchangeDiffers { .. }
        | QueueError::Precondition { .. } => ErrorCode::PreconditionFailed,
        QueueError::Invalid(_) => ErrorCode::InvalidRequest,
        QueueError::QueueFull { .. } => ErrorCode::QueueFull,
        QueueError::UnknownDeliveryTag(_) => ErrorCode::UnknownDeliveryTag,
        QueueError::Storage(_) => ErrorCode::StorageFailed,
        QueueError::Unauthorized(_) => ErrorCode::Unauthorized,
        QueueError::Cluster { no_leader, .. } => definition(*no_leader),
    }
}

/// The wire code of a failed login.
pub fn auth(error: &crate::core::AuthError) -> ErrorCode {
    use crate::core::AuthError;
    match error {
        AuthError::UnsupportedMechanism(_) => ErrorCode::UnsupportedSaslMechanism,
        AuthError::IllegalState(_) => ErrorCode::IllegalSaslState,
        AuthError::BadCredentials
        | AuthError::Malformed(_)
        | AuthError::TooManyFailures { .. }
        | AuthError::ConnectionLimit { .. } => ErrorCode::AuthenticationFailed,
        AuthError::Storage(_) => ErrorCode::Unknown,
    }
}

/// An ACL change that failed: a malformed ACL is InvalidAcl, a failed write StorageFailed.
pub fn acl(error: &crate::core::AclError) -> ErrorCode {
    match error {
        crate::core::AclError::Invalid(_) => ErrorCode::InvalidAcl,
        crate::core::AclError::Storage(_) => ErrorCode::StorageFailed,
        crate::core::AclError::Unauthorized(_) => ErrorCode::Unauthorized,
        crate::core::AclError::Cluster { no_leader, .. } => definition(*no_leader),
    }
}

/// The wire code of a refused user change.
pub fn user(error: &crate::core::UserError) -> ErrorCode {
    use crate::core::UserError;
    match error {
        UserError::NotFound { .. } => ErrorCode::UnknownUser,
        UserError::AlreadyExists { .. } => ErrorCode::UserAlreadyExists,
        UserError::InvalidName { .. }
        | UserError::InvalidCredential { .. }
        | UserError::TooMany { .. } => ErrorCode::InvalidCredential,
        UserError::Locked { .. } => ErrorCode::Unknown,
        UserError::Storage(error) => storage(error),
        UserError::Unauthorized(_) => ErrorCode::Unauthorized,
        UserError::Cluster { no_leader, .. } => definition(*no_leader),
    }
}

/// The error a response answers with, for the request metrics: its top-level error if set,
/// else the first error of its topics, partitions or messages (one walk over the response's
/// entries, never its records); `ErrorCode::None` when everything succeeded.
pub fn first_error(response: &wharf_protocol::Response) -> ErrorCode {
    use wharf_protocol::Response as R;
    fn first(codes: impl IntoIterator<Item = ErrorCode>) -> ErrorCode {
        codes
            .into_iter()
            .find(|code| !code.is_ok())
            .unwrap_or(ErrorCode::None)
    }
    let top = response.error();
    if !top.is_ok() {
        return top;
    }
    match response {
        R::Metadata(r) => first(
            r.topics
                .iter()
                .flat_map(|t| std::iter::once(t.error).chain(t.partitions.iter().map(|p| p.error))),
        ),
        R::CreateTopics(r) => first(r.topics.iter().map(|t| t.error)),
        R::DeleteTopics(r) => first(r.topics.iter().map(|t| t.error)),
        R::Produce(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error)),
        ),
        R::Fetch(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error)),
        ),
        R::ListOffsets(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error)),
        ),
        R::OffsetCommit(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error)),
        ),
        R::PublishBatch(r) => first(r.results.iter().map(|p| p.error)),
        _ => ErrorCode::None,
    }
}

#[cfg(test)]
mod tests {
    use wharf_protocol::messages::{CreateTopicsResponse, TopicResult};
    use wharf_protocol::Response;

    use super::*;

    #[test]
    fn first_error_is_the_top_level_one_else_the_first_entrys() {
        let result = |error| TopicResult {
            error,
            ..TopicResult::default()
        };
        let mut created = CreateTopicsResponse {
            topics: vec![
                result(ErrorCode::None),
                result(ErrorCode::TopicAlreadyExists),
            ],
            ..CreateTopicsResponse::default()
        };
        let response = Response::CreateTopics(created.clone());
        assert_eq!(first_error(&response), ErrorCode::TopicAlreadyExists);
        created.error = ErrorCode::ShuttingDown;
        assert_eq!(
            first_error(&Response::CreateTopics(created)),
            ErrorCode::ShuttingDown
        );
        let fine = Response::CreateTopics(CreateTopicsResponse::default());
        assert_eq!(first_error(&fine), ErrorCode::None);
    }
}
