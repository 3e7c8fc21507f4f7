//! `wharf acl add|list|remove` against the real `wharfd` (issue #18): ACLs added with the
//! CLI are the ones the HTTP API lists, malformed ones are refused with the reason, filters
//! select as Kafka's do, and ACLs survive a restart.

use integration_tests::{wharf, wharf_ok, BrokerProcess};
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// `GET path` on the HTTP listener, the body as JSON.
fn http_get(address: &str, path: &str) -> Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("HTTP listener");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let (_, body) = answer.split_once("\r\n\r\n").expect("headers");
    json(body)
}

/// The anonymous caller may manage ACLs: once an ACL exists, only super users and callers
/// with Alter on the cluster may add or remove more.
const ADMIN_ANONYMOUS: &str = "super_users = [\"User:ANONYMOUS\"]\n";

#[test]
fn acls_are_added_listed_filtered_removed_and_kept_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = BrokerProcess::start_with_config(&dir.path().join("data"), ADMIN_ANONYMOUS);
    let address = broker.address();

    let added = wharf_ok(
        &address,
        &[
            "acl",
            "add",
            "--principal",
            "User:alice",
            "--queue",
            "jobs.",
            "--prefixed",
            "--operation",
            "read",
            "--allow",
        ],
        "",
    );
    assert!(added.starts_with("added 1 ACL(s)"), "{added}");
    wharf_ok(
        &address,
        &[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--topic",
            "orders",
            "--operation",
            "Write",
            "--deny",
        ],
        "",
    );

    // Refused with the reason: an operation a group does not have, a principal that is not
    // User:..., no resource at all (a usage error).
    for (args, expected) in [
        (
            vec![
                "--group",
                "g",
                "--principal",
                "User:bob",
                "--operation",
                "Write",
            ],
            "means nothing for a group",
        ),
        (
            vec!["--topic", "t", "--principal", "bob", "--operation", "Read"],
            "User:NAME",
        ),
    ] {
        let mut all = vec!["acl", "add", "--allow"];
        all.extend(args);
        let refused = wharf(&address, &all, "");
        assert!(!refused.status.success(), "{all:?} was accepted");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    let no_resource = wharf(
        &address,
        &[
            "acl",
            "add",
            "--principal",
            "User:x",
            "--operation",
            "Read",
            "--allow",
        ],
        "",
    );
    assert_eq!(no_resource.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_resource.stderr).contains("needs the resource"));

    let listed = json(&wharf_ok(&address, &["--json", "acl", "list"], ""));
    assert_eq!(listed.as_array().expect("array").len(), 2, "{listed}");
    // The HTTP API lists the same ACLs.
    let over_http = http_get(&broker.http_address(), "/api/v1/acls");
    assert_eq!(over_http["acls"], listed, "{over_http}");
    // --match: the ACLs that apply to queue jobs.eu (alice's prefix).
    let matching = json(&wharf_ok(
        &address,
        &["--json", "acl", "list", "--queue", "jobs.eu", "--match"],
        "",
    ));
    assert_eq!(matching[0]["principal"], "User:alice", "{matching}");
    assert_eq!(matching[0]["operation"], "Read");
    assert_eq!(matching.as_array().expect("array").len(), 1);
    // Literal by default: no ACL is named exactly jobs.eu.
    let literal = json(&wharf_ok(
        &address,
        &["--json", "acl", "list", "--queue", "jobs.eu"],
        "",
    ));
    assert_eq!(literal, serde_json::json!([]));

    let removed = json(&wharf_ok(
        &address,
        &["--json", "acl", "remove", "--principal", "User:bob"],
        "",
    ));
    assert_eq!(removed[0]["name"], "orders", "{removed}");
    assert_eq!(removed[0]["permission"], "deny");

    broker.restart();
    let address = broker.address();
    let kept = json(&wharf_ok(&address, &["--json", "acl", "list"], ""));
    assert_eq!(kept.as_array().expect("array").len(), 1, "{kept}");
    assert_eq!(kept[0]["name"], "jobs.");
    assert_eq!(kept[0]["pattern_type"], "prefixed");
}
