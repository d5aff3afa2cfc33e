//! Choosing `--reasoning auto`'s uncertainty band without generating again: given an eval
//! run with `--reasoning none` and one with `full` over the same rows (a development split),
//! the `auto` verdict of every row at any band is known exactly (greedy decoding: `auto`
//! returns the `none` generation when certain and the `full` one when it escalates), so each
//! band's F1 and generated tokens are computed from the two files.

use crate::error::EvalError;
use crate::run::EvalRow;
use guardreasoner_core::calibration::{Calibration, GuardCalibration};
use guardreasoner_core::cascade::needs_reasoning;
use guardreasoner_core::jsonl::read_jsonl;
use guardreasoner_core::score::{score_rows, PredictionRow, PREDICTIONS_FILE};
use guardreasoner_core::{parse_strict, ParsePolicy, Task, UncertaintyBand, BENCHMARKS};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// How `auto` does on one benchmark at one band (`None`: the `full` or `none` run alone).
#[derive(Debug, Clone, Serialize)]
pub struct CascadePoint {
    pub benchmark: String,
    /// The task the benchmark's F1 is of (`prompt`, `response`, `refusal`).
    pub task: guardreasoner_core::Task,
    /// `full`, `none` or `auto`.
    pub mode: &'static str,
    pub band: Option<UncertaintyBand>,
    pub rows: usize,
    /// Rows `auto` reasoned fully.
    pub escalated: usize,
    /// Generated tokens per row (an escalated row counts both generations).
    pub mean_tokens: f64,
    /// Strict F1 (%) at the model's labels.
    pub f1: f64,
    pub parse_failures: usize,
}

fn point(
    bench: &guardreasoner_core::Benchmark,
    mode: &'static str,
    band: Option<UncertaintyBand>,
    rows: &[EvalRow],
) -> CascadePoint {
    let predictions: Vec<PredictionRow> = rows.iter().cloned().map(PredictionRow::from).collect();
    let score = score_rows(&predictions, bench, ParsePolicy::Strict, None);
    let tokens: u64 = rows.iter().map(tokens).sum();
    CascadePoint {
        benchmark: bench.name.to_string(),
        task: bench.task,
        mode,
        band,
        rows: rows.len(),
        escalated: rows.iter().filter(|r| r.escalated == Some(true)).count(),
        mean_tokens: tokens as f64 / rows.len().max(1) as f64,
        f1: score.f1,
        parse_failures: score.parse_failures,
    }
}

/// The rows of one benchmark that a `none` run and a `full` run both generated, paired by
/// row index.
pub struct PairedRuns {
    pub benchmark: &'static guardreasoner_core::Benchmark,
    pub pairs: Vec<(EvalRow, EvalRow)>,
}

impl PairedRuns {
    /// What `auto` at `band` answers for each row: the `none` row where it is certain, the
    /// `full` one (marked escalated, counting both generations' tokens) where it is not.
    pub fn auto_rows(&self, band: UncertaintyBand) -> Vec<EvalRow> {
        self.pairs
            .iter()
            .map(|(n, f)| {
                if needs_reasoning(&parse_strict(&n.predict), n.scores.as_ref(), band) {
                    EvalRow {
                        completion_tokens: Some(tokens(n) + tokens(f)),
                        escalated: Some(true),
                        ..f.clone()
                    }
                } else {
                    EvalRow {
                        escalated: Some(false),
                        ..n.clone()
                    }
                }
            })
            .collect()
    }
}

fn tokens(r: &EvalRow) -> u64 {
    r.completion_tokens.unwrap_or(0)
}

/// Every benchmark both directories hold (WildGuardTest aside: its gold labels need the data
/// file), on the rows both runs generated.
pub fn paired_runs(none_dir: &Path, full_dir: &Path) -> Result<Vec<PairedRuns>, EvalError> {
    let mut runs = Vec::new();
    for bench in BENCHMARKS.iter().filter(|b| b.name != "WildGuardTest") {
        let (none_path, full_path) = (
            none_dir.join(bench.prediction_dir).join(PREDICTIONS_FILE),
            full_dir.join(bench.prediction_dir).join(PREDICTIONS_FILE),
        );
        if !none_path.exists() || !full_path.exists() {
            continue;
        }
        let none: Vec<EvalRow> = read_jsonl(&none_path)?;
        let full: Vec<EvalRow> = read_jsonl(&full_path)?;
        let mut full_by_index: HashMap<usize, EvalRow> =
            full.into_iter().map(|r| (r.index, r)).collect();
        let mut pairs = Vec::new();
        for n in none {
            let Some(f) = full_by_index.remove(&n.index) else {
                continue;
            };
            if f.prompt != n.prompt {
                return Err(EvalError::ResumeMismatch {
                    path: full_path.clone(),
                    message: format!(
                        "row {} has another prompt than in {}",
                        n.index,
                        none_path.display()
                    ),
                });
            }
            pairs.push((n, f));
        }
        if !pairs.is_empty() {
            runs.push(PairedRuns {
                benchmark: bench,
                pairs,
            });
        }
    }
    Ok(runs)
}

