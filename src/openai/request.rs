//! Parsing and validation of `POST /v1/chat/completions` bodies.

use serde_json::{Map, Value};

use super::content_text;
use crate::bon::{Api, Steering};
use crate::error::Error;
use crate::score::Message;

/// OpenAI's own upper bound on `n`.
const OPENAI_MAX_N: u64 = 128;

/// A validated chat completion or legacy completion request.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    /// Which API the request speaks.
    pub api: Api,
    /// The body as received, minus the `bestofn` field: what the upstream is sent, adjusted
    /// only in `n`, `seed` and `stream`.
    pub body: Map<String, Value>,
    /// Whether `body` holds every field the client sent (none was taken out), so that the
    /// client's own bytes can stand for it when it is forwarded as it is.
    pub verbatim: bool,
    /// The conversation as plain text, for scorers (a legacy prompt is one user turn).
    pub conversation: Vec<Message>,
    /// `stream: true` was asked for.
    pub stream: bool,
    /// `stream_options.include_usage` was asked for.
    pub include_usage: bool,
    /// The client's `n`: how many choices it wants back.
    pub client_n: u32,
    /// The client's `seed`, if any.
    pub seed: Option<i64>,
    /// The client's `model`, if any.
    pub model: Option<String>,
    /// Per-request steering from the `bestofn` field and `x-bestofn-*` headers.
    pub steering: Steering,
}

impl ProxyRequest {
    /// The fields of the client's body that the proxy takes out for itself: they are not
    /// forwarded upstream.
    pub fn taken_fields(&self) -> &'static [&'static str] {
        match self.api {
            Api::Chat => &["bestofn"],
            Api::Completions => &["bestofn", "best_of"],
        }
    }
}

/// Raw values of the `x-bestofn-*` request headers, before validation.
#[derive(Debug, Default, Clone, Copy)]
pub struct SteeringHeaders<'a> {
    /// `x-bestofn-n`.
    pub n: Option<&'a str>,
    /// `x-bestofn-scorer`.
    pub scorer: Option<&'a str>,
    /// `x-bestofn-domain`.
    pub domain: Option<&'a str>,
    /// `x-bestofn-adaptive`.
    pub adaptive: Option<&'a str>,
}

/// Parses and validates a chat completion body. Errors name the field at fault.
pub fn parse_chat_request(bytes: &[u8], headers: SteeringHeaders<'_>) -> Result<ProxyRequest, Error> {
    let mut body = json_object(bytes)?;
    let steering_field = body.remove("bestofn");
    let conversation = parse_messages(body.get("messages"))?;
    finish(Api::Chat, body, conversation, steering_field, headers)
}

/// Parses and validates a legacy `/v1/completions` body, with OpenAI's `best_of` semantics:
/// `best_of` candidates are sampled and the best `n` returned.
pub fn parse_completion_request(bytes: &[u8], headers: SteeringHeaders<'_>) -> Result<ProxyRequest, Error> {
    let mut body = json_object(bytes)?;
    let steering_field = body.remove("bestofn");
    let prompt = match body.get("prompt") {
        None | Some(Value::Null) => return Err(Error::invalid("prompt", "'prompt' is required")),
        Some(Value::String(p)) => p.clone(),
        Some(Value::Array(list)) if list.len() == 1 && list[0].is_string() => {
            list[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(_)) => {
            return Err(Error::invalid(
                "prompt",
                "'prompt' must be one string: best-of-N selection is per prompt, send one request each",
            ));
        }
        Some(_) => return Err(Error::invalid("prompt", "'prompt' must be a string")),
    };
    let best_of_field = body.remove("best_of");
    let had_best_of = best_of_field.is_some();
    let best_of = match best_of_field {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(b) if b >= 1 => Some(b as u32),
            _ => {
                return Err(Error::invalid("best_of", format!("'best_of' must be a positive integer, got {v}")));
            }
        },
    };
    let conversation = vec![Message { role: "user".into(), content: prompt }];
    let mut request = finish(Api::Completions, body, conversation, steering_field, headers)?;
    request.verbatim &= !had_best_of;
    if let Some(best_of) = best_of {
        if best_of < request.client_n {
            return Err(Error::invalid(
                "best_of",
                format!("'best_of' ({best_of}) must be greater than or equal to 'n' ({})", request.client_n),
            ));
        }
        request.steering.n = Some(best_of);
    }
    Ok(request)
}

fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidRequest { message: format!("request body is not valid JSON: {e}"), param: None })?;
    match value {
        Value::Object(body) => Ok(body),
        _ => Err(Error::InvalidRequest { message: "request body must be a JSON object".into(), param: None }),
    }
}

/// Validates the fields both APIs share and assembles the request.
fn finish(
    api: Api,
    body: Map<String, Value>,
    conversation: Vec<Message>,
    steering_field: Option<Value>,
    headers: SteeringHeaders<'_>,
) -> Result<ProxyRequest, Error> {
    let had_steering_field = steering_field.is_some();
    if let Some(model) = body.get("model")
        && !model.is_string()
    {
        return Err(Error::invalid("model", "'model' must be a string"));
    }
    let stream = optional_bool(&body, "stream")?.unwrap_or(false);
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(Error::invalid(
                    "stream_options.include_usage",
                    "'stream_options.include_usage' must be a boolean",
                ));
            }
        },
        Some(_) => return Err(Error::invalid("stream_options", "'stream_options' must be an object")),
    };
    let client_n = match body.get("n") {
        None | Some(Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=OPENAI_MAX_N).contains(&n) => n as u32,
            _ => {
                return Err(Error::invalid(
                    "n",
                    format!("'n' must be an integer between 1 and {OPENAI_MAX_N}, got {v}"),
                ));
            }
        },
    };
    let seed = match body.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| Error::invalid("seed", "'seed' must be an integer"))?),
    };

    let mut steering = parse_steering_field(steering_field)?;
    merge_header_steering(&mut steering, headers)?;

    let model = body.get("model").and_then(Value::as_str).map(str::to_string);
    let verbatim = !had_steering_field;
    Ok(ProxyRequest { api, model, body, verbatim, conversation, stream, include_usage, client_n, seed, steering })
}

fn optional_bool(body: &Map<String, Value>, key: &str) -> Result<Option<bool>, Error> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::invalid(key, format!("'{key}' must be a boolean"))),
    }
}

fn parse_messages(messages: Option<&Value>) -> Result<Vec<Message>, Error> {
    let list = match messages {
        None | Some(Value::Null) => {
            return Err(Error::invalid("messages", "'messages' is required"));
        }
        Some(Value::Array(list)) => list,
        Some(_) => return Err(Error::invalid("messages", "'messages' must be an array")),
    };
    if list.is_empty() {
        return Err(Error::invalid("messages", "'messages' must contain at least one message"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let Value::Object(m) = m else {
                return Err(Error::invalid(format!("messages[{i}]"), format!("'messages[{i}]' must be an object")));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) if !r.is_empty() => r.clone(),
                _ => {
                    return Err(Error::invalid(
                        format!("messages[{i}].role"),
                        format!("'messages[{i}].role' must be a non-empty string"),
                    ));
                }
            };
            let content = m.get("content");
            match content {
                None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
                Some(_) => {
                    return Err(Error::invalid(
                        format!("messages[{i}].content"),
                        format!("'messages[{i}].content' must be a string or an array of content parts"),
                    ));
                }
            }
            Ok(Message { role, content: content_text(content) })
        })
        .collect()
}

fn parse_steering_n(raw: &Value, param: &str) -> Result<u32, Error> {
    match raw.as_u64() {
        Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Ok(n as u32),
        _ => Err(Error::invalid(param, format!("'{param}' must be a positive integer, got {raw}"))),
    }
}

