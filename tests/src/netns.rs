//! Three `wharfd` nodes in network namespaces of their own, joined through a bridge in a
//! fourth ("hub") namespace, for the tests that cut the network between processes (issues
//! #20 and #21): a node's link to the bridge goes down (cut from everyone, clients too), or
//! the link between two nodes is cut with blackhole routes (clients in the hub still reach
//! both). Needs root and iproute2, as `.ci/run` has.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{wharf_path, wharfd_path};

/// The native listener's port inside each namespace (every namespace has its own port
/// space).
pub const NATIVE_PORT: u16 = 7420;
/// The cluster listener's port inside each namespace.
pub const INTERNAL_PORT: u16 = 7700;
/// The Kafka listener's port inside each namespace (when [`Network::start_with`] turns the
/// front ends on).
pub const KAFKA_PORT: u16 = 9092;
/// The AMQP listener's port inside each namespace (with the front ends on).
pub const AMQP_PORT: u16 = 5672;
/// The HTTP listener's port inside each namespace (with the front ends on).
pub const HTTP_PORT: u16 = 7480;

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
pub enum Link {
    Up,
    Down,
}

/// Three node namespaces and a hub namespace with a bridge, torn down on drop (with the
/// processes in them).
#[derive(Debug)]
pub struct Network {
    prefix: String,
    nodes: Vec<Option<Child>>,
    /// How each node was started (data root, front ends on, environment), for restarts.
    started: Vec<Option<Started>>,
}

/// How a node was started.
#[derive(Debug, Clone)]
struct Started {
    root: PathBuf,
    fronts: bool,
    env: Vec<(String, String)>,
}

