//! The traffic recorder: best-of-N requests as JSONL in the samples format that
//! `bestofn eval bon` reads, written off the request path through a bounded queue.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::bon::{Outcome, Plan};
use crate::score::Message;

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

/// The request side of the recorder: cheap to call, never waits.
pub struct Recorder {
    tx: mpsc::Sender<String>,
    sample_rate: f64,
    dropped: prometheus::IntCounter,
}

/// One line of the samples format for a finished best-of-N request.
pub fn sample_line(id: &str, plan: &Plan, conversation: &[Message], outcome: &Outcome) -> Value {
    let prompt = conversation.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
    let candidates: Vec<Value> = outcome
        .samples
        .candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let rewards = match outcome.scores.get(i) {
                Some(score) => json!({ plan.scorer.name.as_str(): score }),
                None => json!({}),
            };
            json!({"text": c.text, "rewards": rewards, "finish_reason": c.finish_reason})
        })
        .collect();
    json!({
        "prompt_id": id,
        "domain": plan.domain,
        "prompt": prompt,
        "messages": conversation,
        "candidates": candidates,
        "chosen": outcome.chosen(),
        "scorer": plan.scorer.name,
    })
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
    pub fn record(&self, line: impl FnOnce() -> Value) {
        if self.sample_rate < 1.0 && fastrand::f64() >= self.sample_rate {
            return;
        }
        let text = line().to_string();
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
