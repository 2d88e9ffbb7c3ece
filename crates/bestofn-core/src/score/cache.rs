//! A bounded, expiring cache of pointwise scores (moka), keyed by scorer, conversation (with the
//! request's `response_format` and `tools`) and candidate (its text and its tool calls as sent).
//! Identical candidates within a request are scored once.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, CandidateMessage, ScoreInput, ScoreOutput, Scorer, ScorerUsage};
use crate::error::Error;

/// Wraps a pointwise scorer with a score cache.
pub struct CachedScorer {
    inner: Arc<dyn Scorer>,
    /// (hash of scorer, conversation, response_format, tools and candidate) → (the candidate, its
    /// score). The candidate itself is kept so a hash collision can never return another's score.
    cache: moka::future::Cache<u64, Arc<(String, u64, f64)>>,
    hits: prometheus::IntCounter,
    misses: prometheus::IntCounter,
}

fn conversation_hash(input: &ScoreInput<'_>, salt: u64) -> u64 {
    let mut h = DefaultHasher::new();
    salt.hash(&mut h);
    for m in input.conversation {
        m.role.hash(&mut h);
        m.content.hash(&mut h);
    }
    input.response_format.map(|r| r.value().to_string()).hash(&mut h);
    input.tools.map(|t| (t.value().to_string(), t.choice_value().map(ToString::to_string))).hash(&mut h);
    h.finish()
}

/// A candidate as the cache tells candidates apart: its text and, when its message calls tools,
/// each call's name and arguments as sent (a scorer may judge the calls, not only the text).
pub(crate) fn identity(text: &str, message: Option<&CandidateMessage>) -> String {
    let mut id = text.to_string();
    for call in message.map_or(&[][..], |m| &m.tool_calls[..]) {
        id.push('\u{0}');
        id.push_str(&call.name);
        id.push('\u{0}');
        id.push_str(&call.arguments);
    }
    id
}

impl CachedScorer {
    /// A cache of at most `max_entries` scores, each kept for `ttl`.
    pub fn new(
        inner: Arc<dyn Scorer>,
        max_entries: u64,
        ttl: Duration,
        hits: prometheus::IntCounter,
        misses: prometheus::IntCounter,
    ) -> Self {
        let cache = moka::future::Cache::builder().max_capacity(max_entries).time_to_live(ttl).build();
        CachedScorer { inner, cache, hits, misses }
    }

    fn key(&self, conversation: u64, candidate: &str) -> u64 {
        let mut h = DefaultHasher::new();
        self.inner.name().hash(&mut h);
        conversation.hash(&mut h);
        candidate.hash(&mut h);
        h.finish()
    }
}

impl Scorer for CachedScorer {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn pointwise(&self) -> bool {
        true
    }

