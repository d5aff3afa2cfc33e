//! The trainer (f32, the fast model) against the candle reference trained in f64 by the oracle's
//! plain loop: the same run (data order, LoRA dropout, clipping, AdamW, schedule) gives the same
//! losses and gradient norms; and a run resumed from a checkpoint continues as an uninterrupted
//! one.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use guardreasoner_train::data::tokenize;
use guardreasoner_train::dpo::{
    pair_loss_and_grad, reference_log_probs, tokenize_pairs, DpoConfig, DpoObjective,
    PreferenceRecord,
};
use guardreasoner_train::lora::LoraConfig;
use guardreasoner_train::model::TrainMode;
use guardreasoner_train::oracle::{pair_loss, train_reference, ReferenceObjective};
use guardreasoner_train::sft::SftObjective;
use guardreasoner_train::trainer::{train, Objective, Resume, RunOptions, TrainerConfig};

fn config(steps: usize) -> TrainerConfig {
    TrainerConfig {
        learning_rate: 5e-3,
        warmup_ratio: 0.2,
        epochs: 1,
        max_steps: Some(steps),
        batch_size: 2,
        // Small enough that clipping is active.
        max_grad_norm: 0.5,
        seed: 3,
        adamw: guardreasoner_train::optim::AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
        save_steps: None,
        save_total_limit: 0,
    }
}

/// Loss and gradient norm per step of the trainer.
fn losses(mode: TrainMode, objective: &dyn Objective) -> Vec<(f64, f64)> {
    let mut model = common::tiny_fast(mode, 5);
    let dir = tempfile::tempdir().unwrap();
    let summary = train(
        &mut model,
        objective,
        &config(6),
        dir.path(),
        Resume::No,
        &RunOptions::default(),
    )
    .unwrap();
    summary.log.iter().map(|r| (r.loss, r.grad_norm)).collect()
}

/// The same of the candle reference in f64.
fn reference_losses(mode: TrainMode, objective: &dyn ReferenceObjective) -> Vec<(f64, f64)> {
    let mut model = common::tiny_model(DType::F64, mode, 5);
    train_reference(&mut model, objective, &config(6)).unwrap()
}

fn assert_close(fast: &[(f64, f64)], reference: &[(f64, f64)]) {
    assert_eq!(fast.len(), reference.len());
    for (i, (f, r)) in fast.iter().zip(reference).enumerate() {
        assert!(
            (f.0 - r.0).abs() <= 1e-3 * r.0.abs().max(1e-3),
            "step {}: loss {} (fast) vs {} (candle)",
            i + 1,
            f.0,
            r.0
        );
        assert!(
            (f.1 - r.1).abs() <= 1e-3 * r.1.abs().max(1e-3),
            "step {}: grad norm {} (fast) vs {} (candle)",
            i + 1,
            f.1,
            r.1
        );
    }
}

#[test]
fn sft_fast_path_trains_like_candle() {
    let objective = SftObjective {
        examples: tokenize(&common::records(), &common::encoder(), 128)
            .unwrap()
            .examples,
    };
    assert_close(
        &losses(TrainMode::Full, &objective),
        &reference_losses(TrainMode::Full, &objective),
    );
    let lora = TrainMode::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: ["q_proj", "k_proj", "o_proj", "up_proj", "down_proj"]
            .map(String::from)
            .to_vec(),
    });
    assert_close(
        &losses(lora.clone(), &objective),
        &reference_losses(lora, &objective),
    );
}

/// The losses of steps `stop + 1..=6` when a run stops after step `stop` and a fresh model
/// resumes from its checkpoint.
fn resumed_losses(mode: TrainMode, stop: usize, objective: &dyn Objective) -> Vec<(f64, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let mut model = common::tiny_fast(mode.clone(), 5);
    let options = RunOptions {
        stop_at_step: Some(stop),
        progress: false,
    };
    let part = train(
        &mut model,
        objective,
        &config(6),
        dir.path(),
        Resume::No,
        &options,
    )
    .unwrap();
    assert_eq!(part.step, stop);
    let mut resumed = common::tiny_fast(mode, 5);
    let rest = train(
        &mut resumed,
        objective,
        &config(6),
        dir.path(),
        Resume::Latest,
        &RunOptions::default(),
    )
    .unwrap();
    rest.log[stop..]
        .iter()
        .map(|r| (r.loss, r.grad_norm))
        .collect()
}

#[test]
fn checkpoints_resume_exactly() {
    // Checkpoints are written from the model's buffers and the optimiser's moments and read
    // back into fresh ones: the resumed run repeats the uninterrupted one bit for bit.
    let objective = SftObjective {
        examples: tokenize(&common::records(), &common::encoder(), 128)
            .unwrap()
            .examples,
    };
    let lora = TrainMode::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: vec!["q_proj".into(), "down_proj".into()],
    });
    for mode in [TrainMode::Full, lora] {
        let straight = losses(mode.clone(), &objective);
        for stop in [1, 3] {
            assert_eq!(
                resumed_losses(mode.clone(), stop, &objective),
                straight[stop..]
            );
        }
    }
}

#[test]
fn dpo_fast_path_trains_like_candle() {
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
            rejected: "Request: harmful, sure".into(),
            sample_weight: 0.8,
        },
    ];
    let (pairs, _) = tokenize_pairs(&records, &common::encoder(), 256).unwrap();
    let reference_model = common::tiny_fast(TrainMode::Full, 9);
    let reference = reference_log_probs(&reference_model, &pairs, "ref", None).unwrap();
    let objective = DpoObjective {
        pairs,
        reference,
        config: DpoConfig {
            beta: 0.5,
            ftx: 0.3,
        },
    };
    assert_close(
        &losses(TrainMode::Full, &objective),
        &reference_losses(TrainMode::Full, &objective),
    );
}

#[test]
fn dpo_loss_derivatives_match_autograd() {
    let cfg = DpoConfig {
        beta: 0.1,
        ftx: 2.0,
    };
    for (c, r, w) in [
        (-12.0, -20.0, 1.2),
        (-30.0, -5.0, 0.8),
        (-400.0, 300.0, 1.0),
    ] {
        let vc = Var::from_tensor(&Tensor::new(c, &Device::Cpu).unwrap()).unwrap();
        let vr = Var::from_tensor(&Tensor::new(r, &Device::Cpu).unwrap()).unwrap();
        let (loss, margin) =
            pair_loss(vc.as_tensor(), vr.as_tensor(), -15.0, -18.0, 7, w, &cfg).unwrap();
        let grads = loss.backward().unwrap();
        let (l, m, dc, dr) = pair_loss_and_grad(c, r, -15.0, -18.0, 7, w, &cfg);
        let want = |v: &Var| {
            grads
                .get(v.as_tensor())
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert!((l - loss.to_scalar::<f64>().unwrap()).abs() < 1e-9);
        assert!((m - margin).abs() < 1e-12);
        assert!((dc - want(&vc)).abs() < 1e-9, "{dc} vs {}", want(&vc));
        assert!((dr - want(&vr)).abs() < 1e-9, "{dr} vs {}", want(&vr));
    }
}
