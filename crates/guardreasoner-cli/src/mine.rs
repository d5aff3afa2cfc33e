//! `guardreasoner mine`: hard-sample mining for HS-DPO. `mine sample` draws n reasoning outputs
//! per training input from an R-SFT model (local or any OpenAI-compatible endpoint), resumably;
//! `mine pairs` turns the samples of one or more models into weighted DPO pairs.

use crate::generator::GeneratorArgs;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use guardreasoner_synth::mine::{mine, GoldRecord, SampleSet, PAPER_GAMMA};
use guardreasoner_synth::sample::{sample_outputs, SampleSettings};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args)]
pub struct MineArgs {
    #[command(subcommand)]
    command: MineCommand,
}

#[derive(Subcommand)]
enum MineCommand {
    /// Sample n outputs per training input from one model (paper: n=4, T=0.7, top-p 0.95,
    /// 2048 tokens), appending one JSONL line per input as it finishes; rerun to resume.
    Sample(SampleArgs),
    /// Mine weighted DPO pairs from the samples of one or more models.
    Pairs(PairsArgs),
}

#[derive(Args)]
struct SampleArgs {
    /// Training inputs with gold labels (GuardReasonerTrain records: `instruction`, `input`,
    /// `prompt_harm_label`, `response_refusal_label`, `response_harm_label`; JSON or JSONL).
    #[arg(long)]
    gold: PathBuf,
    #[command(flatten)]
    generator: GeneratorArgs,
    /// Name recorded for this model in the samples (default: the model spec or served name).
    /// One samples file can hold several models' samples, e.g. R-SFT models trained on
    /// different subsets, as the paper mines.
    #[arg(long)]
    name: Option<String>,
    /// Samples file (JSONL), appended to and resumed from.
    #[arg(long)]
    output: PathBuf,
    /// Outputs per input.
    #[arg(long, default_value_t = 4)]
    n: u32,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Most new tokens per output.
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: u32,
    /// Input i is sampled with seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Inputs in flight at once (each decodes n sequences together on the local engine).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Sample only the first N inputs.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Args)]
struct PairsArgs {
    /// The training inputs the samples were drawn for (same file as `mine sample --gold`).
    #[arg(long)]
    gold: PathBuf,
    /// Samples files (JSONL lines `model`, `index` into --gold, `input`, `outputs`). Several
    /// files or models are merged and de-duplicated by input.
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
    match args.command {
        MineCommand::Sample(a) => sample(a),
        MineCommand::Pairs(a) => pairs(a),
    }
}

fn sample(args: SampleArgs) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let mut gold: Vec<GoldRecord> = guardreasoner_core::jsonl::read_records(&args.gold)?;
    if let Some(limit) = args.limit {
        gold.truncate(limit);
    }
    if gold.is_empty() {
        bail!("{} holds no training inputs", args.gold.display());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (backend, model) = args.generator.build(
        &runtime,
        args.concurrency.saturating_mul(args.n as usize).max(1),
    )?;
    let settings = SampleSettings {
        model: args.name.clone().unwrap_or(model),
        n: args.n,
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        seed: args.seed,
        concurrency: args.concurrency,
    };
    let bar = ProgressBar::new(gold.len() as u64).with_style(
        ProgressStyle::with_template(
            "sampling [{elapsed_precise}] {bar:30} {pos}/{len} inputs, ETA {eta}",
        )
        .expect("valid template"),
    );
    let mut first = true;
    let mut progress = |done: usize, _total: usize| {
        if first {
            first = false;
            if done > 0 {
                eprintln!(
                    "resuming: {done} inputs already sampled for {:?}",
                    settings.model
                );
            }
            bar.set_position(done as u64);
            bar.reset_eta();
        } else {
            bar.set_position(done as u64);
        }
    };
    let summary = runtime.block_on(sample_outputs(
        &gold,
        backend,
        &settings,
        &args.output,
        &mut progress,
    ));
    bar.finish_and_clear();
    let summary = summary?;
    eprintln!(
        "{}: {} inputs sampled now, {} resumed, {} of {} outputs cut at --max-new-tokens; wrote {}",
        settings.model,
        summary.sampled,
        summary.resumed,
        summary.truncated,
        summary.sampled * settings.n as usize,
        args.output.display()
    );
    Ok(())
}

fn pairs(args: PairsArgs) -> anyhow::Result<()> {
    let gold: Vec<GoldRecord> = guardreasoner_core::jsonl::read_records(&args.gold)?;
    let mut sets: Vec<SampleSet> = Vec::new();
    for path in &args.samples {
        sets.extend(guardreasoner_core::jsonl::read_records::<SampleSet>(path)?);
    }
    let (pairs, stats) = mine(&gold, &sets, args.gamma).map_err(anyhow::Error::msg)?;
    let text = serde_json::to_string_pretty(&pairs)?;
    let tmp = args.output.with_extension("json.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!(
        "{} sample sets -> {} pairs ({} before de-duplication by input); by task: {:?}",
        stats.sample_sets, stats.pairs, stats.pairs_before_dedup, stats.per_task
    );
    Ok(())
}
