//! The real `bestofn` binary's HTTP/1.1 connection, spoken to byte by byte over loopback:
//! keep-alive and pipelining, chunked and `Expect: 100-continue` bodies, refusals that close
//! the connection, HTTP/1.0, HEAD, HTTP/2 by prior knowledge and idle connections at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw client connection that keeps what it read past one answer for the next.
struct Raw {
    stream: TcpStream,
    buffered: Vec<u8>,
}

/// One answer: its head (status line and header lines, lower-cased names) and its body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

impl Raw {
    async fn connect(proxy: &Bestofn) -> Raw {
        Raw { stream: TcpStream::connect(proxy.addr).await.unwrap(), buffered: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more; false at end of file.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("no answer within 10 s")
            .unwrap_or(0);
        self.buffered.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next answer's head (status and header lines), its body still unread.
    async fn head(&mut self) -> Answer {
        let end = loop {
            if let Some(end) = self.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(self.fill().await, "closed before an answer's head: {:?}", String::from_utf8_lossy(&self.buffered));
        };
        let head = String::from_utf8(self.buffered[..end].to_vec()).unwrap();
        self.buffered.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        assert!(status_line.starts_with("HTTP/1.1 ") || status_line.starts_with("HTTP/1.0 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Answer { status, headers, body: Vec::new() }
    }

    /// The next answer; `head_only` for the answer to a HEAD request, which has no body.
    async fn answer(&mut self, head_only: bool) -> Answer {
        let mut answer = self.head().await;
        if head_only || answer.status == 100 {
            return answer;
        }
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(at) = self.buffered.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(self.fill().await);
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buffered[..line_end]).unwrap(), 16).unwrap();
                self.buffered.drain(..line_end + 2);
                while self.buffered.len() < size + 2 {
                    assert!(self.fill().await);
                }
                answer.body.extend_from_slice(&self.buffered[..size]);
                self.buffered.drain(..size + 2);
                if size == 0 {
                    return answer;
                }
            }
        }
        let length: usize = answer.header("content-length").expect("a length or chunked").parse().unwrap();
        while self.buffered.len() < length {
            assert!(self.fill().await, "closed in the middle of a body");
        }
        answer.body = self.buffered.drain(..length).collect();
        answer
    }

    /// Whether the proxy closes the connection (reads nothing more, then end of file).
    async fn closes(&mut self) -> bool {
        self.buffered.is_empty() && !self.fill().await
    }
}

fn post_head(path: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: bestofn\r\ncontent-type: application/json\r\n{extra}\r\n")
}

fn chat_text(content: &str) -> String {
    serde_json::to_string(&chat_body(content)).unwrap()
}

