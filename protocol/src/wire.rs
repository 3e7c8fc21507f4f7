//! Primitive encodings shared by every request and response body, and the [`Wire`] trait
//! that message types implement.
//!
//! All integers are big-endian. Strings are a u16 byte length plus UTF-8; nullable strings
//! use an i16 length with -1 for null. Byte fields are an i32 length plus the bytes (-1 for
//! null) and decode as zero-copy slices of the frame. Arrays are a u32 element count plus the
//! elements; a count is checked against the bytes left before anything is allocated, so a
//! hostile count costs nothing.
//!
//! Decoding never panics: every read is bounds-checked and returns a typed [`DecodeError`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why a body or frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended inside `field`.
    Truncated {
        field: &'static str,
        need_bytes: usize,
        have_bytes: usize,
    },
    /// A string field is not UTF-8.
    InvalidUtf8 { field: &'static str },
    /// A length or count is negative (other than the null marker) or impossible.
    InvalidLength { field: &'static str, length: i64 },
    /// An enumerated field has a value this version does not define.
    InvalidValue { field: &'static str, value: i64 },
    /// Bytes were left after the last field of a body.
    TrailingBytes { extra_bytes: usize },
    /// A frame's declared length exceeds the limit.
    FrameTooLarge { declared_bytes: u32, bytes_max: u32 },
    /// A frame's declared length is smaller than its header.
    FrameTooSmall { declared_bytes: u32 },
    /// The api key is not one this build knows.
    UnknownApiKey { api_key: u16 },
    /// The api version is outside the supported range.
    UnsupportedVersion {
        api_key: u16,
        api_version: u16,
        min_version: u16,
        max_version: u16,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated {
                field,
                need_bytes,
                have_bytes,
            } => write!(
                formatter,
                "truncated {field}: need {need_bytes} bytes, have {have_bytes}"
            ),
            DecodeError::InvalidUtf8 { field } => write!(formatter, "{field} is not valid utf-8"),
            DecodeError::InvalidLength { field, length } => {
                write!(formatter, "invalid length {length} for {field}")
            }
            DecodeError::InvalidValue { field, value } => {
                write!(formatter, "invalid value {value} for {field}")
            }
            DecodeError::TrailingBytes { extra_bytes } => {
                write!(formatter, "{extra_bytes} unexpected bytes after the body")
            }
            DecodeError::FrameTooLarge {
                declared_bytes,
                bytes_max,
            } => write!(
                formatter,
                "frame of {declared_bytes} bytes exceeds max {bytes_max}"
            ),
            DecodeError::FrameTooSmall { declared_bytes } => write!(
                formatter,
                "frame of {declared_bytes} bytes is smaller than a frame header"
            ),
            DecodeError::UnknownApiKey { api_key } => write!(formatter, "unknown api key {api_key}"),
            DecodeError::UnsupportedVersion {
                api_key,
                api_version,
                min_version,
                max_version,
            } => write!(
                formatter,
                "api key {api_key} version {api_version} is not supported (supported {min_version}..={max_version})"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A bounds-checked cursor over a body.
#[derive(Debug, Clone)]
pub struct Reader {
    bytes: Bytes,
}

impl Reader {
    /// A reader over `bytes`.
    pub fn new(bytes: Bytes) -> Self {
        Reader { bytes }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Fails unless every byte was read.
    ///
    /// # Errors
    /// `DecodeError::TrailingBytes`.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                extra_bytes: self.bytes.len(),
            })
        }
    }

    fn need(&self, field: &'static str, need_bytes: usize) -> Result<(), DecodeError> {
        if self.bytes.len() < need_bytes {
            return Err(DecodeError::Truncated {
                field,
                need_bytes,
                have_bytes: self.bytes.len(),
            });
        }
        Ok(())
    }

    /// Takes `count` bytes as a zero-copy slice.
    ///
    /// # Errors
    /// `DecodeError::Truncated`.
    pub fn take(&mut self, field: &'static str, count: usize) -> Result<Bytes, DecodeError> {
        self.need(field, count)?;
        Ok(self.bytes.split_to(count))
    }

    /// Reads a u8.
    ///
    /// # Errors
    /// `DecodeError::Truncated`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(field, 1)?;
        Ok(self.bytes.get_u8())
    }

    /// Reads a big-endian u16.
    ///
    /// # Errors
    /// `DecodeError::Truncated`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(field, 2)?;
        Ok(self.bytes.get_u16())
    }

    /// Reads a big-endian u32.
    ///
    /// # Errors
    /// `DecodeError::Truncated`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(field, 4)?;
        Ok(self.bytes.get_u32())
    }

    /// Reads a big-endian u64.
    ///
    /// # Errors
    /// `DecodeError::Truncated`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(field, 8)?;
        Ok(self.bytes.get_u64())
    }

    /// Reads an array element count and checks that `count * element_bytes_min` bytes remain.
    ///
    /// # Errors
    /// `DecodeError::Truncated` or `DecodeError::InvalidLength`.
    pub fn count(
        &mut self,
        field: &'static str,
        element_bytes_min: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.u32(field)? as usize;
        let need = count.saturating_mul(element_bytes_min.max(1));
        if need > self.bytes.len() {
            return Err(DecodeError::InvalidLength {
                field,
                length: count as i64,
            });
        }
        Ok(count)
    }
}

