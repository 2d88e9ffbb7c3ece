//! Everything a running server shares across requests, built once from the config.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::bon::Engine;
use crate::config::{Config, ScorerConfig};
use crate::score::{RewardHttpScorer, Scorer};
use crate::upstream::Upstream;

/// Shared state of the server.
pub struct AppState {
    /// The best-of-N engine.
    pub engine: Engine,
    /// The upstream, also used directly for `GET /v1/models`.
    pub upstream: Arc<Upstream>,
    /// A configured model list that replaces the upstream's.
    pub models: Option<Vec<String>>,
    /// Interval of SSE keep-alive comments while a best-of-N stream waits for its answer.
    pub heartbeat: Duration,
}

/// A startup failure: a missing environment variable or an HTTP client that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(String);

fn secret_from_env(var: Option<&str>, owner: &str) -> Result<Option<String>, StartupError> {
    match var {
        None => Ok(None),
        Some(var) => std::env::var(var)
            .map(Some)
            .map_err(|_| StartupError(format!("{owner}: environment variable {var} (api_key_env) is not set"))),
    }
}

fn http_client() -> Result<reqwest::Client, StartupError> {
    crate::backend::install_crypto_provider();
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| StartupError(format!("cannot build the HTTP client: {e}")))
}

impl AppState {
    /// Builds the upstream client, the scorers and the engine.
    pub fn from_config(config: &Config) -> Result<AppState, StartupError> {
        let client = http_client()?;
        let up = &config.upstream;
        let backend = Backend {
            client: client.clone(),
            name: format!("upstream {}", up.base_url),
            api_key: secret_from_env(up.api_key_env.as_deref(), "upstream")?,
            timeout: Duration::from_millis(up.timeout_ms),
            max_retries: up.max_retries,
        };
        let upstream = Arc::new(Upstream::new(backend, &up.base_url, up.sampling));

        let mut scorers: BTreeMap<String, Arc<dyn Scorer>> = BTreeMap::new();
        for (name, scorer) in &config.scorers {
            let built: Arc<dyn Scorer> = match scorer {
                ScorerConfig::RewardHttp(c) => Arc::new(RewardHttpScorer {
                    name: name.clone(),
                    api: c.api,
                    url: c.url.clone(),
                    model: c.model.clone(),
                    template: c.chat_template,
                    input_format: c.input_format,
                    label_index: c.label_index,
                    label: c.label.clone(),
                    backend: Backend {
                        client: client.clone(),
                        name: format!("scorer {name}"),
                        api_key: secret_from_env(c.api_key_env.as_deref(), &format!("scorer {name}"))?,
                        timeout: Duration::from_millis(c.timeout_ms),
                        max_retries: c.max_retries,
                    },
                }),
            };
            scorers.insert(name.clone(), built);
        }
        let engine = Engine::new(upstream.clone(), scorers, config.policy());
        Ok(AppState {
            engine,
            upstream,
            models: up.models.clone(),
            heartbeat: Duration::from_millis(config.server.heartbeat_interval_ms),
        })
    }
}
