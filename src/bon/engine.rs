//! The request engine: sample, score, rank.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    Api, ByteStream, ClientBody, DomainClassifier, Forwarded, Plan, Policy, RuleClassifier, Sampler, Samples,
    ScorerFailurePolicy, Steering, UpstreamBody, score_candidates, select::select,
};
use crate::error::{Error, Party};
use futures_util::StreamExt;

use super::adaptive::{AdaptiveRun, AdaptiveSettings, StopReason};
use super::select::Selection;
use super::{Arrival, Fused, Fuser};
use crate::score::{Message, ScoreInput, ScoreOutput, Scorer, ScorerUsage, final_answer, last_user_message};

/// Where a request's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Waiting for candidates.
    pub sampling_ms: f64,
    /// Waiting for the scorer.
    pub scoring_ms: f64,
    /// The whole engine run.
    pub total_ms: f64,
}

/// A finished best-of-N run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The candidates, in candidate order.
    pub samples: Samples,
    /// One score per candidate, in candidate order; empty when only one candidate was sampled.
    pub scores: Vec<f64>,
    /// Candidate indices, best first.
    pub ranking: Vec<usize>,
    /// What the scorer consumed.
    pub scorer_usage: ScorerUsage,
    /// Why the scorer failed, when the policy answered without scores.
    pub scorer_error: Option<String>,
    /// Where the time went.
    pub timings: Timings,
    /// What adaptive sampling did, when it was on.
    pub adaptive: Option<AdaptiveReport>,
    /// The fused answer, when selection is `fuse` and the fuser answered.
    pub fused: Option<Fused>,
    /// Why fusing failed, when it was asked for: the best candidate is the answer then.
    pub fuse_failed: Option<String>,
}

/// What adaptive sampling did for one request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AdaptiveReport {
    /// Candidates requested from the upstream (cancelled ones included).
    pub n_sampled: u32,
    /// Why sampling stopped.
    pub stop_reason: StopReason,
    /// Waves started.
    pub waves: u32,
}

impl Outcome {
    /// The winning candidate's index.
    pub fn chosen(&self) -> usize {
        self.ranking.first().copied().unwrap_or(0)
    }

    /// The winning candidate's score, if candidates were scored.
    pub fn chosen_score(&self) -> Option<f64> {
        self.scores.get(self.chosen()).copied()
    }
}

/// Samples, scores and ranks candidates; shared by every endpoint.
pub struct Engine {
    sampler: Arc<dyn Sampler>,
    scorers: BTreeMap<String, Arc<dyn Scorer>>,
    policy: Policy,
    classifier: Arc<dyn DomainClassifier>,
    fuser: Option<Arc<dyn Fuser>>,
    /// Load-aware N: how many times N is currently halved.
    degrade_level: std::sync::atomic::AtomicU32,
}

