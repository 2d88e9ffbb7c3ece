//! The request observer: one per completion request. It owns the concurrency permit, the
//! in-flight gauge, the clock, the domain and the backend call spans, collects what the request
//! cost and bought as it proceeds, and records every metric once, when it is dropped: with the
//! response body once the body has been sent (or abandoned by a client that went away), or with
//! the handler when the request failed before a body existed. A streamed answer therefore
//! counts as in flight for as long as it streams.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::Body;
use crate::bon::{Outcome, Plan};
use crate::error::Error;
use crate::metrics::{Metrics, status_class};

/// Spans of backend calls: (start, end).
pub type CallSpans = Vec<(Instant, Instant)>;

/// What one best-of-N run produced, for the metrics.
struct RunFacts {
    requested: u64,
    failed: u64,
    received: u64,
    sampling_seconds: f64,
    scoring: Option<(String, f64)>,
    /// (scorer, chosen reward, mean reward).
    rewards: Option<(String, f64, f64)>,
    scorer_failed: Option<String>,
    /// (candidates saved, stop reason) of an adaptive run.
    adaptive: Option<(u64, &'static str)>,
    /// N was lowered under load.
    degraded: bool,
    /// N asked for and N given (they differ when load-aware N lowered it).
    n_requested: u64,
    n_granted: u64,
    /// better, worse, unscored or failed, when fusing was asked for.
    fuse: Option<&'static str>,
}

/// Collects one request's metrics and records them once, on drop.
pub struct RequestObserver {
    metrics: Arc<Metrics>,
    started: Instant,
    _permit: Option<OwnedSemaphorePermit>,
    domain: Option<String>,
    status: u16,
    error_kind: Option<&'static str>,
    /// The overhead in seconds (end to end up to the answer being ready, before it was sent,
    /// minus the backend calls), once the answer is ready.
    overhead: Option<f64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    run: Option<RunFacts>,
    /// Pass-through (N = 1): one candidate requested, and whether it arrived.
    pass_through: Option<bool>,
}

impl RequestObserver {
    /// Starts observing a request; it is in flight from now until the observer is dropped.
    pub fn start(metrics: Arc<Metrics>, permit: Option<OwnedSemaphorePermit>) -> Self {
        metrics.in_flight.inc();
        RequestObserver {
            metrics,
            started: Instant::now(),
            _permit: permit,
            domain: None,
            status: 200,
            error_kind: None,
            overhead: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            run: None,
            pass_through: None,
        }
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request's domain, once planned.
    pub fn set_domain(&mut self, domain: &str) {
        self.domain = Some(domain.to_string());
    }

    /// The request failed with `e` (before or while answering).
    pub fn fail(&mut self, e: &Error) {
        self.error_kind = Some(e.kind());
        if self.overhead.is_none() {
            self.status = super::status_of(e).as_u16();
        }
    }

    /// The answer is ready: its backend calls ran over `spans`. Returns the overhead so far (end
    /// to end minus the calls), in seconds, for the request's log line.
    pub fn answered(&mut self, mut spans: CallSpans) -> f64 {
        let overhead = crate::metrics::overhead_seconds(self.started.elapsed(), &mut spans);
        self.overhead = Some(overhead);
        overhead
    }

    /// A pass-through answer with the upstream's usage, when it reported one.
    pub fn pass_through(&mut self, arrived: bool, prompt_tokens: u64, completion_tokens: u64) {
        self.pass_through = Some(arrived);
        self.prompt_tokens = prompt_tokens;
        self.completion_tokens = completion_tokens;
    }

    /// A finished best-of-N run.
    pub fn outcome(&mut self, plan: &Plan, outcome: &Outcome) {
        let usage = &outcome.samples.usage;
        self.prompt_tokens = usage.prompt_tokens;
        self.completion_tokens = usage.completion_tokens;
        let scorer = plan.scorer.name.clone();
        let received = outcome.samples.candidates.len() as u64;
        // An adaptive run asked for n_sampled; of those, the ones cancelled when it stopped are
        // not failures: only failed calls are.
        let (requested, failed) = match &outcome.adaptive {
            Some(a) => (u64::from(a.n_sampled), outcome.samples.failures.len() as u64),
            None => (u64::from(plan.n), u64::from(plan.n).saturating_sub(received)),
        };
        self.run = Some(RunFacts {
            requested,
            failed,
            received,
            sampling_seconds: outcome.timings.sampling_ms / 1000.0,
            scoring: (!outcome.scores.is_empty()).then(|| (scorer.clone(), outcome.timings.scoring_ms / 1000.0)),
            rewards: outcome.chosen_score().map(|chosen| {
                let mean = outcome.scores.iter().sum::<f64>() / outcome.scores.len() as f64;
                (scorer.clone(), chosen, mean)
            }),
            scorer_failed: outcome.scorer_error.as_ref().map(|_| scorer),
            adaptive: outcome.adaptive.map(|a| (u64::from(plan.n.saturating_sub(a.n_sampled)), a.stop_reason.label())),
            degraded: plan.degraded,
            n_requested: u64::from(plan.n_requested),
            n_granted: u64::from(plan.n),
            fuse: match (&outcome.fused, &outcome.fuse_failed) {
                (Some(f), _) => Some(match (f.score, outcome.chosen_score()) {
                    (Some(fused), Some(best)) if fused > best => "better",
                    (Some(_), Some(_)) => "worse",
                    _ => "unscored",
                }),
                (None, Some(_)) => Some("failed"),
                (None, None) => None,
            },
        });
    }

    fn record(&mut self) {
        self.record_metrics();
    }

    fn record_metrics(&mut self) {
        let m = &self.metrics;
        let domain = self.domain.as_deref().unwrap_or("unknown");
        m.in_flight.dec();
        m.requests.with_label_values(&[domain, status_class(self.status)]).inc();
        if let Some(kind) = self.error_kind {
            m.errors.with_label_values(&[domain, kind]).inc();
        }
        m.request_duration.with_label_values(&[domain]).observe(self.started.elapsed().as_secs_f64());
        if let Some(overhead) = self.overhead {
            m.overhead.observe(overhead);
        }
        if let Some(arrived) = self.pass_through {
            m.candidates_requested.with_label_values(&[domain]).inc();
            m.candidates_received.with_label_values(&[domain]).inc_by(u64::from(arrived));
        }
        if let Some(run) = &self.run {
            m.sampling_duration.with_label_values(&[domain]).observe(run.sampling_seconds);
            if let Some((scorer, seconds)) = &run.scoring {
                m.scoring_duration.with_label_values(&[scorer.as_str()]).observe(*seconds);
            }
            m.candidates_requested.with_label_values(&[domain]).inc_by(run.requested);
            m.candidates_received.with_label_values(&[domain]).inc_by(run.received);
            m.candidates_failed.with_label_values(&[domain]).inc_by(run.failed);
            if let Some(outcome) = run.fuse {
                m.fuse.with_label_values(&[domain, outcome]).inc();
            }
            if run.degraded {
                m.degraded.with_label_values(&[domain]).inc();
            }
            m.n_requested.with_label_values(&[domain]).inc_by(run.n_requested);
            m.n_granted.with_label_values(&[domain]).inc_by(run.n_granted);
            if let Some((saved, reason)) = run.adaptive {
                m.candidates_saved.with_label_values(&[domain]).inc_by(saved);
                m.adaptive_stops.with_label_values(&[domain, reason]).inc();
            }
            if let Some((scorer, chosen, mean)) = &run.rewards {
                let labels = [domain, scorer.as_str()];
                m.chosen_reward.with_label_values(&labels).observe(*chosen);
                m.mean_reward.with_label_values(&labels).observe(*mean);
                m.reward_lift.with_label_values(&labels).observe(chosen - mean);
            }
            if let Some(scorer) = &run.scorer_failed {
                m.scorer_failures.with_label_values(&[scorer.as_str()]).inc();
            }
        }
        if self.prompt_tokens > 0 || self.completion_tokens > 0 {
            m.prompt_tokens.with_label_values(&[domain]).inc_by(self.prompt_tokens);
            m.completion_tokens.with_label_values(&[domain]).inc_by(self.completion_tokens);
        }
    }

    /// `response` with this observer riding on its body: the metrics are recorded when the
    /// body is done (or dropped).
    pub fn attach(mut self, response: Response<Body>) -> Response<Body> {
        self.status = response.status().as_u16();
        response.map(|inner| ObservedBody { inner, _observer: self }.boxed_unsync())
    }
}

impl Drop for RequestObserver {
    fn drop(&mut self) {
        self.record();
    }
}

/// A response body carrying its request's observer.
struct ObservedBody {
    inner: Body,
    _observer: RequestObserver,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