/// Every paired benchmark scored as `full`, `none` and `auto` at each band.
pub fn sweep(
    none_dir: &Path,
    full_dir: &Path,
    bands: &[UncertaintyBand],
) -> Result<Vec<CascadePoint>, EvalError> {
    let mut points = Vec::new();
    for run in paired_runs(none_dir, full_dir)? {
        let bench = run.benchmark;
        let full_rows: Vec<EvalRow> = run.pairs.iter().map(|(_, f)| f.clone()).collect();
        let none_rows: Vec<EvalRow> = run.pairs.iter().map(|(n, _)| n.clone()).collect();
        points.push(point(bench, "full", None, &full_rows));
        points.push(point(bench, "none", None, &none_rows));
        for &band in bands {
            points.push(point(bench, "auto", Some(band), &run.auto_rows(band)));
        }
    }
    Ok(points)
}

/// The guard's calibration by stage, fitted on development runs: what `auto` at `band`
/// answers at once is fitted on the `none` rows it keeps, what it reasons about on the
/// `full` rows it escalates to, each task pooled over the benchmarks.
pub fn fit_calibration(
    runs: &[PairedRuns],
    band: UncertaintyBand,
    fitted_on: &str,
) -> GuardCalibration {
    let mut at_once: Vec<(Task, Vec<(bool, f32)>)> = Vec::new();
    let mut reasoned: Vec<(Task, Vec<(bool, f32)>)> = Vec::new();
    for run in runs {
        let (escalated, kept): (Vec<EvalRow>, Vec<EvalRow>) = run
            .auto_rows(band)
            .into_iter()
            .partition(|r| r.escalated == Some(true));
        for (rows, out) in [(kept, &mut at_once), (escalated, &mut reasoned)] {
            let predictions: Vec<PredictionRow> =
                rows.into_iter().map(PredictionRow::from).collect();
            let score = score_rows(&predictions, run.benchmark, ParsePolicy::Strict, None);
            if let Some(ranking) = score.ranking {
                out.push((run.benchmark.task, ranking.pairs));
            }
        }
    }
    let fit = |stage: &[(Task, Vec<(bool, f32)>)]| {
        Calibration::fit(
            format!("{fitted_on} ({band})"),
            stage.iter().map(|(t, p)| (*t, p.as_slice())),
        )
    };
    GuardCalibration {
        fitted_on: format!("{fitted_on}, auto band [{}, {}]", band.low, band.high),
        at_once: fit(&at_once),
        reasoned: fit(&reasoned),
    }
}

/// F1 against mean generated tokens per verdict, one line per benchmark through `none`, the
/// `auto` bands and `full` (fewest tokens first): the cost of each point of F1.
pub fn tokens_chart(points: &[CascadePoint], title: &str) -> guardreasoner_plot::LineChart {
    let mut benchmarks: Vec<&str> = points.iter().map(|p| p.benchmark.as_str()).collect();
    benchmarks.dedup();
    let lines = benchmarks
        .into_iter()
        .map(|name| {
            let mut xy: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.benchmark == name)
                .map(|p| (p.mean_tokens, p.f1))
                .collect();
            xy.sort_by(|a, b| a.0.total_cmp(&b.0));
            guardreasoner_plot::Line {
                name: name.to_string(),
                points: xy,
                markers: true,
            }
        })
        .collect();
    guardreasoner_plot::LineChart {
        title: title.to_string(),
        x_label: "generated tokens per verdict (mean)".to_string(),
        y_label: "F1 (%)".to_string(),
        x_range: None,
        y_range: None,
        lines,
        diagonal: false,
    }
}

