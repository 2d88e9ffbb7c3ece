//! Scorer kind `reward_http`: a reward model served over HTTP by vLLM, TEI or SGLang, called
//! once per request with every candidate in one batch.

use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backend::{Backend, TransportConfig};
use crate::error::Error;
use crate::score::{BoxFuture, ChatTemplate, Message, ScoreInput, ScoreOutput, Scorer, ScorerUsage, with_candidate};

/// The RM server's API, each with its own request and response JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardApi {
    /// vLLM `POST /classify`: `data[i].probs[label_index]`.
    VllmClassify,
    /// vLLM `POST /pooling`: `data[i].data[label_index]` (last row for token tasks).
    VllmPooling,
    /// Hugging Face TEI `POST /predict` with `raw_scores: true`: a list of labels per input.
    TeiPredict,
    /// SGLang native `POST /classify`: `[i].embedding[label_index]`.
    SglangClassify,
}

/// How the conversation reaches a vLLM RM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// Templated here and sent as one batch of texts in `input`: one call per request.
    Text,
    /// Sent as chat `messages`, templated by vLLM with the model's own template. vLLM takes one
    /// conversation per call, so this makes one (concurrent) call per candidate.
    Messages,
}

/// `[scorers.NAME]` with `kind = "reward_http"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardHttpConfig {
    /// The server's API.
    pub api: RewardApi,
    /// Interchangeable endpoint URLs.
    pub urls: Vec<String>,
    /// The `model` field sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Template for APIs that take text.
    pub chat_template: ChatTemplate,
    /// vLLM: `text` (one batched call) or `messages` (one call per candidate).
    pub input_format: InputFormat,
    /// Output column holding the reward (vLLM, SGLang).
    pub label_index: usize,
    /// TEI label holding the reward, for multi-label heads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Credentials, time limit, retries, ejection.
    #[serde(flatten)]
    pub transport: TransportConfig,
}

/// A reward model behind an HTTP API.
#[derive(Debug)]
pub struct RewardHttpScorer {
    /// The scorer's configured name.
    pub name: String,
    /// Its validated settings.
    pub config: RewardHttpConfig,
    /// Transport, timeout and retries; its endpoints are full URLs such as
    /// `http://127.0.0.1:8001/classify`.
    pub backend: Backend,
}

impl Scorer for RewardHttpScorer {
    fn name(&self) -> &str {
        &self.name
    }

    fn pointwise(&self) -> bool {
        true
    }

    fn batched(&self) -> bool {
        // vLLM in messages format takes one conversation a call anyway.
        self.config.input_format == InputFormat::Text
    }

    fn score<'a>(&'a self, input: ScoreInput<'a>) -> BoxFuture<'a, Result<ScoreOutput, Error>> {
        Box::pin(async move {
            // Made when scoring starts, not when the future is built.
            let span = crate::telemetry::scoring_span(&self.name, "reward_http", input.candidates.len());
            crate::telemetry::in_span(span, self.score_all(input)).await
        })
    }
}

impl RewardHttpScorer {
    async fn score_all(&self, input: ScoreInput<'_>) -> Result<ScoreOutput, Error> {
        let n = input.candidates.len();
        if n == 0 {
            return Ok(ScoreOutput::default());
        }
        let conversations: Vec<Vec<Message>> =
            input.candidates.iter().map(|c| with_candidate(input.conversation, c)).collect();

        let is_vllm = matches!(self.config.api, RewardApi::VllmClassify | RewardApi::VllmPooling);
        if is_vllm && self.config.input_format == InputFormat::Messages {
            let calls = conversations.iter().map(|turns| async move {
                let mut body = self.vllm_body();
                body["messages"] = serde_json::to_value(turns).map_err(|e| Error::Internal(e.to_string()))?;
                let reply = self.backend.post_json("", &body).await.map_err(Error::into_gateway_failure)?;
                let (scores, tokens) = self.parse(&reply.body, 1).map_err(|e| e.at(&reply.endpoint))?;
                Ok::<_, Error>((scores[0], tokens))
            });
            let results = try_join_all(calls).await?;
            let tokens = results.iter().map(|(_, t)| *t).sum::<Option<u64>>();
            return Ok(ScoreOutput {
                scores: results.into_iter().map(|(s, _)| s).collect(),
                usage: ScorerUsage { calls: n as u32, prompt_tokens: tokens },
            });
        }

        // Rendered texts are moved into the body, not copied: they hold every candidate.
        let texts: Vec<Value> =
            conversations.iter().map(|t| Value::String(self.config.chat_template.render(t))).collect();
        let body = match self.config.api {
            RewardApi::VllmClassify | RewardApi::VllmPooling => {
                let mut body = self.vllm_body();
                body["input"] = Value::Array(texts);
                body
            }
            RewardApi::TeiPredict => {
                let inputs: Vec<Value> = texts.into_iter().map(|t| Value::Array(vec![t])).collect();
                let mut body = json!({"raw_scores": true});
                body["inputs"] = Value::Array(inputs);
                body
            }
            RewardApi::SglangClassify => {
                let mut body = json!({});
                body["text"] = Value::Array(texts);
                if let Some(model) = &self.config.model {
                    body["model"] = json!(model);
                }
                body
            }
        };
        let reply = self.backend.post_json("", &body).await.map_err(Error::into_gateway_failure)?;
        let (scores, prompt_tokens) = self.parse(&reply.body, n).map_err(|e| e.at(&reply.endpoint))?;
        Ok(ScoreOutput { scores, usage: ScorerUsage { calls: 1, prompt_tokens } })
    }

