//! The default model (SmolLM2-135M-Instruct, GGUF Q4_1) against
//! `shared/fixtures/smollm2/logits.json` (transformers fp32 on the dequantised weights).

mod common;

use common::*;
use guardreasoner_engine::llama::{ForwardScratch, LogitsFor, SeqStep};
use guardreasoner_engine::quant::Activations;
use guardreasoner_engine::{
    Engine, FinishReason, GenerationRequest, KvType, LoadOptions, SamplingParams,
};

struct Case {
    ids: Vec<u32>,
    top20: Vec<(usize, f32)>,
    probes: Vec<(usize, f32)>,
    first_top5: Vec<usize>,
    greedy: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let json = read_json(fixtures().join("smollm2/logits.json"));
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let pairs = |v: &serde_json::Value| -> Vec<(usize, f32)> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        (
                            e["id"].as_u64().unwrap() as usize,
                            e["logit"].as_f64().unwrap() as f32,
                        )
                    })
                    .collect()
            };
            let probe_ids = ids(&p["last_probe_ids"]);
            let probe_logits = p["last_probe_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32);
            Case {
                ids: ids(&p["prompt_ids"]),
                top20: pairs(&p["last_top20"]),
                probes: probe_ids
                    .iter()
                    .map(|&i| i as usize)
                    .zip(probe_logits)
                    .collect(),
                first_top5: ids(&p["first_pos_top5"])
                    .iter()
                    .map(|&i| i as usize)
                    .collect(),
                greedy: ids(&p["greedy_48"]),
            }
        })
        .collect()
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(n)
    }
}

fn requests(cases: &[Case], params: SamplingParams) -> Vec<GenerationRequest> {
    cases
        .iter()
        .map(|c| GenerationRequest {
            prompt_ids: c.ids.clone(),
            params: params.clone(),
        })
        .collect()
}

#[test]
fn dequantized_forward_matches_reference_logits_and_greedy_continuation() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load_with(
        &model,
        &LoadOptions {
            threads: None,
            dequantize: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        let logits = engine.logits(&case.ids).unwrap();
        for &(id, want) in case.top20.iter().chain(&case.probes) {
            assert!(
                (logits[id] - want).abs() < 2e-3,
                "prompt {i}: token {id}: {} vs {want}",
                logits[id]
            );
        }
        let first = engine.logits(&case.ids[..1]).unwrap();
        assert_eq!(
            top_k(&first, 5),
            case.first_top5,
            "prompt {i}: first position top-5"
        );
    }
    // The reference stops at end-of-sequence (id 2) like the engine does.
    let out = engine
        .generate(&requests(&cases, SamplingParams::greedy(48)), |_, _| {})
        .unwrap();
    for (i, (case, g)) in cases.iter().zip(&out).enumerate() {
        assert_eq!(g.tokens, case.greedy, "prompt {i}: greedy continuation");
        let expected = if case.greedy.len() < 48 {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(g.finish_reason, expected);
    }
}

#[test]
fn quantized_forward_keeps_top1_and_top20_logits_close() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    // The f16 cache goes with 16-bit activations: within ~0.01 of the exact computation.
    assert_eq!(engine.model().activations(), Activations::Q16);
    let cases = cases();
    check_top1_and_top20(&engine, &cases);
    let out = engine
        .generate(&requests(&cases, SamplingParams::greedy(16)), |_, _| {})
        .unwrap();
    for (i, (case, g)) in cases.iter().zip(&out).enumerate() {
        let k = case.greedy.len().min(16);
        assert_eq!(
            g.tokens,
            case.greedy[..k],
            "prompt {i}: first {k} greedy tokens"
        );
    }
}

/// How far below our largest logit the reference's greedy token may be (the top-20 logits'
/// tolerance, [`check_top1_and_top20`]).
const GREEDY_TIE: f32 = 0.5;

/// Teacher-forces the reference's first `n` greedy tokens after each prompt: each is ours or
/// within [`GREEDY_TIE`] of our best, so the two greedy texts can part only at a near-tie (the
/// 8-bit mode: cache and, on AVX-512 VNNI, activations).
fn check_reference_greedy_is_near_ours(engine: &Engine, cases: &[Case], n: usize) {
    let vocab = engine.model().config().vocab_size;
    for (i, case) in cases.iter().enumerate() {
        let k = case.greedy.len().min(n);
        let ids: Vec<u32> = case.ids.iter().chain(&case.greedy[..k]).copied().collect();
        let all = engine.logits_all(&ids).unwrap();
        for j in 0..k {
            let at = &all[(case.ids.len() - 1 + j) * vocab..][..vocab];
            let best = at.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let chosen = at[case.greedy[j] as usize];
            assert!(
                chosen >= best - GREEDY_TIE,
                "prompt {i}: greedy token {j} ({}) is {} below our best",
                case.greedy[j],
                best - chosen
            );
        }
    }
}

