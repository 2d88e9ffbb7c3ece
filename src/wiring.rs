//! Building runtime parts from validated config, shared by the server and the evaluator so both
//! score through the very same scorer objects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, EjectionPolicy, EndpointPool, RetryPolicy, Secret};
use crate::config::{ScorerConfig, TransportConfig};
use crate::score::{RewardHttpScorer, Scorer};

/// A startup failure: a missing environment variable or an HTTP client that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// Reads a secret from the environment variable named in config.
pub fn secret_from_env(var: Option<&str>, owner: &str) -> Result<Option<Secret>, StartupError> {
    match var {
        None => Ok(None),
        Some(var) => std::env::var(var)
            .map(|v| Some(Secret::new(v)))
            .map_err(|_| StartupError(format!("{owner}: environment variable {var} (api_key_env) is not set"))),
    }
}

/// The one pooled, keep-alive HTTP client of a process.
pub fn http_client() -> Result<reqwest::Client, StartupError> {
    crate::backend::install_crypto_provider();
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| StartupError(format!("cannot build the HTTP client: {e}")))
}

/// A backend over `urls` with the transport settings of its config section.
pub fn backend(
    client: &reqwest::Client,
    name: String,
    urls: &[String],
    t: &TransportConfig,
) -> Result<Backend, StartupError> {
    Ok(Backend {
        client: client.clone(),
        api_key: secret_from_env(t.api_key_env.as_deref(), &name)?,
        pool: EndpointPool::new(
            urls,
            EjectionPolicy {
                after_failures: t.eject_after_failures,
                cooldown: Duration::from_millis(t.eject_cooldown_ms),
            },
        ),
        name,
        timeout: Duration::from_millis(t.timeout_ms),
        retry: RetryPolicy {
            max_retries: t.max_retries,
            backoff_base: Duration::from_millis(t.retry_backoff_ms),
            backoff_max: Duration::from_millis(t.retry_backoff_max_ms),
        },
    })
}

/// One scorer from its config section.
pub fn build_scorer(
    client: &reqwest::Client,
    name: &str,
    config: &ScorerConfig,
) -> Result<Arc<dyn Scorer>, StartupError> {
    Ok(match config {
        ScorerConfig::RewardHttp(c) => Arc::new(RewardHttpScorer {
            name: name.to_string(),
            api: c.api,
            model: c.model.clone(),
            template: c.chat_template,
            input_format: c.input_format,
            label_index: c.label_index,
            label: c.label.clone(),
            backend: backend(client, format!("scorer {name}"), &c.urls, &c.transport)?,
        }),
    })
}

/// Every configured scorer, by name.
pub fn build_scorers(
    client: &reqwest::Client,
    configs: &BTreeMap<String, ScorerConfig>,
) -> Result<BTreeMap<String, Arc<dyn Scorer>>, StartupError> {
    configs.iter().map(|(name, c)| Ok((name.clone(), build_scorer(client, name, c)?))).collect()
}
