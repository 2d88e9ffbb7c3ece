//! Scorers: given a conversation and N candidate replies, one score per candidate (higher is
//! better). The proxy and the offline evaluator call scorers through the one [`Scorer`] trait.

pub(crate) mod cache;
mod consensus;
mod ensemble;
pub mod json_schema;
pub mod message;
mod template;
pub mod tools;
pub mod validity;
mod verify;
mod weighted_vote;

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

pub use cache::CachedScorer;
pub use consensus::{
    ConsensusScorer, answer_key, consensus_scores, consensus_scores_of, final_answer, normalize_answer,
};
pub use ensemble::{Combine, EnsembleScorer, z_scores};
pub use json_schema::{CompiledSchema, FormatCheck, ResponseFormat};
pub use message::{CandidateMessage, IncludeReasoning, ReasoningField, ToolCall, canonical_json, render_turn};
pub use template::ChatTemplate;
pub use tools::{ToolChoice, Tools};
pub use verify::{VerifyScorer, checks_for, parse_constraints, passes};
pub use weighted_vote::{WeightedVoteScorer, softmax, weighted_votes};

use crate::error::Error;

/// One chat message reduced to its text, as scorers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The message's text content.
    pub content: String,
}

/// What a scorer is asked to rank.
#[derive(Debug, Clone, Copy)]
pub struct ScoreInput<'a> {
    /// The conversation so far; each candidate is scored as its final assistant turn.
    pub conversation: &'a [Message],
    /// The candidate replies as scorers read them, in candidate order: each candidate's
    /// message in the one rendering ([`CandidateMessage::render`], reasoning left out unless the
    /// scorer is configured with `include_reasoning`).
    pub candidates: &'a [String],
    /// The candidates' whole messages (content, reasoning, tool calls, refusal), in the same
    /// order as `candidates`.
    pub messages: &'a [CandidateMessage],
    /// The request's `response_format`, prepared once for the request (its schema compiled),
    /// for verifiers.
    pub response_format: Option<&'a ResponseFormat>,
    /// The request's `tools` and `tool_choice`, prepared once for the request (their schemas
    /// compiled), for verifiers.
    pub tools: Option<&'a Tools>,
}

impl<'a> ScoreInput<'a> {
    /// Candidates that are plain text replies to `conversation`, with no `response_format` and no
    /// `tools`: what an RM benchmark row or a test asks.
    pub fn of_texts(conversation: &'a [Message], candidates: &'a [String]) -> ScoreInput<'a> {
        ScoreInput { conversation, candidates, messages: &[], response_format: None, tools: None }
    }

    /// The candidates' messages, one per candidate: `messages` when it has one per candidate,
    /// else each candidate's text as content.
    pub fn candidate_messages(&self) -> Vec<CandidateMessage> {
        if self.messages.len() == self.candidates.len() {
            self.messages.to_vec()
        } else {
            self.candidates.iter().map(|c| CandidateMessage::from_text(c.as_str())).collect()
        }
    }
}

/// A scorer's answer: one finite score per candidate, and what the scoring cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScoreOutput {
    /// One score per candidate, in candidate order.
    pub scores: Vec<f64>,
    /// What the scorer consumed.
    pub usage: ScorerUsage,
}

/// What a scorer consumed, reported apart from the generation usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScorerUsage {
    /// Backend calls made.
    pub calls: u32,
    /// Prompt tokens the scorer reported, where it reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
}

/// A boxed future, so scorers of different kinds can sit behind one trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Scores candidate replies to a conversation.
pub trait Scorer: Send + Sync {
    /// The scorer's configured name.
    fn name(&self) -> &str;
    /// Scores every candidate; the result has exactly one finite score per candidate.
    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>>;
    /// True when a candidate's score depends only on the conversation and that candidate (not on
    /// the other candidates), so it may be cached and duplicates scored once.
    fn pointwise(&self) -> bool {
        false
    }
    /// True when scoring many candidates in one call is much cheaper than one at a time (an RM
    /// server's batched request), so adaptive sampling scores whole waves rather than arrivals.
    fn batched(&self) -> bool {
        false
    }
}

/// Runs CPU-bound scoring (consensus over many candidates, verifiers over long outputs) on
/// Tokio's blocking pool, so one request's scoring never stalls the bytes of the other requests
/// on its I/O thread; inline where no runtime runs.
pub(crate) async fn off_io_threads<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(work).await.map_err(|e| Error::Internal(format!("a scoring task failed: {e}")))
        }
        Err(_) => Ok(work()),
    }
}

/// The text of the last user turn of a conversation (empty when there is none): what the
/// classifier, the judge and the recorder's `prompt` field take as "the prompt".
pub fn last_user_message(conversation: &[Message]) -> &str {
    conversation.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str())
}

/// The conversation with `candidate` appended as the final assistant turn.
pub fn with_candidate(conversation: &[Message], candidate: &str) -> Vec<Message> {
    let mut turns = conversation.to_vec();
    turns.push(Message { role: "assistant".into(), content: candidate.to_string() });
    turns
}
