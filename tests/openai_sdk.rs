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

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/chat_client.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(proxy.url("/v1"))
        .output()
        .await
        .expect("python3 must be installed (.ci/run installs it with the openai package)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the SDK client failed (is `pip install openai` done?):\n{stderr}");
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();

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
