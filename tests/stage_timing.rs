//! The `stage-timing` feature: the real binary logs when its requests reached each stage.

#![cfg(feature = "stage-timing")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const STAGES: [&str; 16] = [
    "bytes_in",
    "handler",
    "body_read",
    "parsed",
    "planned",
    "attempt",
    "upstream_write",
    "upstream_written",
    "upstream_bytes_in",
    "upstream_answer",
    "forwarded",
    "answered",
    "recording",
    "recorded",
    "response_write",
    "response_written",
];

#[tokio::test(flavor = "multi_thread")]
async fn pass_throughs_report_every_stage_in_the_order_they_reach_it() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    // One serving thread, so that the three requests are on one timeline's report.
    let env = [("BESTOFN_STAGE_TIMING_EVERY", "3"), ("TOKIO_WORKER_THREADS", "1")];
    let proxy = Bestofn::start_with_env(&config(&upstream, &rm, "n", 1), &env);
    let body = r#"{"messages": [{"role": "user", "content": "What is 2 + 2?"}]}"#;
    for _ in 0..3 {
        let response = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await.unwrap();
    }
    let waited = Instant::now();
    let report = loop {
        if let Some(line) = proxy.logs().into_iter().find(|l| l.contains("stage timing")) {
            break line;
        }
        assert!(waited.elapsed() < Duration::from_secs(10), "no stage timing report:\n{}", proxy.logs().join("\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(report.contains("requests=3"), "{report}");
    let medians = report.split("first bytes): ").nth(1).unwrap();
    let stamps: Vec<(&str, f64)> = medians
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| STAGES.contains(name))
        .map(|(name, value)| (name, value.parse().unwrap()))
        .collect();
    let names: Vec<&str> = stamps.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, STAGES, "{report}");
    // Each request's stamps rise along its path, so their medians do too.
    for pair in stamps.windows(2) {
        assert!(pair[0].1 <= pair[1].1, "{} after {}: {report}", pair[1].0, pair[0].0);
    }
    assert!(stamps[15].1 > 0.0, "{report}");
}
