//! Core operations on consumer groups: membership (join, heartbeat, leave), describing and
//! listing groups, committing and fetching offsets, and the admin operations that need an
//! empty group (resetting and deleting its offsets).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::acl::{Operation, ResourceType};
use crate::core::stream_ops::dedupe;
use crate::core::{Broker, Session};
use crate::groups::classic::{ClassicJoin, ClassicSummary, JoinWait, Joined, SyncWait};
use crate::groups::commit::{self, EntryRefusal, OffsetEntry};
use crate::groups::offsets::Committed;
use crate::groups::reset::{plan_offset, Execution, PartitionBounds, ResetTarget};
use crate::groups::{GroupError, GroupListing, GroupState, GroupSummary, Heartbeat, MemberState};
use crate::storage::Error as StorageError;
use crate::streams::topic::INTERNAL_TOPIC_PREFIX;
use crate::streams::{OffsetSpec, StreamError};

/// Why a whole offset commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The group refused the committing member.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// Storing the accepted offsets failed; none is visible.
    #[error("commit failed: {0}")]
    Storage(#[from] StorageError),
}

/// Why a group admin operation (reset or delete of offsets) failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupAdminError {
    /// The group refused: an empty id, active members, or unknown.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// The topic or a partition's bounds could not be read.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Storing the new offsets or the tombstones failed; nothing changed.
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// One partition's planned reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedOffset {
    /// The partition.
    pub partition: u32,
    /// Its committed offset before the reset (`None`: none).
    pub current_offset: Option<i64>,
    /// Where the reset moves it.
    pub new_offset: i64,
}

/// A partition and its committed offset (`None`: nothing committed).
pub type PartitionOffset = (u32, Option<Committed>);

impl Broker {
    /// A join or heartbeat.
    ///
    /// # Errors
    /// The group's refusal.
    pub fn heartbeat(
        &self,
        caller: &Session,
        heartbeat: &Heartbeat,
    ) -> Result<MemberState, GroupError> {
        self.check_group(caller, Operation::Read, &heartbeat.group_id)?;
        let streams = &self.streams;
        self.groups
            .heartbeat(heartbeat, |topic| streams.partition_count(topic))
    }

    /// A member leaves its group at once.
    ///
    /// # Errors
    /// Unknown group or member.
    pub fn leave_group(
        &self,
        caller: &Session,
        group_id: &str,
        member_id: &str,
    ) -> Result<(), GroupError> {
        self.check_group(caller, Operation::Read, group_id)?;
        let streams = &self.streams;
        self.groups
            .leave(group_id, member_id, |topic| streams.partition_count(topic))
    }

    /// Describes groups (unknown ones as empty), without repeats. Needs `Describe` on each;
    /// one the caller may not describe comes back empty and `denied`.
    pub fn describe_groups(&self, caller: &Session, group_ids: Vec<String>) -> Vec<GroupSummary> {
        dedupe(group_ids)
            .into_iter()
            .map(|group_id| {
                match self.check(caller, Operation::Describe, ResourceType::Group, &group_id) {
                    Ok(()) => self.groups.describe(&group_id),
                    Err(denied) => GroupSummary {
                        group_id,
                        state: GroupState::Empty,
                        generation: 0,
                        assignor: "",
                        members: Vec::new(),
                        denied: Some(denied),
                    },
                }
            })
            .collect()
    }

    /// Every group with members, and every group that only has committed offsets (as
    /// empty), sorted by id; only those the caller may describe.
    pub fn list_groups(&self, caller: &Session) -> Vec<GroupListing> {
        let mut groups = self.groups.list();
        for group_id in self.offsets.groups() {
            if !groups.iter().any(|listing| listing.group_id == group_id) {
                groups.push(GroupListing {
                    group_id,
                    state: GroupState::Empty,
                    member_count: 0,
                });
            }
        }
        groups.retain(|listing| {
            self.permits(
                caller,
                Operation::Describe,
                ResourceType::Group,
                &listing.group_id,
            )
        });
        groups.sort_by(|left, right| left.group_id.cmp(&right.group_id));
        groups
    }

