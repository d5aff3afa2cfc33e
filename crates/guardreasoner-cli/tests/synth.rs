//! `guardreasoner synth` as a user runs it: the real binary against a teacher on 127.0.0.1,
//! killed with SIGKILL mid-run and resumed.

use guardreasoner_backend::testing::{FaultServer, RecordedRequest, Reply};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_guardreasoner");
const SECRET: &str = "sk-cli-test-secret-4242";

fn write_inputs(dir: &Path, n: usize) -> PathBuf {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            json!({"prompt": format!("request number {i}"), "response": format!("reply {i}"),
                   "prompt_harm_label": "unharmful", "response_refusal_label": "compliance",
                   "response_harm_label": if i % 4 == 0 { "harmful" } else { "unharmful" }})
            .to_string()
        })
        .collect();
    let path = dir.join("inputs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// Answers exactly what the system prompt asks for, after `delay`; rejects requests without
/// the right bearer key.
fn teacher(delay: Duration) -> impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static {
    move |r| {
        if r.header("authorization") != Some(&format!("Bearer {SECRET}")) {
            return Reply::json(401, &json!({"error": {"message": "bad key"}}));
        }
        let system = r.json()["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let block = system.split("Answers: \n").nth(1).unwrap_or("");
        let answers: Vec<&str> = block.lines().take(3).collect();
        let text = format!(
            "# Task 1\n## Reasoning Step 1\nA.\n# Task 2\n## Reasoning Step 1\nB.\n# Task 3\n## Reasoning Step 1\nC.\n\n---\n\nAnswers: \n{}\n",
            answers.join("\n")
        );
        Reply::text_for(r, &text).delayed(delay)
    }
}

fn synth_command(inputs: &Path, out: &Path, url: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["synth", "--input"])
        .arg(inputs)
        .args(["--source", "wildguard", "--teacher-endpoint", url])
        .args(["--teacher-model", "teacher", "--concurrency", "4", "--out"])
        .arg(out)
        .env("OPENAI_API_KEY", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn finish(command: Command) -> Output {
    let mut command = command;
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_resume_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = 60;
    let inputs = write_inputs(dir.path(), n);
    let out = dir.path().join("synth.jsonl");
    let rejects = dir.path().join("synth.rejects.jsonl");
    let server = FaultServer::start(teacher(Duration::from_millis(100)))
        .await
        .unwrap();

    let mut child = synth_command(&inputs, &out, &server.url()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&out).len() + lines(&rejects).len() < 12 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done_at_kill = lines(&out).len() + lines(&rejects).len();
    assert!(done_at_kill < n, "killed too late to test anything");
    // Whatever the kill left, every complete line is JSON (a torn last line is cut on resume).
    for l in lines(&out).iter().rev().skip(1) {
        serde_json::from_str::<Value>(l).unwrap();
    }

    let output = finish(synth_command(&inputs, &out, &server.url())).await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    assert!(stdout.contains("inputs            60"), "{stdout}");

    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in lines(&out).iter().chain(lines(&rejects).iter()) {
        let row: Value = serde_json::from_str(l).unwrap();
        *seen
            .entry(row["key"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.len(), n, "nothing lost");
    assert!(seen.values().all(|&c| c == 1), "nothing duplicated");
    assert_eq!(
        lines(&out).len(),
        n,
        "the teacher agrees with every gold label"
    );
    // Only the requests in flight at the kill were sent twice.
    let sent = server.requests().len();
    assert!(
        sent >= n && sent <= n + 4 + 1,
        "{sent} requests for {n} inputs"
    );
    let summary: Value = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("summary-json "))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        summary["already_done"].as_u64().unwrap() as usize
            + summary["kept"].as_u64().unwrap() as usize,
        n
    );
    assert_eq!(summary["total_kept"], n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_fails_clearly_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 3);
    let out = dir.path().join("synth.jsonl");
    let server = FaultServer::start(teacher(Duration::ZERO)).await.unwrap();
    let mut command = synth_command(&inputs, &out, &format!("{}/v1", server.url()));
    command.env("OPENAI_API_KEY", "sk-wrong-key-777");
    let output = finish(command).await;
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success());
    assert!(all.contains("HTTP 401"), "{all}");
    assert!(!all.contains("sk-wrong-key-777"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_give_errors_that_name_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = FaultServer::start(teacher(Duration::ZERO)).await.unwrap();
    let out = dir.path().join("synth.jsonl");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"ok\", \"prompt_harm_label\": \"harmful\"}\n{\"prompt\": \"   \", \"prompt_harm_label\": \"harmful\"}\n{\"prompt\": \"what labels?\"}\n",
    )
    .unwrap();
    let stderr_of = |output: Output| {
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let e = stderr_of(finish(synth_command(&bad, &out, &server.url())).await);
    assert!(e.contains("bad.jsonl record 2: the prompt is empty"), "{e}");
    assert!(
        e.contains("bad.jsonl record 3 (prompt \"what labels?\"): no prompt harm label"),
        "{e}"
    );
    let e = stderr_of(
        finish(synth_command(
            &dir.path().join("missing.jsonl"),
            &out,
            &server.url(),
        ))
        .await,
    );
    assert!(e.contains("missing.jsonl"), "{e}");
    let mut unknown = Command::new(BIN);
    unknown
        .args(["synth", "--input"])
        .arg(&bad)
        .args(["--source", "reddit", "--teacher-endpoint", &server.url()])
        .args(["--teacher-model", "teacher", "--out"])
        .arg(&out);
    let e = stderr_of(finish(unknown).await);
    assert!(e.contains("unknown source \"reddit\""), "{e}");
    // Nothing was sent for any of them.
    assert!(server.requests().is_empty());
}

#[test]
fn batch_prepare_writes_one_request_per_input() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = write_inputs(dir.path(), 5);
    let out = dir.path().join("synth.jsonl");
    let requests = dir.path().join("requests.jsonl");
    let output = Command::new(BIN)
        .args(["synth", "batch-prepare", "--input"])
        .arg(&inputs)
        .args([
            "--source",
            "wildguard",
            "--teacher-model",
            "gpt-4o",
            "--out",
        ])
        .arg(&out)
        .arg("--requests")
        .arg(&requests)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = lines(&requests);
    assert_eq!(rows.len(), 5);
    let first: Value = serde_json::from_str(&rows[0]).unwrap();
    assert_eq!(first["url"], "/v1/chat/completions");
    assert_eq!(first["body"]["model"], "gpt-4o");
    assert_eq!(first["custom_id"].as_str().unwrap().len(), 64);
}
