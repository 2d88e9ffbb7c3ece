//! Calls to backends (upstream LLMs and scorers): a pool of endpoints chosen by fewest
//! in-flight requests with ejection of failing ones, per-attempt timeouts, retries with capped
//! exponential backoff and jitter that honour Retry-After, and error normalisation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::error::{Error, Party};
use crate::openai::normalize_error_body;

mod client;
pub(crate) mod config;

pub use client::{ClientSettings, HttpClient};

/// Installs ring as the process's TLS crypto provider. reqwest is built without a bundled
/// provider (see Cargo.toml) to keep clean builds lean; this must run before a client is built.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

tokio::task_local! {
    /// Spans of the backend calls made while serving the current request, for the overhead
    /// metric. Set by the server around the engine; calls outside it record nothing.
    pub static CALL_SPANS: std::cell::RefCell<Vec<(Instant, Instant)>>;
}

fn record_span(started: Instant) {
    record_interval(started, Instant::now());
}

fn record_interval(from: Instant, to: Instant) {
    let _ = CALL_SPANS.try_with(|spans| spans.borrow_mut().push((from, to)));
}

/// A credential that never shows in `Debug` output, logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// When and how often failed calls are tried again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Further attempts after a connection error, a 429 or a 5xx.
    pub max_retries: u32,
    /// First backoff; doubled each attempt.
    pub backoff_base: Duration,
    /// Largest backoff, Retry-After included.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based): "full jitter" over the capped
    /// exponential, so that many clients retrying at once spread out; at least Retry-After.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.backoff_base.saturating_mul(2u32.saturating_pow(attempt)).min(self.backoff_max);
        let jittered = ceiling.mul_f64(fastrand::f64());
        match retry_after {
            Some(wait) => wait.min(self.backoff_max).max(jittered),
            None => jittered,
        }
    }
}

/// When a failing endpoint is taken out of rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EjectionPolicy {
    /// Consecutive failures that eject an endpoint.
    pub after_failures: u32,
    /// How long it stays out before it is probed with a real request again.
    pub cooldown: Duration,
}

#[derive(Debug)]
struct Endpoint {
    /// The base URL, shared with the errors that name it (for logs only).
    url: Arc<str>,
    /// Parsed URIs of the paths called under this endpoint: a backend calls only a handful of
    /// paths, so bestofn parses each once instead of on every call (URL parsing was 6.2% of the
    /// proxy's CPU at N=16 parallel sampling).
    parsed: std::sync::RwLock<Vec<(String, http::Uri)>>,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which the endpoint is out; 0 when in.
    ejected_until_ms: AtomicU64,
    /// `max_in_flight` slots; tokio's semaphore queues waiters first come, first served.
    slots: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// The endpoint's series of the pool metrics, when kept.
    gauges: Option<EndpointGauges>,
}

/// The metrics of one endpoint: calls running, calls queued, time queued.
#[derive(Debug, Clone)]
struct EndpointGauges {
    running: prometheus::IntGauge,
    queued: prometheus::IntGauge,
    queue_seconds: prometheus::Histogram,
}

/// The families an endpoint pool reports to, labelled by endpoint URL.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    /// `bestofn_upstream_in_flight{endpoint}`.
    pub in_flight: prometheus::IntGaugeVec,
    /// `bestofn_upstream_queue_depth{endpoint}`.
    pub queue_depth: prometheus::IntGaugeVec,
    /// `bestofn_upstream_queue_seconds{endpoint}`.
    pub queue_seconds: prometheus::HistogramVec,
}

/// What a bounded pool knows of its calls, for the expected queue wait.
#[derive(Debug, Default)]
struct Load {
    /// Exponentially weighted mean time a call holds its slot, in microseconds (0: none yet).
    service_us: AtomicU64,
    /// Calls holding a slot now.
    running: AtomicU64,
    /// The sum of their starts, in microseconds after the pool's epoch: with `running`, how long
    /// the calls in flight have been running, on average, without a list of them.
    running_since_us: AtomicU64,
}

/// A call's hold on its endpoint: the slot (when the endpoint is bounded) and the running
/// gauge, both released when the call's response has been read or its stream ends; the time
/// held by calls answered in full (not streamed) feeds the pool's service-time estimate.
pub(crate) struct Slot {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    running: Option<prometheus::IntGauge>,
    load: std::sync::Arc<Load>,
    since: Instant,
    /// `since`, in microseconds after the pool's epoch.
    since_us: u64,
}

