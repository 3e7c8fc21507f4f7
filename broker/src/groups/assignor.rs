//! Partition assignment: pure functions from (members with subscriptions, partition counts,
//! previous assignment) to a new assignment. Unit-tested without a runtime.

use std::collections::{BTreeMap, BTreeSet};

/// Which strategy a group uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Assignor {
    /// Per topic, contiguous ranges of partitions to members in member-id order.
    #[default]
    Range,
    /// All subscribed partitions dealt out one by one.
    RoundRobin,
    /// Balanced like round-robin, but keeps each member's previous partitions where it can,
    /// so a rebalance moves as few partitions as possible.
    Sticky,
}

impl Assignor {
    /// Parses `range`, `roundrobin` or `sticky`; empty means the default.
    pub fn parse(name: &str) -> Option<Assignor> {
        match name {
            "" | "range" => Some(Assignor::Range),
            "roundrobin" | "round-robin" => Some(Assignor::RoundRobin),
            "sticky" => Some(Assignor::Sticky),
            _ => None,
        }
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::Sticky => "sticky",
        }
    }
}

/// A member's partitions: topic → sorted partition numbers.
pub type MemberAssignment = BTreeMap<String, Vec<u32>>;

/// Input per member: its subscribed topics and its previous assignment.
#[derive(Debug, Clone, Default)]
pub struct MemberInput {
    /// Subscribed topics.
    pub topics: BTreeSet<String>,
    /// What it owned before this rebalance (used by sticky).
    pub previous: MemberAssignment,
}

/// Computes the assignment of every member (keyed by member id). Topics with no known
/// partition count are skipped.
pub fn assign(
    assignor: Assignor,
    members: &BTreeMap<String, MemberInput>,
    partition_counts: &BTreeMap<String, u32>,
) -> BTreeMap<String, MemberAssignment> {
    let mut result: BTreeMap<String, MemberAssignment> = members
        .keys()
        .map(|member| (member.clone(), MemberAssignment::new()))
        .collect();
    match assignor {
        Assignor::Range => assign_range(members, partition_counts, &mut result),
        Assignor::RoundRobin => assign_round_robin(members, partition_counts, &mut result),
        Assignor::Sticky => assign_sticky(members, partition_counts, &mut result),
    }
    for assignment in result.values_mut() {
        for partitions in assignment.values_mut() {
            partitions.sort_unstable();
        }
        assignment.retain(|_, partitions| !partitions.is_empty());
    }
    result
}

fn subscribers<'a>(members: &'a BTreeMap<String, MemberInput>, topic: &str) -> Vec<&'a String> {
    members
        .iter()
        .filter(|(_, input)| input.topics.contains(topic))
        .map(|(member, _)| member)
        .collect()
}

fn assign_range(
    members: &BTreeMap<String, MemberInput>,
    partition_counts: &BTreeMap<String, u32>,
    result: &mut BTreeMap<String, MemberAssignment>,
) {
    for (topic, &count) in partition_counts {
        let owners = subscribers(members, topic);
        if owners.is_empty() {
            continue;
        }
        let per_member = count / owners.len() as u32;
        let extra = count % owners.len() as u32;
        let mut next = 0;
        for (position, member) in owners.into_iter().enumerate() {
            let take = per_member + u32::from((position as u32) < extra);
            let partitions: Vec<u32> = (next..next + take).collect();
            next += take;
            if let Some(assignment) = result.get_mut(member) {
                assignment
                    .entry(topic.clone())
                    .or_default()
                    .extend(partitions);
            }
        }
    }
}

fn all_partitions(partition_counts: &BTreeMap<String, u32>) -> Vec<(String, u32)> {
    partition_counts
        .iter()
        .flat_map(|(topic, &count)| (0..count).map(move |partition| (topic.clone(), partition)))
        .collect()
}

fn assign_round_robin(
    members: &BTreeMap<String, MemberInput>,
    partition_counts: &BTreeMap<String, u32>,
    result: &mut BTreeMap<String, MemberAssignment>,
) {
    let member_ids: Vec<&String> = members.keys().collect();
    if member_ids.is_empty() {
        return;
    }
    let mut cursor = 0;
    for (topic, partition) in all_partitions(partition_counts) {
        // Deal to the next member (in circular order) that subscribes to this topic.
        for step in 0..member_ids.len() {
            let member = member_ids[(cursor + step) % member_ids.len()];
            if members[member].topics.contains(&topic) {
                if let Some(assignment) = result.get_mut(member) {
                    assignment.entry(topic.clone()).or_default().push(partition);
                }
                cursor = (cursor + step + 1) % member_ids.len();
                break;
            }
        }
    }
}

fn load(assignment: &MemberAssignment) -> usize {
    assignment.values().map(Vec::len).sum()
}

