//! Arbitrary bytes as one Kafka request frame after its size prefix (header, then body)
//! through the Kafka front end's decoder (broker/src/frontend/kafka.rs `decode_request`):
//! the header checks, the version table, and the `kafka-protocol` crate's decoders.
//! Property: no input panics and no input makes the decoder allocate without bound (the
//! fuzzer's malloc limit turns that into a failure).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wharf_broker::frontend::kafka::decode_request;

fuzz_target!(|data: &[u8]| {
    let _ = decode_request(Bytes::copy_from_slice(data));
});
