//! The consumer group coordinator, with broker-side assignment (Kafka's newer design): members
//! heartbeat with their subscriptions, the broker computes every member's partitions and bumps
//! the group's generation whenever the assignment changes. Commits from a stale generation or
//! an unknown member are rejected (zombie fencing).
//!
//! State is in memory; the coordinator records each group in the coordinators' log when
//! its generation moves ([`SavedBrokerGroup`], [`classic::SavedGroup`]), and the next
//! coordinator (or the broker after a restart) restores it, so members go on there;
//! committed offsets are durable in [`offsets`]; [`commit`] holds the one rule that decides
//! whether an offset commit (plain or transactional) is accepted.
//!
//! **Layer rule:** this module speaks domain types only (no wire messages, no wire error
//! codes); front ends translate.

pub mod assignor;
pub mod classic;
pub mod commit;
pub mod offsets;
pub mod reset;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::storage::Clock;
use assignor::{assign, Assignor, MemberInput};

pub use assignor::MemberAssignment;

/// Most members one group may have: each member costs memory and assignment work.
pub const GROUP_MEMBERS_MAX: usize = 1000;
/// Longest group id: ids are map keys held in memory for as long as the group lives.
pub const GROUP_ID_BYTES_MAX: usize = 255;
/// Most groups with members at once.
pub const GROUPS_MAX: usize = 100_000;
/// Shortest session timeout a member may ask for: shorter ones expire on scheduling noise.
pub const SESSION_TIMEOUT_MS_MIN: u32 = 100;
/// Heartbeats a member sends per session timeout (Kafka's ratio): two may be lost before it
/// expires.
pub const HEARTBEATS_PER_SESSION: u32 = 3;
/// Shortest heartbeat interval handed out, so members never heartbeat in a busy loop.
pub const HEARTBEAT_INTERVAL_MS_MIN: u32 = 50;
/// Characters of the client id kept in a member id (readable, bounded).
pub const MEMBER_ID_PREFIX_CHARS_MAX: usize = 64;
/// Longest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MS_MAX: u32 = 30 * 60 * 1000;

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout_ms: u32,
    last_heartbeat_ms: i64,
    /// What the member is told it owns.
    assignment: MemberAssignment,
    /// The newest generation whose assignment the member says it has applied (the
    /// `generation` of its heartbeat): it stopped reading what that assignment took away and
    /// committed it.
    applied_generation: i32,
    /// Partitions taken from the member that it has not yet released: (topic, partition) →
    /// (the generation that took it away, when, in ms). No one else gets them until the
    /// member applies that generation, or leaves, or is fenced for not doing so within its
    /// session timeout.
    releasing: BTreeMap<(String, u32), (i32, i64)>,
}

#[derive(Debug, Default)]
struct Group {
    generation: i32,
    assignor: Assignor,
    members: BTreeMap<String, Member>,
}

/// Why a group operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The group id is empty or too long.
    #[error("{0}")]
    InvalidGroupId(String),
    /// The request is malformed or over a limit.
    #[error("{0}")]
    InvalidRequest(String),
    /// The member is not (or no longer) in the group.
    #[error("{0}")]
    UnknownMember(String),
    /// The member's generation is not the group's current one.
    #[error("{0}")]
    IllegalGeneration(String),
    /// No such group.
    #[error("group {0:?} does not exist")]
    GroupNotFound(String),
    /// The group rebalances: the member must rejoin (classic protocol).
    #[error("{0}")]
    RebalanceInProgress(String),
    /// The join's protocol type or assignment protocols do not fit the group, or the group
    /// is in use by the other group protocol.
    #[error("{0}")]
    InconsistentProtocol(String),
    /// The session timeout asked for is out of bounds.
    #[error("{0}")]
    InvalidSessionTimeout(String),
    /// The operation needs a group without members (Kafka: the group must be inactive).
    #[error("group {group:?} has {members} active member(s); stop its consumers first")]
    NotEmpty { group: String, members: usize },
    /// The caller may not do this (ACLs, issue #18).
    #[error(transparent)]
    Unauthorized(#[from] crate::acl::Denied),
    /// Another node of the cluster coordinates groups (issue #20): ask the metadata again.
    #[error("this node does not coordinate consumer groups ({})", coordinator_named(*.coordinator))]
    NotCoordinator { coordinator: Option<u64> },
}

/// Which node coordinates, as a refusal names it.
pub(crate) fn coordinator_named(coordinator: Option<u64>) -> String {
    match coordinator {
        Some(node) => format!("node {node} does"),
        None => "no node does right now; try again".to_string(),
    }
}

/// One join or heartbeat of a member.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// The group.
    pub group_id: String,
    /// Empty to join.
    pub member_id: String,
    /// The newest generation whose assignment the member has applied (0 when joining):
    /// partitions that generation took away are released.
    pub generation: i32,
    /// The client's id (kept readable in the member id).
    pub client_id: String,
    /// 0 for the broker's default.
    pub session_timeout_ms: u32,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// `range`, `roundrobin`, `sticky` or empty for the default.
    pub assignor: String,
    /// What the member owns, for members that report it (Kafka's KIP-848 consumers send
    /// their owned partitions instead of an applied generation): partitions it was asked to
    /// release and no longer lists are released. `None`: not reported (the generation
    /// decides).
    pub owned: Option<MemberAssignment>,
    /// The member chose its own id (KIP-848 v1 consumers): a heartbeat naming an id the
    /// group does not know joins with it instead of being refused.
    pub joins_with_own_id: bool,
}

