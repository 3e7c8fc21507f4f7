//! [`Consumer`]: pulls records from assigned partitions, alone or in a consumer group.
//!
//! Two modes:
//! - **Group** ([`Consumer::subscribe`]): the broker assigns partitions. A background task
//!   sends GroupHeartbeat every `heartbeat_interval_ms` and publishes the member id,
//!   generation and assignment on a `watch` channel; [`Consumer::poll`] applies a changed
//!   assignment before fetching (rebalances are transparent): revoked partitions are
//!   dropped (their progress committed first, whatever the commit policy), new ones start
//!   at the group's committed offset, or where [`OffsetReset`] says when there is none.
//!   Heartbeats carry the generation `poll` applied last; the broker gives a revoked
//!   partition to its next owner only after that (a two-step handover, as KIP-848's), so no
//!   two members read a partition at once and the next owner starts where this one
//!   committed. A member that stops polling for longer than its session timeout while it
//!   holds a revoked partition is fenced.
//! - **Manual** ([`Consumer::assign`]): the caller picks partitions; with a
//!   [`ConsumerConfig::group_id`] it still starts from and commits to that group's offsets
//!   (as a non-member: member id `""`, generation -1).
//!
//! Invariants: a partition's position is the offset of the next record `poll` returns, and
//! it only moves when `poll` returns (so a cancelled `poll` loses nothing) or on `seek`;
//! commits store positions, the next offset to consume; a commit is made with the member id
//! and generation the positions belong to, so a fenced member's commit is refused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use wharf_protocol::batch::BATCH_BYTES_MAX;
use wharf_protocol::messages::*;
use wharf_protocol::{ErrorCode, Request};

use crate::cluster::{Client, Target};
use crate::error::{Error, Result};
use crate::fetch::{decode_partition, ConsumerRecord, FetchedPartition};
use crate::metadata::TopicPartition;
use crate::offsets;

/// Where to start a partition that has no committed offset (Kafka's
/// `auto.offset.reset`), and where to go when a position falls outside the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The first stored record.
    Earliest,
    /// The end of the log: only records produced from now on (Kafka's default).
    #[default]
    Latest,
    /// This offset (clamped by the broker's answer: out of range resets to the nearer end).
    Offset(i64),
    /// The first record whose timestamp is at or after this one (ms since the Unix epoch),
    /// or the end of the log if there is none (Kafka's `offsetsForTimes`).
    Timestamp(i64),
}

/// When positions are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitPolicy {
    /// At the start of a `poll` once `interval` has passed since the last commit, when
    /// partitions are revoked, and on `close` (Kafka's `enable.auto.commit`).
    Auto {
        /// Time between commits.
        interval: Duration,
    },
    /// Only on [`Consumer::commit`], and for the partitions a rebalance takes away (their
    /// positions, the records `poll` returned, are committed before they are released).
    Manual,
}

impl Default for CommitPolicy {
    fn default() -> Self {
        CommitPolicy::Auto {
            interval: Duration::from_secs(5),
        }
    }
}

