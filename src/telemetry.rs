//! Request ids, W3C trace context and OpenTelemetry traces.
//!
//! Every request gets an id (the client's `x-request-id`, else a generated one) and a trace (the
//! client's `traceparent`, else a new one), kept in a task-local [`RequestContext`] for the
//! request's lifetime: the backend client asks [`outgoing_headers`] for the headers that carry
//! both to upstream, scorer and fuser calls. When an OTLP endpoint is configured, `tracing`
//! spans are also exported as OpenTelemetry spans ([`Exporter`]); without one, the trace id is
//! still propagated, so a collector further along can join the calls up.
//!
//! Prompt and completion text stay out of spans and logs unless `telemetry.capture_content` is
//! set ([`capture_content`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `x-request-id` header, read from clients and sent to clients and backends.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// `telemetry.provider_name` by default (`config::DEFAULT_PROVIDER_NAME`): the
/// value lives here because this module sits below `config` (see `tests/layering.rs`).
pub const DEFAULT_PROVIDER_NAME: &str = "openai";
/// `telemetry.capture_content` by default: prompts and completions stay out of spans and logs.
pub const DEFAULT_CAPTURE_CONTENT: bool = false;
/// `telemetry.service_name` by default.
pub const DEFAULT_SERVICE_NAME: &str = "bestofn";

/// The environment variable that names the collector when the config does not.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Only bestofn's own spans are exported: the HTTP client that exports them logs through
/// `tracing` too, and exporting its spans would make every export cause another.
const EXPORTED_TARGET: &str = "bestofn";

/// How long one export may take; shutdown waits for at most about this, so SIGTERM with a
/// collector that does not answer still ends well within an orchestrator's grace period.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// `[telemetry]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    otlp_endpoint: Option<String>,
    provider_name: Option<String>,
    capture_content: Option<bool>,
    service_name: Option<String>,
}

/// `[telemetry]`: where traces go and what they may hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL; spans are posted to `{otlp_endpoint}/v1/traces`.
    /// None: `OTEL_EXPORTER_OTLP_ENDPOINT`, else no export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `gen_ai.provider.name` of upstream-call spans.
    pub provider_name: String,
    /// Whether prompt and completion text may go into spans and logs.
    pub capture_content: bool,
    /// The `service.name` resource attribute of exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            provider_name: DEFAULT_PROVIDER_NAME.to_string(),
            capture_content: DEFAULT_CAPTURE_CONTENT,
            service_name: DEFAULT_SERVICE_NAME.to_string(),
        }
    }
}

impl RawTelemetry {
    /// The validated section, or the key at fault and what is wrong with it.
    pub(crate) fn validate(self) -> Result<TelemetryConfig, (&'static str, String)> {
        let otlp_endpoint = match self.otlp_endpoint {
            None => None,
            Some(url) => Some(check_endpoint(&url).map_err(|m| ("telemetry.otlp_endpoint", m))?),
        };
        let nonempty = |key: &'static str, value: Option<String>, default: &str| match value {
            Some(v) if v.trim().is_empty() => Err((key, "must not be empty".to_string())),
            Some(v) => Ok(v),
            None => Ok(default.to_string()),
        };
        Ok(TelemetryConfig {
            otlp_endpoint,
            provider_name: nonempty("telemetry.provider_name", self.provider_name, DEFAULT_PROVIDER_NAME)?,
            capture_content: self.capture_content.unwrap_or(DEFAULT_CAPTURE_CONTENT),
            service_name: nonempty("telemetry.service_name", self.service_name, DEFAULT_SERVICE_NAME)?,
        })
    }
}

/// An http(s) base URL with a host, without the trailing slash (the signal path is appended).
fn check_endpoint(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL ({e})"))?;
    match parsed.scheme() {
        "http" | "https" if parsed.host().is_some() => Ok(url.trim_end_matches('/').to_string()),
        "http" | "https" => Err(format!("'{url}' has no host")),
        other => Err(format!("'{url}' must be http or https, not {other}")),
    }
}

