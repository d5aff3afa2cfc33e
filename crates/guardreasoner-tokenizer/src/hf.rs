//! Loading a Hugging Face `tokenizer.json`, and the BOS/EOS ids of a model directory.

use std::path::Path;

use serde_json::Value as Json;

use crate::{Result, SpecialIds, Tokenizer, TokenizerError, END_OF_GENERATION_TEXTS};

fn load_error(path: &Path, message: impl Into<String>) -> TokenizerError {
    TokenizerError::Load {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| load_error(path, e.to_string()))?;
    tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| load_error(path, e.to_string()))
}

/// A JSON file of the model directory, if present.
fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| load_error(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(load_error(path, e.to_string())),
    }
}

/// Ids of a `*_token_id` entry, which may be a number or a list of numbers.
fn ids_of(value: Option<&Json>) -> Vec<u32> {
    match value {
        Some(Json::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .into_iter()
            .collect(),
        Some(Json::Array(items)) => items.iter().flat_map(|i| ids_of(Some(i))).collect(),
        _ => Vec::new(),
    }
}

/// The text of a `*_token` entry of `tokenizer_config.json`: a string or `{"content": ..}`.
fn token_text(value: Option<&Json>) -> Option<&str> {
    match value? {
        Json::String(s) => Some(s),
        Json::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// Whether the tokenizer's post-processor puts `bos` in front of a sequence.
fn post_processor_adds(inner: &tokenizers::Tokenizer, bos: u32) -> bool {
    inner
        .encode_fast("", true)
        .map(|e| e.get_ids().first() == Some(&bos))
        .unwrap_or(false)
}

/// Fallback when no config names the EOS: special tokens with a well-known end text.
fn eos_by_text(inner: &tokenizers::Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = END_OF_GENERATION_TEXTS
        .iter()
        .filter_map(|t| inner.token_to_id(t))
        .filter(|id| {
            inner
                .get_added_tokens_decoder()
                .get(id)
                .is_some_and(|t| t.special)
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub(crate) fn from_file(path: &Path) -> Result<Tokenizer> {
    let inner = read_tokenizer_json(path)?;
    let eos = eos_by_text(&inner);
    let bos = ["<|begin_of_text|>", "<s>", "<|startoftext|>"]
        .iter()
        .find_map(|t| inner.token_to_id(t));
    let add_bos = bos.is_some_and(|b| post_processor_adds(&inner, b));
    Tokenizer::assemble(
        inner,
        SpecialIds { bos, add_bos, eos },
        path.display().to_string(),
    )
}

pub(crate) fn from_dir(dir: &Path) -> Result<Tokenizer> {
    let tokenizer_path = dir.join("tokenizer.json");
    let inner = read_tokenizer_json(&tokenizer_path)?;
    let tokenizer_config = read_json(&dir.join("tokenizer_config.json"))?;
    let generation_config = read_json(&dir.join("generation_config.json"))?;
    let model_config = read_json(&dir.join("config.json"))?;
    let configs: Vec<&Json> = [&generation_config, &model_config]
        .into_iter()
        .flatten()
        .collect();
    let token_id = |key: &str| -> Option<u32> {
        let text = token_text(tokenizer_config.as_ref()?.get(key))?;
        inner.token_to_id(text)
    };

    // generation_config.json says what generation stops on; it wins over config.json, and
    // both over the tokenizer's own eos_token.
    let mut eos: Vec<u32> = Vec::new();
    for id in configs
        .iter()
        .flat_map(|c| ids_of(c.get("eos_token_id")))
        .chain(token_id("eos_token"))
    {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    if eos.is_empty() {
        eos = eos_by_text(&inner);
    }
    let bos = configs
        .iter()
        .find_map(|c| ids_of(c.get("bos_token_id")).first().copied())
        .or_else(|| token_id("bos_token"));
    let add_bos = match tokenizer_config
        .as_ref()
        .and_then(|c| c.get("add_bos_token"))
        .and_then(Json::as_bool)
    {
        Some(flag) => flag && bos.is_some(),
        None => bos.is_some_and(|b| post_processor_adds(&inner, b)),
    };
    let vocab_size = inner.get_vocab_size(true);
    if let Some(id) = bos
        .iter()
        .chain(&eos)
        .find(|&&id| id as usize >= vocab_size)
    {
        return Err(load_error(
            dir,
            format!("special token id {id} from the model configs is outside the vocabulary ({vocab_size} tokens)"),
        ));
    }
    Tokenizer::assemble(
        inner,
        SpecialIds { bos, add_bos, eos },
        tokenizer_path.display().to_string(),
    )
}
