//! Shared helpers for the integration tests: fixture paths and the default model.

#![allow(dead_code)]

use std::path::PathBuf;

#[allow(unused_imports)] // not every test binary that includes this module needs it
pub use guardreasoner_testing::test_model as default_model;

/// `../shared/fixtures/...` relative to the repository root.
pub fn fixture(rel: &str) -> PathBuf {
    guardreasoner_testing::fixtures().join(rel)
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let path = fixture(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an id array")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}
