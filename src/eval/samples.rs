//! Reading best-of-N samples (the format the proxy's recorder writes) and tables for
//! correlation, with file and line in every error.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::bon::Prompt;
use super::input::{InputError, read_jsonl};

/// A samples row before labels are known.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRow {
    /// The prompt's id.
    pub prompt_id: String,
    /// The domain (`general` when absent).
    pub domain: String,
    /// The prompt text, if recorded.
    pub prompt: Option<String>,
    /// Candidate texts (empty strings when not recorded).
    pub texts: Vec<String>,
    /// Correctness labels, when every candidate has one.
    pub labels: Option<Vec<f64>>,
    /// Rewards present for every candidate, by name.
    pub rewards: BTreeMap<String, Vec<f64>>,
    /// 1-based line in the file.
    pub line: usize,
}

fn parse_row(v: &Value, line: usize) -> Result<SampleRow, String> {
    let prompt_id = match v.get("prompt_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("'prompt_id' must be a string or a number".into()),
    };
    let domain = match v.get("domain") {
        None | Some(Value::Null) => "general".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("'domain' must be a string".into()),
    };
    let candidates = v.get("candidates").and_then(Value::as_array).ok_or("'candidates' must be an array")?;
    if candidates.is_empty() {
        return Err("'candidates' is empty".into());
    }
    let mut texts = Vec::with_capacity(candidates.len());
    let mut labels = Vec::with_capacity(candidates.len());
    let mut reward_lists: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        texts.push(c.get("text").and_then(Value::as_str).unwrap_or_default().to_string());
        match c.get("correct") {
            None | Some(Value::Null) => {}
            Some(x) => {
                let label = x
                    .as_f64()
                    .filter(|l| (0.0..=1.0).contains(l))
                    .ok_or(format!("candidates[{i}].correct must be a number in [0, 1]"))?;
                labels.push(label);
            }
        }
        if let Some(rewards) = c.get("rewards") {
            let rewards = rewards.as_object().ok_or(format!("candidates[{i}].rewards must be an object"))?;
            for (name, r) in rewards {
                let r = r
                    .as_f64()
                    .filter(|r| r.is_finite())
                    .ok_or(format!("candidates[{i}].rewards.{name} is not a finite number"))?;
                reward_lists.entry(name.clone()).or_default().push(r);
            }
        }
    }
    let n = candidates.len();
    // A reward counts for this prompt only when every candidate has it.
    reward_lists.retain(|_, v| v.len() == n);
    Ok(SampleRow {
        prompt_id,
        domain,
        prompt: v.get("prompt").and_then(Value::as_str).map(str::to_string),
        texts,
        labels: (labels.len() == n).then_some(labels),
        rewards: reward_lists,
        line,
    })
}

/// Reads a samples JSONL file.
pub fn read_samples(path: &Path) -> Result<Vec<SampleRow>, InputError> {
    read_jsonl(path, |line, number| {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
        parse_row(&v, number)
    })
}

/// The labelled rows as prompts for [`super::bon::bon_report`]; the count of unlabelled rows.
pub fn labelled_prompts(rows: Vec<SampleRow>) -> (Vec<Prompt>, usize) {
    let mut unlabelled = 0;
    let prompts = rows
        .into_iter()
        .filter_map(|r| match r.labels {
            Some(labels) => Some(Prompt { id: r.prompt_id, domain: r.domain, labels, rewards: r.rewards }),
            None => {
                unlabelled += 1;
                None
            }
        })
        .collect();
    (prompts, unlabelled)
}

/// Keeps CSV rows whose `column` matches: `a..b` is an inclusive numeric range, anything else
/// a `|`-separated list of exact values.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    /// The column tested.
    pub column: String,
    /// The range or the values.
    pub spec: String,
}

impl RowFilter {
    /// Parses `COLUMN=SPEC`.
    pub fn parse(text: &str) -> Result<RowFilter, String> {
        let (column, spec) = text.split_once('=').ok_or(format!("'{text}' is not COLUMN=a..b or COLUMN=v1|v2"))?;
        Ok(RowFilter { column: column.trim().to_string(), spec: spec.trim().to_string() })
    }

    fn keeps(&self, cell: &str) -> bool {
        let cell = cell.trim();
        if let Some((lo, hi)) = self.spec.split_once("..")
            && let (Ok(lo), Ok(hi), Ok(v)) = (lo.parse::<f64>(), hi.parse::<f64>(), cell.parse::<f64>())
        {
            return lo <= v && v <= hi;
        }
        self.spec.split('|').any(|v| v.trim() == cell)
    }
}

/// Reads numeric columns of a CSV (lines starting with `#` are comments), keeping the rows
/// every filter keeps. Empty or non-numeric cells are missing values; a requested column that
/// does not exist is an error.
pub fn read_columns(
    path: &Path,
    wanted: &[String],
    filters: &[RowFilter],
) -> Result<BTreeMap<String, Vec<Option<f64>>>, InputError> {
    let file_error = |message: String| InputError::File { path: path.into(), message };
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .flexible(true)
        .from_path(path)
        .map_err(|e| file_error(format!("cannot read CSV: {e}")))?;
    let headers = reader.headers().map_err(|e| file_error(format!("cannot read the header: {e}")))?.clone();
    let position = |name: &str| {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
            file_error(format!("no column '{name}' (columns: {})", headers.iter().collect::<Vec<_>>().join(", ")))
        })
    };
    let mut index = BTreeMap::new();
    for name in wanted {
        index.insert(name.clone(), position(name)?);
    }
    let filter_at = filters.iter().map(|f| Ok((f, position(&f.column)?))).collect::<Result<Vec<_>, InputError>>()?;
    let mut columns: BTreeMap<String, Vec<Option<f64>>> = wanted.iter().map(|w| (w.clone(), Vec::new())).collect();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| InputError::Row { path: path.into(), line: i + 2, message: e.to_string() })?;
        if !filter_at.iter().all(|(f, at)| f.keeps(record.get(*at).unwrap_or_default())) {
            continue;
        }
        for (name, &at) in &index {
            let value = record.get(at).and_then(|c| c.trim().parse::<f64>().ok()).filter(|v| v.is_finite());
            if let Some(column) = columns.get_mut(name) {
                column.push(value);
            }
        }
    }
    Ok(columns)
}
