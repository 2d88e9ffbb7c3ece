//! OpenAI wire format: request parsing and validation, response building, and normalisation of
//! the error bodies of the servers bestofn talks to.

mod request;
mod response;
pub mod stream;

pub use request::{ProxyRequest, SteeringHeaders, parse_chat_request, parse_completion_request};
pub use response::{bestofn_object, build_response, usage_object};

use serde_json::Value;

/// The text of a message `content`: a string, or the concatenated `text` parts of an array of
/// content parts; anything else (null for tool calls, images) contributes nothing.
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

/// An error body from any backend, reduced to OpenAI's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendError {
    /// The message, or the raw body (truncated) when no message could be found.
    pub message: String,
    /// The error type, when the backend gave one.
    pub error_type: Option<String>,
    /// The field at fault, when the backend named one.
    pub param: Option<String>,
}

const MAX_RAW_ERROR_CHARS: usize = 500;

/// Normalises the error bodies seen in the wild: OpenAI and current vLLM
/// (`{"error":{"message",...}}`), SGLang and old vLLM (flat `{"object":"error","message",...}`),
/// TEI and OptiLLM (`{"error":"...","error_type":...}`), FastAPI (`{"detail":...}`), and plain text.
pub fn normalize_error_body(body: &[u8]) -> BackendError {
    let raw = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut cut: String = text.chars().take(MAX_RAW_ERROR_CHARS).collect();
        if cut.len() < text.len() {
            cut.push('…');
        }
        if cut.is_empty() { "(empty body)".to_string() } else { cut }
    };
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return BackendError { message: raw(), error_type: None, param: None };
    };
    let str_field = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match obj.get("error") {
        Some(Value::Object(inner)) => BackendError {
            message: str_field(inner.get("message")).unwrap_or_else(raw),
            error_type: str_field(inner.get("type")),
            param: str_field(inner.get("param")),
        },
        Some(Value::String(message)) => BackendError {
            message: message.clone(),
            error_type: str_field(obj.get("error_type")).map(|t| t.to_lowercase()),
            param: None,
        },
        _ => {
            if let Some(message) = str_field(obj.get("message")) {
                BackendError { message, error_type: str_field(obj.get("type")), param: str_field(obj.get("param")) }
            } else if let Some(detail) = obj.get("detail") {
                let message = match detail {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                BackendError { message, error_type: None, param: None }
            } else {
                BackendError { message: raw(), error_type: None, param: None }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_every_known_error_shape() {
        let cases: [(&str, &str, Option<&str>); 6] = [
            (
                r#"{"error":{"message":"bad n","type":"BadRequestError","param":null,"code":400}}"#,
                "bad n",
                Some("BadRequestError"),
            ),
            (
                r#"{"object":"error","message":"no score api","type":"BadRequestError","param":null,"code":400}"#,
                "no score api",
                Some("BadRequestError"),
            ),
            (r#"{"error":"Batch size error","error_type":"Validation"}"#, "Batch size error", Some("validation")),
            (r#"{"error":"boom"}"#, "boom", None),
            (r#"{"detail":"Not Found"}"#, "Not Found", None),
            ("upstream exploded", "upstream exploded", None),
        ];
        for (body, message, error_type) in cases {
            let e = normalize_error_body(body.as_bytes());
            assert_eq!(e.message, message, "{body}");
            assert_eq!(e.error_type.as_deref(), error_type, "{body}");
        }
        assert_eq!(normalize_error_body(b"").message, "(empty body)");
    }

    #[test]
    fn content_text_joins_text_parts_and_ignores_others() {
        let parts = serde_json::json!([
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": "b"}
        ]);
        assert_eq!(content_text(Some(&parts)), "a\nb");
        assert_eq!(content_text(Some(&Value::Null)), "");
        assert_eq!(content_text(Some(&Value::String("hi".into()))), "hi");
    }
}
