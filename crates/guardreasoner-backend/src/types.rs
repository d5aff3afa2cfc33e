//! What callers ask a backend for, and what it gives back.

use crate::BackendError;
use serde::{Deserialize, Serialize};

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// The model input: raw text the model continues as is, or chat messages that the backend
/// renders with the model's chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptInput {
    /// Continued verbatim (`/v1/completions`). The guard prompt is sent this way.
    Text(String),
    /// Rendered with a chat template (`/v1/chat/completions`).
    Chat(Vec<ChatMessage>),
}

impl PromptInput {
    /// Total characters of text in the input (for token estimates before tokenising).
    pub fn char_len(&self) -> usize {
        match self {
            PromptInput::Text(t) => t.chars().count(),
            PromptInput::Chat(messages) => messages.iter().map(|m| m.content.chars().count()).sum(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            PromptInput::Text(t) => t.is_empty(),
            PromptInput::Chat(messages) => {
                messages.is_empty() || messages.iter().all(|m| m.content.is_empty())
            }
        }
    }
}

/// One generation request. `temperature == 0` means greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    pub input: PromptInput,
    pub max_new_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// Sampling seed, for reproducible sampling where the backend supports it.
    pub seed: Option<u64>,
    /// Number of independent completions of the same input.
    pub n: u32,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
    /// Return the log-probability of each generated token.
    pub logprobs: bool,
    /// Continuations to score once a choice is generated ([`ContinuationProbe`]). Backends
    /// that cannot score them leave [`Choice::probe_logprobs`] empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<ContinuationProbe>,
    /// How a choice must end ([`ConstrainedEnding`]). Backends that cannot constrain decoding
    /// ignore it (the strict parser still judges what they return).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<ConstrainedEnding>,
}

/// Once `header` is generated, only one of `endings` may follow, and then the choice ends. A
/// choice that would end before writing `header`, or has generated `max_reasoning_tokens`,
/// gets `separator + header` forced first ([`Choice::forced_ending`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConstrainedEnding {
    pub header: String,
    pub separator: String,
    pub endings: Vec<String>,
    /// Most tokens before the header is forced (`None`: what `max_new_tokens` leaves room for).
    pub max_reasoning_tokens: Option<u32>,
}

/// Alternatives to score after the last place `marker` was generated: the log-probability of
/// each, teacher-forced from the generated context (the guard's label scores come from these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinuationProbe {
    pub marker: String,
    pub alternatives: Vec<String>,
}

impl GenerationRequest {
    /// Greedy decoding of one completion, no stop strings, no logprobs.
    pub fn new(input: PromptInput, max_new_tokens: u32) -> Self {
        Self {
            input,
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            n: 1,
            stop: Vec::new(),
            logprobs: false,
            probes: Vec::new(),
            ending: None,
        }
    }

