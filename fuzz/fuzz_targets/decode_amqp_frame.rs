//! Arbitrary bytes as an AMQP 0-9-1 receive buffer after the protocol header, through the
//! AMQP front end's frame decoder (broker/src/frontend/amqp.rs `decode_run`, which takes
//! `decode_frame`'s frames and runs of whole publishes behind a first one): the frame
//! size check against the frame max, the frame-end octet, and the `amq-protocol` crate's
//! method and content-header decoders (under the broker's panic guard). Frames are taken off
//! the front until one is incomplete or an error. Property: no input panics, and every
//! decoded frame consumed bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wharf_broker::frontend::amqp::{decode_run, FRAME_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let mut buffer = BytesMut::from(data);
    loop {
        let before = buffer.len();
        match decode_run(&mut buffer, FRAME_BYTES_MAX) {
            Ok(Some(_)) => assert!(buffer.len() < before, "a frame consumed no bytes"),
            Ok(None) | Err(_) => break,
        }
    }
});
