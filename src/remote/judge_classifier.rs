//! A domain classifier that asks an OpenAI-compatible LLM, falling back to the rules.

use super::ChatCall;
use crate::backend::Backend;
use crate::bon::{DOMAINS, DomainClassifier, classify};
use crate::score::BoxFuture;

const INSTRUCTIONS: &str = "Classify the user's message into exactly one domain and answer with that single word:\n\
math (calculation, algebra, word problems), code (programming), precise_if (the message states checkable \
formatting constraints such as word counts, case, bullet counts or JSON output), safety (asks for something \
harmful), factuality (a knowledge question about the world), focus (open-ended writing or advice), \
general (anything else).";

/// Classifies with an LLM; when the call fails or the answer names no domain, the rules decide.
pub struct JudgeClassifier {
    /// The judge's endpoints (base URLs ending in `/v1`).
    pub backend: Backend,
    /// The `model` field sent.
    pub model: Option<String>,
}

impl JudgeClassifier {
    async fn ask(&self, message: &str) -> Option<String> {
        let messages = [("system", INSTRUCTIONS), ("user", message)];
        let call = ChatCall {
            model: self.model.as_deref(),
            messages: &messages,
            max_tokens: 8,
            temperature: 0.0,
            logprobs: false,
        };
        let answer = match call.send(&self.backend).await {
            Ok(r) => r.text.to_lowercase(),
            Err(e) => {
                tracing::debug!(error = %e.loggable(), "judge classifier failed; using the rules");
                return None;
            }
        };
        // The earliest domain named in the answer wins ("math, maybe code" is math).
        DOMAINS.iter().filter_map(|d| answer.find(d).map(|at| (at, *d))).min().map(|(_, d)| d.to_string())
    }
}

impl DomainClassifier for JudgeClassifier {
    fn classify<'a>(&'a self, last_user_message: &'a str) -> BoxFuture<'a, String> {
        Box::pin(async move {
            match self.ask(last_user_message).await {
                Some(domain) => domain,
                None => classify(last_user_message).to_string(),
            }
        })
    }
}
