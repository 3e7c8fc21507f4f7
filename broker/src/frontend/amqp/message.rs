//! AMQP message properties to the core's neutral record headers and back, so a message
//! published with pika keeps its properties through storage, reaches `wharf subscribe` with
//! readable headers, and comes back to an AMQP consumer unchanged.
//!
//! Mapping (header name = property): `content-type`, `content-encoding`, `delivery-mode`,
//! `priority`, `correlation-id`, `reply-to`, `message-id`, `timestamp` (seconds), `type`,
//! `user-id`, `app-id`, `cluster-id`, each as text; `expiration` becomes the core's
//! per-message TTL header `x-expiration-ms`. Entries of the `headers` table with a string
//! value become headers of the same name; entries of any other type (numbers, booleans,
//! nested tables, arrays) are kept, with their types, in one header `x-amqp-table` holding
//! the encoded field table, as are string entries whose name a property or the broker
//! uses. A header set by another protocol comes back as a long-string table entry. An
//! integer `x-delay` entry (the delayed-message plugin's) is also the core's delay header;
//! the broker's `x-wharf-*` headers are not delivered to AMQP clients.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::{Bytes, BytesMut};
use wharf_protocol::batch::{Header, Record};

use crate::core::{DELAY_HEADER, EXCHANGE_HEADER, EXPIRATION_HEADER};

/// The header carrying the typed entries of the AMQP `headers` table.
pub const TABLE_HEADER: &str = "x-amqp-table";

const PROPERTY_HEADERS: [&str; 12] = [
    "content-type",
    "content-encoding",
    "delivery-mode",
    "priority",
    "correlation-id",
    "reply-to",
    "message-id",
    "timestamp",
    "type",
    "user-id",
    "app-id",
    "cluster-id",
];

/// Why a message's properties were refused (406 PRECONDITION_FAILED on the channel).
#[derive(Debug)]
pub struct BadProperty(pub String);

/// The neutral headers of a published message's properties.
///
/// # Errors
/// An `expiration` that is not a non-negative integer, as RabbitMQ refuses it.
pub fn headers_from_properties(properties: &AMQPProperties) -> Result<Vec<Header>, BadProperty> {
    let mut headers = Vec::new();
    let mut text = |key: &str, value: &Option<ShortString>| {
        if let Some(value) = value {
            headers.push(header(key, value.as_str().as_bytes()));
        }
    };
    text("content-type", properties.content_type());
    text("content-encoding", properties.content_encoding());
    text("correlation-id", properties.correlation_id());
    text("reply-to", properties.reply_to());
    text("message-id", properties.message_id());
    text("type", properties.kind());
    text("user-id", properties.user_id());
    text("app-id", properties.app_id());
    text("cluster-id", properties.cluster_id());
    if let Some(mode) = properties.delivery_mode() {
        // Nearly every message is 1 (transient) or 2 (persistent): no copy for those.
        let value = match mode {
            1 => Bytes::from_static(b"1"),
            2 => Bytes::from_static(b"2"),
            other => Bytes::from(other.to_string()),
        };
        headers.push(Header {
            key: "delivery-mode".to_string(),
            value: Some(value),
        });
    }
    if let Some(priority) = properties.priority() {
        headers.push(header("priority", priority.to_string().as_bytes()));
    }
    if let Some(timestamp) = properties.timestamp() {
        headers.push(header("timestamp", timestamp.to_string().as_bytes()));
    }
    if let Some(expiration) = properties.expiration() {
        if expiration.as_str().parse::<u64>().is_err() {
            return Err(BadProperty(format!(
                "invalid expiration '{}'",
                expiration.as_str()
            )));
        }
        headers.push(header(EXPIRATION_HEADER, expiration.as_str().as_bytes()));
    }
    if let Some(table) = properties.headers() {
        let mut typed = FieldTable::default();
        for (key, value) in table {
            let key_str = key.as_str();
            let plain = !PROPERTY_HEADERS.contains(&key_str)
                && key_str != TABLE_HEADER
                && key_str != EXCHANGE_HEADER
                && key_str != EXPIRATION_HEADER
                && !key_str.starts_with("x-death-")
                && !key_str.starts_with("x-wharf-");
            match value {
                AMQPValue::LongString(value) if plain => {
                    headers.push(header(key_str, value.as_bytes()));
                }
                AMQPValue::ShortString(value) if plain => {
                    headers.push(header(key_str, value.as_str().as_bytes()));
                }
                other => {
                    typed.insert(key.clone(), other.clone());
                }
            }
        }
        // The delayed-message plugin's integer `x-delay` is the core's delay (a string one
        // is a plain header already). It stays in the table too, so it is delivered as
        // published; the table comes last, so its typed value wins on the way out.
        if let Some(delay) = typed.inner().get(DELAY_HEADER).and_then(value_text) {
            if delay.parse::<i64>().is_ok_and(|delay| delay > 0) {
                headers.push(header(DELAY_HEADER, delay.as_bytes()));
            }
        }
        if !typed.inner().is_empty() {
            headers.push(header(TABLE_HEADER, &encode_table(&typed)));
        }
    }
    Ok(headers)
}