impl Slot {
    /// The call answered in full: its time feeds the pool's service-time estimate. Calls dropped
    /// half-way (a deadline, a client gone) do not, or a wave of cancellations would make the
    /// upstream look fast just when its queue is longest, and admit more than it can serve.
    fn served(&self) {
        if self._permit.is_some() {
            let held = self.since.elapsed().as_micros() as u64;
            let previous = self.load.service_us.load(Ordering::Relaxed);
            // An EWMA with weight 1/8: recent enough to follow the load, smooth enough not to jump.
            let next = if previous == 0 { held } else { previous - previous / 8 + held / 8 };
            self.load.service_us.store(next.max(1), Ordering::Relaxed);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(g) = &self.running {
            g.dec();
        }
        if self._permit.is_some() {
            self.load.running_since_us.fetch_sub(self.since_us, Ordering::Relaxed);
            self.load.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Counts a call as queued while it waits for a slot, also when the wait is abandoned.
struct Queued<'a>(Option<&'a prometheus::IntGauge>, &'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.dec();
        }
        self.1.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Interchangeable endpoints of one backend.
#[derive(Debug)]
pub struct EndpointPool {
    endpoints: Vec<Endpoint>,
    /// Counts ejections for `bestofn_endpoint_ejections_total`, when metrics are kept.
    ejections: Option<prometheus::IntCounter>,
    ejection: EjectionPolicy,
    epoch: Instant,
    rotation: AtomicUsize,
    /// Calls waiting for a slot, over all endpoints.
    waiting: AtomicUsize,
    /// `max_in_flight` of each endpoint, when bounded.
    limit: Option<usize>,
    /// What the calls holding slots are doing, and how long they took.
    load: std::sync::Arc<Load>,
    /// The time a call is assumed to take before any has been served.
    typical_call: Option<Duration>,
}

/// Holds an endpoint's in-flight count up while a call runs.
struct InFlight<'a> {
    pool: &'a EndpointPool,
    index: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.pool.endpoints[self.index].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointPool {
    /// A pool over `urls` (at least one).
    pub fn new(urls: &[String], ejection: EjectionPolicy) -> Self {
        let endpoints = urls
            .iter()
            .map(|u| Endpoint {
                url: Arc::from(u.trim_end_matches('/')),
                parsed: std::sync::RwLock::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
                consecutive_failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
                slots: None,
                gauges: None,
            })
            .collect();
        EndpointPool {
            endpoints,
            ejections: None,
            ejection,
            epoch: Instant::now(),
            rotation: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            limit: None,
            load: std::sync::Arc::default(),
            typical_call: None,
        }
    }

    /// Bounds each endpoint to `max_in_flight` concurrent calls (None: unbounded); calls beyond
    /// it wait in a first-come, first-served queue. Reports to `metrics` when given.
    pub fn limited(mut self, max_in_flight: Option<usize>, metrics: Option<&PoolMetrics>) -> Self {
        self.limit = max_in_flight;
        for e in &mut self.endpoints {
            e.slots = max_in_flight.map(|m| std::sync::Arc::new(tokio::sync::Semaphore::new(m)));
            e.gauges = metrics.map(|m| EndpointGauges {
                running: m.in_flight.with_label_values(&[&*e.url]),
                queued: m.queue_depth.with_label_values(&[&*e.url]),
                queue_seconds: m.queue_seconds.with_label_values(&[&*e.url]),
            });
        }
        self
    }

    /// Assumes a call takes `typical` until one has been served, so that a burst on a pool
    /// that has served nothing yet still sees its queue (see [`EndpointPool::expected_wait`]).
    pub fn assuming_calls_take(mut self, typical: Option<Duration>) -> Self {
        self.typical_call = typical;
        self
    }

    /// The wait a call queued now would expect: when every slot is busy, what is left of the
    /// running calls, then one call time for each round of the calls waiting ahead of it. The
    /// call time is the mean of served calls; before any, the assumed typical call time, or
    /// longer when the calls in flight have already run longer. None when the pool is unbounded,
    /// or has served nothing and assumes nothing.
    pub fn expected_wait(&self) -> Option<Duration> {
        let slots = (self.limit? as u64 * self.endpoints.len() as u64).max(1);
        let running = self.load.running.load(Ordering::Relaxed);
        let elapsed_us = match running {
            0 => 0,
            n => {
                let mean_start = self.load.running_since_us.load(Ordering::Relaxed) / n;
                self.now_us().saturating_sub(mean_start)
            }
        };
        let service_us = match self.load.service_us.load(Ordering::Relaxed) {
            0 => (self.typical_call?.as_micros() as u64).max(elapsed_us),
            measured => measured,
        };
        let left_us = if running >= slots { service_us.saturating_sub(elapsed_us) } else { 0 };
        let waiting = self.waiting.load(Ordering::Relaxed) as u64;
        Some(Duration::from_micros(left_us + waiting * service_us / slots))
    }

    /// The recent mean time a call holds its slot; None before the first bounded call ends.
    pub fn mean_service(&self) -> Option<Duration> {
        let service = self.load.service_us.load(Ordering::Relaxed);
        (service > 0).then(|| Duration::from_micros(service))
    }

    /// Waits for a slot of endpoint `index` (at once when it is unbounded).
    async fn admit(&self, index: usize) -> Slot {
        let endpoint = &self.endpoints[index];
        let gauges = endpoint.gauges.as_ref();
        let permit = match &endpoint.slots {
            None => None,
            Some(slots) => {
                let waited = Instant::now();
                if let Some(g) = gauges {
                    g.queued.inc();
                }
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let queued = Queued(gauges.map(|g| &g.queued), &self.waiting);
                // The semaphore is never closed.
                let permit = slots.clone().acquire_owned().await.ok();
                drop(queued);
                if let Some(g) = gauges {
                    g.queue_seconds.observe(waited.elapsed().as_secs_f64());
                }
                permit
            }
        };
        let running = gauges.map(|g| g.running.clone());
        if let Some(g) = &running {
            g.inc();
        }
        let since_us = self.now_us();
        if permit.is_some() {
            self.load.running.fetch_add(1, Ordering::Relaxed);
            self.load.running_since_us.fetch_add(since_us, Ordering::Relaxed);
        }
        Slot { _permit: permit, running, load: self.load.clone(), since: Instant::now(), since_us }
    }

    /// Counts every ejection in `counter`.
    pub fn counting_ejections(mut self, counter: Option<prometheus::IntCounter>) -> Self {
        self.ejections = counter;
        self
    }

    /// The URI of `path` under endpoint `index`, parsed once.
    fn url(&self, index: usize, path: &str) -> Result<http::Uri, String> {
        let endpoint = &self.endpoints[index];
        if let Ok(cache) = endpoint.parsed.read()
            && let Some((_, url)) = cache.iter().find(|(p, _)| p == path)
        {
            return Ok(url.clone());
        }
        let text = format!("{}{path}", endpoint.url);
        // The message names no URL (a client may read it); the error carries the endpoint.
        let url = text.parse::<http::Uri>().map_err(|e| format!("its configured URL is not a valid URI ({e})"))?;
        if let Ok(mut cache) = endpoint.parsed.write()
            && !cache.iter().any(|(p, _)| p == path)
        {
            cache.push((path.to_string(), url.clone()));
        }
        Ok(url)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The endpoint with the fewest in-flight calls among those not ejected; when every one is
    /// ejected, the one whose cool-down ends first, so requests still have somewhere to go.
    fn pick(&self) -> InFlight<'_> {
        let now = self.now_ms();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        let count = self.endpoints.len();
        let order = (0..count).map(|i| (start + i) % count);
        let available = order.clone().filter(|&i| self.endpoints[i].ejected_until_ms.load(Ordering::Relaxed) <= now);
        let index = available
            .min_by_key(|&i| self.endpoints[i].in_flight.load(Ordering::Relaxed))
            .or_else(|| order.min_by_key(|&i| self.endpoints[i].ejected_until_ms.load(Ordering::Relaxed)))
            .unwrap_or(0);
        self.endpoints[index].in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { pool: self, index }
    }

    fn record(&self, index: usize, healthy: bool) {
        let endpoint = &self.endpoints[index];
        if healthy {
            endpoint.consecutive_failures.store(0, Ordering::Relaxed);
            endpoint.ejected_until_ms.store(0, Ordering::Relaxed);
            return;
        }
        let failures = endpoint.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.ejection.after_failures {
            let until = self.now_ms() + self.ejection.cooldown.as_millis() as u64;
            if endpoint.ejected_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
                if let Some(counter) = &self.ejections {
                    counter.inc();
                }
                tracing::warn!(endpoint = %endpoint.url, failures, cooldown_ms = self.ejection.cooldown.as_millis() as u64, "endpoint ejected");
            }
        }
    }

    /// URLs of endpoints currently in rotation.
    pub fn healthy(&self) -> Vec<&str> {
        let now = self.now_ms();
        self.endpoints.iter().filter(|e| e.ejected_until_ms.load(Ordering::Relaxed) <= now).map(|e| &*e.url).collect()
    }
}

/// Transport settings of one backend: credentials, time limit, retries, ejection.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TransportConfig {
    /// Environment variable holding the API key (sent as a Bearer token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Limit for one call.
    pub timeout_ms: u64,
    /// Retries on connection errors, 429 and 5xx.
    pub max_retries: u32,
    /// First retry backoff (doubled per attempt, with jitter).
    pub retry_backoff_ms: u64,
    /// Largest retry backoff, Retry-After included.
    pub retry_backoff_max_ms: u64,
    /// Consecutive failures that take an endpoint out of rotation.
    pub eject_after_failures: u32,
    /// How long an ejected endpoint stays out before it is probed again.
    pub eject_cooldown_ms: u64,
    /// Concurrent calls per endpoint; more wait in a first-come, first-served queue. None:
    /// unbounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// The time a call is assumed to take before one has been served, for load-aware N
    /// (`upstream.typical_call_ms`; the upstream's only). None: no estimate until one is served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typical_call_ms: Option<u64>,
}

/// HTTP/2 to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http2Mode {
    /// HTTP/2 where TLS negotiates it (ALPN), HTTP/1.1 otherwise.
    Auto,
    /// HTTP/2 always, also in plain text (prior knowledge, e.g. an h2c gRPC-style server).
    Always,
    /// HTTP/1.1 only.
    Never,
}

