//! The training loop shared by R-SFT and HS-DPO: seeded shuffling over epochs, gradient
//! accumulation, clipping, AdamW with a cosine schedule, JSONL logging with a progress line,
//! exact-resume checkpoints, and an SVG loss curve.
//!
//! Determinism: the example order of epoch `e` is a shuffle seeded by `(seed, e)` and LoRA
//! dropout at step `s` is seeded by `(seed, s)`, so the step number alone fixes the data position
//! and RNG state; a checkpoint stores it with the weights and optimiser moments.

use crate::fast::{FastAdamW, FastLlama, Grads};
use crate::model::{load_safetensors, save_safetensors, Llama};
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
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Where the weights and the optimiser state live during a run (one per run, so the size of
/// the variants does not matter).
#[allow(clippy::large_enum_variant)]
enum Backend<'a> {
    /// Models of other dtypes (f64 in tests): candle autograd and [`AdamW`] on the model's
    /// variables.
    Candle { model: &'a Llama, optimizer: AdamW },
    /// f32 models.
    Fast(Fast),
}

impl Backend<'_> {
    fn adam_t(&self) -> u64 {
        match self {
            Backend::Candle { optimizer, .. } => optimizer.t,
            Backend::Fast(f) => f.optimizer.t,
        }
    }

    fn load(&mut self, dir: &Path, adam_t: u64) -> Result<(), TrainError> {
        match self {
            Backend::Candle { model, optimizer } => load_checkpoint(dir, model, optimizer, adam_t),
            Backend::Fast(f) => f.load(dir, adam_t),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), TrainError> {
        match self {
            Backend::Candle { model, optimizer } => {
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
            Backend::Fast(f) => f.save(dir),
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
        let mut backend = Backend::Candle { model, optimizer };
        return run(&mut backend, objective, config, out_dir, options, &plan);
    }
    let fast = FastLlama::take_from_llama(model)?;
    let mut backend = Backend::Fast(Fast::new(fast, config.adamw.clone()));
    let result = run(&mut backend, objective, config, out_dir, options, &plan);
    let Backend::Fast(Fast {
        model: weights,
        grads,
        optimizer,
    }) = backend
    else {
        unreachable!("the fast backend stays fast");
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
    backend: &mut Backend,
    objective: &dyn Objective,
    config: &TrainerConfig,
    out_dir: &Path,
    options: &RunOptions,
    plan: &Plan,
) -> Result<TrainSummary, TrainError> {
    let (n, bs, total_steps) = (objective.len(), config.batch_size, plan.total_steps);
    let mut start = 0;
    if let Some((dir, step, adam_t)) = &plan.resume {
        backend.load(dir, *adam_t)?;
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
        if let Backend::Fast(f) = backend {
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
            let (value, example_tokens, example_metrics, loss) = match backend {
                Backend::Fast(f) => {
                    let out = objective.fast_loss(
                        &f.model,
                        index,
                        &mut dropout,
                        1.0 / count as f64,
                        &mut f.grads,
                    )?;
                    (out.loss, out.tokens, out.metrics, None)
                }
                Backend::Candle { model, .. } => {
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
            let (Some(loss), Backend::Candle { model, .. }) = (loss, &*backend) else {
                continue;
            };
            let store = (loss / count as f64)?.backward()?;
            for (name, var) in model.trainable() {
                if let Some(grad) = store.get(var.as_tensor()) {
                    let sum = match grads.remove(name) {
                        Some(acc) => (acc + grad)?,
                        None => grad.clone(),
                    };
                    grads.insert(name.clone(), sum);
                }
            }
        }
        let norm = match backend {
            Backend::Fast(f) => {
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
            Backend::Candle { model, optimizer } => {
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
                adam_t: backend.adam_t(),
                data_fingerprint: plan.fingerprint.clone(),
                config: config.clone(),
            };
            let dir = save_checkpoint(out_dir, backend, &state)?;
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

fn progress_line(r: &LogRecord, total: usize, tokens: usize, secs: f64) {
    let width = 30;
    let done = (r.step * width) / total.max(1);
    let bar: String = "#".repeat(done) + &".".repeat(width - done);
    let line = format!(
        "[{bar}] {}/{} loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s",
        r.step,
        total,
        r.loss,
        r.lr,
        r.grad_norm,
        tokens as f64 / secs.max(1e-9)
    );
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

fn rewrite_log(path: &Path, records: &[LogRecord]) -> Result<(), TrainError> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(|e| TrainError::Data(e.to_string()))?);
        text.push('\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

fn checkpoint_step(path: &Path) -> Option<usize> {
    path.file_name()?
        .to_str()?
        .strip_prefix("checkpoint-")?
        .parse()
        .ok()
}

/// The newest `checkpoint-N` directory in `out_dir`, if any.
pub fn latest_checkpoint(out_dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    if !out_dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(out_dir).map_err(|e| TrainError::io(out_dir, e))? {
        let path = entry.map_err(|e| TrainError::io(out_dir, e))?.path();
        if let Some(step) = checkpoint_step(&path).filter(|_| path.is_dir()) {
            if best.as_ref().is_none_or(|(s, _)| step > *s) {
                best = Some((step, path));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

fn prune_checkpoints(out_dir: &Path, keep: usize) -> Result<(), TrainError> {
    if keep == 0 {
        return Ok(());
    }
    let mut all: Vec<(usize, PathBuf)> = std::fs::read_dir(out_dir)
        .map_err(|e| TrainError::io(out_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| checkpoint_step(&p).filter(|_| p.is_dir()).map(|s| (s, p)))
        .collect();
    all.sort();
    while all.len() > keep {
        let (_, p) = all.remove(0);
        std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
    }
    Ok(())
}

fn save_checkpoint(
    out_dir: &Path,
    backend: &Backend,
    state: &TrainerState,
) -> Result<PathBuf, TrainError> {
    let dir = out_dir.join(format!("checkpoint-{}", state.step));
    let tmp = out_dir.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    backend.save(&tmp)?;
    let state_path = tmp.join("trainer_state.json");
    let text = serde_json::to_string_pretty(state).map_err(|e| TrainError::Data(e.to_string()))?;
    std::fs::write(&state_path, text).map_err(|e| TrainError::io(&state_path, e))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io(&dir, e))?;
    Ok(dir)
}

fn read_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("trainer_state.json: {e}"),
    })
}

fn load_checkpoint(
    dir: &Path,
    model: &Llama,
    optimizer: &mut AdamW,
    adam_t: u64,
) -> Result<(), TrainError> {
    let bad = |message: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message,
    };
    let params = load_safetensors(&dir.join(PARAMS_FILE))?;
    let moments = load_safetensors(&dir.join(MOMENTS_FILE))?;
    if params.len() != model.trainable().len() {
        return Err(bad(format!(
            "holds {} trainable tensors, the model has {}",
            params.len(),
            model.trainable().len()
        )));
    }
    for (name, var) in model.trainable() {
        let fetch = |map: &BTreeMap<String, Tensor>, key: &str| -> Result<Tensor, TrainError> {
            let t = map
                .get(key)
                .ok_or_else(|| bad(format!("missing tensor {key}")))?;
            if t.dims() != var.dims() {
                return Err(bad(format!(
                    "tensor {key} has shape {:?}, the model's is {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            Ok(t.to_dtype(var.dtype())?)
        };
        var.set(&fetch(&params, name)?)?;
        optimizer
            .m
            .insert(name.clone(), fetch(&moments, &format!("m/{name}"))?);
        optimizer
            .v
            .insert(name.clone(), fetch(&moments, &format!("v/{name}"))?);
    }
    optimizer.t = adam_t;
    Ok(())
}

/// Steps averaged by the loss curve's smoothed line.
const LOSS_WINDOW: usize = 10;

/// The loss per step and, over longer runs, its trailing mean over [`LOSS_WINDOW`] steps (one
/// step's loss is noisy: eight records, some with short targets).
fn loss_lines(points: Vec<(f64, f64)>) -> Vec<guardreasoner_plot::Line> {
    let smoothed: Vec<(f64, f64)> = points
        .windows(LOSS_WINDOW)
        .map(|w| {
            let mean = w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64;
            (w[w.len() - 1].0, mean)
        })
        .collect();
    let mut lines = vec![guardreasoner_plot::Line {
        name: "loss".to_string(),
        points,
        markers: false,
    }];
    if smoothed.len() >= LOSS_WINDOW {
        lines.push(guardreasoner_plot::Line {
            name: format!("mean of the last {LOSS_WINDOW} steps"),
            points: smoothed,
            markers: false,
        });
    }
    lines
}

/// Writes the loss per step as a line chart, `<stem>.svg` and `<stem>.png`.
pub fn write_loss_curve(log: &[LogRecord], stem: &Path) -> Result<(), TrainError> {
    let points: Vec<(f64, f64)> = log
        .iter()
        .filter(|r| r.loss.is_finite())
        .map(|r| (r.step as f64, r.loss))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let chart = guardreasoner_plot::LineChart {
        title: "training loss (mean over each step's output tokens)".to_string(),
        x_label: "optimiser step".to_string(),
        y_label: "loss".to_string(),
        x_range: None,
        y_range: None,
        lines: loss_lines(points),
        diagonal: false,
    };
    guardreasoner_plot::Chart::from(chart)
        .write(stem)
        .map(|_| ())
        .map_err(|e| TrainError::Format {
            path: stem.to_path_buf(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_curve_adds_a_trailing_mean_over_longer_runs() {
        let points: Vec<(f64, f64)> = (1..=30).map(|i| (i as f64, (i % 2) as f64)).collect();
        let lines = loss_lines(points[..15].to_vec());
        assert_eq!(lines.len(), 1, "too short to smooth");
        let lines = loss_lines(points);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].points.len(), 21);
        assert_eq!(lines[1].points[0], (10.0, 0.5));
    }
}
