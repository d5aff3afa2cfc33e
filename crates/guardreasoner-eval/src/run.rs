//! Generation for each benchmark file through a [`Backend`], written incrementally to the
//! official layout and resumable after a crash.

use crate::data::{load_records, BenchmarkRecord, EvalTarget};
use crate::error::EvalError;
use crate::sample::stratified_sample;
use guardreasoner_backend::{classify, Backend, BackendError, FinishReason, GuardParams};
use guardreasoner_core::jsonl::JsonlAppender;
use guardreasoner_core::score::{PredictionRow, PREDICTIONS_FILE};
use guardreasoner_core::{LabelScores, ReasoningMode, UncertaintyBand};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// The settings file an output directory keeps, so a resumed run cannot mix in rows made with
/// another model, sample or token budget.
pub const RUN_SETTINGS_FILE: &str = "eval-settings.json";

/// One row of `generated_predictions.jsonl` as `eval` writes it: the official `prompt`,
/// `label` and `predict`, plus the row's index in the benchmark file and why generation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    /// The full guard prompt (instruction and conversation).
    pub prompt: String,
    /// The benchmark record's `output`, as stored.
    pub label: String,
    /// The generated text.
    pub predict: String,
    /// Row index in the benchmark data file.
    pub index: usize,
    /// `stop`, `length` (cut at `max_new_tokens`) or what the backend reported.
    pub finish_reason: String,
    /// Generated tokens, where the backend reported them.
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    /// The probability of each answered task's positive label, where the backend scores
    /// (calibrated where the guard has a calibration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<LabelScores>,
    /// The model's own scores, where `scores` were calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_scores: Option<LabelScores>,
    /// Whether the answer was forced (reasoning budget or an early end), where the backend
    /// constrains decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<bool>,
    /// Under reasoning `auto`: whether the verdict needed full reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated: Option<bool>,
    /// Why the backend refused this row's input (finish reason [`TOO_LONG`]); its empty
    /// `predict` is scored as a failed, fail-closed verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The finish reason of a row whose input did not fit the model's context.
pub const TOO_LONG: &str = "too_long";

impl From<EvalRow> for PredictionRow {
    /// What the scorer reads of a row.
    fn from(row: EvalRow) -> PredictionRow {
        PredictionRow {
            prompt: row.prompt,
            label: row.label,
            predict: row.predict,
            scores: row.scores,
            raw_scores: row.raw_scores,
            escalated: row.escalated,
        }
    }
}

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    /// The paper's budget is 2048.
    pub max_new_tokens: u32,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Reasoning tokens before the answer is forced (`None`: what `max_new_tokens` leaves).
    pub max_reasoning_tokens: Option<u32>,
    pub reasoning: ReasoningMode,
    /// The uncertainty band of reasoning `auto`.
    pub band: UncertaintyBand,
    /// Where the guard's scores are calibrated ([`GuardParams::calibration`]); rows then keep
    /// the model's own scores too.
    pub calibration: Option<std::sync::Arc<guardreasoner_core::calibration::GuardCalibration>>,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        Self {
            max_new_tokens: 2048,
            concurrency: 8,
            max_reasoning_tokens: None,
            reasoning: ReasoningMode::Full,
            band: UncertaintyBand::default(),
            calibration: None,
        }
    }
}

impl GenerationSettings {
    fn guard_params(&self) -> GuardParams {
        GuardParams {
            max_new_tokens: self.max_new_tokens,
            max_reasoning_tokens: self.max_reasoning_tokens,
            reasoning: self.reasoning,
            band: self.band,
            calibration: self.calibration.clone(),
            ..GuardParams::default()
        }
    }
}

/// Progress callbacks, so a caller can draw a bar (the library draws nothing).
pub trait Progress: Send {
    /// A target starts: `total` rows selected, `already_done` of them found on disk.
    fn start(&mut self, _target: &EvalTarget, _total: usize, _already_done: usize) {}
    /// One row was generated and saved.
    fn row_done(&mut self, _row: &EvalRow) {}
    /// A target is complete and its file is in index order.
    fn finish(&mut self, _target: &EvalTarget, _summary: &TargetSummary) {}
}

/// A [`Progress`] that reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}

