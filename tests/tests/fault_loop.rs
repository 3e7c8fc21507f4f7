//! The replication fault loop (issue #21): three real `wharfd` processes, a topic of two
//! partitions with replication factor 3, an idempotent confluent-kafka producer writing
//! acks=all and a consumer reading while a seeded loop SIGKILLs a random node or a
//! partition's leader (and starts it again), two nodes or all three at once, or pauses one
//! with SIGSTOP/SIGCONT. A checker
//! then reads everything back and verifies: every acknowledged record is stored exactly
//! once, at the offset it was acknowledged with; each partition keeps the producer's order;
//! every record the consumer saw is still there at the offset it saw it.
//!
//! The control run is the same loop on brokers that acknowledge before a majority has the
//! records (`WHARF_UNSAFE_ACK_BEFORE_COMMIT=1`) with an acks=1 producer: the checker must
//! find lost records, so a green run of the real loop means something.
//!
//! Wharf's own client (`tests/src/bin/native_faults.rs`, idempotent, acks=all) writes beside
//! librdkafka in the real loops; the checker keeps each writer's order.
//!
//! In both loops a replicated quorum queue takes traffic too: pika publishes with
//! confirms and consumes with manual acks through whichever node answers
//! (`tests/clients/pika_queue_faults.py`), the faults hit the queue's leader as well as the
//! partitions', and the checker verifies that every confirmed message was delivered (the
//! consumer goes on until the queue stays empty).
//!
//! `WHARF_FAULT_SEED` replays a run (each run prints its seed); `WHARF_FAULTS` sets the
//! number of faults of the real loop (CI runs a short one; docs/CLUSTER.md records a long
//! one). The network-partition loop runs its nodes in network namespaces, the clients in
//! the hub namespace (AMQP logs in as a user made offline in each node's directory: guest
//! works from loopback only), and reads the nodes' metrics through the hub.
//!
//! In both loops a transactional confluent-kafka producer also runs transactions
//! of four records over both partitions of a topic of its own (RF 3), committing two in
//! three and aborting the rest, while the node that coordinates them (the leader of
//! `__consumer_offsets`-0, which moves with the faults) is faulted like any other; the checker reads that topic with read_committed and verifies that every
//! committed transaction is there whole, no aborted record is visible, and a transaction
//! whose producer failed while ending it is whole or absent.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::cluster::{converged, native_leaders, registered, three_nodes_with_env};
use integration_tests::netns::Network;
use integration_tests::{
    client_python, run_with_deadline, workspace_root, BrokerProcess, SplitMix,
};
use serde_json::Value;

const TOPIC: &str = "faults";
const PARTITIONS: u32 = 2;
/// Records a second the Kafka writer aims at.
const RATE: u32 = 400;
/// Records a second the native writer aims at.
const NATIVE_RATE: u32 = 200;
/// Acknowledgements each partition must gain after a fault before the next one: the
/// cluster recovered, not just survived.
const PROGRESS: usize = 40;
/// How long a recovery may take before the run fails as stuck.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// The replicated queue of the loop on 127.0.0.1.
const QUEUE: &str = "fault-q";
/// Messages a second the queue's publisher aims at.
const QUEUE_RATE: u32 = 100;
/// Confirms the queue's publisher must gain after a fault before the next one.
const QUEUE_PROGRESS: usize = 20;
/// The topic the transactional producer writes (replication factor 3).
const TXN_TOPIC: &str = "faults-txn";
/// Transactions the transactional producer must end (commit or abort) after a fault
/// before the next one.
const TXN_PROGRESS: usize = 3;

