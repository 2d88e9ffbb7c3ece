//! The JSON and JSON Schema checks of the `verify` scorer: a request's `response_format`
//! (`json_object`: the reply parses as a JSON object; `json_schema`: it also conforms to the
//! schema) and, for tool calls, a tool's `parameters` schema and a call's `arguments`.
//!
//! Schemas are compiled by the `jsonschema` crate: draft 2020-12 unless the schema's `$schema`
//! names another draft (OpenAI's structured outputs accept a subset of 2020-12); every keyword
//! is checked (`$ref`/`$defs`, `anyOf`/`oneOf`/`allOf`, `pattern`, `const`, `enum`, bounds,
//! `additionalProperties` at any depth, ...), and `format` is asserted (`date`, `email`, `uuid`,
//! ...; a format the crate does not know is ignored). Nothing outside the schema is ever
//! fetched, over the network or from a file: a `$ref` to anything but the schema itself does
//! not compile, nor does an invalid `pattern` or a keyword of the wrong type.
//!
//! A request's schema is compiled once ([`ResponseFormat::prepare`], when a best-of-N request is
//! planned, or a recorded row is rescored), and the compiled validator is shared by every
//! candidate of the request.

use std::sync::Arc;

use serde_json::Value;

use crate::error::Error;

/// The request field a `response_format` schema that does not compile is reported under.
pub const SCHEMA_PARAM: &str = "response_format.json_schema.schema";

/// A schema that does not compile: why, as the `jsonschema` crate says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidSchema {
    /// What is wrong with the schema (an unresolvable `$ref`, an invalid `pattern`, ...).
    pub message: String,
}

/// A compiled JSON Schema, cheap to clone (the validator is shared).
#[derive(Clone)]
pub struct CompiledSchema {
    /// The schema as given.
    schema: Arc<Value>,
    /// The compiled validator.
    validator: Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CompiledSchema").field(&self.schema).finish()
    }
}

/// Two compiled schemas are equal when they were compiled from equal schemas.
impl PartialEq for CompiledSchema {
    fn eq(&self, other: &Self) -> bool {
        self.schema == other.schema
    }
}

impl CompiledSchema {
    /// Compiles `schema` (see the module's documentation for the draft, `format` and `$ref`).
    pub fn compile(schema: &Value) -> Result<CompiledSchema, InvalidSchema> {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .offline()
            .build(schema)
            .map_err(|e| InvalidSchema { message: e.to_string() })?;
        Ok(CompiledSchema { schema: Arc::new(schema.clone()), validator: Arc::new(validator) })
    }

    /// The schema it was compiled from.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Whether `value` conforms to the schema.
    pub fn is_valid(&self, value: &Value) -> bool {
        self.validator.is_valid(value)
    }

    /// Up to `at_most` reasons `value` does not conform, each with the JSON pointer of the
    /// offending part of `value` (empty when it conforms).
    pub fn violations(&self, value: &Value, at_most: usize) -> Vec<String> {
        self.validator
            .iter_errors(value)
            .take(at_most)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") }
            })
            .collect()
    }
}

/// A reply's JSON value: the reply parsed whole, less a surrounding Markdown code fence
/// (```` ```json ```` or ```` ``` ````); `None` when it is not JSON.
pub fn reply_json(reply: &str) -> Option<Value> {
    let t = reply.trim();
    let t = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).unwrap_or(t);
    let t = t.strip_suffix("```").unwrap_or(t);
    serde_json::from_str(t.trim()).ok()
}

/// What a `response_format` asks of a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum FormatCheck {
    /// Nothing bestofn checks (`text`, or a type it does not know).
    Nothing,
    /// `json_object`: a JSON object.
    JsonObject,
    /// `json_schema`: a JSON value conforming to the schema (any JSON value when the request
    /// gives no schema).
    Schema(CompiledSchema),
}

impl FormatCheck {
    /// Whether `reply` passes the check (always, for [`FormatCheck::Nothing`]).
    pub fn passes(&self, reply: &str) -> bool {
        match self {
            FormatCheck::Nothing => true,
            FormatCheck::JsonObject => reply_json(reply).is_some_and(|v| v.is_object()),
            FormatCheck::Schema(schema) => reply_json(reply).is_some_and(|v| schema.is_valid(&v)),
        }
    }
}

/// A request's `response_format` as the scorers receive it: the client's value, and what it
/// asks of a reply with its schema compiled. Prepared once per request (or recorded row) and
/// shared by every candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseFormat {
    /// The client's `response_format`, as sent.
    value: Value,
    /// What it asks of a reply.
    check: FormatCheck,
}

