//! `wharf exchange ...` and `wharf queue ...`: queue administration printed as tables, or as
//! one JSON document with `--json`.
//!
//! The argument definitions live here rather than in `wharf.rs` because only this module
//! reads them; `wharf.rs` just names the subcommands.

use std::io::{self, Write};

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};
use wharf_client::{
    Admin, Binding, BindingInfo, Client, Durability, ExchangeInfo, ExchangeKind, GetMode,
    HeadersMatch, Overflow, QueueArgs, QueueInfo, QueueMessage,
};

use crate::subscribe::{write_message, PrintedMessage};
use crate::table::{counted, Table};
use crate::{CliError, FormatArg};

/// `wharf exchange ...`.
#[derive(Debug, Subcommand)]
pub enum ExchangeCommand {
    /// Declare an exchange (idempotent when the type matches).
    Declare {
        /// The exchange name.
        name: String,
        /// How it routes.
        #[arg(long = "type", value_enum)]
        kind: ExchangeKindArg,
        /// Forget the exchange when the broker restarts (default: durable).
        #[arg(long)]
        transient: bool,
    },
    /// List exchanges with their bindings count.
    List,
    /// Delete an exchange and its bindings.
    Delete {
        /// The exchange name.
        name: String,
    },
}

/// `wharf queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Declare a queue (idempotent when the arguments match, an error when they differ).
    Declare(DeclareQueueArgs),
    /// Bind a queue to an exchange.
    Bind(BindArgs),
    /// Remove a binding.
    Unbind(BindArgs),
    /// List queues with their ready, delayed, unacknowledged and consumer counts.
    List,
    /// Look at messages at the head of a queue without subscribing (RabbitMQ's basic.get):
    /// printed as `wharf subscribe` prints them. By default they stay in the queue, marked
    /// redelivered; `--ack` removes them. An empty queue prints nothing to stdout, says so
    /// on stderr and exits 0.
    Get(GetArgs),
    /// List bindings (source exchange, queue, routing key or pattern, arguments): all, or
    /// those of one queue. The default exchange binds every queue by its name.
    Bindings {
        /// Only this queue's bindings.
        name: Option<String>,
    },
    /// Move every ready message of SOURCE to the end of DESTINATION, in order, keeping
    /// routing key, headers and body (to put dead-lettered messages back). At-least-once:
    /// each message leaves SOURCE only once it is durable in DESTINATION, so a broker crash
    /// mid-move can leave a message in both queues, never in neither.
    Move {
        /// The queue to empty.
        source: String,
        /// The queue the messages go to.
        destination: String,
    },
    /// Remove every ready message of a queue.
    Purge {
        /// The queue name.
        name: String,
    },
    /// Delete a queue with its messages and bindings.
    Delete {
        /// The queue name.
        name: String,
    },
}

/// `wharf queue declare`.
#[derive(Debug, clap::Args)]
pub struct DeclareQueueArgs {
    /// The queue name.
    pub name: String,
    /// Keep the queue, its messages and ack state across broker restarts.
    #[arg(long)]
    pub durable: bool,
    /// Messages expire (and are dead-lettered) this long after they were published.
    #[arg(long, value_name = "N")]
    pub message_ttl_ms: Option<u64>,
    /// Most ready messages.
    #[arg(long, value_name = "N")]
    pub max_length: Option<u64>,
    /// What a full queue does with one more message.
    #[arg(long, value_enum)]
    pub overflow: Option<OverflowArg>,
    /// Where rejected, expired, dropped and poison messages go.
    #[arg(long, value_name = "X")]
    pub dead_letter_exchange: Option<String>,
    /// Their routing key there (default: the original one).
    #[arg(long, value_name = "K")]
    pub dead_letter_routing_key: Option<String>,
    /// Deliveries after which a message is dead-lettered instead of redelivered.
    #[arg(long, value_name = "N")]
    pub delivery_limit: Option<u32>,
    /// Deliver to one consumer at a time.
    #[arg(long)]
    pub single_active_consumer: bool,
    /// Return a delivery left unacknowledged this long and cancel its consumer.
    #[arg(long, value_name = "N")]
    pub ack_timeout_ms: Option<u64>,
    /// Delete the queue when its last consumer cancels or disconnects.
    #[arg(long)]
    pub auto_delete: bool,
    /// A quorum queue (RabbitMQ's x-queue-type quorum): in a cluster, replicated on three
    /// nodes (every node of a smaller cluster) unless --replication-factor says how many;
    /// on a lone node a durable queue. Needs --durable.
    #[arg(long)]
    pub quorum: bool,
    /// How many nodes of the cluster hold the queue: above 1, every publish, delivery and
    /// ack goes through the queue's replicated log, and the queue goes on with the same
    /// messages on another node when its leader fails. Needs --durable.
    #[arg(long, value_name = "N")]
    pub replication_factor: Option<u32>,
}