    fn batched(&self) -> bool {
        self.inner.batched()
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        Box::pin(async move {
            let conversation = conversation_hash(&input, 0);
            // A second, independently salted hash guards the conversation part of the key.
            let check = conversation_hash(&input, 0x9e37_79b9_7f4a_7c15);
            let with_messages = input.messages.len() == input.candidates.len();
            let ids: Vec<String> = input
                .candidates
                .iter()
                .enumerate()
                .map(|(i, c)| identity(c, with_messages.then(|| &input.messages[i])))
                .collect();
            let mut known: HashMap<&str, f64> = HashMap::new();
            // Indices of the first candidate of each identity that is not cached.
            let mut missing: Vec<usize> = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                if known.contains_key(id.as_str()) || missing.iter().any(|&m| ids[m] == *id) {
                    continue;
                }
                match self.cache.get(&self.key(conversation, id)).await {
                    Some(hit) if hit.0 == *id && hit.1 == check => {
                        self.hits.inc();
                        known.insert(id, hit.2);
                    }
                    _ => {
                        self.misses.inc();
                        missing.push(i);
                    }
                }
            }
            let mut usage = ScorerUsage::default();
            if !missing.is_empty() {
                let texts: Vec<String> = missing.iter().map(|&i| input.candidates[i].clone()).collect();
                let messages: Vec<CandidateMessage> = if with_messages {
                    missing.iter().map(|&i| input.messages[i].clone()).collect()
                } else {
                    Vec::new()
                };
                let out = self.inner.score(ScoreInput { candidates: &texts, messages: &messages, ..input }).await?;
                usage = out.usage;
                for (&i, s) in missing.iter().zip(out.scores) {
                    let id = &ids[i];
                    self.cache.insert(self.key(conversation, id), Arc::new((id.clone(), check, s))).await;
                    known.insert(id.as_str(), s);
                }
            }
            let scores = ids.iter().map(|id| known.get(id.as_str()).copied().unwrap_or(f64::NAN)).collect();
            Ok(ScoreOutput { scores, usage })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;
    use crate::score::Message;

    /// Scores a text by its length and counts how many texts it was asked for.
    struct Length(Arc<AtomicUsize>);

    impl Scorer for Length {
        fn name(&self) -> &str {
            "length"
        }
        fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
            self.0.fetch_add(input.candidates.len(), Ordering::SeqCst);
            // Messages, when the caller gave them, stay in step with the candidates asked.
            assert!(input.messages.is_empty() || input.messages.len() == input.candidates.len());
            for (c, m) in input.candidates.iter().zip(input.messages) {
                assert_eq!(c, &m.content, "each message goes with its candidate");
            }
            let scores = input.candidates.iter().map(|c| c.len() as f64).collect();
            Box::pin(std::future::ready(Ok(ScoreOutput { scores, usage: ScorerUsage::default() })))
        }
    }

    fn cached(asked: &Arc<AtomicUsize>) -> CachedScorer {
        let c = || prometheus::IntCounter::new("x", "x").unwrap();
        CachedScorer::new(Arc::new(Length(asked.clone())), 1000, Duration::from_secs(60), c(), c())
    }

    #[tokio::test]
    async fn duplicates_are_scored_once_and_hits_are_reused() {
        let asked = Arc::new(AtomicUsize::new(0));
        let scorer = cached(&asked);
        let convo = [Message { role: "user".into(), content: "q".into() }];
        let cands: Vec<String> = ["aa", "b", "aa", "ccc"].iter().map(|s| s.to_string()).collect();
        let out = scorer.score(ScoreInput::of_texts(&convo, &cands)).await.unwrap();
        assert_eq!(out.scores, vec![2.0, 1.0, 2.0, 3.0]);
        assert_eq!(asked.load(Ordering::SeqCst), 3, "the duplicate is scored once");
        let again = scorer.score(ScoreInput::of_texts(&convo, &cands)).await.unwrap();
        assert_eq!(again.scores, out.scores);
        assert_eq!(asked.load(Ordering::SeqCst), 3, "all hits");
        assert_eq!(scorer.hits.get(), 3);
        let other = [Message { role: "user".into(), content: "another question".into() }];
        scorer.score(ScoreInput::of_texts(&other, &cands)).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 6, "another conversation is another key");
    }

    #[tokio::test]
    async fn candidates_with_the_same_text_and_other_tool_calls_are_told_apart() {
        let asked = Arc::new(AtomicUsize::new(0));
        let scorer = cached(&asked);
        let convo = [Message { role: "user".into(), content: "q".into() }];
        let cands = vec![String::new(), String::new(), String::new()];
        let call = |city: &str| {
            CandidateMessage::from_message(&serde_json::json!({"content": null, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": format!("{{\"city\":\"{city}\"}}")}}]}))
        };
        let messages = vec![call("Paris"), call("Lyon"), call("Paris")];
        let input = ScoreInput {
            conversation: &convo,
            candidates: &cands,
            response_format: None,
            messages: &messages,
            tools: None,
        };
        scorer.score(input).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2, "Paris and Lyon, each once");
        scorer.score(input).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 2, "all hits");
    }

    proptest! {
        #[test]
        fn never_returns_a_score_for_a_different_candidate(texts in prop::collection::vec("[ab]{0,4}", 1..12)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let asked = Arc::new(AtomicUsize::new(0));
            let scorer = cached(&asked);
            let convo = [Message { role: "user".into(), content: "q".into() }];
            for window in texts.windows(3.min(texts.len())) {
                let cands: Vec<String> = window.to_vec();
                let out = runtime.block_on(scorer.score(ScoreInput::of_texts(&convo, &cands))).unwrap();
                for (c, s) in cands.iter().zip(out.scores) {
                    prop_assert_eq!(s, c.len() as f64);
                }
            }
        }
    }
}
