//! Faults, limits and security: the real binary against fault-injecting loopback servers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config whose policy section is extended with `policy_extra` and upstream with `upstream_extra`.
fn tuned(
    upstream: &FakeServer,
    rm: &FakeServer,
    sampling: &str,
    n: u32,
    upstream_extra: &str,
    policy_extra: &str,
) -> String {
    let mut base = config(upstream, rm, sampling, n);
    if upstream_extra.contains("timeout_ms") {
        base = base.replace("timeout_ms = 5000\n", "");
    }
    base.replace("max_retries = 1\n", &format!("max_retries = 1\n{upstream_extra}\n"))
        .replace("scorer = \"vllm\"\n", &format!("scorer = \"vllm\"\n{policy_extra}\n"))
}

/// An upstream whose answer depends on the request's seed: `hang(seed)` never answers in time.
fn seeded_upstream(hang: impl Fn(i64) -> bool + Send + Sync + 'static) -> impl Fn(&Recorded) -> Reply + Send + Sync {
    let ok = upstream_handler(NSupport::Full, UsageStyle::Honest);
    move |r: &Recorded| {
        let seed = r.body["seed"].as_i64().unwrap_or(0);
        if hang(seed) { Reply::Delayed(Duration::from_secs(30), Box::new(ok(r))) } else { ok(r) }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_selects_among_what_arrived_or_answers_504() {
    let upstream = FakeServer::start(seeded_upstream(|seed| seed >= 102)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&tuned(
        &upstream,
        &rm,
        "parallel",
        4,
        "timeout_ms = 60000",
        "deadline_ms = 400\nmin_candidates = 2",
    ));
    let mut body = chat_body("q");
    body["seed"] = json!(100);
    body["bestofn"] = json!({"return_candidates": true});
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(status, 200, "{resp}");
    let b = &resp["bestofn"];
    assert_eq!(
        (b["n_requested"].as_u64(), b["n_received"].as_u64(), b["n_scored"].as_u64()),
        (Some(4), Some(2), Some(2))
    );
    assert_eq!(b["deadline_hit"], true);
    let best = quality(100).max(quality(101));
    assert_eq!(read_quality(resp["choices"][0]["message"]["content"].as_str().unwrap()), best);
    drop(proxy);

    let proxy = Bestofn::start(&tuned(
        &upstream,
        &rm,
        "parallel",
        4,
        "timeout_ms = 60000",
        "deadline_ms = 400\nmin_candidates = 3",
    ));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(status, 504, "{resp}");
    let message = resp["error"]["message"].as_str().unwrap();
    assert!(message.contains("only 2 of 4") && message.contains("400 ms deadline"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hedging_uses_the_first_n_answers() {
    // The first two calls to arrive hang; hedged extra calls make up for them.
    let arrivals = Arc::new(AtomicUsize::new(0));
    let counter = arrivals.clone();
    let ok = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream = FakeServer::start(move |r: &Recorded| {
        if counter.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::Delayed(Duration::from_secs(30), Box::new(ok(r)))
        } else {
            ok(r)
        }
    })
    .await;
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&tuned(&upstream, &rm, "parallel", 3, "hedge = 2\ntimeout_ms = 60000", ""));
    let url = proxy.url("/v1/chat/completions");
    let request = post(&url, chat_body("q"), &[]);
    let (status, _, resp) = tokio::time::timeout(Duration::from_secs(10), request).await.expect("hedging did not help");
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["n_received"], 3);
    assert_eq!(upstream.requests_to("/v1/chat/completions").len(), 5, "N + h calls");
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_honour_retry_after_and_give_up_on_resets() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let ok = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream = FakeServer::start(move |r: &Recorded| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Json(429, json!({"error": {"message": "slow down", "type": "rate_limit"}}))
        } else {
            ok(r)
        }
    })
    .await;
    // Without Retry-After, the jittered backoff applies.
    let rm = FakeServer::start(rm_handler()).await;
    let proxy = Bestofn::start(&config(&upstream, &rm, "n", 2));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 200, "429 then success: {resp}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    drop(proxy);

    // A raw upstream: 429 with Retry-After: 1, then 200.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = times.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let Some(_) = read_http_request(&mut stream).await else {
                continue;
            };
            seen.lock().unwrap().push(Instant::now());
            let reply = if n == 0 {
                "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_string()
            } else {
                let body = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "q=1"}, "finish_reason": "stop"},
                                {"index": 1, "message": {"role": "assistant", "content": "q=2"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
                .to_string();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            n += 1;
            stream.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    let cfg = config(&upstream, &rm, "n", 2).replace(&upstream.url(), &format!("http://{addr}"));
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= Duration::from_millis(900),
        "Retry-After: 1 was not honoured: {:?}",
        times[1] - times[0]
    );
    drop(proxy);

    // Connection resets: retried, then a 502 naming the upstream.
    let resets = Arc::new(AtomicUsize::new(0));
    let count = resets.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_http_request(&mut stream).await;
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let cfg = config(&upstream, &rm, "n", 2).replace(&upstream.url(), &format!("http://{addr}"));
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 502, "{resp}");
    let message = resp["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("the upstream failed: "), "{message}");
    assert!(!message.contains(&addr.to_string()), "the client is not told where the upstream is: {message}");
    assert_eq!(resets.load(Ordering::SeqCst), 2, "one attempt and max_retries = 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_pool_member_is_ejected_and_probed_back() {
    let bad = FakeServer::start(|_: &Recorded| Reply::Json(500, json!({"error": {"message": "down"}}))).await;
    let good = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&good, &rm, "n", 2)
        .replace(
            &format!("base_url = \"{}/v1\"", good.url()),
            &format!("base_urls = [\"{}/v1\", \"{}/v1\"]", bad.url(), good.url()),
        )
        .replace("max_retries = 1\n", "max_retries = 1\neject_after_failures = 1\neject_cooldown_ms = 1500\n");
    let proxy = Bestofn::start(&cfg);
    for _ in 0..10 {
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
        assert_eq!(status, 200, "the healthy member answers: {resp}");
    }
    assert!(bad.requests().len() <= 1, "an ejected endpoint got traffic: {}", bad.requests().len());
    // After the cool-down the endpoint is probed with real traffic again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for _ in 0..4 {
        let (status, _, _) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
        assert_eq!(status, 200);
    }
    assert!(bad.requests().len() >= 2, "the ejected endpoint was never probed again");
}

