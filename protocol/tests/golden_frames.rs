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
    Acks, ApiVersionsRequest, MetadataRequest, OffsetCommitResponse, OffsetCommitTopicResponse,
    PartitionError, ProducePartition, ProduceRequest, ProduceTopic,
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
    assert_eq!(frame.header.api_version, 0);
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
