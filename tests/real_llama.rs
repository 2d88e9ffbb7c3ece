//! End to end against a real llama.cpp `llama-server` serving a real model (SmolLM2-135M),
//! provisioned by `scripts/real-upstream.sh build` (which `.ci/run` runs). Without the build,
//! the tests fail under CI and say how to provision elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

struct LlamaServer {
    child: Child,
    url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts llama-server on a free loopback port, or explains why it cannot.
fn llama_server() -> Option<LlamaServer> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/real-upstream.sh");
    let out = Command::new("bash").arg(script).arg("paths").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let (server, model) = (lines.next().unwrap_or("").to_string(), lines.next().unwrap_or("").to_string());
    if !std::path::Path::new(&server).exists() || !std::path::Path::new(&model).exists() {
        let why = format!("no llama-server at {server} or model at {model}: run scripts/real-upstream.sh build");
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipping the real-model tests: {why}");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The server's log goes to a file, so a server that dies or never answers says why.
    let log_path = std::env::temp_dir().join(format!("bestofn-llama-server-{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(&server)
        .args([
            "-m",
            &model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-c",
            "4096",
            "--parallel",
            "4",
            "-t",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = LlamaServer { child, url: format!("http://127.0.0.1:{port}") };
    for _ in 0..240 {
        // A server that exited is noticed at once, with its exit status and the end of its log,
        // rather than polled for a minute.
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("llama-server exited before it became healthy ({status}); its log ends:\n{}", log_tail(&log_path));
        }
        if probe::blocking_health(&server.url) {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("llama-server did not become healthy on port {port} in 60 s; its log ends:\n{}", log_tail(&log_path));
}

/// The last 40 lines of a log file, or why it cannot be read.
fn log_tail(path: &std::path::Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

mod probe {
    /// A plain TCP probe of /health, so the helper needs no async runtime.
    pub fn blocking_health(url: &str) -> bool {
        use std::io::{Read, Write};
        let addr = url.trim_start_matches("http://");
        let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200")
    }
}

fn bestofn_config(upstream: &str, sampling: &str, n: u32, scorer: &str) -> String {
    format!(
        "[upstream]\nbase_url = \"{upstream}/v1\"\nsampling = \"{sampling}\"\ntimeout_ms = 120000\n\n[policy]\nn = {n}\nscorer = \"{scorer}\"\n"
    )
}

fn question() -> Value {
    json!({"model": "smollm2", "messages": [{"role": "user", "content": "What is 7 + 5? Answer with just the number."}],
        "max_tokens": 24, "temperature": 0.8, "seed": 3})
}

#[tokio::test(flavor = "multi_thread")]
async fn best_of_n_in_front_of_a_real_llama_server() {
    let Some(llama) = tokio::task::spawn_blocking(llama_server).await.unwrap() else { return };

    // The prompt costs the same in every call: measure it directly.
    let direct: Value = client()
        .post(format!("{}/v1/chat/completions", llama.url))
        .json(&question())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prompt_tokens = direct["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);

    // n mode: one call with n = 4 (llama-server serves up to --parallel 4).
    let proxy = Bestofn::start(&bestofn_config(&llama.url, "n", 4, "consensus"));
    let mut listed = question();
    listed["bestofn"] = json!({"return_candidates": true});
    let (status, headers, resp) = post(&proxy.url("/v1/chat/completions"), listed, &[]).await;
    assert_eq!(status, 200, "{resp}");
    let b = &resp["bestofn"];
    assert_eq!((b["sampling"].as_str(), b["n_received"].as_u64()), (Some("n"), Some(4)), "{resp}");
    assert_eq!(headers["x-bestofn-n"], "4");
    assert_eq!(resp["usage"]["prompt_tokens"], prompt_tokens, "one call pays the prompt once");
    // llama-server counts one choice's tokens for n > 1: bestofn recounts every candidate exactly
    // with the server's own /tokenize, so usage is the sum of those counts.
    let generation = &b["usage"]["generation"];
    assert_eq!(generation["completion_tokens_recounted"], true, "{resp}");
    assert_eq!(generation["completion_tokens_estimated"], false, "{resp}");
    let mut tokenized = 0;
    for c in b["candidates"].as_array().unwrap() {
        let reply: Value = client()
            .post(format!("{}/tokenize", llama.url))
            .json(&json!({"content": c["text"], "add_special": false}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokenized += reply["tokens"].as_array().unwrap().len() as u64;
    }
    assert_eq!(resp["usage"]["completion_tokens"].as_u64().unwrap(), tokenized, "{resp}");
    assert!(tokenized >= generation["upstream_reported_completion_tokens"].as_u64().unwrap());
    assert!(!resp["choices"][0]["message"]["content"].as_str().unwrap().is_empty());
    drop(proxy);

    // Parallel mode: four calls, each paying the prompt; seeds differ per candidate.
    let proxy = Bestofn::start(&bestofn_config(&llama.url, "parallel", 4, "consensus"));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), question(), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["sampling"], "parallel");
    assert_eq!(resp["bestofn"]["n_received"], 4);
    assert_eq!(resp["usage"]["prompt_tokens"], 4 * prompt_tokens);
    assert_eq!(resp["bestofn"]["usage"]["generation"]["completion_tokens_estimated"], false);

    // The verify scorer end to end: scores are fractions of satisfied constraints.
    let mut body = question();
    body["messages"][0]["content"] = json!("Name a fruit. Answer in all lowercase, in under 10 words.");
    body["bestofn"] = json!({"scorer": "verify", "return_candidates": true});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    let scores: Vec<f64> = resp["bestofn"]["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert_eq!(scores.len(), 4);
    assert!(scores.iter().all(|s| [0.0, 0.5, 1.0].contains(s)), "{scores:?}");
    let chosen = resp["bestofn"]["chosen"].as_u64().unwrap() as usize;
    assert_eq!(scores[chosen], scores.iter().cloned().fold(f64::MIN, f64::max));
    drop(proxy);

    // Adaptive verify: on a prompt whose stated check every short answer passes, the first
    // arrival stops the run; usage is what the arrived candidates generated.
    let cfg =
        bestofn_config(&llama.url, "parallel", 8, "verify") + "adaptive = true\nfirst_wave = 2\naccept_score = 1.0\n";
    let proxy = Bestofn::start(&cfg);
    let mut body = question();
    body["messages"][0]["content"] = json!("Name a fruit. Answer in under 40 words.");
    body["bestofn"] = json!({"return_candidates": true});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    let b = &resp["bestofn"];
    assert_eq!(
        (b["stop_reason"].as_str(), b["n_sampled"].as_u64(), b["waves"].as_u64()),
        (Some("accept_score"), Some(2), Some(1)),
        "{b}"
    );
    let arrived = b["candidates"].as_array().unwrap();
    assert!(!arrived.is_empty() && arrived.len() <= 2, "{b}");
    let generated: u64 = arrived.iter().map(|c| c["completion_tokens"].as_u64().unwrap()).sum();
    assert_eq!(resp["usage"]["completion_tokens"].as_u64().unwrap(), generated, "{resp}");
    assert_eq!(
        b["usage"]["generation"]["calls"].as_u64().unwrap(),
        arrived.len() as u64,
        "cancelled calls bill nothing"
    );
    drop(proxy);

    // The OpenAI SDK, streaming included, through bestofn in front of the real server.
    let proxy = Bestofn::start(&bestofn_config(&llama.url, "auto", 4, "consensus"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/real_client.py");
    let out = tokio::process::Command::new("python3").arg(script).arg(proxy.url("/v1")).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!seen["chat"]["content"].as_str().unwrap().is_empty(), "{seen}");
    assert_eq!(seen["chat"]["bestofn"]["n_received"], 4);
    assert!(!seen["stream"]["content"].as_str().unwrap().is_empty(), "{seen}");
    assert!(["stop", "length"].contains(&seen["stream"]["finish_reason"].as_str().unwrap()));
    assert!(seen["stream"]["completion_tokens"].as_u64().unwrap() > 0);

    // N = 1 streams straight through from the real server.
    let mut body = question();
    body["stream"] = json!(true);
    body["bestofn"] = json!({"n": 1});
    let (status, content_type, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/event-stream"));
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

/// A `response_format` json_schema on the real server: llama.cpp constrains decoding to the
/// schema, so every candidate is valid (`n_valid` = N), the answer conforms, and `eval replay
/// --as-recorded` of the recording makes the same pick.
#[tokio::test(flavor = "multi_thread")]
async fn json_schema_best_of_n_on_a_real_llama_server_is_valid_and_replays_as_served() {
    let Some(llama) = tokio::task::spawn_blocking(llama_server).await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let cfg = bestofn_config(&llama.url, "n", 3, "consensus")
        + &format!("require_valid = true\n\n[recorder]\npath = \"{}\"\n", samples.display());
    let config_path = dir.path().join("bestofn.toml");
    std::fs::write(&config_path, &cfg).unwrap();
    let proxy = Bestofn::start(&cfg);
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
        "additionalProperties": false});
    let mut body = question();
    body["messages"][0]["content"] = json!("What is 7 + 5? Reply in JSON.");
    body["max_tokens"] = json!(32);
    body["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "sum", "strict": true, "schema": schema}});
    body["bestofn"] = json!({"return_candidates": true});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[("x-request-id", "schema-1")]).await;
    assert_eq!(status, 200, "{resp}");
    let b = &resp["bestofn"];
    assert_eq!((b["n_received"].as_u64(), b["n_valid"].as_u64()), (Some(3), Some(3)), "{b}");
    let content = resp["choices"][0]["message"]["content"].as_str().unwrap();
    let answer: Value = serde_json::from_str(content.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
    let fields = answer.as_object().unwrap();
    assert!(fields.len() == 1 && fields["answer"].is_i64(), "not schema-valid: {content}");

    // The recording replays to the same pick.
    let mut recorded = String::new();
    for _ in 0..250 {
        recorded = std::fs::read_to_string(&samples).unwrap_or_default();
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let record: Value = serde_json::from_str(recorded.lines().next().unwrap()).unwrap();
    assert_eq!(record["chosen"], b["chosen"]);
    assert_eq!(record["response_format"]["json_schema"]["schema"], schema);
    let picks = dir.path().join("picks.jsonl");
    let args = [
        "eval".to_string(),
        "replay".into(),
        "--samples".into(),
        samples.display().to_string(),
        "--config".into(),
        config_path.display().to_string(),
        "--as-recorded".into(),
        "--picks".into(),
        picks.display().to_string(),
    ];
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || bestofn(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .unwrap();
    assert!(ok, "eval replay failed: {err}");
    let pick: Value = serde_json::from_str(std::fs::read_to_string(&picks).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!((pick["prompt_id"].as_str(), &pick["chosen"]), (Some("schema-1"), &b["chosen"]), "{pick}");
}
