//! Writes a labelled and rescored copy of a recorder samples file: the labels and rewards that
//! `bestofn eval bon --gold G --label-with L --rescore R` computes in memory, saved, so that a
//! shipped samples file can be evaluated without a config or a gold file. The same code as the
//! CLI (`eval::label`: gold answers first, then the labelling scorer on the rows still
//! unlabelled, then each rescoring scorer on every row), with scorers built from the config by
//! `wiring::load_scorer`. Fails when a row is left unlabelled. Used by `scripts/make-samples.sh`:
//!
//!   cargo run --release --example label_samples -- --samples IN --out OUT \
//!       [--gold G] [--config C --label-with NAME] [--rescore NAME]...

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use bestofn::eval::label::{ScorePass, apply_gold, read_gold, score_rows};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Samples JSONL as the recorder wrote it.
    #[arg(long)]
    samples: PathBuf,
    /// Where the labelled rows go (overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Gold answers (JSONL {"prompt", "gold"}), applied first.
    #[arg(long)]
    gold: Option<PathBuf>,
    /// Config holding the --label-with and --rescore scorers.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Labels the rows the gold answers left unlabelled (scores clamped to [0, 1]).
    #[arg(long, requires = "config")]
    label_with: Option<String>,
    /// Adds these scorers' rewards to every row (repeatable).
    #[arg(long, requires = "config")]
    rescore: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = bestofn::eval::samples::read_samples(&args.samples)?;
    let mut by_gold = 0;
    if let Some(gold) = &args.gold {
        by_gold = apply_gold(&mut rows, &read_gold(gold)?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let passes = args.label_with.iter().map(|n| (n, ScorePass::Labels));
    for (name, pass) in passes.chain(args.rescore.iter().map(|n| (n, ScorePass::Rewards(n.as_str())))) {
        let config = args.config.as_ref().context("--label-with and --rescore need --config")?;
        let scorer = bestofn::wiring::load_scorer(config, name)?;
        runtime.block_on(score_rows(&mut rows, scorer, pass, 8, &args.samples, false))?;
    }
    if let Some(row) = rows.iter().find(|r| r.record.labels().is_none()) {
        anyhow::bail!("{}:{}: still unlabelled (give --gold or --label-with)", args.samples.display(), row.line);
    }
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out).with_context(|| format!("{}: cannot create", args.out.display()))?,
    );
    for row in &rows {
        serde_json::to_writer(&mut out, &row.record)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprintln!(
        "{} rows ({by_gold} labelled by gold answers, {} by {}) written to {}",
        rows.len(),
        rows.len() - by_gold,
        args.label_with.as_deref().unwrap_or("-"),
        args.out.display()
    );
    Ok(())
}
