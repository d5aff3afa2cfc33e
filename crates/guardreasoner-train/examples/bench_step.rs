//! One training step at SmolLM2-135M shapes (random weights), full fine-tuning or LoRA:
//! forward+backward time, AdamW time, peak RSS.
//!
//! `cargo run --release -p guardreasoner-train --example bench_step -- 512 full`
//! `cargo run --release -p guardreasoner-train --example bench_step -- 1024 lora16`
//! Compare with `python ../shared/bench/torch_train_anchor.py` (add `--lora 16`) on the same machine.

use candle_core::DType;
use guardreasoner_train::data::Example;
use guardreasoner_train::lora::{LoraConfig, ALL_TARGETS};
use guardreasoner_train::model::{Llama, LlamaConfig, TrainMode};
use guardreasoner_train::sft::SftObjective;
use guardreasoner_train::trainer::{train, Resume, RunOptions, TrainerConfig};
use std::time::Instant;

fn smollm2_135m() -> LlamaConfig {
    let mut c = LlamaConfig::tiny(49152, 576, 1536, 30, 9, 3, true);
    c.rope_theta = 100_000.0;
    c
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seq: usize = args.get(1).map_or(Ok(512), |s| s.parse())?;
    let mode = match args.get(2).map(String::as_str).unwrap_or("full") {
        "full" => TrainMode::Full,
        m if m.starts_with("lora") => TrainMode::Lora(LoraConfig {
            rank: m[4..].parse().unwrap_or(16),
            alpha: 32.0,
            dropout: 0.0,
            targets: ALL_TARGETS.map(String::from).to_vec(),
        }),
        other => return Err(format!("mode {other:?}: full or loraR").into()),
    };
    let steps: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let mut model = Llama::random(smollm2_135m(), 0.02, 0, DType::F32, mode)?;
    // One sequence: a 64-token prompt and the rest as target, as an SFT record.
    let ids: Vec<u32> = (0..seq as u32).map(|i| (i * 7919) % 49152).collect();
    let example = Example {
        prompt: ids[..64].to_vec(),
        target: ids[64..].to_vec(),
    };
    let objective = SftObjective {
        examples: vec![example],
    };
    let cfg = TrainerConfig {
        max_steps: Some(steps),
        batch_size: 1,
        save_steps: None,
        ..TrainerConfig::paper_sft()
    };
    let out = std::env::temp_dir().join(format!("guardreasoner-bench-{}", std::process::id()));
    let started = Instant::now();
    let summary = train(
        &mut model,
        &objective,
        &cfg,
        &out,
        Resume::No,
        &RunOptions::default(),
    )?;
    let total = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&out);
    let per_step: Vec<String> = summary
        .log
        .iter()
        .map(|r| format!("{:.2}", r.tokens as f64 / r.tokens_per_s))
        .collect();
    println!(
        "seq {seq} {}: {} trainable params; step seconds [{}] (total {total:.1}s incl. final checkpoint); peak RSS {:.0} MiB",
        args.get(2).map_or("full", String::as_str),
        model.trainable_count(),
        per_step.join(", "),
        peak_rss_mib()
    );
    Ok(())
}
