//! Golden bytes for frames and v0 request/response bodies, written out field by field from
//! the tables in docs/PROTOCOL.md ("Frame", "Primitive types" and the api sections).
//!
//! Goal: the encoders produce exactly the spec's bytes, and decoding those bytes gives back
//! the same message. Method: each expected frame is a byte array with one comment per field,
//! derived by hand from the spec tables (not from the encoder). Every test goes through
//! `check_request` or `check_response`, which encode, compare, then decode the golden bytes
//! with the same functions the broker and client use. If one of these tests fails, the wire
//! format changed: that needs a new api version, not a new golden.

use bytes::{Bytes, BytesMut};
use wharf_protocol::api::{check_header, encode_request, encode_response, SUPPORTED_APIS};
use wharf_protocol::frame::{decode_frame, FrameHeader, FRAME_BYTES_MAX_DEFAULT};
use wharf_protocol::messages::{
    AckRequest, Acks, ApiVersionsRequest, ConfigEntry, ConsumerCancelledPush, DeclareQueueRequest,
    DeliverPush, EndTxnRequest, GetAckMode, HeaderEntry, InitProducerIdRequest,
    InitProducerIdResponse, ListQueuesResponse, MetadataRequest, MoveMessagesResponse,
    OffsetCommitResponse, OffsetCommitTopicResponse, PartitionError, ProducePartition,
    ProduceRequest, ProduceTopic, PublishBatchRequest, PublishBatchResponse, PublishRequest,
    PublishResponse, QueueGetRequest, QueueListing, TxnResult,
};
use wharf_protocol::messages::{
    AclEntry, AclFilterRequest, ConnectionBlockedPush, CreateAclsRequest, DeleteUserRequest,
    ListUsersRequest, ListUsersResponse, UserAdminResponse, UserCredentialInfo, UserListing,
};
use wharf_protocol::messages::{
    AddNodeRequest, CancelDrainRequest, ClusterNodeEntry, DescribeClusterRequest,
    DescribeClusterResponse, RemoveNodeRequest, StreamAdminResponse,
};
use wharf_protocol::messages::{
    AlterTopicConfigsRequest, ConfigSource, CreatePartitionsRequest, DeleteGroupRequest,
    DescribeTopicConfigsResponse, ResetOffsetsPartition, ResetOffsetsRequest, ResetOffsetsResponse,
    ResetTo, TopicConfigEntry,
};
use wharf_protocol::messages::{BrokerInfo, FindCoordinatorRequest, FindCoordinatorResponse};
use wharf_protocol::messages::{DeliverBatchPush, DeliveryMark, SubscribeRequest};
use wharf_protocol::messages::{
    DescribeReplicasRequest, DescribeReplicasResponse, RebalanceRequest, RebalanceResponse,
    ReplicaFollowerEntry, ReplicaMoveEntry, ReplicaPartitionEntry,
};
use wharf_protocol::messages::{
    SaslAuthenticateResponse, SaslHandshakeRequest, ScramCredentialUpsert, UserCredentialsRequest,
};
use wharf_protocol::{ApiKey, ErrorCode, Request, Response};

/// Encodes `request` as a frame and compares it with `golden`; then splits `golden` into a
/// frame, checks its header and decodes its body back into `request`.
fn check_request(request: &Request, correlation_id: u32, golden: &[u8]) {
    let mut encoded = BytesMut::new();
    encode_request(request, correlation_id, &mut encoded);
    assert_eq!(
        &encoded[..],
        golden,
        "encoded request differs from the golden bytes"
    );

    let mut buffer = BytesMut::from(golden);
    let frame = decode_frame(&mut buffer, FRAME_BYTES_MAX_DEFAULT)
        .expect("the golden frame is well-formed")
        .expect("the golden frame is complete");
    assert!(buffer.is_empty(), "the golden bytes are exactly one frame");
    assert_eq!(
        frame.header.api_version,
        wharf_protocol::api::sent_version(request.api_key())
    );
    assert_eq!(frame.header.correlation_id, correlation_id);
    let api_key = check_header(&frame.header).expect("a known api at a supported version");
    assert_eq!(api_key, request.api_key());
    let decoded = Request::decode(api_key, frame.body).expect("the golden body decodes");
    assert_eq!(&decoded, request);
}

/// Encodes `response` as a frame answering `header` and compares it with `golden`; then
/// splits `golden` into a frame, checks its header and decodes its body back into `response`.
fn check_response(response: &Response, header: FrameHeader, golden: &[u8]) {
    let mut encoded = BytesMut::new();
    encode_response(response, header, &mut encoded);
    assert_eq!(
        &encoded[..],
        golden,
        "encoded response differs from the golden bytes"
    );

    let mut buffer = BytesMut::from(golden);
    let frame = decode_frame(&mut buffer, FRAME_BYTES_MAX_DEFAULT)
        .expect("the golden frame is well-formed")
        .expect("the golden frame is complete");
    assert!(buffer.is_empty(), "the golden bytes are exactly one frame");
    assert_eq!(frame.header, header);
    let api_key = ApiKey::from_code(frame.header.api_key).expect("a known api key");
    assert_eq!(api_key, response.api_key());
    let decoded = Response::decode(api_key, frame.body).expect("the golden body decodes");
    assert_eq!(&decoded, response);
}

#[test]
fn golden_api_versions_request() {
    let request = Request::ApiVersions(ApiVersionsRequest {
        client_name: "cli".to_string(),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0d, // @0  length u32 = 13 (8 header bytes + 5 body bytes)
        0x00, 0x00,             // @4  api_key u16 = 0 (ApiVersions)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x01, // @8  correlation_id u32 = 1
        // ---- ApiVersionsRequest body, 5 bytes ----
        0x00, 0x03,             //     client_name string: u16 length = 3
        b'c', b'l', b'i',       //     "cli" as UTF-8
    ];
    check_request(&request, 1, &golden);
}

#[test]
fn golden_metadata_request_for_all_topics() {
    let request = Request::Metadata(MetadataRequest { topics: None });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0c, // @0  length u32 = 12 (8 header bytes + 4 body bytes)
        0x00, 0x01,             // @4  api_key u16 = 1 (Metadata)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x02, // @8  correlation_id u32 = 2
        // ---- MetadataRequest body, 4 bytes ----
        0xff, 0xff, 0xff, 0xff, //     topics nullable array: count 0xFFFFFFFF = null (all topics)
    ];
    check_request(&request, 2, &golden);
}

