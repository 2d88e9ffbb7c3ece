//! Load benchmark: what bestofn costs, side by side with a direct call to the upstream.
//!
//! The real `bestofn` binary runs as its own processes (one per configuration), in front of
//! loopback stubs served by this process: an OpenAI-compatible upstream that answers at once
//! (`/instant/v1`) or after a lognormal delay (`/lognormal/v1`, `/held/v1`), JSON or SSE, and a vLLM
//! `/classify` reward model. This process is also the load generator (hyper's pooled client):
//! closed loop (a fixed number of clients, each sending as soon as its last answer arrived) for
//! maximum throughput, and open loop (a fixed request rate whatever the answers do) for latency.
//!
//! Sections, each scenario run against a direct call to the stub first:
//!   1. throughput: closed loop, instant stubs, N = 1 / 4 / 16, n and parallel mode, streaming;
//!   2. latency at a fixed rate (default 500 req/s), with bestofn's overhead three ways: its p99
//!      minus the direct p99, the exact per-request `overhead_us` of bestofn's log lines, and the
//!      `bestofn_overhead_seconds` histogram scraped from /metrics;
//!   3. tail latency under a lognormal upstream (median 200 ms): BoN(N=16) p99 relative to a single
//!      sample's p99, without and with hedging;
//!   4. memory with 1,000 concurrent requests in flight: an upstream taking ~2 s holds them open
//!      at ~500 req/s, a rate the machine serves, so the figure is memory per request in flight
//!      rather than queues of a saturated CPU;
//!   5. a pass-through proxy against nginx (Debian's package, skipped when it is not installed):
//!      nginx serving a fixed chat completion is the origin; direct, nginx as a reverse proxy
//!      (`proxy_pass`, keep-alive upstream), a bare hyper proxy on bestofn's stack and threading
//!      (the floor of that stack; no log) and bestofn N = 1 in front of it, at a light fixed
//!      rate and at saturation; nginx and bestofn log one line per request to a file;
//!   6. bounded upstream concurrency: 1,000 concurrent N = 16 parallel requests against an
//!      upstream taking ~50 ms, unbounded and with `max_in_flight`, with the stub's own count of
//!      concurrent calls;
//!   7. overload: an upstream of fixed capacity (100 calls/s) and 2,000 req/s of N = 8 arriving,
//!      with `max_in_flight` and a deadline, without and with load-aware N: the share answered
//!      200, their latency, and the failures by status.
//!
//! For each scenario: throughput, p50/p90/p99, CPU time of the bestofn process per request (from
//! /proc/PID/stat), and its peak RSS while the scenario ran (VmRSS polled every 10 ms).
//! It prints numbers and asserts none. `scripts/bench.sh` runs it with the micro-benchmarks.
//!
//! Environment (defaults in brackets): BESTOFN_LOAD_SECONDS [3] per closed-loop scenario,
//! BESTOFN_LOAD_CLIENTS [32], BESTOFN_LOAD_RATE [500] req/s and BESTOFN_LOAD_OPEN_SECONDS [5] and BESTOFN_LOAD_ROUNDS [3] for
//! section 2, BESTOFN_LOAD_TAIL_RATE [100] and BESTOFN_LOAD_TAIL_SECONDS [10] for section 3,
//! BESTOFN_LOAD_LIGHT_ROUNDS [10] and BESTOFN_LOAD_LIGHT_SECONDS [1.5] for section 5's light load,
//! BESTOFN_LOAD_MEDIAN_MS [200] and BESTOFN_LOAD_SIGMA [0.5] for the lognormal upstream,
//! BESTOFN_LOAD_CONCURRENT [1000], BESTOFN_LOAD_HOLD_MS [2000] (the upstream's median delay
//! there) and BESTOFN_LOAD_HOLD_SECONDS [8] for sections 4 and 6, BESTOFN_LOAD_BRIEF_MS [50] and
//! BESTOFN_LOAD_MAX_IN_FLIGHT [256] for section 6, BESTOFN_LOAD_LIMITED_SLOTS [10],
//! BESTOFN_LOAD_LIMITED_MS [100], BESTOFN_LOAD_OVERLOAD_RATE [2000], BESTOFN_LOAD_OVERLOAD_SECONDS [5],
//! BESTOFN_LOAD_OVERLOAD_N [8] and BESTOFN_LOAD_OVERLOAD_DEADLINE_MS [1000] for section 7,
//! BESTOFN_LOAD_SECTIONS [1234567] to pick sections,
//! BESTOFN_LOAD_FILTER to run only scenarios whose label contains the text (or one of several
//! separated by `|`), BESTOFN_LOAD_LOG
//! [info] as bestofn's RUST_LOG for its dependencies (bestofn's own lines stay at info, what a
//! deployment logs, one line per request: the harness reads their `overhead_us`),
//! BESTOFN_LOAD_BIN to run another bestofn binary than this build's, BESTOFN_LOAD_THREADS [1]
//! Tokio workers for the stubs and the generator. One is the default: with two, this process and
//! bestofn ran four busy threads on two cores, and preemption put 10 ms on bestofn's p99 at
//! 500 req/s of N=16 parallel sampling (3 ms with one).

// A benchmark harness: failing to set up its own loopback servers should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

// The stubs and the generator share the machine with bestofn: keep their own cost low.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Settings {
    closed_seconds: f64,
    clients: usize,
    rate: f64,
    open_seconds: f64,
    rounds: usize,
    light_rounds: usize,
    light_seconds: f64,
    tail_rate: f64,
    tail_seconds: f64,
    median_ms: f64,
    sigma: f64,
    concurrent: usize,
    hold_ms: f64,
    hold_seconds: f64,
    brief_ms: f64,
    max_in_flight: usize,
    limited_slots: usize,
    limited_ms: u64,
    overload_rate: f64,
    overload_seconds: f64,
    overload_n: u32,
    overload_deadline_ms: u64,
    sections: String,
    filter: Option<String>,
    log: String,
    threads: usize,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            closed_seconds: env_or("BESTOFN_LOAD_SECONDS", 3.0),
            clients: env_or("BESTOFN_LOAD_CLIENTS", 32),
            rate: env_or("BESTOFN_LOAD_RATE", 500.0),
            open_seconds: env_or("BESTOFN_LOAD_OPEN_SECONDS", 5.0),
            rounds: env_or("BESTOFN_LOAD_ROUNDS", 3),
            light_rounds: env_or("BESTOFN_LOAD_LIGHT_ROUNDS", 10),
            light_seconds: env_or("BESTOFN_LOAD_LIGHT_SECONDS", 1.5),
            tail_rate: env_or("BESTOFN_LOAD_TAIL_RATE", 100.0),
            tail_seconds: env_or("BESTOFN_LOAD_TAIL_SECONDS", 10.0),
            median_ms: env_or("BESTOFN_LOAD_MEDIAN_MS", 200.0),
            sigma: env_or("BESTOFN_LOAD_SIGMA", 0.5),
            concurrent: env_or("BESTOFN_LOAD_CONCURRENT", 1000),
            hold_ms: env_or("BESTOFN_LOAD_HOLD_MS", 2000.0),
            hold_seconds: env_or("BESTOFN_LOAD_HOLD_SECONDS", 8.0),
            brief_ms: env_or("BESTOFN_LOAD_BRIEF_MS", 50.0),
            max_in_flight: env_or("BESTOFN_LOAD_MAX_IN_FLIGHT", 256),
            limited_slots: env_or("BESTOFN_LOAD_LIMITED_SLOTS", 10),
            limited_ms: env_or("BESTOFN_LOAD_LIMITED_MS", 100),
            overload_rate: env_or("BESTOFN_LOAD_OVERLOAD_RATE", 2000.0),
            overload_seconds: env_or("BESTOFN_LOAD_OVERLOAD_SECONDS", 5.0),
            overload_n: env_or("BESTOFN_LOAD_OVERLOAD_N", 8),
            overload_deadline_ms: env_or("BESTOFN_LOAD_OVERLOAD_DEADLINE_MS", 1000),
            sections: env_or("BESTOFN_LOAD_SECTIONS", "1234567".to_string()),
            filter: std::env::var("BESTOFN_LOAD_FILTER").ok().filter(|f| !f.is_empty()),
            log: env_or("BESTOFN_LOAD_LOG", "info".to_string()),
            threads: env_or("BESTOFN_LOAD_THREADS", 1),
        }
    }

    fn wants(&self, label: &str) -> bool {
        self.filter.as_ref().is_none_or(|f| f.split('|').any(|f| label.contains(f)))
    }
}

