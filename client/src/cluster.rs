//! [`Client`]: the cluster as the producer, consumer and admin see it.
//!
//! It owns one [`BrokerConnection`] per broker address, a metadata cache (advertised broker
//! addresses by node id, topics with their partitions and leaders) and the routing of each
//! request to a broker. A `BrokerConnection` owns the broker's circuit breaker and replaces
//! its [`Connection`] when it breaks, retrying with exponential backoff and jitter within a
//! bounded time before a request fails with a typed error.
//!
//! Invariants: locks are `std::sync::Mutex`es held only for map lookups and never across an
//! `.await`; only one caller at a time opens a connection to a given broker (the connect
//! gate), so a restarting broker sees one reconnect, not one per waiting request; the
//! breaker counts only connection failures, never error codes in a healthy answer, and a
//! broken connection once, however many requests were in flight on it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request, Response};

use crate::backoff::{Backoff, Jitter};
use crate::breaker::CircuitBreaker;
use crate::config::ClientConfig;
use crate::connection::{Connection, ConnectionOptions};
use crate::error::{check_code, Error, Result};
use crate::metadata::{broker_address, TopicDescription};

/// How long a coordinator call keeps reconnecting to a coordinator that went down before
/// it asks the other brokers (when there are others): a few backoff steps.
const COORDINATOR_RECONNECT_MAX: Duration = Duration::from_secs(2);

/// A handle to a Wharf cluster, shared by producers, consumers and admin clients.
///
/// Cheap to clone: clones share connections and the metadata cache.
///
/// ```no_run
/// # async fn example() -> wharf_client::Result<()> {
/// use wharf_client::{Client, ClientConfig};
///
/// let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
/// let topic = client.topic("orders").await?;
/// println!("orders has {} partitions", topic.partition_count());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

#[derive(Debug)]
struct ClientInner {
    config: ClientConfig,
    connections: Mutex<HashMap<String, Arc<BrokerConnection>>>,
    metadata: Mutex<MetadataCache>,
}

#[derive(Debug, Default)]
struct MetadataCache {
    /// Advertised `host:port` by node id.
    brokers: HashMap<i32, String>,
    topics: HashMap<String, TopicDescription>,
    /// The node group and transaction calls go to: the one FindCoordinator names, else
    /// (a broker without it, or none known) the lowest node id until one refuses with
    /// NotCoordinator or cannot be reached, then the next one.
    coordinator: Option<i32>,
}

/// Which broker a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The broker the client was pointed at (the bootstrap address): requests about that
    /// node (cluster status), or served by whichever node gets them (topic and queue
    /// admin, publishes, queue consumers).
    Any,
    /// The node coordinating groups and transactions: the one FindCoordinator names, else
    /// the lowest node id known (where a cluster's coordinator starts, docs/CLUSTER.md
    /// "Routing") and the next one after each refusal or failure to reach it; the
    /// bootstrap address before metadata.
    Coordinator,
    /// The broker with this node id (a partition leader).
    Node(i32),
}

