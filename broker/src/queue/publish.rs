//! Pure message shaping on the way into and between queues: the headers the broker stamps
//! on a publish, the names of the queues an exchange routes it to, and the copy a
//! dead-lettered message is republished as.
//!
//! No I/O, no locks, no runtime: the manager calls these under its registry lock and the
//! queue task calls them while it owns its queue, so they must stay cheap and pure.

use bytes::Bytes;
use wharf_protocol::batch::{Header, Record};

use crate::queue::delay::{DELAY_HEADER, DELAY_MS_MAX, DUE_HEADER};
use crate::queue::delivery::DeadLetterReason;
use crate::queue::exchange::Bindings;
use crate::queue::types::{
    Message, QueueError, EXCHANGE_HEADER, EXPIRATION_HEADER, PRIORITY_HEADER,
};

/// Adds the broker's headers: the exchange, and for a delayed message its due time.
///
/// # Errors
/// `Invalid` for an `x-delay` outside `[0, DELAY_MS_MAX]`.
pub(crate) fn stamp(message: &mut Message, exchange: &str, now_ms: i64) -> Result<(), QueueError> {
    if let Some(delay) = header_number(&message.headers, DELAY_HEADER) {
        if delay < 0 || delay as u64 > DELAY_MS_MAX {
            return Err(QueueError::Invalid(format!(
                "{DELAY_HEADER} {delay} outside [0, {DELAY_MS_MAX}] ms"
            )));
        }
        if header_number(&message.headers, DUE_HEADER).is_none() {
            message.headers.push(Header {
                key: DUE_HEADER.to_string(),
                value: Some(Bytes::from((now_ms + delay).to_string())),
            });
        }
    }
    if header_value(&message.headers, EXCHANGE_HEADER).is_none() {
        message.headers.push(Header {
            key: EXCHANGE_HEADER.to_string(),
            value: Some(Bytes::copy_from_slice(exchange.as_bytes())),
        });
    }
    Ok(())
}

/// The names of the queues a message published to `exchange` goes to: the default exchange
/// `""` routes to the queue named by the routing key, any other exchange by its `bindings`
/// (`None`: no such exchange). The names may include queues that do not exist.
///
/// # Errors
/// `UnknownExchange` for a named exchange without bindings.
pub(crate) fn route_names(
    exchange: &str,
    bindings: Option<&Bindings>,
    message: &Message,
) -> Result<Vec<String>, QueueError> {
    if exchange.is_empty() {
        return Ok(vec![message.routing_key.clone()]);
    }
    let bindings = bindings.ok_or_else(|| QueueError::UnknownExchange(exchange.to_string()))?;
    let headers: Vec<(&str, Option<&[u8]>)> = message
        .headers
        .iter()
        .map(|header| (header.key.as_str(), header.value.as_deref()))
        .collect();
    Ok(bindings.route(&message.routing_key, &headers))
}

/// The copy of a dead-lettered `record` of `queue` to republish: the broker's delay and
/// exchange headers and any earlier `x-death-*` headers are dropped, and the reason with the
/// original queue, exchange and routing key are added as `x-death-*` headers. A per-message
/// TTL is moved to `x-death-original-expiration`, as RabbitMQ moves `expiration` into the
/// death record: the copy of a message that expired would otherwise expire again wherever it
/// is routed. It goes out with `routing_key`, or the original one.
pub(crate) fn dead_letter_copy(
    record: Record,
    reason: DeadLetterReason,
    queue: &str,
    routing_key: Option<String>,
) -> Message {
    let original_key = record
        .key
        .as_ref()
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .unwrap_or_default();
    let original_exchange = header_value(&record.headers, EXCHANGE_HEADER)
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_default();
    let original_expiration =
        header_value(&record.headers, EXPIRATION_HEADER).map(Bytes::copy_from_slice);
    let mut headers: Vec<Header> = record
        .headers
        .into_iter()
        .filter(|header| {
            !matches!(
                header.key.as_str(),
                EXCHANGE_HEADER | DELAY_HEADER | DUE_HEADER | EXPIRATION_HEADER
            ) && !header.key.starts_with("x-death-")
        })
        .collect();
    for (key, value) in [
        ("x-death-reason", reason.name().to_string()),
        ("x-death-queue", queue.to_string()),
        ("x-death-exchange", original_exchange),
        ("x-death-routing-key", original_key.clone()),
    ] {
        headers.push(Header {
            key: key.to_string(),
            value: Some(Bytes::from(value)),
        });
    }
    if let Some(expiration) = original_expiration {
        headers.push(Header {
            key: "x-death-original-expiration".to_string(),
            value: Some(expiration),
        });
    }
    Message {
        routing_key: routing_key.unwrap_or(original_key),
        body: record.value.unwrap_or_default(),
        headers,
    }
}

