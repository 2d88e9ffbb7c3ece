//! The `bestofn` command line: parses arguments and calls into the library.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use bestofn::config::{Config, LogFormat};
use bestofn::server::{AppState, serve};

// Under load glibc's malloc took about a third of the proxy's CPU (perf on N=16 parallel
// sampling: _int_malloc, _int_free, malloc_consolidate and arena lock wake-ups): many small,
// short-lived allocations freed on another thread than the one that made them. mimalloc's
// per-thread heaps avoid the arena locks and the consolidation. Its transparent-huge-page use is
// off (feature no_thp): with it, RSS at 1,000 concurrent requests was 105 MiB instead of 71 MiB
// (glibc: 74 MiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        what: Box<EvalCommand>,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// RewardBench 2 (or v1) accuracy of a scorer, computed exactly as the official code does.
    Rewardbench(RewardbenchArgs),
    /// Best-of-N gain curves per domain from recorded samples.
    Bon(BonArgs),
    /// The configured policy (fixed or adaptive) replayed over recorded candidates.
    Replay(ReplayArgs),
    /// The compute-optimal policy per domain from labelled samples, written as config.
    Tune(Box<TuneArgs>),
    /// Correlations between benchmark and downstream columns across reward models.
    ///
    /// Every format shows each cell's coefficient r, its 95% percentile bootstrap interval over
    /// the rows (--bootstrap resamples, seeded by --seed) and its two-sided p-value. table and md:
    /// one column per --x, one row per --y, a grid per method, cells such as
    /// `0.915 [0.80, 0.97] p<0.001`, where `[-]` is no interval (--bootstrap 0, or fewer than 3
    /// pairs) and `-` an undefined coefficient, then a line saying so. csv: one line a cell,
    /// columns method,y,x,r,n,ci_low,ci_high,p (n: the pairs with both values; empty: none).
    /// json: {method: {y: {x: {r, n, ci_low, ci_high, p}}}} (null: none).
    Correlate(CorrelateArgs),
    /// Recompute the overall of a RewardBench leaderboard CSV and list the rows that disagree.
    Leaderboard(LeaderboardArgs),
}

/// Recorded samples and how the unlabelled ones get labels, shared by the commands that read
/// recorded traffic.
#[derive(clap::Args)]
struct SamplesArgs {
    /// Samples JSONL (the format the recorder writes).
    #[arg(long)]
    samples: PathBuf,
    /// Fill missing correctness labels with this scorer from --config (scores clamped to [0, 1]).
    #[arg(long, requires = "config")]
    label_with: Option<String>,
    /// Gold answers (JSONL {"prompt", "gold"}): unlabelled rows whose prompt has one are labelled
    /// by comparing each candidate's normalised final answer with it. Applied before --label-with.
    #[arg(long)]
    gold: Option<PathBuf>,
    /// Also score every prompt's candidates with these scorers from --config, adding their
    /// rewards (repeatable): compare scorers on the same recorded candidates.
    #[arg(long, requires = "config")]
    rescore: Vec<String>,
    /// Rows scored at once by --label-with and --rescore.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    samples: SamplesArgs,
    /// The config whose policy (per domain: N, scorer, adaptive settings) is replayed.
    #[arg(long)]
    config: PathBuf,
    /// Only this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Arrival orders per prompt (every permutation when there are no more than this).
    #[arg(long, default_value_t = 20)]
    orders: usize,
    /// Replay each recorded request once, as it was served (its recorded order and seed), and
    /// write what it picks to --picks instead of measuring accuracy.
    #[arg(long, requires = "picks")]
    as_recorded: bool,
    /// With --as-recorded: one JSON line per request, `{"prompt_id", "chosen", "n_sampled",
    /// "stop_reason"}` (and `"fused": true` for a fused answer).
    #[arg(long, requires = "as_recorded")]
    picks: Option<PathBuf>,
    #[command(flatten)]
    stats: StatsArgs,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("objective").required(true).args(["cost_per_sample", "target_share"])))]
