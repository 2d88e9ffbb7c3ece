//! The `bestofn` command line: check-config and serve's startup errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::bestofn;

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
