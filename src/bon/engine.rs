//! The request engine: sample, score, rank.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{
    Api, ByteStream, DomainClassifier, Plan, Policy, RuleClassifier, Sampler, Samples, ScorerFailurePolicy, Steering,
    rank, score_candidates,
};
use crate::error::{Error, Party};
use crate::score::{Message, ScoreInput, ScoreOutput, Scorer, ScorerUsage, last_user_message};

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
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Engine {
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
        Engine { sampler, scorers, policy, classifier: Arc::new(RuleClassifier) }
    }

    /// Resolves domain, N and scorer for a request; the classifier runs only when the request
    /// names no domain.
    pub async fn plan(&self, steering: &Steering, client_n: u32, conversation: &[Message]) -> Result<Plan, Error> {
        let classified = match &steering.domain {
            Some(_) => None,
            None => Some(self.classifier.classify(last_user_message(conversation)).await),
        };
        self.policy.plan(steering, client_n, classified.as_deref(), &self.scorers)
    }

    /// Forwards a request as it is, with the domain's defaults filled in (N = 1).
    pub async fn forward(&self, api: Api, plan: &Plan, body: &Map<String, Value>) -> Result<Value, Error> {
        self.sampler.forward(api, &plan.upstream_body(body)).await
    }

    /// Forwards a streaming request (N = 1): bytes reach the caller as they arrive.
    pub async fn forward_stream(&self, api: Api, plan: &Plan, body: &Map<String, Value>) -> Result<ByteStream, Error> {
        self.sampler.forward_stream(api, &plan.upstream_body(body)).await
    }

    /// Samples `plan.n` candidates, scores them with `plan.scorer`, and ranks them.
    pub async fn run(
        &self,
        api: Api,
        body: &Map<String, Value>,
        conversation: &[Message],
        seed: Option<i64>,
        plan: &Plan,
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        let deadline = plan.deadline.map(|d| started + d);
        let samples = self.sampler.sample(api, &plan.upstream_body(body), plan.n, seed, deadline).await?;
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
        let (scores, scorer_usage) = if samples.candidates.len() > 1 {
            match self.score(plan, conversation, &samples, body.get("response_format")).await {
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
            rank(&scores)
        } else {
            let mut order: Vec<usize> = (0..samples.candidates.len()).collect();
            if scorer_error.is_some() && self.policy.on_scorer_failure == ScorerFailurePolicy::Random {
                let pick = fastrand::usize(..order.len());
                order.rotate_left(pick);
            }
            order
        };
        Ok(Outcome {
            samples,
            scores,
            ranking,
            scorer_usage,
            scorer_error,
            timings: Timings { sampling_ms, scoring_ms, total_ms: ms_since(started) },
        })
    }
}
