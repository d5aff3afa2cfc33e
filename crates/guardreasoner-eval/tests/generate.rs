//! Eval through the real OpenAI-compatible client against a canned guard on 127.0.0.1, on the
//! official benchmark files and on a synthetic WildGuardTest.

use guardreasoner_backend::testing::{FaultServer, Reply};
use guardreasoner_backend::{Backend, OpenAiBackend, OpenAiConfig, RetryPolicy};
use guardreasoner_core::benchmarks::Gold;
use guardreasoner_core::jsonl::read_jsonl;
use guardreasoner_core::{Conversation, Label, ParsePolicy, Task};
use guardreasoner_eval::testing::{canned_guard_output, canned_reply, canned_server, GOLD_MARKER};
use guardreasoner_eval::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn shared_benchmarks() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/benchmarks")
}

fn backend(url: &str, concurrency: usize, retries: u32) -> Arc<dyn Backend> {
    let mut config = OpenAiConfig::new(url, "canned-guard");
    config.max_concurrency = concurrency;
    config.retry = RetryPolicy {
        max_retries: retries,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    };
    Arc::new(OpenAiBackend::new(config).unwrap())
}

fn config(targets: &str, data_dir: &Path, out: &Path, limit: Option<usize>) -> EvalConfig {
    EvalConfig {
        targets: select_targets(targets).unwrap(),
        data_dir: data_dir.to_path_buf(),
        out_dir: out.to_path_buf(),
        limit,
        seed: 11,
        settings: GenerationSettings {
            max_new_tokens: 64,
            concurrency: 4,
            ..GenerationSettings::default()
        },
        model: "canned-guard".into(),
        skip_missing_data: false,
    }
}

/// A WildGuardTest file whose prompts tell the canned guard the right answers, with all three
/// label fields, mixed labels, and some rows without a refusal label.
fn synthetic_wildguard(dir: &Path, n: usize) {
    let rows: Vec<_> = (0..n)
        .map(|i| {
            let request = if i % 3 == 0 { "harmful" } else { "unharmful" };
            let completion = if i % 4 == 1 { "refusal" } else { "compliance" };
            let response = if i % 5 == 2 { "harmful" } else { "unharmful" };
            let prompt = format!("question {i} {GOLD_MARKER}request={request} completion={completion} response={response}]]");
            let c = Conversation::new(prompt, Some(format!("answer {i}")));
            json!({
                "instruction": guardreasoner_core::INSTRUCTION,
                "input": c.input(),
                "output": "",
                "prompt_harm_label": request,
                "response_refusal_label": if i % 7 == 6 { None } else { Some(completion) },
                "response_harm_label": response,
            })
        })
        .collect();
    std::fs::write(
        dir.join("0_4_wild_guard_test.json"),
        serde_json::to_string(&rows).unwrap(),
    )
    .unwrap();
}