/// What a heartbeat tells the member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// The member's id (new on a join).
    pub member_id: String,
    /// The group's generation.
    pub generation: i32,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u32,
    /// The member's partitions.
    pub assignment: MemberAssignment,
}

/// One member as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    /// Its id.
    pub member_id: String,
    /// Its client id.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Its partitions.
    pub assignment: MemberAssignment,
}

/// A group as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Its id.
    pub group_id: String,
    /// Whether it has members.
    pub state: GroupState,
    /// Current generation.
    pub generation: i32,
    /// The assignor's name.
    pub assignor: &'static str,
    /// Its members.
    pub members: Vec<MemberSummary>,
    /// Set when the caller may not describe the group (the rest is then empty).
    pub denied: Option<crate::acl::Denied>,
}

/// Where a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (it may still have committed offsets).
    Empty,
    /// Members with a settled assignment.
    Stable,
}

impl GroupState {
    /// The lowercase name (`empty`, `stable`).
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "empty",
            GroupState::Stable => "stable",
        }
    }
}

/// A group in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// Its id.
    pub group_id: String,
    /// Whether it has members.
    pub state: GroupState,
    /// How many members it has.
    pub member_count: u32,
}

/// The layout of [`SavedBrokerGroup`] this build writes and restores.
pub const SAVED_BROKER_GROUP_VERSION: u8 = 1;

/// A group of the broker-side protocol (Wharf's own, KIP-848's) as its coordinator
/// records it in the coordinators' log when its generation changed, so that the next
/// coordinator goes on with it (issue #21; the classic protocol's is
/// [`classic::SavedGroup`]). JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBrokerGroup {
    /// The layout's version ([`SAVED_BROKER_GROUP_VERSION`]).
    pub version: u8,
    /// The generation.
    pub generation: i32,
    /// The assignor's name.
    pub assignor: String,
    /// The members.
    pub members: Vec<SavedBrokerMember>,
}

/// One member of a [`SavedBrokerGroup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBrokerMember {
    /// Its id.
    pub member_id: String,
    /// Its client id.
    pub client_id: String,
    /// Its subscribed topics.
    pub topics: Vec<String>,
    /// Its session timeout, ms.
    pub session_timeout_ms: u32,
    /// Its partitions.
    pub assignment: MemberAssignment,
    /// The newest generation it applied.
    pub applied_generation: i32,
    /// Partitions it has yet to release: (topic, partition, the generation that took it).
    pub releasing: Vec<(String, u32, i32)>,
}

/// The coordinator of all groups.
#[derive(Debug)]
pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    /// Groups of Kafka's classic protocol (client-side assignment); a group id is in use by
    /// one protocol at a time.
    classic: classic::ClassicGroups,
    clock: Arc<dyn Clock>,
    default_session_timeout_ms: u32,
    next_member: AtomicU64,
    /// Broker-side groups whose generation moved (or that went) since
    /// [`GroupCoordinator::unrecorded`] last took them. Taken after `groups`.
    unrecorded: Mutex<BTreeSet<String>>,
    /// Rebalances (generation bumps) per broker-side group since start, kept after the
    /// group empties (it is then removed) so the metric stays a counter; at most
    /// [`REBALANCE_GROUPS_MAX`] groups. Taken after `groups` when both are held.
    rebalances: Mutex<HashMap<String, u64>>,
}

/// Most broker-side groups whose rebalances are counted (a group id first seen after the
/// table is full is not counted): bounds the table, and the `group` label of
/// `wharf_group_rebalances_total`, whatever group ids clients make up.
pub const REBALANCE_GROUPS_MAX: usize = 10_000;

impl GroupCoordinator {
    /// A coordinator with no groups.
    pub fn new(clock: Arc<dyn Clock>, default_session_timeout_ms: u32) -> Self {
        GroupCoordinator {
            groups: Mutex::new(HashMap::new()),
            classic: classic::ClassicGroups::new(clock.clone()),
            clock,
            default_session_timeout_ms,
            next_member: AtomicU64::new(1),
            unrecorded: Mutex::default(),
            rebalances: Mutex::new(HashMap::new()),
        }
    }

