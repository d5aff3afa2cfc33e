//! Prompt-lookup drafts for speculative decoding.
//!
//! A guard's reasoning quotes the conversation it judges ("the user asks how to ..."), so the
//! tokens that followed the last few generated tokens where they occurred earlier are a good
//! guess of what comes next. Its reasoning is also written to a pattern ("## Reasoning Step
//! 1: The human user's request ..."), so where the sequence's own text has no match, what the
//! batch's earlier outputs wrote after the same tokens is the next guess ([`DraftHistory`]).
//! The draft is fed with the sequence's last token in one pass and kept as far as the tokens
//! chosen from that pass agree with it ([`crate::DecodeBatch`]), which changes nothing but the
//! number of passes: each token is still chosen from its own logits, one sampler draw per
//! token, greedy or sampled.

use std::collections::HashMap;

/// How drafts are looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptLookup {
    /// Most tokens drafted per pass.
    pub max_draft: usize,
    /// Longest suffix of the text so far that is matched (tried first).
    pub max_ngram: usize,
    /// Shortest suffix matched: shorter ones match by chance too often to pay.
    pub min_ngram: usize,
    /// Draft only while at most this many sequences are in the batch. A drafted row costs
    /// about what another sequence's token costs, which is cheap beside one sequence's pass (its
    /// weight reads) but not beside a batch's: on a 2-core machine drafts made one sequence 1.3x
    /// faster, two 1.1x, and four, eight and sixteen 5-13% slower (BENCHMARKS.md).
    pub max_batch: usize,
}

/// [`PromptLookup::max_batch`] unless set otherwise.
pub const SPECULATE_UP_TO: usize = 2;

impl PromptLookup {
    /// Drafts of up to `max_draft` tokens, matching suffixes of 3 down to 2 tokens, while at
    /// most [`SPECULATE_UP_TO`] sequences are in the batch.
    pub fn new(max_draft: usize) -> Self {
        PromptLookup {
            max_draft,
            max_ngram: 3,
            min_ngram: 2,
            max_batch: SPECULATE_UP_TO,
        }
    }

    /// The tokens that followed the latest earlier occurrence of the longest matching suffix of
    /// `prompt ++ generated`, at most `limit` (and `max_draft`) of them: in that text, else in
    /// `history` (suffix lengths tried longest first, the sequence's own text before the
    /// history at each length); empty when nothing matches.
    pub fn draft(
        &self,
        prompt: &[u32],
        generated: &[u32],
        limit: usize,
        history: &DraftHistory,
    ) -> Vec<u32> {
        let limit = limit.min(self.max_draft);
        if limit == 0 {
            return Vec::new();
        }
        let len = prompt.len() + generated.len();
        let at = |i: usize| joined(prompt, generated, i);
        for n in (self.min_ngram..=self.max_ngram.min(len)).rev() {
            let own = self.draft_with(prompt, generated, limit, n);
            if !own.is_empty() {
                return own;
            }
            let suffix: Vec<u32> = (len - n..len).map(at).collect();
            let from_history = history.continuation(&suffix, limit);
            if !from_history.is_empty() {
                return from_history;
            }
        }
        Vec::new()
    }

    /// [`draft`](Self::draft) in the sequence's own text, matching suffixes of exactly `n`.
    fn draft_with(&self, prompt: &[u32], generated: &[u32], limit: usize, n: usize) -> Vec<u32> {
        let len = prompt.len() + generated.len();
        if n == 0 || n >= len {
            return Vec::new();
        }
        let at = |i: usize| joined(prompt, generated, i);
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
        Vec::new()
    }
}

/// Token `i` of `prompt ++ generated`.
fn joined(prompt: &[u32], generated: &[u32], i: usize) -> u32 {
    if i < prompt.len() {
        prompt[i]
    } else {
        generated[i - prompt.len()]
    }
}

