//! The one error type of the request path: each variant carries what went wrong (its kind),
//! which party is at fault, whether another attempt may succeed, and its cause. It knows no
//! HTTP status: the server maps errors to statuses and the OpenAI envelope in one place
//! (`bestofn::server::status_of`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `telemetry.capture_content`: whether error messages that may quote a prompt or a completion go
/// into logs and spans whole. Off until the server sets it at startup.
static CAPTURE_CONTENT: AtomicBool = AtomicBool::new(false);

/// Lets [`Error::loggable`] show every message whole (`telemetry.capture_content = true`).
pub fn set_capture_content(capture: bool) {
    CAPTURE_CONTENT.store(capture, Ordering::Relaxed);
}

/// The underlying error of a backend failure (an I/O error, a TLS error, a JSON error), kept as
/// the error's `source` so that logs and envelopes can show the whole chain.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Which kind of backend failed: the `kind` label of the error metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    /// The LLM that samples candidates.
    Upstream,
    /// A scorer's backend (an RM server, a judge LLM).
    Scorer,
    /// The judge-LLM domain classifier.
    Classifier,
}

impl Party {
    /// The metric label of a failure of this party.
    pub fn label(self) -> &'static str {
        match self {
            Party::Upstream => "upstream",
            Party::Scorer => "scorer",
            Party::Classifier => "classifier",
        }
    }
}

