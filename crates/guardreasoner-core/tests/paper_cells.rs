//! The scorer against the paper's published numbers: the official predictions, scored with the
//! official rule, must give the paper's table cells to two decimals.

mod common;
use guardreasoner_core::report::PaperTables;
use guardreasoner_core::score::{score_dir, ScoreOptions};
use guardreasoner_core::{ParsePolicy, Task};

const CELLS: [(&str, Task, [f64; 3]); 6] = [
    ("HarmBenchPrompt", Task::Prompt, [96.31, 89.10, 91.86]),
    ("AegisSafetyTest", Task::Prompt, [89.34, 91.39, 90.18]),
    ("SimpleSafetyTests", Task::Prompt, [98.99, 100.00, 99.50]),
    ("HarmBenchResponse", Task::Response, [84.75, 85.66, 85.47]),
    (
        "XSTestResponseHarmful",
        Task::Response,
        [90.12, 91.36, 94.34],
    ),
    (
        "XSTestResponseRefusal",
        Task::Refusal,
        [91.34, 80.31, 93.68],
    ),
];

fn paper_report(size: &str, policy: ParsePolicy) -> guardreasoner_core::score::ScoreReport {
    let dir = common::shared()
        .join("data/reference-predictions/paper-v1")
        .join(size);
    score_dir(
        &dir,
        &ScoreOptions {
            policy,
            wildguard_file: None,
            ..ScoreOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn paper_policy_reproduces_all_18_cells() {
    for (i, size) in ["1B", "3B", "8B"].into_iter().enumerate() {
        let report = paper_report(size, ParsePolicy::Paper);
        for (name, task, expected) in CELLS {
            let f1 = report
                .f1(name, task)
                .unwrap_or_else(|| panic!("{size} {name} not scored"));
            assert_eq!(
                format!("{f1:.2}"),
                format!("{:.2}", expected[i]),
                "{size} {name}"
            );
        }
    }
}

#[test]
fn cells_agree_with_paper_tables_json() {
    let tables = PaperTables::load(&common::shared().join("data/paper-tables.json")).unwrap();
    for (i, size) in ["1B", "3B", "8B"].into_iter().enumerate() {
        let method = format!("GuardReasoner {size}");
        for (name, task, expected) in CELLS {
            assert_eq!(
                tables.f1(task, &method, name),
                Some(expected[i]),
                "{method} {name}"
            );
        }
    }
}

#[test]
fn the_3b_refusal_cell_rests_on_23_doubled_failures() {
    let report = paper_report("3B", ParsePolicy::Paper);
    let s = report
        .entry("XSTestResponseRefusal", Task::Refusal)
        .unwrap()
        .score()
        .unwrap();
    assert_eq!(s.parse_failures, 23);
    assert_eq!(
        s.skipped_failures, 0,
        "refusal/compliance gold labels are never skipped"
    );
    // 449 rows, 23 of them counted twice.
    assert_eq!(s.confusion.total(), 449 + 23);

    let strict = paper_report("3B", ParsePolicy::Strict);
    let s = strict
        .entry("XSTestResponseRefusal", Task::Refusal)
        .unwrap()
        .score()
        .unwrap();
    assert_eq!(s.confusion.total(), 449, "strict counts each row once");
    assert!(
        s.parse_failures > 0 && s.parse_failures < 23,
        "{}",
        s.parse_failures
    );
    assert!(
        s.failure_kinds.contains_key("conflicting_answers"),
        "{:?}",
        s.failure_kinds
    );
    assert!(
        s.f1 > 80.31,
        "reading the per-task answer blocks recovers most of the 23: {}",
        s.f1
    );
}

#[test]
fn averages_use_paper_weights_and_leave_missing_out() {
    let report = paper_report("8B", ParsePolicy::Paper);
    let prompt = report.task_average(Task::Prompt);
    assert_eq!(
        prompt.left_out,
        vec!["ToxicChat", "OpenAIModeration", "WildGuardTest"]
    );
    let expected = (91.86 * 239.0 + 90.18 * 359.0 + 99.50 * 100.0) / (239.0 + 359.0 + 100.0);
    assert!((prompt.paper_weighted_f1.unwrap() - expected).abs() < 0.01);
    let overall = report.overall_paper_weighted_f1.unwrap();
    let mean = Task::ALL
        .iter()
        .map(|t| report.task_average(*t).paper_weighted_f1.unwrap())
        .sum::<f64>()
        / 3.0;
    assert!((overall - mean).abs() < 1e-9);
}
