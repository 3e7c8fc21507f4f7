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
