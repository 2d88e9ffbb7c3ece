//! How fast the consensus scorer is: 64 candidates of 1,000 tokens each, free text (token F1)
//! and final answers (majority vote). Prints numbers; asserts nothing.
//!
//! Run: `cargo bench --bench consensus_speed`.

use std::time::Instant;

use bestofn::score::consensus_scores;

fn main() {
    let mut rng = fastrand::Rng::with_seed(9);
    let vocabulary: Vec<String> = (0..5000)
        .map(|i| format!("w{}x", char::from(b'a' + (i % 26) as u8).to_string().repeat(1 + i / 26 % 5)))
        .collect();
    let free: Vec<String> = (0..64)
        .map(|_| {
            (0..1000)
                .map(|_| vocabulary[rng.usize(..vocabulary.len())].replace(char::is_numeric, ""))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let answers: Vec<String> =
        free.iter().enumerate().map(|(i, t)| format!("{t} so the answer is {}", i % 3)).collect();
    for (name, candidates) in [("token F1 (free text)", &free), ("majority vote (final answers)", &answers)] {
        let runs = 50;
        let started = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(consensus_scores(std::hint::black_box(candidates)));
        }
        let per = started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs);
        println!("consensus, 64 candidates x 1000 tokens, {name}: {per:.2} ms per request");
    }
}
