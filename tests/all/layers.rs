//! The library's layers stay one way down: no import cycle between the top-level
//! modules of `host/src`, `model` imports nothing of the crate, and only the binary's
//! `cli/` links clap. Read from the sources (every `crate::…` path outside comments and
//! `#[cfg(test)]` code), so a new cycle fails here before review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::repo_root;

/// Top-level module → the top-level modules its files import.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if top == "lib" || top == "main" || top == "cli" {
                continue; // the crate roots, and the binary's own modules
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let imports = graph.entry(top.clone()).or_default();
            for line in code.lines() {
                let line = line.split("//").next().unwrap_or_default();
                let mut rest = line;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    let group = rest.starts_with('{');
                    if group {
                        // `crate::{a, b::c}`
                        let inner = rest[1..].split('}').next().unwrap_or_default();
                        for item in inner.split(',') {
                            let first = item.trim().split("::").next().unwrap_or_default();
                            if !first.is_empty() && first != top {
                                imports.insert(first.to_string());
                            }
                        }
                    } else if !name.is_empty() && name != top {
                        imports.insert(name);
                    }
                }
            }
        }
    }
    // Macros exported at the crate root are not modules.
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for imports in graph.values_mut() {
        imports.retain(|m| modules.contains(m));
    }
    graph
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
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
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn library_modules_import_one_way_down() {
    let graph = import_graph(&repo_root().join("host/src"));
    assert!(graph.len() > 10, "read the modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}\n{graph:#?}", cycle.join(" -> "));
    }
    assert_eq!(
        graph["model"],
        BTreeSet::new(),
        "model imports nothing of ours"
    );
    for below in ["broker", "backend"] {
        assert!(
            !graph[below].contains(if below == "broker" {
                "backend"
            } else {
                "broker"
            }),
            "broker and backend are siblings: {graph:#?}"
        );
    }
    assert!(
        !graph["celery"]
            .iter()
            .any(|m| m == "broker" || m == "backend"),
        "the Celery codec sits below brokers and backends: {:?}",
        graph["celery"]
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn only_the_binary_links_clap() {
    let src = repo_root().join("host/src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(&src).unwrap().to_path_buf();
            if rel.starts_with("cli") || rel == Path::new("main.rs") {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    !text.contains("clap::") && !text.contains("use clap"),
                    "{} uses clap: the library must not",
                    rel.display()
                );
            }
        }
    }
}
