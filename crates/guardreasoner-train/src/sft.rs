//! Reasoning SFT: next-token cross-entropy on the output tokens only.

use crate::data::{fingerprint, Example};
use crate::fast::{FastLlama, Grads};
use crate::trainer::{ExampleLoss, Objective};
use crate::TrainError;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// SFT over tokenized examples. The loss of an example is the mean NLL of its target tokens;
/// a step's loss is the mean over its examples.
pub struct SftObjective {
    pub examples: Vec<Example>,
}

impl Objective for SftObjective {
    fn len(&self) -> usize {
        self.examples.len()
    }

    fn fingerprint(&self) -> String {
        format!("sft-{}", fingerprint(&self.examples))
    }

    fn max_len(&self) -> usize {
        self.examples.iter().map(Example::len).max().unwrap_or(1)
    }

    fn loss(
        &self,
        model: &FastLlama,
        index: usize,
        dropout: &mut ChaCha8Rng,
        scale: f64,
        grads: &mut Grads,
    ) -> Result<ExampleLoss, TrainError> {
        let e = &self.examples[index];
        let (logp, tape) =
            crate::fast::sequence_log_prob(model, &e.prompt, &e.target, Some(dropout))?;
        let n = e.target.len() as f64;
        model.backward(tape, &vec![(-scale / n) as f32; e.target.len()], grads)?;
        Ok(ExampleLoss {
            loss: -logp / n,
            tokens: e.len(),
            metrics: BTreeMap::new(),
        })
    }
}