/// What happened to one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetSummary {
    pub prediction_dir: String,
    /// Rows in the final prediction file.
    pub rows: usize,
    /// Rows in the benchmark data file.
    pub data_rows: usize,
    /// Rows found on disk from an earlier, interrupted run.
    pub resumed: usize,
    /// Rows generated by this run.
    pub generated: usize,
    /// Tokens generated by this run.
    pub completion_tokens: u64,
    /// Rows (of the whole file) cut off at `max_new_tokens`.
    pub truncated: usize,
    /// Rows (of the whole file) whose input did not fit the context: failed closed.
    pub too_long: usize,
    /// Rows (of the whole file) whose answer the reasoning budget forced.
    pub forced: usize,
    /// Rows (of the whole file) that reasoning `auto` escalated to full reasoning.
    pub escalated: usize,
    /// Mean generated tokens per row (of the whole file, where reported).
    pub mean_tokens: f64,
    /// Wall time of this run's generation for the target.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn mean_tokens(rows: &[EvalRow]) -> f64 {
    let counted: Vec<u64> = rows.iter().filter_map(|r| r.completion_tokens).collect();
    if counted.is_empty() {
        return 0.0;
    }
    counted.iter().sum::<u64>() as f64 / counted.len() as f64
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn finish_reason_name(reason: &FinishReason) -> String {
    match reason {
        FinishReason::Stop => "stop".into(),
        FinishReason::Length => "length".into(),
        FinishReason::Other(s) if s.is_empty() => "unknown".into(),
        FinishReason::Other(s) => s.clone(),
    }
}

/// The prediction file of a target under `out_dir`.
pub fn predictions_path(out_dir: &Path, target: &EvalTarget) -> PathBuf {
    out_dir.join(target.prediction_dir).join(PREDICTIONS_FILE)
}

/// Check rows found on disk against what this run would write. Returns which indices are done.
fn check_existing(
    path: &Path,
    existing: &[EvalRow],
    records: &[BenchmarkRecord],
    selected: &[bool],
) -> Result<Vec<bool>, EvalError> {
    let mismatch = |message: String| EvalError::ResumeMismatch {
        path: path.to_path_buf(),
        message,
    };
    let mut done = vec![false; records.len()];
    for row in existing {
        let Some(record) = records.get(row.index) else {
            return Err(mismatch(format!(
                "row {} is past the end of the benchmark file ({} rows)",
                row.index,
                records.len()
            )));
        };
        if !selected[row.index] {
            return Err(mismatch(format!(
                "row {} is not in this run's sample (was it made with another --limit or --seed?)",
                row.index
            )));
        }
        if row.prompt != record.prompt || row.label != record.output {
            return Err(mismatch(format!(
                "row {} has another prompt or label than the benchmark file",
                row.index
            )));
        }
        if std::mem::replace(&mut done[row.index], true) {
            return Err(mismatch(format!(
                "row {} appears twice (did two runs write here at once?)",
                row.index
            )));
        }
    }
    Ok(done)
}

/// Rewrite `path` with `rows` sorted by index, atomically: a temporary file in the same
/// directory, synced, then renamed over the original.
pub fn write_in_index_order(path: &Path, rows: &mut [EvalRow]) -> Result<(), EvalError> {
    rows.sort_by_key(|r| r.index);
    Ok(guardreasoner_core::jsonl::write_records_atomic(
        path, rows, false,
    )?)
}

