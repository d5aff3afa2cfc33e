//! The one place a conversation is classified through a backend.

use crate::{
    Backend, BackendError, ConstrainedEnding, ContinuationProbe, EngineTimings, FinishReason,
    GenerationRequest, PromptInput, Usage,
};
use guardreasoner_core::answer_grammar::{answer_endings, ANSWER_HEADER, FORCED_SEPARATOR};
use guardreasoner_core::calibration::{GuardCalibration, Stage};
use guardreasoner_core::cascade::needs_reasoning;
use guardreasoner_core::label_scores::{answer_alternatives, answer_marker, ANSWER_ORDER};
use guardreasoner_core::{
    build_guard_prompt, parse_strict, Conversation, LabelScores, ParseError, ParsedOutput,
    ReasoningMode, UncertaintyBand,
};
use std::sync::Arc;

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
    /// `full` reasons before answering, `none` answers at once, `auto` answers at once and
    /// reasons only where a score falls in `band` ([`guardreasoner_core::cascade`]).
    pub reasoning: ReasoningMode,
    pub band: UncertaintyBand,
    /// Maps the model's label scores to calibrated probabilities, by the stage that reached
    /// the verdict (fitted on a development split; the default guard's card carries one).
    /// The band is always applied to the model's own scores.
    pub calibration: Option<Arc<GuardCalibration>>,
}

