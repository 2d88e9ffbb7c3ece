//! Policy: the N and scorer a request gets, from config defaults, per-domain overrides and
//! per-request steering.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::adaptive::AdaptiveSettings;
use super::config::defaults;
use super::select::Selection;
use super::{Steering, SteeringSelection};
use crate::error::Error;
use crate::score::Scorer;

/// The most candidates one request may ask for.
pub const MAX_N: u32 = 64;

/// The policy bound on a number of candidates, checked in one place for config values and
/// request values alike: 1 to [`MAX_N`].
pub fn check_n(n: u32) -> Result<u32, String> {
    if (1..=MAX_N).contains(&n) { Ok(n) } else { Err(format!("must be between 1 and {MAX_N}, got {n}")) }
}

/// A scorer resolved at planning time: its name and the scorer itself, so a request never looks
/// its scorer up twice.
#[derive(Clone)]
pub struct ResolvedScorer {
    /// The configured name.
    pub name: String,
    /// The scorer.
    pub scorer: Arc<dyn Scorer>,
}

impl std::fmt::Debug for ResolvedScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl PartialEq for ResolvedScorer {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Serialize for ResolvedScorer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

/// RewardBench 2's domains as they apply to requests, plus `code` and `general`.
pub const DOMAINS: [&str; 7] = ["factuality", "precise_if", "math", "safety", "focus", "code", "general"];

/// The domain of a request that names none.
pub const DEFAULT_DOMAIN: &str = "general";

/// Overrides of the default policy for one domain.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DomainRule {
    /// Candidates to sample in this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Scorer for this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scorer: Option<String>,
    /// Sampling temperature sent upstream when the request sets none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// `max_tokens` sent upstream when the request sets neither it nor `max_completion_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Sampling deadline for this domain, instead of the policy's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Adaptive sampling on or off in this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<bool>,
    /// First adaptive wave in this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_wave: Option<u32>,
    /// Adaptive score threshold in this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_score: Option<f64>,
    /// Adaptive agreement confidence in this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Load-aware N threshold in this domain, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrade_at_queue_ms: Option<u64>,
    /// Load-aware N floor in this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_n: Option<u32>,
    /// How this domain's winner is picked.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub selection: Option<SelectionSettings>,
    /// Never choose an invalid candidate while a valid one exists, in this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_valid: Option<bool>,
}

/// A policy's or a domain's selection settings: the rule and each rule's parameters, so a
/// request that picks another rule gets that rule's configured parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SelectionSettings {
    /// The rule.
    pub selection: SteeringSelection,
    /// Soft selection's temperature.
    pub soft_temperature: f64,
    /// Candidates given to the fuser.
    pub fuse_top: u32,
    /// Show the fuser the candidates' scores.
    pub fuse_show_scores: bool,
}

impl Default for SelectionSettings {
    fn default() -> Self {
        SelectionSettings {
            selection: defaults::SELECTION,
            soft_temperature: defaults::SOFT_TEMPERATURE,
            fuse_top: defaults::FUSE_TOP,
            fuse_show_scores: defaults::FUSE_SHOW_SCORES,
        }
    }
}

impl SelectionSettings {
    /// The selection of a request that asks for `kind` (or for nothing).
    pub fn resolve(&self, kind: Option<SteeringSelection>) -> Selection {
        match kind.unwrap_or(self.selection) {
            SteeringSelection::Best => Selection::Best,
            SteeringSelection::Soft => Selection::Soft { temperature: self.soft_temperature },
            SteeringSelection::Fuse => Selection::Fuse { top: self.fuse_top, show_scores: self.fuse_show_scores },
        }
    }
}

/// The policy's adaptive-sampling defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AdaptivePolicy {
    /// On unless a domain or request turns it off.
    pub enabled: bool,
    /// First wave.
    pub first_wave: u32,
    /// Score threshold.
    pub accept_score: Option<f64>,
    /// Agreement confidence.
    pub confidence: Option<f64>,
}

