//! The guard-workload benchmark behind `guardreasoner bench engine`, shaped like llama.cpp's
//! `llama-bench` (pp512, tg128) and `llama-batched-bench` (N sequences of P prompt + G
//! generated tokens) so the figures compare directly with the anchor script's.

use crate::engine::Engine;
use crate::error::Result;
use crate::sampling::SamplingParams;
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// Guard prompts (instruction + conversation), one per sequence of the largest batch;
    /// reused cyclically when fewer are given.
    pub guard_prompts: Vec<Vec<u32>>,
    /// Length of the instruction prefix shared by every guard prompt (for prefix reuse).
    pub instruction_tokens: usize,
    /// Tokens generated per sequence in the batched runs (400 in the workload).
    pub generated: usize,
    /// Batch sizes (1, 4, 16).
    pub batch_sizes: Vec<usize>,
    /// Repetitions of pp512 / tg128 (the best is reported, as steady-state speed).
    pub repetitions: usize,
    /// Run the guard workload without (`false`) and/or with (`true`) the instruction's keys and
    /// values prefilled once and reused.
    pub prefix_reuse: Vec<bool>,
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct BenchLine {
    pub name: String,
    /// Tokens processed or generated.
    pub tokens: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Free-form detail (e.g. prefill/decode split).
    pub detail: String,
}

impl BenchLine {
    /// Tokens per second.
    pub fn rate(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Start the peak-resident-memory count afresh (Linux: `5` to `/proc/self/clear_refs` resets
/// `VmHWM` to the current RSS), so a later [`peak_rss_mib`] covers only what follows, not a
/// measurement's buffer already freed. Returns whether the reset took effect.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Run every measurement, calling `report` as each finishes.
pub fn run(
    engine: &Engine,
    spec: &BenchSpec,
    mut report: impl FnMut(&BenchLine),
) -> Result<Vec<BenchLine>> {
    let mut lines = Vec::new();
    let mut emit = |line: BenchLine| {
        report(&line);
        lines.push(line);
    };
    let reps = spec.repetitions.max(1);
    let first = spec.guard_prompts.first().cloned().unwrap_or_default();
    let filler: Vec<u32> = first.iter().copied().cycle().take(512).collect();

    // pp512: prompt processing from an empty cache.
    let best = (0..reps)
        .map(|_| {
            let t = Instant::now();
            engine.logits(&filler).map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    emit(BenchLine {
        name: "pp512".into(),
        tokens: 512,
        seconds: best,
        detail: String::new(),
    });

    // Prefill of one guard prompt, in full and after the instruction's keys/values are reused.
    let t = Instant::now();
    engine.logits(&first)?;
    emit(BenchLine {
        name: "guard prompt prefill".into(),
        tokens: first.len(),
        seconds: t.elapsed().as_secs_f64(),
        detail: String::new(),
    });

    // tg128: single-stream decode after a one-token prompt.
    let mut best_tg = f64::INFINITY;
    for _ in 0..reps {
        let mut batch = engine.batch();
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(129)
        };
        batch.add(first[..1].to_vec(), params, 0)?;
        batch.step()?; // the prompt token and the first sample
        let t = Instant::now();
        while !batch.is_empty() {
            batch.step()?;
        }
        best_tg = best_tg.min(t.elapsed().as_secs_f64());
    }
    emit(BenchLine {
        name: "tg128".into(),
        tokens: 128,
        seconds: best_tg,
        detail: String::new(),
    });

    // The guard workload: N sequences of a guard prompt + `generated` tokens, together.
    for &reuse in &spec.prefix_reuse {
        if reuse {
            engine.register_prefix(&first[..spec.instruction_tokens.min(first.len())])?;
        }
        for &n in &spec.batch_sizes {
            let mut batch = engine.batch();
            let params = SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(spec.generated)
            };
            let t = Instant::now();
            let mut prompt_tokens = 0;
            for i in 0..n {
                let prompt = spec.guard_prompts[i % spec.guard_prompts.len()].clone();
                prompt_tokens += prompt.len();
                batch.add(prompt, params.clone(), i)?;
            }
            // Prompts are done when every sequence has produced a token; only what is
            // generated after that counts toward the generation rate.
            let mut started = std::collections::HashSet::new();
            let (mut first_token_at, mut generated, mut generated_after) = (None, 0, 0);
            while !batch.is_empty() {
                let out = batch.step()?;
                generated += out.len();
                if first_token_at.is_some() {
                    generated_after += out.len();
                } else {
                    started.extend(out.iter().map(|o| o.id));
                    if started.len() == n {
                        first_token_at = Some(t.elapsed().as_secs_f64());
                    }
                }
            }
            let total = t.elapsed().as_secs_f64();
            let prefill = first_token_at.unwrap_or(total);
            emit(BenchLine {
                name: format!("guard batch {n}{}", if reuse { " (instruction KV reused)" } else { "" }),
                tokens: prompt_tokens + generated,
                seconds: total,
                detail: format!(
                    "prompt {prompt_tokens} tok + generated {generated} tok; all prompts done at {prefill:.2} s; \
                     generation {:.1} tok/s; {:.2} s per sequence",
                    generated_after as f64 / (total - prefill).max(1e-9),
                    total / n as f64
                ),
            });
        }
    }
    Ok(lines)
}
