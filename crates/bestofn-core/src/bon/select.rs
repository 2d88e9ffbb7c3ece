//! Selection: how candidates are scored, ranked and chosen, online and offline. The proxy's
//! engine and every `bestofn eval` command go through this file: the checked scoring call, the
//! ranking and its tie rule, and the exact best-of-k estimators that predict what the ranking
//! buys on recorded candidates.
//!
//! The tie rule is the same on both sides: online, equal scores go to the lower candidate index;
//! candidates arrive in a random order, so offline that is a uniformly random member of the tie
//! group, which is what the estimators average over.

use crate::error::{Error, Party};
use crate::score::{ScoreInput, ScoreOutput, Scorer};

/// Scores `input` with `scorer` and checks the contract every caller relies on: exactly one
/// finite score per candidate. A scorer that breaks it is a gateway failure naming the scorer.
pub async fn score_candidates(scorer: &dyn Scorer, input: ScoreInput<'_>) -> Result<ScoreOutput, Error> {
    let expected = input.candidates.len();
    let out = scorer.score(input).await?;
    let broken = |message: String| Error::bad_gateway(Party::Scorer, format!("scorer {}", scorer.name()), message);
    if out.scores.len() != expected {
        return Err(broken(format!("{} scores for {expected} candidates", out.scores.len())));
    }
    if let Some(i) = out.scores.iter().position(|s| !s.is_finite()) {
        return Err(broken(format!("score {} of candidate {i} is not a finite number", out.scores[i])));
    }
    Ok(out)
}

/// Candidate indices ordered best first: higher score first, ties to the lower index, NaN last.
pub fn rank(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let key = |i: usize| {
        if scores[i].is_nan() { f64::NEG_INFINITY } else { scores[i] }
    };
    // A stable sort on the descending score keeps equal scores in index order.
    order.sort_by(|&a, &b| key(b).partial_cmp(&key(a)).unwrap_or(std::cmp::Ordering::Equal));
    order
}

/// How the winner is picked from scored candidates.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "selection")]
pub enum Selection {
    /// The highest score (ties to the lower index).
    Best,
    /// Soft best-of-N: a draw with probability proportional to exp(z / temperature), z the
    /// score standardised within the request (so the temperature means the same for any RM
    /// scale). Resists reward over-optimisation when the scorer is weak.
    Soft {
        /// Softmax temperature (> 0); towards 0 it is `Best`.
        #[serde(rename = "soft_temperature")]
        temperature: f64,
    },
    /// Mixture-of-N: the `top` best candidates go to a fuser model that writes one answer.
    Fuse {
        /// Candidates given to the fuser, best first (at least 2).
        #[serde(rename = "fuse_top")]
        top: u32,
        /// Show the fuser each candidate's score.
        #[serde(rename = "fuse_show_scores")]
        show_scores: bool,
    },
}

/// The pick probabilities of soft selection: softmax of the standardised scores over
/// `temperature` (uniform when the scores do not vary).
pub fn soft_probabilities(scores: &[f64], temperature: f64) -> Vec<f64> {
    crate::score::softmax(&crate::score::z_scores(scores), temperature)
}

/// Candidate indices ordered for the answer: under `Best` the ranking; under `Soft` the drawn
/// winner first (from `rng`), then the rest by score.
pub fn select(scores: &[f64], selection: Selection, rng: &mut fastrand::Rng) -> Vec<usize> {
    select_among(scores, selection, rng, None)
}

/// The candidates that may win under `require_valid`: those marked in `valid`, when at least
/// one is (with every candidate invalid, any may win: the best by the scorer is the answer).
pub fn eligible(valid: Option<&[bool]>, require_valid: bool) -> Option<&[bool]> {
    valid.filter(|v| require_valid && v.iter().any(|&b| b))
}

