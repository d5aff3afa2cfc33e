//! Tokenizers rebuilt from small GGUF files written here: pre-tokenizer selection, special
//! tokens and the errors for metadata this crate cannot use.

use std::path::{Path, PathBuf};

use guardreasoner_tokenizer::{Tokenizer, TokenizerError};

/// A GGUF metadata value, written in the file's little-endian encoding.
enum Meta {
    Str(String),
    U32(u32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 file with metadata and no tensors.
fn write_gguf(dir: &Path, name: &str, metadata: &[(&str, Meta)]) -> PathBuf {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        match value {
            Meta::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Meta::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Bool(b) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
            Meta::Strs(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    put_str(&mut out, s);
                }
            }
            Meta::I32s(items) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&5u32.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// The 256 byte-level characters (in byte order) followed by the given merged tokens and
/// control tokens.
fn toy_vocab(merged: &[&str], control: &[&str]) -> (Vec<String>, Vec<i32>) {
    let printable = |b: u32| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0;
    let mut tokens: Vec<String> = (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap().to_string()
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).unwrap().to_string()
            }
        })
        .collect();
    let mut types = vec![1; 256];
    tokens.extend(merged.iter().map(|s| s.to_string()));
    types.extend(merged.iter().map(|_| 1));
    tokens.extend(control.iter().map(|s| s.to_string()));
    types.extend(control.iter().map(|_| 3));
    (tokens, types)
}

const MERGED: &[&str] = &["12", "?Ċ", "he", "hel", "hell", "hello"];
const MERGES: &[&str] = &["1 2", "? Ċ", "h e", "he l", "hel l", "hell o"];

fn toy_metadata(pre: Option<&str>) -> Vec<(&'static str, Meta)> {
    let (tokens, types) = toy_vocab(MERGED, &["<|end|>", "<|start|>"]);
    let n = tokens.len() as u32;
    let mut m = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type", Meta::I32s(types)),
        (
            "tokenizer.ggml.merges",
            Meta::Strs(MERGES.iter().map(|s| s.to_string()).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Meta::U32(n - 1)),
        ("tokenizer.ggml.eos_token_id", Meta::U32(n - 2)),
        ("tokenizer.ggml.add_bos_token", Meta::Bool(true)),
    ];
    if let Some(pre) = pre {
        m.push(("tokenizer.ggml.pre", Meta::Str(pre.into())));
    }
    m
}

fn toy(pre: Option<&str>) -> Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = write_gguf(dir.path(), "toy.gguf", &toy_metadata(pre));
    Tokenizer::from_gguf_path(&path).expect("toy tokenizer")
}

fn tokens_of(tok: &Tokenizer, text: &str) -> Vec<String> {
    tok.encode_untrusted(text)
        .unwrap()
        .iter()
        .map(|&id| tok.id_to_token(id).unwrap())
        .collect()
}

#[test]
fn pre_tokenizer_names_select_their_splitting_rules() {
    // GPT-2: digit runs and punctuation/newline stay apart.
    let gpt2 = toy(None);
    assert_eq!(tokens_of(&gpt2, "12?\nhello"), ["12", "?", "Ċ", "hello"]);
    assert_eq!(
        tokens_of(&toy(Some("gpt-2")), "12?\nhello"),
        ["12", "?", "Ċ", "hello"]
    );
    // SmolLM: every digit alone.
    assert_eq!(
        tokens_of(&toy(Some("smollm")), "12?\nhello"),
        ["1", "2", "?", "Ċ", "hello"]
    );
    // Llama 3: punctuation keeps its trailing newline.
    assert_eq!(
        tokens_of(&toy(Some("llama-bpe")), "12?\nhello"),
        ["12", "?Ċ", "hello"]
    );
}

#[test]
fn control_tokens_are_special_and_ids_come_from_metadata() {
    let tok = toy(Some("llama-bpe"));
    let end = tok.token_to_id("<|end|>").unwrap();
    let start = tok.token_to_id("<|start|>").unwrap();
    assert_eq!(tok.bos_id(), Some(start));
    assert!(tok.special_ids().add_bos);
    // eos_token_id, and <|end|> is also a known end-of-turn text: listed once.
    assert_eq!(tok.eos_ids(), &[end]);
    assert_eq!(
        tok.encode_trusted("hello<|end|>").unwrap(),
        vec![tok.token_to_id("hello").unwrap(), end]
    );
    assert!(!tok.encode_untrusted("hello<|end|>").unwrap().contains(&end));
    assert_eq!(tok.decode(&[start, end], true).unwrap(), "");
}

fn load_error(metadata: &[(&str, Meta)]) -> TokenizerError {
    let dir = tempfile::tempdir().unwrap();
    let path = write_gguf(dir.path(), "bad.gguf", metadata);
    Tokenizer::from_gguf_path(&path).unwrap_err()
}

fn replace(key: &str, value: Meta) -> Vec<(&'static str, Meta)> {
    let mut m = toy_metadata(Some("smollm"));
    let slot = m.iter_mut().find(|(k, _)| *k == key).expect("key present");
    slot.1 = value;
    m
}

#[test]
fn unsupported_pre_tokenizer_is_named() {
    let err = load_error(&toy_metadata(Some("qwen2")));
    assert!(
        matches!(err, TokenizerError::UnsupportedPreTokenizer { ref pre, .. } if pre == "qwen2")
    );
    let msg = err.to_string();
    assert!(
        msg.contains("bad.gguf") && msg.contains("qwen2") && msg.contains("llama-bpe"),
        "{msg}"
    );
}

#[test]
fn unsupported_model_is_named() {
    let err = load_error(&replace("tokenizer.ggml.model", Meta::Str("llama".into())));
    assert!(
        matches!(err, TokenizerError::UnsupportedModel { ref model, .. } if model == "llama"),
        "{err}"
    );
}

#[test]
fn inconsistent_metadata_is_reported() {
    let err = load_error(&replace(
        "tokenizer.ggml.token_type",
        Meta::I32s(vec![1; 3]),
    ));
    assert!(err.to_string().contains("token types"), "{err}");
    let err = load_error(&replace(
        "tokenizer.ggml.merges",
        Meta::Strs(vec!["nospace".into()]),
    ));
    assert!(err.to_string().contains("nospace"), "{err}");
    let err = load_error(&replace(
        "tokenizer.ggml.eos_token_id",
        Meta::U32(1_000_000),
    ));
    assert!(err.to_string().contains("1000000"), "{err}");
    let err = load_error(&replace("tokenizer.ggml.tokens", Meta::Str("oops".into())));
    assert!(matches!(err, TokenizerError::Gguf(_)), "{err}");
    let mut no_merges = toy_metadata(None);
    no_merges.retain(|(k, _)| *k != "tokenizer.ggml.merges");
    assert!(load_error(&no_merges).to_string().contains("merges"));
}

#[test]
fn a_file_that_is_not_gguf_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"not a model at all").unwrap();
    assert!(matches!(
        Tokenizer::from_gguf_path(&path),
        Err(TokenizerError::Gguf(_))
    ));
}
