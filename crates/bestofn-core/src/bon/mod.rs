//! Best-of-N domain logic: which N and scorer a request gets, the candidates it is answered
//! from, and which candidate wins. Nothing here knows HTTP.

pub mod adaptive;
mod classify;
pub mod config;
pub mod driver;
mod engine;
mod policy;
pub mod select;

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use classify::classify;
pub use config::{PolicyConfig, PolicySettings};
pub use engine::{AdaptiveReport, Engine, OnFirstAnswer, Outcome, RunRequest, Timings};
pub use policy::{
    AdaptivePolicy, DEFAULT_DOMAIN, DOMAINS, DomainRule, MAX_N, Plan, Policy, ResolvedScorer, ScorerFailurePolicy,
    SelectionSettings, check_n,
};
pub use select::{rank, score_candidates};

use crate::error::Error;
use crate::score::{BoxFuture, CandidateMessage, ResponseFormat, Tools};

/// Per-request steering, from the `bestofn` body field or the `x-bestofn-*` headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// Number of candidates to sample.
    pub n: Option<u32>,
    /// Name of a configured scorer.
    pub scorer: Option<String>,
    /// Domain, which selects the per-domain policy.
    pub domain: Option<String>,
    /// List every candidate with its score in the response.
    pub return_candidates: bool,
    /// Turn adaptive sampling on or off for this request.
    pub adaptive: Option<bool>,
    /// How this request's winner is picked.
    pub selection: Option<SteeringSelection>,
}

/// A selection rule by name (`best`, `soft`, `fuse`): what a request may ask for
/// (`bestofn.selection`) and what config sets; parameters come from the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteeringSelection {
    /// The highest score.
    Best,
    /// A softmax draw.
    Soft,
    /// A fuser writes the answer from the top candidates.
    Fuse,
}

/// One upstream choice object as it arrived, kept as text: only the choices an answer returns
/// are built into JSON maps. Building all N into maps (with `message`, `logprobs`, ...) was the
/// largest share of bestofn's CPU in parallel sampling after the sockets.
#[derive(Debug, Clone)]
pub struct RawChoice(Box<serde_json::value::RawValue>);

impl RawChoice {
    /// `raw`, which the caller checked is a JSON object.
    pub fn new(raw: Box<serde_json::value::RawValue>) -> RawChoice {
        RawChoice(raw)
    }

    /// The choice as a JSON object, every field kept.
    pub fn to_map(&self) -> Map<String, Value> {
        // Valid JSON, checked to be an object on arrival: the fallback cannot be reached.
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }

    /// The choice's JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

/// One sampled completion.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The upstream's choice object (`message`, `finish_reason`, `logprobs`, ...), unchanged:
    /// what an answer returns and re-streams, every field kept.
    pub choice: RawChoice,
    /// The parts of the message bestofn reads (content, reasoning, tool calls, refusal), parsed
    /// once on arrival; a legacy completion's text is its content.
    pub message: CandidateMessage,
    /// The message's default rendering ([`CandidateMessage::render`] without reasoning): what
    /// scorers read, `return_candidates` lists and the recorder writes as `text`.
    pub text: String,
    /// The upstream's `finish_reason`.
    pub finish_reason: Option<String>,
    /// Wall time of the upstream call that produced it.
    pub latency_ms: u64,
    /// This candidate's completion tokens, when the upstream counted them for it alone (one
    /// choice per call, or an exact recount).
    pub completion_tokens: Option<u64>,
}

impl Candidate {
    /// A candidate of `message`, its `text` the message's default rendering.
    pub fn new(
        choice: RawChoice,
        message: CandidateMessage,
        finish_reason: Option<String>,
        latency_ms: u64,
        completion_tokens: Option<u64>,
    ) -> Candidate {
        let text = message.render(false);
        Candidate { choice, message, text, finish_reason, latency_ms, completion_tokens }
    }
}

/// Token usage of the generation calls, counted so that it never under-reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenerationUsage {
    /// Upstream calls that returned candidates.
    pub calls: u32,
    /// Prompt tokens, summed over every call made (each call pays for the prompt).
    pub prompt_tokens: u64,
    /// Completion tokens, summed over every candidate.
    pub completion_tokens: u64,
    /// What the upstream itself reported, when `completion_tokens` is not its figure: a recount
    /// (llama.cpp reports one choice's tokens for `n>1`) or an estimate (no usage reported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_reported_completion_tokens: Option<u64>,
    /// True when part of `completion_tokens` was recounted exactly with the upstream's tokenizer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub completion_tokens_recounted: bool,
    /// True when part of `completion_tokens` is an estimate from the text (about 4 bytes a token).
    pub completion_tokens_estimated: bool,
    /// Reasoning tokens (part of `completion_tokens`), summed over the calls whose upstream
    /// reported `usage.completion_tokens_details.reasoning_tokens`; None when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

