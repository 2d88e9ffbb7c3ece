//! Scorer kind `consensus`: minimum-Bayes-risk selection. A candidate's score is its mean
//! similarity to the other candidates: equality of the answers when every candidate gives one
//! (majority voting, i.e. self-consistency), else token-level F1.
//!
//! A candidate's answer ([`answer_key`]) is its normalised final answer; a message that calls
//! tools answers with its set of canonical calls (name and arguments with keys sorted and
//! numbers normalised, parallel calls in any order), paired with the final answer of its content
//! when the content states one. A text answer and a tool call are different answers.

use std::collections::HashMap;

use super::message::CandidateMessage;
use super::{BoxFuture, ScoreInput, ScoreOutput, Scorer, ScorerUsage};
use crate::error::Error;

/// Scores candidates by agreement with each other; needs no model.
#[derive(Debug, Clone)]
pub struct ConsensusScorer {
    /// The scorer's configured name.
    pub name: String,
}

impl Scorer for ConsensusScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        let candidates = input.candidates.to_vec();
        let messages = input.candidate_messages();
        Box::pin(async move {
            // Quadratic in the candidates: off the I/O threads.
            let scores = super::off_io_threads(move || consensus_scores_of(&candidates, &messages)).await?;
            Ok(ScoreOutput { scores, usage: ScorerUsage::default() })
        })
    }
}

/// The text inside the last `\boxed{...}`, braces balanced.
fn last_boxed(text: &str) -> Option<&str> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The last number in a text ("-1,234.5", "3/4", ".5").
fn last_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut end = None;
    let mut i = bytes.len();
    while i > 0 {
        i -= 1;
        if bytes[i].is_ascii_digit() {
            end = Some(i + 1);
            break;
        }
    }
    let end = end?;
    let mut start = end;
    while start > 0 {
        let c = bytes[start - 1];
        let joins_digits = matches!(c, b',' | b'.' | b'/') && start >= 2 && bytes[start - 2].is_ascii_digit();
        if c.is_ascii_digit() || joins_digits || (c == b'.' && start < end) {
            start -= 1;
        } else {
            break;
        }
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    Some(&text[start..end])
}

/// The stated final answer: `\boxed{}`, "the answer is ...", "#### ...", or the last number.
pub fn final_answer(text: &str) -> Option<String> {
    if let Some(b) = last_boxed(text) {
        return Some(normalize_answer(b));
    }
    let lower = text.to_lowercase();
    for marker in ["the answer is", "final answer:", "final answer is", "answer:", "####"] {
        if let Some(at) = lower.rfind(marker) {
            let rest = text[at + marker.len()..].trim();
            let line = rest.lines().next().unwrap_or("").trim();
            if !line.is_empty() {
                return Some(normalize_answer(line));
            }
        }
    }
    last_number(text).map(normalize_answer)
}

