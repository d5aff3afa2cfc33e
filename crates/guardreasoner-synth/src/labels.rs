//! Labelled prompts without reasoning (`../shared/data/train-labels/`: `prompt`, optional
//! `response`, the `*_label` fields) into [`GoldRecord`]s, the inputs `mine sample` draws
//! reasoning for. The same hygiene as [`distill`](crate::distill): conversations of the unseen
//! test sets are dropped, and so are the prompts of the development split, so nothing sampled
//! here can leak into what choices are made on.
//!
//! Records come out ordered by the sha256 of their input: a fixed pseudo-random order that mixes
//! the sources and labels, so the first N of the file (`mine sample --limit N`) are a fair sample
//! of the whole and a run stopped early still has the pool's balance.

use crate::distill::in_dev_split;
use crate::input::input_key;
use crate::SynthError;
use guardreasoner_core::hygiene::UnseenSets;
use guardreasoner_core::jsonl::read_records;
use guardreasoner_core::prompt::split_input;
use guardreasoner_core::records::GoldRecord;
use guardreasoner_core::{build_input, Label, Task, INSTRUCTION};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

#[derive(Deserialize)]
struct LabelledRecord {
    #[serde(default)]
    instruction: Option<String>,
    #[serde(default)]
    input: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    response: Option<String>,
    #[serde(default)]
    prompt_harm_label: Option<String>,
    #[serde(default)]
    response_refusal_label: Option<String>,
    #[serde(default)]
    response_harm_label: Option<String>,
}

/// What happened to the records.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LabelsReport {
    pub read: usize,
    pub kept: usize,
    /// Conversations of the unseen test sets.
    pub unseen: usize,
    /// Prompts of the development split.
    pub dev: usize,
    /// An input already kept from an earlier record (the first one's labels win).
    pub duplicate: usize,
    /// Kept records by prompt label.
    pub by_prompt_label: BTreeMap<String, usize>,
}

fn parse_label(
    text: Option<&str>,
    task: Task,
    path: &std::path::Path,
    line: usize,
) -> Result<Option<Label>, SynthError> {
    match text {
        None => Ok(None),
        Some(t) => match Label::parse(t) {
            Some(l) if task.accepts(l) => Ok(Some(l)),
            _ => Err(SynthError::BadRecords {
                path: path.to_path_buf(),
                problems: vec![format!(
                    "record {line}: {t:?} is not a label of the {} task",
                    task.title()
                )],
            }),
        },
    }
}

/// The labelled inputs, split.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledInputs {
    /// Training inputs, ordered by input hash.
    pub train: Vec<GoldRecord>,
    /// The development split's inputs (de-duplicated, ordered by input hash): what choices
    /// are made on, never trained on.
    pub dev: Vec<GoldRecord>,
    pub report: LabelsReport,
}

/// Reads the labelled files in order and splits the kept records into training inputs and
/// the development split.
pub fn gold_from_labels(
    paths: &[PathBuf],
    unseen: &UnseenSets,
    dev_fraction: f64,
) -> Result<LabelledInputs, SynthError> {
    let mut report = LabelsReport::default();
    let mut seen = HashSet::new();
    let mut kept: Vec<(String, GoldRecord)> = Vec::new();
    let mut dev: Vec<(String, GoldRecord)> = Vec::new();
    for path in paths {
        let records: Vec<LabelledRecord> = read_records(path)?;
        for (i, r) in records.into_iter().enumerate() {
            let line = i + 1;
            report.read += 1;
            let bad = |m: &str| SynthError::BadRecords {
                path: path.clone(),
                problems: vec![format!("record {line}: {m}")],
            };
            let conversation = match (&r.input, &r.prompt) {
                (Some(input), _) => {
                    split_input(input).ok_or_else(|| bad("`input` is not in the layout"))?
                }
                (None, Some(prompt)) => split_input(&build_input(prompt, r.response.as_deref()))
                    .ok_or_else(|| bad("the prompt does not fit the layout"))?,
                (None, None) => return Err(bad("neither `input` nor `prompt`")),
            };
            let prompt_harm_label =
                parse_label(r.prompt_harm_label.as_deref(), Task::Prompt, path, line)?;
            if prompt_harm_label.is_none() {
                return Err(bad("no `prompt_harm_label`"));
            }
            if unseen.contains(&conversation.prompt) {
                report.unseen += 1;
                continue;
            }
            let is_dev = in_dev_split(&conversation.prompt, dev_fraction);
            let input = conversation.input();
            let key = input_key(&input);
            if !seen.insert(key.clone()) {
                report.duplicate += 1;
                continue;
            }
            let record = GoldRecord {
                instruction: r.instruction.unwrap_or_else(|| INSTRUCTION.to_string()),
                input,
                prompt_harm_label,
                response_refusal_label: parse_label(
                    r.response_refusal_label.as_deref(),
                    Task::Refusal,
                    path,
                    line,
                )?,
                response_harm_label: parse_label(
                    r.response_harm_label.as_deref(),
                    Task::Response,
                    path,
                    line,
                )?,
            };
            if is_dev {
                report.dev += 1;
                dev.push((key, record));
                continue;
            }
            let label = prompt_harm_label.map_or("None", |l| l.as_str());
            *report.by_prompt_label.entry(label.to_string()).or_default() += 1;
            kept.push((key, record));
        }
    }
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    dev.sort_by(|a, b| a.0.cmp(&b.0));
    report.kept = kept.len();
    let strip = |v: Vec<(String, GoldRecord)>| v.into_iter().map(|(_, r)| r).collect();
    Ok(LabelledInputs {
        train: strip(kept),
        dev: strip(dev),
        report,
    })
}

/// Prompt-only records as a prompt-task benchmark file in the official layout
/// (`instruction`, `input`, `output` = the plain request label), for `eval --data-dir`.
/// Records with a response are left out (their other labels have no such file).
pub fn prompt_benchmark_records(records: &[GoldRecord]) -> Vec<serde_json::Value> {
    records
        .iter()
        .filter(|r| split_input(&r.input).is_some_and(|c| c.response.is_none()))
        .filter_map(|r| {
            let label = r.prompt_harm_label?;
            Some(serde_json::json!({
                "instruction": r.instruction,
                "input": r.input,
                "output": label.as_str(),
            }))
        })
        .collect()
}
