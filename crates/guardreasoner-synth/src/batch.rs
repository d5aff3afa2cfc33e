//! The OpenAI Batch API path for large jobs: write the requests as a JSONL file to upload,
//! then ingest the results file through the same validation and writers as a live run.

use crate::input::Sample;
use crate::job::{Recorder, Summary, TeacherReply};
use crate::teacher::{teacher_request, TeacherParams};
use crate::SynthError;
use guardreasoner_backend::{parse_reply, request_body};
use guardreasoner_core::jsonl::JsonlAppender;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// One line of a Batch API input file.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchRequestLine {
    /// The sample's key, so results map back to their input.
    pub custom_id: String,
    pub method: String,
    pub url: String,
    pub body: Value,
}

/// What `prepare` wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PrepareSummary {
    pub written: usize,
    /// Already kept or rejected in the output: not requested again.
    pub already_done: usize,
    /// Already in the requests file from an earlier prepare.
    pub already_prepared: usize,
}

/// Append a chat-completions request for every sample not yet done (in `out` or its rejects)
/// to `requests`. Running it again adds only what is missing.
pub fn prepare(
    samples: &[Sample],
    model: &str,
    params: &TeacherParams,
    out: &Path,
    requests: &Path,
) -> Result<PrepareSummary, SynthError> {
    let recorder = Recorder::open(out, crate::Source::Generic)?;
    let (mut writer, existing) = JsonlAppender::open::<BatchRequestLine>(requests)?;
    let prepared: std::collections::HashSet<String> =
        existing.into_iter().map(|l| l.custom_id).collect();
    let mut summary = PrepareSummary::default();
    for sample in samples {
        if recorder.is_done(&sample.key) {
            summary.already_done += 1;
            continue;
        }
        if prepared.contains(&sample.key) {
            summary.already_prepared += 1;
            continue;
        }
        writer.append(&BatchRequestLine {
            custom_id: sample.key.clone(),
            method: "POST".into(),
            url: "/v1/chat/completions".into(),
            body: request_body(model, &teacher_request(sample, params)),
        })?;
        summary.written += 1;
    }
    writer.sync()?;
    Ok(summary)
}

/// One line of a Batch API output file.
#[derive(Deserialize)]
struct BatchResultLine {
    custom_id: String,
    #[serde(default)]
    response: Option<BatchResponse>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct BatchResponse {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

/// Extra counts of an ingest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngestSummary {
    pub summary: Summary,
    /// Result lines whose `custom_id` is no input's key (another job's file?).
    pub unknown_ids: usize,
}

/// Validate and record every result in `results` for the given samples. Errored requests are
/// counted as failed (prepare again to retry them); results for samples already done are
/// ignored, so ingesting the same file twice changes nothing.
pub fn ingest(
    samples: &[Sample],
    results: &Path,
    out: &Path,
    source: crate::Source,
) -> Result<IngestSummary, SynthError> {
    let by_key: HashMap<&str, &Sample> = samples.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut recorder = Recorder::open(out, source)?;
    recorder.summary.inputs = samples.len();
    recorder.summary.already_done = samples.iter().filter(|s| recorder.is_done(&s.key)).count();
    let mut unknown_ids = 0;
    let file = std::fs::File::open(results)
        .map_err(|e| guardreasoner_core::jsonl::DataError::io(results, e))?;
    let bad_line = |line: usize, message: String| SynthError::BatchResults {
        path: results.to_path_buf(),
        line,
        message,
    };
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| guardreasoner_core::jsonl::DataError::io(results, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let result: BatchResultLine = serde_json::from_str(&line)
            .map_err(|e| bad_line(i + 1, format!("not a Batch API result line: {e}")))?;
        let Some(sample) = by_key.get(result.custom_id.as_str()) else {
            unknown_ids += 1;
            continue;
        };
        if recorder.is_done(&sample.key) {
            continue;
        }
        let response = match (&result.error, result.response) {
            (Some(e), _) if !e.is_null() => {
                recorder.record_failure("batch_error");
                continue;
            }
            (_, Some(r)) if r.status_code == 200 => r,
            (_, Some(r)) => {
                recorder.record_failure(&format!("http_{}", r.status_code));
                continue;
            }
            (_, None) => {
                return Err(bad_line(i + 1, "neither `response` nor `error`".into()));
            }
        };
        let body = serde_json::to_vec(&response.body).unwrap_or_default();
        let generation = match parse_reply(&body, true, 1) {
            Ok(g) => g,
            Err(message) => {
                return Err(bad_line(i + 1, format!("response body: {message}")));
            }
        };
        let choice = generation
            .choices
            .into_iter()
            .next()
            .expect("n = 1 checked by parse_reply");
        recorder.record_reply(
            sample,
            TeacherReply {
                text: choice.text,
                finish_reason: choice.finish_reason,
                usage: generation.usage,
            },
        )?;
    }
    recorder.sync()?;
    Ok(IngestSummary {
        summary: recorder.summary,
        unknown_ids,
    })
}
