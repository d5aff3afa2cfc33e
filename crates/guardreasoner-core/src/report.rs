//! Rendering score reports as the paper's tables (text, markdown) or JSON, with the paper's
//! published numbers beside them.

use crate::jsonl::DataError;
use crate::labels::Task;
use crate::score::{BenchmarkEntry, ScoreReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// `paper-tables.json`: the paper's F1 tables for every method.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PaperTables {
    /// Column names per task (`prompt`, `response`, `refusal`); the last is `WeightedAvg`.
    pub columns: BTreeMap<String, Vec<String>>,
    /// `tables[task][method]` is aligned with `columns[task]`.
    pub tables: BTreeMap<String, BTreeMap<String, Vec<Option<f64>>>>,
}

/// The methods shown by `--compare` when none are named: ours and the strongest baselines.
pub const DEFAULT_COMPARE: [&str; 6] = [
    "GuardReasoner 1B",
    "GuardReasoner 3B",
    "GuardReasoner 8B",
    "GPT-4o+CoT",
    "LLaMA Guard 3 8B",
    "WildGuard 7B",
];

impl PaperTables {
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| DataError::Json {
            path: path.to_path_buf(),
            line: e.line(),
            message: e.to_string(),
        })
    }

    /// The paper's F1 for `method` on `column` (a benchmark name or `WeightedAvg`).
    pub fn f1(&self, task: Task, method: &str, column: &str) -> Option<f64> {
        let key = task.to_string();
        let idx = self.columns.get(&key)?.iter().position(|c| c == column)?;
        *self.tables.get(&key)?.get(method)?.get(idx)?
    }

    pub fn has_method(&self, method: &str) -> bool {
        self.tables.values().any(|t| t.contains_key(method))
    }
}

/// Output formats of `score` and `eval` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Markdown,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Format::Table),
            "markdown" | "md" => Ok(Format::Markdown),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown format {other:?} (expected table, markdown or json)"
            )),
        }
    }
}

/// Baselines to print beside a report.
pub struct Comparison<'a> {
    pub tables: &'a PaperTables,
    pub methods: Vec<String>,
}

const AVG: &str = "WeightedAvg";

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.2}"))
}

/// Render a report. `label` names this run's row (e.g. the prediction directory).
pub fn render(
    report: &ScoreReport,
    format: Format,
    label: &str,
    compare: Option<&Comparison>,
) -> String {
    match format {
        Format::Json => render_json(report, compare),
        Format::Table | Format::Markdown => {
            render_tables(report, format == Format::Markdown, label, compare)
        }
    }
}

fn render_json(report: &ScoreReport, compare: Option<&Comparison>) -> String {
    let mut value = serde_json::to_value(report).expect("report serialises");
    if let Some(c) = compare {
        let mut paper = serde_json::Map::new();
        for method in &c.methods {
            let mut per_task = serde_json::Map::new();
            for task in Task::ALL {
                let cols = c
                    .tables
                    .columns
                    .get(&task.to_string())
                    .cloned()
                    .unwrap_or_default();
                let row: serde_json::Map<String, serde_json::Value> = cols
                    .iter()
                    .map(|col| {
                        (
                            col.clone(),
                            serde_json::json!(c.tables.f1(task, method, col)),
                        )
                    })
                    .collect();
                per_task.insert(task.to_string(), row.into());
            }
            paper.insert(method.clone(), per_task.into());
        }
        value["paper"] = paper.into();
    }
    serde_json::to_string_pretty(&value).expect("json serialises") + "\n"
}

