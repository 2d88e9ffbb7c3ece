//! Correlation between benchmark scores and downstream results across reward models: Pearson,
//! Spearman (average ranks) and Kendall tau-b, with pairwise deletion, seeded bootstrap
//! intervals and p-values. Written here: statrs has no correlation functions, and the t
//! distribution needs only the regularized incomplete beta below.

use crate::bon::select::ln_gamma;
use std::collections::BTreeMap;

use serde::Serialize;

/// Which coefficient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Linear correlation.
    Pearson,
    /// Pearson on average ranks.
    Spearman,
    /// Kendall's tau-b (tie-corrected).
    Kendall,
}

impl Method {
    /// The name the command line and the reports use.
    pub fn name(self) -> &'static str {
        match self {
            Method::Pearson => "pearson",
            Method::Spearman => "spearman",
            Method::Kendall => "kendall",
        }
    }
}

/// Pearson's r; NaN when either side is constant or fewer than 2 pairs.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if x.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks 1..n, ties given the average of the ranks they span.
pub fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && v[order[j]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j + 1) as f64 / 2.0;
        for &idx in &order[i..j] {
            ranks[idx] = rank;
        }
        i = j;
    }
    ranks
}

/// Spearman's rho: Pearson on average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y)).
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    let (mut concordant, mut discordant, mut ties_x, mut ties_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = (x[i] - x[j]).signum() * f64::from(u8::from(x[i] != x[j]));
            let dy = (y[i] - y[j]).signum() * f64::from(u8::from(y[i] != y[j]));
            match (dx == 0.0, dy == 0.0) {
                (true, true) => {
                    ties_x += 1;
                    ties_y += 1;
                }
                (true, false) => ties_x += 1,
                (false, true) => ties_y += 1,
                (false, false) if dx == dy => concordant += 1,
                (false, false) => discordant += 1,
            }
        }
    }
    let n0 = (n * n.saturating_sub(1) / 2) as i64;
    let denom = (((n0 - ties_x) * (n0 - ties_y)) as f64).sqrt();
    (concordant - discordant) as f64 / denom
}

/// The regularized incomplete beta I_x(a, b), by Lentz's continued fraction.
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(1.0 - x, b, a);
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp() / a;
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    d = if d.abs() < tiny { tiny } else { d };
    d = 1.0 / d;
    let mut f = d;
    for m in 1..300 {
        let m = f64::from(m);
        for step in 0..2 {
            let numerator = if step == 0 {
                m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
            } else {
                -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
            };
            d = 1.0 + numerator * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = 1.0 + numerator / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * f
}

/// Two-sided p-value of Student's t with `df` degrees of freedom.
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return if t.is_nan() { f64::NAN } else { 0.0 };
    }
    incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
}

/// Two-sided p-value of a standard normal z: erfc(|z|/√2), via the incomplete gamma-free
/// identity P(|Z| > z) = I_{1/(1+z²/n)} for n → ∞ approximated with a large df.
fn normal_two_sided_p(z: f64) -> f64 {
    t_two_sided_p(z, 1e7)
}

/// The p-value of a coefficient `r` from `n` pairs: t-test for Pearson and Spearman, the normal
/// approximation for Kendall.
pub fn p_value(method: Method, r: f64, n: usize) -> f64 {
    if n < 3 || r.is_nan() {
        return f64::NAN;
    }
    let nf = n as f64;
    match method {
        Method::Pearson | Method::Spearman => {
            if r.abs() >= 1.0 {
                return 0.0;
            }
            t_two_sided_p(r * ((nf - 2.0) / (1.0 - r * r)).sqrt(), nf - 2.0)
        }
        Method::Kendall => normal_two_sided_p(3.0 * r * (nf * (nf - 1.0)).sqrt() / (2.0 * (2.0 * nf + 5.0)).sqrt()),
    }
}

