//! The HTTP client of backend calls.
//!
//! Plain-HTTP endpoints that no proxy variable covers (vLLM, SGLang or llama.cpp in the same
//! cluster or on the same host: the case where the client's own CPU and hand-offs are most of
//! what bestofn adds to an upstream call) go through bestofn's own HTTP/1.1 client
//! ([`super::wire`]), or through hyper's pooled client when `upstream.http2 = "always"` asks
//! for HTTP/2 without TLS. Everything else (HTTPS with rustls for hosted APIs, endpoints behind
//! `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY`) goes through reqwest, which carries the TLS,
//! certificate and proxy handling. Profiling the parallel sampling mode showed reqwest's own
//! layers around hyper (URL/URI conversion, the redirect layer, per-request boxing) at about 8%
//! of the proxy's CPU; the direct path has none of them.
//!
//! Connections of the HTTP/1.1 client carry a [`WireClock`]: when bestofn wrote the first byte
//! of the current request and when the last byte of the answer arrived. The span between them
//! is what the upstream server (and the network) spent; the proxy's overhead metric subtracts
//! that, not the whole call, so the client's own work (pool checkout, serialisation, task
//! wake-ups) shows as overhead rather than hiding inside the call.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::Http2Mode;
use super::wire::{POOL_IDLE, POOL_IDLE_PER_HOST, WireBody, WireClock, WirePool};

