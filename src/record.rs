//! The traffic recorder: best-of-N requests as JSONL in the samples format that
//! `bestofn eval bon` reads, written off the request path through a bounded queue.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::bon::{Outcome, Plan};
use crate::config::{ConfigError, Validator, defaults};
use crate::samples::{CandidateRecord, SampleRecord};
use crate::score::{Message, last_user_message};

/// Recorder settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecorderConfig {
    /// The JSONL file; rotated files get `.1`, `.2`, ... appended.
    pub path: PathBuf,
    /// Share of best-of-N requests recorded, 0 to 1.
    pub sample_rate: f64,
    /// Size at which the file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_files: u32,
    /// Records waiting to be written; beyond it, records are dropped and counted.
    pub queue_capacity: usize,
}

/// `[recorder]` as read.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRecorder {
    path: PathBuf,
    sample_rate: Option<f64>,
    max_bytes: Option<u64>,
    max_files: Option<u32>,
    queue_capacity: Option<usize>,
}

impl Validator<'_> {
    /// Validates `[recorder]`, when present.
    pub(crate) fn recorder(&self, raw: Option<RawRecorder>) -> Result<Option<RecorderConfig>, ConfigError> {
        let Some(r) = raw else { return Ok(None) };
        let sample_rate = r.sample_rate.unwrap_or(defaults::RECORDER_SAMPLE_RATE);
        if !(0.0..=1.0).contains(&sample_rate) {
            return Err(self.invalid("recorder.sample_rate", format!("must be between 0 and 1, got {sample_rate}")));
        }
        Ok(Some(RecorderConfig {
            path: r.path,
            sample_rate,
            max_bytes: self.positive("recorder.max_bytes", r.max_bytes, defaults::RECORDER_MAX_BYTES)?,
            max_files: r.max_files.unwrap_or(defaults::RECORDER_MAX_FILES),
            queue_capacity: self.positive(
                "recorder.queue_capacity",
                r.queue_capacity.map(|c| c as u64),
                defaults::RECORDER_QUEUE_CAPACITY,
            )? as usize,
        }))
    }
}

/// The request side of the recorder: cheap to call, never waits.
pub struct Recorder {
    tx: mpsc::Sender<String>,
    sample_rate: f64,
    dropped: prometheus::IntCounter,
}

/// The samples record of a finished best-of-N request; `response_format` and `tools` (with
/// `tool_choice`) are the request's, as sent, for replay to check candidates as the proxy did.
pub fn sample_record(
    id: &str,
    plan: &Plan,
    conversation: &[Message],
    response_format: Option<&Value>,
    (tools, tool_choice): (Option<&Value>, Option<&Value>),
    outcome: &Outcome,
) -> SampleRecord {
    let candidates = outcome
        .samples
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| CandidateRecord {
            text: c.text.clone(),
            // The upstream's whole message (a legacy completion has none: its text is all).
            message: c.choice.to_map().remove("message").filter(Value::is_object),
            rewards: outcome
                .scores
                .get(i)
                .map(|s| [(plan.scorer.name.clone(), *s)].into_iter().collect())
                .unwrap_or_default(),
            finish_reason: c.finish_reason.clone(),
            completion_tokens: c.completion_tokens,
            latency_ms: Some(c.latency_ms),
            ..Default::default()
        })
        .collect();
    SampleRecord {
        prompt_id: id.to_string(),
        domain: Some(plan.domain.clone()),
        prompt: Some(last_user_message(conversation).to_string()),
        messages: Some(conversation.to_vec()),
        response_format: response_format.cloned(),
        tools: tools.cloned(),
        tool_choice: tool_choice.cloned(),
        candidates,
        chosen: Some(outcome.chosen()),
        scorer: Some(plan.scorer.name.clone()),
        seed: Some(outcome.seed),
        n_sampled: Some(outcome.n_sampled(plan.n)),
        stop_reason: Some(outcome.stop_reason().to_string()),
        fused: outcome.fused.is_some(),
        extra: Default::default(),
    }
}

impl Recorder {
    /// Starts the writer task; `dropped` counts records the queue had no room for.
    pub fn start(config: &RecorderConfig, dropped: prometheus::IntCounter) -> std::io::Result<Recorder> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // Opening once here surfaces a bad path at startup rather than silently later.
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&config.path)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let writer =
            Writer { path: config.path.clone(), max_bytes: config.max_bytes, max_files: config.max_files, file };
        // File writes block; a dedicated thread keeps them off the async workers.
        std::thread::Builder::new().name("bestofn-recorder".into()).spawn(move || writer.run(rx))?;
        Ok(Recorder { tx, sample_rate: config.sample_rate, dropped })
    }

    /// Queues a record if this request is sampled; drops and counts it when the queue is full.
    pub fn record(&self, record: impl FnOnce() -> SampleRecord) {
        if self.sample_rate < 1.0 && fastrand::f64() >= self.sample_rate {
            return;
        }
        let Ok(text) = serde_json::to_string(&record()) else {
            return;
        };
        if self.tx.try_send(text).is_err() {
            self.dropped.inc();
        }
    }
}

struct Writer {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: std::fs::File,
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<String>) {
        while let Some(line) = rx.blocking_recv() {
            if let Err(e) = self.write(&line) {
                tracing::warn!(error = %e, path = %self.path.display(), "recorder write failed");
            }
        }
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        let size = self.file.metadata()?.len();
        if size > 0 && size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.file.flush()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if self.max_files == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..self.max_files).rev() {
                let from = rotated(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(&self.path, i + 1))?;
                }
            }
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        Ok(())
    }
}
