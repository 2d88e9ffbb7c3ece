//! The one driver of a best-of-N run, for the proxy and for `eval replay` alike: waves of
//! candidates from a [`CandidateSource`] (the upstream live, recorded candidates offline), the
//! stopping rules per arrival or per wave, scoring (per arrival or batched), `min_candidates`,
//! `on_scorer_failure`, every selection (argmax, weighted vote, soft with the run's seeded
//! RNG, fuse through the fuser), and the candidates' validity with `require_valid`. Nothing of
//! this exists anywhere else, so what replay predicts is what the proxy does.

use std::time::Instant;

use super::adaptive::{AdaptiveRun, AdaptiveSettings, StopReason};
use super::engine::{AdaptiveReport, Outcome, Timings};
use super::select::{Selection, eligible, select_among, unscored_order};
use super::{Arrival, BoxFuture, Fused, Fuser, Plan, Samples, ScorerFailurePolicy, Wave, score_candidates};
use crate::error::{Error, Party};
use crate::score::validity::is_valid;
use crate::score::{
    CandidateMessage, Message, ResponseFormat, ScoreInput, ScoreOutput, ScorerUsage, Tools, answer_key,
};

/// Where a run's candidates come from. Live, the upstream (hedging, the deadline and the
/// upstream's failures are the source's); in replay, recorded candidates in a given order.
pub trait CandidateSource: Send + Sync {
    /// Whether candidates arrive one call at a time (parallel sampling): the stopping rules then
    /// look at each arrival, and the calls still running are cancelled when one fires.
    fn streams_each(&self) -> bool;
    /// One wave of `size` candidates, numbered from `offset`, answered together. Fewer may come
    /// back when some fail or the deadline cuts them off; none is an error.
    fn wave(&self, size: u32, offset: u32) -> BoxFuture<'_, Result<Samples, Error>>;
    /// One wave of single-candidate calls, each yielded as it finishes; any one can be cancelled
    /// ([`Wave::cancel`]), and dropping the wave cancels the calls still running. Used only when
    /// [`CandidateSource::streams_each`].
    fn wave_each(&self, size: u32, offset: u32) -> Wave<'_>;
}

/// What a fuser failure does: live, the best candidate answers (and the failure is reported);
/// offline, a measurement that silently became argmax would be wrong, so it is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuserFailure {
    /// Answer with the best candidate.
    AnswerBest,
    /// Fail the run.
    Fail,
}

/// Everything a run needs besides its candidates.
pub struct RunSpec<'a> {
    /// The request's plan: N, scorer, adaptive settings, selection.
    pub plan: &'a Plan,
    /// The conversation the candidates answer.
    pub conversation: &'a [Message],
    /// The request's `response_format` (its schema compiled once for the run), for verifiers
    /// and validity.
    pub response_format: Option<&'a ResponseFormat>,
    /// The request's `tools` and `tool_choice` (schemas compiled once for the run), for
    /// verifiers and validity.
    pub tools: Option<&'a Tools>,
    /// When the run must end.
    pub deadline: Option<Instant>,
    /// Fewest candidates to answer with.
    pub min_candidates: u32,
    /// What a scorer failure does.
    pub on_scorer_failure: ScorerFailurePolicy,
    /// The seed of the run's RNG (soft selection, a random fallback): the client's seed, or one
    /// the proxy drew and recorded.
    pub seed: u64,
    /// The fuser of `selection = "fuse"`.
    pub fuser: Option<&'a dyn Fuser>,
    /// What a fuser failure does.
    pub fuser_failure: FuserFailure,
}

