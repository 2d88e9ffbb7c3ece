//! Reading evaluation inputs: per-item score files and RewardBench datasets (JSONL, or the
//! Hugging Face parquet with the `parquet` feature). Every problem names the file and line.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::rewardbench::ScoredRow;

/// An input that cannot be used, with the file and (for JSONL) the line at fault.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line (or parquet row) does not fit the format.
    #[error("{path}:{line}: {message}")]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line (or row) number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file as a whole cannot be used.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn id_string(v: Option<&Value>) -> Result<String, String> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err("'id' must be a string or an integer".into()),
    }
}

/// Parses and validates one line of a scores file.
pub fn parse_scored_row(line: &str) -> Result<ScoredRow, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let id = id_string(v.get("id"))?;
    let subset = v.get("subset").and_then(Value::as_str).ok_or("'subset' must be a string")?.to_string();
    let num_correct =
        v.get("num_correct").and_then(Value::as_u64).ok_or("'num_correct' must be a non-negative integer")? as usize;
    let scores = v
        .get("scores")
        .and_then(Value::as_array)
        .ok_or("'scores' must be an array of numbers")?
        .iter()
        .enumerate()
        .map(|(i, s)| s.as_f64().filter(|f| f.is_finite()).ok_or(format!("scores[{i}] is not a finite number")))
        .collect::<Result<Vec<f64>, String>>()?;
    if scores.is_empty() {
        return Err("'scores' is empty".into());
    }
    if num_correct == 0 {
        return Err("'num_correct' must be at least 1".into());
    }
    if num_correct > scores.len() {
        return Err(format!("'num_correct' is {num_correct} but there are only {} scores", scores.len()));
    }
    Ok(ScoredRow { id, subset, num_correct, scores })
}

/// Reads a JSONL file, parsing each non-blank line with `parse(line, line_number)`; the first
/// bad line stops the read with the file and line.
pub fn read_jsonl<T>(path: &Path, parse: impl Fn(&str, usize) -> Result<T, String>) -> Result<Vec<T>, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Read { path: path.into(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse(l, i + 1).map_err(|message| InputError::Row { path: path.into(), line: i + 1, message }))
        .collect()
}

/// Reads a scores JSONL file; the first bad line stops the read.
pub fn read_scores(path: &Path) -> Result<Vec<ScoredRow>, InputError> {
    read_jsonl(path, |line, _| parse_scored_row(line))
}

/// One benchmark item: a prompt and its completions, correct ones first.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkRow {
    /// The dataset id.
    pub id: String,
    /// The subset name.
    pub subset: String,
    /// The user prompt.
    pub prompt: String,
    /// Correct completions, then incorrect ones.
    pub completions: Vec<String>,
    /// How many of `completions`, from the start, are correct.
    pub num_correct: usize,
}

fn string_list(v: Option<&Value>, field: &str) -> Result<Vec<String>, String> {
    match v {
        Some(Value::Array(items)) => {
            items.iter().map(|s| s.as_str().map(str::to_string).ok_or(format!("'{field}' must hold strings"))).collect()
        }
        // RewardBench v1 stores one chosen and one rejected string.
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        _ => Err(format!("'{field}' must be a list of strings")),
    }
}

/// Parses one dataset row (RewardBench 2 fields: id, prompt, chosen, rejected, subset).
pub fn parse_benchmark_row(v: &Value) -> Result<BenchmarkRow, String> {
    let id = id_string(v.get("id"))?;
    let subset = v.get("subset").and_then(Value::as_str).ok_or("'subset' must be a string")?.to_string();
    let prompt = v.get("prompt").and_then(Value::as_str).ok_or("'prompt' must be a string")?.to_string();
    let chosen = string_list(v.get("chosen"), "chosen")?;
    let rejected = string_list(v.get("rejected"), "rejected")?;
    if chosen.is_empty() || rejected.is_empty() {
        return Err("'chosen' and 'rejected' must not be empty".into());
    }
    if let Some(n) = v.get("num_correct").and_then(Value::as_u64)
        && n as usize != chosen.len()
    {
        return Err(format!("'num_correct' is {n} but 'chosen' has {} completions", chosen.len()));
    }
    let num_correct = chosen.len();
    let mut completions = chosen;
    completions.extend(rejected);
    Ok(BenchmarkRow { id, subset, prompt, completions, num_correct })
}

