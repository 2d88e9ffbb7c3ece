//! Synthetic recorded traffic shared by the offline benchmarks (`bon_speed`, `tune_speed`).

use std::collections::BTreeMap;

/// Prompts to build: BESTOFN_BENCH_PROMPTS, else one million.
pub fn bench_prompts() -> usize {
    std::env::var("BESTOFN_BENCH_PROMPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// One synthetic prompt: 0/1 labels (30% correct) and, per scorer, rewards correlated with them.
pub struct Synthetic {
    /// The prompt's index as text.
    pub id: String,
    /// One of four domains, in turn.
    pub domain: String,
    /// Correctness labels.
    pub labels: Vec<f64>,
    /// Rewards per scorer.
    pub rewards: BTreeMap<String, Vec<f64>>,
}

/// `prompts` prompts of `n` candidates with a reward series per `(scorer, noise)`, seeded, each
/// turned into a benchmark's own type by `make`, which may draw more from the same generator.
pub fn synthetic<P>(
    prompts: usize,
    n: usize,
    scorers: &[(&str, f64)],
    mut make: impl FnMut(Synthetic, &mut fastrand::Rng) -> P,
) -> Vec<P> {
    let mut rng = fastrand::Rng::with_seed(42);
    let domains = ["math", "code", "precise_if", "factuality"];
    (0..prompts)
        .map(|i| {
            let labels: Vec<f64> = (0..n).map(|_| f64::from(u8::from(rng.f64() < 0.3))).collect();
            // Rewards correlated with the label, quantised so that ties occur.
            let mut rewards = BTreeMap::new();
            for (scorer, noise) in scorers {
                let reward = labels.iter().map(|l| ((l + noise * rng.f64()) * 8.0).round() / 8.0).collect();
                rewards.insert(scorer.to_string(), reward);
            }
            let prompt =
                Synthetic { id: i.to_string(), domain: domains[i % domains.len()].to_string(), labels, rewards };
            make(prompt, &mut rng)
        })
        .collect()
}
