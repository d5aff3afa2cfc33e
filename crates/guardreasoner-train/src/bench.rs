//! One training step of a randomly initialised LLaMA with SmolLM2-135M shapes on the fast path,
//! shaped like the PyTorch anchor (`../shared/bench/torch_train_anchor.py`): f32, loss over all
//! positions (mean cross-entropy), forward + backward + AdamW (lr 1e-5, weight decay 0.01 as
//! `torch.optim.AdamW`'s default), optionally with rank-R LoRA on every projection.

use crate::fast::{Dims, FastAdamW, FastLlama};
use crate::optim::AdamWConfig;
use crate::TrainError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub seq: usize,
    pub batch: usize,
    pub steps: usize,
    pub threads: usize,
    /// LoRA rank (0: full fine-tuning).
    pub lora: usize,
}

/// Mean seconds per phase over the steps after the first, and peak memory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub engine: String,
    pub seq: usize,
    pub batch: usize,
    pub lora: usize,
    pub trainable_params: usize,
    pub threads: usize,
    pub fwd_s: f64,
    pub bwd_s: f64,
    pub adamw_s: f64,
    pub step_s: f64,
    pub tokens_per_s: f64,
    pub peak_rss_mib: f64,
}

/// SmolLM2-135M's shapes (30 layers, hidden 576, 9 heads, 3 KV heads, intermediate 1536,
/// vocabulary 49152, tied embeddings, RoPE theta 100000).
pub fn smollm2_135m() -> Dims {
    let mut c = crate::model::Config::tiny(49152, 576, 1536, 30, 9, 3, true);
    c.rope_theta = 100_000.0;
    Dims::from_config(&c)
}

/// Peak resident memory of this process (VmHWM), MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs the benchmark on a pool of `threads` workers; `progress` gets one line per step.
pub fn run(
    config: &BenchConfig,
    mut progress: impl FnMut(&str) + Send,
) -> Result<BenchResult, TrainError> {
    if config.seq == 0 || config.batch == 0 || config.steps == 0 || config.threads == 0 {
        return Err(TrainError::Config(
            "seq, batch, steps and threads must be positive".into(),
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()
        .map_err(|e| TrainError::Config(e.to_string()))?;
    pool.install(|| {
        let dims = smollm2_135m();
        let lora = (config.lora > 0).then_some((config.lora, config.lora as f32));
        let mut model = FastLlama::random(dims, 0.02, 0, lora);
        let adamw = AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        };
        let mut opt = FastAdamW::new(adamw, &model);
        let mut grads = model.zero_grads();
        let trainable_params = grads.tensors.iter().map(Vec::len).sum();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let batch: Vec<Vec<u32>> = (0..config.batch)
            .map(|_| {
                (0..=config.seq)
                    .map(|_| rng.random_range(100..49000))
                    .collect()
            })
            .collect();
        let scale = -1.0 / (config.seq * config.batch) as f32;
        let mut rows = Vec::new();
        for step in 0..config.steps {
            let t = Instant::now();
            let mut tapes = Vec::new();
            let mut loss = 0.0;
            for ids in &batch {
                let (lp, tape) = model.forward(&ids[..config.seq], 0, &ids[1..], None)?;
                loss += lp.iter().map(|&x| -(x as f64)).sum::<f64>();
                tapes.push(tape);
            }
            let f = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for tape in tapes {
                model.backward(tape, &vec![scale; config.seq], &mut grads)?;
            }
            let b = t.elapsed().as_secs_f64();
            let t = Instant::now();
            opt.step(&mut model, &grads, 1e-5, 1.0);
            grads.zero();
            let o = t.elapsed().as_secs_f64();
            progress(&format!(
                "step {step}: loss {:.4} fwd {f:.2}s bwd {b:.2}s adamw {o:.2}s",
                loss / (config.seq * config.batch) as f64
            ));
            rows.push((f, b, o));
        }
        let used = if rows.len() > 1 {
            &rows[1..]
        } else {
            &rows[..]
        };
        let mean =
            |i: usize| used.iter().map(|r| [r.0, r.1, r.2][i]).sum::<f64>() / used.len() as f64;
        let (f, b, o) = (mean(0), mean(1), mean(2));
        Ok(BenchResult {
            engine: "guardreasoner-train fast path".into(),
            seq: config.seq,
            batch: config.batch,
            lora: config.lora,
            trainable_params,
            threads: rayon::current_num_threads(),
            fwd_s: round3(f),
            bwd_s: round3(b),
            adamw_s: round3(o),
            step_s: round3(f + b + o),
            tokens_per_s: ((config.batch * config.seq) as f64 / (f + b + o) * 10.0).round() / 10.0,
            peak_rss_mib: (peak_rss_mib() * 10.0).round() / 10.0,
        })
    })
}
