//! The binary encoding of what nodes send each other and of the raft logs' entries:
//! MessagePack, written and read by `rmp-serde` (docs/CLUSTER.md, "Encodings").
//!
//! Structs are MessagePack maps keyed by field name (as in JSON, so a field added with a
//! serde default still reads and `skip_serializing_if` is allowed); enums are externally
//! tagged; byte strings marked with [`bytes_field`] are MessagePack `bin`, copied once, where
//! JSON carried them as base64 text (four characters for three bytes, encoded and escaped
//! per character: most of a replicated partition's CPU before this encoding).

use serde::{Deserialize, Serialize};

/// Deepest nesting a decoder accepts (as serde_json's limit): the types nest a few levels,
/// and the limit keeps a hostile frame from exhausting a task's stack.
pub const DEPTH_MAX: usize = 128;

/// Appends the encoding of `value` to `out`.
///
/// # Errors
/// A value serde cannot write (a map with non-string keys is fine; a failing `Serialize`
/// impl is not).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> std::io::Result<()> {
    value
        .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(std::io::Error::other)
}

/// The encoding of `value`.
///
/// # Errors
/// As [`encode_into`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes one value from the start of `bytes` (bytes after it are not read).
///
/// # Errors
/// Bytes that are not the MessagePack of a `T`, or nest deeper than [`DEPTH_MAX`].
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> std::io::Result<T> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    deserializer.set_max_depth(DEPTH_MAX);
    T::deserialize(&mut deserializer).map_err(std::io::Error::other)
}

/// The serde helper for `Bytes` fields, in storage so the domain modules use it too.
pub(crate) use crate::storage::bytes_field;

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Carrier {
        #[serde(with = "bytes_field")]
        data: Bytes,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    }

    #[test]
    fn bytes_are_a_bin_string_here_and_base64_in_json() {
        let carrier = Carrier {
            data: Bytes::from_static(&[0, 1, 0xff]),
            note: None,
        };
        let encoded = encode(&carrier).expect("encodes");
        // fixmap of 1, fixstr "data", bin8 of 3 bytes.
        assert_eq!(
            encoded,
            [0x81, 0xa4, b'd', b'a', b't', b'a', 0xc4, 3, 0, 1, 0xff]
        );
        assert_eq!(decode::<Carrier>(&encoded).expect("decodes"), carrier);
        let json = serde_json::to_string(&carrier).expect("json");
        assert_eq!(json, r#"{"data":"AAH/"}"#);
        assert_eq!(
            serde_json::from_str::<Carrier>(&json).expect("json decodes"),
            carrier
        );
    }

    #[test]
    fn nesting_past_the_limit_is_refused_not_a_stack_overflow() {
        // 100,000 nested one-element arrays, then a zero.
        let mut bytes = vec![0x91u8; 100_000];
        bytes.push(0);
        let error = decode::<serde_json::Value>(&bytes).expect_err("too deep");
        assert!(error.to_string().contains("depth"), "{error}");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode::<Carrier>(&[0xc1]).is_err());
        assert!(decode::<Carrier>(&[]).is_err());
        assert!(decode::<Carrier>(&[0x81, 0xa4, b'd', b'a', b't', b'a', 0xc4, 9, 0]).is_err());
    }
}
