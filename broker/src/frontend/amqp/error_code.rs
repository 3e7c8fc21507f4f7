//! Domain errors to AMQP reply codes and RabbitMQ's reply texts, in one place.
//!
//! A reply with a soft code (403, 404, 405, 406) closes the channel; a hard code (5xx, 320,
//! 530, 540) closes the connection, as the AMQP 0-9-1 spec and RabbitMQ do.

use crate::core::{Precondition, QueueError};

/// A channel.close or connection.close to send: code, text, and the method it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The AMQP reply code.
    pub code: u16,
    /// `NAME - detail`, as RabbitMQ writes it.
    pub text: String,
    /// The class of the method that failed (0: none).
    pub class_id: u16,
    /// The method that failed (0: none).
    pub method_id: u16,
}

pub const ACCESS_REFUSED: u16 = 403;
pub const NOT_FOUND: u16 = 404;
pub const RESOURCE_LOCKED: u16 = 405;
pub const PRECONDITION_FAILED: u16 = 406;
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const CHANNEL_ERROR: u16 = 504;
pub const UNEXPECTED_FRAME: u16 = 505;
/// A connection error: the client made the broker hold more than a limit allows.
pub const RESOURCE_ERROR: u16 = 506;
pub const NOT_ALLOWED: u16 = 530;
pub const NOT_IMPLEMENTED: u16 = 540;
pub const INTERNAL_ERROR: u16 = 541;

