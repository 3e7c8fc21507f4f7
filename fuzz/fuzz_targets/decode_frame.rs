//! Arbitrary bytes as a connection's receive buffer into `frame::decode_frame`, taking
//! frames off the front as the connection loop does until one is incomplete or an error.
//! Property: no input panics, and every frame taken consumes exactly its declared bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wharf_protocol::frame::{decode_frame, FRAME_HEADER_BYTES, FRAME_LENGTH_BYTES};

/// Small, so inputs reach both sides of the limit check.
const FRAME_BYTES_MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    loop {
        let before = buffer.len();
        match decode_frame(&mut buffer, FRAME_BYTES_MAX) {
            Ok(Some(frame)) => assert_eq!(
                before - buffer.len(),
                FRAME_LENGTH_BYTES + FRAME_HEADER_BYTES + frame.body.len()
            ),
            Ok(None) | Err(_) => break,
        }
    }
});
