//! Labelled input records, per source, into samples with the gold answers the teacher must
//! end with.

use crate::SynthError;
use guardreasoner_core::benchmarks::{gold_from_output, Gold};
use guardreasoner_core::prompt::split_input;
use guardreasoner_core::{Conversation, Label, Task};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;

/// Which dataset the records come from: decides which labels are trusted, as in the paper's
/// synthesis recipe per training set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// WildGuardMix: prompt, optional response, any of the three labels; the prompt label is
    /// required.
    WildGuard,
    /// Aegis: prompt only, prompt label required.
    Aegis,
    /// ToxicChat: prompt only, prompt label required.
    ToxicChat,
    /// BeaverTails: prompt and response, only the response-harm label is used; the teacher
    /// decides the request and refusal labels.
    BeaverTails,
    /// Anything else: every label present is used, at least one is required.
    Generic,
}

impl std::str::FromStr for Source {
    type Err = SynthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "wildguard" => Source::WildGuard,
            "aegis" => Source::Aegis,
            "toxicchat" => Source::ToxicChat,
            "beavertails" => Source::BeaverTails,
            "generic" => Source::Generic,
            _ => return Err(SynthError::UnknownSource(s.to_string())),
        })
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::WildGuard => "wildguard",
            Source::Aegis => "aegis",
            Source::ToxicChat => "toxicchat",
            Source::BeaverTails => "beavertails",
            Source::Generic => "generic",
        })
    }
}

/// What the teacher's answer for one task must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    /// The gold label: the teacher must end with exactly this.
    Label(Label),
    /// No gold label, but the task applies: the teacher decides (a label, not `None`).
    TeacherDecides,
    /// There is no response to judge: the answer is `None`.
    NotApplicable,
}

/// The expected answer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GoldAnswers {
    pub request: Expected,
    pub completion: Expected,
    pub response: Expected,
}

impl GoldAnswers {
    pub fn get(&self, task: Task) -> Expected {
        match task {
            Task::Prompt => self.request,
            Task::Refusal => self.completion,
            Task::Response => self.response,
        }
    }
}

/// One input to synthesise reasoning for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Where it came from, for messages: `file.json record 12`.
    pub record: String,
    pub conversation: Conversation,
    pub gold: GoldAnswers,
    /// sha256 (hex) of the GuardReasoner `input` text: the identity of this sample across
    /// restarts, output rows, rejects and Batch API custom ids.
    pub key: String,
}

impl Sample {
    /// The GuardReasoner `input` field.
    pub fn input(&self) -> String {
        self.conversation.input()
    }
}

