//! `bestofn eval replay`: the configured policy (fixed or adaptive, per domain) run over recorded
//! candidates in many arrival orders. The stopping decisions are the proxy's own
//! ([`AdaptiveRun`]), the pick is the proxy's own ([`rank`] over the scorer's scores of the
//! candidates that arrived), so what replay predicts is what the proxy does.
//!
//! Arrival order: a random permutation of a prompt's recorded candidates (every permutation,
//! exactly, when there are no more of them than `orders`). In parallel sampling the rules look
//! at each arrival and the rest of the wave is cancelled (its tokens are not spent); otherwise
//! they look at each finished wave. Accuracy is the label of the picked candidate, averaged
//! over orders, then over prompts (bootstrap 95% intervals over prompts). Fixed N is replayed by
//! the same code as one wave of n with no rule.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::samples::RecordedRow;
use crate::bon::adaptive::{AdaptiveRun, AdaptiveSettings};
use crate::bon::{Policy, Steering, rank, score_candidates};
use crate::error::Error;
use crate::score::{Scorer, final_answer};

/// How a replayed run samples: whether rules look at every arrival (parallel sampling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayMode {
    /// Rules look at each arrival, and the rest of a wave is cancelled when one fires.
    pub per_arrival: bool,
}

/// What one prompt's candidates look like to the replay.
pub struct ReplayPrompt<'a> {
    /// The recorded row.
    pub row: &'a RecordedRow,
    /// Correctness labels.
    pub labels: Vec<f64>,
}

/// One policy's expected outcome on one prompt (averaged over orders).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PromptResult {
    /// Expected label of the pick.
    pub accuracy: f64,
    /// Expected candidates requested from the upstream.
    pub candidates: f64,
    /// Expected completion tokens generated.
    pub tokens: f64,
}

/// A policy's numbers in one domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyStats {
    /// Mean expected accuracy over prompts.
    pub accuracy: f64,
    /// Bootstrap 95% interval, low end.
    pub ci_low: Option<f64>,
    /// Bootstrap 95% interval, high end.
    pub ci_high: Option<f64>,
    /// Mean candidates requested per prompt.
    pub mean_candidates: f64,
    /// Mean completion tokens per prompt.
    pub mean_completion_tokens: f64,
}

/// One domain's replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainReplay {
    /// Labelled prompts replayed.
    pub prompts: usize,
    /// The policy's N.
    pub n: u32,
    /// The policy's scorer.
    pub scorer: String,
    /// The adaptive settings, when the policy is adaptive.
    pub adaptive: Option<AdaptiveSettings>,
    /// The configured policy.
    pub policy: PolicyStats,
    /// Fixed N with the same scorer, for comparison.
    pub fixed: PolicyStats,
}

/// The whole replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayReport {
    /// Arrival orders per prompt (or "all" when every permutation was replayed).
    pub orders: usize,
    /// Per domain.
    pub domains: BTreeMap<String, DomainReplay>,
}

/// Token cost of each candidate: the recorded per-candidate count, else about 4 bytes a token.
fn token_costs(row: &RecordedRow) -> Vec<f64> {
    row.record.candidates.iter().map(|c| c.token_cost()).collect()
}

/// Where a replay's scores come from.
pub enum ScoreSource<'a> {
    /// Recorded rewards, one per candidate, read as a pointwise scorer's.
    Recorded(Vec<f64>),
    /// The scorer itself, called on the candidates that arrived.
    Scorer(&'a Arc<dyn Scorer>),
}

/// Scores candidates from a [`ScoreSource`].
struct Scores<'a> {
    source: ScoreSource<'a>,
    row: &'a RecordedRow,
}

impl Scores<'_> {
    fn pointwise(&self) -> bool {
        match &self.source {
            ScoreSource::Recorded(_) => true,
            ScoreSource::Scorer(s) => s.pointwise(),
        }
    }

    async fn of(&self, subset: &[usize]) -> Result<Vec<f64>, Error> {
        let scorer = match &self.source {
            ScoreSource::Recorded(all) => return Ok(subset.iter().map(|&i| all[i]).collect()),
            ScoreSource::Scorer(scorer) => scorer,
        };
        let texts: Vec<String> = subset.iter().map(|&i| self.row.record.candidates[i].text.clone()).collect();
        let conversation = self.row.record.conversation();
        let input = crate::score::ScoreInput {
            conversation: &conversation,
            candidates: &texts,
            response_format: self.row.record.response_format.as_ref(),
        };
        Ok(score_candidates(&***scorer, input).await?.scores)
    }
}

