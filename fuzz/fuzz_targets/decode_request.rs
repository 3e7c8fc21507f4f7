//! Arbitrary bytes as one frame after its length prefix (header, then body) through the
//! broker's request path (broker/src/frontend/native.rs): `decode_frame`, `check_header`,
//! `Request::decode`. The target writes the length prefix so every input is a whole frame
//! and mutations reach the body decoders; `decode_frame` has its own target.
//! Property: no input panics.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use wharf_protocol::api::{check_header, Request};
use wharf_protocol::frame::{decode_frame, FRAME_BYTES_MAX_DEFAULT};

fuzz_target!(|data: &[u8]| {
    let Ok(length) = u32::try_from(data.len()) else {
        return;
    };
    let mut buffer = BytesMut::with_capacity(4 + data.len());
    buffer.put_u32(length);
    buffer.put_slice(data);
    if let Ok(Some(frame)) = decode_frame(&mut buffer, FRAME_BYTES_MAX_DEFAULT) {
        let _ = check_header(&frame.header).and_then(|key| Request::decode(key, frame.body));
    }
});
