//! Best-of-N gain curves: the exact expected correctness of the best-reward candidate among a
//! uniformly random k-subset of a prompt's N candidates, ties broken uniformly at random.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bon::select::{RatioCache, fill_curve, k_grid, soft_expected_at_k};

/// One prompt's candidates: a label in [0, 1] and the rewards of one or more scorers.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The prompt's id.
    pub id: String,
    /// Its domain.
    pub domain: String,
    /// Correctness of each candidate, in [0, 1].
    pub labels: Vec<f64>,
    /// Per reward name, one reward per candidate.
    pub rewards: BTreeMap<String, Vec<f64>>,
}

/// One reward's curve in one domain, computed on the prompts that carry that reward: its own
/// prompt counts, mean@1 and oracle, so BoN@1 equals its mean@1 and gain and gap closed follow
/// from the rows above them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardCurve {
    /// Prompts behind each k (those with the reward and at least k candidates).
    pub prompts: Vec<usize>,
    /// mean@1 over the prompts with the reward.
    pub mean: Option<f64>,
    /// oracle@k over the same prompts.
    pub oracle: Vec<Option<f64>>,
    /// BoN@k averaged over prompts.
    pub bon: Vec<Option<f64>>,
    /// Bootstrap 95% interval, low end.
    pub ci_low: Vec<Option<f64>>,
    /// Bootstrap 95% interval, high end.
    pub ci_high: Vec<Option<f64>>,
    /// BoN@k minus mean@1 (over the same prompts).
    pub gain: Vec<Option<f64>>,
    /// Share of the oracle gap closed: gain / (oracle@k - mean@1).
    pub gap_closed: Vec<Option<f64>>,
}

/// Curves of one domain (or `all`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainCurves {
    /// Prompts behind each k.
    pub prompts: Vec<usize>,
    /// mean@1 over the domain's prompts.
    pub mean: Option<f64>,
    /// oracle@k.
    pub oracle: Vec<Option<f64>>,
    /// Per reward.
    pub rewards: BTreeMap<String, RewardCurve>,
}

/// The whole result: the k grid and the curves per domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BonReport {
    /// k = 1, 2, 4, ..., up to the largest N.
    pub k: Vec<usize>,
    /// `all` and each domain.
    pub domains: BTreeMap<String, DomainCurves>,
    /// Per domain (and `all`): the mean label of the candidate the proxy actually answered with,
    /// over the labelled prompts whose record says which (`chosen`): online accuracy.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub recorded_pick: BTreeMap<String, RecordedPick>,
    /// The selection rule behind the reward curves, when not argmax (e.g. `soft T=0.5`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection: Option<String>,
    /// The largest standard error of a sampled (not enumerated) soft BoN@k value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_standard_error: Option<f64>,
}

/// How the reward curves pick among a subset of candidates: the selections whose pick is one of
/// the candidates. Fusion writes a new answer with no recorded label, so it has no curve here
/// (rather than the argmax standing in for it); `eval replay --as-recorded` runs it with the
/// fuser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CurveSelection {
    /// The highest reward (ties to the lower index).
    Best,
    /// Soft best-of-N at this temperature: the expected label of the draw.
    Soft {
        /// Softmax temperature (> 0).
        temperature: f64,
    },
}

fn selection_label(selection: CurveSelection) -> Option<String> {
    match selection {
        CurveSelection::Best => None,
        CurveSelection::Soft { temperature } => Some(format!("soft T={temperature}")),
    }
}

/// Online accuracy of recorded traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RecordedPick {
    /// Prompts with a recorded pick.
    pub prompts: usize,
    /// Mean label of the picked candidates.
    pub accuracy: f64,
    /// Bootstrap 95% interval, low end.
    pub ci_low: Option<f64>,
    /// Bootstrap 95% interval, high end.
    pub ci_high: Option<f64>,
}

