//! Architecture invariants of the broker crate, checked from its source (docs/ARCHITECTURE.md
//! lists them):
//!
//! 1. Each top-level module imports only the modules its layer allows (the table below), so
//!    the core, the domain and storage never import a front end, and front ends reach the
//!    domain only through the core.
//! 2. No import cycle between top-level modules.
//! 3. The core and the domain (`core`, `streams`, `groups`, `txn`, `queue`, `append`) name
//!    nothing of `wharf_protocol` but the record batch format (`batch`) and the encoding of
//!    their own files (`wire`, `wire_struct!`): no wire message, no wire error code, no frame.
//!    `net` names nothing of `wharf_protocol` at all: it knows no protocol.
//! 4. Only the append path (`append.rs`) appends to a partition log or waits for an append's
//!    durability; `storage` itself is below it.
//!
//! Method: read every `.rs` file under `broker/src` (the `bin` folder is another crate),
//! drop comments, and collect the first segment of every `crate::` and `wharf_protocol::`
//! path, including those inside grouped `use x::{...}` lists, and resolve `super::` paths
//! to the top-level module they reach. A file's own module is its first path component. The
//! last test plants one violation of each kind and checks that every checker reports it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Which top-level modules each top-level module may import.
const ALLOWED: &[(&str, &[&str])] = &[
    // `metrics` is plain atomics that every layer updates (issue #17): anyone may call it.
    (
        "server",
        &[
            "frontend", "net", "core", "cluster", "config", "storage", "metrics",
        ],
    ),
    ("frontend", &["core", "net", "config", "metrics"]),
    ("net", &[]),
    (
        "core",
        &[
            "txn", "groups", "streams", "queue", "acl", "auth", "cluster", "append", "storage",
            "config", "metrics",
        ],
    ),
    ("acl", &["storage", "metrics"]),
    // The cluster's control plane (issue #20): the metadata log on openraft over storage's
    // files; the core and the server call it, it calls no domain module.
    ("cluster", &["storage", "metrics"]),
    // The domain modules below may name `acl` for its refusal type only (`acl::Denied`,
    // carried by each domain error's Unauthorized variant, issue #18); `acl` imports none
    // of them, so no cycle can form.
    (
        "txn",
        &["groups", "streams", "append", "acl", "storage", "metrics"],
    ),
    (
        "groups",
        &["streams", "append", "acl", "storage", "metrics"],
    ),
    (
        "streams",
        &["append", "acl", "storage", "config", "metrics"],
    ),
    ("queue", &["append", "acl", "storage", "metrics"]),
    // Users and logins (issue #18): their file goes through storage's checkpoints.
    ("auth", &["acl", "storage", "metrics"]),
    ("append", &["storage", "metrics"]),
    ("config", &["storage"]),
    ("storage", &["metrics"]),
    ("metrics", &[]),
];

/// Modules that may use only the protocol crate's storage-format parts.
const PROTOCOL_NEUTRAL: &[&str] = &[
    "core", "streams", "groups", "txn", "queue", "acl", "auth", "append", "metrics",
];

/// What protocol-neutral modules may name of `wharf_protocol`.
/// `sasl` is the SASL mechanism bytes (SCRAM, PLAIN) and SCRAM's computations: the same
/// bytes in every protocol that carries them (native, Kafka, AMQP), so the one login rule in
/// the core parses them; no wire message or wire error code is in it.
const NEUTRAL_PROTOCOL_ITEMS: &[&str] = &["batch", "wire", "wire_struct", "sasl"];

/// Calls only the append path (and storage, below it) may make.
const APPEND_CALLS: &[&str] = &[
    ".append(",
    ".append_without_fsync(",
    ".append_keeping_epochs(",
    "wait_durable(",
    "wait_durable_blocking(",
];

/// Fewer source files than this means the scan went wrong (a moved `src`, an unreadable file),
/// and an empty scan would pass every check.
const SOURCE_FILES_MIN: usize = 40;

