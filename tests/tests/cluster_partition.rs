//! A cluster of three `wharfd` processes cut apart by the network (issue #20): each node runs
//! in its own network namespace, joined to the others through a bridge in a fourth ("hub")
//! namespace; a cut takes a node's link to the bridge down. The metadata log must hold under
//! an isolated leader: the majority elects another leader and goes on committing, the cut-off
//! node commits nothing, and after the heal every node agrees on what was committed.
//!
//! Needs root and iproute2 (`ip netns`, veth, bridge), as `.ci/run` has (scripts/test.sh
//! installs iproute2).

use std::process::{Command, Stdio};

use integration_tests::netns::{Link, Network};
use integration_tests::wharf_path;

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

/// Runs `wharf topic create NAME` through `node` from the hub until it succeeds, for up to
/// 30 s (an election may be under way); whether it did.
fn create_retrying(network: &Network, node: usize, name: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let created = network.wharf(node, &["topic", "create", name, "--partitions", "1"]);
        if created.status.success() {
            return true;
        }
        let said = String::from_utf8_lossy(&created.stderr);
        if said.contains("already exists") {
            return true; // an earlier attempt committed though its answer was lost
        }
        if std::time::Instant::now() >= deadline {
            eprintln!("create {name} through node {node}: {said}");
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn a_bridge_node_keeps_the_log_committing_and_a_cut_off_follower_catches_up() {
    // Goal: issue #20's partitions beyond an isolated leader. (1) A bridge: the leader and
    // one follower can no longer reach each other, while the third node reaches both.
    // Two of three still talk to each other through every link that is up, so the log
    // must go on committing through the bridge; after the link is mended all three agree.
    // (2) A follower cut off from both others (the minority side): it cannot commit, the
    // majority goes on, and after the heal it has what the majority committed.
    let root = tempfile::tempdir().expect("temp dir");
    let mut network = Network::build();
    for node in 1..=3 {
        network.start(root.path(), node);
    }
    let leader = usize::try_from(network.converged(&[1, 2, 3], "after start")).expect("id");
    assert!(create_retrying(&network, leader, "before"));
    network.topics_agree(&["before"], "before the cut");

    let followers: Vec<usize> = (1..=3).filter(|node| *node != leader).collect();
    let (cut_off, bridge) = (followers[0], followers[1]);
    network.cut(leader, cut_off);
    assert!(
        create_retrying(&network, bridge, "bridged"),
        "nothing committed through the bridge node {bridge} while nodes {leader} and \
         {cut_off} could not reach each other"
    );
    network.mend(leader, cut_off);
    let leader = usize::try_from(network.converged(&[1, 2, 3], "after the mend")).expect("id");
    network.topics_agree(&["before", "bridged"], "after the mend");

    // A follower alone on its side: it commits nothing, the other two go on.
    let alone = (1..=3).find(|node| *node != leader).expect("a follower");
    let majority: Vec<usize> = (1..=3).filter(|node| *node != alone).collect();
    network.link(alone, Link::Down);
    let refused = Command::new("ip")
        .args(["netns", "exec", &network.namespace(alone)])
        .arg(wharf_path())
        .args(["--broker", &Network::broker(alone)])
        .args(["topic", "create", "minority", "--partitions", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("running wharf in the cut-off node's namespace");
    assert!(
        !refused.status.success(),
        "a topic was created on a follower cut off from the majority: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(create_retrying(&network, majority[0], "split"));
    // While the split lasts the majority never holds the minority's create.
    for node in &majority {
        let listed = network.topics(*node);
        assert_eq!(
            listed,
            ["before", "bridged", "split"],
            "node {node} during the split"
        );
    }
    network.link(alone, Link::Up);
    network.converged(&[1, 2, 3], "after the heal");
    // The refusal said the change may or may not be made: the follower's forwarded
    // proposal can still be in its network queue when the link comes back, and then
    // commits (an indeterminate call may take effect later, as with Kafka's timeouts).
    // Either way every node ends with the same topics.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let listed: Vec<Vec<String>> = (1..=3).map(|node| network.topics(node)).collect();
        let settled = listed.iter().all(|names| names == &listed[0])
            && (listed[0] == ["before", "bridged", "split"]
                || listed[0] == ["before", "bridged", "minority", "split"]);
        if settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the heal: topics per node {listed:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
