//! Everything that can stop an evaluation, each naming the file, benchmark or row involved.

use guardreasoner_backend::BackendError;
use guardreasoner_core::jsonl::DataError;
use std::path::PathBuf;

/// Why an evaluation could not go on.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// `--benchmarks` named something that is not in the registry.
    #[error("unknown benchmark {name:?}; known: {known}")]
    UnknownBenchmark { name: String, known: String },
    /// `--benchmarks` was empty.
    #[error("no benchmark selected (use `all` or a comma-separated list of names)")]
    NoBenchmarks,
    /// A chart of the report could not be drawn or written.
    #[error("report chart: {0}")]
    Chart(#[from] guardreasoner_plot::PlotError),
    /// A benchmark data file could not be read or parsed.
    #[error("benchmark data: {0}")]
    Data(#[from] DataError),
    /// A benchmark data file that is not where the data directory says.
    #[error("benchmark data file {path} for {benchmark} is missing (is --data-dir right?)")]
    MissingDataFile { benchmark: String, path: PathBuf },
    /// A record whose `input` is not in the GuardReasoner layout, or whose stored prompt would
    /// not be rebuilt byte for byte.
    #[error("{path}: record {index}: {message}")]
    BadRecord {
        path: PathBuf,
        index: usize,
        message: String,
    },
    /// The output directory holds rows that this run would not write (a different sample,
    /// data file or model): mixing them would corrupt the evaluation.
    #[error("{path}: {message}; use another --out, or delete the file to start over")]
    ResumeMismatch { path: PathBuf, message: String },
    /// Generation failed for a row after the backend's retries. Rows finished before it are
    /// kept; running the same command again resumes.
    #[error("{benchmark}: row {index}: generation failed: {source}")]
    Generation {
        benchmark: String,
        index: usize,
        source: BackendError,
    },
    /// Writing outputs failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Invalid settings (concurrency 0, max_new_tokens 0, ...).
    #[error("invalid setting: {0}")]
    Setting(String),
}

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}
