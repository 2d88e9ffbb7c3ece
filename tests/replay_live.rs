//! What `eval replay --as-recorded` predicts is what the proxy did: requests go through the real
//! binary to a stub upstream and RM, the recorder writes them, and the replay of the recording
//! (its order, its seed, the same config) picks the same candidate, with the same number sampled
//! and the same stop reason, request by request, for every selection and stopping rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// Asserts that each pick is what the proxy did for its record.
fn assert_same(records: &[Value], picks: &[Value]) {
    assert_eq!(records.len(), picks.len());
    for (record, pick) in records.iter().zip(picks) {
        assert_eq!(pick["prompt_id"], record["prompt_id"]);
        assert!(record["seed"].is_u64(), "the seed used is recorded: {record}");
        for field in ["chosen", "n_sampled", "stop_reason"] {
            assert_eq!(
                pick[field], record[field],
                "{field} of {}: live {record}, replayed {pick}",
                record["prompt_id"]
            );
        }
        assert_eq!(pick["fused"].as_bool().unwrap_or(false), record["fused"].as_bool().unwrap_or(false));
    }
}

/// Questions, half with a client seed and half without (bestofn draws and records one).
fn questions(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let mut body = chat_body(&format!("What is {i} + {i}?"));
            if i % 2 == 0 {
                body["seed"] = json!(i * 7 + 1);
            }
            body
        })
        .collect()
}

/// The highest recorded reward's index (ties to the lower), what argmax picks.
fn argmax(record: &Value, scorer: &str) -> usize {
    let rewards: Vec<f64> =
        record["candidates"].as_array().unwrap().iter().map(|c| c["rewards"][scorer].as_f64().unwrap()).collect();
    (0..rewards.len()).fold(0, |best, i| if rewards[i] > rewards[best] { i } else { best })
}

async fn stubs() -> (FakeServer, FakeServer) {
    (
        FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await,
        FakeServer::start(rm_handler()).await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn argmax_weighted_vote_and_soft_selection_replay_as_served() {
    let (upstream, rm) = stubs().await;
    let (records, picks) = live_and_replayed(&config(&upstream, &rm, "n", 4), questions(6)).await;
    assert_same(&records, &picks);
    assert!(records.iter().all(|r| r["chosen"].as_u64().unwrap() as usize == argmax(r, "vllm")));

    let weighted = config(&upstream, &rm, "n", 4).replace("scorer = \"vllm\"", "scorer = \"weighted\"")
        + "\n[scorers.weighted]\nkind = \"weighted_vote\"\nmember = \"vllm\"\ntemperature = 1.0\n";
    let (records, picks) = live_and_replayed(&weighted, questions(6)).await;
    assert_same(&records, &picks);

    // A high temperature: the soft draw often leaves the best candidate, and only the recorded
    // seed makes the replay draw the same.
    let soft = config(&upstream, &rm, "n", 6)
        .replace("scorer = \"vllm\"", "scorer = \"vllm\"\nselection = \"soft\"\nsoft_temperature = 5.0");
    let (records, picks) = live_and_replayed(&soft, questions(10)).await;
    assert_same(&records, &picks);
    assert!(
        records.iter().any(|r| r["chosen"].as_u64().unwrap() as usize != argmax(r, "vllm")),
        "no soft pick left the best candidate: the case proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fuse_replays_with_the_fuser_and_says_so() {
    let (upstream, rm) = stubs().await;
    let fuser = FakeServer::start(|_: &Recorded| {
        Reply::Json(200, json!({"id": "f", "object": "chat.completion", "created": 1, "model": "fuser-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fused q=5"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}))
    })
    .await;
    let cfg = config(&upstream, &rm, "n", 4)
        .replace("scorer = \"vllm\"", "scorer = \"vllm\"\nselection = \"fuse\"\nfuse_top = 2")
        + &format!("\n[fuser]\nbase_url = \"{}/v1\"\nmodel = \"fuser-model\"\n", fuser.url());
    let (records, picks) = live_and_replayed(&cfg, questions(4)).await;
    assert_same(&records, &picks);
    assert!(picks.iter().all(|p| p["fused"] == true), "{picks:?}");
    assert!(fuser.requests().len() >= 8, "the replay called the fuser too");
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_waves_with_batched_and_per_arrival_scoring_replay_as_served() {
    let (upstream, rm) = stubs().await;
    // `vllm` scores a whole wave in one call; `vllm_messages` (one conversation a call) scores
    // each arrival.
    for scorer in ["vllm", "vllm_messages"] {
        let cfg = config(&upstream, &rm, "parallel", 8).replace(
            "scorer = \"vllm\"",
            &format!("scorer = \"{scorer}\"\nadaptive = true\nfirst_wave = 2\naccept_score = 3.0"),
        );
        let (records, picks) = live_and_replayed(&cfg, questions(10)).await;
        assert_same(&records, &picks);
        let reasons: std::collections::BTreeSet<&str> =
            records.iter().map(|r| r["stop_reason"].as_str().unwrap()).collect();
        assert!(reasons.contains("accept_score"), "{scorer}: no run stopped early: {reasons:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hedged_parallel_sampling_replays_as_served() {
    let (upstream, rm) = stubs().await;
    let cfg = config(&upstream, &rm, "parallel", 3).replace("[upstream]", "[upstream]\nhedge = 2");
    let (records, picks) = live_and_replayed(&cfg, questions(4)).await;
    assert_same(&records, &picks);
}
