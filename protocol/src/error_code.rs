//! Wire error codes. Every response carries one at the top and, where it has per-topic or
//! per-partition results, one per result.
//!
//! Codes are `#[repr(u16)]`, listed in docs/PROTOCOL.md, and never renumbered or reused: a
//! retired code stays retired.

crate::wire_enum! {
    /// A typed error in a response. `None` means success.
    #[derive(Default)]
    pub enum ErrorCode: u16 {
        /// Success.
        #[default]
        None = 0,
        /// The broker hit an unexpected internal error; the message says what.
        Unknown = 1,
        /// The request could not be decoded or breaks a rule of its api.
        InvalidRequest = 2,
        /// The api key is not known to this broker.
        UnknownApiKey = 3,
        /// The api version is outside the range the broker supports.
        UnsupportedVersion = 4,
        /// The topic or partition does not exist.
        UnknownTopicOrPartition = 5,
        /// The topic already exists.
        TopicAlreadyExists = 6,
        /// The topic name breaks the naming rules.
        InvalidTopicName = 7,
        /// The partition count is outside the allowed range.
        InvalidPartitions = 8,
        /// A record batch is malformed (length, magic, CRC, counts).
        CorruptRecordBatch = 9,
        /// The requested offset is outside the log.
        OffsetOutOfRange = 10,
        /// The request did not complete within its timeout.
        RequestTimedOut = 11,
        /// The partition's storage failed (for example an fsync error); it refuses writes.
        StorageFailed = 12,
        /// The disk is full; nothing was written.
        DiskFull = 13,
        /// Stored data failed a checksum; the range is refused.
        CorruptStoredData = 14,
        /// The message or batch exceeds a size limit.
        MessageTooLarge = 15,
        /// The group member is not known (it left, timed out or never joined).
        UnknownMemberId = 16,
        /// The generation is stale: the member was fenced by a newer one.
        IllegalGeneration = 17,
        /// The group does not exist.
        GroupIdNotFound = 18,
        /// The group id is invalid (empty).
        InvalidGroupId = 19,
        /// The broker is shutting down.
        ShuttingDown = 20,
        /// A configuration key or value is invalid.
        InvalidConfig = 21,
        /// The topic was not found and auto-creation is disabled.
        TopicAutoCreateDisabled = 22,
        /// An acks value other than -1, 0 or 1.
        InvalidRequiredAcks = 23,
        /// An idempotent batch's sequence does not follow the producer's last one: a batch
        /// before it was lost. Nothing was appended.
        OutOfOrderSequence = 24,
        /// A newer producer with the same id (a higher epoch) exists: this one is a zombie.
        ProducerFenced = 25,
        /// The broker has no state for this producer id (it expired): get a new id.
        UnknownProducerId = 26,
        /// The request does not fit the transaction's state (for example EndTxn with no
        /// transaction, or a transaction the broker already aborted on timeout).
        InvalidTxnState = 27,
        /// The transaction is being committed or aborted; retry shortly.
        ConcurrentTransactions = 28,
        /// The producer id does not belong to this transactional id.
        InvalidProducerIdMapping = 29,
        /// The exchange does not exist.
        UnknownExchange = 30,
        /// The queue does not exist.
        UnknownQueue = 31,
        /// A declare's arguments differ from the existing exchange's or queue's.
        PreconditionFailed = 32,
        /// A mandatory message matched no queue; it was not stored.
        Unroutable = 33,
        /// The queue is full and rejects publishes.
        QueueFull = 34,
        /// The delivery tag is unknown or already settled.
        UnknownDeliveryTag = 35,
        /// A delivery stayed unacknowledged past the queue's ack timeout: it went back to
        /// the queue and the consumer was cancelled.
        AckTimeout = 36,
        /// The group has active members; the operation needs it empty (Kafka's
        /// GROUP_NOT_EMPTY).
        GroupNotEmpty = 37,
        /// Authentication is required on this listener and the connection has not logged in
        /// (SaslHandshake, SaslAuthenticate; issue #18).
        AuthenticationRequired = 38,
        /// The login failed: unknown user, wrong password or proof, malformed SASL message,
        /// or too many failed logins from this address (the message says which).
        AuthenticationFailed = 39,
        /// The SASL mechanism is not offered (or not over this transport: PLAIN needs TLS).
        UnsupportedSaslMechanism = 40,
        /// A SASL request out of order (SaslAuthenticate before SaslHandshake, after the end).
        IllegalSaslState = 41,
        /// The user does not exist.
        UnknownUser = 42,
        /// A user of that name already exists.
        UserAlreadyExists = 43,
        /// A user name or credential outside the accepted bounds.
        InvalidCredential = 44,
        /// An ACL or ACL filter that is malformed or means nothing (issue #18).
        InvalidAcl = 45,
        /// The caller's principal may not do this to the resource (ACLs, issue #18).
        Unauthorized = 46,
        /// The cluster's metadata log has no leader this node can reach (an election, or a
        /// node cut off from a majority); nothing changed (issue #20).
        NoClusterLeader = 47,
        /// A cluster membership change was refused (a node of another cluster, a node that
        /// is not a member, a change already under way).
        MembershipRefused = 48,
        /// Another node of the cluster leads the partition: refresh metadata and send there
        /// (issue #20).
        NotLeaderOrFollower = 49,
        /// Another node of the cluster coordinates groups and transactions: refresh
        /// metadata and send to the lowest node id it lists (issue #20).
        NotCoordinator = 50,
    }
}