    /// The broker-side groups whose generation moved since this was last called, each as
    /// it is now (`None`: it emptied and went, a tombstone), for the coordinators' log;
    /// [`GroupCoordinator::record_failed`] puts back one whose write failed.
    pub fn unrecorded(&self) -> Vec<(String, Option<SavedBrokerGroup>)> {
        let groups = self.lock();
        let changed = std::mem::take(
            &mut *self
                .unrecorded
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        changed
            .into_iter()
            .map(|group_id| {
                let saved = groups.get(&group_id).map(saved_broker_group);
                (group_id, saved)
            })
            .collect()
    }

    /// Puts `group_id` back among the groups to record (its write failed).
    pub fn record_failed(&self, group_id: &str) {
        self.unrecorded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(group_id.to_string());
    }

    /// Takes the broker-side groups a previous coordinator recorded at their generations,
    /// each member's session starting now; one this coordinator holds already, of
    /// another layout, or beyond [`GROUPS_MAX`], is skipped.
    pub fn restore(&self, saved: Vec<(String, SavedBrokerGroup)>) {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        for (group_id, group) in saved {
            if groups.len() >= GROUPS_MAX
                || groups.contains_key(&group_id)
                || group.version != SAVED_BROKER_GROUP_VERSION
                || group.members.is_empty()
            {
                continue;
            }
            let Some(assignor) = Assignor::parse(&group.assignor) else {
                continue;
            };
            let members = group
                .members
                .into_iter()
                .take(GROUP_MEMBERS_MAX)
                .map(|member| {
                    let releasing = member
                        .releasing
                        .into_iter()
                        .map(|(topic, partition, taken_in)| ((topic, partition), (taken_in, now)))
                        .collect();
                    (
                        member.member_id,
                        Member {
                            client_id: member.client_id,
                            topics: member.topics.into_iter().collect(),
                            session_timeout_ms: member.session_timeout_ms,
                            last_heartbeat_ms: now,
                            assignment: member.assignment,
                            applied_generation: member.applied_generation,
                            releasing,
                        },
                    )
                })
                .collect();
            groups.insert(
                group_id,
                Group {
                    generation: group.generation,
                    assignor,
                    members,
                },
            );
        }
    }

    /// Forgets every group's members of both protocols (this node stopped coordinating,
    /// issue #21: the new coordinator restores them from the coordinators' log, and this
    /// node holds no stale generation if coordination returns here).
    pub fn forget_all(&self) {
        self.groups
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clear();
        self.unrecorded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clear();
        self.classic.forget_all();
    }

    /// Rebalances (generation bumps) of `group_id` since start, of either protocol.
    pub fn rebalances(&self, group_id: &str) -> u64 {
        let broker_side = self
            .rebalances
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(group_id)
            .copied()
            .unwrap_or(0);
        broker_side + self.classic.rebalances(group_id)
    }

    /// Forgets the rebalance count of a deleted group.
    pub fn forget_rebalances(&self, group_id: &str) {
        self.rebalances
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(group_id);
    }

    /// Counts one generation bump of the broker-side group `group_id` (and notes it for
    /// the coordinators' log, [`GroupCoordinator::unrecorded`]).
    fn count_rebalance(&self, group_id: &str) {
        self.unrecorded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(group_id.to_string());
        let mut rebalances = self
            .rebalances
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = rebalances.get_mut(group_id) {
            *count += 1;
        } else if rebalances.len() < REBALANCE_GROUPS_MAX {
            rebalances.insert(group_id.to_string(), 1);
        }
    }

    /// The groups of Kafka's classic protocol.
    pub fn classic(&self) -> &classic::ClassicGroups {
        &self.classic
    }

    /// A classic-protocol join, refused while the group has members of the broker-side
    /// protocol (the two never mix members).
    pub fn classic_join(&self, request: classic::ClassicJoin) -> classic::JoinWait {
        let in_use = self
            .lock()
            .get(&request.group_id)
            .is_some_and(|group| !group.members.is_empty());
        if in_use {
            return classic::JoinWait::Refused(GroupError::InconsistentProtocol(format!(
                "group {:?} is in use by consumers of Wharf's own group protocol; use another group id",
                request.group_id
            )));
        }
        self.classic.join(request)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Handles a join or heartbeat; `partition_count` gives a topic's partitions (None if it
    /// does not exist).
    ///
    /// # Errors
    /// `InvalidGroupId` (empty or too long), `InvalidRequest` (unknown assignor, too many
    /// groups or members), `UnknownMember` (left or timed out: rejoin).
    pub fn heartbeat(
        &self,
        request: &Heartbeat,
        partition_count: impl Fn(&str) -> Option<u32>,
    ) -> Result<MemberState, GroupError> {
        if request.group_id.is_empty() {
            return Err(GroupError::InvalidGroupId("group id is empty".to_string()));
        }
        let Some(requested_assignor) = Assignor::parse(&request.assignor) else {
            return Err(GroupError::InvalidRequest(format!(
                "unknown assignor {:?}: use range, roundrobin or sticky",
                request.assignor
            )));
        };
        if request.group_id.len() > GROUP_ID_BYTES_MAX {
            return Err(GroupError::InvalidGroupId(format!(
                "group id of {} bytes exceeds max {GROUP_ID_BYTES_MAX}",
                request.group_id.len()
            )));
        }
        if self.classic.has_members(&request.group_id) {
            return Err(GroupError::InconsistentProtocol(format!(
                "group {:?} is in use by Kafka consumers (classic group protocol); use another group id",
                request.group_id
            )));
        }
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        // Only a join creates a group: heartbeats of unknown members must not grow the map.
        if !groups.contains_key(&request.group_id) {
            if !request.member_id.is_empty() && !request.joins_with_own_id {
                return Err(GroupError::UnknownMember(format!(
                    "member {} is not in group {} (it left or timed out); rejoin",
                    request.member_id, request.group_id
                )));
            }
            if groups.len() >= GROUPS_MAX {
                return Err(GroupError::InvalidRequest(format!(
                    "the broker already has {GROUPS_MAX} groups"
                )));
            }
        }
        let group = groups.entry(request.group_id.clone()).or_default();
        let mut changed = expire(group, now);
        let joins = request.member_id.is_empty()
            || (request.joins_with_own_id && !group.members.contains_key(&request.member_id));
        let member_id = if joins {
            if request.member_id.len() > GROUP_ID_BYTES_MAX {
                return Err(GroupError::InvalidRequest(format!(
                    "member id of {} bytes exceeds max {GROUP_ID_BYTES_MAX}",
                    request.member_id.len()
                )));
            }
            if group.members.len() >= GROUP_MEMBERS_MAX {
                return Err(GroupError::InvalidRequest(format!(
                    "group {} already has {GROUP_MEMBERS_MAX} members",
                    request.group_id
                )));
            }
            let member_id = if request.member_id.is_empty() {
                let sequence = self.next_member.fetch_add(1, Ordering::Relaxed);
                format!(
                    "{}-{sequence}-{}",
                    sanitize(&request.client_id),
                    short_random()
                )
            } else {
                request.member_id.clone()
            };
            if group.members.is_empty() {
                group.assignor = requested_assignor;
            }
            group.members.insert(
                member_id.clone(),
                Member {
                    client_id: request.client_id.clone(),
                    topics: BTreeSet::new(),
                    session_timeout_ms: 0,
                    last_heartbeat_ms: now,
                    assignment: MemberAssignment::new(),
                    applied_generation: 0,
                    releasing: BTreeMap::new(),
                },
            );
            changed = true;
            member_id
        } else {
            request.member_id.clone()
        };
        let Some(member) = group.members.get_mut(&member_id) else {
            return Err(GroupError::UnknownMember(format!(
                "member {member_id} is not in group {} (it left or timed out); rejoin",
                request.group_id
            )));
        };
        member.last_heartbeat_ms = now;
        // A member may have applied a generation its group does not know (a coordinator
        // that restored the group recorded one rebalance before it): capped, so what the
        // next generation takes away is still released.
        let applied = request.generation.min(group.generation);
        if member.applied_generation != applied {
            member.applied_generation = applied;
            // Partitions it released since free up: the rebalance below hands them on.
            member
                .releasing
                .retain(|_, (taken_in, _)| *taken_in > applied);
        }
        if let Some(owned) = &request.owned {
            // Released for real: no longer in what the member says it owns.
            member.releasing.retain(|(topic, partition), _| {
                owned
                    .get(topic)
                    .is_some_and(|partitions| partitions.contains(partition))
            });
        }
        member.session_timeout_ms = match request.session_timeout_ms {
            0 => self.default_session_timeout_ms,
            asked => asked.clamp(SESSION_TIMEOUT_MS_MIN, SESSION_TIMEOUT_MS_MAX),
        };
        let topics: BTreeSet<String> = request.topics.iter().cloned().collect();
        if member.topics != topics {
            member.topics = topics;
            changed = true;
        }
        // Recompute on every heartbeat: topics may have been created or grown since.
        if rebalance(group, &partition_count, now) || changed {
            group.generation += 1;
            self.count_rebalance(&request.group_id);
            tracing::info!(
                group = request.group_id,
                generation = group.generation,
                members = group.members.len(),
                "group rebalanced"
            );
        }
        let member = &group.members[&member_id];
        Ok(MemberState {
            member_id,
            generation: group.generation,
            heartbeat_interval_ms: (member.session_timeout_ms / HEARTBEATS_PER_SESSION)
                .max(HEARTBEAT_INTERVAL_MS_MIN),
            assignment: member.assignment.clone(),
        })
    }

    /// Removes a member at once.
    ///
    /// # Errors
    /// `GroupNotFound`, `UnknownMember`.
    pub fn leave(
        &self,
        group_id: &str,
        member_id: &str,
        partition_count: impl Fn(&str) -> Option<u32>,
    ) -> Result<(), GroupError> {
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(GroupError::GroupNotFound(group_id.to_string()));
        };
        if group.members.remove(member_id).is_none() {
            return Err(GroupError::UnknownMember(format!(
                "member {member_id} is not in group {group_id}"
            )));
        }
        rebalance(group, &partition_count, self.clock.now_ms());
        group.generation += 1;
        self.count_rebalance(group_id);
        tracing::info!(
            group = group_id,
            member = member_id,
            generation = group.generation,
            "member left"
        );
        if group.members.is_empty() {
            groups.remove(group_id);
        }
        Ok(())
    }

    /// Removes members whose session expired, in every group; returns how many.
    pub fn expire_sessions(&self, partition_count: impl Fn(&str) -> Option<u32>) -> usize {
        let now = self.clock.now_ms();
        let mut removed = 0;
        let mut groups = self.lock();
        for (group_id, group) in groups.iter_mut() {
            let before = group.members.len();
            if expire(group, now) {
                removed += before - group.members.len();
                rebalance(group, &partition_count, now);
                group.generation += 1;
                self.count_rebalance(group_id);
                tracing::info!(
                    group = group_id,
                    generation = group.generation,
                    "members timed out"
                );
            }
        }
        groups.retain(|_, group| !group.members.is_empty());
        drop(groups);
        removed + self.classic.expire()
    }

    /// Checks whether `member_id` at `generation` may commit offsets for `group_id`. A
    /// standalone consumer (empty member id, generation -1) may commit while the group has no
    /// members.
    ///
    /// # Errors
    /// `InvalidGroupId` for an empty id; `UnknownMember` for a member not in the group (or a
    /// standalone commit while it has members); `IllegalGeneration` for a stale generation.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId("group id is empty".to_string()));
        }
        if self.classic.has_members(group_id) {
            return self.classic.check_commit(group_id, member_id, generation);
        }
        let unknown = || {
            GroupError::UnknownMember(format!(
                "commit refused for group {group_id:?}: member {member_id:?} is not in the group"
            ))
        };
        let illegal = || {
            GroupError::IllegalGeneration(format!(
                "commit refused for group {group_id:?}: generation {generation} is not the current one"
            ))
        };
        let groups = self.lock();
        let group = groups.get(group_id);
        let has_members = group.is_some_and(|group| !group.members.is_empty());
        if member_id.is_empty() {
            return if generation < 0 && !has_members {
                Ok(())
            } else if has_members {
                Err(unknown())
            } else {
                Err(illegal())
            };
        }
        let Some(group) = group else {
            return Err(unknown());
        };
        if !group.members.contains_key(member_id) {
            return Err(unknown());
        }
        if generation != group.generation {
            return Err(illegal());
        }
        Ok(())
    }

    /// Checks that `group_id` has no members, as resetting or deleting its offsets needs.
    ///
    /// # Errors
    /// `InvalidGroupId` for an empty id, `NotEmpty` while it has members.
    pub fn check_empty(&self, group_id: &str) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId("group id is empty".to_string()));
        }
        let members = self
            .lock()
            .get(group_id)
            .map_or(0, |group| group.members.len())
            + self.classic.member_count(group_id);
        if members > 0 {
            return Err(GroupError::NotEmpty {
                group: group_id.to_string(),
                members,
            });
        }
        Ok(())
    }

    /// Describes a group (an unknown group is described as empty).
    pub fn describe(&self, group_id: &str) -> GroupSummary {
        let groups = self.lock();
        let Some(group) = groups.get(group_id) else {
            return GroupSummary {
                group_id: group_id.to_string(),
                state: GroupState::Empty,
                generation: 0,
                assignor: Assignor::default().name(),
                members: Vec::new(),
                denied: None,
            };
        };
        GroupSummary {
            group_id: group_id.to_string(),
            state: state_of(group),
            generation: group.generation,
            assignor: group.assignor.name(),
            members: group
                .members
                .iter()
                .map(|(member_id, member)| MemberSummary {
                    member_id: member_id.clone(),
                    client_id: member.client_id.clone(),
                    topics: member.topics.iter().cloned().collect(),
                    assignment: member.assignment.clone(),
                })
                .collect(),
            denied: None,
        }
    }

    /// Every group with members (of either protocol).
    pub fn list(&self) -> Vec<GroupListing> {
        let classic = self.classic.list();
        let groups = self.lock();
        let mut listing: Vec<GroupListing> = groups
            .iter()
            .map(|(group_id, group)| GroupListing {
                group_id: group_id.clone(),
                state: state_of(group),
                member_count: u32::try_from(group.members.len()).unwrap_or(u32::MAX),
            })
            .collect();
        listing.extend(
            classic
                .into_iter()
                .map(|(group_id, _, member_count)| GroupListing {
                    group_id,
                    state: GroupState::Stable,
                    member_count,
                }),
        );
        listing.sort_by(|left, right| left.group_id.cmp(&right.group_id));
        listing
    }
}

