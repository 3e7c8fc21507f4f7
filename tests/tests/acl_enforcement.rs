//! ACLs enforced on every front end (issue #18). One broker with `authorization =
//! "required"` and a super user `admin`; the user `alice` makes, on each protocol, one
//! request per resource type and operation that needs exactly that operation:
//!
//! 1. with no ACL for it, it is refused with the protocol's authorization error;
//! 2. with an allow ACL, it succeeds;
//! 3. with a deny ACL beside the allow, it is refused again (a deny wins).
//!
//! Native requests go through the `wharf` CLI, Kafka's through confluent-kafka, AMQP's through
//! pika (`tests/clients/acl_matrix.py`), HTTP's with basic auth. What each request needs is
//! the table in docs/SECURITY.md "Authorization".

use std::path::Path;
use std::process::Output;

use integration_tests::{
    basic, http_send, run_client_script, wharf_as, wharfd_user_create, BrokerProcess,
};
use serde_json::Value;

const ADMIN: (&str, &str) = ("admin", "admin-secret-password");
const ALICE: (&str, &str) = ("alice", "alice-secret-password");

/// How a listing refuses: it leaves out what the caller may not describe.
const HIDDEN: &str = "hidden from the listing";

/// What a request came to.
#[derive(Debug)]
enum Outcome {
    Allowed,
    Refused(String),
}

