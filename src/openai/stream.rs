//! OpenAI server-sent events for best-of-N answers: the opening role deltas, the winner
//! re-streamed in bounded chunks, finish and usage chunks, `[DONE]`, and in-stream errors.
//!
//! SSE framing here is written by hand: bestofn only ever emits `data:` lines and comments, which
//! is a few lines of code, and pass-through streams are piped byte for byte without parsing.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::response::{bestofn_object, usage_object};
use crate::bon::{Api, Outcome, Plan};
use crate::error::Error;

/// An SSE comment: clients (openai-python included) ignore it, proxies see traffic.
pub const HEARTBEAT: &[u8] = b": keep-alive\n\n";
/// The last event of every stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";
/// Largest content delta, in characters: the winner is re-streamed in pieces of at most this.
pub const MAX_DELTA_CHARS: usize = 64;

/// What every chunk of one stream shares.
#[derive(Debug, Clone)]
pub struct StreamMeta {
    /// Chat or legacy completions.
    pub api: Api,
    /// The same `id` on every chunk.
    pub id: String,
    /// The same `created` on every chunk.
    pub created: u64,
    /// The same `model` on every chunk: of a best-of-N answer, the one the upstream's first
    /// answer reported ([`reported_model`]), as in the non-streamed answer.
    pub model: String,
    /// `stream_options.include_usage`: every chunk has `usage: null`, then a usage chunk.
    pub include_usage: bool,
}

/// The `model` an upstream answer's envelope (its top-level fields) reports, when it is a
/// string: what a non-streamed best-of-N answer carries, its envelope being the first answer's.
pub fn reported_model(envelope: &Map<String, Value>) -> Option<&str> {
    envelope.get("model").and_then(Value::as_str)
}

fn event(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"data: ");
    // Serialising a Value cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Splits at character boundaries into pieces of at most `MAX_DELTA_CHARS` characters.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (i, _) in text.char_indices() {
        if count == MAX_DELTA_CHARS {
            out.push(&text[start..i]);
            start = i;
            count = 0;
        }
        count += 1;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

impl StreamMeta {
    fn chunk(&self, choices: Value) -> Value {
        let object = match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        };
        let mut chunk =
            json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": choices});
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn choice_delta(&self, index: usize, delta: Value, finish_reason: Option<&str>) -> Value {
        match self.api {
            Api::Chat => json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason}),
            Api::Completions => json!({
                "index": index,
                "text": delta.get("content").and_then(Value::as_str).unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        }
    }

    /// Sent once the first upstream answer is in (its `model` is then known), before the
    /// candidates are scored: the assistant role for each of `k` choices. Legacy completions
    /// have no role, so nothing.
    pub fn opening(&self, k: u32) -> Vec<Bytes> {
        match self.api {
            Api::Chat => (0..k as usize)
                .map(|i| {
                    event(&self.chunk(json!([self.choice_delta(i, json!({"role": "assistant", "content": ""}), None)])))
                })
                .collect(),
            Api::Completions => Vec::new(),
        }
    }

    /// The top `plan.k` candidates as deltas, their finish chunks (the last carrying the
    /// `bestofn` object), the usage chunk when asked for, and `[DONE]`.
    pub fn answer(&self, plan: &Plan, outcome: &Outcome) -> Vec<Bytes> {
        let mut events = Vec::new();
        let chosen: Vec<usize> = outcome.ranking.iter().take(plan.k as usize).copied().collect();
        for (position, &candidate) in chosen.iter().enumerate() {
            let c = &outcome.samples.candidates[candidate];
            let fused = outcome.fused.as_ref().filter(|_| position == 0);
            let text = fused.map_or(c.text.as_str(), |f| f.text.as_str());
            for piece in pieces(text) {
                events.push(event(&self.chunk(json!([self.choice_delta(position, json!({"content": piece}), None)]))));
            }
            if self.api == Api::Chat
                && fused.is_none()
                && let Some(Value::Array(calls)) =
                    c.choice.to_map().remove("message").and_then(|mut m| m.get_mut("tool_calls").map(Value::take))
            {
                // `value["index"] = ..` would panic on a call that is not an object.
                let indexed: Vec<Value> = calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut call)| {
                        if let Value::Object(fields) = &mut call {
                            fields.insert("index".into(), json!(i));
                        }
                        call
                    })
                    .collect();
                events.push(event(&self.chunk(json!([self.choice_delta(
                    position,
                    json!({"tool_calls": indexed}),
                    None
                )]))));
            }
            let finish = if fused.is_some() { "stop" } else { c.finish_reason.as_deref().unwrap_or("stop") };
            let mut chunk = self.chunk(json!([self.choice_delta(position, json!({}), Some(finish))]));
            if position + 1 == chosen.len() {
                chunk["bestofn"] = bestofn_object(plan, outcome);
            }
            events.push(event(&chunk));
        }
        if self.include_usage {
            let mut chunk = self.chunk(json!([]));
            chunk["usage"] = usage_object(outcome);
            events.push(event(&chunk));
        }
        events.push(Bytes::from_static(DONE));
        events
    }
}

/// An error after the stream has begun: the OpenAI envelope as a data event, then `[DONE]`.
pub fn error_events(error: &Error) -> Vec<Bytes> {
    vec![event(&error.envelope()), Bytes::from_static(DONE)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_bounded_and_lossless() {
        let text = "é".repeat(150) + "abc";
        let parts = pieces(&text);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_DELTA_CHARS));
        assert_eq!(parts.concat(), text);
        assert_eq!(parts.len(), 3);
        assert!(pieces("").is_empty());
    }
}
