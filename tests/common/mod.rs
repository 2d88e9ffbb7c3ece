//! Loopback test servers that speak the exact wire formats of OpenAI-compatible LLM servers and
//! of vLLM, TEI and SGLang reward-model servers, and a handle on the real `bestofn` binary.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};

/// One request a fake server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body's bytes as they arrived.
    pub raw: bytes::Bytes,
    pub at: std::time::Instant,
    pub version: http::Version,
}

/// What a fake server answers.
pub enum Reply {
    Json(u16, Value),
    Raw(u16, String),
    /// Waits, then answers (a slow backend; not used to synchronise the test).
    Delayed(Duration, Box<Reply>),
    /// A `text/event-stream` body of these `data:` payloads.
    Sse(Vec<String>),
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A hyper server on 127.0.0.1:0 that records every request and answers with `handler`.
pub struct FakeServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(reply: Reply) -> Response<Full<Bytes>> {
    let (status, body) = match reply {
        Reply::Json(status, v) => (status, v.to_string()),
        Reply::Raw(status, s) => (status, s),
        Reply::Delayed(d, inner) => {
            tokio::time::sleep(d).await;
            return Box::pin(answer(*inner)).await;
        }
        Reply::Sse(events) => {
            let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
            return response;
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    response
}

impl FakeServer {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> FakeServer {
        let handler: Handler = Arc::new(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let recorded = recorded.clone();
                        async move {
                            let version = req.version();
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let headers = req.headers().clone();
                            let bytes = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            let at = std::time::Instant::now();
                            let rec = Recorded { method, path, headers, body, raw: bytes, at, version };
                            recorded.lock().unwrap().push(rec.clone());
                            Ok::<_, Infallible>(answer(handler(&rec)).await)
                        }
                    });
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        FakeServer { addr, requests, connections, task }
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

/// The reward quality the fake RM gives a sample with this seed: deterministic, varied.
pub fn quality(seed: i64) -> f64 {
    (seed.rem_euclid(97) * 37 % 101) as f64 / 10.0 - 5.0
}

/// The text the fake upstream produces for a seed; the fake RM reads `q=` back from it.
pub fn candidate_text(seed: i64) -> String {
    format!("Answer from seed {seed} with q={}", quality(seed))
}

/// Reads the last `q=<number>` in a text, as the fake RMs score.
pub fn read_quality(text: &str) -> f64 {
    let Some(pos) = text.rfind("q=") else { return -100.0 };
    let rest = &text[pos + 2..];
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(rest.len());
    rest[..end].parse().unwrap_or(-100.0)
}

/// How the fake upstream treats `n`.
#[derive(Clone, Copy, Debug)]
pub enum NSupport {
    /// Returns n choices (vLLM, OpenAI).
    Full,
    /// Rejects n > 1 with 400 (older llama.cpp).
    Reject,
    /// Returns at most this many choices (Ollama ignores n: 1; llama.cpp caps at --parallel).
    Cap(u32),
}

/// How the fake upstream reports completion tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageStyle {
    /// The sum over choices (vLLM).
    Honest,
    /// One choice's tokens only, whatever n is (llama.cpp with n > 1), in a reply shaped like
    /// llama.cpp's (with its `timings` object); no `/tokenize` endpoint.
    OneChoice,
}

pub const PROMPT_TOKENS: u64 = 11;

/// Tokens the fake upstream says a text has: its word count.
pub fn fake_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// An OpenAI-compatible chat completions handler with the given `n` behaviour and usage style.
/// Without a seed in the request, seeds come from a counter so samples still differ.
pub fn upstream_handler(n_support: NSupport, usage: UsageStyle) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    let counter = AtomicI64::new(5000);
    move |req: &Recorded| {
        if req.path.ends_with("/models") {
            return Reply::Json(
                200,
                json!({"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 1, "owned_by": "test"}]}),
            );
        }
        let n = req.body.get("n").and_then(Value::as_u64).unwrap_or(1) as u32;
        let served = match n_support {
            NSupport::Full => n,
            NSupport::Reject if n > 1 => {
                return Reply::Json(
                    400,
                    json!({"error": {"code": 400, "message": "Only one completion choice is allowed", "type": "invalid_request_error"}}),
                );
            }
            NSupport::Reject => 1,
            NSupport::Cap(cap) => n.min(cap),
        };
        let seed =
            req.body.get("seed").and_then(Value::as_i64).unwrap_or_else(|| counter.fetch_add(100, Ordering::Relaxed));
        let texts: Vec<String> = (0..served).map(|i| candidate_text(seed + i64::from(i))).collect();
        let legacy = req.path.ends_with("/v1/completions");
        if req.body["stream"] == json!(true) {
            let object = if legacy { "text_completion" } else { "chat.completion.chunk" };
            let piece = |i: usize, text: &str, finish: Value| {
                let choice = if legacy {
                    json!({"index": i, "text": text, "logprobs": null, "finish_reason": finish})
                } else {
                    json!({"index": i, "delta": {"content": text}, "logprobs": null, "finish_reason": finish})
                };
                json!({"id": "up-1", "object": object, "created": 1, "model": "fake-model", "choices": [choice]})
                    .to_string()
            };
            let mut events: Vec<String> = texts[0].split_inclusive(' ').map(|w| piece(0, w, Value::Null)).collect();
            events.push(piece(0, "", json!("stop")));
            events.push("[DONE]".to_string());
            return Reply::Sse(events);
        }
        let choices: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if legacy {
                    json!({"index": i, "text": t, "logprobs": null, "finish_reason": "length"})
                } else {
                    json!({"index": i, "message": {"role": "assistant", "content": t}, "logprobs": null, "finish_reason": "stop"})
                }
            })
            .collect();
        let completion = match usage {
            UsageStyle::Honest => texts.iter().map(|t| fake_tokens(t)).sum(),
            UsageStyle::OneChoice => fake_tokens(&texts[0]),
        };
        let mut reply = json!({
            "id": format!("chatcmpl-{seed}"),
            "object": if legacy { "text_completion" } else { "chat.completion" },
            "created": 1700000000,
            "model": req.body.get("model").cloned().unwrap_or(json!("fake-model")),
            "system_fingerprint": "fp_fake",
            "choices": choices,
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": PROMPT_TOKENS + completion}
        });
        if usage == UsageStyle::OneChoice {
            reply["timings"] = json!({"prompt_n": PROMPT_TOKENS, "predicted_n": completion, "predicted_ms": 1.0});
        }
        Reply::Json(200, reply)
    }
}

/// A reward-model server speaking vLLM `/classify` (text batch or chat messages) and `/pooling`,
/// TEI `/predict` and SGLang `/classify` (under `/sglang`), scoring each text by its `q=`.
pub fn rm_handler() -> impl Fn(&Recorded) -> Reply + Send + Sync {
    |req: &Recorded| {
        let texts = |key: &str| -> Vec<String> {
            req.body
                .get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|t| t.as_str().unwrap_or("").to_string()).collect())
                .unwrap_or_default()
        };
        match req.path.as_str() {
            "/classify" => {
                if let Some(messages) = req.body.get("messages").and_then(Value::as_array) {
                    let last = messages.last().and_then(|m| m["content"].as_str()).unwrap_or("");
                    return Reply::Json(
                        200,
                        json!({
                            "id": "classify-1", "object": "list", "created": 1, "model": "rm",
                            "data": [{"index": 0, "label": "LABEL_0", "probs": [read_quality(last)], "num_classes": 1}],
                            "usage": {"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0, "prompt_tokens_details": null}
                        }),
                    );
                }
                let data: Vec<Value> = texts("input")
                    .iter()
                    .enumerate()
                    .map(|(i, t)| json!({"index": i, "label": "LABEL_0", "probs": [read_quality(t)], "num_classes": 1}))
                    .rev() // order by index must not be assumed
                    .collect();
                let n = data.len() as u64;
                Reply::Json(
                    200,
                    json!({"id": "classify-2", "object": "list", "created": 1, "model": "rm", "data": data,
                    "usage": {"prompt_tokens": 20 * n, "total_tokens": 20 * n, "completion_tokens": 0, "prompt_tokens_details": null}}),
                )
            }
            "/pooling" => {
                let data: Vec<Value> = texts("input")
                    .iter()
                    .enumerate()
                    .map(|(i, t)| json!({"index": i, "object": "pooling", "data": [read_quality(t)]}))
                    .collect();
                Reply::Json(
                    200,
                    json!({"id": "pool-1", "object": "list", "created": 1, "model": "rm", "data": data,
                    "usage": {"prompt_tokens": 9, "total_tokens": 9, "completion_tokens": 0, "prompt_tokens_details": null}}),
                )
            }
            "/predict" => {
                let inputs = req.body["inputs"].as_array().cloned().unwrap_or_default();
                let out: Vec<Value> = inputs
                    .iter()
                    .map(|pair| json!([{"label": "LABEL_0", "score": read_quality(pair[0].as_str().unwrap_or(""))}]))
                    .collect();
                Reply::Json(200, Value::Array(out))
            }
            "/sglang/classify" => {
                let out: Vec<Value> = texts("text")
                    .iter()
                    .map(|t| json!({"embedding": [read_quality(t)], "meta_info": {"id": "x", "prompt_tokens": 5}}))
                    .collect();
                Reply::Json(200, Value::Array(out))
            }
            _ => Reply::Json(404, json!({"detail": "Not Found"})),
        }
    }
}

/// The real `bestofn` binary, serving a config on a free loopback port.
pub struct Bestofn {
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Bestofn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bestofn {
    /// Writes `config` to a temp file and starts `bestofn serve` on 127.0.0.1:0.
    pub fn start(config: &str) -> Bestofn {
        Bestofn::start_with_env(config, &[])
    }

    /// Starts with extra environment variables (API keys).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Bestofn {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bestofn.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(bestofn_exe())
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("bestofn did not start; log:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        Bestofn { addr, child, logs, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate_and_wait(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("bestofn did not exit after SIGTERM");
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

/// A config with one upstream and the five RM API variants as scorers.
pub fn config(upstream: &FakeServer, rm: &FakeServer, sampling: &str, n: u32) -> String {
    format!(
        r#"
[upstream]
base_url = "{up}/v1"
sampling = "{sampling}"
timeout_ms = 5000
max_retries = 1

[scorers.vllm]
kind = "reward_http"
api = "vllm_classify"
url = "{rm}/classify"
model = "Skywork/Skywork-Reward-V2-Qwen3-0.6B"

[scorers.vllm_messages]
kind = "reward_http"
api = "vllm_classify"
input_format = "messages"
url = "{rm}/classify"

[scorers.pooling]
kind = "reward_http"
api = "vllm_pooling"
url = "{rm}/pooling"

[scorers.tei]
kind = "reward_http"
api = "tei_predict"
url = "{rm}/predict"
chat_template = "plain"

[scorers.sglang]
kind = "reward_http"
api = "sglang_classify"
url = "{rm}/sglang/classify"
chat_template = "llama3"

[policy]
n = {n}
scorer = "vllm"
"#,
        up = upstream.url(),
        rm = rm.url(),
    )
}

/// A reqwest client for tests (the crate's TLS provider installed first).
pub fn client() -> reqwest::Client {
    bestofn::backend::install_crypto_provider();
    reqwest::Client::new()
}

/// POSTs a JSON body to bestofn and returns status, headers and JSON body.
pub async fn post(url: &str, body: Value, headers: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
    let client = client();
    let mut req = client.post(url).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, headers, value)
}

pub fn chat_body(content: &str) -> Value {
    json!({"model": "fake-model", "messages": [{"role": "user", "content": content}]})
}

/// Asserts the OpenAI error envelope: all four keys, and the given param.
pub fn assert_envelope(body: &Value, param: Option<&str>) {
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert!(e.as_object().unwrap().contains_key("code"), "{body}");
    assert_eq!(e["param"].as_str(), param, "{body}");
}

/// One item of a strictly parsed SSE stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    Comment(String),
    Data(Value),
    Done,
}

/// Parses an SSE byte stream strictly: every event is one `data: ` line or one comment line,
/// events end with a blank line, `[DONE]` is the last event, and every data payload is JSON.
pub fn parse_sse(text: &str) -> Vec<SseItem> {
    assert!(text.ends_with("\n\n"), "stream does not end with a blank line: {text:?}");
    let mut items = Vec::new();
    for block in text[..text.len() - 2].split("\n\n") {
        assert!(!block.contains('\n'), "an event spans several lines: {block:?}");
        assert!(!items.contains(&SseItem::Done), "an event after [DONE]: {block}");
        if let Some(comment) = block.strip_prefix(':') {
            items.push(SseItem::Comment(comment.trim().to_string()));
        } else if let Some(data) = block.strip_prefix("data: ") {
            if data == "[DONE]" {
                items.push(SseItem::Done);
            } else {
                items
                    .push(SseItem::Data(serde_json::from_str(data).unwrap_or_else(|e| panic!("bad JSON {data}: {e}"))));
            }
        } else {
            panic!("not an SSE data or comment line: {block:?}");
        }
    }
    assert_eq!(items.last(), Some(&SseItem::Done), "the stream must end with [DONE]");
    items
}

/// The JSON data events of a parsed stream.
pub fn data_events(items: &[SseItem]) -> Vec<Value> {
    items.iter().filter_map(|i| if let SseItem::Data(v) = i { Some(v.clone()) } else { None }).collect()
}

/// POSTs and returns status, content type and the raw body text.
pub async fn post_raw(url: &str, body: Value) -> (u16, String, String) {
    let resp = client().post(url).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, content_type, resp.text().await.unwrap())
}

/// Reads one HTTP/1.1 request (headers and a content-length body) from a raw socket.
pub async fn read_http_request(stream: &mut tokio::net::TcpStream) -> Option<Value> {
    let (_, body) = read_http_message(stream).await?;
    serde_json::from_slice(&body).ok()
}

/// Reads one HTTP/1.1 message with a content-length body (or none) from a raw socket: its head
/// (start line and headers) and its body; None if the peer closes first.
pub async fn read_http_message(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .to_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((head, buf[end + 4..end + 4 + length].to_vec()));
        }
    }
}