/// Earlier outputs of a batch, indexed by their 2- and 3-token runs, to draft from when a
/// sequence's own text has no match. Bounded: past [`DraftHistory::CAPACITY`] tokens the older
/// outputs are forgotten, about half of what is held.
#[derive(Debug, Default)]
pub struct DraftHistory {
    tokens: Vec<u32>,
    /// Where each output ends in `tokens`, in order.
    ends_of_outputs: Vec<usize>,
    /// Where the latest occurrence of each run ends in `tokens`: runs of 2 tokens, then of 3,
    /// each packed into one integer (see [`DraftHistory::key`]).
    runs: [HashMap<u64, u32>; 2],
}

impl DraftHistory {
    /// Most tokens kept (a few hundred guard verdicts).
    pub const CAPACITY: usize = 1 << 16;
    /// Run lengths indexed.
    const RUNS: [usize; 2] = [2, 3];
    /// Bits per token in a packed run (three fit in 63 bits; larger token ids are not indexed).
    const TOKEN_BITS: u32 = 21;

    /// A run of 2 or 3 tokens as one integer, if every id fits in [`Self::TOKEN_BITS`].
    fn key(run: &[u32]) -> Option<u64> {
        run.iter().try_fold(0u64, |k, &t| {
            (t < 1 << Self::TOKEN_BITS).then_some(k << Self::TOKEN_BITS | t as u64)
        })
    }

    /// Remember a finished output (at most half the capacity of its end).
    pub fn record(&mut self, output: &[u32]) {
        let output = &output[output.len().saturating_sub(Self::CAPACITY / 2)..];
        if self.tokens.len() + output.len() > Self::CAPACITY {
            // Keep the newer outputs from the first one that ends past the middle.
            let middle = self.tokens.len() / 2;
            let first = self.ends_of_outputs.partition_point(|&e| e <= middle);
            let starts: Vec<usize> = std::iter::once(0)
                .chain(self.ends_of_outputs.iter().copied())
                .collect();
            let kept: Vec<Vec<u32>> = (first + 1..self.ends_of_outputs.len())
                .map(|i| self.tokens[starts[i]..self.ends_of_outputs[i]].to_vec())
                .collect();
            *self = DraftHistory::default();
            for o in &kept {
                self.append(o);
            }
        }
        self.append(output);
    }

    fn append(&mut self, output: &[u32]) {
        // Only runs inside the output: none crosses from the previous one into it.
        let start = self.tokens.len();
        self.tokens.extend_from_slice(output);
        self.ends_of_outputs.push(self.tokens.len());
        for (runs, n) in self.runs.iter_mut().zip(Self::RUNS) {
            for end in start + n..=self.tokens.len() {
                if let Some(key) = Self::key(&self.tokens[end - n..end]) {
                    runs.insert(key, end as u32);
                }
            }
        }
    }

