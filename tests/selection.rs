//! Soft best-of-N through the real binary: picks drawn by the softmax of standardised scores,
//! reproducible with a seed, and bad values named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

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

fn fuse_config(upstream: &FakeServer, rm: &FakeServer, fuser: &FakeServer, extra: &str) -> String {
    config(upstream, rm, "n", 4)
        .replace("scorer = \"vllm\"", "scorer = \"vllm\"\nselection = \"fuse\"\nfuse_top = 2\nfuse_show_scores = true")
        + &format!("\n[fuser]\nbase_url = \"{}/v1\"\nmodel = \"fuser-model\"\ntimeout_ms = 300\n{extra}\n", fuser.url())
}

#[tokio::test(flavor = "multi_thread")]
async fn fuse_sends_the_top_candidates_in_score_order_and_answers_with_the_fusion() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let fuser = FakeServer::start(|_: &Recorded| {
        Reply::Json(200, json!({"id": "f", "object": "chat.completion", "created": 1, "model": "fuser-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Fused answer q=5"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}}))
    })
    .await;
    let proxy = Bestofn::start(&fuse_config(&upstream, &rm, &fuser, ""));
    let mut body = chat_body("q");
    body["seed"] = json!(8);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["choices"][0]["message"]["content"], "Fused answer q=5");
    let b = &resp["bestofn"];
    assert_eq!((b["fused"].as_bool(), b["selection"].as_str()), (Some(true), Some("fuse")), "{b}");
    let scores: Vec<f64> = b["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    let mut by_score: Vec<usize> = (0..scores.len()).collect();
    by_score.sort_by(|&a, &c| scores[c].total_cmp(&scores[a]));
    assert_eq!(b["fused_from"], json!(by_score[..2]), "the top two, best first");
    assert_eq!(b["fused_score"], 5.0, "scored by the request's pointwise scorer");
    // The fuser saw the conversation and the top two candidates, best first, with scores.
    let calls = fuser.requests_to("/v1/chat/completions");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["model"], "fuser-model");
    let last = calls[0].body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_string();
    let texts: Vec<String> = by_score[..2].iter().map(|&i| candidate_text(8 + i as i64)).collect();
    let (first, second) = (last.find(&texts[0]).unwrap(), last.find(&texts[1]).unwrap());
    assert!(first < second && last.contains("score"), "{last}");
    // Usage adds the fuser's tokens to the candidates'.
    let generation = &b["usage"]["generation"];
    assert_eq!(resp["usage"]["prompt_tokens"], generation["prompt_tokens"].as_u64().unwrap() + 30);
    assert_eq!(resp["usage"]["completion_tokens"], generation["completion_tokens"].as_u64().unwrap() + 5);
    assert_eq!(b["usage"]["fuser"], json!({"prompt_tokens": 30, "completion_tokens": 5}));
    // Streamed, the fused text is the answer too.
    body["stream"] = json!(true);
    let (_, _, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    let content: String = data_events(&parse_sse(&text))
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(content, "Fused answer q=5");
    let metrics = client().get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"bestofn_fuse_total{domain="general",outcome="better"} 2"#), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_or_hanging_fuser_falls_back_to_the_best_candidate_within_its_timeout() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let failing = FakeServer::start(|_: &Recorded| Reply::Json(500, json!({"error": {"message": "fuser down"}}))).await;
    let hanging =
        FakeServer::start(|_: &Recorded| Reply::Delayed(Duration::from_secs(5), Box::new(Reply::Json(200, json!({})))))
            .await;
    for (fuser, needle) in [(&failing, "fuser down"), (&hanging, "timed out")] {
        let proxy = Bestofn::start(&fuse_config(&upstream, &rm, fuser, ""));
        let started = std::time::Instant::now();
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
        assert_eq!(status, 200, "{resp}");
        assert!(started.elapsed() < Duration::from_secs(3), "within the fuser's timeout, not its 5 s");
        let b = &resp["bestofn"];
        assert!(b["fuse_failed"].as_str().unwrap().contains(needle), "{b}");
        assert!(b.get("fused").is_none());
        let chosen = b["chosen"].as_u64().unwrap();
        assert!(
            resp["choices"][0]["message"]["content"].as_str().unwrap().contains("seed"),
            "the best candidate: {chosen}"
        );
    }
    // fuse without a [fuser] is a config error naming the key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        config(&upstream, &rm, "n", 2).replace("scorer = \"vllm\"", "scorer = \"vllm\"\nselection = \"fuse\""),
    )
    .unwrap();
    let (ok, _, err) = bestofn(&["check-config", path.to_str().unwrap()]);
    assert!(!ok && err.contains("policy.selection") && err.contains("[fuser]"), "{err}");
    std::fs::write(&path, fuse_config(&upstream, &rm, &failing, "").replace("fuse_top = 2", "fuse_top = 1")).unwrap();
    let (ok, _, err) = bestofn(&["check-config", path.to_str().unwrap()]);
    assert!(!ok && err.contains("policy.fuse_top"), "{err}");
}

