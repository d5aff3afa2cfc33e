//! The training loop shared by R-SFT and HS-DPO: seeded shuffling over epochs, gradient
//! accumulation, clipping, AdamW with a cosine schedule, JSONL logging with a progress line,
//! exact-resume checkpoints, and an SVG loss curve.
//!
//! Determinism: the example order of epoch `e` is a shuffle seeded by `(seed, e)` and LoRA
//! dropout at step `s` is seeded by `(seed, s)`, so the step number alone fixes the data position
//! and RNG state; a checkpoint stores it with the weights and optimiser moments.

use crate::fast::{FastAdamW, FastLlama, Grads};
use crate::model::{save_safetensors, Llama};
use crate::optim::{clip_grads, AdamW, AdamWConfig, CosineSchedule};
use crate::st;
use crate::TrainError;
use candle_core::{DType, Tensor};
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
use checkpoint::{load_checkpoint, prune_checkpoints, read_state, save_checkpoint};
pub use log::write_loss_curve;
use log::{progress_line, rewrite_log};

/// The loss of one example and what to log about it.
pub struct ExampleLoss {
    /// Scalar loss tensor (with a graph to the trainable parameters).
    pub loss: Tensor,
    /// Tokens processed (for tokens/s).
    pub tokens: usize,
    /// Extra scalars averaged into the step's log record (e.g. DPO margins).
    pub metrics: BTreeMap<String, f64>,
}

/// The loss of one example on the fast path (its gradient is already accumulated).
pub struct FastExampleLoss {
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
    /// Loss of example `index`; `dropout` seeds LoRA dropout.
    fn loss(
        &self,
        model: &Llama,
        index: usize,
        dropout: &mut ChaCha8Rng,
    ) -> Result<ExampleLoss, TrainError>;
    /// The same loss on the fast path: adds `scale` times its gradient to `grads`. Must draw
    /// from `dropout` exactly as [`Objective::loss`] does, so both paths train alike.
    fn fast_loss(
        &self,
        model: &FastLlama,
        index: usize,
        dropout: &mut ChaCha8Rng,
        scale: f64,
        grads: &mut Grads,
    ) -> Result<FastExampleLoss, TrainError>;
}

/// The fast path's state: the f32 weights, moved out of the candle model (which holds no copy of
/// them while training runs), gradients and AdamW moments. Checkpoints are written from and
/// read into these buffers directly.
struct Fast {
    model: FastLlama,
    grads: Grads,
    optimizer: FastAdamW,
}

impl Fast {
    fn new(model: FastLlama, config: AdamWConfig) -> Self {
        Fast {
            grads: model.zero_grads(),
            optimizer: FastAdamW::new(config, &model),
            model,
        }
    }

    /// Reads a checkpoint's weights and moments into the buffers. Every tensor's presence and
    /// shape is checked before any is read.
    fn load(&mut self, dir: &Path, adam_t: u64) -> Result<(), TrainError> {
        let bad = |message: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            message,
        };
        let mut params = st::Reader::open(&dir.join(PARAMS_FILE))?;
        let mut moments = st::Reader::open(&dir.join(MOMENTS_FILE))?;
        let names = self.model.trainable_names();
        let shapes = self.model.trainable_shapes();
        if params.tensors().len() != names.len() {
            return Err(bad(format!(
                "holds {} trainable tensors, the model has {}",
                params.tensors().len(),
                names.len()
            )));
        }
        for (name, shape) in names.iter().zip(&shapes) {
            for (file, key) in [
                (&params, name.clone()),
                (&moments, format!("m/{name}")),
                (&moments, format!("v/{name}")),
            ] {
                let info = file
                    .tensors()
                    .get(&key)
                    .ok_or_else(|| bad(format!("missing tensor {key}")))?;
                if info.shape != *shape {
                    return Err(bad(format!(
                        "tensor {key} has shape {:?}, the model's is {shape:?}",
                        info.shape
                    )));
                }
            }
        }
        let weights = self.model.trainable_mut();
        for (((name, w), m), v) in names
            .iter()
            .zip(weights)
            .zip(&mut self.optimizer.m)
            .zip(&mut self.optimizer.v)
        {
            params.read_f32(name, w)?;
            moments.read_f32(&format!("m/{name}"), m)?;
            moments.read_f32(&format!("v/{name}"), v)?;
        }
        self.optimizer.t = adam_t;
        Ok(())
    }

    /// Writes the weights and moments into checkpoint directory `dir`, straight from the
    /// buffers (one tensor's bytes at a time).
    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        let names = self.model.trainable_names();
        let shapes = self.model.trainable_shapes();
        fn entries<'a>(
            prefix: &str,
            names: &[String],
            shapes: &[Vec<usize>],
            buffers: Vec<&'a [f32]>,
        ) -> Vec<st::Entry<'a>> {
            names
                .iter()
                .zip(shapes)
                .zip(buffers)
                .map(|((n, s), b)| st::Entry {
                    name: format!("{prefix}{n}"),
                    shape: s.clone(),
                    data: st::Payload::F32(b),
                })
                .collect()
        }
        let params = entries("", &names, &shapes, self.model.trainable());
        st::write(&dir.join(PARAMS_FILE), &params)?;
        let m = self.optimizer.m.iter().map(Vec::as_slice).collect();
        let v = self.optimizer.v.iter().map(Vec::as_slice).collect();
        let mut moments = entries("m/", &names, &shapes, m);
        moments.extend(entries("v/", &names, &shapes, v));
        st::write(&dir.join(MOMENTS_FILE), &moments)
    }
}

/// Where the trainable weights and the optimiser state live during a run (one per run, so the size of
/// the variants does not matter).
#[allow(clippy::large_enum_variant)]
enum ParamStore<'a> {
    /// Models of other dtypes (f64 in tests): candle autograd and [`AdamW`] on the model's
    /// variables.
    Candle { model: &'a Llama, optimizer: AdamW },
    /// f32 models.
    Fast(Fast),
}