    fn vllm_body(&self) -> Value {
        let mut body = json!({"use_activation": false});
        if let Some(model) = &self.config.model {
            body["model"] = json!(model);
        }
        body
    }

    fn garbage(&self, what: impl std::fmt::Display) -> Error {
        Error::bad_gateway(self.backend.party, self.backend.party_name.as_str(), format!("unusable answer: {what}"))
    }

    /// Extracts exactly `n` finite scores, in input order, and the prompt tokens if reported.
    fn parse(&self, body: &Value, n: usize) -> Result<(Vec<f64>, Option<u64>), Error> {
        let (scores, tokens) = match self.config.api {
            RewardApi::VllmClassify | RewardApi::VllmPooling => {
                let data = body.get("data").and_then(Value::as_array).ok_or_else(|| self.garbage("no 'data' array"))?;
                let mut indexed = Vec::with_capacity(data.len());
                for (pos, item) in data.iter().enumerate() {
                    let index = item.get("index").and_then(Value::as_u64).map_or(pos, |i| i as usize);
                    let row = if self.config.api == RewardApi::VllmClassify {
                        item.get("probs")
                    } else {
                        // Token-level tasks return one row per token; the last row scores the whole reply.
                        match item.get("data") {
                            Some(Value::Array(rows)) if rows.first().is_some_and(Value::is_array) => rows.last(),
                            other => other,
                        }
                    };
                    let score =
                        row.and_then(|r| r.get(self.config.label_index)).and_then(Value::as_f64).ok_or_else(|| {
                            self.garbage(format!("data[{pos}] has no number at column {}", self.config.label_index))
                        })?;
                    indexed.push((index, score));
                }
                indexed.sort_by_key(|(i, _)| *i);
                if indexed.iter().enumerate().any(|(pos, (i, _))| pos != *i) {
                    return Err(self.garbage("'data' indices are not 0..n"));
                }
                let tokens = body.pointer("/usage/prompt_tokens").and_then(Value::as_u64);
                (indexed.into_iter().map(|(_, s)| s).collect::<Vec<_>>(), tokens)
            }
            RewardApi::TeiPredict => {
                let outer = body.as_array().ok_or_else(|| self.garbage("expected a JSON array"))?;
                let scores = outer
                    .iter()
                    .enumerate()
                    .map(|(i, labels)| self.tei_score(i, labels))
                    .collect::<Result<Vec<_>, _>>()?;
                (scores, None)
            }
            RewardApi::SglangClassify => {
                let outer = body.as_array().ok_or_else(|| self.garbage("expected a JSON array"))?;
                let mut scores = Vec::with_capacity(outer.len());
                let mut tokens = Some(0u64);
                for (i, item) in outer.iter().enumerate() {
                    let score = item
                        .get("embedding")
                        .and_then(|e| e.get(self.config.label_index))
                        .and_then(Value::as_f64)
                        .ok_or_else(|| {
                            self.garbage(format!("[{i}].embedding has no number at {}", self.config.label_index))
                        })?;
                    scores.push(score);
                    let t = item.pointer("/meta_info/prompt_tokens").and_then(Value::as_u64);
                    tokens = tokens.zip(t).map(|(a, b)| a + b);
                }
                (scores, tokens)
            }
        };
        if scores.len() != n {
            return Err(self.garbage(format!("{} scores for {n} candidates", scores.len())));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(self.garbage(format!("score {i} is not a finite number")));
        }
        Ok((scores, tokens))
    }

