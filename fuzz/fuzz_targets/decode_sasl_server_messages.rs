//! Arbitrary bytes into `sasl::parse_server_first` and `sasl::parse_server_final`, the
//! SCRAM messages the client crate reads from a server it has not authenticated yet.
//! Property: no input panics; a parsed iteration count is within the accepted bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_protocol::sasl::{
    parse_server_final, parse_server_first, SCRAM_ITERATIONS_MAX, SCRAM_ITERATIONS_MIN,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(first) = parse_server_first(data) {
        assert!((SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&first.iterations));
    }
    let _ = parse_server_final(data);
});