/// `wharf queue get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The queue name.
    pub name: String,
    /// Remove the messages from the queue (RabbitMQ's ackmode ack_requeue_false).
    #[arg(long, conflicts_with = "requeue")]
    pub ack: bool,
    /// Leave the messages in the queue at their places, marked redelivered (the default;
    /// RabbitMQ's ackmode ack_requeue_true).
    #[arg(long)]
    pub requeue: bool,
    /// Most messages to get, oldest first (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: u32,
    /// How to print each message.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
}

/// `wharf queue bind|unbind`.
#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// The queue name.
    pub name: String,
    /// The exchange name.
    pub exchange: String,
    /// The routing key or topic pattern (default empty, as fanout exchanges need).
    #[arg(long, value_name = "KEY", conflicts_with = "headers")]
    pub routing_key: Option<String>,
    /// A header to match, KEY=VALUE (repeatable; headers exchanges).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = crate::parse_config)]
    pub headers: Vec<(String, String)>,
    /// Whether all or any of the headers must match.
    #[arg(long = "match", value_enum, requires = "headers")]
    pub match_mode: Option<MatchArg>,
}

/// `--type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeKindArg {
    /// Exact routing key.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Patterns of `.`-separated words with `*` and `#`.
    Topic,
    /// Message headers, all or any.
    Headers,
}

/// `--overflow` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverflowArg {
    /// Drop (dead-letter) the oldest ready message.
    DropHead,
    /// Refuse the publish.
    RejectPublish,
}

/// `--match` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MatchArg {
    /// Every header must match.
    All,
    /// At least one header must match.
    Any,
}

impl From<ExchangeKindArg> for ExchangeKind {
    fn from(kind: ExchangeKindArg) -> ExchangeKind {
        match kind {
            ExchangeKindArg::Direct => ExchangeKind::Direct,
            ExchangeKindArg::Fanout => ExchangeKind::Fanout,
            ExchangeKindArg::Topic => ExchangeKind::Topic,
            ExchangeKindArg::Headers => ExchangeKind::Headers,
        }
    }
}

impl DeclareQueueArgs {
    fn queue_args(&self) -> QueueArgs {
        QueueArgs {
            message_ttl_ms: self.message_ttl_ms,
            max_length: self.max_length,
            overflow: self.overflow.map(|overflow| match overflow {
                OverflowArg::DropHead => Overflow::DropHead,
                OverflowArg::RejectPublish => Overflow::RejectPublish,
            }),
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            dead_letter_routing_key: self.dead_letter_routing_key.clone(),
            delivery_limit: self.delivery_limit,
            single_active_consumer: self.single_active_consumer,
            ack_timeout_ms: self.ack_timeout_ms,
            auto_delete: self.auto_delete,
            quorum: self.quorum,
            replication_factor: self.replication_factor,
        }
    }
}

impl BindArgs {
    fn binding(&self) -> Binding {
        if self.headers.is_empty() {
            return Binding::RoutingKey(self.routing_key.clone().unwrap_or_default());
        }
        Binding::Headers {
            headers: self.headers.clone(),
            match_mode: match self.match_mode {
                Some(MatchArg::Any) => HeadersMatch::Any,
                Some(MatchArg::All) | None => HeadersMatch::All,
            },
        }
    }
}

/// Runs an `exchange` command.
pub async fn exchange(
    client: &Client,
    command: ExchangeCommand,
    json: bool,
) -> Result<(), CliError> {
    let admin = Admin::new(client);
    match command {
        ExchangeCommand::Declare {
            name,
            kind,
            transient,
        } => {
            let durability = if transient {
                Durability::Transient
            } else {
                Durability::Durable
            };
            let kind = ExchangeKind::from(kind);
            admin.declare_exchange(&name, kind, durability).await?;
            if json {
                let document =
                    json!({ "name": name, "type": kind.as_str(), "durable": !transient });
                println!("{document}");
            } else {
                let durability = if transient { "transient" } else { "durable" };
                println!(
                    "declared exchange \"{name}\" ({}, {durability})",
                    kind.as_str()
                );
            }
        }
        ExchangeCommand::List => {
            let exchanges = admin.list_exchanges().await?;
            if json {
                let document: Vec<Value> = exchanges.iter().map(exchange_json).collect();
                println!("{}", Value::Array(document));
            } else {
                print!("{}", exchange_table(&exchanges));
            }
        }
        ExchangeCommand::Delete { name } => {
            admin.delete_exchange(&name).await?;
            done(
                json,
                &name,
                "deleted",
                &format!("deleted exchange \"{name}\""),
            );
        }
    }
    Ok(())
}