/// Adds the latest death to the `x-death` array of `table` as RabbitMQ does: a message a
/// client republished with its headers (a retry loop) already has the array, whose entry
/// of the same queue and reason counts up and moves to the front, and its
/// `x-first-death-*` headers stay.
fn add_death(table: &mut FieldTable, mut death: FieldTable, timestamp_ms: i64) {
    let text = |entry: &FieldTable, key: &str| entry.inner().get(key).and_then(value_text);
    let mut earlier: Vec<AMQPValue> = match table.inner().get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = earlier.iter().position(|entry| {
        matches!(entry, AMQPValue::FieldTable(entry)
            if text(entry, "queue") == text(&death, "queue")
                && text(entry, "reason") == text(&death, "reason"))
    });
    let count = same
        .and_then(|index| match earlier.remove(index) {
            AMQPValue::FieldTable(entry) => text(&entry, "count")?.parse::<i64>().ok(),
            _ => None,
        })
        .unwrap_or(0);
    if !table.contains_key("x-first-death-reason") {
        for field in ["reason", "queue", "exchange"] {
            if let Some(value) = death.inner().get(field) {
                table.insert(format!("x-first-death-{field}").into(), value.clone());
            }
        }
    }
    death.insert(
        "count".into(),
        AMQPValue::LongLongInt(count.saturating_add(1)),
    );
    death.insert(
        "time".into(),
        AMQPValue::Timestamp(u64::try_from(timestamp_ms / 1000).unwrap_or(0)),
    );
    let mut deaths = FieldArray::default();
    deaths.push(AMQPValue::FieldTable(death));
    for entry in earlier {
        deaths.push(entry);
    }
    table.insert("x-death".into(), AMQPValue::FieldArray(deaths));
}