/// Generate the `selected` rows of one target into `out_dir`, skipping rows already on disk,
/// then rewrite the file in index order.
///
/// On a generation error no new request is started, requests in flight are awaited and saved,
/// and the error is returned: running again resumes from there.
pub async fn generate_target(
    backend: Arc<dyn Backend>,
    target: &EvalTarget,
    records: &[BenchmarkRecord],
    selected: &[usize],
    out_dir: &Path,
    settings: &GenerationSettings,
    progress: &mut dyn Progress,
) -> Result<TargetSummary, EvalError> {
    if settings.concurrency == 0 {
        return Err(EvalError::Setting("concurrency must be at least 1".into()));
    }
    if settings.max_new_tokens == 0 {
        return Err(EvalError::Setting(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    let path = predictions_path(out_dir, target);
    let (mut appender, mut rows) = JsonlAppender::open::<EvalRow>(&path)?;
    let mut is_selected = vec![false; records.len()];
    for &i in selected {
        is_selected[i] = true;
    }
    let done = check_existing(&path, &rows, records, &is_selected)?;
    let resumed = rows.len();
    let todo: Vec<usize> = selected.iter().copied().filter(|&i| !done[i]).collect();
    progress.start(target, selected.len(), resumed);

    let params = Arc::new(settings.guard_params());
    params
        .validate()
        .map_err(|e| EvalError::Setting(e.to_string()))?;
    let started = Instant::now();
    let mut pending = todo.into_iter();
    let mut in_flight = JoinSet::new();
    let mut first_error: Option<EvalError> = None;
    let (mut generated, mut tokens) = (0usize, 0u64);
    loop {
        while first_error.is_none() && in_flight.len() < settings.concurrency {
            let Some(index) = pending.next() else { break };
            let conversation = records[index].conversation.clone();
            let (backend, params) = (backend.clone(), params.clone());
            in_flight
                .spawn(async move { (index, classify(&*backend, &conversation, &params).await) });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let (index, result) = match joined {
            Ok(pair) => pair,
            Err(e) => {
                first_error.get_or_insert(EvalError::Generation {
                    benchmark: target.name().to_string(),
                    index: usize::MAX,
                    source: BackendError::Engine(format!("generation task failed: {e}")),
                });
                continue;
            }
        };
        match result {
            Ok(outcome) => {
                let completion_tokens = (outcome.usage.completion_tokens > 0)
                    .then_some(outcome.usage.completion_tokens);
                let record = &records[index];
                let row = EvalRow {
                    prompt: record.prompt.clone(),
                    label: record.output.clone(),
                    predict: outcome.text,
                    index,
                    finish_reason: finish_reason_name(&outcome.finish_reason),
                    completion_tokens,
                    scores: outcome.scores,
                    raw_scores: outcome.raw_scores,
                    forced: outcome.forced,
                    escalated: outcome.escalated,
                    error: None,
                };
                appender.append(&row)?;
                generated += 1;
                tokens += completion_tokens.unwrap_or(0);
                progress.row_done(&row);
                rows.push(row);
            }
            // One input too long for the model is that row's failure, not the run's: the
            // guard's answer to it is "no verdict", counted as wrong, and the others go on.
            Err(e @ BackendError::InputTooLong { .. }) => {
                let record = &records[index];
                let row = EvalRow {
                    prompt: record.prompt.clone(),
                    label: record.output.clone(),
                    predict: String::new(),
                    index,
                    finish_reason: TOO_LONG.into(),
                    completion_tokens: None,
                    scores: None,
                    raw_scores: None,
                    forced: None,
                    escalated: None,
                    error: Some(e.to_string()),
                };
                appender.append(&row)?;
                generated += 1;
                progress.row_done(&row);
                rows.push(row);
            }
            Err(source) => {
                first_error.get_or_insert(EvalError::Generation {
                    benchmark: target.name().to_string(),
                    index,
                    source,
                });
            }
        }
    }
    appender.sync()?;
    drop(appender);
    if let Some(error) = first_error {
        return Err(error);
    }
    write_in_index_order(&path, &mut rows)?;
    let summary = TargetSummary {
        prediction_dir: target.prediction_dir.to_string(),
        rows: rows.len(),
        data_rows: records.len(),
        resumed,
        generated,
        completion_tokens: tokens,
        truncated: rows.iter().filter(|r| r.finish_reason == "length").count(),
        too_long: rows.iter().filter(|r| r.finish_reason == TOO_LONG).count(),
        forced: rows.iter().filter(|r| r.forced == Some(true)).count(),
        escalated: rows.iter().filter(|r| r.escalated == Some(true)).count(),
        mean_tokens: mean_tokens(&rows),
        elapsed: started.elapsed(),
    };
    progress.finish(target, &summary);
    Ok(summary)
}

/// Everything one `eval` run needs besides the backend.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub targets: Vec<EvalTarget>,
    /// The official `data/benchmark/` directory.
    pub data_dir: PathBuf,
    pub out_dir: PathBuf,
    /// Rows per benchmark file (a seeded stratified sample); `None`: all rows.
    pub limit: Option<usize>,
    pub seed: u64,
    pub settings: GenerationSettings,
    /// What generates (model path or served model name): part of the resume check.
    pub model: String,
    /// Skip targets whose data file is absent (with `--benchmarks all`), instead of failing.
    pub skip_missing_data: bool,
}

/// The settings a resumed run must share with the run that started the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunSettings {
    model: String,
    max_new_tokens: u32,
    limit: Option<usize>,
    seed: u64,
    // Defaults: what a directory started before these settings existed was run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_reasoning_tokens: Option<u32>,
    #[serde(default)]
    reasoning: ReasoningMode,
    /// Only under `auto`, the one mode it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    band: Option<UncertaintyBand>,
    /// What the scores' calibration was fitted on, where they are calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calibration: Option<String>,
}

fn check_run_settings(config: &EvalConfig) -> Result<(), EvalError> {
    let path = config.out_dir.join(RUN_SETTINGS_FILE);
    let current = RunSettings {
        model: config.model.clone(),
        max_new_tokens: config.settings.max_new_tokens,
        limit: config.limit,
        seed: config.seed,
        max_reasoning_tokens: config.settings.max_reasoning_tokens,
        reasoning: config.settings.reasoning,
        band: (config.settings.reasoning == ReasoningMode::Auto).then_some(config.settings.band),
        calibration: config
            .settings
            .calibration
            .as_ref()
            .map(|c| c.fitted_on.clone()),
    };
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
        let earlier: RunSettings =
            serde_json::from_str(&text).map_err(|e| EvalError::ResumeMismatch {
                path: path.clone(),
                message: format!("unreadable settings of the earlier run: {e}"),
            })?;
        if earlier != current {
            return Err(EvalError::ResumeMismatch {
                path,
                message: format!(
                    "this directory was started with {} but this run has {}",
                    serde_json::to_string(&earlier).unwrap_or_default(),
                    serde_json::to_string(&current).unwrap_or_default()
                ),
            });
        }
        return Ok(());
    }
    std::fs::create_dir_all(&config.out_dir).map_err(|e| EvalError::io(&config.out_dir, e))?;
    let text = serde_json::to_string_pretty(&current).expect("settings serialise") + "\n";
    std::fs::write(&path, text).map_err(|e| EvalError::io(&path, e))
}

/// A target that was run, with what the scorer needs.
#[derive(Debug, Clone)]
pub struct CompletedTarget {
    pub target: EvalTarget,
    pub records: Vec<BenchmarkRecord>,
    pub summary: TargetSummary,
}

/// The result of [`run_eval`].
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub completed: Vec<CompletedTarget>,
    /// Targets not run, with the reason (a missing data file under `skip_missing_data`).
    pub skipped: Vec<(EvalTarget, String)>,
    pub elapsed: Duration,
}

