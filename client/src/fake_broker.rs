//! A fake in-process broker for the client's tests: a tokio `TcpListener` on loopback that
//! answers every api from memory, with knobs to inject failures (error codes on produce,
//! dropped connections, lost produce answers, forgotten or fenced producers), to hold answers
//! back, and counters to observe the client (connections, produce requests, produce requests
//! in flight at once).
//!
//! It follows the broker's contract closely enough for the client (offsets patched into
//! batches, fetch from the batch containing the offset, long poll on append, auto-create on
//! produce, group generations and fencing, and the idempotent producer's rules: producer ids,
//! the last five batches per producer and partition, duplicates answered with their original
//! offset, gaps refused) but is no model of storage or durability. Requests of a connection
//! are handled in order, and answers are written in order, as the broker does.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use wharf_protocol::api::{encode_response, SUPPORTED_APIS};
use wharf_protocol::batch::{parse_header, set_base_offset, BatchHeader, NO_PRODUCER_ID};
use wharf_protocol::frame::decode_frame;
use wharf_protocol::messages::*;
use wharf_protocol::{batches, ApiKey, ErrorCode, Request, Response};

/// Partitions of an auto-created topic.
pub const AUTO_CREATE_PARTITIONS: u32 = 3;
/// Batches remembered per producer and partition (the broker's `RETAINED_BATCHES`).
pub const RETAINED_BATCHES: usize = 5;

/// A running fake broker; stops when dropped.
#[derive(Debug)]
pub struct FakeBroker {
    pub address: SocketAddr,
    pub state: Arc<FakeState>,
    shutdown: watch::Sender<bool>,
}

/// Shared state and knobs.
#[derive(Debug, Default)]
pub struct FakeState {
    data: Mutex<Data>,
    appended: Notify,
    /// Connections accepted so far.
    pub connections: AtomicUsize,
    /// Produce requests handled so far.
    pub produce_requests: AtomicUsize,
    /// The next this-many produce requests fail with `produce_error`.
    pub produce_failures: AtomicU32,
    /// Error code injected into failing produce requests.
    pub produce_error: Mutex<Option<ErrorCode>>,
    /// Woken on every produce request.
    produce_arrived: Notify,
    /// The next this-many produce requests are handled (appended) but not answered: the
    /// connection closes instead, as if the broker crashed right after the append.
    pub lost_produce_answers: AtomicU32,
    /// While set, answers are held back; requests are still read and handled in order.
    answers_held: AtomicBool,
    /// Woken when held answers are released.
    answers_released: Notify,
    /// Most produce requests one connection had handled but not yet answered at once.
    pub produce_in_flight_max: AtomicUsize,
    /// InitProducerId requests answered so far.
    pub init_producer_id_requests: AtomicUsize,
    /// FindCoordinator requests answered so far (it names this broker).
    pub find_coordinator_requests: AtomicUsize,
    /// DescribeGroups requests answered so far.
    pub describe_groups_requests: AtomicUsize,
    /// The last producer id handed out.
    last_producer_id: AtomicI64,
    /// Bumped to make every connection task close its socket.
    disconnect_epoch: AtomicU32,
    /// The port metadata advertises (the listener's).
    advertised_port: AtomicU32,
}

#[derive(Debug, Default)]
struct Data {
    auto_create_disabled: bool,
    topics: BTreeMap<String, Topic>,
    /// Idempotent producer state by (topic, partition, producer id).
    producers: HashMap<(String, u32, i64), FakeProducer>,
    committed: HashMap<(String, String, u32), i64>,
    groups: BTreeMap<String, Group>,
    next_member: u32,
}

#[derive(Debug, Default)]
struct Topic {
    id: [u8; 16],
    /// Per partition: stored batches as (base offset, next offset, bytes).
    partitions: Vec<Vec<(i64, i64, Bytes)>>,
}

/// What a producer did on one partition: its epoch and its last batches as
/// (first sequence, last sequence, base offset), oldest first.
#[derive(Debug, Default)]
struct FakeProducer {
    epoch: i16,
    batches: VecDeque<(i32, i32, i64)>,
}

