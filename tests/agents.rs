//! Best-of-N for agents and reasoning models, through the real binary: a candidate is the
//! upstream's whole message (reasoning under its own field name, content, parallel tool calls,
//! fields bestofn does not know), returned and re-streamed as it was sent; usage counts reasoning
//! tokens; scorers read tool calls rendered, and reasoning only when configured to; agents'
//! conversations reach scorers and the recorder whole, and `eval` rescores from the recorded
//! messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// The shapes of [`agent_message`], and which wins under `model: "win-K"`.
const SHAPES: [u32; 4] = [0, 1, 2, 3];

fn agent_config(upstream: &FakeServer, rm: &FakeServer, sampling: &str, extra: &str) -> String {
    format!(
        r#"
[upstream]
base_url = "{up}/v1"
sampling = "{sampling}"
timeout_ms = 5000
max_retries = 0

[scorers.rm]
kind = "reward_http"
api = "vllm_classify"
url = "{rm}/classify"

[scorers.rm_reasoning]
kind = "reward_http"
api = "vllm_classify"
url = "{rm}/classify"
include_reasoning = true

[policy]
n = 4
scorer = "rm"
{extra}
"#,
        up = upstream.url(),
        rm = rm.url(),
    )
}

fn agent_request(winner: u32) -> Value {
    json!({
        "model": format!("win-{winner}"),
        "seed": 100,
        "messages": [{"role": "user", "content": "What's the weather in Paris, and the time there?"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}
        ]
    })
}

/// The winner's message as the upstream sent it, for every shape, sampled by `n` and in
/// parallel: the non-streamed answer returns it field for field, and the streamed answer's
/// deltas reassemble to it (reasoning first, then content, then the tool calls with their index,
/// the vendor field in the first delta); `finish_reason` is the upstream's.
#[tokio::test(flavor = "multi_thread")]
async fn the_winners_whole_message_is_returned_and_restreamed_as_sent() {
    let upstream = FakeServer::start(agent_upstream()).await;
    let rm = FakeServer::start(rm_handler()).await;
    for sampling in ["n", "parallel"] {
        let proxy = Bestofn::start(&agent_config(&upstream, &rm, sampling, ""));
        for winner in SHAPES {
            let expected = agent_message(winner, 9.0);
            let finish = if winner >= 2 { "tool_calls" } else { "stop" };

            let (status, _, body) = post(&proxy.url("/v1/chat/completions"), agent_request(winner), &[]).await;
            assert_eq!(status, 200, "{body}");
            let choice = &body["choices"][0];
            assert_eq!(choice["message"], expected, "{sampling}, shape {winner}");
            assert_eq!(choice["finish_reason"], finish);
            assert_eq!(choice["stop_reason"], Value::Null, "the choice's own fields are kept");
            assert_eq!(body["bestofn"]["n_received"], 4);

            let mut request = agent_request(winner);
            request["stream"] = json!(true);
            let (status, _, text) = post_raw(&proxy.url("/v1/chat/completions"), request).await;
            assert_eq!(status, 200);
            let chunks = data_events(&parse_sse(&text));
            assert_eq!(reassemble(&chunks, 0), expected, "{sampling}, shape {winner}: {text}");
            let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).map(|c| &c["delta"]).collect();
            // The order of the fields streamed in pieces.
            let order: Vec<&str> = deltas
                .iter()
                .filter_map(|d| {
                    ["reasoning_content", "reasoning", "content", "tool_calls"]
                        .into_iter()
                        .find(|k| d.get(*k).is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty()) || v.is_array()))
                })
                .collect();
            let rank =
                |k: &str| ["reasoning_content", "reasoning", "content", "tool_calls"].iter().position(|x| *x == k);
            assert!(order.windows(2).all(|w| rank(w[0]) <= rank(w[1])), "{order:?}");
            if let Some(field) = ["reasoning_content", "reasoning"].into_iter().find(|f| expected.get(*f).is_some()) {
                let pieces = deltas.iter().filter(|d| d.get(field).is_some()).count();
                assert!(pieces > 1, "the reasoning is re-streamed in pieces under `{field}`");
            }
            if winner >= 2 {
                let calls: Vec<&Value> = deltas.iter().filter_map(|d| d["tool_calls"].get(0)).collect();
                for (index, id) in [(0, format!("call_w{winner}")), (1, format!("call_t{winner}"))] {
                    let first = calls.iter().find(|c| c["index"] == index).unwrap();
                    assert_eq!(first["id"], id.as_str(), "id, type and name in the first delta of each call");
                    assert_eq!(first["type"], "function");
                    assert!(first["function"]["name"].is_string());
                }
                assert!(calls.iter().filter(|c| c["index"] == 1).count() > 1, "arguments in pieces");
            }
            let finish_chunk = chunks.iter().find(|c| c["choices"][0]["finish_reason"].is_string()).unwrap();
            assert_eq!(finish_chunk["choices"][0]["finish_reason"], finish);
            assert!(finish_chunk["choices"][0].as_object().unwrap().contains_key("stop_reason"));
        }
    }
}

