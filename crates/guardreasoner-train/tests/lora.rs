//! LoRA: merged == unmerged logits, PEFT files readable by the `safetensors` crate, merge from
//! the saved adapter; the streaming merge equals the candle reference's in-memory merge bit for
//! bit.

mod common;

use candle_core::{DType, Device, Tensor};
use guardreasoner_train::fast::FastLlama;
use guardreasoner_train::lora::{
    load_adapter, merge_checkpoint, peft_prefix, save_adapter, LoraConfig,
};
use guardreasoner_train::model::{read_config, TrainMode};
use guardreasoner_train::oracle::Llama;
use guardreasoner_train::{F32Tensor, TrainError, WeightDtype};
use rand::{Rng, SeedableRng};
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

fn fixture() -> std::path::PathBuf {
    common::shared("fixtures/tiny-llama3")
}

/// The trainer's model with adapters, every B set to seeded non-zero values (standing in for
/// training, so the adapters matter).
fn trained_lora_model() -> FastLlama {
    let mut model = FastLlama::load_hf(&fixture(), &TrainMode::Lora(lora_config()), 9).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    for (name, buf) in model.trainable_names().iter().zip(model.trainable_mut()) {
        if name.ends_with("lora_B.weight") {
            buf.iter_mut()
                .for_each(|v| *v = rng.random_range(-0.08f32..0.08));
        }
    }
    model
}

/// The candle reference holding the same base weights and adapters.
fn reference_of(model: &mut FastLlama) -> Llama {
    let reference = Llama::load_hf(
        &fixture(),
        WeightDtype::F32,
        TrainMode::Lora(lora_config()),
        9,
    )
    .unwrap();
    model.write_back(&reference).unwrap();
    reference
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

/// Every tensor of a safetensors file as (dtype, shape, f32 values), read with the reference
/// `safetensors` crate.
fn read_file(path: &Path) -> BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, t)| {
            let data = t.data();
            let values: Vec<f32> = match t.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => panic!("{name}: unexpected {other:?}"),
            };
            (name, (t.dtype(), t.shape().to_vec(), values))
        })
        .collect()
}

#[test]
fn merged_logits_equal_unmerged_and_differ_from_base() {
    let mut model = trained_lora_model();
    let reference = reference_of(&mut model);
    let ids = [14917u32, 2914, 42, 198, 19556, 198];
    let unmerged = logits(&reference, &ids);
    let dir = tempfile::tempdir().unwrap();
    let config = read_config(&fixture().join("config.json")).unwrap();
    model
        .save_hf(dir.path(), &config, WeightDtype::F32)
        .unwrap();
    let merged = Llama::load_hf(dir.path(), WeightDtype::F32, TrainMode::Full, 0).unwrap();
    let diff = max_diff(&unmerged, &logits(&merged, &ids));
    assert!(diff < 1e-4, "merged vs unmerged: {diff}");
    let base = Llama::load_hf(&fixture(), WeightDtype::F32, TrainMode::Full, 0).unwrap();
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

    // Read with the reference `safetensors` crate.
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

    // Merge from the files (the `model merge` path) == the trained model saved merged.
    let (read_cfg, adapter) = load_adapter(dir.path()).unwrap();
    assert_eq!(read_cfg, cfg);
    let out = dir.path().join("merged.safetensors");
    merge_checkpoint(&fixture(), &read_cfg, &adapter, &out, WeightDtype::F32).unwrap();
    let saved = dir.path().join("saved");
    let hf_config = read_config(&fixture().join("config.json")).unwrap();
    model.save_hf(&saved, &hf_config, WeightDtype::F32).unwrap();
    assert_eq!(read_file(&out), read_file(&saved.join("model.safetensors")));

    // Saving adapters of a model without any is refused.
    let full = FastLlama::load_hf(&fixture(), &TrainMode::Full, 0).unwrap();
    let err = save_adapter(&full, &cfg, "x", &dir.path().join("none")).unwrap_err();
    assert!(err.to_string().contains("no LoRA"), "{err}");
}

