//! Scorer kind `judge`: an OpenAI-compatible LLM rates each candidate 1-10 with RewardBench 2's
//! ratings prompt (concurrent calls, bounded), or picks the best of all candidates in one call
//! (ranking mode, candidates shuffled by a seeded RNG against position bias).

use futures_util::StreamExt;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ChatCall;
use crate::backend::{Backend, TransportConfig};
use crate::error::{Error, Party};
use crate::score::{BoxFuture, ScoreInput, ScoreOutput, Scorer, ScorerUsage, last_user_message};

/// RewardBench 2's `ratings_prompt` (allenai/reward-bench `scripts/run_generative_v2.py`).
pub const RATINGS_PROMPT: &str = "\n### Task Description\nPlease act as an impartial judge and evaluate the quality of the response provided by an\nAI assistant to the user query displayed below.\n\nNotes:\n1- Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response.\n2- Begin your evaluation by providing a short explanation.\n3- Be as objective as possible. After providing your explanation, please rate the response on a scale of 1 to 10. For your rating, only give a number between 1 and 10 (inclusive), do not use any markdown, and do not put any text after your final rating.\n\n[Query]\n{prompt}\n\n[Response]\n{completion}\n\n[Your judgement]";

const RANKING_SYSTEM: &str = "Please act as an impartial judge and evaluate the responses provided by AI assistants to the \
user question displayed below. Choose the assistant that follows the user's instructions and answers the user's question \
best. Avoid any position biases and ensure that the order in which the responses were presented does not influence your \
decision. Do not allow the length of the responses to influence your evaluation. Be as objective as possible. After \
providing your explanation, output your final verdict by strictly following this format: \"[[X]]\" where X is the letter \
of the best assistant.";

/// Rate each candidate, or rank them all in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeMode {
    /// One call per candidate, a 1-10 rating each.
    Rating,
    /// One call for all candidates; the pick scores 1, the rest 0.
    Ranking,
    /// A tournament of pairwise comparisons, each asked twice with the order swapped:
    /// round-robin for up to 4 candidates, a knockout beyond. Scores: wins, normalised.
    Pairwise,
}

/// The pairwise judging instructions (MT-Bench's pairwise judge prompt, with a tie option).
pub const PAIRWISE_SYSTEM: &str = "Please act as an impartial judge and evaluate the responses provided by two AI \
assistants to the user question displayed below. Choose the assistant that follows the user's instructions and answers \
the user's question better. Avoid any position biases and ensure that the order in which the responses were presented \
does not influence your decision. Do not allow the length of the responses to influence your evaluation. Be as \
objective as possible. After providing your explanation, output your final verdict by strictly following this format: \
\"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.";

/// One comparison's result, from the first candidate's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first candidate is better.
    First,
    /// The second candidate is better.
    Second,
    /// A tie, or the two orders disagree.
    Tie,
}

/// The verdict of a pair asked in both orders: `ab` with the first candidate shown as A, `ba`
/// with it shown as B. A pair that disagrees with itself is a tie.
pub fn both_orders(ab: Verdict, ba: Verdict) -> Verdict {
    match (ab, ba) {
        (Verdict::First, Verdict::Second) => Verdict::First,
        (Verdict::Second, Verdict::First) => Verdict::Second,
        _ => Verdict::Tie,
    }
}

/// Records a match: the winner by verdict; a tie to the candidate with more wins so far, then
/// to a seeded coin. Returns the winner.
fn decide(a: usize, b: usize, v: Verdict, wins: &mut [f64], rng: &mut fastrand::Rng) -> usize {
    let winner = match v {
        Verdict::First => a,
        Verdict::Second => b,
        Verdict::Tie if wins[a] > wins[b] => a,
        Verdict::Tie if wins[b] > wins[a] => b,
        Verdict::Tie => {
            if rng.bool() {
                a
            } else {
                b
            }
        }
    };
    wins[winner] += 1.0;
    winner
}

