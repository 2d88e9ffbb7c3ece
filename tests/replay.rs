//! `bestofn eval replay` through the real binary: the proxy's stopping rules over recorded
//! candidates, checked against a brute-force enumeration of every arrival order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// (reward, label, completion tokens) per candidate, per prompt.
fn prompts() -> Vec<Vec<(f64, f64, u64)>> {
    vec![
        vec![(0.9, 1.0, 10), (0.2, 0.0, 20), (0.5, 1.0, 30), (0.1, 0.0, 40)],
        vec![(0.3, 0.0, 5), (0.7, 1.0, 6), (0.85, 0.0, 7), (0.6, 1.0, 8)],
        vec![(0.1, 0.0, 1), (0.2, 0.0, 2), (0.3, 1.0, 3), (0.4, 0.0, 4)],
    ]
}

/// Every permutation of 0..n.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}

/// Independent brute force of adaptive parallel sampling with accept_score: waves of 1, 1, 2
/// (totals 1, 2, 4); after each arrival, stop when its reward >= threshold; the pick is the
/// highest reward among arrivals (first in arrival order on ties).
fn brute(cands: &[(f64, f64, u64)], threshold: Option<f64>) -> (f64, f64, f64) {
    let orders = permutations(cands.len());
    let (mut acc, mut req, mut tok) = (0.0, 0.0, 0.0);
    for order in &orders {
        let totals = if threshold.is_some() { vec![1, 2, 4] } else { vec![4] };
        let mut arrived: Vec<usize> = Vec::new();
        let mut requested = 0;
        'waves: for (w, &total) in totals.iter().enumerate() {
            requested = total;
            let start = if w == 0 { 0 } else { totals[w - 1] };
            for &c in &order[start..total] {
                arrived.push(c);
                if threshold.is_some_and(|t| cands[c].0 >= t) {
                    break 'waves;
                }
            }
        }
        let best = arrived.iter().copied().fold(arrived[0], |b, c| if cands[c].0 > cands[b].0 { c } else { b });
        acc += cands[best].1;
        req += requested as f64;
        tok += arrived.iter().map(|&c| cands[c].2 as f64).sum::<f64>();
    }
    let m = orders.len() as f64;
    (acc / m, req / m, tok / m)
}

#[test]
fn replay_equals_a_brute_force_enumeration_of_arrival_orders() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = prompts()
        .iter()
        .enumerate()
        .map(|(i, cands)| {
            let candidates: Vec<Value> = cands
                .iter()
                .map(|(r, l, t)| json!({"text": format!("c{r}"), "rewards": {"rm": r}, "correct": l, "completion_tokens": t}))
                .collect();
            json!({"prompt_id": format!("p{i}"), "domain": "math", "prompt": "q", "candidates": candidates}).to_string() + "\n"
        })
        .collect();
    let samples = dir.path().join("s.jsonl");
    std::fs::write(&samples, lines).unwrap();
    let config = dir.path().join("c.toml");
    // The RM is never called: its recorded rewards are replayed.
    std::fs::write(
        &config,
        r#"
[upstream]
base_url = "http://127.0.0.1:9/v1"
sampling = "parallel"
[scorers.rm]
kind = "reward_http"
api = "vllm_classify"
url = "http://127.0.0.1:9/classify"
[policy]
n = 4
scorer = "rm"
[domains.math]
adaptive = true
first_wave = 1
accept_score = 0.8
"#,
    )
    .unwrap();
    let (s, c) = (samples.display().to_string(), config.display().to_string());
    let (ok, out, err) = bestofn(&[
        "eval",
        "replay",
        "--samples",
        &s,
        "--config",
        &c,
        "--orders",
        "24",
        "--format",
        "json",
        "--bootstrap",
        "100",
    ]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["orders"], 24, "4! orders: every one replayed");
    let math = &report["domains"]["math"];
    assert_eq!(math["prompts"], 3);
    for (policy, threshold) in [("policy", Some(0.8)), ("fixed", None)] {
        let per_prompt: Vec<(f64, f64, f64)> = prompts().iter().map(|p| brute(p, threshold)).collect();
        let mean = |f: fn(&(f64, f64, f64)) -> f64| per_prompt.iter().map(f).sum::<f64>() / 3.0;
        let got = &math[policy];
        assert!((got["accuracy"].as_f64().unwrap() - mean(|r| r.0)).abs() < 1e-12, "{policy}: {got}");
        assert!((got["mean_candidates"].as_f64().unwrap() - mean(|r| r.1)).abs() < 1e-12, "{policy}: {got}");
        assert!((got["mean_completion_tokens"].as_f64().unwrap() - mean(|r| r.2)).abs() < 1e-12, "{policy}: {got}");
        assert!(got["ci_low"].as_f64().unwrap() <= got["accuracy"].as_f64().unwrap());
    }
    assert!(math["policy"]["mean_candidates"].as_f64().unwrap() < 4.0, "adaptive samples fewer: {math}");
    assert_eq!(math["fixed"]["mean_candidates"], 4.0);

    // Other formats, and a clear error without labels.
    let (ok, table, _) = bestofn(&["eval", "replay", "--samples", &s, "--config", &c, "--bootstrap", "0"]);
    assert!(
        ok && table.contains("adaptive n=4 rm first_wave=1 accept=0.8") && table.contains("fixed n=4 rm"),
        "{table}"
    );
    let unlabelled = dir.path().join("u.jsonl");
    std::fs::write(
        &unlabelled,
        r#"{"prompt_id": "x", "domain": "math", "candidates": [{"text": "a"}, {"text": "b"}]}"#,
    )
    .unwrap();
    let (ok, _, err) = bestofn(&["eval", "replay", "--samples", unlabelled.to_str().unwrap(), "--config", &c]);
    assert!(!ok && err.contains("no labelled prompts"), "{err}");
}