/// A coefficient.
pub fn coefficient(method: Method, x: &[f64], y: &[f64]) -> f64 {
    let r = match method {
        Method::Pearson => pearson(x, y),
        Method::Spearman => spearman(x, y),
        Method::Kendall => kendall_tau_b(x, y),
    };
    // Rounding can carry a perfect correlation a hair past ±1.
    r.clamp(-1.0, 1.0)
}

/// One cell of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cell {
    /// The coefficient (null when undefined).
    pub r: Option<f64>,
    /// Pairs with both values present.
    pub n: usize,
    /// Bootstrap 95% interval.
    pub ci_low: Option<f64>,
    /// Bootstrap 95% interval.
    pub ci_high: Option<f64>,
    /// Two-sided p-value.
    pub p: Option<f64>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// One cell: pairwise deletion of missing values, the coefficient, a seeded percentile
/// bootstrap over pairs, and the p-value.
pub fn cell(method: Method, x: &[Option<f64>], y: &[Option<f64>], resamples: usize, seed: u64) -> Cell {
    let (xs, ys): (Vec<f64>, Vec<f64>) = x.iter().zip(y).filter_map(|(a, b)| Some(((*a)?, (*b)?))).unzip();
    let n = xs.len();
    let r = coefficient(method, &xs, &ys);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut draws: Vec<f64> = Vec::new();
    if n >= 3 {
        for _ in 0..resamples {
            let idx: Vec<usize> = (0..n).map(|_| rng.usize(..n)).collect();
            let bx: Vec<f64> = idx.iter().map(|&i| xs[i]).collect();
            let by: Vec<f64> = idx.iter().map(|&i| ys[i]).collect();
            let v = coefficient(method, &bx, &by);
            if v.is_finite() {
                draws.push(v);
            }
        }
    }
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws.get(((q * (draws.len().saturating_sub(1)) as f64).round()) as usize).copied();
    Cell { r: finite(r), n, ci_low: at(0.025), ci_high: at(0.975), p: finite(p_value(method, r, n)) }
}

/// The grid: method → y column → x column → cell.
pub type Grid = BTreeMap<Method, BTreeMap<String, BTreeMap<String, Cell>>>;

/// Every (y, x) pair for every method.
pub fn grid(
    columns: &BTreeMap<String, Vec<Option<f64>>>,
    xs: &[String],
    ys: &[String],
    methods: &[Method],
    resamples: usize,
    seed: u64,
) -> Grid {
    methods
        .iter()
        .map(|&m| {
            let rows = ys
                .iter()
                .map(|y| {
                    let cells =
                        xs.iter().map(|x| (x.clone(), cell(m, &columns[x], &columns[y], resamples, seed))).collect();
                    (y.clone(), cells)
                })
                .collect();
            (m, rows)
        })
        .collect()
}

/// How a cell's coefficient, interval and p-value read in the table and Markdown formats, in
/// three parts: `0.915`, `[0.80, 0.97]` (`[-]` where there is no interval) and `p=0.001`
/// (`p<0.001` below it); an undefined coefficient is `-` alone.
pub fn cell_parts(c: &Cell) -> [String; 3] {
    let Some(r) = c.r else { return ["-".into(), String::new(), String::new()] };
    let interval = match (c.ci_low, c.ci_high) {
        (Some(low), Some(high)) => format!("[{low:.2}, {high:.2}]"),
        _ => "[-]".into(),
    };
    let p = match c.p {
        Some(p) if p < 0.0005 => "p<0.001".into(),
        Some(p) => format!("p={p:.3}"),
        None => "p=-".into(),
    };
    [format!("{r:.3}"), interval, p]
}

/// A cell as one text, e.g. `0.915 [0.80, 0.97] p=0.001` (see [`cell_parts`]).
pub fn cell_text(c: &Cell) -> String {
    cell_parts(c).iter().filter(|p| !p.is_empty()).cloned().collect::<Vec<_>>().join(" ")
}