impl Client {
    /// Connects to the bootstrap broker, performs the handshake and reads the broker list.
    ///
    /// # Errors
    /// [`Error::Connect`] if the bootstrap broker cannot be reached within
    /// [`ClientConfig::bootstrap_timeout`], or the handshake's and metadata's errors.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let client = Client {
            inner: Arc::new(ClientInner {
                config,
                connections: Mutex::new(HashMap::new()),
                metadata: Mutex::new(MetadataCache::default()),
            }),
        };
        client.fetch_metadata(Some(Vec::new())).await?;
        Ok(client)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// True while a broker holds this client's publishes: its disk alarm is on (the free
    /// space of its data directory is below `disk_free_limit_bytes`). Held publishes are not
    /// refused; they complete once the broker has room again (issue #16).
    pub fn publishes_held(&self) -> bool {
        let connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        connections.values().any(|broker| {
            broker
                .live_connection()
                .is_some_and(|connection| connection.is_blocked())
        })
    }

    /// Describes `topic`, from the cache if it is there, else from the broker.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`] if the broker does not know it, or request errors.
    pub async fn topic(&self, topic: &str) -> Result<TopicDescription> {
        if let Some(description) = self.metadata().topics.get(topic) {
            return Ok(description.clone());
        }
        self.refresh_topic(topic).await
    }

    /// Describes `topic`, asking the broker (and updating the cache).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`] if the broker does not know it, or request errors.
    pub async fn refresh_topic(&self, topic: &str) -> Result<TopicDescription> {
        let response = self.fetch_metadata(Some(vec![topic.to_string()])).await?;
        let found = response
            .topics
            .into_iter()
            .find(|entry| entry.name == topic);
        match found {
            Some(entry) if entry.error == ErrorCode::UnknownTopicOrPartition => {
                self.metadata().topics.remove(topic);
                Err(Error::UnknownTopic {
                    topic: topic.to_string(),
                })
            }
            Some(entry) if !entry.error.is_ok() => Err(Error::server(entry.error, None)),
            Some(entry) => Ok(TopicDescription::from_wire(entry)),
            None => Err(Error::UnknownTopic {
                topic: topic.to_string(),
            }),
        }
    }

    /// Describes every topic (and refreshes the cache).
    ///
    /// # Errors
    /// Request errors.
    pub async fn topics(&self) -> Result<Vec<TopicDescription>> {
        let response = self.fetch_metadata(None).await?;
        let mut topics: Vec<TopicDescription> = response
            .topics
            .into_iter()
            .filter(|topic| topic.error.is_ok())
            .map(TopicDescription::from_wire)
            .collect();
        topics.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(topics)
    }

    /// Sends a raw request to any broker, reconnecting on connection errors, and returns
    /// the raw response (`None` for a produce with `Acks::None`). The typed APIs
    /// ([`crate::Producer`], [`crate::Consumer`], [`crate::Admin`]) are built on this.
    ///
    /// # Errors
    /// Connection errors after the retry budget, [`Error::Timeout`], [`Error::Decode`].
    /// Error codes inside the response are returned as they are.
    pub async fn request(&self, request: &Request) -> Result<Option<Response>> {
        self.send(Target::Any, request).await
    }

    /// Sends `request` to `target` in one attempt, returning once it is queued on the
    /// connection: requests started one after another by one caller reach the broker in that
    /// order (the producer relies on it to pipeline batches of a partition). The returned
    /// future waits for the answer.
    ///
    /// # Errors
    /// Connection errors (no retry), [`Error::UnknownBroker`].
    pub(crate) async fn start(&self, target: Target, request: &Request) -> Result<ResponseFuture> {
        let broker = self.broker(target)?;
        broker.start_once(request).await
    }

    /// Sends `request` to `target`, reconnecting and resending on connection errors, and
    /// returns the raw response. (The producer, which owns ordering and deadlines, sends in
    /// one attempt with [`Client::start`] instead.)
    pub(crate) async fn send(&self, target: Target, request: &Request) -> Result<Option<Response>> {
        let broker = self.broker(target)?;
        broker.send(request).await
    }

    /// Sends `request` to `target` with reconnects, expects a response of type `T` and
    /// checks its top-level error code.
    pub(crate) async fn call<T: FromResponse>(
        &self,
        target: Target,
        request: Request,
    ) -> Result<T> {
        let response: T = self.call_unchecked(target, request).await?;
        let (code, message) = response.top_error();
        check_code(code, message)?;
        Ok(response)
    }

    /// Like [`Client::call`], leaving the top-level error code to the caller (the queue
    /// apis turn their codes into typed errors).
    ///
    /// A coordinator call goes where FindCoordinator said (asked once, of the bootstrap
    /// broker, before the first one; the lowest node id when that fails). When a node
    /// refuses it (NotCoordinator), that node (reachable, and knowing who coordinates now)
    /// is asked FindCoordinator; when a node cannot be reached, or the answer names a node
    /// this call already passed (other than the refusing node itself), it goes on to the
    /// next node id it has not passed. At most once per known broker, and never back to a
    /// node passed: a cluster's coordinator moves when its node fails (docs/CLUSTER.md,
    /// "Coordinators").
    pub(crate) async fn call_unchecked<T: FromResponse>(
        &self,
        target: Target,
        request: Request,
    ) -> Result<T> {
        if target != Target::Coordinator {
            return self.call_once::<T>(target, &request).await;
        }
        if self.metadata().coordinator.is_none() && !self.locate_coordinator(Target::Any, &[]).await
        {
            // The lowest node id, so it is not asked again on every call: the steps below
            // find the coordinator.
            let mut cache = self.metadata();
            if cache.coordinator.is_none() {
                cache.coordinator = cache.brokers.keys().min().copied();
            }
        }
        // The node called is the one resolved here, whatever other callers do to the cache.
        let mut tried = self.metadata().coordinator;
        let to = |node: Option<i32>| node.map_or(Target::Coordinator, Target::Node);
        // Nodes this call reached that did not coordinate, or could not reach: an answer
        // naming one of them is stale (a failover under way), and stepping skips them.
        let mut passed: Vec<i32> = Vec::new();
        // With other brokers to ask, a coordinator that cannot be reached is passed after
        // a short reconnect budget, as Kafka's clients mark it dead at once: waiting the
        // whole reconnect timeout (30 s) outlasted its groups' sessions on the next one.
        let limit = (self.metadata().brokers.len() > 1).then_some(COORDINATOR_RECONNECT_MAX);
        let mut answered = self.call_coordinator::<T>(to(tried), &request, limit).await;
        let tries = self.metadata().brokers.len();
        for _ in 0..tries {
            let refused = match &answered {
                Ok(response) if response.top_error().0 == ErrorCode::NotCoordinator => true,
                // Unreachable (a node down; its breaker open, with the short reconnect
                // budget above): the next node, which refuses or serves. A slow answer is
                // not a reason to move on.
                Err(
                    Error::Connect { .. }
                    | Error::Disconnected { .. }
                    | Error::Io { .. }
                    | Error::CircuitOpen { .. },
                ) => false,
                _ => return answered,
            };
            let Some(node) = tried else {
                return answered;
            };
            passed.push(node);
            let located = refused && {
                // Learn the brokers again: the coordinator may be one never seen yet. The
                // node that refused is reachable and knows who coordinates now (itself
                // too, once it has caught up: a refusal before is not stale).
                let _ = self.fetch_metadata(Some(Vec::new())).await;
                let stale: Vec<i32> = passed.iter().copied().filter(|id| *id != node).collect();
                self.locate_coordinator(Target::Node(node), &stale).await
            };
            if !located && !self.next_coordinator(node, &passed) {
                return answered; // every known node passed
            }
            tried = self.metadata().coordinator;
            answered = self.call_coordinator::<T>(to(tried), &request, limit).await;
        }
        answered
    }

    /// One coordinator call to `target`, reconnecting for at most `limit` when given.
    async fn call_coordinator<T: FromResponse>(
        &self,
        target: Target,
        request: &Request,
        limit: Option<Duration>,
    ) -> Result<T> {
        let broker = self.broker(target)?;
        let response = broker.send_within(request, limit).await?;
        response_as(response, request.api_key())
    }

    async fn call_once<T: FromResponse>(&self, target: Target, request: &Request) -> Result<T> {
        let response = self.send(target, request).await?;
        response_as(response, request.api_key())
    }

    /// Asks the broker for metadata and updates the cache with what it says.
    pub(crate) async fn fetch_metadata(
        &self,
        topics: Option<Vec<String>>,
    ) -> Result<MetadataResponse> {
        let request = Request::Metadata(MetadataRequest { topics });
        let mut answer = self
            .call_once::<MetadataResponse>(Target::Any, &request)
            .await;
        // The bootstrap broker is gone: ask the other brokers the cache knows of, as Kafka
        // clients do, so a client outlives the node it started on.
        if answer
            .as_ref()
            .is_err_and(|error| error.is_connection_error())
        {
            let others: Vec<i32> = self.metadata().brokers.keys().copied().collect();
            for node_id in others {
                let tried = self
                    .call_once::<MetadataResponse>(Target::Node(node_id), &request)
                    .await;
                let reached = !tried
                    .as_ref()
                    .is_err_and(|error| error.is_connection_error());
                answer = tried;
                if reached {
                    break;
                }
            }
        }
        let response = answer?;
        check_code(response.error, response.error_message.clone())?;
        let mut cache = self.metadata();
        if !response.brokers.is_empty() {
            cache.brokers = response
                .brokers
                .iter()
                .map(|broker| (broker.node_id, broker_address(broker)))
                .collect();
        }
        for topic in &response.topics {
            if topic.error.is_ok() {
                cache.topics.insert(
                    topic.name.clone(),
                    TopicDescription::from_wire(topic.clone()),
                );
            } else if topic.error == ErrorCode::UnknownTopicOrPartition {
                cache.topics.remove(&topic.name);
            }
        }
        Ok(response)
    }

    /// Opens a connection of its own to the broker requests without a target go to, outside
    /// the shared pool. Subscriptions use one each: their consumer lives and dies with its
    /// connection, so a reconnect of the shared one must not silently end it.
    ///
    /// # Errors
    /// [`Connection::open`]'s errors.
    pub(crate) async fn open_dedicated(&self) -> Result<Connection> {
        let broker = self.broker(Target::Any)?;
        Connection::open(&broker.address, broker.options.clone()).await
    }

    /// Asks FindCoordinator of `asked` and makes the node it names the one coordinator
    /// calls go to; true when it named one not in `passed` (false: the broker lacks the
    /// api, cannot be reached, knows none, or names a node this call already passed, which
    /// the caller steps past).
    async fn locate_coordinator(&self, asked: Target, passed: &[i32]) -> bool {
        let request = Request::FindCoordinator(FindCoordinatorRequest { key: String::new() });
        let Ok(response) = self
            .call_once::<FindCoordinatorResponse>(asked, &request)
            .await
        else {
            return false;
        };
        let found = response.coordinator.node_id;
        if !response.error.is_ok() || found < 0 || passed.contains(&found) {
            return false;
        }
        let mut cache = self.metadata();
        cache
            .brokers
            .entry(found)
            .or_insert_with(|| broker_address(&response.coordinator));
        cache.coordinator = Some(found);
        true
    }

    /// Moves group and transaction calls on to the next node id after `tried` (wrapping
    /// around) that is not in `passed`, unless another caller moved on already; false when
    /// every known node is in `passed`.
    fn next_coordinator(&self, tried: i32, passed: &[i32]) -> bool {
        let mut cache = self.metadata();
        if cache.coordinator != Some(tried) {
            return true;
        }
        let mut ids: Vec<i32> = cache.brokers.keys().copied().collect();
        ids.sort_unstable();
        let next = ids
            .iter()
            .filter(|id| **id > tried)
            .chain(ids.iter())
            .find(|id| !passed.contains(id))
            .copied();
        match next {
            Some(next) => {
                cache.coordinator = Some(next);
                true
            }
            None => false,
        }
    }

    /// Drops `topic` from the cache so the next lookup asks the broker.
    pub(crate) fn invalidate_topic(&self, topic: &str) {
        self.metadata().topics.remove(topic);
    }

    fn metadata(&self) -> MutexGuard<'_, MetadataCache> {
        // Each update replaces whole entries, so a poisoned cache is still consistent.
        self.inner
            .metadata
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn broker(&self, target: Target) -> Result<Arc<BrokerConnection>> {
        let address = {
            let cache = self.metadata();
            match target {
                Target::Any => self.inner.config.bootstrap.clone(),
                Target::Coordinator => cache
                    .coordinator
                    .and_then(|node_id| cache.brokers.get(&node_id))
                    .or_else(|| {
                        cache
                            .brokers
                            .iter()
                            .min_by_key(|(node_id, _)| **node_id)
                            .map(|(_, address)| address)
                    })
                    .cloned()
                    .unwrap_or_else(|| self.inner.config.bootstrap.clone()),
                // A broker that lists no brokers at all is reached where it was found.
                Target::Node(_) if cache.brokers.is_empty() => self.inner.config.bootstrap.clone(),
                Target::Node(node_id) => cache
                    .brokers
                    .get(&node_id)
                    .cloned()
                    .ok_or(Error::UnknownBroker { node_id })?,
            }
        };
        let mut connections = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let broker = connections
            .entry(address.clone())
            .or_insert_with(|| Arc::new(BrokerConnection::new(address, &self.inner.config)));
        Ok(Arc::clone(broker))
    }
}