/// Consumer settings.
///
/// ```
/// use wharf_client::{CommitPolicy, ConsumerConfig, OffsetReset};
///
/// let config = ConsumerConfig::default()
///     .auto_offset_reset(OffsetReset::Earliest)
///     .commit(CommitPolicy::Manual);
/// assert_eq!(config.auto_offset_reset, OffsetReset::Earliest);
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Group whose committed offsets a manually assigned consumer reads and writes
    /// (`subscribe` sets it to the subscribed group).
    pub group_id: Option<String>,
    /// Where to start without a committed offset (default [`OffsetReset::Latest`]).
    pub auto_offset_reset: OffsetReset,
    /// When to commit (default auto every 5 s).
    pub commit: CommitPolicy,
    /// Whether fetches see uncommitted transactional records (default read uncommitted).
    pub isolation: Isolation,
    /// Longest a fetch waits at the broker for data (default 500 ms, Kafka's
    /// `fetch.max.wait.ms`); `poll` never waits longer than its own timeout.
    pub fetch_max_wait: Duration,
    /// Bytes a fetch waits for (default 1: answer as soon as anything is there).
    pub fetch_min_bytes: u32,
    /// Bytes one fetch response may carry (default 16 MiB, within the frame limit).
    pub fetch_max_bytes: u32,
    /// Bytes per partition in one fetch (default 1 MiB); raised for a partition whose
    /// next batch is larger.
    pub partition_fetch_bytes: u32,
    /// Assignor asked for when joining: `range`, `roundrobin`, `sticky`, or empty for the
    /// group's current one.
    pub assignor: String,
    /// Session timeout asked for when joining; zero for the broker's default.
    pub session_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: None,
            auto_offset_reset: OffsetReset::Latest,
            commit: CommitPolicy::default(),
            isolation: Isolation::ReadUncommitted,
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 16 * 1024 * 1024,
            partition_fetch_bytes: 1024 * 1024,
            assignor: String::new(),
            session_timeout: Duration::ZERO,
        }
    }
}

impl ConsumerConfig {
    /// Sets [`ConsumerConfig::group_id`].
    #[must_use]
    pub fn group_id(mut self, group_id: impl Into<String>) -> Self {
        self.group_id = Some(group_id.into());
        self
    }

    /// Sets [`ConsumerConfig::auto_offset_reset`].
    #[must_use]
    pub fn auto_offset_reset(mut self, reset: OffsetReset) -> Self {
        self.auto_offset_reset = reset;
        self
    }

    /// Sets [`ConsumerConfig::commit`].
    #[must_use]
    pub fn commit(mut self, commit: CommitPolicy) -> Self {
        self.commit = commit;
        self
    }

    /// Sets [`ConsumerConfig::isolation`].
    #[must_use]
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }
}

/// A pull consumer.
///
/// ```no_run
/// # async fn example() -> wharf_client::Result<()> {
/// use std::time::Duration;
/// use wharf_client::{Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset};
///
/// let client = Client::connect(ClientConfig::new("127.0.0.1:7420")).await?;
/// let config = ConsumerConfig::default().auto_offset_reset(OffsetReset::Earliest);
/// let mut consumer = Consumer::new(&client, config);
/// consumer.subscribe("billing", ["orders"]).await?;
/// for _ in 0..10 {
///     for record in consumer.poll(Duration::from_secs(1)).await? {
///         println!("{}-{}@{}", record.topic, record.partition, record.offset);
///     }
/// }
/// consumer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    group: Option<Membership>,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    last_auto_commit: Instant,
}

/// A consumer's group identity, for committing offsets inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    /// The consumer group.
    pub group_id: String,
    /// The member id, empty for a consumer with manual assignment.
    pub member_id: String,
    /// The member's generation, -1 for a consumer with manual assignment.
    pub generation: i32,
}

#[derive(Debug, Clone, Default)]
struct PartitionState {
    /// Next offset to return; `None` until resolved.
    position: Option<i64>,
    /// Last offset known committed for the group.
    committed: Option<i64>,
    /// Set when the position must come from `OffsetReset`, not the committed offset.
    reset: Option<OffsetReset>,
    /// Bytes to ask for in a fetch, when above the configured default.
    fetch_bytes: Option<u32>,
}

/// The outcome of one fetch round.
#[derive(Debug)]
struct Fetched {
    records: Vec<ConsumerRecord>,
    /// A partition or request failed: pause before fetching again.
    should_back_off: bool,
}

/// What the heartbeat task last learned about this member.
#[derive(Debug, Clone, Default)]
struct GroupView {
    member_id: String,
    generation: i32,
    assignment: Vec<TopicPartition>,
    /// A non-retriable heartbeat failure, surfaced by `poll`.
    error: Option<Error>,
}