/// [`select`] where only the `eligible` candidates (when given) may win: they come first, in
/// their order by score (`Soft`: the draw is among them alone, their scores standardised among
/// themselves), the others after them. The one place `require_valid` is applied, live and in
/// replay alike.
pub fn select_among(
    scores: &[f64],
    selection: Selection,
    rng: &mut fastrand::Rng,
    eligible: Option<&[bool]>,
) -> Vec<usize> {
    let eligible = eligible.filter(|e| e.len() == scores.len() && e.iter().any(|&b| b));
    let mut order = rank(scores);
    if let Some(e) = eligible {
        // A stable sort: the eligible first, each group still by score.
        order.sort_by_key(|&i| !e[i]);
    }
    if let Selection::Soft { temperature } = selection
        && !scores.is_empty()
    {
        let pool: Vec<usize> = (0..scores.len()).filter(|&i| eligible.is_none_or(|e| e[i])).collect();
        let pooled: Vec<f64> = pool.iter().map(|&i| scores[i]).collect();
        let p = soft_probabilities(&pooled, temperature);
        let draw = rng.f64();
        let mut acc = 0.0;
        let winner = (0..p.len()).find(|&k| {
            acc += p[k];
            draw < acc
        });
        let winner = winner.map_or(order[0], |k| pool[k]);
        order.retain(|&i| i != winner);
        order.insert(0, winner);
    }
    order
}

/// The answer's order when there are no scores (one candidate, or a scorer that failed under
/// `on_scorer_failure = "first"` or `"random"`): candidate order, or with `random` a uniformly
/// drawn candidate first; only the `eligible` (when given) may come first.
pub fn unscored_order(n: usize, random: bool, rng: &mut fastrand::Rng, eligible: Option<&[bool]>) -> Vec<usize> {
    let eligible = eligible.filter(|e| e.len() == n && e.iter().any(|&b| b));
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(e) = eligible {
        order.sort_by_key(|&i| !e[i]);
    }
    if random && n > 0 {
        match eligible {
            // The drawn candidate first, the others after it in turn.
            None => order.rotate_left(rng.usize(..n)),
            Some(e) => {
                let pick = order[rng.usize(..e.iter().filter(|&&b| b).count())];
                order.retain(|&i| i != pick);
                order.insert(0, pick);
            }
        }
    }
    order
}

/// Expected label of the soft pick among a uniformly random k-subset: exact over every
/// k-subset when there are at most `max_subsets` of them, else averaged over `max_subsets`
/// seeded random subsets. Returns the value and its standard error (0 when exact).
pub fn soft_expected_at_k(
    keys: &[f64],
    labels: &[f64],
    k: usize,
    temperature: f64,
    max_subsets: usize,
    rng: &mut fastrand::Rng,
) -> (f64, f64) {
    let n = keys.len();
    if k == 0 || k > n {
        return (f64::NAN, 0.0);
    }
    let value = |subset: &[usize]| {
        let sub: Vec<f64> = subset.iter().map(|&i| keys[i]).collect();
        soft_probabilities(&sub, temperature).iter().zip(subset).map(|(p, &i)| p * labels[i]).sum::<f64>()
    };
    let lf = LogFactorials::new(n);
    let subsets = (lf.0[n] - lf.0[k] - lf.0[n - k]).exp().round();
    if subsets <= max_subsets as f64 {
        let (mut total, mut count) = (0.0, 0.0);
        let mut subset: Vec<usize> = (0..k).collect();
        loop {
            total += value(&subset);
            count += 1.0;
            let Some(i) = (0..k).rev().find(|&i| subset[i] < n - k + i) else { break };
            subset[i] += 1;
            for j in i + 1..k {
                subset[j] = subset[j - 1] + 1;
            }
        }
        return (total / count, 0.0);
    }
    let mut values = Vec::with_capacity(max_subsets);
    let mut all: Vec<usize> = (0..n).collect();
    for _ in 0..max_subsets.max(2) {
        rng.shuffle(&mut all);
        values.push(value(&all[..k]));
    }
    let m = values.len() as f64;
    let mean = values.iter().sum::<f64>() / m;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0);
    (mean, (var / m).sqrt())
}