/// `usage.completion_tokens_details.reasoning_tokens` is the sum over candidates (one call with
/// n = 4, or four calls), streamed and not; absent when no upstream reported it.
#[tokio::test(flavor = "multi_thread")]
async fn usage_sums_reasoning_tokens_over_candidates() {
    let upstream = FakeServer::start(agent_upstream()).await;
    let rm = FakeServer::start(rm_handler()).await;
    let total: u64 = SHAPES.iter().map(|&s| agent_reasoning_tokens(s)).sum();
    for sampling in ["n", "parallel"] {
        let proxy = Bestofn::start(&agent_config(&upstream, &rm, sampling, ""));
        let (_, _, body) = post(&proxy.url("/v1/chat/completions"), agent_request(0), &[]).await;
        assert_eq!(body["usage"]["completion_tokens_details"]["reasoning_tokens"], total, "{sampling}: {body}");
        assert_eq!(body["usage"]["completion_tokens"], 80);
        assert_eq!(body["bestofn"]["usage"]["generation"]["reasoning_tokens"], total);

        let mut request = agent_request(1);
        request["stream"] = json!(true);
        request["stream_options"] = json!({"include_usage": true});
        let (_, _, text) = post_raw(&proxy.url("/v1/chat/completions"), request).await;
        let chunks = data_events(&parse_sse(&text));
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], total, "{sampling}: {text}");

        let mut plain = agent_request(0);
        plain["model"] = json!("win-0-plain");
        let (_, _, body) = post(&proxy.url("/v1/chat/completions"), plain, &[]).await;
        assert!(body["usage"].get("completion_tokens_details").is_none(), "{body}");
        assert!(body["bestofn"]["usage"]["generation"].get("reasoning_tokens").is_none());
    }
}