impl ResponseFormat {
    /// Prepares a `response_format` value: `json_object` is checked as "parses as a JSON
    /// object", `json_schema` compiles `json_schema.schema` (absent: any JSON value), any other
    /// type asks nothing. A schema that does not compile is an invalid request naming
    /// [`SCHEMA_PARAM`].
    pub fn prepare(value: &Value) -> Result<ResponseFormat, Error> {
        let check = match value.get("type").and_then(Value::as_str) {
            Some("json_object") => FormatCheck::JsonObject,
            Some("json_schema") => {
                let empty = Value::Object(serde_json::Map::new());
                let schema = value.pointer("/json_schema/schema").unwrap_or(&empty);
                let compiled = CompiledSchema::compile(schema).map_err(|e| {
                    Error::invalid(
                        SCHEMA_PARAM,
                        format!("'{SCHEMA_PARAM}' is not a JSON Schema bestofn can check: {e}"),
                    )
                })?;
                FormatCheck::Schema(compiled)
            }
            _ => FormatCheck::Nothing,
        };
        Ok(ResponseFormat { value: value.clone(), check })
    }

    /// The client's `response_format`, as sent.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// What it asks of a reply.
    pub fn check(&self) -> &FormatCheck {
        &self.check
    }
}

/// Why a tool call's `arguments` do not fit the tool's `parameters`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentsError {
    /// The arguments are not JSON (or not a JSON object).
    #[error("the arguments are not a JSON object: {0}")]
    NotAnObject(String),
    /// The arguments break the schema: the first few reasons, each with its JSON pointer.
    #[error("the arguments do not conform to the parameters schema: {}", .0.join("; "))]
    Violations(Vec<String>),
}

/// How many reasons [`check_tool_arguments`] reports at most.
const MAX_REASONS: usize = 3;

/// Compiles a tool's `parameters` schema (OpenAI's `tools[].function.parameters`); a tool that
/// gives none takes an empty parameter list, checked as "any JSON object".
pub fn compile_tool_parameters(parameters: Option<&Value>) -> Result<CompiledSchema, InvalidSchema> {
    match parameters {
        Some(schema) => CompiledSchema::compile(schema),
        None => CompiledSchema::compile(&serde_json::json!({"type": "object"})),
    }
}

