//! Distillation data from released predictions: official-layout prediction directories
//! (`<dir>/<Benchmark>/generated_predictions.jsonl`) and their benchmark files in, R-SFT
//! records out.
//!
//! A trace is kept only when [`validate`] accepts it against every gold label known for its
//! conversation. Gold labels are gathered from all *seen* benchmark files at once: a prompt's
//! harm label from any file that labels that prompt (HarmBenchPrompt labels the prompts of
//! HarmBenchResponse too), a response's labels from any file with the same conversation
//! (XSTestResponseHarmful and XSTestResponseRefusal share theirs). Conversations without a
//! response must answer `None` for Tasks 2 and 3; released traces that answer
//! `refusal`/`unharmful` there are rejected (`label_mismatch`), which normalises the pool to
//! one convention. Conversations of the unseen test sets ([`UnseenSets`]) are dropped.

use crate::input::{input_key, Expected, GoldAnswers};
use crate::validate::validate;
use crate::SynthError;
use guardreasoner_backend::FinishReason;
use guardreasoner_core::benchmarks::{gold_from_output, Gold};
use guardreasoner_core::hygiene::{normalise, UnseenSets, UNSEEN_FILES};
use guardreasoner_core::jsonl::read_records;
use guardreasoner_core::prompt::split_input;
use guardreasoner_core::records::{GoldRecord, SampleSet};
use guardreasoner_core::{Benchmark, Conversation, Label, Task, BENCHMARKS, INSTRUCTION};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// One distilled R-SFT record (the GuardReasonerTrain fields first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistilledRow {
    pub instruction: String,
    pub input: String,
    pub output: String,
    /// sha256 of `input`.
    pub key: String,
    /// Where the trace came from: `paper-v1/8B/AegisSafetyTest`, or a file name.
    pub source: String,
    pub prompt_harm_label: Option<Label>,
    pub response_refusal_label: Option<Label>,
    pub response_harm_label: Option<Label>,
}

/// What happened to the traces of one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceCounts {
    pub read: usize,
    pub kept: usize,
    /// A trace already kept for the same conversation, word for word.
    pub duplicate: usize,
    /// Conversations of the unseen test sets.
    pub unseen: usize,
    /// Accepted, but the conversation already had its quota of traces.
    pub over_quota: usize,
    /// In the development split (written there, not trained on).
    pub dev: usize,
    /// Rejected by validation, by reason.
    pub rejected: BTreeMap<String, usize>,
}

/// What a distillation produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DistillReport {
    pub sources: BTreeMap<String, SourceCounts>,
    /// Distinct conversations with at least one kept trace.
    pub conversations: usize,
    /// Distinct conversations held out for development.
    pub dev_conversations: usize,
    /// Kept rows by the request label they answer (`harmful`, `unharmful`).
    pub by_request_label: BTreeMap<String, usize>,
    /// Gold labels two benchmark files disagreed on (dropped: such a task counts as unknown).
    pub conflicting_gold: usize,
}

/// How many traces to keep per conversation, and which conversations are held out.
#[derive(Debug, Clone)]
pub struct DistillConfig {
    /// Prediction directories, in order of preference (earlier traces are kept first).
    pub predictions: Vec<PathBuf>,
    /// The official benchmark files (gold labels; also where the unseen sets are read).
    pub benchmarks_dir: PathBuf,
    /// GuardReasonerTrain files with reasoning (`instruction`, `input`, `output` and the
    /// `*_label` fields); their `output` is validated like a trace.
    pub extra: Vec<PathBuf>,
    /// Traces kept per conversation.
    pub max_traces: usize,
    /// Traces kept per conversation whose request is `unharmful` (gold where known, else the
    /// trace's answer): the released pool leans harmful, extra traces of benign ones rebalance it.
    pub max_traces_unharmful: usize,
    /// A model's own sampled reasoning (`mine sample` files) and the gold inputs they were
    /// drawn for (`mine sample --gold`): rejection-sampled self-training data, validated like
    /// the released traces. Kept after the predictions and `extra`, under `self/<model>`.
    pub samples: Vec<PathBuf>,
    pub samples_gold: Option<PathBuf>,
    /// Fraction of prompts (by hash of the normalised prompt) held out as the development split.
    pub dev_fraction: f64,
}