impl EvalOutcome {
    pub fn completion_tokens(&self) -> u64 {
        self.completed
            .iter()
            .map(|c| c.summary.completion_tokens)
            .sum()
    }

    pub fn generated_rows(&self) -> usize {
        self.completed.iter().map(|c| c.summary.generated).sum()
    }
}

/// The rows a run generates for a target: all of them, or the seeded stratified sample.
pub fn select_rows(
    target: &EvalTarget,
    records: &[BenchmarkRecord],
    limit: Option<usize>,
    seed: u64,
) -> Vec<usize> {
    match limit {
        None => (0..records.len()).collect(),
        Some(limit) => {
            let strata: Vec<String> = records.iter().map(BenchmarkRecord::stratum).collect();
            stratified_sample(&strata, limit, seed, target.prediction_dir)
        }
    }
}

/// Run every target of `config` in turn. Data files are all read (and checked) before the
/// first request, so a bad file fails fast rather than after hours of generation.
pub async fn run_eval(
    config: &EvalConfig,
    backend: Arc<dyn Backend>,
    progress: &mut dyn Progress,
) -> Result<EvalOutcome, EvalError> {
    let started = Instant::now();
    let mut loaded: Vec<(EvalTarget, Vec<BenchmarkRecord>)> = Vec::new();
    let mut skipped = Vec::new();
    for target in &config.targets {
        match load_records(target, &config.data_dir) {
            Ok(records) => loaded.push((target.clone(), records)),
            Err(EvalError::MissingDataFile { path, .. }) if config.skip_missing_data => {
                skipped.push((
                    target.clone(),
                    format!("data file {} is missing", path.display()),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    check_run_settings(config)?;
    let mut completed = Vec::new();
    for (target, records) in loaded {
        let selected = select_rows(&target, &records, config.limit, config.seed);
        let summary = generate_target(
            backend.clone(),
            &target,
            &records,
            &selected,
            &config.out_dir,
            &config.settings,
            progress,
        )
        .await?;
        completed.push(CompletedTarget {
            target,
            records,
            summary,
        });
    }
    Ok(EvalOutcome {
        completed,
        skipped,
        elapsed: started.elapsed(),
    })
}

/// Index the completed targets by prediction directory.
pub(crate) fn by_dir(outcome: &EvalOutcome) -> HashMap<&str, &CompletedTarget> {
    outcome
        .completed
        .iter()
        .map(|c| (c.target.prediction_dir, c))
        .collect()
}
