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

use serde_json::value::RawValue;

use super::samples::RecordedRow;
use crate::bon::adaptive::AdaptiveSettings;
use crate::bon::driver::{CandidateSource, FuserFailure, RunSpec, drive};
use crate::bon::select::Selection;
use crate::bon::{
    Arrival, Candidate, Plan, Policy, RawChoice, ResolvedScorer, Samples, ScorerFailurePolicy, Steering, Wave,
};
use crate::error::Error;
use crate::score::cache::identity;
use crate::score::{BoxFuture, ResponseFormat, ScoreInput, ScoreOutput, Scorer, ScorerUsage, Tools};

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

/// Recorded rewards as a pointwise scorer: a candidate's score is the reward recorded for it,
/// told apart by its text and its tool calls (the first candidate with both, when several were
/// recorded: a pointwise scorer gives equal candidates equal scores).
struct RecordedRewards {
    name: String,
    by_candidate: std::collections::HashMap<String, f64>,
}

impl Scorer for RecordedRewards {
    fn name(&self) -> &str {
        &self.name
    }

    fn pointwise(&self) -> bool {
        true
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        let with_messages = input.messages.len() == input.candidates.len();
        let scores: Result<Vec<f64>, Error> = input
            .candidates
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let id = identity(text, with_messages.then(|| &input.messages[i]));
                self.by_candidate.get(&id).copied().ok_or_else(|| {
                    Error::Internal(format!("no reward '{}' was recorded for a replayed candidate", self.name))
                })
            })
            .collect();
        Box::pin(std::future::ready(scores.map(|scores| ScoreOutput { scores, usage: ScorerUsage::default() })))
    }
}

/// The scorer a replay runs with: `source`'s.
fn replay_scorer(name: &str, source: ScoreSource<'_>, row: &RecordedRow) -> ResolvedScorer {
    let scorer: Arc<dyn Scorer> = match source {
        ScoreSource::Scorer(scorer) => scorer.clone(),
        ScoreSource::Recorded(rewards) => {
            let mut by_candidate = std::collections::HashMap::new();
            // Keyed as the replayed candidates are scored: rendered from the recorded message when
            // there is one (`recorded_candidates`), else the recorded text.
            let (texts, messages) = row.record.scored_candidates();
            for ((text, message), reward) in texts.iter().zip(&messages).zip(rewards) {
                by_candidate.entry(identity(text, Some(message))).or_insert(reward);
            }
            Arc::new(RecordedRewards { name: name.to_string(), by_candidate })
        }
    };
    ResolvedScorer { name: name.to_string(), scorer }
}

/// A row's recorded candidates as the driver's candidates (built once per row: every arrival
/// order replays the same ones).
pub fn recorded_candidates(row: &RecordedRow) -> Vec<Candidate> {
    row.record
        .candidates
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let message =
                c.message.clone().unwrap_or_else(|| serde_json::json!({"role": "assistant", "content": c.text}));
            let choice = serde_json::json!({"index": index, "finish_reason": c.finish_reason, "message": message});
            let mut candidate = Candidate::new(
                RawChoice::new(serde_json::value::to_raw_value(&choice).unwrap_or_else(|_| Box::<RawValue>::default())),
                c.candidate_message(),
                c.finish_reason.clone(),
                c.latency_ms.unwrap_or(0),
                c.completion_tokens,
            );
            // Scored as the proxy scored it: the recorded text when no message was recorded.
            if c.message.is_none() {
                candidate.text = c.text.clone();
            }
            candidate
        })
        .collect()
}

/// Recorded candidates as a [`CandidateSource`]: they arrive in `order`, at once. A wave asked
/// for past the last one arrives short, as a live wave cut off by the deadline does.
pub struct RecordedSource<'a> {
    candidates: &'a [Candidate],
    order: &'a [usize],
    streams_each: bool,
}