    /// Up to `limit` tokens that followed the latest occurrence of `suffix` (a run of 2 or 3),
    /// within the output it occurred in.
    pub fn continuation(&self, suffix: &[u32], limit: usize) -> Vec<u32> {
        let Some(runs) = Self::RUNS.iter().position(|&n| n == suffix.len()) else {
            return Vec::new();
        };
        let Some(&end) = Self::key(suffix).and_then(|k| self.runs[runs].get(&k)) else {
            return Vec::new();
        };
        let end = end as usize;
        let output_end = self.ends_of_outputs[self.ends_of_outputs.partition_point(|&e| e < end)];
        self.tokens[end..(end + limit).min(output_end)].to_vec()
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_suffix_in_the_prompt() {
        let (lookup, none) = (PromptLookup::new(4), DraftHistory::default());
        let prompt = [1, 2, 3, 4, 5, 6, 7, 8];
        // The output ends with 3 4: 5 6 7 8 followed them in the prompt.
        assert_eq!(lookup.draft(&prompt, &[9, 3, 4], 10, &none), [5, 6, 7, 8]);
        // The room left limits the draft.
        assert_eq!(lookup.draft(&prompt, &[9, 3, 4], 2, &none), [5, 6]);
        assert!(lookup.draft(&prompt, &[9, 3, 4], 0, &none).is_empty());
        // Nothing matches: no draft.
        assert!(lookup.draft(&prompt, &[9, 10, 11], 10, &none).is_empty());
        // A single token matching is not enough (min_ngram 2).
        assert!(lookup.draft(&prompt, &[9, 10, 4], 10, &none).is_empty());
    }

    #[test]
    fn the_longest_suffix_and_then_the_latest_match_win() {
        let (lookup, none) = (PromptLookup::new(3), DraftHistory::default());
        // "2 3" occurs twice; "1 2 3" once, followed by 7.
        let prompt = [1, 2, 3, 7, 0, 2, 3, 8, 0];
        assert_eq!(lookup.draft(&prompt, &[1, 2, 3], 3, &none), [7, 0, 2]);
        // Only "2 3" matches: its latest earlier occurrence (followed by 8) wins.
        assert_eq!(lookup.draft(&prompt, &[5, 2, 3], 1, &none), [8]);
        // Matches inside the generated text count too, and a draft may run to its end.
        assert_eq!(lookup.draft(&[9], &[4, 5, 6, 4, 5], 5, &none), [6, 4, 5]);
    }

    #[test]
    fn short_inputs_draft_nothing() {
        let (lookup, none) = (PromptLookup::new(4), DraftHistory::default());
        assert!(lookup.draft(&[], &[], 4, &none).is_empty());
        assert!(lookup.draft(&[1], &[], 4, &none).is_empty());
        assert!(lookup.draft(&[1, 1], &[], 4, &none).is_empty());
        assert_eq!(lookup.draft(&[1, 1, 1], &[], 4, &none), [1]);
    }

    #[test]
    fn earlier_outputs_draft_where_the_own_text_has_no_match() {
        let lookup = PromptLookup::new(3);
        let mut history = DraftHistory::default();
        history.record(&[20, 21, 22, 23, 24]);
        history.record(&[30, 21, 22, 40]);
        // No match in the own text: the latest earlier output after "21 22" (40, its end).
        assert_eq!(lookup.draft(&[1, 2], &[21, 22], 3, &history), [40]);
        // The longer run "20 21 22" wins over the later "21 22".
        assert_eq!(lookup.draft(&[1, 20], &[21, 22], 3, &history), [23, 24]);
        // The own text wins at the same run length.
        assert_eq!(
            lookup.draft(&[21, 22, 7], &[21, 22], 3, &history),
            [7, 21, 22]
        );
        // Runs and drafts stay inside one output: "24 30" was never written, and nothing
        // follows "23 24".
        assert!(lookup.draft(&[1], &[24, 30], 3, &history).is_empty());
        assert!(history.continuation(&[23, 24], 3).is_empty());
        assert!(lookup.draft(&[1], &[21, 22], 0, &history).is_empty());
    }

    #[test]
    fn the_history_stays_bounded() {
        let mut history = DraftHistory::default();
        for i in 0..200u32 {
            let output: Vec<u32> = (0..1000).map(|t| t + 1000 * (i % 7)).collect();
            history.record(&output);
            assert!(history.len() <= DraftHistory::CAPACITY);
        }
        assert!(history.len() >= DraftHistory::CAPACITY / 2 - 1000);
        assert_eq!(history.continuation(&[5, 6], 3), [7, 8, 9]);
        assert!(history.continuation(&[998, 999], 3).is_empty());
        // Runs of other lengths, and ids too large to pack, are not looked up.
        assert!(history.continuation(&[5], 3).is_empty());
        assert!(history.continuation(&[4, 5, 6, 7], 3).is_empty());
        history.record(&[1 << 22, 1, 2, 3]);
        assert!(history.continuation(&[1 << 22, 1], 2).is_empty());
        assert_eq!(history.continuation(&[1, 2], 2), [3]);
        // Forgotten outputs leave no runs behind: output 199 used offset 3000 (199 % 7 = 3).
        assert_eq!(history.continuation(&[3005, 3006], 2), [3007, 3008]);
    }
}