/// The matches of a tournament over `n` candidates: every pair for n <= 4, else the first
/// round of a knockout (later rounds depend on the winners).
pub fn first_round(n: usize) -> Vec<(usize, usize)> {
    if n <= 4 {
        (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect()
    } else {
        (0..n / 2).map(|i| (2 * i, 2 * i + 1)).collect()
    }
}

/// `[scorers.NAME]` with `kind = "judge"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgeConfig {
    /// Base URLs of the judge (ending in `/v1`).
    pub base_urls: Vec<String>,
    /// The `model` sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Rating (1-10 per candidate) or ranking (one pick).
    pub mode: JudgeMode,
    /// Rating calls in flight at once.
    pub concurrency: usize,
    /// Seed of the ranking shuffle.
    pub seed: u64,
    /// `max_tokens` of a judge call.
    pub max_tokens: u32,
    /// Score the expected rating from `top_logprobs`.
    pub logprobs: bool,
    /// Credentials, time limit, retries, ejection.
    #[serde(flatten)]
    pub transport: TransportConfig,
}

/// An LLM judge.
#[derive(Debug)]
pub struct JudgeScorer {
    /// The scorer's configured name.
    pub name: String,
    /// Its validated settings.
    pub config: JudgeConfig,
    /// Endpoints are base URLs ending in `/v1`.
    pub backend: Backend,
}

/// The trailing rating 1..10 of a judgement, or -1 when there is none (the reference's rule).
pub fn parse_rating(text: &str) -> f64 {
    Regex::new(r"\b([1-9]|10)\b\s*$")
        .ok()
        .and_then(|r| r.captures(text.trim()))
        .and_then(|c| c.get(1))
        .and_then(|m| m.as_str().parse::<f64>().ok())
        .unwrap_or(-1.0)
}

/// The expected rating over the digit probabilities at the last rating token, when the judge
/// returned `top_logprobs`.
pub fn expected_rating(logprobs: &Value) -> Option<f64> {
    let tokens = logprobs.get("content")?.as_array()?;
    let rating = |t: &str| t.trim().parse::<u32>().ok().filter(|v| (1..=10).contains(v));
    let at = tokens.iter().rposition(|t| t.get("token").and_then(Value::as_str).and_then(rating).is_some())?;
    let (mut mass, mut total) = (0.0, 0.0);
    for alt in tokens[at].get("top_logprobs")?.as_array()? {
        if let (Some(v), Some(lp)) =
            (alt.get("token").and_then(Value::as_str).and_then(rating), alt.get("logprob").and_then(Value::as_f64))
        {
            let p = lp.exp();
            mass += p;
            total += p * f64::from(v);
        }
    }
    (mass > 0.0).then(|| total / mass)
}

impl JudgeScorer {
    fn call<'a>(&'a self, messages: &'a [(&'a str, &'a str)], logprobs: bool) -> ChatCall<'a> {
        ChatCall {
            model: self.config.model.as_deref(),
            messages,
            max_tokens: self.config.max_tokens,
            temperature: 0.0,
            logprobs,
        }
    }

    async fn rate(&self, prompt: &str, candidate: &str) -> Result<(f64, Option<u64>), Error> {
        let content = RATINGS_PROMPT.replace("{prompt}", prompt).replace("{completion}", candidate);
        let messages = [("user", content.as_str())];
        let reply = self
            .call(&messages, self.config.logprobs)
            .send(&self.backend)
            .await
            .map_err(Error::into_gateway_failure)?;
        let expected = reply.logprobs.as_ref().and_then(expected_rating);
        Ok((expected.unwrap_or_else(|| parse_rating(&reply.text)), reply.total_tokens))
    }

