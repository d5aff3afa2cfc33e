//! HS-DPO: the loss on hand-computed log-probs, and reward margins growing on a tiny case.

mod common;

use guardreasoner_train::dpo::{
    pair_loss_and_grad, reference_log_probs, tokenize_pairs, DpoConfig, DpoObjective,
    PreferenceRecord,
};
use guardreasoner_train::model::TrainMode;
use guardreasoner_train::trainer::{train, Resume, RunOptions, TrainerConfig};

#[test]
fn loss_matches_hand_computation() {
    let cfg = DpoConfig::default();
    // margin = (-12 - -15) - (-20 - -18) = 3 - (-2) = 5; z = 0.01 * 5 = 0.05
    // -log sigmoid(0.05) = ln(1 + e^-0.05) = 0.669100...; nll_mean = 12 / 4 = 3
    // loss = 1.2 * (0.6691003 + 2 * 3)
    let (loss, margin, _, _) = pair_loss_and_grad(-12.0, -20.0, -15.0, -18.0, 4, 1.2, &cfg);
    let want = 1.2 * ((1.0f64 + (-0.05f64).exp()).ln() + 6.0);
    assert!((loss - want).abs() < 1e-12);
    assert!((margin - 0.05).abs() < 1e-12);
    // Large margins stay finite (stable softplus).
    let plain = DpoConfig {
        beta: 1.0,
        ftx: 0.0,
    };
    let (l, _, _, _) = pair_loss_and_grad(5000.0, -5000.0, 0.0, 0.0, 1, 1.0, &plain);
    assert!(l.abs() < 1e-12);
    let (l, _, _, _) = pair_loss_and_grad(-5000.0, 5000.0, 0.0, 0.0, 1, 1.0, &plain);
    assert!((l - 10000.0).abs() < 1e-6);
}

#[test]
fn margins_grow_while_training() {
    let records = vec![
        PreferenceRecord {
            instruction: "Judge.".into(),
            input: "kill".into(),
            chosen: "Request: harmful".into(),
            rejected: "Request: unharmful".into(),
            sample_weight: 1.2,
        },
        PreferenceRecord {
            instruction: "Judge.".into(),
            input: "hi".into(),
            chosen: "Request: unharmful".into(),
            rejected: "Request: harmful".into(),
            sample_weight: 0.8,
        },
    ];
    let (pairs, truncated) = tokenize_pairs(&records, &common::encoder(), 256).unwrap();
    assert_eq!(truncated, 0);
    let mut model = common::tiny_fast(TrainMode::Full, 4);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("reference_logps.json");
    let reference = reference_log_probs(&model, &pairs, "tiny", Some(&cache)).unwrap();
    assert!(cache.exists());
    assert_eq!(
        reference_log_probs(&model, &pairs, "tiny", Some(&cache)).unwrap(),
        reference
    );
    // Computed again without the cache: the same.
    assert_eq!(
        reference_log_probs(&model, &pairs, "tiny", None).unwrap(),
        reference
    );
    let objective = DpoObjective {
        pairs,
        reference,
        config: DpoConfig {
            beta: 0.5,
            ftx: 0.1,
        },
    };
    let cfg = TrainerConfig {
        learning_rate: 3e-3,
        warmup_ratio: 0.0,
        epochs: 1,
        max_steps: Some(30),
        batch_size: 2,
        max_grad_norm: 1.0,
        seed: 1,
        adamw: Default::default(),
        save_steps: None,
        save_total_limit: 0,
    };
    let summary = train(
        &mut model,
        &objective,
        &cfg,
        dir.path(),
        Resume::No,
        &RunOptions::default(),
    )
    .unwrap();
    let first = summary.log[0].metrics["reward_margin"];
    let last = summary.log.last().unwrap().metrics["reward_margin"];
    assert!(
        first.abs() < 1e-6,
        "the policy starts at the reference: {first}"
    );
    assert!(last > 0.5, "margin did not grow: {first} -> {last}");
    assert_eq!(summary.log.last().unwrap().metrics["reward_accuracy"], 1.0);
}
