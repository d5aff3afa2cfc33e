//! Reasoning data synthesis, step 1 of GuardReasoner: labelled guard data in, a teacher
//! model's step-by-step reasoning out, validated against the gold labels and written in the
//! GuardReasonerTrain format that R-SFT reads.
//!
//! - [`input`]: records per source, into [`Sample`]s keyed by the sha256 of their input;
//! - [`teacher`]: the paper's synthesis prompt;
//! - [`validate`](mod@validate): what makes a reply acceptable;
//! - [`job`]: the resumable live run over any [`Backend`](guardreasoner_backend::Backend);
//! - [`batch`]: the OpenAI Batch API path (prepare requests, ingest results).

pub mod batch;
mod error;
pub mod input;
pub mod job;
pub mod teacher;
pub mod validate;

pub use error::SynthError;
pub use input::{load_samples, Expected, GoldAnswers, LoadedSamples, Sample, Source};
pub use job::{rejects_path, run, JobConfig, KeptRow, RejectRow, Summary};
pub use teacher::TeacherParams;
