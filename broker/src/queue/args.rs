//! The queue-argument codec: [`QueueArgs`] to and from `key=value` pairs, the names the
//! CLI, the wire and the definitions file use.
//!
//! Pure: no I/O. Every key `args_to_pairs` writes, `args_from_pairs` reads back to the same
//! value (`exclusive` is never written: an exclusive queue is never durable, so it never
//! reaches the definitions file).

use crate::queue::definitions::StoredArg;
use crate::queue::delivery::Overflow;
use crate::queue::types::{QueueArgs, QueueError, PRIORITY_MAX};

/// The arguments as stored pairs, for the definitions file.
pub(crate) fn args_to_pairs(args: &QueueArgs) -> Vec<StoredArg> {
    let mut pairs = Vec::new();
    let mut push = |key: &str, value: String| {
        pairs.push(StoredArg {
            key: key.to_string(),
            value,
        })
    };
    if let Some(ttl) = args.message_ttl_ms {
        push("message-ttl-ms", ttl.to_string());
    }
    if let Some(max) = args.max_length {
        push("max-length", max.to_string());
    }
    if let Some(max) = args.max_length_bytes {
        push("max-length-bytes", max.to_string());
    }
    push(
        "overflow",
        match args.overflow {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
        .to_string(),
    );
    if let Some(exchange) = &args.dead_letter_exchange {
        push("dead-letter-exchange", exchange.clone());
    }
    if let Some(key) = &args.dead_letter_routing_key {
        push("dead-letter-routing-key", key.clone());
    }
    if let Some(limit) = args.delivery_limit {
        push("delivery-limit", limit.to_string());
    }
    if args.single_active_consumer {
        push("single-active-consumer", "true".to_string());
    }
    if let Some(timeout) = args.ack_timeout_ms {
        push("ack-timeout-ms", timeout.to_string());
    }
    if args.auto_delete {
        push("auto-delete", "true".to_string());
    }
    if let Some(expires) = args.expires_ms {
        push("expires-ms", expires.to_string());
    }
    if let Some(max_priority) = args.max_priority {
        push("max-priority", max_priority.to_string());
    }
    if args.quorum {
        push("queue-type", "quorum".to_string());
    }
    if let Some(factor) = args.replication_factor {
        push("replication-factor", factor.to_string());
    }
    pairs
}

/// Parses queue arguments from `key=value` pairs (the names the CLI and the wire use).
///
/// # Errors
/// `Invalid` naming the bad key or value.
pub fn args_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<QueueArgs, QueueError> {
    let mut args = QueueArgs::default();
    for (key, value) in pairs {
        let number = || {
            value.parse::<u64>().map_err(|_| {
                QueueError::Invalid(format!(
                    "queue argument {key}={value:?} is not a non-negative integer"
                ))
            })
        };
        match key {
            "message-ttl-ms" => args.message_ttl_ms = Some(number()?),
            "max-length" => args.max_length = Some(number()?),
            "max-length-bytes" => args.max_length_bytes = Some(number()?),
            "overflow" => {
                args.overflow = match value {
                    "drop-head" => Overflow::DropHead,
                    "reject-publish" => Overflow::RejectPublish,
                    "reject-publish-dlx" => Overflow::RejectPublishDlx,
                    other => {
                        return Err(QueueError::Invalid(format!(
                        "overflow {other:?} is not drop-head, reject-publish or reject-publish-dlx"
                    )))
                    }
                }
            }
            "dead-letter-exchange" => args.dead_letter_exchange = Some(value.to_string()),
            "dead-letter-routing-key" => args.dead_letter_routing_key = Some(value.to_string()),
            "delivery-limit" => {
                args.delivery_limit = Some(
                    u32::try_from(number()?)
                        .map_err(|_| QueueError::Invalid("delivery-limit too large".to_string()))?,
                )
            }
            "single-active-consumer" => args.single_active_consumer = value == "true",
            "ack-timeout-ms" => args.ack_timeout_ms = Some(number()?),
            "exclusive" => args.exclusive = value == "true",
            "auto-delete" => args.auto_delete = value == "true",
            "expires-ms" => match number()? {
                0 => {
                    return Err(QueueError::Invalid(
                        "queue argument expires-ms must be above 0".to_string(),
                    ))
                }
                expires => args.expires_ms = Some(expires),
            },
            "max-priority" => match u8::try_from(number()?) {
                Ok(max_priority) => args.max_priority = Some(max_priority),
                Err(_) => {
                    return Err(QueueError::Invalid(format!(
                        "queue argument max-priority={value} is above the maximum {PRIORITY_MAX}"
                    )))
                }
            },
            "queue-type" => match value {
                "classic" => args.quorum = false,
                "quorum" => args.quorum = true,
                other => {
                    return Err(QueueError::Invalid(format!(
                        "queue-type {other:?} is not classic or quorum"
                    )))
                }
            },
            "replication-factor" => match u32::try_from(number()?) {
                Ok(factor) if factor > 0 => args.replication_factor = Some(factor),
                _ => {
                    return Err(QueueError::Invalid(format!(
                        "queue argument replication-factor={value} must be from 1 to the \
                         cluster's node count"
                    )))
                }
            },
            other => {
                return Err(QueueError::Invalid(format!(
                    "unknown queue argument {other:?}"
                )))
            }
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(args: &QueueArgs) -> QueueArgs {
        let pairs = args_to_pairs(args);
        args_from_pairs(
            pairs
                .iter()
                .map(|pair| (pair.key.as_str(), pair.value.as_str())),
        )
        .expect("stored pairs parse")
    }

    #[test]
    fn stored_pairs_parse_back_to_the_same_arguments() {
        let every_field = QueueArgs {
            message_ttl_ms: Some(100),
            max_length: Some(2),
            max_length_bytes: Some(1_000),
            overflow: Overflow::RejectPublish,
            dead_letter_exchange: Some("dlx".to_string()),
            dead_letter_routing_key: Some("dead".to_string()),
            delivery_limit: Some(3),
            single_active_consumer: true,
            ack_timeout_ms: Some(5_000),
            exclusive: false,
            auto_delete: true,
            expires_ms: Some(60_000),
            max_priority: Some(10),
            quorum: true,
            replication_factor: Some(3),
        };
        assert_eq!(round_trip(&every_field), every_field);
        assert_eq!(round_trip(&QueueArgs::default()), QueueArgs::default());
    }

    #[test]
    fn unknown_keys_and_bad_numbers_are_invalid() {
        assert!(matches!(
            args_from_pairs([("colour", "blue")]),
            Err(QueueError::Invalid(_))
        ));
        assert!(matches!(
            args_from_pairs([("max-length", "-1")]),
            Err(QueueError::Invalid(_))
        ));
        assert!(matches!(
            args_from_pairs([("max-priority", "256")]),
            Err(QueueError::Invalid(_))
        ));
        assert!(matches!(
            args_from_pairs([("replication-factor", "0")]),
            Err(QueueError::Invalid(_))
        ));
        assert!(matches!(
            args_from_pairs([("queue-type", "stream")]),
            Err(QueueError::Invalid(_))
        ));
        assert_eq!(
            args_from_pairs([("max-priority", "255")])
                .unwrap()
                .max_priority,
            Some(255)
        );
    }
}