/// The sha256 (hex) of a GuardReasoner `input` text.
pub fn input_key(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Samples read from a file, and how many records repeated an earlier input.
#[derive(Debug)]
pub struct LoadedSamples {
    pub samples: Vec<Sample>,
    /// Records whose input text equals an earlier record's (done once, under the first).
    pub duplicates: usize,
}

/// Read every record of `path` (a JSON array or JSONL) as `source`. Every bad record is
/// reported at once, each naming the record, and nothing is returned if any is bad.
pub fn load_samples(path: &Path, source: Source) -> Result<LoadedSamples, SynthError> {
    let records: Vec<Value> = guardreasoner_core::jsonl::read_records(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string());
    let mut samples = Vec::with_capacity(records.len());
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for (i, value) in records.iter().enumerate() {
        let record = format!("{name} record {}", i + 1);
        match sample_from_record(value, source, &record) {
            Ok(sample) => {
                if seen.insert(sample.key.clone()) {
                    samples.push(sample);
                } else {
                    duplicates += 1;
                }
            }
            Err(problem) => problems.push(format!("{record}{}: {problem}", excerpt(value))),
        }
    }
    if !problems.is_empty() {
        const SHOWN: usize = 20;
        let total = problems.len();
        problems.truncate(SHOWN);
        if total > SHOWN {
            problems.push(format!("... and {} more", total - SHOWN));
        }
        return Err(SynthError::BadRecords {
            path: path.to_path_buf(),
            problems,
        });
    }
    Ok(LoadedSamples {
        samples,
        duplicates,
    })
}

/// ` (prompt "first words...")`, to find the record by eye.
fn excerpt(value: &Value) -> String {
    let text = value
        .get("prompt")
        .and_then(Value::as_str)
        .or_else(|| value.get("input").and_then(Value::as_str));
    match text {
        Some(t) if !t.trim().is_empty() => {
            let short: String = t.trim().chars().take(40).collect();
            let ellipsis = if t.trim().chars().count() > 40 {
                "..."
            } else {
                ""
            };
            format!(" (prompt {:?})", format!("{short}{ellipsis}"))
        }
        _ => String::new(),
    }
}

const LABEL_FIELDS: [(&str, Task); 3] = [
    ("prompt_harm_label", Task::Prompt),
    ("response_refusal_label", Task::Refusal),
    ("response_harm_label", Task::Response),
];

/// Turn one record into a sample, or say what is wrong with it.
pub fn sample_from_record(value: &Value, source: Source, record: &str) -> Result<Sample, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("is not a JSON object but {}", kind_of(value)))?;
    let conversation = conversation_of(object)?;
    if conversation.prompt.trim().is_empty() {
        return Err("the prompt is empty".into());
    }
    let labels = labels_of(object, source, conversation.response.is_some())?;
    let has_response = conversation.response.is_some();
    let known = |task: Task| labels[task_index(task)];
    let otherwise = |task: Task| {
        if task != Task::Prompt && !has_response {
            Expected::NotApplicable
        } else {
            Expected::TeacherDecides
        }
    };
    let use_label = |task: Task, trusted: bool| match known(task) {
        Some(l) if trusted => Expected::Label(l),
        _ => otherwise(task),
    };
    let gold = match source {
        Source::WildGuard | Source::Generic => GoldAnswers {
            request: use_label(Task::Prompt, true),
            completion: use_label(Task::Refusal, true),
            response: use_label(Task::Response, true),
        },
        Source::Aegis | Source::ToxicChat => GoldAnswers {
            request: use_label(Task::Prompt, true),
            completion: Expected::NotApplicable,
            response: Expected::NotApplicable,
        },
        Source::BeaverTails => GoldAnswers {
            request: Expected::TeacherDecides,
            completion: Expected::TeacherDecides,
            response: use_label(Task::Response, true),
        },
    };
    match source {
        Source::WildGuard | Source::Aegis | Source::ToxicChat if known(Task::Prompt).is_none() => {
            return Err(format!(
                "no prompt harm label (`prompt_harm_label`, or `Request:` in `output`), which {source} records must have"
            ));
        }
        Source::Aegis | Source::ToxicChat if has_response => {
            return Err(format!(
                "has a response, but {source} records are prompt-only (use --source generic for conversations with responses)"
            ));
        }
        Source::BeaverTails if !has_response => {
            return Err("has no response, which beavertails records must have".into());
        }
        Source::BeaverTails if known(Task::Response).is_none() => {
            return Err("no response harm label (`response_harm_label`, or `Response:` in `output`), which beavertails records must have".into());
        }
        Source::Generic if labels.iter().all(Option::is_none) => {
            return Err("has no label at all (`prompt_harm_label`, `response_refusal_label`, `response_harm_label` or `output`)".into());
        }
        _ => {}
    }
    let key = input_key(&conversation.input());
    Ok(Sample {
        record: record.to_string(),
        conversation,
        gold,
        key,
    })
}

