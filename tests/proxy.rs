//! The real `bestofn` binary against loopback upstream and reward-model servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

fn candidate_qualities(body: &Value) -> Vec<f64> {
    body["bestofn"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| read_quality(c["text"].as_str().unwrap()))
        .collect()
}

fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[tokio::test(flavor = "multi_thread")]
async fn chooses_the_max_reward_candidate_for_every_rm_api() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 5));

    for (scorer, path, calls) in [
        ("vllm", "/classify", 1),
        ("vllm_messages", "/classify", 5),
        ("pooling", "/pooling", 1),
        ("tei", "/predict", 1),
        ("sglang", "/sglang/classify", 1),
    ] {
        rm.clear();
        let mut body = chat_body("What is 2+2?");
        body["bestofn"] = json!({"scorer": scorer, "return_candidates": true});
        body["seed"] = json!(40);
        let (status, headers, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
        assert_eq!(status, 200, "{scorer}: {resp}");
        let qualities = candidate_qualities(&resp);
        assert_eq!(qualities.len(), 5);
        let best = argmax(&qualities);
        let chosen_text = resp["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(read_quality(chosen_text), qualities[best], "{scorer}: chose {chosen_text}");
        assert_eq!(resp["choices"].as_array().unwrap().len(), 1);
        assert_eq!(resp["choices"][0]["index"], 0);
        assert_eq!(resp["object"], "chat.completion");
        let b = &resp["bestofn"];
        assert_eq!(b["chosen"], best, "{scorer}");
        assert_eq!(b["scorer"], scorer);
        assert_eq!(b["n_requested"], 5);
        assert_eq!(b["n_received"], 5);
        let scores: Vec<f64> = b["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
        assert_eq!(scores, qualities, "{scorer}: scores in candidate order");
        assert_eq!(headers["x-bestofn-chosen"], best.to_string().as_str());
        assert_eq!(headers["x-bestofn-n"], "5");
        assert_eq!(headers["x-bestofn-reward"].to_str().unwrap().parse::<f64>().unwrap(), qualities[best]);
        assert_eq!(rm.requests_to(path).len(), calls, "{scorer}: RM calls");
    }

    // The RM sees the whole conversation with the candidate as the final assistant turn.
    rm.clear();
    let mut body = json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"}
    ]});
    body["bestofn"] = json!({"n": 2});
    let (status, _, _) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200);
    let sent = &rm.requests_to("/classify")[0].body;
    assert_eq!(sent["use_activation"], false);
    assert_eq!(sent["model"], "Skywork/Skywork-Reward-V2-Qwen3-0.6B");
    let text = sent["input"][0].as_str().unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nAnswer from seed"),
        "{text}"
    );
    assert!(text.ends_with("<|im_end|>\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn n_and_parallel_modes_pick_the_same_candidate() {
    let rm = FakeServer::start(rm_handler()).await;
    let mut chosen = Vec::new();
    for mode in ["n", "parallel"] {
        let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
        let proxy = Bestofn::start(&config(&upstream, &rm, mode, 6));
        let mut body = chat_body("pick one");
        body["seed"] = json!(123);
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
        assert_eq!(status, 200, "{resp}");
        chosen.push(resp["choices"][0]["message"]["content"].as_str().unwrap().to_string());
        let calls = upstream.requests_to("/v1/chat/completions");
        if mode == "n" {
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].body["n"], 6);
            assert_eq!(calls[0].body["seed"], 123);
            assert_eq!(resp["bestofn"]["sampling"], "n");
        } else {
            assert_eq!(calls.len(), 6);
            let mut seeds: Vec<i64> = calls.iter().map(|c| c.body["seed"].as_i64().unwrap()).collect();
            seeds.sort();
            assert_eq!(seeds, (123..129).collect::<Vec<_>>(), "candidate i gets seed+i");
            assert!(calls.iter().all(|c| c.body.get("n").is_none()));
            assert_eq!(resp["bestofn"]["sampling"], "parallel");
        }
    }
    assert_eq!(chosen[0], chosen[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_falls_back_to_parallel_when_n_is_rejected_and_remembers() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Reject, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "auto", 4));

    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["n_received"], 4);
    assert_eq!(resp["bestofn"]["sampling"], "parallel");
    let calls = upstream.requests_to("/v1/chat/completions");
    assert_eq!(calls.len(), 5, "one rejected n=4 call, then four single calls");
    assert_eq!(calls[0].body["n"], 4);

    upstream.clear();
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    let calls = upstream.requests_to("/v1/chat/completions");
    assert_eq!(calls.len(), 4, "learned: no more n>1 attempts");
    assert!(calls.iter().all(|c| c.body.get("n").is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_tops_up_when_the_upstream_caps_n() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Cap(2), UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "auto", 5));

    let mut body = chat_body("q");
    body["seed"] = json!(7);
    body["bestofn"] = json!({"return_candidates": true});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["n_received"], 5);
    assert_eq!(resp["bestofn"]["sampling"], "n+parallel");
    let texts: Vec<&str> =
        resp["bestofn"]["candidates"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    let expected: Vec<String> = (7..12).map(candidate_text).collect();
    assert_eq!(texts, expected, "each candidate has its own seed");

    upstream.clear();
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200);
    let mut sizes: Vec<u64> = upstream
        .requests_to("/v1/chat/completions")
        .iter()
        .map(|c| c.body.get("n").and_then(Value::as_u64).unwrap_or(1))
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![1, 2, 2], "learned cap of 2 choices per call");
    assert_eq!(resp["bestofn"]["n_received"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_counts_every_call_and_every_candidate() {
    let rm = FakeServer::start(rm_handler()).await;

    // Parallel: the prompt is paid once per call.
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "parallel", 3));
    let mut body = chat_body("q");
    body["seed"] = json!(1);
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    let expected_completion: u64 = (1..4).map(|s| fake_tokens(&candidate_text(s))).sum();
    assert_eq!(resp["usage"]["prompt_tokens"], 3 * PROMPT_TOKENS);
    assert_eq!(resp["usage"]["completion_tokens"], expected_completion);
    assert_eq!(resp["usage"]["total_tokens"], 3 * PROMPT_TOKENS + expected_completion);
    assert_eq!(resp["bestofn"]["usage"]["generation"]["completion_tokens_estimated"], false);
    assert_eq!(resp["bestofn"]["usage"]["scorer"]["calls"], 1);
    assert_eq!(resp["bestofn"]["usage"]["scorer"]["prompt_tokens"], 60);
    drop(proxy);

    // n mode with an honest upstream: one prompt.
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 3));
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(resp["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(resp["usage"]["completion_tokens"], expected_completion);
    drop(proxy);

    // n mode with llama.cpp's one-choice count: not silently under-counted.
    let lying = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::OneChoice)).await;
    let proxy = Bestofn::start(&config(&lying, &rm, "n", 3));
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    let generation = &resp["bestofn"]["usage"]["generation"];
    assert_eq!(generation["completion_tokens_estimated"], true, "{resp}");
    assert_eq!(generation["upstream_reported_completion_tokens"], fake_tokens(&candidate_text(1)));
    assert!(resp["usage"]["completion_tokens"].as_u64().unwrap() >= 2 * fake_tokens(&candidate_text(1)), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_fields_reach_the_upstream_untouched_and_steering_does_not() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 2));
    let mut body = chat_body("q");
    let extras = json!({
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "stop": ["\n\n"],
        "max_tokens": 17,
        "temperature": 0.7,
        "vendor_extension": {"top_k": 40, "nested": [1, 2, {"x": null}]},
    });
    for (k, v) in extras.as_object().unwrap() {
        body[k] = v.clone();
    }
    body["bestofn"] = json!({"n": 3});
    let (status, _, _) =
        post(&proxy.url("/v1/chat/completions"), body, &[("x-bestofn-scorer", "tei"), ("x-bestofn-domain", "math")])
            .await;
    assert_eq!(status, 200);
    let call = &upstream.requests_to("/v1/chat/completions")[0];
    for (k, v) in extras.as_object().unwrap() {
        assert_eq!(&call.body[k], v, "{k}");
    }
    assert!(call.body.get("bestofn").is_none());
    assert_eq!(call.body["n"], 3, "steered N");
    assert!(call.headers.keys().all(|h| !h.as_str().starts_with("x-bestofn")));
    assert_eq!(rm.requests_to("/predict").len(), 1, "x-bestofn-scorer header steered the scorer");
}

