//! Prompt-lookup speculation changes nothing but the number of passes: on the default model,
//! greedy and sampled generations are the same tokens as without drafts, for sequences with
//! and without drafts decoded side by side, and the drafts are partly kept.

mod common;

use common::*;
use guardreasoner_engine::{
    Engine, Generation, KvType, LoadOptions, PromptLookup, SamplingParams, SeqId,
};

/// The SmolLM2 fixture's first prompt.
fn fixture_prompt() -> Vec<u32> {
    let json = read_json(fixtures().join("smollm2/logits.json"));
    ids(&json["prompts"][0]["prompt_ids"])
}

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
    // The f16 cache (rows) and the 8-bit one (blocked on AVX-512 VNNI): a draft not kept is
    // truncated from the cache and its positions written again.
    for kv_cache in [KvType::F16, KvType::Q8] {
        let options = LoadOptions {
            kv_cache: Some(kv_cache),
            ..LoadOptions::default()
        };
        check_same_tokens(&Engine::load_with(&model, &options).unwrap());
    }
}

fn check_same_tokens(engine: &Engine) {
    let prompt = fixture_prompt();

    let (plain, plain_passes) = run(engine, &prompt, None);
    // Drafting in a batch of three (past the default limit), to test it side by side.
    let lookup = PromptLookup {
        max_batch: usize::MAX,
        ..PromptLookup::new(8)
    };
    let (spec, spec_passes) = run(engine, &prompt, Some(lookup));
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

/// A batch remembers its finished outputs and drafts from them where a sequence's own text has
/// no match: a later sequence writing what an earlier one wrote keeps most of those drafts,
/// and its tokens are still those of plain decoding.
#[test]
fn drafts_from_earlier_outputs_keep_the_tokens() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    let prompt = fixture_prompt();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(64)
    };
    let mut plain = engine.batch();
    let id = plain.add(prompt.clone(), params.clone(), 0).unwrap();
    let want = run_to_end(&mut plain).0.remove(&id).unwrap();

    let mut batch = engine.batch();
    batch.prompt_lookup = Some(PromptLookup::new(4));
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let id = batch.add(prompt.clone(), params.clone(), 0).unwrap();
        let (mut done, passes) = run_to_end(&mut batch);
        rounds.push((done.remove(&id).unwrap(), passes));
    }
    for (g, _) in &rounds {
        assert_eq!(g.tokens, want.tokens, "the same tokens as plain decoding");
    }
    let (first, second) = (&rounds[0], &rounds[1]);
    assert!(
        second.0.accepted_draft_tokens > first.0.accepted_draft_tokens
            && second.1 < first.1
            && second.0.accepted_draft_tokens * 2 > want.tokens.len(),
        "the second round drafts from the first's output: kept {} then {} of {} tokens, \
         passes {} then {}",
        first.0.accepted_draft_tokens,
        second.0.accepted_draft_tokens,
        want.tokens.len(),
        first.1,
        second.1
    );
}

/// Drafts stop while the batch holds more sequences than `max_batch` (a drafted row costs about
/// another sequence's token, which only pays beside a small batch's weight reads); the tokens
/// are the same either way.
#[test]
fn no_drafts_while_the_batch_is_past_its_limit() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    let prompt = fixture_prompt();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(48)
    };
    // Three sequences that start and finish together: the batch never shrinks below three.
    let three = |max_batch: usize| {
        let mut batch = engine.batch();
        batch.prompt_lookup = Some(PromptLookup {
            max_batch,
            ..PromptLookup::new(4)
        });
        let ids: Vec<SeqId> = (0..3)
            .map(|_| batch.add(prompt.clone(), params.clone(), 0).unwrap())
            .collect();
        let mut done = run_to_end(&mut batch).0;
        ids.iter()
            .map(|id| done.remove(id).unwrap())
            .collect::<Vec<_>>()
    };
    let (limited, drafting) = (three(2), three(3));
    for (a, b) in limited.iter().zip(&drafting) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(
            a.drafted_tokens, 0,
            "drafted in a batch of three with a limit of two"
        );
    }
    assert!(
        drafting
            .iter()
            .map(|g| g.accepted_draft_tokens)
            .sum::<usize>()
            > 0,
        "no draft kept at a limit of three"
    );
    assert_eq!(PromptLookup::new(4).max_batch, 2);
}
