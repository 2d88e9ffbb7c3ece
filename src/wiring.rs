//! Building runtime parts from validated config, shared by the server and the evaluator so both
//! score through the very same scorer objects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::TransportConfig;
use crate::backend::{Backend, ClientSettings, EjectionPolicy, EndpointPool, HttpClient, RetryPolicy, Secret};
use crate::config::{ScoreCacheConfig, ScorerConfig, ScorerKind, UpstreamConfig};
use crate::error::Party;
use crate::metrics::Metrics;
use crate::remote::{JudgeScorer, RewardHttpScorer};
use crate::score::{
    CachedScorer, ConsensusScorer, EnsembleScorer, IncludeReasoning, Scorer, VerifyScorer, WeightedVoteScorer,
};

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

/// The one pooled, keep-alive HTTP client of a process, built from its `[upstream]` section
/// (HTTP/2 to the upstream, the largest answer read from any backend); every backend of the
/// process calls through it.
pub fn http_client(upstream: &UpstreamConfig) -> Result<HttpClient, StartupError> {
    let settings = ClientSettings { upstream_http2: upstream.http2, max_response_bytes: upstream.max_response_bytes };
    HttpClient::new(settings).map_err(|e| StartupError(format!("cannot build the HTTP client: {e}")))
}

/// The fuser of `selection = "fuse"` from `[fuser]`, when configured: the proxy's and `eval
/// replay`'s.
pub fn build_fuser(
    client: &HttpClient,
    config: &crate::config::Config,
    metrics: Option<&Metrics>,
) -> Result<Option<std::sync::Arc<dyn crate::bon::Fuser>>, StartupError> {
    let Some(f) = &config.fuser else { return Ok(None) };
    let fuser = backend(
        client,
        crate::error::Party::Scorer,
        "fuser".into(),
        std::slice::from_ref(&f.base_url),
        &f.transport,
        metrics,
    )?;
    Ok(Some(std::sync::Arc::new(crate::remote::ChatFuser {
        backend: fuser,
        model: f.model.clone(),
        max_tokens: f.max_tokens,
        temperature: f.temperature,
    })))
}

/// How errors name a backend to the client: a scorer by its configured name (`scorer rm`), the
/// others by their role (`the upstream`, `the fuser`, `the classifier`).
pub fn party_name(name: &str) -> String {
    if name.starts_with("scorer ") { name.to_string() } else { format!("the {name}") }
}

/// A backend over `urls` with the transport settings of its config section; `name` is its
/// metric label and log name (`upstream`, `scorer rm`), and errors name it by [`party_name`].
pub fn backend(
    client: &HttpClient,
    party: Party,
    name: String,
    urls: &[String],
    t: &TransportConfig,
    metrics: Option<&Metrics>,
) -> Result<Backend, StartupError> {
    let ejections = metrics.map(|m| m.endpoint_ejections.with_label_values(&[name.as_str()]));
    Ok(Backend {
        party,
        client: client.clone(),
        api_key: secret_from_env(t.api_key_env.as_deref(), &name)?,
        pool: EndpointPool::new(
            urls,
            EjectionPolicy {
                after_failures: t.eject_after_failures,
                cooldown: Duration::from_millis(t.eject_cooldown_ms),
            },
        )
        .counting_ejections(ejections)
        .limited(t.max_in_flight, metrics.map(|m| &m.pool))
        .assuming_calls_take(t.typical_call_ms.map(Duration::from_millis)),
        party_name: party_name(&name),
        name,
        timeout: Duration::from_millis(t.timeout_ms),
        retry: RetryPolicy {
            max_retries: t.max_retries,
            backoff_base: Duration::from_millis(t.retry_backoff_ms),
            backoff_max: Duration::from_millis(t.retry_backoff_max_ms),
        },
    })
}

/// The scorer named `name` in the config file at `path`, built as the server builds it
/// (ensembles included, no score cache): what every `eval` command scores with.
pub fn load_scorer(path: &std::path::Path, name: &str) -> Result<Arc<dyn Scorer>, StartupError> {
    let config = crate::config::Config::from_file(path).map_err(|e| StartupError(e.to_string()))?;
    if !config.scorers.contains_key(name) {
        let known: Vec<&str> = config.scorers.keys().map(String::as_str).collect();
        return Err(StartupError(format!(
            "{}: no scorer named '{name}' (configured: {})",
            path.display(),
            known.join(", ")
        )));
    }
    let mut scorers = build_scorers(&http_client(&config.upstream)?, &config.scorers, None)?;
    scorers.remove(name).ok_or_else(|| StartupError(format!("{}: scorer '{name}' was not built", path.display())))
}