    async fn rank(&self, prompt: &str, candidates: &[String]) -> Result<ScoreOutput, Error> {
        const LETTERS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        if candidates.len() > LETTERS.len() {
            return Err(Error::bad_gateway(
                Party::Scorer,
                format!("scorer {}", self.name),
                format!("ranking mode labels at most 26 candidates, got {}", candidates.len()),
            ));
        }
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        fastrand::Rng::with_seed(self.config.seed).shuffle(&mut order);
        let mut user = format!("[User Question]\n{prompt}\n\n");
        for (slot, &i) in order.iter().enumerate() {
            let l = LETTERS[slot] as char;
            user.push_str(&format!(
                "[The Start of Assistant {l}'s Answer]\n{}\n[The End of Assistant {l}'s Answer]\n\n",
                candidates[i]
            ));
        }
        let messages = [("system", RANKING_SYSTEM), ("user", user.as_str())];
        let reply = self.call(&messages, false).send(&self.backend).await.map_err(Error::into_gateway_failure)?;
        let text = reply.text.as_str();
        let picked = (0..order.len()).find(|&slot| text.contains(&format!("[[{}]]", LETTERS[slot] as char)));
        let mut scores = vec![0.0; candidates.len()];
        if let Some(slot) = picked {
            scores[order[slot]] = 1.0;
        }
        let usage = ScorerUsage { calls: 1, prompt_tokens: reply.prompt_tokens };
        Ok(ScoreOutput { scores, usage })
    }
}

impl JudgeScorer {
    /// One order of one comparison: `a` shown as assistant A.
    async fn compare_once(&self, prompt: &str, a: &str, b: &str) -> Result<(Verdict, Option<u64>), Error> {
        let user = format!(
            "[User Question]\n{prompt}\n\n[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n\
             [The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
        );
        let messages = [("system", PAIRWISE_SYSTEM), ("user", user.as_str())];
        let reply = self.call(&messages, false).send(&self.backend).await.map_err(Error::into_gateway_failure)?;
        let verdict = match (reply.text.rfind("[[A]]"), reply.text.rfind("[[B]]")) {
            (Some(x), Some(y)) if x > y => Verdict::First,
            (Some(_), Some(_)) => Verdict::Second,
            (Some(_), None) => Verdict::First,
            (None, Some(_)) => Verdict::Second,
            (None, None) => Verdict::Tie,
        };
        Ok((verdict, reply.prompt_tokens))
    }

    /// Both orders of every match in `matches`, `concurrency` calls at a time.
    async fn play(
        &self,
        prompt: &str,
        candidates: &[String],
        matches: &[(usize, usize)],
        usage: &mut ScorerUsage,
    ) -> Result<Vec<Verdict>, Error> {
        let mut calls = Vec::with_capacity(matches.len() * 2);
        for &(a, b) in matches {
            calls.push(self.compare_once(prompt, &candidates[a], &candidates[b]));
            calls.push(self.compare_once(prompt, &candidates[b], &candidates[a]));
        }
        let results: Vec<Result<(Verdict, Option<u64>), Error>> =
            futures_util::stream::iter(calls).buffered(self.config.concurrency.max(1)).collect().await;
        let mut verdicts = Vec::with_capacity(matches.len());
        for pair in results.chunks(2) {
            let (ab, t1) = pair[0].as_ref().map_err(Clone::clone)?;
            let (ba, t2) = pair[1].as_ref().map_err(Clone::clone)?;
            usage.calls += 2;
            usage.prompt_tokens = usage.prompt_tokens.zip(*t1).zip(*t2).map(|((u, a), b)| u + a + b);
            // Raw verdicts: in the swapped call the first candidate was shown as B.
            verdicts.push(both_orders(*ab, *ba));
        }
        Ok(verdicts)
    }

