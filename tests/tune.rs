//! `bestofn eval tune` through the real binary: the chosen N against a brute-force search of the
//! same objective, target-share boundaries, the written config in a running proxy, and the split.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// 12 prompts a domain, 16 candidates each:
/// - math: 8 of 16 correct, the RM ranks correct ones first: saturates at k = 2;
/// - code: 1 of 16 correct, the RM ranks it first: BoN@k = k/16 rises to 16;
/// - safety: 4 of 16 correct, the RM ranks them last: N = 1 is best.
fn synthetic() -> Vec<Value> {
    let mut rows = Vec::new();
    for (domain, correct, rm_sign) in [("math", 8, 1.0), ("code", 1, 1.0), ("safety", 4, -1.0)] {
        for p in 0..12 {
            let candidates: Vec<Value> = (0..16)
                .map(|i| {
                    let label = f64::from(u8::from(i < correct));
                    let reward = rm_sign * label + f64::from(i) * 0.001;
                    json!({"text": format!("{domain} {p} {i}"), "correct": label, "rewards": {"rm": reward, "noise": ((i * 7 + p) % 16) as f64}, "completion_tokens": 10})
                })
                .collect();
            rows.push(json!({"prompt_id": format!("{domain}-{p}"), "domain": domain, "candidates": candidates}));
        }
    }
    rows
}

/// Exact BoN@k by enumerating every k-subset (ties: none, rewards are distinct).
fn bon_brute(rewards: &[f64], labels: &[f64], k: usize) -> f64 {
    let n = rewards.len();
    let (mut total, mut count) = (0.0, 0.0);
    let mut subset: Vec<usize> = (0..k).collect();
    loop {
        let best = subset.iter().copied().fold(subset[0], |b, i| if rewards[i] > rewards[b] { i } else { b });
        total += labels[best];
        count += 1.0;
        // Next k-combination.
        let Some(i) = (0..k).rev().find(|&i| subset[i] < n - k + i) else { break };
        subset[i] += 1;
        for j in i + 1..k {
            subset[j] = subset[j - 1] + 1;
        }
    }
    total / count
}

/// The brute-force pick per domain: argmax of accuracy - c x k over scorers and k.
fn brute_pick(rows: &[Value], domain: &str, c: f64) -> (String, usize) {
    let mut best: Option<(f64, usize, String)> = None;
    for scorer in ["noise", "rm"] {
        for k in [1, 2, 4, 8, 16] {
            let accs: Vec<f64> = rows
                .iter()
                .filter(|r| r["domain"] == domain)
                .map(|r| {
                    let cands = r["candidates"].as_array().unwrap();
                    let rewards: Vec<f64> = cands.iter().map(|c| c["rewards"][scorer].as_f64().unwrap()).collect();
                    let labels: Vec<f64> = cands.iter().map(|c| c["correct"].as_f64().unwrap()).collect();
                    bon_brute(&rewards, &labels, k)
                })
                .collect();
            let value = accs.iter().sum::<f64>() / accs.len() as f64 - c * k as f64;
            let better = match &best {
                None => true,
                Some((v, bk, bs)) => {
                    value > v + 1e-12 || ((value - v).abs() <= 1e-12 && (k, scorer) < (*bk, bs.as_str()))
                }
            };
            if better {
                best = Some((value, k, scorer.to_string()));
            }
        }
    }
    let (_, k, s) = best.unwrap();
    (s, k)
}