fn parse_steering_field(field: Option<Value>) -> Result<Steering, Error> {
    let mut steering = Steering::default();
    let obj = match field {
        None | Some(Value::Null) => return Ok(steering),
        Some(Value::Object(obj)) => obj,
        Some(_) => return Err(Error::invalid("bestofn", "'bestofn' must be an object")),
    };
    for (key, value) in obj {
        let param = format!("bestofn.{key}");
        match key.as_str() {
            "n" => steering.n = Some(parse_steering_n(&value, &param)?),
            "scorer" | "domain" => {
                let Value::String(s) = value else {
                    return Err(Error::invalid(&param, format!("'{param}' must be a string")));
                };
                if key == "scorer" {
                    steering.scorer = Some(s);
                } else {
                    steering.domain = Some(s);
                }
            }
            "return_candidates" => {
                steering.return_candidates =
                    value.as_bool().ok_or_else(|| Error::invalid(&param, format!("'{param}' must be a boolean")))?;
            }
            "selection" => {
                steering.selection = Some(match value.as_str() {
                    Some("best") => crate::bon::SteeringSelection::Best,
                    Some("soft") => crate::bon::SteeringSelection::Soft,
                    Some("fuse") => crate::bon::SteeringSelection::Fuse,
                    _ => {
                        return Err(Error::invalid(
                            &param,
                            format!("'{param}' must be \"best\", \"soft\" or \"fuse\", got {value}"),
                        ));
                    }
                });
            }
            "adaptive" => {
                steering.adaptive = Some(
                    value.as_bool().ok_or_else(|| Error::invalid(&param, format!("'{param}' must be a boolean")))?,
                );
            }
            _ => {
                return Err(Error::invalid(
                    &param,
                    format!(
                        "unknown field '{param}'; expected one of n, scorer, domain, return_candidates, adaptive, selection"
                    ),
                ));
            }
        }
    }
    Ok(steering)
}