#[test]
fn golden_produce_request() {
    // The records are three arbitrary bytes: this layer carries them as opaque `bytes` and
    // never looks inside (the broker would answer CorruptRecordBatch for this partition).
    let request = Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 30_000,
        topics: vec![ProduceTopic {
            name: "t".to_string(),
            partitions: vec![ProducePartition {
                partition: 0,
                records: Bytes::from_static(&[1, 2, 3]),
            }],
        }],
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x24, // @0  length u32 = 36 (8 header bytes + 28 body bytes)
        0x00, 0x04,             // @4  api_key u16 = 4 (Produce)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x03, // @8  correlation_id u32 = 3
        // ---- ProduceRequest body, 28 bytes ----
        0xff, 0xff,             //     acks i16 = -1 (all)
        0x00, 0x00, 0x75, 0x30, //     timeout_ms u32 = 30000
        0x00, 0x00, 0x00, 0x01, //     topics array: count = 1
        //   -- ProduceTopic --
        0x00, 0x01, b't',       //       name string = "t"
        0x00, 0x00, 0x00, 0x01, //       partitions array: count = 1
        //     -- ProducePartition --
        0x00, 0x00, 0x00, 0x00, //         partition u32 = 0
        0x00, 0x00, 0x00, 0x03, //         records bytes: i32 length = 3
        0x01, 0x02, 0x03,       //         the 3 record bytes
    ];
    check_request(&request, 3, &golden);
}

#[test]
fn golden_offset_commit_response_with_error() {
    let response = Response::OffsetCommit(OffsetCommitResponse {
        error: ErrorCode::IllegalGeneration,
        error_message: Some("fenced".to_string()),
        topics: vec![OffsetCommitTopicResponse {
            name: "t".to_string(),
            partitions: vec![PartitionError {
                partition: 0,
                error: ErrorCode::IllegalGeneration,
            }],
        }],
    });
    let header = FrameHeader {
        api_key: ApiKey::OffsetCommit.code(),
        api_version: 0,
        correlation_id: 4,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x23, // @0  length u32 = 35 (8 header bytes + 27 body bytes)
        0x00, 0x09,             // @4  api_key u16 = 9 (OffsetCommit), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x04, // @8  correlation_id u32 = 4, echoed
        // ---- OffsetCommitResponse body, 27 bytes ----
        0x00, 0x11,             //     error u16 = 17 (IllegalGeneration)
        0x00, 0x06,             //     error_message nullable string: i16 length = 6
        b'f', b'e', b'n', b'c', b'e', b'd', // "fenced"
        0x00, 0x00, 0x00, 0x01, //     topics array: count = 1
        //   -- OffsetCommitTopicResponse --
        0x00, 0x01, b't',       //       name string = "t"
        0x00, 0x00, 0x00, 0x01, //       partitions array: count = 1
        //     -- PartitionError --
        0x00, 0x00, 0x00, 0x00, //         partition u32 = 0
        0x00, 0x11,             //         error u16 = 17 (IllegalGeneration)
    ];
    check_response(&response, header, &golden);
}

#[test]
fn every_response_body_starts_with_error_and_message() {
    // Goal: pin the common prefix that a client can read from any response body, which is
    // also the whole body of the broker's answer to an unknown api key. Method: the
    // error-only response of every api starts with `error u16 | error_message nullable
    // string` and decodes back.
    for (api_key, _, _) in SUPPORTED_APIS {
        let response = Response::error_only(api_key, ErrorCode::UnsupportedVersion, "v".into());
        let mut body = BytesMut::new();
        response.encode_body(&mut body);
        assert_eq!(
            &body[..5],
            &[0x00, 0x04, 0x00, 0x01, b'v'][..],
            "prefix of the {api_key:?} response"
        );
        let decoded = Response::decode(api_key, body.freeze()).expect("error-only body decodes");
        assert_eq!(decoded, response);
    }
}

/// Encodes a server push the way the broker does and compares it with `golden`; then splits
/// `golden` into a frame and decodes its body back. Pushes are not requests a client may
/// send, so `check_header` (which accepts only `SUPPORTED_APIS`) is not used.
fn check_push(push: &Request, correlation_id: u32, golden: &[u8]) {
    let mut encoded = BytesMut::new();
    encode_request(push, correlation_id, &mut encoded);
    assert_eq!(
        &encoded[..],
        golden,
        "encoded push differs from the golden bytes"
    );

    let mut buffer = BytesMut::from(golden);
    let frame = decode_frame(&mut buffer, FRAME_BYTES_MAX_DEFAULT)
        .expect("the golden frame is well-formed")
        .expect("the golden frame is complete");
    assert!(buffer.is_empty(), "the golden bytes are exactly one frame");
    assert_eq!(frame.header.correlation_id, correlation_id);
    assert!(
        check_header(&frame.header).is_err(),
        "pushes are not client requests"
    );
    let api_key = ApiKey::from_code(frame.header.api_key).expect("a known api key");
    let decoded = Request::decode(api_key, frame.body).expect("the golden body decodes");
    assert_eq!(&decoded, push);
}

