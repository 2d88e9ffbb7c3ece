//! Scorers and classifiers that call HTTP backends: a reward model server (`reward_http`), an
//! LLM judge, and the judge-LLM domain classifier. They implement the pure traits of `score`
//! and `bon` over [`crate::backend::Backend`], so the domain logic never sees HTTP.

pub(crate) mod config;
mod fuser;
mod judge;
mod judge_classifier;
mod reward_http;

pub use fuser::{ChatFuser, FUSE_INSTRUCTIONS, candidates_turn};
pub use judge::{
    JudgeConfig, JudgeMode, JudgeScorer, PAIRWISE_SYSTEM, RATINGS_PROMPT, Verdict, both_orders, expected_rating,
    first_round, parse_rating,
};
pub use judge_classifier::JudgeClassifier;
pub use reward_http::{InputFormat, RewardApi, RewardHttpConfig, RewardHttpScorer};

use serde_json::{Value, json};

use crate::backend::Backend;
use crate::error::Error;

/// One chat completion request that bestofn itself makes (a judge rating, a classification):
/// the one place such calls are built, so every caller sends the same shape.
#[derive(Debug, Clone)]
pub struct ChatCall<'a> {
    /// The `model` field, when configured.
    pub model: Option<&'a str>,
    /// The messages as `(role, content)` pairs.
    pub messages: &'a [(&'a str, &'a str)],
    /// `max_tokens`.
    pub max_tokens: u32,
    /// `temperature`.
    pub temperature: f64,
    /// Ask for `top_logprobs` (20) at every token.
    pub logprobs: bool,
}

/// What came back from a [`ChatCall`].
#[derive(Debug, Clone, Default)]
pub struct ChatReply {
    /// The first choice's message text (empty when there is none).
    pub text: String,
    /// The first choice's `logprobs` object, when returned.
    pub logprobs: Option<Value>,
    /// `usage.prompt_tokens`, when reported.
    pub prompt_tokens: Option<u64>,
    /// `usage.total_tokens`, when reported.
    pub total_tokens: Option<u64>,
    /// The endpoint that answered, for the error of a caller that finds the answer unusable.
    pub endpoint: Option<std::sync::Arc<str>>,
}

impl ChatCall<'_> {
    /// The request body.
    pub fn body(&self) -> Value {
        let messages: Vec<Value> =
            self.messages.iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
        let mut body = json!({"messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens});
        if let Some(m) = self.model {
            body["model"] = json!(m);
        }
        if self.logprobs {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(20);
        }
        body
    }

    /// Sends the call to `backend`'s `/chat/completions` and reads the first choice, in a GenAI
    /// `chat` span of its own (judge, classifier and fuser calls are LLM calls too).
    pub async fn send(&self, backend: &Backend) -> Result<ChatReply, Error> {
        let span = crate::telemetry::upstream_call_span("chat", self.model, 1);
        let call = async {
            let crate::backend::JsonReply { body: reply, endpoint, .. } =
                backend.post_json("/chat/completions", &self.body()).await?;
            let tokens = |key: &str| reply.pointer(&format!("/usage/{key}")).and_then(Value::as_u64);
            if let (Some(input), Some(output)) = (tokens("prompt_tokens"), tokens("completion_tokens")) {
                crate::telemetry::record_usage(&tracing::Span::current(), input, output);
            }
            Ok(ChatReply {
                text: reply.pointer("/choices/0/message/content").and_then(Value::as_str).unwrap_or("").to_string(),
                logprobs: reply.pointer("/choices/0/logprobs").filter(|v| !v.is_null()).cloned(),
                prompt_tokens: tokens("prompt_tokens"),
                total_tokens: tokens("total_tokens"),
                endpoint: Some(endpoint),
            })
        };
        crate::telemetry::in_span(span, call).await
    }
}
