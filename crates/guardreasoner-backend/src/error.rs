//! Everything that can go wrong between a caller and generation.

use std::time::Duration;

/// A failed generation. Messages name the endpoint and never contain the API key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// The endpoint could not be reached, or the connection broke before a full reply.
    #[error("{endpoint}: connection failed: {message}")]
    Connection { endpoint: String, message: String },
    /// No complete reply within the per-request timeout.
    #[error("{endpoint}: no reply within {}s", .timeout.as_secs_f64())]
    Timeout { endpoint: String, timeout: Duration },
    /// The server answered with an error status (other than 429).
    #[error("{endpoint}: HTTP {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        /// The start of the response body, with any secret removed.
        body: String,
        /// `Retry-After`, which servers may send with 503.
        retry_after: Option<Duration>,
    },
    /// HTTP 429, with the server's `Retry-After` when it sent one.
    #[error("{endpoint}: rate limited (HTTP 429{}): {body}", .retry_after.map(|d| format!(", retry after {}s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        endpoint: String,
        retry_after: Option<Duration>,
        body: String,
    },
    /// A 2xx reply that is not the expected JSON.
    #[error("{endpoint}: invalid response: {message}")]
    InvalidResponse { endpoint: String, message: String },
    /// The request itself is wrong; sending it again cannot help.
    #[error("invalid request: {0}")]
    Validation(String),
    /// This input does not fit the model: a property of the input, not of the settings, so a
    /// batch job can fail this one item closed and go on with the others.
    #[error("the prompt has {prompt_tokens} tokens and asks for up to {max_new_tokens} new ones; the limit is {max_prompt_tokens} prompt tokens and {context} in all")]
    InputTooLong {
        prompt_tokens: usize,
        max_new_tokens: usize,
        max_prompt_tokens: usize,
        context: usize,
    },
    /// The local engine failed.
    #[error("engine error: {0}")]
    Engine(String),
    /// The caller went away or the backend shut down before the request finished.
    #[error("request cancelled")]
    Cancelled,
    /// Every attempt failed with a retryable error; `last` is the final one.
    #[error("{last} (gave up after {attempts} attempts)")]
    RetriesExhausted {
        attempts: u32,
        last: Box<BackendError>,
    },
}

impl BackendError {
    /// Whether the same request may succeed if sent again (to this or another endpoint).
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Connection { .. }
            | BackendError::Timeout { .. }
            | BackendError::RateLimited { .. } => true,
            // A garbled 2xx body is a server or proxy fault, not the request's.
            BackendError::InvalidResponse { .. } => true,
            BackendError::Status { status, .. } => {
                matches!(status, 408 | 409) || (500..=599).contains(status)
            }
            BackendError::RetriesExhausted { last, .. } => last.is_retryable(),
            BackendError::Validation(_)
            | BackendError::InputTooLong { .. }
            | BackendError::Engine(_)
            | BackendError::Cancelled => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::RateLimited { retry_after, .. }
            | BackendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A stable short name for summaries and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Connection { .. } => "connection",
            BackendError::Timeout { .. } => "timeout",
            BackendError::Status { .. } => "http_status",
            BackendError::RateLimited { .. } => "rate_limited",
            BackendError::InvalidResponse { .. } => "invalid_response",
            BackendError::Validation(_) | BackendError::InputTooLong { .. } => "validation",
            BackendError::Engine(_) => "engine",
            BackendError::Cancelled => "cancelled",
            BackendError::RetriesExhausted { last, .. } => last.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        let status = |s| BackendError::Status {
            endpoint: "e".into(),
            status: s,
            body: String::new(),
            retry_after: None,
        };
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!BackendError::Validation("x".into()).is_retryable());
        let exhausted = BackendError::RetriesExhausted {
            attempts: 3,
            last: Box::new(status(502)),
        };
        assert!(exhausted.is_retryable());
        assert_eq!(exhausted.kind(), "http_status");
        assert!(exhausted.to_string().contains("gave up after 3 attempts"));
    }
}
