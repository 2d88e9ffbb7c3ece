//! Labelling and rescoring recorded samples: gold answers, a labelling scorer, or more scorers
//! whose rewards are added for comparison. Rows are scored as the proxy scored them (the
//! recorded conversation, `response_format` and `tools`), concurrently and bounded, through the same
//! checked scoring call the proxy uses.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::Value;

use super::EvalError;
use super::input::{InputError, read_jsonl};
use super::samples::RecordedRow;
use crate::bon::score_candidates;
use crate::error::Error;
use crate::score::{
    CandidateMessage, Message, ResponseFormat, ScoreInput, ScoreOutput, Scorer, Tools, final_answer, normalize_answer,
};

/// Reads gold answers (JSONL `{"prompt", "gold"}`), normalised as the consensus scorer
/// normalises final answers.
pub fn read_gold(path: &Path) -> Result<HashMap<String, String>, InputError> {
    Ok(read_jsonl(path, |line, _| {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
        let prompt = v.get("prompt").and_then(Value::as_str).ok_or("'prompt' must be a string")?;
        let answer = v.get("gold").and_then(Value::as_str).ok_or("'gold' must be a string")?;
        Ok((prompt.to_string(), normalize_answer(answer)))
    })?
    .into_iter()
    .collect())
}

/// Labels the unlabelled rows whose prompt has a gold answer: a candidate is correct when its
/// normalised final answer equals the gold one. Returns the rows labelled.
pub fn apply_gold(rows: &mut [RecordedRow], gold: &HashMap<String, String>) -> usize {
    let mut labelled = 0;
    for row in rows.iter_mut().filter(|r| r.record.labels().is_none()) {
        let Some(answer) = row.record.prompt.as_ref().and_then(|p| gold.get(p)) else {
            continue;
        };
        let labels: Vec<f64> = row
            .record
            .candidates
            .iter()
            .map(|c| f64::from(u8::from(final_answer(&c.text).as_deref() == Some(answer.as_str()))))
            .collect();
        row.record.set_labels(&labels);
        labelled += 1;
    }
    labelled
}

/// What a scoring pass over recorded rows writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScorePass<'a> {
    /// Correctness labels of the rows that have none (scores clamped to [0, 1]).
    Labels,
    /// Rewards under this name, on every row.
    Rewards(&'a str),
}

/// A progress bar on stderr, or a hidden one.
pub(crate) fn progress_bar(len: usize, show: bool, unit: &str) -> indicatif::ProgressBar {
    let bar = if show { indicatif::ProgressBar::new(len as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// One scoring job of an evaluation: what the scorer is asked, as the proxy would ask it.
pub(crate) struct ScoreJob<T> {
    /// What the result belongs to.
    pub item: T,
    /// The conversation the candidates answer.
    pub conversation: Vec<Message>,
    /// The candidates, in the default rendering.
    pub candidates: Vec<String>,
    /// The candidates' messages, in the same order.
    pub messages: Vec<CandidateMessage>,
    /// The request's `response_format`, when recorded, prepared once for the job.
    pub response_format: Option<ResponseFormat>,
    /// The request's `tools` and `tool_choice`, when recorded, prepared once for the job.
    pub tools: Option<Tools>,
}

/// The one evaluation loop: scores every job through the checked scoring call, `concurrency`
/// at a time, with a progress bar, handing each result to `done` as it finishes.
pub(crate) async fn score_jobs<T, E>(
    jobs: Vec<ScoreJob<T>>,
    scorer: &Arc<dyn Scorer>,
    concurrency: usize,
    show_progress: bool,
    mut done: impl FnMut(T, Result<ScoreOutput, Error>) -> Result<(), E>,
) -> Result<(), E> {
    let progress = progress_bar(jobs.len(), show_progress, "rows");
    let mut results = futures_util::stream::iter(jobs)
        .map(|job| {
            let scorer = scorer.clone();
            async move {
                let input = ScoreInput {
                    conversation: &job.conversation,
                    candidates: &job.candidates,
                    messages: &job.messages,
                    response_format: job.response_format.as_ref(),
                    tools: job.tools.as_ref(),
                };
                let out = score_candidates(&*scorer, input).await;
                (job.item, out)
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((item, result)) = results.next().await {
        done(item, result)?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(())
}

/// A scorer's failure on a recorded row, for whoever runs the evaluation: the error whole (its
/// endpoint and every cause, once each), naming the scorer once.
fn scoring_failed(scorer: &str, e: &Error) -> String {
    let detailed = e.detailed();
    if detailed.starts_with(&format!("scorer {scorer} ")) {
        detailed
    } else {
        format!("scoring with {scorer} failed: {detailed}")
    }
}

/// Scores rows with `scorer`, `concurrency` rows at a time, and writes labels or rewards into
/// them. Errors name the samples file and line: a row whose recorded `response_format` schema
/// does not compile is one, found before any row is scored.
pub async fn score_rows(
    rows: &mut [RecordedRow],
    scorer: Arc<dyn Scorer>,
    pass: ScorePass<'_>,
    concurrency: usize,
    source: &Path,
    show_progress: bool,
) -> Result<(), EvalError> {
    let jobs: Vec<ScoreJob<usize>> = (0..rows.len())
        .filter(|&i| match pass {
            ScorePass::Labels => rows[i].record.labels().is_none(),
            ScorePass::Rewards(_) => true,
        })
        .map(|i| {
            let row = &rows[i];
            let row_error =
                |e: Error| EvalError::Row { path: source.display().to_string(), line: row.line, message: e.detailed() };
            let response_format = row.response_format().map_err(row_error)?;
            let tools = row.tools().map_err(row_error)?;
            // Rendered from each recorded message when there is one, as the proxy rendered it.
            let (candidates, messages) = row.record.scored_candidates();
            Ok(ScoreJob {
                item: i,
                conversation: row.record.conversation(),
                candidates,
                response_format,
                messages,
                tools,
            })
        })
        .collect::<Result<_, EvalError>>()?;
    score_jobs(jobs, &scorer, concurrency, show_progress, |i, result| {
        let row = &mut rows[i];
        let scores = result
            .map_err(|e| EvalError::Row {
                path: source.display().to_string(),
                line: row.line,
                message: scoring_failed(scorer.name(), &e),
            })?
            .scores;
        match pass {
            ScorePass::Labels => row.record.set_labels(&scores),
            ScorePass::Rewards(name) => row.record.set_rewards(name, &scores),
        }
        Ok(())
    })
    .await
}