/// Replays one arrival order: the pick's label, candidates requested, tokens generated.
async fn replay_order(
    settings: Option<AdaptiveSettings>,
    n: u32,
    mode: ReplayMode,
    order: &[usize],
    scores: &Scores<'_>,
    labels: &[f64],
    costs: &[f64],
) -> Result<(f64, f64, f64), Error> {
    let n = n.min(order.len() as u32);
    let settings = settings.unwrap_or(AdaptiveSettings { first_wave: n, accept_score: None, confidence: None });
    let mut run = AdaptiveRun::new(AdaptiveSettings { first_wave: settings.first_wave.min(n), ..settings }, n);
    let pointwise = scores.pointwise();
    let mut arrived: Vec<usize> = Vec::new();
    'waves: while let Some((size, offset)) = run.start_wave() {
        let wave = &order[offset as usize..(offset + size) as usize];
        for &c in wave {
            arrived.push(c);
            run.arrived(if run.needs_answers() { final_answer(&scores.row.record.candidates[c].text) } else { None });
            if mode.per_arrival {
                if run.needs_scores() && pointwise {
                    scores.of(&[c]).await?.iter().for_each(|s| run.scored(*s));
                }
                if run.check().is_some() {
                    break 'waves;
                }
            }
        }
        if run.needs_scores() && !(mode.per_arrival && pointwise) {
            let subset: Vec<usize> = if pointwise { wave.to_vec() } else { arrived.clone() };
            scores.of(&subset).await?.iter().for_each(|s| run.scored(*s));
        }
        if run.check().is_some() {
            break;
        }
    }
    let final_scores = scores.of(&arrived).await?;
    let pick = arrived[rank(&final_scores)[0]];
    let tokens: f64 = arrived.iter().map(|&c| costs[c]).sum();
    Ok((labels[pick], f64::from(run.requested()), tokens))
}

/// Every permutation of 0..n (n small), in lexicographic order.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut current: Vec<usize> = (0..n).collect();
    loop {
        out.push(current.clone());
        // Next lexicographic permutation.
        let Some(i) = (0..n.saturating_sub(1)).rev().find(|&i| current[i] < current[i + 1]) else { break };
        let j = (i + 1..n).rev().find(|&j| current[j] > current[i]).unwrap_or(i + 1);
        current.swap(i, j);
        current[i + 1..].reverse();
    }
    out
}

/// The arrival orders replayed for `n` candidates: all permutations when there are at most
/// `orders` of them, else `orders` seeded random ones.
pub fn arrival_orders(n: usize, orders: usize, rng: &mut fastrand::Rng) -> Vec<Vec<usize>> {
    let factorial = (1..=n).try_fold(1usize, |f, k| f.checked_mul(k));
    match factorial {
        Some(f) if f <= orders => permutations(n),
        _ => (0..orders.max(1))
            .map(|_| {
                let mut o: Vec<usize> = (0..n).collect();
                rng.shuffle(&mut o);
                o
            })
            .collect(),
    }
}

/// Replays one prompt under a policy over the given orders.
pub async fn replay_prompt(
    prompt: &ReplayPrompt<'_>,
    settings: Option<AdaptiveSettings>,
    n: u32,
    mode: ReplayMode,
    source: ScoreSource<'_>,
    orders: &[Vec<usize>],
) -> Result<PromptResult, Error> {
    let row = prompt.row;
    let scores = Scores { source, row };
    let costs = token_costs(row);
    let mut total = PromptResult::default();
    for order in orders {
        let (accuracy, candidates, tokens) =
            replay_order(settings, n, mode, order, &scores, &prompt.labels, &costs).await?;
        total.accuracy += accuracy;
        total.candidates += candidates;
        total.tokens += tokens;
    }
    let m = orders.len().max(1) as f64;
    Ok(PromptResult { accuracy: total.accuracy / m, candidates: total.candidates / m, tokens: total.tokens / m })
}

pub(crate) fn stats(results: &[PromptResult], resamples: usize, rng: &mut fastrand::Rng) -> PolicyStats {
    let n = results.len().max(1) as f64;
    let accuracies: Vec<f64> = results.iter().map(|r| r.accuracy).collect();
    let (ci_low, ci_high) = super::bon::bootstrap(&accuracies, resamples, rng);
    PolicyStats {
        accuracy: accuracies.iter().sum::<f64>() / n,
        ci_low,
        ci_high,
        mean_candidates: results.iter().map(|r| r.candidates).sum::<f64>() / n,
        mean_completion_tokens: results.iter().map(|r| r.tokens).sum::<f64>() / n,
    }
}

/// How a replay runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Per-arrival (parallel sampling) or per-wave checks.
    pub mode: ReplayMode,
    /// Only this domain.
    pub domain: Option<String>,
    /// Arrival orders per prompt.
    pub orders: usize,
    /// Seed of the orders and the bootstrap.
    pub seed: u64,
    /// Bootstrap resamples.
    pub resamples: usize,
}

