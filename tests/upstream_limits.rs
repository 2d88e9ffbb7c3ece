//! Bounded upstream concurrency (`max_in_flight`): a stub upstream that counts its concurrent
//! calls never sees more than the cap, calls are admitted first come first served, and queue
//! wait counts against the request deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// A raw HTTP upstream that answers each chat call after `delay`, counting calls in progress
/// (the most at once in `peak`) and recording the seeds in arrival order.
async fn counting_upstream(delay: Duration) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<i64>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seeds = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (peak_out, seeds_out) = (peak.clone(), seeds.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (now, peak, seeds) = (now.clone(), peak.clone(), seeds.clone());
            tokio::spawn(async move {
                while let Some(body) = read_http_request(&mut stream).await {
                    let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(running, Ordering::SeqCst);
                    seeds.lock().unwrap().push(body["seed"].as_i64().unwrap_or(-1));
                    tokio::time::sleep(delay).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    let answer = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 4"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
                    .to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    );
                    if stream.write_all(format!("{head}{answer}").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (url, peak_out, seeds_out)
}

fn limited_config(url: &str, cap: usize, extra: &str) -> String {
    format!(
        "[upstream]\nbase_url = \"{url}/v1\"\nsampling = \"parallel\"\nmax_in_flight = {cap}\ntimeout_ms = 30000\nmax_retries = 0\n\n[policy]\nn = 8\nscorer = \"consensus\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_upstream_calls_never_exceed_the_cap() {
    let (url, peak, seeds) = counting_upstream(Duration::from_millis(60)).await;
    let proxy = Bestofn::start(&limited_config(&url, 3, ""));
    let target = proxy.url("/v1/chat/completions");
    let requests = (0..4).map(|i| {
        let mut body = chat_body("What is 2 + 2?");
        body["seed"] = json!(i * 100);
        post(&target, body, &[])
    });
    for (status, _, resp) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["bestofn"]["n_received"], 8);
    }
    assert_eq!(seeds.lock().unwrap().len(), 32);
    assert_eq!(peak.load(Ordering::SeqCst), 3, "the stub saw at most (and, with 32 calls, exactly) 3 at once");
    let text = client().get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let endpoint = format!("{url}/v1");
    let queued: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("bestofn_upstream_queue_seconds_count{{endpoint=\"{endpoint}\"}} ")))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(queued, 32.0, "{text}");
    assert!(text.contains(&format!("bestofn_upstream_in_flight{{endpoint=\"{endpoint}\"}} 0")));
    assert!(text.contains(&format!("bestofn_upstream_queue_depth{{endpoint=\"{endpoint}\"}} 0")));
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_admitted_first_come_first_served() {
    // Calls of 40 ms one at a time: the first request's eight are queued long before the second
    // request arrives 60 ms later, even on a loaded machine where a 5 ms gap was not enough.
    let (url, _, seeds) = counting_upstream(Duration::from_millis(40)).await;
    let proxy = Bestofn::start(&limited_config(&url, 1, ""));
    let target = proxy.url("/v1/chat/completions");
    let send = |seed: i64| {
        let mut body = chat_body("What is 2 + 2?");
        body["seed"] = json!(seed);
        post(&target, body, &[])
    };
    let first = send(1000);
    let second = async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        send(2000).await
    };
    let (a, b) = tokio::join!(first, second);
    assert_eq!((a.0, b.0), (200, 200));
    let order = seeds.lock().unwrap().clone();
    assert_eq!(order.len(), 16);
    assert!(order[..8].iter().all(|s| (1000..1008).contains(s)), "the first request's calls go first: {order:?}");
    assert!(order[8..].iter().all(|s| (2000..2008).contains(s)), "{order:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_wait_counts_against_the_deadline() {
    let (url, _, _) = counting_upstream(Duration::from_millis(300)).await;
    let proxy = Bestofn::start(&limited_config(&url, 1, "deadline_ms = 700"));
    let started = std::time::Instant::now();
    let (status, _, resp) = post(&proxy.url("/v1/chat/completions"), chat_body("q"), &[]).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{resp}");
    // Eight calls of 300 ms one at a time would take 2.4 s; the deadline cuts the queue at 0.7 s.
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let received = resp["bestofn"]["n_received"].as_u64().unwrap();
    assert!((1..8).contains(&received), "{resp}");
    assert_eq!(resp["bestofn"]["deadline_hit"], true);
    let _: Value = resp;
}

#[tokio::test(flavor = "multi_thread")]
async fn load_aware_n_halves_under_a_long_queue_and_recovers_step_by_step() {
    let (url, _, _) = counting_upstream(Duration::from_millis(50)).await;
    let proxy = Bestofn::start(&limited_config(&url, 1, "degrade_at_queue_ms = 120\nmin_n = 2"));
    let target = proxy.url("/v1/chat/completions");
    // Warm-up: the pool learns how long a call takes; the queue is empty, so N stays 8.
    let (_, _, warm) = post(&target, chat_body("q"), &[]).await;
    assert_eq!(warm["bestofn"]["n_sampled"], 8, "{warm}");
    assert!(warm["bestofn"].get("degraded").is_none());
    // A burst: later requests find the first one's calls queued.
    let burst = (0..4).map(|i| {
        let target = target.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(30 * i)).await;
            post(&target, chat_body("q"), &[]).await
        }
    });
    let answers = futures_util::future::join_all(burst).await;
    let degraded: Vec<&Value> =
        answers.iter().map(|(_, _, r)| &r["bestofn"]).filter(|b| b["degraded"] == true).collect();
    assert!(!degraded.is_empty(), "{answers:?}");
    for b in &degraded {
        assert_eq!(b["n_requested"], 8);
        let n = b["n_sampled"].as_u64().unwrap();
        assert!((2..8).contains(&n), "halved, not below min_n: {b}");
    }
    // Drained: N comes back one halving per request (the hysteresis), not all at once.
    let mut ns = Vec::new();
    for _ in 0..4 {
        let (_, _, r) = post(&target, chat_body("q"), &[]).await;
        ns.push(r["bestofn"]["n_sampled"].as_u64().unwrap());
    }
    assert!(ns.windows(2).all(|w| w[0] <= w[1]), "recovers monotonically: {ns:?}");
    assert_eq!(*ns.last().unwrap(), 8, "{ns:?}");
    assert!(ns[0] < 8, "one request after the burst is still degraded: {ns:?}");
    let text = client().get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let counted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"bestofn_degraded_requests_total{domain="general"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(counted as usize, degraded.len() + ns.iter().filter(|n| **n < 8).count(), "{text}");
    // N asked for and N given, summed, for the dashboard's granted-vs-requested panel.
    let series = |name: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}{{domain=\"general\"}} "))).unwrap().parse().unwrap()
    };
    let granted: u64 = 8
        + answers.iter().map(|(_, _, r)| r["bestofn"]["n_sampled"].as_u64().unwrap()).sum::<u64>()
        + ns.iter().sum::<u64>();
    assert_eq!(series("bestofn_n_requested_total"), 8 * (1 + answers.len() + ns.len()) as u64, "{text}");
    assert_eq!(series("bestofn_n_granted_total"), granted, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_queue_cannot_serve_by_its_deadline_gets_429_with_retry_after() {
    let (url, _, _) = counting_upstream(Duration::from_millis(150)).await;
    let proxy = Bestofn::start(&limited_config(&url, 1, "deadline_ms = 400"));
    let target = proxy.url("/v1/chat/completions");
    let (status, _, _) = post(&target, chat_body("warm up"), &[]).await;
    assert_eq!(status, 200);
    let first = tokio::spawn({
        let target = target.clone();
        async move { post(&target, chat_body("first"), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(40)).await;
    let (status, headers, resp) = post(&target, chat_body("second"), &[]).await;
    assert_eq!(status, 429, "{resp}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(resp["error"]["type"], "rate_limit_error");
    assert!(resp["error"]["message"].as_str().unwrap().contains("queue"), "{resp}");
    assert_eq!(first.await.unwrap().0, 200);
    let text = client().get(proxy.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"kind="overloaded"} 1"#), "the metric says why: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_degraded_to_one_sample_keeps_its_deadline_and_report() {
    let (url, _, _) = counting_upstream(Duration::from_millis(60)).await;
    let proxy = Bestofn::start(&limited_config(&url, 1, "degrade_at_queue_ms = 50\nmin_n = 1\ndeadline_ms = 5000"));
    let target = proxy.url("/v1/chat/completions");
    let (status, _, _) = post(&target, chat_body("warm up"), &[]).await;
    assert_eq!(status, 200);
    // Queue up calls, then send requests while they wait: each halving takes N further down.
    let queued = tokio::spawn({
        let target = target.clone();
        async move { post(&target, chat_body("fills the queue"), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let burst = (0..4).map(|i| {
        let target = target.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(5 * i)).await;
            post(&target, chat_body("q"), &[]).await
        }
    });
    let mut reports = Vec::new();
    for (status, _, r) in futures_util::future::join_all(burst).await {
        assert_eq!(status, 200, "{r}");
        reports.push(r["bestofn"].clone());
    }
    reports.sort_by_key(|b| b["n_sampled"].as_u64());
    let reports = vec![reports[0].clone()];
    let one = reports.last().unwrap();
    assert_eq!(one["n_sampled"], 1, "{reports:?}");
    assert_eq!(one["degraded"], true, "a best-of-N request at N = 1 still says so: {one}");
    assert_eq!(one["n_requested"], 8);
    let _ = queued.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_wait_plus_one_call_passes_the_deadline_is_refused_up_front() {
    // Calls take 300 ms, one at a time, deadline 500 ms: behind one queued call a request would
    // wait 300 ms, then need 300 ms more for its own call, past the deadline.
    let (url, _, _) = counting_upstream(Duration::from_millis(300)).await;
    let proxy = Bestofn::start(&limited_config(&url, 1, "deadline_ms = 500"));
    let target = proxy.url("/v1/chat/completions");
    let two = |text: &str| {
        let mut body = chat_body(text);
        body["bestofn"] = json!({"n": 2});
        body
    };
    let (status, _, warm) = post(&target, two("warm up"), &[]).await;
    assert_eq!(status, 200, "{warm}");
    let first = tokio::spawn({
        let (target, body) = (target.clone(), two("first"));
        async move { post(&target, body, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(40)).await;
    let (status, _, resp) = post(&target, two("second"), &[]).await;
    assert_eq!(status, 429, "a wait of 300 ms is within the deadline, the call after it is not: {resp}");
    assert_eq!(first.await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_on_a_cold_proxy_is_degraded_before_any_call_has_finished() {
    let (url, _, seeds) = counting_upstream(Duration::from_millis(300)).await;
    let proxy = Bestofn::start(&limited_config(&url, 4, "degrade_at_queue_ms = 200\nmin_n = 1"));
    let target = proxy.url("/v1/chat/completions");
    // Twenty requests at once on a proxy that has served nothing: no call has finished, so
    // there is no measured call time; upstream.typical_call_ms (1 s by default) and the calls
    // in flight stand in for it, and the queue the first requests leave degrades the rest.
    let answers = futures_util::future::join_all((0..20).map(|_| post(&target, chat_body("q"), &[]))).await;
    let reports: Vec<&Value> = answers.iter().map(|(_, _, r)| &r["bestofn"]).collect();
    assert!(answers.iter().all(|(status, _, _)| *status == 200), "{answers:?}");
    let degraded: Vec<&&Value> = reports.iter().filter(|b| b["degraded"] == true).collect();
    let sampled: Vec<&Value> = reports.iter().map(|b| &b["n_sampled"]).collect();
    assert!(degraded.len() >= 10, "most of the burst is degraded, N sampled: {sampled:?}");
    for b in &degraded {
        assert_eq!(b["n_requested"], 8);
        assert!((1..8).contains(&b["n_sampled"].as_u64().unwrap()), "{b}");
    }
    let calls = seeds.lock().unwrap().len();
    assert!(calls < 20 * 8 / 2, "far fewer calls than 20 requests at full N: {calls}");
}
