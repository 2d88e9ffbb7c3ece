//! A candidate as a whole assistant message (content, reasoning, tool calls, refusal), and the
//! one rendering of it that scorers see, online and offline alike.
//!
//! The rendering ([`CandidateMessage::render`]):
//! - the reasoning, only when the scorer asks for it (`include_reasoning = true`), followed by a
//!   blank line;
//! - the content (text parts of a multi-part content joined by newlines);
//! - each tool call on a line of its own, `tool call: NAME ARGUMENTS`, the arguments as canonical
//!   JSON ([`canonical_json`]: keys sorted, numbers normalised) when they parse, else as sent;
//! - a refusal, when the message has one and no content, as its text.
//!
//! Tool calls compared as answers use [`CandidateMessage::tool_call_key`]: the set of canonical
//! calls, so parallel calls in another order are the same answer.
//!
//! The turns of the conversation a candidate answers are rendered the same way
//! ([`render_turn`]): an assistant turn that called tools shows its calls, a `tool` turn its
//! result; earlier turns' reasoning is left out (as reasoning models' own chat templates leave
//! it out), and a content part that is not text shows as its type (`[image_url]`).
//!
//! A scorer configured with `include_reasoning = true` is wrapped in [`IncludeReasoning`], which
//! hands it the rendering with reasoning from [`ScoreInput::messages`].

use std::sync::Arc;

use serde_json::{Map, Number, Value};

use super::{BoxFuture, ScoreInput, ScoreOutput, Scorer};
use crate::error::Error;

/// The field a reasoning model used for its reasoning; a re-streamed or returned message keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningField {
    /// `reasoning_content` (vLLM's reasoning parsers, DeepSeek, llama.cpp with a reasoning format).
    ReasoningContent,
    /// `reasoning` (vLLM's newer field, OpenRouter, Ollama).
    Reasoning,
}

impl ReasoningField {
    /// The field's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ReasoningField::ReasoningContent => "reasoning_content",
            ReasoningField::Reasoning => "reasoning",
        }
    }
}

/// One tool call of a message, as the upstream sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The call's `id`, when it has one.
    pub id: Option<String>,
    /// `function.name`.
    pub name: String,
    /// `function.arguments`: a JSON text, which the model may have got wrong.
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as canonical JSON, or `None` when they do not parse as JSON.
    pub fn canonical_arguments(&self) -> Option<String> {
        serde_json::from_str::<Value>(&self.arguments).ok().map(|v| canonical_json(&v))
    }

    /// The call as scorers see it: `tool call: NAME ARGUMENTS`.
    pub fn render(&self) -> String {
        let arguments = self.canonical_arguments().unwrap_or_else(|| self.arguments.clone());
        format!("tool call: {} {}", self.name, arguments)
    }
}

/// The parts of an assistant message that bestofn reads; the message itself travels whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CandidateMessage {
    /// The text content (text parts joined by newlines); empty when there is none.
    pub content: String,
    /// The reasoning and the field it came in, when the upstream sent one.
    pub reasoning: Option<(ReasoningField, String)>,
    /// Tool calls, in the order sent.
    pub tool_calls: Vec<ToolCall>,
    /// The model's refusal, when it gave one.
    pub refusal: Option<String>,
}

impl CandidateMessage {
    /// Reads an OpenAI chat `message` (or a legacy completion choice's `text`, as content).
    /// Fields of the wrong type are left out, never an error: the message itself is kept whole
    /// elsewhere, and this is only what scorers read.
    pub fn from_message(message: &Value) -> CandidateMessage {
        let content = content_text(message.get("content"));
        let reasoning = [ReasoningField::ReasoningContent, ReasoningField::Reasoning].into_iter().find_map(|field| {
            message.get(field.name()).and_then(Value::as_str).filter(|s| !s.is_empty()).map(|s| (field, s.to_string()))
        });
        let tool_calls = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| calls.iter().filter_map(tool_call).collect())
            .unwrap_or_default();
        let refusal = message.get("refusal").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        CandidateMessage { content, reasoning, tool_calls, refusal }
    }

    /// A message of plain text content (a legacy completion, a recorded text).
    pub fn from_text(text: impl Into<String>) -> CandidateMessage {
        CandidateMessage { content: text.into(), ..CandidateMessage::default() }
    }

    /// The one rendering scorers see (module docs).
    pub fn render(&self, include_reasoning: bool) -> String {
        let mut parts: Vec<String> = Vec::new();
        if include_reasoning && let Some((_, reasoning)) = &self.reasoning {
            parts.push(format!("{reasoning}\n"));
        }
        if !self.content.is_empty() {
            parts.push(self.content.clone());
        } else if let Some(refusal) = &self.refusal {
            parts.push(refusal.clone());
        }
        parts.extend(self.tool_calls.iter().map(ToolCall::render));
        parts.join("\n")
    }

    /// The message's tool calls as one comparable answer: each call's name and canonical
    /// arguments (as sent when they do not parse), sorted, so that the same parallel calls in
    /// another order compare equal. Empty when the message calls no tool.
    pub fn tool_call_key(&self) -> Vec<String> {
        let mut key: Vec<String> = self.tool_calls.iter().map(ToolCall::render).collect();
        key.sort();
        key
    }
}

