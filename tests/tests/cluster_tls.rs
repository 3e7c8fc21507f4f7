//! The cluster's internal wire over mutual TLS (issue #20, `--cluster-tls-ca`): nodes with
//! certificates from one CA form a cluster and replicate a topic over it; a connection that
//! does not speak TLS is not served; a node whose certificate comes from another CA cannot
//! be added.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::cluster::{converged, free_port, registered};
use integration_tests::tls::TestPki;
use integration_tests::{wharf, BrokerProcess};
use wharf_broker::cluster::raft::RaftRpc;
use wharf_broker::cluster::transport::{encode_body, Envelope};

/// Node `node_id` of the cluster `peers`, presenting a certificate `pki` issues (serial
/// `serial`) and trusting `pki`'s CA for the other nodes, from files of its own beside its
/// data directory (`<data_dir>.pem`, `.key`, `-ca.pem`), so a test can replace them.
fn tls_node(
    data_dir: &Path,
    node_id: u64,
    peers: &str,
    pki: &TestPki,
    serial: u64,
) -> BrokerProcess {
    let (cert, key, ca) = install(data_dir, pki, serial);
    let args: Vec<String> = [
        "--node-id",
        &node_id.to_string(),
        "--cluster-peers",
        peers,
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
        "--cluster-tls-ca",
        &ca.display().to_string(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    BrokerProcess::start_listening_with_env(data_dir, "127.0.0.1:0", &args, &[])
}

/// Three nodes with certificates from `pki`, formed into a cluster.
struct TlsCluster {
    ports: Vec<u16>,
    peers: String,
    dirs: Vec<std::path::PathBuf>,
    nodes: Vec<BrokerProcess>,
    addresses: Vec<String>,
}

/// Nodes 1–3 under `root` (`node-N`), each with a certificate `pki` issues (serial 10 + N),
/// converged and registered.
fn three_tls_nodes(root: &Path, pki: &TestPki) -> TlsCluster {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = (1..=3)
        .map(|id| format!("{id}@127.0.0.1:{}", ports[id - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let dirs: Vec<std::path::PathBuf> = (1..=3).map(|id| root.join(format!("node-{id}"))).collect();
    let nodes: Vec<BrokerProcess> = (1..=3u64)
        .map(|id| tls_node(&dirs[id as usize - 1], id, &peers, pki, 10 + id))
        .collect();
    let addresses: Vec<String> = nodes.iter().map(BrokerProcess::address).collect();
    converged(&addresses, 3, "over TLS");
    registered(&addresses);
    TlsCluster {
        ports,
        peers,
        dirs,
        nodes,
        addresses,
    }
}

/// Writes a certificate `pki` issues (serial `serial`) with its key and `pki`'s CA into the
/// files of the node whose data directory is `data_dir`; returns their paths.
fn install(
    data_dir: &Path,
    pki: &TestPki,
    serial: u64,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = pki.node_files(serial);
    let base = data_dir.display().to_string();
    let files = (
        std::path::PathBuf::from(format!("{base}.pem")),
        std::path::PathBuf::from(format!("{base}.key")),
        std::path::PathBuf::from(format!("{base}-ca.pem")),
    );
    std::fs::copy(cert, &files.0).expect("copy the certificate");
    std::fs::copy(key, &files.1).expect("copy the key");
    std::fs::copy(&pki.ca_path, &files.2).expect("copy the CA");
    files
}

/// Waits until partition 0 of `topic` ends at `wanted` in the `/metrics` of the node at
/// `http` (its own log: written through its group).
fn wait_for_log_end(http: &str, topic: &str, wanted: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = integration_tests::http_get(http, "/metrics", None);
        let seen: Option<i64> = metrics
            .lines()
            .find(|line| {
                line.starts_with("wharf_partition_log_end_offset{")
                    && line.contains(&format!("topic=\"{topic}\""))
                    && line.contains("partition=\"0\"")
            })
            .and_then(|line| line.rsplit(' ').next()?.parse().ok());
        if seen == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}-0 at {http} ends at {seen:?}, not {wanted}, after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a node's internal listener at `addr` sends back to a plain (not TLS) connection that
/// writes a well-formed Hello frame, until it closes or 5 s pass.
fn plain_hello(addr: &str) -> Vec<u8> {
    let envelope = Envelope {
        cluster_id: None,
        from: 9,
        to: 1,
        rpc: RaftRpc::Hello,
    };
    let body = encode_body(&envelope).expect("encodes");
    let mut frame = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    frame.extend_from_slice(&body);
    let mut stream = TcpStream::connect(addr).expect("connect to the internal listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(&frame).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[test]
fn nodes_speak_mutual_tls_to_each_other_and_refuse_what_does_not() {
    // Goal: with --cluster-tls-ca every connection between nodes is mutual TLS: the
    // metadata log forms and a replicated topic commits acks=all writes on all three (its
    // groups talk over TLS); a plain connection gets no answer where an unsecured listener
    // answers a Hello; a node with another CA's certificate cannot be added. Method: three
    // nodes with one CA's certificates, then a fourth with a stranger CA's.
    let root = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::create(&root.path().join("pki"), "wharf-cluster-ca");
    let cluster = three_tls_nodes(root.path(), &pki);
    let (ports, peers, nodes, addresses) = (
        &cluster.ports,
        &cluster.peers,
        &cluster.nodes,
        &cluster.addresses,
    );

    let created = wharf(
        &addresses[0],
        &[
            "topic",
            "create",
            "secured",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
        ],
        "",
    );
    assert!(
        created.status.success(),
        "wharf topic create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let produced = wharf(
        &addresses[0],
        &[
            "perf",
            "produce",
            "--topic",
            "secured",
            "--partitions",
            "1",
            "--messages",
            "2000",
            "--size",
            "100",
            "--acks",
            "all",
        ],
        "",
    );
    assert!(
        produced.status.success(),
        "wharf perf produce: {}",
        String::from_utf8_lossy(&produced.stderr)
    );
    for node in nodes {
        wait_for_log_end(&node.http_address(), "secured", 2000);
    }

    // A connection that does not speak TLS: the listener takes its frame for a bad
    // handshake and closes it (at most with a TLS alert, record type 21), never answering.
    let answer = plain_hello(&format!("127.0.0.1:{}", ports[0]));
    assert!(
        answer.is_empty() || answer[0] == 21,
        "a plain connection was answered: {answer:?}"
    );

    // A node whose certificate another CA issued: the leader cannot reach it, so it is
    // not added, and the cluster keeps its three voters.
    let stranger_pki = TestPki::create(&root.path().join("stranger"), "another-ca");
    let port4 = free_port();
    let _stranger = tls_node(
        &root.path().join("node-4"),
        4,
        &format!("{peers},4@127.0.0.1:{port4}"),
        &stranger_pki,
        40,
    );
    let added = wharf(
        &addresses[1],
        &["cluster", "add-node", "4", &format!("127.0.0.1:{port4}")],
        "",
    );
    let said = String::from_utf8_lossy(&added.stderr);
    assert!(
        !added.status.success() && said.contains("certificate"),
        "a node with another CA's certificate was added, or refused for another reason: {} {said}",
        String::from_utf8_lossy(&added.stdout)
    );
    converged(addresses, 3, "after the stranger was refused");
}

#[test]
fn a_node_left_out_of_a_ca_rotation_is_cut_off_without_a_restart() {
    // Goal: a CA rotation without a restart: nodes 1 and 2 get certificates from a new CA
    // and trust only it (SIGHUP), and go on committing over it; node 3, which kept the old
    // CA's certificate, is cut off (a proposal through it fails). (The connections made
    // before a reload are closed after it; this test does not isolate that: node 3 is cut
    // off here also because the leader's new connections to it fail.)
    let root = tempfile::tempdir().expect("temp dir");
    let old = TestPki::create(&root.path().join("old-ca"), "wharf-old-ca");
    let cluster = three_tls_nodes(root.path(), &old);
    let (dirs, nodes, addresses) = (&cluster.dirs, &cluster.nodes, &cluster.addresses);
    let create = |through: &str, name: &str| {
        wharf(through, &["topic", "create", name, "--partitions", "1"], "")
    };
    let before = create(&addresses[2], "through-3-before");
    assert!(
        before.status.success(),
        "a proposal through node 3 before the rotation: {}",
        String::from_utf8_lossy(&before.stderr)
    );

    let new = TestPki::create(&root.path().join("new-ca"), "wharf-new-ca");
    for at in 0..2 {
        install(&dirs[at], &new, 20 + at as u64);
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &nodes[at].pid().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(hup.success());
    }
    // Nodes 1 and 2 go on over the new CA; node 3 is cut off once their reloads closed the
    // connections it had.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let through_3 = create(&addresses[2], &format!("through-3-after-{attempt}"));
        if !through_3.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3, left out of the rotation, still had proposals committed after 30 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let through_1 = create(&addresses[0], "through-1-after");
        if through_1.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes 1 and 2 commit nothing after the rotation: {}",
            String::from_utf8_lossy(&through_1.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
