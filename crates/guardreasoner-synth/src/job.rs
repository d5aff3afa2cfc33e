//! The resumable synthesis job: every sample ends kept or rejected exactly once, across any
//! number of restarts.

use crate::input::{Sample, Source};
use crate::teacher::{teacher_request, TeacherParams};
use crate::validate::{validate, Rejection};
use crate::SynthError;
use guardreasoner_backend::{Backend, BackendError, FinishReason, Usage};
use guardreasoner_core::jsonl::JsonlAppender;
use guardreasoner_core::INSTRUCTION;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::task::JoinSet;

/// A kept sample: a GuardReasonerTrain row (`instruction`, `input`, `output`, what R-SFT
/// reads) plus where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptRow {
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub key: String,
    pub source: String,
    pub record: String,
    /// Reasoning steps of Tasks 1, 2, 3.
    pub steps: [usize; 3],
}

/// A rejected sample, with the reply that failed (when there was one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectRow {
    pub key: String,
    pub source: String,
    pub record: String,
    pub reason: String,
    pub detail: String,
    pub reply: Option<String>,
}

/// Only the key of an existing row, to know what is done.
#[derive(Deserialize)]
struct Keyed {
    key: String,
}

/// `synth.jsonl` -> `synth.rejects.jsonl`.
pub fn rejects_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".jsonl")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(&name);
    out.with_file_name(format!("{stem}.rejects.jsonl"))
}

/// Counts of one run, and of the files after it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Samples in the input (after `--limit`, duplicates removed).
    pub inputs: usize,
    /// Records that repeated an earlier input.
    pub duplicates: usize,
    /// Already kept or rejected by an earlier run.
    pub already_done: usize,
    pub kept: usize,
    pub rejected: usize,
    pub rejected_by_reason: BTreeMap<String, usize>,
    /// Teacher calls that failed after every retry: not recorded, redone by the next run.
    pub failed: usize,
    pub failed_by_kind: BTreeMap<String, usize>,
    pub retries: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Reasoning steps per kept sample (all three tasks).
    pub steps_per_sample: StepStats,
    /// Rows in the output and rejects files after this run.
    pub total_kept: usize,
    pub total_rejected: usize,
}

impl Summary {
    /// Inputs neither kept nor rejected yet.
    pub fn remaining(&self) -> usize {
        self.inputs
            .saturating_sub(self.total_kept + self.total_rejected)
    }
}

/// Distribution of reasoning steps per kept sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepStats {
    pub count: usize,
    pub mean: f64,
    pub min: usize,
    pub max: usize,
    /// Kept samples per total step count.
    pub histogram: BTreeMap<usize, usize>,
}

impl StepStats {
    fn add(&mut self, steps: usize) {
        self.mean = (self.mean * self.count as f64 + steps as f64) / (self.count + 1) as f64;
        self.min = if self.count == 0 {
            steps
        } else {
            self.min.min(steps)
        };
        self.max = self.max.max(steps);
        self.count += 1;
        *self.histogram.entry(steps).or_default() += 1;
    }
}

