use anyhow::{bail, Context};
use clap::Args;
use guardreasoner_core::calibration::GuardCalibration;
use guardreasoner_core::report::{self, Comparison, Format, PaperTables, DEFAULT_COMPARE};
use guardreasoner_core::score::{score_dir, ScoreOptions};
use guardreasoner_core::{ParsePolicy, ReasoningMode};
use std::path::PathBuf;

#[derive(Args)]
pub struct ScoreArgs {
    /// Directory in the official layout: `<dir>/<Benchmark>/generated_predictions.jsonl`.
    #[arg(long)]
    predictions: PathBuf,
    /// `paper`: the official evaluate.py rule (reproduces the paper). `strict`: fail closed.
    #[arg(long, default_value = "strict")]
    parse: ParsePolicy,
    /// Output format: table, markdown or json.
    #[arg(long, default_value = "table")]
    format: Format,
    /// Print the paper's numbers beside ours: optionally a comma-separated list of methods as
    /// named in paper-tables.json (default: GuardReasoner 1B/3B/8B and the strongest baselines).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "METHODS")]
    compare: Option<String>,
    /// The paper's tables (paper-tables.json).
    #[arg(
        long,
        env = "GUARDREASONER_PAPER_TABLES",
        default_value = "../shared/data/paper-tables.json"
    )]
    paper_tables: PathBuf,
    /// The official WildGuardTest data file, whose labels WildGuardTest is scored against.
    #[arg(long, env = "GUARDREASONER_WILDGUARD_FILE")]
    wildguard: Option<PathBuf>,
    /// Name of this run's row in the tables (default: the directory name).
    #[arg(long)]
    label: Option<String>,
    /// Decide the harmful tasks by label score at this threshold (rows `eval` wrote with
    /// scores) instead of by the written label. Choose it on a development split.
    #[arg(long, value_parser = crate::classify::parse_threshold)]
    threshold: Option<f32>,
    /// Map the label scores through this calibration before scoring: one fitted on a
    /// development split by `--fit-calibration`, or by stage by `cascade --fit-calibration`
    /// (what `auto` answered at once and what it reasoned about are mapped apart).
    #[arg(long, conflicts_with = "fit_calibration")]
    calibration: Option<PathBuf>,
    /// The reasoning mode the predictions were generated in, which decides the calibration
    /// stage of rows that do not say (default: the run's eval-settings.json, else `full`).
    #[arg(long)]
    reasoning: Option<ReasoningMode>,
    /// Fit a Platt map per task on these rows' label scores and write it here (JSON). Only on
    /// a development split: a map fitted on a test file says nothing about calibration.
    #[arg(long, value_name = "OUT")]
    fit_calibration: Option<PathBuf>,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let calibration = args
        .calibration
        .as_deref()
        .map(|path| -> anyhow::Result<GuardCalibration> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the calibration {}", path.display()))?;
            GuardCalibration::from_json(&text)
                .with_context(|| format!("{}: not a calibration file", path.display()))
        })
        .transpose()?;
    let reasoning = match args.reasoning {
        Some(mode) => mode,
        None => run_reasoning(&args.predictions)?,
    };
    let options = ScoreOptions {
        policy: args.parse,
        wildguard_file: args.wildguard.clone(),
        threshold: args.threshold,
        calibration,
        reasoning,
    };
    let report = score_dir(&args.predictions, &options)?;
    if let Some(out) = &args.fit_calibration {
        let fitted = report.fit_calibration(args.predictions.display().to_string());
        if fitted.request.is_none() && fitted.completion.is_none() && fitted.response.is_none() {
            bail!(
                "{}: no task has scored rows of both classes to fit a calibration on",
                args.predictions.display()
            );
        }
        std::fs::write(out, serde_json::to_string_pretty(&fitted)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "fitted on {} / {} / {} scored rows (request / completion / response): {}",
            fitted.rows[0],
            fitted.rows[1],
            fitted.rows[2],
            out.display()
        );
    }
    let tables;
    let comparison = match &args.compare {
        None => None,
        Some(list) => {
            tables = PaperTables::load(&args.paper_tables).with_context(|| {
                "--compare needs the paper's tables: pass --paper-tables PATH".to_string()
            })?;
            let methods: Vec<String> = if list.trim().is_empty() {
                DEFAULT_COMPARE.iter().map(|s| s.to_string()).collect()
            } else {
                list.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            };
            if let Some(unknown) = methods.iter().find(|m| !tables.has_method(m)) {
                bail!(
                    "--compare: no method {unknown:?} in {}",
                    args.paper_tables.display()
                );
            }
            Some(Comparison {
                tables: &tables,
                methods,
            })
        }
    };
    let label = args.label.clone().unwrap_or_else(|| {
        args.predictions
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "this run".into())
    });
    print!(
        "{}",
        report::render(&report, args.format, &label, comparison.as_ref())
    );
    Ok(())
}

/// The reasoning mode an `eval` output directory was generated in (its settings file), else
/// `full` (the official predictions reason).
fn run_reasoning(dir: &std::path::Path) -> anyhow::Result<ReasoningMode> {
    let path = dir.join(guardreasoner_eval::RUN_SETTINGS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(ReasoningMode::Full);
    };
    let settings: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    match settings["reasoning"].as_str() {
        None => Ok(ReasoningMode::Full),
        Some(mode) => mode
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: reasoning: {e}", path.display())),
    }
}
