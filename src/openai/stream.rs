//! OpenAI server-sent events for best-of-N answers: the opening role deltas, the winner
//! re-streamed in bounded chunks, finish and usage chunks, `[DONE]`, and in-stream errors.
//!
//! A winner's message is re-streamed whole, each field under the name the upstream used: its
//! reasoning (`reasoning_content` or `reasoning`) first, then `content`, then `refusal`, in
//! pieces of at most [`MAX_DELTA_CHARS`] characters, then each tool call (its `index`; `id`,
//! `type` and `function.name` in its first delta; `function.arguments` in pieces). Every other
//! field of the message (a vendor's own, a null, an empty string) goes whole into the choice's
//! first delta, and every other field of the choice (vLLM's `stop_reason`) into its finish chunk,
//! so that a client accumulating the deltas has the upstream's message field for field.
//!
//! SSE framing here is written by hand: bestofn only ever emits `data:` lines and comments, which
//! is a few lines of code, and pass-through streams are piped byte for byte without parsing.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::LogprobsAsk;
use super::response::{answer_choice, bestofn_object, fused_at, usage_object};
use crate::bon::{Api, Candidate, Outcome, Plan};
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
    /// The log probabilities the client asked for: the winner's, cut to them, ride on its
    /// finish chunk; none when not asked for.
    pub logprobs: LogprobsAsk,
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
            // The choice as the non-streamed answer returns it: the message whole, the fused
            // answer in its place, log probabilities only when asked for.
            let mut choice = answer_choice(self.api, outcome, candidate, position, self.logprobs);
            let deltas = match self.api {
                Api::Chat => match choice.remove("message") {
                    Some(Value::Object(message)) => {
                        let c = &outcome.samples.candidates[candidate];
                        let reasoning = fused_at(outcome, position).map_or_else(|| reasoning_field(c), |_| None);
                        message_deltas(message, reasoning)
                    }
                    _ => Vec::new(),
                },
                Api::Completions => match choice.remove("text") {
                    Some(Value::String(text)) => pieces(&text).into_iter().map(|p| json!({"content": p})).collect(),
                    _ => Vec::new(),
                },
            };
            for delta in deltas {
                events.push(event(&self.chunk(json!([self.choice_delta(position, delta, None)]))));
            }
            let finish = match choice.remove("finish_reason") {
                Some(Value::String(reason)) => reason,
                _ => "stop".to_string(),
            };
            let mut last = self.choice_delta(position, json!({}), Some(&finish));
            if let (Some(logprobs), Value::Object(fields)) = (choice.remove("logprobs"), &mut last) {
                fields.insert("logprobs".into(), logprobs);
            }
            // The choice's other fields (vLLM's `stop_reason`, a vendor's own) ride on its finish.
            choice.remove("index");
            choice.remove("delta");
            if let Value::Object(fields) = &mut last {
                for (key, value) in choice {
                    fields.entry(key).or_insert(value);
                }
            }
            let mut chunk = self.chunk(json!([last]));
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

/// The field a candidate's reasoning came in, when it has reasoning.
fn reasoning_field(candidate: &Candidate) -> Option<&'static str> {
    candidate.message.reasoning.as_ref().map(|(field, _)| field.name())
}