/// The `bestofn` binary the tests run: this build's, or `BESTOFN_TEST_BIN` when it is set, so the
/// suite can be run against the release binary that ships.
pub fn bestofn_exe() -> std::path::PathBuf {
    std::env::var_os("BESTOFN_TEST_BIN").map_or_else(|| env!("CARGO_BIN_EXE_bestofn").into(), Into::into)
}

/// Runs the real `bestofn` binary with `args`: success, stdout, stderr.
pub fn bestofn(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bestofn_exe()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw upstream that reads each request and never answers, reporting each accepted request
/// and each connection its peer closed.
pub async fn hanging_upstream()
-> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (accepted_tx, accepted_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let closed_tx = closed_tx.clone();
            let accepted_tx = accepted_tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                if read_http_request(&mut stream).await.is_some() {
                    let _ = accepted_tx.send(());
                }
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, accepted_rx, closed_rx)
}

/// The assistant messages of reasoning models and agents, as their servers send them: `shape`
/// 0 is vLLM's or DeepSeek's (`reasoning_content`, an empty `tool_calls`), 1 OpenRouter's or
/// Ollama's (`reasoning`), 2 a reasoning model calling two tools in parallel after a few words
/// (vLLM with a reasoning and a tool parser), 3 OpenAI's tool-call message (`content: null`,
/// `refusal: null`, `annotations`). Each carries a vendor field bestofn does not know. The
/// answer holds `q={q}` for the fake RM: in the content, or in the last call's arguments.
pub fn agent_message(shape: u32, q: f64) -> Value {
    let thinking = format!(
        "The user wants the weather in Paris and the local time. I should not guess either; \
         both come from tools, and they can be asked at once. (shape {shape})"
    );
    let calls = json!([
        {"id": format!("call_w{shape}"), "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": format!("call_t{shape}"), "type": "function",
         "function": {"name": "get_time", "arguments": format!(
             "{{\"timezone\": \"Europe/Paris\", \"format\": \"24h\", \"include\": [\"date\", \"weekday\"], \"note\": \"q={q}\"}}"
         )}}
    ]);
    match shape % 4 {
        0 => json!({"role": "assistant", "reasoning_content": thinking,
            "content": format!("It is probably mild in Paris this time of year, about 18C. q={q}"),
            "tool_calls": [], "vendor_extra": {"cache_hit": true, "shape": 0}}),
        1 => json!({"role": "assistant", "reasoning": thinking,
            "content": format!("I cannot know the weather without a tool; likely mild. q={q}"),
            "vendor_extra": {"shape": 1}}),
        2 => json!({"role": "assistant", "reasoning_content": thinking, "content": "Checking both for you.",
            "tool_calls": calls, "vendor_extra": {"shape": 2}}),
        _ => json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
            "tool_calls": calls, "vendor_extra": {"shape": 3}}),
    }
}

