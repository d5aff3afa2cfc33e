//! Scoring a finished run and writing `report.md`, `report.json` and its charts (`f1`, and
//! `pr` and `reliability` where rows carry label scores; each `.svg` and `.png`).

use crate::chart::{f1_chart, pr_chart, reliability_chart};
use crate::error::EvalError;
use crate::run::{by_dir, EvalConfig, EvalOutcome, EvalRow};
use guardreasoner_core::jsonl::read_jsonl;
use guardreasoner_core::report::{render, Comparison, Format, PaperTables, DEFAULT_COMPARE};
use guardreasoner_core::score::{
    build_report, score_rows, BenchmarkEntry, PredictionRow, ScoreReport, WildGuardRow,
    PREDICTIONS_FILE,
};
use guardreasoner_core::{ParsePolicy, ReasoningMode, BENCHMARKS};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Score the targets of a run under `policy`. Benchmarks not in the run are `Missing`.
///
/// This is `score_dir` with one difference: WildGuardTest's gold labels are taken from each
/// row's `index` into the data file, so a sampled (`--limit`) file is scored against the right
/// rows (`score_dir` aligns them by position, which is only right for a full run).
pub fn score_outcome(
    outcome: &EvalOutcome,
    out_dir: &Path,
    policy: ParsePolicy,
) -> Result<ScoreReport, EvalError> {
    let completed = by_dir(outcome);
    let mut entries = Vec::new();
    for bench in &BENCHMARKS {
        let path = out_dir.join(bench.prediction_dir).join(PREDICTIONS_FILE);
        let Some(done) = completed.get(bench.prediction_dir) else {
            entries.push(BenchmarkEntry::Missing {
                benchmark: bench.name.to_string(),
                task: bench.task,
                path,
            });
            continue;
        };
        let rows: Vec<EvalRow> = read_jsonl(&path)?;
        let mut wildguard: Vec<WildGuardRow> = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = done
                .records
                .get(row.index)
                .ok_or_else(|| EvalError::ResumeMismatch {
                    path: path.clone(),
                    message: format!("row {} is past the end of the benchmark file", row.index),
                })?;
            wildguard.push(record.wildguard.clone());
        }
        let rows: Vec<PredictionRow> = rows.into_iter().map(PredictionRow::from).collect();
        entries.push(BenchmarkEntry::Scored(score_rows(
            &rows,
            bench,
            policy,
            Some(&wildguard),
        )));
    }
    Ok(build_report(out_dir.to_path_buf(), policy, entries))
}

/// What [`write_report`] produced.
#[derive(Debug, Clone)]
pub struct WrittenReport {
    pub strict: ScoreReport,
    pub paper: ScoreReport,
    /// The strict tables as plain text, for the terminal.
    pub table: String,
    /// `report.md`, `report.json`, then each chart's SVG and PNG.
    pub files: Vec<PathBuf>,
}

/// Describe the run for the report.
fn run_json(
    config: &EvalConfig,
    outcome: &EvalOutcome,
    label: &str,
    backend: &str,
) -> serde_json::Value {
    let seconds = outcome.elapsed.as_secs_f64();
    let tokens = outcome.completion_tokens();
    json!({
        "label": label,
        "backend": backend,
        "model": config.model,
        "benchmarks": outcome.completed.iter().map(|c| c.target.name()).collect::<Vec<_>>(),
        "skipped": outcome.skipped.iter().map(|(t, why)| json!({"benchmark": t.name(), "reason": why})).collect::<Vec<_>>(),
        "limit": config.limit,
        "seed": config.seed,
        "max_new_tokens": config.settings.max_new_tokens,
        "max_reasoning_tokens": config.settings.max_reasoning_tokens,
        "reasoning": config.settings.reasoning,
        "uncertainty_band": (config.settings.reasoning == ReasoningMode::Auto).then_some(config.settings.band),
        "concurrency": config.settings.concurrency,
        "elapsed_s": seconds,
        "generated_rows": outcome.generated_rows(),
        "completion_tokens": tokens,
        "tokens_per_s": if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 },
        "targets": outcome.completed.iter().map(|c| &c.summary).collect::<Vec<_>>(),
    })
}