#[test]
fn batched_decoding_and_prefix_reuse_give_the_tokens_of_lone_decoding() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    assert_eq!(engine.model().kv_type(), KvType::F16);
    check_batching_is_exact(&engine);
}

/// The 8-bit cache (`--kv-cache q8`, with 8-bit activations on AVX-512 VNNI): within the
/// quantized path's logit tolerances, the reference's greedy tokens near ours, and
/// batching, prefix reuse and continuous batching still give exactly the tokens of lone
/// decoding (each position is quantized on its own, whatever the batch).
#[test]
fn eight_bit_cache_keeps_logits_close_and_batching_exact() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load_with(
        &model,
        &LoadOptions {
            kv_cache: Some(KvType::Q8),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(engine.model().kv_type(), KvType::Q8);
    assert_eq!(engine.model().activations(), Activations::Q8);
    let cases = cases();
    check_top1_and_top20(&engine, &cases);
    check_reference_greedy_is_near_ours(&engine, &cases, 16);
    // Its memory: 1 byte per element plus an f32 scale per 32, against f16's 2 bytes.
    let f16 = Engine::load(&model).unwrap();
    let own_bytes = |e: &Engine| {
        let ids = &cases[0].ids;
        let mut cache = e.model().new_cache(ids.len());
        let mut step = [SeqStep {
            cache: &mut cache,
            tokens: ids,
            logits: LogitsFor::Nothing,
        }];
        e.model()
            .forward(&mut step, &mut ForwardScratch::default())
            .unwrap();
        assert_eq!(cache.len(), ids.len());
        (cache.own_bytes(), cache.layout())
    };
    let ((q8_bytes, layout), (f16_bytes, _)) = (own_bytes(&engine), own_bytes(&f16));
    let ratio = q8_bytes as f64 / f16_bytes as f64;
    // A blocked cache (AVX-512 VNNI) fills whole blocks of positions.
    let n = cases[0].ids.len();
    let want = 1.125 * layout.elements(n, 1) as f64 / (2.0 * n as f64);
    assert!(
        (ratio - want).abs() < 1e-9,
        "q8/f16 cache bytes {ratio}, {want} expected ({layout:?})"
    );
    // A cache of the other type is refused, not misread.
    let mut wrong = f16.model().new_cache(8);
    let err = engine
        .model()
        .forward(
            &mut [SeqStep {
                cache: &mut wrong,
                tokens: &cases[0].ids[..4],
                logits: LogitsFor::Last,
            }],
            &mut ForwardScratch::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("cache holds f16"), "{err}");
    check_batching_is_exact(&engine);
}

/// The quantized path's logit tolerances: the reference's top-1 at the last position, and
/// each of its top-20 logits within 0.5.
fn check_top1_and_top20(engine: &Engine, cases: &[Case]) {
    for (i, case) in cases.iter().enumerate() {
        let logits = engine.logits(&case.ids).unwrap();
        assert_eq!(top_k(&logits, 1)[0], case.top20[0].0, "prompt {i}: top-1");
        for &(id, want) in &case.top20 {
            assert!(
                (logits[id] - want).abs() < 0.5,
                "prompt {i}: token {id}: {} vs {want}",
                logits[id]
            );
        }
    }
}

fn check_batching_is_exact(engine: &Engine) {
    let cases = cases();
    let reqs = requests(&cases, greedy(24));
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| {
            engine.generate(std::slice::from_ref(r), |_, _| {}).unwrap()[0]
                .tokens
                .clone()
        })
        .collect();

    let mut streamed = vec![Vec::new(); reqs.len()];
    let batched = engine.generate(&reqs, |i, t| streamed[i].push(t)).unwrap();
    for i in 0..reqs.len() {
        assert_eq!(batched[i].tokens, alone[i], "prompt {i}: batched vs alone");
        assert_eq!(streamed[i], alone[i], "prompt {i}: streamed tokens");
        assert_eq!(batched[i].logprobs.len(), batched[i].tokens.len());
        assert!(batched[i]
            .logprobs
            .iter()
            .all(|&l| l <= 0.0 && l.is_finite()));
    }

    // The prompts share the guard instruction: register it once and reuse its keys/values.
    let common = (0..)
        .take_while(|&k| cases.iter().all(|c| c.ids.get(k) == cases[0].ids.get(k)))
        .count();
    assert!(
        common > 50,
        "fixture prompts should share the instruction ({common} tokens)"
    );
    engine.register_prefix(&cases[0].ids[..common]).unwrap();
    let reused = engine.generate(&reqs, |_, _| {}).unwrap();
    for i in 0..reqs.len() {
        assert_eq!(reused[i].reused_prompt_tokens, common);
        assert_eq!(
            reused[i].tokens, alone[i],
            "prompt {i}: prefix reuse vs full prefill"
        );
    }

    // Continuous batching: a sequence joins while others are mid-decode, one is cancelled.
    let mut batch = engine.batch();
    batch.prefill_chunk = 64;
    let a = batch.add(cases[0].ids.clone(), greedy(24), 0).unwrap();
    let mut got_a = Vec::new();
    for _ in 0..5 {
        got_a.extend(
            batch
                .step()
                .unwrap()
                .into_iter()
                .filter(|o| o.id == a)
                .map(|o| o.token),
        );
    }
    let b = batch.add(cases[1].ids.clone(), greedy(24), 0).unwrap();
    let c = batch.add(cases[2].ids.clone(), greedy(24), 0).unwrap();
    let mut got_b = Vec::new();
    let mut cancelled = false;
    while !batch.is_empty() {
        for o in batch.step().unwrap() {
            if o.id == a {
                got_a.push(o.token);
            } else if o.id == b {
                got_b.push(o.token);
            }
        }
        if !cancelled && got_b.len() >= 3 {
            let partial = batch.cancel(c).expect("c is active");
            assert_eq!(partial.finish_reason, FinishReason::Cancelled);
            assert_eq!(partial.tokens, alone[2][..partial.tokens.len()]);
            cancelled = true;
        }
    }
    assert!(cancelled);
    assert_eq!(got_a, alone[0]);
    assert_eq!(got_b, alone[1]);
}