impl RunSpec<'_> {
    /// Whether the run checks its candidates' validity: the request has `tools` or a
    /// `response_format`.
    fn checks_validity(&self) -> bool {
        self.tools.is_some() || self.response_format.is_some()
    }

    /// Whether each of `messages` is valid, when the run checks validity.
    fn validity<'m>(&self, messages: impl IntoIterator<Item = &'m CandidateMessage>) -> Option<Vec<bool>> {
        self.checks_validity()
            .then(|| messages.into_iter().map(|m| is_valid(m, self.tools, self.response_format)).collect())
    }

    /// What the scorer is asked about `candidates`.
    fn score_input<'a>(&'a self, texts: &'a [String], messages: &'a [CandidateMessage]) -> ScoreInput<'a> {
        ScoreInput {
            conversation: self.conversation,
            candidates: texts,
            response_format: self.response_format,
            messages,
            tools: self.tools,
        }
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Runs `spec` over `source`: samples, scores, selects (and fuses).
pub async fn drive(spec: &RunSpec<'_>, source: &dyn CandidateSource) -> Result<Outcome, Error> {
    let started = Instant::now();
    let plan = spec.plan;
    let (mut samples, adaptive, early_scores) = match plan.adaptive {
        None => (source.wave(plan.n, 0).await?, None, None),
        Some(settings) => {
            let (samples, report, early) = sample_adaptive(spec, source, settings).await?;
            (samples, Some(report), early)
        }
    };
    samples.settle_usage();
    let sampling_ms = ms_since(started);
    let received = samples.candidates.len() as u32;
    if received < spec.min_candidates {
        let message =
            format!("only {received} of {} candidates arrived (min_candidates = {})", plan.n, spec.min_candidates);
        return Err(if samples.deadline_hit {
            let limit = plan.deadline.map_or(0, |d| d.as_millis());
            Error::timeout(Party::Upstream, "the upstream", format!("{message} before the {limit} ms deadline"))
        } else {
            let cause = samples.failures.first().map(String::as_str).unwrap_or("no error reported");
            Error::bad_gateway(Party::Upstream, "the upstream", format!("{message}; first failure: {cause}"))
        });
    }

    let scoring_started = Instant::now();
    let (texts, messages) = rendered(&samples, 0);
    let valid = spec.validity(&messages);
    let may_win = eligible(valid.as_deref(), plan.require_valid);
    let mut scorer_error = None;
    let (scores, scorer_usage) = if let Some(early) = early_scores.filter(|_| samples.candidates.len() > 1) {
        (early.scores, early.usage)
    } else if samples.candidates.len() > 1 {
        match score_candidates(&*plan.scorer.scorer, spec.score_input(&texts, &messages)).await {
            Ok(out) => (out.scores, out.usage),
            Err(e) if spec.on_scorer_failure == ScorerFailurePolicy::Fail => return Err(e),
            Err(e) => {
                tracing::warn!(scorer = %plan.scorer.name, error = %e.loggable(), policy = ?spec.on_scorer_failure, "scorer failed; falling back");
                scorer_error = Some(e.message_with_causes());
                (Vec::new(), ScorerUsage::default())
            }
        }
    } else {
        (Vec::new(), ScorerUsage::default())
    };
    let scoring_ms = ms_since(scoring_started);
    // One RNG for the run, from its seed: a replay with the recorded seed draws the same pick.
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let ranking = if !scores.is_empty() {
        select_among(&scores, plan.selection, &mut rng, may_win)
    } else {
        let random = scorer_error.is_some() && spec.on_scorer_failure == ScorerFailurePolicy::Random;
        unscored_order(samples.candidates.len(), random, &mut rng, may_win)
    };
    let (fused, fuse_failed) = match plan.selection {
        Selection::Fuse { top, show_scores } if samples.candidates.len() > 1 => {
            fuse(spec, &samples, &scores, &ranking, top, show_scores).await?
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
        seed: spec.seed,
        valid,
    })
}

/// Mixture-of-N: the top candidates (with their scores when shown) go to the fuser; its answer
/// is scored like a candidate when the scorer is pointwise.
async fn fuse(
    spec: &RunSpec<'_>,
    samples: &Samples,
    scores: &[f64],
    ranking: &[usize],
    top: u32,
    show_scores: bool,
) -> Result<(Option<Fused>, Option<String>), Error> {
    // The fuser's own error, as it is: wrapped in another it would name the fuser twice.
    let failed = |error: Error| match spec.fuser_failure {
        FuserFailure::AnswerBest => Ok((None, Some(error.message_with_causes()))),
        FuserFailure::Fail => Err(error),
    };
    let Some(fuser) = spec.fuser else {
        return failed(Error::bad_gateway(Party::Scorer, "the fuser", "no [fuser] is configured"));
    };
    let from: Vec<usize> = ranking.iter().take(top as usize).copied().collect();
    let shown: Vec<(String, Option<f64>)> = from
        .iter()
        .map(|&i| (samples.candidates[i].text.clone(), show_scores.then(|| scores.get(i).copied()).flatten()))
        .collect();
    match fuser.fuse(spec.conversation, &shown).await {
        Ok(mut fused) => {
            fused.from = from;
            let scorer = &spec.plan.scorer.scorer;
            if scorer.pointwise() {
                let texts = [fused.text.clone()];
                let messages = [CandidateMessage::from_text(fused.text.as_str())];
                let input = spec.score_input(&texts, &messages);
                fused.score = score_candidates(&**scorer, input).await.ok().and_then(|o| o.scores.first().copied());
            }
            Ok((Some(fused), None))
        }
        Err(e) => {
            tracing::warn!(error = %e.loggable(), "fuser failed");
            failed(e)
        }
    }
}

