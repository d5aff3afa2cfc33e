//! OpenAI-compatible `/v1/completions`, `/v1/chat/completions` (with SSE streaming ending in
//! `data: [DONE]`) and `/v1/models`, so standard clients — and our own synthesis and
//! evaluation — can use the server.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use guardreasoner_backend::{
    ChatMessage, Choice, EventStream, FinishReason, GenerationRequest, PromptInput, StreamEvent,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;

/// A string or a list of strings (`prompt`, `stop`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    model: Option<String>,
    prompt: OneOrMany,
    #[serde(flatten)]
    sampling: Sampling,
    /// Return this many log-probabilities per token (only the chosen token's is given).
    logprobs: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(flatten)]
    sampling: Sampling,
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    logprobs: bool,
}

#[derive(Debug, Deserialize)]
struct Sampling {
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    n: Option<u32>,
    stop: Option<OneOrMany>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

impl Sampling {
    fn request(
        self,
        state: &AppState,
        input: PromptInput,
        max_tokens: Option<u32>,
        logprobs: bool,
    ) -> Result<GenerationRequest, ApiError> {
        let max_new = max_tokens.or(self.max_tokens).unwrap_or(16);
        if max_new == 0 || max_new > state.config.max_new_tokens {
            return Err(state.reject(ApiError::BadRequest(format!(
                "max_tokens must be between 1 and {}, got {max_new}",
                state.config.max_new_tokens
            ))));
        }
        let stop = match self.stop {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        if stop.len() > 4 {
            return Err(state.reject(ApiError::BadRequest("at most 4 stop sequences".into())));
        }
        let mut r = GenerationRequest::new(input, max_new);
        r.temperature = self.temperature.unwrap_or(1.0);
        r.top_p = self.top_p.unwrap_or(1.0);
        r.n = self.n.unwrap_or(1);
        r.seed = self.seed;
        r.stop = stop;
        r.logprobs = logprobs;
        if self.stream && r.n != 1 {
            return Err(state.reject(ApiError::BadRequest("streaming supports n = 1 only".into())));
        }
        Ok(r)
    }
}

fn finish_wire(reason: &FinishReason) -> Value {
    match reason {
        FinishReason::Stop => json!("stop"),
        FinishReason::Length => json!("length"),
        FinishReason::Other(o) if o.is_empty() => Value::Null,
        FinishReason::Other(o) => json!(o),
    }
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str, state: &AppState) -> String {
    format!("{prefix}-{:x}", state.started.elapsed().as_nanos())
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    payload: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = state.body(payload)?;
    let backend = state.backend()?;
    state.check_model(req.model.as_deref())?;
    let prompt = match req.prompt {
        OneOrMany::One(p) => p,
        OneOrMany::Many(mut v) if v.len() == 1 => v.remove(0),
        OneOrMany::Many(_) => {
            return Err(state.reject(ApiError::BadRequest(
                "send one prompt per request (a string)".into(),
            )))
        }
    };
    let stream = req.sampling.stream;
    let request = req.sampling.request(
        &state,
        PromptInput::Text(prompt),
        None,
        req.logprobs.is_some(),
    )?;
    let id = request_id("cmpl", &state);
    let model = state.config.served_model.clone();
    if stream {
        let events = backend
            .generate_stream(request)
            .await
            .map_err(|e| state.backend_error(e))?;
        let chunk = move |delta: String, finish: Value| {
            json!({"id": id, "object": "text_completion", "created": created(), "model": model,
                   "choices": [{"index": 0, "text": delta, "logprobs": null, "finish_reason": finish}]})
        };
        return Ok(sse(events, chunk).into_response());
    }
    let generation = backend
        .generate(request)
        .await
        .map_err(|e| state.backend_error(e))?;
    let (prompt_tokens, completion_tokens) = (
        generation.usage.prompt_tokens,
        generation.usage.completion_tokens,
    );
    let choices: Vec<Value> = generation
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, Choice { text, finish_reason: finish, logprobs, .. })| {
            let logprobs = logprobs.map(|l| {
                json!({"tokens": l.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
                       "token_logprobs": l.iter().map(|t| t.logprob).collect::<Vec<_>>()})
            });
            json!({"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish_wire(&finish)})
        })
        .collect();
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created(), "model": model, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response())
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    payload: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = state.body(payload)?;
    let backend = state.backend()?;
    state.check_model(req.model.as_deref())?;
    if req.messages.is_empty() {
        return Err(state.reject(ApiError::BadRequest("`messages` is empty".into())));
    }
    let stream = req.sampling.stream;
    let request = req.sampling.request(
        &state,
        PromptInput::Chat(req.messages),
        req.max_completion_tokens,
        req.logprobs,
    )?;
    let id = request_id("chatcmpl", &state);
    let model = state.config.served_model.clone();
    if stream {
        let events = backend
            .generate_stream(request)
            .await
            .map_err(|e| state.backend_error(e))?;
        let first = std::sync::atomic::AtomicBool::new(true);
        let chunk = move |delta: String, finish: Value| {
            let mut d = json!({"content": delta});
            if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                d["role"] = json!("assistant");
            }
            json!({"id": id, "object": "chat.completion.chunk", "created": created(), "model": model,
                   "choices": [{"index": 0, "delta": d, "finish_reason": finish}]})
        };
        return Ok(sse(events, chunk).into_response());
    }
    let generation = backend
        .generate(request)
        .await
        .map_err(|e| state.backend_error(e))?;
    let (prompt_tokens, completion_tokens) = (
        generation.usage.prompt_tokens,
        generation.usage.completion_tokens,
    );
    let choices: Vec<Value> = generation
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, Choice { text, finish_reason: finish, logprobs, .. })| {
            let logprobs = logprobs.map(|l| {
                json!({"content": l.iter().map(|t| json!({"token": t.token, "logprob": t.logprob})).collect::<Vec<_>>()})
            });
            json!({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                   "finish_reason": finish_wire(&finish)})
        })
        .collect();
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created(), "model": model, "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response())
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.config.served_model, "object": "model", "created": created(), "owned_by": "guardreasoner",
    }]}))
}

/// Server-sent events of one choice: a chunk per text delta, one with the finish reason,
/// then `data: [DONE]`. Dropping the stream (client gone) drops the backend's stream, which
/// abandons the request (the local engine takes the sequence out of its batch).
fn sse(
    events: EventStream,
    chunk: impl Fn(String, Value) -> Value + Send + Sync + 'static,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let chunk = Arc::new(chunk);
    let body = events
        .map(move |event| {
            let value = match event {
                Ok(StreamEvent::Text { delta, .. }) => chunk(delta, Value::Null),
                Ok(StreamEvent::Finished { finish_reason, .. }) => {
                    chunk(String::new(), finish_wire(&finish_reason))
                }
                Err(e) => chunk(
                    String::new(),
                    finish_wire(&FinishReason::Other(format!("error: {e}"))),
                ),
            };
            Ok(SseEvent::default().data(value.to_string()))
        })
        .chain(stream::once(async {
            Ok(SseEvent::default().data("[DONE]"))
        }));
    Sse::new(body).keep_alive(KeepAlive::default())
}
