//! The HTTP layer: routing, the Host rule, body limits, the error envelope, response headers,
//! request logs. Connections, timeouts and the drain are in `connection`; everything else is
//! delegated to the engine.

pub(crate) mod config;
mod connection;
mod observer;
mod state;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tracing::Instrument;

pub use connection::serve;
use observer::{CallSpans, RequestObserver};
pub use state::AppState;

use crate::backend::CALL_SPANS;
use crate::bon::{Api, ForwardedStream, Outcome, Plan};
use crate::error::Error;
use crate::openai::stream::{self, StreamMeta};
use crate::openai::{ProxyRequest, SteeringHeaders, build_response, parse_chat_request, parse_completion_request};
use crate::record::sample_record;
use crate::score::{ResponseFormat, Tools};
use crate::telemetry::{self, RequestContext, TraceParent};

/// Response body type of every route.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok())
        && !id.is_empty()
        && id.len() <= 128
    {
        return id.to_string();
    }
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("bon-{started:x}-{:06x}", REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Serves one request inside its context: the request id and trace every backend call carries
/// (a task-local) and the request span every log line and child span falls under.
async fn handle(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let id = request_id(req.headers());
    let client_trace = TraceParent::from_headers(req.headers());
    let mut context = RequestContext::new(&id, client_trace);
    let span =
        telemetry::request_span(&mut context, client_trace, req.method().as_str(), route_label(req.uri().path()));
    let response = context.scope(handle_in_context(state, req, peer, id)).instrument(span.clone()).await;
    telemetry::record_status(&span, response.status());
    response
}

/// The route as spans name it: a known path, else `other` (arbitrary paths would make span
/// names without bound).
fn route_label(path: &str) -> &'static str {
    Route::at(path).map_or("other", Route::label)
}

async fn handle_in_context(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    id: String,
) -> Response<Body> {
    let version = req.version();
    let path = req.uri().path();
    let is_ops = Route::at(path).is_some_and(|route| matches!(route, Route::Health | Route::Metrics));
    let routed = Route::of(req.method(), path);
    let authorization = header_str(req.headers(), &AUTHORIZATION);
    let result = if let Err(e) = check_host(&req) {
        Err(e)
    } else if (!is_ops || state.auth_ops_endpoints) && !state.authorized(authorization) {
        Err(Error::Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'".into()))
    } else {
        match routed {
            Ok(route) => serve_route(&state, req, &id, route).await,
            Err(e) => Err(e),
        }
    };
    let mut response = result.unwrap_or_else(|e| {
        let status = status_of(&e);
        if status.is_server_error() {
            tracing::warn!(request_id = %id, %peer, status = status.as_u16(), error = %e.loggable(), "request failed");
        } else {
            tracing::info!(request_id = %id, %peer, status = status.as_u16(), error = %e.loggable(), "request rejected");
        }
        let mut response = error_response(&e);
        // The rest of such a request's bytes cannot be trusted or were not read: the next
        // request on the connection could start anywhere in them.
        if e.ends_connection() && version <= Version::HTTP_11 {
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    });
    // The id's own bytes become the header value, without a copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(id)) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }
    response
}

/// The Host rule of RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one `Host` field,
/// and it is a valid `uri-host[:port]`. hyper leaves this to the server; HTTP/2 carries
/// `:authority` instead, and HTTP/1.0 need not send one.
fn check_host<B>(req: &Request<B>) -> Result<(), Error> {
    if req.version() != Version::HTTP_11 {
        return Ok(());
    }
    let refuse = |why: &str| Err(Error::MalformedHead(format!("bad Host header: {why}")));
    let mut hosts = req.headers().get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return refuse("an HTTP/1.1 request carries exactly one");
    };
    // An authority without userinfo: `http::uri::Authority` accepts `user@host`, which a Host
    // field may not carry.
    let valid = !host.as_bytes().contains(&b'@')
        && http::uri::Authority::try_from(host.as_bytes()).is_ok_and(|authority| !authority.host().is_empty());
    if !valid {
        return refuse("not a host[:port]");
    }
    Ok(())
}

/// What a request asks for, from its method and path.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Completions(Api),
    Models,
    Health,
    Metrics,
}