/// How a backend is called: its kind for errors, endpoints, credentials, time limit, retries.
#[derive(Debug)]
pub struct Backend {
    /// The connection-pooling, keep-alive clients shared by all calls.
    pub client: HttpClient,
    /// What the backend is, for logs and metric labels: `upstream`, `scorer rm`.
    pub name: String,
    /// How errors name the backend to the client: `the upstream`, `scorer rm`, `the fuser`,
    /// `the classifier`. Never an endpoint: errors carry that apart, for logs.
    pub party_name: String,
    /// Which kind of backend it is, for the error metric.
    pub party: Party,
    /// The endpoints: base URLs for the upstream, full URLs for a scorer.
    pub pool: EndpointPool,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<Secret>,
    /// Limit for one attempt, connection to last byte.
    pub timeout: Duration,
    /// Retries and backoff.
    pub retry: RetryPolicy,
}

/// A successful call: the JSON body, how long the successful attempt took and who answered.
#[derive(Debug)]
pub struct JsonReply {
    /// The parsed response body.
    pub body: Value,
    /// Wall time of the attempt that succeeded.
    pub latency: Duration,
    /// The endpoint that answered, for the errors of a caller that finds the answer unusable
    /// ([`Error::at`]).
    pub endpoint: Arc<str>,
}