/// The candidates gathered for one request.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Candidates in the order they were received: n-mode choices by index, then further calls.
    pub candidates: Vec<Candidate>,
    /// Top-level fields of the first upstream response (`id`, `created`, `model`, ...), without
    /// `choices` and `usage`.
    pub envelope: Map<String, Value>,
    /// Generation usage.
    pub usage: GenerationUsage,
    /// How the candidates were obtained: `n`, `parallel`, or `n+parallel`.
    pub strategy: &'static str,
    /// Messages of upstream calls that failed while others succeeded, as the client may read
    /// them ([`crate::Error::message_with_causes`]: the party and the causes, no endpoint).
    pub failures: Vec<String>,
    /// The request deadline cut off calls that were still running.
    pub deadline_hit: bool,
}

impl Samples {
    /// Drops `upstream_reported_completion_tokens` when the count is the upstream's own figure
    /// (it is kept only beside a recount or an estimate).
    pub fn settle_usage(&mut self) {
        if !self.usage.completion_tokens_recounted && !self.usage.completion_tokens_estimated {
            self.usage.upstream_reported_completion_tokens = None;
        }
    }

    /// Adds a later wave's candidates, usage and failures to these.
    pub fn extend(&mut self, more: Samples) {
        if self.envelope.is_empty() {
            self.envelope = more.envelope;
        }
        if self.strategy.is_empty() {
            self.strategy = more.strategy;
        }
        self.candidates.extend(more.candidates);
        let (u, m) = (&mut self.usage, more.usage);
        u.calls += m.calls;
        u.prompt_tokens += m.prompt_tokens;
        u.completion_tokens += m.completion_tokens;
        u.upstream_reported_completion_tokens =
            match (u.upstream_reported_completion_tokens, m.upstream_reported_completion_tokens) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
            };
        u.completion_tokens_recounted |= m.completion_tokens_recounted;
        u.reasoning_tokens = match (u.reasoning_tokens, m.reasoning_tokens) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        u.completion_tokens_estimated |= m.completion_tokens_estimated;
        self.failures.extend(more.failures);
        self.deadline_hit |= more.deadline_hit;
    }
}

/// Which OpenAI API a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `POST /v1/chat/completions`: candidates are `choices[].message`.
    Chat,
    /// `POST /v1/completions` (legacy): candidates are `choices[].text`.
    Completions,
}

impl Api {
    /// The path under the upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/chat/completions",
            Api::Completions => "/completions",
        }
    }
}

/// Bytes of a streamed answer as they arrive from the upstream; an error ends the stream.
pub type ByteStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, Error>> + Send>>;

/// What a streamed wave yields: one call's candidates (or its failure), or the deadline.
#[derive(Debug)]
pub enum Arrival {
    /// One upstream call finished.
    Call(Result<Samples, Error>),
    /// The request deadline passed with calls still running (they are dropped).
    Deadline,
}

/// Candidates of a wave as they arrive.
pub type ArrivalStream<'a> = std::pin::Pin<Box<dyn futures_util::Stream<Item = Arrival> + Send + 'a>>;

/// One wave of single-candidate calls: their arrivals as each finishes, and a way to cancel any
/// one of them while the others go on (dropping the wave cancels every call still running).
pub struct Wave<'a> {
    arrivals: ArrivalStream<'a>,
    /// One handle per candidate of the wave, in candidate order.
    cancels: Vec<futures_util::future::AbortHandle>,
}