/// Reads a RewardBench dataset: `.parquet` (with the `parquet` feature) or JSONL.
pub fn read_dataset(path: &Path) -> Result<Vec<BenchmarkRow>, InputError> {
    if path.extension().is_some_and(|e| e == "parquet") {
        return read_parquet(path);
    }
    read_jsonl(path, |line, _| {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
        parse_benchmark_row(&v)
    })
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path) -> Result<Vec<BenchmarkRow>, InputError> {
    use arrow_array::RecordBatch;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let file_error = |message: String| InputError::File { path: path.into(), message };
    let file = std::fs::File::open(path).map_err(|source| InputError::Read { path: path.into(), source })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| file_error(format!("not a readable parquet file: {e}")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| file_error(format!("cannot decode a record batch: {e}")))?;
        // arrow-json would be one more heavy crate; the columns read are few and simple.
        let values = record_batch_to_json(&batch).map_err(file_error)?;
        for v in values {
            let line = rows.len() + 1;
            rows.push(parse_benchmark_row(&v).map_err(|message| InputError::Row {
                path: path.into(),
                line,
                message,
            })?);
        }
    }
    Ok(rows)
}

#[cfg(feature = "parquet")]
fn cell(column: &arrow_array::ArrayRef, i: usize) -> Result<Value, String> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_schema::DataType;

    if column.is_null(i) {
        return Ok(Value::Null);
    }
    let list = |values: arrow_array::ArrayRef| {
        (0..values.len()).map(|j| cell(&values, j)).collect::<Result<Vec<_>, _>>().map(Value::Array)
    };
    match column.data_type() {
        DataType::Utf8 => Ok(Value::String(column.as_string::<i32>().value(i).to_string())),
        DataType::LargeUtf8 => Ok(Value::String(column.as_string::<i64>().value(i).to_string())),
        DataType::Utf8View => Ok(Value::String(column.as_string_view().value(i).to_string())),
        DataType::Int64 => Ok(Value::from(column.as_primitive::<Int64Type>().value(i))),
        DataType::List(_) => list(column.as_list::<i32>().value(i)),
        DataType::LargeList(_) => list(column.as_list::<i64>().value(i)),
        // Columns bestofn does not read (metadata structs, floats) are left out.
        _ => Ok(Value::Null),
    }
}

/// The rows of a record batch as JSON objects, so parquet and JSONL share one row parser.
#[cfg(feature = "parquet")]
fn record_batch_to_json(batch: &arrow_array::RecordBatch) -> Result<Vec<Value>, String> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|i| {
            let mut obj = serde_json::Map::new();
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                obj.insert(field.name().clone(), cell(column, i)?);
            }
            Ok(Value::Object(obj))
        })
        .collect()
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path) -> Result<Vec<BenchmarkRow>, InputError> {
    Err(InputError::File {
        path: path.into(),
        message: "reading parquet needs bestofn built with `--features parquet`; or convert the file to JSONL".into(),
    })
}

/// Reads a CSV whose lines starting with `#` are comments: the header and every record with
/// its 1-based line number.
pub fn read_csv(path: &Path) -> Result<(csv::StringRecord, Vec<(usize, csv::StringRecord)>), InputError> {
    let file_error = |message: String| InputError::File { path: path.into(), message };
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .flexible(true)
        .from_path(path)
        .map_err(|e| file_error(format!("cannot read CSV: {e}")))?;
    let headers = reader.headers().map_err(|e| file_error(format!("cannot read the header: {e}")))?.clone();
    let mut records = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| InputError::Row { path: path.into(), line: i + 2, message: e.to_string() })?;
        records.push((i + 2, record));
    }
    Ok((headers, records))
}

/// Reads a CSV into one map per row, column to cell.
pub fn read_csv_rows(path: &Path) -> Result<Vec<std::collections::BTreeMap<String, String>>, InputError> {
    let (headers, records) = read_csv(path)?;
    Ok(records
        .into_iter()
        .map(|(_, record)| headers.iter().map(str::to_string).zip(record.iter().map(str::to_string)).collect())
        .collect())
}

#[cfg(all(test, feature = "parquet"))]
mod parquet_tests {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use parquet::arrow::ArrowWriter;

    use super::*;

    fn list(rows: &[&[&str]]) -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for row in rows {
            for s in *row {
                b.values().append_value(s);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    }

    #[test]
    fn reads_the_hugging_face_layout_like_jsonl() {
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(StringArray::from(vec!["1", "tied:3"])) as ArrayRef),
            ("prompt", Arc::new(StringArray::from(vec!["2+2?", "Pick one."])) as ArrayRef),
            ("chosen", list(&[&["4"], &["a", "b"]])),
            ("rejected", list(&[&["5", "6", "7"], &["c"]])),
            ("num_correct", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("subset", Arc::new(StringArray::from(vec!["Math", "Ties"])) as ArrayRef),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test-00000.parquet");
        let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let rows = read_dataset(&path).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].completions, vec!["4", "5", "6", "7"]);
        assert_eq!((rows[1].id.as_str(), rows[1].num_correct, rows[1].subset.as_str()), ("tied:3", 2, "Ties"));

        std::fs::write(&path, b"not parquet").unwrap();
        let e = read_dataset(&path).unwrap_err().to_string();
        assert!(e.contains("test-00000.parquet") && e.contains("parquet"), "{e}");
    }
}