/// Reasoning tokens the agent upstream reports for a candidate of `shape`.
pub fn agent_reasoning_tokens(shape: u32) -> u64 {
    10 + u64::from(shape)
}

/// An OpenAI-compatible upstream of reasoning models and agents: candidate `seed + i` of a call
/// is [`agent_message`] of shape `(seed + i) % 4`, scored 9 by the fake RM when that shape is the
/// `K` of the request's `model: "win-K"`, else 1; `finish_reason` is `tool_calls` for tool calls.
/// Usage reports `completion_tokens_details.reasoning_tokens` (summed over the call's choices)
/// unless the model name ends in `-plain`.
pub fn agent_upstream() -> impl Fn(&Recorded) -> Reply + Send + Sync {
    |req: &Recorded| {
        let model = req.body["model"].as_str().unwrap_or("win-0").to_string();
        let winner: u32 = model.trim_start_matches("win-").split('-').next().unwrap_or("0").parse().unwrap_or(0);
        let n = req.body.get("n").and_then(Value::as_u64).unwrap_or(1);
        let seed = req.body.get("seed").and_then(Value::as_u64).unwrap_or(0);
        let shapes: Vec<u32> = (0..n).map(|i| ((seed + i) % 4) as u32).collect();
        let choices: Vec<Value> = shapes
            .iter()
            .enumerate()
            .map(|(i, &shape)| {
                let q = if shape == winner { 9.0 } else { 1.0 };
                let finish = if shape >= 2 { "tool_calls" } else { "stop" };
                json!({"index": i, "message": agent_message(shape, q), "logprobs": null,
                       "finish_reason": finish, "stop_reason": null})
            })
            .collect();
        let completion = 20 * n;
        let mut usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion});
        if !model.ends_with("-plain") {
            let reasoning: u64 = shapes.iter().map(|&s| agent_reasoning_tokens(s)).sum();
            usage["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
        }
        Reply::Json(
            200,
            json!({"id": format!("chatcmpl-{seed}"), "object": "chat.completion", "created": 1700000000,
                   "model": model, "choices": choices, "usage": usage}),
        )
    }
}

