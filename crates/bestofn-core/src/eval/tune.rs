//! `bestofn eval tune`: the compute-optimal policy per domain from labelled samples. For each
//! domain it evaluates every scorer with recorded rewards at every N of the grid (BoN@k exactly
//! as `eval bon` computes it) and, with `adaptive`, the adaptive settings worth trying (by the
//! replay of `eval replay`, over recorded rewards), then picks by the objective:
//! - cost per sample C: maximise accuracy - C x mean candidates; ties go to fewer candidates,
//!   then to the scorer name;
//! - target share S: the cheapest choice whose accuracy reaches S x the best accuracy in the
//!   domain (ties by accuracy, then scorer name).
//!
//! Choices are compared on the same prompts: a domain's prompts are those carrying every scorer
//! considered. With a split, choices are evaluated on the tuning part only and the chosen policy
//! is measured on the held-out rest.

use std::collections::BTreeMap;

use serde::Serialize;

use super::replay::{Choose, PromptResult, ReplayMode, ReplayPrompt, ScoreSource, arrival_orders, replay_prompt};
use super::samples::RecordedRow;
use crate::bon::PolicySettings;
use crate::bon::adaptive::AdaptiveSettings;
use crate::bon::select::{RatioCache, fill_curve, k_grid};
use crate::error::Error;

/// What the tuning maximises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Accuracy minus this much per sampled candidate.
    CostPerSample(f64),
    /// The cheapest choice reaching this share of the best accuracy.
    TargetShare(f64),
}

/// Tuning options.
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// The objective.
    pub objective: Objective,
    /// Only these scorers (default: every scorer with rewards).
    pub scorers: Option<Vec<String>>,
    /// Largest N tried (default and cap: the fewest candidates recorded for a prompt).
    pub max_n: Option<usize>,
    /// Also try adaptive settings.
    pub adaptive: bool,
    /// Tune on this share of prompts, measure on the rest.
    pub split: Option<f64>,
    /// Seed of the split, the arrival orders and the bootstrap.
    pub seed: u64,
    /// Fewest labelled prompts a domain needs to be tuned.
    pub min_prompts: usize,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Arrival orders per prompt for adaptive choices.
    pub orders: usize,
    /// RewardBench 2 subset accuracies per scorer (from `eval rewardbench` reports).
    pub rewardbench: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The RewardBench 2 subset that speaks for a request domain.
pub fn rewardbench_subset(domain: &str) -> Option<&'static str> {
    match domain {
        "factuality" => Some("Factuality"),
        "precise_if" => Some("Precise IF"),
        "math" => Some("Math"),
        "safety" => Some("Safety"),
        "focus" => Some("Focus"),
        _ => None,
    }
}

/// One policy a domain could get, and what it buys and costs on the tuning prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    /// Scorer name.
    pub scorer: String,
    /// N (the most candidates).
    pub n: u32,
    /// Adaptive settings, or None for fixed N.
    pub adaptive: Option<AdaptiveSettings>,
    /// Expected accuracy.
    pub accuracy: f64,
    /// Mean candidates sampled.
    pub mean_candidates: f64,
    /// Mean completion tokens.
    pub mean_completion_tokens: f64,
    #[serde(skip)]
    pub(crate) per_prompt: Vec<PromptResult>,
}

/// Baselines of a domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// Fixed N = 1 (the mean label).
    pub n1: f64,
    /// Fixed N = max N with the chosen scorer.
    pub max_n: f64,
}

/// The chosen policy measured on held-out prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeldOut {
    /// Held-out prompts.
    pub prompts: usize,
    /// Their ids: none of them was tuned on.
    pub prompt_ids: Vec<String>,
    /// The chosen policy's accuracy.
    pub accuracy: f64,
    /// Its mean candidates.
    pub mean_candidates: f64,
    /// Its mean completion tokens.
    pub mean_completion_tokens: f64,
    /// Fixed N = 1 and N = max N with the chosen scorer.
    pub baseline: Baseline,
}

