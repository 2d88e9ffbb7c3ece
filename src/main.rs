//! The `bestofn` command line: parses arguments and calls into the library.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bestofn::config::Config;
use bestofn::server::{AppState, serve};

/// OpenAI-compatible best-of-N proxy.
#[derive(Parser)]
#[command(name = "bestofn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Listen address, overriding [server].listen (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a config file and print the effective config, defaults included.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Offline evaluation of scorers and selection.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// RewardBench 2 (or v1) accuracy of a scorer, computed exactly as the official code does.
    Rewardbench(RewardbenchArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Benchmark {
    V2,
    V1,
}

#[derive(clap::Args)]
struct RewardbenchArgs {
    /// Which benchmark's rules.
    #[arg(long, value_enum, default_value = "v2")]
    benchmark: Benchmark,
    /// Per-item scores (JSONL: {"id","subset","num_correct","scores":[correct first, then incorrect]}).
    #[arg(long, conflicts_with = "dataset")]
    scores: Option<PathBuf>,
    /// The dataset (RewardBench 2 fields; .parquet with the `parquet` feature, else JSONL).
    #[arg(long, requires_all = ["config", "scorer"])]
    dataset: Option<PathBuf>,
    /// Config file holding the scorer.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The scorer's name in the config.
    #[arg(long)]
    scorer: Option<String>,
    /// Where per-item scores are written; rows already there are skipped (resume).
    #[arg(long)]
    scores_out: Option<PathBuf>,
    /// Rows scored at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Only the first N rows (after the subset filter).
    #[arg(long)]
    limit: Option<usize>,
    /// Only these subsets (repeatable).
    #[arg(long)]
    subset: Vec<String>,
    /// The Ties formula: the repository's current one, or the paper-time one.
    #[arg(long, value_enum, default_value = "current")]
    ties_variant: TiesVariantArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: bestofn::eval::Format,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TiesVariantArg {
    Current,
    Paper,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let config = Config::from_file(&file)?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Eval {
            what: EvalCommand::Rewardbench(args),
        } => eval_rewardbench(args),
        Command::Serve { config, listen } => {
            let mut config = Config::from_file(&config)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve_forever(config))
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

async fn serve_forever(config: Config) -> anyhow::Result<()> {
    let state = Arc::new(AppState::from_config(&config)?);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    tracing::info!("bestofn listening on http://{addr}");
    serve(listener, state, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn eval_rewardbench(args: RewardbenchArgs) -> anyhow::Result<()> {
    use bestofn::eval::rewardbench::{TiesVariant, rewardbench1, rewardbench2};
    use bestofn::eval::{input, render_report, score_dataset};

    let keep = |subset: &str| args.subset.is_empty() || args.subset.iter().any(|s| s == subset);
    let rows = match (&args.scores, &args.dataset) {
        (Some(path), _) => {
            let mut rows = input::read_scores(path)?;
            rows.retain(|r| keep(&r.subset));
            rows.truncate(args.limit.unwrap_or(usize::MAX));
            rows
        }
        (None, Some(path)) => {
            let mut dataset = input::read_dataset(path)?;
            dataset.retain(|r| keep(&r.subset));
            dataset.truncate(args.limit.unwrap_or(usize::MAX));
            let config_path = args.config.as_ref().context("--dataset needs --config")?;
            let name = args.scorer.as_ref().context("--dataset needs --scorer")?;
            let config = Config::from_file(config_path)?;
            let scorer_config = config
                .scorers
                .get(name)
                .with_context(|| format!("{}: no scorer named '{name}'", config_path.display()))?;
            let client = bestofn::wiring::http_client()?;
            let scorer = bestofn::wiring::build_scorer(&client, name, scorer_config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let wanted: std::collections::HashSet<String> = dataset.iter().map(|r| r.id.clone()).collect();
            let mut scored = runtime.block_on(score_dataset(
                dataset,
                scorer,
                args.concurrency,
                args.scores_out.as_deref(),
                show,
            ))?;
            // A resumed scores file may hold rows outside this run's filters.
            scored.retain(|r| wanted.contains(&r.id));
            scored
        }
        (None, None) => anyhow::bail!("give --scores FILE, or --dataset FILE with --config and --scorer"),
    };
    if rows.is_empty() {
        anyhow::bail!("no rows to evaluate (check --subset and --limit)");
    }
    let report = match args.benchmark {
        Benchmark::V2 => {
            let variant = match args.ties_variant {
                TiesVariantArg::Current => TiesVariant::Current,
                TiesVariantArg::Paper => TiesVariant::Paper,
            };
            rewardbench2(&rows, variant)
        }
        Benchmark::V1 => rewardbench1(&rows),
    };
    print!("{}", render_report(&report, args.format));
    if args.format != bestofn::eval::Format::Json {
        for note in &report.notes {
            eprintln!("note: {note}");
        }
    }
    Ok(())
}
