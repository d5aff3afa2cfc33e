//! The training loop shared by R-SFT and HS-DPO: seeded shuffling over epochs, gradient
//! accumulation, clipping, AdamW with a cosine schedule, JSONL logging with a progress line,
//! exact-resume checkpoints, and an SVG loss curve.
//!
//! Determinism: the example order of epoch `e` is a shuffle seeded by `(seed, e)` and LoRA
//! dropout at step `s` is seeded by `(seed, s)`, so the step number alone fixes the data position
//! and RNG state; a checkpoint stores it with the weights and optimiser moments.

use crate::fast::{FastAdamW, FastLlama, Grads};
use crate::optim::{AdamWConfig, CosineSchedule};
use crate::TrainError;
use guardreasoner_core::jsonl::JsonlAppender;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod checkpoint;
mod log;

pub use checkpoint::latest_checkpoint;
use checkpoint::{prune_checkpoints, read_state, save_checkpoint};
pub use log::write_loss_curve;
use log::{progress_line, rewrite_log};

/// The loss of one example (its gradient already accumulated) and what to log about it.
pub struct ExampleLoss {
    pub loss: f64,
    /// Tokens processed (for tokens/s).
    pub tokens: usize,
    /// Extra scalars averaged into the step's log record (e.g. DPO margins).
    pub metrics: BTreeMap<String, f64>,
}

/// What is being optimised over a fixed set of examples.
pub trait Objective {
    /// Number of examples.
    fn len(&self) -> usize;
    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Identifies the data (resume refuses a different fingerprint).
    fn fingerprint(&self) -> String;
    /// Longest token sequence the objective will feed the model.
    fn max_len(&self) -> usize;
    /// Loss of example `index`, adding `scale` times its gradient to `grads`; `dropout`
    /// draws the LoRA dropout masks (the candle reference draws the same, in the same order).
    fn loss(
        &self,
        model: &FastLlama,
        index: usize,
        dropout: &mut ChaCha8Rng,
        scale: f64,
        grads: &mut Grads,
    ) -> Result<ExampleLoss, TrainError>;
}

/// A run's state: the model's f32 weights, gradients and AdamW moments. Checkpoints are written
/// from and read into these buffers directly.
struct State<'a> {
    model: &'a mut FastLlama,
    grads: Grads,
    optimizer: FastAdamW,
}

impl<'a> State<'a> {
    fn new(model: &'a mut FastLlama, config: AdamWConfig) -> Self {
        State {
            grads: model.zero_grads(),
            optimizer: FastAdamW::new(config, model),
            model,
        }
    }
}

const PARAMS_FILE: &str = "trainable.safetensors";
const MOMENTS_FILE: &str = "optimizer.safetensors";

/// Hyperparameters of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    pub learning_rate: f64,
    /// Fraction of steps with linear warmup (the paper: 0).
    pub warmup_ratio: f64,
    pub epochs: usize,
    /// Stops after this many optimiser steps instead of `epochs` (the stream wraps over epochs).
    pub max_steps: Option<usize>,
    /// Examples per optimiser step (per-device batch x accumulation x devices).
    pub batch_size: usize,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub adamw: AdamWConfig,
    /// Save a checkpoint every this many steps (and always at the end).
    pub save_steps: Option<usize>,
    /// Keep only this many newest checkpoints (0 keeps all).
    pub save_total_limit: usize,
}

impl TrainerConfig {
    /// The paper's R-SFT hyperparameters (lr 5e-5, 3 epochs, effective batch 384 = 6 per device
    /// x 16 accumulation x 4 GPUs, cosine, no warmup, clipping 1.0, AdamW without weight decay;
    /// cutoff 2048 is a data setting).
    pub fn paper_sft() -> Self {
        TrainerConfig {
            learning_rate: 5e-5,
            warmup_ratio: 0.0,
            epochs: 3,
            max_steps: None,
            batch_size: 384,
            max_grad_norm: 1.0,
            seed: 42,
            adamw: AdamWConfig::default(),
            save_steps: Some(100),
            save_total_limit: 2,
        }
    }

