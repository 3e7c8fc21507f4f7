//! Replicated logs over an in-process network, on a paused clock: tests of
//! `cluster/replica.rs`. Each node has its own simulated disk; RPCs are serialized and
//! parsed as on the internal wire. The applier is a model (a list of applied commands with
//! a durable prefix), so what is checked is the group's rules: only committed commands are
//! applied, every member applies the same ones in the same order, a failover keeps every
//! acknowledged write, a restarted member cut back to its checkpoint applies nothing twice,
//! and a member behind the purged log catches up from a snapshot's records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{Applier, Replica, ReplicaError, ReplicaMachine, Replicas};
use crate::cluster::metadata::NodeId;
use crate::cluster::raft::{RaftReply, RaftRpc, Timing, Transport};
use crate::cluster::store::Io;
use crate::storage::sim::{SimFs, Torn};

const DIR: &str = "/data/topic-0";
const GROUP: &str = "topic-0";

/// The applied commands, and how many of them [`Applier::persist`] made durable.
#[derive(Debug, Default)]
struct Model {
    applied: Vec<Bytes>,
    durable: usize,
    /// Commands taken from a snapshot's records rather than applied one by one.
    from_snapshots: usize,
    /// State beside the records that the records cannot rebuild (as a partition's producer
    /// state): the bytes of every command applied, counted at apply only; a snapshot's
    /// records leave it alone, [`Applier::install_state`] sets it.
    side: u64,
}

#[derive(Debug, Default)]
struct ModelApplier {
    model: Mutex<Model>,
}

impl ModelApplier {
    fn with(applied: Vec<Bytes>) -> ModelApplier {
        let durable = applied.len();
        ModelApplier {
            model: Mutex::new(Model {
                applied,
                durable,
                from_snapshots: 0,
                side: 0,
            }),
        }
    }

    fn applied(&self) -> Vec<Bytes> {
        self.model.lock().unwrap().applied.clone()
    }

    /// The side state (see [`Model::side`]).
    fn side(&self) -> u64 {
        self.model.lock().unwrap().side
    }

    /// What survives a crash: the durable prefix.
    fn durable(&self) -> Vec<Bytes> {
        let model = self.model.lock().unwrap();
        model.applied[..model.durable].to_vec()
    }
}

impl Applier for ModelApplier {
    fn apply(&self, command: &Bytes) -> std::io::Result<Bytes> {
        let mut model = self.model.lock().unwrap();
        let position = model.applied.len() as u64;
        model.applied.push(command.clone());
        model.side += command.len() as u64;
        Ok(Bytes::copy_from_slice(&position.to_be_bytes()))
    }

    fn state(&self) -> std::io::Result<Bytes> {
        let model = self.model.lock().unwrap();
        let mut out = BytesMut::new();
        out.put_u64(model.applied.len() as u64);
        out.put_u64(model.side);
        Ok(out.freeze())
    }

    fn check_state(&self, state: &Bytes) -> std::io::Result<()> {
        if state.len() == 16 {
            Ok(())
        } else {
            Err(std::io::Error::other("not a model state"))
        }
    }

    fn install_state(&self, state: &Bytes) -> std::io::Result<()> {
        let mut model = self.model.lock().unwrap();
        let mut state = state.clone();
        let position = state.get_u64();
        if position != model.applied.len() as u64 {
            return Err(std::io::Error::other(format!(
                "a state of position {position} for one at {}",
                model.applied.len()
            )));
        }
        model.side = state.get_u64();
        Ok(())
    }

    fn position(&self) -> i64 {
        self.model.lock().unwrap().applied.len() as i64
    }

    fn persist(&self) -> std::io::Result<i64> {
        let mut model = self.model.lock().unwrap();
        model.durable = model.applied.len();
        Ok(model.durable as i64)
    }

    fn read_range(&self, from: i64, to: i64) -> std::io::Result<Bytes> {
        let model = self.model.lock().unwrap();
        let mut out = BytesMut::new();
        for command in &model.applied[from as usize..to as usize] {
            out.put_u32(command.len() as u32);
            out.put_slice(command);
        }
        Ok(out.freeze())
    }