/// Headers fill in what the body field left unset: the body is the more specific channel.
fn merge_header_steering(steering: &mut Steering, headers: SteeringHeaders<'_>) -> Result<(), Error> {
    if steering.n.is_none()
        && let Some(raw) = headers.n
    {
        let n = raw.trim().parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            Error::invalid("x-bestofn-n", format!("header 'x-bestofn-n' must be a positive integer, got '{raw}'"))
        })?;
        steering.n = Some(n);
    }
    if steering.scorer.is_none() {
        steering.scorer = headers.scorer.map(|s| s.trim().to_string());
    }
    if steering.domain.is_none() {
        steering.domain = headers.domain.map(|s| s.trim().to_string());
    }
    if steering.adaptive.is_none()
        && let Some(raw) = headers.adaptive
    {
        steering.adaptive = Some(match raw.trim() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Error::invalid(
                    "x-bestofn-adaptive",
                    format!("header 'x-bestofn-adaptive' must be true or false, got '{raw}'"),
                ));
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ProxyRequest, Error> {
        parse_chat_request(body.as_bytes(), SteeringHeaders::default())
    }

    fn param_of(body: &str) -> Option<String> {
        match parse(body) {
            Err(e) => e.param().map(str::to_string),
            Ok(_) => panic!("accepted {body}"),
        }
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        assert_eq!(param_of(r#"{"model":"m"}"#).as_deref(), Some("messages"));
        assert_eq!(param_of(r#"{"messages":[]}"#).as_deref(), Some("messages"));
        assert_eq!(param_of(r#"{"messages":"hi"}"#).as_deref(), Some("messages"));
        assert_eq!(param_of(r#"{"messages":[{"content":"x"}]}"#).as_deref(), Some("messages[0].role"));
        assert_eq!(param_of(r#"{"messages":[{"role":"user","content":5}]}"#).as_deref(), Some("messages[0].content"));
        assert_eq!(param_of(r#"{"messages":[{"role":"user","content":"x"}],"n":0}"#).as_deref(), Some("n"));
        assert_eq!(
            param_of(r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#).as_deref(),
            Some("stream")
        );
        assert_eq!(
            param_of(r#"{"messages":[{"role":"user","content":"x"}],"bestofn":{"n":0}}"#).as_deref(),
            Some("bestofn.n")
        );
        assert_eq!(
            param_of(r#"{"messages":[{"role":"user","content":"x"}],"bestofn":{"nn":2}}"#).as_deref(),
            Some("bestofn.nn")
        );
        assert!(parse("{not json").is_err());
        assert!(parse("[1]").is_err());
    }

    #[test]
    fn strips_bestofn_and_keeps_everything_else() {
        let r = parse(r#"{"messages":[{"role":"user","content":"x"}],"vendor_x":{"a":1},"bestofn":{"n":3,"scorer":"rm","return_candidates":true}}"#).unwrap();
        assert!(!r.body.contains_key("bestofn"));
        assert_eq!(r.body["vendor_x"]["a"], 1);
        assert_eq!(r.steering.n, Some(3));
        assert_eq!(r.steering.scorer.as_deref(), Some("rm"));
        assert!(r.steering.return_candidates);
    }

    #[test]
    fn a_body_is_verbatim_only_when_no_field_was_taken_out() {
        let chat = |body: &str| parse_chat_request(body.as_bytes(), SteeringHeaders::default()).unwrap().verbatim;
        let legacy =
            |body: &str| parse_completion_request(body.as_bytes(), SteeringHeaders::default()).unwrap().verbatim;
        assert!(chat(r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#));
        assert!(!chat(r#"{"messages":[{"role":"user","content":"x"}],"bestofn":{"n":3}}"#));
        assert!(!chat(r#"{"messages":[{"role":"user","content":"x"}],"bestofn":null}"#));
        assert!(legacy(r#"{"prompt":"x","max_tokens":4}"#));
        assert!(!legacy(r#"{"prompt":"x","best_of":2}"#));
        assert!(!legacy(r#"{"prompt":"x","best_of":null}"#));
        assert!(!legacy(r#"{"prompt":"x","bestofn":{"n":2}}"#));
    }

    #[test]
    fn body_steering_wins_over_headers() {
        let headers = SteeringHeaders { n: Some("7"), scorer: Some("h"), domain: Some("math"), adaptive: None };
        let r =
            parse_chat_request(br#"{"messages":[{"role":"user","content":"x"}],"bestofn":{"n":3}}"#, headers).unwrap();
        assert_eq!(r.steering.n, Some(3));
        assert_eq!(r.steering.scorer.as_deref(), Some("h"));
        assert_eq!(r.steering.domain.as_deref(), Some("math"));
        let bad = SteeringHeaders { n: Some("many"), ..Default::default() };
        let e = parse_chat_request(br#"{"messages":[{"role":"user","content":"x"}]}"#, bad).unwrap_err();
        assert_eq!(e.param(), Some("x-bestofn-n"));
    }
}

#[cfg(test)]
mod completion_tests {
    use super::*;

    fn parse(body: &str) -> Result<ProxyRequest, Error> {
        parse_completion_request(body.as_bytes(), SteeringHeaders::default())
    }

    #[test]
    fn best_of_sets_candidates_and_must_cover_n() {
        let r = parse(r#"{"prompt":"2+2=","best_of":5,"n":2}"#).unwrap();
        assert_eq!((r.steering.n, r.client_n), (Some(5), 2));
        assert!(!r.body.contains_key("best_of"), "best_of is bestofn's to honour, not the upstream's");
        assert_eq!(r.conversation[0].content, "2+2=");
        assert_eq!(parse(r#"{"prompt":"x","best_of":1,"n":2}"#).unwrap_err().param(), Some("best_of"));
        assert_eq!(parse(r#"{"prompt":["a","b"]}"#).unwrap_err().param(), Some("prompt"));
        assert_eq!(parse(r#"{"model":"m"}"#).unwrap_err().param(), Some("prompt"));
        assert_eq!(parse(r#"{"prompt":"x","best_of":0}"#).unwrap_err().param(), Some("best_of"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_chat_request(&bytes, SteeringHeaders::default());
            let _ = parse_completion_request(&bytes, SteeringHeaders::default());
            let _ = crate::openai::normalize_error_body(&bytes);
        }

        #[test]
        fn json_shaped_bodies_never_panic(
            messages in prop::collection::vec(("[a-z]{0,6}", prop_oneof![Just(Value::Null), "[ -~]{0,12}".prop_map(Value::String), any::<i64>().prop_map(|n| serde_json::json!(n))]), 0..4),
            n in prop_oneof![Just(Value::Null), any::<i64>().prop_map(|n| serde_json::json!(n)), Just(serde_json::json!("x"))],
            steering_n in any::<i64>(),
            header_n in "[ -~]{0,6}",
        ) {
            let messages: Vec<Value> = messages.into_iter().map(|(role, content)| serde_json::json!({"role": role, "content": content})).collect();
            let body = serde_json::json!({"messages": messages, "n": n, "prompt": "p", "best_of": n, "bestofn": {"n": steering_n}});
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let headers = SteeringHeaders { n: Some(&header_n), scorer: None, domain: None, adaptive: None };
            if let Ok(r) = parse_chat_request(&bytes, headers) {
                prop_assert!(!r.conversation.is_empty());
                prop_assert!(r.client_n >= 1);
            }
            let _ = parse_completion_request(&bytes, headers);
        }
    }
}
