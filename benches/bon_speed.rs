//! How fast `eval bon` computes exact BoN@k curves: 1,000,000 prompts x 16 candidates x 2
//! rewards on one core (the target is under 10 s). Prints numbers; asserts nothing.
//!
//! Run: `cargo bench --bench bon_speed` (BESTOFN_BENCH_PROMPTS overrides the prompt count).

use std::collections::BTreeMap;
use std::time::Instant;

use bestofn::eval::bon::{Prompt, bon_report};

fn main() {
    let prompts: usize = std::env::var("BESTOFN_BENCH_PROMPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let n = 16;
    let mut rng = fastrand::Rng::with_seed(42);
    let domains = ["math", "code", "precise_if", "factuality"];
    let built = Instant::now();
    let data: Vec<Prompt> = (0..prompts)
        .map(|i| {
            let labels: Vec<f64> = (0..n).map(|_| f64::from(u8::from(rng.f64() < 0.3))).collect();
            // Rewards correlated with the label, quantised so that ties occur.
            let reward = |rng: &mut fastrand::Rng, noise: f64| -> Vec<f64> {
                labels.iter().map(|l| ((l + noise * rng.f64()) * 8.0).round() / 8.0).collect()
            };
            let mut rewards = BTreeMap::new();
            rewards.insert("rm_a".to_string(), reward(&mut rng, 1.5));
            rewards.insert("rm_b".to_string(), reward(&mut rng, 3.0));
            Prompt { id: i.to_string(), domain: domains[i % domains.len()].to_string(), labels, rewards }
        })
        .collect();
    println!("built {prompts} prompts x {n} candidates x 2 rewards in {:.2} s", built.elapsed().as_secs_f64());

    let started = Instant::now();
    let report = bon_report(&data, 0, 0);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "bon_report (exact BoN@k for k in {:?}, no bootstrap): {secs:.2} s, {:.0} prompts/s, one thread",
        report.k,
        prompts as f64 / secs
    );
    let all = &report.domains["all"];
    println!(
        "all: mean@1 {:.4}  oracle@16 {:.4}",
        all.mean.unwrap_or(f64::NAN),
        all.oracle.last().copied().flatten().unwrap_or(f64::NAN)
    );
    for (name, r) in &all.rewards {
        println!(
            "all: {name} BoN@16 {:.4}  gain@16 {:.4}",
            r.bon.last().copied().flatten().unwrap_or(f64::NAN),
            r.gain.last().copied().flatten().unwrap_or(f64::NAN)
        );
    }
}