/// The in-memory merge on the candle reference (the whole base loaded as a `Llama` in f32,
/// `B A` times the scale added to each adapted weight, then converted).
fn reference_merge(
    base: &Path,
    cfg: &LoraConfig,
    adapter: &BTreeMap<String, F32Tensor>,
    dtype: DType,
) -> BTreeMap<String, Vec<f32>> {
    let model = Llama::load_hf(base, WeightDtype::F32, TrainMode::Full, 0).unwrap();
    let tensor = |t: &F32Tensor| Tensor::from_slice(&t.data, t.shape.as_slice(), &Device::Cpu);
    model
        .weights()
        .iter()
        .map(|(name, w)| {
            let mut w = w.detach();
            if cfg.targets_weight(name) {
                let prefix = peft_prefix(name);
                let a = tensor(&adapter[&format!("{prefix}.lora_A.weight")]).unwrap();
                let b = tensor(&adapter[&format!("{prefix}.lora_B.weight")]).unwrap();
                let delta = (b.matmul(&a).unwrap() * cfg.scale()).unwrap();
                w = (w + delta).unwrap();
            }
            let values = w
                .to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (name.clone(), values)
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn streaming_merge_equals_the_reference_merge_bit_for_bit() {
    let model = trained_lora_model();
    let cfg = lora_config();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &cfg, "tiny-llama3", dir.path()).unwrap();
    let (cfg, adapter) = load_adapter(dir.path()).unwrap();
    let base = fixture();
    let plain = read_file(&base.join("model.safetensors"));
    for (stored, dtype, file_dtype) in [
        (WeightDtype::F32, DType::F32, safetensors::Dtype::F32),
        (WeightDtype::Bf16, DType::BF16, safetensors::Dtype::BF16),
        (WeightDtype::F16, DType::F16, safetensors::Dtype::F16),
    ] {
        let out = dir.path().join(format!("{stored}.safetensors"));
        merge_checkpoint(&base, &cfg, &adapter, &out, stored).unwrap();
        let streamed = read_file(&out);
        let reference = reference_merge(&base, &cfg, &adapter, dtype);
        assert_eq!(
            streamed.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>()
        );
        for (name, want) in &reference {
            let (got_dtype, _, got) = &streamed[name];
            assert_eq!(*got_dtype, file_dtype, "{name}");
            assert!(bits(got) == bits(want), "{name} ({dtype:?}) differs");
        }
        // The adapters changed what they target, and only that.
        let q = "model.layers.0.self_attn.q_proj.weight";
        let norm = "model.layers.0.input_layernorm.weight";
        assert!(streamed[q].2 != plain[q].2);
        let round = |v: &[f32]| -> Vec<u32> {
            let t = Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
            bits(
                &t.to_dtype(dtype)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            )
        };
        assert!(bits(&streamed[norm].2) == round(&plain[norm].2));
    }
}

#[test]
fn merge_errors_name_the_tensor_at_fault_and_write_nothing() {
    let model = trained_lora_model();
    let cfg = lora_config();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &cfg, "tiny-llama3", dir.path()).unwrap();
    let (cfg, adapter) = load_adapter(dir.path()).unwrap();
    let base = fixture();
    let out = dir.path().join("merged.safetensors");
    let merge = |adapter: &BTreeMap<String, F32Tensor>, cfg: &LoraConfig| -> String {
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
        F32Tensor {
            shape: vec![3, rank],
            data: vec![0.0; 3 * rank],
        },
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
    let base = fixture();
    save_adapter(
        &trained,
        &lora_config(),
        &base.display().to_string(),
        dir.path(),
    )
    .unwrap();
    let (_, tensors) = load_adapter(dir.path()).unwrap();
    // A fresh model with another seed starts elsewhere; set from the adapter, it is the trained one.
    let mut fresh = FastLlama::load_hf(&base, &TrainMode::Lora(lora_config()), 1).unwrap();
    assert!(fresh.trainable() != trained.trainable());
    fresh.set_trainable(&tensors).unwrap();
    assert!(fresh.trainable() == trained.trainable());

    // An adapter of another rank or with a missing tensor is refused by name.
    let mut other = lora_config();
    other.rank = 2;
    let mut small = FastLlama::load_hf(&base, &TrainMode::Lora(other), 1).unwrap();
    let err = small.set_trainable(&tensors).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
    let mut partial = tensors.clone();
    let first = partial.keys().next().unwrap().clone();
    partial.remove(&first);
    let err = fresh.set_trainable(&partial).unwrap_err().to_string();
    assert!(err.contains(&first), "{err}");
}

#[test]
fn adapters_start_as_the_reference_initialises_them() {
    // PEFT's initialisation, drawn in the same order from the same seed: a run's adapters do
    // not depend on which model implementation created them.
    let fast = FastLlama::load_hf(&fixture(), &TrainMode::Lora(lora_config()), 9).unwrap();
    let reference = Llama::load_hf(
        &fixture(),
        WeightDtype::F32,
        TrainMode::Lora(lora_config()),
        9,
    )
    .unwrap();
    let copied = FastLlama::from_llama(&reference).unwrap();
    assert!(fast.trainable() == copied.trainable());
    assert_eq!(fast.trainable_names(), copied.trainable_names());
}
