//! Teacher-forced scores of alternative continuations at a point a sequence generated: the
//! guard's label scores. Once a sequence ends, each probe finds the last place its `marker`
//! tokens were generated and scores every alternative continuation from there, reusing the
//! sequence's own key/value cache: each alternative reads it up to its marker through a fork,
//! and all alternatives run in one forward pass, so nothing is recomputed but their few tokens.

use std::sync::Arc;

use crate::error::Result;
use crate::llama::{ForwardScratch, KvCache, Llama, LogitsFor, SeqStep};

/// Alternatives to score after a marker (e.g. `Request:` then ` harmful` / ` unharmful`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContinuationProbe {
    /// The generated tokens after which the alternatives are scored (last occurrence).
    pub marker: Vec<u32>,
    /// Token sequences whose log-probabilities are wanted, each teacher-forced on its own.
    pub alternatives: Vec<Vec<u32>>,
}

/// Index just past the last occurrence of `marker` in `generated`.
pub(crate) fn marker_end(generated: &[u32], marker: &[u32]) -> Option<usize> {
    if marker.is_empty() || marker.len() > generated.len() {
        return None;
    }
    (0..=generated.len() - marker.len())
        .rev()
        .find(|&i| generated[i..i + marker.len()] == *marker)
        .map(|i| i + marker.len())
}

/// A finished sequence whose probes are to be scored.
pub(crate) struct Finished<'a> {
    /// Its keys and values (at least `prompt_len + generated.len() - 1` positions).
    pub cache: KvCache,
    pub prompt_len: usize,
    pub generated: &'a [u32],
    pub probes: &'a [ContinuationProbe],
}

/// One alternative to score: a fork of its sequence's cache up to the marker, and what to feed.
struct Job<'a> {
    seq: usize,
    probe: usize,
    alt: usize,
    /// The alternative's tokens.
    tokens: &'a [u32],
    fork: KvCache,
    /// The marker's last token and every alternative token but the last.
    feed: Vec<u32>,
}

/// For each finished sequence, the log-probability of each alternative of each of its probes
/// given `prompt + generated[..end]`, or `None` for a probe whose marker was not generated.
/// Every alternative reads its sequence's cache up to the marker through a fork, and all
/// alternatives of all sequences run in one forward pass. Call inside the engine's thread pool.
pub(crate) fn score<'a>(
    model: &Llama,
    seqs: Vec<Finished<'a>>,
    scratch: &mut ForwardScratch,
) -> Result<Vec<Vec<Option<Vec<f32>>>>> {
    let context = model.config().max_position_embeddings;
    let vocab = model.config().vocab_size;
    let mut jobs: Vec<Job<'a>> = Vec::new();
    let mut out: Vec<Vec<Option<Vec<f32>>>> = Vec::with_capacity(seqs.len());
    for (k, seq) in seqs.into_iter().enumerate() {
        let cache = Arc::new(seq.cache);
        let mut scored = vec![None; seq.probes.len()];
        for (i, probe) in seq.probes.iter().enumerate() {
            let Some(end) = marker_end(seq.generated, &probe.marker) else {
                continue;
            };
            // The marker's last token is fed again: its logits predict each alternative's
            // first token.
            let base = seq.prompt_len + end - 1;
            if base > cache.len() {
                continue;
            }
            let mut scores = vec![0.0; probe.alternatives.len()];
            for (j, alt) in probe.alternatives.iter().enumerate() {
                if alt.is_empty() {
                    continue;
                }
                if base + alt.len() > context {
                    scores[j] = f32::NEG_INFINITY;
                    continue;
                }
                let mut feed = Vec::with_capacity(alt.len());
                feed.push(seq.generated[end - 1]);
                feed.extend_from_slice(&alt[..alt.len() - 1]);
                let fork = KvCache::fork_prefix(&cache, base, base + alt.len());
                jobs.push(Job {
                    seq: k,
                    probe: i,
                    alt: j,
                    tokens: alt,
                    fork,
                    feed,
                });
            }
            scored[i] = Some(scores);
        }
        out.push(scored);
    }
    if jobs.is_empty() {
        return Ok(out);
    }
    let logits = {
        let mut steps: Vec<SeqStep<'_>> = jobs
            .iter_mut()
            .map(|job| SeqStep {
                cache: &mut job.fork,
                tokens: &job.feed,
                logits: LogitsFor::All,
            })
            .collect();
        model.forward(&mut steps, scratch)?
    };
    let mut rows = logits.chunks_exact(vocab);
    for job in &jobs {
        let logprob: f64 = job
            .tokens
            .iter()
            .zip(rows.by_ref())
            .map(|(&t, row)| log_softmax_at(row, t as usize))
            .sum();
        if let Some(scores) = out[job.seq][job.probe].as_mut() {
            scores[job.alt] = logprob as f32;
        }
    }
    Ok(out)
}

pub(crate) fn log_softmax_at(row: &[f32], token: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[token] as f64 - max - z.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_occurrence_of_the_marker_counts() {
        let generated = [5, 1, 2, 9, 1, 2, 7];
        assert_eq!(marker_end(&generated, &[1, 2]), Some(6));
        assert_eq!(marker_end(&generated, &[5]), Some(1));
        assert_eq!(marker_end(&generated, &[3]), None);
        assert_eq!(marker_end(&generated, &[]), None);
        assert_eq!(marker_end(&[1], &[1, 2]), None);
    }

    #[test]
    fn log_softmax_matches_the_definition() {
        let row = [1.0f32, 2.0, 3.0];
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((log_softmax_at(&row, 2) - (3.0 - z)).abs() < 1e-9);
    }
}