/// The online accuracy per domain (and `all`) of `(domain, label of the recorded pick)` pairs,
/// with seeded bootstrap intervals.
pub fn recorded_picks(picks: &[(String, f64)], resamples: usize, seed: u64) -> BTreeMap<String, RecordedPick> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (domain, label) in picks {
        for key in ["all", domain.as_str()] {
            groups.entry(key.to_string()).or_default().push(*label);
        }
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    groups
        .into_iter()
        .map(|(d, labels)| {
            let (ci_low, ci_high) = bootstrap(&labels, resamples, &mut rng);
            let accuracy = labels.iter().sum::<f64>() / labels.len() as f64;
            (d, RecordedPick { prompts: labels.len(), accuracy, ci_low, ci_high })
        })
        .collect()
}

fn mean_of(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Percentile bootstrap 95% interval of the mean, `resamples` times with a seeded generator.
pub(crate) fn bootstrap(values: &[f64], resamples: usize, rng: &mut fastrand::Rng) -> (Option<f64>, Option<f64>) {
    if values.is_empty() || resamples == 0 {
        return (None, None);
    }
    let n = values.len();
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| values[rng.usize(..n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    (Some(at(0.025)), Some(at(0.975)))
}

/// The prompts that carry every reward present anywhere in `prompts`: the like-for-like set
/// that `eval bon --common` compares scorers on.
pub fn common_prompts(prompts: &[Prompt]) -> Vec<Prompt> {
    let names: std::collections::BTreeSet<&String> = prompts.iter().flat_map(|p| p.rewards.keys()).collect();
    prompts.iter().filter(|p| names.iter().all(|n| p.rewards.contains_key(*n))).cloned().collect()
}

/// Means over `members` of the per-prompt values at slot `ki` (prompt-major, `nk` slots),
/// skipping NaN (a prompt with fewer than k candidates): the mean, and the prompts behind it.
fn slot_mean(values: &[f64], members: &[usize], nk: usize, ki: usize) -> (Option<f64>, usize) {
    let (mut sum, mut count) = (0.0, 0);
    for &i in members {
        let v = values[i * nk + ki];
        if !v.is_nan() {
            sum += v;
            count += 1;
        }
    }
    ((count > 0).then(|| sum / count as f64), count)
}

/// Aggregates prompts into per-domain and overall curves: unweighted means over the prompts
/// that have at least k candidates, with seeded bootstrap intervals. The domain's `prompts`,
/// `mean` and `oracle` cover all its prompts; each reward's curve covers the prompts that carry
/// that reward (see [`RewardCurve`]).
///
/// Per-prompt values live in flat arrays (prompt-major, one slot per k) so that the aggregation
/// is plain loops: this is the hot path of a million-prompt run.
pub fn bon_report(prompts: &[Prompt], resamples: usize, seed: u64) -> BonReport {
    bon_report_with(prompts, resamples, seed, CurveSelection::Best)
}

/// Subsets enumerated per prompt and k before soft BoN@k is sampled instead.
const SOFT_EXACT_SUBSETS: usize = 5_000;

/// [`bon_report`] under a selection rule: `Best` exactly as there; `Soft` the expected label of
/// the soft pick, exact over every k-subset where there are at most 5,000 of them, else a mean
/// over 5,000 seeded subsets (the largest standard error is reported).
pub fn bon_report_with(prompts: &[Prompt], resamples: usize, seed: u64, selection: CurveSelection) -> BonReport {
    let max_n = prompts.iter().map(|p| p.labels.len()).max().unwrap_or(0);
    let ks = k_grid(max_n);
    let nk = ks.len();
    let names: Vec<String> = prompts
        .iter()
        .flat_map(|p| p.rewards.keys())
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut oracle = vec![f64::NAN; prompts.len() * nk];
    let mut bon: Vec<Vec<f64>> = vec![vec![f64::NAN; prompts.len() * nk]; names.len()];
    let mut means = Vec::with_capacity(prompts.len());
    let mut cache = RatioCache::default();
    let mut order = Vec::new();
    let mut soft_rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let mut soft_error: f64 = 0.0;
    for (i, p) in prompts.iter().enumerate() {
        let rows = cache.rows(p.labels.len(), &ks);
        let slots = i * nk..(i + 1) * nk;
        fill_curve(&p.labels, &p.labels, &ks, rows, &mut order, &mut oracle[slots.clone()]);
        for (r, name) in names.iter().enumerate() {
            let Some(keys) = p.rewards.get(name) else { continue };
            match selection {
                CurveSelection::Best => fill_curve(keys, &p.labels, &ks, rows, &mut order, &mut bon[r][slots.clone()]),
                CurveSelection::Soft { temperature } => {
                    for (ki, &k) in ks.iter().enumerate() {
                        let (value, error) =
                            soft_expected_at_k(keys, &p.labels, k, temperature, SOFT_EXACT_SUBSETS, &mut soft_rng);
                        bon[r][i * nk + ki] = value;
                        soft_error = soft_error.max(error);
                    }
                }
            }
        }
        means.push(p.labels.iter().sum::<f64>() / p.labels.len().max(1) as f64);
    }
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        groups.entry("all").or_default().push(i);
        groups.entry(p.domain.as_str()).or_default().push(i);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut domains = BTreeMap::new();
    let mut values = Vec::new();
    for (domain, members) in groups {
        let (oracle_mean, prompts_per_k): (Vec<Option<f64>>, Vec<usize>) =
            (0..nk).map(|ki| slot_mean(&oracle, &members, nk, ki)).unzip();
        let mut rewards = BTreeMap::new();
        for (r, name) in names.iter().enumerate() {
            // k = 1 is defined for every prompt with candidates: NaN there means no reward.
            let carrying: Vec<usize> = members.iter().copied().filter(|&i| !bon[r][i * nk].is_nan()).collect();
            if carrying.is_empty() {
                continue;
            }
            let mut curve = RewardCurve {
                prompts: vec![],
                mean: mean_of(&carrying.iter().map(|&i| means[i]).collect::<Vec<_>>()),
                oracle: vec![],
                bon: vec![],
                ci_low: vec![],
                ci_high: vec![],
                gain: vec![],
                gap_closed: vec![],
            };
            for ki in 0..nk {
                let (reward_oracle, count) = slot_mean(&oracle, &carrying, nk, ki);
                values.clear();
                let mut base = 0.0;
                for &i in &carrying {
                    let v = bon[r][i * nk + ki];
                    if !v.is_nan() {
                        values.push(v);
                        base += means[i];
                    }
                }
                let value = mean_of(&values);
                let base = (!values.is_empty()).then(|| base / values.len() as f64);
                let (low, high) = bootstrap(&values, resamples, &mut rng);
                let gain = value.zip(base).map(|(v, b)| v - b);
                curve.gap_closed.push(
                    gain.zip(reward_oracle.zip(base)).and_then(|(g, (o, b))| (o - b > 1e-12).then(|| g / (o - b))),
                );
                curve.prompts.push(count);
                curve.oracle.push(reward_oracle);
                curve.bon.push(value);
                curve.ci_low.push(low);
                curve.ci_high.push(high);
                curve.gain.push(gain);
            }
            rewards.insert(name.clone(), curve);
        }
        let mean = mean_of(&members.iter().map(|&i| means[i]).collect::<Vec<_>>());
        domains.insert(domain.to_string(), DomainCurves { prompts: prompts_per_k, mean, oracle: oracle_mean, rewards });
    }
    BonReport {
        k: ks,
        domains,
        recorded_pick: BTreeMap::new(),
        selection: selection_label(selection),
        max_standard_error: (soft_error > 0.0).then_some(soft_error),
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

/// Renders a report: a text table, JSON, CSV (one row per domain, series and k) or Markdown.
pub fn render_bon(report: &BonReport, format: super::Format) -> String {
    use super::Format;
    if format == Format::Json {
        return serde_json::to_string_pretty(report).unwrap_or_default() + "\n";
    }
    if format == Format::Csv {
        let mut out = String::from("domain,series,k,prompts,value,ci_low,ci_high,gain\n");
        for (domain, d) in &report.domains {
            for (ki, k) in report.k.iter().enumerate() {
                out.push_str(&format!("{domain},oracle,{k},{},{},,,\n", d.prompts[ki], cell(d.oracle[ki])));
                for (name, r) in &d.rewards {
                    out.push_str(&format!(
                        "{domain},{name},{k},{},{},{},{},{}\n",
                        r.prompts[ki],
                        cell(r.bon[ki]),
                        cell(r.ci_low[ki]),
                        cell(r.ci_high[ki]),
                        cell(r.gain[ki])
                    ));
                }
            }
        }
        return out;
    }
    let ks: Vec<String> = report.k.iter().map(|k| format!("@{k}")).collect();
    let picked = |domain: &str| report.recorded_pick.get(domain);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (domain, d) in &report.domains {
        rows.push([vec![domain.clone(), "prompts".into()], d.prompts.iter().map(|p| p.to_string()).collect()].concat());
        rows.push([vec![domain.clone(), "mean@1".into()], report.k.iter().map(|_| cell(d.mean)).collect()].concat());
        rows.push([vec![domain.clone(), "oracle".into()], d.oracle.iter().map(|v| cell(*v)).collect()].concat());
        if let Some(p) = picked(domain) {
            let label = format!("recorded pick ({} prompts)", p.prompts);
            rows.push(
                [vec![domain.clone(), label], report.k.iter().map(|_| cell(Some(p.accuracy))).collect()].concat(),
            );
        }
        for (name, r) in &d.rewards {
            if r.prompts != d.prompts {
                // Not every prompt carries this reward: its block has its own baseline rows.
                let row = |series: String, cells: Vec<String>| [vec![domain.clone(), series], cells].concat();
                rows.push(row(format!("prompts {name}"), r.prompts.iter().map(|p| p.to_string()).collect()));
                rows.push(row(format!("mean@1 {name}"), report.k.iter().map(|_| cell(r.mean)).collect()));
                rows.push(row(format!("oracle {name}"), r.oracle.iter().map(|v| cell(*v)).collect()));
            }
            rows.push([vec![domain.clone(), format!("bon {name}")], r.bon.iter().map(|v| cell(*v)).collect()].concat());
            rows.push(
                [
                    vec![domain.clone(), format!("  95% ci {name}")],
                    r.ci_low.iter().zip(&r.ci_high).map(|(l, h)| format!("{}..{}", cell(*l), cell(*h))).collect(),
                ]
                .concat(),
            );
            rows.push(
                [vec![domain.clone(), format!("gain {name}")], r.gain.iter().map(|v| cell(*v)).collect()].concat(),
            );
            rows.push(
                [vec![domain.clone(), format!("gap closed {name}")], r.gap_closed.iter().map(|v| cell(*v)).collect()]
                    .concat(),
            );
        }
    }
    let header = [vec!["domain".to_string(), "series".to_string()], ks].concat();
    if format == Format::Md {
        let mut out = format!("| {} |\n|{}|\n", header.join(" | "), vec!["---"; header.len()].join("|"));
        for r in rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        return out;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |r: &[String]| {
        r.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut out = line(&header) + "\n";
    for r in rows {
        out.push_str(&(line(&r) + "\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_prompts_per_k_and_domains() {
        let p = |id: &str, d: &str, labels: Vec<f64>, r: Vec<f64>| Prompt {
            id: id.into(),
            domain: d.into(),
            labels,
            rewards: [("rm".to_string(), r)].into_iter().collect(),
        };
        let prompts = vec![
            p("a", "math", vec![0.0, 1.0, 0.0, 0.0], vec![0.1, 0.9, 0.2, 0.3]),
            p("b", "math", vec![1.0, 0.0], vec![0.0, 1.0]),
            p("c", "code", vec![0.0, 1.0, 1.0, 0.0], vec![1.0, 2.0, 3.0, 4.0]),
        ];
        let r = bon_report(&prompts, 200, 7);
        assert_eq!(r.k, vec![1, 2, 4]);
        let all = &r.domains["all"];
        assert_eq!(all.prompts, vec![3, 3, 2], "prompt b has only 2 candidates");
        let math = &r.domains["math"];
        assert_eq!(math.rewards["rm"].bon[2], Some(1.0), "the RM picks the correct answer of a at k = 4");
        assert_eq!(math.oracle[2], Some(1.0));
        let code = &r.domains["code"];
        assert_eq!(code.rewards["rm"].bon[2], Some(0.0), "the RM picks the wrong top answer of c");
        assert_eq!(code.mean, Some(0.5));
        let again = bon_report(&prompts, 200, 7);
        assert_eq!(r, again, "seeded bootstrap is reproducible");
        let ci = (all.rewards["rm"].ci_low[1].unwrap(), all.rewards["rm"].ci_high[1].unwrap());
        assert!(ci.0 <= all.rewards["rm"].bon[1].unwrap() && all.rewards["rm"].bon[1].unwrap() <= ci.1);
    }

    #[test]
    fn each_reward_is_reported_on_the_prompts_that_carry_it() {
        let p = |id: &str, labels: Vec<f64>, rewards: Vec<(&str, Vec<f64>)>| Prompt {
            id: id.into(),
            domain: "math".into(),
            labels,
            rewards: rewards.into_iter().map(|(n, r)| (n.to_string(), r)).collect(),
        };
        // As recorded through per-domain routing: one prompt scored by a judge, three by verify.
        let prompts = vec![
            p("a", vec![0.0, 0.0], vec![("judge", vec![1.0, 2.0])]),
            p("b", vec![1.0, 0.0], vec![("verify", vec![1.0, 0.0])]),
            p("c", vec![1.0, 1.0], vec![("verify", vec![0.0, 1.0])]),
            p("d", vec![0.0, 1.0], vec![("verify", vec![1.0, 0.0])]),
        ];
        let report = bon_report(&prompts, 0, 1);
        let all = &report.domains["all"];
        assert_eq!(all.prompts, vec![4, 4]);
        assert_eq!(all.mean, Some(0.5));
        let verify = &all.rewards["verify"];
        let judge = &all.rewards["judge"];
        assert_eq!((verify.prompts.clone(), judge.prompts.clone()), (vec![3, 3], vec![1, 1]));
        for curve in [verify, judge] {
            assert_eq!(curve.bon[0], curve.mean, "BoN@1 is mean@1 on the same prompts");
            assert_eq!(curve.gain[0], Some(0.0));
            let closed = curve.gain[1].zip(curve.oracle[1].zip(curve.mean)).map(|(g, (o, m))| g / (o - m));
            assert_eq!(curve.gap_closed[1], closed.filter(|c| c.is_finite()), "gap closed follows from the rows");
        }
        assert!((verify.mean.unwrap() - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(verify.bon[1], Some(2.0 / 3.0), "verify picks b's and c's correct candidates, d's wrong one");
        assert_eq!((judge.mean, judge.oracle[1]), (Some(0.0), Some(0.0)));

        // --common keeps only prompts with every reward: here none, since no prompt has both.
        assert!(common_prompts(&prompts).is_empty());
        let mut both = prompts.clone();
        both[1].rewards.insert("judge".into(), vec![0.0, 5.0]);
        let common = common_prompts(&both);
        assert_eq!(common.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec!["b"]);
        let r = bon_report(&common, 0, 1);
        let all = &r.domains["all"];
        assert_eq!((all.rewards["judge"].prompts[0], all.rewards["verify"].prompts[0], all.prompts[0]), (1, 1, 1));
        assert_eq!((all.rewards["judge"].bon[1], all.rewards["verify"].bon[1]), (Some(0.0), Some(1.0)));
    }
}
