//! Prompt-lookup drafts for speculative decoding.
//!
//! A guard's reasoning quotes the conversation it judges ("the user asks how to ..."), so the
//! tokens that followed the last few generated tokens where they occurred earlier are a good
//! guess of what comes next. The draft is fed with the sequence's last token in one pass and
//! kept as far as the tokens chosen from that pass agree with it ([`crate::DecodeBatch`]),
//! which changes nothing but the number of passes: each token is still chosen from its own
//! logits, one sampler draw per token, greedy or sampled.

/// How drafts are looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptLookup {
    /// Most tokens drafted per pass.
    pub max_draft: usize,
    /// Longest suffix of the text so far that is matched (tried first).
    pub max_ngram: usize,
    /// Shortest suffix matched: shorter ones match by chance too often to pay.
    pub min_ngram: usize,
}

impl PromptLookup {
    /// Drafts of up to `max_draft` tokens, matching suffixes of 3 down to 2 tokens.
    pub fn new(max_draft: usize) -> Self {
        PromptLookup {
            max_draft,
            max_ngram: 3,
            min_ngram: 2,
        }
    }

    /// The tokens that followed the latest earlier occurrence of the longest matching suffix of
    /// `prompt ++ generated`, at most `limit` (and `max_draft`) of them; empty when nothing
    /// matches.
    pub fn draft(&self, prompt: &[u32], generated: &[u32], limit: usize) -> Vec<u32> {
        let limit = limit.min(self.max_draft);
        let len = prompt.len() + generated.len();
        if limit == 0 || self.min_ngram == 0 {
            return Vec::new();
        }
        let at = |i: usize| {
            if i < prompt.len() {
                prompt[i]
            } else {
                generated[i - prompt.len()]
            }
        };
        for n in (self.min_ngram..=self.max_ngram.min(len.saturating_sub(1))).rev() {
            let suffix = len - n;
            // Latest start first: the nearer context is the likelier continuation.
            for start in (0..suffix).rev() {
                if (0..n).all(|k| at(start + k) == at(suffix + k)) {
                    let from = start + n;
                    let to = (from + limit).min(len);
                    if from < to {
                        return (from..to).map(at).collect();
                    }
                }
            }
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_suffix_in_the_prompt() {
        let lookup = PromptLookup::new(4);
        let prompt = [1, 2, 3, 4, 5, 6, 7, 8];
        // The output ends with 3 4: 5 6 7 8 followed them in the prompt.
        assert_eq!(lookup.draft(&prompt, &[9, 3, 4], 10), [5, 6, 7, 8]);
        // The room left limits the draft.
        assert_eq!(lookup.draft(&prompt, &[9, 3, 4], 2), [5, 6]);
        assert!(lookup.draft(&prompt, &[9, 3, 4], 0).is_empty());
        // Nothing matches: no draft.
        assert!(lookup.draft(&prompt, &[9, 10, 11], 10).is_empty());
        // A single token matching is not enough (min_ngram 2).
        assert!(lookup.draft(&prompt, &[9, 10, 4], 10).is_empty());
    }

    #[test]
    fn the_longest_suffix_and_then_the_latest_match_win() {
        let lookup = PromptLookup::new(3);
        // "2 3" occurs twice; "1 2 3" once, followed by 7.
        let prompt = [1, 2, 3, 7, 0, 2, 3, 8, 0];
        assert_eq!(lookup.draft(&prompt, &[1, 2, 3], 3), [7, 0, 2]);
        // Only "2 3" matches: its latest earlier occurrence (followed by 8) wins.
        assert_eq!(lookup.draft(&prompt, &[5, 2, 3], 1), [8]);
        // Matches inside the generated text count too, and a draft may run to its end.
        assert_eq!(lookup.draft(&[9], &[4, 5, 6, 4, 5], 5), [6, 4, 5]);
    }

    #[test]
    fn short_inputs_draft_nothing() {
        let lookup = PromptLookup::new(4);
        assert!(lookup.draft(&[], &[], 4).is_empty());
        assert!(lookup.draft(&[1], &[], 4).is_empty());
        assert!(lookup.draft(&[1, 1], &[], 4).is_empty());
        assert_eq!(lookup.draft(&[1, 1, 1], &[], 4), [1]);
    }
}
