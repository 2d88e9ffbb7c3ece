//! The OpenAI-compatible upstream LLM: sampling N candidates by `n`, by parallel calls, or by
//! learning which of the two the server supports.

pub(crate) mod config;

use std::sync::atomic::{AtomicU32, Ordering};

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::backend::Backend;

use crate::bon::{
    Api, Arrival, Candidate, Forwarded, ForwardedStream, RawChoice, Sampler, Samples, UpstreamBody, Wave,
};
use crate::error::Error;
use crate::score::{BoxFuture, CandidateMessage};

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

/// How the completion tokens of a call with several choices are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageCounts {
    /// Trust the upstream's figure, except from upstreams known to count one choice only for
    /// `n > 1` (llama.cpp, recognised by the `timings` object of its replies): recount those.
    Auto,
    /// Always use the upstream's figure.
    Trust,
    /// Always recount calls with several choices with the upstream's tokenizer.
    Recount,
}

/// An OpenAI-compatible server (or a pool of interchangeable ones).
pub struct Upstream {
    backend: Backend,
    /// The same servers at their root, where llama.cpp serves `POST /tokenize`.
    tokenizer: Option<Backend>,
    usage_counts: UsageCounts,
    mode: SamplingMode,
    hedge: u32,
    /// What `auto` has learned of the upstream's `n`: 0 not yet known, 1 no `n` support,
    /// k > 1 at most k choices per call (llama.cpp caps `n` at its `--parallel` slots).
    n_cap: AtomicU32,
}

/// One successful upstream call.
struct ChatCall {
    envelope: RawEnvelope,
    choices: Vec<ParsedChoice>,
    latency_ms: u64,
}

/// An answer's end-to-end headers as the engine carries them.
fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, Bytes)> {
    headers.iter().map(|(name, value)| (name.as_str().to_string(), Bytes::copy_from_slice(value.as_bytes()))).collect()
}

/// The `model` a request names, for its calls' spans.
fn model_of<'a>(body: UpstreamBody<'a>) -> Option<&'a str> {
    body.fields.get("model").and_then(Value::as_str)
}

/// What every call of one sampling run shares.
#[derive(Clone, Copy)]
struct Run<'a> {
    api: Api,
    body: UpstreamBody<'a>,
    seed: Option<i64>,
    deadline: Option<Instant>,
}

/// Finished calls in launch order, and whether the deadline cut the rest off.
struct Batch {
    results: Vec<Result<ChatCall, Error>>,
    deadline_hit: bool,
}

/// Rough tokens of a text, used only where the upstream's own count is missing or impossible.
/// About four bytes a token holds for English BPE vocabularies; it is flagged as an estimate.
fn estimate_tokens(text: &str) -> u64 {
    if text.is_empty() { 0 } else { (text.len() as u64).div_ceil(4).max(1) }
}

/// One upstream answer, parsed only as far as sampling needs: the envelope (every field but
/// `choices`) as JSON text, each choice as its text plus the few fields read from it. Choices
/// stay text until an answer returns them (see [`RawChoice`]).
struct Reply {
    envelope: RawEnvelope,
    choices: Vec<ParsedChoice>,
}

/// An answer's fields but `choices`, each kept as its JSON text: of N calls' envelopes one is
/// returned to the client, so the others are read only as far as their `usage` (reading every
/// envelope into `serde_json::Value`s was 4-5% of the proxy's CPU at N = 16 in parallel mode).
#[derive(Default)]
struct RawEnvelope(Vec<(String, Box<RawValue>)>);

impl RawEnvelope {
    /// The field `key`; the last one if the answer repeats it, as a JSON object read would.
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// A field that is a JSON object, read; None when it is absent or anything else.
    fn object(&self, key: &str) -> Option<Map<String, Value>> {
        self.get(key).filter(|raw| is_object(raw)).and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// Every field but `usage`, read.
    fn into_map_without_usage(self) -> Map<String, Value> {
        self.0
            .into_iter()
            .filter(|(key, _)| key != "usage")
            // Each text was read as valid JSON already, so reading it again cannot fail.
            .filter_map(|(key, raw)| serde_json::from_str(raw.get()).ok().map(|value| (key, value)))
            .collect()
    }
}

impl FromFields for RawEnvelope {
    fn field<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        self.0.push((key.to_string(), map.next_value()?));
        Ok(())
    }
}

