//! Which benchmark files to run, and their records as guard prompts with gold labels.

use crate::error::EvalError;
use guardreasoner_core::benchmarks::{gold_label, Gold, GoldFormat};
use guardreasoner_core::jsonl::read_records;
use guardreasoner_core::prompt::{join_instruction_input, split_input};
use guardreasoner_core::score::WildGuardRow;
use guardreasoner_core::{Benchmark, Conversation, Task, BENCHMARKS};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One benchmark data file and the benchmark/task pairs scored on it. Generation happens once
/// per target (WildGuardTest feeds three tasks from one file and one prediction directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalTarget {
    /// Directory in the official prediction layout (`XSTestReponseHarmful`, sic).
    pub prediction_dir: &'static str,
    /// File name in the benchmark data directory.
    pub data_file: &'static str,
    /// The pairs scored on this file, in registry order.
    pub benchmarks: Vec<&'static Benchmark>,
}

impl EvalTarget {
    /// The paper's name of the benchmark (shared by all its tasks).
    pub fn name(&self) -> &'static str {
        self.benchmarks[0].name
    }

    /// Where this target's data file lives under `data_dir`.
    pub fn data_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.data_file)
    }
}

/// Every target in the registry, in registry order.
pub fn all_targets() -> Vec<EvalTarget> {
    let mut targets: Vec<EvalTarget> = Vec::new();
    for bench in &BENCHMARKS {
        match targets
            .iter_mut()
            .find(|t| t.prediction_dir == bench.prediction_dir)
        {
            Some(t) => t.benchmarks.push(bench),
            None => targets.push(EvalTarget {
                prediction_dir: bench.prediction_dir,
                data_file: bench.data_file,
                benchmarks: vec![bench],
            }),
        }
    }
    targets
}

/// Parse `--benchmarks`: `all`, or a comma-separated list of paper names or prediction
/// directories (case-insensitive). A name shared by several tasks (WildGuardTest) selects the
/// file once with all its tasks. The result is in registry order, without repeats.
pub fn select_targets(spec: &str) -> Result<Vec<EvalTarget>, EvalError> {
    let names: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return Err(EvalError::NoBenchmarks);
    }
    if names.iter().any(|n| n.eq_ignore_ascii_case("all")) {
        return Ok(all_targets());
    }
    let mut wanted: Vec<&'static str> = Vec::new();
    for name in names {
        let found = Benchmark::find(name);
        if found.is_empty() {
            let mut known: Vec<&str> = BENCHMARKS.iter().map(|b| b.name).collect();
            known.dedup();
            return Err(EvalError::UnknownBenchmark {
                name: name.to_string(),
                known: format!("all, {}", known.join(", ")),
            });
        }
        wanted.extend(found.iter().map(|b| b.prediction_dir));
    }
    Ok(all_targets()
        .into_iter()
        .filter(|t| wanted.contains(&t.prediction_dir))
        .collect())
}

/// A record as stored in an official benchmark file. WildGuardTest keeps its three labels in
/// extra fields; the other files in `output`.
#[derive(Debug, Deserialize)]
struct StoredRecord {
    #[serde(default)]
    instruction: Option<String>,
    input: String,
    #[serde(default)]
    output: Option<String>,
    #[serde(flatten)]
    labels: WildGuardRow,
}

/// One benchmark record, ready to send to the guard.
#[derive(Debug, Clone)]
pub struct BenchmarkRecord {
    /// Row index in the benchmark file.
    pub index: usize,
    pub conversation: Conversation,
    /// The full guard prompt (`INSTRUCTION + "\n" + input`), as written to predictions.
    pub prompt: String,
    /// The record's `output` (the gold label as stored; empty when the file has none).
    pub output: String,
    /// The gold label of each of the target's tasks, aligned with `EvalTarget::benchmarks`.
    pub gold: Vec<Gold>,
    /// WildGuardTest's label fields (empty elsewhere).
    pub wildguard: WildGuardRow,
}