    fn read_range_bounded(
        &self,
        from: i64,
        to: i64,
        max_bytes: usize,
    ) -> std::io::Result<(Bytes, i64)> {
        let model = self.model.lock().unwrap();
        let mut out = BytesMut::new();
        let mut at = from;
        while at < to && out.len() < max_bytes {
            let command = &model.applied[at as usize];
            out.put_u32(command.len() as u32);
            out.put_slice(command);
            at += 1;
        }
        Ok((out.freeze(), at))
    }

    fn append_range(&self, from: i64, records: &Bytes) -> std::io::Result<i64> {
        let mut model = self.model.lock().unwrap();
        if (model.applied.len() as i64) < from {
            return Err(std::io::Error::other("past the range's start"));
        }
        // Values this model applied since it told the leader its position are skipped.
        let mut records = records.clone();
        let mut at = from;
        while records.has_remaining() {
            let length = records.get_u32() as usize;
            let value = records.split_to(length);
            if at >= model.applied.len() as i64 {
                model.applied.push(value);
                model.from_snapshots += 1;
            }
            at += 1;
        }
        Ok(model.applied.len() as i64)
    }
}

/// The nodes' members by id, and which nodes are down.
#[derive(Debug, Default)]
struct Net {
    nodes: Mutex<HashMap<NodeId, Replicas>>,
    down: Mutex<HashSet<NodeId>>,
    /// Snapshot pieces sent ahead (`ReplicaRpc::Stage`).
    staged: std::sync::atomic::AtomicUsize,
}

impl Transport for Net {
    fn call(
        &self,
        target: NodeId,
        _addr: &str,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<RaftReply, String>> + Send + '_>> {
        Box::pin(async move {
            if self.down.lock().unwrap().contains(&target) {
                return Err(format!("node {target} is down"));
            }
            let replicas = self.nodes.lock().unwrap().get(&target).cloned();
            let Some(replicas) = replicas else {
                return Err(format!("node {target} is not running"));
            };
            // As on the wire: frame bodies both ways.
            let bytes =
                crate::cluster::transport::encode_body(&rpc).map_err(|error| error.to_string())?;
            let RaftRpc::Replica {
                group,
                instance,
                rpc,
            } = crate::cluster::transport::decode_body(&bytes)
                .map_err(|error| error.to_string())?
            else {
                return Err("not a replica rpc".to_string());
            };
            if matches!(*rpc, super::ReplicaRpc::Stage { .. }) {
                self.staged
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let reply = tokio::time::timeout(timeout, replicas.serve(&group, instance, *rpc))
                .await
                .map_err(|_| "timed out".to_string())?;
            let reply = RaftReply::Replica(Box::new(reply));
            let bytes = crate::cluster::transport::encode_body(&reply)
                .map_err(|error| error.to_string())?;
            crate::cluster::transport::decode_body(&bytes).map_err(|error| error.to_string())
        })
    }
}

fn timing() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(50),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
        snapshot_every: 10,
        entries_per_append: 1,
    }
}

struct Node {
    fs: SimFs,
    applier: Arc<ModelApplier>,
    replica: Replica,
}

async fn start(id: NodeId, fs: SimFs, applier: Arc<ModelApplier>, net: &Arc<Net>) -> Node {
    let shared: Arc<dyn crate::storage::fs::Fs> = Arc::new(fs.clone());
    let replica = Replica::start(
        id,
        GROUP.to_string(),
        Path::new(DIR),
        shared,
        Io::Inline,
        applier.clone(),
        net.clone(),
        timing(),
        super::Adopt::Nothing,
    )
    .await
    .expect("start");
    let replicas = Replicas::default();
    replicas.insert(replica.clone());
    net.nodes.lock().unwrap().insert(id, replicas);
    net.down.lock().unwrap().remove(&id);
    Node {
        fs,
        applier,
        replica,
    }
}