/// A choice's message and what sampling reads of it.
struct ParsedChoice {
    raw: RawChoice,
    message: CandidateMessage,
    finish_reason: Option<String>,
}

/// The envelope of an answer, with `choices` left unparsed.
#[derive(Default)]
struct Envelope {
    fields: RawEnvelope,
    choices: Option<Box<RawValue>>,
}

impl FromFields for Envelope {
    fn field<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if key == "choices" {
            self.choices = Some(map.next_value()?);
            Ok(())
        } else {
            self.fields.field(key, map)
        }
    }
}

/// The fields of a choice that sampling reads; the rest is skipped (it stays in the text).
#[derive(Default)]
struct ChoiceFields {
    index: Option<Value>,
    /// The `message`, when it is an object: the fields bestofn reads.
    message: Option<MessageFields>,
    text: Option<Value>,
    finish_reason: Option<Value>,
}

/// The fields of a message object that [`CandidateMessage`] reads (content, reasoning, tool
/// calls, refusal); any other field is skipped here and stays in the choice's text.
#[derive(Default)]
struct MessageFields(Map<String, Value>);

/// The message fields [`MessageFields`] keeps.
const READ_MESSAGE_FIELDS: [&str; 5] = ["content", "reasoning_content", "reasoning", "tool_calls", "refusal"];

/// Visits the fields of a JSON object only (serde would also read a struct from an array).
struct ObjectVisitor<T>(std::marker::PhantomData<T>);

/// A struct filled from an object's fields one key at a time.
trait FromFields: Default {
    fn field<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

impl<'de, T: FromFields> serde::de::Visitor<'de> for ObjectVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut out = T::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            out.field(&key, &mut map)?;
        }
        Ok(out)
    }
}

impl FromFields for ChoiceFields {
    fn field<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "index" => self.index = Some(map.next_value()?),
            "text" => self.text = Some(map.next_value()?),
            "finish_reason" => self.finish_reason = Some(map.next_value()?),
            // Anything but an object leaves `message` unset, which is refused below.
            "message" => self.message = map.next_value::<MaybeMessage>()?.0,
            _ => {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl FromFields for MessageFields {
    fn field<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        if READ_MESSAGE_FIELDS.contains(&key) {
            self.0.insert(key.to_string(), map.next_value()?);
        } else {
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Reads one JSON object (and nothing else) into `T`.
fn read_object<T: FromFields>(json: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let out = serde::Deserializer::deserialize_map(&mut de, ObjectVisitor::<T>(std::marker::PhantomData))?;
    de.end()?;
    Ok(out)
}

/// Whether `raw` is a JSON object (its text starts at the value, without whitespace).
fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// `raw` read into `T` when it is a JSON object; None when it is any other value.
fn object_in<T: FromFields>(raw: &RawValue) -> Option<serde_json::Result<T>> {
    is_object(raw).then(|| read_object(raw.get().as_bytes()))
}

/// A `message` value: its fields when it is an object, nothing when it is anything else.
struct MaybeMessage(Option<MessageFields>);

impl<'de> Deserialize<'de> for MaybeMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<MaybeMessage, D::Error> {
        // Read as raw text first, so that a non-object is told apart from a broken object.
        let raw = <&RawValue>::deserialize(deserializer)?;
        object_in(raw).transpose().map(MaybeMessage).map_err(serde::de::Error::custom)
    }
}

/// Splits an upstream answer into its envelope and its choices sorted by index, or says what is
/// wrong with it.
fn parse_reply(api: Api, body: &[u8]) -> Result<Reply, String> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            "the body is not a JSON object".into()
        } else {
            "the body is not JSON".into()
        });
    }
    let envelope: Envelope = read_object(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let list: Vec<Box<RawValue>> = envelope
        .choices
        .and_then(|c| serde_json::from_str(c.get()).ok())
        .ok_or_else(|| "no 'choices' array".to_string())?;
    if list.is_empty() {
        return Err("empty 'choices'".into());
    }
    let mut choices = Vec::with_capacity(list.len());
    for raw in list {
        let refused = || {
            if api == Api::Chat { "a choice without a 'message' object" } else { "a choice without a 'text' string" }
        };
        let fields: ChoiceFields = object_in(&raw)
            .ok_or_else(|| refused().to_string())?
            .map_err(|e| format!("a choice that cannot be read: {e}"))?;
        let index = fields.index.as_ref().and_then(Value::as_u64).unwrap_or(u64::MAX);
        let finish_reason = match fields.finish_reason {
            Some(Value::String(reason)) => Some(reason),
            _ => None,
        };
        let message = match (api, fields.message, fields.text) {
            (Api::Chat, Some(MessageFields(message)), _) => CandidateMessage::from_message(&Value::Object(message)),
            (Api::Completions, _, Some(Value::String(text))) => CandidateMessage::from_text(text),
            _ => return Err(refused().into()),
        };
        choices.push((index, ParsedChoice { raw: RawChoice::new(raw), message, finish_reason }));
    }
    choices.sort_by_key(|(index, _)| *index);
    Ok(Reply { envelope: envelope.fields, choices: choices.into_iter().map(|(_, c)| c).collect() })
}