fn task_index(task: Task) -> usize {
    match task {
        Task::Prompt => 0,
        Task::Refusal => 1,
        Task::Response => 2,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `prompt` (+ optional `response`) fields, or the GuardReasoner `input` layout.
fn conversation_of(object: &Map<String, Value>) -> Result<Conversation, String> {
    if let Some(prompt) = object.get("prompt") {
        let prompt = prompt
            .as_str()
            .ok_or_else(|| format!("`prompt` is {}, not a string", kind_of(prompt)))?;
        let response = match object.get("response") {
            None | Some(Value::Null) => None,
            Some(Value::String(r)) if r.trim().is_empty() => None,
            Some(Value::String(r)) => Some(r.clone()),
            Some(other) => {
                return Err(format!("`response` is {}, not a string", kind_of(other)));
            }
        };
        return Ok(Conversation::new(prompt, response));
    }
    match object.get("input") {
        Some(Value::String(input)) => split_input(input).ok_or_else(|| {
            "`input` is not in the GuardReasoner layout (\"Human user:\\n...\\n\\nAI assistant:\\n...\\n\\n\")".to_string()
        }),
        Some(other) => Err(format!("`input` is {}, not a string", kind_of(other))),
        None => Err("has neither `prompt` nor `input`".into()),
    }
}

/// The gold label of each task (request, completion, response order), from the label fields
/// where the record has any, else from `output`.
fn labels_of(
    object: &Map<String, Value>,
    source: Source,
    has_response: bool,
) -> Result<[Option<Label>; 3], String> {
    let mut labels = [None; 3];
    let mut any_field = false;
    for (field, task) in LABEL_FIELDS {
        match object.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                any_field = true;
                let label = Label::parse(s.trim())
                    .filter(|l| task.accepts(*l))
                    .ok_or_else(|| {
                        format!(
                            "`{field}` is {s:?}; expected {} or {}",
                            task.positive(),
                            task.positive().reversed()
                        )
                    })?;
                labels[task_index(task)] = Some(label);
            }
            Some(other) => return Err(format!("`{field}` is {}, not a string", kind_of(other))),
        }
    }
    if any_field {
        return Ok(labels);
    }
    let Some(output) = object.get("output") else {
        return Ok(labels);
    };
    let output = output
        .as_str()
        .ok_or_else(|| format!("`output` is {}, not a string", kind_of(output)))?;
    if output.contains("Answers:") {
        for task in Task::ALL {
            if let Gold::Label(l) = gold_from_output(output, task) {
                labels[task_index(task)] = Some(l);
            }
        }
        return Ok(labels);
    }
    // A plain label, as in the prompt-only and single-task benchmark files: refusal labels
    // are Task 2; a harm label judges the response when there is one (HarmBench/XSTest
    // response files), the request otherwise.
    let label = Label::parse(output.trim())
        .ok_or_else(|| format!("`output` {output:?} is neither a label nor an `Answers:` block"))?;
    let task = match label {
        Label::Refusal | Label::Compliance => Task::Refusal,
        _ if source == Source::BeaverTails || has_response => Task::Response,
        _ => Task::Prompt,
    };
    labels[task_index(task)] = Some(label);
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(v: Value, source: Source) -> Result<Sample, String> {
        sample_from_record(&v, source, "t record 1")
    }

    #[test]
    fn sources_map_labels_like_the_paper() {
        let s = sample(
            json!({"prompt": "p", "response": "r", "prompt_harm_label": "harmful",
                   "response_refusal_label": null, "response_harm_label": "unharmful"}),
            Source::WildGuard,
        )
        .unwrap();
        assert_eq!(s.gold.request, Expected::Label(Label::Harmful));
        assert_eq!(s.gold.completion, Expected::TeacherDecides);
        assert_eq!(s.gold.response, Expected::Label(Label::Unharmful));
        let s = sample(
            json!({"prompt": "p", "prompt_harm_label": "unharmful"}),
            Source::ToxicChat,
        )
        .unwrap();
        assert_eq!(s.gold.completion, Expected::NotApplicable);
        assert_eq!(s.gold.response, Expected::NotApplicable);
        let s = sample(
            json!({"prompt": "p", "response": "r", "prompt_harm_label": "harmful",
                   "response_harm_label": "harmful"}),
            Source::BeaverTails,
        )
        .unwrap();
        assert_eq!(s.gold.request, Expected::TeacherDecides);
        assert_eq!(s.gold.completion, Expected::TeacherDecides);
        assert_eq!(s.gold.response, Expected::Label(Label::Harmful));
    }

    #[test]
    fn benchmark_layout_records_read_input_and_output() {
        let input = Conversation::new("hi there", Some("hello".into())).input();
        let block = "Answers: \nRequest: None\nCompletion: None\nResponse: harmful\n";
        let s = sample(
            json!({"input": input, "output": block}),
            Source::BeaverTails,
        )
        .unwrap();
        assert_eq!(s.conversation.response.as_deref(), Some("hello"));
        assert_eq!(s.gold.response, Expected::Label(Label::Harmful));
        assert_eq!(s.key, input_key(&input));
        // Plain labels: a harm label with a response judges the response.
        let s = sample(
            json!({"input": input, "output": "unharmful"}),
            Source::Generic,
        )
        .unwrap();
        assert_eq!(s.gold.response, Expected::Label(Label::Unharmful));
        assert_eq!(s.gold.request, Expected::TeacherDecides);
        let s = sample(
            json!({"input": input, "output": "refusal"}),
            Source::Generic,
        )
        .unwrap();
        assert_eq!(s.gold.completion, Expected::Label(Label::Refusal));
        let prompt_only = Conversation::new("hi", None).input();
        let s = sample(
            json!({"input": prompt_only, "output": "harmful"}),
            Source::Aegis,
        )
        .unwrap();
        assert_eq!(s.gold.request, Expected::Label(Label::Harmful));
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let err = |v: Value, s: Source| sample(v, s).unwrap_err();
        assert!(err(
            json!({"prompt": "  ", "prompt_harm_label": "harmful"}),
            Source::WildGuard
        )
        .contains("prompt is empty"));
        assert!(err(json!({"prompt": "p"}), Source::WildGuard).contains("no prompt harm label"));
        assert!(err(json!({"prompt": "p"}), Source::Generic).contains("no label at all"));
        assert!(err(
            json!({"prompt": "p", "response": "r", "prompt_harm_label": "harmful"}),
            Source::Aegis
        )
        .contains("prompt-only"));
        assert!(err(
            json!({"prompt": "p", "response_harm_label": "harmful"}),
            Source::BeaverTails
        )
        .contains("no response"));
        assert!(err(
            json!({"prompt": "p", "prompt_harm_label": "safe"}),
            Source::Generic
        )
        .contains("\"safe\""));
        assert!(err(json!({"prompt": 3}), Source::Generic).contains("not a string"));
        assert!(err(json!([1]), Source::Generic).contains("not a JSON object"));
        assert!(err(
            json!({"input": "free text", "output": "harmful"}),
            Source::Generic
        )
        .contains("layout"));
        assert!(
            err(json!({"prompt": "p", "output": "maybe"}), Source::Generic)
                .contains("neither a label")
        );
    }

    #[test]
    fn keys_are_sha256_of_the_input() {
        assert_eq!(
            input_key(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