/// Response bodies that can be taken out of a [`Response`].
pub(crate) trait FromResponse: Sized {
    /// The body, if `response` is of this type.
    fn from_response(response: Response) -> Option<Self>;
    /// The top-level error code and message.
    fn top_error(&self) -> (ErrorCode, Option<String>);
}

macro_rules! from_response {
    ($( $variant:ident => $body:ident ),* $(,)?) => {
        $(
            impl FromResponse for $body {
                fn from_response(response: Response) -> Option<Self> {
                    match response {
                        Response::$variant(body) => Some(body),
                        _ => None,
                    }
                }
                fn top_error(&self) -> (ErrorCode, Option<String>) {
                    (self.error, self.error_message.clone())
                }
            }
        )*
    };
}

from_response! {
    Metadata => MetadataResponse,
    CreateTopics => CreateTopicsResponse,
    DeleteTopics => DeleteTopicsResponse,
    Produce => ProduceResponse,
    Fetch => FetchResponse,
    ListOffsets => ListOffsetsResponse,
    GroupHeartbeat => GroupHeartbeatResponse,
    LeaveGroup => LeaveGroupResponse,
    OffsetCommit => OffsetCommitResponse,
    OffsetFetch => OffsetFetchResponse,
    DescribeGroups => DescribeGroupsResponse,
    ListGroups => ListGroupsResponse,
    InitProducerId => InitProducerIdResponse,
    AddPartitionsToTxn => AddPartitionsToTxnResponse,
    AddOffsetsToTxn => AddOffsetsToTxnResponse,
    TxnOffsetCommit => TxnOffsetCommitResponse,
    EndTxn => EndTxnResponse,
    Publish => PublishResponse,
    PublishBatch => PublishBatchResponse,
    Subscribe => SubscribeResponse,
    PurgeQueue => PurgeQueueResponse,
    ListQueues => ListQueuesResponse,
    ListExchanges => ListExchangesResponse,
    DescribeTopicConfigs => DescribeTopicConfigsResponse,
    ResetOffsets => ResetOffsetsResponse,
    QueueGet => QueueGetResponse,
    ListBindings => ListBindingsResponse,
    MoveMessages => MoveMessagesResponse,
    ListUsers => ListUsersResponse,
    CreateAcls => AclAdminResponse,
    DescribeCluster => DescribeClusterResponse,
    DescribeReplicas => DescribeReplicasResponse,
    FindCoordinator => FindCoordinatorResponse,
}