fn tool_call(call: &Value) -> Option<ToolCall> {
    let function = call.get("function")?;
    Some(ToolCall {
        id: call.get("id").and_then(Value::as_str).map(str::to_string),
        name: function.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
        arguments: match function.get("arguments") {
            Some(Value::String(s)) => s.clone(),
            // Some servers send the arguments as an object rather than its JSON text.
            Some(other) if !other.is_null() => other.to_string(),
            _ => String::new(),
        },
    })
}

/// The text of a message's `content`: a string as it is, the text parts of a multi-part content
/// joined by newlines, nothing for anything else.
pub fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            texts.join("\n")
        }
        _ => String::new(),
    }
}

/// One turn of a client's conversation (an OpenAI chat message of any role) as scorers see it:
/// the same rendering as a candidate's without reasoning, so an assistant turn that called tools
/// shows `tool call: NAME ARGUMENTS` lines and a `tool` turn its result; a content part that is
/// not text (an image, audio, a file) shows as its type in brackets, `[image_url]`, rather than
/// vanishing.
pub fn render_turn(message: &Value) -> String {
    let mut turn = CandidateMessage::from_message(message);
    if let Some(Value::Array(parts)) = message.get("content") {
        let texts: Vec<String> = parts
            .iter()
            .map(|p| match p.get("text").and_then(Value::as_str) {
                Some(text) => text.to_string(),
                None => format!("[{}]", p.get("type").and_then(Value::as_str).unwrap_or("part")),
            })
            .collect();
        turn.content = texts.join("\n");
    }
    turn.render(false)
}

/// A scorer that reads each candidate's reasoning: it hands the scorer it wraps the candidates
/// rendered with their reasoning (`include_reasoning = true` on a configured scorer). Outside a
/// score cache, so that cached scores are keyed by what the scorer read.
pub struct IncludeReasoning {
    /// The scorer that reads the reasoning.
    pub inner: Arc<dyn Scorer>,
}

impl Scorer for IncludeReasoning {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn pointwise(&self) -> bool {
        self.inner.pointwise()
    }

    fn batched(&self) -> bool {
        self.inner.batched()
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        Box::pin(async move {
            // Candidates given without their messages (none such site today) are scored as given.
            if input.messages.len() != input.candidates.len() {
                return self.inner.score(input).await;
            }
            let rendered: Vec<String> = input.messages.iter().map(|m| m.render(true)).collect();
            self.inner.score(ScoreInput { candidates: &rendered, ..input }).await
        })
    }
}

/// `value` as compact JSON with every object's keys sorted and every number normalised (an
/// integral number is written as an integer, `1.0` and `1e0` as `1`), so that two spellings of the
/// same arguments compare equal.
pub fn canonical_json(value: &Value) -> String {
    canonical(value).to_string()
}

fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let sorted: Map<String, Value> = keys.into_iter().map(|k| (k.clone(), canonical(&map[k]))).collect();
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        Value::Number(n) => Value::Number(normalised(n)),
        other => other.clone(),
    }
}

