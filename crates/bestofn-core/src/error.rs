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

/// What an upstream said when it refused a request (a 4xx): its error object, normalised from
/// whatever envelope it used, its `param` and `code` kept as it sent them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rejection {
    /// The upstream's error message (or its raw body, truncated, when it gave none).
    pub message: String,
    /// The upstream's error `type`, if it gave one.
    pub error_type: Option<String>,
    /// The upstream's `param`, the request field at fault, if it named one.
    pub param: Option<String>,
    /// The upstream's `code` as it sent it: a string (OpenAI's `integer_below_min_value`) or a
    /// number (vLLM's `400`); None when it sent none or null.
    pub code: Option<serde_json::Value>,
}

/// A failure while answering a request, with enough detail to render an OpenAI error envelope.
///
/// A backend's failure names the party as the client may read it (`the upstream`, `scorer rm`,
/// `the fuser`, `the classifier`); the endpoint that failed is a field of its own, shown by
/// [`Error::loggable`] and [`Error::detailed`] (logs and the command line), never by `Display`
/// or [`Error::envelope`] (what the client reads).
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
    /// The upstream answered with a 4xx; its status, message, `type`, `param` and `code` are
    /// passed through.
    #[error("{backend} rejected the request: {}", rejection.message)]
    UpstreamRejected {
        /// Which party rejected it, as the client may read it (`the upstream`).
        backend: String,
        /// The endpoint that answered (for logs only), when known.
        endpoint: Option<Arc<str>>,
        /// The upstream's HTTP status (400..=499).
        status: u16,
        /// What the upstream said (boxed: it is rare, and keeps every `Result` small).
        rejection: Box<Rejection>,
    },
    /// A backend (upstream LLM or scorer) failed: 5xx, unreachable, or an unusable answer.
    #[error("{backend} failed: {message}")]
    BadGateway {
        /// Which party failed, as the client may read it: `the upstream`, `scorer rm`.
        backend: String,
        /// The endpoint that failed (for logs only), when known.
        endpoint: Option<Arc<str>>,
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
        /// Which party timed out, as the client may read it.
        backend: String,
        /// The endpoint that timed out (for logs only), when known.
        endpoint: Option<Arc<str>>,
        /// What kind of backend it is.
        party: Party,
        /// What timed out, and after how long.
        message: String,
    },
    /// A bug or an impossible state inside bestofn.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What stands for an endpoint in a message the client reads.
const ENDPOINT_WITHHELD: &str = "<endpoint>";

