//! The candle reference (feature `oracle`; the crate's tests turn it on): a LLaMA on autograd,
//! its LoRA layers, AdamW and clipping on tensors, the SFT and DPO losses on it, and a plain
//! training loop over them. The production trainer ([`crate::trainer`] on
//! [`crate::fast::FastLlama`]) is checked against these: losses, gradients and whole runs.

mod llama;
mod lora_layer;
mod optim;

pub use llama::*;
pub use lora_layer::LoraLayer;
pub use optim::{clip_grads, grad_norm, AdamW};

use crate::dpo::{DpoConfig, DpoObjective};
use crate::sft::SftObjective;
use crate::trainer::{epoch_order, step_dropout, steps_of, Objective, TrainerConfig};
use crate::TrainError;
use candle_core::{DType, Tensor, D};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// An objective's loss on the reference model: a scalar tensor with a graph to the model's
/// variables. Must draw from `dropout` exactly as [`Objective::loss`] does, so both train alike.
pub trait ReferenceObjective: Objective {
    fn reference_loss(
        &self,
        model: &Llama,
        index: usize,
        dropout: &mut ChaCha8Rng,
    ) -> Result<Tensor, TrainError>;
}

/// `-log sigmoid(x)` = softplus(-x), stable for any `x`.
pub fn neg_log_sigmoid(x: &Tensor) -> Result<Tensor, TrainError> {
    let zeros = x.zeros_like()?;
    let both = Tensor::stack(&[&zeros, &x.neg()?], D::Minus1)?;
    let logp = log_softmax_last(&both)?;
    // log(sigmoid(x)) = log(1 / (1 + e^-x)) = log_softmax([0, -x])[0].
    Ok(logp.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?.neg()?)
}

/// The per-pair loss from log-probs (scalars as tensors so gradients flow to the policy terms).
pub fn pair_loss(
    lp_chosen: &Tensor,
    lp_rejected: &Tensor,
    ref_chosen: f64,
    ref_rejected: f64,
    chosen_len: usize,
    weight: f64,
    config: &DpoConfig,
) -> Result<(Tensor, f64), TrainError> {
    let margin = ((lp_chosen - ref_chosen)? - (lp_rejected - ref_rejected)?)?;
    let logits = (margin * config.beta)?;
    let pref = neg_log_sigmoid(&logits)?;
    let nll = (lp_chosen.neg()? / chosen_len as f64)?;
    let loss = ((pref + (nll * config.ftx)?)? * weight)?;
    let reward_margin = logits
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok((loss, reward_margin))
}

impl ReferenceObjective for SftObjective {
    fn reference_loss(
        &self,
        model: &Llama,
        index: usize,
        dropout: &mut ChaCha8Rng,
    ) -> Result<Tensor, TrainError> {
        let e = &self.examples[index];
        let logp = sequence_log_prob(model, &e.prompt, &e.target, Some(dropout))?;
        Ok((logp.neg()? / e.target.len() as f64)?)
    }
}

impl ReferenceObjective for DpoObjective {
    fn reference_loss(
        &self,
        model: &Llama,
        index: usize,
        dropout: &mut ChaCha8Rng,
    ) -> Result<Tensor, TrainError> {
        let p = &self.pairs[index];
        let (ref_c, ref_r) = self.reference_of(index)?;
        let lp_c = sequence_log_prob(model, &p.prompt, &p.chosen, Some(&mut *dropout))?;
        let lp_r = sequence_log_prob(model, &p.prompt, &p.rejected, Some(dropout))?;
        let (loss, _) = pair_loss(
            &lp_c,
            &lp_r,
            ref_c,
            ref_r,
            p.chosen.len(),
            p.weight,
            &self.config,
        )?;
        Ok(loss)
    }
}

/// Trains the reference model as [`crate::trainer::train`] trains the fast one (the same data
/// order, dropout streams, schedule, clipping and AdamW; no checkpoints or logs): the loss and
/// gradient norm of every step.
pub fn train_reference(
    model: &mut Llama,
    objective: &dyn ReferenceObjective,
    config: &TrainerConfig,
) -> Result<Vec<(f64, f64)>, TrainError> {
    config.validate()?;
    let n = objective.len();
    if n == 0 {
        return Err(TrainError::Data("no examples to train on".into()));
    }
    model.reserve_positions(objective.max_len())?;
    let model = &*model;
    let (total_steps, total_examples, schedule) = steps_of(config, n);
    let mut optimizer = AdamW::new(config.adamw.clone(), model.trainable())?;
    let mut out = Vec::with_capacity(total_steps);
    let mut order: Option<(usize, Vec<usize>)> = None;
    for step in 0..total_steps {
        let mut dropout = step_dropout(config.seed, step);
        let first = step * config.batch_size;
        let last = ((step + 1) * config.batch_size).min(total_examples);
        let count = (last - first) as f64;
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut loss_sum = 0.0;
        for g in first..last {
            let epoch = g / n;
            if order.as_ref().map(|(e, _)| *e) != Some(epoch) {
                order = Some((epoch, epoch_order(n, config.seed, epoch)));
            }
            let index = order.as_ref().map(|(_, o)| o[g % n]).unwrap_or(0);
            let loss = objective.reference_loss(model, index, &mut dropout)?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            let grad_store = (loss / count)?.backward()?;
            for (name, var) in model.trainable() {
                if let Some(grad) = grad_store.get(var.as_tensor()) {
                    let sum = match grads.remove(name) {
                        Some(acc) => (acc + grad)?,
                        None => grad.clone(),
                    };
                    grads.insert(name.clone(), sum);
                }
            }
        }
        let norm = clip_grads(&mut grads, config.max_grad_norm)?;
        optimizer.step(model.trainable(), &grads, schedule.lr(step))?;
        out.push((loss_sum / count, norm));
    }
    Ok(out)
}