/// Stops node `id` as a crash does: the member stops, the disk keeps what was written
/// (`power_loss`: only what was fsynced) and the applier its durable prefix.
async fn crash(node: Node, id: NodeId, net: &Arc<Net>, power_loss: bool) -> (SimFs, Vec<Bytes>) {
    net.down.lock().unwrap().insert(id);
    net.nodes.lock().unwrap().remove(&id);
    node.replica.shutdown().await;
    let image = if power_loss {
        node.fs.crash_image(Torn::Random { seed: id })
    } else {
        node.fs.process_crash_image()
    };
    (image, node.applier.durable())
}

/// Restarts a crashed node: its applier cut back to the checkpoint first.
async fn restart(id: NodeId, image: SimFs, mut state: Vec<Bytes>, net: &Arc<Net>) -> Node {
    let position = ReplicaMachine::checkpointed_position(&image, Path::new(DIR)).expect("read");
    assert!(
        position as usize <= state.len(),
        "the checkpoint covers more than the applier made durable"
    );
    state.truncate(position as usize);
    start(id, image, Arc::new(ModelApplier::with(state)), net).await
}

async fn wait_for_leader(nodes: &BTreeMap<NodeId, Node>) -> NodeId {
    for _ in 0..200 {
        let leaders: HashSet<NodeId> = nodes
            .iter()
            .filter(|(_, node)| node.replica.is_leader())
            .map(|(id, _)| *id)
            .collect();
        if leaders.len() == 1 {
            return *leaders.iter().next().expect("one");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no single leader elected");
}

/// Writes `values` through the leader, retrying through a new leader on NotLeader;
/// returns each write's position as the leader answered it.
async fn write_all(nodes: &BTreeMap<NodeId, Node>, values: &[String]) -> Vec<u64> {
    let mut positions = Vec::new();
    for value in values {
        let mut attempts = 0;
        loop {
            attempts += 1;
            assert!(attempts < 50, "the write of {value} never committed");
            let leader = wait_for_leader(nodes).await;
            match nodes[&leader]
                .replica
                .write(Bytes::from(value.clone()))
                .await
            {
                Ok(outcome) => {
                    positions.push(u64::from_be_bytes(outcome[..8].try_into().expect("8")));
                    break;
                }
                Err(ReplicaError::NotLeader { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => panic!("write of {value} failed: {other}"),
            }
        }
    }
    positions
}

/// Waits until every node applied exactly `expected`, with the side state of every one of
/// them, whether it applied them or took them from a snapshot (or a restart's checkpoint).
async fn converge(nodes: &BTreeMap<NodeId, Node>, expected: &[Bytes]) {
    let side: u64 = expected.iter().map(|command| command.len() as u64).sum();
    for _ in 0..400 {
        if nodes
            .values()
            .all(|node| node.applier.applied() == expected && node.applier.side() == side)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, node) in nodes {
        let applied = node.applier.applied();
        assert_eq!(
            applied.len(),
            expected.len(),
            "node {id} applied {} commands, the leader {}",
            applied.len(),
            expected.len()
        );
        assert_eq!(applied, expected, "node {id} applied other commands");
        assert_eq!(node.applier.side(), side, "node {id}'s side state");
    }
}

fn values(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}-{index}"))
        .collect()
}

/// Three members over `net`, started on fresh disks, the group initialized with all three.
async fn three_members(net: &Arc<Net>) -> BTreeMap<NodeId, Node> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, SimFs::new(), Arc::default(), net).await);
    }
    let members: BTreeMap<NodeId, String> = (1..=3).map(|id| (id, format!("node-{id}"))).collect();
    nodes[&1]
        .replica
        .initialize(members)
        .await
        .expect("initialize");
    nodes
}

fn first_members() -> BTreeMap<NodeId, String> {
    (1..=3).map(|id| (id, format!("node-{id}"))).collect()
}

/// Members 2 and 3 of a new group of three, started and founding it as members that do
/// not lead its placement (they wait before they initialize).
async fn waiting_members(net: &Arc<Net>) -> BTreeMap<NodeId, Node> {
    let mut nodes = BTreeMap::new();
    for id in [2, 3] {
        let node = start(id, SimFs::new(), Arc::default(), net).await;
        node.replica
            .found(first_members(), false)
            .await
            .expect("found");
        nodes.insert(id, node);
    }
    nodes
}

