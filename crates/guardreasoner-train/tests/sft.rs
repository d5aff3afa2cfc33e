//! R-SFT end to end on a tiny model: overfitting, exact resume, data and checkpoint errors.

mod common;

use candle_core::DType;
use guardreasoner_train::data::{load_records, tokenize, DataSource, Example};
use guardreasoner_train::lora::{LoraConfig, ALL_TARGETS};
use guardreasoner_train::model::TrainMode;
use guardreasoner_train::sft::SftObjective;
use guardreasoner_train::trainer::{
    train, LogRecord, Resume, RunOptions, TrainerConfig, CURVE_FILE, LOG_FILE,
};
use guardreasoner_train::TrainError;

fn examples() -> Vec<Example> {
    tokenize(&common::records(), &common::encoder(), 128)
        .unwrap()
        .examples
}

fn config(lr: f64, steps: usize) -> TrainerConfig {
    TrainerConfig {
        learning_rate: lr,
        warmup_ratio: 0.0,
        epochs: 1,
        max_steps: Some(steps),
        batch_size: 2,
        max_grad_norm: 1.0,
        seed: 11,
        adamw: Default::default(),
        save_steps: None,
        save_total_limit: 0,
    }
}

#[test]
fn tiny_model_overfits_until_greedy_reproduces_targets() {
    let mut model = common::tiny_fast(TrainMode::Full, 1);
    let objective = SftObjective {
        examples: examples(),
    };
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(1e-2, 120);
    cfg.batch_size = 3;
    let summary = train(
        &mut model,
        &objective,
        &cfg,
        out.path(),
        Resume::No,
        &RunOptions::default(),
    )
    .unwrap();
    let first = summary.log.first().unwrap().loss;
    let last = summary.log.last().unwrap().loss;
    assert!(last < 0.05 * first, "loss {first} -> {last}");
    // The trained weights in the reference model decode the targets greedily.
    let reference = common::tiny_model(DType::F32, TrainMode::Full, 1);
    model.write_back(&reference).unwrap();
    let mut model = reference;
    for e in &objective.examples {
        let got = model
            .greedy(&e.prompt, e.target.len() + 2, &[common::EOS])
            .unwrap();
        assert_eq!(got, e.target, "greedy output differs from the target");
    }
    // The log and the loss curve exist and agree with the summary.
    let (_, log): (_, Vec<LogRecord>) =
        guardreasoner_core::jsonl::JsonlAppender::open(&out.path().join(LOG_FILE)).unwrap();
    assert_eq!(log.len(), 120);
    assert!(log
        .iter()
        .all(|r| r.grad_norm.is_finite() && r.tokens_per_s > 0.0));
    let svg = std::fs::read_to_string(out.path().join(CURVE_FILE)).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let png = std::fs::read(out.path().join(CURVE_FILE).with_extension("png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
}

fn resume_matches_straight_run(mode: TrainMode) {
    let objective = SftObjective {
        examples: examples(),
    };
    let mut cfg = config(3e-3, 8);
    cfg.warmup_ratio = 0.25;
    cfg.epochs = 3;
    cfg.max_steps = None; // 3 epochs x 3 examples / batch 2 = 5 steps, crossing epoch boundaries
    let straight_dir = tempfile::tempdir().unwrap();
    let mut straight = common::tiny_fast(mode.clone(), 5);
    let full = train(
        &mut straight,
        &objective,
        &cfg,
        straight_dir.path(),
        Resume::No,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(full.total_steps, 5);

    let dir = tempfile::tempdir().unwrap();
    let mut first = common::tiny_fast(mode.clone(), 5);
    let stop = RunOptions {
        stop_at_step: Some(2),
        progress: false,
    };
    let part = train(&mut first, &objective, &cfg, dir.path(), Resume::No, &stop).unwrap();
    assert_eq!(part.step, 2);
    drop(first);
    // A fresh process: the same base model, state from the checkpoint.
    let mut resumed = common::tiny_fast(mode, 5);
    let rest = train(
        &mut resumed,
        &objective,
        &cfg,
        dir.path(),
        Resume::Latest,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(rest.step, 5);
    assert_eq!(rest.log.len(), full.log.len());
    for (a, b) in rest.log.iter().zip(&full.log) {
        assert_eq!(a.step, b.step);
        assert!(
            (a.loss - b.loss).abs() < 1e-6,
            "step {}: {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert!((a.lr - b.lr).abs() < 1e-15);
    }
    for ((name, a), b) in straight
        .trainable_names()
        .iter()
        .zip(straight.trainable())
        .zip(resumed.trainable())
    {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-6, "{name} differs by {diff}");
    }
}

#[test]
fn resume_full_fine_tuning_equals_straight_run() {
    resume_matches_straight_run(TrainMode::Full);
}

#[test]
fn resume_lora_with_dropout_equals_straight_run() {
    resume_matches_straight_run(TrainMode::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: ALL_TARGETS.map(String::from).to_vec(),
    }));
}

#[test]
fn resume_refuses_other_data_and_corrupt_checkpoints() {
    let objective = SftObjective {
        examples: examples(),
    };
    let cfg = config(1e-3, 2);
    let dir = tempfile::tempdir().unwrap();
    let mut model = common::tiny_fast(TrainMode::Full, 2);
    train(
        &mut model,
        &objective,
        &cfg,
        dir.path(),
        Resume::No,
        &RunOptions::default(),
    )
    .unwrap();

    let other = SftObjective {
        examples: examples()[..2].to_vec(),
    };
    let mut model = common::tiny_fast(TrainMode::Full, 2);
    let err = train(
        &mut model,
        &other,
        &cfg,
        dir.path(),
        Resume::Latest,
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("different data"), "{err}");

    let ckpt = dir.path().join("checkpoint-2");
    let before = model.base.clone();
    let bytes = std::fs::read(ckpt.join("optimizer.safetensors")).unwrap();
    std::fs::write(
        ckpt.join("optimizer.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let err = train(
        &mut model,
        &objective,
        &cfg,
        dir.path(),
        Resume::Latest,
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Format { .. }), "{err}");
    assert!(err.to_string().contains("optimizer.safetensors"), "{err}");
    // The failed resume checked the files before reading any into the model: its weights are
    // unchanged.
    assert!(model.base == before);

    std::fs::write(ckpt.join("trainer_state.json"), "{\"step\": ").unwrap();
    let err = train(
        &mut model,
        &objective,
        &cfg,
        dir.path(),
        Resume::Latest,
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TrainError::Checkpoint { .. }), "{err}");
}

#[test]
fn sample_data_loads_with_limits_and_truncation_is_counted() {
    let path = common::shared("data/train-reasoning/guardreasonertrain_samples.json");
    let spec = format!("{}:5", path.display());
    let records = load_records(&[
        DataSource::parse(&spec),
        DataSource {
            path: path.clone(),
            limit: None,
        },
    ])
    .unwrap();
    assert_eq!(records.len(), 5 + 8);
    let tok = tokenize(&records, &common::encoder(), 1024).unwrap();
    assert!(tok.truncated > 0, "byte-level records exceed 1024 tokens");
    for e in &tok.examples {
        assert!(e.len() <= 1024);
        assert!(!e.target.is_empty());
    }
    let untruncated = tokenize(&records, &common::encoder(), 1 << 20).unwrap();
    assert_eq!(untruncated.truncated, 0);
    let e = &untruncated.examples[0];
    let text = guardreasoner_core::prompt::join_instruction_input(
        &records[0].instruction,
        &records[0].input,
    );
    assert_eq!(e.prompt.len(), text.len());
    assert_eq!(*e.target.last().unwrap(), common::EOS);
}

#[test]
fn bad_records_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.jsonl");
    std::fs::write(&p, "{\"instruction\":\"i\",\"input\":\"x\",\"output\":\"o\"}\n{\"instruction\":\"i\",\"input\":\"x\"}\n").unwrap();
    let err = load_records(&[DataSource {
        path: p.clone(),
        limit: None,
    }])
    .unwrap_err();
    assert!(
        err.to_string().contains("record 2: missing field `output`"),
        "{err}"
    );
    std::fs::write(
        &p,
        "[{\"instruction\":\"i\",\"input\":\"x\",\"output\":\"  \"}]",
    )
    .unwrap();
    let err = load_records(&[DataSource {
        path: p.clone(),
        limit: None,
    }])
    .unwrap_err();
    assert!(err.to_string().contains("empty `output`"), "{err}");
    std::fs::write(&p, "[{\"instruction\":\"i\",\"input\":3,\"output\":\"o\"}]").unwrap();
    let err = load_records(&[DataSource {
        path: p,
        limit: None,
    }])
    .unwrap_err();
    assert!(err.to_string().contains("must be a string"), "{err}");
}

