//! Api keys, supported versions, and the `Request`/`Response` enums that tie a frame's
//! `api_key` to its body type.

use bytes::{Bytes, BytesMut};

use crate::error_code::ErrorCode;
use crate::frame::{encode_frame, FrameHeader};
use crate::messages::*;
use crate::wire::{DecodeError, Reader, Wire};
use crate::wire_enum;

wire_enum! {
    /// Which request a frame carries. Keys are never renumbered or reused.
    pub enum ApiKey: u16 {
        ApiVersions = 0,
        Metadata = 1,
        CreateTopics = 2,
        DeleteTopics = 3,
        Produce = 4,
        Fetch = 5,
        ListOffsets = 6,
        GroupHeartbeat = 7,
        LeaveGroup = 8,
        OffsetCommit = 9,
        OffsetFetch = 10,
        DescribeGroups = 11,
        ListGroups = 12,
        InitProducerId = 13,
        AddPartitionsToTxn = 14,
        AddOffsetsToTxn = 15,
        TxnOffsetCommit = 16,
        EndTxn = 17,
        DeclareExchange = 20,
        DeclareQueue = 21,
        DeleteQueue = 22,
        BindQueue = 23,
        UnbindQueue = 24,
        Publish = 25,
        Subscribe = 26,
        Ack = 27,
        Cancel = 28,
        PurgeQueue = 29,
        ListQueues = 30,
        /// Server push of a delivery; never sent by clients, never answered.
        Deliver = 31,
        DeleteExchange = 32,
        ListExchanges = 33,
        /// Server push: the broker cancelled a consumer (ack timeout, queue deleted); never
        /// sent by clients, never answered.
        ConsumerCancelled = 34,
        /// Stream and group admin (issue #13).
        AlterTopicConfigs = 35,
        CreatePartitions = 36,
        DescribeTopicConfigs = 37,
        ResetOffsets = 38,
        DeleteGroup = 39,
        /// Queue admin (issue #13).
        QueueGet = 40,
        ListBindings = 41,
        MoveMessages = 42,
        /// Many publishes in one request, one confirm each (issue #15).
        PublishBatch = 43,
        /// Server push of several deliveries to one consumer as their stored record bytes
        /// (issue #15), to subscribers that subscribed at version 1; never sent by clients,
        /// never answered.
        DeliverBatch = 44,
        /// Authentication (issue #18): choose a SASL mechanism, then run it.
        SaslHandshake = 45,
        SaslAuthenticate = 46,
        /// User management (issue #18).
        CreateUser = 47,
        AlterUserCredentials = 48,
        DeleteUser = 49,
        ListUsers = 50,
        /// ACL management (issue #18): the same ACLs as Kafka's CreateAcls, DescribeAcls and
        /// DeleteAcls and the HTTP API.
        CreateAcls = 51,
        DescribeAcls = 52,
        DeleteAcls = 53,
        /// Server push: the disk alarm holds this connection's publishes (`blocked`) or let
        /// them go (issue #16, AMQP's connection.blocked/unblocked); never sent by clients,
        /// never answered.
        ConnectionBlocked = 54,
        /// This node's view of the cluster (issue #20).
        DescribeCluster = 55,
        /// Adds a node to the cluster.
        AddNode = 56,
        /// Removes a node from the cluster.
        RemoveNode = 57,
        /// A topic's replicas and their lag (issue #21).
        DescribeReplicas = 58,
        /// Moves replicas onto the nodes holding fewest (issue #20).
        Rebalance = 59,
        /// The node coordinating a group or transactional id (issue #20).
        FindCoordinator = 60,
        /// Stops a node's drain: it takes replicas again (issue #20).
        CancelDrain = 61,
    }
}

