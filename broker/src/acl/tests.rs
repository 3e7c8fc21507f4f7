use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;

use super::store::AclStore;
use super::*;
use crate::storage::RealFs;

fn acl(
    principal: &str,
    resource_type: ResourceType,
    pattern_type: PatternType,
    name: &str,
    operation: Operation,
    permission: Permission,
) -> AclBinding {
    AclBinding {
        principal: principal.to_string(),
        host: WILDCARD.to_string(),
        resource_type,
        pattern_type,
        name: name.to_string(),
        operation,
        permission,
    }
}

fn access<'a>(
    principal: &'a str,
    operation: Operation,
    kind: ResourceType,
    name: &'a str,
) -> Access<'a> {
    Access {
        principal,
        host: "127.0.0.1",
        operation,
        resource_type: kind,
        name,
    }
}

fn decide(acls: &[AclBinding], request: Access) -> Decision {
    authorize(acls, &AuthorizerSettings::default(), &request)
}

#[test]
fn with_no_acl_everything_is_allowed_unless_authorization_is_required() {
    let request = access(ANONYMOUS, Operation::Write, ResourceType::Topic, "orders");
    assert_eq!(decide(&[], request), Decision::Allow);
    let required = AuthorizerSettings {
        required: true,
        ..AuthorizerSettings::default()
    };
    assert_eq!(authorize(&[], &required, &request), Decision::Deny);
}