    /// The paper's HS-DPO hyperparameters (lr 5e-6, 2 epochs, effective batch 256 = 1 x 64
    /// accumulation x 4 GPUs in the official scripts; beta 0.01 and ftx 2.0 live in
    /// [`crate::dpo::DpoConfig`]).
    pub fn paper_dpo() -> Self {
        TrainerConfig {
            learning_rate: 5e-6,
            epochs: 2,
            batch_size: 256,
            ..Self::paper_sft()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), TrainError> {
        if self.batch_size == 0 {
            return Err(TrainError::Config("batch size must be positive".into()));
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return Err(TrainError::Config("need epochs > 0 or max steps".into()));
        }
        if self.learning_rate.is_nan()
            || self.learning_rate <= 0.0
            || !(0.0..1.0).contains(&self.warmup_ratio)
        {
            return Err(TrainError::Config(
                "learning rate must be positive and warmup ratio in [0, 1)".into(),
            ));
        }
        Ok(())
    }
}

/// Whether and from where to resume.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Start from step 0 (an existing log in the output directory is replaced).
    No,
    /// Resume from the newest `checkpoint-N` in the output directory, if any.
    Latest,
    /// Resume from this checkpoint directory.
    From(PathBuf),
}

/// Options that do not change the result of training.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop (after checkpointing) once this step is reached, as if interrupted.
    pub stop_at_step: Option<usize>,
    /// Show a progress line on stderr.
    pub progress: bool,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// Saved next to the tensors of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    adam_t: u64,
    data_fingerprint: String,
    config: TrainerConfig,
}

/// The result of [`train`].
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Step reached (== total steps unless stopped early).
    pub step: usize,
    pub total_steps: usize,
    /// The log records of this output directory, from step 1.
    pub log: Vec<LogRecord>,
    pub last_checkpoint: Option<PathBuf>,
}

/// File names inside the output directory.
pub const LOG_FILE: &str = "train_log.jsonl";
/// The loss curve, `loss_curve.svg` and `loss_curve.png`.
pub const CURVE_STEM: &str = "loss_curve";
pub const CURVE_FILE: &str = "loss_curve.svg";