/// Every api with the versions this build speaks. Subscribe v1 asks for deliveries as
/// `DeliverBatch` pushes; v0 gets one `Deliver` push per message.
pub const SUPPORTED_APIS: [(ApiKey, u16, u16); 56] = [
    (ApiKey::ApiVersions, 0, 0),
    (ApiKey::Metadata, 0, 0),
    (ApiKey::CreateTopics, 0, 0),
    (ApiKey::DeleteTopics, 0, 0),
    (ApiKey::Produce, 0, 0),
    (ApiKey::Fetch, 0, 0),
    (ApiKey::ListOffsets, 0, 0),
    (ApiKey::GroupHeartbeat, 0, 0),
    (ApiKey::LeaveGroup, 0, 0),
    (ApiKey::OffsetCommit, 0, 0),
    (ApiKey::OffsetFetch, 0, 0),
    (ApiKey::DescribeGroups, 0, 0),
    (ApiKey::ListGroups, 0, 0),
    (ApiKey::InitProducerId, 0, 0),
    (ApiKey::AddPartitionsToTxn, 0, 0),
    (ApiKey::AddOffsetsToTxn, 0, 0),
    (ApiKey::TxnOffsetCommit, 0, 0),
    (ApiKey::EndTxn, 0, 0),
    (ApiKey::DeclareExchange, 0, 0),
    (ApiKey::DeclareQueue, 0, 0),
    (ApiKey::DeleteQueue, 0, 0),
    (ApiKey::BindQueue, 0, 0),
    (ApiKey::UnbindQueue, 0, 0),
    (ApiKey::Publish, 0, 0),
    (ApiKey::Subscribe, 0, 1),
    (ApiKey::Ack, 0, 0),
    (ApiKey::Cancel, 0, 0),
    (ApiKey::PurgeQueue, 0, 0),
    (ApiKey::ListQueues, 0, 0),
    (ApiKey::DeleteExchange, 0, 0),
    (ApiKey::ListExchanges, 0, 0),
    (ApiKey::AlterTopicConfigs, 0, 0),
    (ApiKey::CreatePartitions, 0, 0),
    (ApiKey::DescribeTopicConfigs, 0, 0),
    (ApiKey::ResetOffsets, 0, 0),
    (ApiKey::DeleteGroup, 0, 0),
    (ApiKey::QueueGet, 0, 0),
    (ApiKey::ListBindings, 0, 0),
    (ApiKey::MoveMessages, 0, 0),
    (ApiKey::PublishBatch, 0, 0),
    (ApiKey::SaslHandshake, 0, 0),
    (ApiKey::SaslAuthenticate, 0, 0),
    (ApiKey::CreateUser, 0, 0),
    (ApiKey::AlterUserCredentials, 0, 0),
    (ApiKey::DeleteUser, 0, 0),
    (ApiKey::ListUsers, 0, 0),
    (ApiKey::CreateAcls, 0, 0),
    (ApiKey::DescribeAcls, 0, 0),
    (ApiKey::DeleteAcls, 0, 0),
    (ApiKey::DescribeCluster, 0, 0),
    (ApiKey::AddNode, 0, 0),
    (ApiKey::RemoveNode, 0, 0),
    (ApiKey::DescribeReplicas, 0, 0),
    (ApiKey::Rebalance, 0, 0),
    (ApiKey::FindCoordinator, 0, 0),
    (ApiKey::CancelDrain, 0, 0),
];

/// The supported range of `api_key`.
///
/// # Errors
/// `UnknownApiKey` for a key this build does not know.
pub fn supported_range(api_key: u16) -> Result<(ApiKey, u16, u16), DecodeError> {
    SUPPORTED_APIS
        .iter()
        .find(|(key, _, _)| key.code() == api_key)
        .copied()
        .ok_or(DecodeError::UnknownApiKey { api_key })
}

/// Checks that `header` names a known api at a supported version.
///
/// # Errors
/// `UnknownApiKey` or `UnsupportedVersion`.
pub fn check_header(header: &FrameHeader) -> Result<ApiKey, DecodeError> {
    let (key, min_version, max_version) = supported_range(header.api_key)?;
    if !(min_version..=max_version).contains(&header.api_version) {
        return Err(DecodeError::UnsupportedVersion {
            api_key: header.api_key,
            api_version: header.api_version,
            min_version,
            max_version,
        });
    }
    Ok(key)
}

fn decode_body<T: Wire>(body: Bytes) -> Result<T, DecodeError> {
    let mut reader = Reader::new(body);
    let value = T::decode(&mut reader, "body")?;
    reader.finish()?;
    Ok(value)
}