/// Normalises an answer so that equal values compare equal: `$`, thousands separators, units
/// and trailing punctuation go; numbers and fractions become one canonical decimal
/// (1/2 = 0.5 = 0.50).
pub fn normalize_answer(raw: &str) -> String {
    let mut s = raw.trim().trim_end_matches(['.', '!', ';']).to_lowercase();
    for junk in ["$", "\\$", "\\!", "\\,", "\\text{", "\\mathrm{", "}", "{", "\\left", "\\right", "%"] {
        s = s.replace(junk, "");
    }
    let s = s.trim().to_string();
    if let Some(inner) = s.strip_prefix("\\frac").or_else(|| s.strip_prefix("\\dfrac")) {
        // "\frac12" and "\frac{1}{2}" both reach here as digits after brace removal only for
        // single digits; fall through to plain parsing otherwise.
        if inner.len() == 2 && inner.chars().all(|c| c.is_ascii_digit()) {
            let (a, b) = inner.split_at(1);
            return canonical_number(&format!("{a}/{b}")).unwrap_or(s);
        }
    }
    // Leading number with a unit after it: "12 apples", "5 km".
    let number_part: String =
        s.chars().take_while(|c| c.is_ascii_digit() || matches!(c, '.' | ',' | '/' | '-' | ' ')).collect();
    let number_part = number_part.trim();
    if !number_part.is_empty()
        && let Some(c) = canonical_number(number_part)
    {
        return c;
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn canonical_number(text: &str) -> Option<String> {
    let t = text.replace([',', ' '], "");
    let value = match t.split_once('/') {
        Some((a, b)) => {
            let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
            if b == 0.0 {
                return None;
            }
            a / b
        }
        None => t.parse::<f64>().ok()?,
    };
    // Round away float noise so 0.1 + 0.2 style answers still agree.
    let rounded = (value * 1e9).round() / 1e9;
    Some(format!("{rounded}"))
}

/// The Fx hash (rustc's): interning tokens is hash-bound, and SipHash's resistance to chosen
/// collisions buys nothing for one request's own candidates. Written here to avoid a crate for
/// ten lines.
#[derive(Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What separates the parts of an [`answer_key`] that calls tools: no normalised answer and no
/// canonical call contains it.
const CALLS: char = '\u{1f}';

/// The answer a candidate gives, for voting (the consensus and weighted-vote scorers, and the
/// adaptive agreement rule): the normalised final answer of `text` (the candidate as scorers
/// see it) when the message calls no tool; else its set of canonical calls
/// ([`CandidateMessage::tool_call_key`]), with the final answer of its content before them when
/// the content states one. `None`: no answer stated.
pub fn answer_key(text: &str, message: &CandidateMessage) -> Option<String> {
    if message.tool_calls.is_empty() {
        return final_answer(text);
    }
    let mut key = String::new();
    if let Some(answer) = final_answer(&message.content) {
        key.push_str(&answer);
    }
    for call in message.tool_call_key() {
        key.push(CALLS);
        key.push_str(&call);
    }
    Some(key)
}

/// Token-level F1 from the size of the multiset intersection and the two lengths.
fn f1_from_common(common: u32, a_len: u32, b_len: u32) -> f64 {
    if a_len == 0 && b_len == 0 {
        return 1.0;
    }
    if common == 0 {
        return 0.0;
    }
    let precision = f64::from(common) / f64::from(a_len);
    let recall = f64::from(common) / f64::from(b_len);
    2.0 * precision * recall / (precision + recall)
}

/// Mean similarity of each candidate to the others. Tokens are interned to integers once, so
/// 64 candidates of 1,000 tokens stay in the low milliseconds (`benches/consensus_speed.rs`).
pub fn consensus_scores(candidates: &[String]) -> Vec<f64> {
    let answers: Vec<Option<String>> = candidates.iter().map(|c| final_answer(c)).collect();
    scores_from(candidates, &answers)
}

/// [`consensus_scores`] over whole messages: the answers are [`answer_key`]s, so tool calls vote
/// as canonical calls; without an answer from every candidate, token F1 over each text (a
/// message that calls tools as its rendering, calls included). `messages` has one message per
/// candidate (else the texts alone are read).
pub fn consensus_scores_of(candidates: &[String], messages: &[CandidateMessage]) -> Vec<f64> {
    if messages.len() != candidates.len() || messages.iter().all(|m| m.tool_calls.is_empty()) {
        return consensus_scores(candidates);
    }
    let answers: Vec<Option<String>> = candidates.iter().zip(messages).map(|(c, m)| answer_key(c, m)).collect();
    let texts: Vec<String> = candidates
        .iter()
        .zip(messages)
        .map(|(c, m)| if m.tool_calls.is_empty() { c.clone() } else { m.render(false) })
        .collect();
    scores_from(&texts, &answers)
}

/// Majority voting over `answers` when every candidate has one, else mean token F1.
fn scores_from(candidates: &[String], answers: &[Option<String>]) -> Vec<f64> {
    let n = candidates.len();
    if n < 2 {
        return vec![0.0; n];
    }
    if answers.iter().all(Option::is_some) {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for a in answers.iter().flatten() {
            *counts.entry(a.as_str()).or_default() += 1;
        }
        return answers
            .iter()
            .map(|a| {
                let same = a.as_deref().map_or(0, |a| counts[a]) - 1;
                same as f64 / (n - 1) as f64
            })
            .collect();
    }
    // Lowercase each text once and intern borrowed slices: no allocation per token.
    let lowered: Vec<String> = candidates.iter().map(|c| c.to_lowercase()).collect();
    let mut vocabulary: HashMap<&str, u32, std::hash::BuildHasherDefault<FxHasher>> = HashMap::default();
    let bags: Vec<(Vec<(u32, u32)>, u32)> = lowered
        .iter()
        .map(|c| {
            let mut ids: Vec<u32> = c
                .split(|ch: char| !ch.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(|w| {
                    let next = vocabulary.len() as u32;
                    *vocabulary.entry(w).or_insert(next)
                })
                .collect();
            let len = ids.len() as u32;
            ids.sort_unstable();
            let mut bag: Vec<(u32, u32)> = Vec::new();
            for id in ids {
                match bag.last_mut() {
                    Some((last, count)) if *last == id => *count += 1,
                    _ => bag.push((id, 1)),
                }
            }
            (bag, len)
        })
        .collect();
    // Pairwise overlap through one dense count array per row: a lookup per token of the other
    // candidate, with no branchy merge (several times faster than merging sorted lists).
    let mut sums = vec![0.0; n];
    let mut dense = vec![0u32; vocabulary.len()];
    for i in 0..n {
        for &(id, count) in &bags[i].0 {
            dense[id as usize] = count;
        }
        for j in i + 1..n {
            let common: u32 = bags[j].0.iter().map(|&(id, count)| dense[id as usize].min(count)).sum();
            let s = f1_from_common(common, bags[i].1, bags[j].1);
            sums[i] += s;
            sums[j] += s;
        }
        for &(id, _) in &bags[i].0 {
            dense[id as usize] = 0;
        }
    }
    sums.iter().map(|s| s / (n - 1) as f64).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn final_answers_normalise() {
        assert_eq!(final_answer("so x = \\boxed{\\frac{1}{2}}").as_deref(), Some("0.5"));
        assert_eq!(final_answer("The answer is 0.50.").as_deref(), Some("0.5"));
        assert_eq!(final_answer("... #### 1,234").as_deref(), Some("1234"));
        assert_eq!(final_answer("It costs $12 in total").as_deref(), Some("12"));
        assert_eq!(final_answer("She has 1/2 of it").as_deref(), Some("0.5"));
        assert_eq!(final_answer("The answer is 5 km").as_deref(), Some("5"));
        assert_eq!(final_answer("no numbers here"), None);
    }

    #[test]
    fn the_majority_answer_wins() {
        let c: Vec<String> =
            ["x = 4, so the answer is 4", "I get \\boxed{4}", "The answer is 5", "#### 4.0", "answer: 7"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let scores = consensus_scores(&c);
        // The first of the highest scores: the selection core's rule (scoring sits below it).
        let best = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        assert!(final_answer(&c[best]).as_deref() == Some("4"));
        assert_eq!(scores[0], 2.0 / 4.0);
        assert_eq!(scores[2], 0.0);
    }

    #[test]
    fn free_text_uses_token_f1() {
        let c: Vec<String> = ["the cat sat on the mat", "a cat sat on a mat", "stock markets fell sharply"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = consensus_scores(&c);
        assert!(scores[0] > scores[2] && scores[1] > scores[2]);
    }

    fn call(name: &str, arguments: &str) -> serde_json::Value {
        serde_json::json!({"type": "function", "function": {"name": name, "arguments": arguments}})
    }

    fn message(content: &str, calls: &[serde_json::Value]) -> CandidateMessage {
        let content = if content.is_empty() { serde_json::Value::Null } else { content.into() };
        CandidateMessage::from_message(
            &serde_json::json!({"role": "assistant", "content": content, "tool_calls": calls}),
        )
    }

    #[test]
    fn tool_calls_vote_as_canonical_calls() {
        let messages = vec![
            message("", &[call("get_weather", r#"{"city":"Paris"}"#)]),
            message("", &[call("get_weather", "{\"city\": \"Paris\"}")]),
            message("", &[call("get_weather", r#"{"city":"Lyon"}"#)]),
            message("", &[call("get_weather", r#"{"city": Paris"#)]),
        ];
        let texts = vec![String::new(); 4];
        // Without the messages every candidate is the same empty text.
        assert_eq!(consensus_scores(&texts), vec![1.0; 4]);
        let scores = consensus_scores_of(&texts, &messages);
        assert_eq!(scores, vec![1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]);
    }

    #[test]
    fn parallel_calls_are_a_set_and_text_and_calls_are_different_answers() {
        let (a, b) = (call("get_time", "{}"), call("get_weather", r#"{"city": "Paris", "days": 2.0}"#));
        let b2 = call("get_weather", r#"{"days": 2, "city": "Paris"}"#);
        let messages = vec![
            message("", &[a.clone(), b.clone()]),
            message("", &[b2.clone(), a.clone()]),
            message("The answer is 4", &[]),
            message("The answer is 4", &[a.clone(), b2.clone()]),
            message("Let me check.", &[b.clone(), a.clone()]),
        ];
        let texts: Vec<String> = messages.iter().map(|m| m.content.clone()).collect();
        let keys: Vec<Option<String>> = texts.iter().zip(&messages).map(|(t, m)| answer_key(t, m)).collect();
        assert_eq!(keys[0], keys[1], "the same calls in another order, numbers and keys respelled");
        assert_eq!(keys[0], keys[4], "content without a final answer adds nothing to the calls");
        assert_ne!(keys[2], keys[3], "an answer alone and the answer with calls differ");
        assert_ne!(keys[0], keys[3]);
        assert_eq!(keys[2].as_deref(), Some("4"));
        let scores = consensus_scores_of(&texts, &messages);
        assert_eq!(scores, vec![0.5, 0.5, 0.0, 0.0, 0.5]);
    }

    proptest! {
        #[test]
        fn shuffling_permutes_scores(words in prop::collection::vec("[a-c ]{0,12}|[0-9]{1,2}", 2..7), rot in 0usize..7) {
            let before = consensus_scores(&words);
            let mut shuffled = words.clone();
            let r = rot % words.len();
            shuffled.rotate_left(r);
            let after = consensus_scores(&shuffled);
            for (i, s) in after.iter().enumerate() {
                prop_assert!((s - before[(i + r) % words.len()]).abs() < 1e-12);
            }
        }
    }
}
