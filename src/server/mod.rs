//! The HTTP layer: routing, body limits, the error envelope, response headers, request logs and
//! graceful shutdown. Everything else is delegated to the engine.

mod state;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use state::AppState;

use crate::error::Error;
use crate::openai::{SteeringHeaders, build_chat_response, parse_chat_request};

/// Response body type of every route.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted; beyond it, 413.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How long in-flight requests may finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `state` on `listener` until `shutdown` resolves, then drains in-flight connections.
pub async fn serve(listener: TcpListener, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Running out of file descriptors must not end the server.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(state, req, peer).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
        && !id.is_empty()
        && id.len() <= 128
    {
        return id.to_string();
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "bon-{started:x}-{:06x}",
        REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let id = request_id(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = match (method.clone(), path.as_str()) {
        (Method::POST, "/v1/chat/completions" | "/chat/completions") => chat(&state, req, &id).await,
        (Method::GET, "/v1/models" | "/models") => models(&state).await,
        (Method::GET, "/healthz" | "/health") => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (_, "/v1/chat/completions" | "/chat/completions" | "/v1/models" | "/models" | "/healthz" | "/health") => {
            Err(Error::MethodNotAllowed(format!("{method} is not allowed on {path}")))
        }
        _ => Err(Error::NotFound(format!("no route for {method} {path}"))),
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
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// Renders any error as the OpenAI envelope; the one place errors become HTTP.
pub fn error_response(e: &Error) -> Response<Body> {
    json_response(e.status(), &e.envelope())
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Error> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::PayloadTooLarge(MAX_BODY_BYTES)),
        Err(e) => Err(Error::InvalidRequest {
            message: format!("cannot read request body: {e}"),
            param: None,
        }),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn chat(state: &AppState, req: Request<Incoming>, id: &str) -> Result<Response<Body>, Error> {
    let started = Instant::now();
    let headers = req.headers().clone();
    let bytes = read_body(req).await?;
    let steering_headers = SteeringHeaders {
        n: header_str(&headers, "x-bestofn-n"),
        scorer: header_str(&headers, "x-bestofn-scorer"),
        domain: header_str(&headers, "x-bestofn-domain"),
    };
    let request = parse_chat_request(&bytes, steering_headers)?;
    let plan = state.engine.plan(&request.steering, request.client_n)?;
    if request.stream {
        return Err(Error::invalid(
            "stream",
            "streaming responses are not supported by this build",
        ));
    }

    if plan.n == 1 && !plan.return_candidates {
        let answer = state.engine.forward(&request.body).await?;
        tracing::info!(request_id = %id, domain = %plan.domain, n = 1, latency_ms = started.elapsed().as_millis() as u64, "pass-through");
        let mut response = json_response(StatusCode::OK, &answer);
        response
            .headers_mut()
            .insert("x-bestofn-n", HeaderValue::from_static("1"));
        return Ok(response);
    }

    let outcome = state
        .engine
        .run(&request.body, &request.conversation, request.seed, &plan)
        .await?;
    let body = build_chat_response(&plan, &outcome);
    tracing::info!(
        request_id = %id,
        domain = %plan.domain,
        n = plan.n,
        received = outcome.samples.candidates.len(),
        chosen = outcome.chosen(),
        scores = ?outcome.scores,
        scorer = %plan.scorer,
        latency_ms = started.elapsed().as_millis() as u64,
        "best-of-n"
    );
    let mut response = json_response(StatusCode::OK, &body);
    let h = response.headers_mut();
    h.insert(
        "x-bestofn-n",
        HeaderValue::from(outcome.samples.candidates.len() as u64),
    );
    h.insert("x-bestofn-chosen", HeaderValue::from(outcome.chosen() as u64));
    if let Some(reward) = outcome
        .chosen_score()
        .and_then(|r| HeaderValue::from_str(&r.to_string()).ok())
    {
        h.insert("x-bestofn-reward", reward);
    }
    Ok(response)
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