#[test]
fn once_any_acl_exists_what_none_allows_is_denied() {
    let acls = [acl(
        "User:alice",
        ResourceType::Topic,
        PatternType::Literal,
        "orders",
        Operation::Read,
        Permission::Allow,
    )];
    let topic = ResourceType::Topic;
    assert_eq!(
        decide(
            &acls,
            access("User:alice", Operation::Read, topic, "orders")
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(
            &acls,
            access("User:alice", Operation::Write, topic, "orders")
        ),
        Decision::Deny
    );
    assert_eq!(
        decide(&acls, access("User:bob", Operation::Read, topic, "orders")),
        Decision::Deny
    );
    assert_eq!(
        decide(
            &acls,
            access("User:alice", Operation::Read, topic, "payments")
        ),
        Decision::Deny
    );
    // Another resource type with the same name is another resource.
    assert_eq!(
        decide(
            &acls,
            access("User:alice", Operation::Read, ResourceType::Queue, "orders")
        ),
        Decision::Deny
    );
}

#[test]
fn deny_wins_over_allow_and_is_never_implied() {
    let acls = [
        acl(
            "User:*",
            ResourceType::Topic,
            PatternType::Prefixed,
            "pay",
            Operation::All,
            Permission::Allow,
        ),
        acl(
            "User:bob",
            ResourceType::Topic,
            PatternType::Literal,
            "payments",
            Operation::Write,
            Permission::Deny,
        ),
    ];
    let topic = ResourceType::Topic;
    assert_eq!(
        decide(
            &acls,
            access("User:bob", Operation::Write, topic, "payments")
        ),
        Decision::Deny
    );
    assert_eq!(
        decide(
            &acls,
            access("User:bob", Operation::Read, topic, "payments")
        ),
        Decision::Allow
    );
    // A deny of Write does not deny Describe (denies are not implied).
    assert_eq!(
        decide(
            &acls,
            access("User:bob", Operation::Describe, topic, "payments")
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(
            &acls,
            access("User:bob", Operation::Write, topic, "payouts")
        ),
        Decision::Allow
    );
}

#[test]
fn describe_is_implied_by_read_write_delete_and_alter_and_describe_configs_by_alter_configs() {
    for implying in [
        Operation::Read,
        Operation::Write,
        Operation::Delete,
        Operation::Alter,
    ] {
        let acls = [acl(
            "User:a",
            ResourceType::Topic,
            PatternType::Literal,
            "t",
            implying,
            Permission::Allow,
        )];
        assert_eq!(
            decide(
                &acls,
                access("User:a", Operation::Describe, ResourceType::Topic, "t")
            ),
            Decision::Allow,
            "{implying}"
        );
    }
    let acls = [acl(
        "User:a",
        ResourceType::Topic,
        PatternType::Literal,
        "t",
        Operation::AlterConfigs,
        Permission::Allow,
    )];
    assert_eq!(
        decide(
            &acls,
            access(
                "User:a",
                Operation::DescribeConfigs,
                ResourceType::Topic,
                "t"
            )
        ),
        Decision::Allow
    );
    let acls = [acl(
        "User:a",
        ResourceType::Topic,
        PatternType::Literal,
        "t",
        Operation::Create,
        Permission::Allow,
    )];
    assert_eq!(
        decide(
            &acls,
            access("User:a", Operation::Describe, ResourceType::Topic, "t")
        ),
        Decision::Deny
    );
}

#[test]
fn super_users_and_hosts() {
    let mut from_one_host = acl(
        "User:a",
        ResourceType::Queue,
        PatternType::Literal,
        "*",
        Operation::Read,
        Permission::Allow,
    );
    from_one_host.host = "10.0.0.1".to_string();
    let acls = [from_one_host];
    assert_eq!(
        decide(
            &acls,
            access("User:a", Operation::Read, ResourceType::Queue, "q")
        ),
        Decision::Deny
    );
    let mut there = access("User:a", Operation::Read, ResourceType::Queue, "q");
    there.host = "10.0.0.1";
    assert_eq!(decide(&acls, there), Decision::Allow);
    let settings = AuthorizerSettings {
        required: true,
        super_users: vec!["User:admin".to_string()],
    };
    let request = access(
        "User:admin",
        Operation::Delete,
        ResourceType::Cluster,
        CLUSTER_NAME,
    );
    assert_eq!(authorize(&acls, &settings, &request), Decision::Allow);
}

#[test]
fn filters_select_as_kafkas_binding_filters_do() {
    let literal = acl(
        "User:a",
        ResourceType::Topic,
        PatternType::Literal,
        "orders",
        Operation::Read,
        Permission::Allow,
    );
    let wildcard = acl(
        "User:a",
        ResourceType::Topic,
        PatternType::Literal,
        "*",
        Operation::Read,
        Permission::Allow,
    );
    let prefixed = acl(
        "User:a",
        ResourceType::Topic,
        PatternType::Prefixed,
        "ord",
        Operation::Read,
        Permission::Allow,
    );
    let other = acl(
        "User:b",
        ResourceType::Group,
        PatternType::Literal,
        "orders",
        Operation::Read,
        Permission::Deny,
    );
    let all = [
        literal.clone(),
        wildcard.clone(),
        prefixed.clone(),
        other.clone(),
    ];
    let selected = |filter: &AclFilter| -> Vec<AclBinding> {
        all.iter()
            .filter(|acl| filter.matches(acl))
            .cloned()
            .collect()
    };
    assert_eq!(selected(&AclFilter::default()).len(), 4);
    let matching = AclFilter {
        resource_type: Some(ResourceType::Topic),
        pattern: PatternFilter::Match,
        name: Some("orders".to_string()),
        ..AclFilter::default()
    };
    assert_eq!(
        selected(&matching),
        vec![literal.clone(), wildcard, prefixed.clone()]
    );
    let exact = AclFilter {
        pattern: PatternFilter::Exactly(PatternType::Prefixed),
        name: Some("ord".to_string()),
        ..AclFilter::default()
    };
    assert_eq!(selected(&exact), vec![prefixed]);
    let any_named = AclFilter {
        name: Some("orders".to_string()),
        ..AclFilter::default()
    };
    assert_eq!(selected(&any_named), vec![literal, other.clone()]);
    let denies = AclFilter {
        permission: Some(Permission::Deny),
        ..AclFilter::default()
    };
    assert_eq!(selected(&denies), vec![other]);
}

#[test]
fn validation_names_the_problem() {
    let good = acl(
        "User:a",
        ResourceType::Group,
        PatternType::Literal,
        "g",
        Operation::Read,
        Permission::Allow,
    );
    assert_eq!(good.validate(), Ok(()));
    let cases = [
        (
            AclBinding {
                principal: "alice".to_string(),
                ..good.clone()
            },
            "User:NAME",
        ),
        (
            AclBinding {
                name: String::new(),
                ..good.clone()
            },
            "name is empty",
        ),
        (
            AclBinding {
                operation: Operation::Write,
                ..good.clone()
            },
            "means nothing for a group",
        ),
        (
            AclBinding {
                resource_type: ResourceType::Cluster,
                name: "c".to_string(),
                operation: Operation::Alter,
                ..good.clone()
            },
            "kafka-cluster",
        ),
    ];
    for (bad, expected) in cases {
        let error = bad.validate().expect_err("invalid").to_string();
        assert!(error.contains(expected), "{error}");
    }
}

#[test]
fn names_parse_back() {
    for kind in ResourceType::ALL {
        assert_eq!(ResourceType::parse(kind.name()), Some(kind));
    }
    for operation in Operation::ALL {
        assert_eq!(Operation::parse(operation.name()), Some(operation));
    }
    assert_eq!(
        Operation::parse("describe-configs"),
        Some(Operation::DescribeConfigs)
    );
    assert_eq!(
        Operation::parse("IDEMPOTENT_WRITE"),
        Some(Operation::IdempotentWrite)
    );
    assert_eq!(Operation::parse("fly"), None);
}

#[test]
fn the_store_keeps_acls_across_a_reopen_and_removes_by_filter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = AclStore::open(Arc::new(RealFs), dir.path()).expect("open");
    assert!(store.is_empty(), "a new data directory has no ACL");
    let read = acl(
        "User:a",
        ResourceType::Queue,
        PatternType::Prefixed,
        "jobs.",
        Operation::Read,
        Permission::Allow,
    );
    let write = acl(
        "User:a",
        ResourceType::Exchange,
        PatternType::Literal,
        "events",
        Operation::Write,
        Permission::Allow,
    );
    store
        .add(&[read.clone(), write.clone(), read.clone()])
        .expect("add");
    assert_eq!(store.current().len(), 2, "duplicates are added once");
    assert!(!store.is_empty());
    let invalid = AclBinding {
        principal: "nobody".to_string(),
        ..read.clone()
    };
    assert!(matches!(store.add(&[invalid]), Err(AclError::Invalid(_))));
    drop(store);

    let store = AclStore::open(Arc::new(RealFs), dir.path()).expect("reopen");
    assert_eq!(*store.current(), vec![read.clone(), write.clone()]);
    let removed = store
        .remove(&[AclFilter {
            resource_type: Some(ResourceType::Exchange),
            ..AclFilter::default()
        }])
        .expect("remove");
    assert_eq!(removed, vec![vec![write]]);
    drop(store);
    let store = AclStore::open(Arc::new(RealFs), dir.path()).expect("reopen");
    assert_eq!(*store.current(), vec![read]);
    assert!(!store.is_empty(), "a reopen sees the ACL left");
    store.remove(&[AclFilter::default()]).expect("remove all");
    assert!(store.is_empty(), "removing the last ACL empties the store");
}

// The model: a small universe of principals, hosts and names; every ACL is expanded into
// the ground facts (principal, host, name, operation, permission) it stands for, by
// enumeration rather than by the matching rules, and a request is decided on those facts.

const PRINCIPALS: [&str; 3] = ["User:a", "User:b", "User:*"];
const HOSTS: [&str; 3] = ["h1", "h2", "*"];
const NAMES: [&str; 4] = ["a", "ab", "b", "*"];
const OPERATIONS: [Operation; 6] = [
    Operation::All,
    Operation::Read,
    Operation::Write,
    Operation::Describe,
    Operation::AlterConfigs,
    Operation::DescribeConfigs,
];

type Fact = (String, String, String, Operation, Permission);

fn ground(acls: &[AclBinding]) -> BTreeSet<Fact> {
    let mut facts = BTreeSet::new();
    for acl in acls {
        for principal in ["User:a", "User:b"] {
            if acl.principal != principal && acl.principal != "User:*" {
                continue;
            }
            for host in ["h1", "h2"] {
                if acl.host != host && acl.host != "*" {
                    continue;
                }
                for name in ["a", "ab", "b"] {
                    let covered = match acl.pattern_type {
                        PatternType::Literal => acl.name == name || acl.name == "*",
                        PatternType::Prefixed => {
                            name.len() >= acl.name.len() && name[..acl.name.len()] == acl.name
                        }
                    };
                    if !covered {
                        continue;
                    }
                    let operations: Vec<Operation> = if acl.operation == Operation::All {
                        OPERATIONS.to_vec()
                    } else {
                        vec![acl.operation]
                    };
                    for operation in operations {
                        facts.insert((
                            principal.to_string(),
                            host.to_string(),
                            name.to_string(),
                            operation,
                            acl.permission,
                        ));
                    }
                }
            }
        }
    }
    facts
}

fn model(
    acls: &[AclBinding],
    principal: &str,
    host: &str,
    name: &str,
    operation: Operation,
) -> Decision {
    if acls.is_empty() {
        return Decision::Allow;
    }
    let facts = ground(acls);
    let fact = |operation: Operation, permission: Permission| {
        facts.contains(&(
            principal.to_string(),
            host.to_string(),
            name.to_string(),
            operation,
            permission,
        ))
    };
    if fact(operation, Permission::Deny) {
        return Decision::Deny;
    }
    let implying: &[Operation] = match operation {
        Operation::Describe => &[Operation::Read, Operation::Write],
        Operation::DescribeConfigs => &[Operation::AlterConfigs],
        _ => &[],
    };
    if fact(operation, Permission::Allow)
        || implying.iter().any(|other| fact(*other, Permission::Allow))
    {
        Decision::Allow
    } else {
        Decision::Deny
    }
}

fn arbitrary_acl() -> impl Strategy<Value = AclBinding> {
    (
        prop::sample::select(PRINCIPALS.to_vec()),
        prop::sample::select(HOSTS.to_vec()),
        prop::bool::ANY,
        prop::sample::select(NAMES.to_vec()),
        prop::sample::select(OPERATIONS.to_vec()),
        prop::bool::ANY,
    )
        .prop_map(
            |(principal, host, prefixed, name, operation, deny)| AclBinding {
                principal: principal.to_string(),
                host: host.to_string(),
                resource_type: ResourceType::Topic,
                pattern_type: if prefixed {
                    PatternType::Prefixed
                } else {
                    PatternType::Literal
                },
                name: name.to_string(),
                operation,
                permission: if deny {
                    Permission::Deny
                } else {
                    Permission::Allow
                },
            },
        )
}

proptest! {
    #[test]
    fn authorize_agrees_with_the_ground_fact_model(
        acls in prop::collection::vec(arbitrary_acl(), 0..8),
        principal in prop::sample::select(vec!["User:a", "User:b"]),
        host in prop::sample::select(vec!["h1", "h2"]),
        name in prop::sample::select(vec!["a", "ab", "b"]),
        operation in prop::sample::select(OPERATIONS[1..].to_vec()),
    ) {
        let request = Access { principal, host, operation, resource_type: ResourceType::Topic, name };
        prop_assert_eq!(
            authorize(&acls, &AuthorizerSettings::default(), &request),
            model(&acls, principal, host, name, operation)
        );
    }
}

#[test]
fn the_acl_file_payload_is_pinned() {
    // docs/STORAGE.md's table of the `acls` payload.
    use bytes::BytesMut;
    use wharf_protocol::wire::Wire;

    use super::store::{StoredAcl, StoredAcls};
    let stored = StoredAcls {
        acls: vec![StoredAcl {
            principal: "User:a".to_string(),
            host: "*".to_string(),
            resource_type: "topic".to_string(),
            pattern_type: "literal".to_string(),
            name: "t".to_string(),
            operation: "Read".to_string(),
            permission: "allow".to_string(),
        }],
    };
    let mut bytes = BytesMut::new();
    stored.encode(&mut bytes);
    let mut expected = vec![0, 0, 0, 1];
    for text in ["User:a", "*", "topic", "literal", "t", "Read", "allow"] {
        expected.extend_from_slice(&(text.len() as u16).to_be_bytes());
        expected.extend_from_slice(text.as_bytes());
    }
    assert_eq!(bytes.as_ref(), expected.as_slice());
}