/// The sweep as a Markdown table.
pub fn markdown(points: &[CascadePoint]) -> String {
    let mut md = String::from(
        "| Benchmark | Reasoning | Band | Rows | Escalated | Mean tokens | F1 (strict) | Parse failures |\n|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} ({:.0}%) | {:.1} | {:.2} | {} |\n",
            p.benchmark,
            p.mode,
            p.band.map_or("—".to_string(), |b| format!(
                "[{:.2}, {:.2}]",
                b.low, b.high
            )),
            p.rows,
            p.escalated,
            100.0 * p.escalated as f64 / p.rows.max(1) as f64,
            p.mean_tokens,
            p.f1,
            p.parse_failures
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardreasoner_core::jsonl::write_records_atomic;
    use guardreasoner_core::LabelScores;

    fn row(index: usize, gold: &str, said: &str, score: f32, tokens: u64) -> EvalRow {
        EvalRow {
            prompt: format!("conversation {index}"),
            label: gold.into(),
            predict: format!("Answers: \nRequest: {said}\nCompletion: None\nResponse: None"),
            index,
            finish_reason: "stop".into(),
            completion_tokens: Some(tokens),
            scores: Some(LabelScores {
                request: Some(score),
                completion: None,
                response: None,
            }),
            forced: Some(false),
            escalated: None,
            raw_scores: None,
            error: None,
        }
    }

    fn write(dir: &Path, rows: &[EvalRow]) {
        let path = dir.join("ToxicChat").join(PREDICTIONS_FILE);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_records_atomic(&path, rows, false).unwrap();
    }

    #[test]
    fn auto_takes_the_full_verdict_exactly_where_the_band_holds_the_score() {
        let (none, full) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let gold = ["harmful", "unharmful", "harmful", "unharmful"];
        // Unreasoned: right and sure, wrong and unsure, wrong and unsure, right and sure.
        write(
            none.path(),
            &[
                row(0, gold[0], "harmful", 0.95, 20),
                row(1, gold[1], "harmful", 0.6, 20),
                row(2, gold[2], "unharmful", 0.3, 20),
                row(3, gold[3], "unharmful", 0.02, 20),
            ],
        );
        // Reasoned: all right.
        let full_rows: Vec<EvalRow> = (0..4).map(|i| row(i, gold[i], gold[i], 0.5, 200)).collect();
        write(full.path(), &full_rows);
        let wide = UncertaintyBand::new(0.1, 0.9).unwrap();
        let narrow = UncertaintyBand::new(0.45, 0.55).unwrap();
        let points = sweep(none.path(), full.path(), &[wide, narrow]).unwrap();
        let summary: Vec<(&str, usize, f64, f64)> = points
            .iter()
            .map(|p| (p.mode, p.escalated, p.mean_tokens, p.f1))
            .collect();
        assert_eq!(
            summary,
            [
                ("full", 0, 200.0, 100.0),
                ("none", 0, 20.0, 50.0),
                ("auto", 2, 120.0, 100.0),
                ("auto", 0, 20.0, 50.0),
            ]
        );
        assert!(markdown(&points)
            .contains("| ToxicChat | auto | [0.10, 0.90] | 4 | 2 (50%) | 120.0 | 100.00 | 0 |"));
        // The chart: one line, fewest tokens first, every point of the sweep.
        let chart = tokens_chart(&points, "t");
        assert_eq!(chart.lines.len(), 1);
        let xs: Vec<f64> = chart.lines[0].points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [20.0, 20.0, 120.0, 200.0]);
        guardreasoner_plot::Chart::from(chart).png().unwrap();
    }

    #[test]
    fn the_fit_maps_kept_rows_at_once_and_escalated_rows_as_reasoned() {
        let (none, full) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // 60 rows: the unreasoned answer is sure (0.95 / 0.05) on the first 40, of which a
        // third are wrong, and unsure (0.4) on the last 20; the reasoned answer is right.
        let gold = |i: usize| if i % 2 == 0 { "harmful" } else { "unharmful" };
        let none_rows: Vec<EvalRow> = (0..60)
            .map(|i| {
                let wrong = i < 40 && i % 3 == 0;
                let said_harmful = (gold(i) == "harmful") != wrong;
                let (said, score) = match (i < 40, said_harmful) {
                    (true, true) => ("harmful", 0.95),
                    (true, false) => ("unharmful", 0.05),
                    (false, _) => ("unharmful", 0.4),
                };
                row(i, gold(i), said, score, 20)
            })
            .collect();
        write(none.path(), &none_rows);
        let full_rows: Vec<EvalRow> = (0..60)
            .map(|i| {
                row(
                    i,
                    gold(i),
                    gold(i),
                    if gold(i) == "harmful" { 0.8 } else { 0.2 },
                    200,
                )
            })
            .collect();
        write(full.path(), &full_rows);
        let band = UncertaintyBand::new(0.3, 0.55).unwrap();
        let runs = paired_runs(none.path(), full.path()).unwrap();
        let auto = runs[0].auto_rows(band);
        assert_eq!(
            auto.iter().filter(|r| r.escalated == Some(true)).count(),
            20
        );
        assert_eq!(
            auto[55].completion_tokens,
            Some(220),
            "both generations counted"
        );
        let cal = fit_calibration(&runs, band, "dev");
        assert_eq!(cal.at_once.rows[0], 40);
        assert_eq!(cal.reasoned.rows[0], 20);
        // A sure-but-often-wrong 0.95 is softened; the reasoned 0.8, always right, sharpened.
        let at_once = cal.at_once.request.unwrap().apply(0.95);
        let reasoned = cal.reasoned.request.unwrap().apply(0.8);
        assert!(at_once < 0.9, "{at_once}");
        assert!(reasoned > 0.8, "{reasoned}");
    }
}
