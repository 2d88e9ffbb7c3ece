//! Scorer kind `verify`: rule-based rewards that cannot be fooled by fluent text. A candidate's
//! score is the fraction of recognised checks it passes (0 when nothing is recognised):
//!
//! - Constraints stated in the last user message, in the families of IFEval. Recognised
//!   phrasings (case-insensitive; N as digits or one..twenty):
//!   - "in exactly / at least / at most / no more than / less than / fewer than / under /
//!     more than / over N words" (and "... N sentences"); "in N words"
//!   - "exactly N paragraphs" / "N paragraphs" (separated by blank lines or `***`)
//!   - "all lowercase", "in lowercase", "lowercase letters"; "all capital letters", "all caps",
//!     "in uppercase", "uppercase letters"
//!   - "no commas", "without commas", "without using any commas", "do not use any commas"
//!   - "include the keywords 'a' and 'b'" / "include the words ..." (quoted words)
//!   - "do not include / do not use / without using the word(s) 'x'"
//!   - "the word 'x' should appear (at least) N times"
//!   - "in JSON format", "valid JSON", "as JSON" (the reply, fences removed, parses)
//!   - "exactly N bullet points" / "N bullet points" (lines starting with `*` or `-`)
//!   - "N sections" (lines starting "Section k" / "SECTION k")
//!   - "at least N placeholders" (square brackets like `[address]`)
//!   - "title wrapped in double angular brackets" (`<<title>>`)
//!   - "start / begin your response|answer with 'X'", "end / finish your response|answer with 'X'"
//!   - "wrap your entire response in double quotation marks"
//! - The request's `response_format`: `json_object` (the reply is a JSON object) and
//!   `json_schema` (it also conforms to the schema, compiled once per request by the
//!   `jsonschema` crate: see [`super::json_schema`]).
//! - A configured regex the reply must match.

use regex::Regex;
use serde_json::Value;

use super::json_schema::{CompiledSchema, FormatCheck, ResponseFormat, reply_json};
use super::{BoxFuture, ScoreInput, ScoreOutput, Scorer, ScorerUsage};
use crate::error::Error;

/// The rule-based verifier.
#[derive(Debug, Clone)]
pub struct VerifyScorer {
    /// The scorer's configured name.
    pub name: String,
    /// A pattern every good reply matches, if configured.
    pub pattern: Option<Regex>,
}

/// One recognised check.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// Word count compared with a bound.
    Words(Cmp, usize),
    /// Sentence count compared with a bound.
    Sentences(Cmp, usize),
    /// Exactly this many paragraphs.
    Paragraphs(usize),
    /// No uppercase letters.
    Lowercase,
    /// No lowercase letters.
    Uppercase,
    /// No commas.
    NoCommas,
    /// Each word must appear.
    Include(Vec<String>),
    /// No word may appear.
    Exclude(Vec<String>),
    /// The word appears at least this many times.
    WordTimes(String, usize),
    /// The reply is JSON.
    Json,
    /// Exactly this many bullet points.
    Bullets(usize),
    /// Exactly this many sections.
    Sections(usize),
    /// At least this many `[placeholders]`.
    Placeholders(usize),
    /// A `<<title>>`.
    Title,
    /// Starts with the phrase.
    StartsWith(String),
    /// Ends with the phrase.
    EndsWith(String),
    /// Wrapped in double quotes.
    Quoted,
    /// Matches the configured regex.
    Pattern,
    /// A JSON object (response_format json_object).
    JsonObject,
    /// A JSON value conforming to this schema (response_format json_schema).
    JsonSchema(CompiledSchema),
}

/// A comparison of a count with a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// ==
    Exactly,
    /// >=
    AtLeast,
    /// <=
    AtMost,
    /// <
    Below,
    /// >
    Above,
}

impl Cmp {
    fn holds(self, count: usize, bound: usize) -> bool {
        match self {
            Cmp::Exactly => count == bound,
            Cmp::AtLeast => count >= bound,
            Cmp::AtMost => count <= bound,
            Cmp::Below => count < bound,
            Cmp::Above => count > bound,
        }
    }
}

const NUMBER_WORDS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

fn number(text: &str) -> Option<usize> {
    text.parse().ok().or_else(|| NUMBER_WORDS.iter().position(|w| *w == text))
}