#[derive(Debug, Default)]
struct Group {
    generation: i32,
    /// Member id → subscribed topics.
    members: BTreeMap<String, Vec<String>>,
}

impl FakeBroker {
    /// Starts a fake broker on an ephemeral loopback port.
    pub async fn start() -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback has free ports");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(FakeState::default());
        state
            .advertised_port
            .store(u32::from(address.port()), Ordering::SeqCst);
        let (shutdown, shutdown_receiver) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::clone(&state), shutdown_receiver));
        FakeBroker {
            address,
            state,
            shutdown,
        }
    }

    /// `host:port` to bootstrap from.
    pub fn bootstrap(&self) -> String {
        self.address.to_string()
    }

    /// Creates a topic directly.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        self.state.data().create_topic(name, partitions);
    }

    /// Refuses to auto-create topics from now on.
    pub fn disable_auto_create(&self) {
        self.state.data().auto_create_disabled = true;
    }

    /// Makes the next `count` produce requests fail with `code`.
    pub fn fail_produce(&self, count: u32, code: ErrorCode) {
        *self.state.produce_error.lock().expect("test lock") = Some(code);
        self.state.produce_failures.store(count, Ordering::SeqCst);
    }

    /// Appends the next `count` produce requests but closes the connection instead of
    /// answering them (a crash right after the append, as the client sees it).
    pub fn lose_produce_answers(&self, count: u32) {
        self.state
            .lost_produce_answers
            .store(count, Ordering::SeqCst);
    }

    /// Holds back every answer from now on (requests are still handled, in order).
    pub fn hold_answers(&self) {
        self.state.answers_held.store(true, Ordering::SeqCst);
    }

    /// Writes the held answers and stops holding.
    pub fn release_answers(&self) {
        self.state.answers_held.store(false, Ordering::SeqCst);
        self.state.answers_released.notify_waiters();
    }

    /// Waits until `count` produce requests were handled in total (panics after 10 s).
    pub async fn wait_for_produce_requests(&self, count: usize) {
        let wait = async {
            loop {
                let arrived = self.state.produce_arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if self.state.produce_requests.load(Ordering::SeqCst) >= count {
                    return;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("{count} produce requests did not arrive"));
    }

    /// Forgets every idempotent producer (as producer state expiry does).
    pub fn forget_producers(&self) {
        self.state.data().producers.clear();
    }

    /// Forgets the last batch of every producer on every partition, keeping the records: the
    /// producer's next batch then looks like it follows a gap.
    pub fn forget_last_batches(&self) {
        for producer in self.state.data().producers.values_mut() {
            producer.batches.pop_back();
        }
    }

    /// Moves every known producer to a newer epoch, fencing the current one.
    pub fn fence_producers(&self) {
        for producer in self.state.data().producers.values_mut() {
            producer.epoch += 1;
        }
    }

    /// Headers of the batches stored in `topic`-`partition`, in offset order.
    pub fn batch_headers(&self, topic: &str, partition: u32) -> Vec<BatchHeader> {
        let data = self.state.data();
        data.topics
            .get(topic)
            .and_then(|stored| stored.partitions.get(partition as usize))
            .map(|log| {
                log.iter()
                    .map(|(_, _, bytes)| {
                        parse_header(bytes)
                            .expect("stored batches are valid")
                            .expect("stored batches are whole")
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The values stored in `topic`-`partition`, in offset order.
    pub fn values(&self, topic: &str, partition: u32) -> Vec<String> {
        let data = self.state.data();
        let Some(log) = data
            .topics
            .get(topic)
            .and_then(|stored| stored.partitions.get(partition as usize))
        else {
            return Vec::new();
        };
        log.iter()
            .flat_map(|(_, _, bytes)| {
                let batch = wharf_protocol::Batch::decode(bytes.clone()).expect("stored batch");
                batch
                    .records()
                    .map(|record| {
                        let record = record.expect("stored record");
                        let value = record.value.expect("test records have values");
                        String::from_utf8_lossy(&value).into_owned()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Closes every open connection (a broker restart, as the client sees it).
    pub fn drop_connections(&self) {
        self.state.disconnect_epoch.fetch_add(1, Ordering::SeqCst);
        self.state.appended.notify_waiters();
    }

    /// Removes `member_id` from `group` (as a session timeout would), bumping the generation.
    pub fn expire_member(&self, group: &str, member_id: &str) {
        let mut data = self.state.data();
        if let Some(group) = data.groups.get_mut(group) {
            group.members.remove(member_id);
            group.generation += 1;
        }
    }

    /// Bumps `group`'s generation (as another member joining or leaving would).
    pub fn bump_generation(&self, group: &str) {
        if let Some(group) = self.state.data().groups.get_mut(group) {
            group.generation += 1;
        }
    }

    /// The committed offset of `group` for `topic`-`partition`.
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<i64> {
        let key = (group.to_string(), topic.to_string(), partition);
        self.state.data().committed.get(&key).copied()
    }

    /// Member ids of `group`.
    pub fn members(&self, group: &str) -> Vec<String> {
        let data = self.state.data();
        data.groups
            .get(group)
            .map(|group| group.members.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.drop_connections();
    }
}

impl FakeState {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().expect("test lock")
    }
}

impl Data {
    fn create_topic(&mut self, name: &str, partitions: u32) {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&(self.topics.len() as u32 + 1).to_be_bytes());
        self.topics.insert(
            name.to_string(),
            Topic {
                id,
                partitions: (0..partitions).map(|_| Vec::new()).collect(),
            },
        );
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Option<i64> {
        let log = self.topics.get(topic)?.partitions.get(partition as usize)?;
        Some(log.last().map_or(0, |(_, next, _)| *next))
    }

    fn assignment(&self, group: &str, member_id: &str) -> Vec<TopicPartitions> {
        let Some(group) = self.groups.get(group) else {
            return Vec::new();
        };
        let members: Vec<&String> = group.members.keys().collect();
        let Some(index) = members.iter().position(|member| *member == member_id) else {
            return Vec::new();
        };
        let mut topics: Vec<&String> = group.members.values().flatten().collect();
        topics.sort();
        topics.dedup();
        let mut all = Vec::new();
        for topic in topics {
            if let Some(state) = self.topics.get(topic) {
                for partition in 0..state.partitions.len() as u32 {
                    all.push((topic.clone(), partition));
                }
            }
        }
        let mut mine: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (position, (topic, partition)) in all.into_iter().enumerate() {
            if position % members.len() == index {
                mine.entry(topic).or_default().push(partition);
            }
        }
        mine.into_iter()
            .map(|(topic, partitions)| TopicPartitions { topic, partitions })
            .collect()
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<FakeState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { return };
                state.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, Arc::clone(&state)));
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn serve(mut stream: TcpStream, state: Arc<FakeState>) {
    let epoch = state.disconnect_epoch.load(Ordering::SeqCst);
    let mut buffer = BytesMut::new();
    // Encoded answers not yet written (held back), and how many of them answer produces.
    let mut unsent = BytesMut::new();
    let mut unanswered_produces = 0usize;
    loop {
        while let Ok(Some(frame)) = decode_frame(&mut buffer, 64 * 1024 * 1024) {
            let Some(api_key) = ApiKey::from_code(frame.header.api_key) else {
                return;
            };
            let Ok(request) = Request::decode(api_key, frame.body) else {
                return;
            };
            let response = handle(&state, request, epoch).await;
            if state.disconnect_epoch.load(Ordering::SeqCst) != epoch {
                return;
            }
            let produce = api_key == ApiKey::Produce;
            if produce && take_one(&state.lost_produce_answers) {
                // Appended, never answered: the client sees the connection break.
                return;
            }
            if let Some(response) = response {
                encode_response(&response, frame.header, &mut unsent);
                if produce {
                    unanswered_produces += 1;
                    state
                        .produce_in_flight_max
                        .fetch_max(unanswered_produces, Ordering::SeqCst);
                }
            }
        }
        if !unsent.is_empty() && !state.answers_held.load(Ordering::SeqCst) {
            if stream.write_all(&unsent).await.is_err() {
                return;
            }
            unsent.clear();
            unanswered_produces = 0;
        }
        let holding = !unsent.is_empty();
        let read = tokio::select! {
            read = stream.read_buf(&mut buffer) => read,
            () = disconnected(&state, epoch) => return,
            () = released(&state), if holding => continue,
        };
        if !matches!(read, Ok(count) if count > 0) {
            return;
        }
    }
}

/// Takes one from a countdown knob; false once it is at zero.
fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
}

async fn released(state: &FakeState) {
    loop {
        let notified = state.answers_released.notified();
        if !state.answers_held.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

async fn disconnected(state: &FakeState, epoch: u32) {
    loop {
        let notified = state.appended.notified();
        if state.disconnect_epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        notified.await;
    }
}

async fn handle(state: &FakeState, request: Request, epoch: u32) -> Option<Response> {
    Some(match request {
        Request::ApiVersions(_) => Response::ApiVersions(ApiVersionsResponse {
            apis: SUPPORTED_APIS
                .iter()
                .map(|(key, min_version, max_version)| ApiVersionRange {
                    api_key: key.code(),
                    min_version: *min_version,
                    max_version: *max_version,
                })
                .collect(),
            broker_version: "fake".to_string(),
            ..Default::default()
        }),
        Request::Metadata(request) => Response::Metadata(metadata(state, request)),
        Request::FindCoordinator(_) => {
            state
                .find_coordinator_requests
                .fetch_add(1, Ordering::SeqCst);
            Response::FindCoordinator(FindCoordinatorResponse {
                coordinator: this_broker(state),
                ..Default::default()
            })
        }
        Request::CreateTopics(request) => Response::CreateTopics(create_topics(state, request)),
        Request::DeleteTopics(request) => {
            let mut data = state.data();
            let topics = request
                .names
                .into_iter()
                .map(|name| {
                    let error = match data.topics.remove(&name) {
                        Some(_) => ErrorCode::None,
                        None => ErrorCode::UnknownTopicOrPartition,
                    };
                    TopicResult {
                        name,
                        error,
                        ..Default::default()
                    }
                })
                .collect();
            Response::DeleteTopics(DeleteTopicsResponse {
                topics,
                ..Default::default()
            })
        }
        Request::Produce(request) => {
            let acks = request.acks;
            let response = produce(state, request);
            if acks == Acks::None {
                return None;
            }
            Response::Produce(response)
        }
        Request::Fetch(request) => Response::Fetch(fetch(state, request, epoch).await),
        Request::ListOffsets(request) => Response::ListOffsets(list_offsets(state, request)),
        Request::GroupHeartbeat(request) => Response::GroupHeartbeat(heartbeat(state, request)),
        Request::LeaveGroup(request) => {
            let mut data = state.data();
            if let Some(group) = data.groups.get_mut(&request.group_id) {
                if group.members.remove(&request.member_id).is_some() {
                    group.generation += 1;
                }
            }
            Response::LeaveGroup(LeaveGroupResponse::default())
        }
        Request::OffsetCommit(request) => Response::OffsetCommit(offset_commit(state, request)),
        Request::OffsetFetch(request) => Response::OffsetFetch(offset_fetch(state, request)),
        Request::DescribeGroups(request) => {
            state
                .describe_groups_requests
                .fetch_add(1, Ordering::SeqCst);
            Response::DescribeGroups(describe_groups(state, request))
        }
        Request::ListGroups(_) => Response::ListGroups(list_groups(state)),
        Request::DescribeTopicConfigs(request) => {
            Response::DescribeTopicConfigs(describe_topic_configs(state, &request))
        }
        Request::InitProducerId(_) => {
            state
                .init_producer_id_requests
                .fetch_add(1, Ordering::SeqCst);
            Response::InitProducerId(InitProducerIdResponse {
                producer_id: state.last_producer_id.fetch_add(1, Ordering::SeqCst) + 1,
                producer_epoch: 0,
                ..Default::default()
            })
        }
        other => Response::error_only(
            other.api_key(),
            ErrorCode::InvalidRequest,
            "not supported by the fake broker".to_string(),
        ),
    })
}

/// A known topic has one config, the broker default `flush = always`.
fn describe_topic_configs(
    state: &FakeState,
    request: &DescribeTopicConfigsRequest,
) -> DescribeTopicConfigsResponse {
    if !state.data().topics.contains_key(&request.topic) {
        return DescribeTopicConfigsResponse {
            error: ErrorCode::UnknownTopicOrPartition,
            ..Default::default()
        };
    }
    DescribeTopicConfigsResponse {
        configs: vec![TopicConfigEntry {
            key: "flush".to_string(),
            value: "always".to_string(),
            source: ConfigSource::Default,
        }],
        ..Default::default()
    }
}

fn describe_groups(state: &FakeState, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let data = state.data();
    let groups = request
        .group_ids
        .into_iter()
        .map(|group_id| match data.groups.get(&group_id) {
            None => GroupDescription {
                group_id,
                error: ErrorCode::GroupIdNotFound,
                ..Default::default()
            },
            Some(group) => GroupDescription {
                state: if group.members.is_empty() {
                    "empty"
                } else {
                    "stable"
                }
                .to_string(),
                generation: group.generation,
                assignor: "roundrobin".to_string(),
                members: group
                    .members
                    .iter()
                    .map(|(member_id, topics)| GroupMember {
                        member_id: member_id.clone(),
                        client_id: "test".to_string(),
                        topics: topics.clone(),
                        assignment: data.assignment(&group_id, member_id),
                    })
                    .collect(),
                group_id,
                ..Default::default()
            },
        })
        .collect();
    DescribeGroupsResponse {
        groups,
        ..Default::default()
    }
}

fn list_groups(state: &FakeState) -> ListGroupsResponse {
    let data = state.data();
    ListGroupsResponse {
        groups: data
            .groups
            .iter()
            .map(|(group_id, group)| GroupListing {
                group_id: group_id.clone(),
                state: "stable".to_string(),
                member_count: group.members.len() as u32,
            })
            .collect(),
        ..Default::default()
    }
}

fn metadata(state: &FakeState, request: MetadataRequest) -> MetadataResponse {
    let data = state.data();
    let names: Vec<String> = match request.topics {
        Some(names) => names,
        None => data.topics.keys().cloned().collect(),
    };
    let topics = names
        .into_iter()
        .map(|name| match data.topics.get(&name) {
            None => TopicMetadata {
                error: ErrorCode::UnknownTopicOrPartition,
                name,
                ..Default::default()
            },
            Some(topic) => TopicMetadata {
                error: ErrorCode::None,
                topic_id: topic.id,
                partitions: (0..topic.partitions.len() as u32)
                    .map(|partition| PartitionMetadata {
                        partition,
                        error: ErrorCode::None,
                        leader: 0,
                        log_start_offset: 0,
                        high_watermark: data.end_offset(&name, partition).unwrap_or(0),
                    })
                    .collect(),
                name,
            },
        })
        .collect();
    MetadataResponse {
        brokers: vec![this_broker(state)],
        topics,
        ..Default::default()
    }
}

/// The fake broker as metadata lists it: node 0 at its advertised port.
fn this_broker(state: &FakeState) -> BrokerInfo {
    BrokerInfo {
        node_id: 0,
        host: "127.0.0.1".to_string(),
        port: state.advertised_port.load(Ordering::SeqCst) as u16,
    }
}

fn create_topics(state: &FakeState, request: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut data = state.data();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let error = if data.topics.contains_key(&topic.name) {
                ErrorCode::TopicAlreadyExists
            } else if topic.partitions == 0 {
                ErrorCode::InvalidPartitions
            } else {
                data.create_topic(&topic.name, topic.partitions);
                ErrorCode::None
            };
            TopicResult {
                topic_id: data
                    .topics
                    .get(&topic.name)
                    .map(|t| t.id)
                    .unwrap_or_default(),
                name: topic.name,
                error,
                error_message: None,
            }
        })
        .collect();
    CreateTopicsResponse {
        topics,
        ..Default::default()
    }
}

fn produce(state: &FakeState, request: ProduceRequest) -> ProduceResponse {
    let injected = take_one(&state.produce_failures);
    let injected_code = injected.then(|| {
        state
            .produce_error
            .lock()
            .expect("test lock")
            .unwrap_or(ErrorCode::RequestTimedOut)
    });
    let mut data = state.data();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            if !data.topics.contains_key(&topic.name) && !data.auto_create_disabled {
                data.create_topic(&topic.name, AUTO_CREATE_PARTITIONS);
            }
            let partitions = topic
                .partitions
                .into_iter()
                .map(|partition| {
                    let mut response = ProducePartitionResponse {
                        partition: partition.partition,
                        base_offset: -1,
                        ..Default::default()
                    };
                    let outcome = match injected_code {
                        Some(code) => Err(code),
                        None => data.produce(&topic.name, partition.partition, partition.records),
                    };
                    match outcome {
                        Ok(base_offset) => response.base_offset = base_offset,
                        Err(code) => response.error = code,
                    }
                    response
                })
                .collect();
            ProduceTopicResponse {
                name: topic.name,
                partitions,
            }
        })
        .collect();
    drop(data);
    state.appended.notify_waiters();
    // Counted once handled, so a test that saw the count also sees the appends.
    state.produce_requests.fetch_add(1, Ordering::SeqCst);
    state.produce_arrived.notify_waiters();
    ProduceResponse {
        topics,
        ..Default::default()
    }
}

impl Data {
    /// Appends `records` to `topic`-`partition`, applying the idempotent producer's rules to
    /// a batch with a producer id; returns the base offset (the original one for a
    /// duplicate).
    fn produce(&mut self, topic: &str, partition: u32, records: Bytes) -> Result<i64, ErrorCode> {
        let Some(stored) = self.topics.get_mut(topic) else {
            return Err(ErrorCode::TopicAutoCreateDisabled);
        };
        let Some(log) = stored.partitions.get_mut(partition as usize) else {
            return Err(ErrorCode::UnknownTopicOrPartition);
        };
        if records.is_empty() {
            return Err(ErrorCode::InvalidRequest);
        }
        let header = match parse_header(&records) {
            Ok(Some(header)) if header.producer_id != NO_PRODUCER_ID => header,
            _ => return Ok(append(log, records)),
        };
        let first = header.base_sequence;
        let last = (i64::from(first) + i64::from(header.last_offset_delta))
            .rem_euclid(i64::from(i32::MAX) + 1) as i32;
        let key = (topic.to_string(), partition, header.producer_id);
        let producer = self.producers.get(&key);
        let follows =
            |previous: i32| first == ((i64::from(previous) + 1) % (i64::from(i32::MAX) + 1)) as i32;
        match producer {
            None if first != 0 => return Err(ErrorCode::UnknownProducerId),
            None => {}
            Some(known) if header.producer_epoch < known.epoch => {
                return Err(ErrorCode::ProducerFenced)
            }
            Some(known) if header.producer_epoch > known.epoch && first != 0 => {
                return Err(ErrorCode::OutOfOrderSequence)
            }
            Some(known) if header.producer_epoch > known.epoch => {}
            Some(known) => {
                if let Some((_, _, base_offset)) =
                    known.batches.iter().find(|(batch_first, batch_last, _)| {
                        *batch_first == first && *batch_last == last
                    })
                {
                    return Ok(*base_offset);
                }
                let in_order = match known.batches.back() {
                    Some((_, previous, _)) => follows(*previous),
                    None => first == 0,
                };
                if !in_order {
                    return Err(ErrorCode::OutOfOrderSequence);
                }
            }
        }
        let base_offset = append(log, records);
        let producer = self.producers.entry(key).or_default();
        if producer.epoch != header.producer_epoch {
            producer.epoch = header.producer_epoch;
            producer.batches.clear();
        }
        producer.batches.push_back((first, last, base_offset));
        while producer.batches.len() > RETAINED_BATCHES {
            producer.batches.pop_front();
        }
        Ok(base_offset)
    }
}

fn append(log: &mut Vec<(i64, i64, Bytes)>, records: Bytes) -> i64 {
    let first = log.last().map_or(0, |(_, next, _)| *next);
    let mut next = first;
    for batch in batches(records) {
        let batch = batch.expect("the client sends valid batches");
        let mut bytes = BytesMut::from(&batch.as_bytes()[..]);
        set_base_offset(&mut bytes, next);
        let count = i64::from(batch.header().last_offset_delta) + 1;
        log.push((next, next + count, bytes.freeze()));
        next += count;
    }
    first
}

async fn fetch(state: &FakeState, request: FetchRequest, epoch: u32) -> FetchResponse {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
    loop {
        let notified = state.appended.notified();
        let response = fetch_now(state, &request);
        let bytes: usize = response
            .topics
            .iter()
            .flat_map(|topic| &topic.partitions)
            .map(|partition| partition.records.len())
            .sum();
        let now = tokio::time::Instant::now();
        if bytes as u32 >= request.min_bytes.max(1)
            || now >= deadline
            || state.disconnect_epoch.load(Ordering::SeqCst) != epoch
        {
            return response;
        }
        let _ = tokio::time::timeout(deadline - now, notified).await;
    }
}

fn fetch_now(state: &FakeState, request: &FetchRequest) -> FetchResponse {
    let data = state.data();
    let topics = request
        .topics
        .iter()
        .map(|topic| FetchTopicResponse {
            name: topic.name.clone(),
            partitions: topic
                .partitions
                .iter()
                .map(|wanted| {
                    let mut response = FetchPartitionResponse {
                        partition: wanted.partition,
                        ..Default::default()
                    };
                    let log = data
                        .topics
                        .get(&topic.name)
                        .and_then(|stored| stored.partitions.get(wanted.partition as usize));
                    let Some(log) = log else {
                        response.error = ErrorCode::UnknownTopicOrPartition;
                        return response;
                    };
                    let end = log.last().map_or(0, |(_, next, _)| *next);
                    response.high_watermark = end;
                    if wanted.fetch_offset > end || wanted.fetch_offset < 0 {
                        response.error = ErrorCode::OffsetOutOfRange;
                        return response;
                    }
                    let mut out = BytesMut::new();
                    for (_, next, bytes) in log {
                        if *next <= wanted.fetch_offset {
                            continue;
                        }
                        if !out.is_empty()
                            && out.len() + bytes.len() > wanted.partition_max_bytes as usize
                        {
                            break;
                        }
                        out.extend_from_slice(bytes);
                    }
                    response.records = out.freeze();
                    response
                })
                .collect(),
        })
        .collect();
    FetchResponse {
        topics,
        ..Default::default()
    }
}

fn list_offsets(state: &FakeState, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let data = state.data();
    let topics = request
        .topics
        .into_iter()
        .map(|topic| ListOffsetsTopicResponse {
            partitions: topic
                .partitions
                .into_iter()
                .map(
                    |wanted| match data.end_offset(&topic.name, wanted.partition) {
                        None => ListOffsetsPartitionResponse {
                            partition: wanted.partition,
                            error: ErrorCode::UnknownTopicOrPartition,
                            offset: -1,
                        },
                        Some(end) => ListOffsetsPartitionResponse {
                            partition: wanted.partition,
                            error: ErrorCode::None,
                            offset: if wanted.timestamp == LIST_OFFSETS_EARLIEST {
                                0
                            } else {
                                end
                            },
                        },
                    },
                )
                .collect(),
            name: topic.name,
        })
        .collect();
    ListOffsetsResponse {
        topics,
        ..Default::default()
    }
}

fn heartbeat(state: &FakeState, request: GroupHeartbeatRequest) -> GroupHeartbeatResponse {
    let mut data = state.data();
    let member_id = if request.member_id.is_empty() {
        data.next_member += 1;
        let member_id = format!("member-{}", data.next_member);
        let group = data.groups.entry(request.group_id.clone()).or_default();
        group
            .members
            .insert(member_id.clone(), request.topics.clone());
        group.generation += 1;
        member_id
    } else {
        let known = data
            .groups
            .get(&request.group_id)
            .is_some_and(|group| group.members.contains_key(&request.member_id));
        if !known {
            return GroupHeartbeatResponse {
                error: ErrorCode::UnknownMemberId,
                ..Default::default()
            };
        }
        request.member_id.clone()
    };
    let generation = data.groups[&request.group_id].generation;
    GroupHeartbeatResponse {
        assignment: data.assignment(&request.group_id, &member_id),
        member_id,
        generation,
        heartbeat_interval_ms: 50,
        ..Default::default()
    }
}

fn offset_commit(state: &FakeState, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let mut data = state.data();
    let group = data.groups.get(&request.group_id);
    let error = match group {
        _ if request.member_id.is_empty() => {
            if group.is_some_and(|group| !group.members.is_empty()) {
                ErrorCode::UnknownMemberId
            } else {
                ErrorCode::None
            }
        }
        Some(group) if !group.members.contains_key(&request.member_id) => {
            ErrorCode::UnknownMemberId
        }
        Some(group) if group.generation != request.generation => ErrorCode::IllegalGeneration,
        Some(_) => ErrorCode::None,
        None => ErrorCode::UnknownMemberId,
    };
    if error.is_ok() {
        for topic in &request.topics {
            for partition in &topic.partitions {
                data.committed.insert(
                    (
                        request.group_id.clone(),
                        topic.name.clone(),
                        partition.partition,
                    ),
                    partition.offset,
                );
            }
        }
    }
    OffsetCommitResponse {
        topics: request
            .topics
            .into_iter()
            .map(|topic| OffsetCommitTopicResponse {
                partitions: topic
                    .partitions
                    .iter()
                    .map(|partition| PartitionError {
                        partition: partition.partition,
                        error,
                    })
                    .collect(),
                name: topic.name,
            })
            .collect(),
        ..Default::default()
    }
}

fn offset_fetch(state: &FakeState, request: OffsetFetchRequest) -> OffsetFetchResponse {
    let data = state.data();
    let wanted: Vec<(String, u32)> = match request.topics {
        Some(topics) => topics
            .into_iter()
            .flat_map(|topic| {
                let name = topic.topic;
                topic
                    .partitions
                    .into_iter()
                    .map(move |partition| (name.clone(), partition))
            })
            .collect(),
        None => data
            .committed
            .keys()
            .filter(|(group, _, _)| *group == request.group_id)
            .map(|(_, topic, partition)| (topic.clone(), *partition))
            .collect(),
    };
    let mut topics: BTreeMap<String, Vec<OffsetFetchPartition>> = BTreeMap::new();
    for (topic, partition) in wanted {
        let offset = data
            .committed
            .get(&(request.group_id.clone(), topic.clone(), partition))
            .copied()
            .unwrap_or(-1);
        topics.entry(topic).or_default().push(OffsetFetchPartition {
            partition,
            offset,
            metadata: None,
            error: ErrorCode::None,
        });
    }
    OffsetFetchResponse {
        topics: topics
            .into_iter()
            .map(|(name, partitions)| OffsetFetchTopic { name, partitions })
            .collect(),
        ..Default::default()
    }
}
