//! Finding special-token text inside trusted text.
//!
//! The `tokenizers` tokenizer inside [`crate::Tokenizer`] never matches special tokens, so that
//! user text cannot produce them; trusted text is cut at the matches found here instead.
//! Matching follows `tokenizers`' added-vocabulary rules for raw (non-normalized) tokens:
//! leftmost-longest, `lstrip`/`rstrip` absorb neighbouring whitespace, `single_word` tokens only
//! match between non-word characters.

use aho_corasick::{AhoCorasick, MatchKind};
use tokenizers::AddedToken;

struct Entry {
    id: u32,
    content: String,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

pub(crate) struct SpecialMatcher {
    automaton: Option<AhoCorasick>,
    entries: Vec<Entry>,
}

impl SpecialMatcher {
    pub(crate) fn new<'a>(
        tokens: impl Iterator<Item = (&'a u32, &'a AddedToken)>,
    ) -> Result<Self, String> {
        let mut entries: Vec<Entry> = tokens
            .filter(|(_, t)| !t.content.is_empty())
            .map(|(&id, t)| Entry {
                id,
                content: t.content.clone(),
                lstrip: t.lstrip,
                rstrip: t.rstrip,
                single_word: t.single_word,
            })
            .collect();
        entries.sort_by_key(|e| e.id);
        let automaton = if entries.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(entries.iter().map(|e| e.content.as_str()))
                    .map_err(|e| format!("cannot index special tokens: {e}"))?,
            )
        };
        Ok(Self { automaton, entries })
    }

    pub(crate) fn tokens(&self) -> Vec<(String, u32)> {
        self.entries
            .iter()
            .map(|e| (e.content.clone(), e.id))
            .collect()
    }

    /// Non-overlapping special-token spans `(start, end, id)` in `text`, in order. A span
    /// includes whitespace that the token strips.
    pub(crate) fn find_all<'t>(
        &'t self,
        text: &'t str,
    ) -> impl Iterator<Item = (usize, usize, u32)> + 't {
        let mut last_end = 0;
        self.automaton
            .iter()
            .flat_map(move |ac| ac.find_iter(text))
            .filter_map(move |m| {
                let entry = &self.entries[m.pattern().as_usize()];
                let (mut start, mut end) = (m.start(), m.end());
                if entry.single_word && !is_single_word(text, start, end) {
                    return None;
                }
                if entry.lstrip {
                    let before = &text[last_end..start];
                    start = last_end + before.trim_end().len();
                }
                if entry.rstrip {
                    end += text[end..].len() - text[end..].trim_start().len();
                }
                // A previous rstrip may have eaten into this match's region; skip overlaps.
                if start < last_end {
                    return None;
                }
                last_end = end;
                Some((start, end, entry.id))
            })
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_single_word(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(is_word_char) && !after.is_some_and(is_word_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(tokens: &[(u32, AddedToken)]) -> SpecialMatcher {
        SpecialMatcher::new(tokens.iter().map(|(id, t)| (id, t))).unwrap()
    }

    #[test]
    fn finds_longest_leftmost_matches() {
        let m = matcher(&[
            (1, AddedToken::from("<|a|>", true)),
            (2, AddedToken::from("<|a|><|a|>", true)),
            (3, AddedToken::from("<|b|>", true)),
        ]);
        let spans: Vec<_> = m.find_all("x<|a|><|a|>y<|b|><|a|>").collect();
        assert_eq!(spans, vec![(1, 11, 2), (12, 17, 3), (17, 22, 1)]);
        assert_eq!(m.find_all("plain text").count(), 0);
    }

    #[test]
    fn strip_flags_absorb_whitespace() {
        let m = matcher(&[(
            7,
            AddedToken::from("<mask>", true).lstrip(true).rstrip(true),
        )]);
        let spans: Vec<_> = m.find_all("a  <mask> \nb").collect();
        assert_eq!(spans, vec![(1, 11, 7)]);
    }

    #[test]
    fn single_word_tokens_need_word_boundaries() {
        let m = matcher(&[(4, AddedToken::from("tok", true).single_word(true))]);
        assert_eq!(m.find_all("a tok b").collect::<Vec<_>>(), vec![(2, 5, 4)]);
        assert_eq!(m.find_all("atokb").count(), 0);
    }
}