const NUM: &str = r"(\d+|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty)";

fn re(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

fn quoted(text: &str) -> Vec<String> {
    re(r#"["'“‘]([^"'”’]+)["'”’]"#)
        .map(|r| r.captures_iter(text).filter_map(|c| c.get(1)).map(|m| m.as_str().trim().to_lowercase()).collect())
        .unwrap_or_default()
}

fn comparison(word: &str) -> Cmp {
    match word.trim() {
        "exactly" | "" => Cmp::Exactly,
        "at least" | "a minimum of" => Cmp::AtLeast,
        "at most" | "no more than" | "a maximum of" => Cmp::AtMost,
        "less than" | "fewer than" | "under" => Cmp::Below,
        _ => Cmp::Above,
    }
}

/// The checks a prompt states.
pub fn parse_constraints(prompt: &str) -> Vec<Check> {
    let p = prompt.to_lowercase();
    let mut checks = Vec::new();
    let bound = format!(
        r"(exactly|at least|at most|no more than|less than|fewer than|under|more than|over|a minimum of|a maximum of)?\s*{NUM}\s+"
    );
    for (unit, make) in [("words?", Check::Words as fn(Cmp, usize) -> Check), ("sentences?", Check::Sentences)] {
        if let Some(r) = re(&format!(r"{bound}{unit}\b")) {
            for c in r.captures_iter(&p) {
                if let Some(n) = c.get(2).and_then(|m| number(m.as_str())) {
                    checks.push(make(comparison(c.get(1).map_or("", |m| m.as_str())), n));
                }
            }
        }
    }
    if let Some(c) = re(&format!(r"{NUM}\s+paragraphs")).and_then(|r| r.captures(&p))
        && let Some(n) = c.get(1).and_then(|m| number(m.as_str()))
    {
        checks.push(Check::Paragraphs(n));
    }
    if ["all lowercase", "in lowercase", "lowercase letters"].iter().any(|k| p.contains(k)) {
        checks.push(Check::Lowercase);
    }
    if ["all capital", "all caps", "in uppercase", "uppercase letters", "capital letters"].iter().any(|k| p.contains(k))
    {
        checks.push(Check::Uppercase);
    }
    if ["no commas", "without commas", "without using any commas", "any commas"].iter().any(|k| p.contains(k)) {
        checks.push(Check::NoCommas);
    }
    if let Some(c) = re(r"(?i)include the (?:key)?words?\s+([^.]*)").and_then(|r| r.captures(prompt))
        && let Some(m) = c.get(1)
    {
        let words = quoted(m.as_str());
        if !words.is_empty() {
            checks.push(Check::Include(words));
        }
    }
    if let Some(c) = re(r"(?i)(?:do not include|do not use|don't use|without using|avoid) the words?\s+([^.]*)")
        .and_then(|r| r.captures(prompt))
        && let Some(m) = c.get(1)
    {
        let words = quoted(m.as_str());
        if !words.is_empty() {
            checks.push(Check::Exclude(words));
        }
    }
    if let Some(c) =
        re(&format!(r#"the (?:word|letter) ["'“‘]([^"'”’]+)["'”’] should appear (?:at least )?{NUM} times"#))
            .and_then(|r| r.captures(&p))
        && let (Some(w), Some(n)) = (c.get(1), c.get(2).and_then(|m| number(m.as_str())))
    {
        checks.push(Check::WordTimes(w.as_str().to_string(), n));
    }
    if ["json format", "valid json", "as json", "in json"].iter().any(|k| p.contains(k)) {
        checks.push(Check::Json);
    }
    if let Some(c) = re(&format!(r"{NUM}\s+(?:markdown\s+)?bullet points?")).and_then(|r| r.captures(&p))
        && let Some(n) = c.get(1).and_then(|m| number(m.as_str()))
    {
        checks.push(Check::Bullets(n));
    }
    if let Some(c) = re(&format!(r"{NUM}\s+sections")).and_then(|r| r.captures(&p))
        && let Some(n) = c.get(1).and_then(|m| number(m.as_str()))
    {
        checks.push(Check::Sections(n));
    }
    if let Some(c) = re(&format!(r"{NUM}\s+placeholders?")).and_then(|r| r.captures(&p))
        && let Some(n) = c.get(1).and_then(|m| number(m.as_str()))
    {
        checks.push(Check::Placeholders(n));
    }
    if p.contains("double angular brackets") || p.contains("<<") {
        checks.push(Check::Title);
    }
    let phrase = r#"(?:with )?(?:the )?(?:exact )?(?:word|phrase)?\s*["'“‘]([^"'”’]+)["'”’]"#;
    if let Some(c) = re(&format!(r"(?i)(?:starts?|begins?) (?:your|the) (?:response|answer|reply) {phrase}"))
        .and_then(|r| r.captures(prompt))
        && let Some(m) = c.get(1)
    {
        checks.push(Check::StartsWith(m.as_str().to_string()));
    }
    if let Some(c) = re(&format!(r"(?i)(?:ends?|finish(?:es)?) (?:your|the) (?:response|answer|reply) {phrase}"))
        .and_then(|r| r.captures(prompt))
        && let Some(m) = c.get(1)
    {
        checks.push(Check::EndsWith(m.as_str().to_string()));
    }
    if p.contains("double quotation marks") && (p.contains("wrap") || p.contains("entire response")) {
        checks.push(Check::Quoted);
    }
    checks
}

fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    let t = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).unwrap_or(t);
    t.strip_suffix("```").unwrap_or(t).trim()
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().filter(|w| w.chars().any(char::is_alphanumeric)).count()
}

fn sentence_count(text: &str) -> usize {
    text.split(['.', '!', '?']).filter(|s| s.chars().any(char::is_alphanumeric)).count()
}

/// Whether a reply passes a check.
pub fn passes(check: &Check, reply: &str, pattern: Option<&Regex>) -> bool {
    let lower = reply.to_lowercase();
    let words: Vec<String> = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let has_word = |w: &str| if w.contains(' ') { lower.contains(w) } else { words.iter().any(|x| x == w) };
    match check {
        Check::Words(cmp, n) => cmp.holds(word_count(reply), *n),
        Check::Sentences(cmp, n) => cmp.holds(sentence_count(reply), *n),
        Check::Paragraphs(n) => {
            reply.split("***").flat_map(|p| p.split("\n\n")).filter(|p| !p.trim().is_empty()).count() == *n
        }
        Check::Lowercase => reply.chars().any(char::is_alphabetic) && !reply.chars().any(char::is_uppercase),
        Check::Uppercase => reply.chars().any(char::is_alphabetic) && !reply.chars().any(char::is_lowercase),
        Check::NoCommas => !reply.contains(','),
        Check::Include(list) => list.iter().all(|w| has_word(w)),
        Check::Exclude(list) => !list.iter().any(|w| has_word(w)),
        Check::WordTimes(w, n) => words.iter().filter(|x| *x == w).count() >= *n,
        Check::Json => serde_json::from_str::<Value>(strip_fences(reply)).is_ok(),
        Check::Bullets(n) => {
            reply.lines().filter(|l| l.trim_start().starts_with("* ") || l.trim_start().starts_with("- ")).count() == *n
        }
        Check::Sections(n) => {
            reply.lines().filter(|l| l.trim_start().to_lowercase().starts_with("section ")).count() == *n
        }
        Check::Placeholders(n) => re(r"\[[^\]]+\]").is_some_and(|r| r.find_iter(reply).count() >= *n),
        Check::Title => re(r"<<[^>]+>>").is_some_and(|r| r.is_match(reply)),
        Check::StartsWith(p) => lower.trim_start().starts_with(&p.to_lowercase()),
        Check::EndsWith(p) => lower.trim_end().ends_with(&p.to_lowercase()),
        Check::Quoted => {
            let t = reply.trim();
            t.len() >= 2 && t.starts_with('"') && t.ends_with('"')
        }
        Check::Pattern => pattern.is_some_and(|r| r.is_match(reply)),
        Check::JsonObject => reply_json(reply).is_some_and(|v| v.is_object()),
        Check::JsonSchema(schema) => reply_json(reply).is_some_and(|v| schema.is_valid(&v)),
    }
}

/// The checks for a request: stated constraints, `response_format`, the configured pattern.
pub fn checks_for(prompt: &str, response_format: Option<&ResponseFormat>, has_pattern: bool) -> Vec<Check> {
    let mut checks = parse_constraints(prompt);
    match response_format.map(ResponseFormat::check) {
        Some(FormatCheck::JsonObject) => checks.push(Check::JsonObject),
        Some(FormatCheck::Schema(schema)) => checks.push(Check::JsonSchema(schema.clone())),
        _ => {}
    }
    if has_pattern {
        checks.push(Check::Pattern);
    }
    checks
}

impl Scorer for VerifyScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn pointwise(&self) -> bool {
        true
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        let prompt = input.conversation.iter().rev().find(|m| m.role == "user").map_or("", |m| m.content.as_str());
        let checks = checks_for(prompt, input.response_format, self.pattern.is_some());
        let (candidates, pattern) = (input.candidates.to_vec(), self.pattern.clone());
        let verify = move || -> Vec<f64> {
            candidates
                .iter()
                .map(|c| {
                    if checks.is_empty() {
                        0.0
                    } else {
                        checks.iter().filter(|k| passes(k, c, pattern.as_ref())).count() as f64 / checks.len() as f64
                    }
                })
                .collect()
        };
        Box::pin(async move {
            // Patterns and JSON checks over long outputs: off the I/O threads.
            let scores = super::off_io_threads(verify).await?;
            Ok(ScoreOutput { scores, usage: ScorerUsage::default() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ifeval_phrasings() {
        let c = parse_constraints("Answer in all lowercase, in under 50 words.");
        assert_eq!(c, vec![Check::Words(Cmp::Below, 50), Check::Lowercase]);
        let c = parse_constraints(
            "Write exactly 3 bullet points. Include the keywords 'tea' and 'milk'. Do not use the word 'coffee'.",
        );
        assert!(c.contains(&Check::Bullets(3)));
        assert!(c.contains(&Check::Include(vec!["tea".into(), "milk".into()])));
        assert!(c.contains(&Check::Exclude(vec!["coffee".into()])));
        let c = parse_constraints("End your response with the exact phrase 'Any other questions?'. Use no commas.");
        assert!(c.contains(&Check::EndsWith("Any other questions?".into())) && c.contains(&Check::NoCommas));
        let c = parse_constraints(
            "Give a title wrapped in double angular brackets, such as <<poem>>, and use two paragraphs.",
        );
        assert!(c.contains(&Check::Title) && c.contains(&Check::Paragraphs(2)));
        assert!(parse_constraints("Tell me about Paris.").is_empty());
    }

    #[test]
    fn the_obedient_candidate_wins() {
        let prompt = "Describe tea. Answer in all lowercase, in under 50 words.";
        let candidates = [
            "Tea is a beverage made from the leaves of Camellia sinensis.".to_string(),
            "tea is a drink brewed from leaves; it comes in green, black and oolong.".to_string(),
            ("tea ".repeat(60)).to_string(),
        ];
        let checks = checks_for(prompt, None, false);
        let scores: Vec<f64> = candidates
            .iter()
            .map(|c| checks.iter().filter(|k| passes(k, c, None)).count() as f64 / checks.len() as f64)
            .collect();
        assert_eq!(scores, vec![0.5, 1.0, 0.5]);
    }

    #[test]
    fn json_schema_conformance() {
        let schema = serde_json::json!({"type": "object", "required": ["name", "age"], "additionalProperties": false,
            "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}}});
        let rf = serde_json::json!({"type": "json_schema", "json_schema": {"name": "p", "schema": schema}});
        let rf = ResponseFormat::prepare(&rf).unwrap();
        let checks = checks_for("Give me a person.", Some(&rf), false);
        let ok = |reply: &str| checks.iter().all(|k| passes(k, reply, None));
        assert!(ok(r#"{"name": "Ada", "age": 36}"#));
        assert!(ok("```json\n{\"name\": \"Ada\", \"age\": 36}\n```"));
        assert!(!ok(r#"{"name": "Ada"}"#), "missing required");
        assert!(!ok(r#"{"name": "Ada", "age": -1}"#), "below minimum");
        assert!(!ok(r#"{"name": "Ada", "age": 3, "x": 1}"#), "additional property");
        assert!(!ok("Ada, 36"), "not JSON");
    }
}