/// Group membership: the identity positions belong to and the heartbeat task.
#[derive(Debug)]
struct Membership {
    /// The member id and generation of the assignment `poll` applied last.
    member_id: String,
    generation: i32,
    assignment: Vec<TopicPartition>,
    view: watch::Receiver<GroupView>,
    /// For the heartbeat a refused commit sends to learn the current generation.
    heartbeat: Arc<Heartbeat>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Consumer {
    /// A consumer reading through `client`, with no partitions yet. Does no I/O.
    pub fn new(client: &Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            client: client.clone(),
            config,
            group: None,
            partitions: BTreeMap::new(),
            last_auto_commit: Instant::now(),
        }
    }

    /// Joins consumer group `group` subscribed to `topics`; the broker assigns partitions,
    /// and `poll` follows its changes. Heartbeats run in the background until `close`.
    ///
    /// # Errors
    /// The join's error (for example `InvalidGroupId`), [`Error::InvalidState`] if
    /// partitions were assigned manually or the consumer is already subscribed.
    pub async fn subscribe<I, S>(&mut self, group: &str, topics: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if self.group.is_some() || !self.partitions.is_empty() {
            return Err(Error::InvalidState {
                reason: "consumer is already subscribed or assigned",
            });
        }
        let heartbeat = Heartbeat {
            client: self.client.clone(),
            group_id: group.to_string(),
            topics: topics.into_iter().map(Into::into).collect(),
            assignor: self.config.assignor.clone(),
            session_timeout_ms: u32::try_from(self.config.session_timeout.as_millis())
                .unwrap_or(u32::MAX),
            applied: AtomicI32::new(0),
        };
        let joined = heartbeat.send("", 0).await?;
        let view = GroupView {
            member_id: joined.member_id.clone(),
            generation: joined.generation,
            assignment: flatten(&joined.assignment),
            error: None,
        };
        let interval = heartbeat_interval(&joined);
        let (view_sender, view_receiver) = watch::channel(view);
        let (stop, stop_receiver) = oneshot::channel();
        let heartbeat = Arc::new(heartbeat);
        let task = tokio::spawn(Arc::clone(&heartbeat).run(view_sender, stop_receiver, interval));
        self.config.group_id = Some(group.to_string());
        self.group = Some(Membership {
            member_id: String::new(),
            generation: -1,
            assignment: Vec::new(),
            view: view_receiver,
            heartbeat,
            stop: Some(stop),
            task,
        });
        Ok(())
    }

    /// Reads exactly `partitions`, without group membership. Positions start at the
    /// committed offset of [`ConsumerConfig::group_id`] if set and committed, else where
    /// [`ConsumerConfig::auto_offset_reset`] says.
    ///
    /// # Errors
    /// [`Error::InvalidState`] if the consumer is subscribed to a group.
    pub fn assign(&mut self, partitions: Vec<TopicPartition>) -> Result<()> {
        if self.group.is_some() {
            return Err(Error::InvalidState {
                reason: "a subscribed consumer cannot assign partitions",
            });
        }
        self.partitions = partitions
            .into_iter()
            .map(|partition| (partition, PartitionState::default()))
            .collect();
        Ok(())
    }