/// What the request path needs of the config, set once at startup.
struct Settings {
    provider_name: String,
    capture_content: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Whether spans are exported. The OpenTelemetry-only fields (`otel.name`, `otel.kind`, the
/// HTTP attributes) are recorded only then: log lines print every field of their spans, and
/// these would only repeat what the others say.
static EXPORTING: AtomicBool = AtomicBool::new(false);

fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes the config's `provider_name` and `capture_content` apply; the first call wins (the
/// server calls it once at startup, before serving).
pub fn init(config: &TelemetryConfig) {
    let _ =
        SETTINGS.set(Settings { provider_name: config.provider_name.clone(), capture_content: config.capture_content });
    crate::error::set_capture_content(capture_content());
}

/// Whether prompt and completion text may go into spans and logs (`telemetry.capture_content`;
/// false until [`init`]).
pub fn capture_content() -> bool {
    SETTINGS.get().is_some_and(|s| s.capture_content)
}

fn provider_name() -> &'static str {
    SETTINGS.get().map_or(DEFAULT_PROVIDER_NAME, |s| s.provider_name.as_str())
}

/// A client's `traceparent` (W3C Trace Context, version 00 as sent by current tracers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The client's span that made the request.
    pub parent_id: SpanId,
    /// Trace flags (bit 0: the caller may have recorded its span).
    pub flags: TraceFlags,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`. Anything else, and all-zero ids, are None: the
    /// request then starts a new trace (as the W3C rules ask of a malformed header). Later
    /// versions may append fields after the four known ones, which are read and the rest ignored.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let fixed = value.get(..55)?;
        let mut parts = fixed.split('-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(lower_hex(version, 2) && lower_hex(trace, 32) && lower_hex(parent, 16) && lower_hex(flags, 2)) {
            return None;
        }
        // Version ff is invalid; version 00 has exactly these fields; a later one may have more.
        let rest = &value[55..];
        if version == "ff" || (version == "00" && !rest.is_empty()) || !(rest.is_empty() || rest.starts_with('-')) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let parent_id = SpanId::from_hex(parent).ok()?;
        if trace_id == TraceId::INVALID || parent_id == SpanId::INVALID {
            return None;
        }
        let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED;
        Some(TraceParent { trace_id, parent_id, flags })
    }

    /// The client's `traceparent` header, if it sent a valid one.
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceParent> {
        headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse)
    }

    /// The header value: version 00.
    pub fn to_header(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.parent_id, self.flags.to_u8())
    }

    /// The OpenTelemetry context whose parent is the client's span.
    fn remote_context(&self) -> opentelemetry::Context {
        let span = SpanContext::new(self.trace_id, self.parent_id, self.flags, true, Default::default());
        opentelemetry::Context::new().with_remote_span_context(span)
    }
}

/// The id and trace of the request being served.
#[derive(Debug, Clone)]
pub struct RequestContext {
    request_id: Arc<str>,
    trace_id: TraceId,
    flags: TraceFlags,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

fn random_trace_id() -> TraceId {
    // All zeros is the invalid id; 1 in 2^128, but cheap to rule out.
    TraceId::from(fastrand::u128(1..))
}

fn random_span_id() -> SpanId {
    SpanId::from(fastrand::u64(1..))
}

impl RequestContext {
    /// The context of a request with this id, in the client's trace or a new one.
    pub fn new(request_id: &str, client: Option<TraceParent>) -> RequestContext {
        let (trace_id, flags) = match client {
            Some(parent) => (parent.trace_id, parent.flags),
            None => (random_trace_id(), TraceFlags::default()),
        };
        RequestContext { request_id: request_id.into(), trace_id, flags }
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The trace id, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        self.trace_id.to_string()
    }

    /// The context of the request whose work is running, if any.
    pub fn current() -> Option<RequestContext> {
        REQUEST.try_with(Clone::clone).ok()
    }

    /// Runs `work` as this request's: [`outgoing_headers`] called within it carry its id and trace.
    /// Task-locals do not follow work that outlives the handler (a streamed answer's body), so
    /// such work is wrapped again.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        REQUEST.scope(self, work).await
    }
}

/// The span of one request, a child of the client's span when it sent a valid `traceparent`
/// (and an OTLP endpoint is configured), else the root of a new trace. Its `domain`, `n` and
/// `scorer` are recorded once the request is planned ([`record_plan`]); its `trace_id` is set
/// here, so log lines of the request name the trace the collector has.
///
/// `/healthz` and `/metrics` get a debug-level span, which is not exported: probes and scrapes
/// every few seconds would bury the traces of real requests.
pub fn request_span(
    context: &mut RequestContext,
    client: Option<TraceParent>,
    method: &str,
    route: &'static str,
) -> tracing::Span {
    macro_rules! request_span {
        ($level:expr) => {
            tracing::span!(
                target: "bestofn::request",
                $level,
                "request",
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
                request_id = %context.request_id,
                trace_id = tracing::field::Empty,
                domain = tracing::field::Empty,
                n = tracing::field::Empty,
                scorer = tracing::field::Empty,
            )
        };
    }
    let span = match route {
        "/healthz" | "/metrics" => request_span!(tracing::Level::DEBUG),
        _ => request_span!(tracing::Level::INFO),
    };
    if exporting() {
        span.record("otel.name", tracing::field::display(format_args!("{method} {route}")));
        span.record("otel.kind", "server");
        // Attributes rather than fields: log lines need not repeat them.
        span.set_attribute("http.request.method", method.to_string());
        span.set_attribute("http.route", route);
    }
    if let Some(parent) = client {
        // Err: no OpenTelemetry layer (no endpoint), where the task-local carries the trace.
        let _ = span.set_parent(parent.remote_context());
    }
    // With the OpenTelemetry layer, its span context is the trace; keep the task-local in step
    // so every header and log line names the same one.
    let exported = span.context().span().span_context().clone();
    if exported.is_valid() {
        context.trace_id = exported.trace_id();
        context.flags = exported.trace_flags();
    }
    span.record("trace_id", tracing::field::display(context.trace_id));
    span
}

/// Records a planned request's domain, N and scorer on its span.
pub fn record_plan(span: &tracing::Span, domain: &str, n: u32, scorer: &str) {
    span.record("domain", domain);
    span.record("n", n);
    span.record("scorer", scorer);
}

/// Records the HTTP status of the answer on the request span; 5xx marks the span as failed.
pub fn record_status(span: &tracing::Span, status: http::StatusCode) {
    if exporting() {
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
        if status.is_server_error() {
            span.set_status(opentelemetry::trace::Status::error(status.to_string()));
        }
    }
}

/// The headers that carry the current request to a backend: `traceparent` (the current span's
/// trace and span ids, so the backend's span is a child of it) and `x-request-id`. Empty
/// outside a request.
///
/// Call it inside the span of the call (see [`upstream_call_span`]) so the backend's span is
/// parented on the call rather than on the whole request, and in the request's task: the
/// context is a task-local, which a `tokio::spawn`ed task does not inherit (work moved to another
/// task takes `RequestContext::current()` and `tracing::Span::current()` along and re-enters them
/// with [`RequestContext::scope`] and `Instrument`). Without an OpenTelemetry layer the trace id
/// is the request's (the client's or a new one) and the span id a fresh one each call.
pub fn outgoing_headers() -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(2);
    let request = RequestContext::current();
    let current = tracing::Span::current().context().span().span_context().clone();
    let parent = if current.is_valid() {
        Some(TraceParent { trace_id: current.trace_id(), parent_id: current.span_id(), flags: current.trace_flags() })
    } else {
        request.as_ref().map(|r| TraceParent { trace_id: r.trace_id, parent_id: random_span_id(), flags: r.flags })
    };
    if let Some(value) = parent.and_then(|p| HeaderValue::from_str(&p.to_header()).ok()) {
        headers.push((TRACEPARENT, value));
    }
    if let Some(value) = request.and_then(|r| HeaderValue::from_str(&r.request_id).ok()) {
        headers.push((X_REQUEST_ID, value));
    }
    headers
}

/// The span of one call to an OpenAI-compatible backend (upstream sampling, the judge, the
/// fuser), with the OpenTelemetry GenAI attributes: named `{operation} {model}` (e.g. `chat
/// gpt-4o`), kind client, `gen_ai.operation.name` (`chat` or `text_completion`),
/// `gen_ai.provider.name` (`telemetry.provider_name`), `gen_ai.request.model` when known and
/// `gen_ai.request.choice.count` when it is not 1. Its start time is taken here: create it when
/// the call starts, run the call in it (`tracing::Instrument::instrument`, so
/// [`outgoing_headers`] parents the backend on it) and give it the usage with [`record_usage`].
pub fn upstream_call_span(operation: &str, model: Option<&str>, choice_count: u32) -> tracing::Span {
    let span = tracing::info_span!(
        target: "bestofn::upstream",
        "upstream call",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        gen_ai.operation.name = %operation,
        gen_ai.provider.name = %provider_name(),
        gen_ai.request.model = tracing::field::Empty,
        gen_ai.request.choice.count = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if exporting() {
        match model {
            Some(model) => span.record("otel.name", tracing::field::display(format_args!("{operation} {model}"))),
            None => span.record("otel.name", operation),
        };
        span.record("otel.kind", "client");
    }
    if let Some(model) = model {
        span.record("gen_ai.request.model", model);
    }
    if choice_count != 1 {
        span.record("gen_ai.request.choice.count", choice_count);
    }
    span
}

/// Records a finished call's token usage (`gen_ai.usage.input_tokens` and
/// `gen_ai.usage.output_tokens`) on its [`upstream_call_span`].
pub fn record_usage(span: &tracing::Span, input_tokens: u64, output_tokens: u64) {
    span.record("gen_ai.usage.input_tokens", input_tokens);
    span.record("gen_ai.usage.output_tokens", output_tokens);
}

/// Marks a call span (upstream or scoring) as failed, with `error.type` a short class of the
/// error (`timeout`, the HTTP status of a rejection such as `422`, `bad_gateway`, ...), never
/// its message, which may quote the prompt.
pub fn record_error(span: &tracing::Span, error: &crate::Error) {
    use crate::Error;
    let error_type: std::borrow::Cow<'static, str> = match error {
        Error::GatewayTimeout { .. } | Error::RequestTimeout(_) => "timeout".into(),
        Error::UpstreamRejected { status, .. } => status.to_string().into(),
        Error::BadGateway { .. } => "bad_gateway".into(),
        Error::InvalidRequest { .. } => "invalid_request".into(),
        Error::Overloaded(_) => "overloaded".into(),
        Error::Internal(_) => "internal".into(),
        _ => "_OTHER".into(),
    };
    span.record("error.type", error_type.as_ref());
    span.set_status(opentelemetry::trace::Status::error(error_type));
}

/// Runs `work` in `span` (a call or scoring span), marking the span failed when it fails.
pub async fn in_span<T>(
    span: tracing::Span,
    work: impl Future<Output = Result<T, crate::Error>>,
) -> Result<T, crate::Error> {
    use tracing::Instrument;
    let result = work.instrument(span.clone()).await;
    if let Err(e) = &result {
        record_error(&span, e);
    }
    result
}

/// The span of one scoring of candidates by a named scorer: `score {scorer}`, with
/// `bestofn.scorer.name`, `bestofn.scorer.kind` (e.g. `reward_http`, `judge`, `consensus`) and
/// `bestofn.candidates`. Created when scoring starts; the scorer's backend calls made inside it
/// are its children.
pub fn scoring_span(scorer: &str, kind: &str, candidates: usize) -> tracing::Span {
    let span = tracing::info_span!(
        target: "bestofn::score",
        "scoring",
        otel.name = tracing::field::Empty,
        error.type = tracing::field::Empty,
        bestofn.scorer.name = %scorer,
        bestofn.scorer.kind = %kind,
        bestofn.candidates = candidates,
    );
    if exporting() {
        span.record("otel.name", tracing::field::display(format_args!("score {scorer}")));
    }
    span
}

/// The OTLP/HTTP span exporter: installed as a `tracing` layer at startup, shut down at exit so
/// the last batch is sent.
pub struct Exporter {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    endpoint: String,
}

/// The collector spans go to: the config's endpoint, else `OTEL_EXPORTER_OTLP_ENDPOINT`, else
/// none (nothing exported).
pub fn otlp_endpoint(config: &TelemetryConfig) -> Result<Option<String>, String> {
    match &config.otlp_endpoint {
        Some(endpoint) => Ok(Some(endpoint.clone())),
        None => match std::env::var(OTLP_ENDPOINT_ENV) {
            Ok(value) if !value.trim().is_empty() => {
                check_endpoint(value.trim()).map(Some).map_err(|m| format!("{OTLP_ENDPOINT_ENV}: {m}"))
            }
            _ => Ok(None),
        },
    }
}

impl Exporter {
    /// The exporter of the configured endpoint (see [`otlp_endpoint`]), or None when there is
    /// none. Call it outside any async runtime: the batch processor exports from a thread of its
    /// own with a blocking HTTP client, which is what keeps exporting off the serving runtime.
    /// The TLS crypto provider must be installed first (`backend::install_crypto_provider`):
    /// reqwest is built without one.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Exporter>, String> {
        let Some(base) = otlp_endpoint(config)? else { return Ok(None) };
        let endpoint = format!("{base}/v1/traces");
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot start the OTLP exporter to {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some(Exporter { provider, endpoint }))
    }

