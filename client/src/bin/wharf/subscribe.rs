//! `wharf subscribe`: prints the messages the broker pushes from one queue, one per line,
//! until `--max-messages`, `--timeout-ms` of silence, Ctrl-C or SIGTERM.
//!
//! Settlement: `--ack manual` (the default) acks each message after printing it, so a crash
//! between receiving and printing redelivers it (at-least-once); `--ack auto` acks on receipt
//! before printing (at-most-once); `--reject` rejects instead of acking (without requeue, so
//! the message is dead-lettered). On exit the consumer is cancelled: deliveries received but
//! not printed return to the queue.
//!
//! When the broker cancels the consumer (an ack timeout, the queue deleted) the command says
//! so and exits 1. After an ack timeout the late ack is refused as an unknown delivery tag,
//! and that answer may come before or after the push that says why: a refused settle waits
//! briefly for the push ([`CANCEL_PUSH_WAIT`]) and reports the cancel instead when it comes.

use std::io::{self, Write};
use std::time::Duration;

use clap::ValueEnum;
use serde_json::{Map, Value};
use wharf_client::{Client, Delivery, Header, Subscriber};

use crate::consume::interrupted;
use crate::{CliError, FormatArg};

/// Longest a refused settle waits for the push saying that the broker cancelled the
/// consumer. The broker sends that push when it cancels, before it can have refused the
/// settle, so it is normally already on its way; the bound only matters when the refusal had
/// another cause.
const CANCEL_PUSH_WAIT: Duration = Duration::from_secs(1);

/// `wharf subscribe`.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// The queue.
    pub queue: String,
    /// Most unacknowledged deliveries at once.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub prefetch: u32,
    /// Exit after printing this many messages.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Exit when no message arrived for this many milliseconds.
    #[arg(long, value_name = "T")]
    pub timeout_ms: Option<u64>,
    /// When to acknowledge: after printing (manual) or on receipt (auto).
    #[arg(long, value_enum, default_value_t = AckArg::Manual)]
    pub ack: AckArg,
    /// Reject each message without requeue (dead-letter it) instead of acking it.
    #[arg(long, conflicts_with = "nack_requeue")]
    pub reject: bool,
    /// Nack each message with requeue instead of acking it: it goes back to the queue
    /// (marked redelivered) for any consumer, as RabbitMQ's `basic.nack` with requeue.
    #[arg(long)]
    pub nack_requeue: bool,
    /// How to print each message.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
}

/// `--ack` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// Settle on receipt, before printing (at-most-once).
    Auto,
    /// Settle after printing (at-least-once).
    Manual,
}

/// How each printed message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settlement {
    /// Done with it.
    Ack,
    /// Refused without requeue: dead-lettered.
    Reject,
    /// Refused with requeue: back to the queue, redelivered.
    NackRequeue,
}

impl SubscribeArgs {
    fn settlement(&self) -> Settlement {
        if self.reject {
            Settlement::Reject
        } else if self.nack_requeue {
            Settlement::NackRequeue
        } else {
            Settlement::Ack
        }
    }
}

/// Runs `wharf subscribe`.
pub async fn run(client: &Client, args: SubscribeArgs, json: bool) -> Result<(), CliError> {
    let format = args.format.unwrap_or(if json {
        FormatArg::Json
    } else {
        FormatArg::Value
    });
    let mut subscriber = Subscriber::subscribe(client, &args.queue, args.prefetch).await?;
    let printed = print_deliveries(&mut subscriber, &args, format).await;
    // Cancel even after an error, so unprinted deliveries return to the queue at once; a
    // failing cancel matters only if printing went well.
    let cancelled = subscriber.cancel().await;
    printed?;
    match cancelled {
        Err(error) if !error.is_connection_error() => Err(error.into()),
        _ => Ok(()),
    }
}

/// Receives, settles and prints until a stop condition.
async fn print_deliveries(
    subscriber: &mut Subscriber,
    args: &SubscribeArgs,
    format: FormatArg,
) -> Result<(), CliError> {
    let idle_max = args.timeout_ms.map_or(Duration::MAX, Duration::from_millis);
    let mut printed: u64 = 0;
    let mut out = io::BufWriter::new(io::stdout());
    let interrupted = interrupted();
    tokio::pin!(interrupted);
    loop {
        if args.max_messages.is_some_and(|max| printed >= max) {
            return Ok(());
        }
        let delivery = tokio::select! {
            next = tokio::time::timeout(idle_max, subscriber.next()) => match next {
                Ok(next) => next.map_err(cancelled_by_broker)?,
                Err(_) => return Ok(()),
            },
            () = &mut interrupted => return Ok(()),
        };
        let Some(delivery) = delivery else {
            return Ok(());
        };
        if args.ack == AckArg::Auto {
            settle(subscriber, &delivery, args.settlement()).await?;
        }
        let written = write_delivery(&mut out, &delivery, format).and_then(|()| out.flush());
        if let Err(error) = written {
            // Unprinted: leave it unsettled so it returns to the queue.
            return stdout_closed(error);
        }
        if args.ack == AckArg::Manual {
            settle(subscriber, &delivery, args.settlement()).await?;
        }
        printed += 1;
    }
}

