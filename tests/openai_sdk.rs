//! Drop-in compatibility: the official OpenAI Python SDK against the real `bestofn` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_python_sdk_works_unchanged() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "auto", 3));

    let seen = sdk_client("chat_client.py", &[&proxy.url("/v1")]).await;

    let bestofn = &seen["bestofn"];
    let qualities: Vec<f64> = (40..45).map(quality).collect();
    let best = qualities.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(read_quality(seen["content"].as_str().unwrap()), best, "{seen}");
    assert_eq!(bestofn["n_received"], 5, "extra_body steering reached bestofn: {seen}");
    assert_eq!(bestofn["candidates"].as_array().unwrap().len(), 5);
    assert_eq!(seen["header_chosen"], bestofn["chosen"].to_string().as_str());
    assert_eq!(seen["finish_reason"], "stop");
    assert_eq!(seen["usage"]["prompt_tokens"], PROMPT_TOKENS);

    let top2: Vec<f64> = seen["top2"].as_array().unwrap().iter().map(|t| read_quality(t.as_str().unwrap())).collect();
    assert_eq!(top2.len(), 2);
    assert!(top2[0] >= top2[1], "best first: {top2:?}");
    assert_eq!(rm.requests_to("/predict").len(), 1, "extra_headers steered the scorer");

    assert_eq!(seen["error"]["status"], 400);
    assert_eq!(seen["error"]["param"], "messages");
    assert_eq!(seen["models"][0], "fake-model");

    // Streaming through the SDK's iterator: the same best candidate, usage at the end.
    assert_eq!(read_quality(seen["stream"]["content"].as_str().unwrap()), best, "{seen}");
    assert_eq!(seen["stream"]["finish_reason"], "stop");
    assert_eq!(seen["stream"]["usage_prompt_tokens"], PROMPT_TOKENS);
    // The legacy completions API, with best_of and streamed.
    assert_eq!(read_quality(seen["legacy"].as_str().unwrap()), best);
    assert_eq!(read_quality(seen["legacy_stream"].as_str().unwrap()), best);
}

/// A reasoning model's parallel tool calls and its reasoning, read through the official SDK:
/// `message.tool_calls`, `model_extra['reasoning_content']` and the vendor's own field, the same
/// after the SDK accumulates the streamed deltas; usage's `reasoning_tokens`.
#[tokio::test(flavor = "multi_thread")]
async fn the_openai_python_sdk_reads_reasoning_and_parallel_tool_calls() {
    let upstream = FakeServer::start(agent_upstream()).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 4));
    for winner in [2u32, 1] {
        let seen = sdk_client("agent_client.py", &[&proxy.url("/v1"), &format!("win-{winner}")]).await;
        let sent = agent_message(winner, 9.0);
        let field = if winner == 1 { "reasoning" } else { "reasoning_content" };
        let calls: Vec<Value> = sent["tool_calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| {
                        serde_json::json!({"id": c["id"], "type": "function", "name": c["function"]["name"],
                                           "arguments": c["function"]["arguments"]})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let reasoning_tokens: u64 = (0..4).map(agent_reasoning_tokens).sum();
        for view in ["plain", "stream"] {
            let got = &seen[view];
            assert_eq!(got[field], sent[field], "{view}: {seen}");
            assert_eq!(got["content"], sent["content"], "{view}: {seen}");
            assert_eq!(got["vendor_extra"], sent["vendor_extra"], "{view}: {seen}");
            assert_eq!(got["tool_calls"], Value::Array(calls.clone()), "{view}: {seen}");
            assert_eq!(got["finish_reason"], if winner == 2 { "tool_calls" } else { "stop" }, "{view}");
            assert_eq!(got["reasoning_tokens"], reasoning_tokens, "{view}: {seen}");
        }
        assert_eq!(seen["stream"]["reasoning_read"], sent[field], "{seen}");
        assert!(seen["stream"]["reasoning_deltas"].as_u64().unwrap() > 1, "{seen}");
    }
}

/// Runs the official OpenAI SDK client `tests/sdk/SCRIPT` with `args`; what it printed, as JSON.
async fn sdk_client(script: &str, args: &[&str]) -> Value {
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python3 must be installed (.ci/run installs it with the openai package)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK client failed (is `pip install openai` done?):\n{stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}