/// The placement's leader leads a new group even when it starts the group last: the other
/// first members wait for it rather than electing one of themselves (which is how every
/// partition of a three-node test once ended up led by one node).
#[test]
fn a_new_group_is_led_by_the_placements_leader_even_when_it_starts_last() {
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let mut nodes = waiting_members(&net).await;
        // Long enough for two members to elect one of themselves.
        tokio::time::sleep(timing().election_max * 2).await;
        assert!(nodes.values().all(|node| node.replica.leader().is_none()));
        let node = start(1, SimFs::new(), Arc::default(), &net).await;
        node.replica
            .found(first_members(), true)
            .await
            .expect("found");
        nodes.insert(1, node);
        assert_eq!(wait_for_leader(&nodes).await, 1);
        let written = values("led", 5);
        write_all(&nodes, &written).await;
        let expected: Vec<Bytes> = written.into_iter().map(Bytes::from).collect();
        converge(&nodes, &expected).await;
        // The waiting members' late initialize changed nothing.
        tokio::time::sleep(timing().election_max * (super::FOUNDING_WAIT_ELECTIONS + 1)).await;
        assert_eq!(wait_for_leader(&nodes).await, 1);
        converge(&nodes, &expected).await;
    });
}

/// With the placement's leader down when the group is created, the other first members
/// found it themselves after their wait and elect one of them.
#[test]
fn a_new_group_forms_without_the_placements_leader_after_the_wait() {
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let nodes = waiting_members(&net).await;
        let wait = timing().election_max * super::FOUNDING_WAIT_ELECTIONS;
        tokio::time::sleep(wait - Duration::from_millis(10)).await;
        assert!(nodes.values().all(|node| node.replica.leader().is_none()));
        let leader = wait_for_leader(&nodes).await;
        assert!([2, 3].contains(&leader), "{leader}");
        let written = values("without", 5);
        write_all(&nodes, &written).await;
        let expected: Vec<Bytes> = written.into_iter().map(Bytes::from).collect();
        converge(&nodes, &expected).await;
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

#[test]
fn a_replicated_log_keeps_every_acknowledged_write_through_failover_restart_and_catch_up() {
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let mut nodes = BTreeMap::new();
        for id in 1..=3 {
            let node = start(id, SimFs::new(), Arc::default(), &net).await;
            nodes.insert(id, node);
        }
        let members: BTreeMap<NodeId, String> =
            (1..=3).map(|id| (id, format!("node-{id}"))).collect();
        nodes[&1]
            .replica
            .initialize(members.clone())
            .await
            .expect("initialize");
        // A second initialize (another member, or a restart) changes nothing.
        nodes[&2]
            .replica
            .initialize(members)
            .await
            .expect("initialize again");

        // Writes through the leader are applied everywhere, in order; a follower refuses
        // a write and names the leader.
        let first = values("a", 25);
        let positions = write_all(&nodes, &first).await;
        assert_eq!(positions, (0..25).collect::<Vec<u64>>());
        let mut expected: Vec<Bytes> = first.iter().cloned().map(Bytes::from).collect();
        converge(&nodes, &expected).await;
        let leader = wait_for_leader(&nodes).await;
        let follower = *nodes.keys().find(|&&id| id != leader).expect("a follower");
        assert_eq!(
            nodes[&follower].replica.write(Bytes::from("refused")).await,
            Err(ReplicaError::NotLeader {
                leader: Some(leader)
            })
        );

        // The leader dies: the other two elect one and go on; nothing acknowledged is lost.
        let old = nodes.remove(&leader).expect("leader");
        let (image, state) = crash(old, leader, &net, false).await;
        let second = values("b", 25);
        let positions = write_all(&nodes, &second).await;
        assert_eq!(positions, (25..50).collect::<Vec<u64>>());
        expected.extend(second.iter().cloned().map(Bytes::from));
        converge(&nodes, &expected).await;

        // The old leader comes back, cut to its checkpoint: it re-applies from its log and
        // catches up past the purged entries from a snapshot's records.
        nodes.insert(leader, restart(leader, image, state, &net).await);
        converge(&nodes, &expected).await;
        let caught_up = nodes[&leader].applier.model.lock().unwrap().from_snapshots;
        assert!(
            caught_up > 0,
            "the restarted node was behind the purged log but took no snapshot records"
        );
        // Its records (far more than STAGE_PIECE_BYTES) went in pieces ahead of the snapshot.
        let staged = net.staged.load(std::sync::atomic::Ordering::Relaxed);
        assert!(staged > 0, "no snapshot piece was staged");

        // A follower loses power (only fsynced bytes survive) and comes back.
        let leader = wait_for_leader(&nodes).await;
        let victim = *nodes.keys().find(|&&id| id != leader).expect("a follower");
        let third = values("c", 7);
        write_all(&nodes, &third).await;
        expected.extend(third.iter().cloned().map(Bytes::from));
        let down = nodes.remove(&victim).expect("victim");
        let (image, state) = crash(down, victim, &net, true).await;
        let fourth = values("d", 30);
        write_all(&nodes, &fourth).await;
        expected.extend(fourth.iter().cloned().map(Bytes::from));
        nodes.insert(victim, restart(victim, image, state, &net).await);
        converge(&nodes, &expected).await;

        // A follower stops and starts again having missed nothing: it re-applies its own
        // log past its checkpoint, and the state beside the records comes from the
        // checkpoint (no snapshot is sent).
        let leader = wait_for_leader(&nodes).await;
        let victim = *nodes.keys().find(|&&id| id != leader).expect("a follower");
        let down = nodes.remove(&victim).expect("victim");
        let (image, state) = crash(down, victim, &net, false).await;
        let restarted = restart(victim, image, state, &net).await;
        let before = restarted.applier.model.lock().unwrap().from_snapshots;
        nodes.insert(victim, restarted);
        converge(&nodes, &expected).await;
        assert_eq!(
            nodes[&victim].applier.model.lock().unwrap().from_snapshots,
            before,
            "the restarted follower took a snapshot"
        );

        for node in nodes.values() {
            node.replica.shutdown().await;
        }
    });
}