impl<'a> Wave<'a> {
    /// A wave of `calls`, one future per candidate in candidate order, each yielding its
    /// arrival; `cutoff` ends the wave with [`Arrival::Deadline`] while calls still run.
    pub fn new<F>(calls: Vec<F>, cutoff: impl Future<Output = ()> + Send + 'a) -> Wave<'a>
    where
        F: Future<Output = Arrival> + Send + 'a,
    {
        use futures_util::StreamExt;
        let (running, cancels): (futures_util::stream::FuturesUnordered<_>, Vec<_>) = calls
            .into_iter()
            .map(|call| {
                let (call, cancel) = futures_util::future::abortable(call);
                (call, cancel)
            })
            .unzip();
        let cutoff = Box::pin(cutoff);
        let arrivals = futures_util::stream::unfold(Some((running, cutoff)), |state| async move {
            let (mut running, mut cutoff) = state?;
            loop {
                tokio::select! {
                    next = running.next() => match next? {
                        Ok(arrival) => return Some((arrival, Some((running, cutoff)))),
                        // A cancelled candidate arrives as nothing.
                        Err(futures_util::future::Aborted) => continue,
                    },
                    () = &mut cutoff => return (!running.is_empty()).then_some((Arrival::Deadline, None)),
                }
            }
        });
        Wave { arrivals: Box::pin(arrivals), cancels }
    }

    /// A wave whose arrivals are already known, yielded in the order given (recorded
    /// candidates in replay); each but a final [`Arrival::Deadline`] can be cancelled.
    pub fn in_order(arrivals: Vec<Arrival>) -> Wave<'a> {
        use futures_util::StreamExt;
        let mut cancels = Vec::new();
        let mut ordered = Vec::new();
        for arrival in arrivals {
            match arrival {
                Arrival::Deadline => ordered.push(futures_util::future::Either::Left(std::future::ready(Ok(arrival)))),
                arrival => {
                    let (ready, cancel) = futures_util::future::abortable(std::future::ready(arrival));
                    cancels.push(cancel);
                    ordered.push(futures_util::future::Either::Right(ready));
                }
            }
        }
        let arrivals =
            futures_util::stream::iter(ordered).then(|next| next).filter_map(|next| std::future::ready(next.ok()));
        Wave { arrivals: Box::pin(arrivals), cancels }
    }

    /// The same wave with `seen` called on each arrival as it is yielded, before the caller
    /// gets it.
    pub fn inspect(self, seen: impl FnMut(&Arrival) + Send + 'a) -> Wave<'a> {
        use futures_util::StreamExt;
        Wave { arrivals: Box::pin(self.arrivals.inspect(seen)), cancels: self.cancels }
    }

    /// The next arrival; None once every call has arrived, been cancelled or been cut off.
    pub async fn next(&mut self) -> Option<Arrival> {
        use futures_util::StreamExt;
        self.arrivals.next().await
    }

    /// Cancels the wave's `index`th candidate (0 is the wave's first): its call is dropped, which
    /// closes its connection, and it never arrives. False when there is no such candidate.
    pub fn cancel(&self, index: usize) -> bool {
        self.cancels.get(index).map(futures_util::future::AbortHandle::abort).is_some()
    }
}

/// A client's request body (a JSON object) as the engine needs it: its text, with its fields
/// parsed into a map only when something reads them. A pass-through sends the client's text
/// as it is and never needs the map; building it (an ordered map, a key and a string for every
/// member, at every depth) was the largest group of a pass-through's allocations (BENCHMARKS.md,
/// issue #17, thirteenth sitting).
#[derive(Debug)]
pub struct ClientBody {
    /// The client's bytes.
    text: bytes::Bytes,
    /// The members the proxy took out for itself: not fields of the upstream's body.
    taken: &'static [&'static str],
    /// Whether the client set `temperature` (as null included).
    sets_temperature: bool,
    /// Whether the client set `max_tokens` or `max_completion_tokens` (as null included).
    sets_token_limit: bool,
    /// The fields, less `taken`, once parsed (or why they could not be: a body nested deeper
    /// than the parser's recursion limit is still forwarded as it is).
    fields: std::sync::OnceLock<Result<Map<String, Value>, String>>,
}

