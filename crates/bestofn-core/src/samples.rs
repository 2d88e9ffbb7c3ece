//! The samples format: one JSON line per best-of-N request, written by the proxy's recorder and
//! read by every `bestofn eval` command that works on recorded traffic. One serde type for both
//! sides, so the two cannot drift; fields this version does not know are kept, not dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::score::{CandidateMessage, Message};

/// One recorded best-of-N request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// The request id (a number in hand-written files is read as its text).
    #[serde(deserialize_with = "string_or_number")]
    pub prompt_id: String,
    /// The request's domain; absent means `general`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The last user message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The whole conversation the candidates answer, as the scorer saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// The request's `response_format`, which verifiers check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    /// The request's `tools`, against which candidates' tool calls are validated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    /// The request's `tool_choice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// The candidates in arrival order.
    pub candidates: Vec<CandidateRecord>,
    /// Index of the candidate the proxy answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<usize>,
    /// The scorer that chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorer: Option<String>,
    /// The seed of the run's RNG (the client's, or the one the proxy drew): a replay with it
    /// draws the same soft pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Candidates requested from the upstream (cancelled ones included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_sampled: Option<u32>,
    /// Why sampling stopped (`max_n`, `accept_score`, `agreement`, `deadline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Whether the answer was fused from the top candidates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fused: bool,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One recorded candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    /// The candidate's text as scorers read it by default: its message's rendering without
    /// reasoning (content, `tool call: NAME ARGUMENTS` lines); empty when not recorded.
    #[serde(default)]
    pub text: String,
    /// The upstream's whole assistant message (content, reasoning, tool calls, refusal, any
    /// other field), when recorded: rescoring renders the candidate from it (so a scorer with
    /// `include_reasoning` reads the reasoning offline too). Files written before it lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Value>,
    /// Rewards by scorer name.
    #[serde(default)]
    pub rewards: BTreeMap<String, f64>,
    /// Correctness label in [0, 1], when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<f64>,
    /// The upstream's `finish_reason`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Completion tokens of this candidate, when the upstream reported them per candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    /// Wall time of the upstream call that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom("'prompt_id' must be a string or a number")),
    }
}

impl CandidateRecord {
    /// Completion tokens: the recorded count, else about four bytes a token (an estimate).
    pub fn token_cost(&self) -> f64 {
        self.completion_tokens.map_or_else(|| (self.text.len() as f64 / 4.0).ceil(), |t| t as f64)
    }

    /// The candidate's message as scorers read it: from the recorded `message` when there is
    /// one (an object), else the recorded text as content.
    pub fn candidate_message(&self) -> CandidateMessage {
        match &self.message {
            Some(message @ Value::Object(_)) => CandidateMessage::from_message(message),
            _ => CandidateMessage::from_text(self.text.clone()),
        }
    }
}

