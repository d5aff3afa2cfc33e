//! `guardreasoner score` end to end: the real binary on the official prediction files, and every
//! bad-input path giving a clear error instead of a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn score(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .arg("score")
        .args(args)
        .output()
        .expect("binary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn copy_predictions(size: &str, to: &Path) {
    let from = shared()
        .join("data/reference-predictions/paper-v1")
        .join(size);
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        let dir = to.join(entry.file_name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            entry.path().join("generated_predictions.jsonl"),
            dir.join("generated_predictions.jsonl"),
        )
        .unwrap();
    }
}

#[test]
fn prints_the_papers_cells_and_baselines() {
    let dir = shared().join("data/reference-predictions/paper-v1/8B");
    let tables = shared().join("data/paper-tables.json");
    let o = score(&[
        "--predictions",
        dir.to_str().unwrap(),
        "--parse",
        "paper",
        "--compare",
        "--paper-tables",
        tables.to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for cell in ["91.86", "90.18", "99.50", "85.47", "94.34", "93.68"] {
        assert!(out.contains(cell), "missing {cell} in\n{out}");
    }
    assert!(out.contains("GuardReasoner 8B (paper)"));
    assert!(out.contains(
        "Not scored, left out of the averages: ToxicChat, OpenAIModeration, WildGuardTest."
    ));
}

#[test]
fn json_and_markdown_formats() {
    let dir = shared().join("data/reference-predictions/paper-v1/3B");
    let o = score(&["--predictions", dir.to_str().unwrap(), "--format", "json"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["policy"], "strict");
    let refusal = v["benchmarks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["benchmark"] == "XSTestResponseRefusal")
        .unwrap();
    assert!(
        refusal["failure_kinds"]["conflicting_answers"]
            .as_u64()
            .unwrap()
            > 0
    );
    let o = score(&[
        "--predictions",
        dir.to_str().unwrap(),
        "--format",
        "markdown",
    ]);
    assert!(text(&o).0.contains("| Method |"));
}

#[test]
fn missing_directory_is_a_clear_error() {
    let o = score(&["--predictions", "/nonexistent/predictions"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("/nonexistent/predictions") && err.contains("not a directory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn truncated_and_malformed_lines_name_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    copy_predictions("1B", tmp.path());
    let file = tmp
        .path()
        .join("HarmBenchPrompt/generated_predictions.jsonl");
    let mut content = std::fs::read_to_string(&file).unwrap();
    // Cut the last line in half, as a crash mid-write would.
    let cut = content.trim_end().rfind('\n').unwrap() + 40;
    content.truncate(cut);
    std::fs::write(&file, &content).unwrap();
    let o = score(&["--predictions", tmp.path().to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("HarmBenchPrompt/generated_predictions.jsonl:239"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // A well-formed JSON line missing a field.
    std::fs::write(&file, "{\"prompt\": \"p\", \"label\": \"harmful\"}\n").unwrap();
    let o = score(&["--predictions", tmp.path().to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("generated_predictions.jsonl:1") && err.contains("predict"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_rejected() {
    let o = score(&["--predictions", ".", "--parse", "lenient"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("lenient"));
    let dir = shared().join("data/reference-predictions/paper-v1/1B");
    let tables = shared().join("data/paper-tables.json");
    let o = score(&[
        "--predictions",
        dir.to_str().unwrap(),
        "--compare",
        "Nobody 9B",
        "--paper-tables",
        tables.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("Nobody 9B"));
}

/// `--fit-calibration` on a (dev) directory whose scores are overconfident writes Platt maps;
/// `--calibration` applies them: the calibration error falls, the ranking stays, and a file
/// that is not a calibration is a clear error.
#[test]
fn a_calibration_fitted_on_dev_rows_repairs_overconfident_scores() {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("dev/ToxicChat");
    std::fs::create_dir_all(&bench).unwrap();
    let answer =
        |label: &str| format!("Answers: \nRequest: {label}\nCompletion: None\nResponse: None\n");
    let mut rows = String::new();
    for i in 0..100 {
        for (p, harmful) in [(0.95, i < 70), (0.05, i < 30)] {
            let predicted = if p > 0.5 { "harmful" } else { "unharmful" };
            let row = serde_json::json!({
                "prompt": "", "label": if harmful { "harmful" } else { "unharmful" },
                "predict": answer(predicted), "scores": {"request": p},
            });
            rows.push_str(&format!("{row}\n"));
        }
    }
    std::fs::write(bench.join("generated_predictions.jsonl"), rows).unwrap();
    let predictions = dir.path().join("dev");
    let cal = dir.path().join("calibration.json");
    let ece = |extra: &[&str]| -> (f64, f64) {
        let mut args = vec![
            "--predictions",
            predictions.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let o = score(&args);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let entry = v["benchmarks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["benchmark"] == "ToxicChat" && e.get("ranking").is_some())
            .unwrap_or_else(|| panic!("no scored ToxicChat in {out}"))
            .clone();
        let r = &entry["ranking"];
        (r["ece"].as_f64().unwrap(), r["roc_auc"].as_f64().unwrap())
    };
    let (raw_ece, raw_auc) = ece(&["--fit-calibration", cal.to_str().unwrap()]);
    let fitted: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    assert!(fitted["request"]["a"].as_f64().unwrap() < 1.0, "{fitted}");
    assert_eq!(fitted["rows"][0], 200);
    let (ece_after, auc_after) = ece(&["--calibration", cal.to_str().unwrap()]);
    assert!(
        raw_ece > 0.2 && ece_after < 0.02,
        "ECE {raw_ece} -> {ece_after}"
    );
    assert_eq!(raw_auc, auc_after);

    std::fs::write(&cal, "{\"request\": 3}").unwrap();
    let o = score(&[
        "--predictions",
        predictions.to_str().unwrap(),
        "--calibration",
        cal.to_str().unwrap(),
    ]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.contains("not a calibration file"),
        "{err}"
    );
}

/// A reader that stops early (`guardreasoner score .. | head`) ends the command quietly, as it
/// ends Unix tools: no "Broken pipe" error, no panic in the middle of a table.
#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let dir = shared().join("data/reference-predictions/paper-v1/8B");
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardreasoner"))
        .args([
            "score",
            "--predictions",
            dir.to_str().unwrap(),
            "--parse",
            "paper",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    // The reader goes away before the scores (read from 13 files first) are printed.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waits");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
    assert!(
        !err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );
}