/// The line under the table and Markdown formats that says what a cell holds; `resamples` and
/// `seed` are the bootstrap's (0 resamples: no intervals).
pub fn legend(resamples: usize, seed: u64) -> String {
    let intervals = if resamples == 0 {
        "no intervals ([-]: --bootstrap 0)".to_string()
    } else {
        format!("percentile bootstrap over rows ({resamples} resamples, seed {seed}; [-]: fewer than 3 pairs)")
    };
    format!("r [95% interval] p: {intervals}; two-sided p-value (t test; Kendall: normal approximation)")
}

/// Renders the grid: JSON `{method: {y: {x: {r, n, ci_low, ci_high, p}}}}` (null where
/// undefined); CSV, one line a cell with columns `method,y,x,r,n,ci_low,ci_high,p` (empty where
/// undefined); or per method a table (y rows by x columns, like the paper's Figure 3) of
/// [`cell_text`]s as aligned text or Markdown, followed by the [`legend`]. `resamples` and `seed`
/// are the bootstrap's.
pub fn render_grid(grid: &Grid, xs: &[String], format: super::Format, resamples: usize, seed: u64) -> String {
    use super::Format;
    match format {
        Format::Json => serde_json::to_string_pretty(grid).unwrap_or_default() + "\n",
        Format::Csv => render_csv(grid),
        Format::Table | Format::Md => {
            let md = format == Format::Md;
            let mut out = String::new();
            for (method, rows) in grid {
                let title = method.name();
                if md {
                    out.push_str(&format!(
                        "| {title} | {} |\n|---|{}|\n",
                        xs.join(" | "),
                        vec!["---:"; xs.len()].join("|")
                    ));
                    for (y, cells) in rows {
                        let values: Vec<String> =
                            xs.iter().map(|x| cells.get(x).map(cell_text).unwrap_or_default()).collect();
                        out.push_str(&format!("| {y} | {} |\n", values.join(" | ")));
                    }
                } else {
                    out.push_str(&aligned_table(title, rows, xs));
                }
                out.push('\n');
            }
            out.push_str(&legend(resamples, seed));
            out.push('\n');
            out
        }
    }
}

