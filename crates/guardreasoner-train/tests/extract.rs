//! `extract::extract_adapter` against references outside it: a model tuned by a known rank-4
//! adapter is cut back to rank 4 and re-merged by `merge_checkpoint` (the tuned weights come
//! back); a rank-2 cut is at least as close as keeping two of the known components
//! (Eckart–Young); weights a LoRA cannot carry are reported; mismatched models are refused.

mod common;

use guardreasoner_train::extract::extract_adapter;
use guardreasoner_train::lora::{load_adapter, merge_checkpoint, peft_prefix, LoraConfig};
use guardreasoner_train::model::TrainMode;
use guardreasoner_train::{F32Tensor, WeightDtype};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;

fn config(rank: usize) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 8.0,
        dropout: 0.0,
        targets: ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec(),
    }
}

/// A random rank-4 PEFT adapter for the fixture's targeted weights (scale 2: alpha 8, r 4).
fn known_adapter(base: &Path) -> BTreeMap<String, F32Tensor> {
    let model_config = guardreasoner_train::model::read_config(&base.join("config.json")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut adapter = BTreeMap::new();
    for (name, shape) in guardreasoner_engine::layout::hf_weights(&model_config) {
        if !config(4).targets_weight(&name) {
            continue;
        }
        let mut random = |rows: usize, cols: usize| {
            let v: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-0.1..0.1))
                .collect();
            F32Tensor {
                shape: vec![rows, cols],
                data: v,
            }
        };
        let prefix = peft_prefix(&name);
        adapter.insert(format!("{prefix}.lora_A.weight"), random(4, shape[1]));
        adapter.insert(format!("{prefix}.lora_B.weight"), random(shape[0], 4));
    }
    adapter
}

fn read(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect()
}