/// A value with a fixed wire encoding.
pub trait Wire: Sized {
    /// Smallest encoding in bytes (bounds array counts before allocating).
    const BYTES_MIN: usize;
    /// Appends the encoding to `out`.
    fn encode(&self, out: &mut BytesMut);
    /// Reads one value.
    ///
    /// # Errors
    /// The first `DecodeError` met.
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError>;
}

macro_rules! wire_int {
    ($type:ty, $unsigned:ident, $put:ident, $bytes:expr) => {
        impl Wire for $type {
            const BYTES_MIN: usize = $bytes;
            fn encode(&self, out: &mut BytesMut) {
                out.$put(*self);
            }
            fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
                Ok(reader.$unsigned(field)? as $type)
            }
        }
    };
}

wire_int!(u8, u8, put_u8, 1);
wire_int!(i8, u8, put_i8, 1);
wire_int!(u16, u16, put_u16, 2);
wire_int!(i16, u16, put_i16, 2);
wire_int!(u32, u32, put_u32, 4);
wire_int!(i32, u32, put_i32, 4);
wire_int!(u64, u64, put_u64, 8);
wire_int!(i64, u64, put_i64, 8);

impl Wire for bool {
    const BYTES_MIN: usize = 1;
    fn encode(&self, out: &mut BytesMut) {
        out.put_u8(u8::from(*self));
    }
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        match reader.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::InvalidValue {
                field,
                value: i64::from(other),
            }),
        }
    }
}

impl Wire for String {
    const BYTES_MIN: usize = 2;
    fn encode(&self, out: &mut BytesMut) {
        // Strings on the wire are names and messages; longer ones are cut at a char boundary.
        let mut end = self.len().min(u16::MAX as usize);
        while !self.is_char_boundary(end) {
            end -= 1;
        }
        out.put_u16(end as u16);
        out.put_slice(&self.as_bytes()[..end]);
    }
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        let length = reader.u16(field)? as usize;
        let bytes = reader.take(field, length)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { field })
    }
}

impl Wire for Option<String> {
    const BYTES_MIN: usize = 2;
    fn encode(&self, out: &mut BytesMut) {
        match self {
            None => out.put_i16(-1),
            Some(text) => {
                // The length is an i16 here (-1 is null): longer text is cut at a char
                // boundary rather than encoded as a negative length.
                let mut end = text.len().min(i16::MAX as usize);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                out.put_i16(end as i16);
                out.put_slice(&text.as_bytes()[..end]);
            }
        }
    }
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        let length = reader.u16(field)? as i16;
        if length == -1 {
            return Ok(None);
        }
        if length < 0 {
            return Err(DecodeError::InvalidLength {
                field,
                length: i64::from(length),
            });
        }
        let bytes = reader.take(field, length as usize)?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| DecodeError::InvalidUtf8 { field })
    }
}

impl Wire for Bytes {
    const BYTES_MIN: usize = 4;
    fn encode(&self, out: &mut BytesMut) {
        let length = u32::try_from(self.len()).expect("byte fields are bounded by the frame size");
        out.put_u32(length);
        out.put_slice(self);
    }
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        let length = reader.u32(field)? as i32;
        if length < 0 {
            return Err(DecodeError::InvalidLength {
                field,
                length: i64::from(length),
            });
        }
        reader.take(field, length as usize)
    }
}

impl Wire for Option<Bytes> {
    const BYTES_MIN: usize = 4;
    fn encode(&self, out: &mut BytesMut) {
        match self {
            None => out.put_i32(-1),
            Some(bytes) => bytes.encode(out),
        }
    }
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        let length = reader.u32(field)? as i32;
        if length == -1 {
            return Ok(None);
        }
        if length < 0 {
            return Err(DecodeError::InvalidLength {
                field,
                length: i64::from(length),
            });
        }
        reader.take(field, length as usize).map(Some)
    }
}

impl Wire for [u8; 16] {
    const BYTES_MIN: usize = 16;
    fn encode(&self, out: &mut BytesMut) {
        out.put_slice(self);
    }
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        let bytes = reader.take(field, 16)?;
        let mut out = [0u8; 16];
        out.copy_from_slice(&bytes);
        Ok(out)
    }
}

