//! The one error type of the client: [`Error`].
//!
//! Every failure a caller can see is a variant with the context to explain it (the broker
//! address, the topic, the wire error code and the broker's message). Connection-level
//! failures (`Connect`, `Io`, `Disconnected`, `Timeout`, `CircuitOpen`) are kept apart from
//! answers the broker gave (`Server`, `UnknownTopic`, ...), because only the former say
//! anything about the health of the connection. `Error` is `Clone` so that one failed
//! produce request can fail every record it carried.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use wharf_protocol::{ApiKey, BatchError, DecodeError, ErrorCode};

/// Most bytes of a non-Wharf server's answer that [`Error::NotWharfBroker`] shows: enough
/// for a status line or a banner, short enough for one line of an error message.
const ANSWER_SHOWN_BYTES_MAX: usize = 64;

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection to `address` could not be established.
    Connect {
        /// The broker address (`host:port`).
        address: String,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// Reading from or writing to an established connection failed.
    Io {
        /// The broker address (`host:port`).
        address: String,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// The broker closed the connection before answering.
    Disconnected {
        /// The broker address (`host:port`).
        address: String,
    },
    /// The server at `address` does not speak Wharf's protocol: its answer to the handshake
    /// is not a Wharf frame (an HTTP server, for one, answers `HTTP/1.1 ...`, whose first
    /// four bytes read as a frame length of 1,213,486,160).
    NotWharfBroker {
        /// The server address (`host:port`).
        address: String,
        /// The start of its answer: its first line, at most 64 bytes, with bytes other than
        /// printable ASCII escaped.
        answer: String,
    },
    /// The broker at `address` speaks TLS and this client connected in plaintext: it
    /// answered the handshake with a TLS alert record.
    TlsRequired {
        /// The broker address (`host:port`).
        address: String,
    },
    /// The TLS handshake with `address` failed: its certificate is not trusted (or not for
    /// that name), it refused this client's certificate, or it does not speak TLS.
    /// Retrying does not help.
    TlsHandshake {
        /// The broker address (`host:port`).
        address: String,
        /// What rustls reported.
        reason: String,
    },
    /// The TLS settings cannot be used (a PEM text without a certificate, a key that does
    /// not match its certificate, no trusted CA).
    TlsConfig {
        /// What is wrong.
        reason: String,
    },
    /// A response or frame from the broker could not be decoded.
    Decode(DecodeError),
    /// Fetched record batches are malformed.
    Batch {
        /// The topic fetched.
        topic: String,
        /// The partition fetched.
        partition: u32,
        /// What is wrong with the bytes.
        source: BatchError,
    },
    /// The broker answered with an error code.
    Server {
        /// The wire error code.
        code: ErrorCode,
        /// The broker's message, or the code's description when it sent none or an empty one.
        message: String,
    },
    /// No answer arrived within the request timeout, or a delivery timed out.
    Timeout {
        /// What timed out (`"produce to orders-3"`, `"request to 127.0.0.1:7420"`).
        operation: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The circuit breaker of the broker connection is open: recent attempts failed, so
    /// this one fails fast until the cool-down ends.
    CircuitOpen {
        /// The broker address (`host:port`).
        address: String,
        /// How long until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The topic does not exist.
    UnknownTopic {
        /// The topic name.
        topic: String,
    },
    /// The topic exists but has no such partition.
    UnknownPartition {
        /// The topic name.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// Partitions the topic has.
        partition_count: u32,
    },
    /// The consumer group does not exist.
    UnknownGroup {
        /// The group id.
        group: String,
    },
    /// The broker does not support version 0 of an api this client needs.
    UnsupportedApi {
        /// The broker address (`host:port`).
        address: String,
        /// The api.
        api_key: ApiKey,
    },
    /// Metadata names a leader node the client has no address for.
    UnknownBroker {
        /// The node id.
        node_id: i32,
    },
    /// A record is larger than one batch may be.
    RecordTooLarge {
        /// The encoded batch size the record would need.
        record_bytes: usize,
        /// The largest batch allowed.
        bytes_max: usize,
    },
    /// A newer producer owns this producer's id (a higher epoch): this one is a zombie. The
    /// producer stops; every record it still held, and every record enqueued later, fails
    /// with this error.
    ProducerFenced {
        /// The fenced producer id.
        producer_id: i64,
        /// The fenced epoch.
        producer_epoch: i16,
    },
    /// The record was discarded because its transaction was aborted before it was sent.
    TransactionAborted,
    /// The transaction cannot commit because one of its records or requests failed; abort it
    /// ([`crate::Producer::abort_transaction`]) and run it again.
    TransactionFailed {
        /// The first failure in the transaction.
        source: Box<Error>,
    },
    /// The broker refused an idempotent batch as out of order although every earlier batch of
    /// its partition was acknowledged: the broker lost records it had acknowledged, or its
    /// producer state. The batch's records are not written.
    OutOfOrderSequence {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The producer id of the batch.
        producer_id: i64,
        /// The sequence number of the batch's first record.
        base_sequence: i32,
    },
    /// The producer or consumer was closed, or its background task stopped.
    Closed,
    /// The call is not valid in the current state (for example `commit` without a group).
    InvalidState {
        /// Why.
        reason: &'static str,
    },
    /// The queue does not exist.
    UnknownQueue {
        /// The queue name.
        queue: String,
    },
    /// The exchange does not exist.
    UnknownExchange {
        /// The exchange name.
        exchange: String,
    },
    /// A declare named an existing exchange or queue with different arguments.
    PreconditionFailed {
        /// The broker's message (which entity, what differs).
        message: String,
    },
    /// A mandatory message matched no queue; it was not stored.
    Unroutable {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// A queue the message routed to is full and rejects publishes (overflow
    /// `reject-publish`).
    QueueFull {
        /// The broker's message (which queue, its max length).
        message: String,
    },
    /// An ack or nack named an unknown or already settled delivery tag.
    UnknownDeliveryTag {
        /// The queue.
        queue: String,
        /// The tag.
        delivery_tag: u64,
    },
    /// The server's SCRAM messages were malformed or its signature wrong: it does not hold
    /// the user's credential, so it is not the broker it claims to be.
    ServerAuthentication {
        /// What was wrong.
        reason: String,
    },
    /// The broker cancelled the subscriber: a delivery stayed unacknowledged past the
    /// queue's ack timeout (`code` `AckTimeout`: its unacknowledged deliveries went back to
    /// the queue), or the queue was deleted (`UnknownQueue`: they went with it).
    ConsumerCancelled {
        /// The queue.
        queue: String,
        /// Why, as a wire code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
}

/// The names a queue request was about, to put into the typed error of its answer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QueueSubject<'a> {
    pub(crate) queue: &'a str,
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) delivery_tag: u64,
}

/// `Ok(())` for `ErrorCode::None`, else the typed error of a queue api's answer.
///
/// # Errors
/// The queue variants of [`Error`] for their codes, [`Error::Server`] for the rest.
pub(crate) fn check_queue_code(
    code: ErrorCode,
    message: Option<String>,
    subject: QueueSubject<'_>,
) -> Result<()> {
    let message_or_default = |message: Option<String>| {
        message
            .filter(|message| !message.is_empty())
            .unwrap_or_else(|| code.describe().to_string())
    };
    Err(match code {
        ErrorCode::None => return Ok(()),
        ErrorCode::UnknownQueue => Error::UnknownQueue {
            queue: subject.queue.to_string(),
        },
        ErrorCode::UnknownExchange => Error::UnknownExchange {
            exchange: subject.exchange.to_string(),
        },
        ErrorCode::PreconditionFailed => Error::PreconditionFailed {
            message: message_or_default(message),
        },
        ErrorCode::Unroutable => Error::Unroutable {
            exchange: subject.exchange.to_string(),
            routing_key: subject.routing_key.to_string(),
        },
        ErrorCode::QueueFull => Error::QueueFull {
            message: message_or_default(message),
        },
        ErrorCode::UnknownDeliveryTag => Error::UnknownDeliveryTag {
            queue: subject.queue.to_string(),
            delivery_tag: subject.delivery_tag,
        },
        other => Error::server(other, message),
    })
}

impl Error {
    /// The error for a server at `address` whose answer to the handshake, starting with
    /// `answer`, is not a Wharf frame.
    pub(crate) fn not_wharf_broker(address: &str, answer: &[u8]) -> Error {
        // A TLS record header: content type 21 (alert), protocol version 3.x.
        if answer.starts_with(&[0x15, 0x03]) {
            return Error::TlsRequired {
                address: address.to_string(),
            };
        }
        let first_line = answer
            .split(|byte| *byte == b'\n')
            .next()
            .unwrap_or_default();
        let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
        let shown = &first_line[..first_line.len().min(ANSWER_SHOWN_BYTES_MAX)];
        Error::NotWharfBroker {
            address: address.to_string(),
            answer: shown.escape_ascii().to_string(),
        }
    }

    /// A stable snake_case name of the variant (`"unknown_topic"`, `"connect"`), for
    /// programs that read errors, such as the CLI's JSON errors: it does not change when the
    /// message's wording does.
    ///
    /// ```
    /// use wharf_client::Error;
    ///
    /// let error = Error::UnknownTopic { topic: "orders".to_string() };
    /// assert_eq!(error.kind(), "unknown_topic");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "connect",
            Error::Io { .. } => "io",
            Error::Disconnected { .. } => "disconnected",
            Error::NotWharfBroker { .. } => "not_wharf_broker",
            Error::TlsHandshake { .. } => "tls_handshake",
            Error::TlsRequired { .. } => "tls_required",
            Error::TlsConfig { .. } => "tls_config",
            Error::Decode(_) => "decode",
            Error::Batch { .. } => "batch",
            Error::Server { .. } => "server",
            Error::Timeout { .. } => "timeout",
            Error::CircuitOpen { .. } => "circuit_open",
            Error::UnknownTopic { .. } => "unknown_topic",
            Error::UnknownPartition { .. } => "unknown_partition",
            Error::UnknownGroup { .. } => "unknown_group",
            Error::UnsupportedApi { .. } => "unsupported_api",
            Error::UnknownBroker { .. } => "unknown_broker",
            Error::RecordTooLarge { .. } => "record_too_large",
            Error::ProducerFenced { .. } => "producer_fenced",
            Error::TransactionAborted => "transaction_aborted",
            Error::TransactionFailed { .. } => "transaction_failed",
            Error::OutOfOrderSequence { .. } => "out_of_order_sequence",
            Error::Closed => "closed",
            Error::InvalidState { .. } => "invalid_state",
            Error::UnknownQueue { .. } => "unknown_queue",
            Error::UnknownExchange { .. } => "unknown_exchange",
            Error::PreconditionFailed { .. } => "precondition_failed",
            Error::Unroutable { .. } => "unroutable",
            Error::QueueFull { .. } => "queue_full",
            Error::UnknownDeliveryTag { .. } => "unknown_delivery_tag",
            Error::ConsumerCancelled { .. } => "consumer_cancelled",
            Error::ServerAuthentication { .. } => "server_authentication",
        }
    }

    /// True for failures of the connection rather than answers of the broker: retrying on a
    /// new connection may succeed.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Io { .. }
                | Error::Disconnected { .. }
                | Error::Timeout { .. }
                | Error::CircuitOpen { .. }
        )
    }

    /// True if retrying the same request later may succeed: connection errors and the wire
    /// codes the protocol marks retriable.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Server { code, .. } => code.is_retriable(),
            other => other.is_connection_error(),
        }
    }

    /// The wire error code, if the broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::UnknownTopic { .. } | Error::UnknownPartition { .. } => {
                Some(ErrorCode::UnknownTopicOrPartition)
            }
            Error::UnknownGroup { .. } => Some(ErrorCode::GroupIdNotFound),
            Error::ProducerFenced { .. } => Some(ErrorCode::ProducerFenced),
            Error::OutOfOrderSequence { .. } => Some(ErrorCode::OutOfOrderSequence),
            Error::UnknownQueue { .. } => Some(ErrorCode::UnknownQueue),
            Error::UnknownExchange { .. } => Some(ErrorCode::UnknownExchange),
            Error::PreconditionFailed { .. } => Some(ErrorCode::PreconditionFailed),
            Error::Unroutable { .. } => Some(ErrorCode::Unroutable),
            Error::QueueFull { .. } => Some(ErrorCode::QueueFull),
            Error::UnknownDeliveryTag { .. } => Some(ErrorCode::UnknownDeliveryTag),
            Error::ConsumerCancelled { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// An error for a non-`None` wire `code` with the broker's optional `message`.
    pub fn server(code: ErrorCode, message: Option<String>) -> Error {
        Error::Server {
            code,
            message: message
                .filter(|message| !message.is_empty())
                .unwrap_or_else(|| code.describe().to_string()),
        }
    }
}

