//! `[upstream]`: the OpenAI-compatible servers candidates are sampled from; read, then
//! validated into [`UpstreamConfig`].

use serde::{Deserialize, Serialize};

use super::{SamplingMode, UsageCounts};
use crate::backend::config::{RawTransport, with_transport_keys};
use crate::backend::{Http2Mode, TransportConfig};
use crate::bon::MAX_N;
use crate::config::{ConfigError, Validator, defaults};

with_transport_keys! {
    /// `[upstream]` as read: its own keys and the transport keys.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawUpstream {
        base_url: Option<String>,
        base_urls: Option<Vec<String>>,
        sampling: Option<SamplingMode>,
        hedge: Option<u32>,
        models: Option<Vec<String>>,
        usage_counts: Option<UsageCounts>,
        http2: Option<Http2Mode>,
        max_response_bytes: Option<u64>,
        typical_call_ms: Option<u64>,
    }
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

impl Validator<'_> {
    /// Validates `[upstream]`, filling in its defaults.
    pub(crate) fn upstream(&self, up: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let transport = RawTransport::from(&up);
        Ok(UpstreamConfig {
            base_urls: self.urls("upstream.base_url", up.base_url, up.base_urls)?,
            sampling: up.sampling.unwrap_or(defaults::SAMPLING),
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
            usage_counts: up.usage_counts.unwrap_or(defaults::USAGE_COUNTS),
            http2: up.http2.unwrap_or(defaults::HTTP2),
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
                ..self.transport("upstream", transport, defaults::UPSTREAM_TIMEOUT_MS, defaults::MAX_RETRIES)?
            },
        })
    }
}
