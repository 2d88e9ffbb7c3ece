//! Every Prometheus metric bestofn exports, defined once. Labels are bounded: domain (a fixed
//! set), scorer (configured names), status class and error kind; never prompt or output text.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Buckets for request, sampling and scoring latency: 5 ms to 5 minutes.
const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Buckets for the proxy's own overhead: 50 µs to 1 s.
const OVERHEAD_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
/// Buckets for time queued for an upstream slot: 1 ms to 1 minute.
const QUEUE_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Buckets for rewards and reward lift: RM logits mostly fall in ±10.
const REWARD_BUCKETS: &[f64] = &[-10.0, -5.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];

/// The metric set of one server.
pub struct Metrics {
    registry: Registry,
    /// `bestofn_requests_total{domain,status_class}`.
    pub requests: IntCounterVec,
    /// `bestofn_errors_total{domain,kind}`.
    pub errors: IntCounterVec,
    /// `bestofn_request_duration_seconds{domain}`: end to end.
    pub request_duration: HistogramVec,
    /// `bestofn_sampling_duration_seconds{domain}`.
    pub sampling_duration: HistogramVec,
    /// `bestofn_scoring_duration_seconds{scorer}`.
    pub scoring_duration: HistogramVec,
    /// `bestofn_overhead_seconds`: end to end minus the union of upstream and scorer call spans
    /// (from just before a call is handed to the HTTP client until its answer has been read,
    /// or for a stream until its head arrived) and queue waits.
    /// Computed by [`overhead_seconds`].
    pub overhead: Histogram,
    /// `bestofn_candidates_requested_total{domain}`.
    pub candidates_requested: IntCounterVec,
    /// `bestofn_candidates_received_total{domain}`.
    pub candidates_received: IntCounterVec,
    /// `bestofn_candidates_failed_total{domain}`: requested but not received.
    pub candidates_failed: IntCounterVec,
    /// `bestofn_prompt_tokens_total{domain}`.
    pub prompt_tokens: IntCounterVec,
    /// `bestofn_completion_tokens_total{domain}`.
    pub completion_tokens: IntCounterVec,
    /// `bestofn_chosen_reward{domain,scorer}`.
    pub chosen_reward: HistogramVec,
    /// `bestofn_mean_candidate_reward{domain,scorer}`.
    pub mean_reward: HistogramVec,
    /// `bestofn_reward_lift{domain,scorer}`: chosen minus mean, what selection buys.
    pub reward_lift: HistogramVec,
    /// `bestofn_score_cache_hits_total{scorer}`.
    pub cache_hits: IntCounterVec,
    /// `bestofn_score_cache_misses_total{scorer}`.
    pub cache_misses: IntCounterVec,
    /// `bestofn_scorer_failures_total{scorer}`.
    pub scorer_failures: IntCounterVec,
    /// `bestofn_candidates_saved_total{domain}`: N minus the candidates adaptive sampling asked for.
    pub candidates_saved: IntCounterVec,
    /// `bestofn_degraded_requests_total{domain}`: requests given fewer candidates under load.
    pub degraded: IntCounterVec,
    /// `bestofn_n_requested_total{domain}`: the N best-of-N requests asked for (policy, domain or
    /// request), summed; over the request count, the mean N requested.
    pub n_requested: IntCounterVec,
    /// `bestofn_n_granted_total{domain}`: the N they were given after load-aware N, summed.
    pub n_granted: IntCounterVec,
    /// `bestofn_fuse_total{domain,outcome}`: fused answers that scored better or worse than the
    /// best candidate, could not be scored, or failed.
    pub fuse: IntCounterVec,
    /// `bestofn_adaptive_stops_total{domain,reason}`: why adaptive sampling stopped.
    pub adaptive_stops: IntCounterVec,
    /// `bestofn_endpoint_ejections_total{backend}`: endpoints taken out of rotation.
    pub endpoint_ejections: IntCounterVec,
    /// Per backend endpoint: calls running, queued, and time queued (`max_in_flight`).
    pub pool: crate::backend::PoolMetrics,
    /// `bestofn_max_concurrent_requests`: the configured limit, for saturation alerts.
    pub max_concurrent: IntGauge,
    /// `bestofn_in_flight_requests`.
    pub in_flight: IntGauge,
    /// `bestofn_recorder_dropped_total`: records dropped because the recorder fell behind.
    pub recorder_dropped: prometheus::IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<prometheus::IntGaugeVec, prometheus::Error> {
    let g = prometheus::IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec, prometheus::Error> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let r = Registry::new();
        let overhead = Histogram::with_opts(
            HistogramOpts::new(
                "bestofn_overhead_seconds",
                "Time spent in bestofn itself: end to end minus upstream and scorer calls, each from its request's first byte on the wire to its answer's last byte",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
        )?;
        r.register(Box::new(overhead.clone()))?;
        let in_flight = IntGauge::new("bestofn_in_flight_requests", "Completion requests being served")?;
        r.register(Box::new(in_flight.clone()))?;
        let max_concurrent =
            IntGauge::new("bestofn_max_concurrent_requests", "Configured limit of completion requests served at once")?;
        r.register(Box::new(max_concurrent.clone()))?;
        let recorder_dropped = prometheus::IntCounter::new(
            "bestofn_recorder_dropped_total",
            "Recorder records dropped because its queue was full",
        )?;
        r.register(Box::new(recorder_dropped.clone()))?;
        Ok(Metrics {
            requests: counter(
                &r,
                "bestofn_requests_total",
                "Completion requests answered",
                &["domain", "status_class"],
            )?,
            errors: counter(&r, "bestofn_errors_total", "Failed completion requests by kind", &["domain", "kind"])?,
            request_duration: histogram(
                &r,
                "bestofn_request_duration_seconds",
                "End-to-end request latency",
                &["domain"],
                LATENCY_BUCKETS,
            )?,
            sampling_duration: histogram(
                &r,
                "bestofn_sampling_duration_seconds",
                "Time waiting for candidates",
                &["domain"],
                LATENCY_BUCKETS,
            )?,
            scoring_duration: histogram(
                &r,
                "bestofn_scoring_duration_seconds",
                "Time waiting for the scorer",
                &["scorer"],
                LATENCY_BUCKETS,
            )?,
            overhead,
            candidates_requested: counter(
                &r,
                "bestofn_candidates_requested_total",
                "Candidates requested",
                &["domain"],
            )?,
            candidates_received: counter(&r, "bestofn_candidates_received_total", "Candidates received", &["domain"])?,
            candidates_failed: counter(
                &r,
                "bestofn_candidates_failed_total",
                "Candidates requested but not received",
                &["domain"],
            )?,
            prompt_tokens: counter(&r, "bestofn_prompt_tokens_total", "Prompt tokens of upstream calls", &["domain"])?,
            completion_tokens: counter(
                &r,
                "bestofn_completion_tokens_total",
                "Completion tokens of all candidates",
                &["domain"],
            )?,
            chosen_reward: histogram(
                &r,
                "bestofn_chosen_reward",
                "Reward of the chosen candidate",
                &["domain", "scorer"],
                REWARD_BUCKETS,
            )?,
            mean_reward: histogram(
                &r,
                "bestofn_mean_candidate_reward",
                "Mean reward of the candidates",
                &["domain", "scorer"],
                REWARD_BUCKETS,
            )?,
            reward_lift: histogram(
                &r,
                "bestofn_reward_lift",
                "Chosen reward minus mean candidate reward",
                &["domain", "scorer"],
                REWARD_BUCKETS,
            )?,
            candidates_saved: counter(
                &r,
                "bestofn_candidates_saved_total",
                "Candidates adaptive sampling did not request (n minus n_sampled)",
                &["domain"],
            )?,
            n_requested: counter(
                &r,
                "bestofn_n_requested_total",
                "N asked for by best-of-N requests, summed (before load-aware N)",
                &["domain"],
            )?,
            n_granted: counter(
                &r,
                "bestofn_n_granted_total",
                "N given to best-of-N requests, summed (after load-aware N)",
                &["domain"],
            )?,
            degraded: counter(
                &r,
                "bestofn_degraded_requests_total",
                "Best-of-N requests given fewer candidates because the upstream queue was long",
                &["domain"],
            )?,
            fuse: counter(
                &r,
                "bestofn_fuse_total",
                "Mixture-of-N fusions by outcome against the best candidate",
                &["domain", "outcome"],
            )?,
            adaptive_stops: counter(
                &r,
                "bestofn_adaptive_stops_total",
                "Adaptive sampling runs by stop reason",
                &["domain", "reason"],
            )?,
            endpoint_ejections: counter(
                &r,
                "bestofn_endpoint_ejections_total",
                "Backend endpoints taken out of rotation after consecutive failures",
                &["backend"],
            )?,
            max_concurrent,
            pool: crate::backend::PoolMetrics {
                in_flight: gauge(
                    &r,
                    "bestofn_upstream_in_flight",
                    "Backend calls running per endpoint",
                    &["endpoint"],
                )?,
                queue_depth: gauge(
                    &r,
                    "bestofn_upstream_queue_depth",
                    "Backend calls waiting for a max_in_flight slot per endpoint",
                    &["endpoint"],
                )?,
                queue_seconds: histogram(
                    &r,
                    "bestofn_upstream_queue_seconds",
                    "Time backend calls waited for a max_in_flight slot",
                    &["endpoint"],
                    QUEUE_BUCKETS,
                )?,
            },
            cache_hits: counter(&r, "bestofn_score_cache_hits_total", "Score cache hits", &["scorer"])?,
            cache_misses: counter(&r, "bestofn_score_cache_misses_total", "Score cache misses", &["scorer"])?,
            scorer_failures: counter(&r, "bestofn_scorer_failures_total", "Scorer calls that failed", &["scorer"])?,
            in_flight,
            recorder_dropped,
            registry: r,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The status class label of an HTTP status: `2xx`, `4xx`, `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// The proxy's own overhead of a request that took `elapsed` end to end and made backend calls
/// over `spans`: the time not covered by any call, in seconds.
pub fn overhead_seconds(elapsed: std::time::Duration, spans: &mut [(std::time::Instant, std::time::Instant)]) -> f64 {
    (elapsed.as_secs_f64() - union_seconds(spans)).max(0.0)
}

/// Total length of the union of time spans, in seconds: concurrent calls count once.
pub fn union_seconds(spans: &mut [(std::time::Instant, std::time::Instant)]) -> f64 {
    spans.sort_by_key(|s| s.0);
    let mut total = 0.0;
    let mut current: Option<(std::time::Instant, std::time::Instant)> = None;
    for &(start, end) in spans.iter() {
        match current {
            Some((s, e)) if start <= e => current = Some((s, e.max(end))),
            Some((s, e)) => {
                total += (e - s).as_secs_f64();
                current = Some((start, end));
            }
            None => current = Some((start, end)),
        }
    }
    if let Some((s, e)) = current {
        total += (e - s).as_secs_f64();
    }
    total
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn union_counts_overlaps_once() {
        let t = Instant::now();
        let ms = |m| t + Duration::from_millis(m);
        let mut spans = vec![(ms(0), ms(10)), (ms(5), ms(20)), (ms(30), ms(40)), (ms(31), ms(32))];
        assert!((union_seconds(&mut spans) - 0.030).abs() < 1e-9);
        assert_eq!(union_seconds(&mut []), 0.0);
    }

    #[test]
    fn renders_every_family() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["math", "2xx"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("bestofn_requests_total{domain=\"math\",status_class=\"2xx\"} 1"), "{text}");
        assert!(text.contains("bestofn_in_flight_requests 0"));
    }
}