impl ClientBody {
    /// The body whose text is `text`, one JSON object already checked by the caller, which
    /// also tells whether it sets the fields a domain's defaults fill in.
    pub fn new(
        text: bytes::Bytes,
        taken: &'static [&'static str],
        sets_temperature: bool,
        sets_token_limit: bool,
    ) -> ClientBody {
        ClientBody { text, taken, sets_temperature, sets_token_limit, fields: std::sync::OnceLock::new() }
    }

    /// The client's text of the body, as it was received (the members in `taken` included).
    pub fn text(&self) -> &bytes::Bytes {
        &self.text
    }

    /// The body's fields, less those the proxy took out, parsed on first use.
    pub fn fields(&self) -> Result<&Map<String, Value>, Error> {
        let parsed = self.fields.get_or_init(|| {
            let mut fields: Map<String, Value> =
                serde_json::from_slice(&self.text).map_err(|e| format!("request body is not valid JSON: {e}"))?;
            for name in self.taken {
                fields.shift_remove(*name);
            }
            Ok(fields)
        });
        parsed.as_ref().map_err(|message| Error::InvalidRequest { message: message.clone(), param: None })
    }

    /// The body's `response_format`, prepared for the scorers of a best-of-N run: a
    /// `json_schema`'s schema compiled once, for every candidate. A schema that does not compile
    /// is an invalid request (param `response_format.json_schema.schema`). Only a request that
    /// bestofn samples and scores asks for it: a pass-through (N = 1) leaves the schema to the
    /// upstream.
    pub fn response_format(&self) -> Result<Option<ResponseFormat>, Error> {
        self.fields()?.get("response_format").map(ResponseFormat::prepare).transpose()
    }

    /// The body's `tools` and `tool_choice`, prepared for the validation of a best-of-N run's
    /// candidates: each tool's `parameters` schema compiled once, for every candidate. A schema
    /// that does not compile is an invalid request naming the tool (param
    /// `tools[i].function.parameters`). Like [`ClientBody::response_format`], asked for only by
    /// a request that bestofn samples and scores.
    pub fn tools(&self) -> Result<Option<Tools>, Error> {
        let fields = self.fields()?;
        Tools::prepare(fields.get("tools"), fields.get("tool_choice"))
    }

    /// Whether the client set `temperature`.
    pub fn sets_temperature(&self) -> bool {
        self.sets_temperature
    }

    /// Whether the client set `max_tokens` or `max_completion_tokens`.
    pub fn sets_token_limit(&self) -> bool {
        self.sets_token_limit
    }
}

/// A request body as the upstream is to get it: its fields, and the client's JSON text when
/// that text says exactly these fields, so that calls can keep the client's spelling of every
/// value (numbers above all: a parsed and re-serialised `1e-1` becomes `0.1`, and an integer
/// beyond 64 bits a rounded float).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamBody<'a> {
    /// The body's fields.
    pub fields: &'a Map<String, Value>,
    /// The client's JSON text of exactly `fields`, when there is one.
    pub text: Option<&'a bytes::Bytes>,
}

impl<'a> UpstreamBody<'a> {
    /// `fields` with no text to keep.
    pub fn fields(fields: &'a Map<String, Value>) -> UpstreamBody<'a> {
        UpstreamBody { fields, text: None }
    }

    /// The body as JSON text: the client's when there is one, else the fields serialised.
    pub fn to_json(&self) -> Result<bytes::Bytes, Error> {
        match self.text {
            Some(text) => Ok(text.clone()),
            None => serde_json::to_vec(self.fields)
                .map(bytes::Bytes::from)
                .map_err(|e| Error::Internal(format!("cannot serialise a request: {e}"))),
        }
    }
}

/// Produces candidates from an LLM.
pub trait Sampler: Send + Sync {
    /// Samples `n` candidates for `body` (an OpenAI request without the `bestofn` field), the
    /// first of them candidate number `first` of the request (for per-candidate seeds). Fewer
    /// than `n` may come back when some calls fail or the deadline cuts them off; none at all is
    /// an error.
    fn sample<'a>(
        &'a self,
        api: Api,
        body: UpstreamBody<'a>,
        n: u32,
        first: u32,
        seed: Option<i64>,
        deadline: Option<std::time::Instant>,
    ) -> BoxFuture<'a, Result<Samples, Error>>;
    /// How long a call queued now would wait for the upstream (`max_in_flight`), when known.
    fn expected_queue_wait(&self) -> Option<std::time::Duration> {
        None
    }
    /// How long an upstream call takes once admitted (a recent mean), when known.
    fn expected_call_time(&self) -> Option<std::time::Duration> {
        None
    }
    /// Whether candidates arrive one call at a time ([`Sampler::sample_each`]) rather than in
    /// one answer per wave.
    fn streams_each(&self) -> bool {
        false
    }
    /// Starts `count` single-candidate calls and yields each as it finishes; any one can be
    /// cancelled, and dropping the wave cancels the calls still running. Used only when
    /// [`Sampler::streams_each`].
    fn sample_each<'a>(
        &'a self,
        api: Api,
        body: UpstreamBody<'a>,
        count: u32,
        first: u32,
        seed: Option<i64>,
        deadline: Option<std::time::Instant>,
    ) -> Wave<'a> {
        let _ = (api, body, count, first, seed, deadline);
        Wave::in_order(Vec::new())
    }
    /// Forwards `body` (a JSON request) as it is and returns the upstream's answer unchanged
    /// (N = 1).
    fn forward(&self, api: Api, body: bytes::Bytes) -> BoxFuture<'_, Result<Forwarded, Error>>;
    /// Forwards a streaming request as it is and returns the upstream's bytes as they arrive.
    fn forward_stream(&self, api: Api, body: bytes::Bytes) -> BoxFuture<'_, Result<ForwardedStream, Error>>;
}

