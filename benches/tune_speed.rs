//! How fast `eval tune` picks per-domain policies: 1,000,000 prompts x 16 candidates x 3
//! scorers, fixed N = 1..16, cost-per-sample objective, on one core (the target is under 30 s).
//! Prints numbers; asserts nothing.
//!
//! Run: `cargo bench --bench tune_speed` (BESTOFN_BENCH_PROMPTS overrides the prompt count).

use std::collections::BTreeMap;
use std::time::Instant;

use bestofn::eval::tune::{Objective, TuneOptions, TunePrompt, tune_prompts};

fn main() {
    let prompts: usize = std::env::var("BESTOFN_BENCH_PROMPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let n = 16;
    let mut rng = fastrand::Rng::with_seed(42);
    let domains = ["math", "code", "precise_if", "factuality"];
    let built = Instant::now();
    let data: Vec<TunePrompt<'static>> = (0..prompts)
        .map(|i| {
            let labels: Vec<f64> = (0..n).map(|_| f64::from(u8::from(rng.f64() < 0.3))).collect();
            let reward = |rng: &mut fastrand::Rng, noise: f64| -> Vec<f64> {
                labels.iter().map(|l| ((l + noise * rng.f64()) * 8.0).round() / 8.0).collect()
            };
            let mut rewards = BTreeMap::new();
            rewards.insert("rm_a".to_string(), reward(&mut rng, 1.5));
            rewards.insert("rm_b".to_string(), reward(&mut rng, 3.0));
            rewards.insert("verify".to_string(), reward(&mut rng, 0.5));
            TunePrompt {
                id: i.to_string(),
                domain: domains[i % domains.len()].to_string(),
                row: None,
                labels,
                rewards,
                costs: (0..n).map(|_| 20.0 + 40.0 * rng.f64()).collect(),
            }
        })
        .collect();
    println!("built {prompts} prompts x {n} candidates x 3 scorers in {:.2} s", built.elapsed().as_secs_f64());
    let options = TuneOptions {
        objective: Objective::CostPerSample(0.005),
        scorers: None,
        max_n: None,
        adaptive: false,
        split: None,
        seed: 1,
        min_prompts: 10,
        resamples: 200,
        orders: 20,
        rewardbench: BTreeMap::new(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return;
        }
    };
    let started = Instant::now();
    match runtime.block_on(tune_prompts(data, &options)) {
        Ok(report) => {
            println!("tuned in {:.2} s (one thread)", started.elapsed().as_secs_f64());
            for (domain, d) in &report.domains {
                println!("  {domain}: {:?} n={:?} accuracy {:?}", d.scorer, d.n, d.expected_accuracy);
            }
        }
        Err(e) => eprintln!("tune failed: {e}"),
    }
}