impl Default for AdaptivePolicy {
    fn default() -> Self {
        AdaptivePolicy {
            enabled: defaults::ADAPTIVE,
            first_wave: defaults::FIRST_WAVE,
            accept_score: None,
            confidence: None,
        }
    }
}

/// What a request gets when its scorer fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScorerFailurePolicy {
    /// Fail the request with a 502.
    Fail,
    /// Answer with candidate 0, saying the scorer failed.
    First,
    /// Answer with a uniformly random candidate, saying the scorer failed.
    Random,
}

/// The validated policy: defaults plus per-domain overrides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// Default number of candidates.
    pub n: u32,
    /// Default scorer name.
    pub scorer: String,
    /// Per-domain overrides.
    pub domains: BTreeMap<String, DomainRule>,
    /// Sampling deadline per request.
    pub deadline: Option<std::time::Duration>,
    /// Fewest candidates worth selecting from.
    pub min_candidates: u32,
    /// What to answer when the scorer fails.
    pub on_scorer_failure: ScorerFailurePolicy,
    /// Adaptive sampling defaults.
    pub adaptive: AdaptivePolicy,
    /// Load-aware N: halve N while the expected upstream queue wait exceeds this.
    pub degrade_at_queue: Option<std::time::Duration>,
    /// Load-aware N floor.
    pub min_n: u32,
    /// How the winner is picked.
    pub selection: SelectionSettings,
    /// Never choose an invalid candidate while a valid one exists.
    pub require_valid: bool,
}

/// What one request will do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The request's domain.
    pub domain: String,
    /// Candidates to sample.
    pub n: u32,
    /// Choices to return, best first.
    pub k: u32,
    /// The scorer, resolved.
    pub scorer: ResolvedScorer,
    /// List every candidate in the response.
    pub return_candidates: bool,
    /// Temperature to send when the request sets none.
    pub temperature: Option<f64>,
    /// `max_tokens` to send when the request sets no limit.
    pub max_tokens: Option<u64>,
    /// Sampling deadline.
    pub deadline: Option<std::time::Duration>,
    /// Adaptive sampling, when on for this request.
    pub adaptive: Option<AdaptiveSettings>,
    /// N before load-aware degradation (the policy's, or the request's).
    pub n_requested: u32,
    /// N was lowered because the upstream queue is long.
    pub degraded: bool,
    /// Load-aware N threshold, when configured.
    pub degrade_at_queue: Option<std::time::Duration>,
    /// Load-aware N floor.
    pub min_n: u32,
    /// How the winner is picked.
    pub selection: Selection,
    /// Never choose an invalid candidate (tool calls that do not pass the request's `tools`,
    /// content that does not conform to its `response_format`) while a valid one exists.
    pub require_valid: bool,
}

impl Plan {
    /// Lowers N to `granted` under load (never below the client's `k` choices), keeping the
    /// adaptive first wave within it.
    pub fn degrade_to(&mut self, granted: u32) {
        let granted = granted.max(self.k).max(1);
        if granted < self.n {
            self.n = granted;
            self.degraded = true;
            if let Some(a) = self.adaptive.as_mut() {
                a.first_wave = a.first_wave.min(granted);
            }
        }
    }
}

impl Plan {
    /// Whether the domain's defaults add a field to `body` (the client left one out).
    pub fn adds_defaults(&self, body: &super::ClientBody) -> bool {
        (self.temperature.is_some() && !body.sets_temperature())
            || (self.max_tokens.is_some() && !body.sets_token_limit())
    }

    /// The upstream body with the domain's defaults filled in where the client left them out.
    pub fn upstream_body<'a>(
        &self,
        body: &'a super::ClientBody,
    ) -> Result<std::borrow::Cow<'a, serde_json::Map<String, serde_json::Value>>, Error> {
        if !self.adds_defaults(body) {
            return Ok(std::borrow::Cow::Borrowed(body.fields()?));
        }
        let mut fields = body.fields()?.clone();
        if !body.sets_temperature()
            && let Some(t) = self.temperature
        {
            fields.insert("temperature".into(), serde_json::json!(t));
        }
        if !body.sets_token_limit()
            && let Some(m) = self.max_tokens
        {
            fields.insert("max_tokens".into(), serde_json::json!(m));
        }
        Ok(std::borrow::Cow::Owned(fields))
    }
}