// ----------------------------------------------------------------------------------------------
// Stubs

/// Candidate text of a realistic size (~500 bytes, ~120 tokens), so that JSON handling and copies
/// of candidate text cost what they would.
const FILLER: &str = "Let us work through this step by step. First we restate the question in our own words, \
then we list what is known and what is asked. Next we check each quantity against the units it should carry, \
and we make sure no assumption slipped in unannounced. With the pieces in place the computation itself is short, \
and we verify it by substituting the result back into the original statement. ";

#[derive(Clone, Copy)]
struct LogNormal {
    median_ms: f64,
    sigma: f64,
}

impl LogNormal {
    fn sample(&self) -> Duration {
        // Box-Muller: a standard normal from two uniforms.
        let (u1, u2) = (fastrand::f64().max(1e-12), fastrand::f64());
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_secs_f64(self.median_ms * (self.sigma * z).exp() / 1000.0)
    }
}

fn upstream_json(n: u64) -> Value {
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            json!({"index": i, "message": {"role": "assistant", "content": format!("{FILLER}Candidate {i}: the answer is {}.", i % 3)},
                "logprobs": null, "finish_reason": "stop"})
        })
        .collect();
    json!({"id": "chatcmpl-stub", "object": "chat.completion", "created": 1, "model": "stub", "choices": choices,
        "usage": {"prompt_tokens": 24, "completion_tokens": 120 * n, "total_tokens": 24 + 120 * n}})
}

/// The SSE answer of an OpenAI-compatible server: a role delta, the text in pieces, the finish
/// chunk, a usage chunk when asked, and `[DONE]`.
fn upstream_sse(include_usage: bool) -> Vec<u8> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1, "model": "stub",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let text = format!("{FILLER}The answer is 4.");
    for piece in text.as_bytes().chunks(32) {
        events.push(chunk(json!({"content": String::from_utf8_lossy(piece)}), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1, "model": "stub",
            "choices": [], "usage": {"prompt_tokens": 24, "completion_tokens": 120, "total_tokens": 144}}));
    }
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&serde_json::to_vec(&e).unwrap());
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn rm_json(body: &Value) -> Value {
    let data: Vec<Value> = body["input"]
        .as_array()
        .map(|a| {
            a.iter()
                .enumerate()
                .map(|(i, t)| {
                    let reward = (t.as_str().unwrap_or("").len() % 97) as f64 / 10.0 + i as f64 * 0.01;
                    json!({"index": i, "label": "LABEL_0", "probs": [reward], "num_classes": 1})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"id": "classify-stub", "object": "list", "created": 1, "model": "rm", "data": data,
        "usage": {"prompt_tokens": 100, "total_tokens": 100, "completion_tokens": 0}})
}

/// What the stub reads of a request; the rest is skipped, as a fast server would.
#[derive(serde::Deserialize)]
struct StubRequest {
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StubStreamOptions>,
}

#[derive(serde::Deserialize)]
struct StubStreamOptions {
    include_usage: Option<bool>,
}

/// The upstream's answers depend only on `n` and `stream`: made once, served as shared bytes,
/// so the stubs spend little of the CPU they share with bestofn.
struct Answers {
    json_by_n: Vec<Bytes>,
    sse: [Bytes; 2],
}

fn answers() -> &'static Answers {
    static ANSWERS: std::sync::OnceLock<Answers> = std::sync::OnceLock::new();
    ANSWERS.get_or_init(|| Answers {
        json_by_n: (0..=64).map(|n| Bytes::from(serde_json::to_vec(&upstream_json(n)).unwrap())).collect(),
        sse: [Bytes::from(upstream_sse(false)), Bytes::from(upstream_sse(true))],
    })
}

/// The upstream's delays: `/lognormal/v1` for tail latency, `/held/v1` (same shape, a longer
/// median) to hold many requests open at a rate the machine can serve, `/brief/v1` (a short
/// median) to keep many calls in flight with a bounded proxy, `/limited/v1` a server of fixed
/// capacity (`limited_slots` calls at a time, each taking `limited_ms`; the rest wait in its
/// queue, as vLLM's scheduler would hold them).
#[derive(Clone, Copy)]
struct Delays {
    lognormal: LogNormal,
    held: LogNormal,
    brief: LogNormal,
    limited_slots: usize,
    limited_ms: u64,
}

/// Upstream calls the stub is serving now and the most it served at once since the last reset:
/// the stub's own count, to check bestofn's `max_in_flight` from the other side.
static STUB_CALLS: AtomicUsize = AtomicUsize::new(0);
static STUB_CALLS_MAX: AtomicUsize = AtomicUsize::new(0);

/// Counts one upstream call while it is served.
struct StubCall;

impl StubCall {
    fn start() -> StubCall {
        let now = STUB_CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        STUB_CALLS_MAX.fetch_max(now, Ordering::Relaxed);
        StubCall
    }
}

impl Drop for StubCall {
    fn drop(&mut self) {
        STUB_CALLS.fetch_sub(1, Ordering::Relaxed);
    }
}

fn limited_server(slots: usize) -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| tokio::sync::Semaphore::new(slots))
}

async fn stub_answer(path: &str, body: &[u8], delays: Delays) -> hyper::Response<Full<Bytes>> {
    let (bytes, content_type) = if path == "/classify" {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        (Bytes::from(serde_json::to_vec(&rm_json(&value)).unwrap()), "application/json")
    } else {
        let _counted = StubCall::start();
        if path.starts_with("/lognormal/") {
            tokio::time::sleep(delays.lognormal.sample()).await;
        } else if path.starts_with("/held/") {
            tokio::time::sleep(delays.held.sample()).await;
        } else if path.starts_with("/brief/") {
            tokio::time::sleep(delays.brief.sample()).await;
        } else if path.starts_with("/limited/") {
            let _slot = limited_server(delays.limited_slots).acquire().await.unwrap();
            tokio::time::sleep(Duration::from_millis(delays.limited_ms)).await;
        }
        let request: StubRequest =
            serde_json::from_slice(body).unwrap_or(StubRequest { n: None, stream: None, stream_options: None });
        if request.stream == Some(true) {
            let usage = request.stream_options.and_then(|o| o.include_usage) == Some(true);
            (answers().sse[usize::from(usage)].clone(), "text/event-stream")
        } else {
            let n = request.n.unwrap_or(1);
            match answers().json_by_n.get(n as usize) {
                Some(b) => (b.clone(), "application/json"),
                None => (Bytes::from(serde_json::to_vec(&upstream_json(n)).unwrap()), "application/json"),
            }
        }
    };
    let mut resp = hyper::Response::new(Full::new(bytes));
    resp.headers_mut().insert("content-type", content_type.parse().unwrap());
    resp
}

