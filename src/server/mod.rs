//! The HTTP layer: routing, body limits, the error envelope, response headers, request logs and
//! graceful shutdown. Everything else is delegated to the engine.

mod h1;
mod log_buffer;
mod log_clock;
mod observer;
mod state;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use log_buffer::{LogWriter, log_writer};
pub use log_clock::LogClock;
use observer::{CallSpans, RequestObserver};
pub use state::AppState;

use crate::backend::CALL_SPANS;
use crate::bon::{Api, Outcome, Plan};
use crate::config::Threading;
use crate::error::Error;
use crate::openai::stream::{self, StreamMeta};
use crate::openai::{ProxyRequest, SteeringHeaders, build_response, parse_chat_request, parse_completion_request};
use crate::record::sample_record;
use crate::stage_timing::{self, Stage};

/// Response body type of every route.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves `state` on `listener` until `shutdown` resolves, then drains in-flight connections.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    serve_share(listener, state, shutdown, None).await;
}

/// New connections passed from the serving thread that accepted them to the one that serves
/// them, in turn. Every per-core thread accepts from the one listening socket, and whichever is
/// awake takes a burst of new connections whole: in the load harness one thread ended up with
/// 86% of the work and the other core idled. Passing each connection on (a cross-thread wake
/// per connection, not per request) spreads them evenly by count, as nginx's `reuseport` does.
struct Handoff {
    inboxes: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>>,
    next: AtomicUsize,
}

/// One serving thread's part in the [`Handoff`]: its index and its inbox.
struct Share {
    index: usize,
    handoff: Arc<Handoff>,
    inbox: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
}

impl Share {
    /// Where a connection just accepted goes: None to serve it here, else the stream to pass on
    /// (passed already; it comes back when the thread it was meant for has ended).
    fn pass_on(&self, stream: tokio::net::TcpStream, peer: SocketAddr) -> Option<tokio::net::TcpStream> {
        let target = self.handoff.next.fetch_add(1, Ordering::Relaxed) % self.handoff.inboxes.len();
        if target == self.index {
            return Some(stream);
        }
        let std_stream = stream.into_std().ok()?;
        match self.handoff.inboxes[target].send((std_stream, peer)) {
            Ok(()) => None,
            Err(returned) => tokio::net::TcpStream::from_std(returned.0.0).ok(),
        }
    }
}

/// A connection just accepted, to serve here (Some) or passed on to another thread (None).
fn keep_or_pass_on(
    share: Option<&Share>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<tokio::net::TcpStream> {
    match share {
        Some(share) => share.pass_on(stream, peer),
        None => Some(stream),
    }
}

/// [`serve`], taking part in a [`Handoff`] when `share` is given: connections it accepts are
/// dealt to the serving threads in turn, and those dealt to it arrive in its inbox.
async fn serve_share(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    mut share: Option<Share>,
) {
    // Every connection holds a receiver: it closes when idle once this turns true, and the
    // drain below ends when the last receiver is gone.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let timer_floor = tokio::spawn(keep_a_timer_armed());
    tokio::pin!(shutdown);
    loop {
        let passed_in = async {
            match share.as_mut() {
                Some(share) => share.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match keep_or_pass_on(share.as_ref(), stream, peer) {
                    Some(stream) => (stream, peer),
                    None => continue,
                },
                Err(e) => {
                    // Running out of file descriptors must not end the server.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some((stream, peer)) = passed_in => match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => (stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "a connection passed from another serving thread was lost");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streams are written in many small frames; Nagle's algorithm against the client's
        // delayed ACK would hold each back by tens of milliseconds.
        let _ = stream.set_nodelay(true);
        #[cfg(feature = "stage-timing")]
        let stream = crate::stage_timing::timed(stream);
        tokio::spawn(serve_connection(stream, state.clone(), peer, stopping.clone()));
    }
    tracing::info!("shutting down: draining in-flight requests");
    stopping_tx.send_replace(true);
    drop(stopping);
    if tokio::time::timeout(state.drain_timeout, stopping_tx.closed()).await.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
    timer_floor.abort();
}

/// Serves one client connection: HTTP/1.1 with bestofn's own connection ([`h1`]), HTTP/2 (prior
/// knowledge) with hyper's.
async fn serve_connection<S>(
    stream: S,
    state: Arc<AppState>,
    peer: SocketAddr,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stream = match h1::serve_connection(stream, state.clone(), peer, stopping.clone()).await {
        h1::Ended::Closed => return,
        h1::Ended::Http2(stream) => stream,
    };
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req.map(RequestBody::Incoming), peer).await) }
    });
    let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, %peer, "HTTP/2 connection ended with an error");
    }
}

