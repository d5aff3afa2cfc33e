//! The record formats that pass between the stages of the training pipeline: labelled training
//! inputs ([`GoldRecord`], GuardReasonerTrain's field names) and the reasoning a model sampled
//! for them ([`SampleSet`], one line of a `mine sample` file). Defined once here, because data
//! preparation, sampling, pair mining and distillation all read them.

use crate::labels::{Label, Task};
use crate::prompt::split_input;
use serde::{Deserialize, Serialize};

/// A training input with its gold labels (GuardReasonerTrain field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldRecord {
    pub instruction: String,
    pub input: String,
    #[serde(default)]
    pub prompt_harm_label: Option<Label>,
    #[serde(default)]
    pub response_refusal_label: Option<Label>,
    #[serde(default)]
    pub response_harm_label: Option<Label>,
}

impl GoldRecord {
    /// Whether the input carries an AI response (the layout's `None` means no response).
    pub fn has_response(&self) -> bool {
        split_input(&self.input).is_some_and(|c| c.response.is_some())
    }

    /// The gold label of `task`, if known and applicable.
    pub fn gold(&self, task: Task) -> Option<Label> {
        let label = match task {
            Task::Prompt => self.prompt_harm_label,
            Task::Response => self.response_harm_label,
            Task::Refusal => self.response_refusal_label,
        }?;
        if task != Task::Prompt && !self.has_response() {
            return None;
        }
        task.accepts(label).then_some(label)
    }
}

/// The sampled outputs of one model for one input (one line of a samples file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSet {
    pub model: String,
    /// Index of the input in the gold file.
    pub index: usize,
    pub input: String,
    pub outputs: Vec<String>,
}

/// A preference record in LLaMA-Factory's ranking format: what mining writes and HS-DPO reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceRecord {
    pub instruction: String,
    pub input: String,
    pub chosen: String,
    pub rejected: String,
    #[serde(default = "one")]
    pub sample_weight: f64,
}

fn one() -> f64 {
    1.0
}
