//! Consumer groups of Kafka's classic protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup),
//! where the *client* assigns: the broker gathers the members at a join barrier, elects a
//! leader, hands it every member's subscription metadata, and passes the leader's assignment
//! back to each member. The broker never reads the protocol's bytes.
//!
//! A group moves Empty → PreparingRebalance (members join; it completes when every known
//! member has rejoined, or when the rebalance timeout passes and the missing ones are
//! dropped) → CompletingRebalance (the generation is bumped; members wait for the leader's
//! SyncGroup) → Stable. Any join, leave or expired session of a stable group starts a new
//! rebalance; members learn of it from their heartbeat (`RebalanceInProgress`) and rejoin.
//! Commits are accepted from a current member with the current generation while the group is
//! Stable or PreparingRebalance (so a member can commit what it processed before it rejoins),
//! as Kafka does.
//!
//! Waiting (a join at the barrier, a follower's sync) is a oneshot the caller awaits; the
//! periodic sweep ([`ClassicGroups::expire`]) ends overdue rebalances and expired sessions.
//! No I/O, no wire types.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::groups::{GroupError, GROUPS_MAX, GROUP_ID_BYTES_MAX, GROUP_MEMBERS_MAX};
use crate::storage::Clock;

/// How long a new group's first rebalance waits for more members before it completes
/// (Kafka's `group.initial.rebalance.delay.ms`, shortened: members that come later cause a
/// rebalance of their own).
pub const INITIAL_REBALANCE_DELAY_MS: i64 = 300;
/// Bounds on the timeouts members ask for.
pub const SESSION_TIMEOUT_MS_MIN: i32 = 100;
/// The longest session or rebalance timeout accepted.
pub const TIMEOUT_MS_MAX: i32 = 30 * 60 * 1000;

/// A join request.
#[derive(Debug, Clone)]
pub struct ClassicJoin {
    /// The group.
    pub group_id: String,
    /// Empty for a new member.
    pub member_id: String,
    /// The client's id.
    pub client_id: String,
    /// Dropped after this long without a heartbeat.
    pub session_timeout_ms: i32,
    /// How long a rebalance waits for this member to rejoin.
    pub rebalance_timeout_ms: i32,
    /// The protocol type (`consumer` for consumers).
    pub protocol_type: String,
    /// The assignment protocols it supports, preferred first, with its metadata for each.
    pub protocols: Vec<(String, Bytes)>,
}

/// What a completed join gives a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The new generation.
    pub generation: i32,
    /// The chosen assignment protocol.
    pub protocol: String,
    /// The protocol type.
    pub protocol_type: String,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// For the leader only: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Bytes)>,
}

/// The outcome of a join: now, or when the barrier completes.
#[derive(Debug)]
pub enum JoinWait {
    /// Refused at once.
    Refused(GroupError),
    /// Completes when the rebalance does (the sender is dropped if the member is removed).
    Waiting(oneshot::Receiver<Result<Joined, GroupError>>),
}

/// The outcome of a sync.
#[derive(Debug)]
pub enum SyncWait {
    /// This member's assignment, now.
    Assigned(Bytes),
    /// Refused.
    Refused(GroupError),
    /// Completes when the leader's assignment arrives.
    Waiting(oneshot::Receiver<Result<Bytes, GroupError>>),
}

/// Where a classic group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicState {
    /// No members.
    Empty,
    /// Members are (re)joining.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Assigned.
    Stable,
}

impl ClassicState {
    /// Kafka's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            ClassicState::Empty => "Empty",
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

/// One member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMemberSummary {
    /// Its id.
    pub member_id: String,
    /// Its client id.
    pub client_id: String,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
    /// Its assignment.
    pub assignment: Bytes,
}

/// A classic group as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicSummary {
    /// Where it is.
    pub state: ClassicState,
    /// Its generation.
    pub generation: i32,
    /// The protocol type.
    pub protocol_type: String,
    /// The chosen protocol.
    pub protocol: String,
    /// Its members.
    pub members: Vec<ClassicMemberSummary>,
}

#[derive(Debug)]
struct Member {
    client_id: String,
    session_timeout_ms: i64,
    rebalance_timeout_ms: i64,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen_ms: i64,
    joining: Option<oneshot::Sender<Result<Joined, GroupError>>>,
    syncing: Option<oneshot::Sender<Result<Bytes, GroupError>>>,
}

#[derive(Debug)]
struct Group {
    state: ClassicState,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    /// When the current rebalance completes whoever has rejoined.
    rebalance_deadline_ms: i64,
    /// Rebalances completed (generation bumps) since start.
    rebalances: u64,
}