/// How far ahead the runtime's next timer wake-up is kept at most (see [`keep_a_timer_armed`]).
const TIMER_FLOOR: Duration = Duration::from_millis(500);

/// Keeps a timer at most [`TIMER_FLOOR`] ahead on this runtime, for as long as it serves.
///
/// Tokio wakes its driver through an eventfd (a `write`, then one more `epoll_wait`) whenever a
/// timer is armed that expires before the driver's next planned wake-up, and with no timer
/// pending any timer is "earlier". Every request arms some (hyper's header-read timeout for the
/// connection's next request, the body read and upstream timeouts), all seconds away: with this
/// timer pending they are later than the planned wake-up, and arming them costs no system call.
/// Measured with strace on an N = 1 pass-through: one `write` and one `epoll_wait` fewer per
/// request. Costs two wake-ups a second per runtime.
async fn keep_a_timer_armed() {
    loop {
        tokio::time::sleep(TIMER_FLOOR).await;
    }
}

/// Serves `state` on `listener` with `threads` serving threads, shared as `threading` says, until
/// `shutdown` resolves (it is awaited on the calling thread), then drains every connection;
/// returns when every serving thread has finished.
///
/// [`Threading::PerCore`]: each thread runs its own single-threaded runtime and accepts from the
/// same listening socket, dealing new connections to the threads in turn (see `Handoff`), so a
/// connection and its requests stay on one thread, as nginx's
/// workers do. Tokio's work-stealing runtime ([`Threading::WorkStealing`]) moves tasks between
/// threads and wakes a sleeping core for most hand-offs: on the 2-core VM of BENCHMARKS.md a
/// bare hyper proxy served 27,500 req/s that way and 43,900 per core, with a lower latency at
/// light load; work stealing keeps requests moving when one thread is descheduled.
pub fn serve_on_threads(
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    threads: usize,
    threading: Threading,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let threads = threads.max(1);
    if threading == Threading::WorkStealing {
        let named = AtomicUsize::new(0);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name_fn(move || format!("bestofn-steal-{}", named.fetch_add(1, Ordering::Relaxed)))
            .enable_all()
            .build()?;
        return runtime.block_on(async move {
            serve(TcpListener::from_std(listener)?, state, shutdown).await;
            Ok(())
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (exited_tx, mut exited_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut workers = Vec::new();
    let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..threads).map(|_| tokio::sync::mpsc::unbounded_channel()).unzip();
    let handoff = Arc::new(Handoff { inboxes, next: AtomicUsize::new(0) });
    for (index, inbox) in receivers.into_iter().enumerate() {
        let share = Share { index, handoff: handoff.clone(), inbox };
        let listener = listener.try_clone()?;
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let exited = exited_tx.clone();
        let worker = std::thread::Builder::new().name(format!("bestofn-serve-{index}")).spawn(
            move || -> std::io::Result<()> {
                log_buffer::buffer_thread_log();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .on_thread_park(log_buffer::flush_thread_log)
                    .enable_all()
                    .build()?;
                let served = runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let stopped = async move {
                        let _ = stop.wait_for(|stopping| *stopping).await;
                    };
                    serve_share(listener, state, stopped, Some(share)).await;
                    Ok(())
                });
                log_buffer::flush_thread_log();
                let _ = exited.send(());
                served
            },
        )?;
        workers.push(worker);
    }
    drop(handoff);
    drop(exited_tx);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        // A serving thread that ends on its own (it could not register the socket) ends the
        // server rather than leaving it half up.
        tokio::select! {
            () = shutdown => {},
            _ = exited_rx.recv() => {},
        }
    });
    let _ = stop_tx.send(true);
    let mut outcome = Ok(());
    for worker in workers {
        let ended = worker.join().unwrap_or_else(|_| Err(std::io::Error::other("a serving thread panicked")));
        if outcome.is_ok() {
            outcome = ended;
        }
    }
    outcome
}

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