    /// Where spans are posted.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `tracing` layer that turns bestofn's spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        use tracing_subscriber::Layer;
        EXPORTING.store(true, Ordering::Relaxed);
        let tracer = self.provider.tracer("bestofn");
        let only_ours = tracing_subscriber::filter::Targets::new().with_target(EXPORTED_TARGET, tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(only_ours)
    }

    /// Sends the spans still queued and stops the exporter. Blocks (at most about the export
    /// timeout): call it after the runtime has stopped serving.
    pub fn shutdown(self) -> Result<(), String> {
        self.provider.shutdown().map_err(|e| format!("exporting the last spans to {} failed: {e}", self.endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_w3c_traceparent_and_rejects_malformed_ones() {
        let p = TraceParent::parse(GOOD).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(p.flags.is_sampled());
        assert_eq!(p.to_header(), GOOD);
        // A later version may carry more fields; version 00 may not.
        assert!(TraceParent::parse(&GOOD.replacen("00", "01", 1).replace("-01", "-01-extra")).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            &format!("{GOOD}-extra"),
            &GOOD.replacen("00", "ff", 1),
            &GOOD.to_uppercase(),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn outgoing_headers_carry_the_request_id_and_the_clients_trace_without_an_exporter() {
        assert!(outgoing_headers().is_empty(), "nothing outside a request");
        let context = RequestContext::new("req-1", TraceParent::parse(GOOD));
        let headers = context.scope(async { outgoing_headers() }).await;
        let get = |name: &HeaderName| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap());
        assert_eq!(get(&X_REQUEST_ID), Some("req-1"));
        let sent = TraceParent::parse(get(&TRACEPARENT).unwrap()).unwrap();
        assert_eq!(sent.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(sent.parent_id.to_string(), "00f067aa0ba902b7", "a span of our own, not the client's");

        let fresh = RequestContext::new("req-2", None);
        let trace = fresh.trace_id();
        let headers = fresh.scope(async { outgoing_headers() }).await;
        let sent = headers.iter().find(|(n, _)| n == TRACEPARENT).unwrap().1.to_str().unwrap().to_string();
        assert_eq!(TraceParent::parse(&sent).unwrap().trace_id.to_string(), trace);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = RawTelemetry::default().validate().unwrap();
        assert_eq!(c, TelemetryConfig::default());
        assert_eq!((c.provider_name.as_str(), c.capture_content), ("openai", false));
        let raw = RawTelemetry { otlp_endpoint: Some("http://127.0.0.1:4318/".into()), ..Default::default() };
        assert_eq!(raw.validate().unwrap().otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        let raw = RawTelemetry { otlp_endpoint: Some("grpc://x:4317".into()), ..Default::default() };
        assert_eq!(raw.validate().unwrap_err().0, "telemetry.otlp_endpoint");
        let raw = RawTelemetry { provider_name: Some(" ".into()), ..Default::default() };
        assert_eq!(raw.validate().unwrap_err().0, "telemetry.provider_name");
    }

    /// Keeps exported spans in memory.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for Collect {
        async fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn attribute(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
    }

    #[tokio::test]
    async fn spans_follow_the_genai_conventions_and_the_headers_name_the_call_span() {
        use tracing::Instrument;
        use tracing_subscriber::layer::SubscriberExt;

        let collected = Collect::default();
        let provider =
            opentelemetry_sdk::trace::SdkTracerProvider::builder().with_simple_exporter(collected.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);
        EXPORTING.store(true, Ordering::Relaxed);

        let client = TraceParent::parse(GOOD);
        let mut context = RequestContext::new("req-9", client);
        let request = request_span(&mut context, client, "POST", "/v1/chat/completions");
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736", "the client's trace");
        record_plan(&request, "math", 4, "rm");
        let (headers, call_id) = context
            .scope(
                async {
                    let call = upstream_call_span("chat", Some("gpt-4o"), 4);
                    let headers = async { outgoing_headers() }.instrument(call.clone()).await;
                    record_usage(&call, 11, 40);
                    let call_id = call.context().span().span_context().span_id();
                    let scoring = scoring_span("rm", "reward_http", 4);
                    record_error(&scoring, &crate::Error::timeout(crate::error::Party::Scorer, "scorer rm", "late"));
                    (headers, call_id)
                }
                .instrument(request.clone()),
            )
            .await;
        drop(request);
        let traceparent = headers.iter().find(|(n, _)| n == TRACEPARENT).unwrap().1.to_str().unwrap().to_string();
        let sent = TraceParent::parse(&traceparent).unwrap();
        assert_eq!((sent.trace_id, sent.parent_id), (client.unwrap().trace_id, call_id), "the call span is the parent");
        assert!(sent.flags.is_sampled());

        let spans = collected.0.lock().unwrap().clone();
        let named =
            |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name}: {spans:?}"));
        let request = named("POST /v1/chat/completions");
        assert_eq!(request.span_kind, opentelemetry::trace::SpanKind::Server);
        assert_eq!(request.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(request.parent_span_is_remote);
        for (key, value) in [("request_id", "req-9"), ("domain", "math"), ("n", "4"), ("scorer", "rm")] {
            assert_eq!(attribute(request, key).as_deref(), Some(value), "{key}");
        }
        let call = named("chat gpt-4o");
        assert_eq!(call.span_kind, opentelemetry::trace::SpanKind::Client);
        assert_eq!(call.parent_span_id, request.span_context.span_id());
        for (key, value) in [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.provider.name", "openai"),
            ("gen_ai.request.model", "gpt-4o"),
            ("gen_ai.request.choice.count", "4"),
            ("gen_ai.usage.input_tokens", "11"),
            ("gen_ai.usage.output_tokens", "40"),
        ] {
            assert_eq!(attribute(call, key).as_deref(), Some(value), "{key}");
        }
        let scoring = named("score rm");
        assert_eq!(attribute(scoring, "error.type").as_deref(), Some("timeout"));
        assert!(matches!(scoring.status, opentelemetry::trace::Status::Error { .. }));
        // One choice is the default and is left out.
        let single = upstream_call_span("text_completion", None, 1);
        drop(single);
        let spans = collected.0.lock().unwrap().clone();
        let single = spans.iter().find(|s| s.name == "text_completion").unwrap();
        assert_eq!(attribute(single, "gen_ai.request.choice.count"), None);
    }

    #[test]
    fn errors_that_may_quote_the_request_are_logged_without_their_message() {
        use crate::Error;
        let secret = "zebra";
        let invalid = Error::invalid("bestofn.n", format!("'bestofn.n' must be a positive integer, got \"{secret}\""));
        let rejected = Error::rejected(
            "the upstream",
            422,
            crate::error::Rejection {
                message: format!("input: {secret}"),
                param: Some("messages".into()),
                ..Default::default()
            },
        );
        let failed = Error::bad_gateway(crate::error::Party::Scorer, "scorer rm", format!("HTTP 500: echo {secret}"));
        for e in [&invalid, &rejected, &failed] {
            assert!(e.to_string().contains(secret));
            assert!(!e.loggable().contains(secret), "{}", e.loggable());
        }
        assert!(rejected.loggable().contains("422") && failed.loggable().contains("HTTP 500"));
        let unreachable = Error::bad_gateway(crate::error::Party::Upstream, "the upstream", "cannot reach it");
        assert_eq!(unreachable.loggable(), unreachable.to_string());
    }
}