/// The last value of header `key`.
pub(crate) fn header_value<'a>(headers: &'a [Header], key: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|header| header.key == key)
        .and_then(|header| header.value.as_deref())
}

/// The last value of header `key` as a decimal integer.
pub(crate) fn header_number(headers: &[Header], key: &str) -> Option<i64> {
    header_value(headers, key)
        .and_then(|bytes| std::str::from_utf8(bytes).ok()?.trim().parse().ok())
}

/// A message's priority: its `priority` header as a decimal integer, 0 when missing or not
/// a number, capped to 0..=255 (AMQP's octet). The queue caps it again at its own
/// `max-priority`.
pub(crate) fn message_priority(headers: &[Header]) -> u8 {
    header_number(headers, PRIORITY_HEADER).map_or(0, |priority| {
        u8::try_from(priority.clamp(0, i64::from(u8::MAX))).unwrap_or(u8::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_header_is_read_as_a_capped_number() {
        let priority = |value: &str| message_priority(&[header(PRIORITY_HEADER, value)]);
        assert_eq!(priority("7"), 7);
        assert_eq!(priority("300"), 255);
        assert_eq!(priority("-2"), 0);
        assert_eq!(priority("high"), 0);
        assert_eq!(message_priority(&[]), 0);
    }

    fn header(key: &str, value: &str) -> Header {
        Header {
            key: key.to_string(),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
        }
    }

    #[test]
    fn stamp_adds_the_exchange_and_a_due_time_for_a_delay() {
        let mut message = Message {
            headers: vec![header(DELAY_HEADER, "250")],
            ..Message::default()
        };
        stamp(&mut message, "orders", 1_000).unwrap();
        assert_eq!(header_number(&message.headers, DUE_HEADER), Some(1_250));
        assert_eq!(
            header_value(&message.headers, EXCHANGE_HEADER),
            Some(&b"orders"[..])
        );
        let mut negative = Message {
            headers: vec![header(DELAY_HEADER, "-1")],
            ..Message::default()
        };
        assert!(matches!(
            stamp(&mut negative, "orders", 1_000),
            Err(QueueError::Invalid(_))
        ));
    }

    #[test]
    fn dead_letter_copy_replaces_broker_headers_with_the_death_record() {
        let record = Record {
            key: Some(Bytes::from_static(b"job")),
            value: Some(Bytes::from_static(b"body")),
            headers: vec![
                header(EXCHANGE_HEADER, "work-exchange"),
                header(DUE_HEADER, "5"),
                header(EXPIRATION_HEADER, "60000"),
                header("x-death-reason", "expired"),
                header("trace", "abc"),
            ],
            offset: 0,
            timestamp_ms: 0,
        };
        let copy = dead_letter_copy(record, DeadLetterReason::Rejected, "work", None);
        assert_eq!(copy.routing_key, "job");
        assert_eq!(copy.body, Bytes::from_static(b"body"));
        let keys: Vec<&str> = copy.headers.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "trace",
                "x-death-reason",
                "x-death-queue",
                "x-death-exchange",
                "x-death-routing-key",
                "x-death-original-expiration"
            ]
        );
        assert_eq!(
            header_value(&copy.headers, "x-death-original-expiration"),
            Some(&b"60000"[..])
        );
        assert_eq!(
            header_value(&copy.headers, "x-death-reason"),
            Some(&b"rejected"[..])
        );
        assert_eq!(
            header_value(&copy.headers, "x-death-exchange"),
            Some(&b"work-exchange"[..])
        );
    }
}
