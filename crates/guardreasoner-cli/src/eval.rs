//! `guardreasoner eval`: generate on the paper's benchmarks (local engine or an
//! OpenAI-compatible endpoint), resumably, then score and report beside the paper.

use crate::generator::GeneratorArgs;
use anyhow::bail;
use clap::Args;
use guardreasoner_core::report::PaperTables;
use guardreasoner_core::{ReasoningMode, UncertaintyBand};
use guardreasoner_eval::{
    run_eval, select_targets, write_report, EvalConfig, EvalRow, EvalTarget, GenerationSettings,
    Progress, TargetSummary,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    generator: GeneratorArgs,
    /// `all`, or a comma-separated list of benchmark names (as in the paper's tables, or the
    /// prediction directory names).
    #[arg(long, default_value = "all")]
    benchmarks: String,
    /// Evaluate at most N rows per benchmark file: a seeded sample stratified by gold label,
    /// the same rows on every run.
    #[arg(long)]
    limit: Option<usize>,
    /// Seed of the `--limit` sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most new tokens per output (the paper: 2048).
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: u32,
    /// Requests in flight at once (also the local engine's decode batch).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Most reasoning tokens before the answer is forced (default: what --max-new-tokens
    /// leaves room for). Constrained on the local engine only.
    #[arg(long, env = "GUARDREASONER_MAX_REASONING_TOKENS")]
    max_reasoning_tokens: Option<u32>,
    #[command(flatten)]
    reasoning: crate::classify::ReasoningArgs,
    /// The official benchmark files (`data/benchmark/` of the GuardReasoner repository).
    #[arg(
        long,
        env = "GUARDREASONER_BENCHMARKS",
        default_value = "../shared/data/benchmarks"
    )]
    data_dir: PathBuf,
    /// The paper's tables, shown beside this run's scores.
    #[arg(
        long,
        env = "GUARDREASONER_PAPER_TABLES",
        default_value = "../shared/data/paper-tables.json"
    )]
    paper_tables: PathBuf,
    /// Name of this run in the tables and the chart (default: the model name).
    #[arg(long)]
    label: Option<String>,
    /// Output directory: `<out>/<Benchmark>/generated_predictions.jsonl`, `report.md`,
    /// `report.json`, charts (`f1`, `pr`, `reliability`: .svg and .png). Running again with the
    /// same directory resumes.
    #[arg(long)]
    out: PathBuf,
}

/// An indicatif bar per benchmark file: rows done, ETA and generated tokens per second.
struct Bars {
    bar: Option<ProgressBar>,
    started: Instant,
    tokens: u64,
}

impl Progress for Bars {
    fn start(&mut self, target: &EvalTarget, total: usize, already_done: usize) {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>22} [{elapsed_precise}] {bar:30} {pos}/{len} rows, ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(target.name());
        if already_done > 0 {
            eprintln!(
                "{}: resuming, {already_done} of {total} rows already done",
                target.name()
            );
        }
        bar.set_position(already_done as u64);
        // Rows found on disk took no time now: keep them out of the rate behind the ETA.
        bar.reset_eta();
        self.bar = Some(bar);
        self.started = Instant::now();
        self.tokens = 0;
    }

    fn row_done(&mut self, row: &EvalRow) {
        self.tokens += row.completion_tokens.unwrap_or(0);
        if let Some(bar) = &self.bar {
            bar.inc(1);
            let rate = self.tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{rate:.1} tok/s"));
        }
    }

    fn finish(&mut self, target: &EvalTarget, s: &TargetSummary) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let seconds = s.elapsed.as_secs_f64();
        eprintln!(
            "{}: {} rows ({} generated now, {} resumed), {} tokens in {seconds:.1} s ({:.1} tok/s), {} cut at --max-new-tokens, {} too long for the context (failed closed)",
            target.name(),
            s.rows,
            s.generated,
            s.resumed,
            s.completion_tokens,
            if seconds > 0.0 { s.completion_tokens as f64 / seconds } else { 0.0 },
            s.truncated,
            s.too_long
        );
    }
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let targets = select_targets(&args.benchmarks)?;
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (backend, model) = args.generator.build(&runtime, args.concurrency)?;
    // A local model runs in its own default mode; a remote endpoint reasons fully unless told.
    let defaults = match &args.generator.model {
        Some(spec) => args.reasoning.resolve(Some(spec))?,
        None => args.reasoning.over(crate::classify::GuardDefaults {
            reasoning: ReasoningMode::Full,
            band: UncertaintyBand::default(),
            calibration: None,
        })?,
    };
    let tables = match PaperTables::load(&args.paper_tables) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("warning: the report will have no paper baselines: {e}");
            None
        }
    };
    let config = EvalConfig {
        skip_missing_data: args
            .benchmarks
            .split(',')
            .any(|b| b.trim().eq_ignore_ascii_case("all")),
        targets,
        data_dir: args.data_dir.clone(),
        out_dir: args.out.clone(),
        limit: args.limit,
        seed: args.seed,
        settings: GenerationSettings {
            max_new_tokens: args.max_new_tokens,
            concurrency: args.concurrency,
            max_reasoning_tokens: args.max_reasoning_tokens,
            // A remote endpoint reasons fully unless told otherwise; a local model runs in
            // its own default mode.
            reasoning: defaults.reasoning,
            band: defaults.band,
            calibration: defaults.calibration,
        },
        model: model.clone(),
    };
    let mut bars = Bars {
        bar: None,
        started: Instant::now(),
        tokens: 0,
    };
    let outcome = runtime.block_on(run_eval(&config, backend.clone(), &mut bars))?;
    for (target, why) in &outcome.skipped {
        eprintln!("warning: {} not evaluated: {why}", target.name());
    }
    // A model path names the run by its file name; a Hub id or served name as given.
    let label = args.label.clone().unwrap_or_else(|| {
        std::path::Path::new(&model)
            .file_name()
            .filter(|_| args.generator.model.is_some() && std::path::Path::new(&model).exists())
            .map_or(model.clone(), |n| n.to_string_lossy().into_owned())
    });
    let written = write_report(&config, &outcome, &label, &backend.name(), tables.as_ref())?;
    print!("{}", written.table);
    for file in &written.files {
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}
