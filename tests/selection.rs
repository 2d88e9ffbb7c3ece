//! Soft best-of-N through the real binary: picks drawn by the softmax of standardised scores,
//! reproducible with a seed, and bad values named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn soft_picks_follow_the_softmax_and_a_seed_reproduces_them() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&upstream, &rm, "n", 4)
        .replace("scorer = \"vllm\"", "scorer = \"vllm\"\nselection = \"soft\"\nsoft_temperature = 1.0");
    let proxy = Bestofn::start(&cfg);
    let target = proxy.url("/v1/chat/completions");
    // Over many requests, how often the top-scored candidate wins is the sum of its softmax
    // probabilities, within a binomial bound.
    let (mut observed, mut expected, mut variance) = (0.0, 0.0, 0.0);
    let mut not_top = 0;
    for seed in 0..150 {
        let mut body = chat_body("q");
        body["seed"] = json!(seed * 4);
        let (status, _, resp) = post(&target, body, &[]).await;
        assert_eq!(status, 200, "{resp}");
        let b = &resp["bestofn"];
        assert_eq!(b["selection"], "soft");
        let scores: Vec<f64> = b["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
        let n = scores.len() as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        let exps: Vec<f64> = scores.iter().map(|s| ((s - mean) / sd).exp()).collect();
        let top = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        let p_top = exps[top] / exps.iter().sum::<f64>();
        let chosen = b["chosen"].as_u64().unwrap() as usize;
        observed += f64::from(u8::from(chosen == top));
        not_top += usize::from(chosen != top);
        expected += p_top;
        variance += p_top * (1.0 - p_top);
    }
    assert!(
        (observed - expected).abs() <= 4.0 * variance.sqrt(),
        "top picked {observed} times, expected {expected:.1}"
    );
    assert!(not_top > 0, "soft selection does not always take the argmax");
    // A seeded request draws the same pick again; `best` per request takes the argmax.
    let mut body = chat_body("q");
    body["seed"] = json!(40);
    let (_, _, a) = post(&target, body.clone(), &[]).await;
    let (_, _, b) = post(&target, body.clone(), &[]).await;
    assert_eq!(a["bestofn"]["chosen"], b["bestofn"]["chosen"]);
    body["bestofn"] = json!({"selection": "best"});
    let (_, _, best) = post(&target, body, &[]).await;
    let scores: Vec<f64> = best["bestofn"]["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    let top = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
    assert_eq!(best["bestofn"]["chosen"], top);
    assert!(best["bestofn"].get("selection").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_selection_values_are_named() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 2));
    let mut body = chat_body("q");
    body["bestofn"] = json!({"selection": "magic"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 400);
    assert_envelope(&resp, Some("bestofn.selection"));
    for (extra, needle) in
        [("selection = \"soft\"\nsoft_temperature = 0", "policy.soft_temperature"), ("selection = \"fuse\"", "fuse")]
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            config(&upstream, &rm, "n", 2).replace("scorer = \"vllm\"", &format!("scorer = \"vllm\"\n{extra}")),
        )
        .unwrap();
        let (ok, _, err) = bestofn(&["check-config", path.to_str().unwrap()]);
        assert!(!ok && err.contains("bad.toml") && err.contains(needle), "{extra}: {err}");
    }
}