async fn pass_through_proxy(server_section: &str) -> (FakeServer, FakeServer, Bestofn) {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg =
        config(&upstream, &rm, "n", 1).replace("[upstream]", &format!("[server]\n{server_section}\n\n[upstream]"));
    let proxy = Bestofn::start(&cfg);
    (upstream, rm, proxy)
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_on_one_kept_alive_connection_are_answered_in_order() {
    let (upstream, _rm, proxy) = pass_through_proxy("").await;
    let mut raw = Raw::connect(&proxy).await;
    let body = chat_text("first");
    // Three requests in one write: the second and third arrive while the first is served.
    let mut bytes = post_head("/v1/chat/completions", &format!("content-length: {}\r\n", body.len())).into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes.extend_from_slice(
        b"GET /healthz HTTP/1.1\r\nhost: bestofn\r\n\r\nGET /v1/models HTTP/1.1\r\nhost: bestofn\r\n\r\n",
    );
    raw.send(&bytes).await;

    let first = raw.answer(false).await;
    assert_eq!(first.status, 200, "{:?}", first);
    assert_eq!(first.json()["object"], "chat.completion");
    assert_eq!(first.header("x-bestofn-n"), Some("1"));
    assert!(first.header("x-request-id").is_some_and(|id| id.starts_with("bon-")));
    assert!(first.header("date").is_some_and(|d| d.ends_with(" GMT")), "{first:?}");
    assert_eq!(first.header("connection"), None);
    let second = raw.answer(false).await;
    assert_eq!((second.status, second.json()), (200, json!({"status": "ok"})));
    let third = raw.answer(false).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.json()["data"][0]["id"], "fake-model");
    assert_eq!(upstream.requests_to("/v1/chat/completions").len(), 1);

    // The connection is still usable after the pipeline.
    raw.send(b"GET /healthz HTTP/1.1\r\nhost: bestofn\r\n\r\n").await;
    assert_eq!(raw.answer(false).await.status, 200);
    assert_eq!(upstream.connections(), 1, "one upstream connection carried the call");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_is_read_whole_and_forwarded_as_the_client_wrote_it() {
    let (upstream, _rm, proxy) = pass_through_proxy("").await;
    let mut raw = Raw::connect(&proxy).await;
    let body = chat_text("chunked");
    let (a, b) = body.split_at(10);
    // Chunk sizes in either case, a chunk extension, and a trailer section.
    let request = format!(
        "{}{:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nx-trailer: yes\r\n\r\n",
        post_head("/v1/chat/completions", "transfer-encoding: chunked\r\n"),
        a.len(),
        b.len()
    );
    raw.send(request.as_bytes()).await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 200, "{:?}", String::from_utf8_lossy(&answer.body));
    let recorded = upstream.requests_to("/v1/chat/completions");
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].raw, body.as_bytes(), "the upstream got other bytes than the client's");

    // The chunked framing was read to its end: the next request on the connection is whole.
    raw.send(b"GET /healthz HTTP/1.1\r\nhost: bestofn\r\n\r\n").await;
    assert_eq!(raw.answer(false).await.json(), json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (_upstream, _rm, proxy) = pass_through_proxy("").await;
    let mut raw = Raw::connect(&proxy).await;
    let body = chat_text("expecting");
    raw.send(
        post_head("/v1/chat/completions", &format!("content-length: {}\r\nexpect: 100-continue\r\n", body.len()))
            .as_bytes(),
    )
    .await;
    let interim = raw.answer(false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    raw.send(body.as_bytes()).await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["object"], "chat.completion");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_that_cannot_be_read_are_refused_and_their_connection_closed() {
    let (upstream, _rm, proxy) = pass_through_proxy("max_body_bytes = 2048").await;

    // A declared length over the limit: refused without reading the body.
    let mut raw = Raw::connect(&proxy).await;
    raw.send(post_head("/v1/chat/completions", "content-length: 5000\r\n").as_bytes()).await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_envelope(&answer.json(), None);
    assert!(raw.closes().await);

    // A chunked body that grows over the limit.
    let mut raw = Raw::connect(&proxy).await;
    let chunk = "x".repeat(1500);
    raw.send(
        format!(
            "{}5dc\r\n{chunk}\r\n5dc\r\n{chunk}\r\n0\r\n\r\n",
            post_head("/v1/chat/completions", "transfer-encoding: chunked\r\n")
        )
        .as_bytes(),
    )
    .await;
    let answer = raw.answer(false).await;
    assert_eq!(answer.status, 413);
    assert!(raw.closes().await);

    // Framing the proxy cannot read (a bad chunk size, a bad length, a transfer coding other
    // than chunked), a head that is not HTTP, one with too many fields: hyper refuses them before
    // a handler runs, with a bare status.
    for (head, status) in [
        (post_head("/v1/chat/completions", "transfer-encoding: chunked\r\n") + "zz\r\n{}\r\n0\r\n\r\n", 400),
        (post_head("/v1/chat/completions", "content-length: twelve\r\n") + "{}", 400),
        (post_head("/v1/chat/completions", "transfer-encoding: gzip\r\n") + "{}", 400),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), 400),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nhost: bestofn\r\n{}\r\n",
                (0..101).map(|i| format!("x-field-{i}: {i}\r\n")).collect::<String>()
            ),
            431,
        ),
    ] {
        let mut raw = Raw::connect(&proxy).await;
        raw.send(head.as_bytes()).await;
        let answer = raw.answer(false).await;
        assert_eq!(answer.status, status, "{head}: {:?}", String::from_utf8_lossy(&answer.body));
        assert!(raw.closes().await, "{head}");
    }

    assert!(upstream.requests().is_empty(), "a refused request reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_close_http_1_0_and_a_twice_framed_request_end_the_connection() {
    let (_upstream, _rm, proxy) = pass_through_proxy("").await;
    for head in [
        "GET /healthz HTTP/1.1\r\nhost: bestofn\r\nconnection: close\r\n\r\n",
        "GET /healthz HTTP/1.0\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nhost: bestofn\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
    ] {
        let mut raw = Raw::connect(&proxy).await;
        raw.send(head.as_bytes()).await;
        let answer = raw.answer(false).await;
        assert_eq!(answer.status, 200, "{head}");
        // An HTTP/1.0 answer closes by default, and need not say so.
        if head.contains("HTTP/1.1") {
            assert_eq!(answer.header("connection"), Some("close"), "{head}");
        }
        assert!(raw.closes().await, "{head}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_1_0_client_that_asks_for_keep_alive_keeps_its_connection_while_answers_have_a_length() {
    let (upstream, _rm, proxy) = pass_through_proxy("").await;
    let mut raw = Raw::connect(&proxy).await;
    // As `ab -k` asks: the token in any case.
    raw.send(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").await;
    let health = raw.answer(false).await;
    assert_eq!((health.status, health.json()), (200, json!({"status": "ok"})));
    assert_eq!(health.header("connection"), Some("keep-alive"), "{health:?}");
    // A chat completion, as an HTTP/1.0 keep-alive client posts it.
    let post = |body: String| {
        let head = post_head("/v1/chat/completions", &format!("content-length: {}\r\n", body.len()))
            .replace("HTTP/1.1", "HTTP/1.0")
            .replace("host: bestofn\r\n", "host: bestofn\r\nconnection: keep-alive\r\n");
        format!("{head}{body}")
    };
    raw.send(post(chat_text("over HTTP/1.0")).as_bytes()).await;
    let chat = raw.answer(false).await;
    assert_eq!(chat.status, 200, "{chat:?}");
    assert_eq!(chat.header("connection"), Some("keep-alive"));
    assert!(chat.json()["choices"][0]["message"]["content"].is_string(), "{:?}", chat.json());
    assert_eq!(upstream.requests_to("/v1/chat/completions").len(), 1);
    // A streamed answer has no length an HTTP/1.0 client could frame: it ends at the close.
    let streamed = serde_json::to_string(&json!({"model": "fake-model", "stream": true,
        "messages": [{"role": "user", "content": "streamed"}]}))
    .unwrap();
    raw.send(post(streamed).as_bytes()).await;
    let stream = raw.head().await;
    assert_eq!(stream.status, 200, "{stream:?}");
    assert_eq!(stream.header("transfer-encoding"), None, "{stream:?}");
    assert_eq!(stream.header("content-length"), None, "{stream:?}");
    // Framed by the close: the connection ends with the stream.
    while raw.fill().await {}
    assert!(
        String::from_utf8_lossy(&raw.buffered).contains("data: [DONE]"),
        "the stream ran to its end before the close"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_to_head_carries_no_body() {
    let (_upstream, _rm, proxy) = pass_through_proxy("").await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(b"HEAD /healthz HTTP/1.1\r\nhost: bestofn\r\n\r\nGET /healthz HTTP/1.1\r\nhost: bestofn\r\n\r\n").await;
    let head = raw.answer(true).await;
    assert_eq!(head.status, 405);
    // Had the 405's body been sent, it would be read here as the next answer's start.
    let next = raw.answer(false).await;
    assert_eq!((next.status, next.json()), (200, json!({"status": "ok"})));
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_with_prior_knowledge_are_served() {
    let (_upstream, _rm, proxy) = pass_through_proxy("").await;
    bestofn::backend::install_crypto_provider();
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let health = client.get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert_eq!(health.status(), 200);
    let answer = client.post(proxy.url("/v1/chat/completions")).json(&chat_body("over h2")).send().await.unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.json::<Value>().await.unwrap()["object"], "chat.completion");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_kept_alive_connection_does_not_hold_up_shutdown() {
    // A drain timeout far longer than `terminate_and_wait` waits: the process can only exit in
    // time if the idle connection is closed rather than waited for.
    let (_upstream, _rm, mut proxy) = pass_through_proxy("drain_timeout_ms = 600000").await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(b"GET /healthz HTTP/1.1\r\nhost: bestofn\r\n\r\n").await;
    assert_eq!(raw.answer(false).await.status, 200);
    let status = tokio::task::spawn_blocking(move || proxy.terminate_and_wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(raw.closes().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_still_sending_a_refused_body_gets_its_413_not_a_reset() {
    let (_upstream, _rm, proxy) = pass_through_proxy("max_body_bytes = 2048").await;
    let (mut read, mut write) = TcpStream::connect(proxy.addr).await.unwrap().into_split();
    // More than the sockets' buffers hold: the client is still writing when the 413 comes.
    let size = 8 * 1024 * 1024;
    write
        .write_all(post_head("/v1/chat/completions", &format!("content-length: {size}\r\n")).as_bytes())
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..size / chunk.len() {
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(write)
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let written = writer.await.unwrap();
    assert!(written.is_ok(), "the proxy reset the connection while the client was sending: {:?}", written.err());
}

/// A whole second request, to hide after a first one's body: a server that frames the first one
/// wrongly reads this as a request the client never sent as one (request smuggling).
fn smuggled_request() -> String {
    let body = chat_text("smuggled");
    format!("{}{body}", post_head("/v1/chat/completions", &format!("content-length: {}\r\n", body.len())))
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_the_rfcs_reject_is_answered_400_and_closed_and_nothing_reaches_the_upstream() {
    let (upstream, _rm, proxy) = pass_through_proxy("").await;
    let chat = chat_text("first");
    let smuggled = smuggled_request();
    let head = |version: &str, fields: &str| {
        format!("POST /v1/chat/completions {version}\r\ncontent-type: application/json\r\n{fields}\r\n")
    };
    let cases = [
        // RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
        (
            "HTTP/1.0, chunked, keep-alive",
            format!(
                "{}0\r\n\r\n{smuggled}",
                head("HTTP/1.0", "host: bestofn\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n")
            ),
        ),
        // Section 7.1.1: a chunk extension ends at CRLF; a bare LF is no line end.
        (
            "bare LF in a chunk extension",
            format!(
                "{}{:x};ext\n{chat}\r\n0\r\n\r\n{smuggled}",
                head("HTTP/1.1", "host: bestofn\r\ntransfer-encoding: chunked\r\n"),
                chat.len()
            ),
        ),
        // Section 7.1: a chunk-size is one or more hex digits; an empty line is not a last chunk.
        (
            "an empty chunk-size line",
            format!("{}\r\n{smuggled}", head("HTTP/1.1", "host: bestofn\r\ntransfer-encoding: chunked\r\n")),
        ),
        // RFC 9110 section 8.6: Content-Length is 1*DIGIT (hyper's CVE-2021-32715).
        (
            "Content-Length: +5",
            format!(
                "{}{chat}{smuggled}",
                head("HTTP/1.1", &format!("host: bestofn\r\ncontent-length: +{}\r\n", chat.len()))
            ),
        ),
        // RFC 9112 section 3.2: exactly one Host field, a valid uri-host[:port].
        ("no Host", format!("{}{chat}{smuggled}", head("HTTP/1.1", &format!("content-length: {}\r\n", chat.len())))),
        (
            "two Host fields",
            format!(
                "{}{chat}{smuggled}",
                head("HTTP/1.1", &format!("host: a\r\nhost: b\r\ncontent-length: {}\r\n", chat.len()))
            ),
        ),
        (
            "Host: bad/host",
            format!(
                "{}{chat}{smuggled}",
                head("HTTP/1.1", &format!("host: bad/host\r\ncontent-length: {}\r\n", chat.len()))
            ),
        ),
        (
            "Host: a b",
            format!(
                "{}{chat}{smuggled}",
                head("HTTP/1.1", &format!("host: a b\r\ncontent-length: {}\r\n", chat.len()))
            ),
        ),
        (
            "Host with userinfo",
            format!(
                "{}{chat}{smuggled}",
                head("HTTP/1.1", &format!("host: u@h\r\ncontent-length: {}\r\n", chat.len()))
            ),
        ),
    ];
    for (case, bytes) in cases {
        let mut raw = Raw::connect(&proxy).await;
        raw.send(bytes.as_bytes()).await;
        let answer = raw.answer(false).await;
        assert_eq!(answer.status, 400, "{case}: {:?}", String::from_utf8_lossy(&answer.body));
        if !answer.body.is_empty() {
            assert_envelope(&answer.json(), None);
        }
        assert!(raw.closes().await, "{case}: the connection stays open");
        assert!(upstream.requests().is_empty(), "{case}: the upstream received {:?}", upstream.requests());
    }

    // Trailers past hyper's limit, and a head past the server's, arriving in one write.
    let trailers = format!("x-big: {}\r\n", "t".repeat(128 * 1024));
    let big_trailers = format!(
        "{}{:x}\r\n{chat}\r\n0\r\n{trailers}\r\n",
        post_head("/v1/chat/completions", "transfer-encoding: chunked\r\n"),
        chat.len()
    );
    let big_head = format!("GET /healthz HTTP/1.1\r\nhost: bestofn\r\nx-big: {}\r\n\r\n", "h".repeat(128 * 1024));
    for (case, bytes) in [("128 KiB of trailers", big_trailers), ("a 128 KiB head", big_head)] {
        let mut raw = Raw::connect(&proxy).await;
        raw.send(bytes.as_bytes()).await;
        let answer = raw.answer(false).await;
        assert!([400, 431].contains(&answer.status), "{case}: {answer:?}");
        assert!(raw.closes().await, "{case}");
    }
    assert!(upstream.requests().is_empty(), "the upstream received {:?}", upstream.requests());

    // A valid Host, with a port, is served; so is HTTP/1.0 without one.
    for request in [
        "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
        "GET /healthz HTTP/1.0\r\n\r\n",
    ] {
        let mut raw = Raw::connect(&proxy).await;
        raw.send(request.as_bytes()).await;
        assert_eq!(raw.answer(false).await.status, 200, "{request}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_idle_past_the_idle_timeout_is_closed() {
    // A header-read timeout longer than the test waits: only the idle timeout can close it.
    let (_upstream, _rm, proxy) = pass_through_proxy("idle_timeout_ms = 300\nheader_read_timeout_ms = 60000").await;
    let mut raw = Raw::connect(&proxy).await;
    raw.send(b"GET /healthz HTTP/1.1\r\nhost: bestofn\r\n\r\n").await;
    assert_eq!(raw.answer(false).await.status, 200);
    assert!(raw.closes().await, "the idle connection was closed");
}
