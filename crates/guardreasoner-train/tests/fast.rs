//! The fast forward/backward pass against the candle reference model (same log-probs, same
//! gradients) and against finite differences of its own loss.

mod common;

use candle_core::{DType, Tensor};
use guardreasoner_train::fast::FastLlama;
use guardreasoner_train::lora::LoraConfig;
use guardreasoner_train::model::{Config, RopeScaling, TrainMode};
use guardreasoner_train::oracle::{sequence_log_prob, Llama};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(0..common::VOCAB as u32))
        .collect()
}

fn untied_llama3_config(layers: usize) -> Config {
    let mut cfg = Config::tiny(common::VOCAB, 32, 48, layers, 4, 2, false);
    cfg.rope_scaling = Some(RopeScaling {
        rope_type: Some("llama3".into()),
        legacy_type: None,
        factor: 8.0,
        low_freq_factor: Some(1.0),
        high_freq_factor: Some(4.0),
        original_max_position_embeddings: Some(32),
    });
    cfg
}

/// Loss `-sum log p(target)` and gradients by trainable name from candle (f64 reference) and
/// from the fast path (f32), with the same dropout seed; asserts they agree.
fn compare(model: &Llama, prompt: &[u32], target: &[u32], dropout_seed: Option<u64>) {
    let mut rng_ref = dropout_seed.map(ChaCha8Rng::seed_from_u64);
    let logp = sequence_log_prob(model, prompt, target, rng_ref.as_mut()).unwrap();
    let reference = logp.to_scalar::<f64>().unwrap();
    let grads = logp.neg().unwrap().backward().unwrap();

    let fast = FastLlama::from_llama(model).unwrap();
    let mut ids = prompt.to_vec();
    ids.extend_from_slice(&target[..target.len() - 1]);
    let mut rng_fast = dropout_seed.map(ChaCha8Rng::seed_from_u64);
    let (lp, tape) = fast
        .forward(&ids, prompt.len() - 1, target, rng_fast.as_mut())
        .unwrap();
    let total: f64 = lp.iter().map(|&x| x as f64).sum();
    assert!(
        (total - reference).abs() <= 1e-4 * reference.abs().max(1.0),
        "log-prob {total} vs reference {reference}"
    );
    let mut g = fast.zero_grads();
    fast.backward(tape, &vec![-1.0; target.len()], &mut g)
        .unwrap();
    let names = fast.trainable_names();
    assert_eq!(names.len(), model.trainable().len());
    for (name, got) in names.iter().zip(&g.tensors) {
        let var = &model.trainable()[name];
        let want: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no reference gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(want.len(), got.len(), "{name}");
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{name}: zero reference gradient");
        for (i, (w, &f)) in want.iter().zip(got).enumerate() {
            assert!(
                (w - f as f64).abs() <= 1e-4 * scale + 1e-7,
                "{name}[{i}]: fast {f:e} vs reference {w:e} (largest {scale:e})"
            );
        }
    }
}

#[test]
fn full_gradients_match_the_candle_model() {
    // GQA, llama3 RoPE, untied head; 150 positions span three attention blocks.
    let model =
        Llama::random(untied_llama3_config(2), 0.3, 5, DType::F64, TrainMode::Full).unwrap();
    let ids = tokens(150, 1);
    compare(&model, &ids[..40], &ids[40..], None);
    // Loss on every position, as the benchmark does.
    compare(&model, &ids[..1], &ids[1..], None);
}

#[test]
fn tied_full_gradients_match_the_candle_model() {
    let model = Llama::random(common::tiny_config(), 0.2, 9, DType::F64, TrainMode::Full).unwrap();
    let ids = tokens(70, 2);
    compare(&model, &ids[..9], &ids[9..], None);
}

fn lora_model(dropout: f64, targets: &[&str]) -> Llama {
    let lora = LoraConfig {
        rank: 3,
        alpha: 6.0,
        dropout,
        targets: targets.iter().map(|s| s.to_string()).collect(),
    };
    let model = Llama::random(
        untied_llama3_config(2),
        0.3,
        3,
        DType::F64,
        TrainMode::Lora(lora),
    )
    .unwrap();
    // B starts at zero; make it non-zero so every adapter gradient is non-trivial.
    for (name, var) in model.trainable() {
        if name.ends_with("lora_B.weight") {
            let t = Tensor::randn(0.0, 0.3, var.dims(), &candle_core::Device::Cpu).unwrap();
            var.set(&t.to_dtype(DType::F64).unwrap()).unwrap();
        }
    }
    model
}

#[test]
fn lora_gradients_match_the_candle_model() {
    let model = lora_model(0.0, &guardreasoner_train::lora::ALL_TARGETS);
    let ids = tokens(90, 3);
    compare(&model, &ids[..20], &ids[20..], None);
}

#[test]
fn lora_dropout_draws_the_candle_models_masks() {
    let model = lora_model(0.25, &["q_proj", "v_proj", "o_proj", "down_proj"]);
    let ids = tokens(40, 4);
    compare(&model, &ids[..10], &ids[10..], Some(77));
}

#[test]
fn fast_gradients_match_finite_differences() {
    let cfg = untied_llama3_config(1);
    let model = Llama::random(cfg, 0.3, 11, DType::F32, TrainMode::Full).unwrap();
    let mut fast = FastLlama::from_llama(&model).unwrap();
    let ids = tokens(20, 5);
    let (inputs, targets) = (&ids[..19], &ids[1..]);
    let (_, tape) = fast.forward(inputs, 0, targets, None).unwrap();
    let mut g = fast.zero_grads();
    fast.backward(tape, &vec![1.0; targets.len()], &mut g)
        .unwrap();
    let loss = |m: &FastLlama| -> f64 {
        let (lp, _) = m.forward(inputs, 0, targets, None).unwrap();
        lp.iter().map(|&x| x as f64).sum()
    };
    let mut checked = 0;
    for s in 0..fast.base.len() {
        let n = fast.base[s].len();
        for k in [0, n / 2, n - 1] {
            let h = 1e-2f32;
            let orig = fast.base[s][k];
            fast.base[s][k] = orig + h;
            let plus = loss(&fast);
            fast.base[s][k] = orig - h;
            let minus = loss(&fast);
            fast.base[s][k] = orig;
            let numeric = (plus - minus) / (2.0 * h as f64);
            let analytic = g.tensors[s][k] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 2e-2 * numeric.abs().max(analytic.abs()),
                "slot {s}[{k}]: analytic {analytic:e} vs finite difference {numeric:e}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
}

#[test]
fn the_fast_model_and_the_checkpoint_checks_share_one_weight_schema() {
    for (config, tied) in [
        (untied_llama3_config(2), false),
        (Config::tiny(common::VOCAB, 32, 48, 3, 4, 2, true), true),
    ] {
        let dims = guardreasoner_train::fast::Dims::from_config(&config);
        let fast: Vec<(String, Vec<usize>)> = FastLlama::base_names(&dims)
            .into_iter()
            .zip(FastLlama::base_shapes(&dims))
            .collect();
        assert_eq!(fast, Llama::expected_shapes(&config), "tied {tied}");
        assert_eq!(
            fast.len(),
            1 + 9 * config.num_hidden_layers + 1 + usize::from(!tied)
        );
    }
}