/// Reassembles the message of choice `index` from a stream's chunks as OpenAI's SDK accumulates
/// deltas: strings appended, tool calls merged by their `index` (which is then dropped), objects
/// merged, anything else set.
pub fn reassemble(chunks: &[Value], index: u64) -> Value {
    fn merge(into: &mut serde_json::Map<String, Value>, delta: &serde_json::Map<String, Value>) {
        for (key, value) in delta {
            match (into.get_mut(key), value) {
                (Some(Value::String(acc)), Value::String(more)) => acc.push_str(more),
                (Some(Value::Array(acc)), Value::Array(more)) if key == "tool_calls" => {
                    for call in more {
                        let i = call["index"].as_u64().unwrap() as usize;
                        if acc.len() <= i {
                            acc.resize(i + 1, json!({}));
                        }
                        merge(acc[i].as_object_mut().unwrap(), call.as_object().unwrap());
                    }
                }
                (None, Value::Array(more)) if key == "tool_calls" => {
                    into.insert(key.clone(), json!([]));
                    merge(into, &serde_json::Map::from_iter([(key.clone(), Value::Array(more.clone()))]));
                }
                (Some(Value::Object(acc)), Value::Object(more)) => merge(acc, more),
                _ => {
                    into.insert(key.clone(), value.clone());
                }
            }
        }
    }
    let mut message = serde_json::Map::new();
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            if choice["index"] == index {
                merge(&mut message, choice["delta"].as_object().unwrap());
            }
        }
    }
    if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
        for call in calls {
            call.as_object_mut().unwrap().remove("index");
        }
    }
    Value::Object(message)
}