fn run_markdown(config: &EvalConfig, outcome: &EvalOutcome, label: &str, backend: &str) -> String {
    let mut md = String::new();
    let seconds = outcome.elapsed.as_secs_f64();
    let tokens = outcome.completion_tokens();
    md.push_str(&format!("# GuardReasoner evaluation: {label}\n\n"));
    md.push_str(&format!("- Backend: {backend}\n"));
    md.push_str(&format!(
        "- Generation: greedy, at most {} new tokens, {} requests in flight\n",
        config.settings.max_new_tokens, config.settings.concurrency
    ));
    let settings = &config.settings;
    md.push_str(&match settings.reasoning {
        ReasoningMode::Auto => format!(
            "- Reasoning: auto (answers at once; reasons fully where a score is in [{}, {}])\n",
            settings.band.low, settings.band.high
        ),
        mode => format!("- Reasoning: {mode}\n"),
    });
    if let Some(n) = settings.max_reasoning_tokens {
        md.push_str(&format!(
            "- Reasoning budget: {n} tokens, then the answer is forced\n"
        ));
    }
    match config.limit {
        Some(n) => md.push_str(&format!(
            "- Sample: at most {n} rows per benchmark file, stratified by gold label, seed {} (not the full benchmarks: not directly comparable with the paper)\n",
            config.seed
        )),
        None => md.push_str("- Sample: every row of each benchmark file\n"),
    }
    md.push_str(&format!(
        "- This run generated {} rows, {tokens} tokens in {seconds:.1} s ({:.1} tokens/s)\n",
        outcome.generated_rows(),
        if seconds > 0.0 {
            tokens as f64 / seconds
        } else {
            0.0
        }
    ));
    for (t, why) in &outcome.skipped {
        md.push_str(&format!("- Not run: {} ({why})\n", t.name()));
    }
    md.push_str("\n| Benchmark file | Rows | Of | Resumed | Generated | Too long (failed closed) | Cut at max tokens | Answer forced | Escalated (auto) | Mean tokens |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in &outcome.completed {
        let s = &c.summary;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |\n",
            s.prediction_dir,
            s.rows,
            s.data_rows,
            s.resumed,
            s.generated,
            s.too_long,
            s.truncated,
            s.forced,
            s.escalated,
            s.mean_tokens
        ));
    }
    md
}

/// Score the run under the strict and the paper policy and write `report.md`, `report.json`
/// and the charts (`f1`, and `pr` and `reliability` where rows have label scores; SVG and
/// PNG) into the output directory. `tables` adds the paper's baselines.
pub fn write_report(
    config: &EvalConfig,
    outcome: &EvalOutcome,
    label: &str,
    backend: &str,
    tables: Option<&PaperTables>,
) -> Result<WrittenReport, EvalError> {
    let out = &config.out_dir;
    let strict = score_outcome(outcome, out, ParsePolicy::Strict)?;
    let paper = score_outcome(outcome, out, ParsePolicy::Paper)?;
    let comparison = tables.map(|tables| Comparison {
        tables,
        methods: DEFAULT_COMPARE
            .iter()
            .filter(|m| tables.has_method(m))
            .map(|m| m.to_string())
            .collect(),
    });
    let compare = comparison.as_ref();

    let mut md = run_markdown(config, outcome, label, backend);
    md.push_str("\n## F1, strict parsing (fail closed: an unreadable answer counts as wrong)\n\n");
    md.push_str(&render(&strict, Format::Markdown, label, compare));
    md.push_str("\n## F1, the paper's parsing (official evaluate.py rule)\n\n");
    md.push_str(&render(&paper, Format::Markdown, label, compare));

    let parse =
        |text: String| serde_json::from_str::<serde_json::Value>(&text).expect("render emits JSON");
    let report_json = json!({
        "run": run_json(config, outcome, label, backend),
        "strict": parse(render(&strict, Format::Json, label, compare)),
        "paper": parse(render(&paper, Format::Json, label, compare)),
    });
    let mut charts: Vec<(&str, &str, guardreasoner_plot::Chart)> = vec![(
        "f1",
        "F1 per benchmark",
        f1_chart(&strict, label, tables, "F1 per benchmark (strict parsing)").into(),
    )];
    if let Some(c) = pr_chart(&strict, "Precision-recall of the label scores") {
        charts.push(("pr", "Precision-recall", c.into()));
    }
    if let Some(c) = reliability_chart(&strict, "Reliability of the label scores") {
        charts.push(("reliability", "Reliability diagram", c.into()));
    }
    md.push_str("\n## Charts\n");
    for (stem, alt, _) in &charts {
        md.push_str(&format!("\n![{alt}]({stem}.svg) ([PNG]({stem}.png))\n"));
    }

    let mut files = vec![out.join("report.md"), out.join("report.json")];
    let contents = [
        md,
        serde_json::to_string_pretty(&report_json).expect("report serialises") + "\n",
    ];
    for (path, text) in files.iter().zip(contents) {
        std::fs::write(path, text).map_err(|e| EvalError::io(path, e))?;
    }
    for (stem, _, chart) in &charts {
        files.extend(chart.write(&out.join(stem))?);
    }
    Ok(WrittenReport {
        table: render(&strict, Format::Table, label, compare),
        strict,
        paper,
        files,
    })
}
