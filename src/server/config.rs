//! `[server]`: how the proxy listens, authenticates clients, bounds requests and logs; read,
//! then validated into [`ServerConfig`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::backend::Secret;
use crate::config::{ConfigError, Validator, defaults};

/// `[server]` as read.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
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
    pub(crate) threading: Option<toml::Value>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Interval of SSE keep-alive comments while candidates are generated and scored.
    pub heartbeat_interval_ms: u64,
    /// Client API keys; empty means no client authentication. Never printed: the effective
    /// config says how many there are in a comment instead (`Config::to_toml`).
    #[serde(skip)]
    pub api_keys: Vec<Secret>,
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

impl Validator<'_> {
    /// Validates `[server]`, filling in its defaults.
    pub(crate) fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
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
            api_keys,
            api_keys_env: raw.api_keys_env,
            auth_ops_endpoints: raw.auth_ops_endpoints.unwrap_or(defaults::AUTH_OPS_ENDPOINTS),
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