fn state_of(group: &Group) -> GroupState {
    if group.members.is_empty() {
        GroupState::Empty
    } else {
        GroupState::Stable
    }
}

/// Drops members whose session expired, or that held on to a partition taken from them for
/// longer than their session timeout (fenced: a consumer that stopped polling); true if any
/// was dropped.
fn expire(group: &mut Group, now_ms: i64) -> bool {
    let before = group.members.len();
    group.members.retain(|member_id, member| {
        let timeout_ms = i64::from(member.session_timeout_ms.max(1));
        let alive = now_ms - member.last_heartbeat_ms <= timeout_ms;
        let stuck = member
            .releasing
            .values()
            .any(|(_, taken_ms)| now_ms - taken_ms > timeout_ms);
        if alive && stuck {
            tracing::warn!(
                member = member_id,
                "member did not release revoked partitions within its session timeout; fenced"
            );
        }
        alive && !stuck
    });
    before != group.members.len()
}

/// Recomputes the assignment as a two-step handover (revoke first, as KIP-848 does): every
/// member loses at once what its target assignment no longer holds, but keeps it as
/// *releasing* until it applies the generation that took it away; a partition is given to
/// its new target owner only once no other member owns or is releasing it. True if any
/// member's assignment changed (the caller then bumps the generation, which is the one the
/// revocations are announced in).
fn rebalance(
    group: &mut Group,
    partition_count: &impl Fn(&str) -> Option<u32>,
    now_ms: i64,
) -> bool {
    let targets = target_assignments(group, partition_count);
    let announced_in = group.generation + 1;
    let mut changed = false;
    // Step 1: revoke what moves away (kept as releasing).
    for (member_id, member) in group.members.iter_mut() {
        let target = targets.get(member_id).cloned().unwrap_or_default();
        for (topic, partitions) in std::mem::take(&mut member.assignment) {
            let kept: Vec<u32> = partitions
                .into_iter()
                .filter(|partition| {
                    let stays = target
                        .get(&topic)
                        .is_some_and(|wanted| wanted.contains(partition));
                    if !stays {
                        member
                            .releasing
                            .insert((topic.clone(), *partition), (announced_in, now_ms));
                        changed = true;
                    }
                    stays
                })
                .collect();
            if !kept.is_empty() {
                member.assignment.insert(topic, kept);
            }
        }
    }
    // Step 2: assign what nobody owns or is releasing (or what the member itself was
    // releasing and gets back).
    let mut held: BTreeSet<(String, u32)> = BTreeSet::new();
    for member in group.members.values() {
        for (topic, partitions) in &member.assignment {
            held.extend(
                partitions
                    .iter()
                    .map(|partition| (topic.clone(), *partition)),
            );
        }
        held.extend(member.releasing.keys().cloned());
    }
    for (member_id, member) in group.members.iter_mut() {
        let Some(target) = targets.get(member_id) else {
            continue;
        };
        for (topic, partitions) in target {
            for partition in partitions {
                let key = (topic.clone(), *partition);
                let owned = member
                    .assignment
                    .get(topic)
                    .is_some_and(|owned| owned.contains(partition));
                if owned {
                    continue;
                }
                let back = member.releasing.remove(&key).is_some();
                if back || !held.contains(&key) {
                    let owned = member.assignment.entry(topic.clone()).or_default();
                    owned.push(*partition);
                    owned.sort_unstable();
                    held.insert(key);
                    changed = true;
                }
            }
        }
    }
    changed
}

