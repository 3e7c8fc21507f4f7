//! Bad input on the wire: random bytes, an oversized length prefix, a frame cut in half, an
//! unknown api key and an unsupported version. For each, the broker answers with an error or
//! closes that connection, and keeps serving a well-behaved client on another connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use integration_tests::BrokerProcess;
use wharf_protocol::api::encode_request;
use wharf_protocol::frame::{decode_frame, encode_frame, FrameHeader};
use wharf_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
use wharf_protocol::wire::{Reader, Wire};
use wharf_protocol::{ApiKey, ErrorCode, Request, Response};

fn connect(broker: &BrokerProcess) -> TcpStream {
    let stream = TcpStream::connect(broker.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Reads one response frame, or None if the broker closed the connection.
fn read_frame(stream: &mut TcpStream) -> Option<wharf_protocol::Frame> {
    let mut buffer = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) =
            decode_frame(&mut buffer, 64 * 1024 * 1024).expect("broker frames decode")
        {
            return Some(frame);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(count) => buffer.extend_from_slice(&chunk[..count]),
            Err(error) => panic!("read failed: {error}"),
        }
    }
}

/// The error code every response body starts with.
fn error_code_of(frame: &wharf_protocol::Frame) -> ErrorCode {
    let mut reader = Reader::new(frame.body.clone());
    ErrorCode::decode(&mut reader, "error").expect("response starts with an error code")
}

fn assert_closed(stream: &mut TcpStream) {
    assert!(
        read_frame(stream).is_none(),
        "the broker must close the connection"
    );
}

/// A well-behaved client: handshake succeeds.
fn assert_still_serving(broker: &BrokerProcess) {
    let mut stream = connect(broker);
    let mut out = BytesMut::new();
    let request = Request::ApiVersions(ApiVersionsRequest {
        client_name: "good".to_string(),
    });
    encode_request(&request, 42, &mut out);
    stream.write_all(&out).expect("write");
    let frame = read_frame(&mut stream).expect("a response");
    assert_eq!(frame.header.correlation_id, 42);
    let response = Response::decode(ApiKey::ApiVersions, frame.body).expect("decodes");
    let Response::ApiVersions(ApiVersionsResponse { error, apis, .. }) = response else {
        panic!("wrong response type");
    };
    assert_eq!(error, ErrorCode::None);
    assert!(!apis.is_empty());
}

#[test]
fn garbage_and_malformed_frames_close_only_that_connection() {
    let data = tempfile::tempdir().expect("temp dir");
    let broker = BrokerProcess::start(&data.path().join("data"));

    // Random bytes: a nonsense length prefix or a nonsense header.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        let mut stream = connect(&broker);
        let garbage: Vec<u8> = (0..64)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        stream.write_all(&garbage).expect("write");
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Either an error answer and a close, or just a close; never a hang.
        while read_frame(&mut stream).is_some() {}
    }
    assert_still_serving(&broker);

    // An oversized length prefix: a clear error, then the connection closes.
    let mut stream = connect(&broker);
    let mut oversized = vec![0xff, 0xff, 0xff, 0x00];
    oversized.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
    stream.write_all(&oversized).expect("write");
    let frame = read_frame(&mut stream).expect("an error response");
    assert_eq!(error_code_of(&frame), ErrorCode::MessageTooLarge);
    assert_closed(&mut stream);
    assert_still_serving(&broker);

    // A frame cut in half, then the client goes away: nothing breaks.
    let mut stream = connect(&broker);
    let mut out = BytesMut::new();
    encode_request(
        &Request::ApiVersions(ApiVersionsRequest {
            client_name: "half".into(),
        }),
        1,
        &mut out,
    );
    stream.write_all(&out[..out.len() / 2]).expect("write");
    drop(stream);
    assert_still_serving(&broker);

    // An unknown api key: UnknownApiKey, then close.
    let mut stream = connect(&broker);
    let mut out = BytesMut::new();
    encode_frame(
        FrameHeader {
            api_key: 999,
            api_version: 0,
            correlation_id: 5,
        },
        &mut out,
        |_| {},
    );
    stream.write_all(&out).expect("write");
    let frame = read_frame(&mut stream).expect("an error response");
    assert_eq!(frame.header.correlation_id, 5);
    assert_eq!(error_code_of(&frame), ErrorCode::UnknownApiKey);
    assert_closed(&mut stream);

    // An unsupported version: UnsupportedVersion, then close.
    let mut stream = connect(&broker);
    let mut out = BytesMut::new();
    encode_frame(
        FrameHeader {
            api_key: ApiKey::Produce.code(),
            api_version: 99,
            correlation_id: 6,
        },
        &mut out,
        |_| {},
    );
    stream.write_all(&out).expect("write");
    let frame = read_frame(&mut stream).expect("an error response");
    assert_eq!(error_code_of(&frame), ErrorCode::UnsupportedVersion);
    assert_closed(&mut stream);

    // A known api whose body does not decode: InvalidRequest, then close.
    let mut stream = connect(&broker);
    let mut out = BytesMut::new();
    encode_frame(
        FrameHeader {
            api_key: ApiKey::Metadata.code(),
            api_version: 0,
            correlation_id: 7,
        },
        &mut out,
        |body| body.extend_from_slice(&[0x00, 0x00, 0x00, 0x05, 0x00]),
    );
    stream.write_all(&out).expect("write");
    let frame = read_frame(&mut stream).expect("an error response");
    assert_eq!(error_code_of(&frame), ErrorCode::InvalidRequest);
    assert_closed(&mut stream);

    assert_still_serving(&broker);
}
