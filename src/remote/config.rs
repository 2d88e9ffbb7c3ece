//! `[scorers.NAME]`, `[score_cache]`, `[classifier]` and `[fuser]`: what scores, caches,
//! classifies and fuses candidates; read, then validated into the runtime configs.
//!
//! Sections that call a backend take the transport keys through
//! [`with_transport_keys!`](crate::backend::config::with_transport_keys); the kinds of
//! `[scorers.NAME]` and `[classifier]` that do are newtype variants of structs declared by it.
//! Every kind of `[scorers.NAME]` takes the keys every scorer takes (`include_reasoning`),
//! declared once by [`with_scorer_keys!`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{InputFormat, JudgeConfig, JudgeMode, RewardApi, RewardHttpConfig};
use crate::backend::TransportConfig;
use crate::backend::config::{RawTransport, with_transport_keys};
use crate::config::{ConfigError, Validator, check_url, defaults};
use crate::score::{ChatTemplate, Combine};

/// `[scorers.NAME]` as read, by `kind`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawScorer {
    /// A reward model over HTTP.
    RewardHttp(RawRewardHttp),
    /// An LLM judge.
    Judge(RawJudge),
    /// Agreement among the candidates.
    Consensus(RawConsensus),
    /// Rule-based checks.
    Verify(RawVerify),
    /// Several scorers combined.
    Ensemble(RawEnsemble),
    /// A weighted majority vote.
    WeightedVote(RawWeightedVote),
}

impl RawScorer {
    /// The keys every scorer takes, as read.
    fn scorer_keys(&self) -> RawScorerKeys {
        match self {
            RawScorer::RewardHttp(s) => s.into(),
            RawScorer::Judge(s) => s.into(),
            RawScorer::Consensus(s) => s.into(),
            RawScorer::Verify(s) => s.into(),
            RawScorer::Ensemble(s) => s.into(),
            RawScorer::WeightedVote(s) => s.into(),
        }
    }
}

/// Declares a `[scorers.NAME]` kind's struct with its own fields (each followed by a comma) and
/// then the keys every scorer takes, each an `Option`; `RawScorerKeys::from(&section)` takes them
/// out. `with_scorer_keys! { with_transport_keys! struct ... }` adds the transport keys too.
macro_rules! with_scorer_keys {
    // The keys every scorer takes, each with its doc comment: declared here once.
    (@keys [$($prefix:tt)*] [$($section:tt)*]) => {
        with_scorer_keys! { @declare [$($prefix)*] [$($section)*]
            /// Whether the scorer reads each candidate's reasoning before its answer.
            include_reasoning: bool,
        }
    };
    (@declare [] [$(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }]
        $($(#[$doc:meta])* $key:ident : $ty:ty,)*
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($own)*
            $($(#[$doc])* pub(crate) $key: Option<$ty>,)*
        }
        with_scorer_keys! { @from $name $($key)* }
    };
    (@declare [with_transport_keys!] [$(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }]
        $($(#[$doc:meta])* $key:ident : $ty:ty,)*
    ) => {
        with_transport_keys! {
            $(#[$meta])*
            $vis struct $name {
                $($own)*
                $($(#[$doc])* pub(crate) $key: Option<$ty>,)*
            }
        }
        with_scorer_keys! { @from $name $($key)* }
    };
    (@from $name:ident $($key:ident)*) => {
        impl From<&$name> for RawScorerKeys {
            fn from(section: &$name) -> Self {
                RawScorerKeys { $($key: ::std::clone::Clone::clone(&section.$key),)* }
            }
        }
    };
    (with_transport_keys! $($section:tt)*) => {
        with_scorer_keys! { @keys [with_transport_keys!] [$($section)*] }
    };
    ($($section:tt)*) => {
        with_scorer_keys! { @keys [] [$($section)*] }
    };
}

with_scorer_keys! {
    /// The keys every scorer takes, as read.
    #[derive(Debug, Default)]
    pub(crate) struct RawScorerKeys {}
}

with_scorer_keys! {
    with_transport_keys!
    /// `[scorers.NAME]` with `kind = "reward_http"`, as read.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawRewardHttp {
        api: RewardApi,
        url: Option<String>,
        urls: Option<Vec<String>>,
        model: Option<String>,
        chat_template: Option<ChatTemplate>,
        input_format: Option<InputFormat>,
        label_index: Option<usize>,
        label: Option<String>,
    }
}

with_scorer_keys! {
    with_transport_keys!
    /// `[scorers.NAME]` with `kind = "judge"`, as read.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawJudge {
        base_url: Option<String>,
        base_urls: Option<Vec<String>>,
        model: Option<String>,
        mode: Option<JudgeMode>,
        #[serde(alias = "max_concurrency")]
        concurrency: Option<usize>,
        seed: Option<u64>,
        max_tokens: Option<u32>,
        logprobs: Option<bool>,
    }
}

with_scorer_keys! {
    /// `[scorers.NAME]` with `kind = "consensus"`, as read.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawConsensus {}
}

with_scorer_keys! {
    /// `[scorers.NAME]` with `kind = "verify"`, as read.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawVerify {
        pattern: Option<String>,
    }
}

with_scorer_keys! {
    /// `[scorers.NAME]` with `kind = "ensemble"`, as read.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawEnsemble {
        members: Vec<String>,
        combine: Option<Combine>,
        weights: Option<Vec<f64>>,
    }
}

with_scorer_keys! {
    /// `[scorers.NAME]` with `kind = "weighted_vote"`, as read.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawWeightedVote {
        member: String,
        temperature: Option<f64>,
    }
}

/// `[score_cache]` as read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScoreCache {
    max_entries: Option<u64>,
    ttl_ms: Option<u64>,
}

/// `[classifier]` as read, by `kind`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawClassifier {
    /// Keyword and pattern rules.
    Rules,
    /// An LLM names the domain.
    Judge(RawJudgeClassifier),
}

with_transport_keys! {
    /// `[classifier]` with `kind = "judge"`, as read.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawJudgeClassifier {
        base_url: Option<String>,
        model: Option<String>,
    }
}