/// The layout of [`SavedGroup`] this build writes and restores.
pub const SAVED_GROUP_VERSION: u8 = 1;

/// A stable group as its coordinator records it in the coordinators' log (issue #21), so
/// that the next coordinator goes on with the same generation and members instead of
/// making every member rejoin: what Kafka's group metadata records hold. JSON, the byte
/// fields as base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedGroup {
    /// The layout's version ([`SAVED_GROUP_VERSION`]); a record of another is not
    /// restored (its members rejoin).
    pub version: u8,
    /// The generation whose assignment the members hold.
    pub generation: i32,
    /// The protocol type (`consumer`).
    pub protocol_type: String,
    /// The chosen protocol (the assignor).
    pub protocol: String,
    /// The leader's member id.
    pub leader: String,
    /// The members.
    pub members: Vec<SavedMember>,
}

/// One member of a [`SavedGroup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedMember {
    /// Its id.
    pub member_id: String,
    /// Its client id.
    pub client_id: String,
    /// Its session timeout, ms.
    pub session_timeout_ms: i64,
    /// Its rebalance timeout, ms.
    pub rebalance_timeout_ms: i64,
    /// Its protocols with their metadata, in its order of preference.
    pub protocols: Vec<SavedProtocol>,
    /// What the leader assigned it.
    #[serde(with = "crate::storage::bytes_field")]
    pub assignment: Bytes,
}

/// One protocol of a [`SavedMember`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedProtocol {
    /// Its name.
    pub name: String,
    /// The member's metadata for it.
    #[serde(with = "crate::storage::bytes_field")]
    pub metadata: Bytes,
}

/// Every classic group.
#[derive(Debug)]
pub struct ClassicGroups {
    groups: Mutex<HashMap<String, Group>>,
    clock: Arc<dyn Clock>,
    next_member: AtomicU64,
    /// Groups emptied since [`ClassicGroups::take_emptied`] last looked.
    emptied: Mutex<std::collections::BTreeSet<String>>,
}

