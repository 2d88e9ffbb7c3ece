//! Scorer kind `weighted_vote`: weighted self-consistency. Candidates are grouped by their
//! answer (the consensus scorer's [`super::answer_key`]: the normalised final answer, or the set
//! of canonical tool calls of a message that calls tools); each candidate's weight is its
//! member scorer's reward after a per-request softmax with `temperature` (so raw RM logits of any
//! scale work), a group's weight is the sum of its candidates' weights, and each candidate scores
//! its group's weight. A candidate without an extractable final answer keeps its own weight.
//! Weighted voting beats both plain majority voting and plain best-of-N at equal N on math
//! (Snell et al. 2024; Wu et al. 2024).

use std::collections::HashMap;
use std::sync::Arc;

use super::{BoxFuture, ScoreInput, ScoreOutput, Scorer, answer_key};
use crate::error::Error;

/// Weighted majority vote over final answers.
pub struct WeightedVoteScorer {
    /// The scorer's configured name.
    pub name: String,
    /// The scorer whose rewards weigh the votes.
    pub member: Arc<dyn Scorer>,
    /// Softmax temperature of the member's rewards (> 0).
    pub temperature: f64,
}

/// Softmax of `scores / temperature`, computed stably.
pub fn softmax(scores: &[f64], temperature: f64) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores.iter().map(|s| ((s - max) / temperature).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

/// Each candidate's score: its answer group's summed weight, or its own weight without an answer.
pub fn weighted_votes(answers: &[Option<String>], weights: &[f64]) -> Vec<f64> {
    let mut groups: HashMap<&str, f64> = HashMap::new();
    for (a, w) in answers.iter().zip(weights) {
        if let Some(a) = a {
            *groups.entry(a.as_str()).or_default() += w;
        }
    }
    answers.iter().zip(weights).map(|(a, w)| a.as_ref().map_or(*w, |a| groups[a.as_str()])).collect()
}

impl Scorer for WeightedVoteScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        Box::pin(async move {
            let member = self.member.score(input).await?;
            let weights = softmax(&member.scores, self.temperature);
            let messages = input.candidate_messages();
            let answers: Vec<Option<String>> =
                input.candidates.iter().zip(&messages).map(|(c, m)| answer_key(c, m)).collect();
            Ok(ScoreOutput { scores: weighted_votes(&answers, &weights), usage: member.usage })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavier_answer_beats_a_more_frequent_one() {
        let answers: Vec<Option<String>> =
            ["5", "5", "5", "7", "x"].iter().map(|a| (*a != "x").then(|| a.to_string())).collect();
        // Three votes for 5 with small rewards, one for 7 with a large one.
        let weights = softmax(&[0.0, 0.0, 0.0, 3.0, 1.0], 1.0);
        let votes = weighted_votes(&answers, &weights);
        assert!(votes[3] > votes[0], "{votes:?}");
        assert_eq!(votes[0], votes[1]);
        assert!((votes[4] - weights[4]).abs() < 1e-12, "no answer: its own weight");
        // A high temperature flattens the weights: the majority wins again.
        let flat = weighted_votes(&answers, &softmax(&[0.0, 0.0, 0.0, 3.0, 1.0], 100.0));
        assert!(flat[0] > flat[3]);
        let s = softmax(&[1000.0, 999.0], 1.0);
        assert!((s[0] + s[1] - 1.0).abs() < 1e-12 && s[0] > s[1], "stable with large logits");
    }

    /// A member that scores the candidates as given.
    struct Given(Vec<f64>);

    impl Scorer for Given {
        fn name(&self) -> &str {
            "given"
        }
        fn score<'a>(&'a self, _input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
            let scores = self.0.clone();
            Box::pin(std::future::ready(Ok(ScoreOutput { scores, usage: super::super::ScorerUsage::default() })))
        }
    }

    #[tokio::test]
    async fn tool_calls_vote_by_their_canonical_form() {
        use crate::score::{CandidateMessage, Message};
        let call = |arguments: &str| {
            CandidateMessage::from_message(&serde_json::json!({"content": null, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}))
        };
        let messages = vec![call(r#"{"city":"Paris"}"#), call(r#"{ "city" : "Paris" }"#), call(r#"{"city":"Lyon"}"#)];
        let texts = vec![String::new(); 3];
        let conversation = [Message { role: "user".into(), content: "Weather in Paris?".into() }];
        // Lyon has the best single reward; the two Paris calls together outweigh it.
        let scorer =
            WeightedVoteScorer { name: "w".into(), member: Arc::new(Given(vec![0.0, 0.0, 0.5])), temperature: 1.0 };
        let input = ScoreInput {
            conversation: &conversation,
            candidates: &texts,
            response_format: None,
            messages: &messages,
            tools: None,
        };
        let scores = scorer.score(input).await.unwrap().scores;
        assert!(scores[0] > scores[2] && scores[0] == scores[1], "{scores:?}");
    }
}