/// A direct-answer record's prefix sits at the end of the prompt side (seen, not learned) and
/// survives truncation whole; a prefix that leaves no room for the output is refused.
#[test]
fn a_prefix_is_conditioned_on_never_learned_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("direct.jsonl");
    std::fs::write(
        &p,
        "{\"instruction\":\"Judge.\",\"input\":\"a long conversation\",\"prefix\":\"\\n---\\nAnswers:\",\"output\":\" ok\"}\n",
    )
    .unwrap();
    let records = load_records(&[DataSource {
        path: p.clone(),
        limit: None,
    }])
    .unwrap();
    assert_eq!(records[0].prefix.as_deref(), Some("\n---\nAnswers:"));
    let whole = tokenize(&records, &common::encoder(), 1024).unwrap();
    let e = &whole.examples[0];
    let text = "Judge.\na long conversation\n---\nAnswers:";
    assert_eq!(e.prompt, text.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(
        e.target,
        [b' ' as u32, b'o' as u32, b'k' as u32, common::EOS]
    );
    // Cut to 24 tokens: the prompt's tail goes, the prefix and the output stay.
    let cut = tokenize(&records, &common::encoder(), 24).unwrap();
    let e = &cut.examples[0];
    assert_eq!(cut.truncated, 1);
    assert_eq!(e.len(), 24);
    assert!(e
        .prompt
        .ends_with(&"\n---\nAnswers:".bytes().map(u32::from).collect::<Vec<_>>()));
    assert_eq!(e.target.len(), 4);
    let err = tokenize(&records, &common::encoder(), 12).unwrap_err();
    assert!(err.to_string().contains("prefix"), "{err}");
    // A prefix that is not a string is a clear error.
    std::fs::write(
        &p,
        "[{\"instruction\":\"i\",\"input\":\"x\",\"output\":\"o\",\"prefix\":1}]",
    )
    .unwrap();
    let err = load_records(&[DataSource {
        path: p,
        limit: None,
    }])
    .unwrap_err();
    assert!(
        err.to_string().contains("`prefix` must be a string"),
        "{err}"
    );
}
