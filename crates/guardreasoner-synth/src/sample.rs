//! Sampling for hard-sample mining: `n` reasoning outputs per training input from a model behind
//! any [`Backend`] (the local engine, our server, vLLM, llama.cpp's server, ...), written one
//! line per input as each finishes, so a crash loses at most the inputs in flight and a rerun
//! resumes where it stopped.
//!
//! The model sees what it was trained on and what inference feeds it:
//! `instruction + "\n" + input`, encoded as untrusted text by the backend.

use crate::mine::{GoldRecord, SampleSet};
use crate::SynthError;
use guardreasoner_backend::{Backend, BackendError, GenerationRequest, PromptInput};
use guardreasoner_core::jsonl::JsonlAppender;
use std::path::Path;
use std::sync::Arc;
use tokio::task::JoinSet;

/// The paper's sampling settings: 4 outputs, temperature 0.7, top-p 0.95, up to 2048 tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSettings {
    /// Name recorded in every line (`model` of [`SampleSet`]); one samples file may hold the
    /// samples of several models, each resumed on its own.
    pub model: String,
    pub n: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: u32,
    /// Input `i` is sampled with seed `seed + i`, so a resumed run draws what a straight run
    /// would have (where the backend honours seeds).
    pub seed: u64,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl SampleSettings {
    /// The paper's settings for `model`.
    pub fn paper(model: impl Into<String>) -> Self {
        SampleSettings {
            model: model.into(),
            n: 4,
            temperature: 0.7,
            top_p: 0.95,
            max_new_tokens: 2048,
            seed: 0,
            concurrency: 4,
        }
    }
}

/// What a sampling run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleSummary {
    /// Inputs already in the file for this model when the run started.
    pub resumed: usize,
    /// Inputs sampled by this run.
    pub sampled: usize,
    /// Outputs cut off at `max_new_tokens` in this run.
    pub truncated: usize,
}

/// The prompt of a training input, as training and inference build it.
pub fn sampling_prompt(record: &GoldRecord) -> String {
    format!("{}\n{}", record.instruction, record.input)
}

/// Samples every input of `gold` not yet in `output` for `settings.model`, appending one
/// [`SampleSet`] line per input. `progress(done, total)` is called after each input.
///
/// Lines already in `output` must belong to these inputs (same index, same input text):
/// resuming against other data is an error, not a silent mix. A backend failure stops the run
/// with an error naming the input; everything finished before it stays in the file.
pub async fn sample_outputs(
    gold: &[GoldRecord],
    backend: Arc<dyn Backend>,
    settings: &SampleSettings,
    output: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SampleSummary, SynthError> {
    if settings.n == 0 || settings.concurrency == 0 || settings.max_new_tokens == 0 {
        return Err(SynthError::Settings(
            "n, concurrency and max_new_tokens must be at least 1".into(),
        ));
    }
    let (mut appender, existing) = JsonlAppender::open::<SampleSet>(output)?;
    let mut done = vec![false; gold.len()];
    for (line, set) in existing.iter().enumerate() {
        if set.model != settings.model {
            continue;
        }
        let mismatch = |why: String| {
            SynthError::Sampling(format!(
                "{} line {}: {why}; this samples file was written for other inputs (use another \
             --output, or the same --gold)",
                output.display(),
                line + 1
            ))
        };
        match gold.get(set.index) {
            None => {
                return Err(mismatch(format!(
                    "index {} is beyond the {} inputs",
                    set.index,
                    gold.len()
                )))
            }
            Some(record) if record.input != set.input => {
                return Err(mismatch(format!("input {} differs", set.index)))
            }
            Some(_) => done[set.index] = true,
        }
    }
    let mut summary = SampleSummary {
        resumed: done.iter().filter(|&&d| d).count(),
        ..SampleSummary::default()
    };
    let total = gold.len();
    progress(summary.resumed, total);
    let mut pending = (0..gold.len()).filter(|&i| !done[i]);
    let mut in_flight = JoinSet::new();
    let mut first_error: Option<SynthError> = None;
    loop {
        while first_error.is_none() && in_flight.len() < settings.concurrency {
            let Some(index) = pending.next() else { break };
            let mut request = GenerationRequest::new(
                PromptInput::Text(sampling_prompt(&gold[index])),
                settings.max_new_tokens,
            );
            request.n = settings.n;
            request.temperature = settings.temperature;
            request.top_p = settings.top_p;
            request.seed = Some(settings.seed.wrapping_add(index as u64));
            let backend = backend.clone();
            in_flight.spawn(async move { (index, backend.generate(request).await) });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let failed = |index: usize, e: BackendError| {
            SynthError::Sampling(format!("sampling input {index} failed: {e}"))
        };
        let (index, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                first_error
                    .get_or_insert(SynthError::Sampling(format!("a sampling task failed: {e}")));
                continue;
            }
        };
        match result {
            Ok(generation) if generation.choices.len() == settings.n as usize => {
                summary.truncated += generation
                    .choices
                    .iter()
                    .filter(|c| c.finish_reason == guardreasoner_backend::FinishReason::Length)
                    .count();
                let set = SampleSet {
                    model: settings.model.clone(),
                    index,
                    input: gold[index].input.clone(),
                    outputs: generation.choices.into_iter().map(|c| c.text).collect(),
                };
                appender.append(&set)?;
                summary.sampled += 1;
                progress(summary.resumed + summary.sampled, total);
            }
            Ok(generation) => {
                first_error.get_or_insert(SynthError::Sampling(format!(
                    "sampling input {index}: asked for {} outputs, the backend returned {}",
                    settings.n,
                    generation.choices.len()
                )));
            }
            Err(e) => {
                first_error.get_or_insert(failed(index, e));
            }
        }
    }
    appender.sync()?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}
