//! Teacher-forced scores of alternative continuations at a point a sequence generated: the
//! guard's label scores. Once a sequence ends, each probe finds the last place its `marker`
//! tokens were generated and scores every alternative continuation from there, reusing the
//! sequence's own key/value cache (truncated to that point, so nothing is recomputed but the
//! alternatives' few tokens).

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

/// The log-probability of each alternative of each probe given `prompt + generated[..end]`, or
/// `None` for a probe whose marker was not generated. `cache` holds the sequence's keys and
/// values (`prompt_len + generated.len() - 1` positions: the last token is never fed); it is
/// truncated and refilled, so call this only once the sequence is done. Call inside the
/// engine's thread pool.
pub(crate) fn score(
    model: &Llama,
    cache: &mut KvCache,
    prompt_len: usize,
    generated: &[u32],
    probes: &[ContinuationProbe],
    scratch: &mut ForwardScratch,
) -> Result<Vec<Option<Vec<f32>>>> {
    let mut out = vec![None; probes.len()];
    let context = model.config().max_position_embeddings;
    let vocab = model.config().vocab_size;
    let mut order: Vec<(usize, usize)> = probes
        .iter()
        .enumerate()
        .filter_map(|(i, p)| marker_end(generated, &p.marker).map(|end| (i, end)))
        .collect();
    // Latest first: the cache is only ever truncated further back.
    order.sort_by_key(|&(_, end)| std::cmp::Reverse(end));
    for (i, end) in order {
        // The marker's last token is fed again: its logits predict each alternative's first.
        let base = prompt_len + end - 1;
        if base > cache.len() {
            continue;
        }
        let mut scores = Vec::with_capacity(probes[i].alternatives.len());
        for alt in &probes[i].alternatives {
            if alt.is_empty() {
                scores.push(0.0);
                continue;
            }
            if base + alt.len() > context {
                scores.push(f32::NEG_INFINITY);
                continue;
            }
            cache.truncate(base);
            let mut feed = Vec::with_capacity(alt.len());
            feed.push(generated[end - 1]);
            feed.extend_from_slice(&alt[..alt.len() - 1]);
            let logits = model.forward(
                &mut [SeqStep {
                    cache,
                    tokens: &feed,
                    logits: LogitsFor::All,
                }],
                scratch,
            )?;
            let logprob: f64 = logits
                .chunks_exact(vocab)
                .zip(alt)
                .map(|(row, &t)| log_softmax_at(row, t as usize))
                .sum();
            scores.push(logprob as f32);
        }
        out[i] = Some(scores);
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