/// A snapshot whose state this member cannot read (a newer build's) is refused before its
/// install, which would stop the member: the leader sends it again later.
#[test]
fn a_snapshot_with_an_unreadable_state_is_refused_before_its_install() {
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let nodes = three_members(&net).await;
        write_all(&nodes, &values("a", 3)).await;
        let leader = wait_for_leader(&nodes).await;
        let follower = *nodes.keys().find(|&&id| id != leader).expect("a follower");
        let reply = nodes[&follower]
            .replica
            .serve(super::ReplicaRpc::Snapshot {
                vote: openraft::Vote::default(),
                meta: openraft::SnapshotMeta::default(),
                data: super::ReplicaSnapshot {
                    state: Bytes::from_static(b"unreadable"),
                    ..Default::default()
                },
            })
            .await;
        assert!(
            matches!(reply, super::ReplicaReply::Staged(Err(_))),
            "{reply:?}"
        );
        // The member goes on: the group still commits through it.
        write_all(&nodes, &values("b", 3)).await;
        let mut expected: Vec<Bytes> = values("a", 3).into_iter().map(Bytes::from).collect();
        expected.extend(values("b", 3).into_iter().map(Bytes::from));
        converge(&nodes, &expected).await;
        for node in nodes.values() {
            node.replica.shutdown().await;
        }
    });
}

#[test]
fn a_command_larger_than_a_group_takes_is_refused_before_it_is_written() {
    // Goal: a command that could not reach a follower in one frame (or read back from the
    // raft log) is refused at the leader, nothing proposed. Method: one byte over the limit
    // is refused as TooLarge and nothing is applied.
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let nodes = three_members(&net).await;
        let leader = wait_for_leader(&nodes).await;
        let over = Bytes::from(vec![b'x'; crate::cluster::replica::COMMAND_BYTES_MAX + 1]);
        let outcome = nodes[&leader].replica.write(over).await;
        assert!(
            matches!(outcome, Err(ReplicaError::TooLarge { bytes }) if bytes == crate::cluster::replica::COMMAND_BYTES_MAX + 1),
            "an oversized command answered {outcome:?}"
        );
        assert!(nodes[&leader].applier.applied().is_empty());
        for node in nodes.values() {
            node.replica.shutdown().await;
        }
    });
}