fn frobenius(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// The fixture tuned by `known_adapter` into `dir/tuned`.
fn tuned_model(dir: &Path) -> (std::path::PathBuf, BTreeMap<String, F32Tensor>) {
    let base = common::shared("fixtures/tiny-llama3");
    let adapter = known_adapter(&base);
    let tuned = dir.join("tuned");
    std::fs::create_dir_all(&tuned).unwrap();
    std::fs::copy(base.join("config.json"), tuned.join("config.json")).unwrap();
    merge_checkpoint(
        &base,
        &config(4),
        &adapter,
        &tuned.join("model.safetensors"),
        WeightDtype::F32,
    )
    .unwrap();
    (tuned, adapter)
}

#[test]
fn a_full_rank_cut_merges_back_to_the_tuned_model() {
    let base = common::shared("fixtures/tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let (tuned, _) = tuned_model(dir.path());
    // A different alpha than the tuning adapter's: the factors absorb the scale.
    let cfg = LoraConfig {
        alpha: 3.0,
        ..config(4)
    };
    let mut calls = Vec::new();
    let cut =
        extract_adapter(&base, &tuned, &cfg, |done, total| calls.push((done, total))).unwrap();
    assert_eq!(cut.kept.len(), 2 * 3, "two layers, three targets");
    assert_eq!(calls.first(), Some(&(0, 6)));
    assert_eq!(calls.last(), Some(&(6, 6)));
    for k in &cut.kept {
        assert!(k.kept > 1.0 - 1e-9, "{}: kept {}", k.weight, k.kept);
        assert!(k.relative_change > 0.0);
    }
    assert!(cut.not_carried.is_empty(), "{:?}", cut.not_carried);

    let adapter_dir = dir.path().join("adapter");
    cut.save("tiny-llama3", &adapter_dir).unwrap();
    let (read_cfg, tensors) = load_adapter(&adapter_dir).unwrap();
    assert_eq!(read_cfg, cfg);
    let remerged = dir.path().join("remerged.safetensors");
    merge_checkpoint(&base, &read_cfg, &tensors, &remerged, WeightDtype::F32).unwrap();
    let (want, got) = (read(&tuned.join("model.safetensors")), read(&remerged));
    let original = read(&base.join("model.safetensors"));
    for (name, w) in &want {
        let err = frobenius(w, &got[name]);
        let moved = frobenius(w, &original[name]);
        assert!(
            err <= 1e-5 * (1.0 + moved),
            "{name}: re-merged differs by {err} (tuning moved it {moved})"
        );
    }
}

#[test]
fn a_low_rank_cut_is_at_least_as_close_as_any_two_known_components() {
    let base = common::shared("fixtures/tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let (tuned, adapter) = tuned_model(dir.path());
    let cut = extract_adapter(&base, &tuned, &config(2), |_, _| {}).unwrap();
    let adapter_dir = dir.path().join("adapter");
    cut.save("tiny-llama3", &adapter_dir).unwrap();
    let (cfg, tensors) = load_adapter(&adapter_dir).unwrap();
    let remerged = dir.path().join("remerged.safetensors");
    merge_checkpoint(&base, &cfg, &tensors, &remerged, WeightDtype::F32).unwrap();
    // The alternative: the tuning adapter's first two components only.
    let halves: BTreeMap<String, F32Tensor> = adapter
        .iter()
        .map(|(name, t)| {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let half = if name.contains("lora_A") {
                F32Tensor {
                    shape: vec![2, cols],
                    data: t.data[..2 * cols].to_vec(),
                }
            } else {
                F32Tensor {
                    shape: vec![rows, 2],
                    data: t.data.chunks(cols).flat_map(|r| r[..2].to_vec()).collect(),
                }
            };
            (name.clone(), half)
        })
        .collect();
    let two = dir.path().join("two.safetensors");
    let two_cfg = LoraConfig {
        rank: 2,
        alpha: 4.0, // the tuning adapter's scale, 2
        ..config(2)
    };
    merge_checkpoint(&base, &two_cfg, &halves, &two, WeightDtype::F32).unwrap();
    let (want, svd, known) = (
        read(&tuned.join("model.safetensors")),
        read(&remerged),
        read(&two),
    );
    let mut some_strictly_better = false;
    for k in &cut.kept {
        let name = &k.weight;
        let (svd_err, known_err) = (
            frobenius(&want[name], &svd[name]),
            frobenius(&want[name], &known[name]),
        );
        assert!(
            svd_err <= known_err * (1.0 + 1e-4),
            "{name}: SVD cut off by {svd_err}, two known components by {known_err}"
        );
        some_strictly_better |= svd_err < 0.95 * known_err;
        // What the report says was kept is what the residual shows.
        let total = k.difference_norm.powi(2);
        let residual = (1.0 - k.kept) * total;
        assert!(
            (svd_err.powi(2) - residual).abs() <= 1e-4 * total,
            "{name}: residual {} against reported {residual}",
            svd_err.powi(2)
        );
        assert!(
            k.kept < 1.0 - 1e-6,
            "{name}: a rank-4 difference fits rank 2?"
        );
    }
    assert!(some_strictly_better);
}

#[test]
fn untargeted_changes_are_reported_and_mismatched_models_refused() {
    let base = common::shared("fixtures/tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let (tuned, _) = tuned_model(dir.path());
    // Move one norm of the tuned model: a LoRA cannot carry it.
    let path = tuned.join("model.safetensors");
    let mut weights = read(&path);
    let norm = "model.layers.1.post_attention_layernorm.weight";
    weights.get_mut(norm).unwrap()[0] += 0.5;
    let bytes = std::fs::read(&path).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec()))
        .collect();
    let raw: BTreeMap<String, Vec<u8>> = weights
        .iter()
        .map(|(n, v)| (n.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(n, b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shapes[n].clone(), b)
                    .unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
    let cut = extract_adapter(&base, &tuned, &config(4), |_, _| {}).unwrap();
    assert_eq!(cut.not_carried.len(), 1, "{:?}", cut.not_carried);
    assert_eq!(cut.not_carried[0].0, norm);
    assert!(cut.not_carried[0].1 > 0.0);

    // A tuned model of another shape.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let small = common::tiny_fast(TrainMode::Full, 1);
    small
        .save_hf(&other, &common::tiny_config(), WeightDtype::F32)
        .unwrap();
    let err = extract_adapter(&base, &other, &config(4), |_, _| {})
        .err()
        .expect("a different model is refused")
        .to_string();
    assert!(
        err.contains("lacks") || err.contains("in the base but"),
        "{err}"
    );
    // No weight among the targets.
    let none = LoraConfig {
        targets: vec!["o_proj".into()],
        ..config(4)
    };
    let only_o = extract_adapter(&base, &tuned, &none, |_, _| {}).unwrap();
    assert_eq!(only_o.kept.len(), 2);
    assert!(only_o
        .kept
        .iter()
        .all(|k| k.difference_norm == 0.0 && k.kept == 1.0));
}
