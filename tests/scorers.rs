//! Scorers without an RM server, through the real binary: judge, consensus, verify, ensemble,
//! and the score cache.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

/// An upstream whose candidates are fixed texts, in order, for each sampling call.
fn fixed_upstream(texts: Vec<&'static str>) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    move |r: &Recorded| {
        let n = r.body.get("n").and_then(Value::as_u64).unwrap_or(1) as usize;
        let choices: Vec<Value> = texts
            .iter()
            .take(n)
            .enumerate()
            .map(|(i, t)| json!({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}))
            .collect();
        Reply::Json(
            200,
            json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}}),
        )
    }
}

fn plain_config(upstream: &FakeServer, n: u32, extra: &str) -> String {
    format!("[upstream]\nbase_url = \"{}/v1\"\nsampling = \"n\"\n\n{extra}\n[policy]\nn = {n}\n", upstream.url())
}

#[tokio::test(flavor = "multi_thread")]
async fn consensus_is_the_default_and_the_majority_answer_wins() {
    let upstream = FakeServer::start(fixed_upstream(vec![
        "5 + 7 = 13, so the answer is 13",
        "Adding them gives \\boxed{12}",
        "The answer is 12.",
        "#### 12.0",
        "I think it is 11",
    ]))
    .await;
    let proxy = Bestofn::start(&plain_config(&upstream, 5, ""));
    let mut body = chat_body("What is 5 + 7?");
    body["bestofn"] = json!({"return_candidates": true});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["scorer"], "consensus");
    assert_eq!(resp["bestofn"]["chosen"], 1, "the first of the three '12' answers");
    let scores: Vec<f64> = resp["bestofn"]["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
    assert_eq!(scores, vec![0.0, 0.5, 0.5, 0.5, 0.0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_picks_the_candidate_that_obeys() {
    let upstream = FakeServer::start(fixed_upstream(vec![
        "Tea Is A Drink Made From Leaves.",
        &*Box::leak("tea ".repeat(80).into_boxed_str()),
        "tea is a drink brewed from the leaves of the tea plant.",
    ]))
    .await;
    let proxy = Bestofn::start(&plain_config(&upstream, 3, ""));
    let mut body = chat_body("Describe tea. Answer in all lowercase, in under 50 words.");
    body["bestofn"] = json!({"scorer": "verify"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["chosen"], 2, "{resp}");
    assert_eq!(resp["bestofn"]["scores"], json!([0.5, 0.5, 1.0]));

    // response_format json_schema: the schema-valid JSON wins.
    let upstream = FakeServer::start(fixed_upstream(vec![
        "{\"name\": \"Ada\"}",
        "Sure! Ada, 36",
        "{\"name\": \"Ada\", \"age\": 36}",
    ]))
    .await;
    let proxy = Bestofn::start(&plain_config(&upstream, 3, ""));
    let mut body = chat_body("Give me a person.");
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person", "schema":
        {"type": "object", "required": ["name", "age"], "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}}});
    body["bestofn"] = json!({"scorer": "verify"});
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(resp["bestofn"]["chosen"], 2, "{resp}");
}

/// A `response_format` json_schema with `$ref`/`$defs`, `oneOf` and `pattern`.
fn order_format(schema_extra: Value) -> Value {
    let mut schema = json!({
        "type": "object",
        "$defs": {"item": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "qty": {"type": "integer"}}, "required": ["sku", "qty"], "additionalProperties": false}},
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
            "payment": {"oneOf": [{"type": "object", "required": ["card"]}, {"type": "object", "required": ["iban"]}]}
        },
        "required": ["items", "payment"]
    });
    schema.as_object_mut().unwrap().extend(schema_extra.as_object().unwrap().clone());
    json!({"type": "json_schema", "json_schema": {"name": "order", "strict": true, "schema": schema}})
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_checks_the_whole_json_schema_and_refuses_one_that_does_not_compile() {
    let upstream = FakeServer::start(fixed_upstream(vec![
        // $ref: the item is not a $defs/item (no qty).
        r#"{"items": [{"sku": "TEA-0001"}], "payment": {"card": "4242"}}"#,
        // oneOf: both branches match.
        r#"{"items": [{"sku": "TEA-0001", "qty": 1}], "payment": {"card": "4242", "iban": "DE00"}}"#,
        // pattern: the sku.
        r#"{"items": [{"sku": "tea-1", "qty": 1}], "payment": {"card": "4242"}}"#,
        // Conforms.
        r#"{"items": [{"sku": "TEA-0001", "qty": 1}], "payment": {"iban": "DE00"}}"#,
    ]))
    .await;
    let proxy = Bestofn::start(&plain_config(&upstream, 4, ""));
    let url = proxy.url("/v1/chat/completions");
    let mut body = chat_body("Place my order.");
    body["response_format"] = order_format(json!({}));
    body["bestofn"] = json!({"scorer": "verify"});
    let (status, _, resp) = post(&url, body.clone(), &[]).await;
    assert_eq!(status, 200, "{resp}");
    // Conformance is validity, verify's gate: a candidate that breaks the schema scores below 0.
    assert_eq!(resp["bestofn"]["scores"], json!([-1.0, -1.0, -1.0, 1.0]), "{resp}");
    assert_eq!(resp["bestofn"]["chosen"], 3, "{resp}");
    assert_eq!(resp["bestofn"]["n_valid"], 1, "{resp}");
    assert_eq!(upstream.requests().len(), 1);

    // At N > 1 a schema that does not compile is the client's error, before any upstream call,
    // streamed or not.
    upstream.clear();
    let dangling =
        order_format(json!({"properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/missing"}}}}));
    let bad_pattern = order_format(json!({"properties": {"code": {"type": "string", "pattern": "([A-Z]"}}}));
    for (what, format) in [("dangling $ref", &dangling), ("invalid pattern", &bad_pattern)] {
        for stream in [false, true] {
            let mut bad = body.clone();
            bad["response_format"] = format.clone();
            bad["stream"] = json!(stream);
            let (status, _, resp) = post(&url, bad, &[]).await;
            assert_eq!(status, 400, "{what}, stream {stream}: {resp}");
            assert_envelope(&resp, Some("response_format.json_schema.schema"));
            assert_eq!(resp["error"]["type"], "invalid_request_error", "{resp}");
        }
    }
    assert!(upstream.requests().is_empty(), "no upstream call for a schema that does not compile");

    // At N = 1 the request passes through: the upstream judges the schema.
    let mut single = body.clone();
    single["response_format"] = dangling.clone();
    single["bestofn"] = json!({"scorer": "verify", "n": 1});
    let (status, headers, resp) = post(&url, single, &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(headers["x-bestofn-n"], "1");
    let sent = upstream.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body["response_format"], dangling, "forwarded as sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_judge_rates_with_the_rewardbench_prompt_and_top_logprobs() {
    let upstream = FakeServer::start(fixed_upstream(vec!["first answer", "second answer", "third answer"])).await;
    // A judge that rates "second" 9, "first" 4, and gives "third" no parseable rating.
    let judge = FakeServer::start(|r: &Recorded| {
        let prompt = r.body["messages"][0]["content"].as_str().unwrap_or("");
        let (text, logprobs) = if prompt.contains("second answer") {
            ("Clear and correct. 9", json!({"content": [{"token": "9", "logprob": -0.1, "top_logprobs": [
                {"token": "9", "logprob": (0.5f64).ln()}, {"token": "10", "logprob": (0.5f64).ln()}]}]}))
        } else if prompt.contains("first answer") {
            ("Weak. 4", Value::Null)
        } else {
            ("I cannot rate this.", Value::Null)
        };
        Reply::Json(200, json!({"id": "j", "object": "chat.completion", "created": 1, "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}}))
    })
    .await;
    let extra = format!(
        "[scorers.judge]\nkind = \"judge\"\nbase_url = \"{}/v1\"\nmodel = \"judge-model\"\nlogprobs = true\n",
        judge.url()
    );
    let proxy = Bestofn::start(&plain_config(&upstream, 3, &extra));
    let mut body = chat_body("Explain X.");
    body["bestofn"] = json!({"scorer": "judge"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        resp["bestofn"]["scores"],
        json!([4.0, 9.5, -1.0]),
        "expected rating over 9 and 10; -1 when unparseable"
    );
    assert_eq!(resp["bestofn"]["chosen"], 1);
    let calls = judge.requests();
    assert_eq!(calls.len(), 3);
    let sent = calls[0].body["messages"][0]["content"].as_str().unwrap();
    assert!(
        sent.contains("### Task Description")
            && sent.contains("[Query]\nExplain X.")
            && sent.contains("[Your judgement]")
    );
    assert_eq!(calls[0].body["top_logprobs"], 20);
    assert_eq!(calls[0].body["model"], "judge-model");

    // Ranking mode: one call, the pick mapped back through the seeded shuffle.
    let ranker = FakeServer::start(|r: &Recorded| {
        let user = r.body["messages"][1]["content"].as_str().unwrap_or("");
        // Find which letter shows "third answer" and pick it.
        let letter = ["A", "B", "C"].into_iter().find(|l| user.contains(&format!("Assistant {l}'s Answer]\nthird answer"))).unwrap();
        Reply::Json(200, json!({"id": "r", "object": "chat.completion", "created": 1, "model": "judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Best is [[{letter}]]")}, "finish_reason": "stop"}]}))
    })
    .await;
    let extra = format!(
        "[scorers.ranker]\nkind = \"judge\"\nmode = \"ranking\"\nbase_url = \"{}/v1\"\nseed = 7\n",
        ranker.url()
    );
    let proxy = Bestofn::start(&plain_config(&upstream, 3, &extra));
    let mut body = chat_body("Explain X.");
    body["bestofn"] = json!({"scorer": "ranker"});
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(resp["bestofn"]["scores"], json!([0.0, 0.0, 1.0]), "{resp}");
    assert_eq!(ranker.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ensembles_and_the_score_cache() {
    let upstream =
        FakeServer::start(fixed_upstream(vec!["answer q=9 WITH CAPS", "answer q=1", "answer q=5", "answer q=1"])).await;
    let rm = FakeServer::start(rm_handler()).await;
    let extra = format!(
        "[scorers.rm]\nkind = \"reward_http\"\napi = \"vllm_classify\"\nurl = \"{}/classify\"\n\n\
         [scorers.strict]\nkind = \"ensemble\"\nmembers = [\"verify\", \"rm\"]\n\n\
         [scorers.blend]\nkind = \"ensemble\"\nmembers = [\"verify\", \"rm\"]\ncombine = \"weighted\"\nweights = [0.0, 1.0]\n\n\
         [score_cache]\nmax_entries = 1000\nttl_ms = 60000\n",
        rm.url()
    );
    let proxy = Bestofn::start(&plain_config(&upstream, 4, &extra));
    // verify first (all lowercase), the RM breaks the tie among the lowercase ones.
    let mut body = chat_body("Reply in all lowercase.");
    body["bestofn"] = json!({"scorer": "strict"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["chosen"], 2, "q=5 is the best lowercase answer: {resp}");
    // Weighted with all weight on the RM: the RM's favourite, despite the caps.
    body["bestofn"] = json!({"scorer": "blend"});
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(resp["bestofn"]["chosen"], 0);

    // The RM saw 3 distinct texts once (the duplicate "q=1" is scored once), then nothing new.
    let texts: usize = rm.requests().iter().map(|r| r.body["input"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(texts, 3, "identical candidates scored once and the second request hit the cache");
    let metrics = client().get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("bestofn_score_cache_misses_total{scorer=\"rm\"} 3"), "{metrics}");
    assert!(metrics.contains("bestofn_score_cache_hits_total{scorer=\"rm\"} 3"), "{metrics}");
}

#[test]
fn every_precise_if_prompt_of_the_real_model_set_states_a_recognised_constraint() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/prompts_if.jsonl")).unwrap();
    let mut rows = 0;
    for line in text.lines() {
        let prompt = serde_json::from_str::<Value>(line).unwrap()["prompt"].as_str().unwrap().to_string();
        assert!(!bestofn::score::parse_constraints(&prompt).is_empty(), "nothing recognised in: {prompt}");
        rows += 1;
    }
    assert_eq!(rows, 40);
    let math = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/prompts_math.jsonl")).unwrap();
    assert_eq!(math.lines().count(), 40);
}
