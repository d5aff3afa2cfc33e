//! The optimiser's settings (AdamW with decoupled weight decay, Loshchilov & Hutter; PyTorch's
//! `AdamW`, run fused in [`crate::fast::FastAdamW`]) and the cosine schedule with linear warmup
//! (Hugging Face's `get_cosine_schedule_with_warmup`).

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

/// Whether weight decay applies (as the HF Trainer: not to norm weights or biases).
pub fn decays(name: &str) -> bool {
    !(name.ends_with("norm.weight") || name.ends_with(".bias"))
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