    /// What a transactional producer needs to commit this consumer's offsets in a
    /// transaction ([`crate::Producer::send_offsets_to_transaction`]): the group and the
    /// member id and generation the positions belong to, so a fenced member's transactional
    /// commit is refused like a plain one. `None` without a group id.
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        let group_id = self.config.group_id.clone()?;
        let (member_id, generation) = self.commit_identity();
        Some(ConsumerGroupMetadata {
            group_id,
            member_id,
            generation,
        })
    }

    /// The partitions this consumer reads now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    /// The offset of the next record `poll` returns for `partition`, once known.
    pub fn position(&self, partition: &TopicPartition) -> Option<i64> {
        self.partitions
            .get(partition)
            .and_then(|state| state.position)
    }

    /// Moves `topic`-`partition` so that the next record returned is at `offset`.
    ///
    /// # Errors
    /// [`Error::InvalidState`] if the partition is not assigned to this consumer.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        let state = self
            .partitions
            .get_mut(&TopicPartition::new(topic, partition))
            .ok_or(Error::InvalidState {
                reason: "seek on a partition not assigned to this consumer",
            })?;
        state.position = Some(offset);
        state.reset = None;
        Ok(())
    }

    /// Returns the records available within `timeout`: as soon as a fetch brings any, or
    /// an empty list when the timeout passes. Applies group rebalances first, and commits
    /// first when auto-commit is due.
    ///
    /// # Errors
    /// Request errors other than retriable ones, [`Error::Batch`] for malformed data, a
    /// fatal group error (for example an invalid group id).
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now() + timeout;
        self.auto_commit_if_due().await;
        loop {
            self.reconcile_group().await?;
            if let Err(error) = self.resolve_positions().await {
                if !error.is_retriable() {
                    return Err(error);
                }
                // A partition's leader moved, is being elected or cannot be reached, or the
                // coordinator moved: asked again after a pause (with the metadata asked
                // again), as Kafka's consumers retry.
                let topics: BTreeSet<String> = self
                    .partitions
                    .keys()
                    .map(|partition| partition.topic.clone())
                    .collect();
                for topic in topics {
                    self.client.invalidate_topic(&topic);
                }
                let pause = self.client.config().retry_backoff_base;
                tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                continue;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if self.partitions.is_empty() {
                if remaining.is_zero() {
                    return Ok(Vec::new());
                }
                self.wait_for_assignment(remaining).await;
                continue;
            }
            let fetched = self
                .fetch(remaining.min(self.config.fetch_max_wait))
                .await?;
            if !fetched.records.is_empty() || Instant::now() >= deadline {
                return Ok(fetched.records);
            }
            if fetched.should_back_off {
                // Errors answer at once; without a pause this loop would hammer the broker.
                let pause = self.client.config().retry_backoff_base;
                tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
            }
        }
    }

    /// Commits the position of every partition that moved since its last commit, and
    /// waits for the broker's answer.
    ///
    /// # Errors
    /// [`Error::InvalidState`] without a group id; `IllegalGeneration` or
    /// `UnknownMemberId` (as [`Error::Server`]) if this member was fenced; request errors.
    pub async fn commit(&mut self) -> Result<()> {
        let group_id = self.config.group_id.clone().ok_or(Error::InvalidState {
            reason: "commit needs a group id",
        })?;
        let offsets: Vec<(TopicPartition, i64)> = self
            .partitions
            .iter()
            .filter_map(|(partition, state)| match state.position {
                Some(position) if state.committed != Some(position) => {
                    Some((partition.clone(), position))
                }
                _ => None,
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let (member_id, generation) = self.commit_identity();
        // Retriable refusals (the coordinator moving or briefly unreachable) are tried
        // again within the reconnect timeout, as Kafka's `commitSync` does: a coordinator
        // call gives an unreachable node up after 2 s when other brokers are known.
        let deadline = Instant::now() + self.client.config().reconnect_timeout;
        let result = loop {
            let result =
                offsets::commit(&self.client, &group_id, &member_id, generation, &offsets).await;
            match &result {
                Err(error) if error.is_retriable() && Instant::now() < deadline => {
                    tokio::time::sleep(self.client.config().retry_backoff_base).await;
                }
                _ => break result,
            }
        };
        match result {
            Err(error) if error.code() == Some(ErrorCode::IllegalGeneration) => {
                // The group's generation moves on whenever any member joins or leaves, so a
                // member that has not heartbeated since is refused. Ask for the current
                // generation; a member still in the group commits again under it, a fenced
                // one gets UnknownMemberId.
                let Some(generation) = self.current_generation(&member_id).await? else {
                    return Err(error);
                };
                offsets::commit(&self.client, &group_id, &member_id, generation, &offsets).await?;
            }
            other => other?,
        }
        for (partition, offset) in offsets {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.committed = Some(offset);
            }
        }
        Ok(())
    }

    /// Commits (under auto-commit) and leaves the group.
    ///
    /// # Errors
    /// The final commit's error; the group is left either way.
    pub async fn close(mut self) -> Result<()> {
        let committed = match self.config.commit {
            CommitPolicy::Auto { .. } if self.config.group_id.is_some() => self.commit().await,
            _ => Ok(()),
        };
        if let Some(mut group) = self.group.take() {
            if let Some(stop) = group.stop.take() {
                let _ = stop.send(());
            }
            // The task sends LeaveGroup before it ends.
            let _ = (&mut group.task).await;
        }
        committed
    }

    /// The group's generation now, asked with a heartbeat as `member_id`; `None` without
    /// group membership.
    async fn current_generation(&mut self, member_id: &str) -> Result<Option<i32>> {
        let Some(group) = &mut self.group else {
            return Ok(None);
        };
        if member_id.is_empty() {
            return Ok(None);
        }
        let response = group.heartbeat.send(member_id, group.generation).await?;
        if response.member_id != member_id {
            return Ok(None);
        }
        group.generation = group.generation.max(response.generation);
        Ok(Some(response.generation))
    }

    /// The member id and generation a commit is made under: the identity of the applied
    /// assignment, with the newest generation the heartbeat saw for that same member. A
    /// member that was fenced and rejoined under a new id keeps its old identity here, so
    /// the broker refuses the commit.
    fn commit_identity(&self) -> (String, i32) {
        match &self.group {
            None => (String::new(), -1),
            Some(group) => {
                let view = group.view.borrow();
                if view.member_id == group.member_id {
                    (
                        group.member_id.clone(),
                        view.generation.max(group.generation),
                    )
                } else {
                    (group.member_id.clone(), group.generation)
                }
            }
        }
    }

    async fn auto_commit_if_due(&mut self) {
        let CommitPolicy::Auto { interval } = self.config.commit else {
            return;
        };
        if self.config.group_id.is_none() || self.last_auto_commit.elapsed() < interval {
            return;
        }
        self.last_auto_commit = Instant::now();
        // Like Kafka's auto-commit, a failed commit is retried at the next interval; the
        // records stay delivered at least once either way.
        let _ = self.commit().await;
    }

    /// Applies the newest assignment the heartbeat task published.
    async fn reconcile_group(&mut self) -> Result<()> {
        let Some(group) = &mut self.group else {
            return Ok(());
        };
        let view = group.view.borrow_and_update().clone();
        if let Some(error) = view.error {
            return Err(error);
        }
        let same_member = view.member_id == group.member_id;
        if same_member && view.assignment == group.assignment {
            group.generation = group.generation.max(view.generation);
            group
                .heartbeat
                .applied
                .store(group.generation, Ordering::Release);
            return Ok(());
        }
        let assigned: BTreeSet<TopicPartition> = view.assignment.iter().cloned().collect();
        let revoked: Vec<TopicPartition> = self
            .partitions
            .keys()
            .filter(|partition| !assigned.contains(*partition))
            .cloned()
            .collect();
        if same_member && !revoked.is_empty() {
            // Commit revoked progress under the new generation, whatever the commit policy,
            // so the next owner starts where this member stopped (records `poll` returned
            // count as processed); only then does the next heartbeat release them. A failed
            // commit only means some records are read again.
            group.generation = view.generation;
            let _ = self.commit().await;
        }
        for partition in revoked {
            self.partitions.remove(&partition);
        }
        for partition in assigned {
            self.partitions.entry(partition).or_default();
        }
        if let Some(group) = &mut self.group {
            group.member_id = view.member_id;
            group.generation = view.generation;
            group.assignment = view.assignment;
            group
                .heartbeat
                .applied
                .store(group.generation, Ordering::Release);
        }
        Ok(())
    }

    async fn wait_for_assignment(&mut self, timeout: Duration) {
        match &mut self.group {
            Some(group) => {
                let changed = tokio::time::timeout(timeout, group.view.changed()).await;
                if matches!(changed, Ok(Err(_))) {
                    // The heartbeat task is gone; nothing will change, so do not spin.
                    tokio::time::sleep(timeout).await;
                }
            }
            None => tokio::time::sleep(timeout).await,
        }
    }

    /// Gives every partition without a position one: the committed offset, else the
    /// reset policy.
    async fn resolve_positions(&mut self) -> Result<()> {
        let unresolved: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, state)| state.position.is_none())
            .map(|(partition, _)| partition.clone())
            .collect();
        if unresolved.is_empty() {
            return Ok(());
        }
        let needs_committed: Vec<TopicPartition> = unresolved
            .iter()
            .filter(|partition| self.partitions[*partition].reset.is_none())
            .cloned()
            .collect();
        let committed = match &self.config.group_id {
            Some(group) if !needs_committed.is_empty() => {
                offsets::fetch_committed(&self.client, group, Some(&needs_committed)).await?
            }
            _ => HashMap::new(),
        };
        let mut by_policy: HashMap<i64, Vec<TopicPartition>> = HashMap::new();
        for partition in unresolved {
            let state = self.partitions.entry(partition.clone()).or_default();
            if let Some(offset) = committed.get(&partition) {
                state.position = Some(*offset);
                state.committed = Some(*offset);
                continue;
            }
            // The reset is cleared only once a position is found (a failed lookup is tried
            // again with it).
            match state.reset.unwrap_or(self.config.auto_offset_reset) {
                OffsetReset::Offset(offset) => {
                    state.position = Some(offset);
                    state.reset = None;
                }
                OffsetReset::Earliest => by_policy
                    .entry(LIST_OFFSETS_EARLIEST)
                    .or_default()
                    .push(partition),
                OffsetReset::Latest => by_policy
                    .entry(LIST_OFFSETS_LATEST)
                    .or_default()
                    .push(partition),
                OffsetReset::Timestamp(timestamp_ms) => by_policy
                    .entry(timestamp_ms.max(0))
                    .or_default()
                    .push(partition),
            }
        }
        let mut past_the_end = Vec::new();
        for (timestamp, partitions) in by_policy {
            let found = offsets::list_offsets(&self.client, &partitions, timestamp).await?;
            for (partition, offset) in found {
                if offset < 0 && timestamp >= 0 {
                    // No record at or after the timestamp: start at the end.
                    past_the_end.push(partition);
                } else if let Some(state) = self.partitions.get_mut(&partition) {
                    state.position = Some(offset.max(0));
                    state.reset = None;
                }
            }
        }
        if !past_the_end.is_empty() {
            let found =
                offsets::list_offsets(&self.client, &past_the_end, LIST_OFFSETS_LATEST).await?;
            for (partition, offset) in found {
                if let Some(state) = self.partitions.get_mut(&partition) {
                    state.position = Some(offset.max(0));
                    state.reset = None;
                }
            }
        }
        Ok(())
    }

    /// One fetch round over every positioned partition, one request per leader.
    async fn fetch(&mut self, max_wait: Duration) -> Result<Fetched> {
        let positioned: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, state)| state.position.is_some())
            .map(|(partition, _)| partition.clone())
            .collect();
        let mut requests = JoinSet::new();
        for (leader, partitions) in offsets::by_leader(&self.client, &positioned).await? {
            let request = self.fetch_request(&partitions, max_wait);
            let client = self.client.clone();
            requests.spawn(async move {
                client
                    .call::<FetchResponse>(offsets::leader_target(leader), request)
                    .await
            });
        }
        let mut fetched = Fetched {
            records: Vec::new(),
            // Nothing to fetch (no position could be resolved) also calls for a pause.
            should_back_off: requests.is_empty(),
        };
        while let Some(joined) = requests.join_next().await {
            let response = joined.map_err(|_| Error::Closed)?;
            let response = match response {
                Ok(response) => response,
                Err(error) if error.is_retriable() => {
                    fetched.should_back_off = true;
                    continue;
                }
                Err(error) => return Err(error),
            };
            for topic in response.topics {
                for partition in topic.partitions {
                    let failed = !partition.error.is_ok();
                    self.apply_fetched(&topic.name, partition, &mut fetched.records)?;
                    fetched.should_back_off |= failed;
                }
            }
        }
        Ok(fetched)
    }

    fn fetch_request(&self, partitions: &[TopicPartition], max_wait: Duration) -> Request {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for partition in partitions {
            let state = &self.partitions[partition];
            let fetch_partition = FetchPartition {
                partition: partition.partition,
                fetch_offset: state.position.unwrap_or(0),
                partition_max_bytes: state
                    .fetch_bytes
                    .unwrap_or(self.config.partition_fetch_bytes),
            };
            match topics
                .iter_mut()
                .find(|topic| topic.name == partition.topic)
            {
                Some(topic) => topic.partitions.push(fetch_partition),
                None => topics.push(FetchTopic {
                    name: partition.topic.clone(),
                    partitions: vec![fetch_partition],
                }),
            }
        }
        Request::Fetch(FetchRequest {
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
            min_bytes: self.config.fetch_min_bytes,
            max_bytes: self.config.fetch_max_bytes,
            isolation: self.config.isolation,
            topics,
        })
    }

    /// Decodes one partition's answer and moves its position past what it returns.
    fn apply_fetched(
        &mut self,
        topic: &str,
        fetched: FetchPartitionResponse,
        records: &mut Vec<ConsumerRecord>,
    ) -> Result<()> {
        let key = TopicPartition::new(topic, fetched.partition);
        let reset_policy = self.config.auto_offset_reset;
        let Some(state) = self.partitions.get_mut(&key) else {
            return Ok(());
        };
        let Some(fetch_offset) = state.position else {
            return Ok(());
        };
        match fetched.error {
            ErrorCode::None => {}
            ErrorCode::OffsetOutOfRange => {
                state.position = None;
                state.reset = Some(out_of_range_reset(
                    reset_policy,
                    fetch_offset,
                    fetched.high_watermark,
                ));
                return Ok(());
            }
            // The leader moved or the topic changed: ask the metadata again next round.
            ErrorCode::UnknownTopicOrPartition | ErrorCode::NotLeaderOrFollower => {
                self.client.invalidate_topic(topic);
                return Ok(());
            }
            code if code.is_retriable() => return Ok(()),
            code => return Err(Error::server(code, fetched.error_message)),
        }
        let decoded = decode_partition(FetchedPartition {
            topic,
            partition: fetched.partition,
            records: fetched.records,
            fetch_offset,
            isolation: self.config.isolation,
            aborted: &fetched.aborted_transactions,
        })?;
        state.position = Some(decoded.next_offset);
        state.fetch_bytes = decoded
            .first_batch_bytes
            .map(|needed| u32::try_from(needed.min(BATCH_BYTES_MAX)).unwrap_or(u32::MAX));
        records.extend(decoded.records);
        Ok(())
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Dropping the stop sender tells the heartbeat task to leave the group and end.
        if let Some(group) = &mut self.group {
            group.stop.take();
        }
    }
}

