//! The one place typed errors become HTTP statuses and JSON bodies (OpenAI's error shape).

use axum::extract::rejection::JsonRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use guardreasoner_backend::BackendError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the server is busy: {0}")]
    QueueFull(String),
    #[error("the model is still loading")]
    NotReady,
    #[error("the model {requested:?} is not served here (serving {served:?})")]
    UnknownModel { requested: String, served: String },
    #[error("the request was cancelled: the server is shutting down")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady | ApiError::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UnknownModel { .. } => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The kind counted in `guardreasoner_request_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "validation",
            ApiError::Unauthorized => "unauthorized",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::NotReady => "not_ready",
            ApiError::UnknownModel { .. } => "unknown_model",
            ApiError::Cancelled => "cancelled",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn from_json(rejection: JsonRejection, limit: usize) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge(limit);
        }
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Validation(m) => ApiError::BadRequest(m),
            e @ BackendError::InputTooLong { .. } => ApiError::BadRequest(e.to_string()),
            BackendError::RateLimited { body, .. } => ApiError::QueueFull(body),
            BackendError::Cancelled => ApiError::Cancelled,
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        let body = json!({"error": {"message": self.to_string(), "type": self.kind(), "code": status.as_u16()}});
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}
