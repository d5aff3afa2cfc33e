//! What a resolved model is: architecture, size, tensor types, context and tokenizer.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use guardreasoner_gguf::GgufFile;
use serde_json::{json, Value as Json};

use crate::{io_error, HubError, ResolvedModel, Result};

/// A summary of a model, for `guardreasoner model info`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// `gguf` or `huggingface`.
    pub format: &'static str,
    /// Display name, when the files carry one.
    pub name: Option<String>,
    /// `llama`, ...
    pub architecture: String,
    /// Total number of weights.
    pub parameters: u64,
    /// Tensor storage type -> (tensor count, weight count).
    pub tensor_types: BTreeMap<String, (usize, u64)>,
    pub context_length: Option<u64>,
    pub layers: Option<u64>,
    pub embedding_length: Option<u64>,
    pub attention_heads: Option<u64>,
    pub kv_heads: Option<u64>,
    pub vocab_size: usize,
    /// Pre-tokenizer name (GGUF) or tokenizer family.
    pub tokenizer: String,
    pub bos: Option<(u32, String)>,
    pub add_bos: bool,
    pub eos: Vec<(u32, String)>,
    /// Number of special (control) tokens.
    pub special_tokens: usize,
}

impl ModelInfo {
    /// The same facts as JSON.
    pub fn to_json(&self) -> Json {
        let tensor_types: BTreeMap<&str, Json> = self
            .tensor_types
            .iter()
            .map(|(k, (tensors, weights))| {
                (k.as_str(), json!({"tensors": tensors, "weights": weights}))
            })
            .collect();
        json!({
            "path": self.path,
            "format": self.format,
            "name": self.name,
            "architecture": self.architecture,
            "parameters": self.parameters,
            "tensor_types": tensor_types,
            "context_length": self.context_length,
            "layers": self.layers,
            "embedding_length": self.embedding_length,
            "attention_heads": self.attention_heads,
            "kv_heads": self.kv_heads,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "bos": self.bos.as_ref().map(|(id, t)| json!({"id": id, "text": t})),
            "add_bos": self.add_bos,
            "eos": self.eos.iter().map(|(id, t)| json!({"id": id, "text": t})).collect::<Vec<_>>(),
            "special_tokens": self.special_tokens,
        })
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

impl fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "path:           {}", self.path.display())?;
        writeln!(f, "format:         {}", self.format)?;
        if let Some(name) = &self.name {
            writeln!(f, "name:           {name}")?;
        }
        writeln!(f, "architecture:   {}", self.architecture)?;
        writeln!(
            f,
            "parameters:     {} ({:.1} M)",
            self.parameters,
            self.parameters as f64 / 1e6
        )?;
        let types: Vec<String> = self
            .tensor_types
            .iter()
            .map(|(t, (n, _))| format!("{t} x{n}"))
            .collect();
        writeln!(f, "tensor types:   {}", types.join(", "))?;
        writeln!(f, "context length: {}", opt(self.context_length))?;
        writeln!(
            f,
            "layers:         {} (embedding {}, heads {}, kv heads {})",
            opt(self.layers),
            opt(self.embedding_length),
            opt(self.attention_heads),
            opt(self.kv_heads)
        )?;
        writeln!(
            f,
            "vocabulary:     {} tokens ({} special), tokenizer {}",
            self.vocab_size, self.special_tokens, self.tokenizer
        )?;
        match &self.bos {
            Some((id, text)) => writeln!(
                f,
                "bos:            {id} {text:?} (added to prompts: {})",
                self.add_bos
            )?,
            None => writeln!(f, "bos:            -")?,
        }
        let eos: Vec<String> = self
            .eos
            .iter()
            .map(|(id, t)| format!("{id} {t:?}"))
            .collect();
        write!(f, "eos:            {}", eos.join(", "))
    }
}

