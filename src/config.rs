//! Configuration: TOML read into raw structs that reject unknown keys, then validated into the
//! runtime types the rest of bestofn uses.
//!
//! Each section is read and validated beside the module it configures: `[server]` in
//! `server::config`, `[upstream]` in `upstream::config`, the transport keys shared by every
//! section that calls a backend in `backend::config`, `[scorers.*]`, `[score_cache]`,
//! `[classifier]` and `[fuser]` in `remote::config`, `[recorder]` in `record`, `[telemetry]` in
//! `telemetry`, and `[policy]` and `[domains.*]` in the core's `bon::config`. This module reads
//! the file, holds the shared validation helpers and calls each section's validator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bon::config::{RawDomain, RawPolicy};
use crate::bon::{AdaptivePolicy, DomainRule, Policy, PolicySettings, SteeringSelection};
use crate::record::{RawRecorder, RecorderConfig};
use crate::remote::config::{RawClassifier, RawFuser, RawScoreCache, RawScorer};
use crate::server::config::RawServer;
use crate::upstream::config::RawUpstream;

pub use crate::bon::config::PolicyConfig;
pub use crate::remote::config::{
    ClassifierConfig, EnsembleConfig, FuserConfig, ScoreCacheConfig, ScorerConfig, ScorerKind,
};
pub use crate::server::config::{LogFormat, ServerConfig};
pub use crate::upstream::config::UpstreamConfig;

/// A configuration that could not be loaded, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, or has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A value is out of range or refers to something that does not exist.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The dotted key at fault, e.g. `policy.n`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The file as read: one field a section, each section's struct beside the module it
/// configures.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    upstream: RawUpstream,
    #[serde(default)]
    scorers: BTreeMap<String, RawScorer>,
    policy: RawPolicy,
    #[serde(default)]
    domains: BTreeMap<String, RawDomain>,
    recorder: Option<RawRecorder>,
    score_cache: Option<RawScoreCache>,
    classifier: Option<RawClassifier>,
    fuser: Option<RawFuser>,
    #[serde(default)]
    telemetry: crate::telemetry::RawTelemetry,
}

/// The validated configuration, with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// The HTTP server.
    pub server: ServerConfig,
    /// The upstream LLM.
    pub upstream: UpstreamConfig,
    /// Named scorers.
    pub scorers: BTreeMap<String, ScorerConfig>,
    /// The default policy.
    pub policy: PolicyConfig,
    /// Per-domain overrides.
    pub domains: BTreeMap<String, DomainRule>,
    /// The traffic recorder, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorder: Option<RecorderConfig>,
    /// The score cache for pointwise scorers, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_cache: Option<ScoreCacheConfig>,
    /// How requests without an explicit domain are classified.
    pub classifier: ClassifierConfig,
    /// The fuser of `selection = "fuse"`, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuser: Option<FuserConfig>,
    /// Request ids, trace propagation and OpenTelemetry export.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// What the file holds that still loads but should change (removed keys), one line each.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Every default of the configuration, named once: the validator, docs/configuration.md's table and
/// `config/bestofn.toml` agree with these (a test checks the two documents).
pub mod defaults {
    /// The policy's defaults (`policy.scorer`, `min_candidates`, `min_n`, `adaptive`,
    /// `first_wave`), named beside the policy in the core crate.
    pub use crate::bon::config::defaults::*;