fn normalised(n: &Number) -> Number {
    if n.is_i64() || n.is_u64() {
        return n.clone();
    }
    match n.as_f64() {
        // Integral and exactly representable as i64: written as an integer.
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Number::from(f as i64),
        Some(f) => Number::from_f64(f).unwrap_or_else(|| n.clone()),
        None => n.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn content_text_joins_text_parts_and_ignores_others() {
        let parts = json!([
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": "b"}
        ]);
        assert_eq!(content_text(Some(&parts)), "a\nb");
        assert_eq!(content_text(Some(&Value::Null)), "");
        assert_eq!(content_text(Some(&Value::String("hi".into()))), "hi");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth_and_normalises_numbers() {
        let a: Value = serde_json::from_str(r#"{"b": 1.0, "a": {"y": [2e0, 0.5], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[2,0.50]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"x":"s","y":[2,0.5]},"b":1}"#);
        assert_eq!(canonical_json(&a), canonical_json(&b));
    }

    #[test]
    fn a_message_is_read_whole_and_rendered_once() {
        let message = json!({
            "role": "assistant",
            "content": null,
            "reasoning_content": "The user wants the weather.",
            "tool_calls": [
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2.0}"}}
            ]
        });
        let m = CandidateMessage::from_message(&message);
        assert_eq!(m.reasoning, Some((ReasoningField::ReasoningContent, "The user wants the weather.".into())));
        assert_eq!(m.render(false), "tool call: get_time {}\ntool call: get_weather {\"city\":\"Paris\",\"days\":2}");
        assert_eq!(
            m.render(true),
            "The user wants the weather.\n\ntool call: get_time {}\ntool call: get_weather {\"city\":\"Paris\",\"days\":2}"
        );
        let swapped =
            CandidateMessage { tool_calls: vec![m.tool_calls[1].clone(), m.tool_calls[0].clone()], ..m.clone() };
        assert_eq!(m.tool_call_key(), swapped.tool_call_key(), "parallel calls compare as a set");
    }

    #[test]
    fn arguments_that_do_not_parse_are_rendered_as_sent() {
        let m = CandidateMessage::from_message(&json!({
            "content": "Let me check.",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": "{\"city\": Paris"}}]
        }));
        assert_eq!(m.tool_calls[0].canonical_arguments(), None);
        assert_eq!(m.render(false), "Let me check.\ntool call: get_weather {\"city\": Paris");
    }

    #[test]
    fn conversation_turns_show_tool_calls_results_and_non_text_parts() {
        let call = json!({"role": "assistant", "content": null, "reasoning_content": "need weather",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]});
        assert_eq!(render_turn(&call), "tool call: get_weather {\"city\":\"Paris\"}");
        let result = json!({"role": "tool", "tool_call_id": "c1", "content": "18C"});
        assert_eq!(render_turn(&result), "18C");
        let parts = json!({"role": "user", "content": [{"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:"}}]});
        assert_eq!(render_turn(&parts), "what is this?\n[image_url]");
    }

    struct Echo(std::sync::Mutex<Vec<String>>);

    impl Scorer for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
            if let Ok(mut seen) = self.0.lock() {
                seen.extend(input.candidates.iter().cloned());
            }
            let scores = vec![0.0; input.candidates.len()];
            Box::pin(std::future::ready(Ok(ScoreOutput { scores, usage: Default::default() })))
        }
    }

    #[tokio::test]
    async fn include_reasoning_hands_the_scorer_the_rendering_with_reasoning() {
        let messages = [
            CandidateMessage::from_message(&json!({"content": "4", "reasoning_content": "2+2 is 4"})),
            CandidateMessage::from_text("5"),
        ];
        let candidates: Vec<String> = messages.iter().map(|m| m.render(false)).collect();
        let echo = Arc::new(Echo(std::sync::Mutex::new(Vec::new())));
        let input = ScoreInput {
            conversation: &[],
            candidates: &candidates,
            messages: &messages,
            response_format: None,
            tools: None,
        };
        IncludeReasoning { inner: echo.clone() }.score(input).await.unwrap();
        echo.score(input).await.unwrap();
        let seen = echo.0.lock().unwrap().clone();
        assert_eq!(seen, ["2+2 is 4\n\n4", "5", "4", "5"]);
    }

    #[test]
    fn reasoning_keeps_its_field_and_a_refusal_stands_for_missing_content() {
        let m = CandidateMessage::from_message(&json!({"content": "4", "reasoning": "2+2"}));
        assert_eq!(m.reasoning.map(|(f, _)| f.name()), Some("reasoning"));
        let refused = CandidateMessage::from_message(&json!({"content": null, "refusal": "I can't help with that."}));
        assert_eq!(refused.render(false), "I can't help with that.");
        let parts = CandidateMessage::from_message(
            &json!({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
        );
        assert_eq!(parts.render(false), "a\nb");
    }
}