/// What the RM's `input` texts of one scoring call hold, in candidate order.
fn rm_inputs(rm: &FakeServer) -> Vec<String> {
    let calls = rm.requests_to("/classify");
    let last = calls.last().expect("the RM was called");
    last.body["input"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

/// Scorers read a tool-call candidate rendered (`tool call: NAME CANONICAL_ARGS`), and the
/// reasoning only when configured with `include_reasoning = true`.
#[tokio::test(flavor = "multi_thread")]
async fn scorers_read_tool_calls_rendered_and_reasoning_only_when_asked() {
    let upstream = FakeServer::start(agent_upstream()).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&agent_config(&upstream, &rm, "n", ""));
    let thinking = "The user wants the weather in Paris and the local time.";

    let mut request = agent_request(2);
    request["bestofn"] = json!({"return_candidates": true});
    let (_, _, body) = post(&proxy.url("/v1/chat/completions"), request, &[]).await;
    let inputs = rm_inputs(&rm);
    assert_eq!(inputs.len(), 4);
    // Candidate order is the upstream's: shapes 0, 1, 2, 3.
    assert!(
        inputs[3].contains("tool call: get_weather {\"city\":\"Paris\"}\ntool call: get_time {\"format\":\"24h\",\"include\":[\"date\",\"weekday\"],\"note\":\"q=1\",\"timezone\":\"Europe/Paris\"}"),
        "{}",
        inputs[3]
    );
    assert!(inputs[2].contains("Checking both for you.\ntool call: get_weather {\"city\":\"Paris\"}"));
    assert!(inputs.iter().all(|t| !t.contains(thinking)), "no reasoning without include_reasoning: {inputs:?}");
    // `return_candidates` lists the same rendering.
    let listed = &body["bestofn"]["candidates"];
    assert_eq!(
        listed[3]["text"],
        "tool call: get_weather {\"city\":\"Paris\"}\ntool call: get_time {\"format\":\"24h\",\"include\":[\"date\",\"weekday\"],\"note\":\"q=1\",\"timezone\":\"Europe/Paris\"}"
    );
    assert_eq!(listed[2]["finish_reason"], "tool_calls");

    let mut request = agent_request(2);
    request["bestofn"] = json!({"scorer": "rm_reasoning"});
    let (status, _, body) = post(&proxy.url("/v1/chat/completions"), request, &[]).await;
    assert_eq!(status, 200, "{body}");
    let inputs = rm_inputs(&rm);
    for (i, text) in inputs.iter().enumerate() {
        // Shapes 0-2 reason (under either field name); shape 3 does not.
        assert_eq!(text.contains(thinking), i < 3, "candidate {i}: {text}");
    }
    assert!(inputs[2].contains("(shape 2)\n\nChecking both for you.\ntool call: get_weather"), "{}", inputs[2]);
    assert_eq!(body["choices"][0]["message"], agent_message(2, 9.0));
}

/// An agent's conversation (an assistant turn that called tools, the tools' results, content
/// parts) reaches the RM with every turn rendered; the recorder writes each candidate's whole
/// message; `eval bon --rescore` renders from it, so a scorer with `include_reasoning` reads
/// the reasoning offline as online.
#[tokio::test(flavor = "multi_thread")]
async fn agent_conversations_are_scored_and_recorded_whole_and_rescored_from_the_message() {
    let upstream = FakeServer::start(agent_upstream()).await;
    let rm = FakeServer::start(rm_handler()).await;
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("samples.jsonl");
    let recorder = format!("[recorder]\npath = \"{}\"\n", recording.display());
    let config_text = agent_config(&upstream, &rm, "n", "").replace("[policy]", &format!("{recorder}\n[policy]"));
    let proxy = Bestofn::start(&config_text);

    let mut request = agent_request(0);
    request["messages"] = json!([
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18, \"sky\": \"clear\"}"},
        {"role": "user", "content": "And the time?"}
    ]);
    let (status, _, body) = post(&proxy.url("/v1/chat/completions"), request, &[]).await;
    assert_eq!(status, 200, "{body}");
    let inputs = rm_inputs(&rm);
    let expected_turns = "<|im_start|>user\nWeather in Paris?\n[image_url]<|im_end|>\n\
        <|im_start|>assistant\ntool call: get_weather {\"city\":\"Paris\"}<|im_end|>\n\
        <|im_start|>tool\n{\"temp_c\": 18, \"sky\": \"clear\"}<|im_end|>\n\
        <|im_start|>user\nAnd the time?<|im_end|>\n";
    for text in &inputs {
        assert!(text.contains(expected_turns), "{text}");
    }

    // The recorder writes its line off the request path.
    let mut line = String::new();
    for _ in 0..100 {
        line = std::fs::read_to_string(&recording).unwrap_or_default();
        if line.ends_with('\n') {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let record: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(record["messages"][2]["content"], "tool call: get_weather {\"city\":\"Paris\"}");
    assert_eq!(record["messages"][3], json!({"role": "tool", "content": "{\"temp_c\": 18, \"sky\": \"clear\"}"}));
    for (i, shape) in SHAPES.iter().enumerate() {
        let q = if *shape == 0 { 9.0 } else { 1.0 };
        assert_eq!(record["candidates"][i]["message"], agent_message(*shape, q), "candidate {i}");
    }
    assert_eq!(
        record["candidates"][3]["text"],
        "tool call: get_weather {\"city\":\"Paris\"}\ntool call: get_time {\"format\":\"24h\",\"include\":[\"date\",\"weekday\"],\"note\":\"q=1\",\"timezone\":\"Europe/Paris\"}"
    );

    // Offline: the same rendering, the reasoning included for the scorer that asks for it.
    rm.clear();
    let cfg = dir.path().join("bestofn.toml");
    std::fs::write(&cfg, &config_text).unwrap();
    let (samples, cfg) = (recording.display().to_string(), cfg.display().to_string());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        bestofn(&[
            "eval",
            "bon",
            "--samples",
            &samples,
            "--label-with",
            "rm",
            "--rescore",
            "rm_reasoning",
            "--config",
            &cfg,
            "--format",
            "json",
            "--bootstrap",
            "0",
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("rm_reasoning"), "{out}");
    let calls = rm.requests_to("/classify");
    assert_eq!(calls.len(), 2, "labelling with rm, then rescoring with rm_reasoning");
    let labelled: Vec<&str> = calls[0].body["input"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(labelled.iter().filter(|t| t.contains("The user wants")).count(), 0, "{labelled:?}");
    let offline = rm_inputs(&rm);
    assert_eq!(offline.len(), 4);
    let thinking = "The user wants the weather in Paris and the local time.";
    for (i, text) in offline.iter().enumerate() {
        assert!(text.contains(expected_turns), "{text}");
        assert_eq!(text.contains(thinking), i < 3, "candidate {i} offline: {text}");
    }
    assert!(offline[3].ends_with(
        "<|im_start|>assistant\ntool call: get_weather {\"city\":\"Paris\"}\ntool call: get_time {\"format\":\"24h\",\"include\":[\"date\",\"weekday\"],\"note\":\"q=1\",\"timezone\":\"Europe/Paris\"}<|im_end|>\n"
    ));
}

/// Log probabilities reach the client only when it asked for them, each token's alternatives cut
/// to its `top_logprobs`; a client that did not ask gets `logprobs: null`.
#[tokio::test(flavor = "multi_thread")]
async fn logprobs_only_when_asked_cut_to_top_logprobs() {
    // An upstream that sends logprobs with three alternatives a token, asked or not.
    let upstream = FakeServer::start(|req: &Recorded| {
        let n = req.body.get("n").and_then(Value::as_u64).unwrap_or(1);
        let token = |t: &str| {
            json!({"token": t, "logprob": -0.1, "bytes": [], "top_logprobs": [
                {"token": t, "logprob": -0.1, "bytes": []}, {"token": "x", "logprob": -2.0, "bytes": []},
                {"token": "y", "logprob": -3.0, "bytes": []}]})
        };
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                json!({"index": i, "message": {"role": "assistant", "content": format!("answer q={i}")},
                       "logprobs": {"content": [token("answer"), token(" q")], "refusal": null}, "finish_reason": "stop"})
            })
            .collect();
        Reply::Json(200, json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": choices,
            "usage": {"prompt_tokens": 1, "completion_tokens": 2 * n, "total_tokens": 1 + 2 * n}}))
    })
    .await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&agent_config(&upstream, &rm, "n", ""));
    let body = |extra: Value| {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "q"}]});
        b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        b
    };
    let (_, _, not_asked) = post(&proxy.url("/v1/chat/completions"), body(json!({})), &[]).await;
    assert_eq!(not_asked["choices"][0]["logprobs"], Value::Null, "{not_asked}");
    let (_, _, asked) =
        post(&proxy.url("/v1/chat/completions"), body(json!({"logprobs": true, "top_logprobs": 2})), &[]).await;
    let tokens = asked["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t["top_logprobs"].as_array().unwrap().len() == 2), "{asked}");
    let (_, _, text) = post_raw(
        &proxy.url("/v1/chat/completions"),
        body(json!({"logprobs": true, "top_logprobs": 1, "stream": true})),
    )
    .await;
    let chunks = data_events(&parse_sse(&text));
    let finish = chunks.iter().find(|c| c["choices"][0]["finish_reason"].is_string()).unwrap();
    let streamed = finish["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(streamed.iter().all(|t| t["top_logprobs"].as_array().unwrap().len() == 1), "{text}");
    let (_, _, text) = post_raw(&proxy.url("/v1/chat/completions"), body(json!({"stream": true}))).await;
    for chunk in data_events(&parse_sse(&text)) {
        if let Some(choice) = chunk["choices"].get(0) {
            assert_eq!(choice["logprobs"], Value::Null, "{text}");
        }
    }
}
