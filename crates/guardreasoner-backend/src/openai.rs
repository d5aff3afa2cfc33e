//! A client for any OpenAI-compatible server: OpenAI, vLLM, llama.cpp's server, TGI's
//! Messages API, or our own `guardreasoner serve`.

use crate::rate::RateLimiter;
use crate::retry::{parse_retry_after, RetryPolicy};
use crate::{
    Backend, BackendError, BackendStats, ChatMessage, Choice, FinishReason, Generation,
    GenerationRequest, PromptInput, TokenLogprob, Usage,
};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;

/// The environment variable the API key is read from unless configured otherwise.
pub const DEFAULT_API_KEY_VAR: &str = "OPENAI_API_KEY";

/// How much of an error body is kept in an error message.
const BODY_EXCERPT_CHARS: usize = 400;

/// An API key. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// Read the key from environment variable `var`; `None` when it is unset or empty (local
    /// servers usually need no key).
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(|k| Self(k.trim().to_string()))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Settings of one OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// `http://host:port` or `http://host:port/v1` (both mean the same server).
    pub base_url: String,
    /// The `model` field sent with every request.
    pub model: String,
    pub api_key: Option<ApiKey>,
    /// Requests in flight at once to this endpoint.
    pub max_concurrency: usize,
    /// Limit on one attempt, from sending to the last byte of the reply.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// Shared requests/tokens-per-minute limits, taken before every attempt.
    pub rate_limiter: Option<Arc<RateLimiter>>,
}

impl OpenAiConfig {
    /// Defaults: no key, 16 concurrent requests, 600 s per attempt (long guard reasoning on a
    /// slow server), 10 s to connect, [`RetryPolicy::default`], no rate limit.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            max_concurrency: 16,
            request_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            rate_limiter: None,
        }
    }

    /// Take the API key from environment variable `var` (unset or empty: no key).
    pub fn with_api_key_from_env(mut self, var: &str) -> Self {
        self.api_key = ApiKey::from_env(var);
        self
    }
}

/// Counters of one backend, for summaries and metrics.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// A [`Backend`] over one OpenAI-compatible endpoint. `PromptInput::Text` goes to
/// `/v1/completions`, `PromptInput::Chat` to `/v1/chat/completions`.
pub struct OpenAiBackend {
    config: OpenAiConfig,
    /// The server root, without `/v1` and without a trailing slash.
    root: String,
    client: reqwest::Client,
    slots: Semaphore,
    counters: Counters,
}

