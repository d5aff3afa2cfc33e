//! `guardreasoner mine`: hard-sample pairs for HS-DPO from sampled outputs of one or more
//! R-SFT models.

use anyhow::Context;
use clap::Args;
use guardreasoner_train::mine::{mine, GoldRecord, SampleSet, PAPER_GAMMA};
use std::path::PathBuf;

#[derive(Args)]
pub struct MineArgs {
    /// Training inputs with gold labels (GuardReasonerTrain fields `instruction`, `input`,
    /// `prompt_harm_label`, `response_refusal_label`, `response_harm_label`).
    #[arg(long)]
    gold: PathBuf,
    /// Samples files (JSONL, one line per model and input: `model`, `index` into --gold,
    /// `input`, `outputs`). Several files or models are merged and de-duplicated by input.
    #[arg(long = "samples", required = true)]
    samples: Vec<PathBuf>,
    /// Output pairs (JSON array in LLaMA-Factory's ranking format with `sample_weight`).
    #[arg(long)]
    output: PathBuf,
    /// Weights are normalised into [1 - gamma, 1 + gamma].
    #[arg(long, default_value_t = PAPER_GAMMA)]
    gamma: f64,
}

pub fn run(args: MineArgs) -> anyhow::Result<()> {
    let gold: Vec<GoldRecord> = guardreasoner_core::jsonl::read_records(&args.gold)?;
    let mut sets: Vec<SampleSet> = Vec::new();
    for path in &args.samples {
        sets.extend(guardreasoner_core::jsonl::read_records::<SampleSet>(path)?);
    }
    let (pairs, stats) = mine(&gold, &sets, args.gamma).map_err(anyhow::Error::msg)?;
    let text = serde_json::to_string_pretty(&pairs)?;
    std::fs::write(&args.output, text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "{} sample sets -> {} pairs ({} before de-duplication by input); by task: {:?}",
        stats.sample_sets, stats.pairs, stats.pairs_before_dedup, stats.per_task
    );
    Ok(())
}