impl BenchmarkRecord {
    /// The stratum this record belongs to when sampling: its gold labels over the target's
    /// tasks (`harmful`, or `harmful/unknown/compliance` for WildGuardTest).
    pub fn stratum(&self) -> String {
        self.gold
            .iter()
            .map(|g| match g {
                Gold::Label(l) => l.as_str(),
                Gold::Unknown => "unknown",
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn wildguard_label(row: &WildGuardRow, task: Task) -> Option<&str> {
    match task {
        Task::Prompt => row.prompt_harm_label.as_deref(),
        Task::Response => row.response_harm_label.as_deref(),
        Task::Refusal => row.response_refusal_label.as_deref(),
    }
}

/// Load a target's data file from `data_dir`. Every record must be in the GuardReasoner layout,
/// and where it stores an `instruction`, the guard prompt rebuilt from its conversation must
/// equal `instruction + "\n" + input` byte for byte (so we evaluate what the file says).
pub fn load_records(
    target: &EvalTarget,
    data_dir: &Path,
) -> Result<Vec<BenchmarkRecord>, EvalError> {
    let path = target.data_path(data_dir);
    if !path.exists() {
        return Err(EvalError::MissingDataFile {
            benchmark: target.name().to_string(),
            path,
        });
    }
    let stored: Vec<StoredRecord> = read_records(&path)?;
    let mut records = Vec::with_capacity(stored.len());
    for (index, record) in stored.into_iter().enumerate() {
        let bad = |message: String| EvalError::BadRecord {
            path: path.clone(),
            index,
            message,
        };
        let conversation = split_input(&record.input).ok_or_else(|| {
            bad(
                "`input` is not in the layout \"Human user:\\n...\\n\\nAI assistant:\\n...\\n\\n\""
                    .into(),
            )
        })?;
        if conversation.prompt.trim().is_empty() {
            return Err(bad("the user prompt is empty".into()));
        }
        let prompt = conversation.guard_prompt();
        if let Some(instruction) = &record.instruction {
            if join_instruction_input(instruction, &record.input) != prompt {
                return Err(bad(
                    "its `instruction` differs from the GuardReasoner instruction".into(),
                ));
            }
        }
        let output = record.output.unwrap_or_default();
        let gold = target
            .benchmarks
            .iter()
            .map(|b| match b.gold {
                GoldFormat::WildGuardFile => match wildguard_label(&record.labels, b.task) {
                    Some(l) => gold_label(l, b.task, GoldFormat::Plain),
                    None => Gold::Unknown,
                },
                format => gold_label(&output, b.task, format),
            })
            .collect();
        records.push(BenchmarkRecord {
            index,
            conversation,
            prompt,
            output,
            gold,
            wildguard: record.labels,
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildguard_is_one_target_with_three_tasks() {
        let all = all_targets();
        assert_eq!(all.len(), 11);
        let wg = all.iter().find(|t| t.name() == "WildGuardTest").unwrap();
        assert_eq!(wg.benchmarks.len(), 3);
        let picked = select_targets("wildguardtest, SimpleSafetyTests,WildGuardTest").unwrap();
        assert_eq!(
            picked.iter().map(|t| t.name()).collect::<Vec<_>>(),
            ["SimpleSafetyTests", "WildGuardTest"]
        );
        assert_eq!(select_targets("XSTestReponseHarmful").unwrap().len(), 1);
        assert_eq!(select_targets("all").unwrap(), all);
    }

    #[test]
    fn unknown_and_empty_selections_say_what_is_wrong() {
        let err = select_targets("SimpleSafetyTests,NoSuchBench")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"NoSuchBench\"") && err.contains("ToxicChat"),
            "{err}"
        );
        assert!(matches!(
            select_targets(" , "),
            Err(EvalError::NoBenchmarks)
        ));
    }

    #[test]
    fn bad_records_name_file_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let target = select_targets("SimpleSafetyTests").unwrap().remove(0);
        let err = load_records(&target, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("0_0_SimpleSafetyTests.json") && err.contains("missing"),
            "{err}"
        );
        let good = Conversation::new("hello", None).input();
        let text = serde_json::json!([
            {"input": good, "output": "unharmful"},
            {"input": "not the layout", "output": "harmful"}
        ]);
        std::fs::write(target.data_path(dir.path()), text.to_string()).unwrap();
        let err = load_records(&target, dir.path()).unwrap_err().to_string();
        assert!(err.contains("record 1") && err.contains("layout"), "{err}");
        std::fs::write(target.data_path(dir.path()), "[{\"input\": ").unwrap();
        let err = load_records(&target, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("0_0_SimpleSafetyTests.json") && err.contains("invalid JSON"),
            "{err}"
        );
    }
}