impl Route {
    /// The route served at `path`, whatever the method.
    fn at(path: &str) -> Option<Route> {
        Some(match path {
            "/v1/chat/completions" | "/chat/completions" => Route::Completions(Api::Chat),
            "/v1/completions" | "/completions" => Route::Completions(Api::Completions),
            "/v1/models" | "/models" => Route::Models,
            "/healthz" | "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            _ => return None,
        })
    }

    /// The route's canonical path, as spans name it.
    fn label(self) -> &'static str {
        match self {
            Route::Completions(Api::Chat) => "/v1/chat/completions",
            Route::Completions(Api::Completions) => "/v1/completions",
            Route::Models => "/v1/models",
            Route::Health => "/healthz",
            Route::Metrics => "/metrics",
        }
    }

    /// The route of `method` on `path`, or the 404 or 405 to answer.
    fn of(method: &Method, path: &str) -> Result<Route, Error> {
        let route = Route::at(path).ok_or_else(|| Error::NotFound(format!("no route for {method} {path}")))?;
        let allowed = match route {
            Route::Completions(_) => Method::POST,
            Route::Models | Route::Health | Route::Metrics => Method::GET,
        };
        if *method != allowed {
            return Err(Error::MethodNotAllowed(format!("{method} is not allowed on {path}")));
        }
        Ok(route)
    }
}

async fn serve_route(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    id: &str,
    route: Route,
) -> Result<Response<Body>, Error> {
    match route {
        Route::Completions(api) => {
            // Beyond the limit, refuse at once rather than queue: memory stays bounded.
            let permit = state.in_flight.clone().try_acquire_owned().ok();
            let admitted = permit.is_some();
            let mut observer = Some(RequestObserver::start(state.metrics.clone(), permit));
            let result = if admitted {
                completion(state, req, id, api, &mut observer).await
            } else {
                Err(Error::Overloaded("too many requests in flight; retry shortly".into()))
            };
            match (observer, result) {
                // A streamed answer took the observer into its body.
                (None, result) => result,
                (Some(observer), Ok(response)) => Ok(observer.attach(response)),
                (Some(mut observer), Err(e)) => {
                    observer.fail(&e);
                    Err(e)
                }
            }
        }
        Route::Models => models(state).await,
        Route::Health => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Route::Metrics => {
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())).boxed_unsync());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            Ok(response)
        }
    }
}

/// Puts a pass-through answer's end-to-end headers on the response: each replaces the proxy's
/// header of the same name (its content type), every value kept (set-cookie). They passed
/// hyper's checks on the way in; one that would not now is left out.
fn keep_upstream_headers(response: &mut Response<Body>, upstream: Vec<(String, Bytes)>) {
    let headers = response.headers_mut();
    let mut replaced = std::collections::HashSet::new();
    for (name, value) in upstream {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_maybe_shared(value)) {
            if replaced.insert(name.clone()) {
                headers.insert(name, value);
            } else {
                headers.append(name, value);
            }
        }
    }
}

/// The HTTP status an error is answered with: the one place errors become HTTP statuses.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidRequest { .. } | Error::MalformedHead(_) => StatusCode::BAD_REQUEST,
        Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        Error::UpstreamRejected { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
        Error::BadGateway { .. } => StatusCode::BAD_GATEWAY,
        Error::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Renders any error as the OpenAI envelope; the one place errors become HTTP.
pub fn error_response(e: &Error) -> Response<Body> {
    let mut response = json_response(status_of(e), &e.envelope());
    if matches!(e, Error::Overloaded(_)) {
        response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    }
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes_response(status, Bytes::from(bytes))
}

fn json_bytes_response(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(bytes).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Reads a request body whole, under `server.max_body_bytes` and `server.body_read_timeout_ms`.
async fn read_body(state: &AppState, body: Incoming) -> Result<Bytes, Error> {
    let limit = state.max_body_bytes;
    // A declared length over the limit is refused before a byte of the body is read.
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        drain_in_background(body);
        return Err(Error::PayloadTooLarge(limit));
    }
    let read = async {
        let mut body = body;
        let mut collected = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::InvalidRequest {
                message: format!("cannot read request body: {e}"),
                param: None,
            })?;
            if let Ok(data) = frame.into_data() {
                if collected.len() + data.len() > limit {
                    drain_in_background(body);
                    return Err(Error::PayloadTooLarge(limit));
                }
                collected.extend_from_slice(&data);
            }
        }
        Ok(collected.freeze())
    };
    match tokio::time::timeout(state.body_read_timeout, read).await {
        Err(_) => Err(Error::RequestTimeout(format!(
            "the request body did not arrive within {} ms",
            state.body_read_timeout.as_millis()
        ))),
        Ok(read) => read,
    }
}

