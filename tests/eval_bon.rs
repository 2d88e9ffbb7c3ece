//! `bestofn eval bon`, `eval correlate` and `eval leaderboard` through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use bestofn::eval::bon::{Prompt, bon_report};
use common::*;
use serde_json::{Value, json};

fn samples() -> Vec<Value> {
    let mut rows = Vec::new();
    let mut rng = fastrand::Rng::with_seed(3);
    for i in 0..40 {
        let domain = if i % 2 == 0 { "math" } else { "precise_if" };
        let n = if i % 10 == 0 { 3 } else { 8 };
        let candidates: Vec<Value> = (0..n)
            .map(|_| {
                let correct = f64::from(u8::from(rng.f64() < 0.4));
                json!({"text": "t", "correct": correct, "rewards": {"rm": (correct + rng.f64()).to_string().parse::<f64>().unwrap(), "noise": rng.f64()}})
            })
            .collect();
        rows.push(json!({"prompt_id": format!("p{i}"), "domain": domain, "prompt": "q", "candidates": candidates}));
    }
    rows
}

fn as_prompts(rows: &[Value]) -> Vec<Prompt> {
    rows.iter()
        .map(|r| {
            let cands = r["candidates"].as_array().unwrap();
            let mut rewards: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for name in ["rm", "noise"] {
                rewards.insert(name.into(), cands.iter().map(|c| c["rewards"][name].as_f64().unwrap()).collect());
            }
            Prompt {
                id: r["prompt_id"].as_str().unwrap().into(),
                domain: r["domain"].as_str().unwrap().into(),
                labels: cands.iter().map(|c| c["correct"].as_f64().unwrap()).collect(),
                rewards,
            }
        })
        .collect()
}

/// JSON equality, numbers within 1e-12 (printing and parsing floats may move the last digit).
fn assert_close(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-12, "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{at}");
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn bon_curves_from_samples_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let rows = samples();
    let path = dir.path().join("samples.jsonl");
    std::fs::write(&path, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let p = path.to_str().unwrap();

    let (ok, out, err) =
        bestofn(&["eval", "bon", "--samples", p, "--format", "json", "--bootstrap", "200", "--seed", "5"]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["k"], json!([1, 2, 4, 8]));
    let expected = serde_json::to_value(bon_report(&as_prompts(&rows), 200, 5)).unwrap();
    assert_close(&got, &expected, "$");
    let all = &got["domains"]["all"];
    assert_eq!(all["prompts"], json!([40, 40, 36, 36]), "prompts with 3 candidates do not count at k = 4 or 8");
    for key in ["prompts", "mean", "oracle", "rewards"] {
        assert!(all.get(key).is_some(), "{key}");
    }
    let rm = &all["rewards"]["rm"];
    for key in ["bon", "ci_low", "ci_high", "gain"] {
        assert_eq!(rm[key].as_array().unwrap().len(), 4, "{key}");
    }
    // A reward that tracks correctness gains; and BoN@1 is the mean whatever the reward.
    assert!(rm["gain"][3].as_f64().unwrap() > all["rewards"]["noise"]["gain"][3].as_f64().unwrap());
    assert!((rm["bon"][0].as_f64().unwrap() - all["mean"].as_f64().unwrap()).abs() < 1e-12);

    let (_, table, _) = bestofn(&["eval", "bon", "--samples", p, "--bootstrap", "0"]);
    assert!(table.contains("oracle") && table.contains("bon rm") && table.contains("@8"), "{table}");
    let (_, csv, _) = bestofn(&["eval", "bon", "--samples", p, "--format", "csv", "--bootstrap", "0"]);
    assert!(csv.starts_with("domain,series,k,prompts,value,ci_low,ci_high,gain\n"));
    assert!(csv.lines().any(|l| l.starts_with("math,rm,8,")));
    let (_, md, _) = bestofn(&["eval", "bon", "--samples", p, "--format", "md", "--bootstrap", "0"]);
    assert!(md.starts_with("| domain | series | @1 |"));
}