/// One row of the matrix.
struct Case {
    /// Where the request goes (for messages).
    protocol: &'static str,
    /// The `wharf acl` resource flag (`--topic`, `--cluster`, ...).
    resource: &'static str,
    /// The ACL's resource name (empty for the cluster).
    name: &'static str,
    /// A prefixed ACL (for requests that make a new name each step).
    prefixed: bool,
    /// The operation the request needs.
    operation: &'static str,
    /// What the refusal must say (the protocol's authorization error).
    refusal: &'static str,
    /// Run by the admin before each step (`step` is 0, 1, 2).
    prepare: Box<dyn Fn(usize)>,
    /// The request, as alice.
    request: Box<dyn Fn(usize) -> Outcome>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn outcome(output: &Output) -> Outcome {
    if output.status.success() {
        Outcome::Allowed
    } else {
        Outcome::Refused(format!("{}{}", text(&output.stdout), text(&output.stderr)))
    }
}

/// `wharf` as admin; must succeed.
fn admin(broker: &str, args: &[&str], stdin: &str) -> String {
    let output = wharf_as(broker, Some(ADMIN), args, stdin);
    assert!(
        output.status.success(),
        "admin wharf {args:?} failed: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Adds or removes alice's ACL of `case` with `permission` (`--allow` or `--deny`).
fn alice_acl(broker: &str, case: &Case, verb: &str, permission: &str) {
    let mut args = vec![
        "acl",
        verb,
        "--principal",
        "User:alice",
        case.resource,
        "--operation",
        case.operation,
        permission,
    ];
    if !case.name.is_empty() {
        args.insert(5, case.name);
    }
    if case.prefixed {
        args.push("--prefixed");
    }
    admin(broker, &args, "");
}

/// Runs the three steps of one case and removes its ACLs after.
fn check(broker: &str, case: &Case) {
    let label = format!(
        "{} {} {:?} {}",
        case.protocol, case.resource, case.name, case.operation
    );
    let expect_refused = |step: usize, when: &str| {
        (case.prepare)(step);
        match (case.request)(step) {
            Outcome::Refused(message) => assert!(
                message.contains(case.refusal) || message.starts_with(HIDDEN),
                "{label} {when}: refused, but not with {:?}: {message}",
                case.refusal
            ),
            Outcome::Allowed => panic!("{label} {when}: allowed"),
        }
    };
    expect_refused(0, "without an ACL");
    alice_acl(broker, case, "add", "--allow");
    (case.prepare)(1);
    if let Outcome::Refused(message) = (case.request)(1) {
        panic!("{label} with an allow ACL: refused: {message}");
    }
    alice_acl(broker, case, "add", "--deny");
    expect_refused(2, "with a deny ACL beside the allow");
    alice_acl(broker, case, "remove", "--allow");
    alice_acl(broker, case, "remove", "--deny");
}

/// Starts the broker with users admin and alice, authentication and authorization required.
fn start(data: &Path) -> BrokerProcess {
    for (user, password) in [ADMIN, ALICE] {
        let made = wharfd_user_create(data, user, password, &[]);
        assert!(made.status.success(), "{}", text(&made.stderr));
    }
    BrokerProcess::start_with_config(
        data,
        "authentication = \"required\"\nauthorization = \"required\"\nsuper_users = [\"User:admin\"]\n",
    )
}

/// `wharf exchange declare` of step `step`'s exchange of the redeclare case: the admin
/// makes it, then alice declares it again as it is.
fn redeclared_exchange(step: usize) -> Vec<String> {
    vec![
        "exchange".into(),
        "declare".into(),
        format!("nx-eredeclare-{step}"),
        "--type".into(),
        "direct".into(),
    ]
}

fn native_cases(broker: &str) -> Vec<Case> {
    let address = broker.to_string();
    let alice = move |args: Vec<String>, stdin: &'static str| {
        let address = address.clone();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            outcome(&wharf_as(&address, Some(ALICE), &args, stdin))
        }
    };
    let owned = |args: &[&str]| {
        args.iter()
            .map(|arg| (*arg).to_string())
            .collect::<Vec<_>>()
    };
    let listed = |address: String, args: Vec<String>, name: &'static str| {
        Box::new(move |_step: usize| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let output = wharf_as(&address, Some(ALICE), &args, "");
            if text(&output.stdout).contains(name) {
                Outcome::Allowed
            } else {
                Outcome::Refused(format!("{HIDDEN}: {}", text(&output.stdout)))
            }
        }) as Box<dyn Fn(usize) -> Outcome>
    };
    let nothing = || Box::new(|_step: usize| {}) as Box<dyn Fn(usize)>;
    let admin_each = |address: String, make: fn(usize) -> Vec<String>| {
        Box::new(move |step: usize| {
            let args = make(step);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            admin(&address, &args, "");
        }) as Box<dyn Fn(usize)>
    };
    let each = |make: fn(usize) -> Vec<String>, alice_address: String| {
        Box::new(move |step: usize| {
            let args = make(step);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            outcome(&wharf_as(&alice_address, Some(ALICE), &args, ""))
        }) as Box<dyn Fn(usize) -> Outcome>
    };
    let once = |request: Box<dyn Fn() -> Outcome>| {
        Box::new(move |_step: usize| request()) as Box<dyn Fn(usize) -> Outcome>
    };
    let refusal = "not authorized";
    let case = |resource, name, prefixed, operation, prepare, request| Case {
        protocol: "native",
        resource,
        name,
        prefixed,
        operation,
        refusal,
        prepare,
        request,
    };
    let address = broker.to_string();
    vec![
        case(
            "--topic",
            "nx-create-",
            true,
            "Create",
            nothing(),
            each(
                |step| {
                    vec![
                        "topic".into(),
                        "create".into(),
                        format!("nx-create-{step}"),
                        "--partitions".into(),
                        "1".into(),
                    ]
                },
                address.clone(),
            ),
        ),
        case(
            "--topic",
            "nx-data",
            false,
            "Write",
            nothing(),
            once(Box::new(alice(owned(&["produce", "nx-data"]), "x\n"))),
        ),
        case(
            "--topic",
            "nx-data",
            false,
            "Read",
            nothing(),
            once(Box::new(alice(
                owned(&[
                    "consume",
                    "nx-data",
                    "--from",
                    "earliest",
                    "--max-messages",
                    "1",
                    "--timeout-ms",
                    "5000",
                ]),
                "",
            ))),
        ),
        case(
            "--topic",
            "nx-describe",
            false,
            "Describe",
            nothing(),
            listed(address.clone(), owned(&["topic", "list"]), "nx-describe"),
        ),
        case(
            "--topic",
            "nx-delete-",
            true,
            "Delete",
            admin_each(address.clone(), |step| {
                vec![
                    "topic".into(),
                    "create".into(),
                    format!("nx-delete-{step}"),
                    "--partitions".into(),
                    "1".into(),
                ]
            }),
            each(
                |step| vec!["topic".into(), "delete".into(), format!("nx-delete-{step}")],
                address.clone(),
            ),
        ),
        case(
            "--topic",
            "nx-data",
            false,
            "Alter",
            nothing(),
            each(
                |step| {
                    vec![
                        "topic".into(),
                        "add-partitions".into(),
                        "nx-data".into(),
                        "--count".into(),
                        (step + 2).to_string(),
                    ]
                },
                address.clone(),
            ),
        ),
        case(
            "--topic",
            "nx-data",
            false,
            "AlterConfigs",
            nothing(),
            once(Box::new(alice(
                owned(&[
                    "topic",
                    "alter",
                    "nx-data",
                    "--config",
                    "retention.ms=3600000",
                ]),
                "",
            ))),
        ),
        case(
            "--group",
            "nx-group",
            false,
            "Read",
            nothing(),
            once(Box::new(alice(
                owned(&[
                    "group",
                    "reset-offsets",
                    "nx-group",
                    "--topic",
                    "nx-standing",
                    "--to",
                    "earliest",
                    "--execute",
                ]),
                "",
            ))),
        ),
        case(
            "--group",
            "nx-group",
            false,
            "Delete",
            admin_each(address.clone(), |_| {
                [
                    "group",
                    "reset-offsets",
                    "nx-group",
                    "--topic",
                    "nx-standing",
                    "--to",
                    "earliest",
                    "--execute",
                ]
                .map(String::from)
                .to_vec()
            }),
            once(Box::new(alice(owned(&["group", "delete", "nx-group"]), ""))),
        ),
        case(
            "--cluster",
            "",
            false,
            "Alter",
            nothing(),
            once(Box::new(alice(
                owned(&[
                    "acl",
                    "add",
                    "--principal",
                    "User:nobody",
                    "--topic",
                    "nx-other",
                    "--operation",
                    "Read",
                    "--allow",
                ]),
                "",
            ))),
        ),
        case(
            "--cluster",
            "",
            false,
            "Describe",
            nothing(),
            once(Box::new(alice(owned(&["acl", "list"]), ""))),
        ),
        case(
            "--queue",
            "nx-qcreate-",
            true,
            "Create",
            nothing(),
            each(
                |step| {
                    vec![
                        "queue".into(),
                        "declare".into(),
                        format!("nx-qcreate-{step}"),
                    ]
                },
                address.clone(),
            ),
        ),
        case(
            "--queue",
            "nx-queue",
            false,
            "Write",
            nothing(),
            once(Box::new(alice(
                owned(&["publish", "", "nx-queue", "--confirm"]),
                "m\n",
            ))),
        ),
        case(
            "--queue",
            "nx-queue",
            false,
            "Read",
            nothing(),
            once(Box::new(alice(owned(&["queue", "get", "nx-queue"]), ""))),
        ),
        case(
            "--queue",
            "nx-queue",
            false,
            "Describe",
            nothing(),
            listed(address.clone(), owned(&["queue", "list"]), "nx-queue"),
        ),
        case(
            "--queue",
            "nx-qdelete-",
            true,
            "Delete",
            admin_each(address.clone(), |step| {
                vec![
                    "queue".into(),
                    "declare".into(),
                    format!("nx-qdelete-{step}"),
                ]
            }),
            each(
                |step| {
                    vec![
                        "queue".into(),
                        "delete".into(),
                        format!("nx-qdelete-{step}"),
                    ]
                },
                address.clone(),
            ),
        ),
        case(
            "--exchange",
            "nx-ecreate-",
            true,
            "Create",
            nothing(),
            each(
                |step| {
                    vec![
                        "exchange".into(),
                        "declare".into(),
                        format!("nx-ecreate-{step}"),
                        "--type".into(),
                        "direct".into(),
                    ]
                },
                address.clone(),
            ),
        ),
        // Declaring an exchange that exists, as it is, is allowed by Create (as by
        // Describe): a principal that made it may declare it again at each start.
        case(
            "--exchange",
            "nx-eredeclare-",
            true,
            "Create",
            admin_each(address.clone(), redeclared_exchange),
            each(redeclared_exchange, address.clone()),
        ),
        case(
            "--exchange",
            "nx-exchange",
            false,
            "Write",
            nothing(),
            once(Box::new(alice(
                owned(&["publish", "nx-exchange", "k", "--confirm"]),
                "m\n",
            ))),
        ),
        case(
            "--exchange",
            "nx-exchange",
            false,
            "Read",
            nothing(),
            once(Box::new(alice(
                owned(&[
                    "queue",
                    "bind",
                    "nx-bound",
                    "nx-exchange",
                    "--routing-key",
                    "k",
                ]),
                "",
            ))),
        ),
        case(
            "--exchange",
            "nx-exchange",
            false,
            "Describe",
            nothing(),
            listed(address.clone(), owned(&["exchange", "list"]), "nx-exchange"),
        ),
        case(
            "--exchange",
            "nx-edelete-",
            true,
            "Delete",
            admin_each(address.clone(), |step| {
                vec![
                    "exchange".into(),
                    "declare".into(),
                    format!("nx-edelete-{step}"),
                    "--type".into(),
                    "direct".into(),
                ]
            }),
            each(
                |step| {
                    vec![
                        "exchange".into(),
                        "delete".into(),
                        format!("nx-edelete-{step}"),
                    ]
                },
                address,
            ),
        ),
    ]
}