/// Halvings of N at most (N = 64 goes down to 1 in six).
const MAX_DEGRADE_LEVEL: u32 = 6;

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Engine {
    /// Adds the fuser that `selection = "fuse"` sends the top candidates to.
    pub fn with_fuser(mut self, fuser: Arc<dyn Fuser>) -> Self {
        self.fuser = Some(fuser);
        self
    }

    /// Replaces the rule-based domain classifier (with a judge LLM, say).
    pub fn with_classifier(mut self, classifier: Arc<dyn DomainClassifier>) -> Self {
        self.classifier = classifier;
        self
    }

    async fn score(
        &self,
        plan: &Plan,
        conversation: &[Message],
        samples: &Samples,
        response_format: Option<&Value>,
    ) -> Result<ScoreOutput, Error> {
        let texts: Vec<String> = samples.candidates.iter().map(|c| c.text.clone()).collect();
        score_candidates(&*plan.scorer.scorer, ScoreInput { conversation, candidates: &texts, response_format }).await
    }

    /// An engine over a sampler, the named scorers and a validated policy.
    pub fn new(sampler: Arc<dyn Sampler>, scorers: BTreeMap<String, Arc<dyn Scorer>>, policy: Policy) -> Self {
        Engine {
            sampler,
            scorers,
            policy,
            classifier: Arc::new(RuleClassifier),
            fuser: None,
            degrade_level: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Resolves domain, N and scorer for a request; the classifier runs only when the request
    /// names no domain.
    pub async fn plan(&self, steering: &Steering, client_n: u32, conversation: &[Message]) -> Result<Plan, Error> {
        let classified = match &steering.domain {
            Some(_) => None,
            None => Some(self.classifier.classify(last_user_message(conversation)).await),
        };
        let mut plan = self.policy.plan(steering, client_n, classified.as_deref(), &self.scorers)?;
        self.apply_load(&mut plan)?;
        Ok(plan)
    }

    /// Load-aware N. With `degrade_at_queue` set, each planned request looks at the upstream's
    /// expected queue wait: above the threshold N is halved once more (down to `min_n`); below
    /// half of it, once less. The gap between the two is the hysteresis that keeps N from
    /// flapping. A best-of-N request whose expected wait exceeds its deadline is refused with a
    /// 429 before it samples anything.
    fn apply_load(&self, plan: &mut Plan) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if plan.n <= 1 {
            return Ok(());
        }
        let Some(wait) = self.sampler.expected_queue_wait() else { return Ok(()) };
        // Admitted, a request still needs one call's time after its wait: refusing it now is a
        // fast 429 where admitting it would be a 504 at the deadline. Only on measured call
        // times: before any call has been answered the wait rests on an assumed call time,
        // good enough to sample fewer candidates, not to turn a request away.
        if let Some(deadline) = plan.deadline
            && let Some(call) = self.sampler.expected_call_time()
            && wait + call > deadline
        {
            let done = wait + call;
            return Err(Error::Overloaded(format!(
                "the upstream queue and a call take about {} ms, beyond the {} ms deadline; retry shortly",
                done.as_millis(),
                deadline.as_millis()
            )));
        }
        let Some(threshold) = plan.degrade_at_queue else { return Ok(()) };
        let level = if wait > threshold {
            self.degrade_level
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some((l + 1).min(MAX_DEGRADE_LEVEL)))
                .map_or(MAX_DEGRADE_LEVEL, |l| (l + 1).min(MAX_DEGRADE_LEVEL))
        } else if wait < threshold / 2 {
            self.degrade_level
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(l.saturating_sub(1)))
                .map_or(0, |l| l.saturating_sub(1))
        } else {
            self.degrade_level.load(Ordering::Relaxed)
        };
        if level > 0 {
            plan.degrade_to((plan.n >> level).max(plan.min_n));
        }
        Ok(())
    }

    /// Forwards a request as it is, with the domain's defaults filled in (N = 1). `verbatim` is
    /// the client's text of `body` (its bytes, less any field the proxy took out for itself):
    /// sent unchanged when no default is added, so the upstream gets the client's key order,
    /// spacing and number spellings.
    pub async fn forward(
        &self,
        api: Api,
        plan: &Plan,
        body: &ClientBody,
        verbatim: Option<&Bytes>,
    ) -> Result<Forwarded, Error> {
        self.sampler.forward(api, upstream_json(plan, body, verbatim)?).await
    }

    /// Forwards a streaming request (N = 1): bytes reach the caller as they arrive. `verbatim`
    /// as for [`Engine::forward`].
    pub async fn forward_stream(
        &self,
        api: Api,
        plan: &Plan,
        body: &ClientBody,
        verbatim: Option<&Bytes>,
    ) -> Result<ByteStream, Error> {
        self.sampler.forward_stream(api, upstream_json(plan, body, verbatim)?).await
    }

    /// Samples `plan.n` candidates, scores them with `plan.scorer`, and ranks them. `verbatim`
    /// as for [`Engine::forward`]: the calls keep the client's spelling of every field.
    pub async fn run(
        &self,
        api: Api,
        body: &ClientBody,
        verbatim: Option<&Bytes>,
        conversation: &[Message],
        seed: Option<i64>,
        plan: &Plan,
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        let deadline = plan.deadline.map(|d| started + d);
        let (fields, text) = upstream_fields(plan, body, verbatim)?;
        let upstream_body = UpstreamBody { fields: &fields, text };
        let response_format = body.fields()?.get("response_format");
        let (mut samples, adaptive, early_scores) = match plan.adaptive {
            None => (self.sampler.sample(api, upstream_body, plan.n, 0, seed, deadline).await?, None, None),
            Some(settings) => {
                let context = Context { api, body: upstream_body, conversation, response_format, seed, deadline, plan };
                let (samples, report, early) = self.sample_adaptive(context, settings).await?;
                (samples, Some(report), early)
            }
        };
        samples.settle_usage();
        let sampling_ms = ms_since(started);
        let received = samples.candidates.len() as u32;
        if received < self.policy.min_candidates {
            let message = format!(
                "only {received} of {} candidates arrived (min_candidates = {})",
                plan.n, self.policy.min_candidates
            );
            return Err(if samples.deadline_hit {
                let limit = plan.deadline.map_or(0, |d| d.as_millis());
                Error::timeout(Party::Upstream, "upstream", format!("{message} before the {limit} ms deadline"))
            } else {
                let cause = samples.failures.first().map(String::as_str).unwrap_or("no error reported");
                Error::bad_gateway(Party::Upstream, "upstream", format!("{message}; first failure: {cause}"))
            });
        }

        let scoring_started = Instant::now();
        let mut scorer_error = None;
        let (scores, scorer_usage) = if let Some(early) = early_scores.filter(|_| samples.candidates.len() > 1) {
            (early.scores, early.usage)
        } else if samples.candidates.len() > 1 {
            match self.score(plan, conversation, &samples, response_format).await {
                Ok(out) => (out.scores, out.usage),
                Err(e) if self.policy.on_scorer_failure == ScorerFailurePolicy::Fail => return Err(e),
                Err(e) => {
                    tracing::warn!(scorer = %plan.scorer.name, error = %e, policy = ?self.policy.on_scorer_failure, "scorer failed; falling back");
                    scorer_error = Some(e.to_string());
                    (Vec::new(), ScorerUsage::default())
                }
            }
        } else {
            (Vec::new(), ScorerUsage::default())
        };
        let scoring_ms = ms_since(scoring_started);
        let ranking = if !scores.is_empty() {
            // A seeded request draws the same soft pick again.
            let mut rng = seed.map_or_else(fastrand::Rng::new, |s| fastrand::Rng::with_seed(s as u64));
            select(&scores, plan.selection, &mut rng)
        } else {
            let mut order: Vec<usize> = (0..samples.candidates.len()).collect();
            if scorer_error.is_some() && self.policy.on_scorer_failure == ScorerFailurePolicy::Random {
                let pick = fastrand::usize(..order.len());
                order.rotate_left(pick);
            }
            order
        };
        let (fused, fuse_failed) = match plan.selection {
            Selection::Fuse { top, show_scores } if samples.candidates.len() > 1 => {
                self.fuse(plan, conversation, response_format, &samples, &scores, &ranking, top, show_scores).await
            }
            _ => (None, None),
        };
        Ok(Outcome {
            fused,
            fuse_failed,
            samples,
            scores,
            ranking,
            scorer_usage,
            scorer_error,
            timings: Timings { sampling_ms, scoring_ms, total_ms: ms_since(started) },
            adaptive,
        })
    }

    /// Mixture-of-N: the top candidates (with their scores when shown) go to the fuser; its
    /// answer is scored like a candidate when the scorer is pointwise. A fuser failure is
    /// reported, never fatal: the best candidate stays the answer.
    #[allow(clippy::too_many_arguments)]
    async fn fuse(
        &self,
        plan: &Plan,
        conversation: &[Message],
        response_format: Option<&Value>,
        samples: &Samples,
        scores: &[f64],
        ranking: &[usize],
        top: u32,
        show_scores: bool,
    ) -> (Option<Fused>, Option<String>) {
        let Some(fuser) = &self.fuser else { return (None, Some("no [fuser] is configured".into())) };
        let from: Vec<usize> = ranking.iter().take(top as usize).copied().collect();
        let shown: Vec<(String, Option<f64>)> = from
            .iter()
            .map(|&i| (samples.candidates[i].text.clone(), show_scores.then(|| scores.get(i).copied()).flatten()))
            .collect();
        match fuser.fuse(conversation, &shown).await {
            Ok(mut fused) => {
                fused.from = from;
                if plan.scorer.scorer.pointwise() {
                    let texts = [fused.text.clone()];
                    let input = ScoreInput { conversation, candidates: &texts, response_format };
                    fused.score = score_candidates(&*plan.scorer.scorer, input)
                        .await
                        .ok()
                        .and_then(|o| o.scores.first().copied());
                }
                (Some(fused), None)
            }
            Err(e) => {
                tracing::warn!(error = %e, "fuser failed; answering with the best candidate");
                (None, Some(e.to_string()))
            }
        }
    }

    /// Scores candidates `from..` of `samples` for the stopping rules; a scorer failure here only
    /// disables the score rule (the final scoring applies the failure policy).
    /// With a pointwise scorer the scores are kept in `early` (candidate order), so the final
    /// selection need not score them again.
    async fn score_for_stop(
        &self,
        cx: &Context<'_>,
        samples: &Samples,
        from: usize,
        run: &mut AdaptiveRun,
        early: &mut Option<ScoreOutput>,
    ) {
        let texts: Vec<String> = samples.candidates[from..].iter().map(|c| c.text.clone()).collect();
        if texts.is_empty() {
            return;
        }
        let input =
            ScoreInput { conversation: cx.conversation, candidates: &texts, response_format: cx.response_format };
        match score_candidates(&*cx.plan.scorer.scorer, input).await {
            Ok(out) => {
                out.scores.iter().for_each(|s| run.scored(*s));
                if let Some(kept) = early.as_mut()
                    && kept.scores.len() == from
                {
                    kept.scores.extend(out.scores);
                    kept.usage.calls += out.usage.calls;
                    kept.usage.prompt_tokens =
                        kept.usage.prompt_tokens.zip(out.usage.prompt_tokens).map(|(a, b)| a + b);
                }
            }
            Err(e) => {
                *early = None;
                tracing::debug!(error = %e, "scoring for the stopping rule failed");
            }
        }
    }

    /// Samples in waves until a stopping rule fires (see [`super::adaptive`]). In parallel mode
    /// the rules look at every arrival and the calls still running are dropped when one fires;
    /// otherwise they look at each finished wave.
    async fn sample_adaptive(
        &self,
        cx: Context<'_>,
        settings: AdaptiveSettings,
    ) -> Result<(Samples, AdaptiveReport, Option<ScoreOutput>), Error> {
        let mut run = AdaptiveRun::new(settings, cx.plan.n);
        let scorer = &cx.plan.scorer.scorer;
        // Pointwise scorers score each arrival, except those that prefer one call per batch.
        let per_arrival = scorer.pointwise() && !scorer.batched();
        let mut all = Samples::default();
        let mut first_error: Option<Error> = None;
        let mut scored = 0;
        let mut reason = StopReason::MaxN;
        let mut early = scorer
            .pointwise()
            .then(|| ScoreOutput { scores: Vec::new(), usage: ScorerUsage { calls: 0, prompt_tokens: Some(0) } });
        'waves: while let Some((size, offset)) = run.start_wave() {
            if self.sampler.streams_each() {
                let mut arrivals = self.sampler.sample_each(cx.api, cx.body, size, offset, cx.seed, cx.deadline);
                while let Some(arrival) = arrivals.next().await {
                    match arrival {
                        Arrival::Deadline => {
                            all.deadline_hit = true;
                            reason = StopReason::Deadline;
                            break 'waves;
                        }
                        Arrival::Call(Err(e)) => {
                            all.failures.push(e.to_string());
                            first_error.get_or_insert(e);
                        }
                        Arrival::Call(Ok(more)) => {
                            let from = all.candidates.len();
                            all.extend(more);
                            note_answers(&mut run, &all, from);
                            if run.needs_scores() && per_arrival {
                                self.score_for_stop(&cx, &all, from, &mut run, &mut early).await;
                                scored = all.candidates.len();
                            }
                            if let Some(r) = run.check() {
                                // Dropping `arrivals` cancels the calls still running.
                                reason = r;
                                break 'waves;
                            }
                        }
                    }
                }
            } else {
                match self.sampler.sample(cx.api, cx.body, size, offset, cx.seed, cx.deadline).await {
                    Ok(more) => {
                        let from = all.candidates.len();
                        all.extend(more);
                        note_answers(&mut run, &all, from);
                    }
                    Err(e) => {
                        all.failures.push(e.to_string());
                        first_error.get_or_insert(e);
                    }
                }
                if all.deadline_hit {
                    reason = StopReason::Deadline;
                    break;
                }
            }
            if run.needs_scores() && scored < all.candidates.len() {
                // Whole waves: a pointwise scorer scores what is new, others the whole set.
                let from = if scorer.pointwise() { scored } else { 0 };
                self.score_for_stop(&cx, &all, from, &mut run, &mut early).await;
                scored = all.candidates.len();
            }
            if let Some(r) = run.check() {
                reason = r;
                break;
            }
            if cx.deadline.is_some_and(|d| Instant::now() >= d) {
                all.deadline_hit = true;
                reason = StopReason::Deadline;
                break;
            }
        }
        if all.candidates.is_empty() {
            return Err(first_error.unwrap_or_else(|| {
                Error::timeout(Party::Upstream, "upstream", "no candidate arrived before the request deadline")
            }));
        }
        if all.strategy.is_empty() {
            all.strategy = "parallel";
        }
        let early = early.filter(|e| run.needs_scores() && e.scores.len() == all.candidates.len());
        Ok((all, AdaptiveReport { n_sampled: run.requested(), stop_reason: reason, waves: run.waves() }, early))
    }
}

