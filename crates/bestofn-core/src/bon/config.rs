//! `[policy]` and `[domains.NAME]`: the policy keys, declared once by [`with_policy_keys!`] for
//! the global policy, every domain and the tables `bestofn eval tune` writes, and their
//! validation into the runtime [`PolicyConfig`] and [`DomainRule`]s.
//!
//! The keys are appended to each section's own struct by a macro rather than read through
//! `serde(flatten)`: serde does not support `flatten` beside `deny_unknown_fields` (it buffers the
//! table and loses where an unknown key is), while inline fields let serde name the key and its
//! line itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::adaptive::AdaptiveSettings;
use super::policy::{AdaptivePolicy, DOMAINS, DomainRule, ScorerFailurePolicy, SelectionSettings, check_n};

/// Declares a struct with its own fields (each followed by a comma) and then the policy keys,
/// each an `Option`, so `[policy]`, `[domains.NAME]` and [`PolicySettings`] take the same keys
/// from one list. Also generates `POLICY_KEYS`, `TUNED_KEYS` and `policy_settings()`.
///
/// The keys come in two groups: those `bestofn eval tune` decides (`tuned`), which its merge
/// into a config replaces as a whole, and the rest.
#[macro_export]
macro_rules! with_policy_keys {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }) => {
        $crate::with_policy_keys! { @declare [$(#[$meta])* $vis struct $name { $($own)* }]
            tuned: [
                /// Candidates to sample (1 to 64).
                n: u32,
                /// The scorer's name.
                scorer: String,
                /// Sample in waves and stop early when more candidates will not change the pick.
                adaptive: bool,
                /// Candidates of the first adaptive wave (at most n).
                first_wave: u32,
                /// Adaptive: stop once a candidate scores at least this.
                accept_score: f64,
                /// Adaptive: stop once the leading answer would still lead at n with this
                /// probability.
                confidence: f64,
            ]
            other: [
                /// Sampling deadline; at it, selection uses the candidates that arrived.
                deadline_ms: u64,
                /// Load-aware N: halve N while the expected upstream queue wait exceeds this.
                degrade_at_queue_ms: u64,
                /// Load-aware N: the fewest candidates N is halved to.
                min_n: u32,
                /// How the winner is picked.
                selection: $crate::bon::SteeringSelection,
                /// Soft selection's temperature.
                soft_temperature: f64,
                /// Candidates given to the fuser.
                fuse_top: u32,
                /// Show the fuser the candidates' scores.
                fuse_show_scores: bool,
                /// Never choose an invalid candidate while a valid one exists.
                require_valid: bool,
            ]
        }
    };
    (@declare [$(#[$meta:meta])* $vis:vis struct $name:ident { $($own:tt)* }]
        tuned: [$($(#[$tdoc:meta])* $tkey:ident : $tty:ty,)*]
        other: [$($(#[$odoc:meta])* $okey:ident : $oty:ty,)*]
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($own)*
            $($(#[$tdoc])* pub $tkey: Option<$tty>,)*
            $($(#[$odoc])* pub $okey: Option<$oty>,)*
        }

        impl $name {
            /// Every policy key, in declaration order.
            pub const POLICY_KEYS: &'static [&'static str] = &[$(stringify!($tkey),)* $(stringify!($okey),)*];
            /// The policy keys `bestofn eval tune` decides: merging its recommendation into a
            /// config replaces these and keeps the domain's other keys.
            pub const TUNED_KEYS: &'static [&'static str] = &[$(stringify!($tkey),)*];

            /// This section's policy keys as the one settings struct.
            pub fn policy_settings(&self) -> $crate::bon::config::PolicySettings {
                $crate::bon::config::PolicySettings {
                    $($tkey: ::std::clone::Clone::clone(&self.$tkey),)*
                    $($okey: ::std::clone::Clone::clone(&self.$okey),)*
                }
            }
        }
    };
}

with_policy_keys! {
    /// The policy keys alone, each optional: what a section sets. The tables `bestofn eval tune`
    /// writes are rendered from it, so they can only hold keys a config accepts.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PolicySettings {}
}

impl PolicySettings {
    /// The keys set, one `key = value` line each in declaration order: the body of a
    /// `[policy]` or `[domains.NAME]` table. JSON scalars are valid TOML scalars.
    pub fn toml_lines(&self) -> String {
        let Ok(serde_json::Value::Object(keys)) = serde_json::to_value(self) else { return String::new() };
        keys.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| format!("{k} = {v}\n")).collect()
    }
}

with_policy_keys! {
    /// `[policy]` as read: its own keys and the policy keys (`n` is required).
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RawPolicy {
        /// Fewest candidates worth selecting from.
        pub min_candidates: Option<u32>,
        /// What to answer when the scorer fails.
        pub on_scorer_failure: Option<ScorerFailurePolicy>,
    }
}

with_policy_keys! {
    /// `[domains.NAME]` as read: the upstream request defaults of the domain and the policy keys.
    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RawDomain {
        /// Sampling temperature sent upstream when the request sets none.
        pub temperature: Option<f64>,
        /// `max_tokens` sent upstream when the request sets none.
        pub max_tokens: Option<u64>,
    }
}

/// The defaults of the policy keys, named once.
pub mod defaults {
    /// `policy.scorer`: majority voting needs no server.
    pub const POLICY_SCORER: &str = "consensus";
    /// `policy.min_candidates`.
    pub const MIN_CANDIDATES: u32 = 1;
    /// `policy.min_n`: load-aware N may go down to a single candidate.
    pub const MIN_N: u32 = 1;
    /// `policy.adaptive`: fixed N unless asked.
    pub const ADAPTIVE: bool = false;
    /// `policy.first_wave` (at most n).
    pub const FIRST_WAVE: u32 = 2;
    /// `policy.on_scorer_failure`: a failed scorer fails the request rather than answering
    /// with an unscored candidate.
    pub const ON_SCORER_FAILURE: super::ScorerFailurePolicy = super::ScorerFailurePolicy::Fail;
    /// `policy.selection`.
    pub const SELECTION: crate::bon::SteeringSelection = crate::bon::SteeringSelection::Best;
    /// `policy.soft_temperature`.
    pub const SOFT_TEMPERATURE: f64 = 1.0;
    /// `policy.fuse_top`.
    pub const FUSE_TOP: u32 = 4;
    /// `policy.fuse_show_scores`.
    pub const FUSE_SHOW_SCORES: bool = false;
    /// `policy.require_valid`: invalid candidates rank by their scores like any other.
    pub const REQUIRE_VALID: bool = false;
}

/// `[policy]`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    /// Default candidates per request.
    pub n: u32,
    /// Default scorer.
    pub scorer: String,
    /// Per-request sampling deadline; at it, selection uses the candidates that arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Fewest candidates worth selecting from; fewer by the deadline is a 504.
    pub min_candidates: u32,
    /// What to answer when the scorer fails.
    pub on_scorer_failure: ScorerFailurePolicy,
    /// Sample in waves and stop early when more candidates will not change the pick.
    pub adaptive: bool,
    /// Candidates of the first adaptive wave.
    pub first_wave: u32,
    /// Adaptive: stop once a candidate scores at least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_score: Option<f64>,
    /// Adaptive: stop once the leading answer would still lead at n with this probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Load-aware N: halve N while the expected upstream queue wait exceeds this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degrade_at_queue_ms: Option<u64>,
    /// Load-aware N: the fewest candidates N is halved to.
    pub min_n: u32,
    /// How the winner is picked.
    #[serde(flatten)]
    pub selection: SelectionSettings,
    /// Never choose an invalid candidate while a valid one exists.
    pub require_valid: bool,
}

/// A key at fault (dotted, e.g. `domains.math.first_wave`) and what is wrong with it.
pub type Fault = (String, String);

fn fault(key: impl Into<String>, message: impl Into<String>) -> Fault {
    (key.into(), message.into())
}

/// Validates `[policy]` and the `[domains.*]` tables; `scorer_exists` says why a scorer name
/// is not configured, if it is not.
pub fn validate(
    policy: RawPolicy,
    domains: BTreeMap<String, RawDomain>,
    scorer_exists: impl Fn(&str) -> Result<(), String>,
) -> Result<(PolicyConfig, BTreeMap<String, DomainRule>), Fault> {
    let p = policy.policy_settings();
    let n = p.n.ok_or_else(|| fault("policy.n", "is required"))?;
    check_n(n).map_err(|m| fault("policy.n", m))?;
    // Without an RM, consensus (majority voting) is the default.
    let scorer = p.scorer.clone().unwrap_or_else(|| defaults::POLICY_SCORER.to_string());
    scorer_exists(&scorer).map_err(|m| fault("policy.scorer", m))?;
    let min_candidates = policy.min_candidates.unwrap_or(defaults::MIN_CANDIDATES);
    if min_candidates == 0 {
        return Err(fault("policy.min_candidates", "must be at least 1"));
    }
    if p.deadline_ms == Some(0) {
        return Err(fault("policy.deadline_ms", "must be greater than 0"));
    }
    let adaptive = check_adaptive("policy", &p, n)?;
    check_load("policy", &p, n)?;
    let selection = check_selection("policy", &p, SelectionSettings::default())?;
    let policy = PolicyConfig {
        n,
        scorer,
        deadline_ms: p.deadline_ms,
        min_candidates,
        on_scorer_failure: policy.on_scorer_failure.unwrap_or(defaults::ON_SCORER_FAILURE),
        adaptive: adaptive.enabled,
        first_wave: adaptive.first_wave,
        accept_score: adaptive.accept_score,
        confidence: adaptive.confidence,
        degrade_at_queue_ms: p.degrade_at_queue_ms,
        min_n: p.min_n.unwrap_or(defaults::MIN_N),
        selection,
        require_valid: p.require_valid.unwrap_or(defaults::REQUIRE_VALID),
    };

    let mut rules = BTreeMap::new();
    for (name, rule) in domains {
        let section = format!("domains.{name}");
        if !DOMAINS.contains(&name.as_str()) {
            return Err(fault(section, format!("unknown domain; expected one of {}", DOMAINS.join(", "))));
        }
        let s = rule.policy_settings();
        if let Some(n) = s.n {
            check_n(n).map_err(|m| fault(format!("{section}.n"), m))?;
        }
        if let Some(scorer) = &s.scorer {
            scorer_exists(scorer).map_err(|m| fault(format!("{section}.scorer"), m))?;
        }
        if let Some(t) = rule.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(fault(format!("{section}.temperature"), format!("must be between 0 and 2, got {t}")));
        }
        let domain_n = s.n.unwrap_or(policy.n);
        // A domain that turns adaptive on without its own first wave gets the policy's, cut to
        // the domain's N.
        let first_wave = s.first_wave.or_else(|| (s.adaptive == Some(true)).then_some(policy.first_wave.min(domain_n)));
        check_adaptive(&section, &PolicySettings { first_wave, ..s.clone() }, domain_n)?;
        check_load(&section, &s, domain_n)?;
        let selection = (s.selection.is_some()
            || s.soft_temperature.is_some()
            || s.fuse_top.is_some()
            || s.fuse_show_scores.is_some())
        .then(|| check_selection(&section, &s, policy.selection))
        .transpose()?;
        if rule.max_tokens == Some(0) || s.deadline_ms == Some(0) {
            return Err(fault(section, "max_tokens and deadline_ms must be greater than 0"));
        }
        rules.insert(
            name,
            DomainRule {
                n: s.n,
                scorer: s.scorer,
                temperature: rule.temperature,
                max_tokens: rule.max_tokens,
                deadline_ms: s.deadline_ms,
                adaptive: s.adaptive,
                first_wave: s.first_wave,
                accept_score: s.accept_score,
                confidence: s.confidence,
                degrade_at_queue_ms: s.degrade_at_queue_ms,
                min_n: s.min_n,
                selection,
                require_valid: s.require_valid,
            },
        );
    }
    Ok((policy, rules))
}

/// The selection settings of `section`, falling back to `inherited` for what it leaves out.
fn check_selection(
    section: &str,
    s: &PolicySettings,
    inherited: SelectionSettings,
) -> Result<SelectionSettings, Fault> {
    let settings = SelectionSettings {
        selection: s.selection.unwrap_or(inherited.selection),
        soft_temperature: s.soft_temperature.unwrap_or(inherited.soft_temperature),
        fuse_top: s.fuse_top.unwrap_or(inherited.fuse_top),
        fuse_show_scores: s.fuse_show_scores.unwrap_or(inherited.fuse_show_scores),
    };
    if !(settings.soft_temperature > 0.0 && settings.soft_temperature.is_finite()) {
        let t = settings.soft_temperature;
        return Err(fault(format!("{section}.soft_temperature"), format!("must be greater than 0, got {t}")));
    }
    if settings.fuse_top < 2 {
        return Err(fault(format!("{section}.fuse_top"), format!("must be at least 2, got {}", settings.fuse_top)));
    }
    Ok(settings)
}

/// Checks the load-aware N keys of `section` (whose N is `n`).
fn check_load(section: &str, s: &PolicySettings, n: u32) -> Result<(), Fault> {
    if s.degrade_at_queue_ms == Some(0) {
        return Err(fault(format!("{section}.degrade_at_queue_ms"), "must be greater than 0"));
    }
    if let Some(m) = s.min_n
        && !(1..=n).contains(&m)
    {
        return Err(fault(format!("{section}.min_n"), format!("must be between 1 and n ({n}), got {m}")));
    }
    Ok(())
}

/// Checks the adaptive keys of `section` (whose N is `n`) and fills in their defaults.
fn check_adaptive(section: &str, s: &PolicySettings, n: u32) -> Result<AdaptivePolicy, Fault> {
    let settings = AdaptiveSettings {
        first_wave: s.first_wave.unwrap_or(defaults::FIRST_WAVE.min(n)),
        accept_score: s.accept_score,
        confidence: s.confidence,
    };
    settings.check(n).map_err(|(key, message)| fault(format!("{section}.{key}"), message))?;
    Ok(AdaptivePolicy {
        enabled: s.adaptive.unwrap_or(defaults::ADAPTIVE),
        first_wave: settings.first_wave,
        accept_score: settings.accept_score,
        confidence: settings.confidence,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_keys_are_one_list_in_every_section() {
        assert_eq!(RawPolicy::POLICY_KEYS, PolicySettings::POLICY_KEYS);
        assert_eq!(RawDomain::POLICY_KEYS, PolicySettings::POLICY_KEYS);
        assert_eq!(
            PolicySettings::TUNED_KEYS,
            ["n", "scorer", "adaptive", "first_wave", "accept_score", "confidence"],
            "what eval tune decides"
        );
        assert!(PolicySettings::POLICY_KEYS.contains(&"fuse_show_scores"));
    }

    #[test]
    fn settings_render_as_the_keys_they_set_in_declaration_order() {
        let s = PolicySettings {
            n: Some(16),
            scorer: Some("rm".into()),
            adaptive: Some(true),
            first_wave: Some(2),
            accept_score: Some(1.0),
            ..Default::default()
        };
        assert_eq!(s.toml_lines(), "n = 16\nscorer = \"rm\"\nadaptive = true\nfirst_wave = 2\naccept_score = 1.0\n");
        assert_eq!(PolicySettings::default().toml_lines(), "");
    }
}