/// Runs a `queue` command.
pub async fn queue(client: &Client, command: QueueCommand, json: bool) -> Result<(), CliError> {
    let admin = Admin::new(client);
    match command {
        QueueCommand::Declare(args) => {
            let durability = if args.durable {
                Durability::Durable
            } else {
                Durability::Transient
            };
            admin
                .declare_queue(&args.name, durability, &args.queue_args())
                .await?;
            let name = &args.name;
            done(
                json,
                name,
                "declared",
                &format!("declared queue \"{name}\""),
            );
        }
        QueueCommand::Bind(args) => {
            admin
                .bind_queue(&args.name, &args.exchange, &args.binding())
                .await?;
            let text = format!(
                "bound queue \"{}\" to exchange \"{}\"",
                args.name, args.exchange
            );
            done(json, &args.name, "bound", &text);
        }
        QueueCommand::Unbind(args) => {
            admin
                .unbind_queue(&args.name, &args.exchange, &args.binding())
                .await?;
            let text = format!(
                "unbound queue \"{}\" from exchange \"{}\"",
                args.name, args.exchange
            );
            done(json, &args.name, "unbound", &text);
        }
        QueueCommand::List => {
            let queues = admin.list_queues().await?;
            if json {
                let document: Vec<Value> = queues.iter().map(queue_json).collect();
                println!("{}", Value::Array(document));
            } else {
                print!("{}", queue_table(&queues));
            }
        }
        QueueCommand::Get(args) => get(&admin, args, json).await?,
        QueueCommand::Bindings { name } => {
            let bindings = admin.list_bindings(name.as_deref()).await?;
            if json {
                let document: Vec<Value> = bindings.iter().map(binding_json).collect();
                println!("{}", Value::Array(document));
            } else {
                print!("{}", binding_table(&bindings));
            }
        }
        QueueCommand::Move {
            source,
            destination,
        } => {
            let outcome = admin.move_messages(&source, &destination).await?;
            let moved = outcome.moved;
            if json {
                let document =
                    json!({ "source": source, "destination": destination, "moved": moved });
                println!("{document}");
            } else {
                println!(
                    "moved {} from queue \"{source}\" to queue \"{destination}\"",
                    counted(moved, "message")
                );
            }
            if let Some(error) = outcome.stopped {
                return Err(error.into());
            }
        }
        QueueCommand::Purge { name } => {
            let purged = admin.purge_queue(&name).await?;
            if json {
                println!("{}", json!({ "name": name, "purged": purged }));
            } else {
                println!(
                    "purged {} from queue \"{name}\"",
                    counted(purged, "message")
                );
            }
        }
        QueueCommand::Delete { name } => {
            admin.delete_queue(&name).await?;
            done(json, &name, "deleted", &format!("deleted queue \"{name}\""));
        }
    }
    Ok(())
}

/// `wharf queue get`: prints each message as `wharf subscribe` does; an empty queue is said
/// on stderr (stdout stays empty, so scripts see no message) and is not an error.
async fn get(admin: &Admin, args: GetArgs, json: bool) -> Result<(), CliError> {
    let mode = if args.ack {
        GetMode::Ack
    } else {
        GetMode::Requeue
    };
    let messages = admin.get_messages(&args.name, args.count, mode).await?;
    if messages.is_empty() {
        eprintln!("queue \"{}\" has no ready message", args.name);
        return Ok(());
    }
    let format = args.format.unwrap_or(if json {
        FormatArg::Json
    } else {
        FormatArg::Value
    });
    let mut out = io::BufWriter::new(io::stdout());
    let written = messages
        .iter()
        .try_for_each(|message| write_message(&mut out, &printed(message), format))
        .and_then(|()| out.flush());
    match written {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(CliError::Stdout(error)),
        _ => Ok(()),
    }
}

fn printed(message: &QueueMessage) -> PrintedMessage<'_> {
    PrintedMessage {
        delivery_tag: None,
        routing_key: &message.routing_key,
        redelivered: message.redelivered,
        timestamp_ms: message.timestamp_ms,
        headers: &message.headers,
        body: &message.body,
    }
}