macro_rules! api_enums {
    ($( $key:ident => $request:ident, $response:ident; )*) => {
        /// A decoded request body.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $( $key($request), )*
        }

        /// A decoded response body.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Response {
            $( $key($response), )*
        }

        impl Request {
            /// The api key of this request.
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $( Request::$key(_) => ApiKey::$key, )*
                }
            }

            /// Decodes a body of `api_key` (version already checked).
            ///
            /// # Errors
            /// The first `DecodeError` met, including trailing bytes.
            pub fn decode(api_key: ApiKey, body: Bytes) -> Result<Request, DecodeError> {
                match api_key {
                    $( ApiKey::$key => decode_body(body).map(Request::$key), )*
                }
            }

            /// Appends the body's encoding.
            pub fn encode_body(&self, out: &mut BytesMut) {
                match self {
                    $( Request::$key(body) => body.encode(out), )*
                }
            }
        }

        impl Response {
            /// The api key of this response.
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $( Response::$key(_) => ApiKey::$key, )*
                }
            }

            /// Decodes a body of `api_key`.
            ///
            /// # Errors
            /// The first `DecodeError` met, including trailing bytes.
            pub fn decode(api_key: ApiKey, body: Bytes) -> Result<Response, DecodeError> {
                match api_key {
                    $( ApiKey::$key => decode_body(body).map(Response::$key), )*
                }
            }

            /// Appends the body's encoding.
            pub fn encode_body(&self, out: &mut BytesMut) {
                match self {
                    $( Response::$key(body) => body.encode(out), )*
                }
            }

            /// The top-level error code.
            pub fn error(&self) -> ErrorCode {
                match self {
                    $( Response::$key(body) => body.error, )*
                }
            }

            /// A response of `api_key` that only carries a top-level error.
            #[allow(clippy::needless_update)]
            pub fn error_only(api_key: ApiKey, error: ErrorCode, message: String) -> Response {
                match api_key {
                    $( ApiKey::$key => Response::$key($response {
                        error,
                        error_message: Some(message),
                        ..Default::default()
                    }), )*
                }
            }
        }
    };
}

api_enums! {
    ApiVersions => ApiVersionsRequest, ApiVersionsResponse;
    Metadata => MetadataRequest, MetadataResponse;
    CreateTopics => CreateTopicsRequest, CreateTopicsResponse;
    DeleteTopics => DeleteTopicsRequest, DeleteTopicsResponse;
    Produce => ProduceRequest, ProduceResponse;
    Fetch => FetchRequest, FetchResponse;
    ListOffsets => ListOffsetsRequest, ListOffsetsResponse;
    GroupHeartbeat => GroupHeartbeatRequest, GroupHeartbeatResponse;
    LeaveGroup => LeaveGroupRequest, LeaveGroupResponse;
    OffsetCommit => OffsetCommitRequest, OffsetCommitResponse;
    OffsetFetch => OffsetFetchRequest, OffsetFetchResponse;
    DescribeGroups => DescribeGroupsRequest, DescribeGroupsResponse;
    ListGroups => ListGroupsRequest, ListGroupsResponse;
    InitProducerId => InitProducerIdRequest, InitProducerIdResponse;
    AddPartitionsToTxn => AddPartitionsToTxnRequest, AddPartitionsToTxnResponse;
    AddOffsetsToTxn => AddOffsetsToTxnRequest, AddOffsetsToTxnResponse;
    TxnOffsetCommit => TxnOffsetCommitRequest, TxnOffsetCommitResponse;
    EndTxn => EndTxnRequest, EndTxnResponse;
    DeclareExchange => DeclareExchangeRequest, QueueAdminResponse;
    DeclareQueue => DeclareQueueRequest, QueueAdminResponse;
    DeleteQueue => DeleteQueueRequest, QueueAdminResponse;
    BindQueue => BindQueueRequest, QueueAdminResponse;
    UnbindQueue => BindQueueRequest, QueueAdminResponse;
    Publish => PublishRequest, PublishResponse;
    Subscribe => SubscribeRequest, SubscribeResponse;
    Ack => AckRequest, QueueAdminResponse;
    Cancel => CancelRequest, QueueAdminResponse;
    PurgeQueue => PurgeQueueRequest, PurgeQueueResponse;
    ListQueues => ListQueuesRequest, ListQueuesResponse;
    Deliver => DeliverPush, QueueAdminResponse;
    DeleteExchange => DeleteExchangeRequest, QueueAdminResponse;
    ListExchanges => ListExchangesRequest, ListExchangesResponse;
    ConsumerCancelled => ConsumerCancelledPush, QueueAdminResponse;
    AlterTopicConfigs => AlterTopicConfigsRequest, StreamAdminResponse;
    CreatePartitions => CreatePartitionsRequest, StreamAdminResponse;
    DescribeTopicConfigs => DescribeTopicConfigsRequest, DescribeTopicConfigsResponse;
    ResetOffsets => ResetOffsetsRequest, ResetOffsetsResponse;
    DeleteGroup => DeleteGroupRequest, StreamAdminResponse;
    QueueGet => QueueGetRequest, QueueGetResponse;
    ListBindings => ListBindingsRequest, ListBindingsResponse;
    MoveMessages => MoveMessagesRequest, MoveMessagesResponse;
    PublishBatch => PublishBatchRequest, PublishBatchResponse;
    DeliverBatch => DeliverBatchPush, QueueAdminResponse;
    SaslHandshake => SaslHandshakeRequest, SaslHandshakeResponse;
    SaslAuthenticate => SaslAuthenticateRequest, SaslAuthenticateResponse;
    CreateUser => UserCredentialsRequest, UserAdminResponse;
    AlterUserCredentials => UserCredentialsRequest, UserAdminResponse;
    DeleteUser => DeleteUserRequest, UserAdminResponse;
    ListUsers => ListUsersRequest, ListUsersResponse;
    CreateAcls => CreateAclsRequest, AclAdminResponse;
    DescribeAcls => AclFilterRequest, AclListResponse;
    DeleteAcls => AclFilterRequest, AclListResponse;
    ConnectionBlocked => ConnectionBlockedPush, QueueAdminResponse;
    DescribeCluster => DescribeClusterRequest, DescribeClusterResponse;
    AddNode => AddNodeRequest, StreamAdminResponse;
    RemoveNode => RemoveNodeRequest, StreamAdminResponse;
    DescribeReplicas => DescribeReplicasRequest, DescribeReplicasResponse;
    Rebalance => RebalanceRequest, RebalanceResponse;
    FindCoordinator => FindCoordinatorRequest, FindCoordinatorResponse;
    CancelDrain => CancelDrainRequest, RebalanceResponse;
}

