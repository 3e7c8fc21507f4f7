//! `wharf consume --format TEMPLATE`: a kcat-style output template, parsed once and then
//! written for each record.
//!
//! Directives: `%t` topic, `%p` partition, `%o` offset, `%k` key, `%s` value, `%T` timestamp
//! (ms since the Unix epoch), `%h` headers (`name=value` pairs joined by commas, as kcat),
//! `%K` and `%S` the key's and value's length in bytes as stored (before `--encoding`; -1
//! when there is none), `%%` a percent sign. Escapes: `\n`, `\r`, `\t`, `\\`. As in kcat,
//! nothing is added after a record: a template that should print lines ends with `\n`, and
//! a missing key or value prints as nothing. Keys and values are written in the
//! `--encoding` asked for; header values are written as they are. An unknown directive or
//! escape is an error when the template is parsed, not a silent literal.

use std::io::{self, Write};

use wharf_client::ConsumerRecord;

use crate::encoding::Encoding;

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
    KeyBytes,
    ValueBytes,
}

/// What `wharf consume --help` says about templates.
pub const TEMPLATE_HELP: &str = "%t topic, %p partition, %o offset, %k key, %s value, \
%T timestamp (ms), %h headers (name=value,...), %K and %S key and value length in bytes \
(-1 for none), %% a percent sign; escapes \\n \\r \\t \\\\. Nothing is added after a \
record (end the template with \\n for lines), as in kcat";

impl Template {
    /// Parses `text`.
    ///
    /// # Errors
    /// A message naming the unknown directive or escape, or a dangling `%` or `\`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = Vec::new();
        let mut characters = text.chars();
        while let Some(character) = characters.next() {
            let part = match character {
                '%' => match characters.next() {
                    Some('%') => None,
                    Some(directive) => Some(directive_part(directive)?),
                    None => return Err(format!("format {text:?} ends with a lone %")),
                },
                '\\' => {
                    literal.push(escaped_byte(characters.next(), text)?);
                    continue;
                }
                _ => None,
            };
            match part {
                Some(part) => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                }
                None => {
                    let mut utf8 = [0u8; 4];
                    literal.extend_from_slice(character.encode_utf8(&mut utf8).as_bytes());
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template { parts })
    }

    /// Writes `record` as the template says, with keys and values in `encoding`.
    ///
    /// # Errors
    /// Errors of `out`.
    pub fn write(
        &self,
        out: &mut impl Write,
        record: &ConsumerRecord,
        encoding: Encoding,
    ) -> io::Result<()> {
        let length =
            |bytes: &Option<bytes::Bytes>| bytes.as_ref().map_or(-1, |bytes| bytes.len() as i64);
        for part in &self.parts {
            match part {
                Part::Literal(bytes) => out.write_all(bytes)?,
                Part::Topic => out.write_all(record.topic.as_bytes())?,
                Part::Partition => write!(out, "{}", record.partition)?,
                Part::Offset => write!(out, "{}", record.offset)?,
                Part::Timestamp => write!(out, "{}", record.timestamp_ms)?,
                Part::Key => {
                    if let Some(key) = &record.key {
                        out.write_all(&encoding.encode(key))?;
                    }
                }
                Part::Value => {
                    if let Some(value) = &record.value {
                        out.write_all(&encoding.encode(value))?;
                    }
                }
                Part::KeyBytes => write!(out, "{}", length(&record.key))?,
                Part::ValueBytes => write!(out, "{}", length(&record.value))?,
                Part::Headers => {
                    for (index, header) in record.headers.iter().enumerate() {
                        if index > 0 {
                            out.write_all(b",")?;
                        }
                        out.write_all(header.key.as_bytes())?;
                        out.write_all(b"=")?;
                        if let Some(value) = &header.value {
                            out.write_all(value)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn directive_part(directive: char) -> Result<Part, String> {
    Ok(match directive {
        't' => Part::Topic,
        'p' => Part::Partition,
        'o' => Part::Offset,
        'k' => Part::Key,
        's' => Part::Value,
        'T' => Part::Timestamp,
        'h' => Part::Headers,
        'K' => Part::KeyBytes,
        'S' => Part::ValueBytes,
        other => {
            return Err(format!(
                "unknown format directive %{other} (known: %t %p %o %k %s %T %h %K %S %%)"
            ))
        }
    })
}

fn escaped_byte(escape: Option<char>, text: &str) -> Result<u8, String> {
    match escape {
        Some('n') => Ok(b'\n'),
        Some('r') => Ok(b'\r'),
        Some('t') => Ok(b'\t'),
        Some('\\') => Ok(b'\\'),
        Some(other) => Err(format!(
            "unknown escape \\{other} in format (known: \\n \\r \\t \\\\)"
        )),
        None => Err(format!("format {text:?} ends with a lone \\")),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use wharf_client::Header;

    use super::*;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "orders".to_string(),
            partition: 2,
            offset: 41,
            timestamp_ms: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k1")),
            value: Some(Bytes::from_static(b"v\xff\r")),
            headers: vec![
                Header {
                    key: "trace".to_string(),
                    value: Some(Bytes::from_static(b"abc")),
                },
                Header {
                    key: "empty".to_string(),
                    value: None,
                },
            ],
        }
    }

    fn check_render(template: &str, record: &ConsumerRecord, encoding: Encoding, expected: &[u8]) {
        let parsed = Template::parse(template).unwrap();
        let mut out = Vec::new();
        parsed.write(&mut out, record, encoding).unwrap();
        assert_eq!(
            out.escape_ascii().to_string(),
            expected.escape_ascii().to_string(),
            "{template}"
        );
    }

    #[test]
    fn every_directive_and_escape_renders() {
        check_render(
            "%t|%p|%o|%T|%k|%s|%h|%K|%S|%%\\t\\\\\\r\\n",
            &record(),
            Encoding::Text,
            b"orders|2|41|1700000000000|k1|v\xff\r|trace=abc,empty=|2|3|%\t\\\r\n",
        );
    }

    #[test]
    fn keys_and_values_follow_the_encoding_but_lengths_count_stored_bytes() {
        check_render("%k %s %K %S", &record(), Encoding::Hex, b"6b31 76ff0d 2 3");
        check_render("%s", &record(), Encoding::Base64, b"dv8N");
    }

    #[test]
    fn a_missing_key_or_value_prints_nothing_and_its_length_is_minus_one() {
        let mut bare = record();
        bare.key = None;
        bare.value = None;
        bare.headers.clear();
        check_render(
            "[%k][%s][%h] %K %S",
            &bare,
            Encoding::Base64,
            b"[][][] -1 -1",
        );
    }

    #[test]
    fn literal_text_keeps_its_utf8() {
        check_render(
            "\u{e9}%o\u{2192}",
            &record(),
            Encoding::Text,
            "\u{e9}41\u{2192}".as_bytes(),
        );
    }

    #[test]
    fn unknown_directives_and_escapes_are_refused() {
        let unknown = Template::parse("%x").unwrap_err();
        assert!(
            unknown.starts_with("unknown format directive %x"),
            "{unknown}"
        );
        let escape = Template::parse("a\\q").unwrap_err();
        assert!(escape.starts_with("unknown escape \\q"), "{escape}");
        assert!(Template::parse("50%").unwrap_err().contains("lone %"));
        assert!(Template::parse("a\\").unwrap_err().contains("lone \\"));
    }
}