/// One request of `tests/clients/acl_matrix.py`.
fn script(arguments: Vec<String>) -> Outcome {
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let output = run_client_script("acl_matrix.py", &arguments);
    assert!(
        output.status.success(),
        "acl_matrix.py {arguments:?} failed: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let answer: Value = serde_json::from_str(text(&output.stdout).trim()).expect("JSON answer");
    if answer["ok"] == true {
        Outcome::Allowed
    } else {
        Outcome::Refused(format!("{} {}", answer["error"], answer["detail"]))
    }
}

fn kafka_cases(bootstrap: &str) -> Vec<Case> {
    let request = |bootstrap: &str, case: &'static str, name: fn(usize) -> String| {
        let bootstrap = bootstrap.to_string();
        Box::new(move |step: usize| {
            script(vec![
                "kafka".into(),
                bootstrap.clone(),
                ALICE.0.into(),
                ALICE.1.into(),
                case.into(),
                name(step),
            ])
        }) as Box<dyn Fn(usize) -> Outcome>
    };
    let nothing = || Box::new(|_step: usize| {}) as Box<dyn Fn(usize)>;
    let case = |resource, name, prefixed, operation, refusal, prepare, request| Case {
        protocol: "kafka",
        resource,
        name,
        prefixed,
        operation,
        refusal,
        prepare,
        request,
    };
    let topic = "TOPIC_AUTHORIZATION_FAILED";
    let group = "GROUP_AUTHORIZATION_FAILED";
    vec![
        case(
            "--topic",
            "kx-data",
            false,
            "Write",
            topic,
            nothing(),
            request(bootstrap, "topic-write", |_| "kx-data".into()),
        ),
        case(
            "--topic",
            "kx-read",
            false,
            "Read",
            topic,
            nothing(),
            request(bootstrap, "topic-read", |_| "kx-read".into()),
        ),
        case(
            "--topic",
            "kx-data",
            false,
            "Describe",
            topic,
            nothing(),
            request(bootstrap, "topic-describe", |_| "kx-data".into()),
        ),
        // Auto-creation by a produce (Metadata with allow_auto_topic_creation): Write on
        // the names is standing, Create is what is tested.
        case(
            "--topic",
            "kx-auto-",
            true,
            "Create",
            topic,
            nothing(),
            request(bootstrap, "topic-write", |step| format!("kx-auto-{step}")),
        ),
        case(
            "--topic",
            "kx-create-",
            true,
            "Create",
            topic,
            nothing(),
            request(bootstrap, "topic-create", |step| {
                format!("kx-create-{step}")
            }),
        ),
        case(
            "--topic",
            "kx-data",
            false,
            "Alter",
            topic,
            nothing(),
            request(bootstrap, "topic-alter", |step| {
                format!("kx-data:{}", step + 2)
            }),
        ),
        case(
            "--topic",
            "kx-data",
            false,
            "AlterConfigs",
            topic,
            nothing(),
            request(bootstrap, "topic-alter-configs", |_| "kx-data".into()),
        ),
        case(
            "--topic",
            "kx-data",
            false,
            "DescribeConfigs",
            topic,
            nothing(),
            request(bootstrap, "topic-describe-configs", |_| "kx-data".into()),
        ),
        case(
            "--group",
            "kx-group",
            false,
            "Read",
            group,
            nothing(),
            request(bootstrap, "group-read", |_| "kx-group:kx-standing".into()),
        ),
        case(
            "--group",
            "kx-group",
            false,
            "Describe",
            group,
            nothing(),
            request(bootstrap, "group-describe", |_| "kx-group".into()),
        ),
        case(
            "--transactional-id",
            "kx-txn",
            false,
            "Write",
            "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
            nothing(),
            request(bootstrap, "txn-write", |_| "kx-txn".into()),
        ),
        case(
            "--cluster",
            "",
            false,
            "Alter",
            "CLUSTER_AUTHORIZATION_FAILED",
            nothing(),
            request(bootstrap, "cluster-alter", |_| "kx-other".into()),
        ),
        case(
            "--cluster",
            "",
            false,
            "Describe",
            "CLUSTER_AUTHORIZATION_FAILED",
            nothing(),
            request(bootstrap, "cluster-describe", |_| String::new()),
        ),
    ]
}

