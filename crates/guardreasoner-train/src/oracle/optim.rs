//! AdamW and gradient clipping on candle tensors (the reference for the fused f32 optimiser).

use crate::optim::{decays, AdamWConfig};
use crate::TrainError;
use candle_core::{Tensor, Var};
use std::collections::BTreeMap;

/// AdamW state: first and second moments per parameter name, and the update count.
pub struct AdamW {
    pub config: AdamWConfig,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
    pub t: u64,
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
    let factor = crate::trainer::clip_factor(norm, max_norm);
    if factor != 1.0 {
        for g in grads.values_mut() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}
