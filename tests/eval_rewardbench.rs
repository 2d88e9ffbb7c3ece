//! `bestofn eval rewardbench`: the real binary on score files, the project's sample dataset
//! scored through a loopback RM, and the published leaderboards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bestofn::eval::input::read_dataset;
use bestofn::eval::rewardbench::{ScoredRow, TiesVariant, V1_SECTIONS, rewardbench2, v1_overall};
use common::*;
use serde_json::{Value, json};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn scores_files_give_the_official_numbers_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let scores = [
        json!({"id": "1", "subset": "Math", "num_correct": 1, "scores": [2, 1, 0.5, 0.1]}),
        json!({"id": "2", "subset": "Math", "num_correct": 1, "scores": [2, 2, 1, 0]}),
        json!({"id": "3", "subset": "Focus", "num_correct": 1, "scores": [1, 3, 2, 0]}),
        json!({"id": "ref:0", "subset": "Ties", "num_correct": 1, "scores": [9, 3, 3]}),
        json!({"id": "tied:0", "subset": "Ties", "num_correct": 3, "scores": [9, 9, 9, 2, 1]}),
        json!({"id": "ref:1", "subset": "Ties", "num_correct": 1, "scores": [8, 8, 2]}),
        json!({"id": "tied:1", "subset": "Ties", "num_correct": 2, "scores": [7, 7, 7]}),
    ];
    let text: String = scores.iter().map(|s| format!("{s}\n")).collect();
    let path = write(&dir, "scores.jsonl", &text);

    let (ok, out, err) = bestofn(&["eval", "rewardbench", "--scores", &path, "--format", "json"]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["benchmark"], "rewardbench2");
    assert_eq!(report["subsets"]["Math"], 0.75);
    assert_eq!(report["subsets"]["Focus"], 0.0);
    assert!((report["subsets"]["Ties"].as_f64().unwrap() - 0.505).abs() < 1e-12);
    assert_eq!(report["n"]["Ties"], 4);
    assert!((report["overall"].as_f64().unwrap() - (0.75 + 0.0 + 0.505) / 3.0).abs() < 1e-12);

    let (_, out, _) =
        bestofn(&["eval", "rewardbench", "--scores", &path, "--format", "json", "--ties-variant", "paper"]);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!((report["subsets"]["Ties"].as_f64().unwrap() - 0.5).abs() < 1e-12);

    let (ok, table, err) = bestofn(&["eval", "rewardbench", "--scores", &path]);
    assert!(ok);
    assert!(
        table.contains("Math") && table.contains("0.7500") && table.contains("0.2500") && table.contains("Overall"),
        "{table}"
    );
    assert!(err.contains("3 of 6"), "the missing subsets are said: {err}");
    let (_, csv, _) = bestofn(&["eval", "rewardbench", "--scores", &path, "--format", "csv"]);
    assert!(csv.starts_with("subset,rows,score,random\n") && csv.contains("Math,2,0.7500,0.2500"), "{csv}");
    let (_, md, _) = bestofn(&["eval", "rewardbench", "--scores", &path, "--format", "md", "--subset", "Math"]);
    assert!(md.contains("| Math | 2 | 0.7500 | 0.2500 |") && !md.contains("Ties"), "{md}");
    let (_, limited, _) = bestofn(&["eval", "rewardbench", "--scores", &path, "--format", "json", "--limit", "1"]);
    assert_eq!(serde_json::from_str::<Value>(&limited).unwrap()["subsets"]["Math"], 1.0);
}

