//! Where replicas and leaders go (issue #20), a pure function of the metadata state, so
//! every node computes the same placement from the same log.
//!
//! The rule (docs/CLUSTER.md, "Placement"):
//! - A new partition or queue takes the `factor` nodes holding the fewest replicas (ties:
//!   the one leading fewer, then the lower node id). Its leader is the chosen node leading the fewest (ties: fewer replicas,
//!   then lower id), and it goes first in the replica list (the preferred leader).
//! - Existing placements never move when nodes join: a new node takes new replicas until
//!   `wharf cluster rebalance` (or a node's removal) moves old ones.
//! - A rebalance first replaces replicas on nodes that are gone, then moves one replica at a
//!   time onto a least loaded node until the counts differ by at most one (a set written
//!   through a group first, from any node two above it; an unreplicated partition, which
//!   keeps a group of its own once moved, only when no replicated set can move), then
//!   picks each set's leader again by the leader rule: sets with fewer replicas
//!   first (they have fewer choices), in order among equals; and last, while a node leads
//!   two or more than another that a chain of shared sets reaches, shifts one leadership
//!   along that chain.

use std::collections::BTreeMap;

use super::metadata::{MetadataState, NodeId, Replicas};

/// Replica and leader counts per node.
#[derive(Debug, Clone)]
pub struct Load {
    nodes: BTreeMap<NodeId, (usize, usize)>,
}

impl Load {
    /// The counts over the replica sets of `state`'s topics and queues, for its registered
    /// nodes that are not being drained (or node 1 alone, a cluster of one before it
    /// registered). Internal topics (the
    /// coordinators' partition) are not counted: where topics and queues go does not depend
    /// on which node won that partition's election.
    pub fn of(state: &MetadataState) -> Load {
        // A node being drained takes nothing new (unless every node is).
        let mut nodes: BTreeMap<NodeId, (usize, usize)> = state
            .nodes
            .keys()
            .filter(|id| !state.draining.contains(id))
            .map(|id| (*id, (0, 0)))
            .collect();
        if nodes.is_empty() {
            nodes = state.nodes.keys().map(|id| (*id, (0, 0))).collect();
        }
        if nodes.is_empty() {
            nodes.insert(1, (0, 0));
        }
        let sets = state
            .topics
            .iter()
            .filter(|(name, _)| !name.starts_with(super::metadata::INTERNAL_TOPIC_PREFIX))
            .flat_map(|(_, topic)| topic.partitions.iter())
            .chain(state.queues.values().map(|queue| &queue.placement));
        for set in sets {
            for replica in &set.replicas {
                if let Some(counts) = nodes.get_mut(replica) {
                    counts.0 += 1;
                }
            }
            if let Some(counts) = nodes.get_mut(&set.leader) {
                counts.1 += 1;
            }
        }
        Load { nodes }
    }

    /// Places one set of `factor` replicas (at most the node count) and counts it.
    pub fn place(&mut self, factor: usize) -> Replicas {
        let mut by_load: Vec<(usize, usize, NodeId)> = self
            .nodes
            .iter()
            .map(|(id, (replicas, leads))| (*replicas, *leads, *id))
            .collect();
        by_load.sort_unstable();
        let chosen: Vec<NodeId> = by_load.iter().take(factor).map(|(_, _, id)| *id).collect();
        let replicas = self.with_leader_first(chosen);
        for id in &replicas {
            self.nodes.entry(*id).or_default().0 += 1;
        }
        self.nodes.entry(replicas[0]).or_default().1 += 1;
        Replicas::new(replicas)
    }

    /// `replicas` with the one that should lead (fewest leaderships, then fewest replicas,
    /// then lowest id) moved to the front.
    fn with_leader_first(&self, mut replicas: Vec<NodeId>) -> Vec<NodeId> {
        let leader_at = (0..replicas.len())
            .min_by_key(|&at| {
                let (count, leads) = self.nodes.get(&replicas[at]).copied().unwrap_or_default();
                (leads, count, replicas[at])
            })
            .unwrap_or(0);
        let leader = replicas.remove(leader_at);
        replicas.insert(0, leader);
        replicas
    }

    fn replicas_of(&self, id: NodeId) -> usize {
        self.nodes.get(&id).map_or(0, |counts| counts.0)
    }
}

