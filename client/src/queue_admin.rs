//! Queue administration on [`Admin`]: exchanges, queues, bindings, purge, listings, getting
//! messages without a subscription, and moving messages between queues.
//!
//! Thin typed wrappers over DeclareExchange, DeleteExchange, ListExchanges, DeclareQueue,
//! DeleteQueue, PurgeQueue, BindQueue, UnbindQueue, ListQueues, QueueGet, ListBindings and
//! MoveMessages. Queue arguments travel by
//! name (`message-ttl-ms`, `max-length`, ...); [`QueueArgs`] is their typed form, so a typo
//! is a compile error instead of an ignored argument. Error codes become the queue variants
//! of [`Error`](crate::Error).

use bytes::Bytes;
use wharf_protocol::messages::*;
use wharf_protocol::{Header, Request};

use crate::admin::Admin;
use crate::cluster::{response_as, FromResponse, Target};
use crate::error::{check_queue_code, Error, QueueSubject, Result};

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// To queues bound with exactly the message's routing key.
    Direct,
    /// To every bound queue.
    Fanout,
    /// By pattern: `.`-separated words, `*` = one word, `#` = zero or more words.
    Topic,
    /// By message headers (`x-match` all or any).
    Headers,
}

impl ExchangeKind {
    /// The name on the wire (`direct`, `fanout`, `topic`, `headers`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Whether a definition (and for queues, their messages and ack state) survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Survives a broker restart.
    Durable,
    /// Lost when the broker restarts.
    Transient,
}

impl Durability {
    fn is_durable(self) -> bool {
        self == Durability::Durable
    }
}

/// What a full queue (at `max_length`) does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (dead-letter) the oldest ready message.
    DropHead,
    /// Refuse the publish: the publisher gets [`Error::QueueFull`](crate::Error::QueueFull).
    RejectPublish,
}

impl Overflow {
    /// The name on the wire (`drop-head`, `reject-publish`).
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
        }
    }
}

/// Optional arguments of a queue; `QueueArgs::default()` sets none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArgs {
    /// Messages expire (and are dead-lettered) this long after they were published.
    pub message_ttl_ms: Option<u64>,
    /// Most ready messages.
    pub max_length: Option<u64>,
    /// What happens past `max_length` (the broker's default is drop-head).
    pub overflow: Option<Overflow>,
    /// Where rejected, expired, dropped and poison messages go.
    pub dead_letter_exchange: Option<String>,
    /// Their routing key there (default: the original one).
    pub dead_letter_routing_key: Option<String>,
    /// Deliveries after which a message is dead-lettered instead of redelivered again.
    pub delivery_limit: Option<u32>,
    /// Deliver to one consumer at a time; the next takes over when it goes.
    pub single_active_consumer: bool,
    /// A delivery unacknowledged this long returns to the queue and its consumer is
    /// cancelled.
    pub ack_timeout_ms: Option<u64>,
    /// Delete the queue when its last consumer cancels or disconnects.
    pub auto_delete: bool,
    /// A quorum queue: in a cluster, replicated on three nodes (or every node of a smaller
    /// one) unless `replication_factor` says how many.
    pub quorum: bool,
    /// How many nodes of a cluster hold the queue; above 1 every write goes through its
    /// replicated log.
    pub replication_factor: Option<u32>,
}

impl QueueArgs {
    /// The arguments as the wire's name/value pairs.
    pub fn to_entries(&self) -> Vec<ConfigEntry> {
        let mut entries = Vec::new();
        let mut push = |key: &str, value: String| {
            entries.push(ConfigEntry {
                key: key.to_string(),
                value,
            });
        };
        if let Some(ttl) = self.message_ttl_ms {
            push("message-ttl-ms", ttl.to_string());
        }
        if let Some(max_length) = self.max_length {
            push("max-length", max_length.to_string());
        }
        if let Some(overflow) = self.overflow {
            push("overflow", overflow.as_str().to_string());
        }
        if let Some(exchange) = &self.dead_letter_exchange {
            push("dead-letter-exchange", exchange.clone());
        }
        if let Some(key) = &self.dead_letter_routing_key {
            push("dead-letter-routing-key", key.clone());
        }
        if let Some(limit) = self.delivery_limit {
            push("delivery-limit", limit.to_string());
        }
        if self.single_active_consumer {
            push("single-active-consumer", "true".to_string());
        }
        if let Some(timeout) = self.ack_timeout_ms {
            push("ack-timeout-ms", timeout.to_string());
        }
        if self.auto_delete {
            push("auto-delete", "true".to_string());
        }
        if self.quorum {
            push("queue-type", "quorum".to_string());
        }
        if let Some(factor) = self.replication_factor {
            push("replication-factor", factor.to_string());
        }
        entries
    }
}

