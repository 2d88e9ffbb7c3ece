//! Adaptive sampling: waves of candidates and the rules that stop sampling once more candidates
//! are unlikely to change the pick. The proxy's engine and `bestofn eval replay` drive the same
//! [`AdaptiveRun`], so what replay predicts is what the proxy does.
//!
//! Waves: a first wave of `first_wave` candidates, then waves that double the total (2, 4, 8,
//! ... up to `n`). After each arrival the rules look at what has arrived; the first that fires
//! wins:
//! - `accept_score`: some candidate scored at least this (e.g. `verify` = 1.0: every check holds).
//! - `confidence` ("agreement"): the leading final answer would still lead after all `n`
//!   samples with at least this probability. The model: with v1 votes for the leader and v2 for
//!   the runner-up (0 when there is none), the leader's share between the two is
//!   p ~ Beta(v1 + 1, v2 + 1) (a uniform prior, as in Adaptive-Consistency, Aggarwal et al.
//!   2023). The r = n - m samples still to come are assumed to go to those two answers only (the
//!   worst case for the leader: a third answer cannot take votes from the runner-up's side), so
//!   the leader's share X of them is Beta-binomial(r, v1 + 1, v2 + 1), and the rule fires when
//!   P(v1 + X > v2 + r - X) >= confidence. A tie at n counts as not leading. When the lead
//!   exceeds r the probability is 1. Candidates without an extractable final answer vote for
//!   nobody.
//! - `max_n`: all `n` candidates arrived.

use serde::Serialize;

use super::select::ln_gamma;

/// Why sampling stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A candidate reached `accept_score`.
    AcceptScore,
    /// The leading answer would still lead at `n` with the configured confidence.
    Agreement,
    /// Every candidate up to `n` was sampled.
    MaxN,
    /// The request deadline cut sampling off.
    Deadline,
}

impl StopReason {
    /// The name used in responses and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            StopReason::AcceptScore => "accept_score",
            StopReason::Agreement => "agreement",
            StopReason::MaxN => "max_n",
            StopReason::Deadline => "deadline",
        }
    }
}

/// Adaptive sampling settings of a policy or domain.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AdaptiveSettings {
    /// Candidates of the first wave, 1..=n.
    pub first_wave: u32,
    /// Stop once a candidate scores at least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_score: Option<f64>,
    /// Stop once the leading answer would still lead at n with this probability (0.5 < c < 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
}

impl AdaptiveSettings {
    /// Checks the settings against the largest N they run with.
    pub fn check(&self, n: u32) -> Result<(), (&'static str, String)> {
        if !(1..=n).contains(&self.first_wave) {
            return Err(("first_wave", format!("must be between 1 and n ({n}), got {}", self.first_wave)));
        }
        if let Some(c) = self.confidence
            && !(c > 0.5 && c < 1.0)
        {
            return Err(("confidence", format!("must be greater than 0.5 and less than 1, got {c}")));
        }
        if let Some(a) = self.accept_score
            && !a.is_finite()
        {
            return Err(("accept_score", "must be a finite number".into()));
        }
        Ok(())
    }
}

/// Cumulative candidate counts at the end of each wave: `first_wave`, then doubling, capped at
/// `n` (first_wave 2, n 16: 2, 4, 8, 16; first_wave 3, n 10: 3, 6, 10).
pub fn wave_totals(first_wave: u32, n: u32) -> Vec<u32> {
    let mut totals = vec![first_wave.clamp(1, n.max(1))];
    while let Some(&last) = totals.last()
        && last < n
    {
        totals.push((last * 2).min(n));
    }
    totals
}

/// P(the leader still strictly leads after `remaining` more votes shared between it and the
/// runner-up), under the Beta-binomial model of the module documentation.
pub fn lead_holds(leader: u32, runner_up: u32, remaining: u32) -> f64 {
    if leader <= runner_up {
        return 0.0;
    }
    if leader - runner_up > remaining {
        return 1.0;
    }
    let (a, b, r) = (f64::from(leader) + 1.0, f64::from(runner_up) + 1.0, f64::from(remaining));
    let ln_beta = |x: f64, y: f64| ln_gamma(x) + ln_gamma(y) - ln_gamma(x + y);
    let ln_choose = |n: f64, k: f64| ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0);
    // Leader ends ahead when leader + x > runner_up + remaining - x.
    let needed = (i64::from(runner_up) + i64::from(remaining) - i64::from(leader)).div_euclid(2) + 1;
    let mut p = 0.0;
    for x in needed.max(0)..=i64::from(remaining) {
        let x = x as f64;
        p += (ln_choose(r, x) + ln_beta(x + a, r - x + b) - ln_beta(a, b)).exp();
    }
    p.clamp(0.0, 1.0)
}

/// The two largest vote counts among final answers (None answers vote for nobody).
fn top_two(answers: &[Option<String>]) -> (u32, u32) {
    let mut counts: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for a in answers.iter().flatten() {
        *counts.entry(a.as_str()).or_default() += 1;
    }
    let mut values: Vec<u32> = counts.into_values().collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    (values.first().copied().unwrap_or(0), values.get(1).copied().unwrap_or(0))
}

/// One adaptive run: which waves to start, and after each arrival whether to stop.
#[derive(Debug, Clone)]
pub struct AdaptiveRun {
    settings: AdaptiveSettings,
    n: u32,
    totals: Vec<u32>,
    /// Waves started so far.
    waves: usize,
    answers: Vec<Option<String>>,
    best_score: Option<f64>,
}