/// Moves replicas of `sets` onto `nodes` (see the module documentation). `fixed` names
/// the node of each unreplicated partition that stays where it is: counted in the load
/// (a replica it leads) but never moved. With no node, nothing moves.
pub fn rebalance(nodes: &[NodeId], sets: &mut [&mut Replicas], fixed: &[NodeId]) {
    if nodes.is_empty() {
        return;
    }
    let mut load = Load {
        nodes: nodes.iter().map(|id| (*id, (0, 0))).collect(),
    };
    for node in fixed {
        if let Some(counts) = load.nodes.get_mut(node) {
            counts.0 += 1;
            counts.1 += 1;
        }
    }
    // 1. Replicas on nodes that are gone: dropped, then refilled from the least loaded.
    for set in sets.iter() {
        for replica in &set.replicas {
            if let Some(counts) = load.nodes.get_mut(replica) {
                counts.0 += 1;
            }
        }
    }
    for set in sets.iter_mut() {
        let wanted = set.replicas.len().min(nodes.len());
        set.replicas
            .retain(|replica| load.nodes.contains_key(replica));
        while set.replicas.len() < wanted {
            let Some(pick) = nodes
                .iter()
                .filter(|id| !set.replicas.contains(id))
                .min_by_key(|id| (load.replicas_of(**id), **id))
                .copied()
            else {
                break;
            };
            load.nodes.entry(pick).or_default().0 += 1;
            set.replicas.push(pick);
        }
    }
    // 2. Even out replica counts, one move at a time, from a node two or more above the
    //    least loaded onto a least loaded one (bounded: each move lowers the sum of the
    //    squared counts). A set written through a group moves first, from any such node
    //    (the most loaded first) onto any such node (lower ids first); an unreplicated
    //    partition, which keeps a group of one voter once moved (each write goes to its raft
    //    log too), only when no replicated set can.
    let moves_max = sets.iter().map(|set| set.replicas.len()).sum::<usize>() * 2 + 1;
    for _ in 0..moves_max {
        let Some(least_count) = nodes.iter().map(|id| load.replicas_of(*id)).min() else {
            break;
        };
        let receivers: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|id| load.replicas_of(*id) == least_count)
            .collect();
        let mut donors: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|id| load.replicas_of(*id) > least_count + 1)
            .collect();
        donors.sort_by_key(|id| (std::cmp::Reverse(load.replicas_of(*id)), *id));
        let find = |grouped_only: bool| {
            donors.iter().find_map(|from| {
                receivers.iter().find_map(|to| {
                    sets.iter()
                        .position(|set| {
                            set.replicas.contains(from)
                                && !set.replicas.contains(to)
                                && (!grouped_only || set.in_a_group())
                        })
                        .map(|at| (*from, *to, at))
                })
            })
        };
        let Some((from, to, at)) = find(true).or_else(|| find(false)) else {
            break;
        };
        for replica in sets[at].replicas.iter_mut() {
            if *replica == from {
                *replica = to;
            }
        }
        load.nodes.entry(from).or_default().0 -= 1;
        load.nodes.entry(to).or_default().0 += 1;
    }
    // 3. Leaders again: sets with fewer replicas (fewer choices) first, then in order.
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by_key(|&at| sets[at].replicas.len());
    for at in order {
        let set = &mut sets[at];
        if set.replicas.is_empty() {
            continue;
        }
        let replicas = load.with_leader_first(std::mem::take(&mut set.replicas));
        load.nodes.entry(replicas[0]).or_default().1 += 1;
        set.leader = replicas[0];
        set.replicas = replicas;
    }
    // 4. Then, while a node leads at least two more than another it can hand over to
    //    through a chain of sets (it leads a set the next node is in, which leads a set
    //    the next is in...), shift one leadership along that chain.
    for _ in 0..sets.len() * nodes.len() {
        let Some(chain) = leader_chain(nodes, sets, fixed) else {
            break;
        };
        for (at, to) in chain {
            let set = &mut sets[at];
            set.leader = to;
            if let Some(position) = set.replicas.iter().position(|id| *id == to) {
                let leader = set.replicas.remove(position);
                set.replicas.insert(0, leader);
            }
        }
    }
}

