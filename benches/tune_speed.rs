//! How fast `eval tune` picks per-domain policies: 1,000,000 prompts x 16 candidates x 3
//! scorers, fixed N = 1..16, cost-per-sample objective, on one core (the target is under 30 s).
//! Prints numbers; asserts nothing.
//!
//! Run: `cargo bench --bench tune_speed` (BESTOFN_BENCH_PROMPTS overrides the prompt count).

use std::collections::BTreeMap;
use std::time::Instant;

use bestofn::eval::tune::{Objective, TuneOptions, TunePrompt, tune_prompts};

mod common;

fn main() {
    let prompts = common::bench_prompts();
    let n = 16;
    let built = Instant::now();
    let scorers = [("rm_a", 1.5), ("rm_b", 3.0), ("verify", 0.5)];
    let data: Vec<TunePrompt<'static>> = common::synthetic(prompts, n, &scorers, |p, rng| TunePrompt {
        id: p.id,
        domain: p.domain,
        row: None,
        labels: p.labels,
        rewards: p.rewards,
        costs: (0..n).map(|_| 20.0 + 40.0 * rng.f64()).collect(),
    });
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