fn kafka_delete_cases(bootstrap: &str, native: &str) -> Vec<Case> {
    let script_request = |case: &'static str, name: fn(usize) -> String| {
        let bootstrap = bootstrap.to_string();
        Box::new(move |step: usize| {
            script(vec![
                "kafka".into(),
                bootstrap.clone(),
                ALICE.0.into(),
                ALICE.1.into(),
                case.into(),
                name(step),
            ])
        }) as Box<dyn Fn(usize) -> Outcome>
    };
    let native_topic = native.to_string();
    let native_group = native.to_string();
    vec![
        Case {
            protocol: "kafka",
            resource: "--topic",
            name: "kx-delete-",
            prefixed: true,
            operation: "Delete",
            refusal: "TOPIC_AUTHORIZATION_FAILED",
            prepare: Box::new(move |step| {
                admin(
                    &native_topic,
                    &[
                        "topic",
                        "create",
                        &format!("kx-delete-{step}"),
                        "--partitions",
                        "1",
                    ],
                    "",
                );
            }),
            request: script_request("topic-delete", |step| format!("kx-delete-{step}")),
        },
        Case {
            protocol: "kafka",
            resource: "--group",
            name: "kx-group",
            prefixed: false,
            operation: "Delete",
            refusal: "GROUP_AUTHORIZATION_FAILED",
            prepare: Box::new(move |_| {
                let reset = [
                    "group",
                    "reset-offsets",
                    "kx-group",
                    "--topic",
                    "kx-standing",
                    "--to",
                    "earliest",
                    "--execute",
                ];
                admin(&native_group, &reset, "");
            }),
            request: script_request("group-delete", |_| "kx-group".into()),
        },
    ]
}

