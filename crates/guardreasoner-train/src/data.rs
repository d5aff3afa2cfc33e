//! GuardReasonerTrain records -> token sequences with a loss mask.
//!
//! The model sees exactly what inference feeds it, `instruction + "\n" + input`
//! ([`guardreasoner_core::prompt::join_instruction_input`], no BOS), and learns `output` + EOS;
//! the loss covers the output tokens only. A record may also carry a `prefix`: assistant text
//! given before the output and not learned (the forced answer header of a direct-answer
//! record, so the guard learns to answer when the engine forces it to).

use crate::TrainError;
use guardreasoner_core::prompt::join_instruction_input;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Turns text into token ids. Implemented by the CLI over `guardreasoner-tokenizer`; prompts and
/// outputs are encoded as plain text (special-token text in user data stays ordinary text).
pub trait TextEncoder {
    /// Token ids of `text`, no BOS/EOS added.
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    /// The id appended after every target output.
    fn eos_id(&self) -> u32;
}

/// One GuardReasonerTrain record (extra fields such as gold labels are ignored here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    pub instruction: String,
    pub input: String,
    pub output: String,
    /// Assistant text before `output`, seen but not learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A data file and how many records to take from it (the first `limit`, in file order).
#[derive(Debug, Clone, PartialEq)]
pub struct DataSource {
    pub path: PathBuf,
    pub limit: Option<usize>,
}

impl DataSource {
    /// Parses `PATH` or `PATH:LIMIT` (the limit is the part after the last `:` when it is a number).
    pub fn parse(spec: &str) -> Self {
        if let Some((path, n)) = spec.rsplit_once(':') {
            if let Ok(limit) = n.parse::<usize>() {
                return DataSource {
                    path: PathBuf::from(path),
                    limit: Some(limit),
                };
            }
        }
        DataSource {
            path: PathBuf::from(spec),
            limit: None,
        }
    }
}

fn field(
    value: &serde_json::Value,
    name: &str,
    path: &Path,
    index: usize,
) -> Result<String, TrainError> {
    match value.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Null) | None => Err(TrainError::Data(format!(
            "{}: record {}: missing field `{name}`",
            path.display(),
            index + 1
        ))),
        Some(other) => Err(TrainError::Data(format!(
            "{}: record {}: field `{name}` must be a string, found {}",
            path.display(),
            index + 1,
            kind_of(other)
        ))),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads the records of every source (JSON array or JSONL), honouring per-file limits.
/// Missing fields and empty outputs are errors naming the file and record number.
pub fn load_records(sources: &[DataSource]) -> Result<Vec<TrainRecord>, TrainError> {
    let mut out = Vec::new();
    for source in sources {
        let values: Vec<serde_json::Value> = guardreasoner_core::jsonl::read_records(&source.path)?;
        let take = source.limit.unwrap_or(values.len()).min(values.len());
        for (i, v) in values.iter().take(take).enumerate() {
            let record = TrainRecord {
                instruction: field(v, "instruction", &source.path, i)?,
                input: field(v, "input", &source.path, i)?,
                output: field(v, "output", &source.path, i)?,
                prefix: match v.get("prefix") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(_) => Some(field(v, "prefix", &source.path, i)?),
                },
            };
            if record.output.trim().is_empty() {
                return Err(TrainError::Data(format!(
                    "{}: record {}: empty `output`",
                    source.path.display(),
                    i + 1
                )));
            }
            out.push(record);
        }
    }
    if out.is_empty() {
        return Err(TrainError::Data(
            "no training records in the given files".into(),
        ));
    }
    Ok(out)
}

/// A tokenized training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Prompt tokens (possibly truncated).
    pub prompt: Vec<u32>,
    /// Target tokens (`output` + EOS, possibly truncated).
    pub target: Vec<u32>,
}

impl Example {
    /// The model input: every token but the last.
    pub fn input_ids(&self) -> Vec<u32> {
        let mut ids = self.prompt.clone();
        ids.extend_from_slice(&self.target);
        ids.pop();
        ids
    }

    /// Total length (prompt + target).
    pub fn len(&self) -> usize {
        self.prompt.len() + self.target.len()
    }

