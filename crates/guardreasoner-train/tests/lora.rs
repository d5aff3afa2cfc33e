//! LoRA: merged == unmerged logits, PEFT files readable by the `safetensors` crate, merge from
//! the saved adapter.

mod common;

use candle_core::{DType, Tensor};
use guardreasoner_train::lora::{load_adapter, merge_into, save_adapter, LoraConfig};
use guardreasoner_train::model::{Llama, TrainMode};

fn lora_config() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 16.0,
        dropout: 0.05,
        targets: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
    }
}

fn trained_lora_model() -> Llama {
    let dir = common::shared("fixtures/tiny-llama3");
    let model = Llama::load_hf(&dir, DType::F32, TrainMode::Lora(lora_config()), 9).unwrap();
    // Stand in for training: give every B a non-zero value so the adapters matter.
    for (name, var) in model.trainable() {
        if name.ends_with("lora_B.weight") {
            var.set(&Tensor::randn(0.0f32, 0.05, var.dims(), &candle_core::Device::Cpu).unwrap())
                .unwrap();
        }
    }
    model
}

fn logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    model
        .forward(ids, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn merged_logits_equal_unmerged_and_differ_from_base() {
    let model = trained_lora_model();
    let ids = [14917u32, 2914, 42, 198, 19556, 198];
    let unmerged = logits(&model, &ids);
    let dir = tempfile::tempdir().unwrap();
    model.save_hf(dir.path(), DType::F32).unwrap();
    let merged = Llama::load_hf(dir.path(), DType::F32, TrainMode::Full, 0).unwrap();
    let diff = max_diff(&unmerged, &logits(&merged, &ids));
    assert!(diff < 1e-4, "merged vs unmerged: {diff}");
    let base = Llama::load_hf(
        &common::shared("fixtures/tiny-llama3"),
        DType::F32,
        TrainMode::Full,
        0,
    )
    .unwrap();
    assert!(
        max_diff(&unmerged, &logits(&base, &ids)) > 1e-3,
        "adapters had no effect"
    );
}

#[test]
fn peft_adapter_files_have_peft_names_and_merge_back() {
    let model = trained_lora_model();
    let cfg = lora_config();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &cfg, "tiny-llama3", dir.path()).unwrap();

    // Read with the reference `safetensors` crate, independent of candle.
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), &[4, 64]);
    assert_eq!(a.dtype(), safetensors::Dtype::F32);
    let b = st
        .tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), &[64, 4]);
    assert_eq!(st.names().len(), 2 * 7 * 2);

    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 16.0);

    // Merge from the files (the `train merge` path) == the in-memory merge.
    let (read_cfg, adapter) = load_adapter(dir.path()).unwrap();
    assert_eq!(read_cfg, cfg);
    let merged = merge_into(model.weights(), &read_cfg, &adapter).unwrap();
    let in_memory = model.merged_weights().unwrap();
    for (name, w) in &merged {
        let d = (w - &in_memory[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{name}: {d}");
    }
}
