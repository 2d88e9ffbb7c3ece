//! The request engine: sample, score, rank.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Api, Plan, Policy, Sampler, Samples, Steering, rank};
use crate::backend::ByteStream;
use crate::error::Error;
use crate::score::{Message, ScoreInput, Scorer, ScorerUsage};

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
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Engine {
    /// An engine over a sampler, the named scorers and a validated policy.
    pub fn new(sampler: Arc<dyn Sampler>, scorers: BTreeMap<String, Arc<dyn Scorer>>, policy: Policy) -> Self {
        Engine {
            sampler,
            scorers,
            policy,
        }
    }

    /// Resolves N, scorer and domain for a request.
    pub fn plan(&self, steering: &Steering, client_n: u32) -> Result<Plan, Error> {
        self.policy
            .plan(steering, client_n, |name| self.scorers.contains_key(name))
    }

    /// Forwards a request unchanged (N = 1 without extras).
    pub async fn forward(&self, api: Api, body: &Map<String, Value>) -> Result<Value, Error> {
        self.sampler.forward(api, body).await
    }

    /// Forwards a streaming request unchanged (N = 1): bytes reach the caller as they arrive.
    pub async fn forward_stream(&self, api: Api, body: &Map<String, Value>) -> Result<ByteStream, Error> {
        self.sampler.forward_stream(api, body).await
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
        let samples = self.sampler.sample(api, body, plan.n, seed).await?;
        let sampling_ms = ms_since(started);

        let scoring_started = Instant::now();
        let (scores, scorer_usage) = if samples.candidates.len() > 1 {
            let scorer = self
                .scorers
                .get(&plan.scorer)
                .ok_or_else(|| Error::Internal(format!("scorer '{}' vanished after planning", plan.scorer)))?;
            let texts: Vec<String> = samples.candidates.iter().map(|c| c.text.clone()).collect();
            let out = scorer
                .score(ScoreInput {
                    conversation,
                    candidates: &texts,
                })
                .await?;
            if out.scores.len() != texts.len() {
                return Err(Error::BadGateway {
                    backend: format!("scorer {}", plan.scorer),
                    message: format!("{} scores for {} candidates", out.scores.len(), texts.len()),
                });
            }
            (out.scores, out.usage)
        } else {
            (Vec::new(), ScorerUsage::default())
        };
        let scoring_ms = ms_since(scoring_started);
        let ranking = if scores.is_empty() {
            (0..samples.candidates.len()).collect()
        } else {
            rank(&scores)
        };
        Ok(Outcome {
            samples,
            scores,
            ranking,
            scorer_usage,
            timings: Timings {
                sampling_ms,
                scoring_ms,
                total_ms: ms_since(started),
            },
        })
    }
}