    /// Commits offsets for a group under the commit rule ([`commit::check`], shared with
    /// transactional commits: the member must be current, each entry must pass); the
    /// accepted entries are stored durably together. Returns each entry's outcome in request
    /// order.
    ///
    /// # Errors
    /// The member check's refusal (nothing stored), or the storage error (nothing visible).
    pub async fn commit_offsets(
        &self,
        caller: &Session,
        group_id: &str,
        member_id: &str,
        generation: i32,
        entries: Vec<OffsetEntry>,
    ) -> Result<Vec<Result<(), EntryRefusal>>, CommitError> {
        self.check_group(caller, Operation::Read, group_id)?;
        let streams = &self.streams;
        let mut outcomes = commit::check(
            &self.groups,
            group_id,
            member_id,
            generation,
            &entries,
            |topic| streams.partition_count(topic),
        )?;
        for (entry, outcome) in entries.iter().zip(outcomes.iter_mut()) {
            if let Err(denied) =
                self.check(caller, Operation::Read, ResourceType::Topic, &entry.topic)
            {
                *outcome = Err(denied.into());
            }
        }
        let accepted = entries
            .into_iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_ok())
            .map(|(entry, _)| (entry.topic, entry.partition, entry.committed))
            .collect();
        self.offsets.commit(group_id, accepted).await?;
        Ok(outcomes)
    }

    /// A group's committed offsets: of the named partitions (`None` where nothing is
    /// committed), or of every partition it has committed, grouped by topic. Needs
    /// `Describe` on the group; topics the caller may not describe are left out of a whole
    /// group's answer and show nothing committed when named.
    ///
    /// # Errors
    /// `Unauthorized` for the group.
    pub fn fetch_offsets(
        &self,
        caller: &Session,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<u32>)>>,
    ) -> Result<Vec<(String, Vec<PartitionOffset>)>, GroupError> {
        self.check_group(caller, Operation::Describe, group_id)?;
        let visible =
            |topic: &str| self.permits(caller, Operation::Describe, ResourceType::Topic, topic);
        Ok(match wanted {
            Some(wanted) => wanted
                .into_iter()
                .map(|(topic, partitions)| {
                    let shown = visible(&topic);
                    let committed = partitions
                        .into_iter()
                        .map(|partition| {
                            let committed = self.offsets.get(group_id, &topic, partition);
                            (partition, committed.filter(|_| shown))
                        })
                        .collect();
                    (topic, committed)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(u32, Option<Committed>)>> = BTreeMap::new();
                for (topic, partition, committed) in self.offsets.group(group_id) {
                    if !visible(&topic) {
                        continue;
                    }
                    by_topic
                        .entry(topic)
                        .or_default()
                        .push((partition, Some(committed)));
                }
                by_topic.into_iter().collect()
            }
        })
    }

    /// [`Broker::check`] of an operation on a group, as the group's error.
    fn check_group(
        &self,
        caller: &Session,
        operation: Operation,
        group_id: &str,
    ) -> Result<(), GroupError> {
        self.check(caller, operation, ResourceType::Group, group_id)?;
        self.check_coordinating()
    }

    /// Whether this node coordinates consumer groups now, so that its list and
    /// descriptions of them are the cluster's (another node has none of their members).
    ///
    /// # Errors
    /// `NotCoordinator`, naming the node that coordinates as far as this node knows.
    pub fn check_coordinating(&self) -> Result<(), GroupError> {
        if self.coordinates_here() {
            return Ok(());
        }
        Err(GroupError::NotCoordinator {
            coordinator: self.coordinator_elsewhere(),
        })
    }
}

/// The longest a classic join or sync waits at its barrier beyond the rebalance timeout,
/// should the sweep that completes rebalances be late.
const CLASSIC_WAIT_SLACK: Duration = Duration::from_secs(5);

impl Broker {
    /// A join of Kafka's classic group protocol: waits at the barrier until the rebalance
    /// completes (every member rejoined, or the rebalance timeout passed).
    ///
    /// # Errors
    /// The group's refusal, or `RebalanceInProgress` if the barrier did not complete in time.
    pub async fn join_classic_group(
        &self,
        caller: &Session,
        join: ClassicJoin,
    ) -> Result<Joined, GroupError> {
        self.check_group(caller, Operation::Read, &join.group_id)?;
        let limit = Duration::from_millis(u64::try_from(join.rebalance_timeout_ms).unwrap_or(0))
            + CLASSIC_WAIT_SLACK;
        let group_id = join.group_id.clone();
        match self.groups.classic_join(join) {
            JoinWait::Refused(error) => Err(error),
            JoinWait::Waiting(receiver) => wait_classic(receiver, limit, &group_id).await,
        }
    }