/// How long the rest of a refused body is read and dropped, at most.
const DRAIN_REFUSED_BODY: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops what remains of a refused body for a short while, so that a client still
/// sending it reads its 413 instead of a connection reset: closing a socket with unread bytes
/// makes the kernel answer with RST, which can destroy the answer in flight (nginx's lingering
/// close).
fn drain_in_background(body: Incoming) {
    tokio::spawn(async move {
        let drain = async {
            let mut body = body;
            while let Some(Ok(_)) = body.frame().await {}
        };
        let _ = tokio::time::timeout(DRAIN_REFUSED_BODY, drain).await;
    });
}

// Header names as constants: looking a header up by `&str` parses the name on every call.
const X_REQUEST_ID: HeaderName = telemetry::X_REQUEST_ID;
const X_BESTOFN_N: HeaderName = HeaderName::from_static("x-bestofn-n");
const X_BESTOFN_SCORER: HeaderName = HeaderName::from_static("x-bestofn-scorer");
const X_BESTOFN_DOMAIN: HeaderName = HeaderName::from_static("x-bestofn-domain");
const X_BESTOFN_ADAPTIVE: HeaderName = HeaderName::from_static("x-bestofn-adaptive");

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn sse_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

/// Runs `work` while collecting the spans of the backend calls it makes.
async fn with_call_spans<T>(work: impl Future<Output = T>) -> (T, Vec<(Instant, Instant)>) {
    CALL_SPANS
        .scope(std::cell::RefCell::new(Vec::new()), async move {
            let out = work.await;
            let spans = CALL_SPANS.with(|s| s.take());
            (out, spans)
        })
        .await
}

/// Logs a finished best-of-N run and hands it to the recorder; its metrics go to the observer.
fn observe_outcome(
    state: &AppState,
    id: &str,
    request: &ProxyRequest,
    plan: &Plan,
    outcome: &Outcome,
    observer: &mut RequestObserver,
    spans: CallSpans,
) {
    let overhead = observer.answered(spans);
    observer.outcome(plan, outcome);
    tracing::info!(
        request_id = %id,
        domain = %plan.domain,
        n = plan.n,
        received = outcome.samples.candidates.len(),
        chosen = outcome.chosen(),
        scores = ?outcome.scores,
        scorer = %plan.scorer.name,
        latency_ms = observer.started().elapsed().as_millis() as u64,
        overhead_us = (overhead * 1e6) as u64,
        "best-of-n"
    );
    if let Some(recorder) = &state.recorder {
        recorder.record(|| {
            let fields = request.body.fields().ok();
            let field = |name: &str| fields.and_then(|fields| fields.get(name));
            let tools = (field("tools"), field("tool_choice"));
            sample_record(id, plan, &request.conversation, field("response_format"), tools, outcome)
        });
    }
}