    /// Whether the example has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index in the model input of the position whose next-token prediction is `target[0]`.
    pub fn first_target_position(&self) -> usize {
        self.prompt.len().saturating_sub(1)
    }
}

/// LLaMA-Factory's split of a cutoff between source and target (`infer_seqlen`): a short side
/// keeps all its tokens, otherwise both shrink in proportion. Returns `(source_len, target_len)`.
pub fn fit_lengths(source: usize, target: usize, cutoff: usize) -> (usize, usize) {
    let max_target = if target * 2 < cutoff {
        cutoff
    } else if source * 2 < cutoff {
        cutoff - source
    } else {
        (cutoff as f64 * target as f64 / (source + target) as f64) as usize
    };
    let new_target = target.min(max_target);
    let new_source = source.min(cutoff.saturating_sub(new_target));
    (new_source, new_target)
}

/// Tokenization outcome: examples plus how many were truncated.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub examples: Vec<Example>,
    pub truncated: usize,
}

/// Tokenizes records; sequences longer than `cutoff` are truncated (counted, never silent).
pub fn tokenize(
    records: &[TrainRecord],
    encoder: &dyn TextEncoder,
    cutoff: usize,
) -> Result<Tokenized, TrainError> {
    if cutoff < 2 {
        return Err(TrainError::Config(format!(
            "cutoff length {cutoff} is below 2"
        )));
    }
    let mut examples = Vec::with_capacity(records.len());
    let mut truncated = 0;
    for (i, r) in records.iter().enumerate() {
        let text = join_instruction_input(&r.instruction, &r.input);
        let mut prompt = encoder
            .encode(&text)
            .map_err(|e| TrainError::Data(format!("record {}: prompt: {e}", i + 1)))?;
        let mut target = encoder
            .encode(&r.output)
            .map_err(|e| TrainError::Data(format!("record {}: output: {e}", i + 1)))?;
        target.push(encoder.eos_id());
        if prompt.is_empty() {
            return Err(TrainError::Data(format!(
                "record {}: prompt has no tokens",
                i + 1
            )));
        }
        // The prefix is never cut: it is what the output is conditioned on.
        let prefix = match &r.prefix {
            Some(p) => encoder
                .encode(p)
                .map_err(|e| TrainError::Data(format!("record {}: prefix: {e}", i + 1)))?,
            None => Vec::new(),
        };
        let source = prompt.len() + prefix.len();
        if source + target.len() > cutoff {
            let (s, t) = fit_lengths(source, target.len(), cutoff);
            let s = s.saturating_sub(prefix.len()).max(1);
            prompt.truncate(s);
            let room = cutoff.saturating_sub(prompt.len() + prefix.len());
            if room == 0 {
                return Err(TrainError::Data(format!(
                    "record {}: its prefix ({} tokens) leaves no room for the output within the cutoff {cutoff}",
                    i + 1,
                    prefix.len()
                )));
            }
            target.truncate(t.min(room).max(1));
            truncated += 1;
        }
        prompt.extend_from_slice(&prefix);
        examples.push(Example { prompt, target });
    }
    Ok(Tokenized {
        examples,
        truncated,
    })
}

/// FNV-1a over the token ids of the examples: identifies the training data for resume checks.
pub fn fingerprint(examples: &[Example]) -> String {
    let mut h = Fnv::new();
    h.u64(examples.len() as u64);
    for e in examples {
        h.u64(e.prompt.len() as u64);
        e.prompt.iter().for_each(|&t| h.u64(t as u64));
        h.u64(e.target.len() as u64);
        e.target.iter().for_each(|&t| h.u64(t as u64));
    }
    format!("{:016x}", h.0)
}

/// 64-bit FNV-1a.
pub(crate) struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn u64(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A byte-level encoder (id = byte + `offset`): for tests and tiny models without a tokenizer.
#[derive(Debug, Clone)]
pub struct ByteEncoder {
    pub offset: u32,
    pub eos: u32,
}

impl TextEncoder for ByteEncoder {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(|b| b as u32 + self.offset).collect())
    }
    fn eos_id(&self) -> u32 {
        self.eos
    }
}
