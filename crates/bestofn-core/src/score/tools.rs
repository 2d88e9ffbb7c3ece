//! Tool-call verification: what a request's `tools` and `tool_choice` ask of a candidate's tool
//! calls.
//!
//! A request's tools are prepared once ([`Tools::prepare`], when a best-of-N request is planned
//! or a recorded row is replayed): each function tool's `parameters` schema is compiled by the
//! `jsonschema` crate ([`super::json_schema`]), and a schema that does not compile is an invalid
//! request naming the tool (`param` `tools[i].function.parameters`). A candidate's calls then
//! pass ([`Tools::check`]) when
//! - each names a function tool of the request;
//! - each call's `arguments` parse as a JSON object that conforms to that tool's `parameters`
//!   (a tool without `parameters` takes any object);
//! - together they respect `tool_choice`: `none`, no call; `required`, at least one;
//!   `{"type": "function", "function": {"name": X}}`, at least one call and every call to X;
//!   `{"type": "allowed_tools", "allowed_tools": {"mode": M, "tools": [...]}}`, only the listed
//!   tools (and at least one call when M is `required`); `auto` or absent, any valid calls.
//!
//! Tools of another type than `function` (OpenAI's `custom` tools) are not checked: their calls
//! are not function calls and never reach [`super::CandidateMessage::tool_calls`].

use serde_json::Value;

use super::json_schema::{ArgumentsError, CompiledSchema, compile_tool_parameters};
use super::message::CandidateMessage;
use crate::error::Error;

/// The request field an invalid `tool_choice` is reported under.
pub const TOOL_CHOICE_PARAM: &str = "tool_choice";

/// One function tool of a request: its name and its compiled `parameters`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// `function.name`.
    pub name: String,
    /// `function.parameters`, compiled (an empty parameter list when absent).
    parameters: CompiledSchema,
}

/// What `tool_choice` asks of a message's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// `auto`, or no `tool_choice`: any valid calls, or none.
    Auto,
    /// `none`: no call.
    None,
    /// `required`: at least one call.
    Required,
    /// A named function: at least one call, every call to it.
    Function(String),
    /// `allowed_tools`: calls only to these tools; at least one when `required`.
    Allowed {
        /// The tools that may be called.
        names: Vec<String>,
        /// Mode `required` rather than `auto`.
        required: bool,
    },
}

/// Why a message's tool calls do not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolCallError {
    /// `tool_choice` is `none` and the message calls a tool.
    #[error("tool_choice is \"none\" but the message calls '{0}'")]
    CallWhenNone(String),
    /// `tool_choice` asks for a call and the message makes none.
    #[error("tool_choice {0} but the message calls no tool")]
    NoCall(String),
    /// The message calls a tool `tool_choice` does not allow.
    #[error("tool_choice {choice} but the message calls '{name}'")]
    NotChosen {
        /// What `tool_choice` allows, in words.
        choice: String,
        /// The tool called.
        name: String,
    },
    /// The message calls a tool the request does not declare.
    #[error("the message calls '{0}', which is not one of the request's tools")]
    UnknownTool(String),
    /// A call's arguments do not fit its tool's `parameters`.
    #[error("the call to '{name}': {error}")]
    Arguments {
        /// The tool called.
        name: String,
        /// What is wrong with the arguments.
        error: ArgumentsError,
    },
}

/// A request's `tools` and `tool_choice`, prepared once for every candidate (schemas compiled).
/// Cheap to clone: the compiled schemas are shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// The client's `tools`, as sent.
    value: Value,
    /// The client's `tool_choice`, as sent.
    choice_value: Option<Value>,
    /// The function tools, in request order.
    tools: Vec<Tool>,
    /// What `tool_choice` asks.
    choice: ToolChoice,
}

impl Tools {
    /// Prepares a request's `tools` and `tool_choice`; `None` when the request has no `tools`
    /// (nothing to check, whatever `tool_choice` says). A `tools` that is not an array, a
    /// function tool without a name, a `parameters` schema that does not compile and a
    /// `tool_choice` that is not one of the forms above (or names an undeclared tool) are
    /// invalid requests naming the field at fault.
    pub fn prepare(tools: Option<&Value>, tool_choice: Option<&Value>) -> Result<Option<Tools>, Error> {
        let Some(value) = tools.filter(|v| !v.is_null()) else { return Ok(None) };
        let Some(list) = value.as_array() else {
            return Err(Error::invalid("tools", "'tools' must be an array of tools"));
        };
        let mut prepared = Vec::with_capacity(list.len());
        for (i, tool) in list.iter().enumerate() {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("function");
            if kind != "function" {
                continue;
            }
            let Some(function) = tool.get("function").filter(|f| f.is_object()) else {
                let param = format!("tools[{i}].function");
                return Err(Error::invalid(&param, format!("'{param}' must be an object")));
            };
            let Some(name) = function.get("name").and_then(Value::as_str) else {
                let param = format!("tools[{i}].function.name");
                return Err(Error::invalid(&param, format!("'{param}' must be a string")));
            };
            let parameters =
                compile_tool_parameters(function.get("parameters").filter(|p| !p.is_null())).map_err(|e| {
                    let param = format!("tools[{i}].function.parameters");
                    Error::invalid(
                        &param,
                        format!("'{param}' (tool '{name}') is not a JSON Schema bestofn can check: {e}"),
                    )
                })?;
            prepared.push(Tool { name: name.to_string(), parameters });
        }
        let choice_value = tool_choice.filter(|v| !v.is_null()).cloned();
        let choice = match &choice_value {
            None => ToolChoice::Auto,
            Some(v) => parse_choice(v, &prepared)?,
        };
        Ok(Some(Tools { value: value.clone(), choice_value, tools: prepared, choice }))
    }