fn amqp_cases(host: &str, port: u16, native: &str) -> Vec<Case> {
    let (host, port) = (host.to_string(), port.to_string());
    let request = move |case: &'static str, name: fn(usize) -> String| {
        let (host, port) = (host.clone(), port.clone());
        Box::new(move |step: usize| {
            script(vec![
                "amqp".into(),
                host.clone(),
                port.clone(),
                ALICE.0.into(),
                ALICE.1.into(),
                case.into(),
                name(step),
            ])
        }) as Box<dyn Fn(usize) -> Outcome>
    };
    let nothing = || Box::new(|_step: usize| {}) as Box<dyn Fn(usize)>;
    let admin_each = |make: fn(usize) -> Vec<String>| {
        let native = native.to_string();
        Box::new(move |step: usize| {
            let args = make(step);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            admin(&native, &args, "");
        }) as Box<dyn Fn(usize)>
    };
    let case = |resource, name, prefixed, operation, prepare, request| Case {
        protocol: "amqp",
        resource,
        name,
        prefixed,
        operation,
        refusal: "403",
        prepare,
        request,
    };
    vec![
        case(
            "--queue",
            "ax-qcreate-",
            true,
            "Create",
            nothing(),
            request("queue-create", |step| format!("ax-qcreate-{step}")),
        ),
        case(
            "--queue",
            "ax-queue",
            false,
            "Write",
            nothing(),
            request("queue-write", |_| "ax-queue".into()),
        ),
        case(
            "--queue",
            "ax-queue",
            false,
            "Read",
            nothing(),
            request("queue-read", |_| "ax-queue".into()),
        ),
        case(
            "--queue",
            "ax-queue",
            false,
            "Describe",
            nothing(),
            request("queue-describe", |_| "ax-queue".into()),
        ),
        case(
            "--queue",
            "ax-qdelete-",
            true,
            "Delete",
            admin_each(|step| {
                vec![
                    "queue".into(),
                    "declare".into(),
                    format!("ax-qdelete-{step}"),
                ]
            }),
            request("queue-delete", |step| format!("ax-qdelete-{step}")),
        ),
        case(
            "--exchange",
            "ax-ecreate-",
            true,
            "Create",
            nothing(),
            request("exchange-create", |step| format!("ax-ecreate-{step}")),
        ),
        case(
            "--exchange",
            "ax-exchange",
            false,
            "Write",
            nothing(),
            request("exchange-write", |_| "ax-exchange".into()),
        ),
        case(
            "--exchange",
            "ax-exchange",
            false,
            "Read",
            nothing(),
            request("exchange-read", |_| "ax-exchange:ax-bound".into()),
        ),
        case(
            "--exchange",
            "ax-exchange",
            false,
            "Describe",
            nothing(),
            request("exchange-describe", |_| "ax-exchange".into()),
        ),
        case(
            "--exchange",
            "ax-edelete-",
            true,
            "Delete",
            admin_each(|step| {
                vec![
                    "exchange".into(),
                    "declare".into(),
                    format!("ax-edelete-{step}"),
                    "--type".into(),
                    "direct".into(),
                ]
            }),
            request("exchange-delete", |step| format!("ax-edelete-{step}")),
        ),
    ]
}