/// One domain's tuning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainTuning {
    /// Chosen scorer (None when the domain keeps the global policy).
    pub scorer: Option<String>,
    /// Chosen N.
    pub n: Option<u32>,
    /// Chosen adaptive settings.
    pub adaptive: Option<AdaptiveSettings>,
    /// Expected accuracy of the choice.
    pub expected_accuracy: Option<f64>,
    /// Bootstrap 95% interval, low end.
    pub ci_low: Option<f64>,
    /// Bootstrap 95% interval, high end.
    pub ci_high: Option<f64>,
    /// Mean candidates sampled.
    pub mean_candidates: Option<f64>,
    /// Mean completion tokens.
    pub mean_completion_tokens: Option<f64>,
    /// Baselines on the tuning prompts.
    pub baseline: Option<Baseline>,
    /// Labelled prompts tuned on.
    pub prompts: usize,
    /// The chosen policy on held-out prompts, with `split`.
    pub held_out: Option<HeldOut>,
    /// Why the domain keeps the global policy, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Each scorer's RewardBench 2 accuracy on the domain's subset, when given.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rewardbench: BTreeMap<String, f64>,
    /// True when the scorer was picked from RewardBench 2 alone (no labelled prompts): a prior,
    /// not a measurement.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prior: bool,
    /// Every choice evaluated (for the plot), best first by the objective.
    #[serde(skip)]
    pub choices: Vec<Choice>,
}

/// The whole tuning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TuneReport {
    /// The objective used.
    pub objective: Objective,
    /// Per domain.
    pub domains: BTreeMap<String, DomainTuning>,
}