/// Acks or rejects `delivery`. A refusal as an unknown delivery tag is explained by the
/// broker's cancel of the consumer when there is one (see the module docs).
async fn settle(
    subscriber: &mut Subscriber,
    delivery: &Delivery,
    settlement: Settlement,
) -> Result<(), CliError> {
    let settled = match settlement {
        Settlement::Ack => delivery.ack().await,
        Settlement::Reject => delivery.reject().await,
        Settlement::NackRequeue => delivery.nack(wharf_client::Requeue::Yes).await,
    };
    let error = match settled {
        Ok(()) => return Ok(()),
        // The broker went away (a restart): the subscriber subscribes again at its next
        // delivery, and the broker redelivers this message (at-least-once).
        Err(error) if error.is_connection_error() => {
            eprintln!(
                "warning: delivery {} was not settled before the connection was lost; it will come again",
                delivery.tag
            );
            return Ok(());
        }
        Err(error) => error,
    };
    let cancel = match error {
        wharf_client::Error::UnknownDeliveryTag { .. } => {
            subscriber.cancel_reason(CANCEL_PUSH_WAIT).await
        }
        _ => None,
    };
    Err(cancelled_by_broker(cancel.unwrap_or(error)))
}

/// The broker's cancel of the consumer becomes [`CliError::SubscriptionCancelled`], which
/// says what to do about it; other errors stay as they are.
fn cancelled_by_broker(error: wharf_client::Error) -> CliError {
    match error {
        wharf_client::Error::ConsumerCancelled {
            queue,
            code,
            message,
        } => CliError::SubscriptionCancelled {
            queue,
            code,
            message,
        },
        other => CliError::Client(other),
    }
}

/// A reader that went away (`| head`) ends the command quietly; other errors are errors.
fn stdout_closed(error: io::Error) -> Result<(), CliError> {
    if error.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(CliError::Stdout(error))
    }
}

fn write_delivery(out: &mut impl Write, delivery: &Delivery, format: FormatArg) -> io::Result<()> {
    let message = PrintedMessage {
        delivery_tag: Some(delivery.tag),
        routing_key: &delivery.routing_key,
        redelivered: delivery.redelivered,
        timestamp_ms: delivery.timestamp_ms,
        headers: &delivery.headers,
        body: &delivery.body,
    };
    write_message(out, &message, format)
}

/// A queue message as `wharf subscribe` and `wharf queue get` print it.
pub struct PrintedMessage<'a> {
    /// The delivery tag of a subscription's delivery; none for a got message.
    pub delivery_tag: Option<u64>,
    pub routing_key: &'a str,
    pub redelivered: bool,
    pub timestamp_ms: i64,
    pub headers: &'a [Header],
    pub body: &'a [u8],
}

/// Writes one message: its body as a line of text, or one JSON object.
pub fn write_message(
    out: &mut impl Write,
    message: &PrintedMessage<'_>,
    format: FormatArg,
) -> io::Result<()> {
    match format {
        FormatArg::Value => {
            out.write_all(String::from_utf8_lossy(message.body).as_bytes())?;
            out.write_all(b"\n")
        }
        FormatArg::Json => writeln!(out, "{}", message_json(message)),
    }
}

/// One JSON object per message. Headers are an object of text values (`null` for a header
/// without a value); bodies and values that are not UTF-8 are printed lossily. A got
/// message has no `delivery_tag`.
fn message_json(message: &PrintedMessage<'_>) -> Value {
    let mut headers = Map::new();
    for header in message.headers {
        let value = header.value.as_ref().map_or(Value::Null, |value| {
            Value::from(String::from_utf8_lossy(value).into_owned())
        });
        headers.insert(header.key.clone(), value);
    }
    let mut document = Map::new();
    if let Some(tag) = message.delivery_tag {
        document.insert("delivery_tag".to_string(), Value::from(tag));
    }
    document.insert("routing_key".to_string(), Value::from(message.routing_key));
    document.insert("redelivered".to_string(), Value::from(message.redelivered));
    document.insert("timestamp".to_string(), Value::from(message.timestamp_ms));
    document.insert("headers".to_string(), Value::Object(headers));
    document.insert(
        "body".to_string(),
        Value::from(String::from_utf8_lossy(message.body).into_owned()),
    );
    Value::Object(document)
}