/// The example order of `epoch`.
pub(crate) fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// The RNG of step `step`'s LoRA dropout masks.
pub(crate) fn step_dropout(seed: u64, step: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (step as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// The factor PyTorch's `clip_grad_norm_` scales gradients of global norm `norm` by.
pub(crate) fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

/// Optimiser steps, examples seen and the learning-rate schedule of a run over `n` examples.
pub(crate) fn steps_of(config: &TrainerConfig, n: usize) -> (usize, usize, CosineSchedule) {
    let bs = config.batch_size;
    let (total_steps, total_examples) = match config.max_steps {
        Some(s) => (s, s * bs),
        None => {
            let ex = config.epochs * n;
            (ex.div_ceil(bs), ex)
        }
    };
    let schedule = CosineSchedule {
        base_lr: config.learning_rate,
        warmup_steps: (config.warmup_ratio * total_steps as f64).ceil() as usize,
        total_steps,
    };
    (total_steps, total_examples, schedule)
}

/// What a run does, fixed before it starts.
struct Plan {
    total_steps: usize,
    total_examples: usize,
    schedule: CosineSchedule,
    fingerprint: String,
    /// The checkpoint resumed from, its step and its AdamW step count.
    resume: Option<(PathBuf, usize, u64)>,
}

/// Trains `model` on `objective`, writing logs and checkpoints under `out_dir`.
pub fn train(
    model: &mut FastLlama,
    objective: &dyn Objective,
    config: &TrainerConfig,
    out_dir: &Path,
    resume: Resume,
    options: &RunOptions,
) -> Result<TrainSummary, TrainError> {
    config.validate()?;
    if objective.is_empty() {
        return Err(TrainError::Data("no examples to train on".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let (total_steps, total_examples, schedule) = steps_of(config, objective.len());
    let fingerprint = objective.fingerprint();
    let checkpoint = match resume {
        Resume::No => None,
        Resume::Latest => latest_checkpoint(out_dir)?,
        Resume::From(p) => Some(p),
    };
    let mut plan = Plan {
        total_steps,
        total_examples,
        schedule,
        fingerprint,
        resume: None,
    };
    if let Some(dir) = checkpoint {
        // Check compatibility before touching the model's weights.
        let state = read_state(&dir)?;
        if state.data_fingerprint != plan.fingerprint {
            return Err(TrainError::Checkpoint {
                path: dir.clone(),
                message: format!(
                    "it was trained on different data (fingerprint {}, current data {}); refusing to resume",
                    state.data_fingerprint, plan.fingerprint
                ),
            });
        }
        if state.config != *config || state.total_steps != total_steps {
            return Err(TrainError::Checkpoint {
                path: dir.clone(),
                message: "its training configuration differs from this run's; resuming would not reproduce the run".into(),
            });
        }
        plan.resume = Some((dir, state.step, state.adam_t));
    }
    let mut state = State::new(model, config.adamw.clone());
    run(&mut state, objective, config, out_dir, options, &plan)
}

/// The training loop proper, from the resumed step (if any) to the end or the stop step.
fn run(
    state: &mut State,
    objective: &dyn Objective,
    config: &TrainerConfig,
    out_dir: &Path,
    options: &RunOptions,
    plan: &Plan,
) -> Result<TrainSummary, TrainError> {
    let (n, bs, total_steps) = (objective.len(), config.batch_size, plan.total_steps);
    let mut start = 0;
    if let Some((dir, step, adam_t)) = &plan.resume {
        state.load(dir, *adam_t)?;
        start = *step;
    }
    let checkpoint = plan.resume.as_ref().map(|(dir, _, _)| dir.clone());
    // The log keeps the records up to the resumed step; later ones are redone.
    let log_path = out_dir.join(LOG_FILE);
    let mut log: Vec<LogRecord> = if checkpoint.is_some() && log_path.exists() {
        let (_, records) = JsonlAppender::open::<LogRecord>(&log_path)?;
        records.into_iter().filter(|r| r.step <= start).collect()
    } else {
        Vec::new()
    };
    rewrite_log(&log_path, &log)?;
    let (mut appender, _) = JsonlAppender::open::<LogRecord>(&log_path)?;

    let mut order: Option<(usize, Vec<usize>)> = None;
    let mut last_checkpoint = checkpoint;
    let started = Instant::now();
    let mut tokens_since_start = 0usize;
    let mut step = start;
    while step < total_steps {
        let step_started = Instant::now();
        let lr = plan.schedule.lr(step);
        let mut dropout = step_dropout(config.seed, step);
        let first = step * bs;
        let last = ((step + 1) * bs).min(plan.total_examples);
        let count = last - first;
        state.grads.zero();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let mut metrics: BTreeMap<String, f64> = BTreeMap::new();
        for g in first..last {
            let epoch = g / n;
            if order.as_ref().map(|(e, _)| *e) != Some(epoch) {
                order = Some((epoch, epoch_order(n, config.seed, epoch)));
            }
            let index = order.as_ref().map(|(_, o)| o[g % n]).unwrap_or(0);
            let out = objective.loss(
                state.model,
                index,
                &mut dropout,
                1.0 / count as f64,
                &mut state.grads,
            )?;
            if !out.loss.is_finite() {
                return Err(TrainError::Model(format!(
                    "loss is {} at step {} (example {index})",
                    out.loss,
                    step + 1
                )));
            }
            loss_sum += out.loss;
            tokens += out.tokens;
            for (k, v) in out.metrics {
                *metrics.entry(k).or_default() += v / count as f64;
            }
        }
        // PyTorch's clip_grad_norm_, folded into the update.
        let norm = state.grads.norm();
        let factor = clip_factor(norm, config.max_grad_norm);
        state.optimizer.step(state.model, &state.grads, lr, factor);
        step += 1;
        tokens_since_start += tokens;
        let elapsed = step_started.elapsed().as_secs_f64().max(1e-9);
        let record = LogRecord {
            step,
            epoch: last as f64 / n as f64,
            loss: loss_sum / count as f64,
            lr,
            grad_norm: norm,
            tokens,
            tokens_per_s: tokens as f64 / elapsed,
            metrics,
        };
        appender.append(&record)?;
        if options.progress {
            progress_line(
                &record,
                total_steps,
                tokens_since_start,
                started.elapsed().as_secs_f64(),
            );
        }
        log.push(record);
        let stop = options.stop_at_step == Some(step);
        let periodic = config.save_steps.is_some_and(|s| s > 0 && step % s == 0);
        if periodic || stop || step == total_steps {
            appender.sync()?;
            let trainer_state = TrainerState {
                step,
                total_steps,
                adam_t: state.optimizer.t,
                data_fingerprint: plan.fingerprint.clone(),
                config: config.clone(),
            };
            let dir = save_checkpoint(out_dir, state, &trainer_state)?;
            prune_checkpoints(out_dir, config.save_total_limit)?;
            last_checkpoint = Some(dir);
        }
        if stop {
            break;
        }
    }
    if options.progress {
        eprintln!();
    }
    write_loss_curve(&log, &out_dir.join(CURVE_STEM))?;
    Ok(TrainSummary {
        step,
        total_steps,
        log,
        last_checkpoint,
    })
}
