//! The shipped samples file (`data/samples/smollm2-135m.jsonl`, made by
//! `scripts/make-samples.sh`, provenance in `data/samples/SOURCE.md`) and the commands a newcomer
//! runs on it, through the real binary: it parses, every row is labelled, `eval bon` reports
//! every k up to N for every scorer in it, `eval replay` and `eval tune` run with the shipped
//! config, `--as-recorded` reproduces the recorded picks, and the shipped labels are what the
//! CLI's own labelling computes from the recording.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn root(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path).display().to_string()
}

fn samples() -> String {
    root("data/samples/smollm2-135m.jsonl")
}

fn config() -> String {
    root("config/examples/llama-cpp.toml")
}

fn rows() -> Vec<Value> {
    std::fs::read_to_string(samples()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn labels(row: &Value) -> Vec<f64> {
    row["candidates"].as_array().unwrap().iter().map(|c| c["correct"].as_f64().unwrap()).collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn json_of(args: &[&str]) -> Value {
    let (ok, out, err) = bestofn(args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

#[test]
fn the_file_is_small_labelled_recorder_output() {
    let size = std::fs::metadata(samples()).unwrap().len();
    assert!(size < 1_000_000, "{size} bytes: too big to ship");
    // The library's own reader (the one every eval command uses) accepts every line.
    let parsed = bestofn::eval::samples::read_samples(std::path::Path::new(&samples())).unwrap();
    let rows = rows();
    assert_eq!(parsed.len(), rows.len());
    let mut per_domain: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for (row, raw) in parsed.iter().zip(&rows) {
        let r = &row.record;
        assert!(ids.insert(r.prompt_id.clone()), "{}: id repeated", r.prompt_id);
        *per_domain.entry(r.domain().to_string()).or_default() += 1;
        assert!(r.labels().is_some(), "{}: unlabelled", r.prompt_id);
        assert_eq!(r.candidates.len(), 8, "{}: N = 8", r.prompt_id);
        let names: BTreeSet<String> = r.rewards().into_keys().collect();
        assert_eq!(names, ["consensus", "verify", "weighted_vote"].map(String::from).into(), "{}", r.prompt_id);
        // What --as-recorded needs, as the recorder writes it.
        assert!(r.chosen.is_some_and(|c| c < 8) && r.seed.is_some() && r.messages.is_some(), "{}", r.prompt_id);
        assert_eq!((r.n_sampled, r.stop_reason.as_deref()), (Some(8), Some("max_n")), "{}", r.prompt_id);
        let served_by = if r.domain() == "precise_if" { "verify" } else { "consensus" };
        assert_eq!(r.scorer.as_deref(), Some(served_by), "{}: the shipped config's scorer", r.prompt_id);
        // Math labels are gold-answer matches (0 or 1).
        if r.domain() == "math" {
            assert!(labels(raw).iter().all(|&l| l == 0.0 || l == 1.0), "{}", r.prompt_id);
        }
    }
    assert_eq!(per_domain, BTreeMap::from([("math".into(), 40), ("precise_if".into(), 40)]));
}

#[test]
fn eval_bon_reports_every_k_up_to_n_for_every_scorer() {
    let rows = rows();
    let s = samples();
    let got = json_of(&["eval", "bon", "--samples", &s, "--format", "json", "--bootstrap", "200", "--seed", "1"]);
    assert_eq!(floats(&got["k"]), [1.0, 2.0, 4.0, 8.0]);
    for domain in ["all", "math", "precise_if"] {
        let mine: Vec<&Value> = rows.iter().filter(|r| domain == "all" || r["domain"] == domain).collect();
        let d = &got["domains"][domain];
        assert_eq!(floats(&d["prompts"]), [mine.len() as f64; 4], "{domain}");
        // mean@1 and oracle@N, computed here from the labels.
        let m = mine.len() as f64;
        let mean = mine.iter().map(|r| labels(r).iter().sum::<f64>() / 8.0).sum::<f64>() / m;
        let best = mine.iter().map(|r| labels(r).into_iter().fold(0.0, f64::max)).sum::<f64>() / m;
        assert!((d["mean"].as_f64().unwrap() - mean).abs() < 1e-9, "{domain} mean");
        let oracle = floats(&d["oracle"]);
        assert!((oracle[3] - best).abs() < 1e-9, "{domain} oracle@8 {} vs {best}", oracle[3]);
        assert!(oracle.windows(2).all(|w| w[0] <= w[1] + 1e-12), "{domain}: oracle grows with k");
        let series: BTreeSet<&String> = d["rewards"].as_object().unwrap().keys().collect();
        assert_eq!(series.len(), 3, "{domain}: {series:?}");
        for (name, r) in d["rewards"].as_object().unwrap() {
            let bon = floats(&r["bon"]);
            assert_eq!(floats(&r["prompts"]), [m; 4], "{domain} {name}");
            assert!((bon[0] - mean).abs() < 1e-9, "{domain} {name}: BoN@1 = mean@1");
            for (i, (lo, hi)) in floats(&r["ci_low"]).into_iter().zip(floats(&r["ci_high"])).enumerate() {
                assert!(bon[i] <= oracle[i] + 1e-9, "{domain} {name} @{}: BoN > oracle", 1 << i);
                assert!(lo <= bon[i] + 1e-9 && bon[i] <= hi + 1e-9, "{domain} {name} @{}", 1 << i);
            }
        }
    }
    // The instruction labels are the verifier's own checks: its curve is the oracle's.
    let d = &got["domains"]["precise_if"];
    for (b, o) in floats(&d["rewards"]["verify"]["bon"]).into_iter().zip(floats(&d["oracle"])) {
        assert!((b - o).abs() < 1e-9, "verify on precise_if: {b} vs oracle {o}");
    }
    // The proxy's recorded picks, labelled.
    let picked: f64 = rows.iter().map(|r| labels(r)[r["chosen"].as_u64().unwrap() as usize]).sum::<f64>();
    let pick = &got["recorded_pick"]["all"];
    assert_eq!(pick["prompts"], 80);
    assert!((pick["accuracy"].as_f64().unwrap() - picked / 80.0).abs() < 1e-9);
}

#[test]
fn replay_and_tune_run_with_the_shipped_config() {
    let (s, c) = (samples(), config());
    let got = json_of(&["eval", "replay", "--samples", &s, "--config", &c, "--format", "json"]);
    for (domain, scorer) in [("math", "consensus"), ("precise_if", "verify")] {
        let d = &got["domains"][domain];
        assert_eq!((d["prompts"].as_u64(), d["n"].as_u64(), d["scorer"].as_str()), (Some(40), Some(8), Some(scorer)));
        // The configured policy is fixed N = 8: the same as the fixed row, interval included.
        assert_eq!(d["policy"], d["fixed"], "{domain}");
        assert_eq!(d["policy"]["mean_candidates"], 8.0);
    }

    let dir = tempfile::tempdir().unwrap();
    let picks = dir.path().join("picks.jsonl");
    let p = picks.display().to_string();
    let (ok, _, err) = bestofn(&["eval", "replay", "--samples", &s, "--config", &c, "--as-recorded", "--picks", &p]);
    assert!(ok, "{err}");
    let picks: Vec<Value> =
        std::fs::read_to_string(&picks).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rows = rows();
    assert_eq!(picks.len(), rows.len());
    for (pick, row) in picks.iter().zip(&rows) {
        for key in ["prompt_id", "chosen", "n_sampled", "stop_reason"] {
            assert_eq!(pick[key], row[key], "{}: {key}", row["prompt_id"]);
        }
    }

    let out = dir.path().join("tuned.toml");
    let o = out.display().to_string();
    let (ok, table, err) =
        bestofn(&["eval", "tune", "--samples", &s, "--cost-per-sample", "0.01", "--config", &c, "--write-config", &o]);
    assert!(ok && table.contains("math") && table.contains("precise_if"), "{err}{table}");
    let tuned: toml::Table = std::fs::read_to_string(&out).unwrap().parse().unwrap();
    for domain in ["math", "precise_if"] {
        let t = &tuned["domains"][domain];
        assert!((1..=8).contains(&t["n"].as_integer().unwrap()), "{t}");
        assert!(["consensus", "verify", "weighted_vote"].contains(&t["scorer"].as_str().unwrap()), "{t}");
    }
}

#[test]
fn the_shipped_labels_are_what_the_cli_computes_from_the_recording() {
    // The recording as the recorder wrote it: no labels (the rewards stay, as recorded ones).
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("recorded.jsonl");
    let text: String = rows()
        .into_iter()
        .map(|mut r| {
            for c in r["candidates"].as_array_mut().unwrap() {
                c.as_object_mut().unwrap().remove("correct");
            }
            format!("{r}\n")
        })
        .collect();
    std::fs::write(&bare, text).unwrap();
    let b = bare.display().to_string();

    // Without labels every command says how to label.
    let c = config();
    for args in [
        vec!["eval", "bon", "--samples", &b],
        vec!["eval", "replay", "--samples", &b, "--config", &c],
        vec!["eval", "tune", "--samples", &b, "--cost-per-sample", "0.01"],
    ] {
        let (ok, _, err) = bestofn(&args);
        assert!(!ok && err.contains("no labelled prompts"), "{args:?}: {err}");
        assert!(err.contains("--gold FILE") && err.contains("--label-with NAME --config FILE"), "{args:?}: {err}");
    }

    // Labelled as scripts/make-samples.sh labels it, the report is the shipped file's.
    let gold = root("tests/data/prompts_math.jsonl");
    let stats = ["--format", "json", "--bootstrap", "100", "--seed", "3"];
    let mut relabel = vec!["eval", "bon", "--samples", &b, "--gold", &gold, "--label-with", "verify", "--config", &c];
    relabel.extend(stats);
    let mut shipped = vec!["eval", "bon", "--samples"];
    let s = samples();
    shipped.push(&s);
    shipped.extend(stats);
    assert_eq!(json_of(&relabel), json_of(&shipped));
}