/// Where a position outside the log goes: the policy's end, or for a fixed offset the end
/// nearer to it.
fn out_of_range_reset(policy: OffsetReset, position: i64, high_watermark: i64) -> OffsetReset {
    match policy {
        OffsetReset::Offset(_) if high_watermark >= 0 && position >= high_watermark => {
            OffsetReset::Latest
        }
        OffsetReset::Offset(_) | OffsetReset::Timestamp(_) => OffsetReset::Earliest,
        other => other,
    }
}

fn flatten(assignment: &[TopicPartitions]) -> Vec<TopicPartition> {
    let mut partitions: Vec<TopicPartition> = assignment
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(|partition| TopicPartition::new(topic.topic.clone(), *partition))
        })
        .collect();
    partitions.sort();
    partitions
}

fn heartbeat_interval(response: &GroupHeartbeatResponse) -> Duration {
    // Zero would spin; a second is a sane floor for a broker that sends none.
    match response.heartbeat_interval_ms {
        0 => Duration::from_secs(1),
        interval => Duration::from_millis(u64::from(interval)),
    }
}

/// The heartbeat task's fixed request fields.
#[derive(Debug)]
struct Heartbeat {
    client: Client,
    group_id: String,
    topics: Vec<String>,
    assignor: String,
    session_timeout_ms: u32,
    /// The newest generation whose assignment `poll` has applied (revoked partitions
    /// dropped, their positions committed). Heartbeats carry it: the broker hands a revoked
    /// partition to its next owner only once this member has applied the generation that
    /// took it away.
    applied: AtomicI32,
}

