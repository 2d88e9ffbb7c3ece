//! What a client reads when a backend fails, and what the log says: the real binary against
//! loopback stubs speaking vLLM's and OpenAI's error envelopes, a closed port, garbage, a hang
//! and failing reward-model, judge and fuser servers. The client's message names the party (the
//! upstream, the scorer by its configured name, the fuser) and never an endpoint; an upstream's
//! 4xx keeps its status, `type`, `param` and `code`; the server's log line for the request
//! carries the request id and the endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// vLLM's answer to `max_tokens: -5`: its `code` is the status, a number.
fn vllm_400() -> Value {
    json!({"error": {"message": "max_tokens must be at least 1, got -5.", "type": "BadRequestError",
        "param": "max_tokens", "code": 400}})
}

/// OpenAI's answer to `max_tokens: -5`: its `code` is a string.
fn openai_400() -> Value {
    json!({"error": {"message": "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got -5 instead.",
        "type": "invalid_request_error", "param": "max_tokens", "code": "integer_below_min_value"}})
}

/// An upstream whose answer depends on the prompt: `vllm-400`, `openai-400`, `500`, `garbage`,
/// `hang`; anything else is answered normally.
fn faulty_upstream() -> impl Fn(&Recorded) -> Reply + Send + Sync {
    let ok = upstream_handler(NSupport::Full, UsageStyle::Honest);
    move |r: &Recorded| match r.body["messages"][0]["content"].as_str().unwrap_or("") {
        "vllm-400" => Reply::Json(400, vllm_400()),
        "openai-400" => Reply::Json(400, openai_400()),
        "500" => Reply::Json(
            500,
            json!({"error": {"message": "CUDA error: device-side assert triggered", "type": "InternalServerError",
                "param": null, "code": 500}}),
        ),
        "garbage" => Reply::Raw(200, "<html><body>502 Bad Gateway</body></html>".into()),
        "hang" => Reply::Delayed(Duration::from_secs(30), Box::new(ok(r))),
        _ => ok(r),
    }
}

/// A loopback port that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A chat request for `prompt` with best-of-`n`, carrying the request id `id`.
async fn ask(proxy: &Bestofn, prompt: &str, n: u32, id: &str) -> (u16, Value) {
    let mut body = chat_body(prompt);
    body["bestofn"] = json!({"n": n});
    let (status, headers, resp) = post(&proxy.url("/v1/chat/completions"), body, &[("x-request-id", id)]).await;
    assert_eq!(headers["x-request-id"], id);
    (status, resp)
}

/// Asserts that `message` names `party` and nothing of where it is: no URL, no loopback host,
/// none of `ports`.
fn assert_names_only(message: &str, party: &str, ports: &[u16]) {
    assert!(message.contains(party), "'{party}' not named: {message}");
    for leak in ["http://", "https://", "127.0.0.1", "localhost"] {
        assert!(!message.contains(leak), "'{leak}' in the client's message: {message}");
    }
    for port in ports {
        assert!(!message.contains(&port.to_string()), "port {port} in the client's message: {message}");
    }
}

