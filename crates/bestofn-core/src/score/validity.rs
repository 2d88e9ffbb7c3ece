//! A candidate's validity: whether it is an answer the request allows at all, before any
//! question of how good it is.
//!
//! A candidate is valid when
//! - its tool calls pass the request's `tools` and `tool_choice` ([`Tools::check`]), when the
//!   request has `tools`;
//! - its content conforms to the request's `response_format` (`json_object`, `json_schema`),
//!   when the request has one and the candidate calls no tool.
//!
//! The driver computes it for every candidate of a request that has `tools` or a
//! `response_format` (the `bestofn` object's `n_valid`), and applies `require_valid`; the
//! `verify` scorer gates its score on it.

use super::json_schema::{FormatCheck, ResponseFormat};
use super::message::CandidateMessage;
use super::tools::{ToolCallError, Tools};

/// Why a candidate is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Its tool calls do not pass.
    #[error("{0}")]
    ToolCall(#[from] ToolCallError),
    /// Its content does not conform to `response_format`.
    #[error("the content does not conform to response_format")]
    Format,
}

/// Whether the request asks anything of a candidate's validity that can fail: it has `tools`, or
/// a `response_format` that bestofn checks (`json_object`, `json_schema`).
pub fn has_requirements(tools: Option<&Tools>, response_format: Option<&ResponseFormat>) -> bool {
    tools.is_some() || response_format.is_some_and(|r| r.check() != &FormatCheck::Nothing)
}

/// Checks one candidate against the request's `tools` and `response_format` (see the module's
/// documentation).
pub fn check(
    message: &CandidateMessage,
    tools: Option<&Tools>,
    response_format: Option<&ResponseFormat>,
) -> Result<(), Invalid> {
    if let Some(tools) = tools {
        tools.check(message)?;
    }
    if message.tool_calls.is_empty()
        && let Some(format) = response_format
        && !format.check().passes(&message.content)
    {
        return Err(Invalid::Format);
    }
    Ok(())
}

/// Whether one candidate is valid ([`check`]).
pub fn is_valid(message: &CandidateMessage, tools: Option<&Tools>, response_format: Option<&ResponseFormat>) -> bool {
    check(message, tools, response_format).is_ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_tool_call_is_not_held_to_the_response_format_and_text_is() {
        let tools = Tools::prepare(
            Some(&json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}])),
            None,
        )
        .unwrap();
        let format = ResponseFormat::prepare(&json!({"type": "json_object"})).unwrap();
        let call = CandidateMessage::from_message(
            &json!({"content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}),
        );
        assert!(is_valid(&call, tools.as_ref(), Some(&format)));
        assert!(is_valid(&CandidateMessage::from_text(r#"{"a": 1}"#), tools.as_ref(), Some(&format)));
        assert_eq!(check(&CandidateMessage::from_text("a: 1"), tools.as_ref(), Some(&format)), Err(Invalid::Format));
        let text = ResponseFormat::prepare(&json!({"type": "text"})).unwrap();
        assert!(!has_requirements(None, Some(&text)) && has_requirements(None, Some(&format)));
        assert!(has_requirements(tools.as_ref(), None));
    }
}