/// Kept training rows, the development split, and the counts.
#[derive(Debug, Clone)]
pub struct Distilled {
    pub train: Vec<DistilledRow>,
    /// Development conversations with their gold labels (one row each, the first kept trace).
    pub dev: Vec<DistilledRow>,
    pub report: DistillReport,
}

/// Whether a prompt belongs to the development split: the same answer for the same prompt
/// in every file and every run.
pub fn in_dev_split(prompt: &str, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let key = input_key(&normalise(prompt));
    let bucket = u32::from_str_radix(&key[..8], 16).expect("hex digest");
    (bucket as f64) < fraction * (u32::MAX as f64 + 1.0)
}

#[derive(Default)]
struct GoldTable {
    prompt: HashMap<String, Option<Label>>,
    refusal: HashMap<(String, String), Option<Label>>,
    response: HashMap<(String, String), Option<Label>>,
    conflicts: usize,
}

fn record<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Option<Label>>,
    key: K,
    label: Label,
    conflicts: &mut usize,
) {
    match map.get(&key) {
        None => {
            map.insert(key, Some(label));
        }
        Some(Some(l)) if *l != label => {
            *conflicts += 1;
            map.insert(key, None);
        }
        _ => {}
    }
}

impl GoldTable {
    fn add(&mut self, conversation: &Conversation, task: Task, label: Label) {
        let p = normalise(&conversation.prompt);
        match (task, &conversation.response) {
            (Task::Prompt, _) => record(&mut self.prompt, p, label, &mut self.conflicts),
            (Task::Refusal, Some(r)) => record(
                &mut self.refusal,
                (p, normalise(r)),
                label,
                &mut self.conflicts,
            ),
            (Task::Response, Some(r)) => record(
                &mut self.response,
                (p, normalise(r)),
                label,
                &mut self.conflicts,
            ),
            _ => {}
        }
    }