/// The stub server: upstream at `/instant/v1`, `/lognormal/v1` and `/held/v1`, RM at `/classify`.
async fn start_stub(delays: Delays) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // As a production upstream would: no Nagle delay on small writes.
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    Ok::<_, Infallible>(stub_answer(&path, &body, delays).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

// ----------------------------------------------------------------------------------------------
// bestofn processes

/// One `bestofn serve` process; its log (stderr) goes to a file so it can be read for the
/// per-request overhead.
struct Proxy {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    /// Stops bestofn as a deployment does, with SIGTERM, so that it exits through its own
    /// shutdown; killed if it has not exited within 10 s.
    fn drop(&mut self) {
        let terminated = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        if terminated.is_ok_and(|s| s.success()) {
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(stub: SocketAddr, route: &str, sampling: &str, hedge: u32, log_filter: &str) -> Proxy {
        Proxy::start_with(&format!("http://{stub}/{route}/v1"), stub, sampling, hedge, log_filter, "", "")
    }

    /// A bestofn in front of `upstream` (a base URL), with extra `[upstream]` and `[policy]` lines.
    fn start_with(
        upstream: &str,
        stub: SocketAddr,
        sampling: &str,
        hedge: u32,
        log_filter: &str,
        upstream_extra: &str,
        policy_extra: &str,
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bestofn.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nmax_concurrent_requests = 8192\n\n[upstream]\nbase_url = \"{upstream}\"\nsampling = \"{sampling}\"\nhedge = {hedge}\ntimeout_ms = 30000\n{upstream_extra}\n\n\
                 [scorers.rm]\nkind = \"reward_http\"\napi = \"vllm_classify\"\nurl = \"http://{stub}/classify\"\nmodel = \"rm\"\n\n\
                 [policy]\nn = 1\nscorer = \"rm\"\n{policy_extra}\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("bestofn.log");
        // BESTOFN_LOAD_BIN runs another build (a previous release, a different allocator).
        let binary = std::env::var("BESTOFN_LOAD_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_bestofn").to_string());
        let child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", format!("{log_filter},bestofn=info"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("listening on http://").nth(1) {
                break rest.lines().next().unwrap().trim().parse().unwrap();
            }
            assert!(started.elapsed() < Duration::from_secs(30), "bestofn did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Proxy { addr, child, log, _dir: dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    /// The log written since byte `from`.
    fn log_since(&self, from: u64) -> String {
        let mut file = std::fs::File::open(&self.log).unwrap();
        file.seek(SeekFrom::Start(from)).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        text
    }

    /// The `overhead_us` fields of the log lines written since byte `from`.
    fn overheads_since(&self, from: u64) -> Vec<u64> {
        let text = self.log_since(from);
        text.lines().filter_map(|l| l.split("overhead_us=").nth(1)?.split_whitespace().next()?.parse().ok()).collect()
    }
}

/// CPU time (user + system, all threads) of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) ; utime and stime are the 14th and
    // 15th fields overall, in clock ticks of 1/100 s (USER_HZ on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// A `VmRSS`/`VmHWM`-style field of /proc/PID/status, in MiB.
fn status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Cumulative `bestofn_overhead_seconds` buckets (upper bound, count) from a /metrics text.
fn overhead_buckets(metrics: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("bestofn_overhead_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q`, from the difference of two scrapes.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|&(le, c)| (le, c - before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|&&(_, c)| c >= q * total).map(|&(le, _)| le)
}

// ----------------------------------------------------------------------------------------------
// Load generator

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector)
}

#[derive(Clone)]
struct Target {
    uri: hyper::Uri,
    body: Bytes,
    /// Best-of-N done by the client itself, without bestofn: the baseline of the proxy's
    /// overhead at N > 1.
    client_side: Option<ClientSideBestOf>,
}

/// The client samples `n` candidates from the upstream (one call with `n`, or `n` concurrent
/// calls) and scores them with one RM call, as bestofn would.
#[derive(Clone)]
struct ClientSideBestOf {
    n: u32,
    parallel: bool,
    rm: hyper::Uri,
}

impl Target {
    fn new(url: &str, body: &Value) -> Target {
        Target { uri: url.parse().unwrap(), body: Bytes::from(serde_json::to_vec(body).unwrap()), client_side: None }
    }
}

async fn post_for_json(client: &HttpClient, uri: &hyper::Uri, body: Bytes) -> Option<Value> {
    let request =
        hyper::Request::post(uri.clone()).header("content-type", "application/json").body(Full::new(body)).unwrap();
    let response = client.request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    serde_json::from_slice(&response.into_body().collect().await.ok()?.to_bytes()).ok()
}

/// Client-side best-of-N: the candidates' texts, then their rewards; the latency of the whole.
async fn send_client_side(client: &HttpClient, target: &Target, bon: &ClientSideBestOf) -> Option<Duration> {
    let started = Instant::now();
    let texts = |v: &Value| -> Vec<Value> {
        v["choices"].as_array().map(|c| c.iter().map(|c| c["message"]["content"].clone()).collect()).unwrap_or_default()
    };
    let mut candidates = Vec::new();
    if bon.parallel {
        let calls = (0..bon.n).map(|_| post_for_json(client, &target.uri, target.body.clone()));
        for answer in futures_util::future::join_all(calls).await {
            candidates.extend(texts(&answer?));
        }
    } else {
        let mut body: Value = serde_json::from_slice(&target.body).ok()?;
        body["n"] = json!(bon.n);
        candidates = texts(&post_for_json(client, &target.uri, Bytes::from(serde_json::to_vec(&body).ok()?)).await?);
    }
    let scored = post_for_json(
        client,
        &bon.rm,
        Bytes::from(serde_json::to_vec(&json!({"model": "rm", "input": candidates})).ok()?),
    )
    .await?;
    (scored["data"].as_array()?.len() == bon.n as usize).then(|| started.elapsed())
}

/// Latency to the last body byte, or the HTTP status of a failed request (0: a transport error
/// or a stream that did not end with `[DONE]`).
async fn send(client: &HttpClient, target: &Target) -> Result<Duration, u16> {
    if let Some(bon) = &target.client_side {
        return send_client_side(client, target, bon).await.ok_or(0);
    }
    let started = Instant::now();
    let request = hyper::Request::post(target.uri.clone())
        .header("content-type", "application/json")
        .body(Full::new(target.body.clone()))
        .unwrap();
    let response = client.request(request).await.map_err(|_| 0u16)?;
    let status = response.status().as_u16();
    let ok = response.status().is_success();
    let streamed =
        response.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = response.into_body();
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| 0u16)?;
        if let Some(data) = frame.data_ref()
            && streamed
        {
            tail.extend_from_slice(data);
            let keep = tail.len().saturating_sub(32);
            tail.drain(..keep);
        }
    }
    let total = started.elapsed();
    let complete = !streamed || tail.windows(6).any(|w| w == b"[DONE]");
    match (ok, complete) {
        (true, true) => Ok(total),
        (true, false) => Err(0),
        (false, _) => Err(status),
    }
}

#[derive(Default)]
struct Recorded {
    latencies: Vec<Duration>,
    errors: usize,
    /// Failed requests by HTTP status (0: transport error or a broken stream).
    failures: std::collections::BTreeMap<u16, usize>,
    elapsed: Duration,
    /// Open loop: the largest delay between a scheduled send and the actual one.
    max_lag: Duration,
}

impl Recorded {
    fn merge(&mut self, results: Vec<Result<Duration, u16>>) {
        for r in results {
            match r {
                Ok(latency) => self.latencies.push(latency),
                Err(status) => {
                    self.errors += 1;
                    *self.failures.entry(status).or_default() += 1;
                }
            }
        }
    }

    fn finish(mut self, elapsed: Duration) -> Recorded {
        self.latencies.sort();
        self.elapsed = elapsed;
        self
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, q: f64) -> f64 {
        quantile(&self.latencies, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

/// The `q` quantile of sorted values (nearest rank), None when there are none.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize).copied()
}

/// `clients` concurrent clients, each sending its next request when its last answer is in.
async fn closed_loop(client: &HttpClient, target: &Target, clients: usize, seconds: f64) -> Recorded {
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                while Instant::now() < stop {
                    results.push(send(&client, &target).await);
                }
                results
            })
        })
        .collect();
    let mut recorded = Recorded::default();
    for w in workers {
        recorded.merge(w.await.unwrap());
    }
    recorded.finish(started.elapsed())
}

/// `rate` requests a second for `seconds`, each sent on schedule whatever the earlier ones do.
async fn open_loop(client: &HttpClient, target: &Target, rate: f64, seconds: f64) -> Recorded {
    let total = (rate * seconds).round() as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut max_lag = Duration::ZERO;
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        let scheduled = ticker.tick().await;
        max_lag = max_lag.max(scheduled.elapsed());
        let (client, target) = (client.clone(), target.clone());
        tasks.push(tokio::spawn(async move { send(&client, &target).await }));
    }
    let mut results = Vec::with_capacity(total);
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let mut recorded = Recorded::default();
    recorded.merge(results);
    recorded.max_lag = max_lag;
    recorded.finish(started.elapsed())
}