/// One body type answers Rebalance and CancelDrain (issue #20).
impl FromResponse for RebalanceResponse {
    fn from_response(response: Response) -> Option<Self> {
        match response {
            Response::Rebalance(body) | Response::CancelDrain(body) => Some(body),
            _ => None,
        }
    }
    fn top_error(&self) -> (ErrorCode, Option<String>) {
        (self.error, self.error_message.clone())
    }
}

/// One body type answers DescribeAcls and DeleteAcls (issue #18).
impl FromResponse for AclListResponse {
    fn from_response(response: Response) -> Option<Self> {
        match response {
            Response::DescribeAcls(body) | Response::DeleteAcls(body) => Some(body),
            _ => None,
        }
    }
    fn top_error(&self) -> (ErrorCode, Option<String>) {
        (self.error, self.error_message.clone())
    }
}

/// One body type answers the user admin apis (issue #18).
impl FromResponse for UserAdminResponse {
    fn from_response(response: Response) -> Option<Self> {
        match response {
            Response::CreateUser(body)
            | Response::AlterUserCredentials(body)
            | Response::DeleteUser(body) => Some(body),
            _ => None,
        }
    }
    fn top_error(&self) -> (ErrorCode, Option<String>) {
        (self.error, self.error_message.clone())
    }
}