use crate::bon::ByteStream;

/// An attempt that got a 2xx head: the answer, when the attempt started (after any queueing)
/// and when its request went to the client, the deadline for its body, the endpoint that
/// answered and its slot.
struct Sent {
    reply: client::Reply,
    started: Instant,
    sent: Instant,
    deadline: tokio::time::Instant,
    endpoint: Arc<str>,
    slot: Slot,
}

/// A successful call: the body unparsed, the answer's end-to-end headers and how long the
/// successful attempt took.
#[derive(Debug)]
pub struct BytesReply {
    /// The response body.
    pub body: Bytes,
    /// The answer's headers less the hop-by-hop ones (see [`end_to_end_headers`]), for a
    /// pass-through to copy.
    pub headers: http::HeaderMap,
    /// Wall time of the attempt that succeeded.
    pub latency: Duration,
    /// The endpoint that answered, for the errors of a caller that finds the answer unusable
    /// ([`Error::at`]).
    pub endpoint: Arc<str>,
}

/// A successful call's answer, its body unparsed.
struct RawReply {
    body: Bytes,
    headers: http::HeaderMap,
    status: http::StatusCode,
    latency: Duration,
    endpoint: Arc<str>,
}

/// Headers that describe one connection rather than the answer (RFC 9110 section 7.6.1), and
/// Content-Length, which whoever re-sends the body computes for itself.
const HOP_BY_HOP: [http::HeaderName; 6] = [
    http::header::CONNECTION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    http::header::CONTENT_LENGTH,
];

/// `headers` less the hop-by-hop ones: those of [`HOP_BY_HOP`], `Keep-Alive`, every
/// `Proxy-*` one and any that `Connection` names.
pub fn end_to_end_headers(mut headers: http::HeaderMap) -> http::HeaderMap {
    let named: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| http::HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    let proxy: Vec<http::HeaderName> =
        headers.keys().filter(|n| n.as_str() == "keep-alive" || n.as_str().starts_with("proxy-")).cloned().collect();
    for name in &proxy {
        headers.remove(name);
    }
    headers
}

#[derive(Clone, Copy)]
enum Method<'a> {
    Get,
    Post(&'a Bytes),
}

fn to_json_bytes(body: &(impl serde::Serialize + ?Sized)) -> Result<Bytes, Error> {
    serde_json::to_vec(body).map(Bytes::from).map_err(|e| Error::Internal(format!("cannot serialise a request: {e}")))
}

/// Whether the answer's Content-Length says it is larger than `limit` bytes.
fn declared_over(headers: &http::HeaderMap, limit: u64) -> bool {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|length| length > limit)
}

impl Backend {
    /// POSTs `body` as JSON to `path` under an endpoint, retrying what is retryable, and parses
    /// the JSON answer.
    pub async fn post_json(&self, path: &str, body: &(impl serde::Serialize + ?Sized)) -> Result<JsonReply, Error> {
        self.post_json_bytes(path, to_json_bytes(body)?).await
    }

    /// As [`Backend::post_json`], for a body already serialised to JSON.
    pub async fn post_json_bytes(&self, path: &str, body: Bytes) -> Result<JsonReply, Error> {
        self.call_json(path, Method::Post(&body)).await
    }

    /// GETs JSON from `path` under an endpoint, retrying what is retryable.
    pub async fn get_json(&self, path: &str) -> Result<JsonReply, Error> {
        self.call_json(path, Method::Get).await
    }

    /// POSTs `body` (JSON text) and returns the answer's bytes as they arrive. The timeout bounds the wait
    /// for the response headers only: a stream may legitimately run longer than one call. A
    /// stream that goes past `upstream.max_response_bytes` ends with an error.
    pub async fn post_stream(&self, path: &str, body: Bytes) -> Result<(http::HeaderMap, ByteStream), Error> {
        use futures_util::StreamExt;
        let sent = self.send(path, Method::Post(&body)).await?;
        let headers = end_to_end_headers(sent.reply.headers().clone());
        // A stream's span ends with its head: the rest is paced by the client reading it.
        record_interval(sent.sent, Instant::now());
        let endpoint = sent.endpoint;
        let limit = self.client.max_response_bytes();
        let too_large = self.too_large(&endpoint, limit);
        if declared_over(sent.reply.headers(), limit) {
            return Err(too_large);
        }
        let party = self.party;
        let name = self.party_name.clone();
        let slot = sent.slot;
        let mut read: u64 = 0;
        // The slot is held until the stream ends or is dropped.
        let stream = http_body_util::BodyDataStream::new(sent.reply.into_body());
        let stream = stream.map(move |chunk| {
            let _held = &slot;
            let chunk = chunk.map_err(|e| {
                Error::bad_gateway(party, name.clone(), "stream broke off").caused_by(e.without_url()).at(&endpoint)
            })?;
            read += chunk.len() as u64;
            if read > limit {
                return Err(too_large.clone());
            }
            Ok(chunk)
        });
        // Nothing after the error that ends a stream over the limit is read.
        let mut failed = false;
        let body: ByteStream = Box::pin(stream.take_while(move |item| {
            let go = !failed;
            failed |= item.is_err();
            std::future::ready(go)
        }));
        Ok((headers, body))
    }

