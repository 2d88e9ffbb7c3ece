//! A bounded, expiring cache of pointwise scores (moka), keyed by scorer, conversation and
//! candidate. Identical candidates within a request are scored once.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use super::{BoxFuture, CandidateMessage, ScoreInput, ScoreOutput, Scorer, ScorerUsage};
use crate::error::Error;

/// Wraps a pointwise scorer with a score cache.
pub struct CachedScorer {
    inner: Arc<dyn Scorer>,
    /// (hash of scorer, conversation, response_format and candidate) → (the candidate, its score).
    /// The candidate itself is kept so a hash collision can never return another's score.
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
    h.finish()
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
            let mut known: HashMap<&str, f64> = HashMap::new();
            let mut missing: Vec<String> = Vec::new();
            // The messages of the missing candidates, in step with them (when given in step).
            let mut missing_messages: Vec<CandidateMessage> = Vec::new();
            let messages_in_step = input.messages.len() == input.candidates.len();
            for (i, c) in input.candidates.iter().enumerate() {
                if known.contains_key(c.as_str()) || missing.iter().any(|m| m == c) {
                    continue;
                }
                match self.cache.get(&self.key(conversation, c)).await {
                    Some(hit) if hit.0 == *c && hit.1 == check => {
                        self.hits.inc();
                        known.insert(c, hit.2);
                    }
                    _ => {
                        self.misses.inc();
                        missing.push(c.clone());
                        if messages_in_step {
                            missing_messages.push(input.messages[i].clone());
                        }
                    }
                }
            }
            let mut usage = ScorerUsage::default();
            if !missing.is_empty() {
                let out =
                    self.inner.score(ScoreInput { candidates: &missing, messages: &missing_messages, ..input }).await?;
                usage = out.usage;
                for (c, s) in missing.iter().zip(out.scores) {
                    self.cache.insert(self.key(conversation, c), Arc::new((c.clone(), check, s))).await;
                    if let Some(original) = input.candidates.iter().find(|x| *x == c) {
                        known.insert(original.as_str(), s);
                    }
                }
            }
            let scores = input.candidates.iter().map(|c| known.get(c.as_str()).copied().unwrap_or(f64::NAN)).collect();
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
            assert_eq!(input.messages.len(), input.candidates.len(), "messages go with their candidates");
            for (c, m) in input.candidates.iter().zip(input.messages) {
                assert_eq!(c, &m.content, "each message goes with its candidate");
            }
            let scores = input.candidates.iter().map(|c| c.len() as f64).collect();
            Box::pin(std::future::ready(Ok(ScoreOutput { scores, usage: ScorerUsage::default() })))
        }
    }

    fn input<'a>(convo: &'a [Message], cands: &'a [String], msgs: &'a [CandidateMessage]) -> ScoreInput<'a> {
        ScoreInput { conversation: convo, candidates: cands, messages: msgs, response_format: None }
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
        let msgs: Vec<CandidateMessage> = cands.iter().map(CandidateMessage::from_text).collect();
        let out = scorer.score(input(&convo, &cands, &msgs)).await.unwrap();
        assert_eq!(out.scores, vec![2.0, 1.0, 2.0, 3.0]);
        assert_eq!(asked.load(Ordering::SeqCst), 3, "the duplicate is scored once");
        let again = scorer.score(input(&convo, &cands, &msgs)).await.unwrap();
        assert_eq!(again.scores, out.scores);
        assert_eq!(asked.load(Ordering::SeqCst), 3, "all hits");
        assert_eq!(scorer.hits.get(), 3);
        let other = [Message { role: "user".into(), content: "another question".into() }];
        scorer.score(input(&other, &cands, &msgs)).await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 6, "another conversation is another key");
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
                let msgs: Vec<CandidateMessage> = cands.iter().map(CandidateMessage::from_text).collect();
                let out = runtime.block_on(scorer.score(input(&convo, &cands, &msgs))).unwrap();
                for (c, s) in cands.iter().zip(out.scores) {
                    prop_assert_eq!(s, c.len() as f64);
                }
            }
        }
    }
}
