//! `guardreasoner bench train`: one training step (forward, backward, AdamW) of a random
//! SmolLM2-135M-shaped model on the fast training path, printing the same JSON fields as the
//! PyTorch anchor (`python3 ../shared/bench/torch_train_anchor.py --seq N [--lora R]`), to be run
//! right after it on the same machine and compared as ratios.

use anyhow::Result;
use clap::Args;
use guardreasoner_train::bench::{run, BenchConfig};

#[derive(Args)]
pub struct TrainBenchArgs {
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Steps; the first is excluded from the means.
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// LoRA rank on every projection (0: full fine-tuning).
    #[arg(long, default_value_t = 0)]
    lora: usize,
}

pub fn train(a: TrainBenchArgs) -> Result<()> {
    let config = BenchConfig {
        seq: a.seq,
        batch: a.batch,
        steps: a.steps,
        threads: a.threads,
        lora: a.lora,
    };
    let result = run(&config, |line| eprintln!("{line}"))?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
