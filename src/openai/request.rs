//! Parsing and validation of `POST /v1/chat/completions` bodies.
//!
//! Only the members bestofn reads are parsed, each from its raw text; the rest of the body is
//! checked as JSON and left as the client's text ([`ClientBody`]) until something needs it as
//! fields. A `serde_json::Value` tree of the whole body was about thirty allocations of a
//! pass-through's ninety (issue #17, measured then; the history of BENCHMARKS.md is in git).

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::bon::{Api, ClientBody, RunRequest, Steering};
use crate::error::Error;
use crate::score::{Message, ResponseFormat, Tools, render_turn};

/// OpenAI's own upper bound on `n`.
const OPENAI_MAX_N: u64 = 128;

/// A validated chat completion or legacy completion request.
#[derive(Debug)]
pub struct ProxyRequest {
    /// Which API the request speaks.
    pub api: Api,
    /// The body as received: what the upstream is sent, less the `bestofn` field and adjusted
    /// only in `n`, `seed` and `stream`.
    pub body: ClientBody,
    /// Whether the body holds no field the proxy takes out for itself, so that the client's own
    /// bytes can stand for it when it is forwarded as it is.
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
    /// The log probabilities the client asked for: an answer carries the upstream's only then.
    pub logprobs: LogprobsAsk,
}

/// The log probabilities a client asked for. A best-of-N answer passes the winner's on only when
/// they were asked for, each token's alternatives cut to the number asked; bestofn asks for none
/// itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogprobsAsk {
    /// Chat `logprobs: true`, or a legacy completion's `logprobs` set to a number.
    pub asked: bool,
    /// Alternatives kept per token: chat `top_logprobs` (0 when unset); for a legacy
    /// completion its `logprobs` number plus one (its `top_logprobs` may hold the sampled token
    /// beside that many alternatives).
    pub top: usize,
}

impl LogprobsAsk {
    /// What a request asks, from its `logprobs` and `top_logprobs` (read leniently: the
    /// upstream validates them, and a value of another type asks for nothing here).
    fn read(api: Api, logprobs: Option<Value>, top_logprobs: Option<Value>) -> LogprobsAsk {
        let count = |v: &Value| v.as_u64().map(|n| n as usize);
        match api {
            Api::Chat => LogprobsAsk {
                asked: logprobs.as_ref().and_then(Value::as_bool).unwrap_or(false),
                top: top_logprobs.as_ref().and_then(count).unwrap_or(0),
            },
            Api::Completions => match logprobs.as_ref().and_then(count) {
                Some(top) => LogprobsAsk { asked: true, top: top + 1 },
                None => LogprobsAsk::default(),
            },
        }
    }
}

impl ProxyRequest {
    /// What the engine's best-of-N run needs of this request.
    pub fn run_request<'a>(
        &'a self,
        verbatim: Option<&'a Bytes>,
        response_format: Option<&'a ResponseFormat>,
        tools: Option<&'a Tools>,
    ) -> RunRequest<'a> {
        RunRequest {
            api: self.api,
            body: &self.body,
            verbatim,
            conversation: &self.conversation,
            seed: self.seed,
            response_format,
            tools,
        }
    }

    /// The fields of the client's body that the proxy takes out for itself: they are not
    /// forwarded upstream.
    pub fn taken_fields(&self) -> &'static [&'static str] {
        taken_fields(self.api)
    }
}

fn taken_fields(api: Api) -> &'static [&'static str] {
    match api {
        Api::Chat => &["bestofn"],
        Api::Completions => &["bestofn", "best_of"],
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

/// A top-level member bestofn reads; its value is its place in [`MEMBER_NAMES`].
#[derive(Debug, Clone, Copy)]
enum Member {
    Model,
    Messages,
    Prompt,
    Stream,
    StreamOptions,
    N,
    Seed,
    Bestofn,
    BestOf,
    Temperature,
    MaxTokens,
    MaxCompletionTokens,
    Logprobs,
    TopLogprobs,
}

/// The names of the [`Member`]s, in their order.
const MEMBER_NAMES: [&str; 14] = [
    "model",
    "messages",
    "prompt",
    "stream",
    "stream_options",
    "n",
    "seed",
    "bestofn",
    "best_of",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
];

/// The top-level members of a body that bestofn reads, each as its raw JSON text (a member
/// set to null is present, as `null`).
struct Members<'a>([Option<&'a RawValue>; MEMBER_NAMES.len()]);

