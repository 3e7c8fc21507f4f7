//! `wharf publish`: publishes one message per line of standard input to an exchange.
//!
//! Publishes are pipelined (up to [`CONFIRMS_PENDING_MAX`] unconfirmed at once) and every
//! answer is awaited before the command exits, so no message is lost in a socket buffer.
//! With `--confirm` a message the broker refused (unroutable `--mandatory`, a full queue with
//! `reject-publish`) is reported on stderr as it is found and the command exits non-zero;
//! without it refusals are only counted in the summary line on stderr (stdout with `--json`).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use wharf_client::{
    Client, Header, PublishConfirm, Publisher, Routing, DELAY_HEADER, EXPIRATION_HEADER,
};

use crate::CliError;

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
    /// Wait for every confirm, report each refused message and exit non-zero if any was.
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
struct Counts {
    published: u64,
    confirmed: u64,
    unrouted: u64,
    failed: u64,
}

/// Runs `wharf publish`.
pub async fn run(client: &Client, args: PublishArgs, json: bool) -> Result<(), CliError> {
    let started = Instant::now();
    let publisher = Publisher::new(client);
    let counts = publish_lines(&publisher, &args).await?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let document = json!({
            "published": counts.published,
            "confirmed": counts.confirmed,
            "unrouted": counts.unrouted,
            "failed": counts.failed,
            "seconds": seconds,
        });
        println!("{document}");
    } else {
        eprintln!(
            "published {} messages in {seconds:.3} s: {} confirmed, {} unrouted (dropped), {} refused",
            counts.published, counts.confirmed, counts.unrouted, counts.failed
        );
    }
    if args.confirm && counts.failed > 0 {
        return Err(CliError::Client(wharf_client::Error::InvalidState {
            reason: "some messages were not confirmed (see above)",
        }));
    }
    Ok(())
}

/// Publishes every line and awaits every answer.
async fn publish_lines(publisher: &Publisher, args: &PublishArgs) -> Result<Counts, CliError> {
    let routing = if args.mandatory {
        Routing::Mandatory
    } else {
        Routing::Optional
    };
    let headers = args.message_headers();
    let mut stdin = BufReader::with_capacity(256 * 1024, tokio::io::stdin());
    let mut pending: VecDeque<(u64, PublishConfirm)> = VecDeque::new();
    let mut counts = Counts::default();
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
        let confirm = publisher
            .start(
                &args.exchange,
                &args.routing_key,
                body,
                headers.clone(),
                routing,
            )
            .await?;
        pending.push_back((counts.published, confirm));
        if pending.len() >= CONFIRMS_PENDING_MAX {
            if let Some((number, confirm)) = pending.pop_front() {
                settle(number, confirm, &mut counts).await?;
            }
        }
    }
    while let Some((number, confirm)) = pending.pop_front() {
        settle(number, confirm, &mut counts).await?;
    }
    Ok(counts)
}

/// Awaits one confirm and counts it; a refusal is reported, a broken connection ends the
/// command (whether the unanswered messages were stored is unknown).
async fn settle(number: u64, confirm: PublishConfirm, counts: &mut Counts) -> Result<(), CliError> {
    match confirm.await {
        Ok(queues) if queues.is_empty() => counts.unrouted += 1,
        Ok(_) => counts.confirmed += 1,
        Err(error) if error.is_connection_error() => return Err(error.into()),
        Err(error) => {
            counts.failed += 1;
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
