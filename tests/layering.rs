//! The module layering of docs/ARCHITECTURE.md holds: each module imports only modules below
//! it, so domain logic (`score`, `bon`) never sees HTTP, and imports never form a cycle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top: a module may import only those before it.
const LAYERS: [&str; 16] = [
    "error",
    "telemetry",
    "score",
    "bon",
    "samples",
    "openai",
    "backend",
    "remote",
    "upstream",
    "record",
    "metrics",
    "eval",
    "config",
    "wiring",
    "server",
    "test_support",
];

fn sources(module: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let dir = root.join(module);
    if dir.is_dir() {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect()
    } else {
        vec![root.join(format!("{module}.rs"))]
    }
}

/// The crate modules a module's code refers to (`crate::x`), its tests excluded.
fn imports(module: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for path in sources(module) {
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !name.is_empty() && name != module {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_module_imports_only_modules_below_it() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ").or_else(|| l.trim().strip_prefix("mod ")))
    {
        let name = line.trim_end_matches(';');
        assert!(
            LAYERS.contains(&name),
            "module {name} is not placed in a layer (tests/layering.rs, docs/ARCHITECTURE.md)"
        );
    }
    for (level, module) in LAYERS.iter().enumerate() {
        for import in imports(module) {
            let below = LAYERS[..level].contains(&import.as_str());
            assert!(below, "{module} imports {import}, which is not below it");
        }
    }
    for domain in ["score", "bon"] {
        let wire: Vec<String> = imports(domain)
            .into_iter()
            .filter(|m| ["server", "backend", "openai", "remote", "upstream"].contains(&m.as_str()))
            .collect();
        assert!(wire.is_empty(), "{domain} knows wire or transport code: {wire:?}");
    }
}