    fn tei_score(&self, i: usize, labels: &Value) -> Result<f64, Error> {
        let labels = labels.as_array().ok_or_else(|| self.garbage(format!("[{i}] is not a list of labels")))?;
        let pick = match &self.config.label {
            Some(wanted) => labels.iter().find(|l| l.get("label").and_then(Value::as_str) == Some(wanted.as_str())),
            None if labels.len() == 1 => labels.first(),
            None => {
                return Err(self.garbage(format!(
                    "[{i}] has {} labels; set 'label' on the scorer to choose the reward",
                    labels.len()
                )));
            }
        };
        pick.and_then(|l| l.get("score"))
            .and_then(Value::as_f64)
            .ok_or_else(|| self.garbage(format!("[{i}] has no score for the configured label")))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::backend::{EjectionPolicy, EndpointPool, RetryPolicy};

    fn scorer(api: RewardApi) -> RewardHttpScorer {
        crate::backend::install_crypto_provider();
        RewardHttpScorer {
            name: "rm".into(),
            config: RewardHttpConfig {
                api,
                urls: vec!["http://127.0.0.1:9".into()],
                model: None,
                chat_template: ChatTemplate::Chatml,
                input_format: InputFormat::Text,
                label_index: 0,
                label: None,
                transport: TransportConfig {
                    api_key_env: None,
                    timeout_ms: 1000,
                    max_retries: 0,
                    retry_backoff_ms: 1,
                    retry_backoff_max_ms: 1,
                    eject_after_failures: 1,
                    eject_cooldown_ms: 1000,
                    max_in_flight: None,
                    typical_call_ms: None,
                },
            },
            backend: Backend {
                party: crate::error::Party::Scorer,
                client: crate::backend::HttpClient::new(crate::backend::ClientSettings {
                    upstream_http2: crate::backend::Http2Mode::Auto,
                    max_response_bytes: 1 << 20,
                })
                .unwrap(),
                name: "scorer rm".into(),
                party_name: "scorer rm".into(),
                pool: EndpointPool::new(
                    &["http://127.0.0.1:9".to_string()],
                    EjectionPolicy { after_failures: 1, cooldown: Duration::from_secs(1) },
                ),
                api_key: None,
                timeout: Duration::from_secs(1),
                retry: RetryPolicy {
                    max_retries: 0,
                    backoff_base: Duration::from_millis(1),
                    backoff_max: Duration::from_millis(1),
                },
            },
        }
    }

    #[test]
    fn parses_each_api_in_input_order() {
        let vllm = json!({"data": [{"index": 1, "probs": [0.5]}, {"index": 0, "probs": [2.0]}], "usage": {"prompt_tokens": 9}});
        assert_eq!(scorer(RewardApi::VllmClassify).parse(&vllm, 2).unwrap(), (vec![2.0, 0.5], Some(9)));
        let pooling = json!({"data": [{"index": 0, "data": [[0.1], [0.7]]}, {"index": 1, "data": [0.3]}]});
        assert_eq!(scorer(RewardApi::VllmPooling).parse(&pooling, 2).unwrap().0, vec![0.7, 0.3]);
        let tei = json!([[{"label": "LABEL_0", "score": 1.5}], [{"label": "LABEL_0", "score": -2.0}]]);
        assert_eq!(scorer(RewardApi::TeiPredict).parse(&tei, 2).unwrap().0, vec![1.5, -2.0]);
        let sglang = json!([{"embedding": [3.0], "meta_info": {"prompt_tokens": 4}}, {"embedding": [-1.0], "meta_info": {"prompt_tokens": 5}}]);
        assert_eq!(scorer(RewardApi::SglangClassify).parse(&sglang, 2).unwrap(), (vec![3.0, -1.0], Some(9)));
        assert!(scorer(RewardApi::VllmClassify).parse(&vllm, 3).is_err(), "count mismatch");
        let multi = json!([[{"label": "good", "score": 0.9}, {"label": "bad", "score": 0.1}]]);
        assert!(scorer(RewardApi::TeiPredict).parse(&multi, 1).is_err(), "multi-label needs 'label'");
        let mut labelled = scorer(RewardApi::TeiPredict);
        labelled.config.label = Some("bad".into());
        assert_eq!(labelled.parse(&multi, 1).unwrap().0, vec![0.1]);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        crate::test_support::arbitrary_json(&["data", "probs", "index", "embedding", "label", "score"])
    }

    proptest! {
        #[test]
        fn any_rm_answer_parses_or_is_refused_without_panic(body in json_value(), n in 0usize..4) {
            // Building a client is slow; one set of scorers serves every case.
            static SCORERS: std::sync::OnceLock<Vec<RewardHttpScorer>> = std::sync::OnceLock::new();
            let scorers = SCORERS.get_or_init(|| {
                [RewardApi::VllmClassify, RewardApi::VllmPooling, RewardApi::TeiPredict, RewardApi::SglangClassify].map(scorer).into()
            });
            for s in scorers {
                if let Ok((scores, _)) = s.parse(&body, n) {
                    prop_assert_eq!(scores.len(), n);
                    prop_assert!(scores.iter().all(|s| s.is_finite()));
                }
            }
        }
    }
}