/// What the teacher gave for one sample.
#[derive(Debug, Clone)]
pub struct TeacherReply {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// The output and rejects files, the set of done keys, and the counts: the one place results
/// are recorded, for live runs and Batch API ingestion alike.
pub struct Recorder {
    out: JsonlAppender,
    rejects: JsonlAppender,
    done: HashSet<String>,
    source: Source,
    pub summary: Summary,
    since_sync: usize,
}

/// Force data to disk every this many rows (each row is already flushed to the OS, which
/// survives a killed process; syncing guards against a lost machine).
const SYNC_EVERY: usize = 64;

impl Recorder {
    /// Open (or create) `out` and its rejects file, reading what earlier runs finished.
    pub fn open(out: &Path, source: Source) -> Result<Self, SynthError> {
        let (out_file, kept) = JsonlAppender::open::<Keyed>(out)?;
        let (rejects, rejected) = JsonlAppender::open::<Keyed>(&rejects_path(out))?;
        let summary = Summary {
            total_kept: kept.len(),
            total_rejected: rejected.len(),
            ..Summary::default()
        };
        let done = kept.into_iter().chain(rejected).map(|k| k.key).collect();
        Ok(Self {
            out: out_file,
            rejects,
            done,
            source,
            summary,
            since_sync: 0,
        })
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    /// Validate a reply and keep or reject it. A sample already done is left alone.
    pub fn record_reply(&mut self, sample: &Sample, reply: TeacherReply) -> Result<(), SynthError> {
        self.summary.prompt_tokens += reply.usage.prompt_tokens;
        self.summary.completion_tokens += reply.usage.completion_tokens;
        if self.is_done(&sample.key) {
            return Ok(());
        }
        match validate(&reply.text, &reply.finish_reason, &sample.gold) {
            Ok(accepted) => {
                self.out.append(&KeptRow {
                    instruction: INSTRUCTION.to_string(),
                    input: sample.input(),
                    output: accepted.output,
                    key: sample.key.clone(),
                    source: self.source.to_string(),
                    record: sample.record.clone(),
                    steps: accepted.steps,
                })?;
                self.summary.kept += 1;
                self.summary.total_kept += 1;
                self.summary
                    .steps_per_sample
                    .add(accepted.steps.iter().sum());
                self.mark_done(sample)
            }
            Err(rejection) => self.reject(sample, rejection, Some(reply.text)),
        }
    }

    /// Record a sample the endpoint would not take (a request error no retry fixes).
    pub fn record_refused(
        &mut self,
        sample: &Sample,
        error: &BackendError,
    ) -> Result<(), SynthError> {
        self.reject(
            sample,
            Rejection {
                reason: "request_rejected".into(),
                detail: error.to_string(),
            },
            None,
        )
    }

    /// Count a failure that a later run will retry.
    pub fn record_failure(&mut self, kind: &str) {
        self.summary.failed += 1;
        *self
            .summary
            .failed_by_kind
            .entry(kind.to_string())
            .or_default() += 1;
    }

    fn reject(
        &mut self,
        sample: &Sample,
        rejection: Rejection,
        reply: Option<String>,
    ) -> Result<(), SynthError> {
        if self.is_done(&sample.key) {
            return Ok(());
        }
        self.rejects.append(&RejectRow {
            key: sample.key.clone(),
            source: self.source.to_string(),
            record: sample.record.clone(),
            reason: rejection.reason.clone(),
            detail: rejection.detail,
            reply,
        })?;
        self.summary.rejected += 1;
        self.summary.total_rejected += 1;
        *self
            .summary
            .rejected_by_reason
            .entry(rejection.reason)
            .or_default() += 1;
        self.mark_done(sample)
    }

    fn mark_done(&mut self, sample: &Sample) -> Result<(), SynthError> {
        self.done.insert(sample.key.clone());
        self.since_sync += 1;
        if self.since_sync >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Force both files to disk.
    pub fn sync(&mut self) -> Result<(), SynthError> {
        self.since_sync = 0;
        self.out.sync()?;
        self.rejects.sync()?;
        Ok(())
    }
}

/// Settings of a live run.
#[derive(Debug, Clone)]
pub struct JobConfig {
    pub out: PathBuf,
    pub source: Source,
    pub teacher: TeacherParams,
    /// Teacher requests in flight at once.
    pub concurrency: usize,
}

/// Whether an error means the whole job cannot work (bad key, unknown model or route), as
/// opposed to a problem with one sample.
fn is_fatal(error: &BackendError) -> bool {
    matches!(error, BackendError::Status { status, .. } if matches!(status, 401 | 403 | 404))
}

/// Run the teacher over every sample not yet done. Returns the summary; rows are on disk as
/// soon as each reply is in.
pub async fn run(
    samples: &[Sample],
    duplicates: usize,
    backend: Arc<dyn Backend>,
    config: &JobConfig,
    progress: &ProgressBar,
) -> Result<Summary, SynthError> {
    let mut recorder = Recorder::open(&config.out, config.source)?;
    recorder.summary.inputs = samples.len();
    recorder.summary.duplicates = duplicates;
    let pending: Vec<usize> = (0..samples.len())
        .filter(|&i| !recorder.is_done(&samples[i].key))
        .collect();
    recorder.summary.already_done = samples.len() - pending.len();
    progress.set_length(pending.len() as u64);
    let retries_before = backend.stats().retries;
    let concurrency = config.concurrency.max(1);
    let mut queue = pending.into_iter();
    let mut in_flight = JoinSet::new();
    let mut outcome = Ok(());
    loop {
        while in_flight.len() < concurrency {
            let Some(i) = queue.next() else { break };
            let backend = backend.clone();
            let request = teacher_request(&samples[i], &config.teacher);
            in_flight.spawn(async move { (i, backend.generate(request).await) });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let (i, result) = match joined {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => continue,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let sample = &samples[i];
        let recorded = match result {
            Ok(generation) => match generation.choices.into_iter().next() {
                Some(choice) => recorder.record_reply(
                    sample,
                    TeacherReply {
                        text: choice.text,
                        finish_reason: choice.finish_reason,
                        usage: generation.usage,
                    },
                ),
                None => {
                    recorder.record_failure("invalid_response");
                    Ok(())
                }
            },
            Err(error) if is_fatal(&error) => {
                outcome = Err(SynthError::Teacher(error));
                break;
            }
            Err(error) if error.is_retryable() || matches!(error, BackendError::Cancelled) => {
                recorder.record_failure(error.kind());
                Ok(())
            }
            Err(error) => recorder.record_refused(sample, &error),
        };
        recorded?;
        progress.inc(1);
        progress.set_message(format!(
            "kept {} rejected {} failed {}",
            recorder.summary.kept, recorder.summary.rejected, recorder.summary.failed
        ));
    }
    in_flight.abort_all();
    recorder.sync()?;
    recorder.summary.retries = backend.stats().retries - retries_before;
    outcome.map(|()| recorder.summary)
}