/// A labelled prompt of the tuning: labels, rewards per scorer, per-candidate token costs.
pub struct TunePrompt<'a> {
    /// The prompt's id.
    pub id: String,
    /// Its domain.
    pub domain: String,
    /// The recorded row (needed to replay adaptive choices).
    pub row: Option<&'a RecordedRow>,
    /// Correctness labels.
    pub labels: Vec<f64>,
    /// Rewards per scorer.
    pub rewards: BTreeMap<String, Vec<f64>>,
    /// Completion tokens per candidate.
    pub costs: Vec<f64>,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Fixed N = k with `scorer` for every k of `ks`: the exact BoN@k of each prompt (one sort per
/// prompt for all k, as `eval bon` computes it).
fn fixed_choices(prompts: &[&TunePrompt<'_>], scorer: &str, ks: &[usize], cache: &mut RatioCache) -> Vec<Choice> {
    let mut per_k: Vec<Vec<PromptResult>> = ks.iter().map(|_| Vec::with_capacity(prompts.len())).collect();
    let (mut order, mut curve) = (Vec::new(), vec![0.0; ks.len()]);
    for p in prompts {
        let rows = cache.rows(p.labels.len(), ks);
        fill_curve(&p.rewards[scorer], &p.labels, ks, rows, &mut order, &mut curve);
        let token_mean = mean(p.costs.iter().copied());
        for (ki, &k) in ks.iter().enumerate() {
            per_k[ki].push(PromptResult { accuracy: curve[ki], candidates: k as f64, tokens: k as f64 * token_mean });
        }
    }
    ks.iter().zip(per_k).map(|(&k, per_prompt)| choice(scorer, k as u32, None, per_prompt)).collect()
}

fn fixed_choice(prompts: &[&TunePrompt<'_>], scorer: &str, k: usize, cache: &mut RatioCache) -> Choice {
    fixed_choices(prompts, scorer, &[k], cache).remove(0)
}

fn choice(scorer: &str, n: u32, adaptive: Option<AdaptiveSettings>, per_prompt: Vec<PromptResult>) -> Choice {
    Choice {
        scorer: scorer.to_string(),
        n,
        adaptive,
        accuracy: mean(per_prompt.iter().map(|r| r.accuracy)),
        mean_candidates: mean(per_prompt.iter().map(|r| r.candidates)),
        mean_completion_tokens: mean(per_prompt.iter().map(|r| r.tokens)),
        per_prompt,
    }
}

async fn adaptive_choice(
    prompts: &[&TunePrompt<'_>],
    scorer: &str,
    n: u32,
    settings: AdaptiveSettings,
    orders: usize,
    rng: &mut fastrand::Rng,
) -> Result<Choice, Error> {
    let mut per_prompt = Vec::with_capacity(prompts.len());
    for p in prompts {
        let order_list = arrival_orders(p.labels.len(), orders, rng);
        let Some(row) = p.row else { return Err(Error::Internal("adaptive replay needs the recorded rows".into())) };
        let prompt = ReplayPrompt { row, labels: p.labels.clone() };
        let source = ScoreSource::Recorded(p.rewards[scorer].clone());
        // Recorded candidates arrive one by one, as in parallel sampling.
        let mode = ReplayMode { per_arrival: true };
        let best = Choose::by(crate::bon::select::Selection::Best);
        per_prompt.push(replay_prompt(&prompt, Some(settings), n, mode, scorer, source, best, &order_list).await?);
    }
    Ok(choice(scorer, n, Some(settings), per_prompt))
}

/// Orders choices best first by the objective; the first is the pick.
pub fn rank_choices(choices: &mut [Choice], objective: Objective) {
    let by_cost_then_name =
        |a: &Choice, b: &Choice| a.mean_candidates.total_cmp(&b.mean_candidates).then_with(|| a.scorer.cmp(&b.scorer));
    match objective {
        Objective::CostPerSample(c) => choices.sort_by(|a, b| {
            let value = |x: &Choice| x.accuracy - c * x.mean_candidates;
            // Equal within rounding counts as a tie.
            let (va, vb) = (value(a), value(b));
            if (va - vb).abs() <= 1e-12 { by_cost_then_name(a, b) } else { vb.total_cmp(&va) }
        }),
        Objective::TargetShare(share) => {
            let best = choices.iter().map(|c| c.accuracy).fold(f64::NEG_INFINITY, f64::max);
            let reaches = |c: &Choice| c.accuracy + 1e-12 >= share * best;
            choices.sort_by(|a, b| {
                reaches(b)
                    .cmp(&reaches(a))
                    .then_with(|| by_cost_then_name(a, b))
                    .then_with(|| b.accuracy.total_cmp(&a.accuracy))
            });
        }
    }
}

/// Adaptive settings worth trying for a scorer in a domain: first waves 1 and 2, the scorer's
/// observed maximum as `accept_score` (the score of a candidate that cannot be beaten), and the
/// agreement rule at 0.8, 0.9, 0.95 and 0.99.
fn adaptive_candidates(prompts: &[&TunePrompt<'_>], scorer: &str, n: u32) -> Vec<AdaptiveSettings> {
    let observed_max = prompts.iter().flat_map(|p| p.rewards[scorer].iter().copied()).fold(f64::NEG_INFINITY, f64::max);
    let mut out = Vec::new();
    for first_wave in [1, 2].into_iter().filter(|f| *f <= n) {
        if observed_max.is_finite() {
            out.push(AdaptiveSettings { first_wave, accept_score: Some(observed_max), confidence: None });
        }
        for confidence in [0.8, 0.9, 0.95, 0.99] {
            out.push(AdaptiveSettings { first_wave, accept_score: None, confidence: Some(confidence) });
        }
    }
    out
}

/// Tunes every domain of the labelled rows.
pub async fn tune(rows: &[RecordedRow], options: &TuneOptions) -> Result<TuneReport, TuneError> {
    let prompts = rows
        .iter()
        .filter_map(|row| {
            let labels = row.record.labels()?;
            let costs = row.record.candidates.iter().map(|c| c.token_cost()).collect();
            Some(TunePrompt {
                id: row.record.prompt_id.clone(),
                domain: row.record.domain().to_string(),
                row: Some(row),
                labels,
                rewards: row.record.rewards(),
                costs,
            })
        })
        .collect();
    tune_prompts(prompts, options).await
}

/// Tunes labelled prompts given directly (the benchmark's entry point; adaptive choices need
/// the recorded rows).
pub async fn tune_prompts(prompts: Vec<TunePrompt<'_>>, options: &TuneOptions) -> Result<TuneReport, TuneError> {
    let mut by_domain: BTreeMap<String, Vec<TunePrompt<'_>>> = BTreeMap::new();
    for prompt in prompts {
        by_domain.entry(prompt.domain.clone()).or_default().push(prompt);
    }
    if by_domain.is_empty() {
        return Err(TuneError::NoLabels);
    }
    let present: std::collections::BTreeSet<String> =
        by_domain.values().flatten().flat_map(|p| p.rewards.keys().cloned()).collect();
    let scorers: Vec<String> = match &options.scorers {
        Some(list) => {
            if let Some(missing) = list.iter().find(|s| !present.contains(*s)) {
                return Err(TuneError::NoRewards(missing.clone()));
            }
            list.clone()
        }
        None => present.into_iter().collect(),
    };
    if scorers.is_empty() {
        return Err(TuneError::NoScorers);
    }
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut domains = BTreeMap::new();
    for (domain, all) in &by_domain {
        // Like for like: the prompts that carry every scorer considered.
        let mut usable: Vec<&TunePrompt<'_>> =
            all.iter().filter(|p| scorers.iter().all(|s| p.rewards.contains_key(s))).collect();
        let (tuning, held_out): (Vec<&TunePrompt<'_>>, Vec<&TunePrompt<'_>>) = match options.split {
            None => (usable, Vec::new()),
            Some(share) => {
                rng.shuffle(&mut usable);
                let cut = ((usable.len() as f64) * share).round() as usize;
                let held = usable.split_off(cut.min(usable.len()));
                (usable, held)
            }
        };
        if tuning.len() < options.min_prompts {
            let note = format!(
                "{} labelled prompts carrying every scorer (fewer than {}): keeps the global policy",
                tuning.len(),
                options.min_prompts
            );
            domains.insert(domain.clone(), DomainTuning::kept(tuning.len(), note));
            continue;
        }
        let fewest = tuning.iter().chain(&held_out).map(|p| p.labels.len()).min().unwrap_or(1);
        let max_n = options.max_n.map_or(fewest, |m| m.min(fewest)).max(1);
        let mut cache = RatioCache::default();
        let mut choices = Vec::new();
        for scorer in &scorers {
            choices.extend(fixed_choices(&tuning, scorer, &k_grid(max_n), &mut cache));
            if options.adaptive {
                for settings in adaptive_candidates(&tuning, scorer, max_n as u32) {
                    choices.push(
                        adaptive_choice(&tuning, scorer, max_n as u32, settings, options.orders, &mut rng).await?,
                    );
                }
            }
        }
        rank_choices(&mut choices, options.objective);
        let Some(best) = choices.first().cloned() else { continue };
        let accuracies: Vec<f64> = best.per_prompt.iter().map(|r| r.accuracy).collect();
        let (ci_low, ci_high) = super::bon::bootstrap(&accuracies, options.resamples, &mut rng);
        let baseline = |prompts: &[&TunePrompt<'_>]| Baseline {
            n1: mean(prompts.iter().map(|p| mean(p.labels.iter().copied()))),
            max_n: fixed_choice(prompts, &best.scorer, max_n, &mut RatioCache::default()).accuracy,
        };
        let held = if held_out.is_empty() {
            None
        } else {
            let measured = match best.adaptive {
                None => fixed_choice(&held_out, &best.scorer, best.n as usize, &mut cache),
                Some(settings) => {
                    adaptive_choice(&held_out, &best.scorer, best.n, settings, options.orders, &mut rng).await?
                }
            };
            Some(HeldOut {
                prompts: held_out.len(),
                prompt_ids: held_out.iter().map(|p| p.id.clone()).collect(),
                accuracy: measured.accuracy,
                mean_candidates: measured.mean_candidates,
                mean_completion_tokens: measured.mean_completion_tokens,
                baseline: baseline(&held_out),
            })
        };
        domains.insert(
            domain.clone(),
            DomainTuning {
                scorer: Some(best.scorer.clone()),
                n: Some(best.n),
                adaptive: best.adaptive,
                expected_accuracy: Some(best.accuracy),
                ci_low,
                ci_high,
                mean_candidates: Some(best.mean_candidates),
                mean_completion_tokens: Some(best.mean_completion_tokens),
                baseline: Some(baseline(&tuning)),
                prompts: tuning.len(),
                held_out: held,
                note: None,
                rewardbench: BTreeMap::new(),
                prior: false,
                choices,
            },
        );
    }
    // RewardBench 2 beside the measurements, and as a prior where nothing was measured.
    if !options.rewardbench.is_empty() {
        for domain in crate::bon::DOMAINS {
            let Some(subset) = rewardbench_subset(domain) else { continue };
            let scores: BTreeMap<String, f64> = options
                .rewardbench
                .iter()
                .filter_map(|(scorer, subsets)| subsets.get(subset).map(|a| (scorer.clone(), *a)))
                .collect();
            if scores.is_empty() {
                continue;
            }
            let best =
                scores.iter().max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(s, _)| s.clone());
            let entry = domains.entry(domain.to_string()).or_insert_with(|| {
                let mut d =
                    DomainTuning::kept(0, format!("no labelled prompts: scorer from RewardBench 2 {subset} (a prior)"));
                d.scorer = best;
                d.prior = true;
                d
            });
            entry.rewardbench = scores;
        }
    }
    Ok(TuneReport { objective: options.objective, domains })
}

impl DomainTuning {
    fn kept(prompts: usize, note: String) -> Self {
        DomainTuning {
            scorer: None,
            n: None,
            adaptive: None,
            expected_accuracy: None,
            ci_low: None,
            ci_high: None,
            mean_candidates: None,
            mean_completion_tokens: None,
            baseline: None,
            prompts,
            held_out: None,
            note: Some(note),
            rewardbench: BTreeMap::new(),
            prior: false,
            choices: Vec::new(),
        }
    }
}

/// Why tuning cannot run.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// No row has labels.
    #[error("no labelled prompts: {}", super::samples::HOW_TO_LABEL)]
    NoLabels,
    /// A scorer named in --scorers has no rewards in the samples.
    #[error("--scorers: '{0}' has no rewards in the samples (record them, or add them with eval bon --rescore)")]
    NoRewards(String),
    /// No scorer has rewards.
    #[error("no scorer has rewards in the samples")]
    NoScorers,
    /// Replaying an adaptive choice failed.
    #[error(transparent)]
    Replay(#[from] Error),
}

/// The `[domains.NAME]` tables of the tuned domains, each with a comment giving its expected
/// accuracy and cost; merged into a config, `bestofn check-config` accepts them.
pub fn config_fragment(report: &TuneReport) -> String {
    let mut out = format!(
        "# Written by `bestofn eval tune` ({}).\n",
        match report.objective {
            Objective::CostPerSample(c) => format!("objective: accuracy - {c} x candidates"),
            Objective::TargetShare(s) => format!("objective: cheapest reaching {s} of the best accuracy"),
        }
    );
    for (domain, d) in &report.domains {
        if let (true, Some(scorer)) = (d.prior, &d.scorer) {
            let settings = PolicySettings { scorer: Some(scorer.clone()), ..Default::default() };
            out.push_str(&format!(
                "\n# {domain}: {} (not measured)\n[domains.{domain}]\n{}",
                d.note.as_deref().unwrap_or("prior"),
                settings.toml_lines()
            ));
            continue;
        }
        let (Some(scorer), Some(n), Some(acc)) = (&d.scorer, d.n, d.expected_accuracy) else {
            out.push_str(&format!("\n# {domain}: {}\n", d.note.as_deref().unwrap_or("not tuned")));
            continue;
        };
        out.push_str(&format!(
            "\n# {domain}: expected accuracy {acc:.3} (95% CI {}..{}), {:.2} candidates and {:.1} completion tokens per request, {} prompts\n",
            d.ci_low.map_or("-".into(), |v| format!("{v:.3}")),
            d.ci_high.map_or("-".into(), |v| format!("{v:.3}")),
            d.mean_candidates.unwrap_or(0.0),
            d.mean_completion_tokens.unwrap_or(0.0),
            d.prompts
        ));
        // The tuned keys, rendered from the one declaration of the policy keys so the table
        // holds only keys a config accepts.
        let settings = PolicySettings {
            n: Some(n),
            scorer: Some(scorer.clone()),
            adaptive: Some(d.adaptive.is_some()),
            first_wave: d.adaptive.map(|a| a.first_wave),
            accept_score: d.adaptive.and_then(|a| a.accept_score),
            confidence: d.adaptive.and_then(|a| a.confidence),
            ..Default::default()
        };
        out.push_str(&format!("[domains.{domain}]\n{}", settings.toml_lines()));
    }
    out
}

/// Renders a tuning report as a table, JSON or Markdown.
pub fn render_tune(report: &TuneReport, format: super::Format) -> String {
    if format == super::Format::Json {
        return serde_json::to_string_pretty(report).unwrap_or_default() + "\n";
    }
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let header = [
        "domain",
        "scorer",
        "n",
        "adaptive",
        "accuracy",
        "95% ci",
        "candidates",
        "tokens",
        "n=1",
        "n=max",
        "prompts",
        "held-out accuracy",
        "held-out candidates",
    ];
    let rows: Vec<Vec<String>> = report
        .domains
        .iter()
        .map(|(domain, d)| {
            let adaptive = d.adaptive.map_or("-".to_string(), |a| {
                let mut s = format!("first_wave={}", a.first_wave);
                if let Some(x) = a.accept_score {
                    s.push_str(&format!(" accept={x}"));
                }
                if let Some(c) = a.confidence {
                    s.push_str(&format!(" confidence={c}"));
                }
                s
            });
            vec![
                domain.clone(),
                d.scorer.clone().unwrap_or_else(|| d.note.clone().unwrap_or_default()),
                d.n.map_or("-".into(), |n| n.to_string()),
                adaptive,
                f(d.expected_accuracy),
                format!("{}..{}", f(d.ci_low), f(d.ci_high)),
                d.mean_candidates.map_or("-".into(), |v| format!("{v:.2}")),
                d.mean_completion_tokens.map_or("-".into(), |v| format!("{v:.1}")),
                f(d.baseline.as_ref().map(|b| b.n1)),
                f(d.baseline.as_ref().map(|b| b.max_n)),
                d.prompts.to_string(),
                f(d.held_out.as_ref().map(|h| h.accuracy)),
                d.held_out.as_ref().map_or("-".into(), |h| format!("{:.2}", h.mean_candidates)),
            ]
        })
        .collect();
    super::render_rows(&header, &rows, format)
}
