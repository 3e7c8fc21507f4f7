//! Architecture invariants of the broker crate, checked from its source (docs/ARCHITECTURE.md
//! lists them):
//!
//! 1. Each top-level module imports only the modules its layer allows (the table below), so
//!    the core, the domain and storage never import a front end, and front ends reach the
//!    domain only through the core.
//! 2. No import cycle between top-level modules.
//! 3. The core and the domain (`core`, `streams`, `groups`, `txn`, `queue`) never name a wire
//!    message or a wire error code.
//! 4. Only the append path (`append.rs`) appends to a partition log or waits for an append's
//!    durability; `storage` itself is below it.
//!
//! Method: read every `.rs` file under `broker/src` (the `bin` folder is another crate),
//! drop comments, and collect every `crate::<module>` path, including those inside grouped
//! `use crate::{...}` lists. A file's own module is its first path component.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Which top-level modules each top-level module may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("server", &["frontend", "net", "core", "config", "storage"]),
    ("frontend", &["core", "net"]),
    ("net", &[]),
    (
        "core",
        &[
            "txn", "groups", "streams", "queue", "append", "storage", "config",
        ],
    ),
    ("txn", &["groups", "streams", "append", "storage"]),
    ("groups", &["streams", "append", "storage"]),
    ("streams", &["append", "storage", "config"]),
    ("queue", &["append", "storage"]),
    ("append", &["storage"]),
    ("config", &["storage"]),
    ("storage", &[]),
];

/// Modules that must not name wire messages or wire error codes.
const PROTOCOL_NEUTRAL: &[&str] = &["core", "streams", "groups", "txn", "queue", "append"];

/// Calls only the append path (and storage, below it) may make.
const APPEND_CALLS: &[&str] = &[".append(", "wait_durable(", "wait_durable_blocking("];

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
fn core_and_domain_never_name_wire_messages_or_error_codes() {
    let violations = wire_type_violations(&sources());
    assert!(
        violations.is_empty(),
        "wire types in protocol-neutral code:\n{}",
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

fn wire_type_violations(sources: &[Source]) -> Vec<String> {
    lines_matching(
        sources,
        |module| PROTOCOL_NEUTRAL.contains(&module),
        |line| line.contains("wharf_protocol::messages") || contains_word(line, "ErrorCode"),
    )
}

fn append_violations(sources: &[Source]) -> Vec<String> {
    lines_matching(
        sources,
        |module| module != "append" && module != "storage",
        |line| APPEND_CALLS.iter().any(|call| line.contains(call)),
    )
}

/// `path:line: code` for every line of a file in a checked module that matches.
fn lines_matching(
    sources: &[Source],
    checked: impl Fn(&str) -> bool,
    matches: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut found = Vec::new();
    for source in sources.iter().filter(|source| checked(&source.module)) {
        for (line_number, line) in source.code.lines().enumerate() {
            if matches(line) {
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

/// One source file with comments removed.
struct Source {
    path: PathBuf,
    module: String,
    code: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(&root).ok()?.to_path_buf();
            let first = relative
                .components()
                .next()?
                .as_os_str()
                .to_str()?
                .to_string();
            if first == "bin" || first == "lib.rs" {
                return None;
            }
            let module = first.trim_end_matches(".rs").to_string();
            let text = fs::read_to_string(&path).ok()?;
            Some(Source {
                path: relative,
                module,
                code: strip_comments(&text),
            })
        })
        .collect()
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

fn contains_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(start, _)| {
        let before = line[..start].chars().next_back();
        let after = line[start + word.len()..].chars().next();
        !before.is_some_and(|character| character.is_alphanumeric() || character == '_')
            && !after.is_some_and(|character| character.is_alphanumeric() || character == '_')
    })
}

/// The top-level modules a file names through `crate::`.
fn imported_modules(code: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for (start, _) in code.match_indices("crate::") {
        let rest = &code[start + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::{b, c}, d};`: the first segment of every top-level item.
            let mut depth = 0;
            let mut item_start = true;
            let mut name = String::new();
            for character in group.chars() {
                match character {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    character
                        if item_start && (character.is_alphanumeric() || character == '_') =>
                    {
                        name.push(character)
                    }
                    _ => {
                        if !name.is_empty() {
                            modules.insert(std::mem::take(&mut name));
                        }
                        if !character.is_whitespace() {
                            item_start = false;
                        }
                    }
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|character| character.is_alphanumeric() || *character == '_')
            .collect();
        if !name.is_empty() {
            modules.insert(name);
        }
    }
    modules
}

fn import_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let edges = graph.entry(source.module.clone()).or_default();
        for imported in imported_modules(&source.code) {
            if imported != source.module {
                edges.insert(imported);
            }
        }
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
        for imported in imported_modules(&source.code) {
            if imported != source.module && !permitted.contains(&imported.as_str()) {
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