struct TuneArgs {
    #[command(flatten)]
    samples: SamplesArgs,
    /// Scorer definitions (for --label-with and --rescore, and to check the recommended names).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Maximise accuracy - C x candidates sampled (C >= 0, in accuracy per candidate).
    #[arg(long)]
    cost_per_sample: Option<f64>,
    /// The cheapest choice reaching S x the best accuracy in its domain (0 < S <= 1).
    #[arg(long)]
    target_share: Option<f64>,
    /// Only these scorers (comma-separated; default: every scorer with rewards).
    #[arg(long, value_delimiter = ',')]
    scorers: Vec<String>,
    /// Largest N tried (at most the fewest candidates recorded for a prompt).
    #[arg(long)]
    max_n: Option<usize>,
    /// Also try adaptive settings (first_wave, accept_score, confidence), replayed.
    #[arg(long)]
    adaptive: bool,
    /// Tune on this random share of each domain's prompts (seeded) and measure on the rest.
    #[arg(long)]
    split: Option<f64>,
    /// Fewest labelled prompts a domain needs; fewer keep the global policy.
    #[arg(long, default_value_t = 10)]
    min_prompts: usize,
    /// Arrival orders per prompt for adaptive choices.
    #[arg(long, default_value_t = 20)]
    orders: usize,
    #[command(flatten)]
    stats: StatsArgs,
    /// Write the recommended [domains.NAME] tables here (TOML).
    #[arg(long)]
    write_config: Option<PathBuf>,
    /// Accuracy against candidates per domain, the chosen policy marked: FILE.svg or FILE.png
    /// (needs the `plot` feature).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A scorer's RewardBench 2 report (the JSON of `eval rewardbench`), as NAME=FILE
    /// (repeatable): its subset accuracy is shown beside the matching domain, and picks the
    /// scorer of domains without labelled prompts (a prior).
    #[arg(long, value_name = "NAME=FILE")]
    rewardbench: Vec<String>,
}