    /// A failure of this backend at `endpoint`: the client reads the party, logs the endpoint.
    pub(crate) fn failure(&self, endpoint: &Arc<str>, message: impl Into<String>) -> Error {
        Error::bad_gateway(self.party, self.party_name.as_str(), message).at(endpoint)
    }

    /// The error of an answer larger than the process allows.
    fn too_large(&self, endpoint: &Arc<str>, limit: u64) -> Error {
        self.failure(endpoint, format!("answered more than upstream.max_response_bytes ({limit} bytes)"))
    }

    async fn call_json(&self, path: &str, method: Method<'_>) -> Result<JsonReply, Error> {
        let raw = self.call_bytes(path, method).await?;
        let body = serde_json::from_slice(&raw.body).map_err(|e| {
            self.failure(&raw.endpoint, format!("answered HTTP {} with a body that is not JSON", raw.status))
                .caused_by(e)
        })?;
        Ok(JsonReply { body, latency: raw.latency, endpoint: raw.endpoint })
    }

    /// POSTs `body` as JSON to `path` under an endpoint, retrying what is retryable, and returns
    /// the answer's bytes unparsed, with its end-to-end headers.
    pub async fn post_bytes(&self, path: &str, body: Bytes) -> Result<BytesReply, Error> {
        let raw = self.call_bytes(path, Method::Post(&body)).await?;
        Ok(BytesReply { body: raw.body, headers: raw.headers, latency: raw.latency, endpoint: raw.endpoint })
    }

    /// One call read to its end, its body under `upstream.max_response_bytes`.
    async fn call_bytes(&self, path: &str, method: Method<'_>) -> Result<RawReply, Error> {
        use http_body_util::BodyExt;
        let sent = self.send(path, method).await?;
        let (head, body) = sent.reply.into_parts();
        let limit = self.client.max_response_bytes();
        let endpoint = &sent.endpoint;
        if declared_over(&head.headers, limit) {
            record_interval(sent.sent, Instant::now());
            return Err(self.too_large(endpoint, limit));
        }
        let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
        // The attempt's time limit covers the body too.
        let read = tokio::time::timeout_at(sent.deadline, limited.collect()).await;
        // The span ends when the body has been read (or given up on): until then the call was
        // the upstream's time, not the proxy's.
        record_interval(sent.sent, Instant::now());
        let body = match read {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(self.too_large(endpoint, limit)),
            Ok(Err(e)) => {
                return Err(self
                    .failure(endpoint, "response body broke off")
                    .caused_by_boxed(client::boxed_without_url(e)));
            }
            Err(_) => return Err(self.timed_out(endpoint)),
        };
        sent.slot.served();
        Ok(RawReply {
            body,
            headers: end_to_end_headers(head.headers),
            status: head.status,
            latency: sent.started.elapsed(),
            endpoint: sent.endpoint,
        })
    }

