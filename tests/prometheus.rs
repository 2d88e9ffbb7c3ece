//! A real Prometheus scrapes a running bestofn at a 1 s interval while traffic flows in several
//! domains; then every PromQL expression of the Grafana dashboard and every recording rule of
//! deploy/prometheus/alerts.yml is evaluated through Prometheus's HTTP API and must return data.
//! Prometheus comes from Debian's package (`.ci/run` installs it); outside CI the test is
//! skipped when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn query(prom: &str, expr: &str) -> Value {
    let url = reqwest::Url::parse_with_params(&format!("{prom}/api/v1/query"), &[("query", expr)]).unwrap();
    client().get(url).send().await.unwrap().json().await.unwrap()
}

/// The dashboard's expression with Grafana's variables as a short test run needs them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$__range", "1m").replace("$__interval", "5s")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_and_recording_rule_returns_data_from_a_real_prometheus() {
    if Command::new("prometheus").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "CI must install prometheus (Debian package)");
        eprintln!("skipped: no prometheus binary (apt-get install prometheus)");
        return;
    }
    // The upstream fails prompts that ask it to; the RM scores by q=.
    let inner = upstream_handler(NSupport::Full, UsageStyle::Honest);
    let upstream = FakeServer::start(move |r: &Recorded| {
        if r.body.to_string().contains("please fail") {
            Reply::Json(500, json!({"error": {"message": "GPU on fire"}}))
        } else {
            inner(r)
        }
    })
    .await;
    let rm = FakeServer::start(rm_handler()).await;
    let cfg = config(&upstream, &rm, "n", 3).replace("max_retries = 1", "max_retries = 0")
        + "\n[score_cache]\n\n[domains.math]\nadaptive = true\nscorer = \"consensus\"\nconfidence = 0.8\nfirst_wave = 2\n";
    let proxy = Bestofn::start(&cfg);

    let dir = tempfile::tempdir().unwrap();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: bestofn\n    static_configs:\n      - targets: ['{}']\n",
            proxy.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prom = Prometheus { child, url: format!("http://127.0.0.1:{port}") };
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = client().get(format!("{}/-/ready", prom.url)).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "prometheus did not become ready");

    // Traffic over several scrapes: several domains, a cache hit, client and upstream errors,
    // adaptive stops.
    for round in 0..8 {
        for (domain, content) in [
            ("math", "What is 2 + 2?"),
            ("code", "Write a loop"),
            ("general", "Hello"),
            ("precise_if", "Answer in all lowercase"),
        ] {
            let mut body = chat_body(content);
            body["seed"] = json!(round);
            body["bestofn"] = json!({"domain": domain});
            post(&proxy.url("/v1/chat/completions"), body, &[]).await;
        }
        post(&proxy.url("/v1/chat/completions"), json!({"messages": "bad"}), &[]).await;
        let mut failing = chat_body("please fail");
        failing["bestofn"] = json!({"domain": "code"});
        post(&proxy.url("/v1/chat/completions"), failing, &[]).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Let the last scrape land.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/bestofn.json")).unwrap(),
    )
    .unwrap();
    let mut empty = Vec::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = substitute(target["expr"].as_str().unwrap());
            let answer = query(&prom.url, &expr).await;
            assert_eq!(answer["status"], "success", "panel '{}': {expr}: {answer}", panel["title"]);
            if answer["data"]["result"].as_array().is_none_or(Vec::is_empty) {
                empty.push(format!("{}: {expr}", panel["title"]));
            }
            checked += 1;
        }
    }
    assert!(empty.is_empty(), "dashboard queries that returned no data:\n{}", empty.join("\n"));

    // Every rule group loaded, and every recording rule's expression returns data.
    let loaded: Value = client().get(format!("{}/api/v1/rules", prom.url)).send().await.unwrap().json().await.unwrap();
    let groups = loaded["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{loaded}");
    let mut recording = 0;
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        // "unknown" until its first evaluation; never "err".
        assert_ne!(rule["health"], "err", "{rule}");
        if rule["type"] == "recording" {
            let expr = rule["query"].as_str().unwrap();
            let answer = query(&prom.url, expr).await;
            assert!(
                answer["data"]["result"].as_array().is_some_and(|r| !r.is_empty()),
                "recording rule {} returned no data: {answer}",
                rule["name"]
            );
            recording += 1;
        }
    }
    assert!(checked >= 20 && recording >= 6, "{checked} dashboard queries, {recording} recording rules");
}
