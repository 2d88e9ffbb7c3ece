//! One JSON-over-HTTP call to a backend (upstream LLM or scorer), with timeout, retries and
//! error normalisation shared by every client bestofn has.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::Error;
use crate::openai::normalize_error_body;

/// How a backend is called: its display name for errors, credentials, time limit and retries.
#[derive(Debug, Clone)]
pub struct Backend {
    /// A connection-pooling, keep-alive client shared by all calls.
    pub client: reqwest::Client,
    /// Name used in error messages and logs, e.g. `upstream http://127.0.0.1:8000/v1`.
    pub name: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// Limit for one attempt, connection to last byte.
    pub timeout: Duration,
    /// Further attempts after a connection error, a 429 or a 5xx.
    pub max_retries: u32,
}

/// A successful call: the JSON body and how long the successful attempt took.
#[derive(Debug)]
pub struct JsonReply {
    /// The parsed response body.
    pub body: Value,
    /// Wall time of the attempt that succeeded.
    pub latency: Duration,
}

/// Installs ring as the process's TLS crypto provider. reqwest is built without a bundled
/// provider (see Cargo.toml) to keep clean builds lean; this must run before a client is built.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

impl Backend {
    /// POSTs `body` as JSON to `url`, retrying what is retryable.
    pub async fn post_json(&self, url: &str, body: &Value) -> Result<JsonReply, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?;
        self.call(|| {
            self.client
                .post(url)
                .header("content-type", "application/json")
                .body(bytes.clone())
        })
        .await
    }

    /// GETs JSON from `url`, retrying what is retryable.
    pub async fn get_json(&self, url: &str) -> Result<JsonReply, Error> {
        self.call(|| self.client.get(url)).await
    }

    async fn call(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<JsonReply, Error> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let mut request = build().timeout(self.timeout);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            match self.attempt(request).await {
                Ok(body) => {
                    return Ok(JsonReply {
                        body,
                        latency: started.elapsed(),
                    });
                }
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Retryable { error, .. }) if attempt >= self.max_retries => return Err(error),
                Err(Attempt::Retryable { error, retry_after }) => {
                    let backoff = retry_after
                        .unwrap_or(BACKOFF_BASE * 2u32.saturating_pow(attempt))
                        .min(BACKOFF_CAP);
                    tracing::debug!(backend = %self.name, attempt, error = %error, ?backoff, "retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt(&self, request: reqwest::RequestBuilder) -> Result<Value, Attempt> {
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(Attempt::Final(self.timed_out())),
            Err(e) => {
                return Err(Attempt::Retryable {
                    error: self.bad_gateway(format!("cannot reach it: {}", error_chain(&e))),
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Err(Attempt::Final(self.timed_out())),
            Err(e) => {
                return Err(Attempt::Retryable {
                    error: self.bad_gateway(format!("response body broke off: {}", error_chain(&e))),
                    retry_after: None,
                });
            }
        };
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                Attempt::Final(self.bad_gateway(format!("answered HTTP {status} with a body that is not JSON: {e}")))
            });
        }
        let normalized = normalize_error_body(&body);
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(Attempt::Retryable {
                error: self.bad_gateway(format!("HTTP {}: {}", status.as_u16(), normalized.message)),
                retry_after,
            });
        }
        if status.is_client_error() {
            return Err(Attempt::Final(Error::UpstreamRejected {
                backend: self.name.clone(),
                status: status.as_u16(),
                message: normalized.message,
                error_type: normalized.error_type,
                param: normalized.param,
            }));
        }
        Err(Attempt::Final(self.bad_gateway(format!(
            "unexpected HTTP {status}: {}",
            normalized.message
        ))))
    }

    fn timed_out(&self) -> Error {
        Error::GatewayTimeout {
            backend: self.name.clone(),
            message: format!("no complete answer within {} ms", self.timeout.as_millis()),
        }
    }

    fn bad_gateway(&self, message: String) -> Error {
        Error::BadGateway {
            backend: self.name.clone(),
            message,
        }
    }
}

enum Attempt {
    Retryable {
        error: Error,
        retry_after: Option<Duration>,
    },
    Final(Error),
}

/// `reqwest` hides the useful part of a connection error in its source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
