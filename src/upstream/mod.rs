//! The OpenAI-compatible upstream LLM: sampling N candidates by `n`, by parallel calls, or by
//! learning which of the two the server supports.

use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::backend::Backend;
use crate::backend::ByteStream;
use crate::bon::{Api, Candidate, Sampler, Samples};
use crate::error::Error;
use crate::score::BoxFuture;

/// How N candidates are requested from the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingMode {
    /// One request with `n = N`.
    N,
    /// N concurrent requests with `n = 1`.
    Parallel,
    /// `n` first; parallel calls for whatever the upstream would not give, remembered.
    Auto,
}

/// An OpenAI-compatible chat completions server.
pub struct Upstream {
    backend: Backend,
    base_url: String,
    mode: SamplingMode,
    /// What `auto` has learned of the upstream's `n`: 0 not yet known, 1 no `n` support,
    /// k > 1 at most k choices per call (llama.cpp caps `n` at its `--parallel` slots).
    n_cap: AtomicU32,
}

/// One successful upstream call.
struct ChatCall {
    body: Map<String, Value>,
    choices: Vec<Map<String, Value>>,
    latency_ms: u64,
}

/// Rough tokens of a text, used only where the upstream's own count is missing or impossible.
/// About four bytes a token holds for English BPE vocabularies; it is flagged as an estimate.
fn estimate_tokens(text: &str) -> u64 {
    if text.is_empty() {
        0
    } else {
        (text.len() as u64).div_ceil(4).max(1)
    }
}

impl Upstream {
    /// A client for the upstream at `base_url` (ending in `/v1`, as OpenAI SDK base URLs do).
    pub fn new(backend: Backend, base_url: &str, mode: SamplingMode) -> Self {
        let base = base_url.trim_end_matches('/');
        Upstream {
            backend,
            base_url: base.to_string(),
            mode,
            n_cap: AtomicU32::new(0),
        }
    }

    /// The upstream's `GET /models` answer.
    pub async fn models(&self) -> Result<Value, Error> {
        Ok(self.backend.get_json(&format!("{}/models", self.base_url)).await?.body)
    }

    /// What `auto` has learned: 0 unknown, 1 no `n`, k at most k choices per call.
    pub fn learned_n_cap(&self) -> u32 {
        self.n_cap.load(Ordering::Relaxed)
    }

    fn garbage(&self, what: impl std::fmt::Display) -> Error {
        Error::BadGateway {
            backend: self.backend.name.clone(),
            message: format!("unusable answer: {what}"),
        }
    }

    /// The body of one sampling call: `n` choices, seed `seed`, never streamed.
    fn call_body(base: &Map<String, Value>, n: u32, seed: Option<i64>) -> Map<String, Value> {
        let mut body = base.clone();
        if n > 1 {
            body.insert("n".into(), json!(n));
        } else {
            body.remove("n");
        }
        if let Some(seed) = seed {
            body.insert("seed".into(), json!(seed));
        }
        body.insert("stream".into(), Value::Bool(false));
        body.remove("stream_options");
        body
    }

    fn url(&self, api: Api) -> String {
        format!("{}/{}", self.base_url, api.path())
    }