impl AdaptiveRun {
    /// A run of at most `n` candidates.
    pub fn new(settings: AdaptiveSettings, n: u32) -> Self {
        AdaptiveRun {
            settings,
            n,
            totals: wave_totals(settings.first_wave, n),
            waves: 0,
            answers: Vec::new(),
            best_score: None,
        }
    }

    /// Starts the next wave: its size and the candidate offset it starts at, or None when all
    /// `n` have been started.
    pub fn start_wave(&mut self) -> Option<(u32, u32)> {
        let total = *self.totals.get(self.waves)?;
        let offset = if self.waves == 0 { 0 } else { self.totals[self.waves - 1] };
        self.waves += 1;
        Some((total - offset, offset))
    }

    /// Waves started.
    pub fn waves(&self) -> u32 {
        self.waves as u32
    }

    /// Candidates requested so far (every started wave in full).
    pub fn requested(&self) -> u32 {
        if self.waves == 0 { 0 } else { self.totals[self.waves - 1] }
    }

    /// Whether the rules need final answers (`confidence` is set).
    pub fn needs_answers(&self) -> bool {
        self.settings.confidence.is_some()
    }

    /// Whether the rules need scores (`accept_score` is set).
    pub fn needs_scores(&self) -> bool {
        self.settings.accept_score.is_some()
    }

    /// A candidate arrived with its normalised final answer (when the rules need answers).
    pub fn arrived(&mut self, answer: Option<String>) {
        self.answers.push(answer);
    }

    /// A candidate was scored.
    pub fn scored(&mut self, score: f64) {
        self.best_score = Some(self.best_score.map_or(score, |b| b.max(score)));
    }

    /// The first rule that fires on what has arrived, if any; `max_n` once `n` have arrived.
    pub fn check(&self) -> Option<StopReason> {
        if let (Some(threshold), Some(best)) = (self.settings.accept_score, self.best_score)
            && best >= threshold
        {
            return Some(StopReason::AcceptScore);
        }
        let arrived = self.answers.len() as u32;
        if let Some(c) = self.settings.confidence {
            let (leader, runner_up) = top_two(&self.answers);
            if lead_holds(leader, runner_up, self.n.saturating_sub(arrived)) >= c {
                return Some(StopReason::Agreement);
            }
        }
        (arrived >= self.n).then_some(StopReason::MaxN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_double_the_total_up_to_n() {
        assert_eq!(wave_totals(2, 16), vec![2, 4, 8, 16]);
        assert_eq!(wave_totals(3, 10), vec![3, 6, 10]);
        assert_eq!(wave_totals(16, 16), vec![16]);
        assert_eq!(wave_totals(1, 1), vec![1]);
        let mut run = AdaptiveRun::new(AdaptiveSettings { first_wave: 2, accept_score: None, confidence: None }, 8);
        assert_eq!((run.start_wave(), run.start_wave(), run.start_wave()), (Some((2, 0)), Some((2, 2)), Some((4, 4))));
        assert_eq!((run.start_wave(), run.requested(), run.waves()), (None, 8, 3));
    }

    /// Brute force of the Beta-binomial tail: integrate over p on a fine grid.
    fn numeric_lead(leader: u32, runner_up: u32, remaining: u32) -> f64 {
        let steps = 20_000;
        let (a, b) = (f64::from(leader), f64::from(runner_up));
        let (mut num, mut den) = (0.0, 0.0);
        for i in 0..steps {
            let p = (i as f64 + 0.5) / steps as f64;
            let density = p.powf(a) * (1.0 - p).powf(b);
            let mut tail = 0.0;
            for x in 0..=remaining {
                if leader + x > runner_up + remaining - x {
                    let choose = (ln_gamma(f64::from(remaining) + 1.0)
                        - ln_gamma(f64::from(x) + 1.0)
                        - ln_gamma(f64::from(remaining - x) + 1.0))
                    .exp();
                    tail += choose * p.powi(x as i32) * (1.0 - p).powi((remaining - x) as i32);
                }
            }
            num += density * tail;
            den += density;
        }
        num / den
    }

    #[test]
    fn lead_probability_matches_numeric_integration_and_bounds() {
        for (l, r, rem) in [(2, 0, 14), (3, 1, 4), (5, 2, 9), (1, 0, 1), (4, 3, 2)] {
            let exact = lead_holds(l, r, rem);
            assert!((exact - numeric_lead(l, r, rem)).abs() < 1e-3, "{l},{r},{rem}: {exact}");
        }
        assert_eq!(lead_holds(5, 1, 3), 1.0, "a lead larger than what is left cannot be lost");
        assert_eq!(lead_holds(2, 2, 3), 0.0);
        assert!(lead_holds(8, 0, 8) > lead_holds(2, 0, 14));
    }

    #[test]
    fn agreement_fires_when_the_first_wave_agrees_and_not_when_it_splits() {
        let settings = AdaptiveSettings { first_wave: 4, accept_score: None, confidence: Some(0.9) };
        let mut agree = AdaptiveRun::new(settings, 8);
        for _ in 0..4 {
            agree.arrived(Some("12".into()));
        }
        assert_eq!(agree.check(), Some(StopReason::Agreement), "4 of 4 agree with 4 to go");
        let mut split = AdaptiveRun::new(settings, 8);
        for a in ["12", "13", "12", "13"] {
            split.arrived(Some(a.into()));
        }
        assert_eq!(split.check(), None);
        let mut threshold = AdaptiveRun::new(AdaptiveSettings { accept_score: Some(1.0), ..settings }, 8);
        threshold.arrived(None);
        threshold.scored(0.5);
        assert_eq!(threshold.check(), None);
        threshold.scored(1.0);
        assert_eq!(threshold.check(), Some(StopReason::AcceptScore));
    }
}