/// A failure while answering a request, with enough detail to render an OpenAI error envelope.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The client sent something invalid; `param` names the offending field.
    #[error("{message}")]
    InvalidRequest {
        /// Human-readable description of the problem.
        message: String,
        /// The request field at fault (`messages`, `bestofn.n`, ...), if one is.
        param: Option<String>,
    },
    /// No valid client API key.
    #[error("{0}")]
    Unauthorized(String),
    /// Too many requests in flight; the client should retry after a second.
    #[error("{0}")]
    Overloaded(String),
    /// The client did not send its body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The request body is larger than the limit (bytes).
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The request head breaks a rule of HTTP that the server checks itself (the Host field of
    /// an HTTP/1.1 request).
    #[error("{0}")]
    MalformedHead(String),
    /// The route does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The HTTP method is not allowed on this route.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The upstream answered with a 4xx; its status and normalised message are passed through.
    #[error("{backend} rejected the request: {message}")]
    UpstreamRejected {
        /// Which backend rejected it.
        backend: String,
        /// The upstream's HTTP status (400..=499).
        status: u16,
        /// The upstream's error message, normalised from whatever envelope it used.
        message: String,
        /// The upstream's error `type`, if it gave one.
        error_type: Option<String>,
        /// The upstream's `param`, if it gave one.
        param: Option<String>,
    },
    /// A backend (upstream LLM or scorer) failed: 5xx, unreachable, or an unusable answer.
    #[error("{backend} failed: {message}")]
    BadGateway {
        /// Which backend failed, e.g. `upstream http://127.0.0.1:8000/v1` or `scorer rm`.
        backend: String,
        /// What kind of backend it is.
        party: Party,
        /// What went wrong.
        message: String,
        /// Whether another attempt may succeed (connection errors, 429, 5xx).
        retryable: bool,
        /// The backend's Retry-After, when it sent one.
        retry_after: Option<Duration>,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Cause>,
    },
    /// A backend did not answer in time.
    #[error("{backend} timed out: {message}")]
    GatewayTimeout {
        /// Which backend timed out.
        backend: String,
        /// What kind of backend it is.
        party: Party,
        /// What timed out, and after how long.
        message: String,
    },
    /// A bug or an impossible state inside bestofn.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A 400 naming the request field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidRequest { message: message.into(), param: Some(param.into()) }
    }

    /// A backend failure that another attempt will not fix.
    pub fn bad_gateway(party: Party, backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::BadGateway {
            backend: backend.into(),
            party,
            message: message.into(),
            retryable: false,
            retry_after: None,
            source: None,
        }
    }

    /// A backend that did not answer in time.
    pub fn timeout(party: Party, backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::GatewayTimeout { backend: backend.into(), party, message: message.into() }
    }

    /// This error with `cause` as its source.
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        if let Error::BadGateway { source, .. } = &mut self {
            *source = Some(Arc::new(cause));
        }
        self
    }

    /// This error with a boxed `cause` as its source.
    pub fn caused_by_boxed(mut self, cause: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        if let Error::BadGateway { source, .. } = &mut self {
            *source = Some(Arc::from(cause));
        }
        self
    }

    /// This failure marked worth another attempt, after at least `after` when the backend said so.
    pub fn retryable_after(mut self, after: Option<Duration>) -> Self {
        if let Error::BadGateway { retryable, retry_after, .. } = &mut self {
            *retryable = true;
            *retry_after = after;
        }
        self
    }

    /// Whether another attempt at the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::BadGateway { retryable: true, .. })
    }

    /// The error as logs and spans may show it. Some can quote the prompt or a completion: a
    /// client error (its message may quote the offending value) and a backend's error body
    /// (servers echo the input they refused, as in pydantic's 422s). Unless content capture is
    /// on ([`set_capture_content`]), those show their kind, parameter and status instead; the
    /// client still gets the whole message.
    pub fn loggable(&self) -> String {
        if CAPTURE_CONTENT.load(Ordering::Relaxed) {
            return self.to_string();
        }
        match self {
            Error::InvalidRequest { param, .. } => match param {
                Some(param) => format!("invalid request (param {param}; message withheld: may quote the request)"),
                None => "invalid request (message withheld: may quote the request)".to_string(),
            },
            Error::UpstreamRejected { backend, status, error_type, param, .. } => format!(
                "{backend} rejected the request with {status} (type {}, param {}; message withheld: may quote the request)",
                error_type.as_deref().unwrap_or("-"),
                param.as_deref().unwrap_or("-"),
            ),
            // A backend's error body ("HTTP 503: <body>"): a server may echo what it was sent.
            Error::BadGateway { backend, message, .. } => match message.split_once(": ") {
                Some((head, _)) if head.starts_with("HTTP ") || head.starts_with("unexpected HTTP ") => {
                    format!("{backend} failed: {head} (body withheld: may quote the request)")
                }
                _ => self.to_string(),
            },
            other => other.to_string(),
        }
    }

    /// Whether the client's connection is closed after this error's answer: the rest of the
    /// request's bytes were not read or cannot be trusted to frame the next request.
    pub fn ends_connection(&self) -> bool {
        matches!(self, Error::MalformedHead(_) | Error::PayloadTooLarge(_) | Error::RequestTimeout(_))
    }

    /// How long the backend asked to wait before another attempt.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::BadGateway { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The message with every underlying cause appended: what logs and the error envelope show.
    pub fn message_with_causes(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = s.source();
        }
        out
    }

    /// The OpenAI error `type` string.
    pub fn error_type(&self) -> String {
        match self {
            Error::Overloaded(_) => "rate_limit_error".into(),
            Error::InvalidRequest { .. }
            | Error::Unauthorized(_)
            | Error::RequestTimeout(_)
            | Error::PayloadTooLarge(_)
            | Error::MalformedHead(_)
            | Error::NotFound(_)
            | Error::MethodNotAllowed(_) => "invalid_request_error".into(),
            Error::UpstreamRejected { error_type, .. } => {
                error_type.clone().unwrap_or_else(|| "invalid_request_error".into())
            }
            Error::BadGateway { .. } => "upstream_error".into(),
            Error::GatewayTimeout { .. } => "timeout_error".into(),
            Error::Internal(_) => "server_error".into(),
        }
    }

    /// The OpenAI error `param`, the request field at fault.
    pub fn param(&self) -> Option<&str> {
        match self {
            Error::InvalidRequest { param, .. } | Error::UpstreamRejected { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// The OpenAI error `code`, a short machine-readable string.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Error::InvalidRequest { .. } => Some("invalid_value"),
            Error::PayloadTooLarge(_) => Some("payload_too_large"),
            Error::MalformedHead(_) => Some("malformed_request_head"),
            Error::Unauthorized(_) => Some("invalid_api_key"),
            Error::Overloaded(_) => Some("rate_limit_exceeded"),
            Error::RequestTimeout(_) => Some("request_timeout"),
            Error::NotFound(_) => Some("not_found"),
            Error::MethodNotAllowed(_) => Some("method_not_allowed"),
            Error::UpstreamRejected { .. } => None,
            Error::BadGateway { .. } => Some("bad_gateway"),
            Error::GatewayTimeout { .. } => Some("timeout"),
            Error::Internal(_) => Some("internal_error"),
        }
    }

    /// A backend's 4xx says nothing about the client's request when the backend is one bestofn
    /// chose (a scorer): report it as a gateway failure rather than passing the status through.
    pub fn into_gateway_failure(self) -> Error {
        match self {
            Error::UpstreamRejected { backend, status, message, .. } => {
                Error::bad_gateway(Party::Scorer, backend, format!("HTTP {status}: {message}"))
            }
            other => other,
        }
    }

    /// A short, bounded label for metrics: what kind of failure this was.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidRequest { .. }
            | Error::PayloadTooLarge(_)
            | Error::MalformedHead(_)
            | Error::RequestTimeout(_) => "invalid_request",
            Error::NotFound(_) | Error::MethodNotAllowed(_) => "not_found",
            Error::Unauthorized(_) => "unauthorized",
            Error::Overloaded(_) => "overloaded",
            Error::UpstreamRejected { .. } => "upstream_rejected",
            Error::BadGateway { party, .. } => party.label(),
            Error::GatewayTimeout { .. } => "timeout",
            Error::Internal(_) => "internal",
        }
    }

    /// The OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`.
    pub fn envelope(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message_with_causes(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_failures_keep_their_cause_retryability_and_label() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = Error::bad_gateway(Party::Scorer, "scorer rm http://x", "cannot reach it")
            .caused_by(io)
            .retryable_after(Some(Duration::from_secs(2)));
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(e.kind(), "scorer", "the label is a field, not a parsed name");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("connection refused"));
        assert_eq!(e.envelope()["error"]["message"], "scorer rm http://x failed: cannot reach it: connection refused");
        let upstream = Error::bad_gateway(Party::Upstream, "scorer-like name", "HTTP 500");
        assert_eq!(upstream.kind(), "upstream");
        assert!(!upstream.is_retryable());
        assert_eq!(Error::timeout(Party::Classifier, "classifier", "slow").kind(), "timeout");
    }
}