impl<'a> RecordedSource<'a> {
    /// `candidates` ([`recorded_candidates`]) arriving in `order` (indices into them), one at a
    /// time when `streams_each` (parallel sampling), else a wave at once.
    pub fn new(candidates: &'a [Candidate], order: &'a [usize], streams_each: bool) -> RecordedSource<'a> {
        RecordedSource { candidates, order, streams_each }
    }

    /// The recorded index of the candidate that arrived `j`th.
    pub fn recorded_index(&self, j: usize) -> usize {
        self.order[j]
    }

    fn arrivals(&self, size: u32, offset: u32) -> Samples {
        let from = (offset as usize).min(self.order.len());
        let to = (offset as usize + size as usize).min(self.order.len());
        let mut samples = Samples { strategy: if self.streams_each { "parallel" } else { "n" }, ..Default::default() };
        samples.candidates = self.order[from..to].iter().map(|&i| self.candidates[i].clone()).collect();
        samples.usage.calls = samples.candidates.len() as u32;
        samples.deadline_hit = to - from < size as usize;
        samples
    }
}

impl CandidateSource for RecordedSource<'_> {
    fn streams_each(&self) -> bool {
        self.streams_each
    }

    fn wave(&self, size: u32, offset: u32) -> BoxFuture<'_, Result<Samples, Error>> {
        Box::pin(std::future::ready(Ok(self.arrivals(size, offset))))
    }

    fn wave_each(&self, size: u32, offset: u32) -> Wave<'_> {
        let all = self.arrivals(size, offset);
        let cut_off = all.deadline_hit;
        let mut arrivals: Vec<Arrival> = all
            .candidates
            .into_iter()
            .map(|c| {
                let mut one = Samples { strategy: "parallel", ..Default::default() };
                one.candidates.push(c);
                one.usage.calls = 1;
                Arrival::Call(Ok(one))
            })
            .collect();
        // The recording ran out where the live run was cut off.
        if cut_off {
            arrivals.push(Arrival::Deadline);
        }
        Wave::in_order(arrivals)
    }
}

/// A plan for replaying `n` candidates under `adaptive` with `scorer` and `choose`: what the
/// proxy's policy would plan, less what only a live request has (deadline, load).
fn replay_plan(n: u32, adaptive: Option<AdaptiveSettings>, scorer: ResolvedScorer, choose: Choose) -> Plan {
    Plan {
        domain: String::new(),
        n,
        k: 1,
        scorer,
        return_candidates: false,
        temperature: None,
        max_tokens: None,
        deadline: None,
        adaptive,
        n_requested: n,
        degraded: false,
        degrade_at_queue: None,
        min_n: 1,
        selection: choose.selection,
        require_valid: choose.require_valid,
    }
}

/// How a replayed run picks its answer: the policy's selection and `require_valid`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choose {
    /// How the winner is picked.
    pub selection: Selection,
    /// Never choose an invalid candidate while a valid one exists.
    pub require_valid: bool,
}

impl Choose {
    /// `selection`, with invalid candidates ranked by their scores like any other.
    pub fn by(selection: Selection) -> Choose {
        Choose { selection, require_valid: false }
    }

    /// What `plan` picks with.
    pub fn of(plan: &Plan) -> Choose {
        Choose { selection: plan.selection, require_valid: plan.require_valid }
    }
}

/// What every arrival order of one row replays: its candidates, conversation,
/// `response_format` and `tools`, built once.
struct Replayed {
    candidates: Vec<Candidate>,
    conversation: Vec<crate::score::Message>,
    response_format: Option<ResponseFormat>,
    tools: Option<Tools>,
}

impl Replayed {
    /// The row, with its `response_format` and `tools` prepared when a scorer will read them
    /// (`checked`: a scorer scores, not recorded rewards) or validity decides the pick
    /// (`require_valid`): a recorded schema that does not compile is an error then.
    fn new(row: &RecordedRow, checked: bool) -> Result<Replayed, Error> {
        Ok(Replayed {
            candidates: recorded_candidates(row),
            conversation: row.record.conversation(),
            response_format: if checked { row.response_format()? } else { None },
            tools: if checked { row.tools()? } else { None },
        })
    }
}