impl Error {
    /// A 400 naming the request field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidRequest { message: message.into(), param: Some(param.into()) }
    }

    /// A backend failure that another attempt will not fix.
    pub fn bad_gateway(party: Party, backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::BadGateway {
            backend: backend.into(),
            endpoint: None,
            party,
            message: message.into(),
            retryable: false,
            retry_after: None,
            source: None,
        }
    }

    /// A backend that did not answer in time.
    pub fn timeout(party: Party, backend: impl Into<String>, message: impl Into<String>) -> Self {
        Error::GatewayTimeout { backend: backend.into(), endpoint: None, party, message: message.into() }
    }

    /// An upstream's 4xx with what it said.
    pub fn rejected(backend: impl Into<String>, status: u16, rejection: Rejection) -> Self {
        Error::UpstreamRejected { backend: backend.into(), endpoint: None, status, rejection: Box::new(rejection) }
    }

    /// This backend failure with the endpoint that failed, for logs (unless one is already set:
    /// the innermost call knows best). Other errors are returned as they are.
    pub fn at(mut self, url: &Arc<str>) -> Self {
        if let Error::UpstreamRejected { endpoint, .. }
        | Error::BadGateway { endpoint, .. }
        | Error::GatewayTimeout { endpoint, .. } = &mut self
            && endpoint.is_none()
        {
            *endpoint = Some(url.clone());
        }
        self
    }

    /// The endpoint of a backend failure, when known: for logs and the command line only.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Error::UpstreamRejected { endpoint, .. }
            | Error::BadGateway { endpoint, .. }
            | Error::GatewayTimeout { endpoint, .. } => endpoint.as_deref(),
            _ => None,
        }
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

    /// The error as logs and spans may show it: the endpoint of a backend failure and every
    /// cause, once each. Some errors can quote the prompt or a completion: a client error (its
    /// message may quote the offending value) and a backend's error body (servers echo the input
    /// they refused, as in pydantic's 422s). Unless content capture is on
    /// ([`set_capture_content`]), those show their kind, parameter and status instead; the
    /// client still gets the whole message.
    pub fn loggable(&self) -> String {
        if CAPTURE_CONTENT.load(Ordering::Relaxed) {
            return self.detailed();
        }
        match self {
            Error::InvalidRequest { param, .. } => match param {
                Some(param) => format!("invalid request (param {param}; message withheld: may quote the request)"),
                None => "invalid request (message withheld: may quote the request)".to_string(),
            },
            Error::UpstreamRejected { backend, endpoint, status, rejection } => format!(
                "{} rejected the request with {status} (type {}, param {}, code {}; message withheld: may quote the request)",
                at_endpoint(backend, endpoint.as_deref()),
                rejection.error_type.as_deref().unwrap_or("-"),
                rejection.param.as_deref().unwrap_or("-"),
                rejection.code.as_ref().map_or_else(|| "-".to_string(), |c| c.to_string()),
            ),
            // A backend's error body ("HTTP 503: <body>"): a server may echo what it was sent.
            Error::BadGateway { backend, endpoint, message, .. } => match message.split_once(": ") {
                Some((head, _)) if head.starts_with("HTTP ") || head.starts_with("unexpected HTTP ") => format!(
                    "{} failed: {head} (body withheld: may quote the request)",
                    at_endpoint(backend, endpoint.as_deref())
                ),
                _ => self.detailed(),
            },
            other => other.detailed(),
        }
    }

    /// The whole error for whoever runs bestofn (the command line, logs with content capture
    /// on): the endpoint of a backend failure, the message and every cause, each once.
    pub fn detailed(&self) -> String {
        let head = match self {
            Error::UpstreamRejected { backend, endpoint, rejection, .. } => {
                format!("{} rejected the request: {}", at_endpoint(backend, endpoint.as_deref()), rejection.message)
            }
            Error::BadGateway { backend, endpoint, message, .. } => {
                format!("{} failed: {message}", at_endpoint(backend, endpoint.as_deref()))
            }
            Error::GatewayTimeout { backend, endpoint, message, .. } => {
                format!("{} timed out: {message}", at_endpoint(backend, endpoint.as_deref()))
            }
            other => other.to_string(),
        };
        self.with_causes(head)
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

    /// `head` with every underlying cause appended that it does not already say.
    fn with_causes(&self, mut out: String) -> String {
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !text.is_empty() && !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = s.source();
        }
        out
    }

    /// What the client reads: the message, naming the party, with every underlying cause
    /// appended once; never the endpoint (where a cause quotes it, `<endpoint>` stands in).
    pub fn message_with_causes(&self) -> String {
        let out = self.with_causes(self.to_string());
        match self.endpoint() {
            Some(endpoint) => withhold_endpoint(&out, endpoint),
            None => out,
        }
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
            Error::UpstreamRejected { rejection, .. } => {
                rejection.error_type.clone().unwrap_or_else(|| "invalid_request_error".into())
            }
            Error::BadGateway { .. } => "upstream_error".into(),
            Error::GatewayTimeout { .. } => "timeout_error".into(),
            Error::Internal(_) => "server_error".into(),
        }
    }

    /// The OpenAI error `param`, the request field at fault.
    pub fn param(&self) -> Option<&str> {
        match self {
            Error::InvalidRequest { param, .. } => param.as_deref(),
            Error::UpstreamRejected { rejection, .. } => rejection.param.as_deref(),
            _ => None,
        }
    }

    /// The OpenAI error `code`: a short machine-readable string of bestofn's, or an upstream's
    /// own code as it sent it (a string or a number; null when it sent none).
    pub fn code(&self) -> serde_json::Value {
        let code = match self {
            Error::InvalidRequest { .. } => "invalid_value",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::MalformedHead(_) => "malformed_request_head",
            Error::Unauthorized(_) => "invalid_api_key",
            Error::Overloaded(_) => "rate_limit_exceeded",
            Error::RequestTimeout(_) => "request_timeout",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::UpstreamRejected { rejection, .. } => {
                return rejection.code.clone().unwrap_or(serde_json::Value::Null);
            }
            Error::BadGateway { .. } => "bad_gateway",
            Error::GatewayTimeout { .. } => "timeout",
            Error::Internal(_) => "internal_error",
        };
        serde_json::Value::String(code.to_string())
    }

    /// A backend's 4xx says nothing about the client's request when the backend is one bestofn
    /// chose (a scorer): report it as a gateway failure rather than passing the status through.
    pub fn into_gateway_failure(self) -> Error {
        match self {
            Error::UpstreamRejected { backend, endpoint, status, rejection } => Error::BadGateway {
                backend,
                endpoint,
                party: Party::Scorer,
                message: format!("HTTP {status}: {}", rejection.message),
                retryable: false,
                retry_after: None,
                source: None,
            },
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

    /// The OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`, as the client
    /// reads it: the message names the party, never an endpoint.
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

/// `backend at endpoint`, or the backend alone when the endpoint is unknown.
fn at_endpoint(backend: &str, endpoint: Option<&str>) -> String {
    match endpoint {
        Some(endpoint) => format!("{backend} at {endpoint}"),
        None => backend.to_string(),
    }
}

/// `text` with every mention of `endpoint` replaced by [`ENDPOINT_WITHHELD`]: the URL's scheme
/// and authority (`http://10.0.0.5:8000`), the authority (`10.0.0.5:8000`), and the host when it
/// cannot be mistaken for a word (an address, a dotted name, `localhost`).
fn withhold_endpoint(text: &str, endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Credentials before an `@` are part of the authority as written, not of the host.
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(host_port, |(h, _)| h),
        None => host_port
            .rsplit_once(':')
            .map_or(host_port, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host_port }),
    };
    let mut out = text.to_string();
    let mut mentions = vec![endpoint.to_string()];
    if !scheme.is_empty() && !authority.is_empty() {
        mentions.push(format!("{scheme}://{authority}"));
    }
    mentions.push(authority.to_string());
    mentions.push(host_port.to_string());
    if host.contains(['.', ':']) || host.eq_ignore_ascii_case("localhost") {
        mentions.push(host.to_string());
    }
    for mention in mentions.iter().filter(|m| !m.is_empty()) {
        if out.contains(mention.as_str()) {
            out = out.replace(mention.as_str(), ENDPOINT_WITHHELD);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose text quotes where it happened, as reqwest's and rustls's do.
    #[derive(Debug)]
    struct Quoting(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    fn endpoint(url: &str) -> Arc<str> {
        Arc::from(url)
    }

    #[test]
    fn backend_failures_keep_their_cause_retryability_and_label() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = Error::bad_gateway(Party::Scorer, "scorer rm", "cannot reach it")
            .caused_by(io)
            .retryable_after(Some(Duration::from_secs(2)));
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(e.kind(), "scorer", "the label is a field, not a parsed name");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("connection refused"));
        assert_eq!(e.envelope()["error"]["message"], "scorer rm failed: cannot reach it: connection refused");
        let upstream = Error::bad_gateway(Party::Upstream, "scorer-like name", "HTTP 500");
        assert_eq!(upstream.kind(), "upstream");
        assert!(!upstream.is_retryable());
        assert_eq!(Error::timeout(Party::Classifier, "the classifier", "slow").kind(), "timeout");
    }

    #[test]
    fn the_envelope_names_the_party_and_only_logs_and_the_command_line_show_the_endpoint() {
        let url = endpoint("http://127.0.0.1:8091/v1");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let cause = Quoting("error sending request for url (http://127.0.0.1:8091/v1/chat/completions)", Some(io));
        let e = Error::bad_gateway(Party::Upstream, "the upstream", "cannot reach it").caused_by(cause).at(&url);
        assert_eq!(e.endpoint(), Some("http://127.0.0.1:8091/v1"));
        assert_eq!(
            e.to_string(),
            "the upstream failed: cannot reach it",
            "Display is the client's: no endpoint, no cause"
        );

        let message = e.envelope()["error"]["message"].as_str().unwrap().to_string();
        assert_eq!(
            message,
            "the upstream failed: cannot reach it: error sending request for url (<endpoint>/chat/completions): \
             Connection refused (os error 111)"
        );
        for leak in ["http://", "127.0.0.1", "8091"] {
            assert!(!message.contains(leak), "{leak} in {message}");
        }

        for shown in [e.loggable(), e.detailed()] {
            assert!(shown.starts_with("the upstream at http://127.0.0.1:8091/v1 failed: cannot reach it: "), "{shown}");
            assert_eq!(shown.matches("Connection refused").count(), 1, "{shown}");
        }
        // The innermost call's endpoint is kept.
        let outer = e.clone().at(&endpoint("http://elsewhere"));
        assert_eq!(outer.endpoint(), Some("http://127.0.0.1:8091/v1"));

        let slow = Error::timeout(Party::Scorer, "scorer rm", "no complete answer within 5 ms")
            .at(&endpoint("http://localhost:8001/classify"));
        assert_eq!(slow.envelope()["error"]["message"], "scorer rm timed out: no complete answer within 5 ms");
        assert_eq!(
            slow.loggable(),
            "scorer rm at http://localhost:8001/classify timed out: no complete answer within 5 ms"
        );
    }

    #[test]
    fn an_upstream_rejection_keeps_its_status_type_param_and_code_as_sent() {
        let url = endpoint("https://api.example.com/v1");
        let cases = [
            (serde_json::json!("integer_below_min_value"), "invalid_request_error"),
            (serde_json::json!(400), "BadRequestError"),
        ];
        for (code, error_type) in cases {
            let rejection = Rejection {
                message: "max_tokens must be at least 1, got -5.".into(),
                error_type: Some(error_type.into()),
                param: Some("max_tokens".into()),
                code: Some(code.clone()),
            };
            let e = Error::rejected("the upstream", 400, rejection).at(&url);
            let envelope = e.envelope();
            assert_eq!(
                envelope,
                serde_json::json!({"error": {
                    "message": "the upstream rejected the request: max_tokens must be at least 1, got -5.",
                    "type": error_type,
                    "param": "max_tokens",
                    "code": code,
                }})
            );
            let logged = e.loggable();
            assert!(logged.starts_with("the upstream at https://api.example.com/v1 rejected the request with 400"));
            assert!(logged.contains("param max_tokens") && logged.contains(&format!("code {code}")), "{logged}");
            assert!(!logged.contains("got -5"), "the message may quote the request: {logged}");
            assert!(e.detailed().contains("got -5") && e.detailed().contains("api.example.com"));
        }
        let bare = Error::rejected("the upstream", 404, Rejection { message: "no".into(), ..Default::default() });
        assert_eq!(bare.code(), serde_json::Value::Null, "no code sent: null, not one of bestofn's");
        assert_eq!(bare.error_type(), "invalid_request_error");

        // From a scorer, a 4xx is a gateway failure; the endpoint stays for the log.
        let failure = Error::rejected("scorer rm", 422, Rejection { message: "bad".into(), ..Default::default() })
            .at(&url)
            .into_gateway_failure();
        assert!(matches!(failure, Error::BadGateway { party: Party::Scorer, .. }));
        assert_eq!(failure.endpoint(), Some("https://api.example.com/v1"));
        assert_eq!(failure.to_string(), "scorer rm failed: HTTP 422: bad");
    }

    #[test]
    fn a_cause_is_shown_once_wherever_it_is_repeated() {
        let io = std::io::Error::other("Connection refused");
        let e = Error::bad_gateway(Party::Scorer, "scorer rm", "cannot reach it: Connection refused")
            .caused_by(Quoting("Connection refused", Some(io)));
        for shown in [e.message_with_causes(), e.detailed(), e.loggable()] {
            assert_eq!(shown.matches("Connection refused").count(), 1, "{shown}");
        }
    }

    #[test]
    fn endpoints_are_withheld_wherever_a_cause_quotes_them() {
        let cases = [
            ("http://10.0.0.5:8000/v1", "connect to 10.0.0.5:8000 failed", "connect to <endpoint> failed"),
            ("http://10.0.0.5:8000/v1", "no route to 10.0.0.5", "no route to <endpoint>"),
            (
                "https://rm.internal/score",
                "certificate not valid for name \"rm.internal\"",
                "certificate not valid for name \"<endpoint>\"",
            ),
            ("http://localhost:9/x", "see http://localhost:9/x/y", "see <endpoint>/y"),
            ("http://[::1]:8000/v1", "refused by [::1]:8000", "refused by <endpoint>"),
            ("http://user:pw@h.example:1/v1", "proxy h.example:1 said no", "proxy <endpoint> said no"),
            // A single-label host reads like a word: only its host:port is withheld.
            ("http://rm:8001/classify", "rm refused rm:8001", "rm refused <endpoint>"),
        ];
        for (url, text, expected) in cases {
            assert_eq!(withhold_endpoint(text, url), expected, "{url}");
        }
    }
}
