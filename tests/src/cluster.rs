//! Helpers for the tests that run several `wharfd` processes as one cluster (issues #20 and
//! #21): free ports for the cluster listeners, three nodes given each other as peers, the
//! cluster status and convergence, and the native metadata's view of brokers and leaders.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{wharf, BrokerProcess};

/// Ports handed out by [`free_port`] so far in this process.
static PORTS_HANDED_OUT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A free port on 127.0.0.1 for a node's cluster listener (bound then released: the node
/// binds it again at once), taken below the kernel's ephemeral port range. A port the
/// kernel hands out for `bind(0)` comes from that range, where any outgoing connection of
/// the tests running beside this one may take it as its local port before the node binds
/// it (a CI run failed so: "cannot bind the cluster listener ... Address already in use").
/// Below the range only an explicit bind takes a port; successive calls probe different
/// ports, so the tests of this file do not pick the same one.
pub fn free_port() -> u16 {
    const LOWEST: u32 = 10_000;
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    if span >= 1_000 {
        let seed = std::process::id().wrapping_mul(7_919);
        for _ in 0..span {
            let next = PORTS_HANDED_OUT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let port = LOWEST + seed.wrapping_add(next) % span;
            let port = u16::try_from(port).expect("below the ephemeral range");
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Starts node 4 (data in `root/node-4`, peers `peers` and itself) and adds it with
/// `wharf cluster add-node` through `via`; waits until all four nodes converge and list
/// each other (`addresses` are the first three). Returns the node and the statuses.
pub fn add_fourth_node(
    root: &Path,
    peers: &str,
    addresses: &[String],
    via: &str,
) -> (BrokerProcess, Vec<Value>) {
    let port4 = free_port();
    let fourth = start_node(
        &root.join("node-4"),
        4,
        &format!("{peers},4@127.0.0.1:{port4}"),
    );
    let added = wharf(
        via,
        &["cluster", "add-node", "4", &format!("127.0.0.1:{port4}")],
        "",
    );
    assert!(
        added.status.success(),
        "add-node failed: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let mut four = addresses.to_vec();
    four.push(fourth.address());
    let statuses = converged(&four, 4, "after add-node");
    registered_only(&four);
    (fourth, statuses)
}

/// Node `node_id` of the cluster `peers` with its data in `data_dir`.
pub fn start_node(data_dir: &Path, node_id: u64, peers: &str) -> BrokerProcess {
    start_node_sealed(data_dir, node_id, peers, "wharf-cluster-test-secret")
}

/// A node whose internal frames are sealed with `secret` (a file beside its data directory;
/// the nodes of these tests share one, so their internal wire is always sealed).
pub fn start_node_sealed(
    data_dir: &Path,
    node_id: u64,
    peers: &str,
    secret: &str,
) -> BrokerProcess {
    start_node_with_env(data_dir, node_id, peers, secret, &[])
}

/// As [`start_node_sealed`], with `env` in the node's environment (kept across restarts).
pub fn start_node_with_env(
    data_dir: &Path,
    node_id: u64,
    peers: &str,
    secret: &str,
    env: &[(String, String)],
) -> BrokerProcess {
    let parent = data_dir
        .parent()
        .expect("a data directory inside the test's root");
    let secret_file = parent.join(format!("{secret}.txt"));
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write the secret");
    let args: Vec<String> = [
        "--node-id",
        &node_id.to_string(),
        "--cluster-peers",
        peers,
        "--cluster-secret-file",
        &secret_file.display().to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    BrokerProcess::start_listening_with_env(data_dir, "127.0.0.1:0", &args, env)
}

/// Nodes 1, 2 and 3 under `root` (`node-N`), each given all three as `--cluster-peers`;
/// returns the peers text and the nodes.
pub fn three_nodes(root: &Path) -> (String, Vec<BrokerProcess>) {
    three_nodes_with_env(root, &[])
}

/// As [`three_nodes`], with `env` in each node's environment.
pub fn three_nodes_with_env(root: &Path, env: &[(String, String)]) -> (String, Vec<BrokerProcess>) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = (1..=3)
        .map(|id| format!("{id}@127.0.0.1:{}", ports[id - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = (1..=3)
        .map(|id| {
            let dir = root.join(format!("node-{id}"));
            start_node_with_env(&dir, id, &peers, "wharf-cluster-test-secret", env)
        })
        .collect();
    (peers, nodes)
}

/// `wharf cluster status --json` of the node at `broker`, or None while it cannot answer.
pub fn status(broker: &str) -> Option<Value> {
    let output = wharf(broker, &["--json", "cluster", "status"], "");
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// Waits until every node in `brokers` reports the same cluster and leader, `voters` voting
/// members, and the same applied index; returns the statuses.
pub fn converged(brokers: &[String], voters: usize, what: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let statuses: Vec<Option<Value>> = brokers.iter().map(|broker| status(broker)).collect();
        if let Some(statuses) = statuses.into_iter().collect::<Option<Vec<Value>>>() {
            let same = |key: &str| {
                statuses
                    .iter()
                    .all(|status| status[key] == statuses[0][key])
            };
            let voting = |status: &Value| {
                status["nodes"].as_array().map_or(0, |nodes| {
                    nodes.iter().filter(|node| node["voter"] == true).count()
                })
            };
            // The leader is one of the nodes asked, and says so itself.
            let leading: Vec<&Value> = statuses
                .iter()
                .filter(|status| status["role"] == "leader")
                .collect();
            if std::env::var("WHARF_TEST_TRACE").is_ok() {
                eprintln!(
                    "{what}: {:?}",
                    statuses
                        .iter()
                        .map(|s| (
                            s["node_id"].clone(),
                            s["role"].clone(),
                            s["leader_id"].clone()
                        ))
                        .collect::<Vec<_>>()
                );
            }
            if leading.len() == 1
                && leading[0]["node_id"] == statuses[0]["leader_id"]
                && statuses[0]["cluster_id"].is_string()
                && same("leader_id")
                && same("cluster_id")
                && same("last_applied_index")
                && statuses.iter().all(|status| voting(status) == voters)
            {
                return statuses;
            }
            last = statuses;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: the nodes did not converge within 60 s; last statuses: {last:#?}");
}

/// The native metadata answer of the node at `broker` for `topics`.
pub fn native_metadata(
    broker: &str,
    topics: Vec<String>,
) -> wharf_protocol::messages::MetadataResponse {
    use wharf_protocol::messages::MetadataRequest;
    use wharf_protocol::{Request, Response};
    let address = broker.parse().expect("a socket address");
    let mut client = crate::RawClient::connect(address);
    let Response::Metadata(metadata) = client.call(&Request::Metadata(MetadataRequest {
        topics: Some(topics),
    })) else {
        panic!("not a metadata answer")
    };
    metadata
}

/// The partition leaders of `topic` as the native metadata of the node at `broker` reports
/// them, by partition.
pub fn native_leaders(broker: &str, topic: &str) -> Vec<i32> {
    native_metadata(broker, vec![topic.to_string()]).topics[0]
        .partitions
        .iter()
        .map(|partition| partition.leader)
        .collect()
}

/// Waits until every node's metadata lists all of `brokers` (each node registered its
/// listeners through the metadata log, so placement counts it), then until one of them
/// coordinates groups (the coordinators' partition is placed before anything the test
/// places, so placements are the same in every run). Returns the index of the node that
/// coordinates (node 1 as a rule, but another when its first election was lost).
pub fn registered(brokers: &[String]) -> usize {
    registered_only(brokers);
    coordinating(brokers)
}

/// Waits until one of `brokers` answers a native OffsetFetch without NotCoordinator:
/// the cluster has placed `__consumer_offsets` and its leader took over coordination
/// (`core/coordination.rs`). Returns the index of that broker.
pub fn coordinating(brokers: &[String]) -> usize {
    use wharf_protocol::messages::OffsetFetchRequest;
    use wharf_protocol::{ErrorCode, Request, Response};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (index, broker) in brokers.iter().enumerate() {
            let address = broker.parse().expect("a socket address");
            let mut client = crate::RawClient::connect(address);
            let answer = client.call(&Request::OffsetFetch(OffsetFetchRequest {
                group_id: "coordinator-probe".to_string(),
                topics: Some(Vec::new()),
            }));
            if let Response::OffsetFetch(fetched) = answer {
                if fetched.error != ErrorCode::NotCoordinator {
                    return index;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node coordinates groups within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`registered`] without waiting for a coordinator.
pub fn registered_only(brokers: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: Vec<Vec<String>> = brokers
            .iter()
            .map(|broker| {
                let mut listed: Vec<String> = native_metadata(broker, Vec::new())
                    .brokers
                    .iter()
                    .map(|info| format!("{}:{}", info.host, info.port))
                    .collect();
                listed.sort();
                listed
            })
            .collect();
        let mut wanted = brokers.to_vec();
        wanted.sort();
        if listed.iter().all(|seen| *seen == wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes not all registered within 30 s: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