with_transport_keys! {
    /// `[fuser]` as read.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct RawFuser {
        base_url: Option<String>,
        model: Option<String>,
        max_tokens: Option<u32>,
        temperature: Option<f64>,
    }
}

/// `[scorers.NAME]`: its kind's settings, and the keys every scorer takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScorerConfig {
    /// The kind and its own settings.
    #[serde(flatten)]
    pub kind: ScorerKind,
    /// The scorer reads each candidate's reasoning (its rendering with reasoning, see
    /// [`crate::score::IncludeReasoning`]).
    pub include_reasoning: bool,
}

impl ScorerConfig {
    /// A scorer of `kind` with every key every scorer takes at its default.
    pub fn of(kind: ScorerKind) -> ScorerConfig {
        ScorerConfig { kind, include_reasoning: defaults::INCLUDE_REASONING }
    }
}

/// A `[scorers.NAME]`'s kind, with the kind's own settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScorerKind {
    /// A reward model served over HTTP.
    RewardHttp(RewardHttpConfig),
    /// An OpenAI-compatible LLM as judge.
    Judge(JudgeConfig),
    /// Agreement among the candidates (majority vote on final answers, else token F1).
    Consensus,
    /// Rule-based checks: stated constraints, response_format, a regex.
    Verify {
        /// A regex good replies match.
        #[serde(skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    /// Several scorers combined.
    Ensemble(EnsembleConfig),
    /// Weighted majority vote over final answers, weighed by a member scorer.
    WeightedVote {
        /// The member whose rewards weigh the votes.
        member: String,
        /// Softmax temperature of the member's rewards.
        temperature: f64,
    },
}

/// `[scorers.NAME]` with `kind = "ensemble"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnsembleConfig {
    /// Member scorer names, in priority order.
    pub members: Vec<String>,
    /// Lexicographic or weighted z-scores.
    pub combine: Combine,
    /// One weight per member.
    pub weights: Vec<f64>,
}

/// `[score_cache]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreCacheConfig {
    /// Scores kept at most.
    pub max_entries: u64,
    /// How long a score is kept.
    pub ttl_ms: u64,
}

/// `[classifier]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClassifierConfig {
    /// Keyword and pattern rules on the last user message (microseconds, no calls).
    Rules,
    /// An OpenAI-compatible LLM names the domain; the rules answer when it fails.
    Judge {
        /// Base URL of the judge (default: the first upstream base URL).
        base_url: String,
        /// The `model` sent.
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// Credentials, time limit, retries, ejection.
        #[serde(flatten)]
        transport: TransportConfig,
    },
}

/// `[fuser]`: the chat model that writes one answer from the best candidates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FuserConfig {
    /// Base URL (default: the first upstream base URL).
    pub base_url: String,
    /// The `model` sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `max_tokens` of the fused answer.
    pub max_tokens: u32,
    /// Sampling temperature.
    pub temperature: f64,
    /// Credentials, time limit, retries, ejection.
    #[serde(flatten)]
    pub transport: TransportConfig,
}

