//! `guardreasoner data`: training data. `distill` turns released prediction directories (and a
//! model's own samples) into R-SFT records; `labels` turns labelled prompts without reasoning
//! into the inputs `mine sample` draws reasoning for.

use anyhow::Context;
use clap::{Args, Subcommand};
use guardreasoner_core::hygiene::UnseenSets;
use guardreasoner_core::jsonl::write_records_atomic;
use guardreasoner_synth::distill::{
    direct_answer_record, distill, write_dev_benchmarks, DistillConfig,
};
use guardreasoner_synth::labels::{gold_from_labels, prompt_benchmark_records};
use std::path::PathBuf;

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Turn official-layout prediction directories (`<dir>/<Benchmark>/generated_predictions.jsonl`)
    /// into R-SFT records: traces whose structure parses strictly and whose every known gold
    /// label agrees, de-duplicated, with the unseen test sets' conversations removed.
    Distill(DistillArgs),
    /// Turn labelled prompts without reasoning (`prompt`, `response`, `*_label`, e.g.
    /// `../shared/data/train-labels/*.json`) into training inputs for `mine sample --gold`:
    /// the unseen test sets' conversations and the development split's prompts removed,
    /// de-duplicated, ordered by input hash (so any prefix is a fair sample).
    Labels(LabelsArgs),
    /// Direct-answer variants of R-SFT records or labelled inputs: the same conversations with
    /// the forced answer header as an untrained `prefix` and, as `output`, the record's own
    /// answer (or its gold labels where it has no `output`, e.g. `data labels`' output), so the
    /// guard learns to answer under `--reasoning none` (mix them into `train sft`).
    Direct(DirectArgs),
}

#[derive(Args)]
struct DirectArgs {
    /// R-SFT records (e.g. `data distill`'s output) or labelled inputs (`data labels`' output).
    #[arg(long)]
    data: PathBuf,
    /// Output: a JSON array of direct-answer records.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct LabelsArgs {
    /// Labelled files, in order of preference (a repeated input keeps the first labels).
    #[arg(long = "labels", required = true)]
    labels: Vec<PathBuf>,
    /// The official benchmark files (where the unseen test sets are read).
    #[arg(
        long,
        env = "GUARDREASONER_BENCHMARKS",
        default_value = "../shared/data/benchmarks"
    )]
    benchmarks_dir: PathBuf,
    /// Fraction of prompts held out as the development split: the same rule and value as
    /// `data distill --dev-fraction`, so a dev prompt is never sampled for training.
    #[arg(long, default_value_t = 0.0)]
    dev_fraction: f64,
    /// Output: a JSON array of instruction/input/`*_label` records.
    #[arg(long)]
    out: PathBuf,
    /// Also write the development split's prompt-only records as a prompt benchmark file in
    /// the official layout (plain labels), e.g. `DIR/0_8_toxic_chat.json` for
    /// `eval --data-dir DIR --benchmarks ToxicChat` (a dev split, whatever the slot's name).
    #[arg(long)]
    dev_prompts: Option<PathBuf>,
}

#[derive(Args)]
struct DistillArgs {
    /// Prediction directories, most preferred first (e.g. `../shared/data/reference-predictions/paper-v1/8B`).
    #[arg(long = "predictions", required = true)]
    predictions: Vec<PathBuf>,
    /// GuardReasonerTrain files with reasoning and `*_label` fields, validated like the traces.
    #[arg(long = "extra")]
    extra: Vec<PathBuf>,
    /// The official benchmark files: gold labels, and the unseen test sets to exclude.
    #[arg(
        long,
        env = "GUARDREASONER_BENCHMARKS",
        default_value = "../shared/data/benchmarks"
    )]
    benchmarks_dir: PathBuf,
    /// A model's own sampled reasoning (`mine sample --output` files): outputs that parse
    /// strictly and end in the gold labels of `--samples-gold` become records (rejection-sampled
    /// self-training), after the released traces.
    #[arg(long = "samples", requires = "samples_gold")]
    samples: Vec<PathBuf>,
    /// The gold inputs the samples were drawn for (`mine sample --gold`).
    #[arg(long)]
    samples_gold: Option<PathBuf>,
    /// Traces kept per conversation.
    #[arg(long, default_value_t = 1)]
    max_traces: usize,
    /// Traces kept per conversation whose request is gold-unharmful (rebalances a pool that
    /// leans harmful).
    #[arg(long)]
    max_traces_unharmful: Option<usize>,
    /// Fraction of prompts held out as the development split (by hash of the normalised prompt).
    #[arg(long, default_value_t = 0.0)]
    dev_fraction: f64,
    /// Where the development split goes as benchmark files (the held-out records of each seen
    /// benchmark, same file names), for `guardreasoner eval --data-dir`.
    #[arg(long)]
    dev_dir: Option<PathBuf>,
    /// Output: a JSON array of instruction/input/output records with their gold labels.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Distill(a) => run_distill(a),
        DataCommand::Labels(a) => run_labels(a),
        DataCommand::Direct(a) => run_direct(a),
    }
}