impl<'a> Members<'a> {
    /// The members of `bytes`, which must be one JSON object.
    fn read(bytes: &'a [u8]) -> Result<Members<'a>, Error> {
        // One check of the whole text, instead of one per string parsed from a byte slice.
        let text = std::str::from_utf8(bytes).map_err(|e| Error::InvalidRequest {
            message: format!("request body is not valid JSON: it is not UTF-8 ({e})"),
            param: None,
        })?;
        let found = read_members(text, &MEMBER_NAMES).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                Error::InvalidRequest { message: "request body must be a JSON object".into(), param: None }
            }
            _ => Error::InvalidRequest { message: format!("request body is not valid JSON: {e}"), param: None },
        })?;
        Ok(Members(found))
    }

    /// The raw value of `member`, when the body has it.
    fn get(&self, member: Member) -> Option<&'a RawValue> {
        self.0[member as usize]
    }

    /// The client's body, for the engine.
    fn body(&self, api: Api, text: Bytes) -> ClientBody {
        let sets_token_limit = self.get(Member::MaxTokens).is_some() || self.get(Member::MaxCompletionTokens).is_some();
        ClientBody::new(text, taken_fields(api), self.get(Member::Temperature).is_some(), sets_token_limit)
    }
}

/// The members of the JSON object `text` named in `names`, each as its raw text (the last one
/// when a name repeats, as a parsed map keeps it); every other member is checked as JSON and
/// skipped. Nothing is allocated: keys are compared where they lie (or, when escaped, in the
/// parser's scratch buffer) and values are slices of `text`.
fn read_members<'a, const K: usize>(
    text: &'a str,
    names: &[&str; K],
) -> Result<[Option<&'a RawValue>; K], serde_json::Error> {
    let mut parser = serde_json::Deserializer::from_str(text);
    let members = MemberSeed { names }.deserialize(&mut parser)?;
    parser.end()?;
    Ok(members)
}

/// Reads an object's members named in `names` (see [`read_members`]).
struct MemberSeed<'n, const K: usize> {
    names: &'n [&'n str; K],
}

impl<'de, const K: usize> DeserializeSeed<'de> for MemberSeed<'_, K> {
    type Value = [Option<&'de RawValue>; K];

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, const K: usize> Visitor<'de> for MemberSeed<'_, K> {
    type Value = [Option<&'de RawValue>; K];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = [None; K];
        while let Some(index) = map.next_key_seed(NameIndex { names: self.names })? {
            match index {
                Some(i) => found[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// A member's name as its place in `names`, or None when it is not there.
struct NameIndex<'n, const K: usize> {
    names: &'n [&'n str; K],
}

impl<'de, const K: usize> DeserializeSeed<'de> for NameIndex<'_, K> {
    type Value = Option<usize>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, const K: usize> Visitor<'de> for NameIndex<'_, K> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.names.iter().position(|n| *n == name))
    }
}

/// A raw member's value, parsed; None when absent or null. Scalars and short objects only: a
/// `Value` of them costs little.
fn value_of(raw: Option<&RawValue>) -> Option<Value> {
    // A raw value is valid JSON; only nesting beyond the parser's limit fails here, and no
    // member read this way is legitimately that deep.
    raw.and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok()).filter(|v| !v.is_null())
}

/// The first byte of a raw value, which tells its type.
fn first_byte(raw: &RawValue) -> u8 {
    raw.get().bytes().next().unwrap_or(b'n')
}

/// Parses and validates a chat completion body. Errors name the field at fault.
pub fn parse_chat_request(bytes: Bytes, headers: SteeringHeaders<'_>) -> Result<ProxyRequest, Error> {
    let members = Members::read(&bytes)?;
    let conversation = parse_messages(members.get(Member::Messages))?;
    let body = members.body(Api::Chat, bytes.clone());
    finish(Api::Chat, &members, body, conversation, headers)
}