/// Scores candidates `from..` of `samples` for the stopping rules; a scorer failure here only
/// disables the score rule (the final scoring applies the failure policy). With a pointwise
/// scorer the scores are kept in `early` (candidate order), so the final selection need not
/// score them again.
async fn score_for_stop(
    spec: &RunSpec<'_>,
    samples: &Samples,
    from: usize,
    run: &mut AdaptiveRun,
    early: &mut Option<ScoreOutput>,
) {
    let (texts, messages) = rendered(samples, from);
    if texts.is_empty() {
        return;
    }
    // Under require_valid an invalid candidate cannot be the answer: its score stops nothing.
    let valid = spec.validity(&messages).filter(|_| spec.plan.require_valid);
    match score_candidates(&*spec.plan.scorer.scorer, spec.score_input(&texts, &messages)).await {
        Ok(out) => {
            for (i, s) in out.scores.iter().enumerate() {
                if valid.as_ref().is_none_or(|v| v[i]) {
                    run.scored(*s);
                }
            }
            if let Some(kept) = early.as_mut()
                && kept.scores.len() == from
            {
                kept.scores.extend(out.scores);
                kept.usage.calls += out.usage.calls;
                kept.usage.prompt_tokens = kept.usage.prompt_tokens.zip(out.usage.prompt_tokens).map(|(a, b)| a + b);
            }
        }
        Err(e) => {
            *early = None;
            tracing::debug!(error = %e.loggable(), "scoring for the stopping rule failed");
        }
    }
}

/// Samples in waves until a stopping rule fires (see [`super::adaptive`]). When the source
/// streams each call the rules look at every arrival and the calls still running are dropped
/// when one fires; otherwise they look at each finished wave.
async fn sample_adaptive(
    spec: &RunSpec<'_>,
    source: &dyn CandidateSource,
    settings: AdaptiveSettings,
) -> Result<(Samples, AdaptiveReport, Option<ScoreOutput>), Error> {
    let mut run = AdaptiveRun::new(settings, spec.plan.n);
    let scorer = &spec.plan.scorer.scorer;
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
        if source.streams_each() {
            let mut arrivals = source.wave_each(size, offset);
            while let Some(arrival) = arrivals.next().await {
                match arrival {
                    Arrival::Deadline => {
                        all.deadline_hit = true;
                        reason = StopReason::Deadline;
                        break 'waves;
                    }
                    Arrival::Call(Err(e)) => {
                        all.failures.push(e.message_with_causes());
                        first_error.get_or_insert(e);
                    }
                    Arrival::Call(Ok(more)) => {
                        let from = all.candidates.len();
                        all.extend(more);
                        note_answers(spec, &mut run, &all, from);
                        if run.needs_scores() && per_arrival {
                            score_for_stop(spec, &all, from, &mut run, &mut early).await;
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
            match source.wave(size, offset).await {
                Ok(more) => {
                    let from = all.candidates.len();
                    all.extend(more);
                    note_answers(spec, &mut run, &all, from);
                }
                Err(e) => {
                    all.failures.push(e.message_with_causes());
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
            score_for_stop(spec, &all, from, &mut run, &mut early).await;
            scored = all.candidates.len();
        }
        if let Some(r) = run.check() {
            reason = r;
            break;
        }
        if spec.deadline.is_some_and(|d| Instant::now() >= d) {
            all.deadline_hit = true;
            reason = StopReason::Deadline;
            break;
        }
    }
    if all.candidates.is_empty() {
        return Err(first_error.unwrap_or_else(|| {
            Error::timeout(Party::Upstream, "the upstream", "no candidate arrived before the request deadline")
        }));
    }
    if all.strategy.is_empty() {
        all.strategy = "parallel";
    }
    let early = early.filter(|e| run.needs_scores() && e.scores.len() == all.candidates.len());
    Ok((all, AdaptiveReport { n_sampled: run.requested(), stop_reason: reason, waves: run.waves() }, early))
}

/// Candidates `from..` of `samples` as scorers get them: each one's default rendering and its
/// whole message, in candidate order.
fn rendered(samples: &Samples, from: usize) -> (Vec<String>, Vec<CandidateMessage>) {
    samples.candidates.get(from..).unwrap_or_default().iter().map(|c| (c.text.clone(), c.message.clone())).unzip()
}

/// Tells the run the answers ([`answer_key`]) of the candidates that arrived from `from` on;
/// under `require_valid` an invalid candidate states none (it cannot be the answer).
fn note_answers(spec: &RunSpec<'_>, run: &mut AdaptiveRun, samples: &Samples, from: usize) {
    let arrived = &samples.candidates[from..];
    if !run.needs_answers() {
        arrived.iter().for_each(|_| run.arrived(None));
        return;
    }
    let valid = spec.validity(arrived.iter().map(|c| &c.message)).filter(|_| spec.plan.require_valid);
    for (i, c) in arrived.iter().enumerate() {
        let counts = valid.as_ref().is_none_or(|v| v[i]);
        run.arrived(if counts { answer_key(&c.text, &c.message) } else { None });
    }
}