    /// Sends until a 2xx arrives or the retries run out; each attempt has `timeout` for its
    /// head, and the returned deadline bounds reading the body. Time spent queued for a slot is
    /// recorded as a span of its own (waiting on the upstream, not proxy overhead).
    async fn send(&self, path: &str, method: Method<'_>) -> Result<Sent, Error> {
        let mut attempt = 0;
        loop {
            let endpoint = self.pool.pick();
            let base = &self.pool.endpoints[endpoint.index].url;
            let queued = Instant::now();
            let slot = self.pool.admit(endpoint.index).await;
            let started = Instant::now();
            if slot._permit.is_some() {
                record_interval(queued, started);
            }
            let uri = self.pool.url(endpoint.index, path).map_err(|message| self.failure(base, message))?;
            let request = self.request(uri, method).map_err(|message| Error::Internal(message.to_string()))?;
            let deadline = tokio::time::Instant::from_std(started) + self.timeout;
            let sent = Instant::now();
            let outcome = match tokio::time::timeout_at(deadline, self.attempt(request, base)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(self.timed_out(base)),
            };
            // A 4xx is the request's fault, not the endpoint's.
            let healthy = match &outcome {
                Ok(_) => true,
                Err(e) => matches!(e, Error::UpstreamRejected { .. }),
            };
            self.pool.record(endpoint.index, healthy);
            if outcome.is_err() {
                record_span(sent);
            }
            drop(endpoint);
            match outcome {
                Ok(reply) => return Ok(Sent { reply, started, sent, deadline, endpoint: base.clone(), slot }),
                Err(error) if !error.is_retryable() || attempt >= self.retry.max_retries => return Err(error),
                Err(error) => {
                    drop(slot);
                    let backoff = self.retry.backoff(attempt, error.retry_after());
                    tracing::debug!(backend = %self.name, endpoint = %base, attempt, error = %error.loggable(), ?backoff, "retrying");
                    tokio::time::sleep(backoff).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The request of one attempt: method, URI, JSON content type, credentials.
    fn request(&self, uri: http::Uri, method: Method<'_>) -> Result<http::Request<Bytes>, http::Error> {
        let mut builder = http::Request::builder().uri(uri);
        // The request id and the W3C trace context of the call's span, on every backend call.
        for (name, value) in crate::telemetry::outgoing_headers() {
            builder = builder.header(name, value);
        }
        let builder = match &self.api_key {
            Some(key) => builder.header(http::header::AUTHORIZATION, format!("Bearer {}", key.expose())),
            None => builder,
        };
        match method {
            Method::Get => builder.method(http::Method::GET).body(Bytes::new()),
            Method::Post(bytes) => builder
                .method(http::Method::POST)
                .header(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))
                .body(bytes.clone()),
        }
    }

    /// One attempt at endpoint `base`; errors name the endpoint (built only when one happens).
    async fn attempt(&self, request: http::Request<Bytes>, base: &Arc<str>) -> Result<client::Reply, Error> {
        use http_body_util::BodyExt;
        let bad_gateway = |message: String| self.failure(base, message);
        let response = match self.client.send(request).await {
            Ok(r) => r,
            // The client's error names no URL (see `HttpClient::send`): the endpoint is a field.
            Err(e) => return Err(bad_gateway("cannot reach it".into()).caused_by(e).retryable_after(None)),
        };
        // RFC 9112 section 6.3: an answer framed by both Content-Length and Transfer-Encoding
        // may be an attempt at response splitting and ought to be handled as an error. hyper's
        // client reads it by its chunks and pools the connection again once the body is read;
        // dropped unread here, the connection is closed instead of reused.
        let headers = response.headers();
        if headers.contains_key(http::header::CONTENT_LENGTH) && headers.contains_key(http::header::TRANSFER_ENCODING) {
            drop(response);
            return Err(bad_gateway(
                "answered with both Content-Length and Transfer-Encoding (ambiguous framing)".into(),
            ));
        }
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
        // An error body over the limit is not read: the status alone says what happened.
        let limit = usize::try_from(self.client.max_response_bytes()).unwrap_or(usize::MAX);
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let normalized = normalize_error_body(&body);
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(
                bad_gateway(format!("HTTP {}: {}", status.as_u16(), normalized.message)).retryable_after(retry_after)
            );
        }
        if status.is_client_error() {
            return Err(Error::rejected(self.party_name.as_str(), status.as_u16(), normalized).at(base));
        }
        Err(bad_gateway(format!("unexpected HTTP {status}: {}", normalized.message)))
    }

    fn timed_out(&self, endpoint: &Arc<str>) -> Error {
        let message = format!("no complete answer within {} ms", self.timeout.as_millis());
        Error::timeout(self.party, self.party_name.as_str(), message).at(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pool(n: usize) -> EndpointPool {
        let urls: Vec<String> = (0..n).map(|i| format!("http://e{i}")).collect();
        EndpointPool::new(&urls, EjectionPolicy { after_failures: 2, cooldown: Duration::from_secs(60) })
    }

    #[test]
    fn endpoint_urls_are_parsed_once_per_path_and_bad_ones_are_errors() {
        let p = EndpointPool::new(
            &["http://10.0.0.1:8000/v1/".to_string(), "http://[bad".to_string()],
            EjectionPolicy { after_failures: 2, cooldown: Duration::from_secs(60) },
        );
        for _ in 0..2 {
            assert_eq!(p.url(0, "/chat/completions").unwrap().to_string(), "http://10.0.0.1:8000/v1/chat/completions");
            assert_eq!(p.url(0, "/models").unwrap().to_string(), "http://10.0.0.1:8000/v1/models");
        }
        assert_eq!(p.endpoints[0].parsed.read().unwrap().len(), 2, "one cache entry per path");
        let invalid = p.url(1, "/models").unwrap_err();
        assert!(invalid.contains("not a valid URI") && !invalid.contains("http://"), "{invalid}");
    }

    #[tokio::test]
    async fn only_calls_answered_in_full_feed_the_service_time_estimate() {
        let p = pool(1).limited(Some(1), None);
        assert_eq!(p.mean_service(), None, "nothing served yet");
        let slot = p.admit(0).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        slot.served();
        drop(slot);
        let served = p.mean_service().unwrap();
        assert!(served >= Duration::from_millis(40), "{served:?}");
        for _ in 0..20 {
            // Dropped at once: a call cancelled by a deadline or a client gone.
            drop(p.admit(0).await);
        }
        assert_eq!(p.mean_service(), Some(served), "cancelled calls leave the estimate alone");
    }

    /// Polls `future` once, leaving it pending where it waits.
    async fn poll_once<F: std::future::Future + Unpin>(future: &mut F) {
        std::future::poll_fn(|cx| {
            let _ = std::pin::Pin::new(&mut *future).poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
    }

    #[tokio::test]
    async fn a_cold_pool_estimates_its_queue_from_the_typical_call_and_the_calls_in_flight() {
        let second = Duration::from_secs(1);
        assert_eq!(pool(1).limited(Some(2), None).expected_wait(), None, "no assumption, nothing served: unknown");
        let p = pool(1).limited(Some(2), None).assuming_calls_take(Some(second));
        assert_eq!(p.expected_wait(), Some(Duration::ZERO), "idle slots: no wait");
        let running = [p.admit(0).await, p.admit(0).await];
        let busy = p.expected_wait().unwrap();
        assert!(busy > second - Duration::from_millis(50) && busy <= second, "the running calls' rest: {busy:?}");
        let mut queued: Vec<_> = (0..4).map(|_| Box::pin(p.admit(0))).collect();
        for q in &mut queued {
            poll_once(q).await;
        }
        let wait = p.expected_wait().unwrap();
        assert!(
            wait > 3 * second - Duration::from_millis(50) && wait <= 3 * second,
            "their rest, then two rounds: {wait:?}"
        );
        drop((queued, running));

        // Calls in flight that have already run longer than assumed say more than the assumption.
        let p = pool(1).limited(Some(2), None).assuming_calls_take(Some(Duration::from_millis(10)));
        let _running = [p.admit(0).await, p.admit(0).await];
        tokio::time::sleep(Duration::from_millis(60)).await;
        let mut queued: Vec<_> = (0..2).map(|_| Box::pin(p.admit(0))).collect();
        for q in &mut queued {
            poll_once(q).await;
        }
        let wait = p.expected_wait().unwrap();
        assert!(wait >= Duration::from_millis(55), "one round of calls at least as long as those running: {wait:?}");
    }

    #[test]
    fn hop_by_hop_headers_are_left_out_and_end_to_end_ones_kept() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("x-upstream-trace", "abc"),
            ("content-type", "application/json"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
            ("transfer-encoding", "chunked"),
            ("content-length", "2"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "h2c"),
            ("set-cookie", "a=1"),
        ] {
            headers.append(name, http::HeaderValue::from_static(value));
        }
        headers.append("set-cookie", http::HeaderValue::from_static("b=2"));
        let kept = end_to_end_headers(headers);
        let mut names: Vec<&str> = kept.keys().map(http::HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "set-cookie", "x-upstream-trace"]);
        assert_eq!(kept.get_all("set-cookie").iter().count(), 2, "every value of a kept header");
    }

    /// A loopback server whose every answer is `body` after `delay`, with `headers`; chunked
    /// (no Content-Length) when `chunked`.
    async fn answering(
        body: &'static [u8],
        headers: &'static [(&'static str, &'static str)],
        chunked: bool,
        delay: Duration,
    ) -> String {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        let body = if chunked {
                            let frames = body.chunks(1000).map(|c| Ok(hyper::body::Frame::data(Bytes::from_static(c))));
                            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
                        } else {
                            http_body_util::Full::new(Bytes::from_static(body)).map_err(|e| match e {}).boxed()
                        };
                        let mut response = http::Response::new(body);
                        for (name, value) in headers {
                            response.headers_mut().append(*name, http::HeaderValue::from_static(value));
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// A raw HTTP/1.1 server answering every request with `answer` on kept-alive connections;
    /// returns its URL and how many connections it accepted.
    async fn raw_answering(answer: &'static str) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 65536];
                    // Each read is taken as one request (the client sends small ones).
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    #[tokio::test]
    async fn an_answer_framed_by_both_length_and_chunks_is_refused_and_its_connection_not_reused() {
        let (url, accepted) = raw_answering(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\
             transfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        )
        .await;
        let backend = backend(url, 1 << 20);
        for _ in 0..2 {
            let error = backend.post_bytes("/v1/chat/completions", Bytes::from_static(b"{}")).await.unwrap_err();
            assert!(error.to_string().contains("both Content-Length and Transfer-Encoding"), "{error}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the ambiguous answer's connection was reused");
        // An unambiguous answer's connection is reused.
        let (url, accepted) =
            raw_answering("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}").await;
        let backend = self::backend(url, 1 << 20);
        for _ in 0..2 {
            backend.post_bytes("/v1/chat/completions", Bytes::from_static(b"{}")).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    fn backend(url: String, max_response_bytes: u64) -> Backend {
        Backend {
            client: HttpClient::new(ClientSettings { upstream_http2: Http2Mode::Auto, max_response_bytes }).unwrap(),
            name: "upstream".into(),
            party_name: "the upstream".into(),
            party: Party::Upstream,
            pool: EndpointPool::new(&[url], EjectionPolicy { after_failures: 3, cooldown: Duration::from_secs(1) }),
            api_key: None,
            timeout: Duration::from_secs(5),
            retry: RetryPolicy { max_retries: 0, backoff_base: Duration::ZERO, backoff_max: Duration::ZERO },
        }
    }

    const BIG: &[u8] = &[b' '; 5000];

    #[tokio::test]
    async fn answers_over_the_byte_limit_are_bad_gateways_naming_the_limit() {
        for chunked in [false, true] {
            let url = answering(BIG, &[], chunked, Duration::ZERO).await;
            let error = backend(url.clone(), 4096).post_bytes("/v1/chat/completions", Bytes::new()).await.unwrap_err();
            assert!(matches!(error, Error::BadGateway { .. }), "{error:?}");
            assert_eq!(
                error.to_string(),
                "the upstream failed: answered more than upstream.max_response_bytes (4096 bytes)",
                "chunked: {chunked}"
            );
            assert_eq!(error.endpoint(), Some(url.as_str()), "the endpoint is a field of its own, for logs");
            let error = backend(url.clone(), 4096).post_json("/score", &serde_json::json!({})).await.unwrap_err();
            assert!(error.to_string().contains("upstream.max_response_bytes (4096 bytes)"), "{error}");
            let whole = backend(url, 5000).post_bytes("/v1/chat/completions", Bytes::new()).await.unwrap();
            assert_eq!(whole.body.len(), 5000, "an answer of exactly the limit is read");
        }
    }

    #[tokio::test]
    async fn a_stream_over_the_byte_limit_ends_with_an_error() {
        use futures_util::StreamExt;
        let url = answering(BIG, &[], true, Duration::ZERO).await;
        let (_, stream) = backend(url.clone(), 2500).post_stream("/v1/chat/completions", Bytes::new()).await.unwrap();
        let items: Vec<Result<Bytes, Error>> = stream.collect().await;
        let (last, data) = items.split_last().unwrap();
        assert!(data.iter().all(Result::is_ok));
        assert!(data.iter().map(|d| d.as_ref().map_or(0, Bytes::len)).sum::<usize>() <= 2500);
        let error = last.as_ref().unwrap_err();
        assert!(error.to_string().contains("answered more than upstream.max_response_bytes (2500 bytes)"), "{error}");
        let declared = answering(BIG, &[], false, Duration::ZERO).await;
        let refused = backend(declared, 2500).post_stream("/v1/chat/completions", Bytes::new()).await;
        assert!(refused.is_err(), "a Content-Length over the limit is refused before the first byte");
    }

    #[tokio::test]
    async fn a_reply_keeps_the_end_to_end_headers_and_its_call_span_covers_the_upstream() {
        let headers = &[
            ("x-upstream-trace", "abc"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authenticate", "Basic"),
        ];
        let url = answering(b"{}", headers, false, Duration::from_millis(80)).await;
        let backend = backend(url, 1024);
        let before = Instant::now();
        let (reply, spans) = CALL_SPANS
            .scope(Default::default(), async {
                let reply = backend.post_bytes("/v1/chat/completions", Bytes::from_static(b"{}")).await.unwrap();
                (reply, CALL_SPANS.with(|s| s.borrow().clone()))
            })
            .await;
        let after = Instant::now();
        assert_eq!(reply.headers["x-upstream-trace"], "abc");
        for hop in ["connection", "x-hop", "keep-alive", "proxy-authenticate", "content-length"] {
            assert!(!reply.headers.contains_key(hop), "{hop} is hop-by-hop: {:?}", reply.headers);
        }
        let [(from, to)] = spans[..] else { panic!("one span: {spans:?}") };
        assert!(from >= before && to <= after && to - from >= Duration::from_millis(80), "{spans:?}");
    }

    #[test]
    fn picks_the_least_loaded_endpoint() {
        let p = pool(3);
        let a = p.pick();
        let b = p.pick();
        let c = p.pick();
        let mut picked = vec![a.index, b.index, c.index];
        picked.sort();
        assert_eq!(picked, vec![0, 1, 2], "each in-flight call goes to an idle endpoint");
        drop(b);
        let idle = c.index;
        drop(c);
        let d = p.pick();
        assert!(d.index == idle || p.endpoints[d.index].in_flight.load(Ordering::Relaxed) == 1);
        assert_ne!(d.index, a.index, "the busy endpoint is not chosen");
    }

    #[test]
    fn ejects_after_consecutive_failures_and_restores_on_success() {
        let p = pool(2);
        p.record(0, false);
        assert_eq!(p.healthy().len(), 2, "one failure is not enough");
        p.record(0, false);
        assert_eq!(p.healthy(), vec!["http://e1"]);
        for _ in 0..10 {
            assert_eq!(p.pick().index, 1, "an ejected endpoint gets no traffic");
        }
        p.record(1, false);
        p.record(1, false);
        // Every endpoint ejected: still pick one rather than fail.
        let _ = p.pick();
        p.record(0, true);
        assert_eq!(p.healthy(), vec!["http://e0"]);
    }

    #[test]
    fn backoff_is_capped_jittered_and_honours_retry_after() {
        let r = RetryPolicy {
            max_retries: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        for attempt in 0..10 {
            let b = r.backoff(attempt, None);
            assert!(b <= Duration::from_secs(1));
            assert!(b <= Duration::from_millis(100) * 2u32.pow(attempt.min(5)));
        }
        assert!(r.backoff(0, Some(Duration::from_millis(700))) >= Duration::from_millis(700));
        assert_eq!(r.backoff(0, Some(Duration::from_secs(30))), Duration::from_secs(1), "capped");
        assert_eq!(format!("{:?}", Secret::new("sk-123".into())), "Secret(***)");
    }
}
