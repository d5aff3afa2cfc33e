//! LoRA: merged == unmerged logits, PEFT files readable by the `safetensors` crate, merge from
//! the saved adapter; the streaming merge equals the former in-memory merge bit for bit.

mod common;

use candle_core::{DType, Tensor};
use guardreasoner_train::lora::{
    load_adapter, merge_checkpoint, peft_prefix, save_adapter, LoraConfig,
};
use guardreasoner_train::model::{load_safetensors, Llama, TrainMode};
use guardreasoner_train::{TrainError, WeightDtype};
use std::collections::BTreeMap;
use std::path::Path;

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
    let model = Llama::load_hf(&dir, WeightDtype::F32, TrainMode::Lora(lora_config()), 9).unwrap();
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
    model.save_hf(dir.path(), WeightDtype::F32).unwrap();
    let merged = Llama::load_hf(dir.path(), WeightDtype::F32, TrainMode::Full, 0).unwrap();
    let diff = max_diff(&unmerged, &logits(&merged, &ids));
    assert!(diff < 1e-4, "merged vs unmerged: {diff}");
    let base = Llama::load_hf(
        &common::shared("fixtures/tiny-llama3"),
        WeightDtype::F32,
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

    // Merge from the files (the `model merge` path) == the in-memory merge.
    let (read_cfg, adapter) = load_adapter(dir.path()).unwrap();
    assert_eq!(read_cfg, cfg);
    let out = dir.path().join("merged.safetensors");
    let base = common::shared("fixtures/tiny-llama3");
    merge_checkpoint(&base, &read_cfg, &adapter, &out, WeightDtype::F32).unwrap();
    let merged = load_safetensors(&out).unwrap();
    let in_memory = model.merged_weights().unwrap();
    assert_eq!(merged.len(), in_memory.len());
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

/// The in-memory merge that `model merge` ran before it streamed (the whole base loaded as a
/// `Llama` in f32, every weight cloned, then converted), kept as the reference.
fn reference_merge(
    base: &Path,
    cfg: &LoraConfig,
    adapter: &BTreeMap<String, Tensor>,
    dtype: DType,
) -> BTreeMap<String, Tensor> {
    let model = Llama::load_hf(base, WeightDtype::F32, TrainMode::Full, 0).unwrap();
    let mut out: BTreeMap<String, Tensor> = model
        .weights()
        .iter()
        .map(|(k, v)| (k.clone(), v.detach()))
        .collect();
    for (name, w) in out.iter_mut() {
        if !cfg.targets_weight(name) {
            continue;
        }
        let prefix = peft_prefix(name);
        let a = adapter[&format!("{prefix}.lora_A.weight")]
            .to_dtype(DType::F32)
            .unwrap();
        let b = adapter[&format!("{prefix}.lora_B.weight")]
            .to_dtype(DType::F32)
            .unwrap();
        let delta = (b.matmul(&a).unwrap() * cfg.scale()).unwrap();
        *w = (w.to_dtype(DType::F32).unwrap() + delta)
            .unwrap()
            .to_dtype(w.dtype())
            .unwrap();
    }
    out.into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn streaming_merge_equals_the_in_memory_merge_bit_for_bit() {
    let model = trained_lora_model();
    let cfg = lora_config();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &cfg, "tiny-llama3", dir.path()).unwrap();
    let (cfg, adapter) = load_adapter(dir.path()).unwrap();
    let base = common::shared("fixtures/tiny-llama3");
    for (stored, dtype) in [
        (WeightDtype::F32, DType::F32),
        (WeightDtype::Bf16, DType::BF16),
        (WeightDtype::F16, DType::F16),
    ] {
        let out = dir.path().join(format!("{stored}.safetensors"));
        merge_checkpoint(&base, &cfg, &adapter, &out, stored).unwrap();
        let streamed = load_safetensors(&out).unwrap();
        let reference = reference_merge(&base, &cfg, &adapter, dtype);
        assert_eq!(
            streamed.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>()
        );
        for (name, want) in &reference {
            let got = &streamed[name];
            assert_eq!(got.dtype(), dtype, "{name}");
            assert_eq!(got.dims(), want.dims(), "{name}");
            assert!(bits(got) == bits(want), "{name} ({dtype:?}) differs");
        }
        // The adapters changed what they target, and only that.
        let q = "model.layers.0.self_attn.q_proj.weight";
        let norm = "model.layers.0.input_layernorm.weight";
        let plain = load_safetensors(&base.join("model.safetensors")).unwrap();
        let base_q = plain[q].to_dtype(dtype).unwrap();
        assert!(bits(&streamed[q]) != bits(&base_q));
        assert!(bits(&streamed[norm]) == bits(&plain[norm].to_dtype(dtype).unwrap()));
    }
}

#[test]
fn merge_errors_name_the_tensor_at_fault_and_write_nothing() {
    let model = trained_lora_model();
    let cfg = lora_config();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &cfg, "tiny-llama3", dir.path()).unwrap();
    let (cfg, adapter) = load_adapter(dir.path()).unwrap();
    let base = common::shared("fixtures/tiny-llama3");
    let out = dir.path().join("merged.safetensors");
    let merge = |adapter: &BTreeMap<String, Tensor>, cfg: &LoraConfig| -> String {
        let err: TrainError = merge_checkpoint(&base, cfg, adapter, &out, WeightDtype::Bf16)
            .expect_err("the merge must fail");
        assert!(!out.exists() && !out.with_extension("safetensors.tmp").exists());
        err.to_string()
    };
    let b = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight";

    let mut missing = adapter.clone();
    missing.remove(b);
    let err = merge(&missing, &cfg);
    assert!(err.contains("adapter lacks") && err.contains(b), "{err}");

    let mut misshapen = adapter.clone();
    let rank = cfg.rank;
    misshapen.insert(
        b.into(),
        Tensor::zeros((3, rank), DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    let err = merge(&misshapen, &cfg);
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");

    // Adapter tensors for a projection the config does not target are not silently dropped.
    let mut fewer = cfg.clone();
    fewer.targets.retain(|t| t != "down_proj");
    let err = merge(&adapter, &fewer);
    assert!(
        err.contains("down_proj.lora_A.weight") && err.contains("matches no"),
        "{err}"
    );
}

#[test]
fn a_saved_adapter_restarts_training_where_it_ended() {
    let trained = trained_lora_model();
    let dir = tempfile::tempdir().unwrap();
    let base = common::shared("fixtures/tiny-llama3");
    save_adapter(
        &trained,
        &lora_config(),
        &base.display().to_string(),
        dir.path(),
    )
    .unwrap();
    let (_, tensors) = load_adapter(dir.path()).unwrap();
    // A fresh model with another seed starts elsewhere; set from the adapter, it is the trained one.
    let mut fresh =
        Llama::load_hf(&base, WeightDtype::F32, TrainMode::Lora(lora_config()), 1).unwrap();
    let ids = [14917u32, 2914, 42, 198];
    assert!(max_diff(&logits(&fresh, &ids), &logits(&trained, &ids)) > 1e-3);
    fresh.set_trainable(&tensors).unwrap();
    assert!(max_diff(&logits(&fresh, &ids), &logits(&trained, &ids)) < 1e-6);

    // An adapter of another rank or with a missing tensor is refused by name.
    let mut other = lora_config();
    other.rank = 2;
    let mut small = Llama::load_hf(&base, WeightDtype::F32, TrainMode::Lora(other), 1).unwrap();
    let err = small.set_trainable(&tensors).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
    let mut partial = tensors.clone();
    let first = partial.keys().next().unwrap().clone();
    partial.remove(&first);
    let err = fresh.set_trainable(&partial).unwrap_err().to_string();
    assert!(err.contains(&first), "{err}");
}