fn write_samples(dir: &std::path::Path, rows: &[Value]) -> String {
    let path = dir.join("samples.jsonl");
    std::fs::write(&path, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    path.display().to_string()
}

/// `bestofn eval tune --samples SAMPLES --format json ARGS`, which must succeed, as JSON.
fn tune_json(samples: &str, args: &[&str]) -> Value {
    let mut all = vec!["eval", "tune", "--samples", samples, "--format", "json"];
    all.extend_from_slice(args);
    let (ok, out, err) = bestofn(&all);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn the_chosen_n_equals_a_brute_force_search_of_the_objective() {
    let dir = tempfile::tempdir().unwrap();
    let rows = synthetic();
    let samples = write_samples(dir.path(), &rows);
    for c in [0.0, 0.005, 0.02, 0.2] {
        let report = tune_json(&samples, &["--cost-per-sample", &c.to_string(), "--bootstrap", "50"]);
        for domain in ["math", "code", "safety"] {
            let d = &report["domains"][domain];
            let (scorer, k) = brute_pick(&rows, domain, c);
            assert_eq!(
                (d["scorer"].as_str().unwrap(), d["n"].as_u64().unwrap() as usize),
                (scorer.as_str(), k),
                "{domain} at C = {c}: {d}"
            );
        }
    }
    // The shapes: at a small cost math stops before 16 (it saturates), code wants all 16, safety 1.
    let report = tune_json(&samples, &["--cost-per-sample", "0.005"]);
    assert!(report["domains"]["math"]["n"].as_u64().unwrap() < 16, "math saturates before 16");
    assert_eq!(report["domains"]["code"]["n"], 16);
    assert_eq!(report["domains"]["safety"]["n"], 1);
    let code = &report["domains"]["code"];
    assert_eq!(code["baseline"]["n1"].as_f64().unwrap(), 1.0 / 16.0);
    assert!((code["baseline"]["max_n"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(code["mean_completion_tokens"], 160.0, "16 candidates of 10 tokens");
    assert_eq!(code["prompts"], 12);
}

#[test]
fn target_share_takes_the_cheapest_choice_at_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let samples = write_samples(dir.path(), &synthetic());
    // code: BoN@k = k/16 with rm, best 1.0 at 16. A share of exactly 0.5 is reached by k = 8.
    for (share, n) in [("1", 16), ("0.5", 8), ("0.5001", 16), ("0.25", 4), ("0.0625", 1)] {
        let report = tune_json(&samples, &["--target-share", share, "--scorers", "rm"]);
        assert_eq!(report["domains"]["code"]["n"], n, "share {share}");
    }
    for (args, needle) in [
        (vec!["--target-share", "0"], "--target-share"),
        (vec!["--target-share", "1.5"], "--target-share"),
        (vec!["--cost-per-sample", "-1"], "--cost-per-sample"),
        (vec!["--cost-per-sample", "0.1", "--scorers", "nope"], "nope"),
    ] {
        let mut all = vec!["eval", "tune", "--samples", &samples];
        all.extend(args);
        let (ok, _, err) = bestofn(&all);
        assert!(!ok && err.contains(needle), "{needle}: {err}");
    }
    let unlabelled = dir.path().join("u.jsonl");
    std::fs::write(&unlabelled, r#"{"prompt_id": "x", "candidates": [{"text": "a", "rewards": {"rm": 1}}]}"#).unwrap();
    let (ok, _, err) =
        bestofn(&["eval", "tune", "--samples", unlabelled.to_str().unwrap(), "--cost-per-sample", "0.1"]);
    assert!(!ok && err.contains("u.jsonl") && err.contains("no labelled prompts"), "{err}");
}

#[test]
fn the_split_never_tunes_on_a_held_out_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let rows = synthetic();
    let samples = write_samples(dir.path(), &rows);
    let split =
        tune_json(&samples, &["--cost-per-sample", "0.005", "--split", "0.5", "--seed", "9", "--min-prompts", "3"]);
    for domain in ["math", "code", "safety"] {
        let d = &split["domains"][domain];
        let held: Vec<String> =
            d["held_out"]["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(d["prompts"].as_u64().unwrap() as usize + held.len(), 12, "{d}");
        assert!(!held.is_empty());
        // Tuning on exactly the other prompts, without a split, gives the same choice and numbers:
        // the held-out prompts played no part.
        let tuning: Vec<Value> = rows
            .iter()
            .filter(|r| r["domain"] == domain && !held.contains(&r["prompt_id"].as_str().unwrap().to_string()))
            .cloned()
            .collect();
        let sub = dir.path().join(format!("{domain}.jsonl"));
        std::fs::write(&sub, tuning.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
        let alone = tune_json(sub.to_str().unwrap(), &["--cost-per-sample", "0.005", "--min-prompts", "3"]);
        let a = &alone["domains"][domain];
        assert_eq!(
            (a["scorer"].clone(), a["n"].clone(), a["expected_accuracy"].clone()),
            (d["scorer"].clone(), d["n"].clone(), d["expected_accuracy"].clone()),
            "{domain}"
        );
        assert!(d["held_out"]["accuracy"].as_f64().is_some() && d["held_out"]["baseline"]["n1"].as_f64().is_some());
        if d["n"] == 16 && d["adaptive"].is_null() {
            assert_eq!(
                d["held_out"]["accuracy"], d["held_out"]["baseline"]["max_n"],
                "fixed N = 16 measured as N = 16: {d}"
            );
        }
    }
    // Too few prompts keep the global policy and say why.
    let report = tune_json(&samples, &["--cost-per-sample", "0.005", "--split", "0.5"]);
    assert!(report["domains"]["math"]["note"].as_str().unwrap().contains("keeps the global policy"), "{report}");
    assert!(report["domains"]["math"]["n"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_written_config_passes_check_config_and_the_proxy_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let samples = write_samples(dir.path(), &synthetic());
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    // The user's config defines the scorers the samples carry rewards of.
    let base = config(&upstream, &rm, "n", 2)
        + "\n[scorers.rm]\nkind = \"reward_http\"\napi = \"vllm_classify\"\n"
        + &format!("url = \"{}/classify\"\n\n[scorers.noise]\nkind = \"consensus\"\n", rm.url());
    let base_path = dir.path().join("base.toml");
    std::fs::write(&base_path, &base).unwrap();
    let fragment = dir.path().join("tuned.toml");
    let (ok, table, err) = bestofn(&[
        "eval",
        "tune",
        "--samples",
        &samples,
        "--config",
        base_path.to_str().unwrap(),
        "--cost-per-sample",
        "0.005",
        "--write-config",
        fragment.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(table.contains("code") && table.contains("rm"), "{table}");
    let text = std::fs::read_to_string(&fragment).unwrap();
    assert!(
        text.contains("[domains.code]\nn = 16\nscorer = \"rm\"") && text.contains("# code: expected accuracy"),
        "{text}"
    );
    let merged = dir.path().join("merged.toml");
    std::fs::write(&merged, format!("{base}\n{text}")).unwrap();
    let (ok, _, err) = bestofn(&["check-config", merged.to_str().unwrap()]);
    assert!(ok, "{err}");
    let proxy = Bestofn::start(&std::fs::read_to_string(&merged).unwrap());
    for (domain, n) in [("code", 16), ("safety", 1)] {
        let mut body = chat_body("q");
        body["bestofn"] = json!({"domain": domain});
        upstream.clear();
        let (status, headers, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(headers["x-bestofn-n"], n.to_string().as_str(), "{domain}: {resp}");
        let sampled: u64 = upstream
            .requests_to("/v1/chat/completions")
            .iter()
            .map(|r| r.body.get("n").and_then(Value::as_u64).unwrap_or(1))
            .sum();
        assert_eq!(sampled, n, "{domain}: the upstream was asked for the tuned N");
    }
    // A recommended scorer missing from --config is named.
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, config(&upstream, &rm, "n", 2)).unwrap();
    let (ok, _, err) = bestofn(&[
        "eval",
        "tune",
        "--samples",
        &samples,
        "--config",
        bare.to_str().unwrap(),
        "--cost-per-sample",
        "0.005",
    ]);
    assert!(!ok && err.contains("no scorer named 'rm'"), "{err}");
}

#[test]
fn rewardbench_accuracy_is_shown_and_is_the_prior_where_nothing_was_measured() {
    let dir = tempfile::tempdir().unwrap();
    let samples = write_samples(dir.path(), &synthetic());
    let rb = |name: &str, subsets: Value| {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, json!({"benchmark": "rewardbench2", "overall": 0.6, "subsets": subsets}).to_string())
            .unwrap();
        format!("{name}={}", path.display())
    };
    let (rm, noise) = (rb("rm", json!({"Math": 0.7, "Focus": 0.6})), rb("noise", json!({"Math": 0.5, "Focus": 0.8})));
    let fragment = dir.path().join("tuned.toml");
    let plot = dir.path().join("tune.svg");
    let (ok, out, err) = bestofn(&[
        "eval",
        "tune",
        "--samples",
        &samples,
        "--cost-per-sample",
        "0.005",
        "--format",
        "json",
        "--rewardbench",
        &rm,
        "--rewardbench",
        &noise,
        "--write-config",
        fragment.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    if cfg!(feature = "plot") {
        assert!(ok, "{err}");
        let svg = std::fs::read_to_string(&plot).unwrap();
        assert!(svg.contains("<svg") && svg.contains("chosen") && svg.contains("fixed N, rm"), "the tune plot");
    } else {
        assert!(!ok && err.contains("--features plot"), "{err}");
        return;
    }
    let report: Value = serde_json::from_str(&out).unwrap();
    let math = &report["domains"]["math"];
    assert_eq!(math["rewardbench"], json!({"noise": 0.5, "rm": 0.7}));
    assert!(math.get("prior").is_none(), "math was measured");
    let focus = &report["domains"]["focus"];
    assert_eq!((focus["scorer"].as_str(), focus["prior"].as_bool()), (Some("noise"), Some(true)), "{focus}");
    assert!(focus["n"].is_null() && focus["expected_accuracy"].is_null());
    let text = std::fs::read_to_string(&fragment).unwrap();
    assert!(text.contains("[domains.focus]\nscorer = \"noise\"") && text.contains("not measured"), "{text}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{}").unwrap();
    let (ok, _, err) = bestofn(&[
        "eval",
        "tune",
        "--samples",
        &samples,
        "--cost-per-sample",
        "0.005",
        "--rewardbench",
        &format!("x={}", bad.display()),
    ]);
    assert!(!ok && err.contains("bad.json") && err.contains("subsets"), "{err}");
}
