//! A domain classifier that asks an OpenAI-compatible LLM, falling back to the rules.

use serde_json::{Value, json};

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
        let mut body = json!({
            "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": message}],
            "temperature": 0,
            "max_tokens": 8,
        });
        if let Some(model) = &self.model {
            body["model"] = json!(model);
        }
        let reply = match self.backend.post_json("/chat/completions", &body).await {
            Ok(r) => r.body,
            Err(e) => {
                tracing::debug!(error = %e, "judge classifier failed; using the rules");
                return None;
            }
        };
        let answer = reply.pointer("/choices/0/message/content").and_then(Value::as_str)?.to_lowercase();
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
