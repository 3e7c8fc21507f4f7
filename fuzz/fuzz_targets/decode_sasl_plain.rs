//! Arbitrary bytes into `sasl::parse_plain`, the PLAIN message (Kafka SaslAuthenticate,
//! AMQP connection.start-ok, the native SaslAuthenticate over TLS).
//! Property: no input panics; a parsed user and password are non-empty and NUL-free.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_protocol::sasl::parse_plain;

fuzz_target!(|data: &[u8]| {
    if let Ok(plain) = parse_plain(data) {
        assert!(!plain.user.is_empty() && !plain.password.is_empty());
        assert!(!plain.user.contains('\0') && !plain.password.contains('\0'));
    }
});