#[tokio::test(flavor = "multi_thread")]
async fn recorder_output_is_labelled_with_a_scorer() {
    // The proxy's recorder writes no labels; a scorer (here an RM that reads q=) fills them.
    let rm = FakeServer::start(rm_handler()).await;
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(&upstream, &rm, "n", 2)).unwrap();
    let lines: String = (0..3)
        .map(|i| {
            json!({"prompt_id": format!("r{i}"), "domain": "math", "prompt": "q", "chosen": 0, "scorer": "vllm",
                "candidates": [{"text": "answer q=0.9", "rewards": {"vllm": 0.9}}, {"text": "answer q=-3", "rewards": {"vllm": -3.0}}]})
            .to_string()
                + "\n"
        })
        .collect();
    let path = dir.path().join("recorded.jsonl");
    std::fs::write(&path, lines).unwrap();
    let (p, c) = (path.display().to_string(), cfg.display().to_string());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        bestofn(&["eval", "bon", "--samples", &p, "--label-with", "vllm", "--config", &c, "--format", "json"])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    let all = &got["domains"]["all"];
    assert_eq!(all["prompts"][0], 3);
    // Labels: clamp(0.9) = 0.9 and clamp(-3) = 0; the RM picks the 0.9 one at k = 2.
    assert!((all["mean"].as_f64().unwrap() - 0.45).abs() < 1e-12);
    assert!((all["rewards"]["vllm"]["bon"][1].as_f64().unwrap() - 0.9).abs() < 1e-12);
    assert_eq!(rm.requests_to("/classify").len(), 3);

    // Without labels and without --label-with, the rows are left out and the CLI says so.
    let p = path.display().to_string();
    let (ok, _, err) = bestofn(&["eval", "bon", "--samples", &p]);
    assert!(!ok && err.contains("no correctness labels") && err.contains("no labelled prompts"), "{err}");
}