/// An answer's body, from whichever client carried the call.
pub enum ReplyBody {
    /// bestofn's HTTP/1.1 client.
    Wire(WireBody),
    /// hyper's client (HTTP/2 without TLS).
    H2c(Incoming),
    /// reqwest (TLS, proxies).
    General(reqwest::Body),
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = SendError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, SendError>>> {
        match self.get_mut() {
            ReplyBody::Wire(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ReplyBody::H2c(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ReplyBody::General(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplyBody::Wire(body) => body.is_end_stream(),
            ReplyBody::H2c(body) => body.is_end_stream(),
            ReplyBody::General(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReplyBody::Wire(body) => body.size_hint(),
            ReplyBody::H2c(body) => body.size_hint(),
            ReplyBody::General(body) => body.size_hint(),
        }
    }
}

/// An answer's head and body, from any client.
pub type Reply = http::Response<ReplyBody>;

/// Why a call got no answer.
pub type SendError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's pooled client, speaking HTTP/2 without TLS.
type H2cClient = HyperClient<HttpConnector, Full<Bytes>>;

/// A process's clients for backend calls; cheap to clone (every client is a handle to shared
/// connection pools).
///
/// Each serving thread has its own pools (see [`set_serving_thread`]). A connection is
/// registered with the reactor of the runtime that opened it, and its I/O is driven there; a
/// call from another thread would hand every request and answer across threads, waking a
/// sleeping core each time, which on the 2-core VM of BENCHMARKS.md cost more than the call's
/// own CPU.
#[derive(Clone)]
pub struct HttpClient {
    wire: Arc<[Arc<WirePool>]>,
    /// hyper's pooled clients, when plain-HTTP endpoints are spoken to in HTTP/2.
    h2c: Option<Arc<[H2cClient]>>,
    general: Arc<[reqwest::Client]>,
    proxies: Arc<Matcher>,
}

/// How many threads serve requests: `TOKIO_WORKER_THREADS` when set to a positive number (the
/// variable Tokio's own runtimes read), else the CPUs this process may use.
pub fn serving_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    })
}

thread_local! {
    static SERVING_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as serving thread `index` (0-based, below [`serving_threads`]): its
/// backend calls use that thread's connection pools. Threads never marked share pool 0.
pub fn set_serving_thread(index: usize) {
    SERVING_THREAD.with(|t| t.set(index));
}

/// The current thread's entry of a per-thread list.
fn this_thread<T>(per_thread: &[T]) -> &T {
    &per_thread[SERVING_THREAD.with(std::cell::Cell::get) % per_thread.len()]
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Pooled keep-alive clients speaking HTTP/2 as `mode` says; proxies from the environment.
    pub fn new(mode: Http2Mode) -> Result<HttpClient, reqwest::Error> {
        Self::with_threads(mode, serving_threads())
    }

    /// As [`HttpClient::new`], with pools for `threads` serving threads.
    fn with_threads(mode: Http2Mode, threads: usize) -> Result<HttpClient, reqwest::Error> {
        super::install_crypto_provider();
        let threads = threads.max(1);
        let general = (0..threads).map(|_| Self::general(mode)).collect::<Result<Vec<_>, _>>()?;
        let wire = (0..threads).map(|_| Arc::new(WirePool::default())).collect::<Vec<_>>();
        // Plain-text HTTP/2 needs prior knowledge; without TLS there is no ALPN to agree on it,
        // so `auto` means HTTP/1.1 here, as it does in reqwest.
        let h2c = (mode == Http2Mode::Always).then(|| (0..threads).map(|_| Self::h2c()).collect::<Vec<_>>().into());
        Ok(HttpClient { wire: wire.into(), h2c, general: general.into(), proxies: Arc::new(Matcher::from_env()) })
    }

    /// The reqwest client of HTTPS and proxied endpoints.
    fn general(mode: Http2Mode) -> Result<reqwest::Client, reqwest::Error> {
        let builder = match mode {
            Http2Mode::Auto => reqwest::Client::builder(),
            Http2Mode::Always => reqwest::Client::builder().http2_prior_knowledge(),
            Http2Mode::Never => reqwest::Client::builder().http1_only(),
        };
        builder
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .tcp_nodelay(true)
            // Backends are called at configured URLs; a redirect is a misconfiguration to
            // surface, not to follow (a POST must not silently become a GET elsewhere).
            .redirect(reqwest::redirect::Policy::none())
            .build()
    }

    /// hyper's pooled HTTP/2 client of plain-HTTP endpoints.
    fn h2c() -> H2cClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let mut client = HyperClient::builder(TokioExecutor::new());
        client.pool_idle_timeout(POOL_IDLE).pool_timer(TokioTimer::new()).timer(TokioTimer::new()).http2_only(true);
        client.build(connector)
    }

    /// Whether calls to `uri` take the direct path: plain HTTP that no proxy variable covers.
    pub fn is_direct(&self, uri: &http::Uri) -> bool {
        uri.scheme() == Some(&http::uri::Scheme::HTTP) && self.proxies.intercept(uri).is_none()
    }

    /// Sends `request` by the direct path when `direct`, else by reqwest.
    pub async fn send(&self, request: http::Request<Bytes>, direct: bool) -> Result<Reply, SendError> {
        if !direct {
            let request = reqwest::Request::try_from(request)?;
            let response: http::Response<reqwest::Body> = this_thread(&self.general).execute(request).await?.into();
            return Ok(response.map(ReplyBody::General));
        }
        match &self.h2c {
            Some(h2c) => Ok(this_thread(h2c).request(request.map(Full::new)).await?.map(ReplyBody::H2c)),
            None => Ok(this_thread(&self.wire).send(request).await?.map(ReplyBody::Wire)),
        }
    }
}

/// The wire clock of the connection that carried an answer, from its extensions.
pub fn wire_clock(reply: &Reply) -> Option<&Arc<WireClock>> {
    // Only bestofn's HTTP/1.1 client puts one there: a connection carries one call at a time.
    reply.extensions().get::<Arc<WireClock>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use std::time::{Duration, Instant};

    /// A loopback HTTP/1.1 server answering every request after `delay`, keeping connections
    /// alive; returns its address.
    async fn slow_server(delay: Duration) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"{}"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn post(uri: &http::Uri) -> http::Request<Bytes> {
        http::Request::post(uri.clone()).body(Bytes::from_static(b"{}")).unwrap()
    }

    #[tokio::test]
    async fn the_wire_clock_spans_each_call_on_a_kept_alive_connection() {
        let addr = slow_server(Duration::from_millis(120)).await;
        let client = HttpClient::new(Http2Mode::Auto).unwrap();
        let uri: http::Uri = format!("http://{addr}/v1/chat/completions").parse().unwrap();
        assert!(client.is_direct(&uri), "plain HTTP with no proxy variables goes direct");
        let mut clocks = Vec::new();
        for _ in 0..2 {
            let before = Instant::now();
            let reply = client.send(post(&uri), true).await.unwrap();
            let clock = wire_clock(&reply).cloned().expect("a direct HTTP/1.1 answer carries its connection's clock");
            let _ = reply.into_body().collect().await.unwrap();
            let after = Instant::now();
            let (sent, received) = clock.span().unwrap();
            assert!(sent >= before && received <= after, "the span lies inside the call");
            assert!(received - sent >= Duration::from_millis(120), "it covers the server's own time");
            clocks.push((clock, sent));
        }
        assert!(Arc::ptr_eq(&clocks[0].0, &clocks[1].0), "the second call reused the connection");
        assert!(clocks[1].1 > clocks[0].1, "and its span starts at its own request");
    }

    #[test]
    fn each_serving_thread_calls_through_its_own_pool() {
        let server = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let addr = server.block_on(slow_server(Duration::ZERO));
        let client = HttpClient::with_threads(Http2Mode::Auto, 2).unwrap();
        let uri: http::Uri = format!("http://{addr}/v1/chat/completions").parse().unwrap();
        // Two calls from serving thread `index`, which keeps running (and so keeps its pooled
        // connection usable) until `hold` resolves; the calls' connections go to `calls`.
        let serve_calls = |index: usize, hold: tokio::sync::oneshot::Receiver<()>| {
            let (calls_tx, calls) = tokio::sync::oneshot::channel();
            let (client, uri) = (client.clone(), uri.clone());
            let thread = std::thread::spawn(move || {
                set_serving_thread(index);
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let mut clocks = Vec::new();
                    for _ in 0..2 {
                        let reply = client.send(post(&uri), true).await.unwrap();
                        clocks.push(wire_clock(&reply).cloned().unwrap());
                        let _ = reply.into_body().collect().await.unwrap();
                    }
                    let _ = calls_tx.send(clocks);
                    let _ = hold.await;
                });
            });
            (thread, calls)
        };
        let (release_first, hold_first) = tokio::sync::oneshot::channel();
        let (first_thread, first_calls) = serve_calls(0, hold_first);
        let first = first_calls.blocking_recv().unwrap();
        let (release_second, hold_second) = tokio::sync::oneshot::channel();
        let (second_thread, second_calls) = serve_calls(1, hold_second);
        let second = second_calls.blocking_recv().unwrap();
        let _ = (release_first.send(()), release_second.send(()));
        first_thread.join().unwrap();
        second_thread.join().unwrap();
        assert!(Arc::ptr_eq(&first[0], &first[1]), "a thread reuses its own kept-alive connection");
        assert!(Arc::ptr_eq(&second[0], &second[1]));
        assert!(
            !Arc::ptr_eq(&first[0], &second[0]),
            "the second thread opens its own connection instead of borrowing the first thread's idle one"
        );
    }

    #[tokio::test]
    async fn tls_and_proxied_endpoints_take_the_general_path() {
        let mut client = HttpClient::new(Http2Mode::Auto).unwrap();
        assert!(!client.is_direct(&"https://api.example.com/v1/models".parse().unwrap()));
        client.proxies = Arc::new(Matcher::builder().http("http://127.0.0.1:3128").no("localhost").build());
        assert!(!client.is_direct(&"http://10.0.0.7:8000/v1/models".parse().unwrap()), "HTTP_PROXY covers it");
        assert!(client.is_direct(&"http://localhost:8000/v1/models".parse().unwrap()), "NO_PROXY exempts it");
    }
}