/// How a headers binding matches a message's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersMatch {
    /// Every binding header must be present with its value.
    All,
    /// At least one must.
    Any,
}

impl HeadersMatch {
    /// The `x-match` value (`all`, `any`).
    pub fn as_str(self) -> &'static str {
        match self {
            HeadersMatch::All => "all",
            HeadersMatch::Any => "any",
        }
    }
}

/// What a binding matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// A routing key (or topic pattern); ignored by fanout exchanges.
    RoutingKey(String),
    /// Header pairs, for headers exchanges.
    Headers {
        /// The `key`/`value` pairs to match.
        headers: Vec<(String, String)>,
        /// All or any of them.
        match_mode: HeadersMatch,
    },
}

impl Binding {
    fn to_request(&self, queue: &str, exchange: &str) -> BindQueueRequest {
        let (routing_key, headers) = match self {
            Binding::RoutingKey(key) => (key.clone(), Vec::new()),
            Binding::Headers {
                headers,
                match_mode,
            } => {
                let mut entries = vec![ConfigEntry {
                    key: "x-match".to_string(),
                    value: match_mode.as_str().to_string(),
                }];
                entries.extend(headers.iter().map(|(key, value)| ConfigEntry {
                    key: key.clone(),
                    value: value.clone(),
                }));
                (String::new(), entries)
            }
        };
        BindQueueRequest {
            queue: queue.to_string(),
            exchange: exchange.to_string(),
            routing_key,
            headers,
        }
    }
}

/// An exchange as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeInfo {
    /// Its name (`""` is the default exchange).
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    pub kind: String,
    /// Whether it survives a restart.
    pub durable: bool,
    /// Bindings from it.
    pub binding_count: u32,
}

/// A queue as listed, with its counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// Whether it survives a restart.
    pub durable: bool,
    /// Messages waiting for delivery (delayed ones not included).
    pub ready: u64,
    /// Messages waiting for their `x-delay` to pass.
    pub delayed: u64,
    /// Delivered, not yet acknowledged.
    pub unacked: u64,
    /// Subscribed consumers.
    pub consumers: u64,
}

/// What [`Admin::get_messages`] does with the messages it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GetMode {
    /// They stay in the queue at their places, marked redelivered from then on (RabbitMQ's
    /// `ackmode=ack_requeue_true`).
    #[default]
    Requeue,
    /// They are removed from the queue before the answer comes (`ackmode=ack_requeue_false`).
    Ack,
}

/// A message returned by [`Admin::get_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// True if the message was delivered (or got) before.
    pub redelivered: bool,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its headers, broker-added ones (`x-exchange`, `x-death-*`) included.
    pub headers: Vec<Header>,
    /// The body.
    pub body: Bytes,
    /// When the broker stored it (ms since the Unix epoch).
    pub timestamp_ms: i64,
}

/// A binding as listed by [`Admin::list_bindings`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingInfo {
    /// The source exchange (`""`: the default exchange, which binds every queue by name).
    pub exchange: String,
    /// The destination queue.
    pub queue: String,
    /// The routing key or topic pattern (empty for fanout and headers exchanges).
    pub routing_key: String,
    /// A headers binding's arguments, `x-match` first.
    pub arguments: Vec<(String, String)>,
}

/// The outcome of [`Admin::move_messages`].
#[derive(Debug)]
pub struct MoveOutcome {
    /// Messages now in the destination and gone from the source.
    pub moved: u64,
    /// Why the broker stopped before the source was empty; the rest stay in the source.
    pub stopped: Option<Error>,
}

