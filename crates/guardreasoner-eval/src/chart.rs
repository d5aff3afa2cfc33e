//! A report's charts (drawn by `guardreasoner-plot`, SVG and PNG): F1 per benchmark, this run
//! beside the paper's GuardReasoner models and strongest baselines; and, where rows carry label
//! scores, precision-recall curves and reliability diagrams.

use guardreasoner_core::calibration::Ranking;
use guardreasoner_core::report::PaperTables;
use guardreasoner_core::score::ScoreReport;
use guardreasoner_core::Task;
use guardreasoner_plot::{BarChart, Bars, Line, LineChart};

/// The paper's own models, always drawn when the tables have them.
pub const GUARDREASONER_METHODS: [&str; 3] =
    ["GuardReasoner 1B", "GuardReasoner 3B", "GuardReasoner 8B"];

/// The `count` strongest baselines (not GuardReasoner): highest mean of the three tasks'
/// weighted averages, among methods with all three. Ties go to the name that sorts first.
pub fn strongest_baselines(tables: &PaperTables, count: usize) -> Vec<String> {
    let mut methods: Vec<&String> = tables.tables.values().flat_map(|t| t.keys()).collect();
    methods.sort();
    methods.dedup();
    let mut scored: Vec<(f64, &String)> = methods
        .into_iter()
        .filter(|m| !m.starts_with("GuardReasoner"))
        .filter_map(|m| {
            let avgs: Option<Vec<f64>> = Task::ALL
                .iter()
                .map(|&t| tables.f1(t, m, "WeightedAvg"))
                .collect();
            avgs.map(|a| (a.iter().sum::<f64>() / a.len() as f64, m))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(count)
        .map(|(_, m)| m.clone())
        .collect()
}

/// F1 per benchmark: the groups are the scored benchmarks of `report`; the series are this
/// run (`label`), then GuardReasoner 1B/3B/8B and the two strongest baselines from `tables`.
pub fn f1_chart(
    report: &ScoreReport,
    label: &str,
    tables: Option<&PaperTables>,
    title: &str,
) -> BarChart {
    let scored: Vec<_> = report.benchmarks.iter().filter_map(|e| e.score()).collect();
    let groups: Vec<(String, Task)> = scored
        .iter()
        .map(|s| (s.benchmark.clone(), s.task))
        .collect();
    let mut series = vec![Bars {
        name: label.to_string(),
        values: scored.iter().map(|s| Some(s.f1)).collect(),
    }];
    if let Some(tables) = tables {
        let mut methods: Vec<String> = GUARDREASONER_METHODS
            .iter()
            .filter(|m| tables.has_method(m))
            .map(|m| m.to_string())
            .collect();
        methods.extend(strongest_baselines(tables, 2));
        for method in methods {
            series.push(Bars {
                values: groups
                    .iter()
                    .map(|(name, task)| tables.f1(*task, &method, name))
                    .collect(),
                name: format!("{method} (paper)"),
            });
        }
    }
    BarChart {
        title: title.to_string(),
        value_label: "F1 (%)".to_string(),
        groups: groups
            .iter()
            .map(|(name, task)| format!("{name} ({task})"))
            .collect(),
        series,
        max: 100.0,
    }
}

/// The scored benchmarks that have label scores, with their ranking.
fn rankings(report: &ScoreReport) -> Vec<(String, &Ranking)> {
    report
        .benchmarks
        .iter()
        .filter_map(|e| e.score())
        .filter_map(|s| {
            let r = s.ranking.as_deref()?;
            Some((format!("{} ({})", s.benchmark, s.task), r))
        })
        .collect()
}

/// Precision against recall per benchmark with label scores; `None` when no row has scores.
pub fn pr_chart(report: &ScoreReport, title: &str) -> Option<LineChart> {
    let lines: Vec<Line> = rankings(report)
        .into_iter()
        .filter(|(_, r)| !r.pr_curve.is_empty())
        .map(|(name, r)| Line {
            name: match r.pr_auc {
                Some(auc) => format!("{name}, PR-AUC {auc:.1}"),
                None => name,
            },
            points: r
                .pr_curve
                .iter()
                .map(|&(rec, prec, _)| (rec, prec))
                .collect(),
            markers: false,
        })
        .collect();
    (!lines.is_empty()).then(|| LineChart {
        title: title.to_string(),
        x_label: "recall".to_string(),
        y_label: "precision".to_string(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        lines,
        diagonal: false,
    })
}

/// Reliability diagram per benchmark with label scores (fraction positive against mean score
/// of each non-empty bin, beside the diagonal of perfect calibration); `None` without scores.
pub fn reliability_chart(report: &ScoreReport, title: &str) -> Option<LineChart> {
    let lines: Vec<Line> = rankings(report)
        .into_iter()
        .map(|(name, r)| Line {
            name: format!("{name}, ECE {:.3}", r.ece),
            points: r
                .reliability
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| (b.mean_score, b.positive_rate))
                .collect(),
            markers: true,
        })
        .filter(|l| !l.points.is_empty())
        .collect();
    (!lines.is_empty()).then(|| LineChart {
        title: title.to_string(),
        x_label: "mean score in bin".to_string(),
        y_label: "fraction positive".to_string(),
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        lines,
        diagonal: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use guardreasoner_core::label_scores::LabelScores;
    use guardreasoner_core::score::{
        build_report, score_dir, score_rows, BenchmarkEntry, PredictionRow, ScoreOptions,
    };
    use guardreasoner_core::{Benchmark, ParsePolicy};

    fn data() -> std::path::PathBuf {
        guardreasoner_testing::shared().join("data")
    }

    #[test]
    fn f1_bars_are_the_scores_and_the_paper_rows() {
        let tables = PaperTables::load(&data().join("paper-tables.json")).unwrap();
        let dir = data().join("reference-predictions/paper-v1/8B");
        let report = score_dir(&dir, &ScoreOptions::default()).unwrap();
        let chart = f1_chart(&report, "run", Some(&tables), "F1");
        let scored: Vec<_> = report.benchmarks.iter().filter_map(|e| e.score()).collect();
        assert!(!scored.is_empty());
        assert_eq!(chart.groups.len(), scored.len());
        let first = scored[0];
        assert_eq!(
            chart.groups[0],
            format!("{} ({})", first.benchmark, first.task)
        );
        assert_eq!(chart.series[0].values[0], Some(first.f1));
        // This run, GuardReasoner 1B/3B/8B and two baselines, each as the paper has it.
        assert_eq!(chart.series.len(), 6);
        assert_eq!(chart.series[3].name, "GuardReasoner 8B (paper)");
        assert_eq!(
            chart.series[3].values[0],
            tables.f1(first.task, "GuardReasoner 8B", &first.benchmark)
        );
        // The official predictions carry no label scores: no ranking charts.
        assert!(pr_chart(&report, "PR").is_none());
        assert!(reliability_chart(&report, "R").is_none());
    }

    #[test]
    fn scored_rows_get_a_pr_curve_and_a_reliability_diagram() {
        let bench = Benchmark::find("AegisSafetyTest")[0];
        let answer = |label: &str| {
            format!("Answers: \nRequest: {label}\nCompletion: None\nResponse: None\n")
        };
        let rows: Vec<PredictionRow> = [(true, 0.9), (false, 0.7), (true, 0.35), (false, 0.1)]
            .into_iter()
            .map(|(harmful, p)| PredictionRow {
                prompt: String::new(),
                label: if harmful { "harmful" } else { "unharmful" }.into(),
                predict: answer(if p > 0.5 { "harmful" } else { "unharmful" }),
                scores: Some(LabelScores {
                    request: Some(p),
                    ..LabelScores::default()
                }),
                ..PredictionRow::default()
            })
            .collect();
        let entry = BenchmarkEntry::Scored(score_rows(&rows, bench, ParsePolicy::Strict, None));
        let report = build_report("p".into(), ParsePolicy::Strict, vec![entry]);
        let pr = pr_chart(&report, "PR").unwrap();
        assert_eq!(pr.lines.len(), 1);
        assert!(pr.lines[0]
            .name
            .starts_with("AegisSafetyTest (prompt), PR-AUC"));
        assert!(pr.lines[0]
            .points
            .iter()
            .all(|&(r, p)| (0.0..=1.0).contains(&r) && (0.0..=1.0).contains(&p)));
        let rel = reliability_chart(&report, "R").unwrap();
        assert!(rel.diagonal);
        // Four rows in four bins: one point per non-empty bin, at its mean score.
        let xs: Vec<f64> = rel.lines[0].points.iter().map(|p| p.0).collect();
        assert_eq!(xs.len(), 4);
        assert!(
            (xs[0] - 0.1).abs() < 1e-6 && (xs[3] - 0.9).abs() < 1e-6,
            "{xs:?}"
        );
        guardreasoner_plot::Chart::from(rel).svg().unwrap();
    }
}