/// 1, 2, 4, ... up to `max_n`, and `max_n` itself when it is not a power of two: the N grid of
/// best-of-N curves.
pub fn k_grid(max_n: usize) -> Vec<usize> {
    let mut ks = Vec::new();
    let mut k = 1;
    while k <= max_n {
        ks.push(k);
        k *= 2;
    }
    if max_n > 0 && ks.last() != Some(&max_n) {
        ks.push(max_n);
    }
    ks
}

/// ln Γ(x) by the Lanczos approximation (g = 7, 9 terms), accurate to about 1e-15.
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// `ln(n!)` for n in 0..=max, so binomial ratios never overflow or underflow.
#[derive(Debug, Clone)]
pub struct LogFactorials(pub(crate) Vec<f64>);

impl LogFactorials {
    /// The table up to `max`.
    pub fn new(max: usize) -> Self {
        let mut table = Vec::with_capacity(max + 1);
        table.push(0.0);
        for i in 1..=max {
            table.push(table[i - 1] + (i as f64).ln());
        }
        LogFactorials(table)
    }

    /// `C(a, k) / C(n, k)`: the chance that a random k-subset of n items lies inside a fixed
    /// set of a items. Computed as exp(ln a! - ln (a-k)! - ln n! + ln (n-k)!), stable for n
    /// up to the table's size (1024 and far beyond).
    pub fn subset_ratio(&self, a: usize, n: usize, k: usize) -> f64 {
        if a < k || n < k {
            return 0.0;
        }
        let f = &self.0;
        (f[a] - f[a - k] - f[n] + f[n - k]).exp()
    }

    /// Grows the table to cover `max`.
    pub fn ensure(&mut self, max: usize) {
        while self.0.len() <= max {
            let i = self.0.len();
            let last = self.0[i - 1];
            self.0.push(last + (i as f64).ln());
        }
    }
}

