//! The `bestofn` command line: check-config and serve's startup errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::bestofn;

/// Every config the repository ships: the documented one, the examples and every `.toml` under
/// `deploy/` (the cluster's, mounted from its ConfigMap).
fn shipped_configs() -> Vec<PathBuf> {
    fn toml_files_under(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                toml_files_under(&path, out);
            } else if path.extension().is_some_and(|e| e == "toml") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = vec![root.join("config/bestofn.toml")];
    toml_files_under(&root.join("config/examples"), &mut paths);
    toml_files_under(&root.join("deploy"), &mut paths);
    assert!(paths.iter().any(|p| p.ends_with("deploy/kubernetes/base/bestofn.toml")), "{paths:?}");
    paths
}

#[test]
fn check_configs_output_loads_again_and_prints_the_same_text() {
    let dir = tempfile::tempdir().unwrap();
    for path in shipped_configs() {
        let (ok, first, stderr) = bestofn(&["check-config", path.to_str().unwrap()]);
        assert!(ok, "{}: {stderr}", path.display());
        let effective = dir.path().join("effective.toml");
        std::fs::write(&effective, &first).unwrap();
        let (ok, second, stderr) = bestofn(&["check-config", effective.to_str().unwrap()]);
        assert!(ok, "the effective config of {} does not load again: {stderr}\n{first}", path.display());
        assert_eq!(first, second, "{}: the effective config changed on a second pass", path.display());
    }
}

#[test]
fn check_config_withholds_inline_api_keys_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bestofn.toml")).unwrap();
    let keyed = base.replacen(
        "[server]\n",
        "[server]\napi_keys = [\"sk-inline-first\", \"sk-inline-second\"]\napi_keys_env = \"BESTOFN_TEST_KEYS\"\n",
        1,
    );
    assert_ne!(keyed, base);
    let path = dir.path().join("keyed.toml");
    std::fs::write(&path, &keyed).unwrap();
    let (ok, first, stderr) = bestofn(&["check-config", path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(!first.contains("sk-inline") && !stderr.contains("sk-inline"), "{first}{stderr}");
    assert!(!first.lines().any(|l| l.starts_with("api_keys =")), "{first}");
    assert!(first.contains("# api_keys: 2 client keys are set inline in the file and withheld"), "{first}");
    assert!(first.contains("api_keys_env = \"BESTOFN_TEST_KEYS\""), "the variable's name stays: {first}");
    // What is printed still loads, as the same config less the withheld keys.
    let effective = dir.path().join("effective.toml");
    std::fs::write(&effective, &first).unwrap();
    let (ok, second, stderr) = bestofn(&["check-config", effective.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    // The same text but for the comment in place of the keys.
    let (comments, rest): (Vec<&str>, Vec<&str>) =
        first.lines().partition(|l| l.starts_with('#') && !second.lines().any(|s| s == *l));
    assert_eq!(comments.len(), 2, "{comments:?}");
    assert_eq!(rest, second.lines().collect::<Vec<_>>());
}

#[test]
fn check_config_accepts_the_documented_default_and_prints_the_effective_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/bestofn.toml");
    let (ok, stdout, stderr) = bestofn(&["check-config", path]);
    assert!(ok, "{stderr}");
    // Defaults are filled in, so the effective config shows keys the file leaves out.
    for key in [
        "listen = \"127.0.0.1:8080\"",
        "sampling = \"auto\"",
        "timeout_ms = 60000",
        "chat_template = \"chatml\"",
        "[domains.math]",
    ] {
        assert!(stdout.contains(key), "{key} missing in:\n{stdout}");
    }
}

#[test]
fn check_config_names_the_file_and_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bestofn.toml")).unwrap();
    for (edit, expected) in [
        (base.replace("sampling = \"auto\"", "sampling = \"auto\"\nsamplign = 3"), "samplign"),
        (base.replace("n = 4", "n = 100"), "policy.n"),
        (base.replace("scorer = \"rm\"", "scorer = \"missing\""), "policy.scorer"),
        (base.replace("http://127.0.0.1:8000/v1", "ftp://x"), "upstream.base_url"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, edit).unwrap();
        let (ok, _, stderr) = bestofn(&["check-config", path.to_str().unwrap()]);
        assert!(!ok);
        assert!(stderr.contains("bad.toml") && stderr.contains(expected), "{expected}: {stderr}");
    }
    let (ok, _, stderr) = bestofn(&["check-config", "/nonexistent/bestofn.toml"]);
    assert!(!ok && stderr.contains("/nonexistent/bestofn.toml"), "{stderr}");
}

#[test]
fn serve_refuses_to_start_without_a_configured_api_key_variable() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bestofn.toml")).unwrap();
    let path = dir.path().join("keyed.toml");
    std::fs::write(
        &path,
        base.replace("sampling = \"auto\"", "sampling = \"auto\"\napi_key_env = \"BESTOFN_TEST_UNSET_KEY\""),
    )
    .unwrap();
    let (ok, _, stderr) = bestofn(&["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(stderr.contains("BESTOFN_TEST_UNSET_KEY"), "{stderr}");
}

/// A loopback port that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn eval_commands_name_an_unreachable_scorer_and_print_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bestofn.toml")).unwrap();
    let url = format!("http://127.0.0.1:{}/classify", closed_port());
    let config = dir.path().join("rm.toml");
    std::fs::write(&config, base.replace("http://127.0.0.1:8001/classify", &url)).unwrap();
    let samples = dir.path().join("samples.jsonl");
    std::fs::write(
        &samples,
        r#"{"prompt_id": "r0", "domain": "math", "prompt": "q", "chosen": 0, "scorer": "rm", "seed": 1, "candidates": [{"text": "a"}, {"text": "b"}]}"#,
    )
    .unwrap();
    let picks = dir.path().join("picks.jsonl");
    let (c, s, p) = (config.to_str().unwrap(), samples.to_str().unwrap(), picks.to_str().unwrap());
    let dataset = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rb2_sample.jsonl");
    let commands: [&[&str]; 4] = [
        &["eval", "rewardbench", "--dataset", dataset, "--config", c, "--scorer", "rm"],
        &["eval", "bon", "--samples", s, "--label-with", "rm", "--config", c],
        &["eval", "bon", "--samples", s, "--rescore", "rm", "--config", c],
        &["eval", "replay", "--samples", s, "--config", c, "--as-recorded", "--picks", p],
    ];
    for args in commands {
        let (ok, _, stderr) = bestofn(args);
        assert!(!ok, "{args:?}: {stderr}");
        assert!(stderr.contains("scorer rm at "), "{args:?}: the scorer by name: {stderr}");
        for once in ["scorer rm", "cannot reach it", "Connection refused", url.as_str()] {
            assert_eq!(stderr.matches(once).count(), 1, "{args:?}: '{once}' once: {stderr}");
        }
    }
}

#[test]
fn a_missing_input_file_is_named_with_its_cause_once() {
    let (ok, _, stderr) = common::bestofn(&["eval", "bon", "--samples", "no-such-file.jsonl"]);
    assert!(!ok);
    assert!(stderr.contains("no-such-file.jsonl: cannot read"), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "the cause once: {stderr}");
}
