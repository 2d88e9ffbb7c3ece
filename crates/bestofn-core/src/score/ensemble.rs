//! Scorer kind `ensemble`: combines scorers lexicographically (the first decides, later ones
//! break its ties; e.g. a verifier first, the RM second) or by a weighted sum of per-request
//! z-scores.

use std::sync::Arc;

use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};

use super::{BoxFuture, ScoreInput, ScoreOutput, Scorer, ScorerUsage};
use crate::error::Error;

/// How member scores combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Compare by the first member, then the next on ties, ...
    Lexicographic,
    /// Sum of weight x z-score within the request.
    Weighted,
}

/// Several scorers as one.
pub struct EnsembleScorer {
    /// The scorer's configured name.
    pub name: String,
    /// The members, in priority order.
    pub members: Vec<Arc<dyn Scorer>>,
    /// How they combine.
    pub combine: Combine,
    /// One weight per member (weighted mode).
    pub weights: Vec<f64>,
}

/// Per-request z-scores; all zeros when the scores do not vary.
pub fn z_scores(scores: &[f64]) -> Vec<f64> {
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
    scores.iter().map(|s| if sd > 0.0 { (s - mean) / sd } else { 0.0 }).collect()
}

/// Lexicographic order as one score: candidates sorted by the member scores in order; equal
/// tuples share a score, better tuples get higher ones.
pub fn lexicographic(columns: &[Vec<f64>], n: usize) -> Vec<f64> {
    let tuple = |i: usize| columns.iter().map(|c| c[i]).collect::<Vec<f64>>();
    let mut order: Vec<usize> = (0..n).collect();
    let cmp = |a: &Vec<f64>, b: &Vec<f64>| {
        a.iter().zip(b).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal)
    };
    order.sort_by(|&a, &b| cmp(&tuple(a), &tuple(b)));
    let mut scores = vec![0.0; n];
    let mut level = 0.0;
    for w in 0..order.len() {
        if w > 0 && cmp(&tuple(order[w - 1]), &tuple(order[w])).is_ne() {
            level += 1.0;
        }
        scores[order[w]] = level;
    }
    scores
}

impl Scorer for EnsembleScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        Box::pin(async move {
            let outputs = try_join_all(self.members.iter().map(|m| m.score(input))).await?;
            let n = input.candidates.len();
            let columns: Vec<Vec<f64>> = outputs.iter().map(|o| o.scores.clone()).collect();
            let scores = match self.combine {
                Combine::Lexicographic => lexicographic(&columns, n),
                Combine::Weighted => {
                    let mut total = vec![0.0; n];
                    for (column, w) in columns.iter().zip(&self.weights) {
                        for (t, z) in total.iter_mut().zip(z_scores(column)) {
                            *t += w * z;
                        }
                    }
                    total
                }
            };
            let usage = ScorerUsage {
                calls: outputs.iter().map(|o| o.usage.calls).sum(),
                prompt_tokens: outputs.iter().map(|o| o.usage.prompt_tokens).sum(),
            };
            Ok(ScoreOutput { scores, usage })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicographic_breaks_ties_with_the_next_member() {
        let verify = vec![1.0, 0.5, 1.0, 1.0];
        let rm = vec![0.2, 9.0, 0.7, 0.7];
        let s = lexicographic(&[verify, rm], 4);
        assert_eq!(s, vec![1.0, 0.0, 2.0, 2.0]);
        let first_best = (0..s.len()).fold(0, |b, i| if s[i] > s[b] { i } else { b });
        assert_eq!(first_best, 2, "verified first, then the RM, ties to the lower index");
        assert_eq!(z_scores(&[3.0, 3.0]), vec![0.0, 0.0]);
    }
}