    /// `server.listen`.
    pub const LISTEN: &str = "127.0.0.1:8080";
    /// `server.heartbeat_interval_ms`.
    pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
    /// `server.max_concurrent_requests`.
    pub const MAX_CONCURRENT_REQUESTS: usize = 1024;
    /// `server.max_body_bytes`.
    pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
    /// `server.header_read_timeout_ms`.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    /// `server.body_read_timeout_ms`.
    pub const BODY_READ_TIMEOUT_MS: u64 = 30_000;
    /// `server.drain_timeout_ms`.
    pub const DRAIN_TIMEOUT_MS: u64 = 30_000;
    /// `server.write_timeout_ms`.
    pub const WRITE_TIMEOUT_MS: u64 = 30_000;
    /// `server.idle_timeout_ms`.
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    /// `server.auth_ops_endpoints`: probes and scrapes need no key unless asked.
    pub const AUTH_OPS_ENDPOINTS: bool = false;
    /// `server.log_format`.
    pub const LOG_FORMAT: super::LogFormat = super::LogFormat::Text;
    /// `upstream.sampling`: learn whether the server honours `n`.
    pub const SAMPLING: crate::upstream::SamplingMode = crate::upstream::SamplingMode::Auto;
    /// `upstream.usage_counts`.
    pub const USAGE_COUNTS: crate::upstream::UsageCounts = crate::upstream::UsageCounts::Auto;
    /// `upstream.http2`.
    pub const HTTP2: crate::backend::Http2Mode = crate::backend::Http2Mode::Auto;
    /// `upstream.timeout_ms`.
    pub const UPSTREAM_TIMEOUT_MS: u64 = 60_000;
    /// `upstream.max_response_bytes`: far above any chat answer, low enough that a broken or
    /// hostile backend cannot make the proxy buffer without bound.
    pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
    /// `upstream.typical_call_ms`: what load-aware N assumes a call takes until one has been
    /// served, about one short chat answer from a loaded server.
    pub const TYPICAL_CALL_MS: u64 = 1_000;
    /// `scorers.NAME.timeout_ms`.
    pub const SCORER_TIMEOUT_MS: u64 = 30_000;
    /// `classifier.timeout_ms`.
    pub const CLASSIFIER_TIMEOUT_MS: u64 = 5_000;
    /// `max_retries` of the upstream and scorers.
    pub const MAX_RETRIES: u32 = 2;
    /// `classifier.max_retries`: a classification that fails falls back to the rules at once.
    pub const CLASSIFIER_MAX_RETRIES: u32 = 0;
    /// `retry_backoff_ms`.
    pub const RETRY_BACKOFF_MS: u64 = 100;
    /// `retry_backoff_max_ms`.
    pub const RETRY_BACKOFF_MAX_MS: u64 = 2_000;
    /// `eject_after_failures`.
    pub const EJECT_AFTER_FAILURES: u32 = 3;
    /// `eject_cooldown_ms`.
    pub const EJECT_COOLDOWN_MS: u64 = 10_000;
    /// `upstream.hedge`.
    pub const HEDGE: u32 = 0;
    /// `scorers.NAME.concurrency` (judge).
    pub const JUDGE_CONCURRENCY: u64 = 8;
    /// `scorers.NAME.max_tokens` (judge).
    pub const JUDGE_MAX_TOKENS: u64 = 1024;
    /// `scorers.NAME.mode` (judge).
    pub const JUDGE_MODE: crate::remote::JudgeMode = crate::remote::JudgeMode::Rating;
    /// `scorers.NAME.seed` (judge).
    pub const JUDGE_SEED: u64 = 0;
    /// `scorers.NAME.logprobs` (judge).
    pub const JUDGE_LOGPROBS: bool = false;
    /// `scorers.NAME.chat_template` (reward_http).
    pub const CHAT_TEMPLATE: crate::score::ChatTemplate = crate::score::ChatTemplate::Chatml;
    /// `scorers.NAME.input_format` (reward_http).
    pub const INPUT_FORMAT: crate::remote::InputFormat = crate::remote::InputFormat::Text;
    /// `scorers.NAME.combine` (ensemble).
    pub const COMBINE: crate::score::Combine = crate::score::Combine::Lexicographic;
    /// `scorers.NAME.label_index`.
    pub const LABEL_INDEX: usize = 0;
    /// `scorers.NAME.include_reasoning` (every kind).
    pub const INCLUDE_REASONING: bool = false;