/// One loop at a time in this process: three brokers and two clients fill two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A random duration from `low` to `high` milliseconds.
fn millis(rng: &mut SplitMix, low: u64, high: u64) -> Duration {
    Duration::from_millis(low + rng.below(high - low + 1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// SIGKILL a partition's leader, start it again after a while.
    KillLeader,
    /// SIGKILL any node, start it again after a while.
    KillAny,
    /// SIGSTOP a partition's leader, SIGCONT after a while.
    PauseLeader,
    /// SIGSTOP any node, SIGCONT after a while.
    PauseAny,
    /// Cut a partition's leader off from both other nodes (clients still reach it), mend
    /// after a while: the minority side is the old leader.
    IsolateLeader,
    /// Cut any node off from both others, mend after a while.
    IsolateAny,
    /// Cut the link between two nodes only: the third still talks to both (a bridge).
    Bridge,
    /// SIGKILL a node and the next one (1→2, 2→3, 3→1: a majority), start both again
    /// after a while: nothing commits meanwhile, and nothing acknowledged may be lost.
    KillMajority,
    /// SIGKILL all three nodes at once (every process crashes; the kernel keeps what they
    /// wrote, so this is not a power loss), start them again one after another.
    KillAll,
}

impl Kind {
    /// Whether the fault targets a partition's leader.
    fn of_leader(self) -> bool {
        matches!(
            self,
            Kind::KillLeader | Kind::PauseLeader | Kind::IsolateLeader
        )
    }
}

/// One fault the loop injected.
#[derive(Debug)]
struct Fault {
    kind: Kind,
    /// The node's id (1–3).
    node: usize,
    /// When it began, seconds since the epoch (the writer's clock).
    at: f64,
    /// How long the node was down or paused.
    outage: Duration,
    /// For a fault of a partition's leader: how long until a node still up named another
    /// leader for it (`None`: not within the outage).
    failover: Option<Duration>,
}

/// What the loop does.
struct Settings {
    seed: u64,
    faults: usize,
    kinds: &'static [Kind],
    /// The writer's `acks` (`all`: idempotent).
    acks: &'static str,
    /// Brokers acknowledge before the majority commit (the control run).
    unsafe_acks: bool,
    /// Each node in its network namespace (needed for cuts), else all on 127.0.0.1.
    namespaces: bool,
    /// Wharf's own client writes too (`native_faults`, idempotent, acks=all).
    native: bool,
    /// A replicated queue takes traffic too (where the nodes have AMQP listeners).
    queues: bool,
    /// A transactional producer commits and aborts transactions on a topic of its own.
    transactions: bool,
}

/// One acknowledged write.
#[derive(Debug, Clone)]
struct Acked {
    at: f64,
    partition: u32,
    offset: i64,
    value: String,
}

/// The checker's findings.
#[derive(Debug, Default)]
struct Verdict {
    acknowledged: usize,
    failed: Vec<String>,
    /// Acknowledged values not stored.
    lost: Vec<String>,
    /// Values stored more than once.
    duplicated: Vec<String>,
    /// Acknowledged values stored at another offset or partition.
    moved: Vec<String>,
    /// Adjacent stored values of one partition whose sequence numbers go down.
    disordered: Vec<String>,
    /// Records a consumer saw that are not stored where it saw them.
    vanished: Vec<String>,
    /// The queue's findings, when it took traffic.
    queue: Option<QueueVerdict>,
    /// The transactions' findings, when a transactional producer ran.
    txn: Option<TxnVerdict>,
}

/// The checker's findings on the transactions (what read_committed reads at the end).
#[derive(Debug, Default)]
struct TxnVerdict {
    committed: usize,
    aborted: usize,
    /// Ended by a producer that failed: committed or aborted, whole either way.
    unknown: usize,
    /// Records of committed transactions read_committed does not return.
    lost: Vec<String>,
    /// Transactions read_committed returns only part of.
    partial: Vec<String>,
    /// Records of aborted transactions read_committed returns.
    aborted_visible: Vec<String>,
    /// Records read_committed returns more than once.
    duplicated: Vec<String>,
    /// Adjacent records of one partition whose transactions go backwards.
    disordered: Vec<String>,
}

impl TxnVerdict {
    fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.partial.is_empty()
            && self.aborted_visible.is_empty()
            && self.duplicated.is_empty()
            && self.disordered.is_empty()
    }
}

/// The checker's findings on the replicated queue.
#[derive(Debug, Default)]
struct QueueVerdict {
    confirmed: usize,
    delivered: usize,
    /// Confirmed messages no consumer received.
    lost: Vec<String>,
    /// Deliveries of messages never published.
    unknown: Vec<String>,
    /// Messages delivered more than once (allowed: at-least-once).
    repeated: usize,
    /// Deliveries marked redelivered.
    redelivered: usize,
}

impl Verdict {
    fn clean(&self) -> bool {
        self.queue
            .as_ref()
            .is_none_or(|queue| queue.lost.is_empty() && queue.unknown.is_empty())
            && self.txn.as_ref().is_none_or(TxnVerdict::clean)
            && self.failed.is_empty()
            && self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.moved.is_empty()
            && self.disordered.is_empty()
            && self.vanished.is_empty()
    }

    fn summary(&self) -> String {
        let queue = self.queue.as_ref().map_or_else(String::new, |queue| {
            format!(
                "; queue: {} confirmed, {} lost, {} delivered ({} more than once, {} marked \
                 redelivered), {} never published",
                queue.confirmed,
                queue.lost.len(),
                queue.delivered,
                queue.repeated,
                queue.redelivered,
                queue.unknown.len()
            )
        });
        let txn = self.txn.as_ref().map_or_else(String::new, |txn| {
            format!(
                "; transactions: {} committed, {} aborted, {} ended by a failed producer; {} \
                 committed records lost, {} partly visible, {} aborted records visible, {} \
                 duplicated, {} out of order",
                txn.committed,
                txn.aborted,
                txn.unknown,
                txn.lost.len(),
                txn.partial.len(),
                txn.aborted_visible.len(),
                txn.duplicated.len(),
                txn.disordered.len()
            )
        });
        format!(
            "{} acknowledged, {} lost, {} duplicated, {} moved, {} out of order, {} seen then \
             gone, {} failed{queue}{txn}",
            self.acknowledged,
            self.lost.len(),
            self.duplicated.len(),
            self.moved.len(),
            self.disordered.len(),
            self.vanished.len(),
            self.failed.len()
        )
    }
}

/// `P-SEQ` (the Kafka writer's) or `nP-SEQ` (the native writer's) → (writer, P, SEQ).
fn parse_value(value: &str) -> Option<(&'static str, u32, u64)> {
    let (head, sequence) = value.split_once('-')?;
    let (writer, partition) = match head.strip_prefix('n') {
        Some(partition) => ("native", partition),
        None => ("kafka", head),
    };
    Some((writer, partition.parse().ok()?, sequence.parse().ok()?))
}

/// Checks the writer's acknowledgements and the live reader's records against what is
/// stored at the end (per partition, (offset, value) in offset order).
fn check(
    acked: &[Acked],
    failed: &[String],
    seen: &[(u32, i64, String)],
    stored: &BTreeMap<u32, Vec<(i64, String)>>,
) -> Verdict {
    let mut verdict = Verdict {
        acknowledged: acked.len(),
        failed: failed.to_vec(),
        ..Verdict::default()
    };
    let mut where_stored: HashMap<&str, Vec<(u32, i64)>> = HashMap::new();
    let mut at: HashMap<(u32, i64), &str> = HashMap::new();
    for (partition, records) in stored {
        // Each writer's order, by writer: their records interleave.
        let mut previous: HashMap<&str, (i64, u64)> = HashMap::new();
        for (offset, value) in records {
            where_stored
                .entry(value.as_str())
                .or_default()
                .push((*partition, *offset));
            at.insert((*partition, *offset), value.as_str());
            match parse_value(value) {
                Some((writer, from, sequence)) if from == *partition => {
                    if let Some((before, last)) = previous.get(writer) {
                        if sequence <= *last {
                            verdict.disordered.push(format!(
                                "partition {partition}: the {writer} writer's sequence {last} \
                                 at offset {before}, then {sequence} at {offset}"
                            ));
                        }
                    }
                    previous.insert(writer, (*offset, sequence));
                }
                _ => verdict.moved.push(format!(
                    "{value} stored in partition {partition} at offset {offset}"
                )),
            }
        }
    }
    for (value, places) in &where_stored {
        if places.len() > 1 {
            verdict.duplicated.push(format!("{value} at {places:?}"));
        }
    }
    for record in acked {
        match where_stored.get(record.value.as_str()) {
            None => verdict.lost.push(format!(
                "{} (acknowledged at offset {} of partition {})",
                record.value, record.offset, record.partition
            )),
            Some(places) => {
                // An acknowledgement without an offset (-1) names none to compare.
                let wanted = (record.partition, record.offset);
                if record.offset >= 0 && !places.contains(&wanted) {
                    verdict.moved.push(format!(
                        "{} acknowledged at {wanted:?}, stored at {places:?}",
                        record.value
                    ));
                }
            }
        }
    }
    for (partition, offset, value) in seen {
        if at.get(&(*partition, *offset)) != Some(&value.as_str()) {
            verdict.vanished.push(format!(
                "{value} seen at offset {offset} of partition {partition}, stored there: {:?}",
                at.get(&(*partition, *offset))
            ));
        }
    }
    verdict.lost.sort();
    verdict.duplicated.sort();
    verdict
}

/// Checks the queue's history: every confirmed message (`C` lines of the publisher's file)
/// was delivered (`D` lines of the consumer's), and nothing delivered was never published
/// (`C` or `F`: a publish that failed may still have been stored).
fn check_queue(published: &str, consumed: &str) -> QueueVerdict {
    let mut confirmed = Vec::new();
    let mut attempted = std::collections::HashSet::new();
    for line in published.lines() {
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        match fields.as_slice() {
            ["C", _, value] => {
                confirmed.push((*value).to_string());
                attempted.insert((*value).to_string());
            }
            ["F", _, value, ..] => {
                attempted.insert((*value).to_string());
            }
            _ => {}
        }
    }
    let mut delivered: HashMap<String, usize> = HashMap::new();
    let mut verdict = QueueVerdict {
        confirmed: confirmed.len(),
        ..QueueVerdict::default()
    };
    for line in consumed.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if let ["D", _, value, again] = fields.as_slice() {
            verdict.delivered += 1;
            *delivered.entry((*value).to_string()).or_default() += 1;
            if *again == "1" {
                verdict.redelivered += 1;
            }
            if !attempted.contains(*value) {
                verdict.unknown.push((*value).to_string());
            }
        }
    }
    verdict.repeated = delivered.values().filter(|count| **count > 1).count();
    verdict.lost = confirmed
        .into_iter()
        .filter(|value| !delivered.contains_key(value))
        .collect();
    verdict
}

