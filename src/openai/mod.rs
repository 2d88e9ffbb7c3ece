//! OpenAI wire format: request parsing and validation, response building, and normalisation of
//! the error bodies of the servers bestofn talks to.

mod request;
mod response;
pub mod stream;

pub use request::{LogprobsAsk, ProxyRequest, SteeringHeaders, parse_chat_request, parse_completion_request};
pub use response::{bestofn_object, build_response, usage_object};

use serde_json::Value;

use crate::error::Rejection;

const MAX_RAW_ERROR_CHARS: usize = 500;

/// Normalises the error bodies seen in the wild to OpenAI's fields: OpenAI and current vLLM
/// (`{"error":{"message","type","param","code"}}`, `code` a string for OpenAI and the status
/// number for vLLM), SGLang and old vLLM (flat `{"object":"error","message","type","param","code"}`),
/// TEI and OptiLLM (`{"error":"...","error_type":...}`), FastAPI (`{"detail":...}`, whose
/// validation errors name the field at fault in `loc`), and plain text. `param` and `code` are
/// kept as the backend sent them.
pub fn normalize_error_body(body: &[u8]) -> Rejection {
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
        return Rejection { message: raw(), ..Rejection::default() };
    };
    let str_field = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    // A code as sent: a string or a number (null and other shapes are no code).
    let code_field = |v: Option<&Value>| v.filter(|c| c.is_string() || c.is_number()).cloned();
    match obj.get("error") {
        Some(Value::Object(inner)) => Rejection {
            message: str_field(inner.get("message")).unwrap_or_else(raw),
            error_type: str_field(inner.get("type")),
            param: str_field(inner.get("param")),
            code: code_field(inner.get("code")),
        },
        Some(Value::String(message)) => Rejection {
            message: message.clone(),
            error_type: str_field(obj.get("error_type")).map(|t| t.to_lowercase()),
            ..Rejection::default()
        },
        _ => {
            if let Some(message) = str_field(obj.get("message")) {
                Rejection {
                    message,
                    error_type: str_field(obj.get("type")),
                    param: str_field(obj.get("param")),
                    code: code_field(obj.get("code")),
                }
            } else if let Some(detail) = obj.get("detail") {
                let message = match detail {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Rejection { message, param: fastapi_param(detail), ..Rejection::default() }
            } else {
                Rejection { message: raw(), ..Rejection::default() }
            }
        }
    }
}

/// The field at fault in FastAPI's validation errors (`{"detail": [{"loc": ["body",
/// "max_tokens"], "msg", "type"}]}`): the first error's location in the body, as OpenAI writes
/// a `param` (`max_tokens`, `messages[0].content`).
fn fastapi_param(detail: &Value) -> Option<String> {
    let loc = detail.as_array()?.first()?.get("loc")?.as_array()?;
    let mut param = String::new();
    for (i, part) in loc.iter().enumerate() {
        match part {
            Value::String(s) if i == 0 && s == "body" => {}
            Value::String(s) => {
                if !param.is_empty() {
                    param.push('.');
                }
                param.push_str(s);
            }
            Value::Number(n) => param.push_str(&format!("[{n}]")),
            _ => return None,
        }
    }
    (!param.is_empty()).then_some(param)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn param_and_code_are_kept_as_sent() {
        let cases: [(&str, Option<&str>, Value); 6] = [
            // vLLM: the status as a number.
            (
                r#"{"error":{"message":"max_tokens must be at least 1, got -5.","type":"BadRequestError","param":"max_tokens","code":400}}"#,
                Some("max_tokens"),
                json!(400),
            ),
            // OpenAI: a string.
            (
                r#"{"error":{"message":"Invalid 'max_tokens': integer below minimum value.","type":"invalid_request_error","param":"max_tokens","code":"integer_below_min_value"}}"#,
                Some("max_tokens"),
                json!("integer_below_min_value"),
            ),
            (r#"{"error":{"message":"m","type":"t","param":null,"code":null}}"#, None, Value::Null),
            // SGLang and old vLLM: flat.
            (
                r#"{"object":"error","message":"m","type":"BadRequestError","param":"n","code":400}"#,
                Some("n"),
                json!(400),
            ),
            // FastAPI's validation errors.
            (
                r#"{"detail":[{"type":"greater_than","loc":["body","messages",0,"content"],"msg":"bad","input":-5}]}"#,
                Some("messages[0].content"),
                Value::Null,
            ),
            (r#"{"error":"Input validation error","error_type":"Validation"}"#, None, Value::Null),
        ];
        for (body, param, code) in cases {
            let e = normalize_error_body(body.as_bytes());
            assert_eq!(e.param.as_deref(), param, "{body}");
            assert_eq!(e.code.unwrap_or(Value::Null), code, "{body}");
        }
    }
}
