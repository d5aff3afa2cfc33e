//! Rebuilding a tokenizer from GGUF metadata (`tokenizer.ggml.*`).

use std::path::Path;

use guardreasoner_gguf::{GgufFile, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::{AddedToken, DecoderWrapper};

use crate::{pretokenizer, Result, SpecialIds, Tokenizer, TokenizerError, END_OF_GENERATION_TEXTS};

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn bad(path: &Path, message: impl Into<String>) -> TokenizerError {
    TokenizerError::BadMetadata {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// An optional id key; present but not an integer is an error.
fn optional_id(file: &GgufFile, key: &str) -> Result<Option<u32>> {
    match file.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(file.get_u32(key)?)),
    }
}

/// `pre_override` replaces `tokenizer.ggml.pre` (e.g. `gpt-2` to reproduce transformers'
/// GGUF loader, which ignores the field).
pub(crate) fn from_gguf(file: &GgufFile, pre_override: Option<&str>) -> Result<Tokenizer> {
    let path = file.path();
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel {
            path: path.to_path_buf(),
            model: model.to_string(),
        });
    }
    let pre_name = match (pre_override, file.get("tokenizer.ggml.pre")) {
        (Some(name), _) => name,
        (None, None) => "default",
        (None, Some(_)) => file.get_str("tokenizer.ggml.pre")?,
    };
    let pre_tokenizer = pretokenizer::for_gguf_pre(pre_name).ok_or_else(|| {
        TokenizerError::UnsupportedPreTokenizer {
            path: path.to_path_buf(),
            pre: pre_name.to_string(),
        }
    })?;

    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    let token_types: Vec<i64> = match file.get_array("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(values) => values
            .iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| bad(path, format!("token_type entry of type {}", v.type_name())))
            })
            .collect::<Result<_>>()?,
    };
    if token_types.len() != tokens.len() {
        return Err(bad(
            path,
            format!(
                "{} token types for {} tokens",
                token_types.len(),
                tokens.len()
            ),
        ));
    }
    let merges = match file.get("tokenizer.ggml.merges") {
        Some(Value::Array(_)) => file.get_str_array("tokenizer.ggml.merges")?,
        Some(_) => return Err(bad(path, "tokenizer.ggml.merges is not an array")),
        None => return Err(bad(path, "gpt2 tokenizer without tokenizer.ggml.merges")),
    };

    let mut vocab = Vocab::default();
    vocab.reserve(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        // A duplicate keeps its first id, as llama.cpp's token-to-id map does.
        vocab.entry((*token).to_string()).or_insert(id as u32);
    }
    let merges = merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| {
            // Byte-level tokens never contain a space, so the first space separates the pair.
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    bad(
                        path,
                        format!("merge {rank} ({merge:?}) is not \"left right\""),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| {
            bad(
                path,
                format!("cannot build BPE from vocabulary and merges: {e}"),
            )
        })?;

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(DecoderWrapper::ByteLevel(
        tokenizers::decoders::byte_level::ByteLevel::default(),
    )));
    // Control tokens are special (only trusted text may produce them); user-defined tokens are
    // ordinary added words that any text may produce, as in llama.cpp.
    let added = |kind: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, &t)| t == kind)
            .map(|(text, _)| AddedToken::from(*text, special))
            .collect()
    };
    let register = |e: tokenizers::Error| bad(path, format!("cannot register added tokens: {e}"));
    inner
        .add_special_tokens(added(TOKEN_TYPE_CONTROL, true))
        .map_err(register)?;
    inner
        .add_tokens(added(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(register)?;

    let special_ids = special_ids(file, &tokens, &token_types)?;
    for id in special_ids.bos.iter().chain(&special_ids.eos) {
        if *id as usize >= tokens.len() {
            return Err(bad(
                path,
                format!(
                    "special token id {id} is outside the vocabulary ({} tokens)",
                    tokens.len()
                ),
            ));
        }
    }
    Tokenizer::assemble(inner, special_ids, path.display().to_string())
}

fn special_ids(file: &GgufFile, tokens: &[&str], token_types: &[i64]) -> Result<SpecialIds> {
    let bos = optional_id(file, "tokenizer.ggml.bos_token_id")?;
    let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
        None => false,
        Some(_) => file.get_bool("tokenizer.ggml.add_bos_token")?,
    };
    let mut eos = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = optional_id(file, key)? {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    for (id, (text, &kind)) in tokens.iter().zip(token_types).enumerate() {
        let id = id as u32;
        if kind == TOKEN_TYPE_CONTROL
            && END_OF_GENERATION_TEXTS.contains(text)
            && !eos.contains(&id)
        {
            eos.push(id);
        }
    }
    Ok(SpecialIds { bos, add_bos, eos })
}
