//! Property tests of the SASL parsers (`protocol/src/sasl.rs`), the decoders of untrusted
//! login bytes: any input gives `Ok` or `Err` and never panics, and what the client side
//! writes parses back to what it wrote. The same parsers have fuzz targets
//! (`fuzz/fuzz_targets/decode_sasl_*.rs`).

use proptest::prelude::*;
use wharf_protocol::sasl::{
    client_final_message, client_final_without_proof, client_first_bare, parse_client_final,
    parse_client_first, parse_plain, parse_server_final, parse_server_first, ScramMechanism,
    GS2_HEADER,
};

/// Printable ASCII without a comma: what RFC 5802 allows in a nonce.
fn nonce() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[!-+--~]{1,40}").expect("valid regex")
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_client_first(&bytes);
        let _ = parse_client_final(&bytes);
        let _ = parse_server_first(&bytes);
        let _ = parse_server_final(&bytes);
        let _ = parse_plain(&bytes);
    }

    #[test]
    fn client_first_round_trips(user in "[^\u{0}]{1,40}", nonce in nonce()) {
        let message = format!("{GS2_HEADER}{}", client_first_bare(&user, &nonce));
        let parsed = parse_client_first(message.as_bytes()).expect("a message the client writes parses");
        prop_assert_eq!(parsed.user, user);
        prop_assert_eq!(parsed.nonce, nonce);
    }

    #[test]
    fn client_final_round_trips(nonce in nonce(), proof in proptest::collection::vec(any::<u8>(), 32..=64)) {
        let without_proof = client_final_without_proof(&nonce);
        let message = client_final_message(&without_proof, &proof);
        let parsed = parse_client_final(message.as_bytes()).expect("a message the client writes parses");
        prop_assert_eq!(parsed.nonce, nonce);
        prop_assert_eq!(parsed.proof, proof);
        prop_assert_eq!(parsed.without_proof, without_proof);
    }

    #[test]
    fn plain_round_trips(user in "[^\u{0}]{1,40}", password in "[^\u{0}]{1,40}") {
        let message = format!("\u{0}{user}\u{0}{password}");
        let parsed = parse_plain(message.as_bytes()).expect("a well-formed PLAIN message parses");
        prop_assert_eq!(parsed.user, user);
        prop_assert_eq!(parsed.password, password);
    }
}

#[test]
fn credential_matches_only_its_password() {
    for mechanism in ScramMechanism::ALL {
        let credential = mechanism.credential(b"pw", b"salt", 4096);
        assert!(credential.matches_password(b"pw"));
        assert!(!credential.matches_password(b"pW"));
    }
}