    /// `fuser.max_tokens`.
    pub const FUSER_MAX_TOKENS: u64 = 1024;
    /// `fuser.temperature`: close to deterministic, it edits rather than invents.
    pub const FUSER_TEMPERATURE: f64 = 0.2;
    /// `fuser.timeout_ms`: past it the best candidate is the answer.
    pub const FUSER_TIMEOUT_MS: u64 = 30_000;
    /// `fuser.max_retries`.
    pub const FUSER_MAX_RETRIES: u32 = 0;
    /// `scorers.NAME.temperature` (weighted_vote).
    pub const VOTE_TEMPERATURE: f64 = 1.0;
    /// `recorder.sample_rate`.
    pub const RECORDER_SAMPLE_RATE: f64 = 1.0;
    /// `recorder.max_bytes`.
    pub const RECORDER_MAX_BYTES: u64 = 100 * 1024 * 1024;
    /// `recorder.max_files`.
    pub const RECORDER_MAX_FILES: u32 = 5;
    /// `recorder.queue_capacity`.
    pub const RECORDER_QUEUE_CAPACITY: u64 = 1024;
    /// `score_cache.max_entries`.
    pub const SCORE_CACHE_MAX_ENTRIES: u64 = 100_000;
    /// `score_cache.ttl_ms`.
    pub const SCORE_CACHE_TTL_MS: u64 = 600_000;
    /// `telemetry.provider_name`: the `gen_ai.provider.name` of upstream-call spans.
    pub const TELEMETRY_PROVIDER_NAME: &str = crate::telemetry::DEFAULT_PROVIDER_NAME;
    /// `telemetry.capture_content`: prompts and completions stay out of spans and logs.
    pub const TELEMETRY_CAPTURE_CONTENT: bool = crate::telemetry::DEFAULT_CAPTURE_CONTENT;
    /// `telemetry.service_name`.
    pub const TELEMETRY_SERVICE_NAME: &str = crate::telemetry::DEFAULT_SERVICE_NAME;
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = defaults::LISTEN;

/// The comment [`Config::to_toml`] writes under `[server]` in place of inline client keys;
/// `{keys}` says how many.
const WITHHELD_KEYS: &str = "\
# api_keys: {keys} set inline in the file and withheld from this output. Loaded as it is,
# this text has no inline keys: only api_keys_env's keys (none when it is unset) are accepted.
";

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` is used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: match unknown_key_at(text, &e) {
                Some(located) => located,
                None => e.to_string().trim_end().to_string(),
            },
        })?;
        Validator { path }.config(raw)
    }

    /// The validated policy for the engine.
    pub fn policy(&self) -> Policy {
        Policy {
            n: self.policy.n,
            scorer: self.policy.scorer.clone(),
            domains: self.domains.clone(),
            deadline: self.policy.deadline_ms.map(Duration::from_millis),
            min_candidates: self.policy.min_candidates,
            on_scorer_failure: self.policy.on_scorer_failure,
            adaptive: AdaptivePolicy {
                enabled: self.policy.adaptive,
                first_wave: self.policy.first_wave,
                accept_score: self.policy.accept_score,
                confidence: self.policy.confidence,
            },
            degrade_at_queue: self.policy.degrade_at_queue_ms.map(Duration::from_millis),
            min_n: self.policy.min_n,
            selection: self.policy.selection,
            require_valid: self.policy.require_valid,
        }
    }

    /// The effective configuration as TOML: every default filled in, text that loads again as
    /// the same configuration. Secrets are left out: inline `server.api_keys` are withheld, and a
    /// comment in `[server]` says how many there were (`api_keys_env`, a variable's name, stays).
    pub fn to_toml(&self) -> String {
        let body = match toml::to_string_pretty(self) {
            Ok(body) => body,
            Err(e) => return format!("# cannot render config: {e}\n"),
        };
        let mut out =
            String::from("# The effective configuration: every default filled in. It loads again as it is.\n");
        let withheld = match self.server.api_keys.len() {
            0 => String::new(),
            1 => WITHHELD_KEYS.replace("{keys}", "1 client key is"),
            n => WITHHELD_KEYS.replace("{keys}", &format!("{n} client keys are")),
        };
        // `[server]` is always the first table: the comment goes under its header.
        match body.strip_prefix("[server]\n") {
            Some(rest) => {
                out.push_str("[server]\n");
                out.push_str(&withheld);
                out.push_str(rest);
            }
            None => {
                out.push_str(&withheld);
                out.push_str(&body);
            }
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

/// Merges the `[domains.*]` tables `bestofn eval tune` recommends (`recommended`, TOML text)
/// into the config text `base`: in each recommended domain the tuned keys
/// ([`PolicySettings::TUNED_KEYS`], from the one declaration of the policy keys) are replaced
/// as a whole and the domain's other keys (temperature, max_tokens, deadline_ms, selection, ...)
/// are kept. Returns the merged config text, or what is not TOML.
pub fn merge_tuned_domains(base: &str, recommended: &str) -> Result<String, String> {
    let mut merged: toml::Table = toml::from_str(base).map_err(|e| format!("not TOML: {e}"))?;
    let recommended: toml::Table =
        toml::from_str(recommended).map_err(|e| format!("the recommended tables are not TOML: {e}"))?;
    if let Some(toml::Value::Table(domains)) = recommended.get("domains") {
        let target = merged.entry("domains").or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(target) = target {
            for (name, keys) in domains {
                let entry = target.entry(name.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let (toml::Value::Table(entry), toml::Value::Table(keys)) = (entry, keys) {
                    for key in PolicySettings::TUNED_KEYS {
                        entry.remove(*key);
                    }
                    entry.extend(keys.clone());
                }
            }
        }
    }
    toml::to_string(&merged).map_err(|e| format!("cannot render the merged config: {e}"))
}

/// Validates sections into runtime types; every error names the file and the dotted key. Each
/// section's validator is an `impl` block beside the module it configures.
pub(crate) struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    /// An out-of-range or dangling value at `key`.
    pub(crate) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_path_buf(), key: key.to_string(), message: message.into() }
    }

    /// `value`, or `default` when unset; 0 is refused.
    pub(crate) fn positive(&self, key: &str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
        match value.unwrap_or(default) {
            0 => Err(self.invalid(key, "must be greater than 0")),
            v => Ok(v),
        }
    }

    /// The URLs of `key` (one) or `{key}s` (several): exactly one of the two, each http(s).
    pub(crate) fn urls(
        &self,
        key: &str,
        one: Option<String>,
        many: Option<Vec<String>>,
    ) -> Result<Vec<String>, ConfigError> {
        let (plural, singular) = (format!("{key}s"), key.to_string());
        let urls = match (one, many) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(&plural, format!("set either {singular} or {plural}, not both")));
            }
            (Some(u), None) => vec![u],
            (None, Some(list)) if !list.is_empty() => list,
            _ => return Err(self.invalid(&singular, "is required")),
        };
        for u in &urls {
            check_url(u).map_err(|m| self.invalid(&singular, m))?;
        }
        Ok(urls)
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        if raw.server.threading.is_some() {
            warnings.push(format!(
                "{}: server.threading was removed (the server runs Tokio's multi-threaded runtime; \
                 TOKIO_WORKER_THREADS sets its threads) and is ignored; delete the key",
                self.path.display()
            ));
        }
        let server = self.server(raw.server)?;
        let upstream = self.upstream(raw.upstream)?;
        let scorers = self.scorers(raw.scorers, &upstream.base_urls)?;
        let scorer_exists = |s: &str| {
            if scorers.contains_key(s) {
                Ok(())
            } else {
                let known: Vec<&str> = scorers.keys().map(String::as_str).collect();
                Err(format!("no scorer named '{s}' (configured: [{}])", known.join(", ")))
            }
        };
        let (policy, domains) = crate::bon::config::validate(raw.policy, raw.domains, scorer_exists)
            .map_err(|(key, message)| self.invalid(&key, message))?;
        let recorder = self.recorder(raw.recorder)?;
        let classifier = self.classifier(raw.classifier, &upstream.base_urls[0])?;
        let score_cache = self.score_cache(raw.score_cache)?;
        let fuser = self.fuser(raw.fuser, &upstream.base_urls[0])?;
        if fuser.is_none() {
            let fusing = std::iter::once(("policy".to_string(), policy.selection.selection))
                .chain(domains.iter().filter_map(|(n, r)| r.selection.map(|s| (format!("domains.{n}"), s.selection))));
            for (section, selection) in fusing {
                if selection == SteeringSelection::Fuse {
                    return Err(self.invalid(&format!("{section}.selection"), "\"fuse\" needs a [fuser] section"));
                }
            }
        }
        let telemetry = raw.telemetry.validate().map_err(|(key, message)| self.invalid(key, message))?;
        Ok(Config {
            server,
            upstream,
            scorers,
            policy,
            domains,
            recorder,
            score_cache,
            classifier,
            fuser,
            telemetry,
            warnings,
        })
    }
}

/// The line and dotted key of an unknown key (`line 12: unknown key `upstream.timeout_msec``),
/// which the parser's own message gives only as the bare key. Serde names the key where it
/// is, except in the internally tagged sections (`[scorers.NAME]`, `[classifier]`): those are
/// read whole to find their `kind` first, so the error points at the table's header, and the
/// key's own line is found in that table.
fn unknown_key_at(text: &str, e: &toml::de::Error) -> Option<String> {
    let message = e.message();
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    let span = e.span()?;
    let expected = message.split_once(", expected").map(|(_, rest)| format!(" (expected{rest})")).unwrap_or_default();
    let line_of = |offset: usize| text.get(..offset).map_or(1, |t| t.matches('\n').count() + 1);
    let at = text.get(span.clone())?.trim();
    if at.starts_with('[') {
        let table = table_name(at)?;
        let (offset, _) = text
            .lines()
            .enumerate()
            .skip(line_of(span.start))
            .take_while(|(_, l)| !l.trim_start().starts_with('['))
            .find(|(_, l)| l.trim_start().strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')))?;
        return Some(format!("line {}: unknown key `{table}.{key}`{expected}", offset + 1));
    }
    if at.trim_matches(['"', '\'']) != key {
        // Not the key itself (an inline table read whole): the parser's own message stands.
        return None;
    }
    let line_start = text.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
    // The key as written on its line, with the dotted path before it (`a.b = 1`).
    let written = text.get(line_start..span.end)?.trim();
    let dotted = if written.starts_with('[') {
        // An unknown table: its path is the header up to the key.
        table_name(written)?.to_string()
    } else {
        match text.get(..line_start)?.lines().rev().find(|l| l.trim_start().starts_with('[')).and_then(table_name) {
            Some(table) => format!("{table}.{written}"),
            None => written.to_string(),
        }
    };
    Some(format!("line {}: unknown key `{dotted}`{expected}", line_of(span.start)))
}

/// The table a header line names: `policy` of `[policy]  # comment`.
fn table_name(header: &str) -> Option<&str> {
    header.trim_start().trim_start_matches('[').split(']').next().map(str::trim)
}

/// An http(s) URL with a host.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL ({e})"))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => Ok(()),
        "http" | "https" => Err(format!("'{url}' has no host")),
        other => Err(format!("'{url}' must be http or https, not {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bon::ScorerFailurePolicy;
    use crate::score::ChatTemplate;
    use crate::upstream::SamplingMode;

    const GOOD: &str = r#"
[upstream]
base_url = "http://127.0.0.1:8000/v1"

[scorers.rm]
kind = "reward_http"
api = "vllm_classify"
url = "http://127.0.0.1:8001/classify"

[policy]
n = 4
scorer = "rm"

[domains.math]
n = 8
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"))
    }

    fn error_of(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn fills_defaults() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.upstream.sampling, SamplingMode::Auto);
        assert_eq!(c.domains["math"].n, Some(8));
        let ScorerKind::RewardHttp(rm) = &c.scorers["rm"].kind else { panic!("rm is reward_http") };
        assert_eq!(c.scorers["consensus"], ScorerConfig::of(ScorerKind::Consensus), "built in");
        assert_eq!(rm.transport.timeout_ms, 30_000);
        assert_eq!(c.policy.on_scorer_failure, ScorerFailurePolicy::Fail);
        assert_eq!(rm.chat_template, ChatTemplate::Chatml);
        // The effective config is itself valid config text for humans to read.
        assert!(c.to_toml().contains("sampling = \"auto\""));
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let e = error_of(&GOOD.replace("n = 4", "n = 4\nbogus = 1"));
        assert!(e.contains("test.toml") && e.contains("bogus"), "{e}");
        let e = error_of(&GOOD.replace("api = \"vllm_classify\"", "api = \"vllm_classify\"\nlabel_idx = 1"));
        assert!(e.contains("label_idx"), "{e}");
        let e = error_of(&GOOD.replace("[upstream]", "[upstreams]"));
        assert!(e.contains("upstreams"), "{e}");
    }