/// One method's grid as aligned text: y names left-aligned, then per x column the coefficients
/// right-aligned, the intervals and the p-values each in a column of their own.
fn aligned_table(title: &str, rows: &BTreeMap<String, BTreeMap<String, Cell>>, xs: &[String]) -> String {
    let len = |s: &str| s.chars().count();
    let parts: Vec<(&String, Vec<[String; 3]>)> = rows
        .iter()
        .map(|(y, cells)| (y, xs.iter().map(|x| cells.get(x).map(cell_parts).unwrap_or_default()).collect()))
        .collect();
    // Per x column: the width of each part, then of the whole, which its name may widen.
    let widths: Vec<([usize; 3], usize)> = xs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let mut w = [0; 3];
            for (_, cells) in &parts {
                for (k, part) in cells.get(i).into_iter().flatten().enumerate() {
                    w[k] = w[k].max(len(part));
                }
            }
            let whole = w[0] + if w[1] > 0 { w[1] + 1 } else { 0 } + if w[2] > 0 { w[2] + 1 } else { 0 };
            (w, whole.max(len(x)))
        })
        .collect();
    let first = rows.keys().map(|y| len(y)).chain([len(title)]).max().unwrap_or(1);
    let mut out = format!("{title:<first$}");
    for (x, (_, whole)) in xs.iter().zip(&widths) {
        out.push_str(&format!("  {x:>whole$}"));
    }
    out.push('\n');
    for (y, cells) in &parts {
        let mut line = format!("{y:<first$}");
        for ([r, interval, p], ([wr, wi, wp], whole)) in cells.iter().zip(&widths) {
            let mut text = format!("{r:>wr$}");
            if *wi > 0 {
                text.push_str(&format!(" {interval:<wi$}"));
            }
            if *wp > 0 {
                text.push_str(&format!(" {p:<wp$}"));
            }
            line.push_str(&format!("  {text:>whole$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The CSV format: one line a cell, names quoted as CSV needs, numbers to 6 decimals (a p-value
/// below 0.001 in scientific notation), empty where undefined.
fn render_csv(grid: &Grid) -> String {
    let number = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    // A small p keeps its significant digits.
    let p_value = |v: Option<f64>| match v {
        Some(p) if p != 0.0 && p < 1e-3 => format!("{p:.3e}"),
        other => number(other),
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut write = |record: &[String]| writer.write_record(record).is_ok();
    let header = ["method", "y", "x", "r", "n", "ci_low", "ci_high", "p"].map(String::from);
    let mut ok = write(&header);
    for (method, rows) in grid {
        for (y, cells) in rows {
            for (x, c) in cells {
                ok &= write(&[
                    method.name().to_string(),
                    y.clone(),
                    x.clone(),
                    number(c.r),
                    c.n.to_string(),
                    number(c.ci_low),
                    number(c.ci_high),
                    p_value(c.p),
                ]);
            }
        }
    }
    // Writing to memory does not fail.
    let bytes = if ok { writer.into_inner().unwrap_or_default() } else { Vec::new() };
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hand_computed_references() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 1.0, 4.0, 3.0, 5.0];
        assert!((pearson(&x, &y) - 0.8).abs() < 1e-12);
        assert!((spearman(&x, &y) - 0.8).abs() < 1e-12);
        // 8 concordant, 2 discordant of 10 pairs.
        assert!((kendall_tau_b(&x, &y) - 0.6).abs() < 1e-12);
        assert_eq!(average_ranks(&[10.0, 20.0, 20.0, 5.0]), vec![2.0, 3.5, 3.5, 1.0]);
        // tau-b with ties: x has one tied pair, y none.
        let tb = kendall_tau_b(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((tb - 5.0 / (5.0f64 * 6.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn p_values_match_tables() {
        // t = 2.228 with 10 df is the two-sided 5% point; t = 3.169, the 1% point.
        assert!((t_two_sided_p(2.228, 10.0) - 0.05).abs() < 5e-4);
        assert!((t_two_sided_p(3.169, 10.0) - 0.01).abs() < 2e-4);
        assert!((normal_two_sided_p(1.959_964) - 0.05).abs() < 1e-5);
        assert!((ln_gamma(5.0) - 24.0f64.ln()).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn invariances(pairs in prop::collection::vec((-100.0f64..100.0, -100.0f64..100.0), 4..20), a in 0.1f64..10.0, b in -50.0f64..50.0) {
            let (x, y): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
            let affine: Vec<f64> = x.iter().map(|v| a * v + b).collect();
            let monotone: Vec<f64> = x.iter().map(|v| v.powi(3) + 7.0).collect();
            let (p0, p1) = (pearson(&x, &y), pearson(&affine, &y));
            prop_assert!(p0.is_nan() || (p0 - p1).abs() < 1e-9);
            let (s0, s1) = (spearman(&x, &y), spearman(&monotone, &y));
            prop_assert!(s0.is_nan() || (s0 - s1).abs() < 1e-9);
            let (k0, k1) = (kendall_tau_b(&x, &y), kendall_tau_b(&monotone, &y));
            prop_assert!(k0.is_nan() || (k0 - k1).abs() < 1e-9);
        }
    }

    #[test]
    fn pairwise_deletion_counts_pairs() {
        let x = [Some(1.0), None, Some(3.0), Some(4.0), Some(5.0)];
        let y = [Some(2.0), Some(9.0), None, Some(3.0), Some(5.0)];
        let c = cell(Method::Pearson, &x, &y, 100, 1);
        assert_eq!(c.n, 3);
        assert!((c.r.unwrap() - pearson(&[1.0, 4.0, 5.0], &[2.0, 3.0, 5.0])).abs() < 1e-12);
        assert_eq!(c, cell(Method::Pearson, &x, &y, 100, 1), "seeded");
    }
}