#[test]
fn modules_import_only_what_their_layer_allows() {
    let violations = layer_violations(&sources());
    assert!(
        violations.is_empty(),
        "imports that break the layer table:\n{}",
        violations.join("\n")
    );
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = import_graph(&sources());
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn core_and_domain_name_no_wire_type_and_net_no_protocol() {
    let violations = protocol_violations(&sources());
    assert!(
        violations.is_empty(),
        "protocol types where they must not be:\n{}",
        violations.join("\n")
    );
}

#[test]
fn only_the_append_path_appends_to_a_log() {
    let violations = append_violations(&sources());
    assert!(
        violations.is_empty(),
        "appends or durability waits outside broker/src/append.rs:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checks_see_planted_violations() {
    // Goal: the checks above would fail if a rule were broken, not pass vacuously. Method:
    // plant violations of each kind (including the indirect spellings: `super::` paths,
    // grouped `use` lists, an alias of the protocol crate) in a copy of the real sources and
    // run every checker on it.
    let mut planted = sources();
    planted.push(planted_source(
        "core/planted.rs",
        "use super::super::frontend::native::Native;\nuse crate::{net::listener, storage};\nuse wharf_protocol::{batch, messages::FetchRequest};\nfn f() { log.append(&mut bytes); }\nuse wharf_protocol as wp;\n",
    ));
    planted.push(planted_source(
        "net/planted.rs",
        "use wharf_protocol::frame::FrameHeader;\n",
    ));
    let layers = layer_violations(&planted);
    assert!(layers.iter().any(|line| line.ends_with("core -> frontend")));
    assert!(layers.iter().any(|line| line.ends_with("core -> net")));
    let cycle = find_cycle(&import_graph(&planted)).expect("core -> frontend -> core is a cycle");
    assert!(cycle.contains(&"core".to_string()) && cycle.contains(&"frontend".to_string()));
    let protocol = protocol_violations(&planted);
    assert!(protocol
        .iter()
        .any(|line| line.contains("wharf_protocol::messages")));
    assert!(protocol.iter().any(|line| line.contains("alias")));
    assert!(protocol
        .iter()
        .any(|line| line.starts_with("net/planted.rs")));
    assert!(append_violations(&planted)
        .iter()
        .any(|line| line.starts_with("core/planted.rs:4")));
}

/// One source file with comments removed.
struct Source {
    path: PathBuf,
    module: String,
    code: String,
}

fn planted_source(path: &str, code: &str) -> Source {
    Source {
        path: PathBuf::from(path),
        module: path.split('/').next().unwrap_or(path).to_string(),
        code: code.to_string(),
    }
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    let sources: Vec<Source> = files
        .into_iter()
        .filter_map(|path| {
            let relative = path
                .strip_prefix(&root)
                .expect("collected under src")
                .to_path_buf();
            let first = relative
                .components()
                .next()?
                .as_os_str()
                .to_str()?
                .to_string();
            if first == "bin" || first == "lib.rs" {
                return None;
            }
            let text =
                fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {path:?}: {error}"));
            Some(Source {
                path: relative,
                module: first.trim_end_matches(".rs").to_string(),
                code: strip_comments(&text),
            })
        })
        .collect();
    assert!(
        sources.len() >= SOURCE_FILES_MIN,
        "only {} source files found under {root:?}",
        sources.len()
    );
    sources
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|error| panic!("read {dir:?}: {error}"));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// Drops `//` comments (doc comments included), so prose may name any module.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(start) if !line[..start].contains('"') => &line[..start],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_identifier(character: char) -> bool {
    character.is_alphanumeric() || character == '_'
}

/// The first segment after every `prefix` (`crate::`, `wharf_protocol::`) in `code`, with
/// each top-level item of a grouped list (`prefix{a::{b, c}, d}` gives `a` and `d`).
fn first_segments(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut segments = BTreeSet::new();
    for (start, _) in code.match_indices(prefix) {
        if code[..start].chars().next_back().is_some_and(is_identifier) {
            continue;
        }
        let rest = &code[start + prefix.len()..];
        let Some(group) = rest.strip_prefix('{') else {
            let name: String = rest.chars().take_while(|c| is_identifier(*c)).collect();
            if !name.is_empty() {
                segments.insert(name);
            }
            continue;
        };
        let mut depth = 0;
        let mut item_start = true;
        let mut name = String::new();
        for character in group.chars() {
            match character {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                character if item_start && is_identifier(character) => name.push(character),
                _ => {
                    if !name.is_empty() {
                        segments.insert(std::mem::take(&mut name));
                    }
                    if !character.is_whitespace() {
                        item_start = false;
                    }
                }
            }
        }
        if !name.is_empty() {
            segments.insert(name);
        }
    }
    segments
}

/// The top-level modules a file reaches through `super::` paths: from `core/queue_ops.rs`,
/// `super::super::frontend` reaches `frontend`; `super::x` stays inside `core`.
fn super_modules(source: &Source) -> BTreeSet<String> {
    let depth = source.path.components().count();
    let mut modules = BTreeSet::new();
    for (start, _) in source.code.match_indices("super::") {
        if source.code[..start]
            .chars()
            .next_back()
            .is_some_and(|character| is_identifier(character) || character == ':')
        {
            continue;
        }
        let mut rest = &source.code[start..];
        let mut ups = 0;
        while let Some(after) = rest.strip_prefix("super::") {
            ups += 1;
            rest = after;
        }
        if ups >= depth {
            let name: String = rest.chars().take_while(|c| is_identifier(*c)).collect();
            if !name.is_empty() {
                modules.insert(name);
            }
        }
    }
    modules
}

/// The top-level modules a file names.
fn imported_modules(source: &Source) -> BTreeSet<String> {
    let mut modules = first_segments(&source.code, "crate::");
    modules.extend(super_modules(source));
    modules.remove(&source.module);
    modules
}

fn import_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        graph
            .entry(source.module.clone())
            .or_default()
            .extend(imported_modules(source));
    }
    graph
}

