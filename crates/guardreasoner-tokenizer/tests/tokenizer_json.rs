//! Loading Hugging Face `tokenizer.json` files: the tiny Llama-3-layout fixture, checked
//! against the `tokenizers` crate's own handling of the same file.

mod common;

use guardreasoner_tokenizer::{Tokenizer, TokenizerError};

const TEXTS: &[&str] = &[
    "",
    "Hello, world!",
    "Human user:\nHow do I bake bread?\n\nAI assistant:\nNone\n\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|endoftext|>x<|im_end|>",
    "Ünïcödé 中文测试 😀🔥👍🏽 👨\u{200d}👩\u{200d}👧",
    "Numbers: 1234567890 3.14159 -42",
    "   \n\n\n   ",
    "<|im_end",
    "<repo_name>a<filename>b<gh_stars>",
];

fn reference(special: bool) -> tokenizers::Tokenizer {
    let mut t = tokenizers::Tokenizer::from_file(common::fixture("tiny-llama3/tokenizer.json"))
        .expect("tokenizers loads the fixture");
    t.set_encode_special_tokens(!special);
    t
}

#[test]
fn encodings_match_the_tokenizers_crate() {
    let ours = Tokenizer::from_file(common::fixture("tiny-llama3/tokenizer.json")).expect("load");
    let with_specials = reference(true);
    let without_specials = reference(false);
    for text in TEXTS {
        let expected = with_specials
            .encode(*text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            ours.encode_trusted(text).unwrap(),
            expected,
            "trusted {text:?}"
        );
        let expected = without_specials
            .encode(*text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            ours.encode_untrusted(text).unwrap(),
            expected,
            "untrusted {text:?}"
        );
    }
}

#[test]
fn round_trips_and_matches_tokenizers_decode() {
    let ours = Tokenizer::from_hf_dir(common::fixture("tiny-llama3")).expect("load");
    let reference = reference(true);
    for text in TEXTS {
        let ids = ours.encode_trusted(text).unwrap();
        assert_eq!(ours.decode(&ids, false).unwrap(), *text);
        for skip in [false, true] {
            assert_eq!(
                ours.decode(&ids, skip).unwrap(),
                reference.decode(&ids, skip).unwrap(),
                "skip_special={skip} {text:?}"
            );
        }
        let mut stream = ours.stream_decoder(true);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(id).unwrap());
        }
        streamed.push_str(&stream.finish().unwrap());
        assert_eq!(streamed, ours.decode(&ids, true).unwrap());
    }
}

#[test]
fn hf_dir_reads_bos_and_eos_from_the_configs() {
    let tok = Tokenizer::from_hf_dir(common::fixture("tiny-llama3")).expect("load");
    // config.json: bos_token_id 1, eos_token_id 2; tokenizer_config.json agrees.
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    // The post-processor adds nothing, and tokenizer_config.json sets no add_bos_token.
    assert!(!tok.special_ids().add_bos);
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
}

#[test]
fn hf_dir_takes_eos_lists_and_add_bos_from_configs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::fixture("tiny-llama3/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"bos_token_id": 1, "eos_token_id": [2, 0]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"add_bos_token": true, "eos_token": {"content": "<|im_end|>"}}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_hf_dir(dir.path()).expect("load");
    assert_eq!(tok.eos_ids(), &[2, 0]);
    assert_eq!(tok.bos_id(), Some(1));
    assert!(tok.special_ids().add_bos);

    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": 999999}"#,
    )
    .unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("999999"), "{err}");
}

#[test]
fn missing_or_corrupt_tokenizer_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tokenizer.json");
    let err = Tokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }));
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    std::fs::write(&missing, br#"{"model": {"type": "BPE""#).unwrap();
    let err = Tokenizer::from_file(&missing).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    let err = Tokenizer::from_hf_dir(dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

/// A SentencePiece-style tokenizer (Llama 2 layout: `▁` for spaces, byte fallback, a decoder
/// chain that is not byte-level), to exercise the generic decoding path.
fn sentencepiece_style(dir: &std::path::Path) -> std::path::PathBuf {
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), (b + 1).into());
    }
    for (i, piece) in ["▁", "h", "i", "▁h", "▁hi"].iter().enumerate() {
        vocab.insert((*piece).into(), (257 + i as u32).into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 0, "content": "<unk>", "single_word": false, "lstrip": false,
                          "rstrip": false, "normalized": false, "special": true}],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": [["▁", "h"], ["▁h", "i"]]}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    path
}

#[test]
fn non_byte_level_decoders_stream_whole_characters() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::from_file(sentencepiece_style(dir.path())).expect("load");
    assert_eq!(tok.token_bytes(0), None, "not a byte-level decoder");
    let text = "hi 🦀 hi";
    let ids = tok.encode_untrusted(text).unwrap();
    assert!(ids.len() >= 7, "{ids:?}");
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let mut stream = tok.stream_decoder(false);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(stream.push(id).unwrap());
    }
    pieces.push(stream.finish().unwrap());
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert!(
        pieces.contains(&"🦀".to_string()) || pieces.contains(&" 🦀".to_string()),
        "{pieces:?}"
    );
    assert_eq!(pieces.concat(), text);
}