#[test]
fn bad_samples_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, needle) in [
        (r#"{"prompt_id": "a", "candidates": []}"#, "empty"),
        (r#"{"prompt_id": "a", "candidates": [{"correct": 2, "rewards": {}}]}"#, "correct"),
        (r#"{"prompt_id": "a", "candidates": [{"correct": 1, "rewards": {"rm": "x"}}]}"#, "rewards.rm"),
        (r#"{"candidates": [{"correct": 1}]}"#, "prompt_id"),
        ("{oops", "JSON"),
    ] {
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, format!("{{\"prompt_id\": \"ok\", \"candidates\": [{{\"correct\": 1}}]}}\n{bad}\n"))
            .unwrap();
        let p = path.display().to_string();
        let (ok, _, err) = bestofn(&["eval", "bon", "--samples", &p]);
        assert!(!ok && err.contains(&format!("{p}:2:")) && err.contains(needle), "{needle}: {err}");
    }
}

const TABLE8: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/rewardbench2/paper_tables/table8_ppo_bon.csv");

fn r_of(json: &Value, method: &str, y: &str, x: &str) -> f64 {
    json[method][y][x]["r"].as_f64().unwrap()
}

/// Pearson of rbv2 against `y` over the Table 8 rows `filter` keeps, as JSON.
fn correlate_where(y: &str, filter: &str) -> Value {
    let (ok, out, err) = bestofn(&[
        "eval",
        "correlate",
        "--csv",
        TABLE8,
        "--x",
        "rbv2",
        "--y",
        y,
        "--where",
        filter,
        "--format",
        "json",
        "--bootstrap",
        "0",
    ]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn correlate_reproduces_the_table8_numbers() {
    let (ok, out, err) = bestofn(&[
        "eval",
        "correlate",
        "--csv",
        TABLE8,
        "--x",
        "rbv2",
        "--y",
        "bon,ppo",
        "--method",
        "all",
        "--format",
        "json",
        "--bootstrap",
        "200",
    ]);
    assert!(ok, "{err}");
    let all: Value = serde_json::from_str(&out).unwrap();
    let round3 = |v: f64| (v * 1000.0).round() / 1000.0;
    assert_eq!(round3(r_of(&all, "pearson", "bon", "rbv2")), 0.915);
    assert_eq!(round3(r_of(&all, "pearson", "ppo", "rbv2")), 0.717);
    assert_eq!(round3(r_of(&all, "spearman", "bon", "rbv2")), 0.793);
    assert_eq!(round3(r_of(&all, "spearman", "ppo", "rbv2")), -0.039);
    let cell = &all["pearson"]["bon"]["rbv2"];
    assert_eq!(cell["n"], 17);
    assert!(cell["ci_low"].as_f64().unwrap() <= 0.915 && 0.915 <= cell["ci_high"].as_f64().unwrap());
    assert!(cell["p"].as_f64().unwrap() < 1e-4);

    let on_policy = correlate_where("bon,ppo", "id=1..12");
    assert_eq!(round3(r_of(&on_policy, "pearson", "bon", "rbv2")), 0.928);
    assert_eq!(round3(r_of(&on_policy, "pearson", "ppo", "rbv2")), 0.885);
    assert_eq!(on_policy["pearson"]["bon"]["rbv2"]["n"], 12);
    let out = correlate_where("ppo", "id=1..9");
    assert_eq!(round3(r_of(&out, "pearson", "ppo", "rbv2")), -0.255);
    let out = correlate_where("ppo", "group=off_policy_or_ood");
    assert_eq!(round3(r_of(&out, "pearson", "ppo", "rbv2")), -0.947);

    let (_, table, _) =
        bestofn(&["eval", "correlate", "--csv", TABLE8, "--x", "rbv2", "--y", "bon,ppo", "--bootstrap", "0"]);
    assert!(table.contains("0.915") && table.contains("0.717"), "{table}");
    let (_, csv, _) = bestofn(&[
        "eval",
        "correlate",
        "--csv",
        TABLE8,
        "--x",
        "rbv2",
        "--y",
        "bon",
        "--format",
        "csv",
        "--bootstrap",
        "0",
    ]);
    assert!(csv.starts_with("method,y,x,r,n,ci_low,ci_high,p\npearson,bon,rbv2,0.915"), "{csv}");
    let (ok, _, err) = bestofn(&["eval", "correlate", "--csv", TABLE8, "--x", "nope", "--y", "bon"]);
    assert!(!ok && err.contains("no column 'nope'"), "{err}");
}

#[test]
fn leaderboard_recomputation_lists_disagreements() {
    let rb2 = concat!(env!("CARGO_MANIFEST_DIR"), "/data/rewardbench2/rb2_leaderboard_scores.csv");
    let (ok, out, _) = bestofn(&["eval", "leaderboard", rb2]);
    assert!(ok);
    assert!(out.starts_with("rewardbench2: 197 rows recomputed, 0 disagree"), "{out}");
    let rb1 = concat!(env!("CARGO_MANIFEST_DIR"), "/data/rewardbench2/rb1_leaderboard_scores.csv");
    let (_, out, _) = bestofn(&["eval", "leaderboard", rb1]);
    assert!(out.starts_with("rewardbench1: 172 rows recomputed, 7 disagree"), "{out}");
    assert!(out.contains("allenai/Llama-3.1-70B-Instruct-RM-RB2: published 0.9021"));
}

#[test]
fn plots_are_written_or_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let rows = samples();
    let path = dir.path().join("samples.jsonl");
    std::fs::write(&path, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let p = path.to_str().unwrap();
    let svg = dir.path().join("bon.svg");
    let png = dir.path().join("bon.png");
    let heat = dir.path().join("heat.png");
    let scatter = dir.path().join("scatter.svg");
    let (ok_svg, _, err_svg) =
        bestofn(&["eval", "bon", "--samples", p, "--bootstrap", "0", "--plot", svg.to_str().unwrap()]);
    let (ok_png, _, _) = bestofn(&["eval", "bon", "--samples", p, "--bootstrap", "0", "--plot", png.to_str().unwrap()]);
    let (ok_heat, _, _) = bestofn(&[
        "eval",
        "correlate",
        "--csv",
        TABLE8,
        "--x",
        "rbv2",
        "--y",
        "bon,ppo",
        "--bootstrap",
        "0",
        "--plot",
        heat.to_str().unwrap(),
    ]);
    let (ok_scatter, _, _) = bestofn(&[
        "eval",
        "correlate",
        "--csv",
        TABLE8,
        "--x",
        "rbv2",
        "--y",
        "bon",
        "--bootstrap",
        "0",
        "--scatter",
        "rbv2:bon",
        "--scatter-plot",
        scatter.to_str().unwrap(),
    ]);
    if cfg!(feature = "plot") {
        assert!(ok_svg && ok_png && ok_heat && ok_scatter, "{err_svg}");
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.contains("<svg")
                && text.contains("oracle@k")
                && text.contains("BoN@k rm")
                && text.contains("precise_if")
        );
        for f in [&png, &heat] {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
            assert!(bytes.len() > 2000);
        }
        assert!(std::fs::read_to_string(&scatter).unwrap().contains("<circle"));
        let (ok, _, err) =
            bestofn(&["eval", "bon", "--samples", p, "--plot", dir.path().join("bon.gif").to_str().unwrap()]);
        assert!(!ok && err.contains(".svg or .png"), "{err}");
    } else {
        assert!(!ok_svg && err_svg.contains("--features plot"), "{err_svg}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_scorer_records_are_reported_per_reward_and_rescored_as_the_proxy_scored() {
    let rm = FakeServer::start(rm_handler()).await;
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(&upstream, &rm, "n", 2)).unwrap();
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "q"}
    ]);
    // As per-domain routing records them: r0 scored by tei (and vllm), r1..r3 by vllm only.
    let row = |i: usize, rewards: Value| {
        json!({"prompt_id": format!("r{i}"), "domain": "math", "prompt": "q", "messages": messages,
        "candidates": [
            {"text": "answer q=0.9", "rewards": rewards[0]},
            {"text": "answer q=0.1", "rewards": rewards[1]}
        ]})
        .to_string()
            + "\n"
    };
    let lines = row(0, json!([{"tei": 0.0, "vllm": 0.9}, {"tei": 1.0, "vllm": 0.1}]))
        + &row(1, json!([{"vllm": 0.9}, {"vllm": 0.1}]))
        + &row(2, json!([{"vllm": 0.9}, {"vllm": 0.1}]))
        + &row(3, json!([{"vllm": 0.1}, {"vllm": 0.9}]));
    let path = dir.path().join("recorded.jsonl");
    std::fs::write(&path, lines).unwrap();
    let (p, c) = (path.display().to_string(), cfg.display().to_string());
    let run = move |extra: &[&str]| {
        let mut args = vec!["eval", "bon", "--samples", &p, "--label-with", "vllm_messages", "--config", &c];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--format", "json", "--bootstrap", "0"]);
        bestofn(&args)
    };
    let (ok, out, err) = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(&[])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    let all = &got["domains"]["all"];
    assert_eq!(all["prompts"], json!([4, 4]));
    let (vllm, tei) = (&all["rewards"]["vllm"], &all["rewards"]["tei"]);
    assert_eq!((vllm["prompts"].clone(), tei["prompts"].clone()), (json!([4, 4]), json!([1, 1])));
    for series in [vllm, tei] {
        assert_eq!(series["bon"][0], series["mean"], "BoN@1 equals mean@1 on the reward's own prompts");
    }
    // Labels are the RM's clamped scores of each candidate: 0.9 and 0.1.
    assert!((tei["mean"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!((tei["bon"][1].as_f64().unwrap() - 0.1).abs() < 1e-12, "tei picks the 0.1 candidate of r0");
    assert!((vllm["bon"][1].as_f64().unwrap() - 0.7).abs() < 1e-12, "vllm is right on r0..r2, wrong on r3");

    // The labeller saw the recorded conversation, not the last user message alone.
    let calls = rm.requests_to("/classify");
    assert_eq!(calls.len(), 8, "one call per candidate in messages format");
    for call in &calls {
        let sent = call.body["messages"].as_array().unwrap();
        assert_eq!(sent.len(), 5, "{sent:?}");
        assert_eq!(sent[0]["content"], "You are terse.");
        assert_eq!(sent[2]["content"], "first answer");
    }

    // --common: every series on the one prompt that carries both rewards.
    let (ok, out, err) = tokio::task::spawn_blocking(move || run(&["--common"])).await.unwrap();
    assert!(ok, "{err}");
    assert!(err.contains("--common keeps the 1 of 4"), "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    let all = &got["domains"]["all"];
    assert_eq!(all["prompts"], json!([1, 1]));
    assert_eq!(all["rewards"]["vllm"]["prompts"], json!([1, 1]));
    assert!((all["rewards"]["vllm"]["bon"][1].as_f64().unwrap() - 0.9).abs() < 1e-12);
}

#[test]
fn rescoring_checks_the_recorded_response_format() {
    // A verifier sees response_format only when eval passes it on, as the proxy does: with it the
    // JSON candidate wins; without it both candidates tie and BoN@2 would be 0.5.
    let dir = tempfile::tempdir().unwrap();
    let line = json!({"prompt_id": "j", "prompt": "give me an object", "response_format": {"type": "json_object"},
        "candidates": [{"text": "not json", "correct": 0}, {"text": "{\"a\": 1}", "correct": 1}]});
    // A json_schema is checked whole: `$ref` here (both candidates are JSON objects with an "a").
    let schema =
        json!({"$defs": {"n": {"type": "integer"}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}});
    let with_schema = json!({"prompt_id": "s", "prompt": "give me a number",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        "candidates": [{"text": "{\"a\": \"one\"}", "correct": 0}, {"text": "{\"a\": 1}", "correct": 1}]});
    let path = dir.path().join("s.jsonl");
    std::fs::write(&path, format!("{line}\n{with_schema}\n")).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[upstream]\nbase_url = \"http://127.0.0.1:9/v1\"\n[policy]\nn = 2\n").unwrap();
    let (p, c) = (path.display().to_string(), cfg.display().to_string());
    let (ok, out, err) = bestofn(&[
        "eval",
        "bon",
        "--samples",
        &p,
        "--rescore",
        "verify",
        "--config",
        &c,
        "--format",
        "json",
        "--bootstrap",
        "0",
    ]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["domains"]["all"]["rewards"]["verify"]["bon"][1], 1.0);
}

#[test]
fn a_recorded_schema_that_does_not_compile_is_named_by_file_and_line() {
    // Rescored, replayed or replayed as recorded: never a silent pass (every candidate would
    // conform), but an error naming the samples file, the line and the schema.
    let dir = tempfile::tempdir().unwrap();
    let good = json!({"prompt_id": "g", "prompt": "give me an object", "domain": "general", "response_format": {"type": "json_object"},
        "candidates": [{"text": "not json", "correct": 0}, {"text": "{\"a\": 1}", "correct": 1}]});
    let bad = json!({"prompt_id": "b", "prompt": "give me an object", "domain": "general",
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"$ref": "#/$defs/missing"}}},
        "candidates": [{"text": "{}", "correct": 0}, {"text": "{\"a\": 1}", "correct": 1}]});
    let path = dir.path().join("s.jsonl");
    std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[upstream]\nbase_url = \"http://127.0.0.1:9/v1\"\n[policy]\nn = 2\nscorer = \"verify\"\n")
        .unwrap();
    let picks = dir.path().join("picks.jsonl");
    let (p, c, k) = (path.display().to_string(), cfg.display().to_string(), picks.display().to_string());
    let common = ["--samples", p.as_str(), "--config", c.as_str()];
    for command in [
        vec!["eval", "bon", "--rescore", "verify", "--bootstrap", "0"],
        vec!["eval", "replay", "--bootstrap", "0"],
        vec!["eval", "replay", "--as-recorded", "--picks", k.as_str()],
    ] {
        let args: Vec<&str> = command.iter().chain(common.iter()).copied().collect();
        let (ok, _, err) = bestofn(&args);
        assert!(!ok, "{command:?}");
        let at_line = [format!("{p}:2: "), format!("{p}: line 2: ")];
        assert!(at_line.iter().any(|at| err.contains(at.as_str())), "{command:?}: {err}");
        assert!(
            err.contains("response_format.json_schema.schema") && err.contains("/$defs/missing"),
            "{command:?}: {err}"
        );
    }
}

