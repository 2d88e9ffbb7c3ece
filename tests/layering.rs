//! The core crate stays free of HTTP: nothing in `bestofn-core`'s dependency tree (read from
//! Cargo.lock, what the build resolves) is an HTTP server or client crate. The compiler keeps
//! the core from naming this crate's modules; this keeps it from growing an HTTP stack.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

/// Crates that speak HTTP (or carry its types) and must not be below the core.
const HTTP_CRATES: [&str; 8] = ["hyper", "hyper-util", "reqwest", "axum", "h2", "tower-http", "http", "http-body"];

#[test]
fn the_core_crate_depends_on_no_http_crate() {
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap()).unwrap();
    let packages = lock["package"].as_array().unwrap();
    // A dependency is written "name" when one version is locked, else "name version".
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().unwrap().to_string();
        let listed = p.get("dependencies").and_then(|d| d.as_array()).cloned().unwrap_or_default();
        let entry = deps.entry(name).or_default();
        entry.extend(listed.iter().map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_string()));
    }
    assert!(deps.contains_key("bestofn-core"), "no bestofn-core in Cargo.lock");
    let mut seen = BTreeSet::new();
    let mut stack = vec![("bestofn-core".to_string(), vec!["bestofn-core".to_string()])];
    while let Some((name, path)) = stack.pop() {
        assert!(!HTTP_CRATES.contains(&name.as_str()), "the core reaches an HTTP crate: {}", path.join(" -> "));
        if !seen.insert(name.clone()) {
            continue;
        }
        for dep in deps.get(&name).into_iter().flatten() {
            let mut next = path.clone();
            next.push(dep.clone());
            stack.push((dep.clone(), next));
        }
    }
    // The walk went somewhere: the core's own dependencies were found.
    assert!(seen.contains("serde_json") && seen.contains("tokio"), "{seen:?}");
    // And it would have noticed: the bestofn crate itself does reach them.
    assert!(deps["bestofn"].iter().any(|d| d == "hyper"));
}