fn render_tables(
    report: &ScoreReport,
    markdown: bool,
    label: &str,
    compare: Option<&Comparison>,
) -> String {
    let mut out = String::new();
    let policy = match report.policy {
        crate::verdict::ParsePolicy::Paper => "paper (official evaluate.py)",
        crate::verdict::ParsePolicy::Strict => "strict (fail closed)",
    };
    let _ = writeln!(
        out,
        "Predictions: {}   parse policy: {policy}",
        report.predictions.display()
    );
    for task in Task::ALL {
        let entries: Vec<&BenchmarkEntry> = report
            .benchmarks
            .iter()
            .filter(|e| e.task() == task)
            .collect();
        let mut header: Vec<String> = vec!["Method".into()];
        header.extend(entries.iter().map(|e| e.name().to_string()));
        header.push("Weighted Avg".into());
        let avg = report.task_average(task);
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut ours = vec![label.to_string()];
        ours.extend(entries.iter().map(|e| cell(e.score().map(|s| s.f1))));
        ours.push(cell(avg.paper_weighted_f1));
        rows.push(ours);
        if let Some(c) = compare {
            for method in &c.methods {
                let mut r = vec![format!("{method} (paper)")];
                r.extend(
                    entries
                        .iter()
                        .map(|e| cell(c.tables.f1(task, method, e.name()))),
                );
                r.push(cell(c.tables.f1(task, method, AVG)));
                rows.push(r);
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{}{} (F1, %)",
            if markdown { "### " } else { "" },
            task.title()
        );
        write_grid(&mut out, &header, &rows, markdown);
        if !avg.left_out.is_empty() {
            let _ = writeln!(
                out,
                "{}Not scored, left out of the averages: {}.",
                if markdown { "\n" } else { "" },
                avg.left_out.join(", ")
            );
        }
        if let Some(rw) = avg.row_weighted_f1 {
            let _ = writeln!(
                out,
                "Average weighted by prediction rows instead of the paper's sample counts: {rw:.2}"
            );
        }
    }
    let _ = writeln!(out);
    match report.overall_paper_weighted_f1 {
        Some(v) => {
            let _ = writeln!(out, "Overall (mean of the three task averages): {v:.2}");
        }
        None => {
            let _ = writeln!(
                out,
                "Overall: — (needs at least one scored benchmark in each of the three tasks)"
            );
        }
    }
    // Details: what the F1 rests on, and how many outputs could not be read.
    let _ = writeln!(out);
    let _ = writeln!(out, "{}Details", if markdown { "### " } else { "" });
    let header: Vec<String> = [
        "Benchmark",
        "Task",
        "Rows",
        "No gold",
        "F1 95% CI",
        "P",
        "R",
        "Acc",
        "TP/FP/TN/FN",
        "Parse failures",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rows = Vec::new();
    for e in &report.benchmarks {
        let mut r = vec![e.name().to_string(), e.task().to_string()];
        match e {
            BenchmarkEntry::Scored(s) => {
                let c = s.confusion;
                let mut failures = format!("{} ({:.1}%)", s.parse_failures, s.failure_rate);
                if !s.failure_kinds.is_empty() {
                    let kinds: Vec<String> = s
                        .failure_kinds
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect();
                    let _ = write!(failures, ": {}", kinds.join(", "));
                }
                if s.skipped_failures > 0 {
                    let _ = write!(
                        failures,
                        "; {} not counted (gold `harmful`, as evaluate.py)",
                        s.skipped_failures
                    );
                }
                r.extend([
                    s.rows.to_string(),
                    s.no_gold.to_string(),
                    s.f1_ci95
                        .map_or(String::new(), |[lo, hi]| format!("{lo:.1}-{hi:.1}")),
                    format!("{:.2}", s.precision),
                    format!("{:.2}", s.recall),
                    format!("{:.2}", s.accuracy),
                    format!("{}/{}/{}/{}", c.tp, c.fp, c.tn, c.fn_),
                    failures,
                ]);
            }
            BenchmarkEntry::Missing { .. } => r.extend([
                "missing".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]),
            BenchmarkEntry::NoGoldFile { .. } => r.extend([
                "no gold file (--wildguard)".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]),
        }
        rows.push(r);
    }
    write_grid(&mut out, &header, &rows, markdown);
    write_label_scores(&mut out, report, markdown);
    out
}

/// The label-score table (ranking and calibration), where any benchmark's rows had scores.
fn write_label_scores(out: &mut String, report: &ScoreReport, markdown: bool) {
    let scored: Vec<&crate::score::BenchmarkScore> = report
        .benchmarks
        .iter()
        .filter_map(|e| e.score())
        .filter(|s| s.ranking.is_some())
        .collect();
    if scored.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}Label scores (probability of the positive label at the answer)",
        if markdown { "### " } else { "" }
    );
    if let Some(t) = scored.iter().find_map(|s| s.threshold) {
        let _ = writeln!(
            out,
            "F1 above: harmful tasks decided by score at threshold {t} (not the written label)."
        );
    }
    let header: Vec<String> = [
        "Benchmark",
        "Task",
        "Scored",
        "PR-AUC",
        "ROC-AUC",
        "ECE",
        "F1-best threshold (this file: dev splits only)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = scored
        .iter()
        .map(|s| {
            let r = s.ranking.as_ref().expect("filtered above");
            vec![
                s.benchmark.clone(),
                s.task.to_string(),
                r.scored.to_string(),
                cell(r.pr_auc),
                cell(r.roc_auc),
                format!("{:.3}", r.ece),
                r.best_threshold
                    .map_or(String::new(), |(t, f1)| format!("{t:.3} (F1 {f1:.2})")),
            ]
        })
        .collect();
    write_grid(out, &header, &rows, markdown);
}

fn write_grid(out: &mut String, header: &[String], rows: &[Vec<String>], markdown: bool) {
    if markdown {
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(
            out,
            "|{}|",
            header
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---" } else { "---:" })
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        return;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if i == 0 || i == cells.len() - 1 && cells.len() > 8 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{}", line(header));
    let _ = writeln!(
        out,
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r));
    }
}