#[test]
fn soft_selection_curves_run_from_argmax_to_the_mean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.jsonl");
    // Distinct rewards: a cold softmax is the argmax.
    let rows: Vec<Value> = samples()
        .into_iter()
        .map(|mut r| {
            for (i, c) in r["candidates"].as_array_mut().unwrap().iter_mut().enumerate() {
                let rm = c["rewards"]["rm"].as_f64().unwrap() + i as f64 * 1e-6;
                c["rewards"] = json!({"rm": rm});
            }
            r
        })
        .collect();
    std::fs::write(&path, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    let p = path.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["eval", "bon", "--samples", p, "--format", "json", "--bootstrap", "0"];
        args.extend_from_slice(extra);
        let (ok, out, err) = bestofn(&args);
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let best = run(&[]);
    let cold = run(&["--selection", "soft", "--soft-temperature", "0.000001"]);
    let hot = run(&["--selection", "soft", "--soft-temperature", "1000"]);
    assert_eq!(cold["selection"], "soft T=0.000001");
    for k in 0..4 {
        let b = best["domains"]["all"]["rewards"]["rm"]["bon"][k].as_f64().unwrap();
        let c = cold["domains"]["all"]["rewards"]["rm"]["bon"][k].as_f64().unwrap();
        let h = hot["domains"]["all"]["rewards"]["rm"]["bon"][k].as_f64().unwrap();
        assert!((b - c).abs() < 1e-9, "k index {k}: T -> 0 is argmax ({b} vs {c})");
        if k < 2 {
            // Every prompt has at least 2 candidates: the same prompts as mean@1.
            assert!((h - hot["domains"]["all"]["mean"].as_f64().unwrap()).abs() < 0.01, "T large: a uniform pick");
        }
    }
    assert!(cold.get("max_standard_error").is_none(), "8 candidates: every subset enumerated");
    let (ok, _, err) = bestofn(&["eval", "bon", "--samples", p, "--selection", "soft", "--soft-temperature", "0"]);
    assert!(!ok && err.contains("--soft-temperature"), "{err}");
}

