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
