//! Continuation probes (the guard's label scores) on the default model: the teacher-forced
//! log-probabilities scored from a finished sequence's own cache equal those of a fresh
//! forward pass over the same tokens, and the generated continuation scores what generation
//! itself assigned it.

mod common;

use common::*;
use guardreasoner_engine::{
    ContinuationProbe, Engine, GenerationRequest, SamplingParams, SequenceOptions,
};

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    }
}

/// `log p(alt | context)` from one fresh forward pass over `context + alt`.
fn reference_logprob(engine: &Engine, context: &[u32], alt: &[u32]) -> f64 {
    let mut ids = context.to_vec();
    ids.extend_from_slice(&alt[..alt.len() - 1]);
    let vocab = engine.config().vocab_size;
    let logits = engine.logits_all(&ids).unwrap();
    alt.iter()
        .enumerate()
        .map(|(j, &t)| {
            let row = &logits[(context.len() - 1 + j) * vocab..][..vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            row[t as usize] as f64 - max - z.ln()
        })
        .sum()
}

#[test]
fn probe_logprobs_equal_a_fresh_forward_over_the_same_tokens() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    let json = read_json(fixtures().join("smollm2/logits.json"));
    let prompt = ids(&json["prompts"][0]["prompt_ids"]);
    // Prefix reuse on: the probes must truncate a cache whose head is shared.
    engine.register_prefix(&prompt[..prompt.len() / 2]).unwrap();
    let plain = engine
        .generate(
            &[GenerationRequest {
                prompt_ids: prompt.clone(),
                params: greedy(24),
            }],
            |_, _| {},
        )
        .unwrap()
        .remove(0);
    let g = &plain.tokens;
    assert_eq!(g.len(), 24);

    let late = ContinuationProbe {
        marker: g[14..16].to_vec(),
        alternatives: vec![g[16..19].to_vec(), vec![42], vec![g[3], g[4], 7]],
    };
    let early = ContinuationProbe {
        marker: g[5..8].to_vec(),
        alternatives: vec![g[8..10].to_vec(), vec![1000, 2000]],
    };
    let absent = ContinuationProbe {
        marker: [g.as_slice(), &[0]].concat(),
        alternatives: vec![vec![1]],
    };
    let mut batch = engine.batch();
    // Two copies finish in the same step: their probes are scored in one pass together.
    let options = SequenceOptions {
        probes: vec![early.clone(), absent, late.clone()],
        answer: None,
    };
    let id = batch
        .add_with(prompt.clone(), greedy(24), 0, options.clone())
        .unwrap();
    let twin = batch
        .add_with(prompt.clone(), greedy(24), 1, options)
        .unwrap();
    let (mut finished, _) = run_to_end(&mut batch);
    let done = finished.remove(&id).expect("the sequence finished");
    let twin_done = finished.remove(&twin).expect("the twin finished");
    assert_eq!(twin_done.tokens, done.tokens);
    for (a, b) in done.probe_logprobs.iter().zip(&twin_done.probe_logprobs) {
        let (a, b) = (a.clone().unwrap_or_default(), b.clone().unwrap_or_default());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-3, "twin probe {y} vs {x}");
        }
    }
    assert_eq!(
        done.tokens, plain.tokens,
        "probing does not change generation"
    );
    assert_eq!(done.probe_logprobs.len(), 3);
    assert!(done.probe_logprobs[1].is_none(), "a marker never generated");

    let check = |probe: &ContinuationProbe, got: &[f32], end: usize| {
        let context = [prompt.as_slice(), &g[..end]].concat();
        assert_eq!(got.len(), probe.alternatives.len());
        for (alt, &lp) in probe.alternatives.iter().zip(got) {
            let want = reference_logprob(&engine, &context, alt);
            assert!(
                (lp as f64 - want).abs() < 2e-2 + 2e-3 * want.abs(),
                "alternative {alt:?} after {end} tokens: {lp} vs fresh forward {want}"
            );
        }
    };
    let late_lp = done.probe_logprobs[2].as_ref().expect("late marker found");
    let early_lp = done.probe_logprobs[0].as_ref().expect("early marker found");
    check(&late, late_lp, 16);
    check(&early, early_lp, 8);
    // The continuation that was generated scores what generation gave its tokens.
    let generated: f32 = plain.logprobs[16..19].iter().sum();
    assert!(
        (late_lp[0] - generated).abs() < 1e-3,
        "{} vs {generated}",
        late_lp[0]
    );
    // Greedy chose it: it beats the alternatives that differ at the first token.
    assert!(late_lp[0] > late_lp[1]);
}

#[test]
fn probe_tokens_outside_the_vocabulary_are_refused() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    let mut batch = engine.batch();
    let err = batch
        .add_with(
            vec![1, 2, 3],
            greedy(4),
            0,
            SequenceOptions {
                probes: vec![ContinuationProbe {
                    marker: vec![1],
                    alternatives: vec![vec![u32::MAX]],
                }],
                answer: None,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");
}