fn binding_json(binding: &BindingInfo) -> Value {
    let arguments: serde_json::Map<String, Value> = binding
        .arguments
        .iter()
        .map(|(key, value)| (key.clone(), Value::from(value.as_str())))
        .collect();
    json!({
        "exchange": binding.exchange,
        "queue": binding.queue,
        "routing_key": binding.routing_key,
        "arguments": Value::Object(arguments),
    })
}

fn binding_table(bindings: &[BindingInfo]) -> String {
    let mut table = Table::new(&["EXCHANGE", "QUEUE", "ROUTING KEY", "ARGUMENTS"]);
    for binding in bindings {
        let exchange = if binding.exchange.is_empty() {
            "(default)".to_string()
        } else {
            binding.exchange.clone()
        };
        let arguments: Vec<String> = binding
            .arguments
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        table.row(vec![
            exchange,
            binding.queue.clone(),
            binding.routing_key.clone(),
            arguments.join(","),
        ]);
    }
    table.render()
}

/// Prints the outcome of a command that returns nothing: `{"name": ..., "<what>": true}`
/// with `--json`, else `text`.
fn done(json: bool, name: &str, what: &str, text: &str) {
    if json {
        let mut document = serde_json::Map::new();
        document.insert("name".to_string(), Value::from(name));
        document.insert(what.to_string(), Value::Bool(true));
        println!("{}", Value::Object(document));
    } else {
        println!("{text}");
    }
}

fn exchange_json(exchange: &ExchangeInfo) -> Value {
    json!({
        "name": exchange.name,
        "type": exchange.kind,
        "durable": exchange.durable,
        "bindings": exchange.binding_count,
    })
}

fn exchange_table(exchanges: &[ExchangeInfo]) -> String {
    let mut table = Table::new(&["NAME", "TYPE", "DURABLE", "BINDINGS"]);
    for exchange in exchanges {
        let name = if exchange.name.is_empty() {
            "(default)".to_string()
        } else {
            exchange.name.clone()
        };
        table.row(vec![
            name,
            exchange.kind.clone(),
            exchange.durable.to_string(),
            exchange.binding_count.to_string(),
        ]);
    }
    table.render()
}

fn queue_json(queue: &QueueInfo) -> Value {
    json!({
        "name": queue.name,
        "durable": queue.durable,
        "ready": queue.ready,
        "delayed": queue.delayed,
        "unacked": queue.unacked,
        "consumers": queue.consumers,
    })
}

fn queue_table(queues: &[QueueInfo]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "DURABLE",
        "READY",
        "DELAYED",
        "UNACKED",
        "CONSUMERS",
    ]);
    for queue in queues {
        table.row(vec![
            queue.name.clone(),
            queue.durable.to_string(),
            queue.ready.to_string(),
            queue.delayed.to_string(),
            queue.unacked.to_string(),
            queue.consumers.to_string(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_table_shows_counts() {
        let queues = [QueueInfo {
            name: "orders".to_string(),
            durable: true,
            ready: 3,
            delayed: 4,
            unacked: 1,
            consumers: 2,
        }];
        assert_eq!(
            queue_table(&queues),
            "NAME    DURABLE  READY  DELAYED  UNACKED  CONSUMERS\norders  true     3      4        1        2\n"
        );
    }

    #[test]
    fn binding_table_names_the_default_exchange_and_joins_arguments() {
        let bindings = [
            BindingInfo {
                exchange: String::new(),
                queue: "docs".to_string(),
                routing_key: "docs".to_string(),
                arguments: Vec::new(),
            },
            BindingInfo {
                exchange: "by-header".to_string(),
                queue: "docs".to_string(),
                routing_key: String::new(),
                arguments: vec![
                    ("x-match".to_string(), "any".to_string()),
                    ("format".to_string(), "pdf".to_string()),
                ],
            },
        ];
        let table = binding_table(&bindings);
        assert!(
            table.starts_with("EXCHANGE   QUEUE  ROUTING KEY  ARGUMENTS\n"),
            "{table}"
        );
        assert!(table.contains("(default)  docs   docs"), "{table}");
        assert!(table.contains("x-match=any,format=pdf"), "{table}");
    }

    #[test]
    fn default_exchange_is_named_in_tables() {
        let exchanges = [ExchangeInfo {
            name: String::new(),
            kind: "direct".to_string(),
            durable: true,
            binding_count: 0,
        }];
        assert!(exchange_table(&exchanges).contains("(default)"));
    }
}
