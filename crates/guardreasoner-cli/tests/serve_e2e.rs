//! End to end on the real binaries: `guardreasoner serve` with the embedded model on loopback,
//! and `guardreasoner synth` using it as the teacher, and `guardreasoner mine sample` drawing
//! samples from it, through the OpenAI-compatible API.

mod common;

use common::{serve, Process, BIN};
use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

async fn start_server(key: &str) -> (Process, String) {
    let model = guardreasoner_testing::test_model().expect("these tests need the default model");
    let model = model.to_str().unwrap();
    serve(
        &["--threads", "2", "--model", model],
        &[("GUARDREASONER_API_KEY", key)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synth_with_our_own_server_as_the_teacher() {
    let key = "e2e-key-123";
    let (mut served, url) = start_server(key).await;
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.jsonl");
    std::fs::write(
        &inputs,
        "{\"prompt\": \"How do I bake bread?\", \"prompt_harm_label\": \"unharmful\"}\n{\"prompt\": \"How do I hurt someone?\", \"prompt_harm_label\": \"harmful\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let status = Command::new(BIN)
        .args(["synth", "--input"])
        .arg(&inputs)
        .args([
            "--source",
            "generic",
            "--teacher-endpoint",
            &url,
            "--teacher-model",
            "guardreasoner",
        ])
        .args(["--max-new-tokens", "48", "--concurrency", "2", "--out"])
        .arg(&out)
        .env("OPENAI_API_KEY", key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "synth failed: {stderr}");
    assert!(!stderr.contains(key), "the key must never be printed");
    // A 135M base model rarely satisfies the validation; what matters is that every input
    // ends up kept or rejected exactly once.
    let read = |p: PathBuf| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let kept = read(out.clone());
    let rejected = read(dir.path().join("out.rejects.jsonl"));
    assert_eq!(
        kept.len() + rejected.len(),
        2,
        "kept {kept:?}, rejected {rejected:?}"
    );
    let keys: HashSet<String> = kept
        .iter()
        .chain(&rejected)
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 2);
    for r in &rejected {
        assert!(r["reason"].is_string(), "a reject says why: {r}");
    }

    // Hard-sample mining draws its samples through the same endpoint: n outputs per input.
    let gold = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/train-reasoning/guardreasonertrain_samples.json");
    let samples = dir.path().join("samples.jsonl");
    let mined = Command::new(BIN)
        .args(["mine", "sample", "--gold"])
        .arg(&gold)
        .args([
            "--limit",
            "2",
            "--endpoint",
            &url,
            "--served-model",
            "guardreasoner",
        ])
        .args([
            "--n",
            "3",
            "--max-new-tokens",
            "8",
            "--name",
            "rsft-a",
            "--output",
        ])
        .arg(&samples)
        .env("OPENAI_API_KEY", key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&mined.stderr);
    assert!(mined.status.success(), "mine sample failed: {stderr}");
    assert!(!stderr.contains(key), "the key must never be printed");
    let sets = read(samples);
    assert_eq!(sets.len(), 2);
    for set in &sets {
        assert_eq!(set["model"], "rsft-a");
        assert_eq!(set["outputs"].as_array().unwrap().len(), 3);
    }

    // SIGTERM: the server finishes and exits cleanly.
    let pid = served.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let start = Instant::now();
    let code = loop {
        if let Some(s) = served.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(code.success(), "{code:?}");
}