/// The deltas that re-stream `message` (an assistant message, whole): `reasoning` (the field the
/// reasoning came in), `content` and `refusal` in pieces, in that order, then each tool call;
/// every other field (and any of these that is not a non-empty string, or a list of tool calls)
/// whole in the first delta. `role` was sent by the opening chunk.
fn message_deltas(mut message: Map<String, Value>, reasoning: Option<&str>) -> Vec<Value> {
    message.remove("role");
    let mut deltas: Vec<Value> = Vec::new();
    for field in reasoning.into_iter().chain(["content", "refusal"]) {
        if let Some(Value::String(text)) = message.get(field)
            && !text.is_empty()
            && let Some(Value::String(text)) = message.remove(field)
        {
            deltas.extend(pieces(&text).into_iter().map(|piece| json!({field: piece})));
        }
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls")
        && !calls.is_empty()
        && let Some(Value::Array(calls)) = message.remove("tool_calls")
    {
        for (index, call) in calls.into_iter().enumerate() {
            deltas.extend(tool_call_deltas(index, call).into_iter().map(|call| json!({"tool_calls": [call]})));
        }
    }
    // What is not streamed in pieces goes whole into the first delta.
    if !message.is_empty() {
        match deltas.first_mut() {
            Some(Value::Object(first)) => {
                for (key, value) in message {
                    first.entry(key).or_insert(value);
                }
            }
            _ => deltas.insert(0, Value::Object(message)),
        }
    }
    deltas
}

/// The deltas of tool call `index`: the call with its `index` and the first piece of its
/// arguments (its `id`, `type`, `function.name` and any other field whole), then the rest of
/// the arguments in pieces. A call that is not an object, or whose arguments are not a string,
/// goes whole in one delta.
fn tool_call_deltas(index: usize, call: Value) -> Vec<Value> {
    let Value::Object(mut call) = call else {
        return vec![call];
    };
    call.insert("index".into(), json!(index));
    let arguments = match call.get_mut("function") {
        Some(Value::Object(function)) => match function.get("arguments") {
            Some(Value::String(_)) => match function.remove("arguments") {
                Some(Value::String(arguments)) => Some((function, arguments)),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    let Some((function, arguments)) = arguments else {
        return vec![Value::Object(call)];
    };
    let mut parts = pieces(&arguments).into_iter();
    function.insert("arguments".into(), json!(parts.next().unwrap_or("")));
    let mut deltas = vec![Value::Object(call)];
    deltas.extend(parts.map(|piece| json!({"index": index, "function": {"arguments": piece}})));
    deltas
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

    /// Accumulates deltas as OpenAI's SDK does: strings appended, tool calls merged by index,
    /// anything else set.
    fn accumulate(into: &mut Map<String, Value>, delta: &Map<String, Value>) {
        for (key, value) in delta {
            match (into.get_mut(key), value) {
                (Some(Value::String(acc)), Value::String(more)) => acc.push_str(more),
                (Some(Value::Array(acc)), Value::Array(more)) if key == "tool_calls" => {
                    for call in more {
                        let i = call["index"].as_u64().unwrap() as usize;
                        if acc.len() <= i {
                            acc.resize(i + 1, json!({}));
                        }
                        accumulate(acc[i].as_object_mut().unwrap(), call.as_object().unwrap());
                    }
                }
                (Some(Value::Object(acc)), Value::Object(more)) => accumulate(acc, more),
                _ => {
                    into.insert(key.clone(), value.clone());
                }
            }
        }
    }

    #[test]
    fn a_message_is_restreamed_reasoning_content_then_tool_calls_and_reassembles_whole() {
        let long = |what: &str| format!("{what} ").repeat(40);
        let message = json!({
            "role": "assistant",
            "content": long("content"),
            "reasoning": long("thinking"),
            "refusal": null,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": format!("{{\"city\": \"{}\"}}", long("Paris"))}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ],
            "vendor_extra": {"cached": true}
        });
        let Value::Object(fields) = message.clone() else { unreachable!() };
        let deltas = message_deltas(fields, Some("reasoning"));
        // Reasoning first, then content, then the tool calls; the first delta carries the rest.
        let kinds: Vec<&str> = deltas
            .iter()
            .map(|d| ["reasoning", "content", "tool_calls"].into_iter().find(|k| d.get(*k).is_some()).unwrap())
            .collect();
        let mut sorted = kinds.clone();
        sorted.sort_by_key(|k| ["reasoning", "content", "tool_calls"].iter().position(|x| x == k));
        assert_eq!(kinds, sorted, "{deltas:?}");
        assert_eq!(deltas[0]["vendor_extra"], json!({"cached": true}));
        assert!(deltas[0].as_object().unwrap().contains_key("refusal"));
        for d in &deltas {
            for text in [&d["reasoning"], &d["content"], &d["tool_calls"][0]["function"]["arguments"]] {
                assert!(text.as_str().is_none_or(|t| t.chars().count() <= MAX_DELTA_CHARS));
            }
        }
        let first_of_call_2 = deltas.iter().find(|d| d["tool_calls"][0]["index"] == 1).unwrap();
        assert_eq!(first_of_call_2["tool_calls"][0]["id"], "call_2");
        assert_eq!(first_of_call_2["tool_calls"][0]["function"]["name"], "get_time");
        let mut got = Map::new();
        got.insert("role".into(), json!("assistant"));
        for d in &deltas {
            accumulate(&mut got, d.as_object().unwrap());
        }
        for call in got["tool_calls"].as_array_mut().unwrap() {
            call.as_object_mut().unwrap().remove("index");
        }
        assert_eq!(Value::Object(got), message);
    }
}