/// A chain of (set index, new leader) hand-overs that takes one leadership from the node
/// leading most to one leading at least two fewer (the `fixed` unreplicated partitions
/// counted as led by their node), or `None` when no such chain exists.
fn leader_chain(
    nodes: &[NodeId],
    sets: &[&mut Replicas],
    fixed: &[NodeId],
) -> Option<Vec<(usize, NodeId)>> {
    let mut leads: BTreeMap<NodeId, usize> = nodes.iter().map(|id| (*id, 0)).collect();
    for node in fixed {
        if let Some(count) = leads.get_mut(node) {
            *count += 1;
        }
    }
    for set in sets.iter() {
        *leads.entry(set.leader).or_default() += 1;
    }
    let mut by_leads: Vec<NodeId> = nodes.to_vec();
    by_leads.sort_by_key(|id| (std::cmp::Reverse(leads[id]), *id));
    for start in by_leads {
        let mut parent: BTreeMap<NodeId, (NodeId, usize)> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for (at, set) in sets.iter().enumerate() {
                if set.leader != node {
                    continue;
                }
                for next in &set.replicas {
                    if *next == start || parent.contains_key(next) {
                        continue;
                    }
                    parent.insert(*next, (node, at));
                    if leads.get(next).copied().unwrap_or(0) + 2 <= leads[&start] {
                        let mut chain = Vec::new();
                        let mut to = *next;
                        while let Some(&(from, at)) = parent.get(&to) {
                            chain.push((at, to));
                            if from == start {
                                break;
                            }
                            to = from;
                        }
                        return Some(chain);
                    }
                    queue.push_back(*next);
                }
            }
        }
    }
    None
}