#[test]
fn a_group_with_no_majority_acknowledges_nothing() {
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let nodes = three_members(&net).await;
        write_all(&nodes, &values("a", 3)).await;
        let leader = wait_for_leader(&nodes).await;
        // Both followers go: the leader cannot commit, so it never answers Ok and never
        // applies the write.
        for id in nodes.keys().copied().filter(|&id| id != leader) {
            net.down.lock().unwrap().insert(id);
        }
        let outcome = nodes[&leader]
            .replica
            .write(Bytes::from("not committed"))
            .await;
        assert!(
            matches!(outcome, Err(ReplicaError::TimedOut(_))),
            "a write without a majority answered {outcome:?}"
        );
        assert_eq!(nodes[&leader].applier.applied().len(), 3);
        for node in nodes.values() {
            node.replica.shutdown().await;
        }
    });
}

/// A group moves from nodes {1, 2, 3} to {leader, other follower, 4} (`wharf cluster
/// rebalance`): node 4 starts empty without initializing, its leader adds it as a learner,
/// it catches up past the purged log from a snapshot's records, and the voters change. The
/// group then commits with node 4 and without the removed follower (which could no longer
/// form a majority with anyone), and doing the move again changes nothing.
#[test]
fn a_group_moves_onto_a_new_node_that_catches_up_before_it_votes() {
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let mut nodes = three_members(&net).await;
        let first = values("a", 40);
        write_all(&nodes, &first).await;
        let mut expected: Vec<Bytes> = first.iter().cloned().map(Bytes::from).collect();
        converge(&nodes, &expected).await;

        let leader = wait_for_leader(&nodes).await;
        let removed = *nodes.keys().find(|&&id| id != leader).expect("a follower");
        let kept = *nodes
            .keys()
            .find(|&&id| id != leader && id != removed)
            .expect("another follower");
        nodes.insert(4, start(4, SimFs::new(), Arc::default(), &net).await);
        let target: BTreeMap<NodeId, String> = [leader, kept, 4]
            .iter()
            .map(|id| (*id, format!("node-{id}")))
            .collect();
        nodes[&leader]
            .replica
            .move_to(target.clone(), Duration::from_secs(30))
            .await
            .expect("the move");
        let voters: std::collections::BTreeSet<NodeId> = target.keys().copied().collect();
        assert_eq!(nodes[&leader].replica.voters(), voters);
        assert!(
            nodes[&4].applier.model.lock().unwrap().from_snapshots > 0,
            "node 4 joined behind the purged log but took no snapshot records"
        );
        // A follower refuses to move the group; a second move on the leader is a no-op.
        assert!(matches!(
            nodes[&kept]
                .replica
                .move_to(target.clone(), Duration::from_secs(1))
                .await,
            Err(ReplicaError::NotLeader { .. })
        ));
        nodes[&leader]
            .replica
            .move_to(target, Duration::from_secs(1))
            .await
            .expect("the same move again");

        // The removed member goes; the new voters commit (node 4 counts for the majority:
        // the kept follower is down too for a while) and every one applies the same.
        let gone = nodes.remove(&removed).expect("removed");
        gone.replica.shutdown().await;
        net.down.lock().unwrap().insert(removed);
        net.nodes.lock().unwrap().remove(&removed);
        net.down.lock().unwrap().insert(kept);
        let second = values("b", 10);
        let answered = nodes[&leader]
            .replica
            .write(Bytes::from(second[0].clone()))
            .await;
        assert!(answered.is_ok(), "leader and node 4 commit: {answered:?}");
        net.down.lock().unwrap().remove(&kept);
        write_all(&nodes, &second[1..]).await;
        expected.extend(second.iter().cloned().map(Bytes::from));
        converge(&nodes, &expected).await;
        for node in nodes.values() {
            node.replica.shutdown().await;
        }
    });
}

