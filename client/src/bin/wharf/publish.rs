//! `wharf publish`: publishes one message per line of standard input to an exchange.
//!
//! Publishes are pipelined (up to [`CONFIRMS_PENDING_MAX`] unconfirmed at once) and every
//! answer is awaited before the command exits, so no message is lost in a socket buffer.
//! A message counts as stored once its confirm names at least one queue. One that matched no
//! queue is unroutable (dropped by the broker, or refused with `--mandatory`), and one the
//! broker refused (unknown exchange, a full queue with `reject-publish`) is reported on
//! stderr as its answer arrives; `--confirm` reports each unroutable message the same way.
//! The summary line (stderr, or one JSON document on stdout with `--json`) counts all of
//! them, and the exit status says whether every message was stored: see
//! [`EXIT_STATUS_HELP`].

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use wharf_client::{
    Client, Header, PublishConfirm, Publisher, Routing, DELAY_HEADER, EXPIRATION_HEADER,
};

use crate::table::counted;
use crate::{CliError, EXIT_NOT_STORED};

/// The exit statuses of `wharf publish`, for its `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  every message was stored in at least one queue
  3  every message was answered, but some were not stored: unroutable (matched no queue:
     dropped, or refused with --mandatory) or refused (unknown exchange, full queue);
     the last line on stderr gives the counts
  1  the command stopped early (a lost connection: the messages not yet confirmed may or
     may not be stored) or could not start
  2  usage error";
// The help text above spells the code out.
const _: () = assert!(EXIT_NOT_STORED == 3);

/// Most publishes awaiting their confirm at once: enough to keep the broker's group commit
/// busy, and below the connection's in-flight request limit (64 by default): an unawaited
/// confirm holds its slot, so a larger window would wait forever for a free one.
const CONFIRMS_PENDING_MAX: usize = 32;

/// `wharf publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The exchange (`""` is the default exchange, which routes to the queue named by the key).
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// Also report each unroutable message on stderr as its answer arrives (refused ones
    /// always are). Every confirm is awaited either way, and the exit status is the same.
    #[arg(long)]
    pub confirm: bool,
    /// Refuse messages that match no queue instead of dropping them.
    #[arg(long)]
    pub mandatory: bool,
    /// A message header, KEY=VALUE (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = crate::parse_config)]
    pub headers: Vec<(String, String)>,
    /// Per-message time to live (`x-expiration-ms`).
    #[arg(long, value_name = "N")]
    pub ttl_ms: Option<u64>,
    /// Hold each message this long before it becomes deliverable (`x-delay`).
    #[arg(long, value_name = "N")]
    pub delay_ms: Option<u64>,
}

impl PublishArgs {
    /// What happens to a message no queue takes.
    fn routing(&self) -> Routing {
        if self.mandatory {
            Routing::Mandatory
        } else {
            Routing::Optional
        }
    }

    /// The headers every message carries.
    fn message_headers(&self) -> Vec<Header> {
        let mut headers: Vec<Header> = self
            .headers
            .iter()
            .map(|(key, value)| header(key, value.clone()))
            .collect();
        if let Some(ttl) = self.ttl_ms {
            headers.push(header(EXPIRATION_HEADER, ttl.to_string()));
        }
        if let Some(delay) = self.delay_ms {
            headers.push(header(DELAY_HEADER, delay.to_string()));
        }
        headers
    }
}

/// What happened to the messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    published: u64,
    confirmed: u64,
    unrouted: u64,
    refused: u64,
}

impl Counts {
    /// Messages stored in no queue: unroutable or refused.
    fn not_stored(&self) -> u64 {
        self.unrouted + self.refused
    }

    /// The summary line: how many were published, in how long, and what became of them.
    pub fn summary(&self, seconds: f64) -> String {
        let published = format!(
            "published {} in {seconds:.3} s",
            counted(self.published, "message")
        );
        let outcome = format!(
            "{} confirmed, {} unrouted (dropped), {} refused",
            self.confirmed, self.unrouted, self.refused
        );
        match self.not_stored() {
            0 => format!("{published}: {outcome}"),
            lost => format!("{published}, {lost} not stored: {outcome}"),
        }
    }
}

/// Runs `wharf publish`.
///
/// # Errors
/// [`CliError::NotStored`] if some message was not stored; the client's and standard
/// input's errors.
pub async fn run(client: &Client, args: PublishArgs, json: bool) -> Result<(), CliError> {
    let started = Instant::now();
    let publisher = Publisher::new(client);
    let mut counts = Counts::default();
    if let Err(error) = publish_lines(&publisher, &args, &mut counts).await {
        // Whatever stops the command, say what became of what was read.
        eprintln!(
            "stopped: {}",
            counts.summary(started.elapsed().as_secs_f64())
        );
        return Err(error);
    }
    let seconds = started.elapsed().as_secs_f64();
    if json {
        // The names every JSON summary of the CLI shares (README, "JSON output"): the count
        // handled is `messages`, outcomes are the words of the text summary.
        let document = json!({
            "messages": counts.published,
            "confirmed": counts.confirmed,
            "unrouted": counts.unrouted,
            "refused": counts.refused,
            "seconds": seconds,
            "messages_per_second": counts.published as f64 / seconds.max(1e-6),
        });
        println!("{document}");
    }
    if counts.not_stored() > 0 {
        // Printed by `main` as the last line, with the counts.
        return Err(CliError::NotStored { counts, seconds });
    }
    if !json {
        eprintln!("{}", counts.summary(seconds));
    }
    Ok(())
}