/// The server's log line for request `id` that says `what`, waited for (the log is read by a
/// thread); it must name `endpoint`.
async fn assert_logged(proxy: &Bestofn, id: &str, what: &str, endpoint: &str) {
    for _ in 0..200 {
        if let Some(line) = proxy.logs().into_iter().find(|l| l.contains(id) && l.contains(what)) {
            assert!(line.contains(endpoint), "the log line does not name {endpoint}: {line}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no log line for request {id} saying '{what}':\n{}", proxy.logs().join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_name_the_upstream_to_the_client_and_its_endpoint_in_the_log() {
    let upstream = FakeServer::start(faulty_upstream()).await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&upstream, &rm, "n", 3).replace("timeout_ms = 5000", "timeout_ms = 400");
    let proxy = Bestofn::start(&cfg);
    let endpoint = format!("{}/v1", upstream.url());
    let ports = [upstream.addr.port(), rm.addr.port()];

    for n in [1, 3] {
        // A 4xx keeps the upstream's status, type, param and code, as the upstream sent them.
        for (prompt, error) in [("vllm-400", vllm_400()), ("openai-400", openai_400())] {
            let id = format!("{prompt}-n{n}");
            let (status, resp) = ask(&proxy, prompt, n, &id).await;
            assert_eq!(status, 400, "{id}: {resp}");
            assert_envelope(&resp, Some("max_tokens"));
            let e = &resp["error"];
            assert_eq!(e["code"], error["error"]["code"], "{id}: {resp}");
            assert_eq!(e["type"], error["error"]["type"], "{id}: {resp}");
            let message = e["message"].as_str().unwrap();
            assert_eq!(
                message,
                format!("the upstream rejected the request: {}", error["error"]["message"].as_str().unwrap())
            );
            assert_names_only(message, "the upstream", &ports);
            assert_logged(&proxy, &id, "request rejected", &endpoint).await;
        }

        let cases = [
            ("500", 502, "the upstream failed: HTTP 500: CUDA error"),
            ("garbage", 502, "the upstream failed: "),
            ("hang", 504, "the upstream timed out: no complete answer within 400 ms"),
        ];
        for (prompt, expected, start) in cases {
            let id = format!("{prompt}-n{n}");
            let (status, resp) = ask(&proxy, prompt, n, &id).await;
            assert_eq!(status, expected, "{id}: {resp}");
            assert_envelope(&resp, None);
            let message = resp["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(start), "{id}: {message}");
            assert_names_only(message, "the upstream", &ports);
            assert_logged(&proxy, &id, "request failed", &endpoint).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_named_without_its_address() {
    let rm = FakeServer::start(rm_handler()).await;
    let port = closed_port();
    let endpoint = format!("http://127.0.0.1:{port}/v1");
    let cfg = config(&rm, &rm, "n", 3).replace(&format!("{}/v1", rm.url()), &endpoint);
    let proxy = Bestofn::start(&cfg);
    for n in [1, 3] {
        let id = format!("unreachable-n{n}");
        let (status, resp) = ask(&proxy, "q", n, &id).await;
        assert_eq!(status, 502, "{resp}");
        assert_envelope(&resp, None);
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("the upstream failed: cannot reach it: "), "{message}");
        assert_eq!(message.matches("Connection refused").count(), 1, "the cause, once: {message}");
        assert_names_only(message, "the upstream", &[port, rm.addr.port()]);
        assert_logged(&proxy, &id, "request failed", &endpoint).await;
    }

    // Streamed best-of-N: the error event after the opening says the same.
    let mut body = chat_body("q");
    body["bestofn"] = json!({"n": 3});
    body["stream"] = json!(true);
    let (status, _, text) = post_raw(&proxy.url("/v1/chat/completions"), body).await;
    assert_eq!(status, 200, "{text}");
    let events = data_events(&parse_sse(&text));
    let error = events.iter().find_map(|e| e["error"]["message"].as_str()).expect("an error event");
    assert!(error.starts_with("the upstream failed: cannot reach it"), "{error}");
    assert_names_only(error, "the upstream", &[port]);
}

#[tokio::test(flavor = "multi_thread")]
async fn scorer_failures_name_the_scorer_by_its_configured_name_and_never_its_address() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm_500 = FakeServer::start(|_: &Recorded| {
        Reply::Json(500, json!({"error": "CUDA out of memory", "error_type": "Backend"}))
    })
    .await;
    let port = closed_port();
    let unreachable = format!("http://127.0.0.1:{port}/classify");
    let failing = format!("{}/classify", rm_500.url());
    let judge_port = closed_port();
    let judge = format!("http://127.0.0.1:{judge_port}/v1");
    let cfg = config(&upstream, &rm_500, "n", 3).replace(&failing, &unreachable)
        + &format!(
            "\n[scorers.broken]\nkind = \"reward_http\"\napi = \"vllm_classify\"\nurl = \"{failing}\"\n\
             \n[scorers.judge]\nkind = \"judge\"\nbase_urls = [\"{judge}\"]\nmodel = \"m\"\n"
        );
    let proxy = Bestofn::start(&cfg);
    let ports = [port, judge_port, rm_500.addr.port(), upstream.addr.port()];
    let cases = [
        ("vllm", "scorer vllm failed: cannot reach it: ", unreachable.as_str()),
        ("broken", "scorer broken failed: HTTP 500: CUDA out of memory", failing.as_str()),
        ("judge", "scorer judge failed: cannot reach it: ", judge.as_str()),
    ];
    for (scorer, start, endpoint) in cases {
        let id = format!("scorer-{scorer}");
        let mut body = chat_body("q");
        body["bestofn"] = json!({"n": 3, "scorer": scorer});
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[("x-request-id", &id)]).await;
        assert_eq!(status, 502, "{resp}");
        assert_envelope(&resp, None);
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(start), "{message}");
        assert_names_only(message, &format!("scorer {scorer}"), &ports);
        assert_logged(&proxy, &id, "request failed", endpoint).await;
    }

    // Answered anyway (on_scorer_failure = "first"): what the bestofn object says of the failure
    // names no address either; the fallback's log line names the endpoint.
    let cfg = cfg.replace("scorer = \"vllm\"\n", "scorer = \"vllm\"\non_scorer_failure = \"first\"\n");
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) =
        post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[("x-request-id", "fallback")]).await;
    assert_eq!(status, 200, "{resp}");
    let failed = resp["bestofn"]["scorer_failed"].as_str().unwrap();
    assert!(failed.starts_with("scorer vllm failed: cannot reach it: "), "{failed}");
    assert_names_only(failed, "scorer vllm", &ports);
    assert_logged(&proxy, "fallback", "scorer failed", &unreachable).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_fuser_is_named_the_fuser_without_its_address() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let fuser = FakeServer::start(|_: &Recorded| {
        Reply::Json(500, json!({"error": {"message": "fuser down", "type": "InternalServerError", "code": 500}}))
    })
    .await;
    let endpoint = format!("{}/v1", fuser.url());
    let cfg = config(&upstream, &rm, "n", 3).replace("scorer = \"vllm\"", "scorer = \"vllm\"\nselection = \"fuse\"")
        + &format!("\n[fuser]\nbase_url = \"{endpoint}\"\nmodel = \"fuser-model\"\nmax_retries = 0\n");
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[("x-request-id", "fuse")]).await;
    assert_eq!(status, 200, "the best candidate answers: {resp}");
    let failed = resp["bestofn"]["fuse_failed"].as_str().unwrap();
    assert_eq!(failed, "the fuser failed: HTTP 500: fuser down", "named once, not wrapped in itself");
    assert_names_only(failed, "the fuser", &[fuser.addr.port()]);
    assert_logged(&proxy, "fuse", "fuser failed", &endpoint).await;
}
