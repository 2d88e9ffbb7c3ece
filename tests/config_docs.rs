//! The configuration reference's table (docs/configuration.md) and `config/bestofn.toml` list the keys the code reads, with
//! the defaults the code fills in: both are checked against the validated config itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bestofn::config::Config;

/// Every key set (to a non-default value where it has one), so the effective config lists them.
const EVERY_KEY: &str = r#"
[server]
listen = "127.0.0.1:9000"
heartbeat_interval_ms = 1
api_keys = ["k"]
api_keys_env = "K"
auth_ops_endpoints = true
max_concurrent_requests = 1
max_body_bytes = 1
header_read_timeout_ms = 1
body_read_timeout_ms = 1
drain_timeout_ms = 1
write_timeout_ms = 1
idle_timeout_ms = 1
log_format = "json"

[upstream]
base_urls = ["http://127.0.0.1:8000/v1"]
sampling = "n"
hedge = 1
models = ["m"]
usage_counts = "trust"
http2 = "never"
max_response_bytes = 1
typical_call_ms = 1
api_key_env = "U"
timeout_ms = 1
max_retries = 1
retry_backoff_ms = 1
retry_backoff_max_ms = 1
eject_after_failures = 1
eject_cooldown_ms = 1
max_in_flight = 4

[scorers.NAME]
kind = "reward_http"
api = "vllm_classify"
urls = ["http://127.0.0.1:8001/classify"]
model = "m"
chat_template = "plain"
input_format = "messages"
label_index = 1
label = "l"
include_reasoning = true
api_key_env = "R"
timeout_ms = 1
max_retries = 1
retry_backoff_ms = 1
retry_backoff_max_ms = 1
eject_after_failures = 1
eject_cooldown_ms = 1
max_in_flight = 4

[scorers.JUDGE]
kind = "judge"
base_urls = ["http://127.0.0.1:8002/v1"]
model = "m"
mode = "ranking"
concurrency = 1
seed = 1
max_tokens = 1
logprobs = true

[scorers.ENSEMBLE]
kind = "ensemble"
members = ["NAME"]
combine = "weighted"
weights = [2.0]

[scorers.VERIFY]
kind = "verify"
pattern = "x"

[scorers.VOTE]
kind = "weighted_vote"
member = "NAME"
temperature = 2.0

[score_cache]
max_entries = 1
ttl_ms = 1

[policy]
n = 2
scorer = "NAME"
deadline_ms = 1
min_candidates = 2
on_scorer_failure = "first"
adaptive = true
first_wave = 1
accept_score = 1.0
confidence = 0.9
degrade_at_queue_ms = 100
min_n = 2
selection = "soft"
soft_temperature = 2.0
fuse_top = 3
fuse_show_scores = true
require_valid = true

[domains.math]
n = 2
scorer = "NAME"
temperature = 0.5
max_tokens = 1
deadline_ms = 1
adaptive = true
first_wave = 1
accept_score = 1.0
confidence = 0.9
degrade_at_queue_ms = 100
min_n = 2
selection = "soft"
soft_temperature = 2.0
fuse_top = 3
fuse_show_scores = true
require_valid = true

[telemetry]
otlp_endpoint = "http://127.0.0.1:4318"
provider_name = "p"
capture_content = true
service_name = "s"

[classifier]
kind = "judge"
base_url = "http://127.0.0.1:8003/v1"
model = "m"
api_key_env = "C"
timeout_ms = 1
max_retries = 1
retry_backoff_ms = 1
retry_backoff_max_ms = 1
eject_after_failures = 1
eject_cooldown_ms = 1
max_in_flight = 4

[fuser]
base_url = "http://127.0.0.1:8004/v1"
model = "m"
max_tokens = 1
temperature = 0.5
api_key_env = "F"
timeout_ms = 1
max_retries = 1
retry_backoff_ms = 1
retry_backoff_max_ms = 1
eject_after_failures = 1
eject_cooldown_ms = 1
max_in_flight = 4

[recorder]
path = "x.jsonl"
sample_rate = 0.5
max_bytes = 1
max_files = 1
queue_capacity = 1
"#;

