//! Request ids, trace propagation, OTLP export to a loopback collector, and prompts kept out of
//! logs and spans.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
}

/// A loopback OTLP/HTTP collector: records every POST and answers as a collector does.
async fn collector() -> FakeServer {
    FakeServer::start(|_| Reply::Json(200, json!({}))).await
}

fn with_collector(config: String, collector: &FakeServer) -> String {
    format!("{config}\n[telemetry]\notlp_endpoint = \"{}\"\n", collector.url())
}

/// Every span the collector received: (resource attributes, span), from the OTLP JSON bodies.
fn exported_spans(collector: &FakeServer) -> Vec<(Value, Value)> {
    let mut spans = Vec::new();
    for post in collector.requests_to("/v1/traces") {
        assert_eq!(post.method, "POST");
        assert_eq!(post.headers["content-type"], "application/json");
        for resource in post.body["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    spans.push((resource["resource"]["attributes"].clone(), span.clone()));
                }
            }
        }
    }
    spans
}

/// An OTLP attribute's value as text, whatever its type.
fn attribute(attributes: &Value, key: &str) -> Option<String> {
    let value = &attributes.as_array()?.iter().find(|kv| kv["key"] == key)?["value"];
    let (_, inner) = value.as_object()?.iter().next()?;
    Some(inner.as_str().map_or_else(|| inner.to_string(), str::to_string))
}

/// Whether a log line matching `wanted` arrives within two seconds.
async fn logged(proxy: &Bestofn, wanted: impl Fn(&str) -> bool) -> bool {
    for _ in 0..100 {
        if proxy.logs().iter().any(|l| wanted(l)) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_the_clients_request_id_or_a_generated_one() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 3));
    let url = proxy.url("/v1/chat/completions");

    let (status, headers, _) = post(&url, chat_body("hi"), &[("x-request-id", "client-id-1")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "client-id-1");

    let (status, headers, _) = post(&url, chat_body("hi"), &[]).await;
    assert_eq!(status, 200);
    let first = headers["x-request-id"].to_str().unwrap().to_string();
    let (_, headers, _) = post(&url, chat_body("hi"), &[]).await;
    let second = headers["x-request-id"].to_str().unwrap().to_string();
    assert!(!first.is_empty() && first != second, "generated ids differ: {first} {second}");

    // Errors, and routes other than completions, carry one too.
    let (status, headers, _) = post(&url, json!({"messages": "bad"}), &[("x-request-id", "client-id-2")]).await;
    assert_eq!(status, 400);
    assert_eq!(headers["x-request-id"], "client-id-2");
    let response = client().get(proxy.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(response.headers().contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_and_scorer_calls_carry_the_request_id_and_the_clients_trace() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 3));
    let trace = traceparent();
    let (status, _, _) = post(
        &proxy.url("/v1/chat/completions"),
        chat_body("hi"),
        &[("x-request-id", "traced-1"), ("traceparent", &trace)],
    )
    .await;
    assert_eq!(status, 200);
    let calls: Vec<Recorded> = upstream.requests_to("/v1/chat/completions").into_iter().chain(rm.requests()).collect();
    assert!(calls.len() >= 2, "an upstream call and a scorer call");
    for call in &calls {
        assert_eq!(call.headers["x-request-id"], "traced-1", "{}", call.path);
        let sent = call.headers["traceparent"].to_str().unwrap();
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!(parts.len(), 4, "{sent}");
        assert_eq!((parts[0], parts[1]), ("00", CLIENT_TRACE), "the client's trace: {sent}");
        assert!(parts[2].len() == 16 && parts[2] != "0000000000000000" && parts[2] != CLIENT_SPAN, "{sent}");
        assert_eq!(parts[3].len(), 2, "{sent}");
    }

    // Without a traceparent, one new trace for all of a request's calls.
    upstream.clear();
    rm.clear();
    let (_, headers, _) = post(&proxy.url("/v1/chat/completions"), chat_body("hi"), &[]).await;
    let id = headers["x-request-id"].to_str().unwrap();
    let calls: Vec<Recorded> = upstream.requests_to("/v1/chat/completions").into_iter().chain(rm.requests()).collect();
    let traces: std::collections::BTreeSet<&str> =
        calls.iter().map(|c| c.headers["traceparent"].to_str().unwrap().split('-').nth(1).unwrap()).collect();
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert!(calls.iter().all(|c| c.headers["x-request-id"] == id));
}