/// Checks a tool call's `arguments` (the JSON text of `tool_calls[].function.arguments`)
/// against its tool's compiled `parameters`: they must parse as a JSON object that conforms.
pub fn check_tool_arguments(parameters: &CompiledSchema, arguments: &str) -> Result<(), ArgumentsError> {
    let value: Value = serde_json::from_str(arguments).map_err(|e| ArgumentsError::NotAnObject(e.to_string()))?;
    if !value.is_object() {
        return Err(ArgumentsError::NotAnObject(format!("a JSON {}", json_kind(&value))));
    }
    let reasons = parameters.violations(&value, MAX_REASONS);
    if reasons.is_empty() { Ok(()) } else { Err(ArgumentsError::Violations(reasons)) }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema_format(schema: Value) -> Result<ResponseFormat, Error> {
        ResponseFormat::prepare(&json!({"type": "json_schema", "json_schema": {"name": "order", "schema": schema}}))
    }

    /// An order: `$ref`/`$defs`, `oneOf`, `pattern`, `const`, `format` and a nested
    /// `additionalProperties: false`, the keywords the hand-written subset let through.
    fn order_schema() -> Value {
        json!({
            "type": "object",
            "$defs": {
                "item": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "qty": {"type": "integer"}},
                    "required": ["sku", "qty"],
                    "additionalProperties": false
                }
            },
            "properties": {
                "version": {"const": 2},
                "email": {"type": "string", "format": "email"},
                "placed": {"type": "string", "format": "date"},
                "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
                "payment": {"oneOf": [
                    {"type": "object", "properties": {"card": {"type": "string"}}, "required": ["card"]},
                    {"type": "object", "properties": {"iban": {"type": "string"}}, "required": ["iban"]}
                ]}
            },
            "required": ["version", "email", "placed", "items", "payment"],
            "additionalProperties": false
        })
    }

    const CONFORMING: &str = r#"{"version": 2, "email": "ada@example.com", "placed": "2024-02-29",
        "items": [{"sku": "TEA-0001", "qty": 2}], "payment": {"card": "4242"}}"#;

    #[test]
    fn every_keyword_of_the_schema_is_checked() {
        let format = schema_format(order_schema()).unwrap();
        assert!(format.check().passes(CONFORMING));
        assert!(format.check().passes(&format!("```json\n{CONFORMING}\n```")), "a fenced reply is still JSON");
        let conforming: Value = serde_json::from_str(CONFORMING).unwrap();
        let violating = |pointer: &str, value: Value| {
            let mut v = conforming.clone();
            *v.pointer_mut(pointer).unwrap() = value;
            v.to_string()
        };
        // One candidate per keyword it breaks.
        let cases = [
            ("$ref (an item that is not a $defs/item)", violating("/items/0", json!({"sku": "TEA-0001"}))),
            ("oneOf (both branches match)", violating("/payment", json!({"card": "4242", "iban": "DE00"}))),
            ("oneOf (no branch matches)", violating("/payment", json!({"cash": true}))),
            ("pattern", violating("/items/0/sku", json!("tea-1"))),
            ("const", violating("/version", json!(3))),
            ("format email", violating("/email", json!("not an address"))),
            ("format date", violating("/placed", json!("2023-02-29"))),
            ("nested additionalProperties false", violating("/items/0", json!({"sku": "TEA-0001", "qty": 1, "x": 0}))),
            ("top-level additionalProperties false", {
                let mut v = conforming.clone();
                v["extra"] = json!(1);
                v.to_string()
            }),
            ("not JSON", "Sure! Here is your order.".to_string()),
        ];
        for (keyword, reply) in cases {
            assert!(!format.check().passes(&reply), "{keyword}: {reply}");
        }
    }

    #[test]
    fn the_verify_scorer_gives_full_marks_only_to_the_conforming_candidate() {
        use crate::score::{Message, ScoreInput, Scorer, VerifyScorer};
        let format = schema_format(order_schema()).unwrap();
        let conforming: Value = serde_json::from_str(CONFORMING).unwrap();
        let with = |pointer: &str, value: Value| {
            let mut v = conforming.clone();
            *v.pointer_mut(pointer).unwrap() = value;
            v.to_string()
        };
        let candidates = vec![
            with("/items/0", json!({"sku": "TEA-0001"})),                   // $ref
            with("/payment", json!({"card": "4242", "iban": "DE00"})),      // oneOf
            with("/items/0/sku", json!("tea-1")),                           // pattern
            with("/version", json!("2")),                                   // const
            with("/email", json!("ada-at-example")),                        // format
            with("/items/0", json!({"sku": "TEA-0001", "qty": 1, "x": 0})), // nested additionalProperties
            CONFORMING.to_string(),
        ];
        let scorer = VerifyScorer { name: "verify".into(), pattern: None };
        let conversation = [Message { role: "user".into(), content: "Place my order.".into() }];
        let messages: Vec<crate::score::CandidateMessage> =
            candidates.iter().map(crate::score::CandidateMessage::from_text).collect();
        let input = ScoreInput {
            conversation: &conversation,
            candidates: &candidates,
            messages: &messages,
            response_format: Some(&format),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let out = runtime.block_on(scorer.score(input)).unwrap();
        assert_eq!(out.scores, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn a_schema_that_does_not_compile_is_an_invalid_request_naming_the_schema() {
        for (what, schema) in [
            ("dangling $ref", json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})),
            ("invalid pattern", json!({"type": "string", "pattern": "(unclosed"})),
            ("remote $ref, never fetched", json!({"$ref": "https://example.com/schema.json"})),
            ("file $ref, never read", json!({"$ref": "file:///etc/passwd"})),
            ("a keyword of the wrong type", json!({"type": "object", "required": "name"})),
            ("not a schema", json!("object")),
        ] {
            match schema_format(schema) {
                Err(Error::InvalidRequest { param, message }) => {
                    assert_eq!(param.as_deref(), Some(SCHEMA_PARAM), "{what}");
                    assert!(message.contains(SCHEMA_PARAM), "{what}: {message}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn json_object_and_other_types() {
        let object = ResponseFormat::prepare(&json!({"type": "json_object"})).unwrap();
        assert_eq!(object.check(), &FormatCheck::JsonObject);
        assert!(object.check().passes(r#"{"a": 1}"#));
        assert!(!object.check().passes("[1, 2]") && !object.check().passes("a: 1"));
        let text = ResponseFormat::prepare(&json!({"type": "text"})).unwrap();
        assert_eq!(text.check(), &FormatCheck::Nothing);
        assert_eq!(text.value(), &json!({"type": "text"}));
        // A json_schema without a schema: any JSON value.
        let any = ResponseFormat::prepare(&json!({"type": "json_schema", "json_schema": {"name": "x"}})).unwrap();
        assert!(any.check().passes("[1]") && !any.check().passes("nope"));
    }

    #[test]
    fn tool_arguments_are_checked_against_the_parameters() {
        let parameters = compile_tool_parameters(Some(&json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": false
        })))
        .unwrap();
        assert_eq!(check_tool_arguments(&parameters, r#"{"city": "Paris", "unit": "c"}"#), Ok(()));
        match check_tool_arguments(&parameters, r#"{"unit": "k"}"#) {
            Err(ArgumentsError::Violations(reasons)) => {
                assert_eq!(reasons.len(), 2, "{reasons:?}");
                assert!(reasons.iter().any(|r| r.contains("city")), "{reasons:?}");
                assert!(reasons.iter().any(|r| r.starts_with("at /unit")), "{reasons:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(check_tool_arguments(&parameters, "{city: Paris}"), Err(ArgumentsError::NotAnObject(_))));
        assert!(matches!(check_tool_arguments(&parameters, r#"["Paris"]"#), Err(ArgumentsError::NotAnObject(_))));
        // No parameters: an empty parameter list, any object.
        let none = compile_tool_parameters(None).unwrap();
        assert_eq!(check_tool_arguments(&none, "{}"), Ok(()));
        assert!(check_tool_arguments(&none, "1").is_err());
        // A parameters schema that does not compile says why.
        let bad = compile_tool_parameters(Some(&json!({"properties": {"a": {"$ref": "#/nowhere"}}})));
        assert!(bad.is_err_and(|e| !e.message.is_empty()));
    }
}
