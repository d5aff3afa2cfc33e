//! What stops a synthesis job.

use std::path::PathBuf;

/// A problem that stops the job (a bad input record, an unwritable file, a teacher that
/// refuses every request). Problems with one teacher reply are rejects, not errors.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Data(#[from] guardreasoner_core::jsonl::DataError),
    /// One or more input records cannot be used. Each message names its record.
    #[error("{path}: {} bad record(s):\n  {}", .problems.len(), .problems.join("\n  "))]
    BadRecords {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("unknown source {0:?} (expected wildguard, aegis, toxicchat, beavertails or generic)")]
    UnknownSource(String),
    /// The teacher endpoint turned us away in a way no retry fixes (bad key, unknown model).
    #[error("the teacher endpoint refused the job: {0}")]
    Teacher(guardreasoner_backend::BackendError),
    /// Mining settings that cannot work (no samples asked for, no room to generate).
    #[error("sampling settings: {0}")]
    Settings(String),
    /// Sampling for mining stopped: a failed input, or a samples file for other inputs.
    #[error("{0}")]
    Sampling(String),
    /// A line of a Batch API results file that cannot be read.
    #[error("{path}:{line}: {message}")]
    BatchResults {
        path: PathBuf,
        line: usize,
        message: String,
    },
}
