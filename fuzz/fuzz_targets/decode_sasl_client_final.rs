//! Arbitrary bytes into `sasl::parse_client_final`, the SCRAM client-final message.
//! Property: no input panics; a parsed message's part without the proof is a prefix of the
//! input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_protocol::sasl::parse_client_final;

fuzz_target!(|data: &[u8]| {
    if let Ok(last) = parse_client_final(data) {
        assert!(data.starts_with(last.without_proof.as_bytes()));
    }
});