#[test]
fn a_follower_is_in_sync_while_it_answers_and_has_what_the_leader_had_a_lag_ago() {
    use super::{in_sync, Contact, Seat, SyncTracker, REPLICA_LAG_MAX};
    let start = std::time::Instant::now();
    let at = |millis: u64| start + Duration::from_millis(millis);
    let lag = u64::try_from(REPLICA_LAG_MAX.as_millis()).expect("millis");
    let mut tracker = SyncTracker::default();
    // A new leader has no reference yet: answering is enough for a follower in the set.
    let (since, reference) = tracker.observe(at(0), 3, 100);
    assert_eq!((since, reference), (at(0), None));
    assert!(tracker.judge(2, Contact::Answering, 0, 100, None));
    assert!(
        !tracker.judge(3, Contact::Silent, 100, 100, None),
        "not answering"
    );
    // The leader writes on; samples every 100 ms.
    for step in 1..=lag / 100 + 20 {
        tracker.observe(at(step * 100), 3, 100 + step * 10);
    }
    let now = at(lag + 2_000);
    let (since, reference) = tracker.observe(now, 3, 100 + (lag + 2_000) / 10);
    assert_eq!(since, at(0), "the same term keeps its start");
    // What the leader had REPLICA_LAG_MAX ago (at 2,000 ms: 100 + 200).
    assert_eq!(reference, Some(300));
    let applied = 100 + (lag + 2_000) / 10;
    // Behind the leader now, but level with what it had a lag ago, and answering: stays.
    assert!(tracker.judge(2, Contact::Answering, 300, applied, reference));
    // Behind what it had a lag ago: out.
    assert!(!tracker.judge(2, Contact::Answering, 299, applied, reference));
    // Out, it rejoins only once level with everything applied, not at the lag's edge.
    assert!(!tracker.judge(2, Contact::Answering, 300, applied, reference));
    assert!(tracker.judge(2, Contact::Answering, applied, applied, reference));
    // Level with everything applied but not answering: out; idle and level: in.
    assert!(!in_sync(
        Seat::In,
        Contact::Silent,
        applied,
        applied,
        reference
    ));
    assert!(in_sync(
        Seat::Out,
        Contact::Answering,
        applied,
        applied,
        Some(applied + 50)
    ));
    // Node 3, out since the start, rejoins when it answers level.
    assert!(tracker.judge(3, Contact::Answering, applied, applied, reference));
    // A new term starts the record again, everyone in.
    tracker.judge(2, Contact::Answering, 0, applied, reference);
    let (since, reference) = tracker.observe(now, 4, applied);
    assert_eq!((since, reference), (now, None));
    assert!(tracker.judge(2, Contact::Answering, applied - 1, applied, None));
    tracker.forget();
    let (since, _) = tracker.observe(at(lag + 3_000), 4, applied);
    assert_eq!(since, at(lag + 3_000), "leading again after not leading");
}

/// Goal: a member of one instance of a group's name (a partition of a deleted topic) takes
/// no part in another instance's group (the topic created again under that name): it
/// answers its RPCs as a node without a member would, and its state stays as it was.
/// Method: a member of instance A is sent a vote request of a later term tagged instance
/// B, then the same untagged and tagged A.
#[test]
fn a_member_refuses_the_rpcs_of_another_instance_of_its_group() {
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let fs = SimFs::new();
        let shared: Arc<dyn crate::storage::fs::Fs> = Arc::new(fs);
        let (old, new) = (Some([1; 16]), Some([2; 16]));
        let replica = Replica::start(
            1,
            super::GroupName {
                name: GROUP.to_string(),
                instance: old,
            },
            Path::new(DIR),
            shared,
            Io::Inline,
            Arc::new(ModelApplier::with(Vec::new())),
            net,
            timing(),
            super::Adopt::Nothing,
        )
        .await
        .expect("start");
        assert_eq!(replica.instance(), old);
        let replicas = Replicas::default();
        replicas.insert(replica.clone());
        let vote = |term| {
            super::ReplicaRpc::Vote(openraft::raft::VoteRequest::new(
                openraft::Vote::new(term, 2),
                None,
            ))
        };
        let term = || replica.raft.metrics().borrow().current_term;

        let refused = replicas.serve(GROUP, new, vote(7)).await;
        assert!(
            matches!(&refused, super::ReplicaReply::Unknown(reason) if reason.contains("another instance")),
            "{refused:?}"
        );
        assert_eq!(term(), 0, "a refused vote request changed the member's term");

        let untagged = replicas.serve(GROUP, None, vote(7)).await;
        assert!(matches!(untagged, super::ReplicaReply::Vote(Ok(_))), "{untagged:?}");
        let served = replicas.serve(GROUP, old, vote(9)).await;
        assert!(matches!(served, super::ReplicaReply::Vote(Ok(_))), "{served:?}");
        assert_eq!(term(), 9);
        replica.shutdown().await;
    });
}