/// A request's body as the handler gets it.
enum RequestBody {
    /// Still arriving, on an HTTP/2 connection that hyper serves.
    Incoming(Incoming),
    /// Read whole by the HTTP/1.1 connection, or why it was not.
    Read(Result<Bytes, Error>),
}

async fn handle(state: Arc<AppState>, req: Request<RequestBody>, peer: SocketAddr) -> Response<Body> {
    stage_timing::mark(Stage::Handler);
    let id = request_id(req.headers());
    let path = req.uri().path();
    let is_ops = matches!(path, "/healthz" | "/health" | "/metrics");
    let routed = Route::of(req.method(), path);
    let authorization = header_str(req.headers(), &AUTHORIZATION);
    let result = if (!is_ops || state.auth_ops_endpoints) && !state.authorized(authorization) {
        Err(Error::Unauthorized("missing or invalid API key: send 'Authorization: Bearer <key>'".into()))
    } else {
        match routed {
            Ok(route) => serve_route(&state, req, &id, route).await,
            Err(e) => Err(e),
        }
    };
    let mut response = result.unwrap_or_else(|e| {
        let status = e.status();
        if status.is_server_error() {
            tracing::warn!(request_id = %id, %peer, status = status.as_u16(), error = %e, "request failed");
        } else {
            tracing::info!(request_id = %id, %peer, status = status.as_u16(), error = %e, "request rejected");
        }
        error_response(&e)
    });
    // The id's own bytes become the header value, without a copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(id)) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }
    response
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
    /// The route of `method` on `path`, or the 404 or 405 to answer.
    fn of(method: &Method, path: &str) -> Result<Route, Error> {
        let route = match path {
            "/v1/chat/completions" | "/chat/completions" => Route::Completions(Api::Chat),
            "/v1/completions" | "/completions" => Route::Completions(Api::Completions),
            "/v1/models" | "/models" => Route::Models,
            "/healthz" | "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            _ => return Err(Error::NotFound(format!("no route for {method} {path}"))),
        };
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
    req: Request<RequestBody>,
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

/// Renders any error as the OpenAI envelope; the one place errors become HTTP.
pub fn error_response(e: &Error) -> Response<Body> {
    let mut response = json_response(e.status(), &e.envelope());
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

async fn read_body(state: &AppState, body: RequestBody) -> Result<Bytes, Error> {
    let body = match body {
        RequestBody::Read(read) => return read,
        RequestBody::Incoming(body) => body,
    };
    let limit = state.max_body_bytes;
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(state.body_read_timeout, read).await {
        Err(_) => Err(Error::RequestTimeout(format!(
            "the request body did not arrive within {} ms",
            state.body_read_timeout.as_millis()
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Error::PayloadTooLarge(limit)),
        Ok(Err(e)) => Err(Error::InvalidRequest { message: format!("cannot read request body: {e}"), param: None }),
    }
}

// Header names as constants: looking a header up by `&str` parses the name on every call.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
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
    let (request_id, domain, n, scorer) = (id.to_string(), plan.domain.clone(), plan.n, plan.scorer.name.clone());
    let (received, chosen, scores) = (outcome.samples.candidates.len(), outcome.chosen(), outcome.scores.clone());
    let latency_ms = observer.started().elapsed().as_millis() as u64;
    log_buffer::defer_log_line(move || {
        tracing::info!(
            request_id = %request_id,
            domain = %domain,
            n,
            received,
            chosen,
            scores = ?scores,
            scorer = %scorer,
            latency_ms,
            overhead_us = (overhead * 1e6) as u64,
            "best-of-n"
        );
    });
    if let Some(recorder) = &state.recorder {
        recorder.record(|| {
            let response_format = request.body.fields().ok().and_then(|fields| fields.get("response_format"));
            sample_record(id, plan, &request.conversation, response_format, outcome)
        });
    }
}

/// Chat completions and legacy completions: validation, planning, then one of pass-through,
/// a JSON best-of-N answer, or a re-streamed best-of-N answer. A streamed answer takes the
/// observer out of `slot` into its body.
async fn completion(
    state: &Arc<AppState>,
    req: Request<RequestBody>,
    id: &str,
    api: Api,
    slot: &mut Option<RequestObserver>,
) -> Result<Response<Body>, Error> {
    let observer = slot.as_mut().ok_or_else(|| Error::Internal("the request has no observer".into()))?;
    let (head, body) = req.into_parts();
    let bytes = read_body(state, body).await?;
    stage_timing::mark(Stage::BodyRead);
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
    stage_timing::mark(Stage::Parsed);
    let plan = state.engine.plan(&request.steering, request.client_n, &request.conversation).await?;
    stage_timing::mark(Stage::Planned);
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
            let (request_id, domain) = (id.to_string(), plan.domain.clone());
            log_buffer::defer_log_line(move || {
                tracing::info!(request_id = %request_id, domain = %domain, n = 1, stream = true, "pass-through");
            });
            pass_through_stream(state, api, &plan, &request, verbatim.as_ref(), slot).await?
        } else {
            let (answer, spans) =
                with_call_spans(state.engine.forward(api, &plan, &request.body, verbatim.as_ref())).await;
            let answer = answer?;
            stage_timing::mark(Stage::Forwarded);
            observer.pass_through(true, answer.prompt_tokens, answer.completion_tokens);
            let mut response = json_bytes_response(StatusCode::OK, answer.body);
            // one-client (issue #36): the upstream's end-to-end headers go to the client, each
            // name's values replacing ours (its own Content-Type included); the backend left out
            // the hop-by-hop ones.
            response.headers_mut().extend(answer.headers);
            let overhead = observer.answered(spans);
            let (request_id, domain) = (id.to_string(), plan.domain.clone());
            log_buffer::defer_log_line(move || {
                tracing::info!(
                    request_id = %request_id,
                    domain = %domain,
                    n = 1,
                    stream = false,
                    overhead_us = (overhead * 1e6) as u64,
                    "pass-through"
                );
            });
            response
        };
        response.headers_mut().insert(X_BESTOFN_N, HeaderValue::from_static("1"));
        stage_timing::mark(Stage::Answered);
        return Ok(response);
    }

    if request.stream {
        let observer = slot.take().ok_or_else(|| Error::Internal("the request has no observer".into()))?;
        return Ok(best_of_n_stream(state.clone(), request, verbatim, plan, id.to_string(), observer));
    }

    let (result, spans) = with_call_spans(state.engine.run(
        api,
        &request.body,
        verbatim.as_ref(),
        &request.conversation,
        request.seed,
        &plan,
    ))
    .await;
    let outcome = result?;
    observe_outcome(state, id, &request, &plan, &outcome, observer, spans);
    let mut response = json_response(StatusCode::OK, &build_response(api, &plan, &outcome));
    let h = response.headers_mut();
    h.insert(X_BESTOFN_N, HeaderValue::from(outcome.samples.candidates.len() as u64));
    h.insert("x-bestofn-chosen", HeaderValue::from(outcome.chosen() as u64));
    if let Some(reward) = outcome.chosen_score().and_then(|r| HeaderValue::from_str(&r.to_string()).ok()) {
        h.insert("x-bestofn-reward", reward);
    }
    stage_timing::mark(Stage::Answered);
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
    let upstream = upstream?;
    let mut observer = slot.take().ok_or_else(|| Error::Internal("the request has no observer".into()))?;
    observer.pass_through(true, 0, 0);
    observer.answered(spans);
    // The observer lives in the stream's state: the request is in flight until the stream ends.
    let frames = futures_util::stream::unfold(Some((upstream, observer)), |source| async move {
        let (mut source, mut observer) = source?;
        match source.next().await {
            Some(Ok(bytes)) => Some((Ok::<_, Infallible>(Frame::data(bytes)), Some((source, observer)))),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream stream failed mid-way");
                observer.fail(&e);
                Some((Ok(Frame::data(stream::error_events(&e).concat().into())), None))
            }
            None => None,
        }
    });
    Ok(sse_response(StreamBody::new(frames).boxed_unsync()))
}

/// N > 1 with `stream: true`: the role delta at once, heartbeats while candidates are sampled
/// and scored, then the winner re-streamed. The work is driven by the response body itself:
/// when the client goes away hyper drops the body, which drops the in-flight upstream and scorer
/// calls with it. (A spawned task feeding a channel did the same with a task, a channel and a
/// cross-task wake-up more per request.)
fn best_of_n_stream(
    state: Arc<AppState>,
    request: ProxyRequest,
    verbatim: Option<Bytes>,
    plan: Plan,
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
        model: request.model.clone().unwrap_or_default(),
        include_usage: request.include_usage,
    };
    let opening = meta.opening(plan.k);
    let heartbeat = state.heartbeat;
    let request_id = id.clone();
    let work = Box::pin(async move {
        let run =
            state.engine.run(request.api, &request.body, verbatim.as_ref(), &request.conversation, request.seed, &plan);
        let (result, spans) = with_call_spans(run).await;
        match result {
            Ok(outcome) => {
                let report: Report = Box::new(move |observer: &mut RequestObserver| {
                    observe_outcome(&state, &id, &request, &plan, &outcome, observer, spans);
                    meta.answer(&plan, &outcome)
                });
                report
            }
            Err(e) => {
                tracing::warn!(request_id = %id, status = e.status().as_u16(), error = %e, "best-of-n stream failed");
                Box::new(move |observer: &mut RequestObserver| {
                    observer.fail(&e);
                    stream::error_events(&e)
                })
            }
        }
    });
    let body = BestOfNBody {
        pending: opening.into(),
        work: Some(work),
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

/// What a streamed best-of-N run hands its body when it is done: it reports to the observer and
/// returns the answer's events.
type Report = Box<dyn FnOnce(&mut RequestObserver) -> Vec<Bytes> + Send>;

/// The state of a streamed best-of-N answer: events ready to send, the work still running, and
/// the heartbeat clock. The observer keeps the request in flight until the body ends.
struct BestOfNBody {
    pending: std::collections::VecDeque<Bytes>,
    work: Option<std::pin::Pin<Box<dyn Future<Output = Report> + Send>>>,
    heartbeat: tokio::time::Interval,
    observer: RequestObserver,
    request_id: String,
}

impl BestOfNBody {
    /// The next event to send: a queued one, a heartbeat while the work runs, or the answer's
    /// events once it is done; None at the end.
    async fn next_event(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                return Some(bytes);
            }
            let work = self.work.as_mut()?;
            tokio::select! {
                report = work => {
                    self.work = None;
                    let events = report(&mut self.observer);
                    self.pending.extend(events);
                }
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(stream::HEARTBEAT)),
            }
        }
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