impl Admin {
    /// Declares exchange `name` (idempotent when kind and durability match).
    ///
    /// # Errors
    /// [`Error::PreconditionFailed`](crate::Error::PreconditionFailed) if it exists with
    /// another kind, [`Error::Server`](crate::Error::Server) for an invalid name, request
    /// errors.
    pub async fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        durability: Durability,
    ) -> Result<()> {
        let request = Request::DeclareExchange(DeclareExchangeRequest {
            name: name.to_string(),
            kind: kind.as_str().to_string(),
            durable: durability.is_durable(),
        });
        self.queue_call::<QueueAdminResponse>(request, exchange_subject(name))
            .await
            .map(drop)
    }

    /// Deletes exchange `name` and its bindings.
    ///
    /// # Errors
    /// [`Error::UnknownExchange`](crate::Error::UnknownExchange), request errors.
    pub async fn delete_exchange(&self, name: &str) -> Result<()> {
        let request = Request::DeleteExchange(DeleteExchangeRequest {
            name: name.to_string(),
        });
        self.queue_call::<QueueAdminResponse>(request, exchange_subject(name))
            .await
            .map(drop)
    }

    /// Every exchange, the built-in ones included, sorted by name.
    ///
    /// # Errors
    /// Request errors.
    pub async fn list_exchanges(&self) -> Result<Vec<ExchangeInfo>> {
        let request = Request::ListExchanges(ListExchangesRequest {});
        let response: ListExchangesResponse =
            self.queue_call(request, QueueSubject::default()).await?;
        let mut exchanges: Vec<ExchangeInfo> = response
            .exchanges
            .into_iter()
            .map(|exchange| ExchangeInfo {
                name: exchange.name,
                kind: exchange.kind,
                durable: exchange.durable,
                binding_count: exchange.bindings,
            })
            .collect();
        exchanges.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(exchanges)
    }

    /// Declares queue `name` (idempotent when the arguments match).
    ///
    /// # Errors
    /// [`Error::PreconditionFailed`](crate::Error::PreconditionFailed) if it exists with
    /// other arguments, [`Error::Server`](crate::Error::Server) for invalid ones, request
    /// errors.
    pub async fn declare_queue(
        &self,
        name: &str,
        durability: Durability,
        args: &QueueArgs,
    ) -> Result<()> {
        let request = Request::DeclareQueue(DeclareQueueRequest {
            name: name.to_string(),
            durable: durability.is_durable(),
            args: args.to_entries(),
        });
        self.queue_call::<QueueAdminResponse>(request, queue_subject(name))
            .await
            .map(drop)
    }

    /// Deletes queue `name` with its messages and bindings.
    ///
    /// # Errors
    /// [`Error::UnknownQueue`](crate::Error::UnknownQueue), request errors.
    pub async fn delete_queue(&self, name: &str) -> Result<()> {
        let request = Request::DeleteQueue(DeleteQueueRequest {
            name: name.to_string(),
        });
        self.queue_call::<QueueAdminResponse>(request, queue_subject(name))
            .await
            .map(drop)
    }

    /// Removes every ready message of queue `name`; returns how many.
    ///
    /// # Errors
    /// [`Error::UnknownQueue`](crate::Error::UnknownQueue), request errors.
    pub async fn purge_queue(&self, name: &str) -> Result<u64> {
        let request = Request::PurgeQueue(PurgeQueueRequest {
            name: name.to_string(),
        });
        let response: PurgeQueueResponse = self.queue_call(request, queue_subject(name)).await?;
        Ok(response.purged)
    }

    /// Binds `queue` to `exchange`.
    ///
    /// # Errors
    /// [`Error::UnknownQueue`](crate::Error::UnknownQueue),
    /// [`Error::UnknownExchange`](crate::Error::UnknownExchange), request errors.
    pub async fn bind_queue(&self, queue: &str, exchange: &str, binding: &Binding) -> Result<()> {
        let request = Request::BindQueue(binding.to_request(queue, exchange));
        self.queue_call::<QueueAdminResponse>(request, bind_subject(queue, exchange))
            .await
            .map(drop)
    }

    /// Removes a binding made with [`Admin::bind_queue`].
    ///
    /// # Errors
    /// As [`Admin::bind_queue`].
    pub async fn unbind_queue(&self, queue: &str, exchange: &str, binding: &Binding) -> Result<()> {
        let request = Request::UnbindQueue(binding.to_request(queue, exchange));
        self.queue_call::<QueueAdminResponse>(request, bind_subject(queue, exchange))
            .await
            .map(drop)
    }

    /// Every queue with its ready, unacknowledged and consumer counts, sorted by name.
    ///
    /// # Errors
    /// Request errors.
    pub async fn list_queues(&self) -> Result<Vec<QueueInfo>> {
        let request = Request::ListQueues(ListQueuesRequest {});
        let response: ListQueuesResponse =
            self.queue_call(request, QueueSubject::default()).await?;
        let mut queues: Vec<QueueInfo> = response
            .queues
            .into_iter()
            .map(|queue| QueueInfo {
                name: queue.name,
                durable: queue.durable,
                ready: queue.ready,
                delayed: queue.delayed,
                unacked: queue.unacked,
                consumers: queue.consumers,
            })
            .collect();
        queues.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(queues)
    }

    /// Takes up to `count` ready messages from the head of `queue` without a subscription,
    /// as RabbitMQ's `basic.get`: with [`GetMode::Requeue`] they stay in the queue (marked
    /// redelivered), with [`GetMode::Ack`] they are removed. Empty when no message is ready;
    /// fewer than `count` when fewer are ready or the answer reached its byte bound (8 MiB).
    ///
    /// With [`GetMode::Requeue`] the request is resent after a connection error, like the
    /// other admin calls (a resent get only marks the messages once more). With
    /// [`GetMode::Ack`] it is sent once: if the connection is lost before the answer, the
    /// messages may be gone from the queue unseen, and the error says so.
    ///
    /// ```no_run
    /// # async fn example(client: &wharf_client::Client) -> wharf_client::Result<()> {
    /// use wharf_client::{Admin, GetMode};
    /// let peeked = Admin::new(client).get_messages("orders.dlq", 5, GetMode::Requeue).await?;
    /// for message in peeked {
    ///     println!("{}", String::from_utf8_lossy(&message.body));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownQueue`](crate::Error::UnknownQueue),
    /// [`Error::Server`](crate::Error::Server) for a count of 0 or above 10,000, request
    /// errors.
    pub async fn get_messages(
        &self,
        queue: &str,
        count: u32,
        mode: GetMode,
    ) -> Result<Vec<QueueMessage>> {
        let request = Request::QueueGet(QueueGetRequest {
            queue: queue.to_string(),
            count,
            ack_mode: match mode {
                GetMode::Requeue => GetAckMode::Requeue,
                GetMode::Ack => GetAckMode::Ack,
            },
        });
        let response: QueueGetResponse = match mode {
            GetMode::Requeue => self.queue_call(request, queue_subject(queue)).await?,
            GetMode::Ack => self.queue_call_once(request, queue_subject(queue)).await?,
        };
        Ok(response
            .messages
            .into_iter()
            .map(|message| QueueMessage {
                redelivered: message.redelivered,
                routing_key: message.routing_key,
                headers: message
                    .headers
                    .into_iter()
                    .map(|entry| Header {
                        key: entry.key,
                        value: entry.value,
                    })
                    .collect(),
                body: message.body,
                timestamp_ms: message.timestamp_ms,
            })
            .collect())
    }

    /// Every binding, or (with `queue`) those of one queue, sorted by exchange, queue and
    /// routing key. The default exchange is listed binding each queue by its name.
    ///
    /// # Errors
    /// [`Error::UnknownQueue`](crate::Error::UnknownQueue), request errors.
    pub async fn list_bindings(&self, queue: Option<&str>) -> Result<Vec<BindingInfo>> {
        let request = Request::ListBindings(ListBindingsRequest {
            queue: queue.map(str::to_string),
        });
        let subject = queue_subject(queue.unwrap_or_default());
        let response: ListBindingsResponse = self.queue_call(request, subject).await?;
        Ok(response
            .bindings
            .into_iter()
            .map(|binding| BindingInfo {
                exchange: binding.exchange,
                queue: binding.queue,
                routing_key: binding.routing_key,
                arguments: binding
                    .arguments
                    .into_iter()
                    .map(|entry| (entry.key, entry.value))
                    .collect(),
            })
            .collect())
    }

    /// Moves every ready message of `source` to the end of `destination`, in order, with
    /// routing key, headers and body: the broker does it in rounds, and settles each message
    /// in `source` only once it is durable in `destination`. At-least-once: after a broker
    /// crash mid-move a message may be in both queues, never in neither. Messages published
    /// to `source` during the move stay there.
    ///
    /// The request is sent once (a lost connection is an error, not a resend): the broker
    /// runs the move on its own and finishes it even when the connection is lost, and only
    /// this answer can say how many messages it moved.
    ///
    /// # Errors
    /// Request errors; what stopped the broker part-way is in
    /// [`MoveOutcome::stopped`] ([`Error::UnknownQueue`](crate::Error::UnknownQueue),
    /// [`Error::QueueFull`](crate::Error::QueueFull), ...).
    pub async fn move_messages(&self, source: &str, destination: &str) -> Result<MoveOutcome> {
        let request = Request::MoveMessages(MoveMessagesRequest {
            source: source.to_string(),
            destination: destination.to_string(),
        });
        let api_key = request.api_key();
        let answer = self.client.start(Target::Any, &request).await?;
        let response: MoveMessagesResponse = response_as(answer.await?, api_key)?;
        // An unknown or deleted queue may be either one; the broker's message names it.
        let named = response
            .error_message
            .as_deref()
            .filter(|message| message.contains(&format!("{destination:?}")))
            .map_or(source, |_| destination);
        let stopped =
            check_queue_code(response.error, response.error_message, queue_subject(named)).err();
        Ok(MoveOutcome {
            moved: response.moved,
            stopped,
        })
    }

    /// Like `queue_call`, in one attempt: for requests that must not be resent.
    async fn queue_call_once<T: FromResponse>(
        &self,
        request: Request,
        subject: QueueSubject<'_>,
    ) -> Result<T> {
        let api_key = request.api_key();
        let answer = self.client.start(Target::Any, &request).await?;
        let response: T = response_as(answer.await?, api_key)?;
        let (code, message) = response.top_error();
        check_queue_code(code, message, subject)?;
        Ok(response)
    }

    async fn queue_call<T: FromResponse>(
        &self,
        request: Request,
        subject: QueueSubject<'_>,
    ) -> Result<T> {
        let response: T = self.client.call_unchecked(Target::Any, request).await?;
        let (code, message) = response.top_error();
        check_queue_code(code, message, subject)?;
        Ok(response)
    }
}

