//! `POST /v1/guard` and `POST /v1/moderations`: conversations in, verdicts out.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use guardreasoner_backend::{classify, Backend, GuardOutcome, GuardParams};
use guardreasoner_core::label_scores::{check_threshold, flagged_at};
use guardreasoner_core::{Conversation, Label, LabelScores, ReasoningMode, UncertaintyBand};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// Our own route: a misspelt option is refused (400, naming it), never silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardRequest {
    /// One conversation: the user's prompt ...
    prompt: Option<String>,
    /// ... and optionally the AI's response.
    response: Option<String>,
    /// Or several conversations, judged together in one batch.
    conversations: Option<Vec<Conversation>>,
    /// Return the reasoning and the generated text (default true).
    #[serde(default = "yes")]
    include_reasoning: bool,
    max_new_tokens: Option<u32>,
    /// Flag by score at this probability (overrides the server's `--threshold`).
    threshold: Option<f32>,
    /// Most reasoning tokens before the answer is forced (overrides the server's default).
    max_reasoning_tokens: Option<u32>,
    /// `full`, `none` or `auto` (overrides the server's default).
    reasoning: Option<ReasoningMode>,
    /// Under `auto`, the uncertain scores `[low, high]` (overrides the server's default).
    uncertainty_band: Option<[f32; 2]>,
}

fn yes() -> bool {
    true
}

/// The verdict on one conversation.
#[derive(Debug, Serialize)]
pub struct GuardResult {
    /// `request`/`response`: harmful|unharmful, `completion`: refusal|compliance; `null` when
    /// the model answered `None` or the output could not be parsed.
    pub labels: Labels,
    /// Per answered task, the probability of its positive label (`harmful`, `refusal`);
    /// `null` when the output could not be parsed.
    pub scores: Option<LabelScores>,
    /// Whether the answer was forced (the reasoning budget ran out or the model stopped
    /// without answering): the labels then rest on unfinished reasoning.
    pub forced: bool,
    /// Under reasoning `auto`: whether the answer needed full reasoning (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalated: Option<bool>,
    /// True when the request or the response is harmful (by label, or by score at the
    /// threshold when one is set), or when the output could not be parsed: the guard fails
    /// closed.
    pub flagged: bool,
    pub parse: ParseStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<guardreasoner_core::verdict::Reasoning>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub finish_reason: guardreasoner_backend::FinishReason,
    pub usage: Value,
    pub timings: Value,
}

