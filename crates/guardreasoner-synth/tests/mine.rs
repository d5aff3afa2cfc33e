//! Hard-sample mining on a fixture of samples with known right/wrong answers.

use guardreasoner_core::labels::Task;
use guardreasoner_synth::mine::{
    mine, mine_one, normalise_weights, GoldRecord, SampleSet, PAPER_GAMMA,
};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load() -> (Vec<GoldRecord>, Vec<SampleSet>) {
    let gold = guardreasoner_core::jsonl::read_records(&fixture("mining_gold.json")).unwrap();
    let sets = guardreasoner_core::jsonl::read_records(&fixture("mining_samples.jsonl")).unwrap();
    (gold, sets)
}

#[test]
fn fixture_gives_the_expected_pairs_and_weights() {
    let (gold, sets) = load();
    let (pairs, stats) = mine(&gold, &sets, PAPER_GAMMA).unwrap();
    assert_eq!(stats.pairs_before_dedup, 4);
    assert_eq!(stats.pairs, 3);
    let by_input: Vec<(&str, &str, &str, f64)> = pairs
        .iter()
        .map(|p| {
            (
                p.input.as_str(),
                p.chosen.as_str(),
                p.rejected.as_str(),
                p.sample_weight,
            )
        })
        .collect();
    // Per model: A has raw -2 (input 0) and 0 (input 1) -> 0.8, 1.2; B has raw 2 (input 0) and
    // 1 (input 5) -> 1.2, 0.8. Input 0 keeps B's pair (weight 1.2 beats A's 0.8).
    assert_eq!(by_input[0].0, gold[0].input);
    assert!(by_input[0].1.starts_with("B right, the only one."));
    assert!(by_input[0]
        .2
        .starts_with("B wrong and the longest wrong text."));
    assert!((by_input[0].3 - 1.2).abs() < 1e-12);
    // Input 1: the request is unanimous, so the response task decides (2 vs 2).
    assert_eq!(by_input[1].0, gold[1].input);
    assert!(by_input[1]
        .1
        .starts_with("R3 right resp, the longest right."));
    assert!(by_input[1].2.starts_with("R2 wrong resp, long text here."));
    assert!((by_input[1].3 - 1.2).abs() < 1e-12);
    // Input 5: 1 right, 2 wrong (raw 1), B's easiest pair.
    assert_eq!(by_input[2].0, gold[5].input);
    assert_eq!(by_input[2].1.lines().next(), Some("right"));
    assert_eq!(by_input[2].2.lines().next(), Some("wrong bb"));
    assert!((by_input[2].3 - 0.8).abs() < 1e-12);
    assert_eq!(stats.per_task.get("Request"), Some(&2));
    assert_eq!(stats.per_task.get("Response"), Some(&1));
}

#[test]
fn rule_details() {
    let (gold, sets) = load();
    // Unanimous, unparseable, or response tasks without a response: no pair.
    assert!(mine_one(&gold[2], &sets[3]).is_none());
    assert!(mine_one(&gold[3], &sets[4]).is_none());
    assert!(mine_one(&gold[4], &sets[5]).is_none());
    assert_eq!(gold[4].gold(Task::Response), None);
    assert_eq!(mine_one(&gold[1], &sets[2]).unwrap().task, Task::Response);
    assert_eq!(normalise_weights(&[3, 3], 0.2), vec![1.0, 1.0]);
    let w = normalise_weights(&[-2, 2, 0], 0.2);
    for (got, want) in w.iter().zip([0.8, 1.2, 1.0]) {
        assert!((got - want).abs() < 1e-12, "{w:?}");
    }
}

#[test]
fn samples_for_another_gold_file_are_rejected() {
    let (gold, mut sets) = load();
    sets[0].input = "something else".into();
    let err = mine(&gold, &sets, PAPER_GAMMA).unwrap_err();
    assert!(err.contains("do not match"), "{err}");
    sets[0].index = 99;
    assert!(mine(&gold, &sets, PAPER_GAMMA).unwrap_err().contains("99"));
}