    /// The client's `tools`, as sent.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The client's `tool_choice`, as sent.
    pub fn choice_value(&self) -> Option<&Value> {
        self.choice_value.as_ref()
    }

    /// What `tool_choice` asks.
    pub fn choice(&self) -> &ToolChoice {
        &self.choice
    }

    /// The function tools, in request order.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// Checks a message's tool calls (see the module's documentation); the first fault found.
    pub fn check(&self, message: &CandidateMessage) -> Result<(), ToolCallError> {
        let calls = &message.tool_calls;
        match &self.choice {
            ToolChoice::Auto => {}
            ToolChoice::None => {
                if let Some(call) = calls.first() {
                    return Err(ToolCallError::CallWhenNone(call.name.clone()));
                }
            }
            ToolChoice::Required => {
                if calls.is_empty() {
                    return Err(ToolCallError::NoCall("is \"required\"".into()));
                }
            }
            ToolChoice::Function(name) => {
                let choice = format!("names '{name}'");
                if calls.is_empty() {
                    return Err(ToolCallError::NoCall(choice));
                }
                if let Some(other) = calls.iter().find(|c| &c.name != name) {
                    return Err(ToolCallError::NotChosen { choice, name: other.name.clone() });
                }
            }
            ToolChoice::Allowed { names, required } => {
                let choice = format!("allows only {}", names.join(", "));
                if *required && calls.is_empty() {
                    return Err(ToolCallError::NoCall(choice));
                }
                if let Some(other) = calls.iter().find(|c| !names.contains(&c.name)) {
                    return Err(ToolCallError::NotChosen { choice, name: other.name.clone() });
                }
            }
        }
        for call in calls {
            let Some(tool) = self.tools.iter().find(|t| t.name == call.name) else {
                return Err(ToolCallError::UnknownTool(call.name.clone()));
            };
            super::json_schema::check_tool_arguments(&tool.parameters, &call.arguments)
                .map_err(|error| ToolCallError::Arguments { name: call.name.clone(), error })?;
        }
        Ok(())
    }
}

/// The name of a function in a `tool_choice` object: `function.name` (chat completions), or
/// `name` (the Responses API's spelling).
fn function_name(v: &Value) -> Option<&str> {
    v.pointer("/function/name").and_then(Value::as_str).or_else(|| v.get("name").and_then(Value::as_str))
}