    /// A sync of the classic protocol: the leader hands over every member's assignment; each
    /// member gets its own (a follower waits for the leader's).
    ///
    /// # Errors
    /// The group's refusal.
    pub async fn sync_classic_group(
        &self,
        caller: &Session,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<Bytes, GroupError> {
        self.check_group(caller, Operation::Read, group_id)?;
        let synced = self
            .groups
            .classic()
            .sync(group_id, member_id, generation, assignments);
        // The leader's sync made the group stable: it is recorded for the next
        // coordinator (issue #21), so a coordinator's failover or hand-over does not make
        // every member rejoin. Not recorded, the group works here all the same.
        if let Some(saved) = self.groups.classic().saved(group_id, member_id, generation) {
            if let Err(error) = self.offsets.record_group(group_id, Some(&saved)).await {
                tracing::warn!(group = group_id, %error, "cannot record the group's state; its members rejoin if the coordinator moves");
            }
        }
        match synced {
            SyncWait::Assigned(assignment) => Ok(assignment),
            SyncWait::Refused(error) => Err(error),
            SyncWait::Waiting(receiver) => {
                wait_classic(receiver, CLASSIC_SYNC_WAIT_MAX, group_id).await
            }
        }
    }

    /// A heartbeat of the classic protocol.
    ///
    /// # Errors
    /// `UnknownMember`, `IllegalGeneration` or `RebalanceInProgress` (rejoin).
    pub fn heartbeat_classic_group(
        &self,
        caller: &Session,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        self.check_group(caller, Operation::Read, group_id)?;
        self.groups
            .classic()
            .heartbeat(group_id, member_id, generation)
    }

    /// Members of a classic group leave; each answer in request order.
    pub fn leave_classic_group(
        &self,
        caller: &Session,
        group_id: &str,
        member_ids: &[String],
    ) -> Vec<Result<(), GroupError>> {
        if let Err(refused) = self.check_group(caller, Operation::Read, group_id) {
            return member_ids.iter().map(|_| Err(refused.clone())).collect();
        }
        // A group this emptied is recorded so by the session sweep (`record_emptied_groups`).
        self.groups.classic().leave(group_id, member_ids)
    }

    /// Run by the session sweep: records a tombstone for each classic group whose last
    /// member left or expired since the last call (one that got members again meanwhile
    /// is skipped), and each broker-side group whose generation changed since it was last
    /// recorded (a tombstone for one that went), so the next coordinator goes on from
    /// there; nothing on a node that does not coordinate. A write that fails is tried
    /// again at the next sweep (broker-side groups) or not at all (classic tombstones: the
    /// ghost members expire on the next coordinator).
    pub(crate) async fn record_group_changes(&self) {
        if !self.coordinates_here() {
            return;
        }
        for group in self.groups.classic().take_emptied() {
            if let Err(error) = self.offsets.record_group(&group, None).await {
                tracing::debug!(group, %error, "cannot record that the group emptied");
            }
        }
        for (group, saved) in self.groups.unrecorded() {
            let written = self
                .offsets
                .record_broker_group(&group, saved.as_ref())
                .await;
            if let Err(error) = written {
                tracing::debug!(group, %error, "cannot record the group's state yet");
                self.groups.record_failed(&group);
            }
        }
    }

    /// A classic group as DescribeGroups shows it (`None`: no such classic group).
    ///
    /// # Errors
    /// `Unauthorized` without `Describe` on the group.
    pub fn describe_classic_group(
        &self,
        caller: &Session,
        group_id: &str,
    ) -> Result<Option<ClassicSummary>, GroupError> {
        self.check_group(caller, Operation::Describe, group_id)?;
        Ok(self.groups.classic().describe(group_id))
    }
}

/// The longest a follower waits for its leader's assignment.
const CLASSIC_SYNC_WAIT_MAX: Duration = Duration::from_secs(60);

async fn wait_classic<T>(
    receiver: tokio::sync::oneshot::Receiver<Result<T, GroupError>>,
    limit: Duration,
    group_id: &str,
) -> Result<T, GroupError> {
    match tokio::time::timeout(limit, receiver).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) | Err(_) => Err(GroupError::RebalanceInProgress(format!(
            "group {group_id:?} did not complete its rebalance in time; rejoin"
        ))),
    }
}

