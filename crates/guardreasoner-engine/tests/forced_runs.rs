//! Forced answer tokens fed as one run per pass (the answer header, the text between labels)
//! change nothing but the number of passes: on the default model, the same tokens, the same
//! log-probabilities within float noise, and the same label probes as one pass per token,
//! for a constrained sequence decoded beside an unconstrained one.

mod common;

use common::*;
use guardreasoner_engine::{
    AnswerConstraint, ContinuationProbe, Engine, Generation, SamplingParams, SequenceOptions,
};

/// Decode a constrained and a plain sequence together; returns both generations and the
/// number of passes.
fn run(
    engine: &Engine,
    prompt: &[u32],
    budget: usize,
    forced_runs: bool,
) -> (Generation, Generation, usize) {
    let mut batch = engine.batch();
    batch.forced_runs = forced_runs;
    // A made-up answer grammar over real token ids: after a `budget`-token reasoning, a
    // forced 4-token header, then endings that share prefixes (choices at their forks).
    let (h, e) = (&prompt[1..5], &prompt[5..12]);
    let answer = AnswerConstraint {
        trigger: h[3..].to_vec(),
        forced: h.to_vec(),
        endings: vec![
            vec![e[0], e[1], e[2], e[3]],
            vec![e[0], e[1], e[4], e[5], e[6]],
            vec![e[6], e[5]],
        ],
        budget: Some(budget),
    };
    let probes = vec![ContinuationProbe {
        marker: h[2..].to_vec(),
        alternatives: vec![vec![e[0], e[1]], vec![e[6]]],
    }];
    let constrained = batch
        .add_with(
            prompt.to_vec(),
            SamplingParams::greedy(40),
            0,
            SequenceOptions {
                probes,
                answer: Some(answer),
            },
        )
        .unwrap();
    let plain = batch
        .add(
            prompt[..prompt.len() - 3].to_vec(),
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(2)
            },
            1,
        )
        .unwrap();
    let (mut done, passes) = run_to_end(&mut batch);
    (
        done.remove(&constrained).unwrap(),
        done.remove(&plain).unwrap(),
        passes,
    )
}

#[test]
fn forced_runs_give_the_same_generation_in_fewer_passes() {
    let Some(model) = test_model() else { return };
    let engine = Engine::load(&model).unwrap();
    let json = read_json(fixtures().join("smollm2/logits.json"));
    let prompt = ids(&json["prompts"][0]["prompt_ids"]);
    assert!(prompt.len() > 16, "the fixture prompt is long enough");

    // Budget 6: reasoning, then the forced answer; budget 0: the answer forced from the
    // start (`--reasoning none`), its header fed with the end of the prompt.
    for budget in [6, 0] {
        let (one, plain_one, passes_one) = run(&engine, &prompt, budget, false);
        let (runs, plain_runs, passes_runs) = run(&engine, &prompt, budget, true);

        assert!(one.forced_answer, "the budget forced the answer");
        assert_eq!(runs.tokens, one.tokens, "budget {budget}: same tokens");
        assert_eq!(runs.forced_answer, one.forced_answer);
        assert_eq!(runs.finish_reason, one.finish_reason);
        for (i, (x, y)) in runs.logprobs.iter().zip(&one.logprobs).enumerate() {
            assert!(
                (x - y).abs() < 2e-2,
                "budget {budget}, token {i}: logprob {x} vs {y}"
            );
        }
        let (p, q) = (&runs.probe_logprobs[0], &one.probe_logprobs[0]);
        let (p, q) = (p.as_ref().unwrap(), q.as_ref().unwrap());
        for (x, y) in p.iter().zip(q) {
            assert!((x - y).abs() < 2e-2, "budget {budget}: probe {x} vs {y}");
        }
        assert_eq!(plain_runs.tokens, plain_one.tokens, "the other sequence");
        // The header (4) and at least the ending's forced tail are fed as runs: fewer passes.
        assert!(
            passes_runs + 3 <= passes_one,
            "budget {budget}: {passes_runs} passes with runs, {passes_one} without"
        );
    }
}