/// One body type answers the stream and group admin apis that carry only an error.
impl FromResponse for StreamAdminResponse {
    fn from_response(response: Response) -> Option<Self> {
        match response {
            Response::AlterTopicConfigs(body)
            | Response::CreatePartitions(body)
            | Response::DeleteGroup(body)
            | Response::AddNode(body)
            | Response::RemoveNode(body) => Some(body),
            _ => None,
        }
    }
    fn top_error(&self) -> (ErrorCode, Option<String>) {
        (self.error, self.error_message.clone())
    }
}

/// One body type answers every queue admin api (and acks), so it matches them all.
impl FromResponse for QueueAdminResponse {
    fn from_response(response: Response) -> Option<Self> {
        match response {
            Response::DeclareExchange(body)
            | Response::DeclareQueue(body)
            | Response::DeleteQueue(body)
            | Response::BindQueue(body)
            | Response::UnbindQueue(body)
            | Response::Ack(body)
            | Response::Cancel(body)
            | Response::DeleteExchange(body) => Some(body),
            _ => None,
        }
    }
    fn top_error(&self) -> (ErrorCode, Option<String>) {
        (self.error, self.error_message.clone())
    }
}

/// The body of `response` as `T`, or a decode error naming the api asked for.
///
/// # Errors
/// [`Error::Decode`] if there is no response or it is of another type.
pub(crate) fn response_as<T: FromResponse>(
    response: Option<Response>,
    api_key: wharf_protocol::ApiKey,
) -> Result<T> {
    response.and_then(T::from_response).ok_or(Error::Decode(
        wharf_protocol::DecodeError::InvalidValue {
            field: "response type",
            value: i64::from(api_key.code()),
        },
    ))
}

