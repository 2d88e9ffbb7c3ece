//! Configuration: TOML read into raw structs that reject unknown keys, then validated into the
//! runtime types the rest of bestofn uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::time::Duration;

use crate::backend::{Http2Mode, Secret, TransportConfig};
use crate::bon::adaptive::AdaptiveSettings;
use crate::bon::{
    AdaptivePolicy, DOMAINS, DomainRule, MAX_N, Policy, ScorerFailurePolicy, SelectionSettings, SteeringSelection,
    check_n,
};
use crate::record::RecorderConfig;
use crate::remote::{InputFormat, JudgeConfig, JudgeMode, RewardApi, RewardHttpConfig};
use crate::score::{ChatTemplate, Combine};
use crate::upstream::{SamplingMode, UsageCounts};

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFuser {
    base_url: Option<String>,
    model: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    #[serde(flatten)]
    transport: RawTransport,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScoreCache {
    max_entries: Option<u64>,
    ttl_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecorder {
    path: PathBuf,
    sample_rate: Option<f64>,
    max_bytes: Option<u64>,
    max_files: Option<u32>,
    queue_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawClassifier {
    Rules,
    Judge {
        base_url: Option<String>,
        model: Option<String>,
        #[serde(flatten)]
        transport: RawTransport,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    heartbeat_interval_ms: Option<u64>,
    api_keys: Option<Vec<String>>,
    api_keys_env: Option<String>,
    auth_ops_endpoints: Option<bool>,
    max_concurrent_requests: Option<usize>,
    max_body_bytes: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    log_format: Option<LogFormat>,
    /// Removed with the per-core runtimes; still read, with a warning, for one release.
    threading: Option<toml::Value>,
}

/// The transport keys, declared once: every section that calls a backend (upstream, HTTP
/// scorers, the judge classifier) takes them at its own level (`[upstream] timeout_ms = ...`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransport {
    api_key_env: Option<String>,
    timeout_ms: Option<u64>,
    max_retries: Option<u32>,
    retry_backoff_ms: Option<u64>,
    retry_backoff_max_ms: Option<u64>,
    eject_after_failures: Option<u32>,
    eject_cooldown_ms: Option<u64>,
    max_in_flight: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: Option<String>,
    base_urls: Option<Vec<String>>,
    sampling: Option<SamplingMode>,
    hedge: Option<u32>,
    models: Option<Vec<String>>,
    usage_counts: Option<UsageCounts>,
    http2: Option<Http2Mode>,
    max_response_bytes: Option<u64>,
    typical_call_ms: Option<u64>,
    #[serde(flatten)]
    transport: RawTransport,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawScorer {
    RewardHttp {
        api: RewardApi,
        url: Option<String>,
        urls: Option<Vec<String>>,
        model: Option<String>,
        chat_template: Option<ChatTemplate>,
        input_format: Option<InputFormat>,
        label_index: Option<usize>,
        label: Option<String>,
        #[serde(flatten)]
        transport: RawTransport,
    },
    Judge {
        base_url: Option<String>,
        base_urls: Option<Vec<String>>,
        model: Option<String>,
        mode: Option<JudgeMode>,
        #[serde(alias = "max_concurrency")]
        concurrency: Option<usize>,
        seed: Option<u64>,
        max_tokens: Option<u32>,
        logprobs: Option<bool>,
        #[serde(flatten)]
        transport: RawTransport,
    },
    Consensus {},
    Verify {
        pattern: Option<String>,
    },
    Ensemble {
        members: Vec<String>,
        combine: Option<Combine>,
        weights: Option<Vec<f64>>,
    },
    WeightedVote {
        member: String,
        temperature: Option<f64>,
    },
}

/// The adaptive-sampling keys, declared once for `[policy]` and every `[domains.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdaptive {
    adaptive: Option<bool>,
    first_wave: Option<u32>,
    accept_score: Option<f64>,
    confidence: Option<f64>,
}

/// The selection keys, declared once for `[policy]` and every `[domains.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelection {
    selection: Option<SteeringSelection>,
    soft_temperature: Option<f64>,
    fuse_top: Option<u32>,
    fuse_show_scores: Option<bool>,
}

/// The load-aware N keys, declared once for `[policy]` and every `[domains.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    degrade_at_queue_ms: Option<u64>,
    min_n: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    n: u32,
    scorer: Option<String>,
    deadline_ms: Option<u64>,
    min_candidates: Option<u32>,
    on_scorer_failure: Option<ScorerFailurePolicy>,
    #[serde(flatten)]
    adaptive: RawAdaptive,
    #[serde(flatten)]
    load: RawLoad,
    #[serde(flatten)]
    select: RawSelection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    n: Option<u32>,
    scorer: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u64>,
    deadline_ms: Option<u64>,
    #[serde(flatten)]
    adaptive: RawAdaptive,
    #[serde(flatten)]
    load: RawLoad,
    #[serde(flatten)]
    select: RawSelection,
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

/// `[fuser]`: the chat model that writes one answer from the best candidates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FuserConfig {
    /// Base URL (default: the first upstream base URL).
    pub base_url: String,
    /// The `model` sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `max_tokens` of the fused answer.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f64,
    /// Credentials, time limit, retries, ejection.
    #[serde(flatten)]
    pub transport: TransportConfig,
}

/// `[classifier]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClassifierConfig {
    /// Keyword and pattern rules on the last user message (microseconds, no calls).
    Rules,
    /// An OpenAI-compatible LLM names the domain; the rules answer when it fails.
    Judge {
        /// Base URL of the judge (default: the first upstream base URL).
        base_url: String,
        /// The `model` sent.
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// Credentials, time limit, retries, ejection.
        #[serde(flatten)]
        transport: TransportConfig,
    },
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Interval of SSE keep-alive comments while candidates are generated and scored.
    pub heartbeat_interval_ms: u64,
    /// Client API keys; empty means no client authentication. Never printed.
    #[serde(skip)]
    pub api_keys: Vec<Secret>,
    /// How many client keys are configured (printed instead of the keys).
    pub api_keys_configured: usize,
    /// Environment variable with more client keys, comma-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_keys_env: Option<String>,
    /// Require a client key on /metrics and /healthz too.
    pub auth_ops_endpoints: bool,
    /// Requests served at once; beyond it, 429 with Retry-After.
    pub max_concurrent_requests: usize,
    /// Largest request body; beyond it, 413.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send its request body; beyond it, 408.
    pub body_read_timeout_ms: u64,
    /// Time in-flight requests get to finish after SIGTERM or SIGINT.
    pub drain_timeout_ms: u64,
    /// Time a write to a client may make no progress before the connection is closed (per
    /// write: a long stream the client reads lives on).
    pub write_timeout_ms: u64,
    /// Time a kept-alive connection with no request in flight stays open.
    pub idle_timeout_ms: u64,
    /// How log lines are written.
    pub log_format: LogFormat,
}