/// The upstream's streamed answer to a forwarded request: its end-to-end headers (less the
/// hop-by-hop ones) and its bytes as they arrive.
pub struct ForwardedStream {
    /// The answer's headers, as name and value bytes.
    pub headers: Vec<(String, bytes::Bytes)>,
    /// The answer's bytes.
    pub body: ByteStream,
}

/// The upstream's answer to a forwarded request: its JSON bytes as they came (re-serialising a
/// pass-through answer cost more than reading it), its end-to-end headers, and the token counts
/// of its `usage`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forwarded {
    /// The answer's body, checked to be one JSON object.
    pub body: bytes::Bytes,
    /// The answer's headers less the hop-by-hop ones, for the reply to the client to carry
    /// (a pass-through keeps what the upstream said: rate-limit, request-id, trace headers).
    pub headers: Vec<(String, bytes::Bytes)>,
    /// `usage.prompt_tokens`, 0 when absent.
    pub prompt_tokens: u64,
    /// `usage.completion_tokens`, 0 when absent.
    pub completion_tokens: u64,
}

impl Forwarded {
    /// Checks that `body` is one JSON object and reads its token counts, without building the
    /// whole document; the error says what is wrong.
    pub fn from_json(body: bytes::Bytes) -> Result<Forwarded, String> {
        #[derive(Deserialize)]
        struct Answer {
            usage: Option<Usage>,
        }
        #[derive(Deserialize)]
        struct Usage {
            prompt_tokens: Option<u64>,
            completion_tokens: Option<u64>,
        }
        // serde would also read a struct from an array.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err("the answer is not a JSON object".into());
        }
        // One UTF-8 check of the whole text, instead of one per string parsed from a byte slice.
        let text = std::str::from_utf8(&body).map_err(|e| format!("the answer is not UTF-8 JSON: {e}"))?;
        let answer: Answer = serde_json::from_str(text).map_err(|e| format!("the answer is not a JSON object: {e}"))?;
        let usage = answer.usage.as_ref();
        Ok(Forwarded {
            prompt_tokens: usage.and_then(|u| u.prompt_tokens).unwrap_or(0),
            completion_tokens: usage.and_then(|u| u.completion_tokens).unwrap_or(0),
            body,
            headers: Vec::new(),
        })
    }
}

/// What a fuser wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Fused {
    /// The fused answer.
    pub text: String,
    /// Candidate indices it was written from, best first.
    pub from: Vec<usize>,
    /// The fuser call's prompt tokens.
    pub prompt_tokens: u64,
    /// The fuser call's completion tokens.
    pub completion_tokens: u64,
    /// The fused answer's score by the request's scorer, when that scorer is pointwise.
    pub score: Option<f64>,
}

/// Writes one answer from several candidates (mixture-of-N).
pub trait Fuser: Send + Sync {
    /// Fuses `candidates` (text and, when shown, score; best first) answering `conversation`.
    fn fuse<'a>(
        &'a self,
        conversation: &'a [crate::score::Message],
        candidates: &'a [(String, Option<f64>)],
    ) -> BoxFuture<'a, Result<Fused, Error>>;
}

/// Decides a request's domain from its last user message.
pub trait DomainClassifier: Send + Sync {
    /// One of [`DOMAINS`].
    fn classify<'a>(&'a self, last_user_message: &'a str) -> BoxFuture<'a, String>;
}

/// The rule-based classifier ([`classify`]): microseconds, no calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleClassifier;

impl DomainClassifier for RuleClassifier {
    fn classify<'a>(&'a self, last_user_message: &'a str) -> BoxFuture<'a, String> {
        Box::pin(std::future::ready(classify(last_user_message).to_string()))
    }
}