fn http_cases(web: &str, native: &str) -> Vec<Case> {
    let authorization = basic(ALICE.0, ALICE.1);
    let request = |method: &'static str, path: fn(usize) -> String, body: Option<&'static str>| {
        let (web, authorization) = (web.to_string(), authorization.clone());
        Box::new(move |step: usize| {
            let (status, answer) = http_send(&web, method, &path(step), Some(&authorization), body);
            if (200..300).contains(&status) {
                Outcome::Allowed
            } else {
                Outcome::Refused(answer)
            }
        }) as Box<dyn Fn(usize) -> Outcome>
    };
    let nothing = || Box::new(|_step: usize| {}) as Box<dyn Fn(usize)>;
    let case = |resource, name, prefixed, operation, prepare, request| Case {
        protocol: "http",
        resource,
        name,
        prefixed,
        operation,
        refusal: "403 Forbidden",
        prepare,
        request,
    };
    let native_topic = native.to_string();
    vec![
        case(
            "--topic",
            "hx-data",
            false,
            "Write",
            nothing(),
            request(
                "POST",
                |_| "/api/v1/topics/hx-data/partitions/0/records".into(),
                Some(r#"{"records": [{"value": "v"}]}"#),
            ),
        ),
        case(
            "--topic",
            "hx-data",
            false,
            "Read",
            nothing(),
            request(
                "GET",
                |_| "/api/v1/topics/hx-data/partitions/0/records?offset=earliest".into(),
                None,
            ),
        ),
        case(
            "--topic",
            "hx-delete-",
            true,
            "Delete",
            Box::new(move |step| {
                admin(
                    &native_topic,
                    &[
                        "topic",
                        "create",
                        &format!("hx-delete-{step}"),
                        "--partitions",
                        "1",
                    ],
                    "",
                );
            }),
            request(
                "DELETE",
                |step| format!("/api/v1/topics/hx-delete-{step}"),
                None,
            ),
        ),
        case(
            "--queue",
            "hx-queue",
            false,
            "Write",
            nothing(),
            request(
                "POST",
                |_| "/api/v1/publish".into(),
                Some(r#"{"routing_key": "hx-queue", "body": "m"}"#),
            ),
        ),
        case(
            "--queue",
            "hx-queue",
            false,
            "Read",
            nothing(),
            request(
                "POST",
                |_| "/api/v1/queues/hx-queue/get".into(),
                Some(r#"{"count": 1, "mode": "requeue"}"#),
            ),
        ),
        case(
            "--exchange",
            "hx-ecreate-",
            true,
            "Create",
            nothing(),
            request(
                "PUT",
                |step| format!("/api/v1/exchanges/hx-ecreate-{step}"),
                Some(r#"{"kind": "direct"}"#),
            ),
        ),
        case(
            "--cluster",
            "",
            false,
            "Describe",
            nothing(),
            request("GET", |_| "/api/v1/acls".into(), None),
        ),
        case(
            "--cluster",
            "",
            false,
            "Alter",
            nothing(),
            request(
                "POST",
                |_| "/api/v1/acls".into(),
                Some(
                    r#"{"principal": "User:nobody", "resource_type": "topic", "name": "hx-other", "operation": "Read", "permission": "allow"}"#,
                ),
            ),
        ),
    ]
}

#[test]
fn every_protocol_refuses_what_no_acl_allows_allows_what_one_does_and_lets_a_deny_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = start(&dir.path().join("data"));
    let native = broker.address();
    // The resources the requests name, made by the super user; and the standing ACLs the
    // group and binding requests need besides the one under test.
    for topic in [
        "nx-data",
        "nx-describe",
        "nx-standing",
        "kx-data",
        "kx-read",
        "kx-standing",
        "hx-data",
    ] {
        admin(
            &native,
            &["topic", "create", topic, "--partitions", "1"],
            "",
        );
    }
    for topic in ["nx-data", "kx-data", "kx-read", "hx-data"] {
        admin(&native, &["produce", topic], "seed\n");
    }
    for queue in ["nx-queue", "nx-bound", "ax-queue", "ax-bound", "hx-queue"] {
        admin(&native, &["queue", "declare", queue], "");
        admin(
            &native,
            &["publish", "", queue, "--confirm"],
            "seed\nseed\nseed\n",
        );
    }
    admin(&native, &["queue", "declare", "sink"], "");
    for exchange in ["nx-exchange", "ax-exchange"] {
        let declare = ["exchange", "declare", exchange, "--type", "direct"];
        admin(&native, &declare, "");
        let bind = ["queue", "bind", "sink", exchange, "--routing-key", "k"];
        admin(&native, &bind, "");
    }
    for (flag, name, operation) in [
        ("--topic", "nx-standing", "Read"),
        ("--topic", "kx-standing", "Read"),
        // librdkafka fetches only what metadata shows it: Read is tested with Describe.
        ("--topic", "kx-read", "Describe"),
        ("--queue", "nx-bound", "Write"),
        ("--queue", "ax-bound", "Write"),
    ] {
        let args = [
            "acl",
            "add",
            "--principal",
            "User:alice",
            flag,
            name,
            "--operation",
            operation,
            "--allow",
        ];
        admin(&native, &args, "");
    }

    let auto_write = [
        "acl",
        "add",
        "--principal",
        "User:alice",
        "--topic",
        "kx-auto-",
        "--prefixed",
        "--operation",
        "Write",
        "--allow",
    ];
    admin(&native, &auto_write, "");

    let amqp = broker.amqp_address();
    let mut cases = native_cases(&native);
    cases.extend(kafka_cases(&broker.kafka_address()));
    cases.extend(kafka_delete_cases(&broker.kafka_address(), &native));
    cases.extend(amqp_cases(&amqp.ip().to_string(), amqp.port(), &native));
    cases.extend(http_cases(&broker.http_address(), &native));
    for case in &cases {
        check(&native, case);
    }
}
