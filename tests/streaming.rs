//! Streaming, top-k choices and the legacy completions endpoint, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

fn streaming_config(upstream: &FakeServer, rm: &FakeServer, sampling: &str, n: u32) -> String {
    config(upstream, rm, sampling, n).replace("[upstream]", "[server]\nheartbeat_interval_ms = 40\n\n[upstream]")
}

/// The content each choice index received, in order.
fn contents(chunks: &[Value], key: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, String::new());
            }
            let piece = if key == "text" { &choice["text"] } else { &choice["delta"]["content"] };
            out[i].push_str(piece.as_str().unwrap_or(""));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn best_of_n_chat_stream_is_valid_openai_sse() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&streaming_config(&upstream, &rm, "n", 4));

    let mut body = chat_body("stream please");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body["seed"] = json!(60);
    body["bestofn"] = json!({"return_candidates": true});
    let (status, content_type, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/event-stream"));
    let items = parse_sse(&text);
    let chunks = data_events(&items);

    // Same id, created, model on every chunk; usage null on all but the usage chunk.
    let (id, created) = (chunks[0]["id"].clone(), chunks[0]["created"].clone());
    assert!(id.as_str().unwrap().starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!((&c["id"], &c["created"], &c["model"]), (&id, &created, &json!("fake-model")));
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    // The role delta comes first.
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    // The winner, re-streamed in bounded chunks.
    let best = (60..64).map(quality).fold(f64::MIN, f64::max);
    let streamed = contents(&chunks, "content");
    assert_eq!(streamed.len(), 1);
    assert_eq!(read_quality(&streamed[0]), best);
    for c in &chunks {
        if let Some(piece) = c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()) {
            assert!(piece.chars().count() <= 64);
        }
    }
    // Finish chunk with the bestofn object, then the usage chunk, then [DONE].
    let n = chunks.len();
    let finish = &chunks[n - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["bestofn"]["candidates"].as_array().unwrap().len(), 4);
    assert_eq!(finish["bestofn"]["n_received"], 4);
    let usage = &chunks[n - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    for c in &chunks[..n - 1] {
        assert_eq!(c["usage"], Value::Null);
        assert!(c.as_object().unwrap().contains_key("usage"));
    }
    // bestofn sampled without streaming and never forwarded stream_options.
    let call = &upstream.requests_to("/v1/chat/completions")[0];
    assert_eq!(call.body["stream"], false);
    assert!(call.body.get("stream_options").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_top_k_labels_each_choice() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&streaming_config(&upstream, &rm, "n", 4));
    let mut body = chat_body("two please");
    body["stream"] = json!(true);
    body["n"] = json!(2);
    body["seed"] = json!(70);
    let (_, _, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    let chunks = data_events(&parse_sse(&text));
    let streamed = contents(&chunks, "content");
    let mut qualities: Vec<f64> = (70..74).map(quality).collect();
    qualities.sort_by(|a, b| b.partial_cmp(a).unwrap());
    assert_eq!(streamed.len(), 2);
    assert_eq!(read_quality(&streamed[0]), qualities[0]);
    assert_eq!(read_quality(&streamed[1]), qualities[1]);
    let roles = chunks.iter().filter(|c| c["choices"][0]["delta"]["role"] == "assistant").count();
    assert_eq!(roles, 2, "a role delta per choice");
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_arrive_while_a_slow_upstream_works() {
    let inner = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream =
        FakeServer::start(move |r: &Recorded| Reply::Delayed(Duration::from_millis(600), Box::new(inner(r)))).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&streaming_config(&upstream, &rm, "n", 2));
    let mut body = chat_body("slow");
    body["stream"] = json!(true);
    let (_, _, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    let items = parse_sse(&text);
    let first_content = items
        .iter()
        .position(|i| matches!(i, SseItem::Data(v) if v["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty())))
        .unwrap();
    let heartbeats_before =
        items[..first_content].iter().filter(|i| **i == SseItem::Comment("keep-alive".into())).count();
    assert!(heartbeats_before >= 1, "no heartbeat before the content: {items:?}");
    // The role delta waits for the first upstream answer; until then, heartbeats alone.
    assert_eq!(items[0], SseItem::Comment("keep-alive".into()), "{items:?}");
    let first_data = items.iter().position(|i| matches!(i, SseItem::Data(_))).unwrap();
    assert!(
        matches!(&items[first_data], SseItem::Data(v) if v["choices"][0]["delta"]["role"] == "assistant"),
        "role delta first: {items:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_before_the_stream_are_http_errors_and_after_it_sse_events() {
    let failing =
        FakeServer::start(|_: &Recorded| Reply::Json(500, json!({"error": {"message": "GPU on fire"}}))).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&streaming_config(&failing, &rm, "n", 2));

    let mut body = chat_body("x");
    body["stream"] = json!(true);
    let (status, _, text) = post_raw(&proxy.url("/v1/chat/completions"), body.clone()).await;
    assert_eq!(status, 200, "the stream had begun");
    let items = parse_sse(&text);
    let chunks = data_events(&items);
    // No upstream answered, so no role delta was sent: the error is the one data event.
    assert_eq!(chunks.len(), 1, "{text}");
    let error = chunks.last().unwrap();
    assert_envelope(error, None);
    assert!(error["error"]["message"].as_str().unwrap().contains("GPU on fire"));

    body["bestofn"] = json!({"n": 99});
    let (status, content_type, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 400);
    assert!(content_type.starts_with("application/json"));
    assert_envelope(&serde_json::from_str(&text).unwrap(), Some("bestofn.n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pass_through_streaming_delivers_tokens_before_the_upstream_finishes() {
    // A raw upstream that sends its first token, then holds the stream open until released.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<Value>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_http_request(&mut stream).await.unwrap();
        let _ = seen_tx.send(request);
        let chunk = |data: &str| {
            let event = format!("data: {data}\n\n");
            format!("{:x}\r\n{event}\r\n", event.len())
        };
        let first = json!({"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "first-token"}, "finish_reason": null}]});
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        stream.write_all(format!("{head}{}", chunk(&first.to_string())).as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        let _ = release_rx.await;
        let last = json!({"id": "up", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let tail = format!("{}{}0\r\n\r\n", chunk(&last.to_string()), chunk("[DONE]"));
        stream.write_all(tail.as_bytes()).await.unwrap();
    });
    let rm = FakeServer::start(rm_handler()).await;
    let dummy = FakeServer::start(|_: &Recorded| Reply::Json(500, json!({}))).await;
    let cfg = config(&dummy, &rm, "n", 1).replace(&dummy.url(), &format!("http://{addr}"));
    let proxy = Bestofn::start(&cfg);

    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = client().post(proxy.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-bestofn-n"], "1");
    let mut bytes = resp.bytes_stream();
    let mut received = String::new();
    // The first token must arrive while the upstream is still holding its stream open.
    let wait_first = async {
        while !received.contains("first-token") {
            received.push_str(std::str::from_utf8(&bytes.next().await.unwrap().unwrap()).unwrap());
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait_first).await.expect("first token was buffered");
    release_tx.send(()).unwrap();
    while let Some(chunk) = bytes.next().await {
        received.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let items = parse_sse(&received);
    assert_eq!(data_events(&items).len(), 2);
    let forwarded = seen_rx.await.unwrap();
    assert_eq!(forwarded["stream"], true);
    assert_eq!(forwarded["stream_options"], json!({"include_usage": true}), "forwarded untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_closes_the_upstream_connections() {
    // A raw upstream that never answers and reports when each connection is closed by its peer.
    let (addr, mut accepted_rx, mut closed_rx) = hanging_upstream().await;
    let rm = FakeServer::start(rm_handler()).await;
    let dummy = FakeServer::start(|_: &Recorded| Reply::Json(500, json!({}))).await;
    let cfg = streaming_config(&dummy, &rm, "parallel", 3)
        .replace(&dummy.url(), &format!("http://{addr}"))
        .replace("timeout_ms = 5000", "timeout_ms = 60000");
    let proxy = Bestofn::start(&cfg);

    let mut body = chat_body("hang");
    body["stream"] = json!(true);
    let resp = client().post(proxy.url("/v1/chat/completions")).json(&body).send().await.unwrap();
    let mut bytes = resp.bytes_stream();
    // No upstream answers: heartbeats keep the stream open.
    let first = bytes.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains(": keep-alive"));
    let all_accepted = async {
        for _ in 0..3 {
            accepted_rx.recv().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_accepted).await.expect("three upstream calls");
    drop(bytes);
    let all_closed = async {
        for _ in 0..3 {
            closed_rx.recv().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_closed)
        .await
        .expect("upstream connections left open after the client went away");
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_completions_with_best_of() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&streaming_config(&upstream, &rm, "n", 2));
    let url = proxy.url("/v1/completions");

    let body =
        json!({"model": "fake-model", "prompt": "Once upon a time", "best_of": 5, "n": 2, "seed": 80, "max_tokens": 5});
    let (status, headers, resp) = post(&url, body, &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["object"], "text_completion");
    assert_eq!(headers["x-bestofn-n"], "5");
    let mut qualities: Vec<f64> = (80..85).map(quality).collect();
    qualities.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let choices = resp["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(read_quality(choices[0]["text"].as_str().unwrap()), qualities[0]);
    assert_eq!(read_quality(choices[1]["text"].as_str().unwrap()), qualities[1]);
    let call = &upstream.requests_to("/v1/completions")[0];
    assert_eq!(call.body["n"], 5);
    assert!(call.body.get("best_of").is_none());
    assert_eq!(call.body["max_tokens"], 5);
    // The RM scored the prompt as the user turn and the completion as the reply.
    let scored = rm.requests_to("/classify")[0].body["input"][0].as_str().unwrap().to_string();
    assert!(scored.starts_with("<|im_start|>user\nOnce upon a time<|im_end|>\n<|im_start|>assistant\n"), "{scored}");

    let (status, _, resp) = post(&url, json!({"prompt": "x", "best_of": 1, "n": 3}), &[]).await;
    assert_eq!(status, 400);
    assert_envelope(&resp, Some("best_of"));

    // Streamed: text_completion chunks with the best text, then [DONE].
    let body = json!({"model": "fake-model", "prompt": "Once", "best_of": 3, "seed": 90, "stream": true});
    let (status, _, text) = post_raw(&url, body).await;
    assert_eq!(status, 200);
    let chunks = data_events(&parse_sse(&text));
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let best = (90..93).map(quality).fold(f64::MIN, f64::max);
    assert_eq!(read_quality(&contents(&chunks, "text")[0]), best);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");

    // N = 1 streaming pass-through of the legacy endpoint.
    let body = json!({"model": "fake-model", "prompt": "Once", "seed": 3, "stream": true, "bestofn": {"n": 1}});
    let (_, _, text) = post_raw(&url, body).await;
    let chunks = data_events(&parse_sse(&text));
    assert_eq!(contents(&chunks, "text")[0], candidate_text(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_streaming_client_that_goes_away_closes_the_upstream_connections() {
    let (addr, mut accepted_rx, mut closed_rx) = hanging_upstream().await;
    let rm = FakeServer::start(rm_handler()).await;
    let dummy = FakeServer::start(|_: &Recorded| Reply::Json(500, json!({}))).await;
    let cfg = config(&dummy, &rm, "parallel", 2)
        .replace(&dummy.url(), &format!("http://{addr}"))
        .replace("timeout_ms = 5000", "timeout_ms = 60000");
    let proxy = Bestofn::start(&cfg);

    let request = client().post(proxy.url("/v1/chat/completions")).json(&chat_body("hang")).send();
    let give_up_after_both_calls = async {
        for _ in 0..2 {
            accepted_rx.recv().await.unwrap();
        }
    };
    tokio::select! {
        _ = request => panic!("the upstream never answers"),
        _ = tokio::time::timeout(Duration::from_secs(10), give_up_after_both_calls) => {}
    }
    // The client's request future is dropped here, closing its connection.
    let all_closed = async {
        for _ in 0..2 {
            closed_rx.recv().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(10), all_closed)
        .await
        .expect("upstream connections left open after the client went away");
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_tool_calls_from_the_upstream_are_streamed_without_a_crash() {
    // One well-formed call and one that is not an object: the first gets its index, the second
    // passes as it came, and the proxy stays up.
    let upstream = FakeServer::start(|_| {
        let choice = |i: u64| {
            json!({"index": i, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "calling",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}, "odd"]}})
        };
        Reply::Json(200, json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [choice(0), choice(1)], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}))
    })
    .await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&streaming_config(&upstream, &rm, "n", 2));
    let mut body = chat_body("q");
    body["stream"] = json!(true);
    let (status, _, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 200, "{text}");
    let chunks = data_events(&parse_sse(&text));
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .flat_map(|t| t.as_array().unwrap())
        .collect();
    assert_eq!(calls.len(), 2, "{text}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "f");
    assert_eq!(calls[1], &json!("odd"));
    let (status, _, _) = post(&proxy.url("/v1/chat/completions"), chat_body("still up"), &[]).await;
    assert_eq!(status, 200);
}

/// Streamed and non-streamed best-of-N answers of chat and legacy completions carry the model
/// the upstream reported, whatever model the client named (or none), and the streamed ones
/// send heartbeats alone until the first upstream answer is in; in each sampling mode (one
/// call with n, parallel calls in one wave, adaptive waves taken call by call).
#[tokio::test(flavor = "multi_thread")]
async fn best_of_n_answers_carry_the_upstreams_model_streamed_or_not() {
    let inner = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream = FakeServer::start(move |r: &Recorded| {
        let reply = match inner(r) {
            Reply::Json(200, mut answer) => {
                answer["model"] = json!("some-upstream-model");
                Reply::Json(200, answer)
            }
            other => other,
        };
        // Slow next to the heartbeat, so that heartbeats come first.
        Reply::Delayed(Duration::from_millis(200), Box::new(reply))
    })
    .await;
    let rm = FakeServer::start(rm_handler()).await;
    let heartbeat = "[server]\nheartbeat_interval_ms = 20\n\n[upstream]";
    let configs = [
        config(&upstream, &rm, "n", 3).replace("[upstream]", heartbeat),
        config(&upstream, &rm, "parallel", 3).replace("[upstream]", heartbeat),
        config(&upstream, &rm, "parallel", 3)
            .replace("[upstream]", heartbeat)
            .replace("scorer = \"vllm\"", "scorer = \"vllm\"\nadaptive = true\nfirst_wave = 1"),
    ];
    for cfg in configs {
        let proxy = Bestofn::start(&cfg);
        let mut requests = Vec::new();
        for (path, body) in [
            ("/v1/chat/completions", chat_body("which model?")),
            ("/v1/completions", json!({"prompt": "Once", "best_of": 3, "max_tokens": 5})),
        ] {
            for model in [Some("client-model"), None] {
                for streamed in [true, false] {
                    let mut body = body.clone();
                    match model {
                        Some(m) => body["model"] = json!(m),
                        None => drop(body.as_object_mut().unwrap().remove("model")),
                    }
                    body["stream"] = json!(streamed);
                    requests.push((path, model, streamed, body));
                }
            }
        }
        let answers = futures_util::future::join_all(requests.iter().map(|(path, _, _, body)| {
            let url = proxy.url(path);
            async move { post_raw(&url, body.clone()).await }
        }))
        .await;
        for ((path, model, streamed, _), (status, _, text)) in requests.iter().zip(answers) {
            let what = format!("{path}, client model {model:?}, stream {streamed}");
            assert_eq!(status, 200, "{what}: {text}");
            if !streamed {
                let answer: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(answer["model"], "some-upstream-model", "{what}: {answer}");
                continue;
            }
            let items = parse_sse(&text);
            let chunks = data_events(&items);
            assert!(chunks.len() >= 2, "{what}: {text}");
            for chunk in &chunks {
                assert_eq!(chunk["model"], "some-upstream-model", "{what}: {chunk}");
            }
            // Heartbeats alone until the first upstream answer is in.
            assert_eq!(items[0], SseItem::Comment("keep-alive".into()), "{what}: {text}");
            if *path == "/v1/chat/completions" {
                assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{what}: {text}");
            }
            assert!(chunks.last().unwrap().get("bestofn").is_some(), "{what}: {text}");
        }
    }
}