/// `eval correlate` of Table 8's rbv2 against bon and ppo in `format`, with `bootstrap` resamples
/// (seed 3): success, stdout, stderr.
fn correlate_table8(format: &str, bootstrap: &str) -> (bool, String, String) {
    bestofn(&[
        "eval",
        "correlate",
        "--csv",
        TABLE8,
        "--x",
        "rbv2",
        "--y",
        "bon,ppo",
        "--format",
        format,
        "--bootstrap",
        bootstrap,
        "--seed",
        "3",
    ])
}

#[test]
fn correlate_shows_intervals_and_p_values_in_every_format() {
    let (ok, json, err) = correlate_table8("json", "200");
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&json).unwrap();
    let cell = &json["pearson"]["bon"]["rbv2"];
    let (low, high, p) =
        (cell["ci_low"].as_f64().unwrap(), cell["ci_high"].as_f64().unwrap(), cell["p"].as_f64().unwrap());
    assert!(low < 0.915 && 0.915 < high && p < 1e-3, "{cell}");
    // The same seeded interval in the table and in Markdown, rounded, then what the cells hold.
    let shown = format!("0.915 [{low:.2}, {high:.2}] p<0.001");
    let (ok, table, err) = correlate_table8("table", "200");
    assert!(ok, "{err}");
    // The table aligns each part in a column of its own.
    let bon = table.lines().find(|l| l.starts_with("bon ")).unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(bon.contains(&shown), "{table}");
    assert!(table.contains("200 resamples, seed 3") && table.contains("two-sided p-value"), "{table}");
    let ppo_p = json["pearson"]["ppo"]["rbv2"]["p"].as_f64().unwrap();
    assert!(table.lines().any(|l| l.starts_with("ppo ") && l.contains(&format!("p={ppo_p:.3}"))), "{table}");
    let (ok, md, err) = correlate_table8("md", "200");
    assert!(ok, "{err}");
    assert!(md.contains(&format!("| bon | {shown} |")) && md.contains("200 resamples, seed 3"), "{md}");
    let (ok, csv, err) = correlate_table8("csv", "200");
    assert!(ok, "{err}");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("method,y,x,r,n,ci_low,ci_high,p"));
    let bon: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&bon[..5], ["pearson", "bon", "rbv2", "0.915461", "17"], "{csv}");
    let number = |s: &str| s.parse::<f64>().unwrap();
    assert!((number(bon[5]) - low).abs() < 1e-6 && (number(bon[6]) - high).abs() < 1e-6, "{csv}");
    assert!((number(bon[7]) - p).abs() / p < 1e-3, "a small p keeps its digits: {csv}");

    // Without a bootstrap there are no intervals, and each format says so.
    let (_, table, _) = correlate_table8("table", "0");
    assert!(table.lines().any(|l| l.starts_with("bon ") && l.contains("0.915 [-] p<0.001")), "{table}");
    assert!(table.contains("no intervals ([-]: --bootstrap 0)"), "{table}");
    let (_, md, _) = correlate_table8("md", "0");
    assert!(md.contains("| bon | 0.915 [-] p<0.001 |") && md.contains("--bootstrap 0"), "{md}");
    let (_, csv, _) = correlate_table8("csv", "0");
    assert!(csv.lines().nth(1).unwrap().starts_with("pearson,bon,rbv2,0.915461,17,,,"), "{csv}");
    let (_, json, _) = correlate_table8("json", "0");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert!(json["pearson"]["bon"]["rbv2"]["ci_low"].is_null() && json["pearson"]["bon"]["rbv2"]["p"].is_f64());
}

