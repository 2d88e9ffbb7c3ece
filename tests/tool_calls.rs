//! Tool calls and validity through the real binary: stub upstreams answer with OpenAI's exact
//! `tool_calls` shapes; validation against `tools` and `tool_choice`, voting over canonical
//! calls, `require_valid` live and in `eval replay`, `n_valid`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// An assistant message that calls one tool, as OpenAI sends it.
fn call(name: &str, arguments: &str) -> Value {
    json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
        {"id": format!("call_{name}_{}", arguments.len()), "type": "function", "function": {"name": name, "arguments": arguments}}
    ]})
}

/// An assistant message with text content.
fn text(content: &str) -> Value {
    json!({"role": "assistant", "content": content, "refusal": null})
}

/// A chat completion of these messages, one choice each, as many as `n` asks for.
fn completion(messages: &[Value], n: usize) -> Reply {
    let choices: Vec<Value> = messages
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, m)| {
            let finish = if m["tool_calls"].is_array() { "tool_calls" } else { "stop" };
            json!({"index": i, "message": m, "logprobs": null, "finish_reason": finish})
        })
        .collect();
    Reply::Json(
        200,
        json!({"id": "chatcmpl-tools", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o-mini",
            "system_fingerprint": "fp_x", "choices": choices,
            "usage": {"prompt_tokens": 80, "completion_tokens": 60, "total_tokens": 140}}),
    )
}

/// An upstream answering every request with `messages`.
fn fixed(messages: Vec<Value>) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    move |r: &Recorded| completion(&messages, r.body.get("n").and_then(Value::as_u64).unwrap_or(1) as usize)
}

fn plain_config(upstream: &FakeServer, n: u32, extra: &str) -> String {
    format!("[upstream]\nbase_url = \"{}/v1\"\nsampling = \"n\"\n\n{extra}\n[policy]\nn = {n}\n", upstream.url())
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "The current time.", "parameters": {"type": "object", "properties": {}}}}
    ])
}

fn weather_request() -> Value {
    let mut body = chat_body("What's the weather in Paris?");
    body["tools"] = weather_tools();
    body
}

fn valid_flags(resp: &Value) -> Vec<bool> {
    resp["bestofn"]["candidates"].as_array().unwrap().iter().map(|c| c["valid"].as_bool().unwrap()).collect()
}