#[derive(clap::Args)]
struct BonArgs {
    #[command(flatten)]
    samples: SamplesArgs,
    /// Config file holding the --label-with and --rescore scorers.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How the reward curves pick: `best` (argmax) or `soft` (expected softmax pick).
    #[arg(long, value_enum, default_value = "best")]
    selection: SelectionArg,
    /// Soft selection's temperature (> 0).
    #[arg(long, default_value_t = 1.0)]
    soft_temperature: f64,
    /// Report every series on the prompts that carry every reward (a like-for-like comparison);
    /// by default each reward's series covers the prompts that carry that reward.
    #[arg(long)]
    common: bool,
    #[command(flatten)]
    stats: StatsArgs,
    /// Write the curves to FILE.svg or FILE.png (needs the `plot` feature).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// Bootstrap and output options shared by the statistics commands.
#[derive(clap::Args)]
struct StatsArgs {
    /// Bootstrap resamples for the 95% intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: bestofn::eval::Format,
}

#[derive(clap::Args)]
struct CorrelateArgs {
    /// CSV with one row per reward model (lines starting with # are comments).
    #[arg(long)]
    csv: PathBuf,
    /// Benchmark columns (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    x: Vec<String>,
    /// Downstream columns (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', required = true)]
    y: Vec<String>,
    /// Which coefficient.
    #[arg(long, value_enum, default_value = "pearson")]
    method: MethodArg,
    /// Keep only rows where COLUMN=a..b (inclusive numeric range) or COLUMN=v1|v2 (repeatable).
    #[arg(long = "where", value_name = "COLUMN=SPEC")]
    filters: Vec<String>,
    #[command(flatten)]
    stats: StatsArgs,
    /// Heatmap of the (first method's) grid to FILE.svg or FILE.png (needs the `plot` feature).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Scatter with a fitted line of one pair, as X:Y, written to --scatter-plot.
    #[arg(long, requires = "scatter_plot")]
    scatter: Option<String>,
    /// Where the scatter goes (.svg or .png; needs the `plot` feature).
    #[arg(long, requires = "scatter")]
    scatter_plot: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SelectionArg {
    Best,
    Soft,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MethodArg {
    Pearson,
    Spearman,
    Kendall,
    All,
}

#[derive(clap::Args)]
struct LeaderboardArgs {
    /// Leaderboard CSV (RewardBench 2 subset columns, or v1 section columns).
    csv: PathBuf,
    /// Largest difference that still agrees (published numbers are rounded to 4 decimals).
    #[arg(long, default_value_t = 1.5e-4)]
    tolerance: f64,
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
            eprintln!("error: {}", each_cause_once(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// The error and its causes, each once: many errors quote their cause in their own message and
/// also keep it as their source, and anyhow's `{:#}` would print such a cause twice.
fn each_cause_once(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig { file } => {
            let config = Config::from_file(&file)?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Eval { what } => match *what {
            EvalCommand::Rewardbench(args) => eval_rewardbench(args),
            EvalCommand::Bon(args) => eval_bon(args),
            EvalCommand::Replay(args) => eval_replay(args),
            EvalCommand::Tune(args) => eval_tune(*args),
            EvalCommand::Correlate(args) => eval_correlate(args),
            EvalCommand::Leaderboard(args) => eval_leaderboard(args),
        },
        Command::Serve { config, listen } => {
            let mut config = Config::from_file(&config)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let exporter = init_logging(&config)?;
            let served = serve_forever(config);
            // After the runtime has stopped: the last batch of spans (those of the drained
            // requests) is sent now or lost.
            if let Some(exporter) = exporter
                && let Err(e) = exporter.shutdown()
            {
                tracing::warn!("{e}");
            }
            served
        }
    }
}

/// Log lines to stderr (text or JSON, filtered by RUST_LOG), and bestofn's spans to the OTLP
/// collector when one is configured; the exporter is returned to be shut down at exit.
fn init_logging(config: &Config) -> anyhow::Result<Option<bestofn::telemetry::Exporter>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    bestofn::telemetry::init(&config.telemetry);
    // The filter applies to the log lines only: RUST_LOG=warn must not stop spans being exported.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false);
    let logs = match config.server.log_format {
        LogFormat::Text => logs.boxed(),
        // The list of spans (the request's, then a call's) names the request on every line;
        // the current span alone would repeat its last entry.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).boxed(),
    };
    // The exporter's HTTP client is a reqwest one, built without a bundled TLS provider.
    bestofn::backend::install_crypto_provider();
    let exporter = bestofn::telemetry::Exporter::start(&config.telemetry).map_err(anyhow::Error::msg)?;
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(exporter.as_ref().map(|e| e.layer())).init();
    if let Some(exporter) = &exporter {
        tracing::info!("exporting traces to {}", exporter.endpoint());
    }
    Ok(exporter)
}

fn serve_forever(config: Config) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // Tokio's multi-threaded runtime: one worker a CPU, or TOKIO_WORKER_THREADS.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let state = Arc::new(AppState::from_config(&config)?);
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = listener.local_addr().context("cannot read the bound address")?;
        // Before announcing the address: from then on a SIGTERM must drain, not kill.
        let shutdown = shutdown_signal();
        tracing::info!("bestofn listening on http://{addr}");
        serve(listener, state, shutdown).await;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: the accept loop may not poll it before serving its first connection,
/// and a SIGTERM in that window killed the process instead of draining it (and lost its spans).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let (terminate, interrupt) = signals;
            let wait = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(terminate) => {},
                () = wait(interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The named scorer of a config file and a runtime to drive it.
fn load_scorer(
    config_path: &std::path::Path,
    name: &str,
) -> anyhow::Result<(Arc<dyn bestofn::score::Scorer>, tokio::runtime::Runtime)> {
    let scorer = bestofn::wiring::load_scorer(config_path, name)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    Ok((scorer, runtime))
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
            let (scorer, runtime) = load_scorer(config_path, name)?;
            let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let wanted: std::collections::HashSet<String> = dataset.iter().map(|r| r.id.clone()).collect();
            let mut scored =
                runtime.block_on(score_dataset(dataset, scorer, args.concurrency, args.scores_out.as_deref(), show))?;
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

/// A request-path error as the command line shows it: whole, with the endpoint of a backend
/// failure and every cause once ([`bestofn::Error::detailed`]). As a plain message, not a
/// chain: `main` prints chains, and the causes are already in it.
fn operator_error(e: bestofn::Error) -> anyhow::Error {
    anyhow::anyhow!(e.detailed())
}

fn plot_or_explain(draw: impl FnOnce() -> Result<(), String>) -> anyhow::Result<()> {
    draw().map_err(|e| anyhow::anyhow!(e))
}

/// Refuses, before any work, a plot this build cannot draw (built without the `plot` feature)
/// or a file whose name gives no plot format; `flag` is the option that asked for it.
fn check_plot(flag: &str, path: Option<&PathBuf>) -> anyhow::Result<()> {
    match path {
        Some(path) => bestofn::eval::plot::check_target(path).map_err(|e| anyhow::anyhow!("{flag}: {e}")),
        None => Ok(()),
    }
}

/// The recorded rows, labelled by --gold and --label-with and rescored by --rescore.
fn labelled_rows(
    args: &SamplesArgs,
    config: Option<&std::path::Path>,
) -> anyhow::Result<Vec<bestofn::eval::samples::RecordedRow>> {
    use bestofn::eval::label::{ScorePass, apply_gold, read_gold, score_rows};

    let mut rows = bestofn::eval::samples::read_samples(&args.samples)?;
    if let Some(gold_path) = &args.gold {
        apply_gold(&mut rows, &read_gold(gold_path)?);
    }
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let passes = args.label_with.iter().map(|n| (n, ScorePass::Labels));
    for (name, pass) in passes.chain(args.rescore.iter().map(|n| (n, ScorePass::Rewards(n.as_str())))) {
        let config_path = config.context("--label-with and --rescore need --config")?;
        let (scorer, runtime) = load_scorer(config_path, name)?;
        runtime.block_on(score_rows(&mut rows, scorer, pass, args.concurrency, &args.samples, show))?;
    }
    Ok(rows)
}

fn eval_replay(args: ReplayArgs) -> anyhow::Result<()> {
    use bestofn::eval::replay::{ReplayMode, ReplayOptions, render_replay, replay};

    if args.as_recorded {
        return eval_replay_as_recorded(&args);
    }
    let rows = labelled_rows(&args.samples, Some(&args.config))?;
    let config = Config::from_file(&args.config)?;
    let scorers =
        bestofn::wiring::build_scorers(&bestofn::wiring::http_client(&config.upstream)?, &config.scorers, None)?;
    let mode = ReplayMode { per_arrival: config.upstream.sampling == bestofn::upstream::SamplingMode::Parallel };
    let options = ReplayOptions {
        mode,
        domain: args.domain.clone(),
        orders: args.orders,
        seed: args.stats.seed,
        resamples: args.stats.bootstrap,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let report = runtime
        .block_on(replay(&rows, &config.policy(), &scorers, &options))
        .map_err(|(line, e)| anyhow::anyhow!("{}: line {line}: {}", args.samples.samples.display(), e.detailed()))?;
    if report.domains.is_empty() {
        anyhow::bail!(
            "{}: no labelled prompts to replay: {}",
            args.samples.samples.display(),
            bestofn::eval::samples::HOW_TO_LABEL
        );
    }
    print!("{}", render_replay(&report, args.stats.format));
    Ok(())
}

/// `eval replay --as-recorded --picks OUT`: each recorded request replayed once through the
/// proxy's driver, its pick written as a JSON line.
fn eval_replay_as_recorded(args: &ReplayArgs) -> anyhow::Result<()> {
    use std::io::Write as _;

    let picks_path = args.picks.as_ref().context("--as-recorded needs --picks OUT.jsonl")?;
    let rows = bestofn::eval::samples::read_samples(&args.samples.samples)?;
    let config = Config::from_file(&args.config)?;
    let client = bestofn::wiring::http_client(&config.upstream)?;
    let scorers = bestofn::wiring::build_scorers(&client, &config.scorers, None)?;
    let fuser = bestofn::wiring::build_fuser(&client, &config, None)?;
    let streams_each = config.upstream.sampling == bestofn::upstream::SamplingMode::Parallel;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    let picks = runtime
        .block_on(bestofn::eval::replay::replay_as_recorded(
            &rows,
            &config.policy(),
            &scorers,
            fuser.as_deref(),
            streams_each,
        ))
        .map_err(|(line, e)| anyhow::anyhow!("{}: line {line}: {}", args.samples.samples.display(), e.detailed()))?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(picks_path).with_context(|| format!("{}: cannot create", picks_path.display()))?,
    );
    for pick in &picks {
        serde_json::to_writer(&mut out, pick)?;
        out.write_all(b"\n")?;
    }
    out.flush().with_context(|| format!("{}: cannot write", picks_path.display()))?;
    eprintln!("replayed {} recorded requests; picks in {}", picks.len(), picks_path.display());
    Ok(())
}

fn eval_tune(args: TuneArgs) -> anyhow::Result<()> {
    use bestofn::eval::tune::{Objective, TuneOptions, config_fragment, render_tune, tune};

    check_plot("--plot", args.plot.as_ref())?;
    let objective = match (args.cost_per_sample, args.target_share) {
        (Some(c), _) if !(c >= 0.0 && c.is_finite()) => anyhow::bail!("--cost-per-sample must be at least 0, got {c}"),
        (Some(c), _) => Objective::CostPerSample(c),
        (None, Some(s)) if !(s > 0.0 && s <= 1.0) => anyhow::bail!("--target-share must be in (0, 1], got {s}"),
        (None, Some(s)) => Objective::TargetShare(s),
        (None, None) => anyhow::bail!("give --cost-per-sample C or --target-share S"),
    };
    if let Some(f) = args.split
        && !(f > 0.0 && f < 1.0)
    {
        anyhow::bail!("--split must be between 0 and 1 (exclusive), got {f}");
    }
    let mut rewardbench = std::collections::BTreeMap::new();
    for spec in &args.rewardbench {
        let (name, file) =
            spec.split_once('=').with_context(|| format!("--rewardbench takes NAME=FILE, got '{spec}'"))?;
        let text = std::fs::read_to_string(file).with_context(|| format!("{file}: cannot read"))?;
        let report: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{file}: not the JSON of eval rewardbench"))?;
        let subsets: std::collections::BTreeMap<String, f64> = report
            .get("subsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .with_context(|| format!("{file}: no 'subsets' object of numbers (the JSON of eval rewardbench)"))?;
        rewardbench.insert(name.to_string(), subsets);
    }
    let rows = labelled_rows(&args.samples, args.config.as_deref())?;
    let options = TuneOptions {
        rewardbench,
        objective,
        scorers: (!args.scorers.is_empty()).then(|| args.scorers.clone()),
        max_n: args.max_n,
        adaptive: args.adaptive,
        split: args.split,
        seed: args.stats.seed,
        min_prompts: args.min_prompts,
        resamples: args.stats.bootstrap,
        orders: args.orders,
    };
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let report = runtime
        .block_on(tune(&rows, &options))
        .map_err(|e| match e {
            bestofn::eval::tune::TuneError::Replay(e) => operator_error(e),
            other => anyhow::anyhow!(other),
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.samples.samples.display()))?;
    let fragment = config_fragment(&report);
    if let Some(config_path) = &args.config {
        let config = Config::from_file(config_path)?;
        for (domain, d) in &report.domains {
            if let Some(scorer) = d.scorer.as_ref().filter(|s| !config.scorers.contains_key(*s)) {
                anyhow::bail!("{}: no scorer named '{scorer}', recommended for domain {domain}", config_path.display());
            }
        }
        // The recommended keys, set in place of the tuned keys of the user's own [domains.*]
        // tables, must make a valid config.
        let base =
            std::fs::read_to_string(config_path).with_context(|| format!("{}: cannot read", config_path.display()))?;
        let merged = bestofn::config::merge_tuned_domains(&base, &fragment)
            .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
        Config::from_toml(&merged, config_path)
            .context("the recommended [domains.*] keys do not make a valid config with --config")?;
    }
    print!("{}", render_tune(&report, args.stats.format));
    if let Some(path) = &args.write_config {
        std::fs::write(path, &fragment).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    if let Some(path) = &args.plot {
        plot_or_explain(|| bestofn::eval::plot::plot_tune(&report, path))?;
    }
    Ok(())
}

fn eval_bon(args: BonArgs) -> anyhow::Result<()> {
    use bestofn::eval::bon::{common_prompts, render_bon};
    use bestofn::eval::samples::labelled_prompts;

    check_plot("--plot", args.plot.as_ref())?;
    if !(args.soft_temperature > 0.0 && args.soft_temperature.is_finite()) {
        anyhow::bail!("--soft-temperature must be greater than 0, got {}", args.soft_temperature);
    }
    let rows = labelled_rows(&args.samples, args.config.as_deref())?;
    let (mut prompts, unlabelled) = labelled_prompts(&rows);
    if unlabelled > 0 {
        eprintln!(
            "note: {unlabelled} prompts have no correctness labels and are left out; {}",
            bestofn::eval::samples::HOW_TO_LABEL
        );
    }
    if args.common {
        let before = prompts.len();
        prompts = common_prompts(&prompts);
        eprintln!("note: --common keeps the {} of {before} labelled prompts that carry every reward", prompts.len());
    }
    if prompts.is_empty() {
        anyhow::bail!("{}: no labelled prompts", args.samples.samples.display());
    }
    let selection = match args.selection {
        SelectionArg::Best => bestofn::eval::bon::CurveSelection::Best,
        SelectionArg::Soft => bestofn::eval::bon::CurveSelection::Soft { temperature: args.soft_temperature },
    };
    let mut report = bestofn::eval::bon::bon_report_with(&prompts, args.stats.bootstrap, args.stats.seed, selection);
    report.recorded_pick = bestofn::eval::bon::recorded_picks(
        &bestofn::eval::samples::recorded_pick_labels(&rows),
        args.stats.bootstrap,
        args.stats.seed,
    );
    print!("{}", render_bon(&report, args.stats.format));
    if let Some(path) = &args.plot {
        plot_or_explain(|| bestofn::eval::plot::plot_bon(&report, path))?;
    }
    Ok(())
}

fn eval_correlate(args: CorrelateArgs) -> anyhow::Result<()> {
    use bestofn::eval::correlate::{Method, grid, render_grid};
    use bestofn::eval::samples::read_columns;

    // Everything that can be refused is, before the bootstrap runs.
    check_plot("--plot", args.plot.as_ref())?;
    check_plot("--scatter-plot", args.scatter_plot.as_ref())?;
    let scatter = match &args.scatter {
        Some(pair) => Some(pair.split_once(':').with_context(|| format!("--scatter takes X:Y, got '{pair}'"))?),
        None => None,
    };
    let methods = match args.method {
        MethodArg::Pearson => vec![Method::Pearson],
        MethodArg::Spearman => vec![Method::Spearman],
        MethodArg::Kendall => vec![Method::Kendall],
        MethodArg::All => vec![Method::Pearson, Method::Spearman, Method::Kendall],
    };
    let mut wanted = args.x.clone();
    wanted.extend(args.y.iter().cloned());
    let filters = args
        .filters
        .iter()
        .map(|f| bestofn::eval::samples::RowFilter::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--where: {e}"))?;
    let columns = read_columns(&args.csv, &wanted, &filters)?;
    let scatter_points = match scatter {
        Some((x, y)) => {
            let pair_columns = read_columns(&args.csv, &[x.to_string(), y.to_string()], &filters)?;
            let points: Vec<(f64, f64)> = match (pair_columns.get(x), pair_columns.get(y)) {
                (Some(xs), Some(ys)) => xs.iter().zip(ys).filter_map(|(a, b)| Some(((*a)?, (*b)?))).collect(),
                _ => Vec::new(),
            };
            Some((x, y, points))
        }
        None => None,
    };
    let result = grid(&columns, &args.x, &args.y, &methods, args.stats.bootstrap, args.stats.seed);
    print!("{}", render_grid(&result, &args.x, args.stats.format, args.stats.bootstrap, args.stats.seed));
    if let (Some(path), Some(method)) = (&args.plot, methods.first()) {
        let rows: Vec<(String, Vec<bestofn::eval::correlate::Cell>)> = result
            .get(method)
            .map(|m| {
                m.iter()
                    .map(|(y, cells)| (y.clone(), args.x.iter().filter_map(|x| cells.get(x).copied()).collect()))
                    .collect()
            })
            .unwrap_or_default();
        let title = format!("{} r", method.name());
        plot_or_explain(|| bestofn::eval::plot::plot_heatmap(&title, &rows, &args.x, path))?;
    }
    if let (Some((x, y, points)), Some(path)) = (&scatter_points, &args.scatter_plot) {
        plot_or_explain(|| bestofn::eval::plot::plot_scatter(points, (x, y), &format!("{y} vs {x}"), path))?;
    }
    Ok(())
}

fn eval_leaderboard(args: LeaderboardArgs) -> anyhow::Result<()> {
    let rows = bestofn::eval::input::read_csv_rows(&args.csv)?;
    let (benchmark, checked, disagree) = bestofn::eval::rewardbench::check_leaderboard(&rows, args.tolerance)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.csv.display()))?;
    println!("{benchmark}: {checked} rows recomputed, {} disagree (tolerance {})", disagree.len(), args.tolerance);
    for d in &disagree {
        println!("  {}: published {:.4}, recomputed {:.4}", d.model, d.published, d.recomputed);
    }
    Ok(())
}
