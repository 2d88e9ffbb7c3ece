//! How fast `eval bon` computes exact BoN@k curves: 1,000,000 prompts x 16 candidates x 2
//! rewards on one core (the target is under 10 s). Prints numbers; asserts nothing.
//!
//! Run: `cargo bench --bench bon_speed` (BESTOFN_BENCH_PROMPTS overrides the prompt count).

use std::time::Instant;

use bestofn::eval::bon::{Prompt, bon_report};

mod common;

fn main() {
    let prompts = common::bench_prompts();
    let n = 16;
    let built = Instant::now();
    let data: Vec<Prompt> = common::synthetic(prompts, n, &[("rm_a", 1.5), ("rm_b", 3.0)], |p, _| Prompt {
        id: p.id,
        domain: p.domain,
        labels: p.labels,
        rewards: p.rewards,
    });
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