/// `server.log_format`: log lines as text for people or one JSON object a line for collectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `tracing-subscriber`'s text lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// `[upstream]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamConfig {
    /// Base URLs of interchangeable OpenAI-compatible servers, e.g. `http://127.0.0.1:8000/v1`.
    pub base_urls: Vec<String>,
    /// How N candidates are requested.
    pub sampling: SamplingMode,
    /// Extra parallel samples requested; the first N to finish are used.
    pub hedge: u32,
    /// Served at `GET /v1/models` instead of asking the upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// How completion tokens of calls with several choices are counted.
    pub usage_counts: UsageCounts,
    /// HTTP/2 to the upstream.
    pub http2: Http2Mode,
    /// The largest answer body read from any backend (upstream, scorers, judge classifier,
    /// fuser); a larger one is a 502.
    pub max_response_bytes: u64,
    /// Credentials, time limit, retries, ejection; `typical_call_ms` is set here only.
    #[serde(flatten)]
    pub transport: TransportConfig,
}

/// `[scorers.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScorerConfig {
    /// A reward model served over HTTP.
    RewardHttp(RewardHttpConfig),
    /// An OpenAI-compatible LLM as judge.
    Judge(JudgeConfig),
    /// Agreement among the candidates (majority vote on final answers, else token F1).
    Consensus,
    /// Rule-based checks: stated constraints, response_format, a regex.
    Verify {
        /// A regex good replies match.
        #[serde(skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    /// Several scorers combined.
    Ensemble(EnsembleConfig),
    /// Weighted majority vote over final answers, weighed by a member scorer.
    WeightedVote {
        /// The member whose rewards weigh the votes.
        member: String,
        /// Softmax temperature of the member's rewards.
        temperature: f64,
    },
}