impl Reply {
    /// A reply with `code`, prefixed with the code's name as RabbitMQ does.
    pub fn new(code: u16, detail: impl AsRef<str>) -> Reply {
        let mut text = format!("{} - {}", code_name(code), detail.as_ref());
        // A short string holds 255 bytes.
        if text.len() > 255 {
            let mut cut = 255;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Reply {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    /// The same reply, naming the method that failed.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Reply {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// True if this reply closes the whole connection rather than one channel.
    pub fn is_hard(&self) -> bool {
        !matches!(self.code, 311..=313 | 403..=406)
    }

    pub fn frame_error(detail: String) -> Reply {
        Reply::new(FRAME_ERROR, detail)
    }

    pub fn syntax_error(detail: String) -> Reply {
        Reply::new(SYNTAX_ERROR, detail)
    }

    pub fn syntax_error_in(class_id: u16, method_id: u16, detail: String) -> Reply {
        Reply::new(SYNTAX_ERROR, detail).on(class_id, method_id)
    }

    pub fn command_invalid(class_id: u16, method_id: u16, detail: String) -> Reply {
        Reply::new(COMMAND_INVALID, detail).on(class_id, method_id)
    }
}

/// The constant name of a reply code, as RabbitMQ puts it before the detail.
/// RabbitMQ's name of a reply code (`NOT_FOUND`).
pub(super) fn code_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        ACCESS_REFUSED => "ACCESS_REFUSED",
        NOT_FOUND => "NOT_FOUND",
        RESOURCE_LOCKED => "RESOURCE_LOCKED",
        PRECONDITION_FAILED => "PRECONDITION_FAILED",
        FRAME_ERROR => "FRAME_ERROR",
        SYNTAX_ERROR => "SYNTAX_ERROR",
        COMMAND_INVALID => "COMMAND_INVALID",
        CHANNEL_ERROR => "CHANNEL_ERROR",
        UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
        RESOURCE_ERROR => "RESOURCE_ERROR",
        NOT_ALLOWED => "NOT_ALLOWED",
        NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
        _ => "INTERNAL_ERROR",
    }
}

/// The reply for a queue-layer error of a method of class `class_id`, `method_id`.
pub fn queue(error: &QueueError, class_id: u16, method_id: u16) -> Reply {
    let reply = match error {
        QueueError::UnknownExchange(name) => {
            Reply::new(NOT_FOUND, format!("no exchange '{name}' in vhost '/'"))
        }
        QueueError::UnknownQueue(name) | QueueError::Gone(name) => {
            Reply::new(NOT_FOUND, format!("no queue '{name}' in vhost '/'"))
        }
        QueueError::DeclareMismatch(what) if what.contains("exclusive to another connection") => {
            Reply::new(
                RESOURCE_LOCKED,
                format!("cannot obtain exclusive access to locked {what}"),
            )
        }
        QueueError::ExchangeDiffers {
            name,
            arg,
            received,
            current,
        } => Reply::new(
            PRECONDITION_FAILED,
            format!(
                "inequivalent arg '{arg}' for exchange '{name}' in vhost '/': received '{received}' but current is '{current}'"
            ),
        ),
        QueueError::DeclareMismatch(what) => Reply::new(
            PRECONDITION_FAILED,
            format!("inequivalent arg for {what} in vhost '/': it exists with different arguments"),
        ),
        QueueError::Invalid(message) if message.contains("reserved") => {
            Reply::new(ACCESS_REFUSED, message)
        }
        QueueError::Invalid(message) => Reply::new(PRECONDITION_FAILED, message),
        QueueError::QueueFull { .. } => Reply::new(PRECONDITION_FAILED, error.to_string()),
        QueueError::UnknownDeliveryTag(tag) => {
            Reply::new(PRECONDITION_FAILED, format!("unknown delivery tag {tag}"))
        }
        QueueError::Storage(message) => Reply::new(INTERNAL_ERROR, message),
        QueueError::Cluster { .. } => Reply::new(INTERNAL_ERROR, error.to_string()),
        QueueError::Unauthorized(refused) => denied(refused),
        QueueError::Precondition { queue, failed } => match failed {
            Precondition::InUse => Reply::new(
                PRECONDITION_FAILED,
                format!("queue '{queue}' in vhost '/' in use"),
            ),
            Precondition::NotEmpty => Reply::new(
                PRECONDITION_FAILED,
                format!("queue '{queue}' in vhost '/' is not empty"),
            ),
            Precondition::ExclusiveUse => Reply::new(
                ACCESS_REFUSED,
                format!("queue '{queue}' in vhost '/' in exclusive use"),
            ),
        },
    };
    reply.on(class_id, method_id)
}

/// RabbitMQ's words for a refusal by ACLs (a channel error, 403), with the operation the
/// ACLs did not allow.
pub fn denied(refused: &crate::core::Denied) -> Reply {
    let user = refused
        .principal
        .strip_prefix("User:")
        .unwrap_or(&refused.principal);
    Reply::new(
        ACCESS_REFUSED,
        format!(
            "access to {} '{}' in vhost '/' refused for user '{user}' ({} is not allowed)",
            refused.resource_type, refused.name, refused.operation
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_queue_is_rabbitmq_not_found_on_the_channel() {
        let reply = queue(&QueueError::UnknownQueue("q".to_string()), 50, 10);
        assert_eq!(reply.code, 404);
        assert_eq!(reply.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert!(!reply.is_hard());
    }

    #[test]
    fn refused_conditions_get_rabbitmqs_codes_and_texts() {
        let refused = |failed| {
            queue(
                &QueueError::Precondition {
                    queue: "q".to_string(),
                    failed,
                },
                50,
                40,
            )
        };
        let in_use = refused(Precondition::InUse);
        assert_eq!(
            (in_use.code, in_use.text.as_str()),
            (406, "PRECONDITION_FAILED - queue 'q' in vhost '/' in use")
        );
        let not_empty = refused(Precondition::NotEmpty);
        assert_eq!(
            (not_empty.code, not_empty.text.as_str()),
            (
                406,
                "PRECONDITION_FAILED - queue 'q' in vhost '/' is not empty"
            )
        );
        let exclusive = refused(Precondition::ExclusiveUse);
        assert_eq!(
            (exclusive.code, exclusive.text.as_str()),
            (
                403,
                "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"
            )
        );
    }

    #[test]
    fn frame_errors_close_the_connection() {
        assert!(Reply::frame_error("x".to_string()).is_hard());
    }

    #[test]
    fn long_texts_fit_a_short_string() {
        assert!(Reply::new(406, "é".repeat(300)).text.len() <= 255);
    }
}
