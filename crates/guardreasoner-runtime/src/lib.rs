//! The local engine behind the [`Backend`](guardreasoner_backend::Backend) seam.
//!
//! Requests are validated and tokenised on the caller's thread, then queued for one scheduler
//! thread that owns a [`DecodeBatch`](guardreasoner_engine::DecodeBatch): new sequences join at
//! step boundaries (continuous batching), every step decodes one token of each, and a sequence
//! whose caller went away (its event receiver dropped) is removed before the next step.

mod batching;
mod chat;
mod metrics;
mod scheduler;

pub use chat::{encode_chat, ChatFormat};
pub use metrics::Metrics;
pub use scheduler::{
    collect, default_guard_kv_cache, resolve_model, Event, LocalBackend, RuntimeError,
    RuntimeOptions, Submission,
};
