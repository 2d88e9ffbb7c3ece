//! Configuration: TOML read into raw structs that reject unknown keys, then validated into the
//! runtime types the rest of bestofn uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bon::{DOMAINS, DomainRule, MAX_N, Policy};
use crate::score::{ChatTemplate, InputFormat, RewardApi};
use crate::upstream::SamplingMode;

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    heartbeat_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: String,
    api_key_env: Option<String>,
    sampling: Option<SamplingMode>,
    timeout_ms: Option<u64>,
    max_retries: Option<u32>,
    models: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawScorer {
    RewardHttp {
        api: RewardApi,
        url: String,
        model: Option<String>,
        chat_template: Option<ChatTemplate>,
        input_format: Option<InputFormat>,
        label_index: Option<usize>,
        label: Option<String>,
        api_key_env: Option<String>,
        timeout_ms: Option<u64>,
        max_retries: Option<u32>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    n: u32,
    scorer: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    n: Option<u32>,
    scorer: Option<String>,
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
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Interval of SSE keep-alive comments while candidates are generated and scored.
    pub heartbeat_interval_ms: u64,
}

/// `[upstream]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamConfig {
    /// Base URL of the OpenAI-compatible API, e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Environment variable holding the upstream API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// How N candidates are requested.
    pub sampling: SamplingMode,
    /// Limit for one upstream call.
    pub timeout_ms: u64,
    /// Retries on connection errors, 429 and 5xx.
    pub max_retries: u32,
    /// Served at `GET /v1/models` instead of asking the upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

/// `[scorers.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScorerConfig {
    /// A reward model served over HTTP.
    RewardHttp(RewardHttpConfig),
}

/// `[scorers.NAME]` with `kind = "reward_http"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardHttpConfig {
    /// The server's API.
    pub api: RewardApi,
    /// The endpoint URL.
    pub url: String,
    /// The `model` field sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Template for APIs that take text.
    pub chat_template: ChatTemplate,
    /// vLLM: `text` (one batched call) or `messages` (one call per candidate).
    pub input_format: InputFormat,
    /// Output column holding the reward (vLLM, SGLang).
    pub label_index: usize,
    /// TEI label holding the reward, for multi-label heads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Environment variable holding the scorer's API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Limit for one scorer call.
    pub timeout_ms: u64,
    /// Retries on connection errors, 429 and 5xx.
    pub max_retries: u32,
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    /// Default candidates per request.
    pub n: u32,
    /// Default scorer.
    pub scorer: String,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 5_000;
const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_SCORER_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_MAX_RETRIES: u32 = 2;

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` is used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate(raw, path)
    }

    /// The validated policy for the engine.
    pub fn policy(&self) -> Policy {
        Policy {
            n: self.policy.n,
            scorer: self.policy.scorer.clone(),
            domains: self.domains.clone(),
        }
    }

    /// The effective configuration as TOML, defaults included.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_string(),
        message,
    };

    let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text
        .parse::<SocketAddr>()
        .map_err(|e| invalid("server.listen", format!("'{listen_text}' is not HOST:PORT ({e})")))?;

    let heartbeat_interval_ms = raw
        .server
        .heartbeat_interval_ms
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL_MS);
    if heartbeat_interval_ms == 0 {
        return Err(invalid("server.heartbeat_interval_ms", "must be greater than 0".into()));
    }
    check_url(&raw.upstream.base_url).map_err(|m| invalid("upstream.base_url", m))?;
    let upstream_timeout = raw.upstream.timeout_ms.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS);
    if upstream_timeout == 0 {
        return Err(invalid("upstream.timeout_ms", "must be greater than 0".into()));
    }
    if let Some(models) = &raw.upstream.models
        && models.iter().any(|m| m.trim().is_empty())
    {
        return Err(invalid("upstream.models", "model names must not be empty".into()));
    }

    let mut scorers = BTreeMap::new();
    for (name, scorer) in raw.scorers {
        let key = |k: &str| format!("scorers.{name}.{k}");
        let config = match scorer {
            RawScorer::RewardHttp {
                api,
                url,
                model,
                chat_template,
                input_format,
                label_index,
                label,
                api_key_env,
                timeout_ms,
                max_retries,
            } => {
                check_url(&url).map_err(|m| invalid(&key("url"), m))?;
                let timeout_ms = timeout_ms.unwrap_or(DEFAULT_SCORER_TIMEOUT_MS);
                if timeout_ms == 0 {
                    return Err(invalid(&key("timeout_ms"), "must be greater than 0".into()));
                }
                let input_format = input_format.unwrap_or(InputFormat::Text);
                if input_format == InputFormat::Messages
                    && !matches!(api, RewardApi::VllmClassify | RewardApi::VllmPooling)
                {
                    return Err(invalid(
                        &key("input_format"),
                        "\"messages\" is only for the vllm_classify and vllm_pooling APIs".into(),
                    ));
                }
                ScorerConfig::RewardHttp(RewardHttpConfig {
                    api,
                    url,
                    model,
                    chat_template: chat_template.unwrap_or(ChatTemplate::Chatml),
                    input_format,
                    label_index: label_index.unwrap_or(0),
                    label,
                    api_key_env,
                    timeout_ms,
                    max_retries: max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
                })
            }
        };
        scorers.insert(name, config);
    }

    let check_n = |key: &str, n: u32| {
        if (1..=MAX_N).contains(&n) {
            Ok(n)
        } else {
            Err(invalid(key, format!("must be between 1 and {MAX_N}, got {n}")))
        }
    };
    let check_scorer = |key: &str, s: &str| {
        if scorers.contains_key(s) {
            Ok(())
        } else {
            let known: Vec<&str> = scorers.keys().map(String::as_str).collect();
            Err(invalid(
                key,
                format!("no scorer named '{s}' (configured: [{}])", known.join(", ")),
            ))
        }
    };
    check_n("policy.n", raw.policy.n)?;
    check_scorer("policy.scorer", &raw.policy.scorer)?;

    let mut domains = BTreeMap::new();
    for (name, rule) in raw.domains {
        if !DOMAINS.contains(&name.as_str()) {
            return Err(invalid(
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
        domains.insert(
            name,
            DomainRule {
                n: rule.n,
                scorer: rule.scorer,
            },
        );
    }

    Ok(Config {
        server: ServerConfig {
            listen,
            heartbeat_interval_ms,
        },
        upstream: UpstreamConfig {
            base_url: raw.upstream.base_url,
            api_key_env: raw.upstream.api_key_env,
            sampling: raw.upstream.sampling.unwrap_or(SamplingMode::Auto),
            timeout_ms: upstream_timeout,
            max_retries: raw.upstream.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            models: raw.upstream.models,
        },
        scorers,
        policy: PolicyConfig {
            n: raw.policy.n,
            scorer: raw.policy.scorer,
        },
        domains,
    })
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
        let ScorerConfig::RewardHttp(rm) = &c.scorers["rm"];
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