// ----------------------------------------------------------------------------------------------
// Scenarios

/// What one scenario measured of the bestofn process (absent for a direct call).
#[derive(Default)]
struct ProxyCost {
    cpu_us_per_request: f64,
    rss_max_mib: f64,
    /// Exact per-request overhead from the log lines, sorted, in µs.
    overheads_us: Vec<u64>,
    /// The p99 bucket bound of the /metrics overhead histogram, in ms.
    metric_p99_ms: Option<f64>,
    metric_mean_ms: f64,
}

struct Measured {
    load: Recorded,
    proxy: Option<ProxyCost>,
    bench_cpu_us_per_request: f64,
}

enum Load {
    Closed(usize, f64),
    Open(f64, f64),
}

async fn scrape(client: &HttpClient, proxy: &Proxy) -> String {
    let uri: hyper::Uri = format!("http://{}/metrics", proxy.addr).parse().unwrap();
    let request = hyper::Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    match client.request(request).await {
        Ok(r) => String::from_utf8_lossy(&r.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default())
            .into_owned(),
        Err(_) => String::new(),
    }
}

fn metric_value(metrics: &str, key: &str) -> f64 {
    metrics.lines().find_map(|l| l.strip_prefix(key)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
}

async fn measure(client: &HttpClient, target: &Target, load: Load, proxy: Option<&Proxy>) -> Measured {
    let before_metrics = match proxy {
        Some(p) => scrape(client, p).await,
        None => String::new(),
    };
    let log_from = proxy.map_or(0, Proxy::log_len);
    let cpu_before = proxy.map_or(0.0, |p| cpu_seconds(p.pid()));
    let bench_cpu_before = cpu_seconds(std::process::id());
    // Peak RSS while the scenario runs: VmHWM is the process's lifetime peak, so poll VmRSS.
    let polling = Arc::new(AtomicBool::new(true));
    let poller = proxy.map(|p| {
        let (pid, polling) = (p.pid().to_string(), polling.clone());
        tokio::spawn(async move {
            let mut max = 0.0f64;
            while polling.load(Ordering::Relaxed) {
                max = max.max(status_mib(&pid, "VmRSS:"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            max.max(status_mib(&pid, "VmRSS:"))
        })
    });
    let recorded = match load {
        Load::Closed(clients, seconds) => closed_loop(client, target, clients, seconds).await,
        Load::Open(rate, seconds) => open_loop(client, target, rate, seconds).await,
    };
    polling.store(false, Ordering::Relaxed);
    let done = recorded.latencies.len().max(1) as f64;
    let bench_cpu_us_per_request = (cpu_seconds(std::process::id()) - bench_cpu_before) * 1e6 / done;
    let proxy = match (proxy, poller) {
        (Some(p), Some(poller)) => {
            let cpu_us_per_request = (cpu_seconds(p.pid()) - cpu_before) * 1e6 / done;
            let rss_max_mib = poller.await.unwrap();
            let after_metrics = scrape(client, p).await;
            let (b, a) = (overhead_buckets(&before_metrics), overhead_buckets(&after_metrics));
            let sum = metric_value(&after_metrics, "bestofn_overhead_seconds_sum ")
                - metric_value(&before_metrics, "bestofn_overhead_seconds_sum ");
            let count = metric_value(&after_metrics, "bestofn_overhead_seconds_count ")
                - metric_value(&before_metrics, "bestofn_overhead_seconds_count ");
            // A failed request is explained by bestofn's own warnings, when it logged any.
            if recorded.errors > 0 {
                let log = p.log_since(log_from);
                for line in log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).take(3) {
                    println!("    (bestofn logged: {line})");
                }
            }
            let mut overheads_us = p.overheads_since(log_from);
            overheads_us.sort_unstable();
            Some(ProxyCost {
                cpu_us_per_request,
                rss_max_mib,
                overheads_us,
                metric_p99_ms: bucket_quantile(&b, &a, 0.99).map(|s| s * 1000.0),
                metric_mean_ms: if count > 0.0 { sum / count * 1000.0 } else { f64::NAN },
            })
        }
        _ => None,
    };
    Measured { load: recorded, proxy, bench_cpu_us_per_request }
}

fn chat_body(n: Option<u32>, stream: bool) -> Value {
    let mut body = json!({"model": "stub", "messages": [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "What is 2 + 2? Explain briefly."}], "max_tokens": 128, "temperature": 0.8});
    if let Some(n) = n {
        body["bestofn"] = json!({"n": n});
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("≤{v}"))
}

fn exact_us(sorted: &[u64], q: f64) -> String {
    quantile(sorted, q).map_or("-".into(), |us| us.to_string())
}

struct Proxies {
    n: Proxy,
    parallel: Proxy,
    slow_n: Proxy,
    slow_parallel: Proxy,
    held_n: Proxy,
    held_parallel: Proxy,
    slow_hedge1: Proxy,
    slow_hedge2: Proxy,
}

/// One row of a section: a label, the URL, the body, and the proxy it goes through (if any).
struct Scenario<'a> {
    label: String,
    target: Target,
    proxy: Option<&'a Proxy>,
}

fn scenario<'a>(label: &str, url: &str, n: Option<u32>, stream: bool, proxy: Option<&'a Proxy>) -> Scenario<'a> {
    Scenario { label: label.to_string(), target: Target::new(url, &chat_body(n, stream)), proxy }
}

/// Best-of-N done by the load generator itself against the stubs: what bestofn is compared with.
fn client_side<'a>(label: &str, direct: &str, rm: &str, n: u32, parallel: bool) -> Scenario<'a> {
    let mut sc = scenario(label, direct, None, false, None);
    sc.target.client_side = Some(ClientSideBestOf { n, parallel, rm: rm.parse().unwrap() });
    sc
}

fn throughput_scenarios<'a>(direct: &str, rm: &str, p: &'a Proxies) -> Vec<Scenario<'a>> {
    let (n, par) = (p.n.url(), p.parallel.url());
    vec![
        scenario("direct", direct, None, false, None),
        scenario("bestofn N=1 pass-through", &n, Some(1), false, Some(&p.n)),
        client_side("client-side N=4 n mode (no proxy)", direct, rm, 4, false),
        scenario("bestofn N=4 n mode", &n, Some(4), false, Some(&p.n)),
        client_side("client-side N=16 n mode (no proxy)", direct, rm, 16, false),
        scenario("bestofn N=16 n mode", &n, Some(16), false, Some(&p.n)),
        client_side("client-side N=4 parallel (no proxy)", direct, rm, 4, true),
        scenario("bestofn N=4 parallel", &par, Some(4), false, Some(&p.parallel)),
        client_side("client-side N=16 parallel (no proxy)", direct, rm, 16, true),
        scenario("bestofn N=16 parallel", &par, Some(16), false, Some(&p.parallel)),
        scenario("direct, streaming", direct, None, true, None),
        scenario("bestofn N=1 streaming pass-through", &n, Some(1), true, Some(&p.n)),
        scenario("bestofn N=4 n mode, streaming", &n, Some(4), true, Some(&p.n)),
        scenario("bestofn N=16 n mode, streaming", &n, Some(16), true, Some(&p.n)),
        scenario("bestofn N=16 parallel, streaming", &par, Some(16), true, Some(&p.parallel)),
    ]
}