/// What a stored record carries back out: properties, and the exchange it was published to.
/// A dead-lettered record's `x-death-*` headers become RabbitMQ's `x-death` array (one
/// table: reason, queue, exchange, routing-keys, original-expiration when the message had
/// one, count 1 and time = when the copy was stored) and the `x-first-death-*` headers.
pub fn properties_from_headers(headers: &[Header], timestamp_ms: i64) -> (AMQPProperties, String) {
    let mut properties = AMQPProperties::default();
    let mut table = FieldTable::default();
    let mut exchange = String::new();
    let mut has_table = false;
    let mut death = FieldTable::default();
    for entry in headers {
        // The broker's own bookkeeping (the due time of a delayed message) is not the
        // client's business, as RabbitMQ adds nothing of the kind.
        if entry.key.starts_with("x-wharf-") {
            continue;
        }
        if let Some(field) = entry.key.strip_prefix("x-death-") {
            let value = String::from_utf8_lossy(entry.value.as_deref().unwrap_or_default());
            let value = value.into_owned();
            match field {
                "routing-key" => {
                    let mut keys = FieldArray::default();
                    keys.push(AMQPValue::LongString(LongString::from(value)));
                    death.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
                }
                "reason" | "queue" | "exchange" | "original-expiration" => {
                    death.insert(
                        ShortString::from(field),
                        AMQPValue::LongString(LongString::from(value)),
                    );
                }
                _ => {}
            }
            continue;
        }
        let value = entry.value.as_deref().unwrap_or_default();
        let text = || ShortString::from(String::from_utf8_lossy(value).into_owned());
        // A property is a short string: a longer value (set through another protocol) goes
        // into the headers table under its name instead, whole.
        let fits = String::from_utf8_lossy(value).len() <= SHORT_STRING_MAX;
        let number = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
        };
        properties = match entry.key.as_str() {
            "content-type" if fits => properties.with_content_type(text()),
            "content-encoding" if fits => properties.with_content_encoding(text()),
            "correlation-id" if fits => properties.with_correlation_id(text()),
            "reply-to" if fits => properties.with_reply_to(text()),
            "message-id" if fits => properties.with_message_id(text()),
            "type" if fits => properties.with_type(text()),
            "user-id" if fits => properties.with_user_id(text()),
            "app-id" if fits => properties.with_app_id(text()),
            "cluster-id" if fits => properties.with_cluster_id(text()),
            "delivery-mode" => match number().and_then(|n| u8::try_from(n).ok()) {
                Some(mode) => properties.with_delivery_mode(mode),
                None => properties,
            },
            "priority" => match number().and_then(|n| u8::try_from(n).ok()) {
                Some(priority) => properties.with_priority(priority),
                None => properties,
            },
            "timestamp" => match number() {
                Some(timestamp) => properties.with_timestamp(timestamp),
                None => properties,
            },
            key if key == EXPIRATION_HEADER && fits => properties.with_expiration(text()),
            key if key == EXCHANGE_HEADER => {
                exchange = short_string(String::from_utf8_lossy(value).into_owned())
                    .as_str()
                    .to_owned();
                properties
            }
            TABLE_HEADER => {
                if let Some(typed) = decode_table(value) {
                    for (key, value) in &typed {
                        table.insert(key.clone(), value.clone());
                    }
                    has_table = true;
                }
                properties
            }
            key => {
                if key.len() <= 255 {
                    table.insert(
                        ShortString::from(key),
                        AMQPValue::LongString(LongString::from(value.to_vec())),
                    );
                    has_table = true;
                }
                properties
            }
        };
    }
    if death.contains_key("reason") {
        add_death(&mut table, death, timestamp_ms);
        has_table = true;
    }
    if has_table {
        properties = properties.with_headers(table);
    }
    (properties, exchange)
}

/// Appends the content header and body frames of a message.
pub fn encode_content(
    channel: u16,
    properties: AMQPProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
    scratch: &mut Vec<u8>,
) {
    let header = AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties,
        },
    );
    super::encode_frame_with(&header, out, scratch);
    super::encode_body(channel, body, frame_max, out);
}

/// The routing key and body of a stored record.
/// Most bytes an AMQP short string holds.
pub const SHORT_STRING_MAX: usize = 255;

