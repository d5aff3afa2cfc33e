//! The reference model against transformers on the tiny LLaMA-3 fixture, the trainer's model
//! reading the same weights, and the HF save/load round trip.

mod common;

use guardreasoner_train::fast::FastLlama;
use guardreasoner_train::model::{read_config, TrainMode};
use guardreasoner_train::oracle::Llama;
use guardreasoner_train::{TrainError, WeightDtype};

fn reference() -> serde_json::Value {
    let path = common::shared("fixtures/tiny-llama3/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference.json")).unwrap()
}

fn last_logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let logits = model.forward(ids, None).unwrap();
    logits.get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn matches_transformers_logits_and_greedy() {
    let dir = common::shared("fixtures/tiny-llama3");
    let mut model = Llama::load_hf(&dir, WeightDtype::F32, TrainMode::Full, 0).unwrap();
    model.reserve_positions(320).unwrap();
    for seq in reference()["sequences"].as_array().unwrap() {
        let ids: Vec<u32> = seq["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let logits = last_logits(&model, &ids);
        for (i, want) in seq["last_logits_first32"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let want = want.as_f64().unwrap() as f32;
            assert!(
                (logits[i] - want).abs() < 1e-4,
                "seq len {} logit {i}: {} vs {want}",
                ids.len(),
                logits[i]
            );
        }
        for top in seq["last_top10"].as_array().unwrap() {
            let id = top["id"].as_u64().unwrap() as usize;
            let want = top["logit"].as_f64().unwrap() as f32;
            assert!(
                (logits[id] - want).abs() < 1e-4,
                "top id {id}: {} vs {want}",
                logits[id]
            );
        }
        if ids.len() < 100 {
            let greedy: Vec<u32> = seq["greedy_16"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(model.greedy(&ids, 16, &[]).unwrap(), greedy);
        }
    }
}

#[test]
fn save_and_reload_round_trips_in_f32_and_bf16() {
    let dir = common::shared("fixtures/tiny-llama3");
    let config = read_config(&dir.join("config.json")).unwrap();
    let fast = FastLlama::load_hf(&dir, &TrainMode::Full, 0).unwrap();
    let model = Llama::load_hf(&dir, WeightDtype::F32, TrainMode::Full, 0).unwrap();
    // The trainer reads exactly the weights the reference (checked against transformers) reads.
    assert_eq!(FastLlama::from_llama(&model).unwrap().base, fast.base);
    let ids = [5u32, 17, 300, 4000];
    let want = last_logits(&model, &ids);
    let tmp = tempfile::tempdir().unwrap();
    fast.save_hf(tmp.path(), &config, WeightDtype::F32).unwrap();
    let again = Llama::load_hf(tmp.path(), WeightDtype::F32, TrainMode::Full, 0).unwrap();
    assert_eq!(last_logits(&again, &ids), want);
    assert_eq!(again.config.rope_scaling, model.config.rope_scaling);
    let reread = FastLlama::load_hf(tmp.path(), &TrainMode::Full, 0).unwrap();
    assert_eq!(reread.base, fast.base);

    let bf = tempfile::tempdir().unwrap();
    fast.save_hf(bf.path(), &config, WeightDtype::Bf16).unwrap();
    // The file is standard safetensors: an independent reader sees every weight, in bf16.
    let bytes = std::fs::read(bf.path().join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.len(), model.weights().len());
    for (name, w) in model.weights() {
        let t = file.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::BF16, "{name}");
        assert_eq!(t.shape(), w.dims(), "{name}");
    }
    let from_bf16 = Llama::load_hf(bf.path(), WeightDtype::F32, TrainMode::Full, 0).unwrap();
    let got = last_logits(&from_bf16, &ids);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 2e-2, "bf16 round trip moved logits by {worst}");

    // A configuration that does not describe the model is refused, nothing written.
    let mut other = config.clone();
    other.num_hidden_layers += 1;
    let none = tempfile::tempdir().unwrap();
    let err = fast
        .save_hf(&none.path().join("m"), &other, WeightDtype::F32)
        .unwrap_err();
    assert!(err.to_string().contains("does not describe"), "{err}");
    assert!(!none.path().join("m").exists());
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::shared("fixtures/tiny-llama3");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    std::fs::write(
        tmp.path().join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json",
    )
    .unwrap();
    let err =
        FastLlama::load_hf(tmp.path(), &TrainMode::Full, 0).expect_err("corrupt file must fail");
    assert!(matches!(err, TrainError::Format { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    // A config that disagrees with the weights' shapes.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = 48.into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let err =
        FastLlama::load_hf(tmp.path(), &TrainMode::Full, 0).expect_err("shape mismatch must fail");
    assert!(err.to_string().contains("shape"), "{err}");
    assert!(
        err.to_string().contains(&tmp.path().display().to_string()),
        "{err}"
    );
}
