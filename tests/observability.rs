//! Domains, per-domain policy, /metrics, the Grafana dashboard and the traffic recorder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn scrape(proxy: &Bestofn) -> String {
    client().get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of one sample line, e.g. `bestofn_requests_total{domain="math",status_class="2xx"}`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_traffic_and_reward_lift() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 4));
    let mut expected_lift = 0.0;
    for seed in [10, 20, 30] {
        let mut body = chat_body("q");
        body["seed"] = json!(seed);
        body["bestofn"] = json!({"domain": "math"});
        let (status, _, _) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
        assert_eq!(status, 200);
        let q: Vec<f64> = (seed..seed + 4).map(quality).collect();
        let best = q.iter().cloned().fold(f64::MIN, f64::max);
        expected_lift += best - q.iter().sum::<f64>() / 4.0;
    }
    let (status, _, _) = post(&proxy.url("/v1/chat/completions"), json!({"messages": []}), &[]).await;
    assert_eq!(status, 400);
    // A pass-through (N = 1) request has its overhead measured too.
    let mut body = chat_body("q");
    body["bestofn"] = json!({"n": 1, "domain": "code"});
    let (status, _, _) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200);

    let text = scrape(&proxy).await;
    assert_eq!(sample(&text, r#"bestofn_requests_total{domain="math",status_class="2xx"}"#), 3.0);
    assert_eq!(sample(&text, r#"bestofn_requests_total{domain="unknown",status_class="4xx"}"#), 1.0);
    assert_eq!(sample(&text, r#"bestofn_errors_total{domain="unknown",kind="invalid_request"}"#), 1.0);
    assert_eq!(sample(&text, r#"bestofn_candidates_requested_total{domain="math"}"#), 12.0);
    assert_eq!(sample(&text, r#"bestofn_candidates_received_total{domain="math"}"#), 12.0);
    assert_eq!(sample(&text, r#"bestofn_prompt_tokens_total{domain="math"}"#), 3.0 * PROMPT_TOKENS as f64);
    assert_eq!(sample(&text, r#"bestofn_reward_lift_count{domain="math",scorer="vllm"}"#), 3.0);
    let lift = sample(&text, r#"bestofn_reward_lift_sum{domain="math",scorer="vllm"}"#);
    assert!((lift - expected_lift).abs() < 1e-9, "lift {lift} vs {expected_lift}");
    assert!(expected_lift > 0.0);
    assert_eq!(sample(&text, r#"bestofn_request_duration_seconds_count{domain="math"}"#), 3.0);
    assert_eq!(sample(&text, "bestofn_overhead_seconds_count"), 4.0);
    assert_eq!(sample(&text, "bestofn_in_flight_requests"), 0.0);
    // Overhead excludes the upstream and scorer calls: it is below the end-to-end latency.
    assert!(
        sample(&text, "bestofn_overhead_seconds_sum")
            < sample(&text, r#"bestofn_request_duration_seconds_sum{domain="math"}"#)
                + sample(&text, r#"bestofn_request_duration_seconds_sum{domain="code"}"#)
    );
}

/// Metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("bestofn_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/bestofn.json")).unwrap(),
    )
    .unwrap();
    // Importable: a datasource template variable that every panel and target uses.
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource"));
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().unwrap()).collect();
    for needed in ["Requests", "latency", "overhead", "Tokens per domain", "Reward lift", "Errors", "cache hit rate"] {
        assert!(titles.iter().any(|t| t.contains(needed)), "no panel for {needed}: {titles:?}");
    }
    let mut wanted = BTreeSet::new();
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], "${datasource}");
        for target in panel["targets"].as_array().unwrap() {
            wanted.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    assert!(wanted.len() >= 15, "{wanted:?}");

    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 3));
    post(&proxy.url("/v1/chat/completions"), chat_body("What is 2+2?"), &[]).await;
    post(&proxy.url("/v1/chat/completions"), json!({"messages": "bad"}), &[]).await;
    let text = scrape(&proxy).await;
    let exported: BTreeSet<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let missing: Vec<&String> = wanted.iter().filter(|name| !exported.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "queried by the dashboard but not exported: {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_domain_policy_applies_to_classified_requests() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&upstream, &rm, "n", 2)
        + "\n[domains.math]\nn = 3\nscorer = \"tei\"\ntemperature = 0.9\nmax_tokens = 64\n\n[domains.general]\nn = 1\n";
    let proxy = Bestofn::start(&cfg);

    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("What is 17 * 23?"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["domain"], "math");
    assert_eq!(resp["bestofn"]["n_requested"], 3);
    assert_eq!(resp["bestofn"]["scorer"], "tei");
    let call = &upstream.requests_to("/v1/chat/completions")[0];
    assert_eq!((call.body["temperature"].as_f64(), call.body["max_tokens"].as_u64()), (Some(0.9), Some(64)));

    // The client's own values win over the domain's defaults.
    upstream.clear();
    let mut body = chat_body("What is 17 * 23?");
    body["temperature"] = json!(0.2);
    body["max_completion_tokens"] = json!(10);
    post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    let call = &upstream.requests_to("/v1/chat/completions")[0];
    assert_eq!(call.body["temperature"], 0.2);
    assert!(call.body.get("max_tokens").is_none());

    // n = 1 for a domain is a pass-through.
    upstream.clear();
    let (status, headers, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("hello there"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-bestofn-n"], "1");
    assert!(resp.get("bestofn").is_none());
    // An explicit domain wins over the classifier.
    let (_, _, resp) =
        post(&proxy.url("/v1/chat/completions"), chat_body("hello there"), &[("x-bestofn-domain", "math")]).await;
    assert_eq!(resp["bestofn"]["domain"], "math");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_judge_llm_can_replace_the_rule_classifier() {
    let normal = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream = FakeServer::start(move |r: &Recorded| {
        let system = r.body["messages"][0]["content"].as_str().unwrap_or("");
        if system.starts_with("Classify the user's message") {
            Reply::Json(200, json!({"id": "c", "object": "chat.completion", "created": 1, "model": "judge",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Math."}, "finish_reason": "stop"}]}))
        } else {
            normal(r)
        }
    })
    .await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&upstream, &rm, "n", 2)
        + "\n[classifier]\nkind = \"judge\"\nmodel = \"judge-model\"\n\n[domains.math]\nn = 3\n";
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("hello there"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["domain"], "math", "the judge's answer, not the rules' 'general'");
    assert_eq!(resp["bestofn"]["n_requested"], 3);
    let judged = upstream.requests().into_iter().find(|r| r.body["model"] == "judge-model").unwrap();
    assert_eq!(judged.body["messages"][1]["content"], "hello there");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recorder_writes_the_samples_format_and_rotates() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.jsonl");
    let cfg = config(&upstream, &rm, "n", 3)
        + &format!("\n[recorder]\npath = \"{}\"\nmax_bytes = 2500\nmax_files = 2\n", path.display());
    let proxy = Bestofn::start(&cfg);
    let requests = 6;
    for seed in 0..requests {
        let mut body = chat_body(&format!("What is {seed} + 1?"));
        body["seed"] = json!(seed * 10);
        let (status, _, _) =
            post(&proxy.url("/v1/chat/completions"), body, &[("x-request-id", &format!("req-{seed}"))]).await;
        assert_eq!(status, 200);
    }
    let files = [path.clone(), dir.path().join("samples.jsonl.1"), dir.path().join("samples.jsonl.2")];
    let read_all = || -> Vec<Value> {
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|t| t.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect::<Vec<_>>())
            .collect()
    };
    let mut rows = read_all();
    for _ in 0..200 {
        // The recorder is FIFO and the requests were sequential: the last one written means all were.
        if rows.iter().any(|r| r["prompt_id"] == "req-5") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        rows = read_all();
    }
    assert!(dir.path().join("samples.jsonl.1").exists(), "no rotation at max_bytes");
    assert!(!dir.path().join("samples.jsonl.3").exists(), "max_files exceeded");
    for f in &files {
        if let Ok(meta) = std::fs::metadata(f) {
            assert!(meta.len() <= 2500, "{} is {} bytes", f.display(), meta.len());
        }
    }
    assert!(!rows.is_empty());
    for row in &rows {
        let id = row["prompt_id"].as_str().unwrap();
        let seed: i64 = id.trim_start_matches("req-").parse::<i64>().unwrap() * 10;
        assert_eq!(row["domain"], "math");
        assert!(row["prompt"].as_str().unwrap().starts_with("What is"));
        let candidates = row["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 3);
        for (i, c) in candidates.iter().enumerate() {
            assert_eq!(c["text"], candidate_text(seed + i as i64));
            assert_eq!(c["rewards"]["vllm"].as_f64().unwrap(), quality(seed + i as i64));
        }
        let chosen = row["chosen"].as_u64().unwrap() as usize;
        let best = (0..3).map(|i| quality(seed + i)).fold(f64::MIN, f64::max);
        assert_eq!(candidates[chosen]["rewards"]["vllm"].as_f64().unwrap(), best);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_answer_counts_as_in_flight_until_its_body_ends() {
    let inner = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream =
        FakeServer::start(move |r: &Recorded| Reply::Delayed(Duration::from_millis(800), Box::new(inner(r)))).await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg =
        config(&upstream, &rm, "n", 2).replace("[upstream]", "[server]\nheartbeat_interval_ms = 40\n\n[upstream]");
    let proxy = Bestofn::start(&cfg);
    let mut body = chat_body("slow");
    body["stream"] = json!(true);
    body["bestofn"] = json!({"domain": "math"});
    let response = client().post(proxy.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "the stream has started: its headers are out");
    let mut stream = response.bytes_stream();
    use futures_util::StreamExt;
    // Heartbeats until the slow upstream answers.
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains(": keep-alive"));
    let text = scrape(&proxy).await;
    assert_eq!(sample(&text, "bestofn_in_flight_requests"), 1.0, "counted while it streams");
    assert!(!text.contains(r#"bestofn_requests_total{domain="math""#), "not yet finished: {text}");
    while stream.next().await.is_some() {}
    let mut text = scrape(&proxy).await;
    for _ in 0..50 {
        if sample(&text, "bestofn_in_flight_requests") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = scrape(&proxy).await;
    }
    assert_eq!(sample(&text, "bestofn_in_flight_requests"), 0.0);
    assert_eq!(sample(&text, r#"bestofn_requests_total{domain="math",status_class="2xx"}"#), 1.0);
    assert_eq!(sample(&text, r#"bestofn_request_duration_seconds_count{domain="math"}"#), 1.0);
    assert!(sample(&text, r#"bestofn_request_duration_seconds_sum{domain="math"}"#) >= 0.8);
    assert_eq!(sample(&text, r#"bestofn_candidates_received_total{domain="math"}"#), 2.0);
}