fn parse_choice(value: &Value, tools: &[Tool]) -> Result<ToolChoice, Error> {
    let invalid = |why: String| Error::invalid(TOOL_CHOICE_PARAM, format!("'{TOOL_CHOICE_PARAM}' {why}"));
    let declared = |name: &str| -> Result<String, Error> {
        if tools.iter().any(|t| t.name == name) {
            Ok(name.to_string())
        } else {
            Err(invalid(format!("names '{name}', which is not one of the request's tools")))
        }
    };
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => {
                Err(invalid(format!("must be \"none\", \"auto\", \"required\" or a named function, got \"{other}\"")))
            }
        },
        Value::Object(_) => match value.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = function_name(value).ok_or_else(|| invalid("names no function".into()))?;
                Ok(ToolChoice::Function(declared(name)?))
            }
            Some("allowed_tools") => {
                let allowed = value.get("allowed_tools").unwrap_or(value);
                let required = match allowed.get("mode").and_then(Value::as_str) {
                    Some("auto") | None => false,
                    Some("required") => true,
                    Some(other) => return Err(invalid(format!("has mode \"{other}\"; expected auto or required"))),
                };
                let listed =
                    allowed.get("tools").and_then(Value::as_array).ok_or_else(|| invalid("lists no tools".into()))?;
                let names = listed
                    .iter()
                    .map(|t| {
                        function_name(t).ok_or_else(|| invalid("lists a tool without a name".into())).and_then(declared)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ToolChoice::Allowed { names, required })
            }
            _ => Err(invalid("must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", ...}".into())),
        },
        _ => Err(invalid("must be a string or an object".into())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::score::ToolCall;

    fn weather_tools() -> Value {
        json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "get_time"}}
        ])
    }

    fn calls(calls: &[(&str, &str)]) -> CandidateMessage {
        CandidateMessage {
            tool_calls: calls
                .iter()
                .map(|(name, arguments)| ToolCall {
                    id: None,
                    name: name.to_string(),
                    arguments: arguments.to_string(),
                })
                .collect(),
            ..CandidateMessage::default()
        }
    }

    fn prepared(choice: Option<Value>) -> Tools {
        Tools::prepare(Some(&weather_tools()), choice.as_ref()).unwrap().unwrap()
    }

    #[test]
    fn calls_must_name_a_declared_tool_with_conforming_arguments() {
        let tools = prepared(None);
        assert_eq!(tools.check(&calls(&[("get_weather", r#"{"city": "Paris"}"#)])), Ok(()));
        assert_eq!(
            tools.check(&calls(&[("get_time", "{}"), ("get_weather", r#"{"city":"Lyon","unit":"c"}"#)])),
            Ok(())
        );
        assert_eq!(tools.check(&CandidateMessage::from_text("It is sunny.")), Ok(()), "auto: no call is fine");
        assert_eq!(
            tools.check(&calls(&[("get_forecast", r#"{"city": "Paris"}"#)])),
            Err(ToolCallError::UnknownTool("get_forecast".into()))
        );
        for bad in [r#"{"city": Paris}"#, r#"{"town": "Paris"}"#, r#"{"city": "Paris", "unit": "k"}"#, "[]", ""] {
            let err = tools.check(&calls(&[("get_weather", bad)])).unwrap_err();
            assert!(matches!(err, ToolCallError::Arguments { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn tool_choice_none_required_and_named() {
        let paris = calls(&[("get_weather", r#"{"city": "Paris"}"#)]);
        let time = calls(&[("get_time", "{}")]);
        let text = CandidateMessage::from_text("Paris is sunny.");
        let none = prepared(Some(json!("none")));
        assert!(matches!(none.check(&paris), Err(ToolCallError::CallWhenNone(_))));
        assert_eq!(none.check(&text), Ok(()));
        let required = prepared(Some(json!("required")));
        assert!(matches!(required.check(&text), Err(ToolCallError::NoCall(_))));
        assert_eq!(required.check(&time), Ok(()));
        let named = prepared(Some(json!({"type": "function", "function": {"name": "get_weather"}})));
        assert_eq!(named.check(&paris), Ok(()));
        assert!(matches!(named.check(&time), Err(ToolCallError::NotChosen { .. })));
        assert!(matches!(named.check(&text), Err(ToolCallError::NoCall(_))));
        let allowed = prepared(Some(json!({"type": "allowed_tools", "allowed_tools": {"mode": "required",
            "tools": [{"type": "function", "function": {"name": "get_time"}}]}})));
        assert_eq!(allowed.check(&time), Ok(()));
        assert!(allowed.check(&paris).is_err() && allowed.check(&text).is_err());
        assert_eq!(prepared(Some(json!("auto"))).choice(), &ToolChoice::Auto);
    }

    #[test]
    fn a_parameters_schema_that_does_not_compile_is_an_invalid_request_naming_the_tool() {
        let tools = json!([
            {"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "broken", "parameters": {"type": "object",
                "properties": {"a": {"$ref": "#/$defs/missing"}}}}}
        ]);
        match Tools::prepare(Some(&tools), None) {
            Err(Error::InvalidRequest { param, message }) => {
                assert_eq!(param.as_deref(), Some("tools[1].function.parameters"));
                assert!(message.contains("'broken'") && message.contains("tools[1].function.parameters"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let param = |tools: Value, choice: Option<Value>| {
            Tools::prepare(Some(&tools), choice.as_ref()).unwrap_err().param().map(str::to_string)
        };
        assert_eq!(param(json!({"name": "x"}), None).as_deref(), Some("tools"));
        assert_eq!(
            param(json!([{"type": "function", "function": {}}]), None).as_deref(),
            Some("tools[0].function.name")
        );
        assert_eq!(param(weather_tools(), Some(json!("sometimes"))).as_deref(), Some(TOOL_CHOICE_PARAM));
        let undeclared = json!({"type": "function", "function": {"name": "nope"}});
        assert_eq!(param(weather_tools(), Some(undeclared)).as_deref(), Some(TOOL_CHOICE_PARAM));
        assert_eq!(Tools::prepare(None, Some(&json!("required"))).unwrap(), None, "no tools: nothing to check");
        // Tools of another type are left alone.
        let custom = json!([{"type": "custom", "custom": {"name": "grammar"}}]);
        assert!(Tools::prepare(Some(&custom), None).unwrap().unwrap().tools().is_empty());
    }
}