    #[test]
    fn unknown_keys_in_sections_with_transport_keys_name_their_line_and_dotted_key() {
        let text = GOOD.replace("[scorers.rm]", "bogus_retries = 1\n\n[scorers.rm]");
        let e = error_of(&text);
        let line = text.lines().position(|l| l.starts_with("bogus_retries")).unwrap() + 1;
        assert!(e.contains(&format!("test.toml: line {line}: unknown key `upstream.bogus_retries`")), "{e}");
        let e = error_of(&GOOD.replace("api = \"vllm_classify\"", "api = \"vllm_classify\"\nlabel_idx = 1"));
        assert!(e.contains("unknown key `scorers.rm.label_idx`") && e.contains("line 8"), "{e}");
        // The shared keys are accepted in every such section, and a type error still names the file.
        let c = load(&GOOD.replace("[policy]", "max_retries = 5\neject_cooldown_ms = 7\n[policy]")).unwrap();
        let ScorerKind::RewardHttp(rm) = &c.scorers["rm"].kind else { panic!("rm is reward_http") };
        assert_eq!((rm.transport.max_retries, rm.transport.eject_cooldown_ms), (5, 7));
        assert!(error_of(&GOOD.replace("[policy]", "timeout_ms = \"x\"\n[policy]")).contains("test.toml"));
    }