/// Publishes every line and awaits every answer, counting into `counts`. A lost connection
/// (a broker restart) is ridden through: the messages not yet confirmed are published again,
/// in order, each waiting for its confirm with reconnects, then pipelining resumes
/// (at-least-once: one whose confirm was lost may be stored twice).
async fn publish_lines(
    publisher: &Publisher,
    args: &PublishArgs,
    counts: &mut Counts,
) -> Result<(), CliError> {
    let routing = args.routing();
    let headers = args.message_headers();
    let mut stdin = BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = stdin
            .read_until(b'\n', &mut line)
            .await
            .map_err(CliError::Stdin)?;
        if read == 0 {
            break;
        }
        let body = Bytes::copy_from_slice(trim_newline(&line));
        counts.published += 1;
        let started = publisher
            .start(
                &args.exchange,
                &args.routing_key,
                body.clone(),
                headers.clone(),
                routing,
            )
            .await;
        match started {
            Ok(confirm) => pending.push_back((counts.published, body, Some(confirm))),
            Err(error) if error.is_connection_error() => {
                pending.push_back((counts.published, body, None));
                republish(publisher, args, &mut pending, counts).await?;
            }
            Err(error) => return Err(error.into()),
        }
        if pending.len() >= CONFIRMS_PENDING_MAX {
            settle_oldest(publisher, args, &mut pending, counts).await?;
        }
    }
    while !pending.is_empty() {
        settle_oldest(publisher, args, &mut pending, counts).await?;
    }
    Ok(())
}

/// A message read and published, with its number, its body (to publish it again after a
/// lost connection) and its confirm (`None` if it never went out).
type Pending = (u64, Bytes, Option<PublishConfirm>);

/// Awaits the oldest confirm and counts it; a lost connection publishes every pending
/// message again.
async fn settle_oldest(
    publisher: &Publisher,
    args: &PublishArgs,
    pending: &mut VecDeque<Pending>,
    counts: &mut Counts,
) -> Result<(), CliError> {
    let Some((number, body, confirm)) = pending.pop_front() else {
        return Ok(());
    };
    let Some(confirm) = confirm else {
        pending.push_front((number, body, None));
        return republish(publisher, args, pending, counts).await;
    };
    match confirm.await {
        Err(error) if error.is_connection_error() => {
            pending.push_front((number, body, None));
            republish(publisher, args, pending, counts).await
        }
        outcome => count(number, outcome, args, counts),
    }
}

/// Publishes every pending message again, in order, each waiting for its confirm with the
/// client's reconnects (so it rides through a broker restart).
async fn republish(
    publisher: &Publisher,
    args: &PublishArgs,
    pending: &mut VecDeque<Pending>,
    counts: &mut Counts,
) -> Result<(), CliError> {
    let routing = args.routing();
    let headers = args.message_headers();
    eprintln!(
        "warning: connection lost; publishing {} unconfirmed message(s) again (at-least-once)",
        pending.len()
    );
    while let Some((number, body, _)) = pending.pop_front() {
        let outcome = publisher
            .publish(
                &args.exchange,
                &args.routing_key,
                body,
                headers.clone(),
                routing,
            )
            .await;
        count(number, outcome, args, counts)?;
    }
    Ok(())
}

/// Counts one confirm; a refusal is reported (and with `--confirm` an unroutable message
/// too), a connection error ends the command.
fn count(
    number: u64,
    outcome: wharf_client::Result<Vec<String>>,
    args: &PublishArgs,
    counts: &mut Counts,
) -> Result<(), CliError> {
    match outcome {
        Ok(queues) if queues.is_empty() => {
            counts.unrouted += 1;
            if args.confirm {
                eprintln!(
                    "error: message {number} not stored: no queue is bound to exchange \"{}\" for routing key \"{}\" (dropped)",
                    args.exchange, args.routing_key
                );
            }
        }
        Ok(_) => counts.confirmed += 1,
        Err(error) if error.is_connection_error() => return Err(error.into()),
        Err(error) => {
            counts.refused += 1;
            eprintln!("error: message {number} not confirmed: {error}");
        }
    }
    Ok(())
}

fn header(key: &str, value: String) -> Header {
    Header {
        key: key.to_string(),
        value: Some(Bytes::from(value)),
    }
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_says_how_many_were_not_stored() {
        let all_stored = Counts {
            published: 1,
            confirmed: 1,
            ..Counts::default()
        };
        assert_eq!(
            all_stored.summary(0.5),
            "published 1 message in 0.500 s: 1 confirmed, 0 unrouted (dropped), 0 refused"
        );
        let some_lost = Counts {
            published: 4,
            confirmed: 1,
            unrouted: 2,
            refused: 1,
        };
        assert_eq!(
            some_lost.summary(0.25),
            "published 4 messages in 0.250 s, 3 not stored: 1 confirmed, 2 unrouted (dropped), 1 refused"
        );
    }

    #[test]
    fn ttl_and_delay_become_headers_after_the_given_ones() {
        let args = PublishArgs {
            exchange: "events".to_string(),
            routing_key: "a".to_string(),
            confirm: true,
            mandatory: false,
            headers: vec![("format".to_string(), "pdf".to_string())],
            ttl_ms: Some(100),
            delay_ms: Some(500),
        };
        let headers = args.message_headers();
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|header| (header.key.as_str(), header.value.as_deref().unwrap_or(b"")))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("format", &b"pdf"[..]),
                ("x-expiration-ms", &b"100"[..]),
                ("x-delay", &b"500"[..]),
            ]
        );
    }
}
