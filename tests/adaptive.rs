//! Adaptive sampling through the real binary against loopback upstreams: waves, the stopping
//! rules, cancellation of calls still running, the deadline, and weighted voting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A chat completion answer with these choice texts.
fn chat_answer(texts: &[String], completion_tokens_each: u64) -> Value {
    let choices: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}))
        .collect();
    let completion = completion_tokens_each * texts.len() as u64;
    json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": choices,
        "usage": {"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion}})
}

/// An upstream whose candidate for seed s is `text(s)`, one per choice (choice i of an n call
/// gets seed + i).
async fn seeded_upstream(text: impl Fn(i64) -> String + Send + Sync + 'static) -> FakeServer {
    FakeServer::start(move |req: &Recorded| {
        let n = req.body.get("n").and_then(Value::as_u64).unwrap_or(1) as i64;
        let seed = req.body.get("seed").and_then(Value::as_i64).unwrap_or(0);
        let texts: Vec<String> = (0..n).map(|i| text(seed + i)).collect();
        Reply::Json(200, chat_answer(&texts, 5))
    })
    .await
}

fn adaptive_config(upstream: &str, sampling: &str, n: u32, scorer: &str, extra: &str) -> String {
    format!(
        r#"
[upstream]
base_url = "{upstream}/v1"
sampling = "{sampling}"
timeout_ms = 60000
max_retries = 0

[policy]
n = {n}
scorer = "{scorer}"
adaptive = true
{extra}
"#
    )
}

fn lowercase_question(seed: i64) -> Value {
    let mut body = chat_body("Name a fruit. Answer in all lowercase.");
    body["seed"] = json!(seed);
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_that_passes_every_check_stops_the_run_after_the_first_wave() {
    // Seed 100 answers in lowercase (passes the stated check); every other seed does not.
    let upstream = seeded_upstream(|s| if s == 100 { "an apple".into() } else { "An Apple".into() }).await;
    for sampling in ["parallel", "n"] {
        upstream.clear();
        let cfg = adaptive_config(&upstream.url(), sampling, 8, "verify", "first_wave = 2\naccept_score = 1.0");
        let proxy = Bestofn::start(&cfg);
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), lowercase_question(100), &[]).await;
        assert_eq!(status, 200, "{resp}");
        let b = &resp["bestofn"];
        assert_eq!((b["n_requested"].as_u64(), b["n_sampled"].as_u64()), (Some(8), Some(2)), "{sampling}: {b}");
        assert_eq!((b["stop_reason"].as_str(), b["waves"].as_u64()), (Some("accept_score"), Some(1)), "{b}");
        assert_eq!(resp["choices"][0]["message"]["content"], "an apple");
        let calls = upstream.requests_to("/v1/chat/completions").len();
        let expected = if sampling == "n" { 1 } else { 2 };
        assert!(calls <= expected, "{sampling}: {calls} upstream calls for a first wave of 2");

        // The same request when no candidate passes: every wave runs, up to n.
        upstream.clear();
        let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), lowercase_question(7), &[]).await;
        let b = &resp["bestofn"];
        assert_eq!(
            (b["n_sampled"].as_u64(), b["stop_reason"].as_str(), b["waves"].as_u64()),
            (Some(8), Some("max_n"), Some(3)),
            "{b}"
        );
        assert_eq!(b["n_received"], 8);
        let calls = upstream.requests_to("/v1/chat/completions");
        let candidates: u64 = calls.iter().map(|r| r.body.get("n").and_then(Value::as_u64).unwrap_or(1)).sum();
        assert_eq!(candidates, 8, "{sampling}: waves of 2, 2 and 4");
        let seeds: std::collections::BTreeSet<i64> = calls.iter().map(|r| r.body["seed"].as_i64().unwrap()).collect();
        assert_eq!(seeds.len(), calls.len(), "every call has its own seed");
        // Turning it off per request samples all n at once.
        upstream.clear();
        let (_, _, resp) =
            post(&proxy.url("/v1/chat/completions"), lowercase_question(100), &[("x-bestofn-adaptive", "false")]).await;
        assert_eq!(resp["bestofn"]["n_sampled"], 8);
        assert!(resp["bestofn"].get("stop_reason").is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_still_running_when_the_rule_fires_are_dropped() {
    // Seed 200 answers at once; the other candidates of the wave never do.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (hanging_tx, mut hanging_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // Seed 200 answers once the other three requests are in, so that all three are on the wire
    // (a call dropped while still connecting never reaches the server).
    let arrived = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (closed_tx, hanging_tx, arrived) = (closed_tx.clone(), hanging_tx.clone(), arrived.clone());
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Some(body) = read_http_request(&mut stream).await else { return };
                if body["seed"] == 200 {
                    let _ = tokio::time::timeout(Duration::from_secs(5), arrived.acquire_many(3)).await;
                    let answer = chat_answer(&["a pear".to_string()], 3).to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        answer.len()
                    );
                    let _ = stream.write_all(format!("{head}{answer}").as_bytes()).await;
                    return;
                }
                let _ = hanging_tx.send(());
                arrived.add_permits(1);
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
    // first_wave = n: all four start together (latency first); the rest are cancelled.
    let cfg = adaptive_config(&format!("http://{addr}"), "parallel", 4, "verify", "first_wave = 4\naccept_score = 1.0");
    let proxy = Bestofn::start(&cfg);
    let mut body = lowercase_question(200);
    body["bestofn"] = json!({"return_candidates": true});
    let (status, _, resp) =
        tokio::time::timeout(Duration::from_secs(20), post(&proxy.url("/v1/chat/completions"), body, &[]))
            .await
            .unwrap();
    assert_eq!(status, 200, "{resp}");
    let b = &resp["bestofn"];
    assert_eq!(
        (b["n_sampled"].as_u64(), b["n_received"].as_u64(), b["stop_reason"].as_str()),
        (Some(4), Some(1), Some("accept_score")),
        "{b}"
    );
    assert_eq!(resp["usage"]["completion_tokens"], 3, "only what was generated is billed");
    assert_eq!(b["candidates"][0]["completion_tokens"], 3);
    let dropped = async {
        for _ in 0..3 {
            hanging_rx.recv().await.unwrap();
            closed_rx.recv().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), dropped)
        .await
        .expect("the three hanging calls are closed by bestofn");
}