impl ClassicGroups {
    /// No groups.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        ClassicGroups {
            groups: Mutex::new(HashMap::new()),
            clock,
            next_member: AtomicU64::new(1),
            emptied: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Forgets every group (this node stopped coordinating: the members rejoin on the new
    /// coordinator; a join waiting here is told to rejoin).
    pub fn forget_all(&self) {
        self.lock().clear();
        self.emptied
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clear();
    }

    /// `group_id` as its coordinator records it, when it is stable at `generation` and
    /// `by` is its leader (the leader's sync of that generation handed out the
    /// assignment); `None` otherwise.
    pub fn saved(&self, group_id: &str, by: &str, generation: i32) -> Option<SavedGroup> {
        let groups = self.lock();
        let group = groups.get(group_id)?;
        if group.state != ClassicState::Stable
            || group.generation != generation
            || group.leader != by
        {
            return None;
        }
        Some(SavedGroup {
            version: SAVED_GROUP_VERSION,
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            leader: group.leader.clone(),
            members: group
                .members
                .iter()
                .map(|(member_id, member)| SavedMember {
                    member_id: member_id.clone(),
                    client_id: member.client_id.clone(),
                    session_timeout_ms: member.session_timeout_ms,
                    rebalance_timeout_ms: member.rebalance_timeout_ms,
                    protocols: member
                        .protocols
                        .iter()
                        .map(|(name, metadata)| SavedProtocol {
                            name: name.clone(),
                            metadata: metadata.clone(),
                        })
                        .collect(),
                    assignment: member.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Takes the groups a previous coordinator recorded ([`SavedGroup`]) as stable groups
    /// at their generation, each member given a whole session from now to heartbeat here;
    /// a group this coordinator already holds, or beyond [`GROUPS_MAX`], is skipped.
    pub fn restore(&self, saved: Vec<(String, SavedGroup)>) {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        for (group_id, group) in saved {
            if groups.len() >= GROUPS_MAX
                || groups.contains_key(&group_id)
                || group.version != SAVED_GROUP_VERSION
            {
                continue;
            }
            let members: BTreeMap<String, Member> = group
                .members
                .into_iter()
                .take(GROUP_MEMBERS_MAX)
                .map(|member| {
                    (
                        member.member_id,
                        Member {
                            client_id: member.client_id,
                            session_timeout_ms: member.session_timeout_ms,
                            rebalance_timeout_ms: member.rebalance_timeout_ms,
                            protocols: member
                                .protocols
                                .into_iter()
                                .map(|protocol| (protocol.name, protocol.metadata))
                                .collect(),
                            assignment: member.assignment,
                            last_seen_ms: now,
                            joining: None,
                            syncing: None,
                        },
                    )
                })
                .collect();
            if members.is_empty() {
                continue;
            }
            groups.insert(
                group_id,
                Group {
                    state: ClassicState::Stable,
                    generation: group.generation,
                    protocol_type: group.protocol_type,
                    protocol: group.protocol,
                    leader: group.leader,
                    members,
                    rebalance_deadline_ms: 0,
                    rebalances: 0,
                },
            );
        }
    }

    /// Whether `group_id` has members of this protocol.
    pub fn has_members(&self, group_id: &str) -> bool {
        self.lock()
            .get(group_id)
            .is_some_and(|group| !group.members.is_empty())
    }

    /// How many members `group_id` has in this protocol.
    pub fn member_count(&self, group_id: &str) -> usize {
        self.lock()
            .get(group_id)
            .map_or(0, |group| group.members.len())
    }

    /// Rebalances (generation bumps) of `group_id` since start; 0 for a group of the other
    /// protocol or none.
    pub fn rebalances(&self, group_id: &str) -> u64 {
        self.lock()
            .get(group_id)
            .map_or(0, |group| group.rebalances)
    }

    /// The unique part of a new member id: random, as Kafka's (a UUID), so that an id a
    /// restored group holds ([`ClassicGroups::restore`], made by another coordinator or
    /// before a restart) is never handed out again; a counter if the system has no
    /// randomness to give.
    fn member_suffix(&self) -> String {
        let mut bytes = [0u8; 16];
        match getrandom::fill(&mut bytes) {
            Ok(()) => uuid::Uuid::from_bytes(bytes).hyphenated().to_string(),
            Err(_) => self.next_member.fetch_add(1, Ordering::Relaxed).to_string(),
        }
    }

    /// The groups whose last member left or expired since the last call: their recorded
    /// state ([`SavedGroup`]) is replaced by a tombstone, so that the next coordinator
    /// carries no members over.
    pub fn take_emptied(&self) -> Vec<String> {
        let emptied = std::mem::take(
            &mut *self
                .emptied
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        let groups = self.lock();
        emptied
            .into_iter()
            .filter(|group_id| {
                groups
                    .get(group_id)
                    .is_none_or(|group| group.members.is_empty())
            })
            .collect()
    }

    fn note_emptied(&self, group_id: &str) {
        self.emptied
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(group_id.to_string());
    }

    /// A member joins (or rejoins); the answer comes when the rebalance completes.
    pub fn join(&self, request: ClassicJoin) -> JoinWait {
        if let Err(error) = check_join(&request) {
            return JoinWait::Refused(error);
        }
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        if !groups.contains_key(&request.group_id) {
            if !request.member_id.is_empty() {
                return JoinWait::Refused(unknown_member(&request.group_id, &request.member_id));
            }
            if groups.len() >= GROUPS_MAX {
                return JoinWait::Refused(GroupError::InvalidRequest(format!(
                    "too many groups (at most {GROUPS_MAX})"
                )));
            }
            groups.insert(
                request.group_id.clone(),
                Group {
                    state: ClassicState::Empty,
                    generation: 0,
                    protocol_type: request.protocol_type.clone(),
                    protocol: String::new(),
                    leader: String::new(),
                    members: BTreeMap::new(),
                    rebalance_deadline_ms: 0,
                    rebalances: 0,
                },
            );
        }
        let Some(group) = groups.get_mut(&request.group_id) else {
            return JoinWait::Refused(GroupError::GroupNotFound(request.group_id));
        };
        if !group.members.is_empty() && group.protocol_type != request.protocol_type {
            return JoinWait::Refused(GroupError::InconsistentProtocol(format!(
                "group {:?} has protocol type {:?}, not {:?}",
                request.group_id, group.protocol_type, request.protocol_type
            )));
        }
        let others_support = |name: &str| {
            group.members.iter().all(|(id, member)| {
                *id == request.member_id || member.protocols.iter().any(|(other, _)| other == name)
            })
        };
        if !request
            .protocols
            .iter()
            .any(|(name, _)| others_support(name))
        {
            return JoinWait::Refused(GroupError::InconsistentProtocol(format!(
                "none of the assignment protocols {:?} is supported by every member of group {:?}",
                request
                    .protocols
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>(),
                request.group_id
            )));
        }
        let member_id = if request.member_id.is_empty() {
            if group.members.len() >= GROUP_MEMBERS_MAX {
                return JoinWait::Refused(GroupError::InvalidRequest(format!(
                    "group {:?} is full ({GROUP_MEMBERS_MAX} members)",
                    request.group_id
                )));
            }
            let prefix: String = request.client_id.chars().take(64).collect();
            format!("{prefix}-{}", self.member_suffix())
        } else if group.members.contains_key(&request.member_id) {
            request.member_id.clone()
        } else {
            return JoinWait::Refused(unknown_member(&request.group_id, &request.member_id));
        };
        let (sender, receiver) = oneshot::channel();
        match group.members.get_mut(&member_id) {
            Some(member) => {
                member.protocols = request.protocols;
                member.session_timeout_ms = i64::from(request.session_timeout_ms);
                member.rebalance_timeout_ms = i64::from(request.rebalance_timeout_ms);
                member.last_seen_ms = now;
                member.joining = Some(sender);
            }
            None => {
                group.members.insert(
                    member_id.clone(),
                    Member {
                        client_id: request.client_id,
                        session_timeout_ms: i64::from(request.session_timeout_ms),
                        rebalance_timeout_ms: i64::from(request.rebalance_timeout_ms),
                        protocols: request.protocols,
                        assignment: Bytes::new(),
                        last_seen_ms: now,
                        joining: Some(sender),
                        syncing: None,
                    },
                );
            }
        }
        group.protocol_type = request.protocol_type;
        // Any join of a group that is not already rebalancing starts a rebalance, even a
        // rejoin with the same protocols: the member asked for one.
        if group.state != ClassicState::PreparingRebalance {
            let initial = group.state == ClassicState::Empty && group.generation == 0;
            start_rebalance(group, now, initial);
        }
        complete_if_ready(group, now);
        JoinWait::Waiting(receiver)
    }

    /// The leader (with assignments) or a follower (without) syncs.
    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncWait {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return SyncWait::Refused(unknown_member(group_id, member_id));
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return SyncWait::Refused(unknown_member(group_id, member_id));
        };
        member.last_seen_ms = now;
        if generation != group.generation {
            return SyncWait::Refused(illegal_generation(group_id, generation));
        }
        match group.state {
            ClassicState::Empty | ClassicState::PreparingRebalance => {
                SyncWait::Refused(rebalancing(group_id))
            }
            ClassicState::Stable => SyncWait::Assigned(member.assignment.clone()),
            ClassicState::CompletingRebalance => {
                let (sender, receiver) = oneshot::channel();
                member.syncing = Some(sender);
                if member_id == group.leader {
                    let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, member) in &mut group.members {
                        member.assignment = by_member.remove(id).unwrap_or_default();
                        if let Some(waiting) = member.syncing.take() {
                            let _ = waiting.send(Ok(member.assignment.clone()));
                        }
                    }
                    group.state = ClassicState::Stable;
                }
                SyncWait::Waiting(receiver)
            }
        }
    }

    /// A member's heartbeat.
    ///
    /// # Errors
    /// `UnknownMember`, `IllegalGeneration`, or `RebalanceInProgress` (rejoin).
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Err(unknown_member(group_id, member_id));
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return Err(unknown_member(group_id, member_id));
        };
        member.last_seen_ms = now;
        match group.state {
            ClassicState::PreparingRebalance => Err(rebalancing(group_id)),
            _ if generation != group.generation => Err(illegal_generation(group_id, generation)),
            ClassicState::CompletingRebalance => Err(rebalancing(group_id)),
            ClassicState::Empty | ClassicState::Stable => Ok(()),
        }
    }

    /// Members leave; each answer in request order.
    pub fn leave(&self, group_id: &str, member_ids: &[String]) -> Vec<Result<(), GroupError>> {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return member_ids
                .iter()
                .map(|member_id| Err(unknown_member(group_id, member_id)))
                .collect();
        };
        let outcomes = member_ids
            .iter()
            .map(|member_id| match group.members.remove(member_id) {
                Some(member) => {
                    drop_member(member, group_id);
                    Ok(())
                }
                None => Err(unknown_member(group_id, member_id)),
            })
            .collect::<Vec<_>>();
        if outcomes.iter().any(Result::is_ok) {
            membership_changed(group, now);
        }
        let emptied = group.members.is_empty() && outcomes.iter().any(Result::is_ok);
        if group.members.is_empty() && group.generation == 0 {
            groups.remove(group_id);
        }
        drop(groups);
        if emptied {
            self.note_emptied(group_id);
        }
        outcomes
    }

    /// Whether a commit by `member_id` at `generation` may store offsets.
    ///
    /// # Errors
    /// `UnknownMember`, `IllegalGeneration`, or `RebalanceInProgress` while the group waits
    /// for its leader's assignment.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        let groups = self.lock();
        let Some(group) = groups.get(group_id) else {
            return Err(unknown_member(group_id, member_id));
        };
        if !group.members.contains_key(member_id) {
            return Err(unknown_member(group_id, member_id));
        }
        if generation != group.generation {
            return Err(illegal_generation(group_id, generation));
        }
        if group.state == ClassicState::CompletingRebalance {
            return Err(rebalancing(group_id));
        }
        Ok(())
    }

    /// Ends overdue rebalances (dropping members that did not rejoin) and removes members
    /// whose session expired; returns how many members were removed.
    pub fn expire(&self) -> usize {
        let now = self.clock.now_ms();
        let mut groups = self.lock();
        let mut removed = 0;
        let mut emptied = Vec::new();
        for (group_id, group) in groups.iter_mut() {
            let before = group.members.len();
            let preparing = group.state == ClassicState::PreparingRebalance;
            let overdue = preparing && now >= group.rebalance_deadline_ms;
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, member)| {
                    let missing = overdue && member.joining.is_none();
                    // A member waiting at the barrier is alive: its session restarts then.
                    let silent = member.joining.is_none()
                        && now - member.last_seen_ms > member.session_timeout_ms;
                    missing || silent
                })
                .map(|(member_id, _)| member_id.clone())
                .collect();
            for member_id in &expired {
                if let Some(member) = group.members.remove(member_id) {
                    tracing::info!(
                        group = group_id,
                        member = member_id,
                        "classic group member removed (session expired or did not rejoin)"
                    );
                    drop_member(member, group_id);
                }
            }
            removed += before - group.members.len();
            if !expired.is_empty() && group.members.is_empty() {
                emptied.push(group_id.clone());
            }
            if !expired.is_empty() && !preparing {
                membership_changed(group, now);
            } else if overdue {
                complete(group);
            } else if preparing {
                complete_if_ready(group, now);
            }
        }
        groups.retain(|_, group| !(group.members.is_empty() && group.generation == 0));
        drop(groups);
        for group_id in emptied {
            self.note_emptied(&group_id);
        }
        removed
    }

    /// Describes a group (`None`: no such classic group).
    pub fn describe(&self, group_id: &str) -> Option<ClassicSummary> {
        let groups = self.lock();
        let group = groups.get(group_id)?;
        Some(ClassicSummary {
            state: group.state,
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            members: group
                .members
                .iter()
                .map(|(member_id, member)| ClassicMemberSummary {
                    member_id: member_id.clone(),
                    client_id: member.client_id.clone(),
                    metadata: member
                        .protocols
                        .iter()
                        .find(|(name, _)| *name == group.protocol)
                        .map(|(_, metadata)| metadata.clone())
                        .unwrap_or_default(),
                    assignment: member.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Every classic group with members: (id, state, member count), sorted by id.
    pub fn list(&self) -> Vec<(String, ClassicState, u32)> {
        let groups = self.lock();
        let mut listing: Vec<(String, ClassicState, u32)> = groups
            .iter()
            .filter(|(_, group)| !group.members.is_empty())
            .map(|(group_id, group)| {
                (
                    group_id.clone(),
                    group.state,
                    u32::try_from(group.members.len()).unwrap_or(u32::MAX),
                )
            })
            .collect();
        listing.sort_by(|left, right| left.0.cmp(&right.0));
        listing
    }
}

fn check_join(request: &ClassicJoin) -> Result<(), GroupError> {
    if request.group_id.is_empty() {
        return Err(GroupError::InvalidGroupId("group id is empty".to_string()));
    }
    if request.group_id.len() > GROUP_ID_BYTES_MAX {
        return Err(GroupError::InvalidGroupId(format!(
            "group id of {} bytes exceeds max {GROUP_ID_BYTES_MAX}",
            request.group_id.len()
        )));
    }
    if !(SESSION_TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&request.session_timeout_ms) {
        return Err(GroupError::InvalidSessionTimeout(format!(
            "session timeout {} ms is outside [{SESSION_TIMEOUT_MS_MIN}, {TIMEOUT_MS_MAX}]",
            request.session_timeout_ms
        )));
    }
    if request.protocols.is_empty() || request.protocol_type.is_empty() {
        return Err(GroupError::InconsistentProtocol(
            "a join names a protocol type and at least one protocol".to_string(),
        ));
    }
    Ok(())
}

fn unknown_member(group_id: &str, member_id: &str) -> GroupError {
    GroupError::UnknownMember(format!(
        "member {member_id:?} is not in group {group_id:?} (it left or timed out); rejoin"
    ))
}

fn illegal_generation(group_id: &str, generation: i32) -> GroupError {
    GroupError::IllegalGeneration(format!(
        "generation {generation} is not the current one of group {group_id:?}"
    ))
}

fn rebalancing(group_id: &str) -> GroupError {
    GroupError::RebalanceInProgress(format!("group {group_id:?} is rebalancing; rejoin"))
}

/// Tells a removed member's waiters that it is gone.
fn drop_member(member: Member, group_id: &str) {
    if let Some(joining) = member.joining {
        let _ = joining.send(Err(GroupError::UnknownMember(format!(
            "removed from group {group_id:?}"
        ))));
    }
    if let Some(syncing) = member.syncing {
        let _ = syncing.send(Err(rebalancing(group_id)));
    }
}

fn start_rebalance(group: &mut Group, now: i64, initial: bool) {
    group.state = ClassicState::PreparingRebalance;
    let timeout = group
        .members
        .values()
        .map(|member| member.rebalance_timeout_ms)
        .max()
        .unwrap_or(0);
    group.rebalance_deadline_ms = now
        + if initial {
            INITIAL_REBALANCE_DELAY_MS
        } else {
            timeout
        };
    // Followers waiting for an assignment of the old generation must rejoin.
    for member in group.members.values_mut() {
        if let Some(syncing) = member.syncing.take() {
            let _ = syncing.send(Err(GroupError::RebalanceInProgress(
                "the group is rebalancing; rejoin".to_string(),
            )));
        }
    }
}

/// Membership changed outside a join: a stable (or completing) group starts a rebalance; an
/// empty one stays empty.
fn membership_changed(group: &mut Group, now: i64) {
    if group.members.is_empty() {
        group.state = ClassicState::Empty;
        group.leader.clear();
        group.protocol.clear();
        return;
    }
    if group.state == ClassicState::PreparingRebalance {
        complete_if_ready(group, now);
    } else {
        start_rebalance(group, now, false);
    }
}

/// Completes the rebalance once every member has rejoined (and a new group's initial delay
/// has passed).
fn complete_if_ready(group: &mut Group, now: i64) {
    let all_joined = group
        .members
        .values()
        .all(|member| member.joining.is_some());
    let initial_wait = group.generation == 0 && now < group.rebalance_deadline_ms;
    if all_joined && !initial_wait && !group.members.is_empty() {
        complete(group);
    }
}

/// Bumps the generation, picks the protocol and leader, and answers every waiting join.
fn complete(group: &mut Group) {
    if group.members.is_empty() {
        group.state = ClassicState::Empty;
        return;
    }
    group.generation = group.generation.wrapping_add(1).max(1);
    group.rebalances += 1;
    group.protocol = choose_protocol(&group.members);
    if !group.members.contains_key(&group.leader) {
        group.leader = group.members.keys().next().cloned().unwrap_or_default();
    }
    group.state = ClassicState::CompletingRebalance;
    let everyone: Vec<(String, Bytes)> = group
        .members
        .iter()
        .map(|(member_id, member)| {
            let metadata = member
                .protocols
                .iter()
                .find(|(name, _)| *name == group.protocol)
                .map(|(_, metadata)| metadata.clone())
                .unwrap_or_default();
            (member_id.clone(), metadata)
        })
        .collect();
    for (member_id, member) in &mut group.members {
        if let Some(joining) = member.joining.take() {
            let joined = Joined {
                generation: group.generation,
                protocol: group.protocol.clone(),
                protocol_type: group.protocol_type.clone(),
                leader: group.leader.clone(),
                member_id: member_id.clone(),
                members: if *member_id == group.leader {
                    everyone.clone()
                } else {
                    Vec::new()
                },
            };
            let _ = joining.send(Ok(joined));
        }
    }
}

/// The protocol every member supports that most members prefer (each votes for its first
/// supported choice); ties go to the earlier member's preference.
fn choose_protocol(members: &BTreeMap<String, Member>) -> String {
    let supported_by_all = |name: &str| {
        members
            .values()
            .all(|member| member.protocols.iter().any(|(other, _)| other == name))
    };
    let mut votes: Vec<(String, usize)> = Vec::new();
    for member in members.values() {
        if let Some((name, _)) = member
            .protocols
            .iter()
            .find(|(name, _)| supported_by_all(name))
        {
            match votes.iter_mut().find(|(voted, _)| voted == name) {
                Some((_, count)) => *count += 1,
                None => votes.push((name.clone(), 1)),
            }
        }
    }
    let mut best: Option<(String, usize)> = None;
    for (name, count) in votes {
        if best.as_ref().is_none_or(|(_, most)| count > *most) {
            best = Some((name, count));
        }
    }
    best.map(|(name, _)| name).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::clock::ManualClock;

    fn join(group: &str, member: &str, protocols: &[&str]) -> ClassicJoin {
        ClassicJoin {
            group_id: group.to_string(),
            member_id: member.to_string(),
            client_id: "c".to_string(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".to_string(),
            protocols: protocols
                .iter()
                .map(|name| (name.to_string(), Bytes::from(format!("meta-{name}"))))
                .collect(),
        }
    }

    fn waiting(wait: JoinWait) -> oneshot::Receiver<Result<Joined, GroupError>> {
        match wait {
            JoinWait::Waiting(receiver) => receiver,
            JoinWait::Refused(error) => panic!("refused: {error}"),
        }
    }

    #[test]
    fn two_members_join_one_generation_and_the_leaders_assignment_reaches_both() {
        let clock = Arc::new(ManualClock::new(1_000));
        let groups = ClassicGroups::new(clock.clone());
        let mut first = waiting(groups.join(join("g", "", &["range", "roundrobin"])));
        let mut second = waiting(groups.join(join("g", "", &["roundrobin"])));
        assert!(
            first.try_recv().is_err(),
            "the initial delay holds the barrier"
        );
        clock.advance_ms(INITIAL_REBALANCE_DELAY_MS);
        groups.expire();
        let first = first.try_recv().expect("joined").expect("ok");
        let second = second.try_recv().expect("joined").expect("ok");
        assert_eq!(first.generation, 1);
        assert_eq!(
            groups.rebalances("g"),
            1,
            "one generation bump, one rebalance"
        );
        assert_eq!(groups.rebalances("other"), 0);
        assert_eq!(first.protocol, "roundrobin", "the only common protocol");
        let (leader, follower) = if first.leader == first.member_id {
            (first, second)
        } else {
            (second, first)
        };
        assert_eq!(leader.members.len(), 2);
        assert!(follower.members.is_empty());
        let SyncWait::Waiting(mut follower_sync) =
            groups.sync("g", &follower.member_id, 1, Vec::new())
        else {
            panic!("the follower waits for the leader");
        };
        let SyncWait::Waiting(mut leader_sync) = groups.sync(
            "g",
            &leader.member_id,
            1,
            vec![
                (leader.member_id.clone(), Bytes::from_static(b"L")),
                (follower.member_id.clone(), Bytes::from_static(b"F")),
            ],
        ) else {
            panic!("the leader's sync completes through its receiver");
        };
        assert_eq!(follower_sync.try_recv().expect("sent").expect("ok"), "F");
        assert_eq!(leader_sync.try_recv().expect("sent").expect("ok"), "L");
        assert_eq!(groups.heartbeat("g", &leader.member_id, 1), Ok(()));
        assert_eq!(groups.check_commit("g", &follower.member_id, 1), Ok(()));

        // Recorded by the leader's sync (only its), the group goes on at another
        // coordinator at its generation: heartbeats and commits pass there, nobody rejoins,
        // and the members' sessions start again from the restore.
        assert_eq!(groups.saved("g", &follower.member_id, 1), None);
        assert_eq!(groups.saved("g", &leader.member_id, 2), None);
        let saved = groups
            .saved("g", &leader.member_id, 1)
            .expect("stable at 1");
        let next = ClassicGroups::new(clock.clone());
        clock.advance_ms(60_000);
        next.restore(vec![("g".to_string(), saved.clone())]);
        assert_eq!(next.heartbeat("g", &follower.member_id, 1), Ok(()));
        assert_eq!(next.check_commit("g", &leader.member_id, 1), Ok(()));
        assert!(matches!(
            next.sync("g", &follower.member_id, 1, Vec::new()),
            SyncWait::Assigned(assignment) if assignment == "F"
        ));
        assert_eq!(next.expire(), 0, "sessions count from the restore");
        assert_eq!(next.describe("g"), groups.describe("g"));
        assert_eq!(next.saved("g", &leader.member_id, 1), Some(saved));
        // A stale generation is still refused there, and a later restore keeps what runs.
        assert!(next.heartbeat("g", &follower.member_id, 0).is_err());
        next.restore(vec![(
            "g".to_string(),
            SavedGroup {
                version: SAVED_GROUP_VERSION,
                generation: 7,
                protocol_type: String::new(),
                protocol: String::new(),
                leader: String::new(),
                members: Vec::new(),
            },
        )]);
        assert_eq!(next.heartbeat("g", &follower.member_id, 1), Ok(()));
    }

    #[test]
    fn a_new_member_makes_the_others_rejoin_and_one_that_does_not_is_dropped() {
        let clock = Arc::new(ManualClock::new(1_000));
        let groups = ClassicGroups::new(clock.clone());
        let mut first = waiting(groups.join(join("g", "", &["range"])));
        clock.advance_ms(INITIAL_REBALANCE_DELAY_MS);
        groups.expire();
        let first = first.try_recv().expect("joined").expect("ok");
        let _ = groups.sync(
            "g",
            &first.member_id,
            1,
            vec![(first.member_id.clone(), Bytes::from_static(b"all"))],
        );
        let mut second = waiting(groups.join(join("g", "", &["range"])));
        assert!(matches!(
            groups.heartbeat("g", &first.member_id, 1),
            Err(GroupError::RebalanceInProgress(_))
        ));
        // Commits of the old generation are still accepted while the group prepares.
        assert_eq!(groups.check_commit("g", &first.member_id, 1), Ok(()));
        // The first member never rejoins: after the rebalance timeout it is dropped.
        clock.advance_ms(5_001);
        groups.expire();
        let second = second.try_recv().expect("joined").expect("ok");
        assert_eq!(second.generation, 2);
        assert_eq!(second.leader, second.member_id);
        assert!(matches!(
            groups.heartbeat("g", &first.member_id, 1),
            Err(GroupError::UnknownMember(_))
        ));
    }

    #[test]
    fn a_leaving_member_starts_a_rebalance_and_an_empty_group_commits_nothing_by_member() {
        let clock = Arc::new(ManualClock::new(1_000));
        let groups = ClassicGroups::new(clock.clone());
        let mut first = waiting(groups.join(join("g", "", &["range"])));
        clock.advance_ms(INITIAL_REBALANCE_DELAY_MS);
        groups.expire();
        let first = first.try_recv().expect("joined").expect("ok");
        assert_eq!(
            groups.leave("g", std::slice::from_ref(&first.member_id)),
            vec![Ok(())]
        );
        assert!(!groups.has_members("g"));
        assert!(matches!(
            groups.check_commit("g", &first.member_id, 1),
            Err(GroupError::UnknownMember(_))
        ));
        assert!(matches!(
            groups.join(join("g", "nobody", &["range"])),
            JoinWait::Refused(GroupError::UnknownMember(_))
        ));
    }

    #[test]
    fn a_group_id_serves_one_group_protocol_at_a_time() {
        use crate::groups::{GroupCoordinator, Heartbeat};
        let clock = Arc::new(ManualClock::new(1_000));
        let coordinator = GroupCoordinator::new(clock.clone(), 10_000);
        let native = Heartbeat {
            group_id: "shared".to_string(),
            client_id: "native".to_string(),
            topics: vec!["t".to_string()],
            assignor: "range".to_string(),
            ..Heartbeat::default()
        };
        coordinator
            .heartbeat(&native, |_| Some(1))
            .expect("a native member joins");
        assert!(matches!(
            coordinator.classic_join(join("shared", "", &["range"])),
            JoinWait::Refused(GroupError::InconsistentProtocol(_))
        ));
        let _kafka = waiting(coordinator.classic_join(join("kafka-only", "", &["range"])));
        let other = Heartbeat {
            group_id: "kafka-only".to_string(),
            ..native
        };
        assert!(matches!(
            coordinator.heartbeat(&other, |_| Some(1)),
            Err(GroupError::InconsistentProtocol(_))
        ));
        // Commits to the Kafka group follow its own members and generation.
        assert!(matches!(
            coordinator.check_commit("kafka-only", "", -1),
            Err(GroupError::UnknownMember(_))
        ));
    }

    #[test]
    fn members_without_a_common_protocol_are_refused() {
        let clock = Arc::new(ManualClock::new(1_000));
        let groups = ClassicGroups::new(clock);
        let _first = waiting(groups.join(join("g", "", &["range"])));
        assert!(matches!(
            groups.join(join("g", "", &["cooperative-sticky"])),
            JoinWait::Refused(GroupError::InconsistentProtocol(_))
        ));
    }
}
