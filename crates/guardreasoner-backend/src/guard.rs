//! The one place a conversation is classified through a backend.

use crate::{Backend, BackendError, FinishReason, GenerationRequest, PromptInput, Usage};
use guardreasoner_core::{
    build_guard_prompt, parse_strict, Conversation, ParseError, ParsedOutput,
};

/// Sampling settings for a guard call. The paper evaluates greedily with up to 2048 new
/// tokens, which is the default.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardParams {
    pub max_new_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
}

impl Default for GuardParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 2048,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
        }
    }
}

/// What the guard said about one conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardOutcome {
    /// The generated text, exactly as the model wrote it.
    pub text: String,
    /// The strict parse of `text`. An error means "no verdict": never treat it as safe.
    pub parsed: Result<ParsedOutput, ParseError>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub retries: u32,
}

/// The guard request for a conversation: the GuardReasoner prompt as raw text.
pub fn guard_request(conversation: &Conversation, params: &GuardParams) -> GenerationRequest {
    let prompt = build_guard_prompt(&conversation.prompt, conversation.response.as_deref());
    let mut request = GenerationRequest::new(PromptInput::Text(prompt), params.max_new_tokens);
    request.temperature = params.temperature;
    request.top_p = params.top_p;
    request.seed = params.seed;
    request
}

/// Classify one conversation: build the guard prompt, generate, and parse strictly (fail
/// closed: a reply without a valid answer block is an error in `parsed`, never "unharmful").
pub async fn classify(
    backend: &dyn Backend,
    conversation: &Conversation,
    params: &GuardParams,
) -> Result<GuardOutcome, BackendError> {
    if conversation.prompt.trim().is_empty() {
        return Err(BackendError::Validation("the user prompt is empty".into()));
    }
    let generation = backend
        .generate(guard_request(conversation, params))
        .await?;
    let choice =
        generation
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| BackendError::InvalidResponse {
                endpoint: backend.name(),
                message: "no choice in the reply".into(),
            })?;
    // Only the generated text is parsed: the prompt (which the user controls) never is.
    let parsed = parse_strict(&choice.text);
    Ok(GuardOutcome {
        text: choice.text,
        parsed,
        finish_reason: choice.finish_reason,
        usage: generation.usage,
        retries: generation.retries,
    })
}