/// `text` as a short string, cut to [`SHORT_STRING_MAX`] bytes at a character boundary:
/// for names that came in through another protocol (a native publisher's routing key may
/// be longer; RabbitMQ refuses such keys at publish, an AMQP consumer gets the cut key).
pub fn short_string(mut text: String) -> ShortString {
    if text.len() > SHORT_STRING_MAX {
        let mut cut = SHORT_STRING_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    ShortString::from(text)
}

pub fn key_and_body(record: &Record) -> (String, Bytes) {
    let key = record
        .key
        .as_ref()
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .unwrap_or_default();
    (key, record.value.clone().unwrap_or_default())
}

fn header(key: &str, value: &[u8]) -> Header {
    Header {
        key: key.to_string(),
        value: Some(Bytes::copy_from_slice(value)),
    }
}

fn encode_table(table: &FieldTable) -> Vec<u8> {
    match amq_protocol::types::generation::gen_field_table(table)(WriteContext::from(Vec::new())) {
        Ok(context) => context.into_inner().0,
        Err(error) => {
            tracing::error!(%error, "encoding an AMQP field table failed");
            Vec::new()
        }
    }
}

fn decode_table(bytes: &[u8]) -> Option<FieldTable> {
    // Stored headers may come from any front end: check them as a frame is checked.
    if super::nesting::nesting_bound(bytes) > super::nesting::NESTING_MAX {
        return None;
    }
    std::panic::catch_unwind(|| amq_protocol::types::parsing::parse_field_table(bytes))
        .ok()?
        .ok()
        .map(|(_, table)| table)
}

/// A field table's value as text, for the core's string arguments (binding arguments,
/// queue arguments).
pub fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        AMQPValue::ShortString(text) => text.as_str().to_string(),
        AMQPValue::Boolean(flag) => flag.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_typed_headers_round_trip() {
        let mut table = FieldTable::default();
        table.insert("text".into(), AMQPValue::LongString("v".into()));
        table.insert("count".into(), AMQPValue::LongInt(-7));
        table.insert("flag".into(), AMQPValue::Boolean(true));
        let properties = AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c1".into())
            .with_reply_to("r".into())
            .with_expiration("60000".into())
            .with_message_id("m1".into())
            .with_timestamp(1_700_000_000)
            .with_type("t".into())
            .with_app_id("a".into())
            .with_headers(table);
        let headers = headers_from_properties(&properties).expect("valid");
        let (back, _) = properties_from_headers(&headers, 0);
        assert_eq!(back, properties);
    }

    #[test]
    fn bad_expiration_is_refused() {
        let properties = AMQPProperties::default().with_expiration("soon".into());
        assert!(headers_from_properties(&properties).is_err());
    }

    #[test]
    fn a_repeated_death_counts_up_its_entry_and_keeps_the_first_death() {
        let entry = |queue: &str, reason: &str, count: i64| {
            let mut entry = FieldTable::default();
            entry.insert("queue".into(), AMQPValue::LongString(queue.into()));
            entry.insert("reason".into(), AMQPValue::LongString(reason.into()));
            entry.insert("count".into(), AMQPValue::LongLongInt(count));
            entry
        };
        let mut table = FieldTable::default();
        let earlier: Vec<AMQPValue> = vec![
            AMQPValue::FieldTable(entry("other", "expired", 1)),
            AMQPValue::FieldTable(entry("work", "rejected", 2)),
        ];
        table.insert("x-death".into(), AMQPValue::FieldArray(earlier.into()));
        table.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("expired".into()),
        );
        let mut death = FieldTable::default();
        death.insert("queue".into(), AMQPValue::LongString("work".into()));
        death.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        add_death(&mut table, death, 5_000);
        let Some(AMQPValue::FieldArray(deaths)) = table.inner().get("x-death") else {
            panic!("no x-death array: {table:?}");
        };
        let summary: Vec<(Option<String>, Option<String>)> = deaths
            .as_slice()
            .iter()
            .map(|value| match value {
                AMQPValue::FieldTable(entry) => (
                    entry.inner().get("queue").and_then(value_text),
                    entry.inner().get("count").and_then(value_text),
                ),
                _ => (None, None),
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Some("work".to_string()), Some("3".to_string())),
                (Some("other".to_string()), Some("1".to_string()))
            ]
        );
        assert_eq!(
            table
                .inner()
                .get("x-first-death-reason")
                .and_then(value_text),
            Some("expired".to_string())
        );
    }

    #[test]
    fn values_too_long_for_a_short_string_go_to_the_headers_whole() {
        // Goal: a property or name set through another protocol that an AMQP short string
        // cannot hold never reaches the encoder as a short string (it asserts in debug
        // builds and writes a corrupt length byte in release).
        let long = "c".repeat(300);
        let headers = vec![
            header("content-type", long.as_bytes()),
            header("message-id", b"m1"),
        ];
        let (properties, _) = properties_from_headers(&headers, 0);
        assert_eq!(properties.content_type(), &None);
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some("m1")
        );
        let table = properties.headers().as_ref().expect("headers");
        assert_eq!(
            table.inner().get("content-type"),
            Some(&AMQPValue::LongString(LongString::from(long.into_bytes())))
        );
        // Invalid UTF-8 grows when made text: 200 bytes become 600.
        let (properties, _) = properties_from_headers(&[header("type", &[0xff; 200])], 0);
        assert_eq!(properties.kind(), &None);
        let cut = short_string("é".repeat(200));
        assert_eq!(cut.as_str().len(), 254);
        assert_eq!(short_string("key".to_string()).as_str(), "key");
    }

    #[test]
    fn exchange_header_names_the_exchange() {
        let headers = vec![header(EXCHANGE_HEADER, b"logs")];
        let (properties, exchange) = properties_from_headers(&headers, 0);
        assert_eq!(exchange, "logs");
        assert_eq!(properties, AMQPProperties::default());
    }
}
