//! Fast pre-tokenization for the common byte-level BPE layouts.
//!
//! Without oniguruma, `tokenizers` runs the GPT-2 and Llama 3 split patterns on `fancy-regex`,
//! whose backtracking engine is slow on the `\s+(?!\S)` look-ahead (about 5 us per token on a
//! guard prompt). Here the same patterns, minus the look-ahead, run on the `regex` crate's
//! automata, and the one rule the look-ahead expressed is applied by hand: a run of
//! whitespace followed by a non-space gives up its last character to the next piece. Each
//! piece is then byte-level mapped and handed to the tokenizer's own BPE model (with its
//! cache), so the ids are those of the full `tokenizers` pipeline; tests compare both paths.
//!
//! Used only when the tokenizer has no normalizer, no non-special added tokens and one of the
//! recognised pre-tokenizers; anything else takes the ordinary `tokenizers` path.

use regex::Regex;
use serde_json::{json, Value as Json};
use tokenizers::Model;

use crate::pretokenizer::LLAMA3_SPLIT;

/// GPT-2's pattern without the `\s+(?!\S)` alternative.
const GPT2_SPLIT_NO_LOOKAHEAD: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// GPT-2 splitting, optionally after isolating every digit (SmolLM / StarCoder).
    Gpt2 { digits_first: bool },
    /// Llama 3 splitting.
    Llama3,
}

pub(crate) struct FastPath {
    family: Family,
    pattern: Regex,
    byte_chars: [char; 256],
}

/// The byte-level alphabet: the character that stands for each byte.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or('\0')
        };
    }
    table
}

/// The pre-tokenizer configurations this path reproduces, as `tokenizers` serialises them.
fn recognise(pre_tokenizer: &Json) -> Option<Family> {
    let byte_level = |use_regex: bool| {
        move |v: &Json| {
            v["type"] == "ByteLevel"
                && v["add_prefix_space"] == json!(false)
                && v["use_regex"] == json!(use_regex)
        }
    };
    if byte_level(true)(pre_tokenizer) {
        return Some(Family::Gpt2 {
            digits_first: false,
        });
    }
    if pre_tokenizer["type"] != "Sequence" {
        return None;
    }
    match pre_tokenizer["pretokenizers"].as_array()?.as_slice() {
        [digits, bl]
            if digits["type"] == "Digits"
                && digits["individual_digits"] == json!(true)
                && byte_level(true)(bl) =>
        {
            Some(Family::Gpt2 { digits_first: true })
        }
        [split, bl]
            if split["type"] == "Split"
                && split["pattern"]["Regex"] == json!(LLAMA3_SPLIT)
                && split["behavior"] == "Isolated"
                && split["invert"] == json!(false)
                && byte_level(false)(bl) =>
        {
            Some(Family::Llama3)
        }
        _ => None,
    }
}

impl FastPath {
    /// The fast path for `inner`, when its configuration is one this module reproduces.
    pub(crate) fn for_tokenizer(inner: &tokenizers::Tokenizer) -> Option<Self> {
        if inner.get_normalizer().is_some()
            || inner
                .get_added_tokens_decoder()
                .values()
                .any(|t| !t.special)
            || !matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_))
        {
            return None;
        }
        let family = recognise(&serde_json::to_value(inner.get_pre_tokenizer()?).ok()?)?;
        let pattern = match family {
            Family::Gpt2 { .. } => GPT2_SPLIT_NO_LOOKAHEAD.to_string(),
            // The look-ahead alternative is the second to last; drop it.
            Family::Llama3 => LLAMA3_SPLIT.replace(r"|\s+(?!\S)", ""),
        };
        Some(Self {
            family,
            pattern: Regex::new(&pattern).ok()?,
            byte_chars: byte_chars(),
        })
    }

    /// Append the ids of `text` (which holds no special tokens) to `ids`.
    pub(crate) fn encode_into(
        &self,
        model: &tokenizers::ModelWrapper,
        text: &str,
        ids: &mut Vec<u32>,
    ) -> tokenizers::Result<()> {
        let mut mapped = String::new();
        let mut piece_error = None;
        let mut emit = |piece: &str| {
            if piece_error.is_some() {
                return;
            }
            mapped.clear();
            mapped.extend(piece.bytes().map(|b| self.byte_chars[b as usize]));
            match model.tokenize(&mapped) {
                Ok(tokens) => ids.extend(tokens.iter().map(|t| t.id)),
                Err(e) => piece_error = Some(e),
            }
        };
        match self.family {
            Family::Gpt2 { digits_first: true } => {
                // Every numeric character is a piece of its own; GPT-2 splitting in between.
                let mut start = 0;
                for (i, c) in text.char_indices() {
                    if c.is_numeric() {
                        self.split(&text[start..i], &mut emit);
                        emit(&text[i..i + c.len_utf8()]);
                        start = i + c.len_utf8();
                    }
                }
                self.split(&text[start..], &mut emit);
            }
            _ => self.split(text, &mut emit),
        }
        match piece_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Cut `text` into pre-tokenizer pieces.
    fn split<'t>(&self, text: &'t str, emit: &mut impl FnMut(&'t str)) {
        let mut pos = 0;
        while pos < text.len() {
            let Some(m) = self.pattern.find_at(text, pos) else {
                emit(&text[pos..]);
                return;
            };
            if m.start() > pos {
                emit(&text[pos..m.start()]);
            }
            let mut end = m.end();
            let piece = m.as_str();
            // `\s+(?!\S)`: a whitespace run followed by a non-space keeps its last character
            // for the next piece (Llama 3's newline runs come from `\s*[\r\n]+`, which ends in
            // a newline and is left alone).
            let newline_run = self.family == Family::Llama3 && piece.ends_with(['\r', '\n']);
            if end < text.len() && !newline_run && piece.chars().all(char::is_whitespace) {
                if let Some(last) = piece.chars().next_back() {
                    if piece.len() > last.len_utf8() {
                        end -= last.len_utf8();
                    }
                }
            }
            emit(&text[m.start()..end]);
            pos = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(family: Family, text: &str) -> Vec<String> {
        let pattern = match family {
            Family::Gpt2 { .. } => GPT2_SPLIT_NO_LOOKAHEAD.to_string(),
            Family::Llama3 => LLAMA3_SPLIT.replace(r"|\s+(?!\S)", ""),
        };
        let fast = FastPath {
            family,
            pattern: Regex::new(&pattern).unwrap(),
            byte_chars: byte_chars(),
        };
        let mut out = Vec::new();
        fast.split(text, &mut |p: &str| out.push(p.to_string()));
        out
    }

    #[test]
    fn whitespace_runs_give_their_last_character_to_the_next_piece() {
        let gpt2 = Family::Gpt2 {
            digits_first: false,
        };
        assert_eq!(pieces(gpt2, "a   b"), ["a", "  ", " b"]);
        assert_eq!(pieces(gpt2, "a\n\nb  "), ["a", "\n", "\n", "b", "  "]);
        assert_eq!(pieces(gpt2, "a \tb"), ["a", " ", "\t", "b"]);
        assert_eq!(
            pieces(Family::Llama3, "a \n\n  b?\n x"),
            ["a", " \n\n", " ", " b", "?\n", " x"]
        );
    }

    #[test]
    fn the_llama3_pattern_loses_exactly_the_lookahead() {
        assert!(LLAMA3_SPLIT.contains(r"|\s+(?!\S)"));
        assert!(!LLAMA3_SPLIT.replace(r"|\s+(?!\S)", "").contains("(?!"));
    }
}