/// Read the facts of a resolved model (metadata only; weights are not loaded).
pub fn inspect(model: &ResolvedModel) -> Result<ModelInfo> {
    let tokenizer = model.tokenizer()?;
    let text = |id: u32| tokenizer.id_to_token(id).unwrap_or_default();
    let specials = tokenizer.special_ids();
    let mut info = match model {
        ResolvedModel::Gguf(path) => gguf_info(path)?,
        ResolvedModel::HfDir(dir) => hf_info(dir)?,
    };
    info.vocab_size = tokenizer.vocab_size();
    info.bos = specials.bos.map(|id| (id, text(id)));
    info.add_bos = specials.add_bos;
    info.eos = specials.eos.iter().map(|&id| (id, text(id))).collect();
    info.special_tokens = tokenizer.special_tokens().len();
    Ok(info)
}

fn empty(path: &Path, format: &'static str) -> ModelInfo {
    ModelInfo {
        path: path.to_path_buf(),
        format,
        name: None,
        architecture: String::new(),
        parameters: 0,
        tensor_types: BTreeMap::new(),
        context_length: None,
        layers: None,
        embedding_length: None,
        attention_heads: None,
        kv_heads: None,
        vocab_size: 0,
        tokenizer: String::new(),
        bos: None,
        add_bos: false,
        eos: Vec::new(),
        special_tokens: 0,
    }
}

fn gguf_info(path: &Path) -> Result<ModelInfo> {
    let file = GgufFile::open(path)?;
    let arch = file.architecture()?.to_string();
    let key = |k: &str| file.get_u64(&format!("{arch}.{k}")).ok();
    let mut info = empty(path, "gguf");
    info.name = file.get_str("general.name").ok().map(str::to_string);
    info.context_length = key("context_length");
    info.layers = key("block_count");
    info.embedding_length = key("embedding_length");
    info.attention_heads = key("attention.head_count");
    info.kv_heads = key("attention.head_count_kv");
    for t in &file.tensors {
        let entry = info.tensor_types.entry(t.dtype.name()).or_default();
        entry.0 += 1;
        entry.1 += t.element_count();
        info.parameters += t.element_count();
    }
    info.tokenizer = format!(
        "{} / pre-tokenizer {}",
        file.get_str("tokenizer.ggml.model").unwrap_or("?"),
        file.get_str("tokenizer.ggml.pre").unwrap_or("default")
    );
    info.architecture = arch;
    Ok(info)
}

/// The JSON header of a safetensors file: an 8-byte little-endian length, then JSON.
fn safetensors_header(path: &Path) -> Result<Json> {
    let bad = |message: String| HubError::BadDownload {
        path: path.to_path_buf(),
        message,
    };
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad("truncated safetensors file (no header)".into()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 || len + 8 > file_len {
        return Err(bad(format!(
            "safetensors header of {len} bytes does not fit the file"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(io_error(path))?;
    serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header is not JSON: {e}")))
}

fn hf_info(dir: &Path) -> Result<ModelInfo> {
    let config_path = dir.join("config.json");
    let config: Json =
        serde_json::from_slice(&std::fs::read(&config_path).map_err(io_error(&config_path))?)
            .map_err(|e| HubError::BadDownload {
                path: config_path.clone(),
                message: format!("invalid JSON: {e}"),
            })?;
    let num = |k: &str| config[k].as_u64();
    let mut info = empty(dir, "huggingface");
    info.name = config["_name_or_path"].as_str().map(str::to_string);
    info.architecture = config["model_type"]
        .as_str()
        .or_else(|| config["architectures"][0].as_str())
        .unwrap_or("?")
        .to_string();
    info.context_length = num("max_position_embeddings");
    info.layers = num("num_hidden_layers");
    info.embedding_length = num("hidden_size");
    info.attention_heads = num("num_attention_heads");
    info.kv_heads = num("num_key_value_heads").or(info.attention_heads);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    for file in files {
        let header = safetensors_header(&file)?;
        let Some(entries) = header.as_object() else {
            continue;
        };
        for (name, entry) in entries {
            if name == "__metadata__" {
                continue;
            }
            let count: u64 = entry["shape"]
                .as_array()
                .map(|dims| dims.iter().filter_map(Json::as_u64).product())
                .unwrap_or(0);
            let dtype = entry["dtype"].as_str().unwrap_or("?").to_string();
            let slot = info.tensor_types.entry(dtype).or_default();
            slot.0 += 1;
            slot.1 += count;
            info.parameters += count;
        }
    }
    info.tokenizer = "tokenizer.json".to_string();
    Ok(info)
}