impl Heartbeat {
    async fn send(&self, member_id: &str, generation: i32) -> Result<GroupHeartbeatResponse> {
        let request = Request::GroupHeartbeat(GroupHeartbeatRequest {
            group_id: self.group_id.clone(),
            member_id: member_id.to_string(),
            generation,
            client_id: self.client.config().client_id.clone(),
            topics: self.topics.clone(),
            assignor: self.assignor.clone(),
            session_timeout_ms: self.session_timeout_ms,
        });
        self.client.call(Target::Coordinator, request).await
    }

    /// Heartbeats until told to stop (or the consumer is dropped), then leaves the group.
    async fn run(
        self: Arc<Self>,
        view: watch::Sender<GroupView>,
        mut stop: oneshot::Receiver<()>,
        mut interval: Duration,
    ) {
        let mut member_id = view.borrow().member_id.clone();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(interval) => {}
            }
            let applied = if member_id.is_empty() {
                0
            } else {
                self.applied.load(Ordering::Acquire)
            };
            match self.send(&member_id, applied).await {
                Ok(response) => {
                    interval = heartbeat_interval(&response);
                    member_id = response.member_id.clone();
                    let generation = response.generation;
                    let assignment = flatten(&response.assignment);
                    view.send_if_modified(|current| {
                        let changed = current.member_id != member_id
                            || current.generation != generation
                            || current.assignment != assignment
                            || current.error.is_some();
                        *current = GroupView {
                            member_id: member_id.clone(),
                            generation,
                            assignment: assignment.clone(),
                            error: None,
                        };
                        changed
                    });
                }
                Err(error)
                    if matches!(
                        error.code(),
                        Some(ErrorCode::UnknownMemberId | ErrorCode::IllegalGeneration)
                    ) =>
                {
                    // Fenced: rejoin at once as a new member.
                    member_id.clear();
                    interval = Duration::ZERO;
                }
                Err(error) if error.is_retriable() => {
                    interval = self.client.config().retry_backoff_max;
                }
                Err(error) => {
                    interval = self.client.config().retry_backoff_max;
                    view.send_modify(|current| current.error = Some(error));
                }
            }
        }
        if !member_id.is_empty() {
            let leave = Request::LeaveGroup(LeaveGroupRequest {
                group_id: self.group_id.clone(),
                member_id,
            });
            // Best effort: if it is lost, the session timeout removes the member.
            let _ = self
                .client
                .call::<LeaveGroupResponse>(Target::Coordinator, leave)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_fixed_offset_resets_to_nearer_end() {
        let policy = OffsetReset::Offset(100);
        assert_eq!(out_of_range_reset(policy, 100, 50), OffsetReset::Latest);
        assert_eq!(out_of_range_reset(policy, 3, 50), OffsetReset::Earliest);
        assert_eq!(
            out_of_range_reset(OffsetReset::Earliest, 100, 50),
            OffsetReset::Earliest
        );
    }

    #[test]
    fn assignment_is_flattened_and_sorted() {
        let assignment = vec![
            TopicPartitions {
                topic: "b".to_string(),
                partitions: vec![1, 0],
            },
            TopicPartitions {
                topic: "a".to_string(),
                partitions: vec![2],
            },
        ];
        assert_eq!(
            flatten(&assignment),
            vec![
                TopicPartition::new("a", 2),
                TopicPartition::new("b", 0),
                TopicPartition::new("b", 1),
            ]
        );
    }

    #[test]
    fn zero_heartbeat_interval_is_floored() {
        let response = GroupHeartbeatResponse::default();
        assert_eq!(heartbeat_interval(&response), Duration::from_secs(1));
    }
}
