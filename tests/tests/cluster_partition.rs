//! A cluster of three `wharfd` processes cut apart by the network (issue #20): each node runs
//! in its own network namespace, joined to the others through a bridge in a fourth ("hub")
//! namespace; a cut takes a node's link to the bridge down. The metadata log must hold under
//! an isolated leader: the majority elects another leader and goes on committing, the cut-off
//! node commits nothing, and after the heal every node agrees on what was committed.
//!
//! Needs root and iproute2 (`ip netns`, veth, bridge), as `.ci/run` has (scripts/test.sh
//! installs iproute2).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{wharf_path, wharfd_path};
use serde_json::Value;

/// The node ports inside each namespace (every namespace has its own port space).
const NATIVE_PORT: u16 = 7420;
const INTERNAL_PORT: u16 = 7700;

/// Runs `ip args`, panicking with its output unless it succeeds.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A node's link to the bridge.
#[derive(Debug, Clone, Copy)]
enum Link {
    Up,
    Down,
}

/// Three node namespaces and a hub namespace with a bridge, torn down on drop (with the
/// processes in them).
struct Network {
    prefix: String,
    nodes: Vec<Option<Child>>,
}

impl Network {
    fn namespace(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// Node `node`'s address on the bridge.
    fn address(node: usize) -> String {
        format!("10.77.0.{node}")
    }

    /// Node `node`'s native listener.
    fn broker(node: usize) -> String {
        format!("{}:{NATIVE_PORT}", Network::address(node))
    }

    fn build() -> Network {
        let prefix = format!("wh{}", std::process::id());
        let network = Network {
            prefix,
            nodes: Vec::new(),
        };
        let hub = network.hub();
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "addr", "add", "10.77.0.254/24", "dev", "br0"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for node in 1..=3 {
            let namespace = network.namespace(node);
            let port = format!("b{node}");
            ip(&["netns", "add", &namespace]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
            ip(&[
                "link", "add", "eth0", "netns", &namespace, "type", "veth", "peer", "name", &port,
                "netns", &hub,
            ]);
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{}/24", Network::address(node)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &namespace, "link", "set", "eth0", "up"]);
            ip(&["-n", &hub, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &port, "up"]);
        }
        network
    }

    /// Starts node `node` (1–3) in its namespace with a data directory under `root`.
    fn start(&mut self, root: &Path, node: usize) {
        let peers = (1..=3)
            .map(|id| format!("{id}@{}:{INTERNAL_PORT}", Network::address(id)))
            .collect::<Vec<_>>()
            .join(",");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespace(node)])
            .arg(wharfd_path())
            .arg("--data-dir")
            .arg(root.join(format!("node-{node}")))
            .args([
                "--listen",
                &Network::broker(node),
                "--kafka-listen",
                "off",
                "--amqp-listen",
                "off",
                "--http-listen",
                "off",
                "--node-id",
                &node.to_string(),
                "--cluster-peers",
                &peers,
                // The listener binds beyond loopback (the namespace's address): no users
                // here, so logins are optional.
                "--authentication",
                "optional",
            ])
            .env(
                "WHARF_LOG",
                std::env::var("WHARF_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting wharfd in its namespace");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("wharfd did not report its listener");
        assert!(line.contains(&Network::broker(node)), "{line:?}");
        while self.nodes.len() < node {
            self.nodes.push(None);
        }
        self.nodes[node - 1] = Some(child);
    }

    /// Sets node `node`'s link to the bridge up or down.
    fn link(&self, node: usize, state: Link) {
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            &format!("b{node}"),
            match state {
                Link::Up => "up",
                Link::Down => "down",
            },
        ]);
    }

    /// `wharf --broker <node> args`, run from the hub (which reaches every node while its
    /// link is up).
    fn wharf(&self, node: usize, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.hub()])
            .arg(wharf_path())
            .args(["--broker", &Network::broker(node)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running wharf in the hub")
    }

    /// Node `node`'s `cluster status`, or None while it cannot answer.
    fn status(&self, node: usize) -> Option<Value> {
        let output = self.wharf(node, &["--json", "cluster", "status"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Waits until `nodes` report one leader among them, the same term and applied index;
    /// returns that leader.
    fn converged(&self, nodes: &[usize], what: &str) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = Vec::new();
        while Instant::now() < deadline {
            let statuses: Vec<Option<Value>> =
                nodes.iter().map(|node| self.status(*node)).collect();
            if let Some(statuses) = statuses.iter().cloned().collect::<Option<Vec<Value>>>() {
                let same = |key: &str| {
                    statuses
                        .iter()
                        .all(|status| status[key] == statuses[0][key])
                };
                let leader = statuses[0]["leader_id"].as_u64();
                let leader_here = leader.is_some_and(|leader| {
                    nodes.contains(&usize::try_from(leader).unwrap_or(0))
                        && statuses.iter().any(|status| {
                            status["node_id"].as_u64() == Some(leader) && status["role"] == "leader"
                        })
                });
                if leader_here && same("leader_id") && same("term") && same("last_applied_index") {
                    return leader.unwrap_or(0);
                }
            }
            last = statuses;
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{what}: nodes {nodes:?} did not converge within 60 s: {last:#?}");
    }

    /// The topics node `node` lists, sorted.
    fn topics(&self, node: usize) -> Vec<String> {
        let output = self.wharf(node, &["--json", "topic", "list"]);
        assert!(
            output.status.success(),
            "topic list on node {node}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listed: Vec<Value> = serde_json::from_slice(&output.stdout).expect("a JSON list");
        let mut names: Vec<String> = listed
            .iter()
            .map(|topic| topic["name"].as_str().expect("a name").to_string())
            .collect();
        names.sort();
        names
    }

    /// Waits until every node lists exactly `wanted`.
    fn topics_agree(&self, wanted: &[&str], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed: Vec<Vec<String>> = (1..=3).map(|node| self.topics(node)).collect();
            if listed.iter().all(|names| names == wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: topics per node {listed:?}, wanted {wanted:?} on all"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for namespace in (1..=3)
            .map(|node| self.namespace(node))
            .chain(std::iter::once(self.hub()))
        {
            let _ = Command::new("ip")
                .args(["netns", "delete", &namespace])
                .output();
        }
    }
}

#[test]
fn an_isolated_leader_commits_nothing_while_the_majority_elects_another_and_goes_on() {
    // Goal: issue #20's metadata log under a real network partition between processes. The
    // leader is cut off from both followers: the two elect a new leader (a higher term) and
    // commit a topic; a topic proposed on the cut-off node is not committed (the call fails)
    // and appears nowhere, before or after the heal; once healed, the old leader follows the
    // new one and every node lists exactly the committed topics.
    let root = tempfile::tempdir().expect("temp dir");
    let mut network = Network::build();
    for node in 1..=3 {
        network.start(root.path(), node);
    }
    let leader = network.converged(&[1, 2, 3], "after start");
    let created = network.wharf(1, &["topic", "create", "before", "--partitions", "1"]);
    assert!(
        created.status.success(),
        "create before the cut: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    network.topics_agree(&["before"], "before the cut");

    let isolated = usize::try_from(leader).expect("a node id");
    let majority: Vec<usize> = (1..=3).filter(|node| *node != isolated).collect();
    network.link(isolated, Link::Down);
    let new_leader = network.converged(&majority, "after the cut");
    assert_ne!(
        new_leader, leader,
        "the cut-off node still leads the majority"
    );

    let committed = network.wharf(
        majority[0],
        &["topic", "create", "majority", "--partitions", "1"],
    );
    assert!(
        committed.status.success(),
        "create on the majority: {}",
        String::from_utf8_lossy(&committed.stderr)
    );
    // The hub cannot reach the cut-off node; it is asked to propose from inside its own
    // namespace, where its listener is still reachable.
    let refused = Command::new("ip")
        .args(["netns", "exec", &network.namespace(isolated)])
        .arg(wharf_path())
        .args(["--broker", &Network::broker(isolated)])
        .args(["topic", "create", "minority", "--partitions", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("running wharf in the cut-off node's namespace");
    assert!(
        !refused.status.success(),
        "a topic was created on a node cut off from the majority: {}",
        String::from_utf8_lossy(&refused.stdout)
    );

    network.link(isolated, Link::Up);
    let healed = network.converged(&[1, 2, 3], "after the heal");
    assert_eq!(
        healed, new_leader,
        "the majority's leader leads after the heal"
    );
    network.topics_agree(&["before", "majority"], "after the heal");
}