#[test]
fn correlate_keeps_column_names_as_written_and_marks_what_is_undefined() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.csv");
    // "Few" has two values: a coefficient but no interval or p-value; "Flat" is constant.
    std::fs::write(
        &path,
        "model,\"Bench \"\"v2\"\"\",Down,Few,Flat\na,1,2,1,5\nb,2,1,2,5\nc,3,4,,5\nd,4,3,,5\ne,5,5,,5\n",
    )
    .unwrap();
    let run = |format: &str| {
        let (ok, out, err) = bestofn(&[
            "eval",
            "correlate",
            "--csv",
            path.to_str().unwrap(),
            "--x",
            "Bench \"v2\"",
            "--y",
            "Down,Few,Flat",
            "--format",
            format,
            "--bootstrap",
            "50",
        ]);
        assert!(ok, "{err}");
        out
    };
    let csv = run("csv");
    assert!(csv.contains("pearson,Down,\"Bench \"\"v2\"\"\",0.800000,5,"), "{csv}");
    assert!(csv.contains("pearson,Few,\"Bench \"\"v2\"\"\",1.000000,2,,,\n"), "{csv}");
    assert!(csv.contains("pearson,Flat,\"Bench \"\"v2\"\"\",,5,,,\n"), "{csv}");
    let table = run("table");
    let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(table.lines().any(|l| words(l) == "Few 1.000 [-] p=-"), "{table}");
    assert!(table.lines().any(|l| words(l) == "Flat -"), "{table}");
}