/// Exact E[value of the chosen candidate] when a uniformly random k-subset is drawn and the
/// candidate with the highest `key` wins, ties broken uniformly at random.
///
/// Candidates are sorted by key; a tie group G with L candidates strictly below it wins iff the
/// subset lies within the L + |G| lowest and meets G, which has chance
/// (C(L+|G|, k) - C(L, k)) / C(N, k); by symmetry each member of G is then equally likely.
pub fn expected_at_k(keys: &[f64], values: &[f64], k: usize, table: &LogFactorials) -> f64 {
    let n = keys.len();
    if k == 0 || k > n {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    expected_sorted(keys, values, &order, k, table)
}

fn expected_sorted(keys: &[f64], values: &[f64], order: &[usize], k: usize, table: &LogFactorials) -> f64 {
    let n = order.len();
    expected_with(keys, values, order, |a| table.subset_ratio(a, n, k))
}

/// The sum over tie groups, with `ratio(a)` = C(a, k) / C(n, k) supplied by the caller (from a
/// precomputed row in the hot path).
fn expected_with(keys: &[f64], values: &[f64], order: &[usize], ratio: impl Fn(usize) -> f64) -> f64 {
    let n = order.len();
    let mut total = 0.0;
    let mut below = 0;
    while below < n {
        let key = keys[order[below]];
        let mut end = below + 1;
        while end < n && keys[order[end]] == key {
            end += 1;
        }
        let group = end - below;
        let p = ratio(below + group) - ratio(below);
        if p > 0.0 {
            let mean: f64 = order[below..end].iter().map(|&i| values[i]).sum::<f64>() / group as f64;
            total += p * mean;
        }
        below = end;
    }
    total
}

/// `C(a, k) / C(n, k)` for every a in 0..=n and every k of the grid, per candidate count n:
/// computed once per distinct n, so the per-prompt work has no exp or log in it.
#[derive(Debug, Default)]
pub struct RatioCache {
    table: Option<LogFactorials>,
    /// The grid the cached rows are for.
    ks: Vec<usize>,
    rows: std::collections::HashMap<usize, Vec<Vec<f64>>>,
}

impl RatioCache {
    /// The ratio rows for `n` candidates over the grid `ks` (computed on first use; a call with
    /// another grid starts the cache afresh).
    pub fn rows(&mut self, n: usize, ks: &[usize]) -> &Vec<Vec<f64>> {
        if self.ks != ks {
            self.ks = ks.to_vec();
            self.rows.clear();
        }
        let table = self.table.get_or_insert_with(|| LogFactorials::new(n));
        table.ensure(n);
        let table = &*table;
        self.rows
            .entry(n)
            .or_insert_with(|| ks.iter().map(|&k| (0..=n).map(|a| table.subset_ratio(a, n, k)).collect()).collect())
    }
}

/// Fills `out[ki]` with E[label of the winner] at each k when `keys` rank the candidates
/// (NaN where the prompt has fewer than k candidates). Sorts once for all k.
pub fn fill_curve(
    keys: &[f64],
    labels: &[f64],
    ks: &[usize],
    rows: &[Vec<f64>],
    order: &mut Vec<usize>,
    out: &mut [f64],
) {
    let n = keys.len();
    order.clear();
    order.extend(0..n);
    order.sort_unstable_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    for ((slot, &k), row) in out.iter_mut().zip(ks).zip(rows) {
        *slot = if k <= n { expected_with(keys, labels, order, |a| row[a]) } else { f64::NAN };
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::score::{BoxFuture, Message, ScorerUsage};

    #[test]
    fn highest_first_ties_to_lowest_index() {
        assert_eq!(rank(&[0.1, 0.9, 0.5]), vec![1, 2, 0]);
        assert_eq!(rank(&[2.0, 3.0, 3.0, 1.0]), vec![1, 2, 0, 3]);
        assert_eq!(rank(&[f64::NAN, -5.0]), vec![1, 0]);
        assert_eq!(rank(&[-0.0, 0.0]), vec![0, 1]);
        assert!(rank(&[]).is_empty());
    }

    /// A scorer that answers fixed scores, whatever it is asked.
    struct Fixed(Vec<f64>);

    impl Scorer for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn score<'a>(&'a self, _input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
            Box::pin(std::future::ready(Ok(ScoreOutput { scores: self.0.clone(), usage: ScorerUsage::default() })))
        }
    }

    #[tokio::test]
    async fn scoring_checks_one_finite_score_per_candidate() {
        let conversation = [Message { role: "user".into(), content: "q".into() }];
        let candidates = ["a".to_string(), "b".to_string()];
        let input = ScoreInput::of_texts(&conversation, &candidates);
        assert_eq!(score_candidates(&Fixed(vec![1.0, 2.0]), input).await.unwrap().scores, vec![1.0, 2.0]);
        let short = score_candidates(&Fixed(vec![1.0]), input).await.unwrap_err().to_string();
        assert!(short.contains("scorer fixed") && short.contains("1 scores for 2 candidates"), "{short}");
        let nan = score_candidates(&Fixed(vec![1.0, f64::NAN]), input).await.unwrap_err().to_string();
        assert!(nan.contains("candidate 1") && nan.contains("finite"), "{nan}");
    }

    /// Brute force: every k-subset, the best key wins, ties split evenly.
    fn brute(keys: &[f64], values: &[f64], k: usize) -> f64 {
        let n = keys.len();
        let mut total = 0.0;
        let mut count = 0.0;
        for mask in 0u32..(1 << n) {
            if mask.count_ones() as usize != k {
                continue;
            }
            let members: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
            let best = members.iter().map(|&i| keys[i]).fold(f64::NEG_INFINITY, f64::max);
            let winners: Vec<usize> = members.into_iter().filter(|&i| keys[i] == best).collect();
            total += winners.iter().map(|&i| values[i]).sum::<f64>() / winners.len() as f64;
            count += 1.0;
        }
        total / count
    }

    #[test]
    fn hand_examples() {
        let t = LogFactorials::new(8);
        // For k = N the argmax always wins.
        assert!((expected_at_k(&[1.0, 2.0, 3.0], &[0.0, 0.0, 1.0], 3, &t) - 1.0).abs() < 1e-12);
        // k = 1 is the mean label whatever the rewards.
        assert!((expected_at_k(&[5.0, 1.0, 3.0, 2.0], &[1.0, 0.0, 0.0, 1.0], 1, &t) - 0.5).abs() < 1e-12);
        // All rewards tied: every k gives the mean label.
        assert!((expected_at_k(&[1.0; 4], &[1.0, 0.0, 0.0, 0.5], 3, &t) - 0.375).abs() < 1e-12);
        assert_eq!(k_grid(16), vec![1, 2, 4, 8, 16]);
        assert_eq!(k_grid(12), vec![1, 2, 4, 8, 12]);
    }

    #[test]
    fn soft_selection_draws_by_the_softmax_and_turns_into_argmax_when_cold() {
        let scores = [0.0, 1.0, 3.0, 2.0];
        let p = soft_probabilities(&scores, 1.0);
        let mut counts = [0usize; 4];
        let trials = 20_000;
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..trials {
            counts[select(&scores, Selection::Soft { temperature: 1.0 }, &mut rng)[0]] += 1;
        }
        for i in 0..4 {
            let expected = p[i] * trials as f64;
            let bound = 4.0 * (trials as f64 * p[i] * (1.0 - p[i])).sqrt();
            assert!((counts[i] as f64 - expected).abs() <= bound, "{i}: {} vs {expected:.0}", counts[i]);
        }
        let cold = soft_probabilities(&scores, 1e-6);
        assert!((cold[2] - 1.0).abs() < 1e-12, "T -> 0 is argmax: {cold:?}");
        assert_eq!(select(&scores, Selection::Soft { temperature: 1e-6 }, &mut rng), rank(&scores));
        assert_eq!(soft_probabilities(&[5.0, 5.0], 1.0), vec![0.5, 0.5]);
        // A seeded draw is reproducible.
        let a = select(&scores, Selection::Soft { temperature: 1.0 }, &mut fastrand::Rng::with_seed(3));
        let b = select(&scores, Selection::Soft { temperature: 1.0 }, &mut fastrand::Rng::with_seed(3));
        assert_eq!(a, b);
    }

    #[test]
    fn only_eligible_candidates_win_while_there_is_one() {
        let scores = [3.0, 1.0, 2.0, 0.5];
        let valid = [false, true, false, true];
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(select_among(&scores, Selection::Best, &mut rng, Some(&valid)), vec![1, 3, 0, 2]);
        for _ in 0..200 {
            let soft = select_among(&scores, Selection::Soft { temperature: 5.0 }, &mut rng, Some(&valid));
            assert!(valid[soft[0]], "{soft:?}");
        }
        assert_eq!(eligible(Some(&[false, false]), true), None, "none valid: the best by the scorer");
        assert_eq!(eligible(Some(&valid), false), None, "require_valid off");
        assert_eq!(select_among(&scores, Selection::Best, &mut rng, eligible(Some(&[false; 4]), true)), rank(&scores));
        // Without scores: the first valid, or a random valid one.
        assert_eq!(unscored_order(4, false, &mut rng, Some(&valid)), vec![1, 3, 0, 2]);
        for _ in 0..50 {
            assert!(valid[unscored_order(4, true, &mut rng, Some(&valid))[0]]);
        }
        // Without eligibility the draws are the ones they always were.
        let (mut a, mut b) = (fastrand::Rng::with_seed(9), fastrand::Rng::with_seed(9));
        assert_eq!(
            select_among(&scores, Selection::Soft { temperature: 1.0 }, &mut a, None),
            select(&scores, Selection::Soft { temperature: 1.0 }, &mut b)
        );
    }

    #[test]
    fn the_exact_soft_estimator_equals_brute_force() {
        let keys = [0.1, 0.9, 0.4, 0.7, 0.2];
        let labels = [0.0, 1.0, 0.0, 1.0, 1.0];
        let mut rng = fastrand::Rng::with_seed(1);
        for k in 1..=5 {
            // Brute force: every k-subset by bitmask, softmax of the standardised subset scores.
            let (mut total, mut count) = (0.0, 0.0);
            for mask in 0u32..32 {
                if mask.count_ones() as usize != k {
                    continue;
                }
                let members: Vec<usize> = (0..5).filter(|i| mask & (1 << i) != 0).collect();
                let sub: Vec<f64> = members.iter().map(|&i| keys[i]).collect();
                let p = soft_probabilities(&sub, 0.5);
                total += members.iter().zip(&p).map(|(&i, p)| p * labels[i]).sum::<f64>();
                count += 1.0;
            }
            let (exact, se) = soft_expected_at_k(&keys, &labels, k, 0.5, 1000, &mut rng);
            assert!((exact - total / count).abs() < 1e-12 && se == 0.0, "k = {k}");
            // The sampled estimate is within a few standard errors.
            let (estimate, se) = soft_expected_at_k(&keys, &labels, k, 0.5, 1, &mut rng);
            if k > 1 && k < 5 {
                assert!(se >= 0.0 && (estimate - total / count).abs() <= 1.0, "k = {k}");
            }
        }
    }

    #[test]
    fn the_ratio_cache_follows_the_grid() {
        let mut cache = RatioCache::default();
        let full = cache.rows(4, &[1, 2, 4]).clone();
        let (mut order, mut out) = (Vec::new(), vec![0.0; 1]);
        fill_curve(&[1.0, 2.0, 3.0, 4.0], &[0.0, 0.0, 0.0, 1.0], &[4], cache.rows(4, &[4]), &mut order, &mut out);
        assert_eq!(out[0], 1.0, "k = 4 always picks the best, whatever grid was cached before");
        assert_eq!(cache.rows(4, &[1, 2, 4]), &full);
    }

    #[test]
    fn binomial_ratios_are_stable_at_n_1024() {
        let t = LogFactorials::new(1024);
        let r = t.subset_ratio(1023, 1024, 512);
        assert!((r - 0.5).abs() < 1e-9, "{r}");
        let tiny = t.subset_ratio(600, 1024, 512);
        assert!(tiny.is_finite() && tiny >= 0.0);
        let keys: Vec<f64> = (0..1024).map(|i| f64::from(i % 37)).collect();
        let labels: Vec<f64> = (0..1024).map(|i| if i % 5 == 0 { 1.0 } else { 0.0 }).collect();
        let v = expected_at_k(&keys, &labels, 512, &t);
        assert!((0.0..=1.0).contains(&v));
    }

    proptest! {
        #[test]
        fn exact_equals_brute_force(
            pairs in prop::collection::vec((0i32..4, 0u8..5), 1..9),
            k_frac in 0.0f64..1.0,
        ) {
            let keys: Vec<f64> = pairs.iter().map(|p| f64::from(p.0)).collect();
            let values: Vec<f64> = pairs.iter().map(|p| f64::from(p.1) / 4.0).collect();
            let n = keys.len();
            let k = 1 + ((n - 1) as f64 * k_frac) as usize;
            let t = LogFactorials::new(n);
            let exact = expected_at_k(&keys, &values, k, &t);
            prop_assert!((exact - brute(&keys, &values, k)).abs() < 1e-9, "{} vs {}", exact, brute(&keys, &values, k));
            // oracle@k is BoN with the labels as rewards, and bounds BoN from above.
            prop_assert!(expected_at_k(&values, &values, k, &t) + 1e-12 >= exact);
            // At k = N the estimator is the online rule: the label of rank()'s first pick, up
            // to ties (which it averages).
            let top = rank(&keys)[0];
            let tied: Vec<usize> = (0..n).filter(|&i| keys[i] == keys[top]).collect();
            let tie_mean = tied.iter().map(|&i| values[i]).sum::<f64>() / tied.len() as f64;
            prop_assert!((expected_at_k(&keys, &values, n, &t) - tie_mean).abs() < 1e-9);
        }
    }
}