/// Chat completions and legacy completions: validation, planning, then one of pass-through,
/// a JSON best-of-N answer, or a re-streamed best-of-N answer. A streamed answer takes the
/// observer out of `slot` into its body.
async fn completion(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    id: &str,
    api: Api,
    slot: &mut Option<RequestObserver>,
) -> Result<Response<Body>, Error> {
    let observer = slot.as_mut().ok_or_else(|| Error::Internal("the request has no observer".into()))?;
    let (head, body) = req.into_parts();
    let bytes = read_body(state, body).await?;
    let headers = &head.headers;
    let steering_headers = SteeringHeaders {
        n: header_str(headers, &X_BESTOFN_N),
        scorer: header_str(headers, &X_BESTOFN_SCORER),
        domain: header_str(headers, &X_BESTOFN_DOMAIN),
        adaptive: header_str(headers, &X_BESTOFN_ADAPTIVE),
    };
    let request = match api {
        Api::Chat => parse_chat_request(bytes, steering_headers)?,
        Api::Completions => parse_completion_request(bytes, steering_headers)?,
    };
    let plan = state.engine.plan(&request.steering, request.client_n, &request.conversation).await?;
    telemetry::record_plan(&tracing::Span::current(), &plan.domain, plan.n, &plan.scorer.name);
    observer.set_domain(&plan.domain);
    // The client's text of the body the upstream is to get: its bytes, or, when the proxy took
    // fields out for itself, its bytes without them (so every other field keeps its spelling).
    let verbatim = if request.verbatim {
        Some(request.body.text().clone())
    } else {
        crate::upstream::client_text_without(request.body.text(), request.taken_fields())
    };

    // A request degraded to one sample under load is still a best-of-N request: it keeps its
    // deadline and its `bestofn` report (`degraded`, `n_requested`).
    if plan.n == 1 && !plan.return_candidates && !plan.degraded {
        let mut response = if request.stream {
            tracing::info!(request_id = %id, domain = %plan.domain, n = 1, stream = true, "pass-through");
            Box::pin(pass_through_stream(state, api, &plan, &request, verbatim.as_ref(), slot)).await?
        } else {
            let (answer, spans) =
                Box::pin(with_call_spans(state.engine.forward(api, &plan, &request.body, verbatim.as_ref()))).await;
            let answer = answer?;
            observer.pass_through(true, answer.prompt_tokens, answer.completion_tokens);
            let mut response = json_bytes_response(StatusCode::OK, answer.body);
            keep_upstream_headers(&mut response, answer.headers);
            let overhead = observer.answered(spans);
            tracing::info!(
                request_id = %id,
                domain = %plan.domain,
                n = 1,
                stream = false,
                overhead_us = (overhead * 1e6) as u64,
                "pass-through"
            );
            response
        };
        response.headers_mut().insert(X_BESTOFN_N, HeaderValue::from_static("1"));
        return Ok(response);
    }

    // Best-of-N checks candidates against the request's response_format and tools: a
    // json_schema's schema and each tool's parameters are compiled here, once for every
    // candidate, and one that does not compile is the client's error, answered before anything
    // is sampled (a pass-through, above, leaves them to the upstream).
    let response_format = request.body.response_format()?;
    let tools = request.body.tools()?;

    if request.stream {
        let observer = slot.take().ok_or_else(|| Error::Internal("the request has no observer".into()))?;
        let checks = (response_format, tools);
        return Ok(best_of_n_stream(state.clone(), request, verbatim, plan, checks, id.to_string(), observer));
    }

    // Boxed, as the pass-through calls above: each is a large future, and unboxed the request's
    // future is as large as the largest of them, copied whole every time it moves (callgrind:
    // 204K instructions a pass-through before, 160K after; memcpy fell from 29% to 8%).
    let run_request = request.run_request(verbatim.as_ref(), response_format.as_ref(), tools.as_ref());
    let run = state.engine.run(run_request, &plan, None);
    let (result, spans) = Box::pin(with_call_spans(run)).await;
    let outcome = result?;
    observe_outcome(state, id, &request, &plan, &outcome, observer, spans);
    let mut response = json_response(StatusCode::OK, &build_response(api, &plan, &outcome, request.logprobs));
    let h = response.headers_mut();
    h.insert(X_BESTOFN_N, HeaderValue::from(outcome.samples.candidates.len() as u64));
    h.insert("x-bestofn-chosen", HeaderValue::from(outcome.chosen() as u64));
    if let Some(reward) = outcome.chosen_score().and_then(|r| HeaderValue::from_str(&r.to_string()).ok()) {
        h.insert("x-bestofn-reward", reward);
    }
    Ok(response)
}