#[test]
fn sampling_is_seeded_and_n_samples_are_independent() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    let case = &cases()[0];
    let params = SamplingParams {
        temperature: 0.7,
        top_p: 0.95,
        seed: 7,
        n: 4,
        max_new_tokens: 12,
        ..Default::default()
    };
    let request = GenerationRequest {
        prompt_ids: case.ids.clone(),
        params,
    };
    let first = engine
        .generate(std::slice::from_ref(&request), |_, _| {})
        .unwrap();
    let again = engine
        .generate(std::slice::from_ref(&request), |_, _| {})
        .unwrap();
    assert_eq!(first.len(), 4);
    let outcome = |gs: &[guardreasoner_engine::Generation]| {
        gs.iter()
            .map(|g| (g.tokens.clone(), g.logprobs.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(outcome(&first), outcome(&again), "same seed, same samples");
    let distinct: std::collections::HashSet<&Vec<u32>> = first.iter().map(|g| &g.tokens).collect();
    assert!(
        distinct.len() > 1,
        "4 samples at T=0.7 should not all agree"
    );
    // Sample 0 alone (n = 1) draws from the same stream as sample 0 of the n = 4 request.
    let single = GenerationRequest {
        prompt_ids: case.ids.clone(),
        params: SamplingParams {
            n: 1,
            ..request.params.clone()
        },
    };
    assert_eq!(
        engine.generate(&[single], |_, _| {}).unwrap()[0].tokens,
        first[0].tokens
    );
}

#[test]
fn samples_of_one_prompt_read_it_once_and_draw_what_they_would_alone() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    let prompt = cases()[1].ids.clone();
    let params = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: 3,
        max_new_tokens: 10,
        ..Default::default()
    };
    let options = guardreasoner_engine::SequenceOptions::default();
    // Each sample added on its own reads the whole prompt.
    let mut alone = engine.batch();
    let ids: Vec<_> = (0..3)
        .map(|i| {
            alone
                .add_with(prompt.clone(), params.clone(), i, options.clone())
                .unwrap()
        })
        .collect();
    let (by_id, _) = common::run_to_end(&mut alone);
    let alone: Vec<_> = ids.iter().map(|id| by_id[id].clone()).collect();
    assert!(alone.iter().all(|g| g.reused_prompt_tokens == 0));

    let mut shared = engine.batch();
    let ids = shared
        .add_samples(prompt.clone(), params.clone(), 3, options.clone())
        .unwrap();
    assert_eq!(shared.len(), 3, "waiting samples count as in the batch");
    let (by_id, _) = common::run_to_end(&mut shared);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(by_id[id].tokens, alone[i].tokens, "sample {i}");
        // Rounding may differ with the batch's make-up (which kernel width a row meets).
        for (a, b) in by_id[id].logprobs.iter().zip(&alone[i].logprobs) {
            assert!((a - b).abs() < 1e-4, "sample {i}: logprob {a} against {b}");
        }
    }
    assert_eq!(by_id[&ids[0]].reused_prompt_tokens, 0);
    for id in &ids[1..] {
        assert_eq!(by_id[id].reused_prompt_tokens, prompt.len() - 1);
    }

    // The first sample cancelled before it read the prompt: the others read it themselves.
    let mut cancelled = engine.batch();
    let ids = cancelled
        .add_samples(prompt.clone(), params.clone(), 3, options)
        .unwrap();
    assert!(cancelled.cancel(ids[0]).unwrap().tokens.is_empty());
    assert!(cancelled.cancel(ids[2]).unwrap().tokens.is_empty());
    assert_eq!(cancelled.len(), 1);
    let (by_id, _) = common::run_to_end(&mut cancelled);
    assert_eq!(by_id[&ids[1]].tokens, alone[1].tokens);
    assert_eq!(by_id.len(), 1);
}
