//! The one place a conversation is classified through a backend.

use crate::{
    Backend, BackendError, ConstrainedEnding, ContinuationProbe, FinishReason, GenerationRequest,
    PromptInput, Usage,
};
use guardreasoner_core::answer_grammar::{answer_endings, ANSWER_HEADER, FORCED_SEPARATOR};
use guardreasoner_core::label_scores::{answer_alternatives, answer_marker, ANSWER_ORDER};
use guardreasoner_core::{
    build_guard_prompt, parse_strict, Conversation, LabelScores, ParseError, ParsedOutput,
};

/// Sampling settings for a guard call. The paper evaluates greedily with up to 2048 new
/// tokens, which is the default.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardParams {
    pub max_new_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    /// Most reasoning tokens before the answer is forced (`None`: what `max_new_tokens`
    /// leaves room for). Where the backend can constrain decoding, the answer block always
    /// follows the grammar ([`guardreasoner_core::answer_grammar`]).
    pub max_reasoning_tokens: Option<u32>,
}

impl Default for GuardParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 2048,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            max_reasoning_tokens: None,
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
    /// The probability of each answered task's positive label, where the backend scores
    /// ([`label_scores`]); `None` from a backend that cannot (a remote endpoint).
    pub scores: Option<LabelScores>,
    /// Whether the answer was forced (the reasoning budget ran out, or the model would have
    /// stopped without answering); `None` from a backend that cannot constrain decoding.
    pub forced: Option<bool>,
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
    request.probes = answer_probes();
    request.ending = Some(ConstrainedEnding {
        header: ANSWER_HEADER.into(),
        separator: FORCED_SEPARATOR.into(),
        endings: answer_endings(conversation.response.is_some()),
        max_reasoning_tokens: params.max_reasoning_tokens,
    });
    request
}

/// The probes that score each answer line's two labels, in [`ANSWER_ORDER`].
pub fn answer_probes() -> Vec<ContinuationProbe> {
    ANSWER_ORDER
        .iter()
        .map(|&task| ContinuationProbe {
            marker: answer_marker(task),
            alternatives: answer_alternatives(task).to_vec(),
        })
        .collect()
}

/// The label scores of a parsed guard output from the probe log-probabilities of its choice:
/// `None` when the output did not parse (no verdict, no score) or the backend did not score.
pub fn label_scores(
    parsed: &Result<ParsedOutput, ParseError>,
    probe_logprobs: Option<&[Option<Vec<f32>>]>,
) -> Option<LabelScores> {
    let (Ok(parsed), Some(logprobs)) = (parsed, probe_logprobs) else {
        return None;
    };
    Some(LabelScores::from_probe_logprobs(&parsed.verdict, logprobs))
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
    let scores = label_scores(&parsed, choice.probe_logprobs.as_deref());
    Ok(GuardOutcome {
        text: choice.text,
        parsed,
        scores,
        forced: choice.forced_ending,
        finish_reason: choice.finish_reason,
        usage: generation.usage,
        retries: generation.retries,
    })
}