    /// The tournament: round-robin for up to 4 candidates, else a knockout. A tie (or a pair
    /// that disagrees with itself) goes to the candidate with more wins so far, then to a seeded
    /// coin. Scores are wins over the most wins possible.
    async fn tournament(&self, prompt: &str, candidates: &[String]) -> Result<ScoreOutput, Error> {
        let n = candidates.len();
        let mut wins = vec![0.0f64; n];
        let mut usage = ScorerUsage { calls: 0, prompt_tokens: Some(0) };
        if n < 2 {
            return Ok(ScoreOutput { scores: wins, usage });
        }
        let mut rng = fastrand::Rng::with_seed(self.config.seed);
        let rounds;
        if n <= 4 {
            let matches = first_round(n);
            let verdicts = self.play(prompt, candidates, &matches, &mut usage).await?;
            for (&(a, b), v) in matches.iter().zip(verdicts) {
                decide(a, b, v, &mut wins, &mut rng);
            }
            rounds = (n - 1) as f64;
        } else {
            let mut alive: Vec<usize> = (0..n).collect();
            let mut played = 0.0;
            while alive.len() > 1 {
                let matches: Vec<(usize, usize)> =
                    alive.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0], c[1])).collect();
                let bye = (alive.len() % 2 == 1).then(|| alive[alive.len() - 1]);
                let verdicts = self.play(prompt, candidates, &matches, &mut usage).await?;
                alive = matches.iter().zip(verdicts).map(|(&(a, b), v)| decide(a, b, v, &mut wins, &mut rng)).collect();
                alive.extend(bye);
                played += 1.0;
            }
            rounds = played;
        }
        Ok(ScoreOutput { scores: wins.iter().map(|w| w / rounds.max(1.0)).collect(), usage })
    }
}

impl Scorer for JudgeScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn pointwise(&self) -> bool {
        self.config.mode == JudgeMode::Rating
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        Box::pin(async move {
            let span = crate::telemetry::scoring_span(&self.name, "judge", input.candidates.len());
            crate::telemetry::in_span(span, self.score_all(input)).await
        })
    }
}

impl JudgeScorer {
    /// Every candidate's score, by the configured mode; each judge call is a `chat` span.
    async fn score_all(&self, input: ScoreInput<'_>) -> Result<ScoreOutput, Error> {
        let prompt = last_user_message(input.conversation);
        if self.config.mode == JudgeMode::Ranking {
            return self.rank(prompt, input.candidates).await;
        }
        if self.config.mode == JudgeMode::Pairwise {
            return self.tournament(prompt, input.candidates).await;
        }
        let calls: Vec<_> = input.candidates.iter().map(|c| self.rate(prompt, c.as_str())).collect();
        let results: Vec<Result<(f64, Option<u64>), Error>> =
            futures_util::stream::iter(calls).buffered(self.config.concurrency.max(1)).collect().await;
        let mut scores = Vec::with_capacity(results.len());
        let mut tokens = Some(0u64);
        for r in results {
            let (s, t) = r?;
            scores.push(s);
            tokens = tokens.zip(t).map(|(a, b)| a + b);
        }
        Ok(ScoreOutput { usage: ScorerUsage { calls: scores.len() as u32, prompt_tokens: tokens }, scores })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ratings_parse_like_the_reference() {
        assert_eq!(parse_rating("Good answer. 8"), 8.0);
        assert_eq!(parse_rating("Rating: 10\n"), 10.0);
        assert_eq!(parse_rating("I give it 7/10"), 10.0);
        assert_eq!(parse_rating("8 out of ten"), -1.0);
        assert_eq!(parse_rating(""), -1.0);
    }

    #[test]
    fn expected_rating_from_top_logprobs() {
        let lp = json!({"content": [
            {"token": "Score", "logprob": -0.1, "top_logprobs": []},
            {"token": "8", "logprob": -0.5, "top_logprobs": [
                {"token": "8", "logprob": (0.6f64).ln()}, {"token": "7", "logprob": (0.3f64).ln()}, {"token": "x", "logprob": (0.1f64).ln()}
            ]}
        ]});
        let e = expected_rating(&lp).unwrap();
        assert!((e - (0.6 * 8.0 + 0.3 * 7.0) / 0.9).abs() < 1e-9);
        assert!(expected_rating(&json!({"content": []})).is_none());
    }
}