/// What one adaptive run shares across its waves.
struct Context<'a> {
    api: Api,
    body: UpstreamBody<'a>,
    conversation: &'a [Message],
    response_format: Option<&'a Value>,
    seed: Option<i64>,
    deadline: Option<Instant>,
    plan: &'a Plan,
}

/// Tells the run the final answers of the candidates that arrived from `from` on.
fn note_answers(run: &mut AdaptiveRun, samples: &Samples, from: usize) {
    for c in &samples.candidates[from..] {
        run.arrived(if run.needs_answers() { final_answer(&c.text) } else { None });
    }
}

/// An upstream body's fields and, when it still says exactly them, the client's text.
type UpstreamFields<'a> = (std::borrow::Cow<'a, Map<String, Value>>, Option<&'a Bytes>);

/// The fields the upstream gets under `plan` (the domain's defaults filled in), and the client's
/// text `verbatim` when it still says exactly them (no default was added).
fn upstream_fields<'a>(
    plan: &Plan,
    body: &'a ClientBody,
    verbatim: Option<&'a Bytes>,
) -> Result<UpstreamFields<'a>, Error> {
    let fields = plan.upstream_body(body)?;
    let text = verbatim.filter(|_| matches!(fields, std::borrow::Cow::Borrowed(_)));
    Ok((fields, text))
}

/// The JSON text a forwarded request is sent as (see [`upstream_fields`]): the client's text,
/// without parsing its fields, when no default is added.
fn upstream_json(plan: &Plan, body: &ClientBody, verbatim: Option<&Bytes>) -> Result<Bytes, Error> {
    if let Some(text) = verbatim
        && !plan.adds_defaults(body)
    {
        return Ok(text.clone());
    }
    let (fields, text) = upstream_fields(plan, body, verbatim)?;
    UpstreamBody { fields: &fields, text }.to_json()
}