#[tokio::test(flavor = "multi_thread")]
async fn request_scoring_and_llm_call_spans_reach_the_otlp_collector_by_shutdown() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let collector = collector().await;
    let judge = format!(
        "\n[scorers.judge]\nkind = \"judge\"\nbase_url = \"{}/v1\"\nmodel = \"judge-model\"\nmode = \"rating\"\n",
        upstream.url()
    );
    let mut proxy = Bestofn::start(&with_collector(config(&upstream, &rm, "n", 3) + &judge, &collector));
    let trace = traceparent();
    let mut body = chat_body("What is 2+2?");
    body["bestofn"] = json!({"domain": "math"});
    let (status, _, _) =
        post(&proxy.url("/v1/chat/completions"), body, &[("x-request-id", "otel-req-1"), ("traceparent", &trace)])
            .await;
    assert_eq!(status, 200);
    // A streamed best-of-N answer's work runs after the handler returns, still in its request.
    let mut body = chat_body("What is 3+3?");
    body["stream"] = json!(true);
    let response = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-request-id", "otel-req-2")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    // A judge: a scoring span whose LLM calls are GenAI chat spans.
    let mut body = chat_body("What is 4+4?");
    body["bestofn"] = json!({"scorer": "judge"});
    let (status, _, _) = post(&proxy.url("/v1/chat/completions"), body, &[("x-request-id", "otel-req-3")]).await;
    assert_eq!(status, 200);
    // Probes and scrapes are not traced.
    for path in ["/healthz", "/metrics"] {
        assert_eq!(client().get(proxy.url(path)).send().await.unwrap().status(), 200);
    }
    // The batch processor holds spans for seconds; SIGTERM must send them before exiting.
    assert!(proxy.terminate_and_wait().success());

    let spans = exported_spans(&collector);
    let request = |id: &str| {
        spans
            .iter()
            .find(|(_, s)| attribute(&s["attributes"], "request_id").as_deref() == Some(id))
            .unwrap_or_else(|| panic!("no request span with request_id {id}: {spans:#?}"))
    };
    let (resource, span) = request("otel-req-1");
    assert_eq!(attribute(resource, "service.name").as_deref(), Some("bestofn"));
    assert_eq!(span["name"], "POST /v1/chat/completions");
    assert!(span["kind"] == 2 || span["kind"] == "SPAN_KIND_SERVER", "a server span: {span:#}");
    // Only bestofn's spans: not those of the HTTP client that exports them.
    let names: BTreeSet<&str> = spans.iter().map(|(_, s)| s["name"].as_str().unwrap()).collect();
    let expected = ["POST /v1/chat/completions", "chat fake-model", "chat judge-model", "score judge", "score vllm"];
    assert_eq!(names, BTreeSet::from(expected), "{spans:#?}");
    assert_eq!(span["traceId"].as_str().unwrap().to_lowercase(), CLIENT_TRACE, "the client's trace");
    assert_eq!(span["parentSpanId"].as_str().unwrap().to_lowercase(), CLIENT_SPAN, "the client's span is the parent");
    for (key, value) in [("domain", "math"), ("n", "3"), ("scorer", "vllm"), ("http.response.status_code", "200")] {
        assert_eq!(attribute(&span["attributes"], key).as_deref(), Some(value), "{key}: {span:#}");
    }
    let (_, streamed) = request("otel-req-2");
    assert_eq!(attribute(&streamed["attributes"], "n").as_deref(), Some("3"));
    assert_ne!(streamed["traceId"], span["traceId"], "a request without traceparent starts its own trace");
    assert!(streamed["parentSpanId"].as_str().is_none_or(str::is_empty), "a root span: {streamed:#}");
    let children = |parent: &Value, name: &str| -> Vec<Value> {
        spans
            .iter()
            .map(|(_, s)| s.clone())
            .filter(|s| s["name"] == name && s["parentSpanId"] == parent["spanId"] && s["traceId"] == parent["traceId"])
            .collect()
    };
    // The upstream call: a GenAI client span under the request, with the usage it reported.
    let generation = children(span, "chat fake-model");
    assert_eq!(generation.len(), 1, "one n-mode call: {spans:#?}");
    let call = &generation[0]["attributes"];
    for (key, value) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "fake-model"),
        ("gen_ai.request.choice.count", "3"),
    ] {
        assert_eq!(attribute(call, key).as_deref(), Some(value), "{key}: {:#}", generation[0]);
    }
    assert!(attribute(call, "gen_ai.usage.input_tokens").is_some_and(|t| t != "0"), "{:#}", generation[0]);
    assert!(attribute(call, "gen_ai.usage.output_tokens").is_some_and(|t| t != "0"), "{:#}", generation[0]);
    let scoring = children(span, "score vllm");
    assert_eq!(scoring.len(), 1, "one scoring span under the request: {spans:#?}");
    assert_eq!(attribute(&scoring[0]["attributes"], "bestofn.scorer.kind").as_deref(), Some("reward_http"));
    assert_eq!(attribute(&scoring[0]["attributes"], "bestofn.candidates").as_deref(), Some("3"));
    let (_, judged) = request("otel-req-3");
    let scoring = children(judged, "score judge");
    assert_eq!(scoring.len(), 1, "{spans:#?}");
    let calls = children(&scoring[0], "chat judge-model");
    assert_eq!(calls.len(), 3, "a judge call per candidate: {spans:#?}");
    for call in &calls {
        assert!(call["kind"] == 3 || call["kind"] == "SPAN_KIND_CLIENT", "a client span: {call:#}");
        let attributes = &call["attributes"];
        for (key, value) in [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.provider.name", "openai"),
            ("gen_ai.request.model", "judge-model"),
            ("gen_ai.usage.input_tokens", &PROMPT_TOKENS.to_string()),
        ] {
            assert_eq!(attribute(attributes, key).as_deref(), Some(value), "{key}: {call:#}");
        }
        assert!(attribute(attributes, "gen_ai.usage.output_tokens").is_some(), "{call:#}");
        assert_eq!(attribute(attributes, "gen_ai.request.choice.count"), None, "one choice is the default");
    }
    // The log lines of a request name its trace, to find it in the collector.
    assert!(logged(&proxy, |l| l.contains("otel-req-1") && l.contains(CLIENT_TRACE)).await, "{:#?}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_stay_out_of_logs_and_spans_unless_captured() {
    const MARKER: &str = "zebra-marker-7f3a";
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let collector = collector().await;
    // The collector named by the environment, as OpenTelemetry SDKs read it.
    let mut proxy = Bestofn::start_with_env(
        &config(&upstream, &rm, "n", 3),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url()), ("RUST_LOG", "debug")],
    );
    let url = proxy.url("/v1/chat/completions");
    let (status, _, _) = post(&url, chat_body(&format!("Tell me about {MARKER}")), &[]).await;
    assert_eq!(status, 200);
    // A client error's message can quote the request.
    let mut bad = chat_body("hi");
    bad["bestofn"] = json!({"n": MARKER});
    let (status, _, body) = post(&url, bad, &[("x-request-id", "bad-1")]).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains(MARKER), "the client still gets the whole message: {body}");
    assert!(proxy.terminate_and_wait().success());

    // The log reader thread may still be reading the last lines of the exited process.
    assert!(logged(&proxy, |l| l.contains("bad-1")).await, "the rejection is logged: {:#?}", proxy.logs());
    let logs = proxy.logs();
    assert!(logs.iter().all(|l| !l.contains(MARKER)), "{logs:#?}");
    let posts = collector.requests_to("/v1/traces");
    assert!(!posts.is_empty(), "spans exported to OTEL_EXPORTER_OTLP_ENDPOINT");
    assert!(!exported_spans(&collector).is_empty());
    for post in &posts {
        assert!(!String::from_utf8_lossy(&post.raw).contains(MARKER), "{}", String::from_utf8_lossy(&post.raw));
    }

    // Asked for, the message is logged whole.
    let captured = config(&upstream, &rm, "n", 3) + "\n[telemetry]\ncapture_content = true\n";
    let proxy = Bestofn::start(&captured);
    let mut bad = chat_body("hi");
    bad["bestofn"] = json!({"n": MARKER});
    let (status, _, _) = post(&proxy.url("/v1/chat/completions"), bad, &[("x-request-id", "bad-2")]).await;
    assert_eq!(status, 400);
    assert!(logged(&proxy, |l| l.contains("bad-2") && l.contains(MARKER)).await, "{:#?}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_scorers_error_body_stays_out_of_the_log_line_of_the_fallback() {
    let marker = "MARKER-okapi-7781";
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    // An RM server that echoes what it was sent in its error body, as pydantic's 422s do.
    let rm = FakeServer::start(|req: &Recorded| Reply::Raw(500, format!("cannot score: {}", req.body))).await;
    let cfg =
        config(&upstream, &rm, "n", 2).replace("scorer = \"vllm\"", "scorer = \"vllm\"\non_scorer_failure = \"first\"");
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body(marker), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert!(!rm.requests().is_empty(), "the scorer was called");
    let logs = proxy.logs();
    let fallback = logs.iter().find(|l| l.contains("scorer failed; falling back")).expect("the fallback is logged");
    assert!(fallback.contains("HTTP 500"), "{fallback}");
    assert!(!logs.iter().any(|l| l.contains(marker)), "the prompt reached the log: {logs:#?}");
}