impl Policy {
    /// Resolves the plan for a request. `classified` is the classifier's domain, used when the
    /// request names none; `scorers` are the configured scorers by name.
    pub fn plan(
        &self,
        steering: &Steering,
        client_n: u32,
        classified: Option<&str>,
        scorers: &BTreeMap<String, Arc<dyn Scorer>>,
    ) -> Result<Plan, Error> {
        let domain = match &steering.domain {
            Some(d) if DOMAINS.contains(&d.as_str()) || self.domains.contains_key(d) => d.clone(),
            Some(d) => {
                return Err(Error::invalid(
                    "bestofn.domain",
                    format!("unknown domain '{d}'; expected one of {}", DOMAINS.join(", ")),
                ));
            }
            None => classified.unwrap_or(DEFAULT_DOMAIN).to_string(),
        };
        let rule = self.domains.get(&domain);
        let mut n = match steering.n {
            Some(n) => {
                check_n(n).map_err(|m| Error::invalid("bestofn.n", format!("'bestofn.n' (or x-bestofn-n) {m}")))?
            }
            None => rule.and_then(|r| r.n).unwrap_or(self.n),
        };
        if client_n > n {
            n = check_n(client_n).map_err(|_| {
                Error::invalid(
                    "n",
                    format!("'n' asks for {client_n} choices but at most {MAX_N} candidates are sampled"),
                )
            })?;
        }
        let resolve =
            |name: &str| scorers.get(name).map(|s| ResolvedScorer { name: name.to_string(), scorer: s.clone() });
        let scorer = match &steering.scorer {
            Some(s) => resolve(s).ok_or_else(|| Error::invalid("bestofn.scorer", format!("unknown scorer '{s}'")))?,
            None => {
                let name = rule.and_then(|r| r.scorer.as_deref()).unwrap_or(&self.scorer);
                // Config validation guarantees the policy's scorers exist.
                resolve(name).ok_or_else(|| Error::Internal(format!("the policy's scorer '{name}' is not built")))?
            }
        };
        let on = steering.adaptive.or(rule.and_then(|r| r.adaptive)).unwrap_or(self.adaptive.enabled);
        let adaptive = on.then(|| AdaptiveSettings {
            first_wave: rule.and_then(|r| r.first_wave).unwrap_or(self.adaptive.first_wave).clamp(1, n),
            accept_score: rule.and_then(|r| r.accept_score).or(self.adaptive.accept_score),
            confidence: rule.and_then(|r| r.confidence).or(self.adaptive.confidence),
        });
        Ok(Plan {
            adaptive,
            n_requested: n,
            degraded: false,
            degrade_at_queue: rule
                .and_then(|r| r.degrade_at_queue_ms)
                .map(std::time::Duration::from_millis)
                .or(self.degrade_at_queue),
            min_n: rule.and_then(|r| r.min_n).unwrap_or(self.min_n),
            selection: rule.and_then(|r| r.selection).unwrap_or(self.selection).resolve(steering.selection),
            require_valid: rule.and_then(|r| r.require_valid).unwrap_or(self.require_valid),
            n,
            k: client_n,
            scorer,
            return_candidates: steering.return_candidates,
            temperature: rule.and_then(|r| r.temperature),
            max_tokens: rule.and_then(|r| r.max_tokens),
            deadline: rule.and_then(|r| r.deadline_ms).map(std::time::Duration::from_millis).or(self.deadline),
            domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let mut domains = BTreeMap::new();
        domains.insert(
            "math".to_string(),
            DomainRule { n: Some(8), scorer: Some("verify".into()), temperature: Some(0.9), ..Default::default() },
        );
        Policy {
            n: 4,
            scorer: "rm".into(),
            domains,
            deadline: None,
            min_candidates: 1,
            on_scorer_failure: ScorerFailurePolicy::Fail,
            adaptive: AdaptivePolicy::default(),
            degrade_at_queue: None,
            min_n: 1,
            selection: SelectionSettings::default(),
            require_valid: false,
        }
    }

    fn known() -> BTreeMap<String, Arc<dyn Scorer>> {
        ["rm", "verify"]
            .into_iter()
            .map(|name| {
                let scorer: Arc<dyn Scorer> = Arc::new(crate::score::ConsensusScorer { name: name.into() });
                (name.to_string(), scorer)
            })
            .collect()
    }

    #[test]
    fn domain_overrides_then_steering_wins() {
        let p = policy();
        let plan = p.plan(&Steering::default(), 1, None, &known()).unwrap();
        assert_eq!((plan.n, plan.scorer.name.as_str(), plan.domain.as_str()), (4, "rm", "general"));
        let math = Steering { domain: Some("math".into()), ..Default::default() };
        let plan = p.plan(&math, 1, None, &known()).unwrap();
        assert_eq!((plan.n, plan.scorer.name.as_str()), (8, "verify"));
        let steer =
            Steering { domain: Some("math".into()), n: Some(2), scorer: Some("rm".into()), ..Default::default() };
        let plan = p.plan(&steer, 1, None, &known()).unwrap();
        assert_eq!((plan.n, plan.scorer.name.as_str()), (2, "rm"));
    }

    #[test]
    fn classified_domain_applies_its_rule_and_defaults() {
        let p = policy();
        let plan = p.plan(&Steering::default(), 1, Some("math"), &known()).unwrap();
        assert_eq!((plan.domain.as_str(), plan.n), ("math", 8));
        // The flags the request parser sets (bestofn's `openai` module, above this crate).
        let body_of = |text: &'static str| {
            let (temperature, limit) = (text.contains("\"temperature\""), text.contains("\"max_tokens\""));
            super::super::ClientBody::new(bytes::Bytes::from_static(text.as_bytes()), &[], temperature, limit)
        };
        let body = body_of(r#"{"messages":[{"role":"user","content":"x"}]}"#);
        assert!(plan.adds_defaults(&body));
        assert_eq!(plan.upstream_body(&body).unwrap()["temperature"], 0.9);
        let set = body_of(r#"{"messages":[{"role":"user","content":"x"}],"temperature":0.1}"#);
        assert!(!plan.adds_defaults(&set), "max_tokens has no default in this domain");
        assert_eq!(plan.upstream_body(&set).unwrap()["temperature"], 0.1, "the client's value wins");
        let explicit = Steering { domain: Some("code".into()), ..Default::default() };
        assert_eq!(p.plan(&explicit, 1, Some("math"), &known()).unwrap().domain, "code", "an explicit domain wins");
    }

    #[test]
    fn client_n_raises_n_within_bounds() {
        let p = policy();
        assert_eq!(p.plan(&Steering::default(), 6, None, &known()).unwrap().n, 6);
        assert_eq!(p.plan(&Steering::default(), 65, None, &known()).unwrap_err().param(), Some("n"));
        let too_many = Steering { n: Some(65), ..Default::default() };
        assert_eq!(p.plan(&too_many, 1, None, &known()).unwrap_err().param(), Some("bestofn.n"));
    }

    #[test]
    fn unknown_names_are_rejected() {
        let p = policy();
        let s = Steering { scorer: Some("nope".into()), ..Default::default() };
        assert_eq!(p.plan(&s, 1, None, &known()).unwrap_err().param(), Some("bestofn.scorer"));
        let d = Steering { domain: Some("poetry".into()), ..Default::default() };
        assert_eq!(p.plan(&d, 1, None, &known()).unwrap_err().param(), Some("bestofn.domain"));
    }
}