#[test]
fn bad_score_rows_are_named_by_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"id": "1", "subset": "Math", "num_correct": 1, "scores": [1, 0]}"#;
    for (bad, needle) in [
        (r#"{"id": "2", "subset": "Math", "num_correct": 3, "scores": [1, 0]}"#, "num_correct"),
        (r#"{"id": "2", "subset": "Math", "num_correct": 1, "scores": []}"#, "empty"),
        (r#"{"id": "2", "subset": "Math", "num_correct": 1}"#, "scores"),
        (r#"{"id": "2", "num_correct": 1, "scores": [1]}"#, "subset"),
        (r#"{"id": "2", "subset": "Math", "num_correct": 1, "scores": [NaN, 1]}"#, "JSON"),
        (r#"{"id": "2", "subset": "Math", "num_correct": 1, "scores": ["x", 1]}"#, "scores[0]"),
    ] {
        let path = write(&dir, "bad.jsonl", &format!("{good}\n{bad}\n"));
        let (ok, _, err) = bestofn(&["eval", "rewardbench", "--scores", &path]);
        assert!(!ok);
        assert!(err.contains(&format!("{path}:2:")) && err.contains(needle), "{needle}: {err}");
    }
}

/// The fake RM's score of a rendered conversation: deterministic, with distinct values.
fn fake_reward(text: &str) -> f64 {
    let mut h: u64 = 1469598103934665603;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(1099511628211);
    }
    (h % 10_000) as f64 / 100.0
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_dataset_is_scored_through_the_proxys_scorer_and_resumes() {
    let rm = FakeServer::start(|r: &Recorded| {
        let data: Vec<Value> = r.body["input"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"index": i, "label": "LABEL_0", "probs": [fake_reward(t.as_str().unwrap())], "num_classes": 1}))
            .collect();
        Reply::Json(200, json!({"id": "c", "object": "list", "created": 1, "model": "rm", "data": data, "usage": {"prompt_tokens": 1}}))
    })
    .await;
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(&dir, "c.toml", &config(&upstream, &rm, "n", 2));
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rb2_sample.jsonl");
    let out_path = dir.path().join("scores.jsonl").display().to_string();

    // Expected: the library's formula on the scores the fake RM gives each rendered candidate.
    let rows = read_dataset(std::path::Path::new(sample)).unwrap();
    let expected_rows: Vec<ScoredRow> = rows
        .iter()
        .map(|r| ScoredRow {
            id: r.id.clone(),
            subset: r.subset.clone(),
            num_correct: r.num_correct,
            scores: r
                .completions
                .iter()
                .map(|c| {
                    fake_reward(&format!(
                        "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n{c}<|im_end|>\n",
                        r.prompt
                    ))
                })
                .collect(),
        })
        .collect();
    let expected = rewardbench2(&expected_rows, TiesVariant::Current);
    assert_eq!(expected.subsets.len(), 6);

    let args = [
        "eval",
        "rewardbench",
        "--dataset",
        sample,
        "--config",
        &cfg,
        "--scorer",
        "vllm",
        "--scores-out",
        &out_path,
        "--format",
        "json",
        "--limit",
        "6",
    ];
    let (ok, out, err) = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || bestofn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let first: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["n"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum::<u64>(), 6);
    assert_eq!(rm.requests().len(), 6, "one RM call per row, all candidates batched");

    // Resume: the six rows already scored are not scored again.
    rm.clear();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        bestofn(&[
            "eval",
            "rewardbench",
            "--dataset",
            sample,
            "--config",
            &cfg,
            "--scorer",
            "vllm",
            "--scores-out",
            &out_path,
            "--format",
            "json",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(rm.requests().len(), rows.len() - 6);
    let report: Value = serde_json::from_str(&out).unwrap();
    for (subset, score) in &expected.subsets {
        assert!((report["subsets"][subset].as_f64().unwrap() - score).abs() < 1e-12, "{subset}");
    }
    assert!((report["overall"].as_f64().unwrap() - expected.overall.unwrap()).abs() < 1e-12);
}

fn csv_rows(path: &str) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_string).collect();
    lines.map(|l| header.iter().cloned().zip(l.split(',').map(str::to_string)).collect()).collect()
}

#[test]
fn the_overall_reproduces_both_published_leaderboards() {
    let rb2 = csv_rows(concat!(env!("CARGO_MANIFEST_DIR"), "/data/rewardbench2/rb2_leaderboard_scores.csv"));
    assert_eq!(rb2.len(), 197);
    for row in &rb2 {
        let subset = |k: &str| row[k].parse::<f64>().unwrap();
        let mean6 =
            ["factuality", "precise_if", "math", "safety", "focus", "ties"].iter().map(|k| subset(k)).sum::<f64>()
                / 6.0;
        // The CSV rounds every number to 4 decimals.
        assert!((mean6 - subset("overall_mean6")).abs() <= 1e-4, "{}", row["model"]);
    }

    let rb1 = csv_rows(concat!(env!("CARGO_MANIFEST_DIR"), "/data/rewardbench2/rb1_leaderboard_scores.csv"));
    let (mut with_prior, mut with_prior_ok, mut without_prior, mut without_prior_ok) = (0, 0, 0, 0);
    for row in &rb1 {
        let get = |k: &str| row.get(k).and_then(|v| v.parse::<f64>().ok());
        let (Some(c), Some(ch), Some(s), Some(r), Some(overall)) =
            (get("chat"), get("chat_hard"), get("safety"), get("reasoning"), get("overall"))
        else {
            continue;
        };
        let mut sections: std::collections::BTreeMap<String, f64> =
            [("Chat", c), ("Chat Hard", ch), ("Safety", s), ("Reasoning", r)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
        match get("prior_sets_0.5_weight") {
            Some(p) => {
                sections.insert("Prior Sets".into(), p);
                with_prior += 1;
                with_prior_ok += usize::from((v1_overall(&sections).unwrap() - overall).abs() <= 1.5e-4);
            }
            None => {
                without_prior += 1;
                without_prior_ok += usize::from((v1_overall(&sections).unwrap() - overall).abs() <= 1.5e-4);
            }
        }
    }
    // The spec: all rows without prior sets match the 4-way mean; 98 of 105 with prior sets
    // match the 2,2,2,2,1 weighting (7 published rows used the 4-way mean instead).
    assert_eq!((without_prior, without_prior_ok), (67, 67));
    assert_eq!((with_prior, with_prior_ok), (105, 98));
    assert_eq!(V1_SECTIONS.iter().map(|(_, m)| m.len()).sum::<usize>(), 23, "23 v1 subsets in sections");
}