/// N = 1 with `stream: true`: the upstream's bytes go to the client as they arrive. An upstream
/// error before the first byte is a normal HTTP error; one after it, an SSE error event.
async fn pass_through_stream(
    state: &AppState,
    api: Api,
    plan: &Plan,
    request: &ProxyRequest,
    verbatim: Option<&Bytes>,
    slot: &mut Option<RequestObserver>,
) -> Result<Response<Body>, Error> {
    let (upstream, spans) = with_call_spans(state.engine.forward_stream(api, plan, &request.body, verbatim)).await;
    let ForwardedStream { headers, body: upstream } = upstream?;
    let mut observer = slot.take().ok_or_else(|| Error::Internal("the request has no observer".into()))?;
    observer.pass_through(true, 0, 0);
    observer.answered(spans);
    // The observer lives in the stream's state: the request is in flight until the stream ends.
    let frames = futures_util::stream::unfold(Some((upstream, observer)), |source| async move {
        let (mut source, mut observer) = source?;
        match source.next().await {
            Some(Ok(bytes)) => Some((Ok::<_, Infallible>(Frame::data(bytes)), Some((source, observer)))),
            Some(Err(e)) => {
                tracing::warn!(error = %e.loggable(), "upstream stream failed mid-way");
                observer.fail(&e);
                Some((Ok(Frame::data(stream::error_events(&e).concat().into())), None))
            }
            None => None,
        }
    });
    let mut response = sse_response(StreamBody::new(frames).boxed_unsync());
    keep_upstream_headers(&mut response, headers);
    Ok(response)
}

/// N > 1 with `stream: true`: heartbeats while candidates are sampled and scored, the role
/// delta once the first upstream answer is in (so every chunk carries the `model` it reported,
/// as the non-streamed answer does), then the winner re-streamed. The work is driven by the
/// response body itself: when the client goes away hyper drops the body, which drops the
/// in-flight upstream and scorer calls with it. (A spawned task feeding a channel did the same
/// with a task, a channel and a cross-task wake-up more per request.)
fn best_of_n_stream(
    state: Arc<AppState>,
    request: ProxyRequest,
    verbatim: Option<Bytes>,
    plan: Plan,
    (response_format, tools): (Option<ResponseFormat>, Option<Tools>),
    id: String,
    observer: RequestObserver,
) -> Response<Body> {
    let meta = StreamMeta {
        api: request.api,
        id: match request.api {
            Api::Chat => format!("chatcmpl-{id}"),
            Api::Completions => format!("cmpl-{id}"),
        },
        created: unix_now(),
        // Until the upstream reports its own (an upstream whose answers name no model).
        model: request.model.clone().unwrap_or_default(),
        include_usage: request.include_usage,
        logprobs: request.logprobs,
    };
    let choices = plan.k;
    let heartbeat = state.heartbeat;
    let request_id = id.clone();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let work = async move {
        // Told once, from inside the run, the envelope of the first upstream answer.
        let first_tx = std::sync::Mutex::new(Some(first_tx));
        let tell = |envelope: &serde_json::Map<String, Value>| {
            if let Some(tx) = first_tx.lock().ok().and_then(|mut tx| tx.take()) {
                let _ = tx.send(stream::reported_model(envelope).map(str::to_string));
            }
        };
        let run_request = request.run_request(verbatim.as_ref(), response_format.as_ref(), tools.as_ref());
        let run = state.engine.run(run_request, &plan, Some(&tell));
        let (result, spans) = with_call_spans(run).await;
        match result {
            Ok(outcome) => {
                let model = stream::reported_model(&outcome.samples.envelope).map(str::to_string);
                let report: AnswerReport = Box::new(move |observer: &mut RequestObserver, meta: &StreamMeta| {
                    observe_outcome(&state, &id, &request, &plan, &outcome, observer, spans);
                    meta.answer(&plan, &outcome)
                });
                Finished::Answer { model, report }
            }
            Err(e) => {
                tracing::warn!(
                    request_id = %id,
                    status = status_of(&e).as_u16(),
                    error = %e.loggable(),
                    "best-of-n stream failed"
                );
                Finished::Failed(Box::new(move |observer: &mut RequestObserver| {
                    observer.fail(&e);
                    stream::error_events(&e)
                }))
            }
        }
    };
    // The work runs in the response body, after the handler has returned: it takes the
    // request's context and span with it, so its backend calls carry the request's id and trace
    // and its spans stay children of the request (which lasts until the answer is sent).
    let context = RequestContext::current();
    let work = work.instrument(tracing::Span::current());
    let work = Box::pin(async move {
        match context {
            Some(context) => context.scope(work).await,
            None => work.await,
        }
    });
    let body = BestOfNBody {
        pending: std::collections::VecDeque::new(),
        work: Some(work),
        first_answer: Some(first_rx),
        meta,
        choices,
        opened: false,
        // Not `interval()` and a first tick: that tick waits for the timer wheel's next turn,
        // which added about a millisecond to every streamed best-of-N answer.
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat),
        observer,
        request_id,
    };
    let frames = futures_util::stream::unfold(body, |mut body| async move {
        let bytes = body.next_event().await?;
        Some((Ok::<_, Infallible>(Frame::data(bytes)), body))
    });
    sse_response(StreamBody::new(frames).boxed_unsync())
}