async fn section_throughput(
    s: &Settings,
    client: &HttpClient,
    direct: &str,
    rm: &str,
    p: &Proxies,
) -> Vec<(String, f64)> {
    println!(
        "\n## 1. Throughput: closed loop, {} clients, {} s per scenario, stubs answer at once",
        s.clients, s.closed_seconds
    );
    println!(
        "{:<38} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>10} {:>8}",
        "scenario", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "proxy CPU", "per call", "bench CPU", "RSS MiB"
    );
    println!(
        "{:<38} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>10} {:>8}",
        "", "", "", "", "", "", "µs/req", "µs", "µs/req", "max"
    );
    let mut rates = Vec::new();
    for sc in throughput_scenarios(direct, rm, p) {
        if !s.wants(&sc.label) {
            continue;
        }
        let m = measure(client, &sc.target, Load::Closed(s.clients, s.closed_seconds), sc.proxy).await;
        let l = &m.load;
        let (cpu, per_call, rss) = m.proxy.as_ref().map_or(("-".into(), "-".into(), "-".into()), |c| {
            let calls = backend_calls(&sc.label) as f64;
            (
                format!("{:.0}", c.cpu_us_per_request),
                format!("{:.0}", c.cpu_us_per_request / calls),
                format!("{:.1}", c.rss_max_mib),
            )
        });
        println!(
            "{:<38} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>10} {:>10} {:>10.0} {:>8}",
            sc.label,
            l.rate(),
            l.ms(0.5),
            l.ms(0.9),
            l.ms(0.99),
            l.errors,
            cpu,
            per_call,
            m.bench_cpu_us_per_request,
            rss
        );
        rates.push((sc.label, l.rate()));
    }
    rates
}

/// Backend calls bestofn makes per request of a scenario: N upstream calls in parallel mode or
/// one in n mode, plus one RM call when N > 1.
fn backend_calls(label: &str) -> u32 {
    let n: u32 = label.split("N=").nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).unwrap_or(1);
    match n {
        1 => 1,
        n if label.contains("parallel") => n + 1,
        _ => 2,
    }
}

/// The scenario without bestofn that a bestofn scenario is compared with: a direct call for
/// N = 1, client-side best-of-N (same N, same sampling, then one RM call) for N > 1.
fn baseline_of(label: &str) -> String {
    let streaming = label.ends_with(", streaming");
    if label.contains("N=1 ") {
        return if streaming { "direct, streaming".into() } else { "direct".into() };
    }
    let core = label.trim_start_matches("bestofn ").trim_end_matches(", streaming");
    format!("client-side {core} (no proxy)")
}