fn queue_subject(queue: &str) -> QueueSubject<'_> {
    QueueSubject {
        queue,
        ..QueueSubject::default()
    }
}

fn exchange_subject(exchange: &str) -> QueueSubject<'_> {
    QueueSubject {
        exchange,
        ..QueueSubject::default()
    }
}

fn bind_subject<'a>(queue: &'a str, exchange: &'a str) -> QueueSubject<'a> {
    QueueSubject {
        queue,
        exchange,
        ..QueueSubject::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_args_travel_by_their_wire_names() {
        let args = QueueArgs {
            message_ttl_ms: Some(500),
            max_length: Some(3),
            overflow: Some(Overflow::RejectPublish),
            dead_letter_exchange: Some("dlx".to_string()),
            dead_letter_routing_key: Some("dead".to_string()),
            delivery_limit: Some(2),
            single_active_consumer: true,
            ack_timeout_ms: Some(1000),
            auto_delete: true,
            quorum: true,
            replication_factor: Some(3),
        };
        let pairs: Vec<(String, String)> = args
            .to_entries()
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect();
        let expected = [
            ("message-ttl-ms", "500"),
            ("max-length", "3"),
            ("overflow", "reject-publish"),
            ("dead-letter-exchange", "dlx"),
            ("dead-letter-routing-key", "dead"),
            ("delivery-limit", "2"),
            ("single-active-consumer", "true"),
            ("ack-timeout-ms", "1000"),
            ("auto-delete", "true"),
            ("queue-type", "quorum"),
            ("replication-factor", "3"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        assert_eq!(pairs, expected);
        assert!(QueueArgs::default().to_entries().is_empty());
    }

    #[test]
    fn headers_binding_carries_x_match_first_and_no_routing_key() {
        let binding = Binding::Headers {
            headers: vec![("format".to_string(), "pdf".to_string())],
            match_mode: HeadersMatch::Any,
        };
        let request = binding.to_request("docs", "by-header");
        assert_eq!(request.routing_key, "");
        assert_eq!(request.headers[0].key, "x-match");
        assert_eq!(request.headers[0].value, "any");
        assert_eq!(request.headers[1].key, "format");
    }
}