impl<T: Wire> Wire for Vec<T> {
    const BYTES_MIN: usize = 4;
    fn encode(&self, out: &mut BytesMut) {
        let count = u32::try_from(self.len()).expect("arrays are bounded by the frame size");
        out.put_u32(count);
        for element in self {
            element.encode(out);
        }
    }
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        let count = reader.count(field, T::BYTES_MIN)?;
        let mut elements = Vec::with_capacity(count);
        for _ in 0..count {
            elements.push(T::decode(reader, field)?);
        }
        Ok(elements)
    }
}

impl<T: Wire> Wire for Option<Vec<T>> {
    const BYTES_MIN: usize = 4;
    fn encode(&self, out: &mut BytesMut) {
        match self {
            None => out.put_i32(-1),
            Some(elements) => elements.encode(out),
        }
    }
    fn decode(reader: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        let mut peek = reader.clone();
        if peek.u32(field)? == u32::MAX {
            *reader = peek;
            return Ok(None);
        }
        Vec::<T>::decode(reader, field).map(Some)
    }
}

/// Declares a message struct whose wire encoding is its fields in order.
#[macro_export]
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $type:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $type ),*
        }

        impl $crate::wire::Wire for $name {
            const BYTES_MIN: usize = 0 $( + <$type as $crate::wire::Wire>::BYTES_MIN )*;
            #[allow(unused_variables)]
            fn encode(&self, out: &mut bytes::BytesMut) {
                $( $crate::wire::Wire::encode(&self.$field, out); )*
            }
            #[allow(unused_variables)]
            fn decode(
                reader: &mut $crate::wire::Reader,
                _field: &'static str,
            ) -> Result<Self, $crate::wire::DecodeError> {
                Ok($name {
                    $( $field: <$type as $crate::wire::Wire>::decode(
                        reader,
                        concat!(stringify!($name), ".", stringify!($field)),
                    )?, )*
                })
            }
        }
    };
}

/// Declares a `#[repr]` enum whose wire encoding is its discriminant.
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $repr:ty {
            $( $(#[$variant_meta:meta])* $variant:ident = $value:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant = $value ),*
        }

        impl $name {
            /// The wire value.
            pub fn code(self) -> $repr {
                self as $repr
            }

            /// The variant for a wire value.
            pub fn from_code(code: $repr) -> Option<Self> {
                match code {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }
        }

        impl $crate::wire::Wire for $name {
            const BYTES_MIN: usize = std::mem::size_of::<$repr>();
            fn encode(&self, out: &mut bytes::BytesMut) {
                $crate::wire::Wire::encode(&self.code(), out);
            }
            fn decode(
                reader: &mut $crate::wire::Reader,
                field: &'static str,
            ) -> Result<Self, $crate::wire::DecodeError> {
                let code = <$repr as $crate::wire::Wire>::decode(reader, field)?;
                $name::from_code(code).ok_or($crate::wire::DecodeError::InvalidValue {
                    field,
                    value: code as i64,
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) {
        let mut out = BytesMut::new();
        value.encode(&mut out);
        let mut reader = Reader::new(out.freeze());
        assert_eq!(T::decode(&mut reader, "value").unwrap(), value);
        reader.finish().unwrap();
    }

    #[test]
    fn primitives_round_trip() {
        round_trip(7u8);
        round_trip(-3i16);
        round_trip(u32::MAX);
        round_trip(i64::MIN);
        round_trip(true);
        round_trip("héllo".to_string());
        round_trip(None::<String>);
        round_trip(Some(String::new()));
        round_trip(Bytes::from_static(b"abc"));
        round_trip(None::<Bytes>);
        round_trip(vec![1u32, 2, 3]);
        round_trip(None::<Vec<u32>>);
        round_trip(Some(Vec::<u32>::new()));
        round_trip([9u8; 16]);
    }

    #[test]
    fn long_nullable_string_is_cut_not_turned_negative() {
        let long = "é".repeat(20_000);
        let mut out = BytesMut::new();
        Some(long.clone()).encode(&mut out);
        let decoded = Option::<String>::decode(&mut Reader::new(out.freeze()), "text").unwrap();
        let decoded = decoded.expect("not null");
        assert!(decoded.len() <= i16::MAX as usize);
        assert!(long.starts_with(&decoded));
    }

    #[test]
    fn hostile_array_count_is_rejected_before_allocating() {
        let mut reader = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xfe, 0, 0]));
        let result = Vec::<u64>::decode(&mut reader, "values");
        assert!(matches!(result, Err(DecodeError::InvalidLength { .. })));
    }

    #[test]
    fn truncated_string_is_an_error() {
        let mut reader = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert!(matches!(
            String::decode(&mut reader, "name"),
            Err(DecodeError::Truncated { field: "name", .. })
        ));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut reader = Reader::new(Bytes::from_static(&[0, 1, 0xff]));
        assert_eq!(
            String::decode(&mut reader, "name"),
            Err(DecodeError::InvalidUtf8 { field: "name" })
        );
    }
}
