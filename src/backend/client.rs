//! The HTTP client of backend calls: one reqwest client per process, shared by the upstream,
//! the scorers, the judge classifier, the fuser and `eval`.
//!
//! One client rather than a hand-written HTTP/1.1 one for plain HTTP, hyper's for h2c and
//! reqwest for TLS and proxies: every answer is framed by hyper (which refuses to reuse a
//! connection whose answer was framed ambiguously, such as Content-Length beside
//! Transfer-Encoding), every endpoint gets the same proxy, TLS and redirect handling, and there
//! is one pool to reason about. The one exception is `upstream.http2 = "always"`: plain-text
//! HTTP/2 needs prior knowledge, which reqwest sets per client, so the upstream then gets a
//! second client, built with the first.

use std::time::Duration;

use bytes::Bytes;

use super::Http2Mode;

/// Idle keep-alive connections live this long, as reqwest's default.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle keep-alive connections kept per endpoint: enough for the burst of one parallel
/// best-of-N wave from many requests at once.
const POOL_IDLE_PER_HOST: usize = 512;

/// An answer's head and body, as reqwest hands it over.
pub type Reply = http::Response<reqwest::Body>;

/// What the process's client is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// HTTP/2 to the upstream (`upstream.http2`); every other backend negotiates it.
    pub upstream_http2: Http2Mode,
    /// The largest answer body read from any backend (`upstream.max_response_bytes`).
    pub max_response_bytes: u64,
}

/// The process's client for backend calls; cheap to clone (a handle to shared pools).
#[derive(Clone)]
pub struct HttpClient {
    /// What this handle's calls go through.
    client: reqwest::Client,
    /// The upstream's own client, built only when `upstream.http2` is not `auto`.
    upstream: Option<reqwest::Client>,
    max_response_bytes: u64,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("max_response_bytes", &self.max_response_bytes).finish_non_exhaustive()
    }
}

impl HttpClient {
    /// The pooled keep-alive client(s) of a process; proxies from the environment.
    pub fn new(settings: ClientSettings) -> Result<HttpClient, reqwest::Error> {
        super::install_crypto_provider();
        let upstream = match settings.upstream_http2 {
            Http2Mode::Auto => None,
            mode => Some(Self::build(mode)?),
        };
        Ok(HttpClient {
            client: Self::build(Http2Mode::Auto)?,
            upstream,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// The handle the upstream is called through: the same pools unless `upstream.http2` asked
    /// for a client of its own.
    pub fn for_upstream(&self) -> HttpClient {
        HttpClient {
            client: self.upstream.clone().unwrap_or_else(|| self.client.clone()),
            upstream: None,
            max_response_bytes: self.max_response_bytes,
        }
    }

    /// The largest answer body a call may read, in bytes.
    pub fn max_response_bytes(&self) -> u64 {
        self.max_response_bytes
    }

    fn build(mode: Http2Mode) -> Result<reqwest::Client, reqwest::Error> {
        let builder = match mode {
            // Without TLS there is no ALPN to agree on HTTP/2, so this is HTTP/1.1 for plain HTTP.
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

    /// Sends `request` and returns the answer once its head is in. The error names no URL
    /// (reqwest's would): a client may read it, and the caller knows the endpoint.
    pub async fn send(&self, request: http::Request<Bytes>) -> Result<Reply, reqwest::Error> {
        let request = reqwest::Request::try_from(request).map_err(reqwest::Error::without_url)?;
        // Boxed: reqwest's future is large, and every async layer above would otherwise copy it
        // into its own state as it is created (callgrind: 237K instructions a pass-through
        // before, 204K after).
        Ok(Box::pin(self.client.execute(request)).await.map_err(reqwest::Error::without_url)?.into())
    }
}

/// A body read's error (boxed by the body combinators) without the URL a reqwest error's text
/// would quote ("error sending request for url (http://10.0.0.5:8000/v1/...)"): a reqwest error
/// inside loses its URL, any other is returned as it is.
pub(crate) fn boxed_without_url(
    e: Box<dyn std::error::Error + Send + Sync>,
) -> Box<dyn std::error::Error + Send + Sync> {
    match e.downcast::<reqwest::Error>() {
        Ok(e) => Box::new(e.without_url()),
        Err(other) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    /// A loopback HTTP/1.1 server answering every request with a 307 to a closed port and `{}`,
    /// keeping connections alive; returns its address and a count of connections.
    async fn redirecting_server() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        http::Response::builder()
                            .status(http::StatusCode::TEMPORARY_REDIRECT)
                            .header(http::header::LOCATION, "http://127.0.0.1:9/elsewhere")
                            .body(Full::new(Bytes::from_static(b"{}")))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, connections)
    }

    fn settings(upstream_http2: Http2Mode) -> ClientSettings {
        ClientSettings { upstream_http2, max_response_bytes: 1024 }
    }

    #[tokio::test]
    async fn calls_share_one_kept_alive_connection_and_redirects_are_not_followed() {
        let (addr, connections) = redirecting_server().await;
        let client = HttpClient::new(settings(Http2Mode::Auto)).unwrap();
        let upstream = client.for_upstream();
        for handle in [&client, &upstream, &client] {
            let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
                .body(Bytes::from_static(b"{}"))
                .unwrap();
            let reply = handle.send(request).await.unwrap();
            assert_eq!(reply.status(), http::StatusCode::TEMPORARY_REDIRECT, "the redirect is the answer");
            assert_eq!(reply.into_body().collect().await.unwrap().to_bytes(), "{}");
        }
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1, "one pool for every backend");
    }

    #[tokio::test]
    async fn errors_name_no_url() {
        // A port that nothing listens on: bound, then closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = HttpClient::new(settings(Http2Mode::Auto)).unwrap();
        let request = http::Request::post(format!("http://{addr}/v1/chat/completions")).body(Bytes::new()).unwrap();
        let error = client.send(request).await.unwrap_err();
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        assert!(!chain.contains("127.0.0.1") && !chain.contains(&addr.port().to_string()), "{chain}");
        let boxed = boxed_without_url(Box::new(error));
        assert!(!boxed.to_string().contains("127.0.0.1"), "{boxed}");
    }

    #[test]
    fn only_a_non_default_upstream_http2_mode_builds_a_second_client() {
        let shared = HttpClient::new(settings(Http2Mode::Auto)).unwrap();
        assert!(shared.upstream.is_none());
        let always = HttpClient::new(settings(Http2Mode::Always)).unwrap();
        assert!(always.upstream.is_some());
        assert!(always.for_upstream().upstream.is_none(), "the upstream's handle holds its own client only");
        assert_eq!(always.for_upstream().max_response_bytes(), 1024);
    }
}