fn layer_violations(sources: &[Source]) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut violations = Vec::new();
    for source in sources {
        let Some(permitted) = allowed.get(source.module.as_str()) else {
            violations.push(format!(
                "{}: top-level module {:?} is not in the layer table of broker/tests/architecture.rs",
                source.path.display(),
                source.module
            ));
            continue;
        };
        for imported in imported_modules(source) {
            if !permitted.contains(&imported.as_str()) {
                violations.push(format!(
                    "{}: {} -> {}",
                    source.path.display(),
                    source.module,
                    imported
                ));
            }
        }
    }
    violations
}

fn protocol_violations(sources: &[Source]) -> Vec<String> {
    let mut violations = Vec::new();
    for source in sources {
        let allowed: &[&str] = if source.module == "net" {
            &[]
        } else if PROTOCOL_NEUTRAL.contains(&source.module.as_str()) {
            NEUTRAL_PROTOCOL_ITEMS
        } else {
            continue;
        };
        for item in first_segments(&source.code, "wharf_protocol::") {
            if !allowed.contains(&item.as_str()) {
                violations.push(format!(
                    "{}: names wharf_protocol::{item}",
                    source.path.display()
                ));
            }
        }
        if source.code.contains("wharf_protocol as") {
            violations.push(format!(
                "{}: an alias of wharf_protocol hides what it names",
                source.path.display()
            ));
        }
    }
    violations
}

fn append_violations(sources: &[Source]) -> Vec<String> {
    let mut found = Vec::new();
    for source in sources {
        if source.module == "append" || source.module == "storage" {
            continue;
        }
        for (line_number, line) in source.code.lines().enumerate() {
            if APPEND_CALLS.iter().any(|call| line.contains(call)) {
                found.push(format!(
                    "{}:{}: {}",
                    source.path.display(),
                    line_number + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

/// A cycle in the graph, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|visited| visited == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}
