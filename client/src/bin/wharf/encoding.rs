//! `--encoding text|base64|hex`: how record keys and values are written on standard input
//! (`wharf produce`) and standard output (`wharf consume`), so that any payload, not only
//! UTF-8 text without newlines, round-trips through the command line.
//!
//! `text` passes bytes through unchanged, except where the output is JSON: a JSON string
//! holds only Unicode, so invalid UTF-8 is shown there with U+FFFD (the help says to use
//! base64 or hex for binary payloads). `base64` is the standard alphabet with padding
//! (RFC 4648 section 4, as `base64` and `openssl base64` write it); `hex` is two lowercase
//! digits per byte and reads either case. Decoding never guesses: a malformed input is an
//! error naming what is wrong.

use std::borrow::Cow;

use base64::Engine as _;

/// The `--encoding` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Encoding {
    /// The bytes as they are.
    #[default]
    Text,
    /// Standard base64 with padding (RFC 4648).
    Base64,
    /// Two hex digits per byte.
    Hex,
}

/// Why an input could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What is wrong, in one lowercase phrase.
    pub reason: String,
}

impl Encoding {
    /// `bytes` written in this encoding (text: unchanged, without a copy).
    pub fn encode<'a>(self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        match self {
            Encoding::Text => Cow::Borrowed(bytes),
            Encoding::Base64 => Cow::Owned(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into_bytes(),
            ),
            Encoding::Hex => Cow::Owned(hex_encode(bytes).into_bytes()),
        }
    }

    /// `bytes` in this encoding as a JSON string: text that is not UTF-8 is shown with
    /// U+FFFD, as JSON cannot hold it (base64 and hex are always ASCII).
    pub fn encode_to_string(self, bytes: &[u8]) -> String {
        match self.encode(bytes) {
            Cow::Borrowed(text) => String::from_utf8_lossy(text).into_owned(),
            Cow::Owned(encoded) => String::from_utf8_lossy(&encoded).into_owned(),
        }
    }

    /// The bytes that `input`, written in this encoding, stands for.
    ///
    /// # Errors
    /// [`DecodeError`] for base64 or hex input that is malformed.
    pub fn decode(self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        match self {
            Encoding::Text => Ok(input.to_vec()),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(input)
                .map_err(|error| DecodeError {
                    reason: format!("not valid base64: {error}"),
                }),
            Encoding::Hex => hex_decode(input),
        }
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn hex_decode(input: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if !input.len().is_multiple_of(2) {
        return Err(DecodeError {
            reason: format!("not valid hex: an odd number of digits ({})", input.len()),
        });
    }
    let digit = |position: usize| {
        let character = input[position];
        char::from(character)
            .to_digit(16)
            .and_then(|value| u8::try_from(value).ok())
            .ok_or_else(|| DecodeError {
                reason: format!(
                    "not valid hex: byte {:?} at position {position}",
                    char::from(character)
                ),
            })
    };
    (0..input.len() / 2)
        .map(|index| Ok((digit(2 * index)? << 4) | digit(2 * index + 1)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that text output and line input cannot carry: invalid UTF-8, a NUL, a
    /// newline and a trailing carriage return.
    const AWKWARD: &[u8] = b"\xff\xfe\x00a\nb\r";

    fn check_roundtrip(encoding: Encoding, bytes: &[u8], expected: &str) {
        let encoded = encoding.encode(bytes);
        assert_eq!(&encoded[..], expected.as_bytes(), "{encoding:?}");
        assert_eq!(encoding.encode_to_string(bytes), expected, "{encoding:?}");
        assert_eq!(encoding.decode(&encoded).unwrap(), bytes, "{encoding:?}");
    }

    #[test]
    fn every_encoding_round_trips_awkward_bytes() {
        check_roundtrip(Encoding::Base64, AWKWARD, "//4AYQpiDQ==");
        check_roundtrip(Encoding::Hex, AWKWARD, "fffe00610a620d");
        check_roundtrip(Encoding::Base64, b"", "");
        check_roundtrip(Encoding::Hex, b"", "");
        check_roundtrip(Encoding::Text, b"plain", "plain");
    }

    #[test]
    fn text_passes_bytes_through_but_json_strings_cannot_hold_invalid_utf8() {
        assert_eq!(&Encoding::Text.encode(AWKWARD)[..], AWKWARD);
        assert_eq!(Encoding::Text.decode(AWKWARD).unwrap(), AWKWARD);
        assert_eq!(
            Encoding::Text.encode_to_string(b"f\xff"),
            "f\u{fffd}",
            "JSON needs Unicode"
        );
    }

    #[test]
    fn hex_reads_either_case_and_refuses_malformed_input() {
        assert_eq!(Encoding::Hex.decode(b"FFfe").unwrap(), [0xff, 0xfe]);
        let odd = Encoding::Hex.decode(b"abc").unwrap_err();
        assert_eq!(odd.reason, "not valid hex: an odd number of digits (3)");
        let bad = Encoding::Hex.decode(b"0g").unwrap_err();
        assert_eq!(bad.reason, "not valid hex: byte 'g' at position 1");
    }

    #[test]
    fn base64_refuses_malformed_input() {
        let error = Encoding::Base64.decode(b"not base64!").unwrap_err();
        assert!(error.reason.starts_with("not valid base64: "), "{error:?}");
        assert!(
            Encoding::Base64.decode(b"//4").is_err(),
            "padding is required"
        );
    }
}
