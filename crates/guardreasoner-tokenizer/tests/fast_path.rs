//! The fast pre-tokenization path gives exactly the ids of the `tokenizers` pipeline, for every
//! supported pre-tokenizer, on the fixture texts and on generated text full of the cases that
//! split patterns get wrong (whitespace runs, contractions, digits, marks, emoji, odd spaces).

mod common;

use guardreasoner_gguf::GgufFile;
use guardreasoner_tokenizer::Tokenizer;

const FRAGMENTS: &[&str] = &[
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "\n\n",
    "\r",
    " \n",
    "a",
    "Hello",
    "don't",
    "'S",
    "'ll",
    "'re",
    "123",
    "4",
    " 56",
    "1234567",
    "٣",
    "Ⅻ",
    "½",
    "é",
    "ñ",
    "e\u{301}",
    "中文",
    "😀",
    "👍🏽",
    "\u{200d}",
    "?",
    "!!",
    "...",
    "—",
    "\u{a0}",
    "\u{3000}",
    "\u{85}",
    "<|im_end|>",
    "x",
    "_",
    "$",
    "#",
    ":",
    "\"",
    "'",
    "ok",
    "ÀÉÎ",
    "ß",
    "ǅ",
];

/// Deterministic pseudo-random texts built from `FRAGMENTS`.
fn generated_texts(count: usize) -> Vec<String> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|_| {
            let len = 1 + (next() % 14) as usize;
            (0..len)
                .map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize])
                .collect()
        })
        .collect()
}

fn corpus() -> Vec<String> {
    let cases = common::read_json("smollm2/tokenizer-cases.json");
    let mut texts: Vec<String> = cases["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| c["text"].as_str().expect("text").to_string())
        .collect();
    texts.extend(generated_texts(3000));
    texts
}

fn assert_same_as_reference(tok: &Tokenizer, label: &str) {
    assert!(tok.uses_fast_path(), "{label}: fast path not taken");
    for text in corpus() {
        assert_eq!(
            tok.encode_untrusted(&text).unwrap(),
            tok.encode_untrusted_reference(&text).unwrap(),
            "{label}: {text:?}"
        );
    }
}

#[test]
fn fast_path_matches_tokenizers_for_every_gguf_pre_tokenizer() {
    let Some(path) = common::default_model() else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    assert_same_as_reference(&Tokenizer::from_gguf(&file).unwrap(), "smollm");
    for pre in ["gpt-2", "llama-bpe"] {
        let tok = Tokenizer::from_gguf_with_pre_tokenizer(&file, pre).unwrap();
        assert_same_as_reference(&tok, pre);
    }
}

#[test]
fn fast_path_matches_tokenizers_for_a_tokenizer_json() {
    let tok = Tokenizer::from_file(common::fixture("tiny-llama3/tokenizer.json")).unwrap();
    assert_same_as_reference(&tok, "tiny-llama3");
}