/// `[scorers.NAME]` with `kind = "ensemble"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnsembleConfig {
    /// Member scorer names, in priority order.
    pub members: Vec<String>,
    /// Lexicographic or weighted z-scores.
    pub combine: Combine,
    /// One weight per member.
    pub weights: Vec<f64>,
}

/// `[score_cache]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreCacheConfig {
    /// Scores kept at most.
    pub max_entries: u64,
    /// How long a score is kept.
    pub ttl_ms: u64,
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    /// Default candidates per request.
    pub n: u32,
    /// Default scorer.
    pub scorer: String,
    /// Per-request sampling deadline; at it, selection uses the candidates that arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Fewest candidates worth selecting from; fewer by the deadline is a 504.
    pub min_candidates: u32,
    /// What to answer when the scorer fails.
    pub on_scorer_failure: ScorerFailurePolicy,
    /// Sample in waves and stop early when more candidates will not change the pick.
    pub adaptive: bool,
    /// Candidates of the first adaptive wave.
    pub first_wave: u32,
    /// Adaptive: stop once a candidate scores at least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_score: Option<f64>,
    /// Adaptive: stop once the leading answer would still lead at n with this probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Load-aware N: halve N while the expected upstream queue wait exceeds this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrade_at_queue_ms: Option<u64>,
    /// Load-aware N: the fewest candidates N is halved to.
    pub min_n: u32,
    /// How the winner is picked.
    #[serde(flatten)]
    pub selection: SelectionSettings,
}

/// Every default of the configuration, named once: the validator, the README's table and
/// `config/bestofn.toml` agree with these (a test checks the two documents).
pub mod defaults {
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
    /// `server.log_format`.
    pub const LOG_FORMAT: super::LogFormat = super::LogFormat::Text;
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
    /// `scorers.NAME.label_index`.
    pub const LABEL_INDEX: usize = 0;
    /// `policy.scorer`: majority voting needs no server.
    pub const POLICY_SCORER: &str = "consensus";
    /// `policy.min_candidates`.
    pub const MIN_CANDIDATES: u32 = 1;
    /// `policy.min_n`: load-aware N may go down to a single candidate.
    pub const MIN_N: u32 = 1;