/// Parses and validates a legacy `/v1/completions` body, with OpenAI's `best_of` semantics:
/// `best_of` candidates are sampled and the best `n` returned.
pub fn parse_completion_request(bytes: Bytes, headers: SteeringHeaders<'_>) -> Result<ProxyRequest, Error> {
    let members = Members::read(&bytes)?;
    let prompt = match value_of(members.get(Member::Prompt)) {
        None => return Err(Error::invalid("prompt", "'prompt' is required")),
        Some(Value::String(p)) => p,
        Some(Value::Array(mut list)) if list.len() == 1 && list[0].is_string() => match list.pop() {
            Some(Value::String(p)) => p,
            _ => String::new(),
        },
        Some(Value::Array(_)) => {
            return Err(Error::invalid(
                "prompt",
                "'prompt' must be one string: best-of-N selection is per prompt, send one request each",
            ));
        }
        Some(_) => return Err(Error::invalid("prompt", "'prompt' must be a string")),
    };
    let best_of = match value_of(members.get(Member::BestOf)) {
        None => None,
        Some(v) => match v.as_u64() {
            Some(b) if b >= 1 => Some(b as u32),
            _ => {
                return Err(Error::invalid("best_of", format!("'best_of' must be a positive integer, got {v}")));
            }
        },
    };
    let conversation = vec![Message { role: "user".into(), content: prompt }];
    let body = members.body(Api::Completions, bytes.clone());
    let mut request = finish(Api::Completions, &members, body, conversation, headers)?;
    request.verbatim &= members.get(Member::BestOf).is_none();
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

/// Validates the fields both APIs share and assembles the request.
fn finish(
    api: Api,
    members: &Members<'_>,
    body: ClientBody,
    conversation: Vec<Message>,
    headers: SteeringHeaders<'_>,
) -> Result<ProxyRequest, Error> {
    let model = match value_of(members.get(Member::Model)) {
        None => None,
        Some(Value::String(model)) => Some(model),
        Some(_) => return Err(Error::invalid("model", "'model' must be a string")),
    };
    let stream = match value_of(members.get(Member::Stream)) {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(Error::invalid("stream", "'stream' must be a boolean")),
    };
    let include_usage = match value_of(members.get(Member::StreamOptions)) {
        None => false,
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
    let client_n = match value_of(members.get(Member::N)) {
        None => 1,
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
    let seed = match value_of(members.get(Member::Seed)) {
        None => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| Error::invalid("seed", "'seed' must be an integer"))?),
    };

    let mut steering = parse_steering_field(value_of(members.get(Member::Bestofn)))?;
    merge_header_steering(&mut steering, headers)?;

    let verbatim = members.get(Member::Bestofn).is_none();
    let logprobs =
        LogprobsAsk::read(api, value_of(members.get(Member::Logprobs)), value_of(members.get(Member::TopLogprobs)));
    Ok(ProxyRequest {
        api,
        body,
        model,
        verbatim,
        conversation,
        stream,
        include_usage,
        client_n,
        seed,
        steering,
        logprobs,
    })
}

/// The members of a message bestofn reads: its role and what scorers see of it.
const MESSAGE_MEMBERS: [&str; 5] = ["role", "content", "tool_calls", "function_call", "refusal"];

fn parse_messages(messages: Option<&RawValue>) -> Result<Vec<Message>, Error> {
    let list = match messages.map(first_byte) {
        None | Some(b'n') => return Err(Error::invalid("messages", "'messages' is required")),
        Some(b'[') => messages.map(|raw| serde_json::from_str::<Vec<&RawValue>>(raw.get())),
        Some(_) => return Err(Error::invalid("messages", "'messages' must be an array")),
    };
    let list = match list {
        Some(Ok(list)) => list,
        _ => return Err(Error::invalid("messages", "'messages' must be an array")),
    };
    if list.is_empty() {
        return Err(Error::invalid("messages", "'messages' must contain at least one message"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let not_an_object =
                || Error::invalid(format!("messages[{i}]"), format!("'messages[{i}]' must be an object"));
            if first_byte(m) != b'{' {
                return Err(not_an_object());
            }
            let [role, content, tool_calls, function_call, refusal] =
                read_members(m.get(), &MESSAGE_MEMBERS).map_err(|_| not_an_object())?;
            let role = match role.map(|r| serde_json::from_str::<String>(r.get())) {
                Some(Ok(r)) if !r.is_empty() => r,
                _ => {
                    return Err(Error::invalid(
                        format!("messages[{i}].role"),
                        format!("'messages[{i}].role' must be a non-empty string"),
                    ));
                }
            };
            let bad_content = |why: String| Error::invalid(format!("messages[{i}].content"), why);
            let content = match content.map(|c| (first_byte(c), c.get())) {
                None | Some((b'n', _)) => Value::Null,
                Some((b'"', text)) => {
                    Value::String(serde_json::from_str::<String>(text).map_err(|e| bad_content(e.to_string()))?)
                }
                Some((b'[', text)) => serde_json::from_str::<Value>(text)
                    .map_err(|e| bad_content(format!("'messages[{i}].content' is not valid JSON: {e}")))?,
                Some(_) => {
                    return Err(bad_content(format!(
                        "'messages[{i}].content' must be a string or an array of content parts"
                    )));
                }
            };
            // A plain text turn as it is; anything more (content parts, tool calls, a legacy
            // function call, a refusal) in the one rendering scorers see (`score::render_turn`).
            let calls = value_of(tool_calls).or_else(|| value_of(function_call).map(|f| json!([{"function": f}])));
            let refusal = value_of(refusal);
            let content = match (content, calls, refusal) {
                (Value::String(text), None, None) => text,
                (Value::Null, None, None) => String::new(),
                (content, calls, refusal) => {
                    render_turn(&json!({"content": content, "tool_calls": calls, "refusal": refusal}))
                }
            };
            Ok(Message { role, content })
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
        parse_chat_request(Bytes::copy_from_slice(body.as_bytes()), SteeringHeaders::default())
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
    fn members_are_read_as_a_parsed_map_keeps_them() {
        // A repeated member: the last one counts, as in a map; an escaped name is the same name.
        let r = parse(r#"{"n":5,"messages":[{"role":"user","content":"a\"b"}],"\u006e":2}"#).unwrap();
        assert_eq!(r.client_n, 2);
        assert_eq!(r.conversation[0].content, "a\"b");
        assert!(!r.body.sets_temperature() && !r.body.sets_token_limit());
        // A member set to null is set: the domain's default does not replace it.
        let r = parse(r#"{"messages":[{"role":"user","content":"x"}],"temperature":null,"max_completion_tokens":3}"#)
            .unwrap();
        assert!(r.body.sets_temperature() && r.body.sets_token_limit());
        let r = parse(r#"{"messages":[{"role":"user","content":"x"}],"seed":-5,"stream":true,"stream_options":{"include_usage":true},"model":"m"}"#)
            .unwrap();
        assert_eq!((r.seed, r.stream, r.include_usage, r.model.as_deref()), (Some(-5), true, true, Some("m")));
        assert_eq!(
            param_of(r#"{"messages":[{"role":"user","content":"x"}],"n":1,"n":0}"#).as_deref(),
            Some("n"),
            "the last n is the one checked"
        );
        assert_eq!(param_of(r#"{"messages":[{"role":"user","content":"x"}],"model":7}"#).as_deref(), Some("model"));
        assert_eq!(param_of(r#"{"messages":[7]}"#).as_deref(), Some("messages[0]"));
        let parts = parse(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"p"},{"text":"q"}]}]}"#);
        assert_eq!(parts.unwrap().conversation[0].content, "p\nq");
    }

    #[test]
    fn every_turn_of_an_agents_conversation_reaches_scorers() {
        let r = parse(
            r#"{"messages":[
                {"role":"user","content":[{"type":"text","text":"Weather?"},{"type":"image_url","image_url":{"url":"x"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},
                {"role":"tool","tool_call_id":"c","content":"18C"},
                {"role":"assistant","content":null,"function_call":{"name":"get_time","arguments":"{}"}},
                {"role":"assistant","content":null,"refusal":"I can't help with that."}
            ]}"#,
        )
        .unwrap();
        let contents: Vec<&str> = r.conversation.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            contents,
            [
                "Weather?\n[image_url]",
                "tool call: get_weather {\"city\":\"Paris\"}",
                "18C",
                "tool call: get_time {}",
                "I can't help with that."
            ]
        );
    }

    #[test]
    fn the_body_is_checked_as_json_but_parsed_into_fields_only_when_read() {
        let depth = 200;
        let deep = format!(
            r#"{{"messages":[{{"role":"user","content":"x"}}],"vendor":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let r = parse(&deep).expect("a pass-through forwards what it need not read");
        assert!(r.verbatim);
        let e = r.body.fields().expect_err("a map of it is beyond the parser's recursion limit");
        assert!(e.to_string().contains("recursion limit"), "{e}");
        assert!(parse(r#"{"messages":[{"role":"user","content":"x"}],"vendor":[}"#).is_err());
        assert!(parse(r#"{"messages":[{"role":"user","content":"x"}]} trailing"#).is_err());
    }

    #[test]
    fn strips_bestofn_and_keeps_everything_else() {
        let r = parse(r#"{"messages":[{"role":"user","content":"x"}],"vendor_x":{"a":1},"bestofn":{"n":3,"scorer":"rm","return_candidates":true}}"#).unwrap();
        assert!(!r.body.fields().unwrap().contains_key("bestofn"));
        assert_eq!(r.body.fields().unwrap()["vendor_x"]["a"], 1);
        assert_eq!(r.steering.n, Some(3));
        assert_eq!(r.steering.scorer.as_deref(), Some("rm"));
        assert!(r.steering.return_candidates);
    }

    #[test]
    fn a_body_is_verbatim_only_when_no_field_was_taken_out() {
        let chat = |body: &str| {
            parse_chat_request(Bytes::copy_from_slice(body.as_bytes()), SteeringHeaders::default()).unwrap().verbatim
        };
        let legacy = |body: &str| {
            parse_completion_request(Bytes::copy_from_slice(body.as_bytes()), SteeringHeaders::default())
                .unwrap()
                .verbatim
        };
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
        let r = parse_chat_request(
            Bytes::from_static(br#"{"messages":[{"role":"user","content":"x"}],"bestofn":{"n":3}}"#),
            headers,
        )
        .unwrap();
        assert_eq!(r.steering.n, Some(3));
        assert_eq!(r.steering.scorer.as_deref(), Some("h"));
        assert_eq!(r.steering.domain.as_deref(), Some("math"));
        let bad = SteeringHeaders { n: Some("many"), ..Default::default() };
        let e = parse_chat_request(Bytes::from_static(br#"{"messages":[{"role":"user","content":"x"}]}"#), bad)
            .unwrap_err();
        assert_eq!(e.param(), Some("x-bestofn-n"));
    }
}

#[cfg(test)]
mod completion_tests {
    use super::*;

    fn parse(body: &str) -> Result<ProxyRequest, Error> {
        parse_completion_request(Bytes::copy_from_slice(body.as_bytes()), SteeringHeaders::default())
    }

    #[test]
    fn best_of_sets_candidates_and_must_cover_n() {
        let r = parse(r#"{"prompt":"2+2=","best_of":5,"n":2}"#).unwrap();
        assert_eq!((r.steering.n, r.client_n), (Some(5), 2));
        assert!(
            !r.body.fields().unwrap().contains_key("best_of"),
            "best_of is bestofn's to honour, not the upstream's"
        );
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
            let _ = parse_chat_request(Bytes::copy_from_slice(&bytes), SteeringHeaders::default());
            let _ = parse_completion_request(Bytes::copy_from_slice(&bytes), SteeringHeaders::default());
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
            if let Ok(r) = parse_chat_request(Bytes::from(bytes.clone()), headers) {
                prop_assert!(!r.conversation.is_empty());
                prop_assert!(r.client_n >= 1);
            }
            let _ = parse_completion_request(Bytes::from(bytes), headers);
        }
    }
}