/// What a running server adds to its scorers: metrics (ejections, cache hits) and the score
/// cache, when configured. Offline evaluation builds scorers without it.
pub struct ServerSetup<'a> {
    /// Where ejections and cache hits are counted.
    pub metrics: &'a Metrics,
    /// The score cache, when configured.
    pub cache: Option<&'a ScoreCacheConfig>,
}

fn build_with(
    client: &HttpClient,
    name: &str,
    config: &ScorerConfig,
    built: &BTreeMap<String, Arc<dyn Scorer>>,
    metrics: Option<&Metrics>,
) -> Result<Arc<dyn Scorer>, StartupError> {
    Ok(match &config.kind {
        ScorerKind::RewardHttp(c) => Arc::new(RewardHttpScorer {
            name: name.to_string(),
            backend: backend(client, Party::Scorer, format!("scorer {name}"), &c.urls, &c.transport, metrics)?,
            config: c.clone(),
        }),
        ScorerKind::Judge(c) => Arc::new(JudgeScorer {
            name: name.to_string(),
            backend: backend(client, Party::Scorer, format!("scorer {name}"), &c.base_urls, &c.transport, metrics)?,
            config: c.clone(),
        }),
        ScorerKind::Consensus => Arc::new(ConsensusScorer { name: name.to_string() }),
        ScorerKind::Verify { pattern } => Arc::new(VerifyScorer {
            name: name.to_string(),
            pattern: match pattern {
                Some(p) => {
                    Some(regex::Regex::new(p).map_err(|e| StartupError(format!("scorer {name}: bad pattern: {e}")))?)
                }
                None => None,
            },
        }),
        ScorerKind::WeightedVote { member, temperature } => Arc::new(WeightedVoteScorer {
            name: name.to_string(),
            member: built
                .get(member)
                .cloned()
                .ok_or_else(|| StartupError(format!("scorer {name}: member '{member}' is not built")))?,
            temperature: *temperature,
        }),
        ScorerKind::Ensemble(e) => Arc::new(EnsembleScorer {
            name: name.to_string(),
            members: e
                .members
                .iter()
                .map(|m| {
                    built
                        .get(m)
                        .cloned()
                        .ok_or_else(|| StartupError(format!("scorer {name}: member '{m}' is not built")))
                })
                .collect::<Result<_, _>>()?,
            combine: e.combine,
            weights: e.weights.clone(),
        }),
    })
}

/// `scorer` as configured by `config`'s keys every scorer takes: reading each candidate's
/// reasoning when `include_reasoning` is set.
fn reading_reasoning(config: &ScorerConfig, scorer: Arc<dyn Scorer>) -> Arc<dyn Scorer> {
    if config.include_reasoning { Arc::new(IncludeReasoning { inner: scorer }) } else { scorer }
}

/// Every configured scorer, by name: plain scorers first (pointwise ones behind the score cache
/// when one is configured), then ensembles and weighted votes over them.
pub fn build_scorers(
    client: &HttpClient,
    configs: &BTreeMap<String, ScorerConfig>,
    setup: Option<ServerSetup<'_>>,
) -> Result<BTreeMap<String, Arc<dyn Scorer>>, StartupError> {
    let mut built: BTreeMap<String, Arc<dyn Scorer>> = BTreeMap::new();
    let combines = |c: &ScorerConfig| matches!(c.kind, ScorerKind::Ensemble(_) | ScorerKind::WeightedVote { .. });
    for (name, c) in configs.iter().filter(|(_, c)| !combines(c)) {
        let metrics = setup.as_ref().map(|s| s.metrics);
        let mut scorer = build_with(client, name, c, &built, metrics)?;
        if let Some(ServerSetup { metrics, cache: Some(cache) }) = &setup
            && scorer.pointwise()
        {
            scorer = Arc::new(CachedScorer::new(
                scorer,
                cache.max_entries,
                Duration::from_millis(cache.ttl_ms),
                metrics.cache_hits.with_label_values(&[name.as_str()]),
                metrics.cache_misses.with_label_values(&[name.as_str()]),
            ));
        }
        // Outside the cache: cached scores are keyed by what the scorer read.
        built.insert(name.clone(), reading_reasoning(c, scorer));
    }
    // Ensembles next (their members are plain), then weighted votes (their member may be an ensemble).
    for pass in [true, false] {
        for (name, c) in
            configs.iter().filter(|(_, c)| matches!(c.kind, ScorerKind::Ensemble(_)) == pass && combines(c))
        {
            let scorer = reading_reasoning(c, build_with(client, name, c, &built, None)?);
            built.insert(name.clone(), scorer);
        }
    }
    Ok(built)
}