/// Reports a streamed best-of-N run's outcome to the observer and returns the answer's events,
/// rendered under the stream's meta.
type AnswerReport = Box<dyn FnOnce(&mut RequestObserver, &StreamMeta) -> Vec<Bytes> + Send>;

/// Reports a failed streamed best-of-N run to the observer and returns the error's events.
type FailureReport = Box<dyn FnOnce(&mut RequestObserver) -> Vec<Bytes> + Send>;

/// What a streamed best-of-N run hands its body when it is done.
enum Finished {
    /// The run answered; `model` is what its first upstream answer reported.
    Answer {
        /// The `model` of the run's envelope, when it names one.
        model: Option<String>,
        /// Reports to the observer and returns the answer's events.
        report: AnswerReport,
    },
    /// The run failed: reports to the observer and returns the error's events.
    Failed(FailureReport),
}

/// The state of a streamed best-of-N answer: events ready to send, the work still running, the
/// first upstream answer awaited for the opening chunks, and the heartbeat clock. The observer
/// keeps the request in flight until the body ends.
struct BestOfNBody {
    pending: std::collections::VecDeque<Bytes>,
    work: Option<std::pin::Pin<Box<dyn Future<Output = Finished> + Send>>>,
    /// The `model` of the run's first upstream answer, until it is in (or the run ends).
    first_answer: Option<tokio::sync::oneshot::Receiver<Option<String>>>,
    meta: StreamMeta,
    /// Choices the answer streams (`plan.k`), each opened with a role delta.
    choices: u32,
    /// Whether the opening chunks are out.
    opened: bool,
    heartbeat: tokio::time::Interval,
    observer: RequestObserver,
    request_id: String,
}

impl BestOfNBody {
    /// The next event to send: a queued one, a heartbeat while the work runs, the opening
    /// chunks once the first upstream answer is in, or the answer's events once the work is
    /// done; None at the end.
    async fn next_event(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            let BestOfNBody { work, first_answer, heartbeat, .. } = self;
            let work = work.as_mut()?;
            let first = async {
                match first_answer.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                finished = work => {
                    self.work = None;
                    match finished {
                        Finished::Answer { model, report } => {
                            self.open(model);
                            let events = report(&mut self.observer, &self.meta);
                            self.pending.extend(events);
                        }
                        Finished::Failed(report) => self.pending.extend(report(&mut self.observer)),
                    }
                }
                told = first => match told {
                    Some(model) => self.open(model),
                    // The run ended without telling: its outcome names the model.
                    None => self.first_answer = None,
                },
                _ = heartbeat.tick() => return Some(Bytes::from_static(stream::HEARTBEAT)),
            }
        }
    }

    /// Queues the opening chunks, once, under the `model` the upstream reported (the client's,
    /// or none, when it reported none).
    fn open(&mut self, model: Option<String>) {
        self.first_answer = None;
        if std::mem::replace(&mut self.opened, true) {
            return;
        }
        if let Some(model) = model {
            self.meta.model = model;
        }
        self.pending.extend(self.meta.opening(self.choices));
    }
}

impl Drop for BestOfNBody {
    fn drop(&mut self) {
        if self.work.is_some() {
            tracing::info!(request_id = %self.request_id, "client went away; dropping in-flight calls");
        }
    }
}

async fn models(state: &AppState) -> Result<Response<Body>, Error> {
    let body = match &state.models {
        Some(list) => {
            let data: Vec<Value> = list
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "bestofn"}))
                .collect();
            json!({"object": "list", "data": data})
        }
        None => state.upstream.models().await?,
    };
    Ok(json_response(StatusCode::OK, &body))
}