/// A leader hands its leadership to a chosen follower (openraft 0.9 has no transfer of its
/// own): the follower is elected each time, a write submitted during the hand-over is
/// refused (NotLeader: nothing written) and goes on through the new leader, and every
/// acknowledged write stays. A hand-over to a member that is down fails and leaves the
/// leader leading.
#[test]
fn a_leader_hands_its_leadership_to_a_chosen_follower() {
    runtime().block_on(async {
        let net = Arc::new(Net::default());
        let nodes = three_members(&net).await;
        let before = values("before", 5);
        write_all(&nodes, &before).await;
        for _ in 0..4 {
            let leader = wait_for_leader(&nodes).await;
            let to = leader % 3 + 1;
            let replica = &nodes[&leader].replica;
            let (handed, during) =
                tokio::join!(replica.hand_over(to, std::future::ready(())), async {
                    tokio::time::sleep(timing().heartbeat).await;
                    replica.write(Bytes::from("during")).await
                });
            handed.unwrap_or_else(|error| panic!("hand over from {leader} to {to}: {error}"));
            assert!(
                matches!(during, Err(ReplicaError::NotLeader { .. })),
                "a write during the hand-over answered {during:?}"
            );
            assert_eq!(wait_for_leader(&nodes).await, to);
        }
        let after = values("after", 5);
        write_all(&nodes, &after).await;
        let expected: Vec<Bytes> = before
            .iter()
            .chain(after.iter())
            .cloned()
            .map(Bytes::from)
            .collect();
        converge(&nodes, &expected).await;

        let leader = wait_for_leader(&nodes).await;
        let down = leader % 3 + 1;
        net.down.lock().unwrap().insert(down);
        let outcome = nodes[&leader]
            .replica
            .hand_over(down, std::future::ready(()))
            .await;
        assert!(
            outcome.as_ref().is_err_and(|failed| failed.paused),
            "a hand-over to a node that is down (asked after the pause): {outcome:?}"
        );
        net.down.lock().unwrap().remove(&down);
        assert_eq!(wait_for_leader(&nodes).await, leader);
        // A late Elect (for a term or a leader the member no longer sees) deposes nobody.
        let term = nodes[&leader]
            .replica
            .leader_and_term()
            .expect("a leader")
            .1;
        for (term, named) in [(term - 1, leader), (term, down)] {
            let answer = nodes[&down]
                .replica
                .serve(super::ReplicaRpc::Elect {
                    term,
                    leader: named,
                })
                .await;
            assert!(
                matches!(answer, super::ReplicaReply::Elect(Err(_))),
                "a stale Elect answered {answer:?}"
            );
        }
        tokio::time::sleep(timing().election_max).await;
        assert_eq!(wait_for_leader(&nodes).await, leader);
        // A writer that never stops: the hand-over gives up before pausing anything.
        let outcome = nodes[&leader]
            .replica
            .hand_over(leader % 3 + 1, std::future::pending())
            .await;
        assert!(
            matches!(
                &outcome,
                Err(super::HandOverError {
                    error: ReplicaError::TimedOut(_),
                    paused: false
                })
            ),
            "a hand-over whose writer did not stop: {outcome:?}"
        );
        assert_eq!(wait_for_leader(&nodes).await, leader);
        write_all(&nodes, &values("last", 1)).await;
        for node in nodes.values() {
            node.replica.shutdown().await;
        }
    });
}