    /// Check what every backend requires, before anything is queued or sent.
    pub fn validate(&self) -> Result<(), crate::BackendError> {
        let invalid = |m: String| Err(crate::BackendError::Validation(m));
        if self.input.is_empty() {
            return invalid("the prompt is empty".into());
        }
        if self.max_new_tokens == 0 {
            return invalid("max_new_tokens must be at least 1".into());
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return invalid(format!(
                "temperature must be within [0, 2], got {}",
                self.temperature
            ));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p must be within (0, 1], got {}", self.top_p));
        }
        if self.n == 0 {
            return invalid("n must be at least 1".into());
        }
        if let Some(i) = self.stop.iter().position(String::is_empty) {
            return invalid(format!("stop string {i} is empty"));
        }
        if let Some(i) = self
            .probes
            .iter()
            .position(|p| p.marker.is_empty() || p.alternatives.iter().any(String::is_empty))
        {
            return invalid(format!("probe {i} has an empty marker or alternative"));
        }
        if let Some(e) = &self.ending {
            if e.header.is_empty() || e.endings.is_empty() || e.endings.iter().any(String::is_empty)
            {
                return invalid("a constrained ending needs a header and non-empty endings".into());
            }
            // Some(0) answers at once (reasoning `none`); a user's 0 is refused earlier
            // (`GuardParams::validate`).
            match e.max_reasoning_tokens {
                Some(n) if n >= self.max_new_tokens => {
                    return invalid(format!(
                        "max_reasoning_tokens ({n}) must be below max_new_tokens ({}), which also holds the answer",
                        self.max_new_tokens
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A rough token count of the request (4 characters per prompt token, plus every new
    /// token it may generate), for rate limiting before the real count is known.
    pub fn estimated_tokens(&self) -> u64 {
        (self.input.char_len() as u64).div_ceil(4)
            + u64::from(self.max_new_tokens) * u64::from(self.n)
    }
}

/// Why generation of a choice ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence or a stop string.
    Stop,
    /// `max_new_tokens` reached: the text may be cut off.
    Length,
    /// Anything else a server reports (`content_filter`, ...), or nothing.
    Other(String),
}

impl FinishReason {
    pub fn from_wire(reason: Option<&str>) -> Self {
        match reason {
            Some("stop") | Some("eos") => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            Some(other) => FinishReason::Other(other.to_string()),
            None => FinishReason::Other(String::new()),
        }
    }
}

/// A generated token with its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
}

/// One completion of the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub text: String,
    pub finish_reason: FinishReason,
    /// Tokens generated for this choice, where the backend reports it per choice.
    pub completion_tokens: Option<u32>,
    /// Present when the request asked for logprobs and the backend returned them.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Present when the request had probes and the backend scored them: per probe, the
    /// log-probability of each alternative, or `None` where its marker was not generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_logprobs: Option<Vec<Option<Vec<f32>>>>,
    /// Present when the request had a constrained ending and the backend applied it: whether
    /// the header had to be forced (budget reached, or an early end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_ending: Option<bool>,
}

/// Token counts of one request, as the backend counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    /// Over all choices.
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Both generations' tokens (e.g. a cascade's two steps).
    pub fn plus(&self, other: &Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
        }
    }
}

/// What a streamed generation yields ([`crate::Backend::generate_stream`]).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// New text of one choice (complete UTF-8).
    Text { choice: usize, delta: String },
    /// One choice ended.
    Finished {
        choice: usize,
        finish_reason: FinishReason,
    },
}

/// A streamed generation: events until every choice has finished, or an error.
pub type EventStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<StreamEvent, BackendError>> + Send + 'static>,
>;

/// Where a local engine's time went on one request (a remote endpoint does not say).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineTimings {
    /// Prompt tokens whose keys/values came from the cached guard instruction.
    pub reused_prompt_tokens: u64,
    /// From joining the decode batch to the first generated token.
    pub prefill_s: f64,
    /// From the first generated token to the last.
    pub decode_s: f64,
}

impl EngineTimings {
    /// Both requests' (e.g. a cascade's two steps).
    pub fn plus(&self, other: &EngineTimings) -> EngineTimings {
        EngineTimings {
            reused_prompt_tokens: self.reused_prompt_tokens + other.reused_prompt_tokens,
            prefill_s: self.prefill_s + other.prefill_s,
            decode_s: self.decode_s + other.decode_s,
        }
    }
}

/// The result of one request: `n` choices in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// The model that answered, as the backend names it.
    pub model: String,
    /// How many times the request was retried before it succeeded.
    pub retries: u32,
    /// Where the local engine reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<EngineTimings>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let ok = GenerationRequest::new(PromptInput::Text("hi".into()), 8);
        assert!(ok.validate().is_ok());
        let mut r = ok.clone();
        r.temperature = -1.0;
        assert!(r
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        let mut r = ok.clone();
        r.top_p = 0.0;
        assert!(r.validate().unwrap_err().to_string().contains("top_p"));
        let mut r = ok.clone();
        r.n = 0;
        assert!(r.validate().unwrap_err().to_string().contains("n must"));
        let r = GenerationRequest::new(PromptInput::Chat(vec![]), 8);
        assert!(r.validate().unwrap_err().to_string().contains("empty"));
        let mut r = ok.clone();
        r.max_new_tokens = 0;
        assert!(r.validate().is_err());
    }

    #[test]
    fn token_estimate_counts_prompt_and_budget() {
        let mut r = GenerationRequest::new(PromptInput::Text("abcdefgh".into()), 10);
        r.n = 3;
        assert_eq!(r.estimated_tokens(), 2 + 30);
    }
}