/// A judge that compares the `q=` of the two answers, or (biased) always prefers A.
async fn pairwise_judge(biased: bool) -> FakeServer {
    FakeServer::start(move |req: &Recorded| {
        let user = req.body["messages"][1]["content"].as_str().unwrap_or("").to_string();
        let part = |who: &str| {
            let start = user.find(&format!("[The Start of Assistant {who}'s Answer]")).unwrap_or(0);
            let end = user.find(&format!("[The End of Assistant {who}'s Answer]")).unwrap_or(user.len());
            read_quality(&user[start..end])
        };
        let verdict = if biased || part("A") > part("B") { "[[A]]" } else { "[[B]]" };
        Reply::Json(200, json!({"id": "j", "object": "chat.completion", "created": 1, "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Reasons. {verdict}")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53}}))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pairwise_tournament_asks_each_pair_both_ways_and_crowns_the_best() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let judge = pairwise_judge(false).await;
    let cfg = config(&upstream, &rm, "n", 4)
        + &format!(
            "\n[scorers.pair]\nkind = \"judge\"\nbase_url = \"{}/v1\"\nmode = \"pairwise\"\nconcurrency = 3\n",
            judge.url()
        );
    let proxy = Bestofn::start(&cfg);
    // Round-robin for 4 (6 pairs, 12 calls); a knockout for 8 (4 + 2 + 1 matches, 14 calls).
    for (n, calls) in [(4, 12), (8, 14)] {
        judge.clear();
        let mut body = chat_body("q");
        body["seed"] = json!(20);
        body["bestofn"] = json!({"scorer": "pair", "n": n});
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(judge.requests_to("/v1/chat/completions").len(), calls, "n = {n}");
        let b = &resp["bestofn"];
        assert_eq!(b["usage"]["scorer"]["calls"], calls);
        let best = (0..n).max_by(|&a, &c| quality(20 + a).total_cmp(&quality(20 + c))).unwrap();
        assert_eq!(b["chosen"], best, "n = {n}: {b}");
        assert_eq!(b["scores"][best as usize], 1.0, "the champion won every match it played");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pair_that_disagrees_with_itself_is_a_tie() {
    use bestofn::remote::{Verdict, both_orders};
    assert_eq!(both_orders(Verdict::First, Verdict::Second), Verdict::First);
    assert_eq!(both_orders(Verdict::First, Verdict::First), Verdict::Tie, "A both times: position bias");
    assert_eq!(both_orders(Verdict::Second, Verdict::Second), Verdict::Tie);
    assert_eq!(both_orders(Verdict::Tie, Verdict::First), Verdict::Tie);
    // A judge that always says A: every match is a tie, decided by wins so far, then the seeded
    // coin; the same seed gives the same result.
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let judge = pairwise_judge(true).await;
    let cfg = config(&upstream, &rm, "n", 2)
        + &format!(
            "\n[scorers.pair]\nkind = \"judge\"\nbase_url = \"{}/v1\"\nmode = \"pairwise\"\nseed = 5\n",
            judge.url()
        );
    let proxy = Bestofn::start(&cfg);
    let mut body = chat_body("q");
    body["bestofn"] = json!({"scorer": "pair"});
    let (_, _, first) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    let (_, _, second) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    let scores = first["bestofn"]["scores"].clone();
    assert!(scores == json!([1.0, 0.0]) || scores == json!([0.0, 1.0]), "{scores}");
    assert_eq!(second["bestofn"]["scores"], scores, "seeded");
    assert_eq!(judge.requests_to("/v1/chat/completions").len(), 4, "one match, both orders, twice");
}