impl Network {
    /// Node `node`'s namespace.
    pub fn namespace(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    /// The hub's namespace (the bridge; clients run here).
    pub fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// Node `node`'s address on the bridge.
    pub fn address(node: usize) -> String {
        format!("10.77.0.{node}")
    }

    /// Node `node`'s native listener.
    pub fn broker(node: usize) -> String {
        format!("{}:{NATIVE_PORT}", Network::address(node))
    }

    /// Node `node`'s Kafka listener.
    pub fn kafka(node: usize) -> String {
        format!("{}:{KAFKA_PORT}", Network::address(node))
    }

    /// Node `node`'s AMQP listener.
    pub fn amqp(node: usize) -> String {
        format!("{}:{AMQP_PORT}", Network::address(node))
    }

    /// Node `node`'s HTTP listener.
    pub fn http(node: usize) -> String {
        format!("{}:{HTTP_PORT}", Network::address(node))
    }

    /// Makes the namespaces, the bridge and each node's link (needs root).
    pub fn build() -> Network {
        // Unique per network: the tests of one binary run at once in one process.
        static BUILT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let built = BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("wh{}x{built}", std::process::id());
        let network = Network {
            prefix,
            nodes: Vec::new(),
            started: Vec::new(),
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
    pub fn start(&mut self, root: &Path, node: usize) {
        self.start_with(root, node, false, &[]);
    }

    /// As [`Network::start`], with the Kafka, AMQP and HTTP listeners on
    /// ([`Network::kafka`], [`Network::amqp`], [`Network::http`]) when `fronts`, and `env`
    /// in the node's environment.
    pub fn start_with(&mut self, root: &Path, node: usize, fronts: bool, env: &[(String, String)]) {
        let [kafka_listen, amqp_listen, http_listen] = if fronts {
            [
                Network::kafka(node),
                Network::amqp(node),
                Network::http(node),
            ]
        } else {
            ["off".to_string(), "off".to_string(), "off".to_string()]
        };
        let peers = (1..=3)
            .map(|id| format!("{id}@{}:{INTERNAL_PORT}", Network::address(id)))
            .collect::<Vec<_>>()
            .join(",");
        // The internal listeners bind beyond loopback (the namespaces' addresses), where
        // wharfd needs their frames sealed (or TLS, or --cluster-insecure).
        let secret = root.join("cluster-secret");
        std::fs::write(&secret, "the namespaces' cluster secret\n").expect("write the secret");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespace(node)])
            .arg(wharfd_path())
            .arg("--data-dir")
            .arg(root.join(format!("node-{node}")))
            .args([
                "--listen",
                &Network::broker(node),
                "--kafka-listen",
                &kafka_listen,
                "--amqp-listen",
                &amqp_listen,
                "--http-listen",
                &http_listen,
                "--node-id",
                &node.to_string(),
                "--cluster-peers",
                &peers,
                "--cluster-secret-file",
                &secret.display().to_string(),
                // The listener binds beyond loopback (the namespace's address): no users
                // here, so logins are optional.
                "--authentication",
                "optional",
            ])
            .env(
                "WHARF_LOG",
                std::env::var("WHARF_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .envs(env.iter().map(|(key, value)| (key, value)))
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
        if fronts {
            // One line per front end, in this order (see wharfd's documentation).
            for (what, address) in [
                ("Kafka", Network::kafka(node)),
                ("AMQP", Network::amqp(node)),
                ("HTTP", Network::http(node)),
            ] {
                let line = receiver
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("wharfd did not report its {what} listener"));
                assert!(line.contains(&address), "{line:?}");
            }
        }
        while self.nodes.len() < node {
            self.nodes.push(None);
            self.started.push(None);
        }
        self.nodes[node - 1] = Some(child);
        self.started[node - 1] = Some(Started {
            root: root.to_path_buf(),
            fronts,
            env: env.to_vec(),
        });
    }

    /// Node `node`'s process id (0 when it is not running).
    pub fn pid(&self, node: usize) -> u32 {
        self.nodes
            .get(node - 1)
            .and_then(Option::as_ref)
            .map_or(0, Child::id)
    }

    /// SIGKILLs node `node` and waits for it to die.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes.get_mut(node - 1).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `node` again as it was started (after [`Network::kill`]).
    pub fn restart(&mut self, node: usize) {
        self.kill(node);
        let started = self.started[node - 1].clone().expect("started before");
        self.start_with(&started.root, node, started.fronts, &started.env);
    }

    /// Cuts the link between nodes `a` and `b` both ways (a blackhole route to the other in
    /// each one's namespace): neither reaches the other, clients in the hub reach both.
    pub fn cut(&self, a: usize, b: usize) {
        self.blackholes("add", a, b);
    }

    /// Mends the link [`Network::cut`] cut.
    pub fn mend(&self, a: usize, b: usize) {
        self.blackholes("del", a, b);
    }

    /// Adds or deletes (`verb`) the blackhole routes between `a` and `b`.
    fn blackholes(&self, verb: &str, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let target = format!("{}/32", Network::address(to));
            ip(&[
                "-n",
                &self.namespace(from),
                "route",
                verb,
                "blackhole",
                &target,
            ]);
        }
    }

    /// A command running `program` in the hub's namespace.
    pub fn in_hub(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.hub()]).arg(program);
        command
    }

    /// Sets node `node`'s link to the bridge up or down.
    pub fn link(&self, node: usize, state: Link) {
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

    /// The body of a GET of `path` on node `node`'s HTTP listener, fetched from the hub by
    /// Python's standard library (the test process is not in the hub's network); `None`
    /// when the node does not answer 200 within 3 s.
    pub fn http_get(&self, node: usize, path: &str) -> Option<String> {
        const GET: &str = "import sys, urllib.request\n\
            with urllib.request.urlopen(sys.argv[1], timeout=3) as answer:\n    \
            sys.stdout.write(answer.read().decode())\n";
        let output = Command::new("ip")
            .args(["netns", "exec", &self.hub(), "python3", "-c", GET])
            .arg(format!("http://{}{path}", Network::http(node)))
            .stdin(Stdio::null())
            .output()
            .expect("running python3 in the hub");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `wharf --broker <node> args`, run from the hub (which reaches every node while its
    /// link is up).
    pub fn wharf(&self, node: usize, args: &[&str]) -> Output {
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
    pub fn status(&self, node: usize) -> Option<Value> {
        let output = self.wharf(node, &["--json", "cluster", "status"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Waits until `nodes` report one leader among them, the same term and applied index;
    /// returns that leader.
    pub fn converged(&self, nodes: &[usize], what: &str) -> u64 {
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
    pub fn topics(&self, node: usize) -> Vec<String> {
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
    pub fn topics_agree(&self, wanted: &[&str], what: &str) {
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