    /// The line of the first line of `text` that starts with `prefix`.
    fn line_of(text: &str, prefix: &str) -> usize {
        text.lines().position(|l| l.starts_with(prefix)).unwrap() + 1
    }

    #[test]
    fn unknown_keys_beside_shared_key_groups_name_the_file_their_line_and_dotted_key() {
        // Each section takes a shared group of keys (transport or policy) beside its own; a
        // misspelt shared key is refused and located like any other.
        let fuser = "\n[fuser]\nmodel = \"f\"\n";
        let classifier = "\n[classifier]\nkind = \"judge\"\n";
        for (text, bad, dotted) in [
            (GOOD.replace("[upstream]", "[upstream]\ntimeout_msec = 5"), "timeout_msec", "upstream.timeout_msec"),
            (
                GOOD.replace("api = \"vllm_classify\"", "api = \"vllm_classify\"\nretry_backof_ms = 1"),
                "retry_backof_ms",
                "scorers.rm.retry_backof_ms",
            ),
            (GOOD.replace("n = 8", "n = 8\nfirst_wav = 2"), "first_wav", "domains.math.first_wav"),
            (GOOD.replace("scorer = \"rm\"", "scorer = \"rm\"\nfuse_topp = 3"), "fuse_topp", "policy.fuse_topp"),
            (format!("{GOOD}{fuser}eject_cooldown = 1\n"), "eject_cooldown", "fuser.eject_cooldown"),
            (format!("{GOOD}{classifier}max_retry = 1\n"), "max_retry", "classifier.max_retry"),
        ] {
            let e = error_of(&text);
            let line = line_of(&text, bad);
            assert!(e.starts_with(&format!("test.toml: line {line}: unknown key `{dotted}`")), "{dotted}: {e}");
        }
        // The same groups are read in each of those sections.
        let text = GOOD
            .replace("[upstream]", "[upstream]\ntimeout_ms = 5")
            .replace("api = \"vllm_classify\"", "api = \"vllm_classify\"\nretry_backoff_ms = 7")
            .replace("n = 8", "n = 8\nfirst_wave = 3\nfuse_top = 3")
            + fuser
            + "eject_cooldown_ms = 9\n"
            + classifier
            + "max_retries = 4\n";
        let c = load(&text).unwrap();
        assert_eq!(c.upstream.transport.timeout_ms, 5);
        let ScorerKind::RewardHttp(rm) = &c.scorers["rm"].kind else { panic!("rm is reward_http") };
        assert_eq!(rm.transport.retry_backoff_ms, 7);
        assert_eq!(c.domains["math"].first_wave, Some(3));
        assert_eq!(c.domains["math"].selection.map(|s| s.fuse_top), Some(3));
        assert_eq!(c.fuser.unwrap().transport.eject_cooldown_ms, 9);
        let ClassifierConfig::Judge { transport, .. } = &c.classifier else { panic!("a judge classifier") };
        assert_eq!(transport.max_retries, 4);
        // A key of the other section is not a policy key: min_candidates is [policy]'s only.
        let text = GOOD.replace("n = 8", "n = 8\nmin_candidates = 2");
        assert!(error_of(&text).contains("unknown key `domains.math.min_candidates`"), "{}", error_of(&text));
    }