    /// `fuser.max_tokens`.
    pub const FUSER_MAX_TOKENS: u64 = 1024;
    /// `fuser.temperature`: close to deterministic, it edits rather than invents.
    pub const FUSER_TEMPERATURE: f64 = 0.2;
    /// `fuser.timeout_ms`: past it the best candidate is the answer.
    pub const FUSER_TIMEOUT_MS: u64 = 30_000;
    /// `fuser.max_retries`.
    pub const FUSER_MAX_RETRIES: u32 = 0;
    /// `policy.adaptive`: fixed N unless asked.
    pub const ADAPTIVE: bool = false;
    /// `policy.first_wave` (at most n).
    pub const FIRST_WAVE: u32 = 2;
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
        }
    }

    /// The effective configuration as TOML, defaults included, secrets left out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: self.path.to_path_buf(), key: key.to_string(), message: message.into() }
    }

    fn positive(&self, key: &str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
        match value.unwrap_or(default) {
            0 => Err(self.invalid(key, "must be greater than 0")),
            v => Ok(v),
        }
    }

    fn urls(&self, key: &str, one: Option<String>, many: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
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

    /// Validated transport keys of section `prefix`, with that section's defaults.
    fn transport(
        &self,
        prefix: &str,
        raw: RawTransport,
        timeout_ms: u64,
        max_retries: u32,
    ) -> Result<TransportConfig, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let retry_backoff_ms =
            self.positive(&key("retry_backoff_ms"), raw.retry_backoff_ms, defaults::RETRY_BACKOFF_MS)?;
        let retry_backoff_max_ms =
            self.positive(&key("retry_backoff_max_ms"), raw.retry_backoff_max_ms, defaults::RETRY_BACKOFF_MAX_MS)?;
        if retry_backoff_max_ms < retry_backoff_ms {
            return Err(self.invalid(&key("retry_backoff_max_ms"), "must be at least retry_backoff_ms"));
        }
        Ok(TransportConfig {
            api_key_env: raw.api_key_env,
            timeout_ms: self.positive(&key("timeout_ms"), raw.timeout_ms, timeout_ms)?,
            max_retries: raw.max_retries.unwrap_or(max_retries),
            retry_backoff_ms,
            retry_backoff_max_ms,
            eject_after_failures: self.positive(
                &key("eject_after_failures"),
                raw.eject_after_failures.map(u64::from),
                u64::from(defaults::EJECT_AFTER_FAILURES),
            )? as u32,
            eject_cooldown_ms: self.positive(
                &key("eject_cooldown_ms"),
                raw.eject_cooldown_ms,
                defaults::EJECT_COOLDOWN_MS,
            )?,
            max_in_flight: match raw.max_in_flight {
                Some(0) => return Err(self.invalid(&key("max_in_flight"), "must be greater than 0")),
                other => other,
            },
            typical_call_ms: None,
        })
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
        let up = raw.upstream;
        let upstream = UpstreamConfig {
            base_urls: self.urls("upstream.base_url", up.base_url, up.base_urls)?,
            sampling: up.sampling.unwrap_or(SamplingMode::Auto),
            hedge: match up.hedge.unwrap_or(defaults::HEDGE) {
                h if h <= MAX_N => h,
                h => return Err(self.invalid("upstream.hedge", format!("must be at most {MAX_N}, got {h}"))),
            },
            models: match up.models {
                Some(m) if m.iter().any(|m| m.trim().is_empty()) => {
                    return Err(self.invalid("upstream.models", "model names must not be empty"));
                }
                other => other,
            },
            usage_counts: up.usage_counts.unwrap_or(UsageCounts::Auto),
            http2: up.http2.unwrap_or(Http2Mode::Auto),
            max_response_bytes: self.positive(
                "upstream.max_response_bytes",
                up.max_response_bytes,
                defaults::MAX_RESPONSE_BYTES,
            )?,
            transport: TransportConfig {
                typical_call_ms: Some(self.positive(
                    "upstream.typical_call_ms",
                    up.typical_call_ms,
                    defaults::TYPICAL_CALL_MS,
                )?),
                ..self.transport("upstream", up.transport, defaults::UPSTREAM_TIMEOUT_MS, defaults::MAX_RETRIES)?
            },
        };

        let mut scorers = BTreeMap::new();
        for (name, scorer) in raw.scorers {
            let prefix = format!("scorers.{name}");
            let config = match scorer {
                RawScorer::RewardHttp {
                    api,
                    url,
                    urls,
                    model,
                    chat_template,
                    input_format,
                    label_index,
                    label,
                    transport,
                } => {
                    let input_format = input_format.unwrap_or(InputFormat::Text);
                    if input_format == InputFormat::Messages
                        && !matches!(api, RewardApi::VllmClassify | RewardApi::VllmPooling)
                    {
                        return Err(self.invalid(
                            &format!("{prefix}.input_format"),
                            "\"messages\" is only for the vllm_classify and vllm_pooling APIs",
                        ));
                    }
                    ScorerConfig::RewardHttp(RewardHttpConfig {
                        api,
                        urls: self.urls(&format!("{prefix}.url"), url, urls)?,
                        model,
                        chat_template: chat_template.unwrap_or(ChatTemplate::Chatml),
                        input_format,
                        label_index: label_index.unwrap_or(defaults::LABEL_INDEX),
                        label,
                        transport: self.transport(
                            &prefix,
                            transport,
                            defaults::SCORER_TIMEOUT_MS,
                            defaults::MAX_RETRIES,
                        )?,
                    })
                }
                RawScorer::Judge {
                    base_url,
                    base_urls,
                    model,
                    mode,
                    concurrency,
                    seed,
                    max_tokens,
                    logprobs,
                    transport,
                } => {
                    let base_urls = match (base_url, base_urls) {
                        (None, None) => upstream.base_urls.clone(),
                        (one, many) => self.urls(&format!("{prefix}.base_url"), one, many)?,
                    };
                    ScorerConfig::Judge(JudgeConfig {
                        base_urls,
                        model,
                        mode: mode.unwrap_or(JudgeMode::Rating),
                        concurrency: self.positive(
                            &format!("{prefix}.concurrency"),
                            concurrency.map(|c| c as u64),
                            defaults::JUDGE_CONCURRENCY,
                        )? as usize,
                        seed: seed.unwrap_or(0),
                        max_tokens: self.positive(
                            &format!("{prefix}.max_tokens"),
                            max_tokens.map(u64::from),
                            defaults::JUDGE_MAX_TOKENS,
                        )? as u32,
                        logprobs: logprobs.unwrap_or(false),
                        transport: self.transport(
                            &prefix,
                            transport,
                            defaults::SCORER_TIMEOUT_MS,
                            defaults::MAX_RETRIES,
                        )?,
                    })
                }
                RawScorer::Consensus {} => ScorerConfig::Consensus,
                RawScorer::Verify { pattern } => {
                    if let Some(p) = &pattern {
                        regex::Regex::new(p)
                            .map_err(|e| self.invalid(&format!("{prefix}.pattern"), format!("not a regex: {e}")))?;
                    }
                    ScorerConfig::Verify { pattern }
                }
                RawScorer::WeightedVote { member, temperature } => {
                    let temperature = temperature.unwrap_or(defaults::VOTE_TEMPERATURE);
                    if !(temperature > 0.0 && temperature.is_finite()) {
                        return Err(self.invalid(
                            &format!("{prefix}.temperature"),
                            format!("must be greater than 0, got {temperature}"),
                        ));
                    }
                    ScorerConfig::WeightedVote { member, temperature }
                }
                RawScorer::Ensemble { members, combine, weights } => {
                    if members.is_empty() {
                        return Err(self.invalid(&format!("{prefix}.members"), "must name at least one scorer"));
                    }
                    let weights = weights.unwrap_or_else(|| vec![1.0; members.len()]);
                    if weights.len() != members.len() || weights.iter().any(|w| !w.is_finite()) {
                        return Err(self.invalid(&format!("{prefix}.weights"), "needs one finite weight per member"));
                    }
                    ScorerConfig::Ensemble(EnsembleConfig {
                        members,
                        combine: combine.unwrap_or(Combine::Lexicographic),
                        weights,
                    })
                }
            };
            scorers.insert(name, config);
        }
        // Scorers that need no server are always there under their kind's name.
        scorers.entry("consensus".to_string()).or_insert(ScorerConfig::Consensus);
        scorers.entry("verify".to_string()).or_insert(ScorerConfig::Verify { pattern: None });
        for (name, scorer) in &scorers {
            if let ScorerConfig::WeightedVote { member, .. } = scorer {
                match scorers.get(member) {
                    None => {
                        return Err(
                            self.invalid(&format!("scorers.{name}.member"), format!("no scorer named '{member}'"))
                        );
                    }
                    Some(ScorerConfig::WeightedVote { .. }) => {
                        return Err(self.invalid(
                            &format!("scorers.{name}.member"),
                            format!("'{member}' is a weighted_vote; the member must not be"),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let ScorerConfig::Ensemble(e) = scorer {
                for m in &e.members {
                    match scorers.get(m) {
                        None => {
                            return Err(
                                self.invalid(&format!("scorers.{name}.members"), format!("no scorer named '{m}'"))
                            );
                        }
                        Some(ScorerConfig::Ensemble(_) | ScorerConfig::WeightedVote { .. }) => {
                            return Err(self.invalid(
                                &format!("scorers.{name}.members"),
                                format!("'{m}' combines other scorers; members must not"),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }

        let check_n = |key: &str, n: u32| check_n(n).map_err(|m| self.invalid(key, m));
        let check_scorer = |key: &str, s: &str| {
            if scorers.contains_key(s) {
                Ok(())
            } else {
                let known: Vec<&str> = scorers.keys().map(String::as_str).collect();
                Err(self.invalid(key, format!("no scorer named '{s}' (configured: [{}])", known.join(", "))))
            }
        };
        let p = raw.policy;
        check_n("policy.n", p.n)?;
        // Without an RM, consensus (majority voting) is the default.
        let policy_scorer = p.scorer.unwrap_or_else(|| defaults::POLICY_SCORER.to_string());
        check_scorer("policy.scorer", &policy_scorer)?;
        let min_candidates = p.min_candidates.unwrap_or(defaults::MIN_CANDIDATES);
        if min_candidates == 0 {
            return Err(self.invalid("policy.min_candidates", "must be at least 1"));
        }
        if p.deadline_ms == Some(0) {
            return Err(self.invalid("policy.deadline_ms", "must be greater than 0"));
        }
        let adaptive = self.adaptive("policy", &p.adaptive, p.n)?;
        let min_n = p.load.min_n.unwrap_or(defaults::MIN_N);
        self.load("policy", &p.load, p.n)?;
        let selection = self.selection("policy", &p.select, SelectionSettings::default())?;
        let policy = PolicyConfig {
            n: p.n,
            scorer: policy_scorer,
            deadline_ms: p.deadline_ms,
            min_candidates,
            on_scorer_failure: p.on_scorer_failure.unwrap_or(ScorerFailurePolicy::Fail),
            adaptive: adaptive.enabled,
            first_wave: adaptive.first_wave,
            accept_score: adaptive.accept_score,
            confidence: adaptive.confidence,
            degrade_at_queue_ms: p.load.degrade_at_queue_ms,
            min_n,
            selection,
        };

        let mut domains = BTreeMap::new();
        for (name, rule) in raw.domains {
            if !DOMAINS.contains(&name.as_str()) {
                return Err(self.invalid(
                    &format!("domains.{name}"),
                    format!("unknown domain; expected one of {}", DOMAINS.join(", ")),
                ));
            }
            if let Some(n) = rule.n {
                check_n(&format!("domains.{name}.n"), n)?;
            }
            if let Some(s) = &rule.scorer {
                check_scorer(&format!("domains.{name}.scorer"), s)?;
            }
            if let Some(t) = rule.temperature
                && !(0.0..=2.0).contains(&t)
            {
                return Err(
                    self.invalid(&format!("domains.{name}.temperature"), format!("must be between 0 and 2, got {t}"))
                );
            }
            let domain_n = rule.n.unwrap_or(policy.n);
            let first_wave = rule
                .adaptive
                .first_wave
                .or_else(|| (rule.adaptive.adaptive == Some(true)).then_some(policy.first_wave.min(domain_n)));
            self.adaptive(&format!("domains.{name}"), &RawAdaptive { first_wave, ..rule.adaptive }, domain_n)?;
            self.load(&format!("domains.{name}"), &rule.load, domain_n)?;
            let s = &rule.select;
            let selection = (s.selection.is_some()
                || s.soft_temperature.is_some()
                || s.fuse_top.is_some()
                || s.fuse_show_scores.is_some())
            .then(|| self.selection(&format!("domains.{name}"), s, policy.selection))
            .transpose()?;
            if rule.max_tokens == Some(0) || rule.deadline_ms == Some(0) {
                return Err(
                    self.invalid(&format!("domains.{name}"), "max_tokens and deadline_ms must be greater than 0")
                );
            }
            domains.insert(
                name,
                DomainRule {
                    n: rule.n,
                    scorer: rule.scorer,
                    temperature: rule.temperature,
                    max_tokens: rule.max_tokens,
                    deadline_ms: rule.deadline_ms,
                    adaptive: rule.adaptive.adaptive,
                    first_wave: rule.adaptive.first_wave,
                    accept_score: rule.adaptive.accept_score,
                    confidence: rule.adaptive.confidence,
                    degrade_at_queue_ms: rule.load.degrade_at_queue_ms,
                    min_n: rule.load.min_n,
                    selection,
                },
            );
        }
        let recorder = match raw.recorder {
            None => None,
            Some(r) => {
                let sample_rate = r.sample_rate.unwrap_or(defaults::RECORDER_SAMPLE_RATE);
                if !(0.0..=1.0).contains(&sample_rate) {
                    return Err(
                        self.invalid("recorder.sample_rate", format!("must be between 0 and 1, got {sample_rate}"))
                    );
                }
                Some(RecorderConfig {
                    path: r.path,
                    sample_rate,
                    max_bytes: self.positive("recorder.max_bytes", r.max_bytes, defaults::RECORDER_MAX_BYTES)?,
                    max_files: r.max_files.unwrap_or(defaults::RECORDER_MAX_FILES),
                    queue_capacity: self.positive(
                        "recorder.queue_capacity",
                        r.queue_capacity.map(|c| c as u64),
                        defaults::RECORDER_QUEUE_CAPACITY,
                    )? as usize,
                })
            }
        };
        let classifier = match raw.classifier {
            None | Some(RawClassifier::Rules) => ClassifierConfig::Rules,
            Some(RawClassifier::Judge { base_url, model, transport }) => {
                let base_url = match base_url {
                    Some(u) => {
                        check_url(&u).map_err(|m| self.invalid("classifier.base_url", m))?;
                        u
                    }
                    None => upstream.base_urls[0].clone(),
                };
                ClassifierConfig::Judge {
                    base_url,
                    model,
                    transport: self.transport(
                        "classifier",
                        transport,
                        defaults::CLASSIFIER_TIMEOUT_MS,
                        defaults::CLASSIFIER_MAX_RETRIES,
                    )?,
                }
            }
        };
        let score_cache = match raw.score_cache {
            None => None,
            Some(c) => Some(ScoreCacheConfig {
                max_entries: self.positive(
                    "score_cache.max_entries",
                    c.max_entries,
                    defaults::SCORE_CACHE_MAX_ENTRIES,
                )?,
                ttl_ms: self.positive("score_cache.ttl_ms", c.ttl_ms, defaults::SCORE_CACHE_TTL_MS)?,
            }),
        };
        let fuser = match raw.fuser {
            None => None,
            Some(f) => {
                let base_url = match f.base_url {
                    Some(u) => {
                        check_url(&u).map_err(|m| self.invalid("fuser.base_url", m))?;
                        u
                    }
                    None => upstream.base_urls[0].clone(),
                };
                let temperature = f.temperature.unwrap_or(defaults::FUSER_TEMPERATURE);
                if !(0.0..=2.0).contains(&temperature) {
                    return Err(
                        self.invalid("fuser.temperature", format!("must be between 0 and 2, got {temperature}"))
                    );
                }
                Some(FuserConfig {
                    base_url,
                    model: f.model,
                    max_tokens: self.positive(
                        "fuser.max_tokens",
                        f.max_tokens.map(u64::from),
                        defaults::FUSER_MAX_TOKENS,
                    )? as u32,
                    temperature,
                    transport: self.transport(
                        "fuser",
                        f.transport,
                        defaults::FUSER_TIMEOUT_MS,
                        defaults::FUSER_MAX_RETRIES,
                    )?,
                })
            }
        };
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

    /// The selection settings of `section`, falling back to `inherited` for what it leaves out.
    fn selection(
        &self,
        section: &str,
        raw: &RawSelection,
        inherited: SelectionSettings,
    ) -> Result<SelectionSettings, ConfigError> {
        let settings = SelectionSettings {
            selection: raw.selection.unwrap_or(inherited.selection),
            soft_temperature: raw.soft_temperature.unwrap_or(inherited.soft_temperature),
            fuse_top: raw.fuse_top.unwrap_or(inherited.fuse_top),
            fuse_show_scores: raw.fuse_show_scores.unwrap_or(inherited.fuse_show_scores),
        };
        if !(settings.soft_temperature > 0.0 && settings.soft_temperature.is_finite()) {
            let t = settings.soft_temperature;
            return Err(
                self.invalid(&format!("{section}.soft_temperature"), format!("must be greater than 0, got {t}"))
            );
        }
        if settings.fuse_top < 2 {
            return Err(
                self.invalid(&format!("{section}.fuse_top"), format!("must be at least 2, got {}", settings.fuse_top))
            );
        }
        Ok(settings)
    }

    /// Checks the load-aware N keys of `section` (whose N is `n`).
    fn load(&self, section: &str, raw: &RawLoad, n: u32) -> Result<(), ConfigError> {
        if raw.degrade_at_queue_ms == Some(0) {
            return Err(self.invalid(&format!("{section}.degrade_at_queue_ms"), "must be greater than 0"));
        }
        if let Some(m) = raw.min_n
            && !(1..=n).contains(&m)
        {
            return Err(self.invalid(&format!("{section}.min_n"), format!("must be between 1 and n ({n}), got {m}")));
        }
        Ok(())
    }

    /// Checks the adaptive keys of `section` (whose N is `n`) and fills in their defaults.
    fn adaptive(&self, section: &str, raw: &RawAdaptive, n: u32) -> Result<AdaptivePolicy, ConfigError> {
        let settings = AdaptiveSettings {
            first_wave: raw.first_wave.unwrap_or(defaults::FIRST_WAVE.min(n)),
            accept_score: raw.accept_score,
            confidence: raw.confidence,
        };
        settings.check(n).map_err(|(key, message)| self.invalid(&format!("{section}.{key}"), message))?;
        Ok(AdaptivePolicy {
            enabled: raw.adaptive.unwrap_or(defaults::ADAPTIVE),
            first_wave: settings.first_wave,
            accept_score: settings.accept_score,
            confidence: settings.confidence,
        })
    }

    fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
        let listen_text = raw.listen.as_deref().unwrap_or(defaults::LISTEN);
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|e| self.invalid("server.listen", format!("'{listen_text}' is not HOST:PORT ({e})")))?;
        let api_keys: Vec<Secret> = raw.api_keys.unwrap_or_default().into_iter().map(Secret::new).collect();
        if api_keys.iter().any(|k| k.expose().trim().is_empty()) {
            return Err(self.invalid("server.api_keys", "keys must not be empty"));
        }
        let max_concurrent_requests = raw.max_concurrent_requests.unwrap_or(defaults::MAX_CONCURRENT_REQUESTS);
        if max_concurrent_requests == 0 {
            return Err(self.invalid("server.max_concurrent_requests", "must be greater than 0"));
        }
        let max_body_bytes = raw.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(self.invalid("server.max_body_bytes", "must be greater than 0"));
        }
        Ok(ServerConfig {
            listen,
            heartbeat_interval_ms: self.positive(
                "server.heartbeat_interval_ms",
                raw.heartbeat_interval_ms,
                defaults::HEARTBEAT_INTERVAL_MS,
            )?,
            api_keys_configured: api_keys.len(),
            api_keys,
            api_keys_env: raw.api_keys_env,
            auth_ops_endpoints: raw.auth_ops_endpoints.unwrap_or(false),
            max_concurrent_requests,
            max_body_bytes,
            header_read_timeout_ms: self.positive(
                "server.header_read_timeout_ms",
                raw.header_read_timeout_ms,
                defaults::HEADER_READ_TIMEOUT_MS,
            )?,
            body_read_timeout_ms: self.positive(
                "server.body_read_timeout_ms",
                raw.body_read_timeout_ms,
                defaults::BODY_READ_TIMEOUT_MS,
            )?,
            drain_timeout_ms: self.positive(
                "server.drain_timeout_ms",
                raw.drain_timeout_ms,
                defaults::DRAIN_TIMEOUT_MS,
            )?,
            write_timeout_ms: self.positive(
                "server.write_timeout_ms",
                raw.write_timeout_ms,
                defaults::WRITE_TIMEOUT_MS,
            )?,
            idle_timeout_ms: self.positive("server.idle_timeout_ms", raw.idle_timeout_ms, defaults::IDLE_TIMEOUT_MS)?,
            log_format: raw.log_format.unwrap_or(defaults::LOG_FORMAT),
        })
    }
}

/// The line and dotted key of an unknown key. Sections that take the shared transport keys are
/// read through serde's `flatten`, whose "unknown field" error points at the table's header
/// rather than at the key; this finds the key's own line in that table.
fn unknown_key_at(text: &str, e: &toml::de::Error) -> Option<String> {
    let message = e.message();
    let key = message.strip_prefix("unknown field `")?.split('`').next()?;
    let span = e.span()?;
    let header = text.get(span.clone())?.trim();
    let table = header.strip_prefix('[')?.trim_end_matches(']').trim();
    let first_line = text[..span.start].matches('\n').count() + 1;
    let (offset, _) =
        text.lines()
            .enumerate()
            .skip(first_line)
            .take_while(|(_, l)| !l.trim_start().starts_with('['))
            .find(|(_, l)| l.trim_start().strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with('=')))?;
    let expected = message.split_once(", expected").map(|(_, rest)| format!(" (expected{rest})")).unwrap_or_default();
    Some(format!("line {}: unknown key `{table}.{key}`{expected}", offset + 1))
}

fn check_url(url: &str) -> Result<(), String> {
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
        let ScorerConfig::RewardHttp(rm) = &c.scorers["rm"] else { panic!("rm is reward_http") };
        assert_eq!(c.scorers["consensus"], ScorerConfig::Consensus, "built in");
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
        let ScorerConfig::RewardHttp(rm) = &c.scorers["rm"] else { panic!("rm is reward_http") };
        assert_eq!((rm.transport.max_retries, rm.transport.eject_cooldown_ms), (5, 7));
        assert!(error_of(&GOOD.replace("[policy]", "timeout_ms = \"x\"\n[policy]")).contains("test.toml"));
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
