//! Reading best-of-N samples (the format the proxy's recorder writes) and tables for
//! correlation, with file and line in every error.

use std::collections::BTreeMap;
use std::path::Path;

use super::bon::Prompt;
use super::input::{InputError, read_csv, read_jsonl};
use crate::samples::SampleRecord;
use crate::score::{ResponseFormat, Tools};

/// One line of a samples file, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRow {
    /// The record as written by the recorder (or by hand).
    pub record: SampleRecord,
    /// 1-based line in the file.
    pub line: usize,
}

impl RecordedRow {
    /// The row's recorded `response_format`, prepared as the proxy prepares a request's (its
    /// schema compiled once for all the row's candidates). A recorded schema that does not
    /// compile is an error (the proxy refuses such a request at N > 1), never a silent pass.
    pub fn response_format(&self) -> Result<Option<ResponseFormat>, crate::error::Error> {
        self.record.response_format.as_ref().map(ResponseFormat::prepare).transpose()
    }

    /// The row's recorded `tools` and `tool_choice`, prepared as the proxy prepares a request's
    /// (each tool's `parameters` compiled once). A recorded schema that does not compile is an
    /// error, as the proxy refuses such a request at N > 1.
    pub fn tools(&self) -> Result<Option<Tools>, crate::error::Error> {
        Tools::prepare(self.record.tools.as_ref(), self.record.tool_choice.as_ref())
    }
}

/// How rows without labels get them (the recorder writes none), said by every command that
/// needs labels and finds none.
pub const HOW_TO_LABEL: &str = "label them with --gold FILE (JSONL {\"prompt\", \"gold\"}) or --label-with NAME --config FILE (NAME: a scorer in FILE, e.g. verify)";

/// Reads a samples JSONL file (the recorder's format, [`SampleRecord`]).
pub fn read_samples(path: &Path) -> Result<Vec<RecordedRow>, InputError> {
    read_jsonl(path, |line, number| Ok(RecordedRow { record: SampleRecord::parse(line)?, line: number }))
}

/// The labelled rows as prompts for [`super::bon::bon_report`]; the count of unlabelled rows.
pub fn labelled_prompts(rows: &[RecordedRow]) -> (Vec<Prompt>, usize) {
    let mut unlabelled = 0;
    let prompts = rows
        .iter()
        .filter_map(|r| match r.record.labels() {
            Some(labels) => Some(Prompt {
                id: r.record.prompt_id.clone(),
                domain: r.record.domain().to_string(),
                labels,
                rewards: r.record.rewards(),
            }),
            None => {
                unlabelled += 1;
                None
            }
        })
        .collect();
    (prompts, unlabelled)
}

/// `(domain, label of the recorded pick)` of the labelled rows that record which candidate the
/// proxy answered with.
pub fn recorded_pick_labels(rows: &[RecordedRow]) -> Vec<(String, f64)> {
    rows.iter()
        .filter_map(|r| {
            let labels = r.record.labels()?;
            let label = *labels.get(r.record.chosen?)?;
            Some((r.record.domain().to_string(), label))
        })
        .collect()
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
    let (headers, records) = read_csv(path)?;
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
    for (_, record) in records {
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