#[tokio::test(flavor = "multi_thread")]
async fn top_k_and_pass_through() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 4));

    // Client n=2: the two best, best first.
    let mut body = chat_body("q");
    body["n"] = json!(2);
    body["seed"] = json!(50);
    body["bestofn"] = json!({"return_candidates": true});
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    let mut qualities = candidate_qualities(&resp);
    let choices = resp["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    qualities.sort_by(|a, b| b.partial_cmp(a).unwrap());
    assert_eq!(read_quality(choices[0]["message"]["content"].as_str().unwrap()), qualities[0]);
    assert_eq!(read_quality(choices[1]["message"]["content"].as_str().unwrap()), qualities[1]);
    assert_eq!((choices[0]["index"].as_u64(), choices[1]["index"].as_u64()), (Some(0), Some(1)));

    // N = 1: the upstream's answer, unchanged, and no scorer call.
    upstream.clear();
    rm.clear();
    let mut body = chat_body("q");
    body["bestofn"] = json!({"n": 1});
    body["seed"] = json!(9);
    let (status, headers, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(resp["id"], "chatcmpl-9");
    assert_eq!(resp["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert!(resp.get("bestofn").is_none());
    assert_eq!(headers["x-bestofn-n"], "1");
    assert!(rm.requests().is_empty());
    assert_eq!(upstream.requests_to("/v1/chat/completions").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_400_envelope_naming_the_field() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 2));
    let url = proxy.url("/v1/chat/completions");

    let client = client();
    let resp =
        client.post(&url).header("content-type", "application/json").body("{\"messages\": [").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_envelope(&body, None);
    assert!(body["error"]["message"].as_str().unwrap().contains("JSON"));

    let cases = [
        (json!({"model": "m"}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": "hello"}), "messages"),
        (json!({"messages": [{"content": "hi"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "n": "two"}), "n"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "model": 5}), "model"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "bestofn": {"n": 65}}), "bestofn.n"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "bestofn": {"n": 0}}), "bestofn.n"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "bestofn": {"scorer": "nope"}}), "bestofn.scorer"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "bestofn": {"domain": "poetry"}}), "bestofn.domain"),
        (json!({"messages": [{"role": "user", "content": "hi"}], "n": 100}), "n"),
    ];
    for (body, param) in cases {
        let (status, _, resp) = post(&url, body.clone(), &[]).await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert_envelope(&resp, Some(param));
        assert_eq!(resp["error"]["type"], "invalid_request_error");
    }
    let (status, _, resp) = post(&url, chat_body("x"), &[("x-bestofn-n", "lots")]).await;
    assert_eq!(status, 400);
    assert_envelope(&resp, Some("x-bestofn-n"));
    assert!(upstream.requests().is_empty(), "nothing invalid reaches the upstream");

    let resp = client.get(proxy.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_envelope(&resp.json().await.unwrap(), None);
    let resp = client.get(proxy.url("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_map_to_clear_statuses() {
    let rm = FakeServer::start(rm_handler()).await;

    // Upstream 4xx: status and message passed through.
    let rejecting = FakeServer::start(|_: &Recorded| {
        Reply::Json(400, json!({"error": {"message": "max_tokens is too large: 99999", "type": "BadRequestError", "param": null, "code": 400}}))
    })
    .await;
    let proxy = Bestofn::start(&config(&rejecting, &rm, "n", 2));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("x"), &[]).await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("max_tokens is too large: 99999"));
    assert_envelope(&resp, None);
    assert_eq!(rejecting.requests().len(), 1, "a 4xx is never retried");
    drop(proxy);

    // SGLang's flat error from a 5xx upstream: 502 naming the upstream, after retries.
    let failing = FakeServer::start(|_: &Recorded| {
        Reply::Json(503, json!({"object": "error", "message": "engine overloaded", "type": "ServiceUnavailable", "param": null, "code": 503}))
    })
    .await;
    let proxy = Bestofn::start(&config(&failing, &rm, "n", 2));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("x"), &[]).await;
    assert_eq!(status, 502, "{resp}");
    let message = resp["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("the upstream failed: HTTP 503: engine overloaded"), "{message}");
    assert!(!message.contains(&failing.addr.to_string()), "the client is not told where the upstream is: {message}");
    assert_eq!(failing.requests().len(), 2, "max_retries = 1");
    drop(proxy);

    // Unreachable upstream: 502.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = config(&failing, &rm, "n", 2).replace(&failing.url(), &format!("http://{closed}"));
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("x"), &[]).await;
    assert_eq!(status, 502, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("cannot reach"), "{resp}");
    drop(proxy);

    // Slow upstream: 504.
    let slow = FakeServer::start(|_: &Recorded| {
        Reply::Delayed(std::time::Duration::from_secs(10), Box::new(Reply::Json(200, json!({}))))
    })
    .await;
    let cfg = config(&slow, &rm, "n", 2).replace("timeout_ms = 5000", "timeout_ms = 300");
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("x"), &[]).await;
    assert_eq!(status, 504, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("300 ms"), "{resp}");
    drop(proxy);

    // A redirecting upstream is a misconfiguration: 502 naming the status, and the redirect's
    // target never sees the request.
    let elsewhere = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirecting_addr = redirecting.local_addr().unwrap();
    let location = format!("{}/chat/completions", elsewhere.url());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = redirecting.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = read_http_request(&mut stream).await;
            let head = format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
        }
    });
    let cfg = config(&failing, &rm, "n", 2).replace(&failing.url(), &format!("http://{redirecting_addr}/v1"));
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("x"), &[]).await;
    assert_eq!(status, 502, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("307"), "{resp}");
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
    drop(proxy);

    // Garbage from the upstream: 502, no panic.
    let garbage = FakeServer::start(|_: &Recorded| Reply::Raw(200, "{\"choices\": \"nope\"}".into())).await;
    let proxy = Bestofn::start(&config(&garbage, &rm, "n", 2));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("x"), &[]).await;
    assert_eq!(status, 502, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("choices"));
}