/// Serves `requests` through a proxy configured with `cfg` (plus a recorder), replays the
/// recording as recorded with the same config, and returns the records and the picks.
pub async fn live_and_replayed(cfg: &str, requests: Vec<Value>) -> (Vec<Value>, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let cfg = format!("{cfg}\n[recorder]\npath = \"{}\"\n", samples.display());
    let config_path = dir.path().join("bestofn.toml");
    std::fs::write(&config_path, &cfg).unwrap();
    let proxy = Bestofn::start(&cfg);
    for (i, body) in requests.iter().enumerate() {
        let id = format!("req-{i}");
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[("x-request-id", &id)]).await;
        assert_eq!(status, 200, "{resp}");
    }
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&samples)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for _ in 0..250 {
        if read().len() == requests.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let records = read();
    assert_eq!(records.len(), requests.len(), "every request was recorded");
    let picks_path = dir.path().join("picks.jsonl");
    let args: Vec<String> = [
        "eval",
        "replay",
        "--samples",
        samples.to_str().unwrap(),
        "--config",
        config_path.to_str().unwrap(),
        "--as-recorded",
        "--picks",
        picks_path.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bestofn(&args)
    })
    .await
    .unwrap();
    assert!(ok, "eval replay failed: {err}");
    let picks: Vec<Value> =
        std::fs::read_to_string(&picks_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    drop(proxy);
    (records, picks)
}