impl fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("root", &self.root)
            .field("model", &self.config.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiBackend {
    pub fn new(config: OpenAiConfig) -> Result<Self, BackendError> {
        let root = normalise_base_url(&config.base_url)?;
        if config.model.trim().is_empty() {
            return Err(BackendError::Validation(format!(
                "{root}: the model name is empty"
            )));
        }
        if config.max_concurrency == 0 {
            return Err(BackendError::Validation(
                "max_concurrency must be at least 1".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| BackendError::Validation(format!("{root}: HTTP client: {e}")))?;
        Ok(Self {
            slots: Semaphore::new(config.max_concurrency),
            root,
            client,
            counters: Counters::default(),
            config,
        })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The server root this backend talks to (`http://host:port`).
    pub fn root(&self) -> &str {
        &self.root
    }

    fn endpoint(&self, input: &PromptInput) -> String {
        match input {
            PromptInput::Text(_) => format!("{}/v1/completions", self.root),
            PromptInput::Chat(_) => format!("{}/v1/chat/completions", self.root),
        }
    }

    /// The JSON body of a request to this endpoint.
    pub fn request_body(&self, request: &GenerationRequest) -> Value {
        request_body(&self.config.model, request)
    }

    /// One HTTP exchange, no retries.
    async fn attempt(
        &self,
        url: &str,
        body: &Value,
        chat: bool,
    ) -> Result<Generation, BackendError> {
        let mut builder = self
            .client
            .post(url)
            .timeout(self.config.request_timeout)
            .json(body);
        if let Some(key) = &self.config.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let response = builder
            .send()
            .await
            .map_err(|e| self.transport_error(url, e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(url, e))?;
        if status.as_u16() == 429 {
            return Err(BackendError::RateLimited {
                endpoint: url.to_string(),
                retry_after,
                body: self.excerpt(&bytes),
            });
        }
        if !status.is_success() {
            return Err(BackendError::Status {
                endpoint: url.to_string(),
                status: status.as_u16(),
                body: self.excerpt(&bytes),
                retry_after,
            });
        }
        let n = body.get("n").and_then(Value::as_u64).unwrap_or(1) as usize;
        parse_reply(&bytes, chat, n).map_err(|message| BackendError::InvalidResponse {
            endpoint: url.to_string(),
            message: self.redact(&message),
        })
    }

    fn transport_error(&self, url: &str, e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            BackendError::Timeout {
                endpoint: url.to_string(),
                timeout: self.config.request_timeout,
            }
        } else {
            // The full source chain says what broke (refused, reset, incomplete message).
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            BackendError::Connection {
                endpoint: url.to_string(),
                message: self.redact(&message),
            }
        }
    }

    /// The start of a body for an error message, without the key.
    fn excerpt(&self, bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        let mut excerpt: String = text.chars().take(BODY_EXCERPT_CHARS).collect();
        if excerpt.len() < text.len() {
            excerpt.push_str("...");
        }
        self.redact(excerpt.trim())
    }

    /// Servers sometimes echo request headers in errors: never let the key through.
    fn redact(&self, text: &str) -> String {
        match &self.config.api_key {
            Some(key) if !key.expose().is_empty() => text.replace(key.expose(), "<redacted>"),
            _ => text.to_string(),
        }
    }
}

#[async_trait]
impl Backend for OpenAiBackend {
    fn name(&self) -> String {
        format!("{} ({})", self.root, self.config.model)
    }

    async fn generate(&self, request: GenerationRequest) -> Result<Generation, BackendError> {
        request.validate()?;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let url = self.endpoint(&request.input);
        let chat = matches!(request.input, PromptInput::Chat(_));
        let body = self.request_body(&request);
        let estimate = request.estimated_tokens();
        let policy = &self.config.retry;
        let mut retry = 0u32;
        loop {
            if let Some(limiter) = &self.config.rate_limiter {
                limiter.acquire(estimate).await;
            }
            let result = {
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .map_err(|_| BackendError::Cancelled)?;
                self.counters.attempts.fetch_add(1, Ordering::Relaxed);
                self.attempt(&url, &body, chat).await
            };
            match result {
                Ok(mut generation) => {
                    if let Some(limiter) = &self.config.rate_limiter {
                        limiter.settle(estimate, generation.usage.total());
                    }
                    self.counters
                        .prompt_tokens
                        .fetch_add(generation.usage.prompt_tokens, Ordering::Relaxed);
                    self.counters
                        .completion_tokens
                        .fetch_add(generation.usage.completion_tokens, Ordering::Relaxed);
                    generation.retries = retry;
                    return Ok(generation);
                }
                Err(error) if error.is_retryable() && retry < policy.max_retries => {
                    let Some(wait) = policy.delay(retry, error.retry_after()) else {
                        self.counters.failures.fetch_add(1, Ordering::Relaxed);
                        return Err(error);
                    };
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    retry += 1;
                    tracing::warn!(
                        endpoint = %self.name(),
                        attempt = retry,
                        wait_s = wait.as_secs_f64(),
                        %error,
                        "retrying a failed request"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(if retry > 0 && error.is_retryable() {
                        BackendError::RetriesExhausted {
                            attempts: retry + 1,
                            last: Box::new(error),
                        }
                    } else {
                        error
                    });
                }
            }
        }
    }

    fn stats(&self) -> BackendStats {
        let c = &self.counters;
        BackendStats {
            requests: c.requests.load(Ordering::Relaxed),
            attempts: c.attempts.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: c.completion_tokens.load(Ordering::Relaxed),
        }
    }
}

/// `http://host:port`, `http://host:port/`, `http://host:port/v1` and `.../v1/` all name the
/// same server root `http://host:port`. A path prefix before `/v1` (a reverse proxy) is kept.
pub fn normalise_base_url(base_url: &str) -> Result<String, BackendError> {
    let trimmed = base_url.trim();
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| BackendError::Validation(format!("endpoint {trimmed:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(BackendError::Validation(format!(
            "endpoint {trimmed:?} must be an http:// or https:// URL with a host"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(BackendError::Validation(format!(
            "endpoint {trimmed:?} must not have a query or fragment"
        )));
    }
    let mut root = url.as_str().trim_end_matches('/').to_string();
    if let Some(stripped) = root.strip_suffix("/v1") {
        root = stripped.to_string();
    }
    Ok(root)
}

/// The JSON body of `request` for `/v1/completions` (text) or `/v1/chat/completions` (chat),
/// as sent to the server and as written into OpenAI Batch API request files.
pub fn request_body(model: &str, request: &GenerationRequest) -> Value {
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_new_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "n": request.n,
        "stream": false,
    });
    let map = body.as_object_mut().expect("built as an object");
    match &request.input {
        PromptInput::Text(text) => {
            map.insert("prompt".into(), json!(text));
            if request.logprobs {
                map.insert("logprobs".into(), json!(1));
            }
        }
        PromptInput::Chat(messages) => {
            map.insert("messages".into(), json!(messages));
            if request.logprobs {
                map.insert("logprobs".into(), json!(true));
            }
        }
    }
    if let Some(seed) = request.seed {
        map.insert("seed".into(), json!(seed));
    }
    if !request.stop.is_empty() {
        map.insert("stop".into(), json!(request.stop));
    }
    body
}

#[derive(Deserialize)]
struct WireReply {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: Option<usize>,
    /// `/v1/completions`.
    #[serde(default)]
    text: Option<String>,
    /// `/v1/chat/completions`.
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    /// OpenAI puts a model's refusal here, with `content` null.
    #[serde(default)]
    refusal: Option<String>,
}

/// Parse a non-streaming completions or chat-completions reply.
pub fn parse_reply(bytes: &[u8], chat: bool, n: usize) -> Result<Generation, String> {
    let reply: WireReply = serde_json::from_slice(bytes).map_err(|e| {
        let text = String::from_utf8_lossy(bytes);
        let start: String = text.chars().take(120).collect();
        format!("{e} in {start:?}")
    })?;
    if reply.choices.len() != n {
        return Err(format!(
            "asked for {n} choice(s), got {}",
            reply.choices.len()
        ));
    }
    let mut indexed: Vec<(usize, WireChoice)> = reply
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.index.unwrap_or(i), c))
        .collect();
    indexed.sort_by_key(|(i, _)| *i);
    let mut choices = Vec::with_capacity(n);
    for (_, c) in indexed {
        let text = if chat {
            let message = c.message.ok_or("a chat choice has no `message`")?;
            message.content.or(message.refusal).unwrap_or_default()
        } else {
            c.text.ok_or("a completion choice has no `text`")?
        };
        let logprobs = c.logprobs.as_ref().and_then(|l| parse_logprobs(l, chat));
        choices.push(Choice {
            text,
            finish_reason: FinishReason::from_wire(c.finish_reason.as_deref()),
            completion_tokens: logprobs.as_ref().map(|l| l.len() as u32),
            logprobs,
            probe_logprobs: None,
            forced_ending: None,
        });
    }
    let usage = reply
        .usage
        .map(|u| Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        })
        .unwrap_or_default();
    if n == 1 && choices[0].completion_tokens.is_none() && usage.completion_tokens > 0 {
        choices[0].completion_tokens = Some(usage.completion_tokens as u32);
    }
    Ok(Generation {
        choices,
        usage,
        model: reply.model.unwrap_or_default(),
        retries: 0,
        timings: None,
    })
}

/// Chat: `{"content": [{"token", "logprob"}, ...]}`; completions: `{"tokens": [...],
/// "token_logprobs": [...]}`.
fn parse_logprobs(value: &Value, chat: bool) -> Option<Vec<TokenLogprob>> {
    if chat {
        value
            .get("content")?
            .as_array()?
            .iter()
            .map(|t| {
                Some(TokenLogprob {
                    token: t.get("token")?.as_str()?.to_string(),
                    logprob: t.get("logprob")?.as_f64()? as f32,
                })
            })
            .collect()
    } else {
        let tokens = value.get("tokens")?.as_array()?;
        let logprobs = value.get("token_logprobs")?.as_array()?;
        tokens
            .iter()
            .zip(logprobs)
            .map(|(t, l)| {
                Some(TokenLogprob {
                    token: t.as_str()?.to_string(),
                    logprob: l.as_f64()? as f32,
                })
            })
            .collect()
    }
}

/// A chat message list from the (system, user) pair most callers send.
pub fn system_and_user(system: &str, user: &str) -> PromptInput {
    PromptInput::Chat(vec![ChatMessage::system(system), ChatMessage::user(user)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_normalise_to_the_root() {
        for u in [
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/",
            "http://127.0.0.1:8000/v1",
            "http://127.0.0.1:8000/v1/",
        ] {
            assert_eq!(
                normalise_base_url(u).unwrap(),
                "http://127.0.0.1:8000",
                "{u}"
            );
        }
        assert_eq!(
            normalise_base_url("https://proxy.example/openai/v1").unwrap(),
            "https://proxy.example/openai"
        );
        assert!(normalise_base_url("localhost:8000").is_err());
        assert!(normalise_base_url("ftp://x/").is_err());
        assert!(normalise_base_url("http://x/v1?key=1").is_err());
    }

    #[test]
    fn api_key_debug_is_redacted() {
        let cfg = OpenAiConfig {
            api_key: Some(ApiKey::new("sk-secret-123")),
            ..OpenAiConfig::new("http://127.0.0.1:1", "m")
        };
        assert!(!format!("{cfg:?}").contains("sk-secret-123"));
    }

    #[test]
    fn bodies_carry_every_parameter() {
        let mut r = GenerationRequest::new(PromptInput::Text("p".into()), 5);
        r.seed = Some(7);
        r.stop = vec!["\n\n".into()];
        r.logprobs = true;
        r.n = 2;
        let b = request_body("m", &r);
        assert_eq!(b["prompt"], "p");
        assert_eq!(b["seed"], 7);
        assert_eq!(b["stop"][0], "\n\n");
        assert_eq!(b["logprobs"], 1);
        assert_eq!(b["n"], 2);
        assert_eq!(b["max_tokens"], 5);
        let c = request_body("m", &GenerationRequest::new(system_and_user("s", "u"), 5));
        assert_eq!(c["messages"][0]["role"], "system");
        assert_eq!(c["messages"][1]["content"], "u");
        assert!(c.get("seed").is_none() && c.get("stop").is_none());
    }

    #[test]
    fn replies_parse_in_index_order_with_logprobs() {
        let reply = json!({"model": "m", "choices": [
            {"index": 1, "text": "b", "finish_reason": "length"},
            {"index": 0, "text": "a", "finish_reason": "stop",
             "logprobs": {"tokens": ["a"], "token_logprobs": [-0.5]}}
        ], "usage": {"prompt_tokens": 3, "completion_tokens": 4}});
        let g = parse_reply(reply.to_string().as_bytes(), false, 2).unwrap();
        assert_eq!(g.choices[0].text, "a");
        assert_eq!(g.choices[1].finish_reason, FinishReason::Length);
        assert_eq!(g.choices[0].logprobs.as_ref().unwrap()[0].logprob, -0.5);
        assert_eq!(g.usage.total(), 7);
        let chat = json!({"choices": [{"message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop", "logprobs": {"content": [{"token": "hi", "logprob": -0.1}]}}]});
        let g = parse_reply(chat.to_string().as_bytes(), true, 1).unwrap();
        assert_eq!(g.choices[0].text, "hi");
        assert_eq!(g.choices[0].completion_tokens, Some(1));
        assert!(parse_reply(b"{\"choices\": []}", true, 1).is_err());
        assert!(parse_reply(b"{\"choices\": [{\"text\": \"x\"}]}", true, 1).is_err());
        assert!(parse_reply(b"not json", false, 1).is_err());
    }
}
