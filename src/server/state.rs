//! Everything a running server shares across requests, built once from the config.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::backend::Secret;
use crate::bon::Engine;
use crate::config::{ClassifierConfig, Config};
use crate::error::Party;
use crate::metrics::Metrics;
use crate::record::Recorder;
use crate::remote::JudgeClassifier;
use crate::upstream::Upstream;
pub use crate::wiring::StartupError;
use crate::wiring::{ServerSetup, backend, build_scorers, http_client};

/// Shared state of the server.
pub struct AppState {
    /// The best-of-N engine.
    pub engine: Engine,
    /// Every exported metric.
    pub metrics: Arc<Metrics>,
    /// The traffic recorder, when configured.
    pub recorder: Option<Recorder>,
    /// The upstream, also used directly for `GET /v1/models`.
    pub upstream: Arc<Upstream>,
    /// A configured model list that replaces the upstream's.
    pub models: Option<Vec<String>>,
    /// Interval of SSE keep-alive comments while a best-of-N stream waits for its answer.
    pub heartbeat: Duration,
    /// Client API keys; empty means no authentication.
    pub api_keys: Vec<Secret>,
    /// Whether /metrics and /healthz need a key too.
    pub auth_ops_endpoints: bool,
    /// Permits for requests served at once.
    pub in_flight: Arc<Semaphore>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Time a client has to send its body.
    pub body_read_timeout: Duration,
    /// Time a client has to send its headers.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get after a shutdown signal.
    pub drain_timeout: Duration,
    /// Time a write to a client may make no progress.
    pub write_timeout: Duration,
    /// Time a connection with no request in flight stays open.
    pub idle_timeout: Duration,
}

impl AppState {
    /// True when the request carries a configured key (or none are configured). Every key is
    /// compared in constant time, so timing tells nothing about how much of a guess was right.
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        use subtle::ConstantTimeEq;
        if self.api_keys.is_empty() {
            return true;
        }
        let Some(presented) = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim) else {
            return false;
        };
        self.api_keys
            .iter()
            .fold(subtle::Choice::from(0), |found, key| found | key.expose().as_bytes().ct_eq(presented.as_bytes()))
            .into()
    }

    /// Builds the upstream client, the scorers and the engine.
    pub fn from_config(config: &Config) -> Result<AppState, StartupError> {
        let client = http_client(&config.upstream)?;
        let metrics = Arc::new(Metrics::new().map_err(|e| StartupError(format!("cannot register metrics: {e}")))?);

        let up = &config.upstream;
        let upstream_client = client.for_upstream();
        let upstream_backend = backend(
            &upstream_client,
            Party::Upstream,
            "upstream".into(),
            &up.base_urls,
            &up.transport,
            Some(&metrics),
        )?;
        // llama.cpp serves /tokenize at the server root, beside /v1.
        let roots: Vec<String> =
            up.base_urls.iter().map(|u| u.trim_end_matches('/').trim_end_matches("/v1").to_string()).collect();
        let tokenizer = backend(&client, Party::Upstream, "upstream tokenizer".into(), &roots, &up.transport, None)?;
        let upstream = Arc::new(
            Upstream::new(upstream_backend, up.sampling, up.hedge).with_usage_counts(up.usage_counts, Some(tokenizer)),
        );

        let setup = ServerSetup { metrics: &metrics, cache: config.score_cache.as_ref() };
        let scorers = build_scorers(&client, &config.scorers, Some(setup))?;

        let server = &config.server;
        let mut api_keys = server.api_keys.clone();
        if let Some(var) = &server.api_keys_env {
            let value = std::env::var(var)
                .map_err(|_| StartupError(format!("server: environment variable {var} (api_keys_env) is not set")))?;
            api_keys
                .extend(value.split(',').map(str::trim).filter(|k| !k.is_empty()).map(|k| Secret::new(k.to_string())));
        }
        let mut engine = Engine::new(upstream.clone(), scorers, config.policy());
        if let ClassifierConfig::Judge { base_url, model, transport } = &config.classifier {
            let judge = backend(
                &client,
                Party::Classifier,
                "classifier".into(),
                std::slice::from_ref(base_url),
                transport,
                Some(&metrics),
            )?;
            engine = engine.with_classifier(Arc::new(JudgeClassifier { backend: judge, model: model.clone() }));
        }
        if let Some(fuser) = crate::wiring::build_fuser(&client, config, Some(&metrics))? {
            engine = engine.with_fuser(fuser);
        }
        // Series that exist from the start, so dashboards show zeros rather than "no data".
        for domain in crate::bon::DOMAINS {
            metrics.candidates_saved.with_label_values(&[domain]);
            metrics.degraded.with_label_values(&[domain]);
            for outcome in ["better", "worse", "unscored", "failed"] {
                metrics.fuse.with_label_values(&[domain, outcome]);
            }
            for reason in ["accept_score", "agreement", "max_n", "deadline"] {
                metrics.adaptive_stops.with_label_values(&[domain, reason]);
            }
        }
        metrics.max_concurrent.set(server.max_concurrent_requests as i64);
        metrics.endpoint_ejections.with_label_values(&["upstream"]);
        for name in config.scorers.keys() {
            metrics.endpoint_ejections.with_label_values(&[format!("scorer {name}").as_str()]);
            metrics.cache_hits.with_label_values(&[name.as_str()]);
            metrics.cache_misses.with_label_values(&[name.as_str()]);
            metrics.scorer_failures.with_label_values(&[name.as_str()]);
        }
        let recorder = match &config.recorder {
            None => None,
            Some(r) => Some(
                Recorder::start(r, metrics.recorder_dropped.clone())
                    .map_err(|e| StartupError(format!("recorder: cannot open {}: {e}", r.path.display())))?,
            ),
        };
        Ok(AppState {
            engine,
            metrics,
            recorder,
            upstream,
            models: up.models.clone(),
            heartbeat: Duration::from_millis(server.heartbeat_interval_ms),
            api_keys,
            auth_ops_endpoints: server.auth_ops_endpoints,
            in_flight: Arc::new(Semaphore::new(server.max_concurrent_requests)),
            max_body_bytes: server.max_body_bytes,
            body_read_timeout: Duration::from_millis(server.body_read_timeout_ms),
            header_read_timeout: Duration::from_millis(server.header_read_timeout_ms),
            drain_timeout: Duration::from_millis(server.drain_timeout_ms),
            write_timeout: Duration::from_millis(server.write_timeout_ms),
            idle_timeout: Duration::from_millis(server.idle_timeout_ms),
        })
    }
}