fn first_call(choice: &Value) -> (String, String) {
    let f = &choice["message"]["tool_calls"][0]["function"];
    (f["name"].as_str().unwrap().to_string(), f["arguments"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn consensus_returns_the_majority_call_and_verify_ranks_the_invalid_one_last() {
    let upstream = FakeServer::start(fixed(vec![
        call("get_weather", r#"{"city":"Paris"}"#),
        call("get_weather", r#"{"city": "Paris"}"#),
        call("get_weather", r#"{"city":"Lyon"}"#),
        call("get_weather", r#"{"city": "Paris""#),
    ]))
    .await;
    let proxy = Bestofn::start(&plain_config(&upstream, 4, ""));
    let url = proxy.url("/v1/chat/completions");

    let mut body = weather_request();
    body["bestofn"] = json!({"return_candidates": true});
    let (status, _, resp) = post(&url, body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    let b = &resp["bestofn"];
    assert_eq!(b["scorer"], "consensus");
    assert_eq!(b["scores"], json!([1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]), "{b}");
    assert_eq!(b["chosen"], 0, "{b}");
    assert_eq!(first_call(&resp["choices"][0]), ("get_weather".into(), r#"{"city":"Paris"}"#.into()));
    assert_eq!(resp["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(resp["choices"][0]["message"]["content"], Value::Null, "the message travels whole");
    assert_eq!(b["n_valid"], 3, "{b}");
    assert_eq!(valid_flags(&resp), vec![true, true, true, false]);

    // verify: the invalid arguments rank last, below every valid call; the client's n = 4 gets
    // the ranking.
    let mut body = weather_request();
    body["n"] = json!(4);
    body["bestofn"] = json!({"scorer": "verify"});
    let (status, _, resp) = post(&url, body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    let scores: Vec<f64> = resp["bestofn"]["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert!(scores[..3].iter().all(|&s| s > scores[3]), "{scores:?}");
    assert!(scores[3] < 0.0, "an invalid candidate scores below 0: {scores:?}");
    assert_eq!(first_call(&resp["choices"][3]).1, r#"{"city": "Paris""#, "{resp}");
    assert_eq!(resp["bestofn"]["n_valid"], 3);

    // Streamed: the winner's call is re-streamed, and the last chunk's bestofn says n_valid.
    let mut body = weather_request();
    body["stream"] = json!(true);
    let (status, _, text) = post_raw(&url, body).await;
    assert_eq!(status, 200, "{text}");
    let events = data_events(&parse_sse(&text));
    let calls: Vec<&Value> = events.iter().filter_map(|e| e["choices"][0]["delta"].get("tool_calls")).collect();
    assert_eq!(calls[0][0]["function"]["name"], "get_weather", "{text}");
    let last = events.iter().rev().find(|e| e.get("bestofn").is_some()).unwrap();
    assert_eq!(last["bestofn"]["n_valid"], 3, "{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_to_an_undeclared_tool_is_invalid() {
    let upstream = FakeServer::start(fixed(vec![
        call("get_forecast", r#"{"city":"Paris"}"#),
        call("get_weather", r#"{"city":"Lyon","unit":"celsius"}"#),
    ]))
    .await;
    let proxy = Bestofn::start(&plain_config(&upstream, 2, ""));
    let mut body = weather_request();
    body["bestofn"] = json!({"scorer": "verify", "return_candidates": true});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(valid_flags(&resp), vec![false, true]);
    assert_eq!(resp["bestofn"]["n_valid"], 1);
    assert_eq!(resp["bestofn"]["chosen"], 1, "{resp}");
    assert_eq!(first_call(&resp["choices"][0]).0, "get_weather");
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_choice_none_required_and_named_each_reject_the_wrong_candidates() {
    let upstream = FakeServer::start(fixed(vec![
        text("It is sunny in Paris, 21 degrees."),
        call("get_weather", r#"{"city":"Paris"}"#),
        call("get_time", "{}"),
    ]))
    .await;
    let proxy = Bestofn::start(&plain_config(&upstream, 3, ""));
    let url = proxy.url("/v1/chat/completions");
    let cases = [
        (json!("none"), vec![true, false, false], 0),
        (json!("required"), vec![false, true, true], 1),
        (json!({"type": "function", "function": {"name": "get_time"}}), vec![false, false, true], 2),
        (json!("auto"), vec![true, true, true], 0),
    ];
    for (choice, valid, chosen) in cases {
        let mut body = weather_request();
        body["tool_choice"] = choice.clone();
        body["bestofn"] = json!({"scorer": "verify", "return_candidates": true});
        let (status, _, resp) = post(&url, body, &[]).await;
        assert_eq!(status, 200, "{choice}: {resp}");
        assert_eq!(valid_flags(&resp), valid, "{choice}");
        assert_eq!(resp["bestofn"]["n_valid"], valid.iter().filter(|&&v| v).count(), "{choice}");
        assert_eq!(resp["bestofn"]["chosen"], chosen, "{choice}: {resp}");
    }
    // The upstream got tools and tool_choice as the client sent them.
    let sent = upstream.requests();
    assert_eq!(sent[0].body["tools"], weather_tools());
    assert_eq!(sent[0].body["tool_choice"], "none");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parameters_schema_that_does_not_compile_is_a_400_at_n_above_1_and_forwarded_at_n_1() {
    let upstream = FakeServer::start(fixed(vec![call("get_weather", r#"{"city":"Paris"}"#)])).await;
    let proxy = Bestofn::start(&plain_config(&upstream, 4, ""));
    let url = proxy.url("/v1/chat/completions");
    let mut tools = weather_tools();
    tools[1]["function"]["parameters"] = json!({"type": "object", "properties": {"zone": {"$ref": "#/$defs/zone"}}});
    let mut body = weather_request();
    body["tools"] = tools.clone();
    for stream in [false, true] {
        let mut bad = body.clone();
        bad["stream"] = json!(stream);
        let (status, _, resp) = post(&url, bad, &[]).await;
        assert_eq!(status, 400, "stream {stream}: {resp}");
        assert_envelope(&resp, Some("tools[1].function.parameters"));
        assert!(resp["error"]["message"].as_str().unwrap().contains("'get_time'"), "{resp}");
    }
    // A tool_choice naming no declared tool is refused the same way.
    let mut named = weather_request();
    named["tool_choice"] = json!({"type": "function", "function": {"name": "get_forecast"}});
    let (status, _, resp) = post(&url, named, &[]).await;
    assert_eq!(status, 400, "{resp}");
    assert_envelope(&resp, Some("tool_choice"));
    assert!(upstream.requests().is_empty(), "no upstream call for a request refused");

    // At N = 1 the request passes through untouched: the upstream judges the schema.
    let mut single = body.clone();
    single["bestofn"] = json!({"n": 1});
    let (status, headers, resp) = post(&url, single, &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(headers["x-bestofn-n"], "1");
    let sent = upstream.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["tools"], tools, "forwarded as sent");
}

/// Person answers for `response_format`: the RM (which reads `q=`) prefers the invalid ones.
const SURE: &str = "Sure! Ada, 36. q=5";
const PROSE: &str = "Ada is 36 years old. q=4";
const PERSON: &str = r#"{"name": "Ada", "age": 36, "note": "q=1"}"#;

fn person_request(content: &str, domain: &str) -> Value {
    let mut body = chat_body(content);
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema":
        {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "note": {"type": "string"}},
         "required": ["name", "age"]}}});
    body["bestofn"] = json!({"domain": domain, "return_candidates": true});
    body
}

/// An upstream that answers a prompt saying "only prose" with invalid candidates alone, and
/// any other with two invalid ones and one valid one.
fn person_upstream() -> impl Fn(&Recorded) -> Reply + Send + Sync {
    |r: &Recorded| {
        let n = r.body.get("n").and_then(Value::as_u64).unwrap_or(1) as usize;
        let prompt = r.body["messages"][0]["content"].as_str().unwrap_or("");
        let texts = if prompt.contains("only prose") { [SURE, PROSE, PROSE] } else { [PROSE, SURE, PERSON] };
        completion(&texts.map(text), n)
    }
}

/// Tool calls where the majority calls a tool the request does not declare.
fn forecast_upstream() -> impl Fn(&Recorded) -> Reply + Send + Sync {
    fixed(vec![
        call("get_forecast", r#"{"city":"Paris"}"#),
        call("get_forecast", r#"{"city": "Paris"}"#),
        call("get_forecast", r#"{"city":"Paris"}"#),
        call("get_weather", r#"{"city":"Paris"}"#),
    ])
}

fn require_valid_config(upstream: &FakeServer, rm: &FakeServer) -> String {
    config(upstream, rm, "n", 3).replace("scorer = \"vllm\"", "scorer = \"vllm\"\nrequire_valid = true")
        + "\n[domains.code]\nrequire_valid = false\n\n[domains.focus]\nscorer = \"consensus\"\nn = 4\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn require_valid_never_chooses_an_invalid_candidate_while_a_valid_one_exists() {
    let rm = FakeServer::start(rm_handler()).await;
    let upstream = FakeServer::start(person_upstream()).await;
    let proxy = Bestofn::start(&require_valid_config(&upstream, &rm));
    let url = proxy.url("/v1/chat/completions");

    // The valid candidate, though the RM scores both invalid ones higher.
    let (status, _, resp) = post(&url, person_request("Give me a person.", "general"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    let b = &resp["bestofn"];
    assert_eq!((b["chosen"].as_u64(), b["n_valid"].as_u64()), (Some(2), Some(1)), "{b}");
    assert_eq!(resp["choices"][0]["message"]["content"], PERSON);
    let scores: Vec<f64> = b["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert!(scores[2] < scores[0] && scores[2] < scores[1], "{scores:?}");

    // Where require_valid is off (domains.code), the RM's best, valid or not.
    let (_, _, resp) = post(&url, person_request("Give me a person.", "code"), &[]).await;
    assert_eq!((resp["bestofn"]["chosen"].as_u64(), resp["bestofn"]["n_valid"].as_u64()), (Some(1), Some(1)));

    // Every candidate invalid: an answer all the same, the RM's best, and n_valid 0.
    let (status, _, resp) = post(&url, person_request("Give me a person, only prose.", "general"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!((resp["bestofn"]["chosen"].as_u64(), resp["bestofn"]["n_valid"].as_u64()), (Some(0), Some(0)));
    assert_eq!(resp["choices"][0]["message"]["content"], SURE);

    // Under consensus, over tool calls: three calls to an undeclared tool outvote the one valid
    // call, which require_valid chooses.
    let upstream = FakeServer::start(forecast_upstream()).await;
    let proxy = Bestofn::start(&require_valid_config(&upstream, &rm));
    let mut body = weather_request();
    body["bestofn"] = json!({"domain": "focus"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    let b = &resp["bestofn"];
    assert_eq!(
        (b["scorer"].as_str(), b["chosen"].as_u64(), b["n_valid"].as_u64()),
        (Some("consensus"), Some(3), Some(1))
    );
    assert_eq!(b["scores"], json!([2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 0.0]), "{b}");
    assert_eq!(first_call(&resp["choices"][0]).0, "get_weather");
}

#[tokio::test(flavor = "multi_thread")]
async fn eval_replay_applies_require_valid_as_the_proxy_did() {
    let rm = FakeServer::start(rm_handler()).await;
    let upstream = FakeServer::start(person_upstream()).await;
    let requests = vec![
        person_request("Give me a person.", "general"),
        person_request("Give me a person.", "code"),
        person_request("Give me a person, only prose.", "general"),
    ];
    let (records, picks) = live_and_replayed(&require_valid_config(&upstream, &rm), requests).await;
    let chosen: Vec<u64> = records.iter().map(|r| r["chosen"].as_u64().unwrap()).collect();
    assert_eq!(chosen, vec![2, 1, 0], "the valid one under require_valid, the RM's best without, any when none is");
    assert!(records.iter().all(|r| r["response_format"]["type"] == "json_schema"), "{records:?}");
    let replayed: Vec<u64> = picks.iter().map(|p| p["chosen"].as_u64().unwrap()).collect();
    assert_eq!(replayed, chosen, "{picks:?}");

    // Tool calls: the recording keeps the request's tools and each candidate's message, and the
    // replay votes over them and applies require_valid as the proxy did.
    let upstream = FakeServer::start(forecast_upstream()).await;
    let mut body = weather_request();
    body["tool_choice"] = json!("auto");
    body["bestofn"] = json!({"domain": "focus"});
    let (records, picks) = live_and_replayed(&require_valid_config(&upstream, &rm), vec![body]).await;
    assert_eq!(records[0]["tools"], weather_tools());
    assert_eq!(records[0]["tool_choice"], "auto");
    assert_eq!(
        records[0]["candidates"][3]["message"]["tool_calls"][0]["function"]["name"], "get_weather",
        "{}",
        records[0]
    );
    assert_eq!(records[0]["chosen"], 3);
    assert_eq!(picks[0]["chosen"], 3, "{picks:?}");
}
