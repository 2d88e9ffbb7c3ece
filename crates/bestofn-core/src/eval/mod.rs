//! Offline evaluation: the scorers and selection the proxy runs, measured on data.

pub mod bon;
pub mod correlate;
pub mod input;
pub mod label;
#[cfg(feature = "plot")]
pub mod plot;
/// Plots need the `plot` feature; without it every plot call says so.
#[cfg(not(feature = "plot"))]
pub mod plot {
    use std::path::Path;

    use super::bon::BonReport;
    use super::correlate::Cell;

    const NEEDS_FEATURE: &str =
        "plots need bestofn built with the `plot` feature; rebuild with `cargo build --release --features plot`";

    /// Unavailable without the `plot` feature: says so, for the command line to refuse a plot
    /// before any work.
    pub fn check_target(_path: &Path) -> Result<(), String> {
        Err(NEEDS_FEATURE.into())
    }

    /// Unavailable without the `plot` feature.
    pub fn plot_bon(_report: &BonReport, _path: &Path) -> Result<(), String> {
        Err(NEEDS_FEATURE.into())
    }

    /// Unavailable without the `plot` feature.
    pub fn plot_heatmap(
        _title: &str,
        _grid: &[(String, Vec<Cell>)],
        _xs: &[String],
        _path: &Path,
    ) -> Result<(), String> {
        Err(NEEDS_FEATURE.into())
    }

    /// Unavailable without the `plot` feature.
    pub fn plot_tune(_report: &super::tune::TuneReport, _path: &Path) -> Result<(), String> {
        Err(NEEDS_FEATURE.into())
    }

    /// Unavailable without the `plot` feature.
    pub fn plot_scatter(
        _points: &[(f64, f64)],
        _names: (&str, &str),
        _title: &str,
        _path: &Path,
    ) -> Result<(), String> {
        Err(NEEDS_FEATURE.into())
    }
}
pub mod replay;
pub mod rewardbench;
pub mod samples;
pub mod tune;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use input::{BenchmarkRow, InputError, read_scores};
use rewardbench::{Report, ScoredRow};

use crate::score::{Message, Scorer};

/// A failure of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// An input file is unusable.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The scorer failed on a row. The message is the scorer's error whole (its endpoint and
    /// every cause, once each: [`crate::Error::detailed`]); it is not also kept as the `source`,
    /// or a chain printer (anyhow's `{:#}`) would print the cause a second time.
    #[error("scoring row {id}: {message}")]
    Scorer {
        /// The row's id.
        id: String,
        /// The scorer's error, for whoever runs the evaluation.
        message: String,
    },
    /// A recorded row could not be scored.
    #[error("{path}:{line}: {message}")]
    Row {
        /// The samples file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What failed.
        message: String,
    },
    /// The scores file could not be written.
    #[error("{path}: cannot write: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Scores every row of a dataset with `scorer`, `concurrency` rows at a time. Each row's
/// candidates are scored in one scorer call, each candidate as the reply to the prompt alone:
/// the same path the proxy takes. With `scores_out`, rows already in the file are skipped (so an
/// interrupted run resumes) and new rows are appended as they finish. Returns every scored row,
/// earlier ones included.
pub async fn score_dataset(
    rows: Vec<BenchmarkRow>,
    scorer: Arc<dyn Scorer>,
    concurrency: usize,
    scores_out: Option<&Path>,
    show_progress: bool,
) -> Result<Vec<ScoredRow>, EvalError> {
    let mut done: Vec<ScoredRow> = match scores_out {
        Some(path) if path.exists() => read_scores(path)?,
        _ => Vec::new(),
    };
    let seen: std::collections::HashSet<String> = done.iter().map(|r| r.id.clone()).collect();
    let todo: Vec<BenchmarkRow> = rows.into_iter().filter(|r| !seen.contains(&r.id)).collect();
    let write_error =
        |source| EvalError::Write { path: scores_out.map(|p| p.display().to_string()).unwrap_or_default(), source };
    let mut out = match scores_out {
        Some(path) => Some(std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(write_error)?),
        None => None,
    };
    let jobs: Vec<label::ScoreJob<BenchmarkRow>> = todo
        .into_iter()
        .map(|row| label::ScoreJob {
            conversation: vec![Message { role: "user".into(), content: row.prompt.clone() }],
            messages: row.completions.iter().map(crate::score::CandidateMessage::from_text).collect(),
            candidates: row.completions.clone(),
            response_format: None,
            tools: None,
            item: row,
        })
        .collect();
    label::score_jobs(jobs, &scorer, concurrency, show_progress, |row, result| {
        let scores = result.map_err(|e| EvalError::Scorer { id: row.id.clone(), message: e.detailed() })?.scores;
        let scored = ScoredRow { id: row.id, subset: row.subset, num_correct: row.num_correct, scores };
        if let Some(file) = out.as_mut() {
            let line = serde_json::to_string(&scored).unwrap_or_default();
            writeln!(file, "{line}").and_then(|()| file.flush()).map_err(write_error)?;
        }
        done.push(scored);
        Ok::<(), EvalError>(())
    })
    .await?;
    Ok(done)
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// The JSON report.
    Json,
    /// Comma-separated values.
    Csv,
    /// A Markdown table.
    Md,
}