/// The bodies of the calls of one sampling run. They differ only in `n`, `seed` and `stream`,
/// so the client's request is serialised once without those fields and each call's body is that
/// text with its own fields appended: cloning and serialising the whole conversation once per
/// call was the largest cost of parallel sampling after the HTTP client itself.
struct CallBodies {
    /// The client's body without `n`, `seed`, `stream`, `stream_options`, minus its closing brace.
    open: Vec<u8>,
    /// Whether `open` holds at least one field (so the next one needs a comma).
    has_fields: bool,
}

/// The client's body without the fields each call sets itself.
struct SharedFields<'a>(&'a Map<String, Value>);

const PER_CALL_FIELDS: [&str; 4] = ["n", "seed", "stream", "stream_options"];

impl Serialize for SharedFields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().filter(|(k, _)| !PER_CALL_FIELDS.contains(&k.as_str())))
    }
}

impl CallBodies {
    /// The shared part of `base`'s calls: from the client's text when there is one, each field
    /// spelled as the client spelled it; else serialised from the fields.
    fn new(base: UpstreamBody<'_>) -> Result<CallBodies, Error> {
        let mut open = match base.text.and_then(|text| object_without(text, &PER_CALL_FIELDS)) {
            Some(open) => open,
            None => serde_json::to_vec(&SharedFields(base.fields)).map_err(|e| Error::Internal(e.to_string()))?,
        };
        open.pop(); // the closing brace
        let has_fields = open.len() > 1;
        Ok(CallBodies { open, has_fields })
    }

    /// The body of one sampling call: `n` choices, seed `seed`, never streamed.
    fn body(&self, n: u32, seed: Option<i64>) -> Bytes {
        use std::io::Write;
        let mut out = Vec::with_capacity(self.open.len() + 48);
        out.extend_from_slice(&self.open);
        if self.has_fields {
            out.push(b',');
        }
        // Writing into a Vec cannot fail.
        if n > 1 {
            let _ = write!(out, "\"n\":{n},");
        }
        if let Some(seed) = seed {
            let _ = write!(out, "\"seed\":{seed},");
        }
        out.extend_from_slice(b"\"stream\":false}");
        Bytes::from(out)
    }
}