impl Validator<'_> {
    /// Validates the `[scorers.*]` tables, adds the built-in scorers and checks that combining
    /// scorers name existing members; `upstream_urls` are the judge's default base URLs.
    pub(crate) fn scorers(
        &self,
        raw: BTreeMap<String, RawScorer>,
        upstream_urls: &[String],
    ) -> Result<BTreeMap<String, ScorerConfig>, ConfigError> {
        let mut scorers = BTreeMap::new();
        for (name, scorer) in raw {
            let prefix = format!("scorers.{name}");
            let keys = scorer.scorer_keys();
            let kind = match scorer {
                RawScorer::RewardHttp(r) => {
                    let transport = RawTransport::from(&r);
                    let input_format = r.input_format.unwrap_or(defaults::INPUT_FORMAT);
                    if input_format == InputFormat::Messages
                        && !matches!(r.api, RewardApi::VllmClassify | RewardApi::VllmPooling)
                    {
                        return Err(self.invalid(
                            &format!("{prefix}.input_format"),
                            "\"messages\" is only for the vllm_classify and vllm_pooling APIs",
                        ));
                    }
                    ScorerKind::RewardHttp(RewardHttpConfig {
                        api: r.api,
                        urls: self.urls(&format!("{prefix}.url"), r.url, r.urls)?,
                        model: r.model,
                        chat_template: r.chat_template.unwrap_or(defaults::CHAT_TEMPLATE),
                        input_format,
                        label_index: r.label_index.unwrap_or(defaults::LABEL_INDEX),
                        label: r.label,
                        transport: self.transport(
                            &prefix,
                            transport,
                            defaults::SCORER_TIMEOUT_MS,
                            defaults::MAX_RETRIES,
                        )?,
                    })
                }
                RawScorer::Judge(j) => {
                    let transport = RawTransport::from(&j);
                    let base_urls = match (j.base_url, j.base_urls) {
                        (None, None) => upstream_urls.to_vec(),
                        (one, many) => self.urls(&format!("{prefix}.base_url"), one, many)?,
                    };
                    ScorerKind::Judge(JudgeConfig {
                        base_urls,
                        model: j.model,
                        mode: j.mode.unwrap_or(defaults::JUDGE_MODE),
                        concurrency: self.positive(
                            &format!("{prefix}.concurrency"),
                            j.concurrency.map(|c| c as u64),
                            defaults::JUDGE_CONCURRENCY,
                        )? as usize,
                        seed: j.seed.unwrap_or(defaults::JUDGE_SEED),
                        max_tokens: self.positive(
                            &format!("{prefix}.max_tokens"),
                            j.max_tokens.map(u64::from),
                            defaults::JUDGE_MAX_TOKENS,
                        )? as u32,
                        logprobs: j.logprobs.unwrap_or(defaults::JUDGE_LOGPROBS),
                        transport: self.transport(
                            &prefix,
                            transport,
                            defaults::SCORER_TIMEOUT_MS,
                            defaults::MAX_RETRIES,
                        )?,
                    })
                }
                RawScorer::Consensus(_) => ScorerKind::Consensus,
                RawScorer::Verify(RawVerify { pattern, .. }) => {
                    if let Some(p) = &pattern {
                        regex::Regex::new(p)
                            .map_err(|e| self.invalid(&format!("{prefix}.pattern"), format!("not a regex: {e}")))?;
                    }
                    ScorerKind::Verify { pattern }
                }
                RawScorer::WeightedVote(RawWeightedVote { member, temperature, .. }) => {
                    let temperature = temperature.unwrap_or(defaults::VOTE_TEMPERATURE);
                    if !(temperature > 0.0 && temperature.is_finite()) {
                        return Err(self.invalid(
                            &format!("{prefix}.temperature"),
                            format!("must be greater than 0, got {temperature}"),
                        ));
                    }
                    ScorerKind::WeightedVote { member, temperature }
                }
                RawScorer::Ensemble(RawEnsemble { members, combine, weights, .. }) => {
                    if members.is_empty() {
                        return Err(self.invalid(&format!("{prefix}.members"), "must name at least one scorer"));
                    }
                    let weights = weights.unwrap_or_else(|| vec![1.0; members.len()]);
                    if weights.len() != members.len() || weights.iter().any(|w| !w.is_finite()) {
                        return Err(self.invalid(&format!("{prefix}.weights"), "needs one finite weight per member"));
                    }
                    ScorerKind::Ensemble(EnsembleConfig {
                        members,
                        combine: combine.unwrap_or(defaults::COMBINE),
                        weights,
                    })
                }
            };
            let include_reasoning = keys.include_reasoning.unwrap_or(defaults::INCLUDE_REASONING);
            scorers.insert(name, ScorerConfig { kind, include_reasoning });
        }
        // Scorers that need no server are always there under their kind's name.
        scorers.entry("consensus".to_string()).or_insert(ScorerConfig::of(ScorerKind::Consensus));
        scorers.entry("verify".to_string()).or_insert(ScorerConfig::of(ScorerKind::Verify { pattern: None }));
        for (name, scorer) in &scorers {
            if let ScorerKind::WeightedVote { member, .. } = &scorer.kind {
                match scorers.get(member).map(|s| &s.kind) {
                    None => {
                        return Err(
                            self.invalid(&format!("scorers.{name}.member"), format!("no scorer named '{member}'"))
                        );
                    }
                    Some(ScorerKind::WeightedVote { .. }) => {
                        return Err(self.invalid(
                            &format!("scorers.{name}.member"),
                            format!("'{member}' is a weighted_vote; the member must not be"),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let ScorerKind::Ensemble(e) = &scorer.kind {
                for m in &e.members {
                    match scorers.get(m).map(|s| &s.kind) {
                        None => {
                            return Err(
                                self.invalid(&format!("scorers.{name}.members"), format!("no scorer named '{m}'"))
                            );
                        }
                        Some(ScorerKind::Ensemble(_) | ScorerKind::WeightedVote { .. }) => {
                            return Err(self.invalid(
                                &format!("scorers.{name}.members"),
                                format!("'{m}' combines other scorers; members must not"),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok(scorers)
    }

    /// Validates `[score_cache]`, when present.
    pub(crate) fn score_cache(&self, raw: Option<RawScoreCache>) -> Result<Option<ScoreCacheConfig>, ConfigError> {
        let Some(c) = raw else { return Ok(None) };
        Ok(Some(ScoreCacheConfig {
            max_entries: self.positive("score_cache.max_entries", c.max_entries, defaults::SCORE_CACHE_MAX_ENTRIES)?,
            ttl_ms: self.positive("score_cache.ttl_ms", c.ttl_ms, defaults::SCORE_CACHE_TTL_MS)?,
        }))
    }

    /// Validates `[classifier]` (the rules when absent); `upstream_url` is the judge's default.
    pub(crate) fn classifier(
        &self,
        raw: Option<RawClassifier>,
        upstream_url: &str,
    ) -> Result<ClassifierConfig, ConfigError> {
        let j = match raw {
            None | Some(RawClassifier::Rules) => return Ok(ClassifierConfig::Rules),
            Some(RawClassifier::Judge(j)) => j,
        };
        let transport = RawTransport::from(&j);
        let base_url = match j.base_url {
            Some(u) => {
                check_url(&u).map_err(|m| self.invalid("classifier.base_url", m))?;
                u
            }
            None => upstream_url.to_string(),
        };
        Ok(ClassifierConfig::Judge {
            base_url,
            model: j.model,
            transport: self.transport(
                "classifier",
                transport,
                defaults::CLASSIFIER_TIMEOUT_MS,
                defaults::CLASSIFIER_MAX_RETRIES,
            )?,
        })
    }

    /// Validates `[fuser]`, when present; `upstream_url` is its default base URL.
    pub(crate) fn fuser(&self, raw: Option<RawFuser>, upstream_url: &str) -> Result<Option<FuserConfig>, ConfigError> {
        let Some(f) = raw else { return Ok(None) };
        let transport = RawTransport::from(&f);
        let base_url = match f.base_url {
            Some(u) => {
                check_url(&u).map_err(|m| self.invalid("fuser.base_url", m))?;
                u
            }
            None => upstream_url.to_string(),
        };
        let temperature = f.temperature.unwrap_or(defaults::FUSER_TEMPERATURE);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(self.invalid("fuser.temperature", format!("must be between 0 and 2, got {temperature}")));
        }
        Ok(Some(FuserConfig {
            base_url,
            model: f.model,
            max_tokens: self.positive("fuser.max_tokens", f.max_tokens.map(u64::from), defaults::FUSER_MAX_TOKENS)?
                as u32,
            temperature,
            transport: self.transport("fuser", transport, defaults::FUSER_TIMEOUT_MS, defaults::FUSER_MAX_RETRIES)?,
        }))
    }
}