fn assign_sticky(
    members: &BTreeMap<String, MemberInput>,
    partition_counts: &BTreeMap<String, u32>,
    result: &mut BTreeMap<String, MemberAssignment>,
) {
    let partitions = all_partitions(partition_counts);
    let eligible_count = |topic: &str| subscribers(members, topic).len();
    let total = partitions
        .iter()
        .filter(|(topic, _)| eligible_count(topic) > 0)
        .count();
    if members.is_empty() || total == 0 {
        return;
    }
    // Each member may keep at most the ceiling of a fair share.
    let quota = total.div_ceil(members.len());
    let mut owned: BTreeSet<(String, u32)> = BTreeSet::new();
    for (member, input) in members {
        let Some(assignment) = result.get_mut(member) else {
            continue;
        };
        for (topic, previous) in &input.previous {
            let count = partition_counts.get(topic).copied().unwrap_or(0);
            if !input.topics.contains(topic) {
                continue;
            }
            for &partition in previous {
                let key = (topic.clone(), partition);
                if partition < count && load(assignment) < quota && !owned.contains(&key) {
                    assignment.entry(topic.clone()).or_default().push(partition);
                    owned.insert(key);
                }
            }
        }
    }
    for (topic, partition) in partitions {
        if owned.contains(&(topic.clone(), partition)) {
            continue;
        }
        let least_loaded = members
            .iter()
            .filter(|(_, input)| input.topics.contains(&topic))
            .map(|(member, _)| member)
            .min_by_key(|member| result.get(*member).map_or(usize::MAX, load));
        if let Some(member) = least_loaded {
            if let Some(assignment) = result.get_mut(member) {
                assignment.entry(topic.clone()).or_default().push(partition);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str], topics: &[&str]) -> BTreeMap<String, MemberInput> {
        ids.iter()
            .map(|id| {
                (
                    id.to_string(),
                    MemberInput {
                        topics: topics.iter().map(|topic| topic.to_string()).collect(),
                        previous: MemberAssignment::new(),
                    },
                )
            })
            .collect()
    }

    fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs
            .iter()
            .map(|(topic, count)| (topic.to_string(), *count))
            .collect()
    }

    fn check_complete_and_disjoint(
        result: &BTreeMap<String, MemberAssignment>,
        partition_counts: &BTreeMap<String, u32>,
    ) {
        let mut seen = BTreeSet::new();
        for assignment in result.values() {
            for (topic, partitions) in assignment {
                for partition in partitions {
                    assert!(
                        seen.insert((topic.clone(), *partition)),
                        "{topic}-{partition} twice"
                    );
                }
            }
        }
        assert_eq!(seen.len(), all_partitions(partition_counts).len());
    }

    #[test]
    fn range_splits_six_partitions_over_three_members() {
        let partition_counts = counts(&[("t", 6)]);
        let result = assign(
            Assignor::Range,
            &members(&["a", "b", "c"], &["t"]),
            &partition_counts,
        );
        assert_eq!(result["a"]["t"], vec![0, 1]);
        assert_eq!(result["b"]["t"], vec![2, 3]);
        assert_eq!(result["c"]["t"], vec![4, 5]);
    }

    #[test]
    fn every_assignor_covers_each_partition_once() {
        let partition_counts = counts(&[("t", 7), ("u", 3)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            let result = assign(
                assignor,
                &members(&["a", "b", "c"], &["t", "u"]),
                &partition_counts,
            );
            check_complete_and_disjoint(&result, &partition_counts);
            let loads: Vec<usize> = result.values().map(load).collect();
            if assignor != Assignor::Range {
                assert!(
                    loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
                    "{assignor:?} {loads:?}"
                );
            }
        }
    }

    #[test]
    fn members_only_get_subscribed_topics() {
        let mut inputs = members(&["a"], &["t"]);
        inputs.extend(members(&["b"], &["u"]));
        let partition_counts = counts(&[("t", 2), ("u", 2)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::Sticky] {
            let result = assign(assignor, &inputs, &partition_counts);
            assert_eq!(result["a"].keys().collect::<Vec<_>>(), vec!["t"]);
            assert_eq!(result["b"].keys().collect::<Vec<_>>(), vec!["u"]);
        }
    }

    #[test]
    fn sticky_keeps_partitions_when_a_member_leaves() {
        let partition_counts = counts(&[("t", 6)]);
        let first = assign(
            Assignor::Sticky,
            &members(&["a", "b", "c"], &["t"]),
            &partition_counts,
        );
        let mut survivors = members(&["a", "b"], &["t"]);
        for (member, input) in survivors.iter_mut() {
            input.previous = first[member].clone();
        }
        let second = assign(Assignor::Sticky, &survivors, &partition_counts);
        check_complete_and_disjoint(&second, &partition_counts);
        for member in ["a", "b"] {
            for partition in &first[member]["t"] {
                assert!(
                    second[member]["t"].contains(partition),
                    "{member} lost {partition}"
                );
            }
        }
    }
}
