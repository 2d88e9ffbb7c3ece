//! The fuser of mixture-of-N selection: an OpenAI-compatible chat model that writes one answer
//! from the best candidates.

use super::ChatCall;
use crate::backend::Backend;
use crate::bon::{Fused, Fuser};
use crate::error::Error;
use crate::score::{BoxFuture, Message};

/// The instructions the fuser gets (as the system turn), before the conversation.
pub const FUSE_INSTRUCTIONS: &str = "You will see a conversation and, after it, several candidate answers to its last \
user message, best first. Write one answer to that message that keeps what the candidates agree on and what \
is right in them, and fixes what they get wrong. Reply with the answer only: do not mention the candidates.";

/// A chat model that fuses candidates.
#[derive(Debug)]
pub struct ChatFuser {
    /// The fuser's endpoints (base URLs ending in `/v1`).
    pub backend: Backend,
    /// The `model` sent.
    pub model: Option<String>,
    /// `max_tokens` of the fused answer.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f64,
}

/// The last user turn that presents the candidates.
pub fn candidates_turn(candidates: &[(String, Option<f64>)]) -> String {
    let mut out = String::from("Candidate answers, best first:\n");
    for (i, (text, score)) in candidates.iter().enumerate() {
        match score {
            Some(s) => out.push_str(&format!("\n[Candidate {} (score {s:.4})]\n{text}\n", i + 1)),
            None => out.push_str(&format!("\n[Candidate {}]\n{text}\n", i + 1)),
        }
    }
    out.push_str("\nWrite the single best answer.");
    out
}

impl Fuser for ChatFuser {
    fn fuse<'a>(
        &'a self,
        conversation: &'a [Message],
        candidates: &'a [(String, Option<f64>)],
    ) -> BoxFuture<'a, Result<Fused, Error>> {
        Box::pin(async move {
            let last = candidates_turn(candidates);
            let mut messages: Vec<(&str, &str)> = vec![("system", FUSE_INSTRUCTIONS)];
            messages.extend(conversation.iter().map(|m| (m.role.as_str(), m.content.as_str())));
            messages.push(("user", last.as_str()));
            let call = ChatCall {
                model: self.model.as_deref(),
                messages: &messages,
                max_tokens: self.max_tokens,
                temperature: self.temperature,
                logprobs: false,
            };
            let reply = call.send(&self.backend).await.map_err(Error::into_gateway_failure)?;
            if reply.text.trim().is_empty() {
                let nothing =
                    Error::bad_gateway(self.backend.party, self.backend.party_name.as_str(), "answered nothing");
                return Err(match &reply.endpoint {
                    Some(endpoint) => nothing.at(endpoint),
                    None => nothing,
                });
            }
            Ok(Fused {
                text: reply.text,
                prompt_tokens: reply.prompt_tokens.unwrap_or(0),
                completion_tokens: reply.total_tokens.zip(reply.prompt_tokens).map_or(0, |(t, p)| t.saturating_sub(p)),
                ..Default::default()
            })
        })
    }
}