#[derive(Debug, Serialize, Default)]
pub struct Labels {
    pub request: Option<Label>,
    pub completion: Option<Label>,
    pub response: Option<Label>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ParseStatus {
    Ok,
    Error { kind: String, message: String },
}

/// One conversation's verdict and the wall time it took.
struct Judged {
    outcome: GuardOutcome,
    total_s: f64,
}

/// Run the guard on conversations that were already validated, through the one verdict glue
/// ([`classify`]): all are submitted at once, so the engine decodes them in one batch, and
/// under `auto` each uncertain one is reasoned again as soon as its first answer is in.
async fn judge(
    state: &AppState,
    conversations: Vec<Conversation>,
    include_reasoning: bool,
    params: GuardParams,
    threshold: Option<f32>,
) -> Result<Vec<GuardResult>, ApiError> {
    let backend: &dyn Backend = &**state.backend()?;
    let params = &params;
    let judged = futures_util::future::try_join_all(conversations.iter().map(|c| async move {
        let started = Instant::now();
        let outcome = classify(backend, c, params)
            .await
            .map_err(|e| state.backend_error(e))?;
        Ok::<_, ApiError>(Judged {
            outcome,
            total_s: started.elapsed().as_secs_f64(),
        })
    }))
    .await?;
    Ok(judged
        .into_iter()
        .map(|j| result_of(j, threshold, include_reasoning))
        .collect())
}

fn result_of(judged: Judged, threshold: Option<f32>, include_reasoning: bool) -> GuardResult {
    let o = judged.outcome;
    let timings = o.timings.unwrap_or_default();
    let flagged = flagged_at(&o.parsed, o.scores.as_ref(), threshold);
    let (labels, parse, reasoning) = match o.parsed {
        Ok(p) => {
            let v = p.verdict;
            (
                Labels {
                    request: v.request,
                    completion: v.completion,
                    response: v.response,
                },
                ParseStatus::Ok,
                Some(p.reasoning),
            )
        }
        Err(e) => (
            Labels::default(),
            ParseStatus::Error {
                kind: e.kind().into(),
                message: e.to_string(),
            },
            None,
        ),
    };
    GuardResult {
        labels,
        scores: o.scores,
        forced: o.forced == Some(true),
        escalated: o.escalated,
        flagged,
        parse,
        reasoning: if include_reasoning { reasoning } else { None },
        text: include_reasoning.then_some(o.text),
        finish_reason: o.finish_reason,
        usage: json!({
            "prompt_tokens": o.usage.prompt_tokens,
            "completion_tokens": o.usage.completion_tokens,
            "reused_prompt_tokens": timings.reused_prompt_tokens,
        }),
        timings: json!({
            "prefill_s": timings.prefill_s,
            "decode_s": timings.decode_s,
            "total_s": judged.total_s,
        }),
    }
}

fn check_conversations(state: &AppState, conversations: &[Conversation]) -> Result<(), ApiError> {
    if conversations.is_empty() {
        return Err(state.reject(ApiError::BadRequest("no conversation to judge".into())));
    }
    if conversations.len() > state.config.max_batch_items {
        return Err(state.reject(ApiError::BadRequest(format!(
            "{} conversations in one request; the limit is {}",
            conversations.len(),
            state.config.max_batch_items
        ))));
    }
    if let Some(i) = conversations
        .iter()
        .position(|c| c.prompt.trim().is_empty())
    {
        return Err(state.reject(ApiError::BadRequest(format!(
            "conversation {i}: the prompt is empty"
        ))));
    }
    Ok(())
}

pub async fn guard(
    State(state): State<Arc<AppState>>,
    payload: Result<Json<GuardRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = state.body(payload)?;
    state.backend()?;
    let conversations = match (req.prompt, req.conversations) {
        (Some(prompt), None) => vec![Conversation::new(prompt, req.response)],
        (None, Some(list)) if req.response.is_none() => list,
        _ => {
            return Err(state.reject(ApiError::BadRequest(
                "give either `prompt` (and optionally `response`) or `conversations`, not both"
                    .into(),
            )))
        }
    };
    check_conversations(&state, &conversations)?;
    let max_new = req
        .max_new_tokens
        .unwrap_or(state.config.guard_max_new_tokens);
    if max_new == 0 || max_new > state.config.max_new_tokens {
        return Err(state.reject(ApiError::BadRequest(format!(
            "max_new_tokens must be between 1 and {}",
            state.config.max_new_tokens
        ))));
    }
    let threshold = match req.threshold {
        Some(t) => Some(check_threshold(t).map_err(|m| state.reject(ApiError::BadRequest(m)))?),
        None => state.config.flag_threshold,
    };
    if threshold.is_some() && !state.backend()?.scores_answers() {
        return Err(state.reject(ApiError::BadRequest(
            "a threshold needs label scores, which this server's backend (a remote endpoint) cannot give".into(),
        )));
    }
    let max_reasoning = req
        .max_reasoning_tokens
        .or(state.config.max_reasoning_tokens);
    if let Some(n) = max_reasoning {
        if n == 0 || n >= max_new {
            return Err(state.reject(ApiError::BadRequest(format!(
                "max_reasoning_tokens must be between 1 and max_new_tokens - 1 ({})",
                max_new - 1
            ))));
        }
    }
    let band = match req.uncertainty_band {
        Some([low, high]) => {
            UncertaintyBand::new(low, high).map_err(|m| state.reject(ApiError::BadRequest(m)))?
        }
        None => state.config.uncertainty_band,
    };
    let params = GuardParams {
        max_new_tokens: max_new,
        max_reasoning_tokens: max_reasoning,
        reasoning: req.reasoning.unwrap_or(state.config.reasoning),
        band,
        calibration: state.config.calibration.clone(),
        ..GuardParams::default()
    };
    let results = judge(
        &state,
        conversations,
        req.include_reasoning,
        params,
        threshold,
    )
    .await?;
    Ok(Json(
        json!({"model": state.config.served_model, "results": results}),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ModerationRequest {
    input: Value,
    model: Option<String>,
}

/// OpenAI's moderation schema, mapped from the guard's verdict. Each input is judged as a user
/// prompt with no response. `flagged` is true when the request is harmful (by label, or by
/// score at the server's threshold) or the output could not be parsed (fail closed). The guard
/// has no per-category labels: the OpenAI categories are all reported `false` with score 0,
/// and two of our own are added: `harmful` (the request is harmful; its score is the
/// model's probability of `harmful`) and `guard_parse_failure` (score 1.0 or 0.0).
pub async fn moderations(
    State(state): State<Arc<AppState>>,
    payload: Result<Json<ModerationRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = state.body(payload)?;
    state.backend()?;
    state.check_model(req.model.as_deref())?;
    let inputs: Vec<String> = match req.input {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(state.reject(ApiError::BadRequest(
                    "`input` must be a string or an array of strings".into(),
                ))),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(state.reject(ApiError::BadRequest(
                "`input` must be a string or an array of strings".into(),
            )))
        }
    };
    let conversations: Vec<Conversation> = inputs
        .into_iter()
        .map(|i| Conversation::new(i, None))
        .collect();
    check_conversations(&state, &conversations)?;
    let params = GuardParams {
        max_new_tokens: state.config.guard_max_new_tokens,
        max_reasoning_tokens: state.config.max_reasoning_tokens,
        reasoning: state.config.reasoning,
        band: state.config.uncertainty_band,
        calibration: state.config.calibration.clone(),
        ..GuardParams::default()
    };
    let results = judge(
        &state,
        conversations,
        false,
        params,
        state.config.flag_threshold,
    )
    .await?;
    const OPENAI_CATEGORIES: [&str; 13] = [
        "harassment",
        "harassment/threatening",
        "hate",
        "hate/threatening",
        "illicit",
        "illicit/violent",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "sexual/minors",
        "violence",
        "violence/graphic",
    ];
    let out: Vec<Value> = results
        .iter()
        .map(|r| {
            let failed = matches!(r.parse, ParseStatus::Error { .. });
            let harmful = r.flagged && !failed;
            let harmful_score =
                r.scores
                    .and_then(|s| s.request)
                    .unwrap_or(if harmful { 1.0 } else { 0.0 });
            let mut categories = serde_json::Map::new();
            let mut scores = serde_json::Map::new();
            for c in OPENAI_CATEGORIES {
                categories.insert(c.into(), json!(false));
                scores.insert(c.into(), json!(0.0));
            }
            categories.insert("harmful".into(), json!(harmful));
            scores.insert("harmful".into(), json!(harmful_score));
            categories.insert("guard_parse_failure".into(), json!(failed));
            scores.insert(
                "guard_parse_failure".into(),
                json!(if failed { 1.0 } else { 0.0 }),
            );
            json!({"flagged": r.flagged, "categories": categories, "category_scores": scores})
        })
        .collect();
    let id = format!("modr-{}", state.started.elapsed().as_nanos());
    Ok(Json(
        json!({"id": id, "model": state.config.served_model, "results": out}),
    ))
}
