//! Reasoning data synthesis, step 1 of GuardReasoner: labelled guard data in, a teacher
//! model's step-by-step reasoning out, validated against the gold labels and written in the
//! GuardReasonerTrain format that R-SFT reads.
//!
//! - [`input`]: records per source, into [`Sample`]s keyed by the sha256 of their input;
//! - [`teacher`]: the paper's synthesis prompt;
//! - [`validate`](mod@validate): what makes a reply acceptable;
//! - [`job`]: the resumable live run over any [`Backend`](guardreasoner_backend::Backend);
//! - [`batch`]: the OpenAI Batch API path (prepare requests, ingest results);
//! - [`distill`]: R-SFT records from released predictions or a model's own samples (no teacher
//!   call), validated the same way;
//! - [`labels`]: labelled prompts without reasoning into the inputs `mine sample` draws for;
//! - [`sample`]: hard-sample mining's sampling, `n` reasoning outputs per input from any
//!   [`Backend`](guardreasoner_backend::Backend), resumable; [`mine`]: the right/wrong pairs
//!   and their weights for HS-DPO (which `guardreasoner-train` trains on).
//!
//! From the command line:
//!
//! ```text
//! OPENAI_API_KEY=... guardreasoner synth --input wildguardmix-train.jsonl --source wildguard \
//!     --teacher-endpoint https://api.openai.com/v1 --teacher-model gpt-4o-2024-08-06 \
//!     --out WildGuardTrainR.jsonl --concurrency 32 --rpm 5000 --tpm 800000
//! ```
//!
//! Kept rows go to `WildGuardTrainR.jsonl`, rejects (with the reason and the reply) to
//! `WildGuardTrainR.rejects.jsonl`; running the same command again continues where it stopped.
//! Inputs whose teacher call failed after every retry are in neither file and are retried.

pub mod batch;
pub mod distill;
mod error;
pub mod input;
pub mod job;
pub mod labels;
pub mod mine;
pub mod sample;
pub mod teacher;
pub mod validate;

pub use error::SynthError;
pub use input::{load_samples, Expected, GoldAnswers, LoadedSamples, Sample, Source};
pub use job::{rejects_path, run, JobConfig, KeptRow, RejectRow, Summary};
pub use teacher::TeacherParams;