/// `text`, one JSON object, without its members named in `left_out`; every other member keeps
/// its place and its value's spelling (numbers, spacing, escapes). None when `text` is not one
/// JSON object.
fn object_without(text: &[u8], left_out: &[&str]) -> Option<Vec<u8>> {
    let fields = read_object::<RawEnvelope>(text).ok()?;
    let mut out = Vec::with_capacity(text.len());
    out.push(b'{');
    for (key, value) in fields.0.iter().filter(|(k, _)| !left_out.contains(&k.as_str())) {
        if out.len() > 1 {
            out.push(b',');
        }
        // A key is a string: writing it into a Vec cannot fail.
        serde_json::to_writer(&mut out, key).ok()?;
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Some(out)
}

/// The client's text of the body the upstream is to get, when the proxy took the members
/// `taken` out of the client's body `text` for itself (see
/// [`ProxyRequest::taken_fields`](crate::openai::ProxyRequest::taken_fields)): every other
/// field as the client spelled it. None when `text` is not one JSON object.
pub fn client_text_without(text: &[u8], taken: &[&str]) -> Option<Bytes> {
    object_without(text, taken).map(Bytes::from)
}

/// Resolves at `deadline`, or never.
async fn deadline_reached(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Upstream {
    /// An upstream behind `backend`, whose endpoints are base URLs ending in `/v1`. `hedge`
    /// extra single-sample calls are made in parallel sampling; the first N answers are used.
    pub fn new(backend: Backend, mode: SamplingMode, hedge: u32) -> Self {
        Upstream { backend, tokenizer: None, usage_counts: UsageCounts::Auto, mode, hedge, n_cap: AtomicU32::new(0) }
    }

    /// Counts usage by `counts`, recounting through `tokenizer` (the upstream's servers at their
    /// root URL) where the upstream's own figure cannot be right.
    pub fn with_usage_counts(mut self, counts: UsageCounts, tokenizer: Option<Backend>) -> Self {
        self.usage_counts = counts;
        self.tokenizer = tokenizer;
        self
    }

    /// Exact token counts of `texts` from llama.cpp's `POST /tokenize`, or None when the
    /// endpoint is missing or fails.
    async fn tokenize(&self, texts: &[&str]) -> Option<Vec<u64>> {
        let tokenizer = self.tokenizer.as_ref()?;
        let calls = texts.iter().map(|text| async move {
            let body = serde_json::json!({"content": text, "add_special": false});
            let reply = tokenizer.post_json("/tokenize", &body).await.ok()?;
            reply.body.get("tokens").and_then(Value::as_array).map(|t| t.len() as u64)
        });
        futures_util::future::join_all(calls).await.into_iter().collect()
    }

    /// Whether a call's completion-token figure must be recounted.
    fn needs_recount(&self, envelope: &RawEnvelope, choices: usize) -> bool {
        choices > 1
            && match self.usage_counts {
                UsageCounts::Trust => false,
                UsageCounts::Recount => true,
                // llama.cpp's replies carry a `timings` object; it reports one choice's tokens.
                UsageCounts::Auto => envelope.get("timings").is_some_and(is_object),
            }
    }

    /// The upstream's `GET /models` answer.
    pub async fn models(&self) -> Result<Value, Error> {
        Ok(self.backend.get_json("/models").await?.body)
    }

    /// What `auto` has learned: 0 unknown, 1 no `n`, k at most k choices per call.
    pub fn learned_n_cap(&self) -> u32 {
        self.n_cap.load(Ordering::Relaxed)
    }

    /// One generation call asking for `choices` choices of `model`, in a span of the GenAI
    /// conventions (its usage recorded when the answer reports it).
    async fn call(&self, api: Api, body: Bytes, model: Option<&str>, choices: u32) -> Result<ChatCall, Error> {
        let operation = match api {
            Api::Chat => "chat",
            Api::Completions => "text_completion",
        };
        let span = crate::telemetry::upstream_call_span(operation, model, choices);
        let traced = span.clone();
        crate::telemetry::in_span(span, async move {
            let reply = self.backend.post_bytes(api.path(), body).await?;
            let Reply { envelope, choices } = parse_reply(api, &reply.body)
                .map_err(|what| self.backend.failure(&reply.endpoint, format!("unusable answer: {what}")))?;
            if let Some(usage) = envelope.object("usage") {
                let count = |key: &str| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
                crate::telemetry::record_usage(&traced, count("prompt_tokens"), count("completion_tokens"));
            }
            Ok(ChatCall { envelope, choices, latency_ms: reply.latency.as_millis() as u64 })
        })
        .await
    }

    /// `total` candidates in concurrent calls of at most `per_call` choices; call starting at
    /// candidate offset o gets seed `seed + o`, so every candidate has its own seed. Single-sample
    /// calls are hedged: `hedge` more are made and the first `total` answers win. Calls still
    /// running at the deadline, or once enough answers are in, are dropped, which cancels them.
    async fn batch(&self, run: Run<'_>, total: u32, per_call: u32, first: u32) -> Batch {
        let Run { api, body: base, seed, deadline } = run;
        let per_call = per_call.max(1);
        let mut plans = Vec::new();
        let mut offset = 0;
        while offset < total {
            let size = per_call.min(total - offset);
            plans.push((size, offset));
            offset += size;
        }
        if per_call == 1 {
            plans.extend((0..self.hedge).map(|h| (1, total + h)));
        }
        let shared = match CallBodies::new(base) {
            Ok(shared) => shared,
            Err(e) => return Batch { results: vec![Err(e)], deadline_hit: false },
        };
        let model = model_of(base);
        let mut pending: FuturesUnordered<_> = plans
            .iter()
            .enumerate()
            .map(|(i, &(size, offset))| {
                let call_seed = seed.map(|s| s.wrapping_add(i64::from(first + offset)));
                let body = shared.body(size, call_seed);
                async move { (i, self.call(api, body, model, size).await) }
            })
            .collect();
        let mut finished: Vec<Option<Result<ChatCall, Error>>> = plans.iter().map(|_| None).collect();
        let mut received = 0;
        let mut deadline_hit = false;
        let cutoff = deadline_reached(deadline);
        tokio::pin!(cutoff);
        loop {
            tokio::select! {
                next = pending.next() => match next {
                    Some((i, result)) => {
                        if let Ok(call) = &result {
                            received += call.choices.len() as u32;
                        }
                        finished[i] = Some(result);
                        if received >= total {
                            break;
                        }
                    }
                    None => break,
                },
                () = &mut cutoff => {
                    deadline_hit = !pending.is_empty();
                    break;
                }
            }
        }
        Batch { results: finished.into_iter().flatten().collect(), deadline_hit }
    }

    async fn sample_auto(&self, run: Run<'_>, n: u32) -> Result<Samples, Error> {
        let Run { api, body: base, seed, deadline } = run;
        let cap = self.learned_n_cap();
        if n == 1 || cap == 1 || (cap > 1 && cap < n) {
            return self.collect(self.batch(run, n, cap.max(1), 0).await, "parallel").await;
        }
        let first_call = tokio::select! {
            result = async { self.call(api, CallBodies::new(base)?.body(n, seed), model_of(base), n).await } => result,
            () = deadline_reached(deadline) => {
                return self.collect(Batch { results: Vec::new(), deadline_hit: true }, "n").await;
            }
        };
        match first_call {
            Ok(call) => {
                let got = call.choices.len() as u32;
                if got >= n {
                    return self.collect(Batch { results: vec![Ok(call)], deadline_hit: false }, "n").await;
                }
                self.n_cap.store(got, Ordering::Relaxed);
                tracing::info!(upstream = %self.backend.name, asked = n, got, "upstream returned fewer choices than n; topping up with parallel calls");
                let mut rest = self.batch(run, n - got, got, got).await;
                rest.results.insert(0, Ok(call));
                self.collect(rest, "n+parallel").await
            }
            Err(Error::UpstreamRejected { status: 400 | 422, .. }) => {
                let fallback = self.collect(self.batch(run, n, 1, 0).await, "parallel").await?;
                // The same body with n=1 went through, so it was n>1 that was rejected.
                self.n_cap.store(1, Ordering::Relaxed);
                tracing::info!(upstream = %self.backend.name, "upstream rejected n>1; using parallel calls from now on");
                Ok(fallback)
            }
            Err(e) => Err(e),
        }
    }

    /// Adds one call's candidates and usage to `samples`: the upstream's own figure, recounted
    /// exactly where it cannot be right (see [`UsageCounts`]), estimated from the text, flagged,
    /// only where no count can be had.
    async fn absorb(&self, samples: &mut Samples, call: ChatCall) {
        let usage = call.envelope.object("usage");
        let prompt = usage.as_ref().and_then(|u| u.get("prompt_tokens")).and_then(Value::as_u64);
        let reported = usage.as_ref().and_then(|u| u.get("completion_tokens")).and_then(Value::as_u64);
        let reasoning = usage
            .as_ref()
            .and_then(|u| u.get("completion_tokens_details"))
            .and_then(|d| d.get("reasoning_tokens"))
            .and_then(Value::as_u64);
        // What each candidate generated, reasoning included: rendered only for a recount or an
        // estimate, which a call that reports its usage (the common case) needs neither of.
        let generated = || -> Vec<String> { call.choices.iter().map(|c| c.message.render(true)).collect() };
        let estimate = |texts: &[String]| texts.iter().map(|t| estimate_tokens(t)).sum::<u64>();
        let count = call.choices.len();
        let mut per_candidate: Vec<Option<u64>> = vec![None; count];
        let completion = match reported {
            None => {
                samples.usage.completion_tokens_estimated = true;
                estimate(&generated())
            }
            Some(r) if self.needs_recount(&call.envelope, count) => {
                let generated = generated();
                let texts: Vec<&str> = generated.iter().map(String::as_str).collect();
                match self.tokenize(&texts).await {
                    Some(counts) => {
                        samples.usage.completion_tokens_recounted = true;
                        per_candidate = counts.iter().copied().map(Some).collect();
                        counts.iter().sum()
                    }
                    None => {
                        samples.usage.completion_tokens_estimated = true;
                        estimate(&generated).max(r)
                    }
                }
            }
            Some(r) => {
                if count == 1 {
                    per_candidate[0] = Some(r);
                }
                r
            }
        };
        let usage = &mut samples.usage;
        usage.upstream_reported_completion_tokens =
            Some(usage.upstream_reported_completion_tokens.unwrap_or(0) + reported.unwrap_or(0));
        usage.calls += 1;
        usage.prompt_tokens += prompt.unwrap_or(0);
        if let Some(reasoning) = reasoning {
            usage.reasoning_tokens = Some(usage.reasoning_tokens.unwrap_or(0) + reasoning);
        }
        usage.completion_tokens += completion;
        if samples.envelope.is_empty() {
            samples.envelope = call.envelope.into_map_without_usage();
        }
        for (choice, completion_tokens) in call.choices.into_iter().zip(per_candidate) {
            samples.candidates.push(Candidate::new(
                choice.raw,
                choice.message,
                choice.finish_reason,
                call.latency_ms,
                completion_tokens,
            ));
        }
    }

    /// Turns call results into candidates with the usage the upstream reported, recounted
    /// exactly where its figure cannot be right (see [`UsageCounts`]) and estimated from the
    /// text, flagged, only where no exact count can be had. Fails only if no candidate arrived.
    async fn collect(&self, batch: Batch, strategy: &'static str) -> Result<Samples, Error> {
        let mut samples = Samples { strategy, deadline_hit: batch.deadline_hit, ..Default::default() };
        let mut first_error = None;
        for result in batch.results {
            match result {
                Ok(call) => self.absorb(&mut samples, call).await,
                Err(e) => {
                    samples.failures.push(e.message_with_causes());
                    first_error.get_or_insert(e);
                }
            }
        }
        if samples.candidates.is_empty() {
            return Err(first_error.unwrap_or_else(|| {
                Error::timeout(
                    self.backend.party,
                    self.backend.party_name.as_str(),
                    "no candidate arrived before the request deadline",
                )
            }));
        }
        Ok(samples)
    }
}

impl Sampler for Upstream {
    fn sample<'a>(
        &'a self,
        api: Api,
        body: UpstreamBody<'a>,
        n: u32,
        first: u32,
        seed: Option<i64>,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Samples, Error>> {
        Box::pin(async move {
            // Candidate i of the run gets seed + i, whichever wave it is in.
            let seed = seed.map(|s| s.wrapping_add(i64::from(first)));
            let run = Run { api, body, seed, deadline };
            let mut samples = match self.mode {
                SamplingMode::N => self.collect(self.batch(run, n, n, 0).await, "n").await?,
                SamplingMode::Parallel => self.collect(self.batch(run, n, 1, 0).await, "parallel").await?,
                SamplingMode::Auto => self.sample_auto(run, n).await?,
            };
            // Hedged calls that finished together may bring more than asked; their tokens were
            // spent and stay in the usage, but only N candidates compete.
            samples.candidates.truncate(n as usize);
            Ok(samples)
        })
    }

    fn streams_each(&self) -> bool {
        self.mode == SamplingMode::Parallel
    }

    fn expected_queue_wait(&self) -> Option<std::time::Duration> {
        self.backend.pool.expected_wait()
    }

    fn expected_call_time(&self) -> Option<std::time::Duration> {
        self.backend.pool.mean_service()
    }

    fn sample_each<'a>(
        &'a self,
        api: Api,
        body: UpstreamBody<'a>,
        count: u32,
        first: u32,
        seed: Option<i64>,
        deadline: Option<Instant>,
    ) -> Wave<'a> {
        let shared = match CallBodies::new(body) {
            Ok(shared) => shared,
            Err(e) => return Wave::in_order(vec![Arrival::Call(Err(e))]),
        };
        let calls: Vec<_> = (0..count)
            .map(|i| {
                let call_body = shared.body(1, seed.map(|s| s.wrapping_add(i64::from(first + i))));
                async move {
                    match self.call(api, call_body, model_of(body), 1).await {
                        Ok(call) => {
                            let mut samples = Samples { strategy: "parallel", ..Default::default() };
                            self.absorb(&mut samples, call).await;
                            Arrival::Call(Ok(samples))
                        }
                        Err(e) => Arrival::Call(Err(e)),
                    }
                }
            })
            .collect();
        // Dropping the wave drops the calls still running, which closes their connections.
        Wave::new(calls, deadline_reached(deadline))
    }

    fn forward(&self, api: Api, body: Bytes) -> BoxFuture<'_, Result<Forwarded, Error>> {
        Box::pin(async move {
            let answer = self.backend.post_bytes(api.path(), body).await?;
            let endpoint = answer.endpoint;
            let forwarded = Forwarded::from_json(answer.body)
                .map_err(|what| self.backend.failure(&endpoint, format!("unusable answer: {what}")))?;
            Ok(Forwarded { headers: header_pairs(&answer.headers), ..forwarded })
        })
    }

    fn forward_stream(&self, api: Api, body: Bytes) -> BoxFuture<'_, Result<ForwardedStream, Error>> {
        Box::pin(async move {
            let (headers, body) = self.backend.post_stream(api.path(), body).await?;
            Ok(ForwardedStream { headers: header_pairs(&headers), body })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// An upstream answering each chat completion after `delay` with the text `seed S`.
    async fn slow_upstream(delay: std::time::Duration) -> Upstream {
        use crate::backend::{ClientSettings, EjectionPolicy, EndpointPool, Http2Mode, HttpClient, RetryPolicy};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt;
                            let body: Value =
                                serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
                            tokio::time::sleep(delay).await;
                            let answer = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("seed {}", body["seed"])},
                                "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                Bytes::from(answer.to_string()),
                            )))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let settings = ClientSettings { upstream_http2: Http2Mode::Auto, max_response_bytes: 1 << 20 };
        let backend = Backend {
            client: HttpClient::new(settings).unwrap(),
            name: "upstream".into(),
            party_name: "the upstream".into(),
            party: crate::error::Party::Upstream,
            pool: EndpointPool::new(
                &[url],
                EjectionPolicy { after_failures: 3, cooldown: std::time::Duration::from_secs(1) },
            ),
            api_key: None,
            timeout: std::time::Duration::from_secs(5),
            retry: RetryPolicy {
                max_retries: 0,
                backoff_base: std::time::Duration::ZERO,
                backoff_max: std::time::Duration::ZERO,
            },
        };
        Upstream::new(backend, SamplingMode::Parallel, 0)
    }

    #[tokio::test]
    async fn one_candidate_of_a_wave_can_be_cancelled_while_the_others_arrive() {
        let upstream = slow_upstream(std::time::Duration::from_millis(200)).await;
        let fields: Map<String, Value> =
            serde_json::from_value(json!({"model": "m", "messages": [{"role": "user", "content": "q"}]})).unwrap();
        let mut wave = upstream.sample_each(Api::Chat, UpstreamBody::fields(&fields), 3, 0, Some(10), None);
        assert!(wave.cancel(1), "the wave's second candidate");
        assert!(!wave.cancel(3), "there is no fourth");
        let mut texts = Vec::new();
        while let Some(arrival) = wave.next().await {
            match arrival {
                Arrival::Call(Ok(samples)) => texts.extend(samples.candidates.into_iter().map(|c| c.text)),
                Arrival::Call(Err(e)) => panic!("{e}"),
                Arrival::Deadline => panic!("no deadline was set"),
            }
        }
        texts.sort();
        assert_eq!(texts, ["seed 10", "seed 12"], "the cancelled candidate (seed 11) never arrived");
    }

    fn json_value() -> impl Strategy<Value = Value> {
        crate::test_support::arbitrary_json(&["choices", "message", "text", "index"])
    }

    #[test]
    fn call_bodies_replace_the_per_call_fields_and_keep_the_rest() {
        let base: Map<String, Value> = serde_json::from_value(json!({
            "model": "m", "n": 4, "messages": [{"role": "user", "content": "q \"quoted\""}],
            "stream": true, "stream_options": {"include_usage": true}, "seed": 7, "temperature": 0.5
        }))
        .unwrap();
        let bodies = CallBodies::new(UpstreamBody::fields(&base)).unwrap();
        let parsed = |b: Bytes| serde_json::from_slice::<Value>(&b).unwrap();
        assert_eq!(
            parsed(bodies.body(3, Some(12))),
            json!({"model": "m", "messages": [{"role": "user", "content": "q \"quoted\""}], "temperature": 0.5,
                "n": 3, "seed": 12, "stream": false})
        );
        assert_eq!(
            parsed(bodies.body(1, None)),
            json!({"model": "m", "messages": [{"role": "user", "content": "q \"quoted\""}], "temperature": 0.5, "stream": false})
        );
        let empty = CallBodies::new(UpstreamBody::fields(&Map::new())).unwrap();
        assert_eq!(parsed(empty.body(2, Some(-1))), json!({"n": 2, "seed": -1, "stream": false}));
    }

    #[test]
    fn call_bodies_keep_the_clients_spelling_when_given_its_text() {
        let text = Bytes::from_static(
            b"{ \"temperature\": 1e-1, \"n\": 4, \"x\": 123456789012345678901234567890,\n \"stream\": true, \"n\": 5, \"k\\u00e9y\": [1.50] }",
        );
        let fields: Map<String, Value> = serde_json::from_slice(&text).unwrap();
        let kept = CallBodies::new(UpstreamBody { fields: &fields, text: Some(&text) }).unwrap();
        assert_eq!(
            std::str::from_utf8(&kept.body(3, Some(7))).unwrap(),
            "{\"temperature\":1e-1,\"x\":123456789012345678901234567890,\"k\u{e9}y\":[1.50],\"n\":3,\"seed\":7,\"stream\":false}"
        );
        let respelled = CallBodies::new(UpstreamBody::fields(&fields)).unwrap();
        let body = String::from_utf8(respelled.body(3, Some(7)).to_vec()).unwrap();
        assert!(body.contains("\"temperature\":0.1") && !body.contains("123456789012345678901234567890"), "{body}");
        let empty = Bytes::from_static(b" {} ");
        let bodies = CallBodies::new(UpstreamBody { fields: &Map::new(), text: Some(&empty) }).unwrap();
        assert_eq!(&bodies.body(1, None)[..], b"{\"stream\":false}");
    }

    proptest! {
        #[test]
        fn any_upstream_answer_parses_or_is_refused_without_panic(reply in json_value()) {
            for api in [Api::Chat, Api::Completions] {
                let bytes = serde_json::to_vec(&reply).unwrap();
                if let Ok(parsed) = parse_reply(api, &bytes) {
                    prop_assert!(!parsed.choices.is_empty());
                    for c in &parsed.choices {
                        let key = if api == Api::Chat { "message" } else { "text" };
                        prop_assert!(c.raw.to_map().contains_key(key));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod reply_tests {
    use super::*;

    #[test]
    fn pretty_printed_answers_parse_as_compact_ones_do() {
        let body = b"{\n  \"id\": \"x\",\n  \"choices\": [\n    {\n      \"index\": 1,\n      \"message\": { \"role\": \"assistant\", \"content\": \"b\" },\n      \"finish_reason\": \"length\"\n    } ,\n    { \"index\": 0, \"message\": {\"content\": [{\"type\": \"text\", \"text\": \"a\"}]}, \"logprobs\": null }\n  ],\n  \"usage\": {\"prompt_tokens\": 2}\n}\n";
        let reply = parse_reply(Api::Chat, body).unwrap();
        let texts: Vec<String> = reply.choices.iter().map(|c| c.message.render(false)).collect();
        assert_eq!(texts, ["a", "b"], "sorted by index, content parts joined");
        assert_eq!(reply.choices[1].finish_reason.as_deref(), Some("length"));
        assert!(reply.choices[0].raw.to_map().contains_key("logprobs"), "unknown fields kept");
        assert_eq!(reply.envelope.object("usage").unwrap()["prompt_tokens"], 2);
        assert!(reply.envelope.get("choices").is_none());
        assert_eq!(
            reply.envelope.into_map_without_usage(),
            serde_json::from_str::<Map<String, Value>>(r#"{"id": "x"}"#).unwrap()
        );
        for (body, error) in [
            (&b"[1]"[..], "not a JSON object"),
            (b"nope", "not JSON"),
            (b"{\"choices\": {}}", "no 'choices' array"),
            (b"{\"choices\": [[{\"message\": {}}]]}", "'message' object"),
            (b"{\"choices\": [{\"message\": \"hi\"}]}", "'message' object"),
        ] {
            let got = parse_reply(Api::Chat, body).err().unwrap_or_default();
            assert!(got.contains(error), "{got}");
        }
        let got = parse_reply(Api::Completions, b"{\"choices\": [{\"text\": 3}]}").err().unwrap_or_default();
        assert!(got.contains("'text' string"), "{got}");
    }
}
