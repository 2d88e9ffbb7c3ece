//! The request engine: sample, score, rank.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::adaptive::StopReason;
use super::driver::{CandidateSource, FuserFailure, RunSpec, drive};
use super::{
    Api, Arrival, BoxFuture, ClientBody, DomainClassifier, Forwarded, ForwardedStream, Fused, Fuser, Plan, Policy,
    RuleClassifier, Sampler, Samples, Steering, UpstreamBody, Wave,
};
use crate::error::Error;
use crate::score::{Message, ResponseFormat, Scorer, ScorerUsage, Tools, last_user_message};

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
    /// Why the scorer failed, when the policy answered without scores (as the client may read
    /// it: the scorer by name and the causes, no endpoint).
    pub scorer_error: Option<String>,
    /// Where the time went.
    pub timings: Timings,
    /// What adaptive sampling did, when it was on.
    pub adaptive: Option<AdaptiveReport>,
    /// The fused answer, when selection is `fuse` and the fuser answered.
    pub fused: Option<Fused>,
    /// Why fusing failed, when it was asked for: the best candidate is the answer then (as the
    /// client may read it: no endpoint).
    pub fuse_failed: Option<String>,
    /// The seed of the run's RNG (the client's, or one drawn for the request), recorded so a
    /// replay draws the same pick.
    pub seed: u64,
    /// Whether each candidate is valid (in candidate order), when the request has `tools` or a
    /// `response_format` ([`crate::score::validity`]).
    pub valid: Option<Vec<bool>>,
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

    /// Candidates that passed validation, when the request asked for any ([`Outcome::valid`]).
    pub fn n_valid(&self) -> Option<usize> {
        self.valid.as_ref().map(|v| v.iter().filter(|&&b| b).count())
    }

    /// The winning candidate's score, if candidates were scored.
    pub fn chosen_score(&self) -> Option<f64> {
        self.scores.get(self.chosen()).copied()
    }

    /// Candidates requested from the upstream (cancelled ones included) by a run planned for
    /// `planned`: what adaptive sampling started, else the whole plan.
    pub fn n_sampled(&self, planned: u32) -> u32 {
        self.adaptive.map_or(planned, |a| a.n_sampled)
    }

    /// Why sampling stopped: adaptive sampling's reason, else `deadline` or `max_n`, as the
    /// recorder writes it and replay reports it.
    pub fn stop_reason(&self) -> &'static str {
        self.adaptive.map_or(if self.samples.deadline_hit { "deadline" } else { "max_n" }, |a| a.stop_reason.label())
    }
}

/// What a best-of-N run needs of the client's request, prepared: the same whether the answer is
/// streamed or not.
#[derive(Clone, Copy)]
pub struct RunRequest<'a> {
    /// Which API the request speaks.
    pub api: Api,
    /// The client's body.
    pub body: &'a ClientBody,
    /// The client's own bytes, when they can stand for the body (see [`Engine::forward`]).
    pub verbatim: Option<&'a Bytes>,
    /// The conversation as scorers see it.
    pub conversation: &'a [Message],
    /// The client's `seed`, if any.
    pub seed: Option<i64>,
    /// The body's `response_format`, prepared once for the request.
    pub response_format: Option<&'a ResponseFormat>,
    /// The body's `tools` and `tool_choice`, prepared once for the request.
    pub tools: Option<&'a Tools>,
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
    ) -> Result<ForwardedStream, Error> {
        self.sampler.forward_stream(api, upstream_json(plan, body, verbatim)?).await
    }

    /// Samples `plan.n` candidates, scores them with `plan.scorer`, and ranks them, through the
    /// one driver ([`super::driver::drive`]). `verbatim` as for [`Engine::forward`]: the calls
    /// keep the client's spelling of every field. `response_format` is the body's, prepared once
    /// for the request ([`ClientBody::response_format`]: the caller answers a schema that does
    /// not compile before it starts a run). `on_first_answer`, when given, is told the envelope
    /// of the first upstream answer as soon as it is in (see [`OnFirstAnswer`]).
    pub async fn run(
        &self,
        request: RunRequest<'_>,
        plan: &Plan,
        on_first_answer: Option<OnFirstAnswer<'_>>,
    ) -> Result<Outcome, Error> {
        let RunRequest { api, body, verbatim, conversation, seed, response_format, tools } = request;
        let deadline = plan.deadline.map(|d| Instant::now() + d);
        let (fields, text) = upstream_fields(plan, body, verbatim)?;
        let upstream_body = UpstreamBody { fields: &fields, text };
        let source = LiveSource {
            sampler: &*self.sampler,
            api,
            body: upstream_body,
            seed,
            deadline,
            on_first_answer,
            told: std::sync::atomic::AtomicBool::new(false),
        };
        let spec = RunSpec {
            plan,
            conversation,
            response_format,
            tools,
            deadline,
            min_candidates: self.policy.min_candidates,
            on_scorer_failure: self.policy.on_scorer_failure,
            // A request without a seed still gets one, drawn here and recorded with the run.
            seed: seed.map_or_else(|| fastrand::u64(..), |s| s as u64),
            fuser: self.fuser.as_deref(),
            fuser_failure: FuserFailure::AnswerBest,
        };
        drive(&spec, &source).await
    }
}

/// Told, once and as soon as it is in, the envelope of a run's first upstream answer: its
/// top-level fields (`id`, `created`, `model`, ...) without `choices` and `usage`. It is the
/// envelope the run's [`Samples::envelope`] keeps, the first non-empty one in the order the
/// driver takes answers in, so what it reports (the `model`, above all) is what the finished
/// answer reports. A streamed answer's first chunk waits for it.
pub type OnFirstAnswer<'a> = &'a (dyn Fn(&Map<String, Value>) + Send + Sync);

/// The upstream as a [`CandidateSource`]: a wave is one `sample` call (hedged, cut off at the
/// deadline), or single-candidate calls as they finish.
struct LiveSource<'a> {
    sampler: &'a dyn Sampler,
    api: Api,
    body: UpstreamBody<'a>,
    seed: Option<i64>,
    deadline: Option<Instant>,
    on_first_answer: Option<OnFirstAnswer<'a>>,
    /// Whether `on_first_answer` has been told.
    told: std::sync::atomic::AtomicBool,
}

impl LiveSource<'_> {
    /// Tells `on_first_answer` the envelope of `samples`, when it is the first non-empty one.
    fn answered(&self, samples: &Samples) {
        use std::sync::atomic::Ordering;
        if let Some(tell) = self.on_first_answer
            && !samples.envelope.is_empty()
            && !self.told.swap(true, Ordering::Relaxed)
        {
            tell(&samples.envelope);
        }
    }
}

impl CandidateSource for LiveSource<'_> {
    fn streams_each(&self) -> bool {
        self.sampler.streams_each()
    }

    fn wave(&self, size: u32, offset: u32) -> BoxFuture<'_, Result<Samples, Error>> {
        let wave = self.sampler.sample(self.api, self.body, size, offset, self.seed, self.deadline);
        if self.on_first_answer.is_none() {
            return wave;
        }
        Box::pin(async move {
            let samples = wave.await?;
            self.answered(&samples);
            Ok(samples)
        })
    }

    fn wave_each(&self, size: u32, offset: u32) -> Wave<'_> {
        let wave = self.sampler.sample_each(self.api, self.body, size, offset, self.seed, self.deadline);
        if self.on_first_answer.is_none() {
            return wave;
        }
        wave.inspect(move |arrival| {
            if let Arrival::Call(Ok(samples)) = arrival {
                self.answered(samples);
            }
        })
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
