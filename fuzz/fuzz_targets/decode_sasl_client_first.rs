//! Arbitrary bytes into `sasl::parse_client_first`, the SCRAM client-first message every
//! SASL-speaking front end (native, Kafka) parses from an unauthenticated client.
//! Property: no input panics; a parsed message's bare part is a suffix of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_protocol::sasl::parse_client_first;

fuzz_target!(|data: &[u8]| {
    if let Ok(first) = parse_client_first(data) {
        assert!(data.ends_with(first.bare.as_bytes()));
    }
});