/// Replays every labelled row under `policy` (each row's domain's plan), beside fixed N with
/// the same scorer.
pub async fn replay(
    rows: &[RecordedRow],
    policy: &Policy,
    scorers: &BTreeMap<String, Arc<dyn Scorer>>,
    options: &ReplayOptions,
) -> Result<ReplayReport, Error> {
    let (mode, orders, resamples) = (options.mode, options.orders, options.resamples);
    let domain_filter = options.domain.as_deref();
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut per_domain: BTreeMap<String, (DomainReplay, Vec<PromptResult>, Vec<PromptResult>)> = BTreeMap::new();
    let mut replayed_orders = 0;
    for row in rows {
        let Some(labels) = row.record.labels() else { continue };
        let domain = row.record.domain().to_string();
        if domain_filter.is_some_and(|d| d != domain) {
            continue;
        }
        let steering = Steering { domain: Some(domain.clone()), ..Default::default() };
        let plan = policy.plan(&steering, 1, None, scorers)?;
        let order_list = arrival_orders(labels.len(), orders, &mut rng);
        replayed_orders = replayed_orders.max(order_list.len());
        let prompt = ReplayPrompt { row, labels };
        let scorer = &plan.scorer.scorer;
        // A pointwise scorer's recorded rewards are what it would say again.
        let source = || match scorer.pointwise().then(|| row.record.rewards().remove(&plan.scorer.name)).flatten() {
            Some(recorded) => ScoreSource::Recorded(recorded),
            None => ScoreSource::Scorer(scorer),
        };
        let adaptive = replay_prompt(&prompt, plan.adaptive, plan.n, mode, source(), &order_list).await?;
        let fixed = replay_prompt(&prompt, None, plan.n, mode, source(), &order_list).await?;
        let entry = per_domain.entry(domain).or_insert_with(|| {
            let empty = PolicyStats {
                accuracy: 0.0,
                ci_low: None,
                ci_high: None,
                mean_candidates: 0.0,
                mean_completion_tokens: 0.0,
            };
            (
                DomainReplay {
                    prompts: 0,
                    n: plan.n,
                    scorer: plan.scorer.name.clone(),
                    adaptive: plan.adaptive,
                    policy: empty.clone(),
                    fixed: empty,
                },
                Vec::new(),
                Vec::new(),
            )
        });
        entry.0.prompts += 1;
        entry.1.push(adaptive);
        entry.2.push(fixed);
    }
    let domains = per_domain
        .into_iter()
        .map(|(domain, (mut d, adaptive, fixed))| {
            d.policy = stats(&adaptive, resamples, &mut rng);
            d.fixed = stats(&fixed, resamples, &mut rng);
            (domain, d)
        })
        .collect();
    Ok(ReplayReport { orders: replayed_orders, domains })
}

/// Renders a replay report as a table, JSON, CSV or Markdown.
pub fn render_replay(report: &ReplayReport, format: super::Format) -> String {
    use super::Format;
    if format == Format::Json {
        return serde_json::to_string_pretty(report).unwrap_or_default() + "\n";
    }
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let header =
        ["domain", "policy", "prompts", "accuracy", "ci_low", "ci_high", "mean_candidates", "mean_completion_tokens"];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (domain, d) in &report.domains {
        let name = match &d.adaptive {
            Some(a) => format!(
                "adaptive n={} {} first_wave={}{}{}",
                d.n,
                d.scorer,
                a.first_wave,
                a.accept_score.map(|s| format!(" accept={s}")).unwrap_or_default(),
                a.confidence.map(|c| format!(" confidence={c}")).unwrap_or_default()
            ),
            None => format!("fixed n={} {} (configured)", d.n, d.scorer),
        };
        for (label, s) in [(name, &d.policy), (format!("fixed n={} {}", d.n, d.scorer), &d.fixed)] {
            rows.push(vec![
                domain.clone(),
                label,
                d.prompts.to_string(),
                format!("{:.4}", s.accuracy),
                cell(s.ci_low),
                cell(s.ci_high),
                format!("{:.2}", s.mean_candidates),
                format!("{:.1}", s.mean_completion_tokens),
            ]);
        }
    }
    super::render_rows(&header, &rows, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_all_distinct_and_complete() {
        let p = permutations(4);
        assert_eq!(p.len(), 24);
        let set: std::collections::BTreeSet<Vec<usize>> = p.into_iter().collect();
        assert_eq!(set.len(), 24);
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(arrival_orders(3, 10, &mut rng).len(), 6, "3! <= 10: every order");
        assert_eq!(arrival_orders(5, 10, &mut rng).len(), 10, "5! > 10: sampled orders");
    }
}
