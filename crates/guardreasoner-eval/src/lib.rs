//! `guardreasoner eval`: generate GuardReasoner outputs for the paper's benchmarks through any
//! [`guardreasoner_backend::Backend`] (the local engine or an OpenAI-compatible server), in the
//! official prediction layout, resumably; then score them and report beside the paper.
//!
//! The flow: [`select_targets`] picks benchmark files, [`run_eval`] loads and checks them,
//! draws the `--limit` sample ([`stratified_sample`]) and generates each file with
//! [`generate_target`]; [`write_report`] scores (strict and paper policy) and writes
//! `report.md`, `report.json` and charts (SVG and PNG).

pub mod cascade;
pub mod chart;
mod data;
mod error;
mod report;
mod run;
mod sample;
#[cfg(feature = "test-support")]
pub mod testing;

pub use data::{all_targets, load_records, select_targets, BenchmarkRecord, EvalTarget};
pub use error::EvalError;
pub use report::{score_outcome, write_report, WrittenReport};
pub use run::{
    generate_target, predictions_path, run_eval, select_rows, write_in_index_order,
    CompletedTarget, EvalConfig, EvalOutcome, EvalRow, GenerationSettings, NoProgress, Progress,
    TargetSummary, RUN_SETTINGS_FILE,
};
pub use sample::stratified_sample;