impl Broker {
    /// Plans new committed offsets of `group_id` on every partition of `topic` by
    /// [`plan_offset`], and with [`Execution::Execute`] commits them durably in one batch.
    /// Like Kafka's tool it needs the group to have no members, even for a dry run: a
    /// running consumer would overwrite the reset with its next commit.
    ///
    /// A member that joins after the check and commits before the reset is stored is
    /// overwritten by the reset (the later record wins); it then reads from where it had
    /// committed until its next fetch of committed offsets.
    ///
    /// # Errors
    /// `InvalidGroupId`, `NotEmpty`, an unknown topic, a partition whose bounds cannot be
    /// read, or the storage error of the commit (nothing visible then).
    pub async fn reset_offsets(
        &self,
        caller: &Session,
        group_id: &str,
        topic: &str,
        target: ResetTarget,
        execution: Execution,
    ) -> Result<Vec<PlannedOffset>, GroupAdminError> {
        self.check_group(caller, Operation::Read, group_id)?;
        self.check(caller, Operation::Read, ResourceType::Topic, topic)
            .map_err(StreamError::from)?;
        self.groups.check_empty(group_id)?;
        let partitions = self
            .streams
            .partition_count(topic)
            .filter(|_| !topic.starts_with(INTERNAL_TOPIC_PREFIX))
            .ok_or_else(|| StreamError::UnknownTopic(topic.to_string()))?;
        let mut plan = Vec::new();
        for partition in 0..partitions {
            // Another node's partition: its bounds are there, not in this node's copy.
            self.check_leader(topic, partition)?;
            let bound = |spec| self.streams.list_offset(topic, partition, spec);
            let bounds = PartitionBounds {
                log_start: bound(OffsetSpec::Earliest)?.unwrap_or(0),
                log_end: bound(OffsetSpec::Latest)?.unwrap_or(0),
                at_timestamp: match target {
                    ResetTarget::Timestamp(timestamp_ms) => {
                        bound(OffsetSpec::Timestamp(timestamp_ms))?
                    }
                    _ => None,
                },
            };
            plan.push(PlannedOffset {
                partition,
                current_offset: self
                    .offsets
                    .get(group_id, topic, partition)
                    .map(|committed| committed.offset),
                new_offset: plan_offset(target, bounds),
            });
        }
        if execution == Execution::Execute {
            let entries = plan
                .iter()
                .map(|planned| {
                    let committed = Committed {
                        offset: planned.new_offset,
                        metadata: None,
                    };
                    (topic.to_string(), planned.partition, committed)
                })
                .collect();
            self.offsets.commit(group_id, entries).await?;
            tracing::info!(group = group_id, topic, ?target, "committed offsets reset");
        }
        Ok(plan)
    }

    /// Deletes a group's committed offsets of some partitions durably (Kafka's OffsetDelete);
    /// returns how many existed. Refused while the group has members: Wharf cannot tell
    /// which topics a Kafka consumer group is subscribed to without reading its assignors'
    /// bytes, so it keeps every offset of an active group.
    ///
    /// # Errors
    /// `InvalidGroupId`, `NotEmpty` while it has members, `GroupNotFound` when it has no
    /// committed offsets, or the storage error of the tombstones (nothing deleted then).
    pub async fn delete_offsets(
        &self,
        caller: &Session,
        group_id: &str,
        partitions: &[(String, u32)],
    ) -> Result<usize, GroupAdminError> {
        self.check_group(caller, Operation::Delete, group_id)?;
        for (topic, _) in partitions {
            self.check(caller, Operation::Read, ResourceType::Topic, topic)
                .map_err(StreamError::from)?;
        }
        self.groups.check_empty(group_id)?;
        if self.offsets.group(group_id).is_empty() {
            return Err(GroupError::GroupNotFound(group_id.to_string()).into());
        }
        Ok(self.offsets.delete_partitions(group_id, partitions).await?)
    }

    /// Deletes a group's committed offsets durably (Kafka's DeleteGroups). Returns how many
    /// partitions' offsets were deleted.
    ///
    /// # Errors
    /// `InvalidGroupId`, `NotEmpty` while it has members, `GroupNotFound` when it has no
    /// committed offsets, or the storage error of the tombstones (nothing deleted then).
    pub async fn delete_group(
        &self,
        caller: &Session,
        group_id: &str,
    ) -> Result<usize, GroupAdminError> {
        self.check_group(caller, Operation::Delete, group_id)?;
        self.groups.check_empty(group_id)?;
        let deleted = self.offsets.delete_group(group_id).await?;
        if deleted == 0 {
            return Err(GroupError::GroupNotFound(group_id.to_string()).into());
        }
        self.groups.forget_rebalances(group_id);
        tracing::info!(group = group_id, partitions = deleted, "group deleted");
        Ok(deleted)
    }
}