    #[test]
    fn unknown_keys_written_dotted_or_in_inline_tables_are_still_named() {
        let text = GOOD.replace("n = 8", "n = 8\nadaptiv.e = true");
        let e = error_of(&text);
        let line = line_of(&text, "adaptiv.e");
        assert!(e.starts_with(&format!("test.toml: line {line}: unknown key `domains.math.adaptiv`")), "{e}");
        let text = GOOD.replace("[scorers.rm]", "[scorers]\nv = { kind = \"verify\", patern = \"x\" }\n\n[scorers.rm]");
        let e = error_of(&text);
        assert!(e.starts_with("test.toml: ") && e.contains("patern"), "{e}");
    }

    #[test]
    fn the_policy_needs_n() {
        assert_eq!(error_of(&GOOD.replace("n = 4\n", "")), "test.toml: policy.n: is required");
    }

    #[test]
    fn tuned_domains_replace_the_tuned_keys_and_keep_the_others() {
        let base = GOOD.replace("n = 8", "n = 8\nfirst_wave = 8\ntemperature = 0.5\nfuse_top = 3");
        let merged =
            merge_tuned_domains(&base, "[domains.math]\nn = 2\nadaptive = false\n\n[domains.code]\nscorer = \"rm\"\n")
                .unwrap();
        let c = load(&merged).unwrap();
        let math = &c.domains["math"];
        assert_eq!((math.n, math.first_wave, math.adaptive), (Some(2), None, Some(false)), "tuned keys replaced");
        assert_eq!((math.temperature, math.selection.map(|s| s.fuse_top)), (Some(0.5), Some(3)), "the rest kept");
        assert_eq!(c.domains["code"].scorer.as_deref(), Some("rm"));
        assert!(merge_tuned_domains("[", "").unwrap_err().contains("not TOML"));
    }

    #[test]
    fn values_are_validated() {
        assert!(error_of(&GOOD.replace("n = 4", "n = 0")).contains("policy.n"));
        assert!(error_of(&GOOD.replace("n = 4", "n = 65")).contains("policy.n"));
        assert!(error_of(&GOOD.replace("scorer = \"rm\"", "scorer = \"nope\"")).contains("policy.scorer"));
        assert!(error_of(&GOOD.replace("http://127.0.0.1:8000/v1", "not a url")).contains("upstream.base_url"));
        assert!(error_of(&GOOD.replace("[domains.math]", "[domains.poetry]")).contains("domains.poetry"));
        assert!(error_of(&GOOD.replace("vllm_classify", "vllm_magic")).contains("vllm_magic"));
        assert!(
            error_of(&GOOD.replace("[upstream]", "[server]\nlisten = \"nowhere\"\n[upstream]"))
                .contains("server.listen")
        );
    }
}