impl SampleRecord {
    /// Parses and checks one line; the error names the field at fault.
    pub fn parse(line: &str) -> Result<SampleRecord, String> {
        let mut de = serde_json::Deserializer::from_str(line);
        let record: SampleRecord = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    format!("not valid JSON: {inner}")
                }
                _ if path == "." || path.is_empty() => inner.to_string(),
                _ => format!("{path}: {inner}"),
            }
        })?;
        record.check()?;
        Ok(record)
    }

    fn check(&self) -> Result<(), String> {
        if self.candidates.is_empty() {
            return Err("'candidates' is empty".into());
        }
        for (i, c) in self.candidates.iter().enumerate() {
            if let Some(label) = c.correct
                && !(0.0..=1.0).contains(&label)
            {
                return Err(format!("candidates[{i}].correct must be a number in [0, 1], got {label}"));
            }
            if let Some((name, r)) = c.rewards.iter().find(|(_, r)| !r.is_finite()) {
                return Err(format!("candidates[{i}].rewards.{name} is not a finite number ({r})"));
            }
        }
        Ok(())
    }

    /// The domain, `general` when none was recorded.
    pub fn domain(&self) -> &str {
        self.domain.as_deref().unwrap_or(crate::bon::DEFAULT_DOMAIN)
    }

    /// The conversation the scorer saw: the recorded messages, else the prompt as one user turn.
    pub fn conversation(&self) -> Vec<Message> {
        match &self.messages {
            Some(messages) if !messages.is_empty() => messages.clone(),
            _ => vec![Message { role: "user".into(), content: self.prompt.clone().unwrap_or_default() }],
        }
    }

    /// The candidates' texts, in order.
    pub fn texts(&self) -> Vec<String> {
        self.candidates.iter().map(|c| c.text.clone()).collect()
    }

    /// The candidates as scorers read them, in order: each one's message
    /// ([`CandidateRecord::candidate_message`]) and its default rendering, the same rendering
    /// the proxy scored (a candidate recorded without its message: its text).
    pub fn scored_candidates(&self) -> (Vec<String>, Vec<CandidateMessage>) {
        self.candidates
            .iter()
            .map(|c| {
                let message = c.candidate_message();
                let text = if c.message.is_some() { message.render(false) } else { c.text.clone() };
                (text, message)
            })
            .unzip()
    }

    /// The correctness labels, when every candidate has one.
    pub fn labels(&self) -> Option<Vec<f64>> {
        self.candidates.iter().map(|c| c.correct).collect()
    }

    /// Rewards by name, for the names every candidate carries.
    pub fn rewards(&self) -> BTreeMap<String, Vec<f64>> {
        let mut names: Vec<&String> = self.candidates.iter().flat_map(|c| c.rewards.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let list: Option<Vec<f64>> = self.candidates.iter().map(|c| c.rewards.get(name).copied()).collect();
                list.map(|l| (name.clone(), l))
            })
            .collect()
    }

    /// Sets every candidate's `correct` label (one per candidate, clamped to [0, 1]).
    pub fn set_labels(&mut self, labels: &[f64]) {
        for (c, l) in self.candidates.iter_mut().zip(labels) {
            c.correct = Some(l.clamp(0.0, 1.0));
        }
    }

    /// Sets every candidate's reward under `name` (one per candidate).
    pub fn set_rewards(&mut self, name: &str, rewards: &[f64]) {
        for (c, r) in self.candidates.iter_mut().zip(rewards) {
            c.rewards.insert(name.to_string(), *r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_unknown_fields() {
        let line = r#"{"prompt_id":7,"domain":"math","messages":[{"role":"system","content":"s"},{"role":"user","content":"q"}],"candidates":[{"text":"a","rewards":{"rm":1.5},"tool_calls":[1]},{"text":"b","rewards":{"rm":0.5,"j":2.0}}],"chosen":0,"scorer":"rm","tenant":"t1"}"#;
        let r = SampleRecord::parse(line).unwrap();
        assert_eq!(r.prompt_id, "7");
        assert_eq!(r.extra["tenant"], "t1");
        assert_eq!(r.candidates[0].extra["tool_calls"], serde_json::json!([1]));
        assert_eq!(r.conversation().len(), 2, "the recorded conversation, not the prompt alone");
        assert_eq!(r.rewards().keys().collect::<Vec<_>>(), vec!["rm"], "j is not on every candidate");
        assert_eq!(r.labels(), None);
        let again: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(again["tenant"], "t1");
        assert_eq!(again["candidates"][0]["tool_calls"], serde_json::json!([1]));
        assert_eq!(SampleRecord::parse(&again.to_string()).unwrap(), r);
    }

    #[test]
    fn a_recorded_message_is_read_back_and_rendered_and_old_rows_still_read() {
        let line = r#"{"prompt_id":"m","candidates":[{"text":"tool call: f {\"a\":1}","message":{"role":"assistant","content":null,"reasoning":"think","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\": 1}"}}],"vendor_extra":{"k":1}}},{"text":"plain"}]}"#;
        let r = SampleRecord::parse(line).unwrap();
        assert_eq!(r.candidates[0].message.as_ref().unwrap()["vendor_extra"]["k"], 1);
        let (texts, messages) = r.scored_candidates();
        assert_eq!(texts, ["tool call: f {\"a\":1}", "plain"]);
        assert_eq!(messages[0].render(true), "think\n\ntool call: f {\"a\":1}");
        assert_eq!(messages[1], CandidateMessage::from_text("plain"));
        let again = serde_json::to_value(&r).unwrap();
        assert!(again["candidates"][1].get("message").is_none(), "no message recorded, none written");
        assert_eq!(SampleRecord::parse(&again.to_string()).unwrap(), r);
    }

    #[test]
    fn errors_name_the_field() {
        let e = SampleRecord::parse(r#"{"prompt_id":"a","candidates":[{"rewards":{"rm":"x"}}]}"#).unwrap_err();
        assert!(e.contains("candidates[0].rewards.rm"), "{e}");
        let e = SampleRecord::parse(r#"{"candidates":[]}"#).unwrap_err();
        assert!(e.contains("prompt_id"), "{e}");
        assert!(SampleRecord::parse("{oops").unwrap_err().contains("JSON"));
        let e = SampleRecord::parse(r#"{"prompt_id":"a","candidates":[{"correct":2}]}"#).unwrap_err();
        assert!(e.contains("candidates[0].correct"), "{e}");
    }
}