/// Checks the transactions: `outcomes` is the transactional producer's file (`C|A|U TIME
/// N`), `stored` what read_committed returned per partition (values `tN-I/K`). A committed
/// transaction is there whole, an aborted one not at all, an unknown one whole or not at
/// all; no record twice; each partition's transactions in the order they ran.
fn check_txns(outcomes: &str, stored: &BTreeMap<u32, Vec<(i64, String)>>) -> TxnVerdict {
    let mut verdict = TxnVerdict::default();
    let mut ended: BTreeMap<u64, char> = BTreeMap::new();
    for line in outcomes.lines() {
        let fields: Vec<&str> = line.splitn(4, ' ').collect();
        if let [outcome, _, number, ..] = fields.as_slice() {
            if let (Some(kind), Ok(number)) = (outcome.chars().next(), number.parse()) {
                ended.insert(number, kind);
            }
        }
    }
    verdict.committed = ended.values().filter(|kind| **kind == 'C').count();
    verdict.aborted = ended.values().filter(|kind| **kind == 'A').count();
    verdict.unknown = ended.values().filter(|kind| **kind == 'U').count();
    let parse = |value: &str| -> Option<(u64, u64, u64)> {
        let (number, rest) = value.strip_prefix('t')?.split_once('-')?;
        let (index, of) = rest.split_once('/')?;
        Some((number.parse().ok()?, index.parse().ok()?, of.parse().ok()?))
    };
    let mut seen: BTreeMap<u64, (std::collections::BTreeSet<u64>, u64)> = BTreeMap::new();
    for (partition, records) in stored {
        let mut last = None;
        for (offset, value) in records {
            let Some((number, index, of)) = parse(value) else {
                verdict
                    .partial
                    .push(format!("{partition}@{offset}: unreadable {value}"));
                continue;
            };
            if last.is_some_and(|last| number < last) {
                verdict.disordered.push(format!(
                    "{partition}@{offset}: {value} after transaction {last:?}"
                ));
            }
            last = Some(number);
            let entry = seen
                .entry(number)
                .or_insert_with(|| (Default::default(), of));
            if !entry.0.insert(index) {
                verdict
                    .duplicated
                    .push(format!("{partition}@{offset}: {value}"));
            }
        }
    }
    for (number, (indexes, of)) in &seen {
        match ended.get(number) {
            Some('A') => verdict
                .aborted_visible
                .push(format!("t{number}: {} records", indexes.len())),
            _ if indexes.len() as u64 != *of => verdict
                .partial
                .push(format!("t{number}: {indexes:?} of {of}")),
            _ => {}
        }
    }
    for (number, kind) in &ended {
        if *kind == 'C' && !seen.contains_key(number) {
            verdict.lost.push(format!("t{number}"));
        }
    }
    verdict
}

/// The writer's file: acknowledgements and failures (and a line for records never
/// delivered).
fn read_writes(path: &Path) -> (Vec<Acked>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.splitn(5, ' ').collect();
        match fields.as_slice() {
            ["A", at, partition, offset, value] => acked.push(Acked {
                at: at.parse().expect("a time"),
                partition: partition.parse().expect("a partition"),
                offset: offset.parse().expect("an offset"),
                value: (*value).to_string(),
            }),
            // A line being written while the file is read.
            [] | ["A", ..] => {}
            _ => failed.push(line.to_string()),
        }
    }
    (acked, failed)
}

/// The live reader's file: (partition, offset, value) per record received.
fn read_seen(path: &Path) -> Vec<(u32, i64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.splitn(4, ' ').collect();
            match fields.as_slice() {
                ["S", partition, offset, value] => Some((
                    partition.parse().ok()?,
                    offset.parse().ok()?,
                    (*value).to_string(),
                )),
                _ => None,
            }
        })
        .collect()
}

/// Acknowledgements so far per writer's file (in `paths` order) and partition.
fn acked_per_partition(paths: &[PathBuf]) -> Vec<usize> {
    let mut counts = vec![0; PARTITIONS as usize * paths.len()];
    for (index, path) in paths.iter().enumerate() {
        for record in read_writes(path).0 {
            counts[index * PARTITIONS as usize + record.partition as usize] += 1;
        }
    }
    counts
}

/// A final read's `{"PARTITION": [[offset, value], ...]}` by partition.
fn stored_records(json: &Value) -> BTreeMap<u32, Vec<(i64, String)>> {
    json.as_object()
        .expect("partitions")
        .iter()
        .map(|(partition, records)| {
            let records = records
                .as_array()
                .expect("records")
                .iter()
                .map(|pair| {
                    (
                        pair[0].as_i64().expect("offset"),
                        pair[1].as_str().expect("value").to_string(),
                    )
                })
                .collect();
            (partition.parse().expect("a partition"), records)
        })
        .collect()
}

/// The clients' script.
fn script() -> PathBuf {
    workspace_root().join("tests/clients/confluent_faults.py")
}

/// A client script running in the background; killed if the test ends early.
struct Background(Child);

impl Background {
    /// Starts `command` (a client, maybe inside a namespace) with `args`, its output in
    /// `output` and its log (librdkafka reports each refused connection) beside it.
    fn start(mut command: Command, args: &[&str], output: &Path) -> Background {
        let child = command
            .args(args)
            .stdout(Stdio::from(File::create(output).expect("client output")))
            .stderr(Stdio::from(
                File::create(output.with_extension("log")).expect("client log"),
            ))
            .spawn()
            .expect("starting a client of the fault loop");
        Background(child)
    }

