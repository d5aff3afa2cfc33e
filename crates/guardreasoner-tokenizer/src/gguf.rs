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

/// The `tokenizer.ggml.*` metadata from which [`from_gguf`] rebuilds `tokenizer` (a byte-level
/// BPE whose pre-tokenizer is one of the supported GGUF families).
pub(crate) fn to_metadata(tokenizer: &Tokenizer) -> Result<Vec<(String, Value)>> {
    let origin = Path::new(tokenizer.origin());
    let json: serde_json::Value = serde_json::from_str(&tokenizer.to_hf_json()?).map_err(|e| {
        bad(
            origin,
            format!("cannot read back the serialised tokenizer: {e}"),
        )
    })?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad(origin, "only BPE tokenizers can be written to GGUF"));
    }
    let pre = &json["pre_tokenizer"];
    let pre_name = pretokenizer::SUPPORTED_GGUF_PRE_TOKENIZERS
        .iter()
        .find(|name| {
            pretokenizer::for_gguf_pre(name)
                .and_then(|p| serde_json::to_value(p).ok())
                .is_some_and(|p| &p == pre)
        })
        .ok_or_else(|| {
            bad(
                origin,
                format!("the pre-tokenizer {pre} matches none of the GGUF families we write"),
            )
        })?;

    let mut tokens: Vec<Option<(String, i64)>> = Vec::new();
    let mut put = |id: u64, text: &str, kind: i64| {
        let id = id as usize;
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some((text.to_string(), kind));
    };
    for (text, id) in model["vocab"].as_object().into_iter().flatten() {
        let id = id
            .as_u64()
            .ok_or_else(|| bad(origin, "vocabulary id is not a number"))?;
        put(id, text, 1);
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(bad(origin, "added token without id or content"));
        };
        let special = added["special"].as_bool().unwrap_or(false);
        put(
            id,
            text,
            if special {
                TOKEN_TYPE_CONTROL
            } else {
                TOKEN_TYPE_USER_DEFINED
            },
        );
    }
    if let Some(gap) = tokens.iter().position(Option::is_none) {
        return Err(bad(origin, format!("no token has id {gap}")));
    }
    let tokens: Vec<(String, i64)> = tokens.into_iter().flatten().collect();
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(pair) => match (pair.first(), pair.get(1)) {
                (Some(serde_json::Value::String(a)), Some(serde_json::Value::String(b))) => {
                    Ok(format!("{a} {b}"))
                }
                _ => Err(bad(origin, "merge is not a pair of strings")),
            },
            _ => Err(bad(origin, "merge is not a string or a pair")),
        })
        .collect::<Result<Vec<String>>>()?;

    let special = tokenizer.special_ids();
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String((*pre_name).into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(
                tokens
                    .iter()
                    .map(|(t, _)| Value::String(t.clone()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(tokens.iter().map(|&(_, k)| Value::I32(k as i32)).collect()),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(special.add_bos),
        ),
    ];
    if let Some(bos) = special.bos {
        out.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    if let Some(&eos) = special.eos.first() {
        out.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
    }
    if let Some(&eot) = special.eos.get(1) {
        out.push(("tokenizer.ggml.eot_token_id".into(), Value::U32(eot)));
    }
    Ok(out)
}