    async fn call(&self, api: Api, body: Map<String, Value>) -> Result<ChatCall, Error> {
        let reply = self.backend.post_json(&self.url(api), &Value::Object(body)).await?;
        let Value::Object(mut body) = reply.body else {
            return Err(self.garbage("the body is not a JSON object"));
        };
        let mut choices = match body.remove("choices") {
            Some(Value::Array(list)) => list
                .into_iter()
                .map(|c| match c {
                    Value::Object(c) if api == Api::Chat && c.get("message").is_some_and(Value::is_object) => Ok(c),
                    Value::Object(c) if api == Api::Completions && c.get("text").is_some_and(Value::is_string) => Ok(c),
                    _ if api == Api::Chat => Err(self.garbage("a choice without a 'message' object")),
                    _ => Err(self.garbage("a choice without a 'text' string")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(self.garbage("no 'choices' array")),
        };
        if choices.is_empty() {
            return Err(self.garbage("empty 'choices'"));
        }
        choices.sort_by_key(|c| c.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX));
        Ok(ChatCall {
            body,
            choices,
            latency_ms: reply.latency.as_millis() as u64,
        })
    }

    /// `total` candidates in calls of at most `per_call` choices, run concurrently. Call j
    /// starting at candidate offset o gets seed `seed + o`, so every candidate has its own seed.
    async fn batches(
        &self,
        api: Api,
        base: &Map<String, Value>,
        total: u32,
        per_call: u32,
        seed: Option<i64>,
        first: u32,
    ) -> Vec<Result<ChatCall, Error>> {
        let per_call = per_call.max(1);
        let mut calls = Vec::new();
        let mut offset = 0;
        while offset < total {
            let size = per_call.min(total - offset);
            let call_seed = seed.map(|s| s.wrapping_add(i64::from(first + offset)));
            calls.push(self.call(api, Self::call_body(base, size, call_seed)));
            offset += size;
        }
        join_all(calls).await
    }

    async fn sample_auto(
        &self,
        api: Api,
        base: &Map<String, Value>,
        n: u32,
        seed: Option<i64>,
    ) -> Result<Samples, Error> {
        let cap = self.learned_n_cap();
        if n == 1 || cap == 1 || (cap > 1 && cap < n) {
            return Self::collect(api, self.batches(api, base, n, cap.max(1), seed, 0).await, "parallel");
        }
        match self.call(api, Self::call_body(base, n, seed)).await {
            Ok(call) => {
                let got = call.choices.len() as u32;
                if got >= n {
                    return Self::collect(api, vec![Ok(call)], "n");
                }
                self.n_cap.store(got, Ordering::Relaxed);
                tracing::info!(upstream = %self.backend.name, asked = n, got, "upstream returned fewer choices than n; topping up with parallel calls");
                let mut results = vec![Ok(call)];
                results.extend(self.batches(api, base, n - got, got, seed, got).await);
                Self::collect(api, results, "n+parallel")
            }
            Err(Error::UpstreamRejected { status: 400 | 422, .. }) => {
                let fallback = Self::collect(api, self.batches(api, base, n, 1, seed, 0).await, "parallel")?;
                // The same body with n=1 went through, so it was n>1 that was rejected.
                self.n_cap.store(1, Ordering::Relaxed);
                tracing::info!(upstream = %self.backend.name, "upstream rejected n>1; using parallel calls from now on");
                Ok(fallback)
            }
            Err(e) => Err(e),
        }
    }

    /// Turns call results into candidates with honest usage; fails only if every call failed.
    fn collect(api: Api, results: Vec<Result<ChatCall, Error>>, strategy: &'static str) -> Result<Samples, Error> {
        let mut samples = Samples {
            strategy,
            ..Default::default()
        };
        let mut first_error = None;
        let mut reported_total = 0u64;
        let mut any_recount = false;
        for result in results {
            let call = match result {
                Ok(call) => call,
                Err(e) => {
                    samples.failures.push(e.to_string());
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            let usage = call.body.get("usage");
            let prompt = usage.and_then(|u| u.get("prompt_tokens")).and_then(Value::as_u64);
            let reported = usage.and_then(|u| u.get("completion_tokens")).and_then(Value::as_u64);
            let texts: Vec<String> = call.choices.iter().map(|c| api.choice_text(c)).collect();
            let estimates: Vec<u64> = texts.iter().map(|t| estimate_tokens(t)).collect();
            let estimated_sum: u64 = estimates.iter().sum();
            let non_empty = texts.iter().filter(|t| !t.is_empty()).count() as u64;
            let completion = match reported {
                // Each non-empty choice has at least one token; and a figure well under the text's
                // size with several choices is one choice's count (llama.cpp with n>1).
                Some(r) if non_empty > 1 && (r < non_empty || r * 10 < estimated_sum * 6) => {
                    any_recount = true;
                    estimated_sum.max(r)
                }
                Some(r) => r,
                None => {
                    any_recount = true;
                    estimated_sum
                }
            };
            reported_total += reported.unwrap_or(0);
            samples.usage.calls += 1;
            samples.usage.prompt_tokens += prompt.unwrap_or(0);
            samples.usage.completion_tokens += completion;

            let mut envelope = call.body;
            envelope.remove("usage");
            if samples.envelope.is_empty() {
                samples.envelope = envelope;
            }
            for (choice, text) in call.choices.into_iter().zip(texts) {
                let finish_reason = choice.get("finish_reason").and_then(Value::as_str).map(str::to_string);
                samples.candidates.push(Candidate {
                    choice,
                    text,
                    finish_reason,
                    latency_ms: call.latency_ms,
                });
            }
        }
        if any_recount {
            samples.usage.completion_tokens_estimated = true;
            samples.usage.upstream_reported_completion_tokens = Some(reported_total);
        }
        match first_error {
            Some(e) if samples.candidates.is_empty() => Err(e),
            _ => Ok(samples),
        }
    }
}

impl Sampler for Upstream {
    fn sample<'a>(
        &'a self,
        api: Api,
        body: &'a Map<String, Value>,
        n: u32,
        seed: Option<i64>,
    ) -> BoxFuture<'a, Result<Samples, Error>> {
        Box::pin(async move {
            match self.mode {
                SamplingMode::N => Self::collect(api, vec![self.call(api, Self::call_body(body, n, seed)).await], "n"),
                SamplingMode::Parallel => Self::collect(api, self.batches(api, body, n, 1, seed, 0).await, "parallel"),
                SamplingMode::Auto => self.sample_auto(api, body, n, seed).await,
            }
        })
    }

    fn forward<'a>(&'a self, api: Api, body: &'a Map<String, Value>) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move {
            Ok(self
                .backend
                .post_json(&self.url(api), &Value::Object(body.clone()))
                .await?
                .body)
        })
    }

    fn forward_stream<'a>(
        &'a self,
        api: Api,
        body: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<ByteStream, Error>> {
        Box::pin(async move {
            self.backend
                .post_stream(&self.url(api), &Value::Object(body.clone()))
                .await
        })
    }
}
