//! AdamW over flat buffers, fused and in place.

use super::*;

/// AdamW (decoupled weight decay, PyTorch's formulation) over flat buffers, fused and in place;
/// the clipping factor is folded into the update.
pub struct FastAdamW {
    pub config: AdamWConfig,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub t: u64,
    /// Whether weight decay applies to each parameter (not to norm weights).
    pub decay: Vec<bool>,
}

impl FastAdamW {
    /// Zero moments for the model's trainable parameters.
    pub fn new(config: AdamWConfig, model: &FastLlama) -> Self {
        let g = model.zero_grads();
        let decay = model.trainable_names().iter().map(|n| decays(n)).collect();
        FastAdamW {
            config,
            m: g.tensors.clone(),
            v: g.tensors,
            t: 0,
            decay,
        }
    }

    /// One update: `grads` are multiplied by `grad_scale` (clipping) before use.
    pub fn step(&mut self, model: &mut FastLlama, grads: &Grads, lr: f64, grad_scale: f64) {
        self.t += 1;
        let c = &self.config;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let (bc1, bc2) = (bc1 as f32, bc2 as f32);
        let (lr32, gs) = (lr as f32, grad_scale as f32);
        let wd = c.weight_decay;
        let params = model.trainable_mut();
        let chunk = 1 << 15;
        params
            .into_iter()
            .zip(&grads.tensors)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            .zip(&self.decay)
            .for_each(|(((p, g), (m, v)), &decay)| {
                let shrink = if wd > 0.0 && decay {
                    (1.0 - lr * wd) as f32
                } else {
                    1.0
                };
                p.par_chunks_mut(chunk)
                    .zip(g.par_chunks(chunk))
                    .zip(m.par_chunks_mut(chunk).zip(v.par_chunks_mut(chunk)))
                    .for_each(|((p, g), (m, v))| {
                        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                            let g = g * gs;
                            *m = b1 * *m + (1.0 - b1) * g;
                            *v = b2 * *v + (1.0 - b2) * g * g;
                            let update = (*m / bc1) / ((*v / bc2).sqrt() + eps);
                            *p = *p * shrink - lr32 * update;
                        }
                    });
            });
    }
}
