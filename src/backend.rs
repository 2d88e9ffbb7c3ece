//! One JSON-over-HTTP call to a backend (upstream LLM or scorer), with timeout, retries and
//! error normalisation shared by every client bestofn has.

use std::time::{Duration, Instant};

use bytes::Bytes;
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

/// A stream of body bytes from a backend; an error ends it.
pub type ByteStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, Error>> + Send>>;

impl Backend {
    /// POSTs `body` as JSON to `url`, retrying what is retryable, and parses the JSON answer.
    pub async fn post_json(&self, url: &str, body: &Value) -> Result<JsonReply, Error> {
        let bytes = Bytes::from(serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?);
        self.call_json(|| self.json_request(url, &bytes)).await
    }

    /// GETs JSON from `url`, retrying what is retryable.
    pub async fn get_json(&self, url: &str) -> Result<JsonReply, Error> {
        self.call_json(|| self.client.get(url).timeout(self.timeout)).await
    }

    /// POSTs `body` and returns the answer's bytes as they arrive. `timeout` bounds the wait for
    /// the response headers only: a stream may legitimately run longer than one call's limit.
    pub async fn post_stream(&self, url: &str, body: &Value) -> Result<ByteStream, Error> {
        use futures_util::StreamExt;
        let bytes = Bytes::from(serde_json::to_vec(body).map_err(|e| Error::Internal(e.to_string()))?);
        let build = || {
            self.client
                .post(url)
                .header("content-type", "application/json")
                .body(bytes.clone())
        };
        let (response, _) = match tokio::time::timeout(self.timeout, self.send(build)).await {
            Ok(result) => result?,
            Err(_) => return Err(self.timed_out()),
        };
        let name = self.name.clone();
        Ok(Box::pin(response.bytes_stream().map(move |chunk| {
            chunk.map_err(|e| Error::BadGateway {
                backend: name.clone(),
                message: format!("stream broke off: {}", error_chain(&e)),
            })
        })))
    }

    fn json_request(&self, url: &str, bytes: &Bytes) -> reqwest::RequestBuilder {
        self.client
            .post(url)
            .header("content-type", "application/json")
            .body(bytes.clone())
            .timeout(self.timeout)
    }

    async fn call_json(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<JsonReply, Error> {
        let (response, started) = self.send(build).await?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                self.timed_out()
            } else {
                self.bad_gateway(format!("response body broke off: {}", error_chain(&e)))
            }
        })?;
        let body = serde_json::from_slice(&body)
            .map_err(|e| self.bad_gateway(format!("answered HTTP {status} with a body that is not JSON: {e}")))?;
        Ok(JsonReply {
            body,
            latency: started.elapsed(),
        })
    }

    /// Sends until a 2xx arrives or the retries run out; returns the response and when the
    /// successful attempt started.
    async fn send(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<(reqwest::Response, Instant), Error> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let mut request = build();
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            match self.attempt(request).await {
                Ok(response) => return Ok((response, started)),
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

    async fn attempt(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Attempt> {
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
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.unwrap_or_default();
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
