//! AdamW with decoupled weight decay (Loshchilov & Hutter; PyTorch's `AdamW`) and the cosine
//! schedule with linear warmup (Hugging Face's `get_cosine_schedule_with_warmup`).

use crate::TrainError;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;

/// AdamW hyperparameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW state: first and second moments per parameter name, and the update count.
pub struct AdamW {
    pub config: AdamWConfig,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
    pub t: u64,
}

/// Whether weight decay applies (as the HF Trainer: not to norm weights or biases).
pub fn decays(name: &str) -> bool {
    !(name.ends_with("norm.weight") || name.ends_with(".bias"))
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(config: AdamWConfig, params: &BTreeMap<String, Var>) -> Result<Self, TrainError> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, p) in params {
            m.insert(name.clone(), p.as_tensor().zeros_like()?);
            v.insert(name.clone(), p.as_tensor().zeros_like()?);
        }
        Ok(AdamW { config, m, v, t: 0 })
    }

    /// One update with learning rate `lr`; `grads` by parameter name (already clipped).
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<(), TrainError> {
        self.t += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (name, p) in params {
            let Some(g) = grads.get(name) else { continue };
            let (Some(m), Some(v)) = (self.m.get_mut(name), self.v.get_mut(name)) else {
                return Err(TrainError::Model(format!("no optimiser state for {name}")));
            };
            *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
            let mut value = p.as_tensor().detach();
            if c.weight_decay > 0.0 && decays(name) {
                value = (value * (1.0 - lr * c.weight_decay))?;
            }
            p.set(&(value - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Learning-rate schedule: linear warmup then cosine decay to zero.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CosineSchedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl CosineSchedule {
    /// The learning rate for update number `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = (step - self.warmup_steps) as f64 / span as f64;
        self.base_lr * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
    }
}

/// Global L2 norm of `grads`.
pub fn grad_norm(grads: &BTreeMap<String, Tensor>) -> Result<f64, TrainError> {
    let mut total = 0.0;
    for g in grads.values() {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(total.sqrt())
}

/// Scales `grads` so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`);
/// returns the norm before clipping.
pub fn clip_grads(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64, TrainError> {
    let norm = grad_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}