#[test]
fn golden_declare_queue_request() {
    let request = Request::DeclareQueue(DeclareQueueRequest {
        name: "q".to_string(),
        durable: true,
        args: vec![ConfigEntry {
            key: "max-length".to_string(),
            value: "10".to_string(),
        }],
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x20, // @0  length u32 = 32 (8 header bytes + 24 body bytes)
        0x00, 0x15,             // @4  api_key u16 = 21 (DeclareQueue)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x05, // @8  correlation_id u32 = 5
        // ---- DeclareQueueRequest body, 24 bytes ----
        0x00, 0x01, b'q',       //     name string = "q"
        0x01,                   //     durable bool = true
        0x00, 0x00, 0x00, 0x01, //     args array: count = 1
        //   -- ConfigEntry --
        0x00, 0x0a,             //       key string: u16 length = 10
        b'm', b'a', b'x', b'-', b'l', b'e', b'n', b'g', b't', b'h', // "max-length"
        0x00, 0x02, b'1', b'0', //       value string = "10"
    ];
    check_request(&request, 5, &golden);
}

#[test]
fn golden_publish_request_and_response() {
    let request = Request::Publish(PublishRequest {
        exchange: "x".to_string(),
        routing_key: "k".to_string(),
        mandatory: true,
        headers: vec![
            HeaderEntry {
                key: "h".to_string(),
                value: Some(Bytes::from_static(b"v")),
            },
            HeaderEntry {
                key: "n".to_string(),
                value: None,
            },
        ],
        body: Bytes::from_static(b"hi"),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x28, // @0  length u32 = 40 (8 header bytes + 32 body bytes)
        0x00, 0x19,             // @4  api_key u16 = 25 (Publish)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x06, // @8  correlation_id u32 = 6
        // ---- PublishRequest body, 32 bytes ----
        0x00, 0x01, b'x',       //     exchange string = "x"
        0x00, 0x01, b'k',       //     routing_key string = "k"
        0x01,                   //     mandatory bool = true
        0x00, 0x00, 0x00, 0x02, //     headers array: count = 2
        //   -- HeaderEntry --
        0x00, 0x01, b'h',       //       key string = "h"
        0x00, 0x00, 0x00, 0x01, b'v', // value nullable bytes = "v"
        //   -- HeaderEntry --
        0x00, 0x01, b'n',       //       key string = "n"
        0xff, 0xff, 0xff, 0xff, //       value nullable bytes = null (-1)
        0x00, 0x00, 0x00, 0x02, b'h', b'i', // body bytes = "hi"
    ];
    check_request(&request, 6, &golden);

    let response = Response::Publish(PublishResponse {
        error: ErrorCode::None,
        error_message: None,
        queues: vec!["q".to_string()],
    });
    let header = FrameHeader {
        api_key: ApiKey::Publish.code(),
        api_version: 0,
        correlation_id: 6,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x13, // @0  length u32 = 19 (8 header bytes + 11 body bytes)
        0x00, 0x19,             // @4  api_key u16 = 25 (Publish), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x06, // @8  correlation_id u32 = 6, echoed
        // ---- PublishResponse body, 11 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null (-1)
        0x00, 0x00, 0x00, 0x01, //     queues array: count = 1
        0x00, 0x01, b'q',       //       string = "q"
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_publish_batch_request_and_response() {
    let request = Request::PublishBatch(PublishBatchRequest {
        messages: vec![PublishRequest {
            exchange: String::new(),
            routing_key: "q".to_string(),
            mandatory: false,
            headers: Vec::new(),
            body: Bytes::from_static(b"m"),
        }],
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x1b, // @0  length u32 = 27 (8 header bytes + 19 body bytes)
        0x00, 0x2b,             // @4  api_key u16 = 43 (PublishBatch)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7
        // ---- PublishBatchRequest body, 19 bytes ----
        0x00, 0x00, 0x00, 0x01, //     messages array: count = 1
        //   -- PublishRequest --
        0x00, 0x00,             //       exchange string = ""
        0x00, 0x01, b'q',       //       routing_key string = "q"
        0x00,                   //       mandatory bool = false
        0x00, 0x00, 0x00, 0x00, //       headers array: count = 0
        0x00, 0x00, 0x00, 0x01, b'm', // body bytes = "m"
    ];
    check_request(&request, 7, &golden);

    let response = Response::PublishBatch(PublishBatchResponse {
        error: ErrorCode::None,
        error_message: None,
        results: vec![PublishResponse {
            error: ErrorCode::Unroutable,
            error_message: None,
            queues: Vec::new(),
        }],
    });
    let header = FrameHeader {
        api_key: ApiKey::PublishBatch.code(),
        api_version: 0,
        correlation_id: 7,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x18, // @0  length u32 = 24 (8 header bytes + 16 body bytes)
        0x00, 0x2b,             // @4  api_key u16 = 43 (PublishBatch), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7, echoed
        // ---- PublishBatchResponse body, 16 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null (-1)
        0x00, 0x00, 0x00, 0x01, //     results array: count = 1
        //   -- PublishResponse --
        0x00, 0x21,             //       error u16 = 33 (Unroutable)
        0xff, 0xff,             //       error_message nullable string = null (-1)
        0x00, 0x00, 0x00, 0x00, //       queues array: count = 0
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_ack_request() {
    let request = Request::Ack(AckRequest {
        queue: "q".to_string(),
        consumer_id: 1,
        delivery_tag: 2,
        multiple: false,
        negative: true,
        requeue: true,
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x1e, // @0  length u32 = 30 (8 header bytes + 22 body bytes)
        0x00, 0x1b,             // @4  api_key u16 = 27 (Ack)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x08, // @8  correlation_id u32 = 8
        // ---- AckRequest body, 22 bytes ----
        0x00, 0x01, b'q',       //     queue string = "q"
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // consumer_id u64 = 1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // delivery_tag u64 = 2
        0x00,                   //     multiple bool = false
        0x01,                   //     negative bool = true (a nack)
        0x01,                   //     requeue bool = true
    ];
    check_request(&request, 8, &golden);
}

#[test]
fn golden_deliver_push() {
    let push = Request::Deliver(DeliverPush {
        consumer_id: 1,
        delivery_tag: 2,
        redelivered: true,
        routing_key: "k".to_string(),
        timestamp_ms: 1_700_000_000_000,
        headers: vec![HeaderEntry {
            key: "h".to_string(),
            value: Some(Bytes::from_static(b"v")),
        }],
        body: Bytes::from_static(b"hi"),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x36, // @0  length u32 = 54 (8 header bytes + 46 body bytes)
        0x00, 0x1f,             // @4  api_key u16 = 31 (Deliver, push)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7 (the Subscribe's)
        // ---- DeliverPush body, 46 bytes ----
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // consumer_id u64 = 1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // delivery_tag u64 = 2
        0x01,                   //     redelivered bool = true
        0x00, 0x01, b'k',       //     routing_key string = "k"
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // timestamp_ms i64 = 1_700_000_000_000
        0x00, 0x00, 0x00, 0x01, //     headers array: count = 1
        0x00, 0x01, b'h',       //       key string = "h"
        0x00, 0x00, 0x00, 0x01, b'v', // value nullable bytes = "v"
        0x00, 0x00, 0x00, 0x02, b'h', b'i', // body bytes = "hi"
    ];
    check_push(&push, 7, &golden);
}

#[test]
fn golden_subscribe_request_is_sent_at_version_1() {
    // Version 1 asks for deliveries as DeliverBatch pushes; the body is version 0's.
    let request = Request::Subscribe(SubscribeRequest {
        queue: "q".to_string(),
        prefetch: 100,
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0f, // @0  length u32 = 15 (8 header bytes + 7 body bytes)
        0x00, 0x1a,             // @4  api_key u16 = 26 (Subscribe)
        0x00, 0x01,             // @6  api_version u16 = 1 (DeliverBatch pushes)
        0x00, 0x00, 0x00, 0x03, // @8  correlation_id u32 = 3
        // ---- SubscribeRequest body, 7 bytes ----
        0x00, 0x01, b'q',       //     queue string = "q"
        0x00, 0x00, 0x00, 0x64, //     prefetch u32 = 100
    ];
    check_request(&request, 3, &golden);
}

#[test]
fn golden_deliver_batch_push() {
    let push = DeliverBatchPush {
        consumer_id: 1,
        base_offset: 100,
        base_timestamp: 1_700_000_000_000,
        marks: vec![DeliveryMark {
            delivery_tag: 6,
            redelivered: true,
        }],
        records: Bytes::from_static(&[0x12, 0x00, 0x00, 0x02, 0x02, b'k', 0x04, b'h', b'i', 0x00]),
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x3b, // @0  length u32 = 59 (8 header bytes + 51 body bytes)
        0x00, 0x2c,             // @4  api_key u16 = 44 (DeliverBatch, push)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7 (the Subscribe's)
        // ---- DeliverBatchPush body, 51 bytes ----
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // consumer_id u64 = 1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, // base_offset i64 = 100
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // base_timestamp i64 = 1_700_000_000_000
        0x00, 0x00, 0x00, 0x01, //     marks array: count = 1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, // delivery_tag u64 = 6
        0x01,                   //       redelivered bool = true
        0x00, 0x00, 0x00, 0x0a, //     records bytes: length = 10, one record:
        0x12,                   //       length varint = 9
        0x00,                   //       attributes i8 = 0
        0x00,                   //       timestamp_delta varlong = 0
        0x02,                   //       offset_delta varint = 1
        0x02, b'k',             //       key: length varint 1, "k" (the routing key)
        0x04, b'h', b'i',       //       value: length varint 2, "hi" (the body)
        0x00,                   //       header count varint = 0
    ];
    let record = push.records().next().expect("one record").expect("decodes");
    assert_eq!(record.offset, 101);
    assert_eq!(record.timestamp_ms, 1_700_000_000_000);
    assert_eq!(record.key.as_deref(), Some(b"k".as_slice()));
    assert_eq!(record.value.as_deref(), Some(b"hi".as_slice()));
    check_push(&Request::DeliverBatch(push), 7, &golden);
}

#[test]
fn golden_consumer_cancelled_push() {
    let push = Request::ConsumerCancelled(ConsumerCancelledPush {
        consumer_id: 1,
        queue: "q".to_string(),
        error: ErrorCode::AckTimeout,
        error_message: Some("late".to_string()),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x1b, // @0  length u32 = 27 (8 header bytes + 19 body bytes)
        0x00, 0x22,             // @4  api_key u16 = 34 (ConsumerCancelled, push)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7 (the Subscribe's)
        // ---- ConsumerCancelledPush body, 19 bytes ----
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // consumer_id u64 = 1
        0x00, 0x01, b'q',       //     queue string = "q"
        0x00, 0x24,             //     error u16 = 36 (AckTimeout)
        0x00, 0x04, b'l', b'a', b't', b'e', // error_message nullable string = "late"
    ];
    check_push(&push, 7, &golden);
}

#[test]
fn golden_init_producer_id_request_and_response() {
    let request = Request::InitProducerId(InitProducerIdRequest {
        transactional_id: Some("t".to_string()),
        transaction_timeout_ms: 60_000,
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0f, // @0  length u32 = 15 (8 header bytes + 7 body bytes)
        0x00, 0x0d,             // @4  api_key u16 = 13 (InitProducerId)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x09, // @8  correlation_id u32 = 9
        // ---- InitProducerIdRequest body, 7 bytes ----
        0x00, 0x01, b't',       //     transactional_id nullable string = "t"
        0x00, 0x00, 0xea, 0x60, //     transaction_timeout_ms u32 = 60 000
    ];
    check_request(&request, 9, &golden);

    let response = Response::InitProducerId(InitProducerIdResponse {
        error: ErrorCode::None,
        error_message: None,
        producer_id: 1000,
        producer_epoch: 2,
    });
    let header = FrameHeader {
        api_key: ApiKey::InitProducerId.code(),
        api_version: 0,
        correlation_id: 9,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x16, // @0  length u32 = 22 (8 header bytes + 14 body bytes)
        0x00, 0x0d,             // @4  api_key u16 = 13 (InitProducerId), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x09, // @8  correlation_id u32 = 9, echoed
        // ---- InitProducerIdResponse body, 14 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null (-1)
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, // producer_id i64 = 1000
        0x00, 0x02,             //     producer_epoch i16 = 2
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_end_txn_request() {
    let request = Request::EndTxn(EndTxnRequest {
        transactional_id: "t".to_string(),
        producer_id: 1000,
        producer_epoch: 2,
        result: TxnResult::Commit,
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x16, // @0  length u32 = 22 (8 header bytes + 14 body bytes)
        0x00, 0x11,             // @4  api_key u16 = 17 (EndTxn)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x0a, // @8  correlation_id u32 = 10
        // ---- EndTxnRequest body, 14 bytes ----
        0x00, 0x01, b't',       //     transactional_id string = "t"
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, // producer_id i64 = 1000
        0x00, 0x02,             //     producer_epoch i16 = 2
        0x01,                   //     result u8 = 1 (Commit)
    ];
    check_request(&request, 10, &golden);
}

#[test]
fn golden_reset_offsets_request_and_response() {
    let request = Request::ResetOffsets(ResetOffsetsRequest {
        group_id: "g".to_string(),
        topic: "t".to_string(),
        to: ResetTo::Timestamp,
        value: 1000,
        execute: true,
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x18, // @0  length u32 = 24 (8 header bytes + 16 body bytes)
        0x00, 0x26,             // @4  api_key u16 = 38 (ResetOffsets)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x08, // @8  correlation_id u32 = 8
        // ---- ResetOffsetsRequest body, 16 bytes ----
        0x00, 0x01, b'g',       //     group_id string = "g"
        0x00, 0x01, b't',       //     topic string = "t"
        0x03,                   //     to u8 = 3 (Timestamp)
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xe8, // value i64 = 1000
        0x01,                   //     execute bool = true
    ];
    check_request(&request, 8, &golden);

    let response = Response::ResetOffsets(ResetOffsetsResponse {
        error: ErrorCode::None,
        error_message: None,
        executed: true,
        partitions: vec![ResetOffsetsPartition {
            partition: 0,
            current_offset: -1,
            new_offset: 5,
            error: ErrorCode::None,
        }],
    });
    let header = FrameHeader {
        api_key: ApiKey::ResetOffsets.code(),
        api_version: 0,
        correlation_id: 8,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x27, // @0  length u32 = 39 (8 header bytes + 31 body bytes)
        0x00, 0x26,             // @4  api_key u16 = 38 (ResetOffsets)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x08, // @8  correlation_id u32 = 8
        // ---- ResetOffsetsResponse body, 31 bytes ----
        0x00, 0x00,             //     error u16 = 0
        0xff, 0xff,             //     error_message nullable string = null
        0x01,                   //     executed bool = true
        0x00, 0x00, 0x00, 0x01, //     partitions array: count = 1
        //   -- ResetOffsetsPartition --
        0x00, 0x00, 0x00, 0x00, //       partition u32 = 0
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // current_offset i64 = -1 (none)
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, // new_offset i64 = 5
        0x00, 0x00,             //       error u16 = 0
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_describe_topic_configs_response() {
    let response = Response::DescribeTopicConfigs(DescribeTopicConfigsResponse {
        error: ErrorCode::None,
        error_message: None,
        configs: vec![
            TopicConfigEntry {
                key: "flush".to_string(),
                value: "always".to_string(),
                source: ConfigSource::Default,
            },
            TopicConfigEntry {
                key: "retention.ms".to_string(),
                value: "0".to_string(),
                source: ConfigSource::TopicOverride,
            },
        ],
    });
    let header = FrameHeader {
        api_key: ApiKey::DescribeTopicConfigs.code(),
        api_version: 0,
        correlation_id: 9,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x32, // @0  length u32 = 50 (8 header bytes + 42 body bytes)
        0x00, 0x25,             // @4  api_key u16 = 37 (DescribeTopicConfigs)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x09, // @8  correlation_id u32 = 9
        // ---- DescribeTopicConfigsResponse body, 42 bytes ----
        0x00, 0x00,             //     error u16 = 0
        0xff, 0xff,             //     error_message nullable string = null
        0x00, 0x00, 0x00, 0x02, //     configs array: count = 2
        //   -- TopicConfigEntry --
        0x00, 0x05, b'f', b'l', b'u', b's', b'h', // key string = "flush"
        0x00, 0x06, b'a', b'l', b'w', b'a', b'y', b's', // value string = "always"
        0x00,                   //       source u8 = 0 (Default)
        //   -- TopicConfigEntry --
        0x00, 0x0c, b'r', b'e', b't', b'e', b'n', b't', b'i', b'o', b'n', b'.', b'm', b's',
                                //       key string = "retention.ms"
        0x00, 0x01, b'0',       //       value string = "0"
        0x01,                   //       source u8 = 1 (TopicOverride)
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_topic_and_group_admin_requests() {
    let alter = Request::AlterTopicConfigs(AlterTopicConfigsRequest {
        topic: "t".to_string(),
        configs: vec![ConfigEntry {
            key: "retention.ms".to_string(),
            value: "1000".to_string(),
        }],
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x23, // @0  length u32 = 35 (8 header bytes + 27 body bytes)
        0x00, 0x23,             // @4  api_key u16 = 35 (AlterTopicConfigs)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x0a, // @8  correlation_id u32 = 10
        // ---- AlterTopicConfigsRequest body, 27 bytes ----
        0x00, 0x01, b't',       //     topic string = "t"
        0x00, 0x00, 0x00, 0x01, //     configs array: count = 1
        0x00, 0x0c, b'r', b'e', b't', b'e', b'n', b't', b'i', b'o', b'n', b'.', b'm', b's',
                                //       key string = "retention.ms"
        0x00, 0x04, b'1', b'0', b'0', b'0', // value string = "1000"
    ];
    check_request(&alter, 10, &golden);

    let grow = Request::CreatePartitions(CreatePartitionsRequest {
        topic: "t".to_string(),
        partition_count: 4,
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0f, // @0  length u32 = 15 (8 header bytes + 7 body bytes)
        0x00, 0x24,             // @4  api_key u16 = 36 (CreatePartitions)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x0b, // @8  correlation_id u32 = 11
        // ---- CreatePartitionsRequest body, 7 bytes ----
        0x00, 0x01, b't',       //     topic string = "t"
        0x00, 0x00, 0x00, 0x04, //     partition_count u32 = 4
    ];
    check_request(&grow, 11, &golden);

    let delete = Request::DeleteGroup(DeleteGroupRequest {
        group_id: "g".to_string(),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0b, // @0  length u32 = 11 (8 header bytes + 3 body bytes)
        0x00, 0x27,             // @4  api_key u16 = 39 (DeleteGroup)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x0c, // @8  correlation_id u32 = 12
        // ---- DeleteGroupRequest body, 3 bytes ----
        0x00, 0x01, b'g',       //     group_id string = "g"
    ];
    check_request(&delete, 12, &golden);
}

#[test]
fn golden_list_queues_response() {
    // `delayed` was appended to ListQueues v0 in place (docs/PROTOCOL.md, versioning rules).
    let response = Response::ListQueues(ListQueuesResponse {
        error: ErrorCode::None,
        error_message: None,
        queues: vec![QueueListing {
            name: "q".to_string(),
            durable: true,
            ready: 1,
            unacked: 2,
            consumers: 3,
            delayed: 4,
        }],
    });
    let header = FrameHeader {
        api_key: ApiKey::ListQueues.code(),
        api_version: 0,
        correlation_id: 11,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x34, // @0  length u32 = 52 (8 header bytes + 44 body bytes)
        0x00, 0x1e,             // @4  api_key u16 = 30 (ListQueues), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x0b, // @8  correlation_id u32 = 11, echoed
        // ---- ListQueuesResponse body, 44 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null (-1)
        0x00, 0x00, 0x00, 0x01, //     queues array: count = 1
        //   -- QueueListing --
        0x00, 0x01, b'q',       //       name string = "q"
        0x01,                   //       durable bool = true
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // ready u64 = 1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // unacked u64 = 2
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, // consumers u64 = 3
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, // delayed u64 = 4
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_queue_get_request() {
    let request = Request::QueueGet(QueueGetRequest {
        queue: "q".to_string(),
        count: 2,
        ack_mode: GetAckMode::Ack,
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x10, // @0  length u32 = 16 (8 header bytes + 8 body bytes)
        0x00, 0x28,             // @4  api_key u16 = 40 (QueueGet)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x0c, // @8  correlation_id u32 = 12
        // ---- QueueGetRequest body, 8 bytes ----
        0x00, 0x01, b'q',       //     queue string = "q"
        0x00, 0x00, 0x00, 0x02, //     count u32 = 2
        0x01,                   //     ack_mode u8 = 1 (Ack)
    ];
    check_request(&request, 12, &golden);
}

#[test]
fn golden_move_messages_response() {
    // A move stopped part-way still reports what it moved.
    let response = Response::MoveMessages(MoveMessagesResponse {
        error: ErrorCode::QueueFull,
        error_message: None,
        moved: 5,
    });
    let header = FrameHeader {
        api_key: ApiKey::MoveMessages.code(),
        api_version: 0,
        correlation_id: 13,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x14, // @0  length u32 = 20 (8 header bytes + 12 body bytes)
        0x00, 0x2a,             // @4  api_key u16 = 42 (MoveMessages), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x0d, // @8  correlation_id u32 = 13, echoed
        // ---- MoveMessagesResponse body, 12 bytes ----
        0x00, 0x22,             //     error u16 = 34 (QueueFull)
        0xff, 0xff,             //     error_message nullable string = null (-1)
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, // moved u64 = 5
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_sasl_handshake_request_and_authenticate_response() {
    let request = Request::SaslHandshake(SaslHandshakeRequest {
        mechanism: "SCRAM-SHA-256".to_string(),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x17, // @0  length u32 = 23 (8 header bytes + 15 body bytes)
        0x00, 0x2d,             // @4  api_key u16 = 45 (SaslHandshake)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x01, // @8  correlation_id u32 = 1
        // ---- SaslHandshakeRequest body, 15 bytes ----
        0x00, 0x0d,             //     mechanism string: u16 length = 13
        b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'2', b'5', b'6',
    ];
    check_request(&request, 1, &golden);

    let response = Response::SaslAuthenticate(SaslAuthenticateResponse {
        error: ErrorCode::AuthenticationFailed,
        error_message: Some("no".to_string()),
        auth_bytes: Bytes::from_static(b"v=x"),
    });
    let header = FrameHeader {
        api_key: ApiKey::SaslAuthenticate.code(),
        api_version: 0,
        correlation_id: 2,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x15, // @0  length u32 = 21 (8 header bytes + 13 body bytes)
        0x00, 0x2e,             // @4  api_key u16 = 46 (SaslAuthenticate), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x02, // @8  correlation_id u32 = 2, echoed
        // ---- SaslAuthenticateResponse body, 13 bytes ----
        0x00, 0x27,             //     error u16 = 39 (AuthenticationFailed)
        0x00, 0x02, b'n', b'o', //     error_message nullable string = "no"
        0x00, 0x00, 0x00, 0x03, //     auth_bytes bytes: i32 length = 3
        b'v', b'=', b'x',       //     the SASL message
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_create_user_request() {
    let request = Request::CreateUser(UserCredentialsRequest {
        name: "al".to_string(),
        credentials: vec![ScramCredentialUpsert {
            mechanism: "SCRAM-SHA-512".to_string(),
            iterations: 4096,
            salt: Bytes::from_static(&[0xaa, 0xbb]),
            salted_password: Bytes::from_static(&[0x01]),
        }],
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x2e, // @0  length u32 = 46 (8 header bytes + 38 body bytes)
        0x00, 0x2f,             // @4  api_key u16 = 47 (CreateUser)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x03, // @8  correlation_id u32 = 3
        // ---- UserCredentialsRequest body, 38 bytes ----
        0x00, 0x02, b'a', b'l', //     name string = "al"
        0x00, 0x00, 0x00, 0x01, //     credentials array: count = 1
        //   -- ScramCredentialUpsert --
        0x00, 0x0d,             //       mechanism string: u16 length = 13
        b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'5', b'1', b'2',
        0x00, 0x00, 0x10, 0x00, //       iterations u32 = 4096
        0x00, 0x00, 0x00, 0x02, //       salt bytes: i32 length = 2
        0xaa, 0xbb,             //       the salt
        0x00, 0x00, 0x00, 0x01, //       salted_password bytes: i32 length = 1
        0x01,                   //       Hi(password, salt, iterations) (1 byte here)
    ];
    check_request(&request, 3, &golden);
}

#[test]
fn golden_create_acls_request() {
    let request = Request::CreateAcls(CreateAclsRequest {
        acls: vec![AclEntry {
            principal: "User:a".to_string(),
            host: "*".to_string(),
            resource_type: "queue".to_string(),
            pattern_type: "prefixed".to_string(),
            name: "j.".to_string(),
            operation: "Read".to_string(),
            permission: "allow".to_string(),
        }],
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x39, // @0  length u32 = 57 (8 header bytes + 49 body bytes)
        0x00, 0x33,             // @4  api_key u16 = 51 (CreateAcls)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x04, // @8  correlation_id u32 = 4
        // ---- CreateAclsRequest body, 49 bytes ----
        0x00, 0x00, 0x00, 0x01, //     acls array: count = 1
        //   -- AclEntry: seven strings (u16 length, UTF-8) --
        0x00, 0x06, b'U', b's', b'e', b'r', b':', b'a', // principal
        0x00, 0x01, b'*',                               // host
        0x00, 0x05, b'q', b'u', b'e', b'u', b'e',       // resource_type
        0x00, 0x08, b'p', b'r', b'e', b'f', b'i', b'x', b'e', b'd', // pattern_type
        0x00, 0x02, b'j', b'.',                         // name
        0x00, 0x04, b'R', b'e', b'a', b'd',             // operation
        0x00, 0x05, b'a', b'l', b'l', b'o', b'w',       // permission
    ];
    check_request(&request, 4, &golden);
}

#[test]
fn golden_describe_acls_request() {
    let request = Request::DescribeAcls(AclFilterRequest {
        principal: Some("User:a".to_string()),
        host: None,
        resource_type: Some("topic".to_string()),
        pattern: "match".to_string(),
        name: Some("t".to_string()),
        operation: None,
        permission: None,
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x27, // @0  length u32 = 39 (8 header bytes + 31 body bytes)
        0x00, 0x34,             // @4  api_key u16 = 52 (DescribeAcls)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x05, // @8  correlation_id u32 = 5
        // ---- AclFilterRequest body, 31 bytes ----
        0x00, 0x06, b'U', b's', b'e', b'r', b':', b'a', // principal: nullable string
        0xff, 0xff,                                     // host: null (i16 -1)
        0x00, 0x05, b't', b'o', b'p', b'i', b'c',       // resource_type
        0x00, 0x05, b'm', b'a', b't', b'c', b'h',       // pattern string
        0x00, 0x01, b't',                               // name
        0xff, 0xff,                                     // operation: null
        0xff, 0xff,                                     // permission: null
    ];
    check_request(&request, 5, &golden);
}

#[test]
fn golden_connection_blocked_push() {
    let push = Request::ConnectionBlocked(ConnectionBlockedPush {
        blocked: true,
        reason: Some("low on disk".to_string()),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x16, // @0  length u32 = 22 (8 header bytes + 14 body bytes)
        0x00, 0x36,             // @4  api_key u16 = 54 (ConnectionBlocked, push)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x00, // @8  correlation_id u32 = 0 (not an answer to a request)
        // ---- ConnectionBlockedPush body, 14 bytes ----
        0x01,                   //     blocked bool = true
        0x00, 0x0b, b'l', b'o', b'w', b' ', b'o', b'n', b' ', b'd', b'i', b's', b'k', // reason
    ];
    check_push(&push, 0, &golden);
}

#[test]
fn golden_alter_user_credentials_and_delete_user_requests() {
    // AlterUserCredentials carries CreateUser's body under its own key.
    let request = Request::AlterUserCredentials(UserCredentialsRequest {
        name: "al".to_string(),
        credentials: Vec::new(),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x10, // @0  length u32 = 16 (8 header bytes + 8 body bytes)
        0x00, 0x30,             // @4  api_key u16 = 48 (AlterUserCredentials)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x05, // @8  correlation_id u32 = 5
        // ---- UserCredentialsRequest body, 8 bytes ----
        0x00, 0x02, b'a', b'l', //     name string = "al"
        0x00, 0x00, 0x00, 0x00, //     credentials array: count = 0
    ];
    check_request(&request, 5, &golden);

    let request = Request::DeleteUser(DeleteUserRequest {
        name: "al".to_string(),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0c, // @0  length u32 = 12 (8 header bytes + 4 body bytes)
        0x00, 0x31,             // @4  api_key u16 = 49 (DeleteUser)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x06, // @8  correlation_id u32 = 6
        // ---- DeleteUserRequest body, 4 bytes ----
        0x00, 0x02, b'a', b'l', //     name string = "al"
    ];
    check_request(&request, 6, &golden);

    // A refusal by ACLs: error code 46 (Unauthorized) with the broker's words.
    let response = Response::DeleteUser(UserAdminResponse {
        error: ErrorCode::Unauthorized,
        error_message: Some("no".to_string()),
    });
    let header = FrameHeader {
        api_key: ApiKey::DeleteUser.code(),
        api_version: 0,
        correlation_id: 6,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0e, // @0  length u32 = 14 (8 header bytes + 6 body bytes)
        0x00, 0x31,             // @4  api_key u16 = 49 (DeleteUser), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x06, // @8  correlation_id u32 = 6, echoed
        // ---- UserAdminResponse body, 6 bytes ----
        0x00, 0x2e,             //     error u16 = 46 (Unauthorized)
        0x00, 0x02, b'n', b'o', //     error_message nullable string = "no"
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_list_users_request_and_response() {
    let request = Request::ListUsers(ListUsersRequest {});
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes; the body is empty ----
        0x00, 0x00, 0x00, 0x08, // @0  length u32 = 8 (8 header bytes + 0 body bytes)
        0x00, 0x32,             // @4  api_key u16 = 50 (ListUsers)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7
    ];
    check_request(&request, 7, &golden);

    let response = Response::ListUsers(ListUsersResponse {
        error: ErrorCode::None,
        error_message: None,
        users: vec![UserListing {
            name: "al".to_string(),
            credentials: vec![UserCredentialInfo {
                mechanism: "SCRAM-SHA-256".to_string(),
                iterations: 4096,
            }],
        }],
    });
    let header = FrameHeader {
        api_key: ApiKey::ListUsers.code(),
        api_version: 0,
        correlation_id: 7,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x2b, // @0  length u32 = 43 (8 header bytes + 35 body bytes)
        0x00, 0x32,             // @4  api_key u16 = 50 (ListUsers), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7, echoed
        // ---- ListUsersResponse body, 35 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null
        0x00, 0x00, 0x00, 0x01, //     users array: count = 1
        //   -- UserListing --
        0x00, 0x02, b'a', b'l', //       name string = "al"
        0x00, 0x00, 0x00, 0x01, //       credentials array: count = 1
        //     -- UserCredentialInfo: a mechanism and its iterations, never a key --
        0x00, 0x0d,             //         mechanism string: u16 length = 13
        b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'2', b'5', b'6',
        0x00, 0x00, 0x10, 0x00, //         iterations u32 = 4096
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_describe_cluster_request_and_response() {
    let request = Request::DescribeCluster(DescribeClusterRequest {});
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes; the body is empty ----
        0x00, 0x00, 0x00, 0x08, // @0  length u32 = 8 (8 header bytes + 0 body bytes)
        0x00, 0x37,             // @4  api_key u16 = 55 (DescribeCluster)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x05, // @8  correlation_id u32 = 5
    ];
    check_request(&request, 5, &golden);

    let response = Response::DescribeCluster(DescribeClusterResponse {
        error: ErrorCode::None,
        error_message: None,
        node_id: 2,
        cluster_id: Some("ab".to_string()),
        leader_id: 1,
        role: "leader".to_string(),
        term: 3,
        last_log_index: 9,
        last_applied_index: 9,
        nodes: vec![ClusterNodeEntry {
            node_id: 1,
            address: "h:1".to_string(),
            voter: true,
        }],
    });
    let header = FrameHeader {
        api_key: ApiKey::DescribeCluster.code(),
        api_version: 0,
        correlation_id: 5,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x52, // @0  length u32 = 82 (8 header bytes + 74 body bytes)
        0x00, 0x37,             // @4  api_key u16 = 55 (DescribeCluster), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x05, // @8  correlation_id u32 = 5, echoed
        // ---- DescribeClusterResponse body, 74 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null
        0, 0, 0, 0, 0, 0, 0, 2, //     node_id u64 = 2
        0x00, 0x02, b'a', b'b', //     cluster_id nullable string = "ab"
        0, 0, 0, 0, 0, 0, 0, 1, //     leader_id i64 = 1 (-1: none)
        0x00, 0x06, b'l', b'e', b'a', b'd', b'e', b'r', // role string = "leader"
        0, 0, 0, 0, 0, 0, 0, 3, //     term u64 = 3
        0, 0, 0, 0, 0, 0, 0, 9, //     last_log_index u64 = 9
        0, 0, 0, 0, 0, 0, 0, 9, //     last_applied_index u64 = 9
        0x00, 0x00, 0x00, 0x01, //     nodes array: count = 1
        //   -- ClusterNodeEntry --
        0, 0, 0, 0, 0, 0, 0, 1, //       node_id u64 = 1
        0x00, 0x03, b'h', b':', b'1', // address string = "h:1"
        0x01,                   //       voter bool = true
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_describe_replicas_request_and_response() {
    let request = Request::DescribeReplicas(DescribeReplicasRequest {
        topic: "t".to_string(),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0b, // @0  length u32 = 11 (8 header bytes + 3 body bytes)
        0x00, 0x3a,             // @4  api_key u16 = 58 (DescribeReplicas)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7
        // ---- DescribeReplicasRequest body, 3 bytes ----
        0x00, 0x01, b't',       //     topic string = "t"
    ];
    check_request(&request, 7, &golden);

    let response = Response::DescribeReplicas(DescribeReplicasResponse {
        error: ErrorCode::None,
        error_message: None,
        node_id: 1,
        partitions: vec![ReplicaPartitionEntry {
            partition: 0,
            replicas: vec![1, 2],
            leader: 1,
            term: 3,
            followers: vec![ReplicaFollowerEntry {
                node_id: 2,
                lag_entries: 5,
                in_sync: false,
            }],
        }],
    });
    let header = FrameHeader {
        api_key: ApiKey::DescribeReplicas.code(),
        api_version: 0,
        correlation_id: 7,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x55, // @0  length u32 = 85 (8 header bytes + 77 body bytes)
        0x00, 0x3a,             // @4  api_key u16 = 58 (DescribeReplicas), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x07, // @8  correlation_id u32 = 7, echoed
        // ---- DescribeReplicasResponse body, 77 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null
        0, 0, 0, 0, 0, 0, 0, 1, //     node_id u64 = 1
        0x00, 0x00, 0x00, 0x01, //     partitions array count u32 = 1
        // partitions[0]: ReplicaPartitionEntry, 61 bytes
        0x00, 0x00, 0x00, 0x00, //     partition u32 = 0
        0x00, 0x00, 0x00, 0x02, //     replicas array count u32 = 2
        0, 0, 0, 0, 0, 0, 0, 1, //     replicas[0] u64 = 1
        0, 0, 0, 0, 0, 0, 0, 2, //     replicas[1] u64 = 2
        0, 0, 0, 0, 0, 0, 0, 1, //     leader i64 = 1
        0, 0, 0, 0, 0, 0, 0, 3, //     term u64 = 3
        0x00, 0x00, 0x00, 0x01, //     followers array count u32 = 1
        0, 0, 0, 0, 0, 0, 0, 2, //     followers[0].node_id u64 = 2
        0, 0, 0, 0, 0, 0, 0, 5, //     followers[0].lag_entries u64 = 5
        0x00,                   //     followers[0].in_sync bool = false
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_find_coordinator_request_and_responses() {
    let request = Request::FindCoordinator(FindCoordinatorRequest {
        key: "g".to_string(),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0b, // @0  length u32 = 11 (8 header bytes + 3 body bytes)
        0x00, 0x3c,             // @4  api_key u16 = 60 (FindCoordinator)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x05, // @8  correlation_id u32 = 5
        // ---- FindCoordinatorRequest body, 3 bytes ----
        0x00, 0x01, b'g',       //     key string = "g"
    ];
    check_request(&request, 5, &golden);

    let header = FrameHeader {
        api_key: ApiKey::FindCoordinator.code(),
        api_version: 0,
        correlation_id: 5,
    };
    let response = Response::FindCoordinator(FindCoordinatorResponse {
        error: ErrorCode::None,
        error_message: None,
        coordinator: BrokerInfo {
            node_id: 2,
            host: "h".to_string(),
            port: 9,
        },
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x15, // @0  length u32 = 21 (8 header bytes + 13 body bytes)
        0x00, 0x3c,             // @4  api_key u16 = 60 (FindCoordinator), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x05, // @8  correlation_id u32 = 5, echoed
        // ---- FindCoordinatorResponse body, 13 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null
        0x00, 0x00, 0x00, 0x02, //     coordinator.node_id i32 = 2
        0x00, 0x01, b'h',       //     coordinator.host string = "h"
        0x00, 0x09,             //     coordinator.port u16 = 9
    ];
    check_response(&response, header, &golden);

    // None known yet (an election): NotCoordinator, node -1.
    let response = Response::FindCoordinator(FindCoordinatorResponse {
        error: ErrorCode::NotCoordinator,
        error_message: None,
        coordinator: BrokerInfo {
            node_id: -1,
            host: String::new(),
            port: 0,
        },
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x14, // @0  length u32 = 20 (8 header bytes + 12 body bytes)
        0x00, 0x3c,             // @4  api_key u16 = 60 (FindCoordinator), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x05, // @8  correlation_id u32 = 5, echoed
        // ---- FindCoordinatorResponse body, 12 bytes ----
        0x00, 0x32,             //     error u16 = 50 (NotCoordinator)
        0xff, 0xff,             //     error_message nullable string = null
        0xff, 0xff, 0xff, 0xff, //     coordinator.node_id i32 = -1
        0x00, 0x00,             //     coordinator.host string = ""
        0x00, 0x00,             //     coordinator.port u16 = 0
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_add_node_and_remove_node_requests_and_a_refusal() {
    let request = Request::AddNode(AddNodeRequest {
        node_id: 4,
        address: "h:9".to_string(),
    });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x15, // @0  length u32 = 21 (8 header bytes + 13 body bytes)
        0x00, 0x38,             // @4  api_key u16 = 56 (AddNode)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x06, // @8  correlation_id u32 = 6
        // ---- AddNodeRequest body, 13 bytes ----
        0, 0, 0, 0, 0, 0, 0, 4, //     node_id u64 = 4
        0x00, 0x03, b'h', b':', b'9', // address string = "h:9"
    ];
    check_request(&request, 6, &golden);

    let request = Request::RemoveNode(RemoveNodeRequest { node_id: 4 });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x10, // @0  length u32 = 16 (8 header bytes + 8 body bytes)
        0x00, 0x39,             // @4  api_key u16 = 57 (RemoveNode)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x06, // @8  correlation_id u32 = 6
        // ---- RemoveNodeRequest body, 8 bytes ----
        0, 0, 0, 0, 0, 0, 0, 4, //     node_id u64 = 4
    ];
    check_request(&request, 6, &golden);

    let response = Response::AddNode(StreamAdminResponse {
        error: ErrorCode::MembershipRefused,
        error_message: Some("no".to_string()),
    });
    let header = FrameHeader {
        api_key: ApiKey::AddNode.code(),
        api_version: 0,
        correlation_id: 6,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x0e, // @0  length u32 = 14 (8 header bytes + 6 body bytes)
        0x00, 0x38,             // @4  api_key u16 = 56 (AddNode), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x06, // @8  correlation_id u32 = 6, echoed
        // ---- StreamAdminResponse body, 6 bytes ----
        0x00, 0x30,             //     error u16 = 48 (MembershipRefused)
        0x00, 0x02, b'n', b'o', //     error_message nullable string = "no"
    ];
    check_response(&response, header, &golden);
}

#[test]
fn golden_cancel_drain_request() {
    // Its answer is a RebalanceResponse (golden_rebalance_request_and_response).
    let request = Request::CancelDrain(CancelDrainRequest { node_id: 3 });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x10, // @0  length u32 = 16 (8 header bytes + 8 body bytes)
        0x00, 0x3d,             // @4  api_key u16 = 61 (CancelDrain)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x09, // @8  correlation_id u32 = 9
        // ---- CancelDrainRequest body, 8 bytes ----
        0, 0, 0, 0, 0, 0, 0, 3, //     node_id u64 = 3
    ];
    check_request(&request, 9, &golden);
}

#[test]
fn golden_rebalance_request_and_response() {
    let request = Request::Rebalance(RebalanceRequest { start: true });
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x09, // @0  length u32 = 9 (8 header bytes + 1 body byte)
        0x00, 0x3b,             // @4  api_key u16 = 59 (Rebalance)
        0x00, 0x00,             // @6  api_version u16 = 0
        0x00, 0x00, 0x00, 0x08, // @8  correlation_id u32 = 8
        // ---- RebalanceRequest body, 1 byte ----
        0x01,                   //     start bool = true
    ];
    check_request(&request, 8, &golden);

    let response = Response::Rebalance(RebalanceResponse {
        error: ErrorCode::None,
        error_message: None,
        moves: vec![ReplicaMoveEntry {
            name: "t".to_string(),
            partition: 2,
            from: vec![1, 3],
            to: vec![1, 4],
        }],
    });
    let header = FrameHeader {
        api_key: ApiKey::Rebalance.code(),
        api_version: 0,
        correlation_id: 8,
    };
    #[rustfmt::skip]
    let golden = [
        // ---- frame header, 12 bytes ----
        0x00, 0x00, 0x00, 0x43, // @0  length u32 = 67 (8 header bytes + 59 body bytes)
        0x00, 0x3b,             // @4  api_key u16 = 59 (Rebalance), echoed
        0x00, 0x00,             // @6  api_version u16 = 0, echoed
        0x00, 0x00, 0x00, 0x08, // @8  correlation_id u32 = 8, echoed
        // ---- RebalanceResponse body, 59 bytes ----
        0x00, 0x00,             //     error u16 = 0 (None)
        0xff, 0xff,             //     error_message nullable string = null
        0x00, 0x00, 0x00, 0x01, //     moves array count u32 = 1
        // moves[0]: ReplicaMoveEntry, 51 bytes
        0x00, 0x01, b't',       //     name string = "t"
        0, 0, 0, 0, 0, 0, 0, 2, //     partition i64 = 2 (-1: a queue)
        0x00, 0x00, 0x00, 0x02, //     from array count u32 = 2
        0, 0, 0, 0, 0, 0, 0, 1, //     from[0] u64 = 1
        0, 0, 0, 0, 0, 0, 0, 3, //     from[1] u64 = 3
        0x00, 0x00, 0x00, 0x02, //     to array count u32 = 2
        0, 0, 0, 0, 0, 0, 0, 1, //     to[0] u64 = 1
        0, 0, 0, 0, 0, 0, 0, 4, //     to[1] u64 = 4
    ];
    check_response(&response, header, &golden);
}