/// What the assignor would give each member now.
fn target_assignments(
    group: &Group,
    partition_count: &impl Fn(&str) -> Option<u32>,
) -> BTreeMap<String, MemberAssignment> {
    let subscribed: BTreeSet<&String> = group
        .members
        .values()
        .flat_map(|member| member.topics.iter())
        .collect();
    let counts: BTreeMap<String, u32> = subscribed
        .into_iter()
        .filter_map(|topic| partition_count(topic).map(|count| (topic.clone(), count)))
        .collect();
    let inputs: BTreeMap<String, MemberInput> = group
        .members
        .iter()
        .map(|(member_id, member)| {
            (
                member_id.clone(),
                MemberInput {
                    topics: member.topics.clone(),
                    previous: member.assignment.clone(),
                },
            )
        })
        .collect();
    assign(group.assignor, &inputs, &counts)
}

fn sanitize(client_id: &str) -> String {
    let cleaned: String = client_id
        .chars()
        .filter(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.')
        })
        .take(MEMBER_ID_PREFIX_CHARS_MAX)
        .collect();
    if cleaned.is_empty() {
        "member".to_string()
    } else {
        cleaned
    }
}

fn short_random() -> String {
    let uuid = crate::streams::topic::new_uuid();
    uuid[..4].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `group` as [`GroupCoordinator::unrecorded`] records it.
fn saved_broker_group(group: &Group) -> SavedBrokerGroup {
    SavedBrokerGroup {
        version: SAVED_BROKER_GROUP_VERSION,
        generation: group.generation,
        assignor: group.assignor.name().to_string(),
        members: group
            .members
            .iter()
            .map(|(member_id, member)| SavedBrokerMember {
                member_id: member_id.clone(),
                client_id: member.client_id.clone(),
                topics: member.topics.iter().cloned().collect(),
                session_timeout_ms: member.session_timeout_ms,
                assignment: member.assignment.clone(),
                applied_generation: member.applied_generation,
                releasing: member
                    .releasing
                    .iter()
                    .map(|((topic, partition), (taken_in, _))| {
                        (topic.clone(), *partition, *taken_in)
                    })
                    .collect(),
            })
            .collect(),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ManualClock;

    fn coordinator() -> (GroupCoordinator, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(0));
        (GroupCoordinator::new(clock.clone(), 1_000), clock)
    }

    fn six(topic: &str) -> Option<u32> {
        (topic == "t").then_some(6)
    }

    fn join(coordinator: &GroupCoordinator, client: &str) -> MemberState {
        coordinator
            .heartbeat(
                &Heartbeat {
                    group_id: "g".into(),
                    client_id: client.into(),
                    topics: vec!["t".into()],
                    ..Heartbeat::default()
                },
                six,
            )
            .expect("a join of a valid group succeeds")
    }

    fn try_beat(
        coordinator: &GroupCoordinator,
        member: &MemberState,
    ) -> Result<MemberState, GroupError> {
        beat_applying(coordinator, member, member.generation)
    }

    /// A heartbeat that says the member applied the assignment of `applied_generation`.
    fn beat_applying(
        coordinator: &GroupCoordinator,
        member: &MemberState,
        applied_generation: i32,
    ) -> Result<MemberState, GroupError> {
        coordinator.heartbeat(
            &Heartbeat {
                group_id: "g".into(),
                member_id: member.member_id.clone(),
                generation: applied_generation,
                topics: vec!["t".into()],
                ..Heartbeat::default()
            },
            six,
        )
    }

    /// Heartbeats every member, each applying what it was last told, until nothing moves.
    fn settle(coordinator: &GroupCoordinator, members: Vec<MemberState>) -> Vec<MemberState> {
        let mut members = members;
        for _ in 0..10 {
            let next: Vec<MemberState> = members
                .iter()
                .map(|member| beat(coordinator, member))
                .collect();
            if next == members {
                return next;
            }
            members = next;
        }
        members
    }

    fn beat(coordinator: &GroupCoordinator, member: &MemberState) -> MemberState {
        try_beat(coordinator, member).expect("a member's heartbeat succeeds")
    }

    fn owned(state: &MemberState) -> usize {
        state.assignment.values().map(Vec::len).sum()
    }

    #[test]
    fn a_recorded_group_goes_on_at_another_coordinator_at_its_generation() {
        let (first, clock) = coordinator();
        let members = settle(&first, vec![join(&first, "a"), join(&first, "b")]);
        let generation = members[0].generation;
        // The sweep records it once per generation, and a tombstone once it went.
        let unrecorded = first.unrecorded();
        assert_eq!(unrecorded.len(), 1);
        let (group, saved) = unrecorded[0].clone();
        let saved = saved.expect("a group with members");
        assert_eq!((group.as_str(), saved.generation), ("g", generation));
        assert!(first.unrecorded().is_empty(), "taken once");
        first.record_failed("g");
        assert_eq!(first.unrecorded().len(), 1, "a failed write is tried again");

        // The next coordinator takes it at that generation: heartbeats keep it there with
        // the same partitions, and sessions start again from the restore.
        let (next, next_clock) = coordinator();
        next_clock.advance_ms(clock.now_ms() + 5_000);
        next.restore(vec![(group, saved)]);
        assert!(next.unrecorded().is_empty(), "recorded as restored");
        assert_eq!(next.expire_sessions(six), 0);
        for member in &members {
            let again = beat(&next, member);
            assert_eq!(again.generation, generation, "no rebalance");
            assert_eq!(again.assignment, member.assignment);
            assert_eq!(
                next.check_commit("g", &member.member_id, generation),
                Ok(())
            );
        }
        // A member leaving there bumps the generation, which is recorded again; the group
        // gone, a tombstone.
        next.leave("g", &members[0].member_id, six).expect("leaves");
        assert_eq!(
            next.unrecorded()[0]
                .1
                .as_ref()
                .map(|saved| saved.generation),
            Some(generation + 1)
        );
        next.leave("g", &members[1].member_id, six).expect("leaves");
        assert_eq!(next.unrecorded(), vec![("g".to_string(), None)]);
        // Gone and made again at generation 1 within one sweep: recorded again, not
        // taken for the same group (generations alone would say nothing changed).
        let again = join(&next, "c");
        assert_eq!(again.generation, 1);
        assert_eq!(
            next.unrecorded()[0]
                .1
                .as_ref()
                .map(|saved| saved.members.len()),
            Some(1)
        );
    }

    #[test]
    fn three_members_split_six_partitions_and_generation_bumps() {
        let (coordinator, _) = coordinator();
        let first = join(&coordinator, "a");
        assert_eq!(owned(&first), 6);
        let second = join(&coordinator, "b");
        let third = join(&coordinator, "c");
        assert!(third.generation > second.generation && second.generation > first.generation);
        let views = settle(&coordinator, vec![first, second, third]);
        assert!(views.iter().all(|view| owned(view) == 2));
        assert!(views
            .iter()
            .all(|view| view.generation == views[0].generation));
    }

    #[test]
    fn rebalances_count_generation_bumps_and_outlive_the_emptied_group() {
        let (coordinator, clock) = coordinator();
        let first = join(&coordinator, "a");
        let second = join(&coordinator, "b");
        assert_eq!(
            coordinator.rebalances("g"),
            u64::try_from(second.generation).unwrap(),
            "every bump so far is a rebalance"
        );
        let before = coordinator.rebalances("g");
        assert_eq!(coordinator.leave("g", &second.member_id, six), Ok(()));
        assert_eq!(coordinator.rebalances("g"), before + 1);
        clock.advance_ms(10_000);
        assert_eq!(coordinator.expire_sessions(six), 1, "{first:?} expires");
        // The group is gone; its count stays until the group is deleted.
        assert_eq!(coordinator.rebalances("g"), before + 2);
        coordinator.forget_rebalances("g");
        assert_eq!(coordinator.rebalances("g"), 0);
    }

    #[test]
    fn leaving_member_partitions_move_to_the_others() {
        let (coordinator, _) = coordinator();
        let first = join(&coordinator, "a");
        let second = join(&coordinator, "b");
        assert_eq!(coordinator.leave("g", &second.member_id, six), Ok(()));
        assert_eq!(owned(&beat(&coordinator, &first)), 6);
    }

    #[test]
    fn expired_member_is_removed_and_fenced() {
        let (coordinator, clock) = coordinator();
        let first = join(&coordinator, "a");
        let second = join(&coordinator, "b");
        clock.advance_ms(800);
        // It applies the generation that took half its partitions away (released).
        let first = beat(&coordinator, &beat(&coordinator, &first));
        clock.advance_ms(800);
        assert_eq!(coordinator.expire_sessions(six), 1);
        let refreshed = beat(&coordinator, &first);
        assert_eq!(owned(&refreshed), 6);
        assert!(matches!(
            try_beat(&coordinator, &second),
            Err(GroupError::UnknownMember(_))
        ));
        assert!(matches!(
            coordinator.check_commit("g", &second.member_id, second.generation),
            Err(GroupError::UnknownMember(_))
        ));
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_released_it() {
        // Goal: no two members ever own one partition (issue #13: a new member read
        // partitions from offset 0 while their old owner was still reading them). Method:
        // B joins a group where A owns everything; B gets nothing until A heartbeats with
        // the generation that took half away.
        let (coordinator, _) = coordinator();
        let first = join(&coordinator, "a");
        let second = join(&coordinator, "b");
        assert_eq!(owned(&second), 0, "everything is still A's");
        let told = beat_applying(&coordinator, &first, first.generation).expect("beat");
        assert_eq!(owned(&told), 3, "A is told to give up half");
        assert_eq!(
            owned(&beat(&coordinator, &second)),
            0,
            "A has not released them yet"
        );
        let released = beat_applying(&coordinator, &told, told.generation).expect("beat");
        assert_eq!(owned(&released), 3);
        let second = beat(&coordinator, &second);
        assert_eq!(owned(&second), 3, "released partitions go to B");
        let mine: BTreeSet<_> = released.assignment["t"].iter().collect();
        assert!(second.assignment["t"]
            .iter()
            .all(|partition| !mine.contains(partition)));
    }

    #[test]
    fn an_owner_that_never_releases_is_fenced_after_its_session_timeout() {
        let (coordinator, clock) = coordinator();
        let first = join(&coordinator, "a");
        let second = join(&coordinator, "b");
        // A keeps heartbeating but never applies a newer generation than its first.
        for _ in 0..3 {
            clock.advance_ms(400);
            let _ = beat_applying(&coordinator, &first, first.generation);
            let _ = beat(&coordinator, &second);
        }
        assert!(matches!(
            beat_applying(&coordinator, &first, first.generation),
            Err(GroupError::UnknownMember(_))
        ));
        let second = settle(&coordinator, vec![second]);
        assert_eq!(
            owned(&second[0]),
            6,
            "the fenced member's partitions moved on"
        );
    }

    #[test]
    fn stale_generation_cannot_commit() {
        let (coordinator, _) = coordinator();
        let first = join(&coordinator, "a");
        let _second = join(&coordinator, "b");
        assert!(matches!(
            coordinator.check_commit("g", &first.member_id, first.generation),
            Err(GroupError::IllegalGeneration(_))
        ));
        let current = beat(&coordinator, &first);
        assert_eq!(
            coordinator.check_commit("g", &first.member_id, current.generation),
            Ok(())
        );
    }

    #[test]
    fn standalone_commit_only_without_members() {
        let (coordinator, _) = coordinator();
        assert_eq!(coordinator.check_commit("g", "", -1), Ok(()));
        join(&coordinator, "a");
        assert!(matches!(
            coordinator.check_commit("g", "", -1),
            Err(GroupError::UnknownMember(_))
        ));
    }

    #[test]
    fn a_member_reporting_what_it_owns_releases_only_what_it_no_longer_lists() {
        // Goal: KIP-848 consumers report owned partitions; the handover waits for them.
        // Method: a member owning all 6 partitions sees a second member join; it keeps
        // reporting the generation it was told (as KIP-848 clients echo their epoch) but
        // lists its old partitions until it drops them: only then does the newcomer get them.
        let (coordinator, _) = coordinator();
        let first = join(&coordinator, "a");
        let first = try_beat(&coordinator, &first).expect("settled");
        let second = join(&coordinator, "b");
        let everything: MemberAssignment = [("t".to_string(), (0..6).collect())].into();
        let beat = |member: &MemberState, owned: &MemberAssignment| {
            coordinator
                .heartbeat(
                    &Heartbeat {
                        group_id: "g".into(),
                        member_id: member.member_id.clone(),
                        generation: i32::MIN,
                        topics: vec!["t".into()],
                        owned: Some(owned.clone()),
                        ..Heartbeat::default()
                    },
                    six,
                )
                .expect("heartbeat")
        };
        let told = beat(&first, &everything);
        let kept = told.assignment.clone();
        assert!(
            kept["t"].len() < 6,
            "the first member is told to give some up"
        );
        let waiting = beat(&second, &MemberAssignment::new());
        assert!(
            waiting.assignment.is_empty(),
            "nothing moves while the first member still owns it all"
        );
        beat(&first, &kept);
        let handed = beat(&second, &MemberAssignment::new());
        assert_eq!(
            handed.assignment["t"].len() + kept["t"].len(),
            6,
            "released partitions reach the newcomer"
        );
    }

    #[test]
    fn empty_group_id_and_bad_assignor_are_errors() {
        let (coordinator, _) = coordinator();
        let response = coordinator.heartbeat(&Heartbeat::default(), six);
        assert!(matches!(response, Err(GroupError::InvalidGroupId(_))));
        let response = coordinator.heartbeat(
            &Heartbeat {
                group_id: "g".into(),
                assignor: "magic".into(),
                ..Heartbeat::default()
            },
            six,
        );
        assert!(matches!(response, Err(GroupError::InvalidRequest(_))));
    }
}