/// The version this build sends `api_key` at: the newest it speaks (0 for a push).
pub fn sent_version(api_key: ApiKey) -> u16 {
    supported_range(api_key.code()).map_or(0, |(_, _, max_version)| max_version)
}

/// Appends a whole request frame, at the version [`sent_version`] gives.
pub fn encode_request(request: &Request, correlation_id: u32, out: &mut BytesMut) {
    encode_request_at(
        request,
        sent_version(request.api_key()),
        correlation_id,
        out,
    );
}

/// Appends a whole request frame at `version` (one both sides speak: every body this
/// build encodes is the same at each version it speaks).
pub fn encode_request_at(request: &Request, version: u16, correlation_id: u32, out: &mut BytesMut) {
    let header = FrameHeader {
        api_key: request.api_key().code(),
        api_version: version,
        correlation_id,
    };
    encode_frame(header, out, |body| request.encode_body(body));
}

/// Appends a whole response frame answering `header`.
pub fn encode_response(response: &Response, header: FrameHeader, out: &mut BytesMut) {
    encode_frame(header, out, |body| response.encode_body(body));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_api_key_is_reported() {
        let header = FrameHeader {
            api_key: 999,
            api_version: 0,
            correlation_id: 1,
        };
        assert_eq!(
            check_header(&header),
            Err(DecodeError::UnknownApiKey { api_key: 999 })
        );
    }

    #[test]
    fn unsupported_version_is_reported() {
        let header = FrameHeader {
            api_key: ApiKey::Produce.code(),
            api_version: 7,
            correlation_id: 1,
        };
        assert!(matches!(
            check_header(&header),
            Err(DecodeError::UnsupportedVersion { api_version: 7, .. })
        ));
    }

    #[test]
    fn every_api_has_a_supported_range() {
        for (key, _, _) in SUPPORTED_APIS {
            assert_eq!(supported_range(key.code()).unwrap().0, key);
        }
        assert!(
            supported_range(ApiKey::Deliver.code()).is_err(),
            "clients never send Deliver"
        );
        assert!(
            supported_range(ApiKey::DeliverBatch.code()).is_err(),
            "clients never send DeliverBatch"
        );
        assert!(
            supported_range(ApiKey::ConsumerCancelled.code()).is_err(),
            "clients never send ConsumerCancelled"
        );
    }
}