/// FNV-1a over the key's bytes: a stable hash every node computes alike.
pub fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cluster::metadata::{MetadataCommand, MetadataResult, NodeInfo};

    fn register(state: &mut MetadataState, id: NodeId) {
        state.apply(&MetadataCommand::RegisterNode {
            node_id: id,
            info: NodeInfo {
                cluster_addr: format!("127.0.0.1:{}", 7000 + id),
                listeners: BTreeMap::new(),
                settings: BTreeMap::new(),
            },
        });
    }

    fn counts(state: &MetadataState) -> (Vec<usize>, Vec<usize>) {
        let load = Load::of(state);
        let replicas = load.nodes.values().map(|counts| counts.0).collect();
        let leaders = load.nodes.values().map(|counts| counts.1).collect();
        (replicas, leaders)
    }

    fn spread(values: &[usize]) -> usize {
        values.iter().max().unwrap_or(&0) - values.iter().min().unwrap_or(&0)
    }

    #[test]
    fn an_unreplicated_partition_moves_only_when_no_replicated_set_can() {
        // Nodes 1 and 4 hold three unreplicated partitions each, node 1 also a replicated
        // set; node 5 is new. The replicated sets move first, onto any least loaded node
        // (c goes to node 5 although node 2 is lower: c is on node 2), and one unreplicated
        // partition moves only because no replicated move is left while the counts are
        // still uneven (11 replicas on 5 nodes cannot be even with six of them pinned to two
        // nodes).
        let unreplicated = |node: NodeId| Replicas::new(vec![node]);
        let mut sets = [
            unreplicated(4),
            unreplicated(1),
            Replicas::new(vec![3, 4, 2]),
            unreplicated(4),
            unreplicated(1),
            unreplicated(4),
            Replicas::new(vec![1, 3]),
            unreplicated(1),
        ];
        let before = sets.clone();
        let mut refs: Vec<&mut Replicas> = sets.iter_mut().collect();
        rebalance(&[1, 2, 3, 4, 5], &mut refs, &[]);
        let moved: Vec<usize> = (0..sets.len())
            .filter(|at| {
                let mut now = sets[*at].replicas.clone();
                now.sort_unstable();
                let mut then = before[*at].replicas.clone();
                then.sort_unstable();
                now != then
            })
            .collect();
        let unreplicated_moves = moved
            .iter()
            .filter(|at| before[**at].replicas.len() == 1)
            .count();
        assert_eq!(unreplicated_moves, 1, "{sets:?}");
        let mut counts = [0usize; 5];
        for set in &sets {
            for node in &set.replicas {
                counts[usize::try_from(*node - 1).expect("an index")] += 1;
            }
        }
        assert!(spread(&counts) <= 1, "{counts:?}");
    }

    #[test]
    fn fixed_partitions_count_as_their_nodes_leaderships() {
        // Node 1 leads two unreplicated partitions the plan may not move: the two
        // replicated sets on nodes 1 and 2 are led by node 2, and step 4 does not shift one
        // back to node 1 as if it led nothing.
        let mut sets = [Replicas::new(vec![1, 2]), Replicas::new(vec![1, 2])];
        let mut refs: Vec<&mut Replicas> = sets.iter_mut().collect();
        rebalance(&[1, 2], &mut refs, &[1, 1]);
        assert!(sets.iter().all(|set| set.leader == 2), "{sets:?}");
    }

    proptest! {
        /// Placement is balanced (replica counts within one of each other; with one
        /// replication factor for every set, leader counts within two as placed),
        /// distinct per set, and stable: adding a node moves nothing until a rebalance,
        /// whose moves balance the replica counts again (an unreplicated partition moves
        /// with its records, through a group of its own, like the others).
        #[test]
        fn placement_is_balanced_distinct_and_stable(
            nodes in 1u64..6,
            topics in proptest::collection::vec((1u32..8, 1u32..4), 1..6),
            mixed in any::<bool>(),
        ) {
            let same = topics[0].1;
            let topics: Vec<(u32, u32)> = topics
                .iter()
                .map(|(partitions, factor)| (*partitions, if mixed { *factor } else { same }))
                .collect();
            let mut state = MetadataState::default();
            for id in 1..=nodes {
                register(&mut state, id);
            }
            for (index, (partitions, factor)) in topics.iter().enumerate() {
                state.apply(&MetadataCommand::CreateTopic {
                    name: format!("t{index}"),
                    partitions: *partitions,
                    replication_factor: (*factor).min(nodes as u32),
                    configs: BTreeMap::new(),
                    topic_id: None,
                });
            }
            for set in state.replica_sets() {
                let mut distinct = set.replicas.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), set.replicas.len());
                prop_assert_eq!(set.leader, set.replicas[0]);
            }
            let (replicas, leaders) = counts(&state);
            prop_assert!(spread(&replicas) <= 1, "replicas {:?}", replicas);
            prop_assert!(mixed || spread(&leaders) <= 2, "leaders {:?}", leaders);

            let before = state.clone();
            register(&mut state, nodes + 1);
            prop_assert_eq!(&before.topics, &state.topics, "a joining node moves nothing");

            let joined = state.clone();
            let MetadataResult::Moves(moves) = state.apply(&MetadataCommand::Rebalance) else {
                panic!("a rebalance answers its moves");
            };
            prop_assert_eq!(&moves, &state.moves());
            // Every set runs where it was until its group's leader moved it (modelled
            // here: the move completes, and a leader that left is followed by the first of
            // the new replicas).
            for (name, topic) in &state.topics {
                for (index, set) in topic.partitions.iter().enumerate() {
                    let was = &joined.topics[name].partitions[index];
                    // (A set that stays may name another preferred leader first.)
                    let mut now = set.replicas.clone();
                    now.sort_unstable();
                    let mut then = was.replicas.clone();
                    then.sort_unstable();
                    prop_assert_eq!(now, then);
                    prop_assert_eq!(set.leader, was.leader);
                }
            }
            for moved in moves {
                let partition = moved.partition.expect("topics only");
                let was = &joined.topics[&moved.name].partitions[partition as usize];
                let mut from = moved.from.clone();
                from.sort_unstable();
                let mut placed = was.replicas.clone();
                placed.sort_unstable();
                prop_assert_eq!(from, placed);
                prop_assert_eq!(
                    state.apply(&MetadataCommand::ReplicasMoved {
                        name: moved.name.clone(),
                        partition: moved.partition,
                        replicas: moved.to.clone(),
                    }),
                    MetadataResult::Done
                );
                if !moved.to.contains(&was.leader) {
                    state.apply(&MetadataCommand::SetPartitionLeader {
                        name: moved.name.clone(),
                        partition,
                        leader: moved.to[0],
                    });
                }
            }
            prop_assert!(state.moves().is_empty());
            let (replicas, _) = counts(&state);
            prop_assert!(spread(&replicas) <= 1, "after a rebalance, replicas {:?}", replicas);
            for set in state.replica_sets() {
                prop_assert!(set.replicas.contains(&set.leader));
                let mut distinct = set.replicas.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), set.replicas.len());
            }
        }
    }
}