#[tokio::test(flavor = "multi_thread")]
async fn agreement_stops_when_the_first_wave_agrees_and_not_when_it_splits() {
    // Even seeds answer 12; odd seeds answer 12 when the request seed is 1000, else 13.
    let upstream = seeded_upstream(|s| {
        let answer = if s % 2 == 0 || s >= 1000 { 12 } else { 13 };
        format!("Adding them up, the answer is {answer}.")
    })
    .await;
    for sampling in ["parallel", "n"] {
        let cfg = adaptive_config(&upstream.url(), sampling, 8, "consensus", "first_wave = 4\nconfidence = 0.95");
        let proxy = Bestofn::start(&cfg);
        let mut agree = chat_body("What is 5 + 7?");
        agree["seed"] = json!(1000);
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), agree, &[]).await;
        assert_eq!(status, 200, "{resp}");
        let b = &resp["bestofn"];
        assert_eq!(
            (b["n_sampled"].as_u64(), b["stop_reason"].as_str()),
            (Some(4), Some("agreement")),
            "{sampling}: {b}"
        );
        let mut split = chat_body("What is 5 + 7?");
        split["seed"] = json!(10);
        let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), split, &[]).await;
        let b = &resp["bestofn"];
        assert_eq!((b["n_sampled"].as_u64(), b["stop_reason"].as_str()), (Some(8), Some("max_n")), "{sampling}: {b}");
        // Metrics: what was saved and why sampling stopped.
        let text = client().get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(text.contains(r#"bestofn_candidates_saved_total{domain="math"} 4"#), "{text}");
        assert!(text.contains(r#"bestofn_adaptive_stops_total{domain="math",reason="agreement"} 1"#));
        assert!(text.contains(r#"bestofn_adaptive_stops_total{domain="math",reason="max_n"} 1"#));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_still_wins() {
    // Candidates fail the check and every call after the first takes 3 s: no rule fires.
    let upstream = FakeServer::start(|req: &Recorded| {
        let seed = req.body.get("seed").and_then(Value::as_i64).unwrap_or(0);
        let answer = Reply::Json(200, chat_answer(&["An Apple".to_string()], 2));
        if seed == 300 { answer } else { Reply::Delayed(Duration::from_secs(3), Box::new(answer)) }
    })
    .await;
    let cfg = adaptive_config(
        &upstream.url(),
        "parallel",
        8,
        "verify",
        "first_wave = 2\naccept_score = 1.0\ndeadline_ms = 400",
    );
    let proxy = Bestofn::start(&cfg);
    let started = std::time::Instant::now();
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), lowercase_question(300), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert!(started.elapsed() < Duration::from_millis(2500), "answered at the deadline, not after the slow calls");
    let b = &resp["bestofn"];
    assert_eq!(
        (b["stop_reason"].as_str(), b["n_received"].as_u64(), b["n_sampled"].as_u64()),
        (Some("deadline"), Some(1), Some(2)),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_adaptive_values_are_named() {
    let upstream = seeded_upstream(|_| "x".into()).await;
    let proxy = Bestofn::start(&adaptive_config(&upstream.url(), "n", 4, "consensus", ""));
    let mut body = chat_body("q");
    body["bestofn"] = json!({"adaptive": "yes"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 400);
    assert_envelope(&resp, Some("bestofn.adaptive"));
    let (status, _, resp) =
        post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[("x-bestofn-adaptive", "maybe")]).await;
    assert_eq!(status, 400);
    assert_envelope(&resp, Some("x-bestofn-adaptive"));
    for (extra, key) in [
        ("first_wave = 5", "policy.first_wave"),
        ("confidence = 0.5", "policy.confidence"),
        ("confidence = 1.0", "policy.confidence"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, adaptive_config(&upstream.url(), "n", 4, "consensus", extra)).unwrap();
        let (ok, _, err) = bestofn(&["check-config", path.to_str().unwrap()]);
        assert!(!ok && err.contains("bad.toml") && err.contains(key), "{extra}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, adaptive_config(&upstream.url(), "n", 4, "consensus", "[domains.math]\nfirst_wave = 9"))
        .unwrap();
    let (ok, _, err) = bestofn(&["check-config", path.to_str().unwrap()]);
    assert!(!ok && err.contains("domains.math.first_wave"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_vote_prefers_the_answer_with_more_total_reward() {
    // Three candidates say 5 with a small reward, one says 7 with a large one.
    let upstream = FakeServer::start(|_: &Recorded| {
        let texts: Vec<String> =
            ["5 q=0.1", "5 q=0.1", "7 q=3.0", "5 q=0.1"].iter().map(|t| format!("The answer is {}", t)).collect();
        Reply::Json(200, chat_answer(&texts, 4))
    })
    .await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&upstream, &rm, "n", 4)
        + "\n[scorers.weighted]\nkind = \"weighted_vote\"\nmember = \"vllm\"\ntemperature = 1.0\n";
    let proxy = Bestofn::start(&cfg);
    let mut body = chat_body("What is it?");
    body["bestofn"] = json!({"scorer": "weighted"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["chosen"], 2, "{resp}");
    assert!(resp["choices"][0]["message"]["content"].as_str().unwrap().contains("7"));
    // Plain majority voting picks the more frequent answer.
    body["bestofn"] = json!({"scorer": "consensus"});
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert!(resp["choices"][0]["message"]["content"].as_str().unwrap().contains("is 5"), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_is_sampled_adaptively_with_heartbeats() {
    let inner = |s: i64| if s == 500 { "a plum".to_string() } else { "A Plum".to_string() };
    let upstream = FakeServer::start(move |req: &Recorded| {
        let seed = req.body.get("seed").and_then(Value::as_i64).unwrap_or(0);
        Reply::Delayed(Duration::from_millis(120), Box::new(Reply::Json(200, chat_answer(&[inner(seed)], 2))))
    })
    .await;
    let cfg = adaptive_config(&upstream.url(), "parallel", 8, "verify", "first_wave = 2\naccept_score = 1.0")
        .replace("[upstream]", "[server]\nheartbeat_interval_ms = 40\n\n[upstream]");
    let proxy = Bestofn::start(&cfg);
    let mut body = lowercase_question(500);
    body["stream"] = json!(true);
    let (status, _, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 200);
    let items = parse_sse(&text);
    assert!(items.iter().any(|i| *i == SseItem::Comment("keep-alive".into())), "heartbeats while the wave runs");
    let chunks = data_events(&items);
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(content, "a plum");
    let b = chunks.iter().find_map(|c| c.get("bestofn")).expect("the bestofn object in the final chunk");
    assert_eq!((b["stop_reason"].as_str(), b["n_sampled"].as_u64()), (Some("accept_score"), Some(2)), "{b}");
}