#[tokio::test(flavor = "multi_thread")]
async fn scorer_failures_are_502_with_the_backend_message() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let tei = FakeServer::start(|_: &Recorded| {
        Reply::Json(413, json!({"error": "Batch size error", "error_type": "Validation"}))
    })
    .await;
    let cfg = config(&upstream, &tei, "n", 3);
    let proxy = Bestofn::start(&cfg);
    let mut body = chat_body("x");
    body["bestofn"] = json!({"scorer": "tei"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 502, "{resp}");
    let message = resp["error"]["message"].as_str().unwrap();
    assert!(message.contains("scorer tei") && message.contains("Batch size error"), "{message}");

    // An RM answering the wrong number of scores is an error, not a wrong pick.
    let short = FakeServer::start(|_: &Recorded| Reply::Json(200, json!([{"embedding": [1.0]}]))).await;
    let proxy = Bestofn::start(&config(&upstream, &short, "n", 3));
    let mut body = chat_body("x");
    body["bestofn"] = json!({"scorer": "sglang"});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 502, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("1 scores for 3 candidates"), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn models_health_and_request_logs() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 3));
    let client = client();

    let models: Value = client.get(proxy.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "fake-model");
    let health = client.get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let secret = "the secret prompt text";
    let (status, headers, _) =
        post(&proxy.url("/v1/chat/completions"), chat_body(secret), &[("x-request-id", "req-42")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "req-42");
    // The serving thread writes its log lines once it idles, after the response; poll briefly.
    let mut line = None;
    for _ in 0..100 {
        line = proxy.logs().into_iter().find(|l| l.contains("req-42"));
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let line = line.expect("a log line for the request");
    for field in ["domain=general", "n=3", "chosen=", "scores=", "latency_ms="] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(proxy.logs().iter().all(|l| !l.contains(secret) && !l.contains("Answer from seed")));

    let listed =
        config(&upstream, &rm, "n", 3).replace("max_retries = 1", "max_retries = 1\nmodels = [\"best-model\"]");
    let proxy = Bestofn::start(&listed);
    let models: Value = client.get(proxy.url("/v1/models")).send().await.unwrap().json().await.unwrap();
    assert_eq!(models["data"][0]["id"], "best-model");
    assert_eq!(models["object"], "list");
}

/// An upstream answering `n` choices of long texts with an honest count of few, long tokens
/// (10 characters a token), shaped like llama.cpp (`timings`) when `llama` is set, with a
/// llama.cpp `POST /tokenize` at its root that counts words.
async fn counting_upstream(llama: bool) -> FakeServer {
    FakeServer::start(move |req: &Recorded| {
        if req.path == "/tokenize" {
            let words = req.body["content"].as_str().unwrap_or("").split_whitespace().count();
            return Reply::Json(200, json!({"tokens": (0..words).collect::<Vec<_>>()}));
        }
        let n = req.body.get("n").and_then(Value::as_u64).unwrap_or(1);
        let texts: Vec<String> = (0..n).map(|i| format!("{} {i}", "abcdefghi ".repeat(20 + i as usize))).collect();
        let choices: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}))
            .collect();
        let honest: usize = texts.iter().map(|t| t.len().div_ceil(10)).sum();
        let mut reply = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": choices,
            "usage": {"prompt_tokens": 5, "completion_tokens": honest, "total_tokens": 5 + honest}});
        if llama {
            reply["timings"] = json!({"predicted_n": honest});
        }
        Reply::Json(200, reply)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_is_the_upstreams_unless_it_is_known_to_under_count() {
    let rm = FakeServer::start(rm_handler()).await;
    let words = |n: usize| -> u64 { (0..n).map(|i| 20 + i as u64 + 1).sum() };
    let honest = |n: usize| -> u64 { (0..n).map(|i| (10 * (20 + i) + 2).div_ceil(10) as u64).sum() };

    // An honest upstream whose tokens pack 10 characters: its figure stands, not an estimate.
    let upstream = counting_upstream(false).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 3));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    let generation = &resp["bestofn"]["usage"]["generation"];
    assert_eq!(resp["usage"]["completion_tokens"], honest(3), "{resp}");
    assert_eq!(generation["completion_tokens_estimated"], false);
    assert!(generation.get("upstream_reported_completion_tokens").is_none(), "{generation}");
    assert!(upstream.requests_to("/tokenize").is_empty());
    drop(proxy);

    // The same upstream forced to recount: its own tokenizer decides.
    let cfg =
        config(&upstream, &rm, "n", 3).replace("sampling = \"n\"", "sampling = \"n\"\nusage_counts = \"recount\"");
    let proxy = Bestofn::start(&cfg);
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(resp["usage"]["completion_tokens"], words(3), "{resp}");
    assert_eq!(upstream.requests_to("/tokenize").len(), 3, "one /tokenize call per candidate, at the root");
    drop(proxy);

    // llama.cpp (recognised by `timings`) is recounted exactly with /tokenize, per candidate.
    let llama = counting_upstream(true).await;
    let proxy = Bestofn::start(&config(&llama, &rm, "n", 3));
    let mut body = chat_body("q");
    body["bestofn"] = json!({"return_candidates": true});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    let generation = &resp["bestofn"]["usage"]["generation"];
    assert_eq!(resp["usage"]["completion_tokens"], words(3), "{resp}");
    assert_eq!(generation["completion_tokens_recounted"], true);
    assert_eq!(generation["completion_tokens_estimated"], false);
    assert_eq!(generation["upstream_reported_completion_tokens"], honest(3));
    let tokenized: Vec<String> =
        llama.requests_to("/tokenize").iter().map(|r| r.body["content"].as_str().unwrap().to_string()).collect();
    for c in resp["bestofn"]["candidates"].as_array().unwrap() {
        assert!(tokenized.contains(&c["text"].as_str().unwrap().to_string()), "every candidate is tokenized");
    }
    drop(proxy);

    // ... unless the config says to trust it.
    let cfg = config(&llama, &rm, "n", 3).replace("sampling = \"n\"", "sampling = \"n\"\nusage_counts = \"trust\"");
    let proxy = Bestofn::start(&cfg);
    let (_, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(resp["usage"]["completion_tokens"], honest(3), "{resp}");
    assert!(resp["bestofn"]["usage"]["generation"].get("completion_tokens_recounted").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_to_an_h2_upstream_when_configured() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    for (mode, version) in
        [("always", http::Version::HTTP_2), ("never", http::Version::HTTP_11), ("auto", http::Version::HTTP_11)]
    {
        upstream.clear();
        let cfg = config(&upstream, &rm, "n", 2)
            .replace("sampling = \"n\"", &format!("sampling = \"n\"\nhttp2 = \"{mode}\""));
        let proxy = Bestofn::start(&cfg);
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
        assert_eq!(status, 200, "{mode}: {resp}");
        let calls = upstream.requests_to("/v1/chat/completions");
        assert!(
            !calls.is_empty() && calls.iter().all(|c| c.version == version),
            "{mode}: {:?}",
            calls.iter().map(|c| c.version).collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_through_answer_is_the_upstreams_bytes_verbatim() {
    // Key order, spacing and escapes that a parse and re-serialisation would change.
    let verbatim = "{ \"usage\": {\"prompt_tokens\": 3, \"completion_tokens\": 2},\n  \"id\": \"x\\u00e9\", \
                    \"choices\": [{\"index\": 0, \"message\": {\"role\": \"assistant\", \"content\": \"1.50\"}, \"finish_reason\": \"stop\"}] }";
    let upstream = FakeServer::start(move |_| Reply::Raw(200, verbatim.to_string())).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 1));
    let (status, content_type, text) = post_raw(&proxy.url("/v1/chat/completions"), chat_body("q")).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert_eq!(text, verbatim);
    let metrics = client().get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("bestofn_completion_tokens_total") && l.ends_with(" 2")),
        "usage is still read for the token metrics:\n{metrics}"
    );

    let array = FakeServer::start(|_| Reply::Raw(200, "[{\"usage\": null}]".into())).await;
    let proxy = Bestofn::start(&config(&array, &rm, "n", 1));
    let (status, _, text) = post_raw(&proxy.url("/v1/chat/completions"), chat_body("q")).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("not a JSON object"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_through_request_reaches_the_upstream_as_the_clients_bytes() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 1));
    let url = proxy.url("/v1/chat/completions");
    // Key order, spacing, escapes and number spellings that a parse and re-serialisation change.
    let sent = "{ \"temperature\": 1e-1, \"model\": \"m\",\n \"messages\": [{\"role\": \"user\", \"content\": \"caf\\u00e9 2+2?\"}], \
                \"max_tokens\": 16.0, \"x_vendor\": 123456789012345678901234567890, \"stream\": STREAM }";
    for stream in ["false", "true"] {
        let body = sent.replace("STREAM", stream);
        let response =
            client().post(&url).header("content-type", "application/json").body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "stream {stream}");
        let _ = response.bytes().await.unwrap();
        let received = upstream.requests_to("/v1/chat/completions").pop().unwrap();
        assert_eq!(std::str::from_utf8(&received.raw).unwrap(), body, "stream {stream}");
    }
    // A body with the `bestofn` field is forwarded without it, every other field still as the
    // client spelled it.
    let steered = "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"temperature\": 1e-1, \
                   \"bestofn\": {\"n\": 1}, \"x_vendor\": 123456789012345678901234567890}";
    let response = client().post(&url).header("content-type", "application/json").body(steered).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let received = upstream.requests_to("/v1/chat/completions").pop().unwrap();
    assert_eq!(
        std::str::from_utf8(&received.raw).unwrap(),
        "{\"messages\":[{\"role\": \"user\", \"content\": \"q\"}],\"temperature\":1e-1,\
         \"x_vendor\":123456789012345678901234567890}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn best_of_n_calls_keep_the_clients_spelling_of_every_field() {
    // Without and with the `bestofn` field, which the proxy takes out.
    for body in [
        "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"temperature\": 1e-1, \
         \"x_vendor\": 123456789012345678901234567890, \"stream\": STREAM}",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}], \"temperature\": 1e-1, \"bestofn\": {\"n\": 3}, \
         \"x_vendor\": 123456789012345678901234567890, \"stream\": STREAM}",
    ] {
        best_of_n_calls_keep_the_spelling_of(body).await;
    }
}