impl GuardParams {
    /// What a caller may set wrong, refused before anything is generated.
    pub fn validate(&self) -> Result<(), BackendError> {
        if self.max_reasoning_tokens == Some(0) {
            return Err(BackendError::Validation(
                "max_reasoning_tokens must be at least 1 (for no reasoning, ask for reasoning `none`)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The parameters of an escalation: the same, reasoning fully.
    pub fn escalated(&self) -> GuardParams {
        GuardParams {
            reasoning: ReasoningMode::Full,
            ..self.clone()
        }
    }
}

impl Default for GuardParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 2048,
            temperature: 0.0,
            top_p: 1.0,
            seed: None,
            max_reasoning_tokens: None,
            reasoning: ReasoningMode::Full,
            band: UncertaintyBand::default(),
            calibration: None,
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
    /// The model's own scores where `scores` were calibrated ([`GuardParams::calibration`]).
    pub raw_scores: Option<LabelScores>,
    /// Whether the answer was forced (the reasoning budget ran out, or the model would have
    /// stopped without answering); `None` from a backend that cannot constrain decoding. An
    /// answer asked for without reasoning (`none`) is not forced.
    pub forced: Option<bool>,
    /// Under `auto`: whether the unreasoned answer was uncertain and the verdict comes from
    /// full reasoning (`usage` then counts both generations). `None` under `full` and `none`.
    pub escalated: Option<bool>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub retries: u32,
    /// The local engine's timings (both generations' under an escalation).
    pub timings: Option<EngineTimings>,
}

/// The guard request for a conversation: the GuardReasoner prompt as raw text. Under `auto`
/// this is the first, unreasoned request (an escalation uses [`GuardParams::escalated`]).
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
        // No reasoning: the answer header is forced before the first generated token.
        max_reasoning_tokens: match params.reasoning {
            ReasoningMode::Full => params.max_reasoning_tokens,
            ReasoningMode::None | ReasoningMode::Auto => Some(0),
        },
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
/// Under `auto`, an uncertain unreasoned answer is generated again with full reasoning.
pub async fn classify(
    backend: &dyn Backend,
    conversation: &Conversation,
    params: &GuardParams,
) -> Result<GuardOutcome, BackendError> {
    if conversation.prompt.trim().is_empty() {
        return Err(BackendError::Validation("the user prompt is empty".into()));
    }
    params.validate()?;
    if !backend.scores_answers() {
        // Not silently degraded: without scores `auto` would always escalate, `none` would
        // reason anyway, and a budget would never be enforced.
        if params.reasoning != ReasoningMode::Full {
            return Err(BackendError::Validation(format!(
                "reasoning `{}` needs label scores and a constrained answer, which {} cannot give; use reasoning `full`",
                params.reasoning.name(),
                backend.name()
            )));
        }
        if params.max_reasoning_tokens.is_some() {
            return Err(BackendError::Validation(format!(
                "max_reasoning_tokens needs a constrained answer, which {} cannot give",
                backend.name()
            )));
        }
    }
    let first = generate_once(backend, conversation, params).await?;
    let verdict = if params.reasoning != ReasoningMode::Auto {
        first
    } else if !should_escalate(&first, params) {
        settled(first)
    } else {
        let full = generate_once(backend, conversation, &params.escalated()).await?;
        escalation(first, full)
    };
    Ok(calibrated(verdict, params))
}

/// The verdict with its scores mapped through `params.calibration` by the stage that reached
/// it (the model's own kept in `raw_scores`); unchanged without a calibration. The last step
/// of every verdict, after any escalation was decided on the model's own scores.
fn calibrated(outcome: GuardOutcome, params: &GuardParams) -> GuardOutcome {
    let (Some(calibration), Some(raw)) = (&params.calibration, outcome.scores) else {
        return outcome;
    };
    let stage = Stage::of(params.reasoning, outcome.escalated);
    GuardOutcome {
        scores: Some(calibration.apply(&raw, stage)),
        raw_scores: Some(raw),
        ..outcome
    }
}

/// An `auto` first answer that was certain enough: the verdict.
fn settled(first: GuardOutcome) -> GuardOutcome {
    GuardOutcome {
        escalated: Some(false),
        ..first
    }
}

/// The verdict of an escalated `auto` request: the fully reasoned one, counting both
/// generations' tokens and retries.
fn escalation(first: GuardOutcome, full: GuardOutcome) -> GuardOutcome {
    let timings = match (first.timings, full.timings) {
        (Some(a), Some(b)) => Some(a.plus(&b)),
        (a, b) => b.or(a),
    };
    GuardOutcome {
        escalated: Some(true),
        usage: full.usage.plus(&first.usage),
        retries: full.retries + first.retries,
        timings,
        ..full
    }
}

/// Whether an `auto` first answer must be reasoned fully (see [`needs_reasoning`]).
fn should_escalate(first: &GuardOutcome, params: &GuardParams) -> bool {
    needs_reasoning(&first.parsed, first.scores.as_ref(), params.band)
}

/// One generation of the guard request for `params.reasoning` and its strict parse.
async fn generate_once(
    backend: &dyn Backend,
    conversation: &Conversation,
    params: &GuardParams,
) -> Result<GuardOutcome, BackendError> {
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
    Ok(GuardOutcome {
        timings: generation.timings,
        ..outcome_of(
            choice.text,
            choice.probe_logprobs.as_deref(),
            choice.forced_ending,
            params.reasoning,
            choice.finish_reason,
            generation.usage,
            generation.retries,
        )
    })
}

/// A guard outcome from what one generation returned: the one place generated text becomes
/// a verdict.
fn outcome_of(
    text: String,
    probe_logprobs: Option<&[Option<Vec<f32>>]>,
    forced_ending: Option<bool>,
    reasoning: ReasoningMode,
    finish_reason: FinishReason,
    usage: Usage,
    retries: u32,
) -> GuardOutcome {
    // Only the generated text is parsed: the prompt (which the user controls) never is.
    let parsed = parse_strict(&text);
    let scores = label_scores(&parsed, probe_logprobs);
    let forced = match reasoning {
        ReasoningMode::Full => forced_ending,
        // Answering at once was asked for, not forced.
        ReasoningMode::None | ReasoningMode::Auto => forced_ending.map(|_| false),
    };
    GuardOutcome {
        text,
        parsed,
        scores,
        raw_scores: None,
        forced,
        escalated: None,
        finish_reason,
        usage,
        retries,
        timings: None,
    }
}
