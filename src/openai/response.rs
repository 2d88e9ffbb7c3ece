//! Building the chat.completion answer and the `bestofn` object from an engine outcome.

use serde_json::{Map, Value, json};

use crate::bon::{Api, Outcome, Plan};

/// The `bestofn` object: what was sampled, how it scored, what was chosen, and what it cost.
pub fn bestofn_object(plan: &Plan, outcome: &Outcome) -> Value {
    let samples = &outcome.samples;
    let mut obj = json!({
        "domain": plan.domain,
        "n_requested": plan.n,
        "n_received": samples.candidates.len(),
        "chosen": outcome.chosen(),
        "scores": outcome.scores,
        "scorer": if outcome.scores.is_empty() { Value::Null } else { json!(plan.scorer.name) },
        "sampling": samples.strategy,
        "timings_ms": outcome.timings,
        "usage": {
            "generation": samples.usage,
            "scorer": outcome.scorer_usage,
        },
    });
    obj["n_scored"] = json!(outcome.scores.len());
    // Whenever the request has `tools` or a `response_format`: candidates that passed validation.
    if let Some(n_valid) = outcome.n_valid() {
        obj["n_valid"] = json!(n_valid);
    }
    match &outcome.adaptive {
        Some(adaptive) => {
            obj["n_sampled"] = json!(adaptive.n_sampled);
            obj["stop_reason"] = json!(adaptive.stop_reason);
            obj["waves"] = json!(adaptive.waves);
        }
        None => obj["n_sampled"] = json!(plan.n),
    }
    if let Some(f) = &outcome.fused {
        obj["selection"] = json!("fuse");
        obj["fused"] = json!(true);
        obj["fused_from"] = json!(f.from);
        obj["fused_score"] = json!(f.score);
        obj["usage"]["fuser"] = json!({"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens});
    }
    if let Some(e) = &outcome.fuse_failed {
        obj["fuse_failed"] = json!(e);
    }
    if let crate::bon::select::Selection::Soft { temperature } = plan.selection
        && !outcome.scores.is_empty()
    {
        obj["selection"] = json!("soft");
        obj["soft_temperature"] = json!(temperature);
    }
    if plan.degraded {
        obj["n_requested"] = json!(plan.n_requested);
        obj["degraded"] = json!(true);
    }
    if let Some(e) = &outcome.scorer_error {
        obj["scorer_failed"] = json!(e);
    }
    if samples.deadline_hit {
        obj["deadline_hit"] = json!(true);
    }
    if !samples.failures.is_empty() {
        obj["failures"] = json!(samples.failures);
    }
    if plan.return_candidates {
        let candidates: Vec<Value> = samples
            .candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut entry = json!({
                    "index": i,
                    "text": c.text,
                    "score": outcome.scores.get(i),
                    "finish_reason": c.finish_reason,
                    "latency_ms": c.latency_ms,
                    "completion_tokens": c.completion_tokens,
                });
                if let Some(valid) = outcome.valid.as_ref().and_then(|v| v.get(i)) {
                    entry["valid"] = json!(valid);
                }
                entry
            })
            .collect();
        obj["candidates"] = Value::Array(candidates);
    }
    obj
}

/// A `chat.completion` (or legacy `text_completion`) whose choices are the top `plan.k`
/// candidates, best first, with honest usage and the `bestofn` object.
pub fn build_response(api: Api, plan: &Plan, outcome: &Outcome) -> Value {
    let samples = &outcome.samples;
    let mut response: Map<String, Value> = samples.envelope.clone();
    let object = match api {
        Api::Chat => "chat.completion",
        Api::Completions => "text_completion",
    };
    response.insert("object".into(), json!(object));
    let choices: Vec<Value> = outcome
        .ranking
        .iter()
        .take(plan.k as usize)
        .enumerate()
        .map(|(position, &candidate)| {
            let mut choice = samples.candidates[candidate].choice.to_map();
            choice.insert("index".into(), json!(position));
            if position == 0
                && let Some(f) = &outcome.fused
            {
                match api {
                    Api::Chat => {
                        if let Some(Value::Object(message)) = choice.get_mut("message") {
                            message.insert("content".into(), json!(f.text));
                            message.remove("tool_calls");
                        }
                    }
                    Api::Completions => {
                        choice.insert("text".into(), json!(f.text));
                    }
                }
                choice.insert("finish_reason".into(), json!("stop"));
                choice.remove("logprobs");
            }
            Value::Object(choice)
        })
        .collect();
    response.insert("choices".into(), Value::Array(choices));
    response.insert("usage".into(), usage_object(outcome));
    response.insert("bestofn".into(), bestofn_object(plan, outcome));
    Value::Object(response)
}

/// The OpenAI `usage` object of a best-of-N answer: every call's prompt, every candidate's tokens.
pub fn usage_object(outcome: &Outcome) -> Value {
    let usage = &outcome.samples.usage;
    let (fuser_prompt, fuser_completion) =
        outcome.fused.as_ref().map_or((0, 0), |f| (f.prompt_tokens, f.completion_tokens));
    let prompt = usage.prompt_tokens + fuser_prompt;
    let completion = usage.completion_tokens + fuser_completion;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}