/// The answer to a request started with [`Client::start`].
pub(crate) type ResponseFuture = Pin<Box<dyn Future<Output = Result<Option<Response>>> + Send>>;

/// One broker: its current connection, its circuit breaker and the reconnect policy.
#[derive(Debug)]
pub(crate) struct BrokerConnection {
    address: String,
    options: ConnectionOptions,
    backoff: Backoff,
    bootstrap_timeout: Duration,
    reconnect_timeout: Duration,
    state: Mutex<BrokerState>,
    /// One permit: only one caller opens a connection at a time.
    connect_gate: Semaphore,
}

#[derive(Debug)]
struct BrokerState {
    connection: Option<Arc<Connection>>,
    breaker: CircuitBreaker,
    ever_connected: bool,
    jitter: Jitter,
}

impl BrokerConnection {
    pub(crate) fn new(address: String, config: &ClientConfig) -> Self {
        BrokerConnection {
            address,
            options: ConnectionOptions {
                client_id: config.client_id.clone(),
                connect_timeout: config.connect_timeout,
                request_timeout: config.request_timeout,
                in_flight_requests_max: config.in_flight_requests_max,
                frame_bytes_max: config.frame_bytes_max,
                tls: config.tls.clone(),
                credentials: config.credentials.clone(),
            },
            backoff: Backoff::new(config.retry_backoff_base, config.retry_backoff_max),
            bootstrap_timeout: config.bootstrap_timeout,
            reconnect_timeout: config.reconnect_timeout,
            state: Mutex::new(BrokerState {
                connection: None,
                breaker: CircuitBreaker::new(
                    config.breaker_failure_threshold,
                    config.breaker_cooldown,
                ),
                ever_connected: false,
                jitter: Jitter::from_entropy(),
            }),
            connect_gate: Semaphore::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BrokerState> {
        // Every update is a single field assignment; a poisoned state is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `request`, reconnecting and resending on connection errors within the
    /// bootstrap timeout (broker never reached) or the reconnect timeout (reached before).
    ///
    /// While the breaker is open a retrying caller waits for the cool-down if its budget
    /// allows, so only the breaker's probe knocks on a dead broker; otherwise it fails fast.
    /// When the budget runs out the last real connection error is returned, not
    /// `CircuitOpen`, because it says what is wrong.
    pub(crate) async fn send(&self, request: &Request) -> Result<Option<Response>> {
        self.send_within(request, None).await
    }

    /// As [`BrokerConnection::send`], reconnecting for at most `limit` when given (less
    /// than the reconnect timeout: a coordinator that went down is passed quickly).
    pub(crate) async fn send_within(
        &self,
        request: &Request,
        limit: Option<Duration>,
    ) -> Result<Option<Response>> {
        let budget = if self.lock().ever_connected {
            self.reconnect_timeout
        } else {
            self.bootstrap_timeout
        };
        let budget = limit.map_or(budget, |limit| budget.min(limit));
        let deadline = Instant::now() + budget;
        let mut attempt = 0u32;
        let mut last_failure: Option<Error> = None;
        loop {
            let error = match self.send_once(request).await {
                Ok(response) => return Ok(response),
                // A timed-out request may have been applied; resending is the caller's call.
                Err(error @ Error::Timeout { .. }) => return Err(error),
                Err(error) if error.is_connection_error() => error,
                Err(error) => return Err(error),
            };
            let wait = match &error {
                Error::CircuitOpen { retry_after, .. } => *retry_after,
                _ => {
                    let jitter = self.lock().jitter.fraction();
                    self.backoff.delay(attempt, jitter)
                }
            };
            if !matches!(error, Error::CircuitOpen { .. }) {
                last_failure = Some(error.clone());
            }
            if Instant::now() + wait > deadline {
                return Err(last_failure.unwrap_or(error));
            }
            tokio::time::sleep(wait).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// One attempt: get a live connection (connecting if needed) and send.
    async fn send_once(&self, request: &Request) -> Result<Option<Response>> {
        let connection = self.connection().await?;
        let result = connection.request(request).await;
        self.record_outcome(&connection, result.as_ref().err());
        result
    }

    /// One attempt like [`BrokerConnection::send_once`], returning once the request is
    /// queued on the connection; the future waits for the answer and keeps the breaker's
    /// books.
    pub(crate) async fn start_once(self: Arc<Self>, request: &Request) -> Result<ResponseFuture> {
        let connection = self.connection().await?;
        match connection.begin(request).await {
            Ok(in_flight) => Ok(Box::pin(async move {
                let result = in_flight.finish().await;
                self.record_outcome(&connection, result.as_ref().err());
                result
            })),
            Err(error) => {
                self.record_outcome(&connection, Some(&error));
                Err(error)
            }
        }
    }

    /// Counts the outcome of a request on `connection` in the breaker and drops a broken
    /// connection.
    fn record_outcome(&self, connection: &Arc<Connection>, error: Option<&Error>) {
        let mut state = self.lock();
        match error {
            Some(error) if error.is_connection_error() || connection.is_closed() => {
                // Drop the broken connection (and, after a timeout, a possibly stuck one),
                // unless another caller already dropped or replaced it. Only that first
                // caller counts a failure: a connection that breaks with many pipelined
                // requests on it is one failure, not one per request.
                let same = state
                    .connection
                    .as_ref()
                    .is_some_and(|current| Arc::ptr_eq(current, connection));
                if same {
                    state.breaker.record_failure(Instant::now().into_std());
                    state.connection = None;
                }
            }
            _ => state.breaker.record_success(),
        }
    }

    /// A live connection: the current one, or a new one if the breaker allows.
    async fn connection(&self) -> Result<Arc<Connection>> {
        if let Some(connection) = self.admit()? {
            return Ok(connection);
        }
        let _gate = self
            .connect_gate
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        // Another caller may have connected while this one waited at the gate.
        if let Some(connection) = self.live_connection() {
            return Ok(connection);
        }
        match Connection::open(&self.address, self.options.clone()).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                let mut state = self.lock();
                state.connection = Some(Arc::clone(&connection));
                state.ever_connected = true;
                state.breaker.record_success();
                Ok(connection)
            }
            Err(error) => {
                self.lock()
                    .breaker
                    .record_failure(Instant::now().into_std());
                Err(error)
            }
        }
    }

    /// Checks the breaker; returns the live connection if there is one.
    fn admit(&self) -> Result<Option<Arc<Connection>>> {
        let mut state = self.lock();
        if let Err(retry_after) = state.breaker.try_acquire(Instant::now().into_std()) {
            return Err(Error::CircuitOpen {
                address: self.address.clone(),
                retry_after,
            });
        }
        Ok(live(&mut state))
    }

    fn live_connection(&self) -> Option<Arc<Connection>> {
        live(&mut self.lock())
    }
}

fn live(state: &mut BrokerState) -> Option<Arc<Connection>> {
    match &state.connection {
        Some(connection) if !connection.is_closed() => Some(Arc::clone(connection)),
        Some(_) => {
            state.connection = None;
            None
        }
        None => None,
    }
}
