//! Prompt-lookup speculation changes nothing but the number of passes: on the default model,
//! greedy and sampled generations are the same tokens as without drafts, for sequences with
//! and without drafts decoded side by side, and the drafts are partly kept.

mod common;

use common::*;
use guardreasoner_engine::{Engine, Generation, PromptLookup, SamplingParams, SeqId};

/// The fixture prompt decoded greedily and sampled, side by side; generations in that order
/// and the number of passes.
fn run(engine: &Engine, prompt: &[u32], lookup: Option<PromptLookup>) -> (Vec<Generation>, usize) {
    let mut batch = engine.batch();
    batch.prompt_lookup = lookup;
    let long = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(96)
    };
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: 7,
        ..long.clone()
    };
    let ids: Vec<SeqId> = vec![
        batch.add(prompt.to_vec(), long.clone(), 0).unwrap(),
        batch.add(prompt.to_vec(), sampled, 0).unwrap(),
        // A short prompt (no match to draft from for a while) beside the others.
        batch.add(prompt[..6].to_vec(), long, 0).unwrap(),
    ];
    let (mut done, passes) = run_to_end(&mut batch);
    (
        ids.iter().map(|id| done.remove(id).unwrap()).collect(),
        passes,
    )
}

#[test]
fn prompt_lookup_gives_the_same_tokens_in_fewer_passes() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    let json = read_json(fixtures().join("smollm2/logits.json"));
    let prompt = ids(&json["prompts"][0]["prompt_ids"]);

    let (plain, plain_passes) = run(&engine, &prompt, None);
    let (spec, spec_passes) = run(&engine, &prompt, Some(PromptLookup::new(8)));
    for (i, (a, b)) in plain.iter().zip(&spec).enumerate() {
        assert_eq!(a.tokens, b.tokens, "sequence {i}: the same tokens");
        assert_eq!(a.finish_reason, b.finish_reason);
        for (t, (x, y)) in a.logprobs.iter().zip(&b.logprobs).enumerate() {
            assert!((x - y).abs() < 2e-2, "sequence {i}, token {t}: {x} vs {y}");
        }
        assert_eq!((a.drafted_tokens, a.accepted_draft_tokens), (0, 0));
        assert!(b.accepted_draft_tokens <= b.drafted_tokens);
    }
    let (drafted, accepted) = spec.iter().fold((0, 0), |(d, a), g| {
        (d + g.drafted_tokens, a + g.accepted_draft_tokens)
    });
    assert!(accepted > 0, "no draft token kept of {drafted}");
    assert!(
        spec_passes < plain_passes,
        "{spec_passes} passes with drafts, {plain_passes} without ({accepted}/{drafted} kept)"
    );
}
