//! Pre-tokenizers named by GGUF's `tokenizer.ggml.pre`.
//!
//! llama.cpp names each model family's text-splitting rules (a chain of regexes applied before
//! BPE) with a short string; this maps the supported names onto `tokenizers` pre-tokenizers.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

/// Values of `tokenizer.ggml.pre` this crate rebuilds (a missing key means `default`).
pub const SUPPORTED_GGUF_PRE_TOKENIZERS: &[&str] =
    &["default", "gpt-2", "gpt2", "smollm", "llama-bpe", "llama3"];

/// Llama 3's split: contractions in any case, letter runs with one leading non-letter, digit
/// groups of at most three, punctuation runs with trailing newlines, newline runs, spaces.
pub(crate) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for a GGUF `pre` name, or `None` when unsupported.
pub(crate) fn for_gguf_pre(pre: &str) -> Option<PreTokenizerWrapper> {
    // The GPT-2 regex (contractions, ` ?letters`, ` ?digits`, ` ?other`, whitespace) plus the
    // byte-level character mapping.
    let gpt2 = || ByteLevel::new(false, false, true);
    Some(match pre {
        // transformers' GGUF loader also uses plain GPT-2 splitting when no family is named;
        // llama.cpp's own "default" adds punctuation and digit splits that no model we
        // support relies on.
        "default" | "gpt-2" | "gpt2" => gpt2().into(),
        // SmolLM (StarCoder family): every digit is its own piece, then GPT-2 splitting
        // (llama.cpp: regexes `\p{N}` then GPT-2; the model's own tokenizer.json:
        // Digits(individual) + ByteLevel). transformers' GGUF loader drops the digit split,
        // which changes whitespace runs before digits: "\n\n1" is "\n\n","1" here and
        // "\n","\n","1" there.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), gpt2().into()]).into(),
        "llama-bpe" | "llama3" => Sequence::new(vec![
            Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .ok()?
            .into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    /// The pieces a pre-tokenizer cuts `text` into, in the byte-level alphabet.
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let pt = for_gguf_pre(pre).expect("supported");
        let mut s = PreTokenizedString::from(text);
        pt.pre_tokenize(&mut s).expect("pre-tokenize");
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    #[test]
    fn every_listed_name_is_supported_and_others_are_not() {
        for name in SUPPORTED_GGUF_PRE_TOKENIZERS {
            assert!(for_gguf_pre(name).is_some(), "{name}");
        }
        assert!(for_gguf_pre("qwen2").is_none());
        assert!(for_gguf_pre("").is_none());
    }

    #[test]
    fn gpt2_keeps_digit_runs_and_leading_spaces() {
        assert_eq!(
            pieces("gpt-2", "I'm 12345 ok?!\n\nyes"),
            ["I", "'m", "Ġ12345", "Ġok", "?!", "Ċ", "Ċ", "yes"]
        );
    }

    #[test]
    fn smollm_splits_every_digit() {
        assert_eq!(pieces("smollm", "a 123 b"), ["a", "Ġ", "1", "2", "3", "Ġb"]);
        assert_eq!(pieces("smollm", ":\n\n1."), [":", "ĊĊ", "1", "."]);
        assert_eq!(pieces("gpt-2", ":\n\n1."), [":", "Ċ", "Ċ", "1", "."]);
    }

    #[test]
    fn llama3_groups_digits_by_three_and_keeps_newlines_with_punctuation() {
        assert_eq!(
            pieces("llama-bpe", "I'M 1234567 bread?\n\nAI"),
            ["I", "'M", "Ġ", "123", "456", "7", "Ġbread", "?ĊĊ", "AI"]
        );
        assert_eq!(pieces("llama-bpe", "x \n\n y"), ["x", "ĠĊĊ", "Ġy"]);
    }
}