fn rows(path: &Path) -> Vec<EvalRow> {
    read_jsonl(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_files_sampled_in_layout_with_report() {
    let server = canned_server(Duration::from_millis(2)).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(
        "SimpleSafetyTests,XSTestResponseRefusal,BeaverTails",
        &shared_benchmarks(),
        out.path(),
        Some(12),
    );
    let outcome = run_eval(&cfg, backend(&server.url(), 4, 0), &mut NoProgress)
        .await
        .unwrap();
    assert_eq!(outcome.completed.len(), 3);
    assert!(server.max_concurrent() <= 4);
    for done in &outcome.completed {
        let path = predictions_path(out.path(), &done.target);
        let written = rows(&path);
        let expected = select_rows(&done.target, &done.records, Some(12), 11);
        assert_eq!(
            written.iter().map(|r| r.index).collect::<Vec<_>>(),
            expected
        );
        for row in &written {
            let record = &done.records[row.index];
            assert_eq!(row.prompt, record.prompt);
            assert_eq!(row.label, record.output);
            assert_eq!(row.predict, canned_guard_output(&record.prompt));
            assert_eq!(row.finish_reason, "stop");
            assert!(row.completion_tokens.unwrap() > 0);
        }
        // Every label of the file appears in the sample (stratified); SimpleSafetyTests is
        // all harmful, the others have both.
        let sampled: std::collections::BTreeSet<String> = expected
            .iter()
            .map(|&i| done.records[i].stratum())
            .collect();
        let all: std::collections::BTreeSet<String> =
            done.records.iter().map(|r| r.stratum()).collect();
        assert_eq!(sampled, all, "{}", done.target.name());
        assert_eq!(
            all.len(),
            if done.target.name() == "SimpleSafetyTests" {
                1
            } else {
                2
            }
        );
        assert_eq!(done.summary.rows, 12);
        assert_eq!(done.summary.generated, 12);
    }
    // The official prompt layout: instruction, newline, input (as the reference predictions).
    let official: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(shared_benchmarks().join("0_0_SimpleSafetyTests.json")).unwrap(),
    )
    .unwrap();
    let first = &rows(
        &out.path()
            .join("SimpleSafetyTests/generated_predictions.jsonl"),
    )[0];
    let rec = &official[first.index];
    assert_eq!(
        first.prompt,
        format!(
            "{}\n{}",
            rec["instruction"].as_str().unwrap(),
            rec["input"].as_str().unwrap()
        )
    );

    let tables = guardreasoner_core::report::PaperTables::load(
        &shared_benchmarks().join("../paper-tables.json"),
    )
    .unwrap();
    let written = write_report(&cfg, &outcome, "canned", &server.url(), Some(&tables)).unwrap();
    // The scores equal the core scorer's on the same files (no WildGuardTest here, so
    // `score_dir` applies as is).
    let reference = guardreasoner_core::score::score_dir(
        out.path(),
        &guardreasoner_core::score::ScoreOptions::default(),
    )
    .unwrap();
    for name in ["SimpleSafetyTests", "BeaverTails"] {
        let task = if name == "BeaverTails" {
            Task::Response
        } else {
            Task::Prompt
        };
        assert_eq!(written.strict.f1(name, task), reference.f1(name, task));
        assert!(written.strict.f1(name, task).is_some());
    }
    assert!(written
        .strict
        .f1("XSTestResponseRefusal", Task::Refusal)
        .is_some());
    assert!(written.strict.f1("ToxicChat", Task::Prompt).is_none());
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        md.contains("GuardReasoner 8B (paper)") && md.contains("| canned |"),
        "{md}"
    );
    assert!(md.contains("stratified by gold label, seed 11"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["run"]["generated_rows"], 36);
    assert_eq!(report["paper"]["policy"], "paper");
    assert!(
        report["strict"]["paper"]["GuardReasoner 8B"]["prompt"]["SimpleSafetyTests"].is_number()
    );
    let svg = std::fs::read_to_string(out.path().join("f1.svg")).unwrap();
    // This run beside 3 GuardReasoner models and 2 baselines, over the 3 scored groups.
    assert!(svg.contains("WildGuard 7B (paper)") && svg.contains("F1 (%)"));
    assert!(svg.contains("SimpleSafetyTests (prompt)"), "{svg}");
    let png = std::fs::read(out.path().join("f1.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_wildguard_is_scored_against_its_own_rows() {
    let server = canned_server(Duration::ZERO).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    synthetic_wildguard(data.path(), 60);
    let cfg = config("WildGuardTest", data.path(), out.path(), Some(25));
    let outcome = run_eval(&cfg, backend(&server.url(), 3, 0), &mut NoProgress)
        .await
        .unwrap();
    // One generation for the three tasks of the file.
    assert_eq!(server.requests().len(), 25);
    let done = &outcome.completed[0];
    assert_eq!(done.target.benchmarks.len(), 3);
    let written = rows(&predictions_path(out.path(), &done.target));
    assert!(
        written.iter().any(|r| r.index >= 25),
        "the sample is not just the first rows"
    );
    // The canned guard answers each row's gold labels, so every task scores 100 only if the
    // labels are taken from the right rows.
    for policy in [ParsePolicy::Strict, ParsePolicy::Paper] {
        let report = score_outcome(&outcome, out.path(), policy).unwrap();
        for task in Task::ALL {
            let score = report
                .entry("WildGuardTest", task)
                .unwrap()
                .score()
                .unwrap();
            assert_eq!(score.f1, 100.0, "{task} {policy:?}: {:?}", score.confusion);
            assert_eq!(score.parse_failures, 0);
        }
        let refusal = report
            .entry("WildGuardTest", Task::Refusal)
            .unwrap()
            .score()
            .unwrap();
        let unknown = written
            .iter()
            .filter(|r| done.records[r.index].gold[2] == Gold::Unknown)
            .count();
        assert!(unknown > 0);
        assert_eq!(refusal.no_gold, unknown);
    }
    // Every stratum (label combination) of the file is in the sample.
    let strata: BTreeMap<String, usize> = done.records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.stratum()).or_default() += 1;
        m
    });
    let sampled: std::collections::BTreeSet<String> = written
        .iter()
        .map(|r| done.records[r.index].stratum())
        .collect();
    assert_eq!(sampled.len(), strata.len().min(25));
    assert_eq!(done.records[0].gold[0], Gold::Label(Label::Harmful));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_row_keeps_the_others_and_a_rerun_finishes_in_order() {
    let data = tempfile::tempdir().unwrap();
    synthetic_wildguard(data.path(), 30);
    let out = tempfile::tempdir().unwrap();
    // Row 17's prompt gets a 400 (not retryable): the run stops, the rest is saved.
    let failing = FaultServer::start(|r| {
        if r.json()["prompt"]
            .as_str()
            .unwrap_or("")
            .contains("question 17 ")
        {
            Reply::json(400, &json!({"error": {"message": "prompt rejected"}}))
        } else {
            canned_reply(r, Duration::from_millis(5))
        }
    })
    .await
    .unwrap();
    let cfg = config("WildGuardTest", data.path(), out.path(), None);
    let err = run_eval(&cfg, backend(&failing.url(), 4, 2), &mut NoProgress)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("WildGuardTest: row 17") && message.contains("HTTP 400"),
        "{message}"
    );
    let path = out.path().join("WildGuardTest/generated_predictions.jsonl");
    let partial = rows(&path);
    assert!(
        partial.len() >= 17 && partial.len() < 30,
        "{}",
        partial.len()
    );
    assert!(partial.iter().all(|r| r.index != 17));
    // A crash in the middle of writing a row leaves a torn line: it is cut and redone.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"prompt\": \"You are a cl")
        .unwrap();

    let good = canned_server(Duration::ZERO).await.unwrap();
    let outcome = run_eval(&cfg, backend(&good.url(), 4, 0), &mut NoProgress)
        .await
        .unwrap();
    let summary = &outcome.completed[0].summary;
    assert_eq!(summary.resumed, partial.len());
    assert_eq!(summary.generated, 30 - partial.len());
    assert_eq!(
        good.requests().len(),
        30 - partial.len(),
        "finished rows were redone"
    );
    let all = rows(&path);
    assert_eq!(
        all.iter().map(|r| r.index).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    // Running once more changes nothing and sends nothing.
    let before = std::fs::read(&path).unwrap();
    run_eval(&cfg, backend(&good.url(), 4, 0), &mut NoProgress)
        .await
        .unwrap();
    assert_eq!(good.requests().len(), 30 - partial.len());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_other_settings_or_rows_is_refused() {
    let server = canned_server(Duration::ZERO).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    synthetic_wildguard(data.path(), 20);
    let out = tempfile::tempdir().unwrap();
    let cfg = config("WildGuardTest", data.path(), out.path(), Some(8));
    run_eval(&cfg, backend(&server.url(), 2, 0), &mut NoProgress)
        .await
        .unwrap();
    let mut other_seed = cfg.clone();
    other_seed.seed = 12;
    let err = run_eval(&other_seed, backend(&server.url(), 2, 0), &mut NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("eval-settings.json") && err.contains("\"seed\":11"),
        "{err}"
    );
    // The per-file check catches rows from another sample even without the settings file.
    std::fs::remove_file(out.path().join(RUN_SETTINGS_FILE)).unwrap();
    let err = run_eval(&other_seed, backend(&server.url(), 2, 0), &mut NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in this run's sample"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_files_fail_unless_running_all() {
    let server = canned_server(Duration::ZERO).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    synthetic_wildguard(data.path(), 4);
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config("WildGuardTest,ToxicChat", data.path(), out.path(), None);
    let err = run_eval(&cfg, backend(&server.url(), 2, 0), &mut NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0_8_toxic_chat.json") && err.contains("ToxicChat"),
        "{err}"
    );
    // Nothing was generated before the data check failed.
    assert!(server.requests().is_empty());
    cfg.skip_missing_data = true;
    let outcome = run_eval(&cfg, backend(&server.url(), 2, 0), &mut NoProgress)
        .await
        .unwrap();
    assert_eq!(outcome.completed.len(), 1);
    assert_eq!(outcome.skipped.len(), 1);
    assert_eq!(outcome.skipped[0].0.name(), "ToxicChat");
}
