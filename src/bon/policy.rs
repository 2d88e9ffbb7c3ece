//! Policy: the N and scorer a request gets, from config defaults, per-domain overrides and
//! per-request steering.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Steering;
use crate::error::Error;

/// The most candidates one request may ask for.
pub const MAX_N: u32 = 64;

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
}

/// What one request will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The request's domain.
    pub domain: String,
    /// Candidates to sample.
    pub n: u32,
    /// Choices to return, best first.
    pub k: u32,
    /// Scorer name.
    pub scorer: String,
    /// List every candidate in the response.
    pub return_candidates: bool,
}

impl Policy {
    /// Resolves the plan for a request. `has_scorer` says whether a scorer name is configured.
    pub fn plan(&self, steering: &Steering, client_n: u32, has_scorer: impl Fn(&str) -> bool) -> Result<Plan, Error> {
        let domain = match &steering.domain {
            Some(d) if DOMAINS.contains(&d.as_str()) || self.domains.contains_key(d) => d.clone(),
            Some(d) => {
                return Err(Error::invalid(
                    "bestofn.domain",
                    format!("unknown domain '{d}'; expected one of {}", DOMAINS.join(", ")),
                ));
            }
            None => DEFAULT_DOMAIN.to_string(),
        };
        let rule = self.domains.get(&domain);
        let mut n = match steering.n {
            Some(n) if n > MAX_N => {
                return Err(Error::invalid(
                    "bestofn.n",
                    format!("'bestofn.n' (or x-bestofn-n) must be at most {MAX_N}, got {n}"),
                ));
            }
            Some(n) => n,
            None => rule.and_then(|r| r.n).unwrap_or(self.n),
        };
        if client_n > n {
            if client_n > MAX_N {
                return Err(Error::invalid(
                    "n",
                    format!("'n' asks for {client_n} choices but at most {MAX_N} candidates are sampled"),
                ));
            }
            n = client_n;
        }
        let scorer = match &steering.scorer {
            Some(s) if has_scorer(s) => s.clone(),
            Some(s) => return Err(Error::invalid("bestofn.scorer", format!("unknown scorer '{s}'"))),
            None => rule
                .and_then(|r| r.scorer.clone())
                .unwrap_or_else(|| self.scorer.clone()),
        };
        Ok(Plan {
            domain,
            n,
            k: client_n,
            scorer,
            return_candidates: steering.return_candidates,
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
            DomainRule {
                n: Some(8),
                scorer: Some("verify".into()),
            },
        );
        Policy {
            n: 4,
            scorer: "rm".into(),
            domains,
            deadline: None,
            min_candidates: 1,
            on_scorer_failure: ScorerFailurePolicy::Fail,
        }
    }

    fn known(s: &str) -> bool {
        s == "rm" || s == "verify"
    }

    #[test]
    fn domain_overrides_then_steering_wins() {
        let p = policy();
        let plan = p.plan(&Steering::default(), 1, known).unwrap();
        assert_eq!(
            (plan.n, plan.scorer.as_str(), plan.domain.as_str()),
            (4, "rm", "general")
        );
        let math = Steering {
            domain: Some("math".into()),
            ..Default::default()
        };
        let plan = p.plan(&math, 1, known).unwrap();
        assert_eq!((plan.n, plan.scorer.as_str()), (8, "verify"));
        let steer = Steering {
            domain: Some("math".into()),
            n: Some(2),
            scorer: Some("rm".into()),
            ..Default::default()
        };
        let plan = p.plan(&steer, 1, known).unwrap();
        assert_eq!((plan.n, plan.scorer.as_str()), (2, "rm"));
    }

    #[test]
    fn client_n_raises_n_within_bounds() {
        let p = policy();
        assert_eq!(p.plan(&Steering::default(), 6, known).unwrap().n, 6);
        assert_eq!(p.plan(&Steering::default(), 65, known).unwrap_err().param(), Some("n"));
        let too_many = Steering {
            n: Some(65),
            ..Default::default()
        };
        assert_eq!(p.plan(&too_many, 1, known).unwrap_err().param(), Some("bestofn.n"));
    }

    #[test]
    fn unknown_names_are_rejected() {
        let p = policy();
        let s = Steering {
            scorer: Some("nope".into()),
            ..Default::default()
        };
        assert_eq!(p.plan(&s, 1, known).unwrap_err().param(), Some("bestofn.scorer"));
        let d = Steering {
            domain: Some("poetry".into()),
            ..Default::default()
        };
        assert_eq!(p.plan(&d, 1, known).unwrap_err().param(), Some("bestofn.domain"));
    }
}