    fn answers(&self, conversation: &Conversation) -> GoldAnswers {
        let p = normalise(&conversation.prompt);
        let known = |l: Option<&Option<Label>>| match l {
            Some(Some(l)) => Expected::Label(*l),
            _ => Expected::TeacherDecides,
        };
        let request = known(self.prompt.get(&p));
        match &conversation.response {
            None => GoldAnswers {
                request,
                completion: Expected::NotApplicable,
                response: Expected::NotApplicable,
            },
            Some(r) => {
                let key = (p, normalise(r));
                GoldAnswers {
                    request,
                    completion: known(self.refusal.get(&key)),
                    response: known(self.response.get(&key)),
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct BenchmarkFileRecord {
    input: String,
    output: String,
}

#[derive(Deserialize)]
struct PredictionLine {
    prompt: String,
    predict: String,
}

#[derive(Deserialize)]
struct ExtraRecord {
    instruction: String,
    input: String,
    output: String,
    #[serde(default)]
    prompt_harm_label: Option<String>,
    #[serde(default)]
    response_refusal_label: Option<String>,
    #[serde(default)]
    response_harm_label: Option<String>,
}

fn seen_benchmarks() -> impl Iterator<Item = &'static Benchmark> {
    BENCHMARKS
        .iter()
        .filter(|b| !UNSEEN_FILES.contains(&b.data_file))
}

fn load_gold(dir: &Path) -> Result<GoldTable, SynthError> {
    let mut table = GoldTable::default();
    for bench in seen_benchmarks() {
        let path = dir.join(bench.data_file);
        if !path.exists() {
            // WildGuardTest's full file is not available; the others must be.
            continue;
        }
        let records: Vec<BenchmarkFileRecord> = read_records(&path)?;
        for (i, r) in records.iter().enumerate() {
            let conversation = split_input(&r.input).ok_or_else(|| SynthError::BadRecords {
                path: path.clone(),
                problems: vec![format!("record {}: `input` is not in the layout", i + 1)],
            })?;
            if let Gold::Label(l) = gold_from_output(&r.output, bench.task) {
                table.add(&conversation, bench.task, l);
            }
        }
    }
    Ok(table)
}

fn label(text: Option<&str>) -> Option<Label> {
    text.and_then(Label::parse)
}

struct Candidate {
    conversation: Conversation,
    instruction: String,
    output: String,
    source: String,
    gold: GoldAnswers,
}

/// The answers a trace must give, from a record's own labels (unknown ones left to the trace).
fn answers_from_labels(
    conversation: &Conversation,
    request: Option<Label>,
    completion: Option<Label>,
    response: Option<Label>,
) -> GoldAnswers {
    let known = |l: Option<Label>| l.map_or(Expected::TeacherDecides, Expected::Label);
    let none = conversation.response.is_none();
    let applicable = |l: Option<Label>| {
        if none {
            Expected::NotApplicable
        } else {
            known(l)
        }
    };
    GoldAnswers {
        request: known(request),
        completion: applicable(completion),
        response: applicable(response),
    }
}

/// Candidates from `mine sample` files: every output of every line, against its gold input.
fn sample_candidates(
    samples: &[PathBuf],
    gold_path: &Path,
    candidates: &mut Vec<Candidate>,
) -> Result<(), SynthError> {
    let gold: Vec<GoldRecord> = read_records(gold_path)?;
    for path in samples {
        let sets: Vec<SampleSet> = read_records(path)?;
        for (i, set) in sets.into_iter().enumerate() {
            let bad = |m: String| SynthError::BadRecords {
                path: path.clone(),
                problems: vec![format!("line {}: {m}", i + 1)],
            };
            let record = gold.get(set.index).ok_or_else(|| {
                bad(format!(
                    "index {} is beyond the {} inputs of {}",
                    set.index,
                    gold.len(),
                    gold_path.display()
                ))
            })?;
            if record.input != set.input {
                return Err(bad(format!(
                    "its input is not input {} of {} (samples drawn for other inputs)",
                    set.index,
                    gold_path.display()
                )));
            }
            let conversation = split_input(&set.input)
                .ok_or_else(|| bad("`input` is not in the layout".into()))?;
            let answers = answers_from_labels(
                &conversation,
                record.prompt_harm_label,
                record.response_refusal_label,
                record.response_harm_label,
            );
            for output in set.outputs {
                candidates.push(Candidate {
                    conversation: conversation.clone(),
                    instruction: record.instruction.clone(),
                    output,
                    source: format!("self/{}", set.model),
                    gold: answers,
                });
            }
        }
    }
    Ok(())
}

fn gold_label_of(expected: Expected) -> Option<Label> {
    match expected {
        Expected::Label(l) => Some(l),
        _ => None,
    }
}

/// Run the distillation.
pub fn distill(config: &DistillConfig, unseen: &UnseenSets) -> Result<Distilled, SynthError> {
    let gold = load_gold(&config.benchmarks_dir)?;
    let mut candidates: Vec<Candidate> = Vec::new();
    for dir in &config.predictions {
        // `paper-v1/8B`: the directory and its parent name the source.
        let name = |p: Option<&Path>| {
            p.and_then(Path::file_name)
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        };
        let label_of_dir = match name(dir.parent()) {
            parent if parent.is_empty() => name(Some(dir)),
            parent => format!("{parent}/{}", name(Some(dir))),
        };
        let mut found = 0;
        for bench in seen_benchmarks() {
            let path = dir
                .join(bench.prediction_dir)
                .join("generated_predictions.jsonl");
            if !path.exists() {
                continue;
            }
            found += 1;
            let source = format!("{label_of_dir}/{}", bench.name);
            let lines: Vec<PredictionLine> = read_records(&path)?;
            for (i, line) in lines.into_iter().enumerate() {
                let input = line
                    .prompt
                    .strip_prefix(INSTRUCTION)
                    .and_then(|rest| rest.strip_prefix('\n'))
                    .and_then(split_input)
                    .ok_or_else(|| SynthError::BadRecords {
                        path: path.clone(),
                        problems: vec![format!(
                            "line {}: `prompt` is not the guard instruction and a conversation",
                            i + 1
                        )],
                    })?;
                let answers = gold.answers(&input);
                candidates.push(Candidate {
                    conversation: input,
                    instruction: INSTRUCTION.to_string(),
                    output: line.predict,
                    source: source.clone(),
                    gold: answers,
                });
            }
        }
        if found == 0 {
            return Err(SynthError::BadRecords {
                path: dir.clone(),
                problems: vec![
                    "no <Benchmark>/generated_predictions.jsonl of a seen benchmark here".into(),
                ],
            });
        }
    }
    for path in &config.extra {
        let records: Vec<ExtraRecord> = read_records(path)?;
        let source = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        for (i, r) in records.into_iter().enumerate() {
            let conversation = split_input(&r.input).ok_or_else(|| SynthError::BadRecords {
                path: path.clone(),
                problems: vec![format!("record {}: `input` is not in the layout", i + 1)],
            })?;
            let answers = answers_from_labels(
                &conversation,
                label(r.prompt_harm_label.as_deref()),
                label(r.response_refusal_label.as_deref()),
                label(r.response_harm_label.as_deref()),
            );
            candidates.push(Candidate {
                conversation,
                instruction: r.instruction,
                output: r.output,
                source: source.clone(),
                gold: answers,
            });
        }
    }
    match (&config.samples_gold, config.samples.is_empty()) {
        (Some(gold_path), false) => sample_candidates(&config.samples, gold_path, &mut candidates)?,
        (None, false) => {
            return Err(SynthError::BadRecords {
                path: config.samples[0].clone(),
                problems: vec!["samples need the gold inputs they were drawn for".into()],
            })
        }
        _ => {}
    }

    let mut report = DistillReport {
        conflicting_gold: gold.conflicts,
        ..DistillReport::default()
    };
    let mut kept_per_key: HashMap<String, usize> = HashMap::new();
    let mut outputs_seen: HashSet<(String, String)> = HashSet::new();
    let mut dev_keys: HashSet<String> = HashSet::new();
    let mut train = Vec::new();
    let mut dev = Vec::new();
    for c in candidates {
        let counts = report.sources.entry(c.source.clone()).or_default();
        counts.read += 1;
        if unseen.contains(&c.conversation.prompt) {
            counts.unseen += 1;
            continue;
        }
        let accepted = match validate(&c.output, &FinishReason::Stop, &c.gold) {
            Ok(a) => a,
            Err(rejection) => {
                *counts.rejected.entry(rejection.reason).or_default() += 1;
                continue;
            }
        };
        let input = c.conversation.input();
        let key = input_key(&input);
        if !outputs_seen.insert((key.clone(), accepted.output.clone())) {
            counts.duplicate += 1;
            continue;
        }
        // The request label the trace answers: the gold label where one is known (validation
        // made them agree), the trace's own judgement on the response benchmarks.
        let request = accepted.verdict.request;
        let row = DistilledRow {
            instruction: c.instruction,
            input,
            output: accepted.output,
            key: key.clone(),
            source: c.source,
            prompt_harm_label: gold_label_of(c.gold.request),
            response_refusal_label: gold_label_of(c.gold.completion),
            response_harm_label: gold_label_of(c.gold.response),
        };
        if in_dev_split(&c.conversation.prompt, config.dev_fraction) {
            counts.dev += 1;
            if dev_keys.insert(key) {
                dev.push(row);
            }
            continue;
        }
        let quota = if request == Some(Label::Unharmful) {
            config.max_traces_unharmful
        } else {
            config.max_traces
        };
        let kept = kept_per_key.entry(key).or_default();
        if *kept >= quota {
            counts.over_quota += 1;
            continue;
        }
        *kept += 1;
        counts.kept += 1;
        let request = request.map_or("None", |l| l.as_str()).to_string();
        *report.by_request_label.entry(request).or_default() += 1;
        train.push(row);
    }
    report.conversations = kept_per_key.len();
    report.dev_conversations = dev_keys.len();
    Ok(Distilled { train, dev, report })
}

/// The development split as benchmark files: for every seen benchmark file, its records whose
/// conversation is in `dev`, under the same file name in `out_dir`, so `guardreasoner eval
/// --data-dir <out_dir>` scores the held-out part of each benchmark. Returns (file, rows).
pub fn write_dev_benchmarks(
    benchmarks_dir: &Path,
    dev_fraction: f64,
    unseen: &UnseenSets,
    out_dir: &Path,
) -> Result<Vec<(String, usize)>, SynthError> {
    let mut written = Vec::new();
    let mut files: Vec<&str> = seen_benchmarks().map(|b| b.data_file).collect();
    files.dedup();
    for file in files {
        let path = benchmarks_dir.join(file);
        if !path.exists() {
            continue;
        }
        let records: Vec<serde_json::Value> = read_records(&path)?;
        let held: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| {
                r.get("input")
                    .and_then(|v| v.as_str())
                    .and_then(split_input)
                    .is_some_and(|c| {
                        in_dev_split(&c.prompt, dev_fraction) && !unseen.contains(&c.prompt)
                    })
            })
            .collect();
        guardreasoner_core::jsonl::write_records_atomic(&out_dir.join(file), &held, true)?;
        written.push((file.to_string(), held.len()));
    }
    Ok(written)
}

/// The direct-answer variant of a training record, the same conversation with the engine's
/// forced answer header as an untrained `prefix` and an answer ending as `output` (other
/// fields kept). The answer is the record's own `output` (strictly parsed) where it has one,
/// else its gold `*_label` fields (labelled prompts without reasoning, `data labels`' output),
/// which must then cover every task the conversation poses. Mixed into R-SFT, it teaches the
/// guard to answer when `--reasoning none` forces it to, without teaching it to skip reasoning
/// (the header is never a target). `source` gets a `direct/` prefix (`direct/labels` where
/// there was none).
pub fn direct_answer_record(record: &serde_json::Value) -> Result<serde_json::Value, String> {
    use guardreasoner_core::answer_grammar::{ending_of, forced_prefix};
    let verdict = match record.get("output") {
        Some(output) => {
            let output = output.as_str().ok_or("`output` is not a string")?;
            guardreasoner_core::parse_strict(output)
                .map_err(|e| e.to_string())?
                .verdict
        }
        None => gold_verdict(record)?,
    };
    let ending = ending_of(&verdict).ok_or("the answer has no request label")?;
    let mut direct = record.clone();
    let fields = direct.as_object_mut().ok_or("not a JSON object")?;
    fields.insert("prefix".into(), forced_prefix().into());
    fields.insert("output".into(), ending.into());
    let source = match fields.get("source") {
        Some(serde_json::Value::String(source)) => format!("direct/{source}"),
        _ => "direct/labels".to_string(),
    };
    fields.insert("source".into(), source.into());
    Ok(direct)
}

/// The verdict a labelled record's gold labels write: every task its conversation poses
/// must be labelled (a response without its refusal or harm label has no whole answer).
fn gold_verdict(record: &serde_json::Value) -> Result<guardreasoner_core::Verdict, String> {
    let gold: GoldRecord = serde_json::from_value(record.clone())
        .map_err(|e| format!("neither an `output` nor gold labels: {e}"))?;
    let label = |task: Task| {
        gold.gold(task)
            .ok_or_else(|| format!("no gold label for the {} task", task.title()))
    };
    let responded = gold.has_response();
    Ok(guardreasoner_core::Verdict {
        request: Some(label(Task::Prompt)?),
        completion: responded.then(|| label(Task::Refusal)).transpose()?,
        response: responded.then(|| label(Task::Response)).transpose()?,
    })
}