fn run_direct(args: DirectArgs) -> anyhow::Result<()> {
    let records: Vec<serde_json::Value> = guardreasoner_core::jsonl::read_records(&args.data)?;
    let direct = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            direct_answer_record(r)
                .map_err(|e| anyhow::anyhow!("{}: record {}: {e}", args.data.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    write_records_atomic(&args.out, &direct, true)?;
    eprintln!(
        "wrote {} direct-answer records to {}",
        direct.len(),
        args.out.display()
    );
    Ok(())
}

fn check_dev_fraction(fraction: f64) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&fraction) {
        anyhow::bail!("--dev-fraction must be in [0, 1), got {fraction}");
    }
    Ok(())
}

/// The unseen test sets, which every training source is filtered against.
fn load_unseen(benchmarks_dir: &std::path::Path) -> anyhow::Result<UnseenSets> {
    UnseenSets::load(benchmarks_dir).with_context(|| {
        format!(
            "reading the unseen test sets under {}",
            benchmarks_dir.display()
        )
    })
}

fn run_labels(args: LabelsArgs) -> anyhow::Result<()> {
    check_dev_fraction(args.dev_fraction)?;
    let unseen = load_unseen(&args.benchmarks_dir)?;
    let split = gold_from_labels(&args.labels, &unseen, args.dev_fraction)?;
    let (records, r) = (&split.train, &split.report);
    if records.is_empty() {
        anyhow::bail!("no training inputs left after the hygiene and development-split filters");
    }
    write_records_atomic(&args.out, records, true)?;
    if let Some(path) = &args.dev_prompts {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let bench = prompt_benchmark_records(&split.dev);
        write_records_atomic(path, &bench, true)?;
        eprintln!(
            "development split: {} prompts -> {}",
            bench.len(),
            path.display()
        );
    }
    let labels: Vec<String> = r
        .by_prompt_label
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    eprintln!(
        "read {}, kept {} (request: {}); dropped {} unseen, {} dev split, {} duplicate; wrote {}",
        r.read,
        r.kept,
        labels.join(", "),
        r.unseen,
        r.dev,
        r.duplicate,
        args.out.display()
    );
    Ok(())
}

fn run_distill(args: DistillArgs) -> anyhow::Result<()> {
    check_dev_fraction(args.dev_fraction)?;
    if args.max_traces == 0 {
        anyhow::bail!("--max-traces must be at least 1");
    }
    if args.dev_fraction > 0.0 && args.dev_dir.is_none() {
        anyhow::bail!("--dev-fraction needs --dev-dir (where the development split goes)");
    }
    let unseen = load_unseen(&args.benchmarks_dir)?;
    let config = DistillConfig {
        predictions: args.predictions,
        benchmarks_dir: args.benchmarks_dir.clone(),
        extra: args.extra,
        samples: args.samples,
        samples_gold: args.samples_gold,
        max_traces: args.max_traces,
        max_traces_unharmful: args.max_traces_unharmful.unwrap_or(args.max_traces),
        dev_fraction: args.dev_fraction,
    };
    let distilled = distill(&config, &unseen)?;
    write_records_atomic(&args.out, &distilled.train, true)?;
    let r = &distilled.report;
    eprintln!(
        "{:<40} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  rejected",
        "source", "read", "kept", "dup", "quota", "dev", "unseen"
    );
    for (source, c) in &r.sources {
        let rejected: Vec<String> = c.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!(
            "{:<40} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
            source,
            c.read,
            c.kept,
            c.duplicate,
            c.over_quota,
            c.dev,
            c.unseen,
            rejected.join(", ")
        );
    }
    let labels: Vec<String> = r
        .by_request_label
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    eprintln!(
        "kept {} records over {} conversations (request: {}); {} conflicting gold labels dropped; {} unseen prompts excluded",
        distilled.train.len(),
        r.conversations,
        labels.join(", "),
        r.conflicting_gold,
        unseen.len()
    );
    eprintln!("wrote {}", args.out.display());
    if let Some(dev_dir) = &args.dev_dir {
        let files =
            write_dev_benchmarks(&args.benchmarks_dir, args.dev_fraction, &unseen, dev_dir)?;
        let mut dev_path = args.out.clone().into_os_string();
        dev_path.push(".dev.json");
        let dev_path = PathBuf::from(dev_path);
        write_records_atomic(&dev_path, &distilled.dev, true)?;
        for (file, n) in files {
            eprintln!("dev split: {}/{file}: {n} records", dev_dir.display());
        }
        eprintln!(
            "dev split: {} conversations with a kept trace -> {}",
            r.dev_conversations,
            dev_path.display()
        );
    }
    Ok(())
}