impl ParamStore<'_> {
    fn adam_t(&self) -> u64 {
        match self {
            ParamStore::Candle { optimizer, .. } => optimizer.t,
            ParamStore::Fast(f) => f.optimizer.t,
        }
    }

    fn load(&mut self, dir: &Path, adam_t: u64) -> Result<(), TrainError> {
        match self {
            ParamStore::Candle { model, optimizer } => {
                load_checkpoint(dir, model, optimizer, adam_t)
            }
            ParamStore::Fast(f) => f.load(dir, adam_t),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        match self {
            ParamStore::Candle { model, optimizer } => {
                let params: BTreeMap<String, Tensor> = model
                    .trainable()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                    .collect();
                save_safetensors(&params, &dir.join(PARAMS_FILE))?;
                let mut moments = BTreeMap::new();
                for (k, m) in &optimizer.m {
                    moments.insert(format!("m/{k}"), m.clone());
                }
                for (k, v) in &optimizer.v {
                    moments.insert(format!("v/{k}"), v.clone());
                }
                save_safetensors(&moments, &dir.join(MOMENTS_FILE))
            }
            ParamStore::Fast(f) => f.save(dir),
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

    fn validate(&self) -> Result<(), TrainError> {
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

fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
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
///
/// f32 models train on the fast path: their weights move into its buffers for the run (the
/// model holds none meanwhile, so the process keeps one copy) and move back at the end, also
/// when training fails.
pub fn train(
    model: &mut Llama,
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
    model.reserve_positions(objective.max_len())?;
    let n = objective.len();
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
    if model.dtype() != DType::F32 {
        let optimizer = AdamW::new(config.adamw.clone(), model.trainable())?;
        let mut store = ParamStore::Candle { model, optimizer };
        return run(&mut store, objective, config, out_dir, options, &plan);
    }
    let fast = FastLlama::take_from_llama(model)?;
    let mut store = ParamStore::Fast(Fast::new(fast, config.adamw.clone()));
    let result = run(&mut store, objective, config, out_dir, options, &plan);
    let ParamStore::Fast(Fast {
        model: weights,
        grads,
        optimizer,
    }) = store
    else {
        unreachable!("the fast store stays fast");
    };
    // Gradients and moments go first, so the weights move back without another copy beside.
    drop((grads, optimizer));
    let restored = weights.restore_llama(model);
    let summary = result?;
    restored?;
    Ok(summary)
}

/// The training loop proper, from the resumed step (if any) to the end or the stop step.
fn run(
    store: &mut ParamStore,
    objective: &dyn Objective,
    config: &TrainerConfig,
    out_dir: &Path,
    options: &RunOptions,
    plan: &Plan,
) -> Result<TrainSummary, TrainError> {
    let (n, bs, total_steps) = (objective.len(), config.batch_size, plan.total_steps);
    let mut start = 0;
    if let Some((dir, step, adam_t)) = &plan.resume {
        store.load(dir, *adam_t)?;
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
        let mut dropout = ChaCha8Rng::seed_from_u64(
            config.seed ^ (step as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let first = step * bs;
        let last = ((step + 1) * bs).min(plan.total_examples);
        let count = last - first;
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        if let ParamStore::Fast(f) = store {
            f.grads.zero();
        }
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let mut metrics: BTreeMap<String, f64> = BTreeMap::new();
        for g in first..last {
            let epoch = g / n;
            if order.as_ref().map(|(e, _)| *e) != Some(epoch) {
                order = Some((epoch, epoch_order(n, config.seed, epoch)));
            }
            let index = order.as_ref().map(|(_, o)| o[g % n]).unwrap_or(0);
            let (value, example_tokens, example_metrics, loss) = match store {
                ParamStore::Fast(f) => {
                    let out = objective.fast_loss(
                        &f.model,
                        index,
                        &mut dropout,
                        1.0 / count as f64,
                        &mut f.grads,
                    )?;
                    (out.loss, out.tokens, out.metrics, None)
                }
                ParamStore::Candle { model, .. } => {
                    let out = objective.loss(model, index, &mut dropout)?;
                    let value = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    (value, out.tokens, out.metrics, Some(out.loss))
                }
            };
            if !value.is_finite() {
                return Err(TrainError::Model(format!(
                    "loss is {value} at step {} (example {index})",
                    step + 1
                )));
            }
            loss_sum += value;
            tokens += example_tokens;
            for (k, v) in example_metrics {
                *metrics.entry(k).or_default() += v / count as f64;
            }
            let (Some(loss), ParamStore::Candle { model, .. }) = (loss, &*store) else {
                continue;
            };
            let grad_store = (loss / count as f64)?.backward()?;
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
        let norm = match store {
            ParamStore::Fast(f) => {
                // PyTorch's clip_grad_norm_, folded into the update.
                let norm = f.grads.norm();
                let factor = if config.max_grad_norm > 0.0 && norm > config.max_grad_norm {
                    config.max_grad_norm / (norm + 1e-6)
                } else {
                    1.0
                };
                f.optimizer.step(&mut f.model, &f.grads, lr, factor);
                norm
            }
            ParamStore::Candle { model, optimizer } => {
                let norm = clip_grads(&mut grads, config.max_grad_norm)?;
                optimizer.step(model.trainable(), &grads, lr)?;
                norm
            }
        };
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
            let state = TrainerState {
                step,
                total_steps,
                adam_t: store.adam_t(),
                data_fingerprint: plan.fingerprint.clone(),
                config: config.clone(),
            };
            let dir = save_checkpoint(out_dir, store, &state)?;
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