/// Renders rows under a header as an aligned text table, CSV or a Markdown table.
pub(crate) fn render_rows(header: &[&str], rows: &[Vec<String>], format: Format) -> String {
    match format {
        Format::Csv => {
            let quote = |c: &str| if c.contains(',') { format!("\"{c}\"") } else { c.to_string() };
            let mut out = header.join(",") + "\n";
            for r in rows {
                out.push_str(&(r.iter().map(|c| quote(c)).collect::<Vec<_>>().join(",") + "\n"));
            }
            out
        }
        Format::Md => {
            let mut out = format!("| {} |\n|{}|\n", header.join(" | "), vec!["---"; header.len()].join("|"));
            for r in rows {
                out.push_str(&format!("| {} |\n", r.join(" | ")));
            }
            out
        }
        Format::Table | Format::Json => {
            let widths: Vec<usize> = (0..header.len())
                .map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0))
                .collect();
            let line = |r: Vec<&str>| {
                r.iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            let mut out = line(header.to_vec()) + "\n";
            for r in rows {
                out.push_str(&(line(r.iter().map(String::as_str).collect()) + "\n"));
            }
            out
        }
    }
}

fn random_baseline(benchmark: &str, subset: &str) -> Option<f64> {
    match (benchmark, subset) {
        ("rewardbench2", "Ties") => None,
        ("rewardbench2", _) => Some(0.25),
        _ => Some(0.5),
    }
}

/// Renders a benchmark report as a table, JSON, CSV or Markdown. Only the JSON carries the
/// report's notes; print them apart for the other formats.
pub fn render_report(report: &Report, format: Format) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(report).unwrap_or_default() + "\n";
    }
    let order: Vec<&String> = {
        let mut keys: Vec<&String> = report.subsets.keys().chain(report.n.keys()).collect();
        keys.sort_by_key(|k| (rewardbench::RB2_SUBSETS.iter().position(|s| s == k).unwrap_or(99), k.to_string()));
        keys.dedup();
        keys
    };
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mut rows: Vec<[String; 4]> = order
        .iter()
        .map(|s| {
            [
                s.to_string(),
                report.n.get(*s).map_or("-".into(), |n| n.to_string()),
                fmt(report.subsets.get(*s).copied()),
                fmt(random_baseline(&report.benchmark, s)),
            ]
        })
        .collect();
    for (name, score) in &report.sections {
        rows.push([format!("section: {name}"), "-".into(), fmt(Some(*score)), "-".into()]);
    }
    rows.push(["Overall".into(), report.n.values().sum::<usize>().to_string(), fmt(report.overall), "-".into()]);
    let header = ["subset", "rows", "score", "random"];
    let mut text = String::new();
    match format {
        Format::Csv => {
            text.push_str(&header.join(","));
            text.push('\n');
            for r in &rows {
                let quoted: Vec<String> =
                    r.iter().map(|c| if c.contains(',') { format!("\"{c}\"") } else { c.clone() }).collect();
                text.push_str(&quoted.join(","));
                text.push('\n');
            }
        }
        Format::Md => {
            text.push_str(&format!("| {} |\n|---|---:|---:|---:|\n", header.join(" | ")));
            for r in &rows {
                text.push_str(&format!("| {} |\n", r.join(" | ")));
            }
        }
        Format::Table | Format::Json => {
            let width = rows.iter().map(|r| r[0].len()).max().unwrap_or(6).max(6);
            text.push_str(&format!("{:<width$}  {:>6}  {:>7}  {:>7}\n", header[0], header[1], header[2], header[3]));
            for r in &rows {
                text.push_str(&format!("{:<width$}  {:>6}  {:>7}  {:>7}\n", r[0], r[1], r[2], r[3]));
            }
        }
    }
    text
}