/// Only what is required, so the effective config shows the defaults.
const REQUIRED_ONLY: &str = r#"
[upstream]
base_url = "http://127.0.0.1:8000/v1"
[scorers.NAME]
kind = "reward_http"
api = "vllm_classify"
url = "http://127.0.0.1:8001/classify"
[scorers.JUDGE]
kind = "judge"
[scorers.VOTE]
kind = "weighted_vote"
member = "NAME"
[policy]
n = 2
[domains.math]
[score_cache]
[classifier]
kind = "judge"
[fuser]
[recorder]
path = "x.jsonl"
"#;

/// Keys whose value the code derives from other keys, or that are output only.
const NOT_A_DEFAULT: [&str; 6] = [
    "fuser.base_url",         // the fuser defaults to the upstream's first server
    "upstream.base_urls",     // from base_url
    "scorers.NAME.urls",      // from url
    "scorers.NAME.base_urls", // a judge defaults to the upstream's servers
    "classifier.base_url",    // the classifier defaults to the upstream's first server
    "scorers.NAME.weights",   // an ensemble defaults to one weight per member
];

/// Scorer names of the two configs, documented as `scorers.NAME`.
fn section_of(table: &str) -> String {
    match table.split_once('.') {
        Some(("scorers", _)) => "scorers.NAME".into(),
        Some(("domains", _)) => "domains.NAME".into(),
        _ => table.to_string(),
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                let key = match key.split('.').collect::<Vec<_>>().as_slice() {
                    ["scorers", _, rest @ ..] if !rest.is_empty() => format!("scorers.NAME.{}", rest.join(".")),
                    ["domains", _, rest @ ..] if !rest.is_empty() => format!("domains.NAME.{}", rest.join(".")),
                    _ => key,
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn effective(text: &str) -> BTreeMap<String, toml::Value> {
    let config = Config::from_toml(text, Path::new("docs.toml")).unwrap();
    let mut out = BTreeMap::new();
    flatten("", &toml::from_str::<toml::Value>(&config.to_toml()).unwrap(), &mut out);
    // The built-in consensus and verify scorers, and what no section sets, are not keys.
    out.retain(|k, _| k.contains('.'));
    out
}

/// Keys the code reads, and the default of each that has one.
fn code_keys() -> (BTreeSet<String>, BTreeMap<String, toml::Value>) {
    let mut keys: BTreeSet<String> = effective(EVERY_KEY).into_keys().collect();
    // Users write one URL or a list; the effective config shows the list.
    keys.extend(["upstream.base_url", "scorers.NAME.url", "scorers.NAME.base_url"].map(String::from));
    // Client keys are never printed (a comment says how many were withheld).
    keys.insert("server.api_keys".into());
    let given: BTreeSet<String> = {
        let mut g = BTreeMap::new();
        flatten("", &toml::from_str::<toml::Value>(REQUIRED_ONLY).unwrap(), &mut g);
        g.into_keys().collect()
    };
    let mut defaults = effective(REQUIRED_ONLY);
    defaults.retain(|k, _| !given.contains(k) && !NOT_A_DEFAULT.contains(&k.as_str()) && keys.contains(k));
    // Fields that only one scorer kind has are documented per kind; both kinds' shared keys
    // (model, transport) have the same defaults.
    (keys, defaults)
}

fn parse_value(text: &str) -> Option<toml::Value> {
    let parse = |t: &str| toml::from_str::<toml::Table>(&format!("v = {t}")).ok().and_then(|mut t| t.remove("v"));
    parse(text.trim()).or_else(|| text.rfind(" #").and_then(|at| parse(text[..at].trim())))
}

/// `key = value` lines of the documented config, commented or not: (dotted key, value, commented).
fn toml_doc_lines(text: &str) -> Vec<(String, Option<toml::Value>, bool)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Prose in comments is indented ("#   kind = ..."); a commented key is "# key = value".
        let (body, commented) = match trimmed.strip_prefix('#') {
            Some(rest) if rest.starts_with("  ") => continue,
            Some(rest) => (rest.trim(), true),
            None => (trimmed, false),
        };
        if let Some(name) = body.strip_prefix('[').and_then(|b| b.split(']').next()) {
            if !name.contains(' ') {
                section = section_of(name);
            }
            continue;
        }
        let Some((key, value)) = body.split_once('=') else { continue };
        let key = key.trim();
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || section.is_empty()
        {
            continue;
        }
        out.push((format!("{section}.{key}"), parse_value(value), commented));
    }
    out
}

/// Rows of the configuration reference's table: (dotted key, documented default if a literal).
fn reference_rows(text: &str) -> Vec<(String, Option<toml::Value>)> {
    let mut out = Vec::new();
    for line in text.lines().skip_while(|l| !l.starts_with("| key |")).skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let keys: Vec<&str> = cells[1].split(',').map(|k| k.trim().trim_matches('`')).collect();
        let defaults: Vec<&str> = cells[2].split(", ").map(str::trim).collect();
        let section = keys[0].rsplit_once('.').map(|(s, _)| s.to_string()).unwrap_or_default();
        for (i, key) in keys.iter().enumerate() {
            let key = if key.contains('.') { key.to_string() } else { format!("{section}.{key}") };
            let default = defaults.get(if defaults.len() == keys.len() { i } else { 0 });
            let literal = default.and_then(|d| d.strip_prefix('`')).and_then(|d| d.strip_suffix('`'));
            out.push((key, literal.and_then(parse_value)));
        }
    }
    out
}