async fn best_of_n_calls_keep_the_spelling_of(body: &str) {
    for sampling in ["n", "parallel"] {
        let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
        let rm = FakeServer::start(rm_handler()).await;
        let proxy = Bestofn::start(&config(&upstream, &rm, sampling, 3));
        for stream in ["false", "true"] {
            let response = client()
                .post(proxy.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(body.replace("STREAM", stream))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{sampling}, stream {stream}");
            let _ = response.bytes().await.unwrap();
        }
        let calls = upstream.requests_to("/v1/chat/completions");
        assert!(calls.len() >= 2, "{sampling}: {} calls", calls.len());
        for call in calls {
            let raw = std::str::from_utf8(&call.raw).unwrap();
            assert!(
                raw.contains("\"temperature\":1e-1,\"x_vendor\":123456789012345678901234567890,"),
                "{sampling}: {raw}"
            );
            assert!(raw.ends_with("\"stream\":false}"), "{sampling}: every call is sampled whole: {raw}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_covered_by_http_proxy_is_reached_through_that_proxy() {
    // The forward proxy answers as the upstream would; the upstream's own name never resolves.
    let forward_proxy = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let config = config(&forward_proxy, &rm, "n", 3).replace(
        &format!("base_url = \"{}/v1\"", forward_proxy.url()),
        "base_url = \"http://llm.internal.test:8000/v1\"",
    );
    let proxy_url = forward_proxy.url();
    let proxy =
        Bestofn::start_with_env(&config, &[("HTTP_PROXY", proxy_url.as_str()), ("NO_PROXY", "127.0.0.1,localhost")]);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    let calls = forward_proxy.requests_to("/v1/chat/completions");
    assert_eq!(calls.len(), 1, "the upstream call went to the proxy");
    assert_eq!(calls[0].headers["host"], "llm.internal.test:8000", "addressed to the upstream");
    assert_eq!(rm.requests_to("/classify").len(), 1, "NO_PROXY: the RM on loopback is called directly");
    assert!(forward_proxy.requests_to("/classify").is_empty());
}

/// A raw upstream that answers every request on a kept-alive connection with `head` (status
/// line and headers) and `body`, so a test controls every header byte.
async fn raw_upstream(head: &'static str, body: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                while read_http_message(&mut stream).await.is_some() {
                    let answer = format!("{head}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_through_answer_keeps_the_upstreams_end_to_end_headers_only() {
    let answer = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
    .to_string();
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\nx-upstream-trace: abc\r\n\
                x-ratelimit-remaining-requests: 41\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\
                connection: keep-alive, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\n\
                proxy-authenticate: Basic realm=\"u\"";
    let url = raw_upstream(head, answer.clone()).await;
    let cfg = format!(
        "[upstream]\nbase_url = \"{url}/v1\"\nsampling = \"n\"\n\n[policy]\nn = 1\nscorer = \"c\"\n\n[scorers.c]\nkind = \"consensus\"\n"
    );
    let proxy = Bestofn::start(&cfg);
    let response = client().post(proxy.url("/v1/chat/completions")).json(&chat_body("q")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-upstream-trace"], "abc");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "41");
    assert_eq!(headers["content-type"], "application/json; charset=utf-8", "the upstream's own content type");
    assert_eq!(headers.get_all("set-cookie").iter().collect::<Vec<_>>(), ["a=1", "b=2"], "every value");
    assert_eq!(headers["x-bestofn-n"], "1");
    for hop in ["x-hop", "keep-alive", "proxy-authenticate"] {
        assert!(!headers.contains_key(hop), "{hop} is hop-by-hop: {headers:?}");
    }
    assert!(headers.get("connection").is_none_or(|v| !v.to_str().unwrap().contains("x-hop")), "{headers:?}");
    assert_eq!(response.text().await.unwrap(), answer, "the body, its length computed by bestofn");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_over_max_response_bytes_are_502s_naming_the_backend_and_the_limit() {
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(4096));
    let cap = |cfg: String| cfg.replace("sampling = \"n\"", "sampling = \"n\"\nmax_response_bytes = 2048");
    let rm = FakeServer::start(rm_handler()).await;
    let huge = big.clone();
    let upstream = FakeServer::start(move |_| Reply::Raw(200, huge.clone())).await;
    let proxy = Bestofn::start(&cap(config(&upstream, &rm, "n", 1)));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 502, "{resp}");
    let message = resp["error"]["message"].as_str().unwrap();
    let expected = "the upstream failed: answered more than upstream.max_response_bytes (2048 bytes)";
    assert!(message.contains(expected), "{message}");
    // A stream whose length is declared over the limit is refused before its first byte.
    let mut streaming = chat_body("q");
    streaming["stream"] = json!(true);
    let (status, _, text) = post_raw(&proxy.url("/v1/chat/completions"), streaming).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("upstream.max_response_bytes (2048 bytes)"), "{text}");

    // A reward model's reply is held to the same limit.
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let huge_rm = FakeServer::start(move |_| Reply::Raw(200, big.clone())).await;
    let proxy = Bestofn::start(&cap(config(&upstream, &huge_rm, "n", 3)));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 502, "{resp}");
    let message = resp["error"]["message"].as_str().unwrap();
    let expected = "scorer vllm failed: answered more than upstream.max_response_bytes (2048 bytes)";
    assert!(message.contains(expected), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_pass_through_keeps_the_upstreams_end_to_end_headers_only() {
    let events = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"4\"}}]}\n\ndata: [DONE]\n\n";
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\nx-upstream-trace: s1\r\n\
                connection: keep-alive, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5";
    let url = raw_upstream(head, events.to_string()).await;
    let cfg = format!(
        "[upstream]\nbase_url = \"{url}/v1\"\nsampling = \"n\"\n\n[policy]\nn = 1\nscorer = \"c\"\n\n[scorers.c]\nkind = \"consensus\"\n"
    );
    let proxy = Bestofn::start(&cfg);
    let mut body = chat_body("q");
    body["stream"] = json!(true);
    let response = client().post(proxy.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-upstream-trace"], "s1");
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8", "the upstream's own content type");
    for hop in ["x-hop", "keep-alive"] {
        assert!(!headers.contains_key(hop), "{hop} is hop-by-hop: {headers:?}");
    }
    assert_eq!(response.text().await.unwrap(), events, "the stream as the upstream sent it");
}