    /// Waits up to `limit` for it to finish; true when it exited successfully.
    fn finish(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends signal `name` (`-STOP`, `-CONT`) to process `pid`.
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {name} {pid}");
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

/// Runs the clients' script with `args` through `command` and returns its JSON answer.
fn run_client(mut command: Command, args: &[&str]) -> Value {
    let output = run_with_deadline(command.args(args), Duration::from_secs(180));
    assert!(
        output.status.success(),
        "confluent_faults.py {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON document")
}

/// The three brokers under test and how to hurt them.
trait Nodes {
    /// `bootstrap.servers` for the clients.
    fn bootstrap(&self) -> String;
    /// A command running `program` where the clients reach the brokers.
    fn client(&self, program: &Path) -> Command;
    /// A command running the clients' Python script (`confluent_faults.py`) there.
    fn python(&self) -> Command {
        let mut command = self.client(&client_python());
        command.arg(script());
        command
    }
    /// The native listener the native writer bootstraps from.
    fn native_bootstrap(&self) -> String;
    /// Each partition's leader as a node that is up names it (-1: none).
    fn leaders(&self) -> Vec<i32>;
    /// Partition `partition`'s leader as node `witness` names it, when a lookup is quick
    /// enough to time a failover with (`None`: not measured).
    fn leader_by(&self, witness: usize, partition: usize) -> Option<i32>;
    fn kill(&mut self, node: usize);
    fn restart(&mut self, node: usize);
    fn pid(&self, node: usize) -> u32;
    /// Cuts the links between `a` and `b` (panics where the network cannot be cut).
    fn cut(&self, a: usize, b: usize);
    fn mend(&self, a: usize, b: usize);
    /// Node `node`'s `/metrics` (1–3), or `None` while it does not answer.
    fn metrics(&self, node: usize) -> Option<String>;
    /// Each node's `wharf --json topic describe` of the topic (its replicas as that node
    /// sees them), for the message of a stalled run.
    fn replicas(&self) -> String;
    /// Each node's AMQP listener, where the clients reach it (empty: they do not).
    fn amqp(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The leader of the replicated queue as the first node that knows one names it.
fn queue_leader(nodes: &dyn Nodes) -> Option<usize> {
    (1..=3).find_map(|node| {
        samples(nodes, node, "wharf_queue_replica_leader")
            .into_iter()
            .find(|(labels, _)| *labels == format!("queue=\"{QUEUE}\""))
            .and_then(|(_, leader)| (leader >= 1.0).then_some(leader as usize))
    })
}

/// What `wharf topic describe` printed (or said when it failed), on one line.
fn described(node: usize, output: &std::process::Output) -> String {
    let text = if output.status.success() {
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    } else {
        format!("failed: {}", String::from_utf8_lossy(&output.stderr).trim())
    };
    format!("node {node}: {text}\n")
}

/// Nodes on 127.0.0.1: kills and pauses only.
struct Loopback {
    nodes: Vec<BrokerProcess>,
    addresses: Vec<String>,
}

impl Nodes for Loopback {
    fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(BrokerProcess::kafka_address)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn client(&self, program: &Path) -> Command {
        Command::new(program)
    }

    fn native_bootstrap(&self) -> String {
        self.addresses[0].clone()
    }

    fn leaders(&self) -> Vec<i32> {
        native_leaders(&self.addresses[0], TOPIC)
    }

    fn leader_by(&self, witness: usize, partition: usize) -> Option<i32> {
        Some(native_leaders(&self.addresses[witness - 1], TOPIC)[partition])
    }

    fn kill(&mut self, node: usize) {
        self.nodes[node - 1].kill();
    }

    fn restart(&mut self, node: usize) {
        self.nodes[node - 1].restart();
    }

    fn pid(&self, node: usize) -> u32 {
        self.nodes[node - 1].pid()
    }

    fn cut(&self, _: usize, _: usize) {
        panic!("nodes on 127.0.0.1 cannot be cut apart");
    }

    fn mend(&self, _: usize, _: usize) {}

    fn metrics(&self, node: usize) -> Option<String> {
        let address = self.nodes[node - 1].http_address();
        // A node just started again may not listen yet.
        std::net::TcpStream::connect(&address).ok()?;
        let (status, body) = integration_tests::http_get(&address, "/metrics", None);
        (status == 200).then_some(body)
    }

    fn amqp(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| node.amqp_address().to_string())
            .collect()
    }

    fn replicas(&self) -> String {
        self.addresses
            .iter()
            .enumerate()
            .map(|(at, address)| {
                let output =
                    integration_tests::wharf(address, &["--json", "topic", "describe", TOPIC], "");
                described(at + 1, &output)
            })
            .collect()
    }
}

/// The AMQP user of the nodes in network namespaces.
const AMQP_USER: &str = "faults";
const AMQP_PASSWORD: &str = "faults-password";

/// Nodes in network namespaces (`integration_tests::netns`); the clients run in the hub.
struct Namespaced {
    network: Network,
}

impl Nodes for Namespaced {
    fn bootstrap(&self) -> String {
        (1..=3).map(Network::kafka).collect::<Vec<_>>().join(",")
    }

    fn client(&self, program: &Path) -> Command {
        let mut command = self.network.in_hub(program);
        command.env(
            "WHARF_FAULT_AMQP_LOGIN",
            format!("{AMQP_USER}:{AMQP_PASSWORD}"),
        );
        command
    }

    fn native_bootstrap(&self) -> String {
        Network::broker(1)
    }

    fn leaders(&self) -> Vec<i32> {
        let partitions = PARTITIONS.to_string();
        let answer = run_client(
            self.python(),
            &["leaders", &self.bootstrap(), TOPIC, &partitions],
        );
        answer
            .as_array()
            .expect("leaders")
            .iter()
            .map(|leader| {
                leader
                    .as_i64()
                    .and_then(|id| i32::try_from(id).ok())
                    .unwrap_or(-1)
            })
            .collect()
    }

    fn leader_by(&self, witness: usize, partition: usize) -> Option<i32> {
        // The witness's replica of the partition, from its metrics (the test process does
        // not reach the namespaces' addresses; a fetch through the hub takes ~50 ms).
        let labels = format!("topic=\"{TOPIC}\",partition=\"{partition}\"");
        samples(self, witness, "wharf_replica_leader")
            .into_iter()
            .find(|(seen, _)| *seen == labels)
            .map(|(_, leader)| leader as i32)
    }

    fn kill(&mut self, node: usize) {
        self.network.kill(node);
    }

    fn restart(&mut self, node: usize) {
        self.network.restart(node);
    }

    fn pid(&self, node: usize) -> u32 {
        self.network.pid(node)
    }

    fn cut(&self, a: usize, b: usize) {
        self.network.cut(a, b);
    }

    fn mend(&self, a: usize, b: usize) {
        self.network.mend(a, b);
    }

    fn metrics(&self, node: usize) -> Option<String> {
        self.network.http_get(node, "/metrics")
    }

    fn amqp(&self) -> Vec<String> {
        (1..=3).map(Network::amqp).collect()
    }

    fn replicas(&self) -> String {
        (1..=3)
            .map(|node| {
                let output = self
                    .network
                    .wharf(node, &["--json", "topic", "describe", TOPIC]);
                described(node, &output)
            })
            .collect()
    }
}

/// The seed of this run: `WHARF_FAULT_SEED`, or the clock's.
fn seed() -> u64 {
    std::env::var("WHARF_FAULT_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("after the epoch")
                .as_nanos() as u64
        })
}

/// Waits until every partition gained [`PROGRESS`] acknowledgements over `before`; a stall
/// fails with each node's view of the partitions' replicas.
fn wait_for_progress(nodes: &dyn Nodes, writes: &[PathBuf], before: &[usize], what: &str) {
    let deadline = Instant::now() + RECOVERY_LIMIT;
    loop {
        let counts = acked_per_partition(writes);
        if counts
            .iter()
            .zip(before)
            .all(|(now, then)| *now >= then + PROGRESS)
        {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what}: no progress within {RECOVERY_LIMIT:?} (acknowledged per writer and \
                 partition, Kafka's first: {before:?} then {counts:?}); the replicas as each \
                 node sees them:\n{}",
                nodes.replicas()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The longest pause between two acknowledgements of one partition, the second of them
/// after `from` and not after `to` (the writer's view of a failover).
fn longest_pause(acked: &[Acked], from: f64, to: f64) -> f64 {
    let mut longest: f64 = 0.0;
    for partition in 0..PARTITIONS {
        let mut times: Vec<f64> = acked
            .iter()
            .filter(|record| record.partition == partition)
            .map(|record| record.at)
            .collect();
        times.sort_by(f64::total_cmp);
        for pair in times.windows(2) {
            if pair[1] > from && pair[1] <= to {
                longest = longest.max(pair[1] - pair[0]);
            }
        }
    }
    longest
}

/// The `name{labels} value` samples of node `node`'s `/metrics` whose name is `name`:
/// (labels as `key="value"` text, value); none while the node does not answer.
fn samples(nodes: &dyn Nodes, node: usize, name: &str) -> Vec<(String, f64)> {
    let body = nodes.metrics(node).unwrap_or_default();
    body.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// After the faults: every node's replica of each of the `partitions` replicated partitions
/// (both topics') names the same leader, and
/// that leader reports both other replicas in sync with no lag (the metrics of issue #21),
/// within 60 s (30 s until 2026-12-06, when one run of ten missed it with the queue's
/// clients just finished; its message did not say which replica lagged, it does now).
fn replicas_settle(nodes: &dyn Nodes, partitions: usize, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaders: Vec<Vec<(String, f64)>> = (1..=3)
            .map(|node| samples(nodes, node, "wharf_replica_leader"))
            .collect();
        let agreed = leaders[0].len() == partitions
            && leaders.iter().all(|seen| *seen == leaders[0])
            && leaders[0].iter().all(|(_, leader)| *leader >= 1.0);
        let settled = agreed
            && leaders[0].iter().all(|(labels, leader)| {
                let on_leader = *leader as usize;
                let in_sync: Vec<f64> = samples(nodes, on_leader, "wharf_replica_in_sync")
                    .into_iter()
                    .filter(|(seen, _)| seen.starts_with(labels.as_str()))
                    .map(|(_, value)| value)
                    .collect();
                let lag: Vec<f64> = samples(nodes, on_leader, "wharf_replica_lag_entries")
                    .into_iter()
                    .filter(|(seen, _)| seen.starts_with(labels.as_str()))
                    .map(|(_, value)| value)
                    .collect();
                in_sync == [1.0, 1.0] && lag == [0.0, 0.0]
            });
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the replicas' metrics did not settle within 60 s: leaders per node {leaders:?}; \
             in sync and lag per node: {:?}",
            (1..=3)
                .map(|node| (
                    samples(nodes, node, "wharf_replica_in_sync"),
                    samples(nodes, node, "wharf_replica_lag_entries"),
                    samples(nodes, node, "wharf_replica_term")
                ))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the three nodes: on 127.0.0.1, or each in its network namespace.
fn start_nodes(root: &Path, namespaces: bool, env: &[(String, String)]) -> Box<dyn Nodes> {
    if namespaces {
        let mut network = Network::build();
        for node in 1..=3 {
            // AMQP's guest/guest works from loopback only: the clients in the hub log in
            // as a user made offline in each node's directory (authentication stays
            // optional, so the Kafka and native clients need none).
            let created = integration_tests::wharfd_user_create(
                &root.join(format!("node-{node}")),
                AMQP_USER,
                AMQP_PASSWORD,
                &[],
            );
            assert!(
                created.status.success(),
                "wharfd user create: {}",
                String::from_utf8_lossy(&created.stderr)
            );
            network.start_with(root, node, true, env);
        }
        network.converged(&[1, 2, 3], "after start");
        return Box::new(Namespaced { network });
    }
    let (_, nodes) = three_nodes_with_env(root, env);
    let addresses: Vec<String> = nodes.iter().map(BrokerProcess::address).collect();
    converged(&addresses, 3, "after start");
    registered(&addresses);
    Box::new(Loopback { nodes, addresses })
}

/// Injects one fault of `kind` on `node` (for a bridge: cuts `node` from the next node, the
/// third bridging them) for `outage`; times the failover when the fault is a leader's.
fn inject(
    nodes: &mut dyn Nodes,
    kind: Kind,
    node: usize,
    partition: usize,
    outage: Duration,
) -> Option<Duration> {
    let others: Vec<usize> = (1..=3).filter(|other| *other != node).collect();
    // The nodes a kill takes down, `node` first.
    let killed: Vec<usize> = match kind {
        Kind::KillMajority => vec![node, node % 3 + 1],
        Kind::KillAll => vec![node, others[0], others[1]],
        _ => vec![node],
    };
    let began = Instant::now();
    match kind {
        Kind::KillLeader | Kind::KillAny | Kind::KillMajority | Kind::KillAll => {
            for node in &killed {
                nodes.kill(*node);
            }
        }
        Kind::PauseLeader | Kind::PauseAny => signal(nodes.pid(node), "-STOP"),
        Kind::IsolateLeader | Kind::IsolateAny => {
            for other in &others {
                nodes.cut(node, *other);
            }
        }
        Kind::Bridge => nodes.cut(node, others[0]),
    }
    // Through the outage a node that is up is asked who leads the partition.
    let mut failover = None;
    while began.elapsed() < outage {
        if kind.of_leader() && failover.is_none() && partition < PARTITIONS as usize {
            if let Some(leader) = nodes.leader_by(others[0], partition) {
                if leader >= 1 && usize::try_from(leader).ok() != Some(node) {
                    failover = Some(began.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match kind {
        Kind::KillLeader | Kind::KillAny | Kind::KillMajority | Kind::KillAll => {
            for node in &killed {
                nodes.restart(*node);
            }
        }
        Kind::PauseLeader | Kind::PauseAny => signal(nodes.pid(node), "-CONT"),
        Kind::IsolateLeader | Kind::IsolateAny => {
            for other in &others {
                nodes.mend(node, *other);
            }
        }
        Kind::Bridge => nodes.mend(node, others[0]),
    }
    failover
}

/// Runs the loop and returns the faults, the checker's verdict and, per fault, the longest
/// pause between acknowledgements after it.
fn run(settings: &Settings) -> (Vec<Fault>, Verdict, Vec<f64>) {
    // WHARF_FAULT_KEEP keeps the files of a failed run too (the brokers' data, the clients'
    // logs): the directory is not removed when a stall or the checker panics.
    let keep = std::env::var_os("WHARF_FAULT_KEEP").is_some();
    let root = tempfile::Builder::new()
        .disable_cleanup(keep)
        .tempdir()
        .expect("temp dir");
    if keep {
        eprintln!("the run's files are kept in {}", root.path().display());
    }
    // Quiet brokers (every fault makes openraft report unreachable peers) unless the
    // run asks for their logs with WHARF_LOG.
    let log = std::env::var("WHARF_LOG").unwrap_or_else(|_| "error,openraft=off".to_string());
    let mut env = vec![("WHARF_LOG".to_string(), log)];
    if settings.unsafe_acks {
        env.push((
            "WHARF_UNSAFE_ACK_BEFORE_COMMIT".to_string(),
            "1".to_string(),
        ));
    }
    let mut nodes = start_nodes(root.path(), settings.namespaces, &env);
    let bootstrap = nodes.bootstrap();
    let partitions = PARTITIONS.to_string();
    run_client(nodes.python(), &["create", &bootstrap, TOPIC, &partitions]);
    if settings.transactions {
        run_client(
            nodes.python(),
            &["create", &bootstrap, TXN_TOPIC, &partitions],
        );
    }

    let stop: PathBuf = root.path().join("stop");
    let writes = root.path().join("writes.txt");
    let native_writes = root.path().join("native-writes.txt");
    let reads = root.path().join("reads.txt");
    let path = |path: &Path| path.display().to_string();
    let rate = RATE.to_string();
    let mut writer = Background::start(
        nodes.python(),
        &[
            "write",
            &bootstrap,
            TOPIC,
            &partitions,
            settings.acks,
            &rate,
            &path(&stop),
            &path(&writes),
        ],
        &root.path().join("writer.json"),
    );
    let mut reader = Background::start(
        nodes.python(),
        &[
            "read",
            &bootstrap,
            TOPIC,
            &partitions,
            &path(&stop),
            &path(&reads),
        ],
        &root.path().join("reader.json"),
    );
    // Wharf's own client writes beside librdkafka, idempotent with acks=all too (not in
    // the control run, whose point is the acks=1 writer's losses).
    let native_writer = settings.native.then(|| {
        Background::start(
            nodes.client(Path::new(env!("CARGO_BIN_EXE_native_faults"))),
            &[
                &nodes.native_bootstrap(),
                TOPIC,
                &partitions,
                &NATIVE_RATE.to_string(),
                &path(&stop),
                &path(&native_writes),
            ],
            &root.path().join("native-writer.json"),
        )
    });
    // The replicated queue's clients, where the nodes have AMQP listeners.
    let amqp = nodes.amqp().join(",");
    let queue_published = root.path().join("queue-published.txt");
    let queue_consumed = root.path().join("queue-consumed.txt");
    let queue_clients = (settings.queues && !amqp.is_empty()).then(|| {
        let pika = || {
            let mut command = nodes.client(&client_python());
            command.arg(workspace_root().join("tests/clients/pika_queue_faults.py"));
            command
        };
        run_client(pika(), &["declare", &amqp, QUEUE]);
        let publisher = Background::start(
            pika(),
            &[
                "publish",
                &amqp,
                QUEUE,
                &QUEUE_RATE.to_string(),
                &path(&stop),
                &path(&queue_published),
            ],
            &root.path().join("queue-publisher.json"),
        );
        let consumer = Background::start(
            pika(),
            &[
                "consume",
                &amqp,
                QUEUE,
                &path(&stop),
                &path(&queue_consumed),
            ],
            &root.path().join("queue-consumer.json"),
        );
        (publisher, consumer)
    });
    // The transactional producer, on a topic of its own (its coordinator is the leader of
    // the coordinators' partition; the faults hit that node as any other).
    let txn_outcomes = root.path().join("txn-outcomes.txt");
    let txn_client = settings.transactions.then(|| {
        Background::start(
            nodes.python(),
            &[
                "txn",
                &bootstrap,
                TXN_TOPIC,
                &partitions,
                &path(&stop),
                &path(&txn_outcomes),
            ],
            &root.path().join("txn-producer.json"),
        )
    });
    let txns_ended = || {
        std::fs::read_to_string(&txn_outcomes)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("C ") || line.starts_with("A "))
            .count()
    };
    let queue_confirms = || {
        std::fs::read_to_string(&queue_published)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("C "))
            .count()
    };
    let writes_files: Vec<PathBuf> = if settings.native {
        vec![writes.clone(), native_writes.clone()]
    } else {
        vec![writes.clone()]
    };
    let zero = vec![0; PARTITIONS as usize * writes_files.len()];
    wait_for_progress(
        nodes.as_ref(),
        &writes_files,
        &zero,
        "before the first fault",
    );

    let mut rng = SplitMix(settings.seed);
    let mut faults = Vec::new();
    // A leader fault picks one of the partitions or, with the queue running, the queue
    // (index PARTITIONS).
    let targets = u64::from(PARTITIONS) + u64::from(queue_clients.is_some());
    for number in 0..settings.faults {
        let kind = settings.kinds[rng.below(settings.kinds.len() as u64) as usize];
        let partition = rng.below(targets) as usize;
        let any = rng.below(3) as usize + 1;
        let leaders = nodes.leaders();
        let node = if !kind.of_leader() {
            any
        } else if partition < PARTITIONS as usize {
            usize::try_from(leaders[partition])
                .unwrap_or(any)
                .clamp(1, 3)
        } else {
            queue_leader(nodes.as_ref()).unwrap_or(any)
        };
        let queue_before = queue_confirms();
        let txns_before = txns_ended();
        let outage = match kind {
            Kind::KillLeader | Kind::KillAny | Kind::KillMajority | Kind::KillAll => {
                millis(&mut rng, 200, 3_000)
            }
            _ => millis(&mut rng, 500, 4_000),
        };
        let before = acked_per_partition(&writes_files);
        let at = now();
        let failover = inject(nodes.as_mut(), kind, node, partition, outage);
        let fault = Fault {
            kind,
            node,
            at,
            outage,
            failover,
        };
        eprintln!("fault {number}: {fault:?}, partition leaders before {leaders:?}");
        faults.push(fault);
        wait_for_progress(
            nodes.as_ref(),
            &writes_files,
            &before,
            &format!("seed {}, after fault {number}", settings.seed),
        );
        if queue_clients.is_some() {
            let deadline = Instant::now() + RECOVERY_LIMIT;
            while queue_confirms() < queue_before + QUEUE_PROGRESS {
                assert!(
                    Instant::now() < deadline,
                    "seed {}, after fault {number}: the queue's publisher got no {QUEUE_PROGRESS} \
                     confirms within {RECOVERY_LIMIT:?} ({queue_before} before, {} now; its \
                     log: queue-publisher.log)",
                    settings.seed,
                    queue_confirms()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if txn_client.is_some() {
            let deadline = Instant::now() + RECOVERY_LIMIT;
            while txns_ended() < txns_before + TXN_PROGRESS {
                assert!(
                    Instant::now() < deadline,
                    "seed {}, after fault {number}: the transactional producer ended no \
                     {TXN_PROGRESS} transactions within {RECOVERY_LIMIT:?} ({txns_before} \
                     before, {} now; its log: txn-producer.log)",
                    settings.seed,
                    txns_ended()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        std::thread::sleep(millis(&mut rng, 0, 1_000));
    }

    std::fs::write(&stop, b"").expect("stop file");
    assert!(
        writer.finish(Duration::from_secs(150)),
        "the writer did not finish"
    );
    if let Some(mut native_writer) = native_writer {
        assert!(
            native_writer.finish(Duration::from_secs(150)),
            "the native writer did not finish (its log: native-writer.log)"
        );
    }
    assert!(
        reader.finish(Duration::from_secs(60)),
        "the reader did not finish"
    );
    let queue_verdict = queue_clients.map(|(mut publisher, mut consumer)| {
        assert!(
            publisher.finish(Duration::from_secs(60)),
            "the queue's publisher did not finish (its log: queue-publisher.log)"
        );
        // The consumer goes on until the queue stayed empty for 15 s.
        assert!(
            consumer.finish(Duration::from_secs(180)),
            "the queue's consumer did not finish (its log: queue-consumer.log)"
        );
        check_queue(
            &std::fs::read_to_string(&queue_published).unwrap_or_default(),
            &std::fs::read_to_string(&queue_consumed).unwrap_or_default(),
        )
    });
    let txn_verdict = txn_client.map(|mut producer| {
        assert!(
            producer.finish(Duration::from_secs(150)),
            "the transactional producer did not finish (its log: txn-producer.log)"
        );
        let read = run_client(
            nodes.python(),
            &["readcommitted", &bootstrap, TXN_TOPIC, &partitions],
        );
        check_txns(
            &std::fs::read_to_string(&txn_outcomes).unwrap_or_default(),
            &stored_records(&read),
        )
    });
    let stored_json = run_client(nodes.python(), &["readall", &bootstrap, TOPIC, &partitions]);
    let stored = stored_records(&stored_json);
    let (mut acked, mut failed) = read_writes(&writes);
    if settings.native {
        let (native_acked, native_failed) = read_writes(&native_writes);
        eprintln!("the native writer: {} acknowledged", native_acked.len());
        acked.extend(native_acked);
        failed.extend(native_failed);
    }
    let seen = read_seen(&reads);
    let mut verdict = check(&acked, &failed, &seen, &stored);
    verdict.queue = queue_verdict;
    verdict.txn = txn_verdict;
    let topics = if settings.transactions { 2 } else { 1 };
    // And the coordinators' partition, __consumer_offsets-0 (replicated too).
    replicas_settle(
        nodes.as_ref(),
        PARTITIONS as usize * topics + 1,
        settings.seed,
    );
    let ends: Vec<f64> = faults
        .iter()
        .skip(1)
        .map(|fault| fault.at)
        .chain([f64::MAX])
        .collect();
    let pauses = faults
        .iter()
        .zip(ends)
        .map(|(fault, end)| longest_pause(&acked, fault.at, end))
        .collect();
    drop(nodes);
    (faults, verdict, pauses)
}

/// The real loop: an idempotent acks=all writer, `kinds` of faults, `WHARF_FAULTS` of them
/// (else `default_faults`); asserts the checker found nothing and prints the figures.
fn real_loop(namespaces: bool, kinds: &'static [Kind], default_faults: usize) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let seed = seed();
    let faults = std::env::var("WHARF_FAULTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default_faults);
    let settings = Settings {
        seed,
        faults,
        kinds,
        acks: "all",
        unsafe_acks: false,
        namespaces,
        native: true,
        queues: true,
        transactions: true,
    };
    let (injected, verdict, pauses) = run(&settings);
    for (fault, pause) in injected.iter().zip(&pauses) {
        eprintln!(
            "{:?} of node {} for {} ms: new leader named after {:?} ms, longest pause \
             between acknowledgements {pause:.2} s",
            fault.kind,
            fault.node,
            fault.outage.as_millis(),
            fault.failover.map(|failover| failover.as_millis())
        );
    }
    let mut failovers: Vec<Duration> = injected.iter().filter_map(|fault| fault.failover).collect();
    failovers.sort();
    let leader_faults = injected
        .iter()
        .filter(|fault| fault.kind.of_leader())
        .count();
    if let (Some(median), Some(longest)) = (failovers.get(failovers.len() / 2), failovers.last()) {
        eprintln!(
            "failover: {} of {leader_faults} leader faults named a new leader within the \
             outage, median {} ms, max {} ms",
            failovers.len(),
            median.as_millis(),
            longest.as_millis()
        );
    }
    let mut sorted = pauses.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let longest = sorted.last().copied().unwrap_or(0.0);
    eprintln!(
        "fault loop (seed {seed}{}): {} faults, {}; longest pause between acknowledgements \
         after a fault: median {median:.2} s, max {longest:.2} s",
        if namespaces { ", namespaces" } else { "" },
        injected.len(),
        verdict.summary()
    );
    assert!(
        verdict.clean(),
        "seed {seed}: the checker found {}: {verdict:#?}",
        verdict.summary()
    );
    assert!(verdict.acknowledged > 0, "nothing was acknowledged");
}

#[test]
fn acknowledged_records_survive_a_seeded_loop_of_kills_and_pauses() {
    // Goal: issue #21's promise under faults: with acks=all an acknowledged record
    // survives any single failed or paused broker, exactly once, in order, and no consumer
    // sees a record that later disappears. Method: the seeded loop above with an idempotent
    // acks=all librdkafka producer and one of Wharf's own client; the checker's findings
    // must all be empty. (Until 2026-12-06 CI ran SIGKILLs only: librdkafka's producer
    // could stay on a paused leader after it resumed, docs/CLUSTER.md, "Stalls the loop
    // found", 4 and 5.) Since 2026-12-07 past a minority too: two nodes SIGKILLed at once
    // (nothing commits until one is back) and all three (every process crashes and
    // restarts from what it wrote); nothing acknowledged may be lost there either, and the
    // cluster must go on.
    real_loop(
        false,
        &[
            Kind::KillLeader,
            Kind::KillAny,
            Kind::PauseLeader,
            Kind::PauseAny,
            Kind::KillMajority,
            Kind::KillAll,
        ],
        8,
    );
}

#[test]
fn acknowledged_records_survive_network_partitions_isolated_leaders_and_bridges() {
    // Goal: the same promise when the network, not the process, fails: a leader cut off
    // from both followers while clients still reach it (the minority side), any node cut
    // off, and a bridge (two nodes cut apart, the third reaching both), mixed with kills
    // and pauses. Method: the nodes in network namespaces (integration_tests::netns), the
    // clients in the hub; blackhole routes cut the links between nodes.
    // In CI since 2026-12-06 with the queue and the transactions too (it was opt-in after
    // one CI run's final read got "Unknown partition" from librdkafka for 60 s,
    // docs/CLUSTER.md, "Stalls the loop found", 6). Skipped, saying why, where namespaces
    // cannot be made (not root, or a kernel that refuses them).
    if !namespaces_allowed() {
        return;
    }
    real_loop(
        true,
        &[
            Kind::IsolateLeader,
            Kind::IsolateAny,
            Kind::Bridge,
            Kind::KillLeader,
            Kind::PauseLeader,
        ],
        6,
    );
}

/// Whether this process may make network namespaces (root, a kernel that allows them);
/// prints why not when it may not.
fn namespaces_allowed() -> bool {
    let name = format!("whprobe{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &name]).output();
    match made {
        Ok(output) if output.status.success() => {
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
            true
        }
        Ok(output) => {
            eprintln!(
                "skipped: cannot make a network namespace here ({})",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            false
        }
        Err(error) => {
            eprintln!("skipped: cannot run ip ({error})");
            false
        }
    }
}

#[test]
fn the_checker_catches_the_loss_of_a_broker_that_acknowledges_before_the_quorum() {
    // Goal: the control run. The same loop against brokers that acknowledge a replicated
    // produce as soon as the leader submitted it (no majority), with an acks=1 producer,
    // killing and pausing leaders: acknowledged records are lost, and the checker must
    // say so — otherwise a clean real run would prove nothing.
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let seed = seed();
    let settings = Settings {
        seed,
        // Eight: each leader kill or pause loses records only when it catches acknowledged
        // records short of the majority (one run of four faults lost just 1, 2026-12-06).
        faults: 8,
        kinds: &[Kind::KillLeader, Kind::PauseLeader],
        acks: "1",
        unsafe_acks: true,
        namespaces: false,
        native: false,
        queues: false,
        transactions: false,
    };
    let (injected, verdict, _) = run(&settings);
    eprintln!(
        "control run (seed {seed}): {} faults, {}",
        injected.len(),
        verdict.summary()
    );
    assert!(
        !verdict.lost.is_empty(),
        "seed {seed}: the control run lost nothing the checker saw: {}",
        verdict.summary()
    );
}

#[test]
fn the_checker_finds_each_kind_of_violation() {
    // Goal: the checker itself, on hand-made histories: a clean one passes; a lost,
    // duplicated, moved, reordered and vanished record are each reported.
    let acked = |partition: u32, offset: i64, value: &str| Acked {
        at: 0.0,
        partition,
        offset,
        value: value.to_string(),
    };
    let stored: BTreeMap<u32, Vec<(i64, String)>> = BTreeMap::from([
        (0, vec![(0, "0-0".to_string()), (1, "0-1".to_string())]),
        (1, vec![(0, "1-0".to_string())]),
    ]);
    let clean = check(
        &[acked(0, 0, "0-0"), acked(0, 1, "0-1"), acked(1, 0, "1-0")],
        &[],
        &[(0, 1, "0-1".to_string())],
        &stored,
    );
    assert!(clean.clean(), "{clean:#?}");

    let lost = check(&[acked(1, 1, "1-1")], &[], &[], &stored);
    assert_eq!(lost.lost.len(), 1, "{lost:#?}");
    let moved = check(&[acked(0, 5, "0-1")], &[], &[], &stored);
    assert_eq!(moved.moved.len(), 1, "{moved:#?}");
    let vanished = check(&[], &[], &[(1, 1, "1-1".to_string())], &stored);
    assert_eq!(vanished.vanished.len(), 1, "{vanished:#?}");

    let messy: BTreeMap<u32, Vec<(i64, String)>> = BTreeMap::from([(
        0,
        vec![
            (0, "0-1".to_string()),
            (1, "0-0".to_string()),
            (2, "0-1".to_string()),
        ],
    )]);
    let verdict = check(&[], &[], &[], &messy);
    assert_eq!(verdict.duplicated.len(), 1, "{verdict:#?}");
    assert_eq!(verdict.disordered.len(), 1, "{verdict:#?}");
    assert!(!verdict.clean());

    // The queue: a confirmed message delivered (twice is allowed), one failed publish that
    // was stored after all, and one confirmed message never delivered.
    let published = "C 1.0 q-0\nF 1.1 q-1 connection lost\nC 1.2 q-2\n";
    let consumed = "D 2.0 q-0 0\nD 2.1 q-1 0\nD 2.2 q-0 1\n";
    let queue = check_queue(published, consumed);
    assert_eq!(queue.lost, ["q-2"], "{queue:#?}");
    assert_eq!(
        (queue.confirmed, queue.delivered, queue.repeated),
        (2, 3, 1)
    );
    assert_eq!(queue.redelivered, 1);
    let unknown = check_queue(published, "D 2.0 q-9 0\nD 2.0 q-0 0\nD 2.0 q-2 0\n");
    assert_eq!(unknown.unknown, ["q-9"], "{unknown:#?}");
    assert!(unknown.lost.is_empty());
    let with_queue = Verdict {
        queue: Some(unknown),
        ..Verdict::default()
    };
    assert!(
        !with_queue.clean(),
        "a delivery never published is a finding"
    );

    // Transactions of two records over two partitions: t0 committed, t1 aborted, t2 ended
    // by a failed producer, t3 committed.
    let outcomes = "C 1.0 0\nA 1.1 1\nU 1.2 2 fenced\nC 1.3 3\n";
    let records = |values: &[&str]| -> Vec<(i64, String)> {
        values
            .iter()
            .enumerate()
            .map(|(offset, value)| (offset as i64, (*value).to_string()))
            .collect()
    };
    let whole = BTreeMap::from([
        (0, records(&["t0-0/2", "t3-0/2"])),
        (1, records(&["t0-1/2", "t3-1/2"])),
    ]);
    let verdict = check_txns(outcomes, &whole);
    assert!(verdict.clean(), "{verdict:#?}");
    assert_eq!(
        (verdict.committed, verdict.aborted, verdict.unknown),
        (2, 1, 1)
    );
    // The unknown one visible whole is fine too.
    let unknown_whole = BTreeMap::from([
        (0, records(&["t0-0/2", "t2-0/2", "t3-0/2"])),
        (1, records(&["t0-1/2", "t2-1/2", "t3-1/2"])),
    ]);
    assert!(check_txns(outcomes, &unknown_whole).clean());
    let broken = BTreeMap::from([
        (0, records(&["t0-0/2", "t1-0/2", "t3-0/2", "t2-0/2"])),
        (1, records(&["t0-1/2", "t0-1/2", "t1-1/2"])),
    ]);
    let verdict = check_txns(outcomes, &broken);
    assert_eq!(verdict.aborted_visible, ["t1: 2 records"], "{verdict:#?}");
    assert_eq!(verdict.partial.len(), 2, "t2 and t3 in part: {verdict:#?}");
    assert_eq!(verdict.duplicated.len(), 1, "{verdict:#?}");
    assert_eq!(verdict.disordered.len(), 1, "{verdict:#?}");
    let lost = check_txns(
        outcomes,
        &BTreeMap::from([(0, records(&["t3-0/2"])), (1, records(&["t3-1/2"]))]),
    );
    assert_eq!(lost.lost, ["t0"], "{lost:#?}");
    let with_txn = Verdict {
        txn: Some(lost),
        ..Verdict::default()
    };
    assert!(
        !with_txn.clean(),
        "a lost committed transaction is a finding"
    );
}