/// Replays one arrival order through the driver: the pick's label, candidates requested,
/// tokens generated.
async fn replay_order(
    plan: &Plan,
    mode: ReplayMode,
    order: &[usize],
    row: &Replayed,
    labels: &[f64],
    costs: &[f64],
) -> Result<(f64, f64, f64), Error> {
    // At most the recorded candidates, in waves that fit them (as the proxy's plan would be for
    // an upstream that gives no more).
    let n = plan.n.min(order.len() as u32);
    let adaptive = plan.adaptive.map(|a| AdaptiveSettings { first_wave: a.first_wave.min(n), ..a });
    let plan = Plan { n, adaptive, ..plan.clone() };
    let source = RecordedSource::new(&row.candidates, order, mode.per_arrival);
    let spec = RunSpec {
        plan: &plan,
        conversation: &row.conversation,
        response_format: row.response_format.as_ref(),
        tools: row.tools.as_ref(),
        deadline: None,
        min_candidates: 1,
        on_scorer_failure: ScorerFailurePolicy::Fail,
        seed: 0,
        fuser: None,
        fuser_failure: FuserFailure::Fail,
    };
    let outcome = drive(&spec, &source).await?;
    let pick = source.recorded_index(outcome.chosen());
    let tokens: f64 = (0..outcome.samples.candidates.len()).map(|j| costs[source.recorded_index(j)]).sum();
    let requested = outcome.n_sampled(n);
    Ok((labels[pick], f64::from(requested), tokens))
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

/// Replays one prompt under a policy (`n`, `settings`, the scorer `source` under `name`, picking
/// as `choose` says) over the given orders.
#[allow(clippy::too_many_arguments)]
pub async fn replay_prompt(
    prompt: &ReplayPrompt<'_>,
    settings: Option<AdaptiveSettings>,
    n: u32,
    mode: ReplayMode,
    name: &str,
    source: ScoreSource<'_>,
    choose: Choose,
    orders: &[Vec<usize>],
) -> Result<PromptResult, Error> {
    let row = prompt.row;
    let checked = matches!(source, ScoreSource::Scorer(_)) || choose.require_valid;
    let plan = replay_plan(n, settings, replay_scorer(name, source, row), choose);
    let costs = token_costs(row);
    let replayed = Replayed::new(row, checked)?;
    let mut total = PromptResult::default();
    for order in orders {
        let (accuracy, candidates, tokens) =
            replay_order(&plan, mode, order, &replayed, &prompt.labels, &costs).await?;
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
/// the same scorer. An error names the row's line.
pub async fn replay(
    rows: &[RecordedRow],
    policy: &Policy,
    scorers: &BTreeMap<String, Arc<dyn Scorer>>,
    options: &ReplayOptions,
) -> Result<ReplayReport, (usize, Error)> {
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
        let plan = policy.plan(&steering, 1, None, scorers).map_err(|e| (row.line, e))?;
        let order_list = arrival_orders(labels.len(), orders, &mut rng);
        replayed_orders = replayed_orders.max(order_list.len());
        let prompt = ReplayPrompt { row, labels };
        let scorer = &plan.scorer.scorer;
        // A pointwise scorer's recorded rewards are what it would say again.
        let source = || match scorer.pointwise().then(|| row.record.rewards().remove(&plan.scorer.name)).flatten() {
            Some(recorded) => ScoreSource::Recorded(recorded),
            None => ScoreSource::Scorer(scorer),
        };
        let (name, choose) = (&plan.scorer.name, Choose::of(&plan));
        let adaptive = replay_prompt(&prompt, plan.adaptive, plan.n, mode, name, source(), choose, &order_list)
            .await
            .map_err(|e| (row.line, e))?;
        let fixed = replay_prompt(&prompt, None, plan.n, mode, name, source(), choose, &order_list)
            .await
            .map_err(|e| (row.line, e))?;
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
            // Both rows on the same bootstrap resamples of the domain's prompts (paired): a fixed
            // configured policy, which is its fixed-N row, gets the same interval, not another
            // draw's.
            let paired = rng.u64(..);
            d.policy = stats(&adaptive, resamples, &mut fastrand::Rng::with_seed(paired));
            d.fixed = stats(&fixed, resamples, &mut fastrand::Rng::with_seed(paired));
            (domain, d)
        })
        .collect();
    Ok(ReplayReport { orders: replayed_orders, domains })
}

/// One request replayed as recorded: what `eval replay --as-recorded --picks` writes a line of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pick {
    /// The recorded request id.
    pub prompt_id: String,
    /// The pick, an index into the recorded candidates; for a fused answer, the top candidate
    /// given to the fuser.
    pub chosen: usize,
    /// Candidates requested (cancelled ones included).
    pub n_sampled: u32,
    /// Why sampling stopped.
    pub stop_reason: String,
    /// The answer was fused.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fused: bool,
}