/// Every scenario at the fixed rate, in `s.rounds` interleaved rounds: the machine is a VM whose
/// pauses of 5-15 ms land on a few requests of a run and move its p99 by a millisecond or more,
/// so each scenario's median round is reported.
async fn interleaved_rounds(
    s: &Settings,
    client: &HttpClient,
    scenarios: &[Scenario<'_>],
    count: usize,
    seconds: f64,
) -> Vec<Vec<Measured>> {
    let mut rounds: Vec<Vec<Measured>> = scenarios.iter().map(|_| Vec::new()).collect();
    for _ in 0..count.max(1) {
        for (sc, runs) in scenarios.iter().zip(rounds.iter_mut()) {
            runs.push(measure(client, &sc.target, Load::Open(s.rate, seconds), sc.proxy).await);
        }
    }
    rounds
}

/// The `q` quantile in ms of the median round.
fn median(runs: &[Measured], q: f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|m| m.load.ms(q)).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `q` quantile in ms of every round's latencies taken together.
fn pooled(runs: &[Measured], q: f64) -> f64 {
    let mut all: Vec<Duration> = runs.iter().flat_map(|m| m.load.latencies.iter().copied()).collect();
    all.sort_unstable();
    quantile(&all, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// The overheads bestofn logged over all rounds, sorted, in µs.
fn logged_overheads(runs: &[Measured]) -> Vec<u64> {
    let mut logged: Vec<u64> = runs.iter().flat_map(|m| m.proxy.iter().flat_map(|c| c.overheads_us.clone())).collect();
    logged.sort_unstable();
    logged
}

/// Returns (label, bestofn p99 minus its baseline's p99 in ms, exact overhead p99 from the logs).
async fn section_fixed_rate(
    s: &Settings,
    client: &HttpClient,
    direct: &str,
    rm: &str,
    p: &Proxies,
) -> Vec<(String, f64, f64)> {
    println!(
        "\n## 2. Latency at a fixed rate: open loop, {} req/s for {} s per scenario and round, {} interleaved rounds (median round shown), stubs answer at once",
        s.rate, s.open_seconds, s.rounds
    );
    println!(
        "{:<38} {:>7} {:>7} {:>7} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "scenario",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "Δp50 ms",
        "Δp99 ms",
        "log p50",
        "log p99",
        "metric",
        "metric",
        "CPU"
    );
    println!(
        "{:<38} {:>7} {:>7} {:>7} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "", "", "", "", "", "vs base", "vs base", "µs", "µs", "p99 ms", "mean ms", "µs/req"
    );
    let scenarios: Vec<Scenario> = throughput_scenarios(direct, rm, p)
        .into_iter()
        .filter(|sc| !sc.label.contains("N=4") && (sc.proxy.is_none() || s.wants(&sc.label)))
        .collect();
    let rounds = interleaved_rounds(s, client, &scenarios, s.rounds, s.open_seconds).await;
    let mut out = Vec::new();
    let mut baselines: Vec<(String, (f64, f64))> = Vec::new();
    for (sc, runs) in scenarios.iter().zip(&rounds) {
        let (p50, p90, p99) = (median(runs, 0.5), median(runs, 0.9), median(runs, 0.99));
        let errors: usize = runs.iter().map(|m| m.load.errors).sum();
        let max_lag = runs.iter().map(|m| m.load.max_lag).max().unwrap_or_default();
        let base = baselines
            .iter()
            .find(|(label, _)| *label == baseline_of(&sc.label))
            .map_or((f64::NAN, f64::NAN), |(_, b)| *b);
        let (d50, d99) = if sc.proxy.is_none() {
            baselines.push((sc.label.clone(), (p50, p99)));
            ("-".to_string(), "-".to_string())
        } else {
            (format!("{:+.2}", p50 - base.0), format!("{:+.2}", p99 - base.1))
        };
        // The logged overheads of all rounds together; the metric and CPU of the median round.
        let logged = logged_overheads(runs);
        let middle = &runs[runs.len() / 2];
        let (log50, log99, metric99, metric_mean, cpu) = match &middle.proxy {
            Some(c) => (
                exact_us(&logged, 0.5),
                exact_us(&logged, 0.99),
                fmt_opt(c.metric_p99_ms),
                if c.metric_mean_ms.is_nan() { "-".into() } else { format!("{:.3}", c.metric_mean_ms) },
                format!("{:.0}", c.cpu_us_per_request),
            ),
            None => Default::default(),
        };
        println!(
            "{:<38} {:>7.2} {:>7.2} {:>7.2} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}",
            sc.label, p50, p90, p99, errors, d50, d99, log50, log99, metric99, metric_mean, cpu
        );
        if max_lag > Duration::from_millis(5) {
            println!(
                "    (the generator fell behind its schedule by up to {:.1} ms in some round)",
                max_lag.as_secs_f64() * 1000.0
            );
        }
        if sc.proxy.is_some() {
            let log99 = quantile(&logged, 0.99).map_or(f64::NAN, |us| us as f64 / 1000.0);
            out.push((sc.label.clone(), p99 - base.1, log99));
        }
    }
    out
}

/// Returns (label, p99 relative to the single sample's p99).
async fn section_tail(s: &Settings, client: &HttpClient, direct: &str, p: &Proxies) -> Vec<(String, f64)> {
    println!(
        "\n## 3. Tail latency: upstream delay lognormal (median {} ms, sigma {}), open loop {} req/s for {} s",
        s.median_ms, s.sigma, s.tail_rate, s.tail_seconds
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8} {:>6} {:>14}",
        "scenario", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors", "p99 / single"
    );
    let scenarios = [
        scenario("single sample, direct", direct, None, false, None),
        scenario("bestofn N=1 pass-through", &p.slow_n.url(), Some(1), false, Some(&p.slow_n)),
        scenario("bestofn N=16 parallel, no hedging", &p.slow_parallel.url(), Some(16), false, Some(&p.slow_parallel)),
        scenario("bestofn N=16 parallel, hedge h=1", &p.slow_hedge1.url(), Some(16), false, Some(&p.slow_hedge1)),
        scenario("bestofn N=16 parallel, hedge h=2", &p.slow_hedge2.url(), Some(16), false, Some(&p.slow_hedge2)),
    ];
    let mut single = f64::NAN;
    let mut out = Vec::new();
    for sc in scenarios {
        if sc.proxy.is_some() && !s.wants(&sc.label) {
            continue;
        }
        let m = measure(client, &sc.target, Load::Open(s.tail_rate, s.tail_seconds), sc.proxy).await;
        let l = &m.load;
        if sc.proxy.is_none() {
            single = l.ms(0.99);
        }
        let ratio = l.ms(0.99) / single;
        println!(
            "{:<44} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>13.2}x",
            sc.label,
            l.rate(),
            l.ms(0.5),
            l.ms(0.9),
            l.ms(0.99),
            l.errors,
            ratio
        );
        out.push((sc.label, ratio));
    }
    out
}

/// Returns (label, peak RSS in MiB).
async fn section_memory(s: &Settings, client: &HttpClient, p: &Proxies) -> Vec<(String, f64)> {
    println!(
        "\n## 4. Memory: {} concurrent requests held open by an upstream taking {} ms (median, lognormal), closed loop for {} s",
        s.concurrent, s.hold_ms, s.hold_seconds
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>6} {:>10} {:>9}",
        "scenario", "req/s", "p50 ms", "p99 ms", "errors", "proxy CPU", "RSS MiB"
    );
    println!("{:<44} {:>8} {:>8} {:>8} {:>6} {:>10} {:>9}", "", "", "", "", "", "µs/req", "max");
    let scenarios = [
        scenario("bestofn N=1 pass-through", &p.held_n.url(), Some(1), false, Some(&p.held_n)),
        scenario("bestofn N=16 n mode", &p.held_n.url(), Some(16), false, Some(&p.held_n)),
        scenario("bestofn N=16 n mode, streaming", &p.held_n.url(), Some(16), true, Some(&p.held_n)),
        scenario("bestofn N=16 parallel", &p.held_parallel.url(), Some(16), false, Some(&p.held_parallel)),
    ];
    let mut out = Vec::new();
    for sc in scenarios {
        if !s.wants(&sc.label) {
            continue;
        }
        let m = measure(client, &sc.target, Load::Closed(s.concurrent, s.hold_seconds), sc.proxy).await;
        let l = &m.load;
        let c = m.proxy.unwrap_or_default();
        println!(
            "{:<44} {:>8.0} {:>8.1} {:>8.1} {:>6} {:>10.0} {:>9.1}",
            sc.label,
            l.rate(),
            l.ms(0.5),
            l.ms(0.99),
            l.errors,
            c.cpu_us_per_request,
            c.rss_max_mib
        );
        out.push((sc.label, c.rss_max_mib));
    }
    out
}

// ----------------------------------------------------------------------------------------------
// nginx, the anchor for a pass-through proxy

/// An nginx process (Debian's package) with a config written for it; stopped on drop.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    /// SIGTERM, so that the master stops its workers: SIGKILL ends only the master and leaves
    /// the workers running, orphaned, after the benchmark.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a server accepts connections on `addr` within `limit` (polled every 20 ms).
fn accepts_within(addr: SocketAddr, limit: Duration) -> bool {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nginx {
    /// nginx with `server` as its one server block (listening on the port it is given), or None
    /// when nginx is not installed.
    fn start(workers: &str, log_requests: bool, server: impl Fn(u16) -> String) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        // The proxy logs a line per request, as bestofn does at `info`; the origin stands for
        // the upstream server and logs nothing.
        let access_log = if log_requests { format!("{d}/access.log") } else { "off".into() };
        let port = free_port();
        let config = format!(
            "worker_processes {workers};\nuser root;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n access_log {access_log};\n keepalive_requests 1000000;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{}\n}}\n",
            server(port)
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(binary)
            .args(["-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if !accepts_within(addr, Duration::from_secs(10)) {
            eprintln!(
                "nginx did not start: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            return None;
        }
        Some(Nginx { addr, child, _dir: dir })
    }

    /// nginx answering every request with the stub's one-choice chat completion.
    fn origin() -> Option<Nginx> {
        let answer = String::from_utf8(answers().json_by_n[1].to_vec()).unwrap();
        assert!(!answer.contains('\'') && !answer.contains('$'), "the answer must fit in an nginx string");
        Nginx::start("1", false, |port| {
            format!(
                " server {{\n  listen 127.0.0.1:{port};\n  location / {{\n   default_type application/json;\n   return 200 '{answer}';\n  }}\n }}"
            )
        })
    }

    /// nginx as a reverse proxy to `origin`, with keep-alive connections to it.
    fn reverse_proxy(origin: SocketAddr) -> Option<Nginx> {
        Nginx::start("auto", true, |port| {
            format!(
                " upstream origin {{\n  server {origin};\n  keepalive 256;\n }}\n server {{\n  listen 127.0.0.1:{port};\n  location / {{\n   proxy_pass http://origin;\n   proxy_http_version 1.1;\n   proxy_set_header Connection \"\";\n  }}\n }}"
            )
        })
    }
}

/// The floor of a proxy built on bestofn's stack: hyper's server and pooled client, one
/// single-threaded runtime per CPU accepting from one socket and dealing new connections to the
/// threads in turn (bestofn's shape), forwarding the
/// request body and the answer as bytes, with no parsing, no metrics and no log. Section 5's
/// anchor between nginx and bestofn: what the stack costs against what bestofn's own code does.
/// Runs in a child process of this benchmark (`BESTOFN_LOAD_BARE_PROXY="LISTEN UPSTREAM"`), not on
/// the generator's runtime.
fn run_bare_proxy(spec: &str) {
    let mut parts = spec.split_whitespace();
    let (Some(listen), Some(upstream)) = (parts.next(), parts.next()) else {
        panic!("BESTOFN_LOAD_BARE_PROXY wants \"LISTEN_ADDR UPSTREAM_ADDR\", got {spec:?}")
    };
    let listener = std::net::TcpListener::bind(listen).unwrap();
    listener.set_nonblocking(true).unwrap();
    let upstream: Arc<str> = format!("http://{upstream}").into();
    // As many threads as bestofn serves on (`TOKIO_WORKER_THREADS`, else the CPUs).
    let threads = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (inboxes, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>()).unzip();
    let inboxes = Arc::new(inboxes);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(index, mut inbox)| {
            let listener = listener.try_clone().unwrap();
            let upstream = upstream.clone();
            let (inboxes, next) = (inboxes.clone(), next.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
                    loop {
                        let stream = tokio::select! {
                            Ok((stream, _)) = listener.accept() => {
                                let target = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % inboxes.len();
                                if target != index {
                                    let _ = inboxes[target].send(stream.into_std().unwrap());
                                    continue;
                                }
                                stream
                            }
                            Some(stream) = inbox.recv() => tokio::net::TcpStream::from_std(stream).unwrap(),
                        };
                        let _ = stream.set_nodelay(true);
                        let (client, upstream) = (client.clone(), upstream.clone());
                        tokio::spawn(async move {
                            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let (client, upstream) = (client.clone(), upstream.clone());
                                async move {
                                    let (head, body) = req.into_parts();
                                    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
                                    let uri = format!("{upstream}{}", head.uri.path());
                                    let call = hyper::Request::post(uri)
                                        .header("content-type", "application/json")
                                        .body(Full::new(body))
                                        .unwrap();
                                    let answer = client.request(call).await.map_err(std::io::Error::other)?;
                                    let (head, body) = answer.into_parts();
                                    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
                                    Ok::<_, std::io::Error>(hyper::Response::from_parts(head, Full::new(body)))
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                })
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

/// [`run_bare_proxy`] in a child process of this benchmark, in front of `upstream`.
struct BareProxy {
    addr: SocketAddr,
    child: Child,
}

impl BareProxy {
    fn start(upstream: SocketAddr) -> BareProxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .env("BESTOFN_LOAD_BARE_PROXY", format!("{addr} {upstream}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert!(accepts_within(addr, Duration::from_secs(10)), "the bare hyper proxy did not start");
        BareProxy { addr, child }
    }
}

impl Drop for BareProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns (bestofn N=1 overhead over direct / nginx's at p50, the same at p99, saturation
/// throughput of bestofn / nginx's), or None when nginx is not installed.
async fn section_nginx(s: &Settings, client: &HttpClient, stub: SocketAddr) -> Option<(f64, f64, f64)> {
    println!(
        "\n## 5. A pass-through proxy at light load and at saturation: nginx serving a fixed chat completion, \
         nginx as a reverse proxy to it (proxy_pass, keep-alive upstream), bestofn N=1 pass-through to it"
    );
    let Some(origin) = Nginx::origin() else {
        println!("(nginx is not installed: apt-get install nginx-light; section skipped)");
        return None;
    };
    let nginx = Nginx::reverse_proxy(origin.addr)?;
    let bare = BareProxy::start(origin.addr);
    let bestofn = Proxy::start_with(&format!("http://{}/v1", origin.addr), stub, "n", 0, &s.log, "", "");
    let url = |addr: SocketAddr| format!("http://{addr}/v1/chat/completions");
    let scenarios = [
        scenario("direct (nginx origin)", &url(origin.addr), None, false, None),
        scenario("nginx reverse proxy", &url(nginx.addr), None, false, None),
        scenario("bare hyper proxy (no log)", &url(bare.addr), None, false, None),
        scenario("bestofn N=1 pass-through", &bestofn.url(), Some(1), false, Some(&bestofn)),
    ];
    // Many short rounds, quantiles over all of them together: a few seconds of contention on
    // the shared cores then fall on every scenario alike, where three 5 s rounds and the median
    // round let it land on one scenario and move the ratio to nginx's by ±0.2x between runs.
    println!(
        "light load: open loop {} req/s for {} s, {} interleaved rounds, quantiles over all rounds together",
        s.rate, s.light_seconds, s.light_rounds
    );
    println!(
        "{:<30} {:>7} {:>7} {:>7} {:>6} {:>12} {:>12} {:>9} {:>9} {:>8}",
        "scenario", "p50 ms", "p90 ms", "p99 ms", "errors", "Δp50 direct", "Δp99 direct", "log p50", "log p99", "CPU"
    );
    println!(
        "{:<30} {:>7} {:>7} {:>7} {:>6} {:>12} {:>12} {:>9} {:>9} {:>8}",
        "", "", "", "", "", "ms", "ms", "µs", "µs", "µs/req"
    );
    let rounds = interleaved_rounds(s, client, &scenarios, s.light_rounds, s.light_seconds).await;
    let direct = (pooled(&rounds[0], 0.5), pooled(&rounds[0], 0.99));
    let mut overheads = Vec::new();
    for (sc, runs) in scenarios.iter().zip(&rounds) {
        let (p50, p90, p99) = (pooled(runs, 0.5), pooled(runs, 0.9), pooled(runs, 0.99));
        let errors: usize = runs.iter().map(|m| m.load.errors).sum();
        let logged = logged_overheads(runs);
        // The mean over rounds of equal request counts: /proc's 10 ms ticks are too coarse for
        // one short round.
        let costs: Vec<f64> = runs.iter().filter_map(|m| m.proxy.as_ref().map(|c| c.cpu_us_per_request)).collect();
        let cpu = if costs.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0}", costs.iter().sum::<f64>() / costs.len() as f64)
        };
        println!(
            "{:<30} {:>7.2} {:>7.2} {:>7.2} {:>6} {:>+12.2} {:>+12.2} {:>9} {:>9} {:>8}",
            sc.label,
            p50,
            p90,
            p99,
            errors,
            p50 - direct.0,
            p99 - direct.1,
            exact_us(&logged, 0.5),
            exact_us(&logged, 0.99),
            cpu
        );
        overheads.push((p50 - direct.0, p99 - direct.1));
        let lag = runs.iter().map(|m| m.load.max_lag).max().unwrap_or_default();
        if lag > Duration::from_millis(5) {
            println!(
                "    (the generator fell behind its schedule by up to {:.1} ms in some round)",
                lag.as_secs_f64() * 1000.0
            );
        }
    }
    println!("saturation: closed loop, {} clients, {} s each", s.clients, s.closed_seconds);
    println!("{:<30} {:>8} {:>8} {:>8} {:>6}", "scenario", "req/s", "p50 ms", "p99 ms", "errors");
    let mut rates = Vec::new();
    for sc in &scenarios {
        let m = measure(client, &sc.target, Load::Closed(s.clients, s.closed_seconds), sc.proxy).await;
        println!(
            "{:<30} {:>8.0} {:>8.2} {:>8.2} {:>6}",
            sc.label,
            m.load.rate(),
            m.load.ms(0.5),
            m.load.ms(0.99),
            m.load.errors
        );
        rates.push(m.load.rate());
    }
    Some((overheads[3].0 / overheads[1].0, overheads[3].1 / overheads[1].1, rates[3] / rates[1]))
}

/// Returns (label, peak RSS in MiB, the most upstream calls the stub served at once).
async fn section_bounded(s: &Settings, client: &HttpClient, stub: SocketAddr) -> Vec<(String, f64, usize)> {
    println!(
        "\n## 6. Bounded upstream concurrency: {} concurrent N=16 parallel requests (closed loop, {} s), upstream taking {} ms (median, lognormal)",
        s.concurrent, s.hold_seconds, s.brief_ms
    );
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>6} {:>10} {:>9} {:>10}",
        "scenario", "req/s", "p50 ms", "p99 ms", "errors", "proxy CPU", "RSS MiB", "upstream"
    );
    println!("{:<44} {:>8} {:>8} {:>8} {:>6} {:>10} {:>9} {:>10}", "", "", "", "", "", "µs/req", "max", "calls max");
    let upstream = format!("http://{stub}/brief/v1");
    let cap = format!("max_in_flight = {}", s.max_in_flight);
    let mut out = Vec::new();
    for (label, extra) in [
        ("bestofn N=16 parallel, unbounded".to_string(), ""),
        (format!("bestofn N=16 parallel, max_in_flight = {}", s.max_in_flight), cap.as_str()),
    ] {
        if !s.wants(&label) {
            continue;
        }
        let proxy = Proxy::start_with(&upstream, stub, "parallel", 0, &s.log, extra, "");
        let sc = scenario(&label, &proxy.url(), Some(16), false, Some(&proxy));
        STUB_CALLS_MAX.store(0, Ordering::Relaxed);
        let m = measure(client, &sc.target, Load::Closed(s.concurrent, s.hold_seconds), sc.proxy).await;
        let most = STUB_CALLS_MAX.load(Ordering::Relaxed);
        let c = m.proxy.unwrap_or_default();
        println!(
            "{:<44} {:>8.0} {:>8.1} {:>8.1} {:>6} {:>10.0} {:>9.1} {:>10}",
            label,
            m.load.rate(),
            m.load.ms(0.5),
            m.load.ms(0.99),
            m.load.errors,
            c.cpu_us_per_request,
            c.rss_max_mib,
            most
        );
        out.push((label, c.rss_max_mib, most));
    }
    out
}

/// Returns (label, share answered 200, p99 ms of those).
async fn section_overload(s: &Settings, client: &HttpClient, stub: SocketAddr) -> Vec<(String, f64, f64)> {
    let capacity = s.limited_slots as f64 * 1000.0 / s.limited_ms as f64;
    println!(
        "\n## 7. Overload: an upstream serving {capacity:.0} calls/s ({} at a time, {} ms each), {} req/s of N={} parallel arriving for {} s (open loop); \
         bestofn with max_in_flight = {} and a {} ms deadline, without and with load-aware N (degrade_at_queue_ms = 100, min_n = 1)",
        s.limited_slots,
        s.limited_ms,
        s.overload_rate,
        s.overload_n,
        s.overload_seconds,
        s.limited_slots,
        s.overload_deadline_ms
    );
    println!(
        "{:<34} {:>9} {:>9} {:>8} {:>8} {:>8} {:>30} {:>9}",
        "scenario", "answered", "200 share", "p50 ms", "p99 ms", "200/s", "failures by status", "degraded"
    );
    let upstream = format!("http://{stub}/limited/v1");
    let cap = format!("max_in_flight = {}", s.limited_slots);
    let deadline = format!("deadline_ms = {}", s.overload_deadline_ms);
    let degrading = format!("{deadline}\ndegrade_at_queue_ms = 100\nmin_n = 1");
    let mut out = Vec::new();
    for (label, policy) in [("without load-aware N", deadline.as_str()), ("with load-aware N", degrading.as_str())] {
        let proxy = Proxy::start_with(&upstream, stub, "parallel", 0, &s.log, &cap, policy);
        let sc = scenario(label, &proxy.url(), Some(s.overload_n), false, Some(&proxy));
        let before = scrape(client, &proxy).await;
        let m = measure(client, &sc.target, Load::Open(s.overload_rate, s.overload_seconds), sc.proxy).await;
        let after = scrape(client, &proxy).await;
        let degraded = sum_metric(&after, "bestofn_degraded_requests_total")
            - sum_metric(&before, "bestofn_degraded_requests_total");
        let l = &m.load;
        let total = l.latencies.len() + l.errors;
        let share = l.latencies.len() as f64 / total.max(1) as f64;
        let failures: Vec<String> = l.failures.iter().map(|(status, count)| format!("{status}: {count}")).collect();
        println!(
            "{:<34} {:>9} {:>8.1}% {:>8.1} {:>8.1} {:>8.1} {:>30} {:>9.0}",
            label,
            l.latencies.len(),
            share * 100.0,
            l.ms(0.5),
            l.ms(0.99),
            l.latencies.len() as f64 / s.overload_seconds,
            failures.join(", "),
            degraded
        );
        out.push((label.to_string(), share, l.ms(0.99)));
    }
    out
}

/// The sum of every series of a counter family in a /metrics text.
fn sum_metric(metrics: &str, family: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && (l[family.len()..].starts_with('{') || l[family.len()..].starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn main() {
    if let Ok(spec) = std::env::var("BESTOFN_LOAD_BARE_PROXY") {
        return run_bare_proxy(&spec);
    }
    let s = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(s.threads).enable_all().build().unwrap();
    runtime.block_on(async move {
        let delays = Delays {
            lognormal: LogNormal { median_ms: s.median_ms, sigma: s.sigma },
            held: LogNormal { median_ms: s.hold_ms, sigma: s.sigma },
            brief: LogNormal { median_ms: s.brief_ms, sigma: s.sigma },
            limited_slots: s.limited_slots,
            limited_ms: s.limited_ms,
        };
        let stub = start_stub(delays).await;
        let proxies = Proxies {
            n: Proxy::start(stub, "instant", "n", 0, &s.log),
            parallel: Proxy::start(stub, "instant", "parallel", 0, &s.log),
            slow_n: Proxy::start(stub, "lognormal", "n", 0, &s.log),
            slow_parallel: Proxy::start(stub, "lognormal", "parallel", 0, &s.log),
            slow_hedge1: Proxy::start(stub, "lognormal", "parallel", 1, &s.log),
            slow_hedge2: Proxy::start(stub, "lognormal", "parallel", 2, &s.log),
            held_n: Proxy::start(stub, "held", "n", 0, &s.log),
            held_parallel: Proxy::start(stub, "held", "parallel", 0, &s.log),
        };
        let client = http_client();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!("# bestofn load benchmark");
        println!(
            "machine: {cpus} CPUs ({}), bestofn {} (release build, RUST_LOG={}), stubs and load generator in one process with {} Tokio workers",
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|c| c.lines().find(|l| l.starts_with("model name"))?.split(':').nth(1).map(|m| m.trim().to_string()))
                .unwrap_or_default(),
            env!("CARGO_PKG_VERSION"),
            s.log,
            s.threads
        );
        println!(
            "bestofn PIDs (for perf record -p): n {}, parallel {}, slow n {}, slow parallel {}",
            proxies.n.pid(),
            proxies.parallel.pid(),
            proxies.slow_n.pid(),
            proxies.slow_parallel.pid()
        );
        println!("candidate text ~500 bytes; RM: vLLM /classify, one call per best-of-N request; bestofn CPU from /proc/PID/stat");
        let fast = format!("http://{stub}/instant/v1/chat/completions");
        let slow = format!("http://{stub}/lognormal/v1/chat/completions");
        let rm = format!("http://{stub}/classify");
        let mut summary = Vec::new();
        if s.sections.contains('1') {
            let rates = section_throughput(&s, &client, &fast, &rm, &proxies).await;
            for (label, rate) in rates {
                if label == "bestofn N=1 pass-through" {
                    summary.push(format!("N=1 throughput {rate:.0} req/s (target ≥ 5,000): {}", verdict(rate >= 5000.0)));
                }
                if label == "bestofn N=16 n mode" || label == "bestofn N=16 parallel" {
                    summary.push(format!("{label} throughput {rate:.0} req/s (target ≥ 1,000): {}", verdict(rate >= 1000.0)));
                }
            }
        }
        if s.sections.contains('2') {
            for (label, delta99, log99) in section_fixed_rate(&s, &client, &fast, &rm, &proxies).await {
                let target = if label.contains("N=1 ") { 1.0 } else { 2.0 };
                // A negative difference means the baseline itself was saturated (client-side
                // parallel sampling in the one-thread harness): only the logged overhead says anything.
                let saturated = if delta99 < 0.0 { " (baseline saturated)" } else { "" };
                summary.push(format!(
                    "{label} at {} req/s: p99 - baseline p99 = {delta99:.2} ms{saturated}, logged overhead p99 = {log99:.3} ms (target < {target} ms): {}",
                    s.rate,
                    verdict(delta99 < target && (log99.is_nan() || log99 < target))
                ));
            }
        }
        if s.sections.contains('3') {
            for (label, ratio) in section_tail(&s, &client, &slow, &proxies).await {
                if label.contains("h=2") {
                    summary.push(format!("{label}: p99 {ratio:.2}x the single-sample p99 (target ≤ 1.3x): {}", verdict(ratio <= 1.3)));
                }
            }
        }
        if s.sections.contains('4') {
            for (label, rss) in section_memory(&s, &client, &proxies).await {
                summary.push(format!(
                    "{label} with {} concurrent: peak RSS {rss:.1} MiB (target < 100 MiB): {}",
                    s.concurrent,
                    verdict(rss < 100.0)
                ));
            }
        }
        if s.sections.contains('5')
            && let Some((p50, p99, saturation)) = section_nginx(&s, &client, stub).await
        {
            summary.push(format!(
                "N=1 overhead over direct at light load: {p50:.2}x nginx-as-proxy's at p50, {p99:.2}x at p99 (target ≤ 1.2x): {}",
                verdict(p50 <= 1.2 && p99 <= 1.2)
            ));
            summary.push(format!(
                "N=1 saturation throughput {:.0}% of nginx-as-proxy's (target ≥ 60%): {}",
                saturation * 100.0,
                verdict(saturation >= 0.6)
            ));
        }
        if s.sections.contains('6') {
            for (label, rss, most) in section_bounded(&s, &client, stub).await {
                summary.push(format!("{label}: peak RSS {rss:.1} MiB, at most {most} upstream calls at once (stub's count)"));
            }
        }
        if s.sections.contains('7') {
            for (label, share, p99) in section_overload(&s, &client, stub).await {
                summary.push(format!("overload {label}: {:.1}% answered 200, their p99 {p99:.0} ms", share * 100.0));
            }
        }
        println!("\n## Targets");
        for line in summary {
            println!("- {line}");
        }
        println!(
            "\nlifetime peak RSS (VmHWM): bestofn {:.1} / {:.1} / {:.1} / {:.1} MiB (n, parallel, slow n, slow parallel); this process {:.1} MiB",
            status_mib(&proxies.n.pid().to_string(), "VmHWM:"),
            status_mib(&proxies.parallel.pid().to_string(), "VmHWM:"),
            status_mib(&proxies.slow_n.pid().to_string(), "VmHWM:"),
            status_mib(&proxies.slow_parallel.pid().to_string(), "VmHWM:"),
            status_mib("self", "VmHWM:")
        );
    });
}
