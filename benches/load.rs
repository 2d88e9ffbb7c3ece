//! Load benchmark: bestofn versus a direct call to the upstream, side by side in one run, with
//! loopback stub servers that answer at once (an OpenAI-compatible upstream and a vLLM /classify
//! RM). Closed-loop: a fixed number of concurrent clients for a fixed time per scenario.
//! Prints throughput, latency percentiles and the overhead; asserts nothing.
//!
//! Run: `cargo bench --bench load` (BESTOFN_LOAD_SECONDS and BESTOFN_LOAD_CLIENTS override the
//! 3 s and 32 clients per scenario). Everything (stubs, proxy, load generator) shares this
//! process and the machine's two cores, so absolute numbers are lower bounds.

// A benchmark harness: failing to set up its own loopback servers should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

async fn stub(handler: fn(&Value, &str) -> Value) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            // As a production upstream would: no Nagle delay on small writes.
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let out = serde_json::to_vec(&handler(&value, &path)).unwrap();
                    let mut resp = hyper::Response::new(Full::new(Bytes::from(out)));
                    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn upstream(body: &Value, _path: &str) -> Value {
    let n = body.get("n").and_then(Value::as_u64).unwrap_or(1);
    let choices: Vec<Value> = (0..n)
        .map(|i| json!({"index": i, "message": {"role": "assistant", "content": format!("candidate {i}: the answer is {}", i % 3)}, "finish_reason": "stop"}))
        .collect();
    json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": choices,
        "usage": {"prompt_tokens": 12, "completion_tokens": 8 * n, "total_tokens": 12 + 8 * n}})
}

fn rm(body: &Value, _path: &str) -> Value {
    let data: Vec<Value> = body["input"]
        .as_array()
        .map(|a| a.iter().enumerate().map(|(i, t)| json!({"index": i, "probs": [t.as_str().unwrap_or("").len() as f64 / 10.0], "num_classes": 1})).collect())
        .unwrap_or_default();
    json!({"id": "c", "object": "list", "created": 1, "model": "rm", "data": data, "usage": {"prompt_tokens": 1}})
}

struct Outcome {
    done: usize,
    errors: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

async fn run_load(url: String, body: Value, clients: usize, seconds: f64) -> Outcome {
    let client = bestofn::wiring::http_client().unwrap();
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let body = Arc::new(serde_json::to_vec(&body).unwrap());
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while Instant::now() < stop {
                    let t = Instant::now();
                    let ok = match client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body((*body).clone())
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() & r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    Outcome { done: latencies.len(), errors, latencies, elapsed: started.elapsed() }
}

fn pct(l: &[Duration], q: f64) -> f64 {
    if l.is_empty() {
        return f64::NAN;
    }
    l[((l.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let seconds: f64 = std::env::var("BESTOFN_LOAD_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let clients: usize = std::env::var("BESTOFN_LOAD_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let up = stub(upstream).await;
        let rm_addr = stub(rm).await;
        let mut proxies = Vec::new();
        for sampling in ["n", "parallel"] {
            let text = format!(
                "[upstream]\nbase_url = \"http://{up}/v1\"\nsampling = \"{sampling}\"\n\n[scorers.rm]\nkind = \"reward_http\"\napi = \"vllm_classify\"\nurl = \"http://{rm_addr}/classify\"\n\n[server]\nmax_concurrent_requests = 4096\n\n[policy]\nn = 1\nscorer = \"rm\"\n"
            );
            let config = bestofn::config::Config::from_toml(&text, std::path::Path::new("bench.toml")).unwrap();
            let state = Arc::new(bestofn::server::AppState::from_config(&config).unwrap());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(bestofn::server::serve(listener, state, std::future::pending()));
            proxies.push(addr);
        }
        let question = json!({"model": "m", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 16});
        println!("closed loop, {clients} clients, {seconds} s per scenario, stubs answer at once; one process, 2 worker threads");
        println!("{:<44} {:>9} {:>8} {:>8} {:>8} {:>7}", "scenario", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors");
        let mut direct = (f64::NAN, f64::NAN);
        let scenarios: Vec<(String, String, Value)> = {
            let mut v = vec![("direct to upstream (n=1)".to_string(), format!("http://{up}/v1/chat/completions"), question.clone())];
            for (label, proxy, n, stream) in [
                ("bestofn N=1 (pass-through)", proxies[0], 1, false),
                ("bestofn N=4, n mode", proxies[0], 4, false),
                ("bestofn N=16, n mode", proxies[0], 16, false),
                ("bestofn N=16, parallel mode", proxies[1], 16, false),
                ("bestofn N=16, n mode, streaming", proxies[0], 16, true),
            ] {
                let mut body = question.clone();
                body["bestofn"] = json!({"n": n});
                if stream {
                    body["stream"] = json!(true);
                }
                v.push((label.to_string(), format!("http://{proxy}/v1/chat/completions"), body));
            }
            v
        };
        for (i, (label, url, body)) in scenarios.into_iter().enumerate() {
            let o = run_load(url, body, clients, seconds).await;
            let (p50, p90, p99) = (pct(&o.latencies, 0.5), pct(&o.latencies, 0.9), pct(&o.latencies, 0.99));
            if i == 0 {
                direct = (p50, p99);
            }
            println!(
                "{label:<44} {:>9.0} {p50:>8.2} {p90:>8.2} {p99:>8.2} {:>7}{}",
                o.done as f64 / o.elapsed.as_secs_f64(),
                o.errors,
                if i == 0 { String::new() } else { format!("   overhead p50 {:+.2} ms, p99 {:+.2} ms", p50 - direct.0, p99 - direct.1) }
            );
        }
        let client = bestofn::wiring::http_client().unwrap();
        for (name, addr) in [("n", proxies[0]), ("parallel", proxies[1])] {
            let text = client.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
            let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k).and_then(|r| r.trim().parse::<f64>().ok())).unwrap_or(f64::NAN);
            let (sum, count) = (get("bestofn_overhead_seconds_sum "), get("bestofn_overhead_seconds_count "));
            println!("proxy ({name} mode) overhead metric: mean {:.3} ms over {count} best-of-N requests", sum / count * 1000.0);
        }
        println!("peak RSS of the whole process (stubs, proxies, load generator): {:.1} MiB", peak_rss_mib());
    });
}
