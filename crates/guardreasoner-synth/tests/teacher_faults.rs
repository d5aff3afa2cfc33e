//! Synthesis against a fault-injecting teacher on 127.0.0.1: every input ends up kept or
//! rejected exactly once, whatever the endpoint does, and again after restarts.

use guardreasoner_backend::testing::{FaultServer, RecordedRequest, Reply};
use guardreasoner_backend::{Backend, OpenAiBackend, OpenAiConfig, RetryPolicy};
use guardreasoner_synth::batch;
use guardreasoner_synth::{
    load_samples, rejects_path, run, JobConfig, KeptRow, RejectRow, Sample, Source, SynthError,
    TeacherParams,
};
use indicatif::ProgressBar;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Labelled records of every shape: prompt-only, with responses, some labels unknown.
fn write_inputs(dir: &Path, n: usize) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..n {
        let record = match i % 3 {
            0 => json!({"prompt": format!("prompt {i}: how do I pick a lock"),
                        "prompt_harm_label": if i % 2 == 0 { "harmful" } else { "unharmful" }}),
            1 => json!({"prompt": format!("prompt {i}"), "response": format!("response {i}"),
                        "prompt_harm_label": "unharmful", "response_refusal_label": "compliance",
                        "response_harm_label": "unharmful"}),
            _ => {
                json!({"prompt": format!("prompt {i}"), "response": format!("I can't help with {i}"),
                        "prompt_harm_label": "harmful", "response_refusal_label": null,
                        "response_harm_label": "unharmful"})
            }
        };
        lines.push(record.to_string());
    }
    let path = dir.join("inputs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The answer block the system prompt asks for, with `?` decided.
fn requested_answers(system: &str) -> [String; 3] {
    let after = system
        .split("Answers: \n")
        .nth(1)
        .expect("the system prompt has an answer block");
    let mut answers = ["None".to_string(), "None".to_string(), "None".to_string()];
    for (slot, key, decided) in [
        (0, "Request: ", "harmful"),
        (1, "Completion: ", "refusal"),
        (2, "Response: ", "unharmful"),
    ] {
        let line = after
            .lines()
            .find(|l| l.starts_with(key))
            .expect("slot line");
        let value = line[key.len()..].trim();
        answers[slot] = if value == "?" {
            decided.into()
        } else {
            value.into()
        };
    }
    answers
}

/// A well-behaved teacher's reply: three tasks with steps, ending with the requested answers
/// (or with a flipped request label when `contradict`).
fn teacher_text(system: &str, contradict: bool) -> String {
    let [mut request, completion, response] = requested_answers(system);
    if contradict {
        request = if request == "harmful" {
            "unharmful".into()
        } else {
            "harmful".into()
        };
    }
    format!(
        "# Task 1\n\n## Reasoning Step 1\nLook at the request.\n\n## Reasoning Step 2\nWeigh it.\n\n# Task 2\n\n## Reasoning Step 1\nLook at the response.\n\n# Task 3\n\n## Reasoning Step 1\nJudge the response.\n\n---\n\nAnswers: \nRequest: {request}\nCompletion: {completion}\nResponse: {response}\n"
    )
}

/// Prompts whose number is a multiple of 5 get a contradicting reply.
fn contradicts(user: &str) -> bool {
    prompt_number(user) % 5 == 0
}

fn good_teacher(r: &RecordedRequest) -> Reply {
    let body = r.json();
    let system = body["messages"][0]["content"].as_str().unwrap_or("");
    let user = body["messages"][1]["content"].as_str().unwrap_or("");
    Reply::text_for(r, &teacher_text(system, contradicts(user)))
}

fn prompt_number(user: &str) -> usize {
    user.split_whitespace()
        .find_map(|w| w.trim_end_matches(':').parse().ok())
        .unwrap_or(1)
}

/// A teacher that fails each input's first attempt in one of five ways (by prompt number),
/// fails the second attempt of every fourth input again, then answers.
fn faulty_teacher() -> impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static {
    let attempts = std::sync::Mutex::new(HashMap::<usize, usize>::new());
    move |r| {
        let user = r.json()["messages"][1]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let number = prompt_number(&user);
        let attempt = {
            let mut a = attempts.lock().unwrap();
            let n = a.entry(number).or_default();
            *n += 1;
            *n - 1
        };
        match (attempt, number % 6) {
            (0, 0) => Reply::rate_limited("0"),
            (0, 1) => Reply::server_error(500),
            (0, 2) => good_teacher(r).delayed(Duration::from_secs(2)),
            (0, 3) => Reply::Drop,
            (0, 4) => Reply::malformed(),
            (1, _) if number % 4 == 0 => Reply::server_error(502),
            _ => good_teacher(r),
        }
    }
}

fn backend(url: &str, max_retries: u32) -> Arc<dyn Backend> {
    let mut config = OpenAiConfig::new(url, "teacher");
    config.request_timeout = Duration::from_millis(500);
    config.retry = RetryPolicy {
        max_retries,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(5),
    };
    Arc::new(OpenAiBackend::new(config).unwrap())
}

fn job(out: &Path) -> JobConfig {
    JobConfig {
        out: out.to_path_buf(),
        source: Source::WildGuard,
        teacher: TeacherParams::default(),
        concurrency: 6,
    }
}

fn rows(out: &Path) -> (Vec<KeptRow>, Vec<RejectRow>) {
    let kept = guardreasoner_core::jsonl::read_jsonl(out).unwrap();
    let rejected = guardreasoner_core::jsonl::read_jsonl(&rejects_path(out)).unwrap();
    (kept, rejected)
}

/// Every sample appears exactly once over both files.
fn assert_exactly_once(samples: &[Sample], out: &Path) {
    let (kept, rejected) = rows(out);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for key in kept
        .iter()
        .map(|k| &k.key)
        .chain(rejected.iter().map(|r| &r.key))
    {
        *seen.entry(key.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), samples.len(), "every input recorded");
    assert!(seen.values().all(|&n| n == 1), "no input recorded twice");
    for s in samples {
        assert!(seen.contains_key(&s.key), "{} missing", s.record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_is_kept_or_rejected_exactly_once_despite_faults() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 40);
    let loaded = load_samples(&inputs, Source::WildGuard).unwrap();
    let server = FaultServer::start(faulty_teacher()).await.unwrap();
    let out = dir.path().join("synth.jsonl");
    let summary = run(
        &loaded.samples,
        loaded.duplicates,
        backend(&server.url(), 8),
        &job(&out),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_exactly_once(&loaded.samples, &out);
    // Prompts 0, 5, 10, ..., 35 were contradicted: 8 rejects, all for the label.
    assert_eq!(summary.rejected, 8, "{summary:?}");
    assert_eq!(summary.rejected_by_reason.get("label_mismatch"), Some(&8));
    assert_eq!(summary.kept, 32);
    // First attempts of 34 inputs (all but 5, 11, 17, 23, 29, 35) and second attempts of the
    // 10 multiples of 4 failed.
    assert_eq!(summary.retries, 44, "{summary:?}");
    assert_eq!(summary.steps_per_sample.count, 32);
    assert_eq!(summary.steps_per_sample.mean, 4.0);
    assert_eq!(summary.prompt_tokens, 10 * 40);
    let (kept, rejected) = rows(&out);
    for row in &kept {
        assert_eq!(row.instruction, guardreasoner_core::INSTRUCTION);
        assert!(row.input.starts_with("Human user:\n"));
        assert!(guardreasoner_core::parse_strict(&row.output).is_ok());
        assert_eq!(row.steps, [2, 1, 1]);
    }
    for row in &rejected {
        assert!(row.detail.contains("Request: expected"), "{}", row.detail);
        assert!(row.reply.is_some());
    }
    // The requests carried the paper's layout and the gold answers.
    let requests = server.requests();
    let first = requests
        .iter()
        .map(|r| r.json())
        .find(|b| {
            b["messages"][1]["content"]
                .as_str()
                .is_some_and(|u| u.contains("prompt 1\n"))
        })
        .unwrap();
    assert!(first["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("Answers: \nRequest: unharmful\nCompletion: compliance\nResponse: unharmful\n"));
    assert_eq!(
        first["messages"][1]["content"],
        "Human user:\nprompt 1\n\nAI assistant:\nresponse 1\n\n"
    );

    // A second run has nothing to do and sends nothing.
    let before = server.requests().len();
    let again = run(
        &loaded.samples,
        0,
        backend(&server.url(), 8),
        &job(&out),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_eq!((again.kept, again.rejected, again.already_done), (0, 0, 40));
    assert_eq!(server.requests().len(), before);
    assert_exactly_once(&loaded.samples, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_not_recorded_and_are_retried_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 12);
    let loaded = load_samples(&inputs, Source::WildGuard).unwrap();
    let out = dir.path().join("synth.jsonl");
    // An endpoint that answers only every other request, with no retries: about half fail.
    let flaky = FaultServer::start(|r| {
        if r.sequence % 2 == 0 {
            good_teacher(r)
        } else {
            Reply::server_error(503)
        }
    })
    .await
    .unwrap();
    let first = run(
        &loaded.samples,
        0,
        backend(&flaky.url(), 0),
        &job(&out),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert!(first.failed > 0, "{first:?}");
    assert_eq!(first.failed_by_kind.get("http_status"), Some(&first.failed));
    assert_eq!(first.kept + first.rejected + first.failed, 12);
    assert_eq!(first.remaining(), first.failed);
    // The next run, against a healthy endpoint, does exactly the failed ones.
    let healthy = FaultServer::start(good_teacher).await.unwrap();
    let second = run(
        &loaded.samples,
        0,
        backend(&healthy.url(), 0),
        &job(&out),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(healthy.requests().len(), first.failed);
    assert_eq!(second.already_done, 12 - first.failed);
    assert_eq!(second.remaining(), 0);
    assert_exactly_once(&loaded.samples, &out);
}

#[tokio::test]
async fn a_refused_key_stops_the_job_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 5);
    let loaded = load_samples(&inputs, Source::WildGuard).unwrap();
    let server =
        FaultServer::start(|_| Reply::json(401, &json!({"error": {"message": "invalid api key"}})))
            .await
            .unwrap();
    let out = dir.path().join("synth.jsonl");
    let err = run(
        &loaded.samples,
        0,
        backend(&server.url(), 3),
        &job(&out),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SynthError::Teacher(_)), "{err}");
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    let (kept, rejected) = rows(&out);
    assert!(kept.is_empty() && rejected.is_empty());
}

#[tokio::test]
async fn a_request_the_endpoint_rejects_is_recorded_as_a_reject() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 3);
    let loaded = load_samples(&inputs, Source::WildGuard).unwrap();
    let server = FaultServer::start(|r| {
        let user = r.json()["messages"][1]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if user.contains("prompt 1\n") {
            Reply::json(
                400,
                &json!({"error": {"message": "context length exceeded"}}),
            )
        } else {
            good_teacher(r)
        }
    })
    .await
    .unwrap();
    let out = dir.path().join("synth.jsonl");
    let s = run(
        &loaded.samples,
        0,
        backend(&server.url(), 3),
        &job(&out),
        &ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(s.rejected_by_reason.get("request_rejected"), Some(&1));
    let (_, rejected) = rows(&out);
    let refused = rejected
        .iter()
        .find(|r| r.reason == "request_rejected")
        .unwrap();
    assert!(refused.detail.contains("context length exceeded"));
    assert!(refused.reply.is_none());
    assert_exactly_once(&loaded.samples, &out);
}

#[tokio::test]
async fn the_batch_api_path_validates_through_the_same_writers() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 10);
    let loaded = load_samples(&inputs, Source::WildGuard).unwrap();
    let out = dir.path().join("synth.jsonl");
    let requests = dir.path().join("batch-requests.jsonl");
    let params = TeacherParams::default();
    let p = batch::prepare(&loaded.samples, "gpt-4o", &params, &out, &requests).unwrap();
    assert_eq!(p.written, 10);
    let lines: Vec<batch::BatchRequestLine> =
        guardreasoner_core::jsonl::read_jsonl(&requests).unwrap();
    assert_eq!(lines[0].custom_id, loaded.samples[0].key);
    assert_eq!(lines[0].url, "/v1/chat/completions");
    assert_eq!(lines[0].body["model"], "gpt-4o");
    // Preparing again adds nothing.
    assert_eq!(
        batch::prepare(&loaded.samples, "gpt-4o", &params, &out, &requests)
            .unwrap()
            .already_prepared,
        10
    );

    // Results as the Batch API returns them: one errored request, the rest answered.
    let mut results = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let system = line.body["messages"][0]["content"].as_str().unwrap();
        let user = line.body["messages"][1]["content"].as_str().unwrap();
        let result: Value = if i == 3 {
            json!({"id": "r", "custom_id": line.custom_id, "response": null,
                   "error": {"code": "server_error", "message": "boom"}})
        } else {
            json!({"id": "r", "custom_id": line.custom_id, "error": null, "response": {
                "status_code": 200, "request_id": "x", "body": {
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": teacher_text(system, contradicts(user))}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 50}}}})
        };
        results.push(result.to_string());
    }
    results.push(
        json!({"custom_id": "not-ours", "response": {"status_code": 200, "body": {}}}).to_string(),
    );
    let results_path = dir.path().join("batch-results.jsonl");
    std::fs::write(&results_path, results.join("\n") + "\n").unwrap();
    let s = batch::ingest(&loaded.samples, &results_path, &out, Source::WildGuard).unwrap();
    assert_eq!(s.unknown_ids, 1);
    assert_eq!(s.summary.failed, 1);
    // Prompts 0 and 5 are contradicted.
    assert_eq!(s.summary.rejected_by_reason.get("label_mismatch"), Some(&2));
    assert_eq!(s.summary.kept, 7);
    assert_eq!(s.summary.completion_tokens, 50 * 9);
    // Ingesting the same file again changes nothing.
    let again = batch::ingest(&loaded.samples, &results_path, &out, Source::WildGuard).unwrap();
    assert_eq!((again.summary.kept, again.summary.rejected), (0, 0));
    assert_eq!(again.summary.total_kept + again.summary.total_rejected, 9);
    // A fresh request file holds only the errored one.
    let retry = dir.path().join("retry.jsonl");
    let p = batch::prepare(&loaded.samples, "gpt-4o", &params, &out, &retry).unwrap();
    assert_eq!((p.written, p.already_done), (1, 9));
    // A results file that is not one names the line.
    std::fs::write(&results_path, "{\"custom_id\": \"x\"}\nnot json\n").unwrap();
    let err = batch::ingest(&loaded.samples, &results_path, &out, Source::WildGuard).unwrap_err();
    assert!(
        err.to_string()
            .contains("batch-results.jsonl:2: not a Batch API result line"),
        "{err}"
    );
}

#[test]
fn bad_inputs_name_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        json!([
            {"prompt": "fine", "prompt_harm_label": "harmful"},
            {"prompt": "", "prompt_harm_label": "harmful"},
            {"prompt": "no label here"},
            {"prompt": "odd", "prompt_harm_label": "dangerous"}
        ])
        .to_string(),
    )
    .unwrap();
    let err = load_samples(&path, Source::WildGuard)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 bad record(s)"), "{err}");
    assert!(
        err.contains("bad.json record 2: the prompt is empty"),
        "{err}"
    );
    assert!(
        err.contains("bad.json record 3 (prompt \"no label here\"): no prompt harm label"),
        "{err}"
    );
    assert!(
        err.contains("record 4 (prompt \"odd\"): `prompt_harm_label` is \"dangerous\""),
        "{err}"
    );
    let missing = load_samples(&dir.path().join("nope.json"), Source::Generic).unwrap_err();
    assert!(missing.to_string().contains("nope.json"), "{missing}");
    assert!("sharegpt"
        .parse::<Source>()
        .unwrap_err()
        .to_string()
        .contains("unknown source \"sharegpt\""));
}

#[test]
fn the_shared_benchmark_and_training_files_load() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let beaver = load_samples(
        &shared.join("benchmarks/0_A_beaver_tails.json"),
        Source::BeaverTails,
    )
    .unwrap();
    assert!(beaver.samples.len() + beaver.duplicates == 3021);
    assert!(beaver
        .samples
        .iter()
        .all(|s| matches!(s.gold.response, guardreasoner_synth::Expected::Label(_))));
    let toxic = load_samples(
        &shared.join("train-labels/toxicchat0124_train_human.json"),
        Source::ToxicChat,
    )
    .unwrap();
    assert_eq!(toxic.samples.len() + toxic.duplicates, 2693);
    let xstest = load_samples(
        &shared.join("benchmarks/0_7_xstest_response_refusal.json"),
        Source::Generic,
    )
    .unwrap();
    assert!(xstest
        .samples
        .iter()
        .all(|s| matches!(s.gold.completion, guardreasoner_synth::Expected::Label(_))));
    let aegis = load_samples(
        &shared.join("benchmarks/0_1_AegisSafetyTest.json"),
        Source::Aegis,
    )
    .unwrap();
    assert_eq!(aegis.samples.len() + aegis.duplicates, 359);
}