impl ErrorCode {
    /// True for `ErrorCode::None`.
    pub fn is_ok(self) -> bool {
        self == ErrorCode::None
    }

    /// True if retrying the same request later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::RequestTimedOut
                | ErrorCode::ShuttingDown
                | ErrorCode::DiskFull
                | ErrorCode::ConcurrentTransactions
                | ErrorCode::NoClusterLeader
                | ErrorCode::NotLeaderOrFollower
                | ErrorCode::NotCoordinator
        )
    }

    /// A short lowercase description.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::None => "ok",
            ErrorCode::Unknown => "unknown server error",
            ErrorCode::InvalidRequest => "invalid request",
            ErrorCode::UnknownApiKey => "unknown api key",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::UnknownTopicOrPartition => "unknown topic or partition",
            ErrorCode::TopicAlreadyExists => "topic already exists",
            ErrorCode::InvalidTopicName => "invalid topic name",
            ErrorCode::InvalidPartitions => "invalid partition count",
            ErrorCode::CorruptRecordBatch => "corrupt record batch",
            ErrorCode::OffsetOutOfRange => "offset out of range",
            ErrorCode::RequestTimedOut => "request timed out",
            ErrorCode::StorageFailed => "storage failed",
            ErrorCode::DiskFull => "disk full",
            ErrorCode::CorruptStoredData => "corrupt stored data",
            ErrorCode::MessageTooLarge => "message too large",
            ErrorCode::UnknownMemberId => "unknown member id",
            ErrorCode::IllegalGeneration => "stale generation: member was fenced",
            ErrorCode::GroupIdNotFound => "group not found",
            ErrorCode::InvalidGroupId => "invalid group id",
            ErrorCode::ShuttingDown => "broker is shutting down",
            ErrorCode::InvalidConfig => "invalid config",
            ErrorCode::TopicAutoCreateDisabled => "unknown topic and auto-create is disabled",
            ErrorCode::InvalidRequiredAcks => "invalid acks",
            ErrorCode::OutOfOrderSequence => "out of order sequence number",
            ErrorCode::ProducerFenced => "producer fenced by a newer epoch",
            ErrorCode::UnknownProducerId => "unknown producer id",
            ErrorCode::InvalidTxnState => "invalid transaction state",
            ErrorCode::ConcurrentTransactions => "transaction is completing; retry",
            ErrorCode::InvalidProducerIdMapping => {
                "producer id does not match the transactional id"
            }
            ErrorCode::UnknownExchange => "unknown exchange",
            ErrorCode::UnknownQueue => "unknown queue",
            ErrorCode::PreconditionFailed => "declared with different arguments",
            ErrorCode::Unroutable => "unroutable mandatory message",
            ErrorCode::QueueFull => "queue is full",
            ErrorCode::UnknownDeliveryTag => "unknown or already settled delivery tag",
            ErrorCode::AckTimeout => "delivery not acknowledged within the ack timeout",
            ErrorCode::GroupNotEmpty => "the group has active members",
            ErrorCode::AuthenticationRequired => "authentication required",
            ErrorCode::AuthenticationFailed => "authentication failed",
            ErrorCode::UnsupportedSaslMechanism => "unsupported sasl mechanism",
            ErrorCode::IllegalSaslState => "sasl request out of order",
            ErrorCode::UnknownUser => "unknown user",
            ErrorCode::UserAlreadyExists => "user already exists",
            ErrorCode::InvalidCredential => "invalid user name or credential",
            ErrorCode::InvalidAcl => "invalid ACL",
            ErrorCode::Unauthorized => "not authorized",
            ErrorCode::NoClusterLeader => "no cluster leader",
            ErrorCode::MembershipRefused => "membership change refused",
            ErrorCode::NotLeaderOrFollower => "another node leads the partition",
            ErrorCode::NotCoordinator => "another node coordinates groups and transactions",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.describe())
    }
}