/// `Ok(())` for `ErrorCode::None`, else the matching [`Error::Server`].
///
/// # Errors
/// [`Error::Server`] for any code but `None`.
pub(crate) fn check_code(code: ErrorCode, message: Option<String>) -> Result<()> {
    if code.is_ok() {
        Ok(())
    } else {
        Err(Error::server(code, message))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { address, source } => write!(
                formatter,
                "cannot connect to broker {address}: {}",
                describe_io(source)
            ),
            Error::Io { address, source } => write!(
                formatter,
                "connection to broker {address} failed: {}",
                describe_io(source)
            ),
            Error::Disconnected { address } => {
                write!(formatter, "broker {address} closed the connection")
            }
            Error::NotWharfBroker { address, answer } => write!(
                formatter,
                "not a Wharf broker at {address}: it answered the handshake with \"{answer}\""
            ),
            Error::TlsHandshake { address, reason } => write!(
                formatter,
                "TLS handshake with broker {address} failed: {reason}"
            ),
            Error::TlsRequired { address } => write!(
                formatter,
                "broker {address} speaks TLS and this client connected in plaintext: connect with TLS (wharf --tls, ClientConfig::tls)"
            ),
            Error::TlsConfig { reason } => write!(formatter, "invalid TLS settings: {reason}"),
            Error::Decode(error) => write!(formatter, "cannot decode broker response: {error}"),
            Error::Batch {
                topic,
                partition,
                source,
            } => write!(
                formatter,
                "malformed record batch in {topic}-{partition}: {source}"
            ),
            // The broker's message says what failed (it defaults to the code's description).
            Error::Server { message, .. } => formatter.write_str(message),
            Error::Timeout { operation, after } => write!(
                formatter,
                "{operation} timed out after {} ms",
                after.as_millis()
            ),
            Error::CircuitOpen {
                address,
                retry_after,
            } => write!(
                formatter,
                "broker {address} is failing; circuit open for another {} ms",
                retry_after.as_millis()
            ),
            Error::UnknownTopic { topic } => write!(formatter, "unknown topic \"{topic}\""),
            Error::UnknownPartition {
                topic,
                partition,
                partition_count,
            } => write!(
                formatter,
                "unknown partition {partition} of topic \"{topic}\" ({partition_count} {})",
                if *partition_count == 1 {
                    "partition"
                } else {
                    "partitions"
                }
            ),
            Error::UnknownGroup { group } => write!(formatter, "unknown group \"{group}\""),
            Error::UnsupportedApi { address, api_key } => write!(
                formatter,
                "broker {address} does not support {api_key:?} version 0"
            ),
            Error::UnknownBroker { node_id } => {
                write!(formatter, "no address known for broker node {node_id}")
            }
            Error::RecordTooLarge {
                record_bytes,
                bytes_max,
            } => write!(
                formatter,
                "record needs a batch of {record_bytes} bytes, more than the max {bytes_max}"
            ),
            Error::ProducerFenced {
                producer_id,
                producer_epoch,
            } => write!(
                formatter,
                "producer {producer_id} (epoch {producer_epoch}) was fenced by a newer producer with the same id"
            ),
            Error::OutOfOrderSequence {
                topic,
                partition,
                producer_id,
                base_sequence,
            } => write!(
                formatter,
                "broker refused sequence {base_sequence} of producer {producer_id} on {topic}-{partition} as out of order although every earlier batch was acknowledged: acknowledged records may be lost"
            ),
            Error::TransactionAborted => {
                formatter.write_str("record discarded: its transaction was aborted")
            }
            Error::TransactionFailed { source } => {
                write!(formatter, "transaction cannot commit, abort it: {source}")
            }
            Error::Closed => formatter.write_str("the client was closed"),
            Error::InvalidState { reason } => formatter.write_str(reason),
            Error::UnknownQueue { queue } => write!(formatter, "unknown queue \"{queue}\""),
            Error::UnknownExchange { exchange } => {
                write!(formatter, "unknown exchange \"{exchange}\"")
            }
            Error::PreconditionFailed { message } => {
                write!(formatter, "precondition failed: {message}")
            }
            Error::Unroutable {
                exchange,
                routing_key,
            } => write!(
                formatter,
                "unroutable: no queue is bound to exchange \"{exchange}\" for routing key \"{routing_key}\""
            ),
            Error::QueueFull { message } => formatter.write_str(message),
            Error::UnknownDeliveryTag {
                queue,
                delivery_tag,
            } => write!(
                formatter,
                "unknown or already settled delivery tag {delivery_tag} on queue \"{queue}\""
            ),
            Error::ConsumerCancelled { message, .. } => formatter.write_str(message),
            Error::ServerAuthentication { reason } => write!(
                formatter,
                "the server failed scram authentication ({reason}): it does not hold this user's credential"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } | Error::Io { source, .. } => Some(source.as_ref()),
            Error::Decode(error) => Some(error),
            Error::Batch { source, .. } => Some(source),
            Error::TransactionFailed { source } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl From<DecodeError> for Error {
    fn from(error: DecodeError) -> Self {
        Error::Decode(error)
    }
}

/// A short lowercase phrase for an I/O error (`connection refused`), without the
/// `(os error 111)` suffix, so command-line errors read as one clear line.
pub(crate) fn describe_io(error: &io::Error) -> String {
    let phrase = match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::NotConnected => "not connected",
        io::ErrorKind::AddrNotAvailable => "address not available",
        io::ErrorKind::BrokenPipe => "broken pipe",
        io::ErrorKind::TimedOut => "timed out",
        io::ErrorKind::UnexpectedEof => "connection closed",
        _ => "",
    };
    if !phrase.is_empty() {
        return phrase.to_string();
    }
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(cut) => &text[..cut],
        None => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_reads_as_one_clear_line() {
        let error = Error::Connect {
            address: "127.0.0.1:7420".to_string(),
            source: Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(
            error.to_string(),
            "cannot connect to broker 127.0.0.1:7420: connection refused"
        );
    }

    #[test]
    fn a_non_wharf_answer_is_shown_as_its_first_line_escaped_and_capped() {
        let http =
            Error::not_wharf_broker("h:80", b"HTTP/1.1 400 Bad Request\r\nServer: x\r\n\r\n");
        assert_eq!(
            http.to_string(),
            "not a Wharf broker at h:80: it answered the handshake with \"HTTP/1.1 400 Bad Request\""
        );
        assert!(!http.is_retriable());
        let binary = Error::not_wharf_broker("h:1", &[0xff, 0xfe, b'"', 0x00]);
        assert!(binary.to_string().ends_with("with \"\\xff\\xfe\\\"\\x00\""));
        let Error::NotWharfBroker { answer, .. } = Error::not_wharf_broker("h:1", &[b'a'; 200])
        else {
            panic!("not NotWharfBroker");
        };
        assert_eq!(answer.len(), ANSWER_SHOWN_BYTES_MAX);
    }

    #[test]
    fn a_tls_alert_answer_says_the_broker_speaks_tls() {
        // What a TLS listener answers a plaintext handshake with: a fatal decode_error alert.
        let error = Error::not_wharf_broker("h:1", &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]);
        assert_eq!(error.kind(), "tls_required");
        assert!(error.to_string().contains("wharf --tls"), "{error}");
        assert!(!error.is_retriable());
    }

    #[test]
    fn unknown_topic_names_the_topic() {
        let error = Error::UnknownTopic {
            topic: "x".to_string(),
        };
        assert_eq!(error.to_string(), "unknown topic \"x\"");
    }

    #[test]
    fn io_error_text_is_lowercased_without_os_suffix() {
        let error = io::Error::other("Name or service not known (os error -2)");
        assert_eq!(describe_io(&error), "name or service not known");
    }

    #[test]
    fn producer_errors_carry_their_wire_codes_and_numbers() {
        let fenced = Error::ProducerFenced {
            producer_id: 7,
            producer_epoch: 2,
        };
        assert_eq!(fenced.code(), Some(ErrorCode::ProducerFenced));
        assert_eq!(
            fenced.to_string(),
            "producer 7 (epoch 2) was fenced by a newer producer with the same id"
        );
        let out_of_order = Error::OutOfOrderSequence {
            topic: "orders".to_string(),
            partition: 1,
            producer_id: 7,
            base_sequence: 42,
        };
        assert_eq!(out_of_order.code(), Some(ErrorCode::OutOfOrderSequence));
        assert!(out_of_order
            .to_string()
            .starts_with("broker refused sequence 42 of producer 7 on orders-1"));
        assert!(!fenced.is_retriable() && !out_of_order.is_retriable());
    }

    #[test]
    fn connection_errors_are_retriable_and_server_errors_by_code() {
        let disconnected = Error::Disconnected {
            address: "a:1".to_string(),
        };
        assert!(disconnected.is_retriable());
        assert!(Error::server(ErrorCode::RequestTimedOut, None).is_retriable());
        assert!(!Error::server(ErrorCode::InvalidRequest, None).is_retriable());
        assert!(!Error::Closed.is_retriable());
    }

    #[test]
    fn queue_codes_become_typed_errors_naming_their_subject() {
        let subject = QueueSubject {
            queue: "orders",
            exchange: "events",
            routing_key: "order.created",
            delivery_tag: 7,
        };
        let check = |code| check_queue_code(code, None, subject).unwrap_err();
        assert_eq!(
            check(ErrorCode::UnknownQueue).to_string(),
            "unknown queue \"orders\""
        );
        assert_eq!(
            check(ErrorCode::UnknownExchange).to_string(),
            "unknown exchange \"events\""
        );
        assert!(matches!(
            check(ErrorCode::Unroutable),
            Error::Unroutable { ref routing_key, .. } if routing_key == "order.created"
        ));
        assert!(matches!(
            check(ErrorCode::UnknownDeliveryTag),
            Error::UnknownDeliveryTag {
                delivery_tag: 7,
                ..
            }
        ));
        assert_eq!(
            check(ErrorCode::QueueFull).code(),
            Some(ErrorCode::QueueFull)
        );
        assert!(matches!(
            check(ErrorCode::InvalidRequest),
            Error::Server { .. }
        ));
        assert!(check_queue_code(ErrorCode::None, None, subject).is_ok());
    }
}
