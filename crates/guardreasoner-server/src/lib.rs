//! `guardreasoner serve`: the guard as an HTTP service.
//!
//! The HTTP layer validates requests, then hands them to a [`Backend`]: the local engine's
//! queue ([`LocalBackend`], where every request shares one continuous-batching decode loop),
//! or any OpenAI-compatible endpoint (`serve --endpoint`), behind the same validation, auth,
//! strict parsing, fail-closed verdicts and metrics. Routes:
//! `POST /v1/guard`, `POST /v1/moderations`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (both with SSE streaming), `GET /v1/models`, `GET /health`,
//! `GET /metrics`. Errors are mapped to statuses in one place ([`error::ApiError`]).

pub mod error;
mod guard;
mod openai;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use guardreasoner_backend::Backend;
use guardreasoner_core::{ReasoningMode, UncertaintyBand};
use guardreasoner_runtime::{LocalBackend, Metrics};
use serde_json::json;
use std::future::Future;
use std::sync::{Arc, OnceLock};

/// Limits and settings of the service.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model name clients send and `/v1/models` lists.
    pub served_model: String,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most new tokens a request may ask for.
    pub max_new_tokens: u32,
    /// Most conversations in one `/v1/guard` or `/v1/moderations` request.
    pub max_batch_items: usize,
    /// New tokens a guard verdict may use (the paper generates up to 2048).
    pub guard_max_new_tokens: u32,
    /// Flag a request or response whose harmful score reaches this probability instead of
    /// following the written label (a request's `threshold` overrides it).
    pub flag_threshold: Option<f32>,
    /// Reasoning tokens before a guard answer is forced (`None`: what the token budget leaves).
    pub max_reasoning_tokens: Option<u32>,
    /// The guard's reasoning when a request does not choose (`full`, `none`, `auto`).
    pub reasoning: ReasoningMode,
    /// What `auto` counts as uncertain.
    pub uncertainty_band: UncertaintyBand,
    /// The guard's score calibration by stage, where it has one (the default guard's card).
    pub calibration: Option<std::sync::Arc<guardreasoner_core::calibration::GuardCalibration>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            served_model: "guardreasoner".into(),
            api_key: None,
            max_body_bytes: 2 * 1024 * 1024,
            max_new_tokens: 2048,
            max_batch_items: 64,
            guard_max_new_tokens: 2048,
            flag_threshold: None,
            max_reasoning_tokens: None,
            reasoning: ReasoningMode::Full,
            uncertainty_band: UncertaintyBand::default(),
            calibration: None,
        }
    }
}

/// What the server generates with, once loaded.
pub struct Served {
    backend: Arc<dyn Backend>,
    /// The counters `/metrics` shows: the local engine's own, or the server's for a remote.
    metrics: Arc<Metrics>,
    /// The local engine, to shut down cleanly.
    local: Option<Arc<LocalBackend>>,
}

impl Served {
    /// Any backend without an engine of its own here (an OpenAI-compatible endpoint).
    pub fn remote(backend: Arc<dyn Backend>) -> Served {
        Served {
            backend,
            metrics: Arc::new(Metrics::default()),
            local: None,
        }
    }
}

impl From<LocalBackend> for Served {
    fn from(local: LocalBackend) -> Served {
        let local = Arc::new(local);
        Served {
            backend: local.clone(),
            metrics: local.metrics().clone(),
            local: Some(local),
        }
    }
}

/// What every handler sees.
pub struct AppState {
    pub config: ServerConfig,
    backend: OnceLock<Served>,
    load_error: OnceLock<String>,
    pub started: std::time::Instant,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            config,
            backend: OnceLock::new(),
            load_error: OnceLock::new(),
            started: std::time::Instant::now(),
        })
    }

    /// Install the loaded backend: `/health` turns 200 and requests are served.
    pub fn set_backend(&self, served: Served) {
        let _ = self.backend.set(served);
    }

    pub fn backend(&self) -> Result<&Arc<dyn Backend>, ApiError> {
        self.backend
            .get()
            .map(|s| &s.backend)
            .ok_or(ApiError::NotReady)
    }

    /// Count a failure that happened before the request reached the engine's queue.
    fn reject(&self, e: ApiError) -> ApiError {
        if let Some(s) = self.backend.get() {
            s.metrics.failure(e.kind());
        }
        e
    }

    /// A backend's refusal of a request (the local engine counts its own).
    fn backend_error(&self, e: guardreasoner_backend::BackendError) -> ApiError {
        match self.backend.get() {
            Some(s) if s.local.is_none() => self.reject(e.into()),
            _ => e.into(),
        }
    }

    /// The request body, or the counted 400/413 that explains why it is not valid JSON of the
    /// expected shape.
    fn body<T>(
        &self,
        payload: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    ) -> Result<T, ApiError> {
        payload
            .map(|Json(t)| t)
            .map_err(|r| self.reject(ApiError::from_json(r, self.config.max_body_bytes)))
    }

    fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            // Accept the served name, or none; clients often send a placeholder like "default".
            Some(m) if !m.is_empty() && m != self.config.served_model && m != "default" => {
                Err(self.reject(ApiError::UnknownModel {
                    requested: m.into(),
                    served: self.config.served_model.clone(),
                }))
            }
            _ => Ok(()),
        }
    }
}

/// The routes, with auth, body limit and error mapping.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/guard", post(guard::guard))
        .route("/v1/moderations", post(guard::moderations))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One event per request: method, path, status and seconds taken (`info`; `debug` for the
/// health and metrics probes that monitoring sends every few seconds).
async fn log_request(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let (status, seconds) = (response.status().as_u16(), started.elapsed().as_secs_f64());
    if path == "/health" || path == "/metrics" {
        tracing::debug!(%method, path, status, seconds, "request");
    } else {
        tracing::info!(%method, path, status, seconds, "request");
    }
    response
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return state.reject(ApiError::Unauthorized).into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match (state.backend.get(), state.load_error.get()) {
        (Some(_), _) => {
            Json(json!({"status": "ok", "model": state.config.served_model})).into_response()
        }
        (None, Some(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "error": e})),
        )
            .into_response(),
        (None, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = match state.backend.get() {
        Some(s) => s.metrics.render(),
        None => String::new(),
    };
    text.push_str(&format!(
        "# HELP guardreasoner_model_loaded Whether the model is loaded.\n# TYPE guardreasoner_model_loaded gauge\nguardreasoner_model_loaded {}\n",
        u8::from(state.backend.get().is_some())
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Serve on `listener` until `shutdown` resolves, loading the backend in the background (the
/// port answers `/health` with 503 meanwhile, and with the load error if it fails). In-flight
/// requests finish before it returns.
pub async fn serve<L, B, E, S>(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    load: L,
    shutdown: S,
) -> std::io::Result<()>
where
    L: FnOnce() -> Result<B, E> + Send + 'static,
    B: Into<Served>,
    E: std::fmt::Display,
    S: Future<Output = ()> + Send + 'static,
{
    let state = AppState::new(config);
    let loader = state.clone();
    tokio::task::spawn_blocking(move || match load() {
        Ok(backend) => loader.set_backend(backend.into()),
        Err(e) => {
            let _ = loader.load_error.set(e.to_string());
        }
    });
    let app = router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    if let Some(local) = state.backend.get().and_then(|s| s.local.clone()) {
        let _ = tokio::task::spawn_blocking(move || local.shutdown()).await;
    }
    Ok(())
}