/// A plot this build cannot draw is refused before any work: nothing is read, computed or
/// printed, and the message names the feature and the build that has it.
#[cfg(not(feature = "plot"))]
#[test]
fn plots_without_the_plot_feature_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("p.svg");
    let plot = plot.to_str().unwrap();
    let correlate = ["eval", "correlate", "--csv", TABLE8, "--x", "rbv2", "--y", "bon,ppo", "--method", "all"];
    // The samples file does not exist: had the command started its work, that would be the error.
    let missing = dir.path().join("missing.jsonl");
    let missing = missing.to_str().unwrap();
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("--plot", [&correlate[..], &["--plot", plot]].concat()),
        ("--scatter-plot", [&correlate[..], &["--scatter", "rbv2:bon", "--scatter-plot", plot]].concat()),
        ("--plot", vec!["eval", "bon", "--samples", missing, "--plot", plot]),
        ("--plot", vec!["eval", "tune", "--samples", missing, "--cost-per-sample", "0.01", "--plot", plot]),
    ];
    for (flag, args) in runs {
        let (ok, out, err) = bestofn(&args);
        assert!(!ok, "{args:?}");
        assert!(out.is_empty(), "{args:?} printed its result first: {out}");
        assert!(
            err.contains(&format!("{flag}: plots need bestofn built with the `plot` feature"))
                && err.contains("cargo build --release --features plot"),
            "{args:?}: {err}"
        );
        assert!(!std::path::Path::new(plot).exists());
    }
}

/// With the feature, a file name that gives no plot format is refused before any work.
#[cfg(feature = "plot")]
#[test]
fn plot_files_that_name_no_format_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let (ok, out, err) = bestofn(&["eval", "bon", "--samples", missing.to_str().unwrap(), "--plot", "curves.gif"]);
    assert!(
        !ok && out.is_empty() && err.contains("--plot: curves.gif: the plot file must end in .svg or .png"),
        "{err}"
    );
    let (ok, out, err) = bestofn(&[
        "eval",
        "correlate",
        "--csv",
        TABLE8,
        "--x",
        "rbv2",
        "--y",
        "bon",
        "--scatter",
        "rbv2:bon",
        "--scatter-plot",
        "s.pdf",
    ]);
    assert!(!ok && out.is_empty() && err.contains("--scatter-plot: s.pdf"), "{err}");
}