/// Replays each recorded request once, as it was served: its candidates in their recorded
/// (arrival) order, its recorded seed, its domain's plan under `policy` with the recorded
/// scorer, the same driver as the proxy's. `streams_each` as the upstream's sampling mode
/// (parallel: the rules look at each arrival). A fuse selection needs `fuser`, and a fuser that
/// fails is an error, never a silent argmax.
pub async fn replay_as_recorded(
    rows: &[RecordedRow],
    policy: &Policy,
    scorers: &BTreeMap<String, Arc<dyn Scorer>>,
    fuser: Option<&dyn crate::bon::Fuser>,
    streams_each: bool,
) -> Result<Vec<Pick>, (usize, Error)> {
    let mut picks = Vec::with_capacity(rows.len());
    for row in rows {
        let record = &row.record;
        let steering =
            Steering { domain: Some(record.domain().to_string()), scorer: record.scorer.clone(), ..Default::default() };
        let plan = policy.plan(&steering, 1, None, scorers).map_err(|e| (row.line, e))?;
        let replayed = Replayed::new(row, true).map_err(|e| (row.line, e))?;
        let order: Vec<usize> = (0..record.candidates.len()).collect();
        let source = RecordedSource::new(&replayed.candidates, &order, streams_each);
        let spec = RunSpec {
            plan: &plan,
            conversation: &replayed.conversation,
            response_format: replayed.response_format.as_ref(),
            tools: replayed.tools.as_ref(),
            deadline: None,
            min_candidates: policy.min_candidates,
            on_scorer_failure: policy.on_scorer_failure,
            seed: record.seed.unwrap_or(0),
            fuser,
            fuser_failure: FuserFailure::Fail,
        };
        let outcome = drive(&spec, &source).await.map_err(|e| (row.line, e))?;
        picks.push(Pick {
            prompt_id: record.prompt_id.clone(),
            chosen: source.recorded_index(outcome.chosen()),
            n_sampled: outcome.n_sampled(plan.n),
            stop_reason: outcome.stop_reason().to_string(),
            fused: outcome.fused.is_some(),
        });
    }
    Ok(picks)
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

    /// A recorded row of tool calls with empty text: recorded rewards are told apart by the
    /// calls, and `require_valid` with the recorded tools keeps the undeclared tool out.
    #[tokio::test]
    async fn recorded_tool_calls_keep_their_own_rewards_and_validity() {
        let call = |name: &str, city: &str, reward: f64, correct: f64| {
            serde_json::json!({"text": "", "rewards": {"rm": reward}, "correct": correct, "message": {"role": "assistant",
                "content": null, "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": name, "arguments": format!("{{\"city\":\"{city}\"}}")}}]}})
        };
        let line = serde_json::json!({"prompt_id": "t", "prompt": "Weather in Paris?",
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "candidates": [call("get_weather", "Lyon", 0.1, 0.0), call("get_weather", "Paris", 0.5, 1.0),
                call("get_forecast", "Paris", 0.9, 0.0)]});
        let row = RecordedRow { record: crate::samples::SampleRecord::parse(&line.to_string()).unwrap(), line: 1 };
        let prompt = ReplayPrompt { row: &row, labels: row.record.labels().unwrap() };
        let orders = arrival_orders(3, 6, &mut fastrand::Rng::with_seed(1));
        let mode = ReplayMode { per_arrival: false };
        let replay = |choose: Choose| {
            let source = ScoreSource::Recorded(vec![0.1, 0.5, 0.9]);
            replay_prompt(&prompt, None, 3, mode, "rm", source, choose, &orders)
        };
        // The best reward is the undeclared tool's call (label 0) in every order...
        assert_eq!(replay(Choose::by(Selection::Best)).await.unwrap().accuracy, 0.0);
        // ... and require_valid picks the best valid call, Paris.
        let valid_only = Choose { selection: Selection::Best, require_valid: true };
        assert_eq!(replay(valid_only).await.unwrap().accuracy, 1.0);
    }

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
