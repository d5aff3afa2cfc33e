//! Autograd gradients of the trainable model against central finite differences (f64).

mod common;

use candle_core::{DType, Tensor};
use guardreasoner_train::data::{tokenize, Example};
use guardreasoner_train::lora::LoraConfig;
use guardreasoner_train::model::{Config, RopeScaling, TrainMode};
use guardreasoner_train::oracle::{sequence_log_prob, Llama};

fn loss(model: &Llama, e: &Example) -> f64 {
    sequence_log_prob(model, &e.prompt, &e.target, None)
        .unwrap()
        .neg()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn check(model: &Llama, e: &Example) {
    let logp = sequence_log_prob(model, &e.prompt, &e.target, None).unwrap();
    let grads = logp.neg().unwrap().backward().unwrap();
    let mut checked = 0;
    for (name, var) in model.trainable() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let flat_grad: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // A few entries per tensor, spread over it.
        let n = original.len();
        for k in [0, n / 3, n / 2 + 1, n - 1] {
            let h = 1e-5;
            let mut plus = original.clone();
            plus[k] += h;
            var.set(&Tensor::from_vec(plus, var.dims(), &candle_core::Device::Cpu).unwrap())
                .unwrap();
            let lp = loss(model, e);
            let mut minus = original.clone();
            minus[k] -= h;
            var.set(&Tensor::from_vec(minus, var.dims(), &candle_core::Device::Cpu).unwrap())
                .unwrap();
            let lm = loss(model, e);
            var.set(
                &Tensor::from_vec(original.clone(), var.dims(), &candle_core::Device::Cpu).unwrap(),
            )
            .unwrap();
            let numeric = (lp - lm) / (2.0 * h);
            let analytic = flat_grad[k];
            let tol = 1e-6 + 1e-4 * numeric.abs().max(analytic.abs());
            assert!(
                (numeric - analytic).abs() <= tol,
                "{name}[{k}]: autograd {analytic:e} vs finite difference {numeric:e}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

fn example() -> Example {
    let recs = common::records();
    tokenize(&recs[..1], &common::encoder(), 64)
        .unwrap()
        .examples
        .remove(0)
}

#[test]
fn full_model_gradients_match_finite_differences() {
    // llama3 RoPE scaling, GQA and an untied head, so every code path is covered.
    let mut cfg = Config::tiny(common::VOCAB, 16, 24, 2, 4, 2, false);
    cfg.rope_scaling = Some(RopeScaling {
        rope_type: Some("llama3".into()),
        legacy_type: None,
        factor: 8.0,
        low_freq_factor: Some(1.0),
        high_freq_factor: Some(4.0),
        original_max_position_embeddings: Some(16),
    });
    let model = Llama::random(cfg, 0.3, 7, DType::F64, TrainMode::Full).unwrap();
    let mut e = example();
    e.target.truncate(6);
    check(&model, &e);
}

#[test]
fn lora_gradients_match_finite_differences() {
    let cfg = Config::tiny(common::VOCAB, 16, 24, 1, 2, 1, true);
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        targets: ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec(),
    };
    let model = Llama::random(cfg, 0.3, 3, DType::F64, TrainMode::Lora(lora)).unwrap();
    // B starts at zero; make it non-zero so A's gradient is not trivially zero.
    for (name, var) in model.trainable() {
        if name.ends_with("lora_B.weight") {
            let t = Tensor::randn(0.0, 0.3, var.dims(), &candle_core::Device::Cpu).unwrap();
            var.set(&t).unwrap();
        }
    }
    let mut e = example();
    e.target.truncate(6);
    check(&model, &e);
}
