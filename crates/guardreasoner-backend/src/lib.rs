//! The generation seam (after TGI's router): callers build a [`GenerationRequest`] and hold an
//! `Arc<dyn Backend>`; behind it sits the local engine or an OpenAI-compatible server
//! ([`OpenAiBackend`]), or several of them ([`MultiBackend`]). Guard classification goes
//! through [`classify`], synthesis and evaluation through [`Backend::generate`].

mod error;
mod guard;
mod multi;
mod openai;
mod rate;
mod retry;
#[cfg(feature = "test-support")]
pub mod testing;
mod types;

pub use error::BackendError;
pub use guard::{answer_probes, classify, guard_request, label_scores, GuardOutcome, GuardParams};
pub use multi::{Balance, MultiBackend};
pub use openai::{
    normalise_base_url, parse_reply, request_body, system_and_user, ApiKey, OpenAiBackend,
    OpenAiConfig, DEFAULT_API_KEY_VAR,
};
pub use rate::{RateLimiter, RateLimits};
pub use retry::{parse_retry_after, RetryPolicy};
pub use types::{
    ChatMessage, Choice, ConstrainedEnding, ContinuationProbe, EngineTimings, EventStream,
    FinishReason, Generation, GenerationRequest, PromptInput, Role, StreamEvent, TokenLogprob,
    Usage,
};

use async_trait::async_trait;

/// Anything that turns a [`GenerationRequest`] into text. Object-safe: hold it as
/// `Arc<dyn Backend>`.
///
/// Implementations must be cancel-safe: dropping the future of `generate` abandons the
/// request (the local engine drops the sequence from its batch).
#[async_trait]
pub trait Backend: Send + Sync {
    /// A human-readable name (endpoint and model), for logs and reports. Never a secret.
    fn name(&self) -> String;

    /// Generate `request.n` completions of `request.input`.
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, BackendError>;

    /// The same generation as events while it happens: text deltas per choice, then each
    /// choice's end. Errors of the request itself come back before the stream starts. This
    /// default yields the whole text at the end, for backends that cannot stream; dropping
    /// the stream abandons the request.
    async fn generate_stream(
        &self,
        request: GenerationRequest,
    ) -> Result<EventStream, BackendError> {
        let generation = self.generate(request).await?;
        let events: Vec<Result<StreamEvent, BackendError>> = generation
            .choices
            .into_iter()
            .enumerate()
            .flat_map(|(choice, c)| {
                [
                    Ok(StreamEvent::Text {
                        choice,
                        delta: c.text,
                    }),
                    Ok(StreamEvent::Finished {
                        choice,
                        finish_reason: c.finish_reason,
                    }),
                ]
            })
            .collect();
        Ok(Box::pin(futures_util::stream::iter(events)))
    }

    /// Whether the backend scores the guard's answer probes and keeps its answer to the
    /// answer grammar (the local engine does; an OpenAI-compatible endpoint does neither).
    /// Without it there are no label scores, so no `none`/`auto` reasoning and no thresholds.
    fn scores_answers(&self) -> bool {
        false
    }

    /// Counters since the backend was created.
    fn stats(&self) -> BackendStats {
        BackendStats::default()
    }
}

/// Counters of a backend since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct BackendStats {
    /// Calls of `generate`.
    pub requests: u64,
    /// HTTP exchanges (or engine runs), retries included.
    pub attempts: u64,
    pub retries: u64,
    /// Calls that ended in an error.
    pub failures: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl BackendStats {
    /// The sum of two sets of counters.
    pub fn combined(&self, other: &BackendStats) -> BackendStats {
        BackendStats {
            requests: self.requests + other.requests,
            attempts: self.attempts + other.attempts,
            retries: self.retries + other.retries,
            failures: self.failures + other.failures,
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
        }
    }
}