#[tokio::test(flavor = "multi_thread")]
async fn scorer_failure_policies() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let broken = FakeServer::start(|_: &Recorded| {
        Reply::Json(500, json!({"error": "CUDA out of memory", "error_type": "Backend"}))
    })
    .await;
    for policy in ["first", "random"] {
        let proxy =
            Bestofn::start(&tuned(&upstream, &broken, "n", 3, "", &format!("on_scorer_failure = \"{policy}\"")));
        let mut body = chat_body("q");
        body["seed"] = json!(5);
        let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), body, &[]).await;
        assert_eq!(status, 200, "{policy}: {resp}");
        let b = &resp["bestofn"];
        assert!(b["scorer_failed"].as_str().unwrap().contains("CUDA out of memory"), "{resp}");
        assert_eq!(b["n_scored"], 0);
        let chosen = b["chosen"].as_u64().unwrap();
        if policy == "first" {
            assert_eq!(chosen, 0);
        }
        assert!(chosen < 3);
        assert_eq!(resp["choices"][0]["message"]["content"], candidate_text(5 + chosen as i64));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_from_backends_is_a_clear_error_never_a_panic() {
    let rm = FakeServer::start(rm_handler()).await;
    let cases: Vec<(Reply, u16, &str)> = vec![
        (Reply::Raw(200, "this is not json".into()), 502, "not JSON"),
        (Reply::Json(200, json!({"choices": []})), 502, "empty 'choices'"),
        (Reply::Json(200, json!([1, 2])), 502, "not a JSON object"),
        (Reply::Json(200, json!({"choices": [{"index": 0, "text": "legacy shape"}]})), 502, "'message'"),
    ];
    for (reply, status, needle) in cases {
        let reply = Arc::new(std::sync::Mutex::new(Some(reply)));
        let upstream = FakeServer::start(move |_: &Recorded| {
            reply.lock().unwrap().take().unwrap_or(Reply::Json(500, json!({"error": {"message": "only once"}})))
        })
        .await;
        let cfg = config(&upstream, &rm, "n", 2).replace("max_retries = 1", "max_retries = 0");
        let proxy = Bestofn::start(&cfg);
        let (got, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
        assert_eq!(got, status, "{resp}");
        assert!(resp["error"]["message"].as_str().unwrap().contains(needle), "{needle}: {resp}");
    }

    // Missing usage is estimated and flagged, not an error.
    let no_usage = FakeServer::start(|_: &Recorded| {
        Reply::Json(200, json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "four words right here"}, "finish_reason": "stop"}]}))
    })
    .await;
    let proxy = Bestofn::start(&tuned(&no_usage, &rm, "parallel", 2, "", ""));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["bestofn"]["usage"]["generation"]["completion_tokens_estimated"], true);
    assert!(resp["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // A truncated body (content-length longer than what is sent): 502.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_http_request(&mut stream).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"choices\": [",
                )
                .await;
        }
    });
    let cfg = config(&no_usage, &rm, "n", 2)
        .replace(&no_usage.url(), &format!("http://{addr}"))
        .replace("max_retries = 1", "max_retries = 0");
    let proxy = Bestofn::start(&cfg);
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 502, "{resp}");

    // NaN from the RM (Python's json.dumps writes it) is not JSON: 502 naming the scorer.
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let nan_rm = FakeServer::start(|_: &Recorded| {
        Reply::Raw(200, r#"{"data": [{"index": 0, "probs": [NaN]}, {"index": 1, "probs": [1.0]}]}"#.into())
    })
    .await;
    let proxy = Bestofn::start(&config(&upstream, &nan_rm, "n", 2));
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 502, "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("scorer vllm"), "{resp}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_on_bodies_concurrency_and_slow_clients() {
    let upstream = FakeServer::start(seeded_upstream(|seed| seed == 666)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&upstream, &rm, "n", 2).replace(
        "[upstream]",
        "[server]\nmax_body_bytes = 2048\nmax_concurrent_requests = 1\nheader_read_timeout_ms = 300\nbody_read_timeout_ms = 300\n\n[upstream]",
    );
    let proxy = Bestofn::start(&cfg.replace("timeout_ms = 5000", "timeout_ms = 60000"));

    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body(&"x".repeat(4096)), &[]).await;
    assert_eq!(status, 413, "{resp}");
    assert_envelope(&resp, None);

    // One request hangs in flight; the next is refused at once with Retry-After.
    let mut hanging = chat_body("hang");
    hanging["seed"] = json!(666);
    let url = proxy.url("/v1/chat/completions");
    let first = tokio::spawn(async move { post(&url, hanging, &[]).await });
    for _ in 0..200 {
        if !upstream.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, headers, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    assert_eq!(status, 429, "{resp}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(resp["error"]["type"], "rate_limit_error");
    first.abort();

    // A client that sends half its headers is cut off.
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open with headers unfinished");

    // A client that promises a body and does not send it gets a 408.
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"mess")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

/// An upstream answering after 700 ms (long enough to send a signal mid-request) and an RM.
async fn slow_upstream_and_rm() -> (FakeServer, FakeServer) {
    let ok = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream =
        FakeServer::start(move |r: &Recorded| Reply::Delayed(Duration::from_millis(700), Box::new(ok(r)))).await;
    (upstream, FakeServer::start(rm_handler()).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let (upstream, rm) = slow_upstream_and_rm().await;
    let mut proxy = Bestofn::start(&config(&upstream, &rm, "n", 2));
    let url = proxy.url("/v1/chat/completions");
    let in_flight = tokio::spawn(async move { post(&url, chat_body("q"), &[]).await });
    for _ in 0..200 {
        if !upstream.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::spawn_blocking(move || proxy.terminate_and_wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    let (code, _, resp) = in_flight.await.unwrap();
    assert_eq!(code, 200, "the in-flight request was finished: {resp}");
}

/// Names of the threads of process `pid` that start with `prefix`, sorted.
fn threads_named(pid: u32, prefix: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut names: Vec<String> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_multi_threaded_runtime_drains_in_flight_requests_on_sigterm_and_a_removed_key_only_warns() {
    let (upstream, rm) = slow_upstream_and_rm().await;
    // `server.threading` was removed: it still loads, with a warning that names it.
    let cfg = config(&upstream, &rm, "n", 2).replace("[upstream]", "[server]\nthreading = \"per_core\"\n\n[upstream]");
    let mut proxy = Bestofn::start_with_env(&cfg, &[("TOKIO_WORKER_THREADS", "3")]);
    let workers = threads_named(proxy.pid(), "tokio-rt-worker");
    assert_eq!(workers.len(), 3, "TOKIO_WORKER_THREADS sets the runtime's workers: {workers:?}");
    assert!(
        proxy.logs().iter().any(|line| line.contains("WARN") && line.contains("server.threading was removed")),
        "{:?}",
        proxy.logs()
    );
    let in_flight: Vec<_> = (0..6)
        .map(|i| {
            let url = proxy.url("/v1/chat/completions");
            tokio::spawn(async move { post(&url, chat_body(&format!("q{i}")), &[]).await })
        })
        .collect();
    for _ in 0..300 {
        if upstream.requests().len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.requests().len(), 6, "all six reached the upstream before the signal");
    let status = tokio::task::spawn_blocking(move || proxy.terminate_and_wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    for request in in_flight {
        let (code, _, resp) = request.await.unwrap();
        assert_eq!(code, 200, "every in-flight request was finished: {resp}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_keys_upstream_secrets_and_a_fixed_upstream() {
    let upstream = FakeServer::start(upstream_handler(NSupport::Full, UsageStyle::Honest)).await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&upstream, &rm, "n", 2)
        .replace(
            "[upstream]",
            "[server]\napi_keys = [\"sk-client-a\"]\napi_keys_env = \"BESTOFN_TEST_KEYS\"\n\n[upstream]",
        )
        .replace("max_retries = 1\n", "max_retries = 1\napi_key_env = \"BESTOFN_TEST_UPSTREAM_KEY\"\n");
    let secret = "sk-upstream-very-secret";
    let proxy = Bestofn::start_with_env(
        &cfg,
        &[("BESTOFN_TEST_KEYS", "sk-client-b, sk-client-c"), ("BESTOFN_TEST_UPSTREAM_KEY", secret)],
    );
    let url = proxy.url("/v1/chat/completions");

    let (status, _, resp) = post(&url, chat_body("q"), &[]).await;
    assert_eq!(status, 401);
    assert_envelope(&resp, None);
    assert_eq!(resp["error"]["code"], "invalid_api_key");
    let (status, _, _) = post(&url, chat_body("q"), &[("authorization", "Bearer sk-client-x")]).await;
    assert_eq!(status, 401);
    assert!(upstream.requests().is_empty());
    for key in ["sk-client-a", "sk-client-c"] {
        let (status, _, resp) = post(&url, chat_body("q"), &[("authorization", &format!("Bearer {key}"))]).await;
        assert_eq!(status, 200, "{key}: {resp}");
    }
    let health = client().get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "ops endpoints are open unless configured");

    // The upstream gets its own key; clients, logs and errors never see it.
    let call = &upstream.requests_to("/v1/chat/completions")[0];
    assert_eq!(call.headers["authorization"], format!("Bearer {secret}").as_str());
    assert_ne!(call.headers["authorization"], "Bearer sk-client-a", "the client's key is not forwarded");

    // No request field or header can point bestofn elsewhere.
    upstream.clear();
    let mut body = chat_body("q");
    body["base_url"] = json!("http://127.0.0.2:9/v1");
    body["api_base"] = json!("http://127.0.0.2:9/v1");
    let (status, _, _) = post(
        &url,
        body,
        &[
            ("authorization", "Bearer sk-client-a"),
            ("x-bestofn-upstream", "http://127.0.0.2:9"),
            ("x-forwarded-host", "127.0.0.2"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(upstream.requests_to("/v1/chat/completions").len(), 1);
    drop(proxy);

    // A failing upstream's error, the logs and check-config never show the secret.
    let failing = FakeServer::start(|_: &Recorded| Reply::Json(503, json!({"error": {"message": "overloaded"}}))).await;
    let cfg = cfg.replace(&upstream.url(), &failing.url());
    let proxy = Bestofn::start_with_env(&cfg, &[("BESTOFN_TEST_KEYS", "k"), ("BESTOFN_TEST_UPSTREAM_KEY", secret)]);
    let (status, _, resp) =
        post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[("authorization", "Bearer sk-client-a")]).await;
    assert_eq!(status, 502);
    assert!(!resp.to_string().contains(secret));
    assert!(proxy.logs().iter().all(|l| !l.contains(secret) && !l.contains("sk-client-a")));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &cfg).unwrap();
    let out = std::process::Command::new(common::bestofn_exe()).arg("check-config").arg(&path).output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        !printed.contains("sk-client-a") && printed.contains("# api_keys: 1 client key is set inline"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_with_injected_faults_loses_no_request() {
    // 20% of upstream calls fail: half hang past the deadline, half answer 500.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let ok = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream = FakeServer::start(move |r: &Recorded| match counter.fetch_add(1, Ordering::SeqCst) % 10 {
        3 => Reply::Delayed(Duration::from_secs(30), Box::new(ok(r))),
        7 => Reply::Json(500, json!({"error": {"message": "injected"}})),
        _ => ok(r),
    })
    .await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = tuned(&upstream, &rm, "parallel", 3, "timeout_ms = 60000", "deadline_ms = 600")
        .replace("max_retries = 1", "max_retries = 0");
    let proxy = Bestofn::start(&cfg);
    let url = proxy.url("/v1/chat/completions");
    let requests = 120;
    let started = Instant::now();
    let mut tasks = Vec::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(12));
    for i in 0..requests {
        let url = url.clone();
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let t = Instant::now();
            let (status, _, resp) = post(&url, chat_body(&format!("q{i}")), &[]).await;
            (status, resp, t.elapsed())
        }));
    }
    let mut ok_count = 0;
    for task in tasks {
        let (status, resp, took) = task.await.unwrap();
        match status {
            200 => {
                ok_count += 1;
                assert!(resp["bestofn"]["n_received"].as_u64().unwrap() >= 1);
            }
            _ => assert_envelope(&resp, None),
        }
        // Correctness of the deadline, with generous slack for a loaded 2-core machine.
        assert!(took < Duration::from_secs(5), "a request outlived its deadline: {took:?}");
    }
    assert!(ok_count >= requests * 9 / 10, "{ok_count} of {requests} answered with a candidate");
    assert!(started.elapsed() < Duration::from_secs(60));
}