#[test]
fn the_configuration_reference_lists_every_key_with_the_codes_defaults() {
    let (keys, defaults) = code_keys();
    let reference = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
    let rows = reference_rows(&reference);
    let documented: BTreeSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    let missing: Vec<&String> = keys.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&keys).collect();
    assert!(missing.is_empty(), "keys the code reads but docs/configuration.md lacks: {missing:?}");
    assert!(unknown.is_empty(), "docs/configuration.md lists keys the code does not read: {unknown:?}");
    for (key, default) in &defaults {
        let row = rows.iter().find(|(k, _)| k == key).map(|(_, d)| d.clone()).unwrap_or(None);
        assert_eq!(row.as_ref(), Some(default), "docs/configuration.md's default of {key}");
    }
}

#[test]
fn the_documented_config_file_lists_every_key_with_the_codes_defaults() {
    let (keys, defaults) = code_keys();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/bestofn.toml")).unwrap();
    let lines = toml_doc_lines(&text);
    let documented: BTreeSet<String> = lines.iter().map(|(k, _, _)| k.clone()).collect();
    let missing: Vec<&String> = keys.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&keys).collect();
    assert!(missing.is_empty(), "keys the code reads but config/bestofn.toml lacks: {missing:?}");
    assert!(unknown.is_empty(), "config/bestofn.toml lists keys the code does not read: {unknown:?}");
    // A commented key shows its default.
    for (key, value, commented) in &lines {
        if let (true, Some(default), Some(value)) = (commented, defaults.get(key), value) {
            assert_eq!(value, default, "config/bestofn.toml's commented default of {key}");
        }
    }
    for key in defaults.keys() {
        assert!(lines.iter().any(|(k, v, _)| k == key && v.is_some()), "config/bestofn.toml shows no value for {key}");
    }
    // And the file itself is a valid config.
    Config::from_toml(&text, Path::new("config/bestofn.toml")).unwrap();
}

#[test]
fn the_effective_config_loads_again_as_the_same_config() {
    for text in [EVERY_KEY, REQUIRED_ONLY] {
        let config = Config::from_toml(text, Path::new("docs.toml")).unwrap();
        let printed = config.to_toml();
        let again = Config::from_toml(&printed, Path::new("effective.toml"))
            .unwrap_or_else(|e| panic!("the effective config does not load again: {e}\n{printed}"));
        // Everything but the inline client keys, which are withheld.
        let mut expected = config.clone();
        expected.server.api_keys.clear();
        assert_eq!(again, expected, "{printed}");
        assert_eq!(
            again.to_toml().lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>(),
            printed.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>()
        );
        assert!(!printed.contains("api_keys ="), "{printed}");
    }
}
